//! The GitHub REST client, on octocrab: the endpoints sdci uses, two ways to authenticate, and
//! the project's own retry, rate-limit and timeout policy around octocrab.
//!
//! Endpoints: `POST /repos/{o}/{r}/statuses/{sha}`, `GET /repos/{o}/{r}/contents/{path}?ref=`,
//! `GET /repos/{o}/{r}/branches/{b}`, `POST /repos/{o}/{r}/check-runs`, `PATCH
//! /repos/{o}/{r}/check-runs/{id}`, `GET /repos/{o}/{r}/collaborators/{user}/permission`, `POST
//! /app/installations/{id}/access_tokens`, `DELETE /installation/token` (revoke the installation
//! token the request carries), `POST /repos/{o}/{r}/issues/comments/{id}/reactions` (its own
//! token, narrowed to `issues: write`, [`Permissions::reactions`]), `GET
//! /repos/{o}/{r}/pulls/{n}` (its own token too, `pull_requests: read`, [`Permissions::pulls`]).
//!
//! What octocrab does here: the HTTP stack (its default hyper client, rustls on ring, the
//! system's roots; built once per process on first use, and not at all without a CA certificate
//! on the system, whatever the API's scheme, unlike reqwest; redirects followed, as GitHub
//! answers `301` for a renamed repository, credentials dropped on a redirect to another
//! origin), the base URI (GitHub Enterprise's `/api/v3` included), the `X-GitHub-Api-Version`
//! header, the `Authorization` header of each call (`Octocrab::user_access_token`, set per
//! request and marked sensitive), and the typed models: request bodies from
//! `models::apps::CreateInstallationAccessToken`, `params::checks` and `models::StatusState`,
//! answers decoded into `models::InstallationToken`, `models::Status`, `models::repos::{Content,
//! Branch}`, `models::checks::CheckRun` and `models::pulls::PullRequest`. What it does not do, and why the calls go through
//! its raw `_get`/`_post`/`_patch`/`_delete` instead of its typed `send()`s:
//! - its typed calls hide the status and headers, which the rate-limit rule below needs; its
//!   retry layer (feature `retry`, off here) retries a 5xx at once, without backoff, and sleeps
//!   out any rate-limit reset, however far;
//! - its check-run builders have no `actions` (and create has no `started_at`), so the check-run
//!   body is ours ([`crate::check_run`]) with octocrab's `CheckRunStatus`, `CheckRunConclusion`
//!   and `CheckRunOutput` inside it;
//! - its `RepoPermission.permission` is the teams enum (`pull`/`push`/…), which cannot decode
//!   GitHub's documented `admin|write|read|none`: the permission answer is read into our own
//!   two-field struct;
//! - its App authentication (feature `jwt`) links jsonwebtoken with aws-lc-rs or RustCrypto, a
//!   second crypto stack beside ring, and its automatic installation tokens
//!   (`installation_builder`) are narrowed to repositories, never to permissions: the App JWT
//!   stays [`crate::app_jwt`] (ring, already linked through rustls), and tokens are minted with
//!   an explicit `CreateInstallationAccessToken { repositories, permissions }`.
//!
//! Cost (issue 17, measured on the 2-core build machine, loaded by other builds): octocrab adds
//! 25 crates to the agent's graph (octocrab, chrono, snafu, secrecy, arc-swap, http-serde,
//! serde_path_to_error, hmac/sha2, web-time, pin-project, …; hyper, hyper-rustls, tower and
//! tower-http were already there through reqwest, which the event relay still uses) and
//! cargo_metadata at build time; Cargo.lock gains 43 entries, most of them optional or for
//! other platforms (aws-lc, jni, windows-*) and never compiled. A clean `--release` build of
//! `sdci-agent` went from 4 min 48 s (3 min 5 s user) to 7 min 16 s (4 min 46 s user), 142 to 173
//! compilation units, and the stripped binary from 6,859,424 to 8,647,352 bytes (+26 %).
//!
//! Invariants:
//! - Every request carries `Accept: application/vnd.github+json`, `X-GitHub-Api-Version:
//!   2022-11-28` and `User-Agent: sdci-agent/<version>` (octocrab's default client always sends
//!   its own `User-Agent: octocrab` first: two header lines, which only a custom tower stack
//!   would avoid); the `Authorization` value is marked sensitive and
//!   no token (PAT, installation token, App JWT) is ever formatted into a log line or an error.
//! - Each attempt (connect, request, whole answer read) is bounded by `retry.request_timeout_secs`.
//! - 5xx answers, network errors and timeouts are retried with exponential backoff and jitter,
//!   up to `retry.max_attempts`; then the call fails as [`AgentError::Unreachable`] (exit 2).
//! - Rate limits (403/429 with `retry-after`, or `x-ratelimit-remaining: 0` with
//!   `x-ratelimit-reset`; a bare 429 means one minute) are waited out when the wait is at most
//!   `retry.max_rate_limit_wait_secs`, else the call fails at once as
//!   [`AgentError::RateLimited`] (exit 2).
//! - In App mode every repository call uses an installation token narrowed to that one
//!   repository and to [`Permissions::gateway`] (`checks: write`, `contents: read`, `metadata:
//!   read`, `statuses: write`); a token minted for a job ([`GitHub::installation_token`] with
//!   [`Permissions::job`]) gets `contents: read` only.
//! - Descriptions are cut to GitHub's 140 characters ([`cap_description`]).

