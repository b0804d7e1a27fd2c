//! The GitHub gateway subcommands against the GitHub stand-in: authentication (PAT and App),
//! retries, rate limits, the description cap, exit codes, and no token in any output.
#![allow(clippy::unwrap_used)]

use sdci_tests::github::{GitHub, RateLimit, TEST_APP_PRIVATE_KEY};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, UNIX_EPOCH};

const REPO: &str = "freedomofpress/securedrop-workstation";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const PAT: &str = "ghp_standinPersonalAccessToken0001";

struct Setup {
    gh: GitHub,
    dir: tempfile::TempDir,
}

/// A stand-in with the repository registered, and an agent config in token or App mode.
fn setup(app: bool, extra_toml: &str) -> Setup {
    let gh = GitHub::start();
    gh.add_repo(REPO);
    let dir = tempfile::tempdir().unwrap();
    let auth = if app {
        gh.set_app(12345, 678, TEST_APP_PRIVATE_KEY);
        let key = dir.path().join("app.pem");
        std::fs::write(&key, TEST_APP_PRIVATE_KEY).unwrap();
        format!(
            "[app]\napp_id = 12345\ninstallation_id = 678\nprivate_key_file = {:?}\n",
            key.display().to_string()
        )
    } else {
        gh.add_pat(PAT);
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{PAT}\n")).unwrap();
        format!("token_file = {:?}\n", token.display().to_string())
    };
    // Top-level keys before any table: the App section goes last.
    let config = if app {
        format!("api_url = {:?}\n{extra_toml}\n{auth}", gh.url())
    } else {
        format!("api_url = {:?}\n{auth}\n{extra_toml}", gh.url())
    };
    std::fs::write(dir.path().join("agent.toml"), config).unwrap();
    Setup { gh, dir }
}

const FAST_RETRY: &str = "[retry]\nmax_attempts = 4\ninitial_backoff_ms = 10\nmax_backoff_ms = 50\nmax_rate_limit_wait_secs = 5\nrequest_timeout_secs = 20\n";

fn agent(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdci-agent"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("SDCI_GITHUB_API")
        .env_remove("SDCI_GITHUB_TOKEN_FILE")
        .env_remove("SDCI_AGENT_CONFIG")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap()
}

impl Setup {
    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("agent.toml")
    }
    fn agent(&self, args: &[&str]) -> Output {
        let out = agent(&self.config(), args);
        self.assert_no_secret_in(&out);
        out
    }
    /// Neither the PAT nor any minted installation token appears in stdout (except `token`'s
    /// own answer, checked separately) or in the trace-level logs on stderr.
    fn assert_no_secret_in(&self, out: &Output) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut secrets = vec![PAT.to_owned()];
        secrets.extend(self.gh.minted().into_iter().map(|m| m.token));
        for s in &secrets {
            assert!(
                !stderr.contains(s.as_str()),
                "a token leaked into the logs:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains("BEGIN RSA"),
            "the App key leaked into the logs"
        );
    }
    /// Posts a `pending`/`queued` status and expects the agent to exit 0.
    fn post_queued_ok(&self) {
        let out = self.agent(&self.status_args("pending", "queued"));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    fn status_args<'a>(&self, state: &'a str, description: &'a str) -> Vec<&'a str> {
        vec![
            "status",
            "--repo",
            REPO,
            "--sha",
            SHA,
            "--state",
            state,
            "--description",
            description,
        ]
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_with_a_personal_access_token_posts_the_documented_request() {
    let s = setup(false, "");
    let mut args = s.status_args("pending", "queued");
    args.extend(["--target-url", "https://ci.example/jobs/1"]);
    let out = s.agent(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let statuses = s.gh.statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].state, "pending");
    assert_eq!(statuses[0].description.as_deref(), Some("queued"));
    assert_eq!(statuses[0].context, "sd-ci-runner");
    assert_eq!(
        statuses[0].target_url.as_deref(),
        Some("https://ci.example/jobs/1")
    );
    let req = &s.gh.requests()[0];
    assert_eq!(req.path, format!("/repos/{REPO}/statuses/{SHA}"));
    assert_eq!(req.header("authorization"), Some("Bearer <redacted>"));
    assert_eq!(req.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(req.header("x-github-api-version"), Some("2022-11-28"));
    // octocrab's client always adds `User-Agent: octocrab`; the agent names itself too.
    let agents: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "user-agent")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        agents.iter().any(|a| a.starts_with("sdci-agent/")),
        "{agents:?}"
    );
}

