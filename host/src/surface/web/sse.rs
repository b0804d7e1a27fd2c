//! `GET /api/v1/jobs/{id}/log/stream?attempt=N&from=L&gen=G`: one attempt's log as server-sent
//! events (axum's SSE), live while the job runs.
//!
//! Events:
//! - `lines` (`id: G:NEXT`): `{"generation":G,"from":L,"lines":[…],"total":T}`, the complete
//!   lines from `L` on, in order, at most [`BATCH_LINES`] per event;
//! - `replaced`: `{"generation":G,"total":T}`: the log was replaced (dom0's authoritative copy
//!   at the end of the attempt); line numbers of the old generation are stale, the stream goes on
//!   from line `T` of the new one, and the page fetches what it shows again (`/log`);
//! - `state`: [`Progress`] whenever the job's state, note or steps change;
//! - `end`: the attempt is over and every line was sent (or a newer attempt began); the stream
//!   closes and the page must not reconnect.
//!
//! Invariants: the position is the event id, so a reconnecting `EventSource` resumes from the
//! last line it received (`Last-Event-ID`, which wins over the query) and never gets a line
//! twice; only complete lines are sent. Lines are pushed as the ingest appends them (a `watch`
//! per job in `joblog::LiveLogs`, no timer; a wake-up waits 10 ms so a burst is read as one
//! batch); a one-second tick picks up what has no wake-up (state changes, the host's own notes),
//! and the store is looked at at most once a second per viewer. Every read (log, store) runs in
//! `spawn_blocking`, at most [`BATCH_BYTES`] per event, and the stream is pulled by the
//! connection, so a slow viewer holds one batch, never a log.

use super::{blocking, fail, model};
use crate::hub::Hub;
use crate::joblog::{self, Batch};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Lines per `lines` event.
pub const BATCH_LINES: usize = 500;
/// Log text per `lines` event (at least one line).
pub const BATCH_BYTES: usize = 256 * 1024;
/// How often state is looked at without a wake-up.
const TICK: Duration = Duration::from_secs(1);
/// After a wake-up, how long to let further appends land before reading (one batch, not many).
const COALESCE: Duration = Duration::from_millis(10);
/// How soon a browser reconnects after the connection broke.
pub const RETRY: Duration = Duration::from_millis(1000);

/// Where to start.
#[derive(Debug, Default, Deserialize)]
pub struct StreamParams {
    pub attempt: Option<u32>,
    /// The first line wanted (from 0).
    pub from: Option<u64>,
    /// The generation the page's lines belong to.
    pub gen: Option<u64>,
}

/// A stream position as an event id: `G:NEXT`.
pub fn event_id(generation: u64, next: u64) -> String {
    format!("{generation}:{next}")
}

/// The inverse of [`event_id`].
pub fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (g, n) = s.trim().split_once(':')?;
    Some((g.parse().ok()?, n.parse().ok()?))
}

/// The job's progress as the page shows it live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub state: String,
    /// The job's current attempt.
    pub attempt: u32,
    pub note: Option<String>,
    pub ended_ms: Option<i64>,
    /// The steps of the streamed attempt.
    pub steps: Vec<model::StepView>,
}

struct Tail {
    hub: Arc<Hub>,
    id: String,
    attempt: u32,
    generation: Option<u64>,
    next: u64,
    rx: watch::Receiver<u64>,
    /// The job's current attempt, as last seen.
    current: u32,
    last: Option<Progress>,
    terminal: bool,
    checked: Option<Instant>,
    /// Look at the store on the next step, due or not.
    force: bool,
    /// Everything there was has been sent: wait before reading again.
    caught_up: bool,
    queue: VecDeque<Event>,
    done: bool,
}

/// What one look found.
struct Look {
    progress: Option<(Progress, bool)>,
    lines: Option<Arc<Batch>>,
}

