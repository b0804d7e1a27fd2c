//! The vSphere simulator answers raw SOAP the way ESXi/vCenter do: the whole CI walk (log in,
//! find VMs across datacenters, revert, power on, wait for Tools, run guest programs, transfer
//! files, shut down, snapshot and prune), ESXi's guest-operation preconditions, snapshots that
//! restore the guest directory, and each injectable fault. A small raw SOAP client over reqwest
//! (rustls) lives at the bottom of this file; the pyVmomi walk is `tests/vsphere-sim/walk.py`.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sdci_tests::vsphere_sim::{Fault, SimOptions, SimVm, VsphereSim};

const VM_A: &str = "Qubes_4.2_a";
const VM_B: &str = "Qubes_4.3_a";
/// The guest process manager's managed object.
const PROCESS_MANAGER: (&str, &str) = ("GuestProcessManager", "guestOperationsProcessManager");

/// Starts the simulator and logs in.
async fn start_sim(opts: SimOptions) -> (VsphereSim, Vim) {
    let sim = VsphereSim::start(opts).unwrap();
    let vim = Vim::connect(&sim).await;
    (sim, vim)
}

/// Starts the simulator, logs in and finds `VM_A`.
async fn start_with_vm_a(opts: SimOptions) -> (VsphereSim, Vim, Mor) {
    let (sim, mut vim) = start_sim(opts).await;
    let a = vim.find_vms().await[VM_A].clone();
    (sim, vim, a)
}

/// The names of a snapshot tree as `Vim::snapshots` lists it.
fn snapshot_names(tree: &[(String, String)]) -> Vec<&str> {
    tree.iter().map(|(n, _)| n.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------------------------

/// What the walk should find about where the VMs live.
struct Expect {
    api_type: &'static str,
    datacenter_of_b: &'static str,
}

async fn walk(sim: &VsphereSim, expect: Expect) {
    let mut vim = Vim::connect(sim).await;
    assert_eq!(vim.about_api_type, expect.api_type);

    // Find VMs in every datacenter and folder.
    let vms = vim.find_vms().await;
    let names: Vec<&str> = vms.keys().map(String::as_str).collect();
    assert!(
        names.contains(&VM_A) && names.contains(&VM_B),
        "found {names:?}"
    );
    let a = vms[VM_A].clone();
    let b = vms[VM_B].clone();
    assert_eq!(vim.datacenter_of(&b).await, expect.datacenter_of_b);

    // Revert to the newest update_* snapshot (recursive search), power on, wait for Tools.
    let tree = vim.snapshots(&a).await;
    let names = snapshot_names(&tree);
    assert_eq!(names, ["clean", "update_20260101000000"]);
    let stale = sim.guest_path(VM_A, "/home/user/stale.txt");
    std::fs::write(&stale, "left over from the last job").unwrap();
    vim.revert(&tree[1].1).await.unwrap();
    assert!(
        !stale.exists(),
        "revert must restore the guest directory to the snapshot"
    );
    vim.vm_task(&a, "PowerOnVM_Task").await.unwrap();
    vim.wait_tools(&a).await;

    // A guest program that exits 3, with arguments split like a shell would (no expansion).
    let pid = vim
        .start_program(sim, &a, "/bin/sh", r#"-c 'echo "$HOME" > out.txt; exit 3'"#)
        .await
        .unwrap();
    let (exit, raw) = vim.wait_process(sim, &a, pid).await;
    assert_eq!(exit, 3);
    assert!(raw.contains("<exitCode>3</exitCode>"));
    let home = sim.guest_path(VM_A, "/home/user");
    let out = std::fs::read_to_string(home.join("out.txt")).unwrap();
    assert_eq!(out.trim(), home.to_str().unwrap());

    // exit code 0 is sent explicitly, as ESXi does.
    let pid0 = vim
        .start_program(sim, &a, "/bin/sh", "-c true")
        .await
        .unwrap();
    let (exit0, raw0) = vim.wait_process(sim, &a, pid0).await;
    assert_eq!(exit0, 0);
    assert!(raw0.contains("<exitCode>0</exitCode>"), "{raw0}");

    // Terminate one: it dies by SIGKILL, reported as 128+9.
    let sleeper = vim
        .start_program(sim, &a, "/bin/sh", "-c 'exec sleep 100'")
        .await
        .unwrap();
    vim.guest_call(
        sim,
        "GuestProcessManager",
        "guestOperationsProcessManager",
        "TerminateProcessInGuest",
        &a,
        &format!("<pid>{sleeper}</pid>"),
    )
    .await
    .unwrap();
    let (killed, _) = vim.wait_process(sim, &a, sleeper).await;
    assert_eq!(killed, 137);

    // Upload and download through /guestFile URLs whose host is "*".
    let data = "héllo <guest> & \"files\"\n".repeat(100);
    vim.upload(
        sim,
        &a,
        "/home/user/sd-dev/bin/payload.txt",
        data.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(sim.guest_path(VM_A, "/home/user/sd-dev/bin/payload.txt")).unwrap(),
        data
    );
    let back = vim
        .download(sim, &a, "/home/user/sd-dev/bin/payload.txt")
        .await
        .unwrap();
    assert_eq!(back, data.as_bytes());

    // Shut down (returns at once; the guest powers off later), then snapshot and prune.
    vim.call("ShutdownGuest", &vm_this(&a), "").await.unwrap();
    vim.wait_off(&a).await;
    assert!(!sim.vm(VM_A).unwrap().tools_running);
    let snap = vim
        .task(
            &vm_this(&a),
            "CreateSnapshot_Task",
            "<name>update_20260202000000</name><memory>false</memory><quiesce>false</quiesce>",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.attr("type"), Some("VirtualMachineSnapshot"));
    let tree = vim.snapshots(&a).await;
    let names = snapshot_names(&tree);
    assert_eq!(
        names,
        ["clean", "update_20260101000000", "update_20260202000000"]
    );
    // Keep the newest update_* only; its copy of the guest directory goes with it.
    let copies = sim
        .guest_root(VM_A)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("snapshots")
        .join(VM_A);
    let removed = copies.join(&tree[1].1);
    assert!(removed.is_dir());
    vim.task(
        &("VirtualMachineSnapshot", tree[1].1.as_str()),
        "RemoveSnapshot_Task",
        "<removeChildren>false</removeChildren>",
    )
    .await
    .unwrap();
    assert!(!removed.exists());
    assert_eq!(std::fs::read_dir(&copies).unwrap().count(), 2);
    let tree = vim.snapshots(&a).await;
    let names = snapshot_names(&tree);
    assert_eq!(names, ["clean", "update_20260202000000"]);

    // The new snapshot holds the uploaded file: revert to it after a wipe brings it back.
    std::fs::remove_dir_all(sim.guest_path(VM_A, "/home/user/sd-dev")).unwrap();
    vim.revert(&tree[1].1).await.unwrap();
    assert!(sim
        .guest_path(VM_A, "/home/user/sd-dev/bin/payload.txt")
        .exists());

    vim.call(
        "Logout",
        &("SessionManager", vim.session_manager.clone().as_str()),
        "",
    )
    .await
    .unwrap();
    let f = vim.find_vms_raw().await.unwrap_err();
    assert_eq!(f.kind, "NotAuthenticated");
}

#[tokio::test]
async fn vcenter_walk_finds_vms_in_two_datacenters_and_runs_the_whole_ci_flow() {
    let sim = VsphereSim::start(SimOptions::vcenter()).unwrap();
    walk(
        &sim,
        Expect {
            api_type: "VirtualCenter",
            datacenter_of_b: "DC1",
        },
    )
    .await;
}

#[tokio::test]
async fn esx_walk_over_https_with_bare_star_guest_urls() {
    let sim = VsphereSim::start(SimOptions::esx().tls(true).guest_url_port(false)).unwrap();
    assert!(sim.url().starts_with("https://127.0.0.1:"));
    assert_eq!(sim.thumbprint_sha256().unwrap().len(), 64);
    walk(
        &sim,
        Expect {
            api_type: "HostAgent",
            datacenter_of_b: "ha-datacenter",
        },
    )
    .await;
}

#[tokio::test]
async fn pyvmomi_walk_passes_with_the_official_python_client() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import pyVmomi"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "pyVmomi is not installed for python3: run scripts/install-deps (it runs `pip install pyvmomi`)"
        ),
    }
    for opts in [
        SimOptions::vcenter(),
        SimOptions::esx().tls(true).guest_url_port(false),
    ] {
        let sim = VsphereSim::start(opts).unwrap();
        let script = sdci_tests::vsphere_sim::source_dir().join("walk.py");
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .args(["--url", &sim.url()])
            .args(["--user", sim.username(), "--password", sim.password()])
            .args(["--guest-user", sim.guest_username()])
            .args(["--guest-password", sim.guest_password()])
            .args(["--vm", VM_A, "--other-vm", VM_B])
            .args(["--guest-root", sim.guest_root(VM_A).to_str().unwrap()])
            .args(["--control-url", &sim.control_url()]);
        if let Some(ca) = sim.ca_cert_path() {
            cmd.args(["--ca", ca.to_str().unwrap()]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "walk.py against {} failed:\n{}\n{}\nsimulator log:\n{}",
            sim.url(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            sim.log()
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("walk ok"));
    }
}

// ---------------------------------------------------------------------------------------------
// ESXi behaviour beyond the walk
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn guest_operations_check_power_then_tools_then_credentials() {
    let (sim, mut vim, a) =
        start_with_vm_a(SimOptions::vcenter().vms(vec![SimVm::new(VM_A).tools_delay(None)])).await;

    // Off (and wrong credentials): the power state is reported first.
    let f = vim
        .start_program_as(&a, "/bin/sh", "", "nobody", "wrong")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "InvalidPowerState");
    // On, Tools not running (and wrong credentials): Tools come second.
    vim.vm_task(&a, "PowerOnVM_Task").await.unwrap();
    let f = vim
        .start_program_as(&a, "/bin/sh", "", "nobody", "wrong")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "GuestOperationsUnavailable");
    let f = vim
        .call("ShutdownGuest", &vm_this(&a), "")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "ToolsUnavailable");
    // Tools running: now credentials.
    sim.set_tools_delay(VM_A, Some(Duration::ZERO)).unwrap();
    vim.vm_task(&a, "PowerOffVM_Task").await.unwrap();
    vim.vm_task(&a, "PowerOnVM_Task").await.unwrap();
    vim.wait_tools(&a).await;
    let f = vim
        .start_program_as(&a, "/bin/sh", "", "nobody", "wrong")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "InvalidGuestLogin");
    let f = vim
        .start_program(&sim, &a, "/no/such/program", "")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "FileNotFound");
    // Powering off kills guest programs and forgets them.
    let pid = vim
        .start_program(&sim, &a, "/bin/sh", "-c 'exec sleep 100'")
        .await
        .unwrap();
    assert!(sim
        .vm(VM_A)
        .unwrap()
        .processes
        .iter()
        .any(|p| p.pid == pid && p.running));
    vim.vm_task(&a, "PowerOffVM_Task").await.unwrap();
    assert!(sim.vm(VM_A).unwrap().processes.is_empty());
    // A second power-off is a task error, as on ESXi.
    let err = vim.vm_task(&a, "PowerOffVM_Task").await.unwrap_err();
    assert_eq!(err.kind, "InvalidPowerState");
}

