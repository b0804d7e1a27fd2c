//! Issue 18's stage re-run on another VM of the pool (CONTRACTS §12) through the real client
//! against the govmomi simulator: a linked clone of a memory snapshot comes back suspended and
//! resumes with the snapshot's guest tree while the source runs on with its own; taken names,
//! missing snapshots and standalone ESXi are refused with errors that name them; `destroy_vm`
//! ends the clone's guest and removes it (twice is fine, and the name can be used again); and
//! `snapshot_bytes` reads a size from `layoutEx` that grows with what the snapshot holds.

#![allow(clippy::unwrap_used)]

use sdci_protocol::job::Secret;
use sdci_tests::vsphere_sim::{SimOptions, SimVm, VsphereSim};
use sdci_vsphere::{
    GuestAuth, GuestProgram, Hypervisor, PowerState, Timeouts, TlsPolicy, VsphereClient,
    VsphereConfig, VsphereError,
};
use std::time::Duration;

const SAFETY: Duration = Duration::from_secs(60);
const SOURCE: &str = "Qubes_4.2_a";
const OTHER: &str = "Qubes_4.3_a";
/// The clone's name as the host gives it (CONTRACTS §12: `sdci-clone-<job id>`).
const CLONE: &str = "sdci-clone-1234567";
const TREE: &str = "/home/user/securedrop-workstation/tree";

fn config(sim: &VsphereSim, datacenters: Option<Vec<String>>) -> VsphereConfig {
    VsphereConfig {
        url: sim.url(),
        user: sim.username().into(),
        password: Secret::new(sim.password()),
        tls: TlsPolicy::CaFile {
            ca_file: sim.ca_cert_path().unwrap().to_path_buf(),
        },
        datacenters,
        timeouts: Timeouts::default(),
    }
}

async fn connect(sim: &VsphereSim) -> VsphereClient {
    VsphereClient::connect(config(sim, None)).await.unwrap()
}

fn auth(sim: &VsphereSim) -> GuestAuth {
    GuestAuth {
        user: sim.guest_username().into(),
        password: Secret::new(sim.guest_password()),
    }
}

/// vCenter with the source in DC0 (snapshot `clean`) and another VM in DC1.
fn vcenter() -> VsphereSim {
    VsphereSim::start(SimOptions::vcenter().tls(true).vms(vec![
        SimVm::new(SOURCE)
            .snapshots(&["clean"])
            .tools_delay(Some(Duration::from_millis(100))),
        SimVm::new(OTHER).snapshots(&["clean"]).datacenter(1),
    ]))
    .unwrap()
}

