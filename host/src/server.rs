//! The `serve` process: the shared [`Hub`], the HTTP routes, and the background tasks
//! (scheduler, version intake, status outbox, reconciler) wired together.
//!
//! Invariants: nothing waits on a timer to notice work. Every producer of work wakes its consumer
//! through a [`Notify`] (a stored permit, so no wake-up is lost between a check and a wait): a new
//! job wakes the intake and the outbox, a resolved version or a freed VM wakes the scheduler. The
//! reconciler's tick is a safety net, not the dispatch mechanism.

use crate::agent::Agent;
use crate::config::{read_secret, Config};
use crate::scheduler::Orchestrator;
use crate::store::Store;
use crate::{events, web, webhook, HostError, Result};
use axum::routing::{get, post};
use axum::Router;
use sdci_protocol::job::Secret;
use sdci_vsphere::{GuestAuth, Hypervisor};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// Why a live job is asked to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// `true`: report `canceled` (superseded, user cancel); `false`: `error` (deadline, VM gone).
    pub canceled: bool,
    pub reason: String,
}

/// State shared by the HTTP handlers and the background tasks.
pub struct Hub {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub webhook_secret: Secret,
    pub agent: Agent,
    /// Group-commit writer for webhook deliveries.
    pub ingest: crate::store::IngestWriter,
    /// Wakes the scheduler: a job became claimable or a VM became free.
    pub scheduler: Arc<Notify>,
    /// Wakes the version intake: a new job needs its Qubes version.
    pub intake: Arc<Notify>,
    /// Wakes the status outbox.
    pub statuses: Arc<Notify>,
    /// Jobs being driven by this process, with the channel that asks them to stop.
    live: Mutex<HashMap<String, watch::Sender<Option<Stop>>>>,
    event_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while deciding that a VM is stray and powering it off, and while claiming, so a VM
    /// claimed a moment ago is never powered off as stray.
    pub vm_decisions: tokio::sync::Mutex<()>,
    pub metrics: Metrics,
}

impl Hub {
    pub fn new(cfg: Config, store: Arc<Store>, webhook_secret: Secret) -> Self {
        let agent = Agent::from_config(&cfg);
        let ingest = store.ingest_writer(cfg.jobs.supersede_running);
        Self {
            cfg,
            store,
            webhook_secret,
            agent,
            ingest,
            scheduler: Arc::new(Notify::new()),
            intake: Arc::new(Notify::new()),
            statuses: Arc::new(Notify::new()),
            live: Mutex::new(HashMap::new()),
            event_locks: Mutex::new(HashMap::new()),
            vm_decisions: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
        }
    }

    pub fn wake_all(&self) {
        self.intake.notify_one();
        self.statuses.notify_one();
        self.scheduler.notify_one();
    }

    /// Registers a job as driven by this process; the receiver learns when it must stop.
    pub fn register_live(&self, id: &str) -> watch::Receiver<Option<Stop>> {
        let (tx, rx) = watch::channel(None);
        lock(&self.live).insert(id.to_owned(), tx);
        rx
    }

    pub fn unregister_live(&self, id: &str) {
        lock(&self.live).remove(id);
        lock(&self.event_locks).remove(id);
    }

    pub fn is_live(&self, id: &str) -> bool {
        lock(&self.live).contains_key(id)
    }

    pub fn live_ids(&self) -> Vec<String> {
        lock(&self.live).keys().cloned().collect()
    }

    /// Asks a live job to stop. `false` if this process is not driving it.
    pub fn stop_live(&self, id: &str, stop: Stop) -> bool {
        match lock(&self.live).get(id) {
            Some(tx) => {
                tx.send_replace(Some(stop));
                true
            }
            None => false,
        }
    }

    /// A superseded running job: stop it, reported as canceled.
    pub fn cancel_live(&self, id: &str) {
        let reason = self
            .store
            .job(id)
            .ok()
            .flatten()
            .and_then(|j| j.cancel_requested)
            .unwrap_or_else(|| "canceled".into());
        self.stop_live(
            id,
            Stop {
                canceled: true,
                reason,
            },
        );
    }

    pub fn event_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.event_locks)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// In-process counters and phase-duration histograms for `/metrics` (the job counts, queue
/// depths and VM states are read from the store at scrape time).
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, u64>>,
    phases: Mutex<BTreeMap<String, Histogram>>,
}

/// Bucket bounds, seconds: phases range from a second (upload) to hours (the run).
pub const BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

#[derive(Default, Clone)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Metrics {
    pub fn count(&self, name: &str) {
        *lock(&self.counters).entry(name.to_owned()).or_default() += 1;
    }

    pub fn observe_phase(&self, phase: &str, secs: f64) {
        let mut phases = lock(&self.phases);
        let h = phases.entry(phase.to_owned()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn observe_step(&self, secs: f64) {
        self.observe_phase("dom0_step", secs);
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        lock(&self.counters).clone()
    }

    pub fn phases(&self) -> BTreeMap<String, Histogram> {
        lock(&self.phases).clone()
    }
}

/// The HTTP routes.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/hooks/github", post(webhook::receive))
        .route(
            "/api/v1/jobs/{id}/events",
            post(events::ingest).get(events::position),
        )
        .route("/api/v1/wake", post(web::wake))
        .route("/jobs", get(web::jobs))
        .route("/jobs/{id}", get(web::job))
        .route("/healthz", get(web::healthz))
        .route("/metrics", get(web::metrics))
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

/// Reads the dom0 guest credentials named in the configuration.
pub fn guest_auth(cfg: &Config) -> Result<GuestAuth> {
    Ok(GuestAuth {
        user: cfg.dom0.user.clone(),
        password: read_secret(&cfg.dom0.password_file, "dom0 password")?,
    })
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
        tokio::spawn(crate::agent::status_worker(
            hub.store.clone(),
            hub.agent.clone(),
            hub.cfg.public_url.clone(),
            hub.statuses.clone(),
        ));
    }
    if parts.reconciler {
        tokio::spawn(orch.clone().reconcile_loop());
    }
    // Slack notifications, nightly jobs and rotations (issue 8: `notify`, `nightly`, `rotation`).
    crate::nightly::validate(&hub.cfg).map_err(|message| HostError::Config {
        path: "[nightly] / [rotation]".into(),
        message,
    })?;
    if parts.statuses {
        if let Some(n) = crate::notify::Notifier::from_config(&hub.cfg, hub.store.clone())? {
            tokio::spawn(n.run());
        }
    }
    if parts.scheduler {
        crate::nightly::spawn_schedules(hub.clone());
        crate::rotation::spawn_schedules(hub.clone(), orch.hv.clone(), orch.auth.clone());
    }
    let addr = listener
        .local_addr()
        .map_err(|e| HostError::io("listener address", e))?;
    tracing::info!(%addr, "sdci-host serving");
    axum::serve(listener, router(hub))
        .await
        .map_err(|e| HostError::io("HTTP server", e))
}