#[tokio::test]
async fn guest_programs_get_shell_split_arguments_the_mapped_directory_and_the_contract_env() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    vim.power_on_and_wait_tools(&a).await;
    let r = sim.guest_root(VM_A);
    std::fs::create_dir_all(r.join("work")).unwrap();
    let script =
        r#"-c 'printf "%s\n" "$@" > args.txt; env > env.txt' sh 'a b' "c\"d" e\ f '$HOME' && x>y"#;
    let spec = format!(
        r#"<spec xsi:type="GuestProgramSpec"><programPath>/bin/sh</programPath><arguments>{}</arguments><workingDirectory>/work</workingDirectory><envVariables>FOO=bar baz</envVariables><envVariables>SDCI_GUEST_ROOT=/spoofed</envVariables></spec>"#,
        esc(script)
    );
    let pid = vim.start_spec(&sim, &a, &spec).await.unwrap();
    assert_eq!(vim.wait_process(&sim, &a, pid).await.0, 0);
    let args = std::fs::read_to_string(r.join("work/args.txt")).unwrap();
    assert_eq!(args, "a b\nc\"d\ne f\n$HOME\n&&\nx>y\n");
    let env = std::fs::read_to_string(r.join("work/env.txt")).unwrap();
    let env: HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let root = r.to_str().unwrap();
    assert_eq!(env["FOO"], "bar baz");
    assert_eq!(env["SDCI_GUEST_ROOT"], root);
    assert_eq!(env["HOME"], format!("{root}/home/user"));
    assert!(env["PATH"].starts_with(&format!("{root}/usr/local/bin:{root}/usr/bin:")));

    // A spec that sets HOME and PATH keeps them; a missing working directory is FileNotFound.
    let spec = r#"<spec xsi:type="GuestProgramSpec"><programPath>/bin/sh</programPath><arguments>-c 'env > env2.txt'</arguments><envVariables>HOME=/h</envVariables><envVariables>PATH=/usr/bin:/bin</envVariables></spec>"#;
    let pid = vim.start_spec(&sim, &a, spec).await.unwrap();
    assert_eq!(vim.wait_process(&sim, &a, pid).await.0, 0);
    // The default working directory is R/home/<guest user> whatever HOME says.
    let env2 = std::fs::read_to_string(r.join("home/user/env2.txt")).unwrap();
    assert!(env2.lines().any(|l| l == "HOME=/h"), "{env2}");
    assert!(env2.lines().any(|l| l == "PATH=/usr/bin:/bin"), "{env2}");
    let spec = r#"<spec xsi:type="GuestProgramSpec"><programPath>/bin/sh</programPath><arguments></arguments><workingDirectory>/nope</workingDirectory></spec>"#;
    let f = vim.start_spec(&sim, &a, spec).await.unwrap_err();
    assert_eq!(f.kind, "FileNotFound");

    // Output goes to a per-process log outside the guest, readable through the harness.
    let pid = vim
        .start_program(
            &sim,
            &a,
            "/bin/sh",
            "-c 'echo to-stdout; echo to-stderr >&2'",
        )
        .await
        .unwrap();
    assert_eq!(vim.wait_process(&sim, &a, pid).await.0, 0);
    assert_eq!(
        sim.guest_process_output(VM_A, pid).unwrap(),
        "to-stdout\nto-stderr\n"
    );
}

