//! `sdci-dom0 rerun JOBFILE`: a stage re-run (issue 18, contracts §12). The host reverted the
//! VM to an earlier job's provisioned snapshot, so the tree that job received is already at
//! `checkout_dir` and its qubes are provisioned; this runs only the steps of dom0's own new job
//! file (the `test` stage) on that tree. No agent, no fetch, no archive: nothing from the dev VM
//! is read at all.
//!
//! Order: the job file is `<jobs_dir>/<id>/job.json` (as for `launch`) → its secrets leave the
//! disk (nobody needs them: no agent runs) → the run-once marker (so a later `sdci.Run+<id>`
//! from the dev VM is refused: no tree can be pushed into a re-run) → stdout becomes
//! `<job dir>/events.ndjson`, the events the host reads after the end (no agent relays them) →
//! the origin job's processes, which a memory snapshot brought back, are ended → the checkout
//! must exist → the steps, as `sdci.Run` runs them (same environment, deadline and timeouts) →
//! the results file (contracts §11) → the exit code is the outcome (0/1/2).
//!
//! Ending the origin's processes: every process whose environment carries another job's
//! `SDCI_JOB_ID` (its steps) or an `sdci.Run+` qrexec service name (its service), or whose
//! command line is `sdci-dom0 launch` of another job file, and that shares this process's
//! `SDCI_GUEST_ROOT` (unset in a real dom0; the simulator's guests share one machine), is sent
//! SIGKILL. Processes of other users (root's, under `sudo`) cannot be signalled and are listed
//! in the log; in a real dom0 they die with their parents' process groups.

use crate::config::Config;
use crate::job::{read_own_job_file, replace_job_file, JobPaths};
use crate::log::JobLog;
use crate::steps;
use sdci_protocol::Outcome;
use std::path::Path;

/// The events file next to `log.txt`.
pub const EVENTS_FILE: &str = "events.ndjson";

/// Runs `rerun`; returns the process exit code.
pub fn rerun(jobfile: &Path) -> i32 {
    steps::become_subreaper();
    let config = match Config::load_from_env() {
        Ok(c) => c,
        Err(e) => return fail_early(&e.to_string()),
    };
    let (job, paths) = match read_own_job_file(&config.jobs_dir, jobfile) {
        Ok(j) => j,
        Err(e) => return fail_early(&e.to_string()),
    };
    if job.has_agent_secrets() {
        if let Err(e) = replace_job_file(&paths.job_file(), &job.without_secrets()) {
            return fail_early(&format!("cannot remove the secrets from the job file: {e}"));
        }
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(paths.started_marker())
    {
        return fail_early(&format!(
            "job {} ran before ({}: {e}); a job runs once",
            job.spec.id,
            paths.started_marker().display()
        ));
    }
    if let Err(e) = events_to_file(&paths.dir.join(EVENTS_FILE)) {
        return fail_early(&format!("cannot write {EVENTS_FILE}: {e}"));
    }
    let mut log = match JobLog::open(&paths.log(), true) {
        Ok(l) => l,
        Err(e) => return fail_early(&e.to_string()),
    };
    let (outcome, reason) = drive(&config, &paths, &job, &mut log);
    log.result(outcome, &reason);
    outcome.exit_code()
}

fn drive(
    config: &Config,
    paths: &JobPaths,
    job: &sdci_protocol::JobFile,
    log: &mut JobLog,
) -> (Outcome, String) {
    let spec = &job.spec;
    let (ended, untouchable) = end_other_jobs(spec.id.as_str());
    log.note(&format!(
        "re-run {} for {}@{}: {} step(s) on the tree already in dom0; ended {ended} process(es) \
         of the snapshot's job{}",
        spec.id,
        spec.repo,
        spec.sha.short(),
        spec.steps.len(),
        if untouchable.is_empty() {
            String::new()
        } else {
            format!(" (not ours to end: pids {untouchable:?})")
        }
    ));
    if !config.checkout_dir.is_dir() {
        return (
            Outcome::Error,
            format!(
                "no tree at {}: the VM was not reverted to a provisioned snapshot",
                config.checkout_dir.display()
            ),
        );
    }
    log.note(&format!(
        "the tree is the snapshot's, at {} (no fetch, no unpack)",
        config.checkout_dir.display()
    ));
    let result = crate::service::run_steps(config, job, log);
    let outcome = match &result {
        Ok((o, _)) => *o,
        Err(_) => Outcome::Error,
    };
    let env = crate::service::base_env(job);
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let collect = crate::results::Job {
        id: &spec.id,
        spec: spec.results_spec(),
        outcome,
        deadline_unix: spec.deadline_unix,
        checkout: &config.checkout_dir,
        job_dir: &paths.dir,
        env: &env,
        home: home.as_deref(),
        kill_grace: config.kill_grace,
    };
    crate::results::collect_and_log(&config.results, &collect, log);
    match result {
        Ok(r) => r,
        Err(e) => (Outcome::Error, e.to_string()),
    }
}

/// Points stdout (where `JobLog` writes events) at a fresh `path`.
fn events_to_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    nix::unistd::dup2_stdout(&f).map_err(std::io::Error::from)?;
    Ok(())
}

