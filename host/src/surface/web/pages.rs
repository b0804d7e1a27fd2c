//! The HTML pages, as maud templates: `GET /jobs` (filters, paging) and `GET /jobs/{id}` (the
//! job, its attempts newest first with their steps and logs, its history).
//!
//! Invariants: every value goes through maud's escaping (`(expr)`); nothing is `PreEscaped`
//! but the constant doctype. Times are written as UTC with their epoch milliseconds in
//! `data-ms`, which `assets/sdci.js` turns into the viewer's zone; the page works without script
//! (the log tail is in the HTML, the raw log is linked). A log is never rendered whole: the
//! current attempt's last [`TAIL_LINES`] lines are, the rest loads on demand.

use super::ansi;
use super::model::{AttemptView, JobDetail, JobList, JobSummary, StepView};
use super::results::{Counts, HistoryView, RunView, TestsView};
use crate::joblog::LogLines;
use maud::{html, Markup, DOCTYPE};
use sdci_protocol::Utc;

/// Lines of the current attempt's log in the page itself.
pub const TAIL_LINES: u64 = 1000;
/// At most this much log text in the page itself.
pub const TAIL_BYTES: usize = 512 * 1024;

fn utc(ms: i64) -> Utc {
    Utc::from_unix_millis(ms)
}

/// A time the script shows in the viewer's zone (UTC without script).
fn time(ms: i64) -> Markup {
    let t = utc(ms);
    let text = t.rfc3339_millis();
    html! {
        time datetime=(t.rfc3339()) data-ms=(ms) {
            (text.get(..10).unwrap_or(&text)) " " (text.get(11..19).unwrap_or("")) " UTC"
        }
    }
}

/// `2 h 03 min`, `4 min 05 s`, `12.3 s`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/sdci.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/jobs" { "sdci" }
                    nav { a href="/jobs" { "Jobs" } }
                }
                main { (body) }
            }
        }
    }
}

fn badge(state: &str) -> Markup {
    html! { span class={ "badge s-" (state) } data-state=(state) { (state) } }
}

/// One log line: its number (an anchor) and its text with ANSI colours as classes.
pub fn line(prefix: &str, n: u64, text: &str) -> Markup {
    let id = format!("{prefix}{n}");
    html! {
        div.ln id=(id) {
            a.no href={ "#" (id) } { (n) }
            span.tx {
                @for run in ansi::runs(text) {
                    @if run.class.is_empty() { (run.text) } @else { span class=(run.class) { (run.text) } }
                }
            }
        }
    }
}

/// The anchor prefix of an attempt's lines: `L` for the current one, `A2-L` for attempt 2.
pub fn anchor_prefix(a: &AttemptView) -> String {
    if a.current {
        "L".into()
    } else {
        format!("A{}-L", a.attempt)
    }
}

fn step_icon(state: &str) -> &'static str {
    match state {
        "passed" => "✓",
        "failed" | "timed_out" => "✗",
        "running" => "●",
        "stopped" => "■",
        "skipped" => "–",
        _ => "○",
    }
}

fn step_item(
    s: &StepView,
    prefix: &str,
    failing: Option<u32>,
    step_tail: Option<&LogLines>,
) -> Markup {
    let failing = failing == Some(s.number);
    html! {
        li class={ "step st-" (s.state) } data-step=(s.number) {
            @if failing {
                details.failing open {
                    summary { (step_row(s, prefix)) }
                    @if let Some(t) = step_tail {
                        div.steptail {
                            @for (i, l) in t.lines.iter().enumerate() {
                                (line(&format!("{prefix}tail-"), t.from + i as u64 + 1, l))
                            }
                        }
                    }
                }
            } @else {
                (step_row(s, prefix))
            }
        }
    }
}

fn step_row(s: &StepView, prefix: &str) -> Markup {
    html! {
        span.icon { (step_icon(&s.state)) }
        span.name { (s.name) }
        span.sstate { (s.state.replace('_', " ")) @if let Some(st) = s.status { @if st != 0 { " (exit " (st) ")" } } }
        span.dur data-started=[s.started_ms.filter(|_| s.state == "running")] {
            @if let Some(d) = s.duration_ms { (duration(d)) }
        }
        @if let Some(l) = s.line { a.steplink href={ "#" (prefix) (l) } data-line=(l) { "log" } }
    }
}

