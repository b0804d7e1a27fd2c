//! The job logs on disk, one text file per attempt: `{data_dir}/logs/{id}.log` is the current
//! (latest) attempt's, `{id}.attempt-{n}.log` an earlier attempt's ([`begin_attempt`] moves the
//! file aside when the next attempt starts). A file grows by [`append_log`] as the event ingest
//! renders events ([`Renderer`], in dom0's own line format, `protocol::logline`) and the host adds
//! its notes, and is replaced by dom0's copy, the authoritative one, when the attempt ends and the
//! two differ ([`replace_log`]). Beside them, per attempt: dom0's `results.tar.zst`
//! ([`results_path`]) and a console screenshot of a hung guest ([`screenshot_path`]).
//!
//! Serving ([`LiveLogs`]): a log is read by line number through a sparse line index kept per file
//! (a byte offset every [`INDEX_STRIDE`] lines, extended by scanning only the bytes appended
//! since), so any range of lines is one seek and a bounded read; nothing ever holds a whole log in
//! memory. Only complete (newline-terminated) lines are served, so a reader never sees half a
//! line and never sees a line twice. A file's `generation` (its inode) changes when it is
//! replaced, which tells a viewer its line numbers are stale. [`LiveLogs`] also carries one
//! `watch` channel per watched job, bumped when lines are appended, so live viewers wait for
//! lines without a timer.
//!
//! Invariants: `id` is a valid job id (checked by every caller), so it is a safe file name. The
//! reading functions block (file I/O): the web surface calls them through `spawn_blocking`, with
//! a buffer of [`READ_BUF`] bytes and at most `max_bytes` of text per answer.

use sdci_protocol::{logline, Event, EventKind};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// A checkpoint (byte offset) every this many lines in a file's line index.
pub const INDEX_STRIDE: u64 = 256;
/// A served line longer than this (bytes) is cut and ends with [`CUT`].
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// What a cut line ends with.
pub const CUT: &str = "…[line cut]";
/// The read buffer of the index scan and of line reads.
pub const READ_BUF: usize = 64 * 1024;
/// At most this many step openings are remembered per file (for the steps' line links).
const MAX_STEP_MARKS: usize = 1024;
/// Line indexes kept in memory; past this, unused ones are dropped.
const MAX_INDEXES: usize = 256;
/// Step names a [`Renderer`] remembers (a hostile stream cannot grow it further).
const MAX_RENDER_NAMES: usize = 1024;

/// The log file of a job's current attempt. `id` must already be a valid job id.
pub fn log_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.log"))
}

/// The log file of an earlier attempt `attempt` (numbered from 1).
pub fn attempt_log_path(dir: &Path, id: &str, attempt: u32) -> PathBuf {
    dir.join(format!("{id}.attempt-{attempt}.log"))
}

/// The file holding attempt `attempt`'s log when the job's current attempt is `current`.
pub fn log_of_attempt(dir: &Path, id: &str, attempt: u32, current: u32) -> PathBuf {
    if attempt >= current {
        log_path(dir, id)
    } else {
        attempt_log_path(dir, id, attempt)
    }
}

/// The stored `results.tar.zst` of attempt `attempt` (dom0's test results and evidence,
/// contracts §11), kept beside the logs under the attempt's number.
pub fn results_path(dir: &Path, id: &str, attempt: u32) -> PathBuf {
    dir.join(format!("{id}.attempt-{attempt}.results.tar.zst"))
}

/// The console screenshot of attempt `attempt` (taken when its guest hung or timed out).
pub fn screenshot_path(dir: &Path, id: &str, attempt: u32) -> PathBuf {
    dir.join(format!("{id}.attempt-{attempt}.screenshot.png"))
}

/// Attempt `attempt` begins: the previous attempt's log (the current file) is moved aside to
/// [`attempt_log_path`]`(attempt - 1)`, so each attempt keeps its own log. A file already there
/// (a restart between a claim and this call) is kept, and the current file goes on growing.
pub fn begin_attempt(dir: &Path, id: &str, attempt: u32) -> std::io::Result<()> {
    let current = log_path(dir, id);
    if attempt <= 1 || !current.exists() {
        return Ok(());
    }
    let aside = attempt_log_path(dir, id, attempt - 1);
    if aside.exists() {
        return Ok(());
    }
    std::fs::rename(current, aside)
}

