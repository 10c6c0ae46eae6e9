//! `PUT`/`PATCH`/`DELETE`/`GET /v1/docs/{c}/{id}`.

use serde_json::{json, Value};

use super::*;
use crate::Target;

/// `PUT` creates (201, `Location`, `ETag`, document body) then replaces
/// (200); versions are the user's seqs.
pub async fn put_creates_201_then_replaces_200(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);

    let r = put(&api, &u, &c, &id, &json!({"title": "one"}))
        .await?
        .expect(201);
    assert_eq!(
        r.must_header("location"),
        path,
        "201 must carry Location: /v1/docs/{{c}}/{{id}}"
    );
    let ct = r.must_header("content-type");
    assert!(
        ct.starts_with("application/json"),
        "PUT answers JSON, got {ct}"
    );
    let doc = r.json();
    assert_document(&doc, &c, &id, 1, &json!({"title": "one"}));
    assert_eq!(r.etag(), etag(1), "ETag of the created document");

    let r = put(&api, &u, &c, &id, &json!({"title": "two"}))
        .await?
        .expect(200);
    let doc = r.json();
    assert_document(&doc, &c, &id, 2, &json!({"title": "two"}));
    assert_eq!(r.etag(), etag(2), "ETag of the replaced document");

    // Another document continues the same per-user sequence.
    let id2 = doc_id();
    let r = put(&api, &u, &c, &id2, &json!([])).await?.expect(201);
    assert_eq!(version_of(&r.json()), 3, "versions are the user's seq");

    let r = api.get(path.clone()).auth(&u).send().await?.expect(200);
    assert_document(&r.json(), &c, &id, 2, &json!({"title": "two"}));
    assert_eq!(r.etag(), etag(2));
    assert_eq!(head(&api, &u).await?, 3, "head after three mutations");
    // `charset` parameters are fine.
    api.put(path.clone())
        .auth(&u)
        .body_with_type("application/json; charset=utf-8", r#"{"title":"three"}"#)
        .send()
        .await?
        .expect(200);
    Ok(())
}

/// Any JSON value is a document value: null, numbers, strings, arrays,
/// nested objects, unicode; GET returns it unchanged.
pub async fn put_accepts_any_json_value(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let values = [
        Value::Null,
        json!(true),
        json!(0),
        json!(-12.5),
        json!(1e300),
        json!(""),
        json!("héllo ✓ 🎉 \u{0000} \"quoted\""),
        json!([1, "two", null, {"three": [3]}]),
        json!({"nested": {"deep": {"deeper": {"list": [{}], "null": null}}}}),
        json!({"": "empty key", "ключ": "значение"}),
    ];
    for (i, v) in values.iter().enumerate() {
        let id = format!("v{i}");
        let r = put(&api, &u, &c, &id, v).await?.expect(201);
        assert_eq!(&r.json()["value"], v, "PUT echo of {v}");
        let g = api
            .get(doc_path(&c, &id))
            .auth(&u)
            .send()
            .await?
            .expect(200);
        assert_document(&g.json(), &c, &id, (i + 1) as u64, v);
    }
    // Names may use every allowed character, up to 128 of them.
    let long = "a".repeat(128);
    for (cn, idn) in [
        ("A-Z_a.z~0", "x"),
        (long.as_str(), long.as_str()),
        ("c", "..."),
        ("~", "-._~"),
    ] {
        let r = put(&api, &u, cn, idn, &json!(1)).await?.expect(201);
        assert_document(&r.json(), cn, idn, version_of(&r.json()), &json!(1));
        api.get(doc_path(cn, idn))
            .auth(&u)
            .send()
            .await?
            .expect(200);
    }
    Ok(())
}

/// Deleting then `PUT` again creates a new document: 201 with `Location`.
pub async fn put_recreates_deleted_document_with_201(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    put(&api, &u, &c, &id, &json!(1)).await?.expect(201);
    api.delete(doc_path(&c, &id))
        .auth(&u)
        .send()
        .await?
        .expect(204);
    let r = put(&api, &u, &c, &id, &json!(2)).await?.expect(201);
    assert_eq!(r.must_header("location"), doc_path(&c, &id));
    assert_document(&r.json(), &c, &id, 3, &json!(2));
    Ok(())
}

