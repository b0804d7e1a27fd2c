//! The event ingest (contracts §1): `POST /api/v1/jobs/{id}/events` takes the agent's NDJSON
//! stream into the job's log (`joblog`); `GET` on the same path says where to resume.
//!
//! Invariants:
//! - Events are stored in `seq` order, exactly once: a lower `seq` is a resend and skipped, the
//!   next one is appended, a gap ends the request with `409 {"next_seq": N}`. The position is
//!   kept in the store (`jobs.event_next_seq`) and reset when a new attempt claims a VM (dom0
//!   numbers each attempt's stream from 0).
//! - One stream per job at a time (a per-job lock); a newer authenticated stream takes over (the
//!   older one ends with `409 {"next_seq": N}`), and a stream silent for
//!   `http.event_idle_timeout_secs` ends with `408 {"next_seq": N}`: a stalled connection never
//!   holds its job.
//! - The bearer secret is compared as a SHA-256 hash in constant time; the secret itself is
//!   stored nowhere, and it stops working when the job ends (or its attempt is abandoned): a job
//!   that is not active answers `410`, its position and recorded result never move again.
//! - Everything the VM sends is bounded: a request carries at most `ingest.max_request_bytes`
//!   (then `413 {"next_seq": N}`, the agent resumes with a new request), the streamed log of an
//!   attempt at most `ingest.max_log_bytes` (then one "truncated" line; further text is
//!   dropped, the events still count), step rows only for steps below `ingest.max_steps`, lines
//!   at most `MAX_EVENT_LINE`, and every string field is escaped and capped by protocol on decode.
//! - A malformed line ends the request with 400; the events before it stay stored.
//! - Each chunk's events are applied only after the position moved under the liveness check
//!   (`Store::advance_events`), so nothing of a chunk is written for an ended job.
//! - dom0's own log file, fetched when the job ends, replaces the streamed copy when they differ
//!   (`joblog::replace_log`).
//! - A `Result` event's outcome and reason are kept with the attempt (`Store::record_live_result`):
//!   the host posts every terminal status, and its description is that reason.

use crate::hub::Hub;
use crate::joblog::{self, append_log, Renderer};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use sdci_protocol::{Event, EventKind, NextSeq, MAX_EVENT_LINE};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

type Reply = (StatusCode, Json<serde_json::Value>);

/// `{"next_seq": N}`, protocol's [`NextSeq`] reply.
fn reply(code: StatusCode, next: u64) -> Reply {
    let body = serde_json::to_value(NextSeq::new(next)).unwrap_or_else(|_| json!({}));
    (code, Json(body))
}

fn error(code: StatusCode, msg: &str) -> Reply {
    (code, Json(json!({ "error": msg })))
}

fn gone() -> Reply {
    error(
        StatusCode::GONE,
        "the job is not running (it ended, or this attempt was abandoned): no more events",
    )
}

/// How long a new stream waits for the one it takes over to let go of the job.
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

/// Checks the job, its liveness and the bearer: `Ok((next_seq, attempt))`.
fn authorize(hub: &Hub, id: &str, headers: &HeaderMap) -> Result<(u64, u32), Reply> {
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return Err(error(StatusCode::NOT_FOUND, "no such job"));
    }
    let Some(secret) = bearer(headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    match hub.store.event_access(id, secret) {
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "no such job")),
        Ok(Some(a)) if !a.live => Err(gone()),
        Ok(Some(a)) if !a.secret_ok => Err(error(StatusCode::UNAUTHORIZED, "wrong bearer token")),
        Ok(Some(a)) => Ok((a.next_seq, a.attempt)),
        Err(e) => {
            tracing::error!(job = %id, error = %e, "event auth");
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"))
        }
    }
}

