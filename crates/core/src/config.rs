//! Settings shared by every host, and how they are parsed.
//!
//! Each setting has one name, used as the Spin variable name and (upper-cased
//! with an `EDGESYNC_` prefix) as the native server's environment variable:
//! `max_wait_seconds` ↔ `EDGESYNC_MAX_WAIT_SECONDS`. Hosts hand
//! [`Config::from_lookup`] a function that returns the raw string for a name.

use crate::entry::ENTRY_OVERHEAD_BYTES;

/// Every tunable of the service. Build with [`Config::from_lookup`] or start
/// from [`Config::with_secret`] and adjust fields.
#[derive(Clone)]
pub struct Config {
    /// HS256 secret for bearer tokens (`jwt_secret`). Never logged.
    pub jwt_secret: Vec<u8>,
    /// Required `aud` claim, if configured (`jwt_audience`).
    pub jwt_audience: Option<String>,
    /// Required `iss` claim, if configured (`jwt_issuer`).
    pub jwt_issuer: Option<String>,
    /// Longest a long-poll is held, in seconds (`max_wait_seconds`, default
    /// 25: managed hosts cut requests at 30 s).
    pub max_wait_seconds: u64,
    /// Smart-polling advice sent as `X-Poll-Interval` (`poll_interval_seconds`,
    /// default 10).
    pub poll_interval_seconds: u64,
    /// How many log entries are kept behind the head before compaction
    /// (`retention_entries`, default 10000; at least 16).
    pub retention_entries: u64,
    /// Sustained mutations per second per user (`rate_limit_per_second`,
    /// default 20; 0 disables the limit). Bursts of up to
    /// [`Config::rate_limit_burst`] are allowed.
    pub rate_limit_per_second: u64,
    /// Largest accepted request body in bytes (`max_body_bytes`, default
    /// 262144).
    pub max_body_bytes: usize,
    /// Longest key the KV store takes, in bytes (`max_key_bytes`, default 0:
    /// no limit). A request whose names would make a longer key is refused
    /// with 400 before it touches the store, rather than failing there with
    /// a 503; Spin's manifest sets 256, the key size Spin documents.
    pub max_key_bytes: usize,
    /// Largest value the KV store takes, in bytes (`max_value_bytes`,
    /// default 0: no limit). Collection indexes stop below it (409
    /// `collection-full`), and `max_body_bytes` must leave room in it for
    /// the log entry around a document, so no write ever meets a value the
    /// store refuses (a 503 it could never get past). Spin's manifest sets
    /// 1000000 (Spin documents 1 MB); DynamoDB items hold 400 KB.
    pub max_value_bytes: usize,
    /// Origins allowed by CORS (`cors_origins`, comma-separated, `*` for any;
    /// default none).
    pub cors_origins: CorsOrigins,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("jwt_secret", &"<redacted>")
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("max_wait_seconds", &self.max_wait_seconds)
            .field("poll_interval_seconds", &self.poll_interval_seconds)
            .field("retention_entries", &self.retention_entries)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_key_bytes", &self.max_key_bytes)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("cors_origins", &self.cors_origins)
            .finish()
    }
}

/// Which browser origins may call the API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsOrigins {
    /// No CORS headers at all (the default).
    #[default]
    None,
    /// Any origin (`*`).
    Any,
    /// Exactly these origins (compared byte-for-byte with `Origin`).
    List(Vec<String>),
}

