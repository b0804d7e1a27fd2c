//! The JSON read API (README "Job pages and API") and the raw log:
//!
//! - `GET /api/v1/jobs?state=&repo=&branch=&before=&limit=` → [`model::JobList`];
//! - `GET /api/v1/jobs/{id}` → [`model::JobDetail`];
//! - `GET /api/v1/jobs/{id}/log?attempt=N&from=L&limit=M` (or `&tail=M`) → [`LogAnswer`]: lines
//!   `L..L+M` (from 0) of attempt N's log (default: the current attempt), at most
//!   [`MAX_LIMIT`] lines and [`MAX_BYTES`] of text;
//! - `GET /jobs/{id}/log.txt?attempt=N[&download=1]`: the log as `text/plain`, one `Range:
//!   bytes=…` honoured (206, or 416 past the end), streamed from the file in
//!   [`joblog::READ_BUF`] pieces.
//!
//! Invariants: ids are parsed as `JobId` before anything else; nothing reads a log whole or on
//! an async worker (the raw log streams through `tokio::fs`, line ranges go through
//! `spawn_blocking`).

use super::{blocking, fail, model, ListParams};
use crate::hub::Hub;
use crate::joblog::{self, LogLines, READ_BUF};
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The most lines one answer of `/log` holds.
pub const MAX_LIMIT: usize = 5000;
/// The most log text one answer of `/log` holds (at least one line is always given).
pub const MAX_BYTES: usize = 1024 * 1024;

/// `GET /api/v1/jobs`.
pub async fn list(State(hub): State<Arc<Hub>>, Query(p): Query<ListParams>) -> Response {
    let filter = match p.filter(50) {
        Ok(f) => f,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    match blocking(move || model::job_list(&hub.store, &filter)).await {
        Ok(list) => Json(list).into_response(),
        Err(r) => r,
    }
}

fn valid(id: &str) -> bool {
    id.parse::<sdci_protocol::JobId>().is_ok()
}

/// `GET /api/v1/jobs/{id}`.
pub async fn detail(State(hub): State<Arc<Hub>>, UrlPath(id): UrlPath<String>) -> Response {
    if !valid(&id) {
        return fail(StatusCode::NOT_FOUND, "no such job");
    }
    match blocking(move || model::job_detail(&hub.store, &hub.cfg, &hub.logs, &id)).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => fail(StatusCode::NOT_FOUND, "no such job"),
        Err(r) => r,
    }
}

/// Which log, and which part of it.
#[derive(Debug, Default, Deserialize)]
pub struct LogParams {
    /// The attempt (from 1); default: the job's current one.
    pub attempt: Option<u32>,
    /// The first line (from 0).
    pub from: Option<u64>,
    pub limit: Option<usize>,
    /// The last N lines instead of `from`.
    pub tail: Option<u64>,
}

/// Lines of one attempt's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogAnswer {
    pub attempt: u32,
    #[serde(flatten)]
    pub lines: LogLines,
    /// The first line not in this answer: ask `from=next` for more.
    pub next: u64,
}

/// The log file of attempt `attempt` (default: the current one) of job `id`: `None` if there
/// is no such job or attempt. Blocks.
pub fn log_file(
    hub: &Hub,
    id: &str,
    attempt: Option<u32>,
) -> crate::Result<Option<(PathBuf, u32)>> {
    let Some(j) = hub.store.job(id)? else {
        return Ok(None);
    };
    let attempt = attempt.unwrap_or(j.attempts);
    if attempt > j.attempts {
        return Ok(None);
    }
    let path = joblog::log_of_attempt(&hub.cfg.log_dir(), id, attempt, j.attempts);
    Ok(Some((path, attempt)))
}

