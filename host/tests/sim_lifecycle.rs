//! The job lifecycle on VMware's govmomi simulator through the real vim25 client: every phase,
//! the verdicts, and injected vSphere faults. `sdci-dom0` in the guest is a stub script
//! (`common::sim::stub_dom0`) until the end-to-end issue wires the real binaries.

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::*;
use common::*;
use sdci_host::domain::JobState;
use sdci_tests::vsphere_sim::{Fault, VsphereSim};
use std::path::{Path, PathBuf};

const FAST: &str = "[jobs]\npoll_interval_ms = 50\nmax_attempts = 2\nquarantine_after = 2\n";

async fn ended(host: &TestHost, id: &str) -> sdci_host::store::JobRow {
    job_ended(host, "job ends", id).await
}

/// A temporary folder, the control folder `ctl` in it, and a simulator with the VMs `names`.
fn sim_in_tempdir(names: &[&str]) -> (tempfile::TempDir, PathBuf, VsphereSim) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(names, &ctl);
    (dir, ctl, sim)
}

/// Starts the service on `sim`, pushes commit 1 to `main`, and waits for its job to end:
/// the host, the job's id, and the ended job.
async fn run_one_job(
    dir: &Path,
    sim: &VsphereSim,
    extra: &str,
) -> (TestHost, String, sdci_host::store::JobRow) {
    let host = start_host(dir, sim, extra).await;
    let id = push_job(&host, 1, "main").await;
    let job = ended(&host, &id).await;
    (host, id, job)
}

async fn both_vms_off(sim: &VsphereSim) {
    eventually("VMs off", || {
        powered_off(sim, "Qubes_4.2_a") && powered_off(sim, "Qubes_4.2_b")
    })
    .await;
}

