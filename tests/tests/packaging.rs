//! The packages `packaging/build` made (`target/packages/`), installed the way an operator
//! would, into a scratch root with the real `dpkg -x` and `rpm2cpio | cpio`: the unpacked
//! `sdci-host` reads the example `/etc/sdci/host.toml` it ships (`check-config`), every secret
//! path of the example configuration is a `LoadCredential=` of the unit, and the RPM carries the
//! repository's exact qrexec bytes.
//!
//! Needs `bash packaging/build` first (scripts/test runs it before the tests); without the
//! packages each test fails, unless `SDCI_ALLOW_SKIP=1`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The one package in `target/packages` whose name starts with `prefix`, or `None` when
/// skipping is allowed.
fn package(prefix: &str) -> Option<PathBuf> {
    let dir = sdci_tests::workspace_root().join("target/packages");
    let found = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        });
    if found.is_none() && std::env::var("SDCI_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("skipped: no {prefix}* in {}", dir.display());
        return None;
    }
    Some(found.unwrap_or_else(|| {
        panic!(
            "no {prefix}* in {}: run `bash packaging/build` first",
            dir.display()
        )
    }))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn unpack_debs(root: &Path) -> bool {
    let (Some(host), Some(agent)) = (package("sdci-host_"), package("sdci-agent_")) else {
        return false;
    };
    for deb in [host, agent] {
        let (code, _, err) = run(Command::new("dpkg").arg("-x").arg(&deb).arg(root));
        assert_eq!(code, 0, "dpkg -x {}: {err}", deb.display());
    }
    true
}

#[test]
fn the_unpacked_deb_checks_its_own_example_configuration() {
    let root = tempfile::tempdir().unwrap();
    if !unpack_debs(root.path()) {
        return;
    }
    let bin = root.path().join("usr/bin/sdci-host");
    let config = root.path().join("etc/sdci/host.toml");
    let (code, out, err) = run(Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    assert_eq!(code, 0, "check-config of the shipped example: {out}{err}");
    assert!(out.contains(": valid"), "{out}");
    assert!(out.contains("data_dir = \"/var/lib/sdci\""), "{out}");
    // Outside the unit the credentials are absent: named as warnings, never as contents.
    assert!(
        out.contains("/run/credentials/sdci-host.service/webhook-secret"),
        "{out}"
    );
    let (code, out, _) = run(Command::new(root.path().join("usr/bin/sdci-agent")).arg("--version"));
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

#[test]
fn every_secret_of_the_example_configuration_is_a_credential_of_the_unit() {
    let root = tempfile::tempdir().unwrap();
    if !unpack_debs(root.path()) {
        return;
    }
    let unit =
        std::fs::read_to_string(root.path().join("usr/lib/systemd/system/sdci-host.service"))
            .unwrap();
    for want in [
        "Type=notify",
        "User=sdci",
        "StateDirectory=sdci",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "ExecStart=/usr/bin/sdci-host --config /etc/sdci/host.toml serve",
    ] {
        assert!(
            unit.lines().any(|l| l == want),
            "{want} missing in the unit"
        );
    }
    const DIR: &str = "/run/credentials/sdci-host.service/";
    let mut seen = 0;
    for file in ["etc/sdci/host.toml", "etc/sdci/agent.toml"] {
        let text = std::fs::read_to_string(root.path().join(file)).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if let Some(rest) = line.split(DIR).nth(1) {
                let name = rest.split('"').next().unwrap();
                assert!(
                    unit.lines()
                        .any(|l| l.starts_with(&format!("LoadCredential={name}:"))),
                    "{file} reads {DIR}{name}, which the unit does not load"
                );
                seen += 1;
            }
        }
    }
    assert!(
        seen >= 4,
        "the example configurations name {seen} credentials"
    );
    // The system user the unit runs as comes with the package.
    let sysusers =
        std::fs::read_to_string(root.path().join("usr/lib/sysusers.d/sdci.conf")).unwrap();
    assert!(
        sysusers.lines().any(|l| l.starts_with("u sdci ")),
        "{sysusers}"
    );
}

#[test]
fn the_dom0_rpm_carries_the_repositorys_qrexec_files_and_sdci_dom0() {
    let Some(rpm) = package("sdci-dom0-") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (code, _, err) = run(Command::new("sh")
        .arg("-c")
        .arg("rpm2cpio \"$1\" | cpio -idm --quiet")
        .arg("sh")
        .arg(&rpm)
        .current_dir(root.path()));
    assert_eq!(code, 0, "{err}");
    let repo = sdci_tests::workspace_root().join("qubes-rpc");
    for (ours, theirs) in [
        ("sdci.Run", "etc/qubes-rpc/sdci.Run"),
        ("30-sdci.policy", "etc/qubes/policy.d/30-sdci.policy"),
    ] {
        assert_eq!(
            std::fs::read(repo.join(ours)).unwrap(),
            std::fs::read(root.path().join(theirs)).unwrap(),
            "{theirs} differs from qubes-rpc/{ours}"
        );
    }
    let (code, out, _) = run(Command::new(root.path().join("usr/bin/sdci-dom0")).arg("--version"));
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    // Modes as the qrexec daemon needs them, and the /usr/local/bin link sdci.Run runs.
    let (code, dump, _) = run(Command::new("rpm").args(["-qp", "--dump"]).arg(&rpm));
    assert_eq!(code, 0);
    assert!(
        dump.lines()
            .any(|l| l.starts_with("/etc/qubes-rpc/sdci.Run ") && l.contains(" 0100755 ")),
        "{dump}"
    );
    let (_, scripts, _) = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    assert!(
        scripts.contains("ln -sfn /usr/bin/sdci-dom0 /usr/local/bin/sdci-dom0"),
        "{scripts}"
    );
}
