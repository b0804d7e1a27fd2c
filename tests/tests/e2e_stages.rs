//! End to end, issue 18: a job's `provision` stage is snapshotted with memory while the job goes
//! on; `sdci-host jobs rerun ID --from test` reverts the VM holding that snapshot and runs only
//! the `test` steps through the real `sdci-dom0 rerun` on the tree and dom0 state the snapshot
//! holds (the fixture's `make dev` writes a nonce that `make test` prints: the re-run prints the
//! origin's), with no fetch and no unpack, and reports its own status. With `make dev` slowed
//! to a known time (`ci/dev-secs`), it prints the benchmark of the closing note: request → first
//! `make test` line, for the re-run and for the full job.
//!
//! The check run's buttons, as GitHub delivers them (`requested_action`, validated against
//! `@octokit/openapi-webhooks`): "Re-run tests" from a user with write access → a new job that
//! runs only the `test` steps on the snapshot's tree with a check run of its own, from a user
//! without → nothing; "Hold VM" on a running job → its VM stays on when it ends, shown as held
//! by `sdci-host vms`, and the next job takes the other VM. A re-run whose snapshot the retention
//! pruned is refused with the message, by the CLI (exit 2) and by the button (nothing queued).
//! `hold_on_failure = "failure"`: a failing job's VM stays on, a restart of the host keeps the
//! hold, and a short `--for` powers it off.
//!
//! vSphere simulator world (real `sdci-host`, `sdci-agent`, `sdci-dom0`, the Qubes and GitHub
//! stand-ins). Needs root, as `tests/tests/e2e.rs` does (`SDCI_ALLOW_SKIP` skips it on a machine
//! that cannot host a world).

#![allow(clippy::unwrap_used)]

use sdci_tests::fixture::TestMode;
use sdci_tests::github::CheckRun;
use sdci_tests::job_world::{check_events, line_ms, unix_ms, JobWorld};
use sdci_tests::world::{Unsupported, World, WorldOptions, REPO};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the fixture's `make dev` takes.
const DEV_SECS: f64 = 20.0;

/// The world built but its host not started (`None`: no root, and skipping was asked for).
fn prepared(opts: WorldOptions) -> Option<World> {
    match World::prepare(opts) {
        Ok(w) => Some(w),
        Err(e) if e.downcast_ref::<Unsupported>().is_some() => {
            // A silent pass would hide that nothing ran: skipping must be asked for.
            assert!(
                std::env::var_os("SDCI_ALLOW_SKIP").is_some(),
                "{e}: run as root, or set SDCI_ALLOW_SKIP=1 to skip"
            );
            eprintln!("SKIPPED (SDCI_ALLOW_SKIP is set): {e}");
            None
        }
        Err(e) => panic!("building the world failed: {e:#}"),
    }
}

/// The world with its host serving, `pool_lines` added to its `[pools."4.2"]` table (the last
/// table of the world's `host.toml`).
fn world_with(opts: WorldOptions, pool_lines: &str) -> Option<World> {
    let mut w = prepared(opts)?;
    let mut toml = std::fs::read_to_string(w.config_path()).unwrap();
    assert!(
        toml.trim_end().ends_with("golden_snapshot = \"golden\""),
        "the pool table is no longer last in the world's host.toml:\n{toml}"
    );
    toml.push_str(&format!("\n{pool_lines}\n"));
    std::fs::write(w.config_path(), toml).unwrap();
    w.start_host().unwrap();
    Some(w)
}

