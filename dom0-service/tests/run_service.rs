//! `sdci-dom0 run` (the qrexec service `sdci.Run`), run as the real binary with the environment
//! qrexec gives it: the good path, steps, process groups, refusals of callers and job ids.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_dom0::fixture;
use sdci_protocol::{EventKind, Outcome};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An SDW-shaped tree committed to git and packed the way a checkout is: `git archive | zstd`.
fn sdw_archive(src: &Path) -> (fixture::TreeShape, Vec<u8>) {
    std::fs::create_dir_all(src).unwrap();
    let shape = fixture::sdw_tree(src, 7_000_000).unwrap();
    git(src, &["init", "-q"]);
    git(src, &["add", "-A"]);
    git(src, &["commit", "-q", "-m", "tree"]);
    let tar = git(src, &["archive", "--format=tar", "HEAD"]);
    (shape, compress(&tar))
}

/// Every path below `root` with what it is: file (content, executable), dir, or symlink target.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, &mut |p, md| {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == ".git" || rel.starts_with(".git/") {
            return;
        }
        let what = if md.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(p).unwrap().display())
        } else if md.is_dir() {
            "dir".into()
        } else {
            let data = std::fs::read(p).unwrap();
            let exec = md.permissions().mode() & 0o111 != 0;
            let sum = data
                .iter()
                .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            format!("file {} {sum:x} exec={exec}", data.len())
        };
        out.insert(rel, what);
    });
    out
}

#[test]
fn an_sdw_shaped_tree_arrives_intact_and_every_step_runs_in_it() {
    let d = Dom0::new();
    let src = d.root().join("sd-dev-checkout");
    let (shape, archive) = sdw_archive(&src);
    assert_eq!(
        (
            shape.files + shape.symlinks,
            shape.symlinks,
            shape.executables
        ),
        (220, 3, 24)
    );
    d.job(
        "good-1",
        vec![
            sh(
                "check-tree",
                "test -x scripts/tool-00 && test -L launcher/sdw_notify && \
                 test -f launcher/sdw_notify/module_0.py && echo tree-ok",
                60,
            ),
            sh(
                "env",
                "echo \"vm=$SECUREDROP_DEV_VM dir=$SECUREDROP_DEV_DIR ci=${CI:-unset} \
                 q=${QREXEC_REMOTE_DOMAIN:-none}${QREXEC_SERVICE_ARGUMENT:-none}\"",
                60,
            ),
            sh(
                "test",
                "printf '\\033[32mpassed\\033[0m ci=%s\\n' \"$CI\"",
                60,
            )
            .with_env("CI", "true"),
        ],
    );
    let out = d.call(d.service("good-1"), &archive);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        result(&out),
        (Outcome::Success, "all 3 steps passed".into())
    );

    let got = describe(&d.checkout);
    let want = describe(&src);
    assert_eq!(got, want);
    let regular = got.values().filter(|v| v.starts_with("file")).count();
    let links = got.values().filter(|v| v.starts_with("link")).count();
    let execs = got.values().filter(|v| v.ends_with("exec=true")).count();
    assert_eq!((regular + links, links, execs), (220, 3, 24));
    assert_eq!(got["launcher/sdw_notify"], "link -> ../sdw_notify");

    let texts = log_texts(&out);
    assert!(texts.contains(&"tree-ok".to_string()), "{texts:?}");
    assert!(texts.contains(
        &"vm=sd-dev dir=/home/user/securedrop-workstation ci=unset q=nonenone".to_string()
    ));
    assert!(
        texts.contains(&"\\x1b[32mpassed\\x1b[0m ci=true".to_string()),
        "colours kept but escaped, CI set: {texts:?}"
    );
    assert!(texts
        .iter()
        .any(|t| t.contains("unpacked 217 files (24 executable), 3 symlinks")));

    let log = std::fs::read_to_string(d.job_dir("good-1").join("log.txt")).unwrap();
    assert!(log.contains("[check-tree] tree-ok"), "{log}");
    assert!(log.contains("result: success (all 3 steps passed)"));
    assert!(log
        .lines()
        .all(|l| l.len() > 24 && l.as_bytes()[4] == b'-' && l.contains('Z')));
    assert!(
        !d.job_dir("good-1").join("tree").exists(),
        "the fresh tree was moved"
    );
    if is_root() {
        // Started as root, the service unpacked as the configured user (nobody here).
        use std::os::unix::fs::MetadataExt;
        walk(&d.checkout, &mut |p, md| {
            assert_eq!(md.uid(), 65534, "{p:?}")
        });
    }
}

