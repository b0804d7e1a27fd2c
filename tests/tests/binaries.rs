//! Every program answers `--help` and `--version`, and lists the subcommands the design names.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn help(bin: &str) -> String {
    let out = Command::new(sdci_tests::binary(bin))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {bin} (build the workspace's binaries first): {e}"));
    assert!(out.status.success(), "{bin} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn each_program_lists_its_subcommands_in_help() {
    for (bin, subcommands) in [
        (
            "sdci-host",
            &["serve", "run", "jobs", "vms", "nightly", "save"][..],
        ),
        ("sdci-dom0", &["run", "launch"][..]),
        (
            "sdci-agent",
            &["status", "token", "head", "ci-config", "run"][..],
        ),
    ] {
        let text = help(bin);
        for sub in subcommands {
            assert!(
                text.contains(sub),
                "{bin} --help does not list {sub}:\n{text}"
            );
        }
    }
}

#[test]
fn each_program_reports_its_version() {
    for bin in ["sdci-host", "sdci-dom0", "sdci-agent"] {
        let out = Command::new(sdci_tests::binary(bin))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}
