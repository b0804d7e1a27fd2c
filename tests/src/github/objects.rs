//! GitHub's JSON objects as the REST API (2022-11-28) writes them: every field the OpenAPI
//! description (`@octokit/openapi`, `api.github.com.json`) marks required, with its type, so
//! typed clients (octocrab's models) decode the stand-in's answers as they decode GitHub's.
//!
//! URLs point at the stand-in's own base (`base`, e.g. `http://127.0.0.1:40123`), never at
//! github.com: a client that follows one stays on loopback. Web pages (`html_url`) use the same
//! base without the `/repos` prefix, as github.com does relative to api.github.com.

use serde_json::{json, Value};

/// A stable, positive id for a name (users, repositories, apps), so the same login always has
/// the same `id` within and across stand-ins.
pub fn id_of(name: &str) -> u64 {
    // FNV-1a, folded into 31 bits (GitHub's ids fit in a JavaScript number).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & 0x7fff_ffff).max(1)
}

/// `node_id` as GitHub's global ids look (a type prefix and an opaque tail).
pub fn node_id(prefix: &str, id: u64) -> String {
    format!("{prefix}_kgDO{id:08X}")
}

/// `simple-user`: `kind` is `User`, `Bot` or `Organization`.
pub fn simple_user(base: &str, login: &str, kind: &str) -> Value {
    let id = id_of(login);
    // GitHub escapes a bot's brackets in its URLs: `/users/sdci%5Bbot%5D`.
    let path = login.replace('[', "%5B").replace(']', "%5D");
    let u = format!("{base}/users/{path}");
    json!({
        "login": login, "id": id, "node_id": node_id("U", id),
        "avatar_url": format!("{base}/avatars/u/{id}?v=4"), "gravatar_id": "",
        "url": u, "html_url": format!("{base}/{path}"),
        "followers_url": format!("{u}/followers"),
        "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"),
        "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"),
        "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"),
        "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"),
        "type": kind, "user_view_type": "public", "site_admin": false
    })
}

/// The stand-in's GitHub App (`integration`), the `app` of every check run it creates.
pub fn integration(base: &str, app_id: u64, owner: &str) -> Value {
    json!({
        "id": app_id, "slug": "sdci", "client_id": format!("Iv1.{app_id:016x}"),
        "node_id": node_id("A", app_id), "owner": simple_user(base, owner, "Organization"),
        "name": "sdci", "description": "SecureDrop Workstation CI",
        "external_url": "https://sdci.invalid", "html_url": format!("{base}/apps/sdci"),
        "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
        "permissions": {"checks": "write", "contents": "read", "metadata": "read",
                        "statuses": "write"},
        "events": ["check_run", "check_suite", "pull_request", "push"]
    })
}

