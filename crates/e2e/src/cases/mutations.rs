//! `POST /v1/mutations`: ordered batches for offline queues.

use serde_json::{json, Value};

use super::*;
use crate::Target;

/// POST a batch body (any JSON) and return the response.
pub async fn post_batch(api: &Api<'_>, u: &User, body: &Value) -> anyhow::Result<Resp> {
    api.post("/v1/mutations").auth(u).json(body).send().await
}

fn key() -> String {
    format!("m-{}", random_name(12))
}

#[track_caller]
fn results(r: &Resp, n: usize) -> Vec<Value> {
    let body = r.json();
    let results = body["results"]
        .as_array()
        .unwrap_or_else(|| {
            panic!(
                "{}: a batch answers {{\"results\": [...], \"head\": n}}, got {body}",
                r.what
            )
        })
        .clone();
    assert_eq!(results.len(), n, "{}: one result per item: {body}", r.what);
    assert!(
        body["head"].is_u64(),
        "{}: the batch response carries `head`: {body}",
        r.what
    );
    results
}

#[track_caller]
fn assert_result(res: &Value, id: &str, status: u64, replayed: bool) {
    assert_eq!(res["id"], json!(id), "result id: {res}");
    assert_eq!(
        res["status"],
        json!(status),
        "result status for {id}: {res}"
    );
    assert_eq!(
        res["replayed"],
        json!(replayed),
        "result `replayed` for {id}: {res}"
    );
}

/// Items are applied in order with per-item results (status, version,
/// document); the log has them in the same order; `head` is returned; a
/// bare array of items is accepted too.
pub async fn batch_applies_items_in_order(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let (k1, k2, k3, k4, k5) = (key(), key(), key(), key(), key());
    let body = json!({"mutations": [
        {"id": k1, "op": "put", "collection": c, "doc": "a", "value": {"n": 1}},
        {"id": k2, "op": "put", "collection": c, "doc": "b", "value": [1, 2]},
        {"id": k3, "op": "patch", "collection": c, "doc": "a", "value": {"m": 2, "n": null}},
        {"id": k4, "op": "put", "collection": c, "doc": "a", "value": "replaced", "if_version": 3},
        {"id": k5, "op": "delete", "collection": c, "doc": "b"},
    ]});
    let r = post_batch(&api, &u, &body).await?.expect(200);
    let res = results(&r, 5);
    assert_eq!(r.json()["head"], json!(5));
    assert_result(&res[0], &k1, 201, false);
    assert_result(&res[1], &k2, 201, false);
    assert_result(&res[2], &k3, 200, false);
    assert_result(&res[3], &k4, 200, false);
    assert_result(&res[4], &k5, 204, false);
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r["version"], json!(i + 1), "item {i} version: {r}");
    }
    assert_document(&res[0]["document"], &c, "a", 1, &json!({"n": 1}));
    assert_document(&res[2]["document"], &c, "a", 3, &json!({"m": 2}));
    assert_document(&res[3]["document"], &c, "a", 4, &json!("replaced"));
    let changes = all_changes(&api, &u, 0).await?;
    let summary: Vec<(u64, String, String)> = changes
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["op"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "put".into(), "a".into()),
            (2, "put".into(), "b".into()),
            (3, "put".into(), "a".into()),
            (4, "put".into(), "a".into()),
            (5, "delete".into(), "b".into()),
        ],
        "the log holds the items in batch order"
    );
    // A bare array is accepted too.
    let k6 = key();
    let r = post_batch(
        &api,
        &u,
        &json!([{"id": k6, "op": "put", "collection": c, "doc": "z", "value": 0}]),
    )
    .await?
    .expect(200);
    assert_result(&results(&r, 1)[0], &k6, 201, false);
    Ok(())
}

