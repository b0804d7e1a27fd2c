//! Scheduler logic: FIFO claims, dispatch the moment a VM frees, stopping running jobs.
//!
//! These use `MemoryHv` (an in-memory stand-in, see `common/mod.rs`) because the test must hold
//! each guest process open and release it at a chosen moment. The reconciler's tick is set to an
//! hour, so anything that happens here happened because of an event, not a polling interval.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::server::Parts;
use sdci_vsphere::PowerState;

const POOL: &str = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                    [jobs]\npoll_interval_ms = 20\n";

fn job_id_of(host: &TestHost, n: u32) -> String {
    job_of_commit(host, n).id.to_string()
}

fn state(host: &TestHost, id: &str) -> JobState {
    host.hub.store.job(id).unwrap().unwrap().state
}

/// When did the job first enter `to`?
fn entered(host: &TestHost, id: &str, to: &str) -> i64 {
    host.hub
        .store
        .transitions(id)
        .unwrap()
        .into_iter()
        .find(|t| t.2 == to)
        .unwrap()
        .0
}

#[tokio::test]
async fn with_three_jobs_and_two_vms_the_third_starts_when_one_frees() {
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    let c = reqwest::Client::new();
    for n in 1..=3 {
        let (code, _) = deliver_push(&c, &host.url, &format!("d{n}"), &format!("b{n}"), n).await;
        assert_eq!(code, 202);
    }
    let (j1, j2, j3) = (
        job_id_of(&host, 1),
        job_id_of(&host, 2),
        job_id_of(&host, 3),
    );
    eventually("two launches", || hv.started().len() == 2).await;
    assert_eq!(
        hv.started(),
        [j1.clone(), j2.clone()],
        "FIFO: the oldest two run first"
    );
    // The job's folder was made before the upload (ESXi does not create parents): the
    // stand-in refuses an upload into a missing folder, as ESXi does.
    let made: Vec<String> = hv
        .dirs
        .lock()
        .unwrap()
        .values()
        .flatten()
        .cloned()
        .collect();
    assert!(
        made.contains(&format!("/home/user/.sdci/jobs/{j1}")),
        "{made:?}"
    );
    assert_eq!(
        state(&host, &j3),
        JobState::Queued,
        "no third VM: the third job waits"
    );

    hv.release(&j1, 0);
    eventually("third launch", || hv.started().len() == 3).await;
    assert_eq!(state(&host, &j1), JobState::Success);
    let vm1 = host.hub.store.transitions(&j1).unwrap()[1]
        .3
        .clone()
        .unwrap();
    let j3_row = host.hub.store.job(&j3).unwrap().unwrap();
    assert!(
        vm1.ends_with(j3_row.vm.as_deref().unwrap()),
        "{vm1} vs {:?}",
        j3_row.vm
    );
    // Causality: the third was assigned only after the first ended.
    assert!(entered(&host, &j3, "assigned") >= entered(&host, &j1, "success"));

    hv.release(&j2, 1);
    hv.release(&j3, 0);
    eventually("all ended", || {
        [&j1, &j2, &j3]
            .iter()
            .all(|j| state(&host, j).is_terminal())
    })
    .await;
    assert_eq!(state(&host, &j2), JobState::Failure);
    eventually("VMs off", || {
        hv.power("Qubes_4.2_a") == PowerState::Off && hv.power("Qubes_4.2_b") == PowerState::Off
    })
    .await;
    // Every job got a terminal status through the stub agent.
    eventually("final statuses posted", || {
        let calls = agent_calls(dir.path());
        [&j1, &j2, &j3].iter().all(|j| {
            calls
                .iter()
                .any(|c| c.contains(&format!("/jobs/{j}")) && !c.contains("--state=pending"))
        })
    })
    .await;
}

