//! After the steps: the job's JUnit files and, when the steps did not succeed, the failure
//! evidence (journal, Xen console and Qubes logs, `qvm-ls`, Salt and `sdw-admin` logs, the job's
//! artifacts) into one bounded `<job dir>/results.tar.zst` (contracts §11).
//!
//! Everything here reads what the code under test (which ran with sudo) could have shaped, so:
//! - no symlink is followed below a root (each root is opened `O_NOFOLLOW`, each component
//!   `openat(…, O_NOFOLLOW)`, each file first as `O_PATH` and checked to be a regular file, then
//!   reopened through `/proc/self/fd`, so a FIFO or a device is never opened for reading);
//! - every file is read at most [`Caps::max_file_bytes`] (the head of a JUnit file or an
//!   artifact, the tail of a log), so a 10 GB file or one that grows while read costs 8 MiB;
//! - directory walks are bounded in entries ([`Caps::max_walk_entries`]) and depth; commands
//!   run in their own process group, killed at [`Caps::command_timeout`]; the whole collection
//!   has a deadline ([`Caps::deadline`]);
//! - the archive never exceeds [`Caps::max_total_bytes`]: a member is added only while the
//!   compressed file so far plus the member's own size fits.
//!
//! What does not fit or is refused is listed in the manifest's `skipped`. A failure here is a
//! line in `log.txt`; it never changes the job's outcome (contracts §8).
//!
//! The file is two concatenated zstd frames, which decode as one stream: the manifest (known
//! only at the end) and then the members, written to `results.data.part` as they are read. Both
//! parts are created exclusively in the job's directory; the result is renamed into place after
//! an fsync, so the host sees the whole file or none.

use crate::error::{Error, Result};
use crate::log::JobLog;
use crate::steps;
use crate::unpack::human;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};
use sdci_protocol::paths::RESULTS_FILE;
use sdci_protocol::results::{
    validate_glob, validate_member_path, EntryKind, ResultsEntry, ResultsManifest, ResultsSpec,
    Skipped, MANIFEST, MAX_MEMBER_COMPONENT, MAX_MEMBER_DEPTH, MAX_MEMBER_PATH, RESULTS_VERSION,
};
use sdci_protocol::{JobId, Outcome};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// At most this many skipped entries are written; the rest are counted (`skipped_more`).
pub const MAX_SKIPPED_WRITTEN: usize = 500;
/// At most this many skipped entries give the same reason; the rest are counted.
const MAX_SKIPPED_PER_REASON: usize = 20;
/// At most this many skipped entries are also noted in `log.txt`.
const MAX_SKIPPED_LOGGED: usize = 10;
/// The zstd window of the file (contracts §11: at most 2^23; the host accepts up to 2^24).
const WINDOW_LOG: u32 = 23;
const ZSTD_LEVEL: i32 = 3;
/// Read chunk for files; the deadline is checked between chunks.
const CHUNK: usize = 64 * 1024;

/// The bounds of one collection (dom0.toml `[results]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Per file (or command output) in the archive; larger ones are cut.
    pub max_file_bytes: u64,
    /// Members besides the manifest.
    pub max_members: usize,
    /// The compressed file.
    pub max_total_bytes: u64,
    /// All members together, uncompressed.
    pub max_unpacked_bytes: u64,
    /// Directory entries read by all globs and log directories together.
    pub max_walk_entries: u64,
    /// The whole collection (and never later than [`DEADLINE_GRACE`] after the job's deadline).
    pub deadline: Duration,
    /// Each command; then its process group is killed.
    pub command_timeout: Duration,
}

/// How long after the job's deadline a collection may still run: half the host's grace
/// (`DEADLINE_GRACE_SECS` = 60 s in the host's lifecycle), so `launch` still ends in time.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(30);

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_file_bytes: 8 << 20,
            max_members: 200,
            max_total_bytes: 64 << 20,
            max_unpacked_bytes: 256 << 20,
            max_walk_entries: 20_000,
            deadline: Duration::from_secs(60),
            command_timeout: Duration::from_secs(20),
        }
    }
}

/// One source of failure evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// A command's output (stdout and stderr) as `evidence/<member>`.
    Command { member: String, argv: Vec<String> },
    /// The files `glob` matches in `dir` as `evidence/<member>/<path>`. `dir` is absolute
    /// (then under [`ResultsConfig::evidence_root`]) or `~/…` (the dom0 user's home).
    Dir {
        member: String,
        dir: String,
        glob: String,
    },
}

