//! The Slack outbox worker: one message per terminal job (for the outcomes configured). The
//! host knows a job's outcome even when its VM died, so it is the one that announces.
//!
//! Jobs end in several places and processes (the lifecycle, the reconciler, `sdci-host jobs
//! cancel`, superseding pushes), so notifications are an outbox read from the store: the worker
//! ([`Notifier::run`]) records jobs that became terminal since the notifier was first enabled on
//! this database and have no outbox row yet, and sends. It looks every `notify.sweep_ms` and
//! whenever [`Notifier::wake`] is called; no hook in the job code is needed for a message to go
//! out, and a restart loses none.
//!
//! Invariants:
//! - One message per terminal job: the outbox row is claimed before the POST and marked sent
//!   only after a 2xx answer (`store::outbox`). A process that dies mid-POST leaves the row
//!   claimed; the next notifier sends it again (a crash can repeat a message, never lose one).
//! - A failing webhook is retried `notify.attempts` times with doubling backoff, then logged and
//!   given up. Nothing here ever changes a job's state or outcome.

use crate::config::Config;
use crate::domain::{CommitInfo, JobState};
use crate::gateway::slack::{self, JobNotice};
use crate::store::{JobRow, NotifyCounts, NotifyState, Store};
use crate::{now_ms, HostError, Result};
use sdci_protocol::Secret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The notification worker of a `serve` process.
pub struct Notifier {
    cfg: Config,
    url: Secret,
    store: Arc<Store>,
    wake: Notify,
}

impl Notifier {
    /// `None` when notifications are disabled (no `notify.slack_webhook_file`).
    pub fn from_config(cfg: &Config, store: Arc<Store>) -> Result<Option<Arc<Self>>> {
        cfg.notify.validate().map_err(|message| HostError::Config {
            path: "[notify]".into(),
            message,
        })?;
        let Some(url) = slack::webhook_url(&cfg.notify)? else {
            return Ok(None);
        };
        store.notify_begin(now_ms())?;
        Ok(Some(Arc::new(Self {
            cfg: cfg.clone(),
            url,
            store,
            wake: Notify::new(),
        })))
    }

    /// Asks the worker to look at the store now (e.g. right after a job ended).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Looks for ended jobs and sends their messages, forever.
    pub async fn run(self: Arc<Self>) {
        let every = Duration::from_millis(self.cfg.notify.sweep_ms.max(10));
        loop {
            if let Err(e) = self.sweep().await {
                tracing::error!(error = %e, "notification outbox");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Records newly ended jobs in the outbox and sends every pending message. Returns how many
    /// were sent.
    pub async fn sweep(&self) -> Result<usize> {
        let pending = self
            .store
            .notify_collect(&self.cfg.notify.wanted(), now_ms())?;
        let mut sent = 0;
        for id in pending {
            // Claim the row: two sweeps never send the same message.
            if !self.store.notify_claim(&id)? {
                continue;
            }
            let Some(job) = self.store.job(&id)? else {
                self.store
                    .notify_done(&id, NotifyState::GaveUp, 0, Some("job gone"))?;
                continue;
            };
            let notice = self.notice(&job)?;
            match slack::post(&self.cfg.notify, &self.url, &slack::job_message(&notice)).await {
                Ok(()) => {
                    self.store.notify_done(&id, NotifyState::Sent, 1, None)?;
                    tracing::info!(job = %id, outcome = %notice.outcome, "Slack notified");
                    sent += 1;
                }
                Err(e) => {
                    tracing::error!(job = %id, error = %e,
                        "giving up the Slack notification; the job's outcome is unaffected");
                    self.store.notify_done(
                        &id,
                        NotifyState::GaveUp,
                        self.cfg.notify.attempts,
                        Some(&e),
                    )?;
                }
            }
        }
        Ok(sent)
    }

    /// What the message about `job` says.
    pub fn notice(&self, job: &JobRow) -> Result<JobNotice> {
        let commit = CommitInfo {
            author: job.commit_author.clone(),
            subject: job.commit_subject.clone(),
        };
        let transitions = self.store.transitions(&job.id)?;
        let start = transitions
            .iter()
            .find(|t| t.2 == JobState::Assigned.as_str())
            .map(|t| t.0)
            .unwrap_or(job.created_ms);
        let end = transitions
            .iter()
            .rev()
            .find(|t| JobState::parse(&t.2).is_some_and(JobState::is_terminal))
            .map(|t| t.0)
            .unwrap_or(job.updated_ms);
        Ok(JobNotice {
            outcome: job.state.as_str().to_owned(),
            reason: job.reason.as_str().to_owned(),
            repo: job.repo.to_string(),
            sha: job.sha.to_string(),
            branch: job.branch.clone(),
            commit,
            duration: Some(Duration::from_millis((end - start).max(0) as u64)),
            note: job.note.clone(),
            log_url: format!("{}/jobs/{}", self.cfg.public_url, job.id),
        })
    }

    /// (sent, skipped, gave up) counts, for metrics and tests.
    pub fn counts(&self) -> Result<(i64, i64, i64)> {
        let NotifyCounts {
            sent,
            skipped,
            gave_up,
        } = self.store.notify_counts()?;
        Ok((sent, skipped, gave_up))
    }
}
