//! A GitHub stand-in for tests: an axum server on `127.0.0.1:0` that answers the REST endpoints
//! `sdci-agent` uses as GitHub does, serves git, and has switches for outages and rate limits.
//! It follows GitHub's documented behaviour (REST API 2022-11-28; the shapes of
//! `@octokit/openapi`'s `api.github.com.json`, see [`objects`]):
//!
//! | endpoint | checks |
//! |---|---|
//! | `POST /repos/{o}/{r}/statuses/{sha}` | token with `statuses: write`; body: `state` required, one of `error`, `failure`, `pending`, `success`; `description` string or null, at most 140 characters; `target_url` string or null; `context` string (default `default`); no other fields (stricter than GitHub, to catch typos); `201` with `Location` |
//! | `GET /repos/{o}/{r}/contents/{path}?ref=` | token with `contents: read`; `200` `content-file` (base64 wrapped at 60) or `404` |
//! | `GET /repos/{o}/{r}/branches/{b}`, `GET /repos/{o}/{r}/git/ref/heads/{b}` | token with `contents: read`; `branch-with-protection`, `git-ref` |
//! | `POST /repos/{o}/{r}/check-runs`, `PATCH`/`GET /repos/{o}/{r}/check-runs/{id}`, `GET /repos/{o}/{r}/commits/{ref}/check-runs` | an installation token with `checks: write` to write (`checks: read` to read); a personal access token may read but not write (`403 You must authenticate via a GitHub App.`); GitHub's rules in [`checks`]; every create and update recorded ([`GitHub::check_run_history`]) |
//! | `GET /repos/{o}/{r}/collaborators/{user}/permission` | any token of the repository (`metadata: read`, which every installation token has); the level set with [`GitHub::set_permission`]; an unknown user is `404` |
//! | `POST /app/installations/{id}/access_tokens` | RS256 JWT (signature, `iss` = app id, `exp` in the future and at most 10 minutes after `iat`); body: `repositories` (names of registered repos), `repository_ids`, `permissions` (`read`/`write`/`admin`) |
//! | `GET /repos/{o}/{r}/pulls/{n}` | a token with `pull_requests: read`; `200` `pull-request` as set with [`GitHub::set_pull`] (head sha, ref and repository, author, `open`/`closed`), `404` for a number never set ([`pulls`]) |
//! | `POST /repos/{o}/{r}/issues/comments/{id}/reactions` | a token with `issues: write` or `pull_requests: write`; `content` one of GitHub's eight; `201` new, `200` the same reaction again; recorded ([`GitHub::reactions`], [`reactions`]) |
//! | `DELETE /installation/token` | an installation token (not a PAT, not a JWT: `401`/`403` as GitHub); no body; `204`, after which the token answers `401 Bad credentials` everywhere |
//! | `GET`/`POST /{o}/{r}.git/...` | git over smart HTTP ([`git_http`], the real `git http-backend`; dumb HTTP with [`GitHub::serve_git_dumb`]) from a registered repository, Basic auth with a token that may read contents |
//!
//! Every API answer carries GitHub's headers: `Content-Type: application/json; charset=utf-8`,
//! `X-GitHub-Request-Id`, `X-GitHub-Api-Version-Selected`, `X-GitHub-Media-Type`,
//! `X-RateLimit-Limit/Remaining/Reset/Used/Resource` (5,000 an hour per token, 60 without one,
//! counted per stand-in), `Location` on creates, and on a `GET` that answers `200` a weak `ETag`
//! (an `If-None-Match` with it answers `304` with no body). Errors are
//! `{"message","documentation_url","status"}` (`422` adds `errors`).
//!
//! Every request must carry a `User-Agent` (GitHub answers 403 otherwise). Every request is
//! recorded (method, path, query, headers with `Authorization` reduced to its scheme, body, the
//! status answered) for assertions. Invariants: the stand-in never stores a secret in a
//! recorded request; faults (outages, rate limits) are applied before routing, in the order
//! they were queued; every URL in an answer points at the stand-in itself (loopback), never at
//! github.com.

mod checks;
mod git_http;
pub mod objects;
pub mod openapi;
mod pulls;
mod reactions;
pub mod webhooks;

