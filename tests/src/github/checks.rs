//! Check runs in the stand-in (REST `checks/*`, GitHub App only): create, update, get and list
//! for a ref, with GitHub's rules, and every create and update kept in order so a test can
//! assert a check run's whole history (`queued` → `in_progress` → `completed`, each with the
//! fields that were sent).
//!
//! GitHub's rules followed here: `name` and `head_sha` are required on create; `status`
//! defaults to `queued`; a `conclusion` makes the run `completed` (and `completed_at` defaults to
//! now); `completed` without a conclusion is `422`; `output` needs `title` and `summary`
//! (summary and text at most 65,535 characters); at most 3 `actions`, label ≤ 20, description ≤
//! 40, identifier ≤ 20 characters; `output.annotations` at most 50 per request, each with
//! `path`, `start_line`, `end_line`, `annotation_level` (`notice`, `warning`, `failure`) and
//! `message`, appended to the run's (GitHub keeps adding them across updates; the answer's
//! `annotations_count` counts them all). `started_at` defaults to the creation time. Only the
//! App that created a run may update it (there is one App here). Writing needs an installation
//! token with `checks: write` (a personal access token is `403 You must authenticate via a GitHub App.`).

use super::objects;
use super::{validation_failed_for, Answer};
use serde_json::{json, Map, Value};

/// What a check run looks like after a create or an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRun {
    pub id: u64,
    pub repo: String,
    pub head_sha: String,
    pub name: String,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    pub conclusion: Option<String>,
    pub details_url: Option<String>,
    pub external_id: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub output: Option<CheckRunOutput>,
    pub actions: Vec<CheckRunAction>,
    /// Every annotation sent so far, across creates and updates, in order.
    pub annotations: Vec<CheckRunAnnotation>,
}

/// One annotation of a check run (`output.annotations[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunAnnotation {
    pub path: String,
    pub start_line: u64,
    pub end_line: u64,
    /// `notice`, `warning` or `failure`.
    pub annotation_level: String,
    pub title: Option<String>,
    pub message: String,
}

/// A check run's `output` (title, summary, text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunOutput {
    pub title: Option<String>,
    pub summary: Option<String>,
    pub text: Option<String>,
}

/// One of a check run's `actions` (a button on GitHub's page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunAction {
    pub label: String,
    pub description: String,
    pub identifier: String,
}

/// Whether a change was the create (`POST`) or an update (`PATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
}

/// One accepted create or update: the request's fields as sent, and the run afterwards.
#[derive(Debug, Clone)]
pub struct CheckRunChange {
    pub kind: ChangeKind,
    /// The request body, exactly as the client sent it.
    pub fields: Value,
    pub after: CheckRun,
}

/// Every check run, with its history, in creation order.
#[derive(Default)]
pub(super) struct CheckRuns {
    runs: Vec<(CheckRun, Vec<CheckRunChange>)>,
}

impl CheckRuns {
    pub(super) fn for_commit(&self, repo: &str, sha: &str) -> Vec<CheckRun> {
        self.runs
            .iter()
            .filter(|(r, _)| r.repo == repo && r.head_sha == sha)
            .map(|(r, _)| r.clone())
            .collect()
    }

    pub(super) fn history(&self, id: u64) -> Vec<CheckRunChange> {
        self.runs
            .iter()
            .find(|(r, _)| r.id == id)
            .map(|(_, h)| h.clone())
            .unwrap_or_default()
    }

    pub(super) fn create(
        &mut self,
        base: &str,
        app_id: u64,
        repo: &str,
        id: u64,
        body: &[u8],
        now: &str,
    ) -> Answer {
        let fields = match parse_object(body) {
            Ok(f) => f,
            Err(a) => return a,
        };
        let (Some(name), Some(head_sha)) =
            (str_field(&fields, "name"), str_field(&fields, "head_sha"))
        else {
            let missing = if str_field(&fields, "name").is_none() {
                "name"
            } else {
                "head_sha"
            };
            return validation_failed_for(
                "CheckRun",
                missing,
                "missing_field",
                &format!("{missing} wasn't supplied."),
            );
        };
        if !is_sha(&head_sha) {
            return validation_failed_for(
                "CheckRun",
                "head_sha",
                "invalid",
                &format!("No commit found for SHA: {head_sha}"),
            );
        }
        let mut run = CheckRun {
            id,
            repo: repo.to_owned(),
            head_sha,
            name,
            status: "queued".to_owned(),
            conclusion: None,
            details_url: None,
            external_id: None,
            started_at: Some(now.to_owned()),
            completed_at: None,
            output: None,
            actions: Vec::new(),
            annotations: Vec::new(),
        };
        if let Err(a) = apply(&mut run, &fields, now) {
            return a;
        }
        let answer = Answer::json(201, to_json(base, app_id, &run))
            .with_header("location", format!("{base}/repos/{repo}/check-runs/{id}"));
        self.runs.push((
            run.clone(),
            vec![CheckRunChange {
                kind: ChangeKind::Created,
                fields: Value::Object(fields),
                after: run,
            }],
        ));
        answer
    }