impl Evidence {
    fn command(member: &str, argv: &[&str]) -> Self {
        Self::Command {
            member: member.into(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn dir(member: &str, dir: &str, glob: &str) -> Self {
        Self::Dir {
            member: member.into(),
            dir: dir.into(),
            glob: glob.into(),
        }
    }

    /// The member name (or directory) this source writes under `evidence/`.
    pub fn member(&self) -> &str {
        match self {
            Self::Command { member, .. } | Self::Dir { member, .. } => member,
        }
    }

    /// Checks a source from the configuration: a one-component member name, a valid glob, an
    /// absolute or `~/` directory, a non-empty command.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let member = self.member();
        if member.contains('/') {
            return Err(format!("evidence member {member:?} must be one name"));
        }
        validate_member_path(&format!("evidence/{member}"))
            .map_err(|why| format!("evidence member {member:?}: {why}"))?;
        match self {
            Self::Command { argv, .. } if argv.is_empty() => {
                Err(format!("evidence {member:?}: the command is empty"))
            }
            Self::Command { .. } => Ok(()),
            Self::Dir { dir, glob, .. } => {
                if !(dir.starts_with('/') || dir.starts_with("~/")) {
                    return Err(format!(
                        "evidence {member:?}: dir must be absolute or start with ~/"
                    ));
                }
                validate_glob(glob).map_err(|why| format!("evidence {member:?} glob: {why}"))
            }
        }
    }
}

/// `[results]` of dom0.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsConfig {
    pub caps: Caps,
    /// What is collected on failure, in order (the default list is contracts §11's).
    pub evidence: Vec<Evidence>,
    /// Prefixed to every absolute evidence directory: `/` on Qubes; a test world's root in the
    /// Qubes stand-in, whose dom0 is a directory.
    pub evidence_root: PathBuf,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            caps: Caps::default(),
            evidence: default_evidence(),
            evidence_root: PathBuf::from("/"),
        }
    }
}

/// Contracts §11's list: journal, `qvm-ls`, Xen console, Qubes (with Salt's `mgmt-*`), Salt,
/// `sdw-admin --apply`'s log and the updater's logs.
pub fn default_evidence() -> Vec<Evidence> {
    vec![
        Evidence::command("journal.txt", &["journalctl", "-b", "--no-pager"]),
        Evidence::command("qvm-ls.txt", &["qvm-ls", "--all"]),
        Evidence::dir("xen-console", "/var/log/xen/console", "*.log"),
        Evidence::dir("qubes", "/var/log/qubes", "*.log"),
        Evidence::dir("salt", "/var/log/salt", "*"),
        Evidence::dir("sdw-admin", "/tmp", "sdw-admin-apply.log"),
        Evidence::dir("sdw-updater", "~/.securedrop_updater/logs", "*.log"),
    ]
}

/// What one collection did, for `log.txt` and the tests.
#[derive(Debug, Clone)]
pub struct Summary {
    pub manifest: ResultsManifest,
    pub file_bytes: u64,
    pub took: Duration,
}

/// Everything a collection needs from the job.
pub struct Job<'a> {
    pub id: &'a JobId,
    pub spec: ResultsSpec,
    pub outcome: Outcome,
    /// The job's deadline (Unix seconds).
    pub deadline_unix: u64,
    /// Where the globs are relative to (`checkout_dir`).
    pub checkout: &'a Path,
    /// The job's directory: `results.tar.zst` goes here.
    pub job_dir: &'a Path,
    /// The commands' environment (the steps' base environment) and home (`~/` in evidence dirs).
    pub env: &'a [(String, String)],
    pub home: Option<&'a Path>,
    pub kill_grace: Duration,
}

