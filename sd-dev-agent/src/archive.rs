//! The tarball: a zstd-compressed tar of the checkout, streamed to any writer.
//!
//! Invariants:
//! - Member names are relative to the tree root (`Makefile`, `launcher/sdw_notify`), in sorted
//!   order; directories come before their contents.
//! - Every `.git` entry (directory or file, at any depth) is left out, like `tar --exclude-vcs`.
//! - Symlinks are stored as symlinks (never followed); regular files keep their mode bits, so
//!   executables stay executable; other file types (FIFOs, sockets, devices) are skipped with a
//!   warning, since dom0 would refuse them anyway.
//! - Streaming, in two stages like `tar -c | zstd -T0`: this thread walks the tree and frames
//!   the tar stream (files read through 256 KiB buffers) into 1 MiB chunks; a second thread feeds
//!   a bounded queue of them (at most 4) to the multi-threaded zstd encoder, which writes to the
//!   output as its jobs complete. The archive is never held in memory.

use crate::error::{AgentError, Result};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What one archive contained and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Entries written (directories, files, symlinks).
    pub entries: u64,
    /// Bytes of file content read.
    pub content_bytes: u64,
    /// Compressed bytes written to the output.
    pub compressed_bytes: u64,
}

/// Counts the bytes passing through to the inner writer.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compression settings.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    pub level: i32,
    /// zstd worker threads; 0 = one per available CPU.
    pub threads: u32,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            level: 3,
            threads: 0,
        }
    }
}

/// Chunk size handed from the tar thread to the compressor.
const CHUNK: usize = 1 << 20;

/// A writer that hands fixed-size chunks to the compressor thread over a bounded channel.
struct ChunkSender {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the tree at `root` as tar.zst to `out`, and returns `out` flushed with the stats.
///
/// Two stages run at once, like `tar -c | zstd -T0`: this thread walks the tree and frames the
/// tar stream into 1 MiB chunks; a second thread feeds them to the multi-threaded zstd encoder
/// and writes its output. At most a few chunks are in flight (bounded channel).
pub fn write_archive<W: Write + Send>(
    root: &Path,
    out: W,
    compression: Compression,
) -> Result<(W, ArchiveStats)> {
    let err = |what: &str, e: io::Error| AgentError::Archive(format!("{what}: {e}"));
    let threads = match compression.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    };
    let counting = Counting {
        inner: out,
        count: 0,
    };
    let mut encoder = zstd::stream::write::Encoder::new(counting, compression.level)
        .map_err(|e| err("starting zstd", e))?;
    encoder
        .multithread(threads)
        .map_err(|e| err("enabling zstd worker threads", e))?;
    encoder
        .include_checksum(true)
        .map_err(|e| err("enabling the zstd checksum", e))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::scope(|scope| {
        let compressor = scope.spawn(move || -> io::Result<Counting<W>> {
            for chunk in rx {
                encoder.write_all(&chunk)?;
            }
            let mut counting = encoder.finish()?;
            counting.flush()?;
            Ok(counting)
        });
        let sender = ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let walked = write_tar(root, sender);
        // `write_tar` consumed the sender, so the channel is closed and the compressor ends.
        let compressed = compressor
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the compressor thread panicked")));
        match (walked, compressed) {
            (Ok(mut stats), Ok(counting)) => {
                stats.compressed_bytes = counting.count;
                Ok((counting.inner, stats))
            }
            // A compressor error (e.g. the reader went away) explains the tar side's failure.
            (_, Err(e)) => Err(err("compressing or writing the archive", e)),
            (Err(e), Ok(_)) => Err(e),
        }
    })
}

