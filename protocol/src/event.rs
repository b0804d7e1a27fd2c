//! The event stream: dom0 → sd-dev → host, one JSON object per line (NDJSON).
//!
//! ```text
//! {"v":1,"seq":0,"ts_ms":1732800000000,"kind":{"type":"step_started","step":0,"name":"os-release","argv":["cat","/etc/os-release"]}}
//! {"v":1,"seq":1,"ts_ms":1732800000003,"kind":{"type":"log","step":0,"text":"NAME=Fedora"}}
//! {"v":1,"seq":2,"ts_ms":1732800000004,"kind":{"type":"step_finished","step":0,"status":0,"timed_out":false,"duration_ms":4}}
//! {"v":1,"seq":3,"ts_ms":1732800000005,"kind":{"type":"result","outcome":"success","reason":"all 1 steps passed"}}
//! ```
//!
//! Invariants:
//! - `seq` starts at 0 and grows by one per event from one writer; receivers deduplicate by it.
//! - Every string field of every event (step names, argv words, log text, result reasons) is
//!   sanitized on encode *and* on decode, so a hostile stream from the dev VM cannot drive a
//!   terminal (ESC/CSI/OSC sequences, C1 controls such as U+009B CSI and U+009D OSC), forge a
//!   line in a log file or a listing (CR, LF, U+0085, U+2028, U+2029), or reorder displayed text
//!   (bidirectional controls): such characters are shown as `\xNN` or `\u{NNNN}`
//!   ([`sanitize_field`]). Log text keeps tab; the one-line fields escape it too.
//! - Every string field is capped after escaping, with a visible marker: step names at
//!   [`MAX_STEP_NAME`] bytes, argv at [`MAX_ARGV_WORDS`] words of [`MAX_ARGV_WORD`] bytes, log
//!   text at [`MAX_LOG_TEXT`], reasons at [`MAX_REASON`]. Sanitizing is idempotent, so an event
//!   that is decoded and encoded again (the agent relaying dom0's stream) is unchanged.
//! - No line is longer than [`MAX_EVENT_LINE`]; [`EventReader`] refuses longer or torn lines with
//!   an error after reading at most that many bytes, never panicking or allocating without bound.

use crate::outcome::Outcome;
use crate::ProtocolError;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Event format version carried in every line's `v`.
pub const EVENT_VERSION: u32 = 1;
/// The longest line (without its newline) a reader accepts.
pub const MAX_EVENT_LINE: usize = 64 * 1024;
/// Log text longer than this (in bytes, after escaping) is cut, marker included.
pub const MAX_LOG_TEXT: usize = 8 * 1024;
/// A step name longer than this (bytes, after escaping) is cut, marker included.
pub const MAX_STEP_NAME: usize = 128;
/// An argv word longer than this (bytes, after escaping) is cut, marker included.
pub const MAX_ARGV_WORD: usize = 512;
/// At most this many argv words are kept; the last one says how many were dropped.
pub const MAX_ARGV_WORDS: usize = 32;
/// A result reason longer than this (bytes, after escaping) is cut, marker included.
pub const MAX_REASON: usize = 1024;
/// What a cut field ends with.
pub const TRUNCATED: &str = "…[truncated]";

