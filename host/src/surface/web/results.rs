//! A job's test results on its page and in the API (issue 19), and a test's own page:
//!
//! - [`tests_view`]: the newest attempt with results: failed tests first (message, a link to the
//!   source line on GitHub at the job's commit, the flaky label, the quarantine entry), then the
//!   counts, total and slowest durations, the evidence files and the notes of what was refused
//!   or cut; built by the same builder for the page, `/api/v1/jobs/{id}` and `jobs show --json`.
//! - `GET /jobs/{id}/results/{attempt}/files/{*path}`: one member of the stored archive,
//!   `text/plain` (`.txt`, `.log`, `.xml`, `.json`) or `application/octet-stream`, always with
//!   `Content-Disposition` and `nosniff` and a sandboxing CSP: never HTML, so nothing dom0 wrote
//!   can run in the host's origin. `…/results.tar.zst`: the archive itself;
//!   `…/screenshot.png`: the console screenshot.
//! - `GET /tests?key=&repo=` ([`history_view`]) and `/api/v1/tests?key=&repo=`: a test's runs
//!   across jobs (outcome per commit, branch and version), its first failure after its last
//!   success, and its duration trend.
//!
//! Invariants: members are found by their validated name in the stored archive (never a path
//! on disk built from a request); reading goes through `spawn_blocking` with the archive's
//! bounds; every text shown comes from the store, already capped, and maud escapes it.

use super::model::{github_web, url_part};
use super::{blocking, fail};
use crate::config::Config;
use crate::domain::flakes::{self, Run};
use crate::domain::junit::CaseOutcome;
use crate::hub::Hub;
use crate::joblog;
use crate::store::{JobRow, Store, TestRow};
use crate::Result;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Failed tests shown with their details; the rest are counted.
pub const MAX_FAILED_SHOWN: usize = 200;
/// Slowest tests listed.
pub const SLOWEST: usize = 10;
/// Characters of a failure's text in the page (the store keeps up to the parser's cap).
pub const TEXT_SHOWN: usize = 4000;
/// Runs on a test's page.
pub const HISTORY_RUNS: u32 = 200;

/// One failed (or errored) test of a job.
#[derive(Debug, Clone, Serialize)]
pub struct FailedTest {
    pub key: String,
    pub name: String,
    pub classname: String,
    /// failed or error.
    pub outcome: String,
    pub message: Option<String>,
    pub text: Option<String>,
    /// `file:line` as the JUnit file gave it.
    pub location: Option<String>,
    /// The line on GitHub at the job's commit (only for a relative path without `..`).
    pub source_url: Option<String>,
    /// `/tests?key=…` (the test's history).
    pub history_url: String,
    /// "known flaky: passed on … at …", when the flaky rule says so.
    pub flaky: Option<String>,
    /// The `[tests] quarantine` entry naming it.
    pub quarantined: Option<String>,
    pub duration_ms: Option<i64>,
}

/// One test among the slowest.
#[derive(Debug, Clone, Serialize)]
pub struct SlowTest {
    pub key: String,
    pub outcome: String,
    pub duration_ms: i64,
    pub history_url: String,
}

/// One member of the results archive.
#[derive(Debug, Clone, Serialize)]
pub struct FileView {
    pub path: String,
    pub kind: String,
    pub bytes: u64,
    pub url: String,
}

/// The counts of an attempt's cases.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub error: usize,
    pub skipped: usize,
}

/// A job's test results (its newest attempt that has them).
#[derive(Debug, Clone, Serialize)]
pub struct TestsView {
    pub attempt: u32,
    pub counts: Counts,
    /// The sum of the cases' durations.
    pub duration_ms: i64,
    /// Failed and errored tests, quarantined ones last, at most [`MAX_FAILED_SHOWN`].
    pub failed: Vec<FailedTest>,
    pub slowest: Vec<SlowTest>,
    pub files: Vec<FileView>,
    /// The stored `results.tar.zst`, when one was kept.
    pub archive_url: Option<String>,
    pub archive_bytes: Option<u64>,
    pub screenshot_url: Option<String>,
    /// What was refused, cut or missing.
    pub notes: Vec<String>,
    /// Every failure is quarantined: the check's conclusion is `neutral` (never `success`).
    pub only_quarantined_failed: bool,
}

