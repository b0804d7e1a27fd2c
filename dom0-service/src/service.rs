//! `sdci-dom0 run`: the qrexec service `sdci.Run+<job id>`.
//!
//! Order matters, and each stage only starts when the previous one passed:
//! 1. the job id (argv[1], else `QREXEC_SERVICE_ARGUMENT`; both must agree, and
//!    `QREXEC_SERVICE_FULL_NAME` must name it) is a valid [`JobId`];
//! 2. if started as root, switch to the dom0 user (before reading anything from the caller);
//! 3. dom0's own job file exists and `QREXEC_REMOTE_DOMAIN` is its dev VM; the job has not run
//!    before (a job runs once);
//! 4. the archive on stdin is unpacked into a fresh `<job dir>/tree` and moved into place, all
//!    before the job's deadline (the reader also enforces a minimum average rate);
//! 5. the job's steps run in order, the first failure stops the job;
//! 6. the JUnit files and, unless the steps succeeded, the failure evidence are collected into
//!    `results.tar.zst` ([`crate::results`], contracts §11), which never changes the outcome.
//!
//! Nothing from the dev VM chooses a step, a path or an environment variable: `QREXEC_*`
//! variables are removed from the steps' environment. The exit code is the outcome (0/1/2) and
//! the last event is always a `result`.

use crate::config::Config;
use crate::error::Error;
use crate::job::{read_job_file, JobPaths};
use crate::log::JobLog;
use crate::steps;
use crate::unpack::{human, unpack_until, PacedReader};
use crate::{privilege, tree};
use sdci_protocol::{JobFile, JobId, Outcome};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment qrexec gives a service, as read at startup.
#[derive(Debug, Clone, Default)]
pub struct QrexecEnv {
    pub argument: Option<String>,
    pub remote_domain: Option<String>,
    pub full_name: Option<String>,
}

impl QrexecEnv {
    pub fn from_env() -> Self {
        let var = |k| std::env::var(k).ok();
        Self {
            argument: var("QREXEC_SERVICE_ARGUMENT"),
            remote_domain: var("QREXEC_REMOTE_DOMAIN"),
            full_name: var("QREXEC_SERVICE_FULL_NAME"),
        }
    }
}

/// Works out the job id from argv[1] and the qrexec environment, or says why not.
pub fn job_id(arg: Option<&str>, env: &QrexecEnv) -> Result<JobId, String> {
    let from_env = env.argument.as_deref().filter(|s| !s.is_empty());
    let raw = match (arg, from_env) {
        (Some(a), Some(e)) if a != e => {
            return Err(format!(
                "argv[1] {a:?} and QREXEC_SERVICE_ARGUMENT {e:?} disagree"
            ))
        }
        (Some(a), _) => a,
        (None, Some(e)) => e,
        (None, None) => {
            return Err("no job id: the caller must call sdci.Run+<job id>".into());
        }
    };
    let id: JobId = raw.parse().map_err(|e| format!("{e}"))?;
    if let Some(full) = env.full_name.as_deref() {
        if full != format!("sdci.Run+{id}") {
            return Err(format!(
                "QREXEC_SERVICE_FULL_NAME is {full:?}, not sdci.Run+{id}"
            ));
        }
    }
    Ok(id)
}

/// Runs the service; returns the process exit code.
pub fn run(arg: Option<String>) -> i32 {
    let env = QrexecEnv::from_env();
    let id = match job_id(arg.as_deref(), &env) {
        Ok(id) => id,
        Err(why) => return refuse_early(&format!("refused: {why}")),
    };
    if privilege::is_root() {
        if std::env::var_os("HOME").is_none() {
            // Qubes 4.1's policy daemon may start services without HOME; root's is /root.
            std::env::set_var("HOME", "/root");
        }
        let (user, allow_root) = match Config::load_from_env() {
            Ok(c) => (c.user.unwrap_or_else(privilege::default_user), c.allow_root),
            Err(e) => return refuse_early(&e.to_string()),
        };
        if allow_root {
            tracing::warn!("allow_root is set in dom0.toml: running as root (test worlds only)");
        } else if let Err(e) = privilege::drop_to(&user) {
            return refuse_early(&e.to_string());
        }
    }
    steps::become_subreaper();
    let config = match Config::load_from_env() {
        Ok(c) => c,
        Err(e) => return refuse_early(&e.to_string()),
    };
    let paths = JobPaths::new(&config.jobs_dir, &id);
    let job = match read_job_file(&paths.job_file()) {
        Ok(j) if j.spec.id == id => j,
        Ok(j) => {
            return refuse_early(&format!(
                "refused: the job file for {id} names job {}",
                j.spec.id
            ))
        }
        Err(e) => return refuse_early(&format!("refused: {e}")),
    };
    let mut log = match JobLog::open(&paths.log(), true) {
        Ok(l) => l,
        Err(e) => return refuse_early(&e.to_string()),
    };
    let outcome = match serve(&config, &paths, &job, &env, &mut log) {
        Ok((outcome, reason)) => {
            log.result(outcome, &reason);
            outcome
        }
        Err(e) => {
            tracing::error!("{e}");
            log.note(&e.to_string());
            log.result(Outcome::Error, &e.to_string());
            Outcome::Error
        }
    };
    outcome.exit_code()
}

