//! A strict, streaming reader of tar archives (POSIX ustar/pax and GNU), with no file system
//! access. [`TarStream::next_entry`] yields one member at a time with its name already resolved
//! (PAX `path`/`linkpath`, GNU `L`/`K` records, ustar prefix), so policy checks in
//! [`crate::unpack`] always see the name that would be used.
//!
//! Invariants:
//! - Memory is bounded: extended headers (PAX, GNU long names) larger than [`MAX_EXT_BYTES`] are
//!   refused before they are read; member data is only ever streamed through the caller's buffer.
//! - Every header's checksum and magic is verified; numeric fields must parse completely.
//! - The archive must end with two zero blocks, followed by nothing but zero padding (at most
//!   [`MAX_TRAILING_ZEROS`] bytes) up to the end of the input. An input that ends anywhere else
//!   is truncated and an error.
//! - Member types are reported, not judged: the unpacker decides what is allowed. The one
//!   exception is GNU sparse (`S`), whose layout this reader does not parse: it is refused here.
//! - No archive is accepted that another reader could read differently. The fuzz target checks
//!   every accepted archive against the `tar` crate (a differential oracle), and these are
//!   refused because readers disagree on them: a PAX `path` together with a GNU long name (or
//!   `linkpath` with a GNU long link), a PAX key set twice in one header, a PAX record with a
//!   newline inside (the `tar` crate splits records at newlines, not by their length), a NUL
//!   inside a GNU long name (other than one at the end), a global header between an extended
//!   header and its member, a checksum that only matches as signed bytes or is not octal, and a
//!   mode field that is not octal.

use std::io::{self, Read};

/// The largest PAX extended header or GNU long-name record accepted.
pub const MAX_EXT_BYTES: u64 = 64 * 1024;
/// Zero padding accepted after the end-of-archive marker (GNU tar pads to 10 KiB records).
pub const MAX_TRAILING_ZEROS: u64 = 1024 * 1024;

const BLOCK: usize = 512;

/// The kind of member, from the type flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// Contiguous file (`7`), GNU sparse (`S`), or any other type flag.
    Other(u8),
}

/// One member's header, after extended headers were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub path: String,
    /// Symlink or hard-link target.
    pub link: Option<String>,
    pub kind: Kind,
    /// Permission bits from the header (the low 12 bits, including setuid/setgid/sticky).
    pub mode: u32,
    /// Bytes of data that follow the header.
    pub size: u64,
}

