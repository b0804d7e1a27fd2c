//! The golden-snapshot Salt states (`salt/`) render and apply with the real `salt-call --local`
//! (Salt 3007 from PyPI, installed by `scripts/install-deps` into `.sdci-cache/salt-venv`).
//!
//! Every run gets its own minion configuration, root_dir, cache and pillar in a temporary
//! directory; `file_roots` is a temporary directory holding the built binaries (what an
//! administrator copies into `salt/sdci/files/`) followed by the repository's `salt/` tree. The
//! dom0 state is applied into a temporary root given through the pillar `sdci:root`.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn salt_call() -> PathBuf {
    let venv = sdci_tests::workspace_root().join(".sdci-cache/salt-venv/bin/salt-call");
    if venv.is_file() {
        return venv;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("salt-call"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "salt-call not found (neither {} nor on PATH): run scripts/install-deps, which \
                 installs Salt 3007 from PyPI into .sdci-cache/salt-venv",
                venv.display()
            )
        })
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One isolated Salt minion: config, root_dir, pillar, an extra file root, and a target root.
struct Minion {
    tmp: tempfile::TempDir,
}

impl Minion {
    fn new(minion_id: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path();
        for d in [
            "conf",
            "salt-root",
            "pillar",
            "extra/sdci/files",
            "target",
            "bin",
        ] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        // The binaries an administrator copies into salt/sdci/files/ before provisioning.
        for bin in ["sdci-dom0", "sdci-agent"] {
            let built = sdci_tests::binary(bin);
            std::fs::copy(&built, p.join("extra/sdci/files").join(bin)).unwrap_or_else(|e| {
                panic!(
                    "copy {} (build the workspace's binaries first: cargo build --workspace \
                     --bins): {e}",
                    built.display()
                )
            });
        }
        // qubes-policy-lint as on Qubes 4.2+, from the Qubes stand-ins (same policy parser).
        let lint = p.join("bin/qubes-policy-lint");
        std::fs::write(
            &lint,
            format!(
                "#!/bin/sh\nexec python3 '{}' qubes-policy-lint \"$@\"\n",
                sdci_tests::qubes_world::sim_script().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&lint, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = json!({
            "id": minion_id,
            "file_client": "local",
            "root_dir": p.join("salt-root"),
            "file_roots": {"base": [p.join("extra"), sdci_tests::workspace_root().join("salt")]},
            "pillar_roots": {"base": [p.join("pillar")]},
            "state_top": "salt://sdci/init.top",
            "log_level_logfile": "warning",
        });
        // JSON is YAML: the minion file is written as JSON.
        std::fs::write(p.join("conf/minion"), config.to_string()).unwrap();
        Self { tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// The temporary root the dom0 state writes into.
    fn target(&self) -> PathBuf {
        self.path("target")
    }

    /// Pillar for applying into the target root as the current (root) user.
    fn pillar(&self, extra: Value) -> Value {
        let mut sdci = json!({"root": self.target(), "dom0_user": id("-un")});
        if let (Some(base), Some(more)) = (sdci.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                base.insert(k.clone(), v.clone());
            }
        }
        json!({ "sdci": sdci })
    }

    /// Runs `salt-call --local FUNCTION ARGS...`; returns the `local` part of the JSON output.
    fn call(&self, args: &[String]) -> (bool, Value) {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(salt_call())
            .arg("--local")
            .arg("-c")
            .arg(self.path("conf"))
            .args(["--out=json", "--retcode-passthrough", "--log-level=quiet"])
            .args(args)
            .env("PATH", path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "salt-call {args:?} printed no JSON ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v["local"].clone())
    }

    fn show_sls(&self, sls: &str) -> Value {
        let (ok, v) = self.call(&["state.show_sls".into(), sls.into()]);
        assert!(ok && v.is_object(), "{sls} does not render: {v:#}");
        v
    }

    fn apply(&self, sls: &str, pillar: &Value, test: bool) -> (bool, Vec<Value>) {
        let (ok, v) = self.call(&[
            "state.apply".into(),
            sls.into(),
            format!("test={}", if test { "True" } else { "False" }),
            format!("pillar={pillar}"),
        ]);
        let Some(results) = v.as_object() else {
            panic!("state.apply {sls} failed to compile: {v:#}");
        };
        let mut results: Vec<Value> = results.values().cloned().collect();
        results.sort_by_key(|r| r["__run_num__"].as_u64());
        (ok, results)
    }
}

fn by_id<'a>(results: &'a [Value], id: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["__id__"] == id)
        .unwrap_or_else(|| panic!("no state {id} in {results:#?}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn require_root() {
    assert_eq!(
        id("-u"),
        "0",
        "these tests apply states that install root-owned files: run them as root (CI does)"
    );
}

const DOM0_PACKAGES: &str = "make open-vm-tools python3-pytest python3-pytest-cov \
                             python3-pytest-xdist python3-pytest-mock python3-systemd";

#[test]
fn salt_tree_takes_the_qrexec_files_from_qubes_rpc_and_keeps_binaries_out_of_git() {
    let files = sdci_tests::workspace_root().join("salt/sdci/files");
    for name in ["sdci.Run", "30-sdci.policy"] {
        let link = std::fs::read_link(files.join(name)).unwrap();
        assert_eq!(link, Path::new("../../../qubes-rpc").join(name));
    }
    let ignore = std::fs::read_to_string(files.join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "/sdci-dom0"));
    assert!(ignore.lines().any(|l| l == "/sdci-agent"));
}

#[test]
fn every_state_renders_with_the_real_salt() {
    let m = Minion::new("dom0");
    for (sls, ids) in [
        (
            "sdci.dom0",
            &[
                "sdci-dom0-packages",
                "sdci-dom0-vmtoolsd",
                "sdci-dom0-binary",
                "sdci-qrexec-service",
                "sdci-qrexec-policy",
                "sdci-dom0-jobs-dir",
                "sdci-dom0-config",
                "sdci-dev-vm",
                "sdci-dev-vm-autostart",
            ][..],
        ),
        (
            "sdci.dom0.files",
            &["sdci-dom0-binary", "sdci-dom0-config"][..],
        ),
        ("sdci.dom0.packages", &["sdci-dom0-packages"][..]),
        (
            "sdci.dom0.dev-vm",
            &["sdci-dev-vm-root-size", "sdci-dev-vm-private-size"][..],
        ),
        (
            "sdci.sd-dev",
            &[
                "sdci-dev-packages",
                "sdci-agent-binary",
                "sdci-agent-config",
            ][..],
        ),
    ] {
        let v = m.show_sls(sls);
        for id in ids {
            assert!(v.get(*id).is_some(), "{sls} lacks {id}: {v:#}");
        }
    }
    let dev = m.show_sls("sdci.sd-dev");
    let pkgs = &dev["sdci-dev-packages"]["pkg"][0]["pkgs"];
    assert_eq!(pkgs, &json!(["git", "make", "podman", "ca-certificates"]));
    assert_eq!(
        dev["sdci-agent-binary"]["file"][0]["name"],
        "/usr/local/bin/sdci-agent"
    );
}

#[test]
fn top_file_gives_dom0_and_the_dev_vm_their_states() {
    // dom0 with the example pillar this repository ships (all defaults): it must parse.
    let m = Minion::new("dom0");
    let shipped = sdci_tests::workspace_root().join("salt/pillar/sdci");
    std::fs::create_dir_all(m.path("pillar/sdci")).unwrap();
    for f in ["init.top", "init.sls"] {
        std::fs::copy(shipped.join(f), m.path("pillar/sdci").join(f)).unwrap();
    }
    let (ok, pillar) = m.call(&["pillar.items".into()]);
    assert!(ok && pillar == json!({"sdci": {}}), "{pillar:#}");
    let (ok, top) = m.call(&["state.show_top".into()]);
    assert!(ok && top == json!({"base": ["sdci.dom0"]}), "{top:#}");

    for (minion, pillar, want) in [
        ("dom0", None, "sdci.dom0"),
        ("sd-dev", None, "sdci.sd-dev"),
        ("ci-dev", Some("sdci:\n  dev_vm: ci-dev\n"), "sdci.sd-dev"),
    ] {
        let m = Minion::new(minion);
        if let Some(sls) = pillar {
            // The top file is rendered with the minion's pillar (as in dom0's /srv/pillar).
            // Salt looks for the pillar's top file under the same name as the state top.
            std::fs::create_dir_all(m.path("pillar/sdci")).unwrap();
            std::fs::write(
                m.path("pillar/sdci/init.top"),
                "base:\n  '*':\n    - sdci\n",
            )
            .unwrap();
            std::fs::write(m.path("pillar/sdci.sls"), sls).unwrap();
        }
        let (ok, top) = m.call(&["state.show_top".into()]);
        assert!(ok, "{top:#}");
        assert_eq!(top, json!({"base": [want]}), "minion {minion}");
    }
}

#[test]
fn dom0_state_in_test_mode_lists_every_file_and_command_and_writes_nothing() {
    let m = Minion::new("dom0");
    let (ok, results) = m.apply("sdci.dom0", &m.pillar(json!({})), true);
    assert!(ok, "{results:#?}");
    let t = m.target();
    let home = t.join("home").join(id("-un"));
    for (state, file) in [
        ("sdci-dom0-binary", t.join("usr/local/bin/sdci-dom0")),
        ("sdci-qrexec-service", t.join("etc/qubes-rpc/sdci.Run")),
        (
            "sdci-qrexec-policy",
            t.join("etc/qubes/policy.d/30-sdci.policy"),
        ),
        ("sdci-dom0-config", home.join(".sdci/dom0.toml")),
    ] {
        let r = by_id(&results, state);
        assert_eq!(r["result"], Value::Null, "{state}: {r:#}");
        assert_eq!(r["changes"]["newfile"], json!(file), "{state}");
    }
    for (state, dir) in [
        ("sdci-dom0-state-dir", home.join(".sdci")),
        ("sdci-dom0-jobs-dir", home.join(".sdci/jobs")),
    ] {
        let r = by_id(&results, state);
        assert_eq!(
            r["changes"][dir.to_string_lossy().as_ref()]["directory"],
            "new"
        );
    }
    for (state, cmd) in [
        (
            "sdci-dom0-packages",
            format!("qubes-dom0-update -y {DOM0_PACKAGES}"),
        ),
        (
            "sdci-dom0-vmtoolsd",
            "systemctl enable --now vmtoolsd.service".into(),
        ),
        (
            "sdci-dev-vm",
            "qvm-create --class StandaloneVM --template debian-12-xfce --label red sd-dev".into(),
        ),
        (
            "sdci-dev-vm-root-size",
            "qvm-volume resize sd-dev:root 50G".into(),
        ),
        (
            "sdci-dev-vm-private-size",
            "qvm-volume resize sd-dev:private 20G".into(),
        ),
        (
            "sdci-dev-vm-autostart",
            "qvm-prefs sd-dev autostart True".into(),
        ),
    ] {
        let r = by_id(&results, state);
        assert_eq!(r["changes"]["cmd"], json!(cmd), "{state}: {r:#}");
    }
    let written: Vec<_> = walk(&t);
    assert!(written.is_empty(), "test mode wrote {written:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn dom0_files_install_byte_identical_qrexec_files_binary_and_config_with_their_modes() {
    require_root();
    let m = Minion::new("dom0");
    let pillar = m.pillar(json!({}));
    let (ok, results) = m.apply("sdci.dom0.files", &pillar, false);
    assert!(ok, "{results:#?}");
    let t = m.target();
    let rpc = sdci_tests::workspace_root().join("qubes-rpc");
    for (installed, source, want_mode) in [
        ("etc/qubes-rpc/sdci.Run", rpc.join("sdci.Run"), 0o755),
        (
            "etc/qubes/policy.d/30-sdci.policy",
            rpc.join("30-sdci.policy"),
            0o644,
        ),
        (
            "usr/local/bin/sdci-dom0",
            m.path("extra/sdci/files/sdci-dom0"),
            0o755,
        ),
    ] {
        let path = t.join(installed);
        assert!(
            std::fs::read(&path).unwrap() == std::fs::read(&source).unwrap(),
            "{installed} differs from {}",
            source.display()
        );
        assert_eq!(mode(&path), want_mode, "{installed}");
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), 0, "{installed}");
    }
    let home = t.join("home").join(id("-un"));
    assert_eq!(mode(&home.join(".sdci")), 0o700);
    assert_eq!(mode(&home.join(".sdci/jobs")), 0o700);
    assert_eq!(mode(&home.join(".sdci/dom0.toml")), 0o644);
    let config = std::fs::read_to_string(home.join(".sdci/dom0.toml")).unwrap();
    assert_eq!(
        config,
        format!(
            "# Written by Salt (state sdci.dom0.files); change the pillar `sdci:`, not this file.\n\
             # Options and their defaults: README.md, section \"dom0 configuration\".\n\
             checkout_dir = \"{h}/securedrop-workstation\"\n\
             jobs_dir = \"{h}/.sdci/jobs\"\n\
             user = \"{u}\"\n",
            h = home.display(),
            u = id("-un"),
        )
    );
    // A second run changes nothing.
    let (ok, again) = m.apply("sdci.dom0.files", &pillar, true);
    assert!(ok);
    for r in &again {
        assert_eq!(r["result"], true, "not idempotent: {r:#}");
        assert_eq!(r["changes"], json!({}), "not idempotent: {r:#}");
    }
}

#[test]
fn a_policy_that_fails_the_lint_is_never_installed() {
    require_root();
    let m = Minion::new("dom0");
    // A site copy of the policy with an error (allow to @default needs target=).
    std::fs::write(
        m.path("extra/sdci/files/30-sdci.policy"),
        "sdci.Run  *  sd-dev  @default  allow\n",
    )
    .unwrap();
    let (ok, results) = m.apply("sdci.dom0.files", &m.pillar(json!({})), false);
    assert!(!ok);
    let r = by_id(&results, "sdci-qrexec-policy");
    assert_eq!(r["result"], false);
    assert!(
        r["comment"].to_string().contains("check_cmd"),
        "the lint did not run: {r:#}"
    );
    assert!(!m
        .target()
        .join("etc/qubes/policy.d/30-sdci.policy")
        .exists());
    assert!(m.target().join("etc/qubes-rpc/sdci.Run").exists());
}

#[test]
fn pillar_sets_the_site_values() {
    require_root();
    let m = Minion::new("dom0");
    let pillar = m.pillar(json!({
        "dev_vm": "ci-dev",
        "dev_vm_template": "debian-13-xfce",
        "dev_vm_label": "orange",
        "dev_vm_root_size": "80G",
        "dev_vm_private_size": "40G",
        "dev_vm_autostart": false,
        "dom0_packages": ["make", "open-vm-tools"],
        "dom0_config": {"drain_secs": 3, "limits": {"max_entries": 1000}},
    }));
    let (ok, results) = m.apply("sdci.dom0", &pillar, true);
    assert!(ok, "{results:#?}");
    let cmd = |id: &str| by_id(&results, id)["changes"]["cmd"].clone();
    assert_eq!(
        cmd("sdci-dev-vm"),
        "qvm-create --class StandaloneVM --template debian-13-xfce --label orange ci-dev"
    );
    assert_eq!(
        cmd("sdci-dev-vm-root-size"),
        "qvm-volume resize ci-dev:root 80G"
    );
    assert_eq!(
        cmd("sdci-dev-vm-private-size"),
        "qvm-volume resize ci-dev:private 40G"
    );
    assert_eq!(
        cmd("sdci-dev-vm-autostart"),
        "qvm-prefs ci-dev autostart False"
    );
    assert_eq!(
        cmd("sdci-dom0-packages"),
        "qubes-dom0-update -y make open-vm-tools"
    );
    let (ok, _) = m.apply("sdci.dom0.files", &pillar, false);
    assert!(ok);
    let home = m.target().join("home").join(id("-un"));
    let config = std::fs::read_to_string(home.join(".sdci/dom0.toml")).unwrap();
    assert!(config.contains("\ndrain_secs = 3\n"), "{config}");
    assert!(
        config.ends_with("\n[limits]\nmax_entries = 1000\n"),
        "{config}"
    );
}

#[test]
fn dev_vm_state_installs_the_agent_and_renders_its_config_from_pillar() {
    require_root();
    let m = Minion::new("sd-dev");
    let pillar = m.pillar(json!({"agent_config": {
        "context": "ci/qubes",
        "retry": {"max_attempts": 7},
    }}));
    for id in ["sdci-agent-binary", "sdci-agent-config"] {
        let (ok, v) = m.call(&[
            "state.sls_id".into(),
            id.into(),
            "sdci.sd-dev".into(),
            format!("pillar={pillar}"),
        ]);
        assert!(ok, "{id}: {v:#}");
    }
    let agent = m.target().join("usr/local/bin/sdci-agent");
    assert!(
        std::fs::read(&agent).unwrap()
            == std::fs::read(m.path("extra/sdci/files/sdci-agent")).unwrap()
    );
    assert_eq!(mode(&agent), 0o755);
    let config = m.target().join("etc/sdci/agent.toml");
    assert_eq!(mode(&config), 0o644);
    assert_eq!(
        std::fs::read_to_string(config).unwrap(),
        "# Written by Salt (state sdci.sd-dev); change the pillar `sdci:agent_config`, not this file.\n\
         # Options and their defaults: README.md, section \"Agent configuration\".\n\
         context = \"ci/qubes\"\n\
         \n\
         [retry]\n\
         max_attempts = 7\n"
    );
}

/// With the packages `packaging/build` makes placed in `salt/sdci/files/`, the states install
/// them instead of the loose binaries (salt/README.md, step 3); the qrexec files stay managed
/// from `qubes-rpc/` and now wait for the package.
#[test]
fn placed_packages_replace_the_loose_binaries() {
    let m = Minion::new("dom0");
    let files = m.path("extra/sdci/files");
    std::fs::write(files.join("sdci-dom0.rpm"), b"an rpm").unwrap();
    std::fs::write(files.join("sdci-agent.deb"), b"a deb").unwrap();
    let dom0 = m.show_sls("sdci.dom0.files");
    let pkg = &dom0["sdci-dom0-binary"]["pkg"];
    assert_eq!(
        pkg[0]["sources"],
        json!([{"sdci-dom0": "salt://sdci/files/sdci-dom0.rpm"}]),
        "{dom0:#}"
    );
    assert!(dom0["sdci-dom0-binary"].get("file").is_none());
    let service = dom0["sdci-qrexec-service"]["file"].as_array().unwrap();
    assert!(
        service
            .iter()
            .any(|a| a["require"] == json!(["sdci-dom0-binary"])),
        "{dom0:#}"
    );
    let dev = m.show_sls("sdci.sd-dev");
    assert_eq!(
        dev["sdci-agent-binary"]["pkg"][0]["sources"],
        json!([{"sdci-agent": "salt://sdci/files/sdci-agent.deb"}]),
        "{dev:#}"
    );
}