/// Refusal before there is a job log: a note and a result on stdout, and the journal.
fn refuse_early(why: &str) -> i32 {
    tracing::error!("{why}");
    let mut log = JobLog::events_only();
    log.note(why);
    log.result(Outcome::Error, why);
    Outcome::Error.exit_code()
}

fn serve(
    config: &Config,
    paths: &JobPaths,
    job: &JobFile,
    env: &QrexecEnv,
    log: &mut JobLog,
) -> Result<(Outcome, String), Error> {
    let spec = &job.spec;
    let caller = env.remote_domain.as_deref().unwrap_or("");
    if caller != spec.dev_vm {
        return Err(Error::Refused(if caller.is_empty() {
            "QREXEC_REMOTE_DOMAIN is not set: sdci.Run must be started by qrexec".into()
        } else {
            format!(
                "call from {caller:?}, but this job's dev VM is {:?}",
                spec.dev_vm
            )
        }));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(paths.started_marker())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Refused(format!(
                    "sdci.Run already ran for job {}; a job runs once",
                    spec.id
                ))
            } else {
                Error::io(format!("creating {}", paths.started_marker().display()), e)
            }
        })?;
    log.note(&format!(
        "job {} for {}@{} from {caller}: receiving the tree",
        spec.id,
        spec.repo,
        spec.sha.short()
    ));
    // The whole unpack is bounded by the job's deadline (and the reader's minimum rate), and
    // the tree is never moved into place once the deadline has passed.
    let deadline = deadline_instant(spec.deadline_unix).ok_or_else(|| {
        Error::Refused(format!(
            "the job's deadline passed before the tree was received (job {})",
            spec.id
        ))
    })?;
    let input = PacedReader::new(std::io::stdin(), &config.limits, Some(deadline));
    let summary = unpack_until(input, &paths.tree(), &config.limits, Some(deadline))?;
    if Instant::now() >= deadline {
        let _ = tree::remove_tree(&paths.tree());
        return Err(Error::archive(
            None,
            "the job's deadline passed while the tree was being unpacked; nothing was moved into \
             place",
        ));
    }
    log.note(&format!(
        "unpacked {} files ({} executable), {} symlinks, {} directories: {} from {} compressed",
        summary.files,
        summary.executables,
        summary.symlinks,
        summary.dirs,
        human(summary.bytes),
        human(summary.compressed_bytes)
    ));
    match tree::replace_checkout(
        &paths.tree(),
        &config.checkout_dir,
        spec.id.as_str(),
        &config.privileged_remove,
    )? {
        tree::OldCopy::LeftAside(path, why) => log.note(&format!(
            "warning: the previous checkout could not be removed ({why}); it is at {}",
            path.display()
        )),
        _ => log.note(&format!(
            "the tree is in place at {}",
            config.checkout_dir.display()
        )),
    }
    let result = run_steps(config, job, log);
    // The steps ran (whatever their end): collect what they left, never changing the outcome.
    let outcome = match &result {
        Ok((outcome, _)) => *outcome,
        Err(_) => Outcome::Error,
    };
    let env = base_env(job);
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
    result
}

/// The job's deadline (Unix seconds) as an `Instant` on the monotonic clock; `None` once passed.
fn deadline_instant(deadline_unix: u64) -> Option<Instant> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(deadline_unix).checked_sub(now)?;
    // A deadline centuries away is "none"; a year keeps `Instant` arithmetic in range.
    Instant::now().checked_add(left.min(Duration::from_secs(365 * 86_400)))
}

