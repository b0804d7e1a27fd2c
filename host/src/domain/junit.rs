//! JUnit XML (what pytest's `--junitxml` writes, and the Ant/Surefire dialect around it) read as
//! hostile input into [`TestCase`] rows.
//!
//! The file comes from the code under test (dom0 collected it after the project's own steps ran
//! with sudo), so it is untrusted: a streaming `quick-xml` reader (no DOM, no entity expansion),
//! with every dimension bounded by [`JunitLimits`]:
//! - bytes read (a longer file is cut there: the cases before the cut are kept, with a note);
//! - element depth, attributes looked at per element (duplicate-attribute checks off, so a tag
//!   of a million attributes costs one pass), cases per file;
//! - names, messages and failure texts capped in characters, control characters replaced;
//! - a `<!DOCTYPE` refuses the whole file (no DTD means no entities, so no billion laughs; the
//!   predefined entities and character references are all JUnit needs);
//! - invalid UTF-8 is replaced (U+FFFD) and noted, never an error.
//!
//! Why not `quick-junit`: it is not among the packages this project can reach, and what the host
//! needs is a bounded *reader* (its strength is writing); the rules above are a page over
//! `quick-xml`, which the workspace already builds.
//!
//! Invariant: [`parse`] never fails and never panics on input; everything it could not take is
//! a line in [`Parsed::notes`]. No I/O but reading the given reader.

use quick_xml::events::{BytesStart, Event};
use std::io::{BufRead, Read};

/// Bounds of one JUnit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JunitLimits {
    /// Bytes of XML read; the rest is not parsed.
    pub max_bytes: u64,
    /// Elements nested deeper than this refuse the rest of the file.
    pub max_depth: usize,
    /// Cases taken from one file.
    pub max_cases: usize,
    /// Characters of a suite, class or test name, and of a file path.
    pub max_name: usize,
    /// Characters of a failure's message (its `message` attribute).
    pub max_message: usize,
    /// Characters of a failure's text (the element's content: the traceback).
    pub max_text: usize,
}

impl Default for JunitLimits {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
            max_depth: 32,
            max_cases: 20_000,
            max_name: 1024,
            max_message: 4096,
            max_text: 16 * 1024,
        }
    }
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CaseOutcome {
    Passed,
    Skipped,
    Failed,
    Error,
}

impl CaseOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "passed" => Self::Passed,
            "skipped" => Self::Skipped,
            "failed" => Self::Failed,
            "error" => Self::Error,
            _ => return None,
        })
    }

    /// Failed or error: what fails a run.
    pub fn is_bad(self) -> bool {
        matches!(self, Self::Failed | Self::Error)
    }
}

/// One test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    /// The innermost `<testsuite name>` around it (empty when none).
    pub suite: String,
    /// `classname` (pytest: the module and class, dotted).
    pub classname: String,
    pub name: String,
    /// `file` when the producer wrote it (pytest's `xunit1` family does), relative as given.
    pub file: Option<String>,
    /// `line` as written: pytest writes its 0-based `location` line (see [`source_line`]).
    pub line: Option<u32>,
    pub outcome: CaseOutcome,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
    pub text: Option<String>,
}

impl TestCase {
    /// The test's identity across jobs: `classname::name`, or the name alone.
    pub fn key(&self) -> String {
        test_key(&self.classname, &self.name)
    }
}

/// A test's identity across jobs from its class name and name.
pub fn test_key(classname: &str, name: &str) -> String {
    if classname.is_empty() {
        name.to_owned()
    } else {
        format!("{classname}::{name}")
    }
}

/// What one file gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub cases: Vec<TestCase>,
    /// What was refused, cut or replaced, one sentence each, naming the file.
    pub notes: Vec<String>,
}

