//! A stand-in of the host's event endpoint (contracts §1, server side), and a TCP proxy in
//! front of it that can cut every open connection at once (a broken network, mid-stream).
//!
//! The endpoint keeps events in `seq` order: `seq < next_seq` is a duplicate (ignored),
//! `seq == next_seq` is appended, `seq > next_seq` ends the request with `409 {"next_seq"}`;
//! at the end of the body `200 {"next_seq"}`; wrong bearer 401, unknown job 404, malformed
//! line 400 (events before it kept). `GET` answers `{"next_seq"}`. Like `sdci-host`, it can cap
//! the events one request carries ([`HostEvents::cap_requests`]: then `413 {"next_seq"}`).
#![allow(dead_code, clippy::unwrap_used)]

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use sdci_protocol::ingest::{NextSeq, EVENTS_ROUTE};
use sdci_protocol::Event;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// One POST as the endpoint saw it: the seqs it received, in order.
#[derive(Debug, Clone, Default)]
pub struct Post {
    pub seqs: Vec<u64>,
    pub status: Option<u16>,
}

#[derive(Default)]
struct State0 {
    events: Vec<Event>,
    posts: Vec<Post>,
    gets: usize,
    /// New events one request may add before it ends with 413.
    cap: Option<usize>,
}

struct Shared {
    job: String,
    secret: String,
    state: Mutex<State0>,
    changed: Condvar,
}

type S = Arc<Shared>;

pub struct HostEvents {
    addr: SocketAddr,
    shared: S,
    _rt: std::thread::JoinHandle<()>,
}

fn serve_on_thread(listener: std::net::TcpListener, app: Router) -> std::thread::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(l, app).await;
        });
    })
}

impl HostEvents {
    pub fn start(job: &str, secret: &str) -> Self {
        let shared: S = Arc::new(Shared {
            job: job.to_owned(),
            secret: secret.to_owned(),
            state: Mutex::default(),
            changed: Condvar::new(),
        });
        let app = Router::new()
            .route(EVENTS_ROUTE, post(post_events).get(get_next))
            .with_state(shared.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rt = serve_on_thread(listener, app);
        Self {
            addr,
            shared,
            _rt: rt,
        }
    }

    /// From now on, a request ends with `413 {"next_seq"}` after `n` new events.
    pub fn cap_requests(&self, n: usize) {
        self.shared.state.lock().unwrap().cap = Some(n);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn events(&self) -> Vec<Event> {
        self.shared.state.lock().unwrap().events.clone()
    }

    pub fn posts(&self) -> Vec<Post> {
        self.shared.state.lock().unwrap().posts.clone()
    }

    pub fn gets(&self) -> usize {
        self.shared.state.lock().unwrap().gets
    }

    /// Blocks until `cond` holds for the stored events (panics after `safety_net`); returns
    /// how many events were stored then.
    pub fn wait_until(&self, safety_net: Duration, cond: impl Fn(&[Event]) -> bool) -> usize {
        let guard = self.shared.state.lock().unwrap();
        let (guard, timeout) = self
            .shared
            .changed
            .wait_timeout_while(guard, safety_net, |s| !cond(&s.events))
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "the host never saw the expected events: {:?}",
            guard.events
        );
        guard.events.len()
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap, id: &str) -> Result<(), StatusCode> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(shared.secret.as_str()) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    if id != shared.job {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(())
}

fn next_seq(shared: &Shared) -> u64 {
    shared.state.lock().unwrap().events.len() as u64
}

async fn get_next(State(shared): State<S>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&shared, &headers, &id) {
        return r.into_response();
    }
    shared.state.lock().unwrap().gets += 1;
    Json(NextSeq::new(next_seq(&shared))).into_response()
}

async fn post_events(
    State(shared): State<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = authorized(&shared, &headers, &id) {
        return r.into_response();
    }
    let index = {
        let mut st = shared.state.lock().unwrap();
        st.posts.push(Post::default());
        st.posts.len() - 1
    };
    let finish = |status: StatusCode| {
        let n = next_seq(&shared);
        shared.state.lock().unwrap().posts[index].status = Some(status.as_u16());
        (status, Json(NextSeq::new(n))).into_response()
    };
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut added = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            // The connection broke: keep what arrived.
            return finish(StatusCode::BAD_REQUEST);
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = Event::from_line(&line) else {
                return finish(StatusCode::BAD_REQUEST);
            };
            let mut st = shared.state.lock().unwrap();
            st.posts[index].seqs.push(ev.seq);
            let next = st.events.len() as u64;
            if ev.seq > next {
                drop(st);
                return finish(StatusCode::CONFLICT);
            }
            if ev.seq == next {
                st.events.push(ev);
                shared.changed.notify_all();
                added += 1;
                if st.cap.is_some_and(|c| added >= c) {
                    drop(st);
                    return finish(StatusCode::PAYLOAD_TOO_LARGE);
                }
            }
        }
    }
    if !buf.is_empty() {
        return finish(StatusCode::BAD_REQUEST);
    }
    finish(StatusCode::OK)
}

/// A TCP proxy whose [`Proxy::cut`] drops every connection open at that moment.
pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
    _rt: std::thread::JoinHandle<()>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let rt = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut client, _)) = l.accept().await else {
                        continue;
                    };
                    let mut rx = rx.clone();
                    let born = *rx.borrow_and_update();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = rx.wait_for(|g| *g > born) => {}
                        }
                        // Both sockets drop here: the connection is gone mid-whatever.
                    });
                }
            });
        });
        Self {
            addr,
            cut: Arc::new(tx),
            _rt: rt,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection open now; later ones pass.
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}
