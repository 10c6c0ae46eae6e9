//! Key-value storage that behaves like Spin's default SQLite backend.
//!
//! This is a re-implementation, statement for statement, of Spin's
//! `key-value-spin` crate (`crates/key-value-spin/src/store.rs` in
//! spinframework/spin) plus the label checks of `factor-key-value`
//! (`src/host.rs`, `src/lib.rs`, `src/util.rs`). Both of Spin's guest
//! interfaces, `fermyon:spin/key-value@2.0.0` and
//! `wasi:keyvalue@0.2.0-draft2`, are served by the same [`SqliteStore`], so
//! they see the same data for the same label.
//!
//! The quirks a component meets on Spin, reproduced here on purpose:
//!
//! * **CAS remembers what `current()` read.** [`Cas::swap`] runs
//!   `UPDATE … SET value = new WHERE store = ? AND key = ? AND value = old`
//!   when `current()` saw a value, and fails with `cas-failed` unless exactly
//!   one row changed.
//! * **A swap on a key that was absent at `current()` is an upsert**
//!   (`INSERT … ON CONFLICT DO UPDATE`): there is no insert-if-absent, and a
//!   value written by someone else in between is overwritten. The same
//!   happens when `current()` was never called.
//! * **`get-many` leaves missing keys out** and returns the rows in SQLite's
//!   order (`… WHERE key IN rarray(?)`), not in request order; a key asked
//!   for twice comes back once.
//! * **`increment` stores an 8-byte little-endian `i64`** (absent = 0) and
//!   adds with wrapping arithmetic (Spin is built in release mode). On an
//!   existing value that is not exactly 8 bytes Spin *panics*
//!   (`expect("incorrect length")`) while holding its connection mutex: the
//!   request dies with a 500 and, because the mutex is now poisoned, every
//!   later operation on that label panics too, until Spin restarts. The
//!   harness reproduces both: the operation returns [`KvError::SpinPanic`],
//!   which the host turns into a trap, and the label stays poisoned for the
//!   life of the [`KvBackend`].
//! * **Labels**: opening a label the component did not list in
//!   `key_value_stores` is `access-denied` (checked first, whether or not the
//!   label exists); a listed label that no store defines is `no-such-store`
//!   (Spin already refuses to start such an app; see
//!   [`KvBackend::is_defined`]). `"default"` is always defined; other labels
//!   need runtime configuration on Spin (`--kv-label` here).
//! * `wasi:keyvalue` `list-keys` with a cursor fails with
//!   `other("list_keys: cursor not supported")`; empty batches do not touch
//!   the database.
//!
//!
//! **Spin before 3.2** wrapped every store in a `CachingStoreManager`
//! (`crates/factor-key-value/src/util.rs`, removed by spinframework/spin
//! PR 2995): each opened store handle keeps every value it read or wrote
//! and never reads that key from the database again, so a component
//! re-reading a key through one handle never sees another instance's
//! write. [`KvAccess::with_read_cache`] reproduces it (reads, writes,
//! `get-many` serving cached values first, `increment`, and a CAS whose
//! `current()` reads the database and refreshes the handle's copy). Its
//! write-behind (writes returning before they reach the database, their
//! errors surfacing at the next read of the handle) is not reproduced:
//! writes here are synchronous.
//!
//! Not reproduced: Spin's per-call result-size limits (`max_result_bytes`),
//! which only matter for results of many megabytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{named_params, Connection, OptionalExtension};

/// The label every Spin app has without runtime configuration.
pub const DEFAULT_LABEL: &str = "default";

/// File name of the database inside the data dir (Spin's default store is
/// `.spin/sqlite_key_value.db`).
pub const DB_FILE_NAME: &str = "sqlite_key_value.db";

const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES ($1, $2, $3)
     ON CONFLICT(store, key) DO UPDATE SET value=$3";
const SELECT_VALUE: &str = "SELECT value FROM spin_key_value WHERE store=$1 AND key=$2";

/// A `(key, value)` row of `get-many` (the value is always `Some` on this
/// backend; the WIT type allows `none`).
pub type KeyValue = (String, Option<Vec<u8>>);

