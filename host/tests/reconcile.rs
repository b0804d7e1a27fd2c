//! The periodic reconciler: what it repairs while the service runs.
//!
//! These use `MemoryHv` (an in-memory stand-in, see `common/mod.rs`) because they need a VM to
//! vanish from the inventory and a VM to be switched on behind the host's back. Start-up
//! reconciliation after a real SIGKILL runs on the simulator in `sim_restart.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::server::Parts;
use sdci_vsphere::PowerState;

const POOL: &str = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                    [jobs]\npoll_interval_ms = 20\n";

#[tokio::test]
async fn a_running_job_whose_vm_disappears_ends_as_error_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    let host = start_reconciling(dir.path(), POOL, hv.clone(), Parts::ALL, 1).await;
    let c = reqwest::Client::new();
    let (_, text) = deliver_push(&c, &host.url, "d1", "main", 1).await;
    let id = text.strip_prefix("queued job ").unwrap().to_owned();
    eventually("launch", || hv.started().len() == 1).await;
    hv.vms.lock().unwrap().remove("Qubes_4.2_a");
    let job = job_ended(&host, "job ended", &id).await;
    assert_eq!(job.state, JobState::Error);
    assert!(job.note.unwrap().contains("no longer exists"));
    assert_eq!(
        host.hub
            .store
            .statuses(&id)
            .unwrap()
            .last()
            .unwrap()
            .state
            .as_str(),
        "error"
    );
}

#[tokio::test]
async fn a_pool_vm_switched_on_behind_the_hosts_back_is_powered_off() {
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    let host = start_reconciling(dir.path(), POOL, hv.clone(), Parts::ALL, 1).await;
    // One VM busy with a job, the other switched on by someone else.
    let c = reqwest::Client::new();
    deliver_push(&c, &host.url, "d1", "main", 1).await;
    eventually("launch", || hv.started().len() == 1).await;
    let busy = host.hub.store.recent_jobs(1).unwrap()[0]
        .vm
        .clone()
        .unwrap();
    let other = if busy == "Qubes_4.2_a" {
        "Qubes_4.2_b"
    } else {
        "Qubes_4.2_a"
    };
    hv.vms.lock().unwrap().get_mut(other).unwrap().power = PowerState::On;
    eventually("stray VM off", || hv.power(other) == PowerState::Off).await;
    assert_eq!(
        hv.power(&busy),
        PowerState::On,
        "the VM of the live job is left alone"
    );
}
