//! Test results end to end on the host side (issue 19, contracts §11), on VMware's govmomi
//! simulator through the real vim25 client: a stub `sdci-dom0 launch` writes dom0's log and a
//! `results.tar.zst` the test built (as the real collector lays it out); the host downloads it
//! after the log, stores the cases, and serves them on the job page, the test's page and the
//! evidence downloads over real HTTP. Also: a flaky test (failed and passed on the same commit)
//! is labelled, a quarantined one is listed as such, and a missing or hostile archive is a note
//! in the job's log, never a different verdict.

#![allow(clippy::unwrap_used)]

mod common;

use common::sim::*;
use common::*;
use sdci_host::domain::JobState;
use sdci_host::orchestration::checks;
use sdci_protocol::results::{EntryKind, ResultsEntry, ResultsManifest, Skipped, RESULTS_VERSION};
use sdci_tests::vsphere_sim::{SimOptions, SimVm, VsphereSim};
use std::path::{Path, PathBuf};
use std::time::Duration;

const FAST: &str = "[jobs]\npoll_interval_ms = 50\nmax_attempts = 1\n";

/// `sdci-dom0 launch` that writes dom0's log, copies `CTL/results.tar.zst` beside it when that
/// file exists, hangs while `CTL/hang` exists, and exits with `CTL/exit` (default 0).
fn stub(ctl: &Path) -> String {
    let c = ctl.display();
    format!(
        "#!/bin/sh\njob=\"$2\"\ndir=$(dirname \"$job\")\n\
         echo \"dom0 log for $job\" > \"$dir/log.txt\"\n\
         [ -f '{c}/results.tar.zst' ] && cat '{c}/results.tar.zst' > \"$dir/results.tar.zst\"\n\
         while [ -f '{c}/hang' ]; do sleep 0.05; done\n\
         code=0\n[ -f '{c}/exit' ] && code=$(cat '{c}/exit')\nexit \"$code\"\n"
    )
}

fn sim(ctl: &Path) -> VsphereSim {
    std::fs::create_dir_all(ctl).unwrap();
    let vm = SimVm::new("Qubes_4.2_a")
        .snapshots(&["golden"])
        .tools_delay(Some(Duration::from_millis(100)))
        .shutdown_delay(Duration::from_millis(100))
        .file("/usr/local/bin/sdci-dom0", stub(ctl), 0o755);
    VsphereSim::start(SimOptions::vcenter().vms(vec![vm])).unwrap()
}

fn junit(bad_passes: bool) -> String {
    let bad = if bad_passes {
        r#"<testcase classname="tests.test_vms" name="test_sd_vm_apt_sources" file="tests/test_vms.py" line="42" time="2.5"/>"#.to_owned()
    } else {
        r#"<testcase classname="tests.test_vms" name="test_sd_vm_apt_sources" file="tests/test_vms.py" line="42" time="2.5"><failure message="AssertionError: &lt;apt&gt; sources differ">Traceback (most recent call last):
  File "tests/test_vms.py", line 42</failure></testcase>"#.to_owned()
    };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_dom0" name="test_ok" time="0.25"/>
{bad}
<testcase classname="tests.test_dom0" name="test_setup" time="0"><error message="fixture sd-dev not running"/></testcase>
<testcase classname="tests.test_dom0" name="test_skip"><skipped message="not on 4.2"/></testcase>
</testsuite></testsuites>"#
    )
}

