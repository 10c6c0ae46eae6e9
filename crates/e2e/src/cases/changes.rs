//! `GET /v1/changes`: entries, paging, cursors, compaction, conditional
//! requests and `Prefer: wait`.

use serde_json::{json, Value};

use super::*;
use crate::Target;

/// Write `n` documents `{c}/{prefix}{i}` with plain PUTs (a few at a time);
/// returns their versions in order of `i`.
pub async fn write_many(
    api: &Api<'_>,
    u: &User,
    c: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut versions = Vec::with_capacity(n);
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for chunk in ids.chunks(4) {
        let futs = chunk
            .iter()
            .map(|id| async move { put_ok(api, u, c, id, &json!({"id": id})).await });
        for v in join_all(futs).await {
            versions.push(v?);
        }
    }
    Ok(versions)
}

#[track_caller]
fn assert_entry(e: &Value, seq: u64, op: &str, c: &str, id: &str, value: &Value) {
    let obj = e
        .as_object()
        .unwrap_or_else(|| panic!("entry must be an object: {e}"));
    for k in ["seq", "op", "collection", "id", "version", "value", "ts"] {
        assert!(obj.contains_key(k), "change entry lacks `{k}`: {e}");
    }
    assert_eq!(e["seq"], json!(seq), "entry seq: {e}");
    assert_eq!(e["version"], json!(seq), "entry version == seq: {e}");
    assert_eq!(e["op"], json!(op), "entry op: {e}");
    assert_eq!(e["collection"], json!(c), "entry collection: {e}");
    assert_eq!(e["id"], json!(id), "entry id: {e}");
    assert_eq!(
        &e["value"], value,
        "entry value (the whole document value after the change): {e}"
    );
    assert!(
        is_rfc3339_millis(e["ts"].as_str().unwrap_or_default()),
        "entry ts must be RFC 3339 UTC with milliseconds: {e}"
    );
}

/// Entries are ascending by seq with the documented members; `next`,
/// `head`, `ETag: "<next>"`, `X-Poll-Interval` and `Cache-Control`.
pub async fn entries_have_the_contract_shape(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    // A fresh user: head 0, empty log.
    let r = api.get("/v1/changes").auth(&u).send().await?.expect(200);
    assert_eq!(
        r.json(),
        json!({"changes": [], "next": 0, "head": 0}),
        "fresh user's log (since defaults to 0)"
    );
    assert_eq!(r.etag(), etag(0));
    assert_poll_headers(&r, t.settings.poll_interval_seconds);

    let (a, b) = (coll(), coll());
    put_ok(&api, &u, &a, "x", &json!({"n": 1})).await?;
    put_ok(&api, &u, &b, "y", &json!([1])).await?;
    api.patch(doc_path(&a, "x"))
        .auth(&u)
        .merge_patch(&json!({"m": 2}))
        .send()
        .await?
        .expect(200);
    api.delete(doc_path(&b, "y"))
        .auth(&u)
        .send()
        .await?
        .expect(204);
    put_ok(&api, &u, &b, "y", &Value::Null).await?;

    let r = api
        .get("/v1/changes?since=0")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    let ct = r.must_header("content-type");
    assert!(
        ct.starts_with("application/json"),
        "changes are JSON, got {ct}"
    );
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    let page = r.json();
    let entries = page["changes"].as_array().expect("changes array");
    assert_eq!(entries.len(), 5, "five mutations, five entries: {page}");
    assert_entry(&entries[0], 1, "put", &a, "x", &json!({"n": 1}));
    assert_entry(&entries[1], 2, "put", &b, "y", &json!([1]));
    assert_entry(&entries[2], 3, "put", &a, "x", &json!({"n": 1, "m": 2}));
    assert_entry(&entries[3], 4, "delete", &b, "y", &Value::Null);
    assert_entry(&entries[4], 5, "put", &b, "y", &Value::Null);
    assert_eq!(page["next"], json!(5), "next is the last entry's seq");
    assert_eq!(page["head"], json!(5));
    assert_eq!(r.etag(), etag(5), "ETag: \"<next>\"");

    // From the middle.
    let r = api
        .get("/v1/changes?since=3")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    let page = r.json();
    let seqs: Vec<u64> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5], "since=3 returns what follows 3");
    // At the head: empty, next == since.
    let r = api
        .get("/v1/changes?since=5")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert_eq!(r.json(), json!({"changes": [], "next": 5, "head": 5}));
    assert_eq!(r.etag(), etag(5));
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    Ok(())
}

