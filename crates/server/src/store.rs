//! The store the server runs on, chosen at start-up.

use std::path::Path;
use std::str::FromStr;

use edgesync_core::{Kv, KvError};
use edgesync_redis::RedisKv;
use edgesync_sqlite::{SqliteKv, SqliteOptions};

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE: &str = "edgesync.sqlite3";

/// Which store to use (`--store` / `EDGESYNC_STORE`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// One SQLite file in the data directory (`sqlite`, the default).
    #[default]
    Sqlite,
    /// A Redis/Valkey server shared by any number of instances
    /// (`redis://host:port/db`, `valkey://…`, `redis+unix://…`; not TLS).
    Redis(String),
}

/// `--store` was neither `sqlite` nor a Redis URL this build can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseStoreError {
    /// Names the URL's scheme only: the rest may hold a password.
    #[error(
        "unknown store{}: expected `sqlite` or a URL like redis://127.0.0.1:6379/0",
        .scheme.as_ref().map(|s| format!(" scheme {s:?}")).unwrap_or_default()
    )]
    Unknown { scheme: Option<String> },
    #[error(
        "TLS to Redis ({0}) is not supported by this build: reach a TLS-only server through a \
         local TLS tunnel (stunnel, a sidecar) and give its redis:// address"
    )]
    Tls(&'static str),
}

impl FromStr for StoreKind {
    type Err = ParseStoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("sqlite") {
            return Ok(Self::Sqlite);
        }
        let lower = s.to_ascii_lowercase();
        for tls in ["rediss://", "valkeys://"] {
            if lower.starts_with(tls) {
                return Err(ParseStoreError::Tls(tls));
            }
        }
        if ["redis://", "valkey://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| lower.starts_with(scheme))
        {
            return Ok(Self::Redis(s.to_owned()));
        }
        let scheme = s
            .split_once("://")
            .map(|(scheme, _)| scheme)
            .filter(|scheme| {
                scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            });
        Err(ParseStoreError::Unknown {
            scheme: scheme.map(str::to_owned),
        })
    }
}

