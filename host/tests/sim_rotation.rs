//! Golden-snapshot rotation and a job's update phase on VMware's govmomi simulator through the
//! real vim25 client, with a real SQLite store: the snapshot is taken, smoke-tested, the pointer
//! moves, old `update_*` snapshots go while the current and previous golden stay; an injected
//! smoke-test failure keeps the pointer and leaves the VM off; a job queued during a rotation
//! waits and then uses the new golden snapshot; a job's updates land in dom0's log before the
//! build steps, and the VM reboots between them.
//!
//! In the guest, dom0's programs are stub scripts (contracts §2: R/usr/bin/..., R/usr/local/bin):
//! `sudo` runs its arguments, `qubesctl`, `qvm-start` and `sdci-dom0` record each call in a host
//! folder CTL (outside the guest, so reverts do not undo it) and exit with the code in
//! `CTL/<tool>.exit` (default 0); `qubesctl` waits while `CTL/hold` exists, a job's
//! `sdci-dom0 launch` while `CTL/job-hold` exists.

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::{powered_off, start_host};
use common::*;
use sdci_host::config::Config;
use sdci_host::domain::JobState;
use sdci_host::orchestration::rotation::{RotationReport, Rotator, SaveRequest};
use sdci_host::store::Store;
use sdci_tests::slack::SlackStandIn;
use sdci_tests::vsphere_sim::{SimOptions, SimVm, VsphereSim};
use sdci_vsphere::{GuestAuth, Hypervisor, VsphereClient};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const VM: &str = "Qubes_4.2_a";
const OLD: [&str; 4] = [
    "golden",
    "update_20200101000000",
    "update_20200102000000",
    "update_20200103000000",
];

fn tool(ctl: &Path, name: &str, extra: &str) -> String {
    let c = ctl.display();
    format!(
        "#!/bin/sh\necho \"{name} $*\" >> '{c}/calls'\necho \"{name} output: $*\"\n{extra}\
         code=0\n[ -f '{c}/{name}.exit' ] && code=$(cat '{c}/{name}.exit')\nexit \"$code\"\n"
    )
}

fn dom0_stub(ctl: &Path) -> String {
    let c = ctl.display();
    format!(
        "#!/bin/sh\necho \"sdci-dom0 $*\" >> '{c}/calls'\n\
         if [ \"$1\" = --version ]; then echo 'sdci-dom0 0.1.0'; exit 0; fi\n\
         dir=$(dirname \"$2\")\n\
         while [ -f '{c}/job-hold' ]; do sleep 0.05; done\n\
         echo \"==> step 1/1 make-test: make test\" >> \"$dir/log.txt\"\n\
         echo \"result: success\" >> \"$dir/log.txt\"\nexit 0\n"
    )
}

fn vm(ctl: &Path) -> SimVm {
    let hold = format!(
        "while [ -f '{}/hold' ]; do sleep 0.05; done\n",
        ctl.display()
    );
    SimVm::new(VM)
        .snapshots(&OLD)
        .tools_delay(Some(Duration::from_millis(100)))
        .shutdown_delay(Duration::from_millis(100))
        .file("/usr/bin/sudo", "#!/bin/sh\nexec \"$@\"\n", 0o755)
        .file("/usr/bin/qubesctl", tool(ctl, "qubesctl", &hold), 0o755)
        .file("/usr/bin/qvm-start", tool(ctl, "qvm-start", ""), 0o755)
        .file("/usr/local/bin/sdci-dom0", dom0_stub(ctl), 0o755)
}

fn start_sim(ctl: &Path) -> VsphereSim {
    std::fs::create_dir_all(ctl).unwrap();
    VsphereSim::start(SimOptions::vcenter().vms(vec![vm(ctl)])).unwrap()
}

const ROTATION: &str = "[rotation]\nkeep = 2\nbusy_poll_secs = 1\n";

fn config(dir: &Path, sim: &VsphereSim, extra: &str) -> Config {
    let text = config_text(
        dir,
        "127.0.0.1:9",
        &common::sim::sim_toml(sim, dir, &format!("{ROTATION}{extra}")),
    );
    std::fs::write(dir.join("dom0-password"), sim.guest_password()).unwrap();
    Config::parse(&text, Path::new("test.toml")).unwrap()
}

