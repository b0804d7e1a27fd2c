//! The check-run outbox worker (contracts §10): posts the store's unposted check-run updates
//! through `sdci-agent check-run`, and builds what a check run shows — its conclusion (one
//! table, [`conclusion`]), its title and its Markdown summary (the steps with durations and
//! outcomes, the failing step with the last lines of its log, the failed tests, the attempts and
//! why earlier ones ended), bounded to GitHub's limits (contracts §5).
//!
//! Invariants:
//! - Same shape as `statuses`: intent recorded before the gateway runs, the result after; a
//!   failure for now stays in the outbox, due again after a backoff (1 s doubling to 60 s) or a
//!   wake-up; a refusal is counted and after `jobs.status_refusals` given up with an alert. The
//!   job's outcome is already in the store, so a failed post loses nothing.
//! - A check run is created once its name is known (the job's Qubes version), with the newest
//!   phase; every later update uses the id the create returned (`store::checks`).
//! - What is shown is built from the store at post time (the job, its attempts and steps, the
//!   log file), so the completion always shows the job's final data.
//! - Never a green or neutral check for something that did not pass: an infrastructure error is
//!   `action_required`, a canceled job `cancelled`, a passed deadline `timed_out`; a failure is
//!   `neutral` only when every failed test is quarantined (`[tests] quarantine`, issue 19), with
//!   them listed.
//! - Every text is bounded before the call: the title to 255 characters, the summary to
//!   [`MAX_SUMMARY_BYTES`], cut on a character boundary with a note saying so.
//! - The completion annotates each failed test that has a file and a line ([`test_annotations`]:
//!   `failure`, or `warning` when quarantined), at most [`MAX_ANNOTATIONS`] in all (the summary
//!   says how many were left out), [`ANNOTATIONS_PER_CALL`] per call: the completing update
//!   carries the first ones, further updates with the same output carry the rest (GitHub
//!   appends them). Those further updates are sent once, right after the completion is posted,
//!   and not retried: a retry could not know which batches GitHub kept, and would annotate
//!   twice; a failed batch is logged and the rest skipped (the summary and the job page still
//!   list every failed test).

use crate::domain::JobState;
use crate::gateway::github::{
    CheckRunAction, CheckRunAnnotation, CheckRunOutput, CheckRunRequest, CheckRunTarget,
    GithubGateway,
};
use crate::gateway::GatewayFailure;
use crate::hub::Hub;
use crate::store::{AttemptRow, CheckPhase, JobRow, PendingCheck, StepRow};
use crate::Result;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

/// GitHub's limit on a check run's title (characters).
pub const MAX_TITLE_CHARS: usize = 255;
/// GitHub's limit on a check run's summary (bytes; contracts §5: 65,535).
pub const MAX_SUMMARY_BYTES: usize = 65_535;
/// Steps listed in the summary's table; more are counted, not listed.
pub const MAX_SUMMARY_STEPS: usize = 200;
/// Log lines of the failing step shown, each at most [`MAX_LOG_LINE_CHARS`].
pub const LOG_TAIL_LINES: usize = 40;
pub const MAX_LOG_LINE_CHARS: usize = 300;
/// GitHub's limit on annotations per create or update.
pub const ANNOTATIONS_PER_CALL: usize = 50;
/// Annotations sent for one job, in all (10 calls); more are counted in the summary.
pub const MAX_ANNOTATIONS: usize = 500;
/// An annotation's message: the failure's message and text, cut to this many characters: at
/// most 16 KiB as one JSON argv word (4 bytes a character at worst), well within GitHub's 64 KiB
/// and Linux's 128 KiB a word, and 50 of them under 1 MiB of the 2 MiB `ARG_MAX` beside the
/// 64 KiB summary.
pub const MAX_ANNOTATION_MESSAGE_CHARS: usize = 4_000;

/// How a check run concludes (GitHub's `conclusion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conclusion {
    Success,
    Failure,
    Cancelled,
    TimedOut,
    ActionRequired,
    /// Only quarantined tests failed (`[tests] quarantine`, issue 19): not a success.
    Neutral,
}

impl Conclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::ActionRequired => "action_required",
            Self::Neutral => "neutral",
        }
    }
}

/// The table of contracts §10: how an ended job concludes its check run. `deadline_passed`: the
/// job ended after its run deadline. `None` while the job has not ended.
pub fn conclusion(state: JobState, deadline_passed: bool) -> Option<Conclusion> {
    Some(match state {
        JobState::Success => Conclusion::Success,
        JobState::Failure => Conclusion::Failure,
        JobState::Canceled => Conclusion::Cancelled,
        JobState::Error if deadline_passed => Conclusion::TimedOut,
        JobState::Error => Conclusion::ActionRequired,
        _ => return None,
    })
}

/// The buttons of a completed check run. The identifier is what `requested_action` delivers
/// (`surface::webhook`); the next ones go here (GitHub allows three).
pub const COMPLETED_ACTIONS: &[(&str, &str, &str)] = &[
    (RERUN_ACTION, "Re-run", "Run this commit again in a new job"),
    (
        super::stages::RERUN_TESTS_ACTION,
        "Re-run tests",
        "Only the tests, on the provisioned VM",
    ),
];

/// The identifier of the "Re-run" action.
pub const RERUN_ACTION: &str = "rerun";

