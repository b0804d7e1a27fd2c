//! The job page's buttons in a real browser (issue 18): Debian's Chromium over WebDriver
//! (`sdci_tests::browser`) against the real `sdci-host` of the end-to-end world (real
//! `sdci-agent`, `sdci-dom0`, the vSphere simulator, the Qubes and GitHub stand-ins), with
//! `http.admin_token_file` set. A job runs to the end with its provisioned snapshot; then, as a
//! person would: signed out there are no buttons (a sign-in link); a wrong token is refused on
//! the sign-in page; the right one lands back on the job with its buttons (the session cookie is
//! out of script's reach); "Re-run tests" lands on the new job's page, which links its origin;
//! "Hold VM" on it is recorded as the web's and shown once the re-run ends, "Release VM" ends
//! it; a snapshot pruned while the page was open gets the refusal's text on the page. The
//! prune is the store's own mark (`stage_snapshots.removed_ms`, what the retention writes),
//! set with the `sqlite3` tool: the retention itself is `host/tests/stage_retention.rs`'s.
//! Screenshots go to `target/job-page/` for a reviewer.
//!
//! Needs the binaries (`cargo build --workspace --bins`), root (the Qubes world), Chromium and
//! `sqlite3` (scripts/install-deps). `SDCI_ALLOW_SKIP=1` turns a missing prerequisite into a
//! skip.
#![allow(clippy::unwrap_used)]

