//! The host's event ingest as both sides see it (CONTRACTS.md §1): where the agent sends the
//! job's NDJSON events ([`crate::event`]) and the one reply the host gives, [`NextSeq`].
//!
//! `POST {event_url}` with `Authorization: Bearer <event secret>` and a body of
//! [`CONTENT_TYPE`] lines: `seq < next` is a duplicate, `seq == next` is appended, a gap ends
//! the request with `409 {"next_seq":N}`; the end of the body gets `200 {"next_seq":N}`.
//! `GET {event_url}` answers `200 {"next_seq":N}`: where to resume after a broken connection.

use crate::ids::JobId;
use crate::ProtocolError;
use serde::{Deserialize, Serialize};

/// The body's media type.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// The ingest's route on the host, in axum's path syntax.
pub const EVENTS_ROUTE: &str = "/api/v1/jobs/{id}/events";

/// The job's event URL under the host's public base URL (no trailing `/`), the value of
/// [`crate::AgentJob::event_url`].
pub fn event_url(public_base: &str, id: &JobId) -> String {
    format!("{public_base}{}", EVENTS_ROUTE.replace("{id}", id.as_str()))
}

/// The ingest's reply to `POST` (200 or 409) and `GET`: `{"next_seq":N}`, the `seq` of the
/// first event the host does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextSeq {
    pub next_seq: u64,
}

impl NextSeq {
    pub fn new(next_seq: u64) -> Self {
        Self { next_seq }
    }

    pub fn to_json(&self) -> String {
        format!("{{\"next_seq\":{}}}", self.next_seq)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_is_one_object_with_next_seq() {
        assert_eq!(NextSeq::new(42).to_json(), r#"{"next_seq":42}"#);
        assert_eq!(
            serde_json::to_string(&NextSeq::new(42)).unwrap(),
            NextSeq::new(42).to_json()
        );
        assert_eq!(
            NextSeq::from_json(br#"{"next_seq": 7}"#).unwrap(),
            NextSeq::new(7)
        );
    }

    #[test]
    fn a_reply_without_a_readable_next_seq_is_refused() {
        for bad in [
            &b"{}"[..],
            br#"{"next_seq":-1}"#,
            br#"{"next_seq":"3"}"#,
            b"3",
            b"",
        ] {
            assert!(NextSeq::from_json(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_event_url_is_the_route_under_the_public_base() {
        let id: JobId = "job-1".parse().unwrap();
        assert_eq!(
            event_url("https://ci.example", &id),
            "https://ci.example/api/v1/jobs/job-1/events"
        );
    }
}
