//! The GitHub REST client: the four endpoints sdci uses, two ways to authenticate, retries.
//!
//! Endpoints: `POST /repos/{o}/{r}/statuses/{sha}`, `GET /repos/{o}/{r}/contents/{path}?ref=`,
//! `GET /repos/{o}/{r}/branches/{b}`, `POST /app/installations/{id}/access_tokens`,
//! `DELETE /installation/token` (revoke the installation token the request carries).
//!
//! Why not octocrab: octocrab 0.54 (default-features off, rustls) would add ~76k lines of
//! generated models plus hyper-rustls, tower, tower-http, jsonwebtoken, chrono, url and snafu to
//! a workspace that already links reqwest; its retry layer retries 5xx immediately (no
//! backoff), its rate-limit handling waits without an upper bound, and its installation-token
//! helper cannot narrow permissions. Four endpoints over the workspace's reqwest are smaller
//! and do exactly what the issue asks.
//!
//! Invariants:
//! - Every request carries `Accept: application/vnd.github+json`, `X-GitHub-Api-Version:
//!   2022-11-28` and a `User-Agent`; the `Authorization` value is marked sensitive and no token
//!   (PAT, installation token, App JWT) is ever formatted into a log line or an error.
//! - 5xx answers and network errors are retried with exponential backoff and jitter, up to
//!   `retry.max_attempts`; then the call fails as [`AgentError::Unreachable`] (exit 2).
//! - Rate limits (403/429 with `retry-after`, or `x-ratelimit-remaining: 0` with
//!   `x-ratelimit-reset`; a bare 429 means one minute) are waited out when the wait is at most
//!   `retry.max_rate_limit_wait_secs`, else the call fails as [`AgentError::RateLimited`].
//! - In App mode every repository call uses an installation token narrowed to that one
//!   repository and to `statuses: write`, `contents: read`; a token minted for a job
//!   ([`GitHub::installation_token`] with [`Permissions::job`]) gets `contents: read` only.
//! - Descriptions are cut to GitHub's 140 characters ([`cap_description`]).

use crate::app_jwt::AppKey;
use crate::config::{read_secret, Config, RetryConfig};
use crate::error::{AgentError, Result};
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, USER_AGENT};
use reqwest::{Method, StatusCode};
use sdci_protocol::job::Secret;
use sdci_protocol::{CommitSha, MintedToken, RepoName, StatusState};
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// GitHub's limit on a commit status description.
pub const MAX_DESCRIPTION: usize = 140;
const API_VERSION: &str = "2022-11-28";

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
pub struct Permissions(pub std::collections::BTreeMap<String, String>);

impl Permissions {
    /// What a job in the VM may do: read the repository, nothing else.
    pub fn job() -> Self {
        Self::parse("contents:read").unwrap_or_else(|_| Self(Default::default()))
    }

    /// What the gateway's own calls need (statuses, contents, branches).
    pub fn gateway() -> Self {
        Self::parse("statuses:write,contents:read").unwrap_or_else(|_| Self(Default::default()))
    }

