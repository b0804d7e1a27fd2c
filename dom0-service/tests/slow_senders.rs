//! Senders that are slow on purpose, against the real `sdci-dom0 run`: a trickle that stays just
//! inside the per-read timeout is cut off by the minimum average rate, the job's deadline bounds
//! the whole unpack, and a tree that is complete only after the deadline is never moved into
//! place. Honest senders are covered by `run_service.rs` (the limits' defaults are generous).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_dom0::fixture::{Rng, TarBuilder};
use sdci_protocol::Outcome;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A valid archive big enough that a trickle never finishes it.
fn archive() -> Vec<u8> {
    let mut b = TarBuilder::new();
    b.file("Makefile", 0o644, b"all:\n");
    b.file("noise", 0o644, &Rng::new(3).binary(64 * 1024));
    compress(&b.finish())
}

/// Runs `cmd`, writing `archive` through `send` (which gets the stdin pipe and the bytes, and
/// stops at the first failed write: the service has hung up). Returns the output and how long
/// the service took.
fn call_with_sender(
    d: &Dom0,
    mut cmd: Command,
    send: impl FnOnce(&mut dyn Write, &[u8]) + Send + 'static,
) -> (Output, Duration) {
    d.hand_over();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = archive();
    let writer = std::thread::spawn(move || send(&mut stdin, &bytes));
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(SAFETY_NET) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: plain kill of our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("sdci-dom0 did not exit within {SAFETY_NET:?}");
        }
    };
    let took = start.elapsed();
    writer.join().unwrap();
    (out, took)
}

/// One byte every `every`, for at most `limit`, until the service hangs up.
fn trickle(every: Duration, limit: Duration) -> impl FnOnce(&mut dyn Write, &[u8]) + Send {
    move |w, bytes| {
        let start = Instant::now();
        for b in bytes {
            if w.write_all(&[*b]).and_then(|()| w.flush()).is_err() || start.elapsed() > limit {
                return;
            }
            std::thread::sleep(every);
        }
    }
}

fn job_with_deadline(d: &Dom0, id: &str, secs_from_now: u64) {
    job_with_steps(
        d,
        id,
        secs_from_now,
        vec![sh("must-not-run", "echo STEP RAN", 60)],
    );
}

fn job_with_steps(d: &Dom0, id: &str, secs_from_now: u64, steps: Vec<sdci_protocol::Step>) {
    let mut job = job_file(id, steps);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    job.spec.deadline_unix = now + secs_from_now;
    std::fs::create_dir_all(d.job_dir(id)).unwrap();
    std::fs::write(d.job_dir(id).join("job.json"), job.to_json()).unwrap();
}

fn assert_refused_and_nothing_in_place(d: &Dom0, id: &str, out: &Output, expected: &str) {
    let (outcome, reason) = result(out);
    assert_eq!(out.status.code(), Some(2), "{reason}");
    assert_eq!(outcome, Outcome::Error);
    assert!(
        reason.contains(expected),
        "expected {expected:?} in {reason:?}"
    );
    assert!(!log_texts(out).contains(&"STEP RAN".to_string()));
    assert!(
        !d.job_dir(id).join("tree").exists(),
        "the tree was left behind"
    );
    assert!(!d.checkout.exists(), "the tree was moved into place");
}

#[test]
fn a_sender_trickling_just_inside_the_read_timeout_is_cut_off_by_the_minimum_rate() {
    // Before the minimum rate, this sender (a byte every 1.5 s, under the 2 s read timeout) kept
    // the service alive for the whole archive: 60,000 bytes, 25 hours.
    let d = Dom0::with_config(
        "[limits]\nread_timeout_secs = 2\nmin_rate_bytes_per_sec = 1024\nrate_grace_secs = 2\n",
    );
    d.job("trickle-1", vec![sh("must-not-run", "echo STEP RAN", 60)]);
    let (out, took) = call_with_sender(
        &d,
        d.service("trickle-1"),
        trickle(Duration::from_millis(1500), Duration::from_secs(60)),
    );
    assert_refused_and_nothing_in_place(&d, "trickle-1", &out, "the dev VM sends too slowly");
    assert!(
        took < Duration::from_secs(10),
        "cut off after {took:?}, not at the 2 s grace"
    );
}

#[test]
fn the_jobs_deadline_bounds_the_whole_unpack_even_at_an_acceptable_rate() {
    // The rate check is off and every byte arrives well inside the read timeout: only the
    // deadline (2–3 s away) can stop this sender.
    let d = Dom0::with_config("[limits]\nread_timeout_secs = 5\nmin_rate_bytes_per_sec = 0\n");
    job_with_deadline(&d, "deadline-unpack-1", 3);
    let (out, took) = call_with_sender(
        &d,
        d.service("deadline-unpack-1"),
        trickle(Duration::from_millis(200), Duration::from_secs(60)),
    );
    assert_refused_and_nothing_in_place(
        &d,
        "deadline-unpack-1",
        &out,
        "the job's deadline passed while the tree was being received",
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_tree_completed_only_after_the_deadline_is_never_moved_into_place() {
    // All but the end-of-archive marker at once, the rest after the deadline but inside the
    // read timeout: the tree would be complete, yet late.
    let d = Dom0::with_config("[limits]\nread_timeout_secs = 8\nmin_rate_bytes_per_sec = 0\n");
    job_with_deadline(&d, "late-1", 2);
    let mut b = TarBuilder::new();
    b.file("Makefile", 0o644, b"all:\n");
    let tar = b.finish();
    let (head, tail) = tar.split_at(tar.len() - 1024);
    // Two zstd frames: the decoder hands the first one's tar bytes on at once.
    let mut parts = compress(head);
    let late = compress(tail);
    parts.extend_from_slice(&late);
    let split = parts.len() - late.len();
    let (out, _) = call_with_sender(&d, d.service("late-1"), move |w, _| {
        if w.write_all(&parts[..split])
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
        std::thread::sleep(Duration::from_secs(4));
        let _ = w.write_all(&parts[split..]);
    });
    assert_refused_and_nothing_in_place(&d, "late-1", &out, "the job's deadline passed");
}

#[test]
fn an_honest_sender_at_full_speed_is_unaffected_by_the_rate_and_deadline_checks() {
    let d = Dom0::with_config("[limits]\nmin_rate_bytes_per_sec = 1048576\nrate_grace_secs = 1\n");
    job_with_steps(
        &d,
        "honest-1",
        120,
        vec![sh("ok", "test -f Makefile && echo IN PLACE", 60)],
    );
    let (out, _) = call_with_sender(&d, d.service("honest-1"), |w, bytes| {
        let _ = w.write_all(bytes);
    });
    let (outcome, reason) = result(&out);
    assert_eq!(outcome, Outcome::Success, "{reason}");
    assert!(log_texts(&out).contains(&"IN PLACE".to_string()));
    assert!(d.checkout.join("noise").exists());
}
