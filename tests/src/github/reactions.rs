//! Reactions to issue and pull-request comments in the stand-in (`POST
//! /repos/{o}/{r}/issues/comments/{comment_id}/reactions`), as GitHub answers them: a token
//! that may write `issues` or `pull_requests` of the repository (a personal access token may);
//! `content` one of GitHub's eight; `201` for a new reaction, `200` with the same reaction when
//! this user already reacted so to that comment. Every comment id exists here (the stand-in
//! keeps no comments). Each accepted reaction is recorded ([`super::GitHub::reactions`]).

use super::{objects, Answer};
use serde_json::{json, Value};

/// GitHub's reaction contents.
pub const CONTENTS: [&str; 8] = [
    "+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes",
];

/// One reaction the stand-in accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub id: u64,
    pub repo: String,
    pub comment_id: u64,
    pub content: String,
    /// Who reacted: the App's bot (`sdci[bot]`) for an installation token, else `standin-user`.
    pub user: String,
    pub created_at: String,
}

/// The `reaction` object of an answer.
fn to_json(base: &str, r: &Reaction) -> Value {
    let kind = if r.user.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    };
    json!({
        "id": r.id, "node_id": objects::node_id("REA", r.id),
        "user": objects::simple_user(base, &r.user, kind),
        "content": r.content, "created_at": r.created_at
    })
}

/// Creates (or finds) `user`'s reaction `body.content` on comment `comment_id` of `repo`; the
/// caller has checked the token. `counter` gives a new reaction its id; `(base, now)` are the
/// stand-in's URL and the time.
pub(super) fn create(
    all: &mut Vec<Reaction>,
    counter: &mut u64,
    (base, now): (&str, &str),
    repo: &str,
    comment_id: &str,
    user: &str,
    body: &[u8],
) -> Answer {
    let Some(comment_id) = comment_id.parse::<u64>().ok().filter(|&n| n > 0) else {
        return super::message(404, "Not Found");
    };
    let content = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => return super::message(400, "Problems parsing JSON"),
    };
    let Some(content) = content.filter(|c| CONTENTS.contains(&c.as_str())) else {
        return super::validation_failed_for(
            "Reaction",
            "content",
            "invalid",
            "content is not included in the list",
        );
    };
    if let Some(r) = all.iter().find(|r| {
        r.repo == repo && r.comment_id == comment_id && r.content == content && r.user == user
    }) {
        return Answer::json(200, to_json(base, r));
    }
    let r = Reaction {
        id: {
            *counter += 1;
            *counter
        },
        repo: repo.to_owned(),
        comment_id,
        content,
        user: user.to_owned(),
        created_at: now.to_owned(),
    };
    let answer = Answer::json(201, to_json(base, &r));
    all.push(r);
    answer
}
