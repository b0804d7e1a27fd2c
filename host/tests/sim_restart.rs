//! The real `sdci-host` binary, SIGKILLed while a job is in each phase and started again, on
//! VMware's govmomi simulator: every job ends with a definitive status, no VM is left on, and
//! the queued job behind it is still queued while the host is down.
//!
//! Needs the binaries built first (`cargo build --workspace --bins`, as `scripts/test` does).

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::*;
use common::*;
use sdci_host::domain::JobState;
use sdci_host::store::Store;
use sdci_tests::vsphere_sim::VsphereSim;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const VM: &str = "Qubes_4.2_a";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_host(dir: &Path, run: u32) -> Child {
    let bin = sdci_tests::binary("sdci-host");
    assert!(
        bin.exists(),
        "{} missing: run cargo build --workspace --bins",
        bin.display()
    );
    let log = std::fs::File::create(dir.join(format!("host-{run}.log"))).unwrap();
    Command::new(bin)
        .args([
            "--config",
            &dir.join("host.toml").display().to_string(),
            "serve",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn healthy(url: &str) {
    let c = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = c.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sdci-host never answered /healthz"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn job_by_sha(store: &Store, n: u32) -> Option<sdci_host::store::JobRow> {
    store
        .recent_jobs(100)
        .unwrap()
        .into_iter()
        .find(|j| j.sha == sha(n))
}

/// How the job is held in a phase while the host is killed, and how the hold is lifted.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Booting,
    Running,
    Finishing,
}

fn hold(phase: Phase, sim: &VsphereSim, ctl: &Path) {
    match phase {
        Phase::Booting => sim
            .set_tools_delay(VM, Some(Duration::from_secs(600)))
            .unwrap(),
        Phase::Running => std::fs::write(ctl.join("hang"), "").unwrap(),
        Phase::Finishing => sim
            .set_shutdown_delay(VM, Duration::from_secs(600))
            .unwrap(),
    }
}

fn release(phase: Phase, sim: &VsphereSim, ctl: &Path) {
    match phase {
        Phase::Booting => sim
            .set_tools_delay(VM, Some(Duration::from_millis(100)))
            .unwrap(),
        Phase::Running => std::fs::remove_file(ctl.join("hang")).unwrap(),
        Phase::Finishing => sim
            .set_shutdown_delay(VM, Duration::from_millis(100))
            .unwrap(),
    }
}

fn state_of(phase: Phase) -> JobState {
    match phase {
        Phase::Booting => JobState::Booting,
        Phase::Running => JobState::Running,
        Phase::Finishing => JobState::Finishing,
    }
}

async fn killed_in(phase: Phase) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    hold(phase, &sim, &ctl);
    let addr = format!("127.0.0.1:{}", free_port());
    let extra = "[jobs]\npoll_interval_ms = 50\n[deadlines]\nshutdown_grace_secs = 300\nshutdown_secs = 900\n";
    let text = config_text(dir.path(), &addr, &sim_toml(&sim, dir.path(), extra));
    std::fs::write(dir.path().join("dom0-password"), sim.guest_password()).unwrap();
    std::fs::write(dir.path().join("host.toml"), &text).unwrap();
    let url = format!("http://{addr}");
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();

    let mut host = spawn_host(dir.path(), 1);
    healthy(&url).await;
    let c = reqwest::Client::new();
    for (n, branch) in [(1, "main"), (2, "dev")] {
        let (code, _) = deliver_push(&c, &url, &format!("d{n}"), branch, n).await;
        assert_eq!(code, 202);
    }
    eventually(
        &format!("first job {phase:?}, second queued with its version"),
        || {
            let (a, b) = (job_by_sha(&store, 1), job_by_sha(&store, 2));
            a.is_some_and(|a| a.state == state_of(phase))
                && b.is_some_and(|b| b.state == JobState::Queued && b.version.is_some())
        },
    )
    .await;

    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
    let first = job_by_sha(&store, 1).unwrap();
    let second = job_by_sha(&store, 2).unwrap();
    assert_eq!(
        first.state,
        state_of(phase),
        "nothing ran the job to an end after the kill"
    );
    assert_eq!(
        second.state,
        JobState::Queued,
        "the queued job survived the kill"
    );
    release(phase, &sim, &ctl);

    let mut host = spawn_host(dir.path(), 2);
    eventually("both jobs end after the restart", || {
        [1, 2]
            .iter()
            .all(|n| job_by_sha(&store, *n).unwrap().state.is_terminal())
    })
    .await;
    for n in [1, 2] {
        let j = job_by_sha(&store, n).unwrap();
        assert_eq!(
            j.state,
            JobState::Success,
            "job {n} after a kill in {phase:?}: {:?}",
            j.note
        );
    }
    let first = job_by_sha(&store, 1).unwrap();
    assert_eq!(
        first.attempts, 2,
        "the killed attempt counted as an infrastructure failure"
    );
    assert!(store.transitions(&first.id).unwrap().iter().any(|t| t
        .3
        .as_deref()
        .is_some_and(|n| n.contains("sdci-host restarted"))));
    eventually("no VM left on", || powered_off(&sim, VM)).await;
    eventually("every commit has its final status posted", || {
        [1, 2].iter().all(|n| {
            let id = job_by_sha(&store, *n).unwrap().id;
            let st = store.statuses(&id).unwrap();
            st.last()
                .is_some_and(|s| s.state.as_str() == "success" && s.posted.as_str() == "posted")
        })
    })
    .await;
    host.kill().unwrap();
    host.wait().unwrap();
}

#[tokio::test]
async fn killed_while_booting_then_restarted_every_job_ends_and_the_vm_is_off() {
    killed_in(Phase::Booting).await;
}

#[tokio::test]
async fn killed_while_running_then_restarted_every_job_ends_and_the_vm_is_off() {
    killed_in(Phase::Running).await;
}

#[tokio::test]
async fn killed_while_finishing_then_restarted_every_job_ends_and_the_vm_is_off() {
    killed_in(Phase::Finishing).await;
}
