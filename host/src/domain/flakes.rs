//! When a test is flaky, as a rule over its history (issue 19): pure, no I/O.
//!
//! A failed test is **flaky** when
//! 1. on the same commit and Qubes version it also passed (a re-run, a re-run from a stage, a
//!    nightly of the same sha): the code did not change, the outcome did; or
//! 2. its recent history alternates: among its last [`FlakeRule::window`] runs that passed or
//!    failed (skips do not count), the outcome changed from one run to the next at least
//!    [`FlakeRule::flip_rate`] of the time, over at least [`FlakeRule::min_runs`] runs.
//!
//! Rule 1 is evidence, rule 2 a suspicion; the label says which (`Flaky::describe`).

use super::junit::CaseOutcome;

/// One run of a test, as the history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub job_id: String,
    pub sha: String,
    pub version: String,
    pub outcome: CaseOutcome,
    /// When the job ended (or the results were stored).
    pub at_ms: i64,
}

/// The configurable part of the rule (`[tests]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlakeRule {
    pub window: usize,
    pub min_runs: usize,
    pub flip_rate: f64,
}

/// Why a test counts as flaky.
#[derive(Debug, Clone, PartialEq)]
pub enum Flaky {
    /// It passed on the same commit and version: that run.
    PassedOnSameCommit(Run),
    /// Its outcome changed `flips` times over its last `runs` runs.
    Alternates { flips: usize, runs: usize },
}

impl Flaky {
    /// The label's words after "known flaky: ", with `time` rendering a time.
    pub fn describe(&self, time: impl Fn(i64) -> String) -> String {
        match self {
            Self::PassedOnSameCommit(r) => format!(
                "passed on {} at {} (job {})",
                r.sha.get(..7).unwrap_or(&r.sha),
                time(r.at_ms),
                r.job_id
            ),
            Self::Alternates { flips, runs } => {
                format!("its outcome changed {flips} times in its last {runs} runs")
            }
        }
    }
}

/// Whether the test that ran as `this` (a failure or error) is flaky, given its `history`
/// (any order; `this` itself may be in it and is never its own evidence).
pub fn assess(this: &Run, history: &[Run], rule: &FlakeRule) -> Option<Flaky> {
    if !this.outcome.is_bad() {
        return None;
    }
    let same = history
        .iter()
        .filter(|r| {
            r.job_id != this.job_id
                && r.sha == this.sha
                && r.version == this.version
                && r.outcome == CaseOutcome::Passed
        })
        .max_by_key(|r| r.at_ms);
    if let Some(r) = same {
        return Some(Flaky::PassedOnSameCommit(r.clone()));
    }
    let mut runs: Vec<&Run> = history
        .iter()
        .filter(|r| r.outcome != CaseOutcome::Skipped)
        .collect();
    if !runs.iter().any(|r| r.job_id == this.job_id) {
        runs.push(this);
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
    runs.truncate(rule.window.max(2));
    if runs.len() < rule.min_runs.max(2) {
        return None;
    }
    let flips = runs
        .windows(2)
        .filter(|w| w[0].outcome.is_bad() != w[1].outcome.is_bad())
        .count();
    let rate = flips as f64 / (runs.len() - 1) as f64;
    (rate >= rule.flip_rate).then_some(Flaky::Alternates {
        flips,
        runs: runs.len(),
    })
}

/// Whether a quarantine entry names the test `key` (`classname::name`): the whole key, or the
/// name after the last `::`, or a pattern with `*` (any run of characters) over the key.
pub fn quarantined(entry: &str, key: &str) -> bool {
    if entry.contains('*') {
        return super::pattern::star_match(entry, key);
    }
    entry == key || key.rsplit_once("::").is_some_and(|(_, n)| n == entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaseOutcome::*;

    fn run(job: &str, sha: char, outcome: CaseOutcome, at: i64) -> Run {
        Run {
            job_id: job.into(),
            sha: sha.to_string().repeat(40),
            version: "4.2".into(),
            outcome,
            at_ms: at,
        }
    }

    const RULE: FlakeRule = FlakeRule {
        window: 20,
        min_runs: 5,
        flip_rate: 0.3,
    };

    #[test]
    fn a_failure_that_passed_on_the_same_commit_and_version_is_flaky_naming_that_run() {
        let this = run("j2", 'a', Failed, 20);
        let passed = run("j1", 'a', Passed, 10);
        let other_version = Run {
            version: "4.3".into(),
            ..run("j0", 'a', Passed, 15)
        };
        let f = assess(&this, &[passed.clone(), other_version, this.clone()], &RULE);
        assert_eq!(f, Some(Flaky::PassedOnSameCommit(passed)));
        let text = f.unwrap().describe(|ms| format!("t{ms}"));
        assert_eq!(text, "passed on aaaaaaa at t10 (job j1)");
    }

    #[test]
    fn a_test_failing_on_every_commit_is_a_regression_not_a_flake() {
        let this = run("j9", 'z', Failed, 100);
        let history: Vec<Run> = (0..10)
            .map(|i| {
                run(
                    &format!("j{i}"),
                    'b',
                    if i < 5 { Passed } else { Failed },
                    i,
                )
            })
            .collect();
        assert_eq!(assess(&this, &history, &RULE), None);
        assert_eq!(assess(&run("j9", 'z', Passed, 100), &history, &RULE), None);
    }

    #[test]
    fn alternating_history_beyond_the_rate_is_flaky() {
        let this = run("j9", 'z', Failed, 100);
        let history: Vec<Run> = (0..8)
            .map(|i| {
                let sha = char::from(b'b' + i as u8);
                run(
                    &format!("j{i}"),
                    sha,
                    if i % 2 == 0 { Passed } else { Failed },
                    i,
                )
            })
            .collect();
        assert_eq!(
            assess(&this, &history, &RULE),
            Some(Flaky::Alternates { flips: 7, runs: 9 })
        );
        let few: Vec<Run> = history[..2].to_vec();
        assert_eq!(assess(&this, &few, &RULE), None, "too few runs to judge");
    }

    #[test]
    fn quarantine_entries_match_the_key_the_name_or_a_pattern() {
        let key = "tests.test_vms.SD_VM_Tests::test_sd_vm_apt_sources";
        assert!(quarantined(key, key));
        assert!(quarantined("test_sd_vm_apt_sources", key));
        assert!(quarantined("tests.test_vms.*::test_sd_vm_*", key));
        assert!(!quarantined("test_sd_vm", key));
        assert!(!quarantined("*::test_other", key));
        assert!(quarantined("*", key));
    }
}