use crate::app_jwt::AppKey;
use crate::check_run::CheckRunRequest;
use crate::config::{read_secret, Config, RetryConfig};
use crate::error::{AgentError, Result};
use base64::Engine;
use octocrab::models;
use octocrab::Octocrab;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, USER_AGENT};
use reqwest::StatusCode;
use sdci_protocol::job::Secret;
use sdci_protocol::{CommitSha, MintedToken, RepoName, StatusState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// GitHub's limit on a commit status description.
pub const MAX_DESCRIPTION: usize = 140;
const AGENT_USER_AGENT: &str = concat!("sdci-agent/", env!("CARGO_PKG_VERSION"));

/// How the agent proves who it is.
pub enum Auth {
    /// A personal access token (or an installation token handed over in a job file).
    Token(Secret),
    /// A GitHub App: installation tokens are minted per repository.
    App {
        app_id: u64,
        installation_id: u64,
        key: Box<AppKey>,
    },
}

impl Auth {
    /// From the configuration: token file, or App key file. `None` when neither is configured.
    pub fn from_config(cfg: &Config) -> Result<Option<Self>> {
        if let Some(file) = &cfg.token_file {
            return Ok(Some(Self::Token(read_secret(file, "token")?)));
        }
        if let Some(app) = &cfg.app {
            let pem = read_secret(&app.private_key_file, "GitHub App private key")?;
            return Ok(Some(Self::App {
                app_id: app.app_id,
                installation_id: app.installation_id,
                key: Box::new(AppKey::from_pem(pem.expose())?),
            }));
        }
        Ok(None)
    }
}

/// The permissions an installation token is narrowed to: `name → read|write|admin`, as GitHub's
/// `permissions` object of `POST /app/installations/{id}/access_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions(pub BTreeMap<String, String>);

impl Permissions {
    /// What a job in the VM may do: read the repository, nothing else.
    pub fn job() -> Self {
        Self::parse("contents:read").unwrap_or_else(|_| Self(Default::default()))
    }

    /// What the gateway's own calls need: statuses, check runs, contents and branches, and
    /// collaborator permissions (`metadata: read`). Contracts §5.
    pub fn gateway() -> Self {
        Self::parse("checks:write,contents:read,metadata:read,statuses:write")
            .unwrap_or_else(|_| Self(Default::default()))
    }

    /// What a reaction to a comment needs (`react`, contracts §5): kept out of
    /// [`Permissions::gateway`], so an App without `issues: write` loses only the reactions.
    pub fn reactions() -> Self {
        Self::parse("issues:write,metadata:read").unwrap_or_else(|_| Self(Default::default()))
    }

    /// What reading a pull request needs (`pull-head`, contracts §5): `pull_requests: read`,
    /// which an App that receives `pull_request` events has; kept out of
    /// [`Permissions::gateway`] like [`Permissions::reactions`].
    pub fn pulls() -> Self {
        Self::parse("metadata:read,pull_requests:read").unwrap_or_else(|_| Self(Default::default()))
    }

    /// Parses `name:level[,name:level…]`: names of lower-case letters and `_`, levels `read`,
    /// `write` or `admin`, each name once.
    pub fn parse(text: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for item in text.split(',') {
            let (name, level) = item.trim().split_once(':').ok_or_else(|| {
                AgentError::Usage(format!(
                    "--permissions: {item:?} is not name:level (e.g. contents:read)"
                ))
            })?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Err(AgentError::Usage(format!(
                    "--permissions: {name:?} is not a GitHub permission name"
                )));
            }
            if !matches!(level, "read" | "write" | "admin") {
                return Err(AgentError::Usage(format!(
                    "--permissions: level {level:?} of {name} is not read, write or admin"
                )));
            }
            if map.insert(name.to_owned(), level.to_owned()).is_some() {
                return Err(AgentError::Usage(format!(
                    "--permissions: {name} is given twice"
                )));
            }
        }
        Ok(Self(map))
    }

    fn to_map(&self) -> HashMap<String, String> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A commit status to post.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub state: StatusState,
    pub description: String,
    pub target_url: Option<String>,
    pub context: String,
}

