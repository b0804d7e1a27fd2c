//! `POST /hooks/github`: GitHub deliveries in, queued jobs out.
//!
//! Invariants:
//! - A missing or malformed `X-Hub-Signature-256` is refused with 401 before a byte of the body
//!   is read; the HMAC is then checked (constant time, over the raw bytes) before a single byte
//!   is parsed; no valid signature, no job: 401.
//! - The body is capped (`webhook.max_body_bytes`, 413 beyond it, at once when
//!   `Content-Length` says so) and must arrive within `http.body_timeout_secs` (else 408).
//! - One delivery id creates at most one job, and one repo+sha+reason at most one live job: the
//!   delivery, the job, its `pending` status and the superseding of older jobs of the same branch
//!   are one store transaction.
//! - The answer comes as soon as that transaction commits; everything slow (Qubes version lookup,
//!   statuses, VMs) happens after, in other tasks woken through [`crate::hub::Hub`].
//! - Unknown or unwanted events get 2xx "ignored", never 5xx.
//! - Only the repositories in `webhook.repos` are accepted (`serve` refuses an empty list).
//! - A fork's pull request runs only for a head commit someone trusted approved: its author is
//!   in `fork_allow_users`, or a login in `fork_approvers` added `fork_label` while that commit
//!   was the head (the `labeled` event's `sender`). The approval is stored for that one sha
//!   (`fork_approvals`, in the delivery's transaction); a `synchronize` (a new push to the fork),
//!   `opened` or `reopened` queues a job only if its head sha was approved, so every new commit
//!   needs a new approval (remove and add the label again). The label's mere presence on the pull
//!   request approves nothing, and the label is not removed through GitHub (the host holds no
//!   token that may edit issues): the ignore message says what to do.
//! - A branch named `…skip-ci…` or a head commit saying `[skip ci]` queues nothing; run labels
//!   and `/sdci` comments are `surface::commands` (issue 20).
//! - Re-runs from GitHub (contracts §10): `check_run` `rerequested`, `check_run`
//!   `requested_action` with identifier `rerun`, and `check_suite` `rerequested` each queue new
//!   jobs (never "already covered"), only for an allowed repository and only when the `sender`
//!   has write access (`permission` through the gateway, cached a minute); otherwise the delivery
//!   is logged and answered 2xx without a job. The job a check run belongs to is its
//!   `external_id`, and it must be of the delivery's repository and commit.

use crate::config::Config;
use crate::domain::pattern::star_match;
use crate::domain::CommitInfo;
use crate::hub::Hub;
use crate::store::{Delivery, ForkApproval, Ingest, NewJob, Rerun};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use sdci_protocol::{CommitSha, Reason, RepoName};
use serde::Deserialize;
use std::sync::Arc;

/// What a delivery amounts to once filtered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Job(NewJobSpec),
    /// A re-run someone asked for on GitHub; it still needs the sender's write access.
    Rerun(RerunSpec),
    Ignore(String),
}

/// A re-run asked for from GitHub (contracts §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerunSpec {
    pub repo: RepoName,
    /// Who pressed the button (needs write access).
    pub sender: String,
    pub target: RerunTarget,
    /// What asked, for logs and the new job's history (`check_run rerequested`, …).
    pub what: String,
}

/// What a re-run covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunTarget {
    /// The job of one check run (its `external_id`), at that commit.
    Job { id: String, sha: CommitSha },
    /// Every job of a commit (a check suite).
    Commit(CommitSha),
}

/// The buttons of a check run that re-run its job (`orchestration::checks` puts them there);
/// more actions get their own arm in [`decide`].
const RERUN_ACTIONS: &[&str] = &[
    crate::orchestration::checks::RERUN_ACTION,
    crate::orchestration::stages::RERUN_TESTS_ACTION,
    crate::orchestration::stages::HOLD_ACTION,
];

#[derive(Deserialize)]
struct CheckRunEvent {
    action: String,
    check_run: CheckRun,
    repository: Repo,
    #[serde(default)]
    requested_action: Option<RequestedAction>,
    sender: User,
}

#[derive(Deserialize)]
struct CheckRun {
    head_sha: String,
    #[serde(default)]
    external_id: Option<String>,
}

#[derive(Deserialize)]
struct RequestedAction {
    identifier: String,
}

#[derive(Deserialize)]
struct CheckSuiteEvent {
    action: String,
    check_suite: CheckSuite,
    repository: Repo,
    sender: User,
}

#[derive(Deserialize)]
struct CheckSuite {
    head_sha: String,
}

