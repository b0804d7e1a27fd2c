//! `sdci-agent run` end to end in one machine: a real git repository served by the GitHub
//! stand-in (smart HTTP through `git http-backend`, so the shallow fetch of the sha is used), the real
//! `sdci-dom0 run` behind a `qrexec-client-vm` stand-in that starts it the way qrexec does, and
//! a stand-in of the host's event endpoint (contracts §1, server side) behind a TCP proxy that
//! can cut connections.
//!
//! Needs `target/debug/sdci-dom0` (`cargo build --workspace --bins`, as scripts/test does).
#![allow(clippy::unwrap_used)]

mod host;

use host::{HostEvents, Proxy};
use sdci_protocol::job::{AgentJob, JobFile, JobSpec, Reason, Secret, Step};
use sdci_protocol::{Event, EventKind, Outcome, JOB_FILE_VERSION};
use sdci_tests::fixture::{Fixture, TestMode};
use sdci_tests::github::GitHub;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const REPO: &str = "freedomofpress/securedrop-workstation";
const PAT: &str = "ghs_jobScopedInstallationToken00000001";
const EVENT_SECRET: &str = "per-job-event-secret-0001";
/// Safety net only: no test comes near it.
const SAFETY_NET: Duration = Duration::from_secs(180);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn chown_tree(root: &Path, uid: u32) {
    std::os::unix::fs::lchown(root, Some(uid), Some(uid)).unwrap();
    for entry in std::fs::read_dir(root).unwrap() {
        let p = entry.unwrap().path();
        std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).unwrap();
        if p.symlink_metadata().unwrap().is_dir() {
            chown_tree(&p, uid);
        }
    }
}

fn sh(name: &str, script: &str) -> Step {
    Step::new(name, &["sh", "-c", script], 120)
}

/// Everything one `run` needs, rooted in temporary directories.
struct World {
    tmp: tempfile::TempDir,
    /// dom0's root, handed to `nobody` when the tests run as root (the service drops to it).
    dom0: tempfile::TempDir,
    gh: GitHub,
    host: HostEvents,
    proxy: Proxy,
    fixture: Fixture,
    job: AgentJob,
}

impl World {
    fn new(id: &str, qrexec_script: Option<&str>, steps: Vec<Step>) -> Self {
        Self::with_commit(id, qrexec_script, steps, |_, _| {})
    }

