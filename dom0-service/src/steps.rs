//! Runs one command the way every dom0 step (and `launch`'s `qvm-*` calls) must run:
//!
//! - in its own process group, with stdin from `/dev/null` (or given bytes), stdout and stderr
//!   merged into one pipe that only this process reads (never the service's own stdout);
//! - output split into lines (long lines cut at 8 KiB), ANSI escapes stripped;
//! - at the timeout, SIGTERM to the whole group, SIGKILL after the grace period;
//! - when the main process exits, whatever is left of its group is killed and reaped (the service
//!   is a child subreaper, see [`become_subreaper`]), so no background child outlives the step
//!   or keeps a qrexec call open. A process that left the group (e.g. `setsid`) and still holds
//!   the pipe is waited for only `drain`, then abandoned.
//!
//! Exit status: the exit code, or 128 + the signal number. Process-group signals, `waitid` and
//! `waitpid` go through `nix` (no `unsafe` here).

use crate::ansi;
use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Output lines longer than this are cut into several.
pub const MAX_LINE: usize = 8 * 1024;

/// What to run.
pub struct Spec<'a> {
    pub argv: &'a [String],
    /// The complete environment of the command (nothing else is inherited).
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// Bytes for the command's stdin; `None` means `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub grace: Duration,
    pub drain: Duration,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub status: i32,
    pub timed_out: bool,
    pub took: Duration,
}

enum Msg {
    Line(String),
    Eof,
    Exited,
}

/// Makes this process the reaper of its orphaned descendants (Linux `PR_SET_CHILD_SUBREAPER`),
/// so the remains of a step's process group can be reaped and waited for.
pub fn become_subreaper() {
    if let Err(e) = prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper: {e}");
    }
}

fn kill_group(pgid: Pid, signal: Signal) {
    // ESRCH (the group is gone) is the expected end; there is nothing else to do on failure.
    let _ = killpg(pgid, signal);
}

/// Waits (without reaping) until process `pid` has exited.
fn wait_exited(pid: Pid) {
    while let Err(Errno::EINTR) = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {
    }
}

