//! The cases, grouped by the part of the contract they check, and the
//! helpers they share.

use serde_json::{json, Value};

use crate::client::{random_name, Api, Resp};
use crate::User;

pub mod auth;
pub mod changes;
pub mod concurrency;
pub mod cors;
pub mod documents;
pub mod general;
pub mod head;
pub mod idempotency;
pub mod input;
pub mod isolation;
pub mod limits;
pub mod listing;
pub mod longpoll;
pub mod mutations;
pub mod preconditions;

/// `/v1/docs/{c}/{id}`.
pub fn doc_path(c: &str, id: &str) -> String {
    format!("/v1/docs/{c}/{id}")
}

/// A random valid collection name.
pub fn coll() -> String {
    format!("c{}", random_name(6))
}

/// A random valid document id.
pub fn doc_id() -> String {
    format!("d{}", random_name(8))
}

/// A strong ETag for `n`: `"n"`.
pub fn etag(n: u64) -> String {
    format!("\"{n}\"")
}

/// `updated_at` / `ts` format: RFC 3339 UTC with milliseconds,
/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (docs/protocol-decisions.md, "Documents").
pub fn is_rfc3339_millis(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 24 {
        return false;
    }
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
}

/// Assert that `doc` is the document representation of `c/id` at
/// `version` holding `value`.
#[track_caller]
pub fn assert_document(doc: &Value, c: &str, id: &str, version: u64, value: &Value) {
    let expected_keys = ["collection", "id", "version", "value", "updated_at"];
    let obj = doc
        .as_object()
        .unwrap_or_else(|| panic!("a document must be a JSON object, got {doc}"));
    for k in expected_keys {
        assert!(obj.contains_key(k), "document lacks `{k}`: {doc}");
    }
    assert_eq!(doc["collection"], json!(c), "document collection: {doc}");
    assert_eq!(doc["id"], json!(id), "document id: {doc}");
    assert_eq!(doc["version"], json!(version), "document version: {doc}");
    assert_eq!(&doc["value"], value, "document value: {doc}");
    let ts = doc["updated_at"].as_str().unwrap_or_default();
    assert!(
        is_rfc3339_millis(ts),
        "updated_at must be RFC 3339 UTC with milliseconds (2026-11-29T20:03:00.123Z), got {:?}",
        doc["updated_at"]
    );
}

/// The `version` of a document body, or of a changes/batch item.
#[track_caller]
pub fn version_of(v: &Value) -> u64 {
    v["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected a numeric `version` in {v}"))
}

/// `PUT` a JSON value; returns the response (any status).
pub async fn put(
    api: &Api<'_>,
    user: &User,
    c: &str,
    id: &str,
    value: &Value,
) -> anyhow::Result<Resp> {
    api.put(doc_path(c, id)).auth(user).json(value).send().await
}

/// `PUT` that must succeed (200/201); returns the new version.
pub async fn put_ok(
    api: &Api<'_>,
    user: &User,
    c: &str,
    id: &str,
    value: &Value,
) -> anyhow::Result<u64> {
    let r = put(api, user, c, id, value).await?.expect_in(&[200, 201]);
    Ok(version_of(&r.json()))
}

/// `GET /v1/head` for `user`.
pub async fn head(api: &Api<'_>, user: &User) -> anyhow::Result<u64> {
    let r = api.get("/v1/head").auth(user).send().await?.expect(200);
    let v = r.json();
    Ok(v["head"]
        .as_u64()
        .unwrap_or_else(|| panic!("/v1/head must answer {{\"head\":n}}, got {v}")))
}

/// One page of `/v1/changes?since=..&limit=..` (no wait); must be 200.
pub async fn changes_page(
    api: &Api<'_>,
    user: &User,
    since: u64,
    limit: u64,
) -> anyhow::Result<Value> {
    let r = api
        .get(format!("/v1/changes?since={since}&limit={limit}"))
        .auth(user)
        .send()
        .await?
        .expect(200);
    Ok(r.json())
}

/// Every change after `since` (following `next` until the head), checking
/// that seqs strictly increase across pages.
pub async fn all_changes(api: &Api<'_>, user: &User, since: u64) -> anyhow::Result<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    let mut cursor = since;
    for _ in 0..10_000 {
        let page = changes_page(api, user, cursor, 1000).await?;
        let entries = page["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("changes page without a `changes` array: {page}"))
            .clone();
        let next = page["next"]
            .as_u64()
            .unwrap_or_else(|| panic!("changes page without numeric `next`: {page}"));
        let head = page["head"]
            .as_u64()
            .unwrap_or_else(|| panic!("changes page without numeric `head`: {page}"));
        for e in &entries {
            let seq = e["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("entry without seq: {e}"));
            let last = out
                .last()
                .map(|l| l["seq"].as_u64().unwrap())
                .unwrap_or(cursor);
            assert!(
                seq > last,
                "changes must be strictly increasing by seq: {seq} after {last} (since={cursor})"
            );
        }
        out.extend(entries.iter().cloned());
        if entries.is_empty() {
            assert_eq!(
                next, cursor,
                "an empty page must have next == since ({cursor}): {page}"
            );
            assert!(
                head <= cursor || next >= head,
                "an empty page below the head ({head}) at since={cursor}: {page}"
            );
            return Ok(out);
        }
        cursor = next;
        if next >= head {
            return Ok(out);
        }
    }
    panic!("changes paging did not reach the head after 10000 pages");
}

/// Assert `user`'s head is still `expected` (nothing was logged) and the
/// document `c/id`, if given, has the status `doc_status` (200 or 404).
pub async fn assert_nothing_changed(
    api: &Api<'_>,
    user: &User,
    expected_head: u64,
    doc: Option<(&str, &str, u16)>,
    after: &str,
) -> anyhow::Result<()> {
    let h = head(api, user).await?;
    assert_eq!(
        h, expected_head,
        "after {after}: the head moved from {expected_head} to {h}, but a refused request must not change data"
    );
    let page = changes_page(api, user, expected_head, 10).await?;
    assert_eq!(
        page["changes"],
        json!([]),
        "after {after}: nothing may be logged, but /v1/changes?since={expected_head} has {page}"
    );
    if let Some((c, id, status)) = doc {
        let r = api.get(doc_path(c, id)).auth(user).send().await?;
        assert_eq!(
            r.status,
            status,
            "after {after}: GET {} should be {status}, got {} {}",
            doc_path(c, id),
            r.status,
            r.text()
        );
    }
    Ok(())
}

/// Assert the changes/head caching headers: `X-Poll-Interval` equal to the
/// target's setting and `Cache-Control: private, no-cache`.
#[track_caller]
pub fn assert_poll_headers(r: &Resp, poll_interval: u64) {
    let xpi = r.must_header("x-poll-interval");
    assert_eq!(
        xpi.trim(),
        poll_interval.to_string(),
        "{}: X-Poll-Interval must be the configured poll_interval_seconds",
        r.what
    );
    let cc: Vec<String> = r
        .header_tokens("cache-control")
        .into_iter()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    assert!(
        cc.contains(&"private".to_string()) && cc.contains(&"no-cache".to_string()),
        "{}: Cache-Control must be `private, no-cache`, got {cc:?}",
        r.what
    );
}

/// Seconds to sleep as `Duration`.
pub fn millis(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms)
}

/// Await futures concurrently on the current task, keeping their order.
pub async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> =
        futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    results
        .into_iter()
        .map(|r| r.expect("every future completed"))
        .collect()
}
