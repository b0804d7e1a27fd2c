//! What a webhook set up the GitHub way but not sdci's way gets (docs/operations.md, "The
//! webhook"): GitHub's default content type for a new webhook is form encoding, which is signed
//! like JSON; the host refuses it with 415 and a body saying what to change, and stores nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sdci_host::server::Parts;

#[tokio::test]
async fn a_form_encoded_delivery_gets_415_saying_to_set_the_content_type_to_json() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), "", MemoryHv::with_vms(&[]), Parts::HTTP_ONLY).await;
    let json = push_body("main", &sha(1));
    let body = format!("payload={}", json.replace('{', "%7B").replace('}', "%7D"));
    let r = reqwest::Client::new()
        .post(format!("{}/hooks/github", host.url))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "form-1")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header(
            "X-Hub-Signature-256",
            sdci_host::surface::webhook::sign(SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("set Content type to application/json"),
        "{text}"
    );
    assert_eq!(host.hub.store.count_jobs().unwrap(), 0);
    // The same push as JSON is taken.
    let (code, _) = deliver_push(&reqwest::Client::new(), &host.url, "json-1", "main", 1).await;
    assert_eq!(code, 202);
}
