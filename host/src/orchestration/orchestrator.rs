//! The [`Orchestrator`] of a `serve` process, and its scheduler: per-version pools, which queued
//! job gets which VM and when, and the version intake.
//!
//! Invariants:
//! - Dispatch is event-driven: the loop runs whenever [`Hub::scheduler`] is notified (a job was
//!   queued or got its version, a VM was freed, a job's pause after an outage ended), never on a
//!   polling interval.
//! - A VM is claimed in one store transaction, and only if vSphere reported it powered off just
//!   before; FIFO within a pool (the store's `seq` order). A VM another instance holds (its
//!   lease on the VM, `leases`) is left out until that lease expires. Nothing is claimed once the
//!   process is draining (`SIGTERM`).
//! - Jobs wait for their Qubes version (the intake: the commit's matrix file through
//!   `orchestration::matrix`, else `sdci-agent ci-config`) before they can be claimed; a
//!   version without a pool ends the job with `error` and says how to fix it; while
//!   the gateway is unavailable they wait (retried with backoff), so no job runs on a guessed
//!   version because GitHub was down.
//!
//! The scheduler is generic over [`Hypervisor`]: the real vim25 client in production, the govmomi
//! simulator through that same client in tests. The intake needs no hypervisor
//! ([`intake_loop`]): it runs while vSphere is still unreachable.

