//! The hypervisors the pools use, behind one [`Hypervisor`]: [`Backends`] holds an optional
//! vSphere client and an optional libvirt client and routes every call by the VM's name to the
//! backend of the pool whose prefix it starts with (`[pools."<v>"] backend`, default vSphere).
//! The trait's methods return `impl Future`, so there is no `dyn Hypervisor`: this enum-like
//! router delegates each method, the backends' own overrides (streaming downloads, notes,
//! pruning) included.
//!
//! Invariants: a backend is connected only when a pool uses it (`serve`, `save`,
//! `check-config --connect` and `vms` all connect through [`Backends::connect`]); a name no pool
//! claims goes to the only connected backend, or is not found when there are two; the
//! configuration refuses prefixes that could route one name to two backends.

use crate::config::{Backend, Config};
use crate::Result;
use sdci_libvirt::LibvirtClient;
use sdci_protocol::Secret;
use sdci_vsphere::hypervisor::Result as HvResult;
use sdci_vsphere::{
    Downloaded, GuestAuth, GuestProgram, Hypervisor, ProcessState, SnapshotInfo, VmInfo, VmNote,
    VsphereClient, VsphereError,
};
use std::path::Path;
use std::time::Duration;

/// What the names of stage re-runs' clones start with (`store::RerunClone::PREFIX`).
const CLONE_PREFIX: &str = "sdci-clone-";

/// Every configured backend the pools use, routed by VM name.
pub struct Backends {
    /// `(prefix, backend)` of every pool, longest prefix first.
    routes: Vec<(String, Backend)>,
    vsphere: Option<VsphereClient>,
    libvirt: Option<LibvirtClient>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("routes", &self.routes)
            .field("vsphere", &self.vsphere.is_some())
            .field("libvirt", &self.libvirt.is_some())
            .finish()
    }
}

/// The client one call goes to.
enum Picked<'a> {
    Vsphere(&'a VsphereClient),
    Libvirt(&'a LibvirtClient),
}

/// The same call on whichever client `$self` routes `$vm` to.
macro_rules! routed {
    ($self:ident, $vm:expr, |$c:ident| $call:expr) => {
        match $self.pick($vm)? {
            Picked::Vsphere($c) => $call.await,
            Picked::Libvirt($c) => $call.await,
        }
    };
}

impl Backends {
    /// The pools' routes of `cfg` with the clients given (tests, or [`Backends::connect`]).
    pub fn new(
        cfg: &Config,
        vsphere: Option<VsphereClient>,
        libvirt: Option<LibvirtClient>,
    ) -> Self {
        let mut routes: Vec<(String, Backend)> = cfg
            .pools
            .values()
            .map(|p| (p.prefix.clone(), p.backend))
            .collect();
        routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Self {
            routes,
            vsphere,
            libvirt,
        }
    }

    /// Connects every backend a pool uses: vSphere logs in with `[vsphere]` (password from its
    /// file), libvirt opens a connection to each of `[libvirt] uris`.
    pub async fn connect(cfg: &Config) -> Result<Self> {
        let vsphere = match cfg.uses(Backend::Vsphere) {
            true => Some(super::vsphere::connect(cfg).await?),
            false => None,
        };
        let libvirt = match cfg.uses(Backend::Libvirt) {
            true => Some(connect_libvirt(cfg).await?),
            false => None,
        };
        Ok(Self::new(cfg, vsphere, libvirt))
    }

    pub fn vsphere(&self) -> Option<&VsphereClient> {
        self.vsphere.as_ref()
    }

    pub fn libvirt(&self) -> Option<&LibvirtClient> {
        self.libvirt.as_ref()
    }

    /// The backend `name` (a VM name or a pool prefix) belongs to: the pool with the longest
    /// prefix it starts with; a stage re-run's clone (`sdci-clone-`, contracts §12) the one
    /// backend that makes clones (vSphere); else the only connected backend; else none.
    pub fn backend_of(&self, name: &str) -> Option<Backend> {
        if name.starts_with(CLONE_PREFIX) && self.vsphere.is_some() {
            return Some(Backend::Vsphere);
        }
        if let Some((_, b)) = self
            .routes
            .iter()
            .find(|(p, _)| name.starts_with(p.as_str()))
        {
            return Some(*b);
        }
        match (&self.vsphere, &self.libvirt) {
            (Some(_), None) => Some(Backend::Vsphere),
            (None, Some(_)) => Some(Backend::Libvirt),
            _ => None,
        }
    }

    fn pick(&self, name: &str) -> HvResult<Picked<'_>> {
        let not_connected = |b: Backend| VsphereError::Config {
            message: format!(
                "{name} belongs to a pool on {}, which this process has not connected",
                b.name()
            ),
        };
        match self.backend_of(name) {
            Some(Backend::Vsphere) => self
                .vsphere
                .as_ref()
                .map(Picked::Vsphere)
                .ok_or_else(|| not_connected(Backend::Vsphere)),
            Some(Backend::Libvirt) => self
                .libvirt
                .as_ref()
                .map(Picked::Libvirt)
                .ok_or_else(|| not_connected(Backend::Libvirt)),
            None => Err(VsphereError::VmNotFound { name: name.into() }),
        }
    }
}

