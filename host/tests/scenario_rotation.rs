//! Scenario snapshots in the rotation (issue 20, step 4) on VMware's govmomi simulator through
//! the real vim25 client, with a real SQLite store: `sdci-host save --version V --scenario S`
//! provisions, snapshots and smoke-tests the scenario on every VM of the pool and only then
//! moves the scenario's own pointer; a provisioning command failing (or running past its
//! timeout) on one VM leaves the pointer and removes that VM's snapshot; `keep` prunes older
//! `scenario-<S>_*` snapshots, never the golden ones, the previous one nor the base; a matrix cell
//! of the scenario reverts to the new snapshot (the guest tree shows what the provisioning
//! command wrote) and, before any is built, ends `error` naming the command to run;
//! `check-config` shows the scenarios and `--connect` marks the current snapshot; configuration
//! errors name the key.
//!
//! In the guest, dom0's programs are stub scripts (contracts §2: `R/usr/bin/...`,
//! `R/usr/local/bin`): `sdw-install-prod` (the provisioning command) records its call in a host
//! folder CTL (outside the guest, so reverts do not undo it), writes `R/var/lib/sdw/installed`,
//! waits while `CTL/hang` exists and exits 7 when `CTL/fail-<vm>` exists; `qvm-start` records
//! its call; `sdci-dom0` is `common::sim::stub_dom0`.

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::{powered_off, sim_toml, start_host};
use common::*;
use sdci_host::config::Config;
use sdci_host::domain::JobState;
use sdci_host::orchestration::matrix::JobCell;
use sdci_host::orchestration::rotation::{RotationReport, Rotator, ScenarioRequest};
use sdci_host::store::{NewCell, NewJob, Store};
use sdci_tests::slack::SlackStandIn;
use sdci_tests::vsphere_sim::{SimOptions, SimVm, VsphereSim};
use sdci_vsphere::{GuestAuth, Hypervisor, VsphereClient};
use std::path::{Path, PathBuf};
use std::time::Duration;

const A: &str = "Qubes_4.2_a";
const B: &str = "Qubes_4.2_b";
const S: &str = "prod-installed";
/// Where the provisioning command leaves its mark in the guest.
const MARK: &str = "/var/lib/sdw/installed";

fn install_stub(ctl: &Path) -> String {
    let c = ctl.display();
    format!(
        "#!/bin/sh\nvm=$(basename \"$SDCI_GUEST_ROOT\")\n\
         echo \"sdw-install-prod $* on $vm\" >> '{c}/calls'\n\
         echo \"installing prod on $vm\"\n\
         while [ -f '{c}/hang' ]; do sleep 0.05; done\n\
         if [ -f '{c}/fail-'\"$vm\" ]; then echo \"install failed on $vm\" >&2; exit 7; fi\n\
         mkdir -p \"$SDCI_GUEST_ROOT/var/lib/sdw\" && echo \"prod $*\" > \"$SDCI_GUEST_ROOT{MARK}\"\n"
    )
}

fn vm(name: &str, ctl: &Path, snapshots: &[&str]) -> SimVm {
    let c = ctl.display();
    SimVm::new(name)
        .snapshots(snapshots)
        .tools_delay(Some(Duration::from_millis(100)))
        .shutdown_delay(Duration::from_millis(100))
        .file(
            "/usr/bin/qvm-start",
            format!("#!/bin/sh\necho \"qvm-start $*\" >> '{c}/calls'\n"),
            0o755,
        )
        .file("/usr/local/bin/sdw-install-prod", install_stub(ctl), 0o755)
        .file(
            "/usr/local/bin/sdci-dom0",
            common::sim::stub_dom0(ctl),
            0o755,
        )
}

/// The scenario's table (with `keep`, a 30 s timeout unless `timeout` says otherwise).
fn scenario_toml(keep: usize, timeout: u64) -> String {
    format!(
        "[pools.\"4.2\".scenarios.{S}]\nbase = \"golden\"\n\
         provision = [\"sdw-install-prod\", \"--env\", \"prod\"]\n\
         timeout_secs = {timeout}\nkeep = {keep}\n"
    )
}

