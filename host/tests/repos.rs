//! Only the configured repositories run (issue 15): `serve` refuses an empty `webhook.repos`
//! (with an App installable elsewhere, "any repository" lets anyone queue jobs that cost VM
//! boots), and a queued job of another repository ends before any VM is claimed.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::server::Parts;
use sdci_host::store::NewJob;

const POOL: &str = "[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                    [jobs]\npoll_interval_ms = 20\n";

#[tokio::test]
async fn a_queued_job_of_a_repository_outside_webhook_repos_ends_before_any_vm_is_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    let id = host
        .hub
        .store
        .insert_job(&NewJob {
            repo: "mallory/other".parse().unwrap(),
            sha: sha(3).parse().unwrap(),
            reason: sdci_protocol::Reason::Manual,
            branch: None,
            supersede_key: None,
            clone_url: "https://github.com/mallory/other.git".into(),
            version: None,
            snapshot: None,
            update_first: false,
            commit_author: None,
            commit_subject: None,
        })
        .unwrap();
    host.hub.wake_all();
    let job = job_ended(&host, "the foreign job ends", &id).await;
    assert_eq!(job.state, JobState::Error);
    assert!(
        job.note
            .as_deref()
            .unwrap()
            .contains("not in webhook.repos"),
        "{:?}",
        job.note
    );
    assert!(hv.started().is_empty(), "no VM was used");
    assert!(
        !agent_calls(dir.path())
            .iter()
            .any(|c| c.starts_with("ci-config")),
        "not even a ci-config call: {:?}",
        agent_calls(dir.path())
    );
    // Honest jobs are unchanged.
    let ok = push_job(&host, 4, "main").await;
    eventually("the configured repository's job launches", || {
        hv.started().contains(&ok)
    })
    .await;
}

#[test]
fn serve_refuses_to_start_without_webhook_repos() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_text(dir.path(), "127.0.0.1:9", "").replace(&format!("repos = [\"{REPO}\"]\n"), "");
    assert!(!text.contains("repos ="), "{text}");
    std::fs::write(dir.path().join("host.toml"), text).unwrap();
    let bin = sdci_tests::binary("sdci-host");
    assert!(bin.exists(), "build the binaries first");
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(dir.path().join("host.toml"))
        .arg("serve")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("webhook.repos is empty"), "{err}");
}