async fn client(cfg: &Config) -> (VsphereClient, GuestAuth) {
    let hv = VsphereClient::connect(cfg.vsphere.client_config().unwrap())
        .await
        .unwrap();
    (hv, sdci_host::server::guest_auth(cfg).unwrap())
}

/// A simulator with the pool's VM (its dom0 tools exiting with the given `(tool, code)`s), the
/// host config for it, and a connected client.
struct Rig {
    dir: tempfile::TempDir,
    ctl: PathBuf,
    sim: VsphereSim,
    cfg: Config,
    hv: VsphereClient,
    auth: GuestAuth,
}

async fn rig(exits: &[(&str, &str)]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&ctl);
    for (tool, code) in exits {
        std::fs::write(ctl.join(format!("{tool}.exit")), code).unwrap();
    }
    let cfg = config(dir.path(), &sim, "");
    let (hv, auth) = client(&cfg).await;
    Rig {
        dir,
        ctl,
        sim,
        cfg,
        hv,
        auth,
    }
}

/// A simulator whose guest waits while `CTL/<hold>` exists (created here), and the service on
/// it polling for jobs every 50 ms: the temporary folder, CTL, the simulator and the host.
async fn start_holding(hold: &str) -> (tempfile::TempDir, PathBuf, VsphereSim, TestHost) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&ctl);
    std::fs::write(ctl.join(hold), "").unwrap();
    let host = start_host(
        dir.path(),
        &sim,
        &format!("{ROTATION}[jobs]\npoll_interval_ms = 50\n"),
    )
    .await;
    (dir, ctl, sim, host)
}

/// Runs one rotation of pool 4.2 through a `Rotator` (with updates when `update`, from `base`
/// when given) and returns its report; `wake` is called once the leases are released.
async fn save(
    hv: &VsphereClient,
    auth: &GuestAuth,
    cfg: &Config,
    store: &Store,
    update: bool,
    base: Option<&str>,
    wake: &(dyn Fn() + Sync),
) -> RotationReport {
    let r = Rotator {
        cfg,
        store,
        hv,
        auth,
    };
    let req = SaveRequest {
        version: "4.2".into(),
        update,
        base: base.map(str::to_owned),
    };
    r.save(&req, wake).await.unwrap()
}

async fn names(hv: &VsphereClient) -> Vec<String> {
    hv.snapshots(VM)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect()
}

