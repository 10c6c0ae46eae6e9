//! Bad input of every kind: the right 4xx, and no data change.

use serde_json::json;

use super::*;
use crate::client::RawOutcome;
use crate::Target;

/// Method, extra headers and body of a raw request.
type RawSpec<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a [u8]>);

/// Bad collection/id names (`.`, `..`, 129 chars, space, `%2F`, other
/// characters) are 400 `invalid-name` for every method, sent as exact bytes
/// (no client-side dot-segment normalisation), and change nothing.
pub async fn bad_names_are_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let auth = format!("Bearer {}", u.token);
    let long = "a".repeat(129);
    let bad_segments = [
        ".",
        "..",
        long.as_str(),
        "a%20b",
        "a%2Fb",
        "%2F",
        "a%2fb",
        "%2E%2E",
        "a*b",
        "a:b",
        "caf%C3%A9",
        "a%00b",
        "a+b",
        "a@b",
        "a%25b",
    ];
    let good = "ok";
    for seg in bad_segments {
        for path in [
            format!("/v1/docs/{seg}/{good}"),
            format!("/v1/docs/{good}/{seg}"),
        ] {
            let requests: Vec<RawSpec> = vec![
                ("GET", vec![], None),
                (
                    "PUT",
                    vec![("Content-Type", "application/json")],
                    Some(b"{}"),
                ),
                (
                    "PATCH",
                    vec![("Content-Type", "application/merge-patch+json")],
                    Some(b"{}"),
                ),
                ("DELETE", vec![], None),
            ];
            for (method, mut headers, body) in requests {
                headers.push(("Authorization", &auth));
                let bytes = api.raw_request(method, &path, &headers, body);
                let what = format!("{method} {path}");
                match api.raw(&what, bytes, false).await? {
                    RawOutcome::Response(r) => {
                        r.expect_problem(400, "invalid-name");
                    }
                    RawOutcome::Closed(why) => panic!("{what}: must be 400 invalid-name, {why}"),
                }
            }
        }
    }
    // Percent-encoded allowed characters and 128-character names are fine
    // (decoded names are checked, not raw bytes).
    let max = "b".repeat(128);
    put_ok(&api, &u, &max, &max, &json!(1)).await?;
    assert_nothing_changed(
        &api,
        &u,
        1,
        Some((&max, &max, 200)),
        "requests with bad names",
    )
    .await?;
    let r = api.get("/v1/docs").auth(&u).send().await?.expect(200);
    assert_eq!(
        r.json()["documents"].as_array().unwrap().len(),
        1,
        "only the valid document exists"
    );
    Ok(())
}

/// Truncated JSON, non-JSON, invalid UTF-8, empty bodies and trailing
/// garbage are 400 `invalid-json` on PUT and PATCH, and change nothing.
pub async fn bad_json_is_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"a":"#.to_vec(),
        br#"{"a": [1, 2"#.to_vec(),
        b"not json".to_vec(),
        b"".to_vec(),
        b"   ".to_vec(),
        br#"{"a":1} trailing"#.to_vec(),
        br#"{"a":1}{"b":2}"#.to_vec(),
        b"\"\xff\xfe\"".to_vec(),
        br#"{'single': 'quotes'}"#.to_vec(),
        br#"{"a":NaN}"#.to_vec(),
        b"[1,]".to_vec(),
        br#""unterminated"#.to_vec(),
        // A member named twice: parsers disagree on which one counts.
        br#"{"a":1,"a":2}"#.to_vec(),
        br#"{"outer":{"x":1,"y":2,"x":3}}"#.to_vec(),
    ];
    for body in &bodies {
        let r = api
            .put(path.clone())
            .auth(&u)
            .body_with_type("application/json", body.clone())
            .send()
            .await?;
        if r.status != 400 {
            panic!(
                "PUT with body {:?} must be 400, got {} {}",
                String::from_utf8_lossy(body),
                r.status,
                r.text()
            );
        }
        r.expect_problem(400, "invalid-json");
    }
    assert_nothing_changed(&api, &u, 0, Some((&c, &id, 404)), "PUTs with bad JSON").await?;
    put_ok(&api, &u, &c, &id, &json!({"keep": 1})).await?;
    for body in &bodies {
        let r = api
            .patch(path.clone())
            .auth(&u)
            .body_with_type("application/merge-patch+json", body.clone())
            .send()
            .await?;
        r.expect_problem(400, "invalid-json");
    }
    // Truncated over raw TCP too: the declared length matches, the JSON
    // does not.
    let body = br#"{"nested": {"a": [1, 2, {"b": "#;
    let bytes = api.raw_request(
        "PUT",
        &path,
        &[
            ("Authorization", &format!("Bearer {}", u.token)),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    );
    api.raw("PUT truncated JSON (raw)", bytes, false)
        .await?
        .response()
        .expect_problem(400, "invalid-json");
    assert_nothing_changed(&api, &u, 1, Some((&c, &id, 200)), "PATCHes with bad JSON").await?;
    let g = api.get(path).auth(&u).send().await?.expect(200);
    assert_document(&g.json(), &c, &id, 1, &json!({"keep": 1}));
    Ok(())
}

