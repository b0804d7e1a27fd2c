//! The check-run outbox (contracts §10): `check_meta` (whether check runs are on, as `serve` was
//! configured), `check_runs` (one per job: GitHub's id once created, the name it was created
//! under) and `check_updates` (every phase change of a job's check run still to post); and
//! re-runs, the new jobs a "Re-run" (GitHub's button, a check run's action, a check suite's
//! re-request, `sdci-host jobs rerun`) creates.
//!
//! Invariants:
//! - An update row is written in the same transaction as the change it reports (the job stored,
//!   `launch` started, an attempt retried, the job's end), beside its commit status: no state
//!   change can lose its check-run update, and a host restart loses nothing.
//! - Only a job's newest unposted update is sent (GitHub shows the latest); older unposted ones
//!   are marked [`PostState::Skipped`]. A job without its GitHub id yet is created with the
//!   newest phase, so an update never goes out before its create (the id it needs comes from the
//!   create, stored in the same transaction that marks the create posted).
//! - A post records its intent first ([`PostState::Posting`]), then the result; a process killed
//!   mid-post posts that update again (an update repeats harmlessly; a create in flight at the
//!   kill can leave one orphan check run on GitHub, the window of one request).
//! - A failure for now waits `next_try_ms` (backoff set by the worker); permanent refusals are
//!   counted and, past the worker's limit, the row is given up (the worker alerts).
//! - Jobs get a check run only while `check_meta.enabled` is set (`serve` sets it from
//!   `[agent] check_runs` at start-up); a job stored before keeps none.

use super::jobs::{insert_job, job_from_row, new_job_id, NewJob, JOB_COLS};
use super::outbox::PostState;
use super::{exec, parsed, qrow, qrows, Store};
use crate::{now_ms, Result};
use rusqlite::{params, Connection, OptionalExtension};
use sdci_protocol::{CommitSha, JobId, RepoName};

/// The phase a check-run update moves the run to (GitHub's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPhase {
    Queued,
    InProgress,
    Completed,
}

impl CheckPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
        }
    }
}

impl std::str::FromStr for CheckPhase {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [Self::Queued, Self::InProgress, Self::Completed]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown check-run phase {s:?}"))
    }
}

/// A check-run update waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCheck {
    pub id: i64,
    pub job_id: JobId,
    pub phase: CheckPhase,
    /// The host's words for the change (`queued`, the running description, why it retries,
    /// the job's final note).
    pub note: String,
    /// When the change happened (`started_at`, `completed_at`).
    pub at_ms: i64,
    pub tries: u32,
    pub refusals: u32,
    /// GitHub's id of the job's check run; `None`: not created yet (this post creates it).
    pub run_id: Option<u64>,
}

/// One update of a job's check run, as queued (for `jobs show` and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckUpdateRow {
    pub phase: CheckPhase,
    pub note: String,
    pub posted: PostState,
    pub last_error: Option<String>,
}

/// A completion not posted after many tries: (job, tries, last error).
pub type StuckCheck = (JobId, u32, Option<String>);

/// What a re-run request became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rerun {
    /// New jobs, one per job re-run.
    Created(Vec<JobId>),
    /// This `X-GitHub-Delivery` was seen before: nothing new.
    DuplicateDelivery,
    /// No job to re-run (unknown id, or no job of that commit in that repository).
    NothingToRerun,
}

fn post_state(n: i64) -> rusqlite::Result<PostState> {
    match n {
        0 => Ok(PostState::Unposted),
        1 => Ok(PostState::Posted),
        2 => Ok(PostState::Skipped),
        3 => Ok(PostState::Posting),
        4 => Ok(PostState::GaveUp),
        other => Err(rusqlite::Error::IntegralValueOutOfRange(5, other)),
    }
}

