//! `sdci-host backup FILE`: a consistent copy of the live database through SQLite's online
//! backup API (rusqlite's `backup` feature), while `serve` keeps writing.
//!
//! The copy is made page by page (a step of 1,024 pages, then a short pause so the service's
//! writers are not starved), restarting by itself when the service writes meanwhile, into a
//! temporary file beside `FILE` that is renamed into place only once complete and checked with
//! `PRAGMA integrity_check`: a crash or an error never leaves a half-written `FILE`. Restoring
//! is copying the file back as `data_dir/sdci.sqlite3` while the service is stopped
//! (docs/operations.md, "Backups").

use super::Store;
use crate::{HostError, Result};
use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// What a backup copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    pub pages: u64,
    pub bytes: u64,
    pub jobs: i64,
}

impl Store {
    /// Copies this store into `dest` (which must not exist), consistently, while others write.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupReport> {
        if dest.exists() {
            return Err(HostError::Invalid(format!(
                "{} exists: the backup never overwrites a file; name a new one",
                dest.display()
            )));
        }
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".sdci-backup-")
            .tempfile_in(dir)
            .map_err(|e| HostError::io(format!("creating a file in {}", dir.display()), e))?;
        {
            let mut to = Connection::open(tmp.path())?;
            self.with(|from| {
                let b = rusqlite::backup::Backup::new(from, &mut to)?;
                b.run_to_completion(1024, Duration::from_millis(5), None)
            })?;
            let ok: String = to.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            if ok != "ok" {
                return Err(HostError::Invalid(format!(
                    "the copy failed SQLite's integrity check: {ok}"
                )));
            }
            // A standalone file: no WAL beside it.
            to.pragma_update(None, "journal_mode", "DELETE")?;
        }
        let check = Connection::open(tmp.path())?;
        let pages: i64 = check.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let jobs: i64 = check.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))?;
        drop(check);
        tmp.persist_noclobber(dest).map_err(|e| {
            HostError::io(format!("renaming the copy to {}", dest.display()), e.error)
        })?;
        let bytes = std::fs::metadata(dest)
            .map_err(|e| HostError::io(format!("reading {}", dest.display()), e))?
            .len();
        Ok(BackupReport {
            pages: pages.max(0) as u64,
            bytes,
            jobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_job, test_store, Store};

    #[test]
    fn a_backup_is_a_complete_database_and_never_overwrites() {
        let (dir, s) = test_store();
        s.insert_job(&test_job('a', "main")).expect("a job");
        let dest = dir.path().join("copy.sqlite3");
        let r = s.backup_to(&dest).expect("backed up");
        assert_eq!(r.jobs, 1);
        assert!(r.bytes > 0 && r.pages > 0);
        let copy = Store::open_existing(&dest).expect("the copy opens as a current store");
        assert_eq!(copy.count_jobs().expect("readable"), 1);
        let err = s.backup_to(&dest).expect_err("exists").to_string();
        assert!(err.contains("never overwrites"), "{err}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listed")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".sdci-backup-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn a_backup_while_another_connection_writes_is_consistent() {
        let (dir, s) = test_store();
        let path = dir.path().join("db.sqlite3");
        for i in 0..200 {
            let mut j = test_job('b', &format!("b{i}"));
            j.supersede_key = None;
            s.insert_job(&j).expect("a job");
        }
        let writer = std::thread::spawn(move || {
            let w = Store::open(&path).expect("a second connection");
            for i in 0..300 {
                let mut j = test_job('c', &format!("c{i}"));
                j.supersede_key = None;
                w.insert_job(&j).expect("a job");
            }
        });
        let dest = dir.path().join("during.sqlite3");
        let r = s.backup_to(&dest).expect("backed up");
        writer.join().expect("the writer finished");
        assert!((200..=500).contains(&r.jobs), "{r:?}");
        let copy = Store::open_existing(&dest).expect("opens");
        assert_eq!(copy.count_jobs().expect("readable"), r.jobs);
    }
}