/// The 1-based line of the source file that a JUnit `line` attribute names. pytest's
/// `junitxml` writes the test item's `location`, whose line is 0-based (the `def` of
/// `test_x` on line 42 is written `line="41"`), so GitHub's `#L` anchors and check-run
/// annotations add one. The job page and the check run both use this one rule.
pub fn source_line(junit_line: u32) -> u32 {
    junit_line.saturating_add(1)
}

/// Replaces control characters (but tab and newline) with U+FFFD and cuts at `max` characters
/// (then `…` ends it).
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() && c != '\n' && c != '\t' {
            out.push('\u{fffd}');
        } else {
            out.push(c);
        }
    }
    out
}

/// A reader that stops (end of file) after `left` bytes and remembers that it did.
struct Capped<R> {
    inner: R,
    left: u64,
    hit: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One more byte tells a file of exactly the cap from a longer one.
            let mut probe = [0u8; 1];
            if !self.hit && self.inner.read(&mut probe)? > 0 {
                self.hit = true;
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Text of raw bytes: UTF-8 (invalid sequences replaced, `bad` set), XML escapes resolved
/// (an unknown entity leaves the text as written).
fn text_of(raw: &[u8], bad: &mut bool) -> String {
    let s = match std::str::from_utf8(raw) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => {
            *bad = true;
            String::from_utf8_lossy(raw)
        }
    };
    match quick_xml::escape::unescape(&s) {
        Ok(u) => u.into_owned(),
        Err(_) => s.into_owned(),
    }
}

/// Attributes looked at per element: JUnit uses a handful.
const MAX_ATTRIBUTES: usize = 32;

/// The attributes of `e` named in `want`, in that order.
fn attrs<const N: usize>(
    e: &BytesStart<'_>,
    want: [&str; N],
    bad: &mut bool,
) -> [Option<String>; N] {
    let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
    for a in e.attributes().with_checks(false).take(MAX_ATTRIBUTES) {
        let Ok(a) = a else { break };
        if let Some(i) = want.iter().position(|w| w.as_bytes() == a.key.as_ref()) {
            if out[i].is_none() {
                out[i] = Some(text_of(&a.value, bad));
            }
        }
    }
    out
}

fn seconds_to_ms(s: &str) -> Option<i64> {
    let t: f64 = s.trim().replace(',', "").parse().ok()?;
    if !t.is_finite() || t < 0.0 {
        return None;
    }
    Some((t * 1000.0).round().min(1e12) as i64)
}

/// Where the reader is inside the current case.
struct Open {
    case: TestCase,
    /// Collecting the text of a `failure`/`error`/`skipped` element.
    collecting: bool,
    text: String,
    text_chars: usize,
}

/// Reads one JUnit file named `source` (for the notes) from `input`.
pub fn parse<R: BufRead>(source: &str, input: R, limits: &JunitLimits) -> Parsed {
    let mut out = Parsed::default();
    let capped = Capped {
        inner: input,
        left: limits.max_bytes,
        hit: false,
    };
    let mut reader = quick_xml::Reader::from_reader(std::io::BufReader::new(capped));
    {
        let c = reader.config_mut();
        c.trim_text(false);
        c.check_end_names = false;
        c.expand_empty_elements = false;
    }
    let mut buf = Vec::new();
    let mut suites: Vec<String> = Vec::new();
    // The depth at which each open `testsuite` started, to pop it at its end.
    let mut suite_depths: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut open: Option<(usize, Open)> = None;
    let mut bad_utf8 = false;
    let mut too_many = false;
    let name = |s: Option<String>| s.map(|s| clean(&s, limits.max_name)).unwrap_or_default();
    let failure = loop {
        buf.clear();
        let ev = match reader.read_event_into(&mut buf) {
            Ok(ev) => ev,
            Err(e) => break Some(format!("not well-formed XML ({e})")),
        };
        match ev {
            Event::DocType(_) => {
                out.cases.clear();
                break Some(
                    "a <!DOCTYPE> is refused (no DTDs or entities in JUnit files); the file is \
                     not used"
                        .into(),
                );
            }
            Event::Start(e) => {
                depth += 1;
                if depth > limits.max_depth {
                    break Some(format!(
                        "elements nested deeper than {} are refused; the rest of the file is \
                         not used",
                        limits.max_depth
                    ));
                }
                match e.local_name().as_ref() {
                    b"testsuite" => {
                        let [n] = attrs(&e, ["name"], &mut bad_utf8);
                        suites.push(name(n));
                        suite_depths.push(depth);
                    }
                    b"testcase" if open.is_none() => {
                        open = Some((
                            depth,
                            Open {
                                case: start_case(&e, &suites, limits, &mut bad_utf8),
                                collecting: false,
                                text: String::new(),
                                text_chars: 0,
                            },
                        ));
                    }
                    tag @ (b"failure" | b"error" | b"skipped") => {
                        if let Some((_, o)) = open.as_mut() {
                            mark(&mut o.case, tag, &e, limits, &mut bad_utf8);
                            o.collecting = o.case.text.is_none();
                        }
                    }
                    _ => {}
                }
            }
            Event::Empty(e) => match e.local_name().as_ref() {
                b"testcase" if open.is_none() => {
                    if out.cases.len() >= limits.max_cases {
                        too_many = true;
                    } else {
                        out.cases
                            .push(start_case(&e, &suites, limits, &mut bad_utf8));
                    }
                }
                tag @ (b"failure" | b"error" | b"skipped") => {
                    if let Some((_, o)) = open.as_mut() {
                        mark(&mut o.case, tag, &e, limits, &mut bad_utf8);
                    }
                }
                _ => {}
            },
            Event::Text(t) => {
                if let Some((_, o)) = open.as_mut().filter(|(_, o)| o.collecting) {
                    append_text(o, &text_of(&t, &mut bad_utf8), limits.max_text);
                }
            }
            Event::CData(t) => {
                if let Some((_, o)) = open.as_mut().filter(|(_, o)| o.collecting) {
                    append_text(o, &text_of(&t, &mut bad_utf8), limits.max_text);
                }
            }
            Event::End(e) => {
                match e.local_name().as_ref() {
                    b"failure" | b"error" | b"skipped" => {
                        if let Some((_, o)) = open.as_mut().filter(|(_, o)| o.collecting) {
                            o.collecting = false;
                            let t = std::mem::take(&mut o.text);
                            if !t.trim().is_empty() {
                                o.case.text = Some(t);
                            }
                        }
                    }
                    b"testcase" if open.as_ref().is_some_and(|(d, _)| *d == depth) => {
                        if let Some((_, o)) = open.take() {
                            if out.cases.len() >= limits.max_cases {
                                too_many = true;
                            } else {
                                out.cases.push(o.case);
                            }
                        }
                    }
                    b"testsuite" if suite_depths.last() == Some(&depth) => {
                        suite_depths.pop();
                        suites.pop();
                    }
                    _ => {}
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break None,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    };
    let cut = reader.get_ref().get_ref().hit;
    if cut {
        out.notes.push(format!(
            "{source}: longer than {} bytes; cut there, the {} cases before the cut are kept",
            limits.max_bytes,
            out.cases.len()
        ));
    } else if let Some(why) = failure {
        let at = reader.buffer_position();
        out.notes.push(format!(
            "{source}: {why} (at byte {at}); {} cases before it are kept",
            out.cases.len()
        ));
    } else if open.is_some() || depth > 0 {
        out.notes.push(format!(
            "{source}: ends inside an element; {} cases kept",
            out.cases.len()
        ));
    }
    if too_many {
        out.notes.push(format!(
            "{source}: more than {} cases; only the first {} are kept",
            limits.max_cases, limits.max_cases
        ));
    }
    if bad_utf8 {
        out.notes
            .push(format!("{source}: invalid UTF-8 replaced with U+FFFD"));
    }
    out
}

fn start_case(
    e: &BytesStart<'_>,
    suites: &[String],
    limits: &JunitLimits,
    bad: &mut bool,
) -> TestCase {
    let [classname, name, file, line, time] =
        attrs(e, ["classname", "name", "file", "line", "time"], bad);
    let cap = |s: Option<String>| s.map(|s| clean(&s, limits.max_name));
    TestCase {
        suite: suites.last().cloned().unwrap_or_default(),
        classname: cap(classname).unwrap_or_default(),
        name: cap(name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "(unnamed)".into()),
        file: cap(file).filter(|f| !f.is_empty()),
        line: line.and_then(|l| l.trim().parse().ok()),
        outcome: CaseOutcome::Passed,
        duration_ms: time.as_deref().and_then(seconds_to_ms),
        message: None,
        text: None,
    }
}

/// A `failure`, `error` or `skipped` element inside a case: the worst outcome wins, the first
/// message is kept.
fn mark(case: &mut TestCase, tag: &[u8], e: &BytesStart<'_>, limits: &JunitLimits, bad: &mut bool) {
    let outcome = match tag {
        b"failure" => CaseOutcome::Failed,
        b"error" => CaseOutcome::Error,
        _ => CaseOutcome::Skipped,
    };
    if outcome > case.outcome {
        case.outcome = outcome;
    }
    if case.message.is_none() {
        let [message, kind] = attrs(e, ["message", "type"], bad);
        case.message = message
            .or(kind)
            .map(|m| clean(&m, limits.max_message))
            .filter(|m| !m.is_empty());
    }
}

fn append_text(o: &mut Open, t: &str, max: usize) {
    if o.text_chars > max {
        return;
    }
    let room = max - o.text_chars;
    let piece = clean(t, room);
    o.text_chars += piece.chars().count();
    o.text.push_str(&piece);
    if o.text_chars >= max {
        // `clean` ended the piece with `…`; never append again.
        o.text_chars = max + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(xml: &str) -> Parsed {
        parse("t.xml", xml.as_bytes(), &JunitLimits::default())
    }

    #[test]
    fn pytest_output_gives_one_row_per_case_with_its_outcome_message_file_and_line() {
        let p = run(r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="3.2">
<testcase classname="tests.test_vms" name="test_ok" file="tests/test_vms.py" line="12" time="0.50"/>
<testcase classname="tests.test_vms" name="test_bad" time="1.25"><failure message="assert 1 == 2">Traceback &lt;here&gt;
line two</failure><system-out>noise</system-out></testcase>
<testcase classname="tests.test_vms" name="test_err" time="0"><error message="fixture broke"/></testcase>
<testcase classname="tests.test_vms" name="test_skip"><skipped message="not on 4.3"/></testcase>
</testsuite></testsuites>"#);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let outcomes: Vec<_> = p.cases.iter().map(|c| c.outcome).collect();
        assert_eq!(
            outcomes,
            [
                CaseOutcome::Passed,
                CaseOutcome::Failed,
                CaseOutcome::Error,
                CaseOutcome::Skipped
            ]
        );
        let ok = &p.cases[0];
        assert_eq!(ok.key(), "tests.test_vms::test_ok");
        assert_eq!(ok.suite, "pytest");
        assert_eq!(
            (ok.file.as_deref(), ok.line, ok.duration_ms),
            (Some("tests/test_vms.py"), Some(12), Some(500))
        );
        let bad = &p.cases[1];
        assert_eq!(bad.message.as_deref(), Some("assert 1 == 2"));
        assert_eq!(bad.text.as_deref(), Some("Traceback <here>\nline two"));
        assert_eq!(p.cases[2].message.as_deref(), Some("fixture broke"));
    }

    #[test]
    fn a_doctype_refuses_the_file_so_entities_never_expand() {
        let lol = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<testsuite><testcase name="a"/><testcase name="&lol2;"/></testsuite>"#;
        let p = run(lol);
        assert!(p.cases.is_empty(), "{:?}", p.cases);
        assert!(p.notes[0].contains("DOCTYPE"), "{:?}", p.notes);
    }

    #[test]
    fn an_undeclared_entity_stays_as_written() {
        let p = run(r#"<testsuite><testcase name="x&lol9;y"/></testsuite>"#);
        assert_eq!(p.cases[0].name, "x&lol9;y");
    }

    #[test]
    fn deep_nesting_is_refused_past_the_limit_keeping_earlier_cases() {
        let mut xml = String::from("<testsuite><testcase name=\"before\"/>");
        for _ in 0..10_000 {
            xml.push_str("<a>");
        }
        let p = run(&xml);
        assert_eq!(p.cases.len(), 1);
        assert!(
            p.notes[0].contains("nested deeper than 32"),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_noted() {
        let mut xml = b"<testsuite><testcase name=\"caf".to_vec();
        xml.extend_from_slice(&[0xff, 0xfe]);
        xml.extend_from_slice(
            b"\"><failure message=\"m\xc3\">t\x80</failure></testcase></testsuite>",
        );
        let p = parse("t.xml", &xml[..], &JunitLimits::default());
        assert_eq!(p.cases.len(), 1);
        assert!(
            p.cases[0].name.starts_with("caf\u{fffd}"),
            "{}",
            p.cases[0].name
        );
        assert_eq!(p.cases[0].outcome, CaseOutcome::Failed);
        assert!(
            p.notes.iter().any(|n| n.contains("invalid UTF-8")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn a_file_past_the_byte_cap_is_cut_keeping_the_cases_before() {
        let mut xml = String::from("<testsuite>");
        for i in 0..1000 {
            xml.push_str(&format!("<testcase name=\"t{i}\"/>"));
        }
        xml.push_str("</testsuite>");
        let limits = JunitLimits {
            max_bytes: 2000,
            ..JunitLimits::default()
        };
        let p = parse("big.xml", xml.as_bytes(), &limits);
        assert!(
            p.cases.len() > 50 && p.cases.len() < 200,
            "{}",
            p.cases.len()
        );
        assert!(
            p.notes[0].contains("longer than 2000 bytes"),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn messages_and_texts_are_capped_and_controls_replaced() {
        let long = "x".repeat(100_000);
        let xml = format!(
            "<testsuite><testcase name=\"a\"><failure message=\"{long}\">{long}&#27;[2J</failure></testcase></testsuite>"
        );
        let p = run(&xml);
        let c = &p.cases[0];
        assert_eq!(c.message.as_ref().map(|m| m.chars().count()), Some(4097));
        assert_eq!(
            c.text.as_ref().map(|m| m.chars().count()),
            Some(16 * 1024 + 1)
        );
        let p = run("<testsuite><testcase name=\"a&#27;b\"/></testsuite>");
        assert_eq!(p.cases[0].name, "a\u{fffd}b");
    }

    #[test]
    fn a_million_attributes_on_one_tag_cost_one_pass() {
        let mut xml = String::from("<testsuite><testcase name=\"a\"");
        for i in 0..1_000_000 {
            xml.push_str(&format!(" a{i}=\"\""));
        }
        xml.push_str("/></testsuite>");
        let started = std::time::Instant::now();
        let p = parse(
            "t.xml",
            xml.as_bytes(),
            &JunitLimits {
                max_bytes: 64 * 1024 * 1024,
                ..JunitLimits::default()
            },
        );
        assert_eq!(p.cases.len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn garbage_is_a_note_not_a_panic() {
        for junk in [
            "",
            "<",
            "<<<>>>",
            "\0\0\0",
            "<testsuite><testcase",
            "</a></b>",
        ] {
            let p = run(junk);
            assert!(p.cases.is_empty(), "{junk:?}");
        }
        let p = run("<testsuite><testcase name=\"a\"><failure>x");
        assert!(p.cases.is_empty());
        assert!(!p.notes.is_empty());
    }
}