/// `limit` pages the log (`next` chains pages, `head` stays the latest);
/// the default limit is 100 and 1000 is accepted.
pub async fn paging_with_limit_and_next(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let n = 105;
    write_many(&api, &u, &c, "d", n).await?;
    let r = api
        .get("/v1/changes?since=0")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    let page = r.json();
    assert_eq!(
        page["changes"].as_array().unwrap().len(),
        100,
        "default limit is 100"
    );
    assert_eq!(page["next"], json!(100));
    assert_eq!(
        page["head"],
        json!(n),
        "`head` is the latest seq ({n} writes acknowledged), also on a page cut short by the limit"
    );
    assert_eq!(r.etag(), etag(100));

    let mut since = 0;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let page = changes_page(&api, &u, since, 7).await?;
        let entries = page["changes"].as_array().unwrap();
        assert!(entries.len() <= 7, "limit=7 returned {}", entries.len());
        assert_eq!(page["head"], json!(n), "head while paging");
        if entries.is_empty() {
            assert_eq!(page["next"], json!(since));
            break;
        }
        for e in entries {
            seen.push(e["seq"].as_u64().unwrap());
        }
        let next = page["next"].as_u64().unwrap();
        assert_eq!(next, *seen.last().unwrap(), "next == last seq returned");
        since = next;
    }
    assert_eq!(
        seen,
        (1..=n as u64).collect::<Vec<_>>(),
        "paging sees every seq once, in order, without gaps"
    );
    let page = changes_page(&api, &u, 0, 1000).await?;
    assert_eq!(page["changes"].as_array().unwrap().len(), n);
    let page = changes_page(&api, &u, 104, 1).await?;
    assert_eq!(page["changes"].as_array().unwrap().len(), 1);
    assert_eq!(page["next"], json!(105));
    Ok(())
}

/// Bad `since`/`limit`/`wait` (negative, non-numeric, fractional, empty,
/// out of range, overflowing) are 400 `invalid-parameter` naming the
/// parameter, on changes and never change data.
pub async fn bad_parameters_are_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    put_ok(&api, &u, &c, &id, &json!(1)).await?;
    let huge = "99999999999999999999999";
    let cases: Vec<(String, &str)> = vec![
        ("since=-1".into(), "since"),
        ("since=abc".into(), "since"),
        ("since=1.5".into(), "since"),
        ("since=".into(), "since"),
        (format!("since={huge}"), "since"),
        ("since=0x1".into(), "since"),
        ("since=%201".into(), "since"),
        ("limit=0".into(), "limit"),
        ("limit=1001".into(), "limit"),
        ("limit=-1".into(), "limit"),
        ("limit=ten".into(), "limit"),
        ("limit=".into(), "limit"),
        (format!("limit={huge}"), "limit"),
        ("wait=-1".into(), "wait"),
        ("wait=soon".into(), "wait"),
        ("wait=1.5".into(), "wait"),
        ("wait=".into(), "wait"),
        (format!("wait={huge}"), "wait"),
        // Which of two values counts differs between servers and proxies.
        ("since=1&since=0".into(), "since"),
        ("wait=0&limit=5&wait=1".into(), "wait"),
        ("limit=5&%6cimit=5".into(), "limit"),
    ];
    for (query, param) in cases {
        let path = format!("/v1/changes?{query}");
        let r = api.get(path.clone()).auth(&u).send().await?;
        let p = r.expect_problem(400, "invalid-parameter");
        assert_eq!(
            p["parameter"],
            json!(param),
            "GET {path}: `parameter` must name it: {p}"
        );
    }
    for prefer in ["wait=soon", "wait=-3", "wait="] {
        let r = api
            .get("/v1/changes?since=1")
            .auth(&u)
            .header("Prefer", prefer)
            .send()
            .await?;
        let p = r.expect_problem(400, "invalid-parameter");
        assert!(
            p["parameter"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case("prefer"),
            "Prefer: {prefer}: the problem must name Prefer: {p}"
        );
    }
    // Other preferences are ignored (RFC 7240), whatever their quoted
    // values hold; so are unknown query parameters (a cache-buster's
    // value included, even one that does not decode).
    for prefer in ["return=minimal", r#"foo="x,wait=soon""#] {
        let r = api
            .get("/v1/changes?since=1")
            .auth(&u)
            .header("Prefer", prefer)
            .send()
            .await?
            .expect(200);
        assert_eq!(
            r.header("preference-applied"),
            None,
            "Prefer: {prefer} applies nothing"
        );
    }
    api.get("/v1/changes?since=1&_=%FF")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert_nothing_changed(&api, &u, 1, Some((&c, &id, 200)), "bad changes parameters").await
}

