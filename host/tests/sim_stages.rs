//! Stages on VMware's govmomi simulator through the real vim25 client (issue 18): the
//! provisioned snapshot taken with memory while the job goes on (triggered by the ingested
//! `step_finished` of `make-dev`), a re-run from `test` pinned to the VM holding the snapshot,
//! reverted to it (the VM comes back on, the tree is the snapshot's, not the one written after
//! it), running only the `test` steps through `sdci-dom0 rerun`; and the refusal once the
//! snapshot is gone. `sdci-dom0` in the guest is a stub script that records how it was called
//! and what tree it found.

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::*;
use common::*;
use sdci_host::domain::JobState;
use sdci_host::surface::reruns::{rerun_from, Answer};
use sdci_protocol::{EventKind, EventWriter, JobFile, Outcome};
use sdci_tests::vsphere_sim::{SimOptions, SimVm, VsphereSim};
use std::path::Path;
use std::time::Duration;

const FAST: &str = "[jobs]\npoll_interval_ms = 50\nmax_attempts = 1\n";

/// `launch`: writes the "fetched" tree (`securedrop-workstation/fetched-by` = the job id) and
/// waits for `CTL/go-<id>`. `rerun`: records the tree it found and copies the events the test
/// laid out (`CTL/rerun-events`) to `events.ndjson`.
fn stub(ctl: &Path) -> String {
    let c = ctl.display();
    format!(
        "#!/bin/sh\nmode=\"$1\"\njob=\"$2\"\ndir=$(dirname \"$job\")\nid=$(basename \"$dir\")\n\
         echo \"$mode $id\" >> '{c}/launched'\n\
         echo \"dom0 log for $mode $id\" >> \"$dir/log.txt\"\n\
         if [ \"$mode\" = launch ]; then\n\
           mkdir -p securedrop-workstation && echo \"$id\" > securedrop-workstation/fetched-by\n\
           while [ ! -f '{c}/go-'\"$id\" ]; do sleep 0.05; done\n\
           exit 0\n\
         fi\n\
         cat securedrop-workstation/fetched-by > \"$dir/tree-seen\" 2>&1\n\
         cp '{c}/rerun-events' \"$dir/events.ndjson\"\n\
         exit 0\n"
    )
}

fn sim(names: &[&str], ctl: &Path) -> VsphereSim {
    std::fs::create_dir_all(ctl).unwrap();
    let vms = names
        .iter()
        .map(|n| {
            SimVm::new(n)
                .snapshots(&["golden"])
                .tools_delay(Some(Duration::from_millis(100)))
                .shutdown_delay(Duration::from_millis(100))
                .file("/usr/local/bin/sdci-dom0", stub(ctl), 0o755)
        })
        .collect();
    VsphereSim::start(SimOptions::vcenter().vms(vms)).unwrap()
}

fn job_dir(host: &TestHost, sim: &VsphereSim, vm: &str, id: &str) -> std::path::PathBuf {
    let home = sdci_protocol::paths::dom0_home(&host.hub.cfg.dom0.user);
    let paths = sdci_protocol::JobPaths::in_home(&home, &id.parse().unwrap());
    sim.guest_path(vm, paths.dir())
}

