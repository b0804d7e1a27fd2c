//! GitHub, through the `sdci-agent` binary: the host never calls the GitHub API itself
//! (CONTRACTS.md §5). `status`, `token`, `revoke`, `head` and `ci-config`, each a subprocess with a
//! timeout, answered by exit code (protocol's [`GatewayExit`] table) and stdout.
//!
//! Invariants: every invocation has a timeout and is killed at it (and with the host); the token
//! the agent prints is wrapped in a [`Secret`] at once and never logged.

use crate::config::Config;
use crate::{HostError, Result};
use sdci_protocol::{GatewayExit, MintedToken, Secret};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

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
    stderr: String,
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

    async fn run(&self, args: &[&str]) -> Result<Output> {
        self.run_with_input(args, None).await
    }

    /// Like `run`, with `input` written to the agent's stdin (a secret that must not be in argv).
    async fn run_with_input(&self, args: &[&str], input: Option<&Secret>) -> Result<Output> {
        let command = args.first().copied().unwrap_or("").to_owned();
        let mut cmd = Command::new(&self.path);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
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
        let mut child = cmd.spawn().map_err(|e| HostError::Agent {
            command: command.clone(),
            message: format!(
                "cannot start {}: {e}; check agent.path in the host config",
                self.path.display()
            ),
        })?;
        if let (Some(secret), Some(mut stdin)) = (input, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            let line = format!("{}\n", secret.expose());
            // A failed write shows as the agent's usage error (no token given).
            let _ = tokio::time::timeout(self.timeout, stdin.write_all(line.as_bytes())).await;
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| HostError::Agent {
                command: command.clone(),
                message: format!("no answer within {:?}; killed", self.timeout),
            })?
            .map_err(|e| HostError::Agent {
                command: command.clone(),
                message: e.to_string(),
            })?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    fn fail(command: &str, out: &Output) -> HostError {
        let mut stderr: String = out.stderr.chars().take(500).collect();
        if stderr.is_empty() {
            stderr = "(no message)".into();
        }
        HostError::Agent {
            command: command.into(),
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
                "status",
                "--repo",
                repo,
                "--sha",
                sha,
                "--state",
                state,
                "--description",
                description,
                "--target-url",
                target_url,
                "--context",
                &self.context,
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
            .run_with_input(&["revoke", "--token-file", "-"], Some(token))
            .await?;
        if out.code == GatewayExit::Ok.code() {
            Ok(())
        } else {
            Err(Self::fail("revoke", &out))
        }
    }

    /// `sdci-agent token`: a short-lived installation token, `contents: read` on that one
    /// repository (the agent's default for job tokens).
    pub async fn token(&self, repo: &str) -> Result<Secret> {
        let out = self.run(&["token", "--repo", repo]).await?;
        if out.code != GatewayExit::Ok.code() {
            return Err(Self::fail("token", &out));
        }
        let t = MintedToken::from_json(out.stdout.trim()).map_err(|e| HostError::Agent {
            command: "token".into(),
            message: format!("unexpected output (not {{\"token\":...}}): {e}"),
        })?;
        Ok(t.token)
    }

    /// `sdci-agent ci-config`: `Ok(Some(version))`, `Ok(None)` when the commit names none
    /// (exit 3), an error otherwise.
    pub async fn ci_config(&self, repo: &str, sha: &str) -> Result<Option<String>> {
        let out = self
            .run(&["ci-config", "--repo", repo, "--sha", sha])
            .await?;
        match GatewayExit::from_code(out.code) {
            Some(GatewayExit::Ok) => {
                let v = out.stdout.trim().to_owned();
                if v.is_empty() || v.len() > 32 || v.chars().any(|c| c.is_whitespace()) {
                    return Err(HostError::Agent {
                        command: "ci-config".into(),
                        message: format!("unexpected version {v:?}"),
                    });
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
            .run(&["head", "--repo", repo, "--branch", branch])
            .await?;
        if out.code != GatewayExit::Ok.code() {
            return Err(Self::fail("head", &out));
        }
        let sha = out.stdout.trim();
        sha.parse().map_err(|e| HostError::Agent {
            command: "head".into(),
            message: format!("printed {sha:?}, not a commit id: {e}"),
        })
    }

    /// `sdci-agent --version`: proves the configured binary runs (for `check-config`).
    pub async fn version(&self) -> Result<String> {
        let out = self.run(&["--version"]).await?;
        if out.code != GatewayExit::Ok.code() {
            return Err(Self::fail("--version", &out));
        }
        Ok(out.stdout.trim().to_owned())
    }
}