/// Values nested deeper than 64 levels of arrays and objects are 400
/// `invalid-body` on PUT, PATCH and in a batch (deeper than JSON parsers
/// go, `invalid-json`), and change nothing; 64 levels are stored and read
/// back, and the user's log stays readable and writable.
pub async fn values_nested_too_deep_are_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));

    let deepest = serde_json::from_str::<serde_json::Value>(&objects(64))?;
    put_ok(&api, &u, &c, &id, &deepest).await?;
    // (body, problem alone, problem as a batch item: three levels deeper,
    // so past the parser's 128 sooner).
    let refused = [
        (arrays(65), "invalid-body", "invalid-body"),
        (objects(65), "invalid-body", "invalid-body"),
        (arrays(127), "invalid-body", "invalid-json"),
        (arrays(200), "invalid-json", "invalid-json"),
    ];
    for (body, kind, in_batch) in &refused {
        for (method, content_type) in [
            (http::Method::PUT, "application/json"),
            (http::Method::PATCH, "application/merge-patch+json"),
        ] {
            let r = api
                .request(method, path.clone())
                .auth(&u)
                .body_with_type(content_type, body.clone())
                .send()
                .await?;
            r.expect_problem(400, kind);
        }
        let batch = format!(
            r#"{{"mutations":[{{"id":"deep","op":"put","collection":"{c}","doc":"other","value":{body}}}]}}"#
        );
        api.post("/v1/mutations")
            .auth(&u)
            .body_with_type("application/json", batch)
            .send()
            .await?
            .expect_problem(400, in_batch);
    }
    assert_nothing_changed(&api, &u, 1, Some((&c, &id, 200)), "too-deep values").await?;
    let g = api.get(path).auth(&u).send().await?.expect(200);
    assert_eq!(
        g.json()["value"],
        deepest,
        "a 64-deep value reads back whole"
    );
    let page = changes_page(&api, &u, 0, 10).await?;
    assert_eq!(page["changes"][0]["value"], deepest);
    put_ok(
        &api,
        &u,
        &c,
        &doc_id(),
        &json!("the log still takes writes"),
    )
    .await?;
    Ok(())
}

