//! The test environment for libvirt (feature `testenv`): a private `libvirtd`, a small real guest
//! image built from Debian's packages and cached under `target/`, and the probe that decides
//! between KVM and TCG. Used by this crate's tests and benchmark, and by other crates' tests that
//! run jobs on libvirt.
//!
//! - [`Image::ensure`] builds `testenv/build-image.sh`'s image once per recipe (the script's
//!   hash and the package versions it names) into `target/libvirt-image/<hash>/`, removing the
//!   images of earlier recipes; concurrent test processes wait on a lock file for the one that
//!   builds.
//! - [`Libvirtd::start`] runs the distribution's `libvirtd` as root in a private mount
//!   namespace whose `/run/libvirt`, `/var/lib/libvirt`, `/etc/libvirt`, `/var/cache/libvirt`
//!   and `/var/log/libvirt` are bind mounts of one directory under `target/libvirt-env/`, so no
//!   system service is needed or touched, and a restarted daemon finds its running domains again.
//! - [`probe_accel`] boots the image's kernel under `-accel kvm` and reports `Kvm` only when it
//!   reaches userland within 15 s (on this project's machines KVM exists but guests stall);
//!   the answer is cached per boot of the machine.

use crate::config::DomainType;
use crate::xml::DomainSpec;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What can go wrong setting the environment up; the message says what to do.
pub type EnvResult<T> = std::result::Result<T, String>;

const BUILD_SCRIPT: &str = include_str!("../testenv/build-image.sh");

/// The workspace's `target/` (or `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn run(cmd: &mut Command) -> EnvResult<String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An exclusive `flock` on a file for as long as the value lives (the field holds the lock).
struct FileLock(#[allow(dead_code)] fs::File);

impl FileLock {
    fn take(path: &Path) -> EnvResult<Self> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self(f))
    }
}

/// The built guest: kernel, initramfs and the qcow2 root disk (the base of every test's disk).
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub root: PathBuf,
    /// How long the build took, `None` when the cached image was used.
    pub built_in: Option<Duration>,
}

impl Image {
    /// The image for the current recipe, built if it is not cached yet.
    pub fn ensure() -> EnvResult<Image> {
        let base = target_dir().join("libvirt-image");
        fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let script = base.join("build-image.sh");
        fs::write(&script, BUILD_SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
        let recipe = run(Command::new("bash").arg(&script).arg("--recipe"))?;
        let mut h = Sha256::new();
        h.update(BUILD_SCRIPT.as_bytes());
        h.update(recipe.as_bytes());
        let key = hex::encode(&h.finalize()[..8]);
        let dir = base.join(&key);
        let image = |built_in| Image {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            root: dir.join("root.qcow2"),
            dir: dir.clone(),
            built_in,
        };
        let _lock = FileLock::take(&base.join(".lock"))?;
        if dir.join("root.qcow2").exists() {
            return Ok(image(None));
        }
        let started = Instant::now();
        let tmp = base.join(format!(".{key}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        run(Command::new("bash").arg(&script).arg(&tmp))?;
        fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let took = started.elapsed();
        eprintln!("libvirt testenv: built the guest image {key} in {took:.1?}");
        // Images of earlier recipes are not used again (about 100 MB each).
        if let Ok(rd) = fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let stale = name.len() == key.len()
                    && name != key
                    && name.bytes().all(|b| b.is_ascii_hexdigit());
                if stale && e.path().join("root.qcow2").exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(image(Some(took)))
    }
}

/// KVM if a guest boots under it here, else TCG (`qemu`). Prints which, and why.
pub fn probe_accel(image: &Image) -> DomainType {
    if let Ok(v) = std::env::var("SDCI_LIBVIRT_DOMAIN_TYPE") {
        let t = if v == "kvm" {
            DomainType::Kvm
        } else {
            DomainType::Qemu
        };
        eprintln!("libvirt testenv: domain type {v} (SDCI_LIBVIRT_DOMAIN_TYPE)");
        return t;
    }
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let _ = fs::create_dir_all(target_dir().join("libvirt-env"));
    // One probe at a time: the others wait and read its answer.
    let _lock = FileLock::take(&target_dir().join("libvirt-env/.accel-lock"));
    let cache = target_dir().join(format!("libvirt-env/accel-{}", boot.trim()));
    if let Ok(s) = fs::read_to_string(&cache) {
        let t = if s.starts_with("kvm") {
            DomainType::Kvm
        } else {
            DomainType::Qemu
        };
        eprintln!(
            "libvirt testenv: domain type {} (probed earlier this boot: {})",
            if t == DomainType::Kvm { "kvm" } else { "qemu" },
            s.trim()
        );
        return t;
    }
    let (t, why) = probe_kvm(image);
    let _ = fs::write(
        &cache,
        format!(
            "{} {why}\n",
            if t == DomainType::Kvm { "kvm" } else { "qemu" }
        ),
    );
    eprintln!(
        "libvirt testenv: domain type {} ({why})",
        if t == DomainType::Kvm { "kvm" } else { "qemu" }
    );
    t
}

fn probe_kvm(image: &Image) -> (DomainType, String) {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return (DomainType::Qemu, "no usable /dev/kvm".into());
    }
    let started = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-m",
            "128",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", "console=ttyS0 sdci.probe panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return (
                DomainType::Qemu,
                format!("qemu-system-x86_64 did not start: {e}"),
            )
        }
    };
    let limit = Duration::from_secs(15);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return (
                    DomainType::Qemu,
                    format!("a KVM guest did not reach userland in {limit:?}: it stalls here"),
                );
            }
        }
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if out.contains("sdci-probe-ok") {
        (
            DomainType::Kvm,
            format!("a KVM guest reached userland in {:.1?}", started.elapsed()),
        )
    } else {
        (
            DomainType::Qemu,
            "a KVM guest exited without reaching userland".into(),
        )
    }
}

