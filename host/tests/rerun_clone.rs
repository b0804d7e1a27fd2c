//! A stage re-run on another VM of the pool through a linked clone (issue 18, contracts §12),
//! with the in-memory hypervisor (scheduler logic: which VM, which slot, what is made and
//! destroyed when): with the snapshot's VM busy (or held) the re-run takes the other VM's slot
//! and runs on `sdci-clone-<id>`, never powering on more VMs than the pool has, and the clone is
//! destroyed whatever the end (success, failure, cancel) and never held; with the snapshot's VM
//! free no clone is made; a backend without clones waits for the snapshot's VM; the reconciler
//! destroys an orphan clone; a host restart mid-re-run re-adopts the attempt on its clone. On
//! the govmomi simulator through the real client: the reconciler keeps a clone another live
//! instance leased and destroys an abandoned one.

#![allow(clippy::unwrap_used)]

mod common;

use common::sim;
use common::*;
use sdci_host::domain::JobState;
use sdci_host::server::Parts;
use sdci_host::store::{RerunClone, StageSnapshot};
use sdci_host::surface::reruns::{rerun_from, Answer};
use sdci_vsphere::{Hypervisor, PowerState};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const POOL: &str = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                    [jobs]\npoll_interval_ms = 20\n";
const A: &str = "Qubes_4.2_a";
const B: &str = "Qubes_4.2_b";

fn pool(clones: bool) -> Arc<MemoryHv> {
    let hv = MemoryHv::with_vms(&[A, B]);
    hv.clones.store(clones, Ordering::SeqCst);
    hv
}

/// Job `n` runs on A and succeeds; its provisioned snapshot is recorded as on A (taken with
/// memory, as the lifecycle takes it once `provision` succeeded).
async fn origin_with_snapshot(host: &TestHost, hv: &MemoryHv, n: u32) -> String {
    let c = reqwest::Client::new();
    deliver_push(&c, &host.url, &format!("d{n}"), "main", n).await;
    let id = job_of_commit(host, n).id.to_string();
    eventually("the origin launched", || hv.started().contains(&id)).await;
    hv.release(&id, 0);
    let ended = job_ended(host, "the origin succeeds", &id).await;
    assert_eq!(ended.state, JobState::Success);
    assert_eq!(ended.vm.as_deref(), Some(A), "the first free VM");
    let name = sdci_host::domain::stages::snapshot_name(&id);
    hv.create_memory_snapshot(A, &name, "").await.unwrap();
    let store = &host.hub.store;
    store
        .record_stage_snapshot(&StageSnapshot {
            job_id: id.clone(),
            vm: A.into(),
            version: "4.2".into(),
            branch: Some("main".into()),
            name,
            created_ms: sdci_host::now_ms(),
            bytes: None,
        })
        .unwrap();
    id
}

/// Job `n` (a push) runs on A and keeps running: A is busy.
async fn keep_a_busy(host: &TestHost, hv: &MemoryHv, n: u32) -> String {
    let c = reqwest::Client::new();
    deliver_push(&c, &host.url, &format!("d{n}"), "busy", n).await;
    let id = job_of_commit(host, n).id.to_string();
    eventually("the busy job launched", || hv.started().contains(&id)).await;
    assert_eq!(hv.started_on(&id).as_deref(), Some(A));
    id
}

fn rerun_tests(host: &TestHost, origin: &str) -> String {
    let id = match rerun_from(&host.hub.store, None, origin, "test", "test").unwrap() {
        Answer::Queued(id) => id.to_string(),
        other => panic!("the re-run was not queued: {other:?}"),
    };
    host.hub.scheduler.notify_one();
    id
}

fn log_of(host: &TestHost, id: &str) -> String {
    std::fs::read_to_string(sdci_host::joblog::log_path(&host.hub.cfg.log_dir(), id))
        .unwrap_or_default()
}

/// Runs a re-run on a clone in B's slot up to its launch; returns (re-run, clone).
async fn rerun_on_a_clone(host: &TestHost, hv: &MemoryHv) -> (String, String) {
    let origin = origin_with_snapshot(host, hv, 1).await;
    keep_a_busy(host, hv, 2).await;
    let rerun = rerun_tests(host, &origin);
    eventually("the re-run launched", || hv.started().contains(&rerun)).await;
    let clone = RerunClone::name_for(&rerun);
    assert_eq!(
        hv.started_on(&rerun),
        Some(clone.clone()),
        "the re-run's program runs on the clone"
    );
    let job = host.hub.store.job(&rerun).unwrap().unwrap();
    assert_eq!(job.vm.as_deref(), Some(B), "the re-run holds B's slot");
    assert_eq!(
        hv.power(B),
        PowerState::Off,
        "B lends its slot and stays off"
    );
    assert_eq!(hv.power(&clone), PowerState::On);
    assert_eq!(
        host.hub.store.attempt_clone(&rerun).unwrap(),
        Some(RerunClone {
            name: clone.clone(),
            source: A.into(),
            snapshot: sdci_host::domain::stages::snapshot_name(&origin),
        })
    );
    (rerun, clone)
}