#[test]
fn a_failing_step_stops_the_job_with_exit_1_and_later_steps_do_not_run() {
    let d = Dom0::new();
    d.job(
        "fail-1",
        vec![
            sh("first", "echo first", 60),
            sh("breaks", "echo about to fail; exit 3", 60),
            sh("never", "touch \"$HOME/../never-ran\"; echo never", 60),
        ],
    );
    let out = d.call(
        d.service("fail-1"),
        &compress(&fixture::TarBuilder::new().finish()),
    );
    assert_eq!(out.status.code(), Some(1));
    let (outcome, reason) = result(&out);
    assert_eq!(outcome, Outcome::Failure);
    assert!(
        reason.contains("\"breaks\" failed with exit status 3"),
        "{reason}"
    );
    let started: Vec<String> = events(&out)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::StepStarted { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["first", "breaks"]);
    assert!(!log_texts(&out).contains(&"never".to_string()));
}

#[test]
fn a_hanging_step_is_killed_at_its_timeout_with_its_whole_process_group() {
    let d = Dom0::new();
    let pgid_file = d.root().join("pgid");
    d.job(
        "hang-1",
        vec![
            sh(
                "hangs",
                &format!(
                    "echo $$ > {}; sleep 600 & sleep 600 & echo started; wait",
                    pgid_file.display()
                ),
                1,
            ),
            sh("after", "echo after", 60),
        ],
    );
    let out = d.call(
        d.service("hang-1"),
        &compress(&fixture::TarBuilder::new().finish()),
    );
    assert_eq!(out.status.code(), Some(1));
    let (outcome, reason) = result(&out);
    assert_eq!(outcome, Outcome::Failure);
    assert!(reason.contains("timed out after 1 s"), "{reason}");
    assert!(events(&out).iter().any(|e| matches!(
        e.kind,
        EventKind::StepFinished {
            timed_out: true,
            step: 0,
            ..
        }
    )));
    let pgid: i32 = std::fs::read_to_string(&pgid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!group_alive(pgid), "process group {pgid} survived the step");
    assert!(!log_texts(&out).contains(&"after".to_string()));
}