/// Attempts of a job: the VM each one ran on.
fn attempt_vms(host: &TestHost, id: &str) -> Vec<String> {
    host.hub
        .store
        .transitions(id)
        .unwrap()
        .into_iter()
        .filter(|t| t.2 == "assigned")
        .map(|t| t.3.unwrap().rsplit(' ').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_push_runs_through_every_phase_and_ends_with_the_vm_off() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a"]);
    let (host, id, job) = run_one_job(dir.path(), &sim, FAST).await;
    assert_eq!(job.state, JobState::Success, "{:?}", job.note);

    let states: Vec<String> = host
        .hub
        .store
        .transitions(&id)
        .unwrap()
        .into_iter()
        .map(|t| t.2)
        .collect();
    assert_eq!(
        states,
        [
            "queued",
            "assigned",
            "booting",
            "running",
            "finishing",
            "success"
        ]
    );
    // The job file dom0 got is protocol's JobFile, pointing back at this host.
    let file = std::fs::read(sim.guest_path(
        "Qubes_4.2_a",
        &format!("/home/user/.sdci/jobs/{id}/job.json"),
    ))
    .unwrap();
    let file = sdci_protocol::JobFile::from_json(&file).unwrap();
    assert_eq!(file.spec.id.as_str(), id);
    assert_eq!(file.spec.steps, sdci_protocol::job::default_steps());
    assert_eq!(
        file.agent.event_url,
        format!("{}/api/v1/jobs/{id}/events", host.url)
    );
    assert!(
        !file.agent.post_final_status,
        "the host posts terminal statuses itself"
    );
    // dom0's log replaced the (empty) streamed one.
    let log = std::fs::read_to_string(host.hub.cfg.log_dir().join(format!("{id}.log"))).unwrap();
    assert!(log.contains("dom0 log for .sdci/jobs/"), "{log}");
    eventually("VM off", || powered_off(&sim, "Qubes_4.2_a")).await;
    eventually("success posted", || {
        agent_calls(dir.path())
            .iter()
            .any(|c| c.contains("--state=success") && c.contains(&id))
    })
    .await;
    let calls = agent_calls(dir.path());
    assert!(
        calls
            .iter()
            .any(|c| c.contains("--state=pending --description=queued")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn exit_code_1_is_a_failure_and_is_not_retried() {
    let (dir, ctl, sim) = sim_in_tempdir(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    std::fs::write(ctl.join("exit"), "1").unwrap();
    let (_host, _, job) = run_one_job(dir.path(), &sim, FAST).await;
    assert_eq!((job.state, job.attempts), (JobState::Failure, 1));
}

#[tokio::test]
async fn exit_code_2_is_retried_on_the_other_vm_and_ends_as_error_not_failure() {
    let (dir, ctl, sim) = sim_in_tempdir(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    std::fs::write(ctl.join("exit"), "2").unwrap();
    let (host, id, job) = run_one_job(dir.path(), &sim, FAST).await;
    assert_eq!((job.state, job.attempts), (JobState::Error, 2));
    let mut vms = attempt_vms(&host, &id);
    vms.sort();
    assert_eq!(
        vms,
        ["Qubes_4.2_a", "Qubes_4.2_b"],
        "the retry used the other VM"
    );
    let st = host.hub.store.statuses(&id).unwrap();
    assert!(st.iter().all(|s| s.state.as_str() != "failure"));
    assert_eq!(st.last().unwrap().state.as_str(), "error");
    both_vms_off(&sim).await;
}

#[tokio::test]
async fn a_vsphere_fault_is_retried_on_the_other_vm() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    sim.inject(Fault::TaskError {
        method: "PowerOnVM_Task".into(),
        kind: "InsufficientResourcesFault".into(),
        count: 1,
    })
    .unwrap();
    let (host, id, job) = run_one_job(dir.path(), &sim, FAST).await;
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Success, 2),
        "{:?}",
        job.note
    );
    let vms = attempt_vms(&host, &id);
    assert_ne!(vms[0], vms[1], "retried on the other VM: {vms:?}");
    let failed = host
        .hub
        .store
        .vms()
        .unwrap()
        .into_iter()
        .find(|v| v.name == vms[0])
        .unwrap();
    assert_eq!(failed.consecutive_failures, 1);
    assert!(failed
        .last_error
        .unwrap()
        .contains("InsufficientResourcesFault"));
}

#[tokio::test]
async fn persistent_vsphere_faults_end_as_error_after_the_limit_and_quarantine_the_vms() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    sim.inject(Fault::SoapFault {
        method: "StartProgramInGuest".into(),
        kind: "GuestOperationsUnavailable".into(),
        message: "injected".into(),
        count: 0,
    })
    .unwrap();
    let host = start_host(dir.path(), &sim, FAST).await;
    let first = push_job(&host, 1, "main").await;
    let job = ended(&host, &first).await;
    assert_eq!((job.state, job.attempts), (JobState::Error, 2));
    assert!(job.note.unwrap().contains("GuestOperationsUnavailable"));
    let second = push_job(&host, 2, "dev").await;
    let job = ended(&host, &second).await;
    assert_eq!(job.state, JobState::Error);
    // Two failures in a row on each VM: both quarantined, and shown as such.
    let vms = host.hub.store.vms().unwrap();
    assert!(vms.iter().all(|v| v.quarantined), "{vms:?}");
    // A fully quarantined pool raises an alert.
    let alerts = host.hub.health.alerts();
    assert!(alerts.iter().any(|a| a.key == "pool:4.2"), "{alerts:?}");
    assert!(sdci_host::surface::cli::vms(&host.hub.cfg)
        .unwrap()
        .contains("QUARANTINED"));
    both_vms_off(&sim).await;
}

#[tokio::test]
async fn tools_that_never_start_are_an_infrastructure_error_retried_elsewhere() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    sim.inject(Fault::ToolsNever {
        vm: "Qubes_4.2_a".into(),
    })
    .unwrap();
    let extra = format!("{FAST}[deadlines]\nguest_ready_secs = 2\n");
    let host = start_host(dir.path(), &sim, &extra).await;
    // Two jobs, so one of them certainly starts on the broken VM.
    let a = push_job(&host, 1, "main").await;
    let b = push_job(&host, 2, "dev").await;
    for id in [&a, &b] {
        let job = ended(&host, id).await;
        assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    }
    let tries: usize = [&a, &b].iter().map(|id| attempt_vms(&host, id).len()).sum();
    assert_eq!(
        tries, 3,
        "exactly one attempt failed on the VM without Tools"
    );
    both_vms_off(&sim).await;
}

#[tokio::test]
async fn a_stray_powered_on_vm_is_powered_off_at_start_up() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a"]);
    // Left on by someone else (a crashed run, a human): no job holds it.
    let cfg = sdci_vsphere::VsphereConfig {
        url: sim.url(),
        user: sim.username().into(),
        password: sdci_protocol::job::Secret::new(sim.password()),
        tls: sdci_vsphere::TlsPolicy::SystemRoots,
        datacenters: None,
        timeouts: Default::default(),
    };
    let client = sdci_vsphere::VsphereClient::connect(cfg).await.unwrap();
    use sdci_vsphere::Hypervisor;
    client.power_on("Qubes_4.2_a").await.unwrap();
    assert!(!powered_off(&sim, "Qubes_4.2_a"));
    let _host = start_host(dir.path(), &sim, FAST).await;
    eventually("stray VM powered off", || powered_off(&sim, "Qubes_4.2_a")).await;
}

