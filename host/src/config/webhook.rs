//! `[webhook]`: which GitHub deliveries become jobs.

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
    /// Repositories (`owner/name`) accepted; empty accepts any repository.
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
    /// A label that makes a fork's pull request testable; `None` disables the label route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_label: Option<String>,
}

fn default_webhook_secret_file() -> PathBuf {
    PathBuf::from("/etc/sdci/webhook-secret")
}
fn default_max_body() -> usize {
    5 * 1024 * 1024
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
        Ok(())
    }
}
