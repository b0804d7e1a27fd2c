//! The event ingest API exactly as contracts §1 says, over loopback against the real service.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::server::Parts;
use sdci_protocol::{Event, EventKind, Outcome};

const BEARER: &str = "per-job-secret";

async fn host_with_claimed_job(dir: &std::path::Path) -> (TestHost, String) {
    let host = start(dir, "", MemoryHv::with_vms(&[]), Parts::HTTP_ONLY).await;
    let id = claim_manual_job(&host, "o/r", BEARER);
    (host, id)
}

fn lines(range: std::ops::Range<u64>) -> String {
    range
        .map(|seq| {
            Event {
                v: 1,
                seq,
                ts_ms: 0,
                kind: EventKind::Log {
                    step: Some(0),
                    text: format!("line {seq}"),
                },
            }
            .to_line()
        })
        .collect()
}

async fn post(
    c: &reqwest::Client,
    url: &str,
    bearer: &str,
    body: String,
) -> (u16, serde_json::Value) {
    let r = c
        .post(url)
        .bearer_auth(bearer)
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn events_are_stored_in_order_exactly_once_and_resendable() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    let url = format!("{}/api/v1/jobs/{id}/events", host.url);
    let c = reqwest::Client::new();

    let (code, v) = post(&c, &url, BEARER, lines(0..3)).await;
    assert_eq!((code, v["next_seq"].as_u64()), (200, Some(3)));
    // A resend overlapping what is stored: duplicates are skipped, the rest appended.
    let (code, v) = post(&c, &url, BEARER, lines(1..5)).await;
    assert_eq!((code, v["next_seq"].as_u64()), (200, Some(5)));
    // A gap ends the request with 409 and the position to resume from.
    let (code, v) = post(&c, &url, BEARER, lines(7..8)).await;
    assert_eq!((code, v["next_seq"].as_u64()), (409, Some(5)));
    let r = c.get(&url).bearer_auth(BEARER).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["next_seq"], 5);

    let log = std::fs::read_to_string(host.hub.cfg.log_dir().join(format!("{id}.log"))).unwrap();
    // In dom0's line format (contracts §3): the event's time, the step's tag, the text.
    let got: Vec<&str> = log.lines().collect();
    let want: Vec<String> = (0..5)
        .map(|i| format!("1970-01-01T00:00:00.000Z [step 1] line {i}"))
        .collect();
    assert_eq!(got, want);

    // The job page shows the log, escaped.
    let page = c
        .get(format!("{}/jobs/{id}", host.url))
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("line 4"));
}

#[tokio::test]
async fn a_malformed_line_is_a_400_and_the_events_before_it_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    let url = format!("{}/api/v1/jobs/{id}/events", host.url);
    let c = reqwest::Client::new();
    let body = format!("{}not json\n{}", lines(0..2), lines(2..3));
    let (code, _) = post(&c, &url, BEARER, body).await;
    assert_eq!(code, 400);
    assert_eq!(host.hub.store.job(&id).unwrap().unwrap().event_next_seq, 2);
}

#[tokio::test]
async fn wrong_bearer_is_401_and_unknown_job_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    let c = reqwest::Client::new();
    let url = format!("{}/api/v1/jobs/{id}/events", host.url);
    assert_eq!(post(&c, &url, "nope", lines(0..1)).await.0, 401);
    let r = c.post(&url).body(lines(0..1)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "missing bearer");
    let other = format!("{}/api/v1/jobs/no-such-job/events", host.url);
    assert_eq!(post(&c, &other, BEARER, lines(0..1)).await.0, 404);
    assert_eq!(host.hub.store.job(&id).unwrap().unwrap().event_next_seq, 0);
}

#[tokio::test]
async fn step_events_become_step_timings() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    let c = reqwest::Client::new();
    let url = format!("{}/api/v1/jobs/{id}/events", host.url);
    let evs = [
        EventKind::StepStarted {
            step: 0,
            name: "make-test".into(),
            argv: vec!["make".into()],
        },
        EventKind::StepFinished {
            step: 0,
            status: 0,
            timed_out: false,
            duration_ms: 1500,
        },
        EventKind::Result {
            outcome: Outcome::Success,
            reason: "ok".into(),
        },
    ];
    let body: String = evs
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            Event {
                v: 1,
                seq: i as u64,
                ts_ms: 1,
                kind,
            }
            .to_line()
        })
        .collect();
    assert_eq!(post(&c, &url, BEARER, body).await.0, 200);
    let t = host.hub.store.step_timings(&id).unwrap();
    assert_eq!(t, vec![(0, "make-test".to_string(), Some(1500), Some(0))]);
}

