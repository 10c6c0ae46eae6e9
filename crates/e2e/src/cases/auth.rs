//! Bearer-token authentication: every `/v1` route but health needs a valid
//! HS256 token; failures are 401 `invalid-token` with
//! `WWW-Authenticate: Bearer error="invalid_token"` and change nothing.

use serde_json::json;

use super::*;
use crate::token::{self, now};
use crate::Target;

/// Assert a 401 with the contract's problem and challenge.
#[track_caller]
fn assert_401(r: &Resp) {
    if r.status != 401 {
        panic!("{}: expected 401, got {} {}", r.what, r.status, r.text());
    }
    if !r.what.starts_with("HEAD ") {
        r.expect_problem(401, "invalid-token");
    }
    let challenge = r.must_header("www-authenticate");
    assert!(
        challenge.to_ascii_lowercase().starts_with("bearer")
            && challenge.contains(r#"error="invalid_token""#),
        "{}: WWW-Authenticate must be `Bearer error=\"invalid_token\"...`, got {challenge:?}",
        r.what
    );
}

/// Send every authenticated route+method with the given `Authorization`
/// header (or none) and assert 401; then check nothing was written for the
/// victim user.
async fn refuse_everywhere(
    t: &Target,
    authorization: Option<String>,
    victim: &User,
    label: &str,
) -> anyhow::Result<()> {
    let api = t.api();
    let c = coll();
    let id = doc_id();
    let doc = doc_path(&c, &id);
    let batch =
        json!({"mutations": [{"id": "k1", "op": "put", "collection": c, "doc": id, "value": 1}]});
    let requests = vec![
        api.get(doc.clone()),
        api.head(doc.clone()),
        api.put(doc.clone()).body_with_type("application/json", "1"),
        api.patch(doc.clone())
            .body_with_type("application/merge-patch+json", "{}"),
        api.delete(doc.clone()),
        api.get("/v1/docs"),
        api.get("/v1/changes?since=0"),
        api.get("/v1/changes?since=0&wait=1"),
        api.get("/v1/head"),
        api.head("/v1/head"),
        api.post("/v1/mutations")
            .body_with_type("application/json", serde_json::to_vec(&batch)?),
    ];
    for req in requests {
        let req = match &authorization {
            Some(a) => req.header("Authorization", a),
            None => req,
        };
        let what = req.what();
        let r = req.send().await?;
        if r.status != 401 {
            panic!("{label}: {what} must be 401, got {} {}", r.status, r.text());
        }
        assert_401(&r);
    }
    assert_nothing_changed(&api, victim, 0, Some((&c, &id, 404)), label).await
}

/// No `Authorization` header at all → 401 on every authenticated route.
pub async fn missing_token_is_401_on_every_route(t: &Target) -> anyhow::Result<()> {
    let victim = t.new_user();
    refuse_everywhere(t, None, &victim, "no Authorization header").await
}

/// Garbage in the `Authorization` header, or more than one such header → 401.
pub async fn malformed_tokens_are_401(t: &Target) -> anyhow::Result<()> {
    let victim = t.new_user();
    let good = victim.token.clone();
    let mut parts = good.split('.');
    let (h, p) = (parts.next().unwrap(), parts.next().unwrap());
    let cases = vec![
        "Bearer".to_string(),
        "Bearer ".to_string(),
        "Bearer abc".to_string(),
        "Bearer a.b.c".to_string(),
        "Bearer !!.??.**".to_string(),
        format!("Bearer {h}.{p}"),
        format!("Bearer {good}.extra"),
        format!("Basic {good}"),
        good.clone(),
        format!("Bearer {}", "x".repeat(9000)),
        "Bearer e30.e30.".to_string(),
    ];
    for a in cases {
        let label = format!("Authorization: {}", &a[..a.len().min(60)]);
        refuse_everywhere(t, Some(a), &victim, &label).await?;
    }
    // Two Authorization fields, even two good ones: which one a proxy in
    // front checked is unknowable, so neither is taken.
    let api = t.api();
    let r = api
        .put(doc_path(&coll(), &doc_id()))
        .auth(&victim)
        .auth(&victim)
        .json(&json!(1))
        .send()
        .await?;
    assert_401(&r);
    assert_nothing_changed(&api, &victim, 0, None, "two Authorization fields").await?;
    Ok(())
}

/// A token signed with another secret → 401.
pub async fn wrong_signature_is_401(t: &Target) -> anyhow::Result<()> {
    let victim = t.new_user();
    let mut other = t.jwt_secret.clone();
    other.push(b'!');
    let forged = token::mint_for(&other, &t.settings, &victim.sub);
    refuse_everywhere(
        t,
        Some(format!("Bearer {forged}")),
        &victim,
        "wrong signature",
    )
    .await?;
    // A valid token with its payload swapped for another user's.
    let mallory = t.new_user();
    let v: Vec<&str> = victim.token.split('.').collect();
    let m: Vec<&str> = mallory.token.split('.').collect();
    let spliced = format!("{}.{}.{}", m[0], v[1], m[2]);
    refuse_everywhere(
        t,
        Some(format!("Bearer {spliced}")),
        &victim,
        "spliced payload",
    )
    .await
}

/// Expired (beyond any leeway) and not-yet-valid tokens → 401; a valid
/// token for the same user works.
pub async fn expired_and_not_yet_valid_tokens_are_401(t: &Target) -> anyhow::Result<()> {
    let victim = t.new_user();
    let expired = token::mint_at(&t.jwt_secret, &t.settings, &victim.sub, now() - 7200, 60);
    refuse_everywhere(
        t,
        Some(format!("Bearer {expired}")),
        &victim,
        "expired token",
    )
    .await?;
    let future = token::sign(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(
            r#"{{"sub":{},"exp":{},"nbf":{}{}}}"#,
            json!(victim.sub),
            now() + 7200,
            now() + 3600,
            token::required_claims(&t.settings)
        ),
        &t.jwt_secret,
    );
    refuse_everywhere(
        t,
        Some(format!("Bearer {future}")),
        &victim,
        "nbf in the future",
    )
    .await?;
    let api = t.api();
    api.get("/v1/head").auth(&victim).send().await?.expect(200);
    Ok(())
}

/// `alg: none` (with or without a signature), `HS512`, `RS256` → 401.
pub async fn alg_none_and_other_algorithms_are_401(t: &Target) -> anyhow::Result<()> {
    let victim = t.new_user();
    let payload = format!(
        r#"{{"sub":{},"exp":{}{}}}"#,
        json!(victim.sub),
        now() + 3600,
        token::required_claims(&t.settings)
    );
    let mut tokens = vec![token::unsigned(&payload)];
    for alg in ["none", "None", "NONE", "HS512", "RS256", "ES256", "hs256"] {
        tokens.push(token::sign(
            &format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
            &payload,
            &t.jwt_secret,
        ));
    }
    tokens.push(token::sign(r#"{"typ":"JWT"}"#, &payload, &t.jwt_secret));
    for tok in tokens {
        refuse_everywhere(
            t,
            Some(format!("Bearer {tok}")),
            &victim,
            &format!("token {tok}"),
        )
        .await?;
    }
    Ok(())
}

/// Properly signed tokens without `exp`, without `sub`, with an empty,
/// non-string or over-long (257-byte) `sub` → 401.
pub async fn tokens_without_exp_or_sub_are_401(t: &Target) -> anyhow::Result<()> {
    let victim = t.new_user();
    let exp = now() + 3600;
    let more = token::required_claims(&t.settings);
    let payloads = vec![
        format!(r#"{{"sub":{}{more}}}"#, json!(victim.sub)),
        format!(r#"{{"exp":{exp}{more}}}"#),
        format!(r#"{{"sub":"","exp":{exp}{more}}}"#),
        format!(r#"{{"sub":42,"exp":{exp}{more}}}"#),
        format!(r#"{{"sub":null,"exp":{exp}{more}}}"#),
        format!(r#"{{"sub":{},"exp":"{exp}"{more}}}"#, json!(victim.sub)),
        format!(r#"{{"sub":"{}","exp":{exp}{more}}}"#, "x".repeat(257)),
        "[]".to_string(),
        "not json".to_string(),
    ];
    for p in payloads {
        let tok = token::sign(r#"{"alg":"HS256","typ":"JWT"}"#, &p, &t.jwt_secret);
        refuse_everywhere(
            t,
            Some(format!("Bearer {tok}")),
            &victim,
            &format!("payload {p}"),
        )
        .await?;
    }
    Ok(())
}

/// With `jwt_audience` and `jwt_issuer` configured, a token must carry that
/// `aud` (alone or in a list) and that `iss`: a token issued for another
/// service, or by another issuer, or that does not say, is 401.
pub async fn audience_and_issuer_are_enforced(t: &Target) -> anyhow::Result<()> {
    let (Some(aud), Some(iss)) = (&t.settings.jwt_audience, &t.settings.jwt_issuer) else {
        anyhow::bail!("the target must require an audience and an issuer");
    };
    let victim = t.new_user();
    let api = t.api();
    api.get("/v1/head").auth(&victim).send().await?.expect(200);
    let signed = |claims: String| {
        let payload = format!(
            r#"{{"sub":{},"exp":{}{claims}}}"#,
            json!(victim.sub),
            now() + 3600
        );
        token::sign(r#"{"alg":"HS256","typ":"JWT"}"#, &payload, &t.jwt_secret)
    };
    let (aud, iss) = (json!(aud), json!(iss));
    let in_a_list = signed(format!(r#","aud":["another-service",{aud}],"iss":{iss}"#));
    api.get("/v1/head")
        .header("Authorization", format!("Bearer {in_a_list}"))
        .send()
        .await?
        .expect(200);
    for (what, claims) in [
        ("no aud", format!(r#","iss":{iss}"#)),
        (
            "another aud",
            format!(r#","aud":"another-service","iss":{iss}"#),
        ),
        (
            "an aud list without ours",
            format!(r#","aud":["a","b"],"iss":{iss}"#),
        ),
        ("no iss", format!(r#","aud":{aud}"#)),
        (
            "another iss",
            format!(r#","aud":{aud},"iss":"https://evil.example.test""#),
        ),
    ] {
        let tok = signed(claims);
        refuse_everywhere(t, Some(format!("Bearer {tok}")), &victim, what).await?;
    }
    Ok(())
}
