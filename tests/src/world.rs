//! A whole simulated sdci installation for one end-to-end test (or the demo): the vSphere
//! simulator with Qubes VMs, the GitHub stand-in, a fixture repository, and the real `sdci-host
//! serve` with the real `sdci-agent` as its GitHub gateway, all on loopback.
//!
//! Invariants of a [`World`]:
//! - Every VM's guest root is a Qubes world (`qubes_world`, contracts §2/§6) holding the real
//!   `sdci-dom0` and `sdci-agent`, captured as the pool's golden snapshot while powered off; jobs
//!   revert to it, so nothing one job leaves in a VM survives into the next.
//! - The host is the real binary with a generated configuration; nothing in the host knows it
//!   runs against simulators except the loopback URLs. GitHub App mode is on, so the agent in
//!   sd-dev posts `running` and the final status with a short-lived token, as in production.
//! - Everything lives in one temporary directory (never under `/home`, which the Qubes world's
//!   mount namespaces cover) and on ports of its own, so worlds run side by side; dropping the
//!   world stops the host, the simulator (and its guest processes) and the stand-in.
//! - Waiting is for conditions (a job's state, a status), each with a generous safety-net
//!   deadline; nothing sleeps to synchronise.

use crate::fixture::{Fixture, TestMode};
use crate::github::{GitHub, TEST_APP_PRIVATE_KEY};
use crate::job_world::JobWorld;
use crate::qubes_world::{QubeSpec, QubesWorld, WorldSpec};
use crate::vsphere_sim::{SimOptions, SimVm, VsphereSim};
use anyhow::{anyhow, bail, Context, Result};
use sdci_protocol::job::Step;
use sdci_vsphere::Hypervisor;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository the world's webhooks name.
pub const REPO: &str = "freedomofpress/securedrop-workstation";
/// The pool's golden snapshot (taken of the freshly laid-out Qubes world).
pub const GOLDEN: &str = "golden";
/// The commit-status context the host and agent use.
pub const CONTEXT: &str = "sd-ci-runner";
pub(crate) const WEBHOOK_SECRET: &str = "world-webhook-secret";
pub(crate) const APP_ID: u64 = 12345;
pub(crate) const INSTALLATION_ID: u64 = 678;

/// What to build. `Default`: two VMs `Qubes_4.2_a`/`Qubes_4.2_b`, a passing fixture, short
/// simulated delays, the default steps.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// VM names (all in the `Qubes_4.2_` pool).
    pub vms: Vec<String>,
    /// The fixture's first commit.
    pub mode: TestMode,
    /// Time from power-on until VMware Tools answer.
    pub boot_delay: Duration,
    /// Time from a guest shutdown request until power-off.
    pub shutdown_delay: Duration,
    /// Overrides the `make-test` step's timeout (seconds).
    pub test_timeout_secs: Option<u64>,
    /// Replaces the whole step list (e.g. a no-op `make` for the benchmark).
    pub steps: Option<Vec<Step>>,
    /// `[deadlines] guest_ready_secs`.
    pub guest_ready_secs: u64,
    /// The dev VM's name in the golden snapshot (and in the host's config). Anything but
    /// `sd-dev` is refused by the real qrexec policy.
    pub dev_vm: String,
    /// `[jobs] poll_interval_ms`; `None` leaves the host's shipped default (the benchmark).
    pub poll_interval_ms: Option<u64>,
    /// `[jobs] max_attempts`.
    pub max_attempts: u32,
    /// Log every SOAP call in the simulator's log.
    pub trace: bool,
    /// `RUST_LOG` for the host.
    pub host_log_filter: String,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            vms: vec!["Qubes_4.2_a".into(), "Qubes_4.2_b".into()],
            mode: TestMode::Pass,
            boot_delay: Duration::from_millis(200),
            shutdown_delay: Duration::from_millis(200),
            test_timeout_secs: None,
            steps: None,
            guest_ready_secs: 60,
            dev_vm: "sd-dev".into(),
            poll_interval_ms: Some(100),
            max_attempts: 3,
            trace: false,
            host_log_filter: "info,sdci_host=debug".into(),
        }
    }
}

impl WorldOptions {
    /// One VM only (tests that need a job to wait in the queue, or the same VM twice).
    pub fn one_vm(mut self) -> Self {
        self.vms.truncate(1);
        self
    }
}

/// A job as `sdci-host jobs show` reports it.
#[derive(Debug, Clone, Default)]
pub struct JobView {
    pub id: String,
    pub state: String,
    pub note: String,
    pub vm: String,
    pub attempts: u32,
    /// `(unix ms, from, to, note)` of every state change, oldest first.
    pub history: Vec<Transition>,
    /// The whole `jobs show` text (history and statuses), for failure messages.
    pub text: String,
}

