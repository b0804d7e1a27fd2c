//! Stages in an attempt (issue 18): which steps a job runs and their stages, the provisioned
//! snapshot taken while the job goes on, a stage re-run's steps read back from dom0, and the
//! retention of provisioned snapshots (run by the reconciler).
//!
//! **Why a memory snapshot of the running VM.** When `provision` ends, dom0 has every SDW qube
//! installed *and running*; the job must go straight on with `test`. A quiesced or powered-off
//! snapshot would stop the job (a guest shutdown of Qubes takes minutes, and the job's
//! processes would die with it), and a re-run from it would boot Qubes and start every qube
//! again (minutes more). A memory snapshot (vSphere `CreateSnapshot_Task` with `memory = true`,
//! `quiesce = false`) stuns the VM for about a second per few GiB of dirty memory while the
//! guest keeps its processes, so the running `sdci-dom0 launch` and its steps are not disturbed;
//! a revert to it comes back powered on, where provision ended, in seconds. The costs, handled:
//! the VM's clock is that of the snapshot (VMware Tools' one-off sync on restore,
//! `time.synchronize.restore`, on by default, re-syncs dom0; the re-run's steps come from the
//! test stage, which in SDW starts by stopping `sd-workstation` qubes), and the origin job's
//! processes resume with it, which `sdci-dom0 rerun` ends first (contracts §12). The snapshot
//! also holds the memory file on the datastore (the disk cost `sdci-host vms` and `/metrics`
//! report, when the hypervisor tells it).
//!
//! How the host learns that provision ended: the events it already ingests (contracts §1) —
//! the `step_finished` of the stage's last step with status 0 is a row in `step_timings`, and
//! the ingest wakes the job's log watchers ([`crate::joblog::LiveLogs`]) right after.
//!
//! Invariants:
//! - At most one provisioned snapshot per attempt, only after the last `provision` step
//!   succeeded, never for a stage re-run; a failure to take it is a line in the job's log and a
//!   warning, never the job's outcome.
//! - A re-run on a linked clone (contracts §12) keeps the clone's lease renewed while its job
//!   lives; the reconciler destroys every `sdci-clone-*` VM no active job of this store runs on
//!   (listing the VMs before reading the store, and deciding under `vm_decisions` as claims
//!   do, so a clone being made is never taken for an orphan), unless another live instance
//!   leased it.
//! - The retention removes only snapshots named with `domain::stages::SNAPSHOT_PREFIX` (so
//!   never a golden or rotation snapshot), through `sdci_hypervisor::snapshots::to_prune` with
//!   every kept snapshot protected, and never one a live re-run uses.

use super::{leases, Orchestrator};
use crate::domain::stages;
use crate::joblog::append_log;
use crate::store::{JobRow, RerunClone, StageSnapshot};
use sdci_protocol::job::Step;
use sdci_protocol::{Event, EventKind};
use sdci_vsphere::Hypervisor;
use std::future::Future;
use std::time::{Duration, Instant};

/// The check run's "Re-run tests" button (`requested_action` identifier, contracts §10).
pub const RERUN_TESTS_ACTION: &str = "rerun-tests";
/// The running check run's "Hold VM" button: keep the VM on when the job ends (4 h).
pub const HOLD_ACTION: &str = "hold-vm";

/// The events file `sdci-dom0 rerun` writes next to `log.txt` (contracts §12).
pub const RERUN_EVENTS: &str = "events.ndjson";
/// The most of it the host reads.
const RERUN_EVENTS_MAX: u64 = 16 * 1024 * 1024;