/// Errors a guest can see, named after the WIT `error` variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// `store-table-full` (never produced: Spin's table capacity is `u32::MAX`).
    #[error("store table full")]
    StoreTableFull,
    /// `no-such-store`: the label is not defined.
    #[error("no such store")]
    NoSuchStore,
    /// `access-denied`: the component did not list the label.
    #[error("access denied")]
    AccessDenied,
    /// `other(..)`: a backend failure.
    #[error("{0}")]
    Other(String),
    /// Spin's SQLite backend panics here. Not a guest-visible error: the host
    /// traps the request (and the label stays poisoned, as on Spin).
    #[error("Spin's SQLite key-value backend panics here: {0}")]
    SpinPanic(String),
}

/// Why [`Cas::swap`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    /// The value changed since `current()` (Spin: "failed to update 1 row").
    #[error("{0}")]
    CasFailed(String),
    /// Anything else.
    #[error(transparent)]
    Store(#[from] KvError),
}

fn other(err: impl std::fmt::Debug) -> KvError {
    tracing::warn!("key-value error: {err:?}");
    KvError::Other(format!("{err:?}"))
}

/// The SQLite database behind every label, shared by all components.
pub struct KvBackend {
    conn: Mutex<Connection>,
    labels: BTreeSet<String>,
    /// Labels whose (emulated) connection mutex a panic has poisoned, with
    /// the reason.
    poisoned: Mutex<BTreeMap<String, String>>,
    location: String,
}

impl std::fmt::Debug for KvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBackend")
            .field("location", &self.location)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl KvBackend {
    /// Open (creating if needed) the database file at `path`. The defined
    /// labels are `"default"` plus `extra_labels`.
    pub fn open(path: &Path, extra_labels: &[String]) -> Result<Arc<Self>, KvError> {
        let conn = Connection::open(path).map_err(other)?;
        Self::with_connection(conn, path.display().to_string(), extra_labels)
    }

    /// A temporary in-memory database (for tests).
    pub fn open_in_memory(extra_labels: &[String]) -> Result<Arc<Self>, KvError> {
        let conn = Connection::open_in_memory().map_err(other)?;
        Self::with_connection(conn, "in-memory".into(), extra_labels)
    }

    fn with_connection(
        conn: Connection,
        location: String,
        extra_labels: &[String],
    ) -> Result<Arc<Self>, KvError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                   store TEXT NOT NULL,
                   key   TEXT NOT NULL,
                   value BLOB NOT NULL,

                   PRIMARY KEY (store, key)
                )",
            [],
        )
        .map_err(other)?;
        rusqlite::vtab::array::load_module(&conn).map_err(other)?;
        let mut labels: BTreeSet<String> = extra_labels.iter().cloned().collect();
        labels.insert(DEFAULT_LABEL.to_string());
        Ok(Arc::new(Self {
            conn: Mutex::new(conn),
            labels,
            poisoned: Mutex::new(BTreeMap::new()),
            location,
        }))
    }

    /// Where the data lives (a path, or "in-memory").
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether `label` is a defined store. Spin refuses to start an app
    /// whose component lists an undefined label ("unknown key_value_stores
    /// label"); the harness does the same.
    pub fn is_defined(&self, label: &str) -> bool {
        self.labels.contains(label)
    }

    /// The defined labels.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(String::as_str)
    }

    /// The store for `label`, or `no-such-store`.
    pub fn store(self: &Arc<Self>, label: &str) -> Result<SqliteStore, KvError> {
        if !self.is_defined(label) {
            return Err(KvError::NoSuchStore);
        }
        Ok(SqliteStore {
            backend: self.clone(),
            name: label.to_string(),
            cache: None,
        })
    }

    /// The reason `label` is poisoned, if an earlier operation "panicked".
    pub fn poisoned(&self, label: &str) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
            .cloned()
    }

    fn poison(&self, label: &str, reason: &str) {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label.to_string())
            .or_insert_with(|| reason.to_string());
    }

    /// Spin's `self.connection.lock().unwrap()`, including what happens when
    /// an earlier panic poisoned it.
    fn lock(&self, label: &str) -> Result<MutexGuard<'_, Connection>, KvError> {
        if let Some(reason) = self.poisoned(label) {
            return Err(KvError::SpinPanic(format!(
                "the connection mutex of store {label:?} is poisoned \
                 (an earlier operation panicked: {reason}); every operation on it \
                 panics until Spin restarts"
            )));
        }
        self.conn
            .lock()
            .map_err(|_| KvError::SpinPanic("connection mutex poisoned".into()))
    }
}

