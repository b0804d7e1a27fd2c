//! Git over the stand-in with the real git client: a shallow fetch of one (unadvertised) sha
//! over smart HTTP, the token check, a push refused, and dumb HTTP's refusal of a shallow fetch.

use super::GitHub;
use base64::Engine;
use std::path::Path;
use std::process::{Command, Output};

const REPO: &str = "freedomofpress/securedrop-workstation";
const TOKEN: &str = "ghs_git_reader";

fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository with three commits on `main`; returns the first commit's sha (not a ref tip).
fn repo(dir: &Path) -> String {
    ok(git(dir, &["init", "-q", "-b", "main"]));
    for i in 0..3 {
        std::fs::write(dir.join("file"), format!("{i}\n")).unwrap();
        ok(git(dir, &["add", "file"]));
        ok(git(dir, &["commit", "-q", "-m", &format!("c{i}")]));
    }
    ok(git(dir, &["rev-parse", "HEAD~2"]))
}

fn auth(token: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    format!("http.extraHeader=Authorization: Basic {b}")
}

/// `git init` + the agent's shallow fetch of `sha` (protocol v2, depth 1).
fn shallow_fetch(dir: &Path, url: &str, sha: &str, token: &str) -> Output {
    ok(git(dir, &["init", "-q"]));
    git(
        dir,
        &[
            "-c",
            &auth(token),
            "-c",
            "protocol.version=2",
            "fetch",
            "-q",
            "--no-tags",
            "--depth",
            "1",
            url,
            sha,
        ],
    )
}

#[test]
fn a_shallow_fetch_of_one_unadvertised_sha_is_served_over_smart_http() {
    let src = tempfile::tempdir().unwrap();
    let old = repo(src.path());
    let gh = GitHub::start();
    gh.add_installation_token(TOKEN, &["securedrop-workstation"], &[("contents", "read")]);
    gh.serve_git(REPO, src.path());

    let dst = tempfile::tempdir().unwrap();
    ok(shallow_fetch(dst.path(), &gh.clone_url(REPO), &old, TOKEN));
    assert_eq!(ok(git(dst.path(), &["cat-file", "-t", &old])), "commit");
    assert_eq!(
        ok(git(dst.path(), &["rev-list", "--count", "FETCH_HEAD"])),
        "1",
        "depth 1"
    );

    let fetches = gh.git_fetches();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!(fetches[0].request.wants, [old.as_str()]);
    assert_eq!(fetches[0].request.deepen, Some(1));
    assert!(fetches[0].bytes_sent > 0);
    assert!(gh.git_bytes_sent() >= fetches[0].bytes_sent);
    let reqs = gh.requests();
    assert!(reqs.iter().any(|r| r.path.ends_with("/info/refs")
        && r.header("git-protocol") == Some("version=2")
        && r.status == 200));
}

#[test]
fn git_without_a_readable_token_is_asked_for_credentials_and_a_push_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let old = repo(src.path());
    let gh = GitHub::start();
    gh.add_installation_token(TOKEN, &["securedrop-workstation"], &[("contents", "read")]);
    gh.serve_git(REPO, src.path());
    let dst = tempfile::tempdir().unwrap();
    let out = shallow_fetch(dst.path(), &gh.clone_url(REPO), &old, "ghs_unknown");
    assert!(!out.status.success());
    assert!(gh.git_fetches().is_empty());
    let statuses: Vec<u16> = gh.requests().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&401), "{statuses:?}");

    let push = git(
        src.path(),
        &[
            "-c",
            &auth(TOKEN),
            "push",
            &gh.clone_url(REPO),
            "HEAD:refs/heads/other",
        ],
    );
    assert!(!push.status.success(), "a push must be refused");
    assert!(gh
        .requests()
        .iter()
        .any(|r| r.status == 403 && r.query.as_deref() == Some("service=git-receive-pack")));
}

#[test]
fn dumb_http_refuses_a_shallow_fetch_so_a_client_must_fall_back() {
    let src = tempfile::tempdir().unwrap();
    let old = repo(src.path());
    let gh = GitHub::start();
    gh.add_installation_token(TOKEN, &["securedrop-workstation"], &[("contents", "read")]);
    gh.serve_git_dumb(REPO, src.path());
    let dst = tempfile::tempdir().unwrap();
    let out = shallow_fetch(dst.path(), &gh.clone_url(REPO), &old, TOKEN);
    assert!(!out.status.success(), "dumb HTTP cannot fetch shallow");
    // The full fetch over dumb HTTP works.
    let full = git(
        dst.path(),
        &[
            "-c",
            &auth(TOKEN),
            "fetch",
            "-q",
            &gh.clone_url(REPO),
            "+refs/heads/*:refs/remotes/o/*",
        ],
    );
    ok(full);
    assert_eq!(ok(git(dst.path(), &["cat-file", "-t", &old])), "commit");
}
