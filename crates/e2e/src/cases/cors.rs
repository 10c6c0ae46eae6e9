//! CORS: configurable origins, token-free preflight, exposed headers.

use super::*;
use crate::Target;

const EXPOSED: &[&str] = &[
    "etag",
    "x-poll-interval",
    "retry-after",
    "location",
    "idempotent-replayed",
    "preference-applied",
    "www-authenticate",
    "accept-patch",
];
const ALLOWED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "if-match",
    "if-none-match",
    "idempotency-key",
    "prefer",
];

/// An origin the target allows, and what `Access-Control-Allow-Origin`
/// must say for it.
fn allowed_origin(t: &Target) -> (String, String) {
    match t.settings.cors_origins.iter().find(|o| *o != "*") {
        Some(o) if !t.settings.cors_origins.iter().any(|o| o == "*") => (o.clone(), o.clone()),
        _ => ("https://any-origin.example".to_string(), "*".to_string()),
    }
}

fn lower_tokens(r: &Resp, name: &str) -> Vec<String> {
    r.header_tokens(name)
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

/// A preflight (`OPTIONS` + `Access-Control-Request-Method`) from an
/// allowed origin needs no token: 204 with Allow-Origin, Allow-Methods,
/// Allow-Headers (the contract's list) and `Max-Age: 600`.
pub async fn preflight_needs_no_token(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let (origin, acao) = allowed_origin(t);
    for (path, method) in [
        ("/v1/docs/c/i", "PUT"),
        ("/v1/docs/c/i", "PATCH"),
        ("/v1/docs/c/i", "DELETE"),
        ("/v1/changes", "GET"),
        ("/v1/mutations", "POST"),
    ] {
        let r = api
            .options(path)
            .header("Origin", &origin)
            .header("Access-Control-Request-Method", method)
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type, if-match, if-none-match, idempotency-key, prefer",
            )
            .send()
            .await?;
        if r.status != 204 {
            panic!(
                "preflight {method} {path} from {origin}: expected 204 without a token, got {} {}",
                r.status,
                r.text()
            );
        }
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(acao.clone()),
            "preflight {path}: Allow-Origin"
        );
        let methods = r.header_tokens("access-control-allow-methods");
        assert!(
            methods.iter().any(|m| m == method),
            "preflight {path}: Allow-Methods must include {method}, got {methods:?}"
        );
        let headers = lower_tokens(&r, "access-control-allow-headers");
        for h in ALLOWED_HEADERS {
            assert!(
                headers.iter().any(|x| x == h),
                "preflight {path}: Allow-Headers must include {h}, got {headers:?}"
            );
        }
        assert_eq!(
            r.header("access-control-max-age").as_deref(),
            Some("600"),
            "preflight {path}: Max-Age"
        );
    }
    Ok(())
}

/// Actual responses to an allowed origin carry Allow-Origin, `Vary:
/// Origin` and `Access-Control-Expose-Headers` with the contract's list —
/// on success, 304 and errors alike.
pub async fn allowed_origin_gets_exposed_headers(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let (origin, acao) = allowed_origin(t);
    let responses = vec![
        api.get("/v1/head")
            .auth(&u)
            .header("Origin", &origin)
            .send()
            .await?
            .expect(200),
        api.get("/v1/head")
            .auth(&u)
            .header("Origin", &origin)
            .header("If-None-Match", etag(0))
            .send()
            .await?
            .expect(304),
        api.get("/v1/changes?since=0")
            .auth(&u)
            .header("Origin", &origin)
            .send()
            .await?
            .expect(200),
        api.put(doc_path("c", "x"))
            .auth(&u)
            .header("Origin", &origin)
            .json(&serde_json::json!(1))
            .send()
            .await?
            .expect(201),
        api.get("/v1/head")
            .header("Origin", &origin)
            .send()
            .await?
            .expect(401),
    ];
    for r in responses {
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(acao.clone()),
            "{} ({}): Access-Control-Allow-Origin for an allowed origin",
            r.what,
            r.status
        );
        let vary = lower_tokens(&r, "vary");
        assert!(
            vary.iter().any(|v| v == "origin" || v == "*"),
            "{} ({}): Vary must include Origin, got {vary:?}",
            r.what,
            r.status
        );
        let exposed = lower_tokens(&r, "access-control-expose-headers");
        for h in EXPOSED {
            assert!(
                exposed.iter().any(|x| x == h),
                "{} ({}): Expose-Headers must include {h}, got {exposed:?}",
                r.what,
                r.status
            );
        }
    }
    Ok(())
}

/// An origin not in the list gets no CORS headers, on requests and on
/// preflights.
pub async fn disallowed_origin_gets_no_cors_headers(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.evil",
        "http://localhost",
    ] {
        if t.settings.cors_origins.iter().any(|o| o == origin) {
            continue;
        }
        let r = api
            .get("/v1/head")
            .auth(&u)
            .header("Origin", origin)
            .send()
            .await?
            .expect(200);
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin}: no Allow-Origin on a request: {:?}",
            r.headers
        );
        // The answer depends on Origin even when it carries no CORS
        // headers: a cache must not reuse it for an allowed origin.
        assert!(
            lower_tokens(&r, "vary").iter().any(|v| v == "origin"),
            "{origin}: Vary must name Origin: {:?}",
            r.headers
        );
        let r = api
            .options("/v1/docs/c/i")
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PUT")
            .send()
            .await?;
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin}: no Allow-Origin on a preflight: {:?}",
            r.headers
        );
        assert!(
            r.header("access-control-allow-methods").is_none(),
            "{origin}: no Allow-Methods on a preflight"
        );
    }
    let r = api.get("/v1/head").auth(&u).send().await?.expect(200);
    assert!(
        lower_tokens(&r, "vary").iter().any(|v| v == "origin"),
        "no Origin: Vary must still name Origin: {:?}",
        r.headers
    );
    // Allowed origins differing only by a trailing path or case are other origins.
    if let Some(o) = t.settings.cors_origins.first() {
        let other = format!("{o}.evil");
        let r = api
            .get("/v1/head")
            .auth(&u)
            .header("Origin", &other)
            .send()
            .await?
            .expect(200);
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{other}: not an allowed origin"
        );
    }
    Ok(())
}