/// The body of `POST /repos/{o}/{r}/statuses/{sha}` (octocrab's `StatusState` inside).
#[derive(Serialize)]
struct CreateStatus<'a> {
    state: models::StatusState,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    description: String,
    context: &'a str,
}

/// The answer of `GET /repos/{o}/{r}/collaborators/{user}/permission` (GitHub's
/// `repository-collaborator-permission`; octocrab's model cannot decode it, module doc).
#[derive(Deserialize)]
struct CollaboratorPermission {
    permission: String,
    role_name: Option<String>,
}

/// A pull request's head as `pull-head` prints it (one JSON line, contracts §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullHead {
    /// The head commit.
    pub sha: CommitSha,
    /// The head repository's full name (`null` when the fork was deleted).
    pub repo: Option<RepoName>,
    /// The head branch.
    #[serde(rename = "ref")]
    pub head_ref: String,
    /// `open` or `closed` (a merged pull request is closed).
    pub state: String,
    /// The author's login.
    pub user: String,
    pub title: Option<String>,
}

/// Cuts a description to [`MAX_DESCRIPTION`] characters (ending in `…` when cut) and turns
/// line breaks and other control characters into spaces.
pub fn cap_description(text: &str) -> String {
    let clean: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= MAX_DESCRIPTION {
        return clean;
    }
    let mut cut: String = clean.chars().take(MAX_DESCRIPTION - 1).collect();
    cut.push('…');
    cut
}

/// Percent-encodes a path for a URL, keeping `/` (branch names and file paths may contain it).
fn encode_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long a 403/429 answer asks us to wait, if it is a rate limit (see the module doc).
pub fn rate_limit_wait(status: StatusCode, headers: &HeaderMap, now_unix: u64) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let num = |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(secs) = num("retry-after") {
        return Some(Duration::from_secs(secs.max(1)));
    }
    if num("x-ratelimit-remaining") == Some(0) {
        if let Some(reset) = num("x-ratelimit-reset") {
            return Some(Duration::from_secs(reset.saturating_sub(now_unix).max(1)));
        }
    }
    (status == StatusCode::TOO_MANY_REQUESTS).then(|| Duration::from_secs(60))
}

/// Backoff before attempt `attempt + 1` (attempt counts from 1), with ±25 % jitter.
fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let base = retry
        .initial_backoff_ms
        .saturating_mul(1u64 << (attempt - 1).min(20))
        .min(retry.max_backoff_ms);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64;
    let jitter = base / 4;
    let spread = if jitter == 0 {
        0
    } else {
        nanos % (2 * jitter + 1)
    };
    Duration::from_millis(base - jitter + spread)
}

/// Whether an octocrab error is the network's (retried) rather than ours (a bad URI or header,
/// an answer that is not UTF-8: not retried).
fn is_transient(e: &octocrab::Error) -> bool {
    matches!(
        e,
        octocrab::Error::Service { .. } | octocrab::Error::Hyper { .. }
    )
}

/// An error with its causes, `outer: inner: …` (hyper's "client error (Connect)" alone does not
/// say "connection refused"). Transport errors name no header, so no token.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// The four verbs the client sends (octocrab's raw `_get`, `_post`, `_patch`, `_delete`).
#[derive(Debug, Clone, Copy)]
enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

/// One whole answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

