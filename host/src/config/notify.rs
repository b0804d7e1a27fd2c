//! `[notify]`: Slack messages from the host (never from a VM).

use crate::domain::JobState;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[notify]`: where and when to send Slack messages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// File holding the Slack incoming-webhook URL; absent disables notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_webhook_file: Option<PathBuf>,
    /// Which terminal outcomes are announced.
    #[serde(default = "default_outcomes")]
    pub outcomes: Vec<String>,
    /// Announce snapshot rotations (success and failure).
    #[serde(default = "super::yes")]
    pub rotation: bool,
    /// Tries per message before it is given up (logged).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Pause before the second try, milliseconds; doubled for each further try.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Seconds one POST to Slack may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Milliseconds between looks at the store for newly ended jobs.
    #[serde(default = "default_sweep")]
    pub sweep_ms: u64,
}

fn default_outcomes() -> Vec<String> {
    vec!["success".into(), "failure".into(), "error".into()]
}
fn default_attempts() -> u32 {
    4
}
fn default_backoff() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    10
}
fn default_sweep() -> u64 {
    2000
}

impl Default for NotifyConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field of [notify] has a default")
    }
}

impl NotifyConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let names: Vec<&str> = JobState::TERMINAL.iter().map(|s| s.as_str()).collect();
        for o in &self.outcomes {
            if !names.contains(&o.as_str()) {
                return Err(format!(
                    "notify.outcomes: unknown outcome {o:?}; use some of {names:?}"
                ));
            }
        }
        if self.attempts == 0 {
            return Err("notify.attempts must be at least 1".into());
        }
        Ok(())
    }

    /// The terminal states announced (validated at load, so every name parses).
    pub fn wanted(&self) -> Vec<JobState> {
        self.outcomes
            .iter()
            .filter_map(|o| JobState::parse(o))
            .filter(|s| s.is_terminal())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_outcomes_are_refused() {
        let mut c = NotifyConfig::default();
        assert!(c.validate().is_ok());
        c.outcomes = vec!["sucess".into()];
        assert!(c.validate().unwrap_err().contains("sucess"));
    }
}
