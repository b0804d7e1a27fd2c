//! The end-to-end world on libvirt: the same installation as [`crate::world::World`] (the GitHub
//! stand-in, a fixture repository, the real `sdci-host serve` with the real `sdci-agent` as its
//! gateway), but its VMs are real QEMU guests of a private, real `libvirtd`
//! (`sdci_libvirt::testenv`), driven by the host's libvirt backend (`backend = "libvirt"`).
//!
//! Invariants of a [`LibvirtWorld`]:
//! - Every guest boots the cached test image (`libvirt/testenv/build-image.sh`: Debian's cloud
//!   kernel, busybox init, qemu-guest-agent, and this machine's bash, make, coreutils, Python 3
//!   and git) with a second disk, the *world disk*, built per world with `mkfs.ext4 -d`: a Qubes
//!   world (`qubes_world`, contracts §6) holding the real, debug-stripped `sdci-dom0` and
//!   `sdci-agent`, the stand-ins and the real policy. The guest mounts it at the path it was
//!   laid out at on the host (`sdci.world=` on the kernel command line), so every absolute path
//!   the world's files name is true inside the guest, and its `.sdci/rc` makes the guest that
//!   Qubes machine's dom0: dom0's home on `/home`, the stand-in tools in `/usr/bin`,
//!   `/usr/local/bin/sdci-dom0`. The golden snapshot (libvirt's internal qcow2 snapshots of both
//!   disks, taken powered off) is that state; jobs revert to it.
//! - dom0's user is `root` (the stand-ins' views need root, contracts §6, as the simulator's
//!   guest programs run as the test's root). No dom0 password file exists: libvirt's guest agent
//!   needs none.
//! - The guest's network is QEMU's user mode with `restrict=on`: it reaches nothing but two
//!   forwards, `10.0.2.100:<host port>` and `10.0.2.100:<GitHub stand-in port>`, each connection
//!   relayed by `sdci-guestfwd-relay` to that port on the host's `127.0.0.1`; in the guest the
//!   same program listens on `127.0.0.1:<port>` and carries each connection to the forward. So
//!   the guest reaches the host's two loopback ports at its own loopback, and the host's
//!   configuration is the vSphere world's (`public_url`, the job file's GitHub API and clone URL
//!   all `http://127.0.0.1:…`) but for `[libvirt]`, the pool's backend and dom0's user.
//!   Nothing leaves loopback.
//! - KVM or TCG is probed (`probe_accel`) and printed, not assumed.
//! - Dropping the world stops the host, then the daemon (killing its guests); its state lives
//!   under `target/libvirt-env/`, the rest in one temporary directory.

use crate::fixture::Fixture;
use crate::github::{GitHub, TEST_APP_PRIVATE_KEY};
use crate::job_world::JobWorld;
use crate::qubes_world::{QubesWorld, WorldSpec};
use crate::world::{
    free_port, publish, step_toml, world_spec, Unsupported, WorldOptions, APP_ID, CONTEXT, GOLDEN,
    INSTALLATION_ID, REPO, WEBHOOK_SECRET,
};
use anyhow::{anyhow, bail, Context, Result};
use sdci_libvirt::testenv::{probe_accel, Image, Libvirtd};
use sdci_libvirt::{DomainSpec, DomainType, GuestForward, LibvirtClient, LibvirtConfig, UserNet};
use sdci_vsphere::{GuestAuth, GuestProgram, Hypervisor, PowerState, ProcessState};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The address the guests reach the host's loopback ports at (QEMU `guestfwd`).
pub const GUEST_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// dom0's user in the guests (see the module documentation).
pub const DOM0_USER: &str = "root";
/// Memory of each guest: Python, git and the debug binaries under TCG.
const GUEST_MIB: u64 = 512;

/// One guest of the world.
struct Guest {
    name: String,
    world_disk: PathBuf,
    spec: DomainSpec,
}

