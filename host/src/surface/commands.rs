//! Matrix triggers from GitHub (issue 20): `skip-ci`, pull-request labels and the `/sdci`
//! comment commands. The webhook handler calls in here after the signature and size checks;
//! everything below queues placeholders (`Store::insert_requested_job_once`) whose cells the matrix
//! intake chooses from the commit's own `.github/sdci.yml`, or cancels cell jobs.
//!
//! Invariants:
//! - A branch whose name contains `skip-ci`, or a pushed head commit whose message has
//!   `[skip ci]` (or `[ci skip]`), queues nothing.
//! - Every `pull_request` delivery of an allowed repository stores the pull request's labels,
//!   before its job is stored: a `synchronize` then runs the labelled cells too (the intake reads
//!   them), but only when that head is allowed to run at all (the fork rules of
//!   `surface::webhook`: the delivery's job exists only for a trusted or approved head).
//! - A label added (other than the fork-approval label) queues the cells it selects for the
//!   pull request's head; for a fork by an author not on the allow-list, only if that head sha
//!   was approved. Removing it cancels the live cells that label queued, and nothing else.
//! - Comment commands act only for users with write access (`permission` through the gateway,
//!   cached a minute); anyone else's command is logged and does nothing, and gets no reaction.
//! - A comment command acts on the pull request's head as GitHub has it when the command
//!   arrives (`sdci-agent pull-head`, contracts §5), never on the newest head the host happened
//!   to see (an `issue_comment` names no commit, and a `synchronize` may be lost or late). On a
//!   closed pull request `/sdci run` and `/sdci retry` get [`REFUSED`] and queue nothing (a
//!   cancel still cancels); a gateway outage answers 503 (GitHub redelivers), as the permission
//!   lookup does.
//! - A fork's head (head repository other than the base, author not in `fork_allow_users`)
//!   runs by a command only when that sha was approved, or when the sender is in
//!   `webhook.fork_approvers`: then the command is the approval, stored for that one sha with
//!   the job (as a label by an approver is). Any other writer's `/sdci run` or `/sdci retry`
//!   there gets [`REFUSED`] and a log line naming who may approve. `/sdci cancel` needs no
//!   approval.
//! - One `X-GitHub-Delivery` acts at most once (`labeled`, `unlabeled`, `issue_comment`), by the
//!   rule of every delivery (`deliveries`): the delivery is stored in the transaction of the
//!   placeholder it queues, or before a cancel; a redelivery answers 200 and does nothing, even
//!   after the cells it queued ended.
//! - A writer's command is acknowledged on its comment with a reaction through the gateway
//!   (`sdci-agent react`, contracts §5): [`ACCEPTED`] (`+1`) when it queued or canceled jobs,
//!   [`REFUSED`] (`confused`) when it was not understood or had nothing to act on (an unknown
//!   verb, a closed or unknown pull request, a fork's unapproved head, no failed cell to retry,
//!   nothing to cancel);
//!   also in the logs of the jobs it touched and in the delivery's answer. A failure of the host
//!   itself (503, GitHub redelivers) gets no reaction yet. The reaction is queued on its own
//!   task ([`acknowledge`]), so the webhook's answer never waits for it; that call is bounded by
//!   `[agent] timeout_secs` like every gateway call, and not retried (a lost reaction loses
//!   nothing but the acknowledgement, which the job's log keeps).

use crate::gateway::github::PullHead;
use crate::gateway::GatewayFailure;
use crate::hub::Hub;
use crate::orchestration::matrix::Request;
use crate::store::NewJob;
use crate::surface::webhook::{clone_url, Head, Label, Repo, User};
use axum::http::StatusCode;
use sdci_protocol::{Reason, RepoName};
use serde::Deserialize;

/// Why a push or pull request is skipped, if it is (see the module doc).
pub fn skip_ci(branch: &str, message: Option<&str>) -> Option<String> {
    if branch.contains("skip-ci") {
        return Some(format!("branch {branch} contains skip-ci"));
    }
    let m = message.unwrap_or("");
    if m.contains("[skip ci]") || m.contains("[ci skip]") {
        return Some("the commit message says [skip ci]".into());
    }
    None
}

#[derive(Deserialize)]
struct PullRequest {
    head: Head,
    user: User,
    #[serde(default)]
    labels: Vec<Label>,
    #[serde(default)]
    title: Option<String>,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequest,
    repository: Repo,
    #[serde(default)]
    label: Option<Label>,
    #[serde(default)]
    sender: Option<User>,
}

