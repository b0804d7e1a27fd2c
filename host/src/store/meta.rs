//! `host_meta`: facts about this installation that outlive a process, one key each. Today only
//! the instance id, which names this `sdci-host` (its data directory) in the leases it writes on
//! VMs, so a restarted process recognises its own leases and another instance sharing the
//! vSphere recognises them as not its own.

use super::{exec, qrow, Store};
use crate::Result;
use rusqlite::{params, OptionalExtension};

impl Store {
    /// This data directory's instance id: drawn once (16 random hex digits), then kept.
    pub fn instance_id(&self) -> Result<String> {
        self.tx(|tx| {
            let have: Option<String> = qrow(
                tx,
                "SELECT value FROM host_meta WHERE key = 'instance_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
            if let Some(id) = have {
                return Ok(id);
            }
            let id = crate::random_hex(8);
            exec(
                tx,
                "INSERT INTO host_meta (key, value) VALUES ('instance_id', ?1)",
                params![id],
            )?;
            Ok(id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_store as open;

    #[test]
    fn the_instance_id_is_drawn_once_and_kept() {
        let (_d, s) = open();
        let a = s.instance_id().unwrap();
        assert_eq!(a.len(), 16);
        assert_eq!(s.instance_id().unwrap(), a);
    }
}