// The caps keep every sanitized event, JSON-escaped (at most two bytes per byte), inside a line.
const _: () = assert!(
    2 * (MAX_STEP_NAME + MAX_ARGV_WORDS * MAX_ARGV_WORD + MAX_LOG_TEXT + MAX_REASON) + 1024
        < MAX_EVENT_LINE
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub v: u32,
    pub seq: u64,
    /// Milliseconds since the Unix epoch, stamped by the writer.
    pub ts_ms: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventKind {
    /// Step `step` (0-based index into the job's steps) began.
    StepStarted {
        step: u32,
        name: String,
        argv: Vec<String>,
    },
    /// One line of output. `step` is `None` for the service's own messages (unpacking, refusals).
    Log { step: Option<u32>, text: String },
    /// Step `step` ended. `status` is the exit code, or 128+signal for a signal death.
    StepFinished {
        step: u32,
        status: i32,
        timed_out: bool,
        duration_ms: u64,
    },
    /// The job's end, always the last event of a stream.
    Result { outcome: Outcome, reason: String },
}

impl Event {
    /// Encodes as one line, including the trailing `\n`.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(&self.clone().sanitized()).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Decodes one line (without or with its newline).
    pub fn from_line(line: &[u8]) -> Result<Self, ProtocolError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.len() > MAX_EVENT_LINE {
            return Err(ProtocolError::LineTooLong {
                limit: MAX_EVENT_LINE,
            });
        }
        let ev: Event =
            serde_json::from_slice(line).map_err(|e| ProtocolError::Json(e.to_string()))?;
        if ev.v != EVENT_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                found: ev.v,
                supported: EVENT_VERSION,
            });
        }
        Ok(ev.sanitized())
    }

    /// Every string field escaped and capped (the module's invariants). Idempotent.
    pub fn sanitized(mut self) -> Self {
        match &mut self.kind {
            EventKind::StepStarted { name, argv, .. } => {
                *name = sanitize_field(name, MAX_STEP_NAME);
                *argv = sanitize_argv(argv);
            }
            EventKind::Log { text, .. } => *text = sanitize_text(text),
            EventKind::StepFinished { .. } => {}
            EventKind::Result { reason, .. } => *reason = sanitize_field(reason, MAX_REASON),
        }
        self
    }
}

/// Log text: control characters other than tab escaped (see [`sanitize_field`]), cut at
/// [`MAX_LOG_TEXT`] bytes. Idempotent.
pub fn sanitize_text(text: &str) -> String {
    sanitize(text, MAX_LOG_TEXT, true)
}

/// A one-line field: every control character (tab included), line and paragraph separator and
/// bidirectional control shown as `\xNN` (C0, DEL) or `\u{NNNN}` (the rest), then cut to at most
/// `max` bytes, [`TRUNCATED`] included. Idempotent for the same `max`.
pub fn sanitize_field(text: &str, max: usize) -> String {
    sanitize(text, max, false)
}

/// At most [`MAX_ARGV_WORDS`] words, each a [`sanitize_field`] of [`MAX_ARGV_WORD`]; when words
/// are dropped the last kept slot says how many. Idempotent.
pub fn sanitize_argv(argv: &[String]) -> Vec<String> {
    let words = |a: &[String]| -> Vec<String> {
        a.iter().map(|w| sanitize_field(w, MAX_ARGV_WORD)).collect()
    };
    if argv.len() <= MAX_ARGV_WORDS {
        return words(argv);
    }
    let keep = MAX_ARGV_WORDS - 1;
    let mut out = words(&argv[..keep]);
    out.push(format!("…[{} more words]", argv.len() - keep));
    out
}

/// Characters that must never reach a terminal, a log file or a listing unescaped.
fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL, C1 (U+0080–U+009F, including U+0085 NEL, U+009B CSI, U+009D OSC)
        || matches!(c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{061c}' | '\u{200e}' | '\u{200f}' // bidirectional marks
            | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' // embeddings, overrides, isolates
        )
}