/// A simulator with `vms`, the host config for it (pool 4.2 with the scenario), a connected
/// client, and the store.
struct Rig {
    dir: tempfile::TempDir,
    ctl: PathBuf,
    sim: VsphereSim,
    cfg: Config,
    hv: VsphereClient,
    auth: GuestAuth,
    store: Store,
}

async fn rig(vms: &[(&str, &[&str])], keep: usize, timeout: u64) -> Rig {
    rig_with(tempfile::tempdir().unwrap(), vms, keep, timeout, "").await
}

/// As [`rig`], in `dir`, with `extra` host config lines.
async fn rig_with(
    dir: tempfile::TempDir,
    vms: &[(&str, &[&str])],
    keep: usize,
    timeout: u64,
    extra: &str,
) -> Rig {
    let ctl = dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    let sim = VsphereSim::start(
        SimOptions::vcenter().vms(vms.iter().map(|(n, s)| vm(n, &ctl, s)).collect()),
    )
    .unwrap();
    let cfg = config(
        dir.path(),
        &sim,
        &format!("{}{extra}", scenario_toml(keep, timeout)),
    );
    let hv = VsphereClient::connect(cfg.vsphere.client_config().unwrap())
        .await
        .unwrap();
    let auth = sdci_host::server::guest_auth(&cfg).unwrap();
    let store = Store::open(&cfg.db_path()).unwrap();
    Rig {
        dir,
        ctl,
        sim,
        cfg,
        hv,
        auth,
        store,
    }
}

const HOST: &str = "[rotation]\nbusy_poll_secs = 1\n[jobs]\npoll_interval_ms = 50\n";

fn config(dir: &Path, sim: &VsphereSim, scenario: &str) -> Config {
    let text = config_text(
        dir,
        "127.0.0.1:9",
        &sim_toml(sim, dir, &format!("{HOST}{scenario}")),
    );
    std::fs::write(dir.join("dom0-password"), sim.guest_password()).unwrap();
    Config::parse(&text, Path::new("test.toml")).unwrap()
}

impl Rig {
    async fn save(&self) -> RotationReport {
        let r = Rotator {
            cfg: &self.cfg,
            store: &self.store,
            hv: &self.hv,
            auth: &self.auth,
        };
        let req = ScenarioRequest {
            version: "4.2".into(),
            scenario: S.into(),
        };
        r.save_scenario(&req, &|| {}).await.unwrap()
    }