pub use checks::{ChangeKind, CheckRun, CheckRunAction, CheckRunChange, CheckRunOutput};
pub use git_http::FetchRequest;
pub use pulls::PullRequest;
pub use reactions::Reaction;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use ring::signature::KeyPair;
use sdci_protocol::Utc;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A GitHub App private key for tests only (2048-bit RSA, PKCS#1 PEM as GitHub issues them).
/// It protects nothing: it exists so the agent's App mode can be exercised against the stand-in.
pub const TEST_APP_PRIVATE_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAxmoXAG78dB5wB8nXRyr84AMJR6C4XRNb5NMLm3WuBdTgSno3\nxzBpC38AWzLkr71fGLjyjzKnuk7OOncwMzHIw8psrUXO2J5nDGBj9NlHeADDF6L7\nFSveBpceLkbHIXAkh7w6pxEqV281pcdOU5EO+uo47PNFo5IHdIRM+LVjYUVxrnYR\nXDrqie1fVpJy/4mrkhMl3yxOSqtDtrMSCq/dVZ0LoxysedJYIhmJ2uhocPLfJLRZ\nuV+24QaOZel5LfV9Z4d/ovkAyi8s+x78n9gCN6/hHVsXyDffRA81jj0L5DPEHyPM\n2nefqAlOqJggjx/9avwVxVrG+puKVdLhRsVFpwIDAQABAoIBAFipLXAXKB4nP75r\nNhRqJCdhk/L64YdN0EFXARfNpR6b+kGtjWEnw7jMXndiLYhOIcFlW5Ybd5GsB0Fe\n4x3tQB4lRRzEVeK8HaYNKH1P3jzEcmkMfg/+0y60tlrNa8wIVXqF5NuksvvxCNL0\nVY7IAh6jLR7MsjCeX1B0kgSM4USkPvGfxVgIOjdceGoOaIIjl3Tq/FVtqF8Eu7+/\n5CmBqwW2rzGXAdKURInyu5GFpjCiyZgSO+oJDMHULRqmZAvC/JFOBy6l41Cd+6dg\nI/iHI72RmG52f1NjGe0UBGoFaYJXshLOSY9xk3U7q6bTSWiGjz9VfFV1gsuSrLr0\n67CbloECgYEA5EhLpKPsHSzGNR49K92vi5UY5NLqsXrPNwos22h/2KY7b7D2RFyH\nIK4uvcqiJeDBo8LKHa3fgnRLbh4QzJ36rD99FClgQivkXAiVatIS4Hkp2F4EOUyF\nHbIAxBrF1U+uLW1Zm83uSx2XHZmxSLdeCnLT77zV8gmAFQpWfdMuTMECgYEA3oFo\nQ3p7UAm+Hj+C9zYG50JNzgnsHuZQ5srBkfaOEvlxflyWQLphhjscg+hU8tPzAbcC\nCcugLMbd8d0mX2yuOnKF+G25j6mRADFrBenkHCbwoVL6ZsaTY2UW+IJ1jDLDCfvs\nwMO1VjHUn7k3YwwBw+wu3XXaNaQ6lasj7z5pZGcCgYEAvENjHsSRVP43+FaX3DVX\nMKYlgZDwPK4rdhjOJaRoyyNMoTAv6PDl/+2mXp9eWh6hk4xxY0ihq9R84LOq5xTi\nRmuVm6sD146bJctubkoRh05lVCs1EIwqu/Kw7wmlXeX4nz4vSG7stsYQejjmHDId\nPEC2yF/TkWiEWNXNvrcK2AECgYAQWrCgLRN9OYoYzRBCPV1aiBwR5dbOGp2dqQ97\nPAULTfxSjlmY3lomtJeO9nev9XYqDRqAP9BBGkjb6yZT4zgXIa3JKb922L7Ipdk4\n8Q0MKKyNHv06qqPQrXB3yZb8PArr4/Ft5bShZj47kzCH/izvCqATNQNZ5/1KXO7i\nOdMjRwKBgQC6etCoswUtKjllcsa3Hoxspw1MbCQGIbJ2gKHk+LyKNU82pZxWhs9J\nHQYKDM5AbXYq6MBZbIK70znTUkP7+b+G5yP+n1fUhQs+HkezMjEIFk8HaiWJImbG\nnXs+doSWYNf1S6UwxoMlJJkyQhVVzuc7i95dejmCawVdy1yDjX6BBQ==\n-----END RSA PRIVATE KEY-----";

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lower-case names; `authorization` shows only its scheme (`Bearer <redacted>`).
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The status code the stand-in answered, and its headers (e.g. `x-ratelimit-reset`).
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
    /// The body the stand-in answered (empty for git and for answers without a body).
    pub response_body: String,
    /// What GitHub's OpenAPI description says against the request body or the answer (empty
    /// when both are allowed). A request refused with a 4xx whose body the description refuses
    /// too is only noted here; everything else is also a [`GitHub::violations`] entry.
    pub openapi: Vec<String>,
    /// When the request arrived (before the answer was decided).
    pub at: SystemTime,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// The answer's body as JSON (`Null` when it had none).
    pub fn response_json(&self) -> Value {
        serde_json::from_str(&self.response_body).unwrap_or(Value::Null)
    }
}

/// A commit status the stand-in accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub description: Option<String>,
    pub target_url: Option<String>,
    pub context: String,
}

/// An installation token the stand-in minted, with the narrowing it was asked for.
#[derive(Debug, Clone)]
pub struct MintedToken {
    pub installation_id: u64,
    pub repositories: Option<Vec<String>>,
    pub permissions: Option<BTreeMap<String, String>>,
    pub token: String,
    pub expires_at: String,
    /// Revoked through `DELETE /installation/token`: every later use answers 401.
    pub revoked: bool,
}

/// A rate-limit answer, as GitHub documents them.
#[derive(Debug, Clone, Copy)]
pub enum RateLimit {
    /// Primary limit: `status` (403 or 429), `x-ratelimit-remaining: 0`, `x-ratelimit-reset` =
    /// now + `reset_after` (epoch seconds, rounded up).
    Primary { status: u16, reset_after: Duration },
    /// Secondary limit: `status` (403 or 429) with `retry-after` (whole seconds, rounded up).
    Secondary { status: u16, retry_after: Duration },
}

#[derive(Default)]
struct Repo {
    branches: HashMap<String, String>,
    files: HashMap<(String, String), Vec<u8>>,
    git_dir: Option<PathBuf>,
    /// Served over git's dumb HTTP only ([`GitHub::serve_git_dumb`]), not `git http-backend`.
    dumb: bool,
    /// Collaborator permission (role) per user login, as set by the test.
    roles: HashMap<String, String>,
    /// Pull requests by number ([`GitHub::set_pull`]).
    pulls: HashMap<u64, PullRequest>,
}

struct App {
    app_id: u64,
    installation_id: u64,
    public_key: Vec<u8>,
}

enum Fault {
    Status(u16),
    Rate(RateLimit),
}

struct Inner {
    /// The stand-in's base URL: every URL in an answer starts with it.
    base: String,
    repos: HashMap<String, Repo>,
    pats: Vec<String>,
    app: Option<App>,
    minted: Vec<MintedToken>,
    statuses: Vec<CommitStatus>,
    checks: checks::CheckRuns,
    reactions: Vec<reactions::Reaction>,
    requests: Vec<RecordedRequest>,
    faults: VecDeque<Fault>,
    outage_until: Option<(Instant, u16)>,
    counter: u64,
    /// Requests counted against each rate-limit key (a token, or "" without one).
    rate_used: HashMap<String, u64>,
    /// The end of the current rate-limit hour (epoch seconds).
    rate_reset: u64,
    /// Requests and answers that GitHub's OpenAPI description does not allow.
    violations: Vec<String>,
    /// Every upload-pack request (a fetch or clone), with the bytes its answer carried.
    git_fetches: Vec<(String, FetchRequest, Arc<AtomicU64>)>,
    /// Bytes of every git answer's body (smart HTTP), in all.
    git_bytes: Arc<AtomicU64>,
}

/// A fetch or clone the stand-in served over smart HTTP (one `git-upload-pack` request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitFetch {
    pub repo: String,
    /// What was asked for: the wanted objects, `deepen` (shallow), `filter`.
    pub request: FetchRequest,
    /// The bytes of the answer sent so far (the pack, with git's framing).
    pub bytes_sent: u64,
}

type Shared = Arc<Mutex<Inner>>;

