//! `sdci-dom0 run` collects the job's results after the steps (contracts §11): the JUnit files
//! always, the failure evidence (journal, Xen console and Qubes logs, `qvm-ls`, artifacts) when
//! the steps did not succeed, into one bounded `results.tar.zst` next to `log.txt` — and no file
//! the code under test left behind (symlinks, FIFOs, huge, growing or countless files) makes it
//! read outside its roots, hang, grow past its caps or change the job's outcome.
//!
//! dom0's `/var/log` is a directory of the test (`[results] evidence_root`), and `journalctl`
//! and `qvm-ls` are stand-in scripts first in the service's `PATH`. Each test prints its figures
//! (bundle size, collection time) for the closing note; none asserts a time.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_dom0::fixture;
use sdci_protocol::results::{EntryKind, ResultsManifest, ResultsSpec, MANIFEST};
use sdci_protocol::Outcome;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

/// A dom0 whose evidence lives under `<tmp>/world` and whose `journalctl`/`qvm-ls` are scripts.
struct World {
    d: Dom0,
    root: PathBuf,
    bin: PathBuf,
}

impl World {
    fn new(results: &str) -> Self {
        // The evidence root is inside the dom0's temporary directory, so its `[results]` is
        // appended once that exists.
        let d = Dom0::with_config("");
        let root = d.root().join("world");
        let bin = d.root().join("bin");
        std::fs::create_dir_all(root.join("var/log/xen/console")).unwrap();
        std::fs::create_dir_all(root.join("var/log/qubes")).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let mut config = std::fs::read_to_string(&d.config).unwrap();
        config.push_str(&format!(
            "[results]\nevidence_root = {:?}\n{results}",
            root.to_string_lossy()
        ));
        std::fs::write(&d.config, config).unwrap();
        let w = Self { d, root, bin };
        w.script(
            "journalctl",
            "echo \"journalctl $*\" >> \"$(dirname \"$0\")/journalctl.calls\"\n\
             echo '-- Boot 0123456789abcdef --'\n\
             echo 'Dec 01 10:00:00 dom0 kernel: Linux version 6.6.0 (Qubes)'\n\
             echo 'Dec 01 10:00:05 dom0 qubesd[812]: vm.sd-app: Activating the sd-app VM'\n\
             echo 'Dec 01 10:00:09 dom0 qrexec-policy-daemon[901]: sd-dev -> dom0: sdci.Run allowed'\n",
        );
        w.script(
            "qvm-ls",
            "echo 'NAME          STATE    CLASS       LABEL  TEMPLATE        NETVM'\n\
             echo 'dom0          Running  AdminVM     black  -               -'\n\
             echo 'sd-app        Halted   AppVM       yellow sd-small-bookworm-template -'\n\
             echo 'sys-net       Running  AppVM       red    fedora-40       -'\n",
        );
        std::fs::write(
            w.root.join("var/log/xen/console/guest-sd-app.log"),
            "[    0.000000] Linux version 6.6.0 (sd-app)\n[    1.2] sd-app login:\n",
        )
        .unwrap();
        std::fs::write(
            w.root.join("var/log/xen/console/guest-sys-net.log"),
            "[    0.000000] Linux version 6.6.0 (sys-net)\n",
        )
        .unwrap();
        std::fs::write(
            w.root.join("var/log/qubes/qubes.log"),
            "2026-12-01 10:00:05 vm.sd-app: Starting sd-app\n",
        )
        .unwrap();
        std::fs::write(
            w.root.join("var/log/qubes/mgmt-sd-app.log"),
            "2026-12-01 10:00:07 output: sd-app: Succeeded: 12 (changed=3)\n",
        )
        .unwrap();
        w
    }

    fn script(&self, name: &str, body: &str) {
        let p = self.bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn job(&self, id: &str, steps: Vec<sdci_protocol::Step>, spec: Option<ResultsSpec>) {
        let mut file = self.d.job(id, steps);
        file.spec.results = spec;
        std::fs::write(self.d.job_dir(id).join("job.json"), file.to_json()).unwrap();
    }

    /// Runs the job; returns the service's output and how long the call took.
    fn run(&self, id: &str) -> (Output, f64) {
        let mut cmd = self.d.service(id);
        cmd.env(
            "PATH",
            format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap()),
        );
        let t = Instant::now();
        let out = self
            .d
            .call(cmd, &compress(&fixture::TarBuilder::new().finish()));
        (out, t.elapsed().as_secs_f64())
    }

    fn results_file(&self, id: &str) -> PathBuf {
        self.d.job_dir(id).join("results.tar.zst")
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.d.job_dir(id).join("log.txt")).unwrap()
    }
}