/// `since` beyond the head is 409 `cursor-ahead` with `head`, whatever the
/// `wait`; the poll headers are there too (checked last, so a missing
/// header is reported only once the status and body are right).
pub async fn cursor_ahead_is_409(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    for q in ["since=1", "since=1&wait=1", "since=18446744073709551615"] {
        let r = api.get(format!("/v1/changes?{q}")).auth(&u).send().await?;
        let p = r.expect_problem(409, "cursor-ahead");
        assert_eq!(p["head"], json!(0), "cursor-ahead carries the head: {p}");
    }
    put_ok(&api, &u, &coll(), &doc_id(), &json!(1)).await?;
    put_ok(&api, &u, &coll(), &doc_id(), &json!(2)).await?;
    let r = api.get("/v1/changes?since=3").auth(&u).send().await?;
    let p = r.expect_problem(409, "cursor-ahead");
    assert_eq!(p["head"], json!(2));
    // Another user's head does not count.
    let other = t.new_user();
    let r = api.get("/v1/changes?since=2").auth(&other).send().await?;
    r.expect_problem(409, "cursor-ahead");
    api.get("/v1/changes?since=2")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    // "Every changes/head response carries X-Poll-Interval ... and
    // Cache-Control: private, no-cache": the cursor errors too.
    let r = api.get("/v1/changes?since=3").auth(&u).send().await?;
    r.expect_problem(409, "cursor-ahead");
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    Ok(())
}

/// With a small `retention_entries`, writing several windows' worth
/// compacts the log: `since=0` is 410 `cursor-expired` with `floor`;
/// `since=floor` works and starts right after it; a listing resync works.
pub async fn compaction_expires_old_cursors_with_410(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let retention = t.settings.retention_entries;
    let n = (4 * retention + 8) as usize;
    // Write one document many times, plus a few others, so the listing is
    // small but the log is long.
    let mut last = 0;
    for i in 0..n {
        let id = format!("d{}", i % 5);
        last = put_ok(&api, &u, &c, &id, &json!({"i": i})).await?;
    }
    assert_eq!(last, n as u64);
    let r = api.get("/v1/changes?since=0").auth(&u).send().await?;
    let p = r.expect_problem(410, "cursor-expired");
    let expired = r;
    let floor = p["floor"]
        .as_u64()
        .unwrap_or_else(|| panic!("cursor-expired must carry a numeric `floor`: {p}"));
    assert!(
        floor >= 1 && floor <= last,
        "floor {floor} must be within 1..={last}"
    );
    assert!(
        last - floor >= retention.min(last),
        "at least retention_entries ({retention}) entries are kept behind the head ({last}); floor is {floor}"
    );
    let r = api
        .get(format!("/v1/changes?since={}", floor - 1))
        .auth(&u)
        .send()
        .await?;
    r.expect_problem(410, "cursor-expired");
    // From the floor on, everything is there.
    let entries = all_changes(&api, &u, floor).await?;
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        ((floor + 1)..=last).collect::<Vec<_>>(),
        "entries after the floor, without gaps"
    );
    // Resync: listing + changes since its cursor.
    let r = api.get("/v1/docs").auth(&u).send().await?.expect(200);
    let listing = r.json();
    let docs = listing["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 5, "five live documents: {listing}");
    let cursor = listing["cursor"].as_u64().unwrap();
    assert!(
        cursor <= last,
        "listing cursor {cursor} beyond the head {last}"
    );
    api.get(format!("/v1/changes?since={cursor}"))
        .auth(&u)
        .send()
        .await?
        .expect(200);
    // Head is unaffected by compaction.
    assert_eq!(head(&api, &u).await?, last);
    // The 410 carries the poll headers like every changes response.
    assert_poll_headers(&expired, t.settings.poll_interval_seconds);
    Ok(())
}

