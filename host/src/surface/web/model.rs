//! The shapes the job pages, the JSON API (`/api/v1/jobs…`) and `sdci-host jobs list|show
//! --json` share: [`JobList`], [`JobDetail`] and their parts, built from the store, the
//! configuration and the logs on disk.
//!
//! Invariants: one builder per shape, so the page, the API and the CLI cannot drift apart; the
//! builders block (SQLite, file I/O), so the web surface calls them through `spawn_blocking`;
//! nothing here reads a whole log (log sizes come from `joblog`'s line index).

use crate::config::Config;
use crate::domain::JobState;
use crate::joblog::{self, LiveLogs, LogInfo};
use crate::store::{AttemptRow, JobFilter, JobRow, StepRow, Store};
use crate::Result;
use serde::Serialize;

/// One job in a list.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub id: String,
    /// The job page, relative to the host (`/jobs/{id}`).
    pub url: String,
    pub repo: String,
    pub sha: String,
    pub short_sha: String,
    pub branch: Option<String>,
    /// The pull request's number, for a `pull_request` job.
    pub pr: Option<u64>,
    /// push, pull_request, nightly or manual.
    pub reason: String,
    pub state: String,
    pub note: Option<String>,
    /// The Qubes version (`None` until `ci-config` told).
    pub version: Option<String>,
    pub vm: Option<String>,
    pub attempts: u32,
    pub author: Option<String>,
    pub subject: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// When it ended (terminal states only).
    pub ended_ms: Option<i64>,
    /// Queued to the end, or to now while it has not ended.
    pub duration_ms: i64,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    /// Pass as `before` for the next (older) page.
    pub next_before: Option<i64>,
}

/// A queued job's place and why it waits.
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    /// From 1 among the queued jobs of its version (`None` while the version is unknown).
    pub position: Option<u32>,
    pub of: Option<u32>,
    pub waiting_for: String,
}

/// One step of an attempt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StepView {
    /// From 1, as the log numbers steps.
    pub number: u32,
    pub name: String,
    /// pending, running, passed, failed, timed_out, stopped or skipped.
    pub state: String,
    pub status: Option<i32>,
    pub started_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    /// The log line (from 1) where the step opens, when the log shows it.
    pub line: Option<u64>,
}

/// Where an attempt's log is and how big it is.
#[derive(Debug, Clone, Serialize)]
pub struct LogView {
    pub lines: u64,
    pub bytes: u64,
    pub generation: u64,
    /// `text/plain`, with `Range`.
    pub raw_url: String,
    /// `?download=1` of the raw log.
    pub download_url: String,
    /// JSON lines: `?from=N&limit=M`.
    pub api_url: String,
    /// Server-sent events from a line on.
    pub stream_url: String,
}

/// One attempt of a job on a VM, with its steps and log.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub vm: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub duration_ms: i64,
    /// done, infra, outage or canceled; `None` while it runs.
    pub result: Option<String>,
    pub error: Option<String>,
    /// The verdict dom0 relayed (success, failure, error) and its reason.
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// The job's current attempt (the one that is or was last running).
    pub current: bool,
    pub steps: Vec<StepView>,
    /// `None`: no log kept for this attempt.
    pub log: Option<LogView>,
}

/// A state change.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionView {
    pub at_ms: i64,
    pub from: Option<String>,
    pub to: String,
    pub note: Option<String>,
}

/// Links to the world outside the host.
#[derive(Debug, Clone, Serialize)]
pub struct LinksView {
    pub commit: String,
    pub branch: Option<String>,
    pub pull_request: Option<String>,
    pub repo: String,
}

/// Everything about one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    pub links: LinksView,
    pub queue: Option<QueueView>,
    /// Newest first.
    pub attempts: Vec<AttemptView>,
    pub history: Vec<TransitionView>,
    /// What the host knows of a cancel request.
    pub cancel_requested: Option<String>,
    /// The test results of the newest attempt that has them (issue 19).
    pub tests: Option<super::results::TestsView>,
    /// Its stages, provisioned snapshot and re-run links both ways (issue 18).
    pub stages: Option<crate::orchestration::stages::StagesReport>,
}