/// The source line's address on GitHub: `{web}/{repo}/blob/{sha}/{file}#L{n}` where `n` is
/// the 1-based line of JUnit's `line` ([`crate::domain::junit::source_line`]), only for a
/// relative path without `.`/`..` components or control characters.
pub fn source_url(
    web: &str,
    repo: &str,
    sha: &str,
    file: &str,
    line: Option<u32>,
) -> Option<String> {
    let ok = !file.is_empty()
        && !file.starts_with('/')
        && !file.contains('\\')
        && !file.chars().any(char::is_control)
        && file
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return None;
    }
    let anchor = line
        .map(|l| format!("#L{}", crate::domain::junit::source_line(l)))
        .unwrap_or_default();
    Some(format!(
        "{web}/{repo}/blob/{sha}/{}{anchor}",
        url_part(file)
    ))
}

/// `/tests?key=…&repo=…`.
pub fn history_url(key: &str, repo: &str) -> String {
    format!(
        "/tests?key={}&repo={}",
        url_part(key).replace('/', "%2F"),
        url_part(repo).replace('/', "%2F")
    )
}

/// The results of job `j`'s newest attempt that has them; `None` when no attempt has.
pub fn tests_view(store: &Store, cfg: &Config, j: &JobRow) -> Result<Option<TestsView>> {
    let id = j.id.as_str();
    let Some(attempt) = store.result_attempts(id)?.into_iter().next() else {
        return Ok(None);
    };
    let Some(set) = store.result_set(id, attempt)? else {
        return Ok(None);
    };
    let rows = store.test_cases(id, attempt)?;
    let web = github_web(&cfg.agent.github_api);
    let repo = j.repo.to_string();
    let mut counts = Counts {
        total: rows.len(),
        ..Counts::default()
    };
    let mut duration_ms = 0i64;
    let mut failed = Vec::new();
    for t in &rows {
        let c = &t.case;
        duration_ms = duration_ms.saturating_add(c.duration_ms.unwrap_or(0));
        match c.outcome {
            CaseOutcome::Passed => counts.passed += 1,
            CaseOutcome::Skipped => counts.skipped += 1,
            CaseOutcome::Failed => counts.failed += 1,
            CaseOutcome::Error => counts.error += 1,
        }
        if !c.outcome.is_bad() || failed.len() >= MAX_FAILED_SHOWN {
            continue;
        }
        failed.push(FailedTest {
            key: t.key.clone(),
            name: c.name.clone(),
            classname: c.classname.clone(),
            outcome: c.outcome.as_str().into(),
            message: c.message.clone(),
            text: c
                .text
                .as_deref()
                .map(|s| crate::domain::junit::clean(s, TEXT_SHOWN)),
            location: c.file.as_ref().map(|f| match c.line {
                Some(l) => format!("{f}:{l}"),
                None => f.clone(),
            }),
            source_url: c
                .file
                .as_deref()
                .and_then(|f| source_url(&web, &repo, j.sha.as_str(), f, c.line)),
            history_url: history_url(&t.key, &repo),
            flaky: crate::orchestration::results::flaky_label(
                store,
                cfg,
                j,
                &t.key,
                c.outcome,
                set.stored_ms,
            )?,
            quarantined: cfg.tests.quarantine_entry(&t.key).map(str::to_owned),
            duration_ms: c.duration_ms,
        });
    }
    failed.sort_by_key(|f| f.quarantined.is_some());
    let bad = counts.failed + counts.error;
    let only_quarantined_failed = bad > 0
        && rows
            .iter()
            .filter(|t| t.case.outcome.is_bad())
            .all(|t| cfg.tests.quarantine_entry(&t.key).is_some());
    let mut slow: Vec<&TestRow> = rows
        .iter()
        .filter(|t| t.case.duration_ms.is_some())
        .collect();
    slow.sort_by_key(|t| std::cmp::Reverse(t.case.duration_ms.unwrap_or(0)));
    let slowest = slow
        .into_iter()
        .take(SLOWEST)
        .map(|t| SlowTest {
            key: t.key.clone(),
            outcome: t.case.outcome.as_str().into(),
            duration_ms: t.case.duration_ms.unwrap_or(0),
            history_url: history_url(&t.key, &repo),
        })
        .collect();
    let base = format!("/jobs/{id}/results/{attempt}");
    let files = store
        .result_files(id, attempt)?
        .into_iter()
        .map(|f| FileView {
            url: format!("{base}/files/{}", url_part(&f.path)),
            path: f.path,
            kind: f.kind,
            bytes: f.bytes,
        })
        .collect();
    let archive = joblog::results_path(&cfg.log_dir(), id, attempt);
    let archive_url = (set.archive_bytes.is_some() && archive.exists())
        .then(|| format!("{base}/results.tar.zst"));
    Ok(Some(TestsView {
        attempt,
        counts,
        duration_ms,
        failed,
        slowest,
        files,
        archive_url,
        archive_bytes: set.archive_bytes,
        screenshot_url: set.screenshot.then(|| format!("{base}/screenshot.png")),
        notes: set.notes,
        only_quarantined_failed,
    }))
}

