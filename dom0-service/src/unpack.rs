//! The hardened streaming unpacker: a zstd-compressed tar from the dev VM into a fresh directory.
//!
//! Rules (`research/qubes.md` §5.4), each enforced here and tested:
//! - Names are checked after PAX/GNU resolution ([`crate::tarstream`]): valid UTF-8, no control
//!   characters, not absolute, no `..`, at most [`Limits::max_path_bytes`] bytes and
//!   [`Limits::max_depth`] components, each at most 255 bytes.
//! - Only regular files, directories and symlinks. Hard links, devices, FIFOs, contiguous and
//!   sparse files and unknown types are refused. So are setuid, setgid and sticky bits.
//! - Symlink targets must be relative, of the form `../`×k followed by names (no `..` after a
//!   name), with k at most the depth of the link's directory: every link, and so every chain of
//!   links, resolves inside the tree.
//! - Nothing is written through a symlink: every path component is opened relative to its parent
//!   with `O_NOFOLLOW`, files are created with `O_EXCL`, and a member below a symlink or a file is
//!   refused by name before any system call.
//! - Duplicate paths are refused (a directory may only be named again if it was created
//!   implicitly as a parent).
//! - Files get mode 0644, or 0755 when the owner-execute bit is set; directories 0755. Owners,
//!   times, xattrs and ACLs from the archive are ignored.
//! - Caps on compressed bytes, decompressed bytes, entries, the zstd window, free disk space, and
//!   a read timeout on the input. A truncated zstd or tar stream is an error.
//! - The destination is created by [`unpack`] itself and must not exist; on any error it is
//!   removed again, so a refused archive leaves nothing behind.
//!
//! Memory is constant: data is streamed through one 256 KiB buffer; the only state that grows is
//! the set of names seen, bounded by [`Limits::max_entries`].

use crate::error::{shown, Error, Result};
use crate::tarstream::{Kind, Member, TarError, TarStream};
use rustix::fs::{mkdirat, openat, symlinkat, Mode, OFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Caps on what an archive may make dom0 do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from the input (the compressed stream).
    pub max_compressed_bytes: u64,
    /// Bytes after decompression (the tar stream: headers, data, padding).
    pub max_unpacked_bytes: u64,
    /// Members, including directories and symlinks.
    pub max_entries: u64,
    /// Bytes in a member's normalized path.
    pub max_path_bytes: usize,
    /// Components in a member's path.
    pub max_depth: usize,
    /// Largest zstd window accepted, as a power of two (24 = 16 MiB).
    pub zstd_window_log_max: u32,
    /// The input may be silent at most this long (enforced by [`TimeoutReader`]).
    pub read_timeout: Duration,
    /// Unpacking stops rather than leave less than this free on the destination's file system.
    pub min_free_bytes: u64,
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
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub executables: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Compressed bytes read.
    pub compressed_bytes: u64,
}

/// A cap that was reached, carried inside an `io::Error` through the decoder.
#[derive(Debug)]
struct CapReached(String);

impl std::fmt::Display for CapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CapReached {}

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
            return Err(io::Error::other(CapReached(format!(
                "the {} exceeds the {} cap",
                self.what,
                human(self.cap)
            ))));
        }
        Ok(n)
    }
}

/// A reader over a file descriptor (the service's stdin) that fails with `TimedOut` when no byte
/// arrives for `timeout`.
pub struct TimeoutReader<F: AsFd> {
    fd: F,
    timeout: Duration,
}

impl<F: AsFd> TimeoutReader<F> {
    pub fn new(fd: F, timeout: Duration) -> Self {
        Self { fd, timeout }
    }
}

