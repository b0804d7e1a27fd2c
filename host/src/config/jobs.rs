//! `[jobs]`: retries, quarantine, superseding, polling, and the dom0 steps of every job.

use sdci_protocol::job::Step;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Tries per job; infrastructure failures are retried on another VM until this many.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Consecutive infrastructure failures after which a VM is quarantined.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// A newer push to a branch also stops that branch's running job (not only queued ones).
    #[serde(default)]
    pub supersede_running: bool,
    /// After a vSphere outage (503, dropped connection) cut an attempt short, the pause before
    /// the job is queued again, in milliseconds; doubled for each further outage of the job, at
    /// most 5 minutes. Such attempts count neither against `max_attempts` nor towards quarantine.
    #[serde(default = "default_outage_retry_ms")]
    pub outage_retry_ms: u64,
    /// Milliseconds between checks of the running `sdci-dom0 launch` process: the safety net.
    /// The relayed `Result` event (or the end of the event stream) makes the host look at once.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Seconds a VM lease written on the VM (its vSphere annotation) stays valid without being
    /// renewed; the instance renews its leases every quarter of this. Another `sdci-host` on the
    /// same vSphere takes over (powers off, then may claim) a VM whose lease is older than this.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
    /// Permanent refusals (`sdci-agent status` exit 64/78) of one commit status before the host
    /// posts it with its own plain description instead; refused again, it gives up and alerts.
    #[serde(default = "default_status_refusals")]
    pub status_refusals: u32,
    /// The most of dom0's `log.txt` the host downloads at a job's end, bytes; a longer log is
    /// cut there (streamed to a temporary file, never held in memory) and marked as truncated.
    #[serde(default = "default_dom0_log_max_bytes")]
    pub dom0_log_max_bytes: u64,
    /// Steps run in dom0; absent means the built-in defaults (`protocol::job::default_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// Removed: a job's updates are the update phase (`[updates]`, then a reboot), never steps
    /// in the job file. Kept only to refuse old configs with a message saying so.
    #[serde(default, skip_serializing)]
    update_steps: Option<toml::Value>,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_quarantine_after() -> u32 {
    3
}
fn default_outage_retry_ms() -> u64 {
    5000
}
fn default_poll_ms() -> u64 {
    5000
}
fn default_lease_ttl_secs() -> u64 {
    900
}
fn default_status_refusals() -> u32 {
    3
}
fn default_dom0_log_max_bytes() -> u64 {
    256 * 1024 * 1024
}

impl JobsConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("jobs.max_attempts must be at least 1".into());
        }
        if self.lease_ttl_secs < 2 {
            return Err("jobs.lease_ttl_secs must be at least 2 (default 900)".into());
        }
        if self.status_refusals == 0 {
            return Err("jobs.status_refusals must be at least 1 (default 3)".into());
        }
        if self.dom0_log_max_bytes < 4096 {
            return Err("jobs.dom0_log_max_bytes must be at least 4096 (default 268435456)".into());
        }
        if self.update_steps.is_some() {
            return Err(
                "jobs.update_steps was removed: a job with update = true runs the commands of \
                 [updates] (dom0, templates) and then reboots the VM; remove jobs.update_steps \
                 and set the commands in [updates]"
                    .into(),
            );
        }
        if let Some(steps) = &self.steps {
            if steps.is_empty() || steps.iter().any(|s| s.argv.is_empty()) {
                return Err("jobs.steps must hold at least one step, each with an argv".into());
            }
        }
        Ok(())
    }
}