#[tokio::test]
async fn a_job_past_its_run_deadline_ends_as_error_without_retry_and_the_vm_is_off() {
    let (dir, ctl, sim) = sim_in_tempdir(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    std::fs::write(ctl.join("hang"), "").unwrap();
    let extra = format!("{FAST}[deadlines]\nrun_secs = 1\n");
    let (_host, _, job) = run_one_job(dir.path(), &sim, &extra).await;
    assert_eq!((job.state, job.attempts), (JobState::Error, 1));
    assert!(job.note.unwrap().contains("run deadline"));
    both_vms_off(&sim).await;
}

#[tokio::test]
async fn in_app_mode_the_job_file_carries_a_fresh_token_from_the_agent() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a"]);
    let host = start_host_with(dir.path(), &sim, FAST, "github_app = true\n").await;
    let id = push_job(&host, 1, "main").await;
    assert_eq!(ended(&host, &id).await.state, JobState::Success);
    let file = std::fs::read(sim.guest_path(
        "Qubes_4.2_a",
        &format!("/home/user/.sdci/jobs/{id}/job.json"),
    ))
    .unwrap();
    let file = sdci_protocol::JobFile::from_json(&file).unwrap();
    assert_eq!(file.agent.token.unwrap().expose(), "ghs_test");
    assert!(agent_calls(dir.path()).iter().any(|c| c.starts_with(
        "token --repo=freedomofpress/securedrop-workstation --permissions=contents:read"
    )));
    // The VM's token posts nothing: the host posted `running` itself, and revoked the token
    // (handed over on stdin) when the attempt ended.
    assert!(!file.agent.post_running_status);
    eventually("the token is revoked", || {
        agent_calls(dir.path())
            .iter()
            .any(|c| c == "revoke --token-file=-")
    })
    .await;
    assert!(agent_calls(dir.path())
        .iter()
        .any(|c| c.contains("--state=pending --description=The build is running")));
}

#[tokio::test]
async fn a_vsphere_outage_requeues_the_job_without_using_its_attempts_or_blaming_the_vm() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a"]);
    // More outages than the job has attempts (2) and the VM has failures before quarantine (2).
    sim.inject(Fault::HttpStatus {
        method: "PowerOnVM_Task".into(),
        status: 503,
        count: 3,
    })
    .unwrap();
    let (host, id, job) =
        run_one_job(dir.path(), &sim, &format!("{FAST}outage_retry_ms = 20\n")).await;
    assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    assert_eq!(
        job.attempts, 4,
        "three tries cut short by the outage, then one"
    );
    let vm = host.hub.store.vms().unwrap().remove(0);
    assert!(!vm.quarantined, "{vm:?}");
    assert_eq!(vm.consecutive_failures, 0, "{vm:?}");
    let notes: Vec<String> = host
        .hub
        .store
        .transitions(&id)
        .unwrap()
        .into_iter()
        .filter_map(|t| t.3)
        .filter(|n| n.contains("vSphere outage"))
        .collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[0].contains("503"), "{notes:?}");
    let st = host.hub.store.statuses(&id).unwrap();
    assert!(
        st.iter()
            .all(|s| !s.description.contains("retrying on another VM")),
        "{st:?}"
    );
    assert_eq!(st.last().unwrap().state.as_str(), "success");
    eventually("VM off", || powered_off(&sim, "Qubes_4.2_a")).await;
}

#[tokio::test]
async fn an_outage_that_outlasts_the_jobs_deadline_ends_it_as_error_and_still_blames_no_vm() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a"]);
    sim.inject(Fault::HttpStatus {
        method: "PowerOnVM_Task".into(),
        status: 503,
        count: 0,
    })
    .unwrap();
    // The next try would start after the job's overall deadline (queue_secs after queuing).
    let extra = format!("{FAST}outage_retry_ms = 5000\n[deadlines]\nqueue_secs = 2\n");
    let (host, _, job) = run_one_job(dir.path(), &sim, &extra).await;
    assert_eq!(job.state, JobState::Error);
    assert!(
        job.note
            .as_deref()
            .unwrap()
            .contains("vSphere stayed unavailable until the job's deadline"),
        "{:?}",
        job.note
    );
    let vm = host.hub.store.vms().unwrap().remove(0);
    assert_eq!((vm.quarantined, vm.consecutive_failures), (false, 0));
}

