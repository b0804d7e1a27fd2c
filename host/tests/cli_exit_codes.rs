//! The README's table of what each `sdci-host` command answers ("The sdci-host command line"),
//! row by row, through the real binary: every row of the table has a situation here that sets
//! it up, and the exit code and the printed text are the table's. A row without a situation,
//! or a situation without a row, fails the test (the table and the binary cannot drift apart).
//!
//! Needs the binaries built first (`cargo build --workspace --bins`, as `scripts/test` does).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::store::Store;
use std::path::Path;
use std::process::Command;

/// One row of the README's table.
#[derive(Debug)]
struct Row {
    command: String,
    situation: String,
    exit: i32,
    prints: String,
}

fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(sdci_tests::workspace_root().join("README.md")).unwrap();
    let table = readme
        .split("<!-- cli-table: host/tests/cli_exit_codes.rs runs each row -->\n")
        .nth(1)
        .expect("the README's CLI table and its marker");
    let cell = |c: &str| c.trim().trim_matches('`').to_owned();
    table
        .lines()
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let c: Vec<&str> = l.trim().trim_matches('|').split('|').collect();
            assert_eq!(c.len(), 4, "a row of four cells: {l}");
            Row {
                command: cell(c[0]),
                situation: cell(c[1]),
                exit: c[2].trim().parse().unwrap(),
                prints: c[3].trim().to_owned(),
            }
        })
        .collect()
}

/// A world for one row: a configuration (its vSphere refuses connections) and a database as
/// `serve` makes it, with one queued job.
struct World {
    dir: tempfile::TempDir,
    job: String,
}

