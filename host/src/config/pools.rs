//! `[pools."<version>"]`: one pool of VMs per Qubes version, each on one hypervisor backend,
//! with the golden snapshots its matrix scenarios start from (`scenarios`, issue 20).
//!
//! A scenario is either a fixed snapshot an operator made by hand (`prod-installed =
//! "sdw-prod-installed"`) or a table that says how `sdci-host save --version V --scenario S`
//! builds it ([`BuiltScenario`]: a base, a provisioning command run in dom0, its timeout, how
//! many to keep). The provisioning command is the operator's, from this file: never from the
//! tested repository.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which hypervisor holds a pool's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// vSphere (ESXi or vCenter) through `[vsphere]`.
    #[default]
    Vsphere,
    /// libvirt (QEMU/KVM) through `[libvirt]`.
    Libvirt,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vsphere => "vsphere",
            Backend::Libvirt => "libvirt",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// VMs whose inventory name starts with this prefix form the pool (e.g. `Qubes_4.2_`).
    pub prefix: String,
    /// Snapshot every job reverts to until a newer golden snapshot is recorded in the store.
    pub golden_snapshot: String,
    /// The hypervisor holding the pool's VMs (`vsphere`, the default, or `libvirt`).
    #[serde(default)]
    pub backend: Backend,
    /// The golden snapshots a matrix scenario may start from (its `snapshot:` in the commit's
    /// `.github/sdci.yml`) → a fixed snapshot name on this pool's VMs, e.g.
    /// `{ prod-installed = "sdw-prod-installed" }`, or a table saying how `sdci-host save
    /// --scenario` builds it ([`Scenario`]). A scenario without `snapshot:` starts from
    /// `golden_snapshot`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scenarios: BTreeMap<String, Scenario>,
    /// Provisioned snapshots (issue 18) the reconciler keeps in this pool, newest first (the
    /// newest per branch and any a re-run uses are kept beyond this).
    #[serde(default = "default_stage_snapshots_max")]
    pub stage_snapshots_max: usize,
    /// Hours a provisioned snapshot is kept at most (same exceptions).
    #[serde(default = "default_stage_snapshots_max_age_hours")]
    pub stage_snapshots_max_age_hours: u64,
    /// Keep a job's VM powered on after it ends, out of dispatch, for debugging (issue 18):
    /// `off`, `failure` (a job that failed) or `always`. `sdci-host jobs hold ID` asks for one
    /// job whatever this says.
    #[serde(default)]
    pub hold_on_failure: HoldOn,
    /// How long a hold lasts unless extended or released, seconds (default 4 h).
    #[serde(default = "default_hold_secs")]
    pub hold_secs: u64,
    /// An automatic hold ends early once the pool has had queued jobs for this long, seconds.
    #[serde(default = "default_hold_grace_secs")]
    pub hold_grace_secs: u64,
    /// A stage re-run whose snapshot's VM is busy runs on a linked clone of the snapshot in
    /// another free VM's slot (contracts §12; vCenter only), default `true`. `false`: it waits
    /// for the snapshot's VM. vSphere drops a memory clone's network adapters (those without a
    /// manual MAC address), so a pool whose `test` stage needs the VM's network sets `false`.
    #[serde(default = "default_true")]
    pub rerun_on_clones: bool,
}

fn default_true() -> bool {
    true
}

/// One `[pools.V] scenarios` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Scenario {
    /// A snapshot an operator made by hand; jobs revert to it by name.
    Fixed(String),
    /// A snapshot `sdci-host save --scenario` builds; jobs revert to the store's pointer.
    Built(BuiltScenario),
}

/// `[pools."V".scenarios.S]`: how the scenario's snapshot is built.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltScenario {
    /// `golden` (the pool's current golden snapshot, the default) or a snapshot name.
    #[serde(default = "default_scenario_base")]
    pub base: String,
    /// The provisioning command run in dom0 (argv, not a shell line), e.g.
    /// `["sudo", "-u", "user", "/usr/local/bin/sdw-install-prod"]`.
    pub provision: Vec<String>,
    /// Seconds the provisioning command may take before it is terminated (default 1 h).
    #[serde(default = "default_scenario_timeout")]
    pub timeout_secs: u64,
    /// `scenario-<S>_*` snapshots kept per VM (the current and the previous one regardless).
    #[serde(default = "default_scenario_keep")]
    pub keep: usize,
}

/// The base of a [`BuiltScenario`] that means "the pool's current golden snapshot".
pub const GOLDEN_BASE: &str = "golden";

fn default_scenario_base() -> String {
    GOLDEN_BASE.to_owned()
}
fn default_scenario_timeout() -> u64 {
    3600
}
fn default_scenario_keep() -> usize {
    2
}

impl Scenario {
    /// The snapshot-name prefix of a built scenario `name`: `scenario-<name>_`.
    pub fn snapshot_prefix(name: &str) -> String {
        format!("scenario-{name}_")
    }
}