/// `GET /api/v1/jobs/{id}/log`.
pub async fn log(
    State(hub): State<Arc<Hub>>,
    UrlPath(id): UrlPath<String>,
    Query(p): Query<LogParams>,
) -> Response {
    if !valid(&id) {
        return fail(StatusCode::NOT_FOUND, "no such job");
    }
    let limit = p.limit.unwrap_or(1000).clamp(1, MAX_LIMIT);
    let got = blocking(move || {
        let Some((path, attempt)) = log_file(&hub, &id, p.attempt)? else {
            return Ok(None);
        };
        let io = |e| crate::HostError::io(format!("reading {}", path.display()), e);
        let lines = match p.tail {
            Some(n) => hub
                .logs
                .tail(&path, n.min(MAX_LIMIT as u64), MAX_BYTES)
                .map_err(io)?,
            None => hub
                .logs
                .read(&path, p.from.unwrap_or(0), limit, MAX_BYTES)
                .map_err(io)?,
        };
        let lines = lines.unwrap_or(LogLines {
            generation: 0,
            from: 0,
            lines: Vec::new(),
            total: 0,
        });
        Ok(Some(LogAnswer {
            attempt,
            next: lines.next(),
            lines,
        }))
    })
    .await;
    match got {
        Ok(Some(a)) => Json(a).into_response(),
        Ok(None) => fail(StatusCode::NOT_FOUND, "no such job or attempt"),
        Err(r) => r,
    }
}

/// The raw log's options.
#[derive(Debug, Default, Deserialize)]
pub struct RawParams {
    pub attempt: Option<u32>,
    /// Any value: answer as an attachment.
    pub download: Option<String>,
}

/// What a `Range` header asks of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// The whole file (no header, several ranges, another unit, nonsense).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// It starts past the end: 416.
    Unsatisfiable,
}

/// One byte range of a `len`-byte file from a `Range` header.
pub fn byte_range(header: Option<&str>, len: u64) -> Ranged {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // The last `b` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ranged::Whole;
        };
        if n == 0 || len == 0 {
            return Ranged::Unsatisfiable;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ranged::Whole;
        };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return Ranged::Whole,
            }
        };
        if start >= len {
            return Ranged::Unsatisfiable;
        }
        (start, end)
    };
    Ranged::Part(range.0, range.1)
}

/// `GET /jobs/{id}/log.txt`.
pub async fn raw(
    State(hub): State<Arc<Hub>>,
    UrlPath(id): UrlPath<String>,
    Query(p): Query<RawParams>,
    headers: HeaderMap,
) -> Response {
    if !valid(&id) {
        return fail(StatusCode::NOT_FOUND, "no such job");
    }
    let name = id.clone();
    let found = match blocking(move || log_file(&hub, &id, p.attempt)).await {
        Ok(Some(f)) => f,
        Ok(None) => return fail(StatusCode::NOT_FOUND, "no such job or attempt"),
        Err(r) => return r,
    };
    let (path, attempt) = found;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(StatusCode::NOT_FOUND, "no log for this attempt")
        }
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match byte_range(range, len) {
        Ranged::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e),
        Ranged::Whole => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ranged::Unsatisfiable => {
            let mut r = fail(StatusCode::RANGE_NOT_SATISFIABLE, "range past the end");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    if start > 0 {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            return fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
    }
    let reader = file.take(count);
    let body = futures::stream::unfold(Some(reader), |state| async move {
        let mut r = state?;
        let mut buf = vec![0u8; READ_BUF];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(r)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    if p.download.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "attachment; filename=\"{name}-attempt-{attempt}.log\""
        )) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::{byte_range, Ranged};

    #[test]
    fn ranges_are_read_as_http_says() {
        assert_eq!(byte_range(None, 10), Ranged::Whole);
        assert_eq!(byte_range(Some("bytes=2-4"), 10), Ranged::Part(2, 4));
        assert_eq!(byte_range(Some("bytes=7-"), 10), Ranged::Part(7, 9));
        assert_eq!(byte_range(Some("bytes=-3"), 10), Ranged::Part(7, 9));
        assert_eq!(byte_range(Some("bytes=5-99"), 10), Ranged::Part(5, 9));
        assert_eq!(byte_range(Some("bytes=10-"), 10), Ranged::Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=0-1,4-5"), 10), Ranged::Whole);
        assert_eq!(byte_range(Some("items=0-1"), 10), Ranged::Whole);
        assert_eq!(byte_range(Some("bytes=4-2"), 10), Ranged::Whole);
    }
}