    /// Like [`World::new`], but `change` (given the origin repository and the temporary root)
    /// alters the fixture's tree and commits it; the job is for that commit.
    fn with_commit(
        id: &str,
        qrexec_script: Option<&str>,
        steps: Vec<Step>,
        change: impl FnOnce(&Path, &Path),
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dom0 = tempfile::tempdir().unwrap();
        let gh = GitHub::start();
        gh.add_pat(PAT);
        let fixture = Fixture::create(&tmp.path().join("origin"), TestMode::Pass).unwrap();
        change(&fixture.path, tmp.path());
        let sha = fixture.head().unwrap();
        // A later commit on main: the job must get exactly the first one.
        fixture.commit_mode(TestMode::Fail, "later").unwrap();
        gh.serve_git(REPO, &fixture.path);
        let host = HostEvents::start(id, EVENT_SECRET);
        let proxy = Proxy::start(host.addr());
        let dev_dir = tmp.path().join("sd-dev/home/user/securedrop-workstation");
        let job = AgentJob {
            version: JOB_FILE_VERSION,
            id: id.parse().unwrap(),
            repo: REPO.parse().unwrap(),
            sha: sha.parse().unwrap(),
            dev_dir: dev_dir.display().to_string(),
            clone_url: gh.clone_url(REPO),
            github_api: gh.url().to_owned(),
            token: Some(Secret::new(PAT)),
            status_context: "sd-ci-runner".into(),
            target_url: format!("https://ci.example/jobs/{id}"),
            event_url: format!("http://{}/api/v1/jobs/{id}/events", proxy.addr()),
            event_secret: Secret::new(EVENT_SECRET),
            post_final_status: true,
            post_running_status: true,
        };
        let w = Self {
            tmp,
            dom0,
            gh,
            host,
            proxy,
            fixture,
            job,
        };
        w.write_dom0(steps);
        w.write_agent_config(qrexec_script);
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn dom0_home(&self) -> PathBuf {
        self.dom0.path().join("home/user")
    }

    /// dom0's configuration and its own copy of the job file (the steps come from here only).
    fn write_dom0(&self, steps: Vec<Step>) {
        let home = self.dom0_home();
        let jobs = home.join(".sdci/jobs");
        let job_dir = jobs.join(self.job.id.as_str());
        std::fs::create_dir_all(&job_dir).unwrap();
        let user = if is_root() { "user = \"nobody\"\n" } else { "" };
        std::fs::write(
            self.dom0.path().join("dom0.toml"),
            format!(
                "jobs_dir = {:?}\ncheckout_dir = {:?}\n{user}kill_grace_secs = 2\ndrain_secs = 1\nprivileged_remove = [\"false\"]\n",
                jobs,
                home.join("securedrop-workstation")
            ),
        )
        .unwrap();
        let file = JobFile {
            version: JOB_FILE_VERSION,
            spec: JobSpec {
                id: self.job.id.clone(),
                repo: self.job.repo.clone(),
                sha: self.job.sha.clone(),
                branch: Some("main".into()),
                reason: Reason::Push,
                qubes_version: "4.2".into(),
                dev_vm: "sd-dev".into(),
                dev_dir: self.job.dev_dir.clone(),
                steps,
                deadline_unix: 4_000_000_000,
                results: None,
            },
            agent: self.job.clone(),
        };
        std::fs::write(job_dir.join("job.json"), file.to_json()).unwrap();
    }

    /// The agent's config: the qrexec stand-in, git through an argv-recording wrapper.
    fn write_agent_config(&self, qrexec_script: Option<&str>) {
        let dom0_bin = sdci_tests::binary("sdci-dom0");
        assert!(
            dom0_bin.exists(),
            "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
            dom0_bin.display()
        );
        let fake = self.path("qrexec-client-vm");
        let default_script = format!(
            "#!/bin/sh\n\
             # qrexec-client-vm stand-in: the policy allows sdci.Run+ARG to dom0 only (else 126),\n\
             # then the service runs with the environment qrexec gives it.\n\
             [ \"$1\" = dom0 ] || exit 126\n\
             case \"$2\" in sdci.Run+*) ;; *) exit 126 ;; esac\n\
             arg=\"${{2#sdci.Run+}}\"\n\
             export QREXEC_SERVICE_ARGUMENT=\"$arg\" QREXEC_SERVICE_FULL_NAME=\"$2\" QREXEC_REMOTE_DOMAIN=sd-dev\n\
             export QREXEC_REQUESTED_TARGET=dom0 QREXEC_REQUESTED_TARGET_TYPE=name\n\
             export HOME={home:?} SDCI_DOM0_CONFIG={cfg:?}\n\
             cd \"$HOME\" || exit 125\n\
             exec {bin:?} run \"$arg\" 2>>{err:?}\n",
            home = self.dom0_home(),
            cfg = self.dom0.path().join("dom0.toml"),
            bin = dom0_bin,
            err = self.path("dom0-service.stderr"),
        );
        write_exec(&fake, qrexec_script.unwrap_or(&default_script));
        let git = self.path("git-wrapper");
        write_exec(
            &git,
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {:?}\nexec git \"$@\"\n",
                self.path("git-argv.log")
            ),
        );
        std::fs::write(
            self.path("agent.toml"),
            format!(
                "[retry]\nmax_attempts = 4\ninitial_backoff_ms = 20\nmax_backoff_ms = 200\n\
                 [run]\nqrexec_client = {:?}\ngit = {:?}\nspool_dir = {:?}\nrelay_finish_timeout_secs = 120\nrelay_max_backoff_ms = 200\n",
                fake,
                git,
                self.path("spool")
            ),
        )
        .unwrap();
        std::fs::write(self.path("job.json"), self.job.to_json()).unwrap();
    }

