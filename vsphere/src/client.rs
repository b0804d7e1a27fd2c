//! [`VsphereClient`]: the vim25 implementation of [`Hypervisor`], tying the session, the
//! inventory, waits, tasks, snapshots, power, guest operations and clones together.
//!
//! Invariants:
//! - VMs are addressed by inventory name; the name → managed object id map is cached and
//!   refreshed when a lookup misses or vSphere says an object is gone (`ManagedObjectNotFound`,
//!   after which the operation is tried once more with a fresh id: the server did nothing).
//! - With a datacenter filter, only VMs inside those datacenters are visible.
//! - A keep-alive task (a `CurrentTime` call every `keepalive_secs`) holds only a weak reference
//!   to the session and stops with the client.

use crate::clone;
use crate::config::VsphereConfig;
use crate::guest::{self, Managers};
use crate::hypervisor::{
    Downloaded, GuestAuth, GuestProgram, Hypervisor, ProcessState, Result, SnapshotInfo, VmInfo,
    VmNote, VsphereError,
};
use crate::inventory;
use crate::layout;
use crate::notes;
use crate::power;
use crate::session::{Idem, Session};
use crate::snapshots;
use crate::soap::Moref;
use crate::tasks;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A logged-in vim25 client for one ESXi host or vCenter.
pub struct VsphereClient {
    session: Arc<Session>,
    datacenters: Option<Vec<String>>,
    vms: Mutex<HashMap<String, Moref>>,
    managers: tokio::sync::OnceCell<Managers>,
    keepalive: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for VsphereClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsphereClient")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Drop for VsphereClient {
    fn drop(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
    }
}

fn is_gone(e: &VsphereError) -> bool {
    matches!(e, VsphereError::Fault { kind, .. } if kind == "ManagedObjectNotFound")
}

