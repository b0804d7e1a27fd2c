//! Matrix cells of jobs (issue 20): `job_cells` (the cell a job runs: its stable name, the cell
//! as the orchestration wrote it, why it was queued), `job_requests` (what a job that waits for
//! its cells asks for: a label, a comment's selection, the failed cells to retry) and
//! `pr_labels` (a pull request's labels as the last delivery listed them).
//!
//! Invariants:
//! - A job without its version is a *placeholder*: [`Store::expand_job`] turns it into the job of
//!   the first cell and creates one job per further cell in the same transaction, each with its
//!   own `pending` status (and check run), superseding the older jobs of the same branch or pull
//!   request **and cell** (a new push of `main` supersedes `main`'s `4.3 / dev`, never its
//!   `4.3 / staging`). A cell that already has a live job for the same commit is not queued twice.
//! - A placeholder that no cell runs for is ended `canceled` with its statuses and check-run
//!   updates skipped (never posted): a trigger that selects nothing leaves nothing on GitHub.
//! - A placeholder a delivery asks for ([`Store::insert_requested_job_once`]: a run label, a
//!   `/sdci` comment) is stored in one transaction with that delivery (`deliveries`, the rule
//!   of `ingest` and the re-runs) and with the fork approval it gives, if any: one
//!   `X-GitHub-Delivery` queues at most once, whatever became of its jobs since.
//! - The cell is stored as the orchestration's text (JSON); this module never reads it.

use super::jobs::JOB_COLS;
use super::jobs::{
    finish_tx, insert_job, job_from_row, job_in, new_job_id, supersede, JobRow, NewJob,
};
use super::{exec, qrow, qrows, Store};
use crate::domain::JobState;
use crate::store::attempts::AttemptEnd;
use crate::{now_ms, Result};
use rusqlite::{params, OptionalExtension};
use sdci_protocol::JobId;

/// One cell to queue for a placeholder's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCell {
    pub version: String,
    /// The stable name (`4.3 / dev`), unique within the commit's matrix.
    pub name: String,
    /// The cell as the orchestration serialized it.
    pub cell: String,
    /// Why it is queued (`push`, `pull_request`, `label:sdci:4.3`, `comment:alice`, `retry`).
    pub queued_by: String,
}

/// A job's cell, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCell {
    pub name: String,
    pub cell: String,
    pub queued_by: String,
}

/// What [`Store::expand_job`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The jobs of the cells, the placeholder first (when it took a cell).
    pub jobs: Vec<(JobId, String)>,
    /// Cells left out because a live job of the same commit already runs them.
    pub already: Vec<String>,
    /// Older queued jobs of the same key and cell, ended as superseded.
    pub superseded: Vec<JobId>,
    /// Older active jobs of the same key and cell, asked to stop.
    pub stop_running: Vec<JobId>,
    /// The placeholder was ended (no cell to run, or not a placeholder any more).
    pub dropped: bool,
}

const LIVE: &str = "('queued','assigned','booting','running','finishing')";

/// A placeholder asking for `request`, `why` its first transition's note.
fn insert_request(
    tx: &rusqlite::Connection,
    job: &NewJob,
    request: &str,
    why: &str,
    now: i64,
) -> rusqlite::Result<JobId> {
    let id = new_job_id(tx, &job.sha)?;
    let mut job = job.clone();
    job.version = None;
    insert_job(tx, &id, &job, now)?;
    exec(
        tx,
        "INSERT INTO job_requests (job_id, request) VALUES (?1, ?2)",
        params![id.as_str(), request],
    )?;
    exec(
        tx,
        "UPDATE transitions SET note = ?1 WHERE job_id = ?2",
        params![why, id.as_str()],
    )?;
    Ok(id)
}

impl Store {
    /// Creates a placeholder job that asks for `request` (see the module doc); `why` (who asked,
    /// how) is its first transition's note.
    pub fn insert_requested_job(&self, job: &NewJob, request: &str, why: &str) -> Result<JobId> {
        self.tx(|tx| insert_request(tx, job, request, why, now_ms()))
    }