/// A running world on libvirt. See the module documentation.
pub struct LibvirtWorld {
    pub opts: WorldOptions,
    pub fixture: Fixture,
    /// `kvm` or `qemu` (TCG), as probed.
    pub accel: DomainType,
    /// How long building the guest image took (`None`: it was cached).
    pub image_built_in: Option<Duration>,
    /// How long [`LibvirtWorld::prepare`] took (world disks, domains, golden snapshots).
    pub prepared_in: Duration,
    // Drop order: the host first (Drop), then the client, the daemon (kills its guests), the
    // stand-in, the directory last.
    host: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: LibvirtClient,
    pub daemon: Libvirtd,
    pub github: GitHub,
    guests: Vec<Guest>,
    config: PathBuf,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's own `root` account for the test's guest operations (the agent needs no password).
fn root_auth() -> GuestAuth {
    GuestAuth {
        user: "root".into(),
        password: sdci_protocol::Secret::new(String::new()),
    }
}

impl LibvirtWorld {
    /// Builds and starts everything, including `sdci-host serve`.
    pub fn start(opts: WorldOptions) -> Result<Self> {
        let mut w = Self::prepare(opts)?;
        w.start_host_process()?;
        Ok(w)
    }

    /// Builds everything but does not start the host.
    pub fn prepare(opts: WorldOptions) -> Result<Self> {
        let t0 = Instant::now();
        if !crate::qubes_world::views_supported() {
            return Err(Unsupported(
                "the libvirt world runs libvirtd and the Qubes world's views as root".into(),
            )
            .into());
        }
        if !Path::new("/usr/sbin/libvirtd").exists() {
            return Err(Unsupported(
                "libvirtd is not installed: run scripts/install-deps (libvirt-daemon-system, qemu-system-x86)"
                    .into(),
            )
            .into());
        }
        for bin in [
            "sdci-host",
            "sdci-agent",
            "sdci-dom0",
            "sdci-guestfwd-relay",
        ] {
            let p = crate::binary(bin);
            if !p.is_file() {
                bail!(
                    "{} is missing: run `cargo build --workspace --bins` first",
                    p.display()
                );
            }
        }
        let mut dir = tempfile::Builder::new()
            .prefix("sdci-lvworld-")
            .tempdir_in(std::env::temp_dir())
            .context("create the world's directory")?;
        if std::env::var_os("SDCI_WORLD_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("world kept in {}", dir.path().display());
        }
        if dir.path().starts_with("/home") {
            bail!("the world's directory must not be under /home (TMPDIR points there)");
        }
        let d = dir.path().to_path_buf();

        let fixture = Fixture::create(&d.join("fixture"), opts.mode)?;
        let github = GitHub::start();
        github.set_app(APP_ID, INSTALLATION_ID, TEST_APP_PRIVATE_KEY);
        github.add_repo(REPO);
        publish(&github, &fixture, &fixture.head()?)?;
        let gh_port = github
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("the GitHub stand-in's URL {} has no port", github.url()))?;
        let addr = free_port()?;

