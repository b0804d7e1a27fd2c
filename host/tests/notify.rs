//! Slack notifications, against the Slack stand-in (`sdci_tests::slack`: axum on 127.0.0.1:0
//! recording each POSTed JSON body, answering with a chosen status) and a real `sdci-host` service on a real SQLite
//! file. The VM side is `MemoryHv` (see `common/mod.rs`): the test must hold a job running and
//! let it end at a chosen moment.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::CommitInfo;
use sdci_host::domain::JobState;
use sdci_host::orchestration::notifier::Notifier;
use sdci_host::server::Parts;
use sdci_tests::slack::SlackStandIn;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SAFETY: Duration = Duration::from_secs(120);

async fn slack(status: u16) -> SlackStandIn {
    SlackStandIn::start(status).await.unwrap()
}

fn notify_toml(dir: &Path, slack: &SlackStandIn, outcomes: &str) -> String {
    std::fs::write(dir.join("slack-url"), format!("{}\n", slack.url())).unwrap();
    format!(
        "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
         [jobs]\npoll_interval_ms = 20\n\
         [notify]\nslack_webhook_file = \"{}\"\noutcomes = {outcomes}\nattempts = 3\n\
         backoff_ms = 10\nsweep_ms = 50\n",
        dir.join("slack-url").display()
    )
}

/// A service on a one-VM pool announcing `outcomes`, with its own notifier off, and a
/// `Notifier` on its store for the test to sweep by hand.
async fn start_swept_by_hand(
    dir: &Path,
    slack: &SlackStandIn,
    outcomes: &str,
) -> (Arc<MemoryHv>, TestHost, Arc<Notifier>) {
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    let extra = notify_toml(dir, slack, outcomes);
    let parts = Parts {
        statuses: false,
        ..Parts::ALL
    };
    let host = start(dir, &extra, hv.clone(), parts).await;
    let notifier = Notifier::from_config(&host.hub.cfg, host.hub.store.clone())
        .unwrap()
        .expect("notifications are configured");
    (hv, host, notifier)
}

async fn running(host: &TestHost, hv: &MemoryHv, id: &str) {
    eventually("job launched", || hv.started().contains(&id.to_owned())).await;
    assert_eq!(
        host.hub.store.job(id).unwrap().unwrap().state,
        JobState::Running
    );
}

async fn ended(host: &TestHost, id: &str) -> JobState {
    job_ended(host, "job ends", id).await.state
}

fn text(m: &serde_json::Value) -> String {
    m["text"]
        .as_str()
        .expect("a Slack message has a text")
        .to_owned()
}

#[tokio::test]
async fn each_terminal_job_gets_one_well_formed_message_with_its_commit_and_log_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut slack = slack(200).await;
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    let extra = notify_toml(dir.path(), &slack, "[\"success\", \"failure\", \"error\"]");
    let host = start(dir.path(), &extra, hv.clone(), Parts::ALL).await;

    let ok = push_job(&host, 1, "main").await;
    // What the webhook intake records for the job (its integration point).
    host.hub
        .store
        .set_commit_info(
            &ok,
            &CommitInfo {
                author: Some("Ada Lovelace".into()),
                subject: Some("Make the engine <analytical>".into()),
            },
        )
        .unwrap();
    running(&host, &hv, &ok).await;
    hv.release(&ok, 0);
    assert_eq!(ended(&host, &ok).await, JobState::Success);
    let m = slack.next(SAFETY).await.unwrap();
    let t = text(&m);
    for want in [
        "*success*",
        "push of freedomofpress/securedrop-workstation@0000000",
        "(main)",
        "by Ada Lovelace: Make the engine &lt;analytical&gt;",
        "took ",
        &format!("<{}/jobs/{ok}|log>", host.url),
    ] {
        assert!(t.contains(want), "{want:?} missing in {t}");
    }

    let bad = push_job(&host, 2, "feature").await;
    running(&host, &hv, &bad).await;
    hv.release(&bad, 1);
    assert_eq!(ended(&host, &bad).await, JobState::Failure);
    let t = text(&slack.next(SAFETY).await.unwrap());
    assert!(t.contains("*failure*") && t.contains("(feature)"), "{t}");
    assert!(t.contains(&format!("/jobs/{bad}|log>")), "{t}");
    // Without a recorded commit the message still names the short sha, and no author.
    assert!(t.contains("`0000000`") && !t.contains(" by "), "{t}");
    assert_eq!(slack.count(), 2, "one message per terminal job");
}