/// Collects, writes the file and notes the result in `log`; never fails the job (not even if
/// the collection panicked: that is caught and noted, so the steps' result is still sent).
pub fn collect_and_log(config: &ResultsConfig, job: &Job<'_>, log: &mut JobLog) {
    let collected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| collect(config, job)))
        .unwrap_or_else(|_| {
            Err(Error::io(
                "collecting the results",
                std::io::Error::other("the collection panicked"),
            ))
        });
    match collected {
        Ok(s) => {
            let m = &s.manifest;
            let count = |k| m.of_kind(k).count();
            log.note(&format!(
                "results: {RESULTS_FILE}: {} JUnit file(s), {} evidence file(s), {} artifact(s); \
                 {} skipped; {} in {:.1} s",
                count(EntryKind::Junit),
                count(EntryKind::Evidence),
                count(EntryKind::Artifact),
                m.skipped.len() as u64 + m.skipped_more,
                human(s.file_bytes),
                s.took.as_secs_f64()
            ));
            if count(EntryKind::Junit) == 0 {
                log.note(&format!(
                    "results: no JUnit file matched {} in {}",
                    job.spec
                        .junit
                        .iter()
                        .map(|g| format!("{g:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    job.checkout.display()
                ));
            }
            for skip in m.skipped.iter().take(MAX_SKIPPED_LOGGED) {
                log.note(&format!(
                    "results: skipped {}: {}",
                    skip.source, skip.reason
                ));
            }
            let more = (m.skipped.len().saturating_sub(MAX_SKIPPED_LOGGED)) as u64 + m.skipped_more;
            if more > 0 {
                log.note(&format!(
                    "results: … and {more} more skipped (listed in the manifest)"
                ));
            }
        }
        Err(e) => {
            tracing::error!("collecting the results: {e}");
            log.note(&format!(
                "results: no {RESULTS_FILE}: {e} (the job's outcome is unchanged)"
            ));
        }
    }
}

/// Collects into `<job dir>/results.tar.zst`.
pub fn collect(config: &ResultsConfig, job: &Job<'_>) -> Result<Summary> {
    let started = Instant::now();
    let caps = &config.caps;
    let deadline = collection_deadline(caps.deadline, job.deadline_unix);
    let data_path = job.job_dir.join("results.data.part");
    let part_path = job.job_dir.join(format!("{RESULTS_FILE}.part"));
    let data_file = create_exclusive(&data_path)?;
    let result = (|| {
        // The manifest's own frame is small: bounded by the entries and skipped caps.
        let reserve = (2u64 << 20).min(caps.max_total_bytes / 4);
        let mut c = Collector {
            caps,
            deadline,
            budget: caps.max_total_bytes.saturating_sub(reserve),
            walked: 0,
            walk_capped: false,
            entries: Vec::new(),
            skipped: Vec::new(),
            skipped_more: 0,
            names: HashSet::new(),
            reasons: Default::default(),
            seen: HashSet::new(),
            unpacked: 0,
            junit_k: 0,
            target: None,
            tar: TarZst::new(data_file)
                .map_err(|e| Error::io("starting the results archive", e))?,
            mtime: unix_now(),
        };
        c.junit(job);
        let evidence = job.outcome != Outcome::Success;
        if evidence {
            c.evidence(config, job);
            c.artifacts(job);
        }
        let Collector {
            entries,
            skipped,
            skipped_more,
            tar,
            mtime,
            ..
        } = c;
        let mut data = tar
            .finish(true)
            .map_err(|e| Error::io("finishing the results archive", e))?;
        let manifest = ResultsManifest {
            version: RESULTS_VERSION,
            job: job.id.clone(),
            outcome: job.outcome,
            evidence,
            took_ms: started.elapsed().as_millis() as u64,
            entries,
            skipped,
            skipped_more,
        };
        let json = manifest.to_json();
        let mut head = TarZst::new(create_exclusive(&part_path)?)
            .map_err(|e| Error::io("starting the results file", e))?;
        head.append(MANIFEST, json.as_bytes(), mtime)
            .map_err(|e| Error::io("writing the results manifest", e))?;
        let mut out = head
            .finish(false)
            .map_err(|e| Error::io("writing the results manifest", e))?;
        data.seek(SeekFrom::Start(0))
            .and_then(|_| std::io::copy(&mut data, &mut out))
            .and_then(|_| out.sync_all())
            .map_err(|e| Error::io("writing the results file", e))?;
        let file_bytes = out
            .metadata()
            .map_err(|e| Error::io("writing the results file", e))?
            .len();
        if file_bytes > caps.max_total_bytes {
            return Err(Error::io(
                "writing the results file",
                std::io::Error::other(format!(
                    "{} exceeds the cap of {}",
                    human(file_bytes),
                    human(caps.max_total_bytes)
                )),
            ));
        }
        std::fs::rename(&part_path, job.job_dir.join(RESULTS_FILE))
            .map_err(|e| Error::io(format!("renaming {}", part_path.display()), e))?;
        if let Ok(dir) = File::open(job.job_dir) {
            let _ = dir.sync_all();
        }
        Ok(Summary {
            manifest,
            file_bytes,
            took: started.elapsed(),
        })
    })();
    let _ = std::fs::remove_file(&data_path);
    if result.is_err() {
        let _ = std::fs::remove_file(&part_path);
    }
    result
}

/// The collection's end: its own deadline, but never later than [`DEADLINE_GRACE`] after the
/// job's.
fn collection_deadline(own: Duration, job_deadline_unix: u64) -> Instant {
    let now = Instant::now();
    let left_for_job = Duration::from_secs(job_deadline_unix)
        .saturating_add(DEADLINE_GRACE)
        .saturating_sub(Duration::from_secs(unix_now()));
    now + own.min(left_for_job).min(Duration::from_secs(86_400))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creates `path` exclusively (mode 0600, not through a symlink). Something already there (the
/// steps can write to the job's directory) is removed first, once: unlinking a symlink never
/// touches its target.
fn create_exclusive(path: &Path) -> Result<File> {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags_nofollow()
            .open(path)
    };
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("removing a stale {}", path.display()), e))?;
            open().map_err(|e| Error::io(format!("creating {}", path.display()), e))
        }
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
    }
}