/// Removes every log of a job (every attempt's), with its results archives and screenshots.
pub fn remove_logs(dir: &Path, id: &str) -> std::io::Result<()> {
    let prefix = format!("{id}.attempt-");
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = [".log", ".results.tar.zst", ".screenshot.png"];
        if name.starts_with(&prefix) && ours.iter().any(|e| name.ends_with(e)) {
            std::fs::remove_file(entry.path())?;
        }
    }
    match std::fs::remove_file(log_path(dir, id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Appends text to the current attempt's log.
pub fn append_log(dir: &Path, id: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, id))?;
    f.write_all(text.as_bytes())
}

/// Replaces the current attempt's streamed log with dom0's copy if they differ (compared in
/// chunks, never read whole). Returns whether it replaced. The new file has a new generation,
/// which tells live viewers to fetch their lines again.
pub fn replace_log(dir: &Path, id: &str, authoritative: &[u8]) -> std::io::Result<bool> {
    let path = log_path(dir, id);
    if same_content(&path, authoritative).unwrap_or(false) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{id}.log.tmp"));
    std::fs::write(&tmp, authoritative)?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

fn same_content(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let mut f = File::open(path)?;
    if f.metadata()?.len() != bytes.len() as u64 {
        return Ok(false);
    }
    let mut buf = vec![0u8; READ_BUF];
    let mut at = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(at == bytes.len());
        }
        if bytes.get(at..at + n) != Some(&buf[..n]) {
            return Ok(false);
        }
        at += n;
    }
}

/// Renders relayed events as the lines dom0 writes for them (`protocol::logline`): stamped with
/// the event's `ts_ms`, steps numbered from 1 of the job's `total`, step lines tagged with the
/// step's name (learnt from `StepStarted`, or given up front when a stream resumes mid-step).
#[derive(Debug, Clone, Default)]
pub struct Renderer {
    total: usize,
    names: HashMap<u32, String>,
}

impl Renderer {
    /// `total`: the job's number of steps; `known`: step names already seen in this attempt.
    pub fn new(total: usize, known: impl IntoIterator<Item = (u32, String)>) -> Self {
        let names = known.into_iter().take(MAX_RENDER_NAMES).collect();
        Self { total, names }
    }

    /// One event as one line of the log, newline included.
    pub fn render(&mut self, ev: &Event) -> String {
        if let EventKind::StepStarted { step, name, .. } = &ev.kind {
            if self.names.len() < MAX_RENDER_NAMES || self.names.contains_key(step) {
                self.names.insert(*step, name.clone());
            }
        }
        let step = match &ev.kind {
            EventKind::Log { step, .. } => *step,
            EventKind::StepFinished { step, .. } | EventKind::StepStarted { step, .. } => {
                Some(*step)
            }
            EventKind::Result { .. } => None,
        };
        let fallback;
        let name = match step.map(|s| (s, self.names.get(&s))) {
            Some((_, Some(n))) => n.as_str(),
            Some((s, None)) => {
                fallback = format!("step {}", u64::from(s) + 1);
                fallback.as_str()
            }
            None => "",
        };
        logline::stamp(ev.ts_ms, &logline::event_text(&ev.kind, self.total, name))
    }
}

/// Where a step opens in a log: line `line` (from 0) is `==> step {step}/…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepMark {
    pub line: u64,
    /// The step's number, from 1.
    pub step: u32,
}

/// What is known of a log file now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogInfo {
    /// Changes when the file is replaced (dom0's copy): line numbers of another generation are
    /// not comparable.
    pub generation: u64,
    /// Complete lines.
    pub lines: u64,
    /// Bytes of the complete lines.
    pub bytes: u64,
    /// Where each step opens (at most the first 1,024).
    pub steps: Vec<StepMark>,
}

/// Lines `from .. from + lines.len()` of a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLines {
    pub generation: u64,
    pub from: u64,
    pub lines: Vec<String>,
    /// Complete lines in the file when it was read.
    pub total: u64,
}

impl LogLines {
    /// The number of the line after the last one here.
    pub fn next(&self) -> u64 {
        self.from + self.lines.len() as u64
    }
}

/// A file's sparse line index: the byte offset of every [`INDEX_STRIDE`]-th line, grown by
/// scanning only what was appended since the last look.
#[derive(Debug, Default)]
struct LineIndex {
    generation: u64,
    /// `checkpoints[k]`: the byte offset of line `k * INDEX_STRIDE`.
    checkpoints: Vec<u64>,
    /// Complete lines scanned.
    lines: u64,
    /// Byte offset after the last complete line.
    scanned: u64,
    steps: Vec<StepMark>,
    /// The start of the line being scanned (enough to recognise a step opening).
    head: Vec<u8>,
}

