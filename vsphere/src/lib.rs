//! `sdci-vsphere`: everything sdci asks of VMware ESXi / vCenter.
//!
//! - [`hypervisor`]: the [`Hypervisor`] trait the host's scheduler is written against, its value
//!   types and the one error type [`VsphereError`] with its retry [`ErrorClass`].
//!
//! Status: the trait is the contract; the vim25 SOAP client implementing it lands with the
//! "vSphere client" issue.

pub mod hypervisor;

pub use hypervisor::{
    ErrorClass, GuestAuth, GuestProgram, Hypervisor, PowerState, ProcessState, SnapshotInfo,
    VmInfo, VsphereError,
};