/// The running stand-in. Dropping it stops the server.
pub struct GitHub {
    url: String,
    inner: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GitHub {
    /// Starts the server on a free loopback port, on its own thread and runtime, so it serves
    /// synchronous and asynchronous tests alike.
    pub fn start() -> Self {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for GitHub");
        listener
            .set_nonblocking(true)
            .expect("set the listener non-blocking");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("listener has an address")
        );
        let inner: Shared = Arc::new(Mutex::new(Inner {
            base: url.clone(),
            repos: HashMap::new(),
            pats: Vec::new(),
            app: None,
            minted: Vec::new(),
            statuses: Vec::new(),
            checks: checks::CheckRuns::default(),
            reactions: Vec::new(),
            requests: Vec::new(),
            faults: VecDeque::new(),
            outage_until: None,
            counter: 0,
            rate_used: HashMap::new(),
            rate_reset: now_unix() + 3600,
            violations: Vec::new(),
            git_fetches: Vec::new(),
            git_bytes: Arc::default(),
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = inner.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build the stand-in's runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = Router::new().fallback(handle).with_state(state);
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            url,
            inner,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (use as the API base).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The clone URL of a repository served with [`GitHub::serve_git`].
    pub fn clone_url(&self, repo: &str) -> String {
        format!("{}/{repo}.git", self.url)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a repository (`owner/name`).
    pub fn add_repo(&self, repo: &str) {
        self.lock().repos.entry(repo.to_owned()).or_default();
    }

    /// Sets a branch's head commit (registers the repository if needed).
    pub fn set_branch(&self, repo: &str, branch: &str, sha: &str) {
        self.lock()
            .repos
            .entry(repo.to_owned())
            .or_default()
            .branches
            .insert(branch.to_owned(), sha.to_owned());
    }

    /// Adds a file at a commit (registers the repository if needed).
    pub fn add_file(&self, repo: &str, sha: &str, path: &str, content: &[u8]) {
        self.lock()
            .repos
            .entry(repo.to_owned())
            .or_default()
            .files
            .insert((sha.to_owned(), path.to_owned()), content.to_vec());
    }

    /// Sets `user`'s permission on `repo` (registers the repository if needed): `admin`,
    /// `maintain`, `write`, `triage`, `read`, or `none` (a GitHub user who is no collaborator).
    /// A user never set is unknown to GitHub: the permission endpoint answers `404`.
    pub fn set_permission(&self, repo: &str, user: &str, role: &str) {
        assert!(
            ["admin", "maintain", "write", "triage", "read", "none"].contains(&role),
            "GitHub has no role {role:?}"
        );
        self.lock()
            .repos
            .entry(repo.to_owned())
            .or_default()
            .roles
            .insert(user.to_owned(), role.to_owned());
    }

    /// Sets pull request `number` of `repo` (registers the repository if needed); setting it
    /// again is a push to it, a close or a reopen.
    pub fn set_pull(&self, repo: &str, number: u64, pr: PullRequest) {
        self.lock()
            .repos
            .entry(repo.to_owned())
            .or_default()
            .pulls
            .insert(number, pr);
    }

    /// Serves the git repository at `path` (bare, or a work tree with `.git`) at
    /// [`GitHub::clone_url`] over smart HTTP (`git http-backend`, protocol v2, a fetch of one
    /// sha and shallow fetches allowed, as on GitHub).
    pub fn serve_git(&self, repo: &str, path: &Path) {
        self.register_git(repo, path, false);
    }

    /// As [`GitHub::serve_git`], over git's dumb HTTP protocol only (static files), which
    /// cannot fetch shallow: for a test of a client's fallback to a full fetch.
    pub fn serve_git_dumb(&self, repo: &str, path: &Path) {
        self.register_git(repo, path, true);
    }

    fn register_git(&self, repo: &str, path: &Path, dumb: bool) {
        let git_dir = if path.join(".git").is_dir() {
            path.join(".git")
        } else {
            path.to_path_buf()
        };
        if dumb {
            let ok = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&git_dir)
                .arg("update-server-info")
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "git update-server-info in {}", git_dir.display());
        }
        let mut inner = self.lock();
        let r = inner.repos.entry(repo.to_owned()).or_default();
        r.git_dir = Some(git_dir);
        r.dumb = dumb;
    }

    /// Every fetch or clone served over smart HTTP so far, in arrival order.
    pub fn git_fetches(&self) -> Vec<GitFetch> {
        self.lock()
            .git_fetches
            .iter()
            .map(|(repo, request, bytes)| GitFetch {
                repo: repo.clone(),
                request: request.clone(),
                bytes_sent: bytes.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Bytes of all git answers' bodies so far (smart HTTP: ref advertisements and packs).
    pub fn git_bytes_sent(&self) -> u64 {
        self.lock().git_bytes.load(Ordering::Relaxed)
    }

    /// Registers `token` as an installation token minted earlier (as the host would have, with
    /// `sdci-agent token`), narrowed to the repository names and permissions given.
    pub fn add_installation_token(
        &self,
        token: &str,
        repos: &[&str],
        permissions: &[(&str, &str)],
    ) {
        let mut inner = self.lock();
        let installation_id = inner.app.as_ref().map_or(1, |a| a.installation_id);
        inner.minted.push(MintedToken {
            installation_id,
            repositories: Some(repos.iter().map(|r| (*r).to_owned()).collect()),
            permissions: Some(
                permissions
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            token: token.to_owned(),
            expires_at: rfc3339(now_unix() + 3600),
            revoked: false,
        });
    }

    /// Accepts `token` as a personal access token (all permissions, all repositories).
    pub fn add_pat(&self, token: &str) {
        self.lock().pats.push(token.to_owned());
    }

    /// Configures a GitHub App whose JWTs are checked against `private_key_pem`'s public half.
    pub fn set_app(&self, app_id: u64, installation_id: u64, private_key_pem: &str) {
        let der = pem_to_der(private_key_pem).expect("a PEM private key");
        let pair = ring::signature::RsaKeyPair::from_der(&der)
            .or_else(|_| ring::signature::RsaKeyPair::from_pkcs8(&der))
            .expect("an RSA private key");
        self.lock().app = Some(App {
            app_id,
            installation_id,
            public_key: pair.public_key().as_ref().to_vec(),
        });
    }

    /// The next `n` requests are answered with `status` (e.g. 502, 503) and GitHub's error page.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut inner = self.lock();
        for _ in 0..n {
            inner.faults.push_back(Fault::Status(status));
        }
    }

    /// Every request in the next `window` is answered with `status`.
    pub fn outage_for(&self, window: Duration, status: u16) {
        self.lock().outage_until = Some((Instant::now() + window, status));
    }

    /// The next request is answered with this rate limit.
    pub fn rate_limit_next(&self, limit: RateLimit) {
        self.lock().faults.push_back(Fault::Rate(limit));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Every commit status accepted so far, in order.
    pub fn statuses(&self) -> Vec<CommitStatus> {
        self.lock().statuses.clone()
    }

    /// Every installation token minted so far.
    pub fn minted(&self) -> Vec<MintedToken> {
        self.lock().minted.clone()
    }

    /// The check runs of a commit as they are now, in creation order.
    pub fn check_runs(&self, repo: &str, sha: &str) -> Vec<CheckRun> {
        self.lock().checks.for_commit(repo, sha)
    }

    /// Every accepted create and update of check run `id`, in order (empty for an unknown id).
    pub fn check_run_history(&self, id: u64) -> Vec<CheckRunChange> {
        self.lock().checks.history(id)
    }

    /// Every reaction to a comment accepted so far, in order.
    pub fn reactions(&self) -> Vec<Reaction> {
        self.lock().reactions.clone()
    }

    /// The requests and answers so far that GitHub's OpenAPI description does not allow, each
    /// naming the operation and the schema's complaint.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// As [`GitHub::violations`], and forgets them: for a test that sends a wrong body on
    /// purpose (the stand-in would otherwise fail it when dropped).
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().violations)
    }
}

/// Stops the server, then fails the test if any request or answer broke GitHub's OpenAPI
/// description. Why a panic here rather than answering `500`: a `500` is retried by the agent
/// and ends as "GitHub unavailable", an outcome tests already expect in places, so a wrong body
/// could pass unnoticed; every test that starts a stand-in drops it, so the panic cannot be
/// missed (unless the test is failing already, when it is printed instead).
impl Drop for GitHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let violations = self.take_violations();
        if violations.is_empty() {
            return;
        }
        let text = format!(
            "the GitHub stand-in saw {} request(s) or answer(s) that GitHub's OpenAPI description \
             (@octokit/openapi) does not allow:\n{}",
            violations.len(),
            violations.join("\n---\n")
        );
        if std::thread::panicking() {
            eprintln!("{text}");
        } else {
            panic!("{text}");
        }
    }
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC time for a Unix timestamp, as GitHub writes it (`protocol::time`).
pub fn rfc3339(unix: u64) -> String {
    Utc::from_unix(i64::try_from(unix).unwrap_or(i64::MAX)).rfc3339()
}

/// An API answer before GitHub's common headers are added: status, JSON body (none for `204`),
/// and the headers of this operation (`Location`, `Retry-After`, rate-limit overrides).
pub(crate) struct Answer {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }
    fn empty(status: u16) -> Self {
        Self {
            status,
            body: None,
            headers: Vec::new(),
        }
    }
    fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

fn message(status: u16, msg: &str) -> Answer {
    Answer::json(
        status,
        json!({"message": msg, "documentation_url": "https://docs.github.com/rest",
               "status": status.to_string()}),
    )
}

fn validation_failed_for(resource: &str, field: &str, code: &str, msg: &str) -> Answer {
    Answer::json(
        422,
        json!({
            "message": "Validation Failed",
            "errors": [{"resource": resource, "field": field, "code": code, "message": msg}],
            "documentation_url": "https://docs.github.com/rest",
            "status": "422"
        }),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn recorded_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            let name = n.as_str().to_owned();
            let value = if name == "authorization" {
                let v = v.to_str().unwrap_or("");
                let scheme = v.split_whitespace().next().unwrap_or("");
                format!("{scheme} <redacted>")
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            (name, value)
        })
        .collect()
}

/// What routing decided: an API answer of an operation (its OpenAPI path template and method,
/// `None` for faults, which no operation describes), or a response of git's.
enum Routed {
    Api(Option<&'static str>, Answer),
    Raw(Response),
    /// A smart-HTTP git request, served after the lock is released, with the byte counters
    /// its answer adds to.
    Git(git_http::GitRequest, Vec<Arc<AtomicU64>>),
}

async fn handle(State(state): State<Shared>, req: Request) -> Response {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = req.headers().clone();
    let at = SystemTime::now();
    let Ok(body) = axum::body::to_bytes(req.into_body(), git_http::MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let routed = {
        let mut inner = state.lock().unwrap_or_else(|p| p.into_inner());
        respond(
            &mut inner,
            &method,
            &path,
            query.as_deref(),
            &headers,
            &body,
        )
    };
    // Git runs a process: without the lock, so the stand-in keeps answering meanwhile.
    let routed = match routed {
        Routed::Git(req, counters) => Routed::Raw(git_http::serve(req, counters).await),
        other => other,
    };
    let mut inner = state.lock().unwrap_or_else(|p| p.into_inner());
    record(&mut inner, routed, method, path, query, headers, body, at)
}

/// Finishes an answer (headers, OpenAPI checks) and records the request with it.
#[allow(clippy::too_many_arguments)]
fn record(
    inner: &mut Inner,
    routed: Routed,
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    at: SystemTime,
) -> Response {
    let mut openapi_notes = Vec::new();
    let (resp, response_body, op) = match routed {
        Routed::Raw(r) => (r, String::new(), None),
        // Served before recording (see `handle`); never reaches here.
        Routed::Git(_, _) => (
            StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            String::new(),
            None,
        ),
        Routed::Api(op, answer) => {
            let (r, text) = finish(inner, &method, &headers, answer);
            (r, text, op)
        }
    };
    if let Some(op) = op {
        let status = resp.status().as_u16();
        let answer = serde_json::from_str::<Value>(&response_body).ok();
        // A wrong request body that the stand-in refused is GitHub's behaviour (a client's
        // bug, which the client's test sees as the refusal); one it accepted is the
        // stand-in's. A wrong answer is always the stand-in's.
        let refused = (400..500).contains(&status);
        let request = openapi::check_request(op, &method, &body).err();
        let response = openapi::check_response(op, &method, status, answer.as_ref()).err();
        for (p, fatal) in [(request, !refused), (response, true)] {
            let Some(p) = p else { continue };
            let v = format!("{method} {path}: {p}");
            if fatal {
                eprintln!("GitHub stand-in: OpenAPI violation: {v}");
                inner.violations.push(v.clone());
            }
            openapi_notes.push(v);
        }
    }
    inner.requests.push(RecordedRequest {
        method,
        path,
        query,
        headers: recorded_headers(&headers),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: resp.status().as_u16(),
        response_headers: recorded_headers(resp.headers()),
        response_body,
        openapi: openapi_notes,
        at,
    });
    resp
}

/// Turns an answer into GitHub's response: the body, `Content-Type`, the request id, the API
/// version, the rate-limit headers of the caller's key, and an `ETag` (or `304`) on a `GET`.
fn finish(inner: &mut Inner, method: &str, headers: &HeaderMap, a: Answer) -> (Response, String) {
    let text = a
        .body
        .as_ref()
        .map(|b| serde_json::to_string(b).unwrap_or_default())
        .unwrap_or_default();
    let mut status = a.status;
    let mut etag = None;
    if method == "GET" && status == 200 {
        use sha2::Digest;
        let tag = format!(
            "W/\"{}\"",
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        );
        let matches = headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
        if matches {
            status = 304;
        }
        etag = Some(tag);
    }
    let body_text = if status == 304 || a.body.is_none() {
        String::new()
    } else {
        text
    };
    let mut resp = Response::new(Body::from(body_text.clone()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    let mut put = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    };
    if a.body.is_some() && status != 304 {
        put("content-type", "application/json; charset=utf-8");
    }
    inner.counter += 1;
    let n = inner.counter;
    put(
        "x-github-request-id",
        &format!(
            "{:04X}:{:06X}:{:07X}:{:08X}:{:08X}",
            n % 0xffff,
            n * 7,
            n * 13,
            n * 31,
            now_unix() as u32
        ),
    );
    put("x-github-api-version-selected", "2022-11-28");
    put("x-github-media-type", "github.v3; format=json");
    put("vary", "Accept, Authorization, Cookie, X-GitHub-OTP");
    if let Some(tag) = &etag {
        put("etag", tag);
        put("cache-control", "private, max-age=60, s-maxage=60");
    }
    // The primary rate limit: 5,000 an hour per token, 60 without one (GitHub's numbers).
    let key = presented_token(headers).unwrap_or_default();
    let limit: u64 = if key.is_empty() { 60 } else { 5000 };
    let now = now_unix();
    if now >= inner.rate_reset {
        inner.rate_reset = now + 3600;
        inner.rate_used.clear();
    }
    let used = inner.rate_used.entry(key).or_insert(0);
    *used += 1;
    let used = *used;
    put("x-ratelimit-limit", &limit.to_string());
    put(
        "x-ratelimit-remaining",
        &limit.saturating_sub(used).to_string(),
    );
    put("x-ratelimit-reset", &inner.rate_reset.to_string());
    put("x-ratelimit-used", &used.to_string());
    put("x-ratelimit-resource", "core");
    for (name, value) in &a.headers {
        put(name, value);
    }
    (resp, body_text)
}

fn fault_answer(fault: Fault) -> Routed {
    match fault {
        Fault::Status(502) => {
            // GitHub's edge answers 502 with an HTML page, not JSON.
            let mut r = (
                StatusCode::BAD_GATEWAY,
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            )
                .into_response();
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            Routed::Raw(r)
        }
        Fault::Status(status) => Routed::Api(None, message(status, "Server Error")),
        Fault::Rate(RateLimit::Primary {
            status,
            reset_after,
        }) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let reset = (now + reset_after).as_secs_f64().ceil() as u64;
            let a = message(status, "API rate limit exceeded for installation.")
                .with_header("x-ratelimit-limit", "5000".to_owned())
                .with_header("x-ratelimit-remaining", "0".to_owned())
                .with_header("x-ratelimit-used", "5000".to_owned())
                .with_header("x-ratelimit-resource", "core".to_owned())
                .with_header("x-ratelimit-reset", reset.to_string());
            Routed::Api(None, a)
        }
        Fault::Rate(RateLimit::Secondary {
            status,
            retry_after,
        }) => {
            let secs = retry_after.as_secs_f64().ceil() as u64;
            let a = message(status, "You have exceeded a secondary rate limit.")
                .with_header("retry-after", secs.to_string());
            Routed::Api(None, a)
        }
    }
}

fn respond(
    inner: &mut Inner,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Routed {
    if let Some((until, status)) = inner.outage_until {
        if Instant::now() < until {
            return fault_answer(Fault::Status(status));
        }
        inner.outage_until = None;
    }
    if let Some(fault) = inner.faults.pop_front() {
        return fault_answer(fault);
    }
    if headers.get("user-agent").is_none() {
        return Routed::Api(
            None,
            message(
                403,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header.",
            ),
        );
    }
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let repo_of = |o: &str, r: &str| format!("{o}/{r}");
    let (op, answer) = match (method, seg.as_slice()) {
        ("POST", ["repos", o, r, "statuses", sha]) => (
            "/repos/{owner}/{repo}/statuses/{sha}",
            post_status(inner, &repo_of(o, r), sha, headers, body),
        ),
        ("GET", ["repos", o, r, "contents", rest @ ..]) if !rest.is_empty() => (
            "/repos/{owner}/{repo}/contents/{path}",
            get_contents(inner, &repo_of(o, r), &rest.join("/"), query, headers),
        ),
        ("GET", ["repos", o, r, "branches", rest @ ..]) if !rest.is_empty() => (
            "/repos/{owner}/{repo}/branches/{branch}",
            get_branch(inner, &repo_of(o, r), &rest.join("/"), headers, false),
        ),
        ("GET", ["repos", o, r, "git", "ref", "heads", rest @ ..]) if !rest.is_empty() => (
            "/repos/{owner}/{repo}/git/ref/{ref}",
            get_branch(inner, &repo_of(o, r), &rest.join("/"), headers, true),
        ),
        ("POST", ["repos", o, r, "check-runs"]) => {
            let repo = repo_of(o, r);
            let a = match check_access(inner, headers, &repo, "write") {
                Ok(app_id) => {
                    inner.counter += 1;
                    let id = inner.counter;
                    let (base, now) = (inner.base.clone(), rfc3339(now_unix()));
                    inner.checks.create(&base, app_id, &repo, id, body, &now)
                }
                Err(a) => a,
            };
            ("/repos/{owner}/{repo}/check-runs", a)
        }
        ("PATCH", ["repos", o, r, "check-runs", id]) => {
            let repo = repo_of(o, r);
            let a = match check_access(inner, headers, &repo, "write") {
                Ok(app_id) => {
                    let (base, now) = (inner.base.clone(), rfc3339(now_unix()));
                    inner.checks.update(&base, app_id, &repo, id, body, &now)
                }
                Err(a) => a,
            };
            ("/repos/{owner}/{repo}/check-runs/{check_run_id}", a)
        }
        ("GET", ["repos", o, r, "check-runs", id]) => {
            let repo = repo_of(o, r);
            let a = match check_access(inner, headers, &repo, "read") {
                Ok(app_id) => inner.checks.get(&inner.base, app_id, &repo, id),
                Err(a) => a,
            };
            ("/repos/{owner}/{repo}/check-runs/{check_run_id}", a)
        }
        ("GET", ["repos", o, r, "commits", reference, "check-runs"]) => {
            let repo = repo_of(o, r);
            let a = match check_access(inner, headers, &repo, "read") {
                Ok(app_id) => {
                    let sha = inner
                        .repos
                        .get(&repo)
                        .and_then(|x| x.branches.get(*reference))
                        .cloned()
                        .unwrap_or_else(|| (*reference).to_owned());
                    inner.checks.list(&inner.base, app_id, &repo, &sha, query)
                }
                Err(a) => a,
            };
            ("/repos/{owner}/{repo}/commits/{ref}/check-runs", a)
        }
        ("GET", ["repos", o, r, "collaborators", user, "permission"]) => (
            "/repos/{owner}/{repo}/collaborators/{username}/permission",
            get_permission(inner, &repo_of(o, r), user, headers),
        ),
        ("GET", ["repos", o, r, "pulls", number]) => (
            "/repos/{owner}/{repo}/pulls/{pull_number}",
            pulls::get(inner, &repo_of(o, r), number, headers),
        ),
        ("POST", ["app", "installations", id, "access_tokens"]) => (
            "/app/installations/{installation_id}/access_tokens",
            access_token(inner, id, headers, body),
        ),
        ("POST", ["repos", o, r, "issues", "comments", id, "reactions"]) => (
            "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions",
            react(inner, &repo_of(o, r), id, headers, body),
        ),
        ("DELETE", ["installation", "token"]) => {
            ("/installation/token", revoke_token(inner, headers, body))
        }
        ("GET" | "POST", [o, r, rest @ ..]) if r.ends_with(".git") && !rest.is_empty() => {
            let repo = format!("{o}/{}", r.trim_end_matches(".git"));
            return git_route(inner, &repo, method, &rest.join("/"), query, headers, body);
        }
        _ => return Routed::Api(None, message(404, "Not Found")),
    };
    Routed::Api(Some(op), answer)
}

/// Which token a request carries: `Bearer X` / `token X` (REST) or Basic `user:X` (git).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Some(rest.trim().to_owned()),
        "basic" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let s = String::from_utf8(raw).ok()?;
            s.split_once(':').map(|(_, p)| p.to_owned())
        }
        _ => None,
    }
}

fn rank(level: &str) -> u8 {
    match level {
        "read" => 1,
        "write" => 2,
        "admin" => 3,
        _ => 0,
    }
}

/// `Ok` when the request may use `permission` at `level` on `repo`, else GitHub's answer.
/// `metadata: read` is part of every installation token, as on GitHub.
fn authorize(
    inner: &Inner,
    headers: &HeaderMap,
    repo: &str,
    permission: &str,
    level: &str,
) -> Result<(), Box<Answer>> {
    let Some(token) = presented_token(headers) else {
        return Err(Box::new(message(401, "Requires authentication")));
    };
    if inner.pats.contains(&token) {
        return Ok(());
    }
    let Some(minted) = inner.minted.iter().find(|m| m.token == token && !m.revoked) else {
        return Err(Box::new(message(401, "Bad credentials")));
    };
    let name = repo.split_once('/').map_or(repo, |(_, n)| n);
    let repo_ok = minted
        .repositories
        .as_ref()
        .is_none_or(|rs| rs.iter().any(|r| r == name));
    let perm_ok = (permission == "metadata" && level == "read")
        || minted.permissions.as_ref().is_none_or(|ps| {
            ps.get(permission)
                .is_some_and(|granted| rank(granted) >= rank(level))
        });
    if repo_ok && perm_ok {
        Ok(())
    } else {
        Err(Box::new(message(
            403,
            "Resource not accessible by integration",
        )))
    }
}

/// The check-run endpoints' access: a registered repository, an installation token with
/// `checks: level` (a personal access token may read, never write); `Ok` is the App's id.
fn check_access(
    inner: &Inner,
    headers: &HeaderMap,
    repo: &str,
    level: &str,
) -> Result<u64, Answer> {
    if !inner.repos.contains_key(repo) {
        return Err(message(404, "Not Found"));
    }
    let is_pat = presented_token(headers).is_some_and(|t| inner.pats.contains(&t));
    if is_pat && level == "write" {
        return Err(message(403, "You must authenticate via a GitHub App."));
    }
    authorize(inner, headers, repo, "checks", level).map_err(|a| *a)?;
    Ok(inner.app.as_ref().map_or(1, |a| a.app_id))
}

fn post_status(
    inner: &mut Inner,
    repo: &str,
    sha: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    if !inner.repos.contains_key(repo) {
        return message(404, "Not Found");
    }
    if let Err(r) = authorize(inner, headers, repo, "statuses", "write") {
        return *r;
    }
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return message(400, "Problems parsing JSON");
    };
    let invalid =
        |field: &str, code: &str, msg: &str| validation_failed_for("Status", field, code, msg);
    for key in obj.keys() {
        if !["state", "target_url", "description", "context"].contains(&key.as_str()) {
            return invalid(key, "invalid", "unknown field");
        }
    }
    let state = match obj.get("state") {
        Some(Value::String(s))
            if ["error", "failure", "pending", "success"].contains(&s.as_str()) =>
        {
            s.clone()
        }
        Some(_) => return invalid("state", "invalid", "state is not included in the list"),
        None => return invalid("state", "missing_field", "state is missing"),
    };
    let opt_string = |key: &str| -> Result<Option<String>, Box<Answer>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Box::new(invalid(
                key,
                "invalid",
                "must be a string or null",
            ))),
        }
    };
    let description = match opt_string("description") {
        Ok(d) => d,
        Err(r) => return *r,
    };
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 140)
    {
        return invalid(
            "description",
            "custom",
            "description is too long (maximum is 140 characters)",
        );
    }
    let target_url = match opt_string("target_url") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let context = match obj.get("context") {
        None => "default".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return invalid("context", "invalid", "must be a string"),
    };
    inner.counter += 1;
    let id = inner.counter;
    inner.statuses.push(CommitStatus {
        repo: repo.to_owned(),
        sha: sha.to_owned(),
        state: state.clone(),
        description: description.clone(),
        target_url: target_url.clone(),
        context: context.clone(),
    });
    let now = rfc3339(now_unix());
    let base = &inner.base;
    let creator = if presented_token(headers).is_some_and(|t| inner.pats.contains(&t)) {
        objects::simple_user(base, "sdci-bot", "User")
    } else {
        objects::simple_user(base, "sdci[bot]", "Bot")
    };
    let url = format!("{base}/repos/{repo}/statuses/{sha}");
    Answer::json(
        201,
        json!({
            "url": url, "avatar_url": creator["avatar_url"],
            "id": id, "node_id": objects::node_id("SC", id), "state": state,
            "description": description, "target_url": target_url, "context": context,
            "created_at": now, "updated_at": now, "creator": creator
        }),
    )
    .with_header("location", url)
}

