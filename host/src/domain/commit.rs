//! [`CommitInfo`]: who wrote the tested commit and what it says, as the webhook told the host.
//!
//! Filled by the webhook intake in the delivery's own transaction (`jobs.commit_author`,
//! `jobs.commit_subject`), shown on job pages and in Slack messages. Untrusted text: every
//! surface escapes it for its own medium.

/// Who wrote a commit and what it says, when the host knows it (from the webhook).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitInfo {
    pub author: Option<String>,
    /// The first line of the commit message (or a pull request's title).
    pub subject: Option<String>,
}

impl CommitInfo {
    /// From a push's head commit: the author's name (else their GitHub username) and the first
    /// line of the message. The webhook intake reads the same fields with typed structs.
    pub fn from_commit(name: Option<&str>, username: Option<&str>, message: Option<&str>) -> Self {
        Self {
            author: name.or(username).map(str::to_owned),
            subject: message.and_then(|m| m.lines().next()).map(str::to_owned),
        }
    }

    /// From a GitHub `push` or `pull_request` payload: the head commit's author and the first
    /// line of its message, or the pull request's author and title.
    pub fn from_payload(event: &str, payload: &serde_json::Value) -> Self {
        let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        match event {
            "push" => {
                let c = &payload["head_commit"];
                Self::from_commit(
                    c["author"]["name"].as_str(),
                    c["author"]["username"].as_str(),
                    c["message"].as_str(),
                )
            }
            "pull_request" => {
                let pr = &payload["pull_request"];
                Self {
                    author: s(&pr["user"]["login"]),
                    subject: s(&pr["title"]),
                }
            }
            _ => Self::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_info_comes_from_push_and_pull_request_payloads() {
        let push = serde_json::json!({"head_commit": {"message": "First line\n\nbody",
            "author": {"name": "Ada", "username": "ada"}}});
        assert_eq!(
            CommitInfo::from_payload("push", &push),
            CommitInfo {
                author: Some("Ada".into()),
                subject: Some("First line".into())
            }
        );
        let pr = serde_json::json!({"pull_request": {"title": "T", "user": {"login": "bob"}}});
        assert_eq!(
            CommitInfo::from_payload("pull_request", &pr)
                .author
                .as_deref(),
            Some("bob")
        );
    }
}
