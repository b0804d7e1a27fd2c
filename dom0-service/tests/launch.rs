//! `sdci-dom0 launch JOBFILE` with small fake `qvm-start` and `qvm-run` scripts that record what
//! they were given (full Qubes stand-ins live in the `tests` crate).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct Fakes {
    bin: PathBuf,
    rec: PathBuf,
}

/// Writes fake `qvm-start` and `qvm-run`. The agent's behaviour comes from `agent_script`
/// (sh, with the AgentJob JSON on its stdin).
fn fakes(root: &Path, start_exit: i32, probe_exit: i32, agent_script: &str) -> Fakes {
    let bin = root.join("bin");
    let rec = root.join("rec");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&rec).unwrap();
    let write = |name: &str, body: String| {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "qvm-start",
        format!(
            "#!/bin/sh\necho \"$@\" > {rec}/qvm-start.args\necho starting \"$2\"\nexit {start_exit}\n",
            rec = rec.display()
        ),
    );
    write(
        "qvm-run",
        format!(
            "#!/bin/sh\n\
             if [ \"$4\" = true ]; then echo probe >> {rec}/probes; exit {probe_exit}; fi\n\
             echo \"$@\" > {rec}/qvm-run.args\n\
             {agent_script}\n",
            rec = rec.display()
        ),
    );
    Fakes { bin, rec }
}

fn config(f: &Fakes, extra: &str) -> String {
    format!(
        "[launch]\nqvm_start = {:?}\nqvm_run = {:?}\n{extra}",
        f.bin.join("qvm-start"),
        f.bin.join("qvm-run")
    )
}

fn launch(d: &Dom0, id: &str) -> std::process::Output {
    let mut cmd = d.command();
    cmd.args(["launch", &format!(".sdci/jobs/{id}/job.json")]);
    d.call(cmd, b"")
}

fn log(d: &Dom0, id: &str) -> String {
    std::fs::read_to_string(d.job_dir(id).join("log.txt")).unwrap()
}

#[test]
fn launch_starts_the_dev_vm_and_pipes_the_agent_job_to_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("rec");
    let f = fakes(
        tmp.path(),
        0,
        0,
        &format!(
            "cat > {}/agent-stdin; echo hello from the agent; echo oops >&2; exit 0",
            rec.display()
        ),
    );
    let d = Dom0::with_config(&config(&f, ""));
    let job = d.job("launch-1", vec![sh("s", "true", 60)]);
    let out = launch(&d, "launch-1");
    assert_eq!(out.status.code(), Some(0), "{}", log(&d, "launch-1"));
    let read = |n: &str| std::fs::read_to_string(f.rec.join(n)).unwrap();
    assert_eq!(read("qvm-start.args").trim(), "--skip-if-running sd-dev");
    assert_eq!(
        read("qvm-run.args").trim(),
        "--pass-io --no-gui sd-dev sdci-agent run --job -"
    );
    assert_eq!(read("agent-stdin"), job.agent.to_json());
    assert_eq!(read("probes").lines().count(), 1);
    let text = log(&d, "launch-1");
    assert!(text.contains("[qvm-start] starting sd-dev"), "{text}");
    assert!(text.contains("[agent] hello from the agent"));
    assert!(text.contains("[agent] oops"));
    assert!(text.contains("result: success"));
    assert!(!text.contains("ghs_test_token") && !text.contains("per-job-secret"));
}

/// The code under test runs in dom0 with sudo: after `launch` handed the agent its part, dom0's
/// copy of the job file holds no token and no event secret, and still gives `sdci.Run` its steps.
#[test]
fn launch_removes_the_agents_secrets_from_dom0s_job_file_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("rec");
    // The agent stand-in copies dom0's job file as it is while the agent runs.
    let f = fakes(
        tmp.path(),
        0,
        0,
        &format!(
            "cat > {rec}/agent-stdin; cat \"$HOME/.sdci/jobs/secrets-1/job.json\" > {rec}/job-during; exit 0",
            rec = rec.display()
        ),
    );
    let d = Dom0::with_config(&config(&f, ""));
    let job = d.job("secrets-1", vec![sh("s", "true", 60)]);
    let out = launch(&d, "secrets-1");
    assert_eq!(out.status.code(), Some(0), "{}", log(&d, "secrets-1"));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(
        read(&rec.join("agent-stdin")),
        job.agent.to_json(),
        "the agent got its secrets"
    );
    let after = read(&d.job_dir("secrets-1").join("job.json"));
    for text in [after.as_str(), read(&rec.join("job-during")).as_str()] {
        assert!(
            !text.contains("ghs_test_token") && !text.contains("per-job-secret"),
            "{text}"
        );
    }
    let kept = sdci_protocol::JobFile::from_json(after.as_bytes()).unwrap();
    assert_eq!(kept.spec, job.spec, "dom0 keeps the job id and the steps");
    assert!(!d.job_dir("secrets-1").join(".job.json.new").exists());

    // A second launch of the same file has nothing to hand over: refused, the agent not run.
    std::fs::remove_file(rec.join("agent-stdin")).unwrap();
    let out = launch(&d, "secrets-1");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("handed over"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!rec.join("agent-stdin").exists());
}