/// A setting that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("setting `{0}` is required")]
    Missing(&'static str),
    /// A setting has a value that does not parse or is out of range.
    #[error("setting `{name}` has an invalid value {value:?}: {reason}")]
    Invalid {
        /// Setting name.
        name: &'static str,
        /// The raw value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Names of all settings, in the order they are documented.
pub const SETTING_NAMES: &[&str] = &[
    "jwt_secret",
    "jwt_audience",
    "jwt_issuer",
    "max_wait_seconds",
    "poll_interval_seconds",
    "retention_entries",
    "rate_limit_per_second",
    "max_body_bytes",
    "max_key_bytes",
    "max_value_bytes",
    "cors_origins",
];

/// Smallest accepted `retention_entries`: compaction works in steps of this
/// many entries, and a smaller window would expire cursors of clients that
/// are merely a few seconds behind.
pub const MIN_RETENTION_ENTRIES: u64 = 16;

/// Smallest `max_key_bytes` other than 0 (no limit).
const MIN_KEY_LIMIT: u64 = 64;

/// Smallest `max_value_bytes` other than 0 (no limit): a user's list of
/// collections (1,000 names of up to 128 bytes) is one value and must fit.
const MIN_VALUE_LIMIT: u64 = 128 * 1024;

impl Config {
    /// Defaults for everything, with the given secret.
    pub fn with_secret(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            jwt_secret: secret.into(),
            jwt_audience: None,
            jwt_issuer: None,
            max_wait_seconds: 25,
            poll_interval_seconds: 10,
            retention_entries: 10_000,
            rate_limit_per_second: 20,
            max_body_bytes: 262_144,
            max_key_bytes: 0,
            max_value_bytes: 0,
            cors_origins: CorsOrigins::None,
        }
    }

    /// Parse settings from `lookup(name)`. Leading and trailing whitespace
    /// is no part of a value (a value mounted from a file or pasted into a
    /// variable often ends in a newline, and every host must read it the
    /// same), and empty values count as unset. `jwt_secret` is required
    /// and must be at least 32 bytes.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let secret = get("jwt_secret").ok_or(ConfigError::Missing("jwt_secret"))?;
        if secret.len() < 32 {
            return Err(ConfigError::Invalid {
                name: "jwt_secret",
                value: "<redacted>".into(),
                reason: "must be at least 32 bytes (HS256 keys shorter than the hash are weak)"
                    .into(),
            });
        }
        let mut config = Config::with_secret(secret.into_bytes());
        config.jwt_audience = get("jwt_audience");
        config.jwt_issuer = get("jwt_issuer");
        if let Some(v) = get("max_wait_seconds") {
            config.max_wait_seconds = parse_u64("max_wait_seconds", &v, 0, 3600)?;
        }
        if let Some(v) = get("poll_interval_seconds") {
            config.poll_interval_seconds = parse_u64("poll_interval_seconds", &v, 1, 86_400)?;
        }
        if let Some(v) = get("retention_entries") {
            config.retention_entries = parse_u64(
                "retention_entries",
                &v,
                MIN_RETENTION_ENTRIES,
                u64::from(u32::MAX),
            )?;
        }
        if let Some(v) = get("rate_limit_per_second") {
            config.rate_limit_per_second = parse_u64("rate_limit_per_second", &v, 0, 1_000_000)?;
        }
        if let Some(v) = get("max_body_bytes") {
            config.max_body_bytes =
                parse_u64("max_body_bytes", &v, 1024, 16 * 1024 * 1024)? as usize;
        }
        if let Some(v) = get("max_key_bytes") {
            // Below 64 bytes not even the log's own keys of a short user id
            // fit: every request would be refused.
            config.max_key_bytes = parse_store_limit("max_key_bytes", &v, MIN_KEY_LIMIT, 1 << 20)?;
        }
        if let Some(v) = get("max_value_bytes") {
            config.max_value_bytes =
                parse_store_limit("max_value_bytes", &v, MIN_VALUE_LIMIT, 1 << 30)?;
        }
        let room = config.max_value_bytes.saturating_sub(ENTRY_OVERHEAD_BYTES);
        if config.max_value_bytes != 0 && config.max_body_bytes > room {
            return Err(ConfigError::Invalid {
                name: "max_body_bytes",
                value: config.max_body_bytes.to_string(),
                reason: format!(
                    "must leave {ENTRY_OVERHEAD_BYTES} bytes of max_value_bytes ({}) for the log \
                     entry around a document: at most {room}",
                    config.max_value_bytes
                ),
            });
        }
        if let Some(v) = get("cors_origins") {
            config.cors_origins = parse_origins(&v)?;
        }
        Ok(config)
    }

    /// Largest burst of mutations a user may make at once: enough for a full
    /// `/v1/mutations` batch (100), or five seconds' worth, whichever is more.
    pub fn rate_limit_burst(&self) -> u64 {
        (self.rate_limit_per_second * 5).max(100)
    }
}

fn parse_u64(name: &'static str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    value
        .parse()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ConfigError::Invalid {
            name,
            value: value.to_owned(),
            reason: format!("must be a whole number from {min} to {max}"),
        })
}

/// A limit of the store: 0 (none) or from `min` to `max`.
fn parse_store_limit(
    name: &'static str,
    value: &str,
    min: u64,
    max: u64,
) -> Result<usize, ConfigError> {
    match parse_u64(name, value, 0, max)? {
        n if n != 0 && n < min => Err(ConfigError::Invalid {
            name,
            value: value.to_owned(),
            reason: format!("must be 0 (no limit) or from {min} to {max}"),
        }),
        n => Ok(n as usize),
    }
}

