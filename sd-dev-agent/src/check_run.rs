//! `check-run`: the command's arguments checked against GitHub's limits before any request, and
//! the request body they become (contracts §5; what the host sends, §10).
//!
//! The host sends what fits and the agent never repairs: a name or title over 255 characters, a
//! summary or text over 65,535 bytes, a fourth action, an action's label over 20, description
//! over 40 or identifier over 20 characters (identifier `[a-z0-9_-]+`), a `details_url` that is
//! not `http(s)://`, an `external_id` over 255 characters, a time that is not RFC 3339 UTC, or a
//! conclusion without `--status=completed` (or the reverse) is a usage error (exit 64) and no
//! request is made. So is an `--annotation` that breaks GitHub's rules: more than 50 in one call,
//! a level other than `notice`/`warning`/`failure`, a path that is not relative inside the
//! repository (no empty, `.` or `..` part), a line below 1 or an end before the start, a message
//! over 64 KiB or a title over 255 characters, or annotations without an output. A summary is bounded in bytes, not GitHub's characters, so one argv word
//! stays below Linux's 128 KiB `MAX_ARG_STRLEN`.
//!
//! The body is octocrab's `params::checks` types (status, conclusion, output) inside our own
//! struct, because octocrab's check-run builders have no `actions` and its create has no
//! `started_at` (github.rs's module doc).

use crate::error::{AgentError, Result};
use octocrab::params::checks::{CheckRunConclusion, CheckRunOutput, CheckRunStatus};
use octocrab::params::checks::{CheckRunOutputAnnotation, CheckRunOutputAnnotationLevel};
use sdci_protocol::{CommitSha, RepoName};
use serde::{Deserialize, Serialize};

/// GitHub's limit on a check run's name and output title (characters).
pub const MAX_NAME: usize = 255;
/// The agent's limit on the summary and the text (bytes; GitHub counts 65,535 characters).
pub const MAX_SUMMARY_BYTES: usize = 65_535;
/// GitHub's limit on `actions` per check run.
pub const MAX_ACTIONS: usize = 3;
/// GitHub's limits on an action's label, description and identifier (characters).
pub const MAX_ACTION_LABEL: usize = 20;
pub const MAX_ACTION_DESCRIPTION: usize = 40;
pub const MAX_ACTION_IDENTIFIER: usize = 20;
/// The limit on `external_id` (characters).
pub const MAX_EXTERNAL_ID: usize = 255;
/// GitHub's limit on annotations per create or update (more are sent in further updates; GitHub
/// appends them).
pub const MAX_ANNOTATIONS: usize = 50;
/// GitHub's limit on an annotation's message (64 KB; bytes here).
pub const MAX_ANNOTATION_MESSAGE_BYTES: usize = 65_535;
/// GitHub's limit on an annotation's title (characters).
pub const MAX_ANNOTATION_TITLE: usize = 255;