fn sanitize(text: &str, max: usize, keep_tab: bool) -> String {
    let limit = max.saturating_sub(TRUNCATED.len());
    let mut out = String::with_capacity(text.len().min(max));
    // Where `out` may be cut: the end of the last whole (escaped) character that fits `limit`.
    let mut fits = 0;
    for c in text.chars() {
        match c {
            '\t' if keep_tab => out.push(c),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
        if out.len() <= limit {
            fits = out.len();
        }
        if out.len() > max {
            break;
        }
    }
    if out.len() > max {
        out.truncate(fits);
        out.push_str(TRUNCATED);
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes events as NDJSON, numbering them from 0 and flushing after each line.
pub struct EventWriter<W: Write> {
    out: W,
    next_seq: u64,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_seq: 0 }
    }

    /// Stamps, numbers and writes one event; returns it as written.
    pub fn emit(&mut self, kind: EventKind) -> std::io::Result<Event> {
        self.emit_at(kind, now_ms())
    }

    /// Numbers and writes one event stamped `ts_ms` (a writer that also logs the event as a line
    /// stamps both with one clock reading, [`crate::logline`]); returns it as written.
    pub fn emit_at(&mut self, kind: EventKind, ts_ms: u64) -> std::io::Result<Event> {
        let ev = Event {
            v: EVENT_VERSION,
            seq: self.next_seq,
            ts_ms,
            kind,
        };
        // The sequence number is used even if the write fails, so numbers stay unique.
        self.next_seq += 1;
        self.out.write_all(ev.to_line().as_bytes())?;
        self.out.flush()?;
        Ok(ev)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads NDJSON events from any `BufRead`, with a bounded line buffer.
///
/// After the first error the reader is finished: it yields `None` from then on, because a stream
/// that lied once is not trusted for the rest.
pub struct EventReader<R: BufRead> {
    input: R,
    line: Vec<u8>,
    done: bool,
}

impl<R: BufRead> EventReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: Vec::new(),
            done: false,
        }
    }

    /// The next event, `Ok(None)` at a clean end of stream (after a newline), or an error.
    pub fn next_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        if self.done {
            return Ok(None);
        }
        let r = self.read_line();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    fn read_line(&mut self) -> Result<Option<Event>, ProtocolError> {
        self.line.clear();
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ProtocolError::Io(e.to_string())),
            };
            if buf.is_empty() {
                return if self.line.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::TornLine {
                        len: self.line.len(),
                    })
                };
            }
            let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if self.line.len() + chunk.len() > MAX_EVENT_LINE {
                return Err(ProtocolError::LineTooLong {
                    limit: MAX_EVENT_LINE,
                });
            }
            self.line.extend_from_slice(chunk);
            let used = found.unwrap_or(buf.len());
            self.input.consume(used);
            if found.is_some() {
                return Event::from_line(&self.line).map(Some);
            }
        }
    }
}

impl<R: BufRead> Iterator for EventReader<R> {
    type Item = Result<Event, ProtocolError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_event().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log(text: &str) -> EventKind {
        EventKind::Log {
            step: Some(1),
            text: text.into(),
        }
    }

    #[test]
    fn writer_numbers_events_and_reader_reads_them_back() {
        let mut w = EventWriter::new(Vec::new());
        w.emit(EventKind::StepStarted {
            step: 0,
            name: "os".into(),
            argv: vec!["cat".into()],
        })
        .unwrap();
        w.emit(log("hello")).unwrap();
        w.emit(EventKind::Result {
            outcome: Outcome::Success,
            reason: "ok".into(),
        })
        .unwrap();
        let bytes = w.into_inner();
        let events: Vec<Event> = EventReader::new(&bytes[..]).map(|e| e.unwrap()).collect();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(events[1].kind, log("hello"));
    }

    #[test]
    fn control_characters_other_than_tab_are_escaped() {
        let ev = Event {
            v: 1,
            seq: 0,
            ts_ms: 0,
            kind: log("\x1b[31mred\x1b[0m\tok\r\u{85}\u{7f}"),
        };
        let back = Event::from_line(ev.to_line().as_bytes()).unwrap();
        assert_eq!(back.kind, log("\\x1b[31mred\\x1b[0m\tok\\x0d\\u{85}\\x7f"));
    }