/// The largest file the contents API serves base64-encoded (1 MB); `ci-config` reads at most this.
pub const CONTENTS_API_MAX_BYTES: u64 = 1024 * 1024;

/// The GitHub client.
pub struct GitHub {
    api: String,
    /// Built on first use (it needs the runtime, and the system's roots for TLS), then shared:
    /// one connection pool for every call and every token.
    crab: tokio::sync::OnceCell<Octocrab>,
    auth: Auth,
    retry: RetryConfig,
}

impl GitHub {
    /// A client for the API base `api` (e.g. `https://api.github.com`, or GitHub Enterprise's
    /// `https://HOST/api/v3`). Nothing is connected yet.
    pub fn new(api: &str, auth: Auth, retry: RetryConfig) -> Result<Self> {
        let api = api.trim_end_matches('/').to_owned();
        if !(api.starts_with("https://") || api.starts_with("http://")) {
            return Err(AgentError::Config(format!(
                "the GitHub API base {api:?} is not an http(s) URL"
            )));
        }
        Ok(Self {
            api,
            crab: tokio::sync::OnceCell::new(),
            auth,
            retry,
        })
    }

    /// From the configuration; fails with a clear message when no credentials are configured.
    pub fn from_config(cfg: &Config) -> Result<Self> {
        let auth = Auth::from_config(cfg)?.ok_or_else(|| {
            AgentError::Config(
                "no GitHub credentials: set token_file (or SDCI_GITHUB_TOKEN_FILE), or an [app] section"
                    .into(),
            )
        })?;
        Self::new(&cfg.api_url, auth, cfg.retry.clone())
    }

    /// Whether this client authenticates as a GitHub App.
    pub fn is_app(&self) -> bool {
        matches!(self.auth, Auth::App { .. })
    }

    /// The shared octocrab client without credentials (each call adds its own).
    async fn crab(&self) -> Result<&Octocrab> {
        self.crab
            .get_or_try_init(|| async {
                Octocrab::builder()
                    .base_uri(self.api.as_str())
                    .map_err(|e| {
                        AgentError::Config(format!("the GitHub API base {:?}: {e}", self.api))
                    })?
                    .add_header(ACCEPT, "application/vnd.github+json".into())
                    .add_header(USER_AGENT, AGENT_USER_AGENT.into())
                    .build()
                    .map_err(|e| {
                        AgentError::Config(format!(
                            "the HTTP client for GitHub: {} (it needs the system's CA \
                             certificates, package ca-certificates, even for an http:// API base)",
                            with_causes(&e)
                        ))
                    })
            })
            .await
    }

