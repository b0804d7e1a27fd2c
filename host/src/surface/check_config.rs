//! `sdci-host check-config [--connect]`: what the host makes of its configuration file.
//!
//! Loading the file already refused anything any subcommand would refuse (every table is
//! validated at load). This prints the effective configuration (defaults filled in, each secret
//! shown as `<file: PATH, N bytes>`, never its contents), says which secret files `serve` would
//! miss, and with `--connect` connects the hypervisors the pools use (logs in to vSphere, opens
//! each `[libvirt]` URI), lists each pool's VMs with their snapshots (marking the configured
//! golden one) and each matrix scenario's snapshots on each VM (marking a built scenario's
//! current one, warning for a fixed one that is missing), and runs `sdci-agent --version`.
//!
//! Invariant: it touches no VM (only reads the inventory) and never writes the database: it
//! reads the built scenarios' pointers from it when it exists, and says so when it cannot.

use crate::config::{Backend, Config, PoolConfig, Scenario};
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
    out.push_str(&scenarios(cfg));
    out.push_str("# effective configuration (defaults filled in):\n");
    out.push_str(&cfg.effective_toml()?);
    Ok(out)
}

/// One line per matrix scenario of each pool: its kind, base, command and `keep`.
fn scenarios(cfg: &Config) -> String {
    let mut out = String::new();
    for (v, pool) in &cfg.pools {
        for (name, s) in &pool.scenarios {
            let _ = match s {
                Scenario::Fixed(snap) => writeln!(
                    out,
                    "# scenario {v}/{name}: fixed snapshot {snap:?} (made by hand)"
                ),
                Scenario::Built(b) => writeln!(
                    out,
                    "# scenario {v}/{name}: built from {:?} by `{}` (timeout {}s), keeps {} \
                     {}*; build it with `sdci-host save --version {v} --scenario {name}`",
                    b.base,
                    b.provision.join(" "),
                    b.timeout_secs,
                    b.keep,
                    Scenario::snapshot_prefix(name),
                ),
            };
        }
    }
    out
}

/// The built scenarios' current snapshots (`pool version`, scenario) → snapshot, read from the
/// store if it exists; `Err` says why they are unknown.
fn scenario_pointers(
    cfg: &Config,
) -> std::result::Result<std::collections::BTreeMap<(String, String), String>, String> {
    let mut out = std::collections::BTreeMap::new();
    let built = cfg.pools.iter().flat_map(|(v, p)| {
        p.scenarios
            .iter()
            .filter(|(_, s)| matches!(s, Scenario::Built(_)))
            .map(move |(n, _)| (v.clone(), n.clone()))
    });
    let built: Vec<(String, String)> = built.collect();
    if built.is_empty() {
        return Ok(out);
    }
    let store = crate::store::Store::open_existing(&cfg.db_path()).map_err(|e| e.to_string())?;
    for (v, n) in built {
        if let Some(s) = store.scenario_snapshot(&v, &n).map_err(|e| e.to_string())? {
            out.insert((v, n), s);
        }
    }
    Ok(out)
}

/// The `--connect` lines of one VM's scenario snapshots.
fn vm_scenarios(
    out: &mut String,
    version: &str,
    pool: &PoolConfig,
    vm: &str,
    snaps: &[&str],
    pointers: &std::result::Result<std::collections::BTreeMap<(String, String), String>, String>,
) {
    for (name, s) in &pool.scenarios {
        match s {
            Scenario::Fixed(snap) => {
                let _ = if snaps.contains(&snap.as_str()) {
                    writeln!(
                        out,
                        "pool {version}: {vm} scenario {name}: fixed snapshot {snap}"
                    )
                } else {
                    writeln!(
                        out,
                        "# warning: pool {version}: {vm} scenario {name}: fixed snapshot {snap:?} \
                         MISSING (a cell of this scenario fails on this VM)"
                    )
                };
            }
            Scenario::Built(_) => {
                let prefix = Scenario::snapshot_prefix(name);
                let current = match pointers {
                    Ok(p) => p.get(&(version.to_owned(), name.clone())).cloned(),
                    Err(_) => None,
                };
                let listed: Vec<String> = snaps
                    .iter()
                    .filter(|s| s.starts_with(&prefix))
                    .map(|s| match &current {
                        Some(c) if c == s => format!("{s} (current)"),
                        _ => (*s).to_owned(),
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "pool {version}: {vm} scenario {name}: [{}]",
                    listed.join(", ")
                );
                let build = format!("sdci-host save --version {version} --scenario {name}");
                let _ = match (pointers, &current) {
                    (Err(e), _) => writeln!(
                        out,
                        "# warning: pool {version}: scenario {name}: current snapshot unknown ({e})"
                    ),
                    (Ok(_), None) => writeln!(
                        out,
                        "# warning: pool {version}: scenario {name}: none built yet; run `{build}`"
                    ),
                    (Ok(_), Some(c)) if !snaps.contains(&c.as_str()) => writeln!(
                        out,
                        "# warning: pool {version}: {vm} scenario {name}: current snapshot {c:?} \
                         MISSING; run `{build}`"
                    ),
                    _ => Ok(()),
                };
            }
        }
    }
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
    let pointers = scenario_pointers(cfg);
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
                            vm_scenarios(&mut out, version, pool, &vm.name, &names, &pointers);
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
