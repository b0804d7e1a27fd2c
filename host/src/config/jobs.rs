//! `[jobs]`: retries, quarantine, superseding, polling, the dom0 steps of every job, and what dom0
//! collects after them (`junit`, `artifacts`: globs relative to the checkout, checked at load; the
//! host's cap on the downloaded `results.tar.zst`).

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
    /// The most of dom0's `results.tar.zst` (test results and evidence, contracts §11) the host
    /// downloads after the log, bytes (dom0's own cap on the file is 64 MiB); a longer archive
    /// is not kept (a line in the job's log).
    #[serde(default = "default_results_max_bytes")]
    pub results_max_bytes: u64,
    /// Globs (relative to the checkout in dom0) of the JUnit XML files dom0 collects after the
    /// steps; absent means dom0's default (SDW's `test-data.xml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit: Option<Vec<String>>,
    /// Globs (relative to the checkout in dom0) of files dom0 adds to a failed job's evidence.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Steps run in dom0; absent means the built-in defaults (`protocol::job::default_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// The steps grouped into stages (issue 18, `domain::stages`); absent: `provision` through
    /// `make-dev`, then `test`. Checked against the steps at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<crate::domain::stages::StageSpec>>,
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
fn default_results_max_bytes() -> u64 {
    64 * 1024 * 1024
}

/// A glob dom0 may expand inside the checkout: protocol's rules (relative, no `.`/`..`, no
/// control characters, brackets or braces; contracts §11), refused at load naming the key.
fn check_glob(key: &str, g: &str) -> Result<(), String> {
    sdci_protocol::results::validate_glob(g).map_err(|why| format!("jobs.{key}: {g:?}: {why}"))
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
        if self.results_max_bytes < 4096 {
            return Err("jobs.results_max_bytes must be at least 4096 (default 67108864)".into());
        }
        for (key, globs) in [
            ("junit", self.junit.as_deref().unwrap_or_default()),
            ("artifacts", self.artifacts.as_slice()),
        ] {
            let max = sdci_protocol::results::MAX_GLOBS;
            if globs.len() > max {
                return Err(format!("jobs.{key} holds at most {max} globs"));
            }
            for g in globs {
                check_glob(key, g)?;
            }
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
        self.stage_of_steps()?;
        Ok(())
    }

    /// The configured (or default) stages.
    pub fn stages(&self) -> Vec<crate::domain::stages::StageSpec> {
        self.stages
            .clone()
            .unwrap_or_else(crate::domain::stages::default_stages)
    }

    /// The stage of each configured step, in order (checked at load, issue 18). Custom steps
    /// without the default stages' `make-dev` are one `test` stage (nothing to snapshot).
    pub fn stage_of_steps(&self) -> Result<Vec<String>, String> {
        use crate::domain::stages;
        let steps = self
            .steps
            .clone()
            .unwrap_or_else(sdci_protocol::job::default_steps);
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        if self.stages.is_none() && !names.contains(&"make-dev") {
            return Ok(vec![stages::TEST.to_owned(); names.len()]);
        }
        stages::assign(&names, &self.stages())
    }

    /// What the job file asks dom0 to collect: `None` (the field left out, dom0's defaults)
    /// unless `junit` or `artifacts` is configured.
    pub fn results_spec(&self) -> Option<sdci_protocol::ResultsSpec> {
        if self.junit.is_none() && self.artifacts.is_empty() {
            return None;
        }
        let mut spec = sdci_protocol::ResultsSpec::default();
        if let Some(j) = &self.junit {
            spec.junit.clone_from(j);
        }
        spec.artifacts.clone_from(&self.artifacts);
        Some(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(text: &str) -> Result<(), String> {
        let j: JobsConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        j.validate()
    }

    #[test]
    fn result_globs_must_stay_inside_the_checkout() {
        assert!(jobs("junit = [\"securedrop-workstation/test-data.xml\", \"**/*.xml\"]").is_ok());
        assert!(jobs("artifacts = [\"build/*.log\"]").is_ok());
        for bad in [
            "/etc/shadow",
            "../x.xml",
            "a/../../b",
            "./x",
            "",
            "a\u{1b}b",
        ] {
            let text = format!("artifacts = [{}]", toml::Value::from(bad));
            let e = jobs(&text).expect_err(bad);
            assert!(e.starts_with("jobs.artifacts:"), "{e}");
        }
        assert!(jobs("junit = [\"../up.xml\"]").is_err());
        let j: JobsConfig = toml::from_str("").unwrap();
        assert_eq!(
            j.results_spec(),
            None,
            "the defaults leave the job file's field out"
        );
        let j: JobsConfig = toml::from_str("artifacts = [\"a/*.log\"]").unwrap();
        let spec = j.results_spec().unwrap();
        assert_eq!(spec.junit, sdci_protocol::ResultsSpec::default().junit);
        assert_eq!(spec.artifacts, ["a/*.log"]);
    }

    #[test]
    fn stages_are_checked_against_the_steps_at_load() {
        assert!(jobs("").is_ok());
        let e =
            jobs("stages = [{ name = \"provision\", through = \"nope\" }, { name = \"test\" }]")
                .unwrap_err();
        assert!(
            e.starts_with("jobs.stages:") && e.contains("\"nope\""),
            "{e}"
        );
        assert!(jobs(
            "stages = [{ name = \"provision\", through = \"make-clone\" }, { name = \"test\" }]"
        )
        .is_ok());
    }
}
