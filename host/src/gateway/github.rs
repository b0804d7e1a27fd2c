//! GitHub, through the `sdci-agent` binary: the host never calls the GitHub API itself
//! (CONTRACTS.md §5). `status`, `token`, `revoke`, `head`, `ci-config`, `check-run`, `permission`,
//! `file`, `react` and `pull-head`, each a subprocess with a timeout, answered by exit code (protocol's
//! [`GatewayExit`] table) and stdout. [`PermissionCache`] keeps `permission`'s answers for a
//! minute (contracts §10).
//!
//! Invariants:
//! - Every data argument is one `--flag=value` word, so a value that begins with `-` (a result
//!   reason such as `--x`) is never read as an option.
//! - Every invocation has a timeout and is killed at it, and dies with the host (the child gets
//!   `SIGKILL` when the host exits, even by `SIGKILL`: `PR_SET_PDEATHSIG`).
//! - The token the agent prints is wrapped in a [`Secret`] at once and never logged; a token
//!   the host hands to the agent goes on stdin, never argv.
//! - Failures say who must act ([`GatewayError::kind`]): the gateway or GitHub is unavailable
//!   (retry later), or the request is refused for good (usage or configuration: retrying the
//!   same call cannot help).

use crate::config::Config;
use crate::HostError;
use sdci_protocol::{GatewayExit, MintedToken, Secret};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The permissions of a job's token: what the checkout in sd-dev needs, nothing that writes
/// (the host posts every status itself, contracts §5/§8).
pub const JOB_TOKEN_PERMISSIONS: &str = "contents:read";

/// A pull request's head as `sdci-agent pull-head` prints it (contracts §5).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PullHead {
    pub sha: sdci_protocol::CommitSha,
    /// The head repository (`None`: the fork was deleted).
    pub repo: Option<sdci_protocol::RepoName>,
    #[serde(rename = "ref")]
    pub head_ref: String,
    /// `open` or `closed`.
    pub state: String,
    /// The pull request's author.
    pub user: String,
    #[serde(default)]
    pub title: Option<String>,
}

impl PullHead {
    pub fn is_open(&self) -> bool {
        self.state == "open"
    }
}

/// What kind of failure an `sdci-agent` invocation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayFailure {
    /// The agent could not run or answer (missing binary, timeout, a signal) or GitHub was
    /// unreachable (exit 2): try again later.
    Unavailable,
    /// Refused for good: a usage error (64) or a configuration / 4xx refusal (78).
    Refused,
    /// Anything else (an answer of the wrong shape).
    Other,
}

/// A failed `sdci-agent` invocation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sdci-agent {command} failed: {message}")]
pub struct GatewayError {
    pub command: String,
    /// The agent's exit code; `None` when it could not start, timed out or died by a signal.
    pub code: Option<i32>,
    pub message: String,
}

impl GatewayError {
    pub fn kind(&self) -> GatewayFailure {
        match self.code.map(GatewayExit::from_code) {
            None | Some(Some(GatewayExit::Unreachable)) => GatewayFailure::Unavailable,
            Some(Some(GatewayExit::Usage | GatewayExit::Config)) => GatewayFailure::Refused,
            Some(_) => GatewayFailure::Other,
        }
    }

    fn shape(command: &str, message: String) -> Self {
        Self {
            command: command.into(),
            code: Some(GatewayExit::Ok.code()),
            message,
        }
    }
}

impl From<GatewayError> for HostError {
    fn from(e: GatewayError) -> Self {
        HostError::Agent {
            command: e.command,
            message: e.message,
        }
    }
}

type Result<T> = std::result::Result<T, GatewayError>;

/// `--flag=value`, one argv word.
fn flag(name: &str, value: &str) -> String {
    format!("--{name}={value}")
}

/// How to call the agent.
#[derive(Debug, Clone)]
pub struct GithubGateway {
    pub path: std::path::PathBuf,
    pub config: Option<std::path::PathBuf>,
    pub timeout: Duration,
    pub context: String,
}

/// What one invocation printed.
struct Output {
    code: i32,
    stdout: String,
    /// stdout as bytes (`file`).
    raw: Vec<u8>,
    stderr: String,
}

/// A check run to create (on a commit, under a name) or to update (by GitHub's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckRunTarget {
    Create { sha: String, name: String },
    Update { id: u64 },
}

