//! The Qubes stand-ins (`tests/qubes-sim/`) behave as the Qubes documentation and source say:
//! qrexec policy and service lookup, the service's environment and I/O, and the dom0 tools.
//!
//! The real `qubes-rpc/sdci.Run` and `qubes-rpc/30-sdci.policy` are used throughout. In place of
//! `sdci-dom0`, a tiny test service (a shell script) reports what it received, so the plumbing is
//! checked independently of the real binaries.
#![allow(clippy::unwrap_used)]

use sdci_tests::fixture::{Fixture, TestMode};
use sdci_tests::qubes_world::{QubesWorld, WorldSpec};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Stands in for sdci-dom0: the job argument selects what it does.
const TEST_SERVICE: &str = r#"#!/bin/sh
[ "$1" = run ] || { echo "expected 'run', got '$1'" >&2; exit 64; }
shift
[ "$1" = -- ] && shift
echo "test service started with $# argument(s)" >&2
case "${1-}" in
  env*) printf 'argc=%s\nargv1=%s\npwd=%s\n' "$#" "${1-}" "$(pwd)"; env | sort ;;
  echo*) cat ;;
  exit3*) echo "secret diagnostics" >&2; echo "out before exit"; exit 3 ;;
  late*) ( sleep 1; echo late ) & echo early ;;
  flood*) yes ;;
  view*) cat /home/user/who; echo "$HOME"; hostname; : > "/home/user/$1" ;;
  assert-dom0) exec make -s -C "$2" assert-dom0 ;;
  *) echo "unknown test mode '${1-}'" >&2; exit 65 ;;
esac
"#;

fn world() -> (tempfile::TempDir, QubesWorld) {
    let tmp = tempfile::tempdir().unwrap();
    let service = tmp.path().join("test-sdci-dom0");
    std::fs::write(&service, TEST_SERVICE).unwrap();
    std::fs::set_permissions(&service, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = tmp.path().join("test-sdci-agent");
    std::fs::write(&agent, "#!/bin/sh\necho test agent \"$@\"\n").unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = WorldSpec {
        dom0_binary: service,
        agent_binary: agent,
        ..WorldSpec::default()
    };
    let world = QubesWorld::create_with(&tmp.path().join("guest"), &spec).unwrap();
    (tmp, world)
}

fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// `qrexec-client-vm TARGET SERVICE` run in `qube` (started first), with `stdin`.
fn call_from(world: &QubesWorld, qube: &str, target: &str, service: &str, stdin: &[u8]) -> Output {
    world.set_running(qube, true).unwrap();
    let mut cmd = world.qube_command(qube, "qrexec-client-vm");
    cmd.args([target, service]);
    run(cmd, stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn env_of(out: &Output) -> Vec<(String, String)> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn assert_refused(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(126),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "Request refused\n");
    assert!(out.stdout.is_empty());
}

// ------------------------------------------------------------------------------------------
// the world itself
// ------------------------------------------------------------------------------------------

#[test]
fn world_installs_the_repository_qrexec_files_byte_identical_with_their_modes() {
    let (_tmp, world) = world();
    let rpc = sdci_tests::workspace_root().join("qubes-rpc");
    for (installed, source, mode) in [
        ("etc/qubes-rpc/sdci.Run", "sdci.Run", 0o755),
        ("etc/qubes/policy.d/30-sdci.policy", "30-sdci.policy", 0o644),
    ] {
        let path = world.root().join(installed);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(rpc.join(source)).unwrap()
        );
        let m = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, mode, "{installed}");
    }
}

#[test]
fn world_links_the_real_binaries_and_roots_dom0_config_inside_the_world() {
    let tmp = tempfile::tempdir().unwrap();
    let world = QubesWorld::create(&tmp.path().join("g")).unwrap();
    // dom0's entry is a wrapper that enters dom0's view of the VM it runs in (this world, or
    // a clone's copy of it: `SDCI_GUEST_ROOT`) and execs the real binary.
    let entry = std::fs::read_to_string(world.root().join("usr/local/bin/sdci-dom0")).unwrap();
    let bin = sdci_tests::binary("sdci-dom0");
    assert!(
        entry.contains(&format!("R='{}'\n", world.root().display()))
            && entry.contains("[ -z \"$SDCI_GUEST_ROOT\" ] || R=$SDCI_GUEST_ROOT")
            && entry.contains(&format!("in-qube \"$R\" dom0 '{}'", bin.display())),
        "{entry}"
    );
    let agent = world.qube_root("sd-dev").join("usr/local/bin/sdci-agent");
    assert_eq!(
        std::fs::read_link(agent).unwrap(),
        sdci_tests::binary("sdci-agent")
    );
    assert!(world
        .qube_root("sd-dev")
        .join("usr/bin/qrexec-client-vm")
        .is_file());
    let config = std::fs::read_to_string(world.dom0_home().join(".sdci/dom0.toml")).unwrap();
    // sdci-dom0 runs in dom0's view (the tests run as root): dom0's home is /home/user there.
    assert!(
        config.contains("jobs_dir = \"/home/user/.sdci/jobs\""),
        "{config}"
    );
    assert!(
        config.contains("checkout_dir = \"/home/user/securedrop-workstation\""),
        "{config}"
    );
    let jobs = world.dom0_home().join(".sdci/jobs");
    assert!(jobs.is_dir());
    // The tests run as root: dom0 is told so.
    assert!(config.contains("allow_root = true"), "{config}");
    // The agent in sd-dev spools inside the qube's tree, not under the machine's /var/tmp.
    let agent_config = world.qube_root("sd-dev").join("etc/sdci/agent.toml");
    let spool = world.qube_root("sd-dev").join("var/tmp/sdci-agent");
    let text = std::fs::read_to_string(&agent_config).unwrap();
    assert!(
        text.contains(&format!("spool_dir = {:?}", spool.to_string_lossy())),
        "{text}"
    );
    assert_eq!(
        world.state().unwrap()["qubes"]["sd-dev"]["env"]["SDCI_AGENT_CONFIG"],
        agent_config.to_string_lossy().as_ref()
    );
    assert_eq!(world.qube_state("sd-dev").unwrap(), "halted");
    // A world copied back from a snapshot opens again from its directory alone.
    let reopened = QubesWorld::open(world.root()).unwrap();
    assert_eq!(reopened.dev_vm(), "sd-dev");
    assert_eq!(reopened.dom0_user(), "user");
    assert_eq!(reopened.dom0_home(), world.dom0_home());
}