/// The steps' base environment: the service's own minus everything qrexec set (the caller
/// influences some of it), plus the job's variables.
pub(crate) fn base_env(job: &JobFile) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("QREXEC_") && k != crate::config::CONFIG_ENV)
        .collect();
    env.push(("SECUREDROP_DEV_VM".into(), job.spec.dev_vm.clone()));
    env.push(("SECUREDROP_DEV_DIR".into(), job.spec.dev_dir.clone()));
    env.push(("SDCI_JOB_ID".into(), job.spec.id.to_string()));
    env
}

fn with_overrides(
    base: &[(String, String)],
    extra: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = base
        .iter()
        .filter(|(k, _)| !extra.contains_key(k))
        .cloned()
        .collect();
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The job's steps in order (also `sdci-dom0 rerun`'s, contracts §12).
pub(crate) fn run_steps(
    config: &Config,
    job: &JobFile,
    log: &mut JobLog,
) -> Result<(Outcome, String), Error> {
    let spec = &job.spec;
    let base = base_env(job);
    let total = spec.steps.len();
    for (i, step) in spec.steps.iter().enumerate() {
        let index = i as u32;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let left = spec.deadline_unix.saturating_sub(now);
        if left == 0 {
            return Ok((
                Outcome::Error,
                format!("the job's deadline passed before step {:?}", step.name),
            ));
        }
        let by_deadline = left < step.timeout_secs;
        let env = with_overrides(&base, &step.env);
        log.step_started(index, total, &step.name, &step.argv);
        let run = steps::Spec {
            argv: &step.argv,
            env: &env,
            cwd: &config.checkout_dir,
            stdin: None,
            timeout: Duration::from_secs(step.timeout_secs.min(left)),
            grace: config.kill_grace,
            drain: config.drain,
        };
        let finished = steps::run(&run, |line| log.step_line(index, &step.name, line))?;
        log.step_finished(
            index,
            &step.name,
            finished.status,
            finished.timed_out,
            finished.took,
        );
        if finished.timed_out && by_deadline {
            return Ok((
                Outcome::Error,
                format!("the job's deadline passed during step {:?}", step.name),
            ));
        }
        if finished.timed_out {
            return Ok((
                Outcome::Failure,
                format!(
                    "step {:?} timed out after {} s",
                    step.name, step.timeout_secs
                ),
            ));
        }
        if finished.status != 0 {
            return Ok((
                Outcome::Failure,
                format!(
                    "step {:?} failed with exit status {}",
                    step.name, finished.status
                ),
            ));
        }
    }
    Ok((Outcome::Success, format!("all {total} steps passed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(arg: Option<&str>, full: Option<&str>) -> QrexecEnv {
        QrexecEnv {
            argument: arg.map(String::from),
            remote_domain: Some("sd-dev".into()),
            full_name: full.map(String::from),
        }
    }

    #[test]
    fn job_id_comes_from_argv_or_the_environment() {
        assert_eq!(job_id(Some("j1"), &env(None, None)).unwrap().as_str(), "j1");
        assert_eq!(job_id(None, &env(Some("j2"), None)).unwrap().as_str(), "j2");
        assert_eq!(
            job_id(Some("j3"), &env(Some("j3"), Some("sdci.Run+j3")))
                .unwrap()
                .as_str(),
            "j3"
        );
    }

    #[test]
    fn disagreeing_or_missing_ids_are_refused() {
        assert!(job_id(Some("a"), &env(Some("b"), None)).is_err());
        assert!(job_id(None, &env(Some(""), None)).is_err());
        assert!(job_id(None, &env(None, None)).is_err());
        assert!(job_id(Some("a"), &env(None, Some("sdci.Run+b"))).is_err());
        assert!(job_id(Some("a"), &env(None, Some("other.Service+a"))).is_err());
    }

    #[test]
    fn step_env_overrides_the_base_and_qrexec_variables_are_gone() {
        let base = vec![
            ("CI".to_string(), "false".to_string()),
            ("A".into(), "1".into()),
        ];
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("CI".to_string(), "true".to_string());
        let env = with_overrides(&base, &extra);
        assert!(env.contains(&("CI".into(), "true".into())));
        assert!(!env.contains(&("CI".into(), "false".into())));
    }
}
