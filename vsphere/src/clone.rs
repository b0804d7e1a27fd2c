//! Linked clones of a snapshot and deleting VMs: what issue 18's stage re-run on another VM of
//! the pool asks of vSphere (CONTRACTS §12, `Hypervisor::clone_from_snapshot` and
//! `Hypervisor::destroy_vm`).
//!
//! A clone is `CloneVM_Task` on the source VM (`folder`, `name`, `spec`, in the WSDL's order)
//! with a `VirtualMachineCloneSpec` of, in its order, `location` (a
//! `VirtualMachineRelocateSpec`: `datastore`, `diskMoveType`, `pool`), `template`, `powerOn`,
//! `snapshot`, `memory`. Wire facts relied on (vSphere Web Services API reference,
//! `vim.vm.CloneSpec` and `vim.vm.RelocateSpec.DiskMoveOptions`,
//! <https://developer.broadcom.com/xapis/vsphere-web-services-api/latest/vim.vm.CloneSpec.html>):
//! - `diskMoveType = createNewChildDiskBacking` with `snapshot` set is a *linked* clone: the
//!   clone's disks are new child (delta) disks over the snapshot's disks; nothing is copied, so
//!   a clone takes seconds and the space of what it writes.
//! - `memory = true` "retains a copy of the source virtual machine's memory state" and needs
//!   `snapshot` to be a snapshot of the source: the clone comes back **suspended** (not powered
//!   off), and `PowerOnVM_Task` resumes it where the snapshot was taken. vSphere removes the
//!   clone's network adapters (except those with a manual MAC address) so that it cannot clash
//!   with the source on the network; a guest that needs the network gets one added back on
//!   another network by `ReconfigVM_Task` (not done here).
//! - The clone's configuration, annotation included, is the source's: the caller rewrites the
//!   clone's note (sdci's lease).
//! - A standalone ESXi host answers `CloneVM_Task` with `NotSupported` ("The operation is not
//!   supported on the object"): cloning needs vCenter, so [`supported`] says so by API type.
//! - vCenter refuses a name already used in the destination folder (`DuplicateName`, a task
//!   error) but not one used in another folder; sdci addresses VMs by name across the whole
//!   inventory, so the client refuses any name it can already see before it asks.
//! - `Destroy_Task` deletes a VM with its files; a powered-on VM is refused
//!   (`InvalidPowerState`), so it is powered off first.
//!
//! Invariants:
//! - The clone goes where the source lives: its `parent` folder, its `resourcePool`, its first
//!   `datastore`; the source itself is not touched and may be running.
//! - Destroying a VM that does not exist (any more) is success.

use crate::hypervisor::{Result, VsphereError};
use crate::inventory::ObjectContent;
use crate::power;
use crate::session::Session;
use crate::soap::{el, mor, Moref};
use crate::tasks;
use std::sync::Arc;

/// `diskMoveType` of a linked clone.
pub const LINKED_CLONE: &str = "createNewChildDiskBacking";

/// Properties of the source VM that say where its clone goes.
pub const PLACEMENT_PATHS: &[&str] = &["parent", "resourcePool", "datastore"];

/// Whether the server can clone: vCenter can, a standalone ESXi host cannot (`NotSupported`).
pub fn supported(api_type: &str) -> bool {
    api_type == "VirtualCenter"
}

/// Where a clone of a VM goes: the source's folder, resource pool and (first) datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub folder: Moref,
    pub pool: Moref,
    pub datastore: Option<Moref>,
}

