//! Test material shared by the tests, the benchmark and the fuzz target: a raw tar writer that
//! can write what well-behaved tar libraries refuse to (hostile archives), and generators of
//! trees shaped like SecureDrop Workstation's (at HEAD when measured: 220 tracked files,
//! 3 relative symlinks under `launcher/`, 24 executables).
//!
//! Not used by the service itself. Deterministic: the same call writes the same bytes.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes tar bytes header by header (POSIX ustar magic), with no validation at all.
#[derive(Default)]
pub struct TarBuilder {
    bytes: Vec<u8>,
}

impl TarBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A header block only. `name` and `link` are cut to their 100-byte fields.
    pub fn raw_header(
        &mut self,
        name: &str,
        typeflag: u8,
        mode: u32,
        size: u64,
        link: &str,
    ) -> &mut Self {
        self.raw_header_bytes(name.as_bytes(), typeflag, mode, size, link)
    }

    /// [`Self::raw_header`] with a name that need not be UTF-8.
    pub fn raw_header_bytes(
        &mut self,
        name: &[u8],
        typeflag: u8,
        mode: u32,
        size: u64,
        link: &str,
    ) -> &mut Self {
        let mut h = [0u8; 512];
        put(&mut h[0..100], name);
        put(&mut h[100..108], format!("{mode:07o}\0").as_bytes());
        put(&mut h[108..116], b"0001750\0");
        put(&mut h[116..124], b"0001750\0");
        if size < 0o77777777777 {
            put(&mut h[124..136], format!("{size:011o}\0").as_bytes());
        } else {
            // GNU base-256 for sizes beyond 8 GiB.
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        put(&mut h[136..148], b"14712345670\0");
        h[156] = typeflag;
        put(&mut h[157..257], link.as_bytes());
        put(&mut h[257..265], b"ustar\x0000");
        put(&mut h[265..297], b"user");
        put(&mut h[297..329], b"user");
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        put(&mut h[148..156], format!("{sum:06o}\0 ").as_bytes());
        self.bytes.extend_from_slice(&h);
        self
    }

    /// Member data, padded to the block size.
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw_header(name, b'0', mode, data.len() as u64, "");
        self.data(data)
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw_header(name, b'5', mode, 0, "")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw_header(name, b'2', 0o777, 0, target)
    }

    pub fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw_header(name, b'1', 0o644, 0, target)
    }

    /// A PAX extended header (`x`) for the next member.
    pub fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let data = pax_records(records);
        self.raw_header("PaxHeaders/x", b'x', 0o644, data.len() as u64, "");
        self.data(&data)
    }

    /// A PAX global header (`g`), as `git archive` writes one with the commit id.
    pub fn pax_global(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let data = pax_records(records);
        self.raw_header("pax_global_header", b'g', 0o666, data.len() as u64, "");
        self.data(&data)
    }

    /// A GNU long-name record (`L`) for the next member.
    pub fn gnu_long_name(&mut self, name: &str) -> &mut Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.raw_header("././@LongLink", b'L', 0o644, data.len() as u64, "");
        self.data(&data)
    }

    /// The bytes so far, without an end-of-archive marker.
    pub fn unterminated(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The archive with its end-of-archive marker (two zero blocks).
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn pax_records(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        // The length counts its own digits.
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

/// What a generated tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeShape {
    pub files: usize,
    pub symlinks: usize,
    pub executables: usize,
    pub bytes: u64,
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Text-like bytes (compress about 3:1, like source code).
    pub fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "def", "self", "return", "import", "qubes", "vm", "salt", "sd", "dom0", "if", "else",
            "for", "in", "None", "True", "config", "path", "test", "assert", "the",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            let w = WORDS[self.below(WORDS.len() as u64) as usize];
            out.extend_from_slice(w.as_bytes());
            out.push(if self.below(9) == 0 { b'\n' } else { b' ' });
            if self.below(50) == 0 {
                out.extend_from_slice(format!("{:x}", self.next_u64()).as_bytes());
            }
        }
        out.truncate(len);
        out
    }
    /// Incompressible bytes (like the documentation PNGs).
    pub fn binary(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn write_file(root: &Path, rel: &str, data: &[u8], exec: bool) -> std::io::Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::File::create(&p)?;
    f.write_all(data)?;
    let mode = if exec { 0o755 } else { 0o644 };
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
}

