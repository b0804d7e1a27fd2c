//! The agent's one error type, and how each kind maps to a process exit code.
//!
//! Exit codes (contracts §5, the table is `sdci_protocol::GatewayExit`): `2` infrastructure
//! (GitHub unreachable after retries, rate limited longer than the agent waits, a 5xx that
//! outlived the retries, an answer of the wrong shape), `3` the CI configuration file or its
//! `qubes` key is missing, or `file`'s file is, `78` (EX_CONFIG) configuration, credentials, a
//! request GitHub refused, or a `file` larger than its bound, `64` (EX_USAGE) bad command-line
//! input. Messages never contain a token.

use sdci_protocol::{GatewayExit, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration file, a secret file or an option is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// Command-line input that is not valid (repository, sha, state...).
    #[error("{0}")]
    Usage(String),
    /// GitHub answered with a client error (4xx other than a rate limit).
    #[error("GitHub refused {what}: HTTP {status}: {message}")]
    GitHubRefused {
        what: String,
        status: u16,
        message: String,
    },
    /// GitHub could not be reached, or kept failing, through every retry.
    #[error("GitHub unreachable for {what} after {attempts} attempts: {last}")]
    Unreachable {
        what: String,
        attempts: u32,
        last: String,
    },
    /// A rate limit asked for a longer wait than the configured maximum.
    #[error("GitHub rate limit on {what}: the limit resets in {wait_secs} s, longer than the {max_secs} s this agent waits (retry.max_rate_limit_wait_secs)")]
    RateLimited {
        what: String,
        wait_secs: u64,
        max_secs: u64,
    },
    /// GitHub's answer did not have the documented shape.
    #[error("unexpected answer from GitHub to {what}: {why}")]
    BadAnswer { what: String, why: String },
    /// `.github/workstation-ci.yml` or its `qubes` key is missing or unusable.
    #[error("{0}")]
    NoCiConfig(String),
    /// `file`: no file at that path and commit (a directory or submodule is no file either).
    #[error("{0}")]
    NoSuchFile(String),
    /// `file`: the file is larger than `--max-bytes`.
    #[error("{path} is {size} bytes, more than the {max} bytes asked for (--max-bytes)")]
    FileTooLarge { path: String, size: u64, max: u64 },
    /// A git command failed.
    #[error("git: {0}")]
    Git(String),
    /// Building or writing the archive failed.
    #[error("archive: {0}")]
    Archive(String),
    /// The event relay to the host failed.
    #[error("event relay: {0}")]
    Relay(String),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl AgentError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// How a gateway subcommand ending in this error exits (see the module doc).
    pub fn gateway_exit(&self) -> GatewayExit {
        match self {
            Self::Unreachable { .. } | Self::RateLimited { .. } | Self::BadAnswer { .. } => {
                GatewayExit::Unreachable
            }
            Self::NoCiConfig(_) | Self::NoSuchFile(_) => GatewayExit::NoCiConfig,
            Self::Usage(_) | Self::Protocol(_) => GatewayExit::Usage,
            Self::Config(_) | Self::GitHubRefused { .. } | Self::FileTooLarge { .. } => {
                GatewayExit::Config
            }
            Self::Git(_) | Self::Archive(_) | Self::Relay(_) | Self::Io { .. } => {
                GatewayExit::Unreachable
            }
        }
    }

    /// The process exit code for this error: [`AgentError::gateway_exit`]'s code.
    pub fn exit_code(&self) -> i32 {
        self.gateway_exit().code()
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