    async fn names(&self, vm: &str) -> Vec<String> {
        self.hv
            .snapshots(vm)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    fn calls(&self) -> Vec<String> {
        let mut c: Vec<String> = std::fs::read_to_string(self.ctl.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        c.sort();
        c
    }

    fn marked(&self, vm: &str) -> bool {
        self.sim.guest_path(vm, MARK).is_file()
    }
}

#[tokio::test]
async fn save_scenario_provisions_and_smoke_tests_every_vm_then_moves_only_the_scenarios_pointer() {
    let rig = rig(&[(A, &["golden"]), (B, &["golden"])], 2, 30).await;
    let report = rig.save().await;

    assert!(report.moved, "{}", report.to_text());
    let new = report.snapshot.clone();
    assert!(
        new.len() == "scenario-prod-installed_".len() + 14
            && new.starts_with("scenario-prod-installed_"),
        "{new}"
    );
    assert_eq!(
        rig.store.scenario_snapshot("4.2", S).unwrap().as_deref(),
        Some(new.as_str())
    );
    assert_eq!(
        rig.store.golden_snapshot("4.2", "golden").unwrap(),
        "golden",
        "the golden pointer does not move"
    );
    for vm in [A, B] {
        assert_eq!(rig.names(vm).await, ["golden", new.as_str()], "{vm}");
        assert!(powered_off(&rig.sim, vm), "{vm} is left off");
        assert!(
            rig.marked(vm),
            "{vm}: the snapshot holds what provisioning wrote"
        );
    }
    assert!(rig.store.vms().unwrap().iter().all(|v| v.job_id.is_none()));
    // Provisioning on each VM (from the host config's argv), then each VM's smoke test.
    assert_eq!(
        rig.calls(),
        [
            "qvm-start --skip-if-running sd-dev",
            "qvm-start --skip-if-running sd-dev",
            "sdw-install-prod --env prod on Qubes_4.2_a",
            "sdw-install-prod --env prod on Qubes_4.2_b",
        ]
    );
    let text = report.to_text();
    assert!(
        text.starts_with(&format!(
            "Qubes 4.2: scenario {S} snapshot is now {new} (was none)"
        )),
        "{text}"
    );
    let log = std::fs::read_to_string(&report.log).unwrap();
    let at = |s: &str| {
        log.find(s)
            .unwrap_or_else(|| panic!("{s:?} not in the log:\n{log}"))
    };
    assert!(at("provision-prod-installed: sdw-install-prod --env prod") < at("installing prod on"));
    assert!(at("<== provision-prod-installed: exit status 0") < at("passed the smoke test"));
    let metrics = sdci_host::surface::metrics::rotation_metrics(&rig.store);
    assert!(
        metrics.contains("sdci_rotations{version=\"4.2\",result=\"ok\"} 1"),
        "{metrics}"
    );

    // check-config shows the scenario; --connect lists its snapshots and marks the current one.
    let offline = sdci_host::surface::check_config::report(&rig.cfg, Path::new("t")).unwrap();
    assert!(
        offline.contains(&format!(
            "# scenario 4.2/{S}: built from \"golden\" by `sdw-install-prod --env prod` \
             (timeout 30s), keeps 2 scenario-{S}_*"
        )),
        "{offline}"
    );
    let (online, _) = sdci_host::surface::check_config::connect(&rig.cfg).await;
    for vm in [A, B] {
        assert!(
            online.contains(&format!("pool 4.2: {vm} scenario {S}: [{new} (current)]")),
            "{online}"
        );
    }
    assert!(!online.contains("warning: pool 4.2"), "{online}");
    drop(rig.dir);
}

#[tokio::test]
async fn a_provisioning_command_failing_on_one_vm_leaves_the_pointer_and_removes_its_snapshot() {
    let rig = rig(&[(A, &["golden"]), (B, &["golden"])], 2, 30).await;
    let first = rig.save().await;
    assert!(first.moved, "{}", first.to_text());
    std::fs::write(rig.ctl.join(format!("fail-{B}")), "").unwrap();

    let report = rig.save().await;

    assert!(!report.moved, "{}", report.to_text());
    let b = report.vms.iter().find(|v| v.vm == B).unwrap();
    assert!(
        b.detail
            .contains("provisioning: provision-prod-installed exited with status 7"),
        "{}",
        report.to_text()
    );
    assert_eq!(
        rig.store.scenario_snapshot("4.2", S).unwrap().as_deref(),
        Some(first.snapshot.as_str()),
        "the pointer stays"
    );
    assert_eq!(
        rig.names(B).await,
        ["golden", first.snapshot.as_str()],
        "the failed VM's snapshot is removed"
    );
    assert!(powered_off(&rig.sim, B));
    assert!(rig.store.vms().unwrap().iter().all(|v| v.job_id.is_none()));
    let log = std::fs::read_to_string(&report.log).unwrap();
    assert!(log.contains("install failed on Qubes_4.2_b"), "{log}");
    assert!(
        report.to_text().contains(&format!(
            "rotation FAILED, scenario {S} snapshot stays {}",
            first.snapshot
        )),
        "{}",
        report.to_text()
    );
}

#[tokio::test]
async fn a_provisioning_command_past_its_timeout_is_terminated_and_nothing_is_adopted() {
    let rig = rig(&[(A, &["golden"])], 2, 1).await;
    std::fs::write(rig.ctl.join("hang"), "").unwrap();

    let report = rig.save().await;

    assert!(!report.moved, "{}", report.to_text());
    assert!(
        report.vms[0]
            .detail
            .contains("provision-prod-installed did not finish within 1s"),
        "{}",
        report.to_text()
    );
    assert_eq!(rig.store.scenario_snapshot("4.2", S).unwrap(), None);
    assert_eq!(rig.names(A).await, ["golden"], "no snapshot taken");
}

#[tokio::test]
async fn keep_prunes_older_scenario_snapshots_but_never_golden_ones_the_previous_nor_the_base() {
    let old = [
        "golden",
        "update_20200101000000",
        "update_20200102000000",
        "update_20200103000000",
        "scenario-prod-installed_20200101000000",
        "scenario-prod-installed_20200102000000",
        "scenario-prod-installed_20200103000000",
        "scenario-prod-installed.x_20200101000000",
    ];
    let rig = rig(&[(A, &old)], 2, 30).await;
    // The scenario currently points at its oldest snapshot: after the build it is the previous
    // one and survives although it is not among the newest 2.
    rig.store
        .set_scenario_snapshot("4.2", S, "scenario-prod-installed_20200101000000")
        .unwrap();

    let report = rig.save().await;

    assert!(report.moved, "{}", report.to_text());
    assert_eq!(
        report.vms[0].pruned,
        ["scenario-prod-installed_20200102000000"]
    );
    assert_eq!(
        rig.names(A).await,
        [
            "golden",
            "update_20200101000000",
            "update_20200102000000",
            "update_20200103000000",
            "scenario-prod-installed_20200101000000",
            "scenario-prod-installed_20200103000000",
            "scenario-prod-installed.x_20200101000000",
            report.snapshot.as_str(),
        ],
        "update_* and other scenarios untouched; keep = 2 newest plus the previous one"
    );
}

/// Creates a job of the matrix cell `4.2 / prod / upgrade`, whose scenario starts from `S`,
/// the way the intake does (a placeholder expanded into the cell's job); its id.
fn cell_job(cfg: &Config) -> String {
    let store = Store::open(&cfg.db_path()).unwrap();
    let job = NewJob {
        repo: REPO.parse().unwrap(),
        sha: sha(1).parse().unwrap(),
        reason: sdci_protocol::Reason::Manual,
        branch: None,
        supersede_key: None,
        clone_url: "x".into(),
        version: None,
        snapshot: None,
        update_first: false,
        commit_author: None,
        commit_subject: None,
    };
    let id = store
        .insert_requested_job(&job, "cells:4.2 / prod / upgrade", "test")
        .unwrap();
    let cell = JobCell {
        version: "4.2".into(),
        env: "prod".into(),
        scenario: Some("upgrade".into()),
        snapshot: Some(S.into()),
        before_dev: Vec::new(),
        test: None,
        fail_fast: false,
    };
    let name = "4.2 / prod / upgrade".to_owned();
    let e = store
        .expand_job(
            id.as_str(),
            &[NewCell {
                version: "4.2".into(),
                name,
                cell: cell.to_json(),
                queued_by: "manual".into(),
            }],
            "no cell",
            false,
        )
        .unwrap();
    assert_eq!(e.jobs.len(), 1, "{e:?}");
    e.jobs[0].0.to_string()
}

fn notes(host: &TestHost, id: &str) -> Vec<String> {
    host.hub
        .store
        .transitions(id)
        .unwrap()
        .into_iter()
        .filter_map(|t| t.3)
        .collect()
}

#[tokio::test]
async fn a_cell_of_a_built_scenario_reverts_to_its_new_snapshot() {
    let rig = rig(&[(A, &["golden"])], 2, 30).await;
    let report = rig.save().await;
    assert!(report.moved, "{}", report.to_text());
    // Back to the golden snapshot: no mark in the guest tree until a revert brings it back.
    rig.hv.revert(A, "golden").await.unwrap();
    assert!(!rig.marked(A));
    let id = cell_job(&rig.cfg);

    let host = start_host(
        rig.dir.path(),
        &rig.sim,
        &format!("{HOST}{}", scenario_toml(2, 30)),
    )
    .await;
    let job = job_ended(&host, "the cell's job ends", &id).await;

    assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    let revert = format!("revert {A} to {}", report.snapshot);
    assert!(
        notes(&host, &id).contains(&revert),
        "{:?}",
        notes(&host, &id)
    );
    assert!(rig.marked(A), "the job ran on the provisioned snapshot");
}

#[tokio::test]
async fn a_cell_of_a_scenario_not_built_yet_ends_error_naming_the_command_and_never_uses_golden() {
    let rig = rig(&[(A, &["golden"])], 2, 30).await;
    let id = cell_job(&rig.cfg);

    let host = start_host(
        rig.dir.path(),
        &rig.sim,
        &format!("{HOST}{}", scenario_toml(2, 30)),
    )
    .await;
    let job = job_ended(&host, "the cell's job ends", &id).await;

    assert_eq!(job.state, JobState::Error, "{:?}", job.note);
    let note = job.note.clone().unwrap_or_default();
    assert!(
        note.contains("sdci-host save --version 4.2 --scenario prod-installed"),
        "{note}"
    );
    assert!(
        !notes(&host, &id).iter().any(|n| n.starts_with("revert")),
        "{:?}",
        notes(&host, &id)
    );
    assert!(powered_off(&rig.sim, A));
}

#[tokio::test]
async fn save_scenario_refuses_a_fixed_or_unknown_scenario_naming_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    let sim = VsphereSim::start(SimOptions::vcenter().vms(vec![vm(A, &ctl, &["golden"])])).unwrap();
    let cfg = config(
        dir.path(),
        &sim,
        "[pools.\"4.2\".scenarios]\nfixed = \"sdw-by-hand\"\n",
    );
    let hv = VsphereClient::connect(cfg.vsphere.client_config().unwrap())
        .await
        .unwrap();
    let auth = sdci_host::server::guest_auth(&cfg).unwrap();
    let store = Store::open(&cfg.db_path()).unwrap();
    let r = Rotator {
        cfg: &cfg,
        store: &store,
        hv: &hv,
        auth: &auth,
    };
    let save = |s: &str| ScenarioRequest {
        version: "4.2".into(),
        scenario: s.into(),
    };
    let e = r.save_scenario(&save("fixed"), &|| {}).await.unwrap_err();
    assert!(
        e.to_string().contains("[pools.\"4.2\".scenarios.fixed]"),
        "{e}"
    );
    let e = r.save_scenario(&save("nope"), &|| {}).await.unwrap_err();
    assert!(e.to_string().contains("no scenario nope"), "{e}");
    assert_eq!(hv.snapshots(A).await.unwrap().len(), 1, "nothing touched");

    // --connect warns for a fixed scenario whose snapshot a VM lacks.
    let (online, _) = sdci_host::surface::check_config::connect(&cfg).await;
    assert!(
        online.contains(&format!(
            "# warning: pool 4.2: {A} scenario fixed: fixed snapshot \"sdw-by-hand\" MISSING"
        )),
        "{online}"
    );
}

#[test]
fn scenario_config_errors_name_the_key_and_what_to_write() {
    let parse = |scenario: &str| {
        let text = format!("[pools.\"4.3\"]\nprefix = \"Q\"\ngolden_snapshot = \"g\"\n{scenario}");
        Config::parse(&text, Path::new("t.toml"))
            .map(drop)
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (
            "[pools.\"4.3\".scenarios.prod]\nbase = \"golden\"\n",
            "provision",
        ),
        (
            "[pools.\"4.3\".scenarios.prod]\nprovision = []\n",
            "pools.\"4.3\".scenarios.prod.provision",
        ),
        (
            "[pools.\"4.3\".scenarios.prod]\nprovision = [\"x\"]\nprovison = 1\n",
            "provison",
        ),
        (
            "[pools.\"4.3\".scenarios.prod_x]\nprovision = [\"x\"]\n",
            "pools.\"4.3\".scenarios.prod_x",
        ),
        (
            "[pools.\"4.3\".scenarios.prod]\nprovision = [\"x\"]\nkeep = 0\n",
            "pools.\"4.3\".scenarios.prod.keep",
        ),
        (
            "[pools.\"4.3\".scenarios.prod]\nprovision = [\"x\"]\ntimeout_secs = 0\n",
            "pools.\"4.3\".scenarios.prod.timeout_secs",
        ),
        (
            "[pools.\"4.3\".scenarios.prod]\nprovision = [\"x\"]\nbase = \"scenario-prod_1\"\n",
            "pools.\"4.3\".scenarios.prod.base",
        ),
        (
            "[pools.\"4.3\".scenarios]\nprod = 3\n",
            "a scenario is a snapshot name",
        ),
    ];
    for (toml, want) in cases {
        let e = parse(toml);
        assert!(e.contains(want), "{toml}: {e}");
    }
    // Both kinds side by side load, with the defaults filled in.
    let cfg = Config::parse(
        "[pools.\"4.3\"]\nprefix = \"Q\"\ngolden_snapshot = \"g\"\n\
         scenarios = { fixed = \"by-hand\", prod = { provision = [\"install\"] } }\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let offline = sdci_host::surface::check_config::report(&cfg, Path::new("t")).unwrap();
    assert!(
        offline.contains("# scenario 4.3/fixed: fixed snapshot \"by-hand\" (made by hand)"),
        "{offline}"
    );
    assert!(
        offline.contains(
            "# scenario 4.3/prod: built from \"golden\" by `install` (timeout 3600s), keeps 2"
        ),
        "{offline}"
    );
}

/// The README's scenario table is the documentation of its keys: it parses, and the values it
/// shows as defaults are the defaults.
#[test]
fn the_readmes_scenario_table_parses_and_shows_the_defaults() {
    let readme = std::fs::read_to_string(sdci_tests::workspace_root().join("README.md")).unwrap();
    let block = readme
        .split("<!-- scenario-table:")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README's scenario table");
    let pool = "[pools.\"4.3\"]\nprefix = \"Q\"\ngolden_snapshot = \"g\"\n";
    let shown = Config::parse(&format!("{pool}{block}"), Path::new("README.md")).unwrap();
    let minimal = Config::parse(
        &format!("{pool}[pools.\"4.3\".scenarios.prod-installed]\nprovision = [\"x\"]\n"),
        Path::new("t"),
    )
    .unwrap();
    let built = |c: &Config| match &c.pools["4.3"].scenarios["prod-installed"] {
        sdci_host::config::Scenario::Built(b) => b.clone(),
        other => panic!("{other:?}"),
    };
    let (a, d) = (built(&shown), built(&minimal));
    assert_eq!(
        (&a.base, a.timeout_secs, a.keep),
        (&d.base, d.timeout_secs, d.keep)
    );
    assert_eq!(
        a.provision,
        ["sudo", "-u", "user", "/usr/local/bin/sdw-install-prod"]
    );
}

#[tokio::test]
async fn a_rotation_schedule_entry_naming_a_scenario_builds_that_scenario() {
    let rig = rig(&[(A, &["golden"])], 2, 30).await;
    let schedule = "[[rotation.schedule]]\nversion = \"4.2\"\ncron = \"0 4 * * 0\"\n\
                    time_zone = \"UTC\"\nscenario = \"prod-installed\"\n";
    let host = start_host(
        rig.dir.path(),
        &rig.sim,
        &format!("{HOST}{schedule}{}", scenario_toml(2, 30)),
    )
    .await;
    let entry = host.hub.cfg.rotation.schedule[0].clone();

    // What `serve` runs when the entry's cron expression fires.
    sdci_host::orchestration::rotation::run_schedule(&host.hub, &rig.hv, &rig.auth, &entry).await;

    let current = host.hub.store.scenario_snapshot("4.2", S).unwrap().unwrap();
    assert!(current.starts_with("scenario-prod-installed_"), "{current}");
    assert_eq!(rig.names(A).await, ["golden", current.as_str()]);
    assert_eq!(
        host.hub.store.golden_snapshot("4.2", "golden").unwrap(),
        "golden"
    );
    assert_eq!(
        host.hub.metrics.counters().get("rotations_ok"),
        Some(&1),
        "{:?}",
        host.hub.metrics.counters()
    );
}

#[test]
fn a_rotation_schedule_naming_no_built_scenario_is_a_load_error_naming_the_key() {
    for scenarios in ["", "[pools.\"4.2\".scenarios]\nprod = \"by-hand\"\n"] {
        let text = format!(
            "[[rotation.schedule]]\nversion = \"4.2\"\ncron = \"0 4 * * 0\"\ntime_zone = \"UTC\"\n\
             scenario = \"prod\"\n[pools.\"4.2\"]\nprefix = \"Q\"\ngolden_snapshot = \"g\"\n\
             {scenarios}"
        );
        let e = Config::parse(&text, Path::new("t.toml"))
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rotation.schedule[0].scenario \"prod\"")
                && e.contains("[pools.\"4.2\".scenarios.prod]"),
            "{scenarios}: {e}"
        );
    }
}

