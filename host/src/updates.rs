//! Qubes updates and checks run in dom0 through VMware guest operations, with their output kept
//! in a log file in dom0, and the reboot that follows updates.
//!
//! Used by a job with `update = true` (before its steps: updates, reboot, then the job) and by the
//! golden-snapshot rotation (updates, then the smoke test). Each [`GuestStep`] runs as
//! `/bin/sh -c SCRIPT` in the dom0 user's home; the script appends a header line, the command's
//! stdout and stderr, and a footer with the exit status to `<log_dir>/log.txt` (a path relative
//! to that home). For a job, `log_dir` is the job's own folder, so `sdci-dom0 launch` later
//! appends to the same `log.txt` and dom0's log (the authoritative copy the host downloads) shows
//! the update steps before the build steps.
//!
//! Invariants:
//! - Every step has its own timeout; a step past it is terminated and reported, never left
//!   running.
//! - Arguments reach the guest shell-quoted (POSIX single quotes): nothing in a step's argv is
//!   ever interpreted by the guest shell.
//! - A step's failure is returned with the step's name and exit status; whether that is the
//!   job's `error` or a failed rotation is the caller's decision.

use crate::config::Config;
use sdci_vsphere::{GuestAuth, GuestProgram, Hypervisor, ProcessState};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// `[updates]`: the commands that update dom0 and the templates, and the check's commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatesConfig {
    /// argv updating dom0 (the Qubes way: Salt's `update.qubes-dom0` state).
    #[serde(default = "default_dom0_update")]
    pub dom0: Vec<String>,
    /// argv updating templates and standalone qubes.
    #[serde(default = "default_vm_update")]
    pub templates: Vec<String>,
    /// Seconds each update step may take.
    #[serde(default = "default_update_secs")]
    pub step_timeout_secs: u64,
}

fn default_dom0_update() -> Vec<String> {
    argv(&[
        "sudo",
        "qubesctl",
        "--show-output",
        "state.sls",
        "update.qubes-dom0",
    ])
}

fn default_vm_update() -> Vec<String> {
    argv(&[
        "sudo",
        "qubesctl",
        "--show-output",
        "--skip-dom0",
        "--templates",
        "--standalones",
        "state.sls",
        "update.qubes-vm",
    ])
}

fn default_update_secs() -> u64 {
    2 * 3600
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field of [updates] has a default")
    }
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// One command run in dom0 through guest operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestStep {
    pub name: String,
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Start `argv[0]` itself as the guest program (no shell, so no output capture: the host
    /// logs the exit status). For an absolute program path that must be run exactly as the
    /// host configured it, e.g. `sdci-dom0`.
    pub direct: bool,
}

/// The update steps, in the order they run: dom0 first, then templates and standalones.
pub fn update_steps(cfg: &UpdatesConfig) -> Vec<GuestStep> {
    let t = Duration::from_secs(cfg.step_timeout_secs);
    vec![
        GuestStep {
            name: "update-dom0".into(),
            argv: cfg.dom0.clone(),
            timeout: t,
            direct: false,
        },
        GuestStep {
            name: "update-templates".into(),
            argv: cfg.templates.clone(),
            timeout: t,
            direct: false,
        },
    ]
}

/// The smoke test of a fresh snapshot: `sdci-dom0 --version` runs, and the dev VM starts.
pub fn smoke_steps(cfg: &Config, timeout: Duration) -> Vec<GuestStep> {
    vec![
        GuestStep {
            name: "sdci-dom0-version".into(),
            argv: vec![cfg.dom0.program.clone(), "--version".into()],
            timeout,
            direct: true,
        },
        GuestStep {
            name: "start-dev-vm".into(),
            argv: argv(&["qvm-start", "--skip-if-running", &cfg.dom0.dev_vm]),
            timeout,
            direct: false,
        },
    ]
}

/// Why guest steps or the reboot did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("{step} exited with status {status}")]
    Failed { step: String, status: i32 },
    #[error("{step} did not finish within {secs}s and was terminated")]
    TimedOut { step: String, secs: u64 },
    #[error("{step}: the guest lost the process (rebooted?)")]
    Lost { step: String },
    #[error("{what}: {message}")]
    Vsphere { what: String, message: String },
}

/// Quotes one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The `/bin/sh -c` script for one step: header, the command with its output appended to
/// `<log_dir>/log.txt`, footer with the exit status; the shell exits with the command's status.
pub fn step_script(step: &GuestStep, index: usize, total: usize, log_dir: &str) -> String {
    let dir = shell_quote(log_dir);
    let log = shell_quote(&format!("{log_dir}/log.txt"));
    let shown: Vec<String> = step.argv.iter().map(|a| shell_quote(a)).collect();
    let header = format!(
        "==> update step {}/{total} {}: {}",
        index + 1,
        step.name,
        step.argv.join(" ")
    );
    format!(
        "mkdir -p {dir} || exit 2; exec >>{log} 2>&1 || exit 2; \
         printf '%s %s\\n' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" {header}; {cmd}; rc=$?; \
         printf '%s %s\\n' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" \"<== {name}: exit status $rc\"; \
         exit $rc",
        header = shell_quote(&header),
        cmd = shown.join(" "),
        name = step.name.replace(['"', '$', '`', '\\'], "_"),
    )
}