fn b_is_free(host: &TestHost) -> bool {
    host.hub
        .store
        .vms()
        .unwrap()
        .iter()
        .any(|v| v.name == B && v.job_id.is_none())
}

#[tokio::test]
async fn with_the_snapshots_vm_busy_the_rerun_runs_on_a_clone_in_the_other_vms_slot_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let hv = pool(true);
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    let (rerun, clone) = rerun_on_a_clone(&host, &hv).await;
    hv.release(&rerun, 0);
    let ended = job_ended(&host, "the re-run succeeds", &rerun).await;
    assert_eq!(ended.state, JobState::Success);
    eventually("B is free again", || b_is_free(&host)).await;
    assert!(!hv.exists(&clone), "the clone is destroyed at the end");
    assert_eq!(*hv.destroyed.lock().unwrap(), vec![clone.clone()]);
    assert!(
        *hv.max_on.lock().unwrap() <= 2,
        "never more VMs on than the pool has"
    );
    // Said where people look: the job's history (`jobs show`), its log and the stage facts (the
    // job page, the check run).
    let origin = host.hub.store.rerun_link(&rerun).unwrap().unwrap().origin;
    let snapshot = sdci_host::domain::stages::snapshot_name(&origin);
    let shown = format!("{clone} (a linked clone of {snapshot} of {A}, in {B}'s slot)");
    let history: Vec<String> = host
        .hub
        .store
        .transitions(&rerun)
        .unwrap()
        .into_iter()
        .filter_map(|t| t.3)
        .collect();
    assert!(
        history
            .iter()
            .any(|n| n == &format!("attempt 1 on {shown}")),
        "{history:?}"
    );
    // (The host's `=== attempt` line is replaced by dom0's log once fetched; what follows stays.)
    let log = log_of(&host, &rerun);
    assert!(
        log.contains(&format!("=== {clone} powered off and destroyed")),
        "{log}"
    );
    let report = sdci_host::orchestration::stages::StagesReport::read(&host.hub.store, &rerun)
        .unwrap()
        .unwrap();
    assert_eq!(report.on_clone.as_deref(), Some(shown.as_str()));
}

#[tokio::test]
async fn the_clone_is_destroyed_after_a_failure_and_after_a_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let hv = pool(true);
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    let (rerun, clone) = rerun_on_a_clone(&host, &hv).await;
    hv.release(&rerun, 1);
    let ended = job_ended(&host, "the re-run fails", &rerun).await;
    assert_eq!(ended.state, JobState::Failure);
    eventually("B is free again", || b_is_free(&host)).await;
    assert!(!hv.exists(&clone), "destroyed after a failure");

    // A second re-run, canceled while it runs.
    let origin = host.hub.store.rerun_link(&rerun).unwrap().unwrap().origin;
    let again = rerun_tests(&host, &origin);
    eventually("the second re-run launched", || {
        hv.started().contains(&again)
    })
    .await;
    let clone2 = RerunClone::name_for(&again);
    assert_eq!(hv.started_on(&again), Some(clone2.clone()));
    host.hub.store.request_cancel(&again, "asked to").unwrap();
    let ended = job_ended(&host, "the second re-run is canceled", &again).await;
    assert_eq!(ended.state, JobState::Canceled);
    eventually("B is free again", || b_is_free(&host)).await;
    assert!(!hv.exists(&clone2), "destroyed after a cancel");
    assert_eq!(*hv.destroyed.lock().unwrap(), vec![clone, clone2]);
    assert!(*hv.max_on.lock().unwrap() <= 2);
}

#[tokio::test]
async fn with_the_snapshots_vm_free_the_rerun_reverts_it_and_no_clone_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let hv = pool(true);
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    let origin = origin_with_snapshot(&host, &hv, 1).await;
    let rerun = rerun_tests(&host, &origin);
    eventually("the re-run launched", || hv.started().contains(&rerun)).await;
    assert_eq!(hv.started_on(&rerun).as_deref(), Some(A));
    assert_eq!(host.hub.store.attempt_clone(&rerun).unwrap(), None);
    hv.release(&rerun, 0);
    assert_eq!(
        job_ended(&host, "the re-run succeeds", &rerun).await.state,
        JobState::Success
    );
    assert!(hv.destroyed.lock().unwrap().is_empty(), "no clone was made");
    assert!(!hv.exists(&RerunClone::name_for(&rerun)));
}

