//! The subcommands other than `serve`: they work on the store file directly (SQLite serializes
//! them with a running service) and then poke the service (`POST /api/v1/wake`) so it acts at
//! once; when no service runs, the work waits in the store for the next `serve`.
//!
//! Invariants: a manual job goes through the same queue as a webhook's, and only for a repository
//! in `webhook.repos` (when the list is set); canceling a queued job ends it at once (with its
//! final status in the outbox), canceling an active one asks the service to stop it, canceling
//! an ended one is an error; a re-run is a new job like the old one, never a reset of it; output is
//! plain text, one job or VM per line, and every value printed that came from outside (branch
//! names, notes, reasons, descriptions, VM errors) goes through [`term_safe`]: a control
//! character, line separator or bidirectional control never reaches the operator's terminal
//! (no OSC 52 clipboard write, no screen clear, no forged line).

use crate::config::Config;
use crate::domain::JobState;
use crate::store::{NewJob, Store};
use crate::{HostError, Result};
use sdci_protocol::{CommitSha, JobId, Reason, RepoName};
use std::fmt::Write;

/// `text` with every control character (tab and line breaks included), line or paragraph
/// separator and bidirectional control shown as `\xNN` / `\u{NNNN}` (protocol's one rule,
/// [`sdci_protocol::event::sanitize_field`], uncapped): safe to print on one terminal line.
pub fn term_safe(text: &str) -> String {
    sdci_protocol::event::sanitize_field(text, usize::MAX)
}

fn opt_safe(text: Option<&str>, none: &str) -> String {
    term_safe(text.unwrap_or(none))
}

/// The database `serve` made: never created or migrated here (`Store::open_existing`).
fn open(cfg: &Config) -> Result<Store> {
    Store::open_existing(&cfg.db_path())
}

/// A time for people: `2026-12-01 08:37:14Z` (UTC).
pub fn human_time(ms: i64) -> String {
    sdci_protocol::Utc::from_unix_millis(ms)
        .rfc3339()
        .replacen('T', " ", 1)
}

/// As [`human_time`], to the millisecond (`jobs show`'s history: phases can be that short).
pub fn human_time_ms(ms: i64) -> String {
    sdci_protocol::Utc::from_unix_millis(ms)
        .rfc3339_millis()
        .replacen('T', " ", 1)
}

/// Asks a running service to look at the store now; silent when none runs.
pub async fn wake(cfg: &Config) -> bool {
    let url = format!("http://{}/api/v1/wake", cfg.listen);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build();
    let Ok(client) = client else {
        return false;
    };
    let mut req = client.post(url);
    // With `http.admin_token_file`, the wake-up needs the operator's bearer.
    if let Some(path) = &cfg.http.admin_token_file {
        match crate::config::read_secret(path, "admin token") {
            Ok(t) => req = req.bearer_auth(t.expose()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot wake the service without the admin token");
                return false;
            }
        }
    }
    req.send().await.is_ok_and(|r| r.status().is_success())
}

/// `sdci-host run`: queues a manual job; returns its id.
pub fn run(
    cfg: &Config,
    repo: Option<&str>,
    version: &str,
    commit: &str,
    snapshot: Option<&str>,
    update: bool,
) -> Result<JobId> {
    let repo = repo
        .map(str::to_owned)
        .or_else(|| cfg.default_repo.clone())
        .ok_or_else(|| {
            HostError::Invalid(
                "no repository: pass --repo OWNER/NAME or set default_repo in the host config"
                    .into(),
            )
        })?;
    let repo: RepoName = repo
        .parse()
        .map_err(|e: sdci_protocol::ProtocolError| HostError::Invalid(e.to_string()))?;
    if !cfg.webhook.repos.is_empty() && !cfg.webhook.allows_repo(repo.as_str()) {
        return Err(HostError::Invalid(format!(
            "repository {repo} is not in webhook.repos ({:?}): the service would not run it",
            cfg.webhook.repos
        )));
    }
    let sha: CommitSha = commit.parse().map_err(|e: sdci_protocol::ProtocolError| {
        HostError::Invalid(format!("{e}; pass the full commit id"))
    })?;
    if !cfg.pools.contains_key(version) {
        return Err(HostError::Invalid(format!(
            "no pool for Qubes {version}: the host config has {:?}",
            cfg.pools.keys().collect::<Vec<_>>()
        )));
    }
    let clone_url = cfg
        .agent
        .clone_url_override
        .clone()
        .unwrap_or_else(|| format!("https://github.com/{repo}.git"));
    open(cfg)?.insert_job(&NewJob {
        repo,
        sha,
        reason: Reason::Manual,
        branch: None,
        supersede_key: None,
        clone_url,
        version: Some(version.to_owned()),
        snapshot: snapshot.map(str::to_owned),
        update_first: update,
        commit_author: None,
        commit_subject: None,
    })
}

