//! Repair, at start-up and every `reconcile_interval_secs`: make the store and vSphere agree.
//!
//! Invariants (each is a rule the CI systems sdci learned from found the hard way):
//! - Start-up reconciliation runs while the service already answers webhooks, event streams and
//!   `/healthz` (it waits on vSphere, which may be slow).
//! - A restart is nobody's fault. An active job no process drives is re-adopted
//!   ([`Orchestrator::adopt`]): `sdci-dom0 launch` still running on a powered-on VM → the attempt
//!   goes on (wait, download, power-off as usual; the agent's relay reconnects and resumes from
//!   `next_seq`); launch's exit code already stored → straight to that verdict (never run
//!   again); the VM gone or off while launch ran → an infrastructure failure as before (not
//!   counted towards the VM's quarantine); an attempt that had not reached launch → its VM is
//!   powered off and the job queued again, counted against nothing.
//! - A powered-on pool VM that no active job or live rotation holds is powered off (leaked VMs) —
//!   unless another live `sdci-host` instance holds its lease (`leases`); a lease nobody renewed
//!   within its ttl is taken over: the VM is powered off and the lease line removed.
//! - An active job whose VM no longer exists, or whose whole budget has passed, is stopped with
//!   `error` and the reason.
//! - A queued job that found no VM within `deadlines.queue_secs` ends with `error`.
//! - No terminal job's final status is neither posted nor alerted: a lost one is queued again,
//!   one still unposted after many tries raises an alert.
//! - A pool whose every VM is quarantined raises an alert (cleared when one is back).
//! - Logs older than `log_retention_days` are deleted.
//! - A VM named `sdci-clone-*` (a stage re-run's linked clone) that no active job of this store
//!   runs on is destroyed, unless another live instance leased it (contracts §12).
//! - The leases of the VMs this process holds are renewed every quarter of
//!   `jobs.lease_ttl_secs` ([`Orchestrator::lease_loop`]); a lease found taken over stops its
//!   job without touching the VM.

