//! The hardened streaming unpacker: a zstd-compressed tar from the dev VM into a fresh directory.
//!
//! Rules (`research/qubes.md` §5.4), each enforced here and tested:
//! - Names are checked after PAX/GNU resolution ([`crate::tarstream`]): valid UTF-8, no control
//!   characters, not absolute, no `..`, no `.git` component (the contract says the archive has
//!   none; a `.git` in dom0 would hand the dev VM git's config, hooks and fsmonitor), at most
//!   [`Limits::max_path_bytes`] bytes and [`Limits::max_depth`] components, each at most 255
//!   bytes.
//! - Only regular files, directories and symlinks. Hard links, devices, FIFOs, contiguous and
//!   sparse files and unknown types are refused. So are setuid, setgid and sticky bits.
//! - Symlink targets must be relative, of the form `../`×k followed by names (no `..` after a
//!   name, no `.git`), with k at most the depth of the link's directory: every link, and so every
//!   chain of links, resolves inside the tree.
//! - Nothing is written through a symlink: every path component is opened relative to its parent
//!   with `O_NOFOLLOW`, files are created with `O_EXCL`, and a member below a symlink or a file is
//!   refused by name before any system call.
//! - Duplicate paths are refused (a directory may only be named again if it was created
//!   implicitly as a parent).
//! - Files get mode 0644, or 0755 when the owner-execute bit is set; directories 0755. Owners,
//!   times, xattrs and ACLs from the archive are ignored.
//! - Caps on compressed bytes, decompressed bytes, members, the zstd window, and a read timeout
//!   on the input. A truncated zstd or tar stream is an error.
//! - Every inode the unpack creates counts: files, symlinks and directories, *including the
//!   parent directories a member's name implies*, are counted against [`Limits::max_entries`]
//!   and each is charged one block of the destination's file system (file data rounded up to
//!   blocks) against the free space above [`Limits::min_free_bytes`]; inodes are charged against
//!   the free inodes above [`Limits::min_free_inodes`]. Free blocks and inodes are measured again
//!   (`fstatvfs`) every [`RECHECK_NODES`] inodes and every [`RECHECK_BYTES`] bytes written, so
//!   space taken by anything else meanwhile also stops the unpack.
//! - Time is bounded: [`PacedReader`] (the service's stdin) fails when no byte arrives for
//!   [`Limits::read_timeout`], when fewer than [`Limits::min_rate_bytes_per_sec`] on average
//!   arrived after [`Limits::rate_grace`], or at the job's deadline; [`unpack_until`] also stops
//!   at the deadline between members.
//! - The destination is created by [`unpack`] itself and must not exist; on any error it is
//!   removed again, so a refused archive leaves nothing behind.
//!
//! Memory is constant: data is streamed through one 256 KiB buffer; the only state that grows is
//! the set of names seen, bounded by [`Limits::max_entries`].
//!
//! System calls go through `nix` (`openat`/`mkdirat`/`symlinkat` relative to directory fds,
//! `fstatvfs`, `poll`, `read`); there is no `unsafe` here.

use crate::error::{shown, Error, Result};
use crate::tarstream::{Kind, Member, TarError, TarStream};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::symlinkat;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Free blocks and inodes are measured again after this many inodes were created…
pub const RECHECK_NODES: u64 = 512;
/// …and after this many bytes of file data were written.
pub const RECHECK_BYTES: u64 = 16 << 20;

