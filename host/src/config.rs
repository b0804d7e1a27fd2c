//! The host's one TOML configuration file, with every default in one place.
//!
//! Invariants: unknown keys are refused (a typo never silently drops a setting); secrets are never
//! in the file itself, only paths to files holding them, read at load time into [`Secret`]s; every
//! option has a default except what cannot be guessed (pools). README.md, section "Host
//! configuration", documents each option with the default written here.

use crate::HostError;
use sdci_protocol::job::{Secret, Step};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on (webhooks, event ingest, job pages).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL under which GitHub, browsers and agents reach this host (no trailing slash).
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// Folder for the SQLite database and job logs.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Days a job's log is kept on disk; older logs are deleted by the reconciler.
    #[serde(default = "default_log_retention_days")]
    pub log_retention_days: u64,
    /// Seconds between reconciler runs (it also runs at start-up).
    #[serde(default = "default_reconcile_interval_secs")]
    pub reconcile_interval_secs: u64,
    /// Qubes version used when a commit names none (or `ci-config` fails).
    #[serde(default = "default_version")]
    pub default_version: String,
    /// Repository used by `sdci-host run` (manual jobs).
    #[serde(default)]
    pub default_repo: Option<String>,
    #[serde(default)]
    pub webhook: WebhookConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub vsphere: VsphereConfig,
    #[serde(default)]
    pub dom0: Dom0Config,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub deadlines: Deadlines,
    /// One pool of VMs per Qubes version, keyed by the version (`[pools."4.2"]`).
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    /// Slack notifications (`notify` module).
    #[serde(default)]
    pub notify: crate::notify::NotifyConfig,
    /// Nightly jobs and their schedules (`nightly` module).
    #[serde(default)]
    pub nightly: crate::nightly::NightlyConfig,
    /// Golden-snapshot rotation (`rotation` module).
    #[serde(default)]
    pub rotation: crate::rotation::RotationConfig,
    /// The Qubes update commands run in dom0 (`updates` module).
    #[serde(default)]
    pub updates: crate::updates::UpdatesConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// File holding the webhook secret (required for `serve`; a missing file is an error).
    #[serde(default = "default_webhook_secret_file")]
    pub secret_file: PathBuf,
    /// Largest accepted request body, bytes; larger deliveries get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Repositories (`owner/name`) accepted; empty accepts any repository.
    #[serde(default)]
    pub repos: Vec<String>,
    /// Branch patterns for `push` (`*` matches any run of characters).
    #[serde(default = "default_branches")]
    pub branches: Vec<String>,
    /// Tag patterns for `push`; empty ignores tag pushes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether `pull_request` events (opened, synchronize, reopened) create jobs.
    #[serde(default = "yes")]
    pub pull_requests: bool,
    /// GitHub logins whose pull requests from forks are tested.
    #[serde(default)]
    pub fork_allow_users: Vec<String>,
    /// A label that makes a fork's pull request testable; `None` disables the label route.
    #[serde(default)]
    pub fork_label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The `sdci-agent` binary the host runs for statuses, tokens and `ci-config`.
    #[serde(default = "default_agent_path")]
    pub path: PathBuf,
    /// Passed as `--config` to the agent; `None` lets the agent find its own.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Commit-status context.
    #[serde(default = "default_context")]
    pub status_context: String,
    /// GitHub App mode: fetch a short-lived token (`sdci-agent token`) for each job file.
    #[serde(default)]
    pub github_app: bool,
    /// Ask `sdci-agent ci-config` for each commit's Qubes version (else `default_version`).
    #[serde(default = "yes")]
    pub resolve_version: bool,
    /// GitHub REST API base written into job files.
    #[serde(default = "default_github_api")]
    pub github_api: String,
    /// Clone URL written into job files instead of the webhook's (a mirror, or a local path in
    /// tests).
    #[serde(default)]
    pub clone_url_override: Option<String>,
    /// Seconds one agent invocation may take before it is killed.
    #[serde(default = "default_agent_timeout")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsphereConfig {
    /// `https://host` of the ESXi host or vCenter (the SDK path is added by the client).
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub user: String,
    /// File holding the vSphere password.
    #[serde(default = "default_vsphere_password_file")]
    pub password_file: PathBuf,
    /// Only VMs in datacenters with these names; absent means every datacenter.
    #[serde(default)]
    pub datacenters: Option<Vec<String>>,
    /// How to trust the certificate, passed to the vSphere client as written
    /// (`mode = "system-roots" | "ca-file" | "pinned" | "insecure-accept-any-certificate"`).
    #[serde(default = "default_tls")]
    pub tls: toml::Table,
    /// The vSphere client's own timeouts (`connect_secs`, `call_secs`, `task_secs`, ...).
    #[serde(default)]
    pub timeouts: toml::Table,
}