        let image = Image::ensure().map_err(|e| anyhow!("the libvirt guest image: {e}"))?;
        let accel = probe_accel(&image);
        let tag = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "world".into());
        let daemon = Libvirtd::start(&tag).map_err(|e| anyhow!("libvirtd: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let ty = match accel {
            DomainType::Kvm => "kvm",
            _ => "qemu",
        };
        let lcfg: LibvirtConfig = toml::from_str(&format!(
            "uris = [{:?}]\ndomain_type = \"{ty}\"\n[timeouts]\nagent_secs = 30\n",
            daemon.uri()
        ))?;
        let client = rt.block_on(LibvirtClient::connect(lcfg))?;

        // The binaries every world disk carries, without their debug info (a third the size,
        // paged in faster under TCG).
        let bins = d.join("guest-bin");
        std::fs::create_dir_all(&bins)?;
        for bin in ["sdci-dom0", "sdci-agent", "sdci-guestfwd-relay"] {
            run(Command::new("objcopy")
                .arg("--strip-debug")
                .arg(crate::binary(bin))
                .arg(bins.join(bin)))?;
        }
        let relay = crate::binary("sdci-guestfwd-relay");
        let mut guests = Vec::new();
        for vm in &opts.vms {
            let g = build_guest(
                &GuestParts {
                    vm,
                    dir: &d,
                    bins: &bins,
                    relay: &relay,
                    ports: [addr.port(), gh_port],
                    opts: &opts,
                },
                &daemon,
                &image,
            )
            .with_context(|| format!("build the guest {vm}"))?;
            rt.block_on(async {
                client.define_domain(&g.spec).await?;
                client
                    .create_snapshot(vm, GOLDEN, "sdci libvirt world: freshly laid-out Qubes")
                    .await
            })
            .with_context(|| format!("define {vm} and its golden snapshot"))?;
            guests.push(g);
        }

        let secret = |name: &str, text: &str| -> Result<PathBuf> {
            let p = d.join(name);
            std::fs::write(&p, text)?;
            Ok(p)
        };
        let webhook_secret = secret("webhook-secret", &format!("{WEBHOOK_SECRET}\n"))?;
        let app_key = secret("github-app.pem", TEST_APP_PRIVATE_KEY)?;
        let agent_config = d.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "# the host's GitHub gateway, pointed at the GitHub stand-in (loopback)\n\
                 api_url = {api:?}\ncontext = {CONTEXT:?}\n\n[app]\napp_id = {APP_ID}\n\
                 installation_id = {INSTALLATION_ID}\nprivate_key_file = {key:?}\n",
                api = github.url(),
                key = app_key.to_string_lossy(),
            ),
        )?;
        let config = d.join("host.toml");
        std::fs::write(
            &config,
            host_config(&HostConfigParts {
                opts: &opts,
                addr,
                github: &github,
                data_dir: &d.join("data"),
                webhook_secret: &webhook_secret,
                agent_config: &agent_config,
                libvirt_uri: &daemon.uri(),
                domain_type: ty,
                dom0_password: &d.join("no-dom0-password"),
            }),
        )?;
        let prepared_in = t0.elapsed();
        eprintln!(
            "libvirt world: {} guest(s) on domain type {ty} ({}), ready in {prepared_in:.1?}{}",
            guests.len(),
            if accel == DomainType::Kvm {
                "KVM"
            } else {
                "TCG, software emulation"
            },
            match image.built_in {
                Some(t) => format!(" (the guest image was built in {t:.1?})"),
                None => String::new(),
            }
        );
        Ok(Self {
            opts,
            fixture,
            accel,
            image_built_in: image.built_in,
            prepared_in,
            host: None,
            rt,
            client,
            daemon,
            github,
            guests,
            config,
            addr,
            dir,
        })
    }

    /// Starts `sdci-host serve` and waits until it answers.
    fn start_host_process(&mut self) -> Result<()> {
        if self.host.is_some() {
            bail!("sdci-host is already running");
        }
        let child = crate::job_world::spawn_host(
            &self.config,
            &self.host_log_path(),
            &self.opts.host_log_filter,
            self.addr,
        )?;
        self.host = Some(child);
        Ok(())
    }

    /// Stops `sdci-host` with SIGTERM and waits for it.
    pub fn stop_host(&mut self) {
        if let Some(child) = self.host.take() {
            crate::job_world::terminate(child);
        }
    }

    /// The libvirt client the world uses (the same calls the host makes).
    pub fn client(&self) -> &LibvirtClient {
        &self.client
    }

    /// Runs a future of the world's runtime (libvirt calls) to its end.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The guest's own boot on `vm`, the median of `rounds`: revert to golden, then power on →
    /// the guest agent answers (timed), then power off. What a job's boot costs on this machine
    /// whatever the host does (the benchmark subtracts it).
    pub fn measure_guest_boot(&self, vm: &str, rounds: usize) -> Result<Duration> {
        let mut times = Vec::new();
        for _ in 0..rounds.max(1) {
            let took = self.rt.block_on(async {
                self.client.revert(vm, GOLDEN).await?;
                let t = Instant::now();
                self.client.power_on(vm).await?;
                self.client
                    .wait_guest_ready(vm, Duration::from_secs(300))
                    .await?;
                let took = t.elapsed();
                self.client.power_off(vm).await?;
                anyhow::Ok(took)
            })?;
            times.push(took);
        }
        times.sort();
        Ok(times[times.len() / 2])
    }

    /// Destroys (pulls the plug of) a running guest, as a crash of its QEMU would.
    pub fn destroy(&self, vm: &str) -> Result<()> {
        Ok(self.rt.block_on(self.client.power_off(vm))?)
    }

    /// Restarts the world's libvirtd (SIGTERM, then a new daemon on the same state); running
    /// guests keep running. Returns how long it took.
    pub fn restart_libvirtd(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.daemon
            .restart()
            .map_err(|e| anyhow!("restarting libvirtd: {e}"))?;
        Ok(t.elapsed())
    }

    /// The tail of a guest's serial console (for failure messages).
    pub fn console(&self, vm: &str) -> String {
        self.daemon.console(vm)
    }

    /// `(name, power)` of every domain.
    pub fn power_states(&self) -> Result<Vec<(String, PowerState)>> {
        Ok(self
            .rt
            .block_on(self.client.list_vms(""))?
            .into_iter()
            .map(|v| (v.name, v.power))
            .collect())
    }

    fn guest(&self, vm: &str) -> Result<&Guest> {
        self.guests
            .iter()
            .find(|g| g.name == vm)
            .ok_or_else(|| anyhow!("no guest {vm} in this world"))
    }

    /// Runs `script` with `/bin/sh -c` in a running guest as root; its exit code.
    pub fn guest_sh(&self, vm: &str, script: &str) -> Result<i32> {
        let program = GuestProgram {
            path: "/bin/sh".into(),
            arguments: format!("-c {}", sh_quote(script)),
            env: Vec::new(),
            working_directory: Some("/".into()),
        };
        self.rt.block_on(async {
            let pid = self
                .client
                .start_program(vm, &root_auth(), &program)
                .await?;
            match self
                .client
                .wait_program(vm, &root_auth(), pid, Duration::from_secs(60))
                .await?
            {
                ProcessState::Exited(code) => Ok(code),
                other => bail!("{script:?} in {vm}: {other:?}"),
            }
        })
    }

    /// Redefines `vm` from `spec` and takes its golden snapshot again (before any job ran, the
    /// disks still hold the freshly laid-out world).
    fn redefine(&self, vm: &str, spec: &DomainSpec) -> Result<()> {
        self.rt.block_on(async {
            self.client.remove_snapshot(vm, GOLDEN).await?;
            self.client.undefine_domain(vm).await?;
            self.client.define_domain(spec).await?;
            self.client
                .create_snapshot(vm, GOLDEN, "sdci libvirt world: re-taken after a fault")
                .await?;
            anyhow::Ok(())
        })
    }
}

