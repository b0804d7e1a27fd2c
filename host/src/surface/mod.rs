//! The surfaces: everything that takes input from outside the process and answers it.
//!
//! - [`webhook`]: `POST /hooks/github` — signature, filters, one job per delivery.
//! - [`commands`]: matrix triggers from GitHub: `skip-ci`, run labels, `/sdci` comments (issue 20).
//! - [`events`]: the agents' NDJSON event ingest (contracts §1).
//! - [`web`]: job pages, `POST /api/v1/wake`.
//! - [`metrics`]: Prometheus `/metrics`; [`health`]: `/healthz`.
//! - [`cli`]: the subcommands other than `serve`, on the store file directly.
//! - [`reruns`]: a re-run from a stage (issue 18), the one rule behind the CLI, the check
//!   run's "Re-run tests" and the job page.
//! - [`holds`]: `jobs hold|release`, and the holds and provisioned snapshots `vms` shows.
//! - [`check_config`]: `sdci-host check-config [--connect]`.
//!
//! Boundary: a surface parses and checks what it is given, then calls the store, the hub or the
//! orchestration; nothing below imports a surface.

pub mod check_config;
pub mod cli;
pub mod commands;
pub mod events;
pub mod health;
pub mod holds;
pub mod metrics;
pub mod reruns;
pub mod web;
pub mod webhook;
