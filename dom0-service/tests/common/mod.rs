//! A dom0 rooted in a temporary directory, and the real `sdci-dom0` binary run the way qrexec
//! runs it (argv[1], QREXEC_SERVICE_ARGUMENT, QREXEC_REMOTE_DOMAIN, QREXEC_SERVICE_FULL_NAME,
//! QREXEC_REQUESTED_TARGET…).
//!
//! When the tests run as root, the service is configured with `user = "nobody"` and the whole
//! temporary directory is handed to nobody before each call: every call then exercises the
//! switch from root to the dom0 user, as on Qubes 4.1.
#![allow(dead_code, clippy::unwrap_used)]

use sdci_protocol::job::{AgentJob, JobFile, JobSpec, Reason, Secret, Step};
use sdci_protocol::{Event, EventKind, EventReader, Outcome, JOB_FILE_VERSION};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_sdci-dom0");
/// Safety net only: no test should come near it.
pub const SAFETY_NET: Duration = Duration::from_secs(180);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub struct Dom0 {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    pub jobs: PathBuf,
    pub checkout: PathBuf,
    pub config: PathBuf,
}

impl Dom0 {
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// `extra` is appended to the generated configuration (top-level keys first, then tables).
    pub fn with_config(extra: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home/user");
        let jobs = home.join(".sdci/jobs");
        std::fs::create_dir_all(&jobs).unwrap();
        let checkout = home.join("securedrop-workstation");
        let config = tmp.path().join("dom0.toml");
        let user = if is_root() { "user = \"nobody\"\n" } else { "" };
        std::fs::write(
            &config,
            format!(
                "jobs_dir = {:?}\ncheckout_dir = {:?}\n{user}kill_grace_secs = 2\ndrain_secs = 1\n\
                 privileged_remove = [\"false\"]\n{extra}",
                jobs, checkout
            ),
        )
        .unwrap();
        Self {
            tmp,
            home,
            jobs,
            checkout,
            config,
        }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs.join(id)
    }

    /// Writes dom0's job file for `id` with these steps and dev VM `sd-dev`.
    pub fn job(&self, id: &str, steps: Vec<Step>) -> JobFile {
        let file = job_file(id, steps);
        let dir = self.job_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("job.json"), file.to_json()).unwrap();
        file
    }

    /// Gives the tree to `nobody` when running as root (the service drops to it).
    pub fn hand_over(&self) {
        if is_root() {
            chown_tree(self.root(), 65534, 65534);
        }
    }

    /// The service as qrexec starts it for `sdci.Run+<id>` from sd-dev.
    pub fn service(&self, id: &str) -> Command {
        let mut c = self.command();
        c.args(["run", "--", id])
            .env("QREXEC_SERVICE_ARGUMENT", id)
            .env("QREXEC_SERVICE_FULL_NAME", format!("sdci.Run+{id}"))
            .env("QREXEC_REMOTE_DOMAIN", "sd-dev")
            .env("QREXEC_REQUESTED_TARGET", "dom0")
            .env("QREXEC_REQUESTED_TARGET_TYPE", "name");
        c
    }

    /// The bare binary with this dom0's environment and no qrexec variables.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &self.home)
            .env("SDCI_DOM0_CONFIG", &self.config)
            .current_dir(&self.home);
        c
    }

    /// Runs `cmd` with `stdin` as its input; the safety net kills it if it never ends.
    pub fn call(&self, cmd: Command, stdin: &[u8]) -> Output {
        self.hand_over();
        run_with_input(cmd, stdin)
    }

    /// Every path under the temporary directory except below `except`, with kind and size.
    pub fn snapshot(&self, except: &Path) -> BTreeMap<PathBuf, (u32, u64)> {
        let mut out = BTreeMap::new();
        walk(self.root(), &mut |p, md| {
            if !p.starts_with(except) {
                out.insert(p.to_owned(), (md.mode() & 0o170000, md.len()));
            }
        });
        out
    }
}

pub fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The service may refuse before reading: a broken pipe is expected then.
        let _ = input.write_all(&data);
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(SAFETY_NET) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: plain kill of our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("sdci-dom0 did not exit within {SAFETY_NET:?}");
        }
    };
    writer.join().unwrap();
    out
}

pub fn job_file(id: &str, steps: Vec<Step>) -> JobFile {
    let sha: sdci_protocol::CommitSha = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
    let repo: sdci_protocol::RepoName = "freedomofpress/securedrop-workstation".parse().unwrap();
    let id: sdci_protocol::JobId = id.parse().unwrap();
    let dev_dir = "/home/user/securedrop-workstation".to_string();
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
            steps,
            deadline_unix: 4_000_000_000,
            results: None,
        },
        agent: AgentJob {
            version: JOB_FILE_VERSION,
            id,
            repo,
            sha,
            dev_dir,
            clone_url: "/srv/git/sdw.git".into(),
            github_api: "http://127.0.0.1:1".into(),
            token: Some(Secret::new("ghs_test_token")),
            status_context: "sd-ci-runner".into(),
            target_url: "http://127.0.0.1:1/jobs/x".into(),
            event_url: "http://127.0.0.1:1/api/v1/jobs/x/events".into(),
            event_secret: Secret::new("per-job-secret"),
            post_final_status: true,
            post_running_status: true,
        },
    }
}

/// A step running a shell script.
pub fn sh(name: &str, script: &str, timeout_secs: u64) -> Step {
    Step::new(name, &["sh", "-c", script], timeout_secs)
}

pub fn events(out: &Output) -> Vec<Event> {
    EventReader::new(&out.stdout[..])
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| {
            panic!(
                "bad event stream: {e}\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
}

/// The final result event, which must be the last one.
pub fn result(out: &Output) -> (Outcome, String) {
    match events(out).last().map(|e| e.kind.clone()) {
        Some(EventKind::Result { outcome, reason }) => (outcome, reason),
        other => panic!(
            "last event is not a result: {other:?}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

pub fn log_texts(out: &Output) -> Vec<String> {
    events(out)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Log { text, .. } => Some(text),
            _ => None,
        })
        .collect()
}

pub fn compress(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

pub fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let p = e.unwrap().path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        f(&p, &md);
        if md.is_dir() {
            walk(&p, f);
        }
    }
}

pub fn chown_tree(root: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid)).unwrap();
    walk(root, &mut |p, _| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    });
}

/// True while any process is in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::killpg(pgid, 0) == 0 }
}