/// The progress of a job as last computed, shared by its viewers for [`SHARE_PROGRESS`].
type Shared = Mutex<HashMap<(String, u32), (Instant, Progress, bool)>>;

/// How long one look at the store serves every viewer of the same attempt.
const SHARE_PROGRESS: Duration = Duration::from_millis(500);

fn shared_progress() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(Shared::default)
}

/// The job's progress for viewers of `attempt`: from the store, or as another viewer just
/// found it. Blocks.
fn progress(hub: &Hub, id: &str, attempt: u32) -> crate::Result<Option<(Progress, bool)>> {
    let key = (id.to_owned(), attempt);
    if let Some((at, p, t)) = lock(shared_progress()).get(&key) {
        if at.elapsed() < SHARE_PROGRESS {
            return Ok(Some((p.clone(), *t)));
        }
    }
    let Some(d) = model::job_detail(&hub.store, &hub.cfg, &hub.logs, id)? else {
        return Ok(None);
    };
    let steps = d
        .attempts
        .iter()
        .find(|a| a.attempt == attempt)
        .map(|a| a.steps.clone())
        .unwrap_or_default();
    let terminal = d.job.ended_ms.is_some();
    let p = Progress {
        state: d.job.state,
        attempt: d.job.attempts,
        note: d.job.note,
        ended_ms: d.job.ended_ms,
        steps,
    };
    let mut all = lock(shared_progress());
    if all.len() > 1024 {
        all.retain(|_, (at, _, _)| at.elapsed() < SHARE_PROGRESS);
    }
    all.insert(key, (Instant::now(), p.clone(), terminal));
    Ok(Some((p, terminal)))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn json_event(kind: &str, data: &impl Serialize) -> Event {
    let text = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Event::default().event(kind).data(text)
}

impl Tail {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            self.step().await;
        }
    }

    /// Waits for a wake-up (lines appended) or the tick.
    async fn wait(&mut self) {
        let wait = TICK.saturating_sub(self.checked.map_or(TICK, |t| t.elapsed()));
        tokio::select! {
            changed = self.rx.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(TICK).await;
                } else {
                    // Let a burst of appends land, then read them as one batch.
                    tokio::time::sleep(COALESCE).await;
                }
            }
            _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
        }
    }

    /// Queues a batch of lines that continues what was sent; whether there is more to read now.
    fn send(&mut self, batch: &Batch) -> bool {
        let l = &batch.lines;
        self.next = l.next();
        let ev = Event::default()
            .event("lines")
            .data(&batch.json)
            .id(event_id(l.generation, self.next));
        self.queue.push_back(ev);
        l.next() < l.total
    }

    /// One step: wait if caught up; then the lines another viewer just read (memory only), or
    /// one look at the store (when due) and the log.
    async fn step(&mut self) {
        if self.caught_up {
            self.caught_up = false;
            self.wait().await;
        }
        let due = self.force || self.checked.is_none_or(|t| t.elapsed() >= TICK);
        self.force = false;
        let path = joblog::log_of_attempt(
            &self.hub.cfg.log_dir(),
            &self.id,
            self.attempt,
            self.current,
        );
        if !due {
            if let Some(g) = self.generation {
                if let Some(batch) = self.hub.logs.cached(&path, self.next, g) {
                    self.caught_up = !self.send(&batch);
                    return;
                }
            }
        }
        let (hub, id, attempt, next, current) = (
            self.hub.clone(),
            self.id.clone(),
            self.attempt,
            self.next,
            self.current,
        );
        let look = blocking(move || {
            let mut progress = None;
            let mut current = current;
            if due {
                progress = self::progress(&hub, &id, attempt)?;
                if let Some((p, _)) = &progress {
                    current = p.attempt;
                }
            }
            let path = joblog::log_of_attempt(&hub.cfg.log_dir(), &id, attempt, current);
            let lines = hub
                .logs
                .read_shared(&path, next, BATCH_LINES, BATCH_BYTES)
                .map_err(|e| crate::HostError::io(format!("reading {}", path.display()), e))?;
            Ok(Look { progress, lines })
        })
        .await;
        let Ok(look) = look else {
            // The store or the disk is unavailable: end; the page reconnects and resumes.
            self.done = true;
            return;
        };
        if let Some((p, terminal)) = look.progress {
            self.checked = Some(Instant::now());
            self.current = p.attempt;
            self.terminal = terminal;
            if self.last.as_ref() != Some(&p) {
                self.queue.push_back(json_event("state", &p));
                self.last = Some(p);
            }
            if self.current > self.attempt {
                // A newer attempt began: this one is over (its log was moved aside).
                self.finish();
                return;
            }
        }
        if let Some(batch) = look.lines {
            let l = &batch.lines;
            match self.generation {
                Some(g) if g != l.generation => {
                    if !due {
                        // Look at the store first: the file may belong to a newer attempt.
                        self.force = true;
                        return;
                    }
                    self.generation = Some(l.generation);
                    self.next = l.total;
                    self.queue.push_back(json_event(
                        "replaced",
                        &serde_json::json!({"generation": l.generation, "total": l.total}),
                    ));
                    return;
                }
                _ => {
                    self.generation = Some(l.generation);
                    if !l.lines.is_empty() {
                        self.caught_up = !self.send(&batch);
                        return;
                    }
                }
            }
        }
        if self.terminal || self.current > self.attempt {
            // Nothing new and nothing more to come, once the store agrees on a fresh look.
            if due {
                self.finish();
            } else {
                self.force = true;
            }
            return;
        }
        self.caught_up = true;
    }

    fn finish(&mut self) {
        let state = self.last.as_ref().map(|p| p.state.clone());
        self.queue.push_back(json_event(
            "end",
            &serde_json::json!({"state": state, "attempt": self.current}),
        ));
        self.done = true;
    }
}

