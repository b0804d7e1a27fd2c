//! The differential oracle for `sdci_dom0::tarstream`, shared by `tests/unpack_props.rs` and the
//! fuzz target (`fuzz/fuzz_targets/unpack.rs` includes this file by path): every tar stream
//! `tarstream` reads to its end without an error, the `tar` crate must read as the same members
//! (names, types, sizes, permission bits, link targets). A disagreement is an archive that two
//! readers see differently, the raw material of a checker-versus-extractor attack.
#![allow(dead_code, clippy::unwrap_used)]

use sdci_dom0::tarstream::{Kind, TarStream};

/// What both readers must agree on for each member.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub path: Vec<u8>,
    pub kind: u8,
    pub size: u64,
    pub mode: u32,
    pub link: Vec<u8>,
}

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::File => b'0',
        Kind::HardLink => b'1',
        Kind::Symlink => b'2',
        Kind::CharDevice => b'3',
        Kind::BlockDevice => b'4',
        Kind::Dir => b'5',
        Kind::Fifo => b'6',
        Kind::Other(b) => b,
    }
}

fn is_link(kind: u8) -> bool {
    kind == b'1' || kind == b'2'
}

/// The members as `tarstream` reads them, or `None` when it refuses the stream.
pub fn tarstream_members(tar: &[u8]) -> Option<Vec<Seen>> {
    let mut t = TarStream::new(tar);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(m) = t.next_entry().ok()? {
        let kind = kind_byte(m.kind);
        while t.read_data(&mut buf).ok()? > 0 {}
        out.push(Seen {
            path: m.path.into_bytes(),
            kind,
            size: m.size,
            mode: m.mode,
            link: if is_link(kind) {
                m.link.unwrap_or_default().into_bytes()
            } else {
                Vec::new()
            },
        });
    }
    Some(out)
}

/// The members as the `tar` crate reads them, or its error.
pub fn tar_crate_members(tar: &[u8]) -> Result<Vec<Seen>, String> {
    let mut theirs = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let h = e.header();
        let kind = match h.entry_type().as_byte() {
            0 => b'0',
            b => b,
        };
        if kind == b'g' {
            continue; // a PAX global header: consumed by tarstream, yielded by the tar crate
        }
        let mode = h.mode().map_err(|e| format!("mode: {e}"))? & 0o7777;
        let seen = Seen {
            path: e.path_bytes().into_owned(),
            kind,
            size: e.size(),
            mode,
            link: if is_link(kind) {
                e.link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
        };
        std::io::copy(&mut e, &mut std::io::sink()).map_err(|e| format!("data: {e}"))?;
        theirs.push(seen);
    }
    Ok(theirs)
}

/// Panics when `tarstream` accepts `tar` and the `tar` crate reads it differently or not at all.
pub fn assert_readers_agree(tar: &[u8]) {
    let Some(ours) = tarstream_members(tar) else {
        return;
    };
    match tar_crate_members(tar) {
        Ok(theirs) => assert_eq!(
            ours, theirs,
            "tarstream and the tar crate read different members"
        ),
        Err(e) => panic!("tarstream accepted, the tar crate refuses: {e}; tarstream read {ours:?}"),
    }
}
