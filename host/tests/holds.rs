//! Holding a failed job's VM (issue 18) with the in-memory hypervisor: the VM stays on and out of
//! dispatch (a queued job takes the other VM), it is shown as held, a host restart keeps the hold
//! (the reconciler does not power it off as a stray), and at its TTL the reconciler powers it
//! off and frees it.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::server::Parts;
use sdci_vsphere::PowerState;
use std::time::Duration;

const POOL: &str = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                    hold_on_failure = \"failure\"\nhold_secs = 8\n\
                    [jobs]\npoll_interval_ms = 20\n";

#[tokio::test]
async fn a_failed_jobs_vm_is_held_out_of_dispatch_survives_a_restart_and_is_powered_off_at_expiry()
{
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    let host = start_reconciling(dir.path(), POOL, hv.clone(), Parts::ALL, 1).await;
    let c = reqwest::Client::new();
    deliver_push(&c, &host.url, "d1", "one", 1).await;
    let j1 = job_of_commit(&host, 1).id.to_string();
    eventually("job 1 launched", || hv.started().contains(&j1)).await;
    hv.release(&j1, 1);
    let ended = job_ended(&host, "job 1 fails", &j1).await;
    assert_eq!(ended.state, JobState::Failure);
    let vm = ended.vm.unwrap();
    eventually("the hold recorded", || {
        !host.hub.store.holds().unwrap().is_empty()
    })
    .await;
    let hold = host.hub.store.hold_of_job(&j1).unwrap().unwrap();
    assert_eq!(hold.vm, vm);
    assert!(hold.automatic && hold.who.contains("hold_on_failure"));
    assert_eq!(
        hv.power(&vm),
        PowerState::On,
        "the failed job's VM stays on"
    );
    let shown = sdci_host::surface::holds::vms_lines(&host.hub.store, &["4.2".into()]).unwrap();
    assert!(
        shown.contains(&format!("held VM {vm} for job {j1}")),
        "{shown}"
    );
    let metrics = c
        .get(format!("{}/metrics", host.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("\nsdci_held_vms 1\n"), "{metrics}");
    assert!(
        metrics.contains("sdci_stage_snapshots{pool=\"4.2\"} 0"),
        "{metrics}"
    );

    // A queued job takes the other VM.
    deliver_push(&c, &host.url, "d2", "two", 2).await;
    let j2 = job_of_commit(&host, 2).id.to_string();
    eventually("job 2 launched", || hv.started().contains(&j2)).await;
    let j2_vm = host.hub.store.job(&j2).unwrap().unwrap().vm.unwrap();
    assert_ne!(j2_vm, vm, "the held VM is out of dispatch");
    hv.release(&j2, 0);
    assert_eq!(
        job_ended(&host, "job 2 passes", &j2).await.state,
        JobState::Success
    );

    // A restart keeps the hold: the new process's reconciler leaves the VM on.
    drop(host);
    let host = start_reconciling(dir.path(), POOL, hv.clone(), Parts::ALL, 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let now = sdci_host::now_ms();
    let kept = host.hub.store.hold_of_job(&j1).unwrap();
    assert!(
        kept.as_ref().is_some_and(|h| h.until_ms > now),
        "the hold survives the restart until its time: {kept:?}"
    );
    assert_eq!(hv.power(&vm), PowerState::On, "a held VM is no stray");

    // At its TTL the VM is powered off and free again.
    eventually("the hold expires", || {
        host.hub.store.holds().unwrap().is_empty() && hv.power(&vm) == PowerState::Off
    })
    .await;
    let free = host
        .hub
        .store
        .vms()
        .unwrap()
        .into_iter()
        .find(|v| v.name == vm)
        .unwrap();
    assert_eq!(free.job_id, None, "the VM is free for the next job");
}
