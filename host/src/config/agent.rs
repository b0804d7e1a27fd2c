//! `[agent]`: how the host runs `sdci-agent`, its only way to GitHub (the GitHub gateway), and
//! what it reports there: commit statuses (contracts §8) and, in GitHub App mode, check runs
//! (contracts §10).
//!
//! Invariants (checked at load): check runs need `github_app` (GitHub accepts check runs from
//! an App only); without check runs every job posts commit statuses (PAT mode always does);
//! `check_name` makes a name GitHub accepts for every version.

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
    /// Read each commit's matrix file (`sdci-agent file`, issue 20), else ask `sdci-agent
    /// ci-config` for its Qubes version; `false`: every job runs `default_version`, no matrix.
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
    /// One GitHub check run per job (contracts §10); default: `github_app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_runs: Option<bool>,
    /// Commit statuses beside check runs (contracts §8); without check runs they are always
    /// posted. Default `true`, so turning check runs on never removes a context that branch
    /// protection may require.
    #[serde(default = "super::yes")]
    pub commit_statuses: bool,
    /// The check run's name; `{version}` is replaced by the job's Qubes version. Branch
    /// protection can require it.
    #[serde(default = "default_check_name")]
    pub check_name: String,
    /// The check run's name and the status context of a matrix cell's job (issue 20): `{cell}`
    /// is replaced by the cell's name (`4.3 / dev`, `4.3 / upgrade-from-prod`).
    #[serde(default = "default_cell_name")]
    pub cell_name: String,
}

/// GitHub's limit on a check run's name (contracts §5).
pub const MAX_CHECK_NAME: usize = 255;

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
fn default_cell_name() -> String {
    "sdci / {cell}".into()
}
fn default_check_name() -> String {
    "sdci / Qubes {version}".into()
}

impl AgentConfig {
    /// Whether jobs get check runs.
    pub fn check_runs_on(&self) -> bool {
        self.check_runs.unwrap_or(self.github_app)
    }

    /// Whether jobs post commit statuses: always without check runs.
    pub fn commit_statuses_on(&self) -> bool {
        !self.check_runs_on() || self.commit_statuses
    }

    /// The check run's name for a job of Qubes `version`.
    pub fn check_name_for(&self, version: &str) -> String {
        self.check_name.replace("{version}", version)
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if self.check_runs == Some(true) && !self.github_app {
            return Err(
                "agent.check_runs = true needs agent.github_app = true: GitHub accepts \
                        check runs from a GitHub App only (set github_app = true with the App's \
                        credentials in agent.toml, or remove check_runs to post commit statuses)"
                    .into(),
            );
        }
        if !self.commit_statuses && !self.check_runs_on() {
            return Err(
                "agent.commit_statuses = false needs check runs (agent.github_app = \
                        true): without them commit statuses are the only report on GitHub"
                    .into(),
            );
        }
        let name = self.check_name_for("4.2");
        if name.trim().is_empty()
            || name.chars().count() > MAX_CHECK_NAME - 32
            || name.chars().any(char::is_control)
        {
            return Err(format!(
                "agent.check_name must be 1 to {} characters without control characters \
                 (default \"sdci / Qubes {{version}}\")",
                MAX_CHECK_NAME - 32
            ));
        }
        if !self.cell_name.contains("{cell}")
            || self.cell_name.chars().count() > MAX_CHECK_NAME - 64
            || self.cell_name.chars().any(char::is_control)
        {
            return Err(format!(
                "agent.cell_name must contain {{cell}}, have at most {} characters and no \
                 control characters (default \"sdci / {{cell}}\")",
                MAX_CHECK_NAME - 64
            ));
        }
        if self.timeout_secs == 0 {
            return Err("agent.timeout_secs must be at least 1 (default 120)".into());
        }
        if self.status_context.trim().is_empty() {
            return Err("agent.status_context must not be empty (default \"sd-ci-runner\")".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn agent(text: &str) -> Result<super::AgentConfig, String> {
        Config::parse(&format!("[agent]\n{text}"), Path::new("t"))
            .map(|c| c.agent)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn check_runs_follow_github_app_and_pat_mode_always_posts_statuses() {
        let pat = agent("").unwrap();
        assert!(!pat.check_runs_on() && pat.commit_statuses_on());
        let app = agent("github_app = true").unwrap();
        assert!(app.check_runs_on() && app.commit_statuses_on());
        let checks_only = agent("github_app = true\ncommit_statuses = false").unwrap();
        assert!(checks_only.check_runs_on() && !checks_only.commit_statuses_on());
        let statuses_only = agent("github_app = true\ncheck_runs = false").unwrap();
        assert!(!statuses_only.check_runs_on() && statuses_only.commit_statuses_on());
        assert_eq!(app.check_name_for("4.3"), "sdci / Qubes 4.3");
    }

    #[test]
    fn check_runs_without_an_app_or_no_report_at_all_are_load_errors_that_say_what_to_do() {
        let e = agent("check_runs = true").unwrap_err();
        assert!(e.contains("github_app = true"), "{e}");
        let e = agent("commit_statuses = false").unwrap_err();
        assert!(e.contains("github_app"), "{e}");
        let e = agent("github_app = true\ncheck_name = \" \"").unwrap_err();
        assert!(e.contains("check_name"), "{e}");
    }
}