#[test]
fn the_context_can_be_chosen_per_call() {
    let s = setup(false, "");
    let mut args = s.status_args("success", "ok");
    args.extend(["--context", "sd-ci-runner/4.2"]);
    let out = s.agent(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(s.gh.statuses()[0].context, "sd-ci-runner/4.2");
}

#[test]
fn app_mode_posts_with_a_token_narrowed_to_the_repository_and_the_gateway_s_four_permissions() {
    let s = setup(true, "");
    let out = s.agent(&s.status_args("success", "all 8 steps passed"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let minted = s.gh.minted();
    assert_eq!(minted.len(), 1);
    assert_eq!(minted[0].installation_id, 678);
    assert_eq!(
        minted[0].repositories.as_deref(),
        Some(&["securedrop-workstation".to_owned()][..])
    );
    let perms = minted[0].permissions.clone().unwrap();
    assert_eq!(perms.len(), 4, "{perms:?}");
    assert_eq!(perms["checks"], "write");
    assert_eq!(perms["contents"], "read");
    assert_eq!(perms["metadata"], "read");
    assert_eq!(perms["statuses"], "write");
    let reqs = s.gh.requests();
    assert_eq!(reqs[0].path, "/app/installations/678/access_tokens");
    assert_eq!(reqs[0].status, 201, "the JWT was accepted");
    assert_eq!(
        reqs[1].status, 201,
        "the status was accepted with the minted token"
    );
    assert_eq!(s.gh.statuses()[0].state, "success");
}

#[test]
fn token_prints_a_short_lived_installation_token_and_its_expiry_as_json() {
    let s = setup(true, "");
    let out = agent(&s.config(), &["token", "--repo", REPO]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let minted = s.gh.minted();
    assert_eq!(v["token"], minted[0].token.as_str());
    assert_eq!(v["expires_at"], minted[0].expires_at.as_str());
    assert!(
        !stderr(&out).contains(&minted[0].token),
        "the token is on stdout only"
    );
}

#[test]
fn token_for_a_job_is_narrowed_to_contents_read_unless_permissions_are_given() {
    let s = setup(true, "");
    let out = agent(&s.config(), &["token", "--repo", REPO]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = agent(
        &s.config(),
        &[
            "token",
            "--repo",
            REPO,
            "--permissions=contents:read,metadata:read",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let minted = s.gh.minted();
    let perms = |i: usize| minted[i].permissions.clone().unwrap();
    assert_eq!(perms(0).len(), 1, "{:?}", perms(0));
    assert_eq!(perms(0)["contents"], "read");
    assert!(!perms(0).contains_key("statuses"), "no token that writes");
    assert_eq!(perms(1).len(), 2);
    assert_eq!(perms(1)["metadata"], "read");
    // What the stand-in received is GitHub's documented body.
    let body = s.gh.requests()[0].json();
    assert_eq!(
        body,
        serde_json::json!({"repositories": ["securedrop-workstation"],
            "permissions": {"contents": "read"}})
    );
}

#[test]
fn a_malformed_permissions_list_is_a_usage_error_without_a_request() {
    let s = setup(true, "");
    for bad in ["contents", "contents:own", "contents:read,contents:write"] {
        let out = s.agent(&["token", "--repo", REPO, "--permissions", bad]);
        assert_eq!(out.status.code(), Some(64), "{bad}: {}", stderr(&out));
    }
    assert!(s.gh.requests().is_empty());
}

#[test]
fn revoke_deletes_the_installation_token_read_from_stdin_and_it_stops_working() {
    let s = setup(true, "");
    let out = agent(&s.config(), &["token", "--repo", REPO]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    let token = s.gh.minted()[0].token.clone();
    // The token line `token` printed, on stdin: never on the command line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sdci-agent"))
        .arg("--config")
        .arg(s.config())
        .args(["revoke", "--token-file", "-"])
        .env_remove("SDCI_GITHUB_API")
        .env("RUST_LOG", "trace")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    s.assert_no_secret_in(&out);
    let reqs = s.gh.requests();
    let del = reqs.last().unwrap();
    assert_eq!(
        (del.method.as_str(), del.path.as_str()),
        ("DELETE", "/installation/token")
    );
    assert_eq!(del.status, 204);
    assert!(del.body.is_empty(), "the endpoint takes no body");
    assert!(s.gh.minted()[0].revoked);
    // A second revoke (the host's, at the job's end) of a dead token is still success.
    let file = s.dir.path().join("job-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let out = s.agent(&["revoke", "--token-file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(s.gh.requests().last().unwrap().status, 401);
}

#[test]
fn revoke_without_a_token_is_a_usage_error_without_a_request() {
    let s = setup(true, "");
    let empty = s.dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = s.agent(&["revoke", "--token-file", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = s.agent(&["revoke", "--token-file", "/nonexistent/token"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(s.gh.requests().is_empty());
}

#[test]
fn token_without_an_app_is_a_configuration_error() {
    let s = setup(false, "");
    let out = s.agent(&["token", "--repo", REPO]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("GitHub App"), "{}", stderr(&out));
    assert!(s.gh.requests().is_empty());
}

#[test]
fn a_jwt_signed_with_another_key_is_refused_by_github() {
    let s = setup(true, "");
    // GitHub knows a different public key than the one the agent signs with.
    let other = Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .expect("openssl (Debian base system) makes a second key");
    assert!(other.status.success());
    s.gh.set_app(12345, 678, &String::from_utf8(other.stdout).unwrap());
    let out = s.agent(&s.status_args("pending", "x"));
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(s.gh.statuses().is_empty());
}

#[test]
fn head_prints_the_branch_head_commit() {
    let s = setup(false, "");
    s.gh.set_branch(REPO, "release/4.2", SHA);
    let out = s.agent(&["head", "--repo", REPO, "--branch", "release/4.2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SHA);
    let missing = s.agent(&["head", "--repo", REPO, "--branch", "nope"]);
    assert_eq!(missing.status.code(), Some(78));
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));
}

#[test]
fn ci_config_prints_the_qubes_version_quoted_or_plain() {
    let s = setup(true, "");
    let other = "1111111111111111111111111111111111111111";
    s.gh.add_file(
        REPO,
        SHA,
        ".github/workstation-ci.yml",
        b"# see sdci\nqubes: \"4.2\"\n",
    );
    s.gh.add_file(REPO, other, ".github/workstation-ci.yml", b"qubes: 4.1\n");
    for (sha, want) in [(SHA, "4.2"), (other, "4.1")] {
        let out = s.agent(&["ci-config", "--repo", REPO, "--sha", sha]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    }
    assert!(s
        .gh
        .minted()
        .iter()
        .all(|m| m.permissions.as_ref().unwrap()["contents"] == "read"));
}

#[test]
fn ci_config_exits_3_and_says_so_when_the_file_or_key_is_missing() {
    let s = setup(false, "");
    let out = s.agent(&["ci-config", "--repo", REPO, "--sha", SHA]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("has no .github/workstation-ci.yml"),
        "{}",
        stderr(&out)
    );
    s.gh.add_file(REPO, SHA, ".github/workstation-ci.yml", b"other: 1\n");
    let out = s.agent(&["ci-config", "--repo", REPO, "--sha", SHA]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("no top-level `qubes:` key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_status_is_retried_after_502s_and_posted_once() {
    let s = setup(false, FAST_RETRY);
    s.gh.fail_next(2, 502);
    s.post_queued_ok();
    let codes: Vec<u16> = s.gh.requests().iter().map(|r| r.status).collect();
    assert_eq!(codes, [502, 502, 201]);
    assert_eq!(s.gh.statuses().len(), 1);
}

#[test]
fn github_down_through_every_retry_exits_2() {
    let s = setup(false, FAST_RETRY);
    s.gh.fail_next(10, 503);
    let out = s.agent(&s.status_args("error", "VM died"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
    assert_eq!(s.gh.requests().len(), 4, "max_attempts = 4");
}

#[test]
fn an_outage_window_is_ridden_out_by_the_retries() {
    let s = setup(
        false,
        "[retry]\nmax_attempts = 30\ninitial_backoff_ms = 20\nmax_backoff_ms = 100\n",
    );
    s.gh.outage_for(Duration::from_millis(300), 503);
    s.post_queued_ok();
    let reqs = s.gh.requests();
    assert!(reqs.len() >= 2, "at least one 503 first");
    assert_eq!(reqs.last().unwrap().status, 201);
}

/// Posts a status that first meets `limit` (with fast retries), expects the agent to exit 0,
/// and returns the two requests GitHub saw.
fn post_through_rate_limit(limit: RateLimit) -> Vec<sdci_tests::github::RecordedRequest> {
    let s = setup(false, FAST_RETRY);
    s.gh.rate_limit_next(limit);
    s.post_queued_ok();
    let reqs = s.gh.requests();
    assert_eq!(reqs.len(), 2);
    reqs
}

fn reset_of(req: &sdci_tests::github::RecordedRequest) -> std::time::SystemTime {
    let secs: u64 = req
        .response_header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn a_primary_rate_limit_is_waited_out_until_its_reset() {
    let reqs = post_through_rate_limit(RateLimit::Primary {
        status: 403,
        reset_after: Duration::from_secs(1),
    });
    assert_eq!(reqs[0].status, 403);
    assert_eq!(reqs[0].response_header("x-ratelimit-remaining"), Some("0"));
    assert!(
        reqs[1].at >= reset_of(&reqs[0]),
        "retried before x-ratelimit-reset"
    );
    assert_eq!(reqs[1].status, 201);
}

#[test]
fn a_secondary_rate_limit_honours_retry_after() {
    let reqs = post_through_rate_limit(RateLimit::Secondary {
        status: 429,
        retry_after: Duration::from_secs(1),
    });
    assert_eq!(reqs[0].response_header("retry-after"), Some("1"));
    assert!(reqs[1].at.duration_since(reqs[0].at).unwrap() >= Duration::from_secs(1));
}

#[test]
fn a_rate_limit_longer_than_the_maximum_wait_fails_with_exit_2() {
    let s = setup(false, FAST_RETRY);
    s.gh.rate_limit_next(RateLimit::Primary {
        status: 429,
        reset_after: Duration::from_secs(3600),
    });
    let out = s.agent(&s.status_args("pending", "queued"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("rate limit"), "{}", stderr(&out));
    assert_eq!(s.gh.requests().len(), 1, "no retry before the reset");
}

#[test]
fn a_description_over_140_characters_is_cut_before_posting() {
    let s = setup(false, "");
    let long = "step \"make-test\" failed: ".to_owned() + &"x".repeat(300);
    let out = s.agent(&s.status_args("failure", &long));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d = s.gh.statuses()[0].description.clone().unwrap();
    assert_eq!(d.chars().count(), 140);
    assert!(d.starts_with("step \"make-test\" failed: ") && d.ends_with('…'));
}

#[test]
fn bad_arguments_are_usage_errors_and_send_nothing() {
    let s = setup(false, "");
    for args in [
        s.status_args("running", "x"),
        vec![
            "status",
            "--repo",
            "not-a-repo",
            "--sha",
            SHA,
            "--state",
            "pending",
            "--description",
            "x",
        ],
        vec![
            "status",
            "--repo",
            REPO,
            "--sha",
            "abc",
            "--state",
            "pending",
            "--description",
            "x",
        ],
        vec!["status", "--repo", REPO],
    ] {
        let out = s.agent(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
    }
    assert!(s.gh.requests().is_empty());
}

#[test]
fn environment_variables_override_the_api_and_the_token_file() {
    let s = setup(true, "");
    let token = s.dir.path().join("pat");
    std::fs::write(&token, PAT).unwrap();
    s.gh.add_pat(PAT);
    // The file names an unreachable API; the environment wins.
    let cfg = s.dir.path().join("env.toml");
    std::fs::write(&cfg, "api_url = \"http://127.0.0.1:9\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sdci-agent"))
        .args([
            "status",
            "--repo",
            REPO,
            "--sha",
            SHA,
            "--state",
            "pending",
            "--description",
            "q",
        ])
        .env("SDCI_AGENT_CONFIG", &cfg)
        .env("SDCI_GITHUB_API", s.gh.url())
        .env("SDCI_GITHUB_TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(s.gh.minted().is_empty(), "token mode, no App token");
    assert_eq!(s.gh.statuses().len(), 1);
}

/// The stand-in itself must hold the agent to GitHub's schema; these raw requests show it does.
#[tokio::test]
async fn the_stand_in_refuses_what_github_refuses() {
    let s = setup(false, "");
    let http = reqwest::Client::new();
    let url = format!("{}/repos/{REPO}/statuses/{SHA}", s.gh.url());
    let post = |body: serde_json::Value| {
        http.post(&url)
            .header("user-agent", "test")
            .bearer_auth(PAT)
            .json(&body)
            .send()
    };
    let code = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        code(post(serde_json::json!({"state": "running"})).await.unwrap()),
        422
    );
    assert_eq!(
        code(post(serde_json::json!({"description": "x"})).await.unwrap()),
        422
    );
    assert_eq!(
        code(
            post(serde_json::json!({"state": "success", "description": "x".repeat(141)}))
                .await
                .unwrap()
        ),
        422
    );
    assert_eq!(
        code(
            post(serde_json::json!({"state": "success", "stat": 1}))
                .await
                .unwrap()
        ),
        422
    );
    assert_eq!(
        code(
            post(serde_json::json!({"state": "success", "description": null}))
                .await
                .unwrap()
        ),
        201
    );
    let no_ua = http
        .post(&url)
        .bearer_auth(PAT)
        .json(&serde_json::json!({"state": "success"}));
    // reqwest adds no User-Agent unless asked.
    assert_eq!(code(no_ua.send().await.unwrap()), 403);
    let anon = http
        .post(&url)
        .header("user-agent", "t")
        .json(&serde_json::json!({"state": "success"}));
    assert_eq!(code(anon.send().await.unwrap()), 401);
    assert_eq!(s.gh.statuses().len(), 1);
}

// ---- check-run, permission, file (contracts §5, issue 17) ----

/// The check-run requests GitHub saw (the token mints of App mode left out).
fn check_run_requests(s: &Setup) -> Vec<sdci_tests::github::RecordedRequest> {
    s.gh.requests()
        .into_iter()
        .filter(|r| r.path.contains("/check-runs"))
        .collect()
}

fn printed_id(out: &Output) -> u64 {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "one field: {v}");
    v["id"].as_u64().unwrap()
}

#[test]
fn check_run_creates_a_queued_run_with_the_documented_body_and_prints_its_id() {
    let s = setup(true, "");
    let out = s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &format!("--sha={SHA}"),
        "--name=sdci / Qubes 4.2",
        "--status=queued",
        "--details-url=http://127.0.0.1:8470/jobs/j1",
        "--external-id=j1",
    ]);
    let id = printed_id(&out);
    let reqs = check_run_requests(&s);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", format!("/repos/{REPO}/check-runs").as_str())
    );
    assert_eq!(
        reqs[0].json(),
        serde_json::json!({"name": "sdci / Qubes 4.2", "head_sha": SHA, "status": "queued",
            "details_url": "http://127.0.0.1:8470/jobs/j1", "external_id": "j1"})
    );
    let runs = s.gh.check_runs(REPO, SHA);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, id);
    assert_eq!(runs[0].status, "queued");
    assert_eq!(runs[0].external_id.as_deref(), Some("j1"));
    // The gateway's own token may write checks (and nothing the VM's token may).
    let perms = s.gh.minted()[0].permissions.clone().unwrap();
    assert_eq!(perms["checks"], "write");
}

#[test]
fn check_run_updates_take_a_run_through_in_progress_to_completed_with_output_and_actions() {
    let s = setup(true, "");
    let id = printed_id(&s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &format!("--sha={SHA}"),
        "--name=sdci / Qubes 4.2",
    ]));
    let id_arg = format!("--id={id}");
    let out = s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &id_arg,
        "--status=in_progress",
        "--started-at=2026-12-01T10:37:00Z",
    ]);
    assert_eq!(printed_id(&out), id);
    // Values that begin with `-` are data in the `--flag=value` form.
    let summary = "- step `make test` failed after 3 min\n\n```\n--x\n```\n";
    let out = s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &id_arg,
        "--status=completed",
        "--conclusion=action_required",
        "--completed-at=2026-12-01T10:47:00Z",
        "--title=-VM lost: the attempt ended",
        &format!("--summary={summary}"),
        "--text=--full log on the job page",
        "--action=rerun:Re-run:Run this job again",
    ]);
    assert_eq!(printed_id(&out), id);
    let out = s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &id_arg,
        "--no-actions",
    ]);
    assert_eq!(printed_id(&out), id);

    let reqs = check_run_requests(&s);
    let path = format!("/repos/{REPO}/check-runs/{id}");
    assert!(reqs[1..]
        .iter()
        .all(|r| r.method == "PATCH" && r.path == path));
    assert_eq!(
        reqs[2].json(),
        serde_json::json!({"status": "completed", "conclusion": "action_required",
            "completed_at": "2026-12-01T10:47:00Z",
            "output": {"title": "-VM lost: the attempt ended", "summary": summary,
                       "text": "--full log on the job page"},
            "actions": [{"label": "Re-run", "description": "Run this job again",
                         "identifier": "rerun"}]})
    );
    assert_eq!(reqs[3].json(), serde_json::json!({"actions": []}));

    let history = s.gh.check_run_history(id);
    let kinds: Vec<_> = history.iter().map(|c| c.kind).collect();
    use sdci_tests::github::ChangeKind::{Created, Updated};
    assert_eq!(kinds, [Created, Updated, Updated, Updated]);
    let statuses: Vec<&str> = history.iter().map(|c| c.after.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["queued", "in_progress", "completed", "completed"]
    );
    let done = &history[2].after;
    assert_eq!(done.conclusion.as_deref(), Some("action_required"));
    assert_eq!(done.started_at.as_deref(), Some("2026-12-01T10:37:00Z"));
    assert_eq!(done.actions.len(), 1);
    assert_eq!(done.actions[0].identifier, "rerun");
    assert_eq!(
        done.output.as_ref().and_then(|o| o.summary.as_deref()),
        Some(summary)
    );
    assert!(
        history[3].after.actions.is_empty(),
        "--no-actions removed the button"
    );
}

#[test]
fn check_run_arguments_beyond_github_s_limits_are_exit_64_without_a_request() {
    let s = setup(true, "");
    let repo = format!("--repo={REPO}");
    let sha = format!("--sha={SHA}");
    let name = "--name=sdci / Qubes 4.2".to_owned();
    let long = |flag: &str, n: usize| format!("--{flag}={}", "x".repeat(n));
    let cases: Vec<Vec<String>> = vec![
        vec![repo.clone(), sha.clone(), long("name", 256)],
        vec![repo.clone(), sha.clone()],
        vec![repo.clone(), "--id=1".into(), sha.clone()],
        vec![repo.clone(), "--id=x".into()],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--status=done".into(),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--status=completed".into(),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--conclusion=success".into(),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--status=completed".into(),
            "--conclusion=stale".into(),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            long("title", 256),
            "--summary=s".into(),
        ],
        vec![repo.clone(), sha.clone(), name.clone(), "--title=t".into()],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--title=t".into(),
            long("summary", 65_536),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--title=t".into(),
            "--summary=s".into(),
            long("text", 65_536),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--action=a:b:c".into(),
            "--action=a:b:c".into(),
            "--action=a:b:c".into(),
            "--action=a:b:c".into(),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            format!("--action=rerun:{}:d", "L".repeat(21)),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            format!("--action=rerun:L:{}", "d".repeat(41)),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            format!("--action={}:L:d", "i".repeat(21)),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--action=Re-run:L:d".into(),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--action=a:b:c".into(),
            "--no-actions".into(),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--details-url=ftp://x/y".into(),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            long("external-id", 256),
        ],
        vec![
            repo.clone(),
            sha.clone(),
            name.clone(),
            "--started-at=2026-12-01T10:37:00+01:00".into(),
        ],
        vec!["--repo=not-a-repo".into(), sha.clone(), name.clone()],
    ];
    for case in &cases {
        let mut args = vec!["check-run"];
        args.extend(case.iter().map(String::as_str));
        let out = s.agent(&args);
        assert_eq!(out.status.code(), Some(64), "{case:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    assert!(s.gh.requests().is_empty(), "no request for a refused call");
}

#[test]
fn check_run_at_the_limits_is_accepted_by_the_agent_and_by_github() {
    let s = setup(true, "");
    let out = s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &format!("--sha={SHA}"),
        &format!("--name={}", "n".repeat(255)),
        "--status=completed",
        "--conclusion=success",
        &format!("--title={}", "t".repeat(255)),
        &format!("--summary={}", "s".repeat(65_535)),
        &format!("--text={}", "x".repeat(65_535)),
        &format!(
            "--action={}:{}:{}",
            "i".repeat(20),
            "L".repeat(20),
            "d".repeat(40)
        ),
        "--action=rerun:Re-run:again",
        "--action=hold:Hold VM:keep the VM for debugging",
        &format!("--external-id={}", "e".repeat(255)),
    ]);
    let id = printed_id(&out);
    let run = &s.gh.check_run_history(id)[0].after;
    assert_eq!(run.conclusion.as_deref(), Some("success"));
    assert_eq!(run.actions.len(), 3);
}

#[test]
fn check_run_in_token_mode_is_a_configuration_error_without_a_request() {
    let s = setup(false, "");
    let out = s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &format!("--sha={SHA}"),
        "--name=sdci / Qubes 4.2",
    ]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("GitHub App"), "{}", stderr(&out));
    assert!(s.gh.requests().is_empty());
}

#[test]
fn check_run_rides_out_502s_with_growing_backoff_and_creates_one_run() {
    let s = setup(
        true,
        "[retry]\nmax_attempts = 4\ninitial_backoff_ms = 200\nmax_backoff_ms = 2000\n",
    );
    s.gh.fail_next(2, 502);
    let id = printed_id(&s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &format!("--sha={SHA}"),
        "--name=sdci / Qubes 4.2",
    ]));
    let reqs = s.gh.requests();
    let seen: Vec<(u16, &str)> = reqs.iter().map(|r| (r.status, r.path.as_str())).collect();
    // Faults come before routing, so the two 502s meet the token mint, the call's first
    // request; it is retried like every request, then the check run is created once.
    let (mint, create) = (
        "/app/installations/678/access_tokens",
        format!("/repos/{REPO}/check-runs"),
    );
    assert_eq!(
        seen,
        [
            (502, mint),
            (502, mint),
            (201, mint),
            (201, create.as_str())
        ]
    );
    // Backoff 200 ms then 400 ms, each ±25 %.
    let gap = |i: usize| reqs[i + 1].at.duration_since(reqs[i].at).unwrap();
    assert!(
        gap(0) >= Duration::from_millis(150),
        "first pause {:?}",
        gap(0)
    );
    assert!(
        gap(1) >= Duration::from_millis(300),
        "second pause {:?}",
        gap(1)
    );
    let runs = s.gh.check_runs(REPO, SHA);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, id);
}

