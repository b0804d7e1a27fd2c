//! The two outboxes: `statuses` (commit statuses the host still has to post through the GitHub
//! gateway) and `notify_meta`/`notify_outbox` (Slack messages still to send).
//!
//! Invariants:
//! - A status row is written in the same transaction as the change it reports (queued, retry,
//!   the job's end), so no state change can lose its status; only a job's newest unposted status
//!   is sent (GitHub shows the latest), older ones are marked [`PostState::Skipped`].
//! - A Slack row (primary key = job id) is claimed ([`NotifyState::Sending`]) before the POST and
//!   marked sent only after a 2xx answer: a crash can repeat a message, never lose one.

use super::{exec, parsed, qrow, qrows, Store};
use crate::domain::JobState;
use crate::Result;
use rusqlite::{params, Connection};
use sdci_protocol::{CommitSha, JobId, RepoName, StatusState};

/// Where a status row is (`statuses.posted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostState {
    Unposted = 0,
    Posted = 1,
    /// A newer status of the same job was queued before this one was posted.
    Skipped = 2,
}

impl PostState {
    fn from_i64(n: i64) -> rusqlite::Result<Self> {
        match n {
            0 => Ok(Self::Unposted),
            1 => Ok(Self::Posted),
            2 => Ok(Self::Skipped),
            other => Err(rusqlite::Error::IntegralValueOutOfRange(2, other)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unposted => "unposted",
            Self::Posted => "posted",
            Self::Skipped => "skipped",
        }
    }
}

/// A status waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStatus {
    pub id: i64,
    pub job_id: JobId,
    pub repo: RepoName,
    pub sha: CommitSha,
    pub state: StatusState,
    pub description: String,
}

/// One status of a job, as queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub state: StatusState,
    pub description: String,
    pub posted: PostState,
}

/// Where a Slack message is (`notify_outbox.sent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyState {
    Pending = 0,
    Sent = 1,
    /// The job's outcome is not among `notify.outcomes`.
    Skipped = 2,
    GaveUp = 3,
    /// Claimed by a sweep that is sending it (reset to pending when a notifier starts).
    Sending = 4,
}

/// Slack outbox totals, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotifyCounts {
    pub sent: i64,
    pub skipped: i64,
    pub gave_up: i64,
}

