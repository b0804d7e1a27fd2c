//! The durable store: one SQLite file (WAL) holding everything the host must not forget.
//!
//! Tables: `jobs` (FIFO by `seq`), `transitions` (every state change with its time), `deliveries`
//! (`X-GitHub-Delivery` ids), `vms` (leases, failure counts, quarantine), `attempts` (one row per
//! try of a job on a VM: its result — `done`, `infra`, `outage` (vSphere unavailable, not
//! counted), `canceled` — and the `Result` event the agent relayed), `step_timings`, `pools`
//! (each version's golden snapshot), `statuses` (the outbox of commit statuses still to post),
//! and the tables of `notify` (`notify_meta`, `notify_outbox`) and `rotation` (`rotation_runs`).
//! Every table comes from the numbered migrations below; no module creates one elsewhere.
//!
//! Invariants:
//! - Every change that must be atomic is one `BEGIN IMMEDIATE` transaction: a delivery and its job
//!   (and the superseding of older jobs); a claim (job → assigned, VM leased); an ending (job
//!   terminal, lease released, final status queued in the outbox). So a crash leaves either the
//!   whole change or none of it, and two processes can never lease one VM twice.
//! - A job in a terminal state always has a terminal status in the outbox: no commit stays
//!   `pending` once its job has ended, whatever happens to the `sdci-agent` calls afterwards.
//! - Schema changes are numbered migrations applied in order (`PRAGMA user_version`).

use crate::{now_ms, HostError, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Job states, as stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Assigned,
    Booting,
    Running,
    Finishing,
    Success,
    Failure,
    Error,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        Self::Queued,
        Self::Assigned,
        Self::Booting,
        Self::Running,
        Self::Finishing,
        Self::Success,
        Self::Failure,
        Self::Error,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Booting => "booting",
            Self::Running => "running",
            Self::Finishing => "finishing",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failure | Self::Error | Self::Canceled
        )
    }

    /// Holding a VM: between claim and the end of the attempt.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Assigned | Self::Booting | Self::Running | Self::Finishing
        )
    }

    /// The GitHub status state a terminal job reports (`canceled` is reported as `error`).
    pub fn status_state(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error | Self::Canceled => "error",
            _ => "pending",
        }
    }
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub seq: i64,
    pub id: String,
    pub repo: String,
    pub sha: String,
    pub reason: String,
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

const JOB_COLS: &str = "seq, id, repo, sha, reason, branch, supersede_key, clone_url, version, \
    snapshot, update_first, state, note, attempts, vm, pid, event_next_seq, cancel_requested, \
    created_ms, updated_ms, deadline_ms, commit_author, commit_subject";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let state: String = r.get(11)?;
    Ok(JobRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        repo: r.get(2)?,
        sha: r.get(3)?,
        reason: r.get(4)?,
        branch: r.get(5)?,
        supersede_key: r.get(6)?,
        clone_url: r.get(7)?,
        version: r.get(8)?,
        snapshot: r.get(9)?,
        update_first: r.get(10)?,
        state: JobState::parse(&state).unwrap_or(JobState::Error),
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
/// A step's timing: (step, name, duration_ms, exit status).
pub type StepTiming = (u32, String, Option<i64>, Option<i32>);

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub repo: String,
    pub sha: String,
    pub reason: String,
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

/// A delivery to store.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `X-GitHub-Delivery`, if any.
    pub id: Option<String>,
    pub event: String,
    pub job: NewJob,
}

type Reply = tokio::sync::oneshot::Sender<std::result::Result<Ingest, String>>;

/// The handle to the group-commit writer ([`Store::ingest_writer`]).
#[derive(Clone)]
pub struct IngestWriter {
    tx: tokio::sync::mpsc::Sender<(Delivery, Reply)>,
}

impl IngestWriter {
    /// Stores one delivery; returns once its transaction has committed.
    pub async fn ingest(&self, d: Delivery) -> std::result::Result<Ingest, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((d, tx))
            .await
            .map_err(|_| "the ingest writer has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the ingest writer has stopped".to_owned())?
    }
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingest {
    Created {
        job_id: String,
        /// Queued jobs ended as superseded.
        superseded: Vec<String>,
        /// Running jobs asked to stop (when `supersede_running`).
        stop_running: Vec<String>,
    },
    /// This `X-GitHub-Delivery` was seen before: nothing new.
    DuplicateDelivery,
    /// A live or finished job already covers this repo, sha and reason.
    DuplicateJob { job_id: String },
}

/// A successful claim: the job now holds the VM.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: JobRow,
    pub vm: String,
    pub attempt: u32,
}

