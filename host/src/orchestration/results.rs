//! A job's test results (issue 19, contracts §11): after dom0's log, the host downloads
//! `<job dir>/results.tar.zst` through the `Hypervisor` (streamed into a file, at most
//! `jobs.results_max_bytes`), keeps it beside the attempt's log (`joblog::results_path`), reads
//! it as hostile input and stores what it holds: the test cases of its JUnit files
//! (`domain::junit`) and the list of its members (evidence, artifacts), with a note for
//! everything refused, cut or missing. A missing or broken archive is a line in the job's log,
//! never a failed job.
//!
//! Reading the archive ([`read_archive`]) is bounded in every dimension:
//! - the zstd window at most 2^24 (a frame asking for more is refused), the decompressed bytes
//!   at most `tests.archive_max_unpacked_bytes` (a zstd bomb stops there);
//! - tar metadata blocks (PAX headers, GNU long names) at most [`MAX_META_BYTES`], checked on
//!   the raw block stream before the tar reader buffers them ([`HeaderGuard`]);
//! - at most `tests.archive_max_members` members; only regular files, each name by protocol's
//!   `validate_member_path` (so no `..`, no absolute names, a fixed alphabet); links, devices
//!   and directories are skipped with a note;
//! - the manifest first, by protocol's `ResultsManifest::from_json` (bounded, unknown fields
//!   refused), or nothing is used; every other member listed in it with its exact size;
//! - each JUnit file by `domain::junit`'s limits, and at most `tests.max_cases` cases a job.
//!
//! Serving a member ([`copy_member`]) reads the stored archive again with the same bounds.
//!
//! For the check run (`checks`): [`report`] (counts, failed tests with their flaky label and
//! quarantine entry, whether only quarantined tests failed: then the conclusion is `neutral`)
//! and its Markdown section [`markdown`]; [`flaky_label`] is the one flaky rule the job page
//! uses too.

use super::Orchestrator;
use crate::config::Config;
use crate::domain::flakes::{self, Run};
use crate::domain::junit::{self, CaseOutcome, JunitLimits, TestCase};
use crate::joblog::{self, append_log};
use crate::store::{JobRow, ResultFile, ResultSet, Store};
use sdci_protocol::results::{validate_member_path, ResultsManifest, MANIFEST, MAX_MANIFEST_BYTES};
use sdci_vsphere::Hypervisor;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest zstd window accepted (log2): 16 MiB, as dom0's own unpacker.
pub const WINDOW_LOG_MAX: u32 = 24;
/// A PAX header or GNU long name/link block larger than this refuses the archive.
pub const MAX_META_BYTES: u64 = 64 * 1024;

/// The bounds of reading one archive.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_members: usize,
    pub max_unpacked: u64,
    pub max_cases: usize,
    pub junit: JunitLimits,
}

impl ReadLimits {
    pub fn from_config(cfg: &Config) -> Self {
        let t = &cfg.tests;
        Self {
            max_members: t.archive_max_members,
            max_unpacked: t.archive_max_unpacked_bytes,
            max_cases: t.max_cases,
            junit: JunitLimits {
                max_bytes: t.junit_max_bytes,
                ..JunitLimits::default()
            },
        }
    }
}

/// What an archive held.
#[derive(Debug, Default)]
pub struct ArchiveRead {
    pub files: Vec<ResultFile>,
    pub cases: Vec<TestCase>,
    pub notes: Vec<String>,
    pub manifest: Option<ResultsManifest>,
}

/// Counts the decompressed bytes and ends the stream (an error) past the cap.
struct Budget<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "it unpacks to more than tests.archive_max_unpacked_bytes ({} bytes)",
                        self.cap
                    ),
                ));
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Watches the raw tar block stream: a metadata member (PAX `x`/`g`, GNU `L`/`K`) whose data is
/// larger than [`MAX_META_BYTES`] is an error before the tar reader would buffer it whole.
struct HeaderGuard<R> {
    inner: R,
    block: [u8; 512],
    filled: usize,
    /// Data bytes (rounded up to whole blocks) still to pass before the next header.
    data_left: u64,
}

