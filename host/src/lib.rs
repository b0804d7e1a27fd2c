//! `sdci-host`: the orchestrator on the bastion.
//!
//! Turns signed GitHub webhooks into jobs in a durable SQLite queue, claims VMs from per-version
//! pools, drives them through the `Hypervisor` contract (vSphere), receives the agents' event
//! streams and serves job pages. It never calls the GitHub API itself: statuses go through the
//! `sdci-agent` binary.
//!
//! Layers, bottom up; a module imports only from its own layer or below (a tidy test fails on an
//! import cycle between top-level modules):
//! 1. [`domain`] (job states, commit info, cron schedules) and [`metrics`] — no I/O.
//! 2. [`config`]: the one TOML file, one file per table, validated once at load.
//! 3. [`store`] (the only SQL) and [`joblog`] (the job logs on disk).
//! 4. [`gateway`]: GitHub through `sdci-agent`, Slack, vSphere.
//! 5. [`hub`]: the state a `serve` process shares.
//! 6. [`orchestration`]: scheduler, lifecycle, VM procedures, dom0 scripts, updates,
//!    reconciler, rotation, nightly, the outbox workers.
//! 7. [`surface`]: webhook, event ingest, web pages, CLI.
//! 8. [`server`]: wires the routes and the background tasks; then `main.rs`.

pub mod config;
pub mod domain;
pub mod gateway;
pub mod hub;
pub mod joblog;
pub mod metrics;
pub mod orchestration;
pub mod sd_notify;
pub mod server;
pub mod store;
pub mod surface;

use std::path::PathBuf;

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("database: {0}; check that the data_dir is writable and not used by another version")]
    Db(#[from] rusqlite::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sdci-agent {command} failed: {message}")]
    Agent { command: String, message: String },
    #[error(transparent)]
    Vsphere(#[from] sdci_vsphere::VsphereError),
    #[error("{0}")]
    Invalid(String),
    #[error("no job {0:?}")]
    NoSuchJob(String),
}

impl HostError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, HostError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `n` random bytes as lowercase hex, from the operating system's generator.
pub fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random generator is available");
    hex::encode(buf)
}
