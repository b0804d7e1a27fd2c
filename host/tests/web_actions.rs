//! Who may act on a job from the web (issue 18; `surface::web::session`), over real HTTP on
//! loopback against the real service with a real SQLite store (no scheduler: what each request
//! changed stays visible): a POST without a session or bearer, from another site, or without
//! the session's CSRF token is refused and changes nothing; a GET of an action URL changes
//! nothing; the session cookie's attributes; a wrong admin token is refused after a delay and
//! never echoed; without `http.admin_token_file` there is no sign-in at all. And what a signed-in
//! operator and an API client get: cancel, the full re-run, the re-run from the provisioned
//! snapshot (and its refusal once the snapshot is gone), hold and release, through the one rule
//! the CLI uses.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::domain::JobState;
use sdci_host::server::Parts;
use sdci_host::store::{NewJob, StageSnapshot};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-token-0123456789abcdef0123456789abcdef";

fn new_job(n: u32) -> NewJob {
    NewJob {
        repo: REPO.parse().unwrap(),
        sha: sha(n).parse().unwrap(),
        reason: sdci_protocol::Reason::Push,
        branch: Some("main".into()),
        supersede_key: None,
        clone_url: "x".into(),
        version: Some("4.2".into()),
        snapshot: None,
        update_first: false,
        commit_author: None,
        commit_subject: None,
    }
}

async fn host(dir: &Path, with_token: bool) -> TestHost {
    let mut extra =
        String::from("[pools.\"4.2\"]\nprefix = \"Qubes_4.2_\"\ngolden_snapshot = \"golden\"\n");
    if with_token {
        std::fs::write(dir.join("admin-token"), format!("{TOKEN}\n")).unwrap();
        extra.push_str(&format!(
            "[http]\nadmin_token_file = \"{}\"\n",
            dir.join("admin-token").display()
        ));
    }
    let hv = MemoryHv::with_vms(&["Qubes_4.2_a"]);
    start(dir, &extra, hv, Parts::HTTP_ONLY).await
}

/// A finished job with stages (provision, then test) and its provisioned snapshot.
fn finished_with_snapshot(host: &TestHost, n: u32) -> String {
    let store = &host.hub.store;
    let id = store.insert_job(&new_job(n)).unwrap().to_string();
    let steps: Vec<(String, String)> = [
        ("provision-base", "provision"),
        ("make-dev", "provision"),
        ("make-test", "test"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    store.set_job_stages(&id, &steps).unwrap();
    store
        .record_stage_snapshot(&StageSnapshot {
            job_id: id.clone(),
            vm: "Qubes_4.2_a".into(),
            version: "4.2".into(),
            branch: Some("main".into()),
            name: sdci_host::domain::stages::snapshot_name(&id),
            created_ms: sdci_host::now_ms(),
            bytes: None,
        })
        .unwrap();
    store
        .finish(&id, JobState::Failure, "tests failed", true)
        .unwrap();
    id
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A signed-in browser: its cookie header and the CSRF token of its forms.
struct Browser {
    cookie: String,
    csrf: String,
}

fn same_origin(host: &TestHost, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("Origin", &host.url)
        .header("Sec-Fetch-Site", "same-origin")
}

async fn sign_in(host: &TestHost, job: &str) -> Browser {
    let c = client();
    let r = same_origin(host, c.post(format!("{}/login", host.url)))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}&next=/jobs/{job}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], format!("/jobs/{job}").as_str());
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = c
        .get(format!("{}/jobs/{job}", host.url))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field for a signed-in browser:\n{page}"));
    let csrf = page[at + 19..at + 19 + 64].to_owned();
    Browser { cookie, csrf }
}

/// A form POST of `body` to `path` with `b`'s cookie and the given extra headers.
async fn post_form(
    host: &TestHost,
    path: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Option<String>) {
    let mut req = client()
        .post(format!("{}{path}", host.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    (code, r.text().await.unwrap(), loc)
}

async fn page(host: &TestHost, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = client().get(format!("{}{path}", host.url));
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn state(host: &TestHost, id: &str) -> JobState {
    host.hub.store.job(id).unwrap().unwrap().state
}

fn jobs_count(host: &TestHost) -> usize {
    host.hub.store.recent_jobs(1000).unwrap().len()
}

#[tokio::test]
async fn a_post_without_a_session_or_bearer_is_refused_with_401_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), true).await;
    let queued = host.hub.store.insert_job(&new_job(1)).unwrap().to_string();
    let ended = finished_with_snapshot(&host, 2);
    let before = jobs_count(&host);
    let so = [
        ("Origin", host.url.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    for (path, id) in [
        (format!("/jobs/{queued}/cancel"), &queued),
        (format!("/jobs/{ended}/rerun"), &ended),
    ] {
        let (code, body, _) = post_form(&host, &path, None, &so, "csrf=x&from=test").await;
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("not signed in"), "{body}");
        let forged = post_form(&host, &path, Some("sdci_session=00ff"), &so, "csrf=x").await;
        assert_eq!(forged.0, 401, "{path} with a made-up session");
        let _ = id;
    }
    let c = client();
    for auth in [None, Some("Bearer not-the-token"), Some(TOKEN)] {
        let mut req = c.post(format!("{}/api/v1/jobs/{queued}/cancel", host.url));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let t = Instant::now();
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        if auth.is_some() {
            assert!(
                t.elapsed() >= Duration::from_millis(900),
                "a wrong bearer costs a delay"
            );
        }
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("Bearer"), "{v}");
    }
    assert_eq!(state(&host, &queued), JobState::Queued);
    assert_eq!(jobs_count(&host), before, "no re-run was queued");
}

