//! `sdci-hypervisor`: the contract between the host's scheduler and a hypervisor backend, with no
//! vendor in it.
//!
//! The scheduler is generic over [`Hypervisor`]; `sdci-vsphere` (vim25 SOAP) and `sdci-libvirt`
//! (libvirt + the QEMU guest agent) implement it. This crate owns what every backend must agree
//! on, so that a backend can be swapped without the scheduler noticing:
//! - [`types`]: the values passed across the seam ([`VmInfo`], [`SnapshotInfo`], [`PowerState`],
//!   [`GuestAuth`], [`GuestProgram`], [`ProcessState`]);
//! - [`error`]: the one error type [`HypervisorError`] and its retry [`ErrorClass`];
//! - [`snapshots`]: which snapshot a name means and which ones pruning removes (pure rules);
//! - the trait itself, below, with the default `prune_snapshots`, `wait_program`, `download_to`,
//!   the VM notes (`note`, `set_note`: none, for a backend without them) and `screenshot` (none).
//!
//! VMs are addressed by name (`Qubes_4.2_a`): names are unique per pool by the deployment rules,
//! and a backend maps them to its own ids. No method sleeps a fixed time: waits are driven by the
//! hypervisor's own change notifications and bounded by the deadlines passed in.

pub mod error;
pub mod snapshots;
pub mod types;

pub use error::{ErrorClass, HypervisorError, Result};
pub use types::{
    Downloaded, GuestAuth, GuestProgram, PowerState, ProcessState, SnapshotInfo, VmInfo, VmNote,
};

use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// The longest pause between two process-state reads in [`Hypervisor::wait_program`].
pub const PROGRAM_POLL_MAX: Duration = Duration::from_millis(500);

