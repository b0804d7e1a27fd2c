//! The matrix of the tested commit (issue 20), end to end through the real `sdci-agent` in
//! GitHub App mode and the GitHub stand-in: the commit's `.github/sdci.yml` read with `file`,
//! one job and one check run per cell, cells independent of each other (a failure, a re-run),
//! run labels added and removed, `/sdci` comments and who may give them, `skip-ci`, a
//! malformed file reported naming its line, and the fallbacks (`workstation-ci.yml`, the
//! default version = the newest pool). The host runs in-process with every part but the
//! reconciler; VMs are `MemoryHv`'s (the scheduler's logic is what is tested: which jobs exist,
//! run and end), wrapped to record each job file uploaded and each snapshot reverted to.
//! Every webhook payload sent is checked against `@octokit/openapi-webhooks` first.
//!
//! Needs the binaries built first (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)]
#![recursion_limit = "256"]

mod common;

use common::{sha, MemoryHv, REPO, SECRET};
use sdci_host::config::Config;
use sdci_host::domain::JobState;
use sdci_host::hub::Hub;
use sdci_host::server::{self, Parts};
use sdci_host::store::JobRow;
use sdci_protocol::job::JobFile;
use sdci_tests::github::{objects, webhooks, CheckRun, GitHub, PullRequest, TEST_APP_PRIVATE_KEY};
use sdci_vsphere::{GuestAuth, GuestProgram, Hypervisor, ProcessState, SnapshotInfo, VmInfo};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WEB: &str = "https://github.com";

/// `MemoryHv` that also keeps every job file uploaded and every snapshot reverted to.
struct Recording {
    inner: Arc<MemoryHv>,
    job_files: Mutex<Vec<JobFile>>,
    reverts: Mutex<Vec<(String, String)>>,
}

type R<T> = sdci_vsphere::hypervisor::Result<T>;

impl Hypervisor for Recording {
    async fn list_vms(&self, prefix: &str) -> R<Vec<VmInfo>> {
        self.inner.list_vms(prefix).await
    }
    async fn vm(&self, name: &str) -> R<VmInfo> {
        self.inner.vm(name).await
    }
    async fn snapshots(&self, vm: &str) -> R<Vec<SnapshotInfo>> {
        self.inner.snapshots(vm).await
    }
    async fn revert(&self, vm: &str, snapshot: &str) -> R<()> {
        self.reverts
            .lock()
            .unwrap()
            .push((vm.to_owned(), snapshot.to_owned()));
        self.inner.revert(vm, snapshot).await
    }
    async fn create_snapshot(&self, vm: &str, n: &str, d: &str) -> R<()> {
        self.inner.create_snapshot(vm, n, d).await
    }
    async fn remove_snapshot(&self, vm: &str, n: &str) -> R<()> {
        self.inner.remove_snapshot(vm, n).await
    }
    async fn power_on(&self, vm: &str) -> R<()> {
        self.inner.power_on(vm).await
    }
    async fn wait_guest_ready(&self, vm: &str, t: Duration) -> R<()> {
        self.inner.wait_guest_ready(vm, t).await
    }
    async fn shutdown(&self, vm: &str, g: Duration) -> R<()> {
        self.inner.shutdown(vm, g).await
    }
    async fn power_off(&self, vm: &str) -> R<()> {
        self.inner.power_off(vm).await
    }
    async fn start_program(&self, vm: &str, a: &GuestAuth, p: &GuestProgram) -> R<i64> {
        self.inner.start_program(vm, a, p).await
    }
    async fn process_state(&self, vm: &str, a: &GuestAuth, pid: i64) -> R<ProcessState> {
        self.inner.process_state(vm, a, pid).await
    }
    async fn terminate(&self, vm: &str, a: &GuestAuth, pid: i64) -> R<()> {
        self.inner.terminate(vm, a, pid).await
    }
    async fn make_directory(&self, vm: &str, a: &GuestAuth, p: &str, parents: bool) -> R<()> {
        self.inner.make_directory(vm, a, p, parents).await
    }
    async fn upload(&self, vm: &str, a: &GuestAuth, p: &str, d: Vec<u8>) -> R<()> {
        if p.ends_with("/job.json") {
            if let Ok(f) = JobFile::from_json(&d) {
                self.job_files.lock().unwrap().push(f);
            }
        }
        self.inner.upload(vm, a, p, d).await
    }
    async fn download(&self, vm: &str, a: &GuestAuth, p: &str) -> R<Vec<u8>> {
        self.inner.download(vm, a, p).await
    }
}