impl<R> HeaderGuard<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            block: [0; 512],
            filled: 0,
            data_left: 0,
        }
    }

    /// A header block is complete: how many data bytes follow it, or why it is refused.
    fn header(&self) -> std::io::Result<u64> {
        let h = &self.block;
        let kind = h[156];
        let field = &h[124..136];
        let size = if field[0] & 0x80 != 0 {
            // Base-256: only plausible for huge regular files.
            let mut v: u64 = 0;
            for b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(*b)))
                    .ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "tar size overflows")
                    })?;
            }
            v
        } else {
            let text: Vec<u8> = field
                .iter()
                .copied()
                .take_while(|b| *b != 0 && *b != b' ')
                .skip_while(|b| *b == b' ')
                .collect();
            if text.is_empty() {
                0
            } else {
                let s = std::str::from_utf8(&text).unwrap_or("x");
                u64::from_str_radix(s, 8).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "tar size is not octal")
                })?
            }
        };
        if matches!(kind, b'x' | b'g' | b'L' | b'K') && size > MAX_META_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a tar metadata block of {size} bytes (at most {MAX_META_BYTES})"),
            ));
        }
        // Directories, links and devices carry no data whatever their size field says.
        if matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            return Ok(0);
        }
        Ok(size.div_ceil(512) * 512)
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut i = 0;
        while i < n {
            if self.data_left > 0 {
                let skip = (n - i).min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                self.data_left -= skip as u64;
                i += skip;
                continue;
            }
            let take = (512 - self.filled).min(n - i);
            self.block[self.filled..self.filled + take].copy_from_slice(&buf[i..i + take]);
            self.filled += take;
            i += take;
            if self.filled == 512 {
                self.filled = 0;
                self.data_left = self.header()?;
            }
        }
        Ok(n)
    }
}

/// The bounded stream under the tar reader of a stored archive.
type Bounded = HeaderGuard<Budget<zstd::stream::read::Decoder<'static, BufReader<std::fs::File>>>>;

/// The tar reader over `file`'s zstd stream, with the window, total-bytes and metadata bounds.
fn open_tar(file: std::fs::File, max_unpacked: u64) -> std::io::Result<tar::Archive<Bounded>> {
    let mut dec = zstd::stream::read::Decoder::new(file)?;
    dec.window_log_max(WINDOW_LOG_MAX)?;
    let budget = Budget {
        inner: dec,
        left: max_unpacked,
        cap: max_unpacked,
    };
    let mut a = tar::Archive::new(HeaderGuard::new(budget));
    a.set_ignore_zeros(false);
    Ok(a)
}

fn kind_of(path: &str) -> &'static str {
    match path.split('/').next() {
        _ if path == MANIFEST => "manifest",
        Some("junit") => "junit",
        Some("evidence") => "evidence",
        Some("artifacts") => "artifact",
        _ => "other",
    }
}

/// Reads the archive at `path` (never fails: what it cannot take is a note).
pub fn read_archive(path: &Path, limits: &ReadLimits) -> ArchiveRead {
    let mut out = ArchiveRead::default();
    if let Err(e) = read_into(path, limits, &mut out) {
        out.notes.push(format!(
            "results.tar.zst: {e}; {} members and {} test cases read before it are kept",
            out.files.len(),
            out.cases.len()
        ));
    }
    if let Some(m) = &out.manifest {
        for e in m.entries.iter().filter(|e| e.truncated) {
            out.notes
                .push(format!("{} was cut by dom0 (from {})", e.path, e.source));
        }
        for s in &m.skipped {
            out.notes
                .push(format!("dom0 did not collect {}: {}", s.source, s.reason));
        }
        if m.skipped_more > 0 {
            out.notes.push(format!(
                "dom0 did not collect {} more files",
                m.skipped_more
            ));
        }
    }
    out
}

