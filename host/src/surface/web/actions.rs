//! What an operator may do from the web (issue 18): sign in and out, and act on one job —
//! re-run it, re-run its tests from the provisioned snapshot, hold its VM, release the hold,
//! cancel it.
//!
//! - Browsers: `GET/POST /login`, `POST /logout`, and `POST /jobs/{id}/{rerun,hold,release,
//!   cancel}` from the job page's plain HTML forms (they work without script). Each answers
//!   `303 See Other`: to the new job's page for a re-run, else back to the job, with a one-line
//!   notice (or the refusal's text) shown there for a while ([`super::session::Notice`]).
//! - API clients: `POST /api/v1/jobs/{id}/{rerun,hold,release,cancel}` with the bearer, query
//!   `from=STAGE` (rerun) and `for=4h` (hold), answering JSON: `200 {"job": ID, "url": …}` for a
//!   re-run, `200 {"message": …}` otherwise, `409 {"error": …}` for a refusal, `404` for no such
//!   job.
//!
//! Who may is [`super::session`]'s rule, checked before anything is read or parsed beyond the
//! form's CSRF field. Each action calls the one rule the CLI and the check run call too:
//! [`reruns::rerun_from`], [`reruns::rerun`], [`holds::hold`] / [`holds::release`] and
//! [`cli::cancel_job`] — never a copy; then the service is woken as `POST /api/v1/wake` wakes it
//! (a canceled live job is stopped). A hold made here is recorded as asked by [`WHO`].

use super::session::{Notice, Refusal, Sessions};
use super::{blocking, html_page, pages};
use crate::hub::Hub;
use crate::surface::{cli, holds, reruns};
use crate::HostError;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::sync::Arc;

/// Who a hold from the web is recorded as.
pub const WHO: &str = "web (operator)";
/// How long "Hold VM" holds when no duration is given.
pub const DEFAULT_HOLD_SECS: u64 = 4 * 3600;

/// One action on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Rerun,
    Hold,
    Release,
    Cancel,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rerun" => Self::Rerun,
            "hold" => Self::Hold,
            "release" => Self::Release,
            "cancel" => Self::Cancel,
            _ => return None,
        })
    }
}

/// What an action came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new job (a re-run).
    Queued(String),
    /// Done; the line to show.
    Done(String),
    /// Refused; why (the text the CLI prints too).
    Refused(String),
    NoSuchJob,
}