struct World {
    hub: Arc<Hub>,
    url: String,
    gh: GitHub,
    hv: Arc<Recording>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two pools (`4.2`: VMs `a-*`, `4.3`: VMs `b-*`, two each; `4.3` maps the scenario snapshot
/// `prod-installed`), the App installed on the stand-in, `maint` with write access and
/// `visitor` with read.
async fn world(webhook_extra: &str) -> World {
    let agent = sdci_tests::binary("sdci-agent");
    assert!(agent.exists(), "run cargo build --workspace --bins");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gh = GitHub::start();
    gh.add_repo(REPO);
    gh.set_app(12345, 678, TEST_APP_PRIVATE_KEY);
    gh.set_permission(REPO, "maint", "write");
    gh.set_permission(REPO, "visitor", "read");
    std::fs::write(d.join("app.pem"), TEST_APP_PRIVATE_KEY).unwrap();
    let agent_toml = d.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "api_url = {:?}\n[retry]\nmax_attempts = 2\ninitial_backoff_ms = 10\n\
             max_backoff_ms = 50\nmax_rate_limit_wait_secs = 5\nrequest_timeout_secs = 20\n\
             [app]\napp_id = 12345\ninstallation_id = 678\nprivate_key_file = {:?}\n",
            gh.url(),
            d.join("app.pem").display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(d.join("secret"), SECRET).unwrap();
    std::fs::write(d.join("dom0-password"), "pw\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = format!(
        "listen = \"{addr}\"\npublic_url = \"http://{addr}\"\ndata_dir = {data:?}\n\
         reconcile_interval_secs = 3600\n\
         [webhook]\nsecret_file = {secret:?}\nrepos = [\"{REPO}\"]\n{webhook_extra}\n\
         [agent]\npath = {agent:?}\nconfig = {agent_toml:?}\ngithub_app = true\n\
         timeout_secs = 30\n\
         [jobs]\npoll_interval_ms = 20\n\
         [dom0]\npassword_file = {pw:?}\n\
         [pools.\"4.2\"]\nprefix = \"a-\"\ngolden_snapshot = \"golden-4.2\"\n\
         [pools.\"4.3\"]\nprefix = \"b-\"\ngolden_snapshot = \"golden-4.3\"\n\
         scenarios = {{ prod-installed = \"golden-4.3-prod\" }}\n",
        data = d.join("data").display().to_string(),
        secret = d.join("secret").display().to_string(),
        agent = agent.display().to_string(),
        agent_toml = agent_toml.display().to_string(),
        pw = d.join("dom0-password").display().to_string(),
    );
    let cfg = Config::parse(&config, Path::new("test.toml")).unwrap();
    let auth = server::guest_auth(&cfg).unwrap();
    let hub = server::hub_from_config(cfg).unwrap();
    let hv = Arc::new(Recording {
        inner: MemoryHv::with_vms(&["a-1", "a-2", "b-1", "b-2"]),
        job_files: Mutex::new(Vec::new()),
        reverts: Mutex::new(Vec::new()),
    });
    let (h2, hv2) = (hub.clone(), hv.clone());
    let parts = Parts {
        reconciler: false,
        ..Parts::ALL
    };
    let task = tokio::spawn(async move {
        server::run(h2, hv2, auth, listener, parts).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://{addr}/healthz"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the host did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    World {
        hub,
        url: format!("http://{addr}"),
        gh,
        hv,
        _dir: dir,
        task,
    }
}

/// Two versions × two environments.
const TWO_BY_TWO: &str = "qubes: [\"4.2\", \"4.3\"]\nenvironments: [dev, staging]\n";

/// SDW's likely matrix (the README's example): 4.3 × dev/staging, and `upgrade-from-prod` in
/// staging from the `prod-installed` snapshot, run by a label only on pull requests.
const SDW: &str = "\
qubes: [\"4.3\"]
environments: [dev, staging]
scenarios:
  upgrade-from-prod:
    snapshot: prod-installed
    environments: [staging]
    before_dev:
      - name: install-prod
        run: make prod
    test: make test-upgrade
    on:
      pull_request: false
      labels: [4.3-openqa-pending]
";

impl World {
    /// Sends a signed delivery; a `pull_request` delivery also sets the stand-in's pull request
    /// to what it describes (its head, author and state), as GitHub's own would be.
    async fn send(&self, event: &str, delivery: &str, body: &Value) -> (u16, String) {
        webhooks::assert_valid(event, body);
        if event == "pull_request" {
            let pr = &body["pull_request"];
            let text = |v: &Value| v.as_str().unwrap().to_owned();
            self.gh.set_pull(
                REPO,
                body["number"].as_u64().unwrap(),
                PullRequest {
                    head_sha: text(&pr["head"]["sha"]),
                    head_ref: text(&pr["head"]["ref"]),
                    head_repo: text(&pr["head"]["repo"]["full_name"]),
                    user: text(&pr["user"]["login"]),
                    state: text(&pr["state"]),
                    title: text(&pr["title"]),
                },
            );
        }
        common::deliver(
            &reqwest::Client::new(),
            &self.url,
            event,
            delivery,
            &body.to_string(),
            Some(SECRET),
        )
        .await
    }

    /// The jobs of commit `sha(n)` with their cell names (`None`: not a cell job), oldest first.
    fn jobs(&self, n: u32) -> Vec<(JobRow, Option<String>)> {
        let mut v: Vec<_> = self
            .hub
            .store
            .recent_jobs(200)
            .unwrap()
            .into_iter()
            .filter(|j| j.sha == sha(n))
            .map(|j| {
                let cell = self
                    .hub
                    .store
                    .job_cell(j.id.as_str())
                    .unwrap()
                    .map(|c| c.name);
                (j, cell)
            })
            .collect();
        v.reverse();
        v
    }

    /// The newest job of cell `name` of `sha(n)`, if there is one yet.
    fn try_cell(&self, n: u32, name: &str) -> Option<JobRow> {
        self.jobs(n)
            .into_iter()
            .rev()
            .find(|(_, c)| c.as_deref() == Some(name))
            .map(|(j, _)| j)
    }

    /// Whether cell `name` of `sha(n)` has a job and it is running.
    fn cell_running(&self, n: u32, name: &str) -> bool {
        self.try_cell(n, name)
            .is_some_and(|j| j.state == JobState::Running)
    }

    /// The newest job of cell `name` of `sha(n)`.
    fn cell(&self, n: u32, name: &str) -> JobRow {
        self.jobs(n)
            .into_iter()
            .rev()
            .find(|(_, c)| c.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no job of cell {name}: {:?}", self.jobs(n)))
            .0
    }

    async fn until(&self, what: &str, f: impl Fn(&World) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "{what}; jobs now: {:#?}\ncheck runs: {:#?}",
                self.hub
                    .store
                    .recent_jobs(20)
                    .unwrap()
                    .iter()
                    .map(|j| (
                        j.id.to_string(),
                        j.sha.short().to_string(),
                        j.state,
                        j.note.clone()
                    ))
                    .collect::<Vec<_>>(),
                self.gh
                    .check_runs(REPO, &sha(1))
                    .iter()
                    .map(|r| (r.name.clone(), r.status.clone(), r.conclusion.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn runs(&self, n: u32) -> Vec<CheckRun> {
        self.gh.check_runs(REPO, &sha(n))
    }

    /// The newest check run of `name` on `sha(n)`.
    fn run(&self, n: u32, name: &str) -> Option<CheckRun> {
        self.runs(n)
            .into_iter()
            .filter(|r| r.name == name)
            .max_by_key(|r| r.id)
    }

    fn running(&self, id: &str) -> bool {
        self.hub.store.job(id).unwrap().unwrap().state == JobState::Running
    }

    fn state(&self, id: &str) -> JobState {
        self.hub.store.job(id).unwrap().unwrap().state
    }
}

fn push(branch: &str, n: u32, message: &str) -> Value {
    let mut p = webhooks::push(REPO, branch, &"0".repeat(40), &sha(n));
    p["head_commit"]["message"] = json!(message);
    p["commits"][0]["message"] = json!(message);
    p
}

fn label(name: &str) -> Value {
    json!({"id": objects::id_of(name), "node_id": objects::node_id("LA", objects::id_of(name)),
           "url": format!("https://api.github.com/repos/{REPO}/labels/{name}"),
           "name": name, "color": "ededed", "default": false, "description": null})
}

/// A `pull_request` delivery of pull request #7 from a branch of the repository itself (head
/// `sha(n)` on `feature`), with `labels` on it; `labeled`/`unlabeled` name `labels[0]`.
fn pull_request(action: &str, n: u32, labels: &[&str], sender: &str) -> Value {
    let api = "https://api.github.com";
    let repo = objects::repository(WEB, REPO);
    let user = objects::simple_user(WEB, "sd-dev", "User");
    let pr_api = format!("{api}/repos/{REPO}/pulls/7");
    let side = |r: &str, sha: String| {
        json!({"label": format!("freedomofpress:{r}"), "ref": r, "sha": sha,
               "user": objects::simple_user(WEB, "freedomofpress", "Organization"),
               "repo": objects::repository(WEB, REPO)})
    };
    let link = |h: String| json!({"href": h});
    let mut links = serde_json::Map::new();
    for (k, h) in [
        ("self", pr_api.clone()),
        ("html", format!("{WEB}/{REPO}/pull/7")),
        ("issue", format!("{api}/repos/{REPO}/issues/7")),
        ("comments", format!("{api}/repos/{REPO}/issues/7/comments")),
        ("review_comments", format!("{pr_api}/comments")),
        (
            "review_comment",
            format!("{api}/repos/{REPO}/pulls/comments{{/number}}"),
        ),
        ("commits", format!("{pr_api}/commits")),
        (
            "statuses",
            format!("{api}/repos/{REPO}/statuses/{}", sha(n)),
        ),
    ] {
        links.insert(k.into(), link(h));
    }
    let mut v = json!({
        "action": action,
        "number": 7,
        "pull_request": {
            "url": pr_api, "id": 700, "node_id": "PR_7", "html_url": format!("{WEB}/{REPO}/pull/7"),
            "diff_url": format!("{WEB}/{REPO}/pull/7.diff"),
            "patch_url": format!("{WEB}/{REPO}/pull/7.patch"),
            "issue_url": format!("{api}/repos/{REPO}/issues/7"),
            "number": 7, "state": "open", "locked": false, "title": "A change",
            "user": user, "body": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "closed_at": null, "merged_at": null, "merge_commit_sha": null,
            "assignee": null, "assignees": [], "requested_reviewers": [], "requested_teams": [],
            "labels": labels.iter().map(|l| label(l)).collect::<Vec<_>>(),
            "milestone": null,
            "commits_url": format!("{pr_api}/commits"),
            "review_comments_url": format!("{pr_api}/comments"),
            "review_comment_url": format!("{api}/repos/{REPO}/pulls/comments{{/number}}"),
            "comments_url": format!("{api}/repos/{REPO}/issues/7/comments"),
            "statuses_url": format!("{api}/repos/{REPO}/statuses/{}", sha(n)),
            "head": side("feature", sha(n)),
            "base": side("main", sha(999)),
            "_links": links,
            "author_association": "MEMBER", "auto_merge": null, "active_lock_reason": null,
            "draft": false,
            "merged": false, "mergeable": null, "rebaseable": null, "mergeable_state": "unknown",
            "merged_by": null, "comments": 0, "review_comments": 0,
            "maintainer_can_modify": false, "commits": 1, "additions": 1, "deletions": 0,
            "changed_files": 1
        },
        "repository": repo,
        "sender": objects::simple_user(WEB, sender, "User")
    });
    if matches!(action, "labeled" | "unlabeled") {
        v["label"] = label(labels.first().copied().unwrap_or("none"));
    }
    if action == "synchronize" {
        v["before"] = json!(sha(999));
        v["after"] = json!(sha(n));
    }
    v
}

/// An `issue_comment` `created` on pull request #7 by `login` (comment 9).
fn comment(text: &str, login: &str) -> Value {
    numbered_comment(text, login, 9)
}

/// [`comment`] with GitHub's comment id `id`.
fn numbered_comment(text: &str, login: &str, id: u64) -> Value {
    let mut c = comment_9(text, login);
    let api = "https://api.github.com";
    c["comment"]["id"] = json!(id);
    c["comment"]["node_id"] = json!(format!("IC_{id}"));
    c["comment"]["url"] = json!(format!("{api}/repos/{REPO}/issues/comments/{id}"));
    c["comment"]["html_url"] = json!(format!("{WEB}/{REPO}/pull/7#issuecomment-{id}"));
    c["comment"]["reactions"]["url"] =
        json!(format!("{api}/repos/{REPO}/issues/comments/{id}/reactions"));
    c
}

fn comment_9(text: &str, login: &str) -> Value {
    let api = "https://api.github.com";
    let user = objects::simple_user(WEB, login, "User");
    let reactions = json!({"url": format!("{api}/repos/{REPO}/issues/comments/9/reactions"),
        "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0, "confused": 0, "heart": 0,
        "rocket": 0, "eyes": 0});
    json!({
        "action": "created",
        "issue": {
            "url": format!("{api}/repos/{REPO}/issues/7"),
            "repository_url": format!("{api}/repos/{REPO}"),
            "labels_url": format!("{api}/repos/{REPO}/issues/7/labels{{/name}}"),
            "comments_url": format!("{api}/repos/{REPO}/issues/7/comments"),
            "events_url": format!("{api}/repos/{REPO}/issues/7/events"),
            "html_url": format!("{WEB}/{REPO}/pull/7"),
            "id": 700, "node_id": "I_7", "number": 7, "title": "A change",
            "user": objects::simple_user(WEB, "sd-dev", "User"),
            "assignees": [], "milestone": null, "comments": 1,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "closed_at": null, "author_association": "MEMBER", "active_lock_reason": null,
            "body": null, "reactions": reactions.clone(),
            "labels": [], "state": "open", "locked": false, "assignee": null,
            "pull_request": {
                "url": format!("{api}/repos/{REPO}/pulls/7"),
                "html_url": format!("{WEB}/{REPO}/pull/7"),
                "diff_url": format!("{WEB}/{REPO}/pull/7.diff"),
                "patch_url": format!("{WEB}/{REPO}/pull/7.patch")
            }
        },
        "comment": {
            "url": format!("{api}/repos/{REPO}/issues/comments/9"),
            "html_url": format!("{WEB}/{REPO}/pull/7#issuecomment-9"),
            "issue_url": format!("{api}/repos/{REPO}/issues/7"),
            "id": 9, "node_id": "IC_9", "user": user,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "author_association": "MEMBER", "performed_via_github_app": null,
            "body": text, "reactions": reactions
        },
        "repository": objects::repository(WEB, REPO),
        "sender": user
    })
}

#[test]
fn the_payloads_these_tests_send_are_what_github_sends() {
    webhooks::assert_valid("push", &push("main", 1, "A change"));
    for action in ["opened", "synchronize", "labeled", "unlabeled"] {
        webhooks::assert_valid(
            "pull_request",
            &pull_request(action, 1, &["sdci:4.3"], "maint"),
        );
    }
    webhooks::assert_valid("issue_comment", &comment("/sdci retry", "maint"));
}

#[tokio::test]
async fn two_versions_by_two_environments_queue_four_jobs_with_four_check_runs_and_a_failing_cell_leaves_the_others_running(
) {
    let w = world("").await;
    w.gh.add_file(REPO, &sha(1), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    let (code, text) = w.send("push", "d1", &push("main", 1, "A change")).await;
    assert_eq!(code, 202, "{text}");
    let names = ["4.2 / dev", "4.2 / staging", "4.3 / dev", "4.3 / staging"];
    w.until("four cell jobs run", |w| {
        names.iter().all(|n| w.cell_running(1, n))
    })
    .await;
    assert_eq!(w.jobs(1).len(), 4, "{:?}", w.jobs(1));
    w.until("four check runs in progress", |w| {
        names.iter().all(|n| {
            w.run(1, &format!("sdci / {n}"))
                .is_some_and(|r| r.status == "in_progress")
        })
    })
    .await;
    assert_eq!(
        w.runs(1).len(),
        4,
        "one check run per cell: {:#?}",
        w.runs(1)
    );
    // Each cell's job file carries its environment to every step.
    let files = w.hv.job_files.lock().unwrap().clone();
    for n in names {
        let job = w.cell(1, n);
        let file = files.iter().find(|f| f.spec.id == job.id).unwrap();
        let env = n.rsplit(" / ").next().unwrap();
        assert_eq!(file.spec.qubes_version, n.split(" / ").next().unwrap());
        assert!(
            file.spec
                .steps
                .iter()
                .all(|s| s.env.get("SECUREDROP_ENV").map(String::as_str) == Some(env)),
            "{n}: {:?}",
            file.spec.steps
        );
    }

    // One cell fails; the other three keep running.
    let failing = w.cell(1, "4.3 / staging");
    w.hv.inner.release(failing.id.as_str(), 1);
    w.until("the failing cell's check run completes", |w| {
        w.run(1, "sdci / 4.3 / staging")
            .is_some_and(|r| r.conclusion.as_deref() == Some("failure"))
    })
    .await;
    for n in ["4.2 / dev", "4.2 / staging", "4.3 / dev"] {
        assert!(w.running(w.cell(1, n).id.as_str()), "{n} still runs");
        assert_eq!(
            w.run(1, &format!("sdci / {n}")).unwrap().status,
            "in_progress",
            "{n}"
        );
    }
    // The commit statuses are per cell too.
    w.until("the failing cell's status", |w| {
        w.gh.statuses()
            .iter()
            .any(|s| s.sha == sha(1) && s.context == "sdci / 4.3 / staging" && s.state == "failure")
    })
    .await;
    for n in ["4.2 / dev", "4.2 / staging", "4.3 / dev"] {
        w.hv.inner.release(w.cell(1, n).id.as_str(), 0);
    }
    w.until("the other cells pass", |w| {
        ["4.2 / dev", "4.2 / staging", "4.3 / dev"].iter().all(|n| {
            w.try_cell(1, n)
                .is_some_and(|j| j.state == JobState::Success)
        })
    })
    .await;
}

#[tokio::test]
async fn re_running_one_cell_leaves_the_others_alone() {
    let w = world("").await;
    w.gh.add_file(REPO, &sha(1), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    let (code, text) = w.send("push", "d1", &push("main", 1, "A change")).await;
    assert_eq!(code, 202, "{text}");
    let names = ["4.2 / dev", "4.2 / staging", "4.3 / dev", "4.3 / staging"];
    w.until("four cell jobs run", |w| {
        w.jobs(1).len() == 4 && names.iter().all(|n| w.cell_running(1, n))
    })
    .await;
    let first: Vec<String> = names.iter().map(|n| w.cell(1, n).id.to_string()).collect();
    w.hv.inner.release(&first[0], 1);
    w.until("4.2 / dev fails", |w| {
        w.state(&first[0]) == JobState::Failure
    })
    .await;
    w.until("its check run says so", |w| {
        w.run(1, "sdci / 4.2 / dev")
            .is_some_and(|r| r.conclusion.as_deref() == Some("failure"))
    })
    .await;
    let run = w.run(1, "sdci / 4.2 / dev").unwrap();
    let rerun = sdci_tests::job_world::check_events::rerequested(&run, "maint").unwrap();
    let (code, text) = w.send("check_run", "r1", &rerun).await;
    assert_eq!(code, 202, "{text}");
    w.until("the re-run of 4.2 / dev runs", |w| {
        w.try_cell(1, "4.2 / dev")
            .is_some_and(|j| j.id.as_str() != first[0] && j.state == JobState::Running)
    })
    .await;
    // The others: the same jobs, still running, no new job of theirs.
    assert_eq!(w.jobs(1).len(), 5, "{:?}", w.jobs(1));
    for (n, id) in names.iter().zip(&first).skip(1) {
        assert_eq!(w.cell(1, n).id.as_str(), id, "{n}");
        assert!(w.running(id), "{n}");
    }
    let again = w.cell(1, "4.2 / dev");
    w.until("the re-run gets its own check run", |w| {
        w.runs(1).len() == 5
            && w.run(1, "sdci / 4.2 / dev").is_some_and(|r| {
                r.external_id.as_deref() == Some(again.id.as_str()) && r.status == "in_progress"
            })
    })
    .await;
}

#[tokio::test]
async fn a_label_added_queues_its_cells_for_the_head_and_removed_cancels_them() {
    let w = world("").await;
    w.gh.add_file(REPO, &sha(2), ".github/sdci.yml", SDW.as_bytes());
    let (code, text) = w
        .send(
            "pull_request",
            "p1",
            &pull_request("opened", 2, &[], "sd-dev"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("the pull request's cells run", |w| {
        w.jobs(2)
            .iter()
            .filter(|(j, _)| j.state == JobState::Running)
            .count()
            == 2
    })
    .await;
    let cells: Vec<Option<String>> = w.jobs(2).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        cells,
        [Some("4.3 / dev".into()), Some("4.3 / staging".into())],
        "the upgrade scenario runs on its label only"
    );

    let labeled = pull_request("labeled", 2, &["4.3-openqa-pending"], "maint");
    let (code, text) = w.send("pull_request", "p2", &labeled).await;
    assert_eq!(code, 202, "{text}");
    w.until("the labelled scenario is queued", |w| {
        w.jobs(2)
            .iter()
            .any(|(_, c)| c.as_deref() == Some("4.3 / upgrade-from-prod"))
    })
    .await;
    let up = w.cell(2, "4.3 / upgrade-from-prod");
    assert_eq!(up.state, JobState::Queued, "both 4.3 VMs are busy");
    w.until("its check run is queued", |w| {
        w.run(2, "sdci / 4.3 / upgrade-from-prod")
            .is_some_and(|r| r.status == "queued")
    })
    .await;

    let unlabeled = pull_request("unlabeled", 2, &["4.3-openqa-pending"], "maint");
    let (code, text) = w.send("pull_request", "p3", &unlabeled).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("canceled 1"), "{text}");
    assert_eq!(w.state(up.id.as_str()), JobState::Canceled);
    w.until("its check run is cancelled", |w| {
        w.run(2, "sdci / 4.3 / upgrade-from-prod")
            .is_some_and(|r| r.conclusion.as_deref() == Some("cancelled"))
    })
    .await;
    for n in ["4.3 / dev", "4.3 / staging"] {
        assert!(
            w.running(w.cell(2, n).id.as_str()),
            "{n} is not the label's"
        );
    }

    // Labelled again, with a free VM: the scenario runs from its own golden snapshot, its
    // steps before `make dev` and its test command in the job file.
    w.hv.inner.release(w.cell(2, "4.3 / dev").id.as_str(), 0);
    let (code, text) = w.send("pull_request", "p4", &labeled).await;
    assert_eq!(code, 202, "{text}");
    w.until("the scenario runs", |w| {
        w.try_cell(2, "4.3 / upgrade-from-prod")
            .is_some_and(|j| j.id != up.id && j.state == JobState::Running)
    })
    .await;
    let up = w.cell(2, "4.3 / upgrade-from-prod");
    let vm = up.vm.clone().unwrap();
    assert!(
        w.hv.reverts
            .lock()
            .unwrap()
            .contains(&(vm, "golden-4.3-prod".to_owned())),
        "reverted to [pools.\"4.3\"] scenarios' prod-installed"
    );
    let files = w.hv.job_files.lock().unwrap().clone();
    let file = files.iter().find(|f| f.spec.id == up.id).unwrap();
    let names: Vec<&str> = file.spec.steps.iter().map(|s| s.name.as_str()).collect();
    let dev = names.iter().position(|n| *n == "make-dev").unwrap();
    assert_eq!(names[dev - 1], "install-prod", "{names:?}");
    let test = file
        .spec
        .steps
        .iter()
        .find(|s| s.name == "make-test")
        .unwrap();
    assert_eq!(test.argv, ["sh", "-c", "make test-upgrade"]);
    assert_eq!(test.env["SECUREDROP_ENV"], "staging");
}

#[tokio::test]
async fn a_host_label_queues_the_cells_it_names_and_synchronize_runs_them_again() {
    let w = world("").await;
    let only_labels = "qubes: [\"4.2\", \"4.3\"]\non:\n  pull_request: false\n";
    for n in [3, 4] {
        w.gh.add_file(REPO, &sha(n), ".github/sdci.yml", only_labels.as_bytes());
    }
    let (code, text) = w
        .send(
            "pull_request",
            "p1",
            &pull_request("opened", 3, &[], "sd-dev"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("the opened pull request runs nothing", |w| {
        w.jobs(3).iter().all(|(j, _)| j.state == JobState::Canceled) && !w.jobs(3).is_empty()
    })
    .await;
    assert!(
        w.runs(3).is_empty(),
        "no check run for a trigger that selects nothing"
    );
    let (code, text) = w
        .send(
            "pull_request",
            "p2",
            &pull_request("labeled", 3, &["sdci:4.3"], "maint"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("sdci:4.3 runs the 4.3 cell", |w| {
        w.jobs(3)
            .iter()
            .any(|(j, c)| c.as_deref() == Some("4.3 / dev") && j.state == JobState::Running)
    })
    .await;
    assert!(w
        .jobs(3)
        .iter()
        .all(|(_, c)| c.as_deref() != Some("4.2 / dev")));
    // A new head of the labelled pull request runs the labelled cell again, only it.
    let (code, text) = w
        .send(
            "pull_request",
            "p3",
            &pull_request("synchronize", 4, &["sdci:4.3"], "sd-dev"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("the new head's 4.3 cell is queued", |w| {
        w.jobs(4)
            .iter()
            .any(|(_, c)| c.as_deref() == Some("4.3 / dev"))
    })
    .await;
    assert!(w
        .jobs(4)
        .iter()
        .all(|(_, c)| c.as_deref() != Some("4.2 / dev")));
}

#[tokio::test]
async fn sdci_retry_from_a_user_without_write_access_does_nothing_and_from_a_writer_reruns_the_failed_cells(
) {
    let w = world("").await;
    w.gh.add_file(REPO, &sha(5), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    let (code, text) = w
        .send(
            "pull_request",
            "p1",
            &pull_request("opened", 5, &[], "sd-dev"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    let names = ["4.2 / dev", "4.2 / staging", "4.3 / dev", "4.3 / staging"];
    w.until("four cells run", |w| {
        w.jobs(5).len() == 4 && names.iter().all(|n| w.cell_running(5, n))
    })
    .await;
    w.hv.inner
        .release(w.cell(5, "4.2 / staging").id.as_str(), 1);
    for n in ["4.2 / dev", "4.3 / dev", "4.3 / staging"] {
        w.hv.inner.release(w.cell(5, n).id.as_str(), 0);
    }
    w.until("all four ended", |w| {
        names
            .iter()
            .all(|n| w.try_cell(5, n).is_some_and(|j| j.state.is_terminal()))
    })
    .await;
    let before = w.jobs(5).len();

    for (who, d) in [("visitor", "c1"), ("stranger", "c2")] {
        let (code, text) = w
            .send("issue_comment", d, &comment("/sdci retry", who))
            .await;
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("needs write"), "{text}");
    }
    assert_eq!(w.jobs(5).len(), before, "nothing queued");

    let (code, text) = w
        .send("issue_comment", "c3", &comment("/sdci retry", "maint"))
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("the failed cell runs again", |w| {
        w.cell_running(5, "4.2 / staging")
    })
    .await;
    assert_eq!(
        w.jobs(5).len(),
        before + 1,
        "only the failed cell: {:?}",
        w.jobs(5)
    );
    let retried = w.cell(5, "4.2 / staging");
    let history = w.hub.store.transitions(retried.id.as_str()).unwrap();
    assert_eq!(
        history[0].3.as_deref(),
        Some("/sdci retry by maint"),
        "acknowledged in the job's history: {history:?}"
    );
    let log = std::fs::read_to_string(w.hub.cfg.log_dir().join(format!("{}.log", retried.id)))
        .unwrap_or_default();
    assert!(log.contains("/sdci retry by maint"), "and its log: {log}");

    // `/sdci run 4.3 dev` by a writer runs that one cell; `/sdci cancel` stops what runs.
    let (code, text) = w
        .send(
            "issue_comment",
            "c4",
            &comment("/sdci run 4.3 dev", "maint"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("4.3 / dev runs again", |w| {
        w.jobs(5)
            .iter()
            .filter(|(_, c)| c.as_deref() == Some("4.3 / dev"))
            .count()
            == 2
    })
    .await;
    let (code, text) = w
        .send("issue_comment", "c5", &comment("/sdci cancel", "maint"))
        .await;
    assert_eq!(code, 200, "{text}");
    w.until("everything of the head ended", |w| {
        w.jobs(5).iter().all(|(j, _)| j.state.is_terminal())
    })
    .await;
}

#[tokio::test]
async fn a_skip_ci_branch_or_commit_queues_nothing() {
    let w = world("").await;
    w.gh.add_file(REPO, &sha(6), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    let (code, text) = w.send("push", "d1", &push("docs-skip-ci", 6, "Docs")).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("skip-ci"), "{text}");
    let (code, text) = w
        .send("push", "d2", &push("main", 6, "Docs only\n\n[skip ci]"))
        .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("[skip ci]"), "{text}");
    assert!(w.jobs(6).is_empty());
}

#[tokio::test]
async fn a_malformed_matrix_file_fails_the_commit_naming_the_line() {
    let w = world("").await;
    w.gh.add_file(
        REPO,
        &sha(7),
        ".github/sdci.yml",
        b"qubes: [\"4.3\"]\nenviroments: [dev]\n",
    );
    let (code, text) = w.send("push", "d1", &push("main", 7, "A change")).await;
    assert_eq!(code, 202, "{text}");
    w.until("the job failed", |w| {
        w.jobs(7).iter().all(|(j, _)| j.state == JobState::Failure) && !w.jobs(7).is_empty()
    })
    .await;
    let (job, _) = &w.jobs(7)[0];
    let note = job.note.clone().unwrap();
    assert!(
        note.contains(".github/sdci.yml line 2") && note.contains("enviroments"),
        "{note}"
    );
    w.until("a failed check run names the line", |w| {
        w.runs(7).iter().any(|r| {
            r.conclusion.as_deref() == Some("failure")
                && format!("{:?}", r.output).contains("line 2")
        })
    })
    .await;
    w.until("a failed status names the line", |w| {
        w.gh.statuses().iter().any(|s| {
            s.sha == sha(7)
                && s.state == "failure"
                && s.description
                    .as_deref()
                    .is_some_and(|d| d.contains("line 2"))
        })
    })
    .await;
    assert!(w.hv.job_files.lock().unwrap().is_empty(), "no VM was used");
}

#[tokio::test]
async fn without_a_matrix_file_workstation_ci_yml_names_the_version_and_else_the_newest_pool() {
    let w = world("").await;
    assert_eq!(w.hub.cfg.default_version, "4.3", "the newest pool");
    w.gh.add_file(
        REPO,
        &sha(8),
        ".github/workstation-ci.yml",
        b"qubes: \"4.2\"\n",
    );
    let (code, text) = w.send("push", "d1", &push("main", 8, "Old style")).await;
    assert_eq!(code, 202, "{text}");
    let (code, text) = w.send("push", "d2", &push("other", 9, "Neither")).await;
    assert_eq!(code, 202, "{text}");
    w.until("both run", |w| {
        [8, 9]
            .iter()
            .all(|n| w.jobs(*n).len() == 1 && w.running(w.jobs(*n)[0].0.id.as_str()))
    })
    .await;
    let (a, cell_a) = &w.jobs(8)[0];
    let (b, cell_b) = &w.jobs(9)[0];
    assert_eq!((a.version.as_deref(), cell_a), (Some("4.2"), &None));
    assert_eq!((b.version.as_deref(), cell_b), (Some("4.3"), &None));
    w.until("their check runs have the plain names", |w| {
        w.runs(8).iter().any(|r| r.name == "sdci / Qubes 4.2")
            && w.runs(9).iter().any(|r| r.name == "sdci / Qubes 4.3")
    })
    .await;
}

#[tokio::test]
async fn with_fail_fast_a_failed_cell_cancels_the_others_of_its_commit() {
    let w = world("").await;
    let file = format!("{TWO_BY_TWO}fail_fast: true\n");
    w.gh.add_file(REPO, &sha(10), ".github/sdci.yml", file.as_bytes());
    let (code, text) = w.send("push", "d1", &push("main", 10, "A change")).await;
    assert_eq!(code, 202, "{text}");
    let names = ["4.2 / dev", "4.2 / staging", "4.3 / dev", "4.3 / staging"];
    w.until("four cells run", |w| {
        w.jobs(10).len() == 4 && names.iter().all(|n| w.cell_running(10, n))
    })
    .await;
    w.hv.inner.release(w.cell(10, "4.3 / dev").id.as_str(), 1);
    w.until("the other cells are canceled", |w| {
        ["4.2 / dev", "4.2 / staging", "4.3 / staging"]
            .iter()
            .all(|n| {
                w.try_cell(10, n)
                    .is_some_and(|j| j.state == JobState::Canceled)
            })
    })
    .await;
    assert_eq!(w.cell(10, "4.3 / dev").state, JobState::Failure);
    let note = w.cell(10, "4.2 / dev").note.unwrap_or_default();
    assert!(note.contains("fail_fast: cell 4.3 / dev failed"), "{note}");
}

#[tokio::test]
async fn a_writers_comment_command_is_acknowledged_with_a_reaction_and_a_strangers_gets_none() {
    let w = world("").await;
    w.gh.add_file(REPO, &sha(8), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    let (code, text) = w
        .send(
            "pull_request",
            "p1",
            &pull_request("opened", 8, &[], "sd-dev"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("four cells run", |w| w.jobs(8).len() == 4).await;

    let cases = [
        (101, "/sdci run 4.3 dev", "stranger", 200),
        (102, "/sdci rerun", "maint", 200),
        (103, "/sdci run 4.3 dev", "maint", 202),
        (104, "/sdci retry", "maint", 200),
    ];
    for (id, text, who, want) in cases {
        let (code, answer) = w
            .send(
                "issue_comment",
                &format!("c{id}"),
                &numbered_comment(text, who, id),
            )
            .await;
        assert_eq!(code, want, "{text} by {who}: {answer}");
    }
    w.until("three reactions", |w| w.gh.reactions().len() == 3)
        .await;
    let mut seen: Vec<(u64, String)> =
        w.gh.reactions()
            .into_iter()
            .map(|r| {
                assert_eq!((r.repo.as_str(), r.user.as_str()), (REPO, "sdci[bot]"));
                (r.comment_id, r.content)
            })
            .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (102, "confused".to_owned()),
            (103, "+1".to_owned()),
            // Nothing failed yet: nothing to retry.
            (104, "confused".to_owned()),
        ],
        "no reaction for the stranger's comment 101"
    );
    let posted: Vec<u16> =
        w.gh.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/reactions"))
            .map(|r| r.status)
            .collect();
    assert_eq!(posted, [201, 201, 201]);
}

/// Pull request #7 opened at `sha(n)` with the two-by-two matrix; waits until its four cells run.
async fn opened_with_four_cells(w: &World, n: u32) {
    w.gh.add_file(REPO, &sha(n), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    let (code, text) = w
        .send(
            "pull_request",
            &format!("open-{n}"),
            &pull_request("opened", n, &[], "sd-dev"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("four cells run", |w| {
        w.jobs(n).len() == 4 && w.jobs(n).iter().all(|(j, _)| w.running(j.id.as_str()))
    })
    .await;
}

/// How many jobs cell `name` of `sha(n)` has had.
fn cell_jobs(w: &World, n: u32, name: &str) -> usize {
    w.jobs(n)
        .iter()
        .filter(|(_, c)| c.as_deref() == Some(name))
        .count()
}

#[tokio::test]
async fn a_comment_command_acts_on_the_head_github_has_now_not_on_the_newest_the_host_saw() {
    let w = world("").await;
    opened_with_four_cells(&w, 11).await;
    // A push to the pull request whose `synchronize` never reached the host.
    w.gh.add_file(REPO, &sha(12), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    w.gh.set_pull(
        REPO,
        7,
        PullRequest::open(REPO, "feature", &sha(12), "sd-dev"),
    );
    let (code, text) = w
        .send(
            "issue_comment",
            "c1",
            &numbered_comment("/sdci run 4.3 dev", "maint", 21),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("4.3 / dev of the real head is queued", |w| {
        w.try_cell(12, "4.3 / dev").is_some()
    })
    .await;
    assert_eq!(w.jobs(12).len(), 1, "that one cell: {:?}", w.jobs(12));
    assert_eq!(
        cell_jobs(&w, 11, "4.3 / dev"),
        1,
        "nothing more on the old head"
    );
    let asked: Vec<_> =
        w.gh.requests()
            .into_iter()
            .filter(|r| r.path == format!("/repos/{REPO}/pulls/7"))
            .map(|r| (r.method, r.status))
            .collect();
    assert_eq!(asked, [("GET".to_owned(), 200)], "asked GitHub once");
}

#[tokio::test]
async fn a_comment_command_on_a_closed_pull_request_gets_a_confused_reaction_and_queues_nothing() {
    let w = world("").await;
    opened_with_four_cells(&w, 13).await;
    let mut closed = PullRequest::open(REPO, "feature", &sha(13), "sd-dev");
    closed.state = "closed".into();
    w.gh.set_pull(REPO, 7, closed);
    let before = w.jobs(13).len();
    let (code, text) = w
        .send(
            "issue_comment",
            "c1",
            &numbered_comment("/sdci run 4.3 dev", "maint", 22),
        )
        .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("closed"), "{text}");
    w.until("a confused reaction", |w| {
        w.gh.reactions()
            .iter()
            .any(|r| r.comment_id == 22 && r.content == "confused")
    })
    .await;
    assert_eq!(w.jobs(13).len(), before, "nothing queued");
}

#[tokio::test]
async fn a_github_outage_while_reading_the_pull_request_answers_503_so_github_redelivers() {
    let w = world("").await;
    opened_with_four_cells(&w, 14).await;
    // `maint`'s write access is known (and cached) from a first command.
    let (code, text) = w
        .send("issue_comment", "c1", &comment("/sdci retry", "maint"))
        .await;
    assert_eq!(code, 200, "nothing failed yet: {text}");
    let before = w.jobs(14).len();
    w.gh.outage_for(Duration::from_secs(30), 502);
    let (code, text) = w
        .send(
            "issue_comment",
            "c2",
            &comment("/sdci run 4.3 dev", "maint"),
        )
        .await;
    assert_eq!(code, 503, "{text}");
    assert_eq!(w.jobs(14).len(), before, "nothing queued");
}

#[tokio::test]
async fn the_same_comment_delivered_twice_after_its_cells_ended_queues_once() {
    let w = world("").await;
    opened_with_four_cells(&w, 15).await;
    let end_all = || async {
        for (j, _) in w.jobs(15) {
            w.hv.inner.release(j.id.as_str(), 0);
        }
        w.until("every cell ended", |w| {
            w.jobs(15).iter().all(|(j, _)| j.state.is_terminal())
        })
        .await;
    };
    end_all().await;
    let command = numbered_comment("/sdci run 4.3 dev", "maint", 23);
    let (code, text) = w.send("issue_comment", "c1", &command).await;
    assert_eq!(code, 202, "{text}");
    w.until("4.3 / dev runs again", |w| {
        cell_jobs(w, 15, "4.3 / dev") == 2 && w.cell_running(15, "4.3 / dev")
    })
    .await;
    end_all().await;
    // GitHub redelivers the same delivery (its "Redeliver" button, or a lost answer).
    let (code, text) = w.send("issue_comment", "c1", &command).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("duplicate delivery"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cell_jobs(&w, 15, "4.3 / dev"), 2, "queued once");
    // A new comment with the same words is a new command.
    let (code, text) = w
        .send(
            "issue_comment",
            "c2",
            &numbered_comment("/sdci run 4.3 dev", "maint", 24),
        )
        .await;
    assert_eq!(code, 202, "{text}");
}

#[tokio::test]
async fn the_same_label_delivered_twice_after_its_cells_ended_queues_once() {
    let w = world("").await;
    w.gh.add_file(REPO, &sha(16), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    let (code, text) = w
        .send(
            "pull_request",
            "p1",
            &pull_request("labeled", 16, &["sdci:4.3"], "maint"),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("the 4.3 cells run", |w| {
        w.cell_running(16, "4.3 / dev") && w.cell_running(16, "4.3 / staging")
    })
    .await;
    for (j, _) in w.jobs(16) {
        w.hv.inner.release(j.id.as_str(), 0);
    }
    w.until("both ended", |w| {
        w.jobs(16).iter().all(|(j, _)| j.state.is_terminal())
    })
    .await;
    let before = w.jobs(16).len();
    let (code, text) = w
        .send(
            "pull_request",
            "p1",
            &pull_request("labeled", 16, &["sdci:4.3"], "maint"),
        )
        .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("duplicate delivery"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.jobs(16).len(), before, "queued once: {:?}", w.jobs(16));
}

#[tokio::test]
async fn a_writers_sdci_run_on_a_forks_unapproved_head_is_refused_and_an_approvers_approves_it() {
    let w = world("fork_label = \"ok-to-test\"\nfork_approvers = [\"boss\"]\n").await;
    w.gh.set_permission(REPO, "boss", "write");
    let fork = "someone/securedrop-workstation";
    w.gh.add_file(REPO, &sha(17), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    w.gh.set_pull(REPO, 7, PullRequest::open(fork, "fix", &sha(17), "someone"));

    let (code, text) = w
        .send(
            "issue_comment",
            "c1",
            &numbered_comment("/sdci run 4.3 dev", "maint", 31),
        )
        .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("only boss may approve"), "{text}");
    w.until("a confused reaction", |w| {
        w.gh.reactions()
            .iter()
            .any(|r| r.comment_id == 31 && r.content == "confused")
    })
    .await;
    assert!(w.jobs(17).is_empty(), "nothing queued: {:?}", w.jobs(17));
    assert!(w.hub.store.fork_approvals(REPO, 7).unwrap().is_empty());

    let (code, text) = w
        .send(
            "issue_comment",
            "c2",
            &numbered_comment("/sdci run 4.3 dev", "boss", 32),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("4.3 / dev of the fork's head is queued", |w| {
        w.try_cell(17, "4.3 / dev").is_some()
    })
    .await;
    assert_eq!(
        w.hub.store.fork_approvals(REPO, 7).unwrap(),
        [(sha(17), "boss".to_owned())],
        "the approver's command approved that one head"
    );
    let job = w.cell(17, "4.3 / dev");
    assert_eq!(job.clone_url, format!("https://github.com/{fork}.git"));

    // Approved now: any writer's command runs it.
    let (code, text) = w
        .send(
            "issue_comment",
            "c3",
            &numbered_comment("/sdci run 4.3 staging", "maint", 33),
        )
        .await;
    assert_eq!(code, 202, "{text}");
    w.until("4.3 / staging is queued too", |w| {
        w.try_cell(17, "4.3 / staging").is_some()
    })
    .await;
}

#[tokio::test]
async fn a_label_removal_delivered_again_later_cancels_nothing_the_label_queued_since() {
    let w = world("").await;
    w.gh.add_file(REPO, &sha(18), ".github/sdci.yml", TWO_BY_TWO.as_bytes());
    let added = pull_request("labeled", 18, &["sdci:4.3"], "maint");
    let removed = pull_request("unlabeled", 18, &["sdci:4.3"], "maint");
    let (code, text) = w.send("pull_request", "l1", &added).await;
    assert_eq!(code, 202, "{text}");
    w.until("the 4.3 cells run", |w| {
        w.cell_running(18, "4.3 / dev") && w.cell_running(18, "4.3 / staging")
    })
    .await;
    let (code, text) = w.send("pull_request", "u1", &removed).await;
    assert_eq!(code, 200, "{text}");
    w.until("both canceled", |w| {
        w.jobs(18)
            .iter()
            .all(|(j, _)| j.state == JobState::Canceled)
    })
    .await;
    let (code, text) = w.send("pull_request", "l2", &added).await;
    assert_eq!(code, 202, "{text}");
    w.until("the 4.3 cells run again", |w| {
        w.cell_running(18, "4.3 / dev") && w.cell_running(18, "4.3 / staging")
    })
    .await;
    // The first removal, redelivered: it was carried out once already.
    let (code, text) = w.send("pull_request", "u1", &removed).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("duplicate delivery"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.cell_running(18, "4.3 / dev") && w.cell_running(18, "4.3 / staging"),
        "the cells queued since still run: {:?}",
        w.jobs(18)
    );
}