fn default_tls() -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("mode".into(), toml::Value::String("system-roots".into()));
    t
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dom0Config {
    /// dom0 user for guest operations; the job file goes under its home.
    #[serde(default = "default_dom0_user")]
    pub user: String,
    /// File holding the dom0 user's password.
    #[serde(default = "default_dom0_password_file")]
    pub password_file: PathBuf,
    /// Path of `sdci-dom0` in dom0.
    #[serde(default = "default_dom0_program")]
    pub program: String,
    /// The dev VM whose qrexec calls may deliver a job's tree.
    #[serde(default = "default_dev_vm")]
    pub dev_vm: String,
    /// Checkout directory inside the dev VM.
    #[serde(default = "default_dev_dir")]
    pub dev_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Tries per job; infrastructure failures are retried on another VM until this many.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Consecutive infrastructure failures after which a VM is quarantined.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// A newer push to a branch also stops that branch's running job (not only queued ones).
    #[serde(default)]
    pub supersede_running: bool,
    /// After a vSphere outage (503, dropped connection) cut an attempt short, the pause before
    /// the job is queued again, in milliseconds; doubled for each further outage of the job, at
    /// most 5 minutes. Such attempts count neither against `max_attempts` nor towards quarantine.
    #[serde(default = "default_outage_retry_ms")]
    pub outage_retry_ms: u64,
    /// Milliseconds between checks of the running `sdci-dom0 launch` process.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Steps run in dom0; absent means the built-in defaults (`protocol::job::default_steps`).
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    /// Removed: a job's updates are the update phase (`[updates]`, then a reboot), never steps
    /// in the job file. Kept only to refuse old configs with a message saying so.
    #[serde(default)]
    update_steps: Option<toml::Value>,
}

/// Each phase's own deadline, seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    #[serde(default = "d_queue")]
    pub queue_secs: u64,
    #[serde(default = "d_revert")]
    pub revert_secs: u64,
    #[serde(default = "d_power_on")]
    pub power_on_secs: u64,
    #[serde(default = "d_guest_ready")]
    pub guest_ready_secs: u64,
    #[serde(default = "d_upload")]
    pub upload_secs: u64,
    #[serde(default = "d_run")]
    pub run_secs: u64,
    #[serde(default = "d_download")]
    pub download_secs: u64,
    #[serde(default = "d_shutdown")]
    pub shutdown_grace_secs: u64,
    #[serde(default = "d_shutdown_total")]
    pub shutdown_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// VMs whose inventory name starts with this prefix form the pool (e.g. `Qubes_4.2_`).
    pub prefix: String,
    /// Snapshot every job reverts to until a newer golden snapshot is recorded in the store.
    pub golden_snapshot: String,
}