/// A button on a check run (`--action=IDENTIFIER:LABEL:DESCRIPTION`, contracts §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunAction {
    pub identifier: String,
    pub label: String,
    pub description: String,
}

/// A check run's `output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunOutput {
    pub title: String,
    pub summary: String,
    pub text: Option<String>,
}

/// One annotation of a check run's output (`--annotation=JSON`, contracts §5): GitHub's field
/// names; the host checks GitHub's limits before it builds one (the agent refuses, never repairs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckRunAnnotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    /// `notice`, `warning` or `failure`.
    pub annotation_level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub message: String,
}

/// One `sdci-agent check-run` call. The host bounds every field to §5's limits before it builds
/// one (the agent refuses, never repairs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunRequest {
    pub repo: String,
    pub target: CheckRunTarget,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    /// With `completed` only.
    pub conclusion: Option<String>,
    pub details_url: Option<String>,
    pub external_id: Option<String>,
    /// RFC 3339 UTC.
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub output: Option<CheckRunOutput>,
    /// `None`: the actions stay as they are; `Some(empty)`: `--no-actions`.
    pub actions: Option<Vec<CheckRunAction>>,
    /// At most 50 (GitHub's per-request limit); they need an `output`.
    pub annotations: Vec<CheckRunAnnotation>,
}

impl CheckRunRequest {
    /// The argv words after `check-run`, each data argument one `--flag=value` word.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["check-run".to_owned(), flag("repo", &self.repo)];
        match &self.target {
            CheckRunTarget::Create { sha, name } => {
                a.push(flag("sha", sha));
                a.push(flag("name", name));
            }
            CheckRunTarget::Update { id } => a.push(flag("id", &id.to_string())),
        }
        a.push(flag("status", &self.status));
        let optional = [
            ("conclusion", &self.conclusion),
            ("details-url", &self.details_url),
            ("external-id", &self.external_id),
            ("started-at", &self.started_at),
            ("completed-at", &self.completed_at),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                a.push(flag(name, v));
            }
        }
        if let Some(o) = &self.output {
            a.push(flag("title", &o.title));
            a.push(flag("summary", &o.summary));
            if let Some(t) = &o.text {
                a.push(flag("text", t));
            }
        }
        for x in &self.annotations {
            // Serializing a struct of strings and numbers cannot fail.
            if let Ok(json) = serde_json::to_string(x) {
                a.push(flag("annotation", &json));
            }
        }
        match &self.actions {
            None => {}
            Some(list) if list.is_empty() => a.push("--no-actions".into()),
            Some(list) => {
                for x in list {
                    a.push(flag(
                        "action",
                        &format!("{}:{}:{}", x.identifier, x.label, x.description),
                    ));
                }
            }
        }
        a
    }
}

/// A user's permission on a repository (`sdci-agent permission`, contracts §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Admin,
    Maintain,
    Write,
    Triage,
    Read,
    None,
}

impl Permission {
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "admin" => Self::Admin,
            "maintain" => Self::Maintain,
            "write" => Self::Write,
            "triage" => Self::Triage,
            "read" => Self::Read,
            "none" => Self::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Maintain => "maintain",
            Self::Write => "write",
            Self::Triage => "triage",
            Self::Read => "read",
            Self::None => "none",
        }
    }

    /// Write access: `admin`, `maintain` or `write` (contracts §5).
    pub fn can_write(self) -> bool {
        matches!(self, Self::Admin | Self::Maintain | Self::Write)
    }
}

/// `permission`'s answers, kept for [`PermissionCache::TTL`]: a burst of re-run clicks asks
/// GitHub once, and a revoked access counts again within a minute.
#[derive(Debug, Default)]
pub struct PermissionCache {
    entries: std::sync::Mutex<
        std::collections::HashMap<(String, String), (std::time::Instant, Permission)>,
    >,
}

impl PermissionCache {
    pub const TTL: Duration = Duration::from_secs(60);

    /// `login`'s permission on `repo`, from the cache or the gateway. Failures are not cached.
    pub async fn get(&self, gw: &GithubGateway, repo: &str, login: &str) -> Result<Permission> {
        let key = (repo.to_owned(), login.to_owned());
        let now = std::time::Instant::now();
        {
            let mut m = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.retain(|_, (at, _)| now.duration_since(*at) < Self::TTL);
            if let Some((_, p)) = m.get(&key) {
                return Ok(*p);
            }
        }
        let p = gw.permission(repo, login).await?;
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, (now, p));
        Ok(p)
    }
}

