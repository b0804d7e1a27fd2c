//! `/metrics`, `/healthz` and `/readyz` of a running service, scraped while a job runs and
//! after it ended: the exposition passes the real `promtool check metrics`, carries the
//! conventional names with every label combination at 0 (nothing vanishes at zero), and every
//! metric the alert rules and the dashboard in `monitoring/` use is there.
//!
//! `MemoryHv` holds the job's guest process open until the test releases it.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::server::Parts;
use std::io::Write;
use std::process::{Command, Stdio};

// Jobs without a version run on 4.2, where the VMs are (the default would be the newest pool).
const POOL: &str = "default_version = \"4.2\"\n[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n\
                    [pools.\"4.3\"]\nprefix = \"Qubes_4.3_\"\ngolden_snapshot = \"golden\"\n\
                    [jobs]\npoll_interval_ms = 20\n";

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `promtool check metrics` on `text`: its verdict and what it printed.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/install-deps installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every `sdci_*` name in the monitoring files.
fn monitored_names() -> Vec<String> {
    let dir = sdci_tests::workspace_root().join("monitoring");
    let mut names = std::collections::BTreeSet::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for (i, _) in text.match_indices("sdci_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names.into_iter().collect()
}

#[tokio::test]
async fn metrics_during_and_after_a_job_pass_promtool_and_keep_their_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a", "Qubes_4.2_b"]);
    let host = start(dir.path(), POOL, hv.clone(), Parts::ALL).await;
    let c = reqwest::Client::new();
    let (code, _) = deliver_push(&c, &host.url, "d1", "main", 1).await;
    assert_eq!(code, 202);
    let id = job_of_commit(&host, 1).id.to_string();
    eventually("the job's launch", || hv.started().contains(&id)).await;

    // During the job.
    let (code, m) = get(&format!("{}/metrics", host.url)).await;
    assert_eq!(code, 200);
    let (ok, said) = promtool(&m);
    assert!(ok, "promtool check metrics: {said}\n{m}");
    for series in [
        "sdci_build_info{version=\"0.1.0\"}",
        "sdci_store_up",
        "sdci_vsphere_up",
        "sdci_gateway_up",
        "sdci_alerts_active",
        "sdci_statuses_unposted",
        "sdci_jobs{state=\"queued\"}",
        "sdci_queue_depth{version=\"4.2\"}",
        "sdci_queue_depth{version=\"4.3\"}",
        "sdci_queue_depth{version=\"unresolved\"}",
        "sdci_queue_oldest_seconds{version=\"4.3\"}",
        "sdci_vms{pool=\"4.2\",state=\"quarantined\"}",
        "sdci_vms{pool=\"4.3\",state=\"free\"}",
        "sdci_pool_quarantined{pool=\"4.2\"}",
        "sdci_pool_quarantined{pool=\"4.3\"}",
        "sdci_jobs_total{outcome=\"success\",reason=\"push\"}",
        "sdci_jobs_total{outcome=\"canceled\",reason=\"manual\"}",
        "sdci_job_duration_seconds_count{outcome=\"failure\"}",
        "sdci_attempts_retried_total",
        "sdci_webhook_rejected_total",
    ] {
        assert!(value(&m, series).is_some(), "{series} missing:\n{m}");
    }
    assert_eq!(value(&m, "sdci_store_up"), Some(1.0));
    assert_eq!(
        value(&m, "sdci_vms{pool=\"4.2\",state=\"leased\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "sdci_vms{pool=\"4.2\",state=\"free\"}"),
        Some(1.0)
    );
    assert_eq!(value(&m, "sdci_jobs{state=\"running\"}"), Some(1.0), "{m}");
    assert_eq!(
        value(&m, "sdci_jobs_total{outcome=\"success\",reason=\"push\"}"),
        Some(0.0)
    );
    // Each configured step has its histogram before it ever ran.
    assert!(
        m.contains("sdci_step_duration_seconds_count{step=\"make-test\"} 0"),
        "{m}"
    );
    for name in monitored_names() {
        assert!(
            m.contains(&name),
            "monitoring/ uses {name}, which /metrics does not expose"
        );
    }
    let (code, body) = get(&format!("{}/healthz", host.url)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(&format!("{}/readyz", host.url)).await;
    assert_eq!(code, 503, "pool 4.3 has no VM: {body}");
    assert!(body.contains("ok store\n"), "{body}");
    assert!(body.contains("ok pool 4.2\n"), "{body}");
    assert!(body.contains("not ok pool 4.3: no VM seen yet"), "{body}");

    // After it ended.
    hv.release(&id, 0);
    job_ended(&host, "the job", &id).await;
    let (_, m) = get(&format!("{}/metrics", host.url)).await;
    let (ok, said) = promtool(&m);
    assert!(ok, "promtool check metrics: {said}");
    assert_eq!(
        value(&m, "sdci_jobs_total{outcome=\"success\",reason=\"push\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "sdci_job_duration_seconds_count{outcome=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "sdci_job_duration_seconds_bucket{outcome=\"success\",le=\"+Inf\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "sdci_vms{pool=\"4.2\",state=\"leased\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "sdci_jobs{state=\"running\"}"),
        Some(0.0),
        "zeros stay"
    );
}