/// Everything the scheduler asks of the hypervisor. The scheduler is generic over it.
pub trait Hypervisor: Send + Sync + 'static {
    /// Every VM whose name starts with `prefix` (e.g. `Qubes_4.2_`), across everything the
    /// backend is configured to see (datacenters and folders; libvirt URIs).
    fn list_vms(&self, prefix: &str) -> impl Future<Output = Result<Vec<VmInfo>>> + Send;
    fn vm(&self, name: &str) -> impl Future<Output = Result<VmInfo>> + Send;

    fn snapshots(&self, vm: &str) -> impl Future<Output = Result<Vec<SnapshotInfo>>> + Send;
    /// Reverts to the snapshot named `snapshot` (found anywhere in the tree) and waits until done.
    fn revert(&self, vm: &str, snapshot: &str) -> impl Future<Output = Result<()>> + Send;
    fn create_snapshot(
        &self,
        vm: &str,
        name: &str,
        description: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    fn remove_snapshot(&self, vm: &str, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Snapshots the *running* VM with its memory (issue 18's provisioned snapshot): a revert
    /// to it comes back powered on where it was, in seconds (vSphere: `memory = true`, the VM
    /// is stunned briefly and its guest programs go on; libvirt: an internal snapshot with
    /// `<memory snapshot='internal'/>`). Both backends implement it; the default takes an
    /// ordinary snapshot, for a backend whose snapshots of a running VM hold its memory anyway.
    fn create_memory_snapshot(
        &self,
        vm: &str,
        name: &str,
        description: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        self.create_snapshot(vm, name, description)
    }
    /// Bytes snapshot `name` of `vm` takes on the datastore, when the backend can tell; the
    /// default cannot (`None`).
    fn snapshot_bytes(
        &self,
        vm: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<u64>>> + Send {
        let _ = (vm, name);
        async { Ok(None) }
    }
    /// How an operator reaches a running VM's console (vSphere: a `webmks` ticket from
    /// `AcquireTicket`, as a URL); `None` where the backend has none.
    fn console(&self, vm: &str) -> impl Future<Output = Result<Option<String>>> + Send {
        let _ = vm;
        async { Ok(None) }
    }
    /// Whether [`Hypervisor::clone_from_snapshot`] works for VM `vm`'s snapshots (issue 18's
    /// stage re-run on another VM of the pool); a name is enough, the VM need not exist (a
    /// backend that routes by name, a pool's first VM, a clone's name). The default: no.
    fn can_clone(&self, vm: &str) -> bool {
        let _ = vm;
        false
    }
    /// Creates VM `clone` as a *linked* clone of snapshot `snapshot` of VM `source` (a child
    /// disk over the snapshot's disks, nothing copied), in the source's folder, resource pool
    /// and datastore, not running, with the snapshot's memory when it has one (vSphere:
    /// `CloneVM_Task` with `snapshot`, `location.diskMoveType = createNewChildDiskBacking`,
    /// `memory = true`, `powerOn = false`; a clone of a memory snapshot is *suspended*, one of a
    /// snapshot without memory powered off), so that [`Hypervisor::power_on`] resumes it where
    /// the snapshot was taken (or boots it). On vSphere a memory clone loses its network
    /// adapters (other than ones with a manual MAC address). The source is not touched and may be running. A VM named `clone`
    /// that already exists is an error. The default: unsupported (`VIR_ERR_NO_SUPPORT`-like
    /// `Fault` of kind `NotSupported`), see [`Hypervisor::can_clone`].
    fn clone_from_snapshot(
        &self,
        source: &str,
        snapshot: &str,
        clone: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (source, snapshot);
        let clone = clone.to_owned();
        async move {
            Err(HypervisorError::Fault {
                method: "clone_from_snapshot".into(),
                kind: "NotSupported".into(),
                message: format!("this hypervisor backend cannot clone {clone} from a snapshot"),
            })
        }
    }
    /// Powers VM `vm` off if it is on and deletes it with its files (vSphere `Destroy_Task`).
    /// Only ever called on VMs sdci created ([`Hypervisor::clone_from_snapshot`]); a VM that
    /// does not exist is success. The default: unsupported, like `clone_from_snapshot`.
    fn destroy_vm(&self, vm: &str) -> impl Future<Output = Result<()>> + Send {
        let vm = vm.to_owned();
        async move {
            Err(HypervisorError::Fault {
                method: "destroy_vm".into(),
                kind: "NotSupported".into(),
                message: format!("this hypervisor backend cannot destroy {vm}"),
            })
        }
    }
    /// Removes the oldest snapshots whose name starts with `prefix` until only the newest `keep`
    /// of them remain, never one in `protected` ([`snapshots::to_prune`], sdci's one rule);
    /// other snapshots are not touched. Returns the removed names, oldest first.
    fn prune_snapshots(
        &self,
        vm: &str,
        prefix: &str,
        keep: usize,
        protected: &[String],
    ) -> impl Future<Output = Result<Vec<String>>> + Send {
        async move {
            let tree = self.snapshots(vm).await?;
            let mut removed = Vec::new();
            for s in snapshots::to_prune(&tree, prefix, keep, protected) {
                self.remove_snapshot(vm, &s.name).await?;
                removed.push(s.name);
            }
            Ok(removed)
        }
    }

    /// Powers on and waits until it is on; an already-on VM is success.
    fn power_on(&self, vm: &str) -> impl Future<Output = Result<()>> + Send;
    /// Waits (change notifications, no polling sleeps) until guest operations are ready.
    fn wait_guest_ready(
        &self,
        vm: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Guest shutdown, wait up to `grace` for power-off, then hard power-off. Already off: `Ok`.
    fn shutdown(&self, vm: &str, grace: Duration) -> impl Future<Output = Result<()>> + Send;
    /// Hard power-off; an already-off VM is success.
    fn power_off(&self, vm: &str) -> impl Future<Output = Result<()>> + Send;

    /// Starts a program in the guest; returns its pid.
    fn start_program(
        &self,
        vm: &str,
        auth: &GuestAuth,
        program: &GuestProgram,
    ) -> impl Future<Output = Result<i64>> + Send;
    fn process_state(
        &self,
        vm: &str,
        auth: &GuestAuth,
        pid: i64,
    ) -> impl Future<Output = Result<ProcessState>> + Send;
    /// Waits until the program ends (or its pid is lost), within `timeout`. Guest processes have
    /// no change notification, so this polls [`Hypervisor::process_state`] with a backoff from
    /// 20 ms up to [`PROGRAM_POLL_MAX`]: a short program is seen ending within milliseconds.
    fn wait_program(
        &self,
        vm: &str,
        auth: &GuestAuth,
        pid: i64,
        timeout: Duration,
    ) -> impl Future<Output = Result<ProcessState>> + Send {
        async move {
            let started = tokio::time::Instant::now();
            let deadline = started + timeout;
            let mut delay = Duration::from_millis(20);
            loop {
                match self.process_state(vm, auth, pid).await? {
                    ProcessState::Running => {}
                    done => return Ok(done),
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(HypervisorError::Timeout {
                        what: format!("guest program {pid} on {vm}"),
                        waited: now - started,
                    });
                }
                tokio::time::sleep(delay.min(deadline - now)).await;
                delay = (delay * 2).min(PROGRAM_POLL_MAX);
            }
        }
    }
    /// Ends a started program (the whole process, not a polite request). An already-ended
    /// program is success.
    fn terminate(
        &self,
        vm: &str,
        auth: &GuestAuth,
        pid: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Creates the directory `path` in the guest, with its missing parents when
    /// `create_parents`. A directory that already exists is success. [`Hypervisor::upload`] does
    /// not create parent directories on every backend (real ESXi does not): make them first.
    fn make_directory(
        &self,
        vm: &str,
        auth: &GuestAuth,
        path: &str,
        create_parents: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Writes `data` to `guest_path` (overwriting). The parent directory must exist (see
    /// [`Hypervisor::make_directory`]).
    fn upload(
        &self,
        vm: &str,
        auth: &GuestAuth,
        guest_path: &str,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send;
    fn download(
        &self,
        vm: &str,
        auth: &GuestAuth,
        guest_path: &str,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// Writes at most `max_bytes` of `guest_path` to the host file `dest` (created or
    /// truncated), streaming where the backend can, so a huge guest file never sits in memory.
    /// The default reads the file with [`Hypervisor::download`] and writes its first bytes.
    fn download_to(
        &self,
        vm: &str,
        auth: &GuestAuth,
        guest_path: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Downloaded>> + Send {
        async move {
            let bytes = self.download(vm, auth, guest_path).await?;
            let keep = bytes
                .len()
                .min(usize::try_from(max_bytes).unwrap_or(usize::MAX));
            std::fs::write(dest, &bytes[..keep]).map_err(|e| HypervisorError::Config {
                message: format!("writing {}: {e}", dest.display()),
            })?;
            Ok(Downloaded {
                bytes: keep as u64,
                truncated: keep < bytes.len(),
            })
        }
    }

    /// A picture of the VM's console (PNG) written to the host file `dest` (at most `max_bytes`),
    /// for a job whose guest hung or timed out. `Ok(None)`: the backend takes none (the default).
    fn screenshot(
        &self,
        vm: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<Downloaded>>> + Send {
        let _ = (vm, dest, max_bytes);
        async { Ok(None) }
    }

    /// The VM's note and its version ([`VmNote`]). The default: an empty note, no version
    /// (a backend without notes; then nothing protects a VM from a second instance).
    fn note(&self, vm: &str) -> impl Future<Output = Result<VmNote>> + Send {
        let _ = vm;
        async { Ok(VmNote::default()) }
    }
    /// Replaces the VM's note with `text` if its version is still `expected` (compare and set);
    /// `Ok(false)` when the note changed meanwhile (someone else wrote first). The default
    /// stores nothing and answers `Ok(true)`.
    fn set_note(
        &self,
        vm: &str,
        text: &str,
        expected: &str,
    ) -> impl Future<Output = Result<bool>> + Send {
        let _ = (vm, text, expected);
        async { Ok(true) }
    }
}