/// The first step that did not pass, for an attempt that is over.
pub fn failing_step(a: &AttemptView) -> Option<u32> {
    a.steps
        .iter()
        .find(|s| matches!(s.state.as_str(), "failed" | "timed_out" | "stopped"))
        .map(|s| s.number)
}

fn attempt_section(
    d: &JobDetail,
    a: &AttemptView,
    tail: Option<&LogLines>,
    step_tail: Option<&LogLines>,
) -> Markup {
    let prefix = anchor_prefix(a);
    let live = a.current && a.ended_ms.is_none() && d.job.ended_ms.is_none();
    let failing = failing_step(a);
    let gen = a.log.as_ref().map(|l| l.generation).unwrap_or(0);
    html! {
        details.attempt open[a.current] id={ "attempt-" (a.attempt) } data-attempt=(a.attempt) {
            summary {
                span.aname { "Attempt " (a.attempt) } " on " code { (a.vm) } " "
                @if let Some(o) = &a.outcome { (badge(o)) } @else if let Some(r) = &a.result { (badge(r)) } @else if live { (badge(&d.job.state)) }
                " " span.dur data-started=[live.then_some(a.started_ms)] { (duration(a.duration_ms)) }
                " · started " (time(a.started_ms))
            }
            @if let Some(r) = &a.reason { p.reason { (r) } }
            @if let Some(e) = &a.error { p.error { (e) } }
            ol.steps { @for (i, s) in a.steps.iter().enumerate() {
                // Grouped by stage (issue 18): a heading before each stage's first step.
                @if let Some(st) = stage_heading(d, a, i) { li.stage { "Stage " strong { (st) } } }
                (step_item(s, &prefix, failing, step_tail))
            } }
            @if let Some(log) = &a.log {
                div.logtools {
                    a href=(log.raw_url) { "Raw" } " · "
                    a href=(log.download_url) download { "Download" } " · "
                    span.count { (log.lines) " lines" }
                    @if live { label.follow { input type="checkbox" checked; " follow" } }
                }
                div.log data-job=(d.job.id) data-attempt=(a.attempt) data-gen=(gen)
                    data-prefix=(prefix) data-live=(if live { "1" } else { "0" })
                    data-total=(log.lines)
                    data-from=(tail.map(|t| t.from).unwrap_or(log.lines))
                    data-next=(tail.map(|t| t.next()).unwrap_or(log.lines)) {
                    @if let Some(t) = tail {
                        @if t.from > 0 { button.earlier type="button" { "Show earlier lines (" (t.from) " more)" } }
                        div.lines {
                            @for (i, l) in t.lines.iter().enumerate() { (line(&prefix, t.from + i as u64 + 1, l)) }
                        }
                    } @else {
                        @if log.lines > 0 { button.earlier type="button" { "Show the log (" (log.lines) " lines)" } }
                        div.lines {}
                    }
                }
            } @else {
                p.nolog { "No log was kept for this attempt." }
            }
        }
    }
}

/// The stage whose first step is step `i` of attempt `a`, if it starts a stage.
fn stage_heading<'a>(d: &'a JobDetail, a: &AttemptView, i: usize) -> Option<&'a str> {
    let st = d.stages.as_ref()?;
    let of = |k: usize| st.stage_of(a.steps.get(k)?.number.checked_sub(1)?);
    let this = of(i)?;
    (i == 0 || of(i - 1) != Some(this)).then_some(this)
}

/// The stage facts (issue 18): the re-run's origin, the re-runs of this job, its snapshot.
fn stage_facts(d: &JobDetail) -> Markup {
    let Some(st) = &d.stages else { return html! {} };
    let id = &d.job.id;
    html! {
        @if let Some((o, from)) = &st.origin {
            dt { "Re-run of" } dd.rerunof { a href={ "/jobs/" (o) } { code { (o) } } " from stage " (from) " (its provisioned snapshot)" }
        }
        @if let Some(c) = &st.on_clone { dt { "Runs on" } dd.clone { (c) } }
        @if !st.reruns.is_empty() {
            dt { "Re-runs" } dd.reruns { @for r in &st.reruns { a href={ "/jobs/" (r) } { code { (r) } } " " } }
        }
        @if let Some(h) = &st.hold {
            dt { "Held" } dd.hold {
                "VM " code { (h.vm) } " kept on by " (h.who) " until " (time(h.until_ms))
                @if let Some(c) = &h.console { "; console " code { (c) } }
                "; " code { "sdci-host jobs release " (id) } " ends it, " code { "jobs hold " (id) " --for 4h" } " extends it"
            }
        }
        @if st.snapshot && st.origin.is_none() {
            dt { "Provisioned" } dd.provisioned { "snapshot kept; re-run the tests: " code { "sdci-host jobs rerun " (id) " --from test" } }
        }
    }
}