impl Drop for LibvirtWorld {
    fn drop(&mut self) {
        self.stop_host();
    }
}

impl JobWorld for LibvirtWorld {
    fn backend(&self) -> String {
        format!(
            "libvirt ({})",
            if self.accel == DomainType::Kvm {
                "KVM"
            } else {
                "TCG"
            }
        )
    }
    fn hypervisor_url(&self) -> String {
        self.daemon.uri()
    }
    fn opts(&self) -> &WorldOptions {
        &self.opts
    }
    fn github(&self) -> &GitHub {
        &self.github
    }
    fn fixture(&self) -> &Fixture {
        &self.fixture
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn public_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn config_path(&self) -> &Path {
        &self.config
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }
    fn start_host(&mut self) -> Result<()> {
        self.start_host_process()
    }
    fn kill_host(&mut self) -> Result<()> {
        if let Some(mut child) = self.host.take() {
            child.kill().context("kill sdci-host")?;
            child.wait()?;
        }
        Ok(())
    }
    fn patience(&self, wait: Duration) -> Duration {
        // Real guests boot, and under TCG the Python stand-ins and git run emulated.
        match self.accel {
            DomainType::Kvm => wait * 2,
            _ => wait * 4,
        }
    }
    fn vms_on(&self) -> Result<Vec<String>> {
        Ok(self
            .power_states()?
            .into_iter()
            .filter(|(_, p)| *p != PowerState::Off)
            .map(|(n, _)| n)
            .collect())
    }
    fn dom0_home_has(&self, vm: &str, name: &str) -> Result<bool> {
        let rel = format!("/home/{DOM0_USER}/{name}");
        let on = self.rt.block_on(self.client.vm(vm))?.power != PowerState::Off;
        if on {
            return Ok(self.guest_sh(vm, &format!("test -e {}", sh_quote(&rel)))? == 0);
        }
        // Powered off (the host pulls the plug once it has dom0's log): read a copy of the world
        // disk's file system as the guest would find it at its next boot, the journal replayed
        // (the world disk commits every second).
        let g = self.guest(vm)?;
        let raw = self.dir.path().join(format!("{vm}-inspect.raw"));
        run(Command::new("qemu-img")
            .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
            .arg(&g.world_disk)
            .arg(&raw))?;
        // Exit 1 = the journal was replayed; only > 1 is trouble.
        let fsck = Command::new("e2fsck")
            .args(["-E", "journal_only", "-p"])
            .arg(&raw)
            .output()
            .context("run e2fsck")?;
        if !matches!(fsck.status.code(), Some(0 | 1)) {
            bail!(
                "e2fsck on a copy of {vm}'s world disk: {}{}",
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            );
        }
        let out = Command::new("debugfs")
            .arg("-c")
            .arg("-R")
            .arg(format!("stat {rel}"))
            .arg(&raw)
            .output()
            .context("run debugfs")?;
        let _ = std::fs::remove_file(&raw);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("Inode:") {
            Ok(true)
        } else if text.contains("File not found") {
            Ok(false)
        } else {
            bail!("debugfs stat {rel} on {vm}'s world disk: {text}")
        }
    }
    fn no_guest_program_left(&self, vm: &str) -> Result<()> {
        // A job's guest ends with the guest: the host shuts the VM down after every job.
        if self.rt.block_on(self.client.vm(vm))?.power == PowerState::Off {
            return Ok(());
        }
        if self.guest_sh(vm, "pgrep -f 'sleep 100000' >/dev/null")? == 0 {
            bail!("the job's hanging sleep still runs in {vm}");
        }
        Ok(())
    }
    fn fail_next_power_on(&self) -> Result<()> {
        // The host claims free VMs in name order. A directory where QEMU's serial console file
        // should be: the domain cannot start (not undone by a revert: it is the host's file).
        let first = self.opts.vms.iter().min().ok_or_else(|| anyhow!("no VM"))?;
        let console = self.daemon.dir.join(format!("{first}.console"));
        let _ = std::fs::remove_file(&console);
        std::fs::create_dir_all(&console)?;
        Ok(())
    }
    fn agent_never_starts(&self) -> Result<()> {
        for g in &self.guests {
            let mut spec = g.spec.clone();
            if let Some((_, _, cmdline)) = spec.kernel.as_mut() {
                cmdline.push_str(" sdci.noagent");
            }
            self.redefine(&g.name, &spec)?;
        }
        Ok(())
    }
}

struct GuestParts<'a> {
    vm: &'a str,
    dir: &'a Path,
    bins: &'a Path,
    relay: &'a Path,
    /// The host's and the GitHub stand-in's loopback ports, forwarded to the guest.
    ports: [u16; 2],
    opts: &'a WorldOptions,
}

