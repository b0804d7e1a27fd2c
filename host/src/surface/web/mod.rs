//! The job pages and the read API, for people and for scripts:
//!
//! - `GET /jobs` (filters `state`, `repo`, `branch`; paging `before`), `GET /jobs/{id}` (the
//!   statuses' `target_url`): HTML from maud templates ([`pages`]) over the shapes of [`model`],
//!   with a little plain script ([`assets`], served here, no CDN) for times in the viewer's zone,
//!   the live log and the list's refresh.
//! - `GET /api/v1/jobs`, `/api/v1/jobs/{id}`, `/api/v1/jobs/{id}/log?attempt=&from=&limit=`
//!   ([`api`]): the same shapes as JSON, as `sdci-host jobs list|show --json` prints them.
//! - `GET /api/v1/jobs/{id}/log/stream` ([`sse`]): the log's lines as server-sent events, live,
//!   resumable with `Last-Event-ID`.
//! - `GET /jobs/{id}/log.txt?attempt=N[&download=1]` ([`api::raw`]): the raw log, `text/plain`,
//!   with `Range`.
//! - `GET /jobs/{id}/results/{attempt}/files/{*path}`, `…/results.tar.zst`, `…/screenshot.png`,
//!   `GET /tests?key=&repo=` and `/api/v1/tests?key=&repo=` ([`results`]): a job's test results,
//!   its evidence files served from the stored archive (never as HTML), a test's history.
//! - `POST /api/v1/wake` ([`wake`]): makes the service look at its store again (the CLI calls it
//!   after queueing or canceling a job).
//! - `GET/POST /login`, `POST /logout`, `POST /jobs/{id}/{rerun,hold,release,cancel}` and
//!   `POST /api/v1/jobs/{id}/{rerun,hold,release,cancel}` ([`actions`]): the job page's buttons
//!   and their JSON equivalents, for a signed-in operator or the admin bearer only
//!   ([`session`] says who may and how it is checked).
//!
//! Invariants: everything shown is escaped by the template library, and script builds lines
//! with `textContent`, never markup from data; pages carry a Content-Security-Policy that allows
//! only the host's own script and style. The pages never show a secret (the store holds only the
//! hash of event secrets). No handler reads a log or the store on an async worker thread: they
//! go through `spawn_blocking`, and logs are read by line ranges with bounded buffers (`joblog`).

pub mod actions;
pub mod ansi;
pub mod api;
pub mod assets;
pub mod model;
pub mod pages;
pub mod results;
pub mod session;
pub mod sse;

use crate::hub::Hub;
use crate::joblog::{self, LogLines};
use crate::store::JobFilter;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::sync::Arc;

/// What a page may load: only the host's own script and style, no frames, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

/// The routes of this module (merged into the server's router).
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/log.txt", get(api::raw))
        .route("/api/v1/jobs", get(api::list))
        .route("/api/v1/jobs/{id}", get(api::detail))
        .route("/api/v1/jobs/{id}/log", get(api::log))
        .route("/api/v1/jobs/{id}/log/stream", get(sse::stream))
        .route(
            "/jobs/{id}/results/{attempt}/files/{*path}",
            get(results::member),
        )
        .route(
            "/jobs/{id}/results/{attempt}/results.tar.zst",
            get(results::archive),
        )
        .route(
            "/jobs/{id}/results/{attempt}/screenshot.png",
            get(results::screenshot),
        )
        .route("/tests", get(results::test_page))
        .route("/api/v1/tests", get(results::test_api))
        .route("/assets/{name}", get(assets::serve))
        .route("/login", get(actions::login_page).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/jobs/{id}/{action}", post(actions::form))
        .route("/api/v1/jobs/{id}/{action}", post(actions::api))
        // One process's browser sessions (in memory: a restart signs everyone out).
        .layer(Extension(Arc::new(session::Sessions::default())))
}

