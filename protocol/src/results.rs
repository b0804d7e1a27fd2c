//! A job's results file: what `sdci-dom0` collects after the steps and the host downloads
//! beside `log.txt` (CONTRACTS.md §11).
//!
//! ```text
//! <job dir>/results.tar.zst      zstd-compressed tar, regular files only, names below
//!   manifest.json                ResultsManifest (always the first member)
//!   junit/1.xml, junit/2.xml …   the files the job's `junit` globs found (always collected)
//!   evidence/journal.txt …       only when the steps failed, errored or timed out
//!   artifacts/<path>             the files the job's `artifacts` globs found
//! ```
//!
//! What to collect travels in the job file ([`ResultsSpec`], `JobSpec.results`; absent means
//! [`ResultsSpec::default`]). Both sides check the same rules here: globs relative to the
//! checkout without `..` ([`validate_glob`]), member names of a fixed safe alphabet
//! ([`validate_member_path`]), and a manifest that is bounded and refuses unknown fields
//! ([`ResultsManifest::from_json`]). The archive is written in dom0, where the code under test
//! runs with sudo, so the host reads all of it as hostile input.

use crate::event::sanitize_field;
use crate::ids::JobId;
use crate::outcome::Outcome;
use crate::ProtocolError;
use serde::{Deserialize, Serialize};

/// The manifest format this build writes and reads.
pub const RESULTS_VERSION: u32 = 1;
/// The manifest's member name; always the archive's first member.
pub const MANIFEST: &str = "manifest.json";
/// SDW's JUnit file, relative to the checkout: its `pyproject.toml` sets
/// `--junitxml=test-data.xml` and `make test` runs pytest in the checkout's root.
pub const DEFAULT_JUNIT: &str = "test-data.xml";

/// At most this many globs in each of [`ResultsSpec`]'s lists.
pub const MAX_GLOBS: usize = 32;
/// A glob is at most this many bytes.
pub const MAX_GLOB_BYTES: usize = 256;
/// A member name is at most this many bytes (it fits a ustar name and prefix).
pub const MAX_MEMBER_PATH: usize = 240;
/// A member name has at most this many components.
pub const MAX_MEMBER_DEPTH: usize = 16;
/// A member name's component is at most this many bytes.
pub const MAX_MEMBER_COMPONENT: usize = 100;
/// A manifest's `source` field is at most this many bytes (sanitized, cut with a marker).
pub const MAX_SOURCE: usize = 1024;
/// A skipped entry's `reason` is at most this many bytes.
pub const MAX_SKIP_REASON: usize = 512;
/// The format's ceiling on entries (dom0's configured cap is lower).
pub const MAX_ENTRIES: usize = 10_000;
/// The format's ceiling on skipped entries; dom0 writes at most this many and counts the rest.
pub const MAX_SKIPPED: usize = 1_000;
/// The manifest member is at most this many bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// What dom0 collects for a job: globs relative to the checkout (dom0's `checkout_dir`).
///
/// Glob syntax: `/`-separated components; `*` matches any run of characters within a component,
/// `?` one character, and a component that is exactly `**` matches zero or more directories.
/// No absolute paths, no `.`/`..` or empty components, no `[`, `{`, `\` or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsSpec {
    /// JUnit XML files, always collected. Default: `[DEFAULT_JUNIT]`.
    #[serde(default = "default_junit")]
    pub junit: Vec<String>,
    /// Further files, collected only when the steps did not succeed. Default: none.
    #[serde(default)]
    pub artifacts: Vec<String>,
}

fn default_junit() -> Vec<String> {
    vec![DEFAULT_JUNIT.to_owned()]
}

impl Default for ResultsSpec {
    fn default() -> Self {
        Self {
            junit: default_junit(),
            artifacts: Vec::new(),
        }
    }
}

impl ResultsSpec {
    /// Checks both lists: at most [`MAX_GLOBS`] each, every glob by [`validate_glob`].
    pub fn validate(&self) -> Result<(), ProtocolError> {
        for (what, list) in [("junit", &self.junit), ("artifacts", &self.artifacts)] {
            if list.len() > MAX_GLOBS {
                return Err(ProtocolError::Inconsistent(format!(
                    "results.{what} has {} globs, at most {MAX_GLOBS}",
                    list.len()
                )));
            }
            for glob in list {
                validate_glob(glob).map_err(|why| {
                    ProtocolError::Inconsistent(format!(
                        "results.{what} glob {:?}: {why}",
                        sanitize_field(glob, 80)
                    ))
                })?;
            }
        }
        Ok(())
    }
}