fn yes() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8470))
}
fn default_public_url() -> String {
    "http://127.0.0.1:8470".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/sdci")
}
fn default_log_retention_days() -> u64 {
    30
}
fn default_reconcile_interval_secs() -> u64 {
    60
}
fn default_version() -> String {
    "4.2".into()
}
fn default_webhook_secret_file() -> PathBuf {
    PathBuf::from("/etc/sdci/webhook-secret")
}
fn default_max_body() -> usize {
    5 * 1024 * 1024
}
fn default_branches() -> Vec<String> {
    vec!["*".into()]
}
fn default_agent_path() -> PathBuf {
    PathBuf::from("/usr/local/bin/sdci-agent")
}
fn default_context() -> String {
    "sd-ci-runner".into()
}
fn default_github_api() -> String {
    "https://api.github.com".into()
}
fn default_agent_timeout() -> u64 {
    120
}
fn default_vsphere_password_file() -> PathBuf {
    PathBuf::from("/etc/sdci/vsphere-password")
}
fn default_dom0_user() -> String {
    "user".into()
}
fn default_dom0_password_file() -> PathBuf {
    PathBuf::from("/etc/sdci/dom0-password")
}
fn default_dom0_program() -> String {
    "/usr/local/bin/sdci-dom0".into()
}
fn default_dev_vm() -> String {
    "sd-dev".into()
}
fn default_dev_dir() -> String {
    "/home/user/securedrop-workstation".into()
}
fn default_max_attempts() -> u32 {
    3
}
fn default_quarantine_after() -> u32 {
    3
}
fn default_outage_retry_ms() -> u64 {
    5000
}
fn default_poll_ms() -> u64 {
    5000
}
fn d_queue() -> u64 {
    12 * 3600
}
fn d_revert() -> u64 {
    600
}
fn d_power_on() -> u64 {
    600
}
fn d_guest_ready() -> u64 {
    900
}
fn d_upload() -> u64 {
    300
}
fn d_run() -> u64 {
    8 * 3600
}
fn d_download() -> u64 {
    300
}
fn d_shutdown() -> u64 {
    120
}
fn d_shutdown_total() -> u64 {
    600
}

macro_rules! default_from_empty {
    ($t:ty) => {
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("every field of this section has a default")
            }
        }
    };
}
default_from_empty!(WebhookConfig);
default_from_empty!(AgentConfig);
default_from_empty!(VsphereConfig);
default_from_empty!(Dom0Config);
default_from_empty!(JobsConfig);
default_from_empty!(Deadlines);

impl Deadlines {
    pub fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }
}

