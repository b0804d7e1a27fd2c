//! Randomized archives against the unpacker (a stable-Rust complement to the cargo-fuzz target
//! in `dom0-service/fuzz`): whatever the archive, unpacking never panics; a refusal leaves
//! nothing behind; an accepted tree holds only files, directories and symlinks that resolve
//! inside it, with no special mode bits, and exactly the inodes the summary counts, never more
//! than `max_entries` (implicit parent directories included); nothing ever appears beside the
//! destination; and whatever `tarstream` accepts, the `tar` crate reads the same way.
#![allow(clippy::unwrap_used)]

#[path = "common/oracle.rs"]
mod oracle;

use proptest::prelude::*;
use sdci_dom0::fixture::TarBuilder;
use sdci_dom0::unpack::{unpack, Limits};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(Debug, Clone)]
enum Op {
    File(String, u32, Vec<u8>),
    Dir(String, u32),
    Symlink(String, String),
    HardLink(String, String),
    Special(String, u8),
    PaxPath(String, String),
    GnuLong(String, String),
    /// A file whose parents are all implicit.
    Deep(String),
}

/// Paths up to 40 components deep (beyond `max_depth`), made of few names so they share
/// parents.
fn deep() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just(".git")], 1..40)
        .prop_map(|v| format!("{}/f", v.join("/")))
}

fn name() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("launcher".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("/etc".to_string()),
        Just("x\u{1b}y".to_string()),
        "[a-z]{1,12}",
    ];
    proptest::collection::vec(part, 1..5).prop_map(|v| v.join("/"))
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("../a".to_string()),
        Just("a".to_string()),
        Just("a/b".to_string()),
        Just("/tmp".to_string()),
        Just("..".to_string()),
        Just("../../x".to_string()),
        Just("b/../..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        name(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(0o644u32),
        Just(0o755),
        Just(0o4755),
        Just(0o1777),
        Just(0o600)
    ];
    prop_oneof![
        4 => (name(), mode.clone(), proptest::collection::vec(any::<u8>(), 0..700))
            .prop_map(|(n, m, d)| Op::File(n, m, d)),
        2 => (name(), mode).prop_map(|(n, m)| Op::Dir(n, m)),
        2 => (name(), target()).prop_map(|(n, t)| Op::Symlink(n, t)),
        1 => (name(), target()).prop_map(|(n, t)| Op::HardLink(n, t)),
        1 => (name(), prop_oneof![Just(b'3'), Just(b'4'), Just(b'6'), Just(b'7'), Just(b'V')])
            .prop_map(|(n, t)| Op::Special(n, t)),
        1 => (name(), name()).prop_map(|(p, n)| Op::PaxPath(p, n)),
        1 => (name(), name()).prop_map(|(p, n)| Op::GnuLong(p, n)),
        2 => deep().prop_map(Op::Deep),
    ]
}

fn build(ops: &[Op]) -> Vec<u8> {
    let mut b = TarBuilder::new();
    for op in ops {
        match op {
            Op::File(n, m, d) => b.file(n, *m, d),
            Op::Dir(n, m) => b.dir(n, *m),
            Op::Symlink(n, t) => b.symlink(n, t),
            Op::HardLink(n, t) => b.hard_link(n, t),
            Op::Special(n, t) => b.raw_header(n, *t, 0o644, 0, ""),
            Op::PaxPath(p, n) => b.pax(&[("path", p)]).file(n, 0o644, b"pax"),
            Op::GnuLong(p, n) => b.gnu_long_name(p).file(n, 0o644, b"gnu"),
            Op::Deep(p) => b.gnu_long_name(p).file("deep", 0o644, b"d"),
        };
    }
    b.finish()
}

/// Checks every inode below `dest` and returns how many there are.
fn check_tree(dest: &Path) -> u64 {
    let root = std::fs::canonicalize(dest).unwrap();
    let mut stack = vec![dest.to_path_buf()];
    let mut inodes = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            inodes += 1;
            assert!(
                !p.file_name().unwrap().eq_ignore_ascii_case(".git"),
                "{p:?}: a .git was unpacked"
            );
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let mode = md.permissions().mode();
            assert_eq!(mode & 0o7000, 0, "{p:?} has special bits");
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                assert!(t.is_relative(), "{p:?} -> {t:?}");
                if let Ok(real) = std::fs::canonicalize(&p) {
                    assert!(real.starts_with(&root), "{p:?} resolves to {real:?}");
                }
            } else if ft.is_dir() {
                stack.push(p);
            } else {
                assert!(ft.is_file(), "{p:?} is not a regular file");
                assert!(
                    mode & 0o777 == 0o644 || mode & 0o777 == 0o755,
                    "{p:?} {mode:o}"
                );
            }
        }
    }
    inodes
}

/// An accepted tree: checked, and its inodes are exactly the summary's, within the cap.
fn check_accepted(dest: &Path, s: &sdci_dom0::unpack::Summary, limits: &Limits) {
    let inodes = check_tree(dest);
    assert_eq!(inodes, s.files + s.dirs + s.symlinks, "{s:?}");
    assert!(inodes <= limits.max_entries, "{inodes} inodes: {s:?}");
}

