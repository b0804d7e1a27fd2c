//! `sdci-dom0`'s configuration: where jobs and the checkout live, which user to run as, the
//! unpacking limits and the commands `launch` uses.
//!
//! Found at `$SDCI_DOM0_CONFIG` if set, else `$HOME/.sdci/dom0.toml` if present, else built-in
//! defaults (README.md, "dom0 configuration", lists every option). Unknown keys are errors, so a
//! typo never silently drops a limit. Paths must be absolute; defaults are under `$HOME`.

use crate::error::{Error, Result};
use crate::results::{Evidence, ResultsConfig};
use crate::unpack::Limits;
use sdci_protocol::paths;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "SDCI_DOM0_CONFIG";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the host uploads jobs: `<jobs_dir>/<id>/job.json`, and where logs go.
    pub jobs_dir: PathBuf,
    /// Where the tree is moved into place (SDW's Makefile expects `~/securedrop-workstation`).
    pub checkout_dir: PathBuf,
    /// The user to switch to when started as root (Qubes 4.1). `None`: the first member of the
    /// group `qubes`, else `user`.
    pub user: Option<String>,
    /// Stay root when started as root instead of switching to `user`. Only for simulated worlds
    /// that cannot switch users (the end-to-end tests run everything as root); never on Qubes.
    pub allow_root: bool,
    /// After SIGTERM at a step's timeout, how long before SIGKILL.
    pub kill_grace: Duration,
    /// After a step's main process exits, how long to wait for output from processes that left
    /// its process group before moving on.
    pub drain: Duration,
    /// Command (argv prefix; the path is appended) that removes a previous checkout the dom0
    /// user cannot remove alone (root-owned files left by sudo steps).
    pub privileged_remove: Vec<String>,
    pub limits: Limits,
    pub launch: LaunchConfig,
    /// What `sdci.Run` collects after the steps and its bounds (contracts §11).
    pub results: ResultsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    pub qvm_start: String,
    pub qvm_run: String,
    /// The shell-string command run in the dev VM (contracts §4).
    pub agent_command: String,
    /// How long to wait for the started dev VM to answer `qvm-run … true`.
    pub ready_timeout: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    jobs_dir: Option<PathBuf>,
    checkout_dir: Option<PathBuf>,
    user: Option<String>,
    #[serde(default)]
    allow_root: bool,
    kill_grace_secs: Option<u64>,
    drain_secs: Option<u64>,
    privileged_remove: Option<Vec<String>>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    launch: LaunchFile,
    #[serde(default)]
    results: ResultsFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResultsFile {
    max_file_bytes: Option<u64>,
    max_members: Option<usize>,
    max_total_bytes: Option<u64>,
    max_unpacked_bytes: Option<u64>,
    max_walk_entries: Option<u64>,
    deadline_secs: Option<u64>,
    command_timeout_secs: Option<u64>,
    evidence_root: Option<PathBuf>,
    evidence: Option<Vec<EvidenceFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceFile {
    member: String,
    command: Option<Vec<String>>,
    dir: Option<String>,
    glob: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_compressed_bytes: Option<u64>,
    max_unpacked_bytes: Option<u64>,
    max_entries: Option<u64>,
    max_path_bytes: Option<usize>,
    max_depth: Option<usize>,
    zstd_window_log_max: Option<u32>,
    read_timeout_secs: Option<u64>,
    min_free_bytes: Option<u64>,
    min_free_inodes: Option<u64>,
    min_rate_bytes_per_sec: Option<u64>,
    rate_grace_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LaunchFile {
    qvm_start: Option<String>,
    qvm_run: Option<String>,
    agent_command: Option<String>,
    ready_timeout_secs: Option<u64>,
}

impl Config {
    /// Built-in defaults for a home directory.
    pub fn defaults(home: &Path) -> Self {
        Self {
            jobs_dir: home.join(paths::JOBS_DIR),
            checkout_dir: home.join("securedrop-workstation"),
            user: None,
            allow_root: false,
            kill_grace: Duration::from_secs(10),
            drain: Duration::from_secs(5),
            privileged_remove: ["sudo", "-n", "rm", "-rf", "--one-file-system", "--"]
                .map(String::from)
                .to_vec(),
            limits: Limits::default(),
            launch: LaunchConfig {
                qvm_start: "qvm-start".into(),
                qvm_run: "qvm-run".into(),
                agent_command: "sdci-agent run --job -".into(),
                ready_timeout: Duration::from_secs(120),
            },
            results: ResultsConfig::default(),
        }
    }

    /// Loads the configuration the way the contract says: `$SDCI_DOM0_CONFIG`, else
    /// `$HOME/.sdci/dom0.toml` if it exists, else defaults.
    pub fn load_from_env() -> Result<Self> {
        let home = home_dir()?;
        let explicit = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty());
        Self::load(explicit.as_deref().map(Path::new), &home)
    }

    /// The lookup order, given the variable's value and the home directory: `explicit` (which
    /// must exist), else `<home>/.sdci/dom0.toml` if present, else defaults for `home`.
    pub fn load(explicit: Option<&Path>, home: &Path) -> Result<Self> {
        if let Some(p) = explicit {
            return Self::load_file(p, home);
        }
        let p = home.join(paths::DOM0_CONFIG);
        if p.exists() {
            Self::load_file(&p, home)
        } else {
            Ok(Self::defaults(home))
        }
    }

    pub fn load_file(path: &Path, home: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            why: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, home).map_err(|why| Error::Config {
            path: path.to_owned(),
            why,
        })
    }

    /// Parses TOML text over the defaults for `home`.
    pub fn parse(text: &str, home: &Path) -> std::result::Result<Self, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut c = Self::defaults(home);
        let abs = |name: &str, p: PathBuf| {
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(format!("{name} must be an absolute path, got {p:?}"))
            }
        };
        if let Some(p) = f.jobs_dir {
            c.jobs_dir = abs("jobs_dir", p)?;
        }
        if let Some(p) = f.checkout_dir {
            c.checkout_dir = abs("checkout_dir", p)?;
        }
        c.allow_root = f.allow_root;
        if let Some(u) = f.user {
            if u.is_empty() {
                return Err("user must not be empty".into());
            }
            c.user = Some(u);
        }
        if let Some(s) = f.kill_grace_secs {
            c.kill_grace = Duration::from_secs(s);
        }
        if let Some(s) = f.drain_secs {
            c.drain = Duration::from_secs(s);
        }
        if let Some(v) = f.privileged_remove {
            if v.is_empty() {
                return Err("privileged_remove must name a program".into());
            }
            c.privileged_remove = v;
        }
        let l = &mut c.limits;
        let lf = f.limits;
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = lf.$field {
                    l.$field = v;
                }
            };
        }
        set!(max_compressed_bytes);
        set!(max_unpacked_bytes);
        set!(max_entries);
        set!(max_path_bytes);
        set!(max_depth);
        set!(zstd_window_log_max);
        set!(min_free_bytes);
        set!(min_free_inodes);
        set!(min_rate_bytes_per_sec);
        if let Some(s) = lf.read_timeout_secs {
            l.read_timeout = Duration::from_secs(s);
        }
        if let Some(s) = lf.rate_grace_secs {
            l.rate_grace = Duration::from_secs(s);
        }
        if !(10..=31).contains(&l.zstd_window_log_max) {
            return Err("limits.zstd_window_log_max must be between 10 and 31".into());
        }
        if l.read_timeout.is_zero() {
            return Err("limits.read_timeout_secs must be at least 1".into());
        }
        let lc = f.launch;
        if let Some(v) = lc.qvm_start {
            c.launch.qvm_start = v;
        }
        if let Some(v) = lc.qvm_run {
            c.launch.qvm_run = v;
        }
        if let Some(v) = lc.agent_command {
            c.launch.agent_command = v;
        }
        if let Some(s) = lc.ready_timeout_secs {
            c.launch.ready_timeout = Duration::from_secs(s);
        }
        parse_results(f.results, &mut c.results)?;
        Ok(c)
    }
}

