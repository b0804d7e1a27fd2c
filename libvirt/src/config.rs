//! What the host's TOML says about libvirt: which daemons (URIs), how long things may take, the
//! guest's helper programs, and the domain type for domains sdci defines itself.
//!
//! Invariants: unknown keys are refused; every wait has a bound; a URI is understood here (its
//! transport, socket and the name sent to the daemon) or refused with the reason, before any
//! connection is tried.
//!
//! ```toml
//! [libvirt]
//! uris = ["qemu:///system", "qemu+ssh://sdci@kvm2.example.org/system"]  # default: the first
//! domain_type = "auto"          # kvm | qemu | auto (for domains sdci defines: tests, demo)
//! [libvirt.timeouts]
//! agent_secs = 10               # one guest agent command
//! reconnect_secs = 30           # reads ride out a daemon restart this long
//! [libvirt.guest]               # programs in the guest (defaults fit Fedora/Qubes dom0, Debian)
//! runuser = "/usr/sbin/runuser"
//! ```

use crate::rpc::Endpoint;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The `[libvirt]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtConfig {
    /// Daemons whose domains make up the pools; a domain name must be unique across them.
    #[serde(default = "default_uris")]
    pub uris: Vec<String>,
    #[serde(default)]
    pub domain_type: DomainType,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub guest: GuestPrograms,
}

fn default_uris() -> Vec<String> {
    vec!["qemu:///system".into()]
}

impl Default for LibvirtConfig {
    /// The local system daemon, every other setting at its default.
    fn default() -> Self {
        Self {
            uris: default_uris(),
            domain_type: DomainType::default(),
            timeouts: Timeouts::default(),
            guest: GuestPrograms::default(),
        }
    }
}

/// libvirt's domain type for the domains sdci defines (`<domain type=…>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    /// Hardware virtualization (what production and nested Qubes want).
    Kvm,
    /// TCG, software emulation: slow, but works where KVM does not.
    Qemu,
    /// `kvm` when the daemon's capabilities offer it, else `qemu`.
    #[default]
    Auto,
}

/// Bounds on how long things may take.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Socket connect (or ssh start) plus the opening handshake.
    pub connect_secs: u64,
    /// One ordinary call (revert, snapshot, start, destroy).
    pub call_secs: u64,
    /// One guest agent command (`guest-exec`, one `guest-file-*` chunk).
    pub agent_secs: u64,
    /// A read (`vm`, `process_state`, …) whose connection dropped is retried on a new connection
    /// for this long: a daemon restart mid-job is ridden out, not reported.
    pub reconnect_secs: u64,
    /// Helper commands the client runs in the guest itself (mkdir, chown, kill).
    pub helper_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_secs: 10,
            call_secs: 300,
            agent_secs: 10,
            reconnect_secs: 30,
            helper_secs: 30,
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_secs(self.connect_secs)
    }
    pub fn call(&self) -> Duration {
        Duration::from_secs(self.call_secs)
    }
    pub fn agent(&self) -> Duration {
        Duration::from_secs(self.agent_secs)
    }
    pub fn reconnect(&self) -> Duration {
        Duration::from_secs(self.reconnect_secs)
    }
    pub fn helper(&self) -> Duration {
        Duration::from_secs(self.helper_secs)
    }
}

/// Programs in the guest the client builds guest-exec command lines from. The guest agent runs
/// as root; programs for another user go through `runuser -u USER --` (util-linux, in Fedora's
/// and so Qubes dom0's base system). `setsid` makes each program its own process group, so
/// `terminate` ends everything it started.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuestPrograms {
    pub shell: String,
    pub setsid: String,
    pub runuser: String,
    pub env: String,
    /// Largest file `download` accepts (a bound on what the guest can make the host hold).
    pub max_download_bytes: u64,
}