#[tokio::test]
async fn queued_and_running_jobs_send_nothing_and_an_ended_one_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let slack = slack(200).await;
    // The service's own notifier is off: this test drives the sweeps itself.
    let (hv, host, notifier) =
        start_swept_by_hand(dir.path(), &slack, "[\"success\", \"failure\", \"error\"]").await;

    // Two jobs on one VM: the second stays queued while the first runs.
    let first = push_job(&host, 1, "a").await;
    let second = push_job(&host, 2, "b").await;
    running(&host, &hv, &first).await;
    assert_eq!(
        host.hub.store.job(&second).unwrap().unwrap().state,
        JobState::Queued
    );
    assert_eq!(notifier.sweep().await.unwrap(), 0);
    assert_eq!(slack.count(), 0, "nothing for queued or running jobs");

    hv.release(&first, 0);
    ended(&host, &first).await;
    assert_eq!(notifier.sweep().await.unwrap(), 1);
    assert_eq!(notifier.sweep().await.unwrap(), 0, "never twice");
    assert_eq!(slack.count(), 1);
    assert!(text(&slack.bodies()[0]).contains(&first));
}

#[tokio::test]
async fn outcomes_not_configured_are_not_announced() {
    let dir = tempfile::tempdir().unwrap();
    let slack = slack(200).await;
    let (hv, host, notifier) = start_swept_by_hand(dir.path(), &slack, "[\"failure\"]").await;
    let id = push_job(&host, 1, "main").await;
    running(&host, &hv, &id).await;
    hv.release(&id, 0);
    ended(&host, &id).await;
    assert_eq!(notifier.sweep().await.unwrap(), 0);
    assert_eq!(slack.count(), 0);
    assert_eq!(notifier.counts().unwrap(), (0, 1, 0), "recorded as skipped");
}

#[tokio::test]
async fn a_job_still_succeeds_when_slack_answers_500_and_the_message_is_retried_then_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut slack = slack(500).await;
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    let extra = notify_toml(dir.path(), &slack, "[\"success\"]");
    let host = start(dir.path(), &extra, hv.clone(), Parts::ALL).await;
    // Only for reading the outbox counts (constructed before anything is sent).
    let reader = Notifier::from_config(&host.hub.cfg, host.hub.store.clone())
        .unwrap()
        .unwrap();

    let id = push_job(&host, 1, "main").await;
    running(&host, &hv, &id).await;
    hv.release(&id, 0);
    assert_eq!(ended(&host, &id).await, JobState::Success);
    for _ in 0..3 {
        slack.next(SAFETY).await.unwrap();
    }
    eventually("the notifier gives up", || {
        reader.counts().unwrap() == (0, 0, 1)
    })
    .await;
    assert_eq!(slack.count(), 3, "notify.attempts tries, no more");
    let job = host.hub.store.job(&id).unwrap().unwrap();
    assert_eq!(job.state, JobState::Success, "the outcome is unchanged");
    let statuses = host.hub.store.statuses(&id).unwrap();
    assert_eq!(statuses.last().unwrap().state.as_str(), "success");
    // And the stand-in answering again does not resend a given-up message.
    slack.set_status(200);
    assert_eq!(reader.sweep().await.unwrap(), 0);
}

#[tokio::test]
async fn a_signed_push_webhook_brings_its_head_commits_author_and_subject_to_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut slack = slack(200).await;
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    let extra = notify_toml(dir.path(), &slack, "[\"success\"]");
    let host = start(dir.path(), &extra, hv.clone(), Parts::ALL).await;

    let mut body: serde_json::Value = serde_json::from_str(&push_body("main", &sha(7))).unwrap();
    body["head_commit"] = serde_json::json!({
        "id": sha(7),
        "message": "Harden the <unpacker>\n\nA longer body that is not the subject.",
        "author": {"name": "Grace Hopper", "email": "grace@example", "username": "grace"}
    });
    let (code, text_) = deliver(
        &reqwest::Client::new(),
        &host.url,
        "push",
        "d-commit",
        &body.to_string(),
        Some(SECRET),
    )
    .await;
    assert_eq!(code, 202, "{text_}");
    let id = host
        .hub
        .store
        .recent_jobs(10)
        .unwrap()
        .into_iter()
        .find(|j| j.sha == sha(7))
        .unwrap()
        .id;
    running(&host, &hv, &id).await;
    hv.release(&id, 0);
    assert_eq!(ended(&host, &id).await, JobState::Success);
    let t = text(&slack.next(SAFETY).await.unwrap());
    assert!(
        t.contains("by Grace Hopper: Harden the &lt;unpacker&gt;"),
        "author and subject missing in {t}"
    );
    assert!(!t.contains("longer body"), "only the first line: {t}");
}
