//! Randomized archives against the unpacker (a stable-Rust complement to the cargo-fuzz target
//! in `dom0-service/fuzz`): whatever the archive, unpacking never panics; a refusal leaves
//! nothing behind; an accepted tree holds only files, directories and symlinks that resolve
//! inside it, with no special mode bits; and nothing ever appears beside the destination.
#![allow(clippy::unwrap_used)]

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
        };
    }
    b.finish()
}

fn check_tree(dest: &Path) {
    let root = std::fs::canonicalize(dest).unwrap();
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
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
}

fn limits() -> Limits {
    Limits {
        max_entries: 50,
        min_free_bytes: 0,
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
        let compressed = zstd::encode_all(&tar[..], 1).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tree");
        match unpack(&compressed[..], &dest, &limits()) {
            Ok(_) => check_tree(&dest),
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
        if unpack(&input[..], &dest, &limits()).is_err() {
            prop_assert!(!dest.exists());
        } else {
            check_tree(&dest);
        }
    }
}

#[test]
fn legitimate_trees_from_the_generator_are_accepted() {
    let ops = [
        Op::Dir("launcher/".into(), 0o755),
        Op::File("sdw_notify/a.py".into(), 0o644, b"x".to_vec()),
        Op::Symlink("launcher/sdw_notify".into(), "../sdw_notify".into()),
        Op::File("scripts/run".into(), 0o755, b"#!/bin/sh\n".to_vec()),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("tree");
    let s = unpack(
        &zstd::encode_all(&build(&ops)[..], 1).unwrap()[..],
        &dest,
        &limits(),
    )
    .unwrap();
    assert_eq!((s.files, s.symlinks, s.executables), (2, 1, 1));
    check_tree(&dest);
    assert_eq!(
        std::fs::read(dest.join("launcher/sdw_notify/a.py")).unwrap(),
        b"x"
    );
}

#[test]
fn archives_written_by_the_tar_crate_as_the_agent_writes_them_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let shape = sdci_dom0::fixture::sdw_tree(&src, 300_000).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all("securedrop-workstation", &src).unwrap();
    // A name longer than 100 bytes (GNU long-name record).
    let long = format!(
        "securedrop-workstation/{}/deep.txt",
        "long-directory-name".repeat(8)
    );
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o100644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    let dest = tmp.path().join("tree");
    let s = unpack(
        &zstd::encode_all(&bytes[..], 3).unwrap()[..],
        &dest,
        &limits_for_trees(),
    )
    .unwrap();
    assert_eq!(
        (
            s.files as usize,
            s.symlinks as usize,
            s.executables as usize
        ),
        (shape.files + 1, 3, 24)
    );
    check_tree(&dest);
    assert_eq!(std::fs::read(dest.join(&long)).unwrap(), b"abc");
    assert_eq!(
        std::fs::read_link(dest.join("securedrop-workstation/launcher/sdw_util")).unwrap(),
        Path::new("../sdw_util")
    );
}

fn limits_for_trees() -> Limits {
    Limits {
        min_free_bytes: 0,
        ..Limits::default()
    }
}