/// A VM as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub name: String,
    pub pool: String,
    pub job_id: Option<String>,
    pub consecutive_failures: u32,
    pub quarantined: bool,
    pub last_error: Option<String>,
}

impl VmRow {
    /// `quarantined`, `leased` (a job or a rotation holds it) or `free`.
    pub fn state(&self) -> &'static str {
        if self.quarantined {
            "quarantined"
        } else if self.job_id.is_some() {
            "leased"
        } else {
            "free"
        }
    }
}

/// A status waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStatus {
    pub id: i64,
    pub job_id: String,
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub description: String,
}

/// What an infrastructure failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    Requeued,
    GaveUp,
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    repo TEXT NOT NULL,
    sha TEXT NOT NULL,
    reason TEXT NOT NULL,
    branch TEXT,
    supersede_key TEXT,
    clone_url TEXT NOT NULL,
    version TEXT,
    snapshot TEXT,
    update_first INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    note TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    vm TEXT,
    pid INTEGER,
    event_secret_hash TEXT,
    event_next_seq INTEGER NOT NULL DEFAULT 0,
    cancel_requested TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    deadline_ms INTEGER
);
CREATE INDEX jobs_by_state ON jobs(state, version, seq);
CREATE INDEX jobs_by_commit ON jobs(repo, sha, reason);
CREATE INDEX jobs_by_key ON jobs(supersede_key, state);
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    note TEXT
);
CREATE INDEX transitions_by_job ON transitions(job_id, id);
CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    job_id TEXT
) WITHOUT ROWID;
CREATE TABLE vms (
    name TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    job_id TEXT,
    leased_ms INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE attempts (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    vm TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    result TEXT,
    error TEXT,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE step_timings (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    started_ms INTEGER,
    duration_ms INTEGER,
    status INTEGER,
    timed_out INTEGER,
    PRIMARY KEY (job_id, attempt, step)
);
CREATE TABLE pools (
    version TEXT PRIMARY KEY,
    golden_snapshot TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE statuses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    posted INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX statuses_unposted ON statuses(posted, job_id, id);
"#,
    r#"
-- 2: the Result event an attempt relayed (the agent's verdict and reason), for the final status.
ALTER TABLE attempts ADD COLUMN result_outcome TEXT;
ALTER TABLE attempts ADD COLUMN result_reason TEXT;
"#,
    r#"
-- 3: the commit's author and subject from the webhook, stored with the job (notifications).
ALTER TABLE jobs ADD COLUMN commit_author TEXT;
ALTER TABLE jobs ADD COLUMN commit_subject TEXT;
"#,
    r#"
-- 4: the notification outbox (`notify`) and rotation runs (`rotation`), which earlier versions
-- created outside the migrations: IF NOT EXISTS keeps such databases as they are. Commit
-- details recorded in the old `notify_commits` table move into the job's columns.
CREATE TABLE IF NOT EXISTS notify_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notify_outbox (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS notify_outbox_unsent ON notify_outbox(sent, created_ms);
CREATE TABLE IF NOT EXISTS notify_commits (job_id TEXT PRIMARY KEY, author TEXT, subject TEXT);
UPDATE jobs SET
    commit_author = COALESCE(commit_author,
        (SELECT author FROM notify_commits n WHERE n.job_id = jobs.id)),
    commit_subject = COALESCE(commit_subject,
        (SELECT subject FROM notify_commits n WHERE n.job_id = jobs.id))
WHERE id IN (SELECT job_id FROM notify_commits);
DROP TABLE notify_commits;
CREATE TABLE IF NOT EXISTS rotation_runs (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    from_snapshot TEXT NOT NULL,
    base TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    result TEXT,
    error TEXT
);
"#,
    r#"
-- 5: a rotation waiting for a busy VM reserves it: `claim` then gives the VM to no job while
-- that rotation is running, so a busy pool cannot starve the rotation.
ALTER TABLE vms ADD COLUMN reserved_by TEXT;
"#,
];

/// WAL size past which the ingest writer resets it (see [`Store::bound_wal`]).
const WAL_RESET_BYTES: u64 = 64 * 1024 * 1024;

/// The store. One connection behind a mutex: every operation is short, and SQLite serializes
/// writers anyway. Other processes (the CLI) open their own connection to the same file.
pub struct Store {
    conn: Mutex<Connection>,
    path: std::path::PathBuf,
}

/// Another connection to the store's file (the checkpoint thread, the notifier, rotations, the
/// CLI's tools), with the store's busy timeout. It applies no migrations: open the [`Store`]
/// first.
pub fn side_connection(path: &Path) -> Result<Connection> {
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
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(HostError::Invalid(format!(
                "the database {} has schema version {version}, newer than this sdci-host knows \
                 ({}); run the newer sdci-host",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
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

    /// Records a delivery and, unless it or its commit is already known, creates its job and
    /// supersedes older queued jobs with the same key. One transaction.
    pub fn ingest(
        &self,
        delivery_id: Option<&str>,
        event: &str,
        job: &NewJob,
        supersede_running: bool,
    ) -> Result<Ingest> {
        self.tx(|tx| ingest_one(tx, delivery_id, event, job, supersede_running))
    }

    /// Several deliveries in one transaction (group commit), each in its own savepoint so one
    /// failing item does not undo the others. Results are in input order.
    pub fn ingest_batch(
        &self,
        items: &[Delivery],
        supersede_running: bool,
    ) -> Result<Vec<std::result::Result<Ingest, String>>> {
        self.with(|c| {
            let mut tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                let sp = tx.savepoint()?;
                match ingest_one(&sp, it.id.as_deref(), &it.event, &it.job, supersede_running) {
                    Ok(r) => {
                        sp.commit()?;
                        out.push(Ok(r));
                    }
                    // Dropping the savepoint rolls this item back.
                    Err(e) => out.push(Err(e.to_string())),
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Starts the group-commit writer: a thread that takes every delivery waiting at that moment
    /// and stores them in one transaction, answering each caller after the commit.
    pub fn ingest_writer(self: &Arc<Self>, supersede_running: bool) -> IngestWriter {
        // Bounded: a flood of deliveries waits for the writer instead of growing memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Delivery, Reply)>(4096);
        let store = self.clone();
        let checkpoints = self.checkpointer();
        std::thread::Builder::new()
            .name("sdci-ingest".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < 512 {
                        match rx.try_recv() {
                            Ok(x) => batch.push(x),
                            Err(_) => break,
                        }
                    }
                    let (items, replies): (Vec<Delivery>, Vec<Reply>) = batch.into_iter().unzip();
                    match store.ingest_batch(&items, supersede_running) {
                        Ok(results) => {
                            for (r, reply) in results.into_iter().zip(replies) {
                                let _ = reply.send(r);
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.to_string()));
                            }
                        }
                    }
                    // Idle now: let the checkpoint thread copy the WAL back (a full copy lets
                    // the next commit reuse the WAL from its start). Bound the WAL ourselves
                    // only if a steady stream never leaves it time to finish.
                    if rx.is_empty() {
                        if let Some(c) = &checkpoints {
                            let _ = c.try_send(());
                        }
                    }
                    if checkpoints.is_some() {
                        store.bound_wal();
                    }
                }
            })
            .expect("the operating system can start a thread");
        IngestWriter { tx }
    }

    /// Starts the checkpoint thread: its own connection runs PASSIVE checkpoints (which never
    /// block a writer) when the ingest writer goes idle, and at least every 2 seconds for the
    /// other writes; this connection then stops checkpointing on commit, so no delivery waits
    /// behind a checkpoint's fsync. The thread ends with the ingest writer. `None` (checkpoints
    /// stay on commit) if the second connection cannot be opened.
    fn checkpointer(&self) -> Option<std::sync::mpsc::SyncSender<()>> {
        let conn = side_connection(&self.path).ok()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sdci-checkpoint".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                let every = std::time::Duration::from_secs(2);
                while !matches!(rx.recv_timeout(every), Err(RecvTimeoutError::Disconnected)) {
                    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retried later");
                    }
                }
            })
            .ok()?;
        self.with(|c| c.pragma_update(None, "wal_autocheckpoint", 0))
            .ok()?;
        Some(tx)
    }

    /// Past [`WAL_RESET_BYTES`] (a steady stream of writes never let a PASSIVE checkpoint
    /// finish), the writer itself runs a RESTART checkpoint, after which the WAL is reused from
    /// its start. Rare: it costs the deliveries waiting at that moment one checkpoint.
    fn bound_wal(&self) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_RESET_BYTES) {
            let r = self.with(|c| c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())));
            if let Err(e) = r {
                tracing::warn!(error = %e, "WAL restart checkpoint failed; retried later");
            }
        }
    }

    /// Creates a job without a delivery (manual `run`, nightly). Never deduplicated.
    pub fn insert_job(&self, job: &NewJob) -> Result<String> {
        self.tx(|tx| {
            let job_id = new_job_id(tx, &job.sha)?;
            insert_job(tx, &job_id, job, now_ms())?;
            Ok(job_id)
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>> {
        self.with(|c| {
            qrow(
                c,
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                params![id],
                job_from_row,
            )
            .optional()
        })
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

    pub fn count_deliveries(&self) -> Result<i64> {
        self.with(|c| qrow(c, "SELECT COUNT(*) FROM deliveries", [], |r| r.get(0)))
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

    /// Makes sure every VM of a pool has a row (VMs found in vSphere by prefix).
    pub fn register_vms(&self, pool: &str, names: &[String]) -> Result<()> {
        self.tx(|tx| {
            for n in names {
                exec(
                    tx,
                    "INSERT INTO vms (name, pool) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
                    params![n, pool],
                )?;
            }
            Ok(())
        })
    }

    pub fn vms(&self) -> Result<Vec<VmRow>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT name, pool, job_id, consecutive_failures, quarantined, last_error \
                 FROM vms ORDER BY pool, name",
                [],
                |r| {
                    Ok(VmRow {
                        name: r.get(0)?,
                        pool: r.get(1)?,
                        job_id: r.get(2)?,
                        consecutive_failures: r.get(3)?,
                        quarantined: r.get(4)?,
                        last_error: r.get(5)?,
                    })
                },
            )
        })
    }

    /// Lifts a VM's quarantine and clears its failure count. `false` if no such VM.
    pub fn unquarantine(&self, vm: &str) -> Result<bool> {
        self.with(|c| {
            exec(
                c,
                "UPDATE vms SET quarantined = 0, consecutive_failures = 0 WHERE name = ?1",
                params![vm],
            )
            .map(|n| n > 0)
        })
    }

    /// The pool's current golden snapshot, seeding it from the configuration the first time.
    pub fn golden_snapshot(&self, version: &str, configured: &str) -> Result<String> {
        self.tx(|tx| {
            exec(
                tx,
                "INSERT INTO pools (version, golden_snapshot, updated_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(version) DO NOTHING",
                params![version, configured, now_ms()],
            )?;
            qrow(
                tx,
                "SELECT golden_snapshot FROM pools WHERE version = ?1",
                params![version],
                |r| r.get(0),
            )
        })
    }

    pub fn set_golden_snapshot(&self, version: &str, snapshot: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO pools (version, golden_snapshot, updated_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(version) DO UPDATE SET golden_snapshot = ?2, updated_ms = ?3",
                params![version, snapshot, now_ms()],
            )
            .map(drop)
        })
    }

    /// Claims the oldest claimable queued job of `version` and a free VM for it, in one
    /// transaction. `powered_off` are the pool VMs vSphere reports powered off right now; a VM
    /// is taken only from that list, and only if no job holds it, it is not quarantined and no
    /// running rotation has reserved it (`vms.reserved_by`, see `rotation`). A job
    /// is not given a VM it already failed on while it has untried VMs left in the pool.
    /// `event_secret` is stored hashed for the attempt's event stream.
    pub fn claim(
        &self,
        version: &str,
        powered_off: &[String],
        pool_size: usize,
        event_secret: &str,
        job_deadline_ms: i64,
    ) -> Result<Option<Claim>> {
        self.tx(|tx| {
            let mut free: Vec<String> = Vec::new();
            let now = now_ms();
            for name in powered_off {
                // Reserved: a running rotation (not ended, within its deadline) waits for it.
                let ok: Option<(Option<String>, bool, bool)> = qrow(
                    tx,
                    "SELECT v.job_id, v.quarantined, EXISTS (SELECT 1 FROM rotation_runs r \
                     WHERE r.id = v.reserved_by AND r.ended_ms IS NULL AND r.deadline_ms >= ?2) \
                     FROM vms v WHERE v.name = ?1",
                    params![name, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
                if let Some((None, false, false)) = ok {
                    free.push(name.clone());
                }
            }
            if free.is_empty() {
                return Ok(None);
            }
            let queued: Vec<JobRow> = qrows(
                tx,
                &format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE state = 'queued' AND version = ?1 \
                     AND cancel_requested IS NULL ORDER BY seq"
                ),
                params![version],
                job_from_row,
            )?;
            for job in queued {
                let failed: Vec<String> = qrows(
                    tx,
                    "SELECT DISTINCT vm FROM attempts WHERE job_id = ?1 AND result = 'infra'",
                    params![job.id],
                    |r| r.get(0),
                )?;
                let untried = free.iter().find(|v| !failed.contains(v));
                let vm = match untried {
                    Some(v) => v.clone(),
                    // Every pool VM was tried: any free one will do.
                    None if failed.len() >= pool_size => free[0].clone(),
                    None => continue,
                };
                let now = now_ms();
                let attempt = job.attempts + 1;
                exec(tx,
                    "UPDATE vms SET job_id = ?1, leased_ms = ?2 WHERE name = ?3",
                    params![job.id, now, vm],
                )?;
                exec(tx,
                    "UPDATE jobs SET state = 'assigned', vm = ?1, attempts = ?2, pid = NULL, \
                     event_secret_hash = ?3, event_next_seq = 0, updated_ms = ?4, \
                     deadline_ms = ?5, note = NULL WHERE id = ?6",
                    params![
                        vm,
                        attempt,
                        sha256_hex(event_secret),
                        now,
                        job_deadline_ms,
                        job.id
                    ],
                )?;
                exec(tx,
                    "INSERT INTO attempts (job_id, attempt, vm, started_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![job.id, attempt, vm, now],
                )?;
                transition(
                    tx,
                    &job.id,
                    Some("queued"),
                    "assigned",
                    Some(&format!("attempt {attempt} on {vm}")),
                    now,
                )?;
                let job = qrow(tx,
                    &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                    params![job.id],
                    job_from_row,
                )?;
                return Ok(Some(Claim { job, vm, attempt }));
            }
            Ok(None)
        })
    }

    /// Moves an active job to another active state (booting, running, finishing).
    /// `false` if the job is no longer in an active state (ended meanwhile).
    pub fn advance(&self, id: &str, to: JobState, note: Option<&str>) -> Result<bool> {
        self.tx(|tx| {
            let from: Option<String> = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(from) = from else { return Ok(false) };
            if !JobState::parse(&from).is_some_and(JobState::is_active) {
                return Ok(false);
            }
            let now = now_ms();
            exec(
                tx,
                "UPDATE jobs SET state = ?1, updated_ms = ?2 WHERE id = ?3",
                params![to.as_str(), now, id],
            )?;
            transition(tx, id, Some(&from), to.as_str(), note, now)?;
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
        self.tx(|tx| finish_tx(tx, id, state, note, vm_ok, "done"))
    }

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
            let row: Option<(String, Option<String>, u32)> = tx
                .query_row(
                    "SELECT state, vm, attempts FROM jobs WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((state, vm, attempts)) = row else {
                return Ok(AfterFailure::GaveUp);
            };
            if !JobState::parse(&state).is_some_and(JobState::is_active) {
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
                finish_tx(tx, id, JobState::Error, &note, false, "infra")?;
                return Ok(AfterFailure::GaveUp);
            }
            requeue(tx, id, error, now)?;
            let note = format!("attempt {attempts} failed ({error}); queued again");
            transition(tx, id, Some(&state), "queued", Some(&note), now)?;
            let desc = format!(
                "retrying on another VM (attempt {} of {max_attempts})",
                failed + 1
            );
            enqueue_status(tx, id, "pending", &desc, now)?;
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
            let row: Option<(String, u32)> = tx
                .query_row(
                    "SELECT state, attempts FROM jobs WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((state, attempts)) = row else {
                return Ok(false);
            };
            if !JobState::parse(&state).is_some_and(JobState::is_active) {
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
            transition(tx, id, Some(&state), "queued", Some(&note), now)?;
            Ok(true)
        })
    }

    /// Asks a job to stop. A queued job ends at once as `canceled` (`true`); an active one gets
    /// the request recorded for its lifecycle to act on (`false`).
    pub fn request_cancel(&self, id: &str, why: &str) -> Result<Option<bool>> {
        self.tx(|tx| {
            let state: Option<String> = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(state) = state.and_then(|s| JobState::parse(&s)) else {
                return Ok(None);
            };
            if state == JobState::Queued {
                finish_tx(tx, id, JobState::Canceled, why, false, "canceled")?;
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

    /// Releases a VM's lease without touching the job (used once a VM is known off).
    pub fn release_vm(&self, vm: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE vms SET job_id = NULL, leased_ms = NULL WHERE name = ?1",
                params![vm],
            )
            .map(drop)
        })
    }

    /// The event stream's position and whether `secret` is the current attempt's.
    pub fn event_auth(&self, id: &str, secret: &str) -> Result<Option<(bool, u64, u32)>> {
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
                    Ok((ok, r.get::<_, i64>(1)? as u64, r.get(2)?))
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
                "SELECT s.id, s.job_id, j.repo, j.sha, s.state, s.description FROM statuses s \
                 JOIN jobs j ON j.id = s.job_id WHERE s.posted = 0 ORDER BY s.id",
                [],
                |r| {
                    Ok(PendingStatus {
                        id: r.get(0)?,
                        job_id: r.get(1)?,
                        repo: r.get(2)?,
                        sha: r.get(3)?,
                        state: r.get(4)?,
                        description: r.get(5)?,
                    })
                },
            )
        })
    }

    pub fn status_posted(&self, status_id: i64) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET posted = 1, tries = tries + 1 WHERE id = ?1",
                params![status_id],
            )
            .map(drop)
        })
    }

    pub fn status_failed(&self, status_id: i64, error: &str) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "UPDATE statuses SET tries = tries + 1, last_error = ?1 WHERE id = ?2",
                params![error, status_id],
            )
            .map(drop)
        })
    }

    /// Every status of a job: (state, description, posted) — 0 unposted, 1 posted, 2 skipped.
    pub fn statuses(&self, id: &str) -> Result<Vec<(String, String, i64)>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT state, description, posted FROM statuses WHERE job_id = ?1 ORDER BY id",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
    }

    /// Ids of terminal jobs that ended before `before_ms` (for log retention).
    pub fn ended_before(&self, before_ms: i64) -> Result<Vec<String>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT id FROM jobs WHERE state IN ('success','failure','error','canceled') \
                 AND updated_ms < ?1",
                params![before_ms],
                |r| r.get(0),
            )
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

