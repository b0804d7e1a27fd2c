//! Repair, at start-up and every `reconcile_interval_secs`: make the store and vSphere agree.
//!
//! Invariants (each is a rule the CI systems sdci learned from found the hard way):
//! - At start-up no job is driven by this process yet, so every job in a transitional state was
//!   left by a dead process: its VM is powered off and the attempt counts as an infrastructure
//!   failure (queued again, or `error` after the limit). Queued jobs stay queued.
//! - A powered-on pool VM that no active job holds is powered off (leaked VMs).
//! - An active job whose VM no longer exists, or whose whole budget has passed, is stopped with
//!   `error` and the reason.
//! - A queued job that found no VM within `deadlines.queue_secs` ends with `error`.
//! - Unposted statuses are retried, so no commit stays `pending`.
//! - Logs older than `log_retention_days` are deleted.

use super::Orchestrator;
use crate::domain::JobState;
use crate::hub::Stop;
use crate::{joblog, now_ms};
use sdci_vsphere::{Hypervisor, PowerState};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const ACTIVE: [JobState; 4] = JobState::ACTIVE;

impl<H: Hypervisor> Orchestrator<H> {
    /// Start-up reconciliation, before anything is dispatched.
    pub async fn startup(&self) {
        let hub = &self.hub;
        let orphans = match hub.store.jobs_in_states(&ACTIVE) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "reading jobs at start-up");
                return;
            }
        };
        for job in orphans {
            if let Some(vm) = &job.vm {
                self.power_off_logged(vm).await;
            }
            let why = format!(
                "sdci-host restarted while the job was {}",
                job.state.as_str()
            );
            let cfg = &hub.cfg.jobs;
            // A restart is the host's fault, not the VM's: do not count it towards quarantine.
            match hub
                .store
                .infra_failure(&job.id, &why, cfg.max_attempts, u32::MAX)
            {
                Ok(r) => tracing::warn!(job = %job.id, outcome = ?r, "{why}"),
                Err(e) => tracing::error!(job = %job.id, error = %e, "reconciling a job"),
            }
            if let Some(cancel) = &job.cancel_requested {
                let _ = hub.store.request_cancel(&job.id, cancel);
            }
        }
        self.reconcile_once().await;
    }

    pub async fn reconcile_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.hub.cfg.reconcile_interval_secs.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reconcile_once().await;
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
                Ok(v) => v,
                Err(e) => {
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
                let held = hub
                    .store
                    .jobs_in_states(&ACTIVE)
                    .unwrap_or_default()
                    .into_iter()
                    .any(|j| j.vm.as_deref() == Some(&vm.name) && hub.is_live(&j.id))
                    || hub.store.rotation_holds(&vm.name).unwrap_or(false);
                if !held {
                    tracing::warn!(vm = %vm.name, "powered on with no live job: powering off");
                    hub.metrics.count("stray_vms_powered_off");
                    self.power_off_logged(&vm.name).await;
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
        let keep_ms = (hub.cfg.log_retention_days * 86_400_000) as i64;
        if let Ok(old) = hub.store.ended_before(now - keep_ms) {
            for id in old {
                let p = joblog::log_path(&hub.cfg.log_dir(), &id);
                if p.exists() {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        hub.wake_all();
    }
}