    /// One attempt, bounded by the request timeout: the request and the whole answer.
    async fn attempt<B: Serialize + ?Sized>(
        &self,
        crab: &Octocrab,
        verb: Verb,
        route: &str,
        body: Option<&B>,
    ) -> std::result::Result<Answer, Attempt> {
        let exchange = async {
            let resp = match verb {
                Verb::Get => crab._get(route).await,
                Verb::Post => crab._post(route, body).await,
                Verb::Patch => crab._patch(route, body).await,
                Verb::Delete => crab._delete(route, body).await,
            }?;
            let (status, headers) = (resp.status(), resp.headers().clone());
            let body = crab.body_to_string(resp).await?;
            Ok::<_, octocrab::Error>(Answer {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(self.retry.request_timeout(), exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) if is_transient(&e) => Err(Attempt::Transient(format!(
                "network error: {}",
                with_causes(&e)
            ))),
            Ok(Err(e @ octocrab::Error::InvalidUtf8 { .. })) => {
                Err(Attempt::BadAnswer(e.to_string()))
            }
            Ok(Err(e)) => Err(Attempt::Fatal(e.to_string())),
            Err(_) => Err(Attempt::Transient(format!(
                "no whole answer within {} s (retry.request_timeout_secs)",
                self.retry.request_timeout().as_secs()
            ))),
        }
    }

    /// Sends a request with retries (module doc). Returns the first answer that is neither a
    /// 5xx nor a rate limit; the caller interprets it.
    async fn send<B: Serialize + ?Sized>(
        &self,
        what: &str,
        verb: Verb,
        route: &str,
        bearer: &Secret,
        body: Option<&B>,
    ) -> Result<Answer> {
        // octocrab builds `Bearer <token>` per request; a token that cannot be a header value
        // is refused here with a message that does not contain it.
        HeaderValue::from_str(&format!("Bearer {}", bearer.expose())).map_err(|_| {
            AgentError::Config("the token contains characters not allowed in an HTTP header".into())
        })?;
        let crab = self
            .crab()
            .await?
            .user_access_token(bearer.expose().to_owned())
            .map_err(|e| AgentError::Config(format!("the GitHub client: {e}")))?;
        let mut attempt = 0u32;
        let mut rate_waits = 0u32;
        loop {
            attempt += 1;
            let last = match self.attempt(&crab, verb, route, body).await {
                Ok(answer) => {
                    let status = answer.status;
                    if let Some(wait) = rate_limit_wait(status, &answer.headers, now_unix()) {
                        if wait.as_secs() > self.retry.max_rate_limit_wait_secs {
                            return Err(AgentError::RateLimited {
                                what: what.into(),
                                wait_secs: wait.as_secs(),
                                max_secs: self.retry.max_rate_limit_wait_secs,
                            });
                        }
                        rate_waits += 1;
                        if rate_waits > self.retry.max_attempts {
                            return Err(AgentError::Unreachable {
                                what: what.into(),
                                attempts: attempt,
                                last: format!("still rate limited after {rate_waits} waits"),
                            });
                        }
                        tracing::warn!(
                            what,
                            status = status.as_u16(),
                            wait_secs = wait.as_secs(),
                            "GitHub rate limit; waiting for the reset"
                        );
                        tokio::time::sleep(wait).await;
                        attempt -= 1; // a rate-limit wait is not a failed attempt
                        continue;
                    }
                    if !status.is_server_error() {
                        return Ok(answer);
                    }
                    format!("HTTP {}", status.as_u16())
                }
                Err(Attempt::Transient(why)) => why,
                Err(Attempt::Fatal(why)) => {
                    return Err(AgentError::Config(format!("{what}: {why}")));
                }
                Err(Attempt::BadAnswer(why)) => {
                    return Err(AgentError::BadAnswer {
                        what: what.into(),
                        why,
                    });
                }
            };
            if attempt >= self.retry.max_attempts {
                return Err(AgentError::Unreachable {
                    what: what.into(),
                    attempts: attempt,
                    last,
                });
            }
            let pause = backoff(&self.retry, attempt);
            tracing::warn!(what, attempt, error = %last, pause_ms = pause.as_millis() as u64, "GitHub request failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Turns a non-2xx answer into an error carrying GitHub's message.
    fn refused(what: &str, answer: &Answer) -> AgentError {
        let message = serde_json::from_str::<ErrorBody>(&answer.body)
            .ok()
            .and_then(|b| b.message)
            .unwrap_or_else(|| answer.body.chars().take(200).collect());
        AgentError::GitHubRefused {
            what: what.into(),
            status: answer.status.as_u16(),
            message,
        }
    }

    /// A 2xx answer decoded into `T` (an octocrab model), else the refusal.
    fn decode<T: serde::de::DeserializeOwned>(what: &str, answer: &Answer) -> Result<T> {
        if !answer.status.is_success() {
            return Err(Self::refused(what, answer));
        }
        serde_json::from_str(&answer.body).map_err(|e| AgentError::BadAnswer {
            what: what.into(),
            why: e.to_string(),
        })
    }

    /// Mints an installation token narrowed to `repo` and `permissions`.
    pub async fn installation_token(
        &self,
        repo: &RepoName,
        permissions: &Permissions,
    ) -> Result<MintedToken> {
        let Auth::App {
            app_id,
            installation_id,
            key,
        } = &self.auth
        else {
            return Err(AgentError::Config(
                "`token` needs GitHub App mode (an [app] section); with a personal access token there is nothing to mint"
                    .into(),
            ));
        };
        let route = format!("/app/installations/{installation_id}/access_tokens");
        let what = format!("POST {route}");
        let body = models::apps::CreateInstallationAccessToken {
            repositories: Some(vec![repo.name().to_owned()]),
            repository_ids: None,
            permissions: Some(permissions.to_map()),
        };
        let jwt = key.jwt(*app_id, now_unix())?;
        let answer = self
            .send(&what, Verb::Post, &route, &jwt, Some(&body))
            .await?;
        let minted: models::InstallationToken = Self::decode(&what, &answer)?;
        let expires_at = minted.expires_at.ok_or_else(|| AgentError::BadAnswer {
            what: what.clone(),
            why: "the token has no expires_at".into(),
        })?;
        Ok(MintedToken {
            token: Secret::new(minted.token),
            expires_at,
        })
    }

    /// The token to use for a call on `repo`.
    async fn repo_token(&self, repo: &RepoName) -> Result<Secret> {
        match &self.auth {
            Auth::Token(t) => Ok(t.clone()),
            Auth::App { .. } => Ok(self
                .installation_token(repo, &Permissions::gateway())
                .await?
                .token),
        }
    }

    /// `DELETE /installation/token`: revokes the installation token `token` (the request is
    /// authenticated with that very token). GitHub answers `204`; a token that is already
    /// revoked or expired answers `401`, which is success here too (it no longer works).
    pub async fn revoke_token(&self, token: &Secret) -> Result<()> {
        let what = "DELETE /installation/token";
        let answer = self
            .send(
                what,
                Verb::Delete,
                "/installation/token",
                token,
                None::<&()>,
            )
            .await?;
        if answer.status.is_success() {
            tracing::info!("installation token revoked");
            return Ok(());
        }
        if answer.status == StatusCode::UNAUTHORIZED {
            tracing::info!("installation token was already revoked or expired");
            return Ok(());
        }
        Err(Self::refused(what, &answer))
    }

    /// Posts a commit status (description capped to 140 characters).
    pub async fn post_status(
        &self,
        repo: &RepoName,
        sha: &CommitSha,
        update: &StatusUpdate,
    ) -> Result<()> {
        let token = self.repo_token(repo).await?;
        let what = format!("POST /repos/{repo}/statuses/{}", sha.short());
        let route = format!("/repos/{repo}/statuses/{sha}");
        let body = CreateStatus {
            state: match update.state {
                StatusState::Pending => models::StatusState::Pending,
                StatusState::Success => models::StatusState::Success,
                StatusState::Failure => models::StatusState::Failure,
                StatusState::Error => models::StatusState::Error,
            },
            target_url: update.target_url.as_deref(),
            description: cap_description(&update.description),
            context: &update.context,
        };
        let answer = self
            .send(&what, Verb::Post, &route, &token, Some(&body))
            .await?;
        let _: models::Status = Self::decode(&what, &answer)?;
        tracing::info!(%repo, sha = sha.short(), state = update.state.as_str(), "posted commit status");
        Ok(())
    }

    /// A file's bytes at a commit; `None` when GitHub answers 404. A path that is no file (a
    /// directory, a submodule) is [`AgentError::NoSuchFile`]; a file larger than `max_bytes` is
    /// [`AgentError::FileTooLarge`], told by the answer's `size` before anything is decoded.
    pub async fn file_at(
        &self,
        repo: &RepoName,
        sha: &CommitSha,
        path: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>> {
        let token = self.repo_token(repo).await?;
        let what = format!("GET /repos/{repo}/contents/{path}");
        let route = format!("/repos/{repo}/contents/{}?ref={sha}", encode_path(path));
        let answer = self
            .send(&what, Verb::Get, &route, &token, None::<&()>)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let not_a_file = |kind: &str| {
            AgentError::NoSuchFile(format!("{path} is a {kind} at {}, not a file", sha.short()))
        };
        if answer.status.is_success() && answer.body.trim_start().starts_with('[') {
            return Err(not_a_file("directory"));
        }
        let c: models::repos::Content = Self::decode(&what, &answer)?;
        if c.r#type != "file" {
            return Err(not_a_file(&c.r#type));
        }
        let too_large = |size: u64| AgentError::FileTooLarge {
            path: path.to_owned(),
            size,
            max: max_bytes,
        };
        let size = u64::try_from(c.size).unwrap_or(0);
        if size > max_bytes {
            return Err(too_large(size));
        }
        let bad = |why: &str| AgentError::BadAnswer {
            what: what.clone(),
            why: why.into(),
        };
        if c.encoding.as_deref() != Some("base64") {
            return Err(bad(
                "the content is not base64 (the contents API serves files up to 1 MB)",
            ));
        }
        let b64: String = c.content.unwrap_or_default().split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad("the content is not valid base64"))?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(Some(bytes))
    }

    /// The head commit of a branch.
    pub async fn branch_head(&self, repo: &RepoName, branch: &str) -> Result<CommitSha> {
        let token = self.repo_token(repo).await?;
        let what = format!("GET /repos/{repo}/branches/{branch}");
        let route = format!("/repos/{repo}/branches/{}", encode_path(branch));
        let answer = self
            .send(&what, Verb::Get, &route, &token, None::<&()>)
            .await?;
        let b: models::repos::Branch = Self::decode(&what, &answer)?;
        b.commit.sha.parse().map_err(|e| AgentError::BadAnswer {
            what,
            why: format!("{e}"),
        })
    }

    /// `user`'s permission on `repo`: `role_name` when it is one of GitHub's five base roles,
    /// else the legacy `permission` (`admin`, `write`, `read`, `none`); a user who is no
    /// collaborator (`404`) is `none`. Contracts §5.
    pub async fn collaborator_permission(&self, repo: &RepoName, user: &str) -> Result<String> {
        let token = self.repo_token(repo).await?;
        let what = format!("GET /repos/{repo}/collaborators/{user}/permission");
        let route = format!(
            "/repos/{repo}/collaborators/{}/permission",
            encode_path(user)
        );
        let answer = self
            .send(&what, Verb::Get, &route, &token, None::<&()>)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok("none".into());
        }
        let p: CollaboratorPermission = Self::decode(&what, &answer)?;
        const ROLES: [&str; 5] = ["admin", "maintain", "write", "triage", "read"];
        if let Some(role) = p.role_name.filter(|r| ROLES.contains(&r.as_str())) {
            return Ok(role);
        }
        if ["admin", "write", "read", "none"].contains(&p.permission.as_str()) {
            return Ok(p.permission);
        }
        Err(AgentError::BadAnswer {
            what,
            why: format!(
                "permission {:?} is none of admin, write, read, none",
                p.permission
            ),
        })
    }

    /// Reacts with `content` to comment `id` of `repo` (`POST
    /// /repos/{o}/{r}/issues/comments/{id}/reactions`): `201` created, `200` when this App's
    /// reaction was there already; both are success.
    pub async fn react_to_comment(&self, repo: &RepoName, id: u64, content: &str) -> Result<()> {
        let token = match &self.auth {
            Auth::Token(t) => t.clone(),
            Auth::App { .. } => {
                self.installation_token(repo, &Permissions::reactions())
                    .await?
                    .token
            }
        };
        let what = format!("POST /repos/{repo}/issues/comments/{id}/reactions");
        let route = format!("/repos/{repo}/issues/comments/{id}/reactions");
        let body = serde_json::json!({ "content": content });
        let answer = self
            .send(&what, Verb::Post, &route, &token, Some(&body))
            .await?;
        #[derive(Deserialize)]
        struct Reaction {
            id: u64,
            content: String,
        }
        let r: Reaction = Self::decode(&what, &answer)?;
        tracing::info!(%repo, comment = id, reaction = r.id, content = %r.content,
            existed = answer.status == StatusCode::OK, "reacted to a comment");
        Ok(())
    }

    /// Pull request `number` of `repo`'s head as GitHub has it now (`GET
    /// /repos/{o}/{r}/pulls/{n}`); `Ok(None)` when GitHub answers 404 (no such pull request).
    pub async fn pull_head(&self, repo: &RepoName, number: u64) -> Result<Option<PullHead>> {
        let token = match &self.auth {
            Auth::Token(t) => t.clone(),
            Auth::App { .. } => {
                self.installation_token(repo, &Permissions::pulls())
                    .await?
                    .token
            }
        };
        let what = format!("GET /repos/{repo}/pulls/{number}");
        let route = format!("/repos/{repo}/pulls/{number}");
        let answer = self
            .send(&what, Verb::Get, &route, &token, None::<&()>)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let pr: models::pulls::PullRequest = Self::decode(&what, &answer)?;
        let bad = |why: String| AgentError::BadAnswer {
            what: what.clone(),
            why,
        };
        let sha: CommitSha = pr
            .head
            .sha
            .parse()
            .map_err(|e| bad(format!("head sha: {e}")))?;
        let head_repo = match pr.head.repo.as_ref().and_then(|r| r.full_name.as_deref()) {
            Some(n) => Some(n.parse().map_err(|e| bad(format!("head repo: {e}")))?),
            None => None,
        };
        let state = match pr.state {
            Some(models::IssueState::Open) => "open",
            Some(models::IssueState::Closed) => "closed",
            _ => return Err(bad("the pull request has no state open or closed".into())),
        };
        let user = pr
            .user
            .map(|u| u.login)
            .ok_or_else(|| bad("the pull request has no user".into()))?;
        tracing::info!(%repo, number, sha = sha.short(), state, "read a pull request's head");
        Ok(Some(PullHead {
            sha,
            repo: head_repo,
            head_ref: pr.head.ref_field,
            state: state.to_owned(),
            user,
            title: pr.title,
        }))
    }

    /// Creates (`POST /repos/{o}/{r}/check-runs`) or updates (`PATCH …/check-runs/{id}`) a
    /// check run; returns its id. Contracts §5, §10.
    pub async fn check_run(&self, req: &CheckRunRequest) -> Result<u64> {
        if !self.is_app() {
            return Err(AgentError::Config(
                "check runs need GitHub App mode (an [app] section); GitHub refuses them to a personal access token"
                    .into(),
            ));
        }
        let repo = &req.repo;
        let token = self.repo_token(repo).await?;
        let (verb, route) = match req.id {
            None => (Verb::Post, format!("/repos/{repo}/check-runs")),
            Some(id) => (Verb::Patch, format!("/repos/{repo}/check-runs/{id}")),
        };
        let what = format!(
            "{} {route}",
            if req.id.is_none() { "POST" } else { "PATCH" }
        );
        let answer = self
            .send(&what, verb, &route, &token, Some(&req.body))
            .await?;
        let run: models::checks::CheckRun = Self::decode(&what, &answer)?;
        tracing::info!(%repo, id = run.id.0, name = %run.name, "check run {}", if req.id.is_none() { "created" } else { "updated" });
        Ok(run.id.0)
    }
}

/// How one attempt failed.
enum Attempt {
    /// The network or GitHub's side: retried.
    Transient(String),
    /// Our side (a URI or header octocrab cannot build): not retried.
    Fatal(String),
    /// An answer that is not UTF-8 text: not retried.
    BadAnswer(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_longer_than_140_characters_are_cut_with_an_ellipsis() {
        let long = "é".repeat(200);
        let cut = cap_description(&long);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
        assert_eq!(cap_description("short\nline"), "short line");
        let exact = "x".repeat(140);
        assert_eq!(cap_description(&exact), exact);
    }

    #[test]
    fn rate_limit_headers_give_the_wait() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let f = StatusCode::FORBIDDEN;
        assert_eq!(
            rate_limit_wait(
                f,
                &h(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1010")
                ]),
                1000
            ),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            rate_limit_wait(f, &h(&[("retry-after", "7")]), 0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            rate_limit_wait(f, &h(&[]), 0),
            None,
            "a plain 403 is a refusal"
        );
        assert_eq!(
            rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &h(&[]), 0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            rate_limit_wait(StatusCode::OK, &h(&[("retry-after", "7")]), 0),
            None
        );
    }

    #[test]
    fn backoff_doubles_and_stays_under_the_cap() {
        let r = RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..RetryConfig::default()
        };
        let ms = |a| backoff(&r, a).as_millis() as u64;
        assert!((75..=125).contains(&ms(1)));
        assert!((150..=250).contains(&ms(2)));
        assert!((750..=1250).contains(&ms(30)));
    }

    #[test]
    fn permissions_parse_name_level_pairs_and_refuse_anything_else() {
        let p = Permissions::parse("contents:read, statuses:write").unwrap();
        assert_eq!(p.0.get("contents").map(String::as_str), Some("read"));
        assert_eq!(p.0.get("statuses").map(String::as_str), Some("write"));
        assert_eq!(
            Permissions::job().0.len(),
            1,
            "a job token reads contents only"
        );
        for bad in [
            "",
            "contents",
            "contents:own",
            "Contents:read",
            "contents:read,contents:write",
            "a b:read",
        ] {
            assert!(Permissions::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_are_percent_encoded_except_slashes() {
        assert_eq!(
            encode_path(".github/workstation-ci.yml"),
            ".github/workstation-ci.yml"
        );
        assert_eq!(encode_path("feat/a b#c"), "feat/a%20b%23c");
    }
}
