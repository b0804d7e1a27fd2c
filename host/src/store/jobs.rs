//! Jobs and their history: the `jobs` and `transitions` tables. Creating a job (with its
//! `pending` "queued" status), reading rows, advancing an active job, requeuing, canceling and
//! finishing — the one place that decides what a job's terminal state, note and final status
//! description are.
//!
//! Invariants: a terminal job is never changed again (a second `finish` is a no-op), and its
//! event secret is gone in the same transaction that ends it (as is an abandoned attempt's, when
//! the job is queued again); every state change writes a `transitions` row in the same
//! transaction; the final status's description is
//! the reason the last attempt's `Result` event gave when that result says the same state (never
//! for `canceled`), else the host's note, cut to GitHub's 140 characters.

use super::attempts::AttemptEnd;
use super::checks::{enqueue_check, CheckPhase};
use super::outbox::enqueue_status;
use super::{exec, parsed, qrow, qrows, Store};
use crate::domain::{CommitInfo, JobState};
use crate::{now_ms, HostError, Result};
use rusqlite::{params, Connection, OptionalExtension};
use sdci_protocol::{CommitSha, JobId, Reason, RepoName, StatusState};

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub seq: i64,
    pub id: JobId,
    pub repo: RepoName,
    pub sha: CommitSha,
    pub reason: Reason,
    pub branch: Option<String>,
    pub supersede_key: Option<String>,
    pub clone_url: String,
    pub version: Option<String>,
    pub snapshot: Option<String>,
    pub update_first: bool,
    pub state: JobState,
    pub note: Option<String>,
    pub attempts: u32,
    pub vm: Option<String>,
    pub pid: Option<i64>,
    pub event_next_seq: u64,
    pub cancel_requested: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub deadline_ms: Option<i64>,
    /// Who wrote the commit (push) or opened the pull request, when the webhook said.
    pub commit_author: Option<String>,
    /// The first line of the commit message (push) or the pull request's title.
    pub commit_subject: Option<String>,
}

pub(super) const JOB_COLS: &str =
    "seq, id, repo, sha, reason, branch, supersede_key, clone_url, version, \
    snapshot, update_first, state, note, attempts, vm, pid, event_next_seq, cancel_requested, \
    created_ms, updated_ms, deadline_ms, commit_author, commit_subject";

pub(super) fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        seq: r.get(0)?,
        id: parsed(r, 1)?,
        repo: parsed(r, 2)?,
        sha: parsed(r, 3)?,
        reason: parsed(r, 4)?,
        branch: r.get(5)?,
        supersede_key: r.get(6)?,
        clone_url: r.get(7)?,
        version: r.get(8)?,
        snapshot: r.get(9)?,
        update_first: r.get(10)?,
        state: r.get(11)?,
        note: r.get(12)?,
        attempts: r.get(13)?,
        vm: r.get(14)?,
        pid: r.get(15)?,
        event_next_seq: r.get::<_, i64>(16)? as u64,
        cancel_requested: r.get(17)?,
        created_ms: r.get(18)?,
        updated_ms: r.get(19)?,
        deadline_ms: r.get(20)?,
        commit_author: r.get(21)?,
        commit_subject: r.get(22)?,
    })
}

/// A state change: (at_ms, from, to, note).
pub type Transition = (i64, Option<String>, String, Option<String>);

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub repo: RepoName,
    pub sha: CommitSha,
    pub reason: Reason,
    pub branch: Option<String>,
    /// Jobs sharing this key supersede each other (`owner/repo@branch`, `owner/repo#pr`).
    pub supersede_key: Option<String>,
    pub clone_url: String,
    /// Known up front (manual jobs); `None` means "ask `ci-config`".
    pub version: Option<String>,
    pub snapshot: Option<String>,
    pub update_first: bool,
    /// The commit's author and subject from the webhook payload (for notifications).
    pub commit_author: Option<String>,
    pub commit_subject: Option<String>,
}

impl NewJob {
    /// The same work as job `src` again (a re-run: repository, commit, branch, version, the
    /// snapshot and the updates it asked for, its commit's author and subject).
    pub fn again(src: &JobRow) -> Self {
        Self {
            repo: src.repo.clone(),
            sha: src.sha.clone(),
            reason: src.reason,
            branch: src.branch.clone(),
            supersede_key: src.supersede_key.clone(),
            clone_url: src.clone_url.clone(),
            version: src.version.clone(),
            snapshot: src.snapshot.clone(),
            update_first: src.update_first,
            commit_author: src.commit_author.clone(),
            commit_subject: src.commit_subject.clone(),
        }
    }
}