/// The command line of `check-run`, as given (every value unchecked; checked by the rules
/// above before any request). The binary parses it with clap.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct CheckRunArgs {
    #[arg(long)]
    pub repo: String,
    /// The commit to create the check run on.
    #[arg(long, conflicts_with = "id")]
    pub sha: Option<String>,
    /// At most 255 characters (branch protection requires it by name).
    #[arg(long, conflicts_with = "id")]
    pub name: Option<String>,
    /// The check run to update.
    #[arg(long)]
    pub id: Option<String>,
    /// queued, in_progress or completed
    #[arg(long)]
    pub status: Option<String>,
    /// With --status=completed only: success, failure, neutral, cancelled, skipped,
    /// timed_out or action_required
    #[arg(long)]
    pub conclusion: Option<String>,
    /// http(s):// URL of the job's page.
    #[arg(long)]
    pub details_url: Option<String>,
    /// At most 255 characters (the job id).
    #[arg(long)]
    pub external_id: Option<String>,
    /// RFC 3339 UTC, e.g. 2026-12-01T10:37:00Z
    #[arg(long)]
    pub started_at: Option<String>,
    /// RFC 3339 UTC, with --status=completed only.
    #[arg(long)]
    pub completed_at: Option<String>,
    /// The output's title (at most 255 characters; needs --summary).
    #[arg(long)]
    pub title: Option<String>,
    /// The output's Markdown summary (at most 65,535 bytes; needs --title).
    #[arg(long)]
    pub summary: Option<String>,
    /// The output's Markdown details (at most 65,535 bytes).
    #[arg(long)]
    pub text: Option<String>,
    /// A button, IDENTIFIER:LABEL:DESCRIPTION (at most 3; 20, 20, 40 characters).
    #[arg(long = "action")]
    pub actions: Vec<String>,
    /// Remove the buttons (sends "actions": []).
    #[arg(long)]
    pub no_actions: bool,
    /// An annotation, one JSON object: {"path","start_line","end_line","annotation_level"
    /// (notice|warning|failure),"message"[,"title"]} (at most 50 per call; needs --title).
    #[arg(long = "annotation")]
    pub annotations: Vec<String>,
}

/// One `--annotation` word as given: a JSON object with GitHub's field names; any other field
/// is refused (a typo would otherwise vanish).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnotationArg {
    path: String,
    start_line: u32,
    end_line: u32,
    annotation_level: String,
    message: String,
    #[serde(default)]
    title: Option<String>,
}

/// `--annotation={"path":…}` checked against GitHub's limits (module doc).
pub fn parse_annotation(text: &str) -> Result<CheckRunOutputAnnotation> {
    let shown: String = text.chars().take(80).collect();
    let bad = |why: String| usage(format!("--annotation={shown:?}…: {why}"));
    let a: AnnotationArg = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "not a JSON object {{\"path\",\"start_line\",\"end_line\",\"annotation_level\",\"message\"[,\"title\"]}}: {e}"
        ))
    })?;
    let path_ok = !a.path.is_empty()
        && !a.path.contains('\\')
        && !a.path.chars().any(char::is_control)
        && a.path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if !path_ok {
        return Err(bad(format!(
            "path {:?} is not relative inside the repository (no empty, . or .. part)",
            a.path
        )));
    }
    if a.start_line == 0 || a.end_line < a.start_line {
        return Err(bad(format!(
            "lines {}..{}: the start is at least 1 and the end not before it",
            a.start_line, a.end_line
        )));
    }
    let level = match a.annotation_level.as_str() {
        "notice" => CheckRunOutputAnnotationLevel::Notice,
        "warning" => CheckRunOutputAnnotationLevel::Warning,
        "failure" => CheckRunOutputAnnotationLevel::Failure,
        other => {
            return Err(bad(format!(
                "annotation_level {other:?} is not notice, warning or failure"
            )))
        }
    };
    if a.message.is_empty() || a.message.len() > MAX_ANNOTATION_MESSAGE_BYTES {
        return Err(bad(format!(
            "the message has {} bytes; GitHub wants 1 to {MAX_ANNOTATION_MESSAGE_BYTES}",
            a.message.len()
        )));
    }
    if let Some(t) = &a.title {
        at_most_chars("an annotation's title", t, MAX_ANNOTATION_TITLE)?;
    }
    Ok(CheckRunOutputAnnotation {
        path: a.path,
        start_line: a.start_line,
        end_line: a.end_line,
        start_column: None,
        end_column: None,
        annotation_level: level,
        message: a.message,
        title: a.title,
        raw_details: None,
    })
}

/// One of a check run's buttons (GitHub's `actions[]` item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub label: String,
    pub description: String,
    pub identifier: String,
}

/// The JSON body of a create or an update: only the fields given are sent.
#[derive(Serialize)]
pub struct CheckRunBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head_sha: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<CheckRunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conclusion: Option<CheckRunConclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<CheckRunOutput>,
    /// `Some(vec![])` is `--no-actions` (the buttons removed); `None` leaves them as they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    actions: Option<Vec<Action>>,
}

