//! Golden-snapshot rotation: `sdci-host save --version V [--update] [--snapshot NAME]`, the
//! `[[rotation.schedule]]` entries of `serve`, and the scenario snapshots of the matrix
//! (`sdci-host save --version V --scenario S`, issue 20).
//!
//! One rotation, two purposes ([`Purpose`]): the pool's golden snapshot (`update_*`, the `pools`
//! pointer, `[rotation] keep`), or a built scenario of `[pools.V] scenarios` (`scenario-<S>_*`,
//! the `scenario_snapshots` pointer, the scenario's own `keep`). They differ only in the base,
//! what runs in dom0 before the snapshot (the updates, or the scenario's provisioning command
//! bounded by its `timeout_secs`), the snapshot's name, the pointer and the pruning prefix; the
//! leases, the smoke test, the failure handling and the reporting are the same code.
//!
//! For every VM of the pool, each as soon as it is free (told for the golden snapshot; a
//! scenario replaces the base, the updates, the name, the pointer and `keep` as above): lease it
//! in the store (so no job can claim it), revert to the base (the pool's current golden
//! snapshot, or `--snapshot`), boot, apply the updates (`--update`), shut down, take
//! `update_<UTC timestamp>`, and smoke-test it
//! (revert to it, boot, dom0 answers guest operations, `sdci-dom0 --version` runs, the dev VM
//! starts). Only when every VM passed does the pool's golden pointer in the store move to the new
//! snapshot; then the `update_*` snapshots beyond the newest `rotation.keep` are removed (the
//! hypervisor's one pruning rule), never the new golden, the one before it, nor the base. The
//! leases are held until the pointer has moved, so a job queued meanwhile waits for the VM and
//! then reverts to the new golden snapshot.
//!
//! Invariants:
//! - A failure (update, provisioning or its timeout, snapshot, smoke test, a VM that stays busy
//!   or is quarantined) leaves the pointer (golden or scenario) where it was, powers the VM off,
//!   removes the snapshot that failed, and is reported in the log, in `rotation_runs` (read by
//!   `/metrics`) and to Slack.
//! - A scenario's pointer (`store::scenarios`) exists only once a build passed on every VM: a
//!   cell of a scenario never built fails naming the command (`matrix::snapshot_for`), never
//!   runs on the golden snapshot instead.
//! - A lease is the VM row's `job_id` set to the rotation's id (`rotation-…`), taken in one
//!   `BEGIN IMMEDIATE` transaction only while no job holds the VM (`store::vms`): the scheduler's
//!   claim skips it. Leases are released on every path; a rotation whose process died (its pid
//!   is gone) or whose deadline passed is released by `Store::release_stale_rotations` (each
//!   `save` and every reconciler pass call it), and `Store::rotation_holds` tells the reconciler
//!   not to power off a VM being rotated.
//! - A VM the rotation has to wait for (a job holds it) is reserved for it (`vms.reserved_by`)
//!   until the lease is taken or the rotation gives up or ends; the scheduler's claim skips a VM
//!   reserved by a running rotation, so the next queued job cannot take it first and a busy pool
//!   cannot starve a rotation. A reservation of an ended (or past-deadline) rotation counts for
//!   nothing.
//! - Generic over [`Hypervisor`]: the vim25 client in production, the govmomi simulator through
//!   the same client in tests.

use super::dom0_script::{self, GuestStep};
use super::leases::{self, LeaseOwner, Take};
use super::updates;
use super::vm_power::{self, Phase};
use crate::config::{BuiltScenario, Config, PoolConfig, RotationSchedule, Scenario, GOLDEN_BASE};
use crate::gateway::slack::{self, RotationNotice};
use crate::hub::Hub;
use crate::store::{RotationRun, Store};
use crate::{now_ms, HostError, Result};
use sdci_protocol::Utc;
use sdci_vsphere::{GuestAuth, Hypervisor, PowerState};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names of the snapshots a rotation takes (`update_20261128170509`).
pub const SNAPSHOT_PREFIX: &str = "update_";
/// Store lease holders that are rotations, not jobs.
pub const LEASE_PREFIX: &str = "rotation-";

/// A golden snapshot to rotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRequest {
    pub version: String,
    pub update: bool,
    /// Revert to this snapshot instead of the pool's current golden one.
    pub base: Option<String>,
}