/// Job `id`'s row, inside a transaction.
pub(super) fn job_in(tx: &Connection, id: &str) -> rusqlite::Result<Option<JobRow>> {
    qrow(
        tx,
        &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
        params![id],
        job_from_row,
    )
    .optional()
}

impl Store {
    /// Creates a job without a delivery (manual `run`, nightly). Never deduplicated.
    pub fn insert_job(&self, job: &NewJob) -> Result<JobId> {
        self.tx(|tx| {
            let job_id = new_job_id(tx, &job.sha)?;
            insert_job(tx, &job_id, job, now_ms())?;
            Ok(job_id)
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>> {
        self.with(|c| job_in(c, id))
    }

    /// The most recent jobs, newest first.
    pub fn recent_jobs(&self, limit: u32) -> Result<Vec<JobRow>> {
        self.with(|c| {
            qrows(
                c,
                &format!("SELECT {JOB_COLS} FROM jobs ORDER BY seq DESC LIMIT ?1"),
                params![limit],
                job_from_row,
            )
        })
    }

    pub fn jobs_in_states(&self, states: &[JobState]) -> Result<Vec<JobRow>> {
        let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        self.with(|c| {
            qrows(
                c,
                &format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE state IN ({}) ORDER BY seq",
                    list.join(",")
                ),
                [],
                job_from_row,
            )
        })
    }

    pub fn count_jobs(&self) -> Result<i64> {
        self.with(|c| qrow(c, "SELECT COUNT(*) FROM jobs", [], |r| r.get(0)))
    }

    /// Jobs per state, for metrics.
    pub fn state_counts(&self) -> Result<Vec<(String, i64)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT state, COUNT(*) FROM jobs GROUP BY state",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// Queued jobs per version (`None`: version not yet known), for metrics.
    pub fn queue_depths(&self) -> Result<Vec<(Option<String>, i64)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT version, COUNT(*) FROM jobs WHERE state = 'queued' GROUP BY version",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// Queued jobs whose Qubes version is not known yet, oldest first.
    pub fn jobs_without_version(&self) -> Result<Vec<JobRow>> {
        self.with(|c| {
            qrows(
                c,
                &format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE state = 'queued' AND version IS NULL \
                     ORDER BY seq"
                ),
                [],
                job_from_row,
            )
        })
    }

    pub fn set_version(&self, id: &str, version: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE jobs SET version = ?1, updated_ms = ?2 WHERE id = ?3",
                params![version, now_ms(), id],
            )
            .map(drop)
        })
    }

    /// The transitions of a job, oldest first: (at_ms, from, to, note).
    pub fn transitions(&self, id: &str) -> Result<Vec<Transition>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT at_ms, from_state, to_state, note FROM transitions WHERE job_id = ?1 \
                 ORDER BY id",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })
    }

    /// Moves an active job to another active state (booting, running, finishing).
    /// `false` if the job is no longer in an active state (ended meanwhile).
    pub fn advance(&self, id: &str, to: JobState, note: Option<&str>) -> Result<bool> {
        self.tx(|tx| {
            let from: Option<JobState> = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(from) = from else { return Ok(false) };
            if !from.is_active() {
                return Ok(false);
            }
            let now = now_ms();
            exec(
                tx,
                "UPDATE jobs SET state = ?1, updated_ms = ?2 WHERE id = ?3",
                params![to.as_str(), now, id],
            )?;
            transition(tx, id, Some(from.as_str()), to.as_str(), note, now)?;
            Ok(true)
        })
    }

    pub fn set_pid(&self, id: &str, pid: i64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE jobs SET pid = ?1 WHERE id = ?2",
                params![pid, id],
            )
            .map(drop)
        })
    }

    /// Ends a job: terminal state, VM lease released, final status queued. A job that is already
    /// terminal is left alone (`false`). `vm_ok` resets the VM's failure count.
    ///
    /// The final status's description is the reason of the `Result` event the job's last attempt
    /// relayed (e.g. `step "make-test" failed with exit status 2`, `refused by policy: …`) when
    /// that result says the same state (success, failure or error; never for `canceled`), else
    /// `note`. GitHub's 140-character cap is applied.
    pub fn finish(&self, id: &str, state: JobState, note: &str, vm_ok: bool) -> Result<bool> {
        debug_assert!(state.is_terminal());
        self.tx(|tx| finish_tx(tx, id, state, note, vm_ok, AttemptEnd::Done))
    }

    /// Asks a job to stop. A queued job ends at once as `canceled` (`true`); an active one gets
    /// the request recorded for its lifecycle to act on (`false`).
    pub fn request_cancel(&self, id: &str, why: &str) -> Result<Option<bool>> {
        self.tx(|tx| {
            let state: Option<JobState> = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(state) = state else {
                return Ok(None);
            };
            if state == JobState::Queued {
                finish_tx(tx, id, JobState::Canceled, why, false, AttemptEnd::Canceled)?;
                return Ok(Some(true));
            }
            if state.is_active() {
                exec(
                    tx,
                    "UPDATE jobs SET cancel_requested = ?1 WHERE id = ?2",
                    params![why, id],
                )?;
            }
            Ok(Some(false))
        })
    }

    /// Ids of terminal jobs that ended before `before_ms` (for log retention).
    pub fn ended_before(&self, before_ms: i64) -> Result<Vec<JobId>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT id FROM jobs WHERE state IN ('success','failure','error','canceled') \
                 AND updated_ms < ?1",
                params![before_ms],
                |r| parsed(r, 0),
            )
        })
    }

    /// Records a job's commit author and subject (the columns the webhook intake fills in the
    /// delivery's own transaction); for callers that learn them later (tools, tests).
    pub fn set_commit_info(&self, job_id: &str, info: &CommitInfo) -> Result<()> {
        let n = self.with(|c| {
            exec(
                c,
                "UPDATE jobs SET commit_author = ?2, commit_subject = ?3 WHERE id = ?1",
                params![job_id, info.author, info.subject],
            )
        })?;
        if n == 0 {
            return Err(HostError::Invalid(format!("no job {job_id} in the store")));
        }
        Ok(())
    }
}