/// A glob's rules (see [`ResultsSpec`]); `Err` says which one it broke.
pub fn validate_glob(glob: &str) -> Result<(), &'static str> {
    if glob.is_empty() {
        return Err("empty");
    }
    if glob.len() > MAX_GLOB_BYTES {
        return Err("longer than 256 bytes");
    }
    if glob.starts_with('/') {
        return Err("absolute; globs are relative to the checkout");
    }
    if glob
        .chars()
        .any(|c| c.is_control() || matches!(c, '[' | ']' | '{' | '}' | '\\'))
    {
        return Err("control characters, brackets, braces and backslashes are not supported");
    }
    for part in glob.split('/') {
        match part {
            "" => return Err("empty path component"),
            "." | ".." => return Err("`.` and `..` components are refused"),
            p if p.contains("**") && p != "**" => {
                return Err("`**` must be a whole path component")
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `c` may appear in a member name component.
fn member_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+')
}

/// A member name's rules: [`MANIFEST`], or `junit/`, `evidence/` or `artifacts/` followed by
/// components of `[A-Za-z0-9._+-]`, none `.`/`..` or empty, at most [`MAX_MEMBER_COMPONENT`]
/// bytes each, [`MAX_MEMBER_DEPTH`] deep and [`MAX_MEMBER_PATH`] bytes in all.
pub fn validate_member_path(path: &str) -> Result<(), &'static str> {
    if path == MANIFEST {
        return Ok(());
    }
    if path.len() > MAX_MEMBER_PATH {
        return Err("member name too long");
    }
    let mut parts = path.split('/');
    match parts.next() {
        Some("junit" | "evidence" | "artifacts") => {}
        _ => return Err("member name outside junit/, evidence/, artifacts/"),
    }
    let mut depth = 1;
    let mut any = false;
    for part in parts {
        depth += 1;
        any = true;
        if part.is_empty() || part == "." || part == ".." {
            return Err("empty, `.` or `..` component");
        }
        if part.len() > MAX_MEMBER_COMPONENT {
            return Err("member name component too long");
        }
        if !part.bytes().all(member_char) {
            return Err("member name outside [A-Za-z0-9._+-]");
        }
    }
    if !any {
        return Err("member name is a bare directory");
    }
    if depth > MAX_MEMBER_DEPTH {
        return Err("member name too deep");
    }
    Ok(())
}

/// Which part of the bundle a member belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A JUnit XML file (`junit/<k>.xml`).
    Junit,
    /// Failure evidence from dom0 (`evidence/…`): journal, Xen console, Qubes and Salt logs,
    /// `qvm-ls`.
    Evidence,
    /// A file the job's `artifacts` globs named (`artifacts/…`).
    Artifact,
}

impl EntryKind {
    /// The top directory of this kind's members.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Junit => "junit",
            Self::Evidence => "evidence",
            Self::Artifact => "artifacts",
        }
    }
}

/// One member of the archive (other than the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsEntry {
    /// The member's name in the archive ([`validate_member_path`]).
    pub path: String,
    pub kind: EntryKind,
    /// Where in dom0 it came from: a path, or a command line as `$ journalctl -b --no-pager`
    /// (sanitized, at most [`MAX_SOURCE`] bytes; display text only, never a path to open).
    pub source: String,
    /// The member's size in the archive.
    pub bytes: u64,
    /// Whether the member is cut: the first `bytes` of a JUnit file or artifact, the last
    /// `bytes` of a log or a command's output.
    pub truncated: bool,
}

/// Something dom0 did not collect, and why (too large, too many, timed out, not a regular
/// file, a symlink, unreadable, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    /// As [`ResultsEntry::source`].
    pub source: String,
    /// Sanitized, at most [`MAX_SKIP_REASON`] bytes.
    pub reason: String,
}