/// One run on a test's page.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub job_id: String,
    pub job_url: String,
    pub attempt: u32,
    pub repo: String,
    pub sha: String,
    pub short_sha: String,
    pub commit_url: String,
    pub branch: Option<String>,
    pub version: Option<String>,
    pub reason: String,
    pub outcome: String,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
    pub at_ms: i64,
}

/// A test's history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryView {
    pub key: String,
    pub repo: Option<String>,
    /// Newest first.
    pub runs: Vec<RunView>,
    pub last_success: Option<RunView>,
    /// The first failure after the last success (where it started failing), else the oldest.
    pub first_failure: Option<RunView>,
    pub counts: Counts,
    /// The longest duration among the runs (the trend's scale).
    pub max_duration_ms: i64,
    /// Whether the newest failure counts as flaky (the label), by the same rule as the job page.
    pub flaky: Option<String>,
    pub quarantined: Option<String>,
}

/// The runs of test `key` (of `repo` when given), newest first.
pub fn history_view(
    store: &Store,
    cfg: &Config,
    key: &str,
    repo: Option<&str>,
) -> Result<HistoryView> {
    let rows = store.test_history(key, repo, HISTORY_RUNS)?;
    let web = github_web(&cfg.agent.github_api);
    let runs: Vec<RunView> = rows
        .iter()
        .map(|h| RunView {
            job_id: h.job_id.clone(),
            job_url: format!("/jobs/{}", h.job_id),
            attempt: h.attempt,
            repo: h.repo.clone(),
            sha: h.sha.clone(),
            short_sha: h.sha.chars().take(7).collect(),
            commit_url: format!("{web}/{}/commit/{}", h.repo, h.sha),
            branch: h.branch.clone(),
            version: h.version.clone(),
            reason: h.reason.clone(),
            outcome: h.outcome.as_str().into(),
            duration_ms: h.duration_ms,
            message: h.message.clone(),
            at_ms: h.at_ms,
        })
        .collect();
    let mut counts = Counts {
        total: rows.len(),
        ..Counts::default()
    };
    for h in &rows {
        match h.outcome {
            CaseOutcome::Passed => counts.passed += 1,
            CaseOutcome::Skipped => counts.skipped += 1,
            CaseOutcome::Failed => counts.failed += 1,
            CaseOutcome::Error => counts.error += 1,
        }
    }
    let last_ok = rows.iter().position(|h| h.outcome == CaseOutcome::Passed);
    let newer = &rows[..last_ok.unwrap_or(rows.len())];
    let first_bad = newer
        .iter()
        .rposition(|h| h.outcome.is_bad())
        .or_else(|| rows.iter().rposition(|h| h.outcome.is_bad()));
    let flaky = rows.iter().find(|h| h.outcome.is_bad()).and_then(|h| {
        let all: Vec<Run> = rows
            .iter()
            .map(|r| Run {
                job_id: r.job_id.clone(),
                sha: r.sha.clone(),
                version: r.version.clone().unwrap_or_default(),
                outcome: r.outcome,
                at_ms: r.at_ms,
            })
            .collect();
        let this = all
            .iter()
            .find(|r| r.job_id == h.job_id && r.at_ms == h.at_ms)?;
        flakes::assess(this, &all, &cfg.tests.flake_rule()).map(|f| {
            format!(
                "known flaky: {}",
                f.describe(|ms| sdci_protocol::Utc::from_unix_millis(ms).rfc3339())
            )
        })
    });
    Ok(HistoryView {
        key: key.to_owned(),
        repo: repo.map(str::to_owned),
        max_duration_ms: rows.iter().filter_map(|h| h.duration_ms).max().unwrap_or(0),
        last_success: last_ok.map(|i| runs[i].clone()),
        first_failure: first_bad.map(|i| runs[i].clone()),
        runs,
        counts,
        flaky,
        quarantined: cfg.tests.quarantine_entry(key).map(str::to_owned),
    })
}

