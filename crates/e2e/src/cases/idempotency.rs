//! `Idempotency-Key` on `PUT`/`PATCH`/`DELETE`: a retry returns the first
//! result with `Idempotent-Replayed: true` and logs nothing; the same key on
//! another request is 422; malformed keys are 400.

use serde_json::json;

use super::*;
use crate::Target;

#[track_caller]
fn assert_replayed(first: &Resp, again: &Resp) {
    assert_eq!(
        again.status, first.status,
        "{}: a replay must answer the first status",
        again.what
    );
    assert_eq!(
        again.header("idempotent-replayed").as_deref(),
        Some("true"),
        "{}: a replay must carry `Idempotent-Replayed: true`",
        again.what
    );
    if !first.body.is_empty() || !again.body.is_empty() {
        assert_eq!(
            again.json(),
            first.json(),
            "{}: a replay must answer the first body",
            again.what
        );
    }
    assert_eq!(
        again.header("etag"),
        first.header("etag"),
        "{}: a replay must answer the first ETag",
        again.what
    );
    assert_eq!(
        again.header("location"),
        first.header("location"),
        "{}: a replay must answer the first Location",
        again.what
    );
}

/// A `PUT` retried with the same key: same status (201), body, ETag and
/// Location, `Idempotent-Replayed: true`, nothing new in `/v1/changes` —
/// even after other writes to the same document.
pub async fn put_replay_returns_first_result(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let key = format!("key-{}", random_name(12));
    let send = || {
        api.put(doc_path(&c, &id))
            .auth(&u)
            .header("Idempotency-Key", &key)
            .json(&json!({"v": 1}))
            .send()
    };
    let first = send().await?.expect(201);
    assert!(
        first
            .header("idempotent-replayed")
            .is_none_or(|v| v != "true"),
        "the first request is not a replay"
    );
    let again = send().await?;
    assert_replayed(&first, &again);
    assert_nothing_changed(&api, &u, 1, Some((&c, &id, 200)), "an idempotent replay").await?;
    // Another write to the document, then the replay still answers the
    // first result and changes nothing.
    put_ok(&api, &u, &c, &id, &json!({"v": 2})).await?;
    let again = send().await?;
    assert_replayed(&first, &again);
    assert_nothing_changed(
        &api,
        &u,
        2,
        Some((&c, &id, 200)),
        "a late idempotent replay",
    )
    .await?;
    let g = api
        .get(doc_path(&c, &id))
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert_document(&g.json(), &c, &id, 2, &json!({"v": 2}));
    assert_eq!(
        all_changes(&api, &u, 0).await?.len(),
        2,
        "exactly two entries logged"
    );
    Ok(())
}

/// `PATCH` and `DELETE` replays answer their first result (a replayed
/// DELETE is 204, not 404) and log nothing.
pub async fn patch_and_delete_replays(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    put_ok(&api, &u, &c, &id, &json!({"n": 0})).await?;
    let pk = format!("patch-{}", random_name(8));
    let patch = || {
        api.patch(path.clone())
            .auth(&u)
            .header("Idempotency-Key", &pk)
            .merge_patch(&json!({"m": 1}))
            .send()
    };
    let first = patch().await?.expect(200);
    let again = patch().await?;
    assert_replayed(&first, &again);
    assert_nothing_changed(&api, &u, 2, Some((&c, &id, 200)), "a PATCH replay").await?;

    let dk = format!("delete-{}", random_name(8));
    let delete = || {
        api.delete(path.clone())
            .auth(&u)
            .header("Idempotency-Key", &dk)
            .send()
    };
    let first = delete().await?.expect(204);
    let again = delete().await?;
    assert_replayed(&first, &again);
    assert_nothing_changed(&api, &u, 3, Some((&c, &id, 404)), "a DELETE replay").await?;

    Ok(())
}

