//! Nightly jobs: `sdci-host nightly --branch B` (and each `[[nightly.schedule]]` in `serve`)
//! resolves the branch head (`sdci-agent head`), picks the Qubes version (the intake's matrix
//! cells that ask for `nightly` when the commit has `.github/sdci.yml`; else `sdci-agent
//! ci-config`, else `default_version`) and queues a job with reason `nightly` and
//! `update = true` through the same queue as every other job. Also the loop every schedule of
//! `serve` runs (nightly jobs and rotations): sleep until the next fire time, fire, repeat.
//!
//! Invariants: a fire time is computed, never polled for (the loop sleeps until the next one);
//! a run missed while the host was down is not made up at start-up (the next one comes);
//! a failing fire (agent unreachable, no pool) is logged and the schedule goes on.

use crate::config::Config;
use crate::domain::Schedule;
use crate::gateway::GithubGateway;
use crate::hub::Hub;
use crate::store::{NewJob, Store};
use crate::{HostError, Result};
use sdci_protocol::{Reason, Utc};
use std::time::Duration;

/// Queues the nightly job of `branch`: head, version, job with reason `nightly` and
/// `update = true`. Returns the job id.
pub async fn queue(cfg: &Config, store: &Store, branch: &str) -> Result<sdci_protocol::JobId> {
    let repo = cfg
        .nightly
        .repo
        .clone()
        .or_else(|| cfg.default_repo.clone())
        .ok_or_else(|| {
            HostError::Invalid(
                "no repository for nightly jobs: set nightly.repo or default_repo in the host \
                 config"
                    .into(),
            )
        })?;
    let repo: sdci_protocol::RepoName = repo
        .parse()
        .map_err(|e: sdci_protocol::ProtocolError| HostError::Invalid(e.to_string()))?;
    let github = GithubGateway::from_config(cfg);
    let sha = github.head(&repo, branch).await?;
    // A commit with a matrix file gets its nightly cells from the intake (issue 20): the job
    // waits for them there, like a pushed commit's.
    let has_matrix = cfg.agent.resolve_version
        && matches!(
            github
                .file(
                    repo.as_str(),
                    sha.as_str(),
                    crate::domain::matrix::MATRIX_PATH,
                    crate::domain::matrix::MAX_BYTES as u64,
                )
                .await,
            Ok(Some(ref b)) if !b.iter().all(u8::is_ascii_whitespace)
        );
    let version = if has_matrix {
        String::new()
    } else if cfg.agent.resolve_version {
        match github.ci_config(&repo, &sha).await {
            Ok(Some(v)) => v,
            Ok(None) => cfg.default_version.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "ci-config failed; using the default Qubes version");
                cfg.default_version.clone()
            }
        }
    } else {
        cfg.default_version.clone()
    };
    if !has_matrix && !cfg.pools.contains_key(&version) {
        return Err(HostError::Invalid(format!(
            "{repo}@{sha} asks for Qubes {version}, which has no pool: add [pools.\"{version}\"] \
             to the host config"
        )));
    }
    let clone_url = cfg
        .agent
        .clone_url_override
        .clone()
        .unwrap_or_else(|| format!("https://github.com/{repo}.git"));
    let id = store.insert_job(&NewJob {
        repo,
        sha: sha.clone(),
        reason: Reason::Nightly,
        branch: Some(branch.to_owned()),
        supersede_key: None,
        clone_url,
        version: (!has_matrix).then(|| version.clone()),
        snapshot: None,
        update_first: true,
        commit_author: None,
        commit_subject: None,
    })?;
    tracing::info!(job = %id, %branch, %sha, %version, "nightly job queued");
    Ok(id)
}

/// Sleeps until `schedule`'s next fire time, then runs `fire`; forever.
pub async fn every<F, Fut>(schedule: Schedule, what: String, mut fire: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let now = crate::now_ms();
        let Some(next) = schedule.next_after(now.div_euclid(1000)) else {
            tracing::warn!(%what, "the schedule never fires; stopping it");
            return;
        };
        let wait = Duration::from_millis((next * 1000 - now).max(0) as u64);
        tracing::info!(%what, next = %Utc::from_unix(next), "next scheduled run (UTC)");
        tokio::time::sleep(wait).await;
        fire().await;
    }
}

/// The `serve` side: one task per `[[nightly.schedule]]`, each queuing its branch's nightly job
/// and waking the service.
pub fn spawn_schedules(hub: std::sync::Arc<Hub>) {
    for s in hub.cfg.nightly.schedule.clone() {
        let schedule = match s.schedule() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(branch = %s.branch, error = %e, "nightly schedule ignored");
                continue;
            }
        };
        let hub = hub.clone();
        let what = format!("nightly {}", s.branch);
        tokio::spawn(every(schedule, what, move || {
            let hub = hub.clone();
            let branch = s.branch.clone();
            async move {
                match queue(&hub.cfg, &hub.store, &branch).await {
                    Ok(_) => hub.wake_all(),
                    Err(e) => tracing::error!(%branch, error = %e, "nightly job not queued"),
                }
            }
        }));
    }
}
