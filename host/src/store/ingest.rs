//! Webhook deliveries: the `deliveries` table, one transaction per delivery (delivery, job,
//! its pending status, the superseding of older jobs), the group-commit writer thread that puts
//! every delivery waiting at that moment into one transaction, and the WAL checkpoints that
//! keep deliveries from waiting behind an fsync.
//!
//! Invariants: one `X-GitHub-Delivery` id creates at most one job, one repo+sha+reason at most
//! one live job (a commit whose newest job ended `error` gets a new one); each caller is answered only after the commit that holds its delivery. A fork's
//! approval (`fork_approvals`: repository, pull request, head sha, approver) is recorded in the
//! same transaction as the job it starts, and a delivery that needs one creates a job only if
//! that exact sha was approved: an approval covers one commit.

use super::jobs::{insert_job, new_job_id, supersede, NewJob};
use super::{exec, parsed, qrow, side_connection, Store};
use crate::{now_ms, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sdci_protocol::JobId;
use std::sync::Arc;

/// A delivery to store.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `X-GitHub-Delivery`, if any.
    pub id: Option<String>,
    pub event: String,
    pub job: NewJob,
    /// A fork's approval this delivery records or needs; `None` for trusted sources.
    pub approval: Option<ForkApproval>,
}

/// A fork pull request's approval, for the job's repository and head sha.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkApproval {
    /// `approver` (an allowed login) approved the head sha of pull request `number`.
    Record { number: u64, approver: String },
    /// The job runs only if the head sha of pull request `number` was approved.
    Require { number: u64 },
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
        job_id: JobId,
        /// Queued jobs ended as superseded.
        superseded: Vec<JobId>,
        /// Running jobs asked to stop (when `supersede_running`).
        stop_running: Vec<JobId>,
    },
    /// This `X-GitHub-Delivery` was seen before: nothing new.
    DuplicateDelivery,
    /// A live or finished job already covers this repo, sha and reason.
    DuplicateJob { job_id: JobId },
    /// A fork's commit nobody approved: no job.
    NotApproved { sha: sdci_protocol::CommitSha },
}

/// WAL size past which the ingest writer resets it (see [`Store::bound_wal`]).
const WAL_RESET_BYTES: u64 = 64 * 1024 * 1024;

impl Store {
    /// Records a delivery and, unless it or its commit is already known, creates its job and
    /// supersedes older queued jobs with the same key. One transaction.
    pub fn ingest(
        &self,
        delivery_id: Option<&str>,
        event: &str,
        job: &NewJob,
        supersede_running: bool,
    ) -> Result<Ingest> {
        self.tx(|tx| ingest_one(tx, delivery_id, event, job, None, supersede_running))
    }

    /// The approvals recorded for a pull request: (sha, approver), oldest first.
    pub fn fork_approvals(&self, repo: &str, number: u64) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            super::qrows(
                c,
                "SELECT sha, approver FROM fork_approvals WHERE repo = ?1 AND pr = ?2 \
                 ORDER BY approved_ms, sha",
                params![repo, number as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
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
                match ingest_one(
                    &sp,
                    it.id.as_deref(),
                    &it.event,
                    &it.job,
                    it.approval.as_ref(),
                    supersede_running,
                ) {
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

    pub fn count_deliveries(&self) -> Result<i64> {
        self.with(|c| qrow(c, "SELECT COUNT(*) FROM deliveries", [], |r| r.get(0)))
    }
}

/// Records `approver`'s approval of `job`'s head sha of pull request `number` (the first
/// approval of a sha stays).
pub(super) fn record_fork_approval(
    tx: &Connection,
    job: &NewJob,
    number: u64,
    approver: &str,
    now: i64,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO fork_approvals (repo, pr, sha, approver, approved_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(repo, pr, sha) DO NOTHING",
        params![
            job.repo.as_str(),
            number as i64,
            job.sha.as_str(),
            approver,
            now
        ],
    )?;
    Ok(())
}

fn ingest_one(
    tx: &Connection,
    delivery_id: Option<&str>,
    event: &str,
    job: &NewJob,
    approval: Option<&ForkApproval>,
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
    match approval {
        None => {}
        Some(ForkApproval::Record { number, approver }) => {
            record_fork_approval(tx, job, *number, approver, now)?;
        }
        Some(ForkApproval::Require { number }) => {
            let approved: Option<i64> = qrow(
                tx,
                "SELECT 1 FROM fork_approvals WHERE repo = ?1 AND pr = ?2 AND sha = ?3",
                params![job.repo.as_str(), *number as i64, job.sha.as_str()],
                |r| r.get(0),
            )
            .optional()?;
            if approved.is_none() {
                if let Some(d) = delivery_id {
                    exec(
                        tx,
                        "INSERT INTO deliveries (delivery_id, event, received_ms, job_id) \
                         VALUES (?1, ?2, ?3, NULL)",
                        params![d, event, now],
                    )?;
                }
                return Ok(Ingest::NotApproved {
                    sha: job.sha.clone(),
                });
            }
        }
    }
    // The newest job of this commit covers it, unless it ended in an infrastructure error
    // (`error`: nothing was decided about the project, so a new push or reopen runs it again).
    let existing: Option<JobId> = qrow(
        tx,
        "SELECT id, state FROM jobs WHERE repo = ?1 AND sha = ?2 AND reason = ?3 \
         AND state != 'canceled' ORDER BY seq DESC LIMIT 1",
        params![job.repo.as_str(), job.sha.as_str(), job.reason.as_str()],
        |r| Ok((parsed(r, 0)?, r.get::<_, String>(1)?)),
    )
    .optional()?
    .and_then(|(id, state)| (state != "error").then_some(id));
    let record = |job_id: &JobId| -> rusqlite::Result<()> {
        if let Some(d) = delivery_id {
            exec(
                tx,
                "INSERT INTO deliveries (delivery_id, event, received_ms, job_id) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![d, event, now, job_id.as_str()],
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
        Some(key) => supersede(tx, key, &job_id, &job.sha, supersede_running)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok(Ingest::Created {
        job_id,
        superseded,
        stop_running,
    })
}