/// Decodes an `application/x-www-form-urlencoded` body: `(name, value)` pairs.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len()
                    && b[i + 1].is_ascii_hexdigit()
                    && b[i + 2].is_ascii_hexdigit() =>
                {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("0");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Runs `action` on job `id` through the one rule each has (module doc). Blocks.
pub fn act(
    hub: &Hub,
    id: &str,
    action: Action,
    from: Option<&str>,
    for_: Option<&str>,
) -> crate::Result<Outcome> {
    let store = &hub.store;
    if store.job(id)?.is_none() {
        return Ok(Outcome::NoSuchJob);
    }
    let refused = |e: HostError| match e {
        HostError::Invalid(t) => Ok(Outcome::Refused(t)),
        HostError::NoSuchJob(_) => Ok(Outcome::NoSuchJob),
        other => Err(other),
    };
    let out = match action {
        Action::Rerun => match from {
            Some(stage) => {
                let why = format!("re-run from stage {stage} on the job page by {WHO}");
                match reruns::rerun_from(store, None, id, stage, &why)? {
                    reruns::Answer::Queued(j) => Outcome::Queued(j.to_string()),
                    reruns::Answer::Refused(t) => Outcome::Refused(t),
                    reruns::Answer::NoSuchJob | reruns::Answer::DuplicateDelivery => {
                        Outcome::NoSuchJob
                    }
                }
            }
            None => {
                let why = format!("re-run on the job page by {WHO}");
                match reruns::rerun(store, "web", id, &why)? {
                    Some(j) => Outcome::Queued(j.to_string()),
                    None => Outcome::NoSuchJob,
                }
            }
        },
        Action::Hold => {
            let secs = match for_ {
                Some(t) => match holds::parse_for(t) {
                    Ok(s) => s,
                    Err(e) => return Ok(Outcome::Refused(e)),
                },
                None => DEFAULT_HOLD_SECS,
            };
            match holds::hold(store, id, secs, WHO) {
                Ok(t) => Outcome::Done(t),
                Err(e) => return refused(e),
            }
        }
        Action::Release => match holds::release(store, id) {
            Ok(t) => Outcome::Done(t),
            Err(e) => return refused(e),
        },
        Action::Cancel => match cli::cancel_job(store, id, &format!("canceled by {WHO}")) {
            Ok(true) => Outcome::Done(format!("{id}: canceled")),
            Ok(false) => Outcome::Done(format!("{id}: asked to stop; it ends shortly")),
            Err(e) => return refused(e),
        },
    };
    if !matches!(out, Outcome::Refused(_) | Outcome::NoSuchJob) {
        wake(hub);
    }
    Ok(out)
}

/// What `POST /api/v1/wake` does: stops live jobs whose cancel was requested, wakes every loop.
pub fn wake(hub: &Hub) {
    for id in hub.live_ids() {
        if let Ok(Some(j)) = hub.store.job(&id) {
            if j.cancel_requested.is_some() {
                hub.cancel_live(&id);
            }
        }
    }
    hub.wake_all();
}

fn page_refusal(r: &Refusal) -> Response {
    let mut resp = html_page(pages::message_page("Not allowed", r.text()));
    *resp.status_mut() = r.status();
    resp
}

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `POST /jobs/{id}/{action}` from the job page's forms.
pub async fn form(
    State(hub): State<Arc<Hub>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    UrlPath((id, action)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    if let Err(r) = sessions.authorize_form(&hub.cfg, &headers, field(&pairs, "csrf")) {
        tracing::info!(job = %id, action = %action, refusal = ?r, "a web action refused");
        return page_refusal(&r);
    }
    let Some(act_of) = Action::parse(&action) else {
        return super::fail(StatusCode::NOT_FOUND, "no such action");
    };
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return super::fail(StatusCode::NOT_FOUND, "no such job");
    }
    let (from, for_) = (
        field(&pairs, "from").map(str::to_owned),
        field(&pairs, "for").map(str::to_owned),
    );
    let (h, j) = (hub.clone(), id.clone());
    let out = blocking(move || act(&h, &j, act_of, from.as_deref(), for_.as_deref())).await;
    let out = match out {
        Ok(o) => o,
        Err(r) => return r,
    };
    tracing::info!(job = %id, action = %action, outcome = ?out, who = WHO, "a web action");
    let notice = |text: String, refused: bool| Notice {
        job: id.clone(),
        text,
        refused,
    };
    match out {
        Outcome::Queued(new) => {
            let text = format!("queued job {new}, a re-run of {id}");
            sessions.notify(
                &hub.cfg,
                &headers,
                Notice {
                    job: new.clone(),
                    text,
                    refused: false,
                },
            );
            see_other(&format!("/jobs/{new}"))
        }
        Outcome::Done(text) => {
            sessions.notify(&hub.cfg, &headers, notice(text, false));
            see_other(&format!("/jobs/{id}"))
        }
        Outcome::Refused(text) => {
            sessions.notify(&hub.cfg, &headers, notice(text, true));
            see_other(&format!("/jobs/{id}"))
        }
        Outcome::NoSuchJob => super::fail(StatusCode::NOT_FOUND, "no such job"),
    }
}

/// The JSON actions' options.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ApiParams {
    /// The stage a re-run starts from (`test`); none: the full run.
    pub from: Option<String>,
    /// How long a hold lasts (`4h`, `30m`, seconds).
    #[serde(rename = "for")]
    pub for_: Option<String>,
}