/// Access to the stores a component listed in `key_value_stores`
/// (Spin's `KeyValueDispatch::open`).
#[derive(Debug, Clone)]
pub struct KvAccess {
    backend: Arc<KvBackend>,
    allowed: Arc<BTreeSet<String>>,
    read_cache: bool,
}

impl KvAccess {
    /// Access for a component that listed `allowed`.
    pub fn new(backend: Arc<KvBackend>, allowed: impl IntoIterator<Item = String>) -> Self {
        Self {
            backend,
            allowed: Arc::new(allowed.into_iter().collect()),
            read_cache: false,
        }
    }

    /// The same, as on Spin before 3.2: every store handle opened keeps
    /// what it read or wrote (see the module docs).
    pub fn with_read_cache(mut self) -> Self {
        self.read_cache = true;
        self
    }

    /// Open `label`: `access-denied` unless the component listed it,
    /// `no-such-store` if it is not defined.
    pub fn open(&self, label: &str) -> Result<SqliteStore, KvError> {
        if !self.allowed.contains(label) {
            return Err(KvError::AccessDenied);
        }
        let mut store = self.backend.store(label)?;
        if self.read_cache {
            store.cache = Some(Arc::default());
        }
        Ok(store)
    }
}

/// What one handle of Spin before 3.2 holds: per key, the value it last
/// read or wrote (`None`: absent).
type ReadCache = Arc<Mutex<HashMap<String, Option<Vec<u8>>>>>;

/// One label of the database (Spin's `SqliteStore`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    backend: Arc<KvBackend>,
    name: String,
    /// Spin before 3.2 only: this handle's copies (see [`KvAccess::with_read_cache`]).
    cache: Option<ReadCache>,
}

impl SqliteStore {
    /// The label.
    pub fn label(&self) -> &str {
        &self.name
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, KvError> {
        self.backend.lock(&self.name)
    }

    /// Keep `value` as this handle's copy of `key` (Spin before 3.2).
    fn remember(&self, key: &str, value: Option<Vec<u8>>) {
        if let Some(cache) = &self.cache {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.insert(key.to_owned(), value);
        }
    }

    /// This handle's copy of `key`, if it has one (Spin before 3.2).
    fn cached(&self, key: &str) -> Option<Option<Vec<u8>>> {
        let cache = self.cache.as_ref()?;
        let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).cloned()
    }

