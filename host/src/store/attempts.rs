//! Attempts: the `attempts` and `step_timings` tables and the event stream's position. One row
//! per try of a job on a VM, ended as [`AttemptEnd`]; an infrastructure failure (counted against
//! `max_attempts`, the VM's failures grow towards quarantine), or a try that was nobody's fault
//! (a vSphere outage, a host restart, a VM another instance leased: counted against neither);
//! the `Result` event the agent relayed; the per-attempt event secret (stored as a SHA-256 hash,
//! compared in constant time); and what finding a running attempt again after a restart needs
//! (the guest pid of `sdci-dom0 launch`, its deadline, its exit code once known).

use super::checks::{enqueue_check, CheckPhase};
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
    /// `sdci-host` restarted before the attempt reached `sdci-dom0 launch`: counts against
    /// nothing (a restart is nobody's fault).
    Restart,
    /// The VM turned out to be leased by another `sdci-host` instance: counts against nothing.
    Yielded,
}

impl AttemptEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Infra => "infra",
            Self::Outage => "outage",
            Self::Canceled => "canceled",
            Self::Restart => "restart",
            Self::Yielded => "yielded",
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

/// Where the current attempt's `sdci-dom0 launch` is, for re-adopting it after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchState {
    pub attempt: u32,
    /// The guest pid, once `launch` started.
    pub pid: Option<i64>,
    /// When `launch` must have ended (the job file's deadline), Unix ms.
    pub run_deadline_ms: Option<i64>,
    /// `launch`'s exit code, once seen: the attempt's verdict is known.
    pub exit: Option<i32>,
}

/// A step's timing: (step, name, duration_ms, exit status).
pub type StepTiming = (u32, String, Option<i64>, Option<i32>);