fn calls(ctl: &Path) -> Vec<String> {
    std::fs::read_to_string(ctl.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn save_takes_a_smoke_tested_snapshot_moves_the_pointer_and_prunes_but_keeps_both_goldens() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&ctl);
    let mut slack = SlackStandIn::start(200).await.unwrap();
    std::fs::write(dir.path().join("slack"), slack.url()).unwrap();
    let notify = format!(
        "[notify]\nslack_webhook_file = \"{}\"\n",
        dir.path().join("slack").display()
    );
    let cfg = config(dir.path(), &sim, &notify);
    let store = Store::open(&cfg.db_path()).unwrap();
    // The pool currently runs from the oldest update_: after the rotation it is the previous
    // golden snapshot and must survive pruning although it is not among the newest 2.
    store
        .set_golden_snapshot("4.2", "update_20200101000000")
        .unwrap();
    let (hv, auth) = client(&cfg).await;
    let report = save(&hv, &auth, &cfg, &store, true, None, &|| {}).await;

    assert!(report.moved, "{}", report.to_text());
    let new = report.snapshot.clone();
    assert!(
        new.len() == "update_".len() + 14 && new.starts_with("update_"),
        "{new}"
    );
    assert_eq!(store.golden_snapshot("4.2", "golden").unwrap(), new);
    assert_eq!(report.previous, "update_20200101000000");
    assert_eq!(
        names(&hv).await,
        [
            "golden",
            "update_20200101000000",
            "update_20200103000000",
            &new
        ],
        "keep = 2 newest update_*, plus the previous golden; other snapshots untouched"
    );
    assert_eq!(report.vms[0].pruned, ["update_20200102000000"]);
    assert!(powered_off(&sim, VM));
    assert_eq!(store.vms().unwrap()[0].job_id, None, "lease released");

    // Updates in order (dom0 first), then the smoke test on the new snapshot.
    assert_eq!(
        calls(&ctl),
        [
            "qubesctl --show-output state.sls update.qubes-dom0",
            "qubesctl --show-output --skip-dom0 --templates --standalones state.sls \
             update.qubes-vm",
            "sdci-dom0 --version",
            "qvm-start --skip-if-running sd-dev",
        ]
    );
    let log = std::fs::read_to_string(&report.log).unwrap();
    let at = |s: &str| {
        log.find(s)
            .unwrap_or_else(|| panic!("{s:?} not in the log:\n{log}"))
    };
    assert!(at("update step 1/2 update-dom0") < at("qubesctl output: --show-output state.sls"));
    assert!(at("<== update-dom0: exit status 0") < at("update step 2/2 update-templates"));
    assert!(at("<== sdci-dom0-version: exit status 0") < at("passed the smoke test"));

    let m = slack.next(Duration::from_secs(60)).await.unwrap();
    let t = m["text"].as_str().unwrap();
    assert!(t.contains("rotation ok") && t.contains(&new), "{t}");
    let metrics =
        sdci_host::surface::metrics::rotation_metrics(&Store::open(&cfg.db_path()).unwrap());
    assert!(
        metrics.contains("sdci_rotations{version=\"4.2\",result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failing_smoke_test_keeps_the_pointer_removes_the_snapshot_and_leaves_the_vm_off() {
    // The dev VM does not start on the fresh snapshot.
    let Rig {
        dir: _dir,
        ctl: _,
        sim,
        cfg,
        hv,
        auth,
    } = rig(&[("qvm-start", "1")]).await;
    let store = Store::open(&cfg.db_path()).unwrap();
    let before = names(&hv).await;
    let report = save(&hv, &auth, &cfg, &store, true, None, &|| {}).await;

    assert!(!report.moved);
    assert!(
        report.vms[0].detail.contains("smoke test")
            && report.vms[0]
                .detail
                .contains("start-dev-vm exited with status 1"),
        "{}",
        report.to_text()
    );
    assert_eq!(store.golden_snapshot("4.2", "golden").unwrap(), "golden");
    assert!(powered_off(&sim, VM), "the VM is left off");
    assert_eq!(
        names(&hv).await,
        before,
        "the failed snapshot is removed, nothing pruned"
    );
    assert_eq!(store.vms().unwrap()[0].job_id, None, "lease released");
    let metrics =
        sdci_host::surface::metrics::rotation_metrics(&Store::open(&cfg.db_path()).unwrap());
    assert!(metrics.contains("result=\"failed\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_failing_update_keeps_the_pointer_and_takes_no_snapshot() {
    let Rig {
        dir: _dir,
        ctl,
        sim,
        cfg,
        hv,
        auth,
    } = rig(&[("qubesctl", "20")]).await;
    let store = Store::open(&cfg.db_path()).unwrap();
    let before = names(&hv).await;
    let report = save(&hv, &auth, &cfg, &store, true, None, &|| {}).await;
    assert!(!report.moved);
    assert!(
        report.vms[0]
            .detail
            .contains("update-dom0 exited with status 20"),
        "{}",
        report.to_text()
    );
    assert_eq!(calls(&ctl).len(), 1, "stops at the first failing update");
    assert_eq!(store.golden_snapshot("4.2", "golden").unwrap(), "golden");
    assert!(powered_off(&sim, VM));
    assert_eq!(names(&hv).await, before);
}

#[tokio::test]
async fn a_job_queued_during_a_rotation_waits_for_the_vm_and_then_uses_the_new_golden() {
    // The rotation's first update step waits until the test removes this file.
    let (_dir, ctl, sim, host) = start_holding("hold").await;
    let hub = host.hub.clone();
    let (hv, auth) = client(&hub.cfg).await;
    let rotation = tokio::spawn(async move {
        let wake = || hub.wake_all();
        save(&hv, &auth, &hub.cfg, &hub.store, true, None, &wake).await
    });
    eventually("the rotation holds the VM and is updating it", || {
        !calls(&ctl).is_empty()
    })
    .await;
    let lease = host.hub.store.vms().unwrap()[0].job_id.clone().unwrap();
    assert!(lease.starts_with("rotation-"), "{lease}");
    // The service's reconciler sees a powered-on VM without a job: the rotation's lease keeps it
    // from powering the VM off.
    let (hv2, auth2) = client(&host.hub.cfg).await;
    let orch = sdci_host::orchestration::Orchestrator::new(host.hub.clone(), Arc::new(hv2), auth2);
    orch.reconcile_once().await;
    assert!(!powered_off(&sim, VM), "a VM being rotated is not stray");

    let c = reqwest::Client::new();
    let (code, text) = deliver_push(&c, &host.url, "d1", "main", 1).await;
    assert_eq!(code, 202, "{text}");
    let id = host.hub.store.recent_jobs(1).unwrap()[0].id.clone();
    eventually("the job's version is known", || {
        host.hub.store.job(&id).unwrap().unwrap().version.is_some()
    })
    .await;
    assert_eq!(
        host.hub.store.job(&id).unwrap().unwrap().state,
        JobState::Queued,
        "the leased VM is not claimed"
    );

    std::fs::remove_file(ctl.join("hold")).unwrap();
    let report = rotation.await.unwrap();
    assert!(report.moved, "{}", report.to_text());
    let job = job_ended(&host, "job ends", &id).await;
    assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    let notes: Vec<String> = host
        .hub
        .store
        .transitions(&id)
        .unwrap()
        .into_iter()
        .filter_map(|t| t.3)
        .collect();
    let revert = format!("revert {VM} to {}", report.snapshot);
    assert!(notes.contains(&revert), "{notes:?}");
    assert!(powered_off(&sim, VM));
}

#[tokio::test]
async fn a_jobs_update_phase_logs_the_updates_before_the_build_steps_and_reboots_the_vm() {
    let Rig {
        dir: _dir,
        ctl: _,
        sim,
        cfg,
        hv,
        auth,
    } = rig(&[]).await;
    let hub = sdci_host::server::hub_from_config(cfg).unwrap();
    let orch = sdci_host::orchestration::Orchestrator::new(hub.clone(), Arc::new(hv), auth.clone());
    let hv = &orch.hv;
    hv.revert(VM, "golden").await.unwrap();
    hv.power_on(VM).await.unwrap();
    hv.wait_guest_ready(VM, Duration::from_secs(60))
        .await
        .unwrap();
    // A process from before the update phase: gone after it, because the VM rebooted.
    let before = hv
        .start_program(
            VM,
            &auth,
            &sdci_vsphere::GuestProgram {
                path: "/bin/sh".into(),
                arguments: "-c 'exec sleep 300'".into(),
                env: vec![],
                working_directory: None,
            },
        )
        .await
        .unwrap();

    let job = "1234567-abcd";
    orch.update_phase(VM, &job.parse().unwrap()).await.unwrap();
    assert_ne!(
        hv.process_state(VM, &auth, before).await.unwrap(),
        sdci_vsphere::ProcessState::Running,
        "the VM was rebooted"
    );
    assert!(!powered_off(&sim, VM), "back on, ready for the job");

    // What the lifecycle does next: `sdci-dom0 launch` appends the build steps to the same log.
    let launch = hv
        .start_program(
            VM,
            &auth,
            &sdci_vsphere::GuestProgram {
                path: "/usr/local/bin/sdci-dom0".into(),
                arguments: format!("launch .sdci/jobs/{job}/job.json"),
                env: vec![],
                working_directory: Some("/home/user".into()),
            },
        )
        .await
        .unwrap();
    let end = hv
        .wait_program(VM, &auth, launch, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(end, sdci_vsphere::ProcessState::Exited(0));
    let dom0_log = hv
        .download(VM, &auth, &format!("/home/user/.sdci/jobs/{job}/log.txt"))
        .await
        .unwrap();
    let dom0_log = String::from_utf8(dom0_log).unwrap();
    let at = |s: &str| {
        dom0_log
            .find(s)
            .unwrap_or_else(|| panic!("{s:?} not in dom0's log:\n{dom0_log}"))
    };
    assert!(at("update step 1/2 update-dom0") < at("update step 2/2 update-templates"));
    assert!(at("<== update-templates: exit status 0") < at("==> step 1/1 make-test"));
    // The host's copy of the job log got the update output as it went.
    let host_log =
        std::fs::read_to_string(sdci_host::joblog::log_path(&hub.cfg.log_dir(), job)).unwrap();
    assert!(
        host_log.contains("qubesctl output: --show-output state.sls update.qubes-dom0"),
        "{host_log}"
    );
}

#[tokio::test]
async fn a_failing_update_in_a_job_is_an_infrastructure_fault_not_a_project_failure() {
    let Rig {
        dir: _dir,
        ctl: _,
        sim: _sim,
        cfg,
        hv,
        auth,
    } = rig(&[("qubesctl", "1")]).await;
    let hub = sdci_host::server::hub_from_config(cfg).unwrap();
    let orch = sdci_host::orchestration::Orchestrator::new(hub, Arc::new(hv), auth);
    orch.hv.revert(VM, "golden").await.unwrap();
    orch.hv.power_on(VM).await.unwrap();
    orch.hv
        .wait_guest_ready(VM, Duration::from_secs(60))
        .await
        .unwrap();
    let e = orch
        .update_phase(VM, &"1234567-abcd".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.class(), sdci_vsphere::ErrorClass::RetryOtherVm);
    assert!(
        e.to_string().contains("update-dom0 exited with status 1"),
        "{e}"
    );
}

#[tokio::test]
async fn the_save_command_prints_the_new_golden_and_exits_1_when_the_rotation_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = start_sim(&ctl);
    let text = config_text(
        dir.path(),
        "127.0.0.1:9",
        &common::sim::sim_toml(&sim, dir.path(), ROTATION),
    );
    std::fs::write(dir.path().join("dom0-password"), sim.guest_password()).unwrap();
    let file = dir.path().join("host.toml");
    std::fs::write(&file, text).unwrap();
    // The database as `serve` leaves it: the CLI never creates or migrates one.
    drop(Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap());
    let save = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sdci-host"))
            .arg("--config")
            .arg(&file)
            .args(["save", "--version", "4.2", "--update"])
            .output()
            .unwrap()
    };
    let out = save();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("golden snapshot is now update_"),
        "{stdout}"
    );
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();
    let golden = store.golden_snapshot("4.2", "golden").unwrap();
    assert!(golden.starts_with("update_"), "{golden}");

    std::fs::write(ctl.join("qvm-start.exit"), "1").unwrap();
    let out = save();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("FAILED, golden snapshot stays {golden}")),
        "{stdout}"
    );
    assert_eq!(store.golden_snapshot("4.2", "golden").unwrap(), golden);
    assert!(powered_off(&sim, VM));
}

