//! `junit-bench [CASES]`: the figures of issue 19's note — how long the host takes to read a
//! JUnit file of CASES cases (default 5,000; every tenth a failure with a 2 KiB traceback), alone
//! and inside a `results.tar.zst` with the evidence of a failed job, and the process's peak RSS.
//! Build it with `--release` (`cargo run --release -p sdci-host --bin junit-bench`).

use anyhow::Result;
use sdci_host::domain::junit::{self, JunitLimits};
use sdci_host::orchestration::results::{read_archive, ReadLimits};
use sdci_protocol::results::{EntryKind, ResultsEntry, ResultsManifest, RESULTS_VERSION};
use std::time::Instant;

fn junit_xml(cases: usize) -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><testsuites><testsuite name=\"pytest\">\n",
    );
    let trace = "  File \"tests/test_vms.py\", line 42, in test\n    assert x == y\n".repeat(30);
    for i in 0..cases {
        if i % 10 == 0 {
            x.push_str(&format!(
                "<testcase classname=\"tests.test_vms.SD_VM_Tests\" name=\"test_{i}\" file=\"tests/test_vms.py\" line=\"{i}\" time=\"1.5\"><failure message=\"AssertionError: {i}\">{trace}</failure></testcase>\n"
            ));
        } else {
            x.push_str(&format!(
                "<testcase classname=\"tests.test_vms.SD_VM_Tests\" name=\"test_{i}\" time=\"0.25\"/>\n"
            ));
        }
    }
    x.push_str("</testsuite></testsuites>\n");
    x
}

fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other invariant.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return -1;
    }
    u.ru_maxrss
}

fn main() -> Result<()> {
    let cases: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5000);
    let xml = junit_xml(cases);
    let rss_before = peak_rss_kib();

    let runs = 5;
    let mut best = f64::MAX;
    let mut got = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let p = junit::parse("bench.xml", xml.as_bytes(), &JunitLimits::default());
        best = best.min(t.elapsed().as_secs_f64());
        got = p.cases.len();
    }

    let dir = tempfile::tempdir()?;
    let mut b = tar::Builder::new(Vec::new());
    let journal = "Dec 01 10:00:00 dom0 kernel: a line of the journal\n".repeat(200_000);
    let members = [
        ("junit/1.xml", xml.as_bytes()),
        ("evidence/journal.txt", journal.as_bytes()),
    ];
    let manifest = ResultsManifest {
        version: RESULTS_VERSION,
        job: "bench-1".parse()?,
        outcome: sdci_protocol::Outcome::Failure,
        evidence: true,
        took_ms: 0,
        entries: members
            .iter()
            .map(|(path, data)| ResultsEntry {
                path: (*path).into(),
                kind: if path.starts_with("junit/") {
                    EntryKind::Junit
                } else {
                    EntryKind::Evidence
                },
                source: (*path).into(),
                bytes: data.len() as u64,
                truncated: false,
            })
            .collect(),
        skipped: vec![],
        skipped_more: 0,
    }
    .to_json();
    for (path, data) in [("manifest.json", manifest.as_bytes())]
        .into_iter()
        .chain(members)
    {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data)?;
    }
    let archive = dir.path().join("results.tar.zst");
    std::fs::write(&archive, zstd::encode_all(&b.into_inner()?[..], 3)?)?;
    let limits = ReadLimits {
        max_members: 1000,
        max_unpacked: 512 * 1024 * 1024,
        max_cases: 20_000,
        junit: JunitLimits::default(),
    };
    let mut best_archive = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let r = read_archive(&archive, &limits);
        best_archive = best_archive.min(t.elapsed().as_secs_f64());
        assert_eq!(r.cases.len(), got);
    }
    println!(
        "{}",
        serde_json::json!({
            "cases": got,
            "junit_bytes": xml.len(),
            "parse_ms_best_of_5": (best * 1000.0 * 10.0).round() / 10.0,
            "archive_bytes": std::fs::metadata(&archive)?.len(),
            "archive_unpacked_bytes": xml.len() + journal.len(),
            "read_archive_ms_best_of_5": (best_archive * 1000.0 * 10.0).round() / 10.0,
            "peak_rss_kib_before": rss_before,
            "peak_rss_kib": peak_rss_kib(),
        })
    );
    Ok(())
}
