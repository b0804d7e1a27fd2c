//! Who may change anything from the web, and how it is checked: the one rule behind the job
//! page's buttons and the JSON actions under `/api/v1/jobs/{id}/…` ([`super::actions`]).
//!
//! - **No `http.admin_token_file`: nobody.** There is no sign-in, the page shows the commands to
//!   type (as before the buttons existed), and every action answers 403 saying why. A host
//!   without an operator secret cannot tell an operator from anyone who reaches the listener.
//! - **API clients**: `Authorization: Bearer <admin token>`, compared as SHA-256 digests with a
//!   constant-time fold (as the admin gate in `server` does). A bearer is never sent by a browser
//!   on its own, so it needs no CSRF defence.
//! - **Browsers**: an operator pastes the admin token once on `GET /login`; `POST /login` answers
//!   with a session cookie `sdci_session` (`HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure`
//!   when `public_url` is `https://`), a 256-bit id from the OS's random source (`ring`'s
//!   `SystemRandom`), held in memory only ([`SESSION_SECS`]; a restart signs everyone out) and
//!   keyed by its SHA-256, so neither a lookup's timing nor a memory dump gives an id back.
//!   A wrong token (at sign-in, or as a bearer on an action) is refused with a plain message
//!   after [`WRONG_TOKEN_DELAY`]; the token is never echoed, stored or logged.
//! - **Every state-changing request from a browser** carries the session's CSRF token (a hidden
//!   form field, random per session, compared in constant time) **and** passes the same-origin
//!   check ([`same_origin`]): `Sec-Fetch-Site` must be `same-origin` when sent, `Origin` must be
//!   this host (its `Host` header or `public_url`) when sent, and at least one of them must be
//!   there. `SameSite=Strict` alone would do in today's browsers; the three together do not rely
//!   on any one of them.
//! - **A GET never changes anything**: the action routes answer only `POST`.
//!
//! Invariants: nothing here logs a token, a session id or a CSRF token; a session is only ever
//! created by the right admin token; an unreadable token file refuses everything (fail closed).

use crate::config::Config;
use axum::http::{header, HeaderMap, HeaderValue};
use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The session cookie's name.
pub const COOKIE: &str = "sdci_session";
/// How long a browser session lasts (12 h), from sign-in.
pub const SESSION_SECS: i64 = 12 * 3600;
/// How long a wrong admin token waits for its refusal.
pub const WRONG_TOKEN_DELAY: Duration = Duration::from_secs(1);
/// How long the last action's notice stays on its job's page.
pub const NOTICE_MS: i64 = 120_000;
/// Sessions held at most; the oldest goes first (only the admin token makes one).
const MAX_SESSIONS: usize = 1000;

/// What the host's configuration allows.
enum Gate {
    /// No `http.admin_token_file`: no sign-in, no actions.
    Off,
    /// The admin token's SHA-256.
    Token([u8; 32]),
    /// Configured but unreadable: refuse everything.
    Unreadable,
}

/// One signed-in browser.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires_ms: i64,
    /// The one-line outcome of the last action and when it was left: shown on the job it was
    /// about for [`NOTICE_MS`] (the page reloads itself when an attempt starts).
    notice: Option<(Notice, i64)>,
}

/// What the page says after an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub job: String,
    pub text: String,
    /// A refusal (shown as one), not a success.
    pub refused: bool,
}

/// A signed-in browser, as a page sees it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The token its forms carry.
    pub csrf: String,
}

/// Whether a request may act, and if not, why (the answer's status and text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: no admin token configured.
    Off,
    /// 503: the token file cannot be read.
    Unreadable,
    /// 401: no (valid) session or bearer.
    NotSignedIn,
    /// 403: the request came from another site.
    CrossSite,
    /// 403: the form's CSRF token is missing or wrong.
    BadCsrf,
}

