//! Slack notifications from the host, which knows a job's outcome even when its VM died: one
//! message per terminal job (for the outcomes configured), and one per snapshot rotation.
//!
//! Jobs end in several places and processes (the lifecycle, the reconciler, `sdci-host jobs
//! cancel`, superseding pushes), so notifications are an outbox read from the store: the worker
//! ([`Notifier::run`]) looks for jobs that became terminal since the notifier was first enabled
//! on this database and have no row in `notify_outbox` yet, records them, and sends. It looks
//! every `notify.sweep_ms` and whenever [`Notifier::wake`] is called; no hook in the job code is
//! needed for a message to go out, and a restart loses none.
//!
//! Invariants:
//! - One message per terminal job: the outbox row (primary key = job id) is written in one
//!   statement, claimed (`sending`) before the POST, and marked sent only after a 2xx answer. A
//!   process that dies mid-POST leaves the row `sending`; the next notifier sends it again (so a
//!   crash can repeat a message, never lose one).
//! - A failing webhook is retried `notify.attempts` times with doubling backoff, then logged and
//!   given up (`sent = 3`). Nothing here ever changes a job's state or outcome: the worker only
//!   reads `jobs` and writes its own tables.
//! - The webhook URL is a secret: read from a file into a [`Secret`], never logged.
//! - Text from commits and notes is escaped for Slack (`&`, `<`, `>`), so a commit message cannot
//!   inject links or mentions.

use crate::config::{read_secret, Config};
use crate::store::{JobRow, Store};
use crate::{now_ms, HostError, Result};
use rusqlite::{params, Connection};
use sdci_protocol::job::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The terminal outcomes a job can end with, as the store names them.
pub const OUTCOMES: [&str; 4] = ["success", "failure", "error", "canceled"];