use sdci_tests::browser::{self, Browser};
use sdci_tests::job_page::wait_api;
use sdci_tests::job_world::JobWorld;
use sdci_tests::world::{Unsupported, World, WorldOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret-admin-token-for-the-job-page-0123456789";

fn skip(why: &str) {
    assert!(
        std::env::var_os("SDCI_ALLOW_SKIP").is_some(),
        "{why}: run as root with Chromium installed (scripts/install-deps), or set SDCI_ALLOW_SKIP=1"
    );
    eprintln!("SKIPPED (SDCI_ALLOW_SKIP is set): {why}");
}

/// The world, its host restarted with `http.admin_token_file`.
fn world() -> Option<World> {
    if let Some(why) = browser::missing() {
        skip(&why);
        return None;
    }
    if std::process::Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_err()
    {
        skip("no sqlite3 tool");
        return None;
    }
    let mut w = match World::start(WorldOptions::default()) {
        Ok(w) => w,
        Err(e) if e.downcast_ref::<Unsupported>().is_some() => {
            skip(&e.to_string());
            return None;
        }
        Err(e) => panic!("building the world failed: {e:#}"),
    };
    w.stop_host();
    let token = w.dir().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut config = std::fs::read_to_string(w.config_path()).unwrap();
    config.push_str(&format!(
        "\n[http]\nadmin_token_file = \"{}\"\n",
        token.display()
    ));
    std::fs::write(w.config_path(), config).unwrap();
    w.start_host().unwrap();
    Some(w)
}

fn shot(b: &Browser, name: &str) {
    let path = sdci_tests::workspace_root().join(format!("target/job-page/actions-{name}.png"));
    b.screenshot(&path).unwrap();
}

/// Waits until `script` is true, through navigations (a script may fail while one is under way).
fn until(b: &Browser, what: &str, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(v) = b.exec(script, &[]) {
            if v.as_bool() == Some(true) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the page did not get to {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn click(b: &Browser, selector: &str) {
    let found = b
        .exec(
            "const e = document.querySelector(arguments[0]); if (!e) return false; \
             e.click(); return true;",
            &[json!(selector)],
        )
        .unwrap();
    assert_eq!(found, json!(true), "no {selector} on {}", b.url().unwrap());
}

fn text(b: &Browser, selector: &str) -> Option<String> {
    b.exec(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        &[json!(selector)],
    )
    .unwrap()
    .as_str()
    .map(str::to_owned)
}

fn buttons(b: &Browser) -> Vec<String> {
    let v = b
        .exec(
            "return Array.from(document.querySelectorAll('div.actions button'))\
             .map(e => e.textContent);",
            &[],
        )
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn path_is(path: &str) -> String {
    format!("return location.pathname === {path:?} && document.readyState === 'complete';")
}

/// A script: the page's notice says `what` (the page before the action has another notice).
fn notice_has(what: &str) -> String {
    format!(
        "const e = document.querySelector('p.notice'); \
         return !!e && e.textContent.includes({what:?}) && document.readyState === 'complete';"
    )
}

fn wait_ended(w: &World, id: &str) -> Value {
    wait_api(w, id, Duration::from_secs(300), |v| {
        !v["ended_ms"].is_null()
    })
    .unwrap()
}

#[test]
fn an_operator_signs_in_reruns_the_tests_holds_and_releases_the_vm_and_sees_a_refusal() {
    let Some(w) = world() else { return };
    let sha = w.fixture().commit_slow(12, 0.5, "slow tests").unwrap();
    w.publish(&sha).unwrap();
    let id = w.push(&sha).unwrap();
    let origin = wait_ended(&w, &id);
    assert_eq!(origin["state"], "success", "{origin}\n{}", w.job_log(&id));
    assert_eq!(origin["stages"]["snapshot"], json!(true), "{origin}");
    let base = w.host_url();
    let b = Browser::start(1280, 900).unwrap();

    // Signed out: no buttons, a way to sign in.
    b.goto(&format!("{base}/jobs/{id}")).unwrap();
    assert!(buttons(&b).is_empty(), "{:?}", buttons(&b));
    assert!(text(&b, "p.signin").unwrap().contains("Sign in"));
    shot(&b, "1-signed-out");

    // A wrong token: refused, on the sign-in page, not echoed.
    click(&b, "p.signin a");
    until(&b, "the sign-in page", &path_is("/login"));
    b.exec(
        "document.querySelector('input[name=token]').value = arguments[0]; \
         document.querySelector('form.login button').click(); return true;",
        &[json!("not-the-token-xyz")],
    )
    .unwrap();
    until(
        &b,
        "the refusal",
        "return !!document.querySelector('p.refusal');",
    );
    let refusal = text(&b, "p.refusal").unwrap();
    assert!(refusal.contains("not this host's admin token"), "{refusal}");
    let html = b
        .exec("return document.documentElement.outerHTML;", &[])
        .unwrap();
    assert!(!html.as_str().unwrap().contains("not-the-token-xyz"));
    shot(&b, "2-wrong-token");

    // The right token: back on the job, with the buttons that apply to an ended job.
    b.exec(
        "document.querySelector('input[name=token]').value = arguments[0]; \
         document.querySelector('form.login button').click(); return true;",
        &[json!(TOKEN)],
    )
    .unwrap();
    until(&b, "the job page", &path_is(&format!("/jobs/{id}")));
    until(
        &b,
        "the buttons",
        "return !!document.querySelector('div.actions');",
    );
    let shown = buttons(&b);
    for want in ["Re-run", "Re-run tests", "Sign out"] {
        assert!(shown.iter().any(|s| s == want), "{want} missing: {shown:?}");
    }
    for absent in ["Cancel", "Hold VM", "Release VM"] {
        assert!(!shown.iter().any(|s| s == absent), "{absent}: {shown:?}");
    }
    let cookie = b.exec("return document.cookie;", &[]).unwrap();
    assert!(
        !cookie.as_str().unwrap_or("").contains("sdci_session"),
        "the session cookie is HttpOnly: {cookie}"
    );
    shot(&b, "3-signed-in");

    // "Re-run tests": the new job's page, which links its origin.
    click(&b, "button.rerun-tests");
    until(
        &b,
        "the re-run's page",
        &format!(
            "return location.pathname.startsWith('/jobs/') && location.pathname !== '/jobs/{id}' \
             && document.readyState === 'complete';"
        ),
    );
    let rerun = b.url().unwrap().rsplit('/').next().unwrap().to_owned();
    let notice = text(&b, "p.notice").unwrap();
    assert!(notice.contains(&format!("a re-run of {id}")), "{notice}");
    let link = b
        .exec(
            "return document.querySelector('dd.rerunof a').getAttribute('href');",
            &[],
        )
        .unwrap();
    assert_eq!(link, json!(format!("/jobs/{id}")));
    shot(&b, "4-rerun-tests");

    // "Hold VM" while the re-run has not ended: held when it ends, by the web.
    click(&b, "button.hold");
    until(&b, "the hold's notice", &notice_has("will be held"));
    let notice = text(&b, "p.notice").unwrap();
    assert!(notice.contains("will be held"), "{notice}");
    let ended = wait_ended(&w, &rerun);
    assert_eq!(ended["state"], "success", "{ended}\n{}", w.job_log(&rerun));
    wait_api(&w, &rerun, Duration::from_secs(60), |v| {
        !v["stages"]["hold"].is_null()
    })
    .unwrap();
    b.goto(&format!("{base}/jobs/{rerun}")).unwrap();
    let held = text(&b, "dd.hold").unwrap();
    assert!(held.contains("web (operator)"), "{held}");
    let shown = buttons(&b);
    assert!(shown.iter().any(|s| s == "Release VM"), "{shown:?}");
    assert!(
        shown.iter().any(|s| s.starts_with("Extend hold")),
        "{shown:?}"
    );
    shot(&b, "5-held");

    // "Release VM": the page says so, and the hold ends.
    click(&b, "button.release");
    until(&b, "the release's notice", &notice_has("released"));
    assert!(text(&b, "p.notice").unwrap().contains("released"));
    wait_api(&w, &rerun, Duration::from_secs(60), |v| {
        v["stages"]["hold"].is_null()
    })
    .unwrap();
    b.goto(&format!("{base}/jobs/{rerun}")).unwrap();
    assert!(text(&b, "dd.hold").is_none(), "the hold is over");
    shot(&b, "6-released");

    // The origin's page open, its snapshot pruned meanwhile: the click gets the refusal's text.
    b.goto(&format!("{base}/jobs/{id}")).unwrap();
    assert!(buttons(&b).iter().any(|s| s == "Re-run tests"));
    let db = w.dir().join("data").join("sdci.sqlite3");
    let db = if db.exists() {
        db
    } else {
        find_db(w.dir()).expect("the host's database")
    };
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!(
            "PRAGMA busy_timeout = 5000; UPDATE stage_snapshots SET removed_ms = \
             CAST(strftime('%s','now') AS INTEGER) * 1000 WHERE job_id = '{id}';"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = || {
        let list: Value =
            serde_json::from_str(&w.get("/api/v1/jobs?limit=100").unwrap().1).unwrap();
        list["jobs"].as_array().unwrap().len()
    };
    let jobs_before = jobs();
    click(&b, "button.rerun-tests");
    until(
        &b,
        "the refusal",
        "return !!document.querySelector('p.refusal');",
    );
    assert_eq!(b.url().unwrap(), format!("{base}/jobs/{id}"));
    let refusal = text(&b, "p.refusal").unwrap();
    assert!(
        refusal.contains(&format!("cannot re-run job {id} from stage \"test\"")),
        "{refusal}"
    );
    assert!(refusal.contains("full run"), "{refusal}");
    assert!(!buttons(&b).iter().any(|s| s == "Re-run tests"));
    shot(&b, "7-pruned");
    assert_eq!(jobs(), jobs_before, "nothing queued");
}

/// The database under the world's directory (its `data_dir`).
fn find_db(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_db(&p) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == "sdci.sqlite3") {
            return Some(p);
        }
    }
    None
}
