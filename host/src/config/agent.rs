//! `[agent]`: how the host runs `sdci-agent`, its only way to GitHub (the GitHub gateway).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The `sdci-agent` binary the host runs for statuses, tokens and `ci-config`.
    #[serde(default = "default_agent_path")]
    pub path: PathBuf,
    /// Passed as `--config` to the agent; `None` lets the agent find its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// Commit-status context.
    #[serde(default = "default_context")]
    pub status_context: String,
    /// GitHub App mode: fetch a short-lived token (`sdci-agent token`) for each job file.
    #[serde(default)]
    pub github_app: bool,
    /// Ask `sdci-agent ci-config` for each commit's Qubes version (else `default_version`).
    #[serde(default = "super::yes")]
    pub resolve_version: bool,
    /// GitHub REST API base written into job files.
    #[serde(default = "default_github_api")]
    pub github_api: String,
    /// Clone URL written into job files instead of the webhook's (a mirror, or a local path in
    /// tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_url_override: Option<String>,
    /// Seconds one agent invocation may take before it is killed.
    #[serde(default = "default_agent_timeout")]
    pub timeout_secs: u64,
}

fn default_agent_path() -> PathBuf {
    PathBuf::from("/usr/local/bin/sdci-agent")
}
fn default_context() -> String {
    "sd-ci-runner".into()
}
fn default_github_api() -> String {
    "https://api.github.com".into()
}
fn default_agent_timeout() -> u64 {
    120
}

impl AgentConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.timeout_secs == 0 {
            return Err("agent.timeout_secs must be at least 1 (default 120)".into());
        }
        if self.status_context.trim().is_empty() {
            return Err("agent.status_context must not be empty (default \"sd-ci-runner\")".into());
        }
        Ok(())
    }
}