fn facts(d: &JobDetail) -> Markup {
    let j = &d.job;
    html! {
        dl.facts {
            dt { "Repository" } dd { a href=(d.links.repo) { (j.repo) } }
            dt { "Commit" } dd.commit {
                a.sha href=(d.links.commit) { code { (j.short_sha) } }
                @if let Some(s) = &j.subject { " " span.subject { (s) } }
                @if let Some(a) = &j.author { " by " span.author { (a) } }
            }
            @if let Some(pr) = j.pr {
                dt { "Pull request" } dd {
                    @if let Some(u) = &d.links.pull_request { a href=(u) { "#" (pr) } }
                    @if let Some(b) = &j.branch { " from " code.branch { (b) } }
                }
            } @else if let Some(b) = &j.branch {
                dt { "Branch" } dd { @if let Some(u) = &d.links.branch { a href=(u) { code.branch { (b) } } } }
            }
            dt { "Reason" } dd { (j.reason.replace('_', " ")) }
            dt { "Qubes" } dd { (j.version.as_deref().unwrap_or("not known yet")) }
            dt { "VM" } dd { (j.vm.as_deref().unwrap_or("none yet")) }
            dt { "Queued" } dd { (time(j.created_ms)) " " span.rel data-ms=(j.created_ms) {} }
            @if let Some(e) = j.ended_ms { dt { "Ended" } dd { (time(e)) } }
            dt { "Duration" } dd { span.dur data-started=[j.ended_ms.is_none().then_some(j.created_ms)] { (duration(j.duration_ms)) } }
            dt { "Attempts" } dd { (j.attempts) }
            @if let Some(q) = &d.queue {
                dt { "Queue" } dd.queue {
                    @if let (Some(p), Some(of)) = (q.position, q.of) { "position " (p) " of " (of) " · " }
                    "waiting for " (q.waiting_for)
                }
            }
            @if let Some(n) = &j.note { dt { "Note" } dd.note { (n) } }
            @if let Some(c) = &d.cancel_requested { dt { "Cancel" } dd { (c) } }
            (stage_facts(d))
        }
    }
}

/// Who is looking at a job page, for its buttons (`session`'s rule decides; this only shows).
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// Sign-in exists (`http.admin_token_file` is set).
    pub sign_in: bool,
    /// Signed in: the session's CSRF token, carried by every form.
    pub csrf: Option<String>,
    /// The last action's outcome, shown once.
    pub notice: Option<super::session::Notice>,
}

/// One button: a plain form posting to `/jobs/{id}/{action}` with the CSRF token and `extra`
/// hidden fields (it works without script).
fn action_form(
    id: &str,
    action: &str,
    class: &str,
    label: &str,
    csrf: &str,
    extra: &[(&str, &str)],
) -> Markup {
    html! {
        form.act method="post" action={ "/jobs/" (id) "/" (action) } {
            input type="hidden" name="csrf" value=(csrf);
            @for (k, v) in extra { input type="hidden" name=(k) value=(v); }
            button type="submit" class=(class) { (label) }
        }
    }
}