#[tokio::test]
async fn dropping_the_simulator_kills_its_guest_processes() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    vim.power_on_and_wait_tools(&a).await;
    // A process group with a child: both must go.
    let pid = vim
        .start_program(&sim, &a, "/bin/sh", "-c 'sleep 300 & exec sleep 301'")
        .await
        .unwrap();
    assert!(alive(pid));
    drop(sim);
    let deadline = Instant::now() + Duration::from_secs(30); // safety net only
    while alive(pid) || alive_group(pid) {
        assert!(
            Instant::now() < deadline,
            "guest process group {pid} survived the simulator"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_power_off_mid_step_ends_every_process_of_the_guest_even_in_other_sessions() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    vim.power_on_and_wait_tools(&a).await;
    // As dom0's steps do: processes in process groups and sessions of their own, and one whose
    // parent has gone (re-parented away from the guest program).
    let pid = vim
        .start_program(
            &sim,
            &a,
            "/bin/sh",
            "-c '(setsid sleep 300 &) ; (sleep 301 &) ; exec sleep 302'",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30); // safety net only
    let before = loop {
        let pids = sim.guest_pids(VM_A);
        if pids.len() >= 3 {
            break pids;
        }
        assert!(
            Instant::now() < deadline,
            "the guest tree never grew: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(before.contains(&(pid as u32)));
    let pgid = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit(')').next().unwrap_or("").to_owned();
                rest.split_whitespace()
                    .nth(2)
                    .and_then(|g| g.parse::<i64>().ok())
            })
    };
    let elsewhere = before.iter().filter(|p| pgid(**p) != Some(pid)).count();
    assert!(
        elsewhere >= 1,
        "no process outside the program's group: {before:?}"
    );
    vim.vm_task(&a, "PowerOffVM_Task").await.unwrap();
    // Gone when the power-off task has ended.
    let left: Vec<u32> = before
        .iter()
        .copied()
        .filter(|p| alive(*p as i64))
        .collect();
    assert!(
        left.is_empty(),
        "processes of the powered-off guest still run: {left:?}"
    );
    assert!(
        sim.guest_pids(VM_A).is_empty(),
        "{:?}",
        sim.guest_pids(VM_A)
    );
}

#[tokio::test]
async fn the_annotation_is_set_by_reconfigure_with_esxis_change_version_compare_and_set() {
    let (_sim, mut vim, a) = start_with_vm_a(SimOptions::vcenter()).await;
    let version = |n: Option<Node>| n.map(|n| n.text).unwrap_or_default();
    let v0 = version(vim.property(&a, "config.changeVersion").await);
    assert!(!v0.is_empty(), "every VM has a change version");
    let reconfig = |annotation: &str, change: &str| {
        let change = if change.is_empty() {
            String::new()
        } else {
            format!("<changeVersion>{}</changeVersion>", esc(change))
        };
        format!(
            "<spec>{change}<annotation>{}</annotation></spec>",
            esc(annotation)
        )
    };
    vim.task(&vm_this(&a), "ReconfigVM_Task", &reconfig("lease A", &v0))
        .await
        .unwrap();
    let note = vim.property(&a, "config.annotation").await.unwrap().text;
    assert_eq!(note, "lease A");
    let v1 = version(vim.property(&a, "config.changeVersion").await);
    assert_ne!(v1, v0, "a change bumps the version");
    // A writer that read before that change loses.
    let f = vim
        .task(&vm_this(&a), "ReconfigVM_Task", &reconfig("lease B", &v0))
        .await
        .unwrap_err();
    assert_eq!(f.kind, "ConcurrentAccess", "{}", f.message);
    assert_eq!(
        vim.property(&a, "config.annotation").await.unwrap().text,
        "lease A"
    );
    // An empty annotation clears it (vcsim alone would keep the old text).
    vim.task(&vm_this(&a), "ReconfigVM_Task", &reconfig("", &v1))
        .await
        .unwrap();
    let cleared = vim
        .property(&a, "config.annotation")
        .await
        .map(|n| n.text)
        .unwrap_or_default();
    assert_eq!(cleared, "");
    // Without a change version the write is unconditional.
    vim.task(&vm_this(&a), "ReconfigVM_Task", &reconfig("anyone", ""))
        .await
        .unwrap();
}

/// A live (not zombie) process.
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Any live process in process group `pgid`.
fn alive_group(pgid: i64) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        fields.first() != Some(&"Z")
            && fields.get(2).and_then(|g| g.parse::<i64>().ok()) == Some(pgid)
    })
}

#[tokio::test]
async fn upload_refuses_to_overwrite_unless_asked_and_download_of_a_missing_file_fails() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::vcenter()).await;
    vim.power_on_and_wait_tools(&a).await;
    vim.upload(&sim, &a, "/tmp/x", b"one").await.unwrap();
    let f = vim
        .guest_call(
            &sim,
            "GuestFileManager",
            "guestOperationsFileManager",
            "InitiateFileTransferToGuest",
            &a,
            "<guestFilePath>/tmp/x</guestFilePath><fileAttributes xsi:type=\"GuestFileAttributes\"></fileAttributes><fileSize>3</fileSize><overwrite>false</overwrite>",
        )
        .await
        .unwrap_err();
    assert_eq!(f.kind, "FileAlreadyExists");
    let f = vim.download(&sim, &a, "/tmp/missing").await.unwrap_err();
    assert_eq!(f.kind, "FileNotFound");
    let f = vim.download(&sim, &a, "/tmp").await.unwrap_err();
    assert_eq!(f.kind, "NotAFile");
}

