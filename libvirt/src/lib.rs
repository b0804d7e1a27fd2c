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
//! - [`monitor`]: the one QEMU monitor answer read (`query-block`: a memory snapshot's size).
//! - `testenv` (feature `testenv`): a private libvirtd, a cached small real guest image and the
//!   KVM/TCG probe, for this crate's tests and for other crates' tests on libvirt.
//!
//! Snapshots are libvirt's *internal* qcow2 snapshots: every one lives inside the domain's own
//! disk images. A golden snapshot is taken powered off (the disks only); issue 18's provisioned
//! snapshot of a running domain is a full system checkpoint (disks, memory and device state,
//! `<memory snapshot='internal'/>`), and a revert to it resumes the guest where it was, from a
//! running or a powered-off domain, then sets the guest's clock to the host's (measured under
//! TCG in `tests/real_libvirt.rs`). Its size is the memory state QEMU saved with it
//! ([`monitor`]).
//!
//! No linked clones (`can_clone` is the trait's `false`; a stage re-run waits for the VM that
//! holds its snapshot). A linked clone is a new qcow2 overlay whose backing file holds the
//! snapshot's disk state, started from the snapshot's memory. An internal snapshot can be
//! neither: an overlay's backing file is always another image's *current* state, never an
//! internal snapshot inside it (only a full copy, `qemu-img convert -l`, gets one out, and
//! libvirt's API offers not even that), and QEMU loads an internal snapshot's memory only into
//! the domain whose image holds it. Through libvirt's API alone a clone would need *external*
//! snapshots instead (the running domain goes on in a new overlay while the snapshot's disk and
//! its memory file stay as they were; a clone is then a storage volume backed by that disk,
//! `virStorageVolCreateXML`, and `virDomainRestoreFlags` of the memory file with the clone's
//! own domain XML). But reverting to an external snapshot needs libvirt 9.7 or later (Debian 12,
//! this project's platform, ships 9.0), and the golden snapshots, their pruning and every revert
//! here are internal: that is a new snapshot model for the backend, not an added method.

pub mod agent;
pub mod client;
pub mod config;
pub mod monitor;
pub mod rpc;
#[cfg(feature = "testenv")]
pub mod testenv;
pub mod xdr;
pub mod xml;

pub use client::LibvirtClient;
pub use config::{DomainType, GuestPrograms, LibvirtConfig, Timeouts};
pub use xml::{DomainSpec, GuestForward, UserNet};
