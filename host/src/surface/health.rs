//! `GET /healthz` (liveness) and `GET /readyz` (readiness), plain text with reasons.
//!
//! - `/healthz`: 200 while the process answers and its store can be read, whatever its
//!   dependencies do (restarting the service would not bring vSphere back); the body is `ok`,
//!   or the degraded dependencies and standing alerts, one per line. 503 only when the store
//!   does not answer.
//! - `/readyz`: 200 only when every check passes, else 503; one line per check, `ok NAME` or
//!   `not ok NAME: why`: the store, vSphere, the `sdci-agent` gateway, each configured pool (at
//!   least one VM that is not quarantined), the standing alerts, and whether the process is
//!   draining (after `SIGTERM`).

use crate::hub::{Dependency, Hub};
use crate::now_ms;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /healthz`.
pub async fn healthz(State(hub): State<Arc<Hub>>) -> Response {
    let h = hub.clone();
    let store = tokio::task::spawn_blocking(move || h.store.ping())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match store {
        Ok(()) => text(StatusCode::OK, hub.health.report().1),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
    }
}

/// One readiness check: its name and, when it fails, why.
pub type Check = (String, Option<String>);

fn dependency(name: &str, d: &Dependency, now: i64) -> Check {
    let why = (!d.ok).then(|| {
        format!(
            "unavailable for {}s: {}",
            (now - d.since_ms).max(0) / 1000,
            d.detail
        )
    });
    (name.to_owned(), why)
}

/// Every readiness check of `hub` now (blocking: reads the store).
pub fn checks(hub: &Hub, now: i64) -> Vec<Check> {
    let mut out = Vec::new();
    let store = hub.store.ping();
    out.push((
        "store".to_owned(),
        store.as_ref().err().map(|e| e.to_string()),
    ));
    out.push(dependency("vsphere", &hub.health.vsphere(), now));
    out.push(dependency("gateway", &hub.health.gateway(), now));
    let vms = hub.store.vms();
    for version in hub.cfg.pools.keys() {
        let name = format!("pool {version}");
        let why = match &vms {
            Err(e) => Some(format!("the store did not answer: {e}")),
            Ok(vms) => {
                let members: Vec<_> = vms.iter().filter(|v| &v.pool == version).collect();
                if members.is_empty() {
                    Some("no VM seen yet (the reconciler lists the pool's VMs)".to_owned())
                } else if members.iter().all(|v| v.quarantined) {
                    Some(format!(
                        "all {} VMs quarantined (sdci-host vms unquarantine NAME)",
                        members.len()
                    ))
                } else {
                    None
                }
            }
        };
        out.push((name, why));
    }
    let alerts = hub.health.alerts();
    let why = (!alerts.is_empty()).then(|| {
        alerts
            .iter()
            .map(|a| format!("{}: {}", a.key, a.message))
            .collect::<Vec<_>>()
            .join("; ")
    });
    out.push(("alerts".to_owned(), why));
    out.push((
        "accepting work".to_owned(),
        hub.is_draining()
            .then(|| "draining: shutting down (SIGTERM)".to_owned()),
    ));
    out
}

/// The body of `/readyz` and whether every check passed.
pub fn render(checks: &[Check]) -> (bool, String) {
    let mut body = String::new();
    let mut ready = true;
    for (name, why) in checks {
        match why {
            None => {
                let _ = writeln!(body, "ok {name}");
            }
            Some(why) => {
                ready = false;
                let why = why.replace(['\n', '\r'], " ");
                let _ = writeln!(body, "not ok {name}: {why}");
            }
        }
    }
    (ready, body)
}

/// `GET /readyz`.
pub async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    let checks = tokio::task::spawn_blocking(move || checks(&hub, now_ms()))
        .await
        .unwrap_or_else(|e| vec![("readiness".to_owned(), Some(e.to_string()))]);
    let (ready, body) = render(&checks);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(code, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failing_check_makes_it_not_ready_and_names_why() {
        let (ok, body) = render(&[
            ("store".into(), None),
            (
                "vsphere".into(),
                Some("unavailable for 3s: refused\nx".into()),
            ),
        ]);
        assert!(!ok);
        assert_eq!(
            body,
            "ok store\nnot ok vsphere: unavailable for 3s: refused x\n"
        );
        assert!(render(&[("store".into(), None)]).0);
    }
}