/// Reaps every child of ours still in group `pgid` (they were sent SIGKILL), for at most `limit`.
fn reap_group(pgid: Pid, limit: Duration) {
    let until = Instant::now() + limit;
    let group = Pid::from_raw(-pgid.as_raw());
    loop {
        match waitpid(group, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return, // ECHILD: none left.
        }
        if Instant::now() >= until {
            return;
        }
        kill_group(pgid, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `spec`, calling `on_line` for every output line. `Err` only if it cannot be started.
pub fn run(spec: &Spec<'_>, mut on_line: impl FnMut(&str)) -> Result<Finished> {
    let start = Instant::now();
    let (program, args) = spec.argv.split_first().ok_or_else(|| Error::Spawn {
        program: String::new(),
        source: std::io::Error::other("empty command"),
    })?;
    let spawn_err = |source| Error::Spawn {
        program: program.clone(),
        source,
    };
    let (reader, writer) = std::io::pipe().map_err(spawn_err)?;
    let (mut child, pid) = {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(spec.cwd)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(writer.try_clone().map_err(spawn_err)?)
            .stderr(writer)
            .process_group(0);
        let child = cmd.spawn().map_err(spawn_err)?;
        let pid = Pid::from_raw(child.id() as i32);
        (child, pid)
        // `cmd` (holding our copies of the pipe's write end) is dropped here, so the pipe reaches
        // EOF when the command's processes close it.
    };
    if let (Some(bytes), Some(mut input)) = (spec.stdin.clone(), child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
    }
    let (tx, rx) = mpsc::channel();
    let lines_tx = tx.clone();
    std::thread::spawn(move || read_lines(reader, lines_tx));
    std::thread::spawn(move || {
        wait_exited(pid);
        let _ = tx.send(Msg::Exited);
    });

    // Durations come from files; a year is "forever" and keeps `Instant` arithmetic in range.
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    let (timeout, grace, drain) = (
        spec.timeout.min(YEAR),
        spec.grace.min(YEAR),
        spec.drain.min(YEAR),
    );
    let deadline = start + timeout;
    let mut timed_out = false;
    let mut next_kill: Option<Instant> = None;
    let mut status: Option<i32> = None;
    let mut drain_until = None;
    let mut eof = false;
    loop {
        if status.is_some() && eof {
            break;
        }
        let wake = match (drain_until, next_kill) {
            (Some(d), _) => d,
            (None, Some(k)) => k,
            (None, None) => deadline,
        };
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Msg::Line(l)) => on_line(&l),
            Ok(Msg::Eof) => eof = true,
            Ok(Msg::Exited) => {
                // The leader is a zombie, so its group id cannot be reused yet.
                kill_group(pid, Signal::SIGKILL);
                let st = child.wait().map_err(spawn_err)?;
                reap_group(pid, drain.max(Duration::from_secs(1)));
                status = Some(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
                drain_until = Some(Instant::now() + drain);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if status.is_some() {
                    on_line("(a process that left the step's process group still holds its output; not waiting for it)");
                    break;
                }
                if !timed_out {
                    timed_out = true;
                    on_line(&format!(
                        "(timed out after {} s: sending SIGTERM to the process group)",
                        timeout.as_secs()
                    ));
                    kill_group(pid, Signal::SIGTERM);
                    next_kill = Some(Instant::now() + grace);
                } else {
                    on_line("(still running after the grace period: sending SIGKILL)");
                    kill_group(pid, Signal::SIGKILL);
                    next_kill = Some(Instant::now() + grace.max(Duration::from_secs(1)));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(Finished {
        status: status.unwrap_or(-1),
        timed_out,
        took: start.elapsed(),
    })
}

fn read_lines(reader: std::io::PipeReader, tx: mpsc::Sender<Msg>) {
    let mut r = BufReader::with_capacity(64 * 1024, reader);
    let mut pending: Vec<u8> = Vec::new();
    let send = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = ansi::strip(&String::from_utf8_lossy(bytes));
        tx.send(Msg::Line(text)).is_ok()
    };
    loop {
        let buf = match r.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (chunk, used, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        pending.extend_from_slice(chunk);
        r.consume(used);
        while pending.len() > MAX_LINE {
            let rest = pending.split_off(cut_point(&pending));
            if !send(&pending) {
                return;
            }
            pending = rest;
        }
        if newline {
            if !send(&pending) {
                return;
            }
            pending.clear();
        }
    }
    if !pending.is_empty() {
        send(&pending);
    }
    let _ = tx.send(Msg::Eof);
}

/// Where to cut an over-long line: at most MAX_LINE bytes, not inside a UTF-8 sequence.
fn cut_point(bytes: &[u8]) -> usize {
    let mut at = MAX_LINE;
    while at > MAX_LINE - 4 && at < bytes.len() && (bytes[at] & 0xc0) == 0x80 {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: u64) -> (Finished, Vec<String>) {
        let argv = ["sh".to_string(), "-c".into(), script.into()];
        let env = [("PATH".to_string(), std::env::var("PATH").unwrap())];
        let spec = Spec {
            argv: &argv,
            env: &env,
            cwd: Path::new("/"),
            stdin: None,
            timeout: Duration::from_secs(timeout),
            grace: Duration::from_secs(1),
            drain: Duration::from_secs(1),
        };
        let mut lines = Vec::new();
        let f = run(&spec, |l| lines.push(l.to_owned())).unwrap();
        (f, lines)
    }

    #[test]
    fn stdout_and_stderr_are_merged_in_order_and_stripped_but_for_colours() {
        let (f, lines) = sh(
            "echo one; echo two >&2; printf '\\033[31mred\\033[0m\\033[2K\\r\\n'; exit 3",
            60,
        );
        assert_eq!(lines, ["one", "two", "\x1b[31mred\x1b[0m"]);
        assert_eq!((f.status, f.timed_out), (3, false));
    }

    #[test]
    fn stdin_is_dev_null() {
        let (f, lines) = sh("cat; echo end", 60);
        assert_eq!(lines, ["end"]);
        assert_eq!(f.status, 0);
    }

    #[test]
    fn long_lines_are_cut_and_a_missing_final_newline_is_kept() {
        let (_, lines) = sh("head -c 20000 /dev/zero | tr '\\0' x; printf tail", 60);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert!(lines[2].ends_with("tail"));
    }

    #[test]
    fn signal_deaths_report_128_plus_the_signal() {
        let (f, _) = sh("kill -KILL $$", 60);
        assert_eq!(f.status, 128 + 9);
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let argv = ["/nonexistent/prog".to_string()];
        let spec = Spec {
            argv: &argv,
            env: &[],
            cwd: Path::new("/"),
            stdin: None,
            timeout: Duration::from_secs(5),
            grace: Duration::from_secs(1),
            drain: Duration::from_secs(1),
        };
        let err = run(&spec, |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("cannot start /nonexistent/prog"),
            "{err}"
        );
    }
}
