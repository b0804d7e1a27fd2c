//! A simulated Qubes machine in a directory: the stand-ins of `tests/qubes-sim/` over dom0's and
//! the qubes' trees, laid out the way contracts §2 says (CONTRACTS.md: R is dom0's `/`, another
//! qube's `/` is `R/var/lib/qubes-sim/<name>/`).
//!
//! Invariants of a world built here:
//! - dom0: `/usr/local/bin/sdci-dom0` enters dom0's view and execs the real built binary,
//!   `/etc/qubes-rpc/sdci.Run` and `/etc/qubes/policy.d/30-sdci.policy` are byte-identical copies
//!   of `qubes-rpc/`, the stand-in tools are in `/usr/bin`, and `~/.sdci/dom0.toml` points at
//!   paths inside R (and, when the tests run as root, allows dom0 to run as root).
//! - the dev VM: `/usr/local/bin/sdci-agent` is the real built binary, `qrexec-client-vm` is in
//!   `/usr/bin`, and the agent's configuration (`SDCI_AGENT_CONFIG`, in the qube's tree) keeps
//!   its event spool inside the qube's tree; it starts halted, as after a VMware snapshot revert
//!   with autostart not yet run.
//! - Views (contracts §6, when the tests run as root): every process "in" a qube (`qvm-run`,
//!   [`QubesWorld::qube_command`], a qrexec service in dom0, dom0's `sdci-dom0` entry) runs in
//!   private mount and UTS namespaces where that qube's home tree is `/home`, `HOME` is
//!   `/home/<user>` and the host name is the qube's name. Nothing of the world reaches the
//!   machine's own `/home`.
//! - dom0's logs as a real dom0 has them (contracts §11 collects them when a job fails):
//!   `journalctl` in `/usr/bin` answers `-b [--no-pager]` with a boot header and dom0's
//!   "journal"; `/var/log/xen/console/guest-<qube>.log` and `/var/log/qubes/{qubes,
//!   qrexec.<qube>,guid.<qube>}.log` exist for the running qubes and grow when `qvm-start`
//!   starts one (`qvm-shutdown` notes the shutdown), and `/var/log/qubes/mgmt-<qube>.log` is
//!   Salt's; dom0.toml's `[results] evidence_root` is R, so `sdci-dom0` reads them in R.
//! - The qubes' state (running/halted, class, tags, sizes, fault switches) lives in
//!   `R/var/lib/qubes-sim/qubes.json`; every stand-in call is appended to
//!   `R/var/log/qubes-sim/calls.jsonl`, and dom0's "journal" (qrexec decisions, service stderr)
//!   to `R/var/log/qubes-sim/journal.log`.
//!
//! tests/README.md lists which Qubes behaviours the stand-ins reproduce and which they do not.

use anyhow::{bail, Context, Result};
use sdci_protocol::paths;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The stand-in tools installed in dom0's `/usr/bin`.
pub const DOM0_TOOLS: &[&str] = &[
    "qvm-run",
    "qvm-start",
    "qvm-check",
    "qvm-ls",
    "qvm-shutdown",
    "qvm-sync-clock",
    "qubes-dom0-update",
    "qubes-vm-update",
    "qubesctl",
    "sudo",
    "qubes-policy-lint",
];

/// The stand-ins whose wrapper also writes dom0's logs of the qubes they start or stop, as
/// qubesd, the Xen console daemon, `qrexec-daemon` and `qubes-guid` do.
const LOGGING_TOOLS: &[&str] = &["qvm-start", "qvm-shutdown"];

/// The stand-in tools installed in every other qube's `/usr/bin`.
pub const QUBE_TOOLS: &[&str] = &["qrexec-client-vm"];

/// One qube besides dom0 and the dev VM (e.g. SDW's `sd-workstation`-tagged qubes).
#[derive(Debug, Clone)]
pub struct QubeSpec {
    pub name: String,
    pub class: String,
    pub tags: Vec<String>,
    pub running: bool,
}