// ------------------------------------------------------------------------------------------
// views (contracts §6): each qube's processes see their own home on /home
// ------------------------------------------------------------------------------------------

/// The names in the machine's own `/home`, recursively.
fn machine_home() -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/home"), &mut out);
    out.sort();
    out
}

#[test]
fn a_process_in_sd_dev_and_one_in_dom0_see_different_home_user_and_the_machines_home_is_untouched()
{
    let (tmp, world) = world();
    let before = machine_home();
    std::fs::write(world.dom0_home().join("who"), "dom0\n").unwrap();
    std::fs::write(world.qube_home("sd-dev").join("who"), "sd-dev\n").unwrap();
    // Unique per test run, so a file of that name on the machine can only come from here.
    let mark = format!("view-{}", tmp.path().file_name().unwrap().to_string_lossy());

    // dom0: the host starts dom0's sdci-dom0 entry; a qrexec service runs in dom0 too.
    let mut entry = world.dom0_command("sdci-dom0");
    entry.args(["run", &mark]);
    let from_entry = run(entry, b"");
    assert_eq!(
        from_entry.status.code(),
        Some(0),
        "{}",
        text(&from_entry.stderr)
    );
    assert_eq!(text(&from_entry.stdout), "dom0\n/home/user\ndom0\n");
    let from_service = call_from(&world, "sd-dev", "dom0", &format!("sdci.Run+{mark}"), b"");
    assert_eq!(text(&from_service.stdout), "dom0\n/home/user\ndom0\n");

    // sd-dev, through qvm-run and as a test's qube command.
    let script = format!("cat /home/user/who; echo \"$HOME\"; hostname; : > /home/user/{mark}");
    let out = dom0(&world, &["qvm-run", "-p", "sd-dev", &script], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "sd-dev\n/home/user\nsd-dev\n");
    let mut cmd = world.qube_command("sd-dev", "cat");
    cmd.arg("/home/user/who");
    assert_eq!(text(&run(cmd, b"").stdout), "sd-dev\n");

    // What each wrote under /home/user landed in its own tree, nothing on the machine.
    assert!(world.dom0_home().join(&mark).is_file());
    assert!(world.qube_home("sd-dev").join(&mark).is_file());
    assert!(!Path::new("/home/user").join(&mark).exists());
    assert_eq!(machine_home(), before);
}

#[test]
fn dom0s_view_answers_hostname_dom0_so_the_fixtures_assert_dom0_passes_only_there() {
    let (tmp, world) = world();
    let fixture = Fixture::create(&tmp.path().join("fixture"), TestMode::Pass).unwrap();
    let dir = fixture.path.to_string_lossy().into_owned();
    let mut in_dom0 = world.dom0_command("sdci-dom0");
    in_dom0.args(["run", "assert-dom0", &dir]);
    let out = run(in_dom0, b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // The same Makefile on the machine (with dom0's environment) and in sd-dev refuses.
    let mut on_machine = world.dom0_command("make");
    on_machine.args(["-s", "-C", &dir, "assert-dom0"]);
    let out = run(on_machine, b"");
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("must run in dom0"));
    let out = dom0(
        &world,
        &[
            "qvm-run",
            "-p",
            "sd-dev",
            &format!("make -s -C {dir} assert-dom0"),
        ],
        b"",
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("must run in dom0"));
}

// ------------------------------------------------------------------------------------------
// qrexec: policy
// ------------------------------------------------------------------------------------------

#[test]
fn policy_allows_the_dev_vm_to_call_sdci_run_in_dom0() {
    let (_tmp, world) = world();
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", b"hello dom0");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello dom0");
    assert!(world.journal().contains("sd-dev -> dom0: allowed"));
}

