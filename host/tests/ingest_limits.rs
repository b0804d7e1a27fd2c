//! Bounded input from the VM (issue 15): the event ingest against the real service over
//! loopback. The code under test runs with sudo in dom0 and can write anything into the event
//! stream, and it may know the event secret; so an ended job takes nothing more, a request and a
//! log have byte caps, and step rows are bounded — while an honest stream loses nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::server::Parts;
use sdci_protocol::{Event, EventKind, Outcome};

const BEARER: &str = "per-job-secret";

async fn claimed_job(extra: &str, dir: &std::path::Path) -> (TestHost, String) {
    let host = start(dir, extra, MemoryHv::with_vms(&[]), Parts::HTTP_ONLY).await;
    let id = claim_manual_job(&host, REPO, BEARER);
    (host, id)
}

fn event(seq: u64, kind: EventKind) -> String {
    Event {
        v: 1,
        seq,
        ts_ms: 0,
        kind,
    }
    .to_line()
}

fn log_lines(range: std::ops::Range<u64>, width: usize) -> String {
    range
        .map(|seq| {
            event(
                seq,
                EventKind::Log {
                    step: Some(0),
                    text: format!("{seq:>8} {}", "x".repeat(width)),
                },
            )
        })
        .collect()
}

async fn post(url: &str, body: String) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(BEARER)
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or_default())
}

fn url(host: &TestHost, id: &str) -> String {
    format!("{}/api/v1/jobs/{id}/events", host.url)
}

fn log_of(host: &TestHost, id: &str) -> String {
    std::fs::read_to_string(host.hub.cfg.log_dir().join(format!("{id}.log"))).unwrap_or_default()
}

#[tokio::test]
async fn after_the_job_ended_its_secret_is_refused_with_410_and_the_recorded_result_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = claimed_job("", dir.path()).await;
    let u = url(&host, &id);
    let failed = event(
        0,
        EventKind::Result {
            outcome: Outcome::Failure,
            reason: "step make-test failed".into(),
        },
    );
    assert_eq!(post(&u, failed).await.0, 200);
    assert!(host
        .hub
        .store
        .finish(&id, JobState::Failure, "the steps failed", true)
        .unwrap());
    let log_before = log_of(&host, &id);
    let statuses_before = host.hub.store.statuses(&id).unwrap();

    // The attack: the code under test kept the event secret and rewrites the verdict, and
    // appends as much as it likes.
    let forged = format!(
        "{}{}",
        log_lines(1..1000, 100),
        event(
            1000,
            EventKind::Result {
                outcome: Outcome::Success,
                reason: "all steps passed".into(),
            }
        )
    );
    let (code, body) = post(&u, forged).await;
    assert_eq!(code, 410, "{body}");
    let r = reqwest::Client::new()
        .get(&u)
        .bearer_auth(BEARER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 410);

    let job = host.hub.store.job(&id).unwrap().unwrap();
    assert_eq!(job.state, JobState::Failure);
    assert_eq!(log_of(&host, &id), log_before, "nothing appended");
    assert_eq!(host.hub.store.statuses(&id).unwrap(), statuses_before);
    let last = statuses_before.last().unwrap();
    assert_eq!(
        (last.state.as_str(), last.description.as_str()),
        ("failure", "step make-test failed")
    );
}

#[tokio::test]
async fn a_log_past_max_log_bytes_gets_one_truncated_line_and_the_events_still_count() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = claimed_job("[ingest]\nmax_log_bytes = 20000\n", dir.path()).await;
    let u = url(&host, &id);
    // 500 lines of ~150 bytes: far past the cap.
    let (code, body) = post(&u, log_lines(0..500, 120)).await;
    assert_eq!(
        (code, body["next_seq"].as_u64()),
        (200, Some(500)),
        "{body}"
    );
    let (code, body) = post(&u, log_lines(500..900, 120)).await;
    assert_eq!(
        (code, body["next_seq"].as_u64()),
        (200, Some(900)),
        "{body}"
    );
    let log = log_of(&host, &id);
    assert!(log.len() <= 20_000 + 300, "{} bytes", log.len());
    assert_eq!(log.matches("log truncated").count(), 1, "{log}");
    assert!(
        log.trim_end().ends_with("is the record"),
        "the marker is last"
    );
    assert!(log.contains("       0 xxx"), "the start is kept");
    // The verdict after the cap still counts.
    let result = event(
        900,
        EventKind::Result {
            outcome: Outcome::Success,
            reason: "all 8 steps passed".into(),
        },
    );
    assert_eq!(post(&u, result).await.0, 200);
    assert!(host
        .hub
        .store
        .finish(&id, JobState::Success, "done", true)
        .unwrap());
    let st = host.hub.store.statuses(&id).unwrap();
    assert_eq!(st.last().unwrap().description, "all 8 steps passed");
}

#[tokio::test]
async fn one_request_past_max_request_bytes_ends_with_413_and_resuming_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = claimed_job("[ingest]\nmax_request_bytes = 100000\n", dir.path()).await;
    let u = url(&host, &id);
    let total = 10_000u64; // ~1.4 MB
    let mut from = 0;
    let mut requests = 0;
    while from < total {
        let (code, body) = post(&u, log_lines(from..total, 120)).await;
        let next = body["next_seq"].as_u64().unwrap();
        assert!(
            code == 413 || (code == 200 && next == total),
            "{code} {body}"
        );
        assert!(next > from, "progress on every request");
        from = next;
        requests += 1;
    }
    assert!(requests > 5, "the cap ended requests ({requests})");
    let log = log_of(&host, &id);
    let seqs: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split_whitespace().rev().nth(1)?.parse().ok())
        .collect();
    assert_eq!(
        seqs,
        (0..total).collect::<Vec<_>>(),
        "each event once, in order"
    );
}

#[tokio::test]
async fn step_rows_stop_at_max_steps_whatever_the_stream_claims() {
    let dir = tempfile::tempdir().unwrap();
    let (host, id) = claimed_job("[ingest]\nmax_steps = 8\n", dir.path()).await;
    let body: String = (0..2000u64)
        .map(|seq| {
            event(
                seq,
                EventKind::StepStarted {
                    step: (seq as u32) * 1000,
                    name: format!("s{seq}"),
                    argv: vec!["true".into()],
                },
            )
        })
        .collect();
    let (code, reply) = post(&url(&host, &id), body).await;
    assert_eq!((code, reply["next_seq"].as_u64()), (200, Some(2000)));
    let steps = host.hub.store.step_timings(&id).unwrap();
    assert!(steps.len() <= 8, "{} rows", steps.len());
    assert!(steps.iter().all(|s| s.0 < 8));
}
