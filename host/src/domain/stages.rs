//! Stages (issue 18): a job's steps grouped into named, consecutive stages, and the names the
//! rest of the host derives from them. Pure rules, no I/O.
//!
//! The default is two stages: `provision` = every step up to and including `make-dev` (SDW's
//! `make dev`, which installs every qube: the hour a re-run wants to skip), `test` = the rest.
//! `[jobs] stages` replaces it: a list of `{ name, through }`, each stage running from the step
//! after the previous stage's `through` to its own `through` (a step name); the last stage may
//! leave `through` out and then runs to the end.
//!
//! Invariants:
//! - Every step belongs to exactly one stage, in order; no stage is empty; names are unique
//!   and `[a-z0-9-]`, at most 32 bytes (they appear in snapshot names and URLs).
//! - The provisioned snapshot of job `ID` is `sdci-job-<ID>-provisioned` ([`snapshot_name`]);
//!   every stage snapshot starts with [`SNAPSHOT_PREFIX`], so no golden or rotation snapshot
//!   (`[pools] golden_snapshot`, `update_*`) can ever match it and pruning by that prefix
//!   touches stage snapshots only.
//! - A re-run `--from S` runs the steps of `S` and every later stage ([`steps_from`]) and is
//!   possible only from the stage right after [`PROVISION`] (the one snapshot taken).

use serde::{Deserialize, Serialize};

/// The stage whose end is snapshotted.
pub const PROVISION: &str = "provision";
/// The stage a "Re-run tests" starts from.
pub const TEST: &str = "test";
/// The prefix of every stage snapshot.
pub const SNAPSHOT_PREFIX: &str = "sdci-job-";

/// One stage as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    /// The name of the stage's last step; `None` (last stage only): to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
}

/// The built-in stages: `provision` through `make-dev`, then `test`.
pub fn default_stages() -> Vec<StageSpec> {
    vec![
        StageSpec {
            name: PROVISION.into(),
            through: Some("make-dev".into()),
        },
        StageSpec {
            name: TEST.into(),
            through: None,
        },
    ]
}

/// The stage of each step, in step order, or why the stages do not fit the steps.
pub fn assign(step_names: &[&str], stages: &[StageSpec]) -> Result<Vec<String>, String> {
    if stages.is_empty() {
        return Err("jobs.stages: at least one stage".into());
    }
    let mut seen = std::collections::HashSet::new();
    for s in stages {
        let ok = !s.name.is_empty()
            && s.name.len() <= 32
            && s.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!(
                "jobs.stages: stage name {:?} must be 1-32 of [a-z0-9-]",
                s.name
            ));
        }
        if !seen.insert(s.name.as_str()) {
            return Err(format!("jobs.stages: stage {:?} twice", s.name));
        }
    }
    let mut out = Vec::with_capacity(step_names.len());
    let mut at = 0usize;
    for (k, s) in stages.iter().enumerate() {
        let last = k + 1 == stages.len();
        let end = match &s.through {
            Some(t) => match step_names[at..].iter().position(|n| n == t) {
                Some(p) => at + p + 1,
                None => {
                    return Err(format!(
                        "jobs.stages: stage {:?} runs through step {t:?}, which is not a step \
                         after the previous stage (steps: {})",
                        s.name,
                        step_names.join(", ")
                    ))
                }
            },
            None if last => step_names.len(),
            None => {
                return Err(format!(
                    "jobs.stages: stage {:?} needs `through` (only the last stage runs to the end)",
                    s.name
                ))
            }
        };
        if end == at {
            return Err(format!("jobs.stages: stage {:?} has no steps", s.name));
        }
        out.extend(std::iter::repeat_n(s.name.clone(), end - at));
        at = end;
    }
    if at != step_names.len() {
        return Err(format!(
            "jobs.stages: steps after the last stage: {}",
            step_names[at..].join(", ")
        ));
    }
    Ok(out)
}

/// The index of the last step of [`PROVISION`] when the stages have one and a stage follows it
/// (only then is there something to re-run from its snapshot).
pub fn provision_end(stages_of_steps: &[String]) -> Option<usize> {
    let last = stages_of_steps.iter().rposition(|s| s == PROVISION)?;
    (last + 1 < stages_of_steps.len()).then_some(last)
}

/// The stage right after [`PROVISION`]: what a re-run from the snapshot starts with.
pub fn after_provision(stages_of_steps: &[String]) -> Option<&str> {
    provision_end(stages_of_steps).map(|i| stages_of_steps[i + 1].as_str())
}