impl Skipped {
    /// A skipped entry with both fields sanitized and cut to their limits.
    pub fn new(source: &str, reason: &str) -> Self {
        Self {
            source: sanitize_field(source, MAX_SOURCE),
            reason: sanitize_field(reason, MAX_SKIP_REASON),
        }
    }
}

/// `manifest.json`, the first member of `results.tar.zst`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsManifest {
    /// [`RESULTS_VERSION`].
    pub version: u32,
    pub job: JobId,
    /// The outcome of the job's steps, as dom0's `result` has it (collection never changes it).
    pub outcome: Outcome,
    /// Whether the failure evidence was collected (the outcome was not `success`).
    pub evidence: bool,
    /// How long the collection took, in milliseconds.
    pub took_ms: u64,
    /// The members after the manifest, in archive order.
    pub entries: Vec<ResultsEntry>,
    /// What was left out, at most [`MAX_SKIPPED`] entries.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// How many more were left out beyond [`MAX_SKIPPED`].
    #[serde(default)]
    pub skipped_more: u64,
}

/// Reads the version field first, so a newer manifest gets a version error rather than a field
/// error.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

impl ResultsManifest {
    /// Parses and checks a manifest: size, version, shape (unknown fields refused), every
    /// member name, the bounds on entries and skipped entries, no name twice.
    pub fn from_json(json: &[u8]) -> Result<Self, ProtocolError> {
        if json.len() > MAX_MANIFEST_BYTES {
            return Err(ProtocolError::Inconsistent(format!(
                "results manifest larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let probe: VersionProbe =
            serde_json::from_slice(json).map_err(|e| ProtocolError::Json(e.to_string()))?;
        if probe.version != RESULTS_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                found: probe.version,
                supported: RESULTS_VERSION,
            });
        }
        let m: Self =
            serde_json::from_slice(json).map_err(|e| ProtocolError::Json(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        // Plain structs with string keys: serializing cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |why: String| Err(ProtocolError::Inconsistent(why));
        if self.entries.len() > MAX_ENTRIES {
            return bad(format!(
                "results manifest has more than {MAX_ENTRIES} entries"
            ));
        }
        if self.skipped.len() > MAX_SKIPPED {
            return bad(format!(
                "results manifest has more than {MAX_SKIPPED} skipped entries"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            if let Err(why) = validate_member_path(&e.path) {
                return bad(format!(
                    "results member {:?}: {why}",
                    sanitize_field(&e.path, 80)
                ));
            }
            if e.path == MANIFEST || !e.path.starts_with(&format!("{}/", e.kind.dir())) {
                return bad(format!(
                    "results member {:?} is not under {}/",
                    e.path,
                    e.kind.dir()
                ));
            }
            if !seen.insert(e.path.as_str()) {
                return bad(format!("results member {:?} is listed twice", e.path));
            }
            if e.source.len() > MAX_SOURCE {
                return bad(format!("results member {:?}: source too long", e.path));
            }
        }
        if self
            .skipped
            .iter()
            .any(|s| s.source.len() > MAX_SOURCE || s.reason.len() > MAX_SKIP_REASON)
        {
            return bad("a skipped entry's source or reason is too long".into());
        }
        Ok(())
    }

    /// The entries of one kind.
    pub fn of_kind(&self, kind: EntryKind) -> impl Iterator<Item = &ResultsEntry> {
        self.entries.iter().filter(move |e| e.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> ResultsManifest {
        ResultsManifest {
            version: RESULTS_VERSION,
            job: "job-1".parse().unwrap(),
            outcome: Outcome::Failure,
            evidence: true,
            took_ms: 1200,
            entries: vec![
                ResultsEntry {
                    path: "junit/1.xml".into(),
                    kind: EntryKind::Junit,
                    source: "/home/user/securedrop-workstation/test-data.xml".into(),
                    bytes: 2048,
                    truncated: false,
                },
                ResultsEntry {
                    path: "evidence/journal.txt".into(),
                    kind: EntryKind::Evidence,
                    source: "$ journalctl -b --no-pager".into(),
                    bytes: 8 << 20,
                    truncated: true,
                },
                ResultsEntry {
                    path: "evidence/xen-console/guest-sd-app.log".into(),
                    kind: EntryKind::Evidence,
                    source: "/var/log/xen/console/guest-sd-app.log".into(),
                    bytes: 10,
                    truncated: false,
                },
            ],
            skipped: vec![Skipped::new("/var/log/qubes/huge.log", "larger than 8 MiB")],
            skipped_more: 0,
        }
    }

    #[test]
    fn a_manifest_round_trips_through_json() {
        let m = manifest();
        assert_eq!(
            ResultsManifest::from_json(m.to_json().as_bytes()).unwrap(),
            m
        );
        assert_eq!(m.of_kind(EntryKind::Evidence).count(), 2);
    }

    #[test]
    fn a_manifest_with_an_unknown_field_or_a_newer_version_is_refused() {
        let mut v = serde_json::to_value(manifest()).unwrap();
        v["entries"][0]["mode"] = serde_json::json!(0o4755);
        let err = ResultsManifest::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ProtocolError::Json(ref m) if m.contains("unknown field")));
        let mut v = serde_json::to_value(manifest()).unwrap();
        v["version"] = serde_json::json!(2);
        assert_eq!(
            ResultsManifest::from_json(v.to_string().as_bytes()).unwrap_err(),
            ProtocolError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );
    }

    #[test]
    fn a_manifest_naming_an_unsafe_or_misfiled_member_is_refused() {
        for (path, kind) in [
            ("../etc/passwd", EntryKind::Junit),
            ("/etc/passwd", EntryKind::Junit),
            ("junit/../../x", EntryKind::Junit),
            ("junit/a\nb.xml", EntryKind::Junit),
            ("evidence/journal.txt", EntryKind::Junit),
            ("manifest.json", EntryKind::Evidence),
            ("junit", EntryKind::Junit),
            ("junit//1.xml", EntryKind::Junit),
        ] {
            let mut m = manifest();
            m.entries[0].path = path.into();
            m.entries[0].kind = kind;
            assert!(
                ResultsManifest::from_json(m.to_json().as_bytes()).is_err(),
                "{path:?} was accepted"
            );
        }
        let mut m = manifest();
        m.entries[1].path = "junit/1.xml".into();
        m.entries[1].kind = EntryKind::Junit;
        assert!(ResultsManifest::from_json(m.to_json().as_bytes()).is_err());
    }

    #[test]
    fn member_names_keep_to_the_safe_alphabet_and_bounds() {
        assert!(validate_member_path("manifest.json").is_ok());
        assert!(validate_member_path("artifacts/build-log/sdw+1.log").is_ok());
        assert!(validate_member_path("artifacts/ä.log").is_err());
        assert!(validate_member_path(&format!("artifacts/{}", "a".repeat(101))).is_err());
        let deep = format!("artifacts/{}", ["d"; 16].join("/"));
        assert!(validate_member_path(&deep).is_err());
    }

    #[test]
    fn globs_are_relative_without_dot_dot_and_in_the_supported_syntax() {
        for ok in ["test-data.xml", "**/*.xml", "build-log/*.log", "a/?.txt"] {
            assert_eq!(validate_glob(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/etc/shadow",
            "../x",
            "a/../../x",
            "a//b",
            "./x",
            "a**/b",
            "[ab].xml",
            "{a,b}",
            "a\\b",
            "a\nb",
        ] {
            assert!(validate_glob(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(validate_glob(&"a".repeat(257)).is_err());
    }

    #[test]
    fn an_absent_spec_means_sdws_junit_file_and_no_artifacts() {
        let spec: ResultsSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, ResultsSpec::default());
        assert_eq!(spec.junit, ["test-data.xml"]);
        assert!(spec.artifacts.is_empty());
        let spec: ResultsSpec = serde_json::from_str(r#"{"junit":[]}"#).unwrap();
        assert!(spec.junit.is_empty(), "an empty list means none");
        assert!(serde_json::from_str::<ResultsSpec>(r#"{"junits":[]}"#).is_err());
    }

    #[test]
    fn a_spec_with_too_many_or_bad_globs_is_inconsistent() {
        let mut spec = ResultsSpec {
            artifacts: vec!["x".into(); MAX_GLOBS + 1],
            ..ResultsSpec::default()
        };
        assert!(spec.validate().is_err());
        spec.artifacts = vec!["/var/log/*.log".into()];
        let err = spec.validate().unwrap_err();
        assert!(err.to_string().contains("results.artifacts"), "{err}");
    }
}