impl Refusal {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::Off | Self::CrossSite | Self::BadCsrf => StatusCode::FORBIDDEN,
            Self::Unreadable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotSignedIn => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn text(&self) -> &'static str {
        match self {
            Self::Off => {
                "actions from the web are off: the host has no http.admin_token_file (use \
                 sdci-host jobs … on the host)"
            }
            Self::Unreadable => "the admin token file cannot be read: every action is refused",
            Self::NotSignedIn => {
                "not signed in: sign in at /login with the admin token, or send \
                 Authorization: Bearer <admin token>"
            }
            Self::CrossSite => "refused: this request came from another site",
            Self::BadCsrf => {
                "refused: the form's token is missing or stale (reload the page and try again)"
            }
        }
    }
}

/// The browser sessions of one `serve` process, and the admin token they were signed in with.
pub struct Sessions {
    gate: OnceLock<Gate>,
    map: Mutex<HashMap<[u8; 32], Session>>,
    rng: ring::rand::SystemRandom,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            gate: OnceLock::new(),
            map: Mutex::default(),
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal digests, in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a browser's state-changing request comes from this host's own pages (module doc).
pub fn same_origin(headers: &HeaderMap, cfg: &Config) -> bool {
    let text = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let site = text("sec-fetch-site");
    let origin = text("origin");
    if site.is_some_and(|s| s != "same-origin") {
        return false;
    }
    if let Some(o) = origin {
        let host = text("host").unwrap_or("");
        let public = cfg.public_url.trim_end_matches('/');
        let ours = !host.is_empty()
            && (o == format!("http://{host}") || o == format!("https://{host}"))
            || o == public;
        if !ours {
            return false;
        }
    }
    site.is_some() || origin.is_some()
}

impl Sessions {
    fn gate(&self, cfg: &Config) -> &Gate {
        self.gate.get_or_init(|| {
            let Some(path) = &cfg.http.admin_token_file else {
                return Gate::Off;
            };
            match crate::config::read_secret(path, "admin token") {
                Ok(t) => Gate::Token(digest(t.expose().as_bytes())),
                Err(e) => {
                    tracing::error!(error = %e, "the admin token cannot be read: the job page's actions refuse everything");
                    Gate::Unreadable
                }
            }
        })
    }

    /// Whether sign-in exists at all (an admin token is configured).
    pub fn enabled(&self, cfg: &Config) -> bool {
        !matches!(self.gate(cfg), Gate::Off)
    }

    /// `None` if `token` is the admin token; else why not.
    pub fn check_token(&self, cfg: &Config, token: &str) -> Option<Refusal> {
        match self.gate(cfg) {
            Gate::Off => Some(Refusal::Off),
            Gate::Unreadable => Some(Refusal::Unreadable),
            Gate::Token(want) => {
                (!same(&digest(token.trim().as_bytes()), want)).then_some(Refusal::NotSignedIn)
            }
        }
    }

    /// An API client: `Authorization: Bearer <admin token>`.
    pub fn bearer(&self, cfg: &Config, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(r @ (Refusal::Off | Refusal::Unreadable)) = self.check_token(cfg, "") {
            return Err(r);
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Refusal::NotSignedIn)?;
        match self.check_token(cfg, given) {
            None => Ok(()),
            Some(r) => Err(r),
        }
    }

    fn random_hex(&self) -> Option<String> {
        let mut b = [0u8; 32];
        self.rng.fill(&mut b).ok()?;
        Some(hex::encode(b))
    }