impl<H: Hypervisor> Orchestrator<H> {
    /// The steps job `job` runs, given the job's whole step list: all of them, or for a stage
    /// re-run those from its stage on. Records the stage of each step it runs.
    pub(super) fn staged_steps(&self, job: &JobRow, steps: Vec<Step>) -> Result<Vec<Step>, String> {
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        let jobs = &self.hub.cfg.jobs;
        let of = match stages::assign(&names, &jobs.stages()) {
            Ok(of) => of,
            // Steps the stages do not fit (a matrix scenario's): checked at load for the
            // configured steps, so here one `test` stage, nothing to snapshot.
            Err(_) if jobs.stages.is_none() || !names.contains(&"make-dev") => {
                vec![stages::TEST.to_owned(); names.len()]
            }
            Err(e) => return Err(e),
        };
        let link = self
            .hub
            .store
            .rerun_link(job.id.as_str())
            .map_err(|e| format!("store: {e}"))?;
        let range = match &link {
            Some(l) => stages::steps_from(&of, &l.from_stage)?,
            None => 0..steps.len(),
        };
        let rows: Vec<(String, String)> = range
            .clone()
            .map(|i| (steps[i].name.clone(), of[i].clone()))
            .collect();
        if let Err(e) = self.hub.store.set_job_stages(job.id.as_str(), &rows) {
            tracing::warn!(error = %e, "recording the job's stages");
        }
        Ok(steps[range].to_vec())
    }