/// The indices of the steps a re-run `--from from` runs: `from` and every later stage. Only
/// the stage right after `provision` can be started from (its snapshot is the only one).
pub fn steps_from(
    stages_of_steps: &[String],
    from: &str,
) -> Result<std::ops::Range<usize>, String> {
    match (
        provision_end(stages_of_steps),
        after_provision(stages_of_steps),
    ) {
        (Some(end), Some(next)) if next == from => Ok(end + 1..stages_of_steps.len()),
        (Some(_), Some(next)) => Err(format!(
            "a re-run can start only from stage {next:?} (the one after {PROVISION:?}, whose \
             end is snapshotted), not {from:?}"
        )),
        _ => Err(format!(
            "this job's steps have no {PROVISION:?} stage followed by another: nothing to re-run \
             from a snapshot"
        )),
    }
}

/// The name of job `id`'s provisioned snapshot.
pub fn snapshot_name(id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{id}-provisioned")
}

/// Consecutive runs of one stage: (stage, first index, one past the last) in order; what the
/// job page and the check run group by.
pub fn groups(stages_of_steps: &[String]) -> Vec<(String, usize, usize)> {
    let mut out: Vec<(String, usize, usize)> = Vec::new();
    for (i, s) in stages_of_steps.iter().enumerate() {
        match out.last_mut() {
            Some((name, _, end)) if name == s => *end = i + 1,
            _ => out.push((s.clone(), i, i + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_names() -> Vec<String> {
        sdci_protocol::job::default_steps()
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    #[test]
    fn by_default_provision_runs_through_make_dev_and_test_is_the_rest() {
        let names = default_names();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let stages = assign(&refs, &default_stages()).unwrap();
        let dev = refs.iter().position(|n| *n == "make-dev").unwrap();
        assert!(stages[..=dev].iter().all(|s| s == PROVISION));
        assert!(stages[dev + 1..].iter().all(|s| s == TEST));
        assert_eq!(provision_end(&stages), Some(dev));
        let rerun = steps_from(&stages, TEST).unwrap();
        assert_eq!(rerun.start, dev + 1);
        assert!(refs[rerun].contains(&"make-test"));
        assert_eq!(groups(&stages).len(), 2);
    }

    #[test]
    fn stages_that_do_not_fit_the_steps_are_refused_naming_the_problem() {
        let steps = ["a", "b", "c"];
        let st = |v: &[(&str, Option<&str>)]| -> Vec<StageSpec> {
            v.iter()
                .map(|(n, t)| StageSpec {
                    name: (*n).into(),
                    through: t.map(Into::into),
                })
                .collect()
        };
        let err = |v| assign(&steps, &st(v)).unwrap_err();
        assert!(err(&[("provision", Some("x")), ("test", None)]).contains("\"x\""));
        assert!(err(&[("provision", Some("b")), ("provision", None)]).contains("twice"));
        assert!(err(&[("Provision", Some("b")), ("test", None)]).contains("[a-z0-9-]"));
        assert!(err(&[("provision", None), ("test", None)]).contains("needs `through`"));
        assert!(err(&[("provision", Some("c")), ("test", None)]).contains("no steps"));
        assert!(err(&[("provision", Some("a"))]).contains("after the last stage"));
        // A `through` must come after the previous stage's.
        assert!(
            err(&[("provision", Some("b")), ("x", Some("a")), ("test", None)]).contains("\"a\"")
        );
        let ok = assign(&steps, &st(&[("provision", Some("a")), ("test", None)])).unwrap();
        assert_eq!(ok, ["provision", "test", "test"]);
    }

    #[test]
    fn a_rerun_starts_only_after_provision() {
        let s: Vec<String> = ["provision", "provision", "test", "lint"]
            .map(String::from)
            .to_vec();
        assert_eq!(steps_from(&s, "test").unwrap(), 2..4);
        assert!(steps_from(&s, "lint")
            .unwrap_err()
            .contains("only from stage \"test\""));
        let only: Vec<String> = vec!["provision".into()];
        assert!(steps_from(&only, "test").is_err());
        assert_eq!(snapshot_name("abc-1"), "sdci-job-abc-1-provisioned");
        assert!(snapshot_name("x").starts_with(SNAPSHOT_PREFIX));
    }
}