/// `<sha7>-<10 random hex>`, unique in the store (drawn again on the rare collision).
pub(super) fn new_job_id(c: &Connection, sha: &CommitSha) -> rusqlite::Result<JobId> {
    loop {
        let id: JobId = format!("{}-{}", sha.short(), crate::random_hex(5))
            .parse()
            .expect("seven hex digits, a dash and ten hex digits make a valid job id");
        let taken: Option<i64> = qrow(
            c,
            "SELECT 1 FROM jobs WHERE id = ?1",
            params![id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
        if taken.is_none() {
            return Ok(id);
        }
    }
}

pub(super) fn insert_job(
    tx: &Connection,
    job_id: &str,
    job: &NewJob,
    now: i64,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO jobs (id, repo, sha, reason, branch, supersede_key, clone_url, version, \
         snapshot, update_first, state, created_ms, updated_ms, commit_author, commit_subject) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'queued', ?11, ?11, ?12, ?13)",
        params![
            job_id,
            job.repo.as_str(),
            job.sha.as_str(),
            job.reason.as_str(),
            job.branch,
            job.supersede_key,
            job.clone_url,
            job.version,
            job.snapshot,
            job.update_first,
            now,
            job.commit_author,
            job.commit_subject
        ],
    )?;
    transition(tx, job_id, None, "queued", Some(job.reason.as_str()), now)?;
    enqueue_status(tx, job_id, StatusState::Pending, "queued", now)?;
    enqueue_check(tx, job_id, CheckPhase::Queued, "queued", now)
}

/// Ends the older queued jobs sharing `key` as `canceled`, and asks the active ones to stop when
/// `running_too`. Returns (ended, asked to stop).
pub(super) fn supersede(
    tx: &Connection,
    key: &str,
    new_id: &str,
    new_sha: &str,
    running_too: bool,
) -> rusqlite::Result<(Vec<JobId>, Vec<JobId>)> {
    let why = format!("superseded by {}", &new_sha[..new_sha.len().min(12)]);
    let older: Vec<(JobId, JobState)> = {
        qrows(
            tx,
            "SELECT id, state FROM jobs WHERE supersede_key = ?1 AND id != ?2 AND state IN \
             ('queued','assigned','booting','running','finishing')",
            params![key, new_id],
            |r| Ok((parsed(r, 0)?, r.get(1)?)),
        )?
    };
    let (mut queued, mut running) = (Vec::new(), Vec::new());
    for (id, state) in older {
        if state == JobState::Queued {
            finish_tx(
                tx,
                &id,
                JobState::Canceled,
                &why,
                false,
                AttemptEnd::Canceled,
            )?;
            queued.push(id);
        } else if running_too {
            exec(
                tx,
                "UPDATE jobs SET cancel_requested = ?1 WHERE id = ?2",
                params![why, id.as_str()],
            )?;
            running.push(id);
        }
    }
    Ok((queued, running))
}