#[tokio::test]
async fn files_linked_in_before_start_are_in_every_snapshot_and_later_links_only_in_later_ones() {
    let helper = tempfile::tempdir().unwrap();
    let tool = helper.path().join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\nexit 7\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (sim, mut vim) = start_sim(
        SimOptions::vcenter().vms(vec![SimVm::new(VM_A).link("/usr/local/bin/tool", &tool)]),
    )
    .await;
    let a = vim.find_vms().await[VM_A].clone();
    let tree = vim.snapshots(&a).await;
    vim.revert(&tree[0].1).await.unwrap();
    vim.power_on_and_wait_tools(&a).await;
    // PATH puts R/usr/local/bin first, but programPath is what runs.
    let pid = vim
        .start_program(&sim, &a, "/usr/local/bin/tool", "")
        .await
        .unwrap();
    assert_eq!(vim.wait_process(&sim, &a, pid).await.0, 7);

    sim.link_into_guest(VM_A, "/usr/local/bin/late", &tool)
        .unwrap();
    vim.call("ShutdownGuest", &vm_this(&a), "").await.unwrap();
    vim.wait_off(&a).await;
    vim.task(
        &vm_this(&a),
        "CreateSnapshot_Task",
        "<name>with_late</name><memory>false</memory><quiesce>false</quiesce>",
    )
    .await
    .unwrap();
    vim.revert(&tree[0].1).await.unwrap();
    assert!(!sim.guest_path(VM_A, "/usr/local/bin/late").exists());
    let tree = vim.snapshots(&a).await;
    let with_late = tree.iter().find(|(n, _)| n == "with_late").unwrap();
    vim.revert(&with_late.1).await.unwrap();
    let late = sim.guest_path(VM_A, "/usr/local/bin/late");
    assert!(late.symlink_metadata().unwrap().file_type().is_symlink());
}

#[tokio::test]
async fn vcenter_inventory_spans_every_configured_datacenter() {
    let (_sim, mut vim) = start_sim(SimOptions::vcenter().vms(vec![
        SimVm::new("a").snapshots(&[]),
        SimVm::new("b").datacenter(1).snapshots(&[]),
        SimVm::new("c").datacenter(2).snapshots(&[]),
    ]))
    .await;
    let vms = vim.find_vms().await;
    for (name, dc) in [("a", "DC0"), ("b", "DC1"), ("c", "DC2")] {
        assert_eq!(vim.datacenter_of(&vms[name]).await, dc);
    }
    assert!(vim.snapshots(&vms["a"]).await.is_empty());
}

#[tokio::test]
async fn login_with_wrong_password_is_invalid_login_and_no_session_is_not_authenticated() {
    let sim = VsphereSim::start(SimOptions::esx()).unwrap();
    let mut vim = Vim::bare(&sim).await;
    let f = vim.login("root", "wrong").await.unwrap_err();
    assert_eq!(f.kind, "InvalidLogin");
    // Without a session even the simulator's own ShutdownGuest refuses.
    let moref = sim.vm(VM_A).unwrap().moref;
    let f = vim
        .call("ShutdownGuest", &("VirtualMachine", moref.as_str()), "")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "NotAuthenticated");
}

#[test]
fn a_bad_fault_rule_is_refused_with_a_message() {
    let sim = VsphereSim::start(SimOptions::esx()).unwrap();
    let err = sim
        .inject(Fault::SoapFault {
            method: "PowerOnVM_Task".into(),
            kind: "NoSuchFaultType".into(),
            message: String::new(),
            count: 1,
        })
        .unwrap_err();
    assert!(err.to_string().contains("unknown fault type"), "{err}");
    let err = sim
        .inject(Fault::TaskError {
            method: "ShutdownGuest".into(),
            kind: "InvalidState".into(),
            count: 1,
        })
        .unwrap_err();
    assert!(err.to_string().contains("_Task"), "{err}");
    let err = sim
        .inject(Fault::ShutdownNever {
            vm: "no-such-vm".into(),
            count: 1,
        })
        .unwrap_err();
    assert!(err.to_string().contains("no VM named"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// One test per injected fault kind
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn injected_soap_fault_is_returned_typed_for_its_count_only() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    sim.inject(Fault::SoapFault {
        method: "PowerOnVM_Task".into(),
        kind: "InsufficientResourcesFault".into(),
        message: "no memory left".into(),
        count: 1,
    })
    .unwrap();
    let f = vim
        .call("PowerOnVM_Task", &vm_this(&a), "")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "InsufficientResourcesFault");
    assert_eq!(f.status, 500);
    assert!(f.message.contains("no memory left"));
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOff");
    vim.vm_task(&a, "PowerOnVM_Task").await.unwrap();
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOn");
}

#[tokio::test]
async fn injected_http_status_answers_that_status_then_recovers() {
    let (sim, mut vim) = start_sim(SimOptions::esx()).await;
    sim.inject(Fault::HttpStatus {
        method: "*".into(),
        status: 503,
        count: 2,
    })
    .unwrap();
    for _ in 0..2 {
        let f = vim.find_vms_raw().await.unwrap_err();
        assert_eq!(f.status, 503);
    }
    assert!(vim.find_vms_raw().await.is_ok());
}

#[tokio::test]
async fn injected_drop_closes_the_connection_without_an_answer() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    sim.inject(Fault::DropConnection {
        method: "PowerOnVM_Task".into(),
        count: 1,
    })
    .unwrap();
    let f = vim
        .call("PowerOnVM_Task", &vm_this(&a), "")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "transport", "{f:?}");
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOff");
}

#[tokio::test]
async fn injected_delay_answers_late_and_correctly() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    sim.inject(Fault::Delay {
        method: "PowerOnVM_Task".into(),
        ms: 300,
        count: 1,
    })
    .unwrap();
    let started = Instant::now();
    vim.vm_task(&a, "PowerOnVM_Task").await.unwrap();
    // A lower bound only: the simulator sleeps at least this long before answering.
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOn");
}