type Answer = (StatusCode, String);

fn ok(text: String) -> Option<Answer> {
    Some((StatusCode::OK, text))
}

/// A `pull_request` delivery's matrix part: labels stored; `labeled`/`unlabeled` of a run label
/// answered here (`Some`); everything else goes on to the webhook's own rules (`None`).
/// `delivery` is the delivery's `X-GitHub-Delivery`: a run label's delivery acts once.
pub async fn pull_request(hub: &Hub, body: &[u8], delivery: Option<&str>) -> Option<Answer> {
    let e: PullRequestEvent = serde_json::from_slice(body).ok()?;
    let cfg = &hub.cfg;
    let base = e.repository.full_name.as_str();
    if !cfg.webhook.allows_repo(base) {
        return None;
    }
    // A redelivery changes nothing (an old delivery's labels are not the pull request's now);
    // the webhook's own rules answer it as a duplicate.
    match delivery.map(|d| hub.store.delivery_seen(d)) {
        Some(Ok(true)) => return Some(duplicate()),
        Some(Err(err)) => {
            tracing::error!(error = %err, "reading the deliveries");
            return Some(store_down());
        }
        _ => {}
    }
    let labels: Vec<String> = e
        .pull_request
        .labels
        .iter()
        .map(|l| l.name.clone())
        .collect();
    if let Err(err) = hub.store.set_pr_labels(base, e.number, &labels) {
        tracing::error!(error = %err, "storing a pull request's labels");
    }
    let label = e.label.as_ref()?.name.clone();
    let is_run_label = matches!(e.action.as_str(), "labeled" | "unlabeled")
        && cfg.webhook.fork_label.as_deref() != Some(label.as_str());
    if !is_run_label {
        return None;
    }
    let pr = &e.pull_request;
    let sender = e.sender.as_ref().map_or("", |u| u.login.as_str());
    let repo: RepoName = base.parse().ok()?;
    let Ok(sha) = pr.head.sha.parse::<sdci_protocol::CommitSha>() else {
        return Some((StatusCode::BAD_REQUEST, "bad head sha".into()));
    };
    if e.action == "unlabeled" {
        if let Some(d) = delivery {
            match hub.store.claim_delivery(d, "pull_request") {
                Ok(true) => {}
                Ok(false) => return Some(duplicate()),
                Err(err) => {
                    tracing::error!(error = %err, "storing the delivery");
                    return Some(store_down());
                }
            }
        }
        let by = format!("label:{label}");
        let why = format!("label {label} removed by {sender}");
        let n = cancel_cells(hub, &repo, sha.as_str(), |queued_by| queued_by == by, &why);
        return ok(format!("canceled {n} cell job(s) label {label} queued"));
    }
    if let Some(why) = skip_ci(&pr.head.git_ref, None) {
        return ok(format!("ignored: {why}"));
    }
    let head_repo = pr.head.repo.as_ref().map(|r| r.full_name.as_str());
    let fork = head_repo != Some(base);
    if fork && !cfg.webhook.fork_allow_users.contains(&pr.user.login) {
        let approved = hub
            .store
            .fork_approvals(base, e.number)
            .unwrap_or_default()
            .iter()
            .any(|(s, _)| *s == sha.as_str());
        if !approved {
            tracing::info!(%label, sha = %sha, "label on a fork's unapproved head: no cells");
            return ok(format!(
                "ignored: label {label} on fork commit {} that has no approval",
                sha.short()
            ));
        }
    }
    let (clone_name, clone_raw) = match &pr.head.repo {
        Some(r) => (r.full_name.as_str(), r.clone_url.as_deref()),
        None => (base, e.repository.clone_url.as_deref()),
    };
    let job = NewJob {
        repo,
        sha,
        reason: Reason::PullRequest,
        branch: Some(pr.head.git_ref.clone()),
        supersede_key: Some(format!("{base}#{}", e.number)),
        clone_url: clone_url(&hub.cfg, clone_raw, clone_name),
        version: None,
        snapshot: None,
        update_first: false,
        commit_author: Some(pr.user.login.clone()),
        commit_subject: pr.title.clone(),
    };
    Some(queue(
        hub,
        &job,
        &Request::Label(label.clone()),
        &format!("label {label} added by {sender}"),
        delivery.map(|d| (d, "pull_request")),
        None,
    ))
}