#[tokio::test]
async fn a_new_snapshot_name_never_collides_with_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    // Every update_ name of the next 30 seconds exists already.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let taken: Vec<String> = (0..30)
        .map(|i| {
            format!(
                "update_{}",
                sdci_protocol::Utc::from_unix(now + i).compact()
            )
        })
        .collect();
    let mut chain = vec!["golden"];
    chain.extend(taken.iter().map(String::as_str));
    let sim =
        VsphereSim::start(SimOptions::vcenter().vms(vec![vm(&ctl).snapshots(&chain)])).unwrap();
    let cfg = config(dir.path(), &sim, "");
    let store = Store::open(&cfg.db_path()).unwrap();
    let (hv, auth) = client(&cfg).await;
    let report = save(&hv, &auth, &cfg, &store, false, None, &|| {}).await;
    assert!(report.moved, "{}", report.to_text());
    assert!(!taken.contains(&report.snapshot), "{}", report.snapshot);
    let all = names(&hv).await;
    assert_eq!(all.iter().filter(|n| **n == report.snapshot).count(), 1);
}

#[tokio::test]
async fn save_with_a_snapshot_name_starts_from_that_snapshot() {
    let Rig {
        dir: _dir,
        ctl,
        sim: _sim,
        cfg,
        hv,
        auth,
    } = rig(&[]).await;
    let store = Store::open(&cfg.db_path()).unwrap();
    let report = save(
        &hv,
        &auth,
        &cfg,
        &store,
        false,
        Some("update_20200102000000"),
        &|| {},
    )
    .await;
    assert!(report.moved, "{}", report.to_text());
    assert!(
        calls(&ctl).iter().all(|c| !c.starts_with("qubesctl")),
        "no updates asked"
    );
    let tree = hv.snapshots(VM).await.unwrap();
    let new = tree.iter().find(|s| s.name == report.snapshot).unwrap();
    assert_eq!(new.parent.as_deref(), Some("update_20200102000000"));
    assert_eq!(report.previous, "golden", "the pointer named golden before");
}