fn parse_origins(value: &str) -> Result<CorsOrigins, ConfigError> {
    let list: Vec<String> = value
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    // An origin never contains whitespace: a list separated by spaces
    // would silently match nothing.
    if list.iter().any(|s| s.contains(char::is_whitespace)) {
        return Err(ConfigError::Invalid {
            name: "cors_origins",
            value: value.to_owned(),
            reason: "separate origins with commas (an origin has no spaces)".into(),
        });
    }
    Ok(if list.iter().any(|s| s == "*") {
        CorsOrigins::Any
    } else if list.is_empty() {
        CorsOrigins::None
    } else {
        CorsOrigins::List(list)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_apply_and_secret_is_required() {
        assert_eq!(
            Config::from_lookup(lookup(&[])).unwrap_err(),
            ConfigError::Missing("jwt_secret")
        );
        let c = Config::from_lookup(lookup(&[("jwt_secret", SECRET)])).unwrap();
        let newline = format!("{SECRET}\n");
        let padded = Config::from_lookup(lookup(&[("jwt_secret", &newline)])).unwrap();
        assert_eq!(
            padded.jwt_secret, c.jwt_secret,
            "the same key, newline or not"
        );
        let padded = Config::from_lookup(lookup(&[
            ("jwt_secret", SECRET),
            ("jwt_audience", "app\n"),
            ("jwt_issuer", " https://id.example\n"),
            ("max_wait_seconds", "20\n"),
        ]))
        .unwrap();
        assert_eq!(padded.jwt_audience.as_deref(), Some("app"));
        assert_eq!(padded.jwt_issuer.as_deref(), Some("https://id.example"));
        assert_eq!(padded.max_wait_seconds, 20);
        assert_eq!(c.max_wait_seconds, 25);
        assert_eq!(c.max_body_bytes, 262_144);
        assert_eq!(c.cors_origins, CorsOrigins::None);
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn bad_values_are_rejected_with_the_setting_name() {
        let err = Config::from_lookup(lookup(&[
            ("jwt_secret", SECRET),
            ("max_wait_seconds", "soon"),
        ]))
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: "max_wait_seconds",
                ..
            }
        ));
        let err = Config::from_lookup(lookup(&[("jwt_secret", "short")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: "jwt_secret",
                ..
            }
        ));
        let err = Config::from_lookup(lookup(&[
            ("jwt_secret", SECRET),
            ("retention_entries", "3"),
        ]))
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: "retention_entries",
                ..
            }
        ));
        // The message says what would do, for a value out of range and for
        // one too large to read alike.
        for value in ["0", "99999999999999999999999"] {
            let err =
                Config::from_lookup(lookup(&[("jwt_secret", SECRET), ("max_body_bytes", value)]))
                    .unwrap_err();
            assert!(err.to_string().contains("from 1024 to 16777216"), "{err}");
        }
        // A key limit is off (0) or leaves room for the log's own keys.
        for (value, limit) in [
            ("0", Some(0)),
            ("256", Some(256)),
            ("63", None),
            ("x", None),
        ] {
            let parsed =
                Config::from_lookup(lookup(&[("jwt_secret", SECRET), ("max_key_bytes", value)]));
            assert_eq!(parsed.ok().map(|c| c.max_key_bytes), limit, "{value}");
        }
        // A value limit is off (0), or holds a user's list of collections
        // and the log entry around the largest document.
        for (value, body, limit) in [
            ("0", "16777216", Some(0)),
            ("1000000", "262144", Some(1_000_000)),
            ("400000", "398976", Some(400_000)),
            ("400000", "398977", None),
            ("131071", "1024", None),
            ("x", "1024", None),
        ] {
            let parsed = Config::from_lookup(lookup(&[
                ("jwt_secret", SECRET),
                ("max_value_bytes", value),
                ("max_body_bytes", body),
            ]));
            assert_eq!(
                parsed.as_ref().ok().map(|c| c.max_value_bytes),
                limit,
                "{value}, body {body}: {parsed:?}"
            );
        }
        let err = Config::from_lookup(lookup(&[
            ("jwt_secret", SECRET),
            ("max_value_bytes", "200000"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains("max_body_bytes")
                && err.to_string().contains("at most 198976"),
            "the default body limit does not fit: {err}"
        );
    }

    #[test]
    fn cors_origins_parse() {
        let c = Config::from_lookup(lookup(&[
            ("jwt_secret", SECRET),
            ("cors_origins", " https://a.example/, https://b.example "),
        ]))
        .unwrap();
        assert_eq!(
            c.cors_origins,
            CorsOrigins::List(vec!["https://a.example".into(), "https://b.example".into()])
        );
        let c =
            Config::from_lookup(lookup(&[("jwt_secret", SECRET), ("cors_origins", "*")])).unwrap();
        assert_eq!(c.cors_origins, CorsOrigins::Any);
        // Separated by spaces, they would silently match nothing.
        let err = Config::from_lookup(lookup(&[
            ("jwt_secret", SECRET),
            ("cors_origins", "https://a.example https://b.example"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("commas"), "{err}");
    }
}
