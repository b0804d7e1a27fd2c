//! What an end-to-end test body needs of a world, whichever hypervisor holds its VMs: the vSphere
//! simulator ([`World`]) or a real libvirtd with QEMU guests ([`LibvirtWorld`]). The bodies in
//! `tests/tests/e2e.rs` take a `&dyn JobWorld` and run once per backend, so both backends pass
//! the same assertions.
//!
//! The host side is the same in every world and is written once, here, as provided methods over
//! a few accessors: signed pushes, `sdci-host jobs show`, the statuses the GitHub stand-in
//! accepted, job pages. What differs is answered by each world: which VMs are on, what dom0's
//! home holds, and the faults (a power-on that fails, a guest agent that never starts).
//!
//! [`LibvirtWorld`]: crate::libvirt_world::LibvirtWorld

use crate::fixture::{Fixture, TestMode};
use crate::github::{CommitStatus, GitHub};
use crate::world::{
    http, parse_history, sign, tail, JobView, World, WorldOptions, REPO, WEBHOOK_SECRET,
};
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running world: `sdci-host serve`, the GitHub stand-in, the fixture, and VMs on one backend.
pub trait JobWorld {
    /// `vsphere` or `libvirt`, and how the VMs run (for the test output).
    fn backend(&self) -> String;
    /// Where the hypervisor answers (the simulator's SDK URL, the daemon's URI).
    fn hypervisor_url(&self) -> String;
    fn opts(&self) -> &WorldOptions;
    fn github(&self) -> &GitHub;
    fn fixture(&self) -> &Fixture;
    /// Where the host listens (loopback).
    fn addr(&self) -> SocketAddr;
    /// The host's `public_url`: how GitHub, browsers and the agent in the VM reach it.
    fn public_url(&self) -> String;
    fn config_path(&self) -> &Path;
    /// The world's directory (fixture, configs, the host's data and log).
    fn dir(&self) -> &Path;
    /// Starts `sdci-host serve` (again, after [`JobWorld::kill_host`]) and waits until it answers.
    fn start_host(&mut self) -> Result<()>;
    /// Kills `sdci-host` with SIGKILL (a crash: no clean-up of any kind).
    fn kill_host(&mut self) -> Result<()>;

    /// Names of the VMs that are not powered off.
    fn vms_on(&self) -> Result<Vec<String>>;
    /// Whether dom0's home in `vm` holds `name` now (after the last job, until the next revert).
    fn dom0_home_has(&self, vm: &str, name: &str) -> Result<bool>;
    /// `Ok` when no program a job started is still running in `vm`'s guest, else what runs.
    fn no_guest_program_left(&self, vm: &str) -> Result<()>;
    /// Makes the next power-on of the VM the host claims first fail (the host must retry the
    /// job on another VM).
    fn fail_next_power_on(&self) -> Result<()>;
    /// Makes every VM's guest agent (VMware Tools, the QEMU guest agent) never start.
    fn agent_never_starts(&self) -> Result<()>;

    fn host_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The job page's URL (the `target_url` of its statuses).
    fn job_url(&self, id: &str) -> String {
        format!("{}/jobs/{id}", self.public_url())
    }

    fn host_log_path(&self) -> PathBuf {
        self.dir().join("host.log")
    }

    /// Everything the host has logged so far.
    fn host_log(&self) -> String {
        std::fs::read_to_string(self.host_log_path()).unwrap_or_default()
    }

    /// The fixture's first commit.
    fn head(&self) -> Result<String> {
        self.fixture().head()
    }

    /// Makes `sha` (a commit of the fixture) fetchable from the stand-in and the head of `main`.
    fn publish(&self, sha: &str) -> Result<()> {
        crate::world::publish(self.github(), self.fixture(), sha)
    }

    /// Commits a new test mode to the fixture and publishes it; returns the sha.
    fn commit(&self, mode: TestMode, message: &str) -> Result<String> {
        let sha = self.fixture().commit_mode(mode, message)?;
        self.publish(&sha)?;
        Ok(sha)
    }

