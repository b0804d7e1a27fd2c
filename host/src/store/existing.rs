//! Opening a store that must already exist, as the CLI does: never created, never migrated.
//!
//! `sdci-host serve` creates the database and runs the migrations ([`Store::open`]); every other
//! subcommand works on what `serve` made. A missing file is an error naming the path and the
//! `data_dir` key (a typo there used to create a fresh empty database silently), and a schema
//! older or newer than this binary's is refused with what to run.

use super::{schema, Store};
use crate::{HostError, Result};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

impl Store {
    /// Opens the database at `path` read-write, without creating or migrating it.
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(HostError::Invalid(format!(
                "no database at {}: check data_dir in the host configuration; the database is \
                 created by `sdci-host serve` on its first start",
                path.display()
            )));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::require_current(&conn, path)?;
        Ok(Self {
            conn: std::sync::Mutex::new(conn),
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_database_is_an_error_and_is_not_created() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("nope/sdci.sqlite3");
        let err = Store::open_existing(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("no database at") && err.contains("data_dir"),
            "{err}"
        );
        assert!(!path.exists() && !dir.path().join("nope").exists());
    }

    #[test]
    fn a_database_serve_made_opens_and_an_older_or_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("sdci.sqlite3");
        drop(Store::open(&path).expect("serve's open creates and migrates"));
        let s = Store::open_existing(&path).expect("the current schema opens");
        assert_eq!(s.count_jobs().expect("readable"), 0);
        drop(s);
        let c = Connection::open(&path).expect("open");
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        for (other, word) in [(v - 1, "older"), (v + 1, "newer")] {
            c.pragma_update(None, "user_version", other).expect("set");
            let err = Store::open_existing(&path)
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(word), "{err}");
            let now: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .expect("version");
            assert_eq!(now, other, "the CLI changed nothing");
        }
    }
}
