//! Tidy: rules about the repository's text that no compiler checks (issue 13).
//!
//! Reads the working tree at `CARGO_MANIFEST_DIR/..` (the repository root), skipping `target/`,
//! `.git/`, `.sdci-cache/`, `dom0-service/fuzz/target/` and `__pycache__/` directories, and never
//! following a symlink. Every failure names `file:line`.
//!
//! 1. **Citations resolve.** Every `contracts §N` (or `CONTRACTS.md §N`, also in a chain such as
//!    `contracts §2/§6` or `CONTRACTS.md §3 and §7`) in any text file has a heading `## §N …` in
//!    `CONTRACTS.md`.
//! 2. **Every `.rs` file opens with a `//!` doc** (its first non-empty line) saying what it owns;
//!    test files and binaries included.
//! 3. **No text points at a file outside the repository.** In `.rs`, `.md`, `.py`, `.sh`,
//!    `.toml`, `.sls`, `.yml`/`.yaml` files and extension-less shell scripts (a `#!…sh` first
//!    line), a line may not name the development machine's files:
//!    - `/work/…`: the development machine's checkouts;
//!    - `../shared…` (any number of `../`), or a path that starts with `shared/`: the development
//!      machine's shared notes beside the repository;
//!    - `research/<name>.md`: those notes by their short name;
//!    - a document under `/tmp/`: a `/tmp/…` path whose last component ends in `.md`, `.txt`,
//!      `.rst`, `.html` or `.pdf` (scratch notes).
//!
//!    A match counts only at the start of a path (not preceded by a letter, digit, `_`, `-`, `.`
//!    or `/`). Everything else is allowed, in particular the product's own absolute paths
//!    (`/usr/local/bin/sdci-dom0`, `/etc/sdci/…`, `/var/lib/sdci`, `/var/tmp/sdci-agent`,
//!    `/home/user`, `/run/credentials/…`, `/dev/null`) and `/tmp/` paths that are data: guest
//!    paths in the simulator tests, `mktemp /tmp/…` in scripts, member names of hostile archives.
//!    This file names the patterns and is not scanned by this rule. [`KNOWN_OUTSIDE_REFERENCES`]
//!    lists the references that remain in files other work in progress owns; an entry that no
//!    longer matches fails the test, so the list only shrinks.
//! 4. **The host's top-level modules import each other without a cycle.** Every `crate::…`
//!    path in `host/src/**/*.rs` (in `use` trees, braces included, and inline), and every
//!    `super::…` that climbs out of a top-level module, is an edge from the file's top-level
//!    module (`host/src/foo.rs` and `host/src/foo/**` are `foo`) to the one it names; a name
//!    `lib.rs` re-exports (`pub use foo::Bar`) counts as `foo`, an item `lib.rs` defines itself
//!    as no edge. Only modules `lib.rs` declares are part of the graph (`main.rs` and `bin/` are
//!    other crates). A strongly connected component of more than one module is reported with the
//!    `file:line` of each edge of one of its cycles.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// References to files outside the repository that other work in progress still has to remove:
/// (a file, or a folder ending in `/`, relative to the root; the text of the reference). Each
/// must still occur (see rule 3).
const KNOWN_OUTSIDE_REFERENCES: &[(&str, &str)] = &[
    // The unpacker hardening owns these two files.
    ("dom0-service/src/unpack.rs", "research/qubes.md"),
    ("dom0-service/src/privilege.rs", "research/qubes.md"),
    // The hypervisor work owns vsphere/.
    ("vsphere/", "shared/research/vsphere-wire/"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the repository root")
        .to_path_buf()
}

const SKIPPED_DIRS: &[&str] = &["target", ".git", ".sdci-cache", "dom0-service/fuzz/target"];

/// One text file of the repository: its path relative to the root and its contents.
struct TextFile {
    rel: String,
    text: String,
}

impl TextFile {
    fn extension(&self) -> &str {
        let name = self.rel.rsplit('/').next().unwrap_or("");
        name.rsplit_once('.').map_or("", |(_, ext)| ext)
    }
}

/// Every UTF-8 file of the repository (binary files are skipped), sorted by path.
fn repository_files() -> Vec<TextFile> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<TextFile>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path
                .strip_prefix(root)
                .expect("walked paths are under the root")
                .to_string_lossy()
                .replace('\\', "/");
            let meta = std::fs::symlink_metadata(&path).expect("metadata of a walked path");
            if meta.is_dir() {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                if SKIPPED_DIRS.contains(&rel.as_str()) || name.as_deref() == Some("__pycache__") {
                    continue;
                }
                walk(root, &path, out);
            } else if meta.is_file() {
                if let Ok(text) = String::from_utf8(std::fs::read(&path).unwrap_or_default()) {
                    out.push(TextFile { rel, text });
                }
            }
        }
    }
    let root = root();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    assert!(
        out.iter().any(|f| f.rel == "CONTRACTS.md"),
        "the walk did not find CONTRACTS.md under {}",
        root.display()
    );
    out
}