/// `POST /api/v1/jobs/{id}/{action}` with the bearer.
pub async fn api(
    State(hub): State<Arc<Hub>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    UrlPath((id, action)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Query(p): Query<ApiParams>,
) -> Response {
    let error = |code: StatusCode, text: &str| {
        (code, Json(serde_json::json!({ "error": text }))).into_response()
    };
    if let Err(r) = sessions.bearer(&hub.cfg, &headers) {
        if r == Refusal::NotSignedIn && headers.contains_key(header::AUTHORIZATION) {
            // A wrong bearer costs what a wrong sign-in costs.
            tokio::time::sleep(super::session::WRONG_TOKEN_DELAY).await;
        }
        let mut resp = error(r.status(), r.text());
        if r == Refusal::NotSignedIn {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return resp;
    }
    let Some(act_of) = Action::parse(&action) else {
        return error(StatusCode::NOT_FOUND, "no such action");
    };
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return error(StatusCode::NOT_FOUND, "no such job");
    }
    let (h, j) = (hub.clone(), id.clone());
    let out = blocking(move || act(&h, &j, act_of, p.from.as_deref(), p.for_.as_deref())).await;
    let out = match out {
        Ok(o) => o,
        Err(r) => return r,
    };
    tracing::info!(job = %id, action = %action, outcome = ?out, "an API action");
    match out {
        Outcome::Queued(new) => Json(serde_json::json!({
            "job": new,
            "url": format!("{}/jobs/{new}", hub.cfg.public_url),
        }))
        .into_response(),
        Outcome::Done(text) => Json(serde_json::json!({ "message": text })).into_response(),
        Outcome::Refused(text) => error(StatusCode::CONFLICT, &text),
        Outcome::NoSuchJob => error(StatusCode::NOT_FOUND, "no such job"),
    }
}

/// `GET /login`.
pub async fn login_page(
    State(hub): State<Arc<Hub>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    Query(q): Query<NextParam>,
) -> Response {
    if !sessions.enabled(&hub.cfg) {
        return off();
    }
    let signed = sessions.signed(&hub.cfg, &headers);
    html_page(pages::login_page(
        signed.as_ref().map(|s| s.csrf.as_str()),
        safe_next(q.next.as_deref()),
        None,
    ))
}

/// Where to go after signing in.
#[derive(Debug, Default, serde::Deserialize)]
pub struct NextParam {
    pub next: Option<String>,
}

/// Only a job page of this host (never another site, `//evil`, or a scheme).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/jobs/")
                && n[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_') =>
        {
            n
        }
        _ => "/jobs",
    }
}

fn off() -> Response {
    let mut r = html_page(pages::message_page(
        "No sign-in",
        "This host has no http.admin_token_file, so nobody can sign in and the job pages show \
         the commands to type on the host instead of buttons.",
    ));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// `POST /login`: the admin token, once; a session cookie back.
pub async fn login(
    State(hub): State<Arc<Hub>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !sessions.enabled(&hub.cfg) {
        return off();
    }
    if !super::session::same_origin(&headers, &hub.cfg) {
        return page_refusal(&Refusal::CrossSite);
    }
    let pairs = form_pairs(&body);
    let next = safe_next(field(&pairs, "next")).to_owned();
    let token = field(&pairs, "token").unwrap_or("");
    match sessions.check_token(&hub.cfg, token) {
        None => match sessions.start(&hub.cfg) {
            Some(cookie) => {
                tracing::info!("an operator signed in on the web");
                let mut r = see_other(&next);
                r.headers_mut().insert(header::SET_COOKIE, cookie);
                r
            }
            None => super::fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "the OS gave no random bytes for a session; try again",
            ),
        },
        Some(Refusal::NotSignedIn) => {
            tracing::warn!("a sign-in with a wrong admin token");
            tokio::time::sleep(super::session::WRONG_TOKEN_DELAY).await;
            let mut r = html_page(pages::login_page(
                None,
                &next,
                Some("That is not this host's admin token (http.admin_token_file)."),
            ));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
        Some(other) => page_refusal(&other),
    }
}

/// `POST /logout`.
pub async fn logout(
    State(hub): State<Arc<Hub>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    if let Err(r) = sessions.authorize_form(&hub.cfg, &headers, field(&pairs, "csrf")) {
        return page_refusal(&r);
    }
    sessions.end(&hub.cfg, &headers);
    let mut r = see_other("/jobs");
    r.headers_mut()
        .insert(header::SET_COOKIE, Sessions::clear_cookie());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_body_is_decoded_as_browsers_encode_it() {
        let p = form_pairs(b"csrf=ab12&from=test&token=a%2Bb+c%25&empty=&bad=%zz");
        assert_eq!(field(&p, "csrf"), Some("ab12"));
        assert_eq!(field(&p, "token"), Some("a+b c%"));
        assert_eq!(field(&p, "empty"), None);
        assert_eq!(field(&p, "bad"), Some("%zz"));
        assert_eq!(field(&form_pairs(b"x=%4"), "x"), Some("%4"));
    }

    #[test]
    fn after_sign_in_only_a_job_page_of_this_host_is_a_destination() {
        assert_eq!(safe_next(Some("/jobs/abc-1")), "/jobs/abc-1");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/jobs/../x?",
            "/login",
        ] {
            assert_eq!(safe_next(Some(bad)), "/jobs", "{bad}");
        }
    }
}