/// A private libvirtd. Dropping it ends its domains' QEMU processes and the daemon.
#[derive(Debug)]
pub struct Libvirtd {
    pub dir: PathBuf,
    child: Option<Child>,
}

const LIBVIRTD_CONF: &str = r#"unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"#;

/// Root without the confinement a system daemon would add (the tests' guests are their own).
const QEMU_CONF: &str = r#"user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
cgroup_controllers = []
stdio_handler = "file"
# QEMU may spawn: a restricted user network's guestfwd runs a host command per connection.
seccomp_sandbox = 0
"#;

impl Libvirtd {
    /// Starts a daemon in `target/libvirt-env/<name>-<pid>/`.
    pub fn start(name: &str) -> EnvResult<Libvirtd> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "the libvirt tests run libvirtd in a private mount namespace and need root".into(),
            );
        }
        if !Path::new("/usr/sbin/libvirtd").exists() {
            return Err("/usr/sbin/libvirtd is missing: run scripts/install-deps (libvirt-daemon-system, qemu-system-x86)".into());
        }
        let dir = target_dir().join(format!("libvirt-env/{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in ["run", "lib", "etc/qemu", "cache", "log", "disks"] {
            fs::create_dir_all(dir.join(d)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        fs::write(dir.join("etc/libvirtd.conf"), LIBVIRTD_CONF).map_err(|e| e.to_string())?;
        fs::write(dir.join("etc/qemu.conf"), QEMU_CONF).map_err(|e| e.to_string())?;
        let mut d = Libvirtd { dir, child: None };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> EnvResult<()> {
        let dir = self.dir.display().to_string();
        let script = format!(
            "set -e\nfor p in /run/libvirt /var/lib/libvirt /etc/libvirt /var/cache/libvirt /var/log/libvirt; do mkdir -p $p; done\n\
             mount --bind '{dir}/run' /run/libvirt\nmount --bind '{dir}/lib' /var/lib/libvirt\n\
             mount --bind '{dir}/etc' /etc/libvirt\nmount --bind '{dir}/cache' /var/cache/libvirt\n\
             mount --bind '{dir}/log' /var/log/libvirt\n\
             exec /usr/sbin/libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid"
        );
        let out = fs::File::create(self.dir.join("daemon.out")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let _ = fs::remove_file(self.socket());
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("unshare/libvirtd did not start: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = fs::read_to_string(self.dir.join("daemon.out")).unwrap_or_default();
                return Err(format!("libvirtd exited ({status}): {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "libvirtd did not open {} within 30 s",
            self.socket().display()
        ))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt-sock")
    }

    /// The URI of this daemon for [`crate::LibvirtConfig::uris`].
    pub fn uri(&self) -> String {
        format!("qemu:///system?socket={}", self.socket().display())
    }

    /// Stops the daemon (SIGTERM, as a service manager would); running domains keep running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The daemon is `sh`'s exec: the child pid is libvirtd itself.
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill on a pid we spawned and have not reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = c.wait();
        }
    }

    /// Stops and starts the daemon with the same state directories.
    pub fn restart(&mut self) -> EnvResult<()> {
        self.stop();
        self.spawn()
    }

    /// A fresh qcow2 overlay on `image`'s root disk, for one domain.
    pub fn disk(&self, image: &Image, name: &str) -> EnvResult<PathBuf> {
        let p = self.dir.join("disks").join(format!("{name}.qcow2"));
        let _ = fs::remove_file(&p);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image.root)
            .arg(&p))?;
        Ok(p)
    }

    /// A small guest on `image` (256 MiB, 1 vCPU, serial console to `<dir>/<name>.console`);
    /// `healthy = false` boots a guest whose agent never starts and that ignores the ACPI power
    /// button.
    pub fn guest_spec(&self, image: &Image, name: &str, healthy: bool) -> EnvResult<DomainSpec> {
        let mut cmdline = "console=ttyS0 panic=-1 quiet".to_string();
        if !healthy {
            cmdline.push_str(" sdci.noagent sdci.noacpi");
        }
        Ok(DomainSpec {
            name: name.into(),
            memory_mib: 256,
            vcpus: 1,
            disk: self.disk(image, name)?,
            kernel: Some((image.kernel.clone(), image.initrd.clone(), cmdline)),
            console_log: Some(self.dir.join(format!("{name}.console"))),
            nested: false,
            extra_disks: Vec::new(),
            user_net: None,
        })
    }

    /// The tail of a domain's console, for failure messages.
    pub fn console(&self, name: &str) -> String {
        let s = fs::read_to_string(self.dir.join(format!("{name}.console"))).unwrap_or_default();
        let start = s.len().saturating_sub(2000);
        s.get(start..).unwrap_or("").to_string()
    }

    fn kill_guests(&self) {
        let Ok(rd) = fs::read_dir(self.dir.join("run/qemu")) else {
            return;
        };
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                if let Ok(pid) = fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .trim()
                    .parse::<i32>()
                {
                    // SAFETY: kill on a QEMU pid this daemon recorded.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.kill_guests();
        self.stop();
        if std::env::var_os("SDCI_KEEP_LIBVIRT_ENV").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            let _ = writeln!(
                std::io::stderr(),
                "libvirt testenv kept: {}",
                self.dir.display()
            );
        }
    }
}