/// The placement from the source's [`PLACEMENT_PATHS`]; a VM without a folder or a resource
/// pool (a template) cannot be cloned this way.
pub fn placement(source: &str, o: &ObjectContent) -> Result<Placement> {
    let moref_at = |path: &str| o.props.get(path).and_then(Moref::from_element);
    let missing = |what: &str| VsphereError::Protocol {
        method: "RetrievePropertiesEx".into(),
        message: format!("{source} has no {what}: it cannot be cloned (is it a template?)"),
    };
    let folder = moref_at("parent").ok_or_else(|| missing("parent folder"))?;
    let pool = moref_at("resourcePool").ok_or_else(|| missing("resource pool"))?;
    // `datastore` is an ArrayOfManagedObjectReference: one child per datastore.
    let datastore = o
        .props
        .get("datastore")
        .and_then(|a| a.children.iter().find_map(Moref::from_element));
    Ok(Placement {
        folder,
        pool,
        datastore,
    })
}

/// Arguments of `CloneVM_Task`: a linked clone named `name` of `snapshot`, with its memory,
/// powered off (suspended when the snapshot has memory), not a template.
pub fn clone_args(name: &str, at: &Placement, snapshot: &Moref) -> String {
    let datastore = at
        .datastore
        .as_ref()
        .map(|d| mor("datastore", d))
        .unwrap_or_default();
    format!(
        concat!(
            "{folder}{name}<spec><location>{datastore}{disk_move}{pool}</location>",
            "<template>false</template><powerOn>false</powerOn>{snapshot}",
            "<memory>true</memory></spec>"
        ),
        folder = mor("folder", &at.folder),
        name = el("name", name),
        datastore = datastore,
        disk_move = el("diskMoveType", LINKED_CLONE),
        pool = mor("pool", &at.pool),
        snapshot = mor("snapshot", snapshot),
    )
}

/// The error for a clone whose name is taken.
pub fn duplicate_name(clone: &str, detail: &str) -> VsphereError {
    VsphereError::Fault {
        method: "CloneVM_Task".into(),
        kind: "DuplicateName".into(),
        message: format!(
            "a VM named {clone:?} already exists{}: destroy it or choose another name",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ),
    }
}

/// Runs `CloneVM_Task` on `source` and waits for it; returns the new VM.
pub async fn linked_clone(
    s: &Arc<Session>,
    source: &Moref,
    source_name: &str,
    at: &Placement,
    snapshot: &Moref,
    clone: &str,
) -> Result<Moref> {
    let args = clone_args(clone, at, snapshot);
    let result = tasks::run(
        s,
        "CloneVM_Task",
        source,
        &args,
        Some((source, source_name)),
        s.timeouts.task(),
    )
    .await;
    match result {
        Ok(Some(r)) => Moref::from_element(&r).ok_or_else(|| VsphereError::Protocol {
            method: "CloneVM_Task".into(),
            message: format!("the task's result is not a VM: {r:?}"),
        }),
        Ok(None) => Err(VsphereError::Protocol {
            method: "CloneVM_Task".into(),
            message: "the task ended without naming the new VM".into(),
        }),
        Err(VsphereError::Fault { kind, message, .. }) if kind == "DuplicateName" => {
            Err(duplicate_name(clone, &message))
        }
        Err(e) => Err(e),
    }
}

/// Powers `vm` off (already off is fine) and runs `Destroy_Task`.
pub async fn destroy(s: &Arc<Session>, vm: &Moref, name: &str) -> Result<()> {
    power::power_off(s, vm, name).await?;
    tasks::run(
        s,
        "Destroy_Task",
        vm,
        "",
        Some((vm, name)),
        s.timeouts.task(),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vcenter_clones() {
        assert!(supported("VirtualCenter"));
        assert!(!supported("HostAgent"));
    }

    #[test]
    fn a_template_without_a_pool_is_refused_by_name() {
        let o = ObjectContent {
            obj: Moref::new("VirtualMachine", "vm-1"),
            props: [(
                "parent".to_string(),
                crate::xmltree::parse(r#"<val type="Folder">group-v3</val>"#).unwrap(),
            )]
            .into_iter()
            .collect(),
            missing: Vec::new(),
        };
        let e = placement("golden", &o).unwrap_err();
        assert!(e.to_string().contains("golden has no resource pool"), "{e}");
    }
}
