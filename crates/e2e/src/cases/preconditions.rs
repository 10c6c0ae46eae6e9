//! `If-Match` (strong comparison, `*` = must exist) and `If-None-Match: *`
//! (must not exist) on writes: 412 `precondition-failed` with
//! `current_version`, and nothing changed. On reads, `If-Match` is checked
//! against the answer's tag. Tags compare as strings, not as numbers.

use serde_json::{json, Value};

use super::*;
use crate::Target;

#[track_caller]
fn assert_412(r: &Resp, current: Value) {
    let p = r.expect_problem(412, "precondition-failed");
    assert!(
        p.as_object().unwrap().contains_key("current_version"),
        "{}: 412 must carry `current_version`: {p}",
        r.what
    );
    assert_eq!(
        p["current_version"], current,
        "{}: 412 current_version",
        r.what
    );
}

/// `If-Match` with the current strong tag succeeds; a stale tag or the
/// weak form of the current tag is 412 with `current_version`.
pub async fn if_match_is_strong(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let v1 = put_ok(&api, &u, &c, &id, &json!(1)).await?;
    let r = api
        .put(path.clone())
        .auth(&u)
        .header("If-Match", etag(v1))
        .json(&json!(2))
        .send()
        .await?
        .expect(200);
    let v2 = version_of(&r.json());
    for stale in [
        etag(v1),
        format!("W/{}", etag(v2)),
        "\"999\"".to_string(),
        format!("\"x\", W/{}", etag(v2)),
    ] {
        let r = api
            .put(path.clone())
            .auth(&u)
            .header("If-Match", &stale)
            .json(&json!("nope"))
            .send()
            .await?;
        assert_412(&r, json!(v2));
    }
    assert_nothing_changed(&api, &u, v2, Some((&c, &id, 200)), "failed If-Match PUTs").await?;
    // A list containing the current strong tag matches.
    api.put(path.clone())
        .auth(&u)
        .header("If-Match", format!("\"999\", {}", etag(v2)))
        .json(&json!(3))
        .send()
        .await?
        .expect(200);
    Ok(())
}

/// `If-Match: *` requires the document to exist; `If-Match: "n"` on an
/// absent document is 412 with `current_version: null`.
pub async fn if_match_star_and_absent_documents(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    for im in ["*", "\"1\"", "\"0\""] {
        let r = api
            .put(path.clone())
            .auth(&u)
            .header("If-Match", im)
            .json(&json!(1))
            .send()
            .await?;
        assert_412(&r, Value::Null);
    }
    assert_nothing_changed(
        &api,
        &u,
        0,
        Some((&c, &id, 404)),
        "If-Match on an absent document",
    )
    .await?;
    put_ok(&api, &u, &c, &id, &json!(1)).await?;
    let r = api
        .put(path.clone())
        .auth(&u)
        .header("If-Match", "*")
        .json(&json!(2))
        .send()
        .await?
        .expect(200);
    assert_document(&r.json(), &c, &id, 2, &json!(2));
    // After a delete the document is absent again.
    api.delete(path.clone()).auth(&u).send().await?.expect(204);
    let r = api
        .put(path.clone())
        .auth(&u)
        .header("If-Match", "*")
        .json(&json!(3))
        .send()
        .await?;
    assert_412(&r, Value::Null);
    assert_nothing_changed(
        &api,
        &u,
        3,
        Some((&c, &id, 404)),
        "If-Match: * after delete",
    )
    .await
}

/// `If-None-Match: *` creates only: 201 when absent (or deleted), 412 with
/// the current version when present.
pub async fn if_none_match_star_creates_only(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let r = api
        .put(path.clone())
        .auth(&u)
        .header("If-None-Match", "*")
        .json(&json!("first"))
        .send()
        .await?
        .expect(201);
    let v = version_of(&r.json());
    let r = api
        .put(path.clone())
        .auth(&u)
        .header("If-None-Match", "*")
        .json(&json!("second"))
        .send()
        .await?;
    assert_412(&r, json!(v));
    assert_nothing_changed(
        &api,
        &u,
        v,
        Some((&c, &id, 200)),
        "If-None-Match: * on an existing document",
    )
    .await?;
    let g = api.get(path.clone()).auth(&u).send().await?.expect(200);
    assert_document(&g.json(), &c, &id, v, &json!("first"));
    api.delete(path.clone()).auth(&u).send().await?.expect(204);
    api.put(path.clone())
        .auth(&u)
        .header("If-None-Match", "*")
        .json(&json!("third"))
        .send()
        .await?
        .expect(201);
    Ok(())
}

/// `PATCH` and `DELETE` honour `If-Match` (and `PATCH` `If-None-Match: *`).
pub async fn patch_and_delete_honour_if_match(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let v1 = put_ok(&api, &u, &c, &id, &json!({"n": 1})).await?;
    let r = api
        .patch(path.clone())
        .auth(&u)
        .header("If-Match", etag(v1))
        .merge_patch(&json!({"n": 2}))
        .send()
        .await?
        .expect(200);
    let v2 = version_of(&r.json());
    let r = api
        .patch(path.clone())
        .auth(&u)
        .header("If-Match", etag(v1))
        .merge_patch(&json!({"n": 3}))
        .send()
        .await?;
    assert_412(&r, json!(v2));
    let r = api
        .patch(path.clone())
        .auth(&u)
        .header("If-None-Match", "*")
        .merge_patch(&json!({"n": 3}))
        .send()
        .await?;
    assert_412(&r, json!(v2));
    let r = api
        .delete(path.clone())
        .auth(&u)
        .header("If-Match", etag(v1))
        .send()
        .await?;
    assert_412(&r, json!(v2));
    let r = api
        .delete(path.clone())
        .auth(&u)
        .header("If-Match", format!("W/{}", etag(v2)))
        .send()
        .await?;
    assert_412(&r, json!(v2));
    assert_nothing_changed(
        &api,
        &u,
        v2,
        Some((&c, &id, 200)),
        "failed PATCH/DELETE preconditions",
    )
    .await?;
    let g = api.get(path.clone()).auth(&u).send().await?.expect(200);
    assert_document(&g.json(), &c, &id, v2, &json!({"n": 2}));
    api.delete(path.clone())
        .auth(&u)
        .header("If-Match", etag(v2))
        .send()
        .await?
        .expect(204);
    Ok(())
}

