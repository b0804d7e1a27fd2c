//! In-process counters and phase-duration histograms for `/metrics` (job counts, queue depths
//! and VM states are read from the store at scrape time).

use std::collections::BTreeMap;
use std::sync::Mutex;

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
