//! The HTTP server against unauthenticated exhaustion (issue 15), over loopback against the real
//! service with raw sockets: half-open connections, a slow body, a flood past the connection
//! limit, an unsigned body, and a stalled event stream — each refused or ended in bounded time
//! while honest requests go on being answered. Also the operator endpoints' bearer token.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::server::Parts;
use sdci_protocol::{Event, EventKind};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FAST: &str = "[http]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\n\
                    event_idle_timeout_secs = 2\nmax_connections = 64\n";

async fn start_fast(dir: &std::path::Path, extra: &str) -> TestHost {
    start(dir, extra, MemoryHv::with_vms(&[]), Parts::HTTP_ONLY).await
}

fn addr(host: &TestHost) -> String {
    host.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `within` passes); what it sent, and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn healthz_ok(host: &TestHost) -> bool {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    c.get(format!("{}/healthz", host.url))
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() < 500)
}

#[tokio::test]
async fn half_open_sockets_are_closed_at_the_header_timeout_and_the_service_answers_again() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_fast(dir.path(), FAST).await;
    // The attack: 300 connections that never finish their headers (64 is the limit).
    let mut socks = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr(&host)).await.unwrap();
        if i % 2 == 0 {
            let _ = s
                .write_all(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n")
                .await;
        }
        socks.push(s);
    }
    let started = Instant::now();
    // Every one of them is closed by the server: past the limit at once, the rest at the
    // header timeout.
    let mut all = Vec::new();
    for mut s in socks {
        all.push(tokio::spawn(async move {
            read_until_closed(&mut s, Duration::from_secs(10)).await.1
        }));
    }
    for h in all {
        assert!(h.await.unwrap(), "a half-open socket was kept open");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed within the header timeout, took {:?}",
        started.elapsed()
    );
    assert!(healthz_ok(&host).await, "the service answers again");
    let refused = host.hub.metrics.counters();
    assert!(
        refused
            .get("http_connections_refused")
            .is_some_and(|n| *n >= 200),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_fast(dir.path(), FAST).await;
    let mut s = TcpStream::connect(addr(&host)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 "), "{text}");
    assert!(closed, "kept open past the header timeout");
}

#[tokio::test]
async fn a_slowloris_webhook_body_is_answered_408_at_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_fast(dir.path(), FAST).await;
    let mut s = TcpStream::connect(addr(&host)).await.unwrap();
    let sig = format!("sha256={}", "0".repeat(64));
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n\
         X-Hub-Signature-256: {sig}\r\nContent-Length: 100000\r\n\r\n{{\"ref\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Trickle a byte now and then: never the whole body.
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b" ").await.is_err() {
                break;
            }
        }
        s
    });
    let started = Instant::now();
    let mut s = trickle.await.unwrap();
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(1)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(host.hub.store.count_deliveries().unwrap(), 0);
}

#[tokio::test]
async fn a_webhook_without_a_signature_is_refused_401_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_fast(dir.path(), "").await;
    for sig in [
        "",
        "X-Hub-Signature-256: sha1=abc\r\n",
        "X-Hub-Signature-256: sha256=zz\r\n",
    ] {
        let mut s = TcpStream::connect(addr(&host)).await.unwrap();
        // Announces 5 MiB and sends none of it: the answer must not wait for the body.
        let head = format!(
            "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n{sig}\
             Content-Length: 5242880\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (text, _) = read_until_closed(&mut s, Duration::from_secs(2)).await;
        assert!(text.starts_with("HTTP/1.1 401"), "{sig:?}: {text:?}");
    }
    // A declared body past max_body_bytes is refused at once too.
    let mut s = TcpStream::connect(addr(&host)).await.unwrap();
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256={}\r\n\
         Content-Length: 99999999\r\n\r\n",
        "a".repeat(64)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    // Honest deliveries are unchanged.
    let c = reqwest::Client::new();
    let (code, text) = deliver_push(&c, &host.url, "d1", "main", 1).await;
    assert_eq!(code, 202, "{text}");
}

const BEARER: &str = "per-job-secret";

async fn claimed_job(host: &TestHost) -> String {
    claim_manual_job(host, REPO, BEARER)
}

fn line(seq: u64) -> String {
    Event {
        v: 1,
        seq,
        ts_ms: 0,
        kind: EventKind::Log {
            step: None,
            text: format!("line {seq}"),
        },
    }
    .to_line()
}

/// Opens a chunked event stream by hand and sends `first` events; returns the socket.
async fn open_stream(host: &TestHost, id: &str, first: std::ops::Range<u64>) -> TcpStream {
    let mut s = TcpStream::connect(addr(host)).await.unwrap();
    let head = format!(
        "POST /api/v1/jobs/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BEARER}\r\n\
         Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for seq in first {
        let l = line(seq);
        s.write_all(format!("{:x}\r\n{l}\r\n", l.len()).as_bytes())
            .await
            .unwrap();
    }
    s
}

#[tokio::test]
async fn a_stalled_event_stream_is_taken_over_by_a_newer_one_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // A long idle timeout: the takeover, not the timeout, must free the job.
    let host = start_fast(dir.path(), "[http]\nevent_idle_timeout_secs = 600\n").await;
    let id = claimed_job(&host).await;
    // The stalled stream: two events, then silence, connection kept open.
    let mut stalled = open_stream(&host, &id, 0..2).await;
    eventually("the stalled stream's events arrive", || {
        host.hub
            .store
            .event_access(&id, BEARER)
            .unwrap()
            .unwrap()
            .next_seq
            == 2
    })
    .await;
    // The agent reconnects and resends from its spool.
    let body: String = (0..5).map(line).collect();
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs/{id}/events", host.url))
        .bearer_auth(BEARER)
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["next_seq"], 5);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The stalled one was told where to resume.
    let (text, _) = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 409"), "{text:?}");
    let log = std::fs::read_to_string(host.hub.cfg.log_dir().join(format!("{id}.log"))).unwrap();
    for seq in 0..5 {
        assert_eq!(log.matches(&format!("line {seq}\n")).count(), 1, "{log}");
    }
}

#[tokio::test]
async fn a_silent_event_stream_ends_408_at_the_idle_timeout_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_fast(dir.path(), FAST).await;
    let id = claimed_job(&host).await;
    let mut s = open_stream(&host, &id, 0..3).await;
    let started = Instant::now();
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(8)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(text.contains("\"next_seq\":3"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn with_an_admin_token_metrics_and_wake_need_the_bearer_and_the_rest_does_not() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "op-token\n").unwrap();
    let extra = format!(
        "[http]\nadmin_token_file = \"{}\"\n",
        dir.path().join("admin-token").display()
    );
    let host = start_fast(dir.path(), &extra).await;
    let c = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = c.get(format!("{}{path}", host.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(get("/metrics", None).await.unwrap().status().as_u16(), 401);
    assert_eq!(
        get("/metrics", Some("wrong"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        get("/metrics", Some("op-token"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let wake = |token: Option<&str>| {
        let mut r = c.post(format!("{}/api/v1/wake", host.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(wake(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(wake(Some("op-token")).await.unwrap().status().as_u16(), 204);
    assert!(get("/healthz", None).await.unwrap().status().as_u16() < 500);
    assert_eq!(get("/jobs", None).await.unwrap().status().as_u16(), 200);
    // The agents' ingest keeps its own bearer: a job's secret, not the admin token.
    let id = claimed_job(&host).await;
    let r = c
        .get(format!("{}/api/v1/jobs/{id}/events", host.url))
        .bearer_auth(BEARER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