impl QubeSpec {
    pub fn new(name: &str, class: &str, tags: &[&str], running: bool) -> Self {
        Self {
            name: name.into(),
            class: class.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            running,
        }
    }
}

/// What to build. `Default` is the world the end-to-end tests use.
#[derive(Debug, Clone)]
pub struct WorldSpec {
    pub dom0_user: String,
    pub dev_vm: String,
    /// Exec'd by dom0's `/usr/local/bin/sdci-dom0` entry, in dom0's view.
    pub dom0_binary: PathBuf,
    /// Installed as the dev VM's `/usr/local/bin/sdci-agent` (a symlink to it).
    pub agent_binary: PathBuf,
    /// The qrexec files copied into dom0 (normally the repository's `qubes-rpc/`).
    pub service_file: PathBuf,
    pub policy_file: PathBuf,
    /// Other qubes. The default has `sys-net`, `sys-firewall` (running) and two halted
    /// `sd-workstation`-tagged qubes, `sd-app` and `sd-log`.
    pub other_qubes: Vec<QubeSpec>,
}

impl Default for WorldSpec {
    fn default() -> Self {
        let rpc = crate::workspace_root().join("qubes-rpc");
        Self {
            dom0_user: "user".into(),
            dev_vm: "sd-dev".into(),
            dom0_binary: crate::binary("sdci-dom0"),
            agent_binary: crate::binary("sdci-agent"),
            service_file: rpc.join("sdci.Run"),
            policy_file: rpc.join("30-sdci.policy"),
            other_qubes: vec![
                QubeSpec::new("sys-net", "AppVM", &[], true),
                QubeSpec::new("sys-firewall", "AppVM", &[], true),
                QubeSpec::new("sd-app", "AppVM", &["sd-workstation"], false),
                QubeSpec::new("sd-log", "AppVM", &["sd-workstation"], false),
            ],
        }
    }
}

/// One recorded stand-in invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub tool: String,
    pub args: Vec<String>,
    /// `dom0` or the qube the tool ran in.
    pub caller: String,
}

/// A Qubes world rooted at a directory (dom0's `/`).
#[derive(Debug, Clone)]
pub struct QubesWorld {
    root: PathBuf,
    dom0_user: String,
    dev_vm: String,
}

/// Whether the qubes' views (contracts §6: private mount namespaces) can be entered: root only.
pub fn views_supported() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The stand-ins' source: `tests/qubes-sim/qubes_sim.py`.
pub fn sim_script() -> PathBuf {
    crate::workspace_root().join("tests/qubes-sim/qubes_sim.py")
}

/// The Python 3 interpreter the wrappers exec: Debian's `/usr/bin/python3` when present (no
/// shim start-up cost), else the first `python3` on `PATH`.
fn python3() -> Result<PathBuf> {
    let debian = Path::new("/usr/bin/python3");
    if debian.is_file() {
        return Ok(debian.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .context("python3 not found: run scripts/install-deps")
}

/// The account the tests run as (`id -un`): the simulated dom0 user's processes run as it.
fn current_user() -> Result<String> {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .context("run id -un")?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        bail!("id -un did not name the current user");
    }
    Ok(name)
}

/// `program` looked up in `path` (a PATH value) the way execvp would; unchanged if it has a `/`
/// or is not found (the spawn then reports it).
fn resolve(program: &str, path: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    std::env::split_paths(path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn write_exec(path: &Path, body: &str) -> Result<()> {
    std::fs::write(path, body).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

fn copy_mode(from: &Path, to: &Path, mode: u32) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn mkdirs(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))
}

fn symlink_force(target: &Path, link: &Path) -> Result<()> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("symlink {} -> {}", link.display(), target.display()))
}

