//! The libvirt backend against the real thing: Debian's libvirtd (a private instance per test,
//! `sdci_libvirt::testenv`) and QEMU running a small real Debian-kernel guest with the QEMU guest
//! agent. Each test states one behaviour the host relies on. The domain type (kvm or TCG) is
//! probed, not assumed, and printed.
#![allow(clippy::unwrap_used)]

use sdci_hypervisor::{
    ErrorClass, GuestAuth, GuestProgram, Hypervisor, HypervisorError, PowerState, ProcessState,
};
use sdci_libvirt::testenv::{probe_accel, Image, Libvirtd};
use sdci_libvirt::{LibvirtClient, LibvirtConfig};
use std::time::{Duration, Instant};

const A: &str = "sdci-t-a";
const B: &str = "sdci-t-b";
const READY: Duration = Duration::from_secs(90);

struct Env {
    daemon: Libvirtd,
    client: LibvirtClient,
}

fn user() -> GuestAuth {
    GuestAuth {
        user: "user".into(),
        password: serde_json::from_str("\"unused-by-the-guest-agent\"").unwrap(),
    }
}

fn sh(script: &str) -> GuestProgram {
    GuestProgram {
        path: "/bin/sh".into(),
        arguments: format!("-c '{script}'"),
        env: vec!["SDCI_TEST=1".into()],
        working_directory: Some("/home/user".into()),
    }
}

/// A daemon with the named domains (`true` = a healthy guest), each with a `golden` snapshot.
async fn env(test: &str, domains: &[(&str, bool)]) -> Env {
    let t0 = Instant::now();
    let image = Image::ensure().unwrap();
    let ty = probe_accel(&image);
    let daemon = Libvirtd::start(test).unwrap();
    let cfg: LibvirtConfig =
        toml::from_str(&format!(
        "uris = [{:?}]\ndomain_type = \"{}\"\n[timeouts]\nagent_secs = 10\nreconnect_secs = 30\n",
        daemon.uri(),
        if ty == sdci_libvirt::DomainType::Kvm { "kvm" } else { "qemu" }
    ))
        .unwrap();
    let client = LibvirtClient::connect(cfg).await.unwrap();
    for (name, healthy) in domains {
        client
            .define_domain(&daemon.guest_spec(&image, name, *healthy).unwrap())
            .await
            .unwrap();
        client
            .create_snapshot(name, "golden", "clean guest")
            .await
            .unwrap();
    }
    eprintln!("{test}: environment ready in {:.1?}", t0.elapsed());
    Env { daemon, client }
}

impl Env {
    async fn boot(&self, vm: &str) -> Duration {
        let t = Instant::now();
        self.client.revert(vm, "golden").await.unwrap();
        self.client.power_on(vm).await.unwrap();
        if let Err(e) = self.client.wait_guest_ready(vm, READY).await {
            panic!("{vm} not ready: {e}\nconsole:\n{}", self.daemon.console(vm));
        }
        let took = t.elapsed();
        eprintln!("{vm}: revert + boot + agent ready in {took:.1?}");
        took
    }