fn completed_actions() -> Vec<CheckRunAction> {
    COMPLETED_ACTIONS
        .iter()
        .map(|(identifier, label, description)| CheckRunAction {
            identifier: (*identifier).into(),
            label: (*label).into(),
            description: (*description).into(),
        })
        .collect()
}

/// Everything a check run shows of a job, read from the store and the log at post time.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub job: JobRow,
    /// Newest first.
    pub attempts: Vec<AttemptRow>,
    /// Every attempt's steps, by attempt then step.
    pub steps: Vec<StepRow>,
    /// The last lines of the failing step's log (of the last attempt), timestamps removed.
    pub log_tail: Vec<String>,
    /// The job ended after its run deadline.
    pub deadline_passed: bool,
    /// The job page.
    pub url: String,
    /// The test results (issue 19), when an attempt has them.
    pub tests: Option<super::results::TestsReport>,
    /// The job's stages, snapshot and re-run links (issue 18), when it has stages.
    pub stages: Option<super::stages::StagesReport>,
    /// The failed tests' annotations at file:line (issue 19), at most [`MAX_ANNOTATIONS`].
    pub annotations: Vec<CheckRunAnnotation>,
    /// Failed tests with a file and line beyond [`MAX_ANNOTATIONS`], not annotated.
    pub annotations_left_out: usize,
}

impl JobReport {
    /// Reads a job's report from the hub's store and logs; `None` if the job is gone.
    pub fn read(hub: &Hub, id: &str) -> Result<Option<Self>> {
        let Some(job) = hub.store.job(id)? else {
            return Ok(None);
        };
        let attempts = hub.store.attempts_of(id)?;
        let steps = hub.store.steps_of(id)?;
        let deadline_passed = hub
            .store
            .launch_state(id)?
            .and_then(|l| l.run_deadline_ms)
            .is_some_and(|d| job.state.is_terminal() && job.updated_ms >= d);
        let tests = super::results::report(&hub.store, &hub.cfg, &job)?;
        let (annotations, annotations_left_out) = test_annotations(hub, id)?;
        let mut report = Self {
            annotations,
            annotations_left_out,
            tests,
            stages: super::stages::StagesReport::read(&hub.store, id)?,
            url: format!("{}/jobs/{}", hub.cfg.public_url, job.id),
            job,
            attempts,
            steps,
            log_tail: Vec::new(),
            deadline_passed,
        };
        if let Some(step) = report.failing_step() {
            let name = step.name.clone();
            let path = crate::joblog::log_path(&hub.cfg.log_dir(), id);
            if let Ok(Some(lines)) = hub.logs.tail(&path, 2_000, 1 << 20) {
                report.log_tail = step_tail(&lines.lines, &name);
            }
        }
        Ok(Some(report))
    }

    /// The steps of the last attempt that has any.
    pub fn last_steps(&self) -> Vec<&StepRow> {
        let Some(last) = self.steps.iter().map(|s| s.attempt).max() else {
            return Vec::new();
        };
        self.steps.iter().filter(|s| s.attempt == last).collect()
    }

    /// The first step of the last attempt that failed or timed out.
    pub fn failing_step(&self) -> Option<&StepRow> {
        self.last_steps()
            .into_iter()
            .find(|s| s.timed_out == Some(true) || s.status.is_some_and(|c| c != 0))
    }

    pub fn conclusion(&self) -> Option<Conclusion> {
        match conclusion(self.job.state, self.deadline_passed) {
            // A failure whose only failed tests are quarantined: neutral, listed, never green.
            Some(Conclusion::Failure)
                if self.tests.as_ref().is_some_and(|t| t.only_quarantined) =>
            {
                Some(Conclusion::Neutral)
            }
            c => c,
        }
    }
}

