//! The vim25 client against the govmomi simulator (`sdci_tests::vsphere_sim`), over https with
//! the simulator's generated certificate: every call on the ESXi and the two-datacenter vCenter
//! models, the TLS trust rules, and each injected fault.
#![allow(clippy::unwrap_used)]

use sdci_protocol::job::Secret;
use sdci_tests::vsphere_sim::{Fault, SimOptions, SimVm, VsphereSim};
use sdci_vsphere::{
    ErrorClass, GuestAuth, GuestProgram, Hypervisor, PowerState, ProcessState, Timeouts, TlsPolicy,
    VsphereClient, VsphereConfig, VsphereError,
};
use std::time::Duration;

/// Safety net for waits that should end long before it (never a synchronisation sleep).
const SAFETY: Duration = Duration::from_secs(60);

/// Writes its arguments, `$FOO` and its working directory to `$SDCI_GUEST_ROOT/tmp/report`,
/// then exits with `$CODE`.
const REPORT: &str = "#!/bin/sh\n{ printf '%s|' \"$@\"; echo; echo \"FOO=$FOO\"; pwd; } > \"$SDCI_GUEST_ROOT/tmp/report\"\nexit \"${CODE:-0}\"\n";
const HANG: &str = "#!/bin/sh\nexec sleep 300\n";

fn vm(name: &str) -> SimVm {
    SimVm::new(name)
        .file("/usr/local/bin/report", REPORT, 0o755)
        .file("/usr/local/bin/hang", HANG, 0o755)
}

fn config(sim: &VsphereSim, tls: TlsPolicy) -> VsphereConfig {
    VsphereConfig {
        url: sim.url(),
        user: sim.username().into(),
        password: Secret::new(sim.password()),
        tls,
        datacenters: None,
        timeouts: Timeouts::default(),
    }
}

fn ca(sim: &VsphereSim) -> TlsPolicy {
    TlsPolicy::CaFile {
        ca_file: sim.ca_cert_path().unwrap().to_path_buf(),
    }
}

fn pinned(sim: &VsphereSim) -> TlsPolicy {
    // Colon-separated upper case, as `openssl x509 -fingerprint` prints it.
    let hex = sim.thumbprint_sha256().unwrap().to_uppercase();
    let colons: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    TlsPolicy::Pinned {
        sha256: vec![colons.join(":")],
    }
}

async fn connect(sim: &VsphereSim) -> VsphereClient {
    VsphereClient::connect(config(sim, ca(sim))).await.unwrap()
}

fn auth(sim: &VsphereSim) -> GuestAuth {
    GuestAuth {
        user: sim.guest_username().into(),
        password: Secret::new(sim.guest_password()),
    }
}

fn program(path: &str, arguments: &str) -> GuestProgram {
    GuestProgram {
        path: path.into(),
        arguments: arguments.into(),
        env: vec![],
        working_directory: None,
    }
}

fn kind(e: &VsphereError) -> &str {
    match e {
        VsphereError::Fault { kind, .. } => kind,
        other => panic!("expected a typed fault, got {other:?}"),
    }
}

/// Reverts, boots and waits for Tools.
async fn boot(c: &VsphereClient, name: &str) {
    c.revert(name, "clean").await.unwrap();
    c.power_on(name).await.unwrap();
    c.wait_guest_ready(name, SAFETY).await.unwrap();
}