#[tokio::test]
async fn injected_task_error_fails_the_task_without_running_the_method() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    sim.inject(Fault::TaskError {
        method: "PowerOnVM_Task".into(),
        kind: "InsufficientResourcesFault".into(),
        count: 1,
    })
    .unwrap();
    let err = vim.vm_task(&a, "PowerOnVM_Task").await.unwrap_err();
    assert_eq!(err.kind, "InsufficientResourcesFault");
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOff");
    // Reverting a snapshot fails the same way and leaves the guest directory alone.
    let tree = vim.snapshots(&a).await;
    let marker = sim.guest_path(VM_A, "/tmp/marker");
    std::fs::write(&marker, "x").unwrap();
    sim.inject(Fault::TaskError {
        method: "RevertToSnapshot_Task".into(),
        kind: "InvalidState".into(),
        count: 1,
    })
    .unwrap();
    let err = vim.revert(&tree[0].1).await.unwrap_err();
    assert_eq!(err.kind, "InvalidState");
    assert!(marker.exists());
}

#[tokio::test]
async fn injected_task_running_stays_running_then_ends_like_the_real_call() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    sim.inject(Fault::TaskRunning {
        method: "PowerOnVM_Task".into(),
        ms: 1500,
        count: 1,
    })
    .unwrap();
    let task = vim.call("PowerOnVM_Task", &vm_this(&a), "").await.unwrap();
    let task = task.child("returnval").unwrap().text.clone();
    // The real PowerOn has not run yet (it runs when the task leaves "running").
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOff");
    let states = vim.task_states(&task).await;
    assert_eq!(states, ["running", "success"]);
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOn");
    // The real call's fault comes through too: powering on a running VM.
    sim.inject(Fault::TaskRunning {
        method: "PowerOnVM_Task".into(),
        ms: 100,
        count: 1,
    })
    .unwrap();
    let err = vim.vm_task(&a, "PowerOnVM_Task").await.unwrap_err();
    assert_eq!(err.kind, "InvalidPowerState");
}

#[tokio::test]
async fn injected_shutdown_never_leaves_the_vm_running_until_forced_off() {
    let (sim, mut vim) = start_sim(SimOptions::esx()).await;
    let vms = vim.find_vms().await;
    let (a, b) = (vms[VM_A].clone(), vms[VM_B].clone());
    vim.power_on_and_wait_tools(&a).await;
    vim.power_on_and_wait_tools(&b).await;
    sim.inject(Fault::ShutdownNever {
        vm: VM_A.into(),
        count: 1,
    })
    .unwrap();
    vim.call("ShutdownGuest", &vm_this(&a), "").await.unwrap();
    // B gets the same shutdown delay, asked later: once B is off, A would be too.
    vim.call("ShutdownGuest", &vm_this(&b), "").await.unwrap();
    vim.wait_off(&b).await;
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOn");
    vim.vm_task(&a, "PowerOffVM_Task").await.unwrap();
    assert_eq!(sim.vm(VM_A).unwrap().power_state, "poweredOff");
}

#[tokio::test]
async fn injected_tools_never_keeps_guest_operations_unavailable() {
    let (sim, mut vim) = start_sim(SimOptions::esx()).await;
    let vms = vim.find_vms().await;
    let (a, b) = (vms[VM_A].clone(), vms[VM_B].clone());
    sim.inject(Fault::ToolsNever { vm: VM_A.into() }).unwrap();
    vim.vm_task(&a, "PowerOnVM_Task").await.unwrap();
    // B boots with the same Tools delay, powered on later: once its Tools run, A's would.
    vim.power_on_and_wait_tools(&b).await;
    assert!(!sim.vm(VM_A).unwrap().tools_running);
    let f = vim
        .start_program(&sim, &a, "/bin/sh", "")
        .await
        .unwrap_err();
    assert_eq!(f.kind, "GuestOperationsUnavailable");
}

#[tokio::test]
async fn injected_guest_file_failures_hit_the_transfer_not_the_soap_call() {
    let (sim, mut vim, a) = start_with_vm_a(SimOptions::esx()).await;
    vim.power_on_and_wait_tools(&a).await;
    sim.inject(Fault::HttpStatus {
        method: "guestFile".into(),
        status: 500,
        count: 1,
    })
    .unwrap();
    let f = vim.upload(&sim, &a, "/tmp/f", b"abc").await.unwrap_err();
    assert_eq!(f.status, 500);
    assert!(!sim.guest_path(VM_A, "/tmp/f").exists());
    // The URL was not used up by the failed PUT's fault; a fresh transfer works.
    vim.upload(&sim, &a, "/tmp/f", b"abc").await.unwrap();
    assert_eq!(
        std::fs::read(sim.guest_path(VM_A, "/tmp/f")).unwrap(),
        b"abc"
    );
}

// ---------------------------------------------------------------------------------------------
// A raw SOAP client (reqwest + quick-xml), as small as the tests need.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }
    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn find(&self, name: &str) -> Option<&Node> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }
}

/// Parses XML into a tree of local names; a prefixed `type` attribute is stored as `xsi:type`.
fn parse(xml: &str) -> Node {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack = vec![Node {
        name: String::new(),
        attrs: vec![],
        text: String::new(),
        children: vec![],
    }];
    let open = |e: &quick_xml::events::BytesStart| Node {
        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
        attrs: e
            .attributes()
            .flatten()
            .map(|a| {
                let key = a.key.as_ref();
                let local = a.key.local_name();
                let name = if local.as_ref() == b"type" && key != b"type" {
                    "xsi:type".to_string()
                } else {
                    String::from_utf8_lossy(key).into_owned()
                };
                (name, a.unescape_value().unwrap().into_owned())
            })
            .collect(),
        text: String::new(),
        children: vec![],
    };
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => stack.push(open(&e)),
            Event::Empty(e) => {
                let n = open(&e);
                stack.last_mut().unwrap().children.push(n);
            }
            Event::End(_) => {
                let n = stack.pop().unwrap();
                stack.last_mut().unwrap().children.push(n);
            }
            Event::Text(t) => stack
                .last_mut()
                .unwrap()
                .text
                .push_str(&t.unescape().unwrap()),
            Event::CData(t) => stack
                .last_mut()
                .unwrap()
                .text
                .push_str(&String::from_utf8_lossy(&t)),
            Event::Eof => break,
            _ => {}
        }
    }
    stack.pop().unwrap()
}

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[derive(Debug)]
struct SoapFault {
    /// The fault's xsi:type, "http" for a non-SOAP error status, "transport" for no answer.
    kind: String,
    message: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq)]
struct Mor {
    kind: String,
    value: String,
}

fn vm_this(vm: &Mor) -> (&str, &str) {
    (vm.kind.as_str(), vm.value.as_str())
}