#[tokio::test]
async fn a_cross_site_post_with_a_valid_cookie_and_token_is_refused_with_403() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), true).await;
    let id = host.hub.store.insert_job(&new_job(1)).unwrap().to_string();
    let b = sign_in(&host, &id).await;
    let body = format!("csrf={}", b.csrf);
    let path = format!("/jobs/{id}/cancel");
    for headers in [
        vec![
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Origin", "https://evil.example")],
        vec![("Origin", "null")],
        // Neither header: a browser always sends one on a POST; nothing proves the origin.
        vec![],
    ] {
        let (code, text, _) = post_form(&host, &path, Some(&b.cookie), &headers, &body).await;
        assert_eq!(code, 403, "{headers:?}: {text}");
        assert!(text.contains("another site"), "{text}");
    }
    assert_eq!(state(&host, &id), JobState::Queued);
}

#[tokio::test]
async fn a_missing_or_wrong_csrf_token_is_refused_with_403() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), true).await;
    let id = host.hub.store.insert_job(&new_job(1)).unwrap().to_string();
    let b = sign_in(&host, &id).await;
    let other = sign_in(&host, &id).await;
    assert_ne!(b.csrf, other.csrf, "each session has its own token");
    let so = [
        ("Origin", host.url.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let path = format!("/jobs/{id}/cancel");
    let wrong = "0".repeat(64);
    for body in [
        String::new(),
        "csrf=".into(),
        format!("csrf={wrong}"),
        format!("csrf={}", other.csrf),
    ] {
        let (code, text, _) = post_form(&host, &path, Some(&b.cookie), &so, &body).await;
        assert_eq!(code, 403, "{body:?}: {text}");
        assert!(text.contains("token is missing or stale"), "{text}");
    }
    assert_eq!(state(&host, &id), JobState::Queued);
    // The right one, for contrast: the job is canceled and its page (only) says so.
    let (code, _, loc) = post_form(
        &host,
        &path,
        Some(&b.cookie),
        &so,
        &format!("csrf={}", b.csrf),
    )
    .await;
    assert_eq!(
        (code, loc.as_deref()),
        (303, Some(format!("/jobs/{id}").as_str()))
    );
    assert_eq!(state(&host, &id), JobState::Canceled);
    let (_, shown) = page(&host, &format!("/jobs/{id}"), Some(&b.cookie)).await;
    assert!(shown.contains(&format!("{id}: canceled")), "{shown}");
    let other_job = host.hub.store.insert_job(&new_job(9)).unwrap().to_string();
    let (_, elsewhere) = page(&host, &format!("/jobs/{other_job}"), Some(&b.cookie)).await;
    assert!(!elsewhere.contains("class=\"notice\""), "{elsewhere}");
    let (_, signed_out) = page(&host, &format!("/jobs/{id}"), None).await;
    assert!(
        !signed_out.contains(&format!("{id}: canceled")),
        "another viewer sees no notice"
    );
}

#[tokio::test]
async fn a_get_of_an_action_url_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), true).await;
    let queued = host.hub.store.insert_job(&new_job(1)).unwrap().to_string();
    let ended = finished_with_snapshot(&host, 2);
    let b = sign_in(&host, &queued).await;
    let before = jobs_count(&host);
    let c = client();
    for path in [
        format!("/jobs/{queued}/cancel?csrf={}", b.csrf),
        format!("/jobs/{ended}/rerun?csrf={}&from=test", b.csrf),
        format!("/jobs/{queued}/hold?csrf={}", b.csrf),
        format!("/api/v1/jobs/{queued}/cancel"),
        format!("/api/v1/jobs/{ended}/rerun"),
        format!("/logout?csrf={}", b.csrf),
    ] {
        let r = c
            .get(format!("{}{path}", host.url))
            .header("Cookie", &b.cookie)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "GET {path}");
    }
    assert_eq!(state(&host, &queued), JobState::Queued);
    assert!(host.hub.store.hold_request(&queued).unwrap().is_none());
    assert_eq!(jobs_count(&host), before);
    let (_, still) = page(&host, &format!("/jobs/{queued}"), Some(&b.cookie)).await;
    assert!(
        still.contains("name=\"csrf\""),
        "still signed in after GET /logout"
    );
}