/// Writes a tree shaped like SDW's at HEAD into `root` (which must exist): 217 regular files and
/// 3 relative symlinks (220 tracked files), 24 executables, about `total_bytes` in all, most of it
/// in incompressible `docs/images/*.png`.
pub fn sdw_tree(root: &Path, total_bytes: u64) -> std::io::Result<TreeShape> {
    let mut rng = Rng::new(0x5d_c1);
    let mut shape = TreeShape::default();
    let add = |rel: &str, data: Vec<u8>, exec: bool, shape: &mut TreeShape| {
        shape.files += 1;
        shape.executables += usize::from(exec);
        shape.bytes += data.len() as u64;
        write_file(root, rel, &data, exec)
    };
    // 24 executables: scripts run by make and helpers in files/.
    for i in 0..16 {
        let body = [b"#!/bin/sh\nset -e\n".as_slice(), &rng.text(1500)].concat();
        add(&format!("scripts/tool-{i:02}"), body, true, &mut shape)?;
    }
    for i in 0..8 {
        let body = [b"#!/usr/bin/python3\n".as_slice(), &rng.text(3000)].concat();
        add(&format!("files/sdw-admin-{i}.py"), body, true, &mut shape)?;
    }
    for (i, name) in [
        "Makefile",
        "README.md",
        "LICENSE",
        "pyproject.toml",
        ".editorconfig",
    ]
    .iter()
    .enumerate()
    {
        add(name, rng.text(2000 + i * 500), false, &mut shape)?;
    }
    add(
        "files/config.json.example",
        rng.text(600),
        false,
        &mut shape,
    )?;
    add(
        "sd-journalist.sec.example",
        rng.text(3000),
        false,
        &mut shape,
    )?;
    for pkg in ["sdw_notify", "sdw_updater", "sdw_util"] {
        for i in 0..6 {
            add(
                &format!("{pkg}/module_{i}.py"),
                rng.text(4000),
                false,
                &mut shape,
            )?;
        }
    }
    let mut i = 0;
    while shape.files < 217 - 20 {
        let dir = [
            "tests",
            "launcher/tests",
            "securedrop_salt",
            "rpm-build/SPECS",
        ][i % 4];
        add(
            &format!("{dir}/file_{i:03}.py"),
            rng.text(2500),
            false,
            &mut shape,
        )?;
        i += 1;
    }
    // The rest of the budget: 20 images.
    let left = total_bytes.saturating_sub(shape.bytes);
    for i in 0..20 {
        let len = (left / 20) as usize;
        add(
            &format!("docs/images/screenshot-{i:02}.png"),
            rng.binary(len),
            false,
            &mut shape,
        )?;
    }
    for pkg in ["sdw_notify", "sdw_updater", "sdw_util"] {
        std::os::unix::fs::symlink(format!("../{pkg}"), root.join("launcher").join(pkg))?;
        shape.symlinks += 1;
    }
    Ok(shape)
}

/// Writes `files` regular files of mixed content (half text, half incompressible) totalling
/// about `total_bytes`, spread over 2-level directories.
pub fn bulk_tree(root: &Path, total_bytes: u64, files: usize) -> std::io::Result<TreeShape> {
    let mut rng = Rng::new(0xb0_1c);
    let mut shape = TreeShape::default();
    let per = (total_bytes / files.max(1) as u64) as usize;
    for i in 0..files {
        let data = if i % 2 == 0 {
            rng.text(per)
        } else {
            rng.binary(per)
        };
        let rel = format!("d{:02}/e{:02}/f{i:05}", i % 37, i % 11);
        shape.files += 1;
        shape.bytes += data.len() as u64;
        write_file(root, &rel, &data, i % 10 == 0)?;
        shape.executables += usize::from(i % 10 == 0);
    }
    Ok(shape)
}
