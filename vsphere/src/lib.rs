//! `sdci-vsphere`: everything sdci asks of VMware ESXi / vCenter, as a thin vim25 SOAP client
//! over reqwest (rustls) and quick-xml.
//!
//! - [`hypervisor`]: the [`Hypervisor`] trait the host's scheduler is written against, its value
//!   types and the one error type [`VsphereError`] with its retry [`ErrorClass`].
//! - [`client`]: [`VsphereClient`], the implementation; [`config`]: [`VsphereConfig`] as the host's
//!   TOML holds it.
//! - Layers below, each owning one part of the protocol: [`xmltree`] (answers as element trees),
//!   [`soap`] (envelopes, faults), [`tls`] (trust), [`session`] (cookie, login, retries),
//!   [`inventory`] (property reads, container views), [`wait`] (WaitForUpdatesEx waiters),
//!   [`tasks`], [`snapshots`], [`power`], [`guest`], [`screenshot`] (console screenshots),
//!   [`clone`] (linked clones of a snapshot, deleting VMs) and [`layout`] (snapshot sizes).

pub mod client;
pub mod clone;
pub mod config;
pub mod guest;
pub mod hypervisor;
pub mod inventory;
pub mod layout;
pub mod notes;
pub mod power;
pub mod screenshot;
pub mod session;
pub mod snapshots;
pub mod soap;
pub mod tasks;
pub mod tls;
pub mod wait;
pub mod xmltree;

pub use client::VsphereClient;
pub use config::{Timeouts, TlsPolicy, VsphereConfig};
pub use hypervisor::{
    Downloaded, ErrorClass, GuestAuth, GuestProgram, Hypervisor, PowerState, ProcessState,
    SnapshotInfo, VmInfo, VmNote, VsphereError,
};
