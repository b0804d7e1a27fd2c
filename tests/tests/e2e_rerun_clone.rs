//! End to end, issue 18 (contracts §12): a stage re-run on another VM of the pool. A job is
//! snapshotted after `provision`; a second job keeps that VM busy; `sdci-host jobs rerun ID
//! --from test` then takes the other VM's slot (leased, kept powered off) and runs on
//! `sdci-clone-<re-run id>`, a linked clone of the snapshot with its memory: only the `test`
//! steps, on the origin's tree and dom0 state (the fixture's `make dev` nonce is printed by the
//! re-run's `make test`), with its own status; the clone is destroyed at the end and the pool
//! never has more VMs on than it has VMs. With `make dev` slowed to 20 s it prints the
//! benchmark of the closing note: request → first `make test` line for a full job, "Re-run
//! tests" on the snapshot's VM, and "Re-run tests" on a clone. vSphere simulator world (vCenter:
//! `CloneVM_Task`), the real `sdci-host`, `sdci-agent`, `sdci-dom0`, the Qubes and GitHub
//! stand-ins. Needs root, as `tests/tests/e2e.rs` does (`SDCI_ALLOW_SKIP` skips it).

#![allow(clippy::unwrap_used)]

use sdci_tests::job_world::{line_ms, unix_ms, JobWorld};
use sdci_tests::world::{Unsupported, World, WorldOptions};
use std::time::Duration;

/// How long the fixture's `make dev` takes.
const DEV_SECS: f64 = 20.0;
/// How long the busy job's `make dev` keeps the snapshot's VM busy.
const BUSY_SECS: f64 = 240.0;

/// Asks for "Re-run tests" of `id`; (re-run id, request time).
fn rerun_tests(w: &World, id: &str) -> (String, i64) {
    let asked = unix_ms();
    let rerun = w
        .host_cli(&["jobs", "rerun", id, "--from", "test"])
        .unwrap()
        .trim()
        .to_owned();
    (rerun, asked)
}

/// What every re-run must show: only the test stage, on the origin's provisioned tree.
fn assert_only_tests_on_the_snapshot(log: &str, nonce: &str) {
    assert!(
        log.contains(&format!("tree provisioned by: {nonce}")),
        "the re-run's make test did not run on the snapshot's provisioned state:\n{log}"
    );
    for absent in ["make-dev", "make-clone", "Cloning", "unpacked", "[agent]"] {
        assert!(
            !log.contains(absent),
            "the re-run ran {absent:?} (a fetch, an unpack or provision):\n{log}"
        );
    }
}