/// Why the tar layer refused the stream. The unpacker turns these into [`crate::Error`]s.
#[derive(Debug)]
pub enum TarError {
    /// The input violates the format; the message says how.
    Format(String),
    /// A member's name could not be used (not UTF-8); carries the lossy name.
    BadName { lossy: String, why: String },
    /// Reading the input failed (including limits enforced by wrapping readers).
    Io(io::Error),
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

type TResult<T> = Result<T, TarError>;

fn format_err<T>(why: impl Into<String>) -> TResult<T> {
    Err(TarError::Format(why.into()))
}

pub struct TarStream<R: Read> {
    inner: R,
    /// Data bytes of the current member not yet read.
    remaining: u64,
    /// Padding after the current member's data.
    padding: u64,
    done: bool,
}

#[derive(Default)]
struct Pending {
    /// From a PAX `path` record.
    path: Option<Vec<u8>>,
    /// From a PAX `linkpath` record.
    link: Option<Vec<u8>>,
    size: Option<u64>,
    /// From a GNU `L` record.
    gnu_path: Option<Vec<u8>>,
    /// From a GNU `K` record.
    gnu_link: Option<Vec<u8>>,
    pax_seen: bool,
}

impl Pending {
    fn any(&self) -> bool {
        self.pax_seen || self.gnu_path.is_some() || self.gnu_link.is_some()
    }
}

impl<R: Read> TarStream<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            remaining: 0,
            padding: 0,
            done: false,
        }
    }

    /// The next member, or `None` after a clean end of archive (and of the input).
    pub fn next_entry(&mut self) -> TResult<Option<Member>> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let Some(block) = self.read_block()? else {
                return format_err(
                    "the stream ends before the end-of-archive marker (truncated archive)",
                );
            };
            if block.iter().all(|&b| b == 0) {
                if pending.any() {
                    return format_err("an extended header is not followed by a member");
                }
                self.finish()?;
                return Ok(None);
            }
            verify_checksum(&block)?;
            let magic = &block[257..265];
            let posix = &magic[..6] == b"ustar\0" && &magic[6..] == b"00";
            let gnu = magic == b"ustar  \0";
            if !posix && !gnu {
                return format_err("header has no ustar/GNU magic (old or unknown tar format)");
            }
            let typeflag = block[156];
            let size = parse_number(&block[124..136], "size")?;
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if size > MAX_EXT_BYTES {
                        return format_err(format!(
                            "extended header of {size} bytes exceeds the {MAX_EXT_BYTES}-byte cap"
                        ));
                    }
                    let data = self.read_member_data(size)?;
                    match typeflag {
                        b'x' => {
                            if pending.pax_seen {
                                return format_err("two PAX headers for one member");
                            }
                            pending.pax_seen = true;
                            apply_pax(&data, &mut pending, false)?;
                        }
                        b'g' => {
                            if pending.any() {
                                return format_err(
                                    "a PAX global header between an extended header and its \
                                     member",
                                );
                            }
                            let mut global = Pending::default();
                            apply_pax(&data, &mut global, true)?;
                        }
                        b'L' => {
                            if pending.gnu_path.is_some() {
                                return format_err("two GNU long names for one member");
                            }
                            pending.gnu_path = Some(gnu_name(data, "long name")?);
                        }
                        _ => {
                            if pending.gnu_link.is_some() {
                                return format_err("two GNU long link names for one member");
                            }
                            pending.gnu_link = Some(gnu_name(data, "long link name")?);
                        }
                    }
                    if pending.path.is_some() && pending.gnu_path.is_some() {
                        return format_err(
                            "both a PAX path and a GNU long name for one member (readers \
                             disagree on which wins)",
                        );
                    }
                    if pending.link.is_some() && pending.gnu_link.is_some() {
                        return format_err(
                            "both a PAX linkpath and a GNU long link name for one member \
                             (readers disagree on which wins)",
                        );
                    }
                    continue;
                }
                _ => {}
            }
            let kind = match typeflag {
                b'0' | 0 => Kind::File,
                b'5' => Kind::Dir,
                b'2' => Kind::Symlink,
                b'1' => Kind::HardLink,
                b'3' => Kind::CharDevice,
                b'4' => Kind::BlockDevice,
                b'6' => Kind::Fifo,
                other => Kind::Other(other),
            };
            if kind == Kind::Other(b'S') {
                // Its sparse map and extension blocks are not parsed here, so its data could
                // not be told from the next header.
                return format_err("sparse files are not allowed (GNU sparse member)");
            }
            let size = pending.size.unwrap_or(size);
            // Some writers (the `tar` crate) include the file-type bits of st_mode; the type
            // flag is what counts, so only the permission bits are kept.
            let mode = parse_octal(&block[100..108], "mode")? & 0o7777;
            let header_name = {
                let name = cstr(&block[0..100]);
                let prefix = if posix {
                    cstr(&block[345..500])
                } else {
                    &[][..]
                };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    [prefix, b"/", name].concat()
                }
            };
            let raw_path = pending
                .path
                .take()
                .or(pending.gnu_path.take())
                .unwrap_or(header_name);
            let path = utf8(raw_path, "member name")?;
            let link = match kind {
                Kind::Symlink | Kind::HardLink => {
                    let raw = pending
                        .link
                        .take()
                        .or(pending.gnu_link.take())
                        .unwrap_or_else(|| cstr(&block[157..257]).to_vec());
                    Some(utf8(raw, "link target")?)
                }
                _ => None,
            };
            self.remaining = size;
            self.padding = padding_for(size);
            return Ok(Some(Member {
                path,
                link,
                kind,
                mode: mode as u32,
                size,
            }));
        }
    }

    /// Reads the current member's data; `Ok(0)` at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> TResult<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = read_retrying(&mut self.inner, &mut buf[..want])?;
        if n == 0 {
            return format_err("the stream ends inside a member's data (truncated archive)");
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Consumes the rest of the current member's data and its padding.
    fn skip_rest(&mut self) -> TResult<()> {
        let mut buf = [0u8; 8192];
        while self.remaining > 0 {
            self.read_data(&mut buf)?;
        }
        while self.padding > 0 {
            let n = self.padding.min(buf.len() as u64) as usize;
            self.read_exact_or_truncated(&mut buf[..n])?;
            self.padding -= n as u64;
        }
        Ok(())
    }

    fn read_member_data(&mut self, size: u64) -> TResult<Vec<u8>> {
        // `size` is at most MAX_EXT_BYTES here.
        let mut data = vec![0u8; size as usize];
        self.read_exact_or_truncated(&mut data)?;
        let mut pad = vec![0u8; padding_for(size) as usize];
        self.read_exact_or_truncated(&mut pad)?;
        Ok(data)
    }

    /// After the first zero block: a second one, then only zeros to the end of the input.
    fn finish(&mut self) -> TResult<()> {
        match self.read_block()? {
            Some(b) if b.iter().all(|&x| x == 0) => {}
            Some(_) => return format_err("a lone zero block inside the archive"),
            None => return format_err("the stream ends after one zero block (truncated archive)"),
        }
        let mut trailing = 0u64;
        let mut buf = [0u8; 8192];
        loop {
            let n = read_retrying(&mut self.inner, &mut buf)?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return format_err("data after the end-of-archive marker");
            }
            trailing += n as u64;
            if trailing > MAX_TRAILING_ZEROS {
                return format_err(format!(
                    "more than {MAX_TRAILING_ZEROS} bytes of padding after the end of the archive"
                ));
            }
        }
        self.done = true;
        Ok(())
    }

    /// One header block, or `None` at a clean end of input (at a block boundary).
    fn read_block(&mut self) -> TResult<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            let n = read_retrying(&mut self.inner, &mut block[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return format_err("the stream ends inside a header (truncated archive)");
            }
            got += n;
        }
        Ok(Some(block))
    }

    fn read_exact_or_truncated(&mut self, buf: &mut [u8]) -> TResult<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = read_retrying(&mut self.inner, &mut buf[got..])?;
            if n == 0 {
                return format_err("the stream ends inside a member (truncated archive)");
            }
            got += n;
        }
        Ok(())
    }
}

