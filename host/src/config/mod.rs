//! The host's one TOML configuration file: one file per table (firecracker's rule), each with
//! its defaults and its own checks, validated once when the file is loaded — by every
//! subcommand, so what `serve` would refuse, `run`, `save`, `jobs` and `check-config` refuse too.
//!
//! Invariants: unknown keys are refused (a typo never silently drops a setting); secrets are never
//! in the file itself, only paths to files holding them, read by [`read_secret`] (protocol's one
//! trimming rule) when a subcommand needs them; every option has a default except what cannot be
//! guessed (pools). README.md, section "Host configuration", documents each option with the
//! default written here, and a test checks that. This module imports no feature of the host:
//! only the domain types and the vSphere and libvirt clients' own config types.

mod agent;
mod deadlines;
mod dom0;
mod http;
mod ingest;
mod jobs;
mod libvirt;
mod nightly;
mod notify;
mod pools;
mod rotation;
mod test_results;
mod updates;
mod vsphere;
mod webhook;

pub use agent::AgentConfig;
pub use deadlines::Deadlines;
pub use dom0::Dom0Config;
pub use http::HttpConfig;
pub use ingest::IngestConfig;
pub use jobs::JobsConfig;
pub use nightly::{NightlyConfig, NightlySchedule};
pub use notify::NotifyConfig;
pub use pools::{Backend, BuiltScenario, HoldOn, PoolConfig, Scenario, GOLDEN_BASE};
pub use rotation::{RotationConfig, RotationSchedule};
pub use test_results::TestsConfig;
pub use updates::UpdatesConfig;
pub use vsphere::VsphereConfig;
pub use webhook::WebhookConfig;