/// The SOAP traffic the simulator traced, in order: each request's method name (for
/// `StartProgramInGuest`: `Start <path> <arguments>`), and `poweredOff` for each answer that
/// reported a powered-off VM. (`ShutdownGuest` is answered by the simulator's own layer in front
/// of vcsim and is not traced; the power-off it causes is.)
fn traced_calls(log: &str) -> Vec<String> {
    let text_of = |body: &str, tag: &str| -> String {
        let open = format!("<{tag}>");
        body.split_once(&open)
            .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
            .map(|(t, _)| t.to_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for chunk in log.split("Request: ").skip(1) {
        let (req, answer) = chunk.split_once("Response: ").unwrap_or((chunk, ""));
        let Some((_, after)) = req.split_once("Body>") else {
            continue;
        };
        let method = after
            .trim_start_matches('<')
            .split([' ', '>'])
            .next()
            .unwrap_or_default();
        out.push(if method == "StartProgramInGuest" {
            format!(
                "Start {} {}",
                text_of(after, "programPath"),
                text_of(after, "arguments")
            )
        } else {
            method.to_owned()
        });
        if answer.contains(">poweredOff<") {
            out.push("poweredOff".into());
        }
    }
    out
}

#[tokio::test]
async fn a_rotation_waiting_for_a_busy_vm_gets_it_before_the_next_queued_job() {
    // The first job holds the pool's only VM until the test removes this file.
    let (_dir, ctl, _sim, host) = start_holding("job-hold").await;
    let c = reqwest::Client::new();
    let queue = |n: u32, branch: &'static str| {
        let (c, url) = (c.clone(), host.url.clone());
        async move {
            let (code, text) = deliver_push(&c, &url, &format!("d{n}"), branch, n).await;
            assert_eq!(code, 202, "{text}");
        }
    };
    let job_of = |n: u32| {
        host.hub
            .store
            .recent_jobs(10)
            .unwrap()
            .into_iter()
            .find(|j| j.sha == sha(n))
            .unwrap()
    };
    queue(1, "a").await;
    eventually("the first job runs", || {
        job_of(1).state == JobState::Running
    })
    .await;

    let hub = host.hub.clone();
    let (hv, auth) = client(&hub.cfg).await;
    let rotation = tokio::spawn(async move {
        let wake = || hub.wake_all();
        save(&hv, &auth, &hub.cfg, &hub.store, false, None, &wake).await
    });
    let logs = host.hub.cfg.log_dir();
    eventually("the rotation waits for the busy VM", || {
        std::fs::read_dir(&logs).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("rotation-")
                && std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains("busy; waiting")
        })
    })
    .await;
    // A second job queues behind the first; then the first ends and frees the VM. The
    // scheduler is woken at once, the rotation only at its next poll.
    queue(2, "b").await;
    eventually("the second job's version is known", || {
        job_of(2).version.is_some()
    })
    .await;
    assert_eq!(job_of(2).state, JobState::Queued);
    std::fs::remove_file(ctl.join("job-hold")).unwrap();

    let report = rotation.await.unwrap();
    assert!(report.moved, "{}", report.to_text());
    eventually("the second job ends", || job_of(2).state.is_terminal()).await;
    let second = job_of(2);
    assert_eq!(second.state, JobState::Success, "{:?}", second.note);
    let notes: Vec<String> = host
        .hub
        .store
        .transitions(&second.id)
        .unwrap()
        .into_iter()
        .filter_map(|t| t.3)
        .collect();
    let revert = format!("revert {VM} to {}", report.snapshot);
    assert!(
        notes.contains(&revert),
        "the queued job took the VM before the rotation: {notes:?}"
    );
}