#[test]
fn policy_allows_the_adminvm_keyword_as_target() {
    let (_tmp, world) = world();
    let out = call_from(&world, "sd-dev", "@adminvm", "sdci.Run+env", b"");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let env = env_of(&out);
    assert_eq!(
        get(&env, "QREXEC_REQUESTED_TARGET_TYPE").as_deref(),
        Some("keyword")
    );
    assert_eq!(
        get(&env, "QREXEC_REQUESTED_TARGET_KEYWORD").as_deref(),
        Some("adminvm")
    );
    assert_eq!(get(&env, "QREXEC_REQUESTED_TARGET"), None);
}

#[test]
fn other_qubes_calling_dom0_are_refused_with_126_by_the_explicit_deny_line() {
    let (_tmp, world) = world();
    // The deny line's target is `*`: `@anyvm` would not cover dom0, and the call would only be
    // refused for want of a matching rule (a later policy file could then allow it).
    let policy = world.root().join("etc/qubes/policy.d/30-sdci.policy");
    let text = std::fs::read_to_string(&policy).unwrap();
    let deny_line = 1 + text
        .lines()
        .position(|l| l.split_whitespace().nth(4) == Some("deny"))
        .expect("the policy has a deny line");
    for source in ["sys-net", "sd-app"] {
        let out = call_from(&world, source, "dom0", "sdci.Run+env", b"");
        assert_refused(&out);
        let want = format!(
            "{source} -> dom0: denied: denied by policy {}:{deny_line}",
            policy.display()
        );
        assert!(world.journal().contains(&want), "{}", world.journal());
    }
    assert!(!world.journal().contains("test service started"));
}

#[test]
fn policy_refuses_calls_to_targets_other_than_dom0_even_from_the_dev_vm() {
    let (_tmp, world) = world();
    for target in ["sys-net", "sd-dev", "@default", "$default", "no-such-qube"] {
        let out = call_from(&world, "sd-dev", target, "sdci.Run+env", b"");
        assert_refused(&out);
    }
}

#[test]
fn renamed_dev_vm_is_refused_with_126() {
    let (_tmp, mut world) = world();
    world.rename_qube("sd-dev", "sd-dev-renamed").unwrap();
    let out = call_from(&world, "sd-dev-renamed", "dom0", "sdci.Run+env", b"");
    assert_refused(&out);
}

#[test]
fn a_policy_syntax_error_in_any_file_refuses_every_call() {
    let (_tmp, world) = world();
    let bad = world.root().join("etc/qubes/policy.d/50-broken.policy");
    std::fs::write(&bad, "sdci.Run * sd-dev dom0 allow,notify=yes\n").unwrap();
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+env", b"");
    assert_refused(&out);
    std::fs::remove_file(&bad).unwrap();
    // An invalid file name (upper case) that is not ignored denies everything too.
    std::fs::write(
        world.root().join("etc/qubes/policy.d/40-Sdci.policy"),
        "# empty\n",
    )
    .unwrap();
    assert_refused(&call_from(&world, "sd-dev", "dom0", "sdci.Run+env", b""));
}