    /// Runs `run` (the attempt from `launch` on) and, beside it, takes the provisioned snapshot
    /// the moment the `provision` stage has succeeded (not for a stage re-run).
    pub(super) async fn with_provision_snapshot<T>(
        &self,
        job: &JobRow,
        vm: &str,
        run: impl Future<Output = T>,
    ) -> T {
        let id = job.id.as_str();
        let of: Vec<String> = self
            .hub
            .store
            .job_stages(id)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, _, s)| s)
            .collect();
        let rerun = matches!(self.hub.store.rerun_link(id), Ok(Some(_)));
        let Some(end) = stages::provision_end(&of).filter(|_| !rerun) else {
            return run.await;
        };
        let watch = self.snapshot_when_provisioned(job, vm, end as u32);
        tokio::pin!(run);
        tokio::pin!(watch);
        let mut watching = true;
        loop {
            tokio::select! {
                r = &mut run => return r,
                () = &mut watch, if watching => watching = false,
            }
        }
    }

    async fn snapshot_when_provisioned(&self, job: &JobRow, vm: &str, last: u32) {
        let hub = &self.hub;
        let id = job.id.as_str();
        let mut woken = hub.logs.subscribe(id);
        loop {
            match hub.store.step_timings(id) {
                Ok(t) => match t.iter().find(|s| s.0 == last).and_then(|s| s.3) {
                    Some(0) => break,
                    Some(_) => return,
                    None => {}
                },
                Err(e) => tracing::warn!(error = %e, "reading the steps"),
            }
            if woken.changed().await.is_err() {
                return;
            }
        }
        let name = stages::snapshot_name(id);
        let description = format!(
            "sdci: job {id} ({}@{}) after its provision stage; removed by the retention",
            job.repo,
            job.sha.short()
        );
        let started = Instant::now();
        let secs = self.hub.cfg.deadlines.revert_secs.max(600);
        let took = tokio::time::timeout(
            Duration::from_secs(secs),
            self.hv.create_memory_snapshot(vm, &name, &description),
        )
        .await;
        let log_dir = hub.cfg.log_dir();
        match took {
            Ok(Ok(())) => {
                let elapsed = started.elapsed();
                hub.metrics
                    .observe_phase("stage_snapshot", elapsed.as_secs_f64());
                let bytes = match self.hv.snapshot_bytes(vm, &name).await {
                    Ok(b) => b.map(|b| b as i64),
                    Err(e) => {
                        tracing::debug!(error = %e, "the snapshot's size is not known");
                        None
                    }
                };
                let snap = StageSnapshot {
                    job_id: id.to_owned(),
                    vm: vm.to_owned(),
                    version: job.version.clone().unwrap_or_default(),
                    branch: job.branch.clone(),
                    name: name.clone(),
                    created_ms: crate::now_ms(),
                    bytes,
                };
                if let Err(e) = hub.store.record_stage_snapshot(&snap) {
                    tracing::error!(error = %e, "recording the provisioned snapshot");
                }
                tracing::info!(snapshot = %name, ms = elapsed.as_millis() as u64, "provisioned snapshot taken");
                let _ = append_log(
                    &log_dir,
                    id,
                    &format!(
                        "=== provisioned snapshot {name} of {vm} taken in {:.1} s (memory); \
                         `sdci-host jobs rerun {id} --from test` starts from it\n",
                        elapsed.as_secs_f64()
                    ),
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the provisioned snapshot failed; the job goes on");
                let _ = append_log(
                    &log_dir,
                    id,
                    &format!("=== the provisioned snapshot failed ({e}); the job goes on\n"),
                );
            }
            Err(_) => {
                tracing::warn!(secs, "the provisioned snapshot timed out; the job goes on");
                let _ = append_log(
                    &log_dir,
                    id,
                    &format!("=== the provisioned snapshot did not finish in {secs} s\n"),
                );
            }
        }
    }

    /// Right after dom0's log was fetched. A stage re-run: its events (`events.ndjson`, written
    /// by dom0 because no agent relays them) become the job's step rows and relayed result.
    /// Another job: the provisioned snapshot's line in the host's copy of the log.
    pub(super) async fn read_rerun_events(&self, job: &JobRow, vm: &str) {
        let hub = &self.hub;
        let id = job.id.as_str();
        if !matches!(hub.store.rerun_link(id), Ok(Some(_))) {
            // dom0's log just replaced the streamed one: the snapshot's line goes back on.
            if let Ok(Some(s)) = hub.store.stage_snapshot(id) {
                let _ = append_log(
                    &hub.cfg.log_dir(),
                    id,
                    &format!(
                        "=== provisioned snapshot {} of {} kept; `sdci-host jobs rerun {id}                          --from test` starts from it\n",
                        s.name, s.vm
                    ),
                );
            }
            return;
        }
        let cfg = &hub.cfg;
        let paths = sdci_protocol::JobPaths::in_home(
            &sdci_protocol::paths::dom0_home(&cfg.dom0.user),
            &job.id,
        );
        let guest = format!("{}/{RERUN_EVENTS}", paths.dir());
        let dir = cfg.log_dir();
        let part = dir.join(format!(".{id}.events.part"));
        let got = tokio::time::timeout(
            Duration::from_secs(cfg.deadlines.download_secs),
            self.hv
                .download_to(vm, &self.auth, &guest, &part, RERUN_EVENTS_MAX),
        )
        .await;
        let text = match got {
            Ok(Ok(_)) => std::fs::read(&part).unwrap_or_default(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "downloading the re-run's events failed");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let _ = std::fs::remove_file(&part);
        let attempt = hub
            .store
            .job(id)
            .ok()
            .flatten()
            .map_or(1, |j| j.attempts.max(1));
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(ev) = Event::from_line(line) else {
                tracing::warn!("an unreadable line in the re-run's events; the rest is skipped");
                break;
            };
            let r = match &ev.kind {
                EventKind::StepStarted { step, name, .. } => hub.store.record_step(
                    id,
                    attempt,
                    *step,
                    name,
                    Some(ev.ts_ms as i64),
                    None,
                    None,
                    None,
                ),
                EventKind::StepFinished {
                    step,
                    status,
                    timed_out,
                    duration_ms,
                } => hub.store.record_step(
                    id,
                    attempt,
                    *step,
                    "",
                    None,
                    Some(*duration_ms as i64),
                    Some(*status),
                    Some(*timed_out),
                ),
                EventKind::Result { outcome, reason } => hub
                    .store
                    .record_live_result(id, attempt, outcome.as_str(), reason)
                    .map(drop),
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "recording a re-run's step");
            }
        }
    }

    /// Renews the lease in the note of every clone a live job of this process runs on (the
    /// slot's VM is renewed with the other VMs).
    pub(super) async fn renew_clone_leases(&self) {
        let hub = &self.hub;
        for (job, clone) in hub.store.live_clones().unwrap_or_default() {
            if !hub.is_live(&job) {
                continue;
            }
            match leases::renew(&*self.hv, &self.owner, &clone, &job).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(%clone, %job, "the clone's lease names someone else"),
                // Not made yet, or being destroyed: nothing to renew.
                Err(e) => tracing::debug!(%clone, error = %e, "renewing the clone's lease"),
            }
        }
    }

    /// Destroys every `sdci-clone-*` VM no active job of this store runs on (a host that died
    /// mid-attempt, a destroy that failed), unless another live instance leased it.
    pub async fn destroy_orphan_clones(&self) {
        let hub = &self.hub;
        if !self.hv.can_clone(RerunClone::PREFIX) {
            return;
        }
        // Listed first: a clone exists only after the claim that names it is in the store.
        let clones = match self.hv.list_vms(RerunClone::PREFIX).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing clones");
                return;
            }
        };
        for vm in clones {
            let _g = hub.vm_decisions.lock().await;
            let live = match hub.store.live_clones() {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the live clones");
                    return;
                }
            };
            if live.iter().any(|(_, c)| *c == vm.name) {
                continue;
            }
            match leases::read(&*self.hv, &vm.name).await {
                Ok(Some(l)) if l.blocks(&self.owner, crate::now_ms()) => {
                    tracing::debug!(clone = %vm.name, lease = %l.describe(), "another instance's clone");
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(clone = %vm.name, error = %e, "cannot read the clone's lease; left this tick");
                    continue;
                }
            }
            tracing::warn!(clone = %vm.name, "a clone no active job runs on: destroying it");
            let secs = hub.cfg.deadlines.shutdown_secs.max(60);
            match tokio::time::timeout(Duration::from_secs(secs), self.hv.destroy_vm(&vm.name))
                .await
            {
                Ok(Ok(())) => tracing::info!(clone = %vm.name, "orphan clone destroyed"),
                Ok(Err(e)) => {
                    tracing::warn!(clone = %vm.name, error = %e, "destroying an orphan clone; next tick")
                }
                Err(_) => tracing::warn!(clone = %vm.name, "destroying an orphan clone timed out"),
            }
        }
    }

    /// The retention of provisioned snapshots, per pool (`stage_snapshots_max`,
    /// `stage_snapshots_max_age_hours`): what `to_prune` removes on each VM, every kept one
    /// protected. Run by the reconciler; VMs another instance leased are left alone.
    pub async fn prune_stage_snapshots(&self) {
        let hub = &self.hub;
        let now = crate::now_ms();
        for (version, pool) in &hub.cfg.pools {
            let age = (pool.stage_snapshots_max_age_hours as i64).saturating_mul(3_600_000);
            let (keep, remove) =
                match hub
                    .store
                    .stage_snapshots_to_keep(version, pool.stage_snapshots_max, age, now)
                {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the stage snapshots");
                        continue;
                    }
                };
            let protected: Vec<String> = keep.iter().map(|s| s.name.clone()).collect();
            let mut vms: Vec<&str> = remove.iter().map(|s| s.vm.as_str()).collect();
            vms.sort_unstable();
            vms.dedup();
            for vm in vms {
                if self.is_foreign(vm) {
                    continue;
                }
                let tree = match self.hv.snapshots(vm).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(%vm, error = %e, "listing snapshots for the retention");
                        continue;
                    }
                };
                let doomed: Vec<&StageSnapshot> = remove.iter().filter(|s| s.vm == vm).collect();
                // Only ours: a stage snapshot this store does not list (another instance's)
                // is protected too.
                let mut guard = protected.clone();
                for s in &tree {
                    if s.name.starts_with(stages::SNAPSHOT_PREFIX)
                        && !doomed.iter().any(|d| d.name == s.name)
                    {
                        guard.push(s.name.clone());
                    }
                }
                let mut gone: Vec<String> = Vec::new();
                for s in
                    sdci_hypervisor::snapshots::to_prune(&tree, stages::SNAPSHOT_PREFIX, 0, &guard)
                {
                    match self.hv.remove_snapshot(vm, &s.name).await {
                        Ok(()) => {
                            tracing::info!(%vm, snapshot = %s.name, "stage snapshot removed");
                            gone.push(s.name);
                        }
                        Err(e) => {
                            tracing::warn!(%vm, snapshot = %s.name, error = %e, "removing a stage snapshot")
                        }
                    }
                }
                for d in doomed {
                    // Removed now, or already gone from the VM: no re-run can use it.
                    if gone.contains(&d.name) || !tree.iter().any(|s| s.name == d.name) {
                        if let Err(e) = hub.store.stage_snapshot_removed(&d.job_id) {
                            tracing::warn!(error = %e, "recording a removed stage snapshot");
                        }
                    }
                }
            }
        }
    }
}

