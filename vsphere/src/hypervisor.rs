//! The `Hypervisor` contract under its old address: the trait, value types and error live in
//! `sdci-hypervisor` (vendor-neutral, shared with the libvirt backend); this module re-exports
//! them so `sdci_vsphere::hypervisor::…` and `VsphereError` keep working.

pub use sdci_hypervisor::{
    Downloaded, ErrorClass, GuestAuth, GuestProgram, Hypervisor, HypervisorError, PowerState,
    ProcessState, Result, SnapshotInfo, VmInfo, VmNote, PROGRAM_POLL_MAX,
};

/// The vSphere client's error is the shared one.
pub type VsphereError = HypervisorError;
