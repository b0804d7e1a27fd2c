//! The qrexec call to dom0: `qrexec-client-vm dom0 sdci.Run+<job id>`, the tarball written to
//! its stdin while its stdout (the event stream) is read concurrently, and the exit code read
//! as qrexec-client-vm(1) documents it (contracts §7).
//!
//! Invariants:
//! - stdin is closed as soon as the archive is written (dom0 reads to EOF); stdout is read on
//!   this thread the whole time, so neither direction's bounded vchan buffer can deadlock the
//!   other.
//! - An event stream that breaks its own rules (bad line, seq out of order) is not trusted
//!   further: the agent stops reading and closes stdout (dom0 keeps logging to its file and its
//!   exit code still tells the truth).
//! - 126 = refused by policy, 125 = qrexec could not set the call up, 127 = no `sdci.Run`
//!   service in dom0: each is an `error` with that reason, never a `failure`.

use crate::archive::{self, ArchiveStats, Compression};
use crate::error::{AgentError, Result};
use crate::relay::Spool;
use sdci_protocol::{EventKind, EventReader, JobId, Outcome};
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::process::{Command, Stdio};

/// What the call produced.
#[derive(Debug)]
pub struct CallResult {
    /// Exit code of the qrexec client, or 128 + signal.
    pub exit_code: i32,
    /// The `result` event, if one arrived.
    pub result: Option<(Outcome, String)>,
    /// Why reading the stream stopped early, if it did.
    pub stream_error: Option<String>,
    /// The archive's figures, or why writing it failed.
    pub archive: std::result::Result<ArchiveStats, String>,
}

/// Runs the call: `program target sdci.Run+<id>`.
pub fn call(
    program: &str,
    target: &str,
    id: &JobId,
    tree: &Path,
    compression: Compression,
    spool: &Spool,
) -> Result<CallResult> {
    let service = format!("sdci.Run+{id}");
    let mut child = Command::new(program)
        .arg(target)
        .arg(&service)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            AgentError::io(
                format!("cannot start {program:?} (is it installed and on PATH?)"),
                e,
            )
        })?;
    let stdin = child.stdin.take().expect("stdin was configured as a pipe");
    let stdout = child
        .stdout
        .take()
        .expect("stdout was configured as a pipe");
    let tree = tree.to_path_buf();
    let writer = std::thread::Builder::new()
        .name("archive-writer".into())
        .spawn(move || {
            // Dropping the returned writer closes the pipe: dom0 sees EOF.
            archive::write_archive(
                &tree,
                BufWriter::with_capacity(64 * 1024, stdin),
                compression,
            )
            .map(|(_, stats)| stats)
            .map_err(|e| e.to_string())
        })
        .map_err(|e| AgentError::io("starting the archive thread", e))?;

    let mut result = None;
    let mut stream_error = None;
    let mut reader = EventReader::new(BufReader::with_capacity(64 * 1024, stdout));
    loop {
        match reader.next_event() {
            Ok(Some(ev)) => {
                if let EventKind::Result { outcome, reason } = &ev.kind {
                    result = Some((*outcome, reason.clone()));
                }
                if let Err(e) = spool.push(&ev) {
                    stream_error = Some(e.to_string());
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                stream_error = Some(e.to_string());
                break;
            }
        }
    }
    drop(reader); // closes stdout if we stopped early
    let status = child
        .wait()
        .map_err(|e| AgentError::io(format!("waiting for {program}"), e))?;
    let exit_code = match status.code() {
        Some(c) => c,
        None => {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }
    };
    let archive = writer
        .join()
        .unwrap_or_else(|_| Err("the archive thread panicked".into()));
    Ok(CallResult {
        exit_code,
        result,
        stream_error,
        archive,
    })
}

/// The job's outcome and a one-line reason, from the call's exit code and result event.
pub fn outcome(call: &CallResult) -> (Outcome, String) {
    let code = call.exit_code;
    let by_code = match code {
        126 => return (Outcome::Error, "refused by policy: dom0's qrexec policy does not allow sdci.Run from this VM (qrexec exit 126)".into()),
        125 => return (Outcome::Error, "qrexec failure: the call to dom0 could not be set up (qrexec exit 125)".into()),
        127 => return (Outcome::Error, "qrexec failure: no sdci.Run service in dom0 (qrexec exit 127)".into()),
        0..=2 => Outcome::from_exit_code(code),
        c if c > 128 => return (Outcome::Error, format!("the qrexec call was killed by signal {}", c - 128)),
        c => return (Outcome::Error, format!("the qrexec call ended with unexpected exit code {c}")),
    };
    match &call.result {
        Some((o, reason)) if *o == by_code => (by_code, reason.clone()),
        Some((o, _)) => (
            Outcome::Error,
            format!(
                "dom0 exited with {code} but its result event says {}",
                o.as_str()
            ),
        ),
        None => {
            let why = call
                .stream_error
                .as_deref()
                .map(|e| format!(" (event stream: {e})"))
                .unwrap_or_default();
            (
                by_code,
                format!("dom0 exited with {code} without a result event{why}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_with(code: i32, result: Option<(Outcome, &str)>) -> CallResult {
        CallResult {
            exit_code: code,
            result: result.map(|(o, r)| (o, r.to_owned())),
            stream_error: None,
            archive: Ok(ArchiveStats::default()),
        }
    }

    #[test]
    fn qrexec_exit_codes_are_errors_with_their_reason() {
        for (code, words) in [
            (126, "refused by policy"),
            (125, "exit 125"),
            (127, "exit 127"),
        ] {
            let (o, reason) = outcome(&call_with(code, None));
            assert_eq!(o, Outcome::Error);
            assert!(reason.contains(words), "{code}: {reason}");
        }
    }

    #[test]
    fn dom0_exit_codes_map_to_outcomes_with_the_result_reason() {
        assert_eq!(
            outcome(&call_with(
                0,
                Some((Outcome::Success, "all 8 steps passed"))
            )),
            (Outcome::Success, "all 8 steps passed".into())
        );
        assert_eq!(
            outcome(&call_with(1, Some((Outcome::Failure, "make-test failed")))).0,
            Outcome::Failure
        );
        assert_eq!(outcome(&call_with(1, None)).0, Outcome::Failure);
        assert_eq!(
            outcome(&call_with(0, Some((Outcome::Failure, "x")))).0,
            Outcome::Error
        );
        assert_eq!(outcome(&call_with(137, None)).0, Outcome::Error);
        assert_eq!(outcome(&call_with(3, None)).0, Outcome::Error);
    }
}
