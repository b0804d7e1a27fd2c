//! One attempt of one job on one claimed VM, phase by phase:
//! lease on the VM → (App mode: the job's token) → revert → power on → guest operations ready →
//! (a job with `update = true`: Qubes updates and a reboot, `updates`) → make the job's folder,
//! upload the job file → `sdci-dom0 launch` (the host posts `pending` "running") → wait → download
//! dom0's log and its `results.tar.zst` (`results`: test cases and evidence, never the verdict; a
//! console screenshot first when the guest hung or the deadline passed) → power off. And the same
//! from "launch started" on for an attempt a previous process left running
//! ([`Orchestrator::resume`], re-adopted by the reconciler).
//!
//! Invariants:
//! - Every phase has its own deadline (`[deadlines]`) and can be interrupted by a stop request
//!   (superseded, canceled, the reconciler's backstop, a lease taken over).
//! - Failures are classified by who must act ([`Fail`]):
//!   - the VM (a fault of it, tools never ready, a lost guest process, exit code 2 or any code
//!     but 0/1): the VM is powered off and the store requeues the job on another VM, or ends it
//!     as `error` after `jobs.max_attempts`; a VM failing `jobs.quarantine_after` times in a row
//!     is quarantined (a pool fully quarantined raises an alert);
//!   - the configuration (dom0 refused the guest login, a missing golden snapshot, no
//!     `sdci-dom0` to run, vSphere refused the login, the App refused to mint a token): the job
//!     ends `error` with a reason naming the config key, no VM is blamed, an alert is raised;
//!   - the commit (its sha is not in the repository): `error` at once, no other VM is booted;
//!   - vSphere or the gateway unavailable (`ErrorClass::RetryLater`, the agent unreachable):
//!     nobody's fault — the job is queued again at once, holding no VM, and claimed again after
//!     a pause, counted against nothing, until its overall deadline (`deadlines.queue_secs`);
//!   - another `sdci-host` instance holds the VM's lease: the claim is undone, nothing counted.
//! - Only exit codes 0 and 1 of `launch` decide `success` / `failure`, and once seen the exit
//!   code is stored: a restart never runs that attempt again.
//! - `sdci-dom0 launch`'s end is noticed at once: the relayed `Result` event (or the end of the
//!   event stream) wakes the wait; polling the guest process every `jobs.poll_interval_ms` is the
//!   safety net (backing off on errors).
//! - Once dom0's log is downloaded (streamed to a temporary file, at most
//!   `jobs.dom0_log_max_bytes`, a marker when cut), the VM is powered off at once: the next job's
//!   revert discards its disk anyway (a guest shutdown stays where a clean disk matters: the
//!   rotation's snapshot).
//! - Whatever happens, the attempt ends with the VM powered off (or handed to the reconciler when
//!   vSphere refuses), the leases (store and VM) released, the job's token revoked, and a
//!   terminal status in the outbox when the job ended.

use super::leases::{self, Take};
use super::vm_power::{self, Phase, VmError};
use super::Orchestrator;
use crate::config::Config;
use crate::domain::JobState;
use crate::gateway::GatewayFailure;
use crate::hub::Stop;
use crate::joblog::{self, append_log};
use crate::store::{AfterFailure, Claim, JobRow, LaunchState, RerunClone};
use sdci_protocol::job::{AgentJob, JobFile, JobSpec, JOB_FILE_VERSION};
use sdci_protocol::{Outcome, Secret};
use sdci_vsphere::{ErrorClass, GuestProgram, Hypervisor, ProcessState, VsphereError};
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

/// The description of the `pending` status the host posts when `sdci-dom0 launch` starts.
pub const RUNNING_DESCRIPTION: &str = "The build is running";

/// How long after the job file's deadline the host stops waiting for `launch` (dom0 enforces
/// the deadline itself; this lets it end and log first), at most.
const DEADLINE_GRACE_SECS: u64 = 60;

/// Why an attempt did not reach a verdict: who must act.
#[derive(Debug)]
pub(super) enum Fail {
    /// The VM or the attempt on it: retry on another VM (up to the limit), counted.
    Vm(String),
    /// The configuration: the job ends `error` naming `key`, no VM blamed, an alert.
    Config { key: String, message: String },
    /// The commit cannot be tested: `error` at once.
    Commit(String),
    /// vSphere (or the gateway) was unavailable: queued again after a pause, not counted.
    Outage(String),
    /// Another instance holds the VM's lease: queued again, not counted.
    Yield(String),
    /// Asked to stop.
    Stop(Stop),
    /// The job itself cannot run (invalid data): `error`, no retry.
    Fatal(String),
}

/// The configuration key behind a hypervisor failure, if it is the configuration's fault:
/// (key, what to check).
fn config_fault(
    phase: &str,
    e: &VsphereError,
    cfg: &Config,
    version: &str,
) -> Option<(String, String)> {
    use VsphereError as E;
    let vsphere_login = || {
        Some((
            "[vsphere] password_file".to_owned(),
            "vSphere refused the login: check [vsphere] user and [vsphere] password_file"
                .to_owned(),
        ))
    };
    match e {
        E::Fault { kind, .. } if kind == "InvalidGuestLogin" => Some((
            "[dom0] password_file".into(),
            format!(
                "dom0 refused the guest login of user {:?}: check [dom0] user and \
                 [dom0] password_file",
                cfg.dom0.user
            ),
        )),
        E::LoginRefused { .. } => vsphere_login(),
        E::Fault { kind, .. } if kind == "InvalidLogin" || kind == "NotAuthenticated" => {
            vsphere_login()
        }
        E::Fault { kind, .. } if kind == "NoPermission" => Some((
            "[vsphere] user".into(),
            "the vSphere user lacks a privilege sdci needs (README, \"vSphere\")".into(),
        )),
        E::SnapshotNotFound { vm, snapshot } => Some((
            format!("[pools.\"{version}\"] golden_snapshot"),
            format!(
                "VM {vm} has no snapshot {snapshot:?}: check [pools.\"{version}\"] \
                 golden_snapshot (or the rotation's pointer, `sdci-host vms`)"
            ),
        )),
        E::Fault { kind, .. }
            if phase == "start"
                && matches!(
                    kind.as_str(),
                    "FileNotFound" | "InvalidArgument" | "GuestPermissionDenied"
                ) =>
        {
            Some((
                "[dom0] program".into(),
                format!(
                    "dom0 cannot run {:?}: check [dom0] program and that sdci-dom0 is \
                     installed in the golden snapshot",
                    cfg.dom0.program
                ),
            ))
        }
        E::Config { .. } => Some((
            "[vsphere]".into(),
            "the vSphere configuration is not usable".into(),
        )),
        _ => None,
    }
}