impl Default for GuestPrograms {
    fn default() -> Self {
        Self {
            shell: "/bin/sh".into(),
            setsid: "/usr/bin/setsid".into(),
            runuser: "/usr/sbin/runuser".into(),
            env: "/usr/bin/env".into(),
            max_download_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A URI taken apart: how to reach the daemon and what to ask it to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: String,
    pub endpoint: Endpoint,
    /// The name sent in `CONNECT_OPEN`: the URI without transport and query, e.g. `qemu:///system`.
    pub name: String,
}

/// Understands `DRIVER[+unix]:///PATH[?socket=…]` and `DRIVER+ssh://[USER@]HOST[:PORT]/PATH
/// [?keyfile=…]`.
pub fn parse_uri(uri: &str) -> Result<Target, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("{uri:?} is not a libvirt URI (driver:///path)"))?;
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, t),
        None => (scheme, "unix"),
    };
    if driver.is_empty() || !driver.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("{uri:?}: bad driver {driver:?}"));
    }
    let (authority_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match authority_path.find('/') {
        Some(i) => authority_path.split_at(i),
        None => (authority_path, ""),
    };
    let path = if path.is_empty() { "/system" } else { path };
    let name = format!("{driver}://{path}");
    let param = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let key = kv.split_once('=').map_or(kv, |(k, _)| k);
        if !matches!(key, "socket" | "keyfile") {
            return Err(format!("{uri:?}: unsupported URI parameter {key:?}"));
        }
    }
    let endpoint = match transport {
        "unix" => {
            if !authority.is_empty() {
                return Err(format!("{uri:?}: a unix URI has no host"));
            }
            let socket = match param("socket") {
                Some(s) => PathBuf::from(s),
                None if path == "/session" => {
                    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
                        .ok_or_else(|| format!("{uri:?}: XDG_RUNTIME_DIR is not set"))?;
                    PathBuf::from(runtime).join("libvirt/libvirt-sock")
                }
                None => PathBuf::from("/run/libvirt/libvirt-sock"),
            };
            Endpoint::Unix(socket)
        }
        "ssh" => {
            if authority.is_empty() {
                return Err(format!("{uri:?}: an ssh URI needs a host"));
            }
            let (userhost, port) = match authority.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
                _ => (authority, None),
            };
            // ServerAlive: a vanished host ends the connection (and so every wait) in 45 s.
            let mut args: Vec<String> = [
                "-o",
                "BatchMode=yes",
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=3",
                "-T",
            ]
            .map(String::from)
            .to_vec();
            if let Some(p) = port {
                args.extend(["-p".to_string(), p.to_string()]);
            }
            if let Some(k) = param("keyfile") {
                args.extend(["-i".to_string(), k]);
            }
            args.extend([
                "--".to_string(),
                userhost.to_string(),
                "virt-ssh-helper".to_string(),
                name.clone(),
            ]);
            Endpoint::Command {
                program: "ssh".into(),
                args,
            }
        }
        other => {
            return Err(format!(
                "{uri:?}: transport {other:?} is not supported (unix, ssh)"
            ))
        }
    };
    Ok(Target {
        uri: uri.to_string(),
        endpoint,
        name,
    })
}

impl LibvirtConfig {
    /// Every URI, understood; the first problem is the error.
    pub fn targets(&self) -> Result<Vec<Target>, String> {
        if self.uris.is_empty() {
            return Err("[libvirt] uris is empty".into());
        }
        self.uris.iter().map(|u| parse_uri(u)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_uris_use_the_daemon_socket_and_open_the_bare_name() {
        let t = parse_uri("qemu:///system").unwrap();
        assert_eq!(
            t.endpoint,
            Endpoint::Unix("/run/libvirt/libvirt-sock".into())
        );
        assert_eq!(t.name, "qemu:///system");
        let t = parse_uri("qemu+unix:///system?socket=/tmp/x/libvirt-sock").unwrap();
        assert_eq!(t.endpoint, Endpoint::Unix("/tmp/x/libvirt-sock".into()));
        assert_eq!(t.name, "qemu:///system");
    }

    #[test]
    fn ssh_uris_run_virt_ssh_helper_on_the_far_side() {
        let t = parse_uri("qemu+ssh://sdci@kvm2:2222/system?keyfile=/etc/sdci/id").unwrap();
        let Endpoint::Command { program, args } = t.endpoint else {
            panic!("not a command")
        };
        assert_eq!(program, "ssh");
        assert_eq!(
            args,
            [
                "-o",
                "BatchMode=yes",
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=3",
                "-T",
                "-p",
                "2222",
                "-i",
                "/etc/sdci/id",
                "--",
                "sdci@kvm2",
                "virt-ssh-helper",
                "qemu:///system"
            ]
        );
    }

    #[test]
    fn unsupported_uris_are_refused_with_the_reason() {
        assert!(parse_uri("qemu+tls://h/system")
            .unwrap_err()
            .contains("tls"));
        assert!(parse_uri("qemu:///system?no_verify=1")
            .unwrap_err()
            .contains("no_verify"));
        assert!(parse_uri("/system").is_err());
        assert!(parse_uri("qemu+ssh:///system").is_err());
    }

    #[test]
    fn the_toml_table_takes_defaults_and_refuses_unknown_keys() {
        let c: LibvirtConfig = toml::from_str("").unwrap();
        assert_eq!(c, LibvirtConfig::default());
        assert_eq!(c.uris, ["qemu:///system"]);
        assert_eq!(c.domain_type, DomainType::Auto);
        assert_eq!(c.timeouts, Timeouts::default());
        let c: LibvirtConfig =
            toml::from_str("uris = []\ndomain_type = \"qemu\"\n[timeouts]\nagent_secs = 3\n")
                .unwrap();
        assert_eq!(c.timeouts.agent_secs, 3);
        assert!(c.targets().is_err());
        assert!(toml::from_str::<LibvirtConfig>("uris = []\nbogus = 1\n").is_err());
        assert!(toml::from_str::<LibvirtConfig>("uris = []\ndomain_type = \"xen\"\n").is_err());
    }
}
