//! The job's record: timestamped lines appended to `<job dir>/log.txt`, and (for `sdci.Run`) the
//! same content as `protocol` events on stdout for the dev VM.
//!
//! Invariants: the file is the authoritative copy (the host downloads it). If stdout breaks (the
//! dev VM died), the first failure is noted in the file, events stop, and everything else goes
//! on: a broken stdout never changes the job's outcome. Text is ANSI-stripped by the caller and
//! control characters are escaped here (`sanitize_text`), in the file as in the events. Each line
//! is appended with one `write` to an `O_APPEND` file, so `launch` and `run` can share the file.
//! A line and the event it is emitted as carry one clock reading and the texts of
//! `protocol::logline`, so the host's live copy of the log (rendered from the events) reads
//! exactly as this file does.

use crate::error::{Error, Result};
use sdci_protocol::logline;
use sdci_protocol::{EventKind, EventWriter, Outcome, Utc};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub struct JobLog {
    file: Option<File>,
    events: Option<EventWriter<std::io::Stdout>>,
    /// Also print plain lines on stdout (for `launch`, whose stdout nobody parses).
    echo: bool,
}

impl JobLog {
    /// A log appending to `path` (created if missing), with events on stdout if `events`.
    pub fn open(path: &Path, events: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening the job log {}", path.display()), e))?;
        Ok(Self {
            file: Some(file),
            events: events.then(|| EventWriter::new(std::io::stdout())),
            echo: !events,
        })
    }

    /// Events on stdout only: for refusals before the job (and so its log file) is known.
    pub fn events_only() -> Self {
        Self {
            file: None,
            events: Some(EventWriter::new(std::io::stdout())),
            echo: false,
        }
    }

    /// A message from the service itself.
    pub fn note(&mut self, text: &str) {
        let ts = now_ms();
        self.line_at(ts, &logline::note(text));
        self.emit_at(
            EventKind::Log {
                step: None,
                text: text.to_owned(),
            },
            ts,
        );
    }

    /// A line tagged with where it came from (`launch` uses `[agent]`, `[qvm-start]`…).
    pub fn tagged(&mut self, tag: &str, text: &str) {
        self.line(&logline::step_line(tag, text));
    }

    pub fn step_started(&mut self, index: u32, total: usize, name: &str, argv: &[String]) {
        let ts = now_ms();
        self.line_at(ts, &logline::step_started(index, total, name, argv));
        self.emit_at(
            EventKind::StepStarted {
                step: index,
                name: name.to_owned(),
                argv: argv.to_vec(),
            },
            ts,
        );
    }

    pub fn step_line(&mut self, index: u32, name: &str, text: &str) {
        let ts = now_ms();
        self.line_at(ts, &logline::step_line(name, text));
        self.emit_at(
            EventKind::Log {
                step: Some(index),
                text: text.to_owned(),
            },
            ts,
        );
    }

    pub fn step_finished(
        &mut self,
        index: u32,
        name: &str,
        status: i32,
        timed_out: bool,
        took: Duration,
    ) {
        let ts = now_ms();
        let duration_ms = took.as_millis().min(u128::from(u64::MAX)) as u64;
        self.line_at(
            ts,
            &logline::step_finished(name, status, timed_out, duration_ms),
        );
        self.emit_at(
            EventKind::StepFinished {
                step: index,
                status,
                timed_out,
                duration_ms,
            },
            ts,
        );
    }

    pub fn result(&mut self, outcome: Outcome, reason: &str) {
        let ts = now_ms();
        self.line_at(ts, &logline::result(outcome, reason));
        self.emit_at(
            EventKind::Result {
                outcome,
                reason: reason.to_owned(),
            },
            ts,
        );
    }

    fn line(&mut self, text: &str) {
        self.line_at(now_ms(), text);
    }

    fn line_at(&mut self, ts_ms: u64, text: &str) {
        let line = logline::stamp(ts_ms, text);
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::error!("writing the job log failed: {e}");
            }
        }
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        }
    }

    fn emit_at(&mut self, kind: EventKind, ts_ms: u64) {
        let Some(w) = &mut self.events else { return };
        if let Err(e) = w.emit_at(kind, ts_ms) {
            self.events = None;
            self.line(&format!(
                "dom0: stdout to the dev VM is gone ({e}); continuing, this file has the rest"
            ));
        }
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

/// `2026-11-28T17:13:00.123Z`: RFC 3339 UTC to the millisecond (`protocol::time`).
pub fn timestamp(t: SystemTime) -> String {
    Utc::from_system_time(t).rfc3339_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_886_980_123);
        assert_eq!(timestamp(t), "2026-11-28T17:29:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_are_sanitized_in_the_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("log.txt");
        let mut log = JobLog::open(&p, false).unwrap();
        log.echo = false;
        log.tagged("agent", "bell\x07 and\nnewline");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.ends_with("[agent] bell\\x07 and\\x0anewline\n"),
            "{text}"
        );
    }
}