fn status_state(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<StatusState> {
    parsed(r, idx)
}

/// Queues a status for `id` in the caller's transaction. GitHub caps descriptions at 140
/// characters: longer ones are cut and end with `…`.
pub(super) fn enqueue_status(
    tx: &Connection,
    id: &str,
    state: StatusState,
    description: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let mut d: String = description.chars().take(139).collect();
    if d.len() < description.len() {
        d.push('…');
    }
    exec(
        tx,
        "INSERT INTO statuses (job_id, state, description, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![id, state.as_str(), d, now],
    )
    .map(drop)
}

impl Store {
    /// Statuses still to post, oldest first; for each job only the newest is returned (GitHub
    /// shows the latest status, so an older unposted one is marked skipped rather than sent late).
    pub fn unposted_statuses(&self) -> Result<Vec<PendingStatus>> {
        self.tx(|tx| {
            exec(
                tx,
                "UPDATE statuses SET posted = 2 WHERE posted = 0 AND id < \
                 (SELECT MAX(s2.id) FROM statuses s2 WHERE s2.job_id = statuses.job_id)",
                [],
            )?;
            qrows(
                tx,
                "SELECT s.id, s.job_id, j.repo, j.sha, s.state, s.description FROM statuses s \
                 JOIN jobs j ON j.id = s.job_id WHERE s.posted = 0 ORDER BY s.id",
                [],
                |r| {
                    Ok(PendingStatus {
                        id: r.get(0)?,
                        job_id: parsed(r, 1)?,
                        repo: parsed(r, 2)?,
                        sha: parsed(r, 3)?,
                        state: status_state(r, 4)?,
                        description: r.get(5)?,
                    })
                },
            )
        })
    }

    pub fn status_posted(&self, status_id: i64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET posted = 1, tries = tries + 1 WHERE id = ?1",
                params![status_id],
            )
            .map(drop)
        })
    }

    pub fn status_failed(&self, status_id: i64, error: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET tries = tries + 1, last_error = ?1 WHERE id = ?2",
                params![error, status_id],
            )
            .map(drop)
        })
    }

    /// Every status of a job, oldest first.
    pub fn statuses(&self, id: &str) -> Result<Vec<StatusRow>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT state, description, posted FROM statuses WHERE job_id = ?1 ORDER BY id",
                params![id],
                |r| {
                    Ok(StatusRow {
                        state: status_state(r, 0)?,
                        description: r.get(1)?,
                        posted: PostState::from_i64(r.get(2)?)?,
                    })
                },
            )
        })
    }

    /// Starts the Slack outbox of a notifier: notifications cover the jobs that end from the
    /// first time they are enabled on this database, and a message being sent when a previous
    /// process died goes out again.
    pub fn notify_begin(&self, now_ms: i64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO notify_meta (key, value) VALUES ('since', ?1) \
                 ON CONFLICT(key) DO NOTHING",
                params![now_ms],
            )?;
            exec(
                c,
                "UPDATE notify_outbox SET sent = ?1 WHERE sent = ?2",
                params![NotifyState::Pending as i64, NotifyState::Sending as i64],
            )
            .map(drop)
        })
    }

    /// Records every job that became terminal since notifications began and has no outbox row
    /// yet: pending when its state is in `wanted`, skipped otherwise. Returns the pending job ids,
    /// oldest first.
    pub fn notify_collect(&self, wanted: &[JobState], now_ms: i64) -> Result<Vec<JobId>> {
        let wanted: Vec<&str> = wanted
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        // Four fixed placeholders: every terminal state is either wanted or not.
        let slot = |i: usize| wanted.get(i).copied().unwrap_or("");
        self.with(|c| {
            exec(
                c,
                "INSERT INTO notify_outbox (job_id, state, created_ms, sent) \
                 SELECT id, state, ?1, CASE WHEN state IN (?2, ?3, ?4, ?5) THEN ?6 ELSE ?7 END \
                 FROM jobs WHERE state IN ('success','failure','error','canceled') \
                 AND updated_ms >= (SELECT value FROM notify_meta WHERE key = 'since') \
                 AND id NOT IN (SELECT job_id FROM notify_outbox)",
                params![
                    now_ms,
                    slot(0),
                    slot(1),
                    slot(2),
                    slot(3),
                    NotifyState::Pending as i64,
                    NotifyState::Skipped as i64
                ],
            )?;
            qrows(
                c,
                "SELECT job_id FROM notify_outbox WHERE sent = ?1 ORDER BY created_ms",
                params![NotifyState::Pending as i64],
                |r| parsed(r, 0),
            )
        })
    }

    /// Claims a pending message for sending: `false` if another sweep took it.
    pub fn notify_claim(&self, job_id: &str) -> Result<bool> {
        self.with(|c| {
            exec(
                c,
                "UPDATE notify_outbox SET sent = ?1 WHERE job_id = ?2 AND sent = ?3",
                params![
                    NotifyState::Sending as i64,
                    job_id,
                    NotifyState::Pending as i64
                ],
            )
            .map(|n| n == 1)
        })
    }

    /// Records how a claimed message ended: sent, or given up after `tries` with `error`.
    pub fn notify_done(
        &self,
        job_id: &str,
        state: NotifyState,
        tries: u32,
        error: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE notify_outbox SET sent = ?1, tries = tries + ?2, \
                 last_error = COALESCE(?3, last_error) WHERE job_id = ?4",
                params![state as i64, tries, error, job_id],
            )
            .map(drop)
        })
    }

    pub fn notify_counts(&self) -> Result<NotifyCounts> {
        self.with(|c| {
            qrow(
                c,
                "SELECT COALESCE(SUM(sent = ?1), 0), COALESCE(SUM(sent = ?2), 0), \
                 COALESCE(SUM(sent = ?3), 0) FROM notify_outbox",
                params![
                    NotifyState::Sent as i64,
                    NotifyState::Skipped as i64,
                    NotifyState::GaveUp as i64
                ],
                |r| {
                    Ok(NotifyCounts {
                        sent: r.get(0)?,
                        skipped: r.get(1)?,
                        gave_up: r.get(2)?,
                    })
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_job as job, test_store as open};
    use super::*;

    #[test]
    fn only_the_newest_unposted_status_of_a_job_is_sent() {
        let (_d, s) = open();
        let id = s.insert_job(&job('a', "x")).unwrap();
        s.finish(&id, JobState::Canceled, "stop", false).unwrap();
        let pending = s.unposted_statuses().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].state, StatusState::Error);
    }
}