/// A path GitHub can annotate: relative to the repository's root, `/`-separated, no empty, `.`
/// or `..` part, no backslash or control character (a JUnit file's `file` comes from the VM).
pub fn annotatable_path(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\\')
        && !p.chars().any(char::is_control)
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

/// The annotations of job `id`'s failed and errored tests (its newest attempt with results)
/// that have a file and a line: one each, at most [`MAX_ANNOTATIONS`]; the second value counts
/// those left out. The JUnit `line` is pytest's, 0-based (pytest writes `item.location`'s
/// line): the annotation's line is one more, the `def` line of the test.
pub fn test_annotations(hub: &Hub, id: &str) -> Result<(Vec<CheckRunAnnotation>, usize)> {
    let Some(attempt) = hub.store.result_attempts(id)?.into_iter().next() else {
        return Ok((Vec::new(), 0));
    };
    let mut out = Vec::new();
    let mut left_out = 0;
    for t in hub.store.test_cases(id, attempt)? {
        let c = &t.case;
        let (Some(file), Some(line)) = (&c.file, c.line) else {
            continue;
        };
        if !c.outcome.is_bad() || !annotatable_path(file) {
            continue;
        }
        if out.len() >= MAX_ANNOTATIONS {
            left_out += 1;
            continue;
        }
        let quarantined = hub.cfg.tests.quarantine_entry(&t.key).is_some();
        let mut message = c.outcome.as_str().to_owned();
        for part in [&c.message, &c.text].into_iter().flatten() {
            message.push_str("\n\n");
            message.push_str(part);
        }
        let message = crate::domain::junit::clean(message.trim_end(), MAX_ANNOTATION_MESSAGE_CHARS);
        let suffix = if quarantined { " (quarantined)" } else { "" };
        let line = crate::domain::junit::source_line(line);
        out.push(CheckRunAnnotation {
            path: file.clone(),
            start_line: line,
            end_line: line,
            annotation_level: if quarantined { "warning" } else { "failure" }.into(),
            title: Some(cut_chars(
                &format!("{} {}{suffix}", t.key, c.outcome.as_str()),
                MAX_TITLE_CHARS,
            )),
            message,
        });
    }
    Ok((out, left_out))
}

/// The further updates that carry annotations beyond the completing call's
/// [`ANNOTATIONS_PER_CALL`]: the same status, conclusion and output on run `id`, the buttons
/// left as they are, [`ANNOTATIONS_PER_CALL`] each.
pub fn annotation_batches(
    completion: &CheckRunRequest,
    id: u64,
    annotations: &[CheckRunAnnotation],
) -> Vec<CheckRunRequest> {
    annotations
        .chunks(ANNOTATIONS_PER_CALL)
        .skip(1)
        .map(|batch| CheckRunRequest {
            target: CheckRunTarget::Update { id },
            actions: None,
            annotations: batch.to_vec(),
            ..completion.clone()
        })
        .collect()
}

/// The last [`LOG_TAIL_LINES`] lines tagged `[name]` (dom0's step lines), without timestamp and
/// tag, each cut to [`MAX_LOG_LINE_CHARS`]; the log's last lines if none is tagged.
pub fn step_tail(lines: &[String], name: &str) -> Vec<String> {
    let tag = format!("[{name}] ");
    let text = |l: &String| l.split_once(' ').map_or(l.clone(), |(_, t)| t.to_owned());
    let tagged: Vec<String> = lines
        .iter()
        .map(text)
        .filter_map(|t| t.strip_prefix(&tag).map(str::to_owned))
        .collect();
    let pick = if tagged.is_empty() {
        lines.iter().map(text).collect()
    } else {
        tagged
    };
    let skip = pick.len().saturating_sub(LOG_TAIL_LINES);
    pick.into_iter()
        .skip(skip)
        .map(|l| cut_chars(&l, MAX_LOG_LINE_CHARS))
        .collect()
}

fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` safe inside a Markdown table cell or a line of prose: no line breaks, `|`, `` ` ``,
/// `*`, `_`, `[`, `]`, `<`, `>` and `\` escaped (names and reasons come from the VM).
pub fn md_inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            '|' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '\\' | '#' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A fenced code block around `lines`, its fence longer than any run of backticks inside.
fn code_block(lines: &[String]) -> String {
    let mut longest = 0;
    for l in lines {
        let mut run = 0;
        for c in l.chars() {
            run = if c == '`' { run + 1 } else { 0 };
            longest = longest.max(run);
        }
    }
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}text\n{}\n{fence}\n", lines.join("\n"))
}

/// `1m 05s`, `12.3 s`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        let s = ms / 1000;
        if s < 3600 {
            format!("{}m {:02}s", s / 60, s % 60)
        } else {
            format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
        }
    }
}

fn step_outcome(s: &StepRow) -> &'static str {
    match (s.status, s.timed_out) {
        (_, Some(true)) => "⏱ timed out",
        (Some(0), _) => "✓ passed",
        (Some(_), _) => "✗ failed",
        (None, _) if s.started_ms.is_some() => "… did not finish",
        (None, _) => "– skipped",
    }
}

/// The steps of the last attempt as a table.
pub fn steps_section(r: &JobReport) -> Option<String> {
    let steps = r.last_steps();
    if steps.is_empty() {
        return None;
    }
    let attempt = steps[0].attempt;
    let mut out = format!(
        "### Steps (attempt {attempt})\n\n| # | step | result | duration |\n|---|---|---|---|\n"
    );
    if let Some(line) = r.stages.as_ref().and_then(|st| st.links_line()) {
        out.insert_str(0, &line);
    }
    let mut stage: Option<&str> = None;
    for s in steps.iter().take(MAX_SUMMARY_STEPS) {
        // Grouped by stage (issue 18): a row naming the stage before its first step.
        if let Some(st) = r.stages.as_ref().and_then(|st| st.stage_of(s.step)) {
            if stage != Some(st) {
                let _ = writeln!(out, "| | **stage {}** | | |", md_inline(st));
                stage = Some(st);
            }
        }
        let result = match s.status {
            Some(c) if c != 0 && s.timed_out != Some(true) => {
                format!("{} (exit status {c})", step_outcome(s))
            }
            _ => step_outcome(s).to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.step + 1,
            md_inline(&s.name),
            result,
            s.duration_ms.map(duration).unwrap_or_else(|| "–".into())
        );
    }
    if steps.len() > MAX_SUMMARY_STEPS {
        let _ = writeln!(
            out,
            "\n… and {} more steps (on the job page)",
            steps.len() - MAX_SUMMARY_STEPS
        );
    }
    Some(out)
}

