//! Health, routing, methods, `HEAD` and `OPTIONS`.

use serde_json::json;

use super::*;
use crate::Target;

/// `GET /v1/health` answers 200 `{"status":"ok"}` as JSON without a token;
/// `HEAD` too.
pub async fn health_needs_no_auth(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let r = api.get("/v1/health").send().await?.expect(200);
    assert_eq!(r.json(), json!({"status": "ok"}), "health body");
    let ct = r.must_header("content-type");
    assert!(
        ct.starts_with("application/json"),
        "health must be application/json, got {ct}"
    );
    let r = api.head("/v1/health").send().await?.expect(200);
    assert!(r.body.is_empty(), "HEAD must have no body");
    // A (bad) token on health is ignored, not refused.
    api.get("/v1/health")
        .header("Authorization", "Bearer nonsense")
        .send()
        .await?
        .expect(200);
    Ok(())
}

/// Unknown routes are 404 `not-found` (with a valid token, for any method).
pub async fn unknown_routes_are_404(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let paths = [
        "/",
        "/v1",
        "/v1/",
        "/v2/health",
        "/v1/nope",
        "/v1/docs/onlycollection",
        "/v1/docs/onlycollection/x/extra",
        "/v1/changes/1",
        "/v1/head/x",
        "/v1/mutations/x",
        "/v1/healthz",
        "/V1/health",
    ];
    for p in paths {
        for m in [http::Method::GET, http::Method::POST] {
            let r = api.request(m.clone(), p).auth(&u).send().await?;
            r.expect_problem(404, "not-found");
        }
    }
    assert_nothing_changed(&api, &u, 0, None, "requests to unknown routes").await
}

/// Methods a route does not accept are 405 `method-not-allowed` with
/// `Allow` listing exactly the accepted ones, in the documented order.
pub async fn wrong_methods_are_405_with_allow(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    put_ok(&api, &u, &c, &id, &json!(1)).await?;
    let doc = doc_path(&c, &id);
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            doc.clone(),
            vec!["POST"],
            "GET, HEAD, PUT, PATCH, DELETE, OPTIONS",
        ),
        (
            "/v1/changes".into(),
            vec!["POST", "PUT", "PATCH", "DELETE"],
            "GET, HEAD, OPTIONS",
        ),
        (
            "/v1/head".into(),
            vec!["POST", "PUT", "DELETE"],
            "GET, HEAD, OPTIONS",
        ),
        (
            "/v1/docs".into(),
            vec!["POST", "PUT", "PATCH", "DELETE"],
            "GET, HEAD, OPTIONS",
        ),
        (
            "/v1/mutations".into(),
            vec!["GET", "PUT", "PATCH", "DELETE"],
            "POST, OPTIONS",
        ),
        (
            "/v1/health".into(),
            vec!["POST", "PUT", "DELETE"],
            "GET, HEAD, OPTIONS",
        ),
    ];
    for (path, methods, allow) in cases {
        for m in methods {
            let method = http::Method::from_bytes(m.as_bytes()).unwrap();
            let r = api
                .request(method, path.clone())
                .auth(&u)
                .body_with_type("application/json", "{}")
                .send()
                .await?;
            r.expect_problem(405, "method-not-allowed");
            let got = r.header_tokens("allow");
            let want: Vec<String> = allow.split(", ").map(String::from).collect();
            assert_eq!(
                got, want,
                "{m} {path}: Allow must list the accepted methods in the order GET, HEAD, PUT, PATCH, DELETE, POST, OPTIONS"
            );
        }
    }
    // Unusual methods too.
    let r = api
        .request(http::Method::from_bytes(b"FROB").unwrap(), doc.clone())
        .auth(&u)
        .send()
        .await?;
    r.expect_problem(405, "method-not-allowed");
    assert_nothing_changed(&api, &u, 1, Some((&c, &id, 200)), "405 requests").await
}