/// The same key with a different body, path, method or precondition is 422
/// `idempotency-key-mismatch` and logs nothing; the same request spelled
/// differently (whitespace in the JSON) replays.
pub async fn key_reuse_with_other_request_is_422(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let key = format!("k-{}", random_name(12));
    api.put(doc_path(&c, &id))
        .auth(&u)
        .header("Idempotency-Key", &key)
        .json(&json!({"v": 1}))
        .send()
        .await?
        .expect(201);
    let other_id = doc_id();
    let attempts = vec![
        api.put(doc_path(&c, &id))
            .auth(&u)
            .header("Idempotency-Key", &key)
            .json(&json!({"v": 2})),
        api.put(doc_path(&c, &other_id))
            .auth(&u)
            .header("Idempotency-Key", &key)
            .json(&json!({"v": 1})),
        api.patch(doc_path(&c, &id))
            .auth(&u)
            .header("Idempotency-Key", &key)
            .merge_patch(&json!({"v": 1})),
        api.delete(doc_path(&c, &id))
            .auth(&u)
            .header("Idempotency-Key", &key),
        // The same body under a precondition is another request.
        api.put(doc_path(&c, &id))
            .auth(&u)
            .header("Idempotency-Key", &key)
            .header("If-Match", "\"1\"")
            .json(&json!({"v": 1})),
    ];
    for req in attempts {
        let r = req.send().await?;
        r.expect_problem(422, "idempotency-key-mismatch");
    }
    // The same request spelled differently (whitespace) is the same
    // request: a replay.
    let r = api
        .put(doc_path(&c, &id))
        .auth(&u)
        .header("Idempotency-Key", &key)
        .body_with_type("application/json", " { \"v\" :  1 }\n")
        .send()
        .await?
        .expect(201);
    assert_eq!(r.header("idempotent-replayed").as_deref(), Some("true"));
    assert_nothing_changed(&api, &u, 1, Some((&c, &id, 200)), "reused idempotency keys").await?;
    let r = api.get(doc_path(&c, &other_id)).auth(&u).send().await?;
    assert_eq!(
        r.status, 404,
        "the mismatched PUT must not have created {other_id}"
    );
    Ok(())
}

/// Keys must be one field of 1–255 visible ASCII characters, else 400
/// `invalid-parameter` naming `Idempotency-Key`; 255 characters are fine.
pub async fn bad_keys_are_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let bad: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        "k".repeat(256).into_bytes(),
        b"has space".to_vec(),
        b"tab\there".to_vec(),
        "caf\u{e9}".as_bytes().to_vec(),
        vec![b'k', 0xff, b'k'],
        // Two fields, even with one value: which one counts is ambiguous.
        b"k1\r\nIdempotency-Key: k1".to_vec(),
    ];
    for key in bad {
        // Send raw bytes: some keys are not valid for an HTTP library.
        let value = String::from_utf8_lossy(&key).into_owned();
        let body = b"{\"v\":1}";
        let mut head = api.raw_head(
            "PUT",
            &doc_path(&c, &id),
            &[
                ("Authorization", &format!("Bearer {}", u.token)),
                ("Content-Type", "application/json"),
                ("Content-Length", &body.len().to_string()),
            ],
        );
        // Insert the key header (exact bytes) before the blank line.
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"Idempotency-Key: ");
        head.extend_from_slice(&key);
        head.extend_from_slice(b"\r\n\r\n");
        head.extend_from_slice(body);
        let outcome = api
            .raw(&format!("PUT with Idempotency-Key {value:?}"), head, false)
            .await?;
        match outcome {
            crate::client::RawOutcome::Response(r) => {
                let p = r.expect_problem(400, "invalid-parameter");
                assert!(
                    p["parameter"]
                        .as_str()
                        .unwrap_or_default()
                        .eq_ignore_ascii_case("idempotency-key"),
                    "the problem must name Idempotency-Key: {p}"
                );
            }
            // A front end may refuse a header with control bytes outright.
            crate::client::RawOutcome::Closed(why)
                if key.iter().any(|b| *b < 0x20 || *b >= 0x7f) =>
            {
                let _ = why;
            }
            crate::client::RawOutcome::Closed(why) => panic!("{why}"),
        }
    }
    assert_nothing_changed(&api, &u, 0, Some((&c, &id, 404)), "PUTs with invalid keys").await?;
    api.put(doc_path(&c, &id))
        .auth(&u)
        .header("Idempotency-Key", "~".repeat(255))
        .json(&json!(1))
        .send()
        .await?
        .expect(201);
    api.put(doc_path(&c, &doc_id()))
        .auth(&u)
        .header("Idempotency-Key", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
        .json(&json!(1))
        .send()
        .await?
        .expect(201);
    Ok(())
}

/// Keys belong to a user: another user reusing a key is neither a replay
/// nor a mismatch.
pub async fn keys_are_per_user(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let a = t.new_user();
    let b = t.new_user();
    let c = coll();
    let id = doc_id();
    let key = format!("shared-{}", random_name(8));
    for (user, value) in [(&a, json!("a")), (&b, json!("b"))] {
        let r = api
            .put(doc_path(&c, &id))
            .auth(user)
            .header("Idempotency-Key", &key)
            .json(&value)
            .send()
            .await?
            .expect(201);
        assert!(
            r.header("idempotent-replayed").is_none_or(|v| v != "true"),
            "another user's key must not replay"
        );
        assert_document(&r.json(), &c, &id, 1, &value);
    }
    Ok(())
}