    async fn run(&self, vm: &str, script: &str) -> ProcessState {
        let pid = self
            .client
            .start_program(vm, &user(), &sh(script))
            .await
            .unwrap();
        self.client
            .wait_program(vm, &user(), pid, Duration::from_secs(60))
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_reverted_guest_uploads_runs_with_exit_codes_terminates_downloads_and_shuts_down(
) {
    let env = env("job", &[(A, true)]).await;
    let (c, auth) = (&env.client, user());
    env.boot(A).await;
    let t = Instant::now();
    let dir = "/home/user/.sdci/jobs/j1";
    c.make_directory(A, &auth, dir, true).await.unwrap();
    c.make_directory(A, &auth, dir, true).await.unwrap(); // existing: success
    let job = br#"{"job":"j1","steps":["true"]}"#.to_vec();
    c.upload(A, &auth, &format!("{dir}/job.json"), job.clone())
        .await
        .unwrap();
    // The program runs as the user, in its working directory, with its environment, and its
    // exit code arrives (and stays readable after the agent forgot it).
    let pid = c
        .start_program(
            A,
            &auth,
            &sh(r#"test "$(id -un)" = user && test "$(stat -c %U .sdci/jobs/j1/job.json)" = user && test "$SDCI_TEST" = 1 && cat .sdci/jobs/j1/job.json > .sdci/jobs/j1/log.txt && echo done >> .sdci/jobs/j1/log.txt && exit 3"#),
        )
        .await
        .unwrap();
    assert_eq!(
        c.wait_program(A, &auth, pid, Duration::from_secs(60))
            .await
            .unwrap(),
        ProcessState::Exited(3)
    );
    assert_eq!(
        c.process_state(A, &auth, pid).await.unwrap(),
        ProcessState::Exited(3)
    );
    let log = c
        .download(A, &auth, &format!("{dir}/log.txt"))
        .await
        .unwrap();
    assert_eq!(log, [job.as_slice(), b"done\n"].concat());
    // A long program, with a child of its own, is terminated: the whole group ends.
    let long = c
        .start_program(A, &auth, &sh("sleep 600 & sleep 600"))
        .await
        .unwrap();
    assert_eq!(
        c.process_state(A, &auth, long).await.unwrap(),
        ProcessState::Running
    );
    c.terminate(A, &auth, long).await.unwrap();
    match c
        .wait_program(A, &auth, long, Duration::from_secs(30))
        .await
        .unwrap()
    {
        ProcessState::Exited(code) => {
            // SIGTERM reached the group: 128 + 15, as a shell reports it.
            assert_eq!(code, 143, "a terminated program ends by SIGTERM")
        }
        other => panic!("terminated program is {other:?}"),
    }
    assert_eq!(
        env.run(A, "pgrep -x sleep && exit 1; exit 0").await,
        ProcessState::Exited(0)
    );
    c.terminate(A, &auth, long).await.unwrap(); // already ended: success
                                                // A big file makes the round trip in chunks.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let t_up = Instant::now();
    c.upload(A, &auth, "/home/user/big.bin", big.clone())
        .await
        .unwrap();
    eprintln!("upload of {} bytes: {:.1?}", big.len(), t_up.elapsed());
    assert_eq!(
        c.download(A, &auth, "/home/user/big.bin").await.unwrap(),
        big
    );
    // Upload into a missing directory fails; downloading a missing file fails.
    assert!(c
        .upload(A, &auth, "/home/user/nope/x", b"x".to_vec())
        .await
        .is_err());
    assert!(c.download(A, &auth, "/home/user/nope.txt").await.is_err());
    eprintln!("guest operations took {:.1?}", t.elapsed());
    let t = Instant::now();
    c.shutdown(A, Duration::from_secs(60)).await.unwrap();
    assert_eq!(c.vm(A).await.unwrap().power, PowerState::Off);
    eprintln!("{A}: graceful shutdown in {:.1?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverting_to_golden_discards_what_the_last_job_wrote() {
    let env = env("revert", &[(B, true)]).await;
    env.boot(B).await;
    assert_eq!(
        env.run(B, "echo dirty > /home/user/leftover; sync").await,
        ProcessState::Exited(0)
    );
    env.client.power_off(B).await.unwrap();
    env.boot(B).await;
    assert_eq!(
        env.run(B, "test -e /home/user/leftover && exit 1; exit 0")
            .await,
        ProcessState::Exited(0)
    );
    env.client.power_off(B).await.unwrap();
    env.client.power_off(B).await.unwrap(); // already off: success
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_listed_parents_first_with_the_current_chain_and_pruned_to_the_newest() {
    let env = env("snapshots", &[(A, true)]).await;
    let c = &env.client;
    for n in ["update_1", "update_2", "update_3"] {
        c.create_snapshot(A, n, "rotation").await.unwrap();
    }
    let tree = c.snapshots(A).await.unwrap();
    let names: Vec<&str> = tree.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["golden", "update_1", "update_2", "update_3"]);
    assert_eq!(tree[1].parent.as_deref(), Some("golden"));
    assert!(tree.iter().all(|s| s.is_current && s.created.is_some()));
    let removed = c.prune_snapshots(A, "update_", 1, &[]).await.unwrap();
    assert_eq!(removed, ["update_1", "update_2"]);
    let tree = c.snapshots(A).await.unwrap();
    let names: Vec<&str> = tree.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["golden", "update_3"]);
    assert_eq!(
        tree[1].parent.as_deref(),
        Some("golden"),
        "children are re-parented"
    );
    c.revert(A, "golden").await.unwrap();
    let tree = c.snapshots(A).await.unwrap();
    assert!(tree[0].is_current && !tree[1].is_current);
    let e = c.revert(A, "no-such-snapshot").await.unwrap_err();
    assert!(matches!(e, HypervisorError::SnapshotNotFound { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::GiveUp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_lists_both_domains_by_prefix_and_an_unknown_name_is_not_found() {
    let env = env("inventory", &[(A, true), (B, true)]).await;
    let vms = env.client.list_vms("sdci-t-").await.unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, [A, B]);
    assert!(vms
        .iter()
        .all(|v| v.power == PowerState::Off && !v.agent_running && v.uuid.len() == 36));
    assert!(env.client.list_vms("other-").await.unwrap().is_empty());
    let e = env.client.vm("sdci-t-nope").await.unwrap_err();
    assert!(matches!(e, HypervisorError::VmNotFound { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::GiveUp);
    // Both guests run at once, and the inventory sees them ready.
    let (ta, tb) = tokio::join!(env.boot(A), env.boot(B));
    eprintln!("two guests booted side by side: {ta:.1?} / {tb:.1?}");
    let vms = env.client.list_vms("sdci-t-").await.unwrap();
    assert!(vms
        .iter()
        .all(|v| v.power == PowerState::On && v.agent_running && v.guest_ready));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_whose_agent_never_starts_is_not_ready_and_its_shutdown_ends_in_a_power_off() {
    let env = env("noagent", &[(B, false)]).await;
    let c = &env.client;
    c.revert(B, "golden").await.unwrap();
    c.power_on(B).await.unwrap();
    let t = Instant::now();
    let e = c
        .wait_guest_ready(B, Duration::from_secs(15))
        .await
        .unwrap_err();
    assert!(matches!(e, HypervisorError::ToolsNotReady { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::RetryOtherVm);
    assert!(t.elapsed() >= Duration::from_secs(15) && t.elapsed() < Duration::from_secs(25));
    assert!(!c.vm(B).await.unwrap().agent_running);
    // It ignores the power button too: the shutdown becomes a power-off at the deadline.
    let t = Instant::now();
    c.shutdown(B, Duration::from_secs(4)).await.unwrap();
    assert_eq!(c.vm(B).await.unwrap().power, PowerState::Off);
    assert!(t.elapsed() >= Duration::from_secs(4) && t.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_destroyed_mid_program_fails_the_wait_at_once_as_this_vms_problem() {
    let env = env("destroyed", &[(A, true)]).await;
    env.boot(A).await;
    let (c, auth) = (&env.client, user());
    let pid = c.start_program(A, &auth, &sh("sleep 600")).await.unwrap();
    c.power_off(A).await.unwrap();
    let t = Instant::now();
    let e = c
        .wait_program(A, &auth, pid, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::RetryOtherVm, "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{e} after {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libvirtd_restart_mid_job_is_ridden_out_and_the_exit_code_still_arrives() {
    let mut env = env("restart", &[(A, true)]).await;
    env.boot(A).await;
    let auth = user();
    let pid = env
        .client
        .start_program(A, &auth, &sh("sleep 6; exit 3"))
        .await
        .unwrap();
    let t = Instant::now();
    env.daemon.restart().unwrap();
    eprintln!("libvirtd restarted in {:.1?}", t.elapsed());
    assert_eq!(
        env.client
            .wait_program(A, &auth, pid, Duration::from_secs(60))
            .await
            .unwrap(),
        ProcessState::Exited(3)
    );
    // The new connection's events drive the shutdown.
    env.client
        .shutdown(A, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(env.client.vm(A).await.unwrap().power, PowerState::Off);
}

/// Issue 18's provisioned snapshot on libvirt: a memory snapshot of the running guest, taken
/// while a program of the job runs, and a re-run's revert to it — once from the running guest,
/// once from a powered-off one (the re-run's usual case) — comes back running where it was (the
/// same boot, the program still running, its agent answering within seconds, its clock the
/// host's again), with what was written before the snapshot and without what was written or
/// started after it. Its size is the memory state it holds; removing it leaves the guest running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_snapshot_of_a_running_guest_reverts_running_where_it_was_and_reports_its_size() {
    const SNAP: &str = "sdci-job-1-provisioned";
    const BACK: Duration = Duration::from_secs(30);
    let env = env("memory", &[(A, true)]).await;
    let (c, auth) = (&env.client, user());
    env.boot(A).await;
    // File A holds this boot's id; a program of the job runs across the snapshot.
    assert_eq!(
        env.run(A, "cat /proc/sys/kernel/random/boot_id > /home/user/A")
            .await,
        ProcessState::Exited(0)
    );
    let before = c.start_program(A, &auth, &sh("sleep 900")).await.unwrap();
    let t = Instant::now();
    c.create_memory_snapshot(A, SNAP, "after the provision stage")
        .await
        .unwrap();
    let took_snapshot = t.elapsed();
    let snapshot_taken = Instant::now();
    // The guest goes on after the snapshot: running, its agent answering.
    assert_eq!(c.vm(A).await.unwrap().power, PowerState::On);
    assert_eq!(
        env.run(A, "echo after > /home/user/B").await,
        ProcessState::Exited(0)
    );
    let after = c.start_program(A, &auth, &sh("sleep 600")).await.unwrap();
    // The size: the memory state it holds, more than the guest's kernel and less than its RAM
    // (256 MiB) plus a margin; a snapshot without memory has none to report.
    let bytes = c.snapshot_bytes(A, SNAP).await.unwrap();
    let b = bytes.expect("a memory snapshot of a running guest has a size");
    assert!(
        (8 << 20..300 << 20).contains(&b),
        "{b} bytes for a 256 MiB guest's memory"
    );
    // What `qemu-img info` says of the disk (read-only, beside the running QEMU): the same.
    let disk = env.daemon.dir.join(format!("disks/{A}.qcow2"));
    let qemu_img_info = || {
        let out = std::process::Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(&disk)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let disk_snapshots = || -> Vec<String> {
        qemu_img_info()["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    let info = qemu_img_info();
    let listed = info["snapshots"].as_array().unwrap();
    let vm_size = listed.iter().find(|s| s["name"] == SNAP).unwrap()["vm-state-size"].as_u64();
    assert_eq!(vm_size, Some(b), "qemu-img info: {info}");
    assert_eq!(c.snapshot_bytes(A, "golden").await.unwrap(), None);
    let e = c.snapshot_bytes(A, "no-such-snapshot").await.unwrap_err();
    assert!(matches!(e, HypervisorError::SnapshotNotFound { .. }), "{e}");

    // Same boot (A's id is the running kernel's), A there, B not, the program started before
    // the snapshot running and the one started after it gone.
    let where_it_was =
        "test \"$(cat /home/user/A)\" = \"$(cat /proc/sys/kernel/random/boot_id)\" || exit 1; \
                        test -e /home/user/B && exit 2; \
                        ps -o args | grep -qx \"sleep 900\" || exit 3; \
                        ps -o args | grep -qx \"sleep 600\" && exit 4; exit 0";
    let check = || async {
        assert_eq!(env.run(A, where_it_was).await, ProcessState::Exited(0));
        // The guest's clock is the host's again, not the snapshot's.
        assert_eq!(
            env.run(A, "date +%s.%N > /home/user/now").await,
            ProcessState::Exited(0)
        );
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let guest = c.download(A, &auth, "/home/user/now").await.unwrap();
        let guest: f64 = String::from_utf8(guest).unwrap().trim().parse().unwrap();
        eprintln!("guest clock {:.1} s behind the host's", host - guest);
        assert!(
            (host - guest).abs() < 2.0,
            "guest clock {guest}, host {host}: {:.1} s apart",
            host - guest
        );
        assert_eq!(
            c.process_state(A, &auth, before).await.unwrap(),
            ProcessState::Running,
            "the job's program goes on"
        );
        assert_eq!(
            c.process_state(A, &auth, after).await.unwrap(),
            ProcessState::Lost,
            "the program started after the snapshot is gone with it"
        );
    };

    // From the running guest: running again at once (not paused, not off), where it was, once
    // the snapshot's clock is well behind the host's.
    let behind = Duration::from_secs(5);
    tokio::time::sleep(behind.saturating_sub(snapshot_taken.elapsed())).await;
    let t = Instant::now();
    c.revert(A, SNAP).await.unwrap();
    let revert_running = t.elapsed();
    assert_eq!(c.vm(A).await.unwrap().power, PowerState::On);
    c.wait_guest_ready(A, BACK).await.unwrap();
    let running_to_ready = t.elapsed();
    check().await;

    // From a powered-off guest (the re-run's VM is off between jobs): the same.
    c.power_off(A).await.unwrap();
    let t = Instant::now();
    c.revert(A, SNAP).await.unwrap();
    let revert_off = t.elapsed();
    assert_eq!(c.vm(A).await.unwrap().power, PowerState::On);
    c.wait_guest_ready(A, BACK).await.unwrap();
    let off_to_ready = t.elapsed();
    check().await;
    // The retention removes it from the running guest, which goes on; its memory state leaves
    // the disk's snapshot list with it.
    c.remove_snapshot(A, SNAP).await.unwrap();
    assert_eq!(c.vm(A).await.unwrap().power, PowerState::On);
    let names: Vec<String> = c
        .snapshots(A)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["golden"]);
    assert_eq!(disk_snapshots(), ["golden"]);
    // A powered-off guest has no memory to keep: refused, not a snapshot of its disks only.
    c.power_off(A).await.unwrap();
    let e = c
        .create_memory_snapshot(A, "sdci-job-2-provisioned", "off")
        .await
        .unwrap_err();
    assert!(matches!(e, HypervisorError::Fault { .. }), "{e}");
    eprintln!("a memory snapshot of a powered-off guest: {e}");
    assert!(!c
        .snapshots(A)
        .await
        .unwrap()
        .iter()
        .any(|s| s.name == "sdci-job-2-provisioned"));
    eprintln!(
        "memory snapshot: taken in {took_snapshot:.1?}, {b} bytes of memory state; revert of \
         the running guest {revert_running:.1?}, to agent ready {running_to_ready:.1?}; of the \
         powered-off guest {revert_off:.1?}, to agent ready {off_to_ready:.1?}"
    );
}