fn fail_with(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what} ({} found):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------
// 1. contracts §N citations
// ------------------------------------------------------------------------------------------

/// The section numbers cited on one line: after `contracts §` or `CONTRACTS.md §` (any case),
/// then every further `§N` joined by `/`, `,`, `and`, `or`, `-` or `–`.
fn cited_sections(line: &str) -> Vec<u32> {
    let lower = line.to_lowercase();
    let mut out = Vec::new();
    for lead in ["contracts §", "contracts.md §"] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(lead) {
            let mut rest = &lower[from + at + lead.len()..];
            from += at + lead.len();
            loop {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let Ok(n) = digits.parse() else { break };
                out.push(n);
                rest = &rest[digits.len()..];
                let joined = ["/§", ", §", " and §", " or §", "-§", "–§", " / §"]
                    .iter()
                    .find_map(|j| rest.strip_prefix(j));
                match joined {
                    Some(r) => rest = r,
                    None => break,
                }
            }
        }
    }
    out
}

/// The numbers of the `## §N …` headings of CONTRACTS.md.
fn contract_headings(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("## §"))
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn every_contracts_citation_has_its_heading_in_contracts_md() {
    let files = repository_files();
    let contracts = files
        .iter()
        .find(|f| f.rel == "CONTRACTS.md")
        .expect("CONTRACTS.md is at the repository root");
    let headings = contract_headings(&contracts.text);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for n in &headings {
        if !seen.insert(*n) {
            problems.push(format!("CONTRACTS.md: two headings `## §{n}`"));
        }
    }
    let mut citations = 0;
    for f in &files {
        for (i, line) in f.text.lines().enumerate() {
            for n in cited_sections(line) {
                citations += 1;
                if !seen.contains(&n) {
                    problems.push(format!(
                        "{}:{}: cites contracts §{n}, but CONTRACTS.md has no `## §{n}` heading",
                        f.rel,
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(citations > 0, "no citation found: is the scanner broken?");
    fail_with("dangling contracts citations", &problems);
}

// ------------------------------------------------------------------------------------------
// 2. module docs
// ------------------------------------------------------------------------------------------

#[test]
fn every_rust_file_opens_with_a_module_doc_comment() {
    let mut problems = Vec::new();
    for f in repository_files().iter().filter(|f| f.extension() == "rs") {
        let first = f
            .text
            .lines()
            .enumerate()
            .find(|(_, l)| !l.trim().is_empty());
        match first {
            Some((_, l)) if l.trim_start().starts_with("//!") => {}
            Some((i, l)) => problems.push(format!(
                "{}:{}: the first line is {:?}, not a `//!` doc saying what the file owns",
                f.rel,
                i + 1,
                l.chars().take(60).collect::<String>()
            )),
            None => problems.push(format!("{}:1: empty file, no `//!` doc", f.rel)),
        }
    }
    fail_with(".rs files without a module doc", &problems);
}

// ------------------------------------------------------------------------------------------
// 3. references outside the repository
// ------------------------------------------------------------------------------------------

fn scanned_for_outside_references(f: &TextFile) -> bool {
    if f.rel == "tests/tests/tidy.rs" {
        return false;
    }
    match f.extension() {
        "rs" | "md" | "py" | "sh" | "toml" | "sls" | "yml" | "yaml" => true,
        "" => f
            .text
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("#!") && l.contains("sh")),
        _ => false,
    }
}

fn starts_a_path(line: &str, at: usize) -> bool {
    !matches!(line[..at].chars().next_back(),
        Some(c) if c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

/// The first reference to the development machine's files on a line (rule 3), if any.
fn outside_reference(line: &str) -> Option<String> {
    let token_at = |at: usize| -> String {
        line[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '`' | '"' | '\'' | ')' | ','))
            .collect()
    };
    for (at, _) in line.match_indices("/work/") {
        if starts_a_path(line, at) {
            return Some(token_at(at));
        }
    }
    for (at, _) in line.match_indices("../") {
        if !starts_a_path(line, at) {
            continue;
        }
        let mut rest = &line[at..];
        while let Some(r) = rest.strip_prefix("../") {
            rest = r;
        }
        if rest.starts_with("shared")
            && !rest["shared".len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            return Some(token_at(at));
        }
    }
    for (at, _) in line.match_indices("shared/") {
        let named = line[at + "shared/".len()..].starts_with(|c: char| c.is_alphabetic());
        if starts_a_path(line, at) && named {
            return Some(token_at(at));
        }
    }
    for (at, _) in line.match_indices("research/") {
        let token = token_at(at);
        let name = &token["research/".len()..];
        if starts_a_path(line, at) && name.ends_with(".md") && name.len() > 3 && !name.contains('/')
        {
            return Some(token);
        }
    }
    for (at, _) in line.match_indices("/tmp/") {
        let token = token_at(at);
        let last = token.rsplit('/').next().unwrap_or("");
        let document = [".md", ".txt", ".rst", ".html", ".pdf"]
            .iter()
            .any(|ext| last.trim_end_matches(['.', ':', ';']).ends_with(ext));
        if starts_a_path(line, at) && document {
            return Some(token);
        }
    }
    None
}

#[test]
fn no_text_points_at_a_file_outside_the_repository() {
    let mut problems = Vec::new();
    let mut known_seen = vec![false; KNOWN_OUTSIDE_REFERENCES.len()];
    for f in repository_files()
        .iter()
        .filter(|f| scanned_for_outside_references(f))
    {
        for (i, line) in f.text.lines().enumerate() {
            let Some(reference) = outside_reference(line) else {
                continue;
            };
            let known = KNOWN_OUTSIDE_REFERENCES.iter().position(|(file, text)| {
                let here = *file == f.rel || file.ends_with('/') && f.rel.starts_with(file);
                here && line.contains(text)
            });
            match known {
                Some(k) => known_seen[k] = true,
                None => problems.push(format!(
                    "{}:{}: {reference:?} is a file of the development machine, not of the \
                     repository; say it here (CONTRACTS.md, a README) or name the upstream source",
                    f.rel,
                    i + 1
                )),
            }
        }
    }
    for (k, seen) in known_seen.iter().enumerate() {
        if !seen {
            let (file, text) = KNOWN_OUTSIDE_REFERENCES[k];
            problems.push(format!(
                "{file}: no longer refers to {text:?}: remove its entry from \
                 KNOWN_OUTSIDE_REFERENCES in tests/tests/tidy.rs"
            ));
        }
    }
    fail_with("references to files outside the repository", &problems);
}

// ------------------------------------------------------------------------------------------
// 4. the host's module graph
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// At `b[i]`, the start of a raw string `r"` or `r#…"`: the number of `#`.
fn raw_string_start(b: &[char], i: usize) -> Option<usize> {
    if b[i] != 'r' {
        return None;
    }
    let hashes = b[i + 1..].iter().take_while(|c| **c == '#').count();
    (b.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// Rust source as tokens with their line numbers: comments, string, char and number literals
/// and lifetimes dropped; `$crate` becomes `$` + `crate` (and is skipped by the callers).
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&b, i) {
            // A raw string: r#…"…"#….
            i += 2 + hashes;
            while i < b.len() {
                if b[i] == '"' && (0..hashes).all(|h| b.get(i + 1 + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                if b[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F}') or a lifetime ('a).
            if next == Some('\\') {
                i += 3;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < b.len() && ident_char(b[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() {
            while i < b.len() && (ident_char(b[i]) || b[i] == '.' && b.get(i + 1) != Some(&'.')) {
                i += 1;
            }
        } else if ident_char(c) {
            let start = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            let mut word: String = b[start..i].iter().collect();
            if word == "r" && b.get(i) == Some(&'#') {
                // A raw identifier, r#type.
                i += 1;
                let s = i;
                while i < b.len() && ident_char(b[i]) {
                    i += 1;
                }
                word = b[s..i].iter().collect();
            } else if word == "b" && b.get(i) == Some(&'\'') {
                // A byte literal b'x': let the next round drop the char literal.
                continue;
            }
            out.push((Tok::Ident(word), line));
        } else if c == ':' && next == Some(':') {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// A path as written, relative to where it is: `crate::a::b`, `super::super::x`, `self::y`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    segments: Vec<String>,
    line: usize,
    /// The inline modules (`mod tests { … }`) the reference sits in, outermost first.
    inline: Vec<String>,
}

/// Collects the leaves of a use tree starting at `toks[i]` (after `use`), with `prefix`.
fn use_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let mut path = prefix;
    let mut line = toks.get(i).map_or(0, |t| t.1);
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Ident(w) if w == "as" => {
                // `as alias`: the alias does not change where the path points.
                i += 2;
            }
            Tok::Ident(w) => {
                path.push(w.clone());
                line = toks[i].1;
                i += 1;
            }
            Tok::Path => i += 1,
            Tok::Punct('{') => {
                i += 1;
                loop {
                    i = use_tree(toks, i, path.clone(), out);
                    match toks.get(i).map(|t| &t.0) {
                        Some(Tok::Punct(',')) => i += 1,
                        Some(Tok::Punct('}')) => {
                            return i + 1;
                        }
                        _ => return i,
                    }
                    if matches!(toks.get(i).map(|t| &t.0), Some(Tok::Punct('}'))) {
                        return i + 1;
                    }
                }
            }
            Tok::Punct('*') => {
                path.push("*".into());
                i += 1;
            }
            _ => break,
        }
    }
    if !path.is_empty() {
        out.push((path, line));
    }
    i
}

/// Every `crate::…`, `super::…` and `self::…` path of a file (use trees expanded), with the
/// inline modules around it.
fn references(src: &str) -> Vec<Reference> {
    let toks = tokens(src);
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    let in_mods = |inline: &[(String, usize)]| inline.iter().map(|m| m.0.clone()).collect();
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|m| m.1 == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((name.clone(), depth));
                }
            }
            Tok::Ident(w) if w == "use" => {
                let mut leaves = Vec::new();
                let end = use_tree(&toks, i + 1, Vec::new(), &mut leaves);
                for (segments, line) in leaves {
                    if matches!(
                        segments.first().map(String::as_str),
                        Some("crate" | "super" | "self")
                    ) {
                        out.push(Reference {
                            segments,
                            line,
                            inline: in_mods(&inline),
                        });
                    }
                }
                i = end.max(i + 1);
                continue;
            }
            Tok::Ident(w) if matches!(w.as_str(), "crate" | "super") => {
                let after_dollar = i > 0 && toks[i - 1].0 == Tok::Punct('$');
                let after_path = i > 0 && toks[i - 1].0 == Tok::Path;
                if !after_dollar && !after_path {
                    let mut segments = vec![w.clone()];
                    let mut j = i + 1;
                    while let (Some((Tok::Path, _)), Some((Tok::Ident(s), _))) =
                        (toks.get(j), toks.get(j + 1))
                    {
                        segments.push(s.clone());
                        j += 2;
                    }
                    if segments.len() > 1 {
                        out.push(Reference {
                            segments,
                            line: toks[i].1,
                            inline: in_mods(&inline),
                        });
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The top-level module a reference points into, seen from a file whose module path is
/// `file_mods` (e.g. `["store", "jobs"]`); `None` for the crate root's own items or the file's
/// own top-level module.
fn target_module(
    r: &Reference,
    file_mods: &[String],
    modules: &BTreeSet<String>,
    reexports: &BTreeMap<String, String>,
) -> Option<String> {
    let mut here: Vec<String> = file_mods.iter().chain(&r.inline).cloned().collect();
    let mut rest = r.segments.as_slice();
    match rest.first().map(String::as_str) {
        Some("crate") => {
            here.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                here.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let top = match here.first() {
        Some(m) => m.clone(),
        None => {
            let first = rest.first()?;
            if modules.contains(first) {
                first.clone()
            } else {
                reexports.get(first)?.clone()
            }
        }
    };
    (Some(&top) != file_mods.first()).then_some(top)
}

/// The modules `lib.rs` declares, and the names it re-exports from one of them.
fn crate_root(lib: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let toks = tokens(lib);
    let mut modules = BTreeSet::new();
    for w in toks.windows(3) {
        if let [(Tok::Ident(m), _), (Tok::Ident(name), _), (Tok::Punct(';'), _)] = w {
            if m == "mod" {
                modules.insert(name.clone());
            }
        }
    }
    let mut reexports = BTreeMap::new();
    let mut i = 0;
    while i < toks.len() {
        let is_pub_use = matches!(&toks[i].0, Tok::Ident(w) if w == "use")
            && i > 0
            && matches!(&toks[i - 1].0, Tok::Ident(w) if w == "pub");
        if is_pub_use {
            let mut leaves = Vec::new();
            i = use_tree(&toks, i + 1, Vec::new(), &mut leaves);
            for (path, _) in leaves {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let path = path.strip_prefix(&["crate"]).unwrap_or(&path);
                if let (Some(first), Some(last)) = (path.first(), path.last()) {
                    if modules.contains(*first) && path.len() > 1 && *last != "*" {
                        reexports.insert((*last).to_owned(), (*first).to_owned());
                    }
                }
            }
        }
        i += 1;
    }
    // `pub use x::Y as Z`: use_tree keeps the path's last segment (Y); add the alias too.
    for w in toks.windows(3) {
        if let [(Tok::Ident(y), _), (Tok::Ident(a), _), (Tok::Ident(z), _)] = w {
            if a == "as" {
                if let Some(m) = reexports.get(y).cloned() {
                    reexports.insert(z.clone(), m);
                }
            }
        }
    }
    (modules, reexports)
}

/// The edges between top-level modules: (from, to) → the first `file:line` that makes it.
type Graph = BTreeMap<(String, String), String>;

fn host_module_graph(src_dir: &Path, rel_prefix: &str) -> Graph {
    let lib = std::fs::read_to_string(src_dir.join("lib.rs")).expect("host/src/lib.rs");
    let (modules, reexports) = crate_root(&lib);
    let mut files = Vec::new();
    fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                rs_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    rs_files(src_dir, &mut files);
    let mut graph = Graph::new();
    for path in files {
        let rel = path
            .strip_prefix(src_dir)
            .expect("under src")
            .with_extension("");
        let mut mods: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if mods.last().is_some_and(|m| m == "mod") {
            mods.pop();
        }
        let Some(top) = mods.first().cloned() else {
            continue;
        };
        if !modules.contains(&top) {
            continue; // lib.rs, main.rs, bin/, and files no module declares
        }
        let src = std::fs::read_to_string(&path).expect("a host source file");
        for r in references(&src) {
            if let Some(to) = target_module(&r, &mods, &modules, &reexports) {
                let at = format!(
                    "{rel_prefix}{}:{}",
                    path.strip_prefix(src_dir)
                        .expect("under src")
                        .to_string_lossy(),
                    r.line
                );
                graph.entry((top.clone(), to)).or_insert(at);
            }
        }
    }
    graph
}

fn successors<'g>(graph: &'g Graph, n: &str) -> Vec<&'g String> {
    graph
        .keys()
        .filter(|(a, _)| a == n)
        .map(|(_, b)| b)
        .collect()
}

/// Tarjan's strongly connected components.
struct Tarjan<'g> {
    graph: &'g Graph,
    index: BTreeMap<&'g String, usize>,
    low: BTreeMap<&'g String, usize>,
    stack: Vec<&'g String>,
    on_stack: BTreeSet<&'g String>,
    sccs: Vec<Vec<&'g String>>,
}

impl<'g> Tarjan<'g> {
    fn visit(&mut self, n: &'g String) {
        let i = self.index.len();
        self.index.insert(n, i);
        self.low.insert(n, i);
        self.stack.push(n);
        self.on_stack.insert(n);
        for m in successors(self.graph, n) {
            if !self.index.contains_key(m) {
                self.visit(m);
                let low = self.low[n].min(self.low[m]);
                self.low.insert(n, low);
            } else if self.on_stack.contains(m) {
                let low = self.low[n].min(self.index[m]);
                self.low.insert(n, low);
            }
        }
        if self.low[n] == self.index[n] {
            let mut scc = Vec::new();
            while let Some(m) = self.stack.pop() {
                self.on_stack.remove(m);
                scc.push(m);
                if m == n {
                    break;
                }
            }
            if scc.len() > 1 {
                self.sccs.push(scc);
            }
        }
    }
}

/// Each strongly connected component of more than one module (its members, by name) with one
/// of its cycles: the shortest way from its first member back to itself.
fn cycles(graph: &Graph) -> Vec<(Vec<String>, Vec<String>)> {
    let nodes: BTreeSet<&String> = graph.keys().flat_map(|(a, b)| [a, b]).collect();
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        sccs: Vec::new(),
    };
    for n in nodes {
        if !t.index.contains_key(n) {
            t.visit(n);
        }
    }
    let mut out: Vec<(Vec<String>, Vec<String>)> = t
        .sccs
        .iter()
        .map(|scc| {
            let members: BTreeSet<&String> = scc.iter().copied().collect();
            let start = *members.iter().next().expect("a non-empty component");
            let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut last = None;
            'search: while let Some(n) = queue.pop_front() {
                for m in successors(graph, n) {
                    if m == start {
                        last = Some(n);
                        break 'search;
                    }
                    if members.contains(m) && !prev.contains_key(m) {
                        prev.insert(m, n);
                        queue.push_back(m);
                    }
                }
            }
            let mut n = last.expect("a strongly connected component has a cycle");
            let mut path = vec![n.clone()];
            while n != start {
                n = prev[n];
                path.push(n.clone());
            }
            path.reverse();
            (members.into_iter().cloned().collect(), path)
        })
        .collect();
    out.sort();
    out
}

fn describe_cycle(members: &[String], cycle: &[String], graph: &Graph) -> String {
    let mut s = format!(
        "{} modules import each other in a circle: {}\n    one cycle: {} → {}:",
        members.len(),
        members.join(", "),
        cycle.join(" → "),
        cycle[0]
    );
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        let at = graph
            .get(&(from.clone(), to.clone()))
            .map_or("?", String::as_str);
        s.push_str(&format!("\n      {from} → {to}   ({at})"));
    }
    s
}

#[test]
fn host_top_level_modules_import_each_other_without_a_cycle() {
    let graph = host_module_graph(&root().join("host/src"), "host/src/");
    assert!(!graph.is_empty(), "no edge found: is the scanner broken?");
    let problems: Vec<String> = cycles(&graph)
        .iter()
        .map(|(members, cycle)| describe_cycle(members, cycle, &graph))
        .collect();
    fail_with(
        "import cycles among host/src's top-level modules (imports must flow one way: config \
         and domain → store → gateways → orchestration → surfaces → server)",
        &problems,
    );
}

// ------------------------------------------------------------------------------------------
// The scanners themselves
// ------------------------------------------------------------------------------------------

#[test]
fn citations_are_found_alone_in_chains_and_by_file_name() {
    let s = '§';
    assert_eq!(cited_sections(&format!("see contracts {s}1.")), [1]);
    assert_eq!(cited_sections(&format!("(contracts {s}2/{s}6)")), [2, 6]);
    assert_eq!(
        cited_sections(&format!("CONTRACTS.md {s}3 and {s}7; Contracts {s}12")),
        [12, 3, 7]
    );
    assert!(cited_sections(&format!("numbered {s}1–{s}8")).is_empty());
    assert!(cited_sections("a `contracts §N` citation").is_empty());
}

#[test]
fn outside_references_are_the_development_machines_files_only() {
    for bad in [
        "see `/tmp/contracts.md` §2",
        "The design is `../shared/design.md`.",
        "facts in ../../shared/research/",
        "(copied from `shared/research/vsphere-wire/`)",
        "(`research/qubes.md` §5.4)",
        "cd /work/main && cargo test",
    ] {
        assert!(outside_reference(bad).is_some(), "{bad}");
    }
    for good in [
        "/usr/local/bin/sdci-dom0 launch",
        "/etc/sdci/agent.toml, /var/lib/sdci, /var/tmp/sdci-agent, /home/user, /dev/null",
        "/run/credentials/sdci-host.service/github-token",
        "tarball=$(mktemp /tmp/sd-proj.XXXXXX.tar)",
        "vim.upload(&sim, &a, \"/tmp/x\", b\"one\")",
        "b.file(\"/tmp/sdci-escape\", 0o644, b\"x\");",
        "let shared: S = Arc::new(Shared { .. }); shared/2",
        "tests/research/notes.md is in the repository",
        "/var/tmp/notes.md is a product path",
    ] {
        assert_eq!(outside_reference(good), None, "{good}");
    }
}

fn graph_of(files: &[(&str, &str)]) -> Graph {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    host_module_graph(dir.path(), "")
}

fn edges(g: &Graph) -> Vec<(&str, &str)> {
    g.keys().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

#[test]
fn use_trees_inline_paths_and_reexports_are_edges() {
    let g = graph_of(&[
        (
            "lib.rs",
            "//! r\npub mod a; pub mod b; pub mod c; pub mod d;\npub use d::Thing;\n\
             pub struct HostError;",
        ),
        (
            "a.rs",
            "//! a\nuse crate::{b::{X, Y as Z}, HostError};\nfn f() { crate::c::g(); \
             let _ = crate::Thing; let s = \"crate::d::nope\"; }",
        ),
        ("b/mod.rs", "//! b\nmod inner;\n"),
        (
            "b/inner.rs",
            "//! b::inner\nuse super::super::c::K; use super::Local;",
        ),
    ]);
    assert_eq!(edges(&g), [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c")]);
    assert_eq!(g[&("a".into(), "b".into())], "a.rs:2");
    assert_eq!(g[&("b".into(), "c".into())], "b/inner.rs:2");
}

#[test]
fn super_inside_an_inline_module_stays_in_the_file() {
    let g = graph_of(&[
        ("lib.rs", "//! r\npub mod a; pub mod b;"),
        (
            "a.rs",
            "//! a\n#[cfg(test)]\nmod tests {\n    use super::b;\n    use super::*;\n}\n",
        ),
        ("b.rs", "//! b\n"),
    ]);
    assert!(edges(&g).is_empty(), "{g:?}");
}

#[test]
fn a_cycle_is_reported_with_the_file_and_line_of_each_edge() {
    let g = graph_of(&[
        (
            "lib.rs",
            "//! r\npub mod a; pub mod b; pub mod c; pub mod d;",
        ),
        ("a.rs", "//! a\nuse crate::b::X;"),
        ("b.rs", "//! b\n\nuse crate::c::Y;"),
        ("c.rs", "//! c\nfn f() { crate::a::z() }"),
        ("d.rs", "//! d\nuse crate::a::X;"),
    ]);
    let found = cycles(&g);
    let abc = vec!["a".to_owned(), "b".into(), "c".into()];
    assert_eq!(found, [(abc.clone(), abc)]);
    let text = describe_cycle(&found[0].0, &found[0].1, &g);
    assert!(
        text.starts_with("3 modules import each other in a circle: a, b, c"),
        "{text}"
    );
    assert!(text.contains("a → b   (a.rs:2)"), "{text}");
    assert!(text.contains("b → c   (b.rs:3)"), "{text}");
    assert!(text.contains("c → a   (c.rs:2)"), "{text}");
}

#[test]
fn an_acyclic_graph_has_no_cycle() {
    let g = graph_of(&[
        ("lib.rs", "//! r\npub mod a; pub mod b;"),
        ("a.rs", "//! a\nuse crate::b::X;"),
        ("b.rs", "//! b\n"),
    ]);
    assert!(cycles(&g).is_empty());
}