    /// Starts `sdci-agent run --job -` as dom0's `launch` does (job on stdin).
    fn spawn_agent(&self) -> std::process::Child {
        if is_root() {
            chown_tree(self.dom0.path(), 65534);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_sdci-agent"))
            .arg("--config")
            .arg(self.path("agent.toml"))
            .args(["run", "--job", "-"])
            .env("RUST_LOG", "debug")
            .env_remove("SDCI_GITHUB_API")
            .env_remove("SDCI_GITHUB_TOKEN_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(self.job.to_json().as_bytes()).unwrap();
        drop(stdin);
        child
    }

    fn wait(&self, child: std::process::Child) -> Output {
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(SAFETY_NET) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: kill(2) on a pid we started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("sdci-agent run did not finish within the safety net");
            }
        }
    }

    fn spool_events(&self) -> Vec<Event> {
        let text = std::fs::read_to_string(
            self.path("spool")
                .join(self.job.id.as_str())
                .join("events.ndjson"),
        )
        .unwrap();
        text.lines()
            .map(|l| Event::from_line(l.as_bytes()).unwrap())
            .collect()
    }

    /// No token or secret in the agent's logs, in any git argv, or in the checkout's git config.
    fn assert_no_secret_leaked(&self, out: &Output) {
        let logs = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let argv = std::fs::read_to_string(self.path("git-argv.log")).unwrap_or_default();
        let git_config = std::fs::read_to_string(Path::new(&self.job.dev_dir).join(".git/config"))
            .unwrap_or_default();
        for secret in [PAT, EVENT_SECRET] {
            assert!(
                !logs.contains(secret),
                "a secret is in the agent's output:\n{logs}"
            );
            assert!(!argv.contains(secret), "a secret is in a git argv:\n{argv}");
            assert!(!git_config.contains(secret), "a secret is in .git/config");
        }
    }
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Log { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The steps check the tree dom0 received: the examples were copied, symlinks and exec bits
/// survived, `.git` did not travel, and it is the first commit (commit-id 1), not main's head.
const CHECK_TREE: &str =
    "test -f config.json && test -f sd-journalist.sec && test -L launcher/sdw_notify \
    && test -x scripts/clone-to-dom0 && test ! -e .git && echo \"commit-id $(cat ci/commit-id)\"";

#[test]
fn run_fetches_the_commit_sends_it_to_dom0_and_relays_every_event_in_order() {
    let steps = vec![
        sh("check-tree", CHECK_TREE),
        sh("say", "for i in 1 2 3 4 5; do echo line-$i; done"),
    ];
    let w = World::new("job-run-1", None, steps);
    let out = w.wait(w.spawn_agent());
    assert_eq!(
        out.status.code(),
        Some(0),
        "agent:\n{}\ndom0:\n{}",
        stderr(&out),
        std::fs::read_to_string(w.path("dom0-service.stderr")).unwrap_or_default()
    );

    // The host received every event, in order, exactly as dom0 wrote them.
    let stored = w.host.events();
    assert_eq!(stored, w.spool_events());
    assert!(stored.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    let t = texts(&stored);
    assert!(t.contains(&"commit-id 1".to_owned()), "{t:?}");
    let lines: Vec<&String> = t.iter().filter(|s| s.starts_with("line-")).collect();
    assert_eq!(lines, ["line-1", "line-2", "line-3", "line-4", "line-5"]);
    assert!(matches!(
        stored.last().unwrap().kind,
        EventKind::Result {
            outcome: Outcome::Success,
            ..
        }
    ));

    // GitHub saw running, then the final status, both pointing at the job page.
    let statuses = w.gh.statuses();
    let seen: Vec<(&str, Option<&str>)> = statuses
        .iter()
        .map(|s| (s.state.as_str(), s.description.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("pending", Some("The build is running")),
            ("success", Some("all 2 steps passed"))
        ]
    );
    assert!(statuses.iter().all(|s| s.target_url.as_deref()
        == Some("https://ci.example/jobs/job-run-1")
        && s.context == "sd-ci-runner"));

    // The checkout stays in place for `make clone`; the smart-HTTP remote served the shallow
    // fetch of the sha, which authenticated through askpass (the stand-in refuses anonymous git
    // requests).
    assert!(Path::new(&w.job.dev_dir).join("Makefile").is_file());
    assert!(stderr(&out).contains("how=Shallow"), "{}", stderr(&out));
    let fetches = w.gh.git_fetches();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!(fetches[0].request.deepen, Some(1));
    let git_reqs: Vec<_> =
        w.gh.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/info/refs"))
            .collect();
    assert!(git_reqs
        .iter()
        .any(|r| r.status == 200 && r.header("authorization") == Some("Basic <redacted>")));
    w.assert_no_secret_leaked(&out);
}

#[test]
fn a_github_outage_during_the_fetch_is_waited_out_and_the_job_still_runs() {
    let mut w = World::new("job-run-outage", None, vec![sh("check-tree", CHECK_TREE)]);
    // Only the fetch meets the outage: the agent posts no status of its own here.
    w.job.post_running_status = false;
    w.job.post_final_status = false;
    w.gh.outage_for(Duration::from_secs(3), 503);
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(0), "agent:\n{}", stderr(&out));
    let t = texts(&w.host.events());
    assert!(t.contains(&"commit-id 1".to_owned()), "{t:?}");
    assert!(stderr(&out).contains("how=Shallow"), "{}", stderr(&out));
    let refused_git =
        w.gh.requests()
            .iter()
            .filter(|r| r.status == 503 && r.path.contains(".git/"))
            .count();
    assert!(refused_git > 0, "the outage refused no git request");
    w.assert_no_secret_leaked(&out);
}

#[test]
fn event_forwarding_survives_the_host_dropping_the_connection_mid_stream() {
    let gate = "gate.fifo";
    let steps = vec![
        sh("first", "for i in 1 2 3; do echo before-$i; done"),
        sh(
            "gated",
            &format!("read x < ../{gate}; for i in 1 2 3; do echo after-$i-$x; done"),
        ),
    ];
    let w = World::new("job-drop-1", None, steps);
    let fifo = w.dom0_home().join(gate);
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    let child = w.spawn_agent();

    // Wait until the host holds everything up to the gate, then cut the connection.
    let gated = |e: &Event| matches!(&e.kind, EventKind::StepStarted { step: 1, .. });
    let before = w.host.wait_until(SAFETY_NET, |evs| {
        evs.iter()
            .any(|e| gated(e) || matches!(e.kind, EventKind::Result { .. }))
    });
    assert!(w.host.events().iter().any(gated), "{:?}", w.host.events());
    w.proxy.cut();
    // Open the gate: the rest of the job's events now arrive while the connection is down.
    std::fs::write(&fifo, "go\n").unwrap();
    let out = w.wait(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let stored = w.host.events();
    assert_eq!(
        stored,
        w.spool_events(),
        "nothing lost: the host has the whole spool"
    );
    assert!(stored.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    let t = texts(&stored);
    let ours: Vec<&String> = t
        .iter()
        .filter(|s| s.starts_with("before-") || s.starts_with("after-"))
        .collect();
    assert_eq!(
        ours,
        [
            "before-1",
            "before-2",
            "before-3",
            "after-1-go",
            "after-2-go",
            "after-3-go"
        ]
    );
    let posts = w.host.posts();
    assert!(
        posts.len() >= 2,
        "a second request after the cut: {posts:?}"
    );
    assert_eq!(w.host.gets(), 1, "the agent asked once where to resume");
    let resumed = posts
        .iter()
        .skip(1)
        .find(|p| !p.seqs.is_empty())
        .expect("a request after the cut carried events");
    assert_eq!(
        resumed.seqs[0], before as u64,
        "resent from the host's next_seq"
    );
    let received: usize = posts.iter().map(|p| p.seqs.len()).sum();
    assert_eq!(received, stored.len(), "no event sent twice");
    w.assert_no_secret_leaked(&out);
}

#[test]
fn a_call_refused_by_policy_is_an_error_with_that_reason() {
    let refusing = "#!/bin/sh\necho 'Request refused' >&2\nexit 126\n";
    let w = World::new("job-refused-1", Some(refusing), vec![sh("never", "exit 0")]);
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let statuses = w.gh.statuses();
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[1].state, "error");
    assert!(
        statuses[1]
            .description
            .as_deref()
            .unwrap()
            .starts_with("refused by policy"),
        "{statuses:?}"
    );
    // The job page still ends with a result, written by the agent.
    let stored = w.host.events();
    assert!(matches!(
        &stored.last().unwrap().kind,
        EventKind::Result { outcome: Outcome::Error, reason } if reason.contains("qrexec exit 126")
    ));
}

#[test]
fn a_commit_the_remote_does_not_have_is_an_error_and_dom0_is_not_called() {
    let never = "#!/bin/sh\ntouch \"$0.called\"\nexit 0\n";
    let mut w = World::new("job-nocommit-1", Some(never), vec![sh("never", "exit 0")]);
    w.job.sha = "ffffffffffffffffffffffffffffffffffffffff".parse().unwrap();
    std::fs::write(w.path("job.json"), w.job.to_json()).unwrap();
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!w.path("qrexec-client-vm.called").exists());
    let last = w.gh.statuses().pop().unwrap();
    assert_eq!(last.state, "error");
    assert!(last
        .description
        .unwrap()
        .contains("fetching commit fffffff failed"));
    let _ = &w.fixture;
    w.assert_no_secret_leaked(&out);
}

#[test]
fn a_host_that_refuses_the_event_secret_does_not_change_the_jobs_outcome() {
    let mut w = World::new("job-badsecret-1", None, vec![sh("ok", "echo fine")]);
    w.job.event_secret = Secret::new("not-the-secret-the-host-expects");
    std::fs::write(w.path("job.json"), w.job.to_json()).unwrap();
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(w.host.events().is_empty());
    assert!(
        stderr(&out).contains("event relay gave up"),
        "{}",
        stderr(&out)
    );
    // Everything is still in the spool, and GitHub got the final status.
    assert!(matches!(
        w.spool_events().last().unwrap().kind,
        EventKind::Result {
            outcome: Outcome::Success,
            ..
        }
    ));
    assert_eq!(w.gh.statuses().last().unwrap().state, "success");
}

/// Commits whatever `change` did to the origin repository.
fn commit_all(origin: &Path, message: &str) {
    for args in [
        vec!["add", "-A"],
        vec![
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "commit",
            "-q",
            "-m",
            message,
        ],
    ] {
        let ok = Command::new("git")
            .args(&args)
            .current_dir(origin)
            .status()
            .unwrap();
        assert!(ok.success(), "git {args:?}");
    }
}

/// Everything below `root` that holds `needle`, by path.
fn files_containing(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file()
                && String::from_utf8_lossy(&std::fs::read(&p).unwrap()).contains(needle)
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_symlinked_example_pointing_outside_the_checkout_is_never_read_into_the_archive() {
    const SECRET: &str = "SD-DEV-PRIVATE-KEY-0001";
    let w = World::with_commit(
        "job-example-link-1",
        None,
        vec![sh("must-not-run", "echo STEP RAN")],
        |origin, root| {
            // A file in sd-dev outside the checkout, and the commit's example pointing at it.
            let private = root.join("sd-dev/home/user/.ssh/id_ed25519");
            std::fs::create_dir_all(private.parent().unwrap()).unwrap();
            std::fs::write(&private, SECRET).unwrap();
            let example = origin.join("files/config.json.example");
            std::fs::remove_file(&example).unwrap();
            std::os::unix::fs::symlink(&private, &example).unwrap();
            commit_all(origin, "example is a symlink");
        },
    );
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let events = w.host.events();
    let reason = match &events.last().unwrap().kind {
        EventKind::Result { outcome, reason } => {
            assert_eq!(*outcome, Outcome::Error);
            reason.clone()
        }
        other => panic!("{other:?}"),
    };
    assert!(
        reason.contains("files/config.json.example is a symlink")
            && reason.contains("only regular files"),
        "{reason}"
    );
    assert!(!texts(&events).contains(&"STEP RAN".to_owned()));
    let dev_dir = Path::new(&w.job.dev_dir);
    assert!(!dev_dir.join("config.json").exists());
    // The secret reached neither dom0 nor the host.
    assert_eq!(
        files_containing(w.dom0.path(), SECRET),
        Vec::<PathBuf>::new()
    );
    assert!(!format!("{events:?}").contains(SECRET));
}

#[test]
fn a_symlinked_sd_journalist_sec_never_overwrites_a_file_outside_the_checkout() {
    let w = World::with_commit(
        "job-example-link-2",
        None,
        vec![sh("must-not-run", "echo STEP RAN")],
        |origin, root| {
            let victim = root.join("sd-dev/home/user/.bashrc");
            std::fs::create_dir_all(victim.parent().unwrap()).unwrap();
            std::fs::write(&victim, "ORIGINAL BASHRC\n").unwrap();
            std::os::unix::fs::symlink(&victim, origin.join("sd-journalist.sec")).unwrap();
            commit_all(origin, "destination is a symlink");
        },
    );
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let victim = w.path("sd-dev/home/user/.bashrc");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "ORIGINAL BASHRC\n",
        "the file outside the checkout was overwritten"
    );
    let events = w.host.events();
    let EventKind::Result { reason, .. } = &events.last().unwrap().kind else {
        panic!("{events:?}")
    };
    assert!(
        reason.contains("sd-journalist.sec exists as a symlink"),
        "{reason}"
    );
    assert!(!texts(&events).contains(&"STEP RAN".to_owned()));
}

/// What `sdci-host` hands the agent: a `contents: read` installation token, and both statuses
/// left to the host. The agent posts nothing, and the token is revoked after the fetch, before
/// any step of the commit runs in dom0.
#[test]
fn a_host_job_posts_no_status_and_its_read_token_is_revoked_before_dom0_runs_a_step() {
    const READ_TOKEN: &str = "ghs_jobReadOnlyInstallationToken0000001";
    let steps = vec![sh("stamp", "echo \"stamp $(date +%s%N)\"")];
    let mut w = World::new("job-run-token", None, steps);
    w.gh.add_installation_token(
        READ_TOKEN,
        &["securedrop-workstation"],
        &[("contents", "read")],
    );
    w.job.token = Some(Secret::new(READ_TOKEN));
    w.job.post_running_status = false;
    w.job.post_final_status = false;
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(0), "agent:\n{}", stderr(&out));
    assert!(
        w.gh.statuses().is_empty(),
        "the host posts running and the end: {:?}",
        w.gh.statuses()
    );
    let reqs = w.gh.requests();
    assert!(
        !reqs.iter().any(|r| r.path.contains("/statuses/")),
        "not even an attempt to post a status"
    );
    let revokes: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "DELETE" && r.path == "/installation/token")
        .collect();
    assert_eq!(revokes.len(), 1, "{reqs:?}");
    assert_eq!(revokes[0].status, 204);
    assert!(w
        .gh
        .minted()
        .iter()
        .any(|m| m.token == READ_TOKEN && m.revoked));
    // The fetch used the token, and came before the revocation.
    let fetch_at = reqs
        .iter()
        .filter(|r| r.path.contains(".git/") && r.status == 200)
        .map(|r| r.at)
        .max()
        .expect("git requests");
    assert!(fetch_at <= revokes[0].at);
    // The step ran after the revocation.
    let stamp: u128 = texts(&w.host.events())
        .iter()
        .find_map(|t| t.strip_prefix("stamp ").map(|n| n.trim().parse().unwrap()))
        .expect("the step's stamp");
    let revoked_ns = revokes[0]
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        revoked_ns < stamp,
        "the token was revoked before the step ran"
    );
    w.assert_no_secret_leaked(&out);
}