impl VsphereClient {
    /// Connects and logs in. Must run inside a tokio runtime (the keep-alive is a task).
    pub async fn connect(cfg: VsphereConfig) -> Result<Self> {
        let session = Arc::new(Session::connect(&cfg).await?);
        let keepalive = cfg.timeouts.keepalive().map(|period| {
            let weak = Arc::downgrade(&session);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(s) = weak.upgrade() else { break };
                    let si = Moref::new("ServiceInstance", "ServiceInstance");
                    if let Err(e) = s.call("CurrentTime", &si, "", Idem::Safe).await {
                        tracing::warn!(error = %e, "vSphere keep-alive failed");
                    }
                }
            })
        });
        Ok(Self {
            session,
            datacenters: cfg.datacenters,
            vms: Mutex::new(HashMap::new()),
            managers: tokio::sync::OnceCell::new(),
            keepalive,
        })
    }

    /// `VirtualCenter` for vCenter, `HostAgent` for a standalone ESXi.
    pub fn api_type(&self) -> &str {
        &self.session.content().api_type
    }

    pub fn is_vcenter(&self) -> bool {
        self.session.content().is_vcenter()
    }

    /// Ends the session on the server. A later call logs in again.
    pub async fn logout(&self) -> Result<()> {
        self.session.logout().await
    }

    /// A cheap authenticated call (what the keep-alive sends); returns the server's clock text.
    pub async fn keep_alive(&self) -> Result<String> {
        let si = Moref::new("ServiceInstance", "ServiceInstance");
        let r = self
            .session
            .call("CurrentTime", &si, "", Idem::Safe)
            .await?;
        Ok(r.text_at("returnval").unwrap_or("").to_string())
    }

    fn forget(&self, name: &str) {
        if let Ok(mut m) = self.vms.lock() {
            m.remove(name);
        }
    }

    fn cached(&self, name: &str) -> Option<Moref> {
        self.vms.lock().ok().and_then(|m| m.get(name).cloned())
    }

    /// The managed object of the VM named `name`.
    async fn resolve(&self, name: &str) -> Result<Moref> {
        if let Some(m) = self.cached(name) {
            return Ok(m);
        }
        let scopes = inventory::scopes(&self.session, self.datacenters.as_deref()).await?;
        let mut found: HashMap<String, Moref> = HashMap::new();
        for scope in &scopes {
            for o in inventory::list_in(&self.session, scope, "VirtualMachine", &["name"]).await? {
                if let Some(n) = o.text("name") {
                    if found.contains_key(n) {
                        tracing::warn!(vm = n, "two VMs share this name; using the first");
                        continue;
                    }
                    found.insert(n.to_string(), o.obj);
                }
            }
        }
        let hit = found.get(name).cloned();
        if let Ok(mut m) = self.vms.lock() {
            *m = found;
        }
        hit.ok_or_else(|| VsphereError::VmNotFound {
            name: name.to_string(),
        })
    }

    /// Runs `f` on the VM's managed object, once more with a fresh id if the cached one is gone.
    async fn with_vm<T, F, Fut>(&self, name: &str, f: F) -> Result<T>
    where
        F: Fn(Moref) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let m = self.resolve(name).await?;
        match f(m).await {
            Err(e) if is_gone(&e) => {
                self.forget(name);
                let m = self.resolve(name).await?;
                f(m).await
            }
            other => other,
        }
    }

    async fn managers(&self) -> Result<&Managers> {
        self.managers
            .get_or_try_init(|| guest::managers(&self.session))
            .await
    }

    async fn snapshot_tree(&self, vm: &Moref) -> Result<Vec<SnapshotInfo>> {
        let o = inventory::retrieve_one(&self.session, vm, &["snapshot"]).await?;
        Ok(o.props
            .get("snapshot")
            .map(snapshots::flatten)
            .unwrap_or_default())
    }

    async fn find_snapshot(&self, vm: &Moref, name: &str, snapshot: &str) -> Result<Moref> {
        let tree = self.snapshot_tree(vm).await?;
        snapshots::find(&tree, snapshot)
            .map(snapshots::moref)
            .ok_or_else(|| VsphereError::SnapshotNotFound {
                vm: name.to_string(),
                snapshot: snapshot.to_string(),
            })
    }

    /// Whether a VM named `name` exists now (the name cache is refreshed first).
    async fn exists(&self, name: &str) -> Result<bool> {
        self.forget(name);
        match self.resolve(name).await {
            Ok(_) => Ok(true),
            Err(VsphereError::VmNotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn remove_snapshot_moref(&self, vm: &Moref, name: &str, snap: &Moref) -> Result<()> {
        tasks::run(
            &self.session,
            "RemoveSnapshot_Task",
            snap,
            snapshots::REMOVE_ARGS,
            Some((vm, name)),
            self.session.timeouts.task(),
        )
        .await
        .map(|_| ())
    }
}

impl Hypervisor for VsphereClient {
    async fn list_vms(&self, prefix: &str) -> Result<Vec<VmInfo>> {
        let scopes = inventory::scopes(&self.session, self.datacenters.as_deref()).await?;
        let vms = inventory::list_vms(&self.session, &scopes, prefix).await?;
        if let Ok(mut m) = self.vms.lock() {
            for v in &vms {
                m.insert(v.name.clone(), Moref::new("VirtualMachine", v.id.clone()));
            }
        }
        Ok(vms)
    }

    async fn vm(&self, name: &str) -> Result<VmInfo> {
        self.with_vm(name, |m| async move {
            let o = inventory::retrieve_one(&self.session, &m, inventory::VM_PATHS).await?;
            inventory::vm_info(&o).ok_or_else(|| VsphereError::Protocol {
                method: "RetrievePropertiesEx".into(),
                message: format!("{name} has no name or power state"),
            })
        })
        .await
    }

    async fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>> {
        self.with_vm(vm, |m| async move { self.snapshot_tree(&m).await })
            .await
    }

    async fn revert(&self, vm: &str, snapshot: &str) -> Result<()> {
        self.with_vm(vm, |m| async move {
            let snap = self.find_snapshot(&m, vm, snapshot).await?;
            tasks::run(
                &self.session,
                "RevertToSnapshot_Task",
                &snap,
                "",
                Some((&m, vm)),
                self.session.timeouts.task(),
            )
            .await
            .map(|_| ())
        })
        .await
    }

    async fn create_snapshot(&self, vm: &str, name: &str, description: &str) -> Result<()> {
        self.with_vm(vm, |m| async move {
            let args = snapshots::create_args(name, description);
            tasks::run(
                &self.session,
                "CreateSnapshot_Task",
                &m,
                &args,
                Some((&m, vm)),
                self.session.timeouts.task(),
            )
            .await
            .map(|_| ())
        })
        .await
    }

    async fn create_memory_snapshot(&self, vm: &str, name: &str, description: &str) -> Result<()> {
        self.with_vm(vm, |m| async move {
            let args = snapshots::create_args_with(name, description, true);
            tasks::run(
                &self.session,
                "CreateSnapshot_Task",
                &m,
                &args,
                Some((&m, vm)),
                self.session.timeouts.task(),
            )
            .await
            .map(|_| ())
        })
        .await
    }

    /// `AcquireTicket` (`webmks`): the console's WebSocket URL `wss://host:port/ticket/T`
    /// (the host as vSphere names it, else the connected one).
    async fn console(&self, vm: &str) -> Result<Option<String>> {
        self.with_vm(vm, |m| async move {
            let r = self
                .session
                .call(
                    "AcquireTicket",
                    &m,
                    "<ticketType>webmks</ticketType>",
                    crate::session::Idem::Once,
                )
                .await?;
            let Some(ticket) = r.text_at("returnval/ticket").filter(|t| !t.is_empty()) else {
                return Ok(None);
            };
            let host = r.text_at("returnval/host").unwrap_or("").to_owned();
            let port = r.text_at("returnval/port").unwrap_or("443").to_owned();
            Ok(Some(if host.is_empty() {
                format!("webmks ticket {ticket}")
            } else {
                format!("wss://{host}:{port}/ticket/{ticket}")
            }))
        })
        .await
    }

    async fn remove_snapshot(&self, vm: &str, name: &str) -> Result<()> {
        self.with_vm(vm, |m| async move {
            let snap = self.find_snapshot(&m, vm, name).await?;
            self.remove_snapshot_moref(&m, vm, &snap).await
        })
        .await
    }

    async fn prune_snapshots(
        &self,
        vm: &str,
        prefix: &str,
        keep: usize,
        protected: &[String],
    ) -> Result<Vec<String>> {
        self.with_vm(vm, |m| async move {
            let tree = self.snapshot_tree(&m).await?;
            let mut removed = Vec::new();
            for s in snapshots::to_prune(&tree, prefix, keep, protected) {
                self.remove_snapshot_moref(&m, vm, &snapshots::moref(&s))
                    .await?;
                removed.push(s.name);
            }
            Ok(removed)
        })
        .await
    }

    /// vCenter only: a standalone ESXi host answers `CloneVM_Task` with `NotSupported`.
    fn can_clone(&self, _vm: &str) -> bool {
        clone::supported(self.api_type())
    }

    /// `CloneVM_Task` of the snapshot, linked, with its memory, where the source lives
    /// (`clone`); a name already in the inventory is refused before asking.
    async fn clone_from_snapshot(&self, source: &str, snapshot: &str, clone: &str) -> Result<()> {
        if self.exists(clone).await? {
            return Err(clone::duplicate_name(clone, ""));
        }
        let new = self
            .with_vm(source, |m| async move {
                let snap = self.find_snapshot(&m, source, snapshot).await?;
                let o = inventory::retrieve_one(&self.session, &m, clone::PLACEMENT_PATHS).await?;
                let at = clone::placement(source, &o)?;
                clone::linked_clone(&self.session, &m, source, &at, &snap, clone).await
            })
            .await?;
        if let Ok(mut m) = self.vms.lock() {
            m.insert(clone.to_string(), new);
        }
        Ok(())
    }

    /// Power-off, then `Destroy_Task`; a VM that is not (or no longer) there is success.
    async fn destroy_vm(&self, vm: &str) -> Result<()> {
        let outcome = self
            .with_vm(vm, |m| async move {
                clone::destroy(&self.session, &m, vm).await
            })
            .await;
        self.forget(vm);
        match outcome {
            Err(VsphereError::VmNotFound { .. }) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            other => other,
        }
    }

    /// From `layoutEx` (`layout`): the snapshot's data and memory files and the disk deltas
    /// its parent does not keep; `None` when the layout does not list it.
    async fn snapshot_bytes(&self, vm: &str, name: &str) -> Result<Option<u64>> {
        self.with_vm(vm, |m| async move {
            let tree = self.snapshot_tree(&m).await?;
            let snap =
                snapshots::find(&tree, name).ok_or_else(|| VsphereError::SnapshotNotFound {
                    vm: vm.to_string(),
                    snapshot: name.to_string(),
                })?;
            let parent = snap
                .parent
                .as_deref()
                .and_then(|p| tree.iter().find(|s| s.name == p))
                .map(|p| p.id.clone());
            let o = inventory::retrieve_one(&self.session, &m, layout::LAYOUT_PATHS).await?;
            let (Some(files), Some(layouts)) = (
                o.props.get("layoutEx.file"),
                o.props.get("layoutEx.snapshot"),
            ) else {
                return Ok(None);
            };
            Ok(layout::snapshot_bytes(
                files,
                layouts,
                &snap.id,
                parent.as_deref(),
            ))
        })
        .await
    }

    async fn power_on(&self, vm: &str) -> Result<()> {
        self.with_vm(vm, |m| async move {
            power::power_on(&self.session, &m, vm).await
        })
        .await
    }

    async fn wait_guest_ready(&self, vm: &str, timeout: Duration) -> Result<()> {
        self.with_vm(vm, |m| async move {
            power::wait_guest_ready(&self.session, &m, vm, timeout).await
        })
        .await
    }

    async fn shutdown(&self, vm: &str, grace: Duration) -> Result<()> {
        self.with_vm(vm, |m| async move {
            power::shutdown(&self.session, &m, vm, grace).await
        })
        .await
    }

    async fn power_off(&self, vm: &str) -> Result<()> {
        self.with_vm(vm, |m| async move {
            power::power_off(&self.session, &m, vm).await
        })
        .await
    }

    async fn start_program(
        &self,
        vm: &str,
        auth: &GuestAuth,
        program: &GuestProgram,
    ) -> Result<i64> {
        let mgr = self.managers().await?;
        self.with_vm(vm, |m| async move {
            guest::start(&self.session, mgr, &m, auth, program).await
        })
        .await
    }

    async fn process_state(&self, vm: &str, auth: &GuestAuth, pid: i64) -> Result<ProcessState> {
        let mgr = self.managers().await?;
        self.with_vm(vm, |m| async move {
            guest::state(&self.session, mgr, &m, auth, pid).await
        })
        .await
    }

    async fn terminate(&self, vm: &str, auth: &GuestAuth, pid: i64) -> Result<()> {
        let mgr = self.managers().await?;
        self.with_vm(vm, |m| async move {
            guest::terminate(&self.session, mgr, &m, auth, pid).await
        })
        .await
    }

    async fn make_directory(
        &self,
        vm: &str,
        auth: &GuestAuth,
        path: &str,
        create_parents: bool,
    ) -> Result<()> {
        let mgr = self.managers().await?;
        self.with_vm(vm, |m| async move {
            guest::make_directory(&self.session, mgr, &m, auth, path, create_parents).await
        })
        .await
    }

    async fn upload(
        &self,
        vm: &str,
        auth: &GuestAuth,
        guest_path: &str,
        data: Vec<u8>,
    ) -> Result<()> {
        let mgr = self.managers().await?;
        self.with_vm(vm, |m| {
            let data = data.clone();
            async move { guest::upload(&self.session, mgr, &m, auth, guest_path, data).await }
        })
        .await
    }

    async fn download(&self, vm: &str, auth: &GuestAuth, guest_path: &str) -> Result<Vec<u8>> {
        let mgr = self.managers().await?;
        self.with_vm(vm, |m| async move {
            guest::download(&self.session, mgr, &m, auth, guest_path).await
        })
        .await
    }

    async fn download_to(
        &self,
        vm: &str,
        auth: &GuestAuth,
        guest_path: &str,
        dest: &std::path::Path,
        max_bytes: u64,
    ) -> Result<Downloaded> {
        let mgr = self.managers().await?;
        self.with_vm(vm, |m| async move {
            guest::download_to(&self.session, mgr, &m, auth, guest_path, dest, max_bytes).await
        })
        .await
    }

    /// `CreateScreenshot_Task`, then the image from the datastore (`screenshot`).
    async fn screenshot(
        &self,
        vm: &str,
        dest: &std::path::Path,
        max_bytes: u64,
    ) -> Result<Option<Downloaded>> {
        let timeout = self.session.timeouts.task();
        self.with_vm(vm, |m| async move {
            crate::screenshot::take(&self.session, &m, vm, dest, max_bytes, timeout)
                .await
                .map(Some)
        })
        .await
    }

    async fn note(&self, vm: &str) -> Result<VmNote> {
        self.with_vm(vm, |m| async move { notes::read(&self.session, &m).await })
            .await
    }

    async fn set_note(&self, vm: &str, text: &str, expected: &str) -> Result<bool> {
        self.with_vm(vm, |m| async move {
            notes::write(&self.session, &m, vm, text, expected).await
        })
        .await
    }
}
