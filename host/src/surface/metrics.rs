//! `GET /metrics` in the Prometheus text format (version 0.0.4), named by Prometheus'
//! conventions: `_total` counters, `_seconds` histograms, base units, one family per name.
//!
//! From the store at scrape time (`store::stats`; they survive restarts and count what the
//! CLI did): `sdci_jobs_total{outcome,reason}`, `sdci_job_duration_seconds{outcome}`,
//! `sdci_step_duration_seconds{step}`, `sdci_jobs{state}`, `sdci_queue_depth{version}`,
//! `sdci_queue_oldest_seconds{version}`, `sdci_vms{pool,state}`, `sdci_pool_quarantined{pool}`,
//! `sdci_statuses_unposted`, `sdci_rotations{version,result}`. From this process: `sdci_up`-like
//! dependency gauges (`sdci_store_up`, `sdci_vsphere_up`, `sdci_gateway_up`,
//! `sdci_alerts_active`), `sdci_build_info{version}`, the counters of `crate::metrics`
//! (`sdci_<name>_total`, `sdci_alerts_total{kind}`) and `sdci_phase_duration_seconds{phase}`.
//!
//! Invariants: every label combination an operator alerts on is present at 0 (each configured
//! pool and version, each outcome × reason, each configured step), so series never vanish at
//! zero; label values are escaped; `promtool check metrics` accepts the output (CI runs it).

use crate::domain::JobState;
use crate::hub::Hub;
use crate::metrics::{self, Exposed, Histogram, BUCKETS};
use crate::store::Store;
use crate::{now_ms, Result};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sdci_protocol::Reason;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The VM states of `sdci_vms` (`store::VmRow::state`).
pub const VM_STATES: [&str; 3] = ["free", "leased", "quarantined"];

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text being built, one family at a time.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        for (b, n) in BUCKETS.iter().zip(h.buckets.iter()) {
            let le = format!("{b:?}");
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, n);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// Prometheus lines: rotations by version and result (`running` for those not ended).
pub fn rotation_metrics(store: &Store) -> String {
    let mut e = Exposition::default();
    e.family(
        "sdci_rotations",
        "gauge",
        "Golden-snapshot rotations in the store by version and result.",
    );
    for (v, r, n) in store.rotation_counts().unwrap_or_default() {
        e.sample("sdci_rotations", &[("version", &v), ("result", &r)], n);
    }
    e.out
}

/// What the store says, read in one go so a failing store shows as `sdci_store_up 0` and no
/// store families, never as zeros that look true.
struct StoreView {
    ended: Vec<(String, String, u64)>,
    job_durations: BTreeMap<String, Histogram>,
    step_durations: BTreeMap<String, Histogram>,
    states: Vec<(String, i64)>,
    queue: Vec<(Option<String>, u64, i64)>,
    vms: Vec<crate::store::VmRow>,
    unposted: u64,
    rotations: String,
}

fn read_store(store: &Store) -> Result<StoreView> {
    Ok(StoreView {
        ended: store.ended_jobs()?,
        job_durations: store.job_durations()?,
        step_durations: store.step_durations()?,
        states: store.state_counts()?,
        queue: store.queue_ages()?,
        vms: store.vms()?,
        unposted: store.statuses_unposted()?,
        rotations: rotation_metrics(store),
    })
}