/// The query of a test's page.
#[derive(Debug, Deserialize)]
pub struct TestParams {
    pub key: Option<String>,
    pub repo: Option<String>,
}

/// The test's key and repository from the query; `None` without a usable key.
fn params(p: TestParams) -> Option<(String, Option<String>)> {
    let key = p.key.filter(|k| !k.is_empty() && k.len() <= 4096)?;
    Some((key, p.repo.filter(|r| !r.is_empty())))
}

fn no_key() -> Response {
    fail(
        StatusCode::BAD_REQUEST,
        "give the test as ?key=classname::name",
    )
}

/// `GET /tests?key=&repo=`.
pub async fn test_page(State(hub): State<Arc<Hub>>, Query(p): Query<TestParams>) -> Response {
    let Some((key, repo)) = params(p) else {
        return no_key();
    };
    let h = hub.clone();
    match blocking(move || history_view(&h.store, &h.cfg, &key, repo.as_deref())).await {
        Ok(v) => super::html_page(super::pages::test_page(&v)),
        Err(r) => r,
    }
}

/// `GET /api/v1/tests?key=&repo=`.
pub async fn test_api(State(hub): State<Arc<Hub>>, Query(p): Query<TestParams>) -> Response {
    let Some((key, repo)) = params(p) else {
        return no_key();
    };
    match blocking(move || history_view(&hub.store, &hub.cfg, &key, repo.as_deref())).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

fn text_kind(path: &str) -> bool {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    matches!(ext, "txt" | "log" | "xml" | "json")
}

/// The headers every served result file gets: never rendered as a page of the host's origin.
fn file_headers(resp: &mut Response, content_type: &'static str, filename: &str, attachment: bool) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let safe: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = if attachment { "attachment" } else { "inline" };
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
}

/// `?download=1` makes a text file an attachment too.
#[derive(Debug, Default, Deserialize)]
pub struct FileParams {
    pub download: Option<String>,
}

/// `GET /jobs/{id}/results/{attempt}/files/{*path}`: one member, streamed from the archive.
pub async fn member(
    State(hub): State<Arc<Hub>>,
    UrlPath((id, attempt, path)): UrlPath<(String, u32, String)>,
    Query(p): Query<FileParams>,
) -> Response {
    if id.parse::<sdci_protocol::JobId>().is_err()
        || sdci_protocol::results::validate_member_path(&path).is_err()
    {
        return fail(StatusCode::NOT_FOUND, "no such file");
    }
    let archive = joblog::results_path(&hub.cfg.log_dir(), &id, attempt);
    let max = hub.cfg.tests.archive_max_unpacked_bytes;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let (found_tx, found_rx) = tokio::sync::oneshot::channel::<std::io::Result<bool>>();
    let member = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut found_tx = Some(found_tx);
        let r = crate::orchestration::results::copy_member(&archive, &member, max, |chunk| {
            if let Some(f) = found_tx.take() {
                let _ = f.send(Ok(true));
            }
            tx.blocking_send(Ok(Bytes::copy_from_slice(chunk))).is_ok()
        });
        match (r, found_tx) {
            (r, Some(f)) => {
                let _ = f.send(r);
            }
            (Err(e), None) => {
                let _ = tx.blocking_send(Err(e));
            }
            (Ok(_), None) => {}
        }
    });
    match found_rx.await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return fail(StatusCode::NOT_FOUND, "no such file in the results"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(StatusCode::NOT_FOUND, "no results kept for this attempt")
        }
        Ok(Err(e)) => return fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the results failed",
            )
        }
    }
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut resp = Response::new(Body::from_stream(body));
    let name = path.rsplit('/').next().unwrap_or("file");
    let text = text_kind(&path);
    file_headers(
        &mut resp,
        if text {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        },
        &format!("{id}-{name}"),
        !text || p.download.is_some(),
    );
    resp
}