#[test]
fn with_the_snapshots_vm_busy_rerun_tests_runs_on_a_linked_clone_in_the_other_vms_slot() {
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
    let vms: Vec<String> = WorldOptions::default().vms;

    // 1. A full job, snapshotted after provision.
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
    let nonce = log
        .lines()
        .find_map(|l| l.split("provisioned: ").nth(1))
        .unwrap_or_else(|| panic!("make dev printed no nonce:\n{log}"))
        .to_owned();
    let full = line_ms(&log, "make-test: ").unwrap() - full_asked;
    let origin_vm = job.vm.clone();
    let other_vm = vms.iter().find(|v| **v != origin_vm).unwrap().clone();

    // 2. "Re-run tests" with the snapshot's VM free: on that VM, no clone.
    let (r1, r1_asked) = rerun_tests(&w, &id);
    let j1 = w.wait_job(&r1).unwrap();
    let log1 = w.job_log(&r1);
    assert_eq!(j1.state, "success", "{}\n{log1}", j1.text);
    assert_eq!(
        j1.vm, origin_vm,
        "the snapshot's VM was free: it is reverted"
    );
    assert!(!j1.text.contains("sdci-clone-"), "{}", j1.text);
    assert_only_tests_on_the_snapshot(&log1, &nonce);
    let on_vm = line_ms(&log1, "make-test: ").unwrap() - r1_asked;

    // 3. A second job keeps the snapshot's VM busy (FIFO takes the first free VM).
    let busy_sha = w
        .fixture()
        .commit_dev_secs(BUSY_SECS, "a long make dev")
        .unwrap();
    w.publish(&busy_sha).unwrap();
    let busy = w.push(&busy_sha).unwrap();
    let busy_job = w
        .wait_job_until(&busy, Duration::from_secs(120), &|j| {
            j.state == "running" || j.is_terminal()
        })
        .unwrap();
    assert_eq!(busy_job.state, "running", "{}", busy_job.text);
    assert_eq!(
        busy_job.vm, origin_vm,
        "the busy job must run on the snapshot's VM for this test"
    );

    // While the re-run runs, the pool never has more VMs on than it has VMs.
    let mut most_on = 0;
    // 4. "Re-run tests" with the snapshot's VM busy: on a clone in the other VM's slot.
    let (r2, r2_asked) = rerun_tests(&w, &id);
    let clone = format!("sdci-clone-{r2}");
    let mut seen_clone_on = false;
    let j2 = loop {
        let on = w.vms_on().unwrap();
        most_on = most_on.max(on.len());
        assert!(
            !on.contains(&other_vm),
            "{other_vm} lends its slot and stays off: {on:?}"
        );
        seen_clone_on |= on.contains(&clone);
        // (`jobs show` runs the binary, which a concurrent build may be relinking: look again.)
        let Ok(j) = w.job(&r2) else {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        if j.is_terminal() {
            break w.wait_job(&r2).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log2 = w.job_log(&r2);
    assert_eq!(j2.state, "success", "{}\n{log2}", j2.text);
    assert!(seen_clone_on, "the clone {clone} was never seen powered on");
    assert!(most_on <= vms.len(), "more VMs on than the pool has");
    assert_eq!(
        j2.vm,
        other_vm,
        "the re-run holds the other VM's slot:\n{}\n{log2}\nbusy job:\n{}\nhost log:\n{}",
        j2.text,
        w.job(&busy).map(|j| j.text).unwrap_or_default(),
        sdci_tests::world::tail(&w.host_log(), 120)
    );
    let snapshot = format!("sdci-job-{id}-provisioned");
    let shown =
        format!("{clone} (a linked clone of {snapshot} of {origin_vm}, in {other_vm}'s slot)");
    assert!(
        j2.history
            .iter()
            .any(|t| t.note == format!("attempt 1 on {shown}")),
        "jobs show does not say where it ran:\n{}",
        j2.text
    );
    assert_only_tests_on_the_snapshot(&log2, &nonce);
    assert!(
        log2.contains(&format!("=== {clone} powered off and destroyed")),
        "{log2}"
    );
    let (code, page) = w.get(&format!("/jobs/{r2}")).unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains(&clone) && page.contains("a linked clone of"),
        "{page}"
    );
    let runs = w.github().check_runs(sdci_tests::world::REPO, &sha);
    let said = format!("Runs on {shown}.");
    assert!(
        runs.iter().any(|r| r.output.as_ref().is_some_and(|o| {
            o.text.as_deref().unwrap_or("").contains(&said)
                || o.summary.as_deref().unwrap_or("").contains(&said)
        })),
        "no check run says {said:?}: {runs:#?}"
    );
    let on_clone = line_ms(&log2, "make-test: ").unwrap() - r2_asked;
    // Its own status, beside the origin's and the first re-run's.
    let statuses = w.statuses(&sha);
    assert!(
        statuses.iter().filter(|s| s.state == "success").count() >= 3,
        "{statuses:?}"
    );
    let names: Vec<String> = w
        .power_states()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        !names.contains(&clone),
        "the clone was not destroyed: {names:?}"
    );
    assert_eq!(
        w.job(&busy).unwrap().state,
        "running",
        "the busy job was not disturbed"
    );

    // 5. The busy job ends; nothing is left on.
    w.host_cli(&["jobs", "cancel", &busy]).unwrap();
    let ended = w.wait_job(&busy).unwrap();
    assert_eq!(ended.state, "canceled", "{}", ended.text);
    assert!(w.vms_on().unwrap().is_empty(), "a VM was left on");

    let secs = |ms: i64| Duration::from_millis(ms.max(0) as u64);
    eprintln!(
        "BENCH clone re-run (make dev = {DEV_SECS} s): request -> first make-test line: full job \
         {:.1?}, Re-run tests on the snapshot's VM {:.1?}, Re-run tests on a linked clone {:.1?}",
        secs(full),
        secs(on_vm),
        secs(on_clone)
    );
    assert!(
        (on_clone as f64) / 1000.0 + DEV_SECS * 0.5 < (full as f64) / 1000.0,
        "the re-run on a clone did not skip make dev: {on_clone} ms vs {full} ms"
    );
}