/// Shell lines (for a stand-in's wrapper, before its `exec`) that write dom0's logs of the qubes
/// named in the arguments, as a real dom0 gets them: the Xen console log of a booting guest, its
/// qrexec and GUI daemon logs and qubesd's line in `qubes.log`. Options, their numeric values
/// and names outside Qubes' charset are skipped.
fn qube_log_hook(root: &Path, tool: &str) -> String {
    let (console, qubesd) = match tool {
        "qvm-start" => (
            "printf '[    0.000000] Linux version 6.6.63-1.qubes.fc37.x86_64 (%s)\\n             [    0.118034] Booting paravirtualized kernel on Xen PVH\\n             [    2.718281] systemd[1]: Reached target multi-user.target\\n             Debian GNU/Linux 12 %s hvc0\\n%s login: \\n' \"$q\" \"$q\" \"$q\"",
            "Starting %s",
        ),
        _ => (
            "printf '[ 9999.000000] reboot: Power down (%s)\\n' \"$q\"",
            "Shutting down %s",
        ),
    };
    format!(
        "# qubes-sim world: dom0's logs of the qubes this call starts or stops\n         R={r}\n         now=$(date -u '+%Y-%m-%d %H:%M:%S')\n         for q in \"$@\"; do\n         \x20 case \"$q\" in -*|*[!A-Za-z0-9_-]*|''|*[!0-9]*) ;; *) continue;; esac\n         \x20 case \"$q\" in -*|*[!A-Za-z0-9_-]*|'') continue;; esac\n         \x20 {{ {console}; }} >> \"$R/var/log/xen/console/guest-$q.log\" 2>/dev/null\n         \x20 printf '%s,000 vm.%s: {qubesd}\\n' \"$now\" \"$q\" \"$q\" >> \"$R/var/log/qubes/qubes.log\" 2>/dev/null\n         \x20 printf '%s qrexec-daemon: domain %s: {qubesd}\\n' \"$now\" \"$q\" \"$q\" >> \"$R/var/log/qubes/qrexec.$q.log\" 2>/dev/null\n         \x20 printf '%s qubes-guid: domain %s: {qubesd}\\n' \"$now\" \"$q\" \"$q\" >> \"$R/var/log/qubes/guid.$q.log\" 2>/dev/null\n         done\n",
        r = sh_quote(&root.to_string_lossy()),
    )
}

/// dom0's `journalctl` stand-in: `-b` (this boot) and `--no-pager` are accepted, anything else
/// is refused as the other stand-ins refuse what they do not implement; the output is a boot
/// header, the kernel's and qubesd's start lines and dom0's "journal"
/// (`var/log/qubes-sim/journal.log`: qrexec decisions, the services' stderr) in journalctl's
/// short format.
fn journalctl(root: &Path) -> String {
    format!(
        "#!/bin/sh\n         # qubes-sim stand-in (sdci_tests::qubes_world): dom0's journal\n         R={r}\n         for a in \"$@\"; do\n         \x20 case \"$a\" in -b|--boot|--no-pager) ;; *)\n         \x20   echo \"journalctl: option $a is not implemented by the qubes-sim stand-in\" >&2; exit 2;;\n         \x20 esac\n         done\n         ts=$(date '+%b %d %H:%M:%S')\n         echo '-- Boot 5d1ba4e1c0de4b1e8d7f2a9c3b6e0f11 --'\n         echo \"$ts dom0 kernel: Linux version 6.6.63-1.qubes.fc37.x86_64 (Qubes OS 4.2)\"\n         echo \"$ts dom0 kernel: Xen version 4.17.5 (hypervisor)\"\n         echo \"$ts dom0 systemd[1]: Started qubesd.service - Qubes OS daemon.\"\n         if [ -f \"$R/var/log/qubes-sim/journal.log\" ]; then\n         \x20 sed \"s/^\\([^:]*\\): /$ts dom0 \\1: /\" \"$R/var/log/qubes-sim/journal.log\"\n         fi\n",
        r = sh_quote(&root.to_string_lossy()),
    )
}

