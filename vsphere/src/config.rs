//! What the host's TOML says about the vSphere endpoint: where, who, how to trust it, how long
//! to wait.
//!
//! Invariants: the password is a [`Secret`] (never printed); certificate checking can only be
//! switched off by writing `mode = "insecure-accept-any-certificate"`; every wait has a bound.
//!
//! ```toml
//! [vsphere]
//! url = "https://esxi.example.org/sdk"
//! user = "sdci"
//! password = "…"
//! datacenters = ["DC1"]            # optional: only VMs in these datacenters
//! [vsphere.tls]
//! mode = "pinned"                  # or "ca-file" (ca_file = "/etc/sdci/esxi.pem"),
//! sha256 = ["AB:CD:…"]             # "system-roots", "insecure-accept-any-certificate"
//! [vsphere.timeouts]
//! call_secs = 120
//! ```

use sdci_protocol::job::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How to trust the endpoint's TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TlsPolicy {
    /// The operating system's trusted roots (a vCenter with a public or enterprise certificate).
    SystemRoots,
    /// Certificates (PEM) that anchor the chain. A self-signed certificate listed here is also
    /// accepted as the server's own certificate, byte for byte.
    CaFile { ca_file: PathBuf },
    /// SHA-256 fingerprints of acceptable server certificates (the usual choice for self-signed
    /// ESXi): hex, with or without `:` separators, any case. The host name is not checked.
    /// Under vCenter, guest file transfers go straight to the ESXi host that runs the VM: list
    /// those hosts' fingerprints too (or use `ca-file` with a CA that signed them all).
    Pinned { sha256: Vec<String> },
    /// Accepts any certificate. Only for throwaway labs: anyone on the path can read the password.
    InsecureAcceptAnyCertificate,
}

/// Bounds on how long things may take. Defaults fit a real ESXi.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect_secs: u64,
    /// One ordinary SOAP call (not the long-poll waits, which get their own bound).
    pub call_secs: u64,
    /// How long one `WaitForUpdatesEx` long-poll may wait on the server side.
    pub wait_poll_secs: u64,
    /// A task (revert, power, snapshot) must finish within this.
    pub task_secs: u64,
    /// A cheap call every this many seconds keeps the session alive; 0 disables it.
    pub keepalive_secs: u64,
    /// A guestFile upload or download.
    pub transfer_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_secs: 15,
            call_secs: 120,
            wait_poll_secs: 60,
            task_secs: 1800,
            keepalive_secs: 600,
            transfer_secs: 600,
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_secs(self.connect_secs.max(1))
    }
    pub fn call(&self) -> Duration {
        Duration::from_secs(self.call_secs.max(1))
    }
    pub fn wait_poll(&self) -> Duration {
        Duration::from_secs(self.wait_poll_secs.clamp(1, 600))
    }
    pub fn task(&self) -> Duration {
        Duration::from_secs(self.task_secs.max(1))
    }
    pub fn transfer(&self) -> Duration {
        Duration::from_secs(self.transfer_secs.max(1))
    }
    pub fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_secs > 0).then(|| Duration::from_secs(self.keepalive_secs))
    }
}

/// The vSphere section of the host's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsphereConfig {
    /// `https://host[:port]/sdk` (a bare `https://host` means its `/sdk`). Plain `http://` is
    /// refused except on a loopback address.
    pub url: String,
    pub user: String,
    pub password: Secret,
    pub tls: TlsPolicy,
    /// Only VMs in datacenters with these names; absent = every datacenter.
    #[serde(default)]
    pub datacenters: Option<Vec<String>>,
    #[serde(default)]
    pub timeouts: Timeouts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_from_toml_with_each_tls_mode() {
        let c: VsphereConfig = toml::from_str(
            r#"
url = "https://esxi/sdk"
user = "u"
password = "p"
datacenters = ["DC1"]
[tls]
mode = "pinned"
sha256 = ["ab:cd"]
[timeouts]
call_secs = 5
"#,
        )
        .unwrap();
        assert_eq!(
            c.tls,
            TlsPolicy::Pinned {
                sha256: vec!["ab:cd".into()]
            }
        );
        assert_eq!(c.timeouts.call_secs, 5);
        assert_eq!(c.timeouts.task_secs, Timeouts::default().task_secs);
        assert_eq!(c.password.expose(), "p");
        assert!(!format!("{c:?}").contains("\"p\""));

        let ca: TlsPolicy = toml::from_str("mode = \"ca-file\"\nca_file = \"/x.pem\"").unwrap();
        assert_eq!(
            ca,
            TlsPolicy::CaFile {
                ca_file: "/x.pem".into()
            }
        );
        let any: TlsPolicy = toml::from_str("mode = \"insecure-accept-any-certificate\"").unwrap();
        assert_eq!(any, TlsPolicy::InsecureAcceptAnyCertificate);
    }

    #[test]
    fn certificate_checking_cannot_be_switched_off_by_a_short_word() {
        for mode in ["insecure", "none", "off", "accept-any"] {
            let r: Result<TlsPolicy, _> = toml::from_str(&format!("mode = \"{mode}\""));
            assert!(r.is_err(), "{mode} must be refused");
        }
    }
}