/// Caps on what an archive may make dom0 do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from the input (the compressed stream).
    pub max_compressed_bytes: u64,
    /// Bytes after decompression (the tar stream: headers, data, padding).
    pub max_unpacked_bytes: u64,
    /// Members in the archive, and inodes the unpack creates: files, symlinks and directories,
    /// implicit parent directories included. Each cap is this number.
    pub max_entries: u64,
    /// Bytes in a member's normalized path.
    pub max_path_bytes: usize,
    /// Components in a member's path.
    pub max_depth: usize,
    /// Largest zstd window accepted, as a power of two (24 = 16 MiB).
    pub zstd_window_log_max: u32,
    /// The input may be silent at most this long (enforced by [`PacedReader`]).
    pub read_timeout: Duration,
    /// Unpacking stops rather than leave less than this free on the destination's file system
    /// (every inode is charged a block, file data is rounded up to blocks).
    pub min_free_bytes: u64,
    /// Unpacking stops rather than leave fewer free inodes than this on the destination's file
    /// system (ignored on file systems without an inode count, such as btrfs).
    pub min_free_inodes: u64,
    /// After [`Self::rate_grace`], the compressed stream must have arrived at this average rate
    /// at least, counted from the start (enforced by [`PacedReader`]); 0 turns the check off.
    pub min_rate_bytes_per_sec: u64,
    /// How long the sender may take before [`Self::min_rate_bytes_per_sec`] applies.
    pub rate_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 256 << 20,
            max_unpacked_bytes: 512 << 20,
            max_entries: 20_000,
            max_path_bytes: 1024,
            max_depth: 32,
            zstd_window_log_max: 24,
            read_timeout: Duration::from_secs(120),
            min_free_bytes: 1 << 30,
            min_free_inodes: 50_000,
            min_rate_bytes_per_sec: 256 << 10,
            rate_grace: Duration::from_secs(30),
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub files: u64,
    /// Directories created, implicit parents included.
    pub dirs: u64,
    pub symlinks: u64,
    pub executables: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Compressed bytes read.
    pub compressed_bytes: u64,
}

/// A limit that was reached, carried inside an `io::Error` through the decoder; the message is
/// the refusal's reason.
#[derive(Debug)]
struct CapReached(String);

impl std::fmt::Display for CapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CapReached {}

fn cap_reached(why: String) -> io::Error {
    io::Error::other(CapReached(why))
}

/// Counts bytes and fails once more than `cap` have passed.
struct Capped<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
    cap: u64,
    what: &'static str,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.count.get() + n as u64;
        self.count.set(total);
        if total > self.cap {
            return Err(cap_reached(format!(
                "the {} exceeds the {} cap",
                self.what,
                human(self.cap)
            )));
        }
        Ok(n)
    }
}

/// A reader over a file descriptor (the service's stdin) that bounds time three ways: it fails
/// with `TimedOut` when no byte arrives for `read_timeout`, and with a refusal when the average
/// rate since the first read falls below `min_rate_bytes_per_sec` once `rate_grace` has passed,
/// or when `deadline` passes. It never waits past the earliest of the three.
pub struct PacedReader<F: AsFd> {
    fd: F,
    read_timeout: Duration,
    min_rate: u64,
    grace: Duration,
    deadline: Option<Instant>,
    start: Option<Instant>,
    count: u64,
}

impl<F: AsFd> PacedReader<F> {
    pub fn new(fd: F, limits: &Limits, deadline: Option<Instant>) -> Self {
        Self {
            fd,
            read_timeout: limits.read_timeout,
            min_rate: limits.min_rate_bytes_per_sec,
            grace: limits.rate_grace,
            deadline,
            start: None,
            count: 0,
        }
    }

    /// The instant by which the byte after `count` must have arrived to keep the average rate.
    fn rate_cut(&self, start: Instant) -> Option<Instant> {
        if self.min_rate == 0 {
            return None;
        }
        let secs = self.count as f64 / self.min_rate as f64;
        // Far beyond any real stream; keeps the arithmetic in range.
        let allowed = self.grace + Duration::from_secs_f64(secs.min(1e9));
        start.checked_add(allowed)
    }

    fn too_slow(&self, start: Instant) -> io::Error {
        cap_reached(format!(
            "the dev VM sends too slowly: {} in {} s, below the minimum average of {}/s after a \
             {} s grace (limits.min_rate_bytes_per_sec)",
            human(self.count),
            start.elapsed().as_secs(),
            human(self.min_rate),
            self.grace.as_secs()
        ))
    }

    fn deadline_passed(&self) -> io::Error {
        cap_reached(format!(
            "the job's deadline passed while the tree was being received ({} so far); nothing \
             was moved into place",
            human(self.count)
        ))
    }
}

