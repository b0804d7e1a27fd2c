//! The line format of a job's log (contracts §3): `<RFC 3339 UTC to the ms> <text>\n`, with the
//! texts dom0 writes for its own messages, the steps and the result.
//!
//! Two writers share it, so the log a viewer watches live is the log dom0 keeps: dom0's
//! `log.txt` writer (which stamps a line and the event it emits with one clock reading), and the
//! host's live copy, which renders each relayed [`Event`](crate::Event) from its `ts_ms`.
//!
//! Invariant: a line is one line. The whole text goes through
//! [`sanitize_text`](crate::event::sanitize_text) (control characters escaped, capped), so
//! nothing in a step name, an argv word, a log text or a reason can end a line or drive a
//! terminal.

use crate::event::sanitize_text;
use crate::{EventKind, Outcome, Utc};

/// One line of the log, newline included: the time, a space, the sanitized text.
pub fn stamp(ts_ms: u64, text: &str) -> String {
    let ts = Utc::from_unix_millis(i64::try_from(ts_ms).unwrap_or(i64::MAX)).rfc3339_millis();
    let mut line = String::with_capacity(ts.len() + text.len() + 2);
    line.push_str(&ts);
    line.push(' ');
    line.push_str(&sanitize_text(text));
    line.push('\n');
    line
}

/// A message of dom0's service itself (unpacking, refusals): `dom0: …`.
pub fn note(text: &str) -> String {
    format!("dom0: {text}")
}

/// A step begins: `==> step 3/8 make-dev: make dev` (numbered from 1).
pub fn step_started(index: u32, total: usize, name: &str, argv: &[String]) -> String {
    format!(
        "==> step {}/{total} {name}: {}",
        u64::from(index) + 1,
        argv.join(" ")
    )
}

/// One line a step printed: `[make-dev] text`.
pub fn step_line(name: &str, text: &str) -> String {
    format!("[{name}] {text}")
}

/// A step ended: `<== make-dev: exit status 0 after 1.2 s`, or `timed out, killed (status N)`.
pub fn step_finished(name: &str, status: i32, timed_out: bool, duration_ms: u64) -> String {
    let how = if timed_out {
        format!("timed out, killed (status {status})")
    } else {
        format!("exit status {status}")
    };
    format!(
        "<== {name}: {how} after {:.1} s",
        duration_ms as f64 / 1000.0
    )
}

/// The job's end: `result: success (all 8 steps passed)`.
pub fn result(outcome: Outcome, reason: &str) -> String {
    format!("result: {} ({reason})", outcome.as_str())
}

/// The text of an event as dom0's log writes it. `total` is the number of steps of the job and
/// `name` the name of the event's step (both unused by events that have no step).
pub fn event_text(kind: &EventKind, total: usize, name: &str) -> String {
    match kind {
        EventKind::StepStarted { step, name, argv } => step_started(*step, total, name, argv),
        EventKind::Log { step: None, text } => note(text),
        EventKind::Log {
            step: Some(_),
            text,
        } => step_line(name, text),
        EventKind::StepFinished {
            status,
            timed_out,
            duration_ms,
            ..
        } => step_finished(name, *status, *timed_out, *duration_ms),
        EventKind::Result { outcome, reason } => result(*outcome, reason),
    }
}

/// Where the text of a log line starts: after the timestamp and its space (`None` for a line
/// that does not start with one, such as the host's own `=== …` notes).
pub fn text_of(line: &str) -> Option<&str> {
    let (ts, text) = line.split_once(' ')?;
    let b = ts.as_bytes();
    let shaped = b.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19 | 23) || c.is_ascii_digit());
    shaped.then_some(text)
}

/// The step a line opens: `Some((number from 1, total))` for `==> step N/T …`.
pub fn step_opened(line: &str) -> Option<(u32, u32)> {
    let rest = text_of(line)?.strip_prefix("==> step ")?;
    let (nt, _) = rest.split_once(' ')?;
    let (n, t) = nt.split_once('/')?;
    Some((n.parse().ok()?, t.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_to_the_millisecond_and_sanitized() {
        assert_eq!(
            stamp(1_795_886_980_123, "[make-test] a\x1b[31mred\nb"),
            "2026-11-28T17:29:40.123Z [make-test] a\\x1b[31mred\\x0ab\n"
        );
    }

    #[test]
    fn events_read_as_dom0_writes_them() {
        let started = EventKind::StepStarted {
            step: 2,
            name: "make-dev".into(),
            argv: vec!["make".into(), "dev".into()],
        };
        assert_eq!(
            event_text(&started, 8, "ignored"),
            "==> step 3/8 make-dev: make dev"
        );
        let line = EventKind::Log {
            step: Some(2),
            text: "dev done".into(),
        };
        assert_eq!(event_text(&line, 8, "make-dev"), "[make-dev] dev done");
        let note = EventKind::Log {
            step: None,
            text: "unpacked".into(),
        };
        assert_eq!(event_text(&note, 8, ""), "dom0: unpacked");
        let done = EventKind::StepFinished {
            step: 2,
            status: 124,
            timed_out: true,
            duration_ms: 1250,
        };
        assert_eq!(
            event_text(&done, 8, "make-dev"),
            "<== make-dev: timed out, killed (status 124) after 1.2 s"
        );
        let end = EventKind::Result {
            outcome: Outcome::Failure,
            reason: "step make-test failed".into(),
        };
        assert_eq!(
            event_text(&end, 8, ""),
            "result: failure (step make-test failed)"
        );
    }

    #[test]
    fn the_text_and_the_step_of_a_line_are_found_after_its_timestamp() {
        let l = "2026-12-01T08:14:09.721Z ==> step 1/8 os-release: cat /etc/os-release";
        assert_eq!(step_opened(l), Some((1, 8)));
        assert_eq!(text_of(l).map(|t| &t[..4]), Some("==> "));
        assert_eq!(step_opened("=== attempt 1 on vm"), None);
        assert_eq!(
            step_opened("2026-12-01T08:14:09.721Z [x] ==> step 1/8 y"),
            None
        );
        assert_eq!(text_of("2026-12-01 08:14:09.721Z x"), None);
    }
}