#[tokio::test]
async fn a_job_with_updates_runs_the_updates_and_the_reboot_before_sdci_dom0_launch_once() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    let sim = VsphereSim::start(SimOptions::vcenter().trace(true).vms(vec![vm(&ctl)])).unwrap();
    let host = start_host(
        dir.path(),
        &sim,
        &format!("{ROTATION}[jobs]\npoll_interval_ms = 50\n"),
    )
    .await;
    let id = sdci_host::surface::cli::run(
        &host.hub.cfg,
        Some("freedomofpress/securedrop-workstation"),
        "4.2",
        &sha(7),
        None,
        true,
    )
    .unwrap();
    host.hub.wake_all();
    let job = job_ended(&host, "job ends", &id).await;
    assert_eq!(job.state, JobState::Success, "{:?}", job.note);

    // In dom0: both update commands, then the launch.
    let calls = calls(&ctl);
    let launch = format!("sdci-dom0 launch .sdci/jobs/{id}/job.json");
    assert_eq!(
        calls,
        [
            "qubesctl --show-output state.sls update.qubes-dom0".to_owned(),
            "qubesctl --show-output --skip-dom0 --templates --standalones state.sls \
             update.qubes-vm"
                .to_owned(),
            launch.clone(),
        ]
    );
    // On vSphere: power on, the two updates, the reboot (guest shutdown, power on), then launch.
    let soap: Vec<String> = traced_calls(&sim.log())
        .into_iter()
        .filter(|c| c == "PowerOnVM_Task" || c == "poweredOff" || c.starts_with("Start "))
        .collect();
    let at = |what: &str| {
        soap.iter()
            .position(|c| c.contains(what))
            .unwrap_or_else(|| panic!("{what:?} not called: {soap:?}"))
    };
    let (dom0_update, templates) = (at("update.qubes-dom0"), at("update.qubes-vm"));
    let start_launch = at("/usr/local/bin/sdci-dom0");
    let first_on = at("PowerOnVM_Task");
    assert!(
        first_on < dom0_update && dom0_update < templates,
        "{soap:?}"
    );
    let between: Vec<&str> = soap[templates + 1..start_launch]
        .iter()
        .map(String::as_str)
        .collect();
    let off = between.iter().position(|c| *c == "poweredOff");
    let on = between.iter().rposition(|c| *c == "PowerOnVM_Task");
    assert!(
        matches!((off, on), (Some(a), Some(b)) if a < b),
        "rebooted (off, then on) between the updates and the launch: {soap:?}"
    );
    assert!(
        between.iter().all(|c| !c.starts_with("Start ")),
        "nothing else ran in dom0 in between: {soap:?}"
    );
    assert!(soap[start_launch].ends_with(&format!("launch .sdci/jobs/{id}/job.json")));
    // The updates run once: not again as steps of the job file.
    let file =
        std::fs::read(sim.guest_path(VM, &format!("/home/user/.sdci/jobs/{id}/job.json"))).unwrap();
    let file = sdci_protocol::JobFile::from_json(&file).unwrap();
    assert_eq!(file.spec.steps, sdci_protocol::job::default_steps());
    // dom0's log (the job's log) shows the updates before the build steps.
    let log =
        std::fs::read_to_string(sdci_host::joblog::log_path(&host.hub.cfg.log_dir(), &id)).unwrap();
    let (u, b) = (
        log.find("update step 2/2 update-templates").unwrap(),
        log.find("==> step 1/1 make-test").unwrap(),
    );
    assert!(u < b, "{log}");
}