/// A job the delivery asks for (before it reaches the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJobSpec {
    pub repo: RepoName,
    pub sha: CommitSha,
    pub reason: Reason,
    pub branch: String,
    pub supersede_key: String,
    pub clone_url: String,
    /// The head commit's author and subject (push), or the pull request's author and title.
    pub commit: CommitInfo,
    /// For a fork's pull request whose author is not on the allow-list: the approval this
    /// delivery records (`labeled` by an approver) or needs (any other action).
    pub approval: Option<ForkApproval>,
}

/// The payload parts `surface::commands` reads too.
#[derive(Deserialize)]
pub(super) struct Repo {
    pub(super) full_name: String,
    #[serde(default)]
    pub(super) clone_url: Option<String>,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repo,
    /// `null` for a deleted ref; read in the same pass as the rest (no second parse).
    #[serde(default)]
    head_commit: Option<HeadCommit>,
}

#[derive(Deserialize)]
struct HeadCommit {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    author: Option<CommitAuthor>,
}

#[derive(Deserialize)]
struct CommitAuthor {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequest,
    repository: Repo,
    #[serde(default)]
    label: Option<Label>,
    /// Who caused the event (for `labeled`: who added the label).
    #[serde(default)]
    sender: Option<User>,
}

#[derive(Deserialize)]
struct PullRequest {
    head: Head,
    user: User,
    #[serde(default)]
    title: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Head {
    pub(super) sha: String,
    #[serde(rename = "ref")]
    pub(super) git_ref: String,
    /// `null` when the fork was deleted.
    pub(super) repo: Option<Repo>,
}

#[derive(Deserialize)]
pub(super) struct User {
    pub(super) login: String,
}

#[derive(Deserialize)]
pub(super) struct Label {
    pub(super) name: String,
}

/// Checks `sha256=<hex>` against the HMAC-SHA256 of `body` under `secret`, in constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, &sig).is_ok()
}