#[tokio::test]
async fn the_session_cookie_is_http_only_same_site_strict_random_and_ends_at_sign_out() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), true).await;
    let id = host.hub.store.insert_job(&new_job(1)).unwrap().to_string();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = same_origin(&host, client().post(format!("{}/login", host.url)))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("token={TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/jobs");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        let parts: Vec<&str> = set.split("; ").collect();
        let value = parts[0].strip_prefix("sdci_session=").unwrap();
        assert_eq!(value.len(), 64, "256 bits as hex: {set}");
        assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(parts.contains(&attr), "{attr} missing from {set}");
        }
        assert!(!set.contains("Secure"), "public_url is http:// here: {set}");
        ids.push(value.to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    // Sign-out ends the session on the host, not only in the browser.
    let b = sign_in(&host, &id).await;
    let so = [
        ("Origin", host.url.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let (code, _, loc) = post_form(
        &host,
        "/logout",
        Some(&b.cookie),
        &so,
        &format!("csrf={}", b.csrf),
    )
    .await;
    assert_eq!((code, loc.as_deref()), (303, Some("/jobs")));
    let (code, _, _) = post_form(
        &host,
        &format!("/jobs/{id}/cancel"),
        Some(&b.cookie),
        &so,
        &format!("csrf={}", b.csrf),
    )
    .await;
    assert_eq!(code, 401, "the old cookie no longer acts");
    assert_eq!(state(&host, &id), JobState::Queued);
}

#[tokio::test]
async fn a_wrong_admin_token_is_refused_after_a_delay_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), true).await;
    let guess = "my-guess-of-the-token-<b>";
    let t = Instant::now();
    let r = same_origin(&host, client().post(format!("{}/login", host.url)))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "my-guess-of-the-token-%3Cb%3E"))
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let body = r.text().await.unwrap();
    assert!(
        body.contains("That is not this host&#39;s admin token")
            || body.contains("That is not this host's admin token"),
        "{body}"
    );
    assert!(!body.contains("my-guess"), "the token is echoed: {body}");
    assert!(took >= Duration::from_millis(900), "no delay: {took:?}");
    let _ = guess;
}

