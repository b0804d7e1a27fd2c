//! The `serve` process wired together: the HTTP routes over the surfaces, and the background
//! tasks (scheduler, version intake, status outbox, reconciler, notifier, schedules) over the
//! orchestration, all sharing one [`Hub`].
//!
//! Invariant: the reconciler's tick is a safety net, not the dispatch mechanism (wake-ups are,
//! see `hub`).

use crate::config::{read_secret, Config};
use crate::hub::Hub;
use crate::orchestration::{self, Orchestrator};
use crate::store::Store;
use crate::surface::{events, health, metrics, web, webhook};
use crate::{HostError, Result};
use axum::routing::{get, post};
use axum::Router;
use sdci_vsphere::{GuestAuth, Hypervisor};
use std::sync::Arc;

pub use crate::gateway::vsphere::guest_auth;

/// The HTTP routes.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/hooks/github", post(webhook::receive))
        .route(
            "/api/v1/jobs/{id}/events",
            post(events::ingest).get(events::position),
        )
        .route("/api/v1/wake", post(web::wake))
        .merge(web::routes())
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::metrics))
        .with_state(hub)
}

/// Which background parts to run (the webhook benchmark runs the HTTP side alone).
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub scheduler: bool,
    pub intake: bool,
    pub statuses: bool,
    pub reconciler: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        scheduler: true,
        intake: true,
        statuses: true,
        reconciler: true,
    };
    pub const HTTP_ONLY: Parts = Parts {
        scheduler: false,
        intake: false,
        statuses: false,
        reconciler: false,
    };
}

/// Builds the hub from a configuration: opens the store, reads the webhook secret.
pub fn hub_from_config(cfg: Config) -> Result<Arc<Hub>> {
    let secret = read_secret(&cfg.webhook.secret_file, "webhook secret")?;
    let store = Arc::new(Store::open(&cfg.db_path())?);
    Ok(Arc::new(Hub::new(cfg, store, secret)))
}

/// Serves only the HTTP routes (webhooks, events, pages) on `listener`; used by the webhook
/// benchmark, which measures intake alone.
pub async fn serve_http(hub: Arc<Hub>, listener: tokio::net::TcpListener) -> Result<()> {
    axum::serve(listener, router(hub))
        .await
        .map_err(|e| HostError::io("HTTP server", e))
}

/// Runs the service on `listener` until the process ends: start-up reconciliation first, then
/// the HTTP server and the background tasks.
pub async fn run<H: Hypervisor>(
    hub: Arc<Hub>,
    hv: Arc<H>,
    auth: GuestAuth,
    listener: tokio::net::TcpListener,
    parts: Parts,
) -> Result<()> {
    let orch = Arc::new(Orchestrator::new(hub.clone(), hv, auth));
    if parts.reconciler {
        orch.startup().await;
    }
    if parts.scheduler {
        tokio::spawn(orch.clone().scheduler_loop());
    }
    if parts.intake {
        tokio::spawn(orch.clone().intake_loop());
    }
    if parts.statuses {
        tokio::spawn(orchestration::statuses::status_worker(
            hub.store.clone(),
            hub.github.clone(),
            hub.cfg.public_url.clone(),
            hub.statuses.clone(),
        ));
    }
    if parts.reconciler {
        tokio::spawn(orch.clone().reconcile_loop());
    }
    // Slack notifications, nightly jobs and rotations (their schedules were validated when the
    // configuration was loaded).
    if parts.statuses {
        if let Some(n) =
            orchestration::notifier::Notifier::from_config(&hub.cfg, hub.store.clone())?
        {
            tokio::spawn(n.run());
        }
    }
    if parts.scheduler {
        orchestration::nightly::spawn_schedules(hub.clone());
        orchestration::rotation::spawn_schedules(hub.clone(), orch.hv.clone(), orch.auth.clone());
    }
    let addr = listener
        .local_addr()
        .map_err(|e| HostError::io("listener address", e))?;
    tracing::info!(%addr, "sdci-host serving");
    axum::serve(listener, router(hub))
        .await
        .map_err(|e| HostError::io("HTTP server", e))
}