/// `GET /api/v1/jobs/{id}/log/stream`.
pub async fn stream(
    State(hub): State<Arc<Hub>>,
    UrlPath(id): UrlPath<String>,
    Query(p): Query<StreamParams>,
    headers: HeaderMap,
) -> Response {
    if id.parse::<sdci_protocol::JobId>().is_err() {
        return fail(StatusCode::NOT_FOUND, "no such job");
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_event_id);
    let (generation, from) = match resume {
        Some((g, n)) => (Some(g), n),
        None => (p.gen.filter(|g| *g != 0), p.from.unwrap_or(0)),
    };
    let (h, i) = (hub.clone(), id.clone());
    let job = match blocking(move || h.store.job(&i)).await {
        Ok(Some(j)) => j,
        Ok(None) => return fail(StatusCode::NOT_FOUND, "no such job"),
        Err(r) => return r,
    };
    let attempt = p.attempt.unwrap_or(job.attempts);
    if attempt > job.attempts {
        return fail(StatusCode::NOT_FOUND, "no such attempt");
    }
    let rx = hub.logs.subscribe(&id);
    let mut queue = VecDeque::new();
    // A dropped connection is retried after a second (the browser's default is three).
    queue.push_back(Event::default().retry(RETRY).comment("sdci"));
    let tail = Tail {
        hub,
        id,
        attempt,
        generation,
        next: from,
        rx,
        current: job.attempts,
        last: None,
        terminal: job.state.is_terminal(),
        checked: None,
        force: false,
        caught_up: false,
        queue,
        done: false,
    };
    let events = futures::stream::unfold(tail, |mut t| async move {
        t.next_event().await.map(|e| (Ok::<_, Infallible>(e), t))
    });
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_junk_is_ignored() {
        assert_eq!(parse_event_id(&event_id(77, 1200)), Some((77, 1200)));
        assert_eq!(parse_event_id("12"), None);
        assert_eq!(parse_event_id("a:b"), None);
    }
}