/// `sdci-host save --version V --scenario S`, the real binary on the simulator: exit 0 and the
/// new pointer printed; again with the provisioning failing: exit 1, the pointer kept.
/// Needs the binaries built first (`cargo build --workspace --bins`).
#[tokio::test]
async fn the_save_command_builds_the_scenario_and_exits_1_when_it_fails() {
    let rig = rig(&[(A, &["golden"])], 2, 30).await;
    let text = config_text(
        rig.dir.path(),
        "127.0.0.1:9",
        &sim_toml(
            &rig.sim,
            rig.dir.path(),
            &format!("{HOST}{}", scenario_toml(2, 30)),
        ),
    );
    // (`config_text` rewrites the guest password file.)
    std::fs::write(
        rig.dir.path().join("dom0-password"),
        rig.sim.guest_password(),
    )
    .unwrap();
    let file = rig.dir.path().join("host.toml");
    std::fs::write(&file, text).unwrap();
    let bin = sdci_tests::binary("sdci-host");
    assert!(
        bin.exists(),
        "{} missing: run cargo build --workspace --bins",
        bin.display()
    );
    let save = || {
        let out = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&file)
            .args(["save", "--version", "4.2", "--scenario", S])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = save();
    assert_eq!(code, Some(0), "{out}{err}");
    let current = rig.store.scenario_snapshot("4.2", S).unwrap().unwrap();
    assert!(
        out.starts_with(&format!(
            "Qubes 4.2: scenario {S} snapshot is now {current} (was none)"
        )),
        "{out}"
    );

    std::fs::write(rig.ctl.join(format!("fail-{A}")), "").unwrap();
    let (code, out, err) = save();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!(
            "rotation FAILED, scenario {S} snapshot stays {current}"
        )),
        "{out}"
    );
    assert_eq!(
        rig.store.scenario_snapshot("4.2", S).unwrap(),
        Some(current)
    );
}

