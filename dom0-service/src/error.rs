//! The one error type of `sdci-dom0`. Every message says what was refused or what failed, and
//! where it helps, what to do next. Values that come from the dev VM (entry names, job ids) are
//! shown escaped and shortened, never raw.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is unreadable or invalid.
    #[error("configuration {path}: {why}")]
    Config { path: PathBuf, why: String },

    /// The qrexec call itself was refused: job id, caller, service name, job state.
    #[error("refused: {0}")]
    Refused(String),

    /// dom0's own job file is missing or invalid.
    #[error("job file {path}: {why}")]
    JobFile { path: PathBuf, why: String },

    /// The archive broke one of the unpacking rules; nothing was moved into place.
    #[error("archive refused{}: {why}", entry.as_ref().map(|e| format!(" at entry {}", shown(e))).unwrap_or_default())]
    Archive { entry: Option<String>, why: String },

    /// A step's program could not be started.
    #[error("cannot start {program}: {source}; is it installed in dom0?")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// Switching from root to the dom0 user failed.
    #[error("cannot switch to user {user:?}: {why}")]
    Privilege { user: String, why: String },

    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub fn archive(entry: Option<&str>, why: impl Into<String>) -> Self {
        Self::Archive {
            entry: entry.map(str::to_owned),
            why: why.into(),
        }
    }
}

/// Quotes an untrusted value for a message: escaped (`{:?}`) and cut to 120 bytes.
pub fn shown(s: &str) -> String {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &s[..end])
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