/// Whether the header has the shape of a GitHub signature, `sha256=` and 64 hex digits: what
/// can be decided before the body is read.
pub fn signature_well_formed(header: Option<&str>) -> bool {
    header
        .and_then(|h| h.strip_prefix("sha256="))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `sha256=<hex>` for a body, as GitHub computes it (used by tests and the benchmark).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

/// The repository and commit of a payload, parsed once (`what` names the event in the error).
fn ids(repo: &str, sha: &str, what: &str) -> Result<(RepoName, CommitSha), String> {
    match (repo.parse::<RepoName>(), sha.parse::<CommitSha>()) {
        (Ok(r), Ok(s)) => Ok((r, s)),
        _ => Err(format!(
            "{what} payload has an invalid repository name or sha"
        )),
    }
}

/// Applies the configured rules to a signed, parsed delivery.
pub fn decide(cfg: &Config, event: &str, body: &[u8]) -> Result<Decision, String> {
    let ignore = |s: String| Ok(Decision::Ignore(s));
    let repo_allowed = |r: &str| cfg.webhook.allows_repo(r);
    match event {
        "ping" => ignore("pong".into()),
        "push" => {
            let p: Push =
                serde_json::from_slice(body).map_err(|e| format!("bad push payload: {e}"))?;
            if p.deleted || p.after.bytes().all(|b| b == b'0') {
                return ignore("deleted ref".into());
            }
            if !repo_allowed(&p.repository.full_name) {
                return ignore(format!(
                    "repository {} not configured",
                    p.repository.full_name
                ));
            }
            let (repo, sha) = ids(&p.repository.full_name, &p.after, "push")?;
            let (name, patterns, kind) = if let Some(b) = p.git_ref.strip_prefix("refs/heads/") {
                (b, &cfg.webhook.branches, "branch")
            } else if let Some(t) = p.git_ref.strip_prefix("refs/tags/") {
                (t, &cfg.webhook.tags, "tag")
            } else {
                return ignore(format!("ref {} is neither a branch nor a tag", p.git_ref));
            };
            if !patterns.iter().any(|pat| star_match(pat, name)) {
                return ignore(format!("{kind} {name} not selected by the filters"));
            }
            let message = p.head_commit.as_ref().and_then(|c| c.message.as_deref());
            if let Some(why) = super::commands::skip_ci(name, message) {
                return ignore(why);
            }
            let clone_url = clone_url(
                cfg,
                p.repository.clone_url.as_deref(),
                &p.repository.full_name,
            );
            let commit = match &p.head_commit {
                Some(c) => {
                    let author = c.author.as_ref();
                    CommitInfo::from_commit(
                        author.and_then(|a| a.name.as_deref()),
                        author.and_then(|a| a.username.as_deref()),
                        c.message.as_deref(),
                    )
                }
                None => CommitInfo::default(),
            };
            Ok(Decision::Job(NewJobSpec {
                supersede_key: format!("{}@{}", p.repository.full_name, p.git_ref),
                repo,
                sha,
                reason: Reason::Push,
                branch: name.to_owned(),
                clone_url,
                commit,
                approval: None,
            }))
        }
        "pull_request" => {
            if !cfg.webhook.pull_requests {
                return ignore("pull requests are not tested here".into());
            }
            let e: PullRequestEvent = serde_json::from_slice(body)
                .map_err(|e| format!("bad pull_request payload: {e}"))?;
            let base = &e.repository.full_name;
            if !repo_allowed(base) {
                return ignore(format!("repository {base} not configured"));
            }
            let pr = &e.pull_request;
            let head_repo = pr.head.repo.as_ref().map(|r| r.full_name.as_str());
            let fork = head_repo != Some(base.as_str());
            let trusted_author = cfg.webhook.fork_allow_users.contains(&pr.user.login);
            let label = cfg.webhook.fork_label.as_deref();
            let approval = match e.action.as_str() {
                "opened" | "synchronize" | "reopened" if !fork || trusted_author => None,
                "opened" | "synchronize" | "reopened" if label.is_some() => {
                    Some(ForkApproval::Require { number: e.number })
                }
                "opened" | "synchronize" | "reopened" => {
                    return ignore(format!(
                        "pull request from a fork by {} who is not on the allow-list",
                        pr.user.login
                    ))
                }
                // Adding the trust label to a fork's PR approves its current head commit.
                "labeled"
                    if fork
                        && !trusted_author
                        && label.is_some()
                        && e.label.as_ref().map(|l| l.name.as_str()) == label =>
                {
                    let sender = e.sender.as_ref().map_or("", |u| u.login.as_str());
                    if !cfg.webhook.fork_approvers.iter().any(|a| a == sender) {
                        return ignore(format!(
                            "label {} added by {sender:?}, who is not in webhook.fork_approvers: \
                             no approval",
                            label.unwrap_or_default()
                        ));
                    }
                    Some(ForkApproval::Record {
                        number: e.number,
                        approver: sender.to_owned(),
                    })
                }
                _ => return ignore(format!("pull_request action {} not tested", e.action)),
            };
            if let Some(why) = super::commands::skip_ci(&pr.head.git_ref, None) {
                return ignore(why);
            }
            let (repo, sha) = ids(base, &pr.head.sha, "pull_request")?;
            let (clone_name, clone_raw) = match &pr.head.repo {
                Some(r) => (r.full_name.as_str(), r.clone_url.as_deref()),
                None => (base.as_str(), e.repository.clone_url.as_deref()),
            };
            let clone_url = clone_url(cfg, clone_raw, clone_name);
            Ok(Decision::Job(NewJobSpec {
                repo,
                sha,
                reason: Reason::PullRequest,
                branch: pr.head.git_ref.clone(),
                supersede_key: format!("{base}#{}", e.number),
                clone_url,
                commit: CommitInfo {
                    author: Some(pr.user.login.clone()),
                    subject: pr.title.clone(),
                },
                approval,
            }))
        }
        "check_run" => {
            let e: CheckRunEvent =
                serde_json::from_slice(body).map_err(|e| format!("bad check_run payload: {e}"))?;
            let what = match (e.action.as_str(), &e.requested_action) {
                ("rerequested", _) => "check_run rerequested".to_owned(),
                ("requested_action", Some(a)) if RERUN_ACTIONS.contains(&a.identifier.as_str()) => {
                    format!("check_run requested_action {}", a.identifier)
                }
                ("requested_action", a) => {
                    return ignore(format!(
                        "check_run action {:?} not known",
                        a.as_ref().map_or("", |a| a.identifier.as_str())
                    ))
                }
                (other, _) => return ignore(format!("check_run action {other} not handled")),
            };
            let name = &e.repository.full_name;
            if !repo_allowed(name) {
                return ignore(format!("repository {name} not configured"));
            }
            let (repo, sha) = ids(name, &e.check_run.head_sha, "check_run")?;
            let Some(id) = e.check_run.external_id.filter(|x| !x.is_empty()) else {
                return ignore("check run without an external_id: not one of sdci's".into());
            };
            Ok(Decision::Rerun(RerunSpec {
                repo,
                sender: e.sender.login,
                target: RerunTarget::Job { id, sha },
                what,
            }))
        }
        "check_suite" => {
            let e: CheckSuiteEvent = serde_json::from_slice(body)
                .map_err(|e| format!("bad check_suite payload: {e}"))?;
            if e.action != "rerequested" {
                return ignore(format!("check_suite action {} not handled", e.action));
            }
            let name = &e.repository.full_name;
            if !repo_allowed(name) {
                return ignore(format!("repository {name} not configured"));
            }
            let (repo, sha) = ids(name, &e.check_suite.head_sha, "check_suite")?;
            Ok(Decision::Rerun(RerunSpec {
                repo,
                sender: e.sender.login,
                target: RerunTarget::Commit(sha),
                what: "check_suite rerequested".into(),
            }))
        }
        other => ignore(format!("event {other} not handled")),
    }
}

/// How long the webhook waits for the sender's permission (GitHub gives a delivery 10 s).
const PERMISSION_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// A re-run from GitHub: the sender's write access checked, then the new jobs stored.
async fn rerun(
    hub: &Hub,
    spec: RerunSpec,
    delivery: Option<&str>,
    event: &str,
) -> (StatusCode, String) {
    let repo = spec.repo.as_str();
    let sender = spec.sender.as_str();
    let permission = tokio::time::timeout(
        PERMISSION_WAIT,
        hub.permissions.get(&hub.github, repo, sender),
    )
    .await;
    let permission = match permission {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::warn!(what = %spec.what, %sender, error = %e,
                "re-run: the sender's permission could not be checked; nothing queued");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not check the sender's permission; redeliver".into(),
            );
        }
        Err(_) => {
            tracing::warn!(what = %spec.what, %sender,
                "re-run: no answer about the sender's permission in time; nothing queued");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not check the sender's permission in time; redeliver".into(),
            );
        }
    };
    if !permission.can_write() {
        tracing::warn!(what = %spec.what, %sender, %repo, permission = permission.as_str(),
            "re-run refused: the sender has no write access; nothing queued");
        return (
            StatusCode::OK,
            format!(
                "ignored: {sender} has no write access to {repo} (permission {}); a re-run \
                 needs write",
                permission.as_str()
            ),
        );
    }
    let why = format!("{} by {sender}", spec.what);
    let result = match &spec.target {
        RerunTarget::Job { id, sha } => match hub.store.job(id) {
            // "Hold VM" (issue 18): the job's VM stays on when it ends, for 4 h.
            Ok(Some(j))
                if j.repo == spec.repo
                    && &j.sha == sha
                    && spec
                        .what
                        .ends_with(crate::orchestration::stages::HOLD_ACTION) =>
            {
                if j.state.is_terminal() {
                    return (
                        StatusCode::OK,
                        format!("ignored: job {id} already ended; its VM is not kept on"),
                    );
                }
                return match hub.store.request_hold(
                    id,
                    sender,
                    super::web::actions::DEFAULT_HOLD_SECS,
                ) {
                    Ok(()) => {
                        tracing::info!(job = %id, %sender, "hold of the VM asked for");
                        (
                            StatusCode::ACCEPTED,
                            format!("job {id}'s VM is held for 4 h when it ends"),
                        )
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storing a hold request failed");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "could not store the hold; redeliver it".into(),
                        )
                    }
                };
            }
            // "Re-run tests" (issue 18): only the test stage, from the provisioned snapshot.
            Ok(Some(j))
                if j.repo == spec.repo
                    && &j.sha == sha
                    && spec
                        .what
                        .ends_with(crate::orchestration::stages::RERUN_TESTS_ACTION) =>
            {
                use crate::surface::reruns::{rerun_from, Answer};
                let stage = crate::domain::stages::TEST;
                return match rerun_from(&hub.store, delivery, id, stage, &why) {
                    Ok(Answer::Queued(new)) => {
                        tracing::info!(what = %spec.what, %sender, job = %new, "re-run of the tests queued");
                        hub.wake_all();
                        (StatusCode::ACCEPTED, format!("queued job {new}"))
                    }
                    Ok(Answer::Refused(text)) => {
                        tracing::warn!(what = %spec.what, %sender, %text, "re-run of the tests refused");
                        (StatusCode::OK, format!("ignored: {text}"))
                    }
                    Ok(Answer::DuplicateDelivery) => {
                        (StatusCode::OK, "duplicate delivery: nothing new".into())
                    }
                    Ok(Answer::NoSuchJob) => (StatusCode::OK, "ignored: no job to re-run".into()),
                    Err(e) => {
                        tracing::error!(error = %e, "storing a re-run failed");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "could not store the re-run; redeliver it".into(),
                        )
                    }
                };
            }
            Ok(Some(j)) if j.repo == spec.repo && &j.sha == sha => {
                hub.store.rerun_job(delivery, event, id, &why)
            }
            Ok(_) => {
                tracing::warn!(what = %spec.what, job = %id, %repo,
                    "re-run: no such job of this repository and commit; nothing queued");
                return (
                    StatusCode::OK,
                    format!("ignored: no job {id} of {repo} at {}", sha.short()),
                );
            }
            Err(e) => Err(e),
        },
        RerunTarget::Commit(sha) => hub
            .store
            .rerun_commit(delivery, event, &spec.repo, sha, &why),
    };
    match result {
        Ok(Rerun::Created(ids)) => {
            tracing::info!(what = %spec.what, %sender, jobs = ?ids, "re-run queued");
            hub.wake_all();
            let ids: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
            (
                StatusCode::ACCEPTED,
                format!("queued job {}", ids.join(", ")),
            )
        }
        Ok(Rerun::DuplicateDelivery) => (StatusCode::OK, "duplicate delivery: nothing new".into()),
        Ok(Rerun::NothingToRerun) => {
            tracing::warn!(what = %spec.what, %repo, "re-run: no job to re-run");
            (StatusCode::OK, "ignored: no job to re-run".into())
        }
        Err(e) => {
            tracing::error!(error = %e, "storing a re-run failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not store the re-run; redeliver it".into(),
            )
        }
    }
}

