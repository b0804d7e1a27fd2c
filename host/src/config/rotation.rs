//! `[rotation]` and `[[rotation.schedule]]`: golden-snapshot rotation, and scheduled builds of a
//! pool's matrix scenarios (`scenario = "S"`, a built scenario of `[pools.V] scenarios`).

use crate::domain::Schedule;
use serde::{Deserialize, Serialize};

/// `[rotation]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    /// `update_*` snapshots kept per VM (the current and previous golden are kept regardless).
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Seconds to wait for a busy VM to become free before the rotation fails.
    #[serde(default = "default_wait_free")]
    pub wait_free_secs: u64,
    /// Seconds between looks at a busy VM.
    #[serde(default = "default_poll")]
    pub busy_poll_secs: u64,
    /// Seconds each smoke-test command may take.
    #[serde(default = "default_smoke")]
    pub smoke_step_secs: u64,
    /// Rotations on a schedule.
    #[serde(default)]
    pub schedule: Vec<RotationSchedule>,
}

/// `[[rotation.schedule]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotationSchedule {
    pub version: String,
    /// 5-field cron expression (see `domain::cron`).
    pub cron: String,
    /// `UTC` or a fixed offset such as `+02:00`.
    pub time_zone: String,
    /// Apply updates before the snapshot (a golden rotation; a scenario's build runs its own
    /// `provision` instead and ignores this).
    #[serde(default = "super::yes")]
    pub update: bool,
    /// Build this scenario of `[pools.<version>] scenarios` (a table) instead of rotating the
    /// golden snapshot: `sdci-host save --version V --scenario S` on the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
}

impl RotationSchedule {
    /// The parsed schedule (validated when the file was loaded).
    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::parse(&self.cron, &self.time_zone)
    }
}

fn default_keep() -> usize {
    3
}
fn default_wait_free() -> u64 {
    6 * 3600
}
fn default_poll() -> u64 {
    10
}
fn default_smoke() -> u64 {
    300
}

impl Default for RotationConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field of [rotation] has a default")
    }
}

impl RotationConfig {
    pub(super) fn validate(
        &self,
        pools: &std::collections::BTreeMap<String, super::PoolConfig>,
    ) -> Result<(), String> {
        for (i, s) in self.schedule.iter().enumerate() {
            let Some(name) = &s.scenario else { continue };
            let built = pools
                .get(&s.version)
                .and_then(|p| p.scenarios.get(name))
                .is_some_and(|x| matches!(x, super::Scenario::Built(_)));
            if !built {
                return Err(format!(
                    "rotation.schedule[{i}].scenario {name:?}: [pools.{:?}] has no built scenario \
                     of that name; add [pools.{:?}.scenarios.{name}] with base and provision, or \
                     name one of its tables",
                    s.version, s.version
                ));
            }
        }
        for (i, s) in self.schedule.iter().enumerate() {
            s.schedule().map_err(|e| {
                format!(
                    "rotation.schedule[{i}] (version {:?}): {e}; write e.g. cron = \"0 4 * * 0\" \
                     and time_zone = \"UTC\"",
                    s.version
                )
            })?;
        }
        Ok(())
    }
}
