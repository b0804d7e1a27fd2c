//! The `sdci-host` binary's non-serve commands on a real database file, with no service
//! running: a manual job goes into the same queue, can be listed, shown and canceled, and the
//! canceled commit gets its final status queued for the next `serve`.
//!
//! Needs the binaries built first (`cargo build --workspace --bins`, as `scripts/test` does).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::store::Store;
use std::process::Command;

fn host(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let bin = sdci_tests::binary("sdci-host");
    assert!(
        bin.exists(),
        "{} missing: run cargo build --workspace --bins",
        bin.display()
    );
    let out = Command::new(bin)
        .arg("--config")
        .arg(dir.join("host.toml"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: the commands' wake-up finds no service.
    let extra = "default_repo = \"freedomofpress/securedrop-workstation\"\n\
                 [pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n";
    let text = config_text(dir.path(), "127.0.0.1:9", extra);
    std::fs::write(dir.path().join("host.toml"), text).unwrap();
    // The database as `serve` leaves it: the CLI never creates or migrates one.
    drop(Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap());
    dir
}

#[test]
fn a_manual_run_is_queued_listed_shown_and_canceled() {
    let dir = setup();
    let (code, out, err) = host(
        dir.path(),
        &[
            "run",
            "--version",
            "4.2",
            "--commit",
            &sha(5),
            "--snapshot",
            "clean",
            "--update",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();
    let job = store.job(&id).unwrap().unwrap();
    assert_eq!(
        (job.state, job.reason.as_str()),
        (JobState::Queued, "manual")
    );
    assert_eq!(
        (
            job.version.as_deref(),
            job.snapshot.as_deref(),
            job.update_first
        ),
        (Some("4.2"), Some("clean"), true)
    );

    let (code, out, _) = host(dir.path(), &["jobs", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("queued"), "{out}");
    let (code, out, _) = host(dir.path(), &["jobs", "show", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("pending  unposted queued"), "{out}");

    let (code, out, _) = host(dir.path(), &["jobs", "cancel", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("canceled"), "{out}");
    assert_eq!(store.job(&id).unwrap().unwrap().state, JobState::Canceled);
    let pending = store.unposted_statuses().unwrap();
    assert_eq!((pending.len(), pending[0].state.as_str()), (1, "error"));
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = setup();
    let (code, _, err) = host(
        dir.path(),
        &["run", "--version", "9.9", "--commit", &sha(5)],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no pool for Qubes 9.9"), "{err}");
    let (code, _, err) = host(dir.path(), &["run", "--version", "4.2", "--commit", "abc"]);
    assert_ne!(code, 0);
    assert!(err.contains("full commit id"), "{err}");
    let (code, _, err) = host(dir.path(), &["jobs", "cancel", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no job"), "{err}");
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();
    assert_eq!(store.count_jobs().unwrap(), 0);
}

#[test]
fn a_bad_cron_entry_in_the_readme_example_is_refused_by_check_config_run_save_and_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let readme = std::fs::read_to_string(sdci_tests::workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("### Notifications, nightly jobs, updates and snapshot rotation")
        .nth(1)
        .unwrap();
    let block = section.split("```toml\n").nth(1).unwrap();
    let block = block.split("```").next().unwrap();
    let bad = block.replace("cron = \"0 2 * * *\"", "cron = \"0 26 * * *\"");
    assert_ne!(
        bad, block,
        "the README's nightly schedule moved; update this test"
    );
    std::fs::write(dir.path().join("host.toml"), &bad).unwrap();
    let path = dir.path().join("host.toml").display().to_string();
    for args in [
        &["check-config"][..],
        &["run", "--version", "4.2", "--commit", &sha(5)][..],
        &["save", "--version", "4.2"][..],
        &["jobs", "list"][..],
    ] {
        let (code, out, err) = host(dir.path(), args);
        assert_ne!(code, 0, "{args:?} accepted a bad cron entry: {out}");
        for want in [path.as_str(), "nightly.schedule[0]", "hour", "write e.g."] {
            assert!(err.contains(want), "{args:?}: {want:?} missing in {err}");
        }
    }
}

#[test]
fn check_config_prints_the_effective_configuration_with_secret_files_not_their_contents() {
    let dir = setup();
    let (code, out, err) = host(dir.path(), &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid"), "{out}");
    assert!(
        out.contains("max_attempts = 3"),
        "defaults filled in: {out}"
    );
    let secret = dir.path().join("secret").display().to_string();
    assert!(
        out.contains(&format!("<file: {secret}, {} bytes>", SECRET.len())),
        "{out}"
    );
    assert!(
        !out.contains(SECRET),
        "the webhook secret itself was printed: {out}"
    );
    // The printed configuration is one the host reads back.
    let printed: String = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        toml::from_str::<toml::Table>(&printed).is_ok(),
        "not TOML: {printed}"
    );
}

/// A branch name from a webhook and a note from a job's end reach `jobs list/show` with their
/// terminal controls escaped: no OSC 52 clipboard write, no screen clear, no forged line.
#[test]
fn jobs_list_and_show_escape_terminal_controls_in_branch_names_and_notes() {
    let dir = setup();
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();
    let osc52 = "feature\u{1b}]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\u{7}";
    let id = store
        .insert_job(&sdci_host::store::NewJob {
            repo: REPO.parse().unwrap(),
            sha: sha(9).parse().unwrap(),
            reason: sdci_protocol::Reason::Push,
            branch: Some(osc52.into()),
            supersede_key: None,
            clone_url: "https://github.com/x/y.git".into(),
            version: Some("4.2".into()),
            snapshot: None,
            update_first: false,
            commit_author: None,
            commit_subject: None,
        })
        .unwrap();
    let note = "done\u{1b}[2J\u{1b}[H\n=== result: success\u{9b}31m\u{202e}";
    store.finish(&id, JobState::Failure, note, true).unwrap();
    for args in [vec!["jobs", "list"], vec!["jobs", "show", id.as_str()]] {
        let (code, out, err) = host(dir.path(), &args);
        assert_eq!(code, 0, "{err}");
        assert!(
            !out.chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{args:?} printed a control character: {out:?}"
        );
        assert!(
            out.contains("\\x1b[2J\\x1b[H\\x0a=== result: success\\u{9b}31m\\u{202e}"),
            "{out}"
        );
        assert!(
            !out.lines().any(|l| l.starts_with("=== result")),
            "no forged line: {out}"
        );
    }
    let (_, out, _) = host(dir.path(), &["jobs", "show", id.as_str()]);
    assert!(out.contains("branch feature\\x1b]52;c;"), "{out}");
}

#[test]
fn a_manual_run_of_a_repository_outside_webhook_repos_is_refused() {
    let dir = setup();
    let (code, _, err) = host(
        dir.path(),
        &[
            "run",
            "--repo",
            "evil/repo",
            "--version",
            "4.2",
            "--commit",
            &sha(5),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not in webhook.repos"), "{err}");
    let store = Store::open(&dir.path().join("data/sdci.sqlite3")).unwrap();
    assert_eq!(store.count_jobs().unwrap(), 0);
}