#[test]
fn the_agents_exit_code_is_the_jobs_outcome() {
    for (agent, want) in [(1, 1), (2, 2), (126, 2), (137, 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let f = fakes(tmp.path(), 0, 0, &format!("cat >/dev/null; exit {agent}"));
        let d = Dom0::with_config(&config(&f, ""));
        d.job("exit-1", vec![sh("s", "true", 60)]);
        let out = launch(&d, "exit-1");
        assert_eq!(out.status.code(), Some(want), "agent exit {agent}");
        assert!(log(&d, "exit-1").contains(&format!("exited with status {agent}")));
    }
}

#[test]
fn a_failing_qvm_start_is_an_infrastructure_error_and_the_agent_never_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fakes(tmp.path(), 1, 0, "exit 0");
    let d = Dom0::with_config(&config(&f, ""));
    d.job("nostart-1", vec![sh("s", "true", 60)]);
    let out = launch(&d, "nostart-1");
    assert_eq!(out.status.code(), Some(2));
    assert!(log(&d, "nostart-1").contains("qvm-start sd-dev failed with exit status 1"));
    assert!(!f.rec.join("qvm-run.args").exists());
}

#[test]
fn a_dev_vm_that_never_answers_is_an_infrastructure_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fakes(tmp.path(), 0, 1, "exit 0");
    let d = Dom0::with_config(&config(&f, "ready_timeout_secs = 1\n"));
    d.job("noanswer-1", vec![sh("s", "true", 60)]);
    let out = launch(&d, "noanswer-1");
    assert_eq!(out.status.code(), Some(2));
    assert!(log(&d, "noanswer-1").contains("did not answer within 1 s"));
    assert!(!f.rec.join("qvm-run.args").exists());
}

#[test]
fn the_watchdog_kills_a_stuck_agent_at_the_jobs_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let pgid = tmp.path().join("pgid");
    let f = fakes(
        tmp.path(),
        0,
        0,
        &format!("echo $$ > {}; sleep 600 & sleep 600", pgid.display()),
    );
    let d = Dom0::with_config(&config(&f, ""));
    let mut job = job_file("stuck-1", vec![sh("s", "true", 60)]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    job.spec.deadline_unix = now + 5;
    std::fs::create_dir_all(d.job_dir("stuck-1")).unwrap();
    std::fs::write(d.job_dir("stuck-1").join("job.json"), job.to_json()).unwrap();
    let out = launch(&d, "stuck-1");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        log(&d, "stuck-1").contains("deadline passed while the agent ran"),
        "{}",
        log(&d, "stuck-1")
    );
    let pgid: i32 = std::fs::read_to_string(&pgid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!group_alive(pgid));
}

#[test]
fn a_job_file_outside_the_jobs_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fakes(tmp.path(), 0, 0, "exit 0");
    let d = Dom0::with_config(&config(&f, ""));
    let job = job_file("elsewhere-1", vec![sh("s", "true", 60)]);
    std::fs::write(d.home.join("job.json"), job.to_json()).unwrap();
    let mut cmd = d.command();
    cmd.args(["launch", "job.json"]);
    let out = d.call(cmd, b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the job file must be"));
    assert!(!f.rec.join("qvm-start.args").exists());
}

#[test]
fn an_invalid_job_file_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fakes(tmp.path(), 0, 0, "exit 0");
    let d = Dom0::with_config(&config(&f, ""));
    std::fs::create_dir_all(d.job_dir("bad-1")).unwrap();
    std::fs::write(d.job_dir("bad-1").join("job.json"), b"{\"version\":1}").unwrap();
    let out = launch(&d, "bad-1");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("job file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