/// Posts one `Result` event (seq 0) of the job's current attempt.
async fn relay_result(host: &TestHost, id: &str, outcome: Outcome, reason: &str) {
    let c = reqwest::Client::new();
    let url = format!("{}/api/v1/jobs/{id}/events", host.url);
    let line = Event {
        v: 1,
        seq: 0,
        ts_ms: 1,
        kind: EventKind::Result {
            outcome,
            reason: reason.into(),
        },
    }
    .to_line();
    assert_eq!(post(&c, &url, BEARER, line).await.0, 200);
}

fn final_status(host: &TestHost, id: &str) -> (String, String) {
    let s = host.hub.store.statuses(id).unwrap();
    let last = s.last().unwrap();
    (last.state.as_str().to_owned(), last.description.clone())
}

#[tokio::test]
async fn the_final_status_says_the_reason_the_agent_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    let why = "step \"make-test\" failed with exit status 2";
    relay_result(&host, &id, Outcome::Failure, why).await;
    use sdci_host::domain::JobState;
    assert!(host
        .hub
        .store
        .finish(&id, JobState::Failure, "a step failed", true)
        .unwrap());
    assert_eq!(final_status(&host, &id), ("failure".into(), why.into()));
    let job = host.hub.store.job(&id).unwrap().unwrap();
    assert_eq!(job.note.as_deref(), Some(why), "the page says it too");
}

#[tokio::test]
async fn an_infrastructure_error_after_retries_says_the_last_attempts_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    let s = &host.hub.store;
    relay_result(&host, &id, Outcome::Error, "an old reason from attempt 1").await;
    // Attempt 1 fails (launch exited 2) and is queued again; attempt 2 is refused by policy.
    let launch = "sdci-dom0 launch exited 2 (infrastructure)";
    assert!(matches!(
        s.infra_failure(&id, launch, 2, 5).unwrap(),
        sdci_host::store::AfterFailure::Requeued
    ));
    s.claim("4.2", &["vm-a".into()], 1, BEARER, i64::MAX)
        .unwrap()
        .unwrap();
    let policy = "refused by policy: dom0's qrexec policy does not allow sdci.Run from this VM \
                  (qrexec exit 126)";
    relay_result(&host, &id, Outcome::Error, policy).await;
    assert!(matches!(
        s.infra_failure(&id, launch, 2, 5).unwrap(),
        sdci_host::store::AfterFailure::GaveUp
    ));
    assert_eq!(final_status(&host, &id), ("error".into(), policy.into()));
    let note = s.job(&id).unwrap().unwrap().note.unwrap();
    assert!(
        note.contains("after 2 attempts") && note.contains(policy),
        "{note}"
    );
}

#[tokio::test]
async fn without_a_matching_result_the_host_text_stays_and_descriptions_fit_github() {
    use sdci_host::domain::JobState;
    let dir = tempfile::tempdir().unwrap();
    // No Result relayed: the host's own text.
    let (host, id) = host_with_claimed_job(dir.path()).await;
    host.hub
        .store
        .finish(&id, JobState::Success, "all steps passed", true)
        .unwrap();
    assert_eq!(
        final_status(&host, &id),
        ("success".into(), "all steps passed".into())
    );
    drop(host);

    // A result of another state (the agent said success, launch then exited 2): not used.
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    relay_result(&host, &id, Outcome::Success, "all 8 steps passed").await;
    host.hub
        .store
        .finish(&id, JobState::Error, "launch exited 2", false)
        .unwrap();
    assert_eq!(
        final_status(&host, &id),
        ("error".into(), "launch exited 2".into())
    );
    drop(host);

    // A cancel says why it was canceled, whatever the agent said.
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    relay_result(&host, &id, Outcome::Error, "killed").await;
    host.hub
        .store
        .finish(&id, JobState::Canceled, "canceled by alice", false)
        .unwrap();
    assert_eq!(
        final_status(&host, &id),
        ("error".into(), "canceled by alice".into())
    );
    drop(host);

    // A long reason is cut to GitHub's 140 characters.
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = host_with_claimed_job(dir.path()).await;
    let long = format!("step \"make-test\" failed: {}", "é".repeat(300));
    relay_result(&host, &id, Outcome::Failure, &long).await;
    host.hub
        .store
        .finish(&id, JobState::Failure, "a step failed", true)
        .unwrap();
    let (state, d) = final_status(&host, &id);
    assert_eq!(state, "failure");
    assert!(d.chars().count() <= 140, "{} chars", d.chars().count());
    assert!(d.starts_with("step \"make-test\" failed: é"), "{d}");
}
