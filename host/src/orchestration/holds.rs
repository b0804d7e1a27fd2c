//! Holding a job's VM after its end, for debugging (issue 18): per pool (`hold_on_failure =
//! "off" | "failure" | "always"`) or on request (`sdci-host jobs hold ID [--for 4h]`). A held
//! VM stays powered on, keeps the ended job in `vms.job_id` (so no claim takes it and the
//! reconciler treats it as leased, never as a stray), and shows who asked, until when and how to
//! reach it (VM name, the hypervisor's console ticket when it gives one). The hold ends at its
//! TTL, on `jobs release ID` (the TTL set to now), or — for an automatic hold — once the pool has
//! queued jobs and the grace passed; then the VM is powered off as any job's VM is (the next
//! job's revert discards its disk).
//!
//! When: [`Orchestrator::hold_loop`] ends each hold as it falls due — it sleeps until the
//! earliest hold's time (or an automatic hold's grace) and is woken by `Hub::holds` whenever a
//! hold may have changed: `sdci-host jobs release ID`, `jobs hold ID --for …` (another process:
//! it writes the store, then `POST /api/v1/wake`), a hold begun, a job queued, the reconciler's
//! pass (the safety net). So a release takes effect within a second, not at the next pass.
//!
//! Leases (contracts §9): a held VM keeps its lease line, owned by the ended job, renewed with
//! the other leases ([`Orchestrator::renew_hold_leases`]) and removed when the hold ends, so
//! another `sdci-host` instance on the same vSphere never takes a held VM. A held VM found off
//! or gone (at that renewal) ends its hold.
//!
//! Invariants:
//! - Only a job that reached a verdict (success/failure) is held: an infrastructure error
//!   (the VM's fault, retried elsewhere) or a stop never is.
//! - The decision is one pure function of the job's end, the pool's setting and the request
//!   ([`decide`]), made once in the verdict (the VM stays on) and once after the store ended the
//!   job (the hold recorded); both see the same inputs.
//! - A hold survives a host restart (it is a row in the store, its lease names the instance).
//! - Only [`Orchestrator::hold_loop`] ends holds, one at a time: no two tasks power off and free
//!   the same held VM.

use super::leases;
use super::Orchestrator;
use crate::config::{HoldOn, PoolConfig};
use crate::store::Hold;
use sdci_vsphere::{Hypervisor, PowerState, VsphereError};
use std::sync::Arc;
use std::time::Duration;

/// The longest the holds' loop sleeps without a wake-up (a clock step, a lost wake-up).
const MAX_NAP: Duration = Duration::from_secs(60);

/// Who asked, for how long, automatic or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldPlan {
    pub who: String,
    pub secs: u64,
    pub automatic: bool,
}

/// Whether a job that ended with `failed` (`true`: a step failed) is held: an explicit request
/// wins; else the pool's setting.
pub fn decide(
    pool: Option<&PoolConfig>,
    requested: Option<(String, u64)>,
    failed: bool,
) -> Option<HoldPlan> {
    if let Some((who, secs)) = requested {
        // Withdrawn (`jobs release` before the end): no hold at all.
        if secs == 0 {
            return None;
        }
        return Some(HoldPlan {
            who,
            secs,
            automatic: false,
        });
    }
    let pool = pool?;
    let on = match pool.hold_on_failure {
        HoldOn::Off => false,
        HoldOn::Failure => failed,
        HoldOn::Always => true,
    };
    on.then(|| HoldPlan {
        who: format!(
            "the pool (hold_on_failure = \"{}\")",
            match pool.hold_on_failure {
                HoldOn::Always => "always",
                _ => "failure",
            }
        ),
        secs: pool.hold_secs,
        automatic: true,
    })
}

/// A hold's remaining time, for people: `3h 59m`, `12m`, `expired`.
pub fn left(until_ms: i64, now: i64) -> String {
    let s = (until_ms - now) / 1000;
    if s <= 0 {
        return "expired".into();
    }
    match (s / 3600, (s % 3600) / 60) {
        (0, m) => format!("{}m", m.max(1)),
        (h, m) => format!("{h}h {m}m"),
    }
}