/// `repository` (the full object, as in an installation token's `repositories`).
pub fn repository(base: &str, full_name: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
    let id = id_of(full_name);
    let a = format!("{base}/repos/{full_name}");
    let h = format!("{base}/{full_name}");
    let mut repo = json!({
        "id": id, "node_id": node_id("R", id), "name": name, "full_name": full_name,
        "owner": simple_user(base, owner, "Organization"), "private": false,
        "html_url": h, "description": null, "fork": false, "url": a,
        "git_url": format!("git://sdci.invalid/{full_name}.git"),
        "ssh_url": format!("git@sdci.invalid:{full_name}.git"),
        "clone_url": format!("{h}.git"), "mirror_url": null, "svn_url": h,
        "homepage": null, "language": null, "forks_count": 0, "forks": 0,
        "stargazers_count": 0, "watchers_count": 0, "watchers": 0, "size": 0,
        "default_branch": "main", "open_issues_count": 0, "open_issues": 0,
        "is_template": false, "topics": [], "has_issues": true, "has_projects": true,
        "has_wiki": true, "has_pages": false, "has_downloads": true, "has_discussions": false,
        "archived": false, "disabled": false, "visibility": "public",
        "pushed_at": "2024-01-01T00:00:00Z", "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z", "license": null
    });
    // The API URLs: `<name>_url` = the repository's API URL + the suffix.
    const URLS: &[(&str, &str)] = &[
        ("archive", "/{archive_format}{/ref}"),
        ("assignees", "/assignees{/user}"),
        ("blobs", "/git/blobs{/sha}"),
        ("branches", "/branches{/branch}"),
        ("collaborators", "/collaborators{/collaborator}"),
        ("comments", "/comments{/number}"),
        ("commits", "/commits{/sha}"),
        ("compare", "/compare/{base}...{head}"),
        ("contents", "/contents/{+path}"),
        ("contributors", "/contributors"),
        ("deployments", "/deployments"),
        ("downloads", "/downloads"),
        ("events", "/events"),
        ("forks", "/forks"),
        ("git_commits", "/git/commits{/sha}"),
        ("git_refs", "/git/refs{/sha}"),
        ("git_tags", "/git/tags{/sha}"),
        ("hooks", "/hooks"),
        ("issue_comment", "/issues/comments{/number}"),
        ("issue_events", "/issues/events{/number}"),
        ("issues", "/issues{/number}"),
        ("keys", "/keys{/key_id}"),
        ("labels", "/labels{/name}"),
        ("languages", "/languages"),
        ("merges", "/merges"),
        ("milestones", "/milestones{/number}"),
        ("notifications", "/notifications{?since,all,participating}"),
        ("pulls", "/pulls{/number}"),
        ("releases", "/releases{/id}"),
        ("stargazers", "/stargazers"),
        ("statuses", "/statuses/{sha}"),
        ("subscribers", "/subscribers"),
        ("subscription", "/subscription"),
        ("tags", "/tags"),
        ("teams", "/teams"),
        ("trees", "/git/trees{/sha}"),
    ];
    if let Some(r) = repo.as_object_mut() {
        for (name, suffix) in URLS {
            r.insert(format!("{name}_url"), Value::String(format!("{a}{suffix}")));
        }
    }
    repo
}

/// `commit` (as in a branch): `message` is what the stand-in knows of the commit (nothing).
pub fn commit(base: &str, repo: &str, sha: &str) -> Value {
    let a = format!("{base}/repos/{repo}");
    let who = json!({"name": "sdci", "email": "sdci@example.invalid",
                     "date": "2024-01-01T00:00:00Z"});
    json!({
        "url": format!("{a}/commits/{sha}"), "sha": sha,
        "node_id": node_id("C", id_of(sha)), "html_url": format!("{base}/{repo}/commit/{sha}"),
        "comments_url": format!("{a}/commits/{sha}/comments"),
        "commit": {
            "url": format!("{a}/git/commits/{sha}"), "author": who, "committer": who,
            "message": "", "comment_count": 0,
            "tree": {"sha": sha, "url": format!("{a}/git/trees/{sha}")},
            "verification": {"verified": false, "reason": "unsigned", "payload": null,
                             "signature": null, "verified_at": null}
        },
        "author": null, "committer": null, "parents": []
    })
}

/// `branch-with-protection` for an unprotected branch.
pub fn branch(base: &str, repo: &str, name: &str, sha: &str) -> Value {
    let a = format!("{base}/repos/{repo}/branches/{name}");
    json!({
        "name": name, "commit": commit(base, repo, sha),
        "_links": {"self": a, "html": format!("{base}/{repo}/tree/{name}")},
        "protected": false,
        "protection": {"enabled": false, "required_status_checks": {
            "enforcement_level": "off", "contexts": [], "checks": []}},
        "protection_url": format!("{a}/protection")
    })
}

/// `git-ref` of `refs/{r}` (e.g. `heads/main`).
pub fn git_ref(base: &str, repo: &str, r: &str, sha: &str) -> Value {
    let a = format!("{base}/repos/{repo}/git");
    json!({
        "ref": format!("refs/{r}"), "node_id": node_id("REF", id_of(&format!("{repo}/{r}"))),
        "url": format!("{a}/refs/{r}"),
        "object": {"type": "commit", "sha": sha, "url": format!("{a}/commits/{sha}")}
    })
}

