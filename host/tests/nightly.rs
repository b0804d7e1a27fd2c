//! `sdci-host nightly --branch B`, the real binary against a real SQLite file and a stub
//! `sdci-agent` (contracts §5: `head` prints the sha, `ci-config` the version or exits 3).

#![allow(clippy::unwrap_used)]

use sdci_host::domain::JobState;
use sdci_host::store::Store;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const HEAD: &str = "1234567890abcdef1234567890abcdef12345678";

/// A stub agent: `head` prints HEAD (or fails with `head_code`), `ci-config` prints `version`
/// or exits 3 when it is empty. Every call is appended to `calls`.
fn agent(dir: &Path, head_code: i32, version: &str) -> PathBuf {
    let path = dir.join("sdci-agent");
    let ci = if version.is_empty() {
        "echo 'no .github/workstation-ci.yml' >&2; exit 3".to_owned()
    } else {
        format!("echo {version}")
    };
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{calls}'\ncase \"$1\" in\n\
             head) [ {head_code} = 0 ] || {{ echo 'GitHub unreachable' >&2; exit {head_code}; }}\n\
             echo {HEAD} ;;\nci-config) {ci} ;;\nesac\n",
            calls = dir.join("calls").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(dir: &Path, agent: &Path) -> PathBuf {
    let path = dir.join("host.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:9\"\ndata_dir = \"{}\"\ndefault_version = \"4.3\"\n\
             [agent]\npath = \"{}\"\n\
             [nightly]\nrepo = \"freedomofpress/securedrop-workstation\"\n\
             [[nightly.schedule]]\nbranch = \"main\"\ncron = \"0 2 * * *\"\ntime_zone = \"UTC\"\n\
             [pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
             [pools.\"4.3\"]\nprefix = \"Qubes_4.3_\"\ngolden_snapshot = \"golden\"\n",
            dir.join("data").display(),
            agent.display()
        ),
    )
    .unwrap();
    // The database as `serve` leaves it: the CLI never creates or migrates one.
    drop(sdci_host::store::Store::open(&dir.join("data/sdci.sqlite3")).unwrap());
    path
}

fn nightly(cfg: &Path, branch: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sdci-host"))
        .args(["--config"])
        .arg(cfg)
        .args(["nightly", "--branch", branch])
        .output()
        .unwrap()
}

#[test]
fn nightly_queues_the_branch_head_with_updates_and_the_commits_qubes_version() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &agent(dir.path(), 0, "4.2"));
    let out = nightly(&cfg, "main");
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();
    let job = store.job(&id).unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.reason.as_str(), "nightly");
    assert!(job.update_first, "a nightly job applies updates first");
    assert_eq!(job.sha, HEAD);
    assert_eq!(job.branch.as_deref(), Some("main"));
    assert_eq!(job.repo, "freedomofpress/securedrop-workstation");
    assert_eq!(job.version.as_deref(), Some("4.2"));
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert!(
        calls.contains("head --repo=freedomofpress/securedrop-workstation --branch=main"),
        "{calls}"
    );
    assert!(
        calls.contains(&format!(
            "ci-config --repo=freedomofpress/securedrop-workstation --sha={HEAD}"
        )),
        "{calls}"
    );
}

#[test]
fn without_a_ci_config_the_default_version_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &agent(dir.path(), 0, ""));
    let out = nightly(&cfg, "main");
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();
    assert_eq!(
        store.job(&id).unwrap().unwrap().version.as_deref(),
        Some("4.3")
    );
}

#[test]
fn an_unreachable_github_queues_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &agent(dir.path(), 2, "4.2"));
    let out = nightly(&cfg, "main");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sdci-agent head") && err.contains("GitHub unreachable"),
        "{err}"
    );
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();
    assert!(store.recent_jobs(10).unwrap().is_empty());
}

#[test]
fn a_version_without_a_pool_queues_nothing_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &agent(dir.path(), 0, "4.9"));
    let out = nightly(&cfg, "main");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[pools.\\\"4.9\\\"]") || err.contains("[pools.\"4.9\"]"),
        "{err}"
    );
}