/// `[notify]`: where and when to send Slack messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// File holding the Slack incoming-webhook URL; absent disables notifications.
    #[serde(default)]
    pub slack_webhook_file: Option<PathBuf>,
    /// Which terminal outcomes are announced.
    #[serde(default = "default_outcomes")]
    pub outcomes: Vec<String>,
    /// Announce snapshot rotations (success and failure).
    #[serde(default = "yes")]
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
fn yes() -> bool {
    true
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
        for o in &self.outcomes {
            if !OUTCOMES.contains(&o.as_str()) {
                return Err(format!(
                    "notify.outcomes: unknown outcome {o:?}; use some of {OUTCOMES:?}"
                ));
            }
        }
        if self.attempts == 0 {
            return Err("notify.attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// Who wrote a commit and what it says, when the host knows it (from the webhook).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitInfo {
    pub author: Option<String>,
    /// The first line of the commit message (or a pull request's title).
    pub subject: Option<String>,
}

impl CommitInfo {
    /// From a push's head commit: the author's name (else their GitHub username) and the first
    /// line of the message. The webhook intake reads the same fields with typed structs.
    pub fn from_commit(name: Option<&str>, username: Option<&str>, message: Option<&str>) -> Self {
        Self {
            author: name.or(username).map(str::to_owned),
            subject: message.and_then(|m| m.lines().next()).map(str::to_owned),
        }
    }

    /// From a GitHub `push` or `pull_request` payload: the head commit's author and the first
    /// line of its message, or the pull request's author and title.
    pub fn from_payload(event: &str, payload: &serde_json::Value) -> Self {
        let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        match event {
            "push" => {
                let c = &payload["head_commit"];
                Self::from_commit(
                    c["author"]["name"].as_str(),
                    c["author"]["username"].as_str(),
                    c["message"].as_str(),
                )
            }
            "pull_request" => {
                let pr = &payload["pull_request"];
                Self {
                    author: s(&pr["user"]["login"]),
                    subject: s(&pr["title"]),
                }
            }
            _ => Self::default(),
        }
    }
}

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
            ":camera_with_flash: *rotation ok*: Qubes {} golden snapshot is now {} (was {}), after {}",
            slack_escape(&n.version),
            slack_escape(&n.snapshot),
            slack_escape(&n.previous),
            human_duration(n.duration)
        )
    } else {
        format!(
            ":warning: *rotation failed*: Qubes {} keeps golden snapshot {}; {} was not adopted",
            slack_escape(&n.version),
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

/// Remembers a job's commit author and subject (the columns the webhook intake fills in the
/// job's own transaction). Opens its own connection: for occasional callers (tests, tools), not
/// for the webhook's hot path.
pub fn record_commit(db: &Path, job_id: &str, info: &CommitInfo) -> Result<()> {
    let c = crate::store::side_connection(db)?;
    let n = c.execute(
        "UPDATE jobs SET commit_author = ?2, commit_subject = ?3 WHERE id = ?1",
        params![job_id, info.author, info.subject],
    )?;
    if n == 0 {
        return Err(HostError::Invalid(format!("no job {job_id} in the store")));
    }
    Ok(())
}

/// Outbox row states.
const PENDING: i64 = 0;
const SENT: i64 = 1;
const SKIPPED: i64 = 2;
const GAVE_UP: i64 = 3;
/// Claimed by a sweep that is sending it (reset to pending when a notifier starts).
const SENDING: i64 = 4;

/// The notification worker of a `serve` process.
pub struct Notifier {
    cfg: Config,
    url: Secret,
    store: Arc<Store>,
    db: std::sync::Mutex<Connection>,
    wake: Notify,
}

impl Notifier {
    /// `None` when notifications are disabled (no `notify.slack_webhook_file`).
    pub fn from_config(cfg: &Config, store: Arc<Store>) -> Result<Option<Arc<Self>>> {
        cfg.notify.validate().map_err(|message| HostError::Config {
            path: "[notify]".into(),
            message,
        })?;
        let Some(url) = webhook_url(&cfg.notify)? else {
            return Ok(None);
        };
        let db = crate::store::side_connection(&cfg.db_path())?;
        // Notifications cover the jobs that end from the first time they are enabled on.
        db.execute(
            "INSERT INTO notify_meta (key, value) VALUES ('since', ?1) ON CONFLICT(key) DO NOTHING",
            params![now_ms()],
        )?;
        // A message being sent when a previous process died goes out again.
        db.execute(
            &format!("UPDATE notify_outbox SET sent = {PENDING} WHERE sent = {SENDING}"),
            [],
        )?;
        Ok(Some(Arc::new(Self {
            cfg: cfg.clone(),
            url,
            store,
            db: std::sync::Mutex::new(db),
            wake: Notify::new(),
        })))
    }

    /// Asks the worker to look at the store now (e.g. right after a job ended).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Looks for ended jobs and sends their messages, forever.
    pub async fn run(self: Arc<Self>) {
        let every = Duration::from_millis(self.cfg.notify.sweep_ms.max(10));
        loop {
            if let Err(e) = self.sweep().await {
                tracing::error!(error = %e, "notification outbox");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let c = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(f(&c)?)
    }

    /// Records newly ended jobs in the outbox and sends every pending message. Returns how many
    /// were sent.
    pub async fn sweep(&self) -> Result<usize> {
        let wanted: Vec<String> = self
            .cfg
            .notify
            .outcomes
            .iter()
            .filter(|o| OUTCOMES.contains(&o.as_str()))
            .map(|o| format!("'{o}'"))
            .collect();
        let wanted = if wanted.is_empty() {
            "''".to_owned()
        } else {
            wanted.join(",")
        };
        let pending: Vec<String> = self.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO notify_outbox (job_id, state, created_ms, sent) \
                     SELECT id, state, ?1, CASE WHEN state IN ({wanted}) THEN {PENDING} \
                     ELSE {SKIPPED} END FROM jobs \
                     WHERE state IN ('success','failure','error','canceled') \
                     AND updated_ms >= (SELECT value FROM notify_meta WHERE key = 'since') \
                     AND id NOT IN (SELECT job_id FROM notify_outbox)"
                ),
                params![now_ms()],
            )?;
            let mut st = c.prepare(&format!(
                "SELECT job_id FROM notify_outbox WHERE sent = {PENDING} ORDER BY created_ms"
            ))?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        let mut sent = 0;
        for id in pending {
            // Claim the row: two sweeps never send the same message.
            let claimed = self.with(|c| {
                c.execute(
                    &format!(
                        "UPDATE notify_outbox SET sent = {SENDING} WHERE job_id = ?1 \
                         AND sent = {PENDING}"
                    ),
                    params![id],
                )
            })?;
            if claimed == 0 {
                continue;
            }
            let Some(job) = self.store.job(&id)? else {
                self.with(|c| {
                    c.execute(
                        &format!(
                            "UPDATE notify_outbox SET sent = {GAVE_UP}, last_error = 'job gone' \
                             WHERE job_id = ?1"
                        ),
                        params![id],
                    )
                })?;
                continue;
            };
            let notice = self.notice(&job)?;
            match post(&self.cfg.notify, &self.url, &job_message(&notice)).await {
                Ok(()) => {
                    self.with(|c| {
                        c.execute(
                            &format!(
                                "UPDATE notify_outbox SET sent = {SENT}, tries = tries + 1 \
                                 WHERE job_id = ?1"
                            ),
                            params![id],
                        )
                    })?;
                    tracing::info!(job = %id, outcome = %notice.outcome, "Slack notified");
                    sent += 1;
                }
                Err(e) => {
                    tracing::error!(job = %id, error = %e,
                        "giving up the Slack notification; the job's outcome is unaffected");
                    self.with(|c| {
                        c.execute(
                            &format!(
                                "UPDATE notify_outbox SET sent = {GAVE_UP}, tries = tries + ?1, \
                                 last_error = ?2 WHERE job_id = ?3"
                            ),
                            params![self.cfg.notify.attempts, e, id],
                        )
                    })?;
                }
            }
        }
        Ok(sent)
    }

    /// What the message about `job` says.
    pub fn notice(&self, job: &JobRow) -> Result<JobNotice> {
        let commit = CommitInfo {
            author: job.commit_author.clone(),
            subject: job.commit_subject.clone(),
        };
        let transitions = self.store.transitions(&job.id)?;
        let start = transitions
            .iter()
            .find(|t| t.2 == "assigned")
            .map(|t| t.0)
            .unwrap_or(job.created_ms);
        let end = transitions
            .iter()
            .rev()
            .find(|t| OUTCOMES.contains(&t.2.as_str()))
            .map(|t| t.0)
            .unwrap_or(job.updated_ms);
        Ok(JobNotice {
            outcome: job.state.as_str().to_owned(),
            reason: job.reason.clone(),
            repo: job.repo.clone(),
            sha: job.sha.clone(),
            branch: job.branch.clone(),
            commit,
            duration: Some(Duration::from_millis((end - start).max(0) as u64)),
            note: job.note.clone(),
            log_url: format!("{}/jobs/{}", self.cfg.public_url, job.id),
        })
    }

    /// (sent, skipped, gave up) counts, for metrics and tests.
    pub fn counts(&self) -> Result<(i64, i64, i64)> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT COALESCE(SUM(sent = {SENT}), 0), COALESCE(SUM(sent = {SKIPPED}), 0), \
                     COALESCE(SUM(sent = {GAVE_UP}), 0) FROM notify_outbox"
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
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
    fn commit_info_comes_from_push_and_pull_request_payloads() {
        let push = serde_json::json!({"head_commit": {"message": "First line\n\nbody",
            "author": {"name": "Ada", "username": "ada"}}});
        assert_eq!(
            CommitInfo::from_payload("push", &push),
            CommitInfo {
                author: Some("Ada".into()),
                subject: Some("First line".into())
            }
        );
        let pr = serde_json::json!({"pull_request": {"title": "T", "user": {"login": "bob"}}});
        assert_eq!(
            CommitInfo::from_payload("pull_request", &pr)
                .author
                .as_deref(),
            Some("bob")
        );
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human_duration(Duration::from_secs(12)), "12s");
        assert_eq!(human_duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(human_duration(Duration::from_secs(3723)), "1h 02m 03s");
    }

    #[test]
    fn unknown_outcomes_are_refused() {
        let mut c = NotifyConfig::default();
        assert!(c.validate().is_ok());
        c.outcomes = vec!["sucess".into()];
        assert!(c.validate().unwrap_err().contains("sucess"));
    }
}
