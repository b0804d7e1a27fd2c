//! The QEMU guest agent's commands as sdci uses them, and the command lines for programs in the
//! guest: pure functions, so the rules are tested without a guest.
//!
//! What the host expects from VMware guest operations, and how it is kept here:
//! - A program runs as the guest user with its arguments as one string under the guest's shell
//!   rules: `setsid [runuser -u USER --] env -- K=V… /bin/sh -c 'cd -- WD && exec PATH ARGS'`.
//!   `setsid` keeps the pid the agent reports and makes it a process group, so `terminate`
//!   reaches everything the program started.
//! - Exit codes: the agent's `exitcode`; a program ended by signal N reports 128 + N (as a shell
//!   would); the agent forgets a pid once it has reported its end, so the client remembers ends.
//! - An unknown pid (the guest rebooted, the agent restarted) is [`ProcessState::Lost`].
//!
//! [`ProcessState::Lost`]: sdci_hypervisor::ProcessState::Lost

use crate::config::GuestPrograms;
use base64::Engine as _;
use sdci_hypervisor::GuestProgram;
use serde_json::{json, Value};

/// Bytes per `guest-file-read`: base64 of it stays under 1 MiB, the smallest string limit of any
/// libvirt daemon's protocol (the reply is parsed on the host, at native speed).
pub const READ_CHUNK: usize = 512 * 1024;

/// Bytes per `guest-file-write`: the guest agent parses the JSON itself, which under TCG runs
/// at a few hundred KiB/s, so a chunk must parse well within one agent timeout.
pub const WRITE_CHUNK: usize = 48 * 1024;

/// `'…'` with embedded quotes closed, escaped and reopened: one word for any POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Refuses environment entries `env` would misread (no `=`, or an empty name).
pub fn check_env(env: &[String]) -> Result<(), String> {
    for e in env {
        match e.split_once('=') {
            Some((name, _)) if !name.is_empty() && !name.contains(char::is_whitespace) => {}
            _ => return Err(format!("environment entry {e:?} is not NAME=value")),
        }
    }
    Ok(())
}

/// The `guest-exec` path and argv that run `program` as `user`.
pub fn program_argv(
    p: &GuestPrograms,
    user: &str,
    program: &GuestProgram,
) -> (String, Vec<String>) {
    let cd = match &program.working_directory {
        Some(wd) => format!("cd -- {} || exit 127\n", shell_quote(wd)),
        None => "cd -- \"$HOME\" 2>/dev/null\n".to_string(),
    };
    let script = format!(
        "{cd}exec {} {}",
        shell_quote(&program.path),
        program.arguments
    );
    let mut argv = Vec::new();
    if user != "root" {
        argv.extend([p.runuser.clone(), "-u".into(), user.into(), "--".into()]);
    }
    argv.push(p.env.clone());
    argv.push("--".into());
    argv.extend(program.env.iter().cloned());
    argv.extend([p.shell.clone(), "-c".into(), script, "sdci".into()]);
    (p.setsid.clone(), argv)
}

/// The argv of a helper script run by the client itself (`sh -c SCRIPT sdci ARGS…`), as `user`
/// when it is not root.
pub fn helper_argv(
    p: &GuestPrograms,
    user: &str,
    script: &str,
    args: &[&str],
) -> (String, Vec<String>) {
    let mut argv = Vec::new();
    if user != "root" {
        argv.extend([p.runuser.clone(), "-u".into(), user.into(), "--".into()]);
    }
    argv.extend([p.shell.clone(), "-c".into(), script.into(), "sdci".into()]);
    argv.extend(args.iter().map(|a| a.to_string()));
    (p.setsid.clone(), argv)
}

/// TERM to the program's process group (and the pid itself), up to 2 s for it to go, then KILL.
pub const TERMINATE_SCRIPT: &str = r#"p=$1
kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || exit 0
i=0
while [ "$i" -lt 20 ]; do kill -0 "$p" 2>/dev/null || exit 0; sleep 0.1; i=$((i+1)); done
kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; exit 0"#;

/// `mkdir` whose existing directory is success (as `MakeDirectoryInGuest` with
/// `FileAlreadyExists` is to the host).
pub fn mkdir_script(parents: bool) -> String {
    format!(
        "[ -d \"$1\" ] && exit 0\nexec mkdir {}-- \"$1\"",
        if parents { "-p " } else { "" }
    )
}

/// The uploaded file belongs to the guest user, as a VMware upload made with that user's
/// credentials would.
/// Sets the guest's clock to `$1` seconds since the epoch: `date -s @N` means that to GNU
/// coreutils and to busybox alike.
pub const SET_CLOCK_SCRIPT: &str = r#"exec date -u -s "@$1" >/dev/null"#;

pub const CHOWN_SCRIPT: &str = r#"exec chown "$1:$(id -g "$1")" -- "$2""#;

pub fn exec_cmd(path: &str, argv: &[String]) -> Value {
    json!({"execute": "guest-exec", "arguments": {"path": path, "arg": argv, "capture-output": false}})
}

pub fn exec_status_cmd(pid: i64) -> Value {
    json!({"execute": "guest-exec-status", "arguments": {"pid": pid}})
}

