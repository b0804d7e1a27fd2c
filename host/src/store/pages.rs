//! What the job pages, the JSON API and `sdci-host jobs --json` read: a filtered page of jobs,
//! every attempt of a job with its steps, a queued job's place in its queue and the state of its
//! pool. Read-only: nothing here changes a row.
//!
//! Invariants: filters are bound parameters, never spliced into SQL; a page is at most
//! [`MAX_PAGE`] rows; columns are read into typed values as everywhere in the store.

use super::jobs::{job_from_row, JobRow, JOB_COLS};
use super::{qrow, qrows, Store};
use crate::domain::JobState;
use crate::Result;
use rusqlite::params;

/// The most rows one page of jobs holds.
pub const MAX_PAGE: u32 = 500;

/// Which jobs to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in one of these states (empty: any).
    pub states: Vec<JobState>,
    /// Only this repository (`owner/name`).
    pub repo: Option<String>,
    /// Only this branch (a push's branch, a pull request's head branch).
    pub branch: Option<String>,
    /// Only jobs older than this one (its `seq`): the next page.
    pub before: Option<i64>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: u32,
}

/// One page of jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    pub jobs: Vec<JobRow>,
    /// The `before` of the next page, if there are older jobs.
    pub next_before: Option<i64>,
}

/// One attempt of a job on a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub attempt: u32,
    pub vm: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// How it ended (`AttemptEnd`: done, infra, outage, canceled); `None` while it runs.
    pub result: Option<String>,
    pub error: Option<String>,
    /// The `Result` event the agent relayed: outcome and reason.
    pub outcome: Option<String>,
    pub reason: Option<String>,
}

/// One step of one attempt, as the event ingest recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    pub attempt: u32,
    /// From 0.
    pub step: u32,
    pub name: String,
    pub started_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub status: Option<i32>,
    pub timed_out: Option<bool>,
}

/// A queued job's place: `position` (from 1) among the `queued` jobs of its Qubes version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpot {
    pub position: u32,
    pub of: u32,
}

/// A pool VM as the wait explanation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolVm {
    pub name: String,
    /// The job or rotation (`rotation-…`) holding it.
    pub holder: Option<String>,
    pub quarantined: bool,
    /// A running rotation waits for it (it goes to no job meanwhile).
    pub reserved: bool,
}

