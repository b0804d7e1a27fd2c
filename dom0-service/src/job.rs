//! dom0's own job files: `<jobs_dir>/<id>/job.json`, uploaded by the host (trusted), and the
//! files the service keeps next to it (`log.txt`, `results.tar.zst`, the fresh `tree/`, the
//! `run.started` marker).
//!
//! Invariants: a job id reaches the file system only as a validated [`JobId`], i.e. one path
//! component of `[a-z0-9-]` under the configured jobs directory; the job file is replaced only
//! atomically ([`replace_job_file`]: a fresh file beside it, fsync, rename, fsync of the
//! directory), so a reader sees the old file or the new one, never a torn one.

use crate::error::{Error, Result};
use sdci_protocol::paths::{JOB_FILE, LOG_FILE, RESULTS_FILE};
use sdci_protocol::{JobFile, JobId};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest job file accepted.
pub const MAX_JOB_FILE: u64 = 1 << 20;

/// The paths of one job in dom0, under the configured jobs directory (the file names are
/// protocol's, `sdci_protocol::paths`, which the host uses too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPaths {
    pub dir: PathBuf,
}

impl JobPaths {
    pub fn new(jobs_dir: &Path, id: &JobId) -> Self {
        Self {
            dir: jobs_dir.join(id.as_str()),
        }
    }
    pub fn job_file(&self) -> PathBuf {
        self.dir.join(JOB_FILE)
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
    /// The results file (contracts §11), written after the steps.
    pub fn results(&self) -> PathBuf {
        self.dir.join(RESULTS_FILE)
    }
    /// Where the archive is unpacked before it is moved into place.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }
    /// Created (exclusively) when `sdci.Run` starts for this job: a job runs once.
    pub fn started_marker(&self) -> PathBuf {
        self.dir.join("run.started")
    }
}

/// Reads the job file a command (`launch`, `rerun`) was given, which must be the one at
/// `<jobs_dir>/<id>/job.json` for the id inside it — where `sdci.Run` reads it — so no other
/// file can stand in for the host's upload. Returns it with its job's paths.
pub fn read_own_job_file(jobs_dir: &Path, jobfile: &Path) -> Result<(JobFile, JobPaths)> {
    let job = read_job_file(jobfile)?;
    let paths = JobPaths::new(jobs_dir, &job.spec.id);
    let same = match (
        std::fs::canonicalize(jobfile),
        std::fs::canonicalize(paths.job_file()),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return Err(Error::JobFile {
            path: jobfile.to_owned(),
            why: format!(
                "the job file must be {} (where sdci.Run reads it), not {}",
                paths.job_file().display(),
                jobfile.display()
            ),
        });
    }
    Ok((job, paths))
}

/// Reads and validates a job file (size-capped, not through a symlink).
pub fn read_job_file(path: &Path) -> Result<JobFile> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |why: String| Error::JobFile {
        path: path.to_owned(),
        why,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                "not found: the host uploads it before the job starts".into()
            } else {
                format!("cannot open it: {e}")
            })
        })?;
    let mut bytes = Vec::new();
    f.take(MAX_JOB_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_JOB_FILE {
        return Err(fail(format!("larger than {MAX_JOB_FILE} bytes")));
    }
    let file = JobFile::from_json(&bytes).map_err(|e| fail(e.to_string()))?;
    if !valid_vm_name(&file.spec.dev_vm) {
        return Err(fail(format!(
            "dev_vm {:?} is not a valid qube name",
            file.spec.dev_vm
        )));
    }
    Ok(file)
}

/// Replaces the job file at `path` with `file` atomically (a fresh `.job.json.new` beside it,
/// created exclusively without following a symlink, mode 0600, written and fsynced, renamed
/// over `path`, the directory fsynced). Used by `launch` to drop the agent's secrets.
pub fn replace_job_file(path: &Path, file: &JobFile) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |what: &str, e: std::io::Error| Error::JobFile {
        path: path.to_owned(),
        why: format!("{what}: {e}"),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".job.json.new");
    // A leftover of a crash (or anything else put there) goes first; unlink never follows.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("removing a stale .job.json.new", e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| fail("creating .job.json.new", e))?;
    f.write_all(file.to_json().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| fail("writing .job.json.new", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| fail("renaming .job.json.new over it", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("syncing its directory", e))?;
    Ok(())
}

/// A Qubes VM name: a letter, then up to 30 letters, digits, `-`, `_` or `.`.
pub fn valid_vm_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 31
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_follow_qubes_rules() {
        assert!(valid_vm_name("sd-dev"));
        assert!(valid_vm_name("a.b_c-1"));
        for bad in ["", "-x", "1vm", "sd dev", "a;b", &"a".repeat(32)] {
            assert!(!valid_vm_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn paths_stay_inside_the_jobs_dir() {
        let id: JobId = "job-1".parse().unwrap();
        let p = JobPaths::new(Path::new("/h/.sdci/jobs"), &id);
        assert_eq!(p.job_file(), Path::new("/h/.sdci/jobs/job-1/job.json"));
        assert_eq!(p.log(), Path::new("/h/.sdci/jobs/job-1/log.txt"));
    }
}