impl std::fmt::Display for StoreKind {
    /// Never prints a Redis password: neither the user information of a
    /// URL nor the `pass`/`password` query parameters of a Unix-socket one
    /// (where the redis crate reads credentials from).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("sqlite"),
            Self::Redis(url) => {
                let (address, query) = match url.split_once('?') {
                    Some((address, query)) => (address, Some(query)),
                    None => (url.as_str(), None),
                };
                match (address.find("://"), address.rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => write!(
                        f,
                        "{}://<credentials>{}",
                        &address[..scheme],
                        &address[at..]
                    )?,
                    _ => f.write_str(address)?,
                }
                let Some(query) = query else { return Ok(()) };
                for (i, pair) in query.split('&').enumerate() {
                    f.write_str(if i == 0 { "?" } else { "&" })?;
                    match pair.split_once('=') {
                        Some((name, _))
                            if ["pass", "password"]
                                .iter()
                                .any(|secret| name.eq_ignore_ascii_case(secret)) =>
                        {
                            write!(f, "{name}=<credentials>")?
                        }
                        _ => f.write_str(pair)?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// The open store: SQLite or Redis behind one [`Kv`].
#[derive(Debug)]
pub enum Store {
    /// The embedded store.
    Sqlite(SqliteKv),
    /// A shared Redis/Valkey.
    Redis(RedisKv),
}

impl Store {
    /// Open the store `kind` (SQLite files live in `data_dir`).
    pub(crate) async fn open(
        kind: &StoreKind,
        data_dir: &Path,
        sqlite: &SqliteOptions,
    ) -> Result<Self, crate::ServerError> {
        match kind {
            StoreKind::Sqlite => {
                let path = data_dir.join(SQLITE_FILE);
                let options = sqlite.clone();
                // Opening runs SQLite's recovery of a WAL left by a crash:
                // blocking file I/O, so keep it off the runtime's workers.
                let store =
                    |source: Box<dyn std::error::Error + Send + Sync>| crate::ServerError::Store {
                        context: "opening the SQLite store",
                        source,
                    };
                let kv = tokio::task::spawn_blocking(move || SqliteKv::open(path, options))
                    .await
                    .map_err(|e| store(e.into()))?
                    .map_err(|e| store(e.into()))?;
                Ok(Self::Sqlite(kv))
            }
            StoreKind::Redis(url) => Ok(Self::Redis(RedisKv::connect(url).await.map_err(|e| {
                crate::ServerError::Store {
                    context: "connecting to Redis",
                    source: e.into(),
                }
            })?)),
        }
    }

    /// The embedded store, if that is what this is.
    pub fn sqlite(&self) -> Option<&SqliteKv> {
        match self {
            Self::Sqlite(kv) => Some(kv),
            Self::Redis(_) => None,
        }
    }

    /// Finish queued writes and release the store.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(kv) => kv.close().await,
            // The multiplexed connection closes when the last clone drops.
            Self::Redis(_) => {}
        }
    }
}

impl Kv for Store {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Self::Sqlite(kv) => kv.get(key).await,
            Self::Redis(kv) => kv.get(key).await,
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        match self {
            Self::Sqlite(kv) => kv.get_many(keys).await,
            Self::Redis(kv) => kv.get_many(keys).await,
        }
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        match self {
            Self::Sqlite(kv) => kv.set(key, value).await,
            Self::Redis(kv) => kv.set(key, value).await,
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        match self {
            Self::Sqlite(kv) => kv.delete_many(keys).await,
            Self::Redis(kv) => kv.delete_many(keys).await,
        }
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        match self {
            Self::Sqlite(kv) => kv.compare_and_swap(key, current, new).await,
            Self::Redis(kv) => kv.compare_and_swap(key, current, new).await,
        }
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        match self {
            Self::Sqlite(kv) => kv.increment(key, delta).await,
            Self::Redis(kv) => kv.increment(key, delta).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_kinds_parse_and_never_print_passwords() {
        assert_eq!("sqlite".parse(), Ok(StoreKind::Sqlite));
        assert_eq!(" SQLite ".parse(), Ok(StoreKind::Sqlite));
        let kind: StoreKind = "redis://:hunter2@cache:6379/2".parse().unwrap();
        assert_eq!(
            kind,
            StoreKind::Redis("redis://:hunter2@cache:6379/2".into())
        );
        assert_eq!(kind.to_string(), "redis://<credentials>@cache:6379/2");
        assert_eq!(
            StoreKind::Redis("redis://cache:6379/0".into()).to_string(),
            "redis://cache:6379/0"
        );
        assert!("postgres://x".parse::<StoreKind>().is_err());
        // A mistyped URL is refused without being repeated: it may hold a
        // password.
        let refused = "redis+sentinel://:hunter2@h:26379/0"
            .parse::<StoreKind>()
            .unwrap_err()
            .to_string();
        assert!(refused.contains("\"redis+sentinel\""), "{refused}");
        assert!(!refused.contains("hunter2"), "{refused}");
        let refused = "user:hunter2@h".parse::<StoreKind>().unwrap_err();
        assert!(!refused.to_string().contains("hunter2"), "{refused}");
        assert!("".parse::<StoreKind>().is_err());
        // TLS is refused up front, saying what to do, not at connect time
        // as an "unparsable" URL.
        for url in ["rediss://cache:6380/0", "VALKEYS://cache/0"] {
            let refused = url.parse::<StoreKind>().unwrap_err();
            assert!(matches!(refused, ParseStoreError::Tls(_)), "{url}");
            assert!(refused.to_string().contains("tunnel"), "{refused}");
        }
    }

    /// The redis crate reads a Unix-socket URL's password from its `pass`
    /// query parameter: the start-up log line must not print that either.
    #[test]
    fn unix_socket_urls_never_print_passwords() {
        for (url, shown) in [
            (
                "redis+unix:///run/redis.sock?db=0&pass=hunter2",
                "redis+unix:///run/redis.sock?db=0&pass=<credentials>",
            ),
            (
                "unix:///run/redis.sock?PASSWORD=hunter2&user=app",
                "unix:///run/redis.sock?PASSWORD=<credentials>&user=app",
            ),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ] {
            let kind: StoreKind = url.parse().unwrap();
            assert_eq!(kind.to_string(), shown);
        }
    }
}