fn read_into(path: &Path, limits: &ReadLimits, out: &mut ArchiveRead) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let mut archive = open_tar(file, limits.max_unpacked)?;
    let mut members = 0usize;
    for entry in archive.entries()? {
        let mut entry = entry?;
        members += 1;
        if members > limits.max_members {
            out.notes.push(format!(
                "results.tar.zst has more than {} members (tests.archive_max_members); the \
                 rest is not listed",
                limits.max_members
            ));
            break;
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let shown = junit::clean(&name, 120);
        let Ok(name) = String::from_utf8(raw) else {
            out.notes
                .push(format!("member {shown:?} skipped: its name is not UTF-8"));
            continue;
        };
        if let Err(why) = validate_member_path(&name) {
            out.notes.push(format!("member {shown:?} skipped: {why}"));
            continue;
        }
        let t = entry.header().entry_type();
        if !(t.is_file() || t == tar::EntryType::Continuous) {
            out.notes
                .push(format!("member {shown:?} skipped: not a regular file"));
            continue;
        }
        let kind = kind_of(&name);
        if members == 1 {
            // The manifest comes first, and without it nothing else is read (contracts §11).
            if kind != "manifest" {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "its first member is not manifest.json; nothing in it is used",
                ));
            }
            let mut json = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_end(&mut json)?;
            match ResultsManifest::from_json(&json) {
                Ok(m) => out.manifest = Some(m),
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("manifest.json refused ({e}); nothing in it is used"),
                    ))
                }
            }
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        let listed = out
            .manifest
            .as_ref()
            .and_then(|m| m.entries.iter().find(|e| e.path == name))
            .map(|e| e.bytes);
        match listed {
            None => {
                out.notes.push(format!(
                    "member {shown:?} skipped: not listed in manifest.json"
                ));
                continue;
            }
            Some(b) if b != size => {
                out.notes.push(format!(
                    "member {shown:?} skipped: {size} bytes, manifest.json says {b}"
                ));
                continue;
            }
            Some(_) => {}
        }
        let bytes = if kind == "junit" && out.cases.len() < limits.max_cases {
            let mut counted = Counting {
                inner: &mut entry,
                n: 0,
            };
            let parsed = junit::parse(&name, BufReader::new(&mut counted), &limits.junit);
            let n = counted.n;
            let room = limits.max_cases - out.cases.len();
            if parsed.cases.len() > room {
                out.notes.push(format!(
                    "more than {} test cases in this job (tests.max_cases); the rest of {name} \
                     is not kept",
                    limits.max_cases
                ));
            }
            out.cases.extend(parsed.cases.into_iter().take(room));
            out.notes.extend(parsed.notes);
            n + std::io::copy(&mut entry, &mut std::io::sink())?
        } else {
            std::io::copy(&mut entry, &mut std::io::sink())?
        };
        out.files.push(ResultFile {
            path: name,
            kind: kind.into(),
            bytes,
        });
    }
    Ok(())
}

struct Counting<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Streams member `member` of the stored archive into `sink` in pieces (at most `max_unpacked`
/// decompressed bytes read). `Ok(false)`: no such member (or not a regular file). `sink`
/// returning `false` stops early (the reader went away).
pub fn copy_member(
    path: &Path,
    member: &str,
    max_unpacked: u64,
    mut sink: impl FnMut(&[u8]) -> bool,
) -> std::io::Result<bool> {
    if validate_member_path(member).is_err() || member == MANIFEST {
        return Ok(false);
    }
    let file = std::fs::File::open(path)?;
    let mut archive = open_tar(file, max_unpacked)?;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path_bytes().as_ref() != member.as_bytes() {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Ok(false);
        }
        let mut buf = vec![0u8; joblog::READ_BUF];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 || !sink(&buf[..n]) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Reads the stored archive of `job_id`'s attempt `attempt` (if any) and stores its results,
/// the notes in the job's log and the result set. Blocks (files, SQLite).
pub fn ingest(
    store: &Store,
    cfg: &Config,
    job_id: &str,
    attempt: u32,
    archive: Option<&Path>,
    mut notes: Vec<String>,
) -> crate::Result<usize> {
    let limits = ReadLimits::from_config(cfg);
    let mut read = ArchiveRead::default();
    let mut archive_bytes = None;
    if let Some(p) = archive {
        archive_bytes = std::fs::metadata(p).ok().map(|m| m.len());
        read = read_archive(p, &limits);
    }
    notes.append(&mut read.notes);
    let set = ResultSet {
        stored_ms: crate::now_ms(),
        archive_bytes,
        notes: notes.clone(),
        screenshot: false,
    };
    let keep_screenshot = store
        .result_set(job_id, attempt)?
        .is_some_and(|s| s.screenshot);
    store.store_results(
        job_id,
        attempt,
        &read.cases,
        &read.files,
        &ResultSet {
            screenshot: keep_screenshot,
            ..set
        },
    )?;
    let dir = cfg.log_dir();
    let (bad, all) = (
        read.cases.iter().filter(|c| c.outcome.is_bad()).count(),
        read.cases.len(),
    );
    let mut text = String::new();
    if archive.is_some() {
        text.push_str(&format!(
            "=== results: {all} test cases ({bad} failed or errored), {} files\n",
            read.files.len()
        ));
    }
    for n in &notes {
        text.push_str(&format!("=== results: {}\n", junit::clean(n, 2000)));
    }
    if !text.is_empty() {
        let _ = append_log(&dir, job_id, &text);
    }
    Ok(all)
}

/// The flaky label of job `job`'s run of test `key` (stored at `stored_ms`), by the rule of
/// `domain::flakes` over the test's history in the job's repository: `"known flaky: passed on
/// … at … (job …)"`, or `None`.
pub fn flaky_label(
    store: &Store,
    cfg: &Config,
    job: &JobRow,
    key: &str,
    outcome: CaseOutcome,
    stored_ms: i64,
) -> crate::Result<Option<String>> {
    if !outcome.is_bad() {
        return Ok(None);
    }
    let rule = cfg.tests.flake_rule();
    let history =
        store.test_history(key, Some(job.repo.as_str()), (rule.window * 3) as u32 + 10)?;
    let runs: Vec<Run> = history
        .into_iter()
        .map(|h| Run {
            job_id: h.job_id,
            sha: h.sha,
            version: h.version.unwrap_or_default(),
            outcome: h.outcome,
            at_ms: h.at_ms,
        })
        .collect();
    let this = Run {
        job_id: job.id.to_string(),
        sha: job.sha.to_string(),
        version: job.version.clone().unwrap_or_default(),
        outcome,
        at_ms: stored_ms,
    };
    Ok(flakes::assess(&this, &runs, &rule).map(|f| {
        format!(
            "known flaky: {}",
            f.describe(|ms| sdci_protocol::Utc::from_unix_millis(ms).rfc3339())
        )
    }))
}

/// Failed tests a check run's summary lists; the rest are counted.
pub const REPORTED_TESTS: usize = 50;

/// One failed test as the check run shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedTest {
    pub key: String,
    pub outcome: CaseOutcome,
    pub message: Option<String>,
    /// `file:line` as the JUnit file gave it.
    pub location: Option<String>,
    pub flaky: Option<String>,
    pub quarantined: Option<String>,
}

/// A job's test results as its check run shows them (the newest attempt that has results).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestsReport {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub errored: usize,
    pub skipped: usize,
    /// Failed and errored tests, quarantined ones last, at most [`REPORTED_TESTS`].
    pub tests: Vec<ReportedTest>,
    /// Tests failed, and every one of them is quarantined (`[tests] quarantine`): the check's
    /// conclusion is `neutral`, never `success`.
    pub only_quarantined: bool,
}

