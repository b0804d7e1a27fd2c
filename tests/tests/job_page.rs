//! The job page in a real browser: Debian's Chromium, driven over WebDriver
//! (`sdci_tests::browser`), against the real `sdci-host` in the end-to-end world (real
//! `sdci-agent`, real `sdci-dom0`, the vSphere simulator and the Qubes and GitHub stand-ins),
//! over loopback HTTP. What a person sees is checked in the DOM: lines arriving without a reload,
//! a broken connection resuming without a duplicate, anchors, a 100,000-line log that opens
//! without the host or the page holding it whole, hostile names and lines staying text, every
//! attempt's own log. Screenshots go to `target/job-page/` for a reviewer.
//!
//! Needs the binaries (`cargo build --workspace --bins`), root (the Qubes world) and Chromium
//! (scripts/install-deps). `SDCI_ALLOW_SKIP=1` turns a missing prerequisite into a skip.
#![allow(clippy::unwrap_used)]

use sdci_tests::browser::{self, Browser, CutProxy};
use sdci_tests::fixture::TestMode;
use sdci_tests::job_page::{api_job, dom_lines, push_commit, wait_api};
use sdci_tests::job_world::JobWorld;
use sdci_tests::vsphere_sim::Fault;
use sdci_tests::world::{Unsupported, World, WorldOptions};
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn skip(why: &str) -> bool {
    assert!(
        std::env::var_os("SDCI_ALLOW_SKIP").is_some(),
        "{why}: run as root with Chromium installed (scripts/install-deps), or set SDCI_ALLOW_SKIP=1"
    );
    eprintln!("SKIPPED (SDCI_ALLOW_SKIP is set): {why}");
    true
}

fn world(opts: WorldOptions) -> Option<World> {
    if let Some(why) = browser::missing() {
        skip(&why);
        return None;
    }
    match World::start(opts) {
        Ok(w) => Some(w),
        Err(e) if e.downcast_ref::<Unsupported>().is_some() => {
            skip(&e.to_string());
            None
        }
        Err(e) => panic!("building the world failed: {e:#}"),
    }
}

fn shots() -> std::path::PathBuf {
    sdci_tests::workspace_root().join("target/job-page")
}

fn addr(w: &World) -> std::net::SocketAddr {
    w.host_url()
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap()
}

fn wait_terminal(w: &World, id: &str) -> Value {
    wait_api(w, id, Duration::from_secs(300), |v| {
        !v["ended_ms"].is_null()
    })
    .unwrap()
}

/// A one-VM world whose fixture fails, and its head pushed and ended in failure: (world, sha,
/// job id, the job's JSON); `None` when the world is skipped.
fn failed_job() -> Option<(World, String, String, Value)> {
    let w = world(WorldOptions {
        mode: TestMode::Fail,
        ..WorldOptions::default().one_vm()
    })?;
    let sha = w.head().unwrap();
    let id = w.push(&sha).unwrap();
    let job = wait_terminal(&w, &id);
    assert_eq!(job["state"], "failure", "{job}");
    Some((w, sha, id, job))
}

fn js_bool(b: &Browser, script: &str) -> bool {
    b.exec(script, &[]).unwrap().as_bool() == Some(true)
}

