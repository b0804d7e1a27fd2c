//! The agent's configuration: one TOML file plus environment overrides; secrets live in files
//! (so systemd credentials work), read only when needed, by protocol's one rule (`Secret::read_file`).
//!
//! Where the file is: `--config FILE`, else `$SDCI_AGENT_CONFIG`, else `/etc/sdci/agent.toml`.
//! A file named explicitly must exist; the default path may be absent (built-in defaults: useful
//! for `run` in sd-dev, where the job carries the API base and a token). `SDCI_GITHUB_API`
//! overrides `api_url`; `SDCI_GITHUB_TOKEN_FILE` overrides `token_file` and selects token mode.
//! Unknown keys are refused, so a typo never silently drops a setting. Every option and its
//! default is listed in README.md, "Agent configuration".

use crate::error::{AgentError, Result};
use sdci_protocol::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file read when neither `--config` nor `$SDCI_AGENT_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sdci/agent.toml";
/// Commit-status context when none is configured (as the original runner used).
pub const DEFAULT_CONTEXT: &str = "sd-ci-runner";
pub const DEFAULT_API: &str = "https://api.github.com";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// GitHub REST API base (GitHub Enterprise: `https://HOST/api/v3`).
    pub api_url: String,
    /// Commit-status context.
    pub context: String,
    /// Personal access token, in a file (token mode).
    pub token_file: Option<PathBuf>,
    /// GitHub App (App mode).
    pub app: Option<AppConfig>,
    pub retry: RetryConfig,
    pub run: RunConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub app_id: u64,
    pub installation_id: u64,
    /// The App's private key (PEM, PKCS#1 as GitHub issues it, or PKCS#8).
    pub private_key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request (the first one included) on 5xx and network errors.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt (with ±25 % jitter) up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Longest wait for a rate limit to reset; a longer one fails the request (exit 2).
    pub max_rate_limit_wait_secs: u64,
    /// Bound on one attempt of a request: connect, send, and the whole answer read.
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The qrexec client program (tests point it at a stand-in).
    pub qrexec_client: String,
    /// qrexec target of the call; the policy allows `dom0` (or `@adminvm`).
    pub qrexec_target: String,
    /// The git program.
    pub git: String,
    /// Where the event spool (the relay's disk buffer) of each job is kept.
    pub spool_dir: PathBuf,
    /// zstd level of the tarball.
    pub zstd_level: i32,
    /// zstd worker threads; 0 = one per CPU.
    pub zstd_threads: u32,
    /// After the call ends, how long the relay may still take to deliver buffered events.
    pub relay_finish_timeout_secs: u64,
    /// Longest pause between reconnection attempts to the host's event endpoint.
    pub relay_max_backoff_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_url: DEFAULT_API.into(),
            context: DEFAULT_CONTEXT.into(),
            token_file: None,
            app: None,
            retry: RetryConfig::default(),
            run: RunConfig::default(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            max_rate_limit_wait_secs: 300,
            request_timeout_secs: 30,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            qrexec_client: "qrexec-client-vm".into(),
            qrexec_target: "dom0".into(),
            git: "git".into(),
            spool_dir: PathBuf::from("/var/tmp/sdci-agent"),
            zstd_level: 3,
            zstd_threads: 0,
            relay_finish_timeout_secs: 300,
            relay_max_backoff_ms: 10_000,
        }
    }
}

impl RetryConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
}

impl Config {
    /// Loads the configuration as the module doc describes, reading the environment.
    pub fn load(explicit: Option<&Path>) -> Result<Self> {
        Self::load_with_env(explicit, |k| std::env::var_os(k))
    }