/// The job's buttons (issue 18), each shown only when it applies: Re-run (an ended job),
/// Re-run tests (its provisioned snapshot exists), Hold VM (not ended: the hold applies when it
/// ends, as `jobs hold` does) or Extend hold (held), Release (held), Cancel (not ended).
/// Signed out: a link to sign in; no sign-in configured: nothing (the facts show the commands).
fn actions_panel(d: &JobDetail, v: &Viewer) -> Markup {
    use crate::domain::JobState;
    let id = d.job.id.as_str();
    let state = JobState::parse(&d.job.state);
    let ended = state.is_some_and(JobState::is_terminal);
    let st = d.stages.as_ref();
    let held = st.is_some_and(|s| s.hold.is_some());
    let snapshot = st.is_some_and(|s| s.snapshot);
    // The stage a snapshot re-run starts from: the one after `provision` (`test` by default).
    let test = st
        .and_then(|s| crate::domain::stages::after_provision(&s.of_steps))
        .unwrap_or(crate::domain::stages::TEST);
    html! {
        @if let Some(n) = &v.notice {
            @if n.refused { p.refusal role="alert" { (n.text) } } @else { p.notice role="status" { (n.text) } }
        }
        @if let Some(csrf) = &v.csrf {
            div.actions {
                @if ended { (action_form(id, "rerun", "rerun", "Re-run", csrf, &[])) }
                @if snapshot { (action_form(id, "rerun", "rerun-tests", "Re-run tests", csrf, &[("from", test)])) }
                @if held {
                    (action_form(id, "hold", "extend", "Extend hold 4 h", csrf, &[("for", "4h")]))
                    (action_form(id, "release", "release", "Release VM", csrf, &[]))
                } @else if !ended {
                    (action_form(id, "hold", "hold", "Hold VM", csrf, &[("for", "4h")]))
                }
                @if !ended { (action_form(id, "cancel", "cancel", "Cancel", csrf, &[])) }
                form.act.signout method="post" action="/logout" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" class="signout" { "Sign out" }
                }
            }
        } @else if v.sign_in {
            p.signin { a href={ "/login?next=/jobs/" (id) } { "Sign in" } " to re-run, hold or cancel this job from here." }
        }
    }
}

/// `GET /login`: the admin token's form, or (signed in) a sign-out button; `error` after a
/// wrong token (the token itself is never shown back).
pub fn login_page(csrf: Option<&str>, next: &str, error: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(e) = error { p.refusal role="alert" { (e) } }
        @if let Some(c) = csrf {
            p.signedin { "You are signed in. " a href=(next) { "Back" } }
            form.act.signout method="post" action="/logout" {
                input type="hidden" name="csrf" value=(c);
                button type="submit" class="signout" { "Sign out" }
            }
        } @else {
            p { "Paste this host's admin token (the file " code { "http.admin_token_file" } " names) once; the browser then keeps a session for 12 hours." }
            form.login method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label { "Admin token " input type="password" name="token" autocomplete="off" required; }
                " " button type="submit" { "Sign in" }
            }
        }
    };
    layout("sdci sign in", body)
}

/// A page with one message (a refusal, or sign-in being off).
pub fn message_page(title: &str, text: &str) -> Markup {
    let body = html! {
        h1 { (title) }
        p.refusal role="alert" { (text) }
        p { a href="/jobs" { "Jobs" } }
    };
    layout(title, body)
}

