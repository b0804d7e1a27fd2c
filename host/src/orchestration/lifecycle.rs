//! One attempt of one job on one claimed VM, phase by phase:
//! revert → power on → guest operations ready → (a job with `update = true`: Qubes updates and a
//! reboot, `updates`) → make the job's folder, upload the job file → `sdci-dom0 launch`
//! → wait → download dom0's log → shut down.
//!
//! Invariants:
//! - Every phase has its own deadline (`[deadlines]`) and can be interrupted by a stop request
//!   (superseded, canceled, the reconciler's backstop).
//! - Infrastructure failures (any vSphere fault, tools never ready, a lost guest process, exit
//!   code 2 or any code but 0/1) end the attempt, never the job as `failure`: the VM is powered
//!   off and the store requeues the job on another VM, or ends it as `error` after
//!   `jobs.max_attempts`; a VM failing `jobs.quarantine_after` times in a row is quarantined.
//! - A vSphere outage (`ErrorClass::RetryLater`: 503, a dropped connection, transport errors)
//!   is nobody's fault: after a pause the job is queued again without counting the attempt or the
//!   VM's failures, until the job's overall deadline (`deadlines.queue_secs` after it was queued).
//! - Only exit codes 0 and 1 of `launch` decide `success` / `failure`.
//! - Whatever happens, the attempt ends with the VM powered off (or handed to the reconciler when
//!   vSphere refuses), the lease released, and a terminal status in the outbox when the job ended.

use super::vm_power::{self, Phase, VmError};
use super::Orchestrator;
use crate::domain::JobState;
use crate::hub::Stop;
use crate::joblog::{append_log, replace_log};
use crate::store::{AfterFailure, Claim};
use sdci_protocol::job::{AgentJob, JobFile, JobSpec, JOB_FILE_VERSION};
use sdci_protocol::{Outcome, Secret};
use sdci_vsphere::{ErrorClass, GuestProgram, Hypervisor, ProcessState, VsphereError};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Why an attempt did not reach a verdict.
#[derive(Debug)]
enum Fail {
    /// Infrastructure: retry on another VM (up to the limit).
    Infra(String),
    /// vSphere itself was unavailable (`ErrorClass::RetryLater`: 503, dropped connection,
    /// transport): retry later, without counting the attempt or blaming the VM.
    Outage(String),
    /// Asked to stop.
    Stop(Stop),
    /// The job itself cannot run (invalid data): `error`, no retry.
    Fatal(String),
}

/// A vSphere failure of a phase: an outage of vSphere itself, or an infrastructure failure.
fn vsphere_fail(what: &str, e: &VsphereError) -> Fail {
    let text = format!("{what}: {e}");
    if e.class() == ErrorClass::RetryLater {
        Fail::Outage(text)
    } else {
        Fail::Infra(text)
    }
}