/// A `results.tar.zst` as dom0's collector writes it: the manifest, `junit/1.xml`, and the
/// evidence of a failed job.
fn results(junit_xml: &[u8]) -> Vec<u8> {
    let members: Vec<(&str, EntryKind, Vec<u8>)> = vec![
        ("junit/1.xml", EntryKind::Junit, junit_xml.to_vec()),
        (
            "evidence/journal.txt",
            EntryKind::Evidence,
            b"-- boot 1 --\nsd-dev started\n".to_vec(),
        ),
        (
            "evidence/xen-console/guest-sd-dev.log",
            EntryKind::Evidence,
            b"<script>alert(1)</script>\n".to_vec(),
        ),
    ];
    let manifest = ResultsManifest {
        version: RESULTS_VERSION,
        job: "job-1".parse().unwrap(),
        outcome: sdci_protocol::Outcome::Failure,
        evidence: true,
        took_ms: 12,
        entries: members
            .iter()
            .map(|(p, k, d)| ResultsEntry {
                path: (*p).into(),
                kind: *k,
                source: format!("/var/log/{p}"),
                bytes: d.len() as u64,
                truncated: false,
            })
            .collect(),
        skipped: vec![Skipped::new("/var/log/qubes/huge.log", "larger than 8 MiB")],
        skipped_more: 0,
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    add("manifest.json", manifest.to_json().as_bytes());
    for (p, _, d) in &members {
        add(p, d);
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::get(url).await.unwrap();
    let (code, headers) = (r.status().as_u16(), r.headers().clone());
    (code, headers, r.text().await.unwrap())
}

/// Queues a manual job of `sha(n)` (what `sdci-host run` and a check run's Re-run do: the same
/// commit again) and wakes the scheduler.
fn rerun(host: &TestHost, n: u32) -> String {
    let id = host
        .hub
        .store
        .insert_job(&sdci_host::store::NewJob {
            repo: "freedomofpress/securedrop-workstation".parse().unwrap(),
            sha: sha(n).parse().unwrap(),
            reason: sdci_protocol::Reason::Manual,
            branch: None,
            supersede_key: None,
            clone_url: "https://github.com/freedomofpress/securedrop-workstation.git".into(),
            version: Some("4.2".into()),
            snapshot: None,
            update_first: false,
            commit_author: None,
            commit_subject: None,
        })
        .unwrap();
    host.hub.wake_all();
    id.to_string()
}

/// Pushes `sha(n)` to `branch` with delivery id `delivery` and returns the new job's id.
async fn push(host: &TestHost, n: u32, branch: &str, delivery: &str) -> String {
    let before: Vec<String> = host
        .hub
        .store
        .recent_jobs(100)
        .unwrap()
        .into_iter()
        .map(|j| j.id.to_string())
        .collect();
    let c = reqwest::Client::new();
    let (code, text) = deliver_push(&c, &host.url, delivery, branch, n).await;
    assert_eq!(code, 202, "{text}");
    host.hub
        .store
        .recent_jobs(100)
        .unwrap()
        .into_iter()
        .map(|j| j.id.to_string())
        .find(|id| !before.contains(id))
        .unwrap()
}

fn log_of(dir: &Path, id: &str) -> String {
    std::fs::read_to_string(dir.join("data/logs").join(format!("{id}.log"))).unwrap_or_default()
}

fn setup() -> (tempfile::TempDir, PathBuf, VsphereSim) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let sim = sim(&ctl);
    (dir, ctl, sim)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_jobs_tests_and_evidence_are_on_its_page_and_a_retried_commit_shows_the_flake() {
    let (dir, ctl, sim) = setup();
    std::fs::write(
        ctl.join("results.tar.zst"),
        results(junit(false).as_bytes()),
    )
    .unwrap();
    std::fs::write(ctl.join("exit"), "1").unwrap();
    let extra = format!("{FAST}[tests]\nquarantine = [\"test_setup\"]\n");
    let host = start_host(dir.path(), &sim, &extra).await;
    let id = push(&host, 1, "main", "d1").await;
    let job = job_ended(&host, "the failing job ends", &id).await;
    assert_eq!(
        job.state,
        JobState::Failure,
        "the results never change the verdict"
    );

    // The store: one row per case, the archive's members listed.
    let s = &host.hub.store;
    let cases = s.test_cases(&id, 1).unwrap();
    let outcomes: Vec<_> = cases
        .iter()
        .map(|t| (t.key.as_str(), t.case.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("tests.test_dom0::test_ok", "passed"),
            ("tests.test_vms::test_sd_vm_apt_sources", "failed"),
            ("tests.test_dom0::test_setup", "error"),
            ("tests.test_dom0::test_skip", "skipped"),
        ]
    );
    let files: Vec<_> = s
        .result_files(&id, 1)
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(
        files,
        [
            "evidence/journal.txt",
            "evidence/xen-console/guest-sd-dev.log",
            "junit/1.xml"
        ]
    );
    let log = log_of(dir.path(), &id);
    assert!(
        log.contains("=== results: 4 test cases (2 failed or errored), 3 files"),
        "{log}"
    );
    assert!(
        log.contains("dom0 did not collect /var/log/qubes/huge.log: larger than 8 MiB"),
        "{log}"
    );

    // The job page: failed tests first with the message and the line on GitHub at the commit.
    let (code, _, page) = get(&format!("{}/jobs/{id}", host.url)).await;
    assert_eq!(code, 200);
    let tests_at = page.find("section class=\"tests\"").unwrap();
    assert!(
        tests_at < page.find("section class=\"attempts\"").unwrap(),
        "tests come before the attempts"
    );
    let failed = &page[tests_at..];
    assert!(failed.contains("tests.test_vms::test_sd_vm_apt_sources"));
    assert!(
        failed.contains("AssertionError: &lt;apt&gt; sources differ"),
        "escaped message"
    );
    let sha = sha(1);
    assert!(
        failed.contains(&format!(
            "/securedrop-workstation/blob/{sha}/tests/test_vms.py#L43\""
        )),
        "source link at the commit, pytest's 0-based line 42 as GitHub's 43: {failed}"
    );
    assert!(failed.contains("1 passed · 1 failed · 1 error · 1 skipped — 4 tests"));
    assert!(failed.contains("quarantined (test_setup)"));
    assert!(
        !failed.contains("known flaky"),
        "nothing passed on this commit yet"
    );
    assert!(
        failed.find("test_sd_vm_apt_sources").unwrap() < failed.find("quarantined (").unwrap(),
        "quarantined failures after the others"
    );

    // Evidence: per-file download as text, never HTML; the archive as bytes.
    let file = format!(
        "{}/jobs/{id}/results/1/files/evidence/xen-console/guest-sd-dev.log",
        host.url
    );
    let (code, h, body) = get(&file).await;
    assert_eq!(code, 200);
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("sandbox"));
    assert!(h["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("inline; filename="));
    assert_eq!(body, "<script>alert(1)</script>\n");
    let (_, h, _) = get(&format!("{file}?download=1")).await;
    assert!(h["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment;"));
    let (code, h, _) = get(&format!("{}/jobs/{id}/results/1/results.tar.zst", host.url)).await;
    assert_eq!(code, 200);
    assert_eq!(h["content-type"], "application/octet-stream");
    for missing in [
        "files/evidence/none.txt",
        "files/manifest.json",
        "files/evidence/..%2F..%2Fetc%2Fpasswd",
    ] {
        let (code, _, _) = get(&format!("{}/jobs/{id}/results/1/{missing}", host.url)).await;
        assert_eq!(code, 404, "{missing}");
    }

    // The same commit again (another branch): the test passes, so it was a flake.
    std::fs::write(ctl.join("results.tar.zst"), results(junit(true).as_bytes())).unwrap();
    let second = rerun(&host, 1);
    job_ended(&host, "the re-run ends", &second).await;
    std::fs::write(
        ctl.join("results.tar.zst"),
        results(junit(false).as_bytes()),
    )
    .unwrap();
    let third = rerun(&host, 1);
    job_ended(&host, "the third run ends", &third).await;
    let (_, _, page) = get(&format!("{}/jobs/{third}", host.url)).await;
    assert!(
        page.contains(&format!("failed — known flaky: passed on {} at", &sha[..7])),
        "{}",
        &page[page.find("section class=\"tests\"").unwrap()..]
    );
    assert!(page.contains(&format!("(job {second})")));

    // The test's own page: its history across jobs, last success, first failure.
    let key = "tests.test_vms::test_sd_vm_apt_sources";
    let (code, _, tp) = get(&format!(
        "{}/tests?key={}&repo=freedomofpress%2Fsecuredrop-workstation",
        host.url,
        key.replace(':', "%3A")
    ))
    .await;
    assert_eq!(code, 200, "{tp}");
    for j in [&id, &second, &third] {
        assert!(tp.contains(&format!("data-job=\"{j}\"")), "{j} in {tp}");
    }
    assert!(tp.contains("1 passed · 2 failed"), "{tp}");
    let api: serde_json::Value = reqwest::get(format!(
        "{}/api/v1/tests?key={}",
        host.url,
        key.replace(':', "%3A")
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(api["last_success"]["job_id"], second.as_str());
    assert_eq!(api["first_failure"]["job_id"], third.as_str());
    assert_eq!(api["runs"].as_array().unwrap().len(), 3);
    // The job's JSON (the API and `jobs show --json`) carries the same view.
    let detail: serde_json::Value = reqwest::get(format!("{}/api/v1/jobs/{third}", host.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["tests"]["counts"]["failed"], 1);
    assert!(detail["tests"]["failed"][0]["flaky"]
        .as_str()
        .unwrap()
        .starts_with("known flaky"));
    // The check run's summary lists the failed tests with the same labels; a real failure
    // beside a quarantined one stays a failure.
    let report = checks::JobReport::read(&host.hub, &third).unwrap().unwrap();
    assert_eq!(report.conclusion(), Some(checks::Conclusion::Failure));
    let summary = checks::completed_summary(&report);
    assert!(summary.contains("### Tests"), "{summary}");
    assert!(
        summary.contains("| failed — known flaky: passed on "),
        "{summary}"
    );
    assert!(summary.contains("(quarantined: test\\_setup)"), "{summary}");
    assert!(summary.contains("tests/test\\_vms.py:42"), "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_only_failures_are_quarantined_concludes_neutral_with_them_listed() {
    let (dir, ctl, sim) = setup();
    // Only `test_setup` errors (the apt test passes): quarantined, so neutral — not success.
    std::fs::write(ctl.join("results.tar.zst"), results(junit(true).as_bytes())).unwrap();
    std::fs::write(ctl.join("exit"), "1").unwrap();
    let extra = format!("{FAST}[tests]\nquarantine = [\"tests.test_dom0::test_set*\"]\n");
    let host = start_host(dir.path(), &sim, &extra).await;
    let id = push(&host, 1, "main", "d1").await;
    assert_eq!(
        job_ended(&host, "the job ends", &id).await.state,
        JobState::Failure
    );
    let report = checks::JobReport::read(&host.hub, &id).unwrap().unwrap();
    assert_eq!(report.conclusion(), Some(checks::Conclusion::Neutral));
    assert_eq!(
        checks::completed_title(&report),
        "Neutral: only quarantined tests failed"
    );
    let summary = checks::completed_summary(&report);
    assert!(summary.starts_with("**Neutral**"), "{summary}");
    assert!(
        summary.contains("quarantined: tests.test\\_dom0::test\\_set\\*"),
        "{summary}"
    );
    let (_, _, page) = get(&format!("{}/jobs/{id}", host.url)).await;
    assert!(
        page.contains("Only quarantined tests failed"),
        "the page says why"
    );

    // Without the quarantine the same results are a failure (the default is off).
    drop(host);
    let dir2 = tempfile::tempdir().unwrap();
    let host = start_host(dir2.path(), &sim, FAST).await;
    let id = push(&host, 2, "main", "d2").await;
    job_ended(&host, "the job ends", &id).await;
    let report = checks::JobReport::read(&host.hub, &id).unwrap().unwrap();
    assert_eq!(report.conclusion(), Some(checks::Conclusion::Failure));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_hostile_archive_is_a_note_and_the_verdict_stands() {
    let (dir, ctl, sim) = setup();
    let host = start_host(dir.path(), &sim, FAST).await;
    // No results.tar.zst at all: a passing job stays a success.
    let id = push(&host, 1, "main", "d1").await;
    let job = job_ended(&host, "the job ends", &id).await;
    assert_eq!(job.state, JobState::Success);
    assert!(
        log_of(dir.path(), &id).contains("=== results: dom0 wrote no results.tar.zst"),
        "{}",
        log_of(dir.path(), &id)
    );
    let (code, _, page) = get(&format!("{}/jobs/{id}", host.url)).await;
    assert_eq!(code, 200);
    assert!(page.contains("dom0 wrote no results.tar.zst"));

    // A billion-laughs JUnit file and a file that is not zstd at all.
    let lol = br#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><testsuite><testcase name="&c;"/></testsuite>"#;
    std::fs::write(ctl.join("results.tar.zst"), results(lol)).unwrap();
    std::fs::write(ctl.join("exit"), "1").unwrap();
    let id = push(&host, 2, "main", "d2").await;
    let job = job_ended(&host, "the job ends", &id).await;
    assert_eq!(job.state, JobState::Failure);
    assert!(host.hub.store.test_cases(&id, 1).unwrap().is_empty());
    assert!(log_of(dir.path(), &id).contains("junit/1.xml: a <!DOCTYPE> is refused"));
    std::fs::write(ctl.join("results.tar.zst"), b"not zstd at all").unwrap();
    std::fs::write(ctl.join("exit"), "0").unwrap();
    let id = push(&host, 3, "main", "d3").await;
    assert_eq!(
        job_ended(&host, "the job ends", &id).await.state,
        JobState::Success
    );
    let log = log_of(dir.path(), &id);
    assert!(log.contains("=== results: results.tar.zst: "), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_past_its_deadline_gets_a_console_screenshot_on_its_page() {
    let (dir, ctl, sim) = setup();
    std::fs::write(ctl.join("hang"), "").unwrap();
    let extra = format!("{FAST}[deadlines]\nrun_secs = 2\n");
    let host = start_host(dir.path(), &sim, &extra).await;
    let id = push(&host, 1, "main", "d1").await;
    let job = job_ended(&host, "the hung job ends", &id).await;
    assert_eq!(job.state, JobState::Error, "{:?}", job.note);
    let set = host.hub.store.result_set(&id, 1).unwrap().unwrap();
    assert!(set.screenshot);
    let log = log_of(dir.path(), &id);
    assert!(
        log.contains("=== console screenshot of Qubes_4.2_a kept ("),
        "{log}"
    );
    let (_, _, page) = get(&format!("{}/jobs/{id}", host.url)).await;
    let img = format!("src=\"/jobs/{id}/results/1/screenshot.png\"");
    assert!(page.contains(&img), "{page}");
    let r = reqwest::get(format!("{}/jobs/{id}/results/1/screenshot.png", host.url))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let png = r.bytes().await.unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG from the datastore"
    );
    std::fs::remove_file(ctl.join("hang")).unwrap();
}