/// Counts the bytes that reach the file.
struct Counting {
    file: File,
    written: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A ustar writer into one zstd frame, flushed after each member so [`TarZst::written`] is the
/// compressed size so far.
struct TarZst {
    enc: zstd::stream::write::Encoder<'static, Counting>,
}

impl TarZst {
    fn new(file: File) -> std::io::Result<Self> {
        let mut enc = zstd::stream::write::Encoder::new(Counting { file, written: 0 }, ZSTD_LEVEL)?;
        enc.window_log(WINDOW_LOG)?;
        enc.include_checksum(true)?;
        Ok(Self { enc })
    }

    fn written(&self) -> u64 {
        self.enc.get_ref().written
    }

    fn append(&mut self, name: &str, data: &[u8], mtime: u64) -> std::io::Result<()> {
        self.enc
            .write_all(&ustar_header(name, data.len() as u64, mtime)?)?;
        self.enc.write_all(data)?;
        let pad = (512 - data.len() % 512) % 512;
        self.enc.write_all(&[0u8; 512][..pad])?;
        self.enc.flush()
    }

    /// Ends the frame (with the tar end-of-archive blocks if `end`); returns the file.
    fn finish(mut self, end: bool) -> std::io::Result<File> {
        if end {
            self.enc.write_all(&[0u8; 1024])?;
        }
        Ok(self.enc.finish()?.file)
    }
}

/// A ustar header for a regular file: mode 0644, uid/gid 0, the name split into prefix and
/// name at a `/` when longer than 100 bytes.
fn ustar_header(name: &str, size: u64, mtime: u64) -> std::io::Result<[u8; 512]> {
    let bad = || std::io::Error::other(format!("member name {name:?} does not fit ustar"));
    let bytes = name.as_bytes();
    let (prefix, base) = if bytes.len() <= 100 {
        (&b""[..], bytes)
    } else {
        let cut = bytes
            .iter()
            .enumerate()
            .filter(|(i, &b)| b == b'/' && *i <= 155 && bytes.len() - i - 1 <= 100)
            .map(|(i, _)| i)
            .next()
            .ok_or_else(bad)?;
        (&bytes[..cut], &bytes[cut + 1..])
    };
    let mut h = [0u8; 512];
    h[..base.len()].copy_from_slice(base);
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}", width = len - 1);
        h[at..at + len - 1].copy_from_slice(&s.as_bytes()[s.len() - (len - 1)..]);
    };
    if size >= 1 << 33 {
        return Err(bad());
    }
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, mtime.min((1 << 33) - 1));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// Keeps the last `cap` bytes of a command's output, line by line.
struct Tail {
    lines: std::collections::VecDeque<String>,
    bytes: u64,
    cap: u64,
    cut: bool,
}

impl Tail {
    fn push(&mut self, line: &str) {
        self.lines.push_back(format!("{line}\n"));
        self.bytes += line.len() as u64 + 1;
        while self.bytes > self.cap {
            match self.lines.pop_front() {
                Some(l) => {
                    self.bytes -= l.len() as u64;
                    self.cut = true;
                }
                None => break,
            }
        }
    }
}

/// How a file is cut at the cap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Head,
    Tail,
}

/// Where found files go.
#[derive(Clone, Copy)]
enum Target<'a> {
    Junit,
    Artifact,
    Evidence(&'a str),
}

impl Target<'_> {
    fn kind(self) -> EntryKind {
        match self {
            Self::Junit => EntryKind::Junit,
            Self::Artifact => EntryKind::Artifact,
            Self::Evidence(_) => EntryKind::Evidence,
        }
    }
    fn keep(self) -> Keep {
        match self {
            Self::Evidence(_) => Keep::Tail,
            _ => Keep::Head,
        }
    }
}

/// One component of a glob.
enum Part<'a> {
    Literal(&'a str),
    Pattern(&'a str),
    AnyDirs,
}

fn parts(glob: &str) -> Vec<Part<'_>> {
    glob.split('/')
        .map(|p| match p {
            "**" => Part::AnyDirs,
            p if p.contains(['*', '?']) => Part::Pattern(p),
            p => Part::Literal(p),
        })
        .collect()
}

/// `*` any run, `?` one character; neither matches a leading `.` unless the pattern has one.
pub fn component_matches(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative wildcard matching with one backtrack point (linear in practice).
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// A member-name component for an untrusted file name: bytes outside `[A-Za-z0-9._+-]` become
/// `_`, `.`/`..` become `_`, cut to the component limit.
fn safe_component(name: &[u8]) -> String {
    let mut s: String = name
        .iter()
        .take(MAX_MEMBER_COMPONENT)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+') {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        s = "_".into();
    }
    s
}