    /// Signs a browser in (the caller checked the token): the `Set-Cookie` value, or `None` when
    /// the OS gave no random bytes.
    pub fn start(&self, cfg: &Config) -> Option<HeaderValue> {
        let id = self.random_hex()?;
        let csrf = self.random_hex()?;
        let now = crate::now_ms();
        let mut map = lock(&self.map);
        map.retain(|_, s| s.expires_ms > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            digest(id.as_bytes()),
            Session {
                csrf,
                expires_ms: now + SESSION_SECS * 1000,
                notice: None,
            },
        );
        let secure = if cfg.public_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        HeaderValue::from_str(&format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECS}{secure}"
        ))
        .ok()
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn clear_cookie() -> HeaderValue {
        HeaderValue::from_static("sdci_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }

    fn key(&self, cfg: &Config, headers: &HeaderMap) -> Option<[u8; 32]> {
        if !matches!(self.gate(cfg), Gate::Token(_)) {
            return None;
        }
        let id = cookie_value(headers, COOKIE)?;
        let key = digest(id.as_bytes());
        let now = crate::now_ms();
        let mut map = lock(&self.map);
        match map.get(&key) {
            Some(s) if s.expires_ms > now => Some(key),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// The signed-in browser that sent `headers`, if any (for showing the buttons).
    pub fn signed(&self, cfg: &Config, headers: &HeaderMap) -> Option<Signed> {
        let key = self.key(cfg, headers)?;
        lock(&self.map).get(&key).map(|s| Signed {
            csrf: s.csrf.clone(),
        })
    }

    /// A browser's state-changing request: same origin, signed in, the session's CSRF token.
    pub fn authorize_form(
        &self,
        cfg: &Config,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<(), Refusal> {
        match self.gate(cfg) {
            Gate::Off => return Err(Refusal::Off),
            Gate::Unreadable => return Err(Refusal::Unreadable),
            Gate::Token(_) => {}
        }
        if !same_origin(headers, cfg) {
            return Err(Refusal::CrossSite);
        }
        let key = self.key(cfg, headers).ok_or(Refusal::NotSignedIn)?;
        let want = lock(&self.map)
            .get(&key)
            .map(|s| digest(s.csrf.as_bytes()))
            .ok_or(Refusal::NotSignedIn)?;
        match csrf {
            Some(c) if same(&digest(c.as_bytes()), &want) => Ok(()),
            _ => Err(Refusal::BadCsrf),
        }
    }

    /// Ends the session `headers` carry, if any.
    pub fn end(&self, cfg: &Config, headers: &HeaderMap) {
        if let Some(key) = self.key(cfg, headers) {
            lock(&self.map).remove(&key);
        }
    }

    /// Leaves a one-line notice for the session's next view of the job.
    pub fn notify(&self, cfg: &Config, headers: &HeaderMap, notice: Notice) {
        if let Some(key) = self.key(cfg, headers) {
            if let Some(s) = lock(&self.map).get_mut(&key) {
                s.notice = Some((notice, crate::now_ms()));
            }
        }
    }

    /// The notice left for job `job`, if it is recent (a GET only reads it).
    pub fn notice(&self, cfg: &Config, headers: &HeaderMap, job: &str) -> Option<Notice> {
        let key = self.key(cfg, headers)?;
        let now = crate::now_ms();
        let map = lock(&self.map);
        let (n, at) = map.get(&key)?.notice.as_ref()?;
        (n.job == job && now - at < NOTICE_MS).then(|| n.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn cfg() -> Config {
        Config::parse(
            "listen = \"127.0.0.1:8080\"\npublic_url = \"https://ci.example\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn only_this_hosts_own_pages_pass_the_origin_check() {
        let c = cfg();
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(
            &headers(&[host, ("sec-fetch-site", "same-origin")]),
            &c
        ));
        assert!(same_origin(
            &headers(&[host, ("origin", "http://127.0.0.1:8080")]),
            &c
        ));
        assert!(same_origin(
            &headers(&[("host", "10.0.0.1"), ("origin", "https://ci.example")]),
            &c
        ));
        assert!(!same_origin(
            &headers(&[host, ("sec-fetch-site", "cross-site")]),
            &c
        ));
        assert!(!same_origin(
            &headers(&[host, ("sec-fetch-site", "same-site")]),
            &c
        ));
        assert!(!same_origin(
            &headers(&[host, ("origin", "https://evil.example")]),
            &c
        ));
        assert!(!same_origin(&headers(&[host]), &c), "neither header");
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let h = headers(&[("cookie", "a=1; sdci_session=abc; b=2")]);
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&headers(&[("cookie", "x=y")]), COOKIE), None);
    }
}
