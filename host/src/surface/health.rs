//! `GET /healthz`: liveness (the process answers and its store can be read).

use crate::hub::Hub;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// `GET /healthz`.
pub async fn healthz(State(hub): State<Arc<Hub>>) -> Response {
    match hub.store.count_jobs() {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
    }
}
