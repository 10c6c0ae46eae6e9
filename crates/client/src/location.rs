//! Where a replica lives when the app does not say: one SQLite file per
//! (server, user), at the same place the `edgesync` commands keep theirs, so
//! there is one default and one way of computing it.

use std::path::PathBuf;

/// The replica database's file name inside a state directory.
pub const REPLICA_FILE: &str = "replica.db";

/// Why [`default_replica_path`] cannot name a location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoDefaultLocation {
    /// The replica is per user, and the token does not say which.
    #[error("the token is not a JWT with a string `sub` claim, so its user is unknown")]
    NoSubject,
    /// None of the variables that locate per-user data is set.
    #[error("no data directory: none of XDG_DATA_HOME, HOME or LOCALAPPDATA is set")]
    NoDataDir,
}

/// The replica a client opens when no storage is configured:
/// [`default_state_dir`]`(url, <the token's sub>)/`[`REPLICA_FILE`].
pub fn default_replica_path(url: &str, token: &str) -> Result<PathBuf, NoDefaultLocation> {
    let user = token_subject(token).ok_or(NoDefaultLocation::NoSubject)?;
    let dir = default_state_dir(url, &user).ok_or(NoDefaultLocation::NoDataDir)?;
    Ok(dir.join(REPLICA_FILE))
}

/// Where a command-line tool keeps the replica of `user` on the server at
/// `url`: `<data dir>/edgesync/<16 hex digits of FNV-1a(url + "\n" + user)>`,
/// with the data dir from `$XDG_DATA_HOME`, else `$HOME/.local/share`, else
/// `%LOCALAPPDATA%`. `None` when none of these is set.
pub fn default_state_dir(url: &str, user: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local").join("share"))
        })
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))?;
    Some(base.join("edgesync").join(state_dir_name(url, user)))
}

/// A stable name for a (server, user) pair. FNV-1a because it must not
/// change between Rust versions (std's hasher may). The URL is taken as the
/// replica records its server (scheme and host lower-cased, default port
/// and credentials dropped, no trailing slash), so every spelling of one
/// server finds the same replica and queue.
fn state_dir_name(url: &str, user: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let normal = crate::wire::normalize_url(url);
    let url = normal.as_deref().unwrap_or(url).trim_end_matches('/');
    for b in url
        .bytes()
        .chain(std::iter::once(b'\n'))
        .chain(user.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The `sub` claim of a JWT, read without verifying the signature: it only
/// names a directory, and the server verifies the token on every request.
pub(crate) fn token_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
    claims.get("sub")?.as_str().map(str::to_string)
}

/// base64url (RFC 4648 §5), as in JWTs: unpadded, padding tolerated.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_name_is_stable() {
        assert_eq!(
            state_dir_name("http://x/", "alice"),
            state_dir_name("http://x", "alice")
        );
        for spelling in ["HTTP://X", "http://x:80/", "http://u:p@x"] {
            assert_eq!(
                state_dir_name(spelling, "alice"),
                state_dir_name("http://x", "alice"),
                "{spelling}"
            );
        }
        assert_ne!(
            state_dir_name("http://x", "alice"),
            state_dir_name("http://x", "bob")
        );
        assert_ne!(
            state_dir_name("http://x", "alice"),
            state_dir_name("https://x", "alice")
        );
        // Pinned: changing it would orphan existing replicas.
        assert_eq!(state_dir_name("", ""), "af63c74c8601c8dd");
    }

    #[test]
    fn subject_of_a_token() {
        // {"alg":"HS256","typ":"JWT"} . {"sub":"alice","exp":1}
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0.sig";
        assert_eq!(token_subject(t).as_deref(), Some("alice"));
        // {"exp":1}: no subject.
        assert_eq!(token_subject("e30.eyJleHAiOjF9.sig"), None);
        assert_eq!(token_subject("garbage"), None);
        assert_eq!(token_subject("a.b!c.d"), None);
    }

    #[test]
    fn a_token_without_subject_has_no_default() {
        assert_eq!(
            default_replica_path("http://x", "opaque-token"),
            Err(NoDefaultLocation::NoSubject)
        );
    }
}