fn duplicate() -> Answer {
    (StatusCode::OK, "duplicate delivery: nothing new".into())
}

fn store_down() -> Answer {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "could not read the store; redeliver".into(),
    )
}

/// Stores a placeholder asking for `request` (once per `delivery`: id, event; with a fork's
/// `approval`: pull request number, approver), notes `why` in its log, wakes the intake.
fn queue(
    hub: &Hub,
    job: &NewJob,
    request: &Request,
    why: &str,
    delivery: Option<(&str, &str)>,
    approval: Option<(u64, &str)>,
) -> Answer {
    let stored =
        hub.store
            .insert_requested_job_once(job, &request.to_text(), why, delivery, approval);
    match stored {
        Ok(None) => duplicate(),
        Ok(Some(id)) => {
            let _ = crate::joblog::append_log(
                &hub.cfg.log_dir(),
                id.as_str(),
                &format!("=== {why}: cells chosen by the commit's matrix\n"),
            );
            tracing::info!(job = %id, %why, "matrix request queued");
            hub.wake_all();
            (StatusCode::ACCEPTED, format!("queued job {id} ({why})"))
        }
        Err(e) => {
            tracing::error!(error = %e, "storing a matrix request failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not store the request; redeliver it".into(),
            )
        }
    }
}

/// Cancels the live cell jobs of a commit whose `queued_by` passes `which`; returns how many.
fn cancel_cells(
    hub: &Hub,
    repo: &RepoName,
    sha: &str,
    which: impl Fn(&str) -> bool,
    why: &str,
) -> usize {
    let jobs = hub.store.cell_jobs(repo.as_str(), sha).unwrap_or_default();
    let mut n = 0;
    for (j, c) in jobs {
        if !(j.state == crate::domain::JobState::Queued || j.state.is_active())
            || !which(&c.queued_by)
        {
            continue;
        }
        match hub.store.request_cancel(j.id.as_str(), why) {
            Ok(Some(queued)) => {
                if !queued {
                    hub.cancel_live(j.id.as_str());
                }
                let _ = crate::joblog::append_log(
                    &hub.cfg.log_dir(),
                    j.id.as_str(),
                    &format!("=== {why}: canceled\n"),
                );
                n += 1;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(job = %j.id, error = %e, "canceling a cell"),
        }
    }
    if n > 0 {
        hub.wake_all();
    }
    n
}

#[derive(Deserialize)]
struct Issue {
    number: u64,
    /// Present when the issue is a pull request.
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Comment {
    /// GitHub's id of the comment (what a reaction goes on).
    #[serde(default)]
    id: Option<u64>,
    body: String,
    user: User,
}

/// The reaction on a writer's command that was carried out.
pub const ACCEPTED: &str = "+1";
/// The reaction on a writer's command that was not understood or had nothing to act on.
pub const REFUSED: &str = "confused";

/// Reacts with `content` to comment `comment_id` of `repo` on a task of its own (the webhook's
/// answer does not wait; the call is bounded by the gateway's timeout, and logged).
pub fn acknowledge(hub: &Hub, repo: &str, comment_id: Option<u64>, content: &'static str) {
    let Some(id) = comment_id else {
        tracing::warn!(%repo, "comment command without a comment id: no reaction");
        return;
    };
    let gateway = hub.github.clone();
    let repo = repo.to_owned();
    tokio::spawn(async move {
        match gateway.react(&repo, id, content).await {
            Ok(()) => tracing::info!(%repo, comment = id, content, "comment command acknowledged"),
            Err(e) => tracing::warn!(%repo, comment = id, content, error = %e,
                "reacting to the comment command failed; the job logs keep the acknowledgement"),
        }
    });
}

#[derive(Deserialize)]
struct CommentEvent {
    action: String,
    issue: Issue,
    comment: Comment,
    repository: Repo,
}

/// A comment command, parsed from the comment's first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Vec<String>),
    Retry,
    Cancel,
}

/// `/sdci run [version] [env] [scenario]`, `/sdci retry`, `/sdci cancel` on the first line;
/// anything else is no command (`None`), an unknown verb an error saying the verbs.
pub fn parse_command(body: &str) -> Option<Result<Command, String>> {
    let line = body.lines().next()?.trim();
    let mut words = line.split_whitespace();
    if words.next()? != "/sdci" {
        return None;
    }
    let verb = words.next().unwrap_or("");
    let rest: Vec<String> = words.take(8).map(str::to_owned).collect();
    Some(match verb {
        "run" => Ok(Command::Run(rest)),
        "retry" if rest.is_empty() => Ok(Command::Retry),
        "cancel" if rest.is_empty() => Ok(Command::Cancel),
        other => Err(format!(
            "/sdci {}: the commands are run [version] [env] [scenario], retry, cancel",
            other.chars().take(20).collect::<String>()
        )),
    })
}

/// An `issue_comment` delivery (`delivery`: its `X-GitHub-Delivery`): a `/sdci` command on a
/// pull request, from a user with write access, acts on the pull request's head as GitHub has
/// it now (see the module doc).
pub async fn comment(hub: &Hub, body: &[u8], delivery: Option<&str>) -> Answer {
    let e: CommentEvent = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("bad issue_comment payload: {err}"),
            )
        }
    };
    let cfg = &hub.cfg;
    let repo_name = e.repository.full_name.as_str();
    if !cfg.webhook.comment_commands {
        return (StatusCode::OK, "ignored: comment commands are off".into());
    }
    if !cfg.webhook.allows_repo(repo_name) {
        return (
            StatusCode::OK,
            format!("ignored: repository {repo_name} not configured"),
        );
    }
    if e.action != "created" || e.issue.pull_request.is_none() {
        return (
            StatusCode::OK,
            "ignored: not a new comment on a pull request".into(),
        );
    }
    let parsed = match parse_command(&e.comment.body) {
        None => return (StatusCode::OK, "ignored: no /sdci command".into()),
        Some(p) => p,
    };
    match delivery.map(|d| hub.store.delivery_seen(d)) {
        Some(Ok(true)) => return duplicate(),
        Some(Err(err)) => {
            tracing::error!(error = %err, "reading the deliveries");
            return store_down();
        }
        _ => {}
    }
    let login = e.comment.user.login.as_str();
    // One budget for both gateway calls (permission, then the head): GitHub waits 10 s.
    let deadline = tokio::time::Instant::now() + GATEWAY_WAIT;
    let permission =
        tokio::time::timeout_at(deadline, hub.permissions.get(&hub.github, repo_name, login)).await;
    match permission {
        Ok(Ok(p)) if p.can_write() => {}
        Ok(Ok(p)) => {
            tracing::warn!(%login, repo = %repo_name, permission = p.as_str(), command = ?parsed,
                "comment command refused: no write access; nothing done");
            return (
                StatusCode::OK,
                format!(
                    "ignored: {login} has {} access to {repo_name}; /sdci needs write",
                    p.as_str()
                ),
            );
        }
        Ok(Err(err)) => {
            tracing::warn!(%login, error = %err, "comment command: permission unknown; nothing done");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not check the commenter's permission; redeliver".into(),
            );
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not check the commenter's permission in time; redeliver".into(),
            )
        }
    }
    let comment_id = e.comment.id;
    let ack = |content| acknowledge(hub, repo_name, comment_id, content);
    let command = match parsed {
        Ok(c) => c,
        Err(why) => {
            ack(REFUSED);
            return (StatusCode::OK, format!("ignored: {why}"));
        }
    };
    let number = e.issue.number;
    let head = match pull_head(hub, repo_name, number, deadline).await {
        Ok(h) => h,
        Err(Refusal::Redeliver(answer)) => return answer,
        Err(Refusal::Refused(why)) => {
            ack(REFUSED);
            return (StatusCode::OK, format!("ignored: {why}"));
        }
    };
    let Ok(repo) = repo_name.parse::<RepoName>() else {
        return (StatusCode::BAD_REQUEST, "bad repository name".into());
    };
    let why = match &command {
        Command::Run(w) if w.is_empty() => format!("/sdci run by {login}"),
        Command::Run(w) => format!("/sdci run {} by {login}", w.join(" ")),
        Command::Retry => format!("/sdci retry by {login}"),
        Command::Cancel => format!("/sdci cancel by {login}"),
    };
    // A closed pull request runs nothing more; what still runs of it may be canceled.
    if !head.is_open() && command != Command::Cancel {
        ack(REFUSED);
        return (
            StatusCode::OK,
            format!(
                "ignored: pull request #{number} is {} on GitHub",
                head.state
            ),
        );
    }
    let head_repo = head.repo.as_ref().map_or(repo_name, RepoName::as_str);
    let placeholder = NewJob {
        repo: repo.clone(),
        sha: head.sha.clone(),
        reason: Reason::PullRequest,
        branch: Some(head.head_ref.clone()),
        supersede_key: Some(format!("{repo_name}#{number}")),
        clone_url: clone_url(&hub.cfg, None, head_repo),
        version: None,
        snapshot: None,
        update_first: false,
        commit_author: Some(head.user.clone()),
        commit_subject: head.title.clone(),
    };
    let request = match command {
        Command::Run(words) => Request::Select {
            login: login.to_owned(),
            words,
        },
        Command::Retry => {
            let failed = failed_cells(hub, repo_name, head.sha.as_str());
            if failed.is_empty() {
                ack(REFUSED);
                return (
                    StatusCode::OK,
                    format!("ignored: no failed cell of {}", head.sha.short()),
                );
            }
            Request::Cells(failed)
        }
        Command::Cancel => {
            return cancel(hub, &repo, number, &head, &why, delivery, ack);
        }
    };
    let approval = match fork_approval(hub, repo_name, number, &head, login) {
        Ok(a) => a,
        Err(why) => {
            ack(REFUSED);
            return (StatusCode::OK, format!("ignored: {why}"));
        }
    };
    let answer = queue(
        hub,
        &placeholder,
        &request,
        &why,
        delivery.map(|d| (d, "issue_comment")),
        approval.as_ref().map(|a| (number, a.as_str())),
    );
    // A queued request is carried out (`+1`); a failure to store it is redelivered (no
    // reaction), and so is a duplicate (it was acknowledged the first time).
    if answer.0 == StatusCode::ACCEPTED {
        ack(ACCEPTED);
    }
    answer
}