#[tokio::test]
async fn a_push_supersedes_the_running_job_of_its_branch_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    let extra = format!("{POOL}supersede_running = true\n");
    let host = start(dir.path(), &extra, hv.clone(), Parts::ALL).await;
    let c = reqwest::Client::new();
    deliver_push(&c, &host.url, "d1", "main", 1).await;
    let j1 = job_id_of(&host, 1);
    eventually("first launch", || hv.started().len() == 1).await;
    deliver_push(&c, &host.url, "d2", "main", 2).await;
    let j2 = job_id_of(&host, 2);
    eventually("second launch", || hv.started().len() == 2).await;
    let first = host.hub.store.job(&j1).unwrap().unwrap();
    assert_eq!(first.state, JobState::Canceled);
    assert!(first.note.unwrap().starts_with("superseded by"));
    assert_eq!(hv.started()[1], j2);
    hv.release(&j2, 0);
    eventually("second ends", || state(&host, &j2) == JobState::Success).await;
}

#[tokio::test]
async fn canceling_a_running_job_from_the_cli_stops_it_and_frees_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    let c = reqwest::Client::new();
    deliver_push(&c, &host.url, "d1", "main", 1).await;
    deliver_push(&c, &host.url, "d2", "dev", 2).await;
    let (j1, j2) = (job_id_of(&host, 1), job_id_of(&host, 2));
    eventually("first launch", || hv.started().len() == 1).await;
    // What `sdci-host jobs cancel` does: mark it in the store, then wake the service.
    assert!(
        !sdci_host::surface::cli::cancel(&host.hub.cfg, &j1).unwrap(),
        "running: stop requested"
    );
    sdci_host::surface::cli::wake(&host.hub.cfg).await;
    eventually("second launch on the freed VM", || hv.started().len() == 2).await;
    assert_eq!(state(&host, &j1), JobState::Canceled);
    assert_eq!(hv.started()[1], j2);
}

#[tokio::test]
async fn the_relayed_result_wakes_the_attempt_at_once_not_at_the_next_poll() {
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    // A poll a minute apart: only the wake-up can end the job within seconds.
    let extra = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"g\"\n\
                 [jobs]\npoll_interval_ms = 60000\n";
    let host = start(dir.path(), extra, hv.clone(), Parts::ALL).await;
    let id = push_job(&host, 1, "main").await;
    eventually("launch started", || hv.started().contains(&id)).await;
    eventually("the wait is polling", || {
        host.hub.store.job(&id).unwrap().unwrap().state == JobState::Running
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    hv.release(&id, 0);
    let t = std::time::Instant::now();
    host.hub.signal_end(&id);
    let job = job_ended(&host, "the job ends", &id).await;
    assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "the end was noticed after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn without_the_gateway_webhooks_are_stored_healthz_says_so_and_work_resumes_when_it_is_back()
{
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    // The config is written (with the stub agent), then the agent is taken away.
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    std::fs::remove_file(dir.path().join("sdci-agent")).unwrap();
    let id = push_job(&host, 1, "main").await;
    eventually("healthz names the gateway", || {
        host.hub
            .health
            .report()
            .1
            .contains("degraded: gateway unavailable")
    })
    .await;
    assert_eq!(state(&host, &id), JobState::Queued);
    assert!(hv.started().is_empty(), "no job runs on a guessed version");
    // The gateway is back: the queued status is posted, the version resolved, the job runs.
    write_stub_agent(dir.path());
    eventually("the job starts", || hv.started().contains(&id)).await;
    hv.release(&id, 0);
    let job = job_ended(&host, "the job ends", &id).await;
    assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    // A job's statuses wait for its version (its context may be a matrix cell's, issue 20):
    // `pending` is posted once it is known ("queued", or "running" if the job started first).
    eventually("pending posted", || {
        agent_calls(dir.path())
            .iter()
            .any(|c| c.contains("status") && c.contains("--state=pending"))
    })
    .await;
    eventually("healthz is ok again", || {
        !host.hub.health.report().1.contains("gateway")
    })
    .await;
}