/// `GET` carries `ETag` and `Cache-Control: private, no-cache`; absent
/// documents are 404 `document-not-found` with `Cache-Control: no-store`,
/// and so is a write's result.
pub async fn get_has_etag_and_cache_control(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let r = api.get(doc_path(&c, &id)).auth(&u).send().await?;
    r.expect_problem(404, "document-not-found");
    // A (private) cache keeping this 404 would hide the document once it
    // is made; errors and write results are not stored at all.
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("no-store"),
        "404 document: Cache-Control"
    );
    let w = put(&api, &u, &c, &id, &json!({"a": 1})).await?.expect(201);
    assert_eq!(w.header("cache-control").as_deref(), Some("no-store"));
    let r = api
        .get(doc_path(&c, &id))
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert_eq!(r.etag(), etag(1));
    let cc: Vec<String> = r
        .header_tokens("cache-control")
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    assert!(
        cc.contains(&"private".into()) && cc.contains(&"no-cache".into()),
        "GET document: Cache-Control must be `private, no-cache`, got {cc:?}"
    );
    // Another collection with the same id is another document.
    let r = api.get(doc_path(&coll(), &id)).auth(&u).send().await?;
    r.expect_problem(404, "document-not-found");
    Ok(())
}

/// A name is the same whether its unreserved characters come plain or
/// percent-encoded (RFC 3986 §6.2.2.2): some URL encoders send `~` as
/// `%7E`. The document is stored, logged and listed under the plain name.
pub async fn escaped_unreserved_characters_name_the_same_document(
    t: &Target,
) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let (c, id) = (format!("{}~x", coll()), format!("{}~y", doc_id()));
    let escaped = doc_path(&c.replace('~', "%7E"), &id.replace('~', "%7e"));
    let r = api
        .put(escaped.clone())
        .auth(&u)
        .json(&json!(1))
        .send()
        .await?
        .expect(201);
    assert_eq!(r.json()["collection"], json!(c), "{}", r.text());
    assert_eq!(r.json()["id"], json!(id), "{}", r.text());
    assert_eq!(r.header("location"), Some(doc_path(&c, &id)));
    api.get(doc_path(&c, &id))
        .auth(&u)
        .send()
        .await?
        .expect(200);
    let changes = all_changes(&api, &u, 0).await?;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (&changes[0]["collection"], &changes[0]["id"]),
        (&json!(c), &json!(id))
    );
    api.delete(escaped).auth(&u).send().await?.expect(204);
    api.get(doc_path(&c, &id))
        .auth(&u)
        .send()
        .await?
        .expect(404);
    Ok(())
}

/// `If-None-Match` (weak comparison, lists, `*`) → 304 with the ETag and
/// no body; a non-matching tag → 200.
pub async fn get_if_none_match_is_304(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    put_ok(&api, &u, &c, &id, &json!(1)).await?;
    let v = put_ok(&api, &u, &c, &id, &json!(2)).await?;
    let path = doc_path(&c, &id);
    for inm in [
        etag(v),
        format!("W/{}", etag(v)),
        format!("\"999\", {}", etag(v)),
        format!("W/\"1\", W/{}", etag(v)),
        "*".to_string(),
    ] {
        let r = api
            .get(path.clone())
            .auth(&u)
            .header("If-None-Match", &inm)
            .send()
            .await?;
        if r.status != 304 {
            panic!(
                "GET with If-None-Match: {inm} (current {v}) must be 304, got {} {}",
                r.status,
                r.text()
            );
        }
        assert!(r.body.is_empty(), "304 has no body");
        assert_eq!(r.etag(), etag(v), "304 carries the current ETag");
    }
    for inm in [
        etag(v - 1),
        format!("W/{}", etag(v + 1)),
        "\"x\"".to_string(),
    ] {
        let r = api
            .get(path.clone())
            .auth(&u)
            .header("If-None-Match", &inm)
            .send()
            .await?;
        if r.status != 200 {
            panic!(
                "GET with If-None-Match: {inm} (current {v}) must be 200, got {} {}",
                r.status,
                r.text()
            );
        }
        assert_document(&r.json(), &c, &id, v, &json!(2));
    }
    // 404 wins over If-None-Match on an absent document.
    let r = api
        .get(doc_path(&c, "absent"))
        .auth(&u)
        .header("If-None-Match", "*")
        .send()
        .await?;
    r.expect_problem(404, "document-not-found");
    Ok(())
}