impl<F: AsFd> Read for PacedReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let start = *self.start.get_or_insert_with(Instant::now);
        // Fixed before the loop, so an interrupted poll does not restart the idle window.
        let idle_until = Instant::now() + self.read_timeout.min(Duration::from_secs(365 * 86_400));
        let rate_cut = self.rate_cut(start);
        loop {
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                return Err(self.deadline_passed());
            }
            if rate_cut.is_some_and(|c| now >= c) {
                return Err(self.too_slow(start));
            }
            let wake = [Some(idle_until), rate_cut, self.deadline]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(idle_until);
            let wait = wake.saturating_duration_since(now);
            // Rounded up, so a wait shorter than a millisecond is not a busy loop.
            let ms = wait.as_millis() + u128::from(!wait.subsec_nanos().is_multiple_of(1_000_000));
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) if Instant::now() >= idle_until => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data for {} s", self.read_timeout.as_secs()),
                    ))
                }
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => break,
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            match nix::unistd::read(self.fd.as_fd(), &mut *buf) {
                Ok(n) => {
                    self.count += n as u64;
                    return Ok(n);
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Unpacks a zstd-compressed tar from `input` into `dest`, which this function creates (its
/// parent must exist; `dest` must not). On error `dest` is removed and nothing else was touched.
pub fn unpack<R: Read>(input: R, dest: &Path, limits: &Limits) -> Result<Summary> {
    unpack_until(input, dest, limits, None)
}

/// [`unpack`] that also stops, and removes `dest`, once `deadline` has passed.
pub fn unpack_until<R: Read>(
    input: R,
    dest: &Path,
    limits: &Limits,
    deadline: Option<Instant>,
) -> Result<Summary> {
    if let Err(e) = mkdirat(AT_FDCWD, dest, Mode::from_bits_truncate(0o700)) {
        return Err(Error::io(
            format!("creating the fresh directory {}", dest.display()),
            e.into(),
        ));
    }
    let result = unpack_into(input, dest, limits, deadline);
    if result.is_err() {
        // Best effort: the error that matters is the refusal.
        let _ = crate::tree::remove_tree(dest);
    }
    result
}

fn unpack_into<R: Read>(
    input: R,
    dest: &Path,
    limits: &Limits,
    deadline: Option<Instant>,
) -> Result<Summary> {
    let root = openat(
        AT_FDCWD,
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening {}", dest.display()), e.into()))?;
    let budget = Budget::measure(root.as_fd(), limits)?;
    let compressed = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = Capped {
        inner: input,
        count: compressed.clone(),
        cap: limits.max_compressed_bytes,
        what: "compressed stream",
    };
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(128 * 1024, counted))
            .map_err(|e| Error::io("starting the zstd decoder", e))?;
    decoder
        .window_log_max(limits.zstd_window_log_max)
        .map_err(|e| Error::io("configuring the zstd decoder", e))?;
    let unpacked = Capped {
        inner: decoder,
        count: std::rc::Rc::new(std::cell::Cell::new(0)),
        cap: limits.max_unpacked_bytes,
        what: "decompressed stream",
    };
    let mut tar = TarStream::new(unpacked);
    let mut ex = Extractor {
        root,
        limits,
        budget,
        seen: HashMap::new(),
        parent: None,
        summary: Summary::default(),
        members: 0,
        buf: vec![0u8; 256 * 1024],
    };
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::archive(
                None,
                "the job's deadline passed while the tree was being unpacked; nothing was moved \
                 into place",
            ));
        }
        let member = match tar.next_entry() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => return Err(tar_error(e, limits)),
        };
        ex.member(&mut tar, member)?;
    }
    fchmod(ex.root.as_fd(), Mode::from_bits_truncate(0o755))
        .map_err(|e| Error::io(format!("setting the mode of {}", dest.display()), e.into()))?;
    ex.summary.compressed_bytes = compressed.get();
    Ok(ex.summary)
}

fn tar_error(e: TarError, limits: &Limits) -> Error {
    match e {
        TarError::Format(why) => Error::archive(None, why),
        TarError::BadName { lossy, why } => Error::archive(Some(&lossy), why),
        TarError::Io(e) => io_error(e, limits),
    }
}