fn ingest_one(
    tx: &Connection,
    delivery_id: Option<&str>,
    event: &str,
    job: &NewJob,
    supersede_running: bool,
) -> rusqlite::Result<Ingest> {
    let now = now_ms();
    if let Some(d) = delivery_id {
        let seen: Option<i64> = qrow(
            tx,
            "SELECT 1 FROM deliveries WHERE delivery_id = ?1",
            params![d],
            |r| r.get(0),
        )
        .optional()?;
        if seen.is_some() {
            return Ok(Ingest::DuplicateDelivery);
        }
    }
    let existing: Option<String> = qrow(
        tx,
        "SELECT id FROM jobs WHERE repo = ?1 AND sha = ?2 AND reason = ?3 \
         AND state != 'canceled' ORDER BY seq DESC LIMIT 1",
        params![job.repo, job.sha, job.reason],
        |r| r.get(0),
    )
    .optional()?;
    let record = |job_id: &str| -> rusqlite::Result<()> {
        if let Some(d) = delivery_id {
            exec(
                tx,
                "INSERT INTO deliveries (delivery_id, event, received_ms, job_id) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![d, event, now, job_id],
            )?;
        }
        Ok(())
    };
    if let Some(job_id) = existing {
        record(&job_id)?;
        return Ok(Ingest::DuplicateJob { job_id });
    }
    let job_id = new_job_id(tx, &job.sha)?;
    insert_job(tx, &job_id, job, now)?;
    record(&job_id)?;
    let (superseded, stop_running) = match &job.supersede_key {
        Some(key) => supersede(tx, key, &job_id, &job.sha, supersede_running, now)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok(Ingest::Created {
        job_id,
        superseded,
        stop_running,
    })
}

/// `<sha7>-<10 random hex>`, unique in the store (drawn again on the rare collision).
fn new_job_id(c: &Connection, sha: &str) -> rusqlite::Result<String> {
    let short: String = sha.chars().take(7).collect();
    loop {
        let id = format!("{short}-{}", &crate::random_hex(5));
        let taken: Option<i64> = qrow(c, "SELECT 1 FROM jobs WHERE id = ?1", params![id], |r| {
            r.get(0)
        })
        .optional()?;
        if taken.is_none() {
            return Ok(id);
        }
    }
}

fn insert_job(tx: &Connection, job_id: &str, job: &NewJob, now: i64) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO jobs (id, repo, sha, reason, branch, supersede_key, clone_url, version, \
         snapshot, update_first, state, created_ms, updated_ms, commit_author, commit_subject) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'queued', ?11, ?11, ?12, ?13)",
        params![
            job_id,
            job.repo,
            job.sha,
            job.reason,
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
    transition(tx, job_id, None, "queued", Some(&job.reason), now)?;
    enqueue_status(tx, job_id, "pending", "queued", now)
}