/// A checked `check-run` command: create (no `id`) or update.
pub struct CheckRunRequest {
    pub repo: RepoName,
    /// `None`: create on the body's `head_sha`; `Some`: update that check run.
    pub id: Option<u64>,
    pub body: CheckRunBody,
}

fn usage(msg: String) -> AgentError {
    AgentError::Usage(msg)
}

fn at_most_chars(flag: &str, value: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if n > max {
        return Err(usage(format!(
            "{flag} has {n} characters; GitHub allows at most {max}"
        )));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, each field in range.
fn rfc3339_utc(flag: &str, value: &str) -> Result<String> {
    let bad = || {
        usage(format!(
            "{flag}={value:?} is not an RFC 3339 UTC time (e.g. 2026-12-01T10:37:00Z)"
        ))
    };
    let b = value.as_bytes();
    if b.len() < 20 || b.last() != Some(&b'Z') {
        return Err(bad());
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = value.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b[i] != c) {
        return Err(bad());
    }
    let fields = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    );
    let (Some(_), Some(mo), Some(d), Some(h), Some(mi), Some(s)) = fields else {
        return Err(bad());
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let rest = &value[19..value.len() - 1];
    if !rest.is_empty() {
        let frac = rest.strip_prefix('.').ok_or_else(bad)?;
        if frac.is_empty() || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
    }
    Ok(value.to_owned())
}

fn parse_status(s: &str) -> Result<CheckRunStatus> {
    Ok(match s {
        "queued" => CheckRunStatus::Queued,
        "in_progress" => CheckRunStatus::InProgress,
        "completed" => CheckRunStatus::Completed,
        _ => {
            return Err(usage(format!(
                "--status={s:?} is not queued, in_progress or completed"
            )))
        }
    })
}

fn parse_conclusion(s: &str) -> Result<CheckRunConclusion> {
    Ok(match s {
        "success" => CheckRunConclusion::Success,
        "failure" => CheckRunConclusion::Failure,
        "neutral" => CheckRunConclusion::Neutral,
        "cancelled" => CheckRunConclusion::Cancelled,
        "skipped" => CheckRunConclusion::Skipped,
        "timed_out" => CheckRunConclusion::TimedOut,
        "action_required" => CheckRunConclusion::ActionRequired,
        _ => return Err(usage(format!(
            "--conclusion={s:?} is not success, failure, neutral, cancelled, skipped, timed_out or action_required"
        ))),
    })
}

/// `IDENTIFIER:LABEL:DESCRIPTION`.
pub fn parse_action(text: &str) -> Result<Action> {
    let bad = |why: &str| usage(format!("--action={text:?}: {why}"));
    let (identifier, rest) = text
        .split_once(':')
        .ok_or_else(|| bad("not IDENTIFIER:LABEL:DESCRIPTION"))?;
    let (label, description) = rest
        .split_once(':')
        .ok_or_else(|| bad("not IDENTIFIER:LABEL:DESCRIPTION"))?;
    if identifier.is_empty()
        || !identifier
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(bad("the identifier must be [a-z0-9_-]+"));
    }
    if label.is_empty() || description.is_empty() {
        return Err(bad("the label and the description must not be empty"));
    }
    at_most_chars("an action's identifier", identifier, MAX_ACTION_IDENTIFIER)?;
    at_most_chars("an action's label", label, MAX_ACTION_LABEL)?;
    at_most_chars(
        "an action's description",
        description,
        MAX_ACTION_DESCRIPTION,
    )?;
    Ok(Action {
        label: label.to_owned(),
        description: description.to_owned(),
        identifier: identifier.to_owned(),
    })
}

impl CheckRunRequest {
    /// Checks every argument (module doc); no request has been made when this fails.
    pub fn parse(a: &CheckRunArgs) -> Result<Self> {
        let repo: RepoName = a.repo.parse().map_err(|e| usage(format!("--repo: {e}")))?;
        let (id, head_sha, name) = match (&a.id, &a.sha, &a.name) {
            (Some(id), None, None) => {
                let id: u64 = id
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| usage(format!("--id={id:?} is not a check run id")))?;
                (Some(id), None, None)
            }
            (Some(_), _, _) => {
                return Err(usage(
                    "--id updates a check run: --sha and --name are for creating one".into(),
                ))
            }
            (None, Some(sha), Some(name)) => {
                let sha: CommitSha = sha.parse().map_err(|e| usage(format!("--sha: {e}")))?;
                if name.trim().is_empty() {
                    return Err(usage("--name must not be empty".into()));
                }
                at_most_chars("--name", name, MAX_NAME)?;
                (None, Some(sha.to_string()), Some(name.clone()))
            }
            (None, _, _) => {
                return Err(usage(
                    "check-run needs --sha and --name (create) or --id (update)".into(),
                ))
            }
        };
        let status = a.status.as_deref().map(parse_status).transpose()?;
        let completed = matches!(status, Some(CheckRunStatus::Completed));
        let conclusion = a.conclusion.as_deref().map(parse_conclusion).transpose()?;
        match (completed, conclusion.is_some()) {
            (true, false) => return Err(usage("--status=completed needs --conclusion".into())),
            (false, true) => {
                return Err(usage(
                    "--conclusion is given only with --status=completed".into(),
                ))
            }
            _ => {}
        }
        if a.completed_at.is_some() && !completed {
            return Err(usage(
                "--completed-at is given only with --status=completed".into(),
            ));
        }
        let started_at = a
            .started_at
            .as_deref()
            .map(|t| rfc3339_utc("--started-at", t))
            .transpose()?;
        let completed_at = a
            .completed_at
            .as_deref()
            .map(|t| rfc3339_utc("--completed-at", t))
            .transpose()?;
        if let Some(url) = &a.details_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 9 {
                return Err(usage(format!(
                    "--details-url={url:?} is not an http(s):// URL"
                )));
            }
        }
        if let Some(ext) = &a.external_id {
            at_most_chars("--external-id", ext, MAX_EXTERNAL_ID)?;
        }
        if a.annotations.len() > MAX_ANNOTATIONS {
            return Err(usage(format!(
                "{} --annotation given; GitHub takes at most {MAX_ANNOTATIONS} per request (send \
                 the rest in further updates)",
                a.annotations.len()
            )));
        }
        let annotations = a
            .annotations
            .iter()
            .map(|t| parse_annotation(t))
            .collect::<Result<Vec<_>>>()?;
        if !annotations.is_empty() && a.title.is_none() {
            return Err(usage(
                "--annotation goes in an output: it needs --title and --summary".into(),
            ));
        }
        let output = match (&a.title, &a.summary, &a.text) {
            (None, None, None) => None,
            (Some(title), Some(summary), text) => {
                if title.trim().is_empty() {
                    return Err(usage("--title must not be empty".into()));
                }
                at_most_chars("--title", title, MAX_NAME)?;
                for (flag, v) in [("--summary", Some(summary)), ("--text", text.as_ref())] {
                    if let Some(v) = v {
                        if v.len() > MAX_SUMMARY_BYTES {
                            return Err(usage(format!(
                                "{flag} has {} bytes; at most {MAX_SUMMARY_BYTES}",
                                v.len()
                            )));
                        }
                    }
                }
                Some(CheckRunOutput {
                    title: title.clone(),
                    summary: summary.clone(),
                    text: text.clone(),
                    annotations,
                    images: Vec::new(),
                })
            }
            _ => {
                return Err(usage(
                    "an output needs both --title and --summary (--text is optional)".into(),
                ))
            }
        };
        if a.actions.len() > MAX_ACTIONS {
            return Err(usage(format!(
                "{} --action given; GitHub allows at most {MAX_ACTIONS}",
                a.actions.len()
            )));
        }
        if a.no_actions && !a.actions.is_empty() {
            return Err(usage("--no-actions and --action exclude each other".into()));
        }
        let actions = if a.no_actions {
            Some(Vec::new())
        } else if a.actions.is_empty() {
            None
        } else {
            Some(
                a.actions
                    .iter()
                    .map(|t| parse_action(t))
                    .collect::<Result<Vec<_>>>()?,
            )
        };
        Ok(Self {
            repo,
            id,
            body: CheckRunBody {
                name,
                head_sha,
                status,
                conclusion,
                details_url: a.details_url.clone(),
                external_id: a.external_id.clone(),
                started_at,
                completed_at,
                output,
                actions,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn create() -> CheckRunArgs {
        CheckRunArgs {
            repo: "o/r".into(),
            sha: Some(SHA.into()),
            name: Some("sdci / Qubes 4.2".into()),
            ..Default::default()
        }
    }

    fn body(a: &CheckRunArgs) -> serde_json::Value {
        serde_json::to_value(&CheckRunRequest::parse(a).unwrap().body).unwrap()
    }

    fn refused(a: &CheckRunArgs) -> String {
        match CheckRunRequest::parse(a) {
            Err(e @ AgentError::Usage(_)) => e.to_string(),
            Err(e) => panic!("not a usage error: {e}"),
            Ok(_) => panic!("accepted: {a:?}"),
        }
    }

    #[test]
    fn a_bare_create_sends_the_name_and_the_sha_only() {
        assert_eq!(
            body(&create()),
            json!({"name": "sdci / Qubes 4.2", "head_sha": SHA})
        );
    }

    #[test]
    fn a_completion_sends_every_field_it_was_given_in_github_s_words() {
        let a = CheckRunArgs {
            repo: "o/r".into(),
            id: Some("42".into()),
            status: Some("completed".into()),
            conclusion: Some("action_required".into()),
            details_url: Some("https://ci.example/jobs/j1".into()),
            external_id: Some("j1".into()),
            started_at: Some("2026-12-01T10:37:00Z".into()),
            completed_at: Some("2026-12-01T10:47:00.123Z".into()),
            title: Some("VM lost".into()),
            summary: Some("| step | time |\n".into()),
            text: Some("--x".into()),
            actions: vec!["rerun:Re-run:Run this job again: same commit".into()],
            ..Default::default()
        };
        let req = CheckRunRequest::parse(&a).unwrap();
        assert_eq!(req.id, Some(42));
        assert_eq!(
            serde_json::to_value(&req.body).unwrap(),
            json!({
                "status": "completed", "conclusion": "action_required",
                "details_url": "https://ci.example/jobs/j1", "external_id": "j1",
                "started_at": "2026-12-01T10:37:00Z", "completed_at": "2026-12-01T10:47:00.123Z",
                "output": {"title": "VM lost", "summary": "| step | time |\n", "text": "--x"},
                "actions": [{"label": "Re-run", "description": "Run this job again: same commit",
                             "identifier": "rerun"}],
            })
        );
    }

    #[test]
    fn no_actions_sends_an_empty_list_and_no_flag_sends_none() {
        let mut a = create();
        a.no_actions = true;
        assert_eq!(body(&a)["actions"], json!([]));
        assert!(body(&create()).get("actions").is_none());
    }

    #[test]
    fn every_conclusion_of_the_contract_is_accepted_and_stale_is_not() {
        for c in [
            "success",
            "failure",
            "neutral",
            "cancelled",
            "skipped",
            "timed_out",
            "action_required",
        ] {
            let mut a = create();
            a.status = Some("completed".into());
            a.conclusion = Some(c.into());
            assert_eq!(body(&a)["conclusion"], c);
        }
        let mut a = create();
        a.status = Some("completed".into());
        a.conclusion = Some("stale".into());
        refused(&a);
    }

    #[test]
    fn a_conclusion_goes_with_completed_and_only_with_it() {
        let mut a = create();
        a.status = Some("completed".into());
        assert!(refused(&a).contains("needs --conclusion"));
        a.status = Some("in_progress".into());
        a.conclusion = Some("success".into());
        assert!(refused(&a).contains("only with --status=completed"));
        a.status = None;
        refused(&a);
        let mut a = create();
        a.completed_at = Some("2026-12-01T10:47:00Z".into());
        refused(&a);
    }

    #[test]
    fn create_and_update_are_told_apart_by_id() {
        let mut a = create();
        a.id = Some("7".into());
        assert!(refused(&a).contains("--id updates"));
        let a = CheckRunArgs {
            repo: "o/r".into(),
            sha: Some(SHA.into()),
            ..Default::default()
        };
        refused(&a);
        for bad in ["0", "-1", "x", ""] {
            let a = CheckRunArgs {
                repo: "o/r".into(),
                id: Some(bad.into()),
                ..Default::default()
            };
            refused(&a);
        }
        let mut a = create();
        a.sha = Some("abc".into());
        refused(&a);
        let mut a = create();
        a.repo = "nope".into();
        refused(&a);
    }

    #[test]
    fn names_titles_and_external_ids_are_bounded_in_characters() {
        let mut a = create();
        a.name = Some("é".repeat(255));
        CheckRunRequest::parse(&a).unwrap();
        a.name = Some("é".repeat(256));
        assert!(refused(&a).contains("--name has 256 characters"));
        let mut a = create();
        a.title = Some("t".repeat(256));
        a.summary = Some("s".into());
        refused(&a);
        let mut a = create();
        a.external_id = Some("e".repeat(256));
        refused(&a);
        a.external_id = Some("e".repeat(255));
        CheckRunRequest::parse(&a).unwrap();
    }

    #[test]
    fn summaries_and_texts_are_bounded_in_bytes() {
        let mut a = create();
        a.title = Some("t".into());
        a.summary = Some("x".repeat(MAX_SUMMARY_BYTES));
        a.text = Some("y".repeat(MAX_SUMMARY_BYTES));
        CheckRunRequest::parse(&a).unwrap();
        // 32,768 two-byte characters: within GitHub's characters, beyond the agent's bytes.
        a.summary = Some("é".repeat(32_768));
        assert!(refused(&a).contains("--summary has 65536 bytes"));
        a.summary = Some("s".into());
        a.text = Some("y".repeat(MAX_SUMMARY_BYTES + 1));
        assert!(refused(&a).contains("--text"));
    }

    #[test]
    fn an_output_needs_a_title_and_a_summary() {
        for (t, s, x) in [
            (Some("t"), None, None),
            (None, Some("s"), None),
            (None, None, Some("x")),
            (Some(""), Some("s"), None),
        ] {
            let mut a = create();
            a.title = t.map(Into::into);
            a.summary = s.map(Into::into);
            a.text = x.map(Into::into);
            refused(&a);
        }
    }

    #[test]
    fn actions_are_bounded_as_github_bounds_them() {
        let mut a = create();
        a.actions = vec!["a:A:a".into(); 3];
        CheckRunRequest::parse(&a).unwrap();
        a.actions = vec!["a:A:a".into(); 4];
        assert!(refused(&a).contains("at most 3"));
        for bad in [
            "rerun",
            "rerun:Re-run",
            "Rerun:Re-run:again",
            "re run:Re-run:again",
            ":Re-run:again",
            "rerun::again",
            "rerun:Re-run:",
            &format!("{}:L:d", "i".repeat(21)),
            &format!("i:{}:d", "L".repeat(21)),
            &format!("i:L:{}", "d".repeat(41)),
        ] {
            assert!(parse_action(bad).is_err(), "{bad:?}");
        }
        let ok = parse_action(&format!(
            "{}:{}:{}",
            "i".repeat(20),
            "L".repeat(20),
            "d".repeat(40)
        ));
        assert!(ok.is_ok());
        let mut a = create();
        a.actions = vec!["a:A:a".into()];
        a.no_actions = true;
        refused(&a);
    }

    #[test]
    fn details_urls_are_http_and_times_are_rfc3339_utc() {
        let mut a = create();
        a.details_url = Some("javascript:alert(1)".into());
        refused(&a);
        a.details_url = Some("http://127.0.0.1:8470/jobs/j1".into());
        CheckRunRequest::parse(&a).unwrap();
        for bad in [
            "2026-12-01T10:37:00+01:00",
            "2026-12-01 10:37:00Z",
            "2026-13-01T10:37:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T10:37:00.Z",
            "1764585420",
            "",
        ] {
            let mut a = create();
            a.started_at = Some(bad.into());
            refused(&a);
        }
        let mut a = create();
        a.started_at = Some("2026-12-01T10:37:00.5Z".into());
        assert_eq!(body(&a)["started_at"], "2026-12-01T10:37:00.5Z");
    }

    fn annotation(path: &str, line: u32, level: &str) -> String {
        json!({"path": path, "start_line": line, "end_line": line, "annotation_level": level,
               "title": "tests.test_vms::test_x: failed", "message": "assert 1 == 2: a:b"})
        .to_string()
    }

    fn with_output(annotations: Vec<String>) -> CheckRunArgs {
        CheckRunArgs {
            title: Some("Failed".into()),
            summary: Some("s".into()),
            annotations,
            ..create()
        }
    }

    #[test]
    fn annotations_go_into_the_output_in_github_s_words() {
        let b = body(&with_output(vec![annotation(
            "tests/test_vms.py",
            42,
            "failure",
        )]));
        assert_eq!(
            b["output"]["annotations"],
            json!([{"path": "tests/test_vms.py", "start_line": 42, "end_line": 42,
                    "annotation_level": "failure", "message": "assert 1 == 2: a:b",
                    "title": "tests.test_vms::test_x: failed"}])
        );
        assert!(body(&with_output(vec![]))["output"]
            .get("annotations")
            .is_none());
    }

    #[test]
    fn fifty_annotations_pass_and_a_fifty_first_is_refused() {
        let fifty = vec![annotation("a.py", 1, "notice"); MAX_ANNOTATIONS];
        assert_eq!(
            body(&with_output(fifty.clone()))["output"]["annotations"]
                .as_array()
                .map(Vec::len),
            Some(50)
        );
        let mut more = fifty;
        more.push(annotation("a.py", 1, "warning"));
        assert!(refused(&with_output(more)).contains("at most 50 per request"));
    }

    #[test]
    fn an_annotation_breaking_github_s_rules_is_refused() {
        let long_message = "m".repeat(MAX_ANNOTATION_MESSAGE_BYTES + 1);
        let long_title = "t".repeat(MAX_ANNOTATION_TITLE + 1);
        let bad = [
            annotation("a.py", 1, "error"),
            annotation("/etc/passwd", 1, "failure"),
            annotation("tests/../../x", 1, "failure"),
            annotation("a//b.py", 1, "failure"),
            annotation("a.py", 0, "failure"),
            json!({"path": "a.py", "start_line": 5, "end_line": 4, "annotation_level": "failure",
                   "message": "m"})
            .to_string(),
            json!({"path": "a.py", "start_line": 1, "end_line": 1, "annotation_level": "failure",
                   "message": long_message})
            .to_string(),
            json!({"path": "a.py", "start_line": 1, "end_line": 1, "annotation_level": "failure",
                   "message": "m", "title": long_title})
            .to_string(),
            json!({"path": "a.py", "start_line": 1, "end_line": 1, "annotation_level": "failure",
                   "message": "m", "colour": "red"})
            .to_string(),
            "a.py:1:1:failure:t:m".into(),
        ];
        for b in bad {
            refused(&with_output(vec![b.clone()]));
        }
        let mut no_output = create();
        no_output.annotations = vec![annotation("a.py", 1, "failure")];
        assert!(refused(&no_output).contains("needs --title and --summary"));
    }
}