fn io_error(e: io::Error, limits: &Limits) -> Error {
    if let Some(cap) = e.get_ref().and_then(|i| i.downcast_ref::<CapReached>()) {
        return Error::archive(None, cap.0.clone());
    }
    match e.kind() {
        io::ErrorKind::TimedOut => Error::archive(
            None,
            format!(
                "the dev VM sent no data for {} s (read timeout)",
                limits.read_timeout.as_secs()
            ),
        ),
        io::ErrorKind::UnexpectedEof => Error::archive(
            None,
            "the compressed stream ends inside a zstd frame (truncated stream)",
        ),
        _ if e.to_string().contains("too much memory") => Error::archive(
            None,
            format!(
                "the zstd stream needs a window above 2^{} bytes (limits.zstd_window_log_max); \
                 compress with a smaller window",
                limits.zstd_window_log_max
            ),
        ),
        _ => Error::archive(None, format!("reading or decompressing the stream: {e}")),
    }
}

/// Free space and inodes on the destination's file system, as `fstatvfs` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsFree {
    /// Bytes available to an unprivileged user.
    pub bytes: u64,
    /// Inodes available to an unprivileged user; `None` when the file system has no inode count.
    pub inodes: Option<u64>,
    /// The unit of allocation charged per inode and to round file data up to.
    pub block: u64,
}

// The field types differ between targets (u32 or u64): `u64::from` keeps every target exact.
#[allow(clippy::useless_conversion)]
fn fs_free(fd: BorrowedFd<'_>) -> Option<FsFree> {
    let st = nix::sys::statvfs::fstatvfs(fd).ok()?;
    let frsize = u64::from(st.fragment_size()).max(1);
    Some(FsFree {
        bytes: u64::from(st.blocks_available()).saturating_mul(frsize),
        inodes: (st.files() > 0).then(|| u64::from(st.files_available())),
        block: u64::from(st.block_size()).clamp(512, 1 << 20),
    })
}

/// Refuses when `free` is below either reserve; the message says which and what to do.
pub fn check_reserve(free: &FsFree, limits: &Limits) -> std::result::Result<(), String> {
    if free.bytes < limits.min_free_bytes {
        return Err(format!(
            "only {} free on the checkout's file system, below the free-space reserve of {} \
             (limits.min_free_bytes): free space in dom0 or lower the reserve",
            human(free.bytes),
            human(limits.min_free_bytes)
        ));
    }
    if let Some(inodes) = free.inodes.filter(|&i| i < limits.min_free_inodes) {
        return Err(format!(
            "only {inodes} free inodes on the checkout's file system, below the reserve of {} \
             (limits.min_free_inodes): remove files in dom0 or lower the reserve",
            limits.min_free_inodes
        ));
    }
    Ok(())
}

/// What the unpack may still take from the file system, and when to measure it again.
struct Budget {
    /// Bytes that may still be charged (free space above the reserve at the last measurement).
    bytes: u64,
    /// Inodes that may still be created; `u64::MAX` without an inode count.
    inodes: u64,
    block: u64,
    nodes_since_check: u64,
    bytes_since_check: u64,
}

impl Budget {
    fn measure(fd: BorrowedFd<'_>, limits: &Limits) -> Result<Self> {
        let Some(free) = fs_free(fd) else {
            // No statvfs (unusual file systems): only the other caps apply.
            return Ok(Self {
                bytes: u64::MAX,
                inodes: u64::MAX,
                block: 4096,
                nodes_since_check: 0,
                bytes_since_check: 0,
            });
        };
        check_reserve(&free, limits)
            .map_err(|why| Error::archive(None, format!("{why}; not unpacking")))?;
        Ok(Self {
            bytes: free.bytes - limits.min_free_bytes,
            inodes: free.inodes.map_or(u64::MAX, |i| i - limits.min_free_inodes),
            block: free.block,
            nodes_since_check: 0,
            bytes_since_check: 0,
        })
    }

