//! The durable store: one SQLite file (WAL) holding everything the host must not forget, and
//! the only place in the host that speaks SQL.
//!
//! Tables, each owned by one file here:
//! - [`schema`]: the numbered migrations that create every table (`PRAGMA user_version`).
//! - [`ingest`]: `deliveries` (`X-GitHub-Delivery` ids), `fork_approvals` (one fork commit
//!   approved by one login), the group-commit writer and the WAL checkpoints.
//! - [`jobs`]: `jobs` (FIFO by `seq`) and `transitions` (every state change with its time);
//!   creating, advancing, requeuing, canceling and finishing a job.
//! - [`vms`]: `vms` (leases, failure counts, quarantine, rotation reservations), `pools` (each
//!   version's golden snapshot) and `rotation_runs`: one VM, one lease, in one file.
//! - [`attempts`]: `attempts` (one row per try of a job on a VM: `done`, `infra`, `outage`,
//!   `canceled`, and the `Result` event the agent relayed), `step_timings`, the event stream's
//!   authentication and position.
//! - [`pages`]: read-only queries of the job pages, the JSON API and `jobs --json` (filtered
//!   pages of jobs, attempts, steps, queue places, pool states).
//! - [`event_stream`]: the event ingest's access (live, ended, bearer) and its writes that
//!   happen only while the job is active in that attempt.
//! - [`outbox`]: `statuses` (commit statuses still to post) and `notify_meta`/`notify_outbox`
//!   (Slack messages still to send).
//! - [`checks`]: `check_meta`, `check_runs` and `check_updates` (the check-run outbox,
//!   contracts §10) and re-runs (a new job like an earlier one).
//! - [`cells`]: `job_cells`, `job_requests`, `pr_labels`: the matrix cell each job runs, what a
//!   placeholder asks for, and expanding a placeholder into one job per cell (issue 20).
//! - [`backup`]: `sdci-host backup FILE`, SQLite's online backup of the live database.
//! - [`existing`]: opening a store that must exist, without migrating (the CLI).
//! - [`stats`]: read-only aggregates for `/metrics` and `/readyz` (no table of its own).
//! - [`meta`]: `host_meta` (the instance id written into VM leases).
//! - [`test_results`]: `test_results`, `result_sets`, `result_files` (a job's test cases, the
//!   notes of reading them, its results archive's members; a test's history by its key).
//! - [`scenarios`]: `scenario_snapshots` (each built matrix scenario's current snapshot per
//!   pool, issue 20).
//! - [`stages`]: `job_stages`, `stage_snapshots`, `stage_reruns`, `vm_holds`, `hold_requests`
//!   (issue 18: stages, the provisioned snapshot, re-runs from it, held VMs).
//!
//! Invariants:
//! - No SQL outside this module: the rest of the host calls typed methods on [`Store`].
//! - Every change that must be atomic is one `BEGIN IMMEDIATE` transaction: a delivery and its
//!   job (and the superseding of older jobs); a claim (job → assigned, VM leased); an ending (job
//!   terminal, lease released, final status queued in the outbox). So a crash leaves either the
//!   whole change or none of it, and two processes can never lease one VM twice.
//! - A job in a terminal state always has a terminal status in the outbox: no commit stays
//!   `pending` once its job has ended, whatever happens to the `sdci-agent` calls afterwards.
//! - Columns are read into typed values ([`JobState`], `JobId`, `CommitSha`, `RepoName`,
//!   `Reason`): a value that does not parse is an error naming the column, never a guess.

mod attempts;
mod backup;
mod cells;
mod checks;
mod event_stream;
mod existing;
mod ingest;
mod jobs;
mod meta;
mod outbox;
mod pages;
mod scenarios;
mod schema;
mod stages;
mod stats;
mod test_results;
mod vms;

pub use attempts::{AfterFailure, AttemptEnd, EventAuth, LaunchState, StepTiming};
pub use backup::BackupReport;
pub use cells::{Expansion, JobCell, NewCell};
pub use checks::{CheckPhase, CheckUpdateRow, PendingCheck, Rerun};
pub use event_stream::EventAccess;
pub use ingest::{Delivery, ForkApproval, Ingest, IngestWriter};
pub use jobs::{JobRow, NewJob, Transition};
pub use outbox::{NotifyCounts, NotifyState, PendingStatus, PostState, StatusRow};
pub use pages::{AttemptRow, JobFilter, JobPage, PoolVm, QueueSpot, StepRow, MAX_PAGE};
pub use stages::{Hold, RerunClone, RerunFrom, RerunLink, StageSnapshot};
pub use test_results::{HistoryRow, ResultFile, ResultSet, TestRow};
pub use vms::{Claim, RotationRun, VmRow};

use crate::domain::JobState;
use crate::{HostError, Result};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;

/// The store. One connection behind a mutex: every operation is short, and SQLite serializes
/// writers anyway. Other processes (the CLI) open their own [`Store`] on the same file.
pub struct Store {
    conn: Mutex<Connection>,
    path: std::path::PathBuf,
}

/// Another connection to the store's file (the checkpoint thread), with the store's busy
/// timeout. It applies no migrations: the [`Store`] has.
fn side_connection(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(c)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| HostError::io(format!("creating {}", dir.display()), e))?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Savepoints (the group commit) journal pages; keep that journal in memory, not in a
        // temporary file. A larger page cache keeps the hot indexes in memory.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -16_000)?;
        // Checkpoints on commit only as a fallback under constant load: the ingest writer
        // checkpoints whenever it is idle (see `ingest_writer`).
        conn.pragma_update(None, "wal_autocheckpoint", 8000)?;
        // A WAL grown by a burst is cut back to this after it is reset.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn, path)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(f(&mut conn)?)
    }

    fn tx<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }
}

/// `execute` through the statement cache (the webhook path runs the same few statements often).
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// Every row of a query, through the statement cache.
fn qrows<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    c.prepare_cached(sql)?.query_map(p, f)?.collect()
}

/// `query_row` through the statement cache.
fn qrow<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// A text column parsed into `T` (a protocol id, a reason): a value that does not parse is a
/// conversion error naming the column, never a silent default.
fn parsed<T>(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: String = r.get(idx)?;
    text.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("column {idx}: {e}").into(),
        )
    })
}

impl ToSql for JobState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for JobState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        JobState::parse(s).ok_or_else(|| FromSqlError::Other(format!("job state {s:?}").into()))
    }
}

#[cfg(test)]
fn test_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let s = Store::open(&dir.path().join("db.sqlite3")).expect("a fresh store opens");
    (dir, s)
}

#[cfg(test)]
fn test_job(sha_digit: char, branch: &str) -> NewJob {
    NewJob {
        repo: "o/r".parse().expect("a valid repository"),
        sha: sha_digit
            .to_string()
            .repeat(40)
            .parse()
            .expect("a valid sha"),
        reason: sdci_protocol::Reason::Push,
        branch: Some(branch.into()),
        supersede_key: Some(format!("o/r@{branch}")),
        clone_url: "https://example/o/r.git".into(),
        version: Some("4.2".into()),
        snapshot: None,
        update_first: false,
        commit_author: None,
        commit_subject: None,
    }
}