/// How long a command waits for the gateway, both calls together (GitHub gives a delivery
/// 10 s in all).
const GATEWAY_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// Why a command does not go on: GitHub should redeliver (the answer), or it is refused (why).
enum Refusal {
    Redeliver(Answer),
    Refused(String),
}

/// Pull request `number`'s head as GitHub has it now.
async fn pull_head(
    hub: &Hub,
    repo: &str,
    number: u64,
    deadline: tokio::time::Instant,
) -> Result<PullHead, Refusal> {
    let asked = tokio::time::timeout_at(deadline, hub.github.pull_head(repo, number)).await;
    match asked {
        Ok(Ok(Some(h))) => Ok(h),
        Ok(Ok(None)) => Err(Refusal::Refused(format!(
            "GitHub has no pull request #{number} in {repo}"
        ))),
        Ok(Err(err)) if err.kind() == GatewayFailure::Refused => {
            tracing::error!(%repo, number, error = %err,
                "reading the pull request was refused: the GitHub App needs the Pull requests \
                 (read) permission; the command does nothing");
            Err(Refusal::Refused(format!(
                "could not read pull request #{number}: {err}"
            )))
        }
        Ok(Err(err)) => {
            tracing::warn!(%repo, number, error = %err,
                "comment command: the pull request's head is unknown; nothing done");
            Err(Refusal::Redeliver((
                StatusCode::SERVICE_UNAVAILABLE,
                "could not read the pull request's head; redeliver".into(),
            )))
        }
        Err(_) => Err(Refusal::Redeliver((
            StatusCode::SERVICE_UNAVAILABLE,
            "could not read the pull request's head in time; redeliver".into(),
        ))),
    }
}