/// The failing step, with the last lines of its log.
pub fn failing_step_section(r: &JobReport) -> Option<String> {
    let s = r.failing_step()?;
    let how = match (s.status, s.timed_out) {
        (_, Some(true)) => "timed out".to_owned(),
        (Some(c), _) => format!("failed with exit status {c}"),
        (None, _) => "did not finish".to_owned(),
    };
    let mut out = format!("### Failing step: {} ({how})\n\n", md_inline(&s.name));
    if r.log_tail.is_empty() {
        let _ = writeln!(
            out,
            "No log lines of it were kept; see the [job page]({}).",
            r.url
        );
    } else {
        let _ = writeln!(
            out,
            "The last {} lines of its log ([whole log]({})):\n",
            r.log_tail.len(),
            r.url
        );
        out.push_str(&code_block(&r.log_tail));
    }
    Some(out)
}

/// The failed tests of the job (issue 19, test results): the place their section goes, between
/// the failing step and the attempts. `None` until the job's data has test results.
pub fn failed_tests_section(r: &JobReport) -> Option<String> {
    let mut out = r
        .tests
        .as_ref()
        .map(|t| super::results::markdown(t, &r.url))?;
    let n = r.annotations.len();
    if n > 0 {
        let _ = writeln!(out, "\n{n} failed test(s) annotated at their file:line.");
    }
    if r.annotations_left_out > 0 {
        let _ = writeln!(
            out,
            "{} more failed test(s) not annotated: at most {MAX_ANNOTATIONS} annotations per \
             check run; all are on the [job page]({}#tests).",
            r.annotations_left_out, r.url
        );
    }
    Some(out)
}

/// Every attempt and how it ended, oldest first.
pub fn attempts_section(r: &JobReport) -> Option<String> {
    if r.attempts.is_empty() {
        return None;
    }
    let mut out = String::from("### Attempts\n\n");
    for a in r.attempts.iter().rev() {
        let took = a
            .ended_ms
            .map(|e| format!(", {}", duration(e - a.started_ms)))
            .unwrap_or_default();
        let how = match a.result.as_deref() {
            None => "running".to_owned(),
            Some("done") => match (&a.outcome, &a.reason) {
                (Some(o), Some(reason)) => format!("{o}: {}", md_inline(reason)),
                (Some(o), None) => o.clone(),
                _ => "ended".to_owned(),
            },
            Some("infra") => format!(
                "infrastructure failure: {}",
                md_inline(a.error.as_deref().unwrap_or("?"))
            ),
            Some("outage") => format!(
                "cut short by a hypervisor outage (not counted): {}",
                md_inline(a.error.as_deref().unwrap_or("?"))
            ),
            Some("restart") => "ended by a host restart (not counted)".to_owned(),
            Some("yielded") => "its VM was another instance's (not counted)".to_owned(),
            Some("canceled") => "canceled".to_owned(),
            Some(other) => md_inline(other),
        };
        let _ = writeln!(
            out,
            "{}. on `{}`{took}: {how}",
            a.attempt,
            md_inline(&a.vm).replace('`', "'")
        );
    }
    Some(out)
}

/// The title of a completed check run.
pub fn completed_title(r: &JobReport) -> String {
    let note = r.job.note.as_deref().unwrap_or("");
    let title = match r.conclusion() {
        Some(Conclusion::Success) => {
            let n = r.last_steps().len();
            if n > 0 {
                format!("Passed: all {n} steps")
            } else {
                "Passed".to_owned()
            }
        }
        Some(Conclusion::Failure) => match r.failing_step() {
            Some(s) => format!("Failed: step {}", s.name),
            None => format!("Failed: {note}"),
        },
        Some(Conclusion::Cancelled) => format!("Cancelled: {note}"),
        Some(Conclusion::TimedOut) => format!("Timed out: {note}"),
        Some(Conclusion::ActionRequired) => format!("Infrastructure error: {note}"),
        Some(Conclusion::Neutral) => "Neutral: only quarantined tests failed".to_owned(),
        None => note.to_owned(),
    };
    cut_chars(title.trim_end_matches([':', ' ']), MAX_TITLE_CHARS)
}

/// The Markdown summary of a completed check run, bounded to [`MAX_SUMMARY_BYTES`].
pub fn completed_summary(r: &JobReport) -> String {
    let j = &r.job;
    let verdict = match r.conclusion() {
        Some(Conclusion::Success) => "**Passed.**",
        Some(Conclusion::Failure) => "**Failed**: a step of the project failed.",
        Some(Conclusion::Cancelled) => "**Cancelled**: nothing was decided about the project.",
        Some(Conclusion::TimedOut) => "**Timed out**: the job's run deadline passed.",
        Some(Conclusion::Neutral) => {
            "**Neutral**: only quarantined tests failed (listed below); this is not a success."
        }
        Some(Conclusion::ActionRequired) => {
            "**Infrastructure error**: nothing was decided about the project; press Re-run to \
             try again."
        }
        None => "",
    };
    let mut out = format!(
        "{verdict} {}\n\nJob [{}]({}) · Qubes {} · commit `{}`",
        md_inline(j.note.as_deref().unwrap_or("")),
        j.id,
        r.url,
        md_inline(j.version.as_deref().unwrap_or("?")),
        j.sha.short()
    );
    let ran: i64 = r
        .attempts
        .iter()
        .filter_map(|a| a.ended_ms.map(|e| e - a.started_ms))
        .sum();
    if ran > 0 {
        let _ = write!(out, " · {} on VMs", duration(ran));
    }
    out.push_str("\n\n");
    let sections = [
        steps_section(r),
        failing_step_section(r),
        failed_tests_section(r),
        attempts_section(r),
    ];
    for s in sections.into_iter().flatten() {
        out.push_str(&s);
        out.push('\n');
    }
    bound_summary(out, &r.url)
}

