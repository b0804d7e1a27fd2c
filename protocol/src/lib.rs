//! The shared language of sdci's three programs.
//!
//! Everything that crosses a process or machine boundary is defined here, once:
//! - [`ids`]: validated identifiers ([`JobId`], [`CommitSha`], [`RepoName`]). A value of these
//!   types is valid by construction; parsing is the only way in.
//! - [`job`]: the job file the host uploads to dom0 ([`JobFile`] = [`JobSpec`] + [`AgentJob`]).
//! - [`event`]: the NDJSON event stream dom0 → sd-dev → host, with a bounded reader.
//! - [`outcome`]: [`Outcome`] ⇄ process exit code ⇄ GitHub commit-status state.
//! - [`ingest`]: the host's event endpoint and its reply ([`NextSeq`]).
//! - [`logline`]: the line format of a job's log, shared by dom0's `log.txt` and the host's
//!   live copy.
//! - [`gateway`]: `sdci-agent status|token|head|ci-config`: exit codes ([`GatewayExit`]) and the
//!   minted-token line ([`MintedToken`]).
//! - [`paths`]: dom0's paths of a job (`.sdci/jobs/<id>/job.json`, `log.txt`,
//!   `results.tar.zst`).
//! - [`results`]: what dom0 collects after the steps ([`ResultsSpec`]) and the manifest of the
//!   results file ([`ResultsManifest`]).
//! - [`secret`]: [`Secret`] and the one rule for reading a secret from a file.
//! - [`time`]: UTC calendar dates and their formats ([`Utc`]), no date crate.
//!
//! CONTRACTS.md at the repository root describes each seam with both of its sides; this crate
//! holds the types that carry them.
//!
//! This crate is linked into `sdci-dom0`, the most trusted program, so it depends on serde and
//! serde_json only and never panics on input.

pub mod event;
pub mod gateway;
pub mod ids;
pub mod ingest;
pub mod job;
pub mod logline;
pub mod outcome;
pub mod paths;
pub mod results;
pub mod secret;
pub mod time;

pub use event::{Event, EventKind, EventReader, EventWriter, MAX_EVENT_LINE};
pub use gateway::{GatewayExit, MintedToken};
pub use ids::{CommitSha, JobId, RepoName};
pub use ingest::NextSeq;
pub use job::{AgentJob, JobFile, JobSpec, Reason, Step, JOB_FILE_VERSION};
pub use outcome::{Outcome, StatusState};
pub use paths::JobPaths;
pub use results::{ResultsManifest, ResultsSpec};
pub use secret::Secret;
pub use time::Utc;

use std::path::PathBuf;

/// Every way protocol data can be refused. One error type for the crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A job id broke one of the qrexec-argument rules.
    InvalidJobId { value: String, why: &'static str },
    /// A commit sha was not 40 or 64 lowercase hex digits.
    InvalidSha { value: String },
    /// A repository name was not `owner/name` with GitHub's characters.
    InvalidRepo { value: String, why: &'static str },
    /// A job file or event was not valid JSON of the expected shape (unknown fields included).
    Json(String),
    /// A job file or event carried a version this build does not understand.
    UnsupportedVersion { found: u32, supported: u32 },
    /// A job file was internally inconsistent (e.g. the agent part names another job).
    Inconsistent(String),
    /// An event line exceeded [`MAX_EVENT_LINE`] bytes.
    LineTooLong { limit: usize },
    /// The stream ended in the middle of a line.
    TornLine { len: usize },
    /// Reading the underlying stream failed.
    Io(String),
    /// A secret file could not be read (the I/O error's text; never the contents).
    SecretUnreadable { path: PathBuf, error: String },
    /// A secret file was empty (after its one trailing newline).
    SecretEmpty { path: PathBuf },
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidJobId { value, why } => {
                write!(f, "invalid job id {:?}: {why}", truncate(value))
            }
            Self::InvalidSha { value } => write!(
                f,
                "invalid commit sha {:?}: expected 40 (SHA-1) or 64 (SHA-256) lowercase hex digits",
                truncate(value)
            ),
            Self::InvalidRepo { value, why } => {
                write!(f, "invalid repository name {:?}: {why}", truncate(value))
            }
            Self::Json(e) => write!(f, "malformed protocol data: {e}"),
            Self::UnsupportedVersion { found, supported } => write!(
                f,
                "unsupported protocol version {found} (this build speaks {supported}); \
                 upgrade the older of the programs involved"
            ),
            Self::Inconsistent(e) => write!(f, "inconsistent job file: {e}"),
            Self::LineTooLong { limit } => {
                write!(f, "event line longer than {limit} bytes; stream refused")
            }
            Self::TornLine { len } => {
                write!(
                    f,
                    "event stream ended inside a line ({len} bytes without a newline)"
                )
            }
            Self::Io(e) => write!(f, "reading the event stream failed: {e}"),
            Self::SecretUnreadable { path, error } => {
                write!(f, "cannot read the secret file {}: {error}", path.display())
            }
            Self::SecretEmpty { path } => {
                write!(f, "the secret file {} is empty", path.display())
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Shortens attacker-controlled values before they reach an error message.
fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