/// Whether `login`'s command may run `head`: `Ok(None)` for a head of the repository itself,
/// of a trusted author or already approved; `Ok(Some(login))` when this command approves it
/// (`login` is in `fork_approvers`); else why not, naming who may approve.
fn fork_approval(
    hub: &Hub,
    repo: &str,
    number: u64,
    head: &PullHead,
    login: &str,
) -> Result<Option<String>, String> {
    let w = &hub.cfg.webhook;
    let fork = head.repo.as_ref().map(RepoName::as_str) != Some(repo);
    if !fork || w.fork_allow_users.contains(&head.user) {
        return Ok(None);
    }
    let approved = hub
        .store
        .fork_approvals(repo, number)
        .map_err(|e| format!("could not read the approvals: {e}"))?
        .iter()
        .any(|(s, _)| *s == head.sha.as_str());
    if approved {
        return Ok(None);
    }
    if w.fork_approvers.iter().any(|a| a == login) {
        tracing::info!(%repo, number, sha = %head.sha, approver = %login,
            "a fork's head approved by a comment command");
        return Ok(Some(login.to_owned()));
    }
    let who = if w.fork_approvers.is_empty() {
        "nobody (webhook.fork_approvers is empty)".to_owned()
    } else {
        w.fork_approvers.join(", ")
    };
    tracing::warn!(%repo, number, sha = %head.sha, %login, approvers = %who,
        "comment command refused: a fork's head needs an approval, which only \
         webhook.fork_approvers may give");
    Err(format!(
        "fork commit {} has no approval; only {who} may approve it",
        head.sha.short()
    ))
}