#[test]
fn a_background_child_holding_the_output_does_not_keep_the_service_alive() {
    let d = Dom0::new();
    let pgid_file = d.root().join("pgid");
    let escaped_file = d.root().join("escaped.pid");
    d.job(
        "bg-1",
        vec![
            sh(
                "daemonizes",
                &format!(
                    "echo $$ > {}; sleep 600 & echo left a child",
                    pgid_file.display()
                ),
                600,
            ),
            // A process that leaves the group entirely and keeps the output pipe open.
            sh(
                "escapes",
                &format!(
                    "f={0}.fifo; mkfifo $f; setsid sh -c 'echo $$ > {0}.fifo; exec sleep 120' & \
                     read pid < $f; echo $pid > {0}; echo escaped",
                    escaped_file.display()
                ),
                600,
            ),
            sh("next", "echo next step ran", 600),
        ],
    );
    let out = d.call(
        d.service("bg-1"),
        &compress(&fixture::TarBuilder::new().finish()),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let texts = log_texts(&out);
    assert!(texts.contains(&"left a child".to_string()));
    assert!(texts.contains(&"next step ran".to_string()));
    let pgid: i32 = std::fs::read_to_string(&pgid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !group_alive(pgid),
        "the step's background child survived it"
    );
    // The escaped process is outside any step's group by design: the test cleans it up.
    let escaped: i32 = std::fs::read_to_string(&escaped_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let log = std::fs::read_to_string(d.job_dir("bg-1").join("log.txt")).unwrap();
    assert!(log.contains("left the step's process group"), "{log}");
    // SAFETY: plain kill of the process this test's step started.
    unsafe { libc::kill(escaped, libc::SIGKILL) };
}

#[test]
fn a_caller_other_than_the_dev_vm_is_refused_and_nothing_is_unpacked() {
    let d = Dom0::new();
    d.job("caller-1", vec![sh("s", "echo ran", 60)]);
    let archive = compress(&{
        let mut b = fixture::TarBuilder::new();
        b.file("Makefile", 0o644, b"all:\n");
        b.finish()
    });
    for caller in [Some("sd-other"), Some(""), None] {
        let before = d.snapshot(&d.job_dir("caller-1").join("log.txt"));
        let mut cmd = d.service("caller-1");
        match caller {
            Some(c) => cmd.env("QREXEC_REMOTE_DOMAIN", c),
            None => cmd.env_remove("QREXEC_REMOTE_DOMAIN"),
        };
        let out = d.call(cmd, &archive);
        assert_eq!(out.status.code(), Some(2), "caller {caller:?}");
        let (outcome, reason) = result(&out);
        assert_eq!(outcome, Outcome::Error);
        match caller {
            Some("sd-other") => assert!(reason.contains("call from \"sd-other\""), "{reason}"),
            _ => assert!(
                reason.contains("QREXEC_REMOTE_DOMAIN is not set"),
                "{reason}"
            ),
        }
        assert!(!log_texts(&out).contains(&"ran".to_string()));
        assert!(!d.checkout.exists());
        let after = d.snapshot(&d.job_dir("caller-1").join("log.txt"));
        assert_eq!(before, after, "caller {caller:?} changed something");
    }
}

#[test]
fn every_invalid_job_id_is_refused_before_anything_is_touched() {
    let d = Dom0::new();
    d.job("real-1", vec![sh("s", "echo ran", 60)]);
    let archive = compress(&fixture::TarBuilder::new().finish());
    let long = "a".repeat(55);
    let bad = [
        "",
        ".",
        "..",
        "-x",
        "--help",
        "a+b",
        "a_b",
        "Job",
        "a.b",
        "../real-1",
        "a/b",
        "a b",
        "é",
        "a\tb",
        &long,
    ];
    let before = d.snapshot(Path::new("/nonexistent"));
    for id in bad {
        for via_argv in [true, false] {
            let mut cmd = d.command();
            if via_argv {
                cmd.args(["run", "--", id]);
            } else {
                cmd.arg("run").env("QREXEC_SERVICE_ARGUMENT", id);
            }
            cmd.env("QREXEC_REMOTE_DOMAIN", "sd-dev");
            let out = d.call(cmd, &archive);
            assert_eq!(out.status.code(), Some(2), "id {id:?} via argv={via_argv}");
            let (outcome, reason) = result(&out);
            assert_eq!(outcome, Outcome::Error);
            assert!(
                reason.contains("invalid job id") || reason.contains("no job id"),
                "id {id:?}: {reason}"
            );
        }
    }
    // argv[1] and the environment must agree; the full service name must match.
    let mut cmd = d.service("real-1");
    cmd.env("QREXEC_SERVICE_ARGUMENT", "other-1");
    assert!(result(&d.call(cmd, &archive)).1.contains("disagree"));
    let mut cmd = d.service("real-1");
    cmd.env("QREXEC_SERVICE_FULL_NAME", "sdci.Other+real-1");
    assert!(result(&d.call(cmd, &archive))
        .1
        .contains("QREXEC_SERVICE_FULL_NAME"));
    assert_eq!(
        before,
        d.snapshot(Path::new("/nonexistent")),
        "a refusal changed the disk"
    );
}

#[test]
fn a_job_without_a_job_file_is_refused() {
    let d = Dom0::new();
    let out = d.call(d.service("unknown-1"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(result(&out).1.contains("not found"), "{:?}", result(&out));
    assert!(!d.job_dir("unknown-1").exists());
}

#[test]
fn a_job_runs_only_once() {
    let d = Dom0::new();
    d.job("once-1", vec![sh("s", "echo ran", 60)]);
    let archive = compress(&fixture::TarBuilder::new().finish());
    assert_eq!(d.call(d.service("once-1"), &archive).status.code(), Some(0));
    let again = d.call(d.service("once-1"), &archive);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        result(&again).1.contains("already ran"),
        "{:?}",
        result(&again)
    );
}

#[test]
fn a_caller_that_never_sends_is_cut_off_by_the_read_timeout() {
    let d = Dom0::with_config("[limits]\nread_timeout_secs = 1\n");
    d.job("silent-1", vec![sh("s", "echo ran", 60)]);
    d.hand_over();
    let mut cmd = d.service("silent-1");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let held_open = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    drop(held_open);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        result(&out).1.contains("no data for 1 s"),
        "{:?}",
        result(&out)
    );
    assert!(!d.job_dir("silent-1").join("tree").exists());
}

#[test]
fn a_broken_stdout_does_not_stop_the_job_and_the_log_file_gets_everything() {
    let d = Dom0::new();
    let done = d.root().join("done");
    d.job(
        "broken-1",
        vec![
            sh(
                "chatty",
                "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done",
                60,
            ),
            sh(
                "last",
                &format!("touch {}; echo last step", done.display()),
                60,
            ),
        ],
    );
    d.hand_over();
    let mut cmd = d.service("broken-1");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take()); // the dev VM went away
    let archive = compress(&fixture::TarBuilder::new().finish());
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&archive).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(done.exists(), "the last step ran");
    let log = std::fs::read_to_string(d.job_dir("broken-1").join("log.txt")).unwrap();
    assert!(log.contains("stdout to the dev VM is gone"), "{log}");
    assert!(log.contains("[chatty] line 1999"));
    assert!(log.contains("result: success"));
}

