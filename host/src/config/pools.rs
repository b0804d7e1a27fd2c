//! `[pools."<version>"]`: one pool of VMs per Qubes version.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// VMs whose inventory name starts with this prefix form the pool (e.g. `Qubes_4.2_`).
    pub prefix: String,
    /// Snapshot every job reverts to until a newer golden snapshot is recorded in the store.
    pub golden_snapshot: String,
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
        if self.golden_snapshot.is_empty() {
            return Err(format!(
                "pools.{version:?}.golden_snapshot must name the snapshot jobs revert to"
            ));
        }
        Ok(())
    }
}