/// One state change of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    pub at_ms: i64,
    pub from: String,
    pub to: String,
    pub note: String,
}

/// `2026-12-01` and `08:37:14.123Z` (as `sdci-host jobs show` prints them) in Unix ms.
fn parse_utc_ms(date: &str, time: &str) -> Option<i64> {
    let mut d = date.splitn(3, '-').map(str::parse::<u32>);
    let (y, mo, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.strip_suffix('Z')?;
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(str::parse::<i64>);
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let days = sdci_protocol::time::days_from_civil(i64::from(y), mo, day);
    Some((((days * 24 + h) * 60 + mi) * 60 + sec) * 1000 + ms.parse::<i64>().ok()?)
}

pub(crate) fn parse_history(text: &str) -> Vec<Transition> {
    text.lines()
        .skip_while(|l| *l != "history:")
        .skip(1)
        .take_while(|l| *l != "statuses:")
        .filter_map(|l| {
            // `  2026-12-01 08:37:14.123Z  queued -> assigned note` (UTC, to the millisecond)
            let (date, rest) = l.trim().split_once(' ')?;
            let (time, rest) = rest.split_once(' ')?;
            let at_ms = parse_utc_ms(date, time)?;
            let mut words = rest.trim_start().splitn(4, ' ');
            let from = words.next()?.to_owned();
            if words.next()? != "->" {
                return None;
            }
            let to = words.next()?.to_owned();
            let note = words.next().unwrap_or("").to_owned();
            Some(Transition {
                at_ms,
                from,
                to,
                note,
            })
        })
        .collect()
}

impl JobView {
    /// The first time the job entered `state`.
    pub fn entered(&self, state: &str) -> Option<i64> {
        self.history.iter().find(|t| t.to == state).map(|t| t.at_ms)
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self.state.as_str(),
            "success" | "failure" | "error" | "canceled"
        )
    }
}

/// A running world. See the module documentation.
pub struct World {
    pub opts: WorldOptions,
    pub fixture: Fixture,
    // Field order is drop order: the host first (it talks to the others), then the simulator
    // (killing guest processes), the stand-in, and the directory last.
    host: Option<Child>,
    pub sim: VsphereSim,
    pub github: GitHub,
    config: PathBuf,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl World {
    /// Builds and starts everything, including `sdci-host serve`.
    pub fn start(opts: WorldOptions) -> Result<Self> {
        let world = Self::prepare(opts)?;
        world.start_host_into()
    }

    /// Builds everything but does not start the host yet ([`World::start_host`]).
    pub fn prepare(opts: WorldOptions) -> Result<Self> {
        if !crate::qubes_world::views_supported() {
            return Err(Unsupported(
                "the Qubes world needs root (private mount namespaces, contracts §6); run as root"
                    .into(),
            )
            .into());
        }
        for bin in ["sdci-host", "sdci-agent", "sdci-dom0"] {
            let p = crate::binary(bin);
            if !p.is_file() {
                bail!(
                    "{} is missing: run `cargo build --workspace --bins` first",
                    p.display()
                );
            }
        }
        let mut dir = tempfile::Builder::new()
            .prefix("sdci-world-")
            .tempdir_in(std::env::temp_dir())
            .context("create the world's directory")?;
        // For debugging a failing test: keep the world's directory (not the simulator's).
        if std::env::var_os("SDCI_WORLD_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("world kept in {}", dir.path().display());
        }
        if dir.path().starts_with("/home") {
            bail!("the world's directory must not be under /home (TMPDIR points there)");
        }
        let d = dir.path();

        let fixture = Fixture::create(&d.join("fixture"), opts.mode)?;
        let github = GitHub::start();
        github.set_app(APP_ID, INSTALLATION_ID, TEST_APP_PRIVATE_KEY);
        github.add_repo(REPO);
        let sha = fixture.head()?;
        publish(&github, &fixture, &sha)?;

        let sim = VsphereSim::start(
            SimOptions::vcenter().trace(opts.trace).vms(
                opts.vms
                    .iter()
                    .map(|n| {
                        SimVm::new(n)
                            .snapshots(&[])
                            .tools_delay(Some(opts.boot_delay))
                            .shutdown_delay(opts.shutdown_delay)
                    })
                    .collect(),
            ),
        )?;
        let spec = world_spec(&opts);
        for vm in &opts.vms {
            QubesWorld::create_with(&sim.guest_root(vm), &spec)
                .with_context(|| format!("lay out the Qubes world of {vm}"))?;
        }

        // Secrets, each in its own file as the host and agent expect.
        let secret = |name: &str, text: &str| -> Result<PathBuf> {
            let p = d.join(name);
            std::fs::write(&p, text)?;
            Ok(p)
        };
        let webhook_secret = secret("webhook-secret", &format!("{WEBHOOK_SECRET}\n"))?;
        let vsphere_password = secret("vsphere-password", sim.password())?;
        let dom0_password = secret("dom0-password", sim.guest_password())?;
        let app_key = secret("github-app.pem", TEST_APP_PRIVATE_KEY)?;
        let agent_config = d.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "# the host's GitHub gateway, pointed at the GitHub stand-in\n\
                 api_url = {api:?}\ncontext = {CONTEXT:?}\n\n[app]\napp_id = {APP_ID}\n\
                 installation_id = {INSTALLATION_ID}\nprivate_key_file = {key:?}\n",
                api = github.url(),
                key = app_key.to_string_lossy(),
            ),
        )?;