/// The URL a job clones from: the configured override, else the payload's `https://` URL,
/// else GitHub's for `repo` (`surface::commands` uses it too).
pub(super) fn clone_url(cfg: &Config, from_payload: Option<&str>, repo: &str) -> String {
    if let Some(o) = &cfg.agent.clone_url_override {
        return o.clone();
    }
    match from_payload {
        Some(u) if u.starts_with("https://") => u.to_owned(),
        _ => format!("https://github.com/{repo}.git"),
    }
}

/// The handler.
pub async fn receive(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    // Before a byte of the body is read: no well-formed signature, no reading (an
    // unauthenticated client cannot make the host buffer anything).
    if !signature_well_formed(header("x-hub-signature-256")) {
        hub.metrics.count("webhook_rejected");
        tracing::warn!("webhook without a well-formed X-Hub-Signature-256 refused unread");
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let max = hub.cfg.webhook.max_body_bytes;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {max} bytes or unreadable"),
        )
    };
    if header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return too_large();
    }
    let limit = hub.cfg.http.body_timeout();
    let bytes = match tokio::time::timeout(limit, axum::body::to_bytes(body, max)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            tracing::warn!(secs = limit.as_secs(), "webhook body not received in time");
            return (
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {} s", limit.as_secs()),
            );
        }
    };
    if !signature_valid(
        hub.webhook_secret.expose().as_bytes(),
        &bytes,
        header("x-hub-signature-256"),
    ) {
        hub.metrics.count("webhook_rejected");
        tracing::warn!("webhook with a missing or wrong X-Hub-Signature-256 refused");
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    // GitHub's default for a new webhook is form encoding; say how to fix it (issue 21).
    if header("content-type").is_some_and(|t| !t.trim_start().starts_with("application/json")) {
        hub.metrics.count("webhook_rejected");
        tracing::warn!("webhook not in JSON refused: set its Content type to application/json");
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "set Content type to application/json in the webhook's settings on GitHub".into(),
        );
    }
    let event = header("x-github-event").unwrap_or("").to_owned();
    let delivery = header("x-github-delivery").map(str::to_owned);
    // Matrix triggers (issue 20): a pull request's labels, run labels, `/sdci` comments.
    match event.as_str() {
        "issue_comment" => {
            return super::commands::comment(&hub, &bytes, delivery.as_deref()).await
        }
        "pull_request" => {
            if let Some(answer) =
                super::commands::pull_request(&hub, &bytes, delivery.as_deref()).await
            {
                return answer;
            }
        }
        _ => {}
    }
    let decision = match decide(&hub.cfg, &event, &bytes) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(event = %event, error = %e, "webhook payload refused");
            return (StatusCode::BAD_REQUEST, e);
        }
    };
    let spec = match decision {
        Decision::Ignore(why) => {
            tracing::debug!(event = %event, why = %why, "webhook ignored");
            return (StatusCode::OK, format!("ignored: {why}"));
        }
        Decision::Rerun(spec) => return rerun(&hub, spec, delivery.as_deref(), &event).await,
        Decision::Job(spec) => spec,
    };
    let job = NewJob {
        repo: spec.repo,
        sha: spec.sha,
        reason: spec.reason,
        branch: Some(spec.branch),
        supersede_key: Some(spec.supersede_key),
        clone_url: spec.clone_url,
        version: if hub.cfg.agent.resolve_version {
            None
        } else {
            Some(hub.cfg.default_version.clone())
        },
        snapshot: None,
        update_first: false,
        commit_author: spec.commit.author,
        commit_subject: spec.commit.subject,
    };
    // Concurrent deliveries share one transaction (group commit); each answer comes after
    // the commit that holds its delivery.
    let ingest = hub
        .ingest
        .ingest(Delivery {
            id: delivery,
            event,
            job,
            approval: spec.approval,
        })
        .await;
    match ingest {
        Ok(Ingest::Created {
            job_id,
            superseded,
            stop_running,
        }) => {
            tracing::info!(job = %job_id, superseded = ?superseded, "job queued");
            for id in &stop_running {
                hub.cancel_live(id);
            }
            hub.wake_all();
            (StatusCode::ACCEPTED, format!("queued job {job_id}"))
        }
        Ok(Ingest::DuplicateDelivery) => (StatusCode::OK, "duplicate delivery: nothing new".into()),
        Ok(Ingest::DuplicateJob { job_id }) => {
            (StatusCode::OK, format!("already covered by job {job_id}"))
        }
        Ok(Ingest::NotApproved { sha }) => {
            tracing::info!(sha = %sha, "fork commit not approved; no job");
            (
                StatusCode::OK,
                format!(
                    "ignored: fork commit {} has no approval; an approver removes and adds the \
                     label again to test it",
                    sha.short()
                ),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "storing a delivery failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not store the delivery; redeliver it".into(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A config accepting `o/r` (plus `extra`'s `[webhook]` keys, if any).
    fn cfg(extra: &str) -> Config {
        let text = if extra.contains("[webhook]") {
            extra.replace("[webhook]\n", "[webhook]\nrepos = [\"o/r\"]\n")
        } else {
            format!("{extra}\n[webhook]\nrepos = [\"o/r\"]\n")
        };
        Config::parse(&text, Path::new("t")).unwrap()
    }

    fn push(r: &str, after: &str) -> Vec<u8> {
        serde_json::json!({"ref": r, "after": after, "deleted": false,
            "repository": {"full_name": "o/r", "clone_url": "https://github.com/o/r.git"}})
        .to_string()
        .into_bytes()
    }

    fn pr(action: &str, head_repo: &str, login: &str, labels: &[&str]) -> Vec<u8> {
        pr_by(action, head_repo, login, labels, login, &"b".repeat(40))
    }

    /// A `pull_request` event; `sender` caused it (for `labeled`: added the label `labels[0]`).
    fn pr_by(
        action: &str,
        head_repo: &str,
        login: &str,
        labels: &[&str],
        sender: &str,
        head: &str,
    ) -> Vec<u8> {
        let labels: Vec<_> = labels
            .iter()
            .map(|l| serde_json::json!({"name": l}))
            .collect();
        let mut v = serde_json::json!({"action": action, "number": 7,
            "pull_request": {"head": {"sha": head, "ref": "feature",
                "repo": {"full_name": head_repo, "clone_url": format!("https://github.com/{head_repo}.git")}},
                "user": {"login": login}, "labels": labels},
            "repository": {"full_name": "o/r"},
            "sender": {"login": sender}});
        if action == "labeled" {
            v["label"] = labels.first().cloned().unwrap_or_default();
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn signature_is_checked_over_the_raw_body() {
        let s = sign(b"k", b"body");
        assert!(signature_valid(b"k", b"body", Some(&s)));
        assert!(!signature_valid(b"k", b"body ", Some(&s)));
        assert!(!signature_valid(b"other", b"body", Some(&s)));
        assert!(!signature_valid(b"k", b"body", None));
        assert!(!signature_valid(b"k", b"body", Some("sha1=00")));
        assert!(signature_well_formed(Some(&s)));
        for bad in [
            None,
            Some("sha1=00"),
            Some("sha256="),
            Some("sha256=zz"),
            Some(" sha256=ab"),
        ] {
            assert!(!signature_well_formed(bad), "{bad:?}");
        }
        assert!(!signature_well_formed(Some(&format!(
            "sha256={}",
            "g".repeat(64)
        ))));
    }

    #[test]
    fn branch_pushes_follow_the_filters_and_tags_are_off_by_default() {
        let c = cfg("[webhook]\nbranches = [\"main\", \"release/*\"]\n");
        let sha = "a".repeat(40);
        assert!(matches!(
            decide(&c, "push", &push("refs/heads/main", &sha)),
            Ok(Decision::Job(_))
        ));
        assert!(matches!(
            decide(&c, "push", &push("refs/heads/release/1", &sha)),
            Ok(Decision::Job(_))
        ));
        assert!(matches!(
            decide(&c, "push", &push("refs/heads/dev", &sha)),
            Ok(Decision::Ignore(_))
        ));
        assert!(matches!(
            decide(&c, "push", &push("refs/tags/v1", &sha)),
            Ok(Decision::Ignore(_))
        ));
    }

    #[test]
    fn deleted_branch_pushes_are_ignored() {
        let c = cfg("");
        let d = decide(&c, "push", &push("refs/heads/main", &"0".repeat(40))).unwrap();
        assert!(
            matches!(d, Decision::Ignore(ref s) if s.contains("deleted")),
            "{d:?}"
        );
    }

    #[test]
    fn fork_pull_requests_need_the_allow_list_or_an_approval_of_the_head_commit() {
        let c = cfg(
            "[webhook]\nfork_allow_users = [\"alice\"]\nfork_label = \"ok-to-test\"\n\
                     fork_approvers = [\"maint\"]\n",
        );
        let job = |body: &[u8]| match decide(&c, "pull_request", body) {
            Ok(Decision::Job(j)) => j,
            other => panic!("{other:?}"),
        };
        // Same repository, or a fork by an allowed author: no approval involved.
        assert_eq!(job(&pr("opened", "o/r", "bob", &[])).approval, None);
        assert_eq!(job(&pr("opened", "m/r", "alice", &[])).approval, None);
        // A fork by anyone else needs an approval of its head sha, label or no label.
        let need = Some(ForkApproval::Require { number: 7 });
        assert_eq!(job(&pr("opened", "m/r", "bob", &[])).approval, need);
        assert_eq!(
            job(&pr("synchronize", "m/r", "bob", &["ok-to-test"])).approval,
            need,
            "the label's presence approves nothing"
        );
        // The label added by an approver records the approval; by anyone else, nothing.
        let labeled = pr_by(
            "labeled",
            "m/r",
            "bob",
            &["ok-to-test"],
            "maint",
            &"c".repeat(40),
        );
        assert_eq!(
            job(&labeled).approval,
            Some(ForkApproval::Record {
                number: 7,
                approver: "maint".into()
            })
        );
        let by_author = pr_by(
            "labeled",
            "m/r",
            "bob",
            &["ok-to-test"],
            "bob",
            &"c".repeat(40),
        );
        assert!(matches!(
            decide(&c, "pull_request", &by_author),
            Ok(Decision::Ignore(ref s)) if s.contains("fork_approvers")
        ));
        let other_label = pr_by("labeled", "m/r", "bob", &["bug"], "maint", &"c".repeat(40));
        assert!(matches!(
            decide(&c, "pull_request", &other_label),
            Ok(Decision::Ignore(_))
        ));
        assert!(matches!(
            decide(&c, "pull_request", &pr("closed", "o/r", "bob", &[])),
            Ok(Decision::Ignore(_))
        ));
        // Without a label route, a fork by a stranger is ignored outright.
        let c = cfg("[webhook]\nfork_allow_users = [\"alice\"]\n");
        assert!(matches!(
            decide(&c, "pull_request", &pr("opened", "m/r", "bob", &[])),
            Ok(Decision::Ignore(_))
        ));
    }

    #[test]
    fn a_label_route_without_approvers_is_a_configuration_error() {
        let err = Config::parse(
            "[webhook]\nrepos = [\"o/r\"]\nfork_label = \"ok-to-test\"\n",
            Path::new("t"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("fork_approvers"), "{err}");
    }

    #[test]
    fn repositories_outside_the_list_are_ignored_and_an_empty_list_accepts_none() {
        let c = cfg("");
        let other = serde_json::json!({"ref": "refs/heads/main", "after": "a".repeat(40),
            "repository": {"full_name": "evil/r"}})
        .to_string();
        assert!(matches!(
            decide(&c, "push", other.as_bytes()),
            Ok(Decision::Ignore(ref s)) if s.contains("not configured")
        ));
        let none = Config::parse("", Path::new("t")).unwrap();
        assert!(none.webhook.require_repos().is_err());
        assert!(matches!(
            decide(&none, "push", &push("refs/heads/main", &"a".repeat(40))),
            Ok(Decision::Ignore(_))
        ));
    }

    #[test]
    fn the_commit_author_and_subject_come_from_the_payload() {
        let c = cfg("");
        let mut body: serde_json::Value =
            serde_json::from_slice(&push("refs/heads/main", &"a".repeat(40))).unwrap();
        let job = |body: &serde_json::Value| match decide(&c, "push", body.to_string().as_bytes()) {
            Ok(Decision::Job(j)) => j,
            other => panic!("{other:?}"),
        };
        assert_eq!(job(&body).commit, CommitInfo::default(), "no head_commit");
        body["head_commit"] = serde_json::json!({"message": "Subject\n\nbody",
            "author": {"name": "Ada", "email": "a@example", "username": "ada"}});
        let from_payload = CommitInfo::from_payload("push", &body);
        assert_eq!(job(&body).commit, from_payload);
        assert_eq!(from_payload.subject.as_deref(), Some("Subject"));
        body["head_commit"] = serde_json::Value::Null;
        assert_eq!(job(&body).commit, CommitInfo::default(), "null head_commit");

        let mut pr: serde_json::Value =
            serde_json::from_slice(&pr("opened", "o/r", "bob", &[])).unwrap();
        pr["pull_request"]["title"] = "Add a thing".into();
        match decide(&c, "pull_request", pr.to_string().as_bytes()) {
            Ok(Decision::Job(j)) => {
                assert_eq!(j.commit, CommitInfo::from_payload("pull_request", &pr));
                assert_eq!(j.commit.author.as_deref(), Some("bob"));
                assert_eq!(j.commit.subject.as_deref(), Some("Add a thing"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A `check_run` event shaped as GitHub's documented example (trimmed to what it needs).
    fn check_run(action: &str, identifier: Option<&str>, repo: &str, external_id: &str) -> Vec<u8> {
        let mut v = serde_json::json!({"action": action,
            "check_run": {"id": 4, "head_sha": "a".repeat(40), "external_id": external_id,
                "name": "sdci / Qubes 4.2", "status": "completed", "conclusion": "failure"},
            "repository": {"full_name": repo},
            "sender": {"login": "maint"}});
        if let Some(i) = identifier {
            v["requested_action"] = serde_json::json!({"identifier": i});
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn check_run_rerequests_and_the_rerun_action_ask_for_a_rerun_of_their_job() {
        let c = cfg("");
        let want = |what: &str| {
            Ok(Decision::Rerun(RerunSpec {
                repo: "o/r".parse().unwrap(),
                sender: "maint".into(),
                target: RerunTarget::Job {
                    id: "aaaaaaa-0123456789".into(),
                    sha: "a".repeat(40).parse().unwrap(),
                },
                what: what.into(),
            }))
        };
        let body = check_run("rerequested", None, "o/r", "aaaaaaa-0123456789");
        assert_eq!(
            decide(&c, "check_run", &body),
            want("check_run rerequested")
        );
        let body = check_run(
            "requested_action",
            Some("rerun"),
            "o/r",
            "aaaaaaa-0123456789",
        );
        assert_eq!(
            decide(&c, "check_run", &body),
            want("check_run requested_action rerun")
        );
        // Issue 18's buttons: "Re-run tests" and "Hold VM".
        for action in ["rerun-tests", "hold-vm"] {
            let body = check_run(
                "requested_action",
                Some(action),
                "o/r",
                "aaaaaaa-0123456789",
            );
            assert_eq!(
                decide(&c, "check_run", &body),
                want(&format!("check_run requested_action {action}"))
            );
        }
        for (body, why) in [
            (
                check_run("requested_action", Some("hold"), "o/r", "x"),
                "not known",
            ),
            (check_run("created", None, "o/r", "x"), "not handled"),
            (
                check_run("rerequested", None, "evil/r", "x"),
                "not configured",
            ),
            (check_run("rerequested", None, "o/r", ""), "external_id"),
        ] {
            assert!(
                matches!(decide(&c, "check_run", &body), Ok(Decision::Ignore(ref s)) if s.contains(why)),
                "{why}"
            );
        }
    }

    #[test]
    fn a_check_suite_rerequest_asks_for_every_job_of_its_commit() {
        let c = cfg("");
        let body = |action: &str, repo: &str| {
            serde_json::json!({"action": action,
                "check_suite": {"id": 5, "head_sha": "b".repeat(40), "head_branch": "main"},
                "repository": {"full_name": repo}, "sender": {"login": "maint"}})
            .to_string()
            .into_bytes()
        };
        match decide(&c, "check_suite", &body("rerequested", "o/r")) {
            Ok(Decision::Rerun(r)) => {
                assert_eq!(
                    r.target,
                    RerunTarget::Commit("b".repeat(40).parse().unwrap())
                );
                assert_eq!(r.sender, "maint");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&c, "check_suite", &body("completed", "o/r")),
            Ok(Decision::Ignore(_))
        ));
        assert!(matches!(
            decide(&c, "check_suite", &body("rerequested", "evil/r")),
            Ok(Decision::Ignore(_))
        ));
    }

    #[test]
    fn unknown_events_and_ping_are_ignored_not_errors() {
        let c = cfg("");
        assert!(matches!(decide(&c, "ping", b"{}"), Ok(Decision::Ignore(_))));
        assert!(matches!(
            decide(&c, "issues", b"{}"),
            Ok(Decision::Ignore(_))
        ));
    }
}
