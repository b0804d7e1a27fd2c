//! The status outbox worker: posts the store's unposted commit statuses through the GitHub
//! gateway, in order.
//!
//! Invariant: a failed post is recorded on the outbox row and retried later (on the next
//! wake-up or reconciler tick) — the job's outcome is already durable in the store, so nothing
//! is lost by a failed post.

use crate::gateway::GithubGateway;
use crate::store::Store;
use crate::Result;
use std::sync::Arc;
use tokio::sync::Notify;

/// Posts every unposted status in the outbox, in order. Failures stay in the outbox.
pub async fn drain_statuses(
    store: &Store,
    agent: &GithubGateway,
    public_url: &str,
) -> Result<usize> {
    let mut posted = 0;
    for s in store.unposted_statuses()? {
        let url = format!("{public_url}/jobs/{}", s.job_id);
        match agent
            .status(&s.repo, &s.sha, s.state.as_str(), &s.description, &url)
            .await
        {
            Ok(()) => {
                store.status_posted(s.id)?;
                posted += 1;
                tracing::info!(job = %s.job_id, state = s.state.as_str(), "status posted");
            }
            Err(e) => {
                tracing::warn!(job = %s.job_id, state = s.state.as_str(), error = %e,
                    "posting the status failed; it stays in the outbox and is retried");
                store.status_failed(s.id, &e.to_string())?;
            }
        }
    }
    Ok(posted)
}

/// The outbox worker: drains on every wake-up; the reconciler wakes it periodically too.
pub async fn status_worker(
    store: Arc<Store>,
    agent: GithubGateway,
    public_url: String,
    wake: Arc<Notify>,
) {
    loop {
        if let Err(e) = drain_statuses(&store, &agent, &public_url).await {
            tracing::error!(error = %e, "status outbox");
        }
        wake.notified().await;
    }
}