/// The test results of job `job` for its check run; `None` when no attempt has results.
pub fn report(store: &Store, cfg: &Config, job: &JobRow) -> crate::Result<Option<TestsReport>> {
    let id = job.id.as_str();
    let Some(attempt) = store.result_attempts(id)?.into_iter().next() else {
        return Ok(None);
    };
    let stored_ms = store.result_set(id, attempt)?.map_or(0, |s| s.stored_ms);
    let rows = store.test_cases(id, attempt)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut r = TestsReport {
        total: rows.len(),
        ..TestsReport::default()
    };
    let mut all_quarantined = true;
    for t in &rows {
        let c = &t.case;
        match c.outcome {
            CaseOutcome::Passed => r.passed += 1,
            CaseOutcome::Skipped => r.skipped += 1,
            CaseOutcome::Failed => r.failed += 1,
            CaseOutcome::Error => r.errored += 1,
        }
        if !c.outcome.is_bad() {
            continue;
        }
        let quarantined = cfg.tests.quarantine_entry(&t.key).map(str::to_owned);
        all_quarantined &= quarantined.is_some();
        if r.tests.len() < REPORTED_TESTS {
            r.tests.push(ReportedTest {
                key: t.key.clone(),
                outcome: c.outcome,
                message: c.message.clone(),
                location: c.file.as_ref().map(|f| match c.line {
                    Some(l) => format!("{f}:{l}"),
                    None => f.clone(),
                }),
                flaky: flaky_label(store, cfg, job, &t.key, c.outcome, stored_ms)?,
                quarantined,
            });
        }
    }
    r.tests.sort_by_key(|t| t.quarantined.is_some());
    r.only_quarantined = r.failed + r.errored > 0 && all_quarantined;
    Ok(Some(r))
}

