//! A VM's annotation ("Notes" in the vSphere client) as a note with compare-and-set writes:
//! read with `config.changeVersion`, written by `ReconfigVM_Task` with that `changeVersion`, so
//! a write made meanwhile by someone else fails (`ConcurrentAccess`) instead of being
//! overwritten. sdci keeps its VM lease in it (the host's `orchestration::leases`).

use crate::hypervisor::{Result, VmNote, VsphereError};
use crate::inventory;
use crate::session::Session;
use crate::soap::{el, Moref};
use crate::tasks;
use std::sync::Arc;

/// The spec of a `ReconfigVM_Task` that sets only the annotation (`changeVersion` first, in
/// the WSDL's order); an empty `expected` writes unconditionally.
pub fn reconfig_args(text: &str, expected: &str) -> String {
    let version = if expected.is_empty() {
        String::new()
    } else {
        el("changeVersion", expected)
    };
    format!("<spec>{version}{}</spec>", el("annotation", text))
}

/// The annotation and the configuration's change version.
pub async fn read(s: &Session, vm: &Moref) -> Result<VmNote> {
    let o = inventory::retrieve_one(s, vm, &["config.annotation", "config.changeVersion"]).await?;
    Ok(VmNote {
        // An empty annotation is simply absent from the answer.
        text: o
            .props
            .get("config.annotation")
            .map(|e| e.text.clone())
            .unwrap_or_default(),
        version: o.text("config.changeVersion").unwrap_or("").to_string(),
    })
}

/// Writes the annotation if the configuration is still at `expected`; `Ok(false)` when it
/// changed meanwhile (vSphere answers `ConcurrentAccess`).
pub async fn write(
    s: &Arc<Session>,
    vm: &Moref,
    name: &str,
    text: &str,
    expected: &str,
) -> Result<bool> {
    match tasks::run(
        s,
        "ReconfigVM_Task",
        vm,
        &reconfig_args(text, expected),
        Some((vm, name)),
        s.timeouts.task(),
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(VsphereError::Fault { kind, .. }) if kind == "ConcurrentAccess" => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_sets_only_the_annotation_guarded_by_the_change_version() {
        assert_eq!(
            reconfig_args("a <b> & c", "2026-01-01T00:00:00.1Z"),
            "<spec><changeVersion>2026-01-01T00:00:00.1Z</changeVersion>\
             <annotation>a &lt;b&gt; &amp; c</annotation></spec>"
        );
        assert_eq!(
            reconfig_args("", ""),
            "<spec><annotation></annotation></spec>"
        );
    }
}