struct Collector<'a> {
    caps: &'a Caps,
    deadline: Instant,
    /// For the members: the cap less the manifest's reserve.
    budget: u64,
    walked: u64,
    walk_capped: bool,
    entries: Vec<ResultsEntry>,
    skipped: Vec<Skipped>,
    skipped_more: u64,
    names: HashSet<String>,
    /// How often each skip reason was given.
    reasons: std::collections::HashMap<String, usize>,
    /// (device, inode) of every file taken: a file matched twice (or hard-linked) goes in once.
    seen: HashSet<(u64, u64)>,
    unpacked: u64,
    junit_k: usize,
    /// The kind being walked for (the JUnit cap applies to JUnit globs).
    target: Option<EntryKind>,
    tar: TarZst,
    mtime: u64,
}

impl Collector<'_> {
    fn skip(&mut self, source: &str, reason: &str) {
        let same = self.reasons.entry(reason.to_owned()).or_insert(0);
        *same += 1;
        if self.skipped.len() < MAX_SKIPPED_WRITTEN && *same <= MAX_SKIPPED_PER_REASON {
            self.skipped.push(Skipped::new(source, reason));
        } else {
            self.skipped_more += 1;
        }
    }

    fn late(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn late_reason(&self) -> String {
        format!(
            "the collection's deadline ({} s) was reached",
            self.caps.deadline.as_secs()
        )
    }

    /// Why a member cannot be added now, if so (checked before reading). JUnit files take at
    /// most half of the members, so a flood of them leaves room for the evidence.
    fn full(&self) -> Option<String> {
        if self.target == Some(EntryKind::Junit) && self.junit_k >= self.caps.max_members / 2 {
            return Some(format!(
                "the cap of {} JUnit files (half the members) was reached",
                self.caps.max_members / 2
            ));
        }
        if self.entries.len() >= self.caps.max_members {
            return Some(format!(
                "the cap of {} members was reached",
                self.caps.max_members
            ));
        }
        if self.late() {
            return Some(self.late_reason());
        }
        None
    }

    /// Adds a member; `false` (and a skipped entry) when it does not fit.
    fn add(&mut self, kind: EntryKind, member: String, source: &str, data: &[u8], truncated: bool) {
        if let Some(why) = self.full() {
            return self.skip(source, &why);
        }
        let len = data.len() as u64;
        if self.unpacked + len > self.caps.max_unpacked_bytes {
            return self.skip(
                source,
                &format!(
                    "the cap of {} unpacked was reached",
                    human(self.caps.max_unpacked_bytes)
                ),
            );
        }
        // Worst case: the member does not compress at all (plus its header and padding).
        if self.tar.written() + len + 2048 > self.budget {
            return self.skip(
                source,
                &format!(
                    "the results file's cap of {} was reached",
                    human(self.caps.max_total_bytes)
                ),
            );
        }
        let member = self.unique(member);
        if let Err(e) = self.tar.append(&member, data, self.mtime) {
            return self.skip(source, &format!("writing it failed: {e}"));
        }
        self.unpacked += len;
        if kind == EntryKind::Junit {
            self.junit_k += 1;
        }
        self.entries.push(ResultsEntry {
            path: member,
            kind,
            source: sdci_protocol::event::sanitize_field(
                source,
                sdci_protocol::results::MAX_SOURCE,
            ),
            bytes: len,
            truncated,
        });
    }

    /// `member`, or `member.2`, `member.3`… if taken.
    fn unique(&mut self, member: String) -> String {
        let mut name = member.clone();
        let mut n = 1;
        while self.names.contains(&name) || validate_member_path(&name).is_err() {
            n += 1;
            name = format!("{member}.{n}");
            if validate_member_path(&name).is_err() {
                // Too long: a short name that keeps the top directory.
                let top = member.split('/').next().unwrap_or("artifacts");
                name = format!("{top}/{}-{n}", self.entries.len() + 1);
            }
        }
        self.names.insert(name.clone());
        name
    }

    fn junit(&mut self, job: &Job<'_>) {
        for glob in &job.spec.junit {
            if validate_glob(glob).is_err() {
                self.skip(glob, "not a valid glob (contracts §11)");
                continue;
            }
            self.glob_root(job.checkout, glob, Target::Junit);
        }
    }

    fn artifacts(&mut self, job: &Job<'_>) {
        for glob in &job.spec.artifacts {
            if validate_glob(glob).is_err() {
                self.skip(glob, "not a valid glob (contracts §11)");
                continue;
            }
            self.glob_root(job.checkout, glob, Target::Artifact);
        }
    }

    fn evidence(&mut self, config: &ResultsConfig, job: &Job<'_>) {
        for source in &config.evidence {
            match source {
                Evidence::Command { member, argv } => self.command(member, argv, job),
                Evidence::Dir { member, dir, glob } => {
                    let path = match dir.strip_prefix("~/") {
                        Some(rest) => match job.home {
                            Some(h) => h.join(rest),
                            None => continue,
                        },
                        None => config.evidence_root.join(dir.trim_start_matches('/')),
                    };
                    self.glob_root(&path, glob, Target::Evidence(member));
                }
            }
        }
    }

    fn command(&mut self, member: &str, argv: &[String], job: &Job<'_>) {
        let source = format!("$ {}", argv.join(" "));
        if let Some(why) = self.full() {
            return self.skip(&source, &why);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = self.caps.command_timeout.min(left);
        let grace = job.kill_grace.min(Duration::from_secs(2));
        let spec = steps::Spec {
            argv,
            env: job.env,
            cwd: Path::new("/"),
            stdin: None,
            timeout,
            grace,
            drain: Duration::from_secs(1),
        };
        let mut tail = Tail {
            lines: Default::default(),
            bytes: 0,
            cap: self.caps.max_file_bytes,
            cut: false,
        };
        match steps::run(&spec, |line| tail.push(line)) {
            Err(e) => self.skip(&source, &e.to_string()),
            Ok(f) => {
                let data: String = tail.lines.into_iter().collect();
                let truncated = tail.cut || f.timed_out;
                if f.timed_out {
                    self.skip(
                        &source,
                        &format!(
                            "timed out after {} s and was killed; its output so far is kept",
                            timeout.as_secs()
                        ),
                    );
                } else if f.status != 0 && data.is_empty() {
                    return self.skip(
                        &source,
                        &format!("exited with status {} without output", f.status),
                    );
                }
                self.add(
                    EntryKind::Evidence,
                    format!("evidence/{member}"),
                    &source,
                    data.as_bytes(),
                    truncated,
                );
            }
        }
    }

    /// Opens `root` (not through a symlink at its last component) and walks `glob` in it.
    fn glob_root(&mut self, root: &Path, glob: &str, target: Target<'_>) {
        let shown = root.join(glob).display().to_string();
        if let Some(why) = self.full() {
            return self.skip(&shown, &why);
        }
        let fd = match openat(
            AT_FDCWD,
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return,
            Err(Errno::ENOTDIR) if !is_symlink_path(root) => return,
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return self.skip(
                    &root.display().to_string(),
                    "a symlink where a directory should be (not followed)",
                )
            }
            Err(e) => return self.skip(&root.display().to_string(), &format!("cannot open: {e}")),
        };
        let parts = parts(glob);
        // Each glob has its own walk budget, so one huge directory starves no other source.
        self.walked = 0;
        self.walk_capped = false;
        self.target = Some(target.kind());
        self.walk(fd.as_fd(), root, &parts, PathBuf::new(), target);
        self.target = None;
    }

    /// Lists a directory's names, sorted, counting them against the walk cap.
    fn list(&mut self, dir: BorrowedFd<'_>, shown: &Path) -> Vec<OsString> {
        let fd = match openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                self.skip(&shown.display().to_string(), &format!("cannot list: {e}"));
                return Vec::new();
            }
        };
        let mut listing = match nix::dir::Dir::from_fd(fd) {
            Ok(d) => d,
            Err(e) => {
                self.skip(&shown.display().to_string(), &format!("cannot list: {e}"));
                return Vec::new();
            }
        };
        let mut names = Vec::new();
        for entry in listing.iter() {
            let Ok(entry) = entry else { break };
            let n = entry.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if self.walked >= self.caps.max_walk_entries {
                if !self.walk_capped {
                    self.walk_capped = true;
                    self.skip(
                        &shown.display().to_string(),
                        &format!(
                            "the walk cap of {} directory entries was reached here; the rest \
                             of this glob's walk is skipped",
                            self.caps.max_walk_entries
                        ),
                    );
                }
                break;
            }
            self.walked += 1;
            names.push(OsStr::from_bytes(n).to_owned());
            if self.late() {
                break;
            }
        }
        names.sort();
        names
    }

    fn walk(
        &mut self,
        dir: BorrowedFd<'_>,
        shown: &Path,
        parts: &[Part<'_>],
        rel: PathBuf,
        target: Target<'_>,
    ) {
        let Some((first, rest)) = parts.split_first() else {
            return;
        };
        if self.late() || self.walk_capped {
            return;
        }
        if rel.components().count() >= MAX_MEMBER_DEPTH {
            return self.skip(
                &shown.display().to_string(),
                "deeper than the results' depth limit",
            );
        }
        match first {
            Part::Literal(name) => {
                let name = OsStr::new(name);
                if rest.is_empty() {
                    self.file(dir, name, shown, &rel, target);
                } else {
                    self.descend(dir, name, shown, rest, &rel, target, false);
                }
            }
            Part::Pattern(pattern) => {
                for name in self.list(dir, shown) {
                    if let Some(why) = self.full() {
                        // One line for the rest of this directory, not one per file.
                        return self.skip(
                            &shown.join(pattern).display().to_string(),
                            &format!("{why}; the rest of this directory is skipped"),
                        );
                    }
                    let Some(text) = name.to_str() else {
                        // Not UTF-8: no glob of ours names it.
                        continue;
                    };
                    if !component_matches(pattern, text) {
                        continue;
                    }
                    if rest.is_empty() {
                        self.file(dir, &name, shown, &rel, target);
                    } else {
                        self.descend(dir, &name, shown, rest, &rel, target, true);
                    }
                }
            }
            Part::AnyDirs => {
                self.walk(dir, shown, rest, rel.clone(), target);
                for name in self.list(dir, shown) {
                    if name.as_bytes().starts_with(b".") {
                        continue;
                    }
                    self.descend(dir, &name, shown, parts, &rel, target, true);
                }
            }
        }
    }

    /// Walks `rest` in the subdirectory `name` of `dir` (never through a symlink; quietly not
    /// at all when `name` is no directory and `quiet_if_not_dir`).
    #[allow(clippy::too_many_arguments)]
    fn descend(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shown: &Path,
        rest: &[Part<'_>],
        rel: &Path,
        target: Target<'_>,
        quiet_if_not_dir: bool,
    ) {
        let child_shown = shown.join(name);
        match openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => self.walk(fd.as_fd(), &child_shown, rest, rel.join(name), target),
            Err(Errno::ENOENT) => {}
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) if quiet_if_not_dir => {}
            Err(Errno::ENOTDIR) if !is_symlink(dir, name) => {}
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => self.skip(
                &child_shown.display().to_string(),
                "a symlink where a directory should be (not followed)",
            ),
            Err(e) => self.skip(
                &child_shown.display().to_string(),
                &format!("cannot open: {e}"),
            ),
        }
    }

    /// Takes the regular file `name` in `dir`, read at most the per-file cap.
    fn file(&mut self, dir: BorrowedFd<'_>, name: &OsStr, shown: &Path, rel: &Path, t: Target<'_>) {
        let source = shown.join(name).display().to_string();
        let opened = match open_regular(dir, name) {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(why) => return self.skip(&source, &why),
        };
        let (file, st) = opened;
        if !self.seen.insert((st.st_dev, st.st_ino)) {
            return;
        }
        if let Some(why) = self.full() {
            return self.skip(&source, &why);
        }
        let (data, truncated, late) = read_capped(
            &file,
            st.st_size.max(0) as u64,
            self.caps.max_file_bytes,
            t.keep(),
            self.deadline,
        );
        let data = match data {
            Ok(d) => d,
            Err(e) => return self.skip(&source, &format!("cannot read: {e}")),
        };
        if late {
            self.skip(
                &source,
                &format!("{}: cut while reading", self.late_reason()),
            );
        }
        let member = match t {
            Target::Junit => format!("junit/{}.xml", self.junit_k + 1),
            Target::Artifact => member_path("artifacts", rel, name),
            Target::Evidence(m) => member_path(&format!("evidence/{m}"), rel, name),
        };
        self.add(t.kind(), member, &source, &data, truncated || late);
    }
}

