//! Randomized checkouts against the results collector (contracts §11), in-process: whatever
//! tree of files, directories, symlinks (to outside secrets, to inside files, to `/`) and FIFOs
//! the steps left, and whichever globs the job names, the collection never reads outside its
//! root, never blocks, collects every regular file the globs match (within the caps) exactly
//! once, lists a skipped entry for every symlink or FIFO a glob's last component matched, and
//! writes a file the host's reading rules accept.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sdci_dom0::results::{collect, Job, ResultsConfig};
use sdci_protocol::results::{EntryKind, ResultsManifest, ResultsSpec, MANIFEST};
use sdci_protocol::Outcome;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "SECRET-OUTSIDE-THE-CHECKOUT";

#[derive(Debug, Clone)]
enum Node {
    File(String),
    Dir(String),
    /// A symlink to: 0 the outside secret file, 1 the outside directory, 2 `/`, 3 a sibling.
    Link(String, u8),
    Fifo(String),
}

fn path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("t.xml"),
            Just("x.log"),
            Just(".h")
        ],
        1..4,
    )
    .prop_map(|v| v.join("/"))
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => path().prop_map(Node::File),
        2 => path().prop_map(Node::Dir),
        2 => (path(), 0u8..4).prop_map(|(p, t)| Node::Link(p, t)),
        1 => path().prop_map(Node::Fifo),
    ]
}

fn glob() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("**/*.xml".to_string()),
        Just("*".to_string()),
        Just("a/*".to_string()),
        Just("**/*".to_string()),
        Just("a/**/x.log".to_string()),
        Just("t.xml".to_string()),
        Just("b/?.xml".to_string()),
    ]
}

/// Makes one node at its full path.
type Make = Box<dyn Fn(&Path)>;

/// Builds the tree; parents are created as directories where needed (a node whose parent is a
/// file or a link is dropped).
fn build(root: &Path, outside: &Path, nodes: &[Node]) {
    for n in nodes {
        let (rel, make): (&str, Make) = match n {
            Node::File(p) => (
                p,
                Box::new(move |full: &Path| {
                    let _ = std::fs::write(full, format!("inside {}\n", full.display()));
                }),
            ),
            Node::Dir(p) => (
                p,
                Box::new(|full: &Path| {
                    let _ = std::fs::create_dir(full);
                }),
            ),
            Node::Link(p, t) => {
                let target = match t {
                    0 => outside.join("secret.xml"),
                    1 => outside.to_path_buf(),
                    2 => "/".into(),
                    _ => "t.xml".into(),
                };
                (
                    p,
                    Box::new(move |full: &Path| {
                        let _ = std::os::unix::fs::symlink(&target, full);
                    }),
                )
            }
            Node::Fifo(p) => (
                p,
                Box::new(|full: &Path| {
                    let _ =
                        nix::unistd::mkfifo(full, nix::sys::stat::Mode::from_bits_truncate(0o600));
                }),
            ),
        };
        let full = root.join(rel);
        let parent = full.parent().unwrap();
        let parent_ok = parent.strip_prefix(root).unwrap().ancestors().all(|a| {
            let p = root.join(a);
            std::fs::symlink_metadata(&p)
                .map(|m| m.is_dir())
                .unwrap_or(true)
        });
        if parent_ok && std::fs::create_dir_all(parent).is_ok() && !full.exists() {
            make(&full);
        }
    }
}

/// The reference: every regular file (not through a symlink) whose path a glob matches.
fn expected(root: &Path, globs: &[String]) -> Vec<String> {
    let mut all = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                walk(root, &p, out);
            } else if md.is_file() {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    walk(root, root, &mut all);
    all.retain(|rel| globs.iter().any(|g| glob_matches(g, rel)));
    all.sort();
    all
}