/// A scenario snapshot to build: `sdci-host save --version V --scenario S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioRequest {
    pub version: String,
    /// A key of `[pools.V] scenarios` whose entry is a table ([`BuiltScenario`]).
    pub scenario: String,
}

/// What a rotation's snapshot is for.
#[derive(Debug, Clone, Copy)]
enum Purpose<'a> {
    /// The pool's golden snapshot, with the Qubes updates applied first when `update`.
    Golden { update: bool },
    /// A matrix scenario's snapshot, provisioned by its command.
    Scenario {
        name: &'a str,
        spec: &'a BuiltScenario,
    },
}

impl Purpose<'_> {
    /// The prefix of the snapshots this purpose takes and prunes.
    fn prefix(&self) -> String {
        match self {
            Purpose::Golden { .. } => SNAPSHOT_PREFIX.to_owned(),
            Purpose::Scenario { name, .. } => Scenario::snapshot_prefix(name),
        }
    }

    /// What the pointer names, for people ("golden snapshot", "scenario S snapshot").
    fn what(&self) -> String {
        match self {
            Purpose::Golden { .. } => "golden snapshot".to_owned(),
            Purpose::Scenario { name, .. } => format!("scenario {name} snapshot"),
        }
    }

    /// The snapshots kept per VM.
    fn keep(&self, cfg: &Config) -> usize {
        match self {
            Purpose::Golden { .. } => cfg.rotation.keep,
            Purpose::Scenario { spec, .. } => spec.keep,
        }
    }

    /// The dom0 commands run on the booted base before the snapshot (what they are called in
    /// the log), or `None`: the base is only reverted to.
    fn prepare(&self, cfg: &Config) -> Option<(&'static str, Vec<GuestStep>)> {
        match self {
            Purpose::Golden { update: false } => None,
            Purpose::Golden { update: true } => {
                Some(("updates", updates::update_steps(&cfg.updates)))
            }
            Purpose::Scenario { name, spec } => Some((
                "provisioning",
                vec![GuestStep {
                    name: format!("provision-{name}"),
                    argv: spec.provision.clone(),
                    timeout: Duration::from_secs(spec.timeout_secs),
                    direct: false,
                }],
            )),
        }
    }

    /// Seconds the dom0 commands may take at most.
    fn prepare_secs(&self, cfg: &Config) -> u64 {
        match self {
            Purpose::Golden { update: false } => 0,
            Purpose::Golden { update: true } => 2 * cfg.updates.step_timeout_secs,
            Purpose::Scenario { spec, .. } => spec.timeout_secs,
        }
    }

    fn describe(&self, id: &str, base: &str) -> String {
        match self {
            Purpose::Golden { update } => format!(
                "sdci rotation {id}: {base}{}",
                if *update { " + Qubes updates" } else { "" }
            ),
            Purpose::Scenario { name, spec } => format!(
                "sdci rotation {id}: scenario {name} = {base} + {}",
                spec.provision.join(" ")
            ),
        }
    }

    /// Moves the pointer to `snapshot`.
    fn adopt(&self, store: &Store, version: &str, snapshot: &str) -> Result<()> {
        match self {
            Purpose::Golden { .. } => store.set_golden_snapshot(version, snapshot),
            Purpose::Scenario { name, .. } => store.set_scenario_snapshot(version, name, snapshot),
        }
    }
}

/// One rotation, decided: what for, from which base, the pointer before it.
struct Plan<'a> {
    version: &'a str,
    purpose: Purpose<'a>,
    base: String,
    /// The pointer before the rotation (a scenario not built yet has none).
    current: Option<String>,
}

/// One VM's part of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmResult {
    pub vm: String,
    pub ok: bool,
    /// What happened (the failure, or "ok").
    pub detail: String,
    /// Snapshots removed after the pointer moved.
    pub pruned: Vec<String>,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub id: String,
    pub version: String,
    /// What the pointer names: `golden snapshot`, `scenario S snapshot`.
    pub what: String,
    /// The snapshot taken.
    pub snapshot: String,
    /// The pointer before the rotation (empty: a scenario built for the first time).
    pub previous: String,
    /// Whether the pointer (the pool's golden one, or the scenario's) now names `snapshot`.
    pub moved: bool,
    pub vms: Vec<VmResult>,
    /// Host-side log of the rotation (guest step output included).
    pub log: PathBuf,
    pub duration: Duration,
}