/// Git's blob id of `content` (`sha1("blob <len>\0" + content)`), the `sha` of a file.
fn blob_sha(content: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(format!("blob {}\0", content.len()).as_bytes());
    ctx.update(content);
    hex::encode(ctx.finish().as_ref())
}

fn get_contents(
    inner: &Inner,
    repo: &str,
    file: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Answer {
    let Some(r) = inner.repos.get(repo) else {
        return message(404, "Not Found");
    };
    if let Err(resp) = authorize(inner, headers, repo, "contents", "read") {
        return *resp;
    }
    let Some(reference) = query_param(query, "ref") else {
        return message(404, "Not Found");
    };
    let sha = r.branches.get(&reference).cloned().unwrap_or(reference);
    let Some(content) = r.files.get(&(sha.clone(), file.to_owned())) else {
        return message(404, "Not Found");
    };
    // GitHub wraps the base64 at 60 characters per line.
    let b64 = base64::engine::general_purpose::STANDARD.encode(content);
    let wrapped: Vec<String> = b64
        .as_bytes()
        .chunks(60)
        .map(|c| String::from_utf8_lossy(c).into_owned() + "\n")
        .collect();
    Answer::json(
        200,
        objects::content_file(
            &inner.base,
            repo,
            file,
            &sha,
            content.len(),
            &blob_sha(content),
            &wrapped.concat(),
        ),
    )
}

fn get_branch(
    inner: &Inner,
    repo: &str,
    branch: &str,
    headers: &HeaderMap,
    as_ref: bool,
) -> Answer {
    let Some(r) = inner.repos.get(repo) else {
        return message(404, "Not Found");
    };
    if let Err(resp) = authorize(inner, headers, repo, "contents", "read") {
        return *resp;
    }
    let Some(sha) = r.branches.get(branch) else {
        return message(
            404,
            if as_ref {
                "Not Found"
            } else {
                "Branch not found"
            },
        );
    };
    if as_ref {
        Answer::json(
            200,
            objects::git_ref(&inner.base, repo, &format!("heads/{branch}"), sha),
        )
    } else {
        Answer::json(200, objects::branch(&inner.base, repo, branch, sha))
    }
}

/// `GET /repos/{o}/{r}/collaborators/{user}/permission`: `permission` is GitHub's older
/// five-level name (`maintain` reads `write`, `triage` reads `read`), `role_name` the role.
fn get_permission(inner: &Inner, repo: &str, user: &str, headers: &HeaderMap) -> Answer {
    let Some(r) = inner.repos.get(repo) else {
        return message(404, "Not Found");
    };
    if let Err(resp) = authorize(inner, headers, repo, "metadata", "read") {
        return *resp;
    }
    let Some(role) = r.roles.get(user) else {
        return message(404, &format!("{user} is not a user"));
    };
    let permission = match role.as_str() {
        "maintain" => "write",
        "triage" => "read",
        other => other,
    };
    let level = |min: &[&str]| min.contains(&role.as_str());
    let mut collaborator = objects::simple_user(&inner.base, user, "User");
    collaborator["permissions"] = json!({
        "admin": level(&["admin"]), "maintain": level(&["admin", "maintain"]),
        "push": level(&["admin", "maintain", "write"]),
        "triage": level(&["admin", "maintain", "write", "triage"]),
        "pull": level(&["admin", "maintain", "write", "triage", "read"])
    });
    collaborator["role_name"] = json!(role);
    Answer::json(
        200,
        json!({"permission": permission, "role_name": role, "user": collaborator}),
    )
}

/// A reaction to a comment ([`reactions`]): `issues: write` or `pull_requests: write`.
fn react(inner: &mut Inner, repo: &str, id: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
    if !inner.repos.contains_key(repo) {
        return message(404, "Not Found");
    }
    if let Err(a) = authorize(inner, headers, repo, "issues", "write") {
        if authorize(inner, headers, repo, "pull_requests", "write").is_err() {
            return *a;
        }
    }
    let is_pat = presented_token(headers).is_some_and(|t| inner.pats.contains(&t));
    let user = if is_pat { "standin-user" } else { "sdci[bot]" };
    let (base, now) = (inner.base.clone(), rfc3339(now_unix()));
    reactions::create(
        &mut inner.reactions,
        &mut inner.counter,
        (&base, &now),
        repo,
        id,
        user,
        body,
    )
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// Checks an App JWT as GitHub does; `Err` carries GitHub's message.
fn check_jwt(app: &App, jwt: &str) -> Result<(), &'static str> {
    const BAD: &str = "A JSON web token could not be decoded";
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    let header: Value = serde_json::from_slice(&b64url(h).ok_or(BAD)?).map_err(|_| BAD)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(BAD);
    }
    let sig = b64url(s).ok_or(BAD)?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &app.public_key,
    )
    .verify(format!("{h}.{p}").as_bytes(), &sig)
    .map_err(|_| "A JSON web token could not be decoded (signature)")?;
    let claims: Value = serde_json::from_slice(&b64url(p).ok_or(BAD)?).map_err(|_| BAD)?;
    let iss_ok = match claims.get("iss") {
        Some(Value::Number(n)) => n.as_u64() == Some(app.app_id),
        Some(Value::String(s)) => s == &app.app_id.to_string(),
        _ => false,
    };
    if !iss_ok {
        return Err("'Issuer' claim ('iss') must be an Integer");
    }
    let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_u64),
        claims.get("exp").and_then(Value::as_u64),
    ) else {
        return Err("Missing 'iat' or 'exp' claim");
    };
    let now = now_unix();
    if exp <= now {
        return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires");
    }
    if iat > now + 60 {
        return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past");
    }
    if exp.saturating_sub(iat) > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future");
    }
    Ok(())
}

