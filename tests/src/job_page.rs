//! What the job page's browser tests and benchmark share: a push with the commit details a
//! webhook carries (author, subject, any branch name), reading the log lines a page shows out of
//! its DOM, and timing each line of the host's copy of a log as it grows on disk.

use crate::browser::Browser;
use crate::job_world::JobWorld;
use crate::world::{http, sign, World, REPO};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Sends a signed `push` of `sha` on `branch` whose head commit has `author` and `message`;
/// returns the queued job's id.
pub fn push_commit(
    w: &World,
    sha: &str,
    branch: &str,
    author: &str,
    message: &str,
) -> Result<String> {
    let secret = std::fs::read_to_string(w.dir().join("webhook-secret"))
        .context("read the world's webhook secret")?;
    // GitHub's whole push payload with this head commit, checked against
    // @octokit/openapi-webhooks.
    let zero = "0000000000000000000000000000000000000000";
    let mut payload = crate::github::webhooks::push(REPO, branch, zero, sha);
    for pointer in ["/head_commit", "/commits/0"] {
        if let Some(commit) = payload.pointer_mut(pointer) {
            commit["message"] = Value::from(message);
            commit["author"]["name"] = Value::from(author);
            commit["author"]["username"] = Value::from("someone");
        }
    }
    crate::github::webhooks::validate("push", None, &payload).map_err(|e| anyhow!(e))?;
    let body = payload.to_string();
    let signature = sign(secret.trim_end().as_bytes(), body.as_bytes());
    let addr = w
        .host_url()
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("the world's host URL is not http://ADDR"))?;
    let delivery = format!(
        "{:x}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
    );
    let (code, text) = http(
        addr,
        "POST",
        "/hooks/github",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", &delivery),
            ("X-Hub-Signature-256", &signature),
        ],
        body.as_bytes(),
    )?;
    if code != 202 {
        bail!("the host answered the push with {code}: {text}");
    }
    text.strip_prefix("queued job ")
        .map(|s| s.trim().to_owned())
        .ok_or_else(|| anyhow!("unexpected answer to the push: {text}"))
}

/// The log lines of the page's viewer for the current attempt: (anchor id, text), in DOM order.
pub fn dom_lines(b: &Browser) -> Result<Vec<(String, String)>> {
    let v = b.exec(
        "return Array.from(document.querySelectorAll('.attempts div.log .lines > .ln'))\
         .map(e => [e.id, e.querySelector('.tx').textContent]);",
        &[],
    )?;
    let list = v.as_array().ok_or_else(|| anyhow!("no lines in {v}"))?;
    Ok(list
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().to_owned(),
                p[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// The job's API view (`GET /api/v1/jobs/{id}`).
pub fn api_job(w: &World, id: &str) -> Result<Value> {
    let (code, body) = w.get(&format!("/api/v1/jobs/{id}"))?;
    if code != 200 {
        bail!("GET /api/v1/jobs/{id}: {code} {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// Waits until the job's API view satisfies `done` (safety net `limit`).
pub fn wait_api(
    w: &World,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let v = api_job(w, id)?;
        if done(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("job {id} did not get there within {limit:?}: {v}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Epoch milliseconds now (the clock the browser's `performance.timeOrigin` also counts on).
pub fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Watches the host's copy of a job's log (`data/logs/{id}.log`) and stamps each complete line
/// when it appears on disk: the moment the ingest wrote it. It follows the first file only: once
/// the path names another file (dom0's copy replaced the streamed one), nothing more is stamped.
pub struct LogWatch {
    stamps: Arc<Mutex<Vec<(String, f64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWatch {
    /// Polls `path` every 200 µs from its start.
    pub fn start(path: PathBuf) -> Self {
        let stamps: Arc<Mutex<Vec<(String, f64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stamps.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            use std::os::unix::fs::MetadataExt;
            let mut at = 0u64;
            let mut inode = None;
            let mut partial = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while !st.load(Ordering::SeqCst) {
                if let Ok(mut f) = std::fs::File::open(&path) {
                    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    if *inode.get_or_insert(ino) != ino {
                        break;
                    }
                    if f.seek(SeekFrom::Start(at)).is_ok() {
                        while let Ok(n) = f.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            at += n as u64;
                            let t = epoch_ms();
                            for &b in &buf[..n] {
                                if b == b'\n' {
                                    let line = String::from_utf8_lossy(&partial).into_owned();
                                    if let Ok(mut l) = s.lock() {
                                        l.push((line, t));
                                    }
                                    partial.clear();
                                } else {
                                    partial.push(b);
                                }
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Self {
            stamps,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; every line seen with the time it appeared.
    pub fn finish(mut self) -> Vec<(String, f64)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stamps.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The print time (epoch ms) in a fixture line `slow line I at <ns>`, with I.
pub fn printed_at(text: &str) -> Option<(u64, f64)> {
    let rest = &text[text.find("slow line ")? + "slow line ".len()..];
    let (i, ns) = rest.split_once(" at ")?;
    Some((i.parse().ok()?, ns.trim().parse::<f64>().ok()? / 1e6))
}

/// p-th percentile (0–100) of `v` (sorted in place).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}