fn read_retrying<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn padding_for(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The bytes up to the first NUL.
fn cstr(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |i| &field[..i])
}

/// A GNU long name or link record: the name, optionally followed by one NUL (as GNU tar writes
/// it). Any other NUL is refused: readers disagree on whether the name ends there.
fn gnu_name(mut data: Vec<u8>, what: &str) -> TResult<Vec<u8>> {
    if data.last() == Some(&0) {
        data.pop();
    }
    if data.contains(&0) {
        return format_err(format!("a GNU {what} record contains a NUL byte"));
    }
    Ok(data)
}

fn utf8(raw: Vec<u8>, what: &str) -> TResult<String> {
    String::from_utf8(raw).map_err(|e| TarError::BadName {
        lossy: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        why: format!("{what} is not valid UTF-8"),
    })
}

/// The checksum: an octal field equal to the sum of the header's bytes as unsigned values (with
/// the checksum field counted as spaces). The historic signed sum is not accepted.
fn verify_checksum(block: &[u8; BLOCK]) -> TResult<()> {
    let stored = parse_octal(&block[148..156], "checksum")?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
        .sum();
    if stored == unsigned {
        Ok(())
    } else {
        format_err("header checksum mismatch (corrupt or not a tar archive)")
    }
}

/// An octal field (leading spaces, digits, then NUL/space padding) or GNU base-256.
fn parse_number(field: &[u8], what: &str) -> TResult<u64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first == 0xff {
                return format_err(format!("negative {what} field"));
            }
            let mut v: u64 = u64::from(first & 0x7f);
            for &b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or_else(|| TarError::Format(format!("{what} field overflows")))?;
            }
            return Ok(v);
        }
    }
    parse_octal(field, what)
}

