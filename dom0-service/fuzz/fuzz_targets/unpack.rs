//! Fuzzes the hardened unpacker: the input is a tar stream (compressed here, so the fuzzer
//! explores tar structure rather than zstd's checksums), or, when the first byte is odd, raw
//! bytes handed to the zstd decoder. Properties: no panic; a refusal leaves no tree; an accepted
//! tree contains only files, directories and relative symlinks that resolve inside it, without
//! setuid/setgid/sticky bits; it holds exactly the inodes the summary counts, never more than
//! `max_entries` however many parent directories the names imply; nothing appears beside it.
//!
//! Differential oracle (`tests/common/oracle.rs`, shared with the property tests): every tar
//! stream that `tarstream` reads to its end without an error, the `tar` crate must read as the
//! same entries (names, types, sizes, permission bits, link targets).
#![no_main]

#[path = "../../tests/common/oracle.rs"]
mod oracle;

use libfuzzer_sys::fuzz_target;
use sdci_dom0::unpack::{unpack, Limits};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

/// Counts the inodes below `dest` (not `dest` itself) while checking each one.
fn check_tree(dest: &Path) -> u64 {
    let root = std::fs::canonicalize(dest).expect("tree exists");
    let mut stack = vec![dest.to_path_buf()];
    let mut inodes = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("readable") {
            let p = e.expect("entry").path();
            inodes += 1;
            let name = p.file_name().expect("a name").to_string_lossy().to_lowercase();
            assert_ne!(name, ".git", "{p:?}: a .git was unpacked");
            let md = std::fs::symlink_metadata(&p).expect("metadata");
            assert_eq!(md.permissions().mode() & 0o7000, 0, "special bits on {p:?}");
            let ft = md.file_type();
            if ft.is_symlink() {
                assert!(std::fs::read_link(&p).expect("link").is_relative());
                if let Ok(real) = std::fs::canonicalize(&p) {
                    assert!(real.starts_with(&root), "{p:?} escapes to {real:?}");
                }
            } else if ft.is_dir() {
                stack.push(p);
            } else {
                assert!(ft.is_file(), "{p:?} is not a regular file");
            }
        }
    }
    inodes
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (input, tar) = if mode & 1 == 0 {
        match zstd::encode_all(rest, 1) {
            Ok(c) => (c, Some(rest.to_vec())),
            Err(_) => return,
        }
    } else {
        // Decoded for the oracle with the unpacker's window cap, and at most 16 MiB.
        let tar = zstd::stream::read::Decoder::new(rest).ok().and_then(|mut d| {
            d.window_log_max(24).ok()?;
            let mut out = Vec::new();
            d.take(16 << 20).read_to_end(&mut out).ok()?;
            Some(out)
        });
        (rest.to_vec(), tar)
    };
    if let Some(tar) = &tar {
        oracle::assert_readers_agree(tar);
    }
    // One scratch directory for the whole run; each input unpacks into `tree` inside it.
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let base = BASE.get_or_init(|| tempfile::tempdir().expect("a scratch directory"));
    let dest = base.path().join("tree");
    let limits = Limits {
        max_entries: 64,
        max_unpacked_bytes: 16 << 20,
        min_free_bytes: 0,
        min_free_inodes: 0,
        ..Limits::default()
    };
    match unpack(&input[..], &dest, &limits) {
        Err(_) => assert!(!dest.exists(), "refused but the tree is still there"),
        Ok(s) => {
            let inodes = check_tree(&dest);
            assert_eq!(inodes, s.files + s.dirs + s.symlinks, "{s:?}");
            assert!(inodes <= limits.max_entries, "{inodes} inodes: {s:?}");
        }
    }
    let beside = std::fs::read_dir(base.path())
        .map(|r| {
            r.filter(|e| e.as_ref().map_or(true, |e| e.file_name() != "tree"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(beside, 0, "something appeared beside the tree");
    let _ = std::fs::remove_dir_all(&dest);
});