/// The fence of the code block still open at the end of `text`, if any (CommonMark: a line of
/// three or more backticks opens one, a line of at least as many closes it).
fn open_fence(text: &str) -> Option<String> {
    let mut open: Option<usize> = None;
    for line in text.lines() {
        let ticks = line.chars().take_while(|c| *c == '`').count();
        match open {
            None if ticks >= 3 => open = Some(ticks),
            Some(n) if ticks >= n && line.trim_end().chars().all(|c| c == '`') => open = None,
            _ => {}
        }
    }
    open.map(|n| "`".repeat(n))
}

/// Cuts `text` to [`MAX_SUMMARY_BYTES`] on a character boundary, ending with a note that says
/// so and where the rest is (after closing a code block the cut left open).
pub fn bound_summary(text: String, url: &str) -> String {
    if text.len() <= MAX_SUMMARY_BYTES {
        return text;
    }
    let note = format!(
        "\n\n… cut to GitHub's limit of {MAX_SUMMARY_BYTES} bytes; everything is on the [job \
         page]({url}).\n"
    );
    // Room for the note and a closing fence (a fence is at most one longer than the longest
    // run of backticks, which the cut text may hold; 64 covers every fence this host writes).
    let mut end = MAX_SUMMARY_BYTES.saturating_sub(note.len() + 66);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text[..end].to_owned();
    if let Some(fence) = open_fence(&out) {
        out.push('\n');
        out.push_str(&fence.chars().take(64).collect::<String>());
    }
    out.push_str(&note);
    out
}

/// What one update sends: title and summary for a phase before completion.
fn progress_output(r: &JobReport, p: &PendingCheck) -> CheckRunOutput {
    let j = &r.job;
    let version = j.version.as_deref().unwrap_or("?");
    let (title, lead) = match p.phase {
        CheckPhase::Queued if p.note == "queued" => (
            "Queued".to_owned(),
            format!("Waiting for a Qubes {} VM.", md_inline(version)),
        ),
        CheckPhase::Queued => (
            cut_chars(&format!("Queued again: {}", p.note), MAX_TITLE_CHARS),
            md_inline(&p.note),
        ),
        _ => {
            let vm = j.vm.as_deref().unwrap_or("a VM");
            (
                cut_chars(&format!("Running on {vm}"), MAX_TITLE_CHARS),
                format!("Running on `{}`.", md_inline(vm).replace('`', "'")),
            )
        }
    };
    let mut summary = format!(
        "{lead}\n\nJob [{}]({}) · commit `{}`\n\n",
        j.id,
        r.url,
        j.sha.short()
    );
    if let Some(a) = attempts_section(r) {
        summary.push_str(&a);
    }
    CheckRunOutput {
        title,
        summary: bound_summary(summary, &r.url),
        text: None,
    }
}

fn rfc3339(ms: i64) -> String {
    sdci_protocol::Utc::from_unix_millis(ms).rfc3339()
}

/// The `check-run` call for update `p` of `r`'s job, under `name` when it creates the run.
pub fn request(r: &JobReport, p: &PendingCheck, name: &str) -> CheckRunRequest {
    let j = &r.job;
    let target = match p.run_id {
        Some(id) => CheckRunTarget::Update { id },
        None => CheckRunTarget::Create {
            sha: j.sha.to_string(),
            name: name.to_owned(),
        },
    };
    let first_start = r.attempts.iter().map(|a| a.started_ms).min();
    let mut req = CheckRunRequest {
        repo: j.repo.to_string(),
        target,
        status: p.phase.as_str().to_owned(),
        conclusion: None,
        details_url: Some(r.url.clone()),
        external_id: Some(j.id.to_string()),
        started_at: None,
        completed_at: None,
        output: None,
        actions: None,
        annotations: Vec::new(),
    };
    match p.phase {
        CheckPhase::Queued => req.output = Some(progress_output(r, p)),
        CheckPhase::InProgress => {
            req.started_at = Some(rfc3339(first_start.unwrap_or(p.at_ms).min(p.at_ms)));
            req.output = Some(progress_output(r, p));
            // "Hold VM" (issue 18): keep the VM on when the job ends, for debugging.
            req.actions = Some(vec![CheckRunAction {
                identifier: super::stages::HOLD_ACTION.into(),
                label: "Hold VM".into(),
                description: "Keep this VM on for 4 h when it ends".into(),
            }]);
        }
        CheckPhase::Completed => {
            // A completion before the job's end cannot happen (the store queues it in the
            // job's ending transaction); a run without a conclusion is refused by GitHub.
            let c = r.conclusion().unwrap_or(Conclusion::ActionRequired);
            req.conclusion = Some(c.as_str().to_owned());
            req.started_at = first_start.map(rfc3339);
            req.completed_at = Some(rfc3339(p.at_ms));
            req.output = Some(CheckRunOutput {
                title: completed_title(r),
                summary: completed_summary(r),
                text: None,
            });
            // The first batch; the rest follow the completion (`annotation_batches`).
            req.annotations = r
                .annotations
                .iter()
                .take(ANNOTATIONS_PER_CALL)
                .cloned()
                .collect();
            req.actions = Some(completed_actions());
            // "Re-run tests" only while there is a provisioned snapshot (issue 18).
            if let Some(a) = req.actions.as_mut() {
                let snapshot = r.stages.as_ref().is_some_and(|s| s.snapshot);
                a.retain(|a| snapshot || a.identifier != super::stages::RERUN_TESTS_ACTION);
            }
        }
    }
    req
}