impl<'de> Deserialize<'de> for Scenario {
    /// A string or a table; anything else is refused saying what to write (serde's untagged
    /// enums would only say that no variant matched).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => Ok(Scenario::Fixed(s)),
            v @ toml::Value::Table(_) => v
                .try_into::<BuiltScenario>()
                .map(Scenario::Built)
                .map_err(|e| D::Error::custom(e.message())),
            other => Err(D::Error::custom(format!(
                "a scenario is a snapshot name (prod-installed = \"sdw-prod-installed\") or a \
                 table (base = \"golden\", provision = [\"...\"], timeout_secs, keep), not a {}",
                other.type_str()
            ))),
        }
    }
}

/// When a pool holds a job's VM after its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldOn {
    #[default]
    Off,
    Failure,
    Always,
}

fn default_hold_secs() -> u64 {
    4 * 3600
}
fn default_hold_grace_secs() -> u64 {
    900
}

fn default_stage_snapshots_max() -> usize {
    4
}
fn default_stage_snapshots_max_age_hours() -> u64 {
    72
}

impl PoolConfig {
    pub(super) fn validate(&self, version: &str) -> Result<(), String> {
        if version.is_empty() || version.chars().any(char::is_whitespace) {
            return Err(format!(
                "pools.{version:?}: the key is the Qubes version, e.g. [pools.\"4.2\"]"
            ));
        }
        if self.prefix.is_empty() {
            return Err(format!("pools.{version:?}.prefix must not be empty"));
        }
        for (k, v) in &self.scenarios {
            validate_scenario(version, k, v)?;
        }
        if self.golden_snapshot.is_empty() {
            return Err(format!(
                "pools.{version:?}.golden_snapshot must name the snapshot jobs revert to"
            ));
        }
        Ok(())
    }
}

fn validate_scenario(version: &str, name: &str, s: &Scenario) -> Result<(), String> {
    let key = format!("pools.{version:?}.scenarios.{name}");
    let b = match s {
        Scenario::Fixed(v) => {
            if name.is_empty() || v.trim().is_empty() {
                return Err(format!(
                    "pools.{version:?}.scenarios: map each scenario snapshot to a snapshot name, \
                     e.g. scenarios = {{ prod-installed = \"sdw-prod-installed\" }}"
                ));
            }
            return Ok(());
        }
        Scenario::Built(b) => b,
    };
    // `_` ends the name in `scenario-<S>_<stamp>`: pruning `scenario-a_*` must never touch the
    // snapshots of a scenario `a_b`.
    if name.is_empty()
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
    {
        return Err(format!(
            "{key}: a built scenario's name is letters, digits, '-' and '.' (its snapshots are \
             named scenario-<name>_<UTC time>), e.g. [pools.{version:?}.scenarios.prod-installed]"
        ));
    }
    if b.provision.first().is_none_or(|p| p.trim().is_empty()) {
        return Err(format!(
            "{key}.provision: name the command run in dom0 as an argv, e.g. provision = \
             [\"sudo\", \"-u\", \"user\", \"/usr/local/bin/sdw-install-prod\"]"
        ));
    }
    if b.base.trim().is_empty() {
        return Err(format!(
            "{key}.base: write \"golden\" (the pool's current golden snapshot) or a snapshot name"
        ));
    }
    if b.base.starts_with(&Scenario::snapshot_prefix(name)) {
        return Err(format!(
            "{key}.base: {:?} is one of this scenario's own snapshots, which pruning removes; \
             start from \"golden\" or a snapshot kept by hand",
            b.base
        ));
    }
    if b.timeout_secs == 0 {
        return Err(format!(
            "{key}.timeout_secs must be at least 1 (seconds the provisioning command may take)"
        ));
    }
    if b.keep == 0 {
        return Err(format!(
            "{key}.keep must be at least 1 (scenario-{name}_* snapshots kept per VM)"
        ));
    }
    Ok(())
}

/// Pools on different backends must not claim the same VM name: a VM is routed to the backend
/// of the pool whose prefix it starts with, so one prefix may not start another across backends.
pub(super) fn validate_routes<'a>(
    pools: impl IntoIterator<Item = (&'a String, &'a PoolConfig)> + Clone,
) -> Result<(), String> {
    for (va, a) in pools.clone() {
        for (vb, b) in pools.clone() {
            if va != vb && a.backend != b.backend && b.prefix.starts_with(&a.prefix) {
                return Err(format!(
                    "pools.{va:?} ({}) and pools.{vb:?} ({}): prefix {:?} also matches {:?}, so a \
                     VM name could belong to both backends; give pools on different backends \
                     prefixes that do not start one another",
                    a.backend.name(),
                    b.backend.name(),
                    a.prefix,
                    b.prefix
                ));
            }
        }
    }
    Ok(())
}
