//! `[dom0]`: the guest-operations account in dom0 and where things are there.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dom0Config {
    /// dom0 user for guest operations; the job file goes under its home.
    #[serde(default = "default_dom0_user")]
    pub user: String,
    /// File holding the dom0 user's password.
    #[serde(default = "default_dom0_password_file")]
    pub password_file: PathBuf,
    /// Path of `sdci-dom0` in dom0.
    #[serde(default = "default_dom0_program")]
    pub program: String,
    /// The dev VM whose qrexec calls may deliver a job's tree.
    #[serde(default = "default_dev_vm")]
    pub dev_vm: String,
    /// Checkout directory inside the dev VM.
    #[serde(default = "default_dev_dir")]
    pub dev_dir: String,
}

fn default_dom0_user() -> String {
    "user".into()
}
fn default_dom0_password_file() -> PathBuf {
    PathBuf::from("/etc/sdci/dom0-password")
}
fn default_dom0_program() -> String {
    "/usr/local/bin/sdci-dom0".into()
}
fn default_dev_vm() -> String {
    "sd-dev".into()
}
fn default_dev_dir() -> String {
    "/home/user/securedrop-workstation".into()
}

impl Dom0Config {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.user.is_empty() || self.user.contains('/') {
            return Err(format!("dom0.user {:?} is not a user name", self.user));
        }
        if !self.program.starts_with('/') {
            return Err(format!(
                "dom0.program {:?} must be an absolute path in dom0 (default \
                 /usr/local/bin/sdci-dom0)",
                self.program
            ));
        }
        Ok(())
    }
}