/// `content-file` with `content` already in GitHub's wrapped base64.
pub fn content_file(
    base: &str,
    repo: &str,
    path: &str,
    reference: &str,
    size: usize,
    blob: &str,
    content: &str,
) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    let self_url = format!("{base}/repos/{repo}/contents/{path}?ref={reference}");
    let git_url = format!("{base}/repos/{repo}/git/blobs/{blob}");
    let html_url = format!("{base}/{repo}/blob/{reference}/{path}");
    json!({
        "type": "file", "encoding": "base64", "size": size, "name": name, "path": path,
        "content": content, "sha": blob, "url": self_url, "git_url": git_url,
        "html_url": html_url, "download_url": format!("{base}/raw/{repo}/{reference}/{path}"),
        "_links": {"self": self_url, "git": git_url, "html": html_url}
    })
}

/// `pull-request` (`GET /repos/{o}/{r}/pulls/{n}`): head and base as the test set them, the
/// rest fixed (no labels, nobody assigned, not merged). A fork's head repository says `fork`.
pub fn pull_request(base: &str, repo: &str, number: u64, pr: &super::pulls::PullRequest) -> Value {
    let a = format!("{base}/repos/{repo}");
    let api = format!("{a}/pulls/{number}");
    let html = format!("{base}/{repo}/pull/{number}");
    let issue = format!("{a}/issues/{number}");
    let statuses = format!("{a}/statuses/{}", pr.head_sha);
    let side = |full_name: &str, r: &str, sha: &str| {
        let owner = full_name.split_once('/').map_or(full_name, |(o, _)| o);
        let mut repo_obj = repository(base, full_name);
        repo_obj["fork"] = json!(full_name != repo);
        json!({"label": format!("{owner}:{r}"), "ref": r, "sha": sha,
               "user": simple_user(base, owner, "Organization"), "repo": repo_obj})
    };
    let link = |h: &str| json!({"href": h});
    let id = id_of(&format!("{repo}#{number}"));
    let closed = pr.state == "closed";
    let mut v = json!({
        "url": api, "id": id, "node_id": node_id("PR", id), "html_url": html,
        "diff_url": format!("{html}.diff"), "patch_url": format!("{html}.patch"),
        "issue_url": issue, "commits_url": format!("{api}/commits"),
        "review_comments_url": format!("{api}/comments"),
        "review_comment_url": format!("{a}/pulls/comments{{/number}}"),
        "comments_url": format!("{issue}/comments"), "statuses_url": statuses,
        "number": number, "state": pr.state, "locked": false, "title": pr.title,
        "user": simple_user(base, &pr.user, "User"), "body": null, "labels": [],
        "milestone": null, "active_lock_reason": null,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "closed_at": if closed { json!("2026-01-02T00:00:00Z") } else { Value::Null },
        "merged_at": null, "merge_commit_sha": null, "assignee": null, "assignees": [],
        "requested_reviewers": [], "requested_teams": []
    });
    // In two parts: one `json!` of every field is deeper than the macro's recursion limit.
    let rest = json!({
        "head": side(&pr.head_repo, &pr.head_ref, &pr.head_sha),
        "base": side(repo, "main", &"0".repeat(40)),
        "_links": {
            "self": link(&api), "html": link(&html), "issue": link(&issue),
            "comments": link(&format!("{issue}/comments")),
            "review_comments": link(&format!("{api}/comments")),
            "review_comment": link(&format!("{a}/pulls/comments{{/number}}")),
            "commits": link(&format!("{api}/commits")), "statuses": link(&statuses)
        },
        "author_association": "CONTRIBUTOR", "auto_merge": null, "draft": false,
        "merged": false, "mergeable": null, "rebaseable": null, "mergeable_state": "unknown",
        "merged_by": null, "comments": 0, "review_comments": 0, "maintainer_can_modify": false,
        "commits": 1, "additions": 1, "deletions": 0, "changed_files": 1
    });
    if let (Some(o), Value::Object(r)) = (v.as_object_mut(), rest) {
        o.extend(r);
    }
    v
}