impl Config {
    /// Parses a configuration from TOML text.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, HostError> {
        let cfg: Self = toml::from_str(text).map_err(|e| HostError::Config {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads and parses the configuration file.
    pub fn load(path: &Path) -> Result<Self, HostError> {
        let text = std::fs::read_to_string(path).map_err(|e| HostError::Config {
            path: path.to_owned(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    fn validate(&self, origin: &Path) -> Result<(), HostError> {
        let fail = |message: String| {
            Err(HostError::Config {
                path: origin.to_owned(),
                message,
            })
        };
        if self.jobs.max_attempts == 0 {
            return fail("jobs.max_attempts must be at least 1".into());
        }
        if self.jobs.update_steps.is_some() {
            return fail(
                "jobs.update_steps was removed: a job with update = true runs the commands of \
                 [updates] (dom0, templates) and then reboots the VM; remove jobs.update_steps \
                 and set the commands in [updates]"
                    .into(),
            );
        }
        for (v, p) in &self.pools {
            if p.prefix.is_empty() {
                return fail(format!("pools.{v:?}.prefix must not be empty"));
            }
        }
        if let Some(steps) = &self.jobs.steps {
            if steps.is_empty() || steps.iter().any(|s| s.argv.is_empty()) {
                return fail("jobs.steps must hold at least one step, each with an argv".into());
            }
        }
        if self.public_url.ends_with('/') {
            return fail("public_url must not end with '/'".into());
        }
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("sdci.sqlite3")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// The dom0 steps of every job's file. Updates are never among them: a job with
    /// `update = true` gets the update phase (`crate::updates`, then a reboot) before the job
    /// file is uploaded, so they run exactly once.
    pub fn steps(&self) -> Vec<Step> {
        self.jobs
            .steps
            .clone()
            .unwrap_or_else(sdci_protocol::job::default_steps)
    }
}

/// Reads a secret from a file, trimming one trailing newline (as `echo` writes it).
pub fn read_secret(path: &Path, what: &str) -> Result<Secret, HostError> {
    let text = std::fs::read_to_string(path).map_err(|e| HostError::Config {
        path: path.to_owned(),
        message: format!("cannot read the {what} file: {e}"),
    })?;
    let s = text.strip_suffix('\n').unwrap_or(&text);
    let s = s.strip_suffix('\r').unwrap_or(s);
    if s.is_empty() {
        return Err(HostError::Config {
            path: path.to_owned(),
            message: format!("the {what} file is empty"),
        });
    }
    Ok(Secret::new(s))
}

/// Matches `text` against a pattern where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The first TOML block of the README after `heading` (for the tests that the README
    /// shows parsing examples and the defaults).
    pub(crate) fn readme_toml_block(heading: &str) -> String {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let section = readme.split(heading).nth(1).unwrap();
        let block = section.split("```toml\n").nth(1).unwrap();
        block.split("```").next().unwrap().to_owned()
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c.listen.port(), 8470);
        assert_eq!(c.jobs.max_attempts, 3);
        assert_eq!(c.webhook.branches, ["*"]);
        assert_eq!(c.deadlines.run_secs, 8 * 3600);
        assert_eq!(c.steps(), sdci_protocol::job::default_steps());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_named() {
        let err = Config::parse("[jobs]\nmax_atempts = 2\n", Path::new("/etc/h.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/h.toml") && msg.contains("max_atempts"),
            "{msg}"
        );
    }

    #[test]
    fn pools_parse_per_version() {
        let c = Config::parse(
            "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.pools["4.2"].prefix, "Qubes_4.2_");
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob_match("*", "main"));
        assert!(glob_match("release/*", "release/2.0"));
        assert!(glob_match("*-ci*", "x-ci-y"));
        assert!(!glob_match("release/*", "main"));
        assert!(glob_match("main", "main"));
        assert!(!glob_match("main", "mainx"));
        assert!(!glob_match("a*a", "a"));
    }

    /// The README's example is the documentation of every option: it must parse, and the values
    /// it shows as defaults must be the defaults.
    #[test]
    fn the_readme_example_parses_and_shows_the_defaults() {
        let block = readme_toml_block("## Host configuration");
        let c = Config::parse(&block, Path::new("README.md")).unwrap();
        let d = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.public_url, d.public_url);
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.log_retention_days, d.log_retention_days);
        assert_eq!(c.webhook.max_body_bytes, d.webhook.max_body_bytes);
        assert_eq!(c.webhook.branches, d.webhook.branches);
        assert_eq!(c.agent.path, d.agent.path);
        assert_eq!(c.agent.timeout_secs, d.agent.timeout_secs);
        assert_eq!(c.dom0.user, d.dom0.user);
        assert_eq!(c.jobs.max_attempts, d.jobs.max_attempts);
        assert_eq!(c.jobs.poll_interval_ms, d.jobs.poll_interval_ms);
        assert_eq!(c.jobs.outage_retry_ms, d.jobs.outage_retry_ms);
        let (a, b) = (&c.deadlines, &d.deadlines);
        assert_eq!(
            (
                a.queue_secs,
                a.revert_secs,
                a.power_on_secs,
                a.guest_ready_secs,
                a.upload_secs
            ),
            (
                b.queue_secs,
                b.revert_secs,
                b.power_on_secs,
                b.guest_ready_secs,
                b.upload_secs
            )
        );
        assert_eq!(
            (
                a.run_secs,
                a.download_secs,
                a.shutdown_grace_secs,
                a.shutdown_secs
            ),
            (
                b.run_secs,
                b.download_secs,
                b.shutdown_grace_secs,
                b.shutdown_secs
            )
        );
    }

    #[test]
    fn the_job_steps_never_hold_update_steps_and_the_old_key_is_refused_with_the_fix() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c.steps(), sdci_protocol::job::default_steps());
        assert!(c.steps().iter().all(|s| !s.name.starts_with("update-")));
        let old = "[jobs]\nupdate_steps = [{ name = \"u\", argv = [\"x\"], timeout_secs = 1 }]\n";
        let e = Config::parse(old, Path::new("host.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("jobs.update_steps") && e.contains("[updates]"),
            "{e}"
        );
    }
}