/// The whole exposition for `hub` at time `now` (Unix ms).
pub fn render(hub: &Hub, now: i64) -> String {
    let mut e = Exposition::default();
    e.family(
        "sdci_build_info",
        "gauge",
        "The running sdci-host's version (always 1).",
    );
    e.sample(
        "sdci_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    let view = read_store(&hub.store);
    e.family(
        "sdci_store_up",
        "gauge",
        "Whether the SQLite store answered this scrape (0: the store families are missing).",
    );
    e.sample("sdci_store_up", &[], u8::from(view.is_ok()));
    if let Err(err) = &view {
        tracing::warn!(error = %err, "/metrics: the store did not answer");
    }
    let health = hub.health.vsphere();
    e.family(
        "sdci_vsphere_up",
        "gauge",
        "Whether vSphere answered the last call (1) or is unavailable (0).",
    );
    e.sample("sdci_vsphere_up", &[], u8::from(health.ok));
    e.family(
        "sdci_gateway_up",
        "gauge",
        "Whether the sdci-agent gateway (GitHub) answered the last call.",
    );
    e.sample("sdci_gateway_up", &[], u8::from(hub.health.gateway().ok));
    e.family(
        "sdci_alerts_active",
        "gauge",
        "Alerts standing now (an operator must act; /readyz names them).",
    );
    e.sample("sdci_alerts_active", &[], hub.health.alerts().len());

    if let Ok(v) = &view {
        store_families(&mut e, hub, v, now);
    }

    // In-process counters.
    let mut alerts: BTreeMap<String, u64> = BTreeMap::new();
    for (name, n) in hub.metrics.counters() {
        match metrics::exposed(&name) {
            Exposed::Plain(clean) => {
                let metric = format!("sdci_{clean}_total");
                e.family(&metric, "counter", &metrics::help(&name));
                e.sample(&metric, &[], n);
            }
            Exposed::Alert(kind) => *alerts.entry(kind).or_default() += n,
            Exposed::Hidden => {}
        }
    }
    e.family(
        "sdci_alerts_total",
        "counter",
        "Alerts raised since start-up, by kind (config, pool, status, ...).",
    );
    for (kind, n) in &alerts {
        e.sample("sdci_alerts_total", &[("kind", kind)], n);
    }
    e.family(
        "sdci_phase_duration_seconds",
        "histogram",
        "Time spent in each phase of an attempt (revert, boot, upload, run, ...).",
    );
    for (phase, h) in hub.metrics.phases() {
        e.histogram("sdci_phase_duration_seconds", &[("phase", &phase)], &h);
    }
    e.out
}

fn store_families(e: &mut Exposition, hub: &Hub, v: &StoreView, now: i64) {
    e.family(
        "sdci_jobs_total",
        "counter",
        "Jobs ended, by outcome (success, failure, error, canceled) and reason.",
    );
    let mut ended: BTreeMap<(String, String), u64> = BTreeMap::new();
    for st in JobState::TERMINAL {
        for r in Reason::ALL {
            ended.insert((st.as_str().into(), r.as_str().into()), 0);
        }
    }
    for (st, r, n) in &v.ended {
        ended.insert((st.clone(), r.clone()), *n);
    }
    for ((st, r), n) in &ended {
        e.sample("sdci_jobs_total", &[("outcome", st), ("reason", r)], n);
    }

    e.family(
        "sdci_job_duration_seconds",
        "histogram",
        "Ended jobs' time from queued to ended, by outcome.",
    );
    for st in JobState::TERMINAL {
        let h = v
            .job_durations
            .get(st.as_str())
            .cloned()
            .unwrap_or_default();
        e.histogram("sdci_job_duration_seconds", &[("outcome", st.as_str())], &h);
    }

    e.family(
        "sdci_step_duration_seconds",
        "histogram",
        "Finished dom0 steps' durations, by step name.",
    );
    let mut steps: BTreeMap<String, Histogram> = hub
        .cfg
        .steps()
        .into_iter()
        .map(|s| (s.name, Histogram::default()))
        .collect();
    steps.extend(v.step_durations.clone());
    for (name, h) in &steps {
        e.histogram("sdci_step_duration_seconds", &[("step", name)], h);
    }

    e.family(
        "sdci_jobs",
        "gauge",
        "Jobs not ended yet, by state (queued, assigned, booting, running, finishing).",
    );
    for st in JobState::ALL.into_iter().filter(|s| !s.is_terminal()) {
        let n = v
            .states
            .iter()
            .find(|(s, _)| s == st.as_str())
            .map_or(0, |(_, n)| *n);
        e.sample("sdci_jobs", &[("state", st.as_str())], n);
    }

    let mut queue: BTreeMap<String, (u64, i64)> = hub
        .cfg
        .pools
        .keys()
        .map(|k| (k.clone(), (0, now)))
        .collect();
    queue.insert("unresolved".into(), (0, now));
    for (ver, n, oldest) in &v.queue {
        let key = ver.clone().unwrap_or_else(|| "unresolved".into());
        queue.insert(key, (*n, *oldest));
    }
    e.family(
        "sdci_queue_depth",
        "gauge",
        "Jobs waiting for a VM, per Qubes version (unresolved: version not known yet).",
    );
    for (ver, (n, _)) in &queue {
        e.sample("sdci_queue_depth", &[("version", ver)], n);
    }
    e.family(
        "sdci_queue_oldest_seconds",
        "gauge",
        "How long the oldest queued job of each version has waited (0: none waits).",
    );
    for (ver, (_, oldest)) in &queue {
        let secs = (now - oldest).max(0) as f64 / 1000.0;
        e.sample("sdci_queue_oldest_seconds", &[("version", ver)], secs);
    }

    let mut pools: BTreeSet<String> = hub.cfg.pools.keys().cloned().collect();
    pools.extend(v.vms.iter().map(|vm| vm.pool.clone()));
    e.family(
        "sdci_vms",
        "gauge",
        "Pool VMs known to the store, by pool and state (free, leased, quarantined).",
    );
    for pool in &pools {
        for st in VM_STATES {
            let n = v
                .vms
                .iter()
                .filter(|vm| &vm.pool == pool && vm.state() == st)
                .count();
            e.sample("sdci_vms", &[("pool", pool), ("state", st)], n);
        }
    }
    e.family(
        "sdci_pool_quarantined",
        "gauge",
        "1 when every VM of the pool is quarantined (no job of that version can run).",
    );
    for pool in &pools {
        let members: Vec<_> = v.vms.iter().filter(|vm| &vm.pool == pool).collect();
        let all = !members.is_empty() && members.iter().all(|vm| vm.quarantined);
        e.sample("sdci_pool_quarantined", &[("pool", pool)], u8::from(all));
    }

    e.family(
        "sdci_statuses_unposted",
        "gauge",
        "Commit statuses in the outbox not yet accepted by GitHub.",
    );
    e.sample("sdci_statuses_unposted", &[], v.unposted);
    e.out.push_str(&v.rotations);
    // Provisioned snapshots and held VMs (issue 18).
    let names: Vec<String> = hub.cfg.pools.keys().cloned().collect();
    e.out.push_str(&stage_metrics(&hub.store, &names));
}

/// `GET /metrics`.
pub async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    let hub2 = hub.clone();
    let text = tokio::task::spawn_blocking(move || render(&hub2, now_ms()))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Prometheus lines for `/metrics`: provisioned snapshots per pool (count, and bytes where
/// the hypervisor reports sizes: `sdci_stage_snapshot_bytes` counts only those) and held VMs.
pub fn stage_metrics(store: &Store, pools: &[String]) -> String {
    let snaps = store.stage_snapshots().unwrap_or_default();
    let holds = store.holds().unwrap_or_default();
    let mut out = String::from(
        "# HELP sdci_stage_snapshots Provisioned snapshots kept, by pool (issue 18).\n\
         # TYPE sdci_stage_snapshots gauge\n",
    );
    for p in pools {
        let n = snaps.iter().filter(|s| &s.version == p).count();
        let _ = writeln!(out, "sdci_stage_snapshots{{pool=\"{}\"}} {n}", label(p));
    }
    out.push_str(
        "# HELP sdci_stage_snapshot_bytes Datastore bytes of the provisioned snapshots whose size \
         the hypervisor reports, by pool.\n# TYPE sdci_stage_snapshot_bytes gauge\n",
    );
    for p in pools {
        let b: i64 = snaps
            .iter()
            .filter(|s| &s.version == p)
            .filter_map(|s| s.bytes)
            .sum();
        let _ = writeln!(
            out,
            "sdci_stage_snapshot_bytes{{pool=\"{}\"}} {b}",
            label(p)
        );
    }
    out.push_str(
        "# HELP sdci_held_vms VMs kept on after their job for debugging.\n\
         # TYPE sdci_held_vms gauge\n",
    );
    let _ = writeln!(out, "sdci_held_vms {}", holds.len());
    out
}
