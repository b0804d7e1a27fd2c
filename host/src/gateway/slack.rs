//! Slack's incoming webhook: the messages (a finished job, a rotation's result) and the POST
//! with its retries. The outbox that decides *which* jobs are announced is
//! `orchestration::notifier`; this module only formats and sends.
//!
//! Invariants: the webhook URL is a secret, read from a file into a [`Secret`] and never logged
//! (errors name only the HTTP status or the kind of transport failure); text from commits and
//! notes is escaped for Slack (`&`, `<`, `>`), so a commit message cannot inject links or
//! mentions.

use crate::config::{read_secret, Config, NotifyConfig};
use crate::domain::CommitInfo;
use crate::{HostError, Result};
use sdci_protocol::Secret;
use std::time::Duration;

/// Everything one job message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNotice {
    pub outcome: String,
    pub reason: String,
    pub repo: String,
    pub sha: String,
    pub branch: Option<String>,
    pub commit: CommitInfo,
    /// From the first claim to the end (or from queueing, if it never ran).
    pub duration: Option<Duration>,
    pub note: Option<String>,
    pub log_url: String,
}

/// What one rotation did, for its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationNotice {
    pub version: String,
    /// What the pointer names: `golden snapshot`, or `scenario S snapshot` (issue 20).
    pub what: String,
    pub ok: bool,
    /// The snapshot taken (`update_<timestamp>`).
    pub snapshot: String,
    /// The golden snapshot before (and, on failure, still).
    pub previous: String,
    /// One line per VM: what happened.
    pub details: Vec<String>,
    pub duration: Duration,
}

/// Escapes text for Slack's mrkdwn (`&`, `<`, `>` are control characters there).
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `1h 02m 03s`, `4m 05s`, `12s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

fn reason_label(reason: &str) -> &str {
    match reason {
        "pull_request" => "pull request",
        other => other,
    }
}

fn emoji(outcome: &str) -> &'static str {
    match outcome {
        "success" => ":white_check_mark:",
        "failure" => ":x:",
        "canceled" => ":no_entry_sign:",
        _ => ":warning:",
    }
}

/// The Slack message (incoming-webhook JSON) for a finished job.
pub fn job_message(n: &JobNotice) -> serde_json::Value {
    let short = &n.sha[..n.sha.len().min(7)];
    let mut text = format!(
        "{} *{}*: {} of {}@{}",
        emoji(&n.outcome),
        slack_escape(&n.outcome),
        slack_escape(reason_label(&n.reason)),
        slack_escape(&n.repo),
        short
    );
    if let Some(b) = &n.branch {
        text.push_str(&format!(" ({})", slack_escape(b)));
    }
    text.push_str(&format!("\n`{short}`"));
    if let Some(a) = &n.commit.author {
        text.push_str(&format!(" by {}", slack_escape(a)));
    }
    if let Some(s) = &n.commit.subject {
        let s: String = s.chars().take(120).collect();
        text.push_str(&format!(": {}", slack_escape(&s)));
    }
    if let Some(note) = n.note.as_deref().filter(|s| !s.is_empty()) {
        text.push_str(&format!("\n{}", slack_escape(note)));
    }
    text.push('\n');
    if let Some(d) = n.duration {
        text.push_str(&format!("took {} · ", human_duration(d)));
    }
    text.push_str(&format!("<{}|log>", n.log_url));
    serde_json::json!({ "text": text })
}

/// The Slack message for a rotation's result.
pub fn rotation_message(n: &RotationNotice) -> serde_json::Value {
    let mut text = if n.ok {
        format!(
            ":camera_with_flash: *rotation ok*: Qubes {} {} is now {} (was {}), after {}",
            slack_escape(&n.version),
            slack_escape(&n.what),
            slack_escape(&n.snapshot),
            slack_escape(&n.previous),
            human_duration(n.duration)
        )
    } else {
        format!(
            ":warning: *rotation failed*: Qubes {} keeps {} {}; {} was not adopted",
            slack_escape(&n.version),
            slack_escape(&n.what),
            slack_escape(&n.previous),
            slack_escape(&n.snapshot)
        )
    };
    for d in &n.details {
        text.push_str(&format!("\n• {}", slack_escape(d)));
    }
    serde_json::json!({ "text": text })
}

/// Reads the webhook URL named in the configuration, if notifications are enabled.
pub fn webhook_url(cfg: &NotifyConfig) -> Result<Option<Secret>> {
    let Some(path) = &cfg.slack_webhook_file else {
        return Ok(None);
    };
    let url = read_secret(path, "Slack webhook URL")?;
    if !(url.expose().starts_with("https://") || url.expose().starts_with("http://")) {
        return Err(HostError::Config {
            path: path.clone(),
            message: "the Slack webhook file must hold an http(s) URL".into(),
        });
    }
    Ok(Some(url))
}

/// POSTs `payload` to the webhook, retrying with doubling backoff. `Err` holds the last error.
pub async fn post(
    cfg: &NotifyConfig,
    url: &Secret,
    payload: &serde_json::Value,
) -> std::result::Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_secs))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let mut delay = Duration::from_millis(cfg.backoff_ms);
    let mut last = String::new();
    for attempt in 1..=cfg.attempts.max(1) {
        match client.post(url.expose()).json(payload).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            // Never the URL itself (a secret) in messages: only the status or the error kind.
            Ok(r) => last = format!("Slack answered HTTP {}", r.status().as_u16()),
            Err(e) => {
                last = format!(
                    "sending to Slack failed ({})",
                    if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connection refused or unreachable"
                    } else {
                        "transport error"
                    }
                )
            }
        }
        tracing::warn!(attempt, error = %last, "Slack notification failed");
        if attempt < cfg.attempts {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(last)
}

/// Sends a rotation's result if notifications and `notify.rotation` are enabled. A failure is
/// logged and otherwise ignored.
pub async fn rotation_result(cfg: &Config, n: &RotationNotice) {
    if !cfg.notify.rotation {
        return;
    }
    let url = match webhook_url(&cfg.notify) {
        Ok(Some(u)) => u,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot notify Slack of the rotation");
            return;
        }
    };
    if let Err(e) = post(&cfg.notify, &url, &rotation_message(n)).await {
        tracing::error!(error = %e, version = %n.version, "giving up notifying the rotation");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> JobNotice {
        JobNotice {
            outcome: "failure".into(),
            reason: "pull_request".into(),
            repo: "freedomofpress/securedrop-workstation".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: Some("main".into()),
            commit: CommitInfo {
                author: Some("Ada <ada@example>".into()),
                subject: Some("Fix <@here> & more".into()),
            },
            duration: Some(Duration::from_secs(3723)),
            note: Some("a step failed".into()),
            log_url: "https://ci.example/jobs/0123456-ab".into(),
        }
    }

    #[test]
    fn a_job_message_says_outcome_reason_repo_commit_duration_and_log() {
        let m = job_message(&notice());
        let text = m["text"].as_str().unwrap();
        for want in [
            "*failure*",
            "pull request of freedomofpress/securedrop-workstation@0123456",
            "(main)",
            "by Ada &lt;ada@example&gt;",
            "Fix &lt;@here&gt; &amp; more",
            "took 1h 02m 03s",
            "<https://ci.example/jobs/0123456-ab|log>",
            "a step failed",
        ] {
            assert!(text.contains(want), "{want:?} missing in {text}");
        }
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human_duration(Duration::from_secs(12)), "12s");
        assert_eq!(human_duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(human_duration(Duration::from_secs(3723)), "1h 02m 03s");
    }
}
