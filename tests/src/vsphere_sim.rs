//! The vSphere test peer: VMware's govmomi simulator (Debian's 0.24.2 library) extended with
//! guest operations, VMware Tools boot timing, real snapshots of a per-VM guest directory and
//! fault injection. The Go program lives in `tests/vsphere-sim/`; its README documents the API
//! below, the guest path mapping (contracts §2) and what does and does not behave like ESXi.
//!
//! This module owns building that program (once per source hash, cached under
//! `target/vsphere-sim/`, serialised across racing test processes by a lock file), starting it
//! on a free loopback port with a fresh state directory, steering it over its control API, and
//! stopping it (and every guest process group it started) on drop.
//!
//! Invariants: a [`VsphereSim`] owns its process and its state directory; nothing outlives it.
//! Guest roots are prepared before the simulator starts, so the configured snapshots (taken at
//! start-up) already contain the files given with [`SimVm::link`] / [`SimVm::file`].

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use serde_json::json;

/// Which vSphere product the simulator answers as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// A standalone ESXi host (`about.apiType = HostAgent`), one datacenter (`ha-datacenter`).
    Esx,
    /// vCenter (`VirtualCenter`): datacenters `DC0`, `DC1`, … (at least two; as many as the VMs
    /// name); the last one sits in folder `F0` (`/F0/DC1` with two), and VMs of datacenters ≥ 1
    /// live in a nested VM folder `Qubes` (`/F0/DC1/vm/F0/Qubes/<vm>`); `DC0`'s in `/DC0/vm/`.
    Vcenter,
}

/// Where a file placed into a guest root before start-up comes from.
#[derive(Debug, Clone)]
pub enum GuestSource {
    /// `R/<guest path>` becomes a symlink to this host path (snapshots copy the symlink).
    Symlink(PathBuf),
    /// `R/<guest path>` gets these bytes with this mode (e.g. `0o755`).
    Bytes(Vec<u8>, u32),
}

/// One simulated VM.
#[derive(Debug, Clone)]
pub struct SimVm {
    pub name: String,
    /// Index of the datacenter (vCenter: `DC<n>`; ESX: must be 0).
    pub datacenter: usize,
    /// Snapshot chain taken at start-up, oldest first (each a child of the previous one).
    pub snapshots: Vec<String>,
    /// Tools start this long after power-on; `None` = Tools never start.
    pub tools_delay: Option<Duration>,
    /// `ShutdownGuest` powers the VM off this long after it answered.
    pub shutdown_delay: Duration,
    /// Files put into the guest root before start-up (so every snapshot has them).
    pub files: Vec<(String, GuestSource)>,
}

impl SimVm {
    /// A VM in datacenter 0 with snapshots `clean` → `update_20260101000000`, Tools after
    /// 200 ms, shutdown after 200 ms, and `/bin/sh` linked to the host's `/bin/sh`.
    pub fn new(name: &str) -> Self {
        SimVm {
            name: name.to_string(),
            datacenter: 0,
            snapshots: vec!["clean".into(), "update_20260101000000".into()],
            tools_delay: Some(Duration::from_millis(200)),
            shutdown_delay: Duration::from_millis(200),
            files: vec![(
                "/bin/sh".into(),
                GuestSource::Symlink(PathBuf::from("/bin/sh")),
            )],
        }
    }
    pub fn datacenter(mut self, index: usize) -> Self {
        self.datacenter = index;
        self
    }
    pub fn snapshots(mut self, chain: &[&str]) -> Self {
        self.snapshots = chain.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn tools_delay(mut self, delay: Option<Duration>) -> Self {
        self.tools_delay = delay;
        self
    }
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.shutdown_delay = delay;
        self
    }
    /// Makes `R/<guest_path>` a symlink to `host_path` (e.g. a workspace binary).
    pub fn link(mut self, guest_path: &str, host_path: impl Into<PathBuf>) -> Self {
        self.files.push((
            guest_path.to_string(),
            GuestSource::Symlink(host_path.into()),
        ));
        self
    }
    /// Writes `R/<guest_path>` with the given bytes and mode.
    pub fn file(mut self, guest_path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((
            guest_path.to_string(),
            GuestSource::Bytes(contents.into(), mode),
        ));
        self
    }
}

