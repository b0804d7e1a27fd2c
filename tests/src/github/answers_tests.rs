//! The stand-in's answers as a client sees them over HTTP: GitHub's headers, check runs with
//! their recorded history and GitHub's token rules, collaborator permissions.

use super::{ChangeKind, GitHub, TEST_APP_PRIVATE_KEY};
use serde_json::{json, Value};

const REPO: &str = "freedomofpress/securedrop-workstation";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn standin() -> GitHub {
    let gh = GitHub::start();
    gh.add_repo(REPO);
    gh.set_app(7, 42, TEST_APP_PRIVATE_KEY);
    gh.add_installation_token(
        "ghs_checks",
        &["securedrop-workstation"],
        &[("checks", "write"), ("contents", "read")],
    );
    gh.add_installation_token(
        "ghs_read",
        &["securedrop-workstation"],
        &[("contents", "read")],
    );
    gh.add_pat("ghp_pat");
    gh
}

async fn call(
    gh: &GitHub,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), format!("{}{path}", gh.url()))
        .header("user-agent", "sdci-test")
        .header("accept", "application/vnd.github+json")
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_check_run_keeps_its_whole_history_from_queued_to_completed() {
    let gh = standin();
    let runs = format!("/repos/{REPO}/check-runs");
    let created = call(
        &gh,
        "POST",
        &runs,
        "ghs_checks",
        Some(
            json!({"name": "sdci / Qubes 4.2", "head_sha": SHA, "status": "queued",
                    "external_id": "job-1", "details_url": "http://127.0.0.1:1/jobs/job-1"}),
        ),
    )
    .await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = created.json().await.unwrap();
    let id = body["id"].as_u64().unwrap();
    assert_eq!(
        location,
        format!("{}/repos/{REPO}/check-runs/{id}", gh.url())
    );
    assert_eq!(body["status"], "queued");
    assert_eq!(body["conclusion"], Value::Null);
    assert_eq!(body["app"]["id"], 7);

    let run = format!("{runs}/{id}");
    let r = call(
        &gh,
        "PATCH",
        &run,
        "ghs_checks",
        Some(json!({"status": "in_progress", "started_at": "2026-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = call(
        &gh,
        "PATCH",
        &run,
        "ghs_checks",
        Some(json!({"conclusion": "success",
                    "output": {"title": "passed", "summary": "| step | result |"}})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(
        done["status"], "completed",
        "a conclusion completes the run"
    );
    assert!(done["completed_at"].is_string());

    let history = gh.check_run_history(id);
    let kinds: Vec<ChangeKind> = history.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Created,
            ChangeKind::Updated,
            ChangeKind::Updated
        ]
    );
    let statuses: Vec<&str> = history.iter().map(|c| c.after.status.as_str()).collect();
    assert_eq!(statuses, ["queued", "in_progress", "completed"]);
    assert_eq!(
        history[1].fields,
        json!({"status": "in_progress", "started_at": "2026-01-01T00:00:00Z"})
    );
    assert_eq!(
        history[2].after.output.as_ref().unwrap().summary.as_deref(),
        Some("| step | result |")
    );
    assert_eq!(
        history[2].after.external_id.as_deref(),
        Some("job-1"),
        "kept from the create"
    );

    let runs_now = gh.check_runs(REPO, SHA);
    assert_eq!(runs_now.len(), 1);
    assert_eq!(runs_now[0].conclusion.as_deref(), Some("success"));

    let list = call(
        &gh,
        "GET",
        &format!("/repos/{REPO}/commits/{SHA}/check-runs"),
        "ghs_checks",
        None,
    )
    .await;
    assert_eq!(list.status(), 200);
    let list: Value = list.json().await.unwrap();
    assert_eq!(list["total_count"], 1);
    assert_eq!(list["check_runs"][0]["id"], id);
    let got: Value = call(&gh, "GET", &run, "ghs_checks", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got, done);
}

#[tokio::test]
async fn completed_without_a_conclusion_is_refused_and_not_recorded() {
    let gh = standin();
    let r = call(
        &gh,
        "POST",
        &format!("/repos/{REPO}/check-runs"),
        "ghs_checks",
        Some(json!({"name": "sdci / Qubes 4.2", "head_sha": SHA, "status": "completed"})),
    )
    .await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Validation Failed");
    assert!(gh.check_runs(REPO, SHA).is_empty());
}

#[tokio::test]
async fn only_an_installation_token_with_checks_write_may_create_a_check_run() {
    let gh = standin();
    let body = json!({"name": "sdci / Qubes 4.2", "head_sha": SHA});
    let path = format!("/repos/{REPO}/check-runs");
    let pat = call(&gh, "POST", &path, "ghp_pat", Some(body.clone())).await;
    assert_eq!(pat.status(), 403);
    let pat: Value = pat.json().await.unwrap();
    assert_eq!(pat["message"], "You must authenticate via a GitHub App.");
    assert_eq!(pat["status"], "403");
    assert!(pat["documentation_url"].is_string());
    let read = call(&gh, "POST", &path, "ghs_read", Some(body.clone())).await;
    assert_eq!(read.status(), 403);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["message"], "Resource not accessible by integration");
    assert!(gh.check_runs(REPO, SHA).is_empty());
    assert_eq!(
        call(&gh, "POST", &path, "ghs_checks", Some(body))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn a_collaborators_permission_is_the_role_set_and_an_unknown_user_is_404() {
    let gh = standin();
    gh.set_permission(REPO, "maintainer", "maintain");
    gh.set_permission(REPO, "outsider", "none");
    let path = |u: &str| format!("/repos/{REPO}/collaborators/{u}/permission");
    let m: Value = call(&gh, "GET", &path("maintainer"), "ghs_read", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["permission"], "write", "GitHub's older name for maintain");
    assert_eq!(m["role_name"], "maintain");
    assert_eq!(m["user"]["login"], "maintainer");
    assert_eq!(m["user"]["permissions"]["push"], true);
    assert_eq!(m["user"]["permissions"]["admin"], false);
    let o: Value = call(&gh, "GET", &path("outsider"), "ghs_read", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(o["permission"], "none");
    let unknown = call(&gh, "GET", &path("nobody"), "ghs_read", None).await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn every_answer_carries_githubs_headers_and_a_get_an_etag_that_answers_304() {
    let gh = standin();
    gh.set_branch(REPO, "main", SHA);
    let path = format!("/repos/{REPO}/branches/main");
    let r = call(&gh, "GET", &path, "ghs_read", None).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "application/json; charset=utf-8");
    assert_eq!(h["x-ratelimit-limit"], "5000");
    assert_eq!(h["x-ratelimit-remaining"], "4999");
    assert_eq!(h["x-ratelimit-used"], "1");
    assert_eq!(h["x-ratelimit-resource"], "core");
    assert!(h["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert!(h.contains_key("x-github-request-id"));
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let again = reqwest::Client::new()
        .get(format!("{}{path}", gh.url()))
        .header("user-agent", "sdci-test")
        .header("if-none-match", &etag)
        .bearer_auth("ghs_read")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["x-ratelimit-remaining"], "4998");
    assert!(again.bytes().await.unwrap().is_empty());
    let missing = call(
        &gh,
        "GET",
        &format!("/repos/{REPO}/branches/nope"),
        "ghs_read",
        None,
    )
    .await;
    assert_eq!(missing.status(), 404);
    let err: Value = missing.json().await.unwrap();
    assert_eq!(
        err,
        json!({"message": "Branch not found",
        "documentation_url": "https://docs.github.com/rest", "status": "404"})
    );
}

#[tokio::test]
async fn a_wrong_request_body_the_stand_in_refuses_is_noted_and_one_it_accepts_is_a_violation() {
    let gh = standin();
    let r = call(
        &gh,
        "POST",
        &format!("/repos/{REPO}/statuses/{SHA}"),
        "ghp_pat",
        Some(json!({"state": "bogus"})),
    )
    .await;
    assert_eq!(r.status(), 422);
    let noted = gh.requests().pop().unwrap().openapi;
    assert_eq!(noted.len(), 1, "{noted:?}");
    assert!(
        noted[0].contains("request body of POST /repos/{owner}/{repo}/statuses/{sha}"),
        "{noted:?}"
    );
    assert!(gh.violations().is_empty(), "refused as GitHub refuses it");
    // The stand-in takes a null external_id; GitHub's description wants a string.
    let r = call(
        &gh,
        "POST",
        &format!("/repos/{REPO}/check-runs"),
        "ghs_checks",
        Some(json!({"name": "n", "head_sha": SHA, "external_id": null})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let v = gh.take_violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("/external_id"), "{v:?}");
}

#[test]
#[should_panic(expected = "does not allow")]
fn a_stand_in_that_saw_a_violation_fails_the_test_when_dropped() {
    let gh = standin();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(call(
        &gh,
        "POST",
        &format!("/repos/{REPO}/check-runs"),
        "ghs_checks",
        Some(json!({"name": "n", "head_sha": SHA, "external_id": null})),
    ));
    drop(gh);
}
