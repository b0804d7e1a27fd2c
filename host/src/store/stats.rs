//! Read-only aggregates for `/metrics` and `/readyz`: jobs ended by outcome and reason, their
//! durations and the steps' durations as histograms, queue depths and the oldest queued job,
//! VMs by pool and state, unposted statuses. Every query is a scan of one table or index, cheap
//! at this store's sizes (thousands of jobs), and runs at scrape time so the figures survive a
//! restart and count what other processes (the CLI) did.
//!
//! Invariant: nothing here writes.

use super::{qrow, qrows, Store};
use crate::metrics::{Histogram, BUCKETS};
use crate::Result;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One histogram row: a label value and its cumulative bucket counts.
fn histogram_sql(select_label: &str, from_where: &str, seconds: &str) -> String {
    let mut sql = format!("SELECT {select_label}, COUNT(*), COALESCE(SUM({seconds}), 0.0)");
    for b in BUCKETS {
        let _ = write!(
            sql,
            ", COALESCE(SUM(CASE WHEN {seconds} <= {b:?} THEN 1 ELSE 0 END), 0)"
        );
    }
    let _ = write!(sql, " {from_where} GROUP BY 1");
    sql
}

fn histogram_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Histogram)> {
    let mut h = Histogram {
        count: r.get::<_, i64>(1)?.max(0) as u64,
        sum: r.get(2)?,
        ..Histogram::default()
    };
    for (i, b) in h.buckets.iter_mut().enumerate() {
        *b = r.get::<_, i64>(3 + i)?.max(0) as u64;
    }
    Ok((r.get(0)?, h))
}

impl Store {
    /// Ended jobs by (terminal state, reason).
    pub fn ended_jobs(&self) -> Result<Vec<(String, String, u64)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT state, reason, COUNT(*) FROM jobs \
                 WHERE state IN ('success', 'failure', 'error', 'canceled') GROUP BY state, reason",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64)),
            )
        })
    }

    /// Ended jobs' durations (queued to ended, seconds) by terminal state.
    pub fn job_durations(&self) -> Result<BTreeMap<String, Histogram>> {
        let sql = histogram_sql(
            "state",
            "FROM jobs WHERE state IN ('success', 'failure', 'error', 'canceled')",
            "((updated_ms - created_ms) / 1000.0)",
        );
        self.with(|c| Ok(qrows(c, &sql, [], histogram_row)?.into_iter().collect()))
    }

    /// Finished steps' durations (seconds) by step name, over every attempt.
    pub fn step_durations(&self) -> Result<BTreeMap<String, Histogram>> {
        let sql = histogram_sql(
            "name",
            "FROM step_timings WHERE duration_ms IS NOT NULL AND name != ''",
            "(duration_ms / 1000.0)",
        );
        self.with(|c| Ok(qrows(c, &sql, [], histogram_row)?.into_iter().collect()))
    }

    /// Per version (`None`: not resolved yet): queued jobs and the oldest one's `created_ms`.
    pub fn queue_ages(&self) -> Result<Vec<(Option<String>, u64, i64)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT version, COUNT(*), MIN(created_ms) FROM jobs WHERE state = 'queued' \
                 GROUP BY version",
                [],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get(2)?)),
            )
        })
    }

    /// Commit statuses waiting to be posted (the outbox's backlog): each job's newest unposted
    /// status (an older one is superseded, never posted).
    pub fn statuses_unposted(&self) -> Result<u64> {
        self.with(|c| {
            qrow(
                c,
                "SELECT COUNT(*) FROM statuses s WHERE s.posted = 0 AND s.id = \
                 (SELECT MAX(s2.id) FROM statuses s2 WHERE s2.job_id = s.job_id)",
                [],
                |r| Ok(r.get::<_, i64>(0)?.max(0) as u64),
            )
        })
    }

    /// Whether the store answers a read (liveness and readiness).
    pub fn ping(&self) -> Result<()> {
        self.with(|c| qrow(c, "SELECT 1", [], |_| Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_job, test_store};
    use crate::domain::JobState;

    #[test]
    fn empty_store_has_no_rows_but_answers() {
        let (_d, s) = test_store();
        s.ping().unwrap();
        assert!(s.ended_jobs().unwrap().is_empty());
        assert!(s.job_durations().unwrap().is_empty());
        assert!(s.step_durations().unwrap().is_empty());
        assert_eq!(s.statuses_unposted().unwrap(), 0);
    }

    #[test]
    fn an_ended_job_is_counted_by_outcome_and_reason_with_its_duration() {
        let (_d, s) = test_store();
        let id = s.insert_job(&test_job('a', "main")).unwrap();
        let queued = s.queue_ages().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!((queued[0].0.as_deref(), queued[0].1), (Some("4.2"), 1));
        s.request_cancel(&id, "test").unwrap();
        assert_eq!(s.job(&id).unwrap().unwrap().state, JobState::Canceled);
        assert_eq!(
            s.ended_jobs().unwrap(),
            vec![("canceled".into(), "push".into(), 1)]
        );
        let d = s.job_durations().unwrap();
        let h = &d["canceled"];
        assert_eq!(h.count, 1);
        assert_eq!(h.buckets[h.buckets.len() - 1], 1, "cumulative buckets");
        assert!(s.queue_ages().unwrap().is_empty());
        assert_eq!(
            s.statuses_unposted().unwrap(),
            1,
            "the canceled status waits"
        );
    }
}