    fn round_up(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.block).saturating_mul(self.block)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir { explicit: bool },
    File,
    Symlink,
}

struct Extractor<'l> {
    root: OwnedFd,
    limits: &'l Limits,
    budget: Budget,
    seen: HashMap<String, Seen>,
    /// The most recently used parent directory, as (normalized path, fd).
    parent: Option<(String, OwnedFd)>,
    summary: Summary,
    members: u64,
    buf: Vec<u8>,
}

impl Extractor<'_> {
    fn nodes(&self) -> u64 {
        self.summary.files + self.summary.dirs + self.summary.symlinks
    }

    /// Charges one more inode (and `data` bytes of file data) before it is created; refuses when
    /// it would exceed [`Limits::max_entries`], the free space or the free inodes.
    fn charge(&mut self, data: u64) -> std::result::Result<(), String> {
        if self.nodes() >= self.limits.max_entries {
            return Err(format!(
                "more than {} entries: files, directories and symlinks, parent directories \
                 implied by names included (limits.max_entries)",
                self.limits.max_entries
            ));
        }
        if self.budget.inodes == 0 {
            return Err(format!(
                "the tree needs more inodes than are free above the reserve of {} \
                 (limits.min_free_inodes) after {} entries",
                self.limits.min_free_inodes,
                self.nodes()
            ));
        }
        let cost = self.budget.block.saturating_add(self.budget.round_up(data));
        if cost > self.budget.bytes {
            return Err(format!(
                "the tree does not fit above the free-space reserve of {} (limits.min_free_bytes): \
                 {} more needed, {} left after {} entries and {} of data",
                human(self.limits.min_free_bytes),
                human(cost),
                human(self.budget.bytes),
                self.nodes(),
                human(self.summary.bytes)
            ));
        }
        self.budget.bytes -= cost;
        self.budget.inodes -= 1;
        self.budget.nodes_since_check += 1;
        self.recheck_if_due()
    }

    /// Measures free blocks and inodes again when [`RECHECK_NODES`] inodes or [`RECHECK_BYTES`]
    /// bytes were charged since the last measurement, and lowers the budget to what is really
    /// left: space that something else took meanwhile counts too.
    fn recheck_if_due(&mut self) -> std::result::Result<(), String> {
        if self.budget.nodes_since_check < RECHECK_NODES
            && self.budget.bytes_since_check < RECHECK_BYTES
        {
            return Ok(());
        }
        self.budget.nodes_since_check = 0;
        self.budget.bytes_since_check = 0;
        let Some(free) = fs_free(self.root.as_fd()) else {
            return Ok(());
        };
        check_reserve(&free, self.limits)
            .map_err(|why| format!("{why} (measured while unpacking)"))?;
        self.budget.bytes = self
            .budget
            .bytes
            .min(free.bytes - self.limits.min_free_bytes);
        if let Some(i) = free.inodes {
            self.budget.inodes = self.budget.inodes.min(i - self.limits.min_free_inodes);
        }
        Ok(())
    }

    fn member<R: Read>(&mut self, tar: &mut TarStream<R>, m: Member) -> Result<()> {
        self.members += 1;
        if self.members > self.limits.max_entries {
            return Err(Error::archive(
                None,
                format!(
                    "more than {} entries in the archive (limits.max_entries)",
                    self.limits.max_entries
                ),
            ));
        }
        match m.kind {
            Kind::File | Kind::Dir | Kind::Symlink => {}
            Kind::HardLink => {
                return refuse(
                    &m,
                    format!(
                        "hard links are not allowed (link to {})",
                        shown(m.link.as_deref().unwrap_or(""))
                    ),
                )
            }
            Kind::CharDevice | Kind::BlockDevice => {
                return refuse(&m, "device nodes are not allowed".into())
            }
            Kind::Fifo => return refuse(&m, "FIFOs are not allowed".into()),
            Kind::Other(b'7') => return refuse(&m, "contiguous files are not allowed".into()),
            Kind::Other(b'S') => return refuse(&m, "sparse files are not allowed".into()),
            Kind::Other(t) => {
                return refuse(
                    &m,
                    format!(
                        "member type {} is not allowed",
                        shown(&char::from(t).to_string())
                    ),
                )
            }
        }
        if m.mode & 0o7000 != 0 {
            return refuse(
                &m,
                format!(
                    "setuid, setgid and sticky bits are not allowed (mode {:04o})",
                    m.mode
                ),
            );
        }
        let comps = normalize(&m.path, self.limits).or_else(|why| refuse(&m, why))?;
        let Some((name, dirs)) = comps.split_last() else {
            return match m.kind {
                Kind::Dir => Ok(()), // "./": the root itself
                _ => refuse(&m, "empty name".into()),
            };
        };
        if m.kind != Kind::File && m.size != 0 {
            return refuse(
                &m,
                format!("a {:?} member carries {} bytes of data", m.kind, m.size),
            );
        }
        let mut prefix = String::new();
        for d in dirs {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(d);
            match self.seen.get(&prefix) {
                Some(Seen::File) => {
                    return refuse(
                        &m,
                        format!("it lies below {}, which is a file", shown(&prefix)),
                    )
                }
                Some(Seen::Symlink) => {
                    return refuse(
                        &m,
                        format!("it would be written through the symlink {}", shown(&prefix)),
                    )
                }
                _ => {}
            }
        }
        let key = comps.join("/");
        match self.seen.get(&key) {
            None => {}
            Some(Seen::Dir { explicit: false }) if m.kind == Kind::Dir => {
                self.seen.insert(key, Seen::Dir { explicit: true });
                return Ok(());
            }
            Some(_) => return refuse(&m, "duplicate entry (the path appears twice)".into()),
        }
        self.open_parent(dirs)
            .map_err(|e| Error::archive(Some(&m.path), e))?;
        // Checked before the inode is charged, so the refusal names the rule that was broken.
        if m.kind == Kind::Symlink {
            let target = m.link.as_deref().unwrap_or("");
            check_link_target(dirs.len(), target, self.limits)
                .or_else(|why| refuse(&m, format!("symlink to {}: {why}", shown(target))))?;
        }
        if m.kind == Kind::File {
            let room = self
                .limits
                .max_unpacked_bytes
                .saturating_sub(self.summary.bytes);
            if m.size > room {
                return refuse(
                    &m,
                    format!(
                        "a file of {} does not fit: {} of the unpacked-size cap remain",
                        human(m.size),
                        human(room)
                    ),
                );
            }
        }
        let data = if m.kind == Kind::File { m.size } else { 0 };
        self.charge(data).or_else(|why| refuse(&m, why))?;
        let parent = match &self.parent {
            Some((_, fd)) => fd.as_fd(),
            None => self.root.as_fd(),
        };
        match m.kind {
            Kind::Dir => {
                mkdirat(parent, *name, Mode::from_bits_truncate(0o755))
                    .or_else(|e| refuse(&m, format!("cannot create the directory: {e}")))?;
                self.seen.insert(key, Seen::Dir { explicit: true });
                self.summary.dirs += 1;
            }
            Kind::Symlink => {
                let target = m.link.as_deref().unwrap_or("");
                symlinkat(target, parent, *name)
                    .or_else(|e| refuse(&m, format!("cannot create the symlink: {e}")))?;
                self.seen.insert(key, Seen::Symlink);
                self.summary.symlinks += 1;
            }
            _ => {
                let fd = openat(
                    parent,
                    *name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .or_else(|e| refuse(&m, format!("cannot create the file: {e}")))?;
                let mut file = std::fs::File::from(fd);
                // Counted before the data arrives, so the entry shows up in `nodes()` for the
                // rest of this member.
                self.seen.insert(key, Seen::File);
                self.summary.files += 1;
                loop {
                    let n = tar
                        .read_data(&mut self.buf)
                        .map_err(|e| tar_error(e, self.limits))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buf[..n])
                        .or_else(|e| refuse(&m, format!("writing: {e}")))?;
                    self.budget.bytes_since_check += n as u64;
                }
                let exec = m.mode & 0o100 != 0;
                let mode = if exec { 0o755 } else { 0o644 };
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .or_else(|e| refuse(&m, format!("setting the mode: {e}")))?;
                self.summary.executables += u64::from(exec);
                self.summary.bytes += m.size;
                self.recheck_if_due().or_else(|why| refuse(&m, why))?;
            }
        }
        Ok(())
    }

    /// Makes `self.parent` the directory `dirs` (creating missing ones, each charged as an
    /// inode), opening each component with `O_NOFOLLOW` from the root.
    fn open_parent(&mut self, dirs: &[&str]) -> std::result::Result<(), String> {
        let key = dirs.join("/");
        if dirs.is_empty() {
            self.parent = None;
            return Ok(());
        }
        if matches!(&self.parent, Some((k, _)) if *k == key) {
            return Ok(());
        }
        let mut cur: Option<OwnedFd> = None;
        let mut prefix = String::new();
        for d in dirs {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(d);
            if !self.seen.contains_key(&prefix) {
                self.charge(0)
                    .map_err(|why| format!("creating its parent {}: {why}", shown(&prefix)))?;
            }
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            if !self.seen.contains_key(&prefix) {
                mkdirat(at, *d, Mode::from_bits_truncate(0o755))
                    .map_err(|e| format!("cannot create the directory {}: {e}", shown(&prefix)))?;
                self.seen
                    .insert(prefix.clone(), Seen::Dir { explicit: false });
                self.summary.dirs += 1;
            }
            let fd = openat(
                at,
                *d,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    format!("{} is not a directory (never followed)", shown(&prefix))
                }
                e => format!("cannot open {}: {e}", shown(&prefix)),
            })?;
            cur = Some(fd);
        }
        self.parent = cur.map(|fd| (key, fd));
        Ok(())
    }
}

