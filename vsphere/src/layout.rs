//! How many bytes a snapshot takes on the datastore, from `VirtualMachine.layoutEx`
//! (`Hypervisor::snapshot_bytes`, shown as `sdci_stage_snapshot_bytes` on the host's /metrics).
//!
//! Wire facts (vSphere Web Services API reference, `vim.vm.FileLayoutEx`,
//! `vim.vm.FileLayoutEx.SnapshotLayout`, `vim.vm.FileLayoutEx.DiskLayout`,
//! <https://developer.broadcom.com/xapis/vsphere-web-services-api/latest/vim.vm.FileLayoutEx.SnapshotLayout.html>):
//! `layoutEx.file[]` lists every file of the VM with its `key` and `size` (bytes);
//! `layoutEx.snapshot[]` has one entry per snapshot whose `key` is the snapshot's managed
//! object, `dataKey` its data file (`.vmsn`), `memoryKey` its memory file (`.vmem`; -1 when it
//! has none, e.g. a powered-off snapshot or memory folded into the data file) and `disk[]` the
//! layout of each virtual disk *when the snapshot was taken*: a `chain[]` of disk units, each
//! with the `fileKey[]`s of its descriptor and extent files, base disk first.
//!
//! What a snapshot counts: its data file, its memory file, and the disk files of its chains
//! that are not in its parent snapshot's chains — the delta disks written between the parent
//! snapshot and this one, which this snapshot keeps. A snapshot without a parent counts its
//! whole chain (the base disks it keeps). Files shared with the parent are the parent's; the
//! VM's current delta (written since the newest snapshot) is no snapshot's.

use crate::xmltree::Element;
use std::collections::{BTreeMap, BTreeSet};

/// The properties [`snapshot_bytes`] reads.
pub const LAYOUT_PATHS: &[&str] = &["layoutEx.file", "layoutEx.snapshot"];

fn int(e: &Element, path: &str) -> Option<i64> {
    e.text_at(path).and_then(|t| t.trim().parse().ok())
}

/// One `VirtualMachineFileLayoutExSnapshotLayout`'s keys.
struct SnapshotFiles {
    own: Vec<i64>,
    chain: BTreeSet<i64>,
}

fn snapshot_files(layouts: &Element, snapshot_id: &str) -> Option<SnapshotFiles> {
    let s = layouts
        .children
        .iter()
        .find(|s| s.text_at("key").map(str::trim) == Some(snapshot_id))?;
    let own = ["dataKey", "memoryKey"]
        .iter()
        .filter_map(|k| int(s, k))
        .filter(|k| *k >= 0)
        .collect();
    let chain = s
        .children_named("disk")
        .flat_map(|d| d.children_named("chain"))
        .flat_map(|c| c.children_named("fileKey"))
        .filter_map(|k| k.text.trim().parse().ok())
        .collect();
    Some(SnapshotFiles { own, chain })
}

/// Bytes of snapshot `snapshot_id` (its moref value) whose parent snapshot is `parent_id`, from
/// the values of `layoutEx.file` and `layoutEx.snapshot`; `None` when the layout does not list
/// the snapshot.
pub fn snapshot_bytes(
    files: &Element,
    layouts: &Element,
    snapshot_id: &str,
    parent_id: Option<&str>,
) -> Option<u64> {
    let this = snapshot_files(layouts, snapshot_id)?;
    let parent_chain = parent_id
        .and_then(|p| snapshot_files(layouts, p))
        .map(|p| p.chain)
        .unwrap_or_default();
    let sizes: BTreeMap<i64, u64> = files
        .children
        .iter()
        .filter_map(|f| Some((int(f, "key")?, u64::try_from(int(f, "size")?).ok()?)))
        .collect();
    let counted: BTreeSet<i64> = this
        .own
        .into_iter()
        .chain(this.chain.difference(&parent_chain).copied())
        .collect();
    Some(counted.iter().filter_map(|k| sizes.get(k)).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmltree;

    fn file(key: i64, name: &str, size: u64) -> String {
        format!(
            "<VirtualMachineFileLayoutExFileInfo><key>{key}</key><name>{name}</name>\
             <size>{size}</size></VirtualMachineFileLayoutExFileInfo>"
        )
    }

    fn snapshot(id: &str, data: i64, memory: i64, chain: &[&[i64]]) -> String {
        let units: String = chain
            .iter()
            .map(|keys| {
                let keys: String = keys
                    .iter()
                    .map(|k| format!("<fileKey>{k}</fileKey>"))
                    .collect();
                format!("<chain>{keys}</chain>")
            })
            .collect();
        format!(
            "<VirtualMachineFileLayoutExSnapshotLayout>\
             <key type=\"VirtualMachineSnapshot\">{id}</key><dataKey>{data}</dataKey>\
             <memoryKey>{memory}</memoryKey><disk><key>2000</key>{units}</disk>\
             </VirtualMachineFileLayoutExSnapshotLayout>"
        )
    }

    /// A VM with a base disk (files 0, 1), a root snapshot S1 (no memory), then delta 1
    /// (files 4, 5) frozen by S2 (with memory), then delta 2 (files 8, 9) being written.
    fn layout() -> (Element, Element) {
        let files = [
            file(0, "vm.vmdk", 500),
            file(1, "vm-flat.vmdk", 10_000_000),
            file(2, "vm-Snapshot1.vmsn", 30),
            file(4, "vm-000001.vmdk", 400),
            file(5, "vm-000001-sesparse.vmdk", 7_000),
            file(6, "vm-Snapshot2.vmsn", 40),
            file(7, "vm-Snapshot2.vmem", 1_000),
            file(8, "vm-000002.vmdk", 400),
            file(9, "vm-000002-sesparse.vmdk", 9_000),
        ]
        .concat();
        let snaps = [
            snapshot("snapshot-1", 2, -1, &[&[0, 1]]),
            snapshot("snapshot-2", 6, 7, &[&[0, 1], &[4, 5]]),
        ]
        .concat();
        (
            xmltree::parse(&format!(
                "<val xsi:type=\"ArrayOfVirtualMachineFileLayoutExFileInfo\">{files}</val>"
            ))
            .unwrap(),
            xmltree::parse(&format!(
                "<val xsi:type=\"ArrayOfVirtualMachineFileLayoutExSnapshotLayout\">{snaps}</val>"
            ))
            .unwrap(),
        )
    }

    #[test]
    fn a_child_snapshot_counts_its_files_and_the_deltas_its_parent_does_not_keep() {
        let (files, snaps) = layout();
        assert_eq!(
            snapshot_bytes(&files, &snaps, "snapshot-2", Some("snapshot-1")),
            Some(40 + 1_000 + 400 + 7_000)
        );
    }

    #[test]
    fn a_root_snapshot_counts_its_whole_chain_and_no_memory_file_when_it_has_none() {
        let (files, snaps) = layout();
        assert_eq!(
            snapshot_bytes(&files, &snaps, "snapshot-1", None),
            Some(30 + 500 + 10_000_000)
        );
    }

    #[test]
    fn a_snapshot_the_layout_does_not_list_has_no_size() {
        let (files, snaps) = layout();
        assert_eq!(snapshot_bytes(&files, &snaps, "snapshot-9", None), None);
    }
}