/// `sdci-host jobs list`.
pub fn list(cfg: &Config, limit: u32) -> Result<String> {
    const ROW: fn(&mut String, [&str; 8]) = |out, c| {
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:<12} {:<52} {:<6} {:<16} {:<20} {}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        );
    };
    let jobs = open(cfg)?.recent_jobs(limit)?;
    let mut out = String::new();
    if jobs.is_empty() {
        out.push_str("no jobs\n");
        return Ok(out);
    }
    let head = [
        "JOB",
        "STATE",
        "REASON",
        "REPO@COMMIT",
        "QUBES",
        "VM",
        "CREATED (UTC)",
        "NOTE",
    ];
    ROW(&mut out, head);
    for j in jobs {
        let commit = format!("{}@{}", j.repo, &j.sha[..j.sha.len().min(12)]);
        let (version, vm) = (
            opt_safe(j.version.as_deref(), "?"),
            opt_safe(j.vm.as_deref(), "-"),
        );
        let (created, note) = (human_time(j.created_ms), opt_safe(j.note.as_deref(), ""));
        let state = j.state.as_str();
        let row = [
            j.id.as_str(),
            state,
            j.reason.as_str(),
            &commit,
            &version,
            &vm,
            &created,
            &note,
        ];
        ROW(&mut out, row);
    }
    Ok(out)
}

/// `sdci-host jobs show ID`.
pub fn show(cfg: &Config, id: &str) -> Result<String> {
    let store = open(cfg)?;
    let j = store
        .job(id)?
        .ok_or_else(|| HostError::NoSuchJob(id.to_owned()))?;
    let mut out = format!(
        "job {}\nstate {}\nrepo {}\ncommit {}\nbranch {}\nreason {}\nversion {}\nvm {}\n\
         attempts {}\nnote {}\ncreated {}\nupdated {}\npage {}/jobs/{}\n\nhistory:\n",
        j.id,
        j.state.as_str(),
        j.repo,
        j.sha,
        opt_safe(j.branch.as_deref(), "-"),
        j.reason.as_str(),
        opt_safe(j.version.as_deref(), "?"),
        opt_safe(j.vm.as_deref(), "-"),
        j.attempts,
        opt_safe(j.note.as_deref(), ""),
        human_time(j.created_ms),
        human_time(j.updated_ms),
        term_safe(&cfg.public_url),
        j.id
    );
    for (at, from, to, note) in store.transitions(id)? {
        let _ = writeln!(
            out,
            "  {}  {} -> {} {}",
            human_time_ms(at),
            opt_safe(from.as_deref(), "-"),
            term_safe(&to),
            opt_safe(note.as_deref(), "")
        );
    }
    let checks = store.check_updates(id)?;
    if !checks.is_empty() {
        out.push_str("check run:\n");
        for c in checks {
            let _ = writeln!(
                out,
                "  {:<11} {:<8} {}",
                c.phase.as_str(),
                c.posted.as_str(),
                term_safe(&c.note)
            );
        }
    }
    out.push_str("statuses:\n");
    for s in store.statuses(id)? {
        let _ = writeln!(
            out,
            "  {:<8} {:<8} {}",
            s.state.as_str(),
            s.posted.as_str(),
            term_safe(&s.description)
        );
    }
    Ok(out)
}

/// `sdci-host jobs list --json`: the shape `GET /api/v1/jobs` answers (`surface::web::model`).
pub fn list_json(cfg: &Config, limit: u32) -> Result<String> {
    let filter = crate::store::JobFilter {
        limit,
        ..Default::default()
    };
    let list = crate::surface::web::model::job_list(&open(cfg)?, &filter)?;
    crate::surface::web::model::to_json(&list)
}

/// `sdci-host jobs show ID --json`: the shape `GET /api/v1/jobs/{id}` answers.
pub fn show_json(cfg: &Config, id: &str) -> Result<String> {
    let logs = crate::joblog::LiveLogs::default();
    let detail = crate::surface::web::model::job_detail(&open(cfg)?, cfg, &logs, id)?
        .ok_or_else(|| HostError::NoSuchJob(id.to_owned()))?;
    crate::surface::web::model::to_json(&detail)
}

/// `sdci-host jobs cancel ID`: `true` if it ended at once (it was queued).
pub fn cancel(cfg: &Config, id: &str) -> Result<bool> {
    cancel_job(&open(cfg)?, id, "canceled by an operator")
}

/// Cancels job `id` (the CLI's and the job page's one rule): a queued job ends at once
/// (`true`), an active one is asked to stop (`false`, the service stops it when woken), an
/// ended one is an error.
pub fn cancel_job(store: &Store, id: &str, why: &str) -> Result<bool> {
    let job = store
        .job(id)?
        .ok_or_else(|| HostError::NoSuchJob(id.to_owned()))?;
    if job.state.is_terminal() {
        return Err(HostError::Invalid(format!(
            "job {id} already ended: {}; nothing to cancel",
            job.state.as_str()
        )));
    }
    match store.request_cancel(id, why)? {
        None => Err(HostError::NoSuchJob(id.to_owned())),
        Some(now) => Ok(now),
    }
}

