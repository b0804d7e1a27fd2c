//! No status can be stuck (issue 14, item 8): the status outbox through the gateway. A result
//! reason that looks like an option (`--x`) reaches GitHub as the description, through the real
//! `sdci-agent` and the GitHub stand-in; a status the gateway refuses for good is retried a
//! bounded number of times, then posted with the host's own description, and refused again it
//! is given up with an alert — never retried forever in silence.
//!
//! Needs the binaries built first (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::gateway::GithubGateway;
use sdci_host::orchestration::statuses::{drain_statuses, fallback_description};
use sdci_host::server::Parts;
use sdci_host::store::{NewJob, PostState};
use sdci_protocol::StatusState;
use std::path::Path;
use std::time::Duration;

/// A job of commit `sha(n)` that ended `state`, its last attempt having relayed `reason`.
fn ended_job(host: &TestHost, n: u32, state: JobState, reason: &str) -> String {
    let store = &host.hub.store;
    store.register_vms("4.2", &["vm-a".into()]).unwrap();
    let id = store
        .insert_job(&NewJob {
            repo: REPO.parse().unwrap(),
            sha: sha(n).parse().unwrap(),
            reason: sdci_protocol::Reason::Push,
            branch: Some("main".into()),
            supersede_key: None,
            clone_url: "https://example/o/r.git".into(),
            version: Some("4.2".into()),
            snapshot: None,
            update_first: false,
            commit_author: None,
            commit_subject: None,
        })
        .unwrap();
    let claim = store
        .claim("4.2", &["vm-a".into()], 1, "secret", i64::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(claim.job.id.as_str(), id.as_str());
    store
        .record_result(&id, claim.attempt, state.status_state().as_str(), reason)
        .unwrap();
    store.finish(&id, state, "the host's note", true).unwrap();
    id.to_string()
}

fn gateway(path: &Path, config: Option<&Path>) -> GithubGateway {
    GithubGateway {
        path: path.to_owned(),
        config: config.map(Path::to_owned),
        timeout: Duration::from_secs(30),
        context: "sd-ci-runner".into(),
    }
}

#[tokio::test]
async fn a_reason_that_looks_like_an_option_is_posted_as_the_description_through_the_real_agent() {
    let agent = sdci_tests::binary("sdci-agent");
    assert!(agent.exists(), "run cargo build --workspace --bins");
    let dir = tempfile::tempdir().unwrap();
    let gh = sdci_tests::github::GitHub::start();
    gh.add_repo(REPO);
    gh.add_pat("ghp_statuses_test");
    std::fs::write(dir.path().join("token"), "ghp_statuses_test\n").unwrap();
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "api_url = {:?}\ntoken_file = {:?}\n",
            gh.url(),
            dir.path().join("token").display().to_string()
        ),
    )
    .unwrap();
    // The old argv form: the value became a word of its own and the agent refused it (exit 64),
    // so the outbox retried it forever.
    let old = std::process::Command::new(&agent)
        .args(["--config", &agent_toml.display().to_string(), "status"])
        .args(["--repo", REPO, "--sha", &sha(9), "--state", "failure"])
        .args(["--description", "--x"])
        .output()
        .unwrap();
    assert_eq!(old.status.code(), Some(64), "{old:?}");

    let host = start(dir.path(), "", MemoryHv::with_vms(&[]), Parts::HTTP_ONLY).await;
    let id = ended_job(&host, 1, JobState::Failure, "--x");
    let gw = gateway(&agent, Some(&agent_toml));
    let done = drain_statuses(&host.hub, &gw).await.unwrap();
    assert!(!done.retry_later, "{done:?}");
    let posted: Vec<_> = gh
        .statuses()
        .into_iter()
        .filter(|s| s.sha == sha(1))
        .map(|s| (s.state, s.description.unwrap_or_default()))
        .collect();
    assert_eq!(
        posted,
        [("failure".to_owned(), "--x".to_owned())],
        "{posted:?}"
    );
    let rows = host.hub.store.statuses(&id).unwrap();
    assert_eq!(rows.last().unwrap().posted, PostState::Posted, "{rows:?}");
    assert!(
        host.hub.store.unposted_statuses().unwrap().is_empty(),
        "nothing left to retry"
    );
}

/// A stub gateway: logs its arguments; `status` exits 78 unless its description is the host's
/// fallback and `accept_fallback`.
fn refusing_agent(dir: &Path, accept_fallback: bool) -> std::path::PathBuf {
    let path = dir.join("refusing-agent");
    let log = dir.join("refusing.log");
    let fallback = fallback_description(StatusState::Failure);
    let ok = if accept_fallback {
        format!("  *\"--description={fallback}\"*) exit 0 ;;\n")
    } else {
        String::new()
    };
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in\n{ok}  status*) echo 'refused' >&2; exit 78 ;;\nesac\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn refusing_calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("refusing.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_status_refused_for_good_is_posted_with_the_hosts_own_description_after_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(
        dir.path(),
        "[jobs]\nstatus_refusals = 2\n",
        MemoryHv::with_vms(&[]),
        Parts::HTTP_ONLY,
    )
    .await;
    let id = ended_job(&host, 1, JobState::Failure, "\u{1b}[31mweird\u{7} reason");
    let gw = gateway(&refusing_agent(dir.path(), true), None);
    for _ in 0..6 {
        drain_statuses(&host.hub, &gw).await.unwrap();
    }
    let last = host.hub.store.statuses(&id).unwrap().pop().unwrap();
    assert_eq!(last.posted, PostState::Posted, "{last:?}");
    assert_eq!(last.description, fallback_description(StatusState::Failure));
    let tries = refusing_calls(dir.path())
        .iter()
        .filter(|c| c.starts_with("status "))
        .count();
    assert_eq!(tries, 3, "two refusals, then the fallback that was taken");
    assert!(host.hub.health.alerts().is_empty());
}

#[tokio::test]
async fn a_status_refused_even_with_the_fallback_is_given_up_with_an_alert_not_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(
        dir.path(),
        "[jobs]\nstatus_refusals = 2\n",
        MemoryHv::with_vms(&[]),
        Parts::HTTP_ONLY,
    )
    .await;
    let id = ended_job(&host, 1, JobState::Failure, "--x");
    let gw = gateway(&refusing_agent(dir.path(), false), None);
    for _ in 0..10 {
        drain_statuses(&host.hub, &gw).await.unwrap();
    }
    let last = host.hub.store.statuses(&id).unwrap().pop().unwrap();
    assert_eq!(last.posted, PostState::GaveUp, "{last:?}");
    let tries = refusing_calls(dir.path())
        .iter()
        .filter(|c| c.starts_with("status "))
        .count();
    assert_eq!(
        tries, 3,
        "two refusals, one with the fallback, then nothing more"
    );
    assert!(host.hub.store.unposted_statuses().unwrap().is_empty());
    let alerts = host.hub.health.alerts();
    assert!(
        alerts.iter().any(|a| a.key == format!("status:{id}")),
        "{alerts:?}"
    );
    let (ok, text) = host.hub.health.report();
    assert!(!ok && text.contains("GitHub keeps refusing"), "{text}");
    assert_eq!(host.hub.metrics.counters()["alerts_raised"], 1);
}
