//! Attempts: the `attempts` and `step_timings` tables and the event stream's position. One row
//! per try of a job on a VM, ended as [`AttemptEnd`]; an infrastructure failure (counted against
//! `max_attempts`, the VM's failures grow towards quarantine) or a vSphere outage (counted
//! against neither); the `Result` event the agent relayed; the per-attempt event secret (stored
//! as a SHA-256 hash, compared in constant time).

use super::jobs::{finish_tx, requeue, transition};
use super::outbox::enqueue_status;
use super::{exec, qrow, qrows, sha256_hex, Store};
use crate::domain::JobState;
use crate::{now_ms, Result};
use rusqlite::{params, OptionalExtension};
use sdci_protocol::StatusState;

/// How an attempt ended (`attempts.result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// It reached the job's end (a verdict, or an error the job ends with).
    Done,
    /// Infrastructure failed: counts against `max_attempts` and the VM's failures.
    Infra,
    /// The hypervisor was unavailable: counts against nothing.
    Outage,
    /// The job was canceled or superseded.
    Canceled,
}

impl AttemptEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Infra => "infra",
            Self::Outage => "outage",
            Self::Canceled => "canceled",
        }
    }
}

/// What an infrastructure failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    Requeued,
    GaveUp,
}

/// The event stream's state for one job, as the ingest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventAuth {
    /// The bearer is the current attempt's secret.
    pub secret_ok: bool,
    /// The next `seq` to append.
    pub next_seq: u64,
    /// The current attempt's number.
    pub attempt: u32,
}

/// A step's timing: (step, name, duration_ms, exit status).
pub type StepTiming = (u32, String, Option<i64>, Option<i32>);

impl Store {
    /// Records an infrastructure failure of the job's current attempt: the VM's failure count
    /// grows (quarantine after `quarantine_after` in a row), the lease is released, and the job is
    /// queued again if it has tries left, else ended as `error`. Only attempts that ended this way
    /// count against `max_attempts` (not those a vSphere outage cut short, see
    /// [`Store::outage`]).
    pub fn infra_failure(
        &self,
        id: &str,
        error: &str,
        max_attempts: u32,
        quarantine_after: u32,
    ) -> Result<AfterFailure> {
        self.tx(|tx| {
            let now = now_ms();
            let row: Option<(JobState, Option<String>, u32)> = tx
                .query_row(
                    "SELECT state, vm, attempts FROM jobs WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((state, vm, attempts)) = row else {
                return Ok(AfterFailure::GaveUp);
            };
            if !state.is_active() {
                return Ok(AfterFailure::GaveUp);
            }
            if let Some(vm) = &vm {
                exec(
                    tx,
                    "UPDATE vms SET consecutive_failures = consecutive_failures + 1, \
                     last_error = ?1 WHERE name = ?2",
                    params![error, vm],
                )?;
                exec(
                    tx,
                    "UPDATE vms SET quarantined = 1 WHERE name = ?1 AND consecutive_failures >= ?2",
                    params![vm, quarantine_after],
                )?;
            }
            exec(
                tx,
                "UPDATE attempts SET ended_ms = ?1, result = 'infra', error = ?2 \
                 WHERE job_id = ?3 AND attempt = ?4",
                params![now, error, id, attempts],
            )?;
            // Tries that vSphere outages cut short (`outage`) do not count.
            let failed: u32 = tx.query_row(
                "SELECT COUNT(*) FROM attempts WHERE job_id = ?1 AND result = 'infra'",
                params![id],
                |r| r.get(0),
            )?;
            if failed >= max_attempts {
                let note = format!("infrastructure error after {failed} attempts: {error}");
                finish_tx(tx, id, JobState::Error, &note, false, AttemptEnd::Infra)?;
                return Ok(AfterFailure::GaveUp);
            }
            requeue(tx, id, error, now)?;
            let note = format!("attempt {attempts} failed ({error}); queued again");
            transition(tx, id, Some(state.as_str()), "queued", Some(&note), now)?;
            let desc = format!(
                "retrying on another VM (attempt {} of {max_attempts})",
                failed + 1
            );
            enqueue_status(tx, id, StatusState::Pending, &desc, now)?;
            Ok(AfterFailure::Requeued)
        })
    }