/// How to start the simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub model: Model,
    /// https with a generated CA + server certificate (see [`VsphereSim::ca_cert_path`]).
    pub tls: bool,
    pub vms: Vec<SimVm>,
    /// vSphere login (`Login`); any other pair gets `InvalidLogin`.
    pub username: String,
    pub password: String,
    /// Guest credentials (`NamePasswordAuthentication`); others get `InvalidGuestLogin`.
    pub guest_username: String,
    pub guest_password: String,
    /// guestFile URLs as `https://*:PORT/guestFile?…` (true) or bare `https://*/guestFile?…`.
    pub guest_url_port: bool,
    /// Log every SOAP request and response to the simulator's log (see [`VsphereSim::log`]).
    pub trace: bool,
    /// The SDK port on 127.0.0.1; `None` picks a free one. (A test that starts a client before
    /// the simulator, to see it come up later, names the port up front.)
    pub port: Option<u16>,
}

impl Default for SimOptions {
    /// vCenter over http with `Qubes_4.2_a` in `DC0` and `Qubes_4.3_a` in `DC1`.
    fn default() -> Self {
        SimOptions {
            model: Model::Vcenter,
            tls: false,
            vms: vec![
                SimVm::new("Qubes_4.2_a"),
                SimVm::new("Qubes_4.3_a").datacenter(1),
            ],
            username: "sdci@vsphere.local".into(),
            password: "sim-password".into(),
            guest_username: "user".into(),
            guest_password: "guest-password".into(),
            guest_url_port: true,
            trace: false,
            port: None,
        }
    }
}

impl SimOptions {
    /// The default vCenter inventory (two datacenters).
    pub fn vcenter() -> Self {
        Self::default()
    }
    /// A standalone ESXi host with `Qubes_4.2_a` and `Qubes_4.3_a`.
    pub fn esx() -> Self {
        SimOptions {
            model: Model::Esx,
            vms: vec![SimVm::new("Qubes_4.2_a"), SimVm::new("Qubes_4.3_a")],
            ..Self::default()
        }
    }
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    /// Replaces the VM list.
    pub fn vms(mut self, vms: Vec<SimVm>) -> Self {
        self.vms = vms;
        self
    }
    /// Adds one VM.
    pub fn vm(mut self, vm: SimVm) -> Self {
        self.vms.push(vm);
        self
    }
    pub fn guest_url_port(mut self, with_port: bool) -> Self {
        self.guest_url_port = with_port;
        self
    }
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }
    /// Listens on this SDK port of 127.0.0.1 instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
}

/// A fault or delay to inject (see the README's "Faults" table). `count` is how many matching
/// calls it affects; 0 means every matching call until [`VsphereSim::clear_faults`].
/// `method` is the SOAP method (`PowerOnVM_Task`, `StartProgramInGuest`, …), `"*"` for any
/// SOAP call, or `"guestFile"` for the guestFile PUT/GET (HttpStatus, DropConnection, Delay).
#[derive(Debug, Clone)]
pub enum Fault {
    /// The call answers with a SOAP fault of this vim25 type (e.g. `ToolsUnavailable`).
    SoapFault {
        method: String,
        kind: String,
        message: String,
        count: u32,
    },
    /// The call answers with this HTTP status (e.g. 503) and a plain-text body.
    HttpStatus {
        method: String,
        status: u16,
        count: u32,
    },
    /// The connection is closed without an answer.
    DropConnection { method: String, count: u32 },
    /// The call is answered `ms` late (the call itself runs after the delay).
    Delay { method: String, ms: u64, count: u32 },
    /// A `*_Task` call returns a Task that ends in `error` with this fault; the real method
    /// does not run.
    TaskError {
        method: String,
        kind: String,
        count: u32,
    },
    /// A `*_Task` call returns a Task that stays `running` for `ms`, then the real method runs
    /// and the Task ends as it did (success or its fault).
    TaskRunning { method: String, ms: u64, count: u32 },
    /// `ShutdownGuest` on this VM is acknowledged but the guest never powers off.
    ShutdownNever { vm: String, count: u32 },
    /// Tools never start on this VM from its next power-on (a setting, not counted).
    ToolsNever { vm: String },
}

/// A VM as the control API reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct VmStatus {
    pub name: String,
    pub moref: String,
    pub power_state: String,
    pub tools_running: bool,
    pub root: PathBuf,
    pub processes: Vec<ProcessStatus>,
}

/// A guest process as the control API reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct ProcessStatus {
    pub pid: i64,
    pub name: String,
    pub running: bool,
    pub exit_code: Option<i32>,
}

