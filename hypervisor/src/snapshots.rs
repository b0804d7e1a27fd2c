//! Backend-neutral rules over a flattened snapshot tree: which snapshot a name means, and which
//! ones pruning removes.
//!
//! Invariants:
//! - When two snapshots share a name, the newest (then the last in tree order) is the one meant.
//! - Pruning keeps the newest `keep` snapshots with the prefix, never removes a protected one
//!   (e.g. the current and previous golden snapshot), and never touches snapshots without the
//!   prefix. Being an ancestor of the VM's current state protects nothing: removing a parent
//!   snapshot merges it into its children (vSphere consolidates, qcow2 keeps the clusters), so
//!   the chain golden → update_1 → update_2 … can be pruned like any other. This is sdci's one pruning rule: the trait's
//!   `prune_snapshots` applies it, and the host's rotation calls that.

use crate::types::SnapshotInfo;

/// The snapshot named `name`: the newest if several share it.
pub fn find<'a>(tree: &'a [SnapshotInfo], name: &str) -> Option<&'a SnapshotInfo> {
    tree.iter()
        .enumerate()
        .filter(|(_, s)| s.name == name)
        .max_by_key(|(i, s)| (s.created, *i))
        .map(|(_, s)| s)
}

/// Which snapshots to remove so that only the newest `keep` with `prefix` remain, oldest first;
/// never one named in `protected` (it stays even when older than the newest `keep`). Newest is
/// by creation time, then tree order.
pub fn to_prune(
    tree: &[SnapshotInfo],
    prefix: &str,
    keep: usize,
    protected: &[String],
) -> Vec<SnapshotInfo> {
    let mut matching: Vec<(usize, &SnapshotInfo)> = tree
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name.starts_with(prefix))
        .collect();
    matching.sort_by_key(|(i, s)| (s.created, *i));
    let n = matching.len().saturating_sub(keep);
    matching
        .into_iter()
        .take(n)
        .filter(|(_, s)| !protected.contains(&s.name))
        .map(|(_, s)| s.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn snap(name: &str, secs: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            id: format!("snapshot-{secs}"),
            created: Some(UNIX_EPOCH + Duration::from_secs(secs)),
            parent: None,
            is_current: false,
        }
    }

    #[test]
    fn pruning_keeps_the_newest_with_the_prefix_and_nothing_else_is_touched() {
        let tree = vec![
            snap("clean", 1),
            snap("update_3", 30),
            snap("update_1", 10),
            snap("update_2", 20),
        ];
        let gone: Vec<String> = to_prune(&tree, "update_", 2, &[])
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(gone, vec!["update_1"]);
        assert!(to_prune(&tree, "update_", 5, &[]).is_empty());
        assert_eq!(to_prune(&tree, "update_", 0, &[]).len(), 3);
    }

    #[test]
    fn a_shared_name_finds_the_newest() {
        let tree = vec![snap("clean", 5), snap("clean", 9), snap("clean", 7)];
        assert_eq!(find(&tree, "clean").unwrap().id, "snapshot-9");
        assert!(find(&tree, "missing").is_none());
    }

    #[test]
    fn pruning_keeps_the_newest_n_and_never_the_protected_current_or_previous_golden() {
        let tree = vec![
            snap("golden", 1),
            snap("update_1", 10),
            snap("update_2", 20),
            snap("update_3", 30),
            snap("update_4", 40),
            snap("update_5", 50),
        ];
        let protected = ["update_5".to_string(), "update_1".to_string()];
        let names = |keep| -> Vec<String> {
            to_prune(&tree, "update_", keep, &protected)
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(names(3), ["update_2"]);
        // keep = 1: everything older than the newest goes, except the protected one.
        assert_eq!(names(1), ["update_2", "update_3", "update_4"]);
    }
}
