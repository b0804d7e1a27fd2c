//! In-process counters and phase-duration histograms for `/metrics` (what ended jobs, queue
//! depths and VM states are is read from the store at scrape time, `store::stats`).
//!
//! Counters are named by what happened (`count("attempts_retried")`) and exposed as
//! `sdci_<name>_total` with the help text of [`COUNTERS`]; the names listed there are exposed
//! from start-up at 0, so a rate over them never starts from a missing series. `alert_<kind>`
//! becomes `sdci_alerts_total{kind}`. `jobs_<state>` is not exposed: `sdci_jobs_total` comes
//! from the store, which also sees jobs that other processes ended.

use std::collections::BTreeMap;
use std::sync::Mutex;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The process's counters and phase histograms.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, u64>>,
    phases: Mutex<BTreeMap<String, Histogram>>,
}

/// Bucket bounds, seconds: phases range from a second (upload) to hours (the run).
pub const BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// The counters exposed from start-up (at 0 until they happen), with their help text.
pub const COUNTERS: &[(&str, &str)] = &[
    (
        "attempts_retried",
        "Attempts that failed on infrastructure and were retried on another VM.",
    ),
    (
        "attempts_outage",
        "Attempts interrupted by a vSphere outage and queued again (counted against nothing).",
    ),
    (
        "webhook_rejected",
        "Webhook deliveries refused (signature, size, content type, payload).",
    ),
    (
        "stray_vms_powered_off",
        "Powered-on pool VMs without a job that the reconciler powered off.",
    ),
    ("job_updates_ok", "Per-job Qubes update phases that passed."),
    (
        "job_updates_failed",
        "Per-job Qubes update phases that failed.",
    ),
    (
        "rotations_ok",
        "Golden-snapshot rotations that moved the pointer.",
    ),
    ("rotations_failed", "Golden-snapshot rotations that failed."),
    ("alerts_raised", "Alerts raised (an operator must act)."),
    (
        "http_connections_refused",
        "HTTP connections refused because too many were open.",
    ),
];

/// One histogram: cumulative counts per bound of [`BUCKETS`], the count and the sum.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// How a counter name is exposed: the metric's name without `_total`, and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposed {
    /// `sdci_<name>_total`.
    Plain(String),
    /// `sdci_alerts_total{kind="<kind>"}`.
    Alert(String),
    /// Not exposed (counted elsewhere).
    Hidden,
}

/// Where counter `name` goes in `/metrics`.
pub fn exposed(name: &str) -> Exposed {
    if let Some(kind) = name.strip_prefix("alert_") {
        return Exposed::Alert(kind.to_owned());
    }
    if name.starts_with("jobs_") {
        return Exposed::Hidden;
    }
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    Exposed::Plain(clean)
}

/// The help text of a counter (generic for one not in [`COUNTERS`]).
pub fn help(name: &str) -> String {
    COUNTERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| (*h).to_owned())
        .unwrap_or_else(|| format!("Times \"{name}\" happened since start-up."))
}

impl Metrics {
    pub fn count(&self, name: &str) {
        *lock(&self.counters).entry(name.to_owned()).or_default() += 1;
    }

    pub fn observe_phase(&self, phase: &str, secs: f64) {
        lock(&self.phases)
            .entry(phase.to_owned())
            .or_default()
            .observe(secs);
    }

    /// A dom0 step's duration as the live stream reported it (`phase="dom0_step"`); the
    /// per-step histograms come from the store.
    pub fn observe_step(&self, secs: f64) {
        self.observe_phase("dom0_step", secs);
    }

    /// Every counter: those of [`COUNTERS`] (0 until they happen) and any other counted.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> =
            COUNTERS.iter().map(|(n, _)| ((*n).to_owned(), 0)).collect();
        all.extend(lock(&self.counters).iter().map(|(k, v)| (k.clone(), *v)));
        all
    }

    pub fn phases(&self) -> BTreeMap<String, Histogram> {
        lock(&self.phases).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_counters_exist_at_zero_and_count_up() {
        let m = Metrics::default();
        assert_eq!(m.counters()["attempts_retried"], 0);
        m.count("attempts_retried");
        m.count("something_new");
        let c = m.counters();
        assert_eq!((c["attempts_retried"], c["something_new"]), (1, 1));
    }

    #[test]
    fn names_map_to_prometheus_names() {
        assert_eq!(exposed("alert_config"), Exposed::Alert("config".into()));
        assert_eq!(exposed("jobs_error"), Exposed::Hidden);
        assert_eq!(exposed("Odd-Name"), Exposed::Plain("odd_name".into()));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(3.0);
        h.observe(100.0);
        assert_eq!(h.buckets[0], 0);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[4], 2);
        assert_eq!((h.count, h.sum), (2, 103.0));
    }
}