#[derive(Deserialize)]
struct Ready {
    url: String,
    control_url: String,
    ca_cert: Option<PathBuf>,
    thumbprint_sha256: Option<String>,
}

/// A running simulator. Dropping it stops the process and its guest process groups and
/// removes its state directory.
pub struct VsphereSim {
    child: Child,
    url: String,
    control_url: String,
    control_addr: String,
    ca_cert: Option<PathBuf>,
    thumbprint: Option<String>,
    opts: SimOptions,
    // Declared last: removed after the process is gone.
    state: tempfile::TempDir,
}

impl VsphereSim {
    /// Builds the simulator if needed, prepares the guest roots, starts it on a free loopback
    /// port and returns once it answers.
    pub fn start(opts: SimOptions) -> anyhow::Result<Self> {
        let bin = build()?;
        let state = tempfile::Builder::new()
            .prefix("vsphere-sim-")
            .tempdir()
            .context("create the simulator's state directory")?;
        let root = state.path().to_path_buf();
        for vm in &opts.vms {
            let r = root.join("vms").join(&vm.name);
            std::fs::create_dir_all(&r)?;
            for (guest, source) in &vm.files {
                place(&r, guest, source)
                    .with_context(|| format!("put {guest} into the root of {}", vm.name))?;
            }
        }
        let config = json!({
            "model": match opts.model { Model::Esx => "esx", Model::Vcenter => "vcenter" },
            "listen": format!("127.0.0.1:{}", opts.port.unwrap_or(0)),
            "control_listen": "127.0.0.1:0",
            "tls": opts.tls,
            "state_dir": root,
            "username": opts.username,
            "password": opts.password,
            "guest_username": opts.guest_username,
            "guest_password": opts.guest_password,
            "guest_url_port": opts.guest_url_port,
            "trace": opts.trace,
            "vms": opts.vms.iter().map(|vm| json!({
                "name": vm.name,
                "datacenter": vm.datacenter,
                "snapshots": vm.snapshots,
                "tools_delay_ms": vm.tools_delay.map(|d| d.as_millis() as u64),
                "shutdown_delay_ms": vm.shutdown_delay.as_millis() as u64,
            })).collect::<Vec<_>>(),
        });
        let config_path = root.join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log = std::fs::File::create(root.join("sim.log"))?;
        let mut child = Command::new(&bin)
            .arg("-config")
            .arg(&config_path)
            .env("TMPDIR", &root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let res = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(res);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(root.join("sim.log")).unwrap_or_default();
                bail!("vsphere-sim did not start ({other:?}); its log:\n{log}");
            }
        };
        let ready: Ready = serde_json::from_str(line.trim())
            .with_context(|| format!("vsphere-sim ready line {line:?}"))?;
        let control_addr = ready
            .control_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(VsphereSim {
            child,
            url: ready.url,
            control_url: ready.control_url,
            control_addr,
            ca_cert: ready.ca_cert,
            thumbprint: ready.thumbprint_sha256,
            opts,
            state,
        })
    }

    /// The SDK endpoint, e.g. `https://127.0.0.1:PORT/sdk`.
    pub fn url(&self) -> String {
        self.url.clone()
    }
    /// `host:port` of the SDK endpoint (what a client puts in place of guestFile's `*`).
    pub fn host_port(&self) -> String {
        self.url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_string()
    }
    pub fn username(&self) -> &str {
        &self.opts.username
    }
    pub fn password(&self) -> &str {
        &self.opts.password
    }
    pub fn guest_username(&self) -> &str {
        &self.opts.guest_username
    }
    pub fn guest_password(&self) -> &str {
        &self.opts.guest_password
    }
    /// PEM of the CA that signed the server certificate (https only).
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }
    /// SHA-256 of the server certificate's DER, lowercase hex without separators (https only).
    pub fn thumbprint_sha256(&self) -> Option<String> {
        self.thumbprint.clone()
    }
    /// The control API base, e.g. `http://127.0.0.1:PORT/_sim` (plain http even when the SDK
    /// endpoint is https; the SDK port serves `/_sim/` too).
    pub fn control_url(&self) -> String {
        self.control_url.clone()
    }
    /// The guest root R of a VM: guest path `/x/y` is `R/x/y` (contracts §2). Also of a VM
    /// created at run time: a clone's R (`CloneVM_Task`, contracts §12) is here too, from the
    /// clone task's end until its `Destroy_Task` removes it.
    pub fn guest_root(&self, vm: &str) -> PathBuf {
        self.state.path().join("vms").join(vm)
    }
    /// Host pids of every process "in" a VM's guest: those whose environment holds
    /// `SDCI_GUEST_ROOT=R` (every guest program gets it and passes it on, contracts §2), in
    /// whatever process group or session. After a power-off there are none.
    pub fn guest_pids(&self, vm: &str) -> Vec<u32> {
        let want = format!("SDCI_GUEST_ROOT={}", self.guest_root(vm).display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids = Vec::new();
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }
    /// Host path of a guest path in a VM (`R/<guest_path>`).
    pub fn guest_path(&self, vm: &str, guest_path: &str) -> PathBuf {
        self.guest_root(vm).join(guest_path.trim_start_matches('/'))
    }
    /// Makes `R/<guest_path>` a symlink to `host_path` now (snapshots taken later capture it;
    /// reverting to an older snapshot removes it again).
    pub fn link_into_guest(
        &self,
        vm: &str,
        guest_path: &str,
        host_path: impl Into<PathBuf>,
    ) -> anyhow::Result<PathBuf> {
        place(
            &self.guest_root(vm),
            guest_path,
            &GuestSource::Symlink(host_path.into()),
        )
    }
    /// Writes `R/<guest_path>` now with the given bytes and mode.
    pub fn write_guest_file(
        &self,
        vm: &str,
        guest_path: &str,
        contents: &[u8],
        mode: u32,
    ) -> anyhow::Result<PathBuf> {
        place(
            &self.guest_root(vm),
            guest_path,
            &GuestSource::Bytes(contents.to_vec(), mode),
        )
    }
    /// stdout and stderr of a guest process so far (None for an unknown pid).
    pub fn guest_process_output(&self, vm: &str, pid: i64) -> Option<String> {
        std::fs::read_to_string(
            self.state
                .path()
                .join("logs")
                .join(vm)
                .join(format!("{pid}.log")),
        )
        .ok()
    }
    /// The simulator's log so far (stderr; SOAP traffic when `trace` is on).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("sim.log")).unwrap_or_default()
    }

    /// Injects a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) -> anyhow::Result<()> {
        let rule = match fault {
            Fault::SoapFault {
                method,
                kind,
                message,
                count,
            } => {
                json!({"method": method, "action": "soapfault", "fault": kind, "message": message, "count": count})
            }
            Fault::HttpStatus {
                method,
                status,
                count,
            } => json!({"method": method, "action": "http", "status": status, "count": count}),
            Fault::DropConnection { method, count } => {
                json!({"method": method, "action": "drop", "count": count})
            }
            Fault::Delay { method, ms, count } => {
                json!({"method": method, "action": "delay", "ms": ms, "count": count})
            }
            Fault::TaskError {
                method,
                kind,
                count,
            } => json!({"method": method, "action": "taskerror", "fault": kind, "count": count}),
            Fault::TaskRunning { method, ms, count } => {
                json!({"method": method, "action": "taskrunning", "ms": ms, "count": count})
            }
            Fault::ShutdownNever { vm, count } => {
                json!({"method": "ShutdownGuest", "action": "shutdownnever", "vm": vm, "count": count})
            }
            Fault::ToolsNever { vm } => return self.set_tools_delay(&vm, None),
        };
        self.control_ok("POST", "/faults", Some(&rule.to_string()))
            .map(|_| ())
    }
    /// Removes every injected rule.
    pub fn clear_faults(&self) -> anyhow::Result<()> {
        self.control_ok("DELETE", "/faults", None).map(|_| ())
    }
    /// Sets when Tools start after the VM's next power-on (`None` = never).
    pub fn set_tools_delay(&self, vm: &str, delay: Option<Duration>) -> anyhow::Result<()> {
        let body = json!({"tools_delay_ms": delay.map(|d| d.as_millis() as u64)});
        self.control_ok("POST", &format!("/vms/{vm}"), Some(&body.to_string()))
            .map(|_| ())
    }
    /// Sets how long after `ShutdownGuest` the VM powers off.
    pub fn set_shutdown_delay(&self, vm: &str, delay: Duration) -> anyhow::Result<()> {
        let body = json!({"shutdown_delay_ms": delay.as_millis() as u64});
        self.control_ok("POST", &format!("/vms/{vm}"), Some(&body.to_string()))
            .map(|_| ())
    }
    /// Every VM's power state, Tools state, root and guest processes.
    pub fn vms(&self) -> anyhow::Result<Vec<VmStatus>> {
        let body = self.control_ok("GET", "/vms", None)?;
        Ok(serde_json::from_str(&body)?)
    }
    /// One VM's status.
    pub fn vm(&self, name: &str) -> anyhow::Result<VmStatus> {
        self.vms()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| anyhow!("no VM named {name}"))
    }

    /// One control API call: `(status, body)`.
    pub fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.control_addr)
            .with_context(|| format!("connect to the control API at {}", self.control_addr))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.unwrap_or("");
        let mut req = String::new();
        let _ = write!(
            req,
            "{method} /_sim{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.control_addr,
            body.len()
        );
        stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed control API answer: {text:?}"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("malformed control API status line: {head:?}"))?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok((status, body))
    }

    fn control_ok(&self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<String> {
        let (status, text) = self.control(method, path, body)?;
        if status != 200 {
            bail!(
                "vsphere-sim control {method} {path}: HTTP {status}: {}",
                text.trim()
            );
        }
        Ok(text)
    }
}

