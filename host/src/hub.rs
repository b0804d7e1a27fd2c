//! The [`Hub`]: the state one `serve` process shares between its HTTP handlers and its
//! background tasks — configuration, store, the GitHub gateway, the wake-ups, the jobs this
//! process drives (with the channel that asks each to stop), and the metrics.
//!
//! Invariants: nothing waits on a timer to notice work. Every producer of work wakes its consumer
//! through a [`Notify`] (a stored permit, so no wake-up is lost between a check and a wait): a new
//! job wakes the intake and the outbox, a resolved version or a freed VM wakes the scheduler, a
//! relayed `Result` event (or the end of an event stream) wakes the job's attempt
//! ([`Hub::signal_end`]), so it sees `sdci-dom0 launch` end at once.
//!
//! [`health`]: the dependencies and alerts `/healthz` reports. Draining ([`Hub::drain`], on
//! `SIGTERM`): no new claims, no new attempts; running VMs are left as they are for the next
//! process to re-adopt.

pub mod health;

use crate::config::Config;
use crate::gateway::GithubGateway;
use crate::joblog::LiveLogs;
use crate::metrics::Metrics;
use crate::store::{IngestWriter, Store};
use sdci_protocol::Secret;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

pub use health::{Alert, Dependency, Health};

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
    pub github: GithubGateway,
    /// Group-commit writer for webhook deliveries.
    pub ingest: IngestWriter,
    /// Wakes the scheduler: a job became claimable or a VM became free.
    pub scheduler: Arc<Notify>,
    /// Wakes the version intake: a new job needs its Qubes version.
    pub intake: Arc<Notify>,
    /// Wakes the status outbox.
    pub statuses: Arc<Notify>,
    /// Wakes the check-run outbox (`orchestration::checks`); notified wherever `statuses` is.
    pub checks: Arc<Notify>,
    /// Wakes the holds' loop (`orchestration::holds`): a hold begun, extended or released —
    /// `jobs hold`/`jobs release` in another process reach it through `/api/v1/wake`.
    pub holds: Arc<Notify>,
    /// Who may re-run from GitHub: `permission` answers, kept a minute (contracts §10).
    pub permissions: crate::gateway::github::PermissionCache,
    /// Jobs being driven by this process, with the channel that asks them to stop.
    live: Mutex<HashMap<String, watch::Sender<Option<Stop>>>>,
    event_locks: Mutex<HashMap<String, Arc<EventSlot>>>,
    /// Held while deciding that a VM is stray and powering it off, and while claiming, so a VM
    /// claimed a moment ago is never powered off as stray.
    pub vm_decisions: tokio::sync::Mutex<()>,
    pub metrics: Metrics,
    /// The job logs as served to viewers: line indexes, and the wake-ups of live viewers (the
    /// event ingest notifies them as it appends, `unregister_live` when a job's attempt ends).
    pub logs: LiveLogs,
    /// vSphere, the gateway and the alerts, for `/healthz`.
    pub health: Health,
    /// Per live job: woken when its `Result` event was relayed or its event stream ended.
    ends: Mutex<HashMap<String, Arc<Notify>>>,
    /// `true` once the process is shutting down (`SIGTERM`).
    draining: watch::Sender<bool>,
}

impl Hub {
    pub fn new(cfg: Config, store: Arc<Store>, webhook_secret: Secret) -> Self {
        let github = GithubGateway::from_config(&cfg);
        let ingest = store.ingest_writer(cfg.jobs.supersede_running);
        Self {
            cfg,
            store,
            webhook_secret,
            github,
            ingest,
            scheduler: Arc::new(Notify::new()),
            intake: Arc::new(Notify::new()),
            statuses: Arc::new(Notify::new()),
            checks: Arc::new(Notify::new()),
            holds: Arc::new(Notify::new()),
            permissions: Default::default(),
            live: Mutex::new(HashMap::new()),
            event_locks: Mutex::new(HashMap::new()),
            vm_decisions: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
            logs: LiveLogs::default(),
            health: Health::default(),
            ends: Mutex::new(HashMap::new()),
            draining: watch::channel(false).0,
        }
    }

    /// Raises an alert (see [`Health::alert`]) with this process's Slack settings and metrics.
    pub fn alert(&self, key: &str, message: &str) -> bool {
        self.health
            .alert(&self.cfg.notify, &self.metrics, key, message)
    }

    /// The wake-up of job `id`'s attempt: notified when its `Result` event arrives or its event
    /// stream ends (a stored permit: a signal before the wait is not lost).
    pub fn end_signal(&self, id: &str) -> Arc<Notify> {
        lock(&self.ends).entry(id.to_owned()).or_default().clone()
    }

    /// The event ingest saw job `id`'s `Result` event, or the end of its stream: its attempt
    /// looks at `sdci-dom0 launch` now instead of at its next poll.
    pub fn signal_end(&self, id: &str) {
        if let Some(n) = lock(&self.ends).get(id) {
            n.notify_one();
        }
    }

    /// Starts shutting down: no new claims or attempts from now on.
    pub fn drain(&self) {
        self.draining.send_replace(true);
        self.scheduler.notify_one();
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once [`Hub::drain`] was called.
    pub async fn drained(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn wake_all(&self) {
        self.intake.notify_one();
        self.statuses.notify_one();
        self.checks.notify_one();
        self.scheduler.notify_one();
        self.holds.notify_one();
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
        lock(&self.ends).remove(id);
        self.logs.notify(id);
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

    /// Job `id`'s event stream slot (the event ingest's per-job lock and takeover).
    pub fn event_slot(&self, id: &str) -> Arc<EventSlot> {
        lock(&self.event_locks)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }
}

/// One job's event stream: one stream at a time holds `lock`; a newer stream bumps
/// `generation` first, which tells the holder to end (a stalled stream never blocks its job).
#[derive(Default)]
pub struct EventSlot {
    pub lock: tokio::sync::Mutex<()>,
    pub generation: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