fn supersede(
    tx: &Connection,
    key: &str,
    new_id: &str,
    new_sha: &str,
    running_too: bool,
    now: i64,
) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
    let why = format!("superseded by {}", &new_sha[..new_sha.len().min(12)]);
    let older: Vec<(String, String)> = {
        qrows(
            tx,
            "SELECT id, state FROM jobs WHERE supersede_key = ?1 AND id != ?2 AND state IN \
             ('queued','assigned','booting','running','finishing')",
            params![key, new_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
    };
    let (mut queued, mut running) = (Vec::new(), Vec::new());
    for (id, state) in older {
        if state == "queued" {
            finish_tx(tx, &id, JobState::Canceled, &why, false, "canceled")?;
            queued.push(id);
        } else if running_too {
            exec(
                tx,
                "UPDATE jobs SET cancel_requested = ?1 WHERE id = ?2",
                params![why, id],
            )?;
            running.push(id);
        }
    }
    let _ = now;
    Ok((queued, running))
}

/// Puts an active job back in the queue and releases its VM (an infrastructure failure or a
/// vSphere outage ended its attempt); the caller records the transition.
fn requeue(tx: &Connection, id: &str, error: &str, now: i64) -> rusqlite::Result<()> {
    exec(
        tx,
        "UPDATE vms SET job_id = NULL, leased_ms = NULL WHERE job_id = ?1",
        params![id],
    )?;
    exec(
        tx,
        "UPDATE jobs SET state = 'queued', vm = NULL, pid = NULL, updated_ms = ?1, \
         note = ?2 WHERE id = ?3",
        params![now, error, id],
    )
    .map(drop)
}

fn transition(
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

fn enqueue_status(
    tx: &Connection,
    id: &str,
    state: &str,
    description: &str,
    now: i64,
) -> rusqlite::Result<()> {
    // GitHub caps descriptions at 140 characters.
    let mut d: String = description.chars().take(139).collect();
    if d.len() < description.len() {
        d.push('…');
    }
    exec(
        tx,
        "INSERT INTO statuses (job_id, state, description, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![id, state, d, now],
    )
    .map(drop)
}

fn finish_tx(
    tx: &Connection,
    id: &str,
    state: JobState,
    note: &str,
    vm_ok: bool,
    attempt_result: &str,
) -> rusqlite::Result<bool> {
    let row: Option<(String, Option<String>, u32)> = tx
        .query_row(
            "SELECT state, vm, attempts FROM jobs WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((from, vm, attempts)) = row else {
        return Ok(false);
    };
    if JobState::parse(&from).is_some_and(JobState::is_terminal) {
        return Ok(false);
    }
    let now = now_ms();
    exec(
        tx,
        "UPDATE jobs SET state = ?1, note = ?2, updated_ms = ?3, cancel_requested = NULL \
         WHERE id = ?4",
        params![state.as_str(), note, now, id],
    )?;
    exec(
        tx,
        "UPDATE attempts SET ended_ms = ?1, result = COALESCE(result, ?2), \
         error = COALESCE(error, ?3) WHERE job_id = ?4 AND attempt = ?5",
        params![now, attempt_result, note, id, attempts],
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
                && outcome == state.status_state()
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
    transition(tx, id, Some(&from), state.as_str(), Some(&note), now)?;
    let description = reason.as_deref().unwrap_or(&note);
    enqueue_status(tx, id, state.status_state(), description, now)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(sha_digit: char, branch: &str) -> NewJob {
        NewJob {
            repo: "o/r".into(),
            sha: sha_digit.to_string().repeat(40),
            reason: "push".into(),
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

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db.sqlite3")).unwrap();
        (dir, s)
    }

    fn tables(c: &Connection) -> Vec<String> {
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let rows = st.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn a_vm_reserved_by_a_running_rotation_is_given_to_no_job() {
        let (dir, s) = open();
        s.register_vms("4.2", &["a".into()]).unwrap();
        s.insert_job(&job('1', "main")).unwrap();
        let c = side_connection(&dir.path().join("db.sqlite3")).unwrap();
        c.execute(
            "INSERT INTO rotation_runs (id, version, snapshot, from_snapshot, base, owner_pid, \
             started_ms, deadline_ms) VALUES ('rotation-x', '4.2', 'update_1', 'g', 'g', 1, 0, ?1)",
            params![now_ms() + 3_600_000],
        )
        .unwrap();
        c.execute("UPDATE vms SET reserved_by = 'rotation-x'", [])
            .unwrap();
        let off = ["a".to_string()];
        assert!(
            s.claim("4.2", &off, 1, "s", i64::MAX).unwrap().is_none(),
            "claimed a VM the rotation waits for"
        );
        // Once the rotation has ended, its reservation no longer counts.
        c.execute("UPDATE rotation_runs SET ended_ms = 1", [])
            .unwrap();
        assert!(s.claim("4.2", &off, 1, "s", i64::MAX).unwrap().is_some());
    }

    #[test]
    fn the_notify_and_rotation_tables_come_from_the_numbered_migrations() {
        let (dir, _s) = open();
        let c = side_connection(&dir.path().join("db.sqlite3")).unwrap();
        let t = tables(&c);
        for want in ["notify_meta", "notify_outbox", "rotation_runs"] {
            assert!(t.contains(&want.to_owned()), "{want} missing in {t:?}");
        }
        assert!(!t.contains(&"notify_commits".to_owned()), "{t:?}");
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
    }

    #[test]
    fn a_database_whose_notify_and_rotation_tables_predate_the_migrations_keeps_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        {
            // Schema version 2, plus the tables earlier versions created on the side.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute_batch(
                "CREATE TABLE notify_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 CREATE TABLE notify_outbox (job_id TEXT PRIMARY KEY, state TEXT NOT NULL,
                     created_ms INTEGER NOT NULL, sent INTEGER NOT NULL DEFAULT 0,
                     tries INTEGER NOT NULL DEFAULT 0, last_error TEXT);
                 CREATE INDEX notify_outbox_unsent ON notify_outbox(sent, created_ms);
                 CREATE TABLE notify_commits (job_id TEXT PRIMARY KEY, author TEXT, subject TEXT);
                 CREATE TABLE rotation_runs (id TEXT PRIMARY KEY, version TEXT NOT NULL,
                     snapshot TEXT NOT NULL, from_snapshot TEXT NOT NULL, base TEXT NOT NULL,
                     owner_pid INTEGER NOT NULL, started_ms INTEGER NOT NULL,
                     deadline_ms INTEGER NOT NULL, ended_ms INTEGER, result TEXT, error TEXT);
                 INSERT INTO jobs (id, repo, sha, reason, clone_url, state, created_ms, updated_ms)
                     VALUES ('aaaaaaa-1', 'o/r', 'aa', 'push', 'u', 'success', 1, 1);
                 INSERT INTO notify_meta VALUES ('since', 5);
                 INSERT INTO notify_outbox (job_id, state, created_ms, sent)
                     VALUES ('aaaaaaa-1', 'success', 1, 1);
                 INSERT INTO notify_commits VALUES ('aaaaaaa-1', 'Ada', 'First line');
                 INSERT INTO rotation_runs (id, version, snapshot, from_snapshot, base,
                     owner_pid, started_ms, deadline_ms, result)
                     VALUES ('rotation-1', '4.2', 'update_1', 'g', 'g', 1, 1, 2, 'ok');",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let job = s.job("aaaaaaa-1").unwrap().unwrap();
        assert_eq!(job.commit_author.as_deref(), Some("Ada"));
        assert_eq!(job.commit_subject.as_deref(), Some("First line"));
        let c = side_connection(&path).unwrap();
        let kept: (i64, i64, i64) = c
            .query_row(
                "SELECT (SELECT value FROM notify_meta WHERE key = 'since'), \
                 (SELECT COUNT(*) FROM notify_outbox), (SELECT COUNT(*) FROM rotation_runs)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(kept, (5, 1, 1));
        assert!(!tables(&c).contains(&"notify_commits".to_owned()));
    }

    #[test]
    fn reopening_keeps_jobs_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.sqlite3");
        let id = Store::open(&p)
            .unwrap()
            .insert_job(&job('a', "main"))
            .unwrap();
        let s = Store::open(&p).unwrap();
        assert_eq!(s.job(&id).unwrap().unwrap().state, JobState::Queued);
    }

    #[test]
    fn a_vm_is_claimed_by_one_job_only() {
        let (_d, s) = open();
        s.register_vms("4.2", &["a".into()]).unwrap();
        s.insert_job(&job('a', "x")).unwrap();
        s.insert_job(&job('b', "y")).unwrap();
        let c = s.claim("4.2", &["a".into()], 1, "sec", 0).unwrap().unwrap();
        assert_eq!(c.vm, "a");
        assert!(s
            .claim("4.2", &["a".into()], 1, "sec", 0)
            .unwrap()
            .is_none());
    }

    #[test]
    fn claims_are_fifo_within_a_version() {
        let (_d, s) = open();
        s.register_vms("4.2", &["a".into(), "b".into()]).unwrap();
        let first = s.insert_job(&job('a', "x")).unwrap();
        let second = s.insert_job(&job('b', "y")).unwrap();
        let vms = ["a".to_string(), "b".to_string()];
        assert_eq!(
            s.claim("4.2", &vms, 2, "s", 0).unwrap().unwrap().job.id,
            first
        );
        assert_eq!(
            s.claim("4.2", &vms[1..], 2, "s", 0)
                .unwrap()
                .unwrap()
                .job
                .id,
            second
        );
    }

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
        assert_eq!(st.last().unwrap().0, "error");
    }

    #[test]
    fn ending_a_job_twice_changes_nothing() {
        let (_d, s) = open();
        let id = s.insert_job(&job('a', "x")).unwrap();
        assert!(s.finish(&id, JobState::Canceled, "x", false).unwrap());
        assert!(!s.finish(&id, JobState::Success, "y", true).unwrap());
        assert_eq!(s.job(&id).unwrap().unwrap().state, JobState::Canceled);
    }

    #[test]
    fn only_the_newest_unposted_status_of_a_job_is_sent() {
        let (_d, s) = open();
        let id = s.insert_job(&job('a', "x")).unwrap();
        s.finish(&id, JobState::Canceled, "stop", false).unwrap();
        let pending = s.unposted_statuses().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].state, "error");
    }
}
