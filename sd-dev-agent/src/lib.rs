//! `sdci-agent`: the only program that talks to GitHub.
//!
//! In sd-dev (`run`) it fetches the commit, streams a zstd tarball to dom0 over qrexec and
//! relays the events to the host; on the host (`status`, `token`, `revoke`, `head`,
//! `ci-config`, `check-run`, `permission`, `file`) it is the GitHub gateway `sdci-host` runs.
//! Modules:
//!
//! - [`config`]: the TOML file, environment overrides, secret files.
//! - [`github`]: the REST client on octocrab (statuses, contents, branches, check runs,
//!   collaborator permissions, installation tokens), retries and rate limits; [`app_jwt`]: the
//!   App's RS256 JWT.
//! - [`gateway`]: the host-side subcommands; [`check_run`]: `check-run`'s limits and body.
//! - [`run`]: one job in sd-dev, using [`checkout`] (git fetch of one commit), [`archive`]
//!   (streamed tar.zst), [`dom0_call`] (the qrexec call) and [`relay`] (events to the host).
//! - [`ci_config`]: `qubes:` from `.github/workstation-ci.yml`.
//! - [`error`]: the crate's error type and its exit codes.

pub mod app_jwt;
pub mod archive;
pub mod check_run;
pub mod checkout;
pub mod ci_config;
pub mod config;
pub mod dom0_call;
pub mod error;
pub mod gateway;
pub mod github;
pub mod relay;
pub mod run;

pub use error::{AgentError, Result};