/// `DELETE /installation/token` ("Revoke an installation access token"): authenticated with the
/// installation token itself, no request body; `204 No Content`. A PAT is not an installation
/// token (GitHub: 403), an unknown or revoked token is `401 Bad credentials`.
fn revoke_token(inner: &mut Inner, headers: &HeaderMap, body: &[u8]) -> Answer {
    if !body.is_empty() {
        return message(400, "This endpoint takes no request body");
    }
    let Some(token) = presented_token(headers) else {
        return message(401, "Requires authentication");
    };
    if inner.pats.contains(&token) {
        return message(
            403,
            "This endpoint requires you to be authenticated as an installation.",
        );
    }
    match inner
        .minted
        .iter_mut()
        .find(|m| m.token == token && !m.revoked)
    {
        Some(m) => {
            m.revoked = true;
            Answer::empty(204)
        }
        None => message(401, "Bad credentials"),
    }
}

fn access_token(inner: &mut Inner, id: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
    let Some(app) = inner.app.as_ref() else {
        return message(404, "Not Found");
    };
    let Some(jwt) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return message(401, "A JSON web token could not be decoded");
    };
    if let Err(m) = check_jwt(app, jwt) {
        return message(401, m);
    }
    if id.parse::<u64>().ok() != Some(app.installation_id) {
        return message(404, "Not Found");
    }
    let installation_id = app.installation_id;
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return message(400, "Problems parsing JSON"),
        }
    };
    let obj = req.as_object().cloned().unwrap_or_default();
    for key in obj.keys() {
        if !["repositories", "repository_ids", "permissions"].contains(&key.as_str()) {
            return validation_failed_for("InstallationToken", key, "invalid", "unknown field");
        }
    }
    let repositories = match obj.get("repositories") {
        None => None,
        Some(Value::Array(a)) => {
            let mut names = Vec::new();
            for v in a {
                let Some(name) = v.as_str() else {
                    return validation_failed_for(
                        "InstallationToken",
                        "repositories",
                        "invalid",
                        "must be strings",
                    );
                };
                if name.contains('/')
                    || !inner.repos.keys().any(|k| k.ends_with(&format!("/{name}")))
                {
                    return validation_failed_for("InstallationToken", 
                        "repositories",
                        "invalid",
                        "There is at least one repository that does not exist or is not accessible to the parent installation.",
                    );
                }
                names.push(name.to_owned());
            }
            Some(names)
        }
        Some(_) => {
            return validation_failed_for(
                "InstallationToken",
                "repositories",
                "invalid",
                "must be an array",
            )
        }
    };
    if let Some(v) = obj.get("repository_ids") {
        if !v.as_array().is_some_and(|a| a.iter().all(Value::is_u64)) {
            return validation_failed_for(
                "InstallationToken",
                "repository_ids",
                "invalid",
                "must be an array of integers",
            );
        }
    }
    let permissions = match obj.get("permissions") {
        None => None,
        Some(Value::Object(p)) => {
            let mut map = BTreeMap::new();
            for (k, v) in p {
                match v.as_str() {
                    Some(l @ ("read" | "write" | "admin")) => {
                        map.insert(k.clone(), l.to_owned());
                    }
                    _ => {
                        return validation_failed_for(
                            "InstallationToken",
                            "permissions",
                            "invalid",
                            "permission levels are read, write or admin",
                        )
                    }
                }
            }
            Some(map)
        }
        Some(_) => {
            return validation_failed_for(
                "InstallationToken",
                "permissions",
                "invalid",
                "must be an object",
            )
        }
    };
    inner.counter += 1;
    let token = format!("ghs_standin{:026}", inner.counter);
    let expires_at = rfc3339(now_unix() + 3600);
    inner.minted.push(MintedToken {
        installation_id,
        repositories: repositories.clone(),
        permissions: permissions.clone(),
        token: token.clone(),
        expires_at: expires_at.clone(),
        revoked: false,
    });
    let repo_objs: Vec<Value> = repositories
        .iter()
        .flatten()
        .filter_map(|n| inner.repos.keys().find(|k| k.ends_with(&format!("/{n}"))))
        .map(|full| objects::repository(&inner.base, full))
        .collect();
    Answer::json(
        201,
        json!({
            "token": token, "expires_at": expires_at,
            "permissions": permissions.unwrap_or_else(|| BTreeMap::from([
                ("contents".to_owned(), "write".to_owned()),
                ("statuses".to_owned(), "write".to_owned())])),
            "repository_selection": if repositories.is_some() { "selected" } else { "all" },
            "repositories": repo_objs,
        }),
    )
}