/// Queues a check-run update for job `id` in the caller's transaction. A `queued` update of a
/// new job gives it a check run when check runs are on; every other update applies only to a
/// job that has one.
pub(super) fn enqueue_check(
    tx: &Connection,
    id: &str,
    phase: CheckPhase,
    note: &str,
    now: i64,
) -> rusqlite::Result<()> {
    if phase == CheckPhase::Queued {
        exec(
            tx,
            "INSERT INTO check_runs (job_id, created_ms) SELECT ?1, ?2 WHERE EXISTS \
             (SELECT 1 FROM check_meta WHERE key = 'enabled' AND value = 1) \
             ON CONFLICT(job_id) DO NOTHING",
            params![id, now],
        )?;
    }
    exec(
        tx,
        "INSERT INTO check_updates (job_id, phase, note, at_ms) SELECT ?1, ?2, ?3, ?4 \
         WHERE EXISTS (SELECT 1 FROM check_runs WHERE job_id = ?1)",
        params![id, phase.as_str(), note, now],
    )
    .map(drop)
}

/// Creates a job like `source` (same repository, commit, branch, version, snapshot), never
/// deduplicated, its first transition noting what it re-runs and who asked.
fn rerun_one(
    tx: &Connection,
    source: &super::JobRow,
    why: &str,
    now: i64,
) -> rusqlite::Result<JobId> {
    let job = NewJob::again(source);
    let id = new_job_id(tx, &job.sha)?;
    insert_job(tx, &id, &job, now)?;
    super::cells::copy_cell(tx, source.id.as_str(), id.as_str(), "rerun")?;
    let note = format!("re-run of {} ({why})", source.id);
    exec(
        tx,
        "UPDATE transitions SET note = ?1 WHERE job_id = ?2",
        params![note, id.as_str()],
    )?;
    Ok(id)
}

/// Whether delivery `d` (if any) was stored before.
pub(super) fn delivery_seen(tx: &Connection, delivery: Option<&str>) -> rusqlite::Result<bool> {
    let Some(d) = delivery else {
        return Ok(false);
    };
    let seen: Option<i64> = qrow(
        tx,
        "SELECT 1 FROM deliveries WHERE delivery_id = ?1",
        params![d],
        |r| r.get(0),
    )
    .optional()?;
    Ok(seen.is_some())
}

/// Records delivery `d` (if any) with the job it created (the first of a suite's).
pub(super) fn record_delivery(
    tx: &Connection,
    delivery: Option<&str>,
    event: &str,
    job: Option<&JobId>,
    now: i64,
) -> rusqlite::Result<()> {
    if let Some(d) = delivery {
        exec(
            tx,
            "INSERT INTO deliveries (delivery_id, event, received_ms, job_id) \
             VALUES (?1, ?2, ?3, ?4)",
            params![d, event, now, job.map(JobId::as_str)],
        )?;
    }
    Ok(())
}

