//! `[updates]`: the Qubes update commands run in dom0 (a job with `update = true`, rotations).

use serde::{Deserialize, Serialize};

/// `[updates]`: the commands that update dom0 and the templates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatesConfig {
    /// argv updating dom0 (the Qubes way: Salt's `update.qubes-dom0` state).
    #[serde(default = "default_dom0_update")]
    pub dom0: Vec<String>,
    /// argv updating templates and standalone qubes.
    #[serde(default = "default_vm_update")]
    pub templates: Vec<String>,
    /// Seconds each update step may take.
    #[serde(default = "default_update_secs")]
    pub step_timeout_secs: u64,
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn default_dom0_update() -> Vec<String> {
    argv(&[
        "sudo",
        "qubesctl",
        "--show-output",
        "state.sls",
        "update.qubes-dom0",
    ])
}

fn default_vm_update() -> Vec<String> {
    argv(&[
        "sudo",
        "qubesctl",
        "--show-output",
        "--skip-dom0",
        "--templates",
        "--standalones",
        "state.sls",
        "update.qubes-vm",
    ])
}

fn default_update_secs() -> u64 {
    2 * 3600
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field of [updates] has a default")
    }
}

impl UpdatesConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.dom0.is_empty() || self.templates.is_empty() {
            return Err("updates.dom0 and updates.templates must each be a command (argv)".into());
        }
        if self.step_timeout_secs == 0 {
            return Err("updates.step_timeout_secs must be at least 1 (default 7200)".into());
        }
        Ok(())
    }
}