/// `PATCH` applies RFC 7396: members merged, `null` removes (nested too),
/// arrays and scalars replaced, a non-object patch replaces the value; a
/// no-op patch still makes a new version.
pub async fn patch_applies_json_merge_patch(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    put_ok(
        &api,
        &u,
        &c,
        &id,
        &json!({"a": "b", "c": {"d": "e", "f": "g", "deep": {"x": 1, "y": 2}}, "list": [1, 2], "keep": true}),
    )
    .await?;
    let steps: Vec<(Value, Value)> = vec![
        (
            json!({"a": "z", "c": {"f": null, "deep": {"y": null, "z": 3}}, "list": [3], "new": {"n": null}}),
            json!({"a": "z", "c": {"d": "e", "deep": {"x": 1, "z": 3}}, "list": [3], "keep": true, "new": {}}),
        ),
        (
            json!({}),
            json!({"a": "z", "c": {"d": "e", "deep": {"x": 1, "z": 3}}, "list": [3], "keep": true, "new": {}}),
        ),
        (
            json!({"c": null, "keep": null, "new": null}),
            json!({"a": "z", "list": [3]}),
        ),
        (json!({"a": null, "list": null}), json!({})),
        (json!(["replaced"]), json!(["replaced"])),
        (json!({"obj": {"x": null}}), json!({"obj": {}})),
        (json!("scalar"), json!("scalar")),
        (json!(null), Value::Null),
    ];
    let mut version = 1;
    for (patch, expected) in steps {
        let r = api
            .patch(path.clone())
            .auth(&u)
            .merge_patch(&patch)
            .send()
            .await?;
        if r.status != 200 {
            panic!("PATCH {patch} must be 200, got {} {}", r.status, r.text());
        }
        version += 1;
        let doc = r.json();
        assert_document(&doc, &c, &id, version, &expected);
        assert_eq!(r.etag(), etag(version), "PATCH answers with the new ETag");
        let g = api.get(path.clone()).auth(&u).send().await?.expect(200);
        assert_document(&g.json(), &c, &id, version, &expected);
    }
    // A patch is logged as a `put` carrying the whole new value.
    let changes = all_changes(&api, &u, 0).await?;
    assert_eq!(
        changes.len() as u64,
        version,
        "one log entry per mutation: {changes:?}"
    );
    assert_eq!(
        changes[1]["op"],
        json!("put"),
        "a patch is logged as op `put`"
    );
    assert_eq!(
        changes[1]["value"],
        json!({"a": "z", "c": {"d": "e", "deep": {"x": 1, "z": 3}}, "list": [3], "keep": true, "new": {}}),
        "a patch's log entry carries the whole document value"
    );
    Ok(())
}

/// `PATCH` on an absent (or deleted) document is 404 and logs nothing.
pub async fn patch_absent_document_is_404(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let r = api
        .patch(doc_path(&c, &id))
        .auth(&u)
        .merge_patch(&json!({"a": 1}))
        .send()
        .await?;
    r.expect_problem(404, "document-not-found");
    assert_nothing_changed(
        &api,
        &u,
        0,
        Some((&c, &id, 404)),
        "PATCH of an absent document",
    )
    .await?;
    put_ok(&api, &u, &c, &id, &json!({})).await?;
    api.delete(doc_path(&c, &id))
        .auth(&u)
        .send()
        .await?
        .expect(204);
    let r = api
        .patch(doc_path(&c, &id))
        .auth(&u)
        .merge_patch(&json!({"a": 1}))
        .send()
        .await?;
    r.expect_problem(404, "document-not-found");
    assert_nothing_changed(
        &api,
        &u,
        2,
        Some((&c, &id, 404)),
        "PATCH of a deleted document",
    )
    .await
}