    pub(super) fn update(
        &mut self,
        base: &str,
        app_id: u64,
        repo: &str,
        id: &str,
        body: &[u8],
        now: &str,
    ) -> Answer {
        let Some((run, history)) = id.parse::<u64>().ok().and_then(|id| {
            self.runs
                .iter_mut()
                .find(|(r, _)| r.id == id && r.repo == repo)
        }) else {
            return super::message(404, "Not Found");
        };
        let fields = match parse_object(body) {
            Ok(f) => f,
            Err(a) => return a,
        };
        let mut next = run.clone();
        if let Some(name) = fields.get("name") {
            match name.as_str() {
                Some(n) if !n.is_empty() => next.name = n.to_owned(),
                _ => {
                    return validation_failed_for(
                        "CheckRun",
                        "name",
                        "invalid",
                        "name must be a non-empty string",
                    )
                }
            }
        }
        if let Err(a) = apply(&mut next, &fields, now) {
            return a;
        }
        *run = next.clone();
        history.push(CheckRunChange {
            kind: ChangeKind::Updated,
            fields: Value::Object(fields),
            after: next.clone(),
        });
        Answer::json(200, to_json(base, app_id, &next))
    }

    pub(super) fn get(&self, base: &str, app_id: u64, repo: &str, id: &str) -> Answer {
        match id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.runs.iter().find(|(r, _)| r.id == id && r.repo == repo))
        {
            Some((r, _)) => Answer::json(200, to_json(base, app_id, r)),
            None => super::message(404, "Not Found"),
        }
    }

    /// `GET /repos/{o}/{r}/commits/{ref}/check-runs`: `check_name`, `status` and `filter`
    /// (`latest`, the default: the most recent run of each name; or `all`), newest first.
    pub(super) fn list(
        &self,
        base: &str,
        app_id: u64,
        repo: &str,
        sha: &str,
        query: Option<&str>,
    ) -> Answer {
        let name = super::query_param(query, "check_name");
        let status = super::query_param(query, "status");
        let all = super::query_param(query, "filter").as_deref() == Some("all");
        let mut seen = std::collections::HashSet::new();
        let runs: Vec<Value> = self
            .runs
            .iter()
            .rev()
            .map(|(r, _)| r)
            .filter(|r| r.repo == repo && r.head_sha == sha)
            .filter(|r| name.as_ref().is_none_or(|n| &r.name == n))
            .filter(|r| status.as_ref().is_none_or(|s| &r.status == s))
            .filter(|r| all || seen.insert(r.name.clone()))
            .map(|r| to_json(base, app_id, r))
            .collect();
        Answer::json(200, json!({"total_count": runs.len(), "check_runs": runs}))
    }
}

fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Answer> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(super::message(400, "Problems parsing JSON")),
    }
}

