//! [`JobState`]: where a job is in its life, as the store keeps it and every surface shows it.
//!
//! queued → assigned → booting → running → finishing → success | failure | error | canceled.
//! The GitHub state a job reports comes from protocol's one table ([`Outcome`] ⇄ exit code ⇄
//! [`StatusState`]); `canceled` has no outcome of its own and is reported as `error`.

use sdci_protocol::{Outcome, StatusState};

/// Job states, as stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Assigned,
    Booting,
    Running,
    Finishing,
    Success,
    Failure,
    Error,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        Self::Queued,
        Self::Assigned,
        Self::Booting,
        Self::Running,
        Self::Finishing,
        Self::Success,
        Self::Failure,
        Self::Error,
        Self::Canceled,
    ];

    /// The states that hold a VM: between claim and the end of the attempt.
    pub const ACTIVE: [JobState; 4] = [
        Self::Assigned,
        Self::Booting,
        Self::Running,
        Self::Finishing,
    ];

    /// The terminal states.
    pub const TERMINAL: [JobState; 4] = [Self::Success, Self::Failure, Self::Error, Self::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Booting => "booting",
            Self::Running => "running",
            Self::Finishing => "finishing",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// Holding a VM: between claim and the end of the attempt.
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }

    /// The terminal state an outcome ends a job in.
    pub fn from_outcome(o: Outcome) -> Self {
        match o {
            Outcome::Success => Self::Success,
            Outcome::Failure => Self::Failure,
            Outcome::Error => Self::Error,
        }
    }

    /// The outcome of a terminal job (`canceled` counts as `error`: nothing was decided about
    /// the project); `None` while the job is not terminal.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Self::Success => Some(Outcome::Success),
            Self::Failure => Some(Outcome::Failure),
            Self::Error | Self::Canceled => Some(Outcome::Error),
            _ => None,
        }
    }

    /// The GitHub status state the job reports: its outcome's, `pending` until it ends.
    pub fn status_state(self) -> StatusState {
        self.outcome()
            .map_or(StatusState::Pending, Outcome::status_state)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_name() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
        }
        assert!("finished".parse::<JobState>().is_err());
    }

    #[test]
    fn terminal_states_report_protocols_status_and_canceled_reports_error() {
        assert_eq!(JobState::Success.status_state(), StatusState::Success);
        assert_eq!(JobState::Failure.status_state(), StatusState::Failure);
        assert_eq!(JobState::Error.status_state(), StatusState::Error);
        assert_eq!(JobState::Canceled.status_state(), StatusState::Error);
        assert_eq!(JobState::Running.status_state(), StatusState::Pending);
        for o in [Outcome::Success, Outcome::Failure, Outcome::Error] {
            assert_eq!(JobState::from_outcome(o).outcome(), Some(o));
        }
    }
}