fn refuse<T>(m: &Member, why: String) -> Result<T> {
    Err(Error::archive(Some(&m.path), why))
}

/// Splits a member path into its components after the name rules; the error says which rule.
pub fn normalize<'a>(path: &'a str, limits: &Limits) -> std::result::Result<Vec<&'a str>, String> {
    if path.len() > limits.max_path_bytes {
        return Err(format!(
            "the name is {} bytes long (cap {})",
            path.len(),
            limits.max_path_bytes
        ));
    }
    if path.chars().any(char::is_control) {
        return Err("the name contains a control character".into());
    }
    if path.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") {
        return Err("'..' is not allowed in a name".into());
    }
    if comps.iter().any(|c| c.len() > 255) {
        return Err("a name component is longer than 255 bytes".into());
    }
    if comps.iter().any(|c| is_git_dir(c)) {
        return Err(GIT_REFUSED.into());
    }
    if comps.len() > limits.max_depth {
        return Err(format!(
            "the name is nested {} deep (cap {})",
            comps.len(),
            limits.max_depth
        ));
    }
    Ok(comps)
}

const GIT_REFUSED: &str = "a .git directory or file is not allowed anywhere in the tree (the \
     agent never sends one; git in dom0 would obey its config and hooks)";

/// `.git` in any letter case (case-insensitive file systems and git itself treat `.GIT` alike).
fn is_git_dir(component: &str) -> bool {
    component.eq_ignore_ascii_case(".git")
}