/// A raw log line as the page shows its text: colour sequences (`\x1b[…m`) become styles.
fn without_colours(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("\\x1b[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 5..];
        let n = after
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        if after.as_bytes().get(n) == Some(&b'm') {
            rest = &after[n + 1..];
        } else {
            out.push_str(&rest[i..i + 5]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

const HOSTILE_BRANCH: &str = "x\"><img/src=x/onerror=window.sdciPwned=3>";
const HOSTILE_SUBJECT: &str =
    "<script>window.sdciPwned=4</script> \"><img src=x onerror=\"window.sdciPwned=5\"> & co";
const HOSTILE_AUTHOR: &str = "Mallory <img src=x onerror=alert(1)>";

#[test]
fn lines_appear_live_a_cut_connection_resumes_without_duplicates_and_hostile_text_stays_text() {
    let Some(w) = world(WorldOptions::default().one_vm()) else {
        return;
    };
    let lines = 150;
    let sha = w.fixture.commit_slow(lines, 0.04, "slow").unwrap();
    w.publish(&sha).unwrap();
    let id = push_commit(&w, &sha, HOSTILE_BRANCH, HOSTILE_AUTHOR, HOSTILE_SUBJECT).unwrap();
    let proxy = CutProxy::start(addr(&w)).unwrap();

    // Open the page once the slow step is printing.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !w.job_log(&id).contains("slow line 5 at") {
        assert!(
            Instant::now() < deadline,
            "no slow lines:\n{}",
            w.job_log(&id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = Browser::start(1280, 1400).unwrap();
    b.goto(&format!("{}/jobs/{id}", proxy.url())).unwrap();
    b.wait_for(
        "script ready",
        "return window.sdciReady === true",
        Duration::from_secs(10),
    )
    .unwrap();
    b.exec("window.sdciMarker = 42; return true", &[]).unwrap();
    let shown = |b: &Browser| -> usize {
        dom_lines(b)
            .unwrap()
            .iter()
            .filter(|(_, t)| t.contains("slow line "))
            .count()
    };
    let before = shown(&b);
    let deadline = Instant::now() + Duration::from_secs(60);
    while shown(&b) < before + 10 {
        assert!(
            Instant::now() < deadline,
            "no new lines arrived in the page"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        js_bool(&b, "return window.sdciStats.received.length >= 10"),
        "lines were not appended by the stream"
    );
    // The running step is marked.
    assert!(js_bool(
        &b,
        "return !!document.querySelector('details.attempt[open] li.step.st-running')"
    ));
    b.screenshot(&shots().join("running.png")).unwrap();

    // Break the live connection mid-stream: the page reconnects and resumes where it was.
    assert!(proxy.cut_all() > 0);
    b.wait_for(
        "a second connection",
        "return window.sdciStats.connects >= 2",
        Duration::from_secs(30),
    )
    .unwrap();
    let job = wait_terminal(&w, &id);
    assert_eq!(job["state"], "success", "{job}");
    b.wait_for(
        "the end of the stream",
        "return document.querySelector('.jobhead').dataset.state === 'success' && \
         !document.querySelector('.follow')",
        Duration::from_secs(30),
    )
    .unwrap();
    // dom0's copy replaced the streamed one; the page shows it without a reload.
    let raw = w.get(&format!("/jobs/{id}/log.txt")).unwrap().1;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut dom = dom_lines(&b).unwrap();
    while dom.len() != raw.lines().count() {
        assert!(
            Instant::now() < deadline,
            "DOM {} lines, raw {}",
            dom.len(),
            raw.lines().count()
        );
        std::thread::sleep(Duration::from_millis(50));
        dom = dom_lines(&b).unwrap();
    }
    assert_eq!(
        b.exec("return window.sdciMarker", &[]).unwrap(),
        42,
        "the page was reloaded"
    );
    let ids: Vec<&str> = dom.iter().map(|(i, _)| i.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a line is shown twice");
    for (n, (anchor, text)) in dom.iter().enumerate() {
        assert_eq!(anchor, &format!("L{}", n + 1));
        assert_eq!(
            Some(text.clone()),
            raw.lines().nth(n).map(without_colours),
            "line {}",
            n + 1
        );
    }
    for i in 1..=lines {
        let needle = format!("slow line {i} at ");
        let n = dom.iter().filter(|(_, t)| t.contains(&needle)).count();
        assert_eq!(n, 1, "{needle:?} is shown {n} times");
    }
    b.screenshot(&shots().join("finished.png")).unwrap();

    // Hostile branch, subject, author and log lines are text, in the page and in the list.
    for page in [format!("/jobs/{id}"), "/jobs".to_owned()] {
        b.goto(&format!("{}{page}", proxy.url())).unwrap();
        b.wait_for(
            "script ready",
            "return window.sdciReady === true",
            Duration::from_secs(10),
        )
        .unwrap();
        let v = b
            .exec(
                "return [typeof window.sdciPwned, document.querySelectorAll('img, script:not([src])').length,\
                 Array.from(document.querySelectorAll('code.branch')).map(e => e.textContent),\
                 document.body.textContent]",
                &[],
            )
            .unwrap();
        assert_eq!(v[0], "undefined", "{page}: injected script ran");
        assert_eq!(v[1], 0, "{page}: injected elements");
        assert!(
            v[2].as_array().unwrap().iter().any(|b| b == HOSTILE_BRANCH),
            "{page}: {}",
            v[2]
        );
        let text = v[3].as_str().unwrap();
        assert!(
            text.contains(HOSTILE_SUBJECT),
            "{page}: the subject is not shown as text"
        );
        assert!(
            text.contains(HOSTILE_AUTHOR),
            "{page}: the author is not shown as text"
        );
    }
    let log_text = b.exec("return location.pathname", &[]).unwrap();
    assert_eq!(log_text, "/jobs");
    b.goto(&format!("{}/jobs/{id}", proxy.url())).unwrap();
    b.wait_for(
        "script ready",
        "return window.sdciReady === true",
        Duration::from_secs(10),
    )
    .unwrap();
    let v = b
        .exec(
            "const t = Array.from(document.querySelectorAll('.ln .tx')).map(e => e.textContent);\
             const red = Array.from(document.querySelectorAll('.ln .tx span.a-b.a-f1')).map(e => e.textContent);\
             return [t.some(x => x.endsWith('<script>window.sdciPwned = 1</script>')),\
                     t.some(x => x.endsWith('\"><img src=x onerror=\"window.sdciPwned = 2\">')), red]",
            &[],
        )
        .unwrap();
    assert_eq!(v[0], true, "the <script> log line is not shown as text");
    assert_eq!(v[1], true, "the <img> log line is not shown as text");
    assert_eq!(
        v[2],
        serde_json::json!(["FAILED"]),
        "ANSI red bold is not rendered"
    );
}

#[test]
fn anchors_scroll_to_their_line_and_a_100000_line_log_opens_without_being_held_whole() {
    let Some(w) = world(WorldOptions::default().one_vm()) else {
        return;
    };
    let sha = w.fixture.commit_flood(100_000, "flood").unwrap();
    w.publish(&sha).unwrap();
    let id = w.push(&sha).unwrap();
    let job = wait_terminal(&w, &id);
    assert_eq!(job["state"], "success", "{job}");
    let total = job["attempts"][0]["log"]["lines"].as_u64().unwrap();
    assert!(total > 100_000, "{total}");
    let pid = browser::host_pid(w.config_path()).unwrap();
    let (rss_before, _) = browser::rss_kib(pid).unwrap();

    let b = Browser::start(1280, 1200).unwrap();
    b.goto(&format!("{}/jobs/{id}", w.host_url())).unwrap();
    b.wait_for(
        "script ready",
        "return window.sdciReady === true",
        Duration::from_secs(10),
    )
    .unwrap();
    let dom = dom_lines(&b).unwrap();
    assert!(dom.len() <= 1000, "the page holds {} lines", dom.len());
    assert_eq!(
        dom.last().unwrap().0,
        format!("L{total}"),
        "the tail is shown"
    );
    let t = b
        .exec(
            "const n = performance.getEntriesByType('navigation')[0];\
             return [n.responseStart - n.requestStart, n.domContentLoadedEventEnd - n.requestStart]",
            &[],
        )
        .unwrap();
    eprintln!(
        "100,000-line page: first byte {} ms, DOM ready {} ms",
        t[0], t[1]
    );

    // An anchor far before the tail loads the lines around it and scrolls there.
    b.goto(&format!("{}/jobs/{id}#L42", w.host_url())).unwrap();
    let visible = "const e = document.getElementById(arguments[0] || 'L42'); if (!e) return false;\
                   const r = e.getBoundingClientRect(), box = e.closest('div.log').getBoundingClientRect();\
                   return e.classList.contains('hl') && r.top >= box.top && r.bottom <= box.bottom \
                   && r.top >= 0 && r.bottom <= window.innerHeight;";
    b.wait_for("line 42 in view", visible, Duration::from_secs(10))
        .unwrap();
    let shown = dom_lines(&b).unwrap();
    assert!(shown.len() <= 1000, "{}", shown.len());
    // Another one, in the tail, through the hash alone (as a click on a line number does).
    b.exec(
        &format!("location.hash = '#L{}'; return true", total - 5),
        &[],
    )
    .unwrap();
    b.wait_for(
        "the tail line in view",
        &visible.replace("arguments[0] || 'L42'", &format!("'L{}'", total - 5)),
        Duration::from_secs(10),
    )
    .unwrap();
    // Earlier lines load on demand.
    let first = |b: &Browser| dom_lines(b).unwrap().first().unwrap().0.clone();
    let before = first(&b);
    b.exec(
        "document.querySelector('button.earlier').click(); return true",
        &[],
    )
    .unwrap();
    b.wait_for(
        "earlier lines",
        &format!("return document.querySelector('.lines > .ln').id !== '{before}'"),
        Duration::from_secs(10),
    )
    .unwrap();

    // Ten viewers at once: the host's memory stays bounded (it never holds the log).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some((now, _)) = browser::rss_kib(pid) {
                    peak = peak.max(now);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let a = addr(&w);
    let viewers: Vec<_> = (0..10)
        .map(|_| {
            let path = format!("/jobs/{id}");
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let (code, body) = sdci_tests::world::http(a, "GET", &path, &[], b"").unwrap();
                    assert_eq!(code, 200);
                    assert!(body.len() < 4 * 1024 * 1024, "{}", body.len());
                }
            })
        })
        .collect();
    for v in viewers {
        v.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    eprintln!(
        "host RSS {} KiB before, peak {} KiB with 10 viewers (+{} KiB)",
        rss_before,
        peak,
        peak.saturating_sub(rss_before)
    );
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "the host grew by {} KiB",
        peak - rss_before
    );

    // The raw log honours Range.
    let (code, part) = sdci_tests::world::http(
        a,
        "GET",
        &format!("/jobs/{id}/log.txt"),
        &[("Range", "bytes=0-99")],
        b"",
    )
    .unwrap();
    assert_eq!((code, part.len()), (206, 100));
}

#[test]
fn every_attempt_keeps_its_own_log_the_page_shows_them_newest_first_and_the_cli_prints_the_api() {
    let Some(w) = world(WorldOptions::default()) else {
        return;
    };
    w.sim
        .inject(Fault::TaskError {
            method: "PowerOnVM_Task".into(),
            kind: "InsufficientResourcesFault".into(),
            count: 1,
        })
        .unwrap();
    let sha = w.commit(TestMode::Pass, "pass").unwrap();
    let id = w.push(&sha).unwrap();
    let job = wait_terminal(&w, &id);
    assert_eq!(job["state"], "success", "{job}");
    let attempts: Vec<u64> = job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [2, 1]);
    let b = Browser::start(1280, 1400).unwrap();
    b.goto(&format!("{}/jobs/{id}", w.host_url())).unwrap();
    b.wait_for(
        "script ready",
        "return window.sdciReady === true",
        Duration::from_secs(10),
    )
    .unwrap();
    let order = b
        .exec(
            "return Array.from(document.querySelectorAll('details.attempt')).map(d => [d.dataset.attempt, d.open])",
            &[],
        )
        .unwrap();
    assert_eq!(order, serde_json::json!([["2", true], ["1", false]]));
    // The first attempt's log loads when it is opened, and is its own.
    b.exec(
        "document.getElementById('attempt-1').open = true; return true",
        &[],
    )
    .unwrap();
    b.wait_for(
        "attempt 1's log",
        "return document.querySelectorAll('#attempt-1 .ln').length > 0",
        Duration::from_secs(10),
    )
    .unwrap();
    let texts = b
        .exec(
            "return [Array.from(document.querySelectorAll('#attempt-1 .ln .tx')).map(e => e.textContent).join('\\n'),\
                     Array.from(document.querySelectorAll('#attempt-2 .ln .tx')).map(e => e.textContent).join('\\n')]",
            &[],
        )
        .unwrap();
    let (one, two) = (texts[0].as_str().unwrap(), texts[1].as_str().unwrap());
    assert!(one.contains("infrastructure failure"), "{one}");
    assert!(!one.contains("result: success"), "{one}");
    assert!(two.contains("result: success"), "{two}");
    let a1 = api_job(&w, &id).unwrap();
    assert_ne!(a1["attempts"][0]["vm"], a1["attempts"][1]["vm"]);
    // The CLI prints the API's shapes.
    let show: Value =
        serde_json::from_str(&w.host_cli(&["jobs", "show", &id, "--json"]).unwrap()).unwrap();
    assert_eq!(show, a1);
    let list: Value =
        serde_json::from_str(&w.host_cli(&["jobs", "list", "--json"]).unwrap()).unwrap();
    let api: Value = serde_json::from_str(&w.get("/api/v1/jobs").unwrap().1).unwrap();
    assert_eq!(list, api);
    b.screenshot(&shots().join("attempts.png")).unwrap();
}

#[test]
fn a_failed_job_opens_with_its_failing_step_expanded_and_in_view() {
    let Some((w, _, id, _)) = failed_job() else {
        return;
    };
    let b = Browser::start(1280, 900).unwrap();
    b.goto(&format!("{}/jobs/{id}", w.host_url())).unwrap();
    b.wait_for(
        "script ready",
        "return window.sdciReady === true",
        Duration::from_secs(10),
    )
    .unwrap();
    let v = b
        .exec(
            "const d = document.querySelector('li.step.st-failed details.failing');\
             if (!d) return null; const r = d.getBoundingClientRect();\
             return [d.open, d.querySelector('.name').textContent,\
                     Array.from(d.querySelectorAll('.ln .tx')).map(e => e.textContent).join('\\n'),\
                     r.top >= 0 && r.top < window.innerHeight]",
            &[],
        )
        .unwrap();
    assert_eq!(v[0], true, "the failing step is not expanded: {v}");
    assert_eq!(v[1], "make-test");
    assert!(
        v[2].as_str()
            .unwrap()
            .contains("tests/test_vms.py::test_sd_vms FAILED"),
        "{v}"
    );
    assert_eq!(v[3], true, "the failing step is not in view");
    // Its log link points at the line that opens it.
    let link = b
        .exec(
            "const a = document.querySelector('li.step.st-failed a.steplink'); \
             const n = a.getAttribute('href').slice(2); \
             return document.getElementById('L' + n).querySelector('.tx').textContent",
            &[],
        )
        .unwrap();
    assert!(
        link.as_str().unwrap().contains("==> step 8/8 make-test"),
        "{link}"
    );
    b.screenshot(&shots().join("failed.png")).unwrap();
}

/// Test results in the browser (issue 19): the real `sdci-dom0` collected the fixture's JUnit
/// file and the evidence of the failed job; the page lists the failed tests first, links the
/// failing line on GitHub at the commit, lists the evidence files (served as text, never as a
/// page), and a test's name opens its history. A hostile JUnit file stays text.
#[test]
fn a_failed_jobs_tests_and_evidence_are_on_its_page_and_a_test_opens_its_history() {
    let Some((w, sha, id, job)) = failed_job() else {
        return;
    };
    assert!(
        !job["tests"].is_null(),
        "no test results stored: {}",
        w.job_log(&id)
    );
    let b = Browser::start(1280, 1200).unwrap();
    b.goto(&format!("{}/jobs/{id}", w.host_url())).unwrap();
    b.wait_for(
        "script ready",
        "return window.sdciReady === true",
        Duration::from_secs(10),
    )
    .unwrap();
    let v = b
        .exec(
            "const s = document.querySelector('section.tests'); if (!s) return null;\
             const a = document.querySelector('section.attempts');\
             const failed = Array.from(s.querySelectorAll('ul.failed li.test'));\
             return [\
               !!(s.compareDocumentPosition(a) & Node.DOCUMENT_POSITION_FOLLOWING),\
               failed.map(li => [li.dataset.key, li.dataset.outcome,\
                 (li.querySelector('.msg') || {}).textContent || '',\
                 (li.querySelector('a.src') || {href: ''}).href]),\
               s.querySelector('.counts').textContent,\
               Array.from(s.querySelectorAll('ul.files li a:first-child')).map(x => x.textContent),\
               !!s.querySelector('a.archive')]",
            &[],
        )
        .unwrap();
    assert_eq!(v[0], true, "the tests come before the attempts: {v}");
    let failed = v[1].as_array().unwrap();
    let keys: Vec<&str> = failed.iter().map(|f| f[0].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "tests.test_vms_platform::test_sd_vm_apt_sources",
            "tests.test_gpg::test_sd_gpg_has_key"
        ],
        "{v}"
    );
    assert_eq!(failed[0][1], "failed");
    assert_eq!(failed[1][1], "error");
    assert!(
        failed[0][2]
            .as_str()
            .unwrap()
            .contains("AssertionError: assert 'deb https://apt"),
        "{v}"
    );
    assert!(
        failed[0][3]
            .as_str()
            .unwrap()
            .ends_with(&format!("/blob/{sha}/tests/test_vms_platform.py#L42")),
        "{v}"
    );
    assert!(
        v[2].as_str()
            .unwrap()
            .starts_with("2 passed · 1 failed · 1 error · 1 skipped — 5 tests"),
        "{v}"
    );
    let files: Vec<&str> = v[3]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(files.contains(&"junit/1.xml"), "{v}");
    assert!(
        files.iter().any(|f| f.starts_with("evidence/")),
        "the failed job's evidence is listed: {v}"
    );
    assert_eq!(v[4], true, "one download of the whole archive");
    b.exec(
        "document.querySelector('section.tests').scrollIntoView(); return true",
        &[],
    )
    .unwrap();
    b.screenshot(&shots().join("tests.png")).unwrap();

    // Each file is served as text or bytes, never as a page of the host's origin.
    let evidence = files.iter().find(|f| f.starts_with("evidence/")).unwrap();
    let (code, body) = w
        .get(&format!(
            "/jobs/{id}/results/{}/files/{evidence}",
            job["tests"]["attempt"]
        ))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let ct = b
        .exec(
            "const a = Array.from(document.querySelectorAll('section.tests ul.files li a'))\
               .find(x => x.textContent.startsWith('evidence/'));\
             return fetch(a.href).then(r => [r.status, r.headers.get('content-type'),\
               r.headers.get('content-disposition')])",
            &[],
        )
        .unwrap();
    assert_eq!(ct[0], 200, "{ct}");
    assert!(!ct[1].as_str().unwrap().contains("html"), "{ct}");
    assert!(ct[2].as_str().unwrap().contains("filename="), "{ct}");

    // The test's name opens its history: this job's run, failed, on this commit.
    b.exec(
        "document.querySelector('section.tests ul.failed li.test a.tname').click(); return true",
        &[],
    )
    .unwrap();
    b.wait_for(
        "the test's page",
        "return !!document.querySelector('table.runs tbody tr')",
        Duration::from_secs(10),
    )
    .unwrap();
    let run = b
        .exec(
            "const r = document.querySelector('table.runs tbody tr');\
             return [document.querySelector('h1.testkey code').textContent, r.dataset.job,\
                     r.dataset.outcome]",
            &[],
        )
        .unwrap();
    assert_eq!(
        run,
        serde_json::json!([
            "tests.test_vms_platform::test_sd_vm_apt_sources",
            id,
            "failed"
        ])
    );

    // A hostile JUnit file: markup in names and messages stays text.
    let hostile = br#"<?xml version="1.0"?><testsuite name="&lt;img src=x onerror=window.sdciPwned=3&gt;">
<testcase classname="t" name="&lt;script&gt;window.sdciPwned=4&lt;/script&gt;" file="javascript:alert(1)" line="1"><failure message="&quot;&gt;&lt;img src=x onerror=window.sdciPwned=5&gt;">&lt;/pre&gt;&lt;script&gt;window.sdciPwned=6&lt;/script&gt;</failure></testcase>
</testsuite>"#;
    let sha = w
        .fixture
        .commit_junit(hostile, TestMode::Fail, "hostile junit")
        .unwrap();
    w.publish(&sha).unwrap();
    let id = w.push(&sha).unwrap();
    assert_eq!(wait_terminal(&w, &id)["state"], "failure");
    b.goto(&format!("{}/jobs/{id}", w.host_url())).unwrap();
    b.wait_for(
        "script ready",
        "return window.sdciReady === true",
        Duration::from_secs(10),
    )
    .unwrap();
    let v = b
        .exec(
            "const li = document.querySelector('section.tests ul.failed li.test');\
             const src = li.querySelector('a.src');\
             return [window.sdciPwned === undefined, li.querySelector('a.tname').textContent,\
                     !src || src.href.startsWith('http'), li.querySelectorAll('script, img').length]",
            &[],
        )
        .unwrap();
    assert_eq!(
        v,
        serde_json::json!([true, "t::<script>window.sdciPwned=4</script>", true, 0])
    );
}

/// A flaky test (issue 19): the fixture's `test_sd_vm_apt_sources` fails on its commit's first
/// run and passes on the re-run (`sdci-host jobs rerun`); the failed job's page then labels it
/// "failed — known flaky: passed on <sha> at <time> (job <re-run>)", and its history shows both.
#[test]
fn a_test_that_passed_on_a_rerun_of_its_commit_is_labelled_known_flaky_on_the_failed_job() {
    let Some(w) = world(WorldOptions::default().one_vm()) else {
        return;
    };
    let marks = w.dir().join("flaky-marks");
    let sha = w.fixture.commit_flaky(&marks, "flaky").unwrap();
    w.publish(&sha).unwrap();
    let first = w.push(&sha).unwrap();
    assert_eq!(wait_terminal(&w, &first)["state"], "failure");
    let second = w.host_cli(&["jobs", "rerun", &first]).unwrap();
    let second = second.trim().to_owned();
    assert_eq!(wait_terminal(&w, &second)["state"], "success");
    let b = Browser::start(1280, 900).unwrap();
    b.goto(&format!("{}/jobs/{first}", w.host_url())).unwrap();
    b.wait_for(
        "script ready",
        "return window.sdciReady === true",
        Duration::from_secs(10),
    )
    .unwrap();
    let label = b
        .exec(
            "const li = document.querySelector(\
               'section.tests li.test[data-key=\"tests.test_vms_platform::test_sd_vm_apt_sources\"]');\
             return li ? [li.dataset.flaky || null, (li.querySelector('.flaky') || {}).textContent || null] : null",
            &[],
        )
        .unwrap();
    assert_eq!(label[0], "1", "{label}");
    let text = label[1].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "failed — known flaky: passed on {} at ",
            &sha[..7]
        )) && text.ends_with(&format!("(job {second})")),
        "{text}"
    );
    b.exec(
        "document.querySelector('section.tests').scrollIntoView(); return true",
        &[],
    )
    .unwrap();
    b.screenshot(&shots().join("flaky.png")).unwrap();
    // The test's page: both runs on this commit, the success newest, flagged flaky.
    b.exec(
        "document.querySelector('section.tests li.test a.tname').click(); return true",
        &[],
    )
    .unwrap();
    b.wait_for(
        "the test's page",
        "return document.querySelectorAll('table.runs tbody tr').length === 2",
        Duration::from_secs(10),
    )
    .unwrap();
    let runs = b
        .exec(
            "return [Array.from(document.querySelectorAll('table.runs tbody tr'))\
               .map(r => [r.dataset.job, r.dataset.outcome]),\
               (document.querySelector('dd.flaky') || {}).textContent || null]",
            &[],
        )
        .unwrap();
    assert_eq!(
        runs[0],
        serde_json::json!([[second, "passed"], [first, "failed"]])
    );
    assert!(
        runs[1]
            .as_str()
            .unwrap()
            .starts_with("known flaky: passed on"),
        "{runs}"
    );
}
