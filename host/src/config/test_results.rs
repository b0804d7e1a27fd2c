//! `[tests]`: how the host reads a job's test results (issue 19) — the bounds of the results
//! archive and of each JUnit file (both are hostile input), the flaky rule, and the operator's
//! quarantine list (tests whose failure alone makes a job's check `neutral`, never `success`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestsConfig {
    /// Tests whose failure alone does not fail the job's check: its conclusion is `neutral`
    /// with them listed. Each entry is a test's `classname::name`, its name alone, or a pattern
    /// with `*`. Default: none.
    #[serde(default)]
    pub quarantine: Vec<String>,
    /// Runs of a test the alternation rule looks at (newest first; skips not counted).
    #[serde(default = "default_flaky_window")]
    pub flaky_window: usize,
    /// Fewer runs than this are never called alternating.
    #[serde(default = "default_flaky_min_runs")]
    pub flaky_min_runs: usize,
    /// Share of consecutive runs whose outcome changed (pass ↔ fail) that makes a test flaky.
    #[serde(default = "default_flaky_flip_rate")]
    pub flaky_flip_rate: f64,
    /// Bytes of one JUnit file parsed; a longer file is cut there (the cases before are kept).
    #[serde(default = "default_junit_max_bytes")]
    pub junit_max_bytes: u64,
    /// Test cases kept per job (over all its JUnit files).
    #[serde(default = "default_max_cases")]
    pub max_cases: usize,
    /// Members of `results.tar.zst` read; the rest is not listed.
    #[serde(default = "default_archive_max_members")]
    pub archive_max_members: usize,
    /// Bytes of `results.tar.zst` decompressed at most (a zstd bomb stops there).
    #[serde(default = "default_archive_max_unpacked_bytes")]
    pub archive_max_unpacked_bytes: u64,
}

fn default_flaky_window() -> usize {
    20
}
fn default_flaky_min_runs() -> usize {
    5
}
fn default_flaky_flip_rate() -> f64 {
    0.3
}
fn default_junit_max_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_max_cases() -> usize {
    20_000
}
fn default_archive_max_members() -> usize {
    1000
}
fn default_archive_max_unpacked_bytes() -> u64 {
    // dom0's `max_unpacked_bytes` (256 MiB) plus room for the manifest (contracts §11).
    260 * 1024 * 1024
}

impl Default for TestsConfig {
    fn default() -> Self {
        Self {
            quarantine: Vec::new(),
            flaky_window: default_flaky_window(),
            flaky_min_runs: default_flaky_min_runs(),
            flaky_flip_rate: default_flaky_flip_rate(),
            junit_max_bytes: default_junit_max_bytes(),
            max_cases: default_max_cases(),
            archive_max_members: default_archive_max_members(),
            archive_max_unpacked_bytes: default_archive_max_unpacked_bytes(),
        }
    }
}

impl TestsConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.flaky_window < 2 {
            return Err("tests.flaky_window must be at least 2 (default 20)".into());
        }
        if !(self.flaky_flip_rate > 0.0 && self.flaky_flip_rate <= 1.0) {
            return Err("tests.flaky_flip_rate must be in (0, 1] (default 0.3)".into());
        }
        if self.junit_max_bytes < 1024 {
            return Err("tests.junit_max_bytes must be at least 1024 (default 33554432)".into());
        }
        if self.max_cases == 0 || self.archive_max_members == 0 {
            return Err("tests.max_cases and tests.archive_max_members must be at least 1".into());
        }
        if self.archive_max_unpacked_bytes < 4096 {
            return Err("tests.archive_max_unpacked_bytes must be at least 4096".into());
        }
        for q in &self.quarantine {
            if q.is_empty() || q.len() > 1024 || q.chars().any(char::is_control) {
                return Err(format!(
                    "tests.quarantine: {q:?} must be a test's classname::name, its name or a \
                     pattern with *, 1 to 1024 bytes without control characters"
                ));
            }
        }
        Ok(())
    }

    /// The flaky rule of `domain::flakes`.
    pub fn flake_rule(&self) -> crate::domain::flakes::FlakeRule {
        crate::domain::flakes::FlakeRule {
            window: self.flaky_window,
            min_runs: self.flaky_min_runs,
            flip_rate: self.flaky_flip_rate,
        }
    }

    /// The quarantine entry naming test `key`, if any.
    pub fn quarantine_entry(&self, key: &str) -> Option<&str> {
        self.quarantine
            .iter()
            .find(|q| crate::domain::flakes::quarantined(q, key))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's "Host configuration" block documents `[tests]` and the results keys of `[jobs]`
    /// with their defaults.
    #[test]
    fn the_readme_shows_the_test_results_defaults() {
        let block = crate::config::tests::readme_toml_block("## Host configuration");
        let c = crate::config::Config::parse(&block, std::path::Path::new("README.md")).unwrap();
        let d = crate::config::Config::parse("", std::path::Path::new("x")).unwrap();
        let (a, b) = (&c.tests, &d.tests);
        assert_eq!(a.quarantine, b.quarantine);
        assert_eq!(
            (
                a.flaky_window,
                a.flaky_min_runs,
                a.max_cases,
                a.archive_max_members
            ),
            (
                b.flaky_window,
                b.flaky_min_runs,
                b.max_cases,
                b.archive_max_members
            )
        );
        assert_eq!(a.flaky_flip_rate, b.flaky_flip_rate);
        assert_eq!(
            (a.junit_max_bytes, a.archive_max_unpacked_bytes),
            (b.junit_max_bytes, b.archive_max_unpacked_bytes)
        );
        assert_eq!(c.jobs.results_max_bytes, d.jobs.results_max_bytes);
        assert_eq!(c.jobs.artifacts, d.jobs.artifacts);
        let shown = c.jobs.junit.unwrap();
        assert_eq!(
            shown,
            sdci_protocol::ResultsSpec::default().junit,
            "dom0's default"
        );
        assert_eq!(d.jobs.junit, None);
    }

    #[test]
    fn the_defaults_quarantine_nothing_and_validate() {
        let t: TestsConfig = toml::from_str("").unwrap();
        assert!(t.quarantine.is_empty());
        assert_eq!(t.flaky_window, 20);
        t.validate().unwrap();
        let t: TestsConfig = toml::from_str("flaky_flip_rate = 0.0").unwrap();
        assert!(t.validate().is_err());
        let t: TestsConfig = toml::from_str("quarantine = [\"\"]").unwrap();
        assert!(t.validate().unwrap_err().starts_with("tests.quarantine"));
    }
}