/// `GET /api/v1/jobs/{id}/events`.
pub async fn position(
    State(hub): State<Arc<Hub>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Reply {
    match authorize(&hub, &id, &headers) {
        Ok((next, _)) => reply(StatusCode::OK, next),
        Err(r) => r,
    }
}

/// The streamed log of one attempt, capped at `ingest.max_log_bytes`.
struct CappedLog {
    dir: PathBuf,
    id: String,
    written: u64,
    cap: u64,
}

/// How the "truncated" line ends: a log ending so is full (checked when a request opens it).
const TRUNCATED_TAIL: &str = "dom0's log.txt, fetched when the job ends, is the record\n";

impl CappedLog {
    fn open(dir: PathBuf, id: &str, cap: u64) -> Self {
        let path = joblog::log_path(&dir, id);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        let full = len >= cap || ends_with(&path, len, TRUNCATED_TAIL);
        Self {
            dir,
            id: id.to_owned(),
            written: if full { cap } else { len },
            cap,
        }
    }

    /// Appends what fits of `text` (whole lines), then once the "truncated" line; `Ok(true)`
    /// if anything was written.
    fn append(&mut self, text: &str) -> std::io::Result<bool> {
        if text.is_empty() || self.written >= self.cap {
            return Ok(false);
        }
        let room = (self.cap - self.written) as usize;
        if text.len() <= room {
            append_log(&self.dir, &self.id, text)?;
            self.written += text.len() as u64;
            return Ok(true);
        }
        // Whole lines that fit, then the marker; the file is full from here on.
        // Byte search: `room` need not be a character boundary, the byte after a `\n` is.
        let cut = text.as_bytes()[..room]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let marker = format!(
            "{} [sdci-host] log truncated: this attempt streamed more than {} bytes; \
             {TRUNCATED_TAIL}",
            sdci_protocol::Utc::now().rfc3339_millis(),
            self.cap
        );
        append_log(&self.dir, &self.id, &format!("{}{marker}", &text[..cut]))?;
        self.written = self.cap;
        Ok(true)
    }
}

/// Whether the file at `path` (of `len` bytes) ends with `tail`.
fn ends_with(path: &std::path::Path, len: u64, tail: &str) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let n = tail.len() as u64;
    if len < n {
        return false;
    }
    let mut buf = vec![0u8; tail.len()];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(len - n))?;
            f.read_exact(&mut buf)
        })
        .is_ok_and(|()| buf == tail.as_bytes())
}