/// The results file as the host reads it: the manifest (first member) and every member.
struct Bundle {
    manifest: ResultsManifest,
    members: BTreeMap<String, Vec<u8>>,
    order: Vec<String>,
    file_bytes: u64,
}

fn open_bundle(path: &Path) -> Bundle {
    let file_bytes = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap()).unwrap();
    dec.window_log_max(24).unwrap();
    let mut archive = tar::Archive::new(dec);
    let mut members = BTreeMap::new();
    let mut order = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        assert_eq!(
            entry.header().entry_type(),
            tar::EntryType::Regular,
            "only regular files"
        );
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        order.push(name.clone());
        members.insert(name, data);
    }
    assert_eq!(order.first().map(String::as_str), Some(MANIFEST));
    let manifest = ResultsManifest::from_json(&members[MANIFEST]).unwrap();
    for e in &manifest.entries {
        let data = members
            .get(&e.path)
            .unwrap_or_else(|| panic!("{} is listed but absent", e.path));
        assert_eq!(data.len() as u64, e.bytes, "{}", e.path);
    }
    assert_eq!(
        manifest.entries.len() + 1,
        members.len(),
        "every member is listed"
    );
    Bundle {
        manifest,
        members,
        order,
        file_bytes,
    }
}

impl Bundle {
    fn text(&self, member: &str) -> String {
        String::from_utf8_lossy(
            self.members
                .get(member)
                .unwrap_or_else(|| panic!("no {member} in {:?}", self.order)),
        )
        .into_owned()
    }
    fn skipped(&self) -> String {
        self.manifest
            .skipped
            .iter()
            .map(|s| format!("{}: {}\n", s.source, s.reason))
            .collect()
    }
}

const JUNIT: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="0" tests="2"><testcase classname="tests.test_vms" name="test_ok" file="tests/test_vms.py" line="3" time="0.1"/><testcase classname="tests.test_vms" name="test_bad" time="0.2"><failure message="assert False">boom</failure></testcase></testsuite></testsuites>"#;

fn write_junit(name: &str) -> String {
    format!("cat > {name} <<'EOF'\n{JUNIT}\nEOF\n")
}