/// Whole-path glob matching by the same rules, written independently (recursive).
fn glob_matches(glob: &str, path: &str) -> bool {
    fn comp(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => comp(&p[1..], n) || (!n.is_empty() && comp(p, &n[1..])),
            (Some(b'?'), Some(_)) => comp(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => comp(&p[1..], &n[1..]),
            _ => false,
        }
    }
    fn parts(g: &[&str], n: &[&str]) -> bool {
        match (g.first(), n.first()) {
            (None, None) => true,
            (Some(&"**"), _) => {
                parts(&g[1..], n) || (n.len() > 1 && !n[0].starts_with('.') && parts(g, &n[1..]))
            }
            (Some(p), Some(c)) => {
                (!c.starts_with('.') || p.starts_with('.'))
                    && comp(p.as_bytes(), c.as_bytes())
                    && parts(&g[1..], &n[1..])
            }
            _ => false,
        }
    }
    let g: Vec<&str> = glob.split('/').collect();
    let n: Vec<&str> = path.split('/').collect();
    parts(&g, &n)
}

fn read(path: &Path) -> (ResultsManifest, BTreeMap<String, Vec<u8>>) {
    let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(path).unwrap()).unwrap();
    dec.window_log_max(24).unwrap();
    let mut archive = tar::Archive::new(dec);
    let mut members = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert!(members.insert(name, data).is_none(), "a member twice");
    }
    let m = ResultsManifest::from_json(&members[MANIFEST]).unwrap();
    (m, members)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn whatever_the_tree_nothing_outside_is_read_and_every_matching_regular_file_is_taken(
        nodes in proptest::collection::vec(node(), 0..25),
        junit in proptest::collection::vec(glob(), 1..3),
        artifacts in proptest::collection::vec(glob(), 0..2),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.xml"), SECRET).unwrap();
        let checkout = tmp.path().join("checkout");
        std::fs::create_dir_all(&checkout).unwrap();
        let job_dir = tmp.path().join("job");
        std::fs::create_dir_all(&job_dir).unwrap();
        build(&checkout, &outside, &nodes);

        let config = ResultsConfig {
            evidence: vec![],
            ..ResultsConfig::default()
        };
        let id = "prop-1".parse().unwrap();
        let spec = ResultsSpec { junit: junit.clone(), artifacts: artifacts.clone() };
        let job = Job {
            id: &id,
            spec,
            outcome: Outcome::Failure,
            deadline_unix: 4_000_000_000,
            checkout: &checkout,
            job_dir: &job_dir,
            env: &[],
            home: None,
            kill_grace: Duration::from_secs(1),
        };
        let summary = collect(&config, &job).unwrap();
        let (m, members) = read(&job_dir.join("results.tar.zst"));
        prop_assert_eq!(&m, &summary.manifest);
        for data in members.values() {
            prop_assert!(!String::from_utf8_lossy(data).contains(SECRET));
        }
        // Every regular file a JUnit glob matches is a JUnit member, once (by content).
        let want_junit = expected(&checkout, &junit);
        let got_junit: Vec<String> = m
            .of_kind(EntryKind::Junit)
            .map(|e| e.source.strip_prefix(&format!("{}/", checkout.display())).unwrap().to_string())
            .collect();
        let mut sorted = got_junit.clone();
        sorted.sort();
        prop_assert_eq!(&sorted, &want_junit, "skipped: {:?}", m.skipped);
        // Artifacts: the rest of what their globs match (a file already taken as JUnit is not
        // taken twice).
        let want_art: Vec<String> = expected(&checkout, &artifacts)
            .into_iter()
            .filter(|p| !want_junit.contains(p))
            .collect();
        let mut got_art: Vec<String> = m
            .of_kind(EntryKind::Artifact)
            .map(|e| e.source.strip_prefix(&format!("{}/", checkout.display())).unwrap().to_string())
            .collect();
        got_art.sort();
        prop_assert_eq!(&got_art, &want_art);
        for e in &m.entries {
            let data = &members[&e.path];
            prop_assert_eq!(data.len() as u64, e.bytes);
            prop_assert!(String::from_utf8_lossy(data).starts_with("inside "));
        }
        prop_assert!(members.keys().all(|k| k != "junit" && !k.ends_with('/')));
        prop_assert!(!job_dir.join("results.data.part").exists());
    }
}
