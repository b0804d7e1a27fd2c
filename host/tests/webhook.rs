//! Webhook intake against the real service over loopback, with a real SQLite file.
//! Only the HTTP side runs (no scheduler), so what the store holds is exactly what the deliveries
//! made; no hypervisor is called.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::server::Parts;

/// The service's HTTP side alone (no hypervisor, no scheduler) in a fresh temporary folder, and
/// a client for it. The folder must outlive the host.
async fn start_http_only() -> (tempfile::TempDir, TestHost, reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), "", MemoryHv::with_vms(&[]), Parts::HTTP_ONLY).await;
    (dir, host, reqwest::Client::new())
}

#[tokio::test]
async fn bad_or_missing_signature_is_refused_with_401_and_creates_no_job() {
    let (_dir, host, c) = start_http_only().await;
    let body = push_body("main", &sha(1));
    let (code, _) = deliver(&c, &host.url, "push", "d1", &body, Some("wrong")).await;
    assert_eq!(code, 401);
    let (code, _) = deliver(&c, &host.url, "push", "d2", &body, None).await;
    assert_eq!(code, 401);
    assert_eq!(host.hub.store.count_jobs().unwrap(), 0);
    assert_eq!(host.hub.store.count_deliveries().unwrap(), 0);
}

#[tokio::test]
async fn a_redelivery_creates_nothing_new() {
    let (_dir, host, c) = start_http_only().await;
    let body = push_body("main", &sha(1));
    let (code, text) = deliver(&c, &host.url, "push", "same-id", &body, Some(SECRET)).await;
    assert_eq!(code, 202, "{text}");
    let (code, text) = deliver(&c, &host.url, "push", "same-id", &body, Some(SECRET)).await;
    assert_eq!(code, 200);
    assert!(text.contains("duplicate"), "{text}");
    // A new delivery id for the same commit (GitHub's "redeliver" keeps the id, but a second
    // hook would not) is still covered by the first job.
    let (code, text) = deliver(&c, &host.url, "push", "other-id", &body, Some(SECRET)).await;
    assert_eq!(code, 200);
    assert!(text.contains("already covered"), "{text}");
    assert_eq!(host.hub.store.count_jobs().unwrap(), 1);
}

#[tokio::test]
async fn a_newer_push_to_a_branch_supersedes_the_queued_job() {
    let (_dir, host, c) = start_http_only().await;
    deliver_push(&c, &host.url, "a", "main", 1).await;
    deliver_push(&c, &host.url, "b", "other", 2).await;
    deliver_push(&c, &host.url, "c", "main", 3).await;
    let jobs = host.hub.store.recent_jobs(10).unwrap();
    let by_sha = |n| jobs.iter().find(|j| j.sha == sha(n)).unwrap();
    assert_eq!(by_sha(1).state, JobState::Canceled);
    assert!(by_sha(1)
        .note
        .as_deref()
        .unwrap()
        .starts_with("superseded by 000000000000"));
    assert_eq!(
        by_sha(2).state,
        JobState::Queued,
        "another branch is untouched"
    );
    assert_eq!(by_sha(3).state, JobState::Queued);
    // The superseded commit gets a final status, never a lingering pending.
    let st = host.hub.store.statuses(&by_sha(1).id).unwrap();
    assert_eq!(st.last().unwrap().state.as_str(), "error");
}

#[tokio::test]
async fn ping_and_unknown_events_are_answered_2xx_and_ignored() {
    let (_dir, host, c) = start_http_only().await;
    let (code, text) = deliver(&c, &host.url, "ping", "p", "{\"zen\":\"x\"}", Some(SECRET)).await;
    assert_eq!((code, text.contains("pong")), (200, true));
    let (code, _) = deliver(&c, &host.url, "issues", "i", "{}", Some(SECRET)).await;
    assert_eq!(code, 200);
    let deleted = serde_json::json!({"ref": "refs/heads/main", "after": "0".repeat(40),
        "deleted": true, "repository": {"full_name": "o/r"}})
    .to_string();
    let (code, text) = deliver(&c, &host.url, "push", "del", &deleted, Some(SECRET)).await;
    assert_eq!((code, text.contains("deleted")), (200, true), "{text}");
    assert_eq!(host.hub.store.count_jobs().unwrap(), 0);
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_anything_is_parsed() {
    let (_dir, host, c) = start_http_only().await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(6 * 1024 * 1024));
    let (code, _) = deliver(&c, &host.url, "push", "big", &big, Some(SECRET)).await;
    assert_eq!(code, 413);
    assert_eq!(host.hub.store.count_jobs().unwrap(), 0);
}

#[tokio::test]
async fn a_signed_but_malformed_payload_is_a_400_not_a_5xx() {
    let (_dir, host, c) = start_http_only().await;
    let (code, _) = deliver(&c, &host.url, "push", "m", "{\"ref\": 3}", Some(SECRET)).await;
    assert_eq!(code, 400);
    assert_eq!(host.hub.store.count_jobs().unwrap(), 0);
}

#[tokio::test]
async fn metrics_and_pages_show_the_queue() {
    let (_dir, host, c) = start_http_only().await;
    let (_, text) = deliver_push(&c, &host.url, "a", "main", 1).await;
    let id = text.strip_prefix("queued job ").unwrap().to_owned();
    let m = c
        .get(format!("{}/metrics", host.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("sdci_queue_depth{version=\"unresolved\"} 1"),
        "{m}"
    );
    assert!(m.contains("sdci_jobs{state=\"queued\"} 1"), "{m}");
    let list = c
        .get(format!("{}/jobs", host.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(&id));
    let page = c
        .get(format!("{}/jobs/{id}", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let missing = c
        .get(format!("{}/jobs/nope", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let h = c.get(format!("{}/healthz", host.url)).send().await.unwrap();
    assert_eq!(h.status().as_u16(), 200);
}