/// `sdci-host ARGS…`: exit code, stdout, stderr (a refusal is an answer, not an error).
fn cli(w: &World, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(sdci_tests::binary("sdci-host"))
        .arg("--config")
        .arg(w.config_path())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `sha` has `n` check runs, every one completed; returns them.
fn completed_runs(w: &World, sha: &str, n: usize) -> Vec<CheckRun> {
    w.wait_check_runs(sha, Duration::from_secs(120), &|r| {
        r.len() == n && r.iter().all(|c| c.status == "completed")
    })
    .unwrap()
}

/// Polls `f` until it holds, failing after `limit`.
fn within(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The nonce the origin's `make dev` left in dom0 (what a re-run on its snapshot prints).
fn provisioned_nonce(log: &str) -> String {
    log.lines()
        .find_map(|l| l.split("provisioned: ").nth(1))
        .unwrap_or_else(|| panic!("make dev printed no nonce:\n{log}"))
        .to_owned()
}

/// What a re-run of the test stage must not have run: a fetch, an unpack, provision, the agent.
fn assert_only_the_test_stage(log: &str) {
    for absent in ["make-dev", "make-clone", "Cloning", "unpacked", "[agent]"] {
        assert!(
            !log.contains(absent),
            "the re-run ran {absent:?} (a fetch, an unpack or provision):\n{log}"
        );
    }
    assert!(log.contains("make-test: "), "no make test:\n{log}");
}

#[test]
fn rerun_tests_runs_only_the_test_stage_on_the_provisioned_snapshot_and_skips_make_dev() {
    let Some(w) = world_with(WorldOptions::default(), "") else {
        return;
    };
    let sha = w
        .fixture()
        .commit_dev_secs(DEV_SECS, "slow make dev")
        .unwrap();
    w.publish(&sha).unwrap();
    let full_asked = unix_ms();
    let id = w.push(&sha).unwrap();
    let job = w.wait_job(&id).unwrap();
    assert_eq!(job.state, "success", "{}\n{}", job.text, w.job_log(&id));
    let log = w.job_log(&id);
    assert!(
        log.contains(&format!(
            "=== provisioned snapshot sdci-job-{id}-provisioned"
        )),
        "no provisioned snapshot in the log:\n{log}"
    );
    let (code, api) = w.get(&format!("/api/v1/jobs/{id}")).unwrap();
    assert_eq!(code, 200);
    assert!(
        api.contains("\"snapshot\": true") || api.contains("\"snapshot\":true"),
        "{api}"
    );
    let provisioned = log
        .lines()
        .find_map(|l| l.split("provisioned: ").nth(1))
        .unwrap_or_else(|| panic!("make dev printed no nonce:\n{log}"))
        .to_owned();
    let full_first_test = line_ms(&log, "make-test: ").unwrap();

    let rerun_asked = unix_ms();
    let rerun = w
        .host_cli(&["jobs", "rerun", &id, "--from", "test"])
        .unwrap()
        .trim()
        .to_owned();
    let job2 = w.wait_job(&rerun).unwrap();
    let log2 = w.job_log(&rerun);
    assert_eq!(job2.state, "success", "{}\n{log2}", job2.text);
    assert_eq!(
        job2.vm, job.vm,
        "the re-run ran on the VM holding the snapshot"
    );
    assert!(
        log2.contains(&format!("tree provisioned by: {provisioned}")),
        "the re-run's make test did not run on the snapshot's provisioned state:\n{log2}"
    );
    for absent in ["make-dev", "make-clone", "Cloning", "unpacked", "[agent]"] {
        assert!(
            !log2.contains(absent),
            "the re-run ran {absent:?} (a fetch, an unpack or provision):\n{log2}"
        );
    }
    assert!(log2.contains("the tree is the snapshot's"), "{log2}");
    let rerun_first_test = line_ms(&log2, "make-test: ").unwrap();
    // Its own status, after the origin's.
    let statuses = w.statuses(&sha);
    assert!(
        statuses.iter().filter(|s| s.state == "success").count() >= 2,
        "{statuses:?}"
    );
    assert!(
        job2.text
            .contains(&format!("re-run of {id} from stage test")),
        "{}",
        job2.text
    );
    assert!(w.vms_on().unwrap().is_empty(), "a VM was left on");

    let full = Duration::from_millis((full_first_test - full_asked).max(0) as u64);
    let again = Duration::from_millis((rerun_first_test - rerun_asked).max(0) as u64);
    eprintln!(
        "BENCH stages (make dev = {DEV_SECS} s): request -> first make-test line: full job \
         {full:.1?}, Re-run tests {again:.1?}"
    );
    assert!(
        again.as_secs_f64() + DEV_SECS * 0.5 < full.as_secs_f64(),
        "the re-run did not skip make dev: {again:?} vs {full:?}"
    );
}

#[test]
fn the_re_run_tests_button_from_a_writer_runs_only_the_test_stage_with_its_own_check_run_and_from_a_reader_nothing(
) {
    let Some(w) = world_with(WorldOptions::default(), "") else {
        return;
    };
    w.github().set_permission(REPO, "maint", "write");
    w.github().set_permission(REPO, "passerby", "read");
    let sha = w.head().unwrap();
    let id = w.push(&sha).unwrap();
    let job = w.wait_job(&id).unwrap();
    assert_eq!(job.state, "success", "{}", job.text);
    let nonce = provisioned_nonce(&w.job_log(&id));
    let run = completed_runs(&w, &sha, 1).remove(0);
    assert!(
        run.actions
            .iter()
            .any(|a| a.identifier == "rerun-tests" && a.label == "Re-run tests"),
        "the button is offered while the snapshot exists: {run:#?}"
    );

    // A reader's press: nothing queued, no check run.
    let before = w.host_cli(&["jobs", "list"]).unwrap();
    let event = check_events::requested_action(&run, "passerby", "rerun-tests").unwrap();
    let (code, body) = w.send_event("check_run", &event).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("passerby has no write access"), "{body}");
    assert_eq!(
        w.host_cli(&["jobs", "list"]).unwrap(),
        before,
        "no job queued"
    );
    assert_eq!(w.check_runs(&sha).len(), 1, "no check run created");

    // A writer's press: a re-run of the test stage, on the snapshot's tree, with its own run.
    let event = check_events::requested_action(&run, "maint", "rerun-tests").unwrap();
    let (code, body) = w.send_event("check_run", &event).unwrap();
    assert_eq!(code, 202, "{body}");
    let new = body
        .strip_prefix("queued job ")
        .unwrap_or_else(|| panic!("{body}"))
        .trim()
        .to_owned();
    assert_ne!(new, id);
    let job2 = w.wait_job(&new).unwrap();
    let log2 = w.job_log(&new);
    assert_eq!(job2.state, "success", "{}\n{log2}", job2.text);
    assert!(
        job2.text
            .contains(&format!("re-run of {id} from stage test")),
        "{}",
        job2.text
    );
    assert_only_the_test_stage(&log2);
    assert!(
        log2.contains(&format!("tree provisioned by: {nonce}")),
        "the re-run did not run on the snapshot's provisioned state:\n{log2}"
    );
    let runs = completed_runs(&w, &sha, 2);
    let mine = runs
        .iter()
        .find(|r| r.external_id.as_deref() == Some(new.as_str()))
        .unwrap_or_else(|| panic!("no check run of the re-run: {runs:#?}"));
    assert_ne!(mine.id, run.id, "a check run of its own");
    assert_eq!(mine.conclusion.as_deref(), Some("success"), "{mine:#?}");
    w.wait_all_off(Duration::from_secs(60)).unwrap();
}

#[test]
fn the_hold_vm_button_on_a_running_job_keeps_its_vm_on_shown_as_held_and_the_next_job_takes_the_other_vm(
) {
    let Some(w) = world_with(WorldOptions::default(), "") else {
        return;
    };
    w.github().set_permission(REPO, "maint", "write");
    // `make dev` takes 4 s: the job is running when the button is pressed.
    let sha = w.fixture().commit_dev_secs(4.0, "slow make dev").unwrap();
    w.publish(&sha).unwrap();
    let id = w.push(&sha).unwrap();
    let running = w
        .wait_check_runs(&sha, Duration::from_secs(120), &|r| {
            r.len() == 1
                && r[0].status == "in_progress"
                && r[0].actions.iter().any(|a| a.identifier == "hold-vm")
        })
        .unwrap()
        .remove(0);
    let event = check_events::requested_action(&running, "maint", "hold-vm").unwrap();
    let (code, body) = w.send_event("check_run", &event).unwrap();
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("held for 4 h when it ends"), "{body}");
    let job = w.wait_job(&id).unwrap();
    assert_eq!(job.state, "success", "{}", job.text);
    let held = job.vm.clone();

    // Its VM stays on, shown as held; it is out of dispatch.
    std::thread::sleep(Duration::from_secs(3)); // past a reconciler pass (2 s)
    assert_eq!(
        w.vms_on().unwrap(),
        std::slice::from_ref(&held),
        "the held VM stays on"
    );
    let vms = w.host_cli(&["vms"]).unwrap();
    assert!(
        vms.contains(&format!("held VM {held} for job {id} by maint until")),
        "{vms}"
    );
    let next = w.commit(TestMode::Pass, "next").unwrap();
    let id2 = w.push(&next).unwrap();
    let job2 = w.wait_job(&id2).unwrap();
    assert_eq!(job2.state, "success", "{}", job2.text);
    assert_ne!(job2.vm, held, "the next job took the other VM");
    assert!(w.vms_on().unwrap().contains(&held), "still held");

    let said = w.host_cli(&["jobs", "release", &id]).unwrap();
    assert!(said.contains("released"), "{said}");
    w.wait_all_off(Duration::from_secs(10)).unwrap();
    wait_for("the hold to end after its VM was powered off", || {
        !w.host_cli(&["vms"]).unwrap().contains("held VM")
    });
}