impl Store {
    /// Records an infrastructure failure of the job's current attempt: the VM's failure count
    /// grows (quarantine after `quarantine_after` in a row; not for an attempt on a linked clone,
    /// whose slot's VM was never touched), the lease is released, and the job is
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
            // An attempt on a linked clone (contracts §12) never touched its slot's VM: the
            // failure is the clone's (destroyed at the end), not counted against the slot.
            let on_clone: bool = tx
                .query_row(
                    "SELECT clone_vm IS NOT NULL FROM attempts WHERE job_id = ?1 AND attempt = ?2",
                    params![id, attempts],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            if let Some(vm) = vm.as_ref().filter(|_| !on_clone) {
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
            exec(
                tx,
                "UPDATE jobs SET not_before_ms = NULL WHERE id = ?1",
                params![id],
            )?;
            let note = format!("attempt {attempts} failed ({error}); queued again");
            transition(tx, id, Some(state.as_str()), "queued", Some(&note), now)?;
            let desc = format!(
                "retrying on another VM (attempt {} of {max_attempts})",
                failed + 1
            );
            enqueue_status(tx, id, StatusState::Pending, &desc, now)?;
            enqueue_check(tx, id, CheckPhase::Queued, &format!("{note}; {desc}"), now)?;
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
    /// and the job is queued again with the VM released at once; no VM is claimed for it before
    /// `not_before_ms` (the outage backoff). `false` if the job is no longer active.
    pub fn outage(&self, id: &str, error: &str, not_before_ms: i64) -> Result<bool> {
        let note = |attempt: u32| {
            format!(
                "attempt {attempt} cut short by a vSphere outage ({error}); queued again, \
                 not counted"
            )
        };
        self.requeue_uncounted(id, AttemptEnd::Outage, error, &note, Some(not_before_ms))
    }

    /// Records that `sdci-host` restarted while the job's attempt had not reached `sdci-dom0
    /// launch` (or launch's pid was never stored): nobody's fault, like an outage, but without
    /// a pause. The lease is released; the caller has powered the VM off.
    pub fn restarted(&self, id: &str, error: &str) -> Result<bool> {
        let note = |attempt: u32| {
            format!("attempt {attempt} ended by a restart ({error}); queued again, not counted")
        };
        self.requeue_uncounted(id, AttemptEnd::Restart, error, &note, None)
    }

    /// Records that the job's VM is leased by another `sdci-host` instance (found when writing
    /// the lease on the VM): the claim is undone, counted against nothing.
    pub fn yielded(&self, id: &str, error: &str) -> Result<bool> {
        let note = |attempt: u32| {
            format!("attempt {attempt} yielded its VM ({error}); queued again, not counted")
        };
        self.requeue_uncounted(id, AttemptEnd::Yielded, error, &note, None)
    }

    fn requeue_uncounted(
        &self,
        id: &str,
        end: AttemptEnd,
        error: &str,
        note: &dyn Fn(u32) -> String,
        not_before_ms: Option<i64>,
    ) -> Result<bool> {
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
                "UPDATE attempts SET ended_ms = ?1, result = ?2, error = ?3 \
                 WHERE job_id = ?4 AND attempt = ?5",
                params![now, end.as_str(), error, id, attempts],
            )?;
            requeue(tx, id, error, now)?;
            exec(
                tx,
                "UPDATE jobs SET not_before_ms = ?1 WHERE id = ?2",
                params![not_before_ms, id],
            )?;
            transition(
                tx,
                id,
                Some(state.as_str()),
                "queued",
                Some(&note(attempts)),
                now,
            )?;
            Ok(true)
        })
    }

    /// Records that the attempt's `sdci-dom0 launch` started as guest process `pid`, to end by
    /// `run_deadline_ms`, and queues the `pending` "running" status (the host posts it, so the
    /// VM's token needs no `statuses` permission), in one transaction.
    pub fn launch_started(
        &self,
        id: &str,
        pid: i64,
        run_deadline_ms: i64,
        running_description: &str,
    ) -> Result<()> {
        self.tx(|tx| {
            let now = now_ms();
            exec(
                tx,
                "UPDATE jobs SET pid = ?1, updated_ms = ?2 WHERE id = ?3",
                params![pid, now, id],
            )?;
            exec(
                tx,
                "UPDATE attempts SET run_deadline_ms = ?1 WHERE job_id = ?2 \
                 AND attempt = (SELECT attempts FROM jobs WHERE id = ?2)",
                params![run_deadline_ms, id],
            )?;
            enqueue_status(tx, id, StatusState::Pending, running_description, now)?;
            enqueue_check(tx, id, CheckPhase::InProgress, running_description, now)
        })
    }

    /// Records `sdci-dom0 launch`'s exit code for the current attempt: its verdict is known
    /// and is never run again.
    pub fn launch_exited(&self, id: &str, code: i32) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE attempts SET launch_exit = ?1 WHERE job_id = ?2 \
                 AND attempt = (SELECT attempts FROM jobs WHERE id = ?2)",
                params![code, id],
            )
            .map(drop)
        })
    }

    /// Where the current attempt's `launch` is (`None`: no such job or no attempt yet).
    pub fn launch_state(&self, id: &str) -> Result<Option<LaunchState>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT j.attempts, j.pid, a.run_deadline_ms, a.launch_exit FROM jobs j \
                 JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempts WHERE j.id = ?1",
                params![id],
                |r| {
                    Ok(LaunchState {
                        attempt: r.get(0)?,
                        pid: r.get(1)?,
                        run_deadline_ms: r.get(2)?,
                        exit: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    /// The `Result` event the current attempt relayed: (outcome, reason).
    pub fn relayed_result(&self, id: &str) -> Result<Option<(String, String)>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT a.result_outcome, a.result_reason FROM jobs j JOIN attempts a \
                 ON a.job_id = j.id AND a.attempt = j.attempts WHERE j.id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                    ))
                },
            )
            .optional()
            .map(|row| match row {
                Some((Some(o), Some(r))) => Some((o, r)),
                _ => None,
            })
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
