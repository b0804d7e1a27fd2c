//! The event relay: every event from dom0 goes to a spool file on disk, and from there to the
//! host's event endpoint (contracts §1; `sdci_protocol::ingest`) over one streamed HTTP request
//! at a time.
//!
//! ```text
//! qrexec stdout ─EventReader─▶ Spool::push ─▶ spool file (append) ─▶ body stream ─▶ POST event_url
//!                                                  ▲                        │ broken / 408 / 409 / 413 / 5xx
//!                                                  └── resend from next_seq ◀┘ GET event_url
//! ```
//!
//! Invariants:
//! - The spool holds events with `seq` 0, 1, 2… without gaps or repeats; a push out of order is
//!   refused (the stream is then untrusted). Nothing is dropped while the host is unreachable:
//!   the spool is the buffer, on disk.
//! - A request body starts at the host's `next_seq` and carries every later event as it arrives
//!   (chunked), so the host sees each event once in order; after a broken connection the relay
//!   asks `GET event_url` where to resume. The host deduplicates by `seq` anyway.
//! - An answer with `next_seq` (200; 409 a gap or a newer stream; 413 the request's byte cap;
//!   408 the stream was silent too long) makes the relay go on from there with a new request.
//! - The relay ends when the spool is finished and the host has acknowledged every event, or
//!   on a permanent refusal (400/401/404, 410 once the job ended), or when the caller stops
//!   waiting.
//! - The per-job secret only travels in a sensitive `Authorization` header.

use crate::error::{AgentError, Result};
use bytes::Bytes;
use sdci_protocol::ingest::{NextSeq, CONTENT_TYPE};
use sdci_protocol::job::Secret;
use sdci_protocol::Event;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Largest body chunk sent at once (several events are coalesced when they are waiting).
const MAX_CHUNK: u64 = 256 * 1024;

struct SpoolFile {
    file: File,
    /// Byte offset of each event's line; `offsets.len()` is the number of events.
    offsets: Vec<u64>,
    end: u64,
}

/// Progress published to the senders: (events spooled, finished).
type Progress = (u64, bool);

/// The on-disk event buffer of one job. Cheap to clone; all clones share the file.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Mutex<SpoolFile>>,
    progress: Arc<watch::Sender<Progress>>,
    path: PathBuf,
}