/// Pretty JSON that is safe to print in a terminal: besides what JSON escapes anyway (C0
/// controls), C1 controls, DEL, line and paragraph separators and bidirectional controls are
/// written as `\uXXXX` escapes, so a hostile branch name cannot drive or reorder the operator's
/// terminal (`sdci-host jobs list|show --json`).
pub fn to_json(value: &impl Serialize) -> Result<String> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| crate::HostError::Invalid(format!("encoding JSON: {e}")))?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let unsafe_char = c.is_control() && c != '\n'
            || matches!(c,
                '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if unsafe_char {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// GitHub's web address for the API configured (`https://api.github.com` → `https://github.com`,
/// GitHub Enterprise's `https://host/api/v3` → `https://host`).
pub fn github_web(api: &str) -> String {
    let api = api.trim_end_matches('/');
    if let Some(rest) = api.strip_prefix("https://api.") {
        return format!("https://{rest}");
    }
    if let Some(base) = api.strip_suffix("/api/v3") {
        return base.to_owned();
    }
    if api.is_empty() {
        return "https://github.com".into();
    }
    api.to_owned()
}

/// A path segment for a URL: everything but unreserved characters percent-encoded.
pub fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pr_number(j: &JobRow) -> Option<u64> {
    if j.reason != sdci_protocol::Reason::PullRequest {
        return None;
    }
    j.supersede_key.as_deref()?.rsplit_once('#')?.1.parse().ok()
}

/// The summary of one job row.
pub fn summary(j: &JobRow) -> JobSummary {
    let terminal = j.state.is_terminal();
    let ended_ms = terminal.then_some(j.updated_ms);
    let end = ended_ms.unwrap_or_else(crate::now_ms);
    JobSummary {
        id: j.id.to_string(),
        url: format!("/jobs/{}", j.id),
        repo: j.repo.to_string(),
        sha: j.sha.to_string(),
        short_sha: j.sha.chars().take(7).collect(),
        branch: j.branch.clone(),
        pr: pr_number(j),
        reason: j.reason.as_str().to_owned(),
        state: j.state.as_str().to_owned(),
        note: j.note.clone(),
        version: j.version.clone(),
        vm: j.vm.clone(),
        attempts: j.attempts,
        author: j.commit_author.clone(),
        subject: j.commit_subject.clone(),
        created_ms: j.created_ms,
        updated_ms: j.updated_ms,
        ended_ms,
        duration_ms: (end - j.created_ms).max(0),
    }
}

/// A page of jobs.
pub fn job_list(store: &Store, filter: &JobFilter) -> Result<JobList> {
    let page = store.jobs_page(filter)?;
    Ok(JobList {
        jobs: page.jobs.iter().map(summary).collect(),
        next_before: page.next_before,
    })
}

/// Why a queued job waits, in words.
fn waiting_for(store: &Store, cfg: &Config, j: &JobRow, ahead: Option<u32>) -> Result<String> {
    if j.cancel_requested.is_some() {
        return Ok("a cancel was requested".into());
    }
    let Some(version) = &j.version else {
        return Ok("its Qubes version: the host is reading .github/workstation-ci.yml".into());
    };
    if !cfg.pools.contains_key(version) {
        return Ok(format!(
            "a pool for Qubes {version}: the host configuration has none"
        ));
    }
    let vms = store.pool_vms(version)?;
    if vms.is_empty() {
        return Ok(format!("a Qubes {version} VM: none is registered yet"));
    }
    let quarantined = vms.iter().filter(|v| v.quarantined).count();
    let rotation = vms
        .iter()
        .filter(|v| {
            !v.quarantined
                && (v.reserved
                    || v.holder
                        .as_deref()
                        .is_some_and(|h| h.starts_with("rotation-")))
        })
        .count();
    let jobs = vms
        .iter()
        .filter(|v| {
            !v.quarantined
                && v.holder
                    .as_deref()
                    .is_some_and(|h| !h.starts_with("rotation-"))
        })
        .count();
    if quarantined == vms.len() {
        return Ok(format!(
            "a Qubes {version} VM: all {quarantined} are quarantined (sdci-host vms \
             unquarantine NAME)"
        ));
    }
    let mut parts = Vec::new();
    if let Some(n) = ahead.filter(|n| *n > 0) {
        parts.push(format!(
            "{n} job{} ahead of it",
            if n == 1 { " is" } else { "s are" }
        ));
    }
    let free = vms.len() - quarantined - rotation - jobs;
    let mut held = Vec::new();
    if jobs > 0 {
        held.push(format!("{jobs} running a job"));
    }
    if rotation > 0 {
        held.push(format!("{rotation} held by a golden-snapshot rotation"));
    }
    if quarantined > 0 {
        held.push(format!("{quarantined} quarantined"));
    }
    if free == 0 {
        parts.push(format!(
            "no free Qubes {version} VM ({} of {}: {})",
            vms.len(),
            vms.len(),
            held.join(", ")
        ));
    } else {
        parts.push(format!(
            "{free} of {} Qubes {version} VMs free{}; the scheduler claims one as soon as \
             vSphere reports it powered off",
            vms.len(),
            if held.is_empty() {
                String::new()
            } else {
                format!(" ({})", held.join(", "))
            }
        ));
    }
    Ok(parts.join("; "))
}

/// The steps of one attempt: those the ingest recorded, then (for the current attempt) the
/// configured ones not started yet.
fn steps_view(
    rows: &[&StepRow],
    configured: &[String],
    job_state: JobState,
    current: bool,
    attempt_ended: bool,
    log: Option<&LogInfo>,
) -> Vec<StepView> {
    let line_of = |number: u32| {
        log.and_then(|l| l.steps.iter().find(|m| m.step == number))
            .map(|m| m.line + 1)
    };
    let live = current && job_state.is_active() && !attempt_ended;
    let mut out: Vec<StepView> = Vec::new();
    for r in rows {
        let number = r.step.saturating_add(1);
        let state = match (r.status, r.timed_out) {
            (Some(_), Some(true)) => "timed_out",
            (Some(0), _) => "passed",
            (Some(_), _) => "failed",
            (None, _) if live => "running",
            (None, _) => "stopped",
        };
        out.push(StepView {
            number,
            name: r.name.clone(),
            state: state.into(),
            status: r.status,
            started_ms: r.started_ms,
            duration_ms: r.duration_ms,
            line: line_of(number),
        });
    }
    if current {
        let failed = out
            .iter()
            .any(|s| s.state != "passed" && s.state != "running");
        for (i, name) in configured.iter().enumerate() {
            let number = i as u32 + 1;
            if out.iter().any(|s| s.number == number) {
                continue;
            }
            let state = if live && !failed {
                "pending"
            } else {
                "skipped"
            };
            out.push(StepView {
                number,
                name: name.clone(),
                state: state.into(),
                status: None,
                started_ms: None,
                duration_ms: None,
                line: None,
            });
        }
        out.sort_by_key(|s| s.number);
    }
    out
}

fn log_view(id: &str, attempt: u32, info: &LogInfo) -> LogView {
    let q = format!("attempt={attempt}");
    LogView {
        lines: info.lines,
        bytes: info.bytes,
        generation: info.generation,
        raw_url: format!("/jobs/{id}/log.txt?{q}"),
        download_url: format!("/jobs/{id}/log.txt?{q}&download=1"),
        api_url: format!("/api/v1/jobs/{id}/log?{q}"),
        stream_url: format!("/api/v1/jobs/{id}/log/stream?{q}"),
    }
}

/// Everything about job `id`; `None` if there is no such job. Blocks (store and log files).
pub fn job_detail(
    store: &Store,
    cfg: &Config,
    logs: &LiveLogs,
    id: &str,
) -> Result<Option<JobDetail>> {
    let Some(j) = store.job(id)? else {
        return Ok(None);
    };
    let web = github_web(&cfg.agent.github_api);
    let repo_url = format!("{web}/{}", j.repo);
    let pr = pr_number(&j);
    let links = LinksView {
        commit: format!("{repo_url}/commit/{}", j.sha),
        branch: j
            .branch
            .as_deref()
            .filter(|_| pr.is_none())
            .map(|b| format!("{repo_url}/tree/{}", url_part(b))),
        pull_request: pr.map(|n| format!("{repo_url}/pull/{n}")),
        repo: repo_url,
    };
    let queue = if j.state == JobState::Queued {
        let spot = store.queue_spot(id)?;
        Some(QueueView {
            position: spot.map(|s| s.position),
            of: spot.map(|s| s.of),
            waiting_for: waiting_for(store, cfg, &j, spot.map(|s| s.position - 1))?,
        })
    } else {
        None
    };
    let configured: Vec<String> = cfg.steps().into_iter().map(|s| s.name).collect();
    let steps = store.steps_of(id)?;
    let dir = cfg.log_dir();
    let mut attempts = Vec::new();
    for a in store.attempts_of(id)? {
        attempts.push(attempt_view(&j, &a, &steps, &configured, logs, &dir)?);
    }
    let history = store
        .transitions(id)?
        .into_iter()
        .map(|(at_ms, from, to, note)| TransitionView {
            at_ms,
            from,
            to,
            note,
        })
        .collect();
    Ok(Some(JobDetail {
        job: summary(&j),
        links,
        queue,
        attempts,
        history,
        cancel_requested: j.cancel_requested.clone(),
        tests: super::results::tests_view(store, cfg, &j)?,
        stages: crate::orchestration::stages::StagesReport::read(store, j.id.as_str())?,
    }))
}

fn attempt_view(
    j: &JobRow,
    a: &AttemptRow,
    steps: &[StepRow],
    configured: &[String],
    logs: &LiveLogs,
    dir: &std::path::Path,
) -> Result<AttemptView> {
    let id = j.id.as_str();
    let current = a.attempt == j.attempts;
    let path = joblog::log_of_attempt(dir, id, a.attempt, j.attempts);
    let info = logs
        .info(&path)
        .map_err(|e| crate::HostError::io(format!("reading {}", path.display()), e))?;
    let rows: Vec<&StepRow> = steps.iter().filter(|s| s.attempt == a.attempt).collect();
    let ended = a.ended_ms.is_some() || j.state.is_terminal();
    let end = a
        .ended_ms
        .or(if current && j.state.is_terminal() {
            Some(j.updated_ms)
        } else {
            None
        })
        .unwrap_or_else(crate::now_ms);
    Ok(AttemptView {
        attempt: a.attempt,
        vm: a.vm.clone(),
        started_ms: a.started_ms,
        ended_ms: a.ended_ms,
        duration_ms: (end - a.started_ms).max(0),
        result: a.result.clone(),
        error: a.error.clone(),
        outcome: a.outcome.clone(),
        reason: a.reason.clone(),
        current,
        steps: steps_view(&rows, configured, j.state, current, ended, info.as_ref()),
        log: info.as_ref().map(|i| log_view(id, a.attempt, i)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_links_point_at_the_web_side_of_the_configured_api() {
        assert_eq!(github_web("https://api.github.com"), "https://github.com");
        assert_eq!(
            github_web("https://ghe.example/api/v3/"),
            "https://ghe.example"
        );
        assert_eq!(github_web("http://127.0.0.1:9"), "http://127.0.0.1:9");
    }

    #[test]
    fn json_for_a_terminal_escapes_c1_and_bidi_controls_and_stays_json() {
        let v = serde_json::json!({"branch": "a\u{202e}b\u{9b}c\u{1b}[2J"});
        let text = to_json(&v).unwrap();
        assert!(text.is_ascii(), "{text}");
        assert!(text.contains("\\u202e") && text.contains("\\u009b") && text.contains("\\u001b"));
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn branch_names_are_percent_encoded_in_links() {
        assert_eq!(url_part("release/1.0"), "release/1.0");
        assert_eq!(url_part("a\"><img"), "a%22%3E%3Cimg");
        assert_eq!(url_part("ü b"), "%C3%BC%20b");
    }

    fn queued(cfg: &str) -> (tempfile::TempDir, Store, Config, String) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("db.sqlite3")).unwrap();
        let cfg = Config::parse(cfg, std::path::Path::new("test.toml")).unwrap();
        let id = store
            .insert_job(&crate::store::NewJob {
                repo: "o/r".parse().unwrap(),
                sha: "a".repeat(40).parse().unwrap(),
                reason: sdci_protocol::Reason::Push,
                branch: Some("main".into()),
                supersede_key: None,
                clone_url: "x".into(),
                version: Some("4.2".into()),
                snapshot: None,
                update_first: false,
                commit_author: None,
                commit_subject: None,
            })
            .unwrap();
        (d, store, cfg, id.to_string())
    }

    fn waits_for(store: &Store, cfg: &Config, id: &str) -> String {
        let d = job_detail(store, cfg, &LiveLogs::default(), id)
            .unwrap()
            .unwrap();
        d.queue.unwrap().waiting_for
    }

    #[test]
    fn a_queued_job_says_why_it_waits() {
        let pool = "[pools.\"4.2\"]\nprefix = \"Q_\"\ngolden_snapshot = \"g\"\n";
        let (_d, store, cfg, id) = queued("");
        assert!(
            waits_for(&store, &cfg, &id).contains("the host configuration has none"),
            "{}",
            waits_for(&store, &cfg, &id)
        );
        let (_d, store, cfg, id) = queued(pool);
        assert!(waits_for(&store, &cfg, &id).contains("none is registered"));
        store.register_vms("4.2", &["Q_a".into()]).unwrap();
        let second = {
            let mut j = store.job(&id).unwrap().unwrap();
            j.sha = "b".repeat(40).parse().unwrap();
            store
                .insert_job(&crate::store::NewJob {
                    repo: j.repo,
                    sha: j.sha,
                    reason: j.reason,
                    branch: j.branch,
                    supersede_key: None,
                    clone_url: j.clone_url,
                    version: j.version,
                    snapshot: None,
                    update_first: false,
                    commit_author: None,
                    commit_subject: None,
                })
                .unwrap()
        };
        store
            .claim("4.2", &["Q_a".into()], 1, "s", i64::MAX)
            .unwrap()
            .unwrap();
        let why = waits_for(&store, &cfg, second.as_str());
        assert!(
            why.contains("no free Qubes 4.2 VM") && why.contains("1 running a job"),
            "{why}"
        );
        let d = job_detail(&store, &cfg, &LiveLogs::default(), second.as_str())
            .unwrap()
            .unwrap();
        let q = d.queue.unwrap();
        assert_eq!((q.position, q.of), (Some(1), Some(1)));
        // The running job fails on the only VM, which is quarantined: both wait for a person.
        store.infra_failure(&id, "boom", 3, 1).unwrap();
        let why = waits_for(&store, &cfg, second.as_str());
        assert!(why.contains("all 1 are quarantined"), "{why}");
    }

    fn row(step: u32, status: Option<i32>, timed_out: Option<bool>) -> StepRow {
        StepRow {
            attempt: 1,
            step,
            name: format!("s{step}"),
            started_ms: Some(1),
            duration_ms: status.map(|_| 5),
            status,
            timed_out,
        }
    }

    #[test]
    fn steps_show_passed_running_and_pending_and_after_a_failure_skipped() {
        let configured: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        let rows = [row(0, Some(0), Some(false)), row(1, None, None)];
        let refs: Vec<&StepRow> = rows.iter().collect();
        let live = steps_view(&refs, &configured, JobState::Running, true, false, None);
        let states: Vec<&str> = live.iter().map(|s| s.state.as_str()).collect();
        assert_eq!(states, ["passed", "running", "pending", "pending"]);
        let rows = [row(0, Some(0), Some(false)), row(1, Some(124), Some(true))];
        let refs: Vec<&StepRow> = rows.iter().collect();
        let done = steps_view(&refs, &configured, JobState::Failure, true, true, None);
        let states: Vec<&str> = done.iter().map(|s| s.state.as_str()).collect();
        assert_eq!(states, ["passed", "timed_out", "skipped", "skipped"]);
    }
}
