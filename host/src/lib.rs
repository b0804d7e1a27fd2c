//! `sdci-host`: the orchestrator on the bastion.
//!
//! Turns signed GitHub webhooks into jobs in a durable SQLite queue, claims VMs from per-version
//! pools, drives them through vSphere, receives the agents' event streams and serves job pages.
//! It never calls the GitHub API itself: statuses go through the `sdci-agent` binary.
//!
//! Modules, from the outside in:
//! - [`config`]: the one TOML file and its defaults.
//! - [`webhook`]: `POST /hooks/github` — signature, filters, one job per delivery.
//! - [`store`]: the SQLite database: jobs, transitions, leases, deliveries, statuses, timings.
//! - [`scheduler`]: per-version pools, FIFO claims, dispatch the moment a VM frees.
//! - [`lifecycle`]: one job on one VM, phase by phase, each with its own deadline.
//! - [`reconcile`]: start-up and periodic repair: stray VMs off, stuck jobs ended, statuses sent.
//! - [`events`]: the agent's NDJSON event ingest and the job logs on disk.
//! - [`web`]: job pages, `/healthz`, Prometheus `/metrics`.
//! - [`agent`]: runs `sdci-agent` for statuses, tokens and `ci-config`; the status outbox.
//! - [`server`]: wires the above into the `serve` process.
//! - [`cli`]: the non-`serve` subcommands, working on the store directly.
//! - [`notify`]: Slack messages for terminal jobs (an outbox over the store) and rotations.
//! - [`nightly`]: nightly jobs, and the cron schedules (nightly and rotation) of `serve`.
//! - [`updates`]: Qubes updates and checks run in dom0 through guest operations; reboot.
//! - [`rotation`]: golden-snapshot rotation (`save`): lease, update, snapshot, smoke test, move.

pub mod agent;
pub mod cli;
pub mod config;
pub mod events;
pub mod lifecycle;
pub mod nightly;
pub mod notify;
pub mod reconcile;
pub mod rotation;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod updates;
pub mod web;
pub mod webhook;

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
