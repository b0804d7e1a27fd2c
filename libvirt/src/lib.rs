//! `sdci-libvirt`: sdci's [`Hypervisor`](sdci_hypervisor::Hypervisor) on libvirt, so the CI runs
//! on any Linux box with KVM instead of paid vSphere.
//!
//! It speaks libvirt's own remote protocol (the one `virsh` speaks) to the daemon's Unix socket,
//! or through `ssh … virt-ssh-helper` for other hosts, in Rust over tokio: no C library, no
//! blocking calls, and the daemon's events arrive on the same socket. Guest operations go
//! through the QEMU guest agent (`guest-exec`, `guest-exec-status`, `guest-file-*`).
//!
//! - [`client`]: [`LibvirtClient`], the implementation.
//! - [`config`]: [`LibvirtConfig`], the `[libvirt]` TOML table, and URI parsing.
//! - [`rpc`] (connections, calls, events) over [`xdr`] (the encoding).
//! - [`agent`]: guest agent commands and the guest command lines (exit codes, terminate, user).
//! - [`xml`]: the snapshot, domain and capability documents read or written.
//! - `testenv` (feature `testenv`): a private libvirtd, a cached small real guest image and the
//!   KVM/TCG probe, for this crate's tests and for other crates' tests on libvirt.

pub mod agent;
pub mod client;
pub mod config;
pub mod rpc;
#[cfg(feature = "testenv")]
pub mod testenv;
pub mod xdr;
pub mod xml;

pub use client::LibvirtClient;
pub use config::{DomainType, GuestPrograms, LibvirtConfig, Timeouts};
pub use xml::{DomainSpec, GuestForward, UserNet};
