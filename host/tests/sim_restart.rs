//! The real `sdci-host` binary, killed (SIGKILL) or stopped (SIGTERM) while a job is in each
//! phase and started again, on VMware's govmomi simulator: a restart is nobody's fault. A job
//! whose `sdci-dom0 launch` runs is re-adopted (the same attempt goes on: no second revert, no
//! second launch), a stored verdict is never run again, an attempt cut short before launch is
//! queued again without counting, and no VM's failure count moves. Also: a push sent while a
//! restart waits on a slow vSphere is answered at once; a second `serve` on the same data
//! directory refuses to start; `serve` starts without vSphere and runs the stored jobs once it
//! is back; two instances with their own data directories on one simulator keep off each
//! other's leased VMs and take over a lease only after it expired.
//!
//! Needs the binaries built first (`cargo build --workspace --bins`, as `scripts/test` does).

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::*;
use common::*;
use sdci_host::domain::JobState;
use sdci_host::store::Store;
use sdci_tests::vsphere_sim::{Fault, SimOptions, VsphereSim};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        .env("RUST_LOG", "info,sdci_host=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn host_log(dir: &Path, run: u32) -> String {
    std::fs::read_to_string(dir.join(format!("host-{run}.log"))).unwrap_or_default()
}

/// Waits until `/healthz` answers `ok` (vSphere connected, nothing degraded or alerting).
async fn healthy(url: &str) {
    let c = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = c.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() && r.text().await.is_ok_and(|t| t == "ok\n") {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sdci-host never answered /healthz with ok"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the host answers HTTP at all (any status).
async fn answering(url: &str) {
    let c = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while c.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sdci-host never answered HTTP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn job_by_sha(store: &Store, n: u32) -> Option<sdci_host::store::JobRow> {
    store
        .recent_jobs(100)
        .unwrap()
        .into_iter()
        .find(|j| j.sha == sha(n))
}

fn kill(mut host: Child) {
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
}

/// SIGTERM, and the time the host took to exit (it must not wait for its jobs).
fn terminate(mut host: Child) -> Duration {
    let t = Instant::now();
    // SAFETY: kill(2) with a pid this test owns and a valid signal number.
    unsafe {
        libc::kill(host.id() as libc::pid_t, libc::SIGTERM);
    }
    loop {
        if let Some(status) = host.try_wait().unwrap() {
            assert!(status.success(), "sdci-host exited {status} after SIGTERM");
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "sdci-host did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One installation on disk: its folder, the control folder of the stub dom0, the host's URL.
struct Setup {
    dir: tempfile::TempDir,
    ctl: PathBuf,
    url: String,
}

impl Setup {
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> Store {
        Store::open(&self.path().join("data/sdci.sqlite3")).unwrap()
    }
    fn launched(&self) -> usize {
        std::fs::read_to_string(self.ctl.join("launched"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

fn setup(sim: &VsphereSim, ctl: &Path, extra: &str) -> Setup {
    setup_reconciling(sim, ctl, extra, 3600)
}

fn setup_reconciling(sim: &VsphereSim, ctl: &Path, extra: &str, reconcile_secs: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let text = config_text_full(
        dir.path(),
        &addr,
        &sim_toml(sim, dir.path(), extra),
        "",
        reconcile_secs,
    );
    std::fs::write(dir.path().join("dom0-password"), sim.guest_password()).unwrap();
    std::fs::write(dir.path().join("host.toml"), &text).unwrap();
    Setup {
        dir,
        ctl: ctl.to_owned(),
        url: format!("http://{addr}"),
    }
}

const FAST: &str = "[deadlines]\ndownload_secs = 900\n[jobs]\npoll_interval_ms = 50\n";

/// How many times the job entered `state`.
fn entered(store: &Store, id: &str, state: &str) -> usize {
    store
        .transitions(id)
        .unwrap()
        .iter()
        .filter(|t| t.2 == state)
        .count()
}

fn assert_no_vm_blamed(store: &Store) {
    for vm in store.vms().unwrap() {
        assert_eq!(
            (vm.consecutive_failures, vm.quarantined),
            (0, false),
            "a restart counted against {vm:?}"
        );
    }
}

async fn final_status_posted(store: &Store, id: &str, state: &str) {
    eventually("the final status is posted", || {
        let st = store.statuses(id).unwrap();
        st.last()
            .is_some_and(|s| s.state.as_str() == state && s.posted.as_str() == "posted")
    })
    .await;
}

/// The agent calls that posted statuses of job `id`, `(state, description)`.
fn posted(dir: &Path, id: &str) -> Vec<String> {
    agent_calls(dir)
        .into_iter()
        .filter(|c| c.starts_with("status ") && c.contains(&format!("/jobs/{id} ")))
        .collect()
}

#[tokio::test]
async fn killed_while_booting_the_attempt_is_queued_again_without_counting_and_the_job_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    sim.set_tools_delay(VM, Some(Duration::from_secs(600)))
        .unwrap();
    let s = setup(&sim, &ctl, FAST);
    let store = s.store();
    let host = spawn_host(s.path(), 1);
    healthy(&s.url).await;
    let c = reqwest::Client::new();
    for (n, branch) in [(1, "main"), (2, "dev")] {
        assert_eq!(
            deliver_push(&c, &s.url, &format!("d{n}"), branch, n)
                .await
                .0,
            202
        );
    }
    eventually("first job booting, second queued with its version", || {
        let (a, b) = (job_by_sha(&store, 1), job_by_sha(&store, 2));
        a.is_some_and(|a| a.state == JobState::Booting)
            && b.is_some_and(|b| b.state == JobState::Queued && b.version.is_some())
    })
    .await;
    kill(host);
    assert_eq!(job_by_sha(&store, 2).unwrap().state, JobState::Queued);
    sim.set_tools_delay(VM, Some(Duration::from_millis(100)))
        .unwrap();

    let host = spawn_host(s.path(), 2);
    for n in [1, 2] {
        let id = job_by_sha(&store, n).unwrap().id.to_string();
        let j = job_ended_in(&store, "both jobs end", &id).await;
        assert_eq!(j.state, JobState::Success, "job {n}: {:?}", j.note);
    }
    let first = job_by_sha(&store, 1).unwrap();
    assert_eq!(first.attempts, 2, "the cut attempt and the one that ran");
    assert!(store.transitions(&first.id).unwrap().iter().any(|t| t
        .3
        .as_deref()
        .is_some_and(|n| n.contains("restart") && n.contains("not counted"))));
    assert_no_vm_blamed(&store);
    eventually("no VM left on", || powered_off(&sim, VM)).await;
    final_status_posted(&store, &first.id, "success").await;
    kill(host);
}

async fn job_ended_in(store: &Store, what: &str, id: &str) -> sdci_host::store::JobRow {
    eventually(what, || store.job(id).unwrap().unwrap().state.is_terminal()).await;
    store.job(id).unwrap().unwrap()
}

/// Holds `make test` (the stub's hang file) while the host is killed (or stopped) and started
/// again; the step ends only after the restart, and the same attempt finishes.
async fn restarted_while_running(sigterm: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    std::fs::write(ctl.join("hang"), "").unwrap();
    let s = setup(&sim, &ctl, FAST);
    let store = s.store();
    let host = spawn_host(s.path(), 1);
    healthy(&s.url).await;
    let c = reqwest::Client::new();
    assert_eq!(deliver_push(&c, &s.url, "d1", "main", 1).await.0, 202);
    eventually("the job runs with launch's pid stored", || {
        job_by_sha(&store, 1).is_some_and(|j| j.state == JobState::Running && j.pid.is_some())
    })
    .await;
    let id = job_by_sha(&store, 1).unwrap().id.to_string();
    // The host posted `running` when launch started (not the VM): wait for it, so the kill
    // does not land in the middle of that post.
    eventually("running posted", || {
        store.statuses(&id).unwrap().last().is_some_and(|s| {
            s.description == "The build is running" && s.posted.as_str() == "posted"
        })
    })
    .await;
    if sigterm {
        let took = terminate(host);
        assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
        assert!(
            host_log(s.path(), 1).contains("shutting down"),
            "{}",
            host_log(s.path(), 1)
        );
    } else {
        kill(host);
    }
    assert!(!powered_off(&sim, VM), "the restart touched the running VM");
    assert_eq!(job_by_sha(&store, 1).unwrap().state, JobState::Running);

    let restarted = Instant::now();
    let host = spawn_host(s.path(), 2);
    healthy(&s.url).await;
    eventually("the attempt is re-adopted", || {
        host_log(s.path(), 2).contains("re-adopting the attempt")
    })
    .await;
    let readopted = restarted.elapsed();
    // The rest of the step: it ends now.
    let released = Instant::now();
    std::fs::remove_file(ctl.join("hang")).unwrap();
    let j = job_ended_in(&store, "the job ends", &id).await;
    let after_step = released.elapsed();
    assert_eq!(j.state, JobState::Success, "{:?}", j.note);
    eprintln!(
        "restart ({}) -> attempt re-adopted: {} ms; step ended -> job ended: {} ms \
         (poll_interval_ms = 50; the stub relays no Result)",
        if sigterm { "SIGTERM" } else { "SIGKILL" },
        readopted.as_millis(),
        after_step.as_millis()
    );
    assert_eq!(j.attempts, 1, "the same attempt went on");
    assert_eq!(
        entered(&store, &id, "booting"),
        1,
        "the VM was reverted again"
    );
    assert_eq!(s.launched(), 1, "launch ran twice");
    assert_no_vm_blamed(&store);
    final_status_posted(&store, &id, "success").await;
    let calls = posted(s.path(), &id);
    let running = calls
        .iter()
        .filter(|c| c.contains("--description=The build is running"))
        .count();
    let success = calls
        .iter()
        .filter(|c| c.contains("--state=success"))
        .count();
    assert_eq!((running, success), (1, 1), "{calls:?}");
    eventually("VM off", || powered_off(&sim, VM)).await;
    kill(host);
}

#[tokio::test]
async fn killed_while_make_test_runs_the_same_attempt_finishes_without_a_second_revert() {
    restarted_while_running(false).await;
}

#[tokio::test]
async fn stopped_by_sigterm_while_make_test_runs_it_exits_at_once_and_the_attempt_goes_on() {
    restarted_while_running(true).await;
}

#[tokio::test]
async fn killed_while_finishing_the_stored_verdict_is_kept_and_never_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    // dom0's log download (the first thing after launch exited) hangs.
    sim.inject(Fault::Delay {
        method: "InitiateFileTransferFromGuest".into(),
        ms: 600_000,
        count: 1,
    })
    .unwrap();
    let s = setup(&sim, &ctl, FAST);
    let store = s.store();
    let host = spawn_host(s.path(), 1);
    healthy(&s.url).await;
    let c = reqwest::Client::new();
    assert_eq!(deliver_push(&c, &s.url, "d1", "main", 1).await.0, 202);
    eventually("the job is finishing", || {
        job_by_sha(&store, 1).is_some_and(|j| j.state == JobState::Finishing)
    })
    .await;
    kill(host);
    let id = job_by_sha(&store, 1).unwrap().id.to_string();
    let host = spawn_host(s.path(), 2);
    let j = job_ended_in(&store, "the job ends", &id).await;
    assert_eq!(j.state, JobState::Success, "{:?}", j.note);
    assert_eq!(j.attempts, 1);
    assert_eq!(s.launched(), 1, "the verdict was run again");
    assert_eq!(entered(&store, &id, "booting"), 1);
    assert_no_vm_blamed(&store);
    eventually("VM off", || powered_off(&sim, VM)).await;
    kill(host);
}

#[tokio::test]
async fn killed_three_times_during_one_jobs_attempts_the_job_succeeds_and_no_vm_is_blamed() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    let s = setup(
        &sim,
        &ctl,
        &format!("{FAST}max_attempts = 3\nquarantine_after = 1\n"),
    );
    assert!(
        FAST.ends_with("poll_interval_ms = 50\n"),
        "[jobs] is FAST's last table"
    );
    let store = s.store();
    let c = reqwest::Client::new();

    // 1: while booting.
    sim.set_tools_delay(VM, Some(Duration::from_secs(600)))
        .unwrap();
    let host = spawn_host(s.path(), 1);
    healthy(&s.url).await;
    assert_eq!(deliver_push(&c, &s.url, "d1", "main", 1).await.0, 202);
    eventually("booting", || {
        job_by_sha(&store, 1).is_some_and(|j| j.state == JobState::Booting)
    })
    .await;
    kill(host);
    let id = job_by_sha(&store, 1).unwrap().id.to_string();

    // 2: while make test runs.
    sim.set_tools_delay(VM, Some(Duration::from_millis(100)))
        .unwrap();
    std::fs::write(ctl.join("hang"), "").unwrap();
    let host = spawn_host(s.path(), 2);
    eventually("running", || {
        store
            .job(&id)
            .unwrap()
            .is_some_and(|j| j.state == JobState::Running && j.pid.is_some())
    })
    .await;
    kill(host);

    // 3: while finishing.
    sim.inject(Fault::Delay {
        method: "InitiateFileTransferFromGuest".into(),
        ms: 600_000,
        count: 1,
    })
    .unwrap();
    let host = spawn_host(s.path(), 3);
    eventually("re-adopted", || {
        host_log(s.path(), 3).contains("re-adopting the attempt")
    })
    .await;
    std::fs::remove_file(ctl.join("hang")).unwrap();
    eventually("finishing", || {
        store
            .job(&id)
            .unwrap()
            .is_some_and(|j| j.state == JobState::Finishing)
    })
    .await;
    kill(host);

    let host = spawn_host(s.path(), 4);
    let j = job_ended_in(&store, "the job ends", &id).await;
    assert_eq!(j.state, JobState::Success, "{:?}", j.note);
    assert_eq!(
        j.attempts, 2,
        "the attempt cut in boot, then the one that ran"
    );
    assert_eq!(s.launched(), 1);
    assert_no_vm_blamed(&store);
    final_status_posted(&store, &id, "success").await;
    kill(host);
}

#[tokio::test]
async fn a_push_sent_while_a_restart_waits_on_a_slow_vsphere_is_answered_at_once_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    std::fs::write(ctl.join("hang"), "").unwrap();
    let s = setup(&sim, &ctl, FAST);
    let store = s.store();
    let host = spawn_host(s.path(), 1);
    healthy(&s.url).await;
    let c = reqwest::Client::new();
    assert_eq!(deliver_push(&c, &s.url, "d1", "main", 1).await.0, 202);
    eventually("running", || {
        job_by_sha(&store, 1).is_some_and(|j| j.state == JobState::Running && j.pid.is_some())
    })
    .await;
    kill(host);
    // Every property read now takes 3 s: the restart's reconciliation is slow.
    sim.inject(Fault::Delay {
        method: "RetrievePropertiesEx".into(),
        ms: 3000,
        count: 0,
    })
    .unwrap();
    let host = spawn_host(s.path(), 2);
    answering(&s.url).await;
    let t = Instant::now();
    let (code, body) = deliver_push(&c, &s.url, "d2", "dev", 2).await;
    let took = t.elapsed();
    assert_eq!(code, 202, "{body}");
    assert!(took < Duration::from_secs(1), "the push waited {took:?}");
    assert!(job_by_sha(&store, 2).is_some(), "the push was not stored");
    sim.clear_faults().unwrap();
    std::fs::remove_file(ctl.join("hang")).unwrap();
    for n in [1, 2] {
        let id = job_by_sha(&store, n).unwrap().id.to_string();
        let j = job_ended_in(&store, "both jobs end", &id).await;
        assert_eq!(j.state, JobState::Success, "job {n}: {:?}", j.note);
    }
    kill(host);
}

#[tokio::test]
async fn a_second_serve_on_the_same_data_directory_refuses_to_start_and_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    let s = setup(&sim, &ctl, FAST);
    let first = spawn_host(s.path(), 1);
    healthy(&s.url).await;
    let mut second = spawn_host(s.path(), 2);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the second serve kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = host_log(s.path(), 2);
    assert!(
        log.contains(&format!("pid {}", first.id())) && log.contains("data directory"),
        "{log}"
    );
    // The first one is unharmed.
    healthy(&s.url).await;
    kill(first);
}

#[tokio::test]
async fn serve_starts_without_vsphere_stores_webhooks_posts_queued_and_runs_them_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    let port = free_port();
    let defaults = SimOptions::default();
    let addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(dir.path().join("vsphere-password"), &defaults.password).unwrap();
    let extra = format!(
        "{FAST}\n[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
         [vsphere]\nurl = \"http://127.0.0.1:{port}/sdk\"\nuser = \"{}\"\npassword_file = \"{}\"\n\
         [vsphere.tls]\nmode = \"system-roots\"\n",
        defaults.username,
        dir.path().join("vsphere-password").display()
    );
    let text = config_text(dir.path(), &addr, &extra);
    std::fs::write(dir.path().join("dom0-password"), &defaults.guest_password).unwrap();
    std::fs::write(dir.path().join("host.toml"), &text).unwrap();
    let url = format!("http://{addr}");
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();

    let host = spawn_host(dir.path(), 1);
    answering(&url).await;
    let c = reqwest::Client::new();
    // Alive (200), degraded and saying why; not ready.
    let r = c.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let health = r.text().await.unwrap();
    assert!(health.contains("degraded: vsphere unavailable"), "{health}");
    let r = c.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().await.unwrap().contains("not ok vsphere"));
    for (n, branch) in [(1, "main"), (2, "dev")] {
        let (code, body) = deliver_push(&c, &url, &format!("d{n}"), branch, n).await;
        assert_eq!(code, 202, "{body}");
    }
    eventually("both stored and their queued statuses posted", || {
        [1, 2].iter().all(|n| {
            job_by_sha(&store, *n).is_some_and(|j| {
                store
                    .statuses(&j.id)
                    .unwrap()
                    .first()
                    .is_some_and(|s| s.description == "queued" && s.posted.as_str() == "posted")
            })
        })
    })
    .await;
    assert!(agent_calls(dir.path())
        .iter()
        .any(|c| c.contains("--state=pending --description=queued")));

    // vSphere comes up on the configured port.
    let sim = VsphereSim::start(SimOptions::vcenter().port(port).vms(vec![vm(VM, &ctl)])).unwrap();
    for n in [1, 2] {
        let id = job_by_sha(&store, n).unwrap().id.to_string();
        let j = job_ended_in(&store, "the stored jobs run", &id).await;
        assert_eq!(j.state, JobState::Success, "job {n}: {:?}", j.note);
    }
    healthy(&url).await;
    eventually("VM off", || powered_off(&sim, VM)).await;
    kill(host);
}

#[tokio::test]
async fn two_instances_on_one_vsphere_keep_off_each_others_leased_vms_until_a_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    std::fs::write(ctl.join("hang"), "").unwrap();
    let extra = "[jobs]\npoll_interval_ms = 50\nlease_ttl_secs = 4\n";
    let (a, b) = (
        setup_reconciling(&sim, &ctl, extra, 1),
        setup_reconciling(&sim, &ctl, extra, 1),
    );
    let (store_a, store_b) = (a.store(), b.store());
    let host_a = spawn_host(a.path(), 1);
    let host_b = spawn_host(b.path(), 1);
    healthy(&a.url).await;
    healthy(&b.url).await;
    let c = reqwest::Client::new();
    assert_eq!(deliver_push(&c, &a.url, "a1", "main", 1).await.0, 202);
    eventually("A runs its job", || {
        job_by_sha(&store_a, 1).is_some_and(|j| j.state == JobState::Running)
    })
    .await;
    assert_eq!(deliver_push(&c, &b.url, "b2", "main", 2).await.0, 202);
    // Several of B's reconciler passes and more than a lease's ttl: A renews, B keeps off.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(!powered_off(&sim, VM), "B powered off A's running VM");
    assert_eq!(job_by_sha(&store_a, 1).unwrap().state, JobState::Running);
    assert_eq!(job_by_sha(&store_b, 2).unwrap().state, JobState::Queued);
    std::fs::remove_file(ctl.join("hang")).unwrap();
    let ja = job_ended_in(
        &store_a,
        "A's job ends",
        &job_by_sha(&store_a, 1).unwrap().id,
    )
    .await;
    assert_eq!(ja.state, JobState::Success, "{:?}", ja.note);
    let jb = job_ended_in(
        &store_b,
        "B's job ends",
        &job_by_sha(&store_b, 2).unwrap().id,
    )
    .await;
    assert_eq!(jb.state, JobState::Success, "{:?}", jb.note);

    // A dies holding the VM; B takes the lease over only once it expired.
    std::fs::write(ctl.join("hang"), "").unwrap();
    assert_eq!(deliver_push(&c, &a.url, "a3", "dev", 3).await.0, 202);
    eventually("A runs its next job", || {
        job_by_sha(&store_a, 3).is_some_and(|j| j.state == JobState::Running)
    })
    .await;
    kill(host_a);
    let killed = Instant::now();
    std::fs::remove_file(ctl.join("hang")).unwrap();
    assert_eq!(deliver_push(&c, &b.url, "b4", "dev", 4).await.0, 202);
    let id4 = job_by_sha(&store_b, 4).unwrap().id.to_string();
    eventually("B boots VM a for its job", || {
        entered(&store_b, &id4, "booting") > 0
    })
    .await;
    let took_over_after = killed.elapsed();
    assert!(
        took_over_after >= Duration::from_secs(2),
        "B took the VM {took_over_after:?} after A died, before A's lease (ttl 4 s) expired"
    );
    let j4 = job_ended_in(&store_b, "B's job ends", &id4).await;
    assert_eq!(j4.state, JobState::Success, "{:?}", j4.note);
    kill(host_b);
}

/// A gateway whose first `status` call hangs (it prints its pid, then sleeps), later ones post
/// at once; every completed post appends `posted …` to `done.log`.
fn hanging_once_agent(dir: &Path) -> PathBuf {
    let path = dir.join("hanging-agent");
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{d}/agent.log'\ncase \"$1\" in\n  ci-config) exit 3 ;;\n  \
             status)\n    if [ ! -e '{d}/hung-once' ]; then touch '{d}/hung-once'; echo $$ > '{d}/agent.pid'; \
             sleep 600; fi\n    echo \"posted $*\" >> '{d}/done.log' ;;\nesac\nexit 0\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_kill_during_a_status_post_kills_the_gateways_child_and_the_status_is_posted_once() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    let s = setup(&sim, &ctl, FAST);
    let agent = hanging_once_agent(s.path());
    let toml = std::fs::read_to_string(s.path().join("host.toml")).unwrap();
    let stub = s.path().join("sdci-agent").display().to_string();
    std::fs::write(
        s.path().join("host.toml"),
        toml.replace(&stub, &agent.display().to_string()),
    )
    .unwrap();
    let store = s.store();
    let host = spawn_host(s.path(), 1);
    healthy(&s.url).await;
    let c = reqwest::Client::new();
    assert_eq!(deliver_push(&c, &s.url, "d1", "main", 1).await.0, 202);
    let pid_file = s.path().join("agent.pid");
    eventually("the post hangs", || pid_file.exists()).await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(host);
    let alive = || {
        std::path::Path::new(&format!("/proc/{pid}")).exists() && {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        }
    };
    eventually("the gateway's child died with the host", || !alive()).await;
    let host = spawn_host(s.path(), 2);
    let id = job_by_sha(&store, 1).unwrap().id.to_string();
    let j = job_ended_in(&store, "the job ends", &id).await;
    assert_eq!(j.state, JobState::Success, "{:?}", j.note);
    final_status_posted(&store, &id, "success").await;
    // No status reached GitHub twice (the hung post never completed: its child was killed).
    let done = std::fs::read_to_string(s.path().join("done.log")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in done.lines() {
        assert!(seen.insert(line), "posted twice: {line}\n{done}");
    }
    assert_eq!(
        done.lines()
            .filter(|l| l.contains("--state=success"))
            .count(),
        1,
        "{done}"
    );
    kill(host);
}