use super::leases::{Lease, LeaseOwner};
use crate::domain::JobState;
use crate::gateway::GatewayFailure;
use crate::hub::Hub;
use crate::{now_ms, random_hex};
use sdci_vsphere::{GuestAuth, Hypervisor, PowerState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The scheduler, lifecycle and reconciler of one `serve` process.
pub struct Orchestrator<H> {
    pub hub: Arc<Hub>,
    pub hv: Arc<H>,
    pub auth: GuestAuth,
    /// This instance, as written into the leases on VMs.
    pub owner: LeaseOwner,
    /// VMs another live instance holds, with when its lease expires (Unix ms).
    foreign: Mutex<HashMap<String, i64>>,
    /// Jobs whose VM lease another instance took over, with why.
    lost: Mutex<HashMap<String, String>>,
    /// The earliest pending timed wake-up of the scheduler (Unix ms).
    wake_at: Mutex<Option<i64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<H: Hypervisor> Orchestrator<H> {
    pub fn new(hub: Arc<Hub>, hv: Arc<H>, auth: GuestAuth) -> Self {
        let instance = hub.store.instance_id().unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the instance id; using a new one for this run");
            random_hex(8)
        });
        let owner = LeaseOwner::new(instance, hub.cfg.jobs.lease_ttl_secs);
        Self {
            hub,
            hv,
            auth,
            owner,
            foreign: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashMap::new()),
            wake_at: Mutex::new(None),
        }
    }

    /// Waits for wake-ups and dispatches what it can each time, until the process drains.
    pub async fn scheduler_loop(self: Arc<Self>) {
        loop {
            if self.hub.is_draining() {
                return;
            }
            self.dispatch().await;
            tokio::select! {
                _ = self.hub.scheduler.notified() => {}
                _ = self.hub.drained() => return,
            }
        }
    }

    /// Wakes the scheduler at `at_ms` (a job's pause after an outage ends then).
    pub(super) fn wake_scheduler_at(&self, at_ms: i64) {
        {
            let mut w = lock(&self.wake_at);
            if w.is_some_and(|t| t <= at_ms && t > now_ms()) {
                return;
            }
            *w = Some(at_ms);
        }
        let hub = self.hub.clone();
        let wait = Duration::from_millis((at_ms - now_ms()).max(0) as u64 + 5);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            hub.scheduler.notify_one();
        });
    }

    /// Another instance holds `vm`: left out of claims until its lease expires.
    pub(super) fn mark_foreign(&self, vm: &str, lease: &Lease) {
        let until = lease.renewed_ms + (lease.ttl_secs as i64) * 1000;
        lock(&self.foreign).insert(vm.to_owned(), until);
        self.wake_scheduler_at(until + 1);
    }

    /// Leaves `vm` out of claims for `d` (its lease could not be read or written).
    pub(super) fn mark_foreign_for(&self, vm: &str, d: Duration) {
        let until = now_ms() + d.as_millis() as i64;
        lock(&self.foreign).insert(vm.to_owned(), until);
        self.wake_scheduler_at(until + 1);
    }

    pub(super) fn is_foreign(&self, vm: &str) -> bool {
        let mut f = lock(&self.foreign);
        match f.get(vm) {
            Some(until) if *until > now_ms() => true,
            Some(_) => {
                f.remove(vm);
                false
            }
            None => false,
        }
    }

    /// Records that job `id`'s VM lease was taken over by another instance.
    pub(super) fn mark_lost(&self, id: &str, why: &str) {
        lock(&self.lost).insert(id.to_owned(), why.to_owned());
    }

    /// Why job `id`'s lease was taken over, if it was (consumed).
    pub(super) fn lease_lost(&self, id: &str) -> Option<String> {
        lock(&self.lost).remove(id)
    }

    /// Raises (or clears) the alert of each pool whose every VM is quarantined.
    pub(super) fn check_quarantine(&self) {
        let hub = &self.hub;
        let full = hub.store.fully_quarantined_pools().unwrap_or_default();
        for pool in hub.cfg.pools.keys() {
            let key = format!("pool:{pool}");
            match full.iter().find(|(p, _)| p == pool) {
                Some((_, n)) => {
                    hub.alert(
                        &key,
                        &format!(
                            "every VM of pool {pool} ({n}) is quarantined: no job of Qubes \
                             {pool} can run; see `sdci-host vms` for their last errors and lift \
                             the quarantine with `sdci-host vms unquarantine NAME`"
                        ),
                    );
                }
                None => hub.health.clear_alert(&key),
            }
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
        if hub.is_draining() {
            return;
        }
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
                Ok(v) => {
                    hub.health.set_vsphere(true, "");
                    v
                }
                Err(e) => {
                    hub.health.set_vsphere(false, &e.to_string());
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
                .filter(|v| v.power == PowerState::Off && !self.is_foreign(&v.name))
                .map(|v| v.name.clone())
                .collect();
            loop {
                if hub.is_draining() {
                    return;
                }
                let secret = random_hex(32);
                let (c, rx) = {
                    let _g = hub.vm_decisions.lock().await;
                    // A stage re-run may take another VM's slot on a clone (contracts §12).
                    match hub.store.claim_with(
                        &version,
                        &off,
                        names.len(),
                        &secret,
                        now_ms() + self.job_budget_ms(),
                        names.first().is_some_and(|vm| self.hv.can_clone(vm))
                            && hub
                                .cfg
                                .pools
                                .get(&version)
                                .is_some_and(|p| p.rerun_on_clones),
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
        if let Ok(Some(t)) = hub.store.next_not_before() {
            self.wake_scheduler_at(t);
        }
    }

    /// Resolves each new job's Qubes version through `sdci-agent ci-config` ([`intake_once`]).
    pub async fn intake_loop(self: Arc<Self>) {
        intake_loop(self.hub.clone()).await
    }

    pub async fn intake_once(&self) {
        intake_once(&self.hub).await;
    }
}

/// The version intake of a `serve` process: on every wake-up, and after the gateway was
/// unavailable again after a pause doubling from 1 s to 60 s.
pub async fn intake_loop(hub: Arc<Hub>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if intake_once(&hub).await {
            tokio::select! {
                _ = hub.intake.notified() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        } else {
            backoff = Duration::from_secs(1);
            hub.intake.notified().await;
        }
    }
}

/// Resolves the version of every queued job that has none. Returns `true` when the gateway was
/// unavailable (those jobs wait: try again later).
pub async fn intake_once(hub: &Hub) -> bool {
    let jobs = match hub.store.jobs_without_version() {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "reading jobs without a version");
            return true;
        }
    };
    for job in jobs {
        // Before any agent call or VM: only the configured repositories run (issue 15).
        if !hub.cfg.webhook.allows_repo(job.repo.as_str()) {
            let note = format!("repository {} is not in webhook.repos: not run", job.repo);
            tracing::warn!(job = %job.id, "{note}");
            let _ = hub.store.finish(&job.id, JobState::Error, &note, false);
            hub.statuses.notify_one();
            hub.checks.notify_one();
            continue;
        }
        // The commit's matrix file first (issue 20); without one, the plain path below.
        if hub.cfg.agent.resolve_version {
            match super::matrix::resolve(hub, &job).await {
                super::matrix::Resolved::Done => {
                    // Its queued status and check run waited for the cell (its name).
                    hub.statuses.notify_one();
                    hub.checks.notify_one();
                    continue;
                }
                super::matrix::Resolved::Unavailable => return true,
                super::matrix::Resolved::Plain => {}
            }
        }
        let version = if hub.cfg.agent.resolve_version {
            match hub.github.ci_config(&job.repo, &job.sha).await {
                Ok(Some(v)) => {
                    hub.health.set_gateway(true, "");
                    v
                }
                Ok(None) => {
                    hub.health.set_gateway(true, "");
                    hub.cfg.default_version.clone()
                }
                Err(e) if e.kind() == GatewayFailure::Unavailable => {
                    hub.health.set_gateway(false, &e.to_string());
                    tracing::warn!(job = %job.id, error = %e,
                        "ci-config: the gateway is unavailable; the job waits for its version");
                    return true;
                }
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
            hub.checks.notify_one();
            continue;
        }
        if let Err(e) = hub.store.set_version(&job.id, &version) {
            tracing::error!(job = %job.id, error = %e, "saving the version");
            continue;
        }
        tracing::info!(job = %job.id, version = %version, "version resolved");
        // A check run is created, and a queued status posted, once the version is known.
        hub.statuses.notify_one();
        hub.checks.notify_one();
        hub.scheduler.notify_one();
    }
    false
}
