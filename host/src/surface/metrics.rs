//! `GET /metrics` in the Prometheus text format.

use crate::hub::Hub;
use crate::metrics::BUCKETS;
use crate::store::Store;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus lines: rotations by version and result (`running` for those not ended).
pub fn rotation_metrics(store: &Store) -> String {
    let mut out = String::from(
        "# HELP sdci_rotations Golden-snapshot rotations in the store by version and result.\n\
         # TYPE sdci_rotations gauge\n",
    );
    for (v, r, n) in store.rotation_counts().unwrap_or_default() {
        let _ = writeln!(
            out,
            "sdci_rotations{{version=\"{}\",result=\"{}\"}} {n}",
            label(&v),
            label(&r)
        );
    }
    out
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP sdci_queue_depth Jobs waiting for a VM, per Qubes version.\n");
    out.push_str("# TYPE sdci_queue_depth gauge\n");
    for (v, n) in hub.store.queue_depths().unwrap_or_default() {
        let _ = writeln!(
            out,
            "sdci_queue_depth{{version=\"{}\"}} {n}",
            label(v.as_deref().unwrap_or("unresolved"))
        );
    }
    out.push_str("# HELP sdci_jobs Jobs in the store by state (terminal states are outcomes).\n");
    out.push_str("# TYPE sdci_jobs gauge\n");
    for (state, n) in hub.store.state_counts().unwrap_or_default() {
        let _ = writeln!(out, "sdci_jobs{{state=\"{}\"}} {n}", label(&state));
    }
    out.push_str("# HELP sdci_vm_state Pool VMs: leased, quarantined or free (1 per VM).\n");
    out.push_str("# TYPE sdci_vm_state gauge\n");
    for vm in hub.store.vms().unwrap_or_default() {
        let _ = writeln!(
            out,
            "sdci_vm_state{{vm=\"{}\",pool=\"{}\",state=\"{}\"}} 1",
            label(&vm.name),
            label(&vm.pool),
            vm.state()
        );
    }
    out.push_str(&rotation_metrics(&hub.store));
    out.push_str("# HELP sdci_events_total Things that happened since start-up.\n");
    out.push_str("# TYPE sdci_events_total counter\n");
    for (name, n) in hub.metrics.counters() {
        let _ = writeln!(out, "sdci_events_total{{what=\"{}\"}} {n}", label(&name));
    }
    out.push_str("# HELP sdci_phase_duration_seconds Time spent in each job phase.\n");
    out.push_str("# TYPE sdci_phase_duration_seconds histogram\n");
    for (phase, h) in hub.metrics.phases() {
        let p = label(&phase);
        for (b, n) in BUCKETS.iter().zip(h.buckets.iter()) {
            let _ = writeln!(
                out,
                "sdci_phase_duration_seconds_bucket{{phase=\"{p}\",le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "sdci_phase_duration_seconds_bucket{{phase=\"{p}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "sdci_phase_duration_seconds_sum{{phase=\"{p}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "sdci_phase_duration_seconds_count{{phase=\"{p}\"}} {}",
            h.count
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
