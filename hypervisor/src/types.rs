//! The values that cross the scheduler ⇄ backend seam. Each field says what it means in neutral
//! terms and what each backend reads it from, so a backend knows what it must report.

use sdci_protocol::job::Secret;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    /// Suspended or paused: not running guest code, not off either.
    Suspended,
}

/// One VM as the inventory reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    /// Inventory name, e.g. `Qubes_4.2_a`.
    pub name: String,
    /// The backend's own id, stable for the VM's life (vSphere: the managed object id `vm-42`;
    /// libvirt: the connection URI and domain UUID).
    pub id: String,
    /// BIOS uuid (vSphere `config.uuid`, libvirt `<uuid>`).
    pub uuid: String,
    pub power: PowerState,
    /// The in-guest agent runs (VMware Tools running; the QEMU guest agent connected).
    pub agent_running: bool,
    /// Guest operations would be accepted now (vSphere `guest.guestOperationsReady`; libvirt: the
    /// guest agent answers `guest-ping`).
    pub guest_ready: bool,
}

/// One snapshot of a VM's tree, flattened (parents before children).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// The backend's id of the snapshot (vSphere `snapshot-7`; libvirt: the snapshot's name).
    pub id: String,
    pub created: Option<SystemTime>,
    /// Name of the parent snapshot, `None` at a root.
    pub parent: Option<String>,
    /// The VM currently runs from (a descendant of) this snapshot.
    pub is_current: bool,
}

/// Credentials for guest operations. vSphere authenticates each call with them; a backend whose
/// guest channel is already privileged (the QEMU guest agent runs as root) runs the program as
/// `user` instead.
#[derive(Debug, Clone)]
pub struct GuestAuth {
    pub user: String,
    pub password: Secret,
}

/// A program to start in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProgram {
    /// Absolute path of the executable in the guest.
    pub path: String,
    /// One string, as vSphere takes it (the guest's shell rules apply).
    pub arguments: String,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub working_directory: Option<String>,
}

/// What the guest says about a started program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    /// Ended with this exit code (an absent code is reported as 0, as ESXi does; a program
    /// killed by a signal reports 128 + the signal number where the backend knows it).
    Exited(i32),
    /// The guest no longer knows the pid (rebooted, or the process table was pruned).
    Lost,
}

/// A VM's free-text note (vSphere: the annotation, "Notes") with the version it was read at,
/// for compare-and-set writes. sdci keeps its lease line in it (several `sdci-host` instances
/// may share one hypervisor); other lines are the operators' and are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmNote {
    pub text: String,
    /// Opaque; changes with every change of the VM's configuration (vSphere:
    /// `config.changeVersion`). Empty where the backend has no versions.
    pub version: String,
}

/// What [`crate::Hypervisor::download_to`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written to the destination file.
    pub bytes: u64,
    /// The guest file was longer than the cap: only its first `bytes` were written.
    pub truncated: bool,
}