impl Store {
    /// Turns check runs on or off for the jobs stored from now on (`serve`, at start-up).
    pub fn set_check_runs(&self, enabled: bool) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO check_meta (key, value) VALUES ('enabled', ?1) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![enabled],
            )
            .map(drop)
        })
    }

    /// A process starts its check-run outbox: updates a dead process was posting are in doubt
    /// and are posted again.
    pub fn check_outbox_begin(&self) -> Result<usize> {
        self.with(|c| {
            exec(
                c,
                "UPDATE check_updates SET posted = ?1 WHERE posted = ?2",
                params![PostState::Unposted as i64, PostState::Posting as i64],
            )
        })
    }

    /// Updates to post now (`next_try_ms` reached), oldest first; only each job's newest
    /// unposted update (older ones are marked skipped), and none of a job whose post is under
    /// way (an update waits for the create that gives it its id).
    pub fn unposted_checks(&self, now: i64) -> Result<Vec<PendingCheck>> {
        self.tx(|tx| {
            exec(
                tx,
                "UPDATE check_updates SET posted = 2 WHERE posted = 0 AND id < \
                 (SELECT MAX(u2.id) FROM check_updates u2 WHERE u2.job_id = check_updates.job_id)",
                [],
            )?;
            qrows(
                tx,
                "SELECT u.id, u.job_id, u.phase, u.note, u.at_ms, u.tries, u.refusals, c.run_id \
                 FROM check_updates u JOIN check_runs c ON c.job_id = u.job_id \
                 WHERE u.posted = 0 AND u.next_try_ms <= ?1 AND NOT EXISTS (SELECT 1 FROM \
                 check_updates p WHERE p.job_id = u.job_id AND p.posted = 3) ORDER BY u.id",
                params![now],
                |r| {
                    Ok(PendingCheck {
                        id: r.get(0)?,
                        job_id: parsed(r, 1)?,
                        phase: parsed(r, 2)?,
                        note: r.get(3)?,
                        at_ms: r.get(4)?,
                        tries: r.get(5)?,
                        refusals: r.get(6)?,
                        run_id: r.get::<_, Option<i64>>(7)?.map(|n| n as u64),
                    })
                },
            )
        })
    }

    /// When the next unposted update that waits out a backoff past `now` is due (`None`: none
    /// waits).
    pub fn next_check_due_ms(&self, now: i64) -> Result<Option<i64>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT MIN(next_try_ms) FROM check_updates WHERE posted = 0 AND next_try_ms > ?1",
                params![now],
                |r| r.get(0),
            )
        })
    }

    /// Records the intent to post update `id`. `false` if it is no longer unposted.
    pub fn check_posting(&self, id: i64) -> Result<bool> {
        self.with(|c| {
            exec(
                c,
                "UPDATE check_updates SET posted = 3, tries = tries + 1 WHERE id = ?1 AND posted = 0",
                params![id],
            )
            .map(|n| n == 1)
        })
    }

    /// Update `id` is on GitHub; a create stores the check run's id and name in the same
    /// transaction.
    pub fn check_posted(&self, id: i64, created: Option<(u64, &str)>) -> Result<()> {
        self.tx(|tx| {
            exec(
                tx,
                "UPDATE check_updates SET posted = 1, last_error = NULL WHERE id = ?1",
                params![id],
            )?;
            if let Some((run_id, name)) = created {
                exec(
                    tx,
                    "UPDATE check_runs SET run_id = ?1, name = ?2 WHERE job_id = \
                     (SELECT job_id FROM check_updates WHERE id = ?3)",
                    params![run_id as i64, name, id],
                )?;
            }
            Ok(())
        })
    }

    /// A post failed for now or was put off: unposted again, not before `next_try_ms`.
    pub fn check_failed(&self, id: i64, error: &str, next_try_ms: i64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE check_updates SET posted = 0, last_error = ?1, next_try_ms = ?2 \
                 WHERE id = ?3",
                params![error, next_try_ms, id],
            )
            .map(drop)
        })
    }

    /// A post that never reached GitHub (waiting for the job's version): unposted again, not
    /// counted as a try.
    pub fn check_deferred(&self, id: i64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE check_updates SET posted = 0, tries = MAX(tries - 1, 0) WHERE id = ?1",
                params![id],
            )
            .map(drop)
        })
    }

    /// A post was refused for good: counted, unposted again after `next_try_ms`; returns the
    /// refusals so far.
    pub fn check_refused(&self, id: i64, error: &str, next_try_ms: i64) -> Result<u32> {
        self.tx(|tx| {
            exec(
                tx,
                "UPDATE check_updates SET posted = 0, refusals = refusals + 1, last_error = ?1, \
                 next_try_ms = ?2 WHERE id = ?3",
                params![error, next_try_ms, id],
            )?;
            qrow(
                tx,
                "SELECT refusals FROM check_updates WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
        })
    }

    /// Gives a refused update up (the caller alerts).
    pub fn check_gave_up(&self, id: i64, error: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE check_updates SET posted = 4, last_error = ?1 WHERE id = ?2",
                params![error, id],
            )
            .map(drop)
        })
    }

    /// GitHub's id of job `id`'s check run: `None` without a check run, `Some(None)` while it
    /// is not created yet.
    pub fn check_run_id(&self, id: &str) -> Result<Option<Option<u64>>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT run_id FROM check_runs WHERE job_id = ?1",
                params![id],
                |r| Ok(r.get::<_, Option<i64>>(0)?.map(|n| n as u64)),
            )
            .optional()
        })
    }

    /// Every update of a job's check run, oldest first.
    pub fn check_updates(&self, id: &str) -> Result<Vec<CheckUpdateRow>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT phase, note, posted, last_error FROM check_updates WHERE job_id = ?1 \
                 ORDER BY id",
                params![id],
                |r| {
                    Ok(CheckUpdateRow {
                        phase: parsed(r, 0)?,
                        note: r.get(1)?,
                        posted: post_state(r.get(2)?)?,
                        last_error: r.get(3)?,
                    })
                },
            )
        })
    }

    /// The reconciler's check: every terminal job (updated since `since_ms`) with a check run
    /// whose newest update is not its completion gets the completion queued (returned), so no
    /// check run stays queued or in progress after its job ended; and completions still
    /// unposted after `min_tries` posts are listed (job, tries, last error) for an alert.
    pub fn unfinished_checks(
        &self,
        since_ms: i64,
        min_tries: u32,
    ) -> Result<(Vec<JobId>, Vec<StuckCheck>)> {
        self.tx(|tx| {
            let now = now_ms();
            let lost: Vec<(JobId, String, Option<String>)> = qrows(
                tx,
                "SELECT j.id, j.state, j.note FROM jobs j JOIN check_runs c ON c.job_id = j.id \
                 WHERE j.state IN ('success','failure','error','canceled') AND j.updated_ms >= ?1 \
                 AND COALESCE((SELECT u.phase FROM check_updates u WHERE u.job_id = j.id \
                 ORDER BY u.id DESC LIMIT 1), '') != 'completed'",
                params![since_ms],
                |r| Ok((parsed(r, 0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut queued = Vec::new();
            for (id, state, note) in lost {
                let note = note.unwrap_or(state);
                enqueue_check(tx, &id, CheckPhase::Completed, &note, now)?;
                queued.push(id);
            }
            let stuck = qrows(
                tx,
                "SELECT u.job_id, u.tries, u.last_error FROM check_updates u JOIN jobs j \
                 ON j.id = u.job_id WHERE j.state IN ('success','failure','error','canceled') \
                 AND j.updated_ms >= ?1 AND u.posted IN (0, 3) AND u.tries >= ?2 \
                 AND u.phase = 'completed'",
                params![since_ms, min_tries],
                |r| Ok((parsed(r, 0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok((queued, stuck))
        })
    }

    /// Re-runs job `source`: a new job for the same repository, commit, branch and version
    /// (with its own check run when they are on), recorded with `delivery` (a redelivery
    /// creates nothing). `why` says who asked.
    pub fn rerun_job(
        &self,
        delivery: Option<&str>,
        event: &str,
        source: &str,
        why: &str,
    ) -> Result<Rerun> {
        self.tx(|tx| {
            let now = now_ms();
            let Some(src) = super::jobs::job_in(tx, source)? else {
                return Ok(Rerun::NothingToRerun);
            };
            if delivery_seen(tx, delivery)? {
                return Ok(Rerun::DuplicateDelivery);
            }
            let id = rerun_one(tx, &src, why, now)?;
            record_delivery(tx, delivery, event, Some(&id), now)?;
            Ok(Rerun::Created(vec![id]))
        })
    }

    /// Re-runs a commit's check suite: for each Qubes version the commit's jobs in `repo` ran
    /// (or were to run) under, its newest job is re-run as [`Store::rerun_job`] does.
    pub fn rerun_commit(
        &self,
        delivery: Option<&str>,
        event: &str,
        repo: &RepoName,
        sha: &CommitSha,
        why: &str,
    ) -> Result<Rerun> {
        self.tx(|tx| {
            let now = now_ms();
            let jobs = qrows(
                tx,
                &format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE repo = ?1 AND sha = ?2 ORDER BY seq DESC"
                ),
                params![repo.as_str(), sha.as_str()],
                job_from_row,
            )?;
            if jobs.is_empty() {
                return Ok(Rerun::NothingToRerun);
            }
            if delivery_seen(tx, delivery)? {
                return Ok(Rerun::DuplicateDelivery);
            }
            let mut versions = std::collections::HashSet::new();
            let mut out = Vec::new();
            for j in &jobs {
                // One per version, and per matrix cell (issue 20).
                let cell = super::cells::cell_name(tx, j.id.as_str())?;
                if versions.insert((j.version.clone(), cell)) {
                    out.push(rerun_one(tx, j, why, now)?);
                }
            }
            record_delivery(tx, delivery, event, out.first(), now)?;
            Ok(Rerun::Created(out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_job as job, test_store as open};
    use super::*;
    use crate::domain::JobState;

    fn phases(s: &Store, id: &str) -> Vec<(CheckPhase, PostState)> {
        s.check_updates(id)
            .unwrap()
            .into_iter()
            .map(|u| (u.phase, u.posted))
            .collect()
    }

    #[test]
    fn jobs_get_a_check_run_only_while_check_runs_are_on() {
        let (_d, s) = open();
        let before = s.insert_job(&job('a', "x")).unwrap();
        s.set_check_runs(true).unwrap();
        let during = s.insert_job(&job('b', "y")).unwrap();
        s.finish(&before, JobState::Success, "ok", false).unwrap();
        assert_eq!(s.check_run_id(&before).unwrap(), None);
        assert!(s.check_updates(&before).unwrap().is_empty());
        assert_eq!(s.check_run_id(&during).unwrap(), Some(None));
        assert_eq!(
            phases(&s, &during),
            [(CheckPhase::Queued, PostState::Unposted)]
        );
    }

    #[test]
    fn the_create_carries_the_newest_phase_and_later_updates_use_its_id() {
        let (_d, s) = open();
        s.set_check_runs(true).unwrap();
        let id = s.insert_job(&job('a', "x")).unwrap();
        s.finish(&id, JobState::Canceled, "superseded by bbb", false)
            .unwrap();
        // Never created yet: the queued update is skipped, the completion creates the run.
        let p = s.unposted_checks(now_ms()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].phase, p[0].run_id), (CheckPhase::Completed, None));
        assert_eq!(
            phases(&s, &id),
            [
                (CheckPhase::Queued, PostState::Skipped),
                (CheckPhase::Completed, PostState::Unposted)
            ]
        );
        assert!(s.check_posting(p[0].id).unwrap());
        s.check_posted(p[0].id, Some((77, "sdci / Qubes 4.2")))
            .unwrap();
        assert_eq!(s.check_run_id(&id).unwrap(), Some(Some(77)));
        assert!(s.unposted_checks(now_ms()).unwrap().is_empty());
    }

    #[test]
    fn an_update_queued_while_the_create_is_in_flight_waits_for_its_id() {
        let (_d, s) = open();
        s.set_check_runs(true).unwrap();
        let id = s.insert_job(&job('a', "x")).unwrap();
        let create = s.unposted_checks(now_ms()).unwrap().remove(0);
        assert!(s.check_posting(create.id).unwrap());
        s.with(|c| enqueue_check(c, &id, CheckPhase::InProgress, "running", now_ms()))
            .unwrap();
        assert!(
            s.unposted_checks(now_ms()).unwrap().is_empty(),
            "no second create while the first is under way"
        );
        s.check_posted(create.id, Some((5, "n"))).unwrap();
        let next = s.unposted_checks(now_ms()).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].phase, next[0].run_id),
            (CheckPhase::InProgress, Some(5))
        );
    }

    #[test]
    fn a_post_in_doubt_after_a_crash_is_posted_again_and_a_backoff_is_waited_out() {
        let (_d, s) = open();
        s.set_check_runs(true).unwrap();
        let _id = s.insert_job(&job('a', "x")).unwrap();
        let p = s.unposted_checks(now_ms()).unwrap().remove(0);
        assert!(s.check_posting(p.id).unwrap());
        assert!(s.unposted_checks(now_ms()).unwrap().is_empty());
        assert_eq!(s.check_outbox_begin().unwrap(), 1);
        let again = s.unposted_checks(now_ms()).unwrap();
        assert_eq!((again.len(), again[0].tries), (1, 1));
        assert!(s.check_posting(again[0].id).unwrap());
        let later = now_ms() + 60_000;
        s.check_failed(again[0].id, "GitHub unreachable", later)
            .unwrap();
        assert!(s.unposted_checks(now_ms()).unwrap().is_empty());
        assert_eq!(s.next_check_due_ms(now_ms()).unwrap(), Some(later));
        assert_eq!(s.unposted_checks(later).unwrap().len(), 1);
    }

    #[test]
    fn an_ended_job_whose_completion_went_missing_gets_it_queued_again() {
        let (_d, s) = open();
        s.set_check_runs(true).unwrap();
        let id = s.insert_job(&job('a', "x")).unwrap();
        s.finish(&id, JobState::Failure, "a step failed", false)
            .unwrap();
        s.with(|c| c.execute("DELETE FROM check_updates WHERE phase = 'completed'", []))
            .unwrap();
        let (queued, stuck) = s.unfinished_checks(0, 3).unwrap();
        assert_eq!(queued, std::slice::from_ref(&id));
        assert!(stuck.is_empty());
        assert_eq!(
            phases(&s, &id).last(),
            Some(&(CheckPhase::Completed, PostState::Unposted))
        );
        // Posted three times without success: listed for an alert.
        for _ in 0..3 {
            let p = s.unposted_checks(i64::MAX).unwrap().remove(0);
            s.check_posting(p.id).unwrap();
            s.check_failed(p.id, "down", 0).unwrap();
        }
        let (queued, stuck) = s.unfinished_checks(0, 3).unwrap();
        assert!(queued.is_empty());
        assert_eq!(stuck, [(id, 3, Some("down".into()))]);
    }

    #[test]
    fn a_rerun_is_a_new_job_of_the_same_commit_and_version_and_a_redelivery_adds_none() {
        let (_d, s) = open();
        s.set_check_runs(true).unwrap();
        let first = s.insert_job(&job('a', "x")).unwrap();
        s.finish(&first, JobState::Error, "infrastructure", false)
            .unwrap();
        let Rerun::Created(new) = s
            .rerun_job(Some("d-1"), "check_run", &first, "by maint")
            .unwrap()
        else {
            panic!("no job created");
        };
        let j = s.job(&new[0]).unwrap().unwrap();
        let src = s.job(&first).unwrap().unwrap();
        assert_ne!(j.id, src.id);
        assert_eq!(
            (&j.repo, &j.sha, &j.branch, &j.version, j.state),
            (
                &src.repo,
                &src.sha,
                &src.branch,
                &src.version,
                JobState::Queued
            )
        );
        assert_eq!(
            s.check_run_id(&j.id).unwrap(),
            Some(None),
            "its own check run"
        );
        let note = s.transitions(&j.id).unwrap()[0].3.clone().unwrap();
        assert!(
            note.contains(first.as_str()) && note.contains("by maint"),
            "{note}"
        );
        assert_eq!(
            s.rerun_job(Some("d-1"), "check_run", &first, "by maint")
                .unwrap(),
            Rerun::DuplicateDelivery
        );
        assert_eq!(
            s.rerun_job(None, "cli", "aaaaaaa-0000000000", "x").unwrap(),
            Rerun::NothingToRerun
        );
    }

    #[test]
    fn a_suite_rerun_runs_the_newest_job_of_each_version_of_the_commit() {
        let (_d, s) = open();
        let mut a = job('a', "x");
        let first = s.insert_job(&a).unwrap();
        let again = s.insert_job(&a).unwrap();
        a.version = Some("4.3".into());
        let other = s.insert_job(&a).unwrap();
        let _elsewhere = s.insert_job(&job('b', "x")).unwrap();
        let Rerun::Created(new) = s
            .rerun_commit(None, "check_suite", &a.repo, &a.sha, "by maint")
            .unwrap()
        else {
            panic!("nothing re-run");
        };
        let mut sources: Vec<String> = new
            .iter()
            .map(|id| s.transitions(id).unwrap()[0].3.clone().unwrap())
            .collect();
        sources.sort();
        assert_eq!(new.len(), 2, "{sources:?}");
        assert!(sources.iter().any(|n| n.contains(again.as_str())));
        assert!(sources.iter().any(|n| n.contains(other.as_str())));
        assert!(!sources.iter().any(|n| n.contains(first.as_str())));
    }
}