fn limits() -> Limits {
    Limits {
        max_entries: 50,
        min_free_bytes: 0,
        min_free_inodes: 0,
        ..Limits::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_archive_is_unpacked_inside_or_refused_leaving_nothing(
        ops in proptest::collection::vec(op(), 0..12),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in proptest::option::weighted(0.1, any::<prop::sample::Index>()),
    ) {
        let mut tar = build(&ops);
        for (at, byte) in &flips {
            let i = at.index(tar.len());
            tar[i] ^= byte;
        }
        if let Some(at) = cut {
            let n = at.index(tar.len());
            tar.truncate(n);
        }
        oracle::assert_readers_agree(&tar);
        let compressed = zstd::encode_all(&tar[..], 1).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tree");
        match unpack(&compressed[..], &dest, &limits()) {
            Ok(s) => check_accepted(&dest, &s, &limits()),
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(!dest.exists(), "refused ({e}) but the tree is still there");
            }
        }
        let beside: Vec<_> = std::fs::read_dir(tmp.path()).unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "tree")
            .collect();
        prop_assert!(beside.is_empty(), "{beside:?}");
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_leave_nothing_when_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        compress in any::<bool>(),
    ) {
        let input = if compress { zstd::encode_all(&bytes[..], 1).unwrap() } else { bytes };
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tree");
        if !compress {
            oracle::assert_readers_agree(&input);
        }
        match unpack(&input[..], &dest, &limits()) {
            Err(_) => prop_assert!(!dest.exists()),
            Ok(s) => check_accepted(&dest, &s, &limits()),
        }
    }

    #[test]
    fn implicit_directories_count_against_max_entries_exactly(
        paths in proptest::collection::btree_set(
            proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..8),
            1..12,
        ),
        max_entries in 1u64..80,
    ) {
        // Files named `f` below directories named a/b/c, never listed: every directory is
        // implicit. The tree needs one inode per distinct directory prefix and one per file.
        let mut b = TarBuilder::new();
        let mut dirs = std::collections::BTreeSet::new();
        for p in &paths {
            for i in 1..=p.len() {
                dirs.insert(p[..i].join("/"));
            }
            b.file(&format!("{}/f", p.join("/")), 0o644, b"x");
        }
        let needed = (dirs.len() + paths.len()) as u64;
        let limits = Limits { max_entries, ..limits() };
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tree");
        let got = unpack(&zstd::encode_all(&b.finish()[..], 1).unwrap()[..], &dest, &limits);
        match got {
            Ok(s) => {
                prop_assert!(needed <= max_entries, "{needed} inodes accepted under a cap of {max_entries}");
                prop_assert_eq!(s.dirs, dirs.len() as u64);
                check_accepted(&dest, &s, &limits);
            }
            Err(e) => {
                prop_assert!(needed > max_entries, "refused although {needed} <= {max_entries}: {e}");
                prop_assert!(e.to_string().contains("more than"), "{e}");
                prop_assert!(!dest.exists());
            }
        }
    }
}

/// The archives `tarstream` refuses because readers disagree on them. For each, the `tar` crate
/// names the file one way and a length-respecting, last-record-wins, PAX-first reader (what
/// `tarstream` was before the oracle) another: an archive a checker and an extractor would see
/// differently.
#[test]
fn archives_that_readers_disagree_on_are_refused_by_tarstream() {
    let newline = {
        let mut b = TarBuilder::new();
        // A PAX value holding a newline and a well-formed fake record: the tar crate splits
        // records at newlines and finds `path=evil` first.
        b.pax(&[("comment", "x\n13 path=evil"), ("path", "good")]);
        b.file("header-name", 0o644, b"data");
        b.finish()
    };
    let both_names = {
        let mut b = TarBuilder::new();
        b.gnu_long_name("gnu-name");
        b.pax(&[("path", "pax-name")]);
        b.file("header-name", 0o644, b"");
        b.finish()
    };
    let twice = {
        let mut b = TarBuilder::new();
        b.pax(&[("path", "second"), ("path", "first")]);
        b.file("header-name", 0o644, b"");
        b.finish()
    };
    let global_between = {
        let mut b = TarBuilder::new();
        b.pax(&[("path", "pax-name")]);
        b.pax_global(&[("comment", "c")]);
        b.file("header-name", 0o644, b"");
        b.finish()
    };
    for (what, tar, tar_crate_reads, other_reading) in [
        ("a newline in a PAX record", newline, "evil", "good"),
        (
            "a PAX path and a GNU long name",
            both_names,
            "gnu-name",
            "pax-name",
        ),
        ("a PAX key twice", twice, "second", "first"),
        (
            "a global header in between",
            global_between,
            "header-name",
            "pax-name",
        ),
    ] {
        let theirs = oracle::tar_crate_members(&tar).unwrap();
        let file = theirs.iter().find(|m| m.kind == b'0').unwrap();
        assert_eq!(file.path, tar_crate_reads.as_bytes(), "{what}");
        assert_ne!(tar_crate_reads, other_reading);
        assert!(
            oracle::tarstream_members(&tar).is_none(),
            "{what}: accepted by tarstream"
        );
    }
}