/// Bodies over `max_body_bytes` are 413 `payload-too-large` (with the
/// `max_body_bytes` member) on every writing route and on `OPTIONS` — sent whole, announced
/// by Content-Length without being sent, or chunked — and change nothing; a
/// body of exactly the limit is accepted.
pub async fn oversized_bodies_are_413(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let auth = format!("Bearer {}", u.token);
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let max = t.settings.max_body_bytes;
    // A JSON string of exactly `len` bytes.
    let json_of_len = |len: usize| {
        let mut s = Vec::with_capacity(len);
        s.push(b'"');
        s.resize(len - 1, b'x');
        s.push(b'"');
        s
    };
    let too_big = json_of_len(max + 1);
    let targets: Vec<(&str, String, &str)> = vec![
        ("PUT", path.clone(), "application/json"),
        ("PATCH", path.clone(), "application/merge-patch+json"),
        ("POST", "/v1/mutations".to_string(), "application/json"),
        // The limit is on every request body, even where none is used.
        ("OPTIONS", path.clone(), "application/json"),
    ];
    for (method, p, ct) in &targets {
        // Whole body.
        let bytes = api.raw_request(
            method,
            p,
            &[("Authorization", &auth), ("Content-Type", ct)],
            Some(&too_big),
        );
        let r = api
            .raw(
                &format!("{method} {p} with {} bytes", max + 1),
                bytes,
                false,
            )
            .await?
            .response();
        let prob = r.expect_problem(413, "payload-too-large");
        assert_eq!(
            prob["max_body_bytes"],
            json!(max),
            "413 carries max_body_bytes: {prob}"
        );
        // Announced, never sent: the server must answer without waiting
        // for the body.
        let huge = (max as u64 * 1000).to_string();
        let head = api.raw_head(
            method,
            p,
            &[
                ("Authorization", &auth),
                ("Content-Type", ct),
                ("Content-Length", &huge),
            ],
        );
        let r = api
            .raw(
                &format!("{method} {p} announcing {huge} bytes and sending none (413 is due from the headers alone)"),
                head,
                false,
            )
            .await?
            .response();
        r.expect_problem(413, "payload-too-large");
        // Chunked, no length announced.
        let mut chunked = api.raw_head(
            method,
            p,
            &[
                ("Authorization", &auth),
                ("Content-Type", ct),
                ("Transfer-Encoding", "chunked"),
            ],
        );
        for piece in too_big.chunks(1000) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let r = api
            .raw(
                &format!("{method} {p} chunked {} bytes", max + 1),
                chunked,
                false,
            )
            .await?
            .response();
        r.expect_problem(413, "payload-too-large");
    }
    assert_nothing_changed(&api, &u, 0, Some((&c, &id, 404)), "oversized bodies").await?;
    // Exactly the limit is fine.
    let exact = json_of_len(max);
    api.put(path.clone())
        .auth(&u)
        .body_with_type("application/json", exact)
        .send()
        .await?
        .expect(201);
    Ok(())
}

/// A merge patch cannot grow a document past `max_body_bytes` of JSON,
/// alone or in a batch: 413 `document-too-large` (with
/// `max_document_bytes`), nothing changed, and a batch goes on with its
/// next item. Without the limit, patch after patch grows one document (and
/// every log entry that carries it) without bound.
pub async fn documents_cannot_outgrow_the_body_limit(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let max = t.settings.max_body_bytes;
    let half = "x".repeat(max / 2);
    api.put(path.clone())
        .auth(&u)
        .json(&json!({ "a": half }))
        .send()
        .await?
        .expect(201);

    // Each patch fits in a body; the document it would make does not.
    let grow = json!({ "b": half });
    let r = api
        .patch(path.clone())
        .auth(&u)
        .merge_patch(&grow)
        .send()
        .await?;
    let prob = r.expect_problem(413, "document-too-large");
    assert_eq!(prob["max_document_bytes"], json!(max), "{prob}");
    assert_nothing_changed(&api, &u, 1, Some((&c, &id, 200)), "a patch past the limit").await?;

    let small = doc_id();
    let body = json!({"mutations": [
        {"id": format!("g-{}", random_name(8)), "op": "patch", "collection": c, "doc": id, "value": grow},
        {"id": format!("s-{}", random_name(8)), "op": "put", "collection": c, "doc": small, "value": 1},
    ]});
    let r = mutations::post_batch(&api, &u, &body).await?.expect(200);
    let results = r.json()["results"].clone();
    assert_eq!(results[0]["status"], json!(413), "{results}");
    assert_eq!(
        results[0]["problem"]["type"],
        json!("document-too-large"),
        "{results}"
    );
    assert_eq!(
        results[1]["status"],
        json!(201),
        "the batch goes on: {results}"
    );
    assert_eq!(head(&api, &u).await?, 2, "only the small put was logged");

    // The document is where the first PUT left it, and a patch that keeps
    // it within the limit still applies.
    let doc = api
        .get(path.clone())
        .auth(&u)
        .send()
        .await?
        .expect(200)
        .json();
    assert_eq!(doc["version"], json!(1), "{doc}");
    assert_eq!(
        doc["value"]["b"],
        Value::Null,
        "the refused patch left no trace"
    );
    api.patch(path)
        .auth(&u)
        .merge_patch(&json!({ "a": "short", "b": half }))
        .send()
        .await?
        .expect(200);
    Ok(())
}

