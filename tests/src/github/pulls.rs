//! Pull requests in the stand-in (`GET /repos/{o}/{r}/pulls/{pull_number}`), as GitHub answers
//! them: a token that may read `pull_requests` of the repository (a personal access token may;
//! GitHub documents "Pull requests" repository permission (read) for this endpoint), `200`
//! with the `pull-request` object, `404` for a number the test never set. The test sets what
//! matters to a CI ([`PullRequest`]: the head commit, the head repository, a fork's or not, the
//! author, open or closed) with [`super::GitHub::set_pull`]; everything else is GitHub's shape
//! with fixed values ([`super::objects::pull_request`]).

use super::{authorize, message, objects, Answer, Inner};
use axum::http::HeaderMap;

/// What a test says about one pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The head commit (40 hex digits).
    pub head_sha: String,
    /// The head branch (`feature`).
    pub head_ref: String,
    /// The head repository's full name: the base repository itself, or a fork.
    pub head_repo: String,
    /// The author's login.
    pub user: String,
    /// `open` or `closed`.
    pub state: String,
    pub title: String,
}

impl PullRequest {
    /// An open pull request from branch `head_ref` of `head_repo` at `head_sha` by `user`.
    pub fn open(head_repo: &str, head_ref: &str, head_sha: &str, user: &str) -> Self {
        Self {
            head_sha: head_sha.to_owned(),
            head_ref: head_ref.to_owned(),
            head_repo: head_repo.to_owned(),
            user: user.to_owned(),
            state: "open".into(),
            title: "A change".into(),
        }
    }
}

/// `GET /repos/{o}/{r}/pulls/{pull_number}`.
pub(super) fn get(inner: &Inner, repo: &str, number: &str, headers: &HeaderMap) -> Answer {
    let Some(r) = inner.repos.get(repo) else {
        return message(404, "Not Found");
    };
    if let Err(a) = authorize(inner, headers, repo, "pull_requests", "read") {
        return *a;
    }
    let Some((n, pr)) = number
        .parse::<u64>()
        .ok()
        .and_then(|n| r.pulls.get(&n).map(|p| (n, p)))
    else {
        return message(404, "Not Found");
    };
    Answer::json(200, objects::pull_request(&inner.base, repo, n, pr))
}