/// `DELETE` answers 204 with the delete's ETag, is logged as `delete` with a
/// `null` value, then GET/DELETE are 404.
pub async fn delete_is_204_then_404(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let r = api.delete(path.clone()).auth(&u).send().await?;
    r.expect_problem(404, "document-not-found");
    assert_nothing_changed(&api, &u, 0, None, "DELETE of an absent document").await?;
    put_ok(&api, &u, &c, &id, &json!({"x": 1})).await?;
    let r = api.delete(path.clone()).auth(&u).send().await?.expect(204);
    assert!(r.body.is_empty(), "204 has no body");
    assert_eq!(
        r.etag(),
        etag(2),
        "DELETE answers ETag: \"<version of the delete>\""
    );
    let r = api.get(path.clone()).auth(&u).send().await?;
    r.expect_problem(404, "document-not-found");
    let r = api.delete(path.clone()).auth(&u).send().await?;
    r.expect_problem(404, "document-not-found");
    let changes = all_changes(&api, &u, 0).await?;
    assert_eq!(changes.len(), 2, "put + delete logged: {changes:?}");
    let d = &changes[1];
    assert_eq!(d["op"], json!("delete"));
    assert_eq!(d["seq"], json!(2));
    assert_eq!(d["version"], json!(2));
    assert_eq!(d["collection"], json!(c));
    assert_eq!(d["id"], json!(id));
    assert_eq!(d["value"], Value::Null, "a delete entry has value null");
    assert_eq!(head(&api, &u).await?, 2);
    Ok(())
}

/// `PUT` needs `application/json`, `PATCH` needs
/// `application/merge-patch+json`; anything else (or none, or two
/// `Content-Type` fields) is 415 and changes nothing.
pub async fn content_types_are_enforced_with_415(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    for ct in [
        Some("text/plain"),
        Some("application/merge-patch+json"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("json"),
        None,
    ] {
        let req = api.put(path.clone()).auth(&u);
        let req = match ct {
            Some(ct) => req.body_with_type(ct, "{}"),
            None => req.body("{}"),
        };
        let r = req.send().await?;
        r.expect_problem(415, "unsupported-media-type");
    }
    // Two Content-Type fields name no one type, even when they agree.
    let r = api
        .put(path.clone())
        .auth(&u)
        .header("Content-Type", "application/json")
        .body_with_type("application/json", "{}")
        .send()
        .await?;
    r.expect_problem(415, "unsupported-media-type");
    assert_nothing_changed(
        &api,
        &u,
        0,
        Some((&c, &id, 404)),
        "PUT with wrong content types",
    )
    .await?;
    put_ok(&api, &u, &c, &id, &json!({"a": 1})).await?;
    for ct in [
        Some("application/json"),
        Some("text/plain"),
        Some("application/merge-patch"),
        None,
    ] {
        let req = api.patch(path.clone()).auth(&u);
        let req = match ct {
            Some(ct) => req.body_with_type(ct, r#"{"a":2}"#),
            None => req.body(r#"{"a":2}"#),
        };
        let r = req.send().await?;
        r.expect_problem(415, "unsupported-media-type");
        // RFC 5789 §2.2: the refusal names the patch format taken.
        assert_eq!(
            r.header("accept-patch").as_deref(),
            Some("application/merge-patch+json"),
            "{}",
            r.what
        );
    }
    // A content coding would be parsed as if the body were plain: refused,
    // with the codings taken (none) named.
    for patch in [false, true] {
        for coding in ["gzip", "identity, br", "x-custom"] {
            let (req, ct) = if patch {
                (api.patch(path.clone()), "application/merge-patch+json")
            } else {
                (api.put(path.clone()), "application/json")
            };
            let r = req
                .auth(&u)
                .header("Content-Encoding", coding)
                .body_with_type(ct, r#"{"a":9}"#)
                .send()
                .await?;
            r.expect_problem(415, "unsupported-media-type");
            assert_eq!(r.header("accept-encoding").as_deref(), Some("identity"));
        }
    }
    assert_nothing_changed(
        &api,
        &u,
        1,
        Some((&c, &id, 200)),
        "PATCH with wrong content types or codings",
    )
    .await?;
    let g = api.get(path.clone()).auth(&u).send().await?.expect(200);
    assert_document(&g.json(), &c, &id, 1, &json!({"a": 1}));
    // Parameters and case are tolerated.
    api.patch(path.clone())
        .auth(&u)
        .body_with_type("Application/Merge-Patch+JSON; charset=utf-8", r#"{"a":3}"#)
        .send()
        .await?
        .expect(200);
    // `identity` is no coding at all, nor is an empty field.
    for coding in ["identity", ""] {
        api.patch(path.clone())
            .auth(&u)
            .header("Content-Encoding", coding)
            .merge_patch(&json!({"a": 4}))
            .send()
            .await?
            .expect(200);
    }
    Ok(())
}