/// Every call of the trait on one VM, in the order a job makes them, with the observable
/// effects checked on the simulator's side.
async fn every_call(sim: &VsphereSim, c: &VsphereClient, name: &str) {
    let a = auth(sim);

    // Inventory.
    let info = c.vm(name).await.unwrap();
    assert_eq!(info.name, name);
    assert_eq!(info.power, PowerState::Off);
    assert!(!info.uuid.is_empty());
    assert_eq!(info.id, sim.vm(name).unwrap().moref);

    // Snapshots: the chain, found recursively.
    let tree = c.snapshots(name).await.unwrap();
    let names: Vec<&str> = tree.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["clean", "update_20260101000000"]);
    assert_eq!(tree[1].parent.as_deref(), Some("clean"));
    assert!(tree.iter().all(|s| s.is_current));

    // Revert (to a snapshot below the root), power on, Tools.
    c.revert(name, "update_20260101000000").await.unwrap();
    c.power_on(name).await.unwrap();
    c.power_on(name).await.unwrap(); // already on: success
    c.wait_guest_ready(name, SAFETY).await.unwrap();
    let info = c.vm(name).await.unwrap();
    assert_eq!(info.power, PowerState::On);
    assert!(info.agent_running && info.guest_ready);

    // A program with arguments, environment and working directory, and its exit code.
    let p = GuestProgram {
        path: "/usr/local/bin/report".into(),
        arguments: "one 'two words' '<&>'".into(),
        env: vec!["FOO=bar baz".into(), "CODE=3".into()],
        working_directory: Some("/tmp".into()),
    };
    let pid = c.start_program(name, &a, &p).await.unwrap();
    assert_eq!(
        c.wait_program(name, &a, pid, SAFETY).await.unwrap(),
        ProcessState::Exited(3)
    );
    let report = std::fs::read_to_string(sim.guest_path(name, "/tmp/report")).unwrap();
    let root = sim.guest_root(name);
    assert_eq!(
        report,
        format!(
            "one|two words|<&>|\nFOO=bar baz\n{}\n",
            root.join("tmp").display()
        )
    );
    // Exit 0 when the program succeeds.
    let pid = c
        .start_program(name, &a, &program("/usr/local/bin/report", ""))
        .await
        .unwrap();
    assert_eq!(
        c.wait_program(name, &a, pid, SAFETY).await.unwrap(),
        ProcessState::Exited(0)
    );

    // A running program, then terminated.
    let pid = c
        .start_program(name, &a, &program("/usr/local/bin/hang", ""))
        .await
        .unwrap();
    assert_eq!(
        c.process_state(name, &a, pid).await.unwrap(),
        ProcessState::Running
    );
    c.terminate(name, &a, pid).await.unwrap();
    let end = c.wait_program(name, &a, pid, SAFETY).await.unwrap();
    assert!(matches!(end, ProcessState::Exited(c) if c != 0), "{end:?}");
    // A pid the guest never had is lost, not running.
    assert_eq!(
        c.process_state(name, &a, 999_999).await.unwrap(),
        ProcessState::Lost
    );
    // A missing program and a wrong guest password are typed faults.
    let e = c
        .start_program(name, &a, &program("/usr/local/bin/missing", ""))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "FileNotFound");
    let bad = GuestAuth {
        user: a.user.clone(),
        password: Secret::new("wrong"),
    };
    let e = c
        .start_program(name, &bad, &program("/usr/local/bin/report", ""))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "InvalidGuestLogin");
    assert_eq!(e.class(), ErrorClass::GiveUp);

    // Upload (into a new directory, multibyte, overwriting) and download.
    let data = "héllo\n<&>\0bytes".as_bytes().to_vec();
    c.upload(
        name,
        &a,
        "/home/user/.sdci/jobs/j1/job.json",
        b"old".to_vec(),
    )
    .await
    .unwrap();
    c.upload(name, &a, "/home/user/.sdci/jobs/j1/job.json", data.clone())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(sim.guest_path(name, "/home/user/.sdci/jobs/j1/job.json")).unwrap(),
        data
    );
    assert_eq!(
        c.download(name, &a, "/home/user/.sdci/jobs/j1/job.json")
            .await
            .unwrap(),
        data
    );
    let e = c
        .download(name, &a, "/home/user/missing.log")
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "FileNotFound");

    // Shutdown through the guest (the simulator powers off 200 ms later), then off is off.
    c.shutdown(name, SAFETY).await.unwrap();
    assert_eq!(sim.vm(name).unwrap().power_state, "poweredOff");
    c.shutdown(name, SAFETY).await.unwrap();
    c.power_off(name).await.unwrap();
    // Guest operations on an off VM are a typed fault.
    let e = c
        .start_program(name, &a, &program("/usr/local/bin/report", ""))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "InvalidPowerState");

    // Snapshots: create two, prune to the newest two `update_`, remove one by name.
    c.create_snapshot(name, "update_20990101000000", "ci")
        .await
        .unwrap();
    c.create_snapshot(name, "update_20990102000000", "ci")
        .await
        .unwrap();
    let removed = c.prune_snapshots(name, "update_", 2, &[]).await.unwrap();
    assert_eq!(removed, ["update_20260101000000"]);
    c.remove_snapshot(name, "update_20990101000000")
        .await
        .unwrap();
    let names: Vec<String> = c
        .snapshots(name)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["clean", "update_20990102000000"]);

    // What is not there says so, and is not worth retrying.
    let e = c.revert(name, "no-such-snapshot").await.unwrap_err();
    assert!(matches!(e, VsphereError::SnapshotNotFound { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::GiveUp);
    let e = c.vm("Qubes_9.9_z").await.unwrap_err();
    assert!(matches!(e, VsphereError::VmNotFound { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::GiveUp);

    // The keep-alive call, and a session the server ended: the next call logs in again.
    assert!(!c.keep_alive().await.unwrap().is_empty());
    c.logout().await.unwrap();
    assert_eq!(c.vm(name).await.unwrap().power, PowerState::Off);
    c.logout().await.unwrap();
    assert!(!c.list_vms("Qubes_").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esx_over_https_with_the_ca_file_runs_every_call_with_bare_star_urls() {
    let sim = VsphereSim::start(
        SimOptions::esx()
            .tls(true)
            .guest_url_port(false)
            .vms(vec![vm("Qubes_4.2_a"), vm("Qubes_4.3_a")]),
    )
    .unwrap();
    let c = connect(&sim).await;
    assert_eq!(c.api_type(), "HostAgent");
    assert!(!c.is_vcenter());
    let vms = c.list_vms("Qubes_4.2_").await.unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["Qubes_4.2_a"]);
    every_call(&sim, &c, "Qubes_4.2_a").await;

    // `https://host` alone means the host's SDK endpoint.
    let mut cfg = config(&sim, ca(&sim));
    cfg.url = sim.url().trim_end_matches("/sdk").to_string();
    let bare = VsphereClient::connect(cfg).await.unwrap();
    assert_eq!(bare.list_vms("Qubes_").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcenter_with_two_datacenters_over_pinned_https_runs_every_call() {
    let sim = VsphereSim::start(SimOptions::vcenter().tls(true).vms(vec![
        vm("Qubes_4.2_a"),
        vm("Qubes_4.2_b").datacenter(1),
        vm("Qubes_4.3_a").datacenter(1),
    ]))
    .unwrap();
    let c = VsphereClient::connect(config(&sim, pinned(&sim)))
        .await
        .unwrap();
    assert_eq!(c.api_type(), "VirtualCenter");
    let vms = c.list_vms("Qubes_4.2_").await.unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["Qubes_4.2_a", "Qubes_4.2_b"]);
    assert_eq!(c.list_vms("").await.unwrap().len(), 3);
    // The VM in the second datacenter gets every call.
    every_call(&sim, &c, "Qubes_4.2_b").await;

    // A datacenter filter hides the other datacenters.
    let mut cfg = config(&sim, ca(&sim));
    cfg.datacenters = Some(vec!["DC0".into()]);
    let only_dc0 = VsphereClient::connect(cfg).await.unwrap();
    let names: Vec<String> = only_dc0
        .list_vms("Qubes_")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["Qubes_4.2_a"]);
    let e = only_dc0.vm("Qubes_4.2_b").await.unwrap_err();
    assert!(matches!(e, VsphereError::VmNotFound { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_trusted_only_as_configured() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true)).unwrap();
    // A fingerprint that is not the server's.
    let wrong = TlsPolicy::Pinned {
        sha256: vec!["00".repeat(32)],
    };
    let e = VsphereClient::connect(config(&sim, wrong))
        .await
        .unwrap_err();
    assert!(matches!(e, VsphereError::Transport { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::RetryLater);
    // The error names the fingerprint the server presented, so it can be checked and pinned.
    let presented = sim.thumbprint_sha256().unwrap();
    assert!(
        e.to_string().contains(&presented) && e.to_string().contains("pinned"),
        "{e}"
    );
    // The generated CA is not among the system's roots.
    let e = VsphereClient::connect(config(&sim, TlsPolicy::SystemRoots))
        .await
        .unwrap_err();
    assert!(matches!(e, VsphereError::Transport { .. }), "{e:?}");
    // A malformed pin is a configuration error before any connection.
    let e = VsphereClient::connect(config(
        &sim,
        TlsPolicy::Pinned {
            sha256: vec!["abc".into()],
        },
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("SHA-256 fingerprint"), "{e}");
    assert_eq!(e.class(), ErrorClass::GiveUp);
    // Said in words, anything goes.
    let c = VsphereClient::connect(config(&sim, TlsPolicy::InsecureAcceptAnyCertificate))
        .await
        .unwrap();
    assert_eq!(c.list_vms("Qubes_").await.unwrap().len(), 2);
    // And plain http to a non-loopback host is refused outright.
    let mut cfg = config(&sim, ca(&sim));
    cfg.url = "http://esxi.example.org/sdk".into();
    let e = VsphereClient::connect(cfg).await.unwrap_err();
    assert!(e.to_string().contains("use https"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_refused_login_not_worth_retrying() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true)).unwrap();
    let mut cfg = config(&sim, ca(&sim));
    cfg.password = Secret::new("wrong");
    let e = VsphereClient::connect(cfg).await.unwrap_err();
    assert!(matches!(e, VsphereError::LoginRefused { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::GiveUp);
    assert!(!e.to_string().contains("wrong"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_error_is_a_typed_fault_and_a_slow_task_is_waited_for() {
    let sim = VsphereSim::start(SimOptions::vcenter().tls(true)).unwrap();
    let c = connect(&sim).await;
    let name = "Qubes_4.3_a";
    sim.inject(Fault::TaskError {
        method: "PowerOnVM_Task".into(),
        kind: "InsufficientResourcesFault".into(),
        count: 1,
    })
    .unwrap();
    let e = c.power_on(name).await.unwrap_err();
    match &e {
        VsphereError::Fault { method, kind, .. } => {
            assert_eq!(method, "PowerOnVM_Task");
            assert_eq!(kind, "InsufficientResourcesFault");
        }
        other => panic!("expected a task fault, got {other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::RetryOtherVm);
    assert_eq!(sim.vm(name).unwrap().power_state, "poweredOff");

    // A revert that stays running for a while, then succeeds; the power-on after it works.
    sim.inject(Fault::TaskRunning {
        method: "RevertToSnapshot_Task".into(),
        ms: 700,
        count: 1,
    })
    .unwrap();
    c.revert(name, "clean").await.unwrap();
    c.power_on(name).await.unwrap();
    assert_eq!(sim.vm(name).unwrap().power_state, "poweredOn");

    // A failing snapshot task.
    sim.inject(Fault::TaskError {
        method: "CreateSnapshot_Task".into(),
        kind: "SnapshotFault".into(),
        count: 1,
    })
    .unwrap();
    let e = c.create_snapshot(name, "update_x", "ci").await.unwrap_err();
    assert_eq!(kind(&e), "SnapshotFault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_is_retried_for_reads_and_reported_as_retry_later_for_changes() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true)).unwrap();
    let c = connect(&sim).await;
    let name = "Qubes_4.2_a";
    // One 503 on a read: retried, the caller sees the answer.
    sim.inject(Fault::HttpStatus {
        method: "RetrievePropertiesEx".into(),
        status: 503,
        count: 1,
    })
    .unwrap();
    assert_eq!(c.vm(name).await.unwrap().power, PowerState::Off);
    // A 503 on a power-on is not resent: the caller decides, and the VM stayed off.
    sim.inject(Fault::HttpStatus {
        method: "PowerOnVM_Task".into(),
        status: 503,
        count: 1,
    })
    .unwrap();
    let e = c.power_on(name).await.unwrap_err();
    assert!(matches!(e, VsphereError::Http { status: 503, .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::RetryLater);
    assert_eq!(sim.vm(name).unwrap().power_state, "poweredOff");
    // A vSphere that keeps answering 503: the read gives up, retry later.
    sim.inject(Fault::HttpStatus {
        method: "RetrievePropertiesEx".into(),
        status: 503,
        count: 0,
    })
    .unwrap();
    let e = c.vm(name).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::RetryLater);
    sim.clear_faults().unwrap();
    c.power_on(name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_retried_for_reads_and_reported_for_changes() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true)).unwrap();
    let c = connect(&sim).await;
    let name = "Qubes_4.2_a";
    sim.inject(Fault::DropConnection {
        method: "RetrievePropertiesEx".into(),
        count: 2,
    })
    .unwrap();
    assert_eq!(c.snapshots(name).await.unwrap().len(), 2);
    sim.inject(Fault::DropConnection {
        method: "CreateSnapshot_Task".into(),
        count: 1,
    })
    .unwrap();
    let e = c.create_snapshot(name, "update_x", "ci").await.unwrap_err();
    assert!(matches!(e, VsphereError::Transport { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::RetryLater);
    // A dropped guestFile transfer, too.
    boot(&c, name).await;
    sim.inject(Fault::DropConnection {
        method: "guestFile".into(),
        count: 1,
    })
    .unwrap();
    let e = c
        .upload(name, &auth(&sim), "/tmp/x", b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::RetryLater);
    c.upload(name, &auth(&sim), "/tmp/x", b"x".to_vec())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_is_waited_for_within_the_call_timeout_and_reported_beyond_it() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true)).unwrap();
    let mut cfg = config(&sim, ca(&sim));
    cfg.timeouts.call_secs = 2;
    let c = VsphereClient::connect(cfg).await.unwrap();
    let name = "Qubes_4.2_a";
    sim.inject(Fault::Delay {
        method: "PowerOnVM_Task".into(),
        ms: 500,
        count: 1,
    })
    .unwrap();
    c.power_on(name).await.unwrap();
    sim.inject(Fault::Delay {
        method: "PowerOffVM_Task".into(),
        ms: 6000,
        count: 1,
    })
    .unwrap();
    let e = c.power_off(name).await.unwrap_err();
    match &e {
        VsphereError::Transport { message, .. } => {
            assert!(message.contains("no answer within"), "{message}")
        }
        other => panic!("expected a transport timeout, got {other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::RetryLater);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_that_never_start_end_the_wait_at_the_deadline_with_the_time_waited() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true)).unwrap();
    let c = connect(&sim).await;
    let name = "Qubes_4.2_a";
    sim.inject(Fault::ToolsNever { vm: name.into() }).unwrap();
    c.power_on(name).await.unwrap();
    let timeout = Duration::from_millis(1500);
    let e = c.wait_guest_ready(name, timeout).await.unwrap_err();
    match &e {
        VsphereError::ToolsNotReady { vm, waited } => {
            assert_eq!(vm, name);
            assert!(*waited >= timeout, "{waited:?}");
        }
        other => panic!("expected ToolsNotReady, got {other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::RetryOtherVm);
    // Guest operations meanwhile are a typed fault.
    let e = c
        .start_program(name, &auth(&sim), &program("/bin/sh", "-c true"))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "GuestOperationsUnavailable");
    // A VM that is off will never get Tools: said at once, not at the deadline.
    c.power_off(name).await.unwrap();
    let e = c.wait_guest_ready(name, SAFETY).await.unwrap_err();
    assert_eq!(kind(&e), "InvalidPowerState");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_never_happens_becomes_a_power_off_at_the_deadline() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true)).unwrap();
    let c = connect(&sim).await;
    let name = "Qubes_4.2_a";
    boot(&c, name).await;
    sim.inject(Fault::ShutdownNever {
        vm: name.into(),
        count: 1,
    })
    .unwrap();
    c.shutdown(name, Duration::from_millis(800)).await.unwrap();
    assert_eq!(sim.vm(name).unwrap().power_state, "poweredOff");

    // A guest that refuses the shutdown (Tools gone) is powered off at once.
    boot(&c, name).await;
    sim.inject(Fault::SoapFault {
        method: "ShutdownGuest".into(),
        kind: "ToolsUnavailable".into(),
        message: "Tools are not running".into(),
        count: 1,
    })
    .unwrap();
    c.shutdown(name, SAFETY).await.unwrap();
    assert_eq!(sim.vm(name).unwrap().power_state, "poweredOff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_on_two_vms_each_get_their_own_answer() {
    let sim = VsphereSim::start(SimOptions::vcenter().tls(true).vms(vec![
        vm("Qubes_4.2_a").tools_delay(Some(Duration::from_millis(300))),
        vm("Qubes_4.2_b")
            .datacenter(1)
            .tools_delay(Some(Duration::from_millis(900))),
    ]))
    .unwrap();
    let c = connect(&sim).await;
    let (a, b) = tokio::join!(boot(&c, "Qubes_4.2_a"), boot(&c, "Qubes_4.2_b"));
    let ((), ()) = (a, b);
    for name in ["Qubes_4.2_a", "Qubes_4.2_b"] {
        assert!(sim.vm(name).unwrap().tools_running, "{name}");
    }
    let (a, b) = tokio::join!(
        c.shutdown("Qubes_4.2_a", SAFETY),
        c.shutdown("Qubes_4.2_b", SAFETY)
    );
    a.unwrap();
    b.unwrap();
    for name in ["Qubes_4.2_a", "Qubes_4.2_b"] {
        assert_eq!(sim.vm(name).unwrap().power_state, "poweredOff", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_directory_creates_missing_parents_and_an_existing_directory_is_success() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true)).unwrap();
    let c = connect(&sim).await;
    let name = "Qubes_4.2_a";
    let a = auth(&sim);
    boot(&c, name).await;
    let dir = "/home/user/.sdci/jobs/1234567-abcd";
    assert!(!sim.guest_path(name, "/home/user/.sdci").exists());

    c.make_directory(name, &a, dir, true).await.unwrap();
    assert!(sim.guest_path(name, dir).is_dir());
    // Again (a retried job, a second attempt on this VM): already there is success.
    c.make_directory(name, &a, dir, true).await.unwrap();
    // The job file then goes into it.
    let file = format!("{dir}/job.json");
    c.upload(name, &a, &file, b"{}".to_vec()).await.unwrap();
    assert_eq!(std::fs::read(sim.guest_path(name, &file)).unwrap(), b"{}");

    // Without create_parents a missing parent is the guest's typed fault, not success.
    let e = c
        .make_directory(name, &a, "/home/user/missing/child", false)
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "FileNotFound", "{e}");
    assert!(!sim.guest_path(name, "/home/user/missing").exists());
    // With bad guest credentials it is refused like any guest operation.
    let wrong = GuestAuth {
        user: a.user.clone(),
        password: Secret::new("wrong"),
    };
    let e = c
        .make_directory(name, &wrong, "/home/user/other", true)
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "InvalidGuestLogin", "{e}");
    assert_eq!(e.class(), ErrorClass::GiveUp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screenshot_of_a_running_vm_is_a_png_from_its_datastore_and_an_off_vm_has_none() {
    // The VM in the second datacenter: the datastore GET needs its datacenter (`dcPath`).
    let sim = VsphereSim::start(
        SimOptions::vcenter()
            .tls(true)
            .vms(vec![vm("Qubes_4.2_a"), vm("Qubes_4.2_b").datacenter(1)]),
    )
    .unwrap();
    let c = connect(&sim).await;
    let dest = std::env::temp_dir().join(format!("sdci-console-{}.png", std::process::id()));
    let e = c
        .screenshot("Qubes_4.2_b", &dest, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "InvalidPowerState", "{e:?}");
    c.power_on("Qubes_4.2_b").await.unwrap();
    let got = c
        .screenshot("Qubes_4.2_b", &dest, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let png = std::fs::read(&dest).unwrap();
    assert_eq!(got.bytes, png.len() as u64);
    assert!(!got.truncated);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    // Capped: a smaller limit cuts the download and says so.
    let cut = c
        .screenshot("Qubes_4.2_b", &dest, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((cut.bytes, cut.truncated), (100, true));
    let _ = std::fs::remove_file(&dest);
}