/// Content-Length games: a body shorter than announced (then half-close),
/// conflicting Content-Length headers, both Content-Length and chunked —
/// answered with a 4xx or a closed connection, never a 5xx, never a change.
pub async fn content_length_games_change_nothing(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let auth = format!("Bearer {}", u.token);
    let c = coll();
    let id = doc_id();
    let path = doc_path(&c, &id);
    let body = br#"{"a":1}"#;

    // Announce more than is sent, then close our side.
    let mut short = api.raw_head(
        "PUT",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Length", "100"),
        ],
    );
    short.extend_from_slice(body);
    let outcome = api
        .raw_framing("PUT with a short body", short, true)
        .await?;
    if let RawOutcome::Response(r) = &outcome {
        assert!(
            (400..500).contains(&r.status),
            "short body: expected a 4xx, got {} {}",
            r.status,
            r.text()
        );
    }

    // Conflicting lengths.
    let mut conflicting = api.raw_head(
        "PUT",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Length", "7"),
            ("Content-Length", "3"),
        ],
    );
    conflicting.extend_from_slice(body);
    let outcome = api
        .raw_framing("PUT with two Content-Lengths", conflicting, false)
        .await?;
    if let RawOutcome::Response(r) = &outcome {
        assert!(
            (400..500).contains(&r.status),
            "two Content-Lengths: expected a 4xx, got {} {}",
            r.status,
            r.text()
        );
    }

    // Content-Length and chunked together (request smuggling shape).
    let mut both = api.raw_head(
        "PUT",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Length", "4"),
            ("Transfer-Encoding", "chunked"),
        ],
    );
    both.extend_from_slice(b"7\r\n{\"a\":1}\r\n0\r\n\r\n");
    let outcome = api
        .raw_framing("PUT with Content-Length and chunked", both, false)
        .await?;
    let smuggled_ok = matches!(&outcome, RawOutcome::Response(r) if r.status == 201);
    if let RawOutcome::Response(r) = &outcome {
        assert!(
            (400..500).contains(&r.status) || r.status == 201,
            "Content-Length + chunked: expected a 4xx (or the chunked body honoured), got {} {}",
            r.status,
            r.text()
        );
    }

    // Announce zero and send a body: the body is the next "request".
    let mut zero = api.raw_head(
        "PUT",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Length", "0"),
        ],
    );
    zero.extend_from_slice(body);
    if let RawOutcome::Response(r) = api
        .raw("PUT with Content-Length 0 and a body", zero, false)
        .await?
    {
        r.expect_problem(400, "invalid-json");
    }

    let expected_head = u64::from(smuggled_ok);
    let status = if smuggled_ok { 200 } else { 404 };
    assert_nothing_changed(
        &api,
        &u,
        expected_head,
        Some((&c, &id, status)),
        "Content-Length games",
    )
    .await?;
    if smuggled_ok {
        let g = api.get(path).auth(&u).send().await?.expect(200);
        assert_document(&g.json(), &c, &id, 1, &json!({"a": 1}));
    }
    Ok(())
}
