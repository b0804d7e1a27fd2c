//! The [`Orchestrator`] of a `serve` process, and its scheduler: per-version pools, which queued
//! job gets which VM and when, and the version intake.
//!
//! Invariants:
//! - Dispatch is event-driven: the loop runs whenever [`Hub::scheduler`] is notified (a job was
//!   queued or got its version, a VM was freed), never on a polling interval.
//! - A VM is claimed in one store transaction, and only if vSphere reported it powered off just
//!   before; FIFO within a pool (the store's `seq` order).
//! - Jobs wait for their Qubes version (the intake, via `sdci-agent ci-config`) before they can be
//!   claimed; a version without a pool ends the job with `error` and says how to fix it.
//!
//! The scheduler is generic over [`Hypervisor`]: the real vim25 client in production, the govmomi
//! simulator through that same client in tests.

use crate::domain::JobState;
use crate::hub::Hub;
use crate::{now_ms, random_hex};
use sdci_vsphere::{GuestAuth, Hypervisor, PowerState};
use std::sync::Arc;

/// The scheduler, lifecycle and reconciler of one `serve` process.
pub struct Orchestrator<H> {
    pub hub: Arc<Hub>,
    pub hv: Arc<H>,
    pub auth: GuestAuth,
}

impl<H: Hypervisor> Orchestrator<H> {
    pub fn new(hub: Arc<Hub>, hv: Arc<H>, auth: GuestAuth) -> Self {
        Self { hub, hv, auth }
    }

    /// Waits for wake-ups and dispatches what it can each time.
    pub async fn scheduler_loop(self: Arc<Self>) {
        loop {
            self.dispatch().await;
            self.hub.scheduler.notified().await;
        }
    }

    /// The whole job budget from claim to shutdown, for the reconciler's backstop.
    fn job_budget_ms(&self) -> i64 {
        let d = &self.hub.cfg.deadlines;
        let secs = d.revert_secs
            + d.power_on_secs
            + d.guest_ready_secs
            + 2 * d.upload_secs
            + d.run_secs
            + d.download_secs
            + d.shutdown_secs;
        (secs * 1000) as i64
    }

    /// Claims as many (job, VM) pairs as are available now and starts their lifecycles.
    pub async fn dispatch(self: &Arc<Self>) {
        let hub = &self.hub;
        let depths = match hub.store.queue_depths() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "reading the queue");
                return;
            }
        };
        for (version, n) in depths {
            let Some(version) = version else { continue };
            if n == 0 {
                continue;
            }
            let Some(pool) = hub.cfg.pools.get(&version) else {
                continue;
            };
            let vms = match self.hv.list_vms(&pool.prefix).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(pool = %version, error = %e,
                        "listing the pool's VMs failed; retrying at the next wake-up or tick");
                    continue;
                }
            };
            let names: Vec<String> = vms.iter().map(|v| v.name.clone()).collect();
            if let Err(e) = hub.store.register_vms(&version, &names) {
                tracing::error!(error = %e, "registering VMs");
                continue;
            }
            let mut off: Vec<String> = vms
                .iter()
                .filter(|v| v.power == PowerState::Off)
                .map(|v| v.name.clone())
                .collect();
            loop {
                let secret = random_hex(32);
                let (c, rx) = {
                    let _g = hub.vm_decisions.lock().await;
                    match hub.store.claim(
                        &version,
                        &off,
                        names.len(),
                        &secret,
                        now_ms() + self.job_budget_ms(),
                    ) {
                        // Registered before the lock is released: the reconciler sees it live.
                        Ok(Some(c)) => {
                            let rx = hub.register_live(&c.job.id);
                            (c, rx)
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "claiming");
                            break;
                        }
                    }
                };
                off.retain(|v| *v != c.vm);
                tracing::info!(job = %c.job.id, vm = %c.vm, attempt = c.attempt, "claimed");
                let me = self.clone();
                tokio::spawn(async move { me.drive(c, secret, rx).await });
            }
        }
    }

    /// Resolves each new job's Qubes version through `sdci-agent ci-config`.
    pub async fn intake_loop(self: Arc<Self>) {
        loop {
            self.intake_once().await;
            self.hub.intake.notified().await;
        }
    }

    pub async fn intake_once(&self) {
        let hub = &self.hub;
        let jobs = match hub.store.jobs_without_version() {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "reading jobs without a version");
                return;
            }
        };
        for job in jobs {
            let version = if hub.cfg.agent.resolve_version {
                match hub.github.ci_config(&job.repo, &job.sha).await {
                    Ok(Some(v)) => v,
                    Ok(None) => hub.cfg.default_version.clone(),
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e,
                            "ci-config failed; using the default Qubes version");
                        hub.cfg.default_version.clone()
                    }
                }
            } else {
                hub.cfg.default_version.clone()
            };
            if !hub.cfg.pools.contains_key(&version) {
                let note = format!(
                    "no VM pool for Qubes {version}: add [pools.\"{version}\"] to the host config"
                );
                tracing::warn!(job = %job.id, "{note}");
                let _ = hub.store.finish(&job.id, JobState::Error, &note, false);
                hub.statuses.notify_one();
                continue;
            }
            if let Err(e) = hub.store.set_version(&job.id, &version) {
                tracing::error!(job = %job.id, error = %e, "saving the version");
                continue;
            }
            tracing::info!(job = %job.id, version = %version, "version resolved");
            hub.scheduler.notify_one();
        }
    }
}