struct Vim {
    http: reqwest::Client,
    url: String,
    host_port: String,
    cookie: Option<String>,
    root_folder: String,
    property_collector: String,
    view_manager: String,
    session_manager: String,
    about_api_type: String,
}

impl Vim {
    async fn bare(sim: &VsphereSim) -> Self {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(ca) = sim.ca_cert_path() {
            let pem = std::fs::read(ca).unwrap();
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .tls_built_in_root_certs(false);
        }
        let mut vim = Vim {
            http: builder.build().unwrap(),
            url: sim.url(),
            host_port: sim.host_port(),
            cookie: None,
            root_folder: String::new(),
            property_collector: String::new(),
            view_manager: String::new(),
            session_manager: String::new(),
            about_api_type: String::new(),
        };
        let sc = vim
            .call(
                "RetrieveServiceContent",
                &("ServiceInstance", "ServiceInstance"),
                "",
            )
            .await
            .unwrap();
        let rv = sc.child("returnval").unwrap();
        vim.root_folder = rv.child("rootFolder").unwrap().text.clone();
        vim.property_collector = rv.child("propertyCollector").unwrap().text.clone();
        vim.view_manager = rv.child("viewManager").unwrap().text.clone();
        vim.session_manager = rv.child("sessionManager").unwrap().text.clone();
        vim.about_api_type = rv
            .child("about")
            .and_then(|a| a.child("apiType"))
            .unwrap()
            .text
            .clone();
        vim
    }

    async fn connect(sim: &VsphereSim) -> Self {
        let mut vim = Self::bare(sim).await;
        vim.login(sim.username(), sim.password()).await.unwrap();
        vim
    }

    async fn login(&mut self, user: &str, password: &str) -> Result<(), SoapFault> {
        let sm = self.session_manager.clone();
        self.call(
            "Login",
            &("SessionManager", sm.as_str()),
            &format!(
                "<userName>{}</userName><password>{}</password>",
                esc(user),
                esc(password)
            ),
        )
        .await
        .map(|_| ())
    }

    /// One SOAP call; returns the `<Method>Response` element.
    async fn call(
        &mut self,
        method: &str,
        this: &(&str, &str),
        args: &str,
    ) -> Result<Node, SoapFault> {
        let (body, status) = self.post(method, this, args).await?;
        let doc = parse(&body);
        let envelope_body = doc.find("Body").ok_or_else(|| SoapFault {
            kind: "http".into(),
            message: body.clone(),
            status,
        })?;
        if let Some(fault) = envelope_body.child("Fault") {
            let kind = fault
                .child("detail")
                .and_then(|d| d.children.first())
                .and_then(|f| f.attr("xsi:type"))
                .unwrap_or("unknown")
                .to_string();
            let message = fault
                .child("faultstring")
                .map(|s| s.text.clone())
                .unwrap_or_default();
            return Err(SoapFault {
                kind,
                message,
                status,
            });
        }
        Ok(envelope_body.children.first().cloned().unwrap())
    }

