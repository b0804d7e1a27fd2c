//! The two outboxes: `statuses` (commit statuses the host still has to post through the GitHub
//! gateway) and `notify_meta`/`notify_outbox` (Slack messages still to send).
//!
//! Invariants:
//! - A status row is written in the same transaction as the change it reports (queued, retry,
//!   the job's end), so no state change can lose its status; only a job's newest unposted status
//!   is sent (GitHub shows the latest), older ones are marked [`PostState::Skipped`].
//! - A post records its intent first ([`PostState::Posting`]), then the result: a process that
//!   dies mid-post leaves the row in doubt, and the next process posts it once more (the same
//!   status again changes nothing on GitHub; the gateway's child dies with the host, so only a
//!   request already in flight can be repeated). A row is never posted twice otherwise.
//! - Permanent refusals are counted (`refusals`); past the limit the row is posted with the
//!   host's own description (`fallback`), and refused again it is [`PostState::GaveUp`] (the
//!   caller alerts): no status is retried forever in silence.
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
    /// A post is under way (its intent recorded); after a crash, in doubt: posted again.
    Posting = 3,
    /// Refused for good, also with the host's own description: given up and alerted.
    GaveUp = 4,
}

impl PostState {
    fn from_i64(n: i64) -> rusqlite::Result<Self> {
        match n {
            0 => Ok(Self::Unposted),
            1 => Ok(Self::Posted),
            2 => Ok(Self::Skipped),
            3 => Ok(Self::Posting),
            4 => Ok(Self::GaveUp),
            other => Err(rusqlite::Error::IntegralValueOutOfRange(2, other)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unposted => "unposted",
            Self::Posted => "posted",
            Self::Skipped => "skipped",
            Self::Posting => "posting",
            Self::GaveUp => "gave-up",
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
    /// Posts tried so far.
    pub tries: u32,
    /// Permanent refusals so far (with the current description).
    pub refusals: u32,
    /// The description is already the host's own fallback.
    pub fallback: bool,
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

/// Queues a status for `id` in the caller's transaction. Control characters become spaces, and
/// GitHub caps descriptions at 140 characters: longer ones are cut and end with `…`.
pub(super) fn enqueue_status(
    tx: &Connection,
    id: &str,
    state: StatusState,
    description: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let clean: String = description
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let description = clean.trim();
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
    /// A process starts its outbox: rows a dead process was posting are in doubt and are
    /// posted again (see the module doc).
    pub fn status_outbox_begin(&self) -> Result<usize> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET posted = ?1 WHERE posted = ?2",
                params![PostState::Unposted as i64, PostState::Posting as i64],
            )
        })
    }

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
                "SELECT s.id, s.job_id, j.repo, j.sha, s.state, s.description, s.tries, \
                 s.refusals, s.fallback FROM statuses s \
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
                        tries: r.get(6)?,
                        refusals: r.get(7)?,
                        fallback: r.get(8)?,
                    })
                },
            )
        })
    }

    /// Records the intent to post row `status_id` (before the gateway is called). `false` if
    /// the row is no longer unposted (a newer status superseded it meanwhile).
    pub fn status_posting(&self, status_id: i64) -> Result<bool> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET posted = 3, tries = tries + 1 WHERE id = ?1 AND posted = 0",
                params![status_id],
            )
            .map(|n| n == 1)
        })
    }

    pub fn status_posted(&self, status_id: i64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET posted = 1 WHERE id = ?1",
                params![status_id],
            )
            .map(drop)
        })
    }

    /// A post failed for now (GitHub or the gateway unavailable): unposted again, retried.
    pub fn status_failed(&self, status_id: i64, error: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET posted = 0, last_error = ?1 WHERE id = ?2",
                params![error, status_id],
            )
            .map(drop)
        })
    }

    /// A post was refused for good (usage or configuration): counted; returns the refusals so
    /// far. The row is unposted again (the caller decides on a fallback or giving up).
    pub fn status_refused(&self, status_id: i64, error: &str) -> Result<u32> {
        self.tx(|tx| {
            exec(
                tx,
                "UPDATE statuses SET posted = 0, refusals = refusals + 1, last_error = ?1 \
                 WHERE id = ?2",
                params![error, status_id],
            )?;
            qrow(
                tx,
                "SELECT refusals FROM statuses WHERE id = ?1",
                params![status_id],
                |r| r.get(0),
            )
        })
    }

    /// Replaces the description of a refused row with the host's own (`fallback`), to be
    /// posted again.
    pub fn status_fallback(&self, status_id: i64, description: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET description = ?1, fallback = 1, refusals = 0, posted = 0 \
                 WHERE id = ?2",
                params![description, status_id],
            )
            .map(drop)
        })
    }

    /// Commit statuses are off (`[agent] commit_statuses = false` beside check runs): every
    /// unposted status is marked skipped, none is sent. Returns how many.
    pub fn skip_unposted_statuses(&self) -> Result<usize> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET posted = ?1 WHERE posted = ?2",
                params![PostState::Skipped as i64, PostState::Unposted as i64],
            )
        })
    }

    /// Gives a refused row up (the caller alerts).
    pub fn status_gave_up(&self, status_id: i64, error: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET posted = 4, last_error = ?1 WHERE id = ?2",
                params![error, status_id],
            )
            .map(drop)
        })
    }

    /// The invariant "no terminal job whose final status is neither posted nor alerted", for
    /// the reconciler: terminal jobs (updated since `since_ms`) whose newest status is not the
    /// terminal one (it was lost: queued again here, and listed) and those whose final status
    /// is still unposted after `min_tries` posts (listed: the caller alerts). Returns
    /// (job, tries, last error).
    pub fn final_status_check(
        &self,
        since_ms: i64,
        min_tries: u32,
    ) -> Result<Vec<(JobId, u32, Option<String>)>> {
        self.tx(|tx| {
            let now = crate::now_ms();
            let lost: Vec<(JobId, JobState, Option<String>)> = qrows(
                tx,
                "SELECT j.id, j.state, j.note FROM jobs j WHERE \
                 j.state IN ('success','failure','error','canceled') AND j.updated_ms >= ?1 \
                 AND COALESCE((SELECT s.state FROM statuses s WHERE s.job_id = j.id \
                 ORDER BY s.id DESC LIMIT 1), 'pending') = 'pending'",
                params![since_ms],
                |r| Ok((parsed(r, 0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut out = Vec::new();
            for (id, state, note) in lost {
                let text = note.unwrap_or_else(|| state.as_str().to_owned());
                enqueue_status(tx, &id, state.status_state(), &text, now)?;
                out.push((
                    id,
                    0,
                    Some("the final status was missing: queued again".into()),
                ));
            }
            let stuck: Vec<(JobId, u32, Option<String>)> = qrows(
                tx,
                "SELECT s.job_id, s.tries, s.last_error FROM statuses s JOIN jobs j \
                 ON j.id = s.job_id WHERE j.state IN ('success','failure','error','canceled') \
                 AND j.updated_ms >= ?1 AND s.posted IN (0, 3) AND s.tries >= ?2 \
                 AND s.id = (SELECT MAX(s2.id) FROM statuses s2 WHERE s2.job_id = s.job_id)",
                params![since_ms, min_tries],
                |r| Ok((parsed(r, 0)?, r.get(1)?, r.get(2)?)),
            )?;
            out.extend(stuck);
            Ok(out)
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
    fn a_terminal_job_without_its_final_status_gets_it_back_and_a_stuck_one_is_listed() {
        let (_d, s) = open();
        let lost = s.insert_job(&job('a', "x")).unwrap();
        s.finish(&lost, JobState::Failure, "a step failed", false)
            .unwrap();
        s.with(|c| c.execute("DELETE FROM statuses WHERE state = 'failure'", []))
            .unwrap();
        let stuck = s.insert_job(&job('b', "y")).unwrap();
        s.finish(&stuck, JobState::Success, "ok", false).unwrap();
        for p in s.unposted_statuses().unwrap() {
            for _ in 0..3 {
                s.status_posting(p.id).unwrap();
                s.status_failed(p.id, "GitHub unreachable").unwrap();
            }
        }
        let found = s.final_status_check(0, 3).unwrap();
        assert!(
            found
                .iter()
                .any(|(id, tries, _)| *id == lost && *tries == 0),
            "{found:?}"
        );
        assert!(found.iter().any(|(id, tries, e)| *id == stuck
            && *tries >= 3
            && e.as_deref() == Some("GitHub unreachable")));
        // The lost one is queued again, terminal.
        let st = s.statuses(&lost).unwrap();
        assert_eq!(st.last().unwrap().state, StatusState::Failure);
        assert_eq!(st.last().unwrap().posted, PostState::Unposted);
    }

    #[test]
    fn a_post_in_doubt_after_a_crash_is_posted_again_once() {
        let (_d, s) = open();
        let id = s.insert_job(&job('a', "x")).unwrap();
        let p = s.unposted_statuses().unwrap().remove(0);
        assert!(s.status_posting(p.id).unwrap());
        assert!(!s.status_posting(p.id).unwrap(), "one post at a time");
        assert!(s.unposted_statuses().unwrap().is_empty());
        // The next process starts its outbox: the row in doubt is unposted again.
        assert_eq!(s.status_outbox_begin().unwrap(), 1);
        let again = s.unposted_statuses().unwrap();
        assert_eq!((again.len(), again[0].tries), (1, 1));
        s.status_posted(again[0].id).unwrap();
        assert_eq!(s.statuses(&id).unwrap()[0].posted, PostState::Posted);
    }

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