impl RotationReport {
    /// Plain text for the CLI: one line for the rotation, one per VM.
    pub fn to_text(&self) -> String {
        let previous = if self.previous.is_empty() {
            "none"
        } else {
            &self.previous
        };
        let mut out = if self.moved {
            format!(
                "Qubes {}: {} is now {} (was {previous})\n",
                self.version, self.what, self.snapshot
            )
        } else {
            format!(
                "Qubes {}: rotation FAILED, {} stays {previous}\n",
                self.version, self.what
            )
        };
        for v in &self.vms {
            out.push_str(&format!("  {:<24} {}", v.vm, v.detail));
            if !v.pruned.is_empty() {
                out.push_str(&format!(" (removed {})", v.pruned.join(", ")));
            }
            out.push('\n');
        }
        out.push_str(&format!("log: {}\n", self.log.display()));
        out
    }
}

/// The smoke test of a fresh snapshot: `sdci-dom0 --version` runs, and the dev VM starts.
pub fn smoke_steps(cfg: &Config, timeout: Duration) -> Vec<GuestStep> {
    vec![
        GuestStep {
            name: "sdci-dom0-version".into(),
            argv: vec![cfg.dom0.program.clone(), "--version".into()],
            timeout,
            direct: true,
        },
        GuestStep {
            name: "start-dev-vm".into(),
            argv: vec![
                "qvm-start".into(),
                "--skip-if-running".into(),
                cfg.dom0.dev_vm.clone(),
            ],
            timeout,
            direct: false,
        },
    ]
}

/// Everything a rotation needs.
pub struct Rotator<'a, H> {
    pub cfg: &'a Config,
    pub store: &'a Store,
    pub hv: &'a H,
    pub auth: &'a GuestAuth,
}