#[test]
fn the_previous_checkout_is_replaced_without_following_its_symlinks() {
    let d = Dom0::new();
    let outside = d.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep me").unwrap();
    std::fs::create_dir_all(d.checkout.join("sub")).unwrap();
    std::fs::write(d.checkout.join("sub/old-file"), b"old").unwrap();
    std::os::unix::fs::symlink(&outside, d.checkout.join("sub/link-out")).unwrap();
    d.job("replace-1", vec![sh("s", "ls", 60)]);
    let mut b = fixture::TarBuilder::new();
    b.file("new-file", 0o644, b"new");
    let out = d.call(d.service("replace-1"), &compress(&b.finish()));
    assert_eq!(out.status.code(), Some(0), "{:?}", result(&out));
    assert!(d.checkout.join("new-file").exists());
    assert!(!d.checkout.join("sub").exists());
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep me");
    let leftovers: Vec<_> = std::fs::read_dir(&d.home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("sdci-old"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_old_copy_the_user_cannot_remove_goes_to_the_privileged_remover_and_the_job_goes_on() {
    let d0 = Dom0::new();
    let record = d0.root().join("remover-called");
    let remover = d0.root().join("fake-sudo-rm");
    std::fs::write(
        &remover,
        format!("#!/bin/sh\necho \"$@\" > {}\nexit 0\n", record.display()),
    )
    .unwrap();
    std::fs::set_permissions(&remover, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Dom0 {
        config: {
            let text = std::fs::read_to_string(&d0.config).unwrap().replace(
                "privileged_remove = [\"false\"]",
                &format!("privileged_remove = [{:?}, \"--\"]", remover),
            );
            std::fs::write(&d0.config, text).unwrap();
            d0.config.clone()
        },
        ..d0
    };
    let locked = d.checkout.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::write(locked.join("root-owned"), b"x").unwrap();
    d.job("locked-1", vec![sh("s", "echo ran", 60)]);
    d.hand_over();
    if is_root() {
        // As a sudo step leaves it: root-owned, not writable by the dom0 user.
        chown_tree(&locked, 0, 0);
    } else {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let out = run_with_input(
        d.service("locked-1"),
        &compress(&fixture::TarBuilder::new().finish()),
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", result(&out));
    let called = std::fs::read_to_string(&record).unwrap();
    assert!(
        called.starts_with("-- ") && called.contains(".securedrop-workstation.sdci-old-locked-1"),
        "{called}"
    );
    assert!(log_texts(&out)
        .iter()
        .any(|t| t.contains("could not be removed")));
    assert!(d.checkout.exists() && !d.checkout.join("locked").exists());
    let aside = d.home.join(".securedrop-workstation.sdci-old-locked-1");
    std::fs::set_permissions(aside.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_qrexec_service_file_passes_the_argument_to_sdci_dom0_run() {
    let d = Dom0::new();
    d.job("svcfile-1", vec![sh("s", "echo via service file", 60)]);
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../qubes-rpc/sdci.Run"
    ))
    .unwrap();
    assert!(shipped.contains("exec /usr/local/bin/sdci-dom0 run -- \"$@\""));
    let mode = std::fs::metadata(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../qubes-rpc/sdci.Run"
    ))
    .unwrap()
    .permissions()
    .mode();
    assert_eq!(mode & 0o777, 0o755);
    let local = d.root().join("sdci.Run");
    std::fs::write(&local, shipped.replace("/usr/local/bin/sdci-dom0", BIN)).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut via_file = Command::new(&local);
    via_file.arg("svcfile-1").env_clear();
    let qrexec = d.service("svcfile-1");
    for (k, v) in qrexec.get_envs() {
        if let Some(v) = v {
            via_file.env(k, v);
        }
    }
    let out = d.call(via_file, &compress(&fixture::TarBuilder::new().finish()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log_texts(&out).contains(&"via service file".to_string()));
}

#[test]
fn the_policy_allows_only_sd_dev_to_dom0_and_denies_everything_else() {
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../qubes-rpc/30-sdci.policy"
    ))
    .unwrap();
    let rules: Vec<Vec<&str>> = policy
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rules,
        [
            vec!["sdci.Run", "*", "sd-dev", "@adminvm", "allow"],
            vec!["sdci.Run", "*", "@anyvm", "*", "deny"],
        ]
    );
}

#[test]
fn the_jobs_deadline_stops_a_step_as_an_infrastructure_error() {
    let d = Dom0::new();
    let mut job = job_file("deadline-1", vec![sh("slow", "sleep 600", 3600)]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    job.spec.deadline_unix = now + 3;
    std::fs::create_dir_all(d.job_dir("deadline-1")).unwrap();
    std::fs::write(d.job_dir("deadline-1").join("job.json"), job.to_json()).unwrap();
    let out = d.call(
        d.service("deadline-1"),
        &compress(&fixture::TarBuilder::new().finish()),
    );
    assert_eq!(out.status.code(), Some(2));
    let (outcome, reason) = result(&out);
    assert_eq!(outcome, Outcome::Error);
    assert!(
        reason.contains("deadline passed during step \"slow\""),
        "{reason}"
    );
}
