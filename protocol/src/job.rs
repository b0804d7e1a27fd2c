//! The job file: what the host uploads into dom0 for one job.
//!
//! ```text
//! JobFile { version, spec: JobSpec, agent: AgentJob }
//!           │               │            └─ handed by dom0 to sd-dev (`sdci-agent run --job -`)
//!           │               └─ read only by dom0: steps, paths, deadlines
//!           └─ JOB_FILE_VERSION; a reader refuses versions it does not know
//! ```
//!
//! Invariants: unknown fields are rejected everywhere (a typo never silently drops a setting);
//! the steps run in dom0 come from [`JobSpec`] only, never from anything sd-dev sends; secrets are
//! wrapped in [`Secret`] (re-exported here from [`crate::secret`]) so `Debug` never prints them.
//!
//! Secrets and their lifetime: the host uploads a job file with the agent's secrets (an optional
//! `contents: read` token and the event secret); `sdci-dom0 launch` rewrites dom0's copy
//! without them ([`JobFile::without_secrets`]) before it starts anything, so no dom0 step can
//! read them from disk. A file without secrets still parses as a [`JobFile`] (dom0's `sdci.Run`
//! needs only the spec), but [`AgentJob::from_json`] refuses an agent part without its event
//! secret, and `launch` refuses to hand one over twice.
//!
//! Compatibility: every field added to version 1 has a default that means what older files
//! meant, so files written by an older host read the same (`post_final_status`,
//! `post_running_status` default to `true`: standalone behaviour).

use crate::ids::{CommitSha, JobId, RepoName};
use crate::results::ResultsSpec;
pub use crate::secret::Secret;
use crate::ProtocolError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The job file format this build writes and reads.
pub const JOB_FILE_VERSION: u32 = 1;

/// Why a job exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Push,
    PullRequest,
    Nightly,
    Manual,
}

impl Reason {
    pub const ALL: [Reason; 4] = [Self::Push, Self::PullRequest, Self::Nightly, Self::Manual];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::PullRequest => "pull_request",
            Self::Nightly => "nightly",
            Self::Manual => "manual",
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = ProtocolError;
    /// The inverse of [`Reason::as_str`]; anything else is refused, never guessed.
    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                ProtocolError::Json(format!(
                    "unknown job reason {s:?}: expected push, pull_request, nightly or manual"
                ))
            })
    }
}

/// One command run in dom0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Short name shown in logs and on the job page, e.g. `make-test`.
    pub name: String,
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Extra environment for this step (added to the job's environment).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit; at the limit the step's whole process group is killed.
    pub timeout_secs: u64,
}