/// Appends to the rotation's host-side log.
fn log_line(path: &Path, text: &str) {
    use std::io::Write;
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

fn log_bytes(path: &Path, bytes: &[u8]) {
    log_line(path, &String::from_utf8_lossy(bytes));
}

impl<H: Hypervisor> Rotator<'_, H> {
    /// This instance, as written into the leases on the VMs (`leases`).
    fn owner(&self) -> LeaseOwner {
        let instance = self
            .store
            .instance_id()
            .unwrap_or_else(|_| crate::random_hex(8));
        LeaseOwner::new(instance, self.cfg.jobs.lease_ttl_secs)
    }

    /// A budget long enough for the slowest honest rotation, after which the lease is stale.
    fn budget(&self, purpose: &Purpose) -> Duration {
        let d = &self.cfg.deadlines;
        let r = &self.cfg.rotation;
        let boot = d.revert_secs + d.power_on_secs + d.guest_ready_secs + d.shutdown_secs;
        let prepare = purpose.prepare_secs(self.cfg);
        Duration::from_secs(r.wait_free_secs + 2 * boot + prepare + 2 * r.smoke_step_secs + 600)
    }

    fn pool(&self, version: &str) -> Result<&PoolConfig> {
        self.cfg.pools.get(version).ok_or_else(|| {
            HostError::Invalid(format!(
                "no pool for Qubes {version}: the host config has {:?}",
                self.cfg.pools.keys().collect::<Vec<_>>()
            ))
        })
    }

    /// Runs one rotation of the golden snapshot of the pool of `req.version`. `on_release` is
    /// called once the leases are released (the service wakes its scheduler there).
    pub async fn save(
        &self,
        req: &SaveRequest,
        on_release: &(dyn Fn() + Sync),
    ) -> Result<RotationReport> {
        let pool = self.pool(&req.version)?;
        self.release_stale()?;
        let current = self
            .store
            .golden_snapshot(&req.version, &pool.golden_snapshot)?;
        let base = req.base.clone().unwrap_or_else(|| current.clone());
        let plan = Plan {
            version: &req.version,
            purpose: Purpose::Golden { update: req.update },
            base,
            current: Some(current),
        };
        self.run(&plan, pool, on_release).await
    }

    /// Builds scenario `req.scenario`'s snapshot on every VM of the pool of `req.version`: from
    /// its base, provisioned by its command, smoke-tested; only when every VM passed does the
    /// scenario's pointer move. `on_release` as for [`Rotator::save`].
    pub async fn save_scenario(
        &self,
        req: &ScenarioRequest,
        on_release: &(dyn Fn() + Sync),
    ) -> Result<RotationReport> {
        let (v, name) = (&req.version, &req.scenario);
        let pool = self.pool(v)?;
        let spec = match pool.scenarios.get(name) {
            Some(Scenario::Built(b)) => b,
            Some(Scenario::Fixed(snap)) => {
                return Err(HostError::Invalid(format!(
                    "scenario {name} of Qubes {v} is the fixed snapshot {snap:?}, made by hand: to \
                     have sdci-host build it, write it as a table, [pools.\"{v}\".scenarios.{name}] \
                     with base = \"golden\" and provision = [\"<command>\", ...]"
                )))
            }
            None => {
                return Err(HostError::Invalid(format!(
                    "no scenario {name} in [pools.\"{v}\"] scenarios (it has {:?}): add \
                     [pools.\"{v}\".scenarios.{name}] with base and provision",
                    pool.scenarios.keys().collect::<Vec<_>>()
                )))
            }
        };
        self.release_stale()?;
        let base = if spec.base == GOLDEN_BASE {
            self.store.golden_snapshot(v, &pool.golden_snapshot)?
        } else {
            spec.base.clone()
        };
        let plan = Plan {
            version: v,
            purpose: Purpose::Scenario { name, spec },
            base,
            current: self.store.scenario_snapshot(v, name)?,
        };
        self.run(&plan, pool, on_release).await
    }

    fn release_stale(&self) -> Result<()> {
        for (rotation, vms, why) in self.store.release_stale_rotations()? {
            tracing::warn!(%rotation, ?vms, "released the leases of a rotation: {why}");
        }
        Ok(())
    }

    /// The rotation itself, whatever its purpose (see the module doc).
    async fn run(
        &self,
        plan: &Plan<'_>,
        pool: &PoolConfig,
        on_release: &(dyn Fn() + Sync),
    ) -> Result<RotationReport> {
        let started = Instant::now();
        let version = plan.version;
        let what = plan.purpose.what();
        let prefix = plan.purpose.prefix();
        let base = plan.base.clone();
        let current = plan.current.clone().unwrap_or_default();
        let now = now_ms();
        let mut stamp = now.div_euclid(1000);
        let id = format!("{LEASE_PREFIX}{}", crate::random_hex(6));
        let log = self.cfg.log_dir().join(format!("{id}.log"));
        let vms = self.hv.list_vms(&pool.prefix).await?;
        if vms.is_empty() {
            return Err(HostError::Invalid(format!(
                "no VM named {}* in vSphere for Qubes {version}",
                pool.prefix
            )));
        }
        let names: Vec<String> = vms.iter().map(|v| v.name.clone()).collect();
        self.store.register_vms(version, &names)?;
        // Two snapshots with one name would make reverts ambiguous (vSphere allows duplicates):
        // the timestamp moves on until the name is new on every VM of the pool.
        let mut taken = HashSet::new();
        for vm in &names {
            taken.extend(self.hv.snapshots(vm).await?.into_iter().map(|s| s.name));
        }
        let snapshot = loop {
            let name = format!("{prefix}{}", Utc::from_unix(stamp).compact());
            if !taken.contains(&name) {
                break name;
            }
            stamp += 1;
        };
        self.store.rotation_begin(&RotationRun {
            id: id.clone(),
            version: version.to_owned(),
            snapshot: snapshot.clone(),
            from_snapshot: current.clone(),
            base: base.clone(),
            owner_pid: std::process::id(),
            started_ms: now,
            deadline_ms: now + self.budget(&plan.purpose).as_millis() as i64,
        })?;
        let with = match plan.purpose.prepare(self.cfg) {
            Some((what, _)) => format!(" with {what}"),
            None => String::new(),
        };
        log_line(
            &log,
            &format!(
                "=== rotation {id}: Qubes {version} {what} from {base}{with} to {snapshot} on {}\n",
                names.join(", ")
            ),
        );
        tracing::info!(rotation = %id, %version, %what, %base, %snapshot, "rotation started");

        let per_vm = names
            .iter()
            .map(|vm| self.rotate_vm(vm, &id, plan, &snapshot, &log));
        let mut results = futures::future::join_all(per_vm).await;

        let all_ok = results.iter().all(|r| r.ok);
        let mut moved = false;
        let mut error = None;
        if all_ok {
            match plan.purpose.adopt(self.store, version, &snapshot) {
                Ok(()) => moved = true,
                Err(e) => error = Some(format!("moving the pointer of the {what}: {e}")),
            }
        } else {
            error = Some(
                results
                    .iter()
                    .filter(|r| !r.ok)
                    .map(|r| format!("{}: {}", r.vm, r.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        if moved {
            // Never the new snapshot, the previous one, nor the snapshot this rotation started from.
            let mut protected = vec![snapshot.clone(), base.clone()];
            protected.extend(plan.current.clone());
            let keep = plan.purpose.keep(self.cfg);
            for r in &mut results {
                match self.prune(&r.vm, &prefix, keep, &protected).await {
                    Ok(p) => r.pruned = p,
                    Err(e) => {
                        tracing::warn!(vm = %r.vm, error = %e, %prefix,
                            "removing old snapshots");
                        r.detail
                            .push_str(&format!("; removing old snapshots failed: {e}"));
                    }
                }
            }
        }
        let result = if moved { "ok" } else { "failed" };
        let owner = self.owner();
        for vm in &names {
            if let Err(e) = leases::release(self.hv, &owner, vm, &id).await {
                tracing::warn!(%vm, error = %e, "removing the rotation's lease from the VM");
            }
        }
        if let Err(e) = self.store.rotation_end(&id, result, error.as_deref()) {
            tracing::error!(rotation = %id, error = %e, "releasing the rotation's leases");
        }
        on_release();
        log_line(
            &log,
            &format!(
                "=== rotation {id}: {}\n",
                if moved {
                    format!("{what} of Qubes {version} is now {snapshot}")
                } else {
                    format!(
                        "failed, {what} stays {}: {}",
                        plan.current.as_deref().unwrap_or("none"),
                        error.clone().unwrap_or_default()
                    )
                }
            ),
        );
        if moved {
            tracing::info!(rotation = %id, %snapshot, %what, "rotation done: pointer moved");
        } else {
            tracing::error!(rotation = %id, error = ?error, %what, "rotation failed: pointer kept");
        }
        let report = RotationReport {
            id,
            version: version.to_owned(),
            what,
            snapshot,
            previous: current,
            moved,
            vms: results,
            log,
            duration: started.elapsed(),
        };
        slack::rotation_result(
            self.cfg,
            &RotationNotice {
                // "Qubes <version> <what> is now …" / "… keeps <what> …".
                version: report.version.clone(),
                what: plan.purpose.what(),
                ok: report.moved,
                snapshot: report.snapshot.clone(),
                previous: if report.previous.is_empty() {
                    "none".into()
                } else {
                    report.previous.clone()
                },
                details: report
                    .vms
                    .iter()
                    .map(|v| format!("{}: {}", v.vm, v.detail))
                    .collect(),
                duration: report.duration,
            },
        )
        .await;
        Ok(report)
    }

    /// Waits until `vm` is free and powered off, then leases it. While it waits, the VM is
    /// reserved for this rotation, so the scheduler does not hand it to the next queued job.
    async fn acquire(&self, vm: &str, id: &str, log: &Path) -> std::result::Result<(), String> {
        let r = self.wait_and_lease(vm, id, log).await;
        if r.is_err() {
            if let Err(e) = self.store.rotation_unreserve(vm, id) {
                tracing::warn!(%vm, error = %e,
                    "dropping a rotation's reservation; it ends with the rotation");
            }
        }
        r
    }

    async fn wait_and_lease(
        &self,
        vm: &str,
        id: &str,
        log: &Path,
    ) -> std::result::Result<(), String> {
        let limit = Duration::from_secs(self.cfg.rotation.wait_free_secs);
        let started = Instant::now();
        let mut told = false;
        loop {
            let off = match self.hv.vm(vm).await {
                Ok(v) => v.power == PowerState::Off,
                Err(e) if e.class() == sdci_vsphere::ErrorClass::GiveUp => {
                    return Err(e.to_string())
                }
                Err(_) => false,
            };
            if off {
                match self.store.rotation_try_lease(vm, id) {
                    // The lease on the VM too: another instance sharing the vSphere keeps off.
                    Ok(true) => match leases::take(self.hv, &self.owner(), vm, id).await {
                        Ok(Take::Taken { .. }) => return Ok(()),
                        Ok(Take::Held(l)) => {
                            let _ = self.store.release_vm(vm);
                            log_line(
                                log,
                                &format!("[{vm}] leased by {}; waiting\n", l.describe()),
                            );
                        }
                        Err(e) => {
                            let _ = self.store.release_vm(vm);
                            return Err(format!("writing the lease on the VM: {e}"));
                        }
                    },
                    Ok(false) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            if started.elapsed() >= limit {
                return Err(format!(
                    "stayed busy for {}s (rotation.wait_free_secs)",
                    limit.as_secs()
                ));
            }
            if !told {
                self.store
                    .rotation_reserve(vm, id)
                    .map_err(|e| e.to_string())?;
                log_line(
                    log,
                    &format!("[{vm}] busy; waiting for it to become free\n"),
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_secs(self.cfg.rotation.busy_poll_secs.max(1))).await;
        }
    }

    async fn rotate_vm(
        &self,
        vm: &str,
        id: &str,
        plan: &Plan<'_>,
        snapshot: &str,
        log: &Path,
    ) -> VmResult {
        let fail = |detail: String| VmResult {
            vm: vm.to_owned(),
            ok: false,
            detail,
            pruned: Vec::new(),
        };
        if let Err(e) = self.acquire(vm, id, log).await {
            log_line(log, &format!("[{vm}] not rotated: {e}\n"));
            return fail(e);
        }
        let mut created = false;
        let r = self
            .prepare_and_test(vm, id, plan, snapshot, log, &mut created)
            .await;
        match r {
            Ok(()) => {
                log_line(log, &format!("[{vm}] {snapshot} passed the smoke test\n"));
                VmResult {
                    vm: vm.to_owned(),
                    ok: true,
                    detail: "ok".into(),
                    pruned: Vec::new(),
                }
            }
            Err(e) => {
                log_line(log, &format!("[{vm}] FAILED: {e}\n"));
                tracing::error!(%vm, error = %e, "rotation of this VM failed");
                vm_power::power_off_quietly(self.hv, vm, self.cfg.deadlines.shutdown_secs).await;
                if created {
                    if let Err(e) = self.hv.remove_snapshot(vm, snapshot).await {
                        tracing::warn!(%vm, error = %e, "removing the failed snapshot");
                    }
                }
                fail(e)
            }
        }
    }

    /// Reverts to `snapshot`, powers on and waits for guest operations (the shared procedure).
    async fn boot(&self, vm: &str, snapshot: &str) -> std::result::Result<(), String> {
        vm_power::boot(
            self.hv,
            vm,
            Some(snapshot),
            &self.cfg.deadlines,
            &mut |_, _| {},
        )
        .await
        .map_err(|e| format!("{e} (snapshot {snapshot})"))
    }

    /// Guest shutdown, power-off at the grace: a clean disk for the snapshot that follows.
    async fn shutdown(&self, vm: &str) -> std::result::Result<(), String> {
        vm_power::shut_down(self.hv, vm, &self.cfg.deadlines)
            .await
            .map_err(|e| e.to_string())
    }

    async fn steps(
        &self,
        vm: &str,
        id: &str,
        steps: &[GuestStep],
        log: &Path,
    ) -> std::result::Result<(), String> {
        let log_dir = format!(".sdci/rotation/{id}");
        let mut sink = |b: &[u8]| log_bytes(log, b);
        dom0_script::run_steps(self.hv, vm, self.auth, self.cfg, &log_dir, steps, &mut sink)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Reverts to the base, runs the purpose's dom0 commands (if any), shuts down, takes
    /// `snapshot` and smoke-tests it. `created` tells the caller the snapshot exists.
    async fn prepare_and_test(
        &self,
        vm: &str,
        id: &str,
        plan: &Plan<'_>,
        snapshot: &str,
        log: &Path,
        created: &mut bool,
    ) -> std::result::Result<(), String> {
        let base = plan.base.as_str();
        log_line(log, &format!("[{vm}] leased; reverting to {base}\n"));
        if let Some((what, steps)) = plan.purpose.prepare(self.cfg) {
            self.boot(vm, base).await?;
            log_line(log, &format!("[{vm}] booted; {what}\n"));
            self.steps(vm, id, &steps, log)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
        } else {
            vm_power::bounded(
                Phase::Revert,
                self.cfg.deadlines.revert_secs,
                self.hv.revert(vm, base),
            )
            .await
            .map_err(|e| format!("{e} (snapshot {base})"))?;
        }
        self.shutdown(vm).await?;
        let description = plan.purpose.describe(id, base);
        match tokio::time::timeout(
            Duration::from_secs(self.cfg.deadlines.revert_secs),
            self.hv.create_snapshot(vm, snapshot, &description),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("taking {snapshot}: {e}")),
            Err(_) => {
                return Err(format!(
                    "taking {snapshot} did not finish within {}s",
                    self.cfg.deadlines.revert_secs
                ))
            }
        }
        *created = true;
        log_line(log, &format!("[{vm}] took {snapshot}; smoke test\n"));
        self.boot(vm, snapshot)
            .await
            .map_err(|e| format!("smoke test: {e}"))?;
        let smoke = smoke_steps(
            self.cfg,
            Duration::from_secs(self.cfg.rotation.smoke_step_secs),
        );
        self.steps(vm, id, &smoke, log)
            .await
            .map_err(|e| format!("smoke test: {e}"))?;
        self.shutdown(vm).await
    }

    /// Removes the `prefix` snapshots beyond the newest `keep`, never the `protected` ones (the
    /// hypervisor's one pruning rule).
    async fn prune(
        &self,
        vm: &str,
        prefix: &str,
        keep: usize,
        protected: &[String],
    ) -> std::result::Result<Vec<String>, String> {
        self.hv
            .prune_snapshots(vm, prefix, keep, protected)
            .await
            .map_err(|e| e.to_string())
    }
}

/// What `sdci-host save` builds: the pool's next golden snapshot, or a scenario's (`--scenario`).
#[derive(Debug, Clone)]
pub enum CliSave {
    Golden(SaveRequest),
    Scenario(ScenarioRequest),
}

/// `sdci-host save`: connects the hypervisors the pools use (vSphere, libvirt) with the host's
/// configuration and runs one rotation.
pub async fn save_from_cli(cfg: &Config, what: &CliSave) -> Result<RotationReport> {
    let auth = crate::gateway::backend::guest_auth(cfg)?;
    let store = Store::open_existing(&cfg.db_path())?; // the CLI never creates or migrates
    let hv = crate::gateway::backend::Backends::connect(cfg).await?;
    let r = Rotator {
        cfg,
        store: &store,
        hv: &hv,
        auth: &auth,
    };
    match what {
        CliSave::Golden(req) => r.save(req, &|| {}).await,
        CliSave::Scenario(req) => r.save_scenario(req, &|| {}).await,
    }
}

/// One run of a `[[rotation.schedule]]` entry in `serve`: the golden rotation, or the build of
/// its `scenario`. It leases the pool's VMs like `sdci-host save`, wakes the scheduler when it
/// releases them, and counts its result in the service's metrics (`rotations_ok`,
/// `rotations_failed`).
pub async fn run_schedule<H: Hypervisor>(
    hub: &Hub,
    hv: &H,
    auth: &GuestAuth,
    s: &RotationSchedule,
) {
    let r = Rotator {
        cfg: &hub.cfg,
        store: &hub.store,
        hv,
        auth,
    };
    let wake = || hub.wake_all();
    let run = match &s.scenario {
        Some(scenario) => {
            let req = ScenarioRequest {
                version: s.version.clone(),
                scenario: scenario.clone(),
            };
            r.save_scenario(&req, &wake).await
        }
        None => {
            let req = SaveRequest {
                version: s.version.clone(),
                update: s.update,
                base: None,
            };
            r.save(&req, &wake).await
        }
    };
    match run {
        Ok(rep) if rep.moved => hub.metrics.count("rotations_ok"),
        Ok(_) => hub.metrics.count("rotations_failed"),
        Err(e) => {
            hub.metrics.count("rotations_failed");
            tracing::error!(version = %s.version, scenario = ?s.scenario, error = %e,
                "scheduled rotation");
        }
    }
}

/// The `serve` side: one task per `[[rotation.schedule]]`, each calling [`run_schedule`] when its
/// cron expression fires.
pub fn spawn_schedules<H: Hypervisor>(hub: Arc<Hub>, hv: Arc<H>, auth: GuestAuth) {
    for s in hub.cfg.rotation.schedule.clone() {
        let schedule = match s.schedule() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(version = %s.version, error = %e, "rotation schedule ignored");
                continue;
            }
        };
        let (hub, hv, auth) = (hub.clone(), hv.clone(), auth.clone());
        let what = match &s.scenario {
            Some(sc) => format!("rotation {} scenario {sc}", s.version),
            None => format!("rotation {}", s.version),
        };
        tokio::spawn(super::nightly::every(schedule, what, move || {
            let (hub, hv, auth, s) = (hub.clone(), hv.clone(), auth.clone(), s.clone());
            async move { run_schedule(&hub, &*hv, &auth, &s).await }
        }));
    }
}
