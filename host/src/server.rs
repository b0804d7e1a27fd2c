//! The `serve` process wired together: the HTTP routes over the surfaces, and the background
//! tasks (scheduler, version intake, status outbox, reconciler, notifier, schedules) over the
//! orchestration, all sharing one [`Hub`].
//!
//! Invariant: the reconciler's tick is a safety net, not the dispatch mechanism (wake-ups are,
//! see `hub`).
//!
//! Serving ([`serve_routes`]): everything that reaches the listener is untrusted until a
//! signature or a bearer says otherwise, so the server bounds what any client can hold:
//! - at most `http.max_connections` connections; one beyond is closed as soon as it is accepted
//!   (it never waits in a queue holding a slot);
//! - HTTP/1 only, through hyper with a timer: a request's line and headers must arrive within
//!   `http.header_timeout_secs` (also the idle time of a keep-alive connection), else the
//!   connection is closed — so half-open sockets and slow headers cost one slot for that long;
//! - bodies are bounded by their handlers (the webhook: size, total time and a signature
//!   header checked before a byte of the body is read; the event ingest: bytes per request,
//!   silence between chunks);
//! - `/metrics` and `POST /api/v1/wake` (and, with `http.api_needs_token`, the read API under
//!   `/api/`) need `Authorization: Bearer <http.admin_token_file>` when that file is configured;
//!   the agents' event ingest keeps its own per-job bearer.

use crate::config::{read_secret, Config, HttpConfig};
use crate::hub::Hub;
use crate::orchestration::{self, Orchestrator};
use crate::store::Store;
use crate::surface::{events, health, metrics, web, webhook};
use crate::{HostError, Result};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sdci_protocol::Secret;
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
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(AdminGate::from_config(&hub.cfg)),
            admin_gate,
        ))
        .with_state(hub)
}

/// Who may use the operator endpoints (see the module doc).
enum AdminGate {
    /// No token configured: open to whoever reaches the listener.
    Open,
    /// The bearer's SHA-256, and whether the read API needs it too.
    Token { sha256: [u8; 32], api: bool },
    /// Configured but unreadable: every operator request is refused (fail closed).
    Unreadable,
}

impl AdminGate {
    fn from_config(cfg: &Config) -> Self {
        let Some(path) = &cfg.http.admin_token_file else {
            return Self::Open;
        };
        match read_secret(path, "admin token") {
            Ok(t) => Self::Token {
                sha256: digest(t.expose().as_bytes()),
                api: cfg.http.api_needs_token,
            },
            Err(e) => {
                tracing::error!(error = %e, "the admin token cannot be read: operator endpoints refuse everything");
                Self::Unreadable
            }
        }
    }

    fn guards(&self, path: &str) -> bool {
        let api = matches!(self, Self::Token { api: true, .. });
        path == "/metrics"
            || path == "/api/v1/wake"
            || (api && path.starts_with("/api/") && !is_event_ingest(path))
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `/api/v1/jobs/{id}/events`: the agents' ingest, with its own per-job bearer.
fn is_event_ingest(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(segs.as_slice(), ["api", "v1", "jobs", _, "events"])
}

async fn admin_gate(
    axum::extract::State(gate): axum::extract::State<Arc<AdminGate>>,
    req: Request,
    next: Next,
) -> Response {
    if !gate.guards(req.uri().path()) {
        return next.run(req).await;
    }
    match gate.as_ref() {
        AdminGate::Open => next.run(req).await,
        AdminGate::Unreadable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the admin token is unreadable",
        )
            .into_response(),
        AdminGate::Token { sha256, .. } => {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| digest(t.as_bytes()));
            let ok =
                given.is_some_and(|g| g.iter().zip(sha256).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0);
            if ok {
                next.run(req).await
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", "Bearer")],
                    "this endpoint needs the admin bearer token",
                )
                    .into_response()
            }
        }
    }
}

/// Reads `http.admin_token_file`, if configured, so `serve` fails at start-up on a bad path.
pub fn admin_token(cfg: &Config) -> Result<Option<Secret>> {
    cfg.http
        .admin_token_file
        .as_deref()
        .map(|p| read_secret(p, "admin token"))
        .transpose()
}

/// Serves `app` on `listener` until the listener fails, under the `[http]` bounds (module doc).
pub async fn serve_routes(
    listener: tokio::net::TcpListener,
    app: Router,
    http: &HttpConfig,
    metrics: Option<Arc<Hub>>,
) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(http.max_connections));
    let header_timeout = http.header_timeout();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause, never spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(h) = &metrics {
                h.metrics.count("http_connections_refused");
            }
            tracing::debug!("connection limit reached; connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
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
    cfg.webhook.require_repos().map_err(HostError::Invalid)?;
    admin_token(&cfg)?;
    let secret = read_secret(&cfg.webhook.secret_file, "webhook secret")?;
    let store = Arc::new(Store::open(&cfg.db_path())?);
    Ok(Arc::new(Hub::new(cfg, store, secret)))
}

/// Serves only the HTTP routes (webhooks, events, pages) on `listener`; used by the webhook
/// benchmark, which measures intake alone.
pub async fn serve_http(hub: Arc<Hub>, listener: tokio::net::TcpListener) -> Result<()> {
    admin_token(&hub.cfg)?;
    let http = hub.cfg.http.clone();
    serve_routes(listener, router(hub.clone()), &http, Some(hub)).await
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
        // Check runs for the jobs stored from now on, by this process or the CLI (contracts §10).
        hub.store.set_check_runs(hub.cfg.agent.check_runs_on())?;
        if hub.cfg.agent.check_runs_on() {
            tokio::spawn(orchestration::checks::check_worker(hub.clone()));
        }
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
    let http = hub.cfg.http.clone();
    let served = serve_routes(listener, router(hub.clone()), &http, Some(hub.clone()));
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
