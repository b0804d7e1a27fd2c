//! Shared set-up for the host's tests: a real `sdci-host` service (in-process, real HTTP over
//! loopback, a real SQLite file in a temporary folder), a stub `sdci-agent` script that records
//! its arguments, and `MemoryHv`.
//!
//! `MemoryHv` is an IN-MEMORY STAND-IN for the `Hypervisor` trait, used ONLY for pure scheduler
//! logic (claims, FIFO, dispatch on free) where the test must hold a guest process open and
//! release it at a chosen moment. Lifecycle, fault and restart tests run against the real vim25
//! client and VMware's govmomi simulator instead (see `sim_*.rs`).

#![allow(dead_code, clippy::unwrap_used)]

use sdci_host::config::Config;
use sdci_host::hub::Hub;
use sdci_host::server::{self, Parts};
use sdci_vsphere::{
    GuestAuth, GuestProgram, Hypervisor, PowerState, ProcessState, SnapshotInfo, VmInfo,
    VsphereError,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

pub const SECRET: &str = "webhook-secret";

/// A stub `sdci-agent`: appends its arguments to `agent.log`; `ci-config` exits 3 (no file).
pub fn write_stub_agent(dir: &Path) -> PathBuf {
    let path = dir.join("sdci-agent");
    let log = dir.join("agent.log");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$1\" in\n  ci-config) exit 3 ;;\n  \
             token) echo '{{\"token\":\"ghs_test\",\"expires_at\":\"2030-01-01T00:00:00Z\"}}' ;;\n\
             esac\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The agent invocations so far, one line each.
pub fn agent_calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("agent.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A config for a test: data in `dir`, the stub agent, fast polling, the given extra TOML.
pub fn config_text(dir: &Path, listen: &str, extra: &str) -> String {
    config_text_with(dir, listen, extra, "")
}

/// As [`config_text`], with extra lines for the `[agent]` table.
pub fn config_text_with(dir: &Path, listen: &str, extra: &str, agent_extra: &str) -> String {
    config_text_full(dir, listen, extra, agent_extra, 3600)
}

/// As [`config_text_with`], with the reconciler's interval.
pub fn config_text_full(
    dir: &Path,
    listen: &str,
    extra: &str,
    agent_extra: &str,
    reconcile_secs: u64,
) -> String {
    config_text_webhook(dir, listen, extra, agent_extra, reconcile_secs, "")
}

/// The repository the test configs accept (`webhook.repos`).
pub const REPO: &str = "freedomofpress/securedrop-workstation";

/// As [`config_text_full`], with extra lines for the `[webhook]` table.
pub fn config_text_webhook(
    dir: &Path,
    listen: &str,
    extra: &str,
    agent_extra: &str,
    reconcile_secs: u64,
    webhook_extra: &str,
) -> String {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(dir.join("dom0-password"), "pw\n").unwrap();
    let agent = write_stub_agent(dir);
    format!(
        "listen = \"{listen}\"\npublic_url = \"http://{listen}\"\ndata_dir = \"{data}\"\n\
         reconcile_interval_secs = {reconcile_secs}\n{extra}\n\
         [webhook]\nsecret_file = \"{dir}/secret\"\nrepos = [\"{REPO}\"]\n{webhook_extra}\n\
         [agent]\npath = \"{agent}\"\n{agent_extra}\
         [dom0]\npassword_file = \"{dir}/dom0-password\"\n",
        data = dir.join("data").display(),
        dir = dir.display(),
        agent = agent.display(),
    )
}

pub struct TestHost {
    pub hub: Arc<Hub>,
    pub url: String,
    pub dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the service in-process on a free loopback port.
pub async fn start<H: Hypervisor>(dir: &Path, extra: &str, hv: Arc<H>, parts: Parts) -> TestHost {
    start_reconciling(dir, extra, hv, parts, 3600).await
}

/// As [`start`], with the reconciler's interval.
pub async fn start_reconciling<H: Hypervisor>(
    dir: &Path,
    extra: &str,
    hv: Arc<H>,
    parts: Parts,
    reconcile_secs: u64,
) -> TestHost {
    start_configured(dir, extra, "", hv, parts, reconcile_secs).await
}

/// As [`start`], with extra lines for the `[webhook]` table.
pub async fn start_webhook<H: Hypervisor>(
    dir: &Path,
    extra: &str,
    webhook_extra: &str,
    hv: Arc<H>,
    parts: Parts,
) -> TestHost {
    start_configured(dir, extra, webhook_extra, hv, parts, 3600).await
}

async fn start_configured<H: Hypervisor>(
    dir: &Path,
    extra: &str,
    webhook_extra: &str,
    hv: Arc<H>,
    parts: Parts,
    reconcile_secs: u64,
) -> TestHost {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let text = config_text_webhook(dir, &addr, extra, "", reconcile_secs, webhook_extra);
    let cfg = Config::parse(&text, Path::new("test.toml")).unwrap();
    let auth = server::guest_auth(&cfg).unwrap();
    let hub = server::hub_from_config(cfg).unwrap();
    let h2 = hub.clone();
    let task = tokio::spawn(async move {
        server::run(h2, hv, auth, listener, parts).await.unwrap();
    });
    TestHost {
        hub,
        url: format!("http://{addr}"),
        dir: dir.to_owned(),
        task,
    }
}

/// GitHub's whole `push` payload, checked against @octokit/openapi-webhooks, without a head
/// commit (`null`, as the schema allows; a test that wants one sets it).
pub fn push_body(branch: &str, sha: &str) -> String {
    let zero = "0000000000000000000000000000000000000000";
    let mut payload = sdci_tests::github::webhooks::push(REPO, branch, zero, sha);
    payload["head_commit"] = serde_json::Value::Null;
    payload["commits"] = serde_json::json!([]);
    sdci_tests::github::webhooks::validate("push", None, &payload).unwrap();
    payload.to_string()
}

/// Sends a signed (or not) delivery; returns (status, body).
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    delivery: &str,
    body: &str,
    secret: Option<&str>,
) -> (u16, String) {
    let mut req = client
        .post(format!("{url}/hooks/github"))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    if let Some(s) = secret {
        req = req.header(
            "X-Hub-Signature-256",
            sdci_host::surface::webhook::sign(s.as_bytes(), body.as_bytes()),
        );
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Delivers a `push` of commit `sha(n)` to `branch`, signed with `SECRET`.
pub async fn deliver_push(
    client: &reqwest::Client,
    url: &str,
    delivery: &str,
    branch: &str,
    n: u32,
) -> (u16, String) {
    deliver(
        client,
        url,
        "push",
        delivery,
        &push_body(branch, &sha(n)),
        Some(SECRET),
    )
    .await
}

/// The job of commit `sha(n)`, among the last 100.
pub fn job_of_commit(host: &TestHost, n: u32) -> sdci_host::store::JobRow {
    host.hub
        .store
        .recent_jobs(100)
        .unwrap()
        .into_iter()
        .find(|j| j.sha == sha(n))
        .unwrap()
}

/// Delivers a `push` of `sha(n)` to `branch` (delivery id `d{n}`), expects it queued, and
/// returns the job's id.
pub async fn push_job(host: &TestHost, n: u32, branch: &str) -> String {
    let c = reqwest::Client::new();
    let (code, text) = deliver_push(&c, &host.url, &format!("d{n}"), branch, n).await;
    assert_eq!(code, 202, "{text}");
    job_of_commit(host, n).id.to_string()
}

/// Waits (failing with `what`) until job `id` has ended, and returns it.
pub async fn job_ended(host: &TestHost, what: &str, id: &str) -> sdci_host::store::JobRow {
    eventually(what, || {
        host.hub.store.job(id).unwrap().unwrap().state.is_terminal()
    })
    .await;
    host.hub.store.job(id).unwrap().unwrap()
}

pub fn sha(n: u32) -> String {
    format!("{n:040x}")
}

/// Waits (event-driven where possible, bounded) until `f` holds. A safety net, not a timer:
/// it re-checks on every wake of `notify` and at most every 20 ms.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// MemoryHv: in-memory stand-in, for scheduler-logic tests only (see the module doc).

#[derive(Debug, Clone)]
pub struct MemVm {
    pub power: PowerState,
    pub pids: Vec<i64>,
}

#[derive(Default)]
pub struct MemoryHv {
    pub vms: Mutex<HashMap<String, MemVm>>,
    /// pid → (job id from the launch arguments, exit code once released)
    procs: Mutex<HashMap<i64, (String, Option<i32>)>>,
    /// Guest directories made (`make_directory`), per VM. Like real ESXi, an upload needs its
    /// parent directory to exist.
    pub dirs: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    next_pid: Mutex<i64>,
    pub changed: Notify,
    /// (VM, snapshot) taken with memory: a revert to one comes back powered on (issue 18).
    pub memory_snapshots: Mutex<std::collections::HashSet<(String, String)>>,
    /// Whether it can make linked clones (`can_clone`; off unless a test turns it on).
    pub clones: std::sync::atomic::AtomicBool,
    /// Every VM `destroy_vm` removed, in order.
    pub destroyed: Mutex<Vec<String>>,
    /// job id → the VM its `sdci-dom0` program was started on.
    pub started_on: Mutex<HashMap<String, String>>,
    /// The most VMs (clones included) that were ever powered on at once.
    pub max_on: Mutex<usize>,
}

impl MemoryHv {
    pub fn with_vms(names: &[&str]) -> Arc<Self> {
        let hv = Self::default();
        for n in names {
            hv.vms.lock().unwrap().insert(
                (*n).to_owned(),
                MemVm {
                    power: PowerState::Off,
                    pids: vec![],
                },
            );
        }
        *hv.next_pid.lock().unwrap() = 100;
        Arc::new(hv)
    }

    /// Lets the launch process of `job` exit with `code`.
    pub fn release(&self, job: &str, code: i32) {
        for (_, (j, c)) in self.procs.lock().unwrap().iter_mut() {
            if j == job {
                *c = Some(code);
            }
        }
    }

    /// Job ids whose launch process was started, in start order.
    pub fn started(&self) -> Vec<String> {
        let procs = self.procs.lock().unwrap();
        let mut v: Vec<(i64, String)> = procs.iter().map(|(p, (j, _))| (*p, j.clone())).collect();
        v.sort();
        v.into_iter().map(|(_, j)| j).collect()
    }

    pub fn power(&self, vm: &str) -> PowerState {
        self.vms.lock().unwrap()[vm].power
    }

    /// Whether VM `vm` exists (a clone until it is destroyed).
    pub fn exists(&self, vm: &str) -> bool {
        self.vms.lock().unwrap().contains_key(vm)
    }

    /// The VM job `job`'s `sdci-dom0` program was started on.
    pub fn started_on(&self, job: &str) -> Option<String> {
        self.started_on.lock().unwrap().get(job).cloned()
    }

    fn info(name: &str, vm: &MemVm) -> VmInfo {
        VmInfo {
            name: name.to_owned(),
            id: format!("vm-{name}"),
            uuid: name.to_owned(),
            power: vm.power,
            agent_running: vm.power == PowerState::On,
            guest_ready: vm.power == PowerState::On,
        }
    }

    fn set_power(&self, vm: &str, p: PowerState) -> sdci_vsphere::hypervisor::Result<()> {
        let mut vms = self.vms.lock().unwrap();
        let v = vms
            .get_mut(vm)
            .ok_or(VsphereError::VmNotFound { name: vm.into() })?;
        v.power = p;
        let on = vms.values().filter(|v| v.power == PowerState::On).count();
        let mut max = self.max_on.lock().unwrap();
        *max = (*max).max(on);
        Ok(())
    }
}

type R<T> = sdci_vsphere::hypervisor::Result<T>;

impl Hypervisor for MemoryHv {
    async fn list_vms(&self, prefix: &str) -> R<Vec<VmInfo>> {
        let vms = self.vms.lock().unwrap();
        let mut v: Vec<VmInfo> = vms
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, vm)| Self::info(n, vm))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }
    async fn vm(&self, name: &str) -> R<VmInfo> {
        let vms = self.vms.lock().unwrap();
        vms.get(name)
            .map(|vm| Self::info(name, vm))
            .ok_or(VsphereError::VmNotFound { name: name.into() })
    }
    async fn snapshots(&self, vm: &str) -> R<Vec<SnapshotInfo>> {
        // The memory snapshots taken (issue 18); the golden ones are not tracked.
        let mut names: Vec<String> = self
            .memory_snapshots
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _)| v == vm)
            .map(|(_, n)| n.clone())
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| SnapshotInfo {
                id: name.clone(),
                name,
                created: None,
                parent: None,
                is_current: false,
            })
            .collect())
    }
    async fn revert(&self, vm: &str, snapshot: &str) -> R<()> {
        let memory = self
            .memory_snapshots
            .lock()
            .unwrap()
            .contains(&(vm.to_owned(), snapshot.to_owned()));
        self.set_power(
            vm,
            if memory {
                PowerState::On
            } else {
                PowerState::Off
            },
        )
    }
    async fn create_memory_snapshot(&self, vm: &str, n: &str, _d: &str) -> R<()> {
        self.memory_snapshots
            .lock()
            .unwrap()
            .insert((vm.to_owned(), n.to_owned()));
        Ok(())
    }
    async fn create_snapshot(&self, _vm: &str, _n: &str, _d: &str) -> R<()> {
        Ok(())
    }
    async fn remove_snapshot(&self, vm: &str, n: &str) -> R<()> {
        self.memory_snapshots
            .lock()
            .unwrap()
            .remove(&(vm.to_owned(), n.to_owned()));
        Ok(())
    }
    async fn power_on(&self, vm: &str) -> R<()> {
        self.set_power(vm, PowerState::On)
    }
    async fn wait_guest_ready(&self, _vm: &str, _t: Duration) -> R<()> {
        Ok(())
    }
    async fn shutdown(&self, vm: &str, _g: Duration) -> R<()> {
        self.set_power(vm, PowerState::Off)
    }
    async fn power_off(&self, vm: &str) -> R<()> {
        self.set_power(vm, PowerState::Off)
    }
    async fn start_program(&self, vm: &str, _a: &GuestAuth, p: &GuestProgram) -> R<i64> {
        let job = p.arguments.split('/').nth(2).unwrap_or_default().to_owned();
        self.started_on
            .lock()
            .unwrap()
            .insert(job.clone(), vm.to_owned());
        let mut next = self.next_pid.lock().unwrap();
        *next += 1;
        self.procs.lock().unwrap().insert(*next, (job, None));
        self.changed.notify_waiters();
        Ok(*next)
    }
    async fn process_state(&self, _vm: &str, _a: &GuestAuth, pid: i64) -> R<ProcessState> {
        Ok(match self.procs.lock().unwrap().get(&pid) {
            Some((_, None)) => ProcessState::Running,
            Some((_, Some(c))) => ProcessState::Exited(*c),
            None => ProcessState::Lost,
        })
    }
    async fn terminate(&self, _vm: &str, _a: &GuestAuth, pid: i64) -> R<()> {
        if let Some(p) = self.procs.lock().unwrap().get_mut(&pid) {
            p.1 = Some(143);
        }
        Ok(())
    }
    async fn make_directory(&self, vm: &str, _a: &GuestAuth, p: &str, parents: bool) -> R<()> {
        let mut dirs = self.dirs.lock().unwrap();
        let made = dirs.entry(vm.to_owned()).or_default();
        let parent = p.rsplit_once('/').map_or("", |(d, _)| d);
        if !parents && !parent.is_empty() && !made.contains(parent) {
            return Err(VsphereError::Fault {
                method: "MakeDirectoryInGuest".into(),
                kind: "FileNotFound".into(),
                message: parent.to_owned(),
            });
        }
        let mut d = p.to_owned();
        while !d.is_empty() {
            made.insert(d.clone());
            d = d.rsplit_once('/').map_or("", |(x, _)| x).to_owned();
        }
        Ok(())
    }
    async fn upload(&self, vm: &str, _a: &GuestAuth, p: &str, _d: Vec<u8>) -> R<()> {
        let parent = p.rsplit_once('/').map_or("", |(d, _)| d);
        let dirs = self.dirs.lock().unwrap();
        if !dirs.get(vm).is_some_and(|m| m.contains(parent)) {
            // What ESXi answers InitiateFileTransferToGuest for a missing parent directory.
            return Err(VsphereError::Fault {
                method: "InitiateFileTransferToGuest".into(),
                kind: "FileNotFound".into(),
                message: parent.to_owned(),
            });
        }
        Ok(())
    }
    async fn download(&self, _vm: &str, _a: &GuestAuth, p: &str) -> R<Vec<u8>> {
        Ok(format!("dom0 log from {p}\n").into_bytes())
    }
    fn can_clone(&self, _vm: &str) -> bool {
        self.clones.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// A clone of a memory snapshot, powered off; `power_on` resumes it. Refused like the
    /// default when clones are off.
    async fn clone_from_snapshot(&self, source: &str, snapshot: &str, clone: &str) -> R<()> {
        if !self.can_clone(clone) {
            return Err(VsphereError::Fault {
                method: "clone_from_snapshot".into(),
                kind: "NotSupported".into(),
                message: clone.into(),
            });
        }
        let memory = (source.to_owned(), snapshot.to_owned());
        if !self.memory_snapshots.lock().unwrap().contains(&memory) {
            return Err(VsphereError::SnapshotNotFound {
                vm: source.into(),
                snapshot: snapshot.into(),
            });
        }
        let mut vms = self.vms.lock().unwrap();
        if vms.contains_key(clone) {
            return Err(VsphereError::Fault {
                method: "CloneVM_Task".into(),
                kind: "DuplicateName".into(),
                message: clone.into(),
            });
        }
        vms.insert(
            clone.to_owned(),
            MemVm {
                power: PowerState::Off,
                pids: vec![],
            },
        );
        Ok(())
    }
    async fn destroy_vm(&self, vm: &str) -> R<()> {
        if self.vms.lock().unwrap().remove(vm).is_some() {
            self.destroyed.lock().unwrap().push(vm.to_owned());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The govmomi simulator through the real vim25 client.

pub mod sim {
    use super::*;
    use sdci_tests::vsphere_sim::{SimOptions, SimVm, VsphereSim};

    /// A stand-in for `sdci-dom0 launch JOBFILE` (until the end-to-end issue wires the real
    /// binary): records the launch in `CTL/launched`, writes dom0's `log.txt` beside the job
    /// file (and `CTL/log-bytes` more bytes `x` when that file exists), waits while `CTL/hang`
    /// exists, then exits with the code in `CTL/exit` (default 0).
    /// `CTL` is a host folder outside the guest, so snapshot reverts do not undo the controls.
    pub fn stub_dom0(ctl: &Path) -> String {
        let c = ctl.display();
        format!(
            "#!/bin/sh\njob=\"$2\"\ndir=$(dirname \"$job\")\necho \"$job\" >> '{c}/launched'\n\
             echo \"dom0 log for $job\" > \"$dir/log.txt\"\n\
             [ -f '{c}/log-bytes' ] && head -c \"$(cat '{c}/log-bytes')\" /dev/zero | tr '\\0' x >> \"$dir/log.txt\"\n\
             while [ -f '{c}/hang' ]; do sleep 0.05; done\n\
             code=0\n[ -f '{c}/exit' ] && code=$(cat '{c}/exit')\nexit \"$code\"\n"
        )
    }

    pub fn vm(name: &str, ctl: &Path) -> SimVm {
        SimVm::new(name)
            .snapshots(&["golden"])
            .tools_delay(Some(Duration::from_millis(100)))
            .shutdown_delay(Duration::from_millis(100))
            .file("/usr/local/bin/sdci-dom0", stub_dom0(ctl), 0o755)
    }

    pub fn start_sim(names: &[&str], ctl: &Path) -> VsphereSim {
        std::fs::create_dir_all(ctl).unwrap();
        VsphereSim::start(SimOptions::vcenter().vms(names.iter().map(|n| vm(n, ctl)).collect()))
            .unwrap()
    }

    /// The host config lines that point at the simulator (pool 4.2 = `Qubes_4.2_*`).
    pub fn sim_toml(sim: &VsphereSim, dir: &Path, extra: &str) -> String {
        std::fs::write(dir.join("vsphere-password"), sim.password()).unwrap();
        format!(
            "{extra}\n[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
             [vsphere]\nurl = \"{}\"\nuser = \"{}\"\npassword_file = \"{}\"\n\
             [vsphere.tls]\nmode = \"system-roots\"\n",
            sim.url(),
            sim.username(),
            dir.join("vsphere-password").display()
        )
    }

    /// Starts the service in-process with the real vim25 client on the simulator.
    pub async fn start_host(dir: &Path, sim: &VsphereSim, extra: &str) -> TestHost {
        start_host_with(dir, sim, extra, "").await
    }

    /// As [`start_host`], with extra `[agent]` lines.
    pub async fn start_host_with(
        dir: &Path,
        sim: &VsphereSim,
        extra: &str,
        agent_extra: &str,
    ) -> TestHost {
        start_host_as(dir, sim, extra, agent_extra, sim.guest_password()).await
    }

    /// As [`start_host_with`], with `guest_password` in `[dom0] password_file` (a wrong one
    /// for the tests of configuration faults).
    pub async fn start_host_as(
        dir: &Path,
        sim: &VsphereSim,
        extra: &str,
        agent_extra: &str,
        guest_password: &str,
    ) -> TestHost {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let text = config_text_with(dir, &addr, &sim_toml(sim, dir, extra), agent_extra);
        std::fs::write(dir.join("dom0-password"), guest_password).unwrap();
        let cfg = Config::parse(&text, Path::new("test.toml")).unwrap();
        let vcfg = cfg.vsphere.client_config().unwrap();
        let hv = Arc::new(sdci_vsphere::VsphereClient::connect(vcfg).await.unwrap());
        let auth = server::guest_auth(&cfg).unwrap();
        let hub = server::hub_from_config(cfg).unwrap();
        let h2 = hub.clone();
        let task = tokio::spawn(async move {
            server::run(h2, hv, auth, listener, Parts::ALL)
                .await
                .unwrap();
        });
        TestHost {
            hub,
            url: format!("http://{addr}"),
            dir: dir.to_owned(),
            task,
        }
    }

    pub fn powered_off(sim: &VsphereSim, vm: &str) -> bool {
        sim.vm(vm)
            .map(|v| v.power_state == "poweredOff")
            .unwrap_or(false)
    }
}

/// Inserts a manual job of `repo` and claims `vm-a` for it with the event secret `bearer`, as
/// the scheduler would: the job is `assigned` and its event stream accepts that bearer.
pub fn claim_manual_job(host: &TestHost, repo: &str, bearer: &str) -> String {
    let s = &host.hub.store;
    let id = s
        .insert_job(&sdci_host::store::NewJob {
            repo: repo.parse().unwrap(),
            sha: sha(7).parse().unwrap(),
            reason: sdci_protocol::Reason::Manual,
            branch: None,
            supersede_key: None,
            clone_url: "x".into(),
            version: Some("4.2".into()),
            snapshot: None,
            update_first: false,
            commit_author: None,
            commit_subject: None,
        })
        .unwrap();
    s.register_vms("4.2", &["vm-a".into()]).unwrap();
    s.claim("4.2", &["vm-a".into()], 1, bearer, i64::MAX)
        .unwrap()
        .unwrap();
    id.to_string()
}

/// The events the agent would relay for the steps up to and including `make-dev`, all passing,
/// posted to the host's ingest at `url` with the job's own secret.
pub async fn relay_provision(url: &str, file: &sdci_protocol::JobFile) {
    let mut buf = Vec::new();
    let mut w = sdci_protocol::EventWriter::new(&mut buf);
    for (i, s) in file.spec.steps.iter().enumerate() {
        let step = i as u32;
        w.emit(sdci_protocol::EventKind::StepStarted {
            step,
            name: s.name.clone(),
            argv: s.argv.clone(),
        })
        .unwrap();
        w.emit(sdci_protocol::EventKind::StepFinished {
            step,
            status: 0,
            timed_out: false,
            duration_ms: 10,
        })
        .unwrap();
        if s.name == "make-dev" {
            break;
        }
    }
    let r = reqwest::Client::new()
        .post(format!("{url}/api/v1/jobs/{}/events", file.spec.id))
        .bearer_auth(file.agent.event_secret.expose())
        .header("content-type", "application/x-ndjson")
        .body(buf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