/// What one pass over the outbox did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub posted: usize,
    /// Something failed for now: its row is due again after a backoff.
    pub retry_later: bool,
}

fn backoff_ms(tries: u32) -> i64 {
    (1000i64 << tries.min(6)).min(60_000)
}

/// Posts every due update in the outbox, in order.
pub async fn drain_checks(hub: &Hub, agent: &GithubGateway) -> Result<Drained> {
    let mut done = Drained::default();
    for p in hub.store.unposted_checks(crate::now_ms())? {
        let Some(report) = JobReport::read(hub, &p.job_id)? else {
            hub.store.check_gave_up(p.id, "the job is gone")?;
            continue;
        };
        let j = &report.job;
        // The name needs the version: the create waits for it (the intake wakes the worker).
        let version = match (&j.version, j.state.is_terminal()) {
            (Some(v), _) => v.clone(),
            (None, true) => hub.cfg.default_version.clone(),
            (None, false) if p.run_id.is_some() => hub.cfg.default_version.clone(),
            (None, false) => continue,
        };
        if !hub.store.check_posting(p.id)? {
            continue;
        }
        // A matrix cell's job is named from its cell (`sdci / 4.3 / dev`, issue 20).
        let cell = super::matrix::job_cell(hub, p.job_id.as_str()).map(|c| c.0);
        let name = super::matrix::report_name(&hub.cfg, cell.as_deref())
            .unwrap_or_else(|| hub.cfg.agent.check_name_for(&version));
        let req = request(&report, &p, &name);
        match agent.check_run(&req).await {
            Ok(id) => {
                let created = p.run_id.is_none().then_some((id, name.as_str()));
                hub.store.check_posted(p.id, created)?;
                hub.health.set_gateway(true, "");
                done.posted += 1;
                tracing::info!(job = %p.job_id, phase = p.phase.as_str(), check_run = id,
                    conclusion = req.conclusion.as_deref().unwrap_or(""), "check run posted");
                if p.phase == CheckPhase::Completed {
                    post_annotation_batches(agent, &report, &req, id).await;
                }
            }
            Err(e) => {
                let next = crate::now_ms() + backoff_ms(p.tries);
                match e.kind() {
                    GatewayFailure::Unavailable | GatewayFailure::Other => {
                        if e.kind() == GatewayFailure::Unavailable {
                            hub.health.set_gateway(false, &e.to_string());
                        }
                        tracing::warn!(job = %p.job_id, phase = p.phase.as_str(), error = %e,
                            "posting the check run failed; it stays in the outbox and is retried");
                        hub.store.check_failed(p.id, &e.to_string(), next)?;
                        done.retry_later = true;
                        // The rest would fail the same way; they wait for the next pass.
                        return Ok(done);
                    }
                    GatewayFailure::Refused => {
                        hub.health.set_gateway(true, "");
                        let refusals = hub.store.check_refused(p.id, &e.to_string(), next)?;
                        tracing::warn!(job = %p.job_id, phase = p.phase.as_str(), refusals,
                            error = %e, "the check run was refused");
                        if refusals >= hub.cfg.jobs.status_refusals {
                            hub.store.check_gave_up(p.id, &e.to_string())?;
                            hub.alert(
                                &format!("check:{}", p.job_id),
                                &format!(
                                    "GitHub keeps refusing the {} check run of job {} ({}@{}); \
                                     given up: {e}",
                                    p.phase.as_str(),
                                    p.job_id,
                                    j.repo,
                                    j.sha.short()
                                ),
                            );
                        } else {
                            done.retry_later = true;
                        }
                    }
                }
            }
        }
    }
    Ok(done)
}

/// Sends the annotations beyond the completion's first batch, once each (module doc: a retry
/// would annotate twice); stops at the first failure, logged.
async fn post_annotation_batches(
    agent: &GithubGateway,
    r: &JobReport,
    completion: &CheckRunRequest,
    id: u64,
) {
    let batches = annotation_batches(completion, id, &r.annotations);
    let total = batches.len();
    for (i, b) in batches.iter().enumerate() {
        if let Err(e) = agent.check_run(b).await {
            tracing::warn!(job = %r.job.id, check_run = id, batch = i + 2, of = total + 1,
                error = %e, "posting annotations failed; the rest are not sent");
            return;
        }
    }
    if total > 0 {
        tracing::info!(job = %r.job.id, check_run = id, annotations = r.annotations.len(),
            calls = total + 1, "annotations posted");
    }
}