    /// How many of the job's attempts a vSphere outage cut short so far.
    pub fn outages(&self, id: &str) -> Result<u32> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM attempts WHERE job_id = ?1 AND result = 'outage'",
                params![id],
                |r| r.get(0),
            )
        })
    }

    /// Records that vSphere itself was unavailable during the job's current attempt (503, a
    /// dropped connection: `ErrorClass::RetryLater`): nobody's fault, so the attempt does not
    /// count against `max_attempts`, the VM's failure count is left as it was (no quarantine),
    /// and the job is queued again with the VM released. `false` if the job is no longer active.
    pub fn outage(&self, id: &str, error: &str) -> Result<bool> {
        self.tx(|tx| {
            let now = now_ms();
            let row: Option<(JobState, u32)> = tx
                .query_row(
                    "SELECT state, attempts FROM jobs WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((state, attempts)) = row else {
                return Ok(false);
            };
            if !state.is_active() {
                return Ok(false);
            }
            exec(
                tx,
                "UPDATE attempts SET ended_ms = ?1, result = 'outage', error = ?2 \
                 WHERE job_id = ?3 AND attempt = ?4",
                params![now, error, id, attempts],
            )?;
            requeue(tx, id, error, now)?;
            let note = format!(
                "attempt {attempts} cut short by a vSphere outage ({error}); queued again, \
                 not counted"
            );
            transition(tx, id, Some(state.as_str()), "queued", Some(&note), now)?;
            Ok(true)
        })
    }

    /// The event stream's position and whether `secret` is the current attempt's.
    pub fn event_auth(&self, id: &str, secret: &str) -> Result<Option<EventAuth>> {
        let hash = sha256_hex(secret);
        self.with(|c| {
            qrow(
                c,
                "SELECT event_secret_hash, event_next_seq, attempts FROM jobs WHERE id = ?1",
                params![id],
                |r| {
                    let stored: Option<String> = r.get(0)?;
                    let ok = stored.is_some_and(|s| {
                        s.len() == hash.len()
                            && s.bytes()
                                .zip(hash.bytes())
                                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                                == 0
                    });
                    Ok(EventAuth {
                        secret_ok: ok,
                        next_seq: r.get::<_, i64>(1)? as u64,
                        attempt: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    pub fn set_event_next_seq(&self, id: &str, next: u64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE jobs SET event_next_seq = ?1 WHERE id = ?2",
                params![next as i64, id],
            )
            .map(drop)
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record_step(
        &self,
        id: &str,
        attempt: u32,
        step: u32,
        name: &str,
        started_ms: Option<i64>,
        duration_ms: Option<i64>,
        status: Option<i32>,
        timed_out: Option<bool>,
    ) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO step_timings (job_id, attempt, step, name, started_ms, duration_ms, \
                 status, timed_out) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT(job_id, attempt, step) DO UPDATE SET \
                 started_ms = COALESCE(excluded.started_ms, started_ms), \
                 duration_ms = COALESCE(excluded.duration_ms, duration_ms), \
                 status = COALESCE(excluded.status, status), \
                 timed_out = COALESCE(excluded.timed_out, timed_out)",
                params![
                    id,
                    attempt,
                    step,
                    name,
                    started_ms,
                    duration_ms,
                    status,
                    timed_out
                ],
            )
            .map(drop)
        })
    }

    /// Keeps the `Result` event of attempt `attempt` (outcome `success`/`failure`/`error` and the
    /// agent's reason): the job's final status says that reason when the job ends in the same
    /// state (see [`Store::finish`]).
    pub fn record_result(&self, id: &str, attempt: u32, outcome: &str, reason: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE attempts SET result_outcome = ?1, result_reason = ?2 \
                 WHERE job_id = ?3 AND attempt = ?4",
                params![outcome, reason, id, attempt],
            )
            .map(drop)
        })
    }

    /// (step, name, duration_ms, status) of a job's latest attempt.
    pub fn step_timings(&self, id: &str) -> Result<Vec<StepTiming>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT step, name, duration_ms, status FROM step_timings WHERE job_id = ?1 \
                 AND attempt = (SELECT attempts FROM jobs WHERE id = ?1) ORDER BY step",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_job as job, test_store as open};
    use super::*;

    #[test]
    fn infra_failure_requeues_then_gives_up_and_quarantines() {
        let (_d, s) = open();
        s.register_vms("4.2", &["a".into()]).unwrap();
        let id = s.insert_job(&job('a', "x")).unwrap();
        let vms = ["a".to_string()];
        s.claim("4.2", &vms, 1, "s", 0).unwrap().unwrap();
        assert_eq!(
            s.infra_failure(&id, "boom", 2, 2).unwrap(),
            AfterFailure::Requeued
        );
        assert_eq!(s.job(&id).unwrap().unwrap().state, JobState::Queued);
        // The only VM was tried, and it is the whole pool: it may be used again.
        s.claim("4.2", &vms, 1, "s", 0).unwrap().unwrap();
        assert_eq!(
            s.infra_failure(&id, "boom", 2, 2).unwrap(),
            AfterFailure::GaveUp
        );
        let j = s.job(&id).unwrap().unwrap();
        assert_eq!(j.state, JobState::Error);
        assert!(s.vms().unwrap()[0].quarantined);
        let st = s.statuses(&id).unwrap();
        assert_eq!(st.last().unwrap().state, StatusState::Error);
    }
}