    /// As [`Store::insert_requested_job`], once per delivery: `Ok(None)` when `delivery`
    /// (`X-GitHub-Delivery`, event) was stored before, else the placeholder, the delivery
    /// and, for a fork's head, `approval` (pull request number, approver) in one transaction.
    /// The rule of every other delivery (`deliveries`, contracts §10 re-runs): the same delivery
    /// id never acts twice, whatever became of the jobs it queued.
    pub fn insert_requested_job_once(
        &self,
        job: &NewJob,
        request: &str,
        why: &str,
        delivery: Option<(&str, &str)>,
        approval: Option<(u64, &str)>,
    ) -> Result<Option<JobId>> {
        let (id_of, event) = delivery.map_or((None, ""), |(d, e)| (Some(d), e));
        self.tx(|tx| {
            if super::checks::delivery_seen(tx, id_of)? {
                return Ok(None);
            }
            let now = now_ms();
            let id = insert_request(tx, job, request, why, now)?;
            if let Some((number, approver)) = approval {
                super::ingest::record_fork_approval(tx, job, number, approver, now)?;
            }
            super::checks::record_delivery(tx, id_of, event, Some(&id), now)?;
            Ok(Some(id))
        })
    }

    /// Records delivery `delivery` (id, event) that queues no job (a cancel, a label removed):
    /// `false` when it was stored before, so the caller does nothing again.
    pub fn claim_delivery(&self, delivery: &str, event: &str) -> Result<bool> {
        self.tx(|tx| {
            if super::checks::delivery_seen(tx, Some(delivery))? {
                return Ok(false);
            }
            super::checks::record_delivery(tx, Some(delivery), event, None, now_ms())?;
            Ok(true)
        })
    }

    /// Whether delivery `delivery` was stored before.
    pub fn delivery_seen(&self, delivery: &str) -> Result<bool> {
        self.with(|c| super::checks::delivery_seen(c, Some(delivery)))
    }