    #[test]
    fn decoding_also_escapes_raw_control_characters() {
        let line =
            br#"{"v":1,"seq":0,"ts_ms":0,"kind":{"type":"log","step":null,"text":"a\u001bb"}}"#;
        let ev = Event::from_line(line).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Log {
                step: None,
                text: "a\\x1bb".into()
            }
        );
    }

    fn decoded(kind: EventKind) -> EventKind {
        // Encoded raw, as a hostile writer would (not through `to_line`, which sanitizes).
        let raw = serde_json::to_string(&Event {
            v: 1,
            seq: 0,
            ts_ms: 0,
            kind,
        })
        .unwrap();
        Event::from_line(raw.as_bytes()).unwrap().kind
    }

    #[test]
    fn a_forged_result_line_in_a_reason_cannot_survive_decode() {
        let kind = decoded(EventKind::Result {
            outcome: Outcome::Failure,
            reason: "step failed\n=== result: success\r=== result: success\u{2028}x\u{85}y".into(),
        });
        let EventKind::Result { reason, .. } = kind else {
            panic!("{kind:?}")
        };
        assert_eq!(
            reason,
            "step failed\\x0a=== result: success\\x0d=== result: success\\u{2028}x\\u{85}y"
        );
        assert!(reason.lines().count() == 1);
    }

    #[test]
    fn osc_52_and_csi_in_a_step_name_or_argv_cannot_survive_decode() {
        let osc52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07";
        let kind = decoded(EventKind::StepStarted {
            step: 0,
            name: format!("build{osc52}\x1b[2J\u{9d}52;c;eA==\u{9c}\u{9b}2J"),
            argv: vec![format!("make\t{osc52}"), "\u{202e}txt.exe".into()],
        });
        let EventKind::StepStarted { name, argv, .. } = kind else {
            panic!("{kind:?}")
        };
        assert_eq!(
            name,
            "build\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[2J\\u{9d}52;c;eA==\\u{9c}\\u{9b}2J"
        );
        assert_eq!(
            argv,
            [
                "make\\x09\\x1b]52;c;ZWNobyBwd25lZA==\\x07",
                "\\u{202e}txt.exe"
            ]
        );
    }

    #[test]
    fn every_string_field_is_capped_on_decode() {
        let kind = decoded(EventKind::StepStarted {
            step: 0,
            name: "n".repeat(5000),
            argv: vec!["\x1b".repeat(200); 40],
        });
        let EventKind::StepStarted { name, argv, .. } = kind else {
            panic!("{kind:?}")
        };
        assert!(
            name.len() <= MAX_STEP_NAME && name.ends_with(TRUNCATED),
            "{name}"
        );
        assert_eq!(argv.len(), MAX_ARGV_WORDS);
        assert_eq!(argv[MAX_ARGV_WORDS - 1], "…[9 more words]");
        assert!(argv[0].len() <= MAX_ARGV_WORD && argv[0].ends_with(TRUNCATED));
        assert!(
            argv[0].trim_end_matches(TRUNCATED).ends_with("\\x1b"),
            "cut between escapes"
        );
        let EventKind::Result { reason, .. } = decoded(EventKind::Result {
            outcome: Outcome::Error,
            reason: "r".repeat(50_000),
        }) else {
            panic!()
        };
        assert_eq!(reason.len(), MAX_REASON);
    }

    #[test]
    fn long_log_text_is_cut_so_lines_stay_under_the_cap() {
        let ev = Event {
            v: 1,
            seq: 0,
            ts_ms: 0,
            kind: log(&"\x01".repeat(100_000)),
        };
        let line = ev.to_line();
        assert!(line.len() < MAX_EVENT_LINE, "{}", line.len());
        assert!(Event::from_line(line.as_bytes()).is_ok());
    }

    #[test]
    fn oversized_line_is_an_error_not_an_allocation() {
        let mut big = vec![b'x'; MAX_EVENT_LINE + 1];
        big.push(b'\n');
        let mut r = EventReader::new(&big[..]);
        assert_eq!(
            r.next_event(),
            Err(ProtocolError::LineTooLong {
                limit: MAX_EVENT_LINE
            })
        );
        assert_eq!(
            r.next_event(),
            Ok(None),
            "reader is finished after an error"
        );
    }

    #[test]
    fn torn_last_line_is_an_error() {
        let mut w = EventWriter::new(Vec::new());
        w.emit(log("a")).unwrap();
        let mut bytes = w.into_inner();
        bytes.extend_from_slice(br#"{"v":1,"seq":1"#);
        let mut r = EventReader::new(&bytes[..]);
        assert!(r.next_event().unwrap().is_some());
        assert!(matches!(
            r.next_event(),
            Err(ProtocolError::TornLine { .. })
        ));
    }

    #[test]
    fn unknown_event_fields_and_versions_are_rejected() {
        let extra = br#"{"v":1,"seq":0,"ts_ms":0,"kind":{"type":"log","step":1,"text":"a","x":1}}"#;
        assert!(Event::from_line(extra).is_err());
        let v2 = br#"{"v":2,"seq":0,"ts_ms":0,"kind":{"type":"log","step":1,"text":"a"}}"#;
        assert_eq!(
            Event::from_line(v2),
            Err(ProtocolError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
    }

    fn arb_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Success),
            Just(Outcome::Failure),
            Just(Outcome::Error)
        ]
    }

    fn arb_kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            (any::<u32>(), ".*", proptest::collection::vec(".*", 0..40)).prop_map(
                |(step, name, argv)| EventKind::StepStarted {
                    step,
                    name: sanitize_field(&name, MAX_STEP_NAME),
                    argv: sanitize_argv(&argv),
                }
            ),
            (proptest::option::of(any::<u32>()), ".*").prop_map(|(step, text)| EventKind::Log {
                step,
                text: sanitize_text(&text)
            }),
            (any::<u32>(), any::<i32>(), any::<bool>(), any::<u64>()).prop_map(
                |(step, status, timed_out, duration_ms)| EventKind::StepFinished {
                    step,
                    status,
                    timed_out,
                    duration_ms
                }
            ),
            (arb_outcome(), ".*").prop_map(|(outcome, reason)| EventKind::Result {
                outcome,
                reason: sanitize_field(&reason, MAX_REASON)
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_valid_event_survives_encode_decode(seq in any::<u64>(), ts_ms in any::<u64>(), kind in arb_kind()) {
            let ev = Event { v: EVENT_VERSION, seq, ts_ms, kind };
            let line = ev.to_line();
            prop_assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            prop_assert_eq!(Event::from_line(line.as_bytes()).unwrap(), ev);
        }

        #[test]
        fn any_bytes_yield_events_or_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut n = 0;
            for item in EventReader::new(&bytes[..]) {
                n += 1;
                if item.is_err() { break; }
            }
            prop_assert!(n <= bytes.len() + 1);
        }

        #[test]
        fn sanitize_is_idempotent_and_leaves_no_controls(text in ".*") {
            let once = sanitize_text(&text);
            prop_assert_eq!(sanitize_text(&once), once.clone());
            prop_assert!(once.chars().all(|c| c == '\t' || !is_unsafe(c)));
            let field = sanitize_field(&text, 40);
            prop_assert_eq!(sanitize_field(&field, 40), field.clone());
            prop_assert!(field.len() <= 40 && !field.chars().any(is_unsafe));
        }

    }

    proptest! {
        // Long generated strings are slow to make in debug builds; 64 cases cover the classes.
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn any_decoded_event_has_only_safe_capped_fields(
            name in "(.|\u{1b}|\u{9d}|\u{2028}|\n){0,300}",
            words in proptest::collection::vec("(.|\u{1b}|\r|\u{85}){0,160}", 0..36),
            reason in "(.|\n|\u{2029}|\u{202e}){0,1500}",
        ) {
            for kind in [
                EventKind::StepStarted { step: 0, name: name.clone(), argv: words.clone() },
                EventKind::Result { outcome: Outcome::Failure, reason: reason.clone() },
            ] {
                let raw = serde_json::to_string(&Event { v: 1, seq: 0, ts_ms: 0, kind }).unwrap();
                let ev = Event::from_line(raw.as_bytes()).unwrap();
                let fields: Vec<&String> = match &ev.kind {
                    EventKind::StepStarted { name, argv, .. } => {
                        prop_assert!(name.len() <= MAX_STEP_NAME);
                        prop_assert!(argv.len() <= MAX_ARGV_WORDS);
                        prop_assert!(argv.iter().all(|w| w.len() <= MAX_ARGV_WORD));
                        std::iter::once(name).chain(argv).collect()
                    }
                    EventKind::Result { reason, .. } => {
                        prop_assert!(reason.len() <= MAX_REASON);
                        vec![reason]
                    }
                    _ => unreachable!(),
                };
                for f in fields {
                    prop_assert!(!f.chars().any(|c| c == '\t' || is_unsafe(c)), "{f:?}");
                }
                prop_assert_eq!(ev.clone().sanitized(), ev);
            }
        }
    }
}
