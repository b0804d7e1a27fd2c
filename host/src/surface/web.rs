//! Read-only pages: `GET /jobs`, `GET /jobs/{id}` (the statuses' `target_url`); and `POST
//! /api/v1/wake`, which only makes the service look at its store again (the CLI calls it after
//! queueing or canceling a job).
//!
//! Invariants: everything shown is HTML-escaped (logs come from the code under test); the pages
//! never show a secret (the store holds only the hash of event secrets).

use crate::hub::Hub;
use crate::joblog::log_path;
use crate::store::JobRow;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:sans-serif}}pre{{background:#f4f4f4;padding:1em;\
         white-space:pre-wrap}}td,th{{padding:0 .6em;text-align:left}}</style></head>\
         <body>{body}</body></html>",
        escape(title)
    ))
}

fn fmt_time(ms: i64) -> String {
    format!("{}s", ms / 1000)
}

fn row(j: &JobRow) -> String {
    format!(
        "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(j.state.as_str()),
        escape(j.repo.as_str()),
        escape(&j.sha[..j.sha.len().min(12)]),
        escape(j.branch.as_deref().unwrap_or("")),
        escape(j.version.as_deref().unwrap_or("?")),
        escape(j.vm.as_deref().unwrap_or("")),
        escape(j.note.as_deref().unwrap_or("")),
        id = escape(j.id.as_str()),
    )
}

/// `GET /jobs`.
pub async fn jobs(State(hub): State<Arc<Hub>>) -> Response {
    match hub.store.recent_jobs(200) {
        Ok(list) => {
            let mut body = String::from(
                "<h1>Jobs</h1><table><tr><th>job</th><th>state</th><th>repo</th><th>commit</th>\
                 <th>branch</th><th>Qubes</th><th>VM</th><th>note</th></tr>",
            );
            for j in &list {
                body.push_str(&row(j));
            }
            body.push_str("</table>");
            page("sdci jobs", &body).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// `GET /jobs/{id}`.
pub async fn job(State(hub): State<Arc<Hub>>, UrlPath(id): UrlPath<String>) -> Response {
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return (StatusCode::NOT_FOUND, "no such job").into_response();
    }
    let j = match hub.store.job(&id) {
        Ok(Some(j)) => j,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such job").into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let mut body = format!(
        "<h1>Job {}</h1><p><b>{}</b> {}</p><table><tr><th>job</th><th>state</th><th>repo</th>\
         <th>commit</th><th>branch</th><th>Qubes</th><th>VM</th><th>note</th></tr>{}</table>\
         <p>attempts: {}</p>",
        escape(j.id.as_str()),
        escape(j.state.as_str()),
        escape(j.note.as_deref().unwrap_or("")),
        row(&j),
        j.attempts
    );
    body.push_str("<h2>History</h2><table>");
    for (at, from, to, note) in hub.store.transitions(&id).unwrap_or_default() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{} → {}</td><td>{}</td></tr>",
            fmt_time(at),
            escape(from.as_deref().unwrap_or("")),
            escape(&to),
            escape(note.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</table><h2>Steps</h2><table>");
    for (step, name, dur, status) in hub.store.step_timings(&id).unwrap_or_default() {
        let _ = write!(
            body,
            "<tr><td>{step}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&name),
            dur.map(|d| format!("{:.1}s", d as f64 / 1000.0))
                .unwrap_or_default(),
            status.map(|s| s.to_string()).unwrap_or_default()
        );
    }
    body.push_str("</table><h2>Log</h2><pre>");
    let log = std::fs::read(log_path(&hub.cfg.log_dir(), &id)).unwrap_or_default();
    body.push_str(&escape(&String::from_utf8_lossy(&log)));
    body.push_str("</pre>");
    page(&format!("sdci job {id}"), &body).into_response()
}

pub async fn wake(State(hub): State<Arc<Hub>>) -> StatusCode {
    for id in hub.live_ids() {
        if let Ok(Some(j)) = hub.store.job(&id) {
            if j.cancel_requested.is_some() {
                hub.cancel_live(&id);
            }
        }
    }
    hub.wake_all();
    StatusCode::NO_CONTENT
}
