//! A fork's pull request is tested only for a head commit an approver approved (issue 15):
//! the attack of labelling once and then pushing new commits to the fork, against the real
//! service over loopback with a real SQLite file (HTTP side only).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::server::Parts;

const FORK_RULES: &str = "fork_label = \"ok-to-test\"\nfork_approvers = [\"maintainer\"]\n";

/// A `pull_request` event for PR #7 from the fork `mallory/securedrop-workstation`.
fn fork_pr(action: &str, head: &str, sender: &str, labels: &[&str]) -> String {
    let labels: Vec<_> = labels
        .iter()
        .map(|l| serde_json::json!({"name": l}))
        .collect();
    let mut v = serde_json::json!({
        "action": action, "number": 7,
        "pull_request": {
            "head": {"sha": head, "ref": "feature", "repo": {
                "full_name": "mallory/securedrop-workstation",
                "clone_url": "https://github.com/mallory/securedrop-workstation.git"}},
            "user": {"login": "mallory"}, "title": "A fix", "labels": labels},
        "repository": {"full_name": REPO},
        "sender": {"login": sender}});
    if action == "labeled" {
        v["label"] = serde_json::json!({"name": "ok-to-test"});
    }
    v.to_string()
}

async fn start_with_fork_rules(dir: &std::path::Path) -> TestHost {
    start_webhook(
        dir,
        "",
        FORK_RULES,
        MemoryHv::with_vms(&[]),
        Parts::HTTP_ONLY,
    )
    .await
}

async fn send(host: &TestHost, delivery: &str, body: &str) -> (u16, String) {
    let c = reqwest::Client::new();
    deliver(&c, &host.url, "pull_request", delivery, body, Some(SECRET)).await
}

#[tokio::test]
async fn a_label_approves_one_head_commit_and_a_later_push_to_the_fork_gets_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_with_fork_rules(dir.path()).await;
    // The maintainer reviews sha(1) and labels the pull request: one job, for sha(1).
    let (code, text) = send(
        &host,
        "l1",
        &fork_pr("labeled", &sha(1), "maintainer", &["ok-to-test"]),
    )
    .await;
    assert_eq!(code, 202, "{text}");
    assert_eq!(host.hub.store.count_jobs().unwrap(), 1);
    assert_eq!(job_of_commit(&host, 1).sha, sha(1));

    // The attack: the fork pushes an unreviewed commit; the label is still on the PR.
    let (code, text) = send(
        &host,
        "s2",
        &fork_pr("synchronize", &sha(2), "mallory", &["ok-to-test"]),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("no approval"), "{text}");
    // Closing and reopening does not help either.
    let (code, text) = send(
        &host,
        "r2",
        &fork_pr("reopened", &sha(2), "mallory", &["ok-to-test"]),
    )
    .await;
    assert_eq!((code, text.contains("no approval")), (200, true), "{text}");
    assert_eq!(
        host.hub.store.count_jobs().unwrap(),
        1,
        "no job for the new head"
    );

    // The maintainer approves the new head (label removed and added again): now it runs.
    let (code, text) = send(
        &host,
        "l2",
        &fork_pr("labeled", &sha(2), "maintainer", &["ok-to-test"]),
    )
    .await;
    assert_eq!(code, 202, "{text}");
    assert_eq!(host.hub.store.count_jobs().unwrap(), 2);
    let approvals = host.hub.store.fork_approvals(REPO, 7).unwrap();
    assert_eq!(
        approvals,
        [
            (sha(1), "maintainer".to_owned()),
            (sha(2), "maintainer".to_owned())
        ]
    );
    // Back to an approved commit (its job was superseded by sha(2)'s): approved, so it runs.
    let (code, text) = send(
        &host,
        "s1",
        &fork_pr("synchronize", &sha(1), "mallory", &["ok-to-test"]),
    )
    .await;
    assert_eq!(code, 202, "{text}");
    // Redelivering the attack changes nothing.
    let (code, _) = send(
        &host,
        "s2",
        &fork_pr("synchronize", &sha(2), "mallory", &["ok-to-test"]),
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_label_added_by_someone_who_is_not_an_approver_approves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_with_fork_rules(dir.path()).await;
    // The fork's author (who can label in some setups, e.g. through a triage role) labels it.
    let (code, text) = send(
        &host,
        "l1",
        &fork_pr("labeled", &sha(1), "mallory", &["ok-to-test"]),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("fork_approvers"), "{text}");
    let (code, text) = send(
        &host,
        "o1",
        &fork_pr("opened", &sha(1), "mallory", &["ok-to-test"]),
    )
    .await;
    assert_eq!((code, text.contains("no approval")), (200, true), "{text}");
    assert_eq!(host.hub.store.count_jobs().unwrap(), 0);
    assert!(host.hub.store.fork_approvals(REPO, 7).unwrap().is_empty());
}

#[tokio::test]
async fn pull_requests_from_the_repository_itself_need_no_approval() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_with_fork_rules(dir.path()).await;
    let body =
        fork_pr("synchronize", &sha(3), "dev", &[]).replace("mallory/securedrop-workstation", REPO);
    let (code, text) = send(&host, "s3", &body).await;
    assert_eq!(code, 202, "{text}");
}