impl<F: AsFd> Read for TimeoutReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let ts = Timespec {
            tv_sec: self.timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(self.timeout.subsec_nanos()),
        };
        loop {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data for {} s", self.timeout.as_secs()),
                    ))
                }
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            match rustix::io::read(&self.fd, &mut *buf) {
                Ok(n) => return Ok(n),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Unpacks a zstd-compressed tar from `input` into `dest`, which this function creates (its
/// parent must exist; `dest` must not). On error `dest` is removed and nothing else was touched.
pub fn unpack<R: Read>(input: R, dest: &Path, limits: &Limits) -> Result<Summary> {
    match mkdirat(rustix::fs::CWD, dest, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(e) => {
            return Err(Error::io(
                format!("creating the fresh directory {}", dest.display()),
                e.into(),
            ))
        }
    }
    let result = unpack_into(input, dest, limits);
    if result.is_err() {
        // Best effort: the error that matters is the refusal.
        let _ = crate::tree::remove_tree(dest);
    }
    result
}

fn unpack_into<R: Read>(input: R, dest: &Path, limits: &Limits) -> Result<Summary> {
    let root = openat(
        rustix::fs::CWD,
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening {}", dest.display()), e.into()))?;
    let space = free_space(root.as_fd())
        .map(|free| free.saturating_sub(limits.min_free_bytes))
        .unwrap_or(u64::MAX);
    if space == 0 {
        return Err(Error::archive(
            None,
            format!(
                "less than {} free in {}: not unpacking",
                human(limits.min_free_bytes),
                dest.display()
            ),
        ));
    }
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
        space,
        seen: HashMap::new(),
        parent: None,
        summary: Summary::default(),
        entries: 0,
        buf: vec![0u8; 256 * 1024],
    };
    loop {
        let member = match tar.next_entry() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => return Err(tar_error(e, limits)),
        };
        ex.member(&mut tar, member)?;
    }
    rustix::fs::fchmod(&ex.root, Mode::from_raw_mode(0o755))
        .map_err(|e| Error::io(format!("setting the mode of {}", dest.display()), e.into()))?;
    ex.summary.compressed_bytes = compressed.get();
    Ok(ex.summary)
}

fn free_space(fd: BorrowedFd<'_>) -> Option<u64> {
    let st = rustix::fs::fstatvfs(fd).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir { explicit: bool },
    File,
    Symlink,
}

struct Extractor<'l> {
    root: OwnedFd,
    limits: &'l Limits,
    /// Bytes of file data that may still be written (free space minus the reserve).
    space: u64,
    seen: HashMap<String, Seen>,
    /// The most recently used parent directory, as (normalized path, fd).
    parent: Option<(String, OwnedFd)>,
    summary: Summary,
    entries: u64,
    buf: Vec<u8>,
}

impl Extractor<'_> {
    fn member<R: Read>(&mut self, tar: &mut TarStream<R>, m: Member) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::archive(
                None,
                format!("more than {} entries", self.limits.max_entries),
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
        let parent = match &self.parent {
            Some((_, fd)) => fd.as_fd(),
            None => self.root.as_fd(),
        };
        match m.kind {
            Kind::Dir => {
                mkdirat(parent, *name, Mode::from_raw_mode(0o755))
                    .or_else(|e| refuse(&m, format!("cannot create the directory: {e}")))?;
                self.seen.insert(key, Seen::Dir { explicit: true });
                self.summary.dirs += 1;
            }
            Kind::Symlink => {
                let target = m.link.as_deref().unwrap_or("");
                check_link_target(dirs.len(), target, self.limits)
                    .or_else(|why| refuse(&m, format!("symlink to {}: {why}", shown(target))))?;
                symlinkat(target, parent, *name)
                    .or_else(|e| refuse(&m, format!("cannot create the symlink: {e}")))?;
                self.seen.insert(key, Seen::Symlink);
                self.summary.symlinks += 1;
            }
            _ => {
                let room = self
                    .limits
                    .max_unpacked_bytes
                    .min(self.space)
                    .saturating_sub(self.summary.bytes);
                if m.size > room {
                    return refuse(
                        &m,
                        format!(
                        "a file of {} does not fit: {} of the unpacked-size cap and free space \
                         remain",
                        human(m.size),
                        human(room)
                    ),
                    );
                }
                let fd = openat(
                    parent,
                    *name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .or_else(|e| refuse(&m, format!("cannot create the file: {e}")))?;
                let mut file = std::fs::File::from(fd);
                loop {
                    let n = tar
                        .read_data(&mut self.buf)
                        .map_err(|e| tar_error(e, self.limits))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buf[..n])
                        .or_else(|e| refuse(&m, format!("writing: {e}")))?;
                }
                let exec = m.mode & 0o100 != 0;
                let mode = if exec { 0o755 } else { 0o644 };
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .or_else(|e| refuse(&m, format!("setting the mode: {e}")))?;
                self.seen.insert(key, Seen::File);
                self.summary.files += 1;
                self.summary.executables += u64::from(exec);
                self.summary.bytes += m.size;
            }
        }
        Ok(())
    }

    /// Makes `self.parent` the directory `dirs` (creating missing ones), opening each component
    /// with `O_NOFOLLOW` from the root.
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
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            if !self.seen.contains_key(&prefix) {
                mkdirat(at, *d, Mode::from_raw_mode(0o755))
                    .map_err(|e| format!("cannot create the directory {}: {e}", shown(&prefix)))?;
                self.seen
                    .insert(prefix.clone(), Seen::Dir { explicit: false });
                self.summary.dirs += 1;
            }
            let fd = openat(
                at,
                *d,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::LOOP | Errno::NOTDIR => {
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
    if comps.len() > limits.max_depth {
        return Err(format!(
            "the name is nested {} deep (cap {})",
            comps.len(),
            limits.max_depth
        ));
    }
    Ok(comps)
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
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(10 << 30), "10.0 GiB");
    }
}
