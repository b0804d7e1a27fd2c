//! A Slack incoming-webhook stand-in: axum on 127.0.0.1:0 that records every POSTed JSON body
//! and answers with a status the test chooses (200 by default; 500 to test retries).
//!
//! Slack's incoming webhooks take `POST` with a JSON body (`{"text": ...}` at least) and answer
//! `200 ok`; anything else is a failed delivery. Only that is reproduced.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The path part of the webhook URL (Slack's shape: `/services/T…/B…/secret`).
pub const HOOK_PATH: &str = "/services/T000/B000/XXXXXXXX";

#[derive(Clone)]
struct Shared {
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    status: Arc<AtomicU16>,
    tx: mpsc::UnboundedSender<serde_json::Value>,
}

/// A running stand-in. Dropping it leaves the server task to end with the test's runtime.
pub struct SlackStandIn {
    url: String,
    shared: Shared,
    rx: mpsc::UnboundedReceiver<serde_json::Value>,
}

async fn hook(State(s): State<Shared>, Json(body): Json<serde_json::Value>) -> StatusCode {
    s.bodies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(body.clone());
    let _ = s.tx.send(body);
    StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
}

impl SlackStandIn {
    /// Starts it (inside a tokio runtime) answering every POST with `status`.
    pub async fn start(status: u16) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            bodies: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
            tx,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route(HOOK_PATH, post(hook))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url: format!("http://{addr}{HOOK_PATH}"),
            shared,
            rx,
        })
    }

    /// The webhook URL to configure.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Changes the status answered from now on.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// The next message received, waiting up to `safety` (a safety net, not a timer).
    pub async fn next(&mut self, safety: Duration) -> anyhow::Result<serde_json::Value> {
        match tokio::time::timeout(safety, self.rx.recv()).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => anyhow::bail!("the Slack stand-in stopped"),
            Err(_) => anyhow::bail!("no Slack message within {safety:?}"),
        }
    }

    /// Every body received so far, in order.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.shared
            .bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn count(&self) -> usize {
        self.bodies().len()
    }
}