#[test]
fn permission_prints_the_role_and_a_stranger_is_none() {
    let s = setup(true, "");
    for (user, role) in [
        ("alice", "admin"),
        ("bob", "maintain"),
        ("carol", "write"),
        ("dave", "triage"),
        ("erin", "read"),
    ] {
        s.gh.set_permission(REPO, user, role);
        let out = s.agent(&[
            "permission",
            &format!("--repo={REPO}"),
            &format!("--user={user}"),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{role}\n"));
    }
    let out = s.agent(&["permission", &format!("--repo={REPO}"), "--user=mallory"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "none\n");
    let last = s.gh.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str(), last.status),
        (
            "GET",
            format!("/repos/{REPO}/collaborators/mallory/permission").as_str(),
            404
        )
    );
    let perms = s.gh.minted()[0].permissions.clone().unwrap();
    assert_eq!(perms["metadata"], "read");
}

#[test]
fn permission_of_a_malformed_login_is_exit_64_without_a_request() {
    let s = setup(false, "");
    for bad in ["--user=a b", "--user=../x", "--user=-a", "--user="] {
        let out = s.agent(&["permission", &format!("--repo={REPO}"), bad]);
        assert_eq!(out.status.code(), Some(64), "{bad}: {}", stderr(&out));
    }
    assert!(s.gh.requests().is_empty());
}

#[test]
fn a_rate_limit_longer_than_the_bound_fails_permission_with_exit_2_at_once() {
    let s = setup(false, FAST_RETRY);
    s.gh.set_permission(REPO, "alice", "write");
    s.gh.rate_limit_next(RateLimit::Primary {
        status: 403,
        reset_after: Duration::from_secs(3600),
    });
    let started = std::time::Instant::now();
    let out = s.agent(&["permission", &format!("--repo={REPO}"), "--user=alice"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).contains("max_rate_limit_wait_secs"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(s.gh.requests().len(), 1, "no retry before the reset");
}

#[test]
fn file_prints_the_raw_bytes_of_one_file_at_the_commit() {
    let s = setup(true, "");
    let bytes: Vec<u8> = (0..=255u8).chain(*b"\nno newline at the end").collect();
    s.gh.add_file(REPO, SHA, ".sdci/steps.bin", &bytes);
    let out = s.agent(&[
        "file",
        &format!("--repo={REPO}"),
        &format!("--sha={SHA}"),
        "--path=.sdci/steps.bin",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, bytes, "exactly the file, nothing added");
    let last = s.gh.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        (
            "GET",
            format!("/repos/{REPO}/contents/.sdci/steps.bin").as_str()
        )
    );
    assert_eq!(last.query.as_deref(), Some(format!("ref={SHA}").as_str()));
}

#[test]
fn file_that_is_absent_is_exit_3_and_one_too_large_is_exit_78_unprinted() {
    let s = setup(false, "");
    let args = |path: &str, extra: &[&str]| -> Output {
        let mut a = vec![
            "file".to_owned(),
            format!("--repo={REPO}"),
            format!("--sha={SHA}"),
            format!("--path={path}"),
        ];
        a.extend(extra.iter().map(|e| (*e).to_owned()));
        s.agent(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = args("nope.txt", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("has no nope.txt"), "{}", stderr(&out));

    let big = vec![b'x'; 65_537];
    s.gh.add_file(REPO, SHA, "big.log", &big);
    let out = args("big.log", &[]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "nothing of a file too large is printed"
    );
    assert!(stderr(&out).contains("65537 bytes"), "{}", stderr(&out));
    let out = args("big.log", &["--max-bytes=65537"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, big);
    s.gh.add_file(REPO, SHA, "exact", &big[..65_536]);
    assert_eq!(args("exact", &[]).status.code(), Some(0));

    let before = s.gh.requests().len();
    for (path, extra) in [
        ("a/../b", &[][..]),
        ("/etc/passwd", &[]),
        ("x", &["--max-bytes=lots"]),
    ] {
        let out = args(path, extra);
        assert_eq!(out.status.code(), Some(64), "{path}: {}", stderr(&out));
    }
    assert_eq!(s.gh.requests().len(), before, "no request for bad input");
}

#[test]
fn help_lists_every_gateway_command_of_the_contract() {
    let out = Command::new(env!("CARGO_BIN_EXE_sdci-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "status",
        "token",
        "revoke",
        "head",
        "ci-config",
        "check-run",
        "permission",
        "file",
        "react",
        "pull-head",
        "run",
    ] {
        assert!(text.contains(sub), "--help lacks {sub}:\n{text}");
    }
}

/// An agent config in token mode pointing at `api`, with `retry` as its `[retry]` table.
fn token_config_for(dir: &Path, api: &str, retry: &str) -> std::path::PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, format!("{PAT}\n")).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "api_url = {api:?}\ntoken_file = {:?}\n{retry}",
            token.display().to_string()
        ),
    )
    .unwrap();
    config
}

#[test]
fn an_answer_that_never_comes_is_cut_at_the_request_timeout_and_retried_then_exit_2() {
    // A server that accepts connections and never answers them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            keep.lock().unwrap().push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = token_config_for(
        dir.path(),
        &api,
        "[retry]\nmax_attempts = 2\ninitial_backoff_ms = 10\nmax_backoff_ms = 10\nrequest_timeout_secs = 1\n",
    );
    let started = std::time::Instant::now();
    let out = agent(&config, &["head", "--repo", REPO, "--branch", "main"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no whole answer within 1 s"),
        "{}",
        stderr(&out)
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "two attempts of 1 s each: {took:?}"
    );
    assert_eq!(
        accepted.lock().unwrap().len(),
        2,
        "one connection per attempt"
    );
}

#[test]
fn a_closed_port_is_a_network_error_retried_up_to_max_attempts_then_exit_2() {
    // Bind and drop: nothing listens on that loopback port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = token_config_for(
        dir.path(),
        &format!("http://127.0.0.1:{port}"),
        "[retry]\nmax_attempts = 3\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\n",
    );
    let out = agent(&config, &["permission", "--repo", REPO, "--user", "alice"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("after 3 attempts") && err.contains("network error"),
        "{err}"
    );
    assert!(!err.contains(PAT), "no token in the logs");
}

/// A loopback HTTP server that answers every request with one fixed JSON answer and records
/// each request's head (request line and headers): for answers the stand-in never gives (a
/// GitHub Enterprise base path, a directory, a custom role, a wrong shape).
struct FixedAnswer {
    api: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FixedAnswer {
    fn start(base_path: &str, status: u16, body: serde_json::Value) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api = format!("http://{}{base_path}", listener.local_addr().unwrap());
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let body = body.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                seen.lock().unwrap().push(head);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        Self { api, heads }
    }

    fn agent(&self, args: &[&str]) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let config = token_config_for(
            dir.path(),
            &self.api,
            "[retry]\nmax_attempts = 2\ninitial_backoff_ms = 10\nmax_backoff_ms = 10\n",
        );
        agent(&config, args)
    }

    fn request_lines(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_owned())
            .collect()
    }
}

#[test]
fn a_github_enterprise_api_base_keeps_its_path() {
    let base = "http://127.0.0.1:1/api/v3/repos/o/r/commits/x";
    let gh = FixedAnswer::start(
        "/api/v3",
        200,
        serde_json::json!({"name": "main", "protected": false,
            "commit": {"sha": SHA, "url": base}}),
    );
    let out = gh.agent(&["head", "--repo=o/r", "--branch=main"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SHA);
    assert_eq!(
        gh.request_lines(),
        ["GET /api/v3/repos/o/r/branches/main HTTP/1.1"]
    );
    let head = gh.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.contains("authorization: bearer "), "{head}");
    assert!(head.contains("x-github-api-version: 2022-11-28"), "{head}");
}

#[test]
fn an_answer_of_the_wrong_shape_is_exit_2_and_not_retried() {
    let gh = FixedAnswer::start("", 200, serde_json::json!({"name": "main"}));
    let out = gh.agent(&["head", "--repo=o/r", "--branch=main"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unexpected answer from GitHub"),
        "{}",
        stderr(&out)
    );
    assert_eq!(gh.request_lines().len(), 1);
}

#[test]
fn file_of_a_directory_is_exit_3() {
    let gh = FixedAnswer::start("", 200, serde_json::json!([]));
    let out = gh.agent(&[
        "file",
        "--repo=o/r",
        &format!("--sha={SHA}"),
        "--path=.github",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn permission_with_a_custom_role_is_its_legacy_permission() {
    let gh = FixedAnswer::start(
        "",
        200,
        serde_json::json!({"permission": "write", "role_name": "release-manager", "user": null}),
    );
    let out = gh.agent(&["permission", "--repo=o/r", "--user=alice"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "write\n");
    assert_eq!(
        gh.request_lines(),
        ["GET /repos/o/r/collaborators/alice/permission HTTP/1.1"]
    );
}

#[test]
fn without_any_ca_certificate_a_call_is_exit_78_naming_the_package() {
    let s = setup(false, "");
    let empty = tempfile::tempdir().unwrap();
    // rustls-native-certs reads these instead of the system's store.
    let out = Command::new(env!("CARGO_BIN_EXE_sdci-agent"))
        .arg("--config")
        .arg(s.config())
        .args(["head", &format!("--repo={REPO}"), "--branch=main"])
        .env("SSL_CERT_FILE", empty.path().join("none.pem"))
        .env("SSL_CERT_DIR", empty.path())
        .env_remove("SDCI_GITHUB_API")
        .env_remove("SDCI_GITHUB_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("ca-certificates"), "{}", stderr(&out));
    assert!(s.gh.requests().is_empty(), "nothing was sent");
}

// ---- annotations and reactions (contracts §5, issues 19 and 20) ----

fn annotation(path: &str, line: u32, level: &str, message: &str) -> String {
    let a = serde_json::json!({"path": path, "start_line": line, "end_line": line,
        "annotation_level": level, "title": "tests.test_vms::test_x failed", "message": message});
    format!("--annotation={a}")
}

#[test]
fn check_run_annotations_reach_github_in_the_output_and_add_up_across_updates() {
    let s = setup(true, "");
    let id = printed_id(&s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        &format!("--sha={SHA}"),
        "--name=sdci / Qubes 4.2",
    ]));
    let first: Vec<String> = (1..=50)
        .map(|i| annotation("tests/test_vms.py", i, "failure", "assert: a: b"))
        .collect();
    let mut args = vec![
        "check-run".to_owned(),
        format!("--repo={REPO}"),
        format!("--id={id}"),
        "--status=completed".into(),
        "--conclusion=failure".into(),
        "--title=Failed: step make-test".into(),
        "--summary=1 failed".into(),
    ];
    args.extend(first);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(printed_id(&s.agent(&argv)), id);
    // The rest in a further update with the same output.
    let more = annotation("tests/test_proxy.py", 7, "warning", "second batch");
    assert_eq!(
        printed_id(&s.agent(&[
            "check-run",
            &format!("--repo={REPO}"),
            &format!("--id={id}"),
            "--title=Failed: step make-test",
            "--summary=1 failed",
            &more,
        ])),
        id
    );
    let reqs = check_run_requests(&s);
    let sent = reqs[1].json()["output"]["annotations"].clone();
    assert_eq!(sent.as_array().map(Vec::len), Some(50));
    assert_eq!(
        sent[0],
        serde_json::json!({"path": "tests/test_vms.py", "start_line": 1, "end_line": 1,
            "annotation_level": "failure", "title": "tests.test_vms::test_x failed",
            "message": "assert: a: b"})
    );
    assert_eq!(reqs[1].response_json()["output"]["annotations_count"], 50);
    let run = &s.gh.check_runs(REPO, SHA)[0];
    assert_eq!(run.annotations.len(), 51);
    assert_eq!(
        run.status, "completed",
        "an output-only update keeps the conclusion"
    );
    let last = &run.annotations[50];
    assert_eq!(
        (
            last.path.as_str(),
            last.start_line,
            last.annotation_level.as_str()
        ),
        ("tests/test_proxy.py", 7, "warning")
    );
    assert_eq!(reqs[2].response_json()["output"]["annotations_count"], 51);
}

#[test]
fn a_51st_annotation_or_a_bad_one_is_exit_64_without_a_request() {
    let s = setup(true, "");
    let base = [
        "check-run".to_owned(),
        format!("--repo={REPO}"),
        "--id=1".to_owned(),
        "--title=t".to_owned(),
        "--summary=s".to_owned(),
    ];
    let fifty_one: Vec<String> = (1..=51)
        .map(|i| annotation("a.py", i, "failure", "m"))
        .collect();
    let cases: Vec<Vec<String>> = vec![
        fifty_one,
        vec![annotation("a.py", 1, "error", "m")],
        vec![annotation("../etc/passwd", 1, "failure", "m")],
        vec![annotation("/abs.py", 1, "failure", "m")],
        vec![annotation("a.py", 0, "failure", "m")],
        vec![annotation("a.py", 1, "failure", &"m".repeat(65_536))],
        vec!["--annotation=a.py:1:1:failure:t:m".into()],
    ];
    for extra in cases {
        let mut args = base.to_vec();
        args.extend(extra);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.agent(&argv);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{:?}…: {}",
            args.last().map(|a| a.chars().take(60).collect::<String>()),
            stderr(&out)
        );
    }
    // Annotations without an output are refused too.
    let out = s.agent(&[
        "check-run",
        &format!("--repo={REPO}"),
        "--id=1",
        &annotation("a.py", 1, "failure", "m"),
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(s.gh.requests().is_empty(), "no request for bad input");
}

#[test]
fn react_puts_a_reaction_on_the_comment_with_a_token_narrowed_to_issues_write() {
    let s = setup(true, "");
    let args = [
        "react",
        &format!("--repo={REPO}"),
        "--comment-id=9001",
        "--content=+1",
    ];
    let out = s.agent(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "react prints nothing");
    let reactions = s.gh.reactions();
    assert_eq!(reactions.len(), 1);
    assert_eq!(
        (
            reactions[0].repo.as_str(),
            reactions[0].comment_id,
            reactions[0].content.as_str(),
            reactions[0].user.as_str()
        ),
        (REPO, 9001, "+1", "sdci[bot]")
    );
    let minted = s.gh.minted();
    let perms = minted[0].permissions.clone().unwrap();
    assert_eq!(perms.get("issues").map(String::as_str), Some("write"));
    assert!(
        !perms.contains_key("checks") && !perms.contains_key("statuses"),
        "the reaction's token writes nothing else: {perms:?}"
    );
    // The same reaction again: GitHub answers 200 with the existing one; still success.
    let out = s.agent(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(s.gh.reactions().len(), 1);
    let posts: Vec<u16> =
        s.gh.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/reactions"))
            .map(|r| r.status)
            .collect();
    assert_eq!(posts, [201, 200]);
    // `-1` is data, not an option.
    let out = s.agent(&[
        "react",
        &format!("--repo={REPO}"),
        "--comment-id=9001",
        "--content=-1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(s.gh.reactions()[1].content, "-1");
}

#[test]
fn react_with_a_personal_access_token_and_bad_arguments_without_a_request() {
    let s = setup(false, "");
    let out = s.agent(&[
        "react",
        &format!("--repo={REPO}"),
        "--comment-id=5",
        "--content=confused",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(s.gh.reactions()[0].content, "confused");
    let before = s.gh.requests().len();
    for (id, content) in [
        ("5", "thumbsup"),
        ("5", ""),
        ("0", "+1"),
        ("x", "+1"),
        ("-5", "+1"),
    ] {
        let out = s.agent(&[
            "react",
            &format!("--repo={REPO}"),
            &format!("--comment-id={id}"),
            &format!("--content={content}"),
        ]);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{id} {content}: {}",
            stderr(&out)
        );
    }
    assert_eq!(s.gh.requests().len(), before, "no request for bad input");
}

fn pull_head(s: &Setup, number: &str) -> Output {
    s.agent(&[
        "pull-head",
        &format!("--repo={REPO}"),
        &format!("--number={number}"),
    ])
}

#[test]
fn pull_head_prints_the_head_github_has_now_with_a_token_narrowed_to_reading_pull_requests() {
    let s = setup(true, "");
    let fork = "someone/securedrop-workstation";
    s.gh.set_pull(
        REPO,
        7,
        sdci_tests::github::PullRequest::open(fork, "fix-x", SHA, "someone"),
    );
    let out = pull_head(&s, "7");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"sha": SHA, "repo": fork, "ref": "fix-x", "state": "open",
                           "user": "someone", "title": "A change"})
    );
    let last = s.gh.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str(), last.status),
        ("GET", format!("/repos/{REPO}/pulls/7").as_str(), 200)
    );
    let minted = s.gh.minted();
    assert_eq!(minted.len(), 1);
    let perms = minted[0].permissions.clone().unwrap();
    assert_eq!(
        perms.into_iter().collect::<Vec<_>>(),
        [
            ("metadata".to_owned(), "read".to_owned()),
            ("pull_requests".to_owned(), "read".to_owned())
        ],
        "its own token, nothing that writes"
    );
    assert_eq!(s.gh.violations(), Vec::<String>::new());

    // A push to the pull request and then its close: the answer follows GitHub.
    let newer = "89abcdef0123456789abcdef0123456789abcdef";
    let mut pr = sdci_tests::github::PullRequest::open(REPO, "feature", newer, "someone");
    pr.state = "closed".into();
    s.gh.set_pull(REPO, 7, pr);
    let out = pull_head(&s, "7");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["sha"], &v["repo"], &v["state"]),
        (
            &serde_json::json!(newer),
            &serde_json::json!(REPO),
            &serde_json::json!("closed")
        )
    );
}

#[test]
fn pull_head_of_no_such_pull_request_is_exit_3_a_bad_number_exit_64_and_github_down_exit_2() {
    let s = setup(false, FAST_RETRY);
    let out = pull_head(&s, "8");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("no pull request #8"),
        "{}",
        stderr(&out)
    );

    let before = s.gh.requests().len();
    for bad in ["0", "-1", "seven", ""] {
        let out = pull_head(&s, bad);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {}", stderr(&out));
    }
    assert_eq!(s.gh.requests().len(), before, "no request for bad input");

    s.gh.set_pull(
        REPO,
        8,
        sdci_tests::github::PullRequest::open(REPO, "feature", SHA, "alice"),
    );
    s.gh.fail_next(10, 502);
    let out = pull_head(&s, "8");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}
