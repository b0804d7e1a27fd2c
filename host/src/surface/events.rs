//! The event ingest (contracts §1): `POST /api/v1/jobs/{id}/events` takes the agent's NDJSON
//! stream into the job's log (`joblog`); `GET` on the same path says where to resume.
//!
//! Invariants:
//! - Events are stored in `seq` order, exactly once: a lower `seq` is a resend and skipped, the
//!   next one is appended, a gap ends the request with `409 {"next_seq": N}`. The position is
//!   kept in the store (`jobs.event_next_seq`) and reset when a new attempt claims a VM (dom0
//!   numbers each attempt's stream from 0).
//! - One stream per job at a time (a per-job lock), so two connections cannot interleave.
//! - The bearer secret is compared as a SHA-256 hash in constant time; the secret itself is
//!   stored nowhere.
//! - A malformed line ends the request with 400; the events before it stay stored.
//! - dom0's own log file, fetched when the job ends, replaces the streamed copy when they differ
//!   (`joblog::replace_log`).
//! - A `Result` event's outcome and reason are kept with the attempt (`Store::record_result`):
//!   the host posts every terminal status, and its description is that reason.

use crate::hub::Hub;
use crate::joblog::{append_log, Renderer};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use sdci_protocol::{Event, EventKind, NextSeq, MAX_EVENT_LINE};
use serde_json::json;
use std::sync::Arc;

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

/// Checks the job and the bearer: `Ok((next_seq, attempt))`.
fn authorize(hub: &Hub, id: &str, headers: &HeaderMap) -> Result<(u64, u32), Reply> {
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return Err(error(StatusCode::NOT_FOUND, "no such job"));
    }
    let Some(secret) = bearer(headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    match hub.store.event_auth(id, secret) {
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "no such job")),
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
    let lock = hub.event_lock(&id);
    let _guard = lock.lock().await;
    // Read the position again under the lock: another stream may have advanced it.
    let (mut next, attempt) = match authorize(&hub, &id, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let dir = hub.cfg.log_dir();
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
    let mut outcome: Option<Reply> = None;
    'read: while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "event stream broke off");
                break 'read;
            }
        };
        buf.extend_from_slice(&chunk);
        let mut text = String::new();
        let mut start = 0;
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
            text.push_str(&renderer.render(&ev));
            step_timing(&hub, &id, attempt, &ev);
            next += 1;
        }
        buf.drain(..start);
        if !text.is_empty() {
            if let Err(e) = append_log(&dir, &id, &text) {
                tracing::error!(job = %id, error = %e, "writing the job log failed");
                return error(StatusCode::SERVICE_UNAVAILABLE, "cannot write the log");
            }
            // Live viewers of the job page (`surface::web`) wait for this.
            hub.logs.notify(&id);
        }
        if let Err(e) = hub.store.set_event_next_seq(&id, next) {
            tracing::error!(job = %id, error = %e, "saving the event position failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
        }
        if outcome.is_some() {
            break;
        }
        if buf.len() > MAX_EVENT_LINE + 1 {
            outcome = Some(error(StatusCode::BAD_REQUEST, "event line too long"));
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
    let r = match &ev.kind {
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
                .record_result(id, attempt, outcome.as_str(), reason);
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