/// Who must act on a hypervisor failure in `phase`.
pub(super) fn classify(phase: &str, e: &VsphereError, cfg: &Config, version: &str) -> Fail {
    let text = format!("{phase}: {e}");
    if let Some((key, why)) = config_fault(phase, e, cfg, version) {
        return Fail::Config {
            key,
            message: format!("{why} ({text})"),
        };
    }
    if e.class() == ErrorClass::RetryLater {
        Fail::Outage(text)
    } else {
        Fail::Vm(text)
    }
}

/// A failed VM procedure, classified the same way.
fn vm_fail(e: &VmError, cfg: &Config, version: &str) -> Fail {
    match e {
        VmError::Hypervisor { phase, error } => classify(phase.name(), error, cfg, version),
        VmError::TimedOut { .. } => Fail::Vm(e.to_string()),
    }
}

/// Waits until a stop is requested (forever if the sender is gone).
async fn stopped(rx: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(s) = rx.borrow_and_update().clone() {
            return s;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The relayed reason of a `Result` that says the commit itself cannot be fetched (the agent's
/// checkout found the repository but not the commit: `commit <sha> is not in <url>`).
pub fn commit_missing(reason: &str, sha: &str) -> bool {
    reason.contains(&format!("commit {sha} is not in "))
}

/// Replaces the job's log with dom0's copy in `fresh` (a file in the log folder) if they
/// differ, compared in chunks; `fresh` is gone afterwards. Returns whether it replaced.
fn replace_log_with_file(dir: &Path, id: &str, fresh: &Path) -> std::io::Result<bool> {
    let current = joblog::log_path(dir, id);
    if same_files(&current, fresh).unwrap_or(false) {
        std::fs::remove_file(fresh)?;
        return Ok(false);
    }
    std::fs::rename(fresh, &current)?;
    Ok(true)
}

fn same_files(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Ends a cut download with a marker line in dom0's format (contracts §3).
fn mark_truncated(path: &Path, max: u64) -> std::io::Result<()> {
    let ends_with_newline = {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        if len == 0 {
            true
        } else {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(len - 1))?;
            let mut b = [0u8; 1];
            f.read_exact(&mut b)?;
            b[0] == b'\n'
        }
    };
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    let stamp = sdci_protocol::time::Utc::now().rfc3339_millis();
    writeln!(
        f,
        "{}{stamp} === truncated: dom0's log.txt is longer than jobs.dom0_log_max_bytes \
         ({max} bytes); the rest is only in the VM until its next revert",
        if ends_with_newline { "" } else { "\n" }
    )
}

impl<H: Hypervisor> Orchestrator<H> {
    /// Drives one claimed attempt to its end and frees the VM.
    pub async fn drive(
        self: Arc<Self>,
        claim: Claim,
        secret: String,
        mut stop: watch::Receiver<Option<Stop>>,
    ) {
        let id = claim.job.id.clone();
        let span = tracing::info_span!("job", job = %id, vm = %claim.vm);
        async {
            let end = self.hub.end_signal(&id);
            let mut token = None;
            let result = match self.lease_vm(&claim).await {
                Ok(()) => {
                    self.attempt(&claim, secret, &mut stop, &end, &mut token)
                        .await
                }
                Err(f) => Err(f),
            };
            self.conclude(&claim.job, &claim.vm, claim.clone.as_ref(), result)
                .await;
            if let Some(t) = token {
                self.revoke_later(t);
            }
        }
        .instrument(span)
        .await
    }

    /// Re-adopts an attempt a previous process left at or after `sdci-dom0 launch`: waits for
    /// launch (the agent's relay reconnects and resumes on its own), or, if its exit code is
    /// already stored, goes straight to the verdict; then frees the VM as usual.
    pub async fn resume(
        self: Arc<Self>,
        job: JobRow,
        launch: LaunchState,
        mut stop: watch::Receiver<Option<Stop>>,
    ) {
        let slot = job.vm.clone().unwrap_or_default();
        // The attempt may run on a clone in the slot's stead (contracts §12): that is the VM
        // to watch, read from the store as the claim recorded it.
        let clone = self.hub.store.attempt_clone(&job.id).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the attempt's clone");
            None
        });
        let vm = clone
            .as_ref()
            .map_or_else(|| slot.clone(), |c| c.name.clone());
        let span = tracing::info_span!("job", job = %job.id, vm = %vm);
        async {
            let end = self.hub.end_signal(&job.id);
            let result = match (launch.exit, launch.pid) {
                (Some(code), _) => {
                    tracing::info!(code, "re-adopted after a restart: the verdict was stored");
                    if job.state != JobState::Finishing {
                        let _ = self.advance(
                            &job.id,
                            JobState::Finishing,
                            &format!("launch exited {code}"),
                        );
                    }
                    self.verdict(&job, &vm, code).await
                }
                (None, Some(pid)) => {
                    tracing::info!(
                        pid,
                        "re-adopted after a restart: sdci-dom0 launch still runs"
                    );
                    let deadline = launch.run_deadline_ms.unwrap_or_else(|| {
                        job.updated_ms + (self.hub.cfg.deadlines.run_secs * 1000) as i64
                    });
                    let run = self.run_launch(&job, &vm, pid, deadline, &mut stop, &end);
                    // Re-adopted before `provision` ended: its snapshot is still taken (issue 18).
                    let taken = matches!(self.hub.store.stage_snapshot(&job.id), Ok(Some(_)));
                    match taken {
                        true => run.await,
                        false => self.with_provision_snapshot(&job, &vm, run).await,
                    }
                }
                (None, None) => Err(Fail::Vm("no launch to re-adopt".into())),
            };
            self.conclude(&job, &slot, clone.as_ref(), result).await;
        }
        .instrument(span)
        .await
    }

    /// Writes the claim's lease on the VM itself (see `leases`).
    async fn lease_vm(&self, claim: &Claim) -> Result<(), Fail> {
        let cfg = &self.hub.cfg;
        let version = claim.job.version.clone().unwrap_or_default();
        match leases::take(&*self.hv, &self.owner, &claim.vm, &claim.job.id).await {
            Ok(Take::Taken { took_over }) => {
                if let Some(l) = took_over {
                    tracing::warn!(lease = %l.describe(), "took over an abandoned lease");
                }
                Ok(())
            }
            Ok(Take::Held(l)) => {
                self.mark_foreign(&claim.vm, &l);
                Err(Fail::Yield(format!(
                    "VM {} is leased by {}",
                    claim.vm,
                    l.describe()
                )))
            }
            // Without the lease the VM is not ours to touch: a configuration fault (no privilege
            // to set annotations) is still reported as such; anything else undoes the claim and
            // leaves the VM alone for a while.
            Err(e) => match classify("lease", &e, cfg, &version) {
                f @ Fail::Config { .. } => Err(f),
                _ => {
                    self.mark_foreign_for(&claim.vm, Duration::from_secs(30));
                    Err(Fail::Yield(format!(
                        "the lease on VM {} could not be written: {e}",
                        claim.vm
                    )))
                }
            },
        }
    }

    /// Records how the attempt ended, frees the VM and wakes whoever waits. `vm` is the claimed
    /// VM; an attempt on `clone` has the clone powered off and destroyed first, then `vm` (whose
    /// slot it took, never powered on) is released as any VM is.
    async fn conclude(
        &self,
        job: &JobRow,
        vm: &str,
        clone: Option<&RerunClone>,
        result: Result<(JobState, String), Fail>,
    ) {
        let hub = &self.hub;
        let id = job.id.as_str();
        if let Some(c) = clone {
            // A verdict that would hold a VM: the clone is not (the log says so).
            let hold_due = matches!(&result,
                Ok((s, _)) if self.hold_plan(job, *s == JobState::Failure).is_some());
            self.discard_clone(job, vm, c, hold_due).await;
        }
        let lost = self.lease_lost(id);
        match result {
            Ok((state, note)) => {
                tracing::info!(state = state.as_str(), %note, "job ended");
                // A VM kept on for debugging (issue 18): held, out of dispatch, with a TTL; it
                // keeps its lease line until the hold ends (contracts §9).
                let hold = self.hold_for(job, state == JobState::Failure);
                if hold.is_none() {
                    self.release_vm_lease(vm, id).await;
                }
                if let Err(e) = hub.store.finish(id, state, &note, true) {
                    tracing::error!(error = %e, "recording the end of the job");
                }
                // A failed cell of a `fail_fast` matrix cancels its commit's other cells.
                super::matrix::fail_fast(hub, job, state);
                hub.metrics.count(&format!("jobs_{}", state.as_str()));
                if let Some(plan) = hold {
                    self.begin_hold(job, vm, plan).await;
                }
            }
            Err(_) if lost.is_some() => {
                let why = lost.unwrap_or_default();
                tracing::warn!(%why, "the VM's lease was taken over; leaving the VM alone");
                let _ = append_log(&hub.cfg.log_dir(), id, &format!("=== {why}\n"));
                if let Err(e) = hub.store.yielded(id, &why) {
                    tracing::error!(error = %e, "recording the lost lease");
                }
            }
            Err(Fail::Yield(why)) => {
                tracing::info!(%why, "the VM is another instance's: the claim is undone");
                hub.metrics.count("claims_yielded");
                if let Err(e) = hub.store.yielded(id, &why) {
                    tracing::error!(error = %e, "undoing the claim");
                }
            }
            Err(Fail::Vm(e)) => {
                tracing::warn!(error = %e, "infrastructure failure");
                self.power_off_quietly(vm).await;
                self.release_vm_lease(vm, id).await;
                let _ = append_log(
                    &hub.cfg.log_dir(),
                    id,
                    &format!("=== infrastructure failure on {vm}: {e}\n"),
                );
                let cfg = &hub.cfg.jobs;
                match hub
                    .store
                    .infra_failure(id, &e, cfg.max_attempts, cfg.quarantine_after)
                {
                    Ok(AfterFailure::Requeued) => {
                        tracing::info!("queued again for another VM");
                        hub.metrics.count("attempts_retried");
                    }
                    Ok(AfterFailure::GaveUp) => {
                        tracing::warn!("giving up: error");
                        hub.metrics.count("jobs_error");
                    }
                    Err(e) => tracing::error!(error = %e, "recording the failure"),
                }
                self.check_quarantine();
            }
            Err(Fail::Config { key, message }) => {
                tracing::error!(%key, error = %message, "the configuration is wrong; no VM is blamed");
                self.power_off_quietly(vm).await;
                self.release_vm_lease(vm, id).await;
                let note = format!("configuration: {message}");
                let _ = append_log(&hub.cfg.log_dir(), id, &format!("=== {note}\n"));
                let _ = hub.store.finish(id, JobState::Error, &note, false);
                hub.metrics.count("jobs_error");
                hub.alert(&format!("config:{key}"), &message);
            }
            Err(Fail::Commit(reason)) => {
                tracing::warn!(%reason, "the commit cannot be tested; not retried");
                self.power_off_quietly(vm).await;
                self.release_vm_lease(vm, id).await;
                let _ = hub.store.finish(id, JobState::Error, &reason, true);
                hub.metrics.count("jobs_error");
            }
            Err(Fail::Outage(e)) => {
                tracing::warn!(error = %e, "vSphere or the gateway unavailable");
                self.power_off_quietly(vm).await;
                self.release_vm_lease(vm, id).await;
                match self.after_outage(job, vm, &e) {
                    Ok(()) => hub.metrics.count("attempts_outage"),
                    Err(end) => self.end_stopped(id, vm, end).await,
                }
            }
            Err(Fail::Stop(s)) => self.end_stopped(id, vm, s).await,
            Err(Fail::Fatal(e)) => {
                tracing::error!(error = %e, "job cannot run");
                self.power_off_quietly(vm).await;
                self.release_vm_lease(vm, id).await;
                let _ = hub.store.finish(id, JobState::Error, &e, true);
                hub.metrics.count("jobs_error");
            }
        }
        hub.unregister_live(id);
        hub.statuses.notify_one();
        hub.checks.notify_one();
        hub.scheduler.notify_one();
    }

    /// Ends a job that was asked to stop (or whose outage retries ran past its deadline).
    async fn end_stopped(&self, id: &str, vm: &str, s: Stop) {
        let hub = &self.hub;
        tracing::info!(reason = %s.reason, "job stopped");
        self.power_off_quietly(vm).await;
        self.release_vm_lease(vm, id).await;
        let state = if s.canceled {
            JobState::Canceled
        } else {
            JobState::Error
        };
        let _ = append_log(
            &hub.cfg.log_dir(),
            id,
            &format!("=== stopped: {}\n", s.reason),
        );
        if let Err(e) = hub.store.finish(id, state, &s.reason, true) {
            tracing::error!(error = %e, "recording the end of the job");
        }
        hub.metrics.count(&format!("jobs_{}", state.as_str()));
    }

    /// After a vSphere outage (or the gateway's) cut the attempt short: the job is queued again
    /// at once, holding no VM, without counting the attempt or blaming the VM; no VM is claimed
    /// for it before a pause (doubling per outage of this job, at most 5 minutes). Past the
    /// job's overall deadline (`deadlines.queue_secs` after it was queued, the bound the
    /// reconciler applies to a waiting job) it gives up: `Err` with the reason to end it with.
    fn after_outage(&self, job: &JobRow, vm: &str, error: &str) -> Result<(), Stop> {
        let hub = &self.hub;
        let id = job.id.as_str();
        let _ = append_log(
            &hub.cfg.log_dir(),
            id,
            &format!("=== vSphere unavailable during the attempt on {vm}: {error}\n"),
        );
        let outages = hub.store.outages(id).unwrap_or(0);
        let base = hub.cfg.jobs.outage_retry_ms.max(1);
        let wait_ms = base
            .saturating_mul(1u64 << outages.min(16))
            .min(300_000.max(base));
        let deadline = job.created_ms + (hub.cfg.deadlines.queue_secs * 1000) as i64;
        let not_before = crate::now_ms() + wait_ms as i64;
        if not_before > deadline {
            return Err(Stop {
                canceled: false,
                reason: format!(
                    "vSphere stayed unavailable until the job's deadline ({}s after it was \
                     queued): {error}",
                    hub.cfg.deadlines.queue_secs
                ),
            });
        }
        tracing::info!(wait_ms, "queued again; claimed again after the pause");
        if let Err(e) = hub.store.outage(id, error, not_before) {
            tracing::error!(error = %e, "recording the outage");
        }
        self.wake_scheduler_at(not_before);
        Ok(())
    }

    async fn power_off_quietly(&self, vm: &str) {
        vm_power::power_off_quietly(&*self.hv, vm, self.hub.cfg.deadlines.shutdown_secs).await
    }

    /// Removes job `id`'s lease from the VM's note (best effort: a failure leaves a lease of
    /// this instance, which this instance overwrites and others wait out).
    async fn release_vm_lease(&self, vm: &str, id: &str) {
        let call = Duration::from_secs(30);
        match tokio::time::timeout(call, leases::release(&*self.hv, &self.owner, vm, id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%vm, error = %e, "removing the VM's lease failed"),
            Err(_) => tracing::warn!(%vm, "removing the VM's lease timed out"),
        }
    }

    /// Revokes a job's token in the background (it expires within the hour anyway).
    fn revoke_later(&self, token: Secret) {
        let github = self.hub.github.clone();
        tokio::spawn(async move {
            match github.revoke(&token).await {
                Ok(()) => tracing::debug!("the job's token is revoked"),
                Err(e) => {
                    tracing::warn!(error = %e, "revoking the job's token failed; it expires on its own")
                }
            }
        });
    }

    /// Runs one phase under its deadline, interruptible by a stop request.
    async fn phase<T>(
        &self,
        name: &str,
        secs: u64,
        version: &str,
        stop: &mut watch::Receiver<Option<Stop>>,
        fut: impl Future<Output = Result<T, VsphereError>>,
    ) -> Result<T, Fail> {
        let started = Instant::now();
        let cfg = &self.hub.cfg;
        let r = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(secs), fut) => match r {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(classify(name, &e, cfg, version)),
                Err(_) => Err(Fail::Vm(format!("{name} did not finish within {secs}s"))),
            },
            s = stopped(stop) => Err(Fail::Stop(s)),
        };
        self.hub
            .metrics
            .observe_phase(name, started.elapsed().as_secs_f64());
        tracing::debug!(phase = name, ok = r.is_ok(), "phase done");
        r
    }

    fn advance(&self, id: &str, to: JobState, note: &str) -> Result<(), Fail> {
        match self.hub.store.advance(id, to, Some(note)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Fail::Stop(Stop {
                canceled: true,
                reason: "the job was ended elsewhere".into(),
            })),
            Err(e) => Err(Fail::Vm(format!("store: {e}"))),
        }
    }

    fn job_file(
        &self,
        claim: &Claim,
        secret: String,
        token: Option<Secret>,
    ) -> Result<JobFile, Fail> {
        let cfg = &self.hub.cfg;
        let j = &claim.job;
        let bad = |what: &str, e: sdci_protocol::ProtocolError| Fail::Fatal(format!("{what}: {e}"));
        let (id, repo, sha, reason) = (j.id.clone(), j.repo.clone(), j.sha.clone(), j.reason);
        let now = crate::now_ms() / 1000;
        let file = JobFile {
            version: JOB_FILE_VERSION,
            spec: JobSpec {
                id: id.clone(),
                repo: repo.clone(),
                sha: sha.clone(),
                branch: j.branch.clone(),
                reason,
                qubes_version: j.version.clone().unwrap_or_default(),
                dev_vm: cfg.dom0.dev_vm.clone(),
                dev_dir: cfg.dom0.dev_dir.clone(),
                // The stage of each step recorded; a stage re-run gets only its stages' steps
                // (issue 18).
                steps: self
                    .staged_steps(
                        j,
                        match super::matrix::job_cell(&self.hub, &j.id) {
                            // A matrix cell's job (issue 20): its environment and scenario's steps.
                            Some((_, cell)) => super::matrix::steps_for(cfg.steps(), &cell)
                                .map_err(|message| Fail::Config {
                                    key: "[jobs] steps".into(),
                                    message,
                                })?,
                            None => cfg.steps(),
                        },
                    )
                    .map_err(|message| Fail::Config {
                        key: "[jobs] stages".into(),
                        message,
                    })?,
                deadline_unix: (now as u64) + cfg.deadlines.run_secs,
                results: cfg.jobs.results_spec(),
            },
            agent: AgentJob {
                version: JOB_FILE_VERSION,
                id,
                repo,
                sha,
                dev_dir: cfg.dom0.dev_dir.clone(),
                clone_url: j.clone_url.clone(),
                github_api: cfg.agent.github_api.clone(),
                token,
                status_context: cfg.agent.status_context.clone(),
                target_url: format!("{}/jobs/{}", cfg.public_url, j.id),
                event_url: sdci_protocol::ingest::event_url(&cfg.public_url, &j.id),
                event_secret: Secret::new(secret),
                // The host posts every terminal status from its durable outbox.
                post_final_status: false,
                // The host posts `running` itself when launch starts: the VM's token needs no
                // `statuses` permission (contracts §8).
                post_running_status: false,
            },
        };
        file.validate().map_err(|e| bad("job file", e))?;
        Ok(file)
    }

    /// The job's token in App mode, minted before any VM is booted (a refusal or an outage of
    /// the gateway costs no boot).
    async fn mint_token(&self, repo: &str) -> Result<Secret, Fail> {
        match self.hub.github.token(repo).await {
            Ok(t) => {
                self.hub.health.set_gateway(true, "");
                Ok(t)
            }
            Err(e) => match e.kind() {
                GatewayFailure::Refused => Err(Fail::Config {
                    key: "[agent] config".into(),
                    message: format!(
                        "the GitHub App did not mint a token for {repo}: check the agent's \
                         [app] settings and the App's installation ({e})"
                    ),
                }),
                GatewayFailure::Unavailable | GatewayFailure::Other => {
                    self.hub.health.set_gateway(false, &e.to_string());
                    Err(Fail::Outage(format!("minting the job's token: {e}")))
                }
            },
        }
    }

    async fn attempt(
        &self,
        claim: &Claim,
        secret: String,
        stop: &mut watch::Receiver<Option<Stop>>,
        end: &Notify,
        token_slot: &mut Option<Secret>,
    ) -> Result<(JobState, String), Fail> {
        let hub = &self.hub;
        let cfg = &hub.cfg;
        let d = &cfg.deadlines;
        // The one place the attempt's VM is decided: every guest call below goes to it.
        let (vm, id) = (claim.runs_on(), claim.job.id.as_str());
        let version = claim.job.version.clone().unwrap_or_default();
        let log_dir = cfg.log_dir();
        if let Err(e) = joblog::begin_attempt(&log_dir, id, claim.attempt) {
            tracing::warn!(error = %e, "keeping the previous attempt's log aside");
        }
        let on = claim
            .clone
            .as_ref()
            .map_or_else(|| vm.to_owned(), |c| c.describe(&claim.vm));
        let _ = append_log(
            &log_dir,
            id,
            &format!("=== attempt {} on {on}\n", claim.attempt),
        );
        // A matrix scenario's golden snapshot (`[pools.V] scenarios`, issue 20).
        let scenario = match super::matrix::job_cell(hub, id) {
            Some((_, cell)) => super::matrix::snapshot_for(cfg, &hub.store, &cell)
                .map_err(|(key, message)| Fail::Config { key, message })?,
            None => None,
        };
        let snapshot = match claim.job.snapshot.clone().or(scenario) {
            Some(s) => s,
            None => {
                let Some(pool) = cfg.pools.get(&version) else {
                    return Err(Fail::Fatal(format!("no pool for Qubes {version}")));
                };
                hub.store
                    .golden_snapshot(&version, &pool.golden_snapshot)
                    .map_err(|e| Fail::Vm(format!("store: {e}")))?
            }
        };
        let booting = match &claim.clone {
            None => format!("revert {vm} to {snapshot}"),
            Some(c) => format!("clone {} of {} to {vm}", c.snapshot, c.source),
        };
        self.advance(id, JobState::Booting, &booting)?;
        // The job's token (App mode) is minted while the VM reverts, and before it is powered
        // on: a refused or unavailable gateway costs no boot.
        let mint = async {
            match cfg.agent.github_app {
                true => self.mint_token(&claim.job.repo).await.map(Some),
                false => Ok(None),
            }
        };
        let started = Instant::now();
        // On a clone, making it takes the revert's place (and its deadline); it boots the same way.
        let prepare = async {
            match &claim.clone {
                None => self.hv.revert(vm, &snapshot).await,
                Some(c) => self.make_clone(c, id).await,
            }
        };
        let revert = vm_power::bounded(Phase::Revert, d.revert_secs, prepare);
        let (token, reverted) = tokio::select! {
            r = async { tokio::join!(mint, revert) } => r,
            s = stopped(stop) => return Err(Fail::Stop(s)),
        };
        hub.metrics
            .observe_phase(Phase::Revert.name(), started.elapsed().as_secs_f64());
        let token = token?;
        token_slot.clone_from(&token);
        reverted.map_err(|e| vm_fail(&e, cfg, &version))?;
        let metrics = &hub.metrics;
        let mut observe = |p: Phase, t: Duration| metrics.observe_phase(p.name(), t.as_secs_f64());
        tokio::select! {
            r = vm_power::boot(&*self.hv, vm, None, d, &mut observe) => {
                r.map_err(|e| vm_fail(&e, cfg, &version))?
            }
            s = stopped(stop) => return Err(Fail::Stop(s)),
        }
        if claim.job.update_first {
            // The only place a job's updates run (never as job-file steps): the Qubes updates,
            // then a reboot, before the job file exists in dom0.
            self.phase(
                "updates",
                super::updates::update_budget_secs(cfg),
                &version,
                stop,
                self.update_phase(vm, &claim.job.id),
            )
            .await?;
        }

        let file = self.job_file(claim, secret, token)?;
        let run_deadline_ms = (file.spec.deadline_unix as i64) * 1000;
        let home = sdci_protocol::paths::dom0_home(&cfg.dom0.user);
        let paths = sdci_protocol::JobPaths::in_home(&home, &claim.job.id);
        let (job_dir, job_path) = (paths.dir().to_owned(), paths.job_file());
        let data = file.to_json().into_bytes();
        self.phase("upload", d.upload_secs, &version, stop, async {
            // Real ESXi does not create parent directories on upload.
            self.hv
                .make_directory(vm, &self.auth, &job_dir, true)
                .await?;
            self.hv.upload(vm, &self.auth, &job_path, data).await
        })
        .await?;

        self.advance(id, JobState::Running, "sdci-dom0 launch")?;
        let program = GuestProgram {
            path: cfg.dom0.program.clone(),
            // A stage re-run runs its steps on the tree already in dom0 (contracts §12).
            arguments: format!(
                "{} {}",
                match hub.store.rerun_link(id) {
                    Ok(Some(_)) => "rerun",
                    _ => "launch",
                },
                claim.job.id.dom0_paths().job_file()
            ),
            env: Vec::new(),
            working_directory: Some(home),
        };
        let pid = self
            .phase(
                "start",
                d.upload_secs,
                &version,
                stop,
                self.hv.start_program(vm, &self.auth, &program),
            )
            .await?;
        // With the pid stored, a restart re-adopts this attempt instead of starting over.
        if let Err(e) = hub
            .store
            .launch_started(id, pid, run_deadline_ms, RUNNING_DESCRIPTION)
        {
            tracing::error!(error = %e, "recording the launch");
        }
        hub.statuses.notify_one();
        hub.checks.notify_one();
        tracing::info!(pid, "sdci-dom0 launch started");
        // The provisioned snapshot is taken beside the run once `provision` succeeded.
        let run = self.run_launch(&claim.job, vm, pid, run_deadline_ms, stop, end);
        self.with_provision_snapshot(&claim.job, vm, run).await
    }

    /// From a started (or re-adopted) `launch` to the verdict, the VM powered off.
    async fn run_launch(
        &self,
        job: &JobRow,
        vm: &str,
        pid: i64,
        run_deadline_ms: i64,
        stop: &mut watch::Receiver<Option<Stop>>,
        end: &Notify,
    ) -> Result<(JobState, String), Fail> {
        let id = job.id.as_str();
        let started = Instant::now();
        let code = self
            .wait_for_exit(job, vm, pid, run_deadline_ms, stop, end)
            .await;
        self.hub
            .metrics
            .observe_phase("run", started.elapsed().as_secs_f64());
        let code = match code {
            Ok(c) => c,
            Err(f) => {
                // A deadline, or a guest that stopped answering: its console shows where it hung.
                let shot =
                    match matches!(&f, Fail::Stop(s) if !s.canceled) || matches!(f, Fail::Vm(_)) {
                        true => self.take_screenshot(vm, id).await,
                        false => None,
                    };
                if matches!(f, Fail::Stop(_)) {
                    self.terminate_quietly(vm, pid).await;
                }
                self.fetch_log(vm, id).await;
                if let Some(line) = shot {
                    let _ = append_log(&self.hub.cfg.log_dir(), id, &line);
                }
                // A deadline (not a cancel): whatever results dom0 wrote are worth having.
                if matches!(&f, Fail::Stop(s) if !s.canceled) {
                    self.collect_results(vm, id).await;
                }
                return Err(f);
            }
        };
        tracing::info!(code, "sdci-dom0 launch exited");
        if let Err(e) = self.hub.store.launch_exited(id, code) {
            tracing::error!(error = %e, "recording launch's exit code");
        }
        let _ = self.advance(id, JobState::Finishing, &format!("launch exited {code}"));
        self.verdict(job, vm, code).await
    }

    /// `launch` exited `code`: dom0's log fetched, the VM powered off at once, the verdict.
    async fn verdict(&self, job: &JobRow, vm: &str, code: i32) -> Result<(JobState, String), Fail> {
        self.fetch_log(vm, &job.id).await;
        self.read_rerun_events(job, vm).await;
        self.collect_results(vm, &job.id).await;
        // A held VM (issue 18) stays on; `conclude` records the hold once the job has ended.
        let verdict_reached = matches!(code, 0 | 1);
        if !(verdict_reached && self.hold_for(job, code == 1).is_some()) {
            let started = Instant::now();
            self.power_off_quietly(vm).await;
            self.hub
                .metrics
                .observe_phase("power_off", started.elapsed().as_secs_f64());
        }
        // Only a deliberate 0 or 1 decides the project's verdict (protocol's table).
        match Outcome::from_exit_code(code) {
            Outcome::Success => Ok((JobState::Success, "all steps passed".to_owned())),
            Outcome::Failure => Ok((JobState::Failure, "a step failed".to_owned())),
            Outcome::Error => match self.hub.store.relayed_result(&job.id) {
                Ok(Some((_, reason))) if commit_missing(&reason, &job.sha) => {
                    Err(Fail::Commit(reason))
                }
                _ => Err(Fail::Vm(format!(
                    "sdci-dom0 launch exited {code} (infrastructure)"
                ))),
            },
        }
    }

    /// Creates `c`, a linked clone of the re-run's snapshot, and writes job `id`'s lease in its
    /// note (copied from the snapshot's VM, it names the origin's job; contracts §9, §12). A
    /// leftover of an earlier attempt of this job (a restart before the reconciler destroyed it)
    /// is destroyed first, unless another live instance leased it.
    async fn make_clone(&self, c: &RerunClone, id: &str) -> Result<(), VsphereError> {
        match self.hv.vm(&c.name).await {
            Ok(_) => {
                if let Some(l) = leases::read(&*self.hv, &c.name).await? {
                    if l.blocks(&self.owner, crate::now_ms()) {
                        return Err(VsphereError::Fault {
                            method: "clone_from_snapshot".into(),
                            kind: "DuplicateName".into(),
                            message: format!("{} exists, leased by {}", c.name, l.describe()),
                        });
                    }
                }
                tracing::warn!(clone = %c.name, "a leftover clone of this job: destroyed first");
                self.hv.destroy_vm(&c.name).await?;
            }
            Err(VsphereError::VmNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let started = Instant::now();
        self.hv
            .clone_from_snapshot(&c.source, &c.snapshot, &c.name)
            .await?;
        tracing::info!(clone = %c.name, source = %c.source, snapshot = %c.snapshot,
            ms = started.elapsed().as_millis() as u64, "linked clone made");
        if !leases::rewrite(&*self.hv, &self.owner, &c.name, id).await? {
            return Err(VsphereError::Fault {
                method: "set_note".into(),
                kind: "ConcurrentAccess".into(),
                message: format!("the lease on {} could not be written", c.name),
            });
        }
        Ok(())
    }

    /// The attempt on clone `c` in `slot`'s slot ended: the clone is powered off and destroyed
    /// (never held: the log says so when `hold_due`). A failure leaves it to the reconciler,
    /// which destroys clones no active job runs on.
    async fn discard_clone(&self, job: &JobRow, slot: &str, c: &RerunClone, hold_due: bool) {
        let hub = &self.hub;
        let id = job.id.as_str();
        if hold_due {
            let _ = append_log(
                &hub.cfg.log_dir(),
                id,
                &format!(
                    "=== {} is a clone: it is destroyed, never held (a re-run on the \
                     snapshot's own VM can be)\n",
                    c.name
                ),
            );
        }
        self.power_off_quietly(&c.name).await;
        let secs = hub.cfg.deadlines.shutdown_secs.max(60);
        let destroyed =
            tokio::time::timeout(Duration::from_secs(secs), self.hv.destroy_vm(&c.name)).await;
        let line = match destroyed {
            Ok(Ok(())) => {
                tracing::info!(clone = %c.name, "clone destroyed");
                format!(
                    "=== {} powered off and destroyed; {slot}'s slot is free again\n",
                    c.name
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(clone = %c.name, error = %e,
                    "destroying the clone failed; the reconciler retries");
                format!(
                    "=== destroying {} failed ({e}); the reconciler retries\n",
                    c.name
                )
            }
            Err(_) => {
                tracing::warn!(clone = %c.name,
                    "destroying the clone timed out; the reconciler retries");
                format!(
                    "=== destroying {} timed out; the reconciler retries\n",
                    c.name
                )
            }
        };
        let _ = append_log(&hub.cfg.log_dir(), id, &line);
    }

    /// The hold plan of job `job` ending (`failed`: a step failed): none for an attempt on a
    /// clone, which is destroyed at the end (contracts §12).
    fn hold_for(&self, job: &JobRow, failed: bool) -> Option<super::holds::HoldPlan> {
        match self.hub.store.attempt_clone(job.id.as_str()) {
            Ok(None) => self.hold_plan(job, failed),
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "reading the attempt's clone; not held");
                None
            }
        }
    }

    async fn terminate_quietly(&self, vm: &str, pid: i64) {
        let call = Duration::from_secs(30);
        if let Ok(Err(e)) = tokio::time::timeout(call, self.hv.terminate(vm, &self.auth, pid)).await
        {
            tracing::debug!(error = %e, "terminating launch");
        }
    }

    /// Fetches dom0's log (authoritative) into a temporary file, at most
    /// `jobs.dom0_log_max_bytes` (a marker when cut), and replaces the streamed copy if they
    /// differ.
    async fn fetch_log(&self, vm: &str, id: &str) {
        let cfg = &self.hub.cfg;
        let secs = cfg.deadlines.download_secs;
        let max = cfg.jobs.dom0_log_max_bytes;
        let dir = cfg.log_dir();
        let guest_path = sdci_protocol::JobPaths::in_home(
            &sdci_protocol::paths::dom0_home(&cfg.dom0.user),
            &match id.parse() {
                Ok(j) => j,
                Err(_) => return,
            },
        )
        .log_file();
        let started = Instant::now();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(error = %e, "cannot create the log folder");
            return;
        }
        let part = dir.join(format!(".{id}.dom0.part"));
        let got = tokio::time::timeout(
            Duration::from_secs(secs),
            self.hv.download_to(vm, &self.auth, &guest_path, &part, max),
        )
        .await;
        match got {
            Ok(Ok(d)) => {
                if d.truncated {
                    tracing::warn!(bytes = d.bytes, "dom0's log is longer than the cap; cut");
                    if let Err(e) = mark_truncated(&part, max) {
                        tracing::warn!(error = %e, "marking the cut log");
                    }
                }
                match replace_log_with_file(&dir, id, &part) {
                    Ok(replaced) => tracing::info!(replaced, bytes = d.bytes, "dom0 log fetched"),
                    Err(e) => tracing::warn!(error = %e, "saving dom0's log failed"),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "downloading dom0's log failed; keeping the streamed log")
            }
            Err(_) => tracing::warn!("downloading dom0's log timed out; keeping the streamed log"),
        }
        let _ = std::fs::remove_file(&part);
        self.hub
            .metrics
            .observe_phase("download", started.elapsed().as_secs_f64());
    }

    /// Waits until the guest process exits, the run deadline passes or a stop arrives. Woken
    /// at once by the relayed `Result` (then it looks again within milliseconds, backing off
    /// to a second); otherwise it looks every `jobs.poll_interval_ms`, backing off on errors.
    async fn wait_for_exit(
        &self,
        job: &JobRow,
        vm: &str,
        pid: i64,
        run_deadline_ms: i64,
        stop: &mut watch::Receiver<Option<Stop>>,
        end: &Notify,
    ) -> Result<i32, Fail> {
        let cfg = &self.hub.cfg;
        let id = job.id.as_str();
        let version = job.version.clone().unwrap_or_default();
        let base = Duration::from_millis(cfg.jobs.poll_interval_ms.max(10));
        let grace = DEADLINE_GRACE_SECS.min(cfg.deadlines.run_secs) as i64 * 1000;
        let left = (run_deadline_ms + grace - crate::now_ms()).max(0) as u64;
        let deadline = Instant::now() + Duration::from_millis(left);
        let mut errors = 0u32;
        let mut fast: Option<Duration> = None;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(60),
                self.hv.process_state(vm, &self.auth, pid),
            )
            .await
            {
                Ok(Ok(ProcessState::Running)) => errors = 0,
                Ok(Ok(ProcessState::Exited(code))) => return Ok(code),
                Ok(Ok(ProcessState::Lost)) => {
                    return Err(Fail::Vm(
                        "the guest no longer knows sdci-dom0 launch (rebooted?)".into(),
                    ))
                }
                Ok(Err(e)) => {
                    errors += 1;
                    if errors >= 5 || e.class() == ErrorClass::GiveUp {
                        return Err(classify("watching launch", &e, cfg, &version));
                    }
                }
                Err(_) => {
                    errors += 1;
                    if errors >= 5 {
                        return Err(Fail::Outage(
                            "watching launch: vSphere stopped answering".into(),
                        ));
                    }
                }
            }
            // A cancel from `sdci-host jobs cancel` (another process) arrives through the store.
            if let Ok(Some(j)) = self.hub.store.job(id) {
                if let Some(reason) = j.cancel_requested {
                    return Err(Fail::Stop(Stop {
                        canceled: true,
                        reason,
                    }));
                }
            }
            if Instant::now() >= deadline {
                return Err(Fail::Stop(Stop {
                    canceled: false,
                    reason: format!("the run deadline of {}s passed", cfg.deadlines.run_secs),
                }));
            }
            let wait = match fast {
                Some(f) => f,
                None if errors > 0 => (base * (1 << errors.min(4))).min(Duration::from_secs(60)),
                None => base,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))) => {
                    if let Some(f) = fast {
                        fast = Some((f * 2).min(Duration::from_secs(1)));
                    }
                }
                _ = end.notified() => fast = Some(Duration::from_millis(20)),
                s = stopped(stop) => return Err(Fail::Stop(s)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_commit_the_repository_lacks_is_the_commits_fault() {
        let sha = "a".repeat(40);
        let reason = format!(
            "fetching commit aaaaaaa failed: commit {sha} is not in https://example/o/r.git"
        );
        assert!(commit_missing(&reason, &sha));
        assert!(!commit_missing(
            "fetching commit aaaaaaa failed: `git fetch` failed (exit status: 128): Could not \
             resolve host",
            &sha
        ));
    }

    #[test]
    fn a_refused_guest_login_names_the_dom0_password_file() {
        let cfg = Config::parse("", Path::new("x")).unwrap_or_else(|e| panic!("{e}"));
        let e = VsphereError::Fault {
            method: "MakeDirectoryInGuest".into(),
            kind: "InvalidGuestLogin".into(),
            message: "bad".into(),
        };
        match classify("upload", &e, &cfg, "4.2") {
            Fail::Config { key, message } => {
                assert_eq!(key, "[dom0] password_file");
                assert!(message.contains("[dom0] password_file"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let missing = VsphereError::SnapshotNotFound {
            vm: "v".into(),
            snapshot: "golden".into(),
        };
        assert!(matches!(
            classify("revert", &missing, &cfg, "4.2"),
            Fail::Config { key, .. } if key == "[pools.\"4.2\"] golden_snapshot"
        ));
        let busy = VsphereError::Http {
            method: "m".into(),
            status: 503,
        };
        assert!(matches!(
            classify("revert", &busy, &cfg, "4.2"),
            Fail::Outage(_)
        ));
        let vm = VsphereError::Fault {
            method: "PowerOnVM_Task".into(),
            kind: "InsufficientResourcesFault".into(),
            message: String::new(),
        };
        assert!(matches!(
            classify("power_on", &vm, &cfg, "4.2"),
            Fail::Vm(_)
        ));
    }
}