/// The guest program running one step's script from the dom0 user's home.
pub fn step_program(
    step: &GuestStep,
    index: usize,
    total: usize,
    cfg: &Config,
    log_dir: &str,
) -> GuestProgram {
    if step.direct {
        let rest: Vec<String> = step.argv.iter().skip(1).map(|a| shell_quote(a)).collect();
        return GuestProgram {
            path: step.argv.first().cloned().unwrap_or_default(),
            arguments: rest.join(" "),
            env: Vec::new(),
            working_directory: Some(format!("/home/{}", cfg.dom0.user)),
        };
    }
    GuestProgram {
        path: "/bin/sh".into(),
        arguments: format!(
            "-c {}",
            shell_quote(&step_script(step, index, total, log_dir))
        ),
        env: Vec::new(),
        working_directory: Some(format!("/home/{}", cfg.dom0.user)),
    }
}

fn vs(what: &str, e: impl std::fmt::Display) -> UpdateError {
    UpdateError::Vsphere {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

/// Runs `steps` in order in dom0 of `vm`, stopping at the first failure. After each step the
/// new part of `<log_dir>/log.txt` is downloaded and handed to `sink` (the host's copy of the
/// log grows step by step). Returns each step's (name, duration).
pub async fn run_steps<H: Hypervisor>(
    hv: &H,
    vm: &str,
    auth: &GuestAuth,
    cfg: &Config,
    log_dir: &str,
    steps: &[GuestStep],
    sink: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<Vec<(String, Duration)>, UpdateError> {
    let log_path = format!("/home/{}/{log_dir}/log.txt", cfg.dom0.user);
    let mut seen = 0usize;
    let mut done = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let started = Instant::now();
        let program = step_program(step, i, steps.len(), cfg, log_dir);
        tracing::info!(%vm, step = %step.name, "running in dom0");
        let pid = hv
            .start_program(vm, auth, &program)
            .await
            .map_err(|e| vs(&format!("starting {}", step.name), e))?;
        if step.direct {
            sink(format!("==> step {}: {}\n", step.name, step.argv.join(" ")).as_bytes());
        }
        let state = hv.wait_program(vm, auth, pid, step.timeout).await;
        if step.direct {
            let how = match &state {
                Ok(ProcessState::Exited(c)) => format!("exit status {c}"),
                Ok(other) => format!("{other:?}"),
                Err(e) => e.to_string(),
            };
            sink(format!("<== {}: {how}\n", step.name).as_bytes());
        } else if let Ok(bytes) = hv.download(vm, auth, &log_path).await {
            // Whatever happened, show what the step wrote.
            if bytes.len() > seen {
                sink(&bytes[seen..]);
                seen = bytes.len();
            }
        }
        match state {
            Ok(ProcessState::Exited(0)) => done.push((step.name.clone(), started.elapsed())),
            Ok(ProcessState::Exited(status)) => {
                return Err(UpdateError::Failed {
                    step: step.name.clone(),
                    status,
                })
            }
            Ok(ProcessState::Lost) => {
                return Err(UpdateError::Lost {
                    step: step.name.clone(),
                })
            }
            Ok(ProcessState::Running) | Err(sdci_vsphere::VsphereError::Timeout { .. }) => {
                let _ = hv.terminate(vm, auth, pid).await;
                return Err(UpdateError::TimedOut {
                    step: step.name.clone(),
                    secs: step.timeout.as_secs(),
                });
            }
            Err(e) => return Err(vs(&format!("watching {}", step.name), e)),
        }
    }
    Ok(done)
}

/// Reboots the VM after updates: guest shutdown (hard power-off after the grace), power on, and
/// wait until guest operations answer again.
pub async fn reboot<H: Hypervisor>(hv: &H, vm: &str, cfg: &Config) -> Result<(), UpdateError> {
    let d = &cfg.deadlines;
    let grace = Duration::from_secs(d.shutdown_grace_secs);
    match tokio::time::timeout(Duration::from_secs(d.shutdown_secs), hv.shutdown(vm, grace)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(vs("shutting down after the updates", e)),
        Err(_) => {
            return Err(UpdateError::Vsphere {
                what: "shutting down after the updates".into(),
                message: format!("not off within {}s", d.shutdown_secs),
            })
        }
    }
    hv.power_on(vm)
        .await
        .map_err(|e| vs("powering on after the updates", e))?;
    hv.wait_guest_ready(vm, Duration::from_secs(d.guest_ready_secs))
        .await
        .map_err(|e| vs("waiting for the guest after the updates", e))
}

/// The whole update phase of a job with `update = true`, for the lifecycle to call after guest
/// operations are ready and before it uploads the job file: the update steps (their output in
/// the job's dom0 `log.txt`, which `sdci-dom0 launch` appends to later), then the reboot.
/// `sink` receives the log text as it grows, for the host's live copy.
pub async fn update_job_vm<H: Hypervisor>(
    hv: &H,
    vm: &str,
    auth: &GuestAuth,
    cfg: &Config,
    job_id: &str,
    sink: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<(), UpdateError> {
    let log_dir = format!(".sdci/jobs/{job_id}");
    run_steps(
        hv,
        vm,
        auth,
        cfg,
        &log_dir,
        &update_steps(&cfg.updates),
        sink,
    )
    .await?;
    reboot(hv, vm, cfg).await
}

/// The whole budget of a job's update phase (both update steps, the reboot), seconds: the
/// deadline the lifecycle gives [`Orchestrator::update_phase`].
pub fn update_budget_secs(cfg: &Config) -> u64 {
    let d = &cfg.deadlines;
    2 * cfg.updates.step_timeout_secs + d.shutdown_secs + d.power_on_secs + d.guest_ready_secs + 60
}

impl<H: Hypervisor> crate::scheduler::Orchestrator<H> {
    /// The update phase of a job with `update = true`, for the lifecycle: call it after guest
    /// operations are ready and before the job file is uploaded, under its own deadline
    /// ([`update_budget_secs`]), e.g. through the lifecycle's `phase("updates", ...)`. The
    /// steps' output goes to the job's dom0 `log.txt` (which `sdci-dom0 launch` appends to, so
    /// dom0's log shows the updates before the build steps) and, as it grows, to the host's log
    /// of the job. A failure is returned as a vSphere-style fault (`UpdateFailed`): an
    /// infrastructure failure of the attempt, never the project's `failure`.
    pub async fn update_phase(
        &self,
        vm: &str,
        job_id: &str,
    ) -> sdci_vsphere::hypervisor::Result<()> {
        let log_dir = self.hub.cfg.log_dir();
        let _ = crate::events::append_log(
            &log_dir,
            job_id,
            &format!("=== applying Qubes updates on {vm}, then rebooting it\n"),
        );
        let mut sink = |b: &[u8]| {
            let _ = crate::events::append_log(&log_dir, job_id, &String::from_utf8_lossy(b));
        };
        let started = Instant::now();
        let r = update_job_vm(&*self.hv, vm, &self.auth, &self.hub.cfg, job_id, &mut sink).await;
        self.hub
            .metrics
            .observe_phase("updates", started.elapsed().as_secs_f64());
        match r {
            Ok(()) => {
                self.hub.metrics.count("job_updates_ok");
                Ok(())
            }
            Err(e) => {
                self.hub.metrics.count("job_updates_failed");
                let _ = crate::events::append_log(
                    &self.hub.cfg.log_dir(),
                    job_id,
                    &format!("=== updates failed: {e}\n"),
                );
                Err(sdci_vsphere::VsphereError::Fault {
                    method: "updates".into(),
                    kind: "UpdateFailed".into(),
                    message: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_every_byte_literal() {
        assert_eq!(shell_quote("qubesctl"), "qubesctl");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn default_update_steps_are_the_qubes_salt_states_dom0_first() {
        let s = update_steps(&UpdatesConfig::default());
        assert_eq!(s[0].name, "update-dom0");
        assert_eq!(
            s[0].argv.join(" "),
            "sudo qubesctl --show-output state.sls update.qubes-dom0"
        );
        assert_eq!(
            s[1].argv.join(" "),
            "sudo qubesctl --show-output --skip-dom0 --templates --standalones state.sls \
             update.qubes-vm"
        );
    }

    #[test]
    fn the_script_runs_in_a_real_shell_and_logs_header_output_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let step = GuestStep {
            name: "echo".into(),
            argv: vec!["sh".into(), "-c".into(), "echo 'hi $HOME'; exit 3".into()],
            timeout: Duration::from_secs(5),
            direct: false,
        };
        let script = step_script(&step, 0, 2, "jobs/x");
        let st = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(3));
        let log = std::fs::read_to_string(dir.path().join("jobs/x/log.txt")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            lines[0].ends_with("==> update step 1/2 echo: sh -c echo 'hi $HOME'; exit 3"),
            "{log}"
        );
        assert_eq!(lines[1], "hi $HOME");
        assert!(lines[2].ends_with("<== echo: exit status 3"), "{log}");
    }
}