impl Step {
    pub fn new(name: &str, argv: &[&str], timeout_secs: u64) -> Self {
        Self {
            name: name.to_owned(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: BTreeMap::new(),
            timeout_secs,
        }
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// What dom0 needs to run a job. Written by the host, read by `sdci-dom0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: JobId,
    pub repo: RepoName,
    pub sha: CommitSha,
    /// Branch (or PR head ref) the commit came from; informational.
    #[serde(default)]
    pub branch: Option<String>,
    pub reason: Reason,
    /// Qubes release of the pool, e.g. `4.2`.
    pub qubes_version: String,
    /// The dev VM (qrexec caller) allowed to deliver this job's tree, e.g. `sd-dev`.
    pub dev_vm: String,
    /// Absolute path of the checkout inside the dev VM (`SECUREDROP_DEV_DIR`).
    pub dev_dir: String,
    /// Run in order; the first failure stops the job.
    pub steps: Vec<Step>,
    /// Unix time (seconds) after which the whole job is abandoned as an infrastructure error.
    pub deadline_unix: u64,
    /// What dom0 collects into `results.tar.zst` after the steps (contracts §11). Absent: the
    /// defaults ([`ResultsSpec::default`]); the host leaves it out when its configuration is the
    /// default, so such a file also reads in a dom0 older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsSpec>,
}

impl JobSpec {
    /// What to collect: [`JobSpec::results`], else the defaults.
    pub fn results_spec(&self) -> ResultsSpec {
        self.results.clone().unwrap_or_default()
    }
}

/// The part of the job dom0 hands to the agent in sd-dev. Nothing in it reaches a dom0 step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentJob {
    pub version: u32,
    pub id: JobId,
    pub repo: RepoName,
    pub sha: CommitSha,
    /// Where the checkout goes in sd-dev; equals [`JobSpec::dev_dir`].
    pub dev_dir: String,
    /// `git` URL to fetch `sha` from (https, or a local path in tests).
    pub clone_url: String,
    /// GitHub REST API base, e.g. `https://api.github.com`.
    pub github_api: String,
    /// Short-lived, repository-scoped token (an App installation token, `contents: read`), if
    /// any; the agent revokes it after the fetch unless it posts the final status itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Commit-status context, default `sd-ci-runner`.
    pub status_context: String,
    /// The job's page on the host, used as the statuses' `target_url`.
    pub target_url: String,
    /// `POST` endpoint for the event stream (`/api/v1/jobs/{id}/events` on the host).
    pub event_url: String,
    /// Per-job bearer secret for `event_url`. Absent (empty) only in dom0's copy after `launch`
    /// handed it over ([`JobFile::without_secrets`]); [`AgentJob::from_json`] refuses that.
    #[serde(default = "no_secret", skip_serializing_if = "is_no_secret")]
    pub event_secret: Secret,
    /// Whether the agent posts the final status itself. `sdci-host` sets `false`: it posts every
    /// terminal status from its durable outbox (retried until GitHub takes it), so a GitHub outage
    /// at the end of a job cannot leave the commit `pending`. Defaults to `true` for standalone use.
    #[serde(default = "default_true")]
    pub post_final_status: bool,
    /// Whether the agent posts `pending` "The build is running" when it starts. `sdci-host` sets
    /// `false`: it posts `running` itself when launch starts, so the token the VM gets needs no
    /// `statuses` permission (contracts §8). Defaults to `true` for standalone use.
    #[serde(default = "default_true")]
    pub post_running_status: bool,
}

fn default_true() -> bool {
    true
}

fn no_secret() -> Secret {
    Secret::new(String::new())
}

fn is_no_secret(s: &Secret) -> bool {
    s.expose().is_empty()
}

/// The file at `~/.sdci/jobs/<id>/job.json` in dom0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub version: u32,
    pub spec: JobSpec,
    pub agent: AgentJob,
}

/// Reads the version field first, so a newer file gets a version error rather than a field error.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

fn check_version(json: &[u8]) -> Result<(), ProtocolError> {
    let probe: VersionProbe =
        serde_json::from_slice(json).map_err(|e| ProtocolError::Json(e.to_string()))?;
    if probe.version != JOB_FILE_VERSION {
        return Err(ProtocolError::UnsupportedVersion {
            found: probe.version,
            supported: JOB_FILE_VERSION,
        });
    }
    Ok(())
}

impl JobFile {
    /// Parses and checks a job file: version, shape, and that both parts describe the same job.
    pub fn from_json(json: &[u8]) -> Result<Self, ProtocolError> {
        check_version(json)?;
        let file: Self =
            serde_json::from_slice(json).map_err(|e| ProtocolError::Json(e.to_string()))?;
        file.validate()?;
        Ok(file)
    }

    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail (string keys, no non-finite floats).
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// This file with the agent's secrets (token, event secret) removed: what dom0 keeps once
    /// `launch` has the agent's part in memory.
    pub fn without_secrets(&self) -> JobFile {
        let mut file = self.clone();
        file.agent.token = None;
        file.agent.event_secret = no_secret();
        file
    }

    /// Whether the agent part still carries its event secret (i.e. it was not handed over yet).
    pub fn has_agent_secrets(&self) -> bool {
        !is_no_secret(&self.agent.event_secret)
    }

    pub fn validate(&self) -> Result<(), ProtocolError> {
        let (s, a) = (&self.spec, &self.agent);
        if self.version != JOB_FILE_VERSION || a.version != JOB_FILE_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                found: self.version.max(a.version),
                supported: JOB_FILE_VERSION,
            });
        }
        if s.id != a.id || s.repo != a.repo || s.sha != a.sha || s.dev_dir != a.dev_dir {
            return Err(ProtocolError::Inconsistent(
                "spec and agent parts name different jobs".into(),
            ));
        }
        if s.steps.is_empty() {
            return Err(ProtocolError::Inconsistent("no steps".into()));
        }
        if let Some(step) = s.steps.iter().find(|st| st.argv.is_empty()) {
            return Err(ProtocolError::Inconsistent(format!(
                "step {:?} has an empty argv",
                step.name
            )));
        }
        if !s.dev_dir.starts_with('/') {
            return Err(ProtocolError::Inconsistent(
                "dev_dir must be an absolute path".into(),
            ));
        }
        if let Some(results) = &s.results {
            results.validate()?;
        }
        Ok(())
    }
}