impl QubesWorld {
    /// Writes what dom0 has of a running qube's boot: its Xen console log, qrexec and GUI
    /// daemon logs, qubesd's line and (as after `sdw-admin --apply`) Salt's management log.
    fn write_boot_logs(&self, qube: &str) -> Result<()> {
        let log = |rel: String, text: String| -> Result<()> {
            use std::io::Write;
            let path = self.root.join(rel);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("write {}", path.display()))?;
            f.write_all(text.as_bytes())
                .with_context(|| format!("write {}", path.display()))
        };
        log(
            format!("var/log/xen/console/guest-{qube}.log"),
            format!(
                "[    0.000000] Linux version 6.6.63-1.qubes.fc37.x86_64 ({qube})\n                 [    0.118034] Booting paravirtualized kernel on Xen PVH\n                 [    2.718281] systemd[1]: Reached target multi-user.target\n                 Debian GNU/Linux 12 {qube} hvc0\n{qube} login: \n"
            ),
        )?;
        log(
            "var/log/qubes/qubes.log".into(),
            format!("2026-12-01 00:00:00,000 vm.{qube}: Starting {qube}\n"),
        )?;
        log(
            format!("var/log/qubes/qrexec.{qube}.log"),
            format!("qrexec-daemon: domain {qube}: connected\n"),
        )?;
        log(
            format!("var/log/qubes/guid.{qube}.log"),
            format!("qubes-guid: domain {qube}: started\n"),
        )?;
        log(
            format!("var/log/qubes/mgmt-{qube}.log"),
            format!(
                "2026-12-01 00:00:00,000 calling 'state.highstate'...\n                 2026-12-01 00:00:01,000 output: {qube}:\n                 2026-12-01 00:00:01,000 output: Summary for {qube}\n                 2026-12-01 00:00:01,000 output: Succeeded: 12 (changed=3)\n                 2026-12-01 00:00:01,000 output: Failed:     0\n"
            ),
        )
    }

    /// Lays out the default world in `root` (created if missing).
    pub fn create(root: &Path) -> Result<Self> {
        Self::create_with(root, &WorldSpec::default())
    }

    /// Lays out a world in `root` from `spec`. `root` should be empty; files already there are
    /// overwritten.
    pub fn create_with(root: &Path, spec: &WorldSpec) -> Result<Self> {
        mkdirs(root)?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolve {}", root.display()))?;
        let world = Self {
            root,
            dom0_user: spec.dom0_user.clone(),
            dev_vm: spec.dev_vm.clone(),
        };
        let r = &world.root;
        let python = python3()?;
        let script = sim_script();
        if !script.is_file() {
            bail!("{} is missing", script.display());
        }
        let wrapper = |tool: &str| {
            format!(
                "#!/bin/sh\n# qubes-sim stand-in (tests/qubes-sim/qubes_sim.py)\nexec {} {} {} \"$@\"\n",
                sh_quote(&python.to_string_lossy()),
                sh_quote(&script.to_string_lossy()),
                tool
            )
        };

        // dom0
        for dir in [
            "usr/bin",
            "usr/local/bin",
            "etc/qubes-rpc",
            "etc/qubes/policy.d",
            "var/lib/qubes-sim",
            "var/log/qubes-sim",
        ] {
            mkdirs(&r.join(dir))?;
        }
        for dir in [
            "var/log/xen/console",
            "var/log/qubes",
            "var/log/salt",
            "tmp",
        ] {
            mkdirs(&r.join(dir))?;
        }
        for tool in DOM0_TOOLS {
            let body = if LOGGING_TOOLS.contains(tool) {
                let w = wrapper(tool);
                let (shebang, rest) = w.split_once('\n').unwrap_or((&w, ""));
                format!("{shebang}\n{}{rest}", qube_log_hook(r, tool))
            } else {
                wrapper(tool)
            };
            write_exec(&r.join("usr/bin").join(tool), &body)?;
        }
        write_exec(&r.join("usr/bin/journalctl"), &journalctl(r))?;
        let entry = r.join("usr/local/bin/sdci-dom0");
        let _ = std::fs::remove_file(&entry);
        write_exec(
            &entry,
            &format!(
                "#!/bin/sh\n# qubes-sim world (contracts §6): sdci-dom0 in dom0's view, of the\n\
                 # VM it runs in (a clone's R is a copy of this one, contracts §2)\n\
                 R={}\n[ -z \"$SDCI_GUEST_ROOT\" ] || R=$SDCI_GUEST_ROOT\n\
                 exec {} {} in-qube \"$R\" dom0 {} \"$@\"\n",
                sh_quote(&r.to_string_lossy()),
                sh_quote(&python.to_string_lossy()),
                sh_quote(&script.to_string_lossy()),
                sh_quote(&spec.dom0_binary.to_string_lossy()),
            ),
        )?;
        copy_mode(&spec.service_file, &r.join("etc/qubes-rpc/sdci.Run"), 0o755)?;
        copy_mode(
            &spec.policy_file,
            &r.join("etc/qubes/policy.d/30-sdci.policy"),
            0o644,
        )?;
        let home = world.dom0_home();
        mkdirs(&home.join(paths::JOBS_DIR))?;
        // sdci-dom0 runs in dom0's view, where dom0's home is /home/<user> (contracts §6);
        // without views, the same directories by their real paths.
        let home_seen = if views_supported() {
            Path::new("/home").join(&spec.dom0_user)
        } else {
            home.clone()
        };
        let mut dom0_toml = format!(
            "# qubes-sim world: sdci-dom0's paths (dom0's home inside the world root); the\n\
             # processes of the world run as the test's own account\n\
             jobs_dir = {:?}\ncheckout_dir = {:?}\nuser = {:?}\n",
            home_seen.join(paths::JOBS_DIR).to_string_lossy(),
            home_seen.join("securedrop-workstation").to_string_lossy(),
            current_user()?,
        );
        if views_supported() {
            dom0_toml.push_str(
                "# the simulated dom0 runs as root (tests run as root)\nallow_root = true\n",
            );
        }
        dom0_toml.push_str(&format!(
            "# dom0's /var/log and /tmp are the world's (contracts §11)\n[results]\n\
             evidence_root = {:?}\n",
            r.to_string_lossy()
        ));
        std::fs::write(home.join(paths::DOM0_CONFIG), dom0_toml).context("write dom0.toml")?;

        // the other qubes
        let mut qubes = serde_json::Map::new();
        qubes.insert(
            "dom0".into(),
            json!({"class": "AdminVM", "state": "running", "tags": [], "label": "black"}),
        );
        let agent_config = world.write_agent_config(&spec.dev_vm)?;
        qubes.insert(
            spec.dev_vm.clone(),
            json!({
                "class": "StandaloneVM", "state": "halted", "tags": [], "label": "red",
                "template": "debian-12-xfce", "netvm": "sys-firewall", "autostart": true,
                "volumes": {"root": "50G", "private": "20G"},
                "env": {"SDCI_AGENT_CONFIG": agent_config},
            }),
        );
        for q in &spec.other_qubes {
            qubes.insert(
                q.name.clone(),
                json!({
                    "class": q.class, "tags": q.tags, "label": "red",
                    "state": if q.running { "running" } else { "halted" },
                }),
            );
        }
        for name in qubes.keys().filter(|n| *n != "dom0") {
            let qroot = world.qube_root(name);
            mkdirs(&qroot.join("usr/bin"))?;
            mkdirs(&qroot.join("usr/local/bin"))?;
            mkdirs(&qroot.join("home/user"))?;
            for tool in QUBE_TOOLS {
                write_exec(&qroot.join("usr/bin").join(tool), &wrapper(tool))?;
            }
        }
        symlink_force(
            &spec.agent_binary,
            &world
                .qube_root(&spec.dev_vm)
                .join("usr/local/bin/sdci-agent"),
        )?;
        for (name, q) in &qubes {
            if name != "dom0" && q["state"] == "running" {
                world.write_boot_logs(name)?;
            }
        }
        let state = json!({
            "dom0_user": spec.dom0_user,
            "base_path": std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            "qubes": qubes,
        });
        world.write_state(&state)?;
        Ok(world)
    }

    /// Writes the agent's configuration into `qube`'s tree and returns its path: the event spool
    /// stays in the qube's tree (only /home is per qube, contracts §6; the spool's default,
    /// /var/tmp, would be the machine's).
    fn write_agent_config(&self, qube: &str) -> Result<PathBuf> {
        let root = self.qube_root(qube);
        let path = root.join("etc/sdci/agent.toml");
        mkdirs(&root.join("etc/sdci"))?;
        std::fs::write(
            &path,
            format!(
                "# qubes-sim world: the agent's spool inside the qube's tree\n[run]\nspool_dir = {:?}\n",
                root.join("var/tmp/sdci-agent").to_string_lossy()
            ),
        )
        .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Opens a world that was laid out before (e.g. restored from a snapshot copy).
    pub fn open(root: &Path) -> Result<Self> {
        let root = root.to_path_buf();
        let text = std::fs::read_to_string(root.join("var/lib/qubes-sim/qubes.json"))
            .with_context(|| format!("{} is not a Qubes world", root.display()))?;
        let state: Value = serde_json::from_str(&text)?;
        let dom0_user = state["dom0_user"].as_str().unwrap_or("user").to_string();
        let dev_vm = state["qubes"]
            .as_object()
            .and_then(|q| {
                q.iter()
                    .find(|(_, v)| v["class"] == "StandaloneVM")
                    .map(|(k, _)| k.clone())
            })
            .unwrap_or_else(|| "sd-dev".into());
        Ok(Self {
            root,
            dom0_user,
            dev_vm,
        })
    }

    /// dom0's `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dev_vm(&self) -> &str {
        &self.dev_vm
    }

    pub fn dom0_user(&self) -> &str {
        &self.dom0_user
    }

    /// A qube's `/` (`R` for dom0).
    pub fn qube_root(&self, name: &str) -> PathBuf {
        if name == "dom0" {
            self.root.clone()
        } else {
            self.root.join("var/lib/qubes-sim").join(name)
        }
    }

    /// dom0's home directory (`R/home/<dom0 user>`).
    pub fn dom0_home(&self) -> PathBuf {
        self.root.join("home").join(&self.dom0_user)
    }

    /// A qube's home directory.
    pub fn qube_home(&self, name: &str) -> PathBuf {
        if name == "dom0" {
            self.dom0_home()
        } else {
            self.qube_root(name).join("home/user")
        }
    }

    /// The environment a dom0 process gets from the vSphere simulator (contracts §2).
    pub fn dom0_env(&self) -> Vec<(String, String)> {
        let host_path = std::env::var("PATH").unwrap_or_default();
        vec![
            ("HOME".into(), self.dom0_home().to_string_lossy().into()),
            (
                "PATH".into(),
                format!(
                    "{}:{}:{host_path}",
                    self.root.join("usr/local/bin").display(),
                    self.root.join("usr/bin").display()
                ),
            ),
            ("SDCI_GUEST_ROOT".into(), self.root.to_string_lossy().into()),
        ]
    }

    /// A command run in dom0 as the host's guest operations would: `program` is looked up in
    /// dom0's PATH, cwd is dom0's home.
    pub fn dom0_command(&self, program: &str) -> Command {
        let env = self.dom0_env();
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut cmd = Command::new(resolve(program, &path));
        cmd.envs(env).current_dir(self.dom0_home());
        cmd
    }

    /// A command run "in" a running qube, with the environment `qvm-run` gives (HOME, PATH with
    /// the qube's `/usr/local/bin`, `SDCI_QUBE`...) and in the qube's view (as root), as if
    /// started by `qvm-run --pass-io`. Extra arguments go to `program`.
    pub fn qube_command(&self, qube: &str, program: &str) -> Command {
        let root = self.qube_root(qube);
        let state = self.state().unwrap_or_default();
        let host_path = state["base_path"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| std::env::var("PATH").unwrap_or_default());
        let path = format!(
            "{}:{}:{host_path}",
            root.join("usr/local/bin").display(),
            root.join("usr/bin").display()
        );
        let python = python3().unwrap_or_else(|_| PathBuf::from("python3"));
        let mut cmd = Command::new(python);
        cmd.arg(sim_script())
            .arg("in-qube")
            .arg(&self.root)
            .arg(qube)
            .arg(resolve(program, &path));
        cmd.env_clear()
            .env("HOME", self.qube_home(qube))
            .env("USER", "user")
            .env("PATH", path)
            .env("SDCI_GUEST_ROOT", &self.root)
            .env("SDCI_QUBES_DOM0_ROOT", &self.root)
            .env("SDCI_QUBE", qube)
            .env("SDCI_QUBE_ROOT", &root)
            .current_dir(self.qube_home(qube));
        // The simulation's per-qube variables, as `qvm-run` adds them.
        if let Some(extra) = state["qubes"][qube]["env"].as_object() {
            for (k, v) in extra {
                cmd.env(k, v.as_str().unwrap_or_default());
            }
        }
        cmd
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("var/lib/qubes-sim/qubes.json")
    }

    /// The qubes' state as the stand-ins see it.
    pub fn state(&self) -> Result<Value> {
        let text = std::fs::read_to_string(self.state_path()).context("read qubes.json")?;
        Ok(serde_json::from_str(&text)?)
    }

    fn write_state(&self, state: &Value) -> Result<()> {
        let tmp = self.state_path().with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(state)? + "\n")
            .context("write qubes.json")?;
        std::fs::rename(&tmp, self.state_path()).context("replace qubes.json")
    }

    /// Changes the state (tests and fault injection; not while stand-ins run concurrently).
    pub fn update_state(&self, change: impl FnOnce(&mut Value)) -> Result<()> {
        let mut state = self.state()?;
        change(&mut state);
        self.write_state(&state)
    }

    /// `running` or `halted`.
    pub fn qube_state(&self, name: &str) -> Result<String> {
        let state = self.state()?;
        match state["qubes"][name]["state"].as_str() {
            Some(s) => Ok(s.to_string()),
            None => bail!("no qube {name} in the world"),
        }
    }

    pub fn set_running(&self, name: &str, running: bool) -> Result<()> {
        self.update_state(|s| {
            s["qubes"][name]["state"] = json!(if running { "running" } else { "halted" });
        })
    }

    /// Renames a qube (its state entry and its tree), as `qvm-clone` + `qvm-remove` would.
    pub fn rename_qube(&mut self, from: &str, to: &str) -> Result<()> {
        let mut state = self.state()?;
        let Some(qubes) = state["qubes"].as_object_mut() else {
            bail!("qubes.json has no qubes");
        };
        let Some(mut q) = qubes.remove(from) else {
            bail!("no qube {from} in the world");
        };
        std::fs::rename(self.qube_root(from), self.qube_root(to)).context("move qube tree")?;
        if q["env"]["SDCI_AGENT_CONFIG"].is_string() {
            q["env"]["SDCI_AGENT_CONFIG"] = json!(self.write_agent_config(to)?);
        }
        qubes.insert(to.into(), q);
        self.write_state(&state)?;
        if self.dev_vm == from {
            self.dev_vm = to.into();
        }
        Ok(())
    }

    /// Makes a stand-in tool exit with `code` (0 removes the fault).
    pub fn fail_tool(&self, tool: &str, code: i32) -> Result<()> {
        self.update_state(|s| {
            if !s["tool_exit"].is_object() {
                s["tool_exit"] = json!({});
            }
            s["tool_exit"][tool] = json!(code);
        })
    }

    /// Every stand-in invocation so far, in order.
    pub fn calls(&self) -> Result<Vec<Call>> {
        let path = self.root.join("var/log/qubes-sim/calls.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("read calls.jsonl"),
        };
        text.lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).context("parse calls.jsonl")?;
                Ok(Call {
                    tool: v["tool"].as_str().unwrap_or_default().into(),
                    args: v["args"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|x| x.as_str().unwrap_or_default().to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                    caller: v["caller"].as_str().unwrap_or_default().into(),
                })
            })
            .collect()
    }

    /// dom0's journal: qrexec policy decisions and the services' stderr.
    pub fn journal(&self) -> String {
        std::fs::read_to_string(self.root.join("var/log/qubes-sim/journal.log")).unwrap_or_default()
    }
}
