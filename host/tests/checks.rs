//! Check runs (issue 17, contracts §10) through the real `sdci-agent` in GitHub App mode and
//! the GitHub stand-in: a job's check run is created `queued`, goes `in_progress` and is
//! `completed` with the conclusion, the job page and a summary of its steps; an update queued
//! while GitHub is down is sent when it is back, only the newest; a re-run from GitHub needs the
//! sender's write access and makes a new job with its own check run; PAT mode posts no check
//! runs. The host runs in-process with its outbox workers (no scheduler: the tests move the job
//! through the store as the lifecycle would).
//!
//! Needs the binaries built first (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)]

mod common;

use common::{sha, MemoryHv, REPO, SECRET};
use sdci_host::config::Config;
use sdci_host::domain::JobState;
use sdci_host::hub::Hub;
use sdci_host::server::{self, Parts};
use sdci_host::store::{NewJob, PostState};
use sdci_tests::github::{ChangeKind, CheckRun, GitHub, TEST_APP_PRIVATE_KEY};
use sdci_tests::job_world::check_events;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outboxes and the HTTP routes; no scheduler, intake or reconciler.
const OUTBOXES: Parts = Parts {
    scheduler: false,
    intake: false,
    statuses: true,
    reconciler: false,
};

struct AppHost {
    hub: Arc<Hub>,
    url: String,
    gh: GitHub,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AppHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The GitHub stand-in with the App installed, the real agent configured for it (App mode, or
/// a PAT with `app = false`), and the host serving with its outboxes.
async fn app_host(app: bool, agent_extra: &str) -> AppHost {
    let agent = sdci_tests::binary("sdci-agent");
    assert!(agent.exists(), "run cargo build --workspace --bins");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gh = GitHub::start();
    gh.add_repo(REPO);
    let auth = if app {
        gh.set_app(12345, 678, TEST_APP_PRIVATE_KEY);
        std::fs::write(d.join("app.pem"), TEST_APP_PRIVATE_KEY).unwrap();
        format!(
            "[app]\napp_id = 12345\ninstallation_id = 678\nprivate_key_file = {:?}\n",
            d.join("app.pem").display().to_string()
        )
    } else {
        gh.add_pat("ghp_checks_test");
        std::fs::write(d.join("token"), "ghp_checks_test\n").unwrap();
        format!("token_file = {:?}\n", d.join("token").display().to_string())
    };
    let retry = "[retry]\nmax_attempts = 2\ninitial_backoff_ms = 10\nmax_backoff_ms = 50\n\
                 max_rate_limit_wait_secs = 5\nrequest_timeout_secs = 20\n";
    let agent_toml = d.join("agent.toml");
    let text = if app {
        format!("api_url = {:?}\n{retry}\n{auth}", gh.url())
    } else {
        format!("api_url = {:?}\n{auth}\n{retry}", gh.url())
    };
    std::fs::write(&agent_toml, text).unwrap();
    std::fs::write(d.join("secret"), SECRET).unwrap();
    std::fs::write(d.join("dom0-password"), "pw\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = format!(
        "listen = \"{addr}\"\npublic_url = \"http://{addr}\"\ndata_dir = {data:?}\n\
         reconcile_interval_secs = 3600\n\
         [webhook]\nsecret_file = {secret:?}\nrepos = [\"{REPO}\"]\n\
         [agent]\npath = {agent:?}\nconfig = {agent_toml:?}\ngithub_app = {app}\n\
         resolve_version = false\ntimeout_secs = 30\n{agent_extra}\n\
         [dom0]\npassword_file = {pw:?}\n",
        data = d.join("data").display().to_string(),
        secret = d.join("secret").display().to_string(),
        agent = agent.display().to_string(),
        agent_toml = agent_toml.display().to_string(),
        pw = d.join("dom0-password").display().to_string(),
    );
    let cfg = Config::parse(&config, Path::new("test.toml")).unwrap();
    let auth = server::guest_auth(&cfg).unwrap();
    let hub = server::hub_from_config(cfg).unwrap();
    let h2 = hub.clone();
    let hv = MemoryHv::with_vms(&[]);
    let task = tokio::spawn(async move {
        server::run(h2, hv, auth, listener, OUTBOXES).await.unwrap();
    });
    // The workers start with the server; wait until the outboxes are up (check runs enabled).
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://{addr}/healthz"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the host did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    AppHost {
        hub,
        url: format!("http://{addr}"),
        gh,
        _dir: dir,
        task,
    }
}

/// A job of commit `sha(n)` on `main`, as a push would store it, with the outboxes woken.
fn new_job(h: &AppHost, n: u32) -> String {
    let id = h
        .hub
        .store
        .insert_job(&NewJob {
            repo: REPO.parse().unwrap(),
            sha: sha(n).parse().unwrap(),
            reason: sdci_protocol::Reason::Push,
            branch: Some("main".into()),
            supersede_key: Some(format!("{REPO}@refs/heads/main")),
            clone_url: "https://example/o/r.git".into(),
            version: Some("4.2".into()),
            snapshot: None,
            update_first: false,
            commit_author: None,
            commit_subject: None,
        })
        .unwrap();
    h.hub.wake_all();
    id.to_string()
}

/// Claims a VM for the job and records `sdci-dom0 launch` started, as the lifecycle does.
fn launch(h: &AppHost, id: &str) -> u32 {
    let s = &h.hub.store;
    s.register_vms("4.2", &["vm-a".into()]).unwrap();
    let claim = s
        .claim("4.2", &["vm-a".into()], 1, "secret", i64::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(claim.job.id.as_str(), id);
    s.launch_started(id, 42, i64::MAX / 2, "The build is running")
        .unwrap();
    h.hub.wake_all();
    claim.attempt
}

/// Steps `names` of attempt `attempt`, passed but for `failed` (exit status 2).
fn steps(h: &AppHost, id: &str, attempt: u32, names: &[&str], failed: Option<&str>) {
    for (i, name) in names.iter().enumerate() {
        let status = if Some(*name) == failed { 2 } else { 0 };
        h.hub
            .store
            .record_step(
                id,
                attempt,
                i as u32,
                name,
                Some(1_000 * i as i64),
                Some(1_500),
                Some(status),
                Some(false),
            )
            .unwrap();
    }
}

/// Waits until the stand-in's check runs of `sha(n)` satisfy `done`.
async fn wait_runs(h: &AppHost, n: u32, done: impl Fn(&[CheckRun]) -> bool) -> Vec<CheckRun> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = h.gh.check_runs(REPO, &sha(n));
        if done(&runs) {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "check runs of sha({n}) now: {runs:#?}\nstore: {:?}",
            h.hub
                .store
                .recent_jobs(10)
                .unwrap()
                .iter()
                .map(|j| h.hub.store.check_updates(&j.id).unwrap())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until GitHub holds a commit status `state` for `sha(n)`.
async fn wait_status(h: &AppHost, n: u32, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h
        .gh
        .statuses()
        .iter()
        .any(|s| s.sha == sha(n) && s.state == state)
    {
        assert!(Instant::now() < deadline, "no {state} status for sha({n})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_is(runs: &[CheckRun], status: &str) -> bool {
    runs.len() == 1 && runs[0].status == status
}

#[tokio::test]
async fn a_jobs_check_run_goes_queued_in_progress_completed_with_its_steps_and_its_job_page() {
    let h = app_host(true, "").await;
    let id = new_job(&h, 1);
    let runs = wait_runs(&h, 1, |r| status_is(r, "queued")).await;
    assert_eq!(runs[0].name, "sdci / Qubes 4.2");
    assert_eq!(runs[0].external_id.as_deref(), Some(id.as_str()));
    let page = format!("{}/jobs/{id}", h.url);
    assert_eq!(runs[0].details_url.as_deref(), Some(page.as_str()));

    let attempt = launch(&h, &id);
    wait_runs(&h, 1, |r| status_is(r, "in_progress")).await;
    steps(&h, &id, attempt, &["fetch", "make-test"], None);
    h.hub
        .store
        .record_result(&id, attempt, "success", "all steps passed")
        .unwrap();
    h.hub
        .store
        .finish(&id, JobState::Success, "all steps passed", true)
        .unwrap();
    h.hub.wake_all();
    let runs = wait_runs(&h, 1, |r| status_is(r, "completed")).await;
    let run = &runs[0];
    assert_eq!(run.conclusion.as_deref(), Some("success"));
    let out = run.output.clone().unwrap();
    assert_eq!(out.title.as_deref(), Some("Passed: all 2 steps"));
    let summary = out.summary.unwrap();
    assert!(
        summary.contains("| 2 | make-test | ✓ passed | 1.5 s |"),
        "{summary}"
    );
    assert!(summary.contains(&page), "{summary}");
    assert_eq!(
        run.actions
            .iter()
            .map(|a| (a.identifier.as_str(), a.label.as_str()))
            .collect::<Vec<_>>(),
        [("rerun", "Re-run")]
    );
    // One create, then updates of that same run, in order.
    let history = h.gh.check_run_history(run.id);
    let seen: Vec<(ChangeKind, String)> = history
        .iter()
        .map(|c| (c.kind, c.after.status.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (ChangeKind::Created, "queued".to_owned()),
            (ChangeKind::Updated, "in_progress".to_owned()),
            (ChangeKind::Updated, "completed".to_owned())
        ]
    );
    assert!(history[1].after.started_at.is_some());
    // Statuses still go beside the check run (commit_statuses defaults to true).
    wait_status(&h, 1, "success").await;
}

#[tokio::test]
async fn a_failing_step_is_named_with_the_last_lines_of_its_log() {
    let h = app_host(true, "").await;
    let id = new_job(&h, 2);
    let attempt = launch(&h, &id);
    steps(
        &h,
        &id,
        attempt,
        &["fetch", "make-test", "after"],
        Some("make-test"),
    );
    let log = h.hub.cfg.log_dir().join(format!("{id}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(
        &log,
        "2026-12-01T10:00:00.000Z [make-test] collected 3 items\n\
         2026-12-01T10:00:01.000Z [make-test] FAILED tests/test_x.py::test_y - assert 1 == 2\n\
         2026-12-01T10:00:02.000Z [after] unrelated\n",
    )
    .unwrap();
    h.hub
        .store
        .record_result(
            &id,
            attempt,
            "failure",
            "step \"make-test\" failed with exit status 2",
        )
        .unwrap();
    h.hub
        .store
        .finish(&id, JobState::Failure, "a step failed", true)
        .unwrap();
    h.hub.wake_all();
    let runs = wait_runs(&h, 2, |r| status_is(r, "completed")).await;
    assert_eq!(runs[0].conclusion.as_deref(), Some("failure"));
    let out = runs[0].output.clone().unwrap();
    assert_eq!(out.title.as_deref(), Some("Failed: step make-test"));
    let summary = out.summary.unwrap();
    assert!(
        summary.contains("### Failing step: make-test (failed with exit status 2)"),
        "{summary}"
    );
    assert!(
        summary.contains("FAILED tests/test\\_x.py")
            || summary.contains("FAILED tests/test_x.py::test_y - assert 1 == 2"),
        "{summary}"
    );
    assert!(
        !summary.contains("unrelated"),
        "only the failing step's lines: {summary}"
    );
}

#[tokio::test]
async fn updates_queued_while_github_is_down_are_sent_when_it_is_back_only_the_newest() {
    let h = app_host(true, "").await;
    let id = new_job(&h, 3);
    let runs = wait_runs(&h, 3, |r| status_is(r, "queued")).await;
    h.gh.outage_for(Duration::from_secs(3), 503);
    let attempt = launch(&h, &id);
    steps(&h, &id, attempt, &["fetch"], None);
    h.hub
        .store
        .finish(&id, JobState::Success, "all steps passed", true)
        .unwrap();
    h.hub.wake_all();
    let done = wait_runs(&h, 3, |r| status_is(r, "completed")).await;
    assert_eq!(done[0].id, runs[0].id, "the same run, updated");
    let kinds: Vec<String> =
        h.gh.check_run_history(runs[0].id)
            .iter()
            .map(|c| c.after.status.clone())
            .collect();
    assert_eq!(
        kinds,
        ["queued", "completed"],
        "in_progress was superseded while GitHub was down"
    );
    let updates = h.hub.store.check_updates(&id).unwrap();
    assert!(
        updates.iter().any(|u| u.posted == PostState::Skipped),
        "{updates:?}"
    );
}

/// An ended job of `sha(n)` whose check run is completed `failure` on GitHub.
async fn failed_job_with_its_run(h: &AppHost, n: u32) -> (String, CheckRun) {
    let id = new_job(h, n);
    let attempt = launch(h, &id);
    steps(h, &id, attempt, &["make-test"], Some("make-test"));
    h.hub
        .store
        .finish(&id, JobState::Failure, "a step failed", true)
        .unwrap();
    h.hub.wake_all();
    let runs = wait_runs(h, n, |r| status_is(r, "completed")).await;
    (id, runs[0].clone())
}

async fn deliver(
    h: &AppHost,
    event: &str,
    delivery: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    common::deliver(
        &reqwest::Client::new(),
        &h.url,
        event,
        delivery,
        &body.to_string(),
        Some(SECRET),
    )
    .await
}

#[tokio::test]
async fn a_rerun_from_github_needs_the_senders_write_access_and_makes_a_new_job_with_its_own_run() {
    let h = app_host(true, "").await;
    let (id, run) = failed_job_with_its_run(&h, 4).await;
    h.gh.set_permission(REPO, "visitor", "read");
    h.gh.set_permission(REPO, "maint", "maintain");
    let jobs_before = h.hub.store.count_jobs().unwrap();

    let refused = check_events::requested_action(&run, "visitor", "rerun").unwrap();
    let (code, text) = deliver(&h, "check_run", "r-1", &refused).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("visitor has no write access"), "{text}");
    let stranger = check_events::rerequested(&run, "nobody-known").unwrap();
    let (code, text) = deliver(&h, "check_run", "r-2", &stranger).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("nobody-known has no write access"), "{text}");
    assert_eq!(
        h.hub.store.count_jobs().unwrap(),
        jobs_before,
        "nothing queued"
    );

    let allowed = check_events::rerequested(&run, "maint").unwrap();
    let (code, text) = deliver(&h, "check_run", "r-3", &allowed).await;
    assert_eq!(code, 202, "{text}");
    let new = text.strip_prefix("queued job ").unwrap().to_owned();
    assert_ne!(new, id);
    let job = h.hub.store.job(&new).unwrap().unwrap();
    assert_eq!(
        (job.sha.as_str(), job.state),
        (sha(4).as_str(), JobState::Queued)
    );
    let note = h.hub.store.transitions(&new).unwrap()[0].3.clone().unwrap();
    assert!(note.contains(&id) && note.contains("by maint"), "{note}");
    // Its own check run, queued beside the old one.
    let runs = wait_runs(&h, 4, |r| r.len() == 2).await;
    assert_eq!(runs[1].external_id.as_deref(), Some(new.as_str()));
    assert_eq!(runs[1].status, "queued");
    // A redelivery of the same delivery queues nothing more.
    let (code, text) = deliver(&h, "check_run", "r-3", &allowed).await;
    assert_eq!(
        (code, text.as_str()),
        (200, "duplicate delivery: nothing new")
    );

    // The Re-run button (requested_action) by someone with write access, and the suite.
    let action = check_events::requested_action(&run, "maint", "rerun").unwrap();
    assert_eq!(deliver(&h, "check_run", "r-4", &action).await.0, 202);
    let suite = check_events::suite_rerequested(&run, "maint").unwrap();
    let (code, text) = deliver(&h, "check_suite", "r-5", &suite).await;
    assert_eq!(code, 202, "{text}");
    assert_eq!(h.hub.store.count_jobs().unwrap(), jobs_before + 3);
    // Four deliveries by maint within the minute: GitHub was asked once.
    let asked =
        h.gh.requests()
            .iter()
            .filter(|r| r.path.ends_with("/collaborators/maint/permission"))
            .count();
    assert_eq!(asked, 1, "the permission is cached for a minute");
}

#[tokio::test]
async fn a_push_of_a_commit_whose_last_job_ended_in_error_queues_a_new_job_not_already_covered() {
    let h = app_host(true, "").await;
    let push = |delivery: &'static str| {
        let url = h.url.clone();
        async move { common::deliver_push(&reqwest::Client::new(), &url, delivery, "main", 7).await }
    };
    let (code, first) = push("p-1").await;
    assert_eq!(code, 202, "{first}");
    let id = first.strip_prefix("queued job ").unwrap().to_owned();
    let (code, text) = push("p-2").await;
    assert_eq!((code, text), (200, format!("already covered by job {id}")));
    h.hub
        .store
        .finish(
            &id,
            JobState::Error,
            "infrastructure error after 3 attempts",
            false,
        )
        .unwrap();
    let (code, text) = push("p-3").await;
    assert_eq!(code, 202, "an errored commit runs again: {text}");
    let again = text.strip_prefix("queued job ").unwrap().to_owned();
    assert_ne!(again, id);
    h.hub
        .store
        .finish(&again, JobState::Success, "all steps passed", false)
        .unwrap();
    let (code, text) = push("p-4").await;
    assert_eq!(
        (code, text),
        (200, format!("already covered by job {again}"))
    );
}

#[tokio::test]
async fn in_pat_mode_there_are_no_check_runs_and_statuses_are_posted() {
    let h = app_host(false, "").await;
    let id = new_job(&h, 5);
    h.hub
        .store
        .finish(&id, JobState::Success, "all steps passed", false)
        .unwrap();
    h.hub.wake_all();
    wait_status(&h, 5, "success").await;
    assert!(h.gh.check_runs(REPO, &sha(5)).is_empty());
    assert!(
        h.hub.store.check_updates(&id).unwrap().is_empty(),
        "none queued either"
    );
}

#[tokio::test]
async fn with_commit_statuses_off_only_the_check_run_reports() {
    let h = app_host(true, "commit_statuses = false").await;
    let id = new_job(&h, 6);
    wait_runs(&h, 6, |r| status_is(r, "queued")).await;
    h.hub
        .store
        .finish(&id, JobState::Canceled, "canceled by an operator", false)
        .unwrap();
    h.hub.wake_all();
    let runs = wait_runs(&h, 6, |r| status_is(r, "completed")).await;
    assert_eq!(runs[0].conclusion.as_deref(), Some("cancelled"));
    // The status outbox handled the job's statuses by skipping them, and posted none.
    let deadline = Instant::now() + Duration::from_secs(30);
    let skipped = |h: &AppHost| {
        let rows = h.hub.store.statuses(&id).unwrap();
        rows.len() == 2 && rows.iter().all(|r| r.posted == PostState::Skipped)
    };
    while !skipped(&h) {
        assert!(Instant::now() < deadline, "{:?}", h.hub.store.statuses(&id));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        h.gh.statuses().iter().all(|s| s.sha != sha(6)),
        "no commit status"
    );
}

/// pytest's JUnit XML (`line` 0-based, as pytest writes it): the apt-sources failure at
/// `tests/test_vms.py` line 41 (the `def` on line 42), `more` failures in
/// `tests/test_many.py`, and cases that get no annotation: one passing, one error without a
/// line, one failure whose file points outside the repository.
fn junit_with_failures(more: u32) -> String {
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_vms" name="test_sd_vm_apt_sources" file="tests/test_vms.py" line="41" time="0.5"><failure message="AssertionError: sources differ: a != b">def test_sd_vm_apt_sources():
&gt;       assert sources == expected</failure></testcase>
<testcase classname="tests.test_vms" name="test_ok" file="tests/test_vms.py" line="12" time="0.1"/>
<testcase classname="tests.test_dom0" name="test_setup" file="tests/test_dom0.py" time="0"><error message="fixture sd-dev not running"/></testcase>
<testcase classname="tests.test_evil" name="test_out" file="../outside.py" line="3"><failure message="x"/></testcase>
"#,
    );
    for i in 0..more {
        xml.push_str(&format!(
            "<testcase classname=\"tests.test_many\" name=\"test_{i}\" file=\"tests/test_many.py\" \
             line=\"{}\"><failure message=\"boom {i}\"/></testcase>\n",
            10 * i
        ));
    }
    xml.push_str("</testsuite></testsuites>");
    xml
}

/// A failed job of `sha(n)` whose attempt stored `junit`'s cases; waits for its completion.
async fn failed_job_with_tests(h: &AppHost, n: u32, junit: &str) -> CheckRun {
    use sdci_host::domain::junit::{parse, JunitLimits};
    let id = new_job(h, n);
    let attempt = launch(h, &id);
    steps(h, &id, attempt, &["make-test"], Some("make-test"));
    let parsed = parse("junit/1.xml", junit.as_bytes(), &JunitLimits::default());
    assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
    let set = sdci_host::store::ResultSet {
        stored_ms: 1,
        archive_bytes: None,
        notes: Vec::new(),
        screenshot: false,
    };
    let s = &h.hub.store;
    s.store_results(&id, attempt, &parsed.cases, &[], &set)
        .unwrap();
    s.record_result(&id, attempt, "failure", "step \"make-test\" failed")
        .unwrap();
    s.finish(&id, JobState::Failure, "a step failed", true)
        .unwrap();
    h.hub.wake_all();
    let runs = wait_runs(h, n, |r| status_is(r, "completed")).await;
    runs[0].clone()
}

#[tokio::test]
async fn a_failing_junit_case_with_file_and_line_is_annotated_there_on_the_check_run() {
    let h = app_host(true, "").await;
    let run = failed_job_with_tests(&h, 20, &junit_with_failures(0)).await;
    assert_eq!(run.conclusion.as_deref(), Some("failure"));
    // Only the failure with a file, a line and a path inside the repository.
    let a = &run.annotations;
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(
        (a[0].path.as_str(), a[0].start_line, a[0].end_line),
        ("tests/test_vms.py", 42, 42)
    );
    assert_eq!(a[0].annotation_level, "failure");
    assert_eq!(
        a[0].title.as_deref(),
        Some("tests.test_vms::test_sd_vm_apt_sources failed")
    );
    assert!(
        a[0].message
            .starts_with("failed\n\nAssertionError: sources differ: a != b\n\n")
            && a[0].message.contains("assert sources == expected"),
        "{}",
        a[0].message
    );
    let history = h.gh.check_run_history(run.id);
    let completion = history.last().unwrap();
    assert_eq!(completion.after.status, "completed");
    assert_eq!(
        completion.fields["output"]["annotations"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the completing update carries the annotation"
    );
    let summary = run.output.unwrap().summary.unwrap();
    assert!(
        summary.contains("1 failed test(s) annotated at their file:line."),
        "{summary}"
    );
}

#[tokio::test]
async fn more_than_fifty_annotations_go_fifty_per_update_and_stop_at_the_cap_said_in_the_summary() {
    let h = app_host(true, "").await;
    // 1 + 504 annotatable failures: 500 annotated in 10 calls of 50, 5 left out.
    let cap = sdci_host::orchestration::checks::MAX_ANNOTATIONS;
    let run = failed_job_with_tests(&h, 21, &junit_with_failures(504)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut history = h.gh.check_run_history(run.id);
    while history.last().unwrap().after.annotations.len() < cap {
        assert!(
            Instant::now() < deadline,
            "annotations so far: {}",
            history.last().unwrap().after.annotations.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        history = h.gh.check_run_history(run.id);
    }
    let completion = history
        .iter()
        .position(|c| c.after.status == "completed")
        .unwrap();
    let per_call: Vec<usize> = history[completion..]
        .iter()
        .map(|c| {
            c.fields["output"]["annotations"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .collect();
    assert_eq!(per_call, [50; 10], "the completion, then 9 further updates");
    let after = &history.last().unwrap().after;
    assert_eq!(after.annotations.len(), cap);
    assert_eq!(after.conclusion.as_deref(), Some("failure"));
    assert_eq!(
        after
            .actions
            .iter()
            .map(|a| a.identifier.as_str())
            .collect::<Vec<_>>(),
        ["rerun"],
        "the further updates leave the buttons"
    );
    // Every further update sends the completion's output again.
    let outputs: Vec<&serde_json::Value> = history[completion..]
        .iter()
        .map(|c| &c.fields["output"]["summary"])
        .collect();
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    let summary = after.output.clone().unwrap().summary.unwrap();
    assert!(
        summary.contains("500 failed test(s) annotated")
            && summary.contains("5 more failed test(s) not annotated: at most 500"),
        "{summary}"
    );
    assert_eq!(after.annotations[0].path, "tests/test_vms.py");
    assert_eq!(
        (
            after.annotations[1].path.as_str(),
            after.annotations[1].start_line
        ),
        ("tests/test_many.py", 1)
    );
}