/// The check run summary's "Tests" section (Markdown; every text from the VM escaped by
/// `md_inline`).
pub fn markdown(r: &TestsReport, job_url: &str) -> String {
    use super::checks::md_inline;
    use std::fmt::Write;
    let mut out = String::from("### Tests\n\n");
    let _ = writeln!(
        out,
        "{} passed · {} failed · {} error · {} skipped of {} ([details]({job_url}#tests))\n",
        r.passed, r.failed, r.errored, r.skipped, r.total
    );
    if r.only_quarantined {
        out.push_str(
            "Only quarantined tests failed (`[tests] quarantine`): the conclusion is neutral, \
             not success.\n\n",
        );
    }
    if r.tests.is_empty() {
        return out;
    }
    out.push_str("| | test | where | message |\n|---|---|---|---|\n");
    for t in &r.tests {
        let mut label = t.outcome.as_str().to_owned();
        if let Some(f) = &t.flaky {
            label = format!("{label} — {}", md_inline(f));
        }
        if let Some(q) = &t.quarantined {
            label = format!("{label} (quarantined: {})", md_inline(q));
        }
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} |",
            md_inline(&t.key),
            t.location.as_deref().map(md_inline).unwrap_or_default(),
            t.message
                .as_deref()
                .map(|m| md_inline(&crate::domain::junit::clean(m, 300)))
                .unwrap_or_default()
        );
    }
    let listed = r.tests.len();
    if r.failed + r.errored > listed {
        let _ = writeln!(
            out,
            "\n… and {} more on the [job page]({job_url}#tests).",
            r.failed + r.errored - listed
        );
    }
    out
}

/// The largest console screenshot kept, bytes.
pub const MAX_SCREENSHOT_BYTES: u64 = 16 * 1024 * 1024;