#[test]
fn a_re_run_whose_provisioned_snapshot_the_retention_pruned_is_refused_by_the_cli_and_the_button_queues_nothing(
) {
    // No stage snapshot beyond the newest of each branch.
    let Some(w) = world_with(WorldOptions::default().one_vm(), "stage_snapshots_max = 0") else {
        return;
    };
    w.github().set_permission(REPO, "maint", "write");
    let first = w.head().unwrap();
    let id = w.push(&first).unwrap();
    assert_eq!(w.wait_job(&id).unwrap().state, "success");
    let run = completed_runs(&w, &first, 1).remove(0);
    let second = w.commit(TestMode::Pass, "second").unwrap();
    let id2 = w.push(&second).unwrap();
    assert_eq!(w.wait_job(&id2).unwrap().state, "success");
    // The reconciler's pass (every 2 s) prunes the first job's snapshot: the branch's newest
    // is the second's.
    within(
        "the first job's snapshot pruned",
        Duration::from_secs(30),
        || {
            let (_, api) = w.get(&format!("/api/v1/jobs/{id}")).unwrap();
            api.contains("\"snapshot\": false") || api.contains("\"snapshot\":false")
        },
    );
    let before = w.host_cli(&["jobs", "list"]).unwrap();

    let (code, out, err) = cli(&w, &["jobs", "rerun", &id, "--from", "test"]);
    assert_eq!(code, 2, "refused: stdout {out:?} stderr {err:?}");
    assert!(out.is_empty(), "no job id printed: {out}");
    assert!(
        err.contains(&format!("cannot re-run job {id} from stage \"test\""))
            && err.contains("removed")
            && err.contains(&format!("a full run is `sdci-host jobs rerun {id}`")),
        "the message says why and offers the full run: {err}"
    );

    let event = check_events::requested_action(&run, "maint", "rerun-tests").unwrap();
    let (code, body) = w.send_event("check_run", &event).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("ignored: cannot re-run job") && body.contains("removed"),
        "{body}"
    );
    assert_eq!(
        w.host_cli(&["jobs", "list"]).unwrap(),
        before,
        "nothing queued"
    );
    assert_eq!(w.check_runs(&first).len(), 1, "no check run created");
}