#[tokio::test]
async fn a_wrong_dom0_password_ends_one_job_naming_the_key_blames_no_vm_and_raises_an_alert() {
    let (dir, ctl, sim) = sim_in_tempdir(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    let extra = "[jobs]\npoll_interval_ms = 50\nmax_attempts = 3\nquarantine_after = 1\n";
    let host = start_host_as(dir.path(), &sim, extra, "", "not-the-password").await;
    let id = push_job(&host, 1, "main").await;
    let job = ended(&host, &id).await;
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Error, 1),
        "{:?}",
        job.note
    );
    let note = job.note.unwrap();
    assert!(note.contains("[dom0] password_file"), "{note}");
    for vm in host.hub.store.vms().unwrap() {
        assert_eq!(
            (vm.consecutive_failures, vm.quarantined),
            (0, false),
            "{vm:?}"
        );
    }
    let st = host.hub.store.statuses(&id).unwrap();
    assert_eq!(st.last().unwrap().state.as_str(), "error");
    assert!(
        st.last()
            .unwrap()
            .description
            .contains("[dom0] password_file"),
        "{st:?}"
    );
    // The alert: healthz, metrics.
    let alerts = host.hub.health.alerts();
    assert!(
        alerts
            .iter()
            .any(|a| a.key == "config:[dom0] password_file"),
        "{alerts:?}"
    );
    let c = reqwest::Client::new();
    let health = c
        .get(format!("{}/healthz", host.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        health.contains("alert: config:[dom0] password_file"),
        "{health}"
    );
    let metrics = c
        .get(format!("{}/metrics", host.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sdci_alerts_active 1"), "{metrics}");
    assert_eq!(std::fs::read_to_string(ctl.join("launched")).ok(), None);
    both_vms_off(&sim).await;
}

#[tokio::test]
async fn a_golden_snapshot_that_does_not_exist_is_a_configuration_fault_not_the_vms() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a"]);
    let extra = "[jobs]\npoll_interval_ms = 50\nquarantine_after = 1\n";
    let host = start_host(dir.path(), &sim, extra).await;
    host.hub
        .store
        .set_golden_snapshot("4.2", "no-such-snapshot")
        .unwrap();
    let id = push_job(&host, 1, "main").await;
    let job = ended(&host, &id).await;
    assert_eq!((job.state, job.attempts), (JobState::Error, 1));
    assert!(
        job.note
            .unwrap()
            .contains("[pools.\"4.2\"] golden_snapshot"),
        "names the key"
    );
    let vm = host.hub.store.vms().unwrap().remove(0);
    assert_eq!((vm.consecutive_failures, vm.quarantined), (0, false));
}

#[tokio::test]
async fn dom0s_log_is_downloaded_up_to_the_cap_and_marked_as_cut() {
    let (dir, ctl, sim) = sim_in_tempdir(&["Qubes_4.2_a"]);
    std::fs::write(ctl.join("log-bytes"), "200000").unwrap();
    let extra = format!("{FAST}dom0_log_max_bytes = 8192\n");
    let (host, id, job) = run_one_job(dir.path(), &sim, &extra).await;
    assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    let log = std::fs::read_to_string(host.hub.cfg.log_dir().join(format!("{id}.log"))).unwrap();
    assert!(
        log.starts_with("dom0 log for .sdci/jobs/"),
        "{}",
        &log[..80]
    );
    let (kept, marker) = log.split_at(8192);
    assert!(kept.ends_with('x'), "the first 8192 bytes are dom0's");
    assert!(
        marker.contains("=== truncated: dom0's log.txt is longer than jobs.dom0_log_max_bytes"),
        "{marker}"
    );
    assert!(log.len() < 8192 + 300, "{} bytes kept", log.len());
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(host.hub.cfg.log_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_job_waiting_out_an_outage_holds_no_vm_so_the_next_job_takes_it_at_once() {
    let (dir, _, sim) = sim_in_tempdir(&["Qubes_4.2_a"]);
    sim.inject(Fault::HttpStatus {
        method: "PowerOnVM_Task".into(),
        status: 503,
        count: 1,
    })
    .unwrap();
    let host = start_host(dir.path(), &sim, &format!("{FAST}outage_retry_ms = 4000\n")).await;
    let a = push_job(&host, 1, "main").await;
    let b = push_job(&host, 2, "dev").await;
    let jb = ended(&host, &b).await;
    assert_eq!(jb.state, JobState::Success, "{:?}", jb.note);
    let ja = ended(&host, &a).await;
    assert_eq!(ja.state, JobState::Success, "{:?}", ja.note);
    let at = |id: &str, pred: &dyn Fn(&sdci_host::store::Transition) -> bool| {
        host.hub
            .store
            .transitions(id)
            .unwrap()
            .into_iter()
            .find(|t| pred(t))
            .map(|t| t.0)
            .unwrap()
    };
    let outage = at(&a, &|t| {
        t.3.as_deref().is_some_and(|n| n.contains("vSphere outage"))
    });
    let b_boots = at(&b, &|t| t.2 == "booting");
    assert!(
        b_boots - outage < 3000,
        "the VM sat idle for {} ms while job A waited out the outage",
        b_boots - outage
    );
}
