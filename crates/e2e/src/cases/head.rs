//! `GET /v1/head`: the cheapest smart-poll probe.

use serde_json::json;

use super::*;
use crate::Target;

/// `{"head":n}` with `ETag: "<n>"`, `X-Poll-Interval`, `Cache-Control`;
/// `If-None-Match` (weak comparison) → 304 with the same headers.
pub async fn head_reports_seq_with_etag_and_304(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let r = api.get("/v1/head").auth(&u).send().await?.expect(200);
    assert_eq!(r.json(), json!({"head": 0}), "a fresh user's head");
    assert_eq!(r.etag(), etag(0));
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    let ct = r.must_header("content-type");
    assert!(ct.starts_with("application/json"), "head is JSON, got {ct}");

    let c = coll();
    put_ok(&api, &u, &c, "a", &json!(1)).await?;
    put_ok(&api, &u, &c, "b", &json!(2)).await?;
    api.delete(doc_path(&c, "a"))
        .auth(&u)
        .send()
        .await?
        .expect(204);
    let r = api.get("/v1/head").auth(&u).send().await?.expect(200);
    assert_eq!(r.json(), json!({"head": 3}));
    assert_eq!(r.etag(), etag(3));

    for inm in [
        etag(3),
        format!("W/{}", etag(3)),
        format!("\"1\", {}", etag(3)),
        "*".into(),
    ] {
        let r = api
            .get("/v1/head")
            .auth(&u)
            .header("If-None-Match", &inm)
            .send()
            .await?;
        if r.status != 304 {
            panic!(
                "GET /v1/head with If-None-Match: {inm} at head 3 must be 304, got {} {}",
                r.status,
                r.text()
            );
        }
        assert!(r.body.is_empty());
        assert_eq!(r.etag(), etag(3));
        assert_poll_headers(&r, t.settings.poll_interval_seconds);
    }
    let r = api
        .get("/v1/head")
        .auth(&u)
        .header("If-None-Match", etag(2))
        .send()
        .await?
        .expect(200);
    assert_eq!(r.json(), json!({"head": 3}));
    // Failed and refused writes do not move the head.
    api.patch(doc_path(&c, "a"))
        .auth(&u)
        .merge_patch(&json!({}))
        .send()
        .await?
        .expect(404);
    assert_eq!(head(&api, &u).await?, 3);
    Ok(())
}
