//! `test_results` (one row per test case of an attempt, from its JUnit files), `result_sets`
//! (one row per attempt whose results were read: when, the archive's size, the notes of what was
//! refused or cut, whether a console screenshot was kept) and `result_files` (the members of the
//! attempt's `results.tar.zst`: evidence, artifacts, JUnit files). Issue 19, contracts §11.
//!
//! Invariants: an attempt's results are replaced whole in one transaction (reading them again,
//! after a restart, never doubles a row); a test's identity across jobs is its `test_key`
//! (`classname::name`, `domain::junit::test_key`), indexed for its history; outcomes are read
//! back into [`CaseOutcome`], and a value that does not parse is an error.

use super::{exec, qrow, qrows, Store};
use crate::domain::junit::{CaseOutcome, TestCase};
use crate::Result;
use rusqlite::OptionalExtension;

/// One member of a results archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFile {
    /// The member's name in the archive (validated: relative, no `..`).
    pub path: String,
    /// `junit`, `evidence`, `artifact`, `manifest` or `other`.
    pub kind: String,
    pub bytes: u64,
}

/// What reading an attempt's results gave.
#[derive(Debug, Clone, Default)]
pub struct ResultSet {
    pub stored_ms: i64,
    /// The size of the stored `results.tar.zst`; `None` when none was kept.
    pub archive_bytes: Option<u64>,
    /// What was refused, cut or missing, one sentence each.
    pub notes: Vec<String>,
    /// A console screenshot of the VM was kept for this attempt.
    pub screenshot: bool,
}

/// One stored test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRow {
    pub key: String,
    pub case: TestCase,
}

/// One run of a test in its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub job_id: String,
    pub attempt: u32,
    pub repo: String,
    pub sha: String,
    pub branch: Option<String>,
    pub version: Option<String>,
    pub reason: String,
    pub outcome: CaseOutcome,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
    /// When the results were stored.
    pub at_ms: i64,
}

fn outcome_of(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<CaseOutcome> {
    let s: String = r.get(idx)?;
    CaseOutcome::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("test outcome {s:?}").into(),
        )
    })
}

impl Store {
    /// Replaces attempt `attempt`'s results of job `job_id` with these.
    pub fn store_results(
        &self,
        job_id: &str,
        attempt: u32,
        cases: &[TestCase],
        files: &[ResultFile],
        set: &ResultSet,
    ) -> Result<()> {
        let notes = serde_json::to_string(&set.notes).unwrap_or_else(|_| "[]".into());
        self.tx(|tx| {
            for table in ["test_results", "result_files", "result_sets"] {
                exec(
                    tx,
                    &format!("DELETE FROM {table} WHERE job_id = ?1 AND attempt = ?2"),
                    rusqlite::params![job_id, attempt],
                )?;
            }
            exec(
                tx,
                "INSERT INTO result_sets (job_id, attempt, stored_ms, archive_bytes, notes, \
                 screenshot) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    job_id,
                    attempt,
                    set.stored_ms,
                    set.archive_bytes.map(|b| b as i64),
                    notes,
                    set.screenshot
                ],
            )?;
            let mut st = tx.prepare_cached(
                "INSERT INTO test_results (job_id, attempt, seq, test_key, suite, classname, \
                 name, file, line, outcome, duration_ms, message, text) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for (seq, c) in cases.iter().enumerate() {
                st.execute(rusqlite::params![
                    job_id,
                    attempt,
                    seq as i64,
                    c.key(),
                    c.suite,
                    c.classname,
                    c.name,
                    c.file,
                    c.line,
                    c.outcome.as_str(),
                    c.duration_ms,
                    c.message,
                    c.text
                ])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO result_files (job_id, attempt, path, kind, bytes) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for f in files {
                st.execute(rusqlite::params![
                    job_id,
                    attempt,
                    f.path,
                    f.kind,
                    f.bytes as i64
                ])?;
            }
            Ok(())
        })
    }

    /// Marks that attempt `attempt` of job `job_id` has a console screenshot (creating its
    /// result set when the results were not read).
    pub fn set_screenshot(&self, job_id: &str, attempt: u32) -> Result<()> {
        self.tx(|tx| {
            exec(
                tx,
                "INSERT INTO result_sets (job_id, attempt, stored_ms, notes, screenshot) \
                 VALUES (?1, ?2, ?3, '[]', 1) \
                 ON CONFLICT (job_id, attempt) DO UPDATE SET screenshot = 1",
                rusqlite::params![job_id, attempt, crate::now_ms()],
            )?;
            Ok(())
        })
    }