#[test]
fn hold_on_failure_keeps_a_failing_jobs_vm_on_across_a_host_restart_until_a_short_hold_expires() {
    let Some(mut w) = world_with(
        WorldOptions {
            mode: TestMode::Fail,
            ..WorldOptions::default()
        },
        "hold_on_failure = \"failure\"",
    ) else {
        return;
    };
    let sha = w.head().unwrap();
    let id = w.push(&sha).unwrap();
    let job = w.wait_job(&id).unwrap();
    assert_eq!(job.state, "failure", "{}", job.text);
    let held = job.vm.clone();
    let shown = |w: &World| w.host_cli(&["vms"]).unwrap();
    within("the hold shown", Duration::from_secs(10), || {
        shown(&w).contains(&format!(
            "held VM {held} for job {id} by the pool (hold_on_failure = \"failure\")"
        ))
    });
    assert_eq!(
        w.vms_on().unwrap(),
        std::slice::from_ref(&held),
        "the failed job's VM stays on"
    );

    // A restart keeps the hold: past the new process's start-up and a reconciler pass.
    w.kill_host().unwrap();
    w.start_host().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        w.vms_on().unwrap(),
        std::slice::from_ref(&held),
        "a held VM is no stray"
    );
    assert!(shown(&w).contains(&format!("held VM {held} for job {id}")));
    // A queued job takes the other VM meanwhile.
    let next = w.commit(TestMode::Pass, "next").unwrap();
    let id2 = w.push(&next).unwrap();
    let job2 = w.wait_job(&id2).unwrap();
    assert_eq!(job2.state, "success", "{}", job2.text);
    assert_ne!(job2.vm, held);

    // Shortened to 2 s: at its time the VM is powered off and the hold gone.
    let asked = Instant::now();
    w.host_cli(&["jobs", "hold", &id, "--for", "2s"]).unwrap();
    w.wait_all_off(Duration::from_secs(15)).unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "powered off before the hold's time: {:?}",
        asked.elapsed()
    );
    // The hold's row, lease line and log line end right after the power-off.
    wait_for("the hold to end, in `vms` and in the job's log", || {
        !shown(&w).contains("held VM")
            && w.job_log(&id)
                .contains(&format!("the hold of VM {held} ended (its time is up)"))
    });
}

/// Polls `done` every 100 ms until it holds, failing after 10 s: what a hold's end writes after
/// the VM is off (the store's row, the lease line, the log) lands a moment later.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "waited 10 s for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