impl AgentJob {
    /// Parses the agent's part; refuses one without its event secret (a copy whose secrets
    /// were removed after the hand-over).
    pub fn from_json(json: &[u8]) -> Result<Self, ProtocolError> {
        check_version(json)?;
        let job: Self =
            serde_json::from_slice(json).map_err(|e| ProtocolError::Json(e.to_string()))?;
        if is_no_secret(&job.event_secret) {
            return Err(ProtocolError::Inconsistent(
                "the agent job has no event_secret (its secrets were already handed over)".into(),
            ));
        }
        Ok(job)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The default step list, after the original `dom0/runner.py`, updated for SDW at HEAD: test
/// prerequisites through `make install-dom0-test-prereqs`, which installs what HEAD's
/// `test-prereqs` checks for (more than the original's package list). `CI=true` is set for the test step.
pub fn default_steps() -> Vec<Step> {
    vec![
        Step::new("os-release", &["cat", "/etc/os-release"], 60),
        Step::new("sync-clock", &["sudo", "qvm-sync-clock"], 120),
        // SDW at HEAD has `make install-dom0-test-prereqs`; older commits do not, and get the
        // original's package list instead.
        Step::new(
            "test-prereqs",
            &[
                "sh",
                "-c",
                "if make -n install-dom0-test-prereqs >/dev/null 2>&1; \
                 then make install-dom0-test-prereqs; \
                 else sudo qubes-dom0-update -y python3-pytest python3-pytest-cov; fi",
            ],
            30 * 60,
        ),
        Step::new("make-clone", &["make", "clone"], 60 * 60),
        Step::new("make-dev", &["make", "dev"], 3 * 60 * 60),
        // `qvm-shutdown` has no tag filter (qvm-shutdown(1)): list the tagged qubes first.
        Step::new(
            "shutdown-sd-vms",
            &[
                "sh",
                "-c",
                "vms=$(qvm-ls --running --raw-list --tags sd-workstation); \
                 [ -z \"$vms\" ] || qvm-shutdown --wait --timeout 60 --force $vms",
            ],
            5 * 60,
        ),
        Step::new(
            "whonix-update",
            &[
                "sudo",
                "qubes-vm-update",
                "--show-output",
                "--targets",
                "whonix-gateway-17",
                "--force-update",
            ],
            60 * 60,
        ),
        Step::new("make-test", &["make", "test"], 2 * 60 * 60).with_env("CI", "true"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> JobFile {
        let id: JobId = "job-1".parse().unwrap();
        let repo: RepoName = "freedomofpress/securedrop-workstation".parse().unwrap();
        let sha: CommitSha = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        let dev_dir = "/home/user/securedrop-workstation".to_owned();
        JobFile {
            version: JOB_FILE_VERSION,
            spec: JobSpec {
                id: id.clone(),
                repo: repo.clone(),
                sha: sha.clone(),
                branch: Some("main".into()),
                reason: Reason::Push,
                qubes_version: "4.2".into(),
                dev_vm: "sd-dev".into(),
                dev_dir: dev_dir.clone(),
                steps: default_steps(),
                deadline_unix: 1_900_000_000,
                results: None,
            },
            agent: AgentJob {
                version: JOB_FILE_VERSION,
                id,
                repo,
                sha,
                dev_dir,
                clone_url: "https://github.com/freedomofpress/securedrop-workstation.git".into(),
                github_api: "https://api.github.com".into(),
                token: Some(Secret::new("ghs_secret")),
                status_context: "sd-ci-runner".into(),
                target_url: "https://ci.example/jobs/job-1".into(),
                event_url: "https://ci.example/api/v1/jobs/job-1/events".into(),
                event_secret: Secret::new("per-job"),
                post_final_status: true,
                post_running_status: true,
            },
        }
    }

    #[test]
    fn job_file_round_trips_through_json() {
        let file = sample();
        let back = JobFile::from_json(file.to_json().as_bytes()).unwrap();
        assert_eq!(back, file);
    }

    #[test]
    fn agent_job_round_trips_through_json() {
        let agent = sample().agent;
        assert_eq!(
            AgentJob::from_json(agent.to_json().as_bytes()).unwrap(),
            agent
        );
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        for (pointer, field) in [
            ("", "extra"),
            ("/spec", "extra"),
            ("/agent", "x"),
            ("/spec/steps/0", "shell"),
        ] {
            let mut v = serde_json::to_value(sample()).unwrap();
            v.pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(field.into(), serde_json::json!(1));
            let err = JobFile::from_json(v.to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Json(ref m) if m.contains("unknown field")),
                "{pointer}: {err}"
            );
        }
    }

    #[test]
    fn agent_posts_the_final_status_unless_told_otherwise() {
        let mut v = serde_json::to_value(sample().agent).unwrap();
        v.as_object_mut().unwrap().remove("post_final_status");
        assert!(
            AgentJob::from_json(v.to_string().as_bytes())
                .unwrap()
                .post_final_status
        );
        v["post_final_status"] = serde_json::json!(false);
        assert!(
            !AgentJob::from_json(v.to_string().as_bytes())
                .unwrap()
                .post_final_status
        );
    }

    #[test]
    fn agent_posts_the_running_status_unless_told_otherwise() {
        let mut v = serde_json::to_value(sample().agent).unwrap();
        v.as_object_mut().unwrap().remove("post_running_status");
        assert!(
            AgentJob::from_json(v.to_string().as_bytes())
                .unwrap()
                .post_running_status,
            "files of older hosts keep their meaning"
        );
        v["post_running_status"] = serde_json::json!(false);
        assert!(
            !AgentJob::from_json(v.to_string().as_bytes())
                .unwrap()
                .post_running_status
        );
    }

    #[test]
    fn a_job_file_without_secrets_keeps_the_spec_and_names_no_secret() {
        let file = sample();
        assert!(file.has_agent_secrets());
        let bare = file.without_secrets();
        let json = bare.to_json();
        assert!(
            !json.contains("ghs_secret") && !json.contains("per-job"),
            "{json}"
        );
        assert!(!json.contains("event_secret") && !json.contains("\"token\""));
        let back = JobFile::from_json(json.as_bytes()).unwrap();
        assert_eq!(back.spec, file.spec, "dom0 still has its steps");
        assert!(!back.has_agent_secrets());
        let err = AgentJob::from_json(back.agent.to_json().as_bytes()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Inconsistent(ref m) if m.contains("event_secret")),
            "{err}"
        );
    }

    #[test]
    fn future_version_is_refused_with_a_version_error() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = serde_json::json!(2);
        v["new_thing"] = serde_json::json!(true);
        let err = JobFile::from_json(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );
    }

    #[test]
    fn invalid_ids_inside_a_job_file_are_rejected() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["spec"]["id"] = serde_json::json!("../../etc");
        assert!(JobFile::from_json(v.to_string().as_bytes()).is_err());
    }

