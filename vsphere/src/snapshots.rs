//! Snapshot trees: reading `VirtualMachine.snapshot`, finding a snapshot by name at any depth,
//! and choosing which ones to prune.
//!
//! Invariants:
//! - The tree is flattened parents-first, each entry knowing its parent's name; an absent
//!   `snapshot` property means "no snapshots", not an error.
//! - Which snapshot a name means and which ones pruning removes are the backend-neutral rules of
//!   `sdci_hypervisor::snapshots`, re-exported here.

use crate::hypervisor::SnapshotInfo;
use crate::soap::Moref;
use crate::xmltree::Element;
pub use sdci_hypervisor::snapshots::{find, to_prune};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses an `xsd:dateTime` such as `2026-11-28T16:25:00.002760968Z` or with a `+hh:mm` offset.
pub fn parse_datetime(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    // Split the zone off the time.
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0i64)
    } else if let Some(pos) = rest.rfind(['+', '-']) {
        let (t, z) = rest.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = z[1..].split_once(':')?;
        (
            t,
            sign * (hh.parse::<i64>().ok()? * 3600 + mm.parse::<i64>().ok()? * 60),
        )
    } else {
        (rest, 0)
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, mi, se): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - digits.len() as u32)
    };
    // sdci's one civil-date algorithm.
    let (mo, da) = (u32::try_from(mo).ok()?, u32::try_from(da).ok()?);
    let days = sdci_protocol::time::days_from_civil(y, mo, da);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn walk(node: &Element, parent: Option<&str>, current: Option<&str>, out: &mut Vec<SnapshotInfo>) {
    let name = node.text_at("name").unwrap_or("").to_string();
    let moref = node
        .child("snapshot")
        .map(|m| m.text.trim().to_string())
        .unwrap_or_default();
    let idx = out.len();
    out.push(SnapshotInfo {
        name: name.clone(),
        id: moref,
        created: node.text_at("createTime").and_then(parse_datetime),
        parent: parent.map(str::to_string),
        is_current: false,
    });
    for child in node.children_named("childSnapshotList") {
        walk(child, Some(&name), current, out);
    }
    // Current when this snapshot or a descendant is the current one.
    let subtree_current = current.is_some_and(|c| out[idx..].iter().any(|s| s.id == c));
    out[idx].is_current = subtree_current;
}

/// Flattens a `VirtualMachineSnapshotInfo` (the `snapshot` property's value).
pub fn flatten(info: &Element) -> Vec<SnapshotInfo> {
    let current = info
        .child("currentSnapshot")
        .map(|c| c.text.trim().to_string());
    let mut out = Vec::new();
    for root in info.children_named("rootSnapshotList") {
        walk(root, None, current.as_deref(), &mut out);
    }
    out
}

/// Arguments of `CreateSnapshot_Task` (no memory, no quiescing).
pub fn create_args(name: &str, description: &str) -> String {
    create_args_with(name, description, false)
}

/// Arguments of `CreateSnapshot_Task` with or without the VM's memory (never quiesced: a
/// memory snapshot needs no quiescing, and Qubes' dom0 has no VMware Tools sync driver).
pub fn create_args_with(name: &str, description: &str, memory: bool) -> String {
    format!(
        "{}{}<memory>{memory}</memory><quiesce>false</quiesce>",
        crate::soap::el("name", name),
        crate::soap::el("description", description)
    )
}

/// Arguments of `RemoveSnapshot_Task`: children are kept (re-parented).
pub const REMOVE_ARGS: &str = "<removeChildren>false</removeChildren>";

/// The snapshot reference of an entry.
pub fn moref(s: &SnapshotInfo) -> Moref {
    Moref::new("VirtualMachineSnapshot", s.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_with_fractions_and_offsets() {
        let t = parse_datetime("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::new(86_401, 500_000_000));
        let a = parse_datetime("2026-11-28T16:25:00Z").unwrap();
        let b = parse_datetime("2026-11-28T17:25:00+01:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_795_883_100
        );
        assert!(parse_datetime("yesterday").is_none());
    }
}