#[tokio::test]
async fn provision_is_snapshotted_with_memory_and_rerun_tests_runs_only_the_test_steps_on_that_tree(
) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = sim(&["Qubes_4.2_a", "Qubes_4.2_b"], &ctl);
    let host = start_host(dir.path(), &sim, FAST).await;
    let id = push_job(&host, 1, "main").await;
    eventually("the job runs", || {
        host.hub.store.job(&id).unwrap().unwrap().state == JobState::Running
    })
    .await;
    let vm = host.hub.store.job(&id).unwrap().unwrap().vm.unwrap();
    let jd = job_dir(&host, &sim, &vm, &id);
    let file = JobFile::from_json(&std::fs::read(jd.join("job.json")).unwrap()).unwrap();
    relay_provision(&host.url, &file).await;

    // Provision ended: the snapshot is taken while launch goes on.
    eventually("the provisioned snapshot", || {
        host.hub.store.stage_snapshot(&id).unwrap().is_some()
    })
    .await;
    let snap = host.hub.store.stage_snapshot(&id).unwrap().unwrap();
    assert_eq!(snap.name, format!("sdci-job-{id}-provisioned"));
    assert_eq!(snap.vm, vm);
    assert_eq!(
        host.hub.store.job(&id).unwrap().unwrap().state,
        JobState::Running,
        "the snapshot did not disturb the running job"
    );
    let stages = host.hub.store.job_stages(&id).unwrap();
    let dev = stages.iter().position(|s| s.1 == "make-dev").unwrap();
    assert!(stages[..=dev].iter().all(|s| s.2 == "provision"));
    assert!(stages[dev + 1..].iter().all(|s| s.2 == "test"));
    // After the snapshot the tree changes: a re-run must see the snapshot's, not this one.
    let home = sdci_protocol::paths::dom0_home(&host.hub.cfg.dom0.user);
    let tree = sim.guest_path(&vm, &format!("{home}/securedrop-workstation/fetched-by"));
    assert_eq!(std::fs::read_to_string(&tree).unwrap().trim(), id);
    std::fs::write(&tree, "changed after the snapshot\n").unwrap();
    std::fs::write(ctl.join(format!("go-{id}")), "").unwrap();
    assert_eq!(
        job_ended(&host, "origin ends", &id).await.state,
        JobState::Success
    );

    // The events dom0's `rerun` writes (the stub copies them).
    let mut events = Vec::new();
    let mut w = EventWriter::new(&mut events);
    w.emit(EventKind::StepStarted {
        step: 0,
        name: "make-test".into(),
        argv: vec!["make".into(), "test".into()],
    })
    .unwrap();
    w.emit(EventKind::StepFinished {
        step: 0,
        status: 0,
        timed_out: false,
        duration_ms: 1500,
    })
    .unwrap();
    w.emit(EventKind::Result {
        outcome: Outcome::Success,
        reason: "all 3 steps passed".into(),
    })
    .unwrap();
    std::fs::write(ctl.join("rerun-events"), &events).unwrap();

    let Answer::Queued(rerun) = rerun_from(&host.hub.store, None, &id, "test", "test").unwrap()
    else {
        panic!("the re-run was refused")
    };
    host.hub.wake_all();
    let ended = job_ended(&host, "re-run ends", rerun.as_str()).await;
    assert_eq!(ended.state, JobState::Success, "{:?}", ended.note);
    assert_eq!(
        ended.vm.as_deref(),
        Some(vm.as_str()),
        "pinned to the snapshot's VM"
    );
    let launched = std::fs::read_to_string(ctl.join("launched")).unwrap();
    assert_eq!(
        launched.lines().collect::<Vec<_>>(),
        [format!("launch {id}"), format!("rerun {rerun}")],
        "the re-run went through `sdci-dom0 rerun`, no second launch (no agent, no fetch)"
    );
    let rd = job_dir(&host, &sim, &vm, rerun.as_str());
    assert_eq!(
        std::fs::read_to_string(rd.join("tree-seen"))
            .unwrap()
            .trim(),
        id,
        "the tree came from the snapshot"
    );
    let rfile = JobFile::from_json(&std::fs::read(rd.join("job.json")).unwrap()).unwrap();
    let names: Vec<&str> = rfile.spec.steps.iter().map(|s| s.name.as_str()).collect();
    let want: Vec<&str> = stages[dev + 1..].iter().map(|s| s.1.as_str()).collect();
    assert_eq!(names, want, "only the test stage's steps");
    assert!(names.contains(&"make-test") && !names.contains(&"make-dev"));
    // Its steps came from dom0's events file; the links go both ways.
    let timings = host.hub.store.step_timings(rerun.as_str()).unwrap();
    assert!(
        timings.iter().any(|t| t.1 == "make-test" && t.3 == Some(0)),
        "{timings:?}"
    );
    assert_eq!(
        host.hub
            .store
            .rerun_link(rerun.as_str())
            .unwrap()
            .unwrap()
            .origin,
        id
    );
    assert_eq!(host.hub.store.reruns_of(&id).unwrap(), [rerun.to_string()]);
    assert!(powered_off(&sim, &vm));

    // Once the snapshot is gone, a re-run from it is refused, offering the full run.
    host.hub.store.stage_snapshot_removed(&id).unwrap();
    match rerun_from(&host.hub.store, None, &id, "test", "test").unwrap() {
        Answer::Refused(text) => {
            assert!(text.contains("removed"), "{text}");
            assert!(
                text.contains(&format!("sdci-host jobs rerun {id}")),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}