/// `sdci-host jobs rerun ID`: a new job for the same repository, commit, branch and Qubes
/// version (with its own check run when they are on); returns its id.
pub fn rerun(cfg: &Config, id: &str) -> Result<JobId> {
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "an operator".into());
    let why = format!("sdci-host jobs rerun by {}", term_safe(&who));
    super::reruns::rerun(&open(cfg)?, "cli", id, &why)?
        .ok_or_else(|| HostError::NoSuchJob(id.to_owned()))
}

/// `sdci-host jobs rerun ID --from STAGE` (issue 18): a new job that reverts the VM holding
/// job `id`'s provisioned snapshot and runs only the stages from `from` on; refused (saying
/// why, offering the full run) when that snapshot is gone.
pub fn rerun_from(cfg: &Config, id: &str, from: &str) -> Result<JobId> {
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "an operator".into());
    let why = format!("sdci-host jobs rerun --from {from} by {}", term_safe(&who));
    match super::reruns::rerun_from(&open(cfg)?, None, id, from, &why)? {
        super::reruns::Answer::Queued(j) => Ok(j),
        super::reruns::Answer::Refused(text) => Err(HostError::Invalid(term_safe(&text))),
        _ => Err(HostError::NoSuchJob(id.to_owned())),
    }
}

/// `sdci-host vms`: the pools as the store knows them.
pub fn vms(cfg: &Config) -> Result<String> {
    let store = open(cfg)?;
    let mut out = String::new();
    for (version, pool) in &cfg.pools {
        let golden = store.golden_snapshot(version, &pool.golden_snapshot)?;
        let _ = writeln!(
            out,
            "pool {} (prefix {}, golden snapshot {})",
            term_safe(version),
            term_safe(&pool.prefix),
            term_safe(&golden)
        );
    }
    let vms = store.vms()?;
    if vms.is_empty() {
        out.push_str("no VMs in the store yet (serve lists each pool's VMs at start-up)\n");
    } else {
        let _ = writeln!(
            out,
            "  {:<24} {:<6} {:<12} {:<24} {:<8} LAST ERROR",
            "VM", "POOL", "STATE", "JOB", "FAILURES"
        );
    }
    for vm in vms {
        let state = match vm.state() {
            "quarantined" => "QUARANTINED",
            other => other,
        };
        let _ = writeln!(
            out,
            "  {:<24} {:<6} {:<12} {:<24} {:<8} {}",
            term_safe(&vm.name),
            term_safe(&vm.pool),
            state,
            opt_safe(vm.job_id.as_deref(), "-"),
            vm.consecutive_failures,
            opt_safe(vm.last_error.as_deref(), "")
        );
    }
    // Holds and provisioned snapshots (issue 18).
    let pools: Vec<String> = cfg.pools.keys().cloned().collect();
    out.push_str(&term_safe(&super::holds::vms_lines(&store, &pools)?));
    Ok(out)
}

/// `sdci-host jobs hold ID [--for DUR]` (issue 18).
pub fn hold(cfg: &Config, id: &str, for_: Option<&str>) -> Result<String> {
    let secs = match for_ {
        Some(t) => super::holds::parse_for(t).map_err(HostError::Invalid)?,
        None => 4 * 3600,
    };
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "an operator".into());
    super::holds::hold(&open(cfg)?, id, secs, &term_safe(&who))
}

/// `sdci-host jobs release ID` (issue 18).
pub fn release(cfg: &Config, id: &str) -> Result<String> {
    super::holds::release(&open(cfg)?, id)
}

/// `sdci-host vms unquarantine NAME`.
pub fn unquarantine(cfg: &Config, name: &str) -> Result<()> {
    if open(cfg)?.unquarantine(name)? {
        Ok(())
    } else {
        Err(HostError::Invalid(format!("no VM {name:?} in the store")))
    }
}

/// Whether a job state counts as finished, for the CLI's exit code.
pub fn finished(state: JobState) -> bool {
    state.is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_escaped_never_sent() {
        let osc52 = "feat\x1b]52;c;ZXZpbA==\x07";
        assert_eq!(term_safe(osc52), "feat\\x1b]52;c;ZXZpbA==\\x07");
        assert_eq!(
            term_safe("a\x1b[2J\x1b[H\nb\tc"),
            "a\\x1b[2J\\x1b[H\\x0ab\\x09c"
        );
        assert_eq!(
            term_safe("x\u{9b}y\u{202e}z\u{2028}"),
            "x\\u{9b}y\\u{202e}z\\u{2028}"
        );
        assert_eq!(term_safe("plain text, ünïcödé"), "plain text, ünïcödé");
    }
}