/// Walks `root` and writes the tar stream (see the module doc) into `sender`, then sends the
/// last chunk and closes the channel.
fn write_tar(root: &Path, sender: ChunkSender) -> Result<ArchiveStats> {
    let err = |what: &str, e: io::Error| AgentError::Archive(format!("{what}: {e}"));
    let mut builder = tar::Builder::new(sender);
    let mut stats = ArchiveStats::default();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|e| err(&format!("listing {}", dir.display()), e))?
            .map(|entry| entry.map(|e| rel.join(e.file_name())))
            .collect::<io::Result<_>>()
            .map_err(|e| err(&format!("listing {}", dir.display()), e))?;
        names.sort();
        // Directories are visited after the files of this level, in reverse order on the stack
        // so the output stays sorted per directory.
        let mut subdirs = Vec::new();
        for name in names {
            if name.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            let full = root.join(&name);
            let meta = fs::symlink_metadata(&full)
                .map_err(|e| err(&format!("inspecting {}", full.display()), e))?;
            let ft = meta.file_type();
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            // Permission bits only (07777), as GNU tar writes them; st_mode's file-type bits
            // do not belong in a tar header and dom0 refuses them.
            header.set_mode(meta.mode() & 0o7777);
            let added = if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                subdirs.push(name.clone());
                builder.append_data(&mut header, &name, io::empty())
            } else if ft.is_file() {
                stats.content_bytes += meta.len();
                let file = fs::File::open(&full)
                    .map_err(|e| err(&format!("opening {}", full.display()), e))?;
                builder.append_data(
                    &mut header,
                    &name,
                    io::BufReader::with_capacity(256 * 1024, file),
                )
            } else if ft.is_symlink() {
                let target = fs::read_link(&full)
                    .map_err(|e| err(&format!("reading the link {}", full.display()), e))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, &name, &target)
            } else {
                tracing::warn!(path = %name.display(), "skipping a special file (not a file, directory or symlink)");
                continue;
            };
            added.map_err(|e| err(&format!("adding {}", name.display()), e))?;
            stats.entries += 1;
        }
        stack.extend(subdirs.into_iter().rev());
    }
    let mut sender = builder
        .into_inner()
        .map_err(|e| err("finishing the tar stream", e))?;
    sender
        .send()
        .map_err(|e| err("finishing the tar stream", e))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in [
            "scripts",
            "sdw_notify",
            "launcher",
            ".git/objects",
            "sub/.git",
        ] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        fs::write(p.join("Makefile"), "all:\n").unwrap();
        fs::write(p.join("scripts/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(p.join("scripts/run"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(p.join("sdw_notify/__init__.py"), "").unwrap();
        fs::write(p.join(".git/HEAD"), "ref: x\n").unwrap();
        fs::write(p.join("sub/.git/config"), "").unwrap();
        symlink("../sdw_notify", p.join("launcher/sdw_notify")).unwrap();
        let long = "d".repeat(120);
        fs::create_dir_all(p.join(&long)).unwrap();
        fs::write(p.join(&long).join("f".repeat(120)), "long name").unwrap();
        dir
    }

    fn entries(archive: &[u8]) -> Vec<(String, tar::EntryType, u32, Option<String>)> {
        let tar_bytes = zstd::stream::decode_all(archive).unwrap();
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    e.header().mode().unwrap(),
                    link,
                )
            })
            .collect()
    }

    #[test]
    fn the_archive_keeps_symlinks_and_exec_bits_and_leaves_out_git() {
        let dir = tree();
        let (bytes, stats) = write_archive(dir.path(), Vec::new(), Compression::default()).unwrap();
        assert_eq!(stats.compressed_bytes, bytes.len() as u64);
        let list = entries(&bytes);
        let find = |name: &str| {
            list.iter()
                .find(|e| e.0.trim_end_matches('/') == name)
                .cloned()
        };
        assert!(
            list.iter().all(|e| !e.0.split('/').any(|c| c == ".git")),
            "{list:?}"
        );
        let run = find("scripts/run").unwrap();
        assert_eq!(run.2 & 0o777, 0o755);
        assert_eq!(find("Makefile").unwrap().2 & 0o111, 0);
        let link = find("launcher/sdw_notify").unwrap();
        assert_eq!(link.1, tar::EntryType::Symlink);
        assert_eq!(link.3.as_deref(), Some("../sdw_notify"));
        assert!(
            list.iter().all(|e| e.2 <= 0o7777),
            "permission bits only: {list:?}"
        );
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        assert!(find(&long).is_some(), "long names survive");
        let pos = |n: &str| {
            list.iter()
                .position(|e| e.0.trim_end_matches('/') == n)
                .unwrap()
        };
        assert!(
            pos("scripts") < pos("scripts/run"),
            "directories before their contents"
        );
    }

    #[test]
    fn system_tar_and_zstd_read_the_archive() {
        let dir = tree();
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("t.tar.zst");
        let f = fs::File::create(&file).unwrap();
        write_archive(
            dir.path(),
            f,
            Compression {
                level: 3,
                threads: 2,
            },
        )
        .unwrap();
        let unpack = out.path().join("x");
        fs::create_dir(&unpack).unwrap();
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "zstd -dc {} | tar -x -C {}",
                file.display(),
                unpack.display()
            ))
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(
            fs::read_link(unpack.join("launcher/sdw_notify")).unwrap(),
            Path::new("../sdw_notify")
        );
        assert!(
            fs::metadata(unpack.join("scripts/run"))
                .unwrap()
                .permissions()
                .mode()
                & 0o100
                != 0
        );
        assert!(!unpack.join(".git").exists());
    }
}