#[tokio::test]
async fn a_scenario_build_is_announced_on_slack_like_a_golden_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut slack = SlackStandIn::start(200).await.unwrap();
    std::fs::write(dir.path().join("slack"), slack.url()).unwrap();
    let notify = format!(
        "[notify]\nslack_webhook_file = \"{}\"\n",
        dir.path().join("slack").display()
    );
    let rig = rig_with(dir, &[(A, &["golden"])], 2, 30, &notify).await;
    let ok = rig.save().await;
    assert!(ok.moved, "{}", ok.to_text());
    std::fs::write(rig.ctl.join(format!("fail-{A}")), "").unwrap();
    let failed = rig.save().await;
    assert!(!failed.moved, "{}", failed.to_text());

    let m = slack.next(Duration::from_secs(60)).await.unwrap();
    let t = m["text"].as_str().unwrap();
    assert!(
        t.contains("rotation ok")
            && t.contains(&format!("Qubes 4.2 scenario {S} snapshot is now"))
            && t.contains(&ok.snapshot)
            && t.contains("(was none)"),
        "{t}"
    );
    let m = slack.next(Duration::from_secs(60)).await.unwrap();
    let t = m["text"].as_str().unwrap();
    assert!(
        t.contains("rotation failed")
            && t.contains(&format!(
                "Qubes 4.2 keeps scenario {S} snapshot {}",
                ok.snapshot
            ))
            && t.contains("exited with status 7"),
        "{t}"
    );
}
