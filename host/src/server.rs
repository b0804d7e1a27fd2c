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

pub use crate::gateway::backend::guest_auth;

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

/// Runs the service on `listener` with an already connected hypervisor, until the process
/// ends (see [`run_with`]).
pub async fn run<H: Hypervisor>(
    hub: Arc<Hub>,
    hv: Arc<H>,
    auth: GuestAuth,
    listener: tokio::net::TcpListener,
    parts: Parts,
) -> Result<()> {
    let connect = move || {
        let hv = hv.clone();
        async move { Ok::<_, HostError>(hv) }
    };
    run_with(hub, connect, auth, listener, parts, std::future::pending()).await
}

/// Runs the service on `listener` until `shutdown` resolves. The order is what a restart needs:
/// 1. the HTTP routes (webhooks, event ingest, `/healthz`) and everything that needs no
///    hypervisor (status outbox, version intake, notifier, nightly schedules) start at once;
/// 2. vSphere is connected in the background, again and again with backoff (1 s doubling to
///    60 s) while it is unreachable — `/healthz` says so meanwhile, webhooks are stored and
///    their `queued` statuses posted;
/// 3. once connected, start-up reconciliation (re-adopting what a previous process left)
///    runs concurrently with serving, then the scheduler, the reconciler, the lease renewals
///    and the rotation schedules start.
///
/// On `shutdown` (`SIGTERM`): the hub drains (no new claims or attempts), the listener closes
/// after a moment for requests in flight, and this returns; running VMs are not touched, the
/// next process re-adopts their attempts.
pub async fn run_with<H, C, F>(
    hub: Arc<Hub>,
    connect: C,
    auth: GuestAuth,
    listener: tokio::net::TcpListener,
    parts: Parts,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()>
where
    H: Hypervisor,
    C: Fn() -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Arc<H>>> + Send + 'static,
{
    if parts.statuses {
        tokio::spawn(orchestration::statuses::status_worker(hub.clone()));
        // Slack notifications (their settings were validated when the configuration loaded).
        if let Some(n) =
            orchestration::notifier::Notifier::from_config(&hub.cfg, hub.store.clone())?
        {
            tokio::spawn(n.run());
        }
    }
    if parts.intake {
        tokio::spawn(orchestration::intake_loop(hub.clone()));
    }
    if parts.scheduler {
        orchestration::nightly::spawn_schedules(hub.clone());
    }
    tokio::spawn(bring_up(hub.clone(), connect, auth, parts));
    let addr = listener
        .local_addr()
        .map_err(|e| HostError::io("listener address", e))?;
    tracing::info!(%addr, "sdci-host serving");
    let served = async {
        axum::serve(listener, router(hub.clone()))
            .await
            .map_err(|e| HostError::io("HTTP server", e))
    };
    tokio::select! {
        r = served => r,
        () = shutdown => {
            tracing::info!("shutting down: no new claims; running VMs are left for the next start");
            hub.drain();
            // Requests in flight (a webhook is answered within milliseconds) get a moment;
            // long event streams are cut, and the agents resume them with the next process.
            tokio::time::sleep(std::time::Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
            Ok(())
        }
    }
}

/// How long requests in flight get after `SIGTERM` closed the listener.
const SHUTDOWN_GRACE_MS: u64 = 1000;

/// Connects vSphere (with backoff, for as long as it takes), then starts what needs it.
async fn bring_up<H, C, F>(hub: Arc<Hub>, connect: C, auth: GuestAuth, parts: Parts)
where
    H: Hypervisor,
    C: Fn() -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Arc<H>>> + Send + 'static,
{
    let mut backoff = std::time::Duration::from_secs(1);
    let hv = loop {
        if hub.is_draining() {
            return;
        }
        match connect().await {
            Ok(hv) => {
                hub.health.set_vsphere(true, "");
                hub.health.clear_alert("config:[vsphere] password_file");
                break hv;
            }
            Err(e) => {
                let text = e.to_string();
                hub.health.set_vsphere(false, &text);
                if let HostError::Vsphere(sdci_vsphere::VsphereError::LoginRefused { .. }) = &e {
                    hub.alert(
                        "config:[vsphere] password_file",
                        &format!("vSphere refused the login: check [vsphere] user and [vsphere] password_file ({text})"),
                    );
                }
                tracing::warn!(error = %text, retry_in = ?backoff,
                    "vSphere is unavailable; webhooks are stored meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = hub.drained() => return,
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(60));
            }
        }
    };
    let orch = Arc::new(Orchestrator::new(hub.clone(), hv, auth));
    if parts.reconciler {
        orch.startup().await;
    }
    if hub.is_draining() {
        return;
    }
    if parts.scheduler {
        tokio::spawn(orch.clone().scheduler_loop());
        orchestration::rotation::spawn_schedules(hub.clone(), orch.hv.clone(), orch.auth.clone());
    }
    if parts.reconciler {
        tokio::spawn(orch.clone().reconcile_loop());
        tokio::spawn(orch.clone().lease_loop());
    }
    hub.wake_all();
}

/// The lock that makes a data directory one `serve` process's: an exclusive `flock` on
/// `<data_dir>/sdci-host.lock`, held for the life of the process (the kernel drops it when the
/// process dies, however it dies). The file names the holder's pid.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
    pub path: std::path::PathBuf,
}

impl DataDirLock {
    /// Takes the lock, or says which process holds it.
    pub fn acquire(data_dir: &std::path::Path) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(data_dir)
            .map_err(|e| HostError::io(format!("creating {}", data_dir.display()), e))?;
        let path = data_dir.join("sdci-host.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| HostError::io(format!("opening {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("another sdci-host serve (pid {holder})")
                };
                return Err(HostError::Invalid(format!(
                    "{who} already serves the data directory {} (lock {}): stop it first, or                      give this instance its own data_dir",
                    data_dir.display(),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(HostError::io(format!("locking {}", path.display()), e))
            }
        }
        let write = |f: &mut std::fs::File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            f.flush()
        };
        write(&mut file).map_err(|e| HostError::io(format!("writing {}", path.display()), e))?;
        Ok(Self { _file: file, path })
    }
}