fn parse_results(f: ResultsFile, r: &mut ResultsConfig) -> std::result::Result<(), String> {
    let caps = &mut r.caps;
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = f.$field {
                caps.$field = v;
            }
        };
    }
    set!(max_file_bytes);
    set!(max_members);
    set!(max_total_bytes);
    set!(max_unpacked_bytes);
    set!(max_walk_entries);
    if let Some(s) = f.deadline_secs {
        caps.deadline = Duration::from_secs(s);
    }
    if let Some(s) = f.command_timeout_secs {
        caps.command_timeout = Duration::from_secs(s);
    }
    if caps.max_members > sdci_protocol::results::MAX_ENTRIES {
        return Err(format!(
            "results.max_members must be at most {}",
            sdci_protocol::results::MAX_ENTRIES
        ));
    }
    if caps.max_total_bytes < 64 * 1024 {
        return Err("results.max_total_bytes must be at least 65536".into());
    }
    if let Some(p) = f.evidence_root {
        if !p.is_absolute() {
            return Err(format!(
                "results.evidence_root must be an absolute path, got {p:?}"
            ));
        }
        r.evidence_root = p;
    }
    if let Some(list) = f.evidence {
        let mut out = Vec::new();
        for e in list {
            let source = match (e.command, e.dir, e.glob) {
                (Some(argv), None, None) => Evidence::Command {
                    member: e.member,
                    argv,
                },
                (None, Some(dir), Some(glob)) => Evidence::Dir {
                    member: e.member,
                    dir,
                    glob,
                },
                _ => {
                    return Err(format!(
                        "results.evidence {:?}: give either command, or dir and glob",
                        e.member
                    ))
                }
            };
            source.validate()?;
            out.push(source);
        }
        r.evidence = out;
    }
    Ok(())
}

