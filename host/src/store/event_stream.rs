//! The event stream's store side (contracts §1) as the ingest uses it: who may send, where the
//! stream stands, and writes that happen only while the job is live.
//!
//! Invariants: a job that is not active (queued, or ended) takes no event — its position does
//! not move and no result is recorded, so an ended job's recorded outcome is never rewritten;
//! every write names the attempt it belongs to, so a stream of an abandoned attempt changes
//! nothing of the next one; the bearer is compared as a SHA-256 hash in constant time.

use super::{exec, qrow, sha256_hex, Store};
use crate::domain::JobState;
use crate::Result;
use rusqlite::{params, OptionalExtension};

/// What the ingest needs to know before it reads a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventAccess {
    /// The job is between claim and end (its attempt may stream).
    pub live: bool,
    /// The job ended (`success`, `failure`, `error`, `canceled`).
    pub ended: bool,
    /// The bearer is the current attempt's secret.
    pub secret_ok: bool,
    /// The next `seq` to append.
    pub next_seq: u64,
    /// The current attempt's number.
    pub attempt: u32,
}

/// `state IN (…)` over the active states (the one list, `JobState::ACTIVE`).
fn active_states() -> String {
    let names: Vec<String> = JobState::ACTIVE
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    names.join(", ")
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Store {
    /// The stream's access for `secret`; `None` for an unknown job.
    pub fn event_access(&self, id: &str, secret: &str) -> Result<Option<EventAccess>> {
        let hash = sha256_hex(secret);
        self.with(|c| {
            qrow(
                c,
                "SELECT state, event_secret_hash, event_next_seq, attempts FROM jobs WHERE id = ?1",
                params![id],
                |r| {
                    let state: JobState = r.get(0)?;
                    let stored: Option<String> = r.get(1)?;
                    Ok(EventAccess {
                        live: state.is_active(),
                        ended: state.is_terminal(),
                        secret_ok: stored.is_some_and(|s| same(&s, &hash)),
                        next_seq: r.get::<_, i64>(2)? as u64,
                        attempt: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Moves attempt `attempt`'s position to `next`, only while the job is active in that
    /// attempt; `false` (nothing changed) once it ended or moved on.
    pub fn advance_events(&self, id: &str, attempt: u32, next: u64) -> Result<bool> {
        let sql = format!(
            "UPDATE jobs SET event_next_seq = ?1 WHERE id = ?2 AND attempts = ?3 \
             AND event_secret_hash IS NOT NULL AND state IN ({})",
            active_states()
        );
        self.with(|c| exec(c, &sql, params![next as i64, id, attempt]).map(|n| n == 1))
    }

    /// Keeps attempt `attempt`'s `Result` event (outcome and reason), only while the job is
    /// active in that attempt and the attempt has not ended; `false` otherwise.
    pub fn record_live_result(
        &self,
        id: &str,
        attempt: u32,
        outcome: &str,
        reason: &str,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE attempts SET result_outcome = ?1, result_reason = ?2 \
             WHERE job_id = ?3 AND attempt = ?4 AND ended_ms IS NULL \
             AND EXISTS (SELECT 1 FROM jobs WHERE id = ?3 AND attempts = ?4 AND state IN ({}))",
            active_states()
        );
        self.with(|c| exec(c, &sql, params![outcome, reason, id, attempt]).map(|n| n == 1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_job as job, test_store as open};
    use crate::domain::JobState;

    #[test]
    fn an_ended_job_takes_no_position_and_no_result_and_its_secret_is_gone() {
        let (_d, s) = open();
        s.register_vms("4.2", &["a".into()]).unwrap();
        let id = s.insert_job(&job('a', "x")).unwrap();
        let c = s
            .claim("4.2", &["a".to_string()], 1, "sekrit", 0)
            .unwrap()
            .unwrap();
        let a = s.event_access(&id, "sekrit").unwrap().unwrap();
        assert!(a.live && a.secret_ok && !a.ended);
        assert!(s.advance_events(&id, c.attempt, 3).unwrap());
        assert!(s
            .record_live_result(&id, c.attempt, "failure", "step 2 failed")
            .unwrap());
        assert!(s.finish(&id, JobState::Failure, "done", true).unwrap());
        let a = s.event_access(&id, "sekrit").unwrap().unwrap();
        assert!(a.ended && !a.live && !a.secret_ok, "{a:?}");
        assert!(!s.advance_events(&id, c.attempt, 9).unwrap());
        assert!(!s
            .record_live_result(&id, c.attempt, "success", "forged")
            .unwrap());
        assert_eq!(s.event_access(&id, "x").unwrap().unwrap().next_seq, 3);
    }
}
