//! End to end, issue 18: a job's `provision` stage is snapshotted with memory while the job goes
//! on; `sdci-host jobs rerun ID --from test` reverts the VM holding that snapshot and runs only
//! the `test` steps through the real `sdci-dom0 rerun` on the tree and dom0 state the snapshot
//! holds (the fixture's `make dev` writes a nonce that `make test` prints: the re-run prints the
//! origin's), with no fetch and no unpack, and reports its own status. With `make dev` slowed
//! to a known time (`ci/dev-secs`), it prints the benchmark of the closing note: request → first
//! `make test` line, for the re-run and for the full job. vSphere simulator world (real
//! `sdci-host`, `sdci-agent`, `sdci-dom0`, the Qubes and GitHub stand-ins). Needs root, as
//! `tests/tests/e2e.rs` does (`SDCI_ALLOW_SKIP` skips it on a machine that cannot host a world).

#![allow(clippy::unwrap_used)]

use sdci_tests::job_world::JobWorld;
use sdci_tests::world::{Unsupported, World, WorldOptions};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the fixture's `make dev` takes.
const DEV_SECS: f64 = 20.0;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The Unix ms of the first log line that contains `text` (dom0's `<RFC 3339 ms> text`).
fn line_ms(log: &str, text: &str) -> Option<i64> {
    let line = log.lines().find(|l| l.contains(text))?;
    let ts = line.split(' ').next()?;
    // 2026-12-01T11:45:21.123Z
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    let days = sdci_protocol::time::days_from_civil(d[0], d[1] as u32, d[2] as u32);
    Some(((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000) + ms.parse::<i64>().ok()?)
}

#[test]
fn rerun_tests_runs_only_the_test_stage_on_the_provisioned_snapshot_and_skips_make_dev() {
    let w = match World::start(WorldOptions::default()) {
        Ok(w) => w,
        Err(e) if e.downcast_ref::<Unsupported>().is_some() => {
            assert!(
                std::env::var_os("SDCI_ALLOW_SKIP").is_some(),
                "{e}: run as root, or set SDCI_ALLOW_SKIP=1 to skip"
            );
            eprintln!("SKIPPED (SDCI_ALLOW_SKIP is set): {e}");
            return;
        }
        Err(e) => panic!("building the world failed: {e:#}"),
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
