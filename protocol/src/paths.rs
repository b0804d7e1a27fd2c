//! dom0's paths for a job, which the host and `sdci-dom0` must agree on (CONTRACTS.md §3).
//!
//! Relative to the dom0 user's home (`/home/<user>`, the working directory the host starts
//! `sdci-dom0 launch` in):
//!
//! ```text
//! .sdci/dom0.toml            dom0's configuration (optional)
//! .sdci/jobs/<id>/job.json   the job file the host uploads (JobFile)
//! .sdci/jobs/<id>/log.txt    dom0's log of the job, the authoritative copy the host downloads
//! .sdci/jobs/<id>/results.tar.zst   the job's test results and failure evidence (§11)
//! ```
//!
//! The paths are guest paths (POSIX strings on another machine), so they are `String`s, not
//! `PathBuf`s. A job id is one safe path component by construction ([`JobId`]).

use crate::ids::JobId;

/// dom0's configuration file, relative to the dom0 user's home.
pub const DOM0_CONFIG: &str = ".sdci/dom0.toml";
/// The default jobs directory, relative to the dom0 user's home (`jobs_dir` in dom0.toml).
pub const JOBS_DIR: &str = ".sdci/jobs";
/// The job file's name inside a job's directory.
pub const JOB_FILE: &str = "job.json";
/// dom0's log's name inside a job's directory.
pub const LOG_FILE: &str = "log.txt";
/// The results file's name inside a job's directory (CONTRACTS.md §11): written once, after
/// the steps, by a rename, so a reader never sees a partial file.
pub const RESULTS_FILE: &str = "results.tar.zst";

/// The home directory of a dom0 user: `/home/<user>`.
pub fn dom0_home(user: &str) -> String {
    format!("/home/{user}")
}

/// One job's directory in dom0 and the files in it, relative to the dom0 user's home
/// ([`JobPaths::relative`]) or absolute ([`JobPaths::in_home`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPaths {
    dir: String,
}

impl JobPaths {
    /// `.sdci/jobs/<id>`: what `sdci-dom0 launch` is given, run in the home directory.
    pub fn relative(id: &JobId) -> Self {
        Self {
            dir: format!("{JOBS_DIR}/{id}"),
        }
    }

    /// `<home>/.sdci/jobs/<id>`: what guest file operations need (absolute paths).
    pub fn in_home(home: &str, id: &JobId) -> Self {
        Self {
            dir: format!("{}/{JOBS_DIR}/{id}", home.trim_end_matches('/')),
        }
    }

    /// The job's directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// `<dir>/job.json`.
    pub fn job_file(&self) -> String {
        format!("{}/{JOB_FILE}", self.dir)
    }

    /// `<dir>/log.txt`.
    pub fn log_file(&self) -> String {
        format!("{}/{LOG_FILE}", self.dir)
    }

    /// `<dir>/results.tar.zst`.
    pub fn results_file(&self) -> String {
        format!("{}/{RESULTS_FILE}", self.dir)
    }
}

impl JobId {
    /// This job's paths relative to the dom0 user's home ([`JobPaths::relative`]).
    pub fn dom0_paths(&self) -> JobPaths {
        JobPaths::relative(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> JobId {
        "job-1".parse().unwrap()
    }

    #[test]
    fn a_jobs_files_are_under_sdci_jobs_id_relative_to_the_home() {
        let p = id().dom0_paths();
        assert_eq!(p.dir(), ".sdci/jobs/job-1");
        assert_eq!(p.job_file(), ".sdci/jobs/job-1/job.json");
        assert_eq!(p.log_file(), ".sdci/jobs/job-1/log.txt");
        assert_eq!(p.results_file(), ".sdci/jobs/job-1/results.tar.zst");
    }

    #[test]
    fn absolute_paths_are_the_same_under_the_dom0_users_home() {
        let home = dom0_home("user");
        assert_eq!(home, "/home/user");
        let p = JobPaths::in_home(&home, &id());
        assert_eq!(p.job_file(), "/home/user/.sdci/jobs/job-1/job.json");
        assert_eq!(p.log_file(), "/home/user/.sdci/jobs/job-1/log.txt");
        assert_eq!(
            p.results_file(),
            "/home/user/.sdci/jobs/job-1/results.tar.zst"
        );
        assert_eq!(JobPaths::in_home("/home/user/", &id()), p);
    }
}
