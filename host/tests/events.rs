//! The event ingest API exactly as contracts §1 says, over loopback against the real service.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::server::Parts;
use sdci_host::store::NewJob;
use sdci_protocol::{Event, EventKind, Outcome};

const BEARER: &str = "per-job-secret";

async fn host_with_claimed_job(dir: &std::path::Path) -> (TestHost, String) {
    let host = start(dir, "", MemoryHv::with_vms(&[]), Parts::HTTP_ONLY).await;
    let s = &host.hub.store;
    let id = s
        .insert_job(&NewJob {
            repo: "o/r".into(),
            sha: sha(7),
            reason: "manual".into(),
            branch: None,
            supersede_key: None,
            clone_url: "x".into(),
            version: Some("4.2".into()),
            snapshot: None,
            update_first: false,
        })
        .unwrap();
    s.register_vms("4.2", &["vm-a".into()]).unwrap();
    s.claim("4.2", &["vm-a".into()], 1, BEARER, i64::MAX)
        .unwrap()
        .unwrap();
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
    let got: Vec<&str> = log.lines().filter(|l| l.starts_with("line")).collect();
    assert_eq!(got, ["line 0", "line 1", "line 2", "line 3", "line 4"]);

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