/// An octal field only: leading spaces, octal digits, then NUL/space padding.
fn parse_octal(field: &[u8], what: &str) -> TResult<u64> {
    let s = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ')
        .copied()
        .collect::<Vec<u8>>();
    let rest_ok = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .skip(s.len())
        .all(|&b| b == 0 || b == b' ');
    if s.is_empty() || !rest_ok || !s.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return format_err(format!("malformed {what} field"));
    }
    let mut v: u64 = 0;
    for &d in &s {
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| TarError::Format(format!("{what} field overflows")))?;
    }
    Ok(v)
}

/// Applies PAX records (`"<len> <key>=<value>\n"`). Keys that name the member or its size are
/// used; `GNU.sparse.*` is refused; everything else (times, owners, xattrs, comments) ignored.
fn apply_pax(data: &[u8], p: &mut Pending, global: bool) -> TResult<()> {
    let mut rest = data;
    let mut seen: Vec<&[u8]> = Vec::with_capacity(3);
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| TarError::Format("malformed PAX record (no length)".into()))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| TarError::Format("malformed PAX record length".into()))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return format_err("malformed PAX record (bad length)");
        }
        let record = &rest[sp + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| TarError::Format("malformed PAX record (no '=')".into()))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if record.contains(&b'\n') {
            return format_err(
                "a PAX record contains a newline (readers disagree on where it ends)",
            );
        }
        let relevant = matches!(key, b"path" | b"linkpath" | b"size");
        if relevant && seen.contains(&key) {
            return format_err(format!(
                "a PAX header sets {:?} twice",
                String::from_utf8_lossy(key)
            ));
        }
        if relevant {
            seen.push(key);
        }
        if key.starts_with(b"GNU.sparse.") {
            return format_err("sparse files are not allowed");
        }
        if global && relevant {
            return format_err(format!(
                "a PAX global header sets {:?} (not supported)",
                String::from_utf8_lossy(key)
            ));
        }
        match key {
            b"path" => p.path = Some(value.to_vec()),
            b"linkpath" => p.link = Some(value.to_vec()),
            b"size" => {
                let v = std::str::from_utf8(value)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| TarError::Format("malformed PAX size".into()))?;
                p.size = Some(v);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::TarBuilder;

    fn members(bytes: &[u8]) -> TResult<Vec<(Member, Vec<u8>)>> {
        let mut t = TarStream::new(bytes);
        let mut out = Vec::new();
        while let Some(m) = t.next_entry()? {
            let mut data = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = t.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((m, data));
        }
        Ok(out)
    }

    #[test]
    fn reads_files_dirs_and_symlinks_with_their_data() {
        let mut b = TarBuilder::new();
        b.dir("d/", 0o755);
        b.file("d/f", 0o644, b"hello");
        b.symlink("d/l", "f");
        let got = members(&b.finish()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].0.path, "d/f");
        assert_eq!(got[1].1, b"hello");
        assert_eq!(got[2].0.kind, Kind::Symlink);
        assert_eq!(got[2].0.link.as_deref(), Some("f"));
    }

    #[test]
    fn pax_path_overrides_the_header_name() {
        let mut b = TarBuilder::new();
        b.pax(&[("path", "../evil")]);
        b.file("innocent", 0o644, b"x");
        let got = members(&b.finish()).unwrap();
        assert_eq!(got[0].0.path, "../evil");
    }

    #[test]
    fn gnu_long_names_are_applied() {
        let long = format!("{}/file", "d".repeat(150));
        let mut b = TarBuilder::new();
        b.gnu_long_name(&long);
        b.file("short", 0o644, b"");
        assert_eq!(members(&b.finish()).unwrap()[0].0.path, long);
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let mut b = TarBuilder::new();
        b.file("a", 0o644, &[7u8; 1000]);
        let full = b.finish();
        assert!(members(&full).is_ok());
        for cut in [0, 100, 512, 700, 1536, full.len() - 512] {
            assert!(members(&full[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn corrupt_checksum_and_trailing_garbage_are_errors() {
        let mut b = TarBuilder::new();
        b.file("a", 0o644, b"x");
        let mut bytes = b.finish();
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(matches!(members(&bad), Err(TarError::Format(m)) if m.contains("checksum")));
        bytes.extend_from_slice(b"garbage");
        assert!(members(&bytes).is_err());
    }

    fn refusal(bytes: &[u8]) -> String {
        match members(bytes) {
            Err(TarError::Format(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// Rewrites a header's checksum field as `sum` (octal, `%06o\0 `).
    fn set_checksum(block: &mut [u8], sum: u64) {
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn a_checksum_that_only_matches_as_signed_bytes_is_refused() {
        let mut b = TarBuilder::new();
        b.raw_header_bytes(b"caf\xc3\xa9", b'0', 0o644, 0, "");
        let mut bytes = b.finish();
        let signed: i64 = bytes[..512]
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                i64::from(if (148..156).contains(&i) {
                    b' ' as i8
                } else {
                    x as i8
                })
            })
            .sum();
        set_checksum(&mut bytes[..512], signed as u64);
        assert!(refusal(&bytes).contains("checksum"));
    }

    #[test]
    fn a_base_256_mode_or_checksum_is_refused() {
        let mut b = TarBuilder::new();
        b.file("a", 0o644, b"");
        let mut bytes = b.finish();
        bytes[100..108].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0x01, 0xa4]);
        let sum: u64 = bytes[..512]
            .iter()
            .enumerate()
            .map(|(i, &x)| u64::from(if (148..156).contains(&i) { b' ' } else { x }))
            .sum();
        set_checksum(&mut bytes[..512], sum);
        assert!(refusal(&bytes).contains("malformed mode"));
        let mut bytes = b.finish();
        bytes[148..156].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert!(refusal(&bytes).contains("malformed checksum"));
    }

    #[test]
    fn a_nul_inside_a_gnu_long_name_is_refused_but_one_at_the_end_is_not() {
        let mut b = TarBuilder::new();
        b.gnu_long_name("visible\0hidden");
        b.file("x", 0o644, b"");
        assert!(refusal(&b.finish()).contains("NUL"));
        let mut b = TarBuilder::new();
        b.raw_header("././@LongLink", b'L', 0o644, 4, "");
        b.data(b"abc\0");
        b.file("x", 0o644, b"");
        assert_eq!(members(&b.finish()).unwrap()[0].0.path, "abc");
    }

    #[test]
    fn gnu_sparse_members_are_refused_by_the_reader_itself() {
        let mut b = TarBuilder::new();
        b.raw_header("s", b'S', 0o644, 0, "");
        assert!(refusal(&b.finish()).contains("sparse"));
    }

    #[test]
    fn oversized_extended_header_is_refused_before_reading_it() {
        let mut b = TarBuilder::new();
        b.raw_header("././@LongLink", b'L', 0o644, MAX_EXT_BYTES + 1, "");
        let err = members(&b.finish()).unwrap_err();
        assert!(matches!(err, TarError::Format(m) if m.contains("cap")));
    }
}