    /// What placeholder `id` asks for, if it was created with a request.
    pub fn job_request(&self, id: &str) -> Result<Option<String>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT request FROM job_requests WHERE job_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// The cell job `id` runs, if it runs one.
    pub fn job_cell(&self, id: &str) -> Result<Option<JobCell>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT name, cell, queued_by FROM job_cells WHERE job_id = ?1",
                params![id],
                |r| {
                    Ok(JobCell {
                        name: r.get(0)?,
                        cell: r.get(1)?,
                        queued_by: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    /// The cell jobs of a commit, newest first (for retries, cancels and label removals).
    pub fn cell_jobs(&self, repo: &str, sha: &str) -> Result<Vec<(JobRow, JobCell)>> {
        self.with(|c| {
            qrows(
                c,
                &format!(
                    "SELECT {JOB_COLS}, k.name, k.cell, k.queued_by FROM jobs j \
                     JOIN job_cells k ON k.job_id = j.id WHERE j.repo = ?1 AND j.sha = ?2 \
                     ORDER BY j.seq DESC"
                ),
                params![repo, sha],
                |r| {
                    let n = JOB_COLS.split(',').count();
                    Ok((
                        job_from_row(r)?,
                        JobCell {
                            name: r.get(n)?,
                            cell: r.get(n + 1)?,
                            queued_by: r.get(n + 2)?,
                        },
                    ))
                },
            )
        })
    }

    /// The newest job of a pull request (`<repo>#<number>` keys), cell or not (`/sdci cancel`
    /// cancels it when it is a plain job of the head GitHub names).
    pub fn newest_pr_job(&self, repo: &str, number: u64) -> Result<Option<JobRow>> {
        let key = format!("{repo}#{number}");
        self.with(|c| {
            qrow(
                c,
                &format!(
                    "SELECT {JOB_COLS} FROM jobs j WHERE j.repo = ?1 AND \
                     (j.supersede_key = ?2 OR j.supersede_key LIKE ?3 ESCAPE '\\') \
                     ORDER BY j.seq DESC LIMIT 1"
                ),
                params![repo, key, format!("{} / %", like_escape(&key))],
                job_from_row,
            )
            .optional()
        })
    }

    /// Replaces the labels stored for a pull request (every `pull_request` delivery lists them).
    pub fn set_pr_labels(&self, repo: &str, number: u64, labels: &[String]) -> Result<()> {
        self.tx(|tx| {
            exec(
                tx,
                "DELETE FROM pr_labels WHERE repo = ?1 AND pr = ?2",
                params![repo, number as i64],
            )?;
            for l in labels {
                exec(
                    tx,
                    "INSERT OR IGNORE INTO pr_labels (repo, pr, label) VALUES (?1, ?2, ?3)",
                    params![repo, number as i64, l],
                )?;
            }
            Ok(())
        })
    }

    /// A pull request's labels as last stored.
    pub fn pr_labels(&self, repo: &str, number: u64) -> Result<Vec<String>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT label FROM pr_labels WHERE repo = ?1 AND pr = ?2 ORDER BY label",
                params![repo, number as i64],
                |r| r.get(0),
            )
        })
    }

    /// Turns placeholder `id` into the jobs of `cells` (see the module doc). An empty `cells`
    /// (or only cells already live) ends the placeholder `canceled` with `why`, posting nothing.
    pub fn expand_job(
        &self,
        id: &str,
        cells: &[NewCell],
        why: &str,
        supersede_running: bool,
    ) -> Result<Expansion> {
        self.tx(|tx| {
            let mut out = Expansion::default();
            let Some(job) = job_in(tx, id)? else {
                out.dropped = true;
                return Ok(out);
            };
            if job.state != JobState::Queued || job.version.is_some() {
                out.dropped = true;
                return Ok(out);
            }
            let mut todo = Vec::new();
            for c in cells {
                let live: Option<i64> = qrow(
                    tx,
                    &format!(
                        "SELECT 1 FROM jobs j JOIN job_cells k ON k.job_id = j.id WHERE \
                         j.repo = ?1 AND j.sha = ?2 AND k.name = ?3 AND j.state IN {LIVE} LIMIT 1"
                    ),
                    params![job.repo.as_str(), job.sha.as_str(), c.name],
                    |r| r.get(0),
                )
                .optional()?;
                if live.is_some() {
                    out.already.push(c.name.clone());
                } else {
                    todo.push(c);
                }
            }
            let now = now_ms();
            if todo.is_empty() {
                finish_tx(tx, id, JobState::Canceled, why, false, AttemptEnd::Canceled)?;
                exec(
                    tx,
                    "UPDATE statuses SET posted = 2 WHERE job_id = ?1 AND posted = 0",
                    params![id],
                )?;
                // Check runs (issue 17) keep their own outbox, when this build has it.
                let checks: Option<i64> = qrow(
                    tx,
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'check_updates'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
                if checks.is_some() {
                    exec(
                        tx,
                        "UPDATE check_updates SET posted = 2 WHERE job_id = ?1 AND posted = 0",
                        params![id],
                    )?;
                }
                out.dropped = true;
                return Ok(out);
            }
            for (i, c) in todo.iter().enumerate() {
                let key = job
                    .supersede_key
                    .as_ref()
                    .map(|k| format!("{k} / {}", c.name));
                let job_id = if i == 0 {
                    exec(
                        tx,
                        "UPDATE jobs SET version = ?1, supersede_key = ?2, updated_ms = ?3 \
                         WHERE id = ?4",
                        params![c.version, key, now, id],
                    )?;
                    job.id.clone()
                } else {
                    let new = NewJob {
                        supersede_key: key.clone(),
                        version: Some(c.version.clone()),
                        ..NewJob::again(&job)
                    };
                    let job_id = new_job_id(tx, &job.sha)?;
                    insert_job(tx, &job_id, &new, now)?;
                    job_id
                };
                exec(
                    tx,
                    "INSERT INTO job_cells (job_id, name, cell, queued_by) VALUES (?1, ?2, ?3, ?4)",
                    params![job_id.as_str(), c.name, c.cell, c.queued_by],
                )?;
                if let Some(key) = &key {
                    let (q, r) = supersede(tx, key, &job_id, &job.sha, supersede_running)?;
                    out.superseded.extend(q);
                    out.stop_running.extend(r);
                }
                out.jobs.push((job_id, c.name.clone()));
            }
            Ok(out)
        })
    }

    /// Ends placeholder `id` as `failure` (its matrix file is unusable): its status says why.
    pub fn fail_placeholder(&self, id: &str, note: &str) -> Result<bool> {
        self.tx(|tx| finish_tx(tx, id, JobState::Failure, note, false, AttemptEnd::Done))
    }
}

/// Gives job `to` the cell of job `from`, if it has one (a re-run runs the same cell).
pub(super) fn copy_cell(
    tx: &rusqlite::Connection,
    from: &str,
    to: &str,
    queued_by: &str,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO job_cells (job_id, name, cell, queued_by) \
         SELECT ?2, name, cell, ?3 FROM job_cells WHERE job_id = ?1",
        params![from, to, queued_by],
    )
    .map(drop)
}