/// One item's failure (412 with `current_version`, 404, 422) does not stop
/// the others; only successful items are logged.
pub async fn batch_items_fail_independently(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let v = put_ok(&api, &u, &c, "exists", &json!(1)).await?;
    let reused = key();
    post_batch(&api, &u, &json!({"mutations": [{"id": reused, "op": "put", "collection": c, "doc": "r", "value": 1}]}))
        .await?
        .expect(200);
    let (k1, k2, k3, k4, k5, k6) = (key(), key(), key(), key(), key(), key());
    let body = json!({"mutations": [
        {"id": k1, "op": "put", "collection": c, "doc": "exists", "value": 2, "if_version": v + 100},
        {"id": k2, "op": "put", "collection": c, "doc": "new1", "value": "ok"},
        {"id": k3, "op": "patch", "collection": c, "doc": "absent", "value": {"a": 1}},
        {"id": k4, "op": "delete", "collection": c, "doc": "absent"},
        {"id": reused, "op": "put", "collection": c, "doc": "r", "value": "different"},
        {"id": k5, "op": "put", "collection": c, "doc": "exists", "value": 3, "if_version": 0},
        {"id": k6, "op": "put", "collection": c, "doc": "new2", "value": "ok", "if_version": 0},
    ]});
    let r = post_batch(&api, &u, &body).await?.expect(200);
    let res = results(&r, 7);
    assert_result(&res[0], &k1, 412, false);
    assert_eq!(
        res[0]["problem"]["type"],
        json!("precondition-failed"),
        "{}",
        res[0]
    );
    assert_eq!(res[0]["problem"]["current_version"], json!(v), "{}", res[0]);
    assert_result(&res[1], &k2, 201, false);
    assert_result(&res[2], &k3, 404, false);
    assert_eq!(
        res[2]["problem"]["type"],
        json!("document-not-found"),
        "{}",
        res[2]
    );
    assert_result(&res[3], &k4, 404, false);
    assert_result(&res[4], &reused, 422, false);
    assert_eq!(
        res[4]["problem"]["type"],
        json!("idempotency-key-mismatch"),
        "{}",
        res[4]
    );
    assert_result(&res[5], &k5, 412, false);
    assert_eq!(
        res[5]["problem"]["current_version"],
        json!(v),
        "if_version 0 on an existing document: {}",
        res[5]
    );
    assert_result(&res[6], &k6, 201, false);
    for failed in [&res[0], &res[2], &res[3], &res[4], &res[5]] {
        let p = &failed["problem"];
        assert!(
            p["title"].is_string() && p["detail"].is_string() && p["status"] == failed["status"],
            "a failed item carries a full problem: {failed}"
        );
    }
    let changes = all_changes(&api, &u, 2).await?;
    let ids: Vec<&str> = changes.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec!["new1", "new2"],
        "only the successful items are logged"
    );
    assert_eq!(r.json()["head"], json!(4));
    let g = api
        .get(doc_path(&c, "exists"))
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert_document(&g.json(), &c, "exists", v, &json!(1));
    Ok(())
}

/// Re-sending a batch replays every item (`replayed: true`, same status and
/// version) and logs nothing; a batch mixing old and new items replays the
/// old ones and applies the new ones.
pub async fn batch_items_replay_individually(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let (k1, k2, k3) = (key(), key(), key());
    let items = vec![
        json!({"id": k1, "op": "put", "collection": c, "doc": "a", "value": 1}),
        json!({"id": k2, "op": "patch", "collection": c, "doc": "a", "value": {"x": 1}}),
        json!({"id": k3, "op": "delete", "collection": c, "doc": "a"}),
    ];
    let first = post_batch(&api, &u, &json!({"mutations": items}))
        .await?
        .expect(200);
    let first_res = results(&first, 3);
    let again = post_batch(&api, &u, &json!({"mutations": items}))
        .await?
        .expect(200);
    let again_res = results(&again, 3);
    for (a, b) in first_res.iter().zip(&again_res) {
        assert_eq!(
            b["replayed"],
            json!(true),
            "a re-sent item is replayed: {b}"
        );
        assert_eq!(
            a["status"], b["status"],
            "a replay answers the first status"
        );
        assert_eq!(
            a["version"], b["version"],
            "a replay answers the first version"
        );
        assert_eq!(
            a["document"], b["document"],
            "a replay answers the first document"
        );
    }
    assert_nothing_changed(&api, &u, 3, Some((&c, "a", 404)), "a replayed batch").await?;
    let k4 = key();
    let mixed = json!({"mutations": [
        items[0].clone(),
        {"id": k4, "op": "put", "collection": c, "doc": "b", "value": 2},
    ]});
    let r = post_batch(&api, &u, &mixed).await?.expect(200);
    let res = results(&r, 2);
    assert_result(&res[0], &k1, 201, true);
    assert_result(&res[1], &k4, 201, false);
    assert_eq!(res[1]["version"], json!(4));
    let entries = all_changes(&api, &u, 0).await?;
    assert_eq!(entries.len(), 4, "three + one new entries: {entries:?}");
    Ok(())
}