use crate::HostError;
use sdci_protocol::job::Step;
use sdci_protocol::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Qubes version used when a commit names none (or `ci-config` fails); default: the newest
    /// version among `[pools]` (`4.2` without pools).
    #[serde(default)]
    pub default_version: String,
    /// Repository used by `sdci-host run` (manual jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_repo: Option<String>,
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// The HTTP server's own bounds and the operator endpoints' token.
    #[serde(default)]
    pub http: HttpConfig,
    /// The bounds of the event ingest.
    #[serde(default)]
    pub ingest: IngestConfig,
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
    /// Slack notifications.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Nightly jobs and their schedules.
    #[serde(default)]
    pub nightly: NightlyConfig,
    /// Golden-snapshot rotation.
    #[serde(default)]
    pub rotation: RotationConfig,
    /// The Qubes update commands run in dom0.
    #[serde(default)]
    pub updates: UpdatesConfig,
    /// Test results: the bounds of reading them, flakes, the quarantine list (`[tests]`).
    #[serde(default)]
    pub tests: TestsConfig,
    /// The libvirt daemons of pools with `backend = "libvirt"` (the client's own type).
    #[serde(default)]
    pub libvirt: sdci_libvirt::LibvirtConfig,
    /// One pool of VMs per Qubes version, keyed by the version (`[pools."4.2"]`). Last, so the
    /// effective configuration prints as valid TOML (tables after values).
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
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
/// The newest Qubes version among the pools (by number: `4.10` is newer than `4.9`), else `4.2`.
fn newest_pool(pools: &BTreeMap<String, PoolConfig>) -> String {
    let num = |v: &str| -> (u64, u64) {
        let (a, b) = v.split_once('.').unwrap_or((v, "0"));
        (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
    };
    pools
        .keys()
        .max_by_key(|v| num(v))
        .cloned()
        .unwrap_or_else(|| "4.2".into())
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

impl Config {
    /// Parses a configuration from TOML text and validates every table.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, HostError> {
        let mut cfg: Self = toml::from_str(text).map_err(|e| HostError::Config {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        if cfg.default_version.is_empty() {
            cfg.default_version = newest_pool(&cfg.pools);
        }
        cfg.validate().map_err(|message| HostError::Config {
            path: origin.to_owned(),
            message,
        })?;
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

    /// Every check serde cannot make, table by table; the message names the key.
    fn validate(&self) -> Result<(), String> {
        if self.public_url.ends_with('/') {
            return Err("public_url must not end with '/'".into());
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(format!(
                "public_url {:?}: write the URL GitHub and browsers use, e.g. https://ci.example.org",
                self.public_url
            ));
        }
        if let Some(r) = &self.default_repo {
            r.parse::<sdci_protocol::RepoName>()
                .map_err(|e| format!("default_repo: {e}; write owner/name"))?;
        }
        self.webhook.validate()?;
        self.http.validate()?;
        self.ingest.validate()?;
        self.agent.validate()?;
        self.vsphere.validate()?;
        self.dom0.validate()?;
        self.jobs.validate()?;
        self.deadlines.validate()?;
        for (v, p) in &self.pools {
            p.validate(v)?;
        }
        pools::validate_routes(&self.pools)?;
        libvirt::validate(&self.libvirt)?;
        self.notify.validate()?;
        self.nightly.validate()?;
        self.rotation.validate(&self.pools)?;
        self.updates.validate()?;
        self.tests.validate()?;
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("sdci.sqlite3")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// The dom0 steps of every job's file. Updates are never among them: a job with
    /// `update = true` gets the update phase (then a reboot) before the job file is uploaded,
    /// so they run exactly once.
    pub fn steps(&self) -> Vec<Step> {
        self.jobs
            .steps
            .clone()
            .unwrap_or_else(sdci_protocol::job::default_steps)
    }

    /// Whether some pool's VMs are on `backend` (a file without pools means vSphere, the
    /// default backend, as before pools chose one).
    pub fn uses(&self, backend: Backend) -> bool {
        if self.pools.is_empty() {
            return backend == Backend::Vsphere;
        }
        self.pools.values().any(|p| p.backend == backend)
    }

    /// The files holding secrets, with the key naming each: (key, path, required by `serve`).
    /// vSphere's password and dom0's (vSphere guest operations log in with it) are required only
    /// when a pool is on vSphere: libvirt's guest agent needs no login.
    pub fn secret_files(&self) -> Vec<(&'static str, &Path, bool)> {
        let vsphere = self.uses(Backend::Vsphere);
        let mut out = vec![
            (
                "webhook.secret_file",
                self.webhook.secret_file.as_path(),
                true,
            ),
            (
                "vsphere.password_file",
                self.vsphere.password_file.as_path(),
                vsphere,
            ),
            (
                "dom0.password_file",
                self.dom0.password_file.as_path(),
                vsphere,
            ),
        ];
        if let Some(p) = &self.notify.slack_webhook_file {
            out.push(("notify.slack_webhook_file", p.as_path(), false));
        }
        if let Some(p) = &self.http.admin_token_file {
            out.push(("http.admin_token_file", p.as_path(), true));
        }
        out
    }

    /// The effective configuration as TOML, defaults filled in, with each secret file shown as
    /// `<file: PATH, N bytes>` (or why it cannot be read) — never its contents.
    pub fn effective_toml(&self) -> Result<String, HostError> {
        let bad = |e: String| HostError::Invalid(format!("rendering the configuration: {e}"));
        let mut value = toml::Value::try_from(self).map_err(|e| bad(e.to_string()))?;
        for (key, path, _) in self.secret_files() {
            let shown = match std::fs::metadata(path) {
                Ok(m) => format!("<file: {}, {} bytes>", path.display(), m.len()),
                Err(e) => format!("<file: {}, unreadable: {e}>", path.display()),
            };
            let mut parts = key.split('.').collect::<Vec<_>>();
            let leaf = parts.pop().unwrap_or_default();
            let mut t = Some(&mut value);
            for p in parts {
                t = t.and_then(|v| v.get_mut(p));
            }
            if let Some(table) = t.and_then(|v| v.as_table_mut()) {
                table.insert(leaf.into(), toml::Value::String(shown));
            }
        }
        toml::to_string(&value).map_err(|e| bad(e.to_string()))
    }
}

/// Reads a secret from a file by protocol's one rule (one trailing newline ignored); an error
/// says which secret and names the file.
pub fn read_secret(path: &Path, what: &str) -> Result<Secret, HostError> {
    Secret::read_file(path).map_err(|e| HostError::Config {
        path: path.to_owned(),
        message: format!("the {what} file: {e}"),
    })
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
    fn a_bad_cron_entry_is_refused_at_load_naming_the_file_the_key_and_the_fix() {
        let text = "[[nightly.schedule]]\nbranch = \"main\"\ncron = \"0 25 * * *\"\n\
                    time_zone = \"UTC\"\n";
        let e = Config::parse(text, Path::new("/etc/sdci/host.toml"))
            .unwrap_err()
            .to_string();
        for want in [
            "/etc/sdci/host.toml",
            "nightly.schedule[0]",
            "hour",
            "write e.g.",
        ] {
            assert!(e.contains(want), "{want:?} missing in {e}");
        }
    }

    #[test]
    fn a_bad_tls_table_is_refused_at_load() {
        let e = Config::parse("[vsphere.tls]\nmode = \"pinnned\"\n", Path::new("h.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pinnned") && e.contains("h.toml"), "{e}");
        let e = Config::parse(
            "[vsphere.tls]\nmode = \"pinned\"\nsha256 = [\"abc\"]\n",
            Path::new("h.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("vsphere.tls.sha256"), "{e}");
    }

    #[test]
    fn the_effective_configuration_shows_secret_files_never_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s");
        std::fs::write(&secret, "hunter2-very-secret\n").unwrap();
        let c = Config::parse(
            &format!("[webhook]\nsecret_file = \"{}\"\n", secret.display()),
            Path::new("x"),
        )
        .unwrap();
        let text = c.effective_toml().unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains(&format!("<file: {}, 20 bytes>", secret.display())),
            "{text}"
        );
        // What it prints is a configuration the host reads back.
        assert!(toml::from_str::<toml::Table>(&text).is_ok(), "{text}");
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
        assert_eq!(c.agent.commit_statuses, d.agent.commit_statuses);
        assert_eq!(c.agent.check_name, d.agent.check_name);
        assert_eq!(c.dom0.user, d.dom0.user);
        assert_eq!(c.jobs.max_attempts, d.jobs.max_attempts);
        assert_eq!(c.jobs.poll_interval_ms, d.jobs.poll_interval_ms);
        assert_eq!(c.jobs.outage_retry_ms, d.jobs.outage_retry_ms);
        assert_eq!(c.jobs.lease_ttl_secs, d.jobs.lease_ttl_secs);
        assert_eq!(c.jobs.status_refusals, d.jobs.status_refusals);
        assert_eq!(c.jobs.dom0_log_max_bytes, d.jobs.dom0_log_max_bytes);
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

    /// README's "Notifications, nightly jobs, updates and snapshot rotation" block documents
    /// these options: it must parse, and the values it shows as defaults must be the defaults.
    #[test]
    fn the_readme_block_parses_and_shows_the_defaults() {
        let block =
            readme_toml_block("### Notifications, nightly jobs, updates and snapshot rotation");
        let c = Config::parse(&block, Path::new("README.md")).unwrap();
        let d = Config::parse("", Path::new("x")).unwrap();
        let (n, dn) = (&c.notify, &d.notify);
        assert_eq!(
            (
                &n.outcomes,
                n.rotation,
                n.attempts,
                n.backoff_ms,
                n.timeout_secs,
                n.sweep_ms
            ),
            (
                &dn.outcomes,
                dn.rotation,
                dn.attempts,
                dn.backoff_ms,
                dn.timeout_secs,
                dn.sweep_ms
            )
        );
        assert_eq!(c.updates.dom0, d.updates.dom0);
        assert_eq!(c.updates.templates, d.updates.templates);
        assert_eq!(c.updates.step_timeout_secs, d.updates.step_timeout_secs);
        let (r, dr) = (&c.rotation, &d.rotation);
        assert_eq!(
            (
                r.keep,
                r.wait_free_secs,
                r.busy_poll_secs,
                r.smoke_step_secs
            ),
            (
                dr.keep,
                dr.wait_free_secs,
                dr.busy_poll_secs,
                dr.smoke_step_secs
            )
        );
        assert!(r.schedule[0].update);
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