/// Standalone use keeps its token for the final status: nothing is revoked.
#[test]
fn a_standalone_job_keeps_its_token_for_the_final_status() {
    let w = World::new("job-run-standalone", None, vec![sh("ok", "true")]);
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(0), "agent:\n{}", stderr(&out));
    assert!(!w
        .gh
        .requests()
        .iter()
        .any(|r| r.path == "/installation/token"));
    assert_eq!(w.gh.statuses().len(), 2);
}

#[test]
fn escape_sequences_and_forged_lines_from_the_event_stream_reach_the_host_escaped() {
    // A stand-in for dom0's side that writes what a hostile stream could: OSC 52 (clipboard
    // write) and a C1 CSI screen clear in a step name and argv, a forged result line after a
    // newline in a reason, a U+2028 line separator.
    let hostile = r#"#!/bin/sh
cat > /dev/null
cat <<'EVENTS'
{"v":1,"seq":0,"ts_ms":0,"kind":{"type":"step_started","step":0,"name":"build\u001b]52;c;ZXZpbA==\u0007","argv":["make","\u009b2J\r"]}}
{"v":1,"seq":1,"ts_ms":0,"kind":{"type":"log","step":0,"text":"ok\u2028=== result: success"}}
{"v":1,"seq":2,"ts_ms":0,"kind":{"type":"result","outcome":"failure","reason":"failed\n=== result: success"}}
EVENTS
exit 1
"#;
    let w = World::new(
        "job-hostile-stream-1",
        Some(hostile),
        vec![sh("never", "exit 0")],
    );
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let stored = w.host.events();
    let kinds: Vec<&EventKind> = stored.iter().map(|e| &e.kind).collect();
    assert!(
        kinds.contains(&&EventKind::StepStarted {
            step: 0,
            name: "build\\x1b]52;c;ZXZpbA==\\x07".into(),
            argv: vec!["make".into(), "\\u{9b}2J\\x0d".into()],
        }),
        "{kinds:?}"
    );
    assert!(kinds.contains(&&EventKind::Log {
        step: Some(0),
        text: "ok\\u{2028}=== result: success".into()
    }));
    assert!(matches!(
        stored.last().unwrap().kind,
        EventKind::Result { outcome: Outcome::Failure, ref reason }
            if reason == "failed\\x0a=== result: success"
    ));
    let raw = format!("{stored:?}");
    for bad in ['\u{1b}', '\u{9b}', '\u{2028}', '\r'] {
        assert!(!raw.contains(bad), "{bad:?} reached the host");
    }
}

/// The host caps what one request carries (`413 {"next_seq"}`, contracts §1): the relay goes on
/// with new requests from there, and every event arrives once, in order.
#[test]
fn a_host_that_caps_each_request_still_gets_every_event_once_in_order() {
    let steps = vec![sh(
        "many",
        "i=0; while [ $i -lt 200 ]; do echo n-$i; i=$((i+1)); done",
    )];
    let w = World::new("job-run-capped", None, steps);
    w.host.cap_requests(25);
    let out = w.wait(w.spawn_agent());
    assert_eq!(out.status.code(), Some(0), "agent:\n{}", stderr(&out));
    let stored = w.host.events();
    assert_eq!(stored, w.spool_events());
    let posts = w.host.posts();
    assert!(
        posts.iter().filter(|p| p.status == Some(413)).count() >= 5,
        "{posts:?}"
    );
    let t = texts(&stored);
    let n: Vec<&String> = t.iter().filter(|s| s.starts_with("n-")).collect();
    assert_eq!(n.len(), 200);
}