/// Unparseable `If-Match` / `If-None-Match` values on writes are 400
/// `invalid-parameter` naming the header, and change nothing.
pub async fn malformed_precondition_headers_are_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let v = put_ok(&api, &u, &c, &id, &json!(1)).await?;
    for (header, value) in [
        ("If-Match", "1".to_string()),
        ("If-Match", "\"1".to_string()),
        ("If-Match", "W/1".to_string()),
        ("If-Match", "\"-1\"".to_string()),
        ("If-Match", "\"abc\" junk".to_string()),
        // No tags at all: a condition no version can meet.
        ("If-Match", String::new()),
        ("If-Match", " , ".to_string()),
    ] {
        let r = api
            .put(path.clone())
            .auth(&u)
            .header(header, &value)
            .json(&json!(2))
            .send()
            .await?;
        // `"-1"` is a well-formed entity tag that cannot match any version:
        // 412 is as right as 400 for it.
        if value == "\"-1\"" && r.status == 412 {
            continue;
        }
        let p = r.expect_problem(400, "invalid-parameter");
        let named = p["parameter"].as_str().unwrap_or_default();
        assert!(
            named.eq_ignore_ascii_case(header),
            "{header}: {value}: the problem's `parameter` must name the header, got {p}"
        );
    }
    assert_nothing_changed(&api, &u, v, Some((&c, &id, 200)), "malformed preconditions").await
}

/// An empty `If-None-Match` lists no tags, so none matches: reads answer
/// as if it were absent (RFC 9110's empty list), never 304 and never 400.
pub async fn empty_if_none_match_matches_nothing(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let v = put_ok(&api, &u, &c, &id, &json!(1)).await?;
    for path in [
        doc_path(&c, &id),
        "/v1/head".to_string(),
        format!("/v1/changes?since={v}"),
    ] {
        for value in ["", " , "] {
            let r = api
                .get(path.clone())
                .auth(&u)
                .header("If-None-Match", value)
                .send()
                .await?
                .expect(200);
            assert_eq!(
                r.header("etag").as_deref(),
                Some(format!("\"{v}\"").as_str()),
                "{path} with If-None-Match {value:?}"
            );
        }
    }
    Ok(())
}

/// Entity tags compare character by character (RFC 9110 §8.8.3.2): `"07"`
/// is not the tag `"7"`, whatever it means as a number, on writes and on
/// reads. A read's `If-Match` that does not hold is 412 (§13.1.1); one on
/// an absent document leaves the 404 as it is (§13.2.1).
pub async fn tags_compare_as_strings_and_reads_honour_if_match(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let v = put_ok(&api, &u, &c, &id, &json!(1)).await?;
    let padded = format!("\"0{v}\"");
    let r = api
        .put(path.clone())
        .auth(&u)
        .header("If-Match", &padded)
        .json(&json!(2))
        .send()
        .await?;
    assert_412(&r, json!(v));
    assert_nothing_changed(
        &api,
        &u,
        v,
        Some((&c, &id, 200)),
        "If-Match with a padded tag",
    )
    .await?;
    for (path, current) in [(path.clone(), v), ("/v1/head".to_owned(), v)] {
        // Not the current tag under either comparison: the full answer.
        api.get(path.clone())
            .auth(&u)
            .header("If-None-Match", &padded)
            .send()
            .await?
            .expect(200);
        for holds in [
            etag(current),
            "*".to_owned(),
            format!("\"9\", {}", etag(current)),
        ] {
            api.get(path.clone())
                .auth(&u)
                .header("If-Match", &holds)
                .send()
                .await?
                .expect(200);
        }
        for fails in [
            padded.clone(),
            format!("W/{}", etag(current)),
            "\"999\"".to_owned(),
        ] {
            let r = api
                .get(path.clone())
                .auth(&u)
                .header("If-Match", &fails)
                .send()
                .await?;
            assert_412(&r, json!(current));
        }
        // A 304 is a success too: both conditions are evaluated, If-Match
        // first.
        api.get(path.clone())
            .auth(&u)
            .header("If-Match", etag(current))
            .header("If-None-Match", etag(current))
            .send()
            .await?
            .expect(304);
    }
    // The changes feed's tag is the cursor its answer ends at.
    api.get(format!("/v1/changes?since={v}"))
        .auth(&u)
        .header("If-Match", etag(v))
        .send()
        .await?
        .expect(200);
    let r = api
        .get("/v1/changes?since=0")
        .auth(&u)
        .header("If-Match", etag(0))
        .send()
        .await?;
    assert_412(&r, json!(v));
    // No representation to compare with: the 404 stands.
    api.get(doc_path(&c, &doc_id()))
        .auth(&u)
        .header("If-Match", "*")
        .send()
        .await?
        .expect_problem(404, "document-not-found");
    // An empty If-Match is as malformed on a read as on a write.
    api.get(path)
        .auth(&u)
        .header("If-Match", "")
        .send()
        .await?
        .expect_problem(400, "invalid-parameter");
    Ok(())
}