    /// Parses `name:level[,name:level…]`: names of lower-case letters and `_`, levels `read`,
    /// `write` or `admin`, each name once.
    pub fn parse(text: &str) -> Result<Self> {
        let mut map = std::collections::BTreeMap::new();
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

    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
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

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

/// The GitHub client.
pub struct GitHub {
    http: reqwest::Client,
    api: String,
    auth: Auth,
    retry: RetryConfig,
}

impl GitHub {
    pub fn new(api: &str, auth: Auth, retry: RetryConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(retry.request_timeout())
            .connect_timeout(retry.request_timeout())
            .user_agent(concat!("sdci-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            api: api.trim_end_matches('/').to_owned(),
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

    /// Sends a request with retries (module doc). Returns the first answer that is neither a
    /// 5xx nor a rate limit; the caller interprets it.
    async fn send(
        &self,
        what: &str,
        method: Method,
        url: &str,
        bearer: &Secret,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response> {
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", bearer.expose())).map_err(|_| {
                AgentError::Config(
                    "the token contains characters not allowed in an HTTP header".into(),
                )
            })?;
        auth.set_sensitive(true);
        let mut attempt = 0u32;
        let mut rate_waits = 0u32;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), url)
                .header(ACCEPT, "application/vnd.github+json")
                .header("x-github-api-version", API_VERSION)
                .header(AUTHORIZATION, auth.clone())
                .header(
                    USER_AGENT,
                    concat!("sdci-agent/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(b) = body {
                req = req.json(b);
            }
            let last = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if let Some(wait) = rate_limit_wait(status, resp.headers(), now_unix()) {
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
                        return Ok(resp);
                    }
                    format!("HTTP {}", status.as_u16())
                }
                Err(e) => {
                    // reqwest's messages name the URL (no secrets in it) and the cause.
                    format!("network error: {e}")
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
    async fn refused(what: &str, resp: reqwest::Response) -> AgentError {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .ok()
            .and_then(|b| b.message)
            .unwrap_or_else(|| text.chars().take(200).collect());
        AgentError::GitHubRefused {
            what: what.into(),
            status,
            message,
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        what: &str,
        resp: reqwest::Response,
    ) -> Result<T> {
        let bytes = resp.bytes().await.map_err(|e| AgentError::BadAnswer {
            what: what.into(),
            why: format!("reading the body: {e}"),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| AgentError::BadAnswer {
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
        let what = format!("POST /app/installations/{installation_id}/access_tokens");
        let url = format!(
            "{}/app/installations/{installation_id}/access_tokens",
            self.api
        );
        let body = serde_json::json!({
            "repositories": [repo.name()],
            "permissions": permissions.to_json(),
        });
        let jwt = key.jwt(*app_id, now_unix())?;
        let resp = self
            .send(&what, Method::POST, &url, &jwt, Some(&body))
            .await?;
        if !resp.status().is_success() {
            return Err(Self::refused(&what, resp).await);
        }
        #[derive(Deserialize)]
        struct Minted {
            token: String,
            expires_at: String,
        }
        let m: Minted = Self::json(&what, resp).await?;
        Ok(MintedToken {
            token: Secret::new(m.token),
            expires_at: m.expires_at,
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
        let url = format!("{}/installation/token", self.api);
        let resp = self.send(what, Method::DELETE, &url, token, None).await?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT || status.is_success() {
            tracing::info!("installation token revoked");
            return Ok(());
        }
        if status == StatusCode::UNAUTHORIZED {
            tracing::info!("installation token was already revoked or expired");
            return Ok(());
        }
        Err(Self::refused(what, resp).await)
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
        let url = format!("{}/repos/{repo}/statuses/{sha}", self.api);
        let mut body = serde_json::json!({
            "state": update.state.as_str(),
            "description": cap_description(&update.description),
            "context": update.context,
        });
        if let Some(u) = &update.target_url {
            body["target_url"] = serde_json::Value::String(u.clone());
        }
        let resp = self
            .send(&what, Method::POST, &url, &token, Some(&body))
            .await?;
        if !resp.status().is_success() {
            return Err(Self::refused(&what, resp).await);
        }
        tracing::info!(%repo, sha = sha.short(), state = update.state.as_str(), "posted commit status");
        Ok(())
    }

    /// A file's bytes at a commit; `None` when GitHub answers 404.
    pub async fn file_at(
        &self,
        repo: &RepoName,
        sha: &CommitSha,
        path: &str,
    ) -> Result<Option<Vec<u8>>> {
        let token = self.repo_token(repo).await?;
        let what = format!("GET /repos/{repo}/contents/{path}");
        let url = format!(
            "{}/repos/{repo}/contents/{}?ref={sha}",
            self.api,
            encode_path(path)
        );
        let resp = self.send(&what, Method::GET, &url, &token, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(Self::refused(&what, resp).await);
        }
        #[derive(Deserialize)]
        struct Content {
            #[serde(rename = "type")]
            kind: String,
            encoding: Option<String>,
            content: Option<String>,
        }
        let c: Content = Self::json(&what, resp).await?;
        let bad = |why: &str| AgentError::BadAnswer {
            what: what.clone(),
            why: why.into(),
        };
        if c.kind != "file" {
            return Err(bad(&format!("{path} is a {}, not a file", c.kind)));
        }
        if c.encoding.as_deref() != Some("base64") {
            return Err(bad("content is not base64 (file larger than 1 MB?)"));
        }
        let b64: String = c.content.unwrap_or_default().split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Some)
            .map_err(|_| bad("content is not valid base64"))
    }

    /// The head commit of a branch.
    pub async fn branch_head(&self, repo: &RepoName, branch: &str) -> Result<CommitSha> {
        let token = self.repo_token(repo).await?;
        let what = format!("GET /repos/{repo}/branches/{branch}");
        let url = format!("{}/repos/{repo}/branches/{}", self.api, encode_path(branch));
        let resp = self.send(&what, Method::GET, &url, &token, None).await?;
        if !resp.status().is_success() {
            return Err(Self::refused(&what, resp).await);
        }
        #[derive(Deserialize)]
        struct Commit {
            sha: String,
        }
        #[derive(Deserialize)]
        struct Branch {
            commit: Commit,
        }
        let b: Branch = Self::json(&what, resp).await?;
        b.commit.sha.parse().map_err(|e| AgentError::BadAnswer {
            what,
            why: format!("{e}"),
        })
    }
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