/// Lays out `vm`'s Qubes world, makes its world disk and its domain description.
fn build_guest(p: &GuestParts<'_>, daemon: &Libvirtd, image: &Image) -> Result<Guest> {
    let root = p.dir.join(format!("guest-{}", p.vm));
    let own = root.join(".sdci");
    std::fs::create_dir_all(own.join("bin"))?;
    for bin in ["sdci-dom0", "sdci-agent", "sdci-guestfwd-relay"] {
        let (from, to) = (p.bins.join(bin), own.join("bin").join(bin));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)?;
        }
    }
    let spec = WorldSpec {
        dom0_user: DOM0_USER.into(),
        dom0_binary: own.join("bin/sdci-dom0"),
        agent_binary: own.join("bin/sdci-agent"),
        ..world_spec(p.opts)
    };
    QubesWorld::create_with(&root, &spec)?;
    // The stand-ins' wrappers exec the script at its path in this repository: the guest gets a
    // link there to the world disk's copy.
    let script = crate::qubes_world::sim_script();
    std::fs::copy(&script, own.join("qubes_sim.py"))?;
    let script_dir = script
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", script.display()))?;
    let rc = format!(
        "#!/bin/sh\n\
         # sdci_tests::libvirt_world: this guest becomes dom0 of the Qubes world on this disk ($1)\n\
         R=\"$1\"\n\
         mount --bind \"$R/home\" /home || exit 1\n\
         mkdir -p /usr/local/bin\n\
         for f in \"$R\"/usr/local/bin/* \"$R\"/usr/bin/*; do\n\
         \x20 d=/usr/${{f#\"$R\"/usr/}}; ln -sf \"$f\" \"$d\"\n\
         done\n\
         mkdir -p {dir} && ln -sf \"$R/.sdci/qubes_sim.py\" {script}\n\
         # the host's loopback ports at the guest's own, through the restricted network's forwards\n\
         for p in {ports}; do\n\
         \x20 \"$R/.sdci/bin/sdci-guestfwd-relay\" --listen \"$p\" {fwd} </dev/null >/dev/null 2>&1 &\n\
         done\n\
         # dom0's programs find the world as the vSphere simulator's find it (contracts §2)\n\
         echo \"SDCI_GUEST_ROOT=$R\" >> /etc/sdci-guest.env\n\
         echo \"sdci-guest: Qubes world $R is dom0\" > /dev/console\n",
        dir = sh_quote(&script_dir.to_string_lossy()),
        script = sh_quote(&script.to_string_lossy()),
        ports = p.ports.map(|p| p.to_string()).join(" "),
        fwd = GUEST_HOST_IP,
    );
    let rc_path = own.join("rc");
    std::fs::write(&rc_path, rc)?;
    std::fs::set_permissions(
        &rc_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;

    // The world disk: its contents plus room for the jobs (checkouts, spools, logs) and dom0's
    // free-space reserve (`limits.min_free_bytes`, 1 GiB); sparse, so the room costs nothing.
    let used_mib = run(Command::new("du").arg("-sm").arg(&root))?
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(256);
    let raw = p.dir.join(format!("{}-world.raw", p.vm));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "sdci-world"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1", "-d"])
        .arg(&root)
        .arg(&raw)
        .arg(format!("{}M", used_mib + 1536)))?;
    let world_disk = daemon
        .dir
        .join("disks")
        .join(format!("{}-world.qcow2", p.vm));
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&world_disk))?;
    std::fs::remove_file(&raw)?;

    let mut spec = daemon
        .guest_spec(image, p.vm, true)
        .map_err(|e| anyhow!("{e}"))?;
    spec.memory_mib = GUEST_MIB;
    if let Some((_, _, cmdline)) = spec.kernel.as_mut() {
        cmdline.push_str(&format!(" sdci.world={}", root.display()));
    }
    spec.extra_disks = vec![world_disk.clone()];
    spec.user_net = Some(UserNet {
        forwards: p
            .ports
            .iter()
            .map(|port| GuestForward {
                ip: GUEST_HOST_IP,
                port: *port,
                command: format!("{} {port}", p.relay.display()),
            })
            .collect(),
    });
    Ok(Guest {
        name: p.vm.into(),
        world_disk,
        spec,
    })
}