/// A failed VM procedure: an outage of vSphere itself, or an infrastructure failure.
fn vm_fail(e: &VmError) -> Fail {
    if e.class() == ErrorClass::RetryLater {
        Fail::Outage(e.to_string())
    } else {
        Fail::Infra(e.to_string())
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
            let hub = &self.hub;
            let result = self.attempt(&claim, secret, &mut stop).await;
            let vm = &claim.vm;
            match result {
                Ok((state, note)) => {
                    tracing::info!(state = state.as_str(), %note, "job ended");
                    if let Err(e) = hub.store.finish(&id, state, &note, true) {
                        tracing::error!(error = %e, "recording the end of the job");
                    }
                    hub.metrics.count(&format!("jobs_{}", state.as_str()));
                }
                Err(Fail::Infra(e)) => {
                    tracing::warn!(error = %e, "infrastructure failure");
                    self.power_off_quietly(vm).await;
                    let _ = append_log(
                        &hub.cfg.log_dir(),
                        &id,
                        &format!("=== infrastructure failure on {vm}: {e}\n"),
                    );
                    let cfg = &hub.cfg.jobs;
                    match hub
                        .store
                        .infra_failure(&id, &e, cfg.max_attempts, cfg.quarantine_after)
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
                }
                Err(Fail::Outage(e)) => {
                    tracing::warn!(error = %e, "vSphere unavailable");
                    self.power_off_quietly(vm).await;
                    match self.after_outage(&claim, &e, &mut stop).await {
                        Ok(()) => hub.metrics.count("attempts_outage"),
                        Err(end) => self.end_stopped(&id, vm, end).await,
                    }
                }
                Err(Fail::Stop(s)) => self.end_stopped(&id, vm, s).await,
                Err(Fail::Fatal(e)) => {
                    tracing::error!(error = %e, "job cannot run");
                    self.power_off_quietly(vm).await;
                    let _ = hub.store.finish(&id, JobState::Error, &e, true);
                    hub.metrics.count("jobs_error");
                }
            }
            hub.unregister_live(&id);
            hub.statuses.notify_one();
            hub.scheduler.notify_one();
        }
        .instrument(span)
        .await
    }

    /// Ends a job that was asked to stop (or whose outage retries ran past its deadline).
    async fn end_stopped(&self, id: &str, vm: &str, s: Stop) {
        let hub = &self.hub;
        tracing::info!(reason = %s.reason, "job stopped");
        self.power_off_quietly(vm).await;
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

    /// After a vSphere outage cut the attempt short: waits (doubling per outage of this job, at
    /// most 5 minutes, interruptible), then queues the job again without counting the attempt
    /// and without blaming the VM. Past the job's overall deadline (`deadlines.queue_secs` after
    /// it was queued, the bound the reconciler applies to a waiting job) it gives up: `Err` with
    /// the reason to end the job with.
    async fn after_outage(
        &self,
        claim: &Claim,
        error: &str,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<(), Stop> {
        let hub = &self.hub;
        let id = claim.job.id.as_str();
        let _ = append_log(
            &hub.cfg.log_dir(),
            id,
            &format!(
                "=== vSphere unavailable during the attempt on {}: {error}\n",
                claim.vm
            ),
        );
        let outages = hub.store.outages(id).unwrap_or(0);
        let base = hub.cfg.jobs.outage_retry_ms.max(1);
        let wait_ms = base
            .saturating_mul(1u64 << outages.min(16))
            .min(300_000.max(base));
        let deadline = claim.job.created_ms + (hub.cfg.deadlines.queue_secs * 1000) as i64;
        if crate::now_ms() + wait_ms as i64 > deadline {
            return Err(Stop {
                canceled: false,
                reason: format!(
                    "vSphere stayed unavailable until the job's deadline ({}s after it was \
                     queued): {error}",
                    hub.cfg.deadlines.queue_secs
                ),
            });
        }
        tracing::info!(wait_ms, "queuing the job again after the outage");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            s = stopped(stop) => return Err(s),
        }
        if let Err(e) = hub.store.outage(id, error) {
            tracing::error!(error = %e, "recording the outage");
        }
        Ok(())
    }

    async fn power_off_quietly(&self, vm: &str) {
        vm_power::power_off_quietly(&*self.hv, vm, self.hub.cfg.deadlines.shutdown_secs).await
    }

    /// Runs one phase under its deadline, interruptible by a stop request.
    async fn phase<T>(
        &self,
        name: &str,
        secs: u64,
        stop: &mut watch::Receiver<Option<Stop>>,
        fut: impl Future<Output = Result<T, VsphereError>>,
    ) -> Result<T, Fail> {
        let started = Instant::now();
        let r = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(secs), fut) => match r {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(vsphere_fail(name, &e)),
                Err(_) => Err(Fail::Infra(format!("{name} did not finish within {secs}s"))),
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
            Err(e) => Err(Fail::Infra(format!("store: {e}"))),
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
                steps: cfg.steps(),
                deadline_unix: (now as u64) + cfg.deadlines.run_secs,
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
                // Until the host posts `running` itself at launch (then `false`).
                post_running_status: true,
            },
        };
        file.validate().map_err(|e| bad("job file", e))?;
        Ok(file)
    }

    async fn attempt(
        &self,
        claim: &Claim,
        secret: String,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<(JobState, String), Fail> {
        let hub = &self.hub;
        let cfg = &hub.cfg;
        let d = &cfg.deadlines;
        let (vm, id) = (claim.vm.as_str(), claim.job.id.as_str());
        let version = claim.job.version.clone().unwrap_or_default();
        let log_dir = cfg.log_dir();
        let _ = append_log(
            &log_dir,
            id,
            &format!("=== attempt {} on {vm}\n", claim.attempt),
        );
        let snapshot = match &claim.job.snapshot {
            Some(s) => s.clone(),
            None => {
                let Some(pool) = cfg.pools.get(&version) else {
                    return Err(Fail::Fatal(format!("no pool for Qubes {version}")));
                };
                hub.store
                    .golden_snapshot(&version, &pool.golden_snapshot)
                    .map_err(|e| Fail::Infra(format!("store: {e}")))?
            }
        };

        self.advance(id, JobState::Booting, &format!("revert {vm} to {snapshot}"))?;
        let metrics = &hub.metrics;
        let mut observe = |p: Phase, t: Duration| metrics.observe_phase(p.name(), t.as_secs_f64());
        tokio::select! {
            r = vm_power::boot(&*self.hv, vm, Some(&snapshot), d, &mut observe) => {
                r.map_err(|e| vm_fail(&e))?
            }
            s = stopped(stop) => return Err(Fail::Stop(s)),
        }
        if claim.job.update_first {
            // The only place a job's updates run (never as job-file steps): the Qubes updates,
            // then a reboot, before the job file exists in dom0.
            self.phase(
                "updates",
                super::updates::update_budget_secs(cfg),
                stop,
                self.update_phase(vm, &claim.job.id),
            )
            .await?;
        }

        let token = if cfg.agent.github_app {
            Some(
                hub.github
                    .token(&claim.job.repo)
                    .await
                    .map_err(|e| Fail::Infra(e.to_string()))?,
            )
        } else {
            None
        };
        let file = self.job_file(claim, secret, token)?;
        let home = sdci_protocol::paths::dom0_home(&cfg.dom0.user);
        let paths = sdci_protocol::JobPaths::in_home(&home, &claim.job.id);
        let (job_dir, job_path, log_path) =
            (paths.dir().to_owned(), paths.job_file(), paths.log_file());
        let data = file.to_json().into_bytes();
        self.phase("upload", d.upload_secs, stop, async {
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
            arguments: format!("launch {}", claim.job.id.dom0_paths().job_file()),
            env: Vec::new(),
            working_directory: Some(home),
        };
        let pid = self
            .phase(
                "start",
                d.upload_secs,
                stop,
                self.hv.start_program(vm, &self.auth, &program),
            )
            .await?;
        let _ = hub.store.set_pid(id, pid);
        tracing::info!(pid, "sdci-dom0 launch started");

        let started = Instant::now();
        let code = self.wait_for_exit(id, vm, pid, stop).await;
        hub.metrics
            .observe_phase("run", started.elapsed().as_secs_f64());
        let code = match code {
            Ok(c) => c,
            Err(f) => {
                if matches!(f, Fail::Stop(_)) {
                    self.terminate_quietly(vm, pid).await;
                }
                self.fetch_log(vm, &log_path, id).await;
                return Err(f);
            }
        };
        tracing::info!(code, "sdci-dom0 launch exited");

        let _ = self.advance(id, JobState::Finishing, &format!("launch exited {code}"));
        self.fetch_log(vm, &log_path, id).await;
        // Only a deliberate 0 or 1 decides the project's verdict (protocol's table).
        let verdict = match Outcome::from_exit_code(code) {
            Outcome::Success => (JobState::Success, "all steps passed".to_owned()),
            Outcome::Failure => (JobState::Failure, "a step failed".to_owned()),
            Outcome::Error => {
                return Err(Fail::Infra(format!(
                    "sdci-dom0 launch exited {code} (infrastructure)"
                )))
            }
        };
        let started = Instant::now();
        vm_power::shut_down_or_power_off(&*self.hv, vm, d).await;
        hub.metrics
            .observe_phase("shutdown", started.elapsed().as_secs_f64());
        Ok(verdict)
    }

    async fn terminate_quietly(&self, vm: &str, pid: i64) {
        let call = Duration::from_secs(30);
        if let Ok(Err(e)) = tokio::time::timeout(call, self.hv.terminate(vm, &self.auth, pid)).await
        {
            tracing::debug!(error = %e, "terminating launch");
        }
    }

    /// Fetches dom0's log (authoritative) and replaces the streamed copy if they differ.
    async fn fetch_log(&self, vm: &str, guest_path: &str, id: &str) {
        let secs = self.hub.cfg.deadlines.download_secs;
        let started = Instant::now();
        match tokio::time::timeout(
            Duration::from_secs(secs),
            self.hv.download(vm, &self.auth, guest_path),
        )
        .await
        {
            Ok(Ok(bytes)) => match replace_log(&self.hub.cfg.log_dir(), id, &bytes) {
                Ok(replaced) => tracing::info!(replaced, "dom0 log fetched"),
                Err(e) => tracing::warn!(error = %e, "saving dom0's log failed"),
            },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "downloading dom0's log failed; keeping the streamed log")
            }
            Err(_) => tracing::warn!("downloading dom0's log timed out; keeping the streamed log"),
        }
        self.hub
            .metrics
            .observe_phase("download", started.elapsed().as_secs_f64());
    }

    /// Polls the guest process until it exits, the run deadline passes or a stop arrives.
    async fn wait_for_exit(
        &self,
        id: &str,
        vm: &str,
        pid: i64,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<i32, Fail> {
        let cfg = &self.hub.cfg;
        let poll = Duration::from_millis(cfg.jobs.poll_interval_ms.max(10));
        let deadline = Instant::now() + Duration::from_secs(cfg.deadlines.run_secs);
        let mut errors = 0u32;
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
                    return Err(Fail::Infra(
                        "the guest no longer knows sdci-dom0 launch (rebooted?)".into(),
                    ))
                }
                Ok(Err(e)) => {
                    errors += 1;
                    if errors >= 5 {
                        return Err(vsphere_fail("watching launch", &e));
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
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                s = stopped(stop) => return Err(Fail::Stop(s)),
            }
        }
    }
}