impl Drop for VsphereSim {
    fn drop(&mut self) {
        // SIGTERM lets the simulator kill its guest process groups; SIGKILL if it hangs.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn place(root: &Path, guest: &str, source: &GuestSource) -> anyhow::Result<PathBuf> {
    if !guest.starts_with('/') || guest.split('/').any(|c| c == "..") {
        bail!("guest path {guest:?} must be absolute and must not contain '..'");
    }
    let target = root.join(guest.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if target.symlink_metadata().is_ok() {
        std::fs::remove_file(&target)?;
    }
    match source {
        GuestSource::Symlink(host) => std::os::unix::fs::symlink(host, &target)?,
        GuestSource::Bytes(data, mode) => {
            std::fs::write(&target, data)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
        }
    }
    Ok(target)
}

/// Source directory of the Go program.
pub fn source_dir() -> PathBuf {
    crate::workspace_root().join("tests").join("vsphere-sim")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
}

/// Builds the Go program if this source hash has no binary yet; returns the binary's path.
/// Racing callers (parallel test processes) wait on a lock file and reuse the first build.
pub fn build() -> anyhow::Result<PathBuf> {
    let src = source_dir();
    let hash = source_hash(&src)?;
    let dir = target_dir().join("vsphere-sim");
    let bin = dir.join(format!("vsphere-sim-{hash}"));
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let lock = std::fs::File::create(dir.join("build.lock"))?;
    let _guard = FileLock::exclusive(&lock)?;
    if bin.is_file() {
        return Ok(bin);
    }
    match Command::new("go").arg("version").output() {
        Ok(out) if out.status.success() => {}
        _ => bail!(
            "`go` was not found or does not run: the vSphere simulator is built from Debian's \
             golang-go and golang-github-vmware-govmomi-dev; run scripts/install-deps"
        ),
    }
    let govmomi = Path::new("/usr/share/gocode/src/github.com/vmware/govmomi/simulator");
    if !govmomi.is_dir() {
        bail!(
            "{} is missing: install golang-github-vmware-govmomi-dev (run scripts/install-deps)",
            govmomi.display()
        );
    }
    let mut gopath = std::ffi::OsString::from("/usr/share/gocode");
    if let Some(extra) = std::env::var_os("GOPATH") {
        gopath.push(":");
        gopath.push(extra);
    }
    let tmp = dir.join(format!("vsphere-sim-{hash}.tmp{}", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", dir.join("go-cache"))
        .output()
        .context("run go build")?;
    if !out.status.success() {
        bail!(
            "building the vSphere simulator failed (go build in {}):\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&tmp, &bin)?;
    // Older builds (other source hashes) are dead weight; running copies keep their inode.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("vsphere-sim-") && e.path() != bin {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(bin)
}

fn source_hash(src: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut names: Vec<PathBuf> = std::fs::read_dir(src)
        .with_context(|| format!("read {}", src.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "go"))
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        h.update(
            p.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.update([0]);
        h.update(std::fs::read(&p)?);
        h.update([0]);
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

/// An exclusive flock(2) held until drop.
struct FileLock<'a>(&'a std::fs::File);

impl<'a> FileLock<'a> {
    fn exclusive(file: &'a std::fs::File) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a file descriptor we own for the lifetime of the guard.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            bail!(
                "lock the simulator build: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock(file))
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}
