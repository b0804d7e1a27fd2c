//! `sdci-dom0 launch JOBFILE`: started by the host through VMware guest operations.
//!
//! Starts the dev VM (`qvm-start --skip-if-running`), waits until it answers (`qvm-run … true`),
//! then runs `qvm-run --pass-io --no-gui <dev_vm> 'sdci-agent run --job -'` with the job's
//! `AgentJob` JSON on stdin (contracts §4). Every line of output goes to the job log, tagged with
//! its source. The agent's exit code is the job's outcome (0/1/2; anything else is 2).
//!
//! Watchdog: every command runs with the time left until the job's deadline as its timeout, so at
//! the deadline the running command's process group is killed and `launch` exits 2.
//!
//! Secrets: before it starts anything, `launch` rewrites dom0's job file without the agent's
//! secrets (the token and the event secret; `JobFile::without_secrets`, atomically), keeping
//! them only in memory for the agent's stdin. So no dom0 step (which runs later, with sudo)
//! finds them on disk; `sdci.Run` still reads its steps from the rewritten file. A job file
//! whose secrets are gone was handed over already: `launch` refuses it (a job launches once).

use crate::config::Config;
use crate::error::Error;
use crate::job::{read_own_job_file, replace_job_file};
use crate::log::JobLog;
use crate::steps;
use sdci_protocol::Outcome;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runs `launch`; returns the process exit code.
pub fn launch(jobfile: &Path) -> i32 {
    steps::become_subreaper();
    let config = match Config::load_from_env() {
        Ok(c) => c,
        Err(e) => return fail_early(&e.to_string()),
    };
    let (job, paths) = match read_own_job_file(&config.jobs_dir, jobfile) {
        Ok(j) => j,
        Err(e) => return fail_early(&e.to_string()),
    };
    if !job.has_agent_secrets() {
        return fail_early(&format!(
            "{} was handed over to an agent already (its secrets are gone); the host uploads a \
             fresh job file for every attempt",
            paths.job_file().display()
        ));
    }
    if let Err(e) = replace_job_file(&paths.job_file(), &job.without_secrets()) {
        return fail_early(&format!(
            "cannot remove the agent's secrets from dom0's copy of the job file: {e}"
        ));
    }
    let mut log = match JobLog::open(&paths.log(), false) {
        Ok(l) => l,
        Err(e) => return fail_early(&e.to_string()),
    };
    let (outcome, reason) = match drive(&config, &job, &mut log) {
        Ok(r) => r,
        Err(e) => (Outcome::Error, e.to_string()),
    };
    log.result(outcome, &reason);
    outcome.exit_code()
}

fn fail_early(why: &str) -> i32 {
    tracing::error!("{why}");
    eprintln!("sdci-dom0 launch: {why}");
    Outcome::Error.exit_code()
}

fn time_left(deadline_unix: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(deadline_unix).saturating_sub(now)
}

fn drive(
    config: &Config,
    job: &sdci_protocol::JobFile,
    log: &mut JobLog,
) -> Result<(Outcome, String), Error> {
    let spec = &job.spec;
    let vm = spec.dev_vm.as_str();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let cwd = std::env::current_dir().map_err(|e| Error::io("reading the current directory", e))?;
    let l = &config.launch;
    let run = |log: &mut JobLog,
               tag: &str,
               argv: Vec<String>,
               stdin: Option<Vec<u8>>,
               timeout: Duration|
     -> Result<steps::Finished, Error> {
        log.tagged("launch", &format!("running {}", argv.join(" ")));
        let s = steps::Spec {
            argv: &argv,
            env: &env,
            cwd: &cwd,
            stdin,
            timeout,
            grace: config.kill_grace,
            drain: config.drain,
        };
        steps::run(&s, |line| log.tagged(tag, line))
    };
    let deadline_msg = |what: &str| {
        (
            Outcome::Error,
            format!("the job's deadline passed {what}; killed it"),
        )
    };
    log.tagged("launch", &format!("job {}: starting {vm}", spec.id));
    let left = time_left(spec.deadline_unix);
    if left.is_zero() {
        return Ok((
            Outcome::Error,
            "the job's deadline has already passed".into(),
        ));
    }
    let f = run(
        log,
        "qvm-start",
        vec![l.qvm_start.clone(), "--skip-if-running".into(), vm.into()],
        None,
        left,
    )?;
    if f.timed_out {
        return Ok(deadline_msg("while starting the dev VM"));
    }
    if f.status != 0 {
        return Ok((
            Outcome::Error,
            format!("qvm-start {vm} failed with exit status {}", f.status),
        ));
    }
    let probe_until = Instant::now() + l.ready_timeout;
    loop {
        let left = time_left(spec.deadline_unix).min(Duration::from_secs(60));
        let f = run(
            log,
            "probe",
            vec![
                l.qvm_run.clone(),
                "--pass-io".into(),
                "--no-gui".into(),
                vm.into(),
                "true".into(),
            ],
            None,
            left,
        )?;
        if f.status == 0 && !f.timed_out {
            break;
        }
        if Instant::now() >= probe_until || time_left(spec.deadline_unix).is_zero() {
            return Ok((
                Outcome::Error,
                format!(
                    "{vm} did not answer within {} s of starting",
                    l.ready_timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let left = time_left(spec.deadline_unix);
    let f = run(
        log,
        "agent",
        vec![
            l.qvm_run.clone(),
            "--pass-io".into(),
            "--no-gui".into(),
            vm.into(),
            l.agent_command.clone(),
        ],
        Some(job.agent.to_json().into_bytes()),
        left,
    )?;
    if f.timed_out {
        return Ok(deadline_msg("while the agent ran"));
    }
    let outcome = Outcome::from_exit_code(f.status);
    Ok((
        outcome,
        format!("the agent in {vm} exited with status {}", f.status),
    ))
}