/// Opens the libvirt client of `[libvirt]`.
pub async fn connect_libvirt(cfg: &Config) -> Result<LibvirtClient> {
    Ok(LibvirtClient::connect(cfg.libvirt.clone()).await?)
}

/// The dom0 account guest operations use (`[dom0]`). vSphere logs in with its password, so a
/// pool on vSphere needs the password file; libvirt's guest agent runs programs as the user
/// without a login, so with only libvirt pools a missing file is no error.
pub fn guest_auth(cfg: &Config) -> Result<GuestAuth> {
    if cfg.uses(Backend::Vsphere) || cfg.dom0.password_file.exists() {
        return super::vsphere::guest_auth(cfg);
    }
    Ok(GuestAuth {
        user: cfg.dom0.user.clone(),
        password: Secret::new(String::new()),
    })
}

impl Hypervisor for Backends {
    async fn list_vms(&self, prefix: &str) -> HvResult<Vec<VmInfo>> {
        if self.backend_of(prefix).is_some() {
            return routed!(self, prefix, |c| c.list_vms(prefix));
        }
        // A prefix no pool claims, with both backends connected: ask both.
        let mut out = Vec::new();
        if let Some(c) = &self.vsphere {
            out.extend(c.list_vms(prefix).await?);
        }
        if let Some(c) = &self.libvirt {
            out.extend(c.list_vms(prefix).await?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn vm(&self, name: &str) -> HvResult<VmInfo> {
        routed!(self, name, |c| c.vm(name))
    }

    async fn snapshots(&self, vm: &str) -> HvResult<Vec<SnapshotInfo>> {
        routed!(self, vm, |c| c.snapshots(vm))
    }

    async fn revert(&self, vm: &str, snapshot: &str) -> HvResult<()> {
        routed!(self, vm, |c| c.revert(vm, snapshot))
    }

    async fn create_snapshot(&self, vm: &str, name: &str, description: &str) -> HvResult<()> {
        routed!(self, vm, |c| c.create_snapshot(vm, name, description))
    }

    async fn remove_snapshot(&self, vm: &str, name: &str) -> HvResult<()> {
        routed!(self, vm, |c| c.remove_snapshot(vm, name))
    }

    async fn create_memory_snapshot(
        &self,
        vm: &str,
        name: &str,
        description: &str,
    ) -> HvResult<()> {
        routed!(self, vm, |c| c.create_memory_snapshot(
            vm,
            name,
            description
        ))
    }

    async fn snapshot_bytes(&self, vm: &str, name: &str) -> HvResult<Option<u64>> {
        routed!(self, vm, |c| c.snapshot_bytes(vm, name))
    }

    async fn console(&self, vm: &str) -> HvResult<Option<String>> {
        routed!(self, vm, |c| c.console(vm))
    }

    /// As the backend `vm`'s name routes to says (a clone's name routes to vSphere).
    fn can_clone(&self, vm: &str) -> bool {
        match self.pick(vm) {
            Ok(Picked::Vsphere(c)) => c.can_clone(vm),
            Ok(Picked::Libvirt(c)) => c.can_clone(vm),
            Err(_) => false,
        }
    }

    async fn clone_from_snapshot(&self, source: &str, snapshot: &str, clone: &str) -> HvResult<()> {
        routed!(self, source, |c| c
            .clone_from_snapshot(source, snapshot, clone))
    }

    async fn destroy_vm(&self, vm: &str) -> HvResult<()> {
        routed!(self, vm, |c| c.destroy_vm(vm))
    }

    async fn prune_snapshots(
        &self,
        vm: &str,
        prefix: &str,
        keep: usize,
        protected: &[String],
    ) -> HvResult<Vec<String>> {
        routed!(self, vm, |c| c.prune_snapshots(vm, prefix, keep, protected))
    }

    async fn power_on(&self, vm: &str) -> HvResult<()> {
        routed!(self, vm, |c| c.power_on(vm))
    }

    async fn wait_guest_ready(&self, vm: &str, timeout: Duration) -> HvResult<()> {
        routed!(self, vm, |c| c.wait_guest_ready(vm, timeout))
    }

    async fn shutdown(&self, vm: &str, grace: Duration) -> HvResult<()> {
        routed!(self, vm, |c| c.shutdown(vm, grace))
    }

    async fn power_off(&self, vm: &str) -> HvResult<()> {
        routed!(self, vm, |c| c.power_off(vm))
    }

    async fn start_program(
        &self,
        vm: &str,
        auth: &GuestAuth,
        program: &GuestProgram,
    ) -> HvResult<i64> {
        routed!(self, vm, |c| c.start_program(vm, auth, program))
    }

    async fn process_state(&self, vm: &str, auth: &GuestAuth, pid: i64) -> HvResult<ProcessState> {
        routed!(self, vm, |c| c.process_state(vm, auth, pid))
    }

    async fn wait_program(
        &self,
        vm: &str,
        auth: &GuestAuth,
        pid: i64,
        timeout: Duration,
    ) -> HvResult<ProcessState> {
        routed!(self, vm, |c| c.wait_program(vm, auth, pid, timeout))
    }

    async fn terminate(&self, vm: &str, auth: &GuestAuth, pid: i64) -> HvResult<()> {
        routed!(self, vm, |c| c.terminate(vm, auth, pid))
    }

    async fn make_directory(
        &self,
        vm: &str,
        auth: &GuestAuth,
        path: &str,
        create_parents: bool,
    ) -> HvResult<()> {
        routed!(self, vm, |c| c.make_directory(
            vm,
            auth,
            path,
            create_parents
        ))
    }

    async fn upload(
        &self,
        vm: &str,
        auth: &GuestAuth,
        guest_path: &str,
        data: Vec<u8>,
    ) -> HvResult<()> {
        routed!(self, vm, |c| c.upload(vm, auth, guest_path, data))
    }

    async fn download(&self, vm: &str, auth: &GuestAuth, guest_path: &str) -> HvResult<Vec<u8>> {
        routed!(self, vm, |c| c.download(vm, auth, guest_path))
    }

    async fn download_to(
        &self,
        vm: &str,
        auth: &GuestAuth,
        guest_path: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> HvResult<Downloaded> {
        routed!(self, vm, |c| c
            .download_to(vm, auth, guest_path, dest, max_bytes))
    }

    async fn screenshot(
        &self,
        vm: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> HvResult<Option<Downloaded>> {
        routed!(self, vm, |c| c.screenshot(vm, dest, max_bytes))
    }

    async fn note(&self, vm: &str) -> HvResult<VmNote> {
        routed!(self, vm, |c| c.note(vm))
    }

    async fn set_note(&self, vm: &str, text: &str, expected: &str) -> HvResult<bool> {
        routed!(self, vm, |c| c.set_note(vm, text, expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pools: &str) -> Config {
        Config::parse(pools, Path::new("host.toml")).unwrap()
    }

    const TWO: &str = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"g\"\n\
                       [pools.\"4.3\"]\nprefix = \"kvm-4.3-\"\ngolden_snapshot = \"g\"\n\
                       backend = \"libvirt\"\n";

    #[test]
    fn a_vm_goes_to_the_backend_of_the_pool_whose_prefix_it_starts_with() {
        let b = Backends::new(&cfg(TWO), None, None);
        assert_eq!(b.backend_of("Qubes_4.2_a"), Some(Backend::Vsphere));
        assert_eq!(b.backend_of("kvm-4.3-b"), Some(Backend::Libvirt));
        assert_eq!(
            b.backend_of("kvm-4.3-"),
            Some(Backend::Libvirt),
            "a pool prefix"
        );
        assert_eq!(
            b.backend_of("other"),
            None,
            "two backends, no pool: nobody's"
        );
    }

    #[test]
    fn the_longest_matching_prefix_decides() {
        let b = Backends::new(
            &cfg(
                "[pools.\"4.2\"]\nprefix = \"Q\"\ngolden_snapshot = \"g\"\nbackend = \"libvirt\"\n\
                  [pools.\"4.3\"]\nprefix = \"Qubes_4.3_\"\ngolden_snapshot = \"g\"\n\
                  backend = \"libvirt\"\n",
            ),
            None,
            None,
        );
        assert_eq!(b.routes[0].0, "Qubes_4.3_");
        assert_eq!(b.backend_of("Qubes_4.3_a"), Some(Backend::Libvirt));
    }

    #[tokio::test]
    async fn a_call_for_a_backend_this_process_did_not_connect_says_so_and_gives_up() {
        let b = Backends::new(&cfg(TWO), None, None);
        let e = b.vm("kvm-4.3-a").await.unwrap_err();
        assert!(
            e.to_string().contains("libvirt") && e.to_string().contains("kvm-4.3-a"),
            "{e}"
        );
        assert_eq!(e.class(), sdci_vsphere::ErrorClass::GiveUp);
        let e = b.vm("nobody").await.unwrap_err();
        assert!(matches!(e, VsphereError::VmNotFound { .. }), "{e}");
    }

    #[test]
    fn with_only_libvirt_pools_the_dom0_password_file_may_be_missing() {
        let c = cfg("[dom0]\npassword_file = \"/nonexistent/dom0-password\"\n\
             [pools.\"4.2\"]\nprefix = \"kvm-\"\ngolden_snapshot = \"g\"\nbackend = \"libvirt\"\n");
        let auth = guest_auth(&c).unwrap();
        assert_eq!(auth.user, "user");
        assert!(c
            .secret_files()
            .iter()
            .all(|(k, _, required)| !required || *k == "webhook.secret_file"));
        let mut v = c.clone();
        v.pools.get_mut("4.2").unwrap().backend = Backend::Vsphere;
        let e = guest_auth(&v).unwrap_err().to_string();
        assert!(e.contains("dom0 password"), "{e}");
    }
}