struct HostConfigParts<'a> {
    opts: &'a WorldOptions,
    addr: SocketAddr,
    github: &'a GitHub,
    data_dir: &'a Path,
    webhook_secret: &'a Path,
    agent_config: &'a Path,
    libvirt_uri: &'a str,
    domain_type: &'a str,
    dom0_password: &'a Path,
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
        r#"# sdci-host configuration generated by sdci_tests::libvirt_world: pools on libvirt
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

[libvirt]
uris = ["{uri}"]
domain_type = "{ty}"
[libvirt.timeouts]
agent_secs = 30

[dom0]
user = "{DOM0_USER}"
# absent on purpose: the guest agent needs no dom0 password
password_file = {dom0_pw}
dev_vm = "{dev_vm}"

[jobs]
max_attempts = {attempts}
{poll}steps = [
  {steps}
]

[deadlines]
revert_secs = 120
power_on_secs = 120
guest_ready_secs = {ready}
upload_secs = 120
run_secs = 900
download_secs = 120
shutdown_grace_secs = 30
shutdown_secs = 90

[pools."4.2"]
prefix = "Qubes_4.2_"
golden_snapshot = "{GOLDEN}"
backend = "libvirt"
"#,
        addr = p.addr,
        api = p.github.url(),
        clone = p.github.clone_url(REPO),
        data = path(p.data_dir),
        secret = path(p.webhook_secret),
        agent = path(&crate::binary("sdci-agent")),
        agent_config = path(p.agent_config),
        uri = p.libvirt_uri,
        ty = p.domain_type,
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
