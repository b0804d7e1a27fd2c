//! `sdci-agent run`: one job in sd-dev, start to end.
//!
//! 1. Post `pending` "The build is running" (with the job page as `target_url`), unless the job
//!    says the host does (`post_running_status = false`, what `sdci-host` sends).
//! 2. Fetch exactly the commit into `dev_dir`. Then revoke the job's token
//!    (`DELETE /installation/token`) unless the agent still needs it for the final status
//!    (`post_final_status`): the code under test never finds a working token.
//! 3. Copy the `.example` files.
//! 4. Call dom0 (`dom0_call`): tarball in, events out, events into the spool.
//! 5. Meanwhile the relay forwards the spool to the host; when the call is over it gets
//!    `relay_finish_timeout_secs` to deliver the rest.
//! 6. Post the final status (when the job asks for it) and return the outcome (the exit code).
//!
//! Invariants: the checkout stays in place until the call returns (SDW's `make clone` reads it
//! back from dom0); a failure of ours before or instead of dom0's result (fetch failed, qrexec
//! refused) is appended to the event stream as a log line and a `result` event, so the job page
//! always ends with a result; GitHub being down never changes the outcome (the host posts
//! `error` for jobs whose status did not arrive); a failed revocation is logged and does not
//! change the outcome (the host revokes the token again when the job ends).

use crate::archive::Compression;
use crate::checkout::{self, Git};
use crate::config::Config;
use crate::dom0_call;
use crate::error::Result;
use crate::github::{Auth, GitHub, StatusUpdate};
use crate::relay::{Relay, Spool};
use sdci_protocol::job::Secret;
use sdci_protocol::{AgentJob, Event, EventKind, Outcome, StatusState};
use std::path::Path;
use std::time::Duration;

/// The description of the `pending` status posted when the job starts.
pub const RUNNING_DESCRIPTION: &str = "The build is running";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Appends the agent's own closing events (a log line and the result) after dom0's.
fn append_result(spool: &Spool, outcome: Outcome, reason: &str) {
    for kind in [
        EventKind::Log {
            step: None,
            text: format!("sdci-agent: {reason}"),
        },
        EventKind::Result {
            outcome,
            reason: reason.to_owned(),
        },
    ] {
        let ev = Event {
            v: sdci_protocol::event::EVENT_VERSION,
            seq: spool.len(),
            ts_ms: now_ms(),
            kind,
        };
        if let Err(e) = spool.push(&ev) {
            tracing::error!(error = %e, "could not spool the agent's result event");
        }
    }
}

/// The blocking fetch; `Err` is the job's end (already appended to the spool).
fn fetch(
    job: &AgentJob,
    cfg: &Config,
    token: Option<&Secret>,
    spool: &Spool,
) -> std::result::Result<(), (Outcome, String)> {
    let dir = Path::new(&job.dev_dir);
    let fetched = Git::new(&cfg.run.git, dir, token)
        .and_then(|git| git.fetch_commit(&job.clone_url, &job.sha));
    match fetched {
        Ok(how) => {
            tracing::info!(sha = job.sha.short(), ?how, dir = %dir.display(), "commit checked out");
            Ok(())
        }
        Err(e) => {
            let reason = format!("fetching commit {} failed: {e}", job.sha.short());
            append_result(spool, Outcome::Error, &reason);
            Err((Outcome::Error, reason))
        }
    }
}

/// The blocking rest: examples, the dom0 call. Returns the outcome and reason.
fn examples_and_call(job: &AgentJob, cfg: &Config, spool: &Spool) -> (Outcome, String) {
    let dir = Path::new(&job.dev_dir);
    if let Err(e) = checkout::copy_examples(dir) {
        let reason = e.to_string();
        append_result(spool, Outcome::Error, &reason);
        return (Outcome::Error, reason);
    }
    let compression = Compression {
        level: cfg.run.zstd_level,
        threads: cfg.run.zstd_threads,
    };
    let call = match dom0_call::call(
        &cfg.run.qrexec_client,
        &cfg.run.qrexec_target,
        &job.id,
        dir,
        compression,
        spool,
    ) {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("the qrexec call to dom0 could not start: {e}");
            append_result(spool, Outcome::Error, &reason);
            return (Outcome::Error, reason);
        }
    };
    match &call.archive {
        Ok(stats) => tracing::info!(
            entries = stats.entries,
            bytes = stats.compressed_bytes,
            "archive sent"
        ),
        Err(e) => tracing::warn!(error = %e, "writing the archive to dom0 stopped"),
    }
    if let Some(e) = &call.stream_error {
        tracing::warn!(error = %e, "stopped reading dom0's event stream");
    }
    let (outcome, reason) = dom0_call::outcome(&call);
    if call.result.is_none() || call.stream_error.is_some() {
        append_result(spool, outcome, &reason);
    }
    (outcome, reason)
}

