//! The one QEMU monitor (QMP) answer sdci reads through libvirt (`virDomainQemuMonitorCommand`,
//! the `libvirt-qemu` API, which a remote client may call): `query-block`'s list of a running
//! domain's internal qcow2 snapshots, for the size of a memory snapshot
//! ([`Hypervisor::snapshot_bytes`](sdci_hypervisor::Hypervisor::snapshot_bytes)).
//!
//! Why the monitor: libvirt's own API says nothing about an internal snapshot's size — not the
//! snapshot XML, not `virDomainGetBlockInfo` (the whole file's allocation), not the storage
//! volume APIs. QEMU keeps, per internal snapshot of each qcow2 image, the `vm-state-size` of
//! the memory state saved with it (what `qemu-img info` prints as `VM SIZE`), and `query-block`
//! reports it while the domain runs. libvirt marks a domain a client sent a monitor command as
//! tainted (`custom-monitor`, one warning in its log); `query-block` changes nothing.
//!
//! Invariant: only `query-block` is ever sent; nothing here writes to the monitor.

use serde_json::Value;

/// The QMP command sent.
pub fn query_block_cmd() -> String {
    serde_json::json!({"execute": "query-block"}).to_string()
}

/// The memory state bytes internal snapshot `name` holds, summed over the domain's block
/// devices (QEMU writes it into one image; the others list the snapshot with 0). `None` when no
/// device lists the snapshot. `reply` is the whole QMP answer (`{"return": [...]}`).
pub fn vm_state_size(reply: &Value, name: &str) -> Option<u64> {
    let devices = reply.get("return")?.as_array()?;
    let mut found = None;
    for d in devices {
        let snapshots = d
            .pointer("/inserted/image/snapshots")
            .and_then(Value::as_array);
        for s in snapshots.into_iter().flatten() {
            if s.get("name").and_then(Value::as_str) == Some(name) {
                let size = s.get("vm-state-size").and_then(Value::as_u64).unwrap_or(0);
                found = Some(found.unwrap_or(0) + size);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(name: &str, size: u64) -> Value {
        json!({"id": "1", "name": name, "vm-state-size": size, "date-sec": 1, "date-nsec": 0,
               "vm-clock-sec": 0, "vm-clock-nsec": 0})
    }

    #[test]
    fn the_memory_state_of_the_named_snapshot_is_summed_over_the_devices_that_list_it() {
        let reply = json!({"return": [
            {"device": "", "qdev": "/machine/peripheral/virtio-disk0/virtio-backend",
             "inserted": {"image": {"filename": "a.qcow2", "format": "qcow2",
                 "snapshots": [snap("golden", 0), snap("sdci-job-1-provisioned", 53_000_000)]}}},
            {"device": "", "inserted": {"image": {"filename": "b.qcow2",
                 "snapshots": [snap("sdci-job-1-provisioned", 0)]}}},
            {"device": "ide1-cd0", "removable": true}
        ]});
        assert_eq!(
            vm_state_size(&reply, "sdci-job-1-provisioned"),
            Some(53_000_000)
        );
        assert_eq!(vm_state_size(&reply, "golden"), Some(0));
    }

    #[test]
    fn a_snapshot_no_device_lists_or_an_answer_without_devices_has_no_size() {
        let reply = json!({"return": [{"inserted": {"image": {"snapshots": [snap("a", 5)]}}}]});
        assert_eq!(vm_state_size(&reply, "b"), None);
        assert_eq!(
            vm_state_size(&json!({"error": {"class": "GenericError"}}), "a"),
            None
        );
    }
}