/// What the check run and the job page show of a job's stages (issue 18).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StagesReport {
    /// The stage of each step of the job's file, by step index.
    pub of_steps: Vec<String>,
    /// The job's provisioned snapshot exists (a "Re-run tests" can start from it).
    pub snapshot: bool,
    /// A stage re-run: (origin job, stage it started from).
    pub origin: Option<(String, String)>,
    /// The stage re-runs started from this job's snapshot.
    pub reruns: Vec<String>,
    /// Its VM, held after the job for debugging (`orchestration::holds`).
    pub hold: Option<crate::store::Hold>,
    /// Its current attempt runs on a linked clone (contracts §12): the clone, described with the
    /// snapshot, its VM and the slot it took.
    pub on_clone: Option<String>,
}

impl StagesReport {
    /// `None` when the job has no recorded stages (it ran before stages, or never started).
    pub fn read(store: &crate::store::Store, id: &str) -> crate::Result<Option<Self>> {
        let of_steps: Vec<String> = store
            .job_stages(id)?
            .into_iter()
            .map(|(_, _, s)| s)
            .collect();
        let origin = store.rerun_link(id)?.map(|l| (l.origin, l.from_stage));
        let hold = store.hold_of_job(id)?;
        if of_steps.is_empty() && origin.is_none() && hold.is_none() {
            return Ok(None);
        }
        let slot = store.job(id)?.and_then(|j| j.vm).unwrap_or_default();
        let on_clone = store.attempt_clone(id)?.map(|c| c.describe(&slot));
        let snap_of = origin.as_ref().map_or(id, |(o, _)| o.as_str());
        Ok(Some(Self {
            of_steps,
            snapshot: store.stage_snapshot(snap_of)?.is_some(),
            origin,
            reruns: store.reruns_of(id)?,
            hold,
            on_clone,
        }))
    }

    /// The stage of step `step` (from 0).
    pub fn stage_of(&self, step: u32) -> Option<&str> {
        self.of_steps.get(step as usize).map(String::as_str)
    }

    /// One Markdown line with the links both ways, if any.
    pub fn links_line(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some((o, from)) = &self.origin {
            parts.push(format!(
                "Re-run of job `{o}` from stage **{from}**, on its provisioned snapshot."
            ));
        }
        if let Some(c) = &self.on_clone {
            parts.push(format!("Runs on {c}."));
        }
        if !self.reruns.is_empty() {
            let list: Vec<String> = self.reruns.iter().map(|r| format!("`{r}`")).collect();
            parts.push(format!("Re-runs from its snapshot: {}.", list.join(", ")));
        }
        (!parts.is_empty()).then(|| format!("{}\n\n", parts.join(" ")))
    }
}