/// `POST /api/v1/jobs/{id}/events`.
pub async fn ingest(
    State(hub): State<Arc<Hub>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    if let Err(r) = authorize(&hub, &id, &headers) {
        return r;
    }
    // Take over: the stream holding the job (perhaps a dead connection) is told to end.
    let slot = hub.event_slot(&id);
    let mut mine = 0;
    slot.generation.send_modify(|g| {
        *g += 1;
        mine = *g;
    });
    let mut newer = slot.generation.subscribe();
    let Ok(_guard) = tokio::time::timeout(TAKEOVER_WAIT, slot.lock.lock()).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "another event stream of this job did not let go; retry",
        );
    };
    if *slot.generation.borrow() != mine {
        // An even newer stream came while this one waited: it goes first.
        return error(StatusCode::CONFLICT, "a newer event stream took over");
    }
    // Read the position again under the lock: another stream may have advanced it.
    let (mut next, attempt) = match authorize(&hub, &id, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let limits = &hub.cfg.ingest;
    let idle = hub.cfg.http.event_idle_timeout();
    let mut log = CappedLog::open(hub.cfg.log_dir(), &id, limits.max_log_bytes);
    // Lines as dom0 writes them (contracts §3): steps of the job's total, named as they started
    // (names from the store when the stream resumes mid-step).
    let known = hub.store.step_timings(&id).unwrap_or_default();
    let known = known
        .into_iter()
        .filter(|t| !t.1.is_empty())
        .map(|t| (t.0, t.1));
    let mut renderer = Renderer::new(hub.cfg.steps().len(), known);
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut received: u64 = 0;
    let mut outcome: Option<Reply> = None;
    loop {
        let chunk = tokio::select! {
            biased;
            _ = newer.wait_for(|g| *g != mine) => {
                tracing::info!(job = %id, "a newer event stream took over");
                outcome = Some(reply(StatusCode::CONFLICT, next));
                break;
            }
            c = tokio::time::timeout(idle, stream.next()) => match c {
                Err(_) => {
                    tracing::info!(job = %id, secs = idle.as_secs(), "event stream silent; ended (the agent resumes)");
                    outcome = Some(reply(StatusCode::REQUEST_TIMEOUT, next));
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::warn!(job = %id, error = %e, "event stream broke off");
                    break;
                }
                Ok(Some(Ok(c))) => c,
            }
        };
        received += chunk.len() as u64;
        buf.extend_from_slice(&chunk);
        let mut accepted: Vec<Event> = Vec::new();
        let mut start = 0;
        let first = next;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            let ev = match Event::from_line(line) {
                Ok(ev) => ev,
                Err(e) => {
                    outcome = Some(error(
                        StatusCode::BAD_REQUEST,
                        &format!("line after seq {next}: {e}"),
                    ));
                    break;
                }
            };
            if ev.seq < next {
                continue;
            }
            if ev.seq > next {
                outcome = Some(reply(StatusCode::CONFLICT, next));
                break;
            }
            next += 1;
            accepted.push(ev);
        }
        buf.drain(..start);
        if next != first {
            // The liveness check: nothing of this chunk is kept for a job that ended.
            match hub.store.advance_events(&id, attempt, next) {
                Ok(true) => {}
                Ok(false) => return gone(),
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "saving the event position failed");
                    return error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
                }
            }
            let mut text = String::new();
            for ev in &accepted {
                text.push_str(&renderer.render(ev));
                step_timing(&hub, &id, attempt, ev);
            }
            match log.append(&text) {
                // Live viewers of the job page (`surface::web`) wait for this.
                Ok(true) => hub.logs.notify(&id),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "writing the job log failed");
                    return error(StatusCode::SERVICE_UNAVAILABLE, "cannot write the log");
                }
            }
        }
        if outcome.is_some() {
            break;
        }
        if buf.len() > MAX_EVENT_LINE + 1 {
            outcome = Some(error(StatusCode::BAD_REQUEST, "event line too long"));
            break;
        }
        if received >= limits.max_request_bytes {
            // Whole lines only were taken; the agent resumes at `next` with a new request.
            tracing::info!(job = %id, bytes = received, "event request reached ingest.max_request_bytes");
            outcome = Some(reply(StatusCode::PAYLOAD_TOO_LARGE, next));
            break;
        }
    }
    if outcome.is_none() && !buf.is_empty() {
        outcome = Some(error(StatusCode::BAD_REQUEST, "stream ended inside a line"));
    }
    // The end of a stream (usually the job's end): the attempt looks at launch now.
    hub.signal_end(&id);
    outcome.unwrap_or_else(|| reply(StatusCode::OK, next))
}

fn step_timing(hub: &Hub, id: &str, attempt: u32, ev: &Event) {
    let max_steps = hub.cfg.ingest.max_steps;
    let r = match &ev.kind {
        // Steps beyond the bound make no rows (their lines are in the log).
        EventKind::StepStarted { step, .. } | EventKind::StepFinished { step, .. }
            if *step >= max_steps =>
        {
            Ok(())
        }
        EventKind::StepStarted { step, name, .. } => hub.store.record_step(
            id,
            attempt,
            *step,
            name,
            Some(ev.ts_ms as i64),
            None,
            None,
            None,
        ),
        EventKind::StepFinished {
            step,
            status,
            timed_out,
            duration_ms,
        } => {
            hub.metrics.observe_step(*duration_ms as f64 / 1000.0);
            hub.store.record_step(
                id,
                attempt,
                *step,
                "",
                None,
                Some(*duration_ms as i64),
                Some(*status),
                Some(*timed_out),
            )
        }
        // The agent's verdict: the job's final status says its reason (`Store::finish`).
        EventKind::Result { outcome, reason } => {
            let r = hub
                .store
                .record_live_result(id, attempt, outcome.as_str(), reason)
                .map(drop);
            // `sdci-dom0 launch` ends right after: the attempt looks now, not at its next poll.
            hub.signal_end(id);
            r
        }
        _ => Ok(()),
    };
    if let Err(e) = r {
        tracing::warn!(job = %id, error = %e, "recording a step timing or result failed");
    }
}