/// An HTML answer with the page headers.
fn html_page(markup: maud::Markup) -> Response {
    let mut r = Html(markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A plain-text error answer.
fn fail(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

/// Runs blocking work (store, files) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "serving a page");
            Err(fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
        Err(e) => Err(fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The list filters from the query string.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListParams {
    pub state: Option<String>,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

impl ListParams {
    /// The store's filter: `state` is one state, `active` (queued or holding a VM), or a
    /// comma-separated list; unknown states are refused.
    pub fn filter(&self, default_limit: u32) -> Result<JobFilter, String> {
        let mut states = Vec::new();
        for s in self
            .state
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
        {
            if s == "active" {
                states.push(crate::domain::JobState::Queued);
                states.extend(crate::domain::JobState::ACTIVE);
            } else {
                states.push(crate::domain::JobState::parse(s).ok_or_else(|| {
                    format!("unknown state {s:?}: use a job state, `active` or a list")
                })?);
            }
        }
        let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Ok(JobFilter {
            states,
            repo: text(&self.repo),
            branch: text(&self.branch),
            before: self.before,
            limit: self.limit.unwrap_or(default_limit),
        })
    }
}

/// `GET /jobs`.
pub async fn jobs(State(hub): State<Arc<Hub>>, Query(p): Query<ListParams>) -> Response {
    let filter = match p.filter(50) {
        Ok(f) => f,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let first = filter.before.is_none();
    let h = hub.clone();
    let list = match blocking(move || model::job_list(&h.store, &filter)).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let q = pages::ListQuery {
        state: p.state.unwrap_or_default(),
        repo: p.repo.unwrap_or_default(),
        branch: p.branch.unwrap_or_default(),
    };
    html_page(pages::list_page(&list, &q, first))
}

/// What the job page shows: the job, the current attempt's tail, the failing step's last lines.
type JobView = (model::JobDetail, Option<LogLines>, Option<LogLines>);

/// Lines of the failing step shown expanded.
const STEP_TAIL: u64 = 30;

fn job_view(hub: &Hub, id: &str) -> crate::Result<Option<JobView>> {
    let Some(d) = model::job_detail(&hub.store, &hub.cfg, &hub.logs, id)? else {
        return Ok(None);
    };
    let Some(current) = d.attempts.iter().find(|a| a.current) else {
        return Ok(Some((d, None, None)));
    };
    let path = joblog::log_of_attempt(&hub.cfg.log_dir(), id, current.attempt, d.job.attempts);
    let io = |e| crate::HostError::io(format!("reading {}", path.display()), e);
    let tail = hub
        .logs
        .tail(&path, pages::TAIL_LINES, pages::TAIL_BYTES)
        .map_err(io)?;
    let mut step_tail = None;
    if let Some(n) = pages::failing_step(current) {
        let info = hub.logs.info(&path).map_err(io)?;
        if let Some(info) = info {
            let start = info.steps.iter().find(|m| m.step == n).map(|m| m.line);
            let end = info
                .steps
                .iter()
                .find(|m| m.step > n)
                .map_or(info.lines, |m| m.line);
            if let Some(start) = start {
                let from = end.saturating_sub(STEP_TAIL).max(start);
                step_tail = hub
                    .logs
                    .read(&path, from, (end - from) as usize, 64 * 1024)
                    .map_err(io)?;
            }
        }
    }
    Ok(Some((d, tail, step_tail)))
}

/// `GET /jobs/{id}`: the buttons for a signed-in operator (with the last action's notice).
pub async fn job(
    State(hub): State<Arc<Hub>>,
    Extension(sessions): Extension<Arc<session::Sessions>>,
    UrlPath(id): UrlPath<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return fail(StatusCode::NOT_FOUND, "no such job");
    }
    let viewer = pages::Viewer {
        sign_in: sessions.enabled(&hub.cfg),
        csrf: sessions.signed(&hub.cfg, &headers).map(|s| s.csrf),
        notice: sessions.notice(&hub.cfg, &headers, &id),
    };
    let h = hub.clone();
    match blocking(move || job_view(&h, &id)).await {
        Ok(Some((d, tail, step_tail))) => html_page(pages::job_page(
            &d,
            tail.as_ref(),
            step_tail.as_ref(),
            &viewer,
        )),
        Ok(None) => fail(StatusCode::NOT_FOUND, "no such job"),
        Err(r) => r,
    }
}

/// `POST /api/v1/wake`: stops live jobs whose cancel was requested, wakes every loop.
pub async fn wake(State(hub): State<Arc<Hub>>) -> StatusCode {
    actions::wake(&hub);
    StatusCode::NO_CONTENT
}
