//! `[deadlines]`: each phase of a job's attempt has its own bound, in seconds.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    #[serde(default = "d_queue")]
    pub queue_secs: u64,
    #[serde(default = "d_revert")]
    pub revert_secs: u64,
    #[serde(default = "d_power_on")]
    pub power_on_secs: u64,
    #[serde(default = "d_guest_ready")]
    pub guest_ready_secs: u64,
    #[serde(default = "d_upload")]
    pub upload_secs: u64,
    #[serde(default = "d_run")]
    pub run_secs: u64,
    #[serde(default = "d_download")]
    pub download_secs: u64,
    #[serde(default = "d_shutdown")]
    pub shutdown_grace_secs: u64,
    #[serde(default = "d_shutdown_total")]
    pub shutdown_secs: u64,
}

fn d_queue() -> u64 {
    12 * 3600
}
fn d_revert() -> u64 {
    600
}
fn d_power_on() -> u64 {
    600
}
fn d_guest_ready() -> u64 {
    900
}
fn d_upload() -> u64 {
    300
}
fn d_run() -> u64 {
    8 * 3600
}
fn d_download() -> u64 {
    300
}
fn d_shutdown() -> u64 {
    120
}
fn d_shutdown_total() -> u64 {
    600
}

impl Deadlines {
    pub fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("queue_secs", self.queue_secs),
            ("revert_secs", self.revert_secs),
            ("power_on_secs", self.power_on_secs),
            ("guest_ready_secs", self.guest_ready_secs),
            ("upload_secs", self.upload_secs),
            ("run_secs", self.run_secs),
            ("download_secs", self.download_secs),
            ("shutdown_secs", self.shutdown_secs),
        ] {
            if v == 0 {
                return Err(format!("deadlines.{key} must be at least 1 second"));
            }
        }
        Ok(())
    }
}