impl GithubGateway {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            path: cfg.agent.path.clone(),
            config: cfg.agent.config.clone(),
            timeout: Duration::from_secs(cfg.agent.timeout_secs),
            context: cfg.agent.status_context.clone(),
        }
    }

    async fn run(&self, args: &[String]) -> Result<Output> {
        self.run_with_input(args, None).await
    }

    /// Like `run`, with `input` written to the agent's stdin (a secret that must not be in argv).
    async fn run_with_input(&self, args: &[String], input: Option<&Secret>) -> Result<Output> {
        let command = args.first().cloned().unwrap_or_default();
        let failed = |message: String| GatewayError {
            command: command.clone(),
            code: None,
            message,
        };
        let mut cmd = Command::new(&self.path);
        if let Some(c) = &self.config {
            cmd.arg(flag("config", &c.to_string_lossy()));
        }
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            failed(format!(
                "cannot start {}: {e}; check agent.path in the host config",
                self.path.display()
            ))
        })?;
        if let (Some(secret), Some(mut stdin)) = (input, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            let line = format!("{}\n", secret.expose());
            // A failed write shows as the agent's usage error (no token given).
            let _ = tokio::time::timeout(self.timeout, stdin.write_all(line.as_bytes())).await;
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| failed(format!("no answer within {:?}; killed", self.timeout)))?
            .map_err(|e| failed(e.to_string()))?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            raw: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    fn fail(command: &str, out: &Output) -> GatewayError {
        let mut stderr: String = out.stderr.chars().take(500).collect();
        if stderr.is_empty() {
            stderr = "(no message)".into();
        }
        GatewayError {
            command: command.into(),
            // A signal (no exit code) counts as unreachable, contracts §5.
            code: (out.code >= 0).then_some(out.code),
            message: format!("exit code {}: {stderr}", out.code),
        }
    }

    /// `sdci-agent status`.
    pub async fn status(
        &self,
        repo: &str,
        sha: &str,
        state: &str,
        description: &str,
        target_url: &str,
    ) -> Result<()> {
        let out = self
            .run(&[
                "status".into(),
                flag("repo", repo),
                flag("sha", sha),
                flag("state", state),
                flag("description", description),
                flag("target-url", target_url),
                flag("context", &self.context),
            ])
            .await?;
        if out.code == GatewayExit::Ok.code() {
            Ok(())
        } else {
            Err(Self::fail("status", &out))
        }
    }

    /// `sdci-agent revoke --token-file -`: revokes an installation token (handed over on stdin,
    /// never argv). An already revoked or expired token is success.
    pub async fn revoke(&self, token: &Secret) -> Result<()> {
        let out = self
            .run_with_input(&["revoke".into(), flag("token-file", "-")], Some(token))
            .await?;
        if out.code == GatewayExit::Ok.code() {
            Ok(())
        } else {
            Err(Self::fail("revoke", &out))
        }
    }

    /// `sdci-agent token`: a short-lived installation token, [`JOB_TOKEN_PERMISSIONS`]
    /// (`contents: read`) on that one repository.
    pub async fn token(&self, repo: &str) -> Result<Secret> {
        let out = self
            .run(&[
                "token".into(),
                flag("repo", repo),
                flag("permissions", JOB_TOKEN_PERMISSIONS),
            ])
            .await?;
        if out.code != GatewayExit::Ok.code() {
            return Err(Self::fail("token", &out));
        }
        let t = MintedToken::from_json(out.stdout.trim()).map_err(|e| {
            GatewayError::shape(
                "token",
                format!("unexpected output (not {{\"token\":...}}): {e}"),
            )
        })?;
        Ok(t.token)
    }

    /// `sdci-agent ci-config`: `Ok(Some(version))`, `Ok(None)` when the commit names none
    /// (exit 3), an error otherwise.
    pub async fn ci_config(&self, repo: &str, sha: &str) -> Result<Option<String>> {
        let out = self
            .run(&["ci-config".into(), flag("repo", repo), flag("sha", sha)])
            .await?;
        match GatewayExit::from_code(out.code) {
            Some(GatewayExit::Ok) => {
                let v = out.stdout.trim().to_owned();
                if v.is_empty() || v.len() > 32 || v.chars().any(|c| c.is_whitespace()) {
                    return Err(GatewayError::shape(
                        "ci-config",
                        format!("unexpected version {v:?}"),
                    ));
                }
                Ok(Some(v))
            }
            Some(GatewayExit::NoCiConfig) => Ok(None),
            _ => Err(Self::fail("ci-config", &out)),
        }
    }

    /// `sdci-agent head --repo R --branch B`: the branch's head commit.
    pub async fn head(&self, repo: &str, branch: &str) -> Result<sdci_protocol::CommitSha> {
        let out = self
            .run(&["head".into(), flag("repo", repo), flag("branch", branch)])
            .await?;
        if out.code != GatewayExit::Ok.code() {
            return Err(Self::fail("head", &out));
        }
        let sha = out.stdout.trim();
        sha.parse().map_err(|e| {
            GatewayError::shape("head", format!("printed {sha:?}, not a commit id: {e}"))
        })
    }

    /// `sdci-agent check-run`: creates or updates a check run; GitHub's id of it.
    pub async fn check_run(&self, req: &CheckRunRequest) -> Result<u64> {
        let out = self.run(&req.args()).await?;
        if out.code != GatewayExit::Ok.code() {
            return Err(Self::fail("check-run", &out));
        }
        #[derive(serde::Deserialize)]
        struct Id {
            id: u64,
        }
        let line = out.stdout.trim();
        serde_json::from_str::<Id>(line).map(|i| i.id).map_err(|e| {
            GatewayError::shape(
                "check-run",
                format!(
                    "printed {:?}, not {{\"id\":N}}: {e}",
                    line.chars().take(200).collect::<String>()
                ),
            )
        })
    }

    /// `sdci-agent permission`: `login`'s permission on `repo` (see [`PermissionCache`]).
    pub async fn permission(&self, repo: &str, login: &str) -> Result<Permission> {
        let out = self
            .run(&["permission".into(), flag("repo", repo), flag("user", login)])
            .await?;
        if out.code != GatewayExit::Ok.code() {
            return Err(Self::fail("permission", &out));
        }
        let word = out.stdout.trim();
        Permission::parse(word).ok_or_else(|| {
            GatewayError::shape(
                "permission",
                format!(
                    "printed {:?}, not a permission",
                    word.chars().take(40).collect::<String>()
                ),
            )
        })
    }

    /// `sdci-agent react`: a reaction (`+1`, `confused`, …) on an issue or pull-request comment.
    pub async fn react(&self, repo: &str, comment_id: u64, content: &str) -> Result<()> {
        let out = self
            .run(&[
                "react".into(),
                flag("repo", repo),
                flag("comment-id", &comment_id.to_string()),
                flag("content", content),
            ])
            .await?;
        if out.code == GatewayExit::Ok.code() {
            Ok(())
        } else {
            Err(Self::fail("react", &out))
        }
    }

    /// `sdci-agent pull-head`: pull request `number`'s head as GitHub has it now; `Ok(None)`
    /// when GitHub has no such pull request (exit 3).
    pub async fn pull_head(&self, repo: &str, number: u64) -> Result<Option<PullHead>> {
        let out = self
            .run(&[
                "pull-head".into(),
                flag("repo", repo),
                flag("number", &number.to_string()),
            ])
            .await?;
        match GatewayExit::from_code(out.code) {
            Some(GatewayExit::Ok) => {}
            Some(GatewayExit::NoCiConfig) => return Ok(None),
            _ => return Err(Self::fail("pull-head", &out)),
        }
        let line = out.stdout.trim();
        serde_json::from_str(line).map(Some).map_err(|e| {
            GatewayError::shape(
                "pull-head",
                format!(
                    "printed {:?}, not a pull request's head: {e}",
                    line.chars().take(200).collect::<String>()
                ),
            )
        })
    }

    /// `sdci-agent file`: the bytes of `path` at `sha`; `Ok(None)` when there is no such file
    /// (exit 3). A file over `max_bytes` is a refusal (exit 78).
    pub async fn file(
        &self,
        repo: &str,
        sha: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>> {
        let out = self
            .run(&[
                "file".into(),
                flag("repo", repo),
                flag("sha", sha),
                flag("path", path),
                flag("max-bytes", &max_bytes.to_string()),
            ])
            .await?;
        match GatewayExit::from_code(out.code) {
            Some(GatewayExit::Ok) => Ok(Some(out.raw)),
            Some(GatewayExit::NoCiConfig) => Ok(None),
            _ => Err(Self::fail("file", &out)),
        }
    }

    /// `sdci-agent --version`: proves the configured binary runs (for `check-config`).
    pub async fn version(&self) -> Result<String> {
        let out = self.run(&["--version".into()]).await?;
        if out.code != GatewayExit::Ok.code() {
            return Err(Self::fail("--version", &out));
        }
        Ok(out.stdout.trim().to_owned())
    }
}