/// Whether `name` in `dir` is a symlink (not followed).
fn is_symlink(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
        .unwrap_or(false)
}

fn is_symlink_path(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

/// `<top>/<rel>/<name>` with every component made safe, shortened to fit the member rules.
fn member_path(top: &str, rel: &Path, name: &OsStr) -> String {
    let mut parts: Vec<String> = rel.iter().map(|c| safe_component(c.as_bytes())).collect();
    parts.push(safe_component(name.as_bytes()));
    let mut path = format!("{top}/{}", parts.join("/"));
    let depth = top.split('/').count() + parts.len();
    if path.len() > MAX_MEMBER_PATH || depth > MAX_MEMBER_DEPTH {
        let last = parts.last().cloned().unwrap_or_default();
        let keep: String = last.chars().take(80).collect();
        path = format!("{top}/{keep}");
    }
    path
}

/// Opens `name` in `dir` for reading only if it is a regular file: first as `O_PATH` without
/// following a symlink (which opens no device and no FIFO), then, once it is known to be a
/// regular file, reopened for reading through `/proc/self/fd`. `Ok(None)`: it vanished.
fn open_regular(
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> std::result::Result<Option<(File, FileStat)>, String> {
    let path_fd = match openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    let st = fstat(path_fd.as_fd()).map_err(|e| format!("cannot stat: {e}"))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let what = match kind {
        SFlag::S_IFREG => None,
        SFlag::S_IFLNK => Some("a symlink (never followed)"),
        SFlag::S_IFIFO => Some("not a regular file (a FIFO)"),
        SFlag::S_IFDIR => Some("not a regular file (a directory)"),
        SFlag::S_IFSOCK => Some("not a regular file (a socket)"),
        SFlag::S_IFCHR | SFlag::S_IFBLK => Some("not a regular file (a device)"),
        _ => Some("not a regular file"),
    };
    if let Some(what) = what {
        return Err(what.into());
    }
    let proc_path = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd: OwnedFd = match nix::fcntl::open(proc_path.as_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            // No /proc: open by name without following, then check it is the same file.
            let fd = openat(dir, name, flags | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(|e| format!("cannot open: {e}"))?;
            let again = fstat(fd.as_fd()).map_err(|e| format!("cannot stat: {e}"))?;
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
                return Err("replaced while being opened".into());
            }
            fd
        }
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    Ok(Some((File::from(fd), st)))
}

/// Reads at most `cap` bytes: the first (`Head`) or, of the `size` bytes `fstat` saw, the last
/// (`Tail`). Returns the data, whether it was cut, and whether the deadline cut it.
fn read_capped(
    file: &File,
    size: u64,
    cap: u64,
    keep: Keep,
    deadline: Instant,
) -> (std::io::Result<Vec<u8>>, bool, bool) {
    let start = match keep {
        Keep::Tail if size > cap => size - cap,
        _ => 0,
    };
    let mut data = Vec::with_capacity(size.min(cap) as usize);
    let mut buf = vec![0u8; CHUNK];
    let mut at = start;
    let mut late = false;
    while (data.len() as u64) < cap {
        if Instant::now() >= deadline {
            late = true;
            break;
        }
        let want = CHUNK.min((cap - data.len() as u64) as usize);
        match file.read_at(&mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), false, false),
        }
    }
    let cut = start > 0 || late || {
        // At the cap: is there more (the file may also have grown since fstat)?
        (data.len() as u64) >= cap && {
            let mut one = [0u8; 1];
            matches!(file.read_at(&mut one, at), Ok(1))
        }
    };
    (Ok(data), cut, late)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_globs_match_like_the_shell_without_leading_dots() {
        assert!(component_matches("*.log", "guest-sd-app.log"));
        assert!(component_matches("guest-*.log", "guest-sd-app.log"));
        assert!(component_matches("?.txt", "a.txt"));
        assert!(!component_matches("?.txt", "ab.txt"));
        assert!(!component_matches("*.log", ".hidden.log"));
        assert!(component_matches(".*", ".hidden"));
        assert!(component_matches("*", "anything"));
        assert!(!component_matches("*.xml", "test-data.xml.bak"));
        assert!(component_matches("*a*b*c", "xxaxxbxxc"));
    }

    #[test]
    fn untrusted_names_become_safe_member_names() {
        assert_eq!(safe_component(b"guest-sd-app.log"), "guest-sd-app.log");
        assert_eq!(safe_component(b"a b\n\x1b[31m.log"), "a_b___31m.log");
        assert_eq!(safe_component(b".."), "_");
        assert_eq!(safe_component(&[b'x'; 300]).len(), 100);
        let long = Path::new(&"d/".repeat(30)).to_path_buf();
        let p = member_path("artifacts", &long, OsStr::new("f.log"));
        assert!(validate_member_path(&p).is_ok(), "{p}");
        assert_eq!(p, "artifacts/f.log");
    }

    #[test]
    fn ustar_headers_split_long_names_and_carry_a_valid_checksum() {
        let name = format!("artifacts/{}/{}", "a".repeat(90), "b".repeat(90));
        let h = ustar_header(&name, 10, 0).unwrap();
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        let stored = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u64::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(
            &h[345..345 + 100],
            format!("artifacts/{}", "a".repeat(90)).as_bytes()
        );
        assert!(ustar_header(&format!("x/{}", "c".repeat(120)), 1, 0).is_err());
    }

    #[test]
    fn the_defaults_are_contracts_section_11s() {
        let c = ResultsConfig::default();
        assert_eq!(c.caps.max_file_bytes, 8 << 20);
        assert_eq!(c.caps.max_members, 200);
        assert_eq!(c.caps.max_total_bytes, 64 << 20);
        assert_eq!(c.caps.deadline, Duration::from_secs(60));
        assert_eq!(c.caps.command_timeout, Duration::from_secs(20));
        for e in &c.evidence {
            e.validate().unwrap();
        }
        assert_eq!(c.evidence[0].member(), "journal.txt");
    }
}