/// `OPTIONS` on every route answers 204 with `Allow` (and, for documents,
/// `Accept-Patch`).
pub async fn options_answers_204_with_allow(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let routes = [
        ("/v1/docs/c/i", "GET, HEAD, PUT, PATCH, DELETE, OPTIONS"),
        ("/v1/docs", "GET, HEAD, OPTIONS"),
        ("/v1/changes", "GET, HEAD, OPTIONS"),
        ("/v1/head", "GET, HEAD, OPTIONS"),
        ("/v1/mutations", "POST, OPTIONS"),
        ("/v1/health", "GET, HEAD, OPTIONS"),
    ];
    for (path, allow) in routes {
        let r = api.options(path).auth(&u).send().await?.expect(204);
        let want: Vec<String> = allow.split(", ").map(String::from).collect();
        assert_eq!(r.header_tokens("allow"), want, "OPTIONS {path}: Allow");
        assert!(r.body.is_empty(), "OPTIONS {path}: 204 has no body");
        // RFC 5789 §3.1: where PATCH is allowed, the formats it takes.
        let accept_patch = path
            .starts_with("/v1/docs/")
            .then_some("application/merge-patch+json");
        assert_eq!(
            r.header("accept-patch").as_deref(),
            accept_patch,
            "OPTIONS {path}: Accept-Patch"
        );
    }
    assert_nothing_changed(&api, &u, 0, Some(("c", "i", 404)), "OPTIONS").await
}

/// `HEAD` is accepted wherever `GET` is, with the same status and headers
/// (ETag included) and no body; conditional HEAD gives 304 too.
pub async fn head_mirrors_get(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let v = put_ok(&api, &u, &c, &id, &json!({"k": "v"})).await?;
    let paths = [
        doc_path(&c, &id),
        "/v1/docs".to_string(),
        format!("/v1/docs?collection={c}"),
        "/v1/changes?since=0".to_string(),
        "/v1/head".to_string(),
        "/v1/health".to_string(),
    ];
    for p in &paths {
        let g = api.get(p.clone()).auth(&u).send().await?;
        let h = api.head(p.clone()).auth(&u).send().await?;
        assert_eq!(h.status, g.status, "HEAD {p} status must equal GET's");
        assert!(h.body.is_empty(), "HEAD {p} must have no body");
        assert_eq!(
            h.header("etag"),
            g.header("etag"),
            "HEAD {p}: ETag must equal GET's"
        );
        let ct_g = g.header("content-type");
        let ct_h = h.header("content-type");
        assert_eq!(ct_h, ct_g, "HEAD {p}: Content-Type must equal GET's");
    }
    let r = api
        .head(doc_path(&c, &id))
        .auth(&u)
        .header("If-None-Match", etag(v))
        .send()
        .await?
        .expect(304);
    // A 304 announces no length of its own (RFC 9110 §8.6): only that of
    // the 200 it stands for, if any.
    let full = api.get(doc_path(&c, &id)).auth(&u).send().await?;
    assert!(
        r.header("content-length").is_none()
            || r.header("content-length") == full.header("content-length"),
        "conditional HEAD 304: Content-Length {:?}, the 200's is {:?}",
        r.header("content-length"),
        full.header("content-length")
    );
    let r = api.head(doc_path(&c, "absent")).auth(&u).send().await?;
    assert_eq!(r.status, 404, "HEAD of an absent document");
    // HEAD without a token is refused like GET.
    let r = api.head("/v1/head").send().await?;
    assert_eq!(r.status, 401, "HEAD /v1/head without a token");
    Ok(())
}

/// A query parameter given twice is 400 `invalid-parameter` on every
/// authenticated route, also one that reads no parameter, and changes
/// nothing.
pub async fn repeated_query_parameters_are_400_everywhere(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let batch = json!({"mutations": [
        {"id": "rq", "op": "put", "collection": "c", "doc": "i", "value": 1}
    ]});
    let requests = [
        api.get("/v1/head?x=1&x=2"),
        api.get("/v1/changes?since=0&since=0"),
        api.get("/v1/docs?limit=5&limit=5"),
        api.get("/v1/docs/c/i?x=1&x=1"),
        api.put("/v1/docs/c/i?x=1&x=1").json(&json!(1)),
        api.post("/v1/mutations?x=1&x=2").json(&batch),
    ];
    for req in requests {
        let r = req.auth(&u).send().await?;
        let p = r.expect_problem(400, "invalid-parameter");
        assert!(
            p["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("more than once"),
            "{}: {p}",
            r.what
        );
    }
    assert_nothing_changed(&api, &u, 0, Some(("c", "i", 404)), "repeated parameters").await
}
