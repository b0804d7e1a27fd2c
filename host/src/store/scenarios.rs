//! `scenario_snapshots`: each built matrix scenario's current snapshot per pool (issue 20), the
//! pointer `sdci-host save --version V --scenario S` moves and a cell of that scenario reverts
//! to. A fixed scenario (a snapshot name in `[pools.V] scenarios`) has no row here.
//!
//! Invariant: a row exists only once a rotation built, smoke-tested and adopted the snapshot on
//! every VM of the pool; no row means "not built yet", never "use the golden snapshot".

use super::{exec, qrow, Store};
use crate::{now_ms, Result};
use rusqlite::{params, OptionalExtension};

impl Store {
    /// The current snapshot of scenario `scenario` of pool `version`, if one was ever built.
    pub fn scenario_snapshot(&self, version: &str, scenario: &str) -> Result<Option<String>> {
        self.with(|c| {
            qrow(
                c,
                "SELECT snapshot FROM scenario_snapshots WHERE version = ?1 AND scenario = ?2",
                params![version, scenario],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Moves the scenario's pointer to `snapshot`.
    pub fn set_scenario_snapshot(
        &self,
        version: &str,
        scenario: &str,
        snapshot: &str,
    ) -> Result<()> {
        self.with(|c| {
            exec(
                c,
                "INSERT INTO scenario_snapshots (version, scenario, snapshot, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT(version, scenario) \
                 DO UPDATE SET snapshot = ?3, updated_ms = ?4",
                params![version, scenario, snapshot, now_ms()],
            )
            .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_store as open;

    #[test]
    fn a_scenario_has_no_snapshot_until_one_is_set_and_then_the_newest() {
        let (_d, s) = open();
        assert_eq!(s.scenario_snapshot("4.3", "prod").unwrap(), None);
        s.set_scenario_snapshot("4.3", "prod", "scenario-prod_1")
            .unwrap();
        s.set_scenario_snapshot("4.3", "prod", "scenario-prod_2")
            .unwrap();
        s.set_scenario_snapshot("4.2", "prod", "scenario-prod_9")
            .unwrap();
        assert_eq!(
            s.scenario_snapshot("4.3", "prod").unwrap().as_deref(),
            Some("scenario-prod_2")
        );
        assert_eq!(s.scenario_snapshot("4.3", "other").unwrap(), None);
    }
}