/// Puts an active job back in the queue and releases its VM (an infrastructure failure or a
/// vSphere outage ended its attempt); the caller records the transition.
pub(super) fn requeue(tx: &Connection, id: &str, error: &str, now: i64) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE vms SET job_id = NULL, leased_ms = NULL WHERE job_id = ?1",
        params![id],
    )?;
    exec(
        tx,
        // The abandoned attempt's event secret stops working; the next claim makes a new one.
        "UPDATE jobs SET state = 'queued', vm = NULL, pid = NULL, updated_ms = ?1, \
         note = ?2, event_secret_hash = NULL WHERE id = ?3",
        params![now, error, id],
    )
    .map(drop)
}

pub(super) fn transition(
    tx: &Connection,
    id: &str,
    from: Option<&str>,
    to: &str,
    note: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO transitions (job_id, at_ms, from_state, to_state, note) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, now, from, to, note],
    )
    .map(drop)
}

pub(super) fn finish_tx(
    tx: &Connection,
    id: &str,
    state: JobState,
    note: &str,
    vm_ok: bool,
    attempt_result: AttemptEnd,
) -> rusqlite::Result<bool> {
    let row: Option<(JobState, Option<String>, u32)> = tx
        .query_row(
            "SELECT state, vm, attempts FROM jobs WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((from, vm, attempts)) = row else {
        return Ok(false);
    };
    if from.is_terminal() {
        return Ok(false);
    }
    let now = now_ms();
    exec(
        tx,
        // The event secret dies with the job: an ended job takes no more events.
        "UPDATE jobs SET state = ?1, note = ?2, updated_ms = ?3, cancel_requested = NULL, \
         event_secret_hash = NULL WHERE id = ?4",
        params![state.as_str(), note, now, id],
    )?;
    exec(
        tx,
        "UPDATE attempts SET ended_ms = ?1, result = COALESCE(result, ?2), \
         error = COALESCE(error, ?3) WHERE job_id = ?4 AND attempt = ?5",
        params![now, attempt_result.as_str(), note, id, attempts],
    )?;
    if let Some(vm) = vm {
        exec(
            tx,
            "UPDATE vms SET job_id = NULL, leased_ms = NULL WHERE name = ?1 AND job_id = ?2",
            params![vm, id],
        )?;
        if vm_ok {
            exec(
                tx,
                "UPDATE vms SET consecutive_failures = 0 WHERE name = ?1",
                params![vm],
            )?;
        }
    }
    let relayed: Option<(Option<String>, Option<String>)> = tx
        .query_row(
            "SELECT result_outcome, result_reason FROM attempts WHERE job_id = ?1 AND attempt = ?2",
            params![id, attempts],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let reason = match relayed {
        Some((Some(outcome), Some(reason)))
            if state != JobState::Canceled
                && outcome == state.status_state().as_str()
                && !reason.trim().is_empty() =>
        {
            Some(reason)
        }
        _ => None,
    };
    // The job's note: the agent's reason replaces the host's generic verdict; an error keeps
    // the host's account (attempts, launch's exit) and adds the reason.
    let note = match (&reason, state) {
        (Some(r), JobState::Success | JobState::Failure) => r.clone(),
        (Some(r), _) => format!("{note}; the last attempt's result: {r}"),
        (None, _) => note.to_owned(),
    };
    exec(
        tx,
        "UPDATE jobs SET note = ?1 WHERE id = ?2",
        params![note, id],
    )?;
    transition(
        tx,
        id,
        Some(from.as_str()),
        state.as_str(),
        Some(&note),
        now,
    )?;
    let description = reason.as_deref().unwrap_or(&note);
    enqueue_status(tx, id, state.status_state(), description, now)?;
    enqueue_check(tx, id, CheckPhase::Completed, &note, now)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::{test_job as job, test_store as open};
    use super::*;

    #[test]
    fn ending_a_job_twice_changes_nothing() {
        let (_d, s) = open();
        let id = s.insert_job(&job('a', "x")).unwrap();
        assert!(s.finish(&id, JobState::Canceled, "x", false).unwrap());
        assert!(!s.finish(&id, JobState::Success, "y", true).unwrap());
        assert_eq!(s.job(&id).unwrap().unwrap().state, JobState::Canceled);
    }
}
