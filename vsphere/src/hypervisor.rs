//! The contract between the scheduler and VMware: what can be asked of a VM, and how failures are
//! classified for retrying.
//!
//! VMs are addressed by their inventory name (`Qubes_4.2_a`): names are unique per pool by the
//! deployment rules (`salt/README.md`), and an implementation maps them to managed object ids.
//! No method sleeps a fixed time: waits are driven by the hypervisor's own change notifications
//! and bounded by the deadlines passed in.

use sdci_protocol::job::Secret;
use std::future::Future;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    Suspended,
}

/// One VM as the inventory reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    /// Inventory name, e.g. `Qubes_4.2_a`.
    pub name: String,
    /// Managed object id (`vm-42`), stable for the VM's life.
    pub moref: String,
    /// `config.uuid` (BIOS uuid).
    pub uuid: String,
    pub power: PowerState,
    /// VMware Tools reports running (`guest.toolsRunningStatus == guestToolsRunning`).
    pub tools_running: bool,
    /// `guest.guestOperationsReady`.
    pub guest_ops_ready: bool,
}

/// One snapshot of a VM's tree, flattened (parents before children).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub moref: String,
    pub created: Option<SystemTime>,
    /// Name of the parent snapshot, `None` at a root.
    pub parent: Option<String>,
    /// The VM currently runs from (a descendant of) this snapshot.
    pub is_current: bool,
}

/// Credentials for guest operations (`NamePasswordAuthentication`, `interactiveSession=false`).
#[derive(Debug, Clone)]
pub struct GuestAuth {
    pub user: String,
    pub password: Secret,
}

/// A program to start in the guest (`GuestProgramSpec`).
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

/// What `ListProcessesInGuest` says about a started program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    /// Ended with this exit code (absent code reported as 0, as ESXi does).
    Exited(i32),
    /// The guest no longer knows the pid (rebooted, or the process table was pruned).
    Lost,
}

/// What the caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// This VM is the problem (won't power on, tools never came up): use another VM.
    RetryOtherVm,
    /// vSphere itself is busy or unreachable (503, dropped connection): try again later.
    RetryLater,
    /// Retrying cannot help (bad credentials, missing snapshot, configuration).
    GiveUp,
}

/// The one error type of the crate. Each variant says what failed and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    #[error("vSphere refused the login for user {user:?}: check the user and password file")]
    LoginRefused { user: String },
    #[error("no VM named {name:?} in any datacenter: check the pool names in the host config")]
    VmNotFound { name: String },
    #[error("VM {vm:?} has no snapshot named {snapshot:?}: check the pool's golden snapshot")]
    SnapshotNotFound { vm: String, snapshot: String },
    #[error("VMware Tools on {vm:?} did not become ready within {waited:?}")]
    ToolsNotReady { vm: String, waited: Duration },
    #[error("VM {vm:?} did not power off within {waited:?} of a guest shutdown")]
    ShutdownTimeout { vm: String, waited: Duration },
    #[error("VM {vm:?} is waiting for an answer to a question: {question}")]
    VmQuestion { vm: String, question: String },
    #[error("{method} failed with {kind}: {message}")]
    Fault {
        method: String,
        /// The fault type, e.g. `InvalidPowerState`, `GuestOperationsUnavailable`.
        kind: String,
        message: String,
    },
    #[error("talking to vSphere at {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("vSphere answered {method} with HTTP {status}")]
    Http { method: String, status: u16 },
    #[error("unexpected answer to {method}: {message}")]
    Protocol { method: String, message: String },
    #[error("{what} timed out after {waited:?}")]
    Timeout { what: String, waited: Duration },
    #[error("the vSphere configuration is not usable: {message}")]
    Config { message: String },
}

impl VsphereError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::LoginRefused { .. }
            | Self::VmNotFound { .. }
            | Self::SnapshotNotFound { .. }
            | Self::Config { .. } => ErrorClass::GiveUp,
            Self::ToolsNotReady { .. }
            | Self::ShutdownTimeout { .. }
            | Self::VmQuestion { .. }
            | Self::Timeout { .. } => ErrorClass::RetryOtherVm,
            Self::Fault { kind, .. } => match kind.as_str() {
                "NotAuthenticated" | "InvalidLogin" | "NoPermission" | "InvalidGuestLogin"
                | "InvalidArgument" => ErrorClass::GiveUp,
                "HostCommunication" | "HostNotConnected" | "RequestCanceled" => {
                    ErrorClass::RetryLater
                }
                _ => ErrorClass::RetryOtherVm,
            },
            Self::Transport { .. } | Self::Protocol { .. } => ErrorClass::RetryLater,
            Self::Http { status, .. } => {
                if *status >= 500 {
                    ErrorClass::RetryLater
                } else {
                    ErrorClass::GiveUp
                }
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, VsphereError>;

/// The longest pause between two process-state reads in [`Hypervisor::wait_program`].
pub const PROGRAM_POLL_MAX: Duration = Duration::from_millis(500);

/// Everything the scheduler asks of the hypervisor. Implemented by the vim25 client; the
/// scheduler is generic over it.
pub trait Hypervisor: Send + Sync + 'static {
    /// Every VM whose name starts with `prefix` (e.g. `Qubes_4.2_`), across all datacenters and
    /// folders.
    fn list_vms(&self, prefix: &str) -> impl Future<Output = Result<Vec<VmInfo>>> + Send;
    fn vm(&self, name: &str) -> impl Future<Output = Result<VmInfo>> + Send;

    fn snapshots(&self, vm: &str) -> impl Future<Output = Result<Vec<SnapshotInfo>>> + Send;
    /// Reverts to the snapshot named `snapshot` (found anywhere in the tree) and waits for the task.
    fn revert(&self, vm: &str, snapshot: &str) -> impl Future<Output = Result<()>> + Send;
    fn create_snapshot(
        &self,
        vm: &str,
        name: &str,
        description: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    fn remove_snapshot(&self, vm: &str, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes the oldest snapshots whose name starts with `prefix` until only the newest `keep`
    /// of them remain; other snapshots are not touched. Returns the removed names, oldest first.
    fn prune_snapshots(
        &self,
        vm: &str,
        prefix: &str,
        keep: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send {
        async move {
            let tree = self.snapshots(vm).await?;
            let mut removed = Vec::new();
            for s in crate::snapshots::to_prune(&tree, prefix, keep) {
                self.remove_snapshot(vm, &s.name).await?;
                removed.push(s.name);
            }
            Ok(removed)
        }
    }

    /// Powers on and waits for the task; an already-on VM is success.
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
                    return Err(VsphereError::Timeout {
                        what: format!("guest program {pid} on {vm}"),
                        waited: now - started,
                    });
                }
                tokio::time::sleep(delay.min(deadline - now)).await;
                delay = (delay * 2).min(PROGRAM_POLL_MAX);
            }
        }
    }
    fn terminate(
        &self,
        vm: &str,
        auth: &GuestAuth,
        pid: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Creates the directory `path` in the guest (`MakeDirectoryInGuest`), with its missing
    /// parents when `create_parents`. A directory that already exists is success. Real ESXi does
    /// not create parent directories for [`Hypervisor::upload`]: make them first.
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
}