const HEAD_BYTES: usize = 96;

impl LineIndex {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            checkpoints: vec![0],
            ..Self::default()
        }
    }

    /// Scans `file` from the last complete line to `len`.
    fn extend(&mut self, file: &mut File, len: u64) -> std::io::Result<()> {
        if len <= self.scanned {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.scanned))?;
        let mut reader = file.take(len - self.scanned);
        let mut buf = vec![0u8; READ_BUF];
        let mut pos = self.scanned;
        self.head.clear();
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.take_head(&rest[..i]);
                        pos += i as u64 + 1;
                        self.line_done(pos);
                        rest = &rest[i + 1..];
                    }
                    None => {
                        self.take_head(rest);
                        pos += rest.len() as u64;
                        rest = &[];
                    }
                }
            }
        }
        Ok(())
    }

    fn take_head(&mut self, part: &[u8]) {
        let room = HEAD_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn line_done(&mut self, end: u64) {
        if self.steps.len() < MAX_STEP_MARKS {
            if let Some((step, _)) = logline::step_opened(&String::from_utf8_lossy(&self.head)) {
                self.steps.push(StepMark {
                    line: self.lines,
                    step,
                });
            }
        }
        self.head.clear();
        self.lines += 1;
        self.scanned = end;
        if self.lines.is_multiple_of(INDEX_STRIDE) {
            self.checkpoints.push(end);
        }
    }

    fn info(&self) -> LogInfo {
        LogInfo {
            generation: self.generation,
            lines: self.lines,
            bytes: self.scanned,
            steps: self.steps.clone(),
        }
    }
}