/// A symlink in a directory `depth` levels below the root may point to `target` only if the
/// target is relative, climbs at most `depth` levels, and then only descends.
pub fn check_link_target(
    depth: usize,
    target: &str,
    limits: &Limits,
) -> std::result::Result<(), String> {
    if target.is_empty() {
        return Err("empty target".into());
    }
    if target.len() > limits.max_path_bytes {
        return Err("the target is too long".into());
    }
    if target.chars().any(char::is_control) {
        return Err("the target contains a control character".into());
    }
    if target.starts_with('/') {
        return Err("absolute targets point outside the tree".into());
    }
    let mut ups = 0usize;
    let mut descended = false;
    for c in target.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if is_git_dir(c) {
            return Err(GIT_REFUSED.into());
        }
        if c == ".." {
            if descended {
                return Err("'..' after a name in a target is not allowed".into());
            }
            ups += 1;
            if ups > depth {
                return Err("it points outside the tree".into());
            }
        } else {
            descended = true;
        }
    }
    Ok(())
}

/// `12.3 MiB`-style sizes for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> Limits {
        Limits::default()
    }

    #[test]
    fn names_are_normalized_or_refused() {
        assert_eq!(normalize("./a//b/./c", &l()).unwrap(), ["a", "b", "c"]);
        assert_eq!(normalize("./", &l()).unwrap(), Vec::<&str>::new());
        for bad in ["/etc/x", "../x", "a/../../x", "a/..", "a\nb", "a\u{85}b"] {
            assert!(normalize(bad, &l()).is_err(), "{bad:?}");
        }
        for git in [".git", "a/.git/config", ".GIT/hooks/pre-commit", "x/.Git"] {
            assert!(normalize(git, &l()).unwrap_err().contains(".git"), "{git}");
        }
        assert!(normalize(".github/workflows/ci.yml", &l()).is_ok());
        assert!(normalize("a.git/x", &l()).is_ok());
        let deep = vec!["d"; 33].join("/");
        assert!(normalize(&deep, &l()).unwrap_err().contains("nested"));
        assert!(normalize(&"x".repeat(1025), &l())
            .unwrap_err()
            .contains("bytes long"));
        assert!(normalize(&"x".repeat(256), &l()).is_err());
    }

    #[test]
    fn link_targets_must_stay_inside_and_only_descend_after_climbing() {
        assert!(check_link_target(1, "../sdw_notify", &l()).is_ok());
        assert!(check_link_target(0, "a/b", &l()).is_ok());
        assert!(check_link_target(0, "../x", &l()).is_err());
        assert!(check_link_target(1, "../../x", &l()).is_err());
        assert!(check_link_target(3, "/etc", &l()).is_err());
        assert!(check_link_target(2, "a/../..", &l()).is_err());
        assert!(check_link_target(2, "", &l()).is_err());
        assert!(check_link_target(1, "../.git", &l()).is_err());
    }

    #[test]
    fn the_reserve_check_refuses_below_either_reserve_and_ignores_uncounted_inodes() {
        let limits = Limits {
            min_free_bytes: 1000,
            min_free_inodes: 10,
            ..l()
        };
        let free = |bytes, inodes| FsFree {
            bytes,
            inodes,
            block: 4096,
        };
        assert!(check_reserve(&free(1000, Some(10)), &limits).is_ok());
        assert!(check_reserve(&free(999, Some(10)), &limits)
            .unwrap_err()
            .contains("limits.min_free_bytes"));
        assert!(check_reserve(&free(5000, Some(9)), &limits)
            .unwrap_err()
            .contains("limits.min_free_inodes"));
        assert!(check_reserve(&free(5000, None), &limits).is_ok(), "btrfs");
    }

    #[test]
    fn the_paced_reader_cuts_off_a_sender_below_the_minimum_rate() {
        let (r, mut w) = std::io::pipe().unwrap();
        let limits = Limits {
            read_timeout: Duration::from_secs(5),
            min_rate_bytes_per_sec: 1000,
            rate_grace: Duration::from_millis(200),
            ..l()
        };
        let mut paced = PacedReader::new(r, &limits, None);
        w.write_all(b"x").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(paced.read(&mut buf).unwrap(), 1);
        let start = Instant::now();
        let err = paced.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("too slowly"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "waited for the read timeout"
        );
    }

    #[test]
    fn the_paced_reader_stops_at_the_deadline() {
        let (r, _w) = std::io::pipe().unwrap();
        let limits = Limits {
            read_timeout: Duration::from_secs(5),
            min_rate_bytes_per_sec: 0,
            ..l()
        };
        let deadline = Instant::now() + Duration::from_millis(100);
        let mut paced = PacedReader::new(r, &limits, Some(deadline));
        let err = paced.read(&mut [0u8; 8]).unwrap_err();
        assert!(err.to_string().contains("deadline passed"), "{err}");
        assert!(Instant::now() < deadline + Duration::from_secs(1));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(10 << 30), "10.0 GiB");
    }
}
