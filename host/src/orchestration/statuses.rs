//! The status outbox worker: posts the store's unposted commit statuses through the GitHub
//! gateway, in order.
//!
//! Invariants:
//! - A post records its intent before the gateway runs and its result after (`store::outbox`):
//!   a kill causes no duplicate except for a request already in flight, and the gateway's child
//!   dies with the host.
//! - A failure for now (the gateway or GitHub unavailable) stays in the outbox and is retried
//!   with backoff (1 s doubling to 60 s) and on every wake-up; `/healthz` says the gateway is
//!   unavailable meanwhile. The job's outcome is already durable in the store, so nothing is
//!   lost by a failed post.
//! - With `[agent] commit_statuses = false` (check runs only) nothing is posted: the rows are
//!   marked skipped, so the outbox stays the record of what a status would have said.
//! - A permanent refusal (exit 64/78) is counted; after `jobs.status_refusals` the status is
//!   posted with the host's own plain description (one try), and refused again it is given up
//!   with an alert. No commit stays `pending` in silence.

use crate::gateway::{GatewayFailure, GithubGateway};
use crate::hub::Hub;
use crate::store::PendingStatus;
use crate::Result;
use sdci_protocol::StatusState;
use std::sync::Arc;
use std::time::Duration;

/// What one pass over the outbox did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub posted: usize,
    /// Something failed for now: try again after a pause.
    pub retry_later: bool,
}

/// The host's own description of a status whose description GitHub (or the agent) refused: no
/// text from the job, nothing that could be refused again for its content.
pub fn fallback_description(state: StatusState) -> String {
    match state {
        StatusState::Pending => "sdci: in progress; details on the job page".into(),
        other => format!("sdci: {}; details on the job page", other.as_str()),
    }
}

/// Posts every unposted status in the outbox, in order; with commit statuses off (check runs
/// only, `[agent] commit_statuses = false`) marks them skipped instead.
pub async fn drain_statuses(hub: &Hub, agent: &GithubGateway) -> Result<Drained> {
    let mut done = Drained::default();
    if !hub.cfg.agent.commit_statuses_on() {
        hub.store.skip_unposted_statuses()?;
        return Ok(done);
    }
    // A fallback queued in this pass is posted in the same pass.
    for _round in 0..2 {
        let mut again = false;
        for s in hub.store.unposted_statuses()? {
            // A job still waiting for its matrix cell has no context yet (issue 20).
            let job = hub.store.job(s.job_id.as_str())?;
            if job
                .as_ref()
                .is_some_and(|j| j.state == crate::domain::JobState::Queued && j.version.is_none())
            {
                continue;
            }
            if !hub.store.status_posting(s.id)? {
                continue;
            }
            match post(hub, agent, &s).await? {
                Posted::Yes => done.posted += 1,
                Posted::Later => {
                    done.retry_later = true;
                    // The rest would fail the same way; they wait for the next pass.
                    return Ok(done);
                }
                Posted::Fallback => again = true,
                Posted::GaveUp => {}
            }
        }
        if !again {
            break;
        }
    }
    Ok(done)
}

enum Posted {
    Yes,
    Later,
    Fallback,
    GaveUp,
}

async fn post(hub: &Hub, agent: &GithubGateway, s: &PendingStatus) -> Result<Posted> {
    let store = &hub.store;
    let url = format!("{}/jobs/{}", hub.cfg.public_url, s.job_id);
    // A matrix cell's job posts under the cell's own context (`sdci / 4.3 / dev`, issue 20).
    let cell = super::matrix::job_cell(hub, s.job_id.as_str());
    let cell_agent =
        super::matrix::report_name(&hub.cfg, cell.as_ref().map(|c| c.0.as_str())).map(|context| {
            GithubGateway {
                context,
                ..agent.clone()
            }
        });
    let r = cell_agent
        .as_ref()
        .unwrap_or(agent)
        .status(&s.repo, &s.sha, s.state.as_str(), &s.description, &url)
        .await;
    let e = match r {
        Ok(()) => {
            store.status_posted(s.id)?;
            hub.health.set_gateway(true, "");
            tracing::info!(job = %s.job_id, state = s.state.as_str(), "status posted");
            return Ok(Posted::Yes);
        }
        Err(e) => e,
    };
    match e.kind() {
        GatewayFailure::Unavailable => {
            hub.health.set_gateway(false, &e.to_string());
            tracing::warn!(job = %s.job_id, state = s.state.as_str(), error = %e,
                "posting the status failed; it stays in the outbox and is retried");
            store.status_failed(s.id, &e.to_string())?;
            Ok(Posted::Later)
        }
        GatewayFailure::Other => {
            tracing::warn!(job = %s.job_id, state = s.state.as_str(), error = %e,
                "posting the status failed; it stays in the outbox and is retried");
            store.status_failed(s.id, &e.to_string())?;
            Ok(Posted::Later)
        }
        GatewayFailure::Refused => {
            // The gateway ran: it is available, this one request is refused.
            hub.health.set_gateway(true, "");
            let refusals = store.status_refused(s.id, &e.to_string())?;
            let limit = hub.cfg.jobs.status_refusals;
            tracing::warn!(job = %s.job_id, state = s.state.as_str(), refusals, error = %e,
                "the status was refused");
            if refusals < limit && !s.fallback {
                return Ok(Posted::Later);
            }
            // The host's own plain description gets one try: refused too, retrying cannot help.
            if !s.fallback {
                let text = fallback_description(s.state);
                tracing::warn!(job = %s.job_id, "posting the status with the host's own description");
                store.status_fallback(s.id, &text)?;
                return Ok(Posted::Fallback);
            }
            store.status_gave_up(s.id, &e.to_string())?;
            hub.alert(
                &format!("status:{}", s.job_id),
                &format!(
                    "GitHub keeps refusing the {} status of job {} ({}@{}), also with the \
                     host's own description; given up: {e}",
                    s.state.as_str(),
                    s.job_id,
                    s.repo,
                    s.sha.short()
                ),
            );
            Ok(Posted::GaveUp)
        }
    }
}

/// The outbox worker: drains on every wake-up (the reconciler wakes it periodically too), and
/// after a failure for now again after a pause that doubles from 1 s to 60 s.
pub async fn status_worker(hub: Arc<Hub>) {
    if let Err(e) = hub.store.status_outbox_begin() {
        tracing::error!(error = %e, "status outbox");
    }
    let agent = hub.github.clone();
    let mut backoff = Duration::from_secs(1);
    loop {
        let retry = match drain_statuses(&hub, &agent).await {
            Ok(d) => d.retry_later,
            Err(e) => {
                tracing::error!(error = %e, "status outbox");
                true
            }
        };
        if retry {
            tokio::select! {
                _ = hub.statuses.notified() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        } else {
            backoff = Duration::from_secs(1);
            hub.statuses.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_description_is_plain_and_names_the_state() {
        let d = fallback_description(StatusState::Error);
        assert_eq!(d, "sdci: error; details on the job page");
        assert!(!d.starts_with('-') && d.len() < 140);
    }
}
