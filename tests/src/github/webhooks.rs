//! Webhook payloads as GitHub sends them: [`validate`] checks a payload against the schema of
//! its event and action in `@octokit/openapi-webhooks` (the one check every sender of test
//! webhooks goes through: `job_world`'s and `job_page`'s pushes, `host/tests/common`'s
//! `push_body`, `job_world::check_events`), and [`push`] builds a complete `push` payload.
//!
//! The description names each webhook `<event>-<action>` with `_` written `-`
//! (`check_run` + `requested_action` → `check-run-requested-action`); an event without actions
//! (`push`, `ping`) is its own name. Without the npm packages this fails with "run
//! scripts/install-deps".

use super::objects;
use super::openapi::{webhook_pointer, webhooks};
use serde_json::{json, Value};

/// The description's name of the webhook of `event` (the `X-GitHub-Event` header) and
/// `action` (the payload's `action`, if the event has actions).
pub fn key(event: &str, action: Option<&str>) -> String {
    let event = event.replace('_', "-");
    match action {
        Some(a) => format!("{event}-{}", a.replace('_', "-")),
        None => event,
    }
}

/// Checks `payload` against the schema of webhook `event` / `action`. `Err` names the webhook
/// and every way the payload differs from what GitHub sends.
pub fn validate(event: &str, action: Option<&str>, payload: &Value) -> Result<(), String> {
    let d = webhooks()?;
    let key = key(event, action);
    let pointer = webhook_pointer(&key);
    if !d.has(&pointer) {
        return Err(format!(
            "GitHub sends no webhook {key} (event {event:?}, action {action:?})"
        ));
    }
    d.validate_at(&pointer, payload)
        .map_err(|e| format!("the {key} payload is not what GitHub sends: {e}"))
}

/// As [`validate`], with the action read from the payload's `action` field; panics with the
/// differences (for the tests' senders, where a wrong payload is a bug of the test).
pub fn assert_valid(event: &str, payload: &Value) {
    let action = payload.get("action").and_then(Value::as_str);
    if let Err(e) = validate(event, action, payload) {
        panic!("{e}");
    }
}

/// A `push` of `after` (previously `before`) to `branch` of `repo` (`owner/name`), as GitHub
/// sends it: the repository with GitHub's URLs under `https://github.com` (the host reads only
/// `full_name`; nothing fetches them), `pusher` and `sender`, and one commit. `after` all zeros
/// is a deleted branch (`deleted: true`, no commits, no head commit).
pub fn push(repo: &str, branch: &str, before: &str, after: &str) -> Value {
    const WEB: &str = "https://github.com";
    let (owner, _) = repo.split_once('/').unwrap_or((repo, repo));
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let deleted = zero(after);
    let mut repository = objects::repository(WEB, repo);
    // A push's repository writes its times as Unix seconds and its owner with name and email.
    repository["created_at"] = json!(1_704_067_200);
    repository["pushed_at"] = json!(1_704_067_200);
    repository["owner"]["name"] = json!(owner);
    repository["owner"]["email"] = Value::Null;
    repository["stargazers"] = json!(0);
    repository["master_branch"] = json!("main");
    let who = json!({"name": "SecureDrop Developer", "email": "dev@securedrop.invalid",
                     "username": "sd-dev"});
    let commit = json!({
        "id": after, "tree_id": after, "distinct": true,
        "message": "A commit the tests pushed", "timestamp": "2024-01-01T00:00:00Z",
        "url": format!("{WEB}/{repo}/commit/{after}"),
        "author": who, "committer": who,
        "added": [], "removed": [], "modified": ["README.md"]
    });
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before, "after": after,
        "repository": repository,
        "pusher": {"name": "sd-dev", "email": "dev@securedrop.invalid"},
        "sender": objects::simple_user(WEB, "sd-dev", "User"),
        "created": zero(before), "deleted": deleted, "forced": false, "base_ref": null,
        "compare": format!("{WEB}/{repo}/compare/{}...{}", &before[..before.len().min(12)],
                           &after[..after.len().min(12)]),
        "commits": if deleted { json!([]) } else { json!([commit.clone()]) },
        "head_commit": if deleted { Value::Null } else { commit }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "freedomofpress/securedrop-workstation";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const ZERO: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn a_push_and_a_deleted_branch_are_what_github_sends() {
        validate("push", None, &push(REPO, "main", ZERO, SHA)).unwrap();
        let deleted = push(REPO, "main", SHA, ZERO);
        assert_eq!(deleted["deleted"], true);
        validate("push", None, &deleted).unwrap();
    }

    #[test]
    fn a_payload_github_would_not_send_is_rejected_with_its_differences() {
        // The minimal push the tests sent before payloads were checked.
        let thin = json!({"ref": "refs/heads/main", "after": SHA, "deleted": false,
                          "repository": {"full_name": REPO}});
        let err = validate("push", None, &thin).unwrap_err();
        assert!(
            err.contains("the push payload is not what GitHub sends"),
            "{err}"
        );
        assert!(err.contains("before"), "{err}");
        let mut wrong_type = push(REPO, "main", ZERO, SHA);
        wrong_type["forced"] = json!("no");
        let err = validate("push", None, &wrong_type).unwrap_err();
        assert!(err.contains("/forced"), "{err}");
    }

    #[test]
    fn an_event_and_action_github_does_not_have_is_refused() {
        let err = validate("check_run", Some("exploded"), &json!({})).unwrap_err();
        assert!(err.contains("no webhook check-run-exploded"), "{err}");
        assert_eq!(
            key("check_run", Some("requested_action")),
            "check-run-requested-action"
        );
    }
}