/// `GET /jobs/{id}`: `tail` is the current attempt's last lines, `step_tail` the failing step's.
pub fn job_page(
    d: &JobDetail,
    tail: Option<&LogLines>,
    step_tail: Option<&LogLines>,
    viewer: &Viewer,
) -> Markup {
    let j = &d.job;
    let body = html! {
        div.jobhead data-job=(j.id) data-state=(j.state) data-attempts=(j.attempts) {
            h1 { (badge(&j.state)) " " span.title { "Job " code { (j.id) } } }
            @if let Some(s) = &j.subject { p.lead { (s) } }
        }
        (actions_panel(d, viewer))
        (facts(d))
        @if let Some(t) = &d.tests { (tests_section(t)) }
        section.attempts {
            h2 { "Attempts" }
            @if d.attempts.is_empty() {
                p.noattempt { "Not started yet." }
                div.log data-job=(j.id) data-attempt="0" data-gen="0" data-prefix="L"
                    data-live=(if j.ended_ms.is_none() { "1" } else { "0" }) data-total="0" data-from="0" data-next="0" {
                    div.lines {}
                }
            }
            @for a in &d.attempts {
                (attempt_section(d, a, if a.current { tail } else { None }, if a.current { step_tail } else { None }))
            }
        }
        section.history {
            h2 { "History" }
            table {
                thead { tr { th { "When" } th { "From" } th { "To" } th { "Note" } } }
                tbody {
                    @for t in &d.history {
                        tr {
                            td { (time(t.at_ms)) }
                            td { (t.from.as_deref().unwrap_or("")) }
                            td { (badge(&t.to)) }
                            td { (t.note.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    layout(&format!("{} · job {}", j.state, j.id), body)
}

fn bytes(n: u64) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    } else if n >= 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn counts_line(c: &Counts) -> String {
    format!(
        "{} passed · {} failed · {} error · {} skipped — {} tests",
        c.passed, c.failed, c.error, c.skipped, c.total
    )
}

/// The job's tests: failed first (message, source line, flaky and quarantine labels), then the
/// counts, durations, the slowest, the evidence files and the notes.
fn tests_section(t: &TestsView) -> Markup {
    html! {
        section.tests id="tests" data-attempt=(t.attempt) {
            h2 { "Tests" @if t.attempt > 0 { span.attempt { " (attempt " (t.attempt) ")" } } }
            p.counts { (counts_line(&t.counts)) " in " (duration(t.duration_ms)) }
            @if t.only_quarantined_failed {
                p.quarantine-note { "Only quarantined tests failed: the check's conclusion is neutral, not success." }
            }
            @if !t.failed.is_empty() {
                ul.failed {
                    @for f in &t.failed {
                        li.test data-key=(f.key) data-outcome=(f.outcome) data-flaky=[f.flaky.as_ref().map(|_| "1")] data-quarantined=[f.quarantined.as_deref()] {
                            (badge(&f.outcome)) " "
                            a.tname href=(f.history_url) { (f.key) }
                            @if let Some(fl) = &f.flaky { " " span.flaky { (f.outcome) " — " (fl) } }
                            @if let Some(q) = &f.quarantined { " " span.quarantined { "quarantined (" (q) ")" } }
                            @if let Some(loc) = &f.location {
                                " "
                                @if let Some(u) = &f.source_url { a.src href=(u) { code { (loc) } } } @else { code.src { (loc) } }
                            }
                            @if let Some(d) = f.duration_ms { " " span.dur { (duration(d)) } }
                            @if let Some(m) = &f.message { p.msg { (m) } }
                            @if let Some(x) = &f.text { details.trace { summary { "Output" } pre { (x) } } }
                        }
                    }
                }
            }
            @if !t.slowest.is_empty() {
                details.slowest {
                    summary { "Slowest tests" }
                    ol { @for s in &t.slowest { li { a href=(s.history_url) { (s.key) } " " span.dur { (duration(s.duration_ms)) } " " (s.outcome) } } }
                }
            }
            @if !t.files.is_empty() || t.archive_url.is_some() {
                div.evidence {
                    h3 { "Files from dom0" }
                    @if let Some(u) = &t.archive_url {
                        p { a.archive href=(u) download { "Download all (results.tar.zst" @if let Some(b) = t.archive_bytes { ", " (bytes(b)) } ")" } }
                    }
                    ul.files {
                        @for f in &t.files {
                            li data-kind=(f.kind) { a href=(f.url) { (f.path) } " " span.size { (bytes(f.bytes)) } " " a.dl href={ (f.url) "?download=1" } download { "download" } }
                        }
                    }
                }
            }
            @if let Some(u) = &t.screenshot_url {
                figure.screenshot { img src=(u) alt="The VM's console when the job timed out"; figcaption { "The VM's console when the job hung or timed out" } }
            }
            @if !t.notes.is_empty() {
                ul.notes { @for n in &t.notes { li { (n) } } }
            }
        }
    }
}

fn run_row(r: &RunView, max: i64) -> Markup {
    html! {
        tr data-job=(r.job_id) data-outcome=(r.outcome) {
            td { (badge(&r.outcome)) }
            td { a href=(r.job_url) { code { (r.job_id) } } @if r.attempt > 1 { " #" (r.attempt) } }
            td { a href=(r.commit_url) { code { (r.short_sha) } } }
            td { @if let Some(b) = &r.branch { code.branch { (b) } } }
            td { (r.version.as_deref().unwrap_or("?")) }
            td { (r.reason.replace('_', " ")) }
            td { (time(r.at_ms)) }
            td.dur {
                @if let Some(d) = r.duration_ms {
                    meter min="0" max=(max.max(1)) value=(d) {} " " (duration(d))
                }
            }
            td.msg { (r.message.as_deref().unwrap_or("")) }
        }
    }
}

/// `GET /tests?key=`: a test's runs across jobs, newest first.
pub fn test_page(v: &HistoryView) -> Markup {
    let body = html! {
        h1.testkey { "Test " code { (v.key) } }
        @if let Some(r) = &v.repo { p.lead { (r) } }
        dl.facts {
            dt { "Runs" } dd.counts { (counts_line(&v.counts)) }
            dt { "Last success" } dd.lastok {
                @if let Some(r) = &v.last_success { (time(r.at_ms)) " on " a href=(r.job_url) { code { (r.short_sha) } } } @else { "none recorded" }
            }
            dt { "First failure" } dd.firstbad {
                @if let Some(r) = &v.first_failure { (time(r.at_ms)) " on " a href=(r.job_url) { code { (r.short_sha) } } } @else { "none recorded" }
            }
            @if let Some(f) = &v.flaky { dt { "Flaky" } dd.flaky { (f) } }
            @if let Some(q) = &v.quarantined { dt { "Quarantine" } dd.quarantined { "quarantined by " code { (q) } " (its failure alone makes a check neutral)" } }
        }
        table.runs {
            thead { tr { th { "Outcome" } th { "Job" } th { "Commit" } th { "Branch" } th { "Qubes" } th { "Reason" } th { "When" } th { "Duration" } th { "Message" } } }
            tbody { @for r in &v.runs { (run_row(r, v.max_duration_ms)) } }
        }
        @if v.runs.is_empty() { p { "No runs of this test are recorded." } }
    };
    layout(&format!("test {}", v.key), body)
}

/// The filters of the list, as given.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: String,
    pub repo: String,
    pub branch: String,
}

impl ListQuery {
    /// The query string of these filters (`&`-joined, percent-encoded).
    pub fn query(&self) -> String {
        let mut q = Vec::new();
        for (k, v) in [
            ("state", &self.state),
            ("repo", &self.repo),
            ("branch", &self.branch),
        ] {
            if !v.is_empty() {
                q.push(format!(
                    "{k}={}",
                    super::model::url_part(v).replace('/', "%2F")
                ));
            }
        }
        q.join("&")
    }
}

fn job_row(j: &JobSummary) -> Markup {
    html! {
        tr data-id=(j.id) {
            td { (badge(&j.state)) }
            td { a href=(j.url) { code { (j.id) } } }
            td.subj {
                @if let Some(s) = &j.subject { (s) } @else { code { (j.short_sha) } }
                @if let Some(a) = &j.author { span.author { " · " (a) } }
            }
            td { (j.repo) }
            td { @if let Some(pr) = j.pr { "#" (pr) " " } @if let Some(b) = &j.branch { code.branch { (b) } } }
            td { (j.reason.replace('_', " ")) }
            td { (j.version.as_deref().unwrap_or("?")) }
            td { (j.vm.as_deref().unwrap_or("")) }
            td { (time(j.created_ms)) }
            td.dur data-started=[j.ended_ms.is_none().then_some(j.created_ms)] { (duration(j.duration_ms)) }
        }
    }
}

/// `GET /jobs`.
pub fn list_page(list: &JobList, q: &ListQuery, first_page: bool) -> Markup {
    let states = [
        "", "active", "queued", "running", "success", "failure", "error", "canceled",
    ];
    let query = q.query();
    let body = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/jobs" {
            label { "State " select name="state" {
                @for s in states {
                    option value=(s) selected[q.state == s] { (if s.is_empty() { "any" } else { s }) }
                }
            } }
            label { "Repository " input name="repo" value=(q.repo) placeholder="owner/name"; }
            label { "Branch " input name="branch" value=(q.branch) placeholder="main"; }
            button type="submit" { "Filter" }
            @if !query.is_empty() { " " a href="/jobs" { "clear" } }
        }
        table.jobs data-query=(query) data-first=(if first_page { "1" } else { "0" }) {
            thead { tr {
                th { "State" } th { "Job" } th { "Commit" } th { "Repository" } th { "Branch / PR" }
                th { "Reason" } th { "Qubes" } th { "VM" } th { "Queued" } th { "Duration" }
            } }
            tbody { @for j in &list.jobs { (job_row(j)) } }
        }
        @if list.jobs.is_empty() { p { "No jobs match." } }
        nav.pages {
            @if !first_page { a href={ "/jobs?" (query) } { "← Newest" } " " }
            @if let Some(b) = list.next_before {
                a.older href={ "/jobs?" (query) (if query.is_empty() { "" } else { "&" }) "before=" (b) } { "Older →" }
            }
        }
    };
    layout("sdci jobs", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(7_380_000), "2 h 03 min");
    }

    #[test]
    fn a_hostile_line_is_text_in_the_page() {
        let html = line(
            "L",
            7,
            "<script>alert(1)</script>\"><img src=x onerror=alert(1)>",
        )
        .into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("id=\"L7\""), "{html}");
    }
}