/// Runs one job; the returned outcome is the process's exit code.
pub async fn run_job(job: AgentJob, cfg: &Config) -> Result<Outcome> {
    // The job's token wins; without one, the configured credentials (token mode in sd-dev).
    let auth = match &job.token {
        Some(t) => Some(Auth::Token(t.clone())),
        None => Auth::from_config(cfg)?,
    };
    let git_token = match &auth {
        Some(Auth::Token(t)) => Some(t.clone()),
        Some(Auth::App { .. }) | None => None,
    };
    let github = match auth {
        Some(a) => Some(GitHub::new(&job.github_api, a, cfg.retry.clone())?),
        None => {
            tracing::warn!(
                "no GitHub token in the job or the configuration: statuses will not be posted"
            );
            None
        }
    };
    let status = |state: StatusState, description: String| StatusUpdate {
        state,
        description,
        target_url: Some(job.target_url.clone()),
        context: job.status_context.clone(),
    };
    // The spool first: without it nothing can be relayed, and no status is posted at all
    // (the host posts `error` for a job that never reported).
    let spool = Spool::create(
        &cfg.run
            .spool_dir
            .join(job.id.as_str())
            .join("events.ndjson"),
    )?;
    match &github {
        Some(_) if !job.post_running_status => {
            tracing::info!("the host posts the running status (post_running_status = false)")
        }
        Some(gh) => {
            if let Err(e) = gh
                .post_status(
                    &job.repo,
                    &job.sha,
                    &status(StatusState::Pending, RUNNING_DESCRIPTION.into()),
                )
                .await
            {
                tracing::warn!(error = %e, "could not post the running status; continuing");
            }
        }
        None => {}
    }

    let relay = Relay::new(
        &job.event_url,
        job.event_secret.clone(),
        Duration::from_millis(cfg.run.relay_max_backoff_ms),
    )?;
    let relay_spool = spool.clone();
    let relay_task = tokio::spawn(async move { relay.run(relay_spool).await });

    let worker_failed = |e: tokio::task::JoinError| {
        (
            Outcome::Error,
            format!("the job's worker thread failed: {e}"),
        )
    };
    let fetched = {
        let (job, cfg, spool) = (job.clone(), cfg.clone(), spool.clone());
        tokio::task::spawn_blocking(move || fetch(&job, &cfg, git_token.as_ref(), &spool))
            .await
            .unwrap_or_else(|e| Err(worker_failed(e)))
    };
    // The token was for the fetch; unless the final status needs it, it goes now, before any
    // code of the commit runs.
    if let (Some(token), false) = (&job.token, job.post_final_status) {
        match GitHub::new(
            &job.github_api,
            Auth::Token(token.clone()),
            cfg.retry.clone(),
        ) {
            Ok(gh) => match gh.revoke_token(token).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not revoke the job's token; the host revokes it at the job's end")
                }
            },
            Err(e) => tracing::warn!(error = %e, "could not revoke the job's token"),
        }
    }
    let (outcome, reason) = match fetched {
        Err(end) => end,
        Ok(()) => {
            let (job, cfg, spool) = (job.clone(), cfg.clone(), spool.clone());
            tokio::task::spawn_blocking(move || examples_and_call(&job, &cfg, &spool))
                .await
                .unwrap_or_else(worker_failed)
        }
    };
    spool.finish();
    tracing::info!(outcome = outcome.as_str(), %reason, "dom0 call finished");

    let wait = Duration::from_secs(cfg.run.relay_finish_timeout_secs);
    match tokio::time::timeout(wait, relay_task).await {
        Ok(Ok(Ok(acked))) => tracing::info!(events = acked, "all events delivered to the host"),
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "event relay gave up; dom0's log file still has everything")
        }
        Ok(Err(e)) => tracing::error!(error = %e, "event relay task failed"),
        Err(_) => {
            tracing::error!(secs = wait.as_secs(), spool = %spool.path().display(), "events not delivered in time; they stay in the spool")
        }
    }

    if !job.post_final_status {
        tracing::info!("the host posts the final status (post_final_status = false)");
    } else if let Some(gh) = &github {
        if let Err(e) = gh
            .post_status(
                &job.repo,
                &job.sha,
                &status(outcome.status_state(), reason.clone()),
            )
            .await
        {
            tracing::error!(error = %e, "could not post the final status (the host will post error)");
        }
    }
    Ok(outcome)
}