#[tokio::test]
async fn a_backend_without_clones_waits_for_the_snapshots_vm() {
    the_rerun_waits_for_the_snapshots_vm(pool(false), POOL).await;
}

#[tokio::test]
async fn a_pool_with_rerun_on_clones_off_waits_for_the_snapshots_vm_though_the_backend_can_clone() {
    let config = POOL.replace(
        "golden_snapshot = \"golden\"\n",
        "golden_snapshot = \"golden\"\nrerun_on_clones = false\n",
    );
    assert!(config.contains("rerun_on_clones = false"));
    the_rerun_waits_for_the_snapshots_vm(pool(true), &config).await;
}

/// With A (the snapshot's VM) busy and B free, the re-run stays queued; once A is free it runs
/// there, and no clone is ever made.
async fn the_rerun_waits_for_the_snapshots_vm(hv: Arc<MemoryHv>, config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), config, hv.clone(), Parts::ALL).await;
    let origin = origin_with_snapshot(&host, &hv, 1).await;
    let busy = keep_a_busy(&host, &hv, 2).await;
    let rerun = rerun_tests(&host, &origin);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !hv.started().contains(&rerun),
        "B is free, but the re-run waits for A"
    );
    assert_eq!(
        host.hub.store.job(&rerun).unwrap().unwrap().state,
        JobState::Queued
    );
    hv.release(&busy, 0);
    eventually("the re-run launched", || hv.started().contains(&rerun)).await;
    assert_eq!(hv.started_on(&rerun).as_deref(), Some(A));
    hv.release(&rerun, 0);
    assert_eq!(
        job_ended(&host, "the re-run succeeds", &rerun).await.state,
        JobState::Success
    );
    assert!(hv.destroyed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_reconciler_destroys_a_clone_no_active_job_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let hv = pool(true);
    let name = "sdci-job-x-provisioned";
    hv.create_memory_snapshot(A, name, "").await.unwrap();
    let orphan = RerunClone::name_for("deadbee-1");
    hv.clone_from_snapshot(A, name, &orphan).await.unwrap();
    hv.power_on(&orphan).await.unwrap();
    let host = start_reconciling(dir.path(), POOL, hv.clone(), Parts::ALL, 1).await;
    eventually("the orphan clone is destroyed", || !hv.exists(&orphan)).await;
    assert_eq!(*hv.destroyed.lock().unwrap(), vec![orphan]);
    assert!(hv.exists(A) && hv.exists(B), "pool VMs are never destroyed");
    drop(host);
}

#[tokio::test]
async fn a_host_restart_mid_rerun_readopts_the_attempt_on_its_clone() {
    let dir = tempfile::tempdir().unwrap();
    let hv = pool(true);
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    let (rerun, clone) = rerun_on_a_clone(&host, &hv).await;
    eventually("the launch is recorded", || {
        host.hub.store.job(&rerun).unwrap().unwrap().state == JobState::Running
    })
    .await;
    drop(host);

    let host = start_reconciling(dir.path(), POOL, hv.clone(), Parts::ALL, 1).await;
    // Two reconciler passes: the attempt is re-adopted, its clone kept (not an orphan), its
    // slot's VM left off.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(hv.exists(&clone), "the re-adopted attempt's clone is kept");
    assert_eq!(hv.power(&clone), PowerState::On);
    assert_eq!(hv.power(B), PowerState::Off);
    let job = host.hub.store.job(&rerun).unwrap().unwrap();
    assert_eq!(job.state, JobState::Running, "{:?}", job.note);
    assert_eq!(job.attempts, 1, "re-adopted, not retried");
    hv.release(&rerun, 0);
    let ended = job_ended(&host, "the re-adopted re-run succeeds", &rerun).await;
    assert_eq!(ended.state, JobState::Success);
    eventually("B is free again", || b_is_free(&host)).await;
    assert!(!hv.exists(&clone), "destroyed at the end");
}

