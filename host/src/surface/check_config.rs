//! `sdci-host check-config [--connect]`: what the host makes of its configuration file.
//!
//! Loading the file already refused anything any subcommand would refuse (every table is
//! validated at load). This prints the effective configuration (defaults filled in, each secret
//! shown as `<file: PATH, N bytes>`, never its contents), says which secret files `serve` would
//! miss, and with `--connect` connects the hypervisors the pools use (logs in to vSphere, opens
//! each `[libvirt]` URI), lists each pool's VMs with their snapshots (marking the configured
//! golden one), and runs `sdci-agent --version`.
//!
//! Invariant: it touches no VM (only reads the inventory) and no database.

use crate::config::{Backend, Config};
use crate::gateway::backend::{self, Backends};
use crate::gateway::{vsphere, GithubGateway};
use crate::Result;
use sdci_vsphere::Hypervisor;
use std::fmt::Write;
use std::path::Path;

/// The report of the offline checks: the file's verdict, the secret files, the effective TOML.
pub fn report(cfg: &Config, path: &Path) -> Result<String> {
    let mut out = format!("# {}: valid\n", path.display());
    for (key, file, required) in cfg.secret_files() {
        if let Err(e) = crate::config::read_secret(file, key) {
            let _ = writeln!(
                out,
                "# warning: {key}: {e}{}",
                if required { " (serve needs it)" } else { "" }
            );
        }
    }
    if let Err(e) = cfg.webhook.require_repos() {
        let _ = writeln!(out, "# warning: {e} (serve refuses to start)");
    }
    if cfg.pools.is_empty() {
        out.push_str(
            "# warning: no [pools.\"<version>\"]: serve would have no VM to run a job on\n",
        );
    }
    out.push_str("# effective configuration (defaults filled in):\n");
    out.push_str(&cfg.effective_toml()?);
    Ok(out)
}

/// The online checks: each backend a pool uses (vSphere login, libvirt connections), each pool's
/// VMs and snapshots, the agent binary. Returns the report and whether everything passed.
pub async fn connect(cfg: &Config) -> (String, bool) {
    let mut out = String::from("# --connect\n");
    let mut ok = true;
    let mut vsphere_client = None;
    if cfg.uses(Backend::Vsphere) {
        match vsphere::connect(cfg).await {
            Err(e) => {
                let _ = writeln!(out, "vSphere {}: FAILED: {e}", cfg.vsphere.url);
                ok = false;
            }
            Ok(client) => {
                let _ = writeln!(
                    out,
                    "vSphere {}: logged in as {}",
                    cfg.vsphere.url, cfg.vsphere.user
                );
                vsphere_client = Some(client);
            }
        }
    }
    let mut libvirt_client = None;
    if cfg.uses(Backend::Libvirt) {
        let uris = cfg.libvirt.uris.join(", ");
        match backend::connect_libvirt(cfg).await {
            Err(e) => {
                let _ = writeln!(out, "libvirt {uris}: FAILED: {e}");
                ok = false;
            }
            Ok(client) => {
                let _ = writeln!(out, "libvirt {uris}: connected");
                libvirt_client = Some(client);
            }
        }
    }
    let client = Backends::new(cfg, vsphere_client, libvirt_client);
    for (version, pool) in &cfg.pools {
        let connected = match pool.backend {
            Backend::Vsphere => client.vsphere().is_some(),
            Backend::Libvirt => client.libvirt().is_some(),
        };
        if !connected {
            // Its backend's failure is reported above.
            continue;
        }
        match client.list_vms(&pool.prefix).await {
            Err(e) => {
                let _ = writeln!(out, "pool {version}: listing {}*: FAILED: {e}", pool.prefix);
                ok = false;
            }
            Ok(vms) if vms.is_empty() => {
                let _ = writeln!(out, "pool {version}: no VM named {}*: FAILED", pool.prefix);
                ok = false;
            }
            Ok(vms) => {
                for vm in vms {
                    match client.snapshots(&vm.name).await {
                        Ok(snaps) => {
                            let has_golden = snaps.iter().any(|s| s.name == pool.golden_snapshot);
                            let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
                            let _ = writeln!(
                                out,
                                "pool {version}: {} ({:?}) snapshots [{}]{}",
                                vm.name,
                                vm.power,
                                names.join(", "),
                                if has_golden {
                                    String::new()
                                } else {
                                    format!(" — golden snapshot {:?} MISSING", pool.golden_snapshot)
                                }
                            );
                            ok &= has_golden;
                        }
                        Err(e) => {
                            let _ = writeln!(
                                out,
                                "pool {version}: {}: snapshots: FAILED: {e}",
                                vm.name
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
    }
    match GithubGateway::from_config(cfg).version().await {
        Ok(v) => {
            let _ = writeln!(out, "agent {}: {v}", cfg.agent.path.display());
        }
        Err(e) => {
            let _ = writeln!(out, "agent {}: FAILED: {e}", cfg.agent.path.display());
            ok = false;
        }
    }
    (out, ok)
}