fn str_field(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Applies the fields a create and an update share, as GitHub does.
fn apply(run: &mut CheckRun, f: &Map<String, Value>, now: &str) -> Result<(), Answer> {
    let bad =
        |field: &str, msg: &str| Err(validation_failed_for("CheckRun", field, "invalid", msg));
    let opt_str = |key: &str| -> Result<Option<Option<String>>, Answer> {
        match f.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
            Some(Value::Null) => Ok(Some(None)),
            Some(_) => Err(validation_failed_for(
                "CheckRun",
                key,
                "invalid",
                &format!("{key} must be a string"),
            )),
        }
    };
    if let Some(v) = opt_str("details_url")? {
        run.details_url = v;
    }
    if let Some(v) = opt_str("external_id")? {
        run.external_id = v;
    }
    if let Some(v) = opt_str("started_at")? {
        run.started_at = v;
    }
    let completed_at = opt_str("completed_at")?;
    let status = opt_str("status")?.flatten();
    let conclusion = opt_str("conclusion")?.flatten();
    if let Some(s) = &status {
        if !["queued", "in_progress", "completed"].contains(&s.as_str()) {
            return bad("status", "status is not included in the list");
        }
    }
    if let Some(c) = &conclusion {
        if ![
            "action_required",
            "cancelled",
            "failure",
            "neutral",
            "success",
            "skipped",
            "timed_out",
        ]
        .contains(&c.as_str())
        {
            return bad("conclusion", "conclusion is not included in the list");
        }
    }
    match (status, conclusion) {
        (_, Some(c)) => {
            run.status = "completed".to_owned();
            run.conclusion = Some(c);
            run.completed_at = completed_at.flatten().or_else(|| Some(now.to_owned()));
        }
        (Some(s), None) if s == "completed" => {
            if run.conclusion.is_none() {
                return Err(validation_failed_for(
                    "CheckRun",
                    "conclusion",
                    "missing_field",
                    "Conclusion must be specified when status is completed.",
                ));
            }
        }
        (Some(s), None) => {
            if run.conclusion.is_some() {
                return bad(
                    "status",
                    "a completed check run cannot go back to queued or in progress",
                );
            }
            run.status = s;
        }
        (None, None) => {
            if let Some(c) = completed_at {
                if run.conclusion.is_none() {
                    return Err(validation_failed_for(
                        "CheckRun",
                        "conclusion",
                        "missing_field",
                        "Conclusion must be specified when completed_at is provided.",
                    ));
                }
                run.completed_at = c;
            }
        }
    }
    if let Some(o) = f.get("output") {
        let Some(o) = o.as_object() else {
            return bad("output", "output must be an object");
        };
        let get = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        let (title, summary, text) = (get("title"), get("summary"), get("text"));
        if title.is_none() || summary.is_none() {
            return Err(validation_failed_for(
                "CheckRun",
                "output",
                "missing_field",
                "output requires a title and a summary",
            ));
        }
        for (k, v) in [("summary", &summary), ("text", &text)] {
            if v.as_ref().is_some_and(|s| s.chars().count() > 65_535) {
                return bad(k, &format!("{k} is too long (maximum is 65535 characters)"));
            }
        }
        run.output = Some(CheckRunOutput {
            title,
            summary,
            text,
        });
        if let Some(a) = o.get("annotations") {
            let Some(items) = a.as_array() else {
                return bad("annotations", "annotations must be an array");
            };
            if items.len() > 50 {
                return bad("annotations", "Only 50 annotations are allowed per request");
            }
            for item in items {
                let s = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
                let n = |k: &str| item.get(k).and_then(Value::as_u64);
                let (Some(path), Some(start_line), Some(end_line), Some(level), Some(message)) = (
                    s("path"),
                    n("start_line"),
                    n("end_line"),
                    s("annotation_level"),
                    s("message"),
                ) else {
                    return Err(validation_failed_for(
                        "CheckRun",
                        "annotations",
                        "missing_field",
                        "an annotation needs path, start_line, end_line, annotation_level and message",
                    ));
                };
                if !["notice", "warning", "failure"].contains(&level.as_str()) {
                    return bad(
                        "annotation_level",
                        "annotation_level is not included in the list",
                    );
                }
                if start_line == 0 || end_line < start_line {
                    return bad("annotations", "start_line must be at most end_line");
                }
                run.annotations.push(CheckRunAnnotation {
                    path,
                    start_line,
                    end_line,
                    annotation_level: level,
                    title: s("title"),
                    message,
                });
            }
        }
    }
    if let Some(a) = f.get("actions") {
        let Some(items) = a.as_array() else {
            return bad("actions", "actions must be an array");
        };
        if items.len() > 3 {
            return bad("actions", "at most 3 actions");
        }
        let mut actions = Vec::new();
        for item in items {
            let get = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(label), Some(description), Some(identifier)) =
                (get("label"), get("description"), get("identifier"))
            else {
                return Err(validation_failed_for(
                    "CheckRun",
                    "actions",
                    "missing_field",
                    "an action needs label, description and identifier",
                ));
            };
            if label.chars().count() > 20
                || description.chars().count() > 40
                || identifier.chars().count() > 20
            {
                return bad(
                    "actions",
                    "label and identifier at most 20, description at most 40 characters",
                );
            }
            actions.push(CheckRunAction {
                label,
                description,
                identifier,
            });
        }
        run.actions = actions;
    }
    Ok(())
}

/// The `check-run` object.
fn to_json(base: &str, app_id: u64, r: &CheckRun) -> Value {
    let api = format!("{base}/repos/{}/check-runs/{}", r.repo, r.id);
    let owner = r.repo.split_once('/').map_or(r.repo.as_str(), |(o, _)| o);
    let output = r.output.as_ref();
    json!({
        "id": r.id, "head_sha": r.head_sha, "node_id": objects::node_id("CR", r.id),
        "external_id": r.external_id.clone().unwrap_or_default(),
        "url": api, "html_url": format!("{base}/{}/runs/{}", r.repo, r.id),
        "details_url": r.details_url.clone().unwrap_or_else(|| format!("{base}/apps/sdci")),
        "status": r.status, "conclusion": r.conclusion,
        "started_at": r.started_at, "completed_at": r.completed_at,
        "output": {
            "title": output.and_then(|o| o.title.clone()),
            "summary": output.and_then(|o| o.summary.clone()),
            "text": output.and_then(|o| o.text.clone()),
            "annotations_count": r.annotations.len(), "annotations_url": format!("{api}/annotations")
        },
        "name": r.name,
        "check_suite": {"id": objects::id_of(&format!("{}@{}", r.repo, r.head_sha))},
        "app": objects::integration(base, app_id, owner),
        "pull_requests": []
    })
}
