//! `sdci-dom0`: the qrexec service `sdci.Run` and the `launch` command, in Qubes dom0.
//!
//! The most trusted program of sdci. It has no network stack (no tokio, no HTTP) and trusts
//! nothing that arrives from the dev VM: the caller, the job id and the archive are checked; the
//! steps come from dom0's own copy of the job file.
//!
//! Modules:
//! - [`config`]: the TOML configuration and its defaults.
//! - [`job`]: locating and reading dom0's own job file.
//! - [`tarstream`]: a strict streaming tar reader (no file system access).
//! - [`unpack`]: the hardened unpacker and its [`unpack::Limits`].
//! - [`tree`]: no-follow removal and moving the tree into place.
//! - [`steps`]: running one command in its own process group, with timeout and merged output.
//! - [`ansi`]: stripping terminal escape sequences from output.
//! - [`log`]: the job log file and the event stream on stdout.
//! - [`privilege`]: switching from root to the dom0 user.
//! - [`service`]: the `sdci.Run` flow; [`launch`]: the `launch` flow.
//! - [`rerun`]: `sdci-dom0 rerun`, a stage re-run's steps on the tree a provisioned snapshot
//!   holds (issue 18, contracts §12).
//! - [`results`]: after the steps, the JUnit files and the failure evidence into
//!   `results.tar.zst` (contracts §11).
//! - [`fixture`]: tar and tree generators for tests, the benchmark and fuzzing.

pub mod ansi;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fixture;
pub mod job;
pub mod launch;
pub mod log;
pub mod privilege;
pub mod rerun;
pub mod results;
pub mod service;
pub mod steps;
pub mod tarstream;
pub mod tree;
pub mod unpack;

pub use error::{Error, Result};
