//! Tokens: valid ones minted with `edgesync_core::auth::mint`, and
//! hand-signed hostile ones (expired, `alg: none`, missing claims...).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A valid one-hour token for `sub` on a target with `settings`: with the
/// `aud` and `iss` it requires, if any.
pub fn mint_for(secret: &[u8], settings: &crate::TargetSettings, sub: &str) -> String {
    mint_at(secret, settings, sub, now(), 3600)
}

/// A token for `sub` issued at `issued_at`, valid for `ttl` seconds, with
/// the `aud` and `iss` the target requires (so that a case refusing it
/// tests one defect at a time).
pub fn mint_at(
    secret: &[u8],
    settings: &crate::TargetSettings,
    sub: &str,
    issued_at: u64,
    ttl: u64,
) -> String {
    let expect = edgesync_core::auth::Expectations {
        secret,
        audience: settings.jwt_audience.as_deref(),
        issuer: settings.jwt_issuer.as_deref(),
    };
    edgesync_core::auth::mint(&expect, sub, issued_at, ttl)
}

/// The `aud` and `iss` members a target with `settings` requires, as JSON
/// members with a leading comma (empty when it requires neither), for
/// hand-written payloads: a hostile token then differs from a valid one in
/// the one defect its case is about.
pub fn required_claims(settings: &crate::TargetSettings) -> String {
    let mut claims = String::new();
    if let Some(aud) = &settings.jwt_audience {
        claims.push_str(&format!(r#","aud":{}"#, serde_json::json!(aud)));
    }
    if let Some(iss) = &settings.jwt_issuer {
        claims.push_str(&format!(r#","iss":{}"#, serde_json::json!(iss)));
    }
    claims
}

/// `base64url(header).base64url(payload).HMAC-SHA256(secret)` — any header
/// and payload text, signed properly.
pub fn sign(header: &str, payload: &str, secret: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(header);
    let p = URL_SAFE_NO_PAD.encode(payload);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{h}.{p}").as_bytes());
    format!(
        "{h}.{p}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned(payload: &str) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    )
}