    /// Sends a signed `push` webhook for `sha` on `main`; returns the queued job's id.
    fn push(&self, sha: &str) -> Result<String> {
        self.push_to(sha, "main")
    }

    /// Sends a signed `push` webhook for `sha` on `branch`; returns the queued job's id.
    fn push_to(&self, sha: &str, branch: &str) -> Result<String> {
        let (code, body) = self.send_push_to(sha, branch)?;
        if code != 202 {
            bail!("the host answered the push with {code}: {body}");
        }
        body.strip_prefix("queued job ")
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| anyhow!("unexpected answer to the push: {body}"))
    }

    /// Sends a signed `push` webhook for `sha` on `branch` and returns the host's raw answer.
    fn send_push_to(&self, sha: &str, branch: &str) -> Result<(u16, String)> {
        // GitHub's whole push payload, checked against @octokit/openapi-webhooks.
        let zero = "0000000000000000000000000000000000000000";
        let payload = crate::github::webhooks::push(REPO, branch, zero, sha);
        crate::github::webhooks::validate("push", None, &payload).map_err(|e| anyhow!(e))?;
        let body = payload.to_string();
        let signature = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
        let delivery = format!("{:x}", crate::world::rand_u64());
        http(
            self.addr(),
            "POST",
            "/hooks/github",
            &[
                ("Content-Type", "application/json"),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", &delivery),
                ("X-Hub-Signature-256", &signature),
            ],
            body.as_bytes(),
        )
    }

    /// Sends a signed webhook `event` with `body` (a `check_run`, a `check_suite`: see
    /// [`check_events`]) and returns the host's raw answer.
    fn send_event(&self, event: &str, body: &serde_json::Value) -> Result<(u16, String)> {
        let action = body.get("action").and_then(serde_json::Value::as_str);
        crate::github::webhooks::validate(event, action, body).map_err(|e| anyhow!(e))?;
        let body = body.to_string();
        let signature = sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
        let delivery = format!("{:x}", crate::world::rand_u64());
        http(
            self.addr(),
            "POST",
            "/hooks/github",
            &[
                ("Content-Type", "application/json"),
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", &delivery),
                ("X-Hub-Signature-256", &signature),
            ],
            body.as_bytes(),
        )
    }

    /// The check runs GitHub holds for `sha`, in creation order.
    fn check_runs(&self, sha: &str) -> Vec<crate::github::CheckRun> {
        self.github().check_runs(REPO, sha)
    }

    /// Waits until the check runs of `sha` satisfy `done` (safety net `limit`).
    fn wait_check_runs(
        &self,
        sha: &str,
        limit: Duration,
        done: &dyn Fn(&[crate::github::CheckRun]) -> bool,
    ) -> Result<Vec<crate::github::CheckRun>> {
        let deadline = Instant::now() + limit;
        loop {
            let runs = self.check_runs(sha);
            if done(&runs) {
                return Ok(runs);
            }
            if Instant::now() > deadline {
                bail!(
                    "the check runs of {sha} did not get there within {limit:?}: {runs:#?}\n\
                     host log (tail):\n{}",
                    tail(&self.host_log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sdci-host --config <world's> ARGS...` and returns its stdout.
    fn host_cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(crate::binary("sdci-host"))
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .context("run sdci-host")?;
        if !out.status.success() {
            bail!(
                "sdci-host {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The job as `sdci-host jobs show` reports it.
    fn job(&self, id: &str) -> Result<JobView> {
        let text = self.host_cli(&["jobs", "show", id])?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or("")
                .trim()
                .to_owned()
        };
        Ok(JobView {
            id: id.to_owned(),
            state: field("state"),
            note: field("note"),
            vm: field("vm"),
            attempts: field("attempts").parse().unwrap_or(0),
            history: parse_history(&text),
            text,
        })
    }

    /// Waits until the job satisfies `done` (safety net: `limit`).
    fn wait_job_until(
        &self,
        id: &str,
        limit: Duration,
        done: &dyn Fn(&JobView) -> bool,
    ) -> Result<JobView> {
        let deadline = Instant::now() + limit;
        loop {
            let j = self.job(id)?;
            if done(&j) {
                return Ok(j);
            }
            if Instant::now() > deadline {
                bail!(
                    "job {id} did not get there within {limit:?} ({}); now:\n{}\nhost log (tail):\n{}",
                    self.backend(),
                    j.text,
                    tail(&self.host_log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A safety-net wait stretched to how fast this world's VMs run (a simulator: as given).
    fn patience(&self, wait: Duration) -> Duration {
        wait
    }

    /// Waits until the job is in a terminal state and every status the host queued for it was
    /// handed to GitHub (or gave up), so assertions see the final picture.
    fn wait_job(&self, id: &str) -> Result<JobView> {
        let j = self.wait_job_until(id, self.patience(Duration::from_secs(300)), &|j| {
            j.is_terminal()
        })?;
        self.wait_job_until(id, Duration::from_secs(120), &|j| {
            // Unposted, or being posted (contracts §8: the outbox records its intent first).
            !j.text.contains(" unposted ") && !j.text.contains(" posting ")
        })
        .map(|_| j)
    }

    /// The job's log as the host keeps it (what its page shows).
    fn job_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir().join("data/logs").join(format!("{id}.log")))
            .unwrap_or_default()
    }

    /// Statuses GitHub accepted for `sha`, in order.
    fn statuses(&self, sha: &str) -> Vec<CommitStatus> {
        self.github()
            .statuses()
            .into_iter()
            .filter(|s| s.sha == sha)
            .collect()
    }

    /// `(state, description)` of every status GitHub accepted for `sha`, in order.
    fn status_pairs(&self, sha: &str) -> Vec<(String, String)> {
        self.statuses(sha)
            .into_iter()
            .map(|s| (s.state, s.description.unwrap_or_default()))
            .collect()
    }

    /// Waits until GitHub holds at least `n` statuses for `sha`.
    fn wait_statuses(&self, sha: &str, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.statuses(sha).len() < n {
            if Instant::now() > deadline {
                bail!(
                    "GitHub has {:?} for {sha}, expected at least {n}",
                    self.status_pairs(sha)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `GET` on the host (e.g. a job page); `(status, body)`.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        http(self.addr(), "GET", path, &[], b"")
    }

    /// GETs an absolute URL of this world's host (a status's `target_url`, under `public_url`).
    fn get_url(&self, url: &str) -> Result<(u16, String)> {
        let base = self.public_url();
        let path = url
            .strip_prefix(&base)
            .ok_or_else(|| anyhow!("{url} is not served by this world's host ({base})"))?;
        self.get(path)
    }

    /// Waits until every VM is powered off (safety net `limit`).
    fn wait_all_off(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let on = self.vms_on()?;
            if on.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("VMs still on after {limit:?}: {on:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Starts `sdci-host --config CONFIG serve` (output appended to `log`) and waits until it
/// answers `/healthz` on `addr`.
pub(crate) fn spawn_host(
    config: &Path,
    log: &Path,
    filter: &str,
    addr: SocketAddr,
) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(crate::binary("sdci-host"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", filter)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("start sdci-host")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http(addr, "GET", "/healthz", &[], b"") {
            return Ok(child);
        }
        let log_text = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(status) = child.try_wait()? {
            bail!(
                "sdci-host exited ({status}) before serving; its log:\n{}",
                log_text()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "sdci-host did not answer within 60 s; its log:\n{}",
                log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a host with SIGTERM, then SIGKILL after 10 s.
pub(crate) fn terminate(mut child: Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl JobWorld for World {
    fn backend(&self) -> String {
        "vSphere (sim)".into()
    }
    fn hypervisor_url(&self) -> String {
        self.sim.url()
    }
    fn opts(&self) -> &WorldOptions {
        &self.opts
    }
    fn github(&self) -> &GitHub {
        &self.github
    }
    fn fixture(&self) -> &Fixture {
        &self.fixture
    }
    fn addr(&self) -> SocketAddr {
        World::addr(self)
    }
    fn public_url(&self) -> String {
        format!("http://{}", World::addr(self))
    }
    fn config_path(&self) -> &Path {
        World::config_path(self)
    }
    fn dir(&self) -> &Path {
        World::dir(self)
    }
    fn start_host(&mut self) -> Result<()> {
        World::start_host(self)
    }
    fn kill_host(&mut self) -> Result<()> {
        World::kill_host(self)
    }
    fn vms_on(&self) -> Result<Vec<String>> {
        World::vms_on(self)
    }
    fn dom0_home_has(&self, vm: &str, name: &str) -> Result<bool> {
        Ok(self.qubes(vm)?.dom0_home().join(name).exists())
    }
    fn no_guest_program_left(&self, vm: &str) -> Result<()> {
        let procs = self.sim.vm(vm)?.processes;
        if procs.iter().any(|p| p.running) {
            bail!("guest programs still run in {vm}: {procs:?}");
        }
        Ok(())
    }
    fn fail_next_power_on(&self) -> Result<()> {
        self.sim.inject(crate::vsphere_sim::Fault::TaskError {
            method: "PowerOnVM_Task".into(),
            kind: "InsufficientResourcesFault".into(),
            count: 1,
        })
    }
    fn agent_never_starts(&self) -> Result<()> {
        for vm in &self.opts.vms {
            self.sim
                .inject(crate::vsphere_sim::Fault::ToolsNever { vm: vm.clone() })?;
        }
        Ok(())
    }
}

/// GitHub's `check_run` and `check_suite` webhooks as the tests send them (contracts §10):
/// GitHub's own documented example payloads (`@octokit/openapi-webhooks`' `components/examples`)
/// with this world's repository, commit, check run and sender put in, each validated against the
/// webhook's schema before it is returned, so the host is tested with what GitHub sends.
pub mod check_events {
    use crate::github::openapi::{packages_dir, webhook_pointer, webhooks};
    use crate::github::CheckRun;
    use anyhow::{anyhow, Context, Result};
    use serde_json::{json, Value};
    use std::sync::OnceLock;

    /// The webhook description's documented examples, read once.
    fn examples() -> Result<&'static Value> {
        static EXAMPLES: OnceLock<std::result::Result<Value, String>> = OnceLock::new();
        EXAMPLES
            .get_or_init(|| {
                let path = packages_dir().join("openapi-webhooks/generated/api.github.com.json");
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("{}: {e}: run scripts/install-deps", path.display()))?;
                let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                Ok(doc
                    .pointer_mut("/components/examples")
                    .map(Value::take)
                    .unwrap_or(Value::Null))
            })
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    fn example(name: &str) -> Result<Value> {
        examples()?
            .pointer(&format!("/{name}/value"))
            .cloned()
            .with_context(|| format!("no documented example {name} in openapi-webhooks"))
    }

    /// Puts `repo` (`owner/name`) into an example's `repository`.
    fn set_repository(v: &mut Value, repo: &str) {
        let (owner, name) = repo.split_once('/').unwrap_or((repo, repo));
        let r = &mut v["repository"];
        r["full_name"] = json!(repo);
        r["name"] = json!(name);
        r["owner"]["login"] = json!(owner);
    }

    fn validated(key: &str, v: Value) -> Result<Value> {
        webhooks()
            .map_err(|e| anyhow!("{e}"))?
            .validate_at(&webhook_pointer(key), &v)
            .map_err(|e| anyhow!("the {key} payload is not what GitHub sends: {e}"))?;
        Ok(v)
    }

    /// `check_run` `rerequested` (GitHub's "Re-run" button) of `run`, pressed by `sender`.
    pub fn rerequested(run: &CheckRun, sender: &str) -> Result<Value> {
        let mut v = example("check-run-rerequested")?;
        fill_run(&mut v, run, sender);
        v["action"] = json!("rerequested");
        validated("check-run-rerequested", v)
    }

    /// `check_run` `requested_action` with `identifier` (a button the check run carries).
    pub fn requested_action(run: &CheckRun, sender: &str, identifier: &str) -> Result<Value> {
        let mut v = example("check-run-requested-action")?;
        fill_run(&mut v, run, sender);
        v["action"] = json!("requested_action");
        v["requested_action"] = json!({ "identifier": identifier });
        validated("check-run-requested-action", v)
    }

    /// `check_suite` `rerequested` of the suite of `run`'s commit, by `sender`. (GitHub documents
    /// no example of it: the suite is the check-run example's, completed as the schema asks.)
    pub fn suite_rerequested(run: &CheckRun, sender: &str) -> Result<Value> {
        let base = example("check-run-rerequested")?;
        let mut suite = base["check_run"]["check_suite"].clone();
        suite["head_sha"] = json!(run.head_sha);
        suite["after"] = json!(run.head_sha);
        suite["status"] = json!("completed");
        suite["conclusion"] = json!(run.conclusion.clone().unwrap_or_else(|| "failure".into()));
        suite["app"] = base["check_run"]["app"].clone();
        suite["latest_check_runs_count"] = json!(1);
        suite["check_runs_url"] = json!(format!(
            "https://api.github.com/repos/{}/check-suites/{}/check-runs",
            run.repo, suite["id"]
        ));
        suite["created_at"] = json!("2019-05-15T15:20:31Z");
        suite["updated_at"] = json!("2019-05-15T15:21:14Z");
        suite["head_commit"] = json!({
            "id": run.head_sha, "tree_id": run.head_sha,
            "message": "Update README.md", "timestamp": "2019-05-15T15:20:30Z",
            "author": {"name": "Codertocat", "email": "21031067+Codertocat@users.noreply.github.com"},
            "committer": {"name": "Codertocat", "email": "21031067+Codertocat@users.noreply.github.com"}
        });
        let mut v = json!({
            "action": "rerequested",
            "check_suite": suite,
            "repository": base["repository"].clone(),
            "sender": base["sender"].clone(),
        });
        set_repository(&mut v, &run.repo);
        v["sender"]["login"] = json!(sender);
        validated("check-suite-rerequested", v)
    }

    fn fill_run(v: &mut Value, run: &CheckRun, sender: &str) {
        set_repository(v, &run.repo);
        v["sender"]["login"] = json!(sender);
        let c = &mut v["check_run"];
        c["id"] = json!(run.id);
        c["head_sha"] = json!(run.head_sha);
        c["name"] = json!(run.name);
        c["external_id"] = json!(run.external_id.clone().unwrap_or_default());
        c["status"] = json!(run.status);
        c["conclusion"] = json!(run.conclusion);
        c["details_url"] = json!(run.details_url);
        c["started_at"] = json!(run.started_at);
        c["completed_at"] = json!(run.completed_at);
        c["check_suite"]["head_sha"] = json!(run.head_sha);
        c["check_suite"]["after"] = json!(run.head_sha);
        c["pull_requests"] = json!([]);
        c["check_suite"]["pull_requests"] = json!([]);
    }
}

/// Now, in Unix ms (to compare with the times dom0's log lines carry).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// The Unix ms of the first log line that contains `text` (dom0's `<RFC 3339 ms> text`).
pub fn line_ms(log: &str, text: &str) -> Option<i64> {
    let line = log.lines().find(|l| l.contains(text))?;
    let ts = line.split(' ').next()?;
    // 2026-12-01T11:45:21.123Z
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    let days = sdci_protocol::time::days_from_civil(d[0], d[1] as u32, d[2] as u32);
    Some(((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000) + ms.parse::<i64>().ok()?)
}
