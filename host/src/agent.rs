//! Runs the `sdci-agent` binary, the host's only way to GitHub (contracts §5), and drains the
//! status outbox through it.
//!
//! Invariants: every invocation has a timeout and is killed at it; the token the agent prints is
//! wrapped in a [`Secret`] at once and never logged; a failed status post is recorded on the
//! outbox row and retried later (on the next wake-up or reconciler tick) — the job's outcome is
//! already durable in the store, so nothing is lost by a failed post.

use crate::config::Config;
use crate::store::Store;
use crate::{HostError, Result};
use sdci_protocol::job::Secret;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::Notify;

/// How to call the agent.
#[derive(Debug, Clone)]
pub struct Agent {
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

impl Agent {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            path: cfg.agent.path.clone(),
            config: cfg.agent.config.clone(),
            timeout: Duration::from_secs(cfg.agent.timeout_secs),
            context: cfg.agent.status_context.clone(),
        }
    }

    async fn run(&self, args: &[&str]) -> Result<Output> {
        let command = args.first().copied().unwrap_or("").to_owned();
        let mut cmd = Command::new(&self.path);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| HostError::Agent {
            command: command.clone(),
            message: format!(
                "cannot start {}: {e}; check agent.path in the host config",
                self.path.display()
            ),
        })?;
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
        if out.code == 0 {
            Ok(())
        } else {
            Err(Self::fail("status", &out))
        }
    }

    /// `sdci-agent token`: a short-lived installation token.
    pub async fn token(&self, repo: &str) -> Result<Secret> {
        #[derive(serde::Deserialize)]
        struct Token {
            token: String,
        }
        let out = self.run(&["token", "--repo", repo]).await?;
        if out.code != 0 {
            return Err(Self::fail("token", &out));
        }
        let t: Token = serde_json::from_str(out.stdout.trim()).map_err(|e| HostError::Agent {
            command: "token".into(),
            message: format!("unexpected output (not {{\"token\":...}}): {e}"),
        })?;
        Ok(Secret::new(t.token))
    }

    /// `sdci-agent ci-config`: `Ok(Some(version))`, `Ok(None)` when the commit names none
    /// (exit 3), an error otherwise.
    pub async fn ci_config(&self, repo: &str, sha: &str) -> Result<Option<String>> {
        let out = self
            .run(&["ci-config", "--repo", repo, "--sha", sha])
            .await?;
        match out.code {
            0 => {
                let v = out.stdout.trim().to_owned();
                if v.is_empty() || v.len() > 32 || v.chars().any(|c| c.is_whitespace()) {
                    return Err(HostError::Agent {
                        command: "ci-config".into(),
                        message: format!("unexpected version {v:?}"),
                    });
                }
                Ok(Some(v))
            }
            3 => Ok(None),
            _ => Err(Self::fail("ci-config", &out)),
        }
    }
}

/// Posts every unposted status in the outbox, in order. Failures stay in the outbox.
pub async fn drain_statuses(store: &Store, agent: &Agent, public_url: &str) -> Result<usize> {
    let mut posted = 0;
    for s in store.unposted_statuses()? {
        let url = format!("{public_url}/jobs/{}", s.job_id);
        match agent
            .status(&s.repo, &s.sha, &s.state, &s.description, &url)
            .await
        {
            Ok(()) => {
                store.status_posted(s.id)?;
                posted += 1;
                tracing::info!(job = %s.job_id, state = %s.state, "status posted");
            }
            Err(e) => {
                tracing::warn!(job = %s.job_id, state = %s.state, error = %e,
                    "posting the status failed; it stays in the outbox and is retried");
                store.status_failed(s.id, &e.to_string())?;
            }
        }
    }
    Ok(posted)
}

/// The outbox worker: drains on every wake-up; the reconciler wakes it periodically too.
pub async fn status_worker(store: Arc<Store>, agent: Agent, public_url: String, wake: Arc<Notify>) {
    loop {
        if let Err(e) = drain_statuses(&store, &agent, &public_url).await {
            tracing::error!(error = %e, "status outbox");
        }
        wake.notified().await;
    }
}