    /// The result set of an attempt, if its results were read (or a screenshot kept).
    pub fn result_set(&self, job_id: &str, attempt: u32) -> Result<Option<ResultSet>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT stored_ms, archive_bytes, notes, screenshot FROM result_sets \
                 WHERE job_id = ?1 AND attempt = ?2",
                rusqlite::params![job_id, attempt],
                |r| {
                    let notes: String = r.get(2)?;
                    Ok(ResultSet {
                        stored_ms: r.get(0)?,
                        archive_bytes: r.get::<_, Option<i64>>(1)?.map(|b| b.max(0) as u64),
                        notes: serde_json::from_str(&notes).unwrap_or_default(),
                        screenshot: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    /// The attempts of job `job_id` that have a result set, newest first.
    pub fn result_attempts(&self, job_id: &str) -> Result<Vec<u32>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT attempt FROM result_sets WHERE job_id = ?1 ORDER BY attempt DESC",
                [job_id],
                |r| r.get(0),
            )
        })
    }

    /// The test cases of an attempt, in the order the files listed them.
    pub fn test_cases(&self, job_id: &str, attempt: u32) -> Result<Vec<TestRow>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT test_key, suite, classname, name, file, line, outcome, duration_ms, \
                 message, text FROM test_results WHERE job_id = ?1 AND attempt = ?2 ORDER BY seq",
                rusqlite::params![job_id, attempt],
                |r| {
                    Ok(TestRow {
                        key: r.get(0)?,
                        case: TestCase {
                            suite: r.get(1)?,
                            classname: r.get(2)?,
                            name: r.get(3)?,
                            file: r.get(4)?,
                            line: r.get(5)?,
                            outcome: outcome_of(r, 6)?,
                            duration_ms: r.get(7)?,
                            message: r.get(8)?,
                            text: r.get(9)?,
                        },
                    })
                },
            )
        })
    }

    /// The members of an attempt's results archive, by name.
    pub fn result_files(&self, job_id: &str, attempt: u32) -> Result<Vec<ResultFile>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT path, kind, bytes FROM result_files WHERE job_id = ?1 AND attempt = ?2 \
                 ORDER BY path",
                rusqlite::params![job_id, attempt],
                |r| {
                    Ok(ResultFile {
                        path: r.get(0)?,
                        kind: r.get(1)?,
                        bytes: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )
        })
    }

    /// The runs of test `key`, newest first, at most `limit`; only repository `repo`'s when
    /// given.
    pub fn test_history(
        &self,
        key: &str,
        repo: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HistoryRow>> {
        self.with(|c| {
            qrows(
                c,
                "SELECT t.job_id, t.attempt, j.repo, j.sha, j.branch, j.version, j.reason, \
                 t.outcome, t.duration_ms, t.message, s.stored_ms \
                 FROM test_results t \
                 JOIN jobs j ON j.id = t.job_id \
                 JOIN result_sets s ON s.job_id = t.job_id AND s.attempt = t.attempt \
                 WHERE t.test_key = ?1 AND (?2 IS NULL OR j.repo = ?2) \
                 ORDER BY s.stored_ms DESC, t.attempt DESC LIMIT ?3",
                rusqlite::params![key, repo, limit],
                |r| {
                    Ok(HistoryRow {
                        job_id: r.get(0)?,
                        attempt: r.get(1)?,
                        repo: r.get(2)?,
                        sha: r.get(3)?,
                        branch: r.get(4)?,
                        version: r.get(5)?,
                        reason: r.get(6)?,
                        outcome: outcome_of(r, 7)?,
                        duration_ms: r.get(8)?,
                        message: r.get(9)?,
                        at_ms: r.get(10)?,
                    })
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_job, test_store};
    use super::*;

    fn case(name: &str, outcome: CaseOutcome) -> TestCase {
        TestCase {
            suite: "pytest".into(),
            classname: "tests.t".into(),
            name: name.into(),
            file: Some("tests/t.py".into()),
            line: Some(3),
            outcome,
            duration_ms: Some(10),
            message: outcome.is_bad().then(|| "boom".into()),
            text: None,
        }
    }

    #[test]
    fn an_attempts_results_are_replaced_whole_and_found_in_the_tests_history() {
        let (_d, s) = test_store();
        let j1 = s.insert_job(&test_job('a', "main")).unwrap();
        let j2 = s.insert_job(&test_job('b', "main")).unwrap();
        let files = [ResultFile {
            path: "evidence/journal.txt".into(),
            kind: "evidence".into(),
            bytes: 5,
        }];
        let set = |ms| ResultSet {
            stored_ms: ms,
            archive_bytes: Some(100),
            notes: vec!["cut".into()],
            screenshot: false,
        };
        let cases = [
            case("a", CaseOutcome::Passed),
            case("b", CaseOutcome::Failed),
        ];
        s.store_results(j1.as_str(), 1, &cases, &files, &set(10))
            .unwrap();
        s.store_results(j1.as_str(), 1, &cases, &files, &set(10))
            .unwrap();
        s.store_results(
            j2.as_str(),
            1,
            &[case("b", CaseOutcome::Passed)],
            &[],
            &set(20),
        )
        .unwrap();
        assert_eq!(s.test_cases(j1.as_str(), 1).unwrap().len(), 2);
        assert_eq!(s.result_files(j1.as_str(), 1).unwrap(), files);
        let got = s.result_set(j1.as_str(), 1).unwrap().unwrap();
        assert_eq!(
            (got.archive_bytes, got.notes),
            (Some(100), vec!["cut".to_owned()])
        );
        let h = s.test_history("tests.t::b", None, 10).unwrap();
        let seen: Vec<_> = h.iter().map(|r| (r.job_id.clone(), r.outcome)).collect();
        assert_eq!(
            seen,
            [
                (j2.to_string(), CaseOutcome::Passed),
                (j1.to_string(), CaseOutcome::Failed)
            ]
        );
        assert!(s
            .test_history("tests.t::b", Some("x/y"), 10)
            .unwrap()
            .is_empty());
        s.set_screenshot(j2.as_str(), 2).unwrap();
        assert_eq!(s.result_attempts(j2.as_str()).unwrap(), [2, 1]);
        assert!(s.result_set(j2.as_str(), 2).unwrap().unwrap().screenshot);
    }
}