impl Spool {
    /// Creates (truncating) the spool file at `path`, creating parent directories.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| AgentError::io(format!("creating {}", parent.display()), e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| {
                AgentError::io(format!("creating the event spool {}", path.display()), e)
            })?;
        let (tx, _) = watch::channel((0, false));
        Ok(Self {
            inner: Arc::new(Mutex::new(SpoolFile {
                file,
                offsets: Vec::new(),
                end: 0,
            })),
            progress: Arc::new(tx),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpoolFile> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of events spooled so far (= the next expected `seq`).
    pub fn len(&self) -> u64 {
        self.lock().offsets.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends an event; its `seq` must be the next one.
    pub fn push(&self, event: &Event) -> Result<()> {
        let mut s = self.lock();
        let expected = s.offsets.len() as u64;
        if event.seq != expected {
            return Err(AgentError::Relay(format!(
                "event stream out of order: got seq {}, expected {expected}",
                event.seq
            )));
        }
        let line = event.to_line();
        let at = s.end;
        s.file
            .write_all(line.as_bytes())
            .map_err(|e| AgentError::io("appending to the event spool", e))?;
        s.offsets.push(at);
        s.end += line.len() as u64;
        let n = s.offsets.len() as u64;
        drop(s);
        self.progress.send_modify(|p| p.0 = n);
        Ok(())
    }

    /// Marks the end of the stream: no more events will be pushed.
    pub fn finish(&self) {
        self.progress.send_modify(|p| p.1 = true);
    }

    /// The bytes of events `from..` up to about [`MAX_CHUNK`], and the seq after them.
    fn read_from(&self, from: u64) -> Result<(Bytes, u64)> {
        let s = self.lock();
        let n = s.offsets.len() as u64;
        if from >= n {
            return Ok((Bytes::new(), from));
        }
        let start = s.offsets[from as usize];
        let mut to = from + 1;
        while to < n && s.offsets[to as usize] - start < MAX_CHUNK {
            to += 1;
        }
        let stop = if to < n {
            s.offsets[to as usize]
        } else {
            s.end
        };
        let mut buf = vec![0u8; (stop - start) as usize];
        s.file
            .read_exact_at(&mut buf, start)
            .map_err(|e| AgentError::io("reading the event spool", e))?;
        Ok((Bytes::from(buf), to))
    }

    /// A request body: the spooled events from `from` on, then each new one as it arrives,
    /// ending when the spool is finished and everything was sent.
    fn body_from(&self, from: u64) -> reqwest::Body {
        let spool = self.clone();
        let rx = self.progress.subscribe();
        let stream =
            futures::stream::unfold((spool, rx, from), |(spool, mut rx, next)| async move {
                loop {
                    let (count, done) = *rx.borrow_and_update();
                    if next < count {
                        return match spool.read_from(next) {
                            Ok((bytes, after)) => Some((Ok(bytes), (spool, rx, after))),
                            Err(e) => Some((
                                Err(std::io::Error::other(e.to_string())),
                                (spool, rx, count),
                            )),
                        };
                    }
                    if done || rx.changed().await.is_err() {
                        return None;
                    }
                }
            });
        reqwest::Body::wrap_stream(stream)
    }
}

/// Where and how to deliver one job's events.
pub struct Relay {
    pub client: reqwest::Client,
    pub url: String,
    pub secret: Secret,
    pub max_backoff: Duration,
}

/// How a delivery attempt ended.
enum Answer {
    /// The host's `next_seq` (after 200 or 409).
    NextSeq(u64),
    /// Worth retrying (network error, 5xx, unreadable answer).
    Transient(String),
    /// Will never work (400, 401, 404...).
    Permanent(String),
}

impl Relay {
    pub fn new(url: &str, secret: Secret, max_backoff: Duration) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("sdci-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            secret,
            max_backoff,
        })
    }

    fn auth(&self) -> reqwest::header::HeaderValue {
        let mut v =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.secret.expose()))
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Bearer invalid"));
        v.set_sensitive(true);
        v
    }

    async fn answer(resp: std::result::Result<reqwest::Response, reqwest::Error>) -> Answer {
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Answer::Transient(format!("network error: {e}")),
        };
        let status = resp.status();
        // 409 (a gap, or a newer stream took over), 413 (the request's byte cap) and 408 (the
        // stream was silent too long) all say where to resume (contracts §1).
        if status.is_success()
            || status == reqwest::StatusCode::CONFLICT
            || status == reqwest::StatusCode::PAYLOAD_TOO_LARGE
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            return match resp.json::<NextSeq>().await {
                Ok(n) => Answer::NextSeq(n.next_seq),
                Err(e) => {
                    Answer::Transient(format!("HTTP {status} without a readable next_seq: {e}"))
                }
            };
        }
        let text: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Answer::Transient(format!("HTTP {status}: {text}"))
        } else {
            Answer::Permanent(format!("HTTP {status}: {text}"))
        }
    }

    async fn post_from(&self, spool: &Spool, from: u64) -> Answer {
        let resp = self
            .client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.auth())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(spool.body_from(from))
            .send()
            .await;
        Self::answer(resp).await
    }

    async fn ask_next_seq(&self) -> Answer {
        let resp = self
            .client
            .get(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.auth())
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        Self::answer(resp).await
    }

    /// Delivers the spool until it is finished and fully acknowledged (module doc). Returns the
    /// number of events the host acknowledged.
    pub async fn run(&self, spool: Spool) -> Result<u64> {
        let mut progress = spool.progress.subscribe();
        let mut from = 0u64;
        let mut pause = Duration::from_millis(100);
        let mut need_position = false;
        loop {
            if need_position {
                match self.ask_next_seq().await {
                    Answer::NextSeq(n) => {
                        from = n;
                        need_position = false;
                    }
                    Answer::Permanent(why) => return Err(AgentError::Relay(why)),
                    Answer::Transient(why) => {
                        tracing::warn!(error = %why, pause_ms = pause.as_millis() as u64, "host event endpoint unreachable; events stay in the spool");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(self.max_backoff);
                        continue;
                    }
                }
            }
            let (count, done) = *progress.borrow_and_update();
            if done && from >= count {
                return Ok(from);
            }
            if from >= count {
                // Nothing to send yet: wait for events rather than holding an empty request.
                if progress.changed().await.is_err() {
                    return Ok(from);
                }
                continue;
            }
            match self.post_from(&spool, from).await {
                Answer::NextSeq(n) => {
                    if n > spool.len() {
                        return Err(AgentError::Relay(format!(
                            "the host claims next_seq {n}, beyond the {} events sent",
                            spool.len()
                        )));
                    }
                    from = n;
                    pause = Duration::from_millis(100);
                }
                Answer::Permanent(why) => return Err(AgentError::Relay(why)),
                Answer::Transient(why) => {
                    tracing::warn!(error = %why, "event stream to the host broke; resuming from the host's next_seq");
                    need_position = true;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.max_backoff);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdci_protocol::{EventKind, EventWriter};

    fn events(n: usize) -> Vec<Event> {
        let mut w = EventWriter::new(Vec::new());
        (0..n)
            .map(|i| {
                w.emit(EventKind::Log {
                    step: Some(0),
                    text: format!("line {i}"),
                })
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn spool_refuses_gaps_and_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(&dir.path().join("s/events.ndjson")).unwrap();
        let evs = events(3);
        spool.push(&evs[0]).unwrap();
        assert!(spool.push(&evs[0]).is_err(), "repeat");
        assert!(spool.push(&evs[2]).is_err(), "gap");
        spool.push(&evs[1]).unwrap();
        assert_eq!(spool.len(), 2);
    }

    #[test]
    fn spool_reads_back_exact_lines_from_any_seq() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(&dir.path().join("events.ndjson")).unwrap();
        let evs = events(5);
        for e in &evs {
            spool.push(e).unwrap();
        }
        let (bytes, after) = spool.read_from(2).unwrap();
        assert_eq!(after, 5);
        let expected: String = evs[2..].iter().map(Event::to_line).collect();
        assert_eq!(bytes, expected.as_bytes());
        assert_eq!(spool.read_from(5).unwrap().0.len(), 0);
        let on_disk = std::fs::read_to_string(spool.path()).unwrap();
        assert_eq!(on_disk, evs.iter().map(Event::to_line).collect::<String>());
    }
}