/// `$HOME`, which must be an absolute path.
pub fn home_dir() -> Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if Path::new(&h).is_absolute() => Ok(PathBuf::from(h)),
        _ => Err(Error::Config {
            path: PathBuf::from("$HOME"),
            why: "HOME is not set to an absolute path; set it or SDCI_DOM0_CONFIG".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::parse("", Path::new("/home/user")).unwrap();
        assert_eq!(c, Config::defaults(Path::new("/home/user")));
        assert_eq!(c.jobs_dir, Path::new("/home/user/.sdci/jobs"));
        assert_eq!(
            c.checkout_dir,
            Path::new("/home/user/securedrop-workstation")
        );
        assert_eq!(c.limits.max_entries, 20_000);
        assert_eq!(c.launch.agent_command, "sdci-agent run --job -");
    }

    #[test]
    fn every_option_can_be_set() {
        let text = r#"
            jobs_dir = "/j"
            checkout_dir = "/c"
            user = "alice"
            allow_root = true
            kill_grace_secs = 3
            drain_secs = 4
            privileged_remove = ["doas", "rm", "-rf", "--"]
            [limits]
            max_compressed_bytes = 1
            max_unpacked_bytes = 2
            max_entries = 3
            max_path_bytes = 4
            max_depth = 5
            zstd_window_log_max = 20
            read_timeout_secs = 6
            min_free_bytes = 7
            min_free_inodes = 9
            min_rate_bytes_per_sec = 10
            rate_grace_secs = 11
            [launch]
            qvm_start = "/x/qvm-start"
            qvm_run = "/x/qvm-run"
            agent_command = "agent"
            ready_timeout_secs = 8
            [results]
            max_file_bytes = 12
            max_members = 13
            max_total_bytes = 70000
            max_unpacked_bytes = 15
            max_walk_entries = 16
            deadline_secs = 17
            command_timeout_secs = 18
            evidence_root = "/world"
            [[results.evidence]]
            member = "journal.txt"
            command = ["cat", "/j"]
            [[results.evidence]]
            member = "xen-console"
            dir = "/var/log/xen/console"
            glob = "guest-*.log"
        "#;
        let c = Config::parse(text, Path::new("/h")).unwrap();
        assert_eq!(c.jobs_dir, Path::new("/j"));
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert!(c.allow_root);
        assert_eq!(c.drain, Duration::from_secs(4));
        assert_eq!(c.privileged_remove[0], "doas");
        assert_eq!(
            (
                c.limits.max_compressed_bytes,
                c.limits.max_unpacked_bytes,
                c.limits.max_entries
            ),
            (1, 2, 3)
        );
        assert_eq!((c.limits.max_path_bytes, c.limits.max_depth), (4, 5));
        assert_eq!(c.limits.zstd_window_log_max, 20);
        assert_eq!(c.limits.read_timeout, Duration::from_secs(6));
        assert_eq!(c.limits.min_free_bytes, 7);
        assert_eq!(
            (c.limits.min_free_inodes, c.limits.min_rate_bytes_per_sec),
            (9, 10)
        );
        assert_eq!(c.limits.rate_grace, Duration::from_secs(11));
        assert_eq!(c.launch.qvm_run, "/x/qvm-run");
        assert_eq!(c.launch.ready_timeout, Duration::from_secs(8));
        let r = &c.results;
        assert_eq!(
            (
                r.caps.max_file_bytes,
                r.caps.max_members,
                r.caps.max_total_bytes
            ),
            (12, 13, 70000)
        );
        assert_eq!(
            (r.caps.max_unpacked_bytes, r.caps.max_walk_entries),
            (15, 16)
        );
        assert_eq!(r.caps.deadline, Duration::from_secs(17));
        assert_eq!(r.caps.command_timeout, Duration::from_secs(18));
        assert_eq!(r.evidence_root, Path::new("/world"));
        assert_eq!(r.evidence.len(), 2);
        assert_eq!(r.evidence[1].member(), "xen-console");
    }

    #[test]
    fn a_bad_evidence_source_is_an_error() {
        for bad in [
            "[[results.evidence]]\nmember = \"a/b\"\ncommand = [\"x\"]",
            "[[results.evidence]]\nmember = \"j\"\ncommand = []",
            "[[results.evidence]]\nmember = \"j\"\ndir = \"rel\"\nglob = \"*\"",
            "[[results.evidence]]\nmember = \"j\"\ndir = \"/x\"\nglob = \"../*\"",
            "[[results.evidence]]\nmember = \"j\"\ncommand = [\"x\"]\ndir = \"/x\"",
            "[results]\nevidence_root = \"rel\"",
            "[results]\nmax_total_bytes = 10",
        ] {
            assert!(Config::parse(bad, Path::new("/h")).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookup_order_is_the_variable_then_the_home_file_then_defaults() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        assert_eq!(Config::load(None, home).unwrap(), Config::defaults(home));
        std::fs::create_dir_all(home.join(".sdci")).unwrap();
        std::fs::write(home.join(".sdci/dom0.toml"), "user = \"from-home\"").unwrap();
        assert_eq!(
            Config::load(None, home).unwrap().user.as_deref(),
            Some("from-home")
        );
        let explicit = home.join("explicit.toml");
        std::fs::write(&explicit, "user = \"explicit\"").unwrap();
        assert_eq!(
            Config::load(Some(&explicit), home).unwrap().user.as_deref(),
            Some("explicit")
        );
        let missing = Config::load(Some(&home.join("missing.toml")), home).unwrap_err();
        assert!(missing.to_string().contains("cannot read it"), "{missing}");
    }

    #[test]
    fn unknown_keys_and_relative_paths_are_errors() {
        assert!(Config::parse("job_dir = \"/x\"", Path::new("/h"))
            .unwrap_err()
            .contains("unknown field"));
        assert!(Config::parse("[limits]\nmax_entrys = 1", Path::new("/h")).is_err());
        assert!(Config::parse("jobs_dir = \"rel\"", Path::new("/h"))
            .unwrap_err()
            .contains("absolute"));
        assert!(Config::parse("[limits]\nzstd_window_log_max = 40", Path::new("/h")).is_err());
    }
}