/// `/sdci cancel`: the delivery claimed first, then every live job of the head canceled.
fn cancel(
    hub: &Hub,
    repo: &RepoName,
    number: u64,
    head: &PullHead,
    why: &str,
    delivery: Option<&str>,
    ack: impl Fn(&'static str),
) -> Answer {
    if let Some(d) = delivery {
        match hub.store.claim_delivery(d, "issue_comment") {
            Ok(true) => {}
            Ok(false) => return duplicate(),
            Err(err) => {
                tracing::error!(error = %err, "storing the delivery");
                return store_down();
            }
        }
    }
    let n = cancel_cells(hub, repo, head.sha.as_str(), |_| true, why)
        + cancel_plain(hub, repo.as_str(), number, head, why);
    hub.wake_all();
    ack(if n > 0 { ACCEPTED } else { REFUSED });
    (
        StatusCode::OK,
        format!("{why}: {n} job(s) of {} canceled", head.sha.short()),
    )
}

/// The cells of a commit whose newest job failed (`failure` or `error`).
fn failed_cells(hub: &Hub, repo: &str, sha: &str) -> Vec<String> {
    let jobs = hub.store.cell_jobs(repo, sha).unwrap_or_default();
    let mut seen = Vec::new();
    let mut failed = Vec::new();
    for (j, c) in &jobs {
        if seen.contains(&c.name) {
            continue;
        }
        seen.push(c.name.clone());
        if matches!(
            j.state,
            crate::domain::JobState::Failure | crate::domain::JobState::Error
        ) {
            failed.push(c.name.clone());
        }
    }
    failed
}

/// Cancels the pull request's newest job when it is a live plain job (no cell) of `head`.
fn cancel_plain(hub: &Hub, repo: &str, number: u64, head: &PullHead, why: &str) -> usize {
    let Ok(Some(j)) = hub.store.newest_pr_job(repo, number) else {
        return 0;
    };
    let live = j.state == crate::domain::JobState::Queued || j.state.is_active();
    if j.sha != head.sha || !live || !matches!(hub.store.job_cell(j.id.as_str()), Ok(None)) {
        return 0;
    }
    match hub.store.request_cancel(j.id.as_str(), why) {
        Ok(Some(false)) => {
            hub.cancel_live(j.id.as_str());
            1
        }
        Ok(Some(true)) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_ci_is_in_the_branch_name_or_the_commit_message() {
        assert!(skip_ci("feature-skip-ci", None).is_some());
        assert!(skip_ci("main", Some("Fix\n\n[skip ci]")).is_some());
        assert!(skip_ci("main", Some("[ci skip] docs")).is_some());
        assert!(skip_ci("main", Some("skip ci")).is_none());
        assert!(skip_ci("main", None).is_none());
    }

    #[test]
    fn comment_commands_are_read_from_the_first_line() {
        assert_eq!(
            parse_command("/sdci run 4.3 dev\nplease"),
            Some(Ok(Command::Run(vec!["4.3".into(), "dev".into()])))
        );
        assert_eq!(parse_command("/sdci run"), Some(Ok(Command::Run(vec![]))));
        assert_eq!(parse_command(" /sdci retry "), Some(Ok(Command::Retry)));
        assert_eq!(parse_command("/sdci cancel"), Some(Ok(Command::Cancel)));
        assert!(matches!(parse_command("/sdci rerun"), Some(Err(_))));
        assert!(matches!(parse_command("/sdci retry now"), Some(Err(_))));
        assert_eq!(parse_command("looks good\n/sdci run"), None);
        assert_eq!(parse_command("/sdcix run"), None);
        assert_eq!(parse_command(""), None);
    }
}
