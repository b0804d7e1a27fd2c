//! `[http]`: how the HTTP server protects itself from its clients (everything that reaches the
//! listener is untrusted until a signature or bearer says otherwise), and who may read
//! `/metrics` and call the operator API.
//!
//! Invariants: every bound has a default and must be at least 1 (a zero would disable the
//! protection silently); the admin token is only a path to a file (read at start-up by
//! [`super::read_secret`]), never the token itself.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds a client has to send a request's line and headers (each request of a
    /// keep-alive connection; also how long an idle connection is kept); then it is closed.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Seconds a webhook delivery's whole body may take to arrive (then 408).
    #[serde(default = "default_body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// Seconds an event stream may stay silent before the host ends it (the agent resumes
    /// with a new request at `next_seq`, contracts §1).
    #[serde(default = "default_event_idle_timeout_secs")]
    pub event_idle_timeout_secs: u64,
    /// Open connections at most; a connection beyond this is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// File holding a bearer token that `/metrics` and `POST /api/v1/wake` then require
    /// (`Authorization: Bearer <token>`); absent, they are open to whoever reaches the listener.
    /// The same token signs operators in on the job pages (`/login`) and authorizes the job
    /// actions (`surface::web::session`); absent, nothing on the web can change a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// With `admin_token_file`: the read API under `/api/` (jobs, logs, the live log stream)
    /// needs the bearer too (the job pages' live log then needs a proxy that adds it). The
    /// agents' event ingest keeps its own per-job bearer either way.
    #[serde(default)]
    pub api_needs_token: bool,
}

fn default_header_timeout_secs() -> u64 {
    10
}
fn default_body_timeout_secs() -> u64 {
    30
}
fn default_event_idle_timeout_secs() -> u64 {
    600
}
fn default_max_connections() -> usize {
    512
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout_secs: default_header_timeout_secs(),
            body_timeout_secs: default_body_timeout_secs(),
            event_idle_timeout_secs: default_event_idle_timeout_secs(),
            max_connections: default_max_connections(),
            admin_token_file: None,
            api_needs_token: false,
        }
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        for (key, v, d) in [
            ("header_timeout_secs", self.header_timeout_secs, 10),
            ("body_timeout_secs", self.body_timeout_secs, 30),
            ("event_idle_timeout_secs", self.event_idle_timeout_secs, 600),
            ("max_connections", self.max_connections as u64, 512),
        ] {
            if v == 0 {
                return Err(format!("http.{key} must be at least 1 (default {d})"));
            }
        }
        if self.api_needs_token && self.admin_token_file.is_none() {
            return Err("http.api_needs_token needs http.admin_token_file".into());
        }
        Ok(())
    }

    pub fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.header_timeout_secs)
    }
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.body_timeout_secs)
    }
    pub fn event_idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.event_idle_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::readme_toml_block;
    use super::super::Config;
    use super::*;
    use std::path::Path;

    #[test]
    fn the_readme_shows_the_http_defaults() {
        let c = Config::parse(
            &readme_toml_block("## Host configuration"),
            Path::new("README.md"),
        )
        .unwrap();
        let d = HttpConfig::default();
        assert_eq!(c.http.header_timeout_secs, d.header_timeout_secs);
        assert_eq!(c.http.body_timeout_secs, d.body_timeout_secs);
        assert_eq!(c.http.event_idle_timeout_secs, d.event_idle_timeout_secs);
        assert_eq!(c.http.max_connections, d.max_connections);
    }

    #[test]
    fn a_zero_bound_is_refused_naming_the_key() {
        let e = Config::parse("[http]\nmax_connections = 0\n", Path::new("h.toml")).unwrap_err();
        assert!(e.to_string().contains("http.max_connections"), "{e}");
    }
}