    /// Like `call`, returning the raw response text too (to check what is on the wire).
    async fn post(
        &mut self,
        method: &str,
        this: &(&str, &str),
        args: &str,
    ) -> Result<(String, u16), SoapFault> {
        let envelope = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><{method} xmlns="urn:vim25"><_this type="{}">{}</_this>{args}</{method}></soapenv:Body></soapenv:Envelope>"#,
            this.0,
            esc(this.1)
        );
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "\"urn:vim25/6.5\"")
            .body(envelope);
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        let resp = req.send().await.map_err(|e| SoapFault {
            kind: "transport".into(),
            message: e.to_string(),
            status: 0,
        })?;
        let status = resp.status().as_u16();
        if let Some(set) = resp.headers().get("set-cookie") {
            let c = set.to_str().unwrap().split(';').next().unwrap().to_string();
            self.cookie = Some(c);
        }
        let body = resp.text().await.map_err(|e| SoapFault {
            kind: "transport".into(),
            message: e.to_string(),
            status,
        })?;
        if status != 200 && status != 500 {
            return Err(SoapFault {
                kind: "http".into(),
                message: body,
                status,
            });
        }
        Ok((body, status))
    }

    async fn find_vms_raw(&mut self) -> Result<HashMap<String, Mor>, SoapFault> {
        let vm_mgr = self.view_manager.clone();
        let root = self.root_folder.clone();
        let view = self
            .call(
                "CreateContainerView",
                &("ViewManager", vm_mgr.as_str()),
                &format!(
                    r#"<container type="Folder">{root}</container><type>VirtualMachine</type><recursive>true</recursive>"#
                ),
            )
            .await?;
        let view = view.child("returnval").unwrap().text.clone();
        let pc = self.property_collector.clone();
        let res = self
            .call(
                "RetrievePropertiesEx",
                &("PropertyCollector", pc.as_str()),
                &format!(
                    r#"<specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet></propSet><objectSet><obj type="ContainerView">{view}</obj><skip>true</skip><selectSet xsi:type="TraversalSpec"><name>traverseEntities</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet><options></options>"#
                ),
            )
            .await?;
        let mut out = HashMap::new();
        for obj in res.child("returnval").unwrap().children_named("objects") {
            let mor = obj.child("obj").unwrap();
            let name = obj
                .children_named("propSet")
                .find(|p| p.child("name").unwrap().text == "name")
                .unwrap()
                .child("val")
                .unwrap()
                .text
                .clone();
            out.insert(
                name,
                Mor {
                    kind: mor.attr("type").unwrap().to_string(),
                    value: mor.text.clone(),
                },
            );
        }
        self.call("DestroyView", &("ContainerView", view.as_str()), "")
            .await?;
        Ok(out)
    }

    async fn find_vms(&mut self) -> HashMap<String, Mor> {
        self.find_vms_raw().await.unwrap()
    }

    /// Reads one property of one object (None when unset).
    async fn property(&mut self, obj: &Mor, path: &str) -> Option<Node> {
        let pc = self.property_collector.clone();
        let res = self
            .call(
                "RetrievePropertiesEx",
                &("PropertyCollector", pc.as_str()),
                &format!(
                    r#"<specSet><propSet><type>{}</type><pathSet>{path}</pathSet></propSet><objectSet><obj type="{}">{}</obj></objectSet></specSet><options></options>"#,
                    obj.kind, obj.kind, obj.value
                ),
            )
            .await
            .unwrap();
        res.child("returnval")
            .and_then(|r| r.child("objects"))
            .and_then(|o| o.child("propSet"))
            .and_then(|p| p.child("val"))
            .cloned()
    }

    async fn datacenter_of(&mut self, vm: &Mor) -> String {
        let mut cur = vm.clone();
        loop {
            let parent = self
                .property(&cur, "parent")
                .await
                .expect("entity without a datacenter");
            cur = Mor {
                kind: parent.attr("type").unwrap().to_string(),
                value: parent.text.clone(),
            };
            if cur.kind == "Datacenter" {
                return self.property(&cur, "name").await.unwrap().text;
            }
        }
    }

    /// The snapshot tree flattened depth-first: (name, snapshot MOR value).
    async fn snapshots(&mut self, vm: &Mor) -> Vec<(String, String)> {
        fn walk(n: &Node, out: &mut Vec<(String, String)>) {
            for s in n
                .children_named("rootSnapshotList")
                .chain(n.children_named("childSnapshotList"))
            {
                out.push((
                    s.child("name").unwrap().text.clone(),
                    s.child("snapshot").unwrap().text.clone(),
                ));
                walk(s, out);
            }
        }
        let mut out = vec![];
        if let Some(info) = self.property(vm, "snapshot").await {
            walk(&info, &mut out);
        }
        out
    }

    /// Calls a *_Task method and waits for the task: Ok(result) or Err(fault kind).
    async fn task(
        &mut self,
        this: &(&str, &str),
        method: &str,
        args: &str,
    ) -> Result<Option<Node>, SoapFault> {
        let resp = self.call(method, this, args).await?;
        let task = resp.child("returnval").unwrap().text.clone();
        self.wait_task(&task).await
    }

    /// Every state the task is seen in through WaitForUpdatesEx, until it ends.
    async fn task_states(&mut self, task: &str) -> Vec<String> {
        let mut states = vec![];
        self.watch(
            &Mor {
                kind: "Task".into(),
                value: task.into(),
            },
            &["info.state"],
            |p| {
                let s = p.get("info.state").cloned().unwrap_or_default();
                if states.last() != Some(&s) {
                    states.push(s.clone());
                }
                s == "success" || s == "error"
            },
        )
        .await;
        states
    }

    async fn wait_task(&mut self, task: &str) -> Result<Option<Node>, SoapFault> {
        let mut result = None;
        let mut fault = None;
        let obj = Mor {
            kind: "Task".into(),
            value: task.into(),
        };
        let nodes = self
            .watch_nodes(&obj, &["info.state", "info.error", "info.result"], |p| {
                matches!(
                    p.get("info.state").map(|n| n.text.as_str()),
                    Some("success") | Some("error")
                )
            })
            .await;
        if nodes.get("info.state").map(|n| n.text.as_str()) == Some("error") {
            let e = nodes.get("info.error").unwrap();
            fault = Some(SoapFault {
                kind: e
                    .child("fault")
                    .and_then(|f| f.attr("xsi:type"))
                    .unwrap_or("unknown")
                    .to_string(),
                message: e
                    .child("localizedMessage")
                    .map(|m| m.text.clone())
                    .unwrap_or_default(),
                status: 200,
            });
        } else if let Some(r) = nodes.get("info.result") {
            result = Some(r.clone());
        }
        match fault {
            Some(f) => Err(f),
            None => Ok(result),
        }
    }

    async fn wait_vm(&mut self, vm: &Mor, done: impl FnMut(&HashMap<String, String>) -> bool) {
        self.watch(
            vm,
            &["runtime.powerState", "guest.toolsRunningStatus"],
            done,
        )
        .await;
    }

    async fn watch(
        &mut self,
        obj: &Mor,
        paths: &[&str],
        mut done: impl FnMut(&HashMap<String, String>) -> bool,
    ) {
        self.watch_nodes(obj, paths, |p| {
            let texts = p.iter().map(|(k, v)| (k.clone(), v.text.clone())).collect();
            done(&texts)
        })
        .await;
    }

    /// A dedicated PropertyCollector + filter + WaitForUpdatesEx loop until `done` holds.
    async fn watch_nodes(
        &mut self,
        obj: &Mor,
        paths: &[&str],
        mut done: impl FnMut(&HashMap<String, Node>) -> bool,
    ) -> HashMap<String, Node> {
        let pc0 = self.property_collector.clone();
        let pc = self
            .call(
                "CreatePropertyCollector",
                &("PropertyCollector", pc0.as_str()),
                "",
            )
            .await
            .unwrap()
            .child("returnval")
            .unwrap()
            .text
            .clone();
        let path_set: String = paths
            .iter()
            .map(|p| format!("<pathSet>{p}</pathSet>"))
            .collect();
        self.call(
            "CreateFilter",
            &("PropertyCollector", pc.as_str()),
            &format!(
                r#"<spec><propSet><type>{}</type>{path_set}</propSet><objectSet><obj type="{}">{}</obj></objectSet></spec><partialUpdates>false</partialUpdates>"#,
                obj.kind, obj.kind, obj.value
            ),
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60); // safety net only
        let mut version = String::new();
        let mut props: HashMap<String, Node> = HashMap::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "timed out watching {obj:?} {paths:?}: {props:?}"
            );
            let resp = self
                .call(
                    "WaitForUpdatesEx",
                    &("PropertyCollector", pc.as_str()),
                    &format!("<version>{version}</version><options><maxWaitSeconds>10</maxWaitSeconds></options>"),
                )
                .await
                .unwrap();
            let Some(rv) = resp.child("returnval") else {
                continue;
            };
            version = rv
                .child("version")
                .map(|v| v.text.clone())
                .unwrap_or_default();
            for fs in rv.children_named("filterSet") {
                for os in fs.children_named("objectSet") {
                    for cs in os.children_named("changeSet") {
                        let name = cs.child("name").unwrap().text.clone();
                        match cs.child("val") {
                            Some(v) => props.insert(name, v.clone()),
                            None => props.remove(&name),
                        };
                    }
                }
            }
            if done(&props) {
                break;
            }
        }
        self.call(
            "DestroyPropertyCollector",
            &("PropertyCollector", pc.as_str()),
            "",
        )
        .await
        .unwrap();
        props
    }

    async fn power_on_and_wait_tools(&mut self, vm: &Mor) {
        self.vm_task(vm, "PowerOnVM_Task").await.unwrap();
        self.wait_tools(vm).await;
    }

    /// A task on the VM itself without arguments (power operations); the task's result.
    async fn vm_task(&mut self, vm: &Mor, method: &str) -> Result<Option<Node>, SoapFault> {
        self.task(&vm_this(vm), method, "").await
    }

    async fn wait_tools(&mut self, vm: &Mor) {
        self.wait_vm(vm, |p| {
            p.get("guest.toolsRunningStatus").map(String::as_str) == Some("guestToolsRunning")
        })
        .await;
    }

    async fn wait_off(&mut self, vm: &Mor) {
        self.wait_vm(vm, |p| {
            p.get("runtime.powerState").map(String::as_str) == Some("poweredOff")
        })
        .await;
    }

    async fn revert(&mut self, snapshot: &str) -> Result<Option<Node>, SoapFault> {
        self.task(
            &("VirtualMachineSnapshot", snapshot),
            "RevertToSnapshot_Task",
            "",
        )
        .await
    }

    fn auth(user: &str, password: &str) -> String {
        format!(
            r#"<auth xsi:type="NamePasswordAuthentication"><interactiveSession>false</interactiveSession><username>{}</username><password>{}</password></auth>"#,
            esc(user),
            esc(password)
        )
    }

    /// The body of a guest operation on `vm` as `user`: the VM, the credentials, then `args`.
    fn guest_body(vm: &Mor, user: &str, password: &str, args: &str) -> String {
        format!(
            r#"<vm type="VirtualMachine">{}</vm>{}{args}"#,
            vm.value,
            Self::auth(user, password)
        )
    }

    /// A guest operation with the simulator's guest credentials.
    async fn guest_call(
        &mut self,
        sim: &VsphereSim,
        mgr_type: &str,
        mgr: &str,
        method: &str,
        vm: &Mor,
        args: &str,
    ) -> Result<Node, SoapFault> {
        let body = Self::guest_body(vm, sim.guest_username(), sim.guest_password(), args);
        self.call(method, &(mgr_type, mgr), &body).await
    }

    /// StartProgramInGuest with a whole `<spec>` element; the new process's pid.
    async fn start_spec_as(
        &mut self,
        vm: &Mor,
        user: &str,
        pw: &str,
        spec: &str,
    ) -> Result<i64, SoapFault> {
        let body = Self::guest_body(vm, user, pw, spec);
        let r = self
            .call("StartProgramInGuest", &PROCESS_MANAGER, &body)
            .await?;
        Ok(r.child("returnval").unwrap().text.parse().unwrap())
    }

    /// StartProgramInGuest with a whole `<spec>` element and the simulator's guest credentials.
    async fn start_spec(
        &mut self,
        sim: &VsphereSim,
        vm: &Mor,
        spec: &str,
    ) -> Result<i64, SoapFault> {
        self.start_spec_as(vm, sim.guest_username(), sim.guest_password(), spec)
            .await
    }

    async fn start_program_as(
        &mut self,
        vm: &Mor,
        program: &str,
        args: &str,
        user: &str,
        pw: &str,
    ) -> Result<i64, SoapFault> {
        let spec = format!(
            r#"<spec xsi:type="GuestProgramSpec"><programPath>{}</programPath><arguments>{}</arguments></spec>"#,
            esc(program),
            esc(args)
        );
        self.start_spec_as(vm, user, pw, &spec).await
    }

    async fn start_program(
        &mut self,
        sim: &VsphereSim,
        vm: &Mor,
        program: &str,
        args: &str,
    ) -> Result<i64, SoapFault> {
        self.start_program_as(
            vm,
            program,
            args,
            sim.guest_username(),
            sim.guest_password(),
        )
        .await
    }

    /// Polls ListProcessesInGuest until endTime is present; (exit code, raw response).
    async fn wait_process(&mut self, sim: &VsphereSim, vm: &Mor, pid: i64) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(60); // safety net only
        loop {
            assert!(Instant::now() < deadline, "process {pid} did not end");
            let body = Self::guest_body(
                vm,
                sim.guest_username(),
                sim.guest_password(),
                &format!("<pids>{pid}</pids>"),
            );
            let (raw, _) = self
                .post("ListProcessesInGuest", &PROCESS_MANAGER, &body)
                .await
                .unwrap();
            let doc = parse(&raw);
            let info = doc.find("returnval").expect("a known pid is listed");
            if info.child("endTime").is_some() {
                let code = info
                    .child("exitCode")
                    .map(|c| c.text.parse().unwrap())
                    .unwrap_or(0);
                return (code, raw);
            }
            // Guest processes have no update mechanism; poll like govmomi's toolbox does.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn transfer_url(&self, url: &str) -> String {
        // Replace "*" or "*:port" with the host:port we connected to (govmomi's TransferURL).
        let (scheme, rest) = url.split_once("://").unwrap();
        let path = &rest[rest.find('/').unwrap()..];
        let host = &rest[..rest.find('/').unwrap()];
        assert!(
            host == "*" || host.starts_with("*:"),
            "guestFile host is {host}"
        );
        format!("{scheme}://{}{path}", self.host_port)
    }

    async fn upload(
        &mut self,
        sim: &VsphereSim,
        vm: &Mor,
        path: &str,
        data: &[u8],
    ) -> Result<(), SoapFault> {
        let r = self
            .guest_call(
                sim,
                "GuestFileManager",
                "guestOperationsFileManager",
                "InitiateFileTransferToGuest",
                vm,
                &format!(
                    r#"<guestFilePath>{}</guestFilePath><fileAttributes xsi:type="GuestPosixFileAttributes"><permissions>420</permissions></fileAttributes><fileSize>{}</fileSize><overwrite>true</overwrite>"#,
                    esc(path),
                    data.len()
                ),
            )
            .await?;
        let url = self.transfer_url(&r.child("returnval").unwrap().text);
        let resp = self
            .http
            .put(url)
            .body(data.to_vec())
            .send()
            .await
            .map_err(|e| SoapFault {
                kind: "transport".into(),
                message: e.to_string(),
                status: 0,
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(SoapFault {
                kind: "http".into(),
                message: resp.text().await.unwrap_or_default(),
                status,
            });
        }
        Ok(())
    }

    async fn download(
        &mut self,
        sim: &VsphereSim,
        vm: &Mor,
        path: &str,
    ) -> Result<Vec<u8>, SoapFault> {
        let r = self
            .guest_call(
                sim,
                "GuestFileManager",
                "guestOperationsFileManager",
                "InitiateFileTransferFromGuest",
                vm,
                &format!("<guestFilePath>{}</guestFilePath>", esc(path)),
            )
            .await?;
        let info = r.child("returnval").unwrap();
        assert_eq!(
            info.child("attributes").unwrap().attr("xsi:type"),
            Some("GuestPosixFileAttributes")
        );
        let size: usize = info.child("size").unwrap().text.parse().unwrap();
        let url = self.transfer_url(&info.child("url").unwrap().text);
        let resp = self.http.get(url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let bytes = resp.bytes().await.unwrap().to_vec();
        assert_eq!(bytes.len(), size);
        Ok(bytes)
    }
}