/// The cell name of job `id`, if it runs one.
pub(super) fn cell_name(tx: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<String>> {
    qrow(
        tx,
        "SELECT name FROM job_cells WHERE job_id = ?1",
        params![id],
        |r| r.get(0),
    )
    .optional()
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

#[cfg(test)]
mod tests {
    use super::super::{test_job, test_store};
    use super::*;

    fn cell(name: &str) -> NewCell {
        NewCell {
            version: "4.3".into(),
            name: name.into(),
            cell: format!("{{\"name\":{name:?}}}"),
            queued_by: "push".into(),
        }
    }

    fn placeholder(s: &Store, digit: char) -> JobId {
        let mut j = test_job(digit, "main");
        j.version = None;
        s.insert_job(&j).unwrap()
    }

    #[test]
    fn a_placeholder_becomes_one_job_per_cell_each_superseding_only_its_own_cell() {
        let (_d, s) = test_store();
        let a = placeholder(&s, 'a');
        let e = s
            .expand_job(&a, &[cell("4.3 / dev"), cell("4.3 / staging")], "x", false)
            .unwrap();
        assert_eq!(e.jobs.len(), 2);
        assert_eq!(e.jobs[0].0, a);
        let second = s.job(&e.jobs[1].0).unwrap().unwrap();
        assert_eq!(second.version.as_deref(), Some("4.3"));
        assert_eq!(
            second.supersede_key.as_deref(),
            Some("o/r@main / 4.3 / staging")
        );
        assert_eq!(s.job_cell(&a).unwrap().unwrap().name, "4.3 / dev");
        // A newer commit of main that runs only `dev` supersedes `dev`, not `staging`.
        let b = placeholder(&s, 'b');
        let e2 = s.expand_job(&b, &[cell("4.3 / dev")], "x", false).unwrap();
        assert_eq!(e2.superseded, std::slice::from_ref(&a));
        assert_eq!(s.job(&a).unwrap().unwrap().state, JobState::Canceled);
        assert_eq!(second.state, JobState::Queued);
        assert_eq!(
            s.job(&e.jobs[1].0).unwrap().unwrap().state,
            JobState::Queued
        );
    }

    #[test]
    fn a_request_acts_once_per_delivery_and_stores_a_forks_approval_with_its_job() {
        let (_d, s) = test_store();
        let mut j = test_job('c', "feature");
        j.version = None;
        let d = Some(("d-1", "issue_comment"));
        let first = s
            .insert_requested_job_once(&j, "select:boss:4.3", "w", d, Some((7, "boss")))
            .unwrap();
        assert!(first.is_some());
        assert_eq!(
            s.fork_approvals("o/r", 7).unwrap(),
            [("c".repeat(40), "boss".to_owned())]
        );
        assert_eq!(
            s.insert_requested_job_once(&j, "select:boss:4.3", "w", d, None)
                .unwrap(),
            None,
            "the same delivery again"
        );
        assert!(s
            .insert_requested_job_once(&j, "select:boss:4.3", "w", None, None)
            .unwrap()
            .is_some());
        assert!(s.delivery_seen("d-1").unwrap());
        assert!(s.claim_delivery("d-2", "pull_request").unwrap());
        assert!(!s.claim_delivery("d-2", "pull_request").unwrap());
        assert!(!s.claim_delivery("d-1", "issue_comment").unwrap());
    }

    #[test]
    fn no_cell_ends_the_placeholder_without_a_status_and_live_cells_are_not_doubled() {
        let (_d, s) = test_store();
        let a = placeholder(&s, 'a');
        let e = s
            .expand_job(&a, &[], "no cell runs on push", false)
            .unwrap();
        assert!(e.dropped);
        assert_eq!(s.job(&a).unwrap().unwrap().state, JobState::Canceled);
        assert!(s.unposted_statuses().unwrap().is_empty());
        let b = placeholder(&s, 'b');
        s.expand_job(&b, &[cell("4.3 / dev")], "x", false).unwrap();
        let mut again = test_job('b', "main");
        again.version = None;
        let c = s
            .insert_requested_job(&again, "label:sdci:all", "label sdci:all added by m")
            .unwrap();
        assert_eq!(
            s.transitions(&c).unwrap()[0].3.as_deref(),
            Some("label sdci:all added by m")
        );
        assert_eq!(
            s.job_request(&c).unwrap().as_deref(),
            Some("label:sdci:all")
        );
        let e = s
            .expand_job(&c, &[cell("4.3 / dev"), cell("4.3 / prod")], "x", false)
            .unwrap();
        assert_eq!(e.already, ["4.3 / dev"]);
        assert_eq!(e.jobs, [(c.clone(), "4.3 / prod".to_owned())]);
        assert_eq!(s.cell_jobs("o/r", &"b".repeat(40)).unwrap().len(), 2);
    }

    #[test]
    fn pull_request_labels_are_replaced_per_delivery() {
        let (_d, s) = test_store();
        s.set_pr_labels("o/r", 7, &["a".into(), "b".into()])
            .unwrap();
        s.set_pr_labels("o/r", 7, &["b".into()]).unwrap();
        assert_eq!(s.pr_labels("o/r", 7).unwrap(), ["b"]);
        assert!(s.pr_labels("o/r", 8).unwrap().is_empty());
    }
}
