//! `[webhook]`: which GitHub deliveries become jobs.
//!
//! Invariants: `serve` refuses an empty `repos` ([`WebhookConfig::require_repos`]: with a
//! GitHub App installable elsewhere, "any repository" would let anyone queue jobs); a fork's
//! label route needs the logins allowed to approve with it (`fork_approvers`), because an
//! approval is only as good as the person who gave it.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// File holding the webhook secret (required for `serve`; a missing file is an error).
    #[serde(default = "default_webhook_secret_file")]
    pub secret_file: PathBuf,
    /// Largest accepted request body, bytes; larger deliveries get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Repositories (`owner/name`) accepted; `serve` requires at least one.
    #[serde(default)]
    pub repos: Vec<String>,
    /// Branch patterns for `push` (`*` matches any run of characters).
    #[serde(default = "default_branches")]
    pub branches: Vec<String>,
    /// Tag patterns for `push`; empty ignores tag pushes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether `pull_request` events (opened, synchronize, reopened) create jobs.
    #[serde(default = "super::yes")]
    pub pull_requests: bool,
    /// GitHub logins whose pull requests from forks are tested.
    #[serde(default)]
    pub fork_allow_users: Vec<String>,
    /// A label that approves the current head commit of a fork's pull request for one test;
    /// `None` disables the label route. Each new head commit needs a new approval (remove and
    /// add the label again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_label: Option<String>,
    /// GitHub logins whose adding of `fork_label` approves a commit (the `labeled` event's
    /// `sender`); required when `fork_label` is set. Anyone else's label is ignored.
    #[serde(default)]
    pub fork_approvers: Vec<String>,
    /// Pull-request labels that run matrix cells (issue 20) start with this: `sdci:all`, a
    /// version (`sdci:4.3`), an environment or scenario, or parts joined by `/`
    /// (`sdci:4.3/dev`). Adding one queues its cells for the head, removing it cancels them.
    /// The commit's own `labels:` triggers work besides. `""` turns the host's labels off.
    #[serde(default = "default_run_label_prefix")]
    pub run_label_prefix: String,
    /// Whether comments `/sdci run|retry|cancel` on pull requests act (for users with write
    /// access only).
    #[serde(default = "super::yes")]
    pub comment_commands: bool,
}

fn default_webhook_secret_file() -> PathBuf {
    PathBuf::from("/etc/sdci/webhook-secret")
}
fn default_max_body() -> usize {
    5 * 1024 * 1024
}
fn default_run_label_prefix() -> String {
    "sdci:".into()
}
fn default_branches() -> Vec<String> {
    vec!["*".into()]
}

impl WebhookConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        for r in &self.repos {
            r.parse::<sdci_protocol::RepoName>()
                .map_err(|e| format!("webhook.repos: {e}; write owner/name"))?;
        }
        if self.max_body_bytes == 0 {
            return Err("webhook.max_body_bytes must be at least 1 (default 5242880)".into());
        }
        if self.fork_label.is_some() && self.fork_approvers.is_empty() {
            return Err(
                "webhook.fork_label needs webhook.fork_approvers: the GitHub logins whose label \
                 approves a fork's commit (anyone who can label would otherwise approve)"
                    .into(),
            );
        }
        if self.run_label_prefix.chars().count() > 40
            || self.run_label_prefix.chars().any(char::is_control)
        {
            return Err(
                "webhook.run_label_prefix must be at most 40 characters (default \"sdci:\")".into(),
            );
        }
        if self.fork_label.as_deref() == Some("") {
            return Err("webhook.fork_label must not be empty".into());
        }
        Ok(())
    }

    /// `serve` needs the repositories it accepts (an empty list would accept any repository an
    /// App is installed on).
    pub fn require_repos(&self) -> Result<(), String> {
        if self.repos.is_empty() {
            return Err(
                "webhook.repos is empty: list the repositories (owner/name) this host \
                 tests, e.g. repos = [\"freedomofpress/securedrop-workstation\"]"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether jobs of `repo` are accepted (an empty list accepts none).
    pub fn allows_repo(&self, repo: &str) -> bool {
        self.repos.iter().any(|r| r == repo)
    }
}
