//! `[pools."<version>"]`: one pool of VMs per Qubes version, each on one hypervisor backend,
//! with the golden snapshots its matrix scenarios start from (`scenarios`, issue 20).

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
    /// `.github/sdci.yml`) → the snapshot's name on this pool's VMs, e.g.
    /// `{ prod-installed = "sdw-prod-installed" }`. A scenario without `snapshot:` starts from
    /// `golden_snapshot`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scenarios: BTreeMap<String, String>,
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
            if k.is_empty() || v.trim().is_empty() {
                return Err(format!(
                    "pools.{version:?}.scenarios: map each scenario snapshot to a snapshot name, \
                     e.g. scenarios = {{ prod-installed = \"sdw-prod-installed\" }}"
                ));
            }
        }
        if self.golden_snapshot.is_empty() {
            return Err(format!(
                "pools.{version:?}.golden_snapshot must name the snapshot jobs revert to"
            ));
        }
        Ok(())
    }
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