use super::leases;
use super::Orchestrator;
use crate::domain::JobState;
use crate::hub::Stop;
use crate::{joblog, now_ms};
use sdci_vsphere::{Hypervisor, PowerState, VsphereError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const ACTIVE: [JobState; 4] = JobState::ACTIVE;

/// Tries of a final status after which an unposted one raises an alert.
const STUCK_STATUS_TRIES: u32 = 10;

impl<H: Hypervisor> Orchestrator<H> {
    /// Start-up reconciliation: re-adopts what a previous process left, then one pass of
    /// every rule.
    pub async fn startup(self: &Arc<Self>) {
        self.adopt().await;
        self.reconcile_once().await;
    }

    /// Re-adopts every active job no process drives (see the module doc). A job whose VM
    /// cannot be asked now (vSphere unavailable) is left for the next pass.
    pub async fn adopt(self: &Arc<Self>) {
        let hub = &self.hub;
        let orphans = match hub.store.jobs_in_states(&ACTIVE) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "reading jobs to re-adopt");
                return;
            }
        };
        for job in orphans {
            if hub.is_live(&job.id) {
                continue;
            }
            let launch = match hub.store.launch_state(&job.id) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "reading the attempt");
                    continue;
                }
            };
            let Some(vm) = job.vm.clone() else {
                self.restarted(&job, None).await;
                continue;
            };
            let launched = launch.is_some_and(|l| l.pid.is_some() || l.exit.is_some())
                && matches!(job.state, JobState::Running | JobState::Finishing);
            let Some(launch) = launch.filter(|_| launched) else {
                self.restarted(&job, Some(&vm)).await;
                continue;
            };
            // A re-run on a clone runs on the clone, not in its slot's VM (contracts §12).
            let on = match hub.store.attempt_clone(&job.id) {
                Ok(c) => c.map_or_else(|| vm.clone(), |c| c.name),
                Err(_) => continue,
            };
            let vm_state = match self.hv.vm(&on).await {
                Ok(info) => Some(info.power),
                Err(VsphereError::VmNotFound { .. }) => None,
                Err(e) => {
                    tracing::warn!(job = %job.id, %vm, error = %e,
                        "cannot look at the job's VM now; re-adopting at the next pass");
                    continue;
                }
            };
            if launch.exit.is_none() && vm_state != Some(PowerState::On) {
                let why = match vm_state {
                    None => format!("VM {on} no longer exists (found after a restart)"),
                    Some(_) => {
                        format!("VM {on} was powered off while sdci-dom0 launch ran (found after a restart)")
                    }
                };
                tracing::warn!(job = %job.id, "{why}");
                let cfg = &hub.cfg.jobs;
                // As before: the attempt counts, the VM's quarantine does not move.
                if let Err(e) = hub
                    .store
                    .infra_failure(&job.id, &why, cfg.max_attempts, u32::MAX)
                {
                    tracing::error!(job = %job.id, error = %e, "reconciling a job");
                }
                self.release_lease_quietly(&vm, &job.id).await;
                continue;
            }
            let rx = {
                let _g = hub.vm_decisions.lock().await;
                hub.register_live(&job.id)
            };
            hub.metrics.count("attempts_readopted");
            tracing::info!(job = %job.id, %vm, pid = ?launch.pid, exit = ?launch.exit,
                "re-adopting the attempt a previous process started");
            let me = self.clone();
            tokio::spawn(async move { me.resume(job, launch, rx).await });
        }
    }

    /// An attempt the previous process had not brought to `sdci-dom0 launch`: the VM off, the
    /// job queued again, nothing counted (a restart is nobody's fault).
    async fn restarted(&self, job: &crate::store::JobRow, vm: Option<&str>) {
        let hub = &self.hub;
        if let Some(vm) = vm {
            self.power_off_logged(vm).await;
            self.release_lease_quietly(vm, &job.id).await;
        }
        let why = format!(
            "sdci-host restarted while the job was {}",
            job.state.as_str()
        );
        match hub.store.restarted(&job.id, &why) {
            Ok(_) => tracing::warn!(job = %job.id, "{why}: queued again, not counted"),
            Err(e) => tracing::error!(job = %job.id, error = %e, "reconciling a job"),
        }
        if let Some(cancel) = &job.cancel_requested {
            let _ = hub.store.request_cancel(&job.id, cancel);
        }
        hub.statuses.notify_one();
        hub.checks.notify_one();
        hub.scheduler.notify_one();
    }

    async fn release_lease_quietly(&self, vm: &str, holder: &str) {
        let call = Duration::from_secs(30);
        if let Ok(Err(e)) =
            tokio::time::timeout(call, leases::release(&*self.hv, &self.owner, vm, holder)).await
        {
            tracing::debug!(%vm, error = %e, "removing a lease");
        }
    }

    pub async fn reconcile_loop(self: Arc<Self>) {
        // Holds end as they fall due, in their own loop (issue 18); this pass wakes it.
        tokio::spawn(self.clone().hold_loop());
        let every = Duration::from_secs(self.hub.cfg.reconcile_interval_secs.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.hub.drained() => return,
            }
            self.adopt().await;
            self.reconcile_once().await;
        }
    }

    /// Renews the leases (on the VMs) of everything this process holds, every quarter of
    /// `jobs.lease_ttl_secs`. A lease another instance took over stops its job, leaving the VM.
    pub async fn lease_loop(self: Arc<Self>) {
        let every = Duration::from_millis((self.hub.cfg.jobs.lease_ttl_secs * 250).max(500));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.hub.drained() => return,
            }
            self.renew_leases().await;
            self.renew_hold_leases().await;
            self.renew_clone_leases().await;
        }
    }

    async fn renew_leases(&self) {
        let hub = &self.hub;
        for vm in hub.store.vms().unwrap_or_default() {
            let Some(holder) = vm.job_id.clone() else {
                continue;
            };
            let ours = hub.is_live(&holder) || hub.store.rotation_holds(&vm.name).unwrap_or(false);
            if !ours {
                continue;
            }
            match leases::renew(&*self.hv, &self.owner, &vm.name, &holder).await {
                Ok(true) => {}
                Ok(false) => {
                    let by = leases::read(&*self.hv, &vm.name)
                        .await
                        .ok()
                        .flatten()
                        .map(|l| l.describe())
                        .unwrap_or_else(|| "someone else".into());
                    let why = format!("the lease of VM {} was taken over by {by}", vm.name);
                    tracing::error!(holder = %holder, "{why}");
                    self.mark_lost(&holder, &why);
                    hub.stop_live(
                        &holder,
                        Stop {
                            canceled: false,
                            reason: why,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(vm = %vm.name, error = %e, "renewing the lease failed; next tick")
                }
            }
        }
    }

    async fn power_off_logged(&self, vm: &str) {
        let secs = self.hub.cfg.deadlines.shutdown_secs;
        match tokio::time::timeout(Duration::from_secs(secs), self.hv.power_off(vm)).await {
            Ok(Ok(())) => tracing::info!(%vm, "powered off"),
            Ok(Err(e)) => tracing::warn!(%vm, error = %e, "power-off failed; retried next tick"),
            Err(_) => tracing::warn!(%vm, "power-off timed out; retried next tick"),
        }
    }

    /// Powers off a VM no live job or rotation of this process holds, unless another live
    /// instance leased it; an abandoned lease is taken over (the line removed).
    async fn power_off_stray(&self, vm: &str) {
        let hub = &self.hub;
        let lease = match leases::read(&*self.hv, vm).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%vm, error = %e, "cannot read the VM's lease; leaving it this tick");
                return;
            }
        };
        if let Some(l) = &lease {
            if l.blocks(&self.owner, now_ms()) {
                tracing::debug!(%vm, lease = %l.describe(), "on, held by another instance");
                return;
            }
            if l.instance != self.owner.instance {
                tracing::warn!(%vm, lease = %l.describe(), "taking over an abandoned lease");
                hub.metrics.count("leases_taken_over");
            }
        }
        tracing::warn!(%vm, "powered on with no live job: powering off");
        hub.metrics.count("stray_vms_powered_off");
        self.power_off_logged(vm).await;
        if let Some(l) = lease {
            // Removes whatever lease is there, if it is still the one read.
            let stale = leases::LeaseOwner {
                instance: l.instance.clone(),
                host: l.host.clone(),
                ttl_secs: l.ttl_secs,
            };
            if let Err(e) = leases::release(&*self.hv, &stale, vm, &l.holder).await {
                tracing::warn!(%vm, error = %e, "removing the abandoned lease");
            }
        }
    }

    /// One pass of every rule.
    pub async fn reconcile_once(&self) {
        let hub = &self.hub;
        let now = now_ms();
        match hub.store.release_stale_rotations() {
            Ok(released) => {
                for (rotation, vms, why) in released {
                    tracing::warn!(%rotation, ?vms, "released the leases of a rotation: {why}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "releasing stale rotation leases"),
        }
        let active = hub.store.jobs_in_states(&ACTIVE).unwrap_or_default();
        let mut present: HashSet<String> = HashSet::new();
        let mut listed_all = true;
        for (version, pool) in &hub.cfg.pools {
            let vms = match self.hv.list_vms(&pool.prefix).await {
                Ok(v) => {
                    hub.health.set_vsphere(true, "");
                    v
                }
                Err(e) => {
                    hub.health.set_vsphere(false, &e.to_string());
                    tracing::warn!(pool = %version, error = %e, "listing VMs failed");
                    listed_all = false;
                    continue;
                }
            };
            let names: Vec<String> = vms.iter().map(|v| v.name.clone()).collect();
            let _ = hub.store.register_vms(version, &names);
            present.extend(names);
            for vm in vms.iter().filter(|v| v.power != PowerState::Off) {
                let _g = hub.vm_decisions.lock().await;
                // An active job holds its VM whether this process drives it yet or not: an
                // orphan not re-adopted (vSphere did not answer) keeps its VM until `adopt`
                // decides, or the job's deadline ends it.
                let held = hub
                    .store
                    .jobs_in_states(&ACTIVE)
                    .unwrap_or_default()
                    .into_iter()
                    .any(|j| j.vm.as_deref() == Some(&vm.name))
                    || hub.store.rotation_holds(&vm.name).unwrap_or(false)
                    // A held VM (issue 18) is leased to its ended job, never a stray.
                    || hub
                        .store
                        .holds()
                        .unwrap_or_default()
                        .iter()
                        .any(|h| h.vm == vm.name);
                if !held {
                    self.power_off_stray(&vm.name).await;
                }
            }
        }
        for job in active {
            let gone = listed_all && job.vm.as_ref().is_some_and(|v| !present.contains(v));
            let late = job.deadline_ms.is_some_and(|d| now > d);
            let reason = if gone {
                format!("VM {} no longer exists", job.vm.clone().unwrap_or_default())
            } else if late {
                "the job's deadline passed".to_owned()
            } else {
                continue;
            };
            tracing::warn!(job = %job.id, %reason, "ending a stuck job");
            let stop = Stop {
                canceled: false,
                reason: reason.clone(),
            };
            if !hub.stop_live(&job.id, stop) {
                let _ = hub.store.finish(&job.id, JobState::Error, &reason, false);
            }
        }
        let queue_limit = (hub.cfg.deadlines.queue_secs * 1000) as i64;
        for job in hub
            .store
            .jobs_in_states(&[JobState::Queued])
            .unwrap_or_default()
        {
            if now - job.created_ms > queue_limit {
                let note = format!("no VM became free within {}s", hub.cfg.deadlines.queue_secs);
                let _ = hub.store.finish(&job.id, JobState::Error, &note, false);
            }
        }
        // No terminal job whose final status is neither posted nor alerted.
        let since = now - 7 * 86_400_000;
        match hub.store.final_status_check(since, STUCK_STATUS_TRIES) {
            Ok(found) => {
                for (job, tries, error) in found {
                    if tries == 0 {
                        tracing::error!(%job, "a terminal job had no final status; queued it again");
                        continue;
                    }
                    hub.alert(
                        &format!("status:{job}"),
                        &format!(
                            "the final status of job {job} is still not posted after {tries} \
                             tries: {}",
                            error.unwrap_or_default()
                        ),
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "checking the final statuses"),
        }
        // No check run left queued or in progress by a job that ended (contracts §10).
        match hub.store.unfinished_checks(since, STUCK_STATUS_TRIES) {
            Ok((queued, stuck)) => {
                for job in queued {
                    tracing::error!(%job, "an ended job's check run had no completion; queued it");
                }
                for (job, tries, error) in stuck {
                    hub.alert(
                        &format!("check:{job}"),
                        &format!(
                            "the check run of job {job} is still not completed on GitHub after \
                             {tries} tries: {}",
                            error.unwrap_or_default()
                        ),
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "checking the check runs"),
        }
        self.check_quarantine();
        // Provisioned snapshots past their pool's retention (issue 18).
        self.prune_stage_snapshots().await;
        // Clones of stage re-runs no active job runs on (issue 18, contracts §12).
        self.destroy_orphan_clones().await;
        // Holds past their time, released, or in the way of queued jobs (issue 18): the holds'
        // loop looks again, woken by the `wake_all` below.
        let keep_ms = (hub.cfg.log_retention_days * 86_400_000) as i64;
        if let Ok(old) = hub.store.ended_before(now - keep_ms) {
            for id in old {
                let _ = joblog::remove_logs(&hub.cfg.log_dir(), &id);
            }
        }
        hub.wake_all();
    }
}