    #[test]
    fn mismatched_parts_are_inconsistent() {
        let mut file = sample();
        file.agent.id = "other".parse().unwrap();
        let err = JobFile::from_json(file.to_json().as_bytes()).unwrap_err();
        assert!(matches!(err, ProtocolError::Inconsistent(_)));
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let shown = format!("{:?}", sample());
        assert!(
            !shown.contains("ghs_secret") && !shown.contains("per-job"),
            "{shown}"
        );
    }

    #[test]
    fn a_job_file_without_results_means_the_default_collection_and_writes_no_field() {
        let file = sample();
        let json = file.to_json();
        assert!(!json.contains("\"results\""), "{json}");
        let back = JobFile::from_json(json.as_bytes()).unwrap();
        assert_eq!(back.spec.results_spec(), ResultsSpec::default());
    }

    #[test]
    fn a_job_files_results_round_trip_and_bad_globs_are_refused() {
        let mut file = sample();
        file.spec.results = Some(ResultsSpec {
            junit: vec!["**/junit-*.xml".into()],
            artifacts: vec!["build-log/*.log".into()],
        });
        let back = JobFile::from_json(file.to_json().as_bytes()).unwrap();
        assert_eq!(back, file);
        file.spec.results = Some(ResultsSpec {
            junit: vec!["../../../etc/shadow".into()],
            artifacts: vec![],
        });
        let err = JobFile::from_json(file.to_json().as_bytes()).unwrap_err();
        assert!(matches!(err, ProtocolError::Inconsistent(_)), "{err}");
    }

    #[test]
    fn default_steps_end_with_make_test_under_ci_true() {
        let steps = default_steps();
        let last = steps.last().unwrap();
        assert_eq!(last.argv, ["make", "test"]);
        assert_eq!(last.env.get("CI").map(String::as_str), Some("true"));
        let names: Vec<_> = steps.iter().map(|s| s.name.as_str()).collect();
        let pos = |n| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("make-clone") < pos("make-dev") && pos("make-dev") < pos("make-test"));
    }
}
