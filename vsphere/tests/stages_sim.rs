//! What issue 18 asks of vSphere, against the govmomi simulator through the real client: a
//! snapshot of a powered-on VM with memory keeps the guest tree and a revert to it comes back
//! powered on (guest operations ready again), one without memory reverts to a powered-off VM,
//! and `AcquireTicket` names the running VM's console (refused for a VM that is off).

#![allow(clippy::unwrap_used)]

use sdci_protocol::job::Secret;
use sdci_tests::vsphere_sim::{SimOptions, SimVm, VsphereSim};
use sdci_vsphere::{
    Hypervisor, PowerState, Timeouts, TlsPolicy, VsphereClient, VsphereConfig, VsphereError,
};
use std::time::Duration;

const SAFETY: Duration = Duration::from_secs(60);

async fn connect(sim: &VsphereSim) -> VsphereClient {
    VsphereClient::connect(VsphereConfig {
        url: sim.url(),
        user: sim.username().into(),
        password: Secret::new(sim.password()),
        tls: TlsPolicy::CaFile {
            ca_file: sim.ca_cert_path().unwrap().to_path_buf(),
        },
        datacenters: None,
        timeouts: Timeouts::default(),
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_snapshot_comes_back_powered_on_with_its_tree_and_a_ticket_names_the_console() {
    let name = "Qubes_4.2_a";
    let sim = VsphereSim::start(SimOptions::vcenter().tls(true).vms(vec![SimVm::new(name)
            .snapshots(&["clean"])
            .tools_delay(Some(Duration::from_millis(100)))]))
    .unwrap();
    let c = connect(&sim).await;
    c.revert(name, "clean").await.unwrap();
    c.power_on(name).await.unwrap();
    c.wait_guest_ready(name, SAFETY).await.unwrap();
    let tree = sim.guest_path(name, "/home/user/securedrop-workstation/tree");
    std::fs::create_dir_all(tree.parent().unwrap()).unwrap();
    std::fs::write(&tree, "provisioned").unwrap();

    c.create_memory_snapshot(name, "sdci-job-x-provisioned", "after provision")
        .await
        .unwrap();
    c.create_snapshot(name, "cold", "no memory").await.unwrap();
    assert_eq!(
        c.vm(name).await.unwrap().power,
        PowerState::On,
        "the VM ran on"
    );
    std::fs::write(&tree, "changed later").unwrap();

    let console = c.console(name).await.unwrap().unwrap();
    assert!(
        console.starts_with("wss://") && console.contains("/ticket/"),
        "{console}"
    );

    c.power_off(name).await.unwrap();
    c.revert(name, "sdci-job-x-provisioned").await.unwrap();
    assert_eq!(
        c.vm(name).await.unwrap().power,
        PowerState::On,
        "a memory snapshot comes back powered on"
    );
    c.wait_guest_ready(name, SAFETY).await.unwrap();
    assert_eq!(std::fs::read_to_string(&tree).unwrap(), "provisioned");

    std::fs::write(&tree, "changed again").unwrap();
    c.revert(name, "cold").await.unwrap();
    assert_eq!(
        c.vm(name).await.unwrap().power,
        PowerState::Off,
        "a snapshot without memory reverts to a powered-off VM"
    );
    assert_eq!(std::fs::read_to_string(&tree).unwrap(), "provisioned");
    match c.console(name).await {
        Err(VsphereError::Fault { kind, .. }) => assert_eq!(kind, "InvalidPowerState"),
        other => panic!("a console ticket for a VM that is off: {other:?}"),
    }
}