#[test]
fn an_earlier_policy_file_wins_over_ours_and_ignored_files_do_not_count() {
    let (_tmp, world) = world();
    let dir = world.root().join("etc/qubes/policy.d");
    std::fs::write(dir.join(".hidden.policy"), "garbage\n").unwrap();
    std::fs::write(dir.join("README"), "garbage\n").unwrap();
    assert_eq!(
        call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", b"x")
            .status
            .code(),
        Some(0)
    );
    std::fs::write(
        dir.join("20-site.policy"),
        "sdci.Run  +echo  sd-dev  @adminvm  deny notify=no\n",
    )
    .unwrap();
    assert_refused(&call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", b"x"));
    // A different argument is not matched by that line and falls through to ours.
    assert_eq!(
        call_from(&world, "sd-dev", "dom0", "sdci.Run+echo2", b"x")
            .status
            .code(),
        Some(0)
    );
}

// ------------------------------------------------------------------------------------------
// qrexec: the service process
// ------------------------------------------------------------------------------------------

#[test]
fn service_gets_the_environment_and_argument_dom0s_qrexec_gives() {
    let (_tmp, world) = world();
    let mut cmd = world.qube_command("sd-dev", "qrexec-client-vm");
    world.set_running("sd-dev", true).unwrap();
    cmd.args(["dom0", "sdci.Run+env-job-7"])
        .env("CALLER_SECRET", "must-not-cross");
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let env = env_of(&out);
    let want = [
        ("argc", "1"),
        ("argv1", "env-job-7"),
        ("QREXEC_REMOTE_DOMAIN", "sd-dev"),
        ("QREXEC_SERVICE_FULL_NAME", "sdci.Run+env-job-7"),
        ("QREXEC_SERVICE_ARGUMENT", "env-job-7"),
        ("QREXEC_REQUESTED_TARGET_TYPE", "name"),
        ("QREXEC_REQUESTED_TARGET", "dom0"),
        ("SDCI_QUBE", "dom0"),
    ];
    for (k, v) in want {
        assert_eq!(get(&env, k).as_deref(), Some(v), "{k}");
    }
    // dom0's view (contracts §6): its home tree is /home.
    assert_eq!(get(&env, "HOME").as_deref(), Some("/home/user"));
    assert_eq!(
        get(&env, "pwd"),
        Some(world.root().to_string_lossy().into())
    );
    assert_eq!(
        get(&env, "CALLER_SECRET"),
        None,
        "the caller's environment leaked"
    );
}

#[test]
fn service_without_argument_is_looked_up_and_gets_an_empty_argument() {
    let (_tmp, world) = world();
    // No argument: 4.2 passes no argv[1] and exports an empty QREXEC_SERVICE_ARGUMENT; the
    // test service then reports an unknown mode and exits 65, which the caller receives.
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run", b"");
    assert_eq!(out.status.code(), Some(65));
    assert!(world.journal().contains("unknown test mode ''"));
}

#[test]
fn stdin_and_stdout_are_piped_through_byte_exact() {
    let (_tmp, world) = world();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", &data);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == data, "the data came back changed");
}

#[test]
fn service_exit_code_comes_back_and_its_stderr_stays_in_dom0() {
    let (_tmp, world) = world();
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+exit3", b"");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "out before exit\n");
    assert!(
        out.stderr.is_empty(),
        "stderr reached the caller: {}",
        text(&out.stderr)
    );
    assert!(world.journal().contains("secret diagnostics"));
}

#[test]
fn call_ends_only_when_every_holder_of_the_service_stdout_closed_it() {
    let (_tmp, world) = world();
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+late", b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "early\nlate\n");
}

#[test]
fn a_caller_that_goes_away_leaves_the_service_with_a_broken_pipe() {
    let (_tmp, world) = world();
    world.set_running("sd-dev", true).unwrap();
    let mut cmd = world.qube_command("sd-dev", "qrexec-client-vm");
    cmd.args(["dom0", "sdci.Run+flood"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut first = [0u8; 4];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"y\ny\n");
    drop(child.stdout.take());
    // `yes` in dom0 dies of SIGPIPE once the call is torn down; its code comes back as 128+13.
    assert_eq!(child.wait().unwrap().code(), Some(141));
}

#[test]
fn a_local_program_talks_to_the_service_and_its_exit_code_is_returned() {
    let (_tmp, world) = world();
    world.set_running("sd-dev", true).unwrap();
    let mut cmd = world.qube_command("sd-dev", "qrexec-client-vm");
    cmd.args([
        "dom0",
        "sdci.Run+echo",
        "/bin/sh",
        "-c",
        "echo ping; exec >&-; read line; echo \"got $line\" >&2; exit 5",
    ]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(text(&out.stderr), "got ping\n");
}

#[test]
fn argument_specific_and_usr_local_service_files_win_as_in_the_multiplexer() {
    let (_tmp, world) = world();
    let specific = world.root().join("etc/qubes-rpc/sdci.Run+echo");
    std::fs::write(&specific, "#!/bin/sh\necho specific\n").unwrap();
    std::fs::set_permissions(&specific, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", b"");
    assert_eq!(text(&out.stdout), "specific\n");
    // An empty file does not count.
    std::fs::write(&specific, "").unwrap();
    assert_eq!(
        text(&call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", b"x").stdout),
        "x"
    );
    let local = world.root().join("usr/local/etc/qubes-rpc");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("sdci.Run"), "#!/bin/sh\necho usr-local\n").unwrap();
    std::fs::set_permissions(
        local.join("sdci.Run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert_eq!(
        text(&call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", b"").stdout),
        "usr-local\n"
    );
}

#[test]
fn missing_service_file_gives_127() {
    let (_tmp, world) = world();
    std::fs::remove_file(world.root().join("etc/qubes-rpc/sdci.Run")).unwrap();
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", b"");
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn bytes_outside_the_qrexec_charset_are_replaced_before_policy_and_service() {
    let (_tmp, world) = world();
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+env/../x y", b"");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let env = env_of(&out);
    assert_eq!(
        get(&env, "QREXEC_SERVICE_ARGUMENT").as_deref(),
        Some("env_.._x_y")
    );
    // A descriptor starting with `+` (no service name) is refused by qrexec-daemon (4.2).
    assert_refused(&call_from(&world, "sd-dev", "dom0", "+env", b""));
}

#[test]
fn qrexec_client_vm_refuses_to_run_in_dom0() {
    let (_tmp, world) = world();
    let qrexec = world.qube_root("sd-dev").join("usr/bin/qrexec-client-vm");
    let mut cmd = world.dom0_command(&qrexec.to_string_lossy());
    cmd.args(["dom0", "sdci.Run+env"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(125));
}

// ------------------------------------------------------------------------------------------
// dom0 tools
// ------------------------------------------------------------------------------------------

fn dom0(world: &QubesWorld, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = world.dom0_command(args[0]);
    cmd.args(&args[1..]);
    run(cmd, stdin)
}

#[test]
fn qvm_run_shell_string_runs_in_the_qubes_home_with_its_environment() {
    let (_tmp, world) = world();
    let out = dom0(
        &world,
        &[
            "qvm-run",
            "--pass-io",
            "--no-gui",
            "sd-dev",
            "pwd; echo \"$HOME|$SDCI_QUBE|$SDCI_GUEST_ROOT\"; command -v sdci-agent; sdci-agent run; cat",
        ],
        b"from stdin\n",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    // The qube's view (contracts §6): its home tree is /home.
    let agent = world.qube_root("sd-dev").join("usr/local/bin/sdci-agent");
    assert_eq!(
        text(&out.stdout),
        format!(
            "/home/user\n/home/user|sd-dev|{r}\n{a}\ntest agent run\nfrom stdin\n",
            r = world.root().display(),
            a = agent.display()
        )
    );
    // The halted qube was started on the way (qvm-run's default autostart).
    assert_eq!(world.qube_state("sd-dev").unwrap(), "running");
}

#[test]
fn qvm_run_argv_form_execs_without_a_shell() {
    let (_tmp, world) = world();
    let out = dom0(
        &world,
        &["qvm-run", "-p", "sd-dev", "printf", "%s|", "$HOME", "a b"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "$HOME|a b|");
}

#[test]
fn qvm_run_without_pass_io_discards_output_and_returns_the_exit_code() {
    let (_tmp, world) = world();
    let out = dom0(
        &world,
        &["qvm-run", "sd-dev", "echo hidden; echo err >&2; exit 4"],
        b"",
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn qvm_run_no_autostart_fails_on_a_halted_qube_and_unknown_qubes_are_errors() {
    let (_tmp, world) = world();
    let out = dom0(
        &world,
        &["qvm-run", "--no-autostart", "-p", "sd-dev", "true"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(world.qube_state("sd-dev").unwrap(), "halted");
    let out = dom0(&world, &["qvm-run", "-p", "nope", "true"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no such domain: 'nope'"));
}

#[test]
fn qvm_run_through_to_the_service_carries_the_agents_call() {
    let (_tmp, world) = world();
    let out = dom0(
        &world,
        &[
            "qvm-run",
            "--pass-io",
            "--no-gui",
            "sd-dev",
            "qrexec-client-vm dom0 sdci.Run+echo",
        ],
        b"through two hops",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "through two hops");
}

#[test]
fn qvm_start_skip_if_running_and_injected_start_failure() {
    let (_tmp, world) = world();
    assert_eq!(
        dom0(&world, &["qvm-start", "sd-dev"], b"").status.code(),
        Some(0)
    );
    assert_eq!(world.qube_state("sd-dev").unwrap(), "running");
    assert_eq!(
        dom0(&world, &["qvm-start", "sd-dev"], b"").status.code(),
        Some(1)
    );
    let out = dom0(&world, &["qvm-start", "--skip-if-running", "sd-dev"], b"");
    assert_eq!(out.status.code(), Some(0));
    world
        .update_state(|s| s["qubes"]["sd-log"]["start_fails"] = true.into())
        .unwrap();
    let out = dom0(&world, &["qvm-start", "sd-log"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(world.qube_state("sd-log").unwrap(), "halted");
}

#[test]
fn qvm_check_reports_existence_and_running() {
    let (_tmp, world) = world();
    let code = |args: &[&str]| dom0(&world, args, b"").status.code();
    assert_eq!(code(&["qvm-check", "--quiet", "sd-dev"]), Some(0));
    assert_eq!(code(&["qvm-check", "--running", "sd-dev"]), Some(1));
    assert_eq!(code(&["qvm-check", "--running", "sys-net"]), Some(0));
    assert_eq!(code(&["qvm-check", "-q", "missing"]), Some(2));
}

#[test]
fn tagged_running_qubes_are_listed_and_shut_down_the_way_the_steps_do() {
    let (_tmp, world) = world();
    // What the steps list before shutting SDW's qubes down.
    let running_tagged = || {
        let out = dom0(
            &world,
            &[
                "qvm-ls",
                "--running",
                "--raw-list",
                "--tags",
                "sd-workstation",
            ],
            b"",
        );
        text(&out.stdout)
    };
    world.set_running("sd-app", true).unwrap();
    assert_eq!(running_tagged(), "sd-app\n");
    world.set_running("sd-log", true).unwrap();
    assert_eq!(running_tagged(), "sd-app\nsd-log\n");
    let out = dom0(
        &world,
        &[
            "qvm-shutdown",
            "--wait",
            "--force",
            "--timeout",
            "60",
            "sd-app",
            "sd-log",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(world.qube_state("sd-app").unwrap(), "halted");
    assert_eq!(world.qube_state("sd-log").unwrap(), "halted");
    assert!(running_tagged().is_empty());
    assert!(world.state().unwrap()["qubes"]["sys-net"]["state"] == "running");
}

#[test]
fn qvm_shutdown_stops_what_runs_in_the_qube() {
    let (_tmp, world) = world();
    let mut long = world.dom0_command("qvm-run");
    long.args(["-p", "sd-dev", "echo started; exec sleep 600"])
        .stdout(Stdio::piped());
    let mut child = long.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "started\n");
    let out = dom0(&world, &["qvm-shutdown", "--wait", "sd-dev"], b"");
    assert_eq!(out.status.code(), Some(0));
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "qvm-run ends when its qube stops"
    );
}

#[test]
fn sudo_passes_through_and_tools_are_recorded_with_their_arguments() {
    let (_tmp, world) = world();
    let out = dom0(&world, &["sudo", "-n", "qvm-sync-clock"], b"");
    assert_eq!(out.status.code(), Some(0));
    let out = dom0(
        &world,
        &["sudo", "qubes-dom0-update", "-y", "python3-pytest", "make"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    let out = dom0(
        &world,
        &[
            "sudo",
            "qubes-vm-update",
            "--show-output",
            "--targets",
            "sys-net",
            "--force-update",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    let out = dom0(
        &world,
        &[
            "qubesctl",
            "--show-output",
            "state.sls",
            "update.qubes-dom0",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    let calls: Vec<(String, Vec<String>)> = world
        .calls()
        .unwrap()
        .into_iter()
        .map(|c| (c.tool, c.args))
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        calls,
        vec![
            ("sudo".into(), s(&["-n", "qvm-sync-clock"])),
            ("qvm-sync-clock".into(), vec![]),
            (
                "sudo".into(),
                s(&["qubes-dom0-update", "-y", "python3-pytest", "make"])
            ),
            (
                "qubes-dom0-update".into(),
                s(&["-y", "python3-pytest", "make"])
            ),
            (
                "sudo".into(),
                s(&[
                    "qubes-vm-update",
                    "--show-output",
                    "--targets",
                    "sys-net",
                    "--force-update"
                ])
            ),
            (
                "qubes-vm-update".into(),
                s(&["--show-output", "--targets", "sys-net", "--force-update"])
            ),
            (
                "qubesctl".into(),
                s(&["--show-output", "state.sls", "update.qubes-dom0"])
            ),
        ]
    );
    assert_eq!(
        world.state().unwrap()["dom0_packages"],
        serde_json::json!(["python3-pytest", "make"])
    );
}

#[test]
fn an_injected_tool_failure_is_returned_to_the_caller() {
    let (_tmp, world) = world();
    world.fail_tool("qubes-dom0-update", 1).unwrap();
    let out = dom0(&world, &["sudo", "qubes-dom0-update", "-y", "make"], b"");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn policy_lint_accepts_the_repository_policy_and_names_the_line_of_an_error() {
    let (tmp, world) = world();
    let policy = sdci_tests::workspace_root().join("qubes-rpc/30-sdci.policy");
    let out = dom0(
        &world,
        &["qubes-policy-lint", &policy.to_string_lossy()],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let bad = tmp.path().join("bad.policy");
    std::fs::write(&bad, "# ok\nsdci.Run * @anyvm @default allow\n").unwrap();
    let out = dom0(&world, &["qubes-policy-lint", &bad.to_string_lossy()], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).starts_with(&format!("{}:2: error:", bad.display())));
}

#[test]
fn stand_ins_refuse_to_run_outside_a_world() {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("qubes-sim/qubes_sim.py");
    let out = Command::new("python3")
        .arg(tool)
        .args(["qvm-ls", "--raw-list"])
        .env_remove("SDCI_GUEST_ROOT")
        .env_remove("SDCI_QUBES_DOM0_ROOT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("only run inside a simulated world"));
}

// ------------------------------------------------------------------------------------------
// dom0's logs (contracts §11 collects them when a job fails)
// ------------------------------------------------------------------------------------------

#[test]
fn dom0_has_a_journal_console_logs_and_qubes_logs_as_a_real_dom0_has() {
    let (_tmp, world) = world();
    let r = world.root();
    // A qrexec call leaves its policy decision in dom0's journal.
    let out = call_from(&world, "sd-dev", "dom0", "sdci.Run+echo", b"x");
    assert_eq!(out.status.code(), Some(0));
    let out = dom0(&world, &["journalctl", "-b", "--no-pager"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let journal = text(&out.stdout);
    assert!(journal.starts_with("-- Boot "), "{journal}");
    assert!(journal.contains(" dom0 kernel: Linux version"), "{journal}");
    assert!(
        journal
            .lines()
            .any(|l| l.contains(" dom0 ") && l.contains("sd-dev -> dom0: allowed")),
        "{journal}"
    );
    let out = dom0(&world, &["journalctl", "--since", "today"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not implemented by the qubes-sim stand-in"));

    // The running qubes booted: their consoles and daemons' logs are there; halted ones have none.
    let console =
        |q: &str| std::fs::read_to_string(r.join(format!("var/log/xen/console/guest-{q}.log")));
    assert!(console("sys-net").unwrap().contains("sys-net login:"));
    assert!(console("sys-firewall").is_ok());
    assert!(console("sd-dev").is_err());
    assert!(r.join("var/log/qubes/qrexec.sys-net.log").is_file());
    assert!(
        std::fs::read_to_string(r.join("var/log/qubes/mgmt-sys-net.log"))
            .unwrap()
            .contains("Succeeded")
    );

    // qvm-start boots a qube: its console log appears, qubesd notes it; qvm-shutdown too.
    assert_eq!(
        dom0(&world, &["qvm-start", "--skip-if-running", "sd-dev"], b"")
            .status
            .code(),
        Some(0)
    );
    assert!(console("sd-dev").unwrap().contains("sd-dev login:"));
    let qubes_log = || std::fs::read_to_string(r.join("var/log/qubes/qubes.log")).unwrap();
    assert!(
        qubes_log().contains("vm.sd-dev: Starting sd-dev"),
        "{}",
        qubes_log()
    );
    assert_eq!(
        dom0(
            &world,
            &["qvm-shutdown", "--wait", "--timeout", "60", "sd-dev"],
            b""
        )
        .status
        .code(),
        Some(0)
    );
    assert!(console("sd-dev").unwrap().contains("Power down"));
    assert!(qubes_log().contains("vm.sd-dev: Shutting down sd-dev"));
    assert!(console("60").is_err(), "an option's value is no qube");

    // qvm-ls --all lists every qube with its state.
    let out = dom0(&world, &["qvm-ls", "--all"], b"");
    let ls = text(&out.stdout);
    assert!(ls.starts_with("NAME") && ls.contains("STATE"), "{ls}");
    assert!(
        ls.lines()
            .any(|l| l.starts_with("sd-dev") && l.contains("Halted")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("sys-net") && l.contains("Running")),
        "{ls}"
    );

    // sdci-dom0 reads dom0's logs in the world.
    let config = std::fs::read_to_string(world.dom0_home().join(".sdci/dom0.toml")).unwrap();
    assert!(
        config.contains(&format!(
            "[results]\nevidence_root = {:?}",
            r.to_string_lossy()
        )),
        "{config}"
    );
}

/// The fixture's tree as `sdci-agent` sends it: `git archive | zstd`.
fn fixture_archive(fixture: &Fixture) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("git archive --format=tar HEAD | zstd -q -c")
        .current_dir(&fixture.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    out.stdout
}

/// dom0's job file for job `id` running `script` in the checkout.
fn write_job(world: &QubesWorld, id: &str, script: &str) {
    use sdci_protocol::job::{AgentJob, JobFile, JobSpec, Reason, Secret, Step};
    let sha: sdci_protocol::CommitSha = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
    let repo: sdci_protocol::RepoName = "freedomofpress/securedrop-workstation".parse().unwrap();
    let job: sdci_protocol::JobId = id.parse().unwrap();
    let dev_dir = "/home/user/securedrop-workstation".to_string();
    let file = JobFile {
        version: sdci_protocol::JOB_FILE_VERSION,
        spec: JobSpec {
            id: job.clone(),
            repo: repo.clone(),
            sha: sha.clone(),
            branch: None,
            reason: Reason::Manual,
            qubes_version: "4.2".into(),
            dev_vm: "sd-dev".into(),
            dev_dir: dev_dir.clone(),
            steps: vec![Step::new("make-test", &["sh", "-c", script], 120).with_env("CI", "true")],
            deadline_unix: 4_000_000_000,
            results: None,
        },
        agent: AgentJob {
            version: sdci_protocol::JOB_FILE_VERSION,
            id: job,
            repo,
            sha,
            dev_dir,
            clone_url: "/nonexistent".into(),
            github_api: "http://127.0.0.1:1".into(),
            token: None,
            status_context: "sd-ci-runner".into(),
            target_url: "http://127.0.0.1:1/jobs/x".into(),
            event_url: "http://127.0.0.1:1/api/v1/jobs/x/events".into(),
            event_secret: Secret::new("s"),
            post_final_status: false,
            post_running_status: false,
        },
    };
    let dir = world.dom0_home().join(".sdci/jobs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("job.json"), file.to_json()).unwrap();
}

/// `results.tar.zst` unpacked with the stock tools, as an operator would: member → bytes.
fn unpack_results(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let out_dir = path.with_extension("unpacked");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("zstd -q -dc \"$1\" | tar -x -C \"$2\"")
        .arg("sh")
        .arg(path)
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut members = std::collections::BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(&out_dir, &out_dir, &mut members);
    members
}

#[test]
fn a_failing_fixture_job_leaves_results_with_its_junit_file_the_journal_and_the_console_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let world = QubesWorld::create(&tmp.path().join("guest")).unwrap();
    let fixture = Fixture::create(&tmp.path().join("fixture"), TestMode::Fail).unwrap();
    write_job(
        &world,
        "results-1",
        "cp files/config.json.example config.json && cp sd-journalist.sec.example \
         sd-journalist.sec && make test",
    );
    let started = std::time::Instant::now();
    let out = call_from(
        &world,
        "sd-dev",
        "dom0",
        "sdci.Run+results-1",
        &fixture_archive(&fixture),
    );
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let job_dir = world.dom0_home().join(".sdci/jobs/results-1");
    let log = std::fs::read_to_string(job_dir.join("log.txt")).unwrap();
    assert!(log.contains("result: failure"), "{log}");
    let results = job_dir.join("results.tar.zst");
    let bytes = std::fs::metadata(&results)
        .unwrap_or_else(|e| panic!("{e}\n{log}"))
        .len();
    let members = unpack_results(&results);
    let manifest = sdci_protocol::ResultsManifest::from_json(&members["manifest.json"]).unwrap();
    assert_eq!(manifest.outcome, sdci_protocol::Outcome::Failure);
    let junit = String::from_utf8_lossy(&members["junit/1.xml"]).into_owned();
    assert!(
        junit.contains("failures=\"1\"") && junit.contains("errors=\"1\""),
        "{junit}"
    );
    assert!(junit.contains(
        "name=\"test_sd_vm_apt_sources\" file=\"tests/test_vms_platform.py\" line=\"41\""
    ));
    assert!(junit.contains("<skipped type=\"pytest.skip\""), "{junit}");
    assert!(
        junit.contains("hostname=\"dom0\""),
        "written in dom0's view"
    );
    let journal = String::from_utf8_lossy(&members["evidence/journal.txt"]).into_owned();
    assert!(journal.contains("sd-dev -> dom0: allowed"), "{journal}");
    assert!(
        String::from_utf8_lossy(&members["evidence/xen-console/guest-sys-net.log"])
            .contains("sys-net login:")
    );
    assert!(members.contains_key("evidence/qubes/qubes.log"));
    assert!(members.contains_key("evidence/qubes/mgmt-sys-firewall.log"));
    assert!(String::from_utf8_lossy(&members["evidence/qvm-ls.txt"]).contains("sd-dev"));
    assert!(manifest.entries.iter().all(|e| e.bytes <= 8 << 20));
    assert!(bytes <= 64 << 20);
    let line = log
        .lines()
        .find(|l| l.contains("dom0: results: "))
        .unwrap()
        .to_string();
    eprintln!(
        "figures: the fixture's failing job in the Qubes world: results.tar.zst {bytes} bytes, \
         {} members, collection {} ms, whole sdci.Run call {secs:.2} s; {line}",
        manifest.entries.len(),
        manifest.took_ms
    );
}

// ------------------------------------------------------------------------------------------
// the fixture's make test: its JUnit file and its flaky test
// ------------------------------------------------------------------------------------------

/// The fixture's tree at HEAD checked out in `dir` with the copies `make test` needs.
fn checkout(fixture: &Fixture, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "git archive --format=tar HEAD | tar -x -C \"$1\" && cd \"$1\" && \
              cp files/config.json.example config.json && \
              cp sd-journalist.sec.example sd-journalist.sec",
        )
        .arg("sh")
        .arg(dir)
        .current_dir(&fixture.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `make test` in `dir` (HOME there too): its exit code and the JUnit file it wrote.
fn make_test(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new("make")
        .args(["-s", "test"])
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .unwrap();
    let junit = std::fs::read_to_string(dir.join("test-data.xml")).unwrap_or_default();
    let _ = std::fs::remove_file(dir.join("test-data.xml"));
    (out.status.code(), junit)
}

#[test]
fn the_fixtures_make_test_writes_junit_with_pass_fail_error_and_skipped_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::create(&tmp.path().join("fixture"), TestMode::Pass).unwrap();
    let pass = tmp.path().join("pass");
    checkout(&fixture, &pass);
    let (code, junit) = make_test(&pass);
    assert_eq!(code, Some(0));
    assert!(
        junit.contains("failures=\"0\" skipped=\"1\" tests=\"5\""),
        "{junit}"
    );
    assert!(!junit.contains("<failure") && !junit.contains("<error"));
    for (_, name, file_line, _) in sdci_tests::fixture::JUNIT_CASES {
        assert!(junit.contains(&format!("name=\"{name}\"")), "{name}");
        if let Some((file, line)) = file_line {
            assert!(junit.contains(&format!("name=\"{name}\" file=\"{file}\" line=\"{line}\"")));
        }
    }
    fixture.commit_mode(TestMode::Fail, "fail").unwrap();
    let fail = tmp.path().join("fail");
    checkout(&fixture, &fail);
    let (code, junit) = make_test(&fail);
    assert_eq!(code, Some(2), "make's status for a failed recipe");
    assert!(
        junit.contains("errors=\"1\" failures=\"1\" skipped=\"1\""),
        "{junit}"
    );
    assert!(junit.contains("<failure message=\"AssertionError"));
    assert!(junit.contains("<error message=\"failed on setup"));
    // Hostile JUnit input for the host's parser goes through verbatim.
    let hostile = b"<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaa\">]><x>&a;\xff</x>";
    fixture
        .commit_junit(hostile, TestMode::Fail, "hostile junit")
        .unwrap();
    let raw = tmp.path().join("raw");
    checkout(&fixture, &raw);
    let out = Command::new("make")
        .args(["-s", "test"])
        .current_dir(&raw)
        .env("HOME", &raw)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(raw.join("test-data.xml")).unwrap(), hostile);
}

#[test]
fn the_fixtures_flaky_test_fails_on_a_commits_first_run_and_passes_on_its_re_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::create(&tmp.path().join("fixture"), TestMode::Pass).unwrap();
    let marks = tmp.path().join("flaky-marks");
    fixture.commit_flaky(&marks, "flaky").unwrap();
    // Each run gets a fresh checkout (a reverted VM): only the marks outside it remember.
    let run = |n: &str| {
        let dir = tmp.path().join(n);
        checkout(&fixture, &dir);
        make_test(&dir)
    };
    let (code, junit) = run("first");
    assert_eq!(code, Some(2), "make's status for a failed recipe");
    assert!(
        junit.contains(&format!("name=\"{}\"", sdci_tests::fixture::FLAKY_TEST))
            && junit.contains("failures=\"1\"")
            && junit.contains("errors=\"0\""),
        "only the flaky case fails: {junit}"
    );
    let (code, junit) = run("re-run");
    assert_eq!(code, Some(0));
    assert!(junit.contains("failures=\"0\""), "{junit}");
    assert_eq!(run("third").0, Some(0));
    // A new commit is a new first run.
    fixture.commit_flaky(&marks, "flaky again").unwrap();
    assert_eq!(run("new-commit").0, Some(2));
}
