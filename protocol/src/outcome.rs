//! How a job ended, in the three vocabularies that must agree: [`Outcome`], the process exit
//! code every sdci program returns, and the GitHub commit-status state.
//!
//! | outcome   | exit code | GitHub state |
//! |-----------|-----------|--------------|
//! | success   | 0         | `success`    |
//! | failure   | 1         | `failure`    |
//! | error     | 2         | `error`      |
//!
//! Any other exit code is an infrastructure error: only a deliberate `1` blames the project.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step passed.
    Success,
    /// A step of the project under test failed (the project's fault).
    Failure,
    /// Infrastructure failed: VM, qrexec, network, deadline (nobody's code under test).
    Error,
}

/// The `state` of a GitHub commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Error => 2,
        }
    }

    /// 0 → success, 1 → failure, anything else (2, signals, qrexec's 125–127) → error.
    pub fn from_exit_code(code: i32) -> Self {
        match code {
            0 => Self::Success,
            1 => Self::Failure,
            _ => Self::Error,
        }
    }

    pub fn status_state(self) -> StatusState {
        match self {
            Self::Success => StatusState::Success,
            Self::Failure => StatusState::Failure,
            Self::Error => StatusState::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
        }
    }
}

impl StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
        }
    }

    /// The terminal outcome this state reports, `None` for `pending`.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Self::Pending => None,
            Self::Success => Some(Outcome::Success),
            Self::Failure => Some(Outcome::Failure),
            Self::Error => Some(Outcome::Error),
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    /// The inverse of [`Outcome::as_str`].
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "success" => Ok(Self::Success),
            "failure" => Ok(Self::Failure),
            "error" => Ok(Self::Error),
            _ => Err(format!(
                "unknown outcome {s:?}: expected success, failure or error"
            )),
        }
    }
}

impl std::str::FromStr for StatusState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(Self::Pending),
            "success" => Ok(Self::Success),
            "failure" => Ok(Self::Failure),
            "error" => Ok(Self::Error),
            _ => Err(format!(
                "unknown status state {s:?}: expected pending, success, failure or error"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_exit_code_and_status_agree() {
        for (o, code, state) in [
            (Outcome::Success, 0, "success"),
            (Outcome::Failure, 1, "failure"),
            (Outcome::Error, 2, "error"),
        ] {
            assert_eq!(o.exit_code(), code);
            assert_eq!(Outcome::from_exit_code(code), o);
            assert_eq!(o.status_state().as_str(), state);
            assert_eq!(state.parse::<StatusState>().unwrap().outcome(), Some(o));
        }
    }

    #[test]
    fn unexpected_exit_codes_are_infrastructure_errors() {
        for code in [-1, 3, 125, 126, 127, 137, 255] {
            assert_eq!(Outcome::from_exit_code(code), Outcome::Error, "{code}");
        }
    }

    #[test]
    fn pending_is_not_an_outcome() {
        assert_eq!(StatusState::Pending.outcome(), None);
        assert!("running".parse::<StatusState>().is_err());
    }
}