/// With nothing after `since`, `If-None-Match: "<since>"` gets 304 (with
/// and without a short wait) carrying the poll headers; a stale tag or none
/// gets 200, and a page's own tag (`next`) 304.
pub async fn if_none_match_is_304_when_nothing_changed(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    put_ok(&api, &u, &coll(), &doc_id(), &json!(1)).await?;
    let mut queries = vec!["since=1".to_string()];
    if t.settings.max_wait_seconds >= 1 {
        queries.push("since=1&wait=1".to_string());
    }
    for q in queries {
        for inm in [etag(1), format!("W/{}", etag(1))] {
            let r = api
                .get(format!("/v1/changes?{q}"))
                .auth(&u)
                .header("If-None-Match", &inm)
                .send()
                .await?;
            if r.status != 304 {
                panic!("GET /v1/changes?{q} with If-None-Match: {inm} and nothing new must be 304, got {} {}", r.status, r.text());
            }
            assert!(r.body.is_empty());
            assert_eq!(r.etag(), etag(1), "304 carries ETag \"<since>\"");
            assert_poll_headers(&r, t.settings.poll_interval_seconds);
        }
    }
    // A client that has not seen the latest entry gets it.
    let r = api
        .get("/v1/changes?since=0")
        .auth(&u)
        .header("If-None-Match", etag(0))
        .send()
        .await?
        .expect(200);
    assert_eq!(r.json()["changes"].as_array().unwrap().len(), 1);
    // A page is not modified for whoever holds its tag (its `next`), as
    // any GET's answer (RFC 9110 §13.1.2), entries or none.
    let r = api
        .get("/v1/changes?since=0")
        .auth(&u)
        .header("If-None-Match", etag(1))
        .send()
        .await?
        .expect(304);
    assert_eq!(r.etag(), etag(1));
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    // No If-None-Match: 200 with an empty list.
    let r = api
        .get("/v1/changes?since=1")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert_eq!(r.json(), json!({"changes": [], "next": 1, "head": 1}));
    Ok(())
}

/// `Prefer: wait=S` holds like `wait=S` and is acknowledged with
/// `Preference-Applied: wait=<applied>` (clamped to max_wait_seconds); the
/// query parameter wins when both are given.
pub async fn prefer_wait_is_applied(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let max = t.settings.max_wait_seconds;
    let r = api
        .get("/v1/changes?since=0")
        .auth(&u)
        .header("Prefer", "wait=1")
        .send()
        .await?
        .expect(200);
    assert_eq!(r.json(), json!({"changes": [], "next": 0, "head": 0}));
    assert_eq!(
        r.header("preference-applied").as_deref(),
        Some("wait=1"),
        "Preference-Applied for Prefer: wait=1"
    );
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    // RFC 7240 §2: an answer shaped by a preference says so to caches.
    assert!(
        r.header_tokens("vary")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("prefer")),
        "Vary must name Prefer: {:?}",
        r.headers
    );
    // Above the maximum: clamped, and the applied value says so.
    let r = api
        .get("/v1/changes?since=0")
        .auth(&u)
        .header("Prefer", "respond-async, wait=100000")
        .send()
        .await?
        .expect(200);
    assert_eq!(
        r.header("preference-applied").as_deref(),
        Some(format!("wait={max}").as_str()),
        "Preference-Applied must report the clamped wait"
    );
    // The query wins over Prefer: wait=0 answers at once (it does not hold
    // for the Prefer value: a write made after the response cannot be in it).
    let r = api
        .get("/v1/changes?since=0&wait=0")
        .auth(&u)
        .header("Prefer", format!("wait={max}"))
        .send()
        .await?
        .expect(200);
    assert_eq!(r.json()["changes"], json!([]));
    if let Some(applied) = r.header("preference-applied") {
        assert_eq!(
            applied, "wait=0",
            "when the query wins, the applied wait is the query's"
        );
    }
    // Without Prefer there is no Preference-Applied.
    let r = api
        .get("/v1/changes?since=0")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert!(
        r.header("preference-applied").is_none(),
        "Preference-Applied only answers a Prefer"
    );
    Ok(())
}
