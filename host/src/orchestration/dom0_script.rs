//! Commands run in dom0 through guest operations as `/bin/sh -c SCRIPT` in the dom0 user's home:
//! the update steps of a job with `update = true`, and the rotation's updates and smoke test.
//! The script appends a header line, the command's stdout and stderr, and a footer with the exit
//! status to `<log_dir>/log.txt` (a path relative to that home). For a job, `log_dir` is the
//! job's own folder, so `sdci-dom0 launch` later appends to the same `log.txt` and dom0's log
//! (the authoritative copy the host downloads) shows the update steps before the build steps.
//!
//! Invariants:
//! - Every step has its own timeout; a step past it is terminated and reported, never left
//!   running.
//! - Arguments reach the guest shell-quoted (POSIX single quotes): nothing in a step's argv is
//!   ever interpreted by the guest shell.
//! - A step's failure is returned with the step's name and exit status; whether that is the
//!   job's `error` or a failed rotation is the caller's decision.

use super::vm_power::VmError;
use crate::config::Config;
use sdci_vsphere::{GuestAuth, GuestProgram, Hypervisor, ProcessState};
use std::time::{Duration, Instant};

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

/// Why dom0 commands (or the reboot after them) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{step} exited with status {status}")]
    Failed { step: String, status: i32 },
    #[error("{step} did not finish within {secs}s and was terminated")]
    TimedOut { step: String, secs: u64 },
    #[error("{step}: the guest lost the process (rebooted?)")]
    Lost { step: String },
    #[error("{what}: {message}")]
    Vsphere { what: String, message: String },
    #[error("{0}")]
    Vm(#[from] VmError),
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

fn vs(what: &str, e: impl std::fmt::Display) -> ScriptError {
    ScriptError::Vsphere {
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
) -> Result<Vec<(String, Duration)>, ScriptError> {
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
                return Err(ScriptError::Failed {
                    step: step.name.clone(),
                    status,
                })
            }
            Ok(ProcessState::Lost) => {
                return Err(ScriptError::Lost {
                    step: step.name.clone(),
                })
            }
            Ok(ProcessState::Running) | Err(sdci_vsphere::VsphereError::Timeout { .. }) => {
                let _ = hv.terminate(vm, auth, pid).await;
                return Err(ScriptError::TimedOut {
                    step: step.name.clone(),
                    secs: step.timeout.as_secs(),
                });
            }
            Err(e) => return Err(vs(&format!("watching {}", step.name), e)),
        }
    }
    Ok(done)
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
