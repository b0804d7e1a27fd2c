//! The retention of provisioned snapshots (issue 18), run as the reconciler runs it, on the
//! in-memory hypervisor: per pool, the count and age limits remove stage snapshots from the VM
//! and the store, but never one a queued re-run uses, never a branch's newest, and never a
//! snapshot without the `sdci-job-` prefix (a golden one).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::orchestration::Orchestrator;
use sdci_host::server::{self, Parts};
use sdci_host::store::{NewJob, StageSnapshot};
use sdci_host::surface::reruns::{rerun_from, Answer};
use sdci_vsphere::Hypervisor;

const POOL: &str = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                    stage_snapshots_max = 1\nstage_snapshots_max_age_hours = 1\n";

fn new_job(n: u32, branch: &str) -> NewJob {
    NewJob {
        repo: REPO.parse().unwrap(),
        sha: sha(n).parse().unwrap(),
        reason: sdci_protocol::Reason::Push,
        branch: Some(branch.into()),
        supersede_key: None,
        clone_url: "x".into(),
        version: Some("4.2".into()),
        snapshot: None,
        update_first: false,
        commit_author: None,
        commit_subject: None,
    }
}

#[tokio::test]
async fn count_and_age_limits_remove_stage_snapshots_but_never_one_in_use_or_a_branchs_newest() {
    let dir = tempfile::tempdir().unwrap();
    let vm = "Qubes_4.2_a";
    let hv = MemoryHv::with_vms(&[vm]);
    // No scheduler: the re-run below stays queued, so its snapshot stays in use.
    let host = start(dir.path(), POOL, hv.clone(), Parts::HTTP_ONLY).await;
    let store = &host.hub.store;
    hv.create_memory_snapshot(vm, "golden-with-memory", "not a stage snapshot")
        .await
        .unwrap();
    let now = sdci_host::now_ms();
    let hour = 3_600_000;
    // (job, branch, age): j1 and j2 are main's older ones, j3 main's newest, j4 fix's only.
    let mut ids = Vec::new();
    for (n, branch, age) in [
        (1, "main", 3 * hour),
        (2, "main", 2 * hour),
        (3, "main", hour / 6),
        (4, "fix", hour / 3),
    ] {
        let id = store.insert_job(&new_job(n, branch)).unwrap().to_string();
        let name = sdci_host::domain::stages::snapshot_name(&id);
        hv.create_memory_snapshot(vm, &name, "").await.unwrap();
        store
            .record_stage_snapshot(&StageSnapshot {
                job_id: id.clone(),
                vm: vm.into(),
                version: "4.2".into(),
                branch: Some(branch.into()),
                name,
                created_ms: now - age,
                bytes: None,
            })
            .unwrap();
        ids.push(id);
    }
    for id in &ids {
        store
            .set_job_stages(
                id,
                &[
                    ("make-dev".into(), "provision".into()),
                    ("make-test".into(), "test".into()),
                ],
            )
            .unwrap();
    }
    let Answer::Queued(rerun) = rerun_from(store, None, &ids[0], "test", "test").unwrap() else {
        panic!("the re-run was refused")
    };

    let auth = server::guest_auth(&host.hub.cfg).unwrap();
    let orch = Orchestrator::new(host.hub.clone(), hv.clone(), auth);
    orch.prune_stage_snapshots().await;

    let left: Vec<String> = hv
        .snapshots(vm)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let name = |i: usize| sdci_host::domain::stages::snapshot_name(&ids[i]);
    assert!(
        left.contains(&name(0)),
        "in use by {rerun}: kept ({left:?})"
    );
    assert!(left.contains(&name(2)), "main's newest: kept ({left:?})");
    assert!(left.contains(&name(3)), "fix's newest: kept ({left:?})");
    assert!(
        !left.contains(&name(1)),
        "over the count and the age: removed ({left:?})"
    );
    assert!(left.contains(&"golden-with-memory".to_owned()), "{left:?}");
    assert!(
        store.stage_snapshot(&ids[1]).unwrap().is_none(),
        "the store knows it is gone"
    );
    for i in [0, 2, 3] {
        assert!(store.stage_snapshot(&ids[i]).unwrap().is_some());
    }
    // The re-run of the removed one is refused, naming the full run.
    match rerun_from(store, None, &ids[1], "test", "test").unwrap() {
        Answer::Refused(text) => {
            assert!(text.contains("removed by the retention"), "{text}");
            assert!(
                text.contains(&format!("sdci-host jobs rerun {}", ids[1])),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}
