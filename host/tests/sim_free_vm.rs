//! Freeing the VM at once (issue 14, item 7): once dom0's log is downloaded, the job's VM is
//! powered off, not shut down as a guest — the next job's revert discards its disk anyway. On
//! the govmomi simulator with a real-Qubes-like guest shutdown (30 s from `ShutdownGuest` to
//! power-off), the time from "launch exited" (the job enters `finishing`) to the next job's
//! revert (it enters `booting`) is measured and printed.

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::*;
use common::*;
use sdci_host::domain::JobState;
use sdci_tests::vsphere_sim::{SimOptions, VsphereSim};
use std::time::Duration;

const VM: &str = "Qubes_4.2_a";

#[tokio::test]
async fn the_next_job_reverts_the_vm_moments_after_the_last_one_finished_not_a_guest_shutdown_later(
) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    let sim = VsphereSim::start(
        SimOptions::vcenter().vms(vec![vm(VM, &ctl).shutdown_delay(Duration::from_secs(30))]),
    )
    .unwrap();
    let host = start_host(dir.path(), &sim, "[jobs]\npoll_interval_ms = 50\n").await;
    let a = push_job(&host, 1, "main").await;
    let b = push_job(&host, 2, "dev").await;
    for id in [&a, &b] {
        let job = job_ended(&host, "both jobs end", id).await;
        assert_eq!(job.state, JobState::Success, "{:?}", job.note);
    }
    let at = |id: &str, state: &str| {
        host.hub
            .store
            .transitions(id)
            .unwrap()
            .into_iter()
            .find(|t| t.2 == state)
            .map(|t| t.0)
            .unwrap()
    };
    let freed_to_revert = at(&b, "booting") - at(&a, "finishing");
    eprintln!(
        "VM freed (launch exited) -> next job's revert: {freed_to_revert} ms \
         (guest shutdown delay 30000 ms)"
    );
    assert!(
        freed_to_revert < 5_000,
        "the next job waited {freed_to_revert} ms for the VM: a guest shutdown, not a power-off"
    );
    eventually("VM off", || powered_off(&sim, VM)).await;
}
