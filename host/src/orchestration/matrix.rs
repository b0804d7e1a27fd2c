//! The matrix intake (issue 20): what a commit runs is its own `.github/sdci.yml`. A job that
//! waits for its version is a *placeholder*; [`resolve`] reads the file through the gateway
//! (`sdci-agent file`, contracts §5), chooses the cells its trigger runs, and turns the
//! placeholder into one job per cell (`Store::expand_job`). Also what a cell changes in a job:
//! its steps ([`steps_for`]), the snapshot it starts from ([`snapshot_for`]: a fixed scenario
//! snapshot, or a built scenario's pointer, `store::scenarios`) and the name of its check run
//! and status context ([`report_name`]).
//!
//! Invariants:
//! - Fallbacks, in order: the matrix file; `.github/workstation-ci.yml`'s `qubes:` (`ci-config`);
//!   `default_version`. An empty matrix file counts as none. A file that does not parse ends the
//!   placeholder `failure`, its status naming the line: never silently ignored.
//! - While the gateway is unavailable the placeholder waits (retried by the intake), so no job
//!   runs cells guessed because GitHub was down.
//! - A trigger that selects no cell leaves nothing on GitHub (the placeholder is dropped
//!   unposted). A cell whose version has no pool ends `error` naming the fix, like a plain job.
//! - Cells are independent unless the file says `fail_fast: true`: then a failed cell
//!   (`failure`, the project's own) cancels the commit's other live cells of the same trigger.
//! - The cell's environment reaches every step as `SECUREDROP_ENV` through the steps' own `env`
//!   in the job file: every deployed `sdci-dom0` already applies a step's `env`, while a new
//!   field of `JobSpec` would be refused by an older dom0 in a golden snapshot (its job file
//!   refuses unknown fields). A scenario's steps come from the commit like its `Makefile` does.

use crate::config::Config;
use crate::config::Scenario;
use crate::domain::matrix::{self, Cell, Matrix, Selector, Trigger, MATRIX_PATH};
use crate::domain::JobState;
use crate::gateway::GatewayFailure;
use crate::hub::Hub;
use crate::store::{JobRow, NewCell, Store};
use sdci_protocol::job::Step;
use sdci_protocol::Reason;
use serde::{Deserialize, Serialize};

/// A cell as a job carries it (the store keeps it as this JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCell {
    pub version: String,
    pub env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// The golden snapshot the scenario asks for (a key of `[pools.V] scenarios`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_dev: Vec<CellCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// One failed cell cancels the commit's other cells.
    #[serde(default)]
    pub fail_fast: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellCommand {
    pub name: String,
    pub run: String,
    pub timeout_secs: u64,
}