    /// [`Config::load`] with the environment given as a function (for tests).
    pub fn load_with_env(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self> {
        let from_env = env("SDCI_AGENT_CONFIG").map(PathBuf::from);
        let (path, required) = match (explicit, from_env) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (p, true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut cfg = match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text)
                .map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Self::default(),
            Err(e) => {
                return Err(AgentError::Config(format!(
                    "cannot read {}: {e} (pass --config FILE, or set SDCI_AGENT_CONFIG)",
                    path.display()
                )))
            }
        };
        if let Some(api) = env("SDCI_GITHUB_API") {
            cfg.api_url = api.to_string_lossy().into_owned();
        }
        if let Some(file) = env("SDCI_GITHUB_TOKEN_FILE") {
            cfg.token_file = Some(PathBuf::from(file));
            cfg.app = None;
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Parses a TOML document (no environment, no checks beyond the shape).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn check(&self) -> Result<()> {
        if self.token_file.is_some() && self.app.is_some() {
            return Err(AgentError::Config(
                "both token_file and [app] are set: choose one way to authenticate".into(),
            ));
        }
        if !(self.api_url.starts_with("https://") || self.api_url.starts_with("http://")) {
            return Err(AgentError::Config(format!(
                "api_url {:?} is not an http(s) URL",
                self.api_url
            )));
        }
        if self.retry.max_attempts == 0 {
            return Err(AgentError::Config(
                "retry.max_attempts must be at least 1".into(),
            ));
        }
        if self.context.is_empty() {
            return Err(AgentError::Config("context must not be empty".into()));
        }
        Ok(())
    }
}

/// Reads a secret file (a token or key) by protocol's one rule ([`Secret::read_file`]: one
/// trailing newline ignored, nothing else; empty refused); errors name `what` and the path,
/// never the content.
pub fn read_secret(path: &Path, what: &str) -> Result<Secret> {
    Secret::read_file(path).map_err(|e| AgentError::Config(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.api_url, "https://api.github.com");
        assert_eq!(cfg.context, "sd-ci-runner");
        assert_eq!(cfg.run.qrexec_client, "qrexec-client-vm");
        assert_eq!(cfg.run.qrexec_target, "dom0");
        assert_eq!(cfg.retry.max_attempts, 8);
    }

    #[test]
    fn the_readme_example_parses_and_shows_the_real_defaults() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Agent configuration")
            .nth(1)
            .expect("README has an Agent configuration section");
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("the section has a toml block");
        let cfg = Config::parse(block).unwrap();
        let d = Config::default();
        assert_eq!(
            (cfg.api_url.as_str(), cfg.context.as_str()),
            (d.api_url.as_str(), d.context.as_str())
        );
        let r = (&cfg.retry, &d.retry);
        assert_eq!(
            (
                r.0.max_attempts,
                r.0.initial_backoff_ms,
                r.0.max_backoff_ms,
                r.0.max_rate_limit_wait_secs,
                r.0.request_timeout_secs
            ),
            (
                r.1.max_attempts,
                r.1.initial_backoff_ms,
                r.1.max_backoff_ms,
                r.1.max_rate_limit_wait_secs,
                r.1.request_timeout_secs
            )
        );
        let (a, b) = (&cfg.run, &d.run);
        assert_eq!(
            (
                &a.qrexec_client,
                &a.qrexec_target,
                &a.git,
                &a.spool_dir,
                a.zstd_level,
                a.zstd_threads,
                a.relay_finish_timeout_secs,
                a.relay_max_backoff_ms
            ),
            (
                &b.qrexec_client,
                &b.qrexec_target,
                &b.git,
                &b.spool_dir,
                b.zstd_level,
                b.zstd_threads,
                b.relay_finish_timeout_secs,
                b.relay_max_backoff_ms
            )
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::parse("api_ulr = \"x\"").is_err());
        assert!(Config::parse("[retry]\nmax_attempt = 3").is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "api_url = \"https://ghe.example/api/v3\"\n[app]\napp_id = 1\ninstallation_id = 2\nprivate_key_file = \"/k\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "SDCI_GITHUB_API" => Some(OsString::from("http://127.0.0.1:9")),
            "SDCI_GITHUB_TOKEN_FILE" => Some(OsString::from("/run/credentials/x/token")),
            _ => None,
        };
        let cfg = Config::load_with_env(Some(&file), env).unwrap();
        assert_eq!(cfg.api_url, "http://127.0.0.1:9");
        assert_eq!(
            cfg.token_file.as_deref(),
            Some(Path::new("/run/credentials/x/token"))
        );
        assert!(cfg.app.is_none(), "the token file selects token mode");
    }

    #[test]
    fn a_named_file_must_exist_but_the_default_may_be_absent() {
        let err =
            Config::load_with_env(Some(Path::new("/nonexistent/agent.toml")), no_env).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
        let env =
            |k: &str| (k == "SDCI_AGENT_CONFIG").then(|| OsString::from("/nonexistent/b.toml"));
        assert!(Config::load_with_env(None, env).is_err());
    }

    #[test]
    fn both_ways_of_authenticating_at_once_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "token_file = \"/t\"\n[app]\napp_id = 1\ninstallation_id = 2\nprivate_key_file = \"/k\"\n",
        )
        .unwrap();
        let err = Config::load_with_env(Some(&file), no_env).unwrap_err();
        assert!(err.to_string().contains("choose one"), "{err}");
    }

    #[test]
    fn secret_files_are_trimmed_and_empty_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "ghp_abc\n").unwrap();
        assert_eq!(read_secret(&f, "token").unwrap().expose(), "ghp_abc");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_secret(&f, "token").is_err());
    }
}
