//! The schema: numbered migrations applied in order (`PRAGMA user_version`), each in its own
//! `BEGIN IMMEDIATE` transaction. Every table of the store comes from here; no other code creates
//! one. A database newer than this binary is refused, never downgraded.

use crate::{HostError, Result};
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

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
    r#"
-- 6: surviving restarts (issue 14). What finding a running attempt again needs: the guest pid of
-- `sdci-dom0 launch` (jobs.pid), its deadline and, once known, its exit code (a stored verdict
-- is never run again); a job waiting out a vSphere outage is queued with a time before which no
-- VM is claimed for it (it holds no VM meanwhile); the status outbox records its intent before
-- posting and counts permanent refusals; the instance's own id (written into the VM leases).
ALTER TABLE attempts ADD COLUMN run_deadline_ms INTEGER;
ALTER TABLE attempts ADD COLUMN launch_exit INTEGER;
ALTER TABLE jobs ADD COLUMN not_before_ms INTEGER;
ALTER TABLE statuses ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE statuses ADD COLUMN fallback INTEGER NOT NULL DEFAULT 0;
CREATE TABLE host_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"#,
    r#"
-- 7: a fork pull request's approval covers one head commit: who added the trust label while
-- that sha was the head (issue 15).
CREATE TABLE fork_approvals (
    repo TEXT NOT NULL,
    pr INTEGER NOT NULL,
    sha TEXT NOT NULL,
    approver TEXT NOT NULL,
    approved_ms INTEGER NOT NULL,
    PRIMARY KEY (repo, pr, sha)
) WITHOUT ROWID;
"#,
    r#"
-- 8: GitHub check runs (issue 17, contracts §10). `check_meta.enabled` is what `serve` was
-- configured with, so a job stored by any process (webhook, CLI) gets its check run in the same
-- transaction; `check_runs` holds GitHub's id per job once created; `check_updates` is the
-- outbox: one row per phase change, only a job's newest unposted row is sent.
CREATE TABLE check_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE check_runs (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    run_id INTEGER,
    name TEXT,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE check_updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    phase TEXT NOT NULL,
    note TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    posted INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    refusals INTEGER NOT NULL DEFAULT 0,
    next_try_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX check_updates_unposted ON check_updates(posted, job_id);
"#,
    r#"
-- 9: test results (issue 19, contracts §11). One row per test case of an attempt, keyed for a
-- test's history by `test_key` (classname::name); the attempt's result set (when read, the
-- archive's size, the notes of what was refused or cut, a console screenshot kept); the members
-- of its results.tar.zst.
CREATE TABLE test_results (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    test_key TEXT NOT NULL,
    suite TEXT NOT NULL,
    classname TEXT NOT NULL,
    name TEXT NOT NULL,
    file TEXT,
    line INTEGER,
    outcome TEXT NOT NULL,
    duration_ms INTEGER,
    message TEXT,
    text TEXT,
    PRIMARY KEY (job_id, attempt, seq)
) WITHOUT ROWID;
CREATE INDEX test_results_by_key ON test_results(test_key, job_id);
CREATE TABLE result_sets (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    archive_bytes INTEGER,
    notes TEXT NOT NULL,
    screenshot INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
CREATE TABLE result_files (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, path)
) WITHOUT ROWID;
"#,
    r#"
-- 10: matrix cells (issue 20). The cell a job runs (its stable name, the cell as the
-- orchestration wrote it, why it was queued); what a placeholder job asks for (a label, a
-- comment's selection); a pull request's labels as its last delivery listed them.
CREATE TABLE job_cells (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    name TEXT NOT NULL,
    cell TEXT NOT NULL,
    queued_by TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX job_cells_by_name ON job_cells(name);
CREATE TABLE job_requests (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    request TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE pr_labels (
    repo TEXT NOT NULL,
    pr INTEGER NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (repo, pr, label)
) WITHOUT ROWID;
"#,
    r#"
-- 11: stages (issue 18). The stage of each step of a job's file; a job's provisioned snapshot
-- (the VM holding it, its size when known, when the retention removed it); a re-run from a
-- stage (its origin, the snapshot and the VM it is pinned to); held VMs and hold requests.
CREATE TABLE job_stages (
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    stage TEXT NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
CREATE TABLE stage_snapshots (
    job_id TEXT PRIMARY KEY,
    vm TEXT NOT NULL,
    version TEXT NOT NULL,
    branch TEXT,
    name TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    bytes INTEGER,
    removed_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE stage_reruns (
    job_id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    from_stage TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    vm TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX stage_reruns_by_origin ON stage_reruns(origin);
CREATE TABLE vm_holds (
    vm TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    who TEXT NOT NULL,
    automatic INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    console TEXT
) WITHOUT ROWID;
CREATE TABLE hold_requests (
    job_id TEXT PRIMARY KEY,
    who TEXT NOT NULL,
    secs INTEGER NOT NULL,
    requested_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- 12: built matrix scenarios (issue 20): each scenario's current snapshot per pool, moved by
-- `sdci-host save --version V --scenario S` once every VM passed (`store/scenarios.rs`).
CREATE TABLE scenario_snapshots (
    version TEXT NOT NULL,
    scenario TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (version, scenario)
) WITHOUT ROWID;
"#,
    r#"
-- 13: a stage re-run's attempt on a linked clone of its snapshot (issue 18, contracts §12): the
-- clone it runs on, the VM holding the snapshot and the snapshot; `attempts.vm` is the VM whose
-- slot it takes (leased, kept off). NULL: the attempt ran on `attempts.vm` itself.
ALTER TABLE attempts ADD COLUMN clone_vm TEXT;
ALTER TABLE attempts ADD COLUMN clone_source TEXT;
ALTER TABLE attempts ADD COLUMN clone_snapshot TEXT;
"#,
];

/// Refuses a database whose schema is not exactly this binary's, without changing it (the CLI:
/// only `serve` migrates). The message says what to run.
pub(super) fn require_current(conn: &Connection, path: &Path) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = MIGRATIONS.len() as i64;
    if version > latest {
        return Err(HostError::Invalid(format!(
            "the database {} has schema version {version}, newer than this sdci-host knows \
             ({latest}): use the sdci-host that wrote it (an upgrade is never undone)",
            path.display()
        )));
    }
    if version < latest {
        return Err(HostError::Invalid(format!(
            "the database {} has schema version {version}, older than this sdci-host's \
             ({latest}): only `sdci-host serve` migrates; restart the service (systemctl \
             restart sdci-host), then run this command again",
            path.display()
        )));
    }
    Ok(())
}

/// Applies the migrations `conn` has not seen yet.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{test_job as job, test_store as open, JobState, Store};
    use super::*;

    fn tables(c: &Connection) -> Vec<String> {
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let rows = st.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn the_notify_and_rotation_tables_come_from_the_numbered_migrations() {
        let (dir, _s) = open();
        let c = super::super::side_connection(&dir.path().join("db.sqlite3")).unwrap();
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
                     VALUES ('aaaaaaa-1', 'o/r', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'push', 'u', 'success', 1, 1);
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
        let c = super::super::side_connection(&path).unwrap();
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
}