    /// `get`: the value, or `None`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(value) = self.cached(key) {
            return Ok(value);
        }
        let value = self.read(key)?;
        self.remember(key, value.clone());
        Ok(value)
    }

    /// The value in the database, whatever the handle holds.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.conn()?
            .prepare_cached(SELECT_VALUE)
            .map_err(other)?
            .query_row([&self.name, key], |row| row.get::<_, Vec<u8>>(0))
            .optional()
            .map_err(other)
    }

    /// `set`: upsert.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.conn()?
            .prepare_cached(UPSERT)
            .map_err(other)?
            .execute(rusqlite::params![&self.name, key, value])
            .map_err(other)?;
        self.remember(key, Some(value.to_vec()));
        Ok(())
    }

    /// `delete`: absent keys are fine.
    pub fn delete(&self, key: &str) -> Result<(), KvError> {
        self.conn()?
            .prepare_cached("DELETE FROM spin_key_value WHERE store=$1 AND key=$2")
            .map_err(other)?
            .execute([&self.name, key])
            .map_err(other)?;
        self.remember(key, None);
        Ok(())
    }

    /// `exists`.
    pub fn exists(&self, key: &str) -> Result<bool, KvError> {
        if self.cache.is_some() {
            return Ok(self.get(key)?.is_some());
        }
        self.conn()?
            .prepare_cached("SELECT 1 FROM spin_key_value WHERE store=$1 AND key=$2 LIMIT 1")
            .map_err(other)?
            .exists([&self.name, key])
            .map_err(other)
    }

    /// `get-keys` / `list-keys`: every key of the label (this walks them all).
    pub fn get_keys(&self) -> Result<Vec<String>, KvError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached("SELECT key FROM spin_key_value WHERE store=$1")
            .map_err(other)?;
        let rows = stmt
            .query_map([&self.name], |row| row.get::<_, String>(0))
            .map_err(other)?;
        rows.map(|r| r.map_err(other)).collect()
    }

    /// `get-many`: only the keys that exist, in SQLite's row order (on
    /// Spin before 3.2, the handle's copies of existing values first).
    pub fn get_many(&self, keys: Vec<String>) -> Result<Vec<KeyValue>, KvError> {
        if self.cache.is_none() {
            return self.read_many(keys);
        }
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for key in keys {
            match self.cached(&key) {
                Some(Some(value)) => found.push((key, Some(value))),
                _ => missing.push(key),
            }
        }
        if !missing.is_empty() {
            for (key, value) in self.read_many(missing)? {
                self.remember(&key, value.clone());
                found.push((key, value));
            }
        }
        Ok(found)
    }

    fn read_many(&self, keys: Vec<String>) -> Result<Vec<KeyValue>, KvError> {
        let array: rusqlite::vtab::array::Array =
            Rc::new(keys.into_iter().map(rusqlite::types::Value::from).collect());
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, value FROM spin_key_value WHERE store=:name AND key IN rarray(:keys)",
            )
            .map_err(other)?;
        let rows = stmt
            .query_map(named_params! {":name": &self.name, ":keys": array}, |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Option<Vec<u8>>>(1)?))
            })
            .map_err(other)?;
        rows.map(|r| r.map_err(other)).collect()
    }

    /// `set-many`: upserts in one transaction.
    pub fn set_many(&self, key_values: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(other)?;
        for (key, value) in &key_values {
            tx.prepare_cached(UPSERT)
                .map_err(other)?
                .execute(rusqlite::params![&self.name, key, value])
                .map_err(other)?;
        }
        tx.commit().map_err(other)?;
        for (key, value) in key_values {
            self.remember(&key, Some(value));
        }
        Ok(())
    }

    /// `delete-many`.
    pub fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        let array: rusqlite::vtab::array::Array = Rc::new(
            keys.iter()
                .cloned()
                .map(rusqlite::types::Value::from)
                .collect(),
        );
        self.conn()?
            .prepare_cached("DELETE FROM spin_key_value WHERE store=:name AND key IN rarray(:keys)")
            .map_err(other)?
            .execute(named_params! {":name": &self.name, ":keys": array})
            .map_err(other)?;
        for key in &keys {
            self.remember(key, None);
        }
        Ok(())
    }

    /// `increment`: an absent key counts as 0; the result is stored as 8
    /// little-endian bytes. An existing value of another length is Spin's
    /// `expect("incorrect length")` panic: [`KvError::SpinPanic`], nothing
    /// written, and the label poisoned.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(other)?;
        let value: Option<Vec<u8>> = tx
            .prepare_cached(SELECT_VALUE)
            .map_err(other)?
            .query_row([&self.name, key], |row| row.get(0))
            .optional()
            .map_err(other)?;
        let numeric = match value {
            None => 0,
            Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                Ok(raw) => i64::from_le_bytes(raw),
                Err(_) => {
                    // Spin panics here with the mutex held: the transaction is
                    // rolled back while unwinding and the mutex is poisoned.
                    drop(tx);
                    drop(conn);
                    let reason = format!(
                        "increment of key {key:?} in store {:?}: the stored value is {} bytes, \
                         not an 8-byte little-endian i64 (Spin: `expect(\"incorrect length\")`)",
                        self.name,
                        v.len()
                    );
                    tracing::error!("{reason}");
                    self.backend.poison(&self.name, &reason);
                    return Err(KvError::SpinPanic(reason));
                }
            },
        };
        let new_value = numeric.wrapping_add(delta);
        tx.prepare_cached(UPSERT)
            .map_err(other)?
            .execute(rusqlite::params![&self.name, key, new_value.to_le_bytes()])
            .map_err(other)?;
        tx.commit().map_err(other)?;
        self.remember(key, Some(new_value.to_le_bytes().to_vec()));
        Ok(new_value)
    }

    /// Start a compare-and-swap on `key` (nothing is read yet).
    pub fn new_cas(&self, key: &str) -> Cas {
        Cas {
            store: self.clone(),
            key: key.to_string(),
            value: None,
        }
    }
}

/// A compare-and-swap in progress (Spin's `CompareAndSwap`).
#[derive(Debug)]
pub struct Cas {
    store: SqliteStore,
    key: String,
    /// What the last `current()` read (`None`: absent, or never called).
    value: Option<Vec<u8>>,
}