impl Store {
    /// A page of jobs matching `f`, newest first.
    pub fn jobs_page(&self, f: &JobFilter) -> Result<JobPage> {
        let limit = f.limit.clamp(1, MAX_PAGE);
        let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
        let states = states.join(",");
        let mut jobs = self.with(|c| {
            qrows(
                c,
                &format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE \
                     (?1 = '' OR instr(',' || ?1 || ',', ',' || state || ',') > 0) \
                     AND (?2 IS NULL OR repo = ?2) AND (?3 IS NULL OR branch = ?3) \
                     AND (?4 IS NULL OR seq < ?4) ORDER BY seq DESC LIMIT ?5"
                ),
                params![states, f.repo, f.branch, f.before, limit + 1],
                job_from_row,
            )
        })?;
        let more = jobs.len() > limit as usize;
        jobs.truncate(limit as usize);
        let next_before = if more {
            jobs.last().map(|j| j.seq)
        } else {
            None
        };
        Ok(JobPage { jobs, next_before })
    }

    /// Every attempt of a job, newest first.
    pub fn attempts_of(&self, id: &str) -> Result<Vec<AttemptRow>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT attempt, vm, started_ms, ended_ms, result, error, result_outcome, \
                 result_reason FROM attempts WHERE job_id = ?1 ORDER BY attempt DESC",
                params![id],
                |r| {
                    Ok(AttemptRow {
                        attempt: r.get(0)?,
                        vm: r.get(1)?,
                        started_ms: r.get(2)?,
                        ended_ms: r.get(3)?,
                        result: r.get(4)?,
                        error: r.get(5)?,
                        outcome: r.get(6)?,
                        reason: r.get(7)?,
                    })
                },
            )
        })
    }

    /// The steps of every attempt of a job, by attempt then step.
    pub fn steps_of(&self, id: &str) -> Result<Vec<StepRow>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT attempt, step, name, started_ms, duration_ms, status, timed_out \
                 FROM step_timings WHERE job_id = ?1 ORDER BY attempt, step",
                params![id],
                |r| {
                    Ok(StepRow {
                        attempt: r.get(0)?,
                        step: r.get(1)?,
                        name: r.get(2)?,
                        started_ms: r.get(3)?,
                        duration_ms: r.get(4)?,
                        status: r.get(5)?,
                        timed_out: r.get(6)?,
                    })
                },
            )
        })
    }

    /// Where a queued job with a known version stands in its version's queue (FIFO by `seq`,
    /// canceled ones not counted); `None` for a job that is not waiting there.
    pub fn queue_spot(&self, id: &str) -> Result<Option<QueueSpot>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT \
                   (SELECT COUNT(*) FROM jobs o WHERE o.state = 'queued' AND o.version = j.version \
                    AND o.cancel_requested IS NULL AND o.seq <= j.seq), \
                   (SELECT COUNT(*) FROM jobs o WHERE o.state = 'queued' AND o.version = j.version \
                    AND o.cancel_requested IS NULL) \
                 FROM jobs j WHERE j.id = ?1 AND j.state = 'queued' AND j.version IS NOT NULL",
                params![id],
                |r| {
                    Ok(QueueSpot {
                        position: r.get(0)?,
                        of: r.get(1)?,
                    })
                },
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
        })
    }

    /// The VMs of pool `version` with who holds them, quarantine and rotation reservations.
    pub fn pool_vms(&self, version: &str) -> Result<Vec<PoolVm>> {
        let now = crate::now_ms();
        self.with(|c| {
            qrows(
                c,
                "SELECT v.name, v.job_id, v.quarantined, EXISTS (SELECT 1 FROM rotation_runs r \
                 WHERE r.id = v.reserved_by AND r.ended_ms IS NULL AND r.deadline_ms >= ?2) \
                 FROM vms v WHERE v.pool = ?1 ORDER BY v.name",
                params![version, now],
                |r| {
                    Ok(PoolVm {
                        name: r.get(0)?,
                        holder: r.get(1)?,
                        quarantined: r.get(2)?,
                        reserved: r.get(3)?,
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
    fn pages_filter_by_state_repo_and_branch_and_go_back_in_time() {
        let (_d, s) = open();
        let ids: Vec<_> = (0..5)
            .map(|i| {
                s.insert_job(&job(
                    char::from(b'a' + i),
                    if i % 2 == 0 { "main" } else { "dev" },
                ))
                .unwrap()
            })
            .collect();
        let all = |f: JobFilter| s.jobs_page(&f).unwrap();
        let first = all(JobFilter {
            limit: 2,
            ..JobFilter::default()
        });
        assert_eq!(first.jobs.len(), 2);
        assert_eq!(first.jobs[0].id, ids[4], "newest first");
        let second = all(JobFilter {
            limit: 2,
            before: first.next_before,
            ..JobFilter::default()
        });
        assert_eq!(second.jobs[0].id, ids[2]);
        let main = all(JobFilter {
            branch: Some("main".into()),
            limit: 10,
            ..JobFilter::default()
        });
        assert_eq!(main.jobs.len(), 3);
        assert_eq!(main.next_before, None);
        let none = all(JobFilter {
            states: vec![JobState::Success, JobState::Running],
            limit: 10,
            ..JobFilter::default()
        });
        assert!(none.jobs.is_empty());
        let queued = all(JobFilter {
            states: vec![JobState::Queued],
            repo: Some("o/r".into()),
            limit: 10,
            ..JobFilter::default()
        });
        assert_eq!(queued.jobs.len(), 5);
        // A hostile filter is a value, not SQL.
        let odd = all(JobFilter {
            branch: Some("x' OR '1'='1".into()),
            limit: 10,
            ..JobFilter::default()
        });
        assert!(odd.jobs.is_empty());
    }

    #[test]
    fn a_queued_job_knows_its_place_and_its_pool() {
        let (_d, s) = open();
        let a = s.insert_job(&job('a', "x")).unwrap();
        let b = s.insert_job(&job('b', "y")).unwrap();
        assert_eq!(
            s.queue_spot(&b).unwrap(),
            Some(QueueSpot { position: 2, of: 2 })
        );
        s.register_vms("4.2", &["vm-a".into()]).unwrap();
        s.claim("4.2", &["vm-a".into()], 1, "secret", i64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(s.queue_spot(&a).unwrap(), None, "claimed");
        assert_eq!(
            s.queue_spot(&b).unwrap(),
            Some(QueueSpot { position: 1, of: 1 })
        );
        let vms = s.pool_vms("4.2").unwrap();
        assert_eq!(vms.len(), 1);
        assert_eq!(vms[0].holder.as_deref(), Some(a.as_str()));
        let attempts = s.attempts_of(&a).unwrap();
        assert_eq!((attempts[0].attempt, attempts[0].vm.as_str()), (1, "vm-a"));
        s.record_step(&a, 1, 0, "os-release", Some(5), None, None, None)
            .unwrap();
        let steps = s.steps_of(&a).unwrap();
        assert_eq!(steps[0].name, "os-release");
        assert_eq!(steps[0].status, None);
    }
}