/// Reads one line (up to `\n`, which is dropped) keeping at most [`MAX_LINE_BYTES`] of it.
fn read_line(r: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<()> {
    out.clear();
    let mut cut = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let (part, used, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(out.len());
        if part.len() > room {
            cut = true;
        }
        out.extend_from_slice(&part[..part.len().min(room)]);
        r.consume(used);
        if end {
            break;
        }
    }
    if cut {
        // Drop a character cut in half, then say so.
        while !out.is_empty() && std::str::from_utf8(out).is_err() {
            out.pop();
        }
        out.extend_from_slice(CUT.as_bytes());
    }
    Ok(())
}

/// A reader at a line: (reader, generation, complete lines, the line it is at).
type Positioned = (BufReader<File>, u64, u64, u64);

/// The logs as the web surface serves them: line indexes per file and the live viewers'
/// wake-ups per job. See the module documentation.
#[derive(Debug, Default)]
pub struct LiveLogs {
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    indexes: Mutex<HashMap<PathBuf, Arc<Mutex<LineIndex>>>>,
    /// The last batch read from each file, with its JSON: live viewers at the same position
    /// share one read and one encoding.
    batches: Mutex<HashMap<PathBuf, Arc<BatchSlot>>>,
}

/// The last batch of one file; held while a batch is read, so viewers of one file read it once.
type BatchSlot = Mutex<Option<Arc<Batch>>>;

/// Lines as a live viewer sends them: the lines and their JSON, read and encoded once for every
/// viewer at the same position ([`LiveLogs::read_shared`]).
#[derive(Debug)]
pub struct Batch {
    pub lines: LogLines,
    /// `serde_json` of `lines`.
    pub json: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LiveLogs {
    /// A receiver that changes whenever lines are appended to job `id`'s log ([`Self::notify`]).
    pub fn subscribe(&self, id: &str) -> watch::Receiver<u64> {
        let mut w = lock(&self.watchers);
        w.retain(|_, tx| tx.receiver_count() > 0);
        w.entry(id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes job `id`'s live viewers (lines were appended, the log was replaced, the job ended).
    pub fn notify(&self, id: &str) {
        let w = lock(&self.watchers);
        if let Some(tx) = w.get(id) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Job ids with live viewers now (for metrics and tests).
    pub fn watched(&self) -> usize {
        lock(&self.watchers)
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }

    /// Opens `path` and brings its index up to date; `None` if there is no such file. Blocks.
    fn open(&self, path: &Path) -> std::io::Result<Option<(File, Arc<Mutex<LineIndex>>)>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let generation = meta.ino();
        let index = {
            let mut all = lock(&self.indexes);
            if all.len() >= MAX_INDEXES && !all.contains_key(path) {
                all.retain(|_, ix| Arc::strong_count(ix) > 1);
            }
            all.entry(path.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(LineIndex::new(generation))))
                .clone()
        };
        {
            let mut ix = lock(&index);
            if ix.generation != generation || meta.len() < ix.scanned {
                *ix = LineIndex::new(generation);
            }
            ix.extend(&mut file, meta.len())?;
        }
        Ok(Some((file, index)))
    }

    /// What is known of the log at `path` now; `None` if there is none. Blocks.
    pub fn info(&self, path: &Path) -> std::io::Result<Option<LogInfo>> {
        Ok(self.open(path)?.map(|(_, ix)| lock(&ix).info()))
    }

    /// A reader positioned at line `from` (clamped to the complete lines) of `path`:
    /// (reader, generation, complete lines, from). Blocks.
    fn seek_line(&self, path: &Path, from: u64) -> std::io::Result<Option<Positioned>> {
        let Some((file, index)) = self.open(path)? else {
            return Ok(None);
        };
        let (generation, total, start, from) = {
            let ix = lock(&index);
            let from = from.min(ix.lines);
            let k = (from / INDEX_STRIDE) as usize;
            let start = ix.checkpoints.get(k).copied().unwrap_or(0);
            (
                ix.generation,
                ix.lines,
                (start, k as u64 * INDEX_STRIDE),
                from,
            )
        };
        let mut reader = BufReader::with_capacity(READ_BUF, file);
        reader.seek(SeekFrom::Start(start.0))?;
        let mut line = Vec::new();
        for _ in start.1..from {
            read_line(&mut reader, &mut line)?;
        }
        Ok(Some((reader, generation, total, from)))
    }

    /// [`Self::read`], shared: when the file has not grown since the last batch read from the
    /// same line (or that batch was already full), that batch is handed out again. Blocks.
    pub fn read_shared(
        &self,
        path: &Path,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> std::io::Result<Option<Arc<Batch>>> {
        let slot = {
            let mut all = lock(&self.batches);
            if all.len() >= MAX_INDEXES && !all.contains_key(path) {
                all.retain(|_, s| Arc::strong_count(s) > 1);
            }
            all.entry(path.to_owned()).or_default().clone()
        };
        let mut last = lock(&slot);
        let Some(info) = self.info(path)? else {
            return Ok(None);
        };
        if let Some(b) = last.as_ref() {
            let l = &b.lines;
            let full = l.next() < l.total || l.lines.len() >= limit;
            if l.generation == info.generation && l.from == from && (l.total == info.lines || full)
            {
                return Ok(Some(b.clone()));
            }
        }
        let Some(lines) = self.read(path, from, limit, max_bytes)? else {
            return Ok(None);
        };
        let json = serde_json::to_string(&lines).unwrap_or_else(|_| "{}".into());
        let batch = Arc::new(Batch { lines, json });
        *last = Some(batch.clone());
        Ok(Some(batch))
    }

    /// The last batch read from `path` if it starts at line `from` of generation `generation`
    /// and has lines: memory only, never waits (a batch being read counts as none).
    pub fn cached(&self, path: &Path, from: u64, generation: u64) -> Option<Arc<Batch>> {
        let slot = lock(&self.batches).get(path)?.clone();
        let b = slot.try_lock().ok()?.clone()?;
        let l = &b.lines;
        (l.generation == generation && l.from == from && !l.lines.is_empty()).then_some(b)
    }

    /// Up to `limit` complete lines from line `from` (from 0), at most `max_bytes` of text (but
    /// always one line if there is one); `None` if there is no log. Blocks.
    pub fn read(
        &self,
        path: &Path,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> std::io::Result<Option<LogLines>> {
        let Some((mut reader, generation, total, from)) = self.seek_line(path, from)? else {
            return Ok(None);
        };
        let count = (total - from).min(limit as u64);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        for _ in 0..count {
            if !lines.is_empty() && bytes >= max_bytes {
                break;
            }
            read_line(&mut reader, &mut line)?;
            bytes += line.len() + 1;
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        Ok(Some(LogLines {
            generation,
            from,
            lines,
            total,
        }))
    }

    /// The last `n` complete lines, at most `max_bytes` of text (the newest kept, and always one
    /// line if there is one); memory stays within `max_bytes` plus one line. Blocks.
    pub fn tail(&self, path: &Path, n: u64, max_bytes: usize) -> std::io::Result<Option<LogLines>> {
        let Some(info) = self.info(path)? else {
            return Ok(None);
        };
        let want = info.lines.saturating_sub(n);
        let Some((mut reader, generation, total, start)) = self.seek_line(path, want)? else {
            return Ok(None);
        };
        let mut from = start;
        let mut kept: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let mut bytes = 0usize;
        let mut line = Vec::new();
        for _ in start..total {
            read_line(&mut reader, &mut line)?;
            bytes += line.len() + 1;
            kept.push_back(String::from_utf8_lossy(&line).into_owned());
            while bytes > max_bytes && kept.len() > 1 {
                if let Some(old) = kept.pop_front() {
                    bytes = bytes.saturating_sub(old.len() + 1);
                    from += 1;
                }
            }
        }
        Ok(Some(LogLines {
            generation,
            from,
            lines: kept.into(),
            total,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdci_protocol::Outcome;

    fn ev(seq: u64, ts_ms: u64, kind: EventKind) -> Event {
        Event {
            v: 1,
            seq,
            ts_ms,
            kind,
        }
    }

    #[test]
    fn events_render_as_dom0_writes_them_with_their_own_time_and_step_numbers_from_one() {
        let mut r = Renderer::new(8, []);
        let t = 1_795_886_980_123;
        let lines = [
            r.render(&ev(
                0,
                t,
                EventKind::StepStarted {
                    step: 0,
                    name: "os-release".into(),
                    argv: vec!["cat".into(), "/etc/os-release".into()],
                },
            )),
            r.render(&ev(
                1,
                t + 1,
                EventKind::Log {
                    step: Some(0),
                    text: "ID=debian".into(),
                },
            )),
            r.render(&ev(
                2,
                t + 2,
                EventKind::StepFinished {
                    step: 0,
                    status: 0,
                    timed_out: false,
                    duration_ms: 40,
                },
            )),
            r.render(&ev(
                3,
                t + 3,
                EventKind::Result {
                    outcome: Outcome::Success,
                    reason: "all 8 steps passed".into(),
                },
            )),
        ];
        assert_eq!(
            lines.concat(),
            "2026-11-28T17:29:40.123Z ==> step 1/8 os-release: cat /etc/os-release\n\
             2026-11-28T17:29:40.124Z [os-release] ID=debian\n\
             2026-11-28T17:29:40.125Z <== os-release: exit status 0 after 0.0 s\n\
             2026-11-28T17:29:40.126Z result: success (all 8 steps passed)\n"
        );
    }

    #[test]
    fn a_stream_resumed_mid_step_still_names_the_step() {
        let mut r = Renderer::new(2, [(1, "make-test".to_owned())]);
        let line = r.render(&ev(
            9,
            0,
            EventKind::Log {
                step: Some(1),
                text: "ok".into(),
            },
        ));
        assert_eq!(line, "1970-01-01T00:00:00.000Z [make-test] ok\n");
        let unknown = r.render(&ev(
            10,
            0,
            EventKind::Log {
                step: Some(4),
                text: "?".into(),
            },
        ));
        assert_eq!(unknown, "1970-01-01T00:00:00.000Z [step 5] ?\n");
    }

    fn numbered(n: u64) -> String {
        (0..n)
            .map(|i| format!("2026-11-28T17:29:40.123Z [s] line {i}\n"))
            .collect()
    }

    #[test]
    fn any_range_of_lines_is_served_through_the_index_and_only_complete_lines_count() {
        let d = tempfile::tempdir().unwrap();
        let logs = LiveLogs::default();
        append_log(d.path(), "j", &numbered(1000)).unwrap();
        append_log(d.path(), "j", "2026-11-28T17:29:40.123Z [s] half a li").unwrap();
        let p = log_path(d.path(), "j");
        let got = logs.read(&p, 700, 3, usize::MAX).unwrap().unwrap();
        assert_eq!(got.total, 1000);
        assert_eq!(got.from, 700);
        assert_eq!(
            got.lines,
            ["[s] line 700", "[s] line 701", "[s] line 702"]
                .map(|l| format!("2026-11-28T17:29:40.123Z {l}"))
        );
        // The half line becomes the 1001st when it is finished, and is served once.
        append_log(d.path(), "j", "ne\n").unwrap();
        let end = logs.read(&p, 999, 10, usize::MAX).unwrap().unwrap();
        assert_eq!(end.lines.len(), 2);
        assert!(end.lines[1].ends_with("half a line"), "{:?}", end.lines);
        assert_eq!(end.next(), 1001);
        let tail = logs.tail(&p, 2, usize::MAX).unwrap().unwrap();
        assert_eq!((tail.from, tail.total), (999, 1001));
        let past = logs.read(&p, 5000, 10, usize::MAX).unwrap().unwrap();
        assert_eq!((past.from, past.lines.len()), (1001, 0));
    }

    #[test]
    fn answers_are_capped_in_bytes_and_long_lines_are_cut() {
        let d = tempfile::tempdir().unwrap();
        let logs = LiveLogs::default();
        append_log(d.path(), "j", &numbered(100)).unwrap();
        append_log(
            d.path(),
            "j",
            &format!("{}\n", "x".repeat(MAX_LINE_BYTES + 10)),
        )
        .unwrap();
        let p = log_path(d.path(), "j");
        let got = logs.read(&p, 0, 100, 200).unwrap().unwrap();
        assert!(got.lines.len() < 10, "{}", got.lines.len());
        let long = logs.read(&p, 100, 1, usize::MAX).unwrap().unwrap();
        assert_eq!(long.lines[0].len(), MAX_LINE_BYTES + CUT.len());
        let tail = logs.tail(&p, 50, 300).unwrap().unwrap();
        assert_eq!(tail.lines.len(), 1, "the newest line is always kept");
    }

    #[test]
    fn steps_are_found_and_a_replaced_file_is_a_new_generation() {
        let d = tempfile::tempdir().unwrap();
        let logs = LiveLogs::default();
        let mut r = Renderer::new(2, []);
        let start = |step: u32| {
            ev(
                0,
                0,
                EventKind::StepStarted {
                    step,
                    name: format!("s{step}"),
                    argv: vec![],
                },
            )
        };
        append_log(d.path(), "j", &r.render(&start(0))).unwrap();
        append_log(d.path(), "j", &numbered(3)).unwrap();
        append_log(d.path(), "j", &r.render(&start(1))).unwrap();
        let p = log_path(d.path(), "j");
        let before = logs.info(&p).unwrap().unwrap();
        assert_eq!(
            before.steps,
            [StepMark { line: 0, step: 1 }, StepMark { line: 4, step: 2 }]
        );
        assert!(!replace_log(d.path(), "j", &std::fs::read(&p).unwrap()).unwrap());
        assert!(replace_log(d.path(), "j", numbered(2).as_bytes()).unwrap());
        let after = logs.info(&p).unwrap().unwrap();
        assert_ne!(after.generation, before.generation);
        assert_eq!((after.lines, after.steps.len()), (2, 0));
    }

    #[test]
    fn each_attempt_keeps_its_own_log() {
        let d = tempfile::tempdir().unwrap();
        begin_attempt(d.path(), "j", 1).unwrap();
        append_log(d.path(), "j", "first\n").unwrap();
        begin_attempt(d.path(), "j", 2).unwrap();
        append_log(d.path(), "j", "second\n").unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(log_of_attempt(d.path(), "j", 1, 2)), "first\n");
        assert_eq!(read(log_of_attempt(d.path(), "j", 2, 2)), "second\n");
        remove_logs(d.path(), "j").unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn viewers_at_one_position_share_a_batch_until_the_file_grows() {
        let d = tempfile::tempdir().unwrap();
        let logs = LiveLogs::default();
        append_log(d.path(), "j", &numbered(10)).unwrap();
        let p = log_path(d.path(), "j");
        let a = logs.read_shared(&p, 5, 100, usize::MAX).unwrap().unwrap();
        let b = logs.read_shared(&p, 5, 100, usize::MAX).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.lines.lines.len(), 5);
        let back: serde_json::Value = serde_json::from_str(&a.json).unwrap();
        assert_eq!(back["from"], 5);
        append_log(d.path(), "j", &numbered(1)).unwrap();
        let c = logs.read_shared(&p, 5, 100, usize::MAX).unwrap().unwrap();
        assert_eq!(c.lines.lines.len(), 6, "a grown file is read again");
        let g = c.lines.generation;
        assert!(Arc::ptr_eq(&logs.cached(&p, 5, g).unwrap(), &c));
        assert!(logs.cached(&p, 6, g).is_none());
        assert!(logs.cached(&p, 5, g + 1).is_none());
    }

    #[tokio::test]
    async fn viewers_are_woken_when_lines_are_appended() {
        let logs = LiveLogs::default();
        let mut rx = logs.subscribe("j");
        assert_eq!(logs.watched(), 1);
        logs.notify("j");
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        drop(rx);
        assert_eq!(logs.watched(), 0);
    }
}