/// More than 100 items, or none, is 400 `invalid-body` and nothing is
/// applied.
pub async fn oversized_or_empty_batches_are_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let items: Vec<Value> = (0..101)
        .map(|i| json!({"id": key(), "op": "put", "collection": c, "doc": format!("d{i}"), "value": i}))
        .collect();
    let size = serde_json::to_vec(&json!({"mutations": items}))?.len();
    assert!(
        size <= t.settings.max_body_bytes,
        "this case sends a {size}-byte batch of 101 items: it needs max_body_bytes ≥ {size}"
    );
    let r = post_batch(&api, &u, &json!({"mutations": items})).await?;
    r.expect_problem(400, "invalid-body");
    assert_nothing_changed(&api, &u, 0, Some((&c, "d0", 404)), "a batch of 101 items").await?;
    let r = post_batch(&api, &u, &json!(items)).await?;
    r.expect_problem(400, "invalid-body");
    for empty in [json!({"mutations": []}), json!([])] {
        let r = post_batch(&api, &u, &empty).await?;
        r.expect_problem(400, "invalid-body");
    }
    assert_nothing_changed(
        &api,
        &u,
        0,
        Some((&c, "d0", 404)),
        "oversized or empty batches",
    )
    .await?;
    // Exactly 100 is fine.
    let r = post_batch(&api, &u, &json!({"mutations": items[..100]}))
        .await?
        .expect(200);
    results(&r, 100);
    assert_eq!(head(&api, &u).await?, 100);
    Ok(())
}

/// Any invalid item (bad name, unknown or missing op, bad key, missing
/// value, bad if_version) rejects the whole batch with 400 and nothing is
/// applied — not even the valid items before it.
pub async fn invalid_item_rejects_whole_batch(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let good = json!({"id": key(), "op": "put", "collection": c, "doc": "good", "value": 1});
    let long = "x".repeat(129);
    let bad_items: Vec<(Value, &str)> = vec![
        (
            json!({"id": key(), "op": "put", "collection": "..", "doc": "d", "value": 1}),
            "invalid-name",
        ),
        (
            json!({"id": key(), "op": "put", "collection": c, "doc": "a b", "value": 1}),
            "invalid-name",
        ),
        (
            json!({"id": key(), "op": "put", "collection": c, "doc": long, "value": 1}),
            "invalid-name",
        ),
        (
            json!({"id": key(), "op": "put", "collection": c, "doc": "a/b", "value": 1}),
            "invalid-name",
        ),
        (
            json!({"id": key(), "op": "upsert", "collection": c, "doc": "d", "value": 1}),
            "invalid-body",
        ),
        (
            json!({"id": key(), "collection": c, "doc": "d", "value": 1}),
            "invalid-body",
        ),
        (
            json!({"op": "put", "collection": c, "doc": "d", "value": 1}),
            "invalid-body",
        ),
        (
            json!({"id": key(), "op": "put", "doc": "d", "value": 1}),
            "invalid-body",
        ),
        (
            json!({"id": key(), "op": "put", "collection": c, "doc": "d", "value": 1, "if_version": -1}),
            "invalid-body",
        ),
        (
            json!({"id": key(), "op": "put", "collection": c, "doc": "d", "value": 1, "if_version": "3"}),
            "invalid-body",
        ),
        (
            json!({"id": 17, "op": "put", "collection": c, "doc": "d", "value": 1}),
            "invalid-body",
        ),
        (json!("not an object"), "invalid-body"),
    ];
    for (bad, type_) in bad_items {
        let body = json!({"mutations": [good.clone(), bad.clone()]});
        let r = post_batch(&api, &u, &body).await?;
        if r.status != 400 {
            panic!(
                "a batch with the invalid item {bad} must be 400, got {} {}",
                r.status,
                r.text()
            );
        }
        let p = r.json();
        // Name problems may be reported as invalid-name or invalid-body.
        let got = p["type"].as_str().unwrap_or_default();
        assert!(
            got == type_ || (type_ == "invalid-name" && got == "invalid-body"),
            "invalid item {bad}: expected problem `{type_}`, got {p}"
        );
    }
    // Invalid idempotency keys in items.
    for bad_key in [json!(""), json!("k".repeat(256)), json!("with space")] {
        let body = json!({"mutations": [good.clone(), {"id": bad_key, "op": "put", "collection": c, "doc": "d", "value": 1}]});
        let r = post_batch(&api, &u, &body).await?;
        if r.status != 400 {
            panic!(
                "a batch item with id {bad_key} must be 400, got {} {}",
                r.status,
                r.text()
            );
        }
    }
    assert_nothing_changed(
        &api,
        &u,
        0,
        Some((&c, "good", 404)),
        "batches with an invalid item",
    )
    .await
}

