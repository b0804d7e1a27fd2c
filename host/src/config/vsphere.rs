//! `[vsphere]`: where the VMs are and how to trust and bound the connection. The TLS policy and
//! the client's timeouts are the vSphere client's own types, so a wrong mode or key is refused
//! when the file is loaded, by every subcommand, not only when `serve` connects.

use crate::HostError;
use sdci_protocol::Secret;
use sdci_vsphere::{Timeouts, TlsPolicy};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsphereConfig {
    /// `https://host` of the ESXi host or vCenter (the SDK path is added by the client).
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub user: String,
    /// File holding the vSphere password.
    #[serde(default = "default_vsphere_password_file")]
    pub password_file: PathBuf,
    /// Only VMs in datacenters with these names; absent means every datacenter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenters: Option<Vec<String>>,
    /// How to trust the certificate
    /// (`mode = "system-roots" | "ca-file" | "pinned" | "insecure-accept-any-certificate"`).
    #[serde(default = "default_tls")]
    pub tls: TlsPolicy,
    /// The vSphere client's own timeouts (`connect_secs`, `call_secs`, `task_secs`, ...).
    #[serde(default)]
    pub timeouts: Timeouts,
}

fn default_vsphere_password_file() -> PathBuf {
    PathBuf::from("/etc/sdci/vsphere-password")
}
fn default_tls() -> TlsPolicy {
    TlsPolicy::SystemRoots
}

impl VsphereConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        let scheme_ok = self.url.starts_with("https://") || self.url.starts_with("http://");
        if !self.url.is_empty() && !scheme_ok {
            return Err(format!(
                "vsphere.url {:?}: write https://esxi-or-vcenter (the /sdk path is added)",
                self.url
            ));
        }
        if let TlsPolicy::Pinned { sha256 } = &self.tls {
            for f in sha256 {
                let hex: String = f.chars().filter(|c| *c != ':').collect();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "vsphere.tls.sha256: {f:?} is not a SHA-256 fingerprint; write 64 hex \
                         digits (colons allowed), e.g. from `openssl x509 -fingerprint -sha256`"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The vSphere client's configuration: this table plus the password read from its file.
    /// `serve`, `save` and `check-config --connect` need `url` and `user`.
    pub fn client_config(&self) -> Result<sdci_vsphere::VsphereConfig, HostError> {
        if self.url.is_empty() || self.user.is_empty() {
            return Err(HostError::Config {
                path: "[vsphere]".into(),
                message: "vsphere.url and vsphere.user are required to reach vSphere".into(),
            });
        }
        let password = super::read_secret(&self.password_file, "vSphere password")?;
        Ok(self.with_password(password))
    }

    fn with_password(&self, password: Secret) -> sdci_vsphere::VsphereConfig {
        sdci_vsphere::VsphereConfig {
            url: self.url.clone(),
            user: self.user.clone(),
            password,
            tls: self.tls.clone(),
            datacenters: self.datacenters.clone(),
            timeouts: self.timeouts.clone(),
        }
    }
}