/// Makes the child die with the host: `PR_SET_PDEATHSIG` = `SIGKILL`, set between fork and exec.
/// (Linux delivers it when the thread that spawned the child ends; tokio's worker threads live
/// as long as the runtime, i.e. the host.)
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) and
    // getppid(2), both async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The host died between fork and prctl: do not outlive it.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("sdci-host exited"));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_looks_like_an_option_stays_one_word() {
        assert_eq!(flag("description", "--x"), "--description=--x");
        assert_eq!(flag("description", "a = b"), "--description=a = b");
    }

    #[test]
    fn a_check_run_call_is_one_word_per_value_and_an_empty_action_list_clears_the_buttons() {
        let mut req = CheckRunRequest {
            repo: "o/r".into(),
            target: CheckRunTarget::Create {
                sha: "a".repeat(40),
                name: "sdci / Qubes 4.2".into(),
            },
            status: "completed".into(),
            conclusion: Some("failure".into()),
            details_url: Some("http://h/jobs/x".into()),
            external_id: Some("x".into()),
            started_at: None,
            completed_at: Some("2026-12-01T10:00:00Z".into()),
            output: Some(CheckRunOutput {
                title: "--title".into(),
                summary: "a\n| b |".into(),
                text: None,
            }),
            actions: Some(vec![CheckRunAction {
                identifier: "rerun".into(),
                label: "Re-run".into(),
                description: "Run this commit again".into(),
            }]),
            annotations: vec![CheckRunAnnotation {
                path: "tests/test_vms.py".into(),
                start_line: 42,
                end_line: 42,
                annotation_level: "failure".into(),
                title: Some("a: b".into()),
                message: "assert 1 == 2".into(),
            }],
        };
        let a = req.args();
        assert_eq!(a[0], "check-run");
        assert!(a.contains(&"--name=sdci / Qubes 4.2".to_owned()));
        assert!(a.contains(&"--title=--title".to_owned()));
        assert!(a.contains(&"--summary=a\n| b |".to_owned()));
        assert!(a.contains(&"--action=rerun:Re-run:Run this commit again".to_owned()));
        assert!(a.contains(
            &r#"--annotation={"path":"tests/test_vms.py","start_line":42,"end_line":42,"annotation_level":"failure","title":"a: b","message":"assert 1 == 2"}"#
                .to_owned()
        ));
        assert!(!a.iter().any(|w| w.starts_with("--started-at")));
        req.target = CheckRunTarget::Update { id: 9 };
        req.actions = Some(Vec::new());
        let a = req.args();
        assert!(a.contains(&"--id=9".to_owned()) && !a.iter().any(|w| w.starts_with("--sha")));
        assert_eq!(a.last().map(String::as_str), Some("--no-actions"));
        req.actions = None;
        assert!(!req.args().iter().any(|w| w.contains("action")));
    }

    #[test]
    fn write_access_is_admin_maintain_or_write() {
        for (word, write) in [
            ("admin", true),
            ("maintain", true),
            ("write", true),
            ("triage", false),
            ("read", false),
            ("none", false),
        ] {
            let p = Permission::parse(word).unwrap();
            assert_eq!((p.as_str(), p.can_write()), (word, write));
        }
        assert_eq!(Permission::parse("pull"), None);
    }

    #[test]
    fn failures_say_who_must_act() {
        let e = |code| GatewayError {
            command: "status".into(),
            code,
            message: String::new(),
        };
        assert_eq!(e(None).kind(), GatewayFailure::Unavailable);
        assert_eq!(e(Some(2)).kind(), GatewayFailure::Unavailable);
        assert_eq!(e(Some(64)).kind(), GatewayFailure::Refused);
        assert_eq!(e(Some(78)).kind(), GatewayFailure::Refused);
        assert_eq!(e(Some(3)).kind(), GatewayFailure::Other);
    }
}