/// Boots the source from `clean`, writes `content` to its tree file and takes a memory
/// snapshot `name` of it running.
async fn provision(c: &VsphereClient, sim: &VsphereSim, name: &str, content: &str) {
    if c.vm(SOURCE).await.unwrap().power != PowerState::On {
        c.revert(SOURCE, "clean").await.unwrap();
        c.power_on(SOURCE).await.unwrap();
        c.wait_guest_ready(SOURCE, SAFETY).await.unwrap();
    }
    let tree = sim.guest_path(SOURCE, TREE);
    std::fs::create_dir_all(tree.parent().unwrap()).unwrap();
    std::fs::write(&tree, content).unwrap();
    c.create_memory_snapshot(SOURCE, name, "after provision")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_clone_of_a_memory_snapshot_resumes_with_the_snapshots_tree_while_the_source_runs_on(
) {
    let sim = vcenter();
    let c = connect(&sim).await;
    assert!(c.can_clone("any VM"), "vCenter clones");
    provision(&c, &sim, "sdci-job-x-provisioned", "provisioned").await;
    assert!(c.set_note(SOURCE, "sdci-lease: job x", "").await.unwrap());
    std::fs::write(sim.guest_path(SOURCE, TREE), "changed later by the source").unwrap();

    c.clone_from_snapshot(SOURCE, "sdci-job-x-provisioned", CLONE)
        .await
        .unwrap();

    assert_eq!(
        c.vm(CLONE).await.unwrap().power,
        PowerState::Suspended,
        "a clone with the memory of a memory snapshot comes back suspended"
    );
    assert_eq!(
        c.note(CLONE).await.unwrap().text,
        "sdci-lease: job x",
        "the annotation is copied from the source, as on ESXi"
    );
    let source = c.vm(SOURCE).await.unwrap();
    assert_eq!(source.power, PowerState::On, "the source runs on");
    assert!(source.guest_ready);

    c.power_on(CLONE).await.unwrap();
    c.wait_guest_ready(CLONE, SAFETY).await.unwrap();
    let a = auth(&sim);
    assert_eq!(
        c.download(CLONE, &a, TREE).await.unwrap(),
        b"provisioned",
        "the clone has the snapshot's tree, not the source's later changes"
    );
    assert_eq!(
        c.download(SOURCE, &a, TREE).await.unwrap(),
        b"changed later by the source",
        "the source keeps its own tree"
    );
    c.upload(CLONE, &a, TREE, b"written by the re-run".to_vec())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(sim.guest_path(SOURCE, TREE)).unwrap(),
        "changed later by the source",
        "what the clone writes stays in the clone"
    );
    let names: Vec<String> = c
        .list_vms("")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, [SOURCE, OTHER, CLONE]);
    let clones = c.list_vms("sdci-clone-").await.unwrap();
    assert_eq!(
        clones.len(),
        1,
        "the reconciler finds clones by their prefix"
    );
    assert!(c.snapshots(CLONE).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_is_refused_for_a_taken_name_a_missing_snapshot_or_source_naming_them() {
    let sim = vcenter();
    let c = connect(&sim).await;

    match c.clone_from_snapshot(SOURCE, "clean", OTHER).await {
        Err(VsphereError::Fault { kind, message, .. }) => {
            assert_eq!(kind, "DuplicateName");
            assert!(message.contains(OTHER), "{message}");
        }
        other => panic!("a clone named like another VM: {other:?}"),
    }
    match c
        .clone_from_snapshot(SOURCE, "no-such-snapshot", CLONE)
        .await
    {
        Err(VsphereError::SnapshotNotFound { vm, snapshot }) => {
            assert_eq!(
                (vm.as_str(), snapshot.as_str()),
                (SOURCE, "no-such-snapshot")
            );
        }
        other => panic!("a clone of a missing snapshot: {other:?}"),
    }
    match c
        .clone_from_snapshot("Qubes_4.2_gone", "clean", CLONE)
        .await
    {
        Err(VsphereError::VmNotFound { name }) => assert_eq!(name, "Qubes_4.2_gone"),
        other => panic!("a clone of a missing VM: {other:?}"),
    }
    assert!(matches!(
        c.vm(CLONE).await,
        Err(VsphereError::VmNotFound { .. })
    ));

    // A client that sees only DC0 cannot know OTHER (in DC1); the server refuses the name.
    let dc0 = VsphereClient::connect(config(&sim, Some(vec!["DC0".into()])))
        .await
        .unwrap();
    match dc0.clone_from_snapshot(SOURCE, "clean", OTHER).await {
        Err(VsphereError::Fault {
            method,
            kind,
            message,
        }) => {
            assert_eq!(
                (method.as_str(), kind.as_str()),
                ("CloneVM_Task", "DuplicateName")
            );
            assert!(message.contains(OTHER), "{message}");
        }
        other => panic!("the server's DuplicateName: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_vm_ends_the_clones_guest_and_removes_it_and_a_second_destroy_is_ok() {
    let sim = vcenter();
    let c = connect(&sim).await;
    c.clone_from_snapshot(SOURCE, "clean", CLONE).await.unwrap();
    assert_eq!(
        c.vm(CLONE).await.unwrap().power,
        PowerState::Off,
        "a clone of a snapshot without memory is powered off"
    );
    c.power_on(CLONE).await.unwrap();
    c.wait_guest_ready(CLONE, SAFETY).await.unwrap();
    let program = GuestProgram {
        path: "/bin/sh".into(),
        arguments: "-c 'sleep 600'".into(),
        env: vec![],
        working_directory: None,
    };
    c.start_program(CLONE, &auth(&sim), &program).await.unwrap();
    assert!(!sim.guest_pids(CLONE).is_empty(), "a guest program runs");
    let root = sim.guest_root(CLONE);
    assert!(root.is_dir());

    c.destroy_vm(CLONE).await.unwrap();

    assert!(sim.guest_pids(CLONE).is_empty(), "its guest ended");
    assert!(!root.exists(), "its guest root is gone");
    assert!(matches!(
        c.vm(CLONE).await,
        Err(VsphereError::VmNotFound { .. })
    ));
    assert!(sim.vms().unwrap().iter().all(|v| v.name != CLONE));
    assert_eq!(c.vm(SOURCE).await.unwrap().power, PowerState::Off);
    c.destroy_vm(CLONE).await.unwrap();

    // The name is free again: the next re-run can use it. A suspended clone (of a memory
    // snapshot, never resumed) is destroyed as well.
    provision(&c, &sim, "sdci-job-x-provisioned", "provisioned").await;
    c.clone_from_snapshot(SOURCE, "sdci-job-x-provisioned", CLONE)
        .await
        .unwrap();
    assert_eq!(c.vm(CLONE).await.unwrap().power, PowerState::Suspended);
    c.destroy_vm(CLONE).await.unwrap();
    assert!(matches!(
        c.vm(CLONE).await,
        Err(VsphereError::VmNotFound { .. })
    ));
    assert!(!sim.guest_root(CLONE).exists());
    assert_eq!(
        c.vm(SOURCE).await.unwrap().power,
        PowerState::On,
        "destroying a clone leaves its source alone"
    );
    assert!(
        c.snapshots(SOURCE)
            .await
            .unwrap()
            .iter()
            .any(|s| s.name == "sdci-job-x-provisioned"),
        "and the snapshot it was cloned from"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_bytes_are_read_from_the_layout_and_grow_with_the_snapshots_content() {
    let sim = vcenter();
    let c = connect(&sim).await;
    provision(&c, &sim, "small", "x").await;
    provision(&c, &sim, "big", &"y".repeat(200_000)).await;

    let small = c.snapshot_bytes(SOURCE, "small").await.unwrap().unwrap();
    let big = c.snapshot_bytes(SOURCE, "big").await.unwrap().unwrap();
    assert!(small > 0, "{small}");
    assert!(big >= small + 199_999, "small {small}, big {big}");
    let clean = c.snapshot_bytes(SOURCE, "clean").await.unwrap().unwrap();
    assert!(
        clean < small,
        "a snapshot without memory has no memory file: clean {clean}, small {small}"
    );
    match c.snapshot_bytes(SOURCE, "gone").await {
        Err(VsphereError::SnapshotNotFound { snapshot, .. }) => assert_eq!(snapshot, "gone"),
        other => panic!("the size of a missing snapshot: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_esxi_host_cannot_clone() {
    let sim = VsphereSim::start(
        SimOptions::esx()
            .tls(true)
            .vms(vec![SimVm::new(SOURCE).snapshots(&["clean"])]),
    )
    .unwrap();
    let c = connect(&sim).await;
    assert!(!c.can_clone("any VM"));
    match c.clone_from_snapshot(SOURCE, "clean", CLONE).await {
        Err(VsphereError::Fault { kind, .. }) => assert_eq!(kind, "NotSupported"),
        other => panic!("CloneVM_Task on ESXi: {other:?}"),
    }
    assert!(matches!(
        c.vm(CLONE).await,
        Err(VsphereError::VmNotFound { .. })
    ));
}