        let addr = free_port()?;
        let config = d.join("host.toml");
        std::fs::write(
            &config,
            host_config(&HostConfigParts {
                opts: &opts,
                addr,
                data_dir: &d.join("data"),
                webhook_secret: &webhook_secret,
                agent_config: &agent_config,
                github: &github,
                sim: &sim,
                vsphere_password: &vsphere_password,
                dom0_password: &dom0_password,
            }),
        )?;

        let world = Self {
            opts,
            fixture,
            host: None,
            sim,
            github,
            config,
            addr,
            dir,
        };
        world.snapshot_golden()?;
        Ok(world)
    }

    /// Takes the golden snapshot of every VM (all powered off) through the vSphere client.
    fn snapshot_golden(&self) -> Result<()> {
        let cfg: sdci_vsphere::VsphereConfig = serde_json::from_value(serde_json::json!({
            "url": self.sim.url(),
            "user": self.sim.username(),
            "password": self.sim.password(),
            "tls": {"mode": "system-roots"},
        }))
        .context("vSphere client configuration")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let client = sdci_vsphere::VsphereClient::connect(cfg).await?;
            for vm in &self.opts.vms {
                client
                    .create_snapshot(vm, GOLDEN, "sdci world: freshly laid-out Qubes")
                    .await
                    .with_context(|| format!("snapshot {vm}"))?;
            }
            anyhow::Ok(())
        })
    }

    /// Starts `sdci-host serve` (again, after [`World::kill_host`]) and waits until it answers.
    pub fn start_host(&mut self) -> Result<()> {
        if self.host.is_some() {
            bail!("sdci-host is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.host_log_path())?;
        let child = Command::new(crate::binary("sdci-host"))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", &self.opts.host_log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start sdci-host")?;
        self.host = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http(self.addr, "GET", "/healthz", &[], b"") {
                return Ok(());
            }
            if let Some(child) = self.host.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.host = None;
                    bail!(
                        "sdci-host exited ({status}) before serving; its log:\n{}",
                        self.host_log()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "sdci-host did not answer within 60 s; its log:\n{}",
                    self.host_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_host_into(mut self) -> Result<Self> {
        self.start_host()?;
        Ok(self)
    }

    /// Kills `sdci-host` with SIGKILL (a crash: no clean-up of any kind).
    pub fn kill_host(&mut self) -> Result<()> {
        if let Some(mut child) = self.host.take() {
            child.kill().context("kill sdci-host")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops `sdci-host` with SIGTERM and waits for it (Ctrl-C in the demo).
    pub fn stop_host(&mut self) {
        if let Some(mut child) = self.host.take() {
            // SAFETY: kill(2) with a pid we own and a valid signal number.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The world's directory (fixture, configs, host data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host's configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Where the host listens (loopback).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a signed `push` webhook for `sha` on `main` and returns the host's raw answer.
    pub fn send_push(&self, sha: &str) -> Result<(u16, String)> {
        self.send_push_to(sha, "main")
    }

    /// Power state of every VM: `(name, "poweredOn" | "poweredOff" | ...)`.
    pub fn power_states(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .sim
            .vms()?
            .into_iter()
            .map(|v| (v.name, v.power_state))
            .collect())
    }

    /// Names of the VMs that are not powered off.
    pub fn vms_on(&self) -> Result<Vec<String>> {
        Ok(self
            .power_states()?
            .into_iter()
            .filter(|(_, s)| s != "poweredOff")
            .map(|(n, _)| n)
            .collect())
    }

    /// The Qubes world in a VM's guest root as it is now (after the last job, until the next
    /// revert).
    pub fn qubes(&self, vm: &str) -> Result<QubesWorld> {
        QubesWorld::open(&self.sim.guest_root(vm))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_host();
    }
}

/// Why a world cannot be built on this machine (not a failure of the system under test).
#[derive(Debug)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// The Qubes world every VM holds: the default one plus `whonix-gateway-17`, the template the
/// default steps update.
pub(crate) fn world_spec(opts: &WorldOptions) -> WorldSpec {
    let mut spec = WorldSpec {
        dev_vm: opts.dev_vm.clone(),
        ..WorldSpec::default()
    };
    spec.other_qubes
        .push(QubeSpec::new("whonix-gateway-17", "TemplateVM", &[], false));
    spec
}

pub(crate) fn publish(github: &GitHub, fixture: &Fixture, sha: &str) -> Result<()> {
    github.serve_git(REPO, &fixture.path);
    github.set_branch(REPO, "main", sha);
    let ci = std::fs::read(fixture.path.join(".github/workstation-ci.yml"))
        .context("read the fixture's .github/workstation-ci.yml")?;
    github.add_file(REPO, sha, ".github/workstation-ci.yml", &ci);
    Ok(())
}

struct HostConfigParts<'a> {
    opts: &'a WorldOptions,
    addr: SocketAddr,
    data_dir: &'a Path,
    webhook_secret: &'a Path,
    agent_config: &'a Path,
    github: &'a GitHub,
    sim: &'a VsphereSim,
    vsphere_password: &'a Path,
    dom0_password: &'a Path,
}

/// TOML for one step (serde_json's strings are valid TOML basic strings).
pub(crate) fn step_toml(s: &Step) -> String {
    let q = |v: &str| serde_json::Value::String(v.to_owned()).to_string();
    let argv: Vec<String> = s.argv.iter().map(|a| q(a)).collect();
    let env: Vec<String> = s
        .env
        .iter()
        .map(|(k, v)| format!("{} = {}", q(k), q(v)))
        .collect();
    format!(
        "{{ name = {}, argv = [{}], env = {{ {} }}, timeout_secs = {} }}",
        q(&s.name),
        argv.join(", "),
        env.join(", "),
        s.timeout_secs
    )
}

fn host_config(p: &HostConfigParts<'_>) -> String {
    let o = p.opts;
    let steps = o.steps.clone().unwrap_or_else(|| {
        let mut steps = sdci_protocol::job::default_steps();
        if let Some(t) = o.test_timeout_secs {
            for s in steps.iter_mut().filter(|s| s.name == "make-test") {
                s.timeout_secs = t;
            }
        }
        steps
    });
    let steps: Vec<String> = steps.iter().map(step_toml).collect();
    let path = |p: &Path| format!("{:?}", p.to_string_lossy());
    let mut t = String::new();
    let _ = write!(
        t,
        r#"# sdci-host configuration generated by sdci_tests::world for one simulated installation
listen = "{addr}"
public_url = "http://{addr}"
data_dir = {data}
reconcile_interval_secs = 2
default_version = "4.2"

[webhook]
secret_file = {secret}
repos = ["{REPO}"]

[agent]
path = {agent}
config = {agent_config}
github_app = true
resolve_version = true
github_api = "{api}"
clone_url_override = "{clone}"
timeout_secs = 120

[vsphere]
url = "{vs_url}"
user = "{vs_user}"
password_file = {vs_pw}
[vsphere.tls]
mode = "system-roots"
[vsphere.timeouts]
connect_secs = 10
call_secs = 30
task_secs = 60

[dom0]
user = "{guest_user}"
password_file = {dom0_pw}
dev_vm = "{dev_vm}"

[jobs]
max_attempts = {attempts}
{poll}steps = [
  {steps}
]

[deadlines]
revert_secs = 60
power_on_secs = 60
guest_ready_secs = {ready}
upload_secs = 60
run_secs = 600
download_secs = 60
shutdown_grace_secs = 30
shutdown_secs = 60

[pools."4.2"]
prefix = "Qubes_4.2_"
golden_snapshot = "{GOLDEN}"
"#,
        addr = p.addr,
        data = path(p.data_dir),
        secret = path(p.webhook_secret),
        agent = path(&crate::binary("sdci-agent")),
        agent_config = path(p.agent_config),
        api = p.github.url(),
        clone = p.github.clone_url(REPO),
        vs_url = p.sim.url(),
        vs_user = p.sim.username(),
        vs_pw = path(p.vsphere_password),
        guest_user = p.sim.guest_username(),
        dom0_pw = path(p.dom0_password),
        dev_vm = o.dev_vm,
        attempts = o.max_attempts,
        poll = o
            .poll_interval_ms
            .map(|ms| format!("poll_interval_ms = {ms}\n"))
            .unwrap_or_default(),
        steps = steps.join(",\n  "),
        ready = o.guest_ready_secs,
    );
    t
}

/// `sha256=<hex>` of `body` under `secret`, as GitHub signs webhooks.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

pub(crate) fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

/// A free loopback port (bound and released; the host binds it right after).
pub(crate) fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free loopback port")?;
    Ok(l.local_addr()?)
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A minimal HTTP/1.1 client over loopback (`Connection: close`; chunked answers decoded).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sdci-tests\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line: {head}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload)?;
    }
    Ok((code, String::from_utf8_lossy(&payload).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