/// `GET /jobs/{id}/results/{attempt}/results.tar.zst`: the stored archive.
pub async fn archive(
    State(hub): State<Arc<Hub>>,
    UrlPath((id, attempt)): UrlPath<(String, u32)>,
) -> Response {
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return fail(StatusCode::NOT_FOUND, "no such job");
    }
    let path = joblog::results_path(&hub.cfg.log_dir(), &id, attempt);
    stream_file(
        &path,
        "application/octet-stream",
        &format!("{id}-attempt-{attempt}-results.tar.zst"),
        true,
    )
    .await
}

/// `GET /jobs/{id}/results/{attempt}/screenshot.png`: the console screenshot.
pub async fn screenshot(
    State(hub): State<Arc<Hub>>,
    UrlPath((id, attempt)): UrlPath<(String, u32)>,
) -> Response {
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return fail(StatusCode::NOT_FOUND, "no such job");
    }
    let path = joblog::screenshot_path(&hub.cfg.log_dir(), &id, attempt);
    stream_file(
        &path,
        "image/png",
        &format!("{id}-attempt-{attempt}-console.png"),
        false,
    )
    .await
}

async fn stream_file(
    path: &std::path::Path,
    content_type: &'static str,
    name: &str,
    attachment: bool,
) -> Response {
    use tokio::io::AsyncReadExt;
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(StatusCode::NOT_FOUND, "not kept for this attempt")
        }
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let body = futures::stream::unfold(Some(file), |state| async move {
        let mut f = state?;
        let mut buf = vec![0u8; joblog::READ_BUF];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    file_headers(&mut resp, content_type, name, attachment);
    if let Some(l) = len {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(l));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_links_only_for_relative_paths_inside_the_repository() {
        let u = source_url(
            "https://github.com",
            "o/r",
            "abc",
            "tests/test vms.py",
            Some(7),
        );
        assert_eq!(
            u.as_deref(),
            Some("https://github.com/o/r/blob/abc/tests/test%20vms.py#L8"),
            "pytest's 0-based line 7 is GitHub's line 8"
        );
        for bad in ["/home/u/x.py", "../x.py", "a/./b.py", "a\\b.py", "", "a//b"] {
            assert_eq!(source_url("w", "o/r", "abc", bad, None), None, "{bad}");
        }
    }

    #[test]
    fn a_tests_page_link_encodes_its_key() {
        assert_eq!(
            history_url("tests.t::test_a[x/y&z]", "o/r"),
            "/tests?key=tests.t%3A%3Atest_a%5Bx%2Fy%26z%5D&repo=o%2Fr"
        );
    }
}