#[test]
fn a_failing_jobs_results_hold_the_junit_file_the_journal_and_the_console_logs_within_the_caps() {
    let w = World::new("max_file_bytes = 1048576\n");
    // A console log larger than the per-file cap: its tail is kept.
    let mut big = String::from("FIRST LINE of the big console\n");
    while big.len() < 3 << 20 {
        big.push_str("[  123.456] sd-log: a console line that repeats itself for a while\n");
    }
    big.push_str("LAST LINE of the big console\n");
    std::fs::write(w.root.join("var/log/xen/console/guest-sd-log.log"), &big).unwrap();
    w.job(
        "fail-1",
        vec![sh(
            "make-test",
            &format!("{}echo tests failed; exit 1", write_junit("test-data.xml")),
            60,
        )],
        None,
    );
    let (out, secs) = w.run("fail-1");
    assert_eq!(out.status.code(), Some(1));
    let (outcome, reason) = result(&out);
    assert_eq!(outcome, Outcome::Failure);
    assert!(reason.contains("\"make-test\" failed"), "{reason}");

    let b = open_bundle(&w.results_file("fail-1"));
    let m = &b.manifest;
    assert_eq!((m.outcome, m.evidence), (Outcome::Failure, true));
    assert_eq!(b.text("junit/1.xml").trim(), JUNIT);
    assert!(m.entries[0]
        .source
        .ends_with("securedrop-workstation/test-data.xml"));
    assert!(b
        .text("evidence/journal.txt")
        .contains("qrexec-policy-daemon[901]"));
    assert!(b
        .text("evidence/qvm-ls.txt")
        .contains("sd-app        Halted"));
    assert!(b
        .text("evidence/xen-console/guest-sd-app.log")
        .contains("sd-app login:"));
    assert!(b
        .members
        .contains_key("evidence/xen-console/guest-sys-net.log"));
    assert!(b
        .text("evidence/qubes/qubes.log")
        .contains("Starting sd-app"));
    assert!(b
        .text("evidence/qubes/mgmt-sd-app.log")
        .contains("Succeeded"));
    let console = b.text("evidence/xen-console/guest-sd-log.log");
    assert_eq!(console.len(), 1 << 20, "cut at the per-file cap");
    assert!(console.ends_with("LAST LINE of the big console\n") && !console.contains("FIRST"));
    let entry = m
        .entries
        .iter()
        .find(|e| e.path == "evidence/xen-console/guest-sd-log.log")
        .unwrap();
    assert!(entry.truncated);
    assert!(m.entries.iter().all(|e| e.bytes <= 1 << 20));
    assert_eq!(
        std::fs::read_to_string(w.bin.join("journalctl.calls")).unwrap(),
        "journalctl -b --no-pager\n"
    );
    let log = w.log("fail-1");
    let line = log
        .lines()
        .find(|l| l.contains("dom0: results: results.tar.zst: 1 JUnit file(s)"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        log.find("dom0: results:").unwrap() < log.find("result: failure").unwrap(),
        "the collection is noted before the result"
    );
    eprintln!(
        "figures: failing job bundle {} bytes ({} members, {} unpacked); collection {} ms; \
         whole call {secs:.2} s; {line}",
        b.file_bytes,
        m.entries.len(),
        m.entries.iter().map(|e| e.bytes).sum::<u64>(),
        m.took_ms
    );
}

#[test]
fn a_passing_jobs_results_hold_only_the_junit_files() {
    let w = World::new("");
    w.job(
        "pass-1",
        vec![sh(
            "make-test",
            &format!(
                "mkdir -p reports/sub && {}{}{}echo ok",
                write_junit("test-data.xml"),
                write_junit("reports/a.xml"),
                write_junit("reports/sub/b.xml")
            ),
            60,
        )],
        Some(ResultsSpec {
            junit: vec!["test-data.xml".into(), "reports/**/*.xml".into()],
            artifacts: vec!["**/*.xml".into()],
        }),
    );
    let (out, _) = w.run("pass-1");
    assert_eq!(out.status.code(), Some(0));
    let b = open_bundle(&w.results_file("pass-1"));
    assert_eq!(
        (b.manifest.outcome, b.manifest.evidence),
        (Outcome::Success, false)
    );
    assert_eq!(
        b.order,
        [MANIFEST, "junit/1.xml", "junit/2.xml", "junit/3.xml"],
        "{}",
        b.skipped()
    );
    let sources: Vec<&str> = b
        .manifest
        .entries
        .iter()
        .map(|e| e.source.as_str())
        .collect();
    assert!(sources[1].ends_with("reports/a.xml") && sources[2].ends_with("reports/sub/b.xml"));
    assert!(b.manifest.of_kind(EntryKind::Evidence).next().is_none());
    assert!(
        !w.bin.join("journalctl.calls").exists(),
        "no evidence commands ran"
    );
    eprintln!("figures: passing job bundle {} bytes", b.file_bytes);
}

#[test]
fn hostile_files_are_refused_or_cut_and_listed_while_the_job_keeps_its_outcome() {
    let w = World::new("max_file_bytes = 1048576\nmax_walk_entries = 20000\n");
    let grower_pid = w.d.root().join("grower.pid");
    let script = format!(
        "set -e\n\
         ln -s /etc/shadow test-data.xml\n\
         mkfifo fifo.xml\n\
         ln -s fifo.xml to-fifo.xml\n\
         truncate -s 10G huge.xml\n\
         ln -s /etc reports\n\
         mkdir many && (cd many && seq 1 100000 | sed 's/$/.xml/' | xargs touch)\n\
         head -c 300000 /dev/zero > grow.xml\n\
         setsid sh -c 'while :; do head -c 65536 /dev/zero >> grow.xml; done' \
           </dev/null >/dev/null 2>&1 &\n\
         echo $! > {pid}\n\
         mkdir -p logs/sub && echo real > logs/sub/x.log && ln -s / logs/root\n\
         echo the tests failed; exit 1\n",
        pid = grower_pid.display()
    );
    w.job(
        "hostile-1",
        vec![sh("make-test", &script, 120)],
        Some(ResultsSpec {
            junit: vec![
                "test-data.xml".into(),
                "fifo.xml".into(),
                "to-fifo.xml".into(),
                "huge.xml".into(),
                "reports/*.xml".into(),
                "grow.xml".into(),
                "many/*.xml".into(),
            ],
            artifacts: vec!["logs/**/*.log".into()],
        }),
    );
    let (out, secs) = w.run("hostile-1");
    if let Ok(pid) = std::fs::read_to_string(&grower_pid) {
        // SAFETY: plain kill of the process group the step started.
        unsafe { libc::kill(-pid.trim().parse::<i32>().unwrap(), libc::SIGKILL) };
    }
    assert_eq!(out.status.code(), Some(1), "the job keeps its own outcome");
    let (outcome, reason) = result(&out);
    assert_eq!(outcome, Outcome::Failure);
    assert!(
        reason.contains("\"make-test\" failed with exit status 1"),
        "{reason}"
    );

    let b = open_bundle(&w.results_file("hostile-1"));
    let skipped = b.skipped();
    let skip_of = |suffix: &str| {
        b.manifest
            .skipped
            .iter()
            .find(|s| s.source.ends_with(suffix))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{suffix} not skipped:\n{skipped}"))
    };
    assert!(skip_of("/test-data.xml").contains("symlink"));
    assert!(skip_of("/fifo.xml").contains("FIFO"));
    assert!(skip_of("/to-fifo.xml").contains("symlink"));
    assert!(skip_of("/reports").contains("symlink"));
    assert!(skip_of("/many").contains("walk cap of 20000"), "{skipped}");
    assert!(
        skip_of("/many/*.xml").contains("cap of 100 JUnit files"),
        "{skipped}"
    );
    assert_eq!(b.manifest.of_kind(EntryKind::Junit).count(), 100);
    assert!(
        b.members.contains_key("evidence/journal.txt"),
        "a flood of JUnit files leaves room for the evidence"
    );
    for m in b.members.values() {
        assert!(
            !String::from_utf8_lossy(m).contains("root:"),
            "nothing of /etc"
        );
    }
    let by_source = |suffix: &str| {
        b.manifest
            .entries
            .iter()
            .find(|e| e.source.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not collected:\n{:?}", b.order))
    };
    let huge = by_source("/huge.xml");
    assert_eq!((huge.bytes, huge.truncated), (1 << 20, true));
    let grow = by_source("/grow.xml");
    assert!(grow.bytes <= 1 << 20);
    assert_eq!(
        b.text("artifacts/logs/sub/x.log"),
        "real\n",
        "artifacts keep their path"
    );
    assert!(
        !b.order.iter().any(|n| n.contains("root")),
        "the symlink to / was not walked: {:?}",
        b.order
    );
    assert!(b.manifest.entries.len() <= 200);
    eprintln!(
        "figures: hostile job bundle {} bytes, {} skipped, collection {} ms, whole call {secs:.2} s",
        b.file_bytes,
        b.manifest.skipped.len(),
        b.manifest.took_ms
    );
}

#[test]
fn a_hung_evidence_command_is_killed_at_its_timeout_and_the_rest_is_still_collected() {
    let w = World::new("command_timeout_secs = 2\n");
    let pid_file = w.d.root().join("journal.pid");
    w.script(
        "journalctl",
        &format!(
            "echo $$ > {}\necho 'the first journal line'\nexec sleep 600\n",
            pid_file.display()
        ),
    );
    w.job("hung-1", vec![sh("make-test", "exit 1", 60)], None);
    let (out, secs) = w.run("hung-1");
    assert_eq!(out.status.code(), Some(1));
    let b = open_bundle(&w.results_file("hung-1"));
    let journal = b
        .manifest
        .entries
        .iter()
        .find(|e| e.path == "evidence/journal.txt")
        .unwrap();
    assert!(journal.truncated);
    let text = b.text("evidence/journal.txt");
    assert!(
        text.starts_with("the first journal line\n") && text.contains("(timed out after 2 s"),
        "what it printed is kept, with the kill noted: {text}"
    );
    assert!(b.skipped().contains("timed out after 2 s and was killed"));
    assert!(
        b.members.contains_key("evidence/qvm-ls.txt"),
        "the rest goes on"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!group_alive(pid), "the hung command's group is gone");
    eprintln!("figures: a hung journalctl (2 s timeout) — whole call {secs:.2} s");
}

#[test]
fn the_collection_deadline_skips_what_is_left_and_the_job_still_ends() {
    let w = World::new("deadline_secs = 1\ncommand_timeout_secs = 20\n");
    w.script("journalctl", "echo started\nexec sleep 600\n");
    w.job("late-1", vec![sh("make-test", "exit 1", 60)], None);
    let (out, secs) = w.run("late-1");
    assert_eq!(out.status.code(), Some(1));
    let b = open_bundle(&w.results_file("late-1"));
    let skipped = b.skipped();
    assert!(skipped.contains("deadline (1 s) was reached"), "{skipped}");
    assert!(!b.members.contains_key("evidence/qvm-ls.txt"));
    eprintln!("figures: a 1 s collection deadline — whole call {secs:.2} s");
}

#[test]
fn the_results_file_never_exceeds_its_total_cap() {
    let w = World::new("max_total_bytes = 1048576\n");
    // Incompressible logs, 300 KiB each: only some fit in 1 MiB.
    let mut rng = fixture::Rng::new(7);
    for i in 0..8 {
        std::fs::write(
            w.root.join(format!("var/log/qubes/noise-{i}.log")),
            rng.binary(300 << 10),
        )
        .unwrap();
    }
    w.job("cap-1", vec![sh("make-test", "exit 1", 60)], None);
    let (out, _) = w.run("cap-1");
    assert_eq!(out.status.code(), Some(1));
    let b = open_bundle(&w.results_file("cap-1"));
    assert!(b.file_bytes <= 1 << 20, "{} bytes", b.file_bytes);
    assert!(
        b.skipped().contains("cap of 1.0 MiB was reached"),
        "{}",
        b.skipped()
    );
    assert!(
        b.members.contains_key("evidence/journal.txt"),
        "the first ones fit"
    );
}

#[test]
fn a_symlink_planted_as_the_results_files_scratch_is_replaced_not_followed() {
    let w = World::new("");
    let victim = w.d.root().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    w.job(
        "plant-1",
        vec![sh(
            "make-test",
            &format!(
                "d=$HOME/.sdci/jobs/$SDCI_JOB_ID; ln -s {v} $d/results.tar.zst.part; \
                 ln -s {v} $d/results.data.part; ln -s {v} $d/results.tar.zst; exit 1",
                v = victim.display()
            ),
            60,
        )],
        None,
    );
    let (out, _) = w.run("plant-1");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    let path = w.results_file("plant-1");
    assert!(!std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    open_bundle(&path);
    assert!(!w.d.job_dir("plant-1").join("results.data.part").exists());
}

#[test]
fn a_job_refused_before_its_steps_writes_no_results_file() {
    let w = World::new("");
    w.job("refused-1", vec![sh("make-test", "exit 0", 60)], None);
    let mut cmd = w.d.service("refused-1");
    cmd.env("QREXEC_REMOTE_DOMAIN", "sys-net");
    let out = w.d.call(cmd, b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(!w.results_file("refused-1").exists());
}

#[test]
fn a_checkout_replaced_by_a_symlink_is_not_walked() {
    let w = World::new("");
    w.job(
        "swap-1",
        vec![sh(
            "make-test",
            "c=$(pwd); cd / && rm -rf \"$c\" && ln -s /etc \"$c\"; exit 1",
            60,
        )],
        Some(ResultsSpec {
            junit: vec!["*".into()],
            artifacts: vec!["**/*".into()],
        }),
    );
    let (out, _) = w.run("swap-1");
    assert_eq!(out.status.code(), Some(1));
    let b = open_bundle(&w.results_file("swap-1"));
    assert_eq!(b.manifest.of_kind(EntryKind::Junit).count(), 0);
    assert_eq!(b.manifest.of_kind(EntryKind::Artifact).count(), 0);
    assert!(
        b.skipped()
            .contains("securedrop-workstation: a symlink where a directory should be"),
        "{}",
        b.skipped()
    );
}

#[test]
fn a_failing_job_with_evidence_at_the_per_file_cap_stays_within_the_total_cap() {
    // Figures for the worst realistic case: a 16 MiB journal and four 8 MiB console logs of
    // log-like text (each kept at the 8 MiB per-file cap).
    let w = World::new("");
    let mut rng = fixture::Rng::new(19);
    for q in ["sd-app", "sd-log", "sd-proxy", "sd-whonix"] {
        std::fs::write(
            w.root.join(format!("var/log/xen/console/guest-{q}.log")),
            rng.text(8 << 20),
        )
        .unwrap();
    }
    let journal = w.d.root().join("journal-source.txt");
    std::fs::write(&journal, rng.text(16 << 20)).unwrap();
    w.script("journalctl", &format!("cat {}\n", journal.display()));
    w.job("big-1", vec![sh("make-test", "exit 1", 60)], None);
    let (out, secs) = w.run("big-1");
    assert_eq!(out.status.code(), Some(1));
    let b = open_bundle(&w.results_file("big-1"));
    assert!(b.file_bytes <= 64 << 20);
    let journal = b
        .manifest
        .entries
        .iter()
        .find(|e| e.path == "evidence/journal.txt")
        .unwrap();
    assert!(journal.truncated && journal.bytes <= 8 << 20);
    let unpacked: u64 = b.manifest.entries.iter().map(|e| e.bytes).sum();
    eprintln!(
        "figures: evidence at the per-file cap: {unpacked} bytes unpacked in {} members → \
         {} bytes compressed; collection {} ms; whole call {secs:.2} s",
        b.manifest.entries.len(),
        b.file_bytes,
        b.manifest.took_ms
    );
}
