//! Holding a job's VM after its end (issue 18).
//!
//! With the in-memory hypervisor: the VM stays on and out of dispatch (a queued job takes the
//! other VM), it is shown as held, a host restart keeps the hold (the reconciler does not power
//! it off as a stray), and at its TTL the holds' loop powers it off and frees it.
//!
//! With the real `sdci-host` binary on VMware's govmomi simulator: `jobs release ID` and `jobs
//! hold ID --for …` from the CLI (another process) take effect at once, long before the
//! reconciler's pass; a held VM keeps its lease line, so a second instance on the same vSphere
//! leaves it alone until the hold ends; and an attempt re-adopted after a restart during
//! `make dev` still takes its provisioned snapshot.
//!
//! Needs the binaries built first (`cargo build --workspace --bins`, as `scripts/test` does).

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::*;
use common::*;
use sdci_host::config::Config;
use sdci_host::domain::JobState;
use sdci_host::orchestration::leases;
use sdci_host::server::Parts;
use sdci_host::store::Store;
use sdci_protocol::JobFile;
use sdci_tests::vsphere_sim::VsphereSim;
use sdci_vsphere::{Hypervisor, PowerState, VsphereClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POOL: &str = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                    hold_on_failure = \"failure\"\nhold_secs = 8\n\
                    [jobs]\npoll_interval_ms = 20\n";

#[tokio::test]
async fn a_failed_jobs_vm_is_held_out_of_dispatch_survives_a_restart_and_is_powered_off_at_expiry()
{
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    let host = start_reconciling(dir.path(), POOL, hv.clone(), Parts::ALL, 1).await;
    let c = reqwest::Client::new();
    deliver_push(&c, &host.url, "d1", "one", 1).await;
    let j1 = job_of_commit(&host, 1).id.to_string();
    eventually("job 1 launched", || hv.started().contains(&j1)).await;
    hv.release(&j1, 1);
    let ended = job_ended(&host, "job 1 fails", &j1).await;
    assert_eq!(ended.state, JobState::Failure);
    let vm = ended.vm.unwrap();
    eventually("the hold recorded", || {
        !host.hub.store.holds().unwrap().is_empty()
    })
    .await;
    let hold = host.hub.store.hold_of_job(&j1).unwrap().unwrap();
    assert_eq!(hold.vm, vm);
    assert!(hold.automatic && hold.who.contains("hold_on_failure"));
    assert_eq!(
        hv.power(&vm),
        PowerState::On,
        "the failed job's VM stays on"
    );
    let shown = sdci_host::surface::holds::vms_lines(&host.hub.store, &["4.2".into()]).unwrap();
    assert!(
        shown.contains(&format!("held VM {vm} for job {j1}")),
        "{shown}"
    );
    let metrics = c
        .get(format!("{}/metrics", host.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("\nsdci_held_vms 1\n"), "{metrics}");
    assert!(
        metrics.contains("sdci_stage_snapshots{pool=\"4.2\"} 0"),
        "{metrics}"
    );

    // A queued job takes the other VM.
    deliver_push(&c, &host.url, "d2", "two", 2).await;
    let j2 = job_of_commit(&host, 2).id.to_string();
    eventually("job 2 launched", || hv.started().contains(&j2)).await;
    let j2_vm = host.hub.store.job(&j2).unwrap().unwrap().vm.unwrap();
    assert_ne!(j2_vm, vm, "the held VM is out of dispatch");
    hv.release(&j2, 0);
    assert_eq!(
        job_ended(&host, "job 2 passes", &j2).await.state,
        JobState::Success
    );

    // A restart keeps the hold: the new process's reconciler leaves the VM on.
    drop(host);
    let host = start_reconciling(dir.path(), POOL, hv.clone(), Parts::ALL, 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let now = sdci_host::now_ms();
    let kept = host.hub.store.hold_of_job(&j1).unwrap();
    assert!(
        kept.as_ref().is_some_and(|h| h.until_ms > now),
        "the hold survives the restart until its time: {kept:?}"
    );
    assert_eq!(hv.power(&vm), PowerState::On, "a held VM is no stray");

    // At its TTL the VM is powered off and free again.
    eventually("the hold expires", || {
        host.hub.store.holds().unwrap().is_empty() && hv.power(&vm) == PowerState::Off
    })
    .await;
    let free = host
        .hub
        .store
        .vms()
        .unwrap()
        .into_iter()
        .find(|v| v.name == vm)
        .unwrap();
    assert_eq!(free.job_id, None, "the VM is free for the next job");
}

// ---------------------------------------------------------------------------------------------
// The real binary on the simulator.

const VM: &str = "Qubes_4.2_a";

/// One installation on disk (`host.toml`, its data directory) serving on `url`.
struct Install {
    dir: tempfile::TempDir,
    url: String,
}

impl Install {
    /// The simulator's pool 4.2 with `pool_extra` in its table, `extra` before it, the
    /// reconciler's pass every `reconcile_secs`.
    fn new(sim: &VsphereSim, extra: &str, pool_extra: &str, reconcile_secs: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let pool = sim_toml(sim, dir.path(), extra).replace(
            "golden_snapshot = \"golden\"\n",
            &format!("golden_snapshot = \"golden\"\n{pool_extra}"),
        );
        let text = config_text_full(dir.path(), &addr, &pool, "", reconcile_secs);
        std::fs::write(dir.path().join("dom0-password"), sim.guest_password()).unwrap();
        std::fs::write(dir.path().join("host.toml"), &text).unwrap();
        Self {
            dir,
            url: format!("http://{addr}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.path().join("host.toml")
    }

    fn store(&self) -> Store {
        Store::open(&self.path().join("data/sdci.sqlite3")).unwrap()
    }

    /// `sdci-host serve`, its log in `host-<run>.log`.
    fn serve(&self, run: u32) -> Child {
        let bin = sdci_tests::binary("sdci-host");
        assert!(
            bin.exists(),
            "{} missing: run cargo build --workspace --bins",
            bin.display()
        );
        let log = std::fs::File::create(self.path().join(format!("host-{run}.log"))).unwrap();
        Command::new(bin)
            .args(["--config", &self.config().display().to_string(), "serve"])
            .env("RUST_LOG", "info,sdci_host=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// `sdci-host ARGS…` (a CLI command, its own process): its stdout; it must succeed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(sdci_tests::binary("sdci-host"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sdci-host {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The real vim25 client on the simulator, as the host is configured.
    async fn vsphere(&self) -> VsphereClient {
        let cfg = Config::load(&self.config()).unwrap();
        VsphereClient::connect(cfg.vsphere.client_config().unwrap())
            .await
            .unwrap()
    }
}

/// Waits until `/healthz` answers `ok`.
async fn healthy(url: &str) {
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = c.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() && r.text().await.is_ok_and(|t| t == "ok\n") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "sdci-host never answered ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill(mut host: Child) {
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
}

/// Polls `f` until it holds, failing after `limit`; returns how long it took.
async fn within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

fn job_by_sha(store: &Store, n: u32) -> Option<sdci_host::store::JobRow> {
    store
        .recent_jobs(100)
        .unwrap()
        .into_iter()
        .find(|j| j.sha == sha(n))
}

async fn ended(store: &Store, what: &str, id: &str) -> sdci_host::store::JobRow {
    eventually(what, || store.job(id).unwrap().unwrap().state.is_terminal()).await;
    store.job(id).unwrap().unwrap()
}

/// Pushes commit `n` to `url` and waits for its job to end; the job's row.
async fn push_and_end(i: &Install, store: &Store, n: u32) -> sdci_host::store::JobRow {
    let c = reqwest::Client::new();
    let (code, _) = deliver_push(&c, &i.url, &format!("d{n}"), "main", n).await;
    assert_eq!(code, 202);
    eventually("the job is stored", || job_by_sha(store, n).is_some()).await;
    let id = job_by_sha(store, n).unwrap().id.to_string();
    ended(store, "the job ends", &id).await
}

const HOLD_ON_FAILURE: &str = "hold_on_failure = \"failure\"\nhold_secs = 3600\n";
const FAST: &str = "[deadlines]\ndownload_secs = 900\n[jobs]\npoll_interval_ms = 50\n";

#[tokio::test]
async fn jobs_release_and_a_shortened_hold_from_the_cli_power_the_vm_off_at_once_not_at_the_reconcilers_pass(
) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    std::fs::write(ctl.join("exit"), "1").unwrap();
    // The reconciler's pass is an hour away: only the wake-up can end the holds in time.
    let i = Install::new(&sim, FAST, HOLD_ON_FAILURE, 3600);
    let store = i.store();
    let host = i.serve(1);
    healthy(&i.url).await;

    let j1 = push_and_end(&i, &store, 1).await;
    assert_eq!(j1.state, JobState::Failure, "{:?}", j1.note);
    eventually("the hold recorded", || {
        store.hold_of_job(j1.id.as_str()).unwrap().is_some()
    })
    .await;
    assert!(!powered_off(&sim, VM), "the failed job's VM stays on");
    // An extension from the CLI moves the hold; the VM stays on.
    let said = i.cli(&["jobs", "hold", j1.id.as_str(), "--for", "2h"]);
    assert!(said.contains("held until"), "{said}");
    let until = store.hold_of_job(j1.id.as_str()).unwrap().unwrap().until_ms;
    assert!(until > sdci_host::now_ms() + 3_600_000, "extended to 2 h");

    let said = i.cli(&["jobs", "release", j1.id.as_str()]);
    assert!(said.contains("released"), "{said}");
    let took = within(
        "the released VM is off, its hold gone",
        Duration::from_secs(5),
        || powered_off(&sim, VM) && store.holds().unwrap().is_empty(),
    )
    .await;
    eprintln!("jobs release -> VM off: {took:?}");

    // A hold shortened from the CLI to 2 s ends at its new time, without a pass.
    let j2 = push_and_end(&i, &store, 2).await;
    assert_eq!(j2.state, JobState::Failure, "{:?}", j2.note);
    eventually("the second hold recorded", || {
        store.hold_of_job(j2.id.as_str()).unwrap().is_some()
    })
    .await;
    let asked = Instant::now();
    i.cli(&["jobs", "hold", j2.id.as_str(), "--for", "2s"]);
    within("the shortened hold ends", Duration::from_secs(6), || {
        powered_off(&sim, VM) && store.holds().unwrap().is_empty()
    })
    .await;
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "ended before its new time: {:?}",
        asked.elapsed()
    );
    let free = store.vms().unwrap();
    assert!(free.iter().all(|v| v.job_id.is_none()), "{free:?}");
    kill(host);
}

#[tokio::test]
async fn a_held_vm_keeps_its_lease_line_so_a_second_instance_leaves_it_on_until_the_hold_ends() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    std::fs::write(ctl.join("exit"), "1").unwrap();
    let extra = "[deadlines]\ndownload_secs = 900\n[jobs]\npoll_interval_ms = 50\n\
                 lease_ttl_secs = 4\n";
    let a = Install::new(&sim, extra, HOLD_ON_FAILURE, 1);
    let b = Install::new(&sim, extra, "", 1);
    let (store_a, store_b) = (a.store(), b.store());
    let host_a = a.serve(1);
    healthy(&a.url).await;
    let ja = push_and_end(&a, &store_a, 1).await;
    assert_eq!(ja.state, JobState::Failure, "{:?}", ja.note);
    eventually("A holds the VM", || {
        store_a.hold_of_job(ja.id.as_str()).unwrap().is_some()
    })
    .await;
    std::fs::remove_file(ctl.join("exit")).unwrap();
    let hv = a.vsphere().await;
    let lease = leases::read(&hv, VM).await.unwrap().expect("a lease line");
    assert_eq!(
        lease.holder,
        ja.id.as_str(),
        "the lease names the ended job"
    );

    // B starts and wants the VM: over more than a lease's ttl and several of B's passes, A
    // renews the held VM's lease and B keeps off it.
    let host_b = b.serve(1);
    healthy(&b.url).await;
    let c = reqwest::Client::new();
    assert_eq!(deliver_push(&c, &b.url, "b2", "main", 2).await.0, 202);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(!powered_off(&sim, VM), "B powered off A's held VM");
    let renewed = leases::read(&hv, VM).await.unwrap().expect("a lease line");
    assert_eq!(
        (renewed.instance.as_str(), renewed.holder.as_str()),
        (lease.instance.as_str(), ja.id.as_str())
    );
    assert!(
        renewed.renewed_ms > lease.renewed_ms,
        "the held VM's lease was renewed"
    );
    let jb = job_by_sha(&store_b, 2).unwrap();
    assert_eq!(jb.state, JobState::Queued, "B took A's held VM");

    // Released on A: the VM is off, the line removed, and B's job gets the VM.
    a.cli(&["jobs", "release", ja.id.as_str()]);
    within("A powers the VM off", Duration::from_secs(5), || {
        store_a.holds().unwrap().is_empty()
    })
    .await;
    let jb = ended(&store_b, "B's job ends", jb.id.as_str()).await;
    assert_eq!(jb.state, JobState::Success, "{:?}", jb.note);
    assert_eq!(jb.vm.as_deref(), Some(VM));
    kill(host_a);
    kill(host_b);
}

#[tokio::test]
async fn an_attempt_re_adopted_during_make_dev_still_takes_its_provisioned_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    std::fs::write(ctl.join("hang"), "").unwrap();
    let i = Install::new(&sim, FAST, "", 3600);
    let store = i.store();
    let host = i.serve(1);
    healthy(&i.url).await;
    let c = reqwest::Client::new();
    assert_eq!(deliver_push(&c, &i.url, "d1", "main", 1).await.0, 202);
    eventually("sdci-dom0 launch runs", || {
        job_by_sha(&store, 1).is_some_and(|j| j.state == JobState::Running)
            && store
                .launch_state(job_by_sha(&store, 1).unwrap().id.as_str())
                .unwrap()
                .is_some_and(|l| l.pid.is_some())
    })
    .await;
    let id = job_by_sha(&store, 1).unwrap().id.to_string();
    // The host dies while `make dev` runs; the next process re-adopts the attempt.
    kill(host);
    let host = i.serve(2);
    healthy(&i.url).await;
    let user = Config::load(&i.config()).unwrap().dom0.user;
    let home = sdci_protocol::paths::dom0_home(&user);
    let paths = sdci_protocol::JobPaths::in_home(&home, &id.parse().unwrap());
    let file = sim.guest_path(VM, &paths.job_file());
    let file = JobFile::from_json(&std::fs::read(file).unwrap()).unwrap();
    relay_provision(&i.url, &file).await;
    eventually(
        "the re-adopted attempt takes the provisioned snapshot",
        || store.stage_snapshot(&id).unwrap().is_some(),
    )
    .await;
    std::fs::remove_file(ctl.join("hang")).unwrap();
    let job = ended(&store, "the job ends", &id).await;
    assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    assert_eq!(job.attempts, 1, "the same attempt, re-adopted");
    let snap = store.stage_snapshot(&id).unwrap().unwrap();
    assert_eq!(snap.name, format!("sdci-job-{id}-provisioned"));
    let hv = i.vsphere().await;
    let names: Vec<String> = hv
        .snapshots(VM)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(names.contains(&snap.name), "{names:?}");
    kill(host);
}

#[tokio::test]
async fn a_held_vm_powered_off_behind_the_hosts_back_ends_its_hold_and_loses_its_lease_line() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&[VM], &ctl);
    std::fs::write(ctl.join("exit"), "1").unwrap();
    let extra = "[deadlines]\ndownload_secs = 900\n[jobs]\npoll_interval_ms = 50\n\
                 lease_ttl_secs = 4\n";
    let i = Install::new(&sim, extra, HOLD_ON_FAILURE, 3600);
    let store = i.store();
    let host = i.serve(1);
    healthy(&i.url).await;
    let job = push_and_end(&i, &store, 1).await;
    assert_eq!(job.state, JobState::Failure, "{:?}", job.note);
    eventually("the hold recorded", || {
        store.hold_of_job(job.id.as_str()).unwrap().is_some()
    })
    .await;
    let hv = i.vsphere().await;
    assert!(leases::read(&hv, VM).await.unwrap().is_some());

    // A person (or an instance that took the lease over) powers it off: the hold is over.
    hv.power_off(VM).await.unwrap();
    within(
        "the hold ends at the next lease tick (ttl/4 = 1 s)",
        Duration::from_secs(5),
        || store.holds().unwrap().is_empty(),
    )
    .await;
    assert_eq!(leases::read(&hv, VM).await.unwrap(), None, "no lease left");
    let vm = store
        .vms()
        .unwrap()
        .into_iter()
        .find(|v| v.name == VM)
        .unwrap();
    assert_eq!(vm.job_id, None, "the VM is free for the next job");
    kill(host);
}