pub fn parse_pid(ret: &Value) -> Result<i64, String> {
    ret.get("pid")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("guest-exec answered without a pid: {ret}"))
}

/// `None` while running, else the exit code (128 + signal for a signalled end).
pub fn parse_exec_status(ret: &Value) -> Result<Option<i32>, String> {
    let exited = ret
        .get("exited")
        .and_then(Value::as_bool)
        .ok_or_else(|| format!("guest-exec-status answered without `exited`: {ret}"))?;
    if !exited {
        return Ok(None);
    }
    let code = |k: &str| {
        ret.get(k)
            .and_then(Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
    };
    Ok(Some(match (code("signal"), code("exitcode")) {
        (Some(sig), _) => 128 + sig,
        (None, Some(c)) => c,
        (None, None) => 0,
    }))
}

/// The agent's word for a pid it does not know (libvirt passes its `desc` on in the message).
pub fn is_unknown_pid(message: &str) -> bool {
    message.contains("Invalid parameter 'pid'")
        || message.contains("PID") && message.contains("does not exist")
}

pub fn file_open_cmd(path: &str, mode: &str) -> Value {
    json!({"execute": "guest-file-open", "arguments": {"path": path, "mode": mode}})
}

pub fn file_write_cmd(handle: i64, data: &[u8]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    json!({"execute": "guest-file-write", "arguments": {"handle": handle, "buf-b64": b64}})
}

pub fn file_read_cmd(handle: i64) -> Value {
    json!({"execute": "guest-file-read", "arguments": {"handle": handle, "count": READ_CHUNK}})
}

pub fn file_close_cmd(handle: i64) -> Value {
    json!({"execute": "guest-file-close", "arguments": {"handle": handle}})
}

/// A `guest-file-read` answer: the bytes and whether the end was reached.
pub fn parse_read(ret: &Value) -> Result<(Vec<u8>, bool), String> {
    let b64 = ret.get("buf-b64").and_then(Value::as_str).unwrap_or("");
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("guest-file-read data is not base64: {e}"))?;
    let eof = ret
        .get("eof")
        .and_then(Value::as_bool)
        .unwrap_or(data.is_empty());
    Ok((data, eof))
}

/// `guest-file-write` answers how many bytes it took.
pub fn parse_write_count(ret: &Value) -> Result<usize, String> {
    ret.get("count")
        .and_then(Value::as_u64)
        .and_then(|c| usize::try_from(c).ok())
        .ok_or_else(|| format!("guest-file-write answered without a count: {ret}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(args: &str) -> GuestProgram {
        GuestProgram {
            path: "/usr/local/bin/sdci-dom0".into(),
            arguments: args.into(),
            env: vec!["A=1".into()],
            working_directory: Some("/home/user".into()),
        }
    }

    #[test]
    fn a_program_for_a_user_runs_through_setsid_runuser_env_and_the_shell() {
        let (path, argv) = program_argv(
            &GuestPrograms::default(),
            "user",
            &program("launch .sdci/jobs/x/job.json"),
        );
        assert_eq!(path, "/usr/bin/setsid");
        assert_eq!(
            argv,
            [
                "/usr/sbin/runuser",
                "-u",
                "user",
                "--",
                "/usr/bin/env",
                "--",
                "A=1",
                "/bin/sh",
                "-c",
                "cd -- '/home/user' || exit 127\nexec '/usr/local/bin/sdci-dom0' launch .sdci/jobs/x/job.json",
                "sdci"
            ]
        );
        let (_, root) = program_argv(&GuestPrograms::default(), "root", &program(""));
        assert_eq!(root[0], "/usr/bin/env");
    }

    #[test]
    fn quoting_survives_quotes_in_paths() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn environment_entries_must_be_assignments() {
        assert!(check_env(&["A=1".into(), "B=".into()]).is_ok());
        assert!(check_env(&["justaword".into()]).is_err());
        assert!(check_env(&["=x".into()]).is_err());
    }

    #[test]
    fn exit_status_reports_codes_signals_and_running() {
        assert_eq!(parse_exec_status(&json!({"exited": false})).unwrap(), None);
        assert_eq!(
            parse_exec_status(&json!({"exited": true, "exitcode": 3})).unwrap(),
            Some(3)
        );
        assert_eq!(
            parse_exec_status(&json!({"exited": true, "signal": 15})).unwrap(),
            Some(143)
        );
        assert_eq!(
            parse_exec_status(&json!({"exited": true})).unwrap(),
            Some(0)
        );
        assert!(parse_exec_status(&json!({})).is_err());
    }

    #[test]
    fn the_agents_unknown_pid_message_is_recognised() {
        assert!(is_unknown_pid(
            "internal error: unable to execute QEMU agent command 'guest-exec-status': Invalid parameter 'pid'"
        ));
        assert!(!is_unknown_pid("Guest agent is not responding"));
    }

    #[test]
    fn reads_decode_base64_and_eof() {
        let (d, eof) = parse_read(&json!({"count": 2, "buf-b64": "aGk=", "eof": true})).unwrap();
        assert_eq!((d.as_slice(), eof), (b"hi".as_slice(), true));
    }
}