/// Batch transport errors: wrong content type 415, truncated JSON and
/// non-JSON 400 `invalid-json`, wrong shapes 400 `invalid-body`.
pub async fn batch_input_errors(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let body = format!(
        r#"{{"mutations":[{{"id":"k","op":"put","collection":"{c}","doc":"d","value":1}}]}}"#
    );
    for ct in [
        Some("text/plain"),
        Some("application/merge-patch+json"),
        None,
    ] {
        let req = api.post("/v1/mutations").auth(&u);
        let req = match ct {
            Some(ct) => req.body_with_type(ct, body.clone()),
            None => req.body(body.clone()),
        };
        req.send()
            .await?
            .expect_problem(415, "unsupported-media-type");
    }
    // An item naming `op` twice (put, then delete) is refused as a whole,
    // never read either way.
    let twice = format!(
        r#"{{"mutations":[{{"id":"k","op":"put","collection":"{c}","doc":"d","value":1,"op":"delete"}}]}}"#
    );
    for bad in [
        &body[..body.len() - 3],
        "not json",
        "",
        "{\"mutations\":[",
        &twice,
    ] {
        let r = api
            .post("/v1/mutations")
            .auth(&u)
            .body_with_type("application/json", bad.to_string())
            .send()
            .await?;
        r.expect_problem(400, "invalid-json");
    }
    for bad in [
        r#"{}"#,
        r#"{"mutations": {}}"#,
        r#"{"mutations": 3}"#,
        "3",
        "null",
        r#""x""#,
    ] {
        let r = api
            .post("/v1/mutations")
            .auth(&u)
            .body_with_type("application/json", bad)
            .send()
            .await?;
        r.expect_problem(400, "invalid-body");
    }
    // Keys come from the items; a batch-wide header would be a promise
    // the server does not keep.
    let p = api
        .post("/v1/mutations")
        .auth(&u)
        .header("Idempotency-Key", "batch-1")
        .body_with_type("application/json", body.clone())
        .send()
        .await?
        .expect_problem(400, "invalid-parameter");
    assert_eq!(p["parameter"], "Idempotency-Key", "{p}");
    // So would a batch-wide precondition: the items carry their own.
    for (name, value) in [("If-Match", "\"1\""), ("If-None-Match", "*")] {
        let p = api
            .post("/v1/mutations")
            .auth(&u)
            .header(name, value)
            .body_with_type("application/json", body.clone())
            .send()
            .await?
            .expect_problem(400, "invalid-parameter");
        assert_eq!(p["parameter"], name, "{p}");
    }
    // A compressed body is not read as if it were plain.
    let r = api
        .post("/v1/mutations")
        .auth(&u)
        .header("Content-Encoding", "gzip")
        .body_with_type("application/json", body.clone())
        .send()
        .await?;
    r.expect_problem(415, "unsupported-media-type");
    assert_eq!(r.header("accept-encoding").as_deref(), Some("identity"));
    assert_nothing_changed(&api, &u, 0, Some((&c, "d", 404)), "bad batch bodies").await
}