const EXTRA: &str = "default_repo = \"freedomofpress/securedrop-workstation\"\n\
                     [pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                     [vsphere]\nurl = \"https://127.0.0.1:9/sdk\"\nuser = \"ci\"\n";

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("vsphere-password");
        std::fs::write(&pw, "pw\n").unwrap();
        let extra = format!("{EXTRA}password_file = \"{}\"\n", pw.display());
        std::fs::write(
            dir.path().join("host.toml"),
            config_text(dir.path(), "127.0.0.1:9", &extra),
        )
        .unwrap();
        let mut w = World {
            dir,
            job: String::new(),
        };
        let store = Store::open(&w.db()).unwrap();
        drop(store);
        let (code, out, err) = w.host(&["run", "--version", "4.2", "--commit", &sha(7)]);
        assert_eq!(code, 0, "{err}");
        w.job = out.trim().to_owned();
        w
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("data/sdci.sqlite3")
    }

    fn host(&self, args: &[&str]) -> (i32, String, String) {
        let bin = sdci_tests::binary("sdci-host");
        assert!(
            bin.exists(),
            "{}: run cargo build --workspace --bins",
            bin.display()
        );
        let out = Command::new(bin)
            .arg("--config")
            .arg(self.dir.path().join("host.toml"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn schema_version(&self, delta: i64) {
        let c = rusqlite::Connection::open(self.db()).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        c.pragma_update(None, "user_version", v + delta).unwrap();
    }
}

/// Sets up `row`'s situation; returns the arguments and the texts the output must contain.
fn situation(w: &World, row: &Row) -> Option<(Vec<String>, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let id = w.job.clone();
    let path = w.dir.path().join("host.toml").display().to_string();
    Some(match (row.command.as_str(), row.situation.as_str()) {
        ("jobs list", "jobs in the store") => (
            s(&["jobs", "list"]),
            s(&["JOB ", "STATE", "CREATED (UTC)", &id, "queued", " 20"]),
        ),
        ("jobs list", "an empty store") => {
            std::fs::remove_file(w.db()).unwrap();
            drop(Store::open(&w.db()).unwrap());
            (s(&["jobs", "list"]), s(&["no jobs"]))
        }
        ("jobs list", "no database at data_dir") => {
            std::fs::remove_dir_all(w.dir.path().join("data")).unwrap();
            (
                s(&["jobs", "list"]),
                s(&["error: no database at", "sdci.sqlite3", "data_dir"]),
            )
        }
        ("jobs list", "a database older than the binary") => {
            w.schema_version(-1);
            (
                s(&["jobs", "list"]),
                s(&["error:", "older than this sdci-host's", "serve` migrates"]),
            )
        }
        ("jobs list", "a database newer than the binary") => {
            w.schema_version(1);
            (
                s(&["jobs", "list"]),
                s(&["error:", "newer than this sdci-host knows"]),
            )
        }
        ("jobs show ID", "a known job") => (
            s(&["jobs", "show", &id]),
            s(&[
                "state queued",
                "created 20",
                "history:",
                "Z  - -> queued",
                "statuses:",
            ]),
        ),
        ("jobs show ID", "an unknown id") => {
            (s(&["jobs", "show", "nope"]), s(&["error: no job \"nope\""]))
        }
        ("jobs cancel ID", "a queued job") => {
            (s(&["jobs", "cancel", &id]), vec![format!("{id}: canceled")])
        }
        ("jobs cancel ID", "an ended job") => {
            let (code, _, err) = w.host(&["jobs", "cancel", &id]);
            assert_eq!(code, 0, "{err}");
            (
                s(&["jobs", "cancel", &id]),
                vec![format!(
                    "error: job {id} already ended: canceled; nothing to cancel"
                )],
            )
        }
        ("jobs cancel ID", "an unknown id") => (
            s(&["jobs", "cancel", "nope"]),
            s(&["error: no job \"nope\""]),
        ),
        ("jobs rerun ID", "a known job") => (
            s(&["jobs", "rerun", &id]),
            vec![format!("{}-", &sha(7)[..7])],
        ),
        ("jobs rerun ID", "an unknown id") => (
            s(&["jobs", "rerun", "nope"]),
            s(&["error: no job \"nope\""]),
        ),
        ("run --version V --commit SHA", "a configured pool") => {
            let sha = sha(8);
            (
                s(&["run", "--version", "4.2", "--commit", &sha]),
                vec![format!("{}-", &sha[..7])],
            )
        }
        ("run --version V --commit SHA", "no pool for V") => (
            s(&["run", "--version", "9.9", "--commit", &sha(8)]),
            s(&["error: no pool for Qubes 9.9"]),
        ),
        ("vms", "vSphere refuses the connection") => (
            s(&["vms"]),
            s(&["pool 4.2", "error: hypervisors: cannot connect"]),
        ),
        ("vms unquarantine NAME", "a VM not in the store") => (
            s(&["vms", "unquarantine", "Qubes_4.2_z"]),
            s(&["error: no VM \"Qubes_4.2_z\" in the store"]),
        ),
        ("backup FILE", "a database, while serve runs") => {
            let file = w.dir.path().join("copy.sqlite3").display().to_string();
            (
                vec!["backup".into(), file.clone()],
                vec![format!("{file}: 1 jobs, ")],
            )
        }
        ("backup FILE", "FILE exists") => {
            let file = w.dir.path().join("host.toml").display().to_string();
            (
                vec!["backup".into(), file.clone()],
                vec![format!("error: {file} exists: the backup never overwrites")],
            )
        }
        ("check-config", "a valid file") => {
            (s(&["check-config"]), vec![format!("# {path}: valid")])
        }
        ("check-config", "a key the host does not know") => {
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, format!("colour = \"blue\"\n{text}")).unwrap();
            (
                s(&["check-config"]),
                vec![format!("error: configuration {path}"), "colour".into()],
            )
        }
        ("check-config --connect", "vSphere refuses the connection") => (
            s(&["check-config", "--connect"]),
            s(&[
                "FAILED",
                "error: the checks above failed; fix what they name",
            ]),
        ),
        ("jobs frobnicate", "an unknown subcommand") => {
            (s(&["jobs", "frobnicate"]), s(&["Usage:", "frobnicate"]))
        }
        ("(no command)", "") => (vec![], s(&["Usage:"])),
        ("--help", "") => (s(&["--help"]), s(&["Usage:", "check-config"])),
        _ => return None,
    })
}

#[test]
fn every_row_of_the_readmes_cli_table_is_what_the_binary_does() {
    let rows = readme_rows();
    assert!(rows.len() >= 15, "{rows:?}");
    for row in &rows {
        let w = World::new();
        let (args, wants) = situation(&w, row)
            .unwrap_or_else(|| panic!("no situation in this test for the README row {row:?}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = w.host(&args);
        let all = format!("{out}{err}");
        assert_eq!(
            code, row.exit,
            "README row {row:?}: sdci-host {args:?} exited {code}:\n{all}"
        );
        for want in &wants {
            assert!(
                all.contains(want.as_str()),
                "README row {row:?}: {want:?} not in the output of sdci-host {args:?} (the \
                 README says it prints {}):\n{all}",
                row.prints
            );
        }
    }
}

#[test]
fn the_cli_never_creates_or_migrates_a_database() {
    let w = World::new();
    std::fs::remove_dir_all(w.dir.path().join("data")).unwrap();
    for args in [
        &["jobs", "list"][..],
        &["jobs", "show", "x"][..],
        &["jobs", "cancel", "x"][..],
        &["run", "--version", "4.2", "--commit", &sha(9)][..],
        &["vms", "unquarantine", "x"][..],
        &["nightly", "--branch", "main"][..],
    ] {
        let (code, _, err) = w.host(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("no database at"), "{args:?}: {err}");
        assert!(
            !Path::new(&w.dir.path().join("data")).exists(),
            "{args:?} created the data directory"
        );
    }
    // An older schema is left as it is.
    let w = World::new();
    w.schema_version(-1);
    let before = std::fs::read(w.db()).unwrap();
    let (code, _, _) = w.host(&["jobs", "list"]);
    assert_eq!(code, 2);
    assert_eq!(
        before,
        std::fs::read(w.db()).unwrap(),
        "the file was changed"
    );
}

#[test]
fn log_lines_are_plain_off_a_terminal_and_json_on_request() {
    let w = World::new();
    // `run` at debug level logs its wake-up of a service that is not there.
    let bin = sdci_tests::binary("sdci-host");
    let run = |extra: &[&str]| {
        let out = Command::new(&bin)
            .arg("--config")
            .arg(w.dir.path().join("host.toml"))
            .args(extra)
            .args(["run", "--version", "4.2", "--commit", &sha(3)])
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let text = run(&[]);
    assert!(!text.is_empty(), "debug logging printed nothing");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes off a terminal: {text:?}"
    );
    let json = run(&["--log-format", "json"]);
    let lines: Vec<&str> = json.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
}
