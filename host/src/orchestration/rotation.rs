//! Golden-snapshot rotation: `sdci-host save --version V [--update] [--snapshot NAME]` and the
//! `[[rotation.schedule]]` entries of `serve`.
//!
//! For every VM of the pool, each as soon as it is free: lease it in the store (so no job can
//! claim it), revert to the base (the pool's current golden snapshot, or `--snapshot`), boot,
//! apply the updates (`--update`), shut down, take `update_<UTC timestamp>`, and smoke-test it
//! (revert to it, boot, dom0 answers guest operations, `sdci-dom0 --version` runs, the dev VM
//! starts). Only when every VM passed does the pool's golden pointer in the store move to the new
//! snapshot; then the `update_*` snapshots beyond the newest `rotation.keep` are removed (the
//! hypervisor's one pruning rule), never the new golden, the one before it, nor the base. The
//! leases are held until the pointer has moved, so a job queued meanwhile waits for the VM and
//! then reverts to the new golden snapshot.
//!
//! Invariants:
//! - A failure (update, snapshot, smoke test, a VM that stays busy or is quarantined) leaves the
//!   pointer where it was, powers the VM off, removes the snapshot that failed, and is reported
//!   in the log, in `rotation_runs` (read by `/metrics`) and to Slack.
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
use crate::config::Config;
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

/// What to rotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRequest {
    pub version: String,
    pub update: bool,
    /// Revert to this snapshot instead of the pool's current golden one.
    pub base: Option<String>,
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
    /// The snapshot taken.
    pub snapshot: String,
    /// The golden snapshot before the rotation.
    pub previous: String,
    /// Whether the pool's golden pointer now names `snapshot`.
    pub moved: bool,
    pub vms: Vec<VmResult>,
    /// Host-side log of the rotation (guest step output included).
    pub log: PathBuf,
    pub duration: Duration,
}

