//! Fuzzes the hardened unpacker: the input is a tar stream (compressed here, so the fuzzer
//! explores tar structure rather than zstd's checksums), or, when the first byte is odd, raw
//! bytes handed to the zstd decoder. Properties: no panic; a refusal leaves no tree; an accepted
//! tree contains only files, directories and relative symlinks that resolve inside it, without
//! setuid/setgid/sticky bits; nothing appears beside the tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdci_dom0::unpack::{unpack, Limits};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

fn check_tree(dest: &Path) {
    let root = std::fs::canonicalize(dest).expect("tree exists");
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("readable") {
            let p = e.expect("entry").path();
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
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = if mode & 1 == 0 {
        match zstd::encode_all(rest, 1) {
            Ok(c) => c,
            Err(_) => return,
        }
    } else {
        rest.to_vec()
    };
    // One scratch directory for the whole run; each input unpacks into `tree` inside it.
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let base = BASE.get_or_init(|| tempfile::tempdir().expect("a scratch directory"));
    let dest = base.path().join("tree");
    let limits = Limits {
        max_entries: 64,
        max_unpacked_bytes: 16 << 20,
        min_free_bytes: 0,
        ..Limits::default()
    };
    match unpack(&input[..], &dest, &limits) {
        Err(_) => assert!(!dest.exists(), "refused but the tree is still there"),
        Ok(_) => check_tree(&dest),
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