#[tokio::test]
async fn without_an_admin_token_file_there_is_no_sign_in_and_every_action_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), false).await;
    let queued = host.hub.store.insert_job(&new_job(1)).unwrap().to_string();
    let ended = finished_with_snapshot(&host, 2);
    let before = jobs_count(&host);
    let (code, text) = page(&host, "/login", None).await;
    assert_eq!(code, 404);
    assert!(text.contains("no http.admin_token_file"), "{text}");
    let so = [
        ("Origin", host.url.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let (code, _, _) = post_form(&host, "/login", None, &so, "token=anything").await;
    assert_eq!(code, 404);
    for path in [
        format!("/jobs/{queued}/cancel"),
        format!("/jobs/{ended}/rerun"),
        "/logout".to_owned(),
    ] {
        let (code, text, _) = post_form(&host, &path, None, &so, "csrf=x").await;
        assert_eq!(code, 403, "{path}");
        assert!(text.contains("no http.admin_token_file"), "{text}");
    }
    let r = client()
        .post(format!("{}/api/v1/jobs/{ended}/rerun", host.url))
        .header("Authorization", "Bearer anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The page shows the commands, and neither buttons nor a sign-in link.
    let (_, shown) = page(&host, &format!("/jobs/{ended}"), None).await;
    assert!(
        shown.contains(&format!("sdci-host jobs rerun {ended} --from test")),
        "{shown}"
    );
    assert!(!shown.contains("<form class=\"act"), "{shown}");
    assert!(!shown.contains("Sign in"), "{shown}");
    assert_eq!(state(&host, &queued), JobState::Queued);
    assert_eq!(jobs_count(&host), before);
}

#[tokio::test]
async fn a_signed_in_operator_reruns_from_the_snapshot_and_is_refused_once_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), true).await;
    let id = finished_with_snapshot(&host, 1);
    let b = sign_in(&host, &id).await;
    let (_, shown) = page(&host, &format!("/jobs/{id}"), Some(&b.cookie)).await;
    for button in [
        "Re-run</button>",
        "Re-run tests</button>",
        "Sign out</button>",
    ] {
        assert!(shown.contains(button), "{button} missing:\n{shown}");
    }
    for absent in ["Cancel</button>", "Hold VM</button>", "Release VM</button>"] {
        assert!(
            !shown.contains(absent),
            "{absent} shown for an ended, unheld job"
        );
    }
    let so = [
        ("Origin", host.url.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let path = format!("/jobs/{id}/rerun");
    let form = format!("csrf={}&from=test", b.csrf);
    let (code, _, loc) = post_form(&host, &path, Some(&b.cookie), &so, &form).await;
    assert_eq!(code, 303);
    let new = loc.unwrap().strip_prefix("/jobs/").unwrap().to_owned();
    let link = host.hub.store.rerun_link(&new).unwrap().unwrap();
    assert_eq!(
        (link.origin.as_str(), link.from_stage.as_str()),
        (id.as_str(), "test")
    );
    let (_, new_page) = page(&host, &format!("/jobs/{new}"), Some(&b.cookie)).await;
    assert!(
        new_page.contains(&format!("queued job {new}, a re-run of {id}")),
        "{new_page}"
    );
    assert!(
        new_page.contains(&format!("href=\"/jobs/{id}\"")),
        "links its origin"
    );

    // The full re-run: a new job of the same commit.
    let (code, _, loc) = post_form(
        &host,
        &path,
        Some(&b.cookie),
        &so,
        &format!("csrf={}", b.csrf),
    )
    .await;
    assert_eq!(code, 303);
    let full = loc.unwrap().strip_prefix("/jobs/").unwrap().to_owned();
    let j = host.hub.store.job(&full).unwrap().unwrap();
    assert_eq!(j.sha, sha(1));
    assert!(host.hub.store.rerun_link(&full).unwrap().is_none());

    // Pruned: the refusal's text (the rule's own) on the job page, nothing queued.
    host.hub.store.stage_snapshot_removed(&id).unwrap();
    let before = jobs_count(&host);
    let (code, _, loc) = post_form(&host, &path, Some(&b.cookie), &so, &form).await;
    assert_eq!(
        (code, loc.as_deref()),
        (303, Some(format!("/jobs/{id}").as_str()))
    );
    assert_eq!(jobs_count(&host), before);
    let (_, shown) = page(&host, &format!("/jobs/{id}"), Some(&b.cookie)).await;
    assert!(shown.contains("class=\"refusal\""), "{shown}");
    assert!(
        shown.contains(&format!("cannot re-run job {id} from stage")),
        "{shown}"
    );
    assert!(
        !shown.contains("Re-run tests</button>"),
        "no button once the snapshot is gone"
    );
}

#[tokio::test]
async fn an_api_client_with_the_bearer_reruns_holds_releases_and_cancels_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), true).await;
    let ended = finished_with_snapshot(&host, 1);
    let queued = host.hub.store.insert_job(&new_job(2)).unwrap().to_string();
    let c = client();
    let call = |path: String| {
        c.post(format!("{}{path}", host.url))
            .bearer_auth(TOKEN)
            .send()
    };
    let r = call(format!("/api/v1/jobs/{ended}/rerun?from=test"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let new = v["job"].as_str().unwrap();
    assert_eq!(v["url"], format!("{}/jobs/{new}", host.url));
    assert_eq!(
        host.hub.store.rerun_link(new).unwrap().unwrap().origin,
        ended
    );

    let r = call(format!("/api/v1/jobs/{ended}/rerun?from=make-dev"))
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "only the stage after provision");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("cannot re-run"),
        "{v}"
    );

    // A hold asked for a job that has not ended: recorded as the web's, for 30 minutes.
    let r = call(format!("/api/v1/jobs/{queued}/hold?for=30m"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        host.hub.store.hold_request(&queued).unwrap(),
        Some(("web (operator)".to_owned(), 1800))
    );
    let r = call(format!("/api/v1/jobs/{queued}/release"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("withdrawn"), "{v}");
    let r = call(format!("/api/v1/jobs/{ended}/hold")).await.unwrap();
    assert_eq!(r.status(), 409, "an ended job whose VM was not kept on");

    let r = call(format!("/api/v1/jobs/{queued}/cancel")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(state(&host, &queued), JobState::Canceled);
    let r = call(format!("/api/v1/jobs/{queued}/cancel")).await.unwrap();
    assert_eq!(r.status(), 409, "already ended");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("already ended"),
        "{v}"
    );
    let r = call("/api/v1/jobs/20261201-000000-zzzz/cancel".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