/// The outbox worker: drains on every wake-up (`Hub::checks`, notified wherever the status
/// outbox is, and by the version intake and the reconciler), and when a backoff ends.
pub async fn check_worker(hub: Arc<Hub>) {
    if let Err(e) = hub.store.check_outbox_begin() {
        tracing::error!(error = %e, "check-run outbox");
    }
    let agent = hub.github.clone();
    loop {
        if let Err(e) = drain_checks(&hub, &agent).await {
            tracing::error!(error = %e, "check-run outbox");
        }
        let now = crate::now_ms();
        match hub.store.next_check_due_ms(now) {
            Ok(Some(due)) => {
                let wait = Duration::from_millis((due - now).clamp(1, 60_000) as u64);
                tokio::select! {
                    _ = hub.checks.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Ok(None) => hub.checks.notified().await,
            Err(e) => {
                tracing::error!(error = %e, "check-run outbox");
                tokio::select! {
                    _ = hub.checks.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdci_protocol::Reason;

    fn job(state: JobState, note: &str) -> JobRow {
        JobRow {
            seq: 1,
            id: "aaaaaaa-0123456789".parse().unwrap(),
            repo: "o/r".parse().unwrap(),
            sha: "a".repeat(40).parse().unwrap(),
            reason: Reason::Push,
            branch: Some("main".into()),
            supersede_key: None,
            clone_url: "https://example/o/r.git".into(),
            version: Some("4.2".into()),
            snapshot: None,
            update_first: false,
            state,
            note: Some(note.into()),
            attempts: 2,
            vm: Some("vm-b".into()),
            pid: None,
            event_next_seq: 0,
            cancel_requested: None,
            created_ms: 1_000,
            updated_ms: 90_000,
            deadline_ms: None,
            commit_author: None,
            commit_subject: None,
        }
    }

    fn step(attempt: u32, step: u32, name: &str, status: Option<i32>) -> StepRow {
        StepRow {
            attempt,
            step,
            name: name.into(),
            started_ms: Some(10_000),
            duration_ms: status.map(|_| 1_500),
            status,
            timed_out: Some(false),
        }
    }

    fn report(state: JobState, note: &str, steps: Vec<StepRow>) -> JobReport {
        JobReport {
            tests: None,
            stages: None,
            annotations: Vec::new(),
            annotations_left_out: 0,
            job: job(state, note),
            attempts: vec![
                AttemptRow {
                    attempt: 2,
                    vm: "vm-b".into(),
                    started_ms: 30_000,
                    ended_ms: Some(90_000),
                    result: Some("done".into()),
                    error: None,
                    outcome: Some("failure".into()),
                    reason: Some("step \"make-test\" failed with exit status 2".into()),
                },
                AttemptRow {
                    attempt: 1,
                    vm: "vm-a".into(),
                    started_ms: 2_000,
                    ended_ms: Some(20_000),
                    result: Some("infra".into()),
                    error: Some("sdci-dom0 launch exited 2 (infrastructure)".into()),
                    outcome: None,
                    reason: None,
                },
            ],
            steps,
            log_tail: vec!["FAILED test_x - assert 1 == 2".into()],
            deadline_passed: false,
            url: "http://ci/jobs/aaaaaaa-0123456789".into(),
        }
    }

    #[test]
    fn the_conclusion_tells_the_truth_and_is_never_green_for_what_did_not_pass() {
        use Conclusion::*;
        let table = [
            (JobState::Success, false, Some(Success)),
            (JobState::Failure, false, Some(Failure)),
            (JobState::Failure, true, Some(Failure)),
            (JobState::Canceled, false, Some(Cancelled)),
            (JobState::Canceled, true, Some(Cancelled)),
            (JobState::Error, true, Some(TimedOut)),
            (JobState::Error, false, Some(ActionRequired)),
            (JobState::Queued, false, None),
            (JobState::Running, true, None),
        ];
        for (state, late, want) in table {
            assert_eq!(conclusion(state, late), want, "{state:?} late={late}");
        }
        assert_eq!(ActionRequired.as_str(), "action_required");
        assert_eq!(TimedOut.as_str(), "timed_out");
    }

    #[test]
    fn a_failure_names_the_failing_step_and_shows_its_log_and_every_attempt() {
        let steps = vec![
            step(1, 0, "fetch", None),
            step(2, 0, "fetch", Some(0)),
            step(2, 1, "make-test", Some(2)),
            step(2, 2, "after", None),
        ];
        let r = report(JobState::Failure, "step \"make-test\" failed", steps);
        assert_eq!(completed_title(&r), "Failed: step make-test");
        let s = completed_summary(&r);
        assert!(s.contains("### Steps (attempt 2)"), "{s}");
        assert!(s.contains("| 1 | fetch | ✓ passed | 1.5 s |"), "{s}");
        assert!(
            s.contains("| 2 | make-test | ✗ failed (exit status 2) | 1.5 s |"),
            "{s}"
        );
        assert!(
            s.contains("### Failing step: make-test (failed with exit status 2)"),
            "{s}"
        );
        assert!(
            s.contains("```text\nFAILED test\\_x - assert 1 == 2\n```")
                || s.contains("```text\nFAILED test_x - assert 1 == 2\n```"),
            "{s}"
        );
        assert!(s.contains("1. on `vm-a`, 18.0 s: infrastructure failure: sdci-dom0 launch exited 2 (infrastructure)"), "{s}");
        assert!(
            s.contains("2. on `vm-b`, 1m 00s: failure: step \"make-test\" failed"),
            "{s}"
        );
        assert!(s.contains("(http://ci/jobs/aaaaaaa-0123456789)"), "{s}");
        let p = PendingCheck {
            id: 1,
            job_id: r.job.id.clone(),
            phase: CheckPhase::Completed,
            note: "x".into(),
            at_ms: 90_000,
            tries: 0,
            refusals: 0,
            run_id: Some(7),
        };
        let req = request(&r, &p, "sdci / Qubes 4.2");
        assert_eq!(req.target, CheckRunTarget::Update { id: 7 });
        assert_eq!(req.conclusion.as_deref(), Some("failure"));
        assert_eq!(req.external_id.as_deref(), Some("aaaaaaa-0123456789"));
        assert_eq!(req.completed_at.as_deref(), Some("1970-01-01T00:01:30Z"));
        let actions = req.actions.unwrap();
        assert_eq!(
            (actions[0].identifier.as_str(), actions[0].label.as_str()),
            ("rerun", "Re-run")
        );
    }

    #[test]
    fn an_infrastructure_error_is_action_required_with_the_reason_in_the_title() {
        let r = report(
            JobState::Error,
            "infrastructure error after 3 attempts: sdci-dom0 launch exited 2",
            vec![],
        );
        assert_eq!(r.conclusion(), Some(Conclusion::ActionRequired));
        assert_eq!(
            completed_title(&r),
            "Infrastructure error: infrastructure error after 3 attempts: sdci-dom0 launch exited 2"
        );
        assert!(completed_summary(&r).contains("press Re-run"));
    }

    #[test]
    fn the_summary_is_cut_on_a_character_boundary_with_a_note_and_the_title_to_255_chars() {
        let url = "http://ci/jobs/x";
        let big = format!("```text\n{}", "é".repeat(40_000));
        let s = bound_summary(big, url);
        assert!(s.len() <= MAX_SUMMARY_BYTES, "{}", s.len());
        assert!(s.ends_with(&format!("everything is on the [job page]({url}).\n")));
        assert!(
            s.contains("é\n```\n\n… cut"),
            "the code block is closed before the note"
        );
        assert_eq!(open_fence(&s), None);
        let small = bound_summary("short".into(), url);
        assert_eq!(small, "short");
        let mut r = report(JobState::Canceled, &"x".repeat(400), vec![]);
        assert_eq!(completed_title(&r).chars().count(), MAX_TITLE_CHARS);
        // Many long steps and long lines still fit.
        r.steps = (0..5_000)
            .map(|i| step(2, i, &"n".repeat(200), Some(1)))
            .collect();
        r.log_tail = vec!["`".repeat(10); 40];
        let s = completed_summary(&r);
        assert!(s.len() <= MAX_SUMMARY_BYTES);
        assert!(s.contains("more steps (on the job page)"));
    }

    #[test]
    fn only_paths_inside_the_repository_are_annotated_and_batches_are_fifty() {
        for ok in ["tests/test_vms.py", "a", ".github/x.py"] {
            assert!(annotatable_path(ok), "{ok}");
        }
        for bad in [
            "", "/abs.py", "../x.py", "a/../b", "a//b", "./a", "a\\b", "a\nb",
        ] {
            assert!(!annotatable_path(bad), "{bad:?}");
        }
        let r = report(JobState::Failure, "x", vec![]);
        let p = PendingCheck {
            id: 1,
            job_id: r.job.id.clone(),
            phase: CheckPhase::Completed,
            note: "x".into(),
            at_ms: 90_000,
            tries: 0,
            refusals: 0,
            run_id: None,
        };
        let a = CheckRunAnnotation {
            path: "a.py".into(),
            start_line: 1,
            end_line: 1,
            annotation_level: "failure".into(),
            title: None,
            message: "m".into(),
        };
        let mut r = r;
        r.annotations = vec![a; 120];
        let completion = request(&r, &p, "sdci / Qubes 4.2");
        assert_eq!(completion.annotations.len(), ANNOTATIONS_PER_CALL);
        let more = annotation_batches(&completion, 7, &r.annotations);
        assert_eq!(
            more.iter().map(|b| b.annotations.len()).collect::<Vec<_>>(),
            [50, 20]
        );
        assert!(more
            .iter()
            .all(|b| b.target == CheckRunTarget::Update { id: 7 }
                && b.actions.is_none()
                && b.output == completion.output
                && b.conclusion.as_deref() == Some("failure")));
    }

    #[test]
    fn names_from_the_vm_cannot_break_the_markdown() {
        assert_eq!(md_inline("a|b`c\nd*"), "a\\|b\\`c d\\*");
        let block = code_block(&["x ``` y".into()]);
        assert!(block.starts_with("````text\n"), "{block}");
    }

    #[test]
    fn the_log_tail_is_the_failing_steps_own_lines() {
        let lines: Vec<String> = (0..100)
            .map(|i| {
                let tag = if i % 2 == 0 { "[make-test]" } else { "[other]" };
                format!("2026-12-01T00:00:00.000Z {tag} line {i}")
            })
            .collect();
        let t = step_tail(&lines, "make-test");
        assert_eq!(t.len(), LOG_TAIL_LINES);
        assert_eq!(t.last().map(String::as_str), Some("line 98"));
        let untagged = step_tail(&["2026 plain".into()], "make-test");
        assert_eq!(untagged, ["plain"]);
    }
}
