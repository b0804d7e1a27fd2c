//! `[nightly]` and `[[nightly.schedule]]`: branches tested every night, with updates first.

use crate::domain::Schedule;
use serde::{Deserialize, Serialize};

/// `[nightly]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NightlyConfig {
    /// Repository for nightly jobs; absent means `default_repo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// One entry per branch to test nightly.
    #[serde(default)]
    pub schedule: Vec<NightlySchedule>,
}

/// `[[nightly.schedule]]`: one branch, when, in which time zone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NightlySchedule {
    pub branch: String,
    /// 5-field cron expression, e.g. `"0 2 * * *"`.
    pub cron: String,
    /// `UTC` or a fixed offset such as `+02:00` (required: a schedule names its zone).
    pub time_zone: String,
}

impl NightlySchedule {
    /// The parsed schedule (validated when the file was loaded).
    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::parse(&self.cron, &self.time_zone)
    }
}

impl NightlyConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.repo {
            r.parse::<sdci_protocol::RepoName>()
                .map_err(|e| format!("nightly.repo: {e}; write owner/name"))?;
        }
        for (i, s) in self.schedule.iter().enumerate() {
            s.schedule().map_err(|e| {
                format!(
                    "nightly.schedule[{i}] (branch {:?}): {e}; write e.g. cron = \"0 2 * * *\" \
                     and time_zone = \"UTC\"",
                    s.branch
                )
            })?;
        }
        Ok(())
    }
}