#[tokio::test]
async fn on_vsphere_the_reconciler_keeps_a_clone_another_live_instance_leased_and_destroys_an_abandoned_one(
) {
    use sdci_host::orchestration::Orchestrator;
    let dir = tempfile::tempdir().unwrap();
    let sim = sim::start_sim(&[A], &dir.path().join("ctl"));
    let extra = sim::sim_toml(&sim, dir.path(), "");
    let text = config_text(dir.path(), "127.0.0.1:0", &extra);
    let cfg = sdci_host::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    let hv = Arc::new(
        sdci_vsphere::VsphereClient::connect(cfg.vsphere.client_config().unwrap())
            .await
            .unwrap(),
    );
    assert!(hv.can_clone(A), "the simulator is a vCenter");
    // Two clones of a memory snapshot of A, as two instances' re-runs left them.
    hv.power_on(A).await.unwrap();
    hv.wait_guest_ready(A, Duration::from_secs(30))
        .await
        .unwrap();
    let snapshot = "sdci-job-x-provisioned";
    hv.create_memory_snapshot(A, snapshot, "").await.unwrap();
    hv.power_off(A).await.unwrap();
    let (fresh, abandoned) = ("sdci-clone-fresh-1", "sdci-clone-abandoned-1");
    let now = sdci_host::now_ms();
    for (clone, renewed) in [(fresh, now), (abandoned, now - 3_600_000)] {
        hv.clone_from_snapshot(A, snapshot, clone).await.unwrap();
        let note = hv.note(clone).await.unwrap();
        let lease = format!(
            "sdci-lease: instance=ffffffffffffffff job=other-1 renewed={renewed} ttl=900 host=elsewhere"
        );
        assert!(hv.set_note(clone, &lease, &note.version).await.unwrap());
    }

    // No reconciler of its own: one pass, by hand.
    let host = start(dir.path(), &extra, hv.clone(), Parts::HTTP_ONLY).await;
    let auth = sdci_host::server::guest_auth(&host.hub.cfg).unwrap();
    let orch = Orchestrator::new(host.hub.clone(), hv.clone(), auth);
    orch.destroy_orphan_clones().await;
    let left: Vec<String> = hv
        .list_vms(RerunClone::PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        left,
        vec![fresh.to_owned()],
        "the other instance's live clone stays, the abandoned one is destroyed"
    );
    assert!(hv.vm(A).await.is_ok(), "the snapshot's VM is untouched");
}

#[tokio::test]
async fn a_rerun_on_a_clone_is_never_held_the_clone_is_destroyed_and_the_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let hv = pool(true);
    let pool_toml = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                     hold_on_failure = \"failure\"\nhold_secs = 600\n\
                     [jobs]\npoll_interval_ms = 20\n";
    let host = start(dir.path(), pool_toml, hv.clone(), Parts::ALL).await;
    let (rerun, clone) = rerun_on_a_clone(&host, &hv).await;
    hv.release(&rerun, 1);
    let ended = job_ended(&host, "the re-run fails", &rerun).await;
    assert_eq!(ended.state, JobState::Failure);
    eventually("B is free again", || b_is_free(&host)).await;
    assert!(
        !hv.exists(&clone),
        "a failed re-run's clone is destroyed, not held"
    );
    assert!(host.hub.store.hold_of_job(&rerun).unwrap().is_none());
    assert_eq!(hv.power(B), PowerState::Off);
    let log = log_of(&host, &rerun);
    assert!(
        log.contains(&format!(
            "=== {clone} is a clone: it is destroyed, never held"
        )),
        "{log}"
    );
}

#[tokio::test]
async fn with_the_snapshots_vm_held_the_rerun_runs_on_a_clone_and_the_hold_stays() {
    let dir = tempfile::tempdir().unwrap();
    let hv = pool(true);
    let pool_toml = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                     hold_on_failure = \"always\"\nhold_secs = 600\n\
                     [jobs]\npoll_interval_ms = 20\n";
    let host = start(dir.path(), pool_toml, hv.clone(), Parts::ALL).await;
    let origin = origin_with_snapshot(&host, &hv, 1).await;
    eventually("A is held after the origin", || {
        host.hub.store.hold_of_job(&origin).unwrap().is_some()
    })
    .await;
    assert_eq!(hv.power(A), PowerState::On);
    let rerun = rerun_tests(&host, &origin);
    eventually("the re-run launched", || hv.started().contains(&rerun)).await;
    let clone = RerunClone::name_for(&rerun);
    assert_eq!(hv.started_on(&rerun), Some(clone.clone()));
    assert_eq!(
        host.hub.store.job(&rerun).unwrap().unwrap().vm.as_deref(),
        Some(B)
    );
    hv.release(&rerun, 0);
    assert_eq!(
        job_ended(&host, "the re-run succeeds", &rerun).await.state,
        JobState::Success
    );
    eventually("B is free again", || b_is_free(&host)).await;
    assert!(!hv.exists(&clone), "the clone is destroyed, not held");
    assert!(host.hub.store.hold_of_job(&rerun).unwrap().is_none());
    assert!(
        host.hub.store.hold_of_job(&origin).unwrap().is_some(),
        "A's hold is untouched"
    );
    assert_eq!(hv.power(A), PowerState::On);
    assert!(*hv.max_on.lock().unwrap() <= 2);
}