impl Cas {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The store.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// Read the value and remember it for [`Cas::swap`]. Always from the
    /// database: on Spin before 3.2 too, where it also refreshes the
    /// handle's copy.
    pub fn current(&mut self) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.store.read(&self.key)?;
        self.store.remember(&self.key, value.clone());
        self.value.clone_from(&value);
        Ok(value)
    }

    /// Write `value` if the key still holds what `current()` read; an
    /// upsert if `current()` found nothing or was never called.
    pub fn swap(&self, value: &[u8]) -> Result<(), SwapError> {
        let name = &self.store.name;
        let mut conn = self.store.conn()?;
        let rows_changed = match &self.value {
            Some(old_value) => conn
                .prepare_cached(
                    "UPDATE spin_key_value SET value=:new_value \
                     WHERE store=:name and key=:key and value=:old_value",
                )
                .map_err(other)?
                .execute(named_params! {
                    ":name": name,
                    ":key": &self.key,
                    ":old_value": old_value,
                    ":new_value": value,
                })
                .map_err(other)?,
            None => {
                let tx = conn.transaction().map_err(other)?;
                let rows = tx
                    .prepare_cached(UPSERT)
                    .map_err(other)?
                    .execute(rusqlite::params![name, &self.key, value])
                    .map_err(other)?;
                tx.commit().map_err(other)?;
                rows
            }
        };
        if rows_changed == 1 {
            drop(conn);
            self.store.remember(&self.key, Some(value.to_vec()));
            Ok(())
        } else {
            Err(SwapError::CasFailed("failed to update 1 row".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SqliteStore {
        KvBackend::open_in_memory(&[])
            .unwrap()
            .store("default")
            .unwrap()
    }

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn basic_operations() {
        let s = store();
        assert_eq!(s.get("a").unwrap(), None);
        assert!(!s.exists("a").unwrap());
        s.set("a", b"1").unwrap();
        s.set("a", b"2").unwrap();
        assert_eq!(s.get("a").unwrap().as_deref(), Some(&b"2"[..]));
        assert!(s.exists("a").unwrap());
        s.set("b", b"").unwrap();
        assert_eq!(s.get("b").unwrap(), Some(vec![]));
        let mut ks = s.get_keys().unwrap();
        ks.sort();
        assert_eq!(ks, keys(&["a", "b"]));
        s.delete("a").unwrap();
        s.delete("never-there").unwrap();
        assert_eq!(s.get("a").unwrap(), None);
        assert_eq!(s.get_keys().unwrap(), keys(&["b"]));
    }

    #[test]
    fn labels_are_separate_namespaces_of_one_table() {
        let backend = KvBackend::open_in_memory(&["other".to_string()]).unwrap();
        let d = backend.store("default").unwrap();
        let o = backend.store("other").unwrap();
        d.set("k", b"d").unwrap();
        o.set("k", b"o").unwrap();
        assert_eq!(d.get("k").unwrap(), Some(b"d".to_vec()));
        assert_eq!(o.get("k").unwrap(), Some(b"o".to_vec()));
        o.delete_many(keys(&["k"])).unwrap();
        assert_eq!(d.get("k").unwrap(), Some(b"d".to_vec()));
    }

    #[test]
    fn labels_access_denied_before_no_such_store() {
        let backend = KvBackend::open_in_memory(&["extra".to_string()]).unwrap();
        assert!(backend.is_defined("default"));
        assert!(backend.is_defined("extra"));
        assert!(!backend.is_defined("nope"));
        assert_eq!(backend.store("nope").unwrap_err(), KvError::NoSuchStore);

        let access = KvAccess::new(backend.clone(), keys(&["default", "nope"]));
        assert!(access.open("default").is_ok());
        // Defined but not listed by the component.
        assert_eq!(access.open("extra").unwrap_err(), KvError::AccessDenied);
        // Neither listed nor defined: still access-denied (checked first).
        assert_eq!(access.open("ghost").unwrap_err(), KvError::AccessDenied);
        // Listed but not defined.
        assert_eq!(access.open("nope").unwrap_err(), KvError::NoSuchStore);
    }

    #[test]
    fn get_many_leaves_missing_keys_out_in_sql_order() {
        let s = store();
        s.set_many(vec![
            ("c".into(), b"3".to_vec()),
            ("a".into(), b"1".to_vec()),
            ("b".into(), b"2".to_vec()),
        ])
        .unwrap();
        let got = s.get_many(keys(&["c", "missing", "a", "a"])).unwrap();
        // Missing key left out, duplicate collapsed, rows in index order
        // (not request order).
        assert_eq!(
            got,
            vec![
                ("a".to_string(), Some(b"1".to_vec())),
                ("c".to_string(), Some(b"3".to_vec())),
            ]
        );
        assert_eq!(s.get_many(keys(&["x", "y"])).unwrap(), vec![]);
        s.delete_many(keys(&["a", "b", "zz"])).unwrap();
        assert_eq!(s.get_keys().unwrap(), keys(&["c"]));
    }

    #[test]
    fn increment_stores_8_byte_little_endian() {
        let s = store();
        assert_eq!(s.increment("n", 0).unwrap(), 0);
        assert_eq!(s.get("n").unwrap(), Some(0i64.to_le_bytes().to_vec()));
        assert_eq!(s.increment("n", 5).unwrap(), 5);
        assert_eq!(s.increment("n", -7).unwrap(), -2);
        assert_eq!(s.get("n").unwrap(), Some((-2i64).to_le_bytes().to_vec()));
        // A value written with `set` in the same shape is incremented too.
        s.set("m", &41i64.to_le_bytes()).unwrap();
        assert_eq!(s.increment("m", 1).unwrap(), 42);
        // Release-mode arithmetic wraps.
        s.set("big", &i64::MAX.to_le_bytes()).unwrap();
        assert_eq!(s.increment("big", 1).unwrap(), i64::MIN);
    }

    #[test]
    fn increment_on_wrong_length_panics_and_poisons_the_label() {
        let backend = KvBackend::open_in_memory(&["other".to_string()]).unwrap();
        let s = backend.store("default").unwrap();
        s.set("ascii", b"12").unwrap();
        let err = s.increment("ascii", 1).unwrap_err();
        assert!(
            matches!(&err, KvError::SpinPanic(m) if m.contains("2 bytes")),
            "{err:?}"
        );
        // Every later operation on the label "panics" too …
        assert!(matches!(s.get("ascii"), Err(KvError::SpinPanic(_))));
        assert!(matches!(s.set("x", b"1"), Err(KvError::SpinPanic(_))));
        assert!(backend.poisoned("default").is_some());
        // … but other labels (separate connections on Spin) are unaffected.
        let o = backend.store("other").unwrap();
        o.set("x", b"1").unwrap();
        assert_eq!(o.get("x").unwrap(), Some(b"1".to_vec()));
        assert!(backend.poisoned("other").is_none());
    }

    #[test]
    fn increment_on_wrong_length_writes_nothing() {
        let backend = KvBackend::open_in_memory(&[]).unwrap();
        let s = backend.store("default").unwrap();
        s.set("v", b"123456789").unwrap();
        assert!(s.increment("v", 1).is_err());
        // Look behind the poisoned label: the value is untouched.
        let conn = backend.conn.lock().unwrap();
        let v: Vec<u8> = conn
            .query_row(
                "SELECT value FROM spin_key_value WHERE store='default' AND key='v'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, b"123456789");
    }

    #[test]
    fn cas_swaps_when_value_unchanged() {
        let s = store();
        s.set("k", b"old").unwrap();
        let mut cas = s.new_cas("k");
        assert_eq!(cas.current().unwrap(), Some(b"old".to_vec()));
        cas.swap(b"new").unwrap();
        assert_eq!(s.get("k").unwrap(), Some(b"new".to_vec()));
    }

    #[test]
    fn cas_fails_when_value_changed_since_current() {
        let s = store();
        s.set("k", b"old").unwrap();
        let mut cas = s.new_cas("k");
        cas.current().unwrap();
        s.set("k", b"other").unwrap();
        assert!(matches!(cas.swap(b"new"), Err(SwapError::CasFailed(_))));
        assert_eq!(s.get("k").unwrap(), Some(b"other".to_vec()));
        // Deleted in between: also a failure (no row matches).
        s.set("j", b"old").unwrap();
        let mut cas = s.new_cas("j");
        cas.current().unwrap();
        s.delete("j").unwrap();
        assert!(matches!(cas.swap(b"new"), Err(SwapError::CasFailed(_))));
        assert_eq!(s.get("j").unwrap(), None);
    }

    #[test]
    fn cas_compares_by_value_not_by_version() {
        // ABA: changed and changed back between current() and swap: succeeds.
        let s = store();
        s.set("k", b"A").unwrap();
        let mut cas = s.new_cas("k");
        cas.current().unwrap();
        s.set("k", b"B").unwrap();
        s.set("k", b"A").unwrap();
        cas.swap(b"C").unwrap();
        assert_eq!(s.get("k").unwrap(), Some(b"C".to_vec()));
    }

    #[test]
    fn cas_on_key_absent_at_current_is_an_upsert() {
        let s = store();
        let mut cas = s.new_cas("k");
        assert_eq!(cas.current().unwrap(), None);
        // Someone else creates the key in between …
        s.set("k", b"theirs").unwrap();
        // … and the swap overwrites it anyway: no insert-if-absent.
        cas.swap(b"mine").unwrap();
        assert_eq!(s.get("k").unwrap(), Some(b"mine".to_vec()));
    }

    #[test]
    fn cas_without_current_is_an_upsert() {
        let s = store();
        s.set("k", b"existing").unwrap();
        let cas = s.new_cas("k");
        cas.swap(b"blind").unwrap();
        assert_eq!(s.get("k").unwrap(), Some(b"blind".to_vec()));
    }

    #[test]
    fn cas_current_remembers_the_latest_read() {
        let s = store();
        s.set("k", b"1").unwrap();
        let mut cas = s.new_cas("k");
        cas.current().unwrap();
        s.set("k", b"2").unwrap();
        assert_eq!(cas.current().unwrap(), Some(b"2".to_vec()));
        cas.swap(b"3").unwrap();
        assert_eq!(s.get("k").unwrap(), Some(b"3".to_vec()));
    }

    #[test]
    fn data_persists_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        {
            let b = KvBackend::open(&path, &[]).unwrap();
            b.store("default").unwrap().set("k", b"v").unwrap();
        }
        let b = KvBackend::open(&path, &[]).unwrap();
        assert_eq!(
            b.store("default").unwrap().get("k").unwrap(),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn before_spin_3_2_a_handle_keeps_what_it_read_or_wrote() {
        let backend = KvBackend::open_in_memory(&[]).unwrap();
        let access = KvAccess::new(backend.clone(), keys(&["default"])).with_read_cache();
        let mine = access.open("default").unwrap();
        let theirs = backend.store("default").unwrap();
        theirs.set("k", b"1").unwrap();
        assert_eq!(mine.get("k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(mine.get("absent").unwrap(), None);
        theirs.set("k", b"2").unwrap();
        theirs.set("absent", b"here").unwrap();
        theirs.set("fresh", b"f").unwrap();
        // Never read again through this handle...
        assert_eq!(mine.get("k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(mine.get("absent").unwrap(), None);
        assert!(!mine.exists("absent").unwrap());
        // ...but get-many reads what it holds no value for.
        let mut many = mine.get_many(keys(&["k", "absent", "fresh"])).unwrap();
        many.sort();
        assert_eq!(
            many,
            [
                ("absent".to_string(), Some(b"here".to_vec())),
                ("fresh".to_string(), Some(b"f".to_vec())),
                ("k".to_string(), Some(b"1".to_vec())),
            ]
        );
        // Its own writes, and a CAS's `current()`, refresh its copy.
        mine.set("k", b"3").unwrap();
        theirs.set("k", b"4").unwrap();
        assert_eq!(mine.get("k").unwrap(), Some(b"3".to_vec()));
        let mut cas = mine.new_cas("k");
        assert_eq!(cas.current().unwrap(), Some(b"4".to_vec()));
        assert_eq!(mine.get("k").unwrap(), Some(b"4".to_vec()));
        cas.swap(b"5").unwrap();
        assert_eq!(mine.get("k").unwrap(), Some(b"5".to_vec()));
        // A handle opened afterwards starts with nothing.
        theirs.set("k", b"6").unwrap();
        assert_eq!(
            access.open("default").unwrap().get("k").unwrap(),
            Some(b"6".to_vec())
        );
        assert_eq!(mine.get("k").unwrap(), Some(b"5".to_vec()));
    }
}