/// A git request: Basic auth with a token that may read contents (GitHub's `401` with
/// `WWW-Authenticate` asks git for credentials), then smart HTTP, or dumb for a repository
/// served with [`GitHub::serve_git_dumb`].
fn git_route(
    inner: &mut Inner,
    repo: &str,
    method: &str,
    rest: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Routed {
    let Some((git_dir, dumb)) = inner
        .repos
        .get(repo)
        .and_then(|r| r.git_dir.clone().map(|d| (d, r.dumb)))
    else {
        return Routed::Raw((StatusCode::NOT_FOUND, "Repository not found.").into_response());
    };
    if let Err(resp) = authorize(inner, headers, repo, "contents", "read") {
        if resp.status == 401 {
            let mut r = (StatusCode::UNAUTHORIZED, "authentication required").into_response();
            r.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Basic realm=\"GitHub\""),
            );
            return Routed::Raw(r);
        }
        return Routed::Raw((StatusCode::FORBIDDEN, "Permission denied").into_response());
    }
    if dumb {
        if method != "GET" {
            return Routed::Raw((StatusCode::FORBIDDEN, "dumb HTTP only").into_response());
        }
        return Routed::Raw(git_file(&git_dir, rest));
    }
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut counters = vec![inner.git_bytes.clone()];
    if rest == "git-upload-pack" {
        let compressed = header("content-encoding").is_some_and(|e| e != "identity");
        let request = if compressed {
            None
        } else {
            git_http::parse_fetch(body)
        };
        if let Some(request) = request {
            let bytes = Arc::new(AtomicU64::new(0));
            counters.push(bytes.clone());
            inner.git_fetches.push((repo.to_owned(), request, bytes));
        }
    }
    let remote_user = header("authorization")
        .and_then(|v| {
            let b64 = v.strip_prefix("Basic ")?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?;
            let s = String::from_utf8(raw).ok()?;
            s.split_once(':').map(|(u, _)| u.to_owned())
        })
        .unwrap_or_default();
    Routed::Git(
        git_http::GitRequest {
            git_dir,
            path_info: format!("/{rest}"),
            method: method.to_owned(),
            query: query.map(str::to_owned),
            content_type: header("content-type"),
            content_encoding: header("content-encoding"),
            git_protocol: header("git-protocol"),
            remote_user,
            body: Bytes::copy_from_slice(body),
        },
        counters,
    )
}

/// Git's dumb HTTP: a file of the repository, read as it is.
fn git_file(git_dir: &Path, file: &str) -> Response {
    let rel = Path::new(file);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    match std::fs::read(git_dir.join(rel)) {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            let ct = if file == "info/refs" {
                "text/plain"
            } else {
                "application/octet-stream"
            };
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static(ct));
            r
        }
        Err(_) => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_732_800_000), "2024-11-28T13:20:00Z");
        assert_eq!(rfc3339(951_825_600), "2000-02-29T12:00:00Z");
    }

    #[test]
    fn percent_decoding_keeps_plain_text_and_decodes_escapes() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn a_blob_sha_is_gits() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            blob_sha(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}

#[cfg(test)]
mod answers_tests;

#[cfg(test)]
mod git_tests;