impl RotationReport {
    /// Plain text for the CLI: one line for the rotation, one per VM.
    pub fn to_text(&self) -> String {
        let mut out = if self.moved {
            format!(
                "Qubes {}: golden snapshot is now {} (was {})\n",
                self.version, self.snapshot, self.previous
            )
        } else {
            format!(
                "Qubes {}: rotation FAILED, golden snapshot stays {}\n",
                self.version, self.previous
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
    fn budget(&self, update: bool) -> Duration {
        let d = &self.cfg.deadlines;
        let r = &self.cfg.rotation;
        let boot = d.revert_secs + d.power_on_secs + d.guest_ready_secs + d.shutdown_secs;
        let updates = if update {
            2 * self.cfg.updates.step_timeout_secs
        } else {
            0
        };
        Duration::from_secs(r.wait_free_secs + 2 * boot + updates + 2 * r.smoke_step_secs + 600)
    }

    /// Runs one rotation of the pool of `req.version`. `on_release` is called once the leases
    /// are released (the service wakes its scheduler there).
    pub async fn save(
        &self,
        req: &SaveRequest,
        on_release: &(dyn Fn() + Sync),
    ) -> Result<RotationReport> {
        let started = Instant::now();
        let pool = self.cfg.pools.get(&req.version).ok_or_else(|| {
            HostError::Invalid(format!(
                "no pool for Qubes {}: the host config has {:?}",
                req.version,
                self.cfg.pools.keys().collect::<Vec<_>>()
            ))
        })?;
        for (rotation, vms, why) in self.store.release_stale_rotations()? {
            tracing::warn!(%rotation, ?vms, "released the leases of a rotation: {why}");
        }
        let current = self
            .store
            .golden_snapshot(&req.version, &pool.golden_snapshot)?;
        let base = req.base.clone().unwrap_or_else(|| current.clone());
        let now = now_ms();
        let mut stamp = now.div_euclid(1000);
        let id = format!("{LEASE_PREFIX}{}", crate::random_hex(6));
        let log = self.cfg.log_dir().join(format!("{id}.log"));
        let vms = self.hv.list_vms(&pool.prefix).await?;
        if vms.is_empty() {
            return Err(HostError::Invalid(format!(
                "no VM named {}* in vSphere for Qubes {}",
                pool.prefix, req.version
            )));
        }
        let names: Vec<String> = vms.iter().map(|v| v.name.clone()).collect();
        self.store.register_vms(&req.version, &names)?;
        // Two snapshots with one name would make reverts ambiguous (vSphere allows duplicates):
        // the timestamp moves on until the name is new on every VM of the pool.
        let mut taken = HashSet::new();
        for vm in &names {
            taken.extend(self.hv.snapshots(vm).await?.into_iter().map(|s| s.name));
        }
        let snapshot = loop {
            let name = format!("{SNAPSHOT_PREFIX}{}", Utc::from_unix(stamp).compact());
            if !taken.contains(&name) {
                break name;
            }
            stamp += 1;
        };
        self.store.rotation_begin(&RotationRun {
            id: id.clone(),
            version: req.version.clone(),
            snapshot: snapshot.clone(),
            from_snapshot: current.clone(),
            base: base.clone(),
            owner_pid: std::process::id(),
            started_ms: now,
            deadline_ms: now + self.budget(req.update).as_millis() as i64,
        })?;
        log_line(
            &log,
            &format!(
                "=== rotation {id}: Qubes {} from {base}{} to {snapshot} on {}\n",
                req.version,
                if req.update { " with updates" } else { "" },
                names.join(", ")
            ),
        );
        tracing::info!(rotation = %id, version = %req.version, %base, %snapshot, "rotation started");

        let per_vm = names
            .iter()
            .map(|vm| self.rotate_vm(vm, &id, &base, &snapshot, req.update, &log));
        let mut results = futures::future::join_all(per_vm).await;

        let all_ok = results.iter().all(|r| r.ok);
        let mut moved = false;
        let mut error = None;
        if all_ok {
            match self.store.set_golden_snapshot(&req.version, &snapshot) {
                Ok(()) => moved = true,
                Err(e) => error = Some(format!("moving the golden pointer: {e}")),
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
            // Never the new golden, the previous one, nor the snapshot this rotation started from.
            let protected = [snapshot.clone(), current.clone(), base.clone()];
            for r in &mut results {
                match self.prune(&r.vm, &protected).await {
                    Ok(p) => r.pruned = p,
                    Err(e) => {
                        tracing::warn!(vm = %r.vm, error = %e, "removing old update_* snapshots");
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
                    format!("golden snapshot of Qubes {} is now {snapshot}", req.version)
                } else {
                    format!(
                        "failed, golden snapshot stays {current}: {}",
                        error.clone().unwrap_or_default()
                    )
                }
            ),
        );
        if moved {
            tracing::info!(rotation = %id, %snapshot, "rotation done: golden pointer moved");
        } else {
            tracing::error!(rotation = %id, error = ?error, "rotation failed: golden pointer kept");
        }
        let report = RotationReport {
            id,
            version: req.version.clone(),
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
                version: report.version.clone(),
                ok: report.moved,
                snapshot: report.snapshot.clone(),
                previous: report.previous.clone(),
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
        base: &str,
        snapshot: &str,
        update: bool,
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
            .update_and_test(vm, id, base, snapshot, update, log, &mut created)
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

    #[allow(clippy::too_many_arguments)]
    async fn update_and_test(
        &self,
        vm: &str,
        id: &str,
        base: &str,
        snapshot: &str,
        update: bool,
        log: &Path,
        created: &mut bool,
    ) -> std::result::Result<(), String> {
        log_line(log, &format!("[{vm}] leased; reverting to {base}\n"));
        if update {
            self.boot(vm, base).await?;
            log_line(log, &format!("[{vm}] booted; applying updates\n"));
            self.steps(vm, id, &updates::update_steps(&self.cfg.updates), log)
                .await
                .map_err(|e| format!("updates: {e}"))?;
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
        let description = format!(
            "sdci rotation {id}: {base}{}",
            if update { " + Qubes updates" } else { "" }
        );
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

    /// Removes the `update_*` snapshots beyond the newest `rotation.keep`, never the new or the
    /// previous golden one (the hypervisor's one pruning rule).
    async fn prune(
        &self,
        vm: &str,
        protected: &[String],
    ) -> std::result::Result<Vec<String>, String> {
        self.hv
            .prune_snapshots(vm, SNAPSHOT_PREFIX, self.cfg.rotation.keep, protected)
            .await
            .map_err(|e| e.to_string())
    }
}

/// `sdci-host save`: connects the hypervisors the pools use (vSphere, libvirt) with the host's
/// configuration and runs one rotation.
pub async fn save_from_cli(cfg: &Config, req: &SaveRequest) -> Result<RotationReport> {
    let auth = crate::gateway::backend::guest_auth(cfg)?;
    let store = Store::open_existing(&cfg.db_path())?; // the CLI never creates or migrates
    let hv = crate::gateway::backend::Backends::connect(cfg).await?;
    let r = Rotator {
        cfg,
        store: &store,
        hv: &hv,
        auth: &auth,
    };
    r.save(req, &|| {}).await
}

/// The `serve` side: one task per `[[rotation.schedule]]`. Each run leases the pool's VMs like
/// `sdci-host save`, wakes the scheduler when it releases them, and counts its result in the
/// service's metrics.
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
        let what = format!("rotation {}", s.version);
        tokio::spawn(super::nightly::every(schedule, what, move || {
            let (hub, hv, auth, s) = (hub.clone(), hv.clone(), auth.clone(), s.clone());
            async move {
                let r = Rotator {
                    cfg: &hub.cfg,
                    store: &hub.store,
                    hv: &*hv,
                    auth: &auth,
                };
                let req = SaveRequest {
                    version: s.version.clone(),
                    update: s.update,
                    base: None,
                };
                let wake = || hub.wake_all();
                match r.save(&req, &wake).await {
                    Ok(rep) if rep.moved => hub.metrics.count("rotations_ok"),
                    Ok(_) => hub.metrics.count("rotations_failed"),
                    Err(e) => {
                        hub.metrics.count("rotations_failed");
                        tracing::error!(version = %s.version, error = %e, "scheduled rotation");
                    }
                }
            }
        }));
    }
}