impl<H: Hypervisor> Orchestrator<H> {
    /// Takes a console screenshot of `vm` for job `id`'s current attempt (its guest hung or its
    /// deadline passed) and keeps it beside the log. Best effort: what happened is the line
    /// returned for the job's log (`None`: the backend takes no screenshots).
    pub(super) async fn take_screenshot(&self, vm: &str, id: &str) -> Option<String> {
        let hub = &self.hub;
        let attempt = match hub.store.job(id) {
            Ok(Some(j)) => j.attempts.max(1),
            _ => return None,
        };
        let dir = hub.cfg.log_dir();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return Some(format!("=== console screenshot not kept: {e}\n"));
        }
        let dest = joblog::screenshot_path(&dir, id, attempt);
        let got = tokio::time::timeout(
            Duration::from_secs(60),
            self.hv.screenshot(vm, &dest, MAX_SCREENSHOT_BYTES),
        )
        .await;
        let line = match got {
            Ok(Ok(Some(d))) if !d.truncated => match hub.store.set_screenshot(id, attempt) {
                Ok(()) => format!("=== console screenshot of {vm} kept ({} bytes)\n", d.bytes),
                Err(e) => format!("=== console screenshot of {vm} not recorded: {e}\n"),
            },
            Ok(Ok(Some(_))) => {
                let _ = std::fs::remove_file(&dest);
                format!("=== console screenshot of {vm} larger than {MAX_SCREENSHOT_BYTES} bytes; not kept\n")
            }
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&dest);
                format!("=== console screenshot of {vm} failed: {e}\n")
            }
            Err(_) => {
                let _ = std::fs::remove_file(&dest);
                format!("=== console screenshot of {vm} took longer than 60 s; not kept\n")
            }
        };
        tracing::info!(%vm, "{}", line.trim_end());
        Some(line)
    }

    /// Downloads dom0's `results.tar.zst` of job `id` (after its log), keeps it beside the log
    /// and stores what it holds. Never fails the job: every problem is a note in its log.
    pub(super) async fn collect_results(&self, vm: &str, id: &str) {
        let hub = &self.hub;
        let cfg = &hub.cfg;
        let started = Instant::now();
        let Ok(job_id) = id.parse::<sdci_protocol::JobId>() else {
            return;
        };
        let attempt = match hub.store.job(id) {
            Ok(Some(j)) => j.attempts.max(1),
            _ => return,
        };
        let guest_path = sdci_protocol::JobPaths::in_home(
            &sdci_protocol::paths::dom0_home(&cfg.dom0.user),
            &job_id,
        )
        .results_file();
        let dir = cfg.log_dir();
        let dest = joblog::results_path(&dir, id, attempt);
        let part = dir.join(format!(".{id}.results.part"));
        let max = cfg.jobs.results_max_bytes;
        let mut notes = Vec::new();
        let got = tokio::time::timeout(
            Duration::from_secs(cfg.deadlines.download_secs),
            self.hv.download_to(vm, &self.auth, &guest_path, &part, max),
        )
        .await;
        let kept: Option<PathBuf> = match got {
            Ok(Ok(d)) if d.truncated => {
                notes.push(format!(
                    "results.tar.zst is larger than jobs.results_max_bytes ({max} bytes); not kept"
                ));
                None
            }
            Ok(Ok(d)) => match std::fs::rename(&part, &dest) {
                Ok(()) => {
                    tracing::info!(bytes = d.bytes, "results.tar.zst fetched");
                    Some(dest)
                }
                Err(e) => {
                    notes.push(format!("results.tar.zst could not be kept: {e}"));
                    None
                }
            },
            Ok(Err(e)) => {
                notes.push(match &e {
                    sdci_vsphere::VsphereError::Fault { kind, .. } if kind == "FileNotFound" => {
                        "dom0 wrote no results.tar.zst".to_owned()
                    }
                    _ => format!("downloading results.tar.zst failed: {e}"),
                });
                None
            }
            Err(_) => {
                notes.push(format!(
                    "downloading results.tar.zst took longer than deadlines.download_secs ({}s)",
                    cfg.deadlines.download_secs
                ));
                None
            }
        };
        let _ = std::fs::remove_file(&part);
        hub.metrics
            .observe_phase("results", started.elapsed().as_secs_f64());
        let (hub2, id2) = (self.hub.clone(), id.to_owned());
        let ingested = tokio::task::spawn_blocking(move || {
            ingest(
                &hub2.store,
                &hub2.cfg,
                &id2,
                attempt,
                kept.as_deref(),
                notes,
            )
        })
        .await;
        match ingested {
            Ok(Ok(n)) => tracing::info!(cases = n, "test results stored"),
            Ok(Err(e)) => tracing::warn!(error = %e, "storing the test results failed"),
            Err(e) => tracing::warn!(error = %e, "reading the test results panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdci_protocol::results::{EntryKind, ResultsEntry, Skipped, RESULTS_VERSION};

    const JUNIT: &str = r#"<testsuites><testsuite name="pytest">
<testcase classname="tests.t" name="test_ok" time="0.1"/>
<testcase classname="tests.t" name="test_bad" file="tests/t.py" line="7"><failure message="assert False">tb</failure></testcase>
</testsuite></testsuites>"#;

    fn limits() -> ReadLimits {
        ReadLimits {
            max_members: 100,
            max_unpacked: 256 * 1024 * 1024,
            max_cases: 1000,
            junit: JunitLimits {
                max_bytes: 1024 * 1024,
                ..JunitLimits::default()
            },
        }
    }

    /// The manifest dom0 would write for `members`: every regular member with a valid name,
    /// its exact size, `truncated` for the names in `cut` (and then one skipped file too).
    fn manifest_for(members: &[(&[u8], u8, Vec<u8>)], cut: &[&str]) -> Vec<u8> {
        let entries = members
            .iter()
            .filter_map(|(name, kind, data)| {
                let path = std::str::from_utf8(name).ok()?;
                validate_member_path(path).ok()?;
                if *kind != b'0' || path == MANIFEST {
                    return None;
                }
                let kind = match path.split('/').next()? {
                    "junit" => EntryKind::Junit,
                    "evidence" => EntryKind::Evidence,
                    _ => EntryKind::Artifact,
                };
                Some(ResultsEntry {
                    path: path.into(),
                    kind,
                    source: format!("/src/{path}"),
                    bytes: data.len() as u64,
                    truncated: cut.contains(&path),
                })
            })
            .collect();
        ResultsManifest {
            version: RESULTS_VERSION,
            job: "job-1".parse().unwrap(),
            outcome: sdci_protocol::Outcome::Failure,
            evidence: true,
            took_ms: 5,
            entries,
            skipped: match cut.is_empty() {
                true => vec![],
                false => vec![Skipped::new(
                    "/var/log/xen/console/huge.log",
                    "larger than 8 MiB",
                )],
            },
            skipped_more: 0,
        }
        .to_json()
        .into_bytes()
    }

    /// A raw ustar header for `name` (any bytes, `..` included), type `kind`, `size` bytes.
    fn header(name: &[u8], kind: u8, size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        let mut out = [0u8; 512];
        out.copy_from_slice(h.as_bytes());
        out
    }

    /// A tar stream of (name, type, data) members after their manifest, compressed.
    fn archive(dir: &Path, members: &[(&[u8], u8, Vec<u8>)]) -> PathBuf {
        archive_cut(dir, members, &[])
    }

    /// As [`archive`], the manifest marking the members `cut` as truncated.
    fn archive_cut(dir: &Path, members: &[(&[u8], u8, Vec<u8>)], cut: &[&str]) -> PathBuf {
        let mut all = vec![(MANIFEST.as_bytes(), b'0', manifest_for(members, cut))];
        all.extend(members.iter().cloned());
        raw_archive(dir, &all)
    }

    /// A tar stream of exactly these members, compressed.
    fn raw_archive(dir: &Path, members: &[(&[u8], u8, Vec<u8>)]) -> PathBuf {
        let mut tar = Vec::new();
        for (name, kind, data) in members {
            tar.extend_from_slice(&header(name, *kind, data.len() as u64));
            tar.extend_from_slice(data);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.extend_from_slice(&[0u8; 1024]);
        let path = dir.join("results.tar.zst");
        std::fs::write(&path, zstd::encode_all(&tar[..], 1).unwrap()).unwrap();
        path
    }

    #[test]
    fn an_archive_gives_its_cases_its_files_and_what_dom0_cut_or_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = archive_cut(
            d.path(),
            &[
                (b"junit/1.xml", b'0', JUNIT.into()),
                (b"evidence/journal.txt", b'0', b"boot\n".to_vec()),
            ],
            &["evidence/journal.txt"],
        );
        let r = read_archive(&p, &limits());
        assert!(r.manifest.is_some(), "{:?}", r.notes);
        assert_eq!(r.cases.len(), 2);
        assert_eq!(r.cases[1].message.as_deref(), Some("assert False"));
        let files: Vec<_> = r
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.kind.as_str(), f.bytes))
            .collect();
        assert_eq!(
            files,
            [
                ("junit/1.xml", "junit", JUNIT.len() as u64),
                ("evidence/journal.txt", "evidence", 5)
            ]
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("evidence/journal.txt was cut by dom0")),
            "{:?}",
            r.notes
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("did not collect /var/log/xen/console/huge.log")),
            "{:?}",
            r.notes
        );
        let mut got = Vec::new();
        assert!(copy_member(&p, "evidence/journal.txt", 1 << 30, |b| {
            got.extend_from_slice(b);
            true
        })
        .unwrap());
        assert_eq!(got, b"boot\n");
        assert!(!copy_member(&p, "evidence/none.txt", 1 << 30, |_| true).unwrap());
        assert!(!copy_member(&p, "../../etc/passwd", 1 << 30, |_| true).unwrap());
    }

    #[test]
    fn escaping_names_links_and_devices_are_skipped_with_a_note() {
        let d = tempfile::tempdir().unwrap();
        let p = archive(
            d.path(),
            &[
                (b"../../etc/passwd", b'0', b"x".to_vec()),
                (b"/etc/shadow", b'0', b"x".to_vec()),
                (b"evidence/link", b'2', Vec::new()),
                (b"evidence/dev", b'3', Vec::new()),
                (b"evidence/\xff.txt", b'0', b"x".to_vec()),
                (b"evidence/ok.txt", b'0', b"fine".to_vec()),
            ],
        );
        let r = read_archive(&p, &limits());
        assert_eq!(r.files.len(), 1, "{:?}", r.files);
        assert_eq!(r.files[0].path, "evidence/ok.txt");
        assert_eq!(r.notes.len(), 5, "{:?}", r.notes);
        assert!(
            r.notes.iter().all(|n| n.contains("skipped")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn without_the_manifest_first_nothing_is_used_and_unlisted_or_resized_members_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let junit: (&[u8], u8, Vec<u8>) = (b"junit/1.xml", b'0', JUNIT.into());
        let r = read_archive(
            &raw_archive(d.path(), std::slice::from_ref(&junit)),
            &limits(),
        );
        assert!(r.cases.is_empty() && r.files.is_empty());
        assert!(
            r.notes[0].contains("first member is not manifest.json"),
            "{:?}",
            r.notes
        );
        let bad = raw_archive(
            d.path(),
            &[
                (
                    MANIFEST.as_bytes(),
                    b'0',
                    b"{\"version\":1,\"extra\":true}".to_vec(),
                ),
                junit.clone(),
            ],
        );
        let r = read_archive(&bad, &limits());
        assert!(r.cases.is_empty());
        assert!(
            r.notes[0].contains("manifest.json refused"),
            "{:?}",
            r.notes
        );
        // Listed with another size, and a member the manifest does not list.
        let listed = manifest_for(&[(b"junit/1.xml", b'0', b"short".to_vec())], &[]);
        let p = raw_archive(
            d.path(),
            &[
                (MANIFEST.as_bytes(), b'0', listed),
                junit,
                (b"evidence/extra.txt", b'0', b"x".to_vec()),
            ],
        );
        let r = read_archive(&p, &limits());
        assert!(r.cases.is_empty() && r.files.is_empty(), "{:?}", r.files);
        let notes = r.notes.join("\n");
        assert!(notes.contains("manifest.json says 5"), "{notes}");
        assert!(
            notes.contains("\"evidence/extra.txt\" skipped: not listed"),
            "{notes}"
        );
    }

    #[test]
    fn a_zstd_bomb_stops_at_the_unpacked_cap_keeping_what_came_before() {
        let d = tempfile::tempdir().unwrap();
        let p = archive(
            d.path(),
            &[
                (b"junit/1.xml", b'0', JUNIT.into()),
                (b"evidence/zeros.txt", b'0', vec![0u8; 64 * 1024 * 1024]),
            ],
        );
        assert!(
            std::fs::metadata(&p).unwrap().len() < 64 * 1024,
            "compressed small"
        );
        let r = read_archive(
            &p,
            &ReadLimits {
                max_unpacked: 8 * 1024 * 1024,
                ..limits()
            },
        );
        assert_eq!(r.cases.len(), 2);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("archive_max_unpacked_bytes")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn a_huge_pax_header_is_refused_before_it_is_buffered() {
        let d = tempfile::tempdir().unwrap();
        let p = archive(d.path(), &[(b"pax", b'x', vec![b'a'; 1024 * 1024])]);
        let r = read_archive(&p, &limits());
        assert!(r.files.is_empty());
        assert!(
            r.notes.iter().any(|n| n.contains("tar metadata block")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn a_frame_asking_for_a_window_over_16_mib_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut tar = header(b"evidence/a.txt", b'0', 4).to_vec();
        tar.extend_from_slice(b"abcd");
        tar.resize(2048, 0);
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.window_log(27).unwrap();
        enc.set_pledged_src_size(None).unwrap();
        std::io::Write::write_all(&mut enc, &tar).unwrap();
        let p = d.path().join("r.tar.zst");
        std::fs::write(&p, enc.finish().unwrap()).unwrap();
        let r = read_archive(&p, &limits());
        assert!(r.files.is_empty(), "{:?}", r.files);
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    }

    #[test]
    fn hostile_junit_in_the_archive_is_cut_or_refused_and_the_rest_is_read() {
        let d = tempfile::tempdir().unwrap();
        // 100 MB of cases: cut at the JUnit cap, the cases before the cut kept.
        let mut big = String::from("<testsuite>");
        while big.len() < 100 * 1024 * 1024 {
            big.push_str("<testcase classname=\"c\" name=\"t\" time=\"0.001\"/>\n");
        }
        big.push_str("</testsuite>");
        let lol = "<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \
                   \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]><testsuite><testcase name=\"&b;\"/></testsuite>";
        let deep = format!("<testsuite>{}", "<x>".repeat(100_000));
        let p = archive(
            d.path(),
            &[
                (b"junit/1.xml", b'0', big.into_bytes()),
                (b"junit/2.xml", b'0', lol.into()),
                (b"junit/3.xml", b'0', deep.into_bytes()),
                (
                    b"junit/4.xml",
                    b'0',
                    b"<testsuite><testcase name=\"\xff\"/></testsuite>".to_vec(),
                ),
                (b"junit/5.xml", b'0', JUNIT.into()),
            ],
        );
        let r = read_archive(
            &p,
            &ReadLimits {
                max_cases: 100_000,
                ..limits()
            },
        );
        let notes = r.notes.join("\n");
        assert!(
            notes.contains("junit/1.xml: longer than 1048576 bytes"),
            "{notes}"
        );
        assert!(
            notes.contains("junit/2.xml: a <!DOCTYPE> is refused"),
            "{notes}"
        );
        assert!(
            notes.contains("junit/3.xml: elements nested deeper"),
            "{notes}"
        );
        assert!(notes.contains("junit/4.xml: invalid UTF-8"), "{notes}");
        assert_eq!(r.files.len(), 5);
        assert!(
            r.files[0].bytes >= 100 * 1024 * 1024,
            "the whole member is listed"
        );
        let last: Vec<_> = r
            .cases
            .iter()
            .rev()
            .take(2)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            last,
            ["test_bad", "test_ok"],
            "the file after the hostile ones is read"
        );
    }
}