impl JobCell {
    pub fn from_cell(c: &Cell, fail_fast: bool) -> Self {
        Self {
            version: c.version.clone(),
            env: c.env.clone(),
            scenario: c.scenario.clone(),
            snapshot: c.snapshot.clone(),
            before_dev: c
                .before_dev
                .iter()
                .map(|b| CellCommand {
                    name: b.name.clone(),
                    run: b.run.clone(),
                    timeout_secs: b.timeout_secs,
                })
                .collect(),
            test: c.test.clone(),
            fail_fast,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}

/// What a placeholder asks for (stored as text by `Store::insert_requested_job`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The cells a label runs (its own `labels:` in the file, or a host label `sdci:…`).
    Label(String),
    /// The cells a comment chose (`/sdci run 4.3 dev`): who asked, and the words.
    Select { login: String, words: Vec<String> },
    /// These cells by name (`/sdci retry`).
    Cells(Vec<String>),
}

impl Request {
    pub fn to_text(&self) -> String {
        match self {
            Request::Label(l) => format!("label:{l}"),
            Request::Select { login, words } => format!("select:{login}:{}", words.join(" ")),
            Request::Cells(names) => format!("cells:{}", names.join("\n")),
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_once(':')?;
        Some(match kind {
            "label" => Request::Label(rest.to_owned()),
            "select" => {
                let (login, words) = rest.split_once(':')?;
                Request::Select {
                    login: login.to_owned(),
                    words: words.split_whitespace().map(str::to_owned).collect(),
                }
            }
            "cells" => Request::Cells(rest.lines().map(str::to_owned).collect()),
            _ => return None,
        })
    }
}

/// What the intake should do with a placeholder after [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The matrix decided: cells queued, or the placeholder ended.
    Done,
    /// No matrix file: the plain path goes on (`ci-config`, then `default_version`).
    Plain,
    /// The gateway is unavailable: the placeholder waits.
    Unavailable,
}

/// The pull request number of a job's supersede key (`owner/repo#N`, possibly with a cell).
fn pr_number(job: &JobRow) -> Option<u64> {
    let key = job.supersede_key.as_deref()?;
    let rest = key.split_once('#')?.1;
    rest.split(' ').next()?.parse().ok()
}

/// The cells `m` runs for `job` (and why each), by its request or else by its trigger.
pub fn choose(
    cfg: &Config,
    m: &Matrix,
    job: &JobRow,
    request: Option<&Request>,
    pr_labels: &[String],
) -> Result<Vec<(Cell, String)>, String> {
    let cells = m.cells();
    let prefix = cfg.webhook.run_label_prefix.as_str();
    let by_label = |c: &Cell, l: &str| {
        c.runs_on(&Trigger::Label { name: l })
            || Selector::from_label(prefix, l, &cells).is_some_and(|s| s.selects(c))
    };
    let mut out = Vec::new();
    match request {
        Some(Request::Label(l)) => {
            for c in &cells {
                if by_label(c, l) {
                    out.push((c.clone(), format!("label:{l}")));
                }
            }
        }
        Some(Request::Select { login, words }) => {
            let s = Selector::parse(words.iter().map(String::as_str), &cells)?;
            for c in &cells {
                if s.selects(c) {
                    out.push((c.clone(), format!("comment:{login}")));
                }
            }
        }
        Some(Request::Cells(names)) => {
            for c in &cells {
                if names.contains(&c.name()) {
                    out.push((c.clone(), "retry".to_owned()));
                }
            }
        }
        None => {
            let (trigger, why) = match job.reason {
                Reason::Push => (
                    Trigger::Push {
                        branch: job.branch.as_deref().unwrap_or(""),
                    },
                    "push",
                ),
                Reason::PullRequest => (Trigger::PullRequest, "pull_request"),
                Reason::Nightly => (Trigger::Nightly, "nightly"),
                Reason::Manual => (Trigger::Manual, "manual"),
            };
            for c in &cells {
                if c.runs_on(&trigger) {
                    out.push((c.clone(), why.to_owned()));
                } else if job.reason == Reason::PullRequest {
                    // A labelled pull request runs the labelled cells on every approved head.
                    if let Some(l) = pr_labels.iter().find(|l| by_label(c, l)) {
                        out.push((c.clone(), format!("label:{l}")));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Resolves placeholder `job` by its commit's matrix file (see the module doc).
pub async fn resolve(hub: &Hub, job: &JobRow) -> Resolved {
    let store = &hub.store;
    let id = job.id.as_str();
    let request = match store.job_request(id) {
        Ok(r) => r.as_deref().and_then(Request::parse),
        Err(e) => {
            tracing::error!(job = %id, error = %e, "reading the job's request");
            return Resolved::Unavailable;
        }
    };
    let bytes = match hub
        .github
        .file(
            job.repo.as_str(),
            job.sha.as_str(),
            MATRIX_PATH,
            matrix::MAX_BYTES as u64,
        )
        .await
    {
        Ok(b) => {
            hub.health.set_gateway(true, "");
            b
        }
        Err(e) if e.kind() == GatewayFailure::Unavailable => {
            hub.health.set_gateway(false, &e.to_string());
            tracing::warn!(job = %id, error = %e,
                "file: the gateway is unavailable; the job waits for its matrix");
            return Resolved::Unavailable;
        }
        Err(e) if e.code == Some(sdci_protocol::GatewayExit::Usage.code()) => {
            // An agent older than `file` (contracts §5): the plain path, said once per job.
            tracing::warn!(job = %id, error = %e,
                "the agent cannot read {MATRIX_PATH} (no `file` command?); using ci-config");
            None
        }
        Err(e) => {
            let note = format!("reading {MATRIX_PATH} failed: {e}");
            tracing::warn!(job = %id, "{note}");
            end(hub, job, JobState::Failure, &note);
            return Resolved::Done;
        }
    };
    let bytes = match bytes {
        Some(b) if !b.iter().all(u8::is_ascii_whitespace) => b,
        _ => {
            return match request {
                // Without a matrix a label or a retry by name chooses nothing.
                Some(Request::Label(_)) | Some(Request::Cells(_)) => {
                    drop_placeholder(hub, job, &format!("no {MATRIX_PATH}: nothing to run"));
                    Resolved::Done
                }
                _ => Resolved::Plain,
            };
        }
    };
    let m = match matrix::parse(&bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "the commit's matrix file is refused");
            end(hub, job, JobState::Failure, &e.to_string());
            return Resolved::Done;
        }
    };
    let labels = pr_number(job)
        .and_then(|n| store.pr_labels(job.repo.as_str(), n).ok())
        .unwrap_or_default();
    let chosen = match choose(&hub.cfg, &m, job, request.as_ref(), &labels) {
        Ok(c) => c,
        Err(e) => {
            drop_placeholder(hub, job, &e);
            return Resolved::Done;
        }
    };
    let cells: Vec<NewCell> = chosen
        .iter()
        .map(|(c, why)| NewCell {
            version: c.version.clone(),
            name: c.name(),
            cell: JobCell::from_cell(c, m.fail_fast).to_json(),
            queued_by: why.clone(),
        })
        .collect();
    let why = format!(
        "{MATRIX_PATH}: no cell runs for this {}",
        match &request {
            Some(r) => r.to_text(),
            None => job.reason.as_str().to_owned(),
        }
    );
    let e = match store.expand_job(id, &cells, &why, hub.cfg.jobs.supersede_running) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(job = %id, error = %e, "expanding the matrix");
            return Resolved::Unavailable;
        }
    };
    for s in &e.stop_running {
        hub.cancel_live(s);
    }
    for (jid, name) in &e.jobs {
        let version = chosen
            .iter()
            .find(|(c, _)| c.name() == *name)
            .map(|(c, _)| c.version.clone())
            .unwrap_or_default();
        if !hub.cfg.pools.contains_key(&version) {
            let note = format!(
                "no VM pool for Qubes {version} (cell {name}): add [pools.\"{version}\"] to the \
                 host config"
            );
            let _ = store.finish(jid, JobState::Error, &note, false);
        }
    }
    tracing::info!(job = %id, cells = ?e.jobs, already = ?e.already,
        superseded = ?e.superseded, "matrix resolved");
    hub.wake_all();
    Resolved::Done
}

fn end(hub: &Hub, job: &JobRow, state: JobState, note: &str) {
    let r = match state {
        JobState::Failure => hub.store.fail_placeholder(job.id.as_str(), note),
        _ => hub.store.finish(job.id.as_str(), state, note, false),
    };
    if let Err(e) = r {
        tracing::error!(job = %job.id, error = %e, "ending the job");
    }
    hub.wake_all();
}

fn drop_placeholder(hub: &Hub, job: &JobRow, why: &str) {
    tracing::info!(job = %job.id, %why, "nothing to queue");
    if let Err(e) = hub.store.expand_job(job.id.as_str(), &[], why, false) {
        tracing::error!(job = %job.id, error = %e, "dropping the job");
    }
}

/// After job `job` ended `state`: when it is a failed cell of a matrix with `fail_fast`, the
/// other live cells of the same commit and trigger are canceled (the default, `fail_fast:
/// false`, leaves every cell alone).
pub fn fail_fast(hub: &Hub, job: &JobRow, state: JobState) {
    if state != JobState::Failure {
        return;
    }
    let Some((name, cell)) = job_cell(hub, job.id.as_str()) else {
        return;
    };
    if !cell.fail_fast {
        return;
    }
    let why = format!("fail_fast: cell {name} failed");
    let others = hub
        .store
        .cell_jobs(job.repo.as_str(), job.sha.as_str())
        .unwrap_or_default();
    for (j, _) in others {
        let live = j.state == JobState::Queued || j.state.is_active();
        if j.id == job.id || j.reason != job.reason || !live {
            continue;
        }
        match hub.store.request_cancel(j.id.as_str(), &why) {
            Ok(Some(false)) => hub.cancel_live(j.id.as_str()),
            Ok(_) => {}
            Err(e) => tracing::error!(job = %j.id, error = %e, "fail_fast: canceling a cell"),
        }
    }
    hub.wake_all();
}

/// The job's cell, if it runs one.
pub fn job_cell(hub: &Hub, id: &str) -> Option<(String, JobCell)> {
    let c = hub.store.job_cell(id).ok()??;
    Some((c.name.clone(), JobCell::from_json(&c.cell)?))
}

/// The check run's name and status context of a job: `[agent] cell_name` with the cell's name
/// for a cell job (`sdci / 4.3 / dev`), else `None` (the plain names).
pub fn report_name(cfg: &Config, cell_name: Option<&str>) -> Option<String> {
    cell_name.map(|n| cfg.agent.cell_name.replace("{cell}", n))
}

/// The dom0 steps of a cell's job: the configured steps with `SECUREDROP_ENV` on each, the
/// scenario's commands before the `make-dev` step and its test command in place of
/// `make-test`'s. An error names what the configured steps lack.
pub fn steps_for(mut steps: Vec<Step>, cell: &JobCell) -> Result<Vec<Step>, String> {
    if !cell.before_dev.is_empty() {
        let at = steps
            .iter()
            .position(|s| s.name == "make-dev")
            .ok_or_else(|| {
                "the scenario adds steps before `make-dev`, and [jobs] steps has no step named \
             make-dev"
                    .to_owned()
            })?;
        let added: Vec<Step> = cell
            .before_dev
            .iter()
            .map(|c| Step::new(&c.name, &["sh", "-c", &c.run], c.timeout_secs))
            .collect();
        steps.splice(at..at, added);
    }
    if let Some(test) = &cell.test {
        let step = steps
            .iter_mut()
            .find(|s| s.name == "make-test")
            .ok_or_else(|| {
                "the scenario overrides the test command, and [jobs] steps has no step named \
                 make-test"
                    .to_owned()
            })?;
        step.argv = vec!["sh".into(), "-c".into(), test.clone()];
    }
    for s in &mut steps {
        s.env.insert("SECUREDROP_ENV".into(), cell.env.clone());
    }
    Ok(steps)
}

/// The snapshot a cell's job reverts to: the pool's golden snapshot (`None`), the fixed one
/// `[pools.V] scenarios` maps the scenario's snapshot to, or a built scenario's current pointer
/// in the store. A built scenario with no snapshot yet is an error naming the command that
/// builds it: never the golden snapshot in its place. The error is (the config key, the message).
pub fn snapshot_for(
    cfg: &Config,
    store: &Store,
    cell: &JobCell,
) -> Result<Option<String>, (String, String)> {
    let Some(want) = &cell.snapshot else {
        return Ok(None);
    };
    let v = &cell.version;
    match cfg.pools.get(v).and_then(|p| p.scenarios.get(want)) {
        Some(Scenario::Fixed(s)) => Ok(Some(s.clone())),
        Some(Scenario::Built(_)) => match store.scenario_snapshot(v, want) {
            Ok(Some(s)) => Ok(Some(s)),
            Ok(None) => Err((
                format!("[pools.\"{v}\".scenarios.{want}]"),
                format!(
                    "scenario {want} of Qubes {v} has no snapshot built yet: run `sdci-host save \
                     --version {v} --scenario {want}`"
                ),
            )),
            Err(e) => Err((
                format!("[pools.\"{v}\".scenarios.{want}]"),
                format!("reading scenario {want}'s snapshot from the store: {e}"),
            )),
        },
        None => Err((
            format!("[pools.\"{v}\"] scenarios"),
            format!(
                "the cell's scenario starts from snapshot {want:?}, which [pools.\"{v}\"] \
                 scenarios does not map: add {want} = \"<snapshot name>\" there"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(env: &str) -> JobCell {
        JobCell {
            version: "4.3".into(),
            env: env.into(),
            scenario: Some("upgrade".into()),
            snapshot: Some("prod-installed".into()),
            before_dev: vec![CellCommand {
                name: "install-prod".into(),
                run: "make prod".into(),
                timeout_secs: 60,
            }],
            test: Some("make test-upgrade".into()),
            fail_fast: false,
        }
    }

    #[test]
    fn a_cells_steps_carry_its_environment_and_its_scenarios_commands() {
        let steps = steps_for(sdci_protocol::job::default_steps(), &cell("staging")).unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        let dev = names.iter().position(|n| *n == "make-dev").unwrap();
        assert_eq!(names[dev - 1], "install-prod");
        assert_eq!(steps[dev - 1].argv, ["sh", "-c", "make prod"]);
        let test = steps.iter().find(|s| s.name == "make-test").unwrap();
        assert_eq!(test.argv, ["sh", "-c", "make test-upgrade"]);
        assert_eq!(test.env.get("CI").map(String::as_str), Some("true"));
        assert!(steps
            .iter()
            .all(|s| s.env.get("SECUREDROP_ENV").map(String::as_str) == Some("staging")));
        let bare = vec![Step::new("x", &["true"], 1)];
        assert!(steps_for(bare, &cell("dev"))
            .unwrap_err()
            .contains("make-dev"));
    }

    #[test]
    fn requests_round_trip_as_text() {
        for r in [
            Request::Label("sdci:4.3".into()),
            Request::Select {
                login: "alice".into(),
                words: vec!["4.3".into(), "dev".into()],
            },
            Request::Cells(vec!["4.3 / dev".into(), "4.3 / staging".into()]),
        ] {
            assert_eq!(Request::parse(&r.to_text()), Some(r));
        }
        assert_eq!(Request::parse("nonsense"), None);
    }

    #[test]
    fn a_scenario_snapshot_must_be_mapped_by_its_pool() {
        let cfg = Config::parse(
            "[pools.\"4.3\"]\nprefix = \"Q\"\ngolden_snapshot = \"g\"\n\
             scenarios = { prod-installed = \"golden-prod-2026\" }\n",
            std::path::Path::new("t"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(
            snapshot_for(&cfg, &store, &cell("dev")).unwrap().as_deref(),
            Some("golden-prod-2026")
        );
        let mut c = cell("dev");
        c.snapshot = Some("other".into());
        let (key, msg) = snapshot_for(&cfg, &store, &c).unwrap_err();
        assert_eq!(key, "[pools.\"4.3\"] scenarios");
        assert!(msg.contains("other"), "{msg}");
        c.snapshot = None;
        assert_eq!(snapshot_for(&cfg, &store, &c).unwrap(), None);
    }

    #[test]
    fn a_built_scenario_starts_from_its_pointer_and_unbuilt_names_the_command() {
        let cfg = Config::parse(
            "[pools.\"4.3\"]\nprefix = \"Q\"\ngolden_snapshot = \"g\"\n\
             [pools.\"4.3\".scenarios.prod-installed]\nprovision = [\"install\"]\n",
            std::path::Path::new("t"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (key, msg) = snapshot_for(&cfg, &store, &cell("dev")).unwrap_err();
        assert_eq!(key, "[pools.\"4.3\".scenarios.prod-installed]");
        assert!(
            msg.contains("sdci-host save --version 4.3 --scenario prod-installed"),
            "{msg}"
        );
        store
            .set_scenario_snapshot("4.3", "prod-installed", "scenario-prod-installed_1")
            .unwrap();
        assert_eq!(
            snapshot_for(&cfg, &store, &cell("dev")).unwrap().as_deref(),
            Some("scenario-prod-installed_1")
        );
    }
}