/// Ends the processes of other jobs in this guest (see the module doc): (how many were sent
/// SIGKILL, the pids that could not be).
pub fn end_other_jobs(own_id: &str) -> (usize, Vec<i32>) {
    let me = std::process::id() as i32;
    let my_root = std::env::var("SDCI_GUEST_ROOT").ok();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, Vec::new());
    };
    let (mut ended, mut refused) = (0, Vec::new());
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let var = |k: &str| {
            vars.iter()
                .find_map(|v| v.strip_prefix(format!("{k}=").as_bytes()))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if var("SDCI_GUEST_ROOT") != my_root {
            continue;
        }
        let other_steps = var("SDCI_JOB_ID").is_some_and(|j| j != own_id);
        let service = var("QREXEC_SERVICE_FULL_NAME")
            .is_some_and(|n| n.starts_with("sdci.Run+") && n != format!("sdci.Run+{own_id}"));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let launch = words.iter().any(|w| w == "launch")
            && words
                .iter()
                .any(|w| w.ends_with("/job.json") && !w.contains(own_id))
            && words.iter().any(|w| w.ends_with("sdci-dom0"));
        if !(other_steps || service || launch) {
            continue;
        }
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) => ended += 1,
            Err(_) => refused.push(pid),
        }
    }
    (ended, refused)
}

/// Refusal before there is a log: the journal (stderr) and the exit code.
fn fail_early(why: &str) -> i32 {
    tracing::error!("{why}");
    eprintln!("sdci-dom0 rerun: {why}");
    Outcome::Error.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshots_leftover_steps_are_ended_and_nothing_of_another_guest_or_this_job() {
        let root = format!("/tmp/sdci-rerun-test-{}", std::process::id());
        let spawn = |job: &str, guest: &str| {
            std::process::Command::new("sleep")
                .arg("30")
                .env("SDCI_JOB_ID", job)
                .env("SDCI_GUEST_ROOT", guest)
                .spawn()
                .unwrap()
        };
        let mut origin = spawn("origin-1", &root);
        let mut own = spawn("rerun-1", &root);
        let mut elsewhere = spawn("origin-1", "/tmp/another-guest");
        std::env::set_var("SDCI_GUEST_ROOT", &root);
        let (ended, _) = end_other_jobs("rerun-1");
        std::env::remove_var("SDCI_GUEST_ROOT");
        assert_eq!(ended, 1);
        let status = origin.wait().unwrap();
        assert!(!status.success(), "the origin's step was killed");
        assert!(
            own.try_wait().unwrap().is_none(),
            "this job's own step runs on"
        );
        assert!(
            elsewhere.try_wait().unwrap().is_none(),
            "another guest is not touched"
        );
        let _ = own.kill();
        let _ = elsewhere.kill();
        let _ = own.wait();
        let _ = elsewhere.wait();
    }
}
