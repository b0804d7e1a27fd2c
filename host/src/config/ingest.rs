//! `[ingest]`: the bounds of what the VM may send the host through the event ingest (contracts
//! §1). The code under test runs with sudo in dom0 and can write anything into the stream, so
//! each bound holds whatever it sends.
//!
//! Invariant: every bound is at least 1; the per-request cap is never below one event line
//! (`protocol::MAX_EVENT_LINE`), so an honest stream always makes progress.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Bytes one event request may carry; past it the request ends with
    /// `413 {"next_seq":N}` and the agent resumes with a new one.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    /// Bytes of streamed log kept per job attempt; past it one "truncated" line is written and
    /// further log text is dropped (dom0's `log.txt`, fetched at the end, stays the record).
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// Step numbers at most (`step` < this) recorded per attempt; events of higher steps are
    /// kept in the log but make no step rows.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
}

fn default_max_request_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_log_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_steps() -> u32 {
    256
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: default_max_request_bytes(),
            max_log_bytes: default_max_log_bytes(),
            max_steps: default_max_steps(),
        }
    }
}

impl IngestConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        let line = sdci_protocol::MAX_EVENT_LINE as u64 + 1;
        if self.max_request_bytes < line {
            return Err(format!(
                "ingest.max_request_bytes must be at least {line} (one event line; default {})",
                default_max_request_bytes()
            ));
        }
        if self.max_log_bytes == 0 {
            return Err(format!(
                "ingest.max_log_bytes must be at least 1 (default {})",
                default_max_log_bytes()
            ));
        }
        if self.max_steps == 0 {
            return Err("ingest.max_steps must be at least 1 (default 256)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::readme_toml_block;
    use super::super::Config;
    use super::*;
    use std::path::Path;

    #[test]
    fn the_readme_shows_the_ingest_defaults() {
        let c = Config::parse(
            &readme_toml_block("## Host configuration"),
            Path::new("README.md"),
        )
        .unwrap();
        let d = IngestConfig::default();
        assert_eq!(c.ingest.max_request_bytes, d.max_request_bytes);
        assert_eq!(c.ingest.max_log_bytes, d.max_log_bytes);
        assert_eq!(c.ingest.max_steps, d.max_steps);
    }

    #[test]
    fn a_request_cap_below_one_event_line_is_refused() {
        let e =
            Config::parse("[ingest]\nmax_request_bytes = 100\n", Path::new("h.toml")).unwrap_err();
        assert!(e.to_string().contains("ingest.max_request_bytes"), "{e}");
    }
}