impl<H: Hypervisor> Orchestrator<H> {
    /// The hold plan for job `job` ending with `failed`, if any.
    pub(super) fn hold_plan(&self, job: &crate::store::JobRow, failed: bool) -> Option<HoldPlan> {
        let version = job.version.clone().unwrap_or_default();
        let requested = self.hub.store.hold_request(job.id.as_str()).ok().flatten();
        decide(self.hub.cfg.pools.get(&version), requested, failed)
    }

    /// After the store ended job `job` on `vm`: records the hold the verdict kept the VM on for.
    pub(super) async fn begin_hold(&self, job: &crate::store::JobRow, vm: &str, plan: HoldPlan) {
        let hub = &self.hub;
        let now = crate::now_ms();
        let console = match self.hv.console(vm).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%vm, error = %e, "no console ticket");
                None
            }
        };
        let hold = Hold {
            vm: vm.to_owned(),
            job_id: job.id.to_string(),
            who: plan.who.clone(),
            automatic: plan.automatic,
            until_ms: now + (plan.secs as i64) * 1000,
            created_ms: now,
            console,
        };
        match hub.store.start_hold(&hold) {
            Ok(()) => {
                tracing::info!(%vm, who = %plan.who, secs = plan.secs, "VM held after its job");
                let _ = crate::joblog::append_log(
                    &hub.cfg.log_dir(),
                    job.id.as_str(),
                    &format!(
                        "=== VM {vm} held for {} by {} (until {}); `sdci-host jobs release {}` \
                         ends it\n",
                        left(hold.until_ms, now),
                        plan.who,
                        sdci_protocol::time::Utc::from_unix_millis(hold.until_ms).rfc3339(),
                        job.id
                    ),
                );
            }
            Err(e) => {
                tracing::error!(%vm, error = %e, "recording the hold failed; powering off");
                self.power_off_held(vm).await;
                self.release_hold_lease(vm, job.id.as_str()).await;
            }
        }
        hub.holds.notify_one();
    }

    async fn power_off_held(&self, vm: &str) {
        super::vm_power::power_off_quietly(&*self.hv, vm, self.hub.cfg.deadlines.shutdown_secs)
            .await
    }

    /// Ends each hold as it falls due (see the module doc); runs beside the reconciler until the
    /// process drains.
    pub async fn hold_loop(self: Arc<Self>) {
        let hub = self.hub.clone();
        loop {
            let next = self.expire_holds().await;
            let nap = next.map_or(MAX_NAP, |at| {
                Duration::from_millis((at - crate::now_ms()).clamp(0, i64::MAX) as u64).min(MAX_NAP)
            });
            tokio::select! {
                _ = hub.holds.notified() => {}
                _ = tokio::time::sleep(nap) => {}
                _ = hub.drained() => return,
            }
        }
    }

    /// Ends the holds that expired, were released, or (automatic ones) stand in the way of
    /// queued jobs past the pool's grace: powered off, lease line removed, then free. Returns
    /// when the next of the remaining holds falls due (Unix ms), if any does by time alone.
    async fn expire_holds(&self) -> Option<i64> {
        let hub = &self.hub;
        let now = crate::now_ms();
        let holds = match hub.store.holds() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "reading the holds");
                return Some(now + 1000);
            }
        };
        let queued = hub.store.queue_depths().unwrap_or_default();
        let mut next: Option<i64> = None;
        for h in holds {
            let version = hub
                .store
                .job(&h.job_id)
                .ok()
                .flatten()
                .and_then(|j| j.version);
            let pool = version.as_ref().and_then(|v| hub.cfg.pools.get(v));
            let waiting = queued
                .iter()
                .any(|(v, n)| v.as_ref() == version.as_ref() && *n > 0);
            let grace = pool.map_or(900, |p| p.hold_grace_secs) as i64 * 1000;
            let why = if now >= h.until_ms {
                "its time is up"
            } else if h.automatic && waiting && now - h.created_ms >= grace {
                "the pool has queued jobs"
            } else {
                let mut due = h.until_ms;
                if h.automatic && now - h.created_ms < grace {
                    // Once the grace passed, a queued job (its wake-up) ends the hold.
                    due = due.min(h.created_ms + grace);
                }
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            };
            tracing::info!(vm = %h.vm, job = %h.job_id, why, "ending a hold");
            self.power_off_held(&h.vm).await;
            self.end_hold(&h, why, "; powered off").await;
        }
        next
    }

    /// Renews the lease line of every held VM (owned by its ended job), with the other leases
    /// every quarter of `jobs.lease_ttl_secs`. A held VM found off or gone (a person, or another
    /// instance that took over the lease of this one while it was away longer than the ttl,
    /// powered it off) ends its hold: there is nothing left to look at. A lease another
    /// instance took over ends the hold in the store without touching the VM: it is that
    /// instance's now.
    pub(super) async fn renew_hold_leases(&self) {
        let hub = &self.hub;
        for h in hub.store.holds().unwrap_or_default() {
            if hub.is_live(&h.job_id) {
                continue; // still the job's own lease, renewed with the job's
            }
            let gone = match self.hv.vm(&h.vm).await {
                Ok(info) if info.power == PowerState::Off => Some("the VM was found powered off"),
                Err(VsphereError::VmNotFound { .. }) => Some("the VM no longer exists"),
                _ => None,
            };
            if let Some(why) = gone {
                tracing::warn!(vm = %h.vm, job = %h.job_id, why, "ending a hold");
                self.end_hold(&h, why, "").await;
                continue;
            }
            match leases::renew(&*self.hv, &self.owner, &h.vm, &h.job_id).await {
                Ok(true) => {}
                Ok(false) => {
                    let by = leases::read(&*self.hv, &h.vm)
                        .await
                        .ok()
                        .flatten()
                        .map(|l| l.describe())
                        .unwrap_or_else(|| "someone else".into());
                    tracing::error!(vm = %h.vm, job = %h.job_id, %by,
                        "the held VM's lease was taken over; the hold ends, the VM is left alone");
                    if let Err(e) = hub.store.end_hold(&h.vm) {
                        tracing::error!(vm = %h.vm, error = %e, "ending the hold");
                    }
                    let _ = crate::joblog::append_log(
                        &hub.cfg.log_dir(),
                        &h.job_id,
                        &format!(
                            "=== the hold of VM {} ended: its lease was taken over by {by}\n",
                            h.vm
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!(vm = %h.vm, error = %e, "renewing a held VM's lease; next tick")
                }
            }
        }
    }

    /// The end of hold `h` (its VM already off, or found off or gone): the store's row, the
    /// lease line, the job's log ("ended (`why`)`then`"), and the scheduler woken for the freed
    /// VM.
    async fn end_hold(&self, h: &Hold, why: &str, then: &str) {
        let hub = &self.hub;
        if let Err(e) = hub.store.end_hold(&h.vm) {
            tracing::error!(vm = %h.vm, error = %e, "ending the hold");
        }
        self.release_hold_lease(&h.vm, &h.job_id).await;
        let _ = crate::joblog::append_log(
            &hub.cfg.log_dir(),
            &h.job_id,
            &format!("=== the hold of VM {} ended ({why}){then}\n", h.vm),
        );
        hub.scheduler.notify_one();
    }

    async fn release_hold_lease(&self, vm: &str, job: &str) {
        let call = Duration::from_secs(30);
        match tokio::time::timeout(call, leases::release(&*self.hv, &self.owner, vm, job)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%vm, error = %e, "removing the held VM's lease failed"),
            Err(_) => tracing::warn!(%vm, "removing the held VM's lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(on: HoldOn) -> PoolConfig {
        let mut p: PoolConfig =
            toml::from_str("prefix = \"Q_\"\ngolden_snapshot = \"g\"\n").unwrap();
        p.hold_on_failure = on;
        p
    }

    #[test]
    fn a_request_wins_else_the_pool_decides_by_the_jobs_end() {
        let req = Some(("ada".to_owned(), 60));
        let asked = decide(Some(&pool(HoldOn::Off)), req, false).unwrap();
        assert_eq!(
            (asked.who.as_str(), asked.secs, asked.automatic),
            ("ada", 60, false)
        );
        assert!(decide(Some(&pool(HoldOn::Off)), None, true).is_none());
        assert!(decide(Some(&pool(HoldOn::Failure)), None, false).is_none());
        let auto = decide(Some(&pool(HoldOn::Failure)), None, true).unwrap();
        assert!(auto.automatic);
        assert_eq!(auto.secs, 4 * 3600, "the default TTL is 4 h");
        assert!(decide(Some(&pool(HoldOn::Always)), None, false).is_some());
        assert!(decide(None, None, true).is_none());
        assert_eq!(left(3_600_000 * 4, 0), "4h 0m");
        assert_eq!(left(5, 10), "expired");
    }
}
