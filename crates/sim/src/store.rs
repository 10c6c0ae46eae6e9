//! In-memory key-value stores with the behaviour of real backends.
//!
//! [`MemStore`] holds the data. Two views run the core on it:
//!
//! * [`SimBucket`] speaks raw `wasi:keyvalue` (the [`RawBucket`] trait) with
//!   the quirks of a chosen Spin backend ([`Backend`]), and is wrapped in the
//!   project's real [`edgesync_kv_wasi::WasiKv`] adapter — so the simulation
//!   tests the Spin adapter too;
//! * [`StrictKv`] implements the core's [`Kv`] directly with exact semantics
//!   (what the native SQLite and Redis adapters provide).
//!
//! Every operation first yields to the scheduler, so requests interleave at
//! KV-operation granularity and a request can be dropped (a crash) between
//! any two operations. Batches are never atomic: every key of a `get_many`
//! or `delete_many` is its own step.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use edgesync_core::{Kv, KvError, KvErrorKind};
use edgesync_kv_wasi::{RawBucket, SwapError};

/// Which backend's behaviour [`SimBucket`] reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Spin's default SQLite store: `get-many` omits missing keys, a swap
    /// on a key absent at `current()` is an upsert, `increment` keeps 8-byte
    /// little-endian integers and panics on any other value.
    SpinSqlite,
    /// Spin's Redis store. `get-many` sends `KEYS <keys...>`: with two
    /// keys or more that fails; with one it scans the keyspace and, if the
    /// key exists, crashes the host (a list of key names is no list of
    /// key/value pairs). `increment` stores decimal text (INCRBY). A swap
    /// (WATCH, then MULTI/SET/EXEC, then `UNWATCH <key>`) writes only if
    /// the key is unchanged since `current()`, but what it reports does
    /// not depend on whether it wrote: Redis refuses `UNWATCH` with an
    /// argument (so against a real Redis every swap reports `cas-failed`),
    /// an I/O error after EXEC was sent reports `cas-failed` too, and
    /// without either the report is EXEC's own result, success even when
    /// the transaction was aborted. The model draws one of the two reports
    /// per swap, so the adapter meets both lies.
    SpinRedis,
}

/// Yield once to the scheduler.
pub(crate) fn yield_now() -> impl Future<Output = ()> {
    struct Yield(bool);
    impl Future for Yield {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    Yield(false)
}

/// The task the scheduler is polling (set by [`crate::sched::Sim`]), so
/// that operations can be charged to the request that made them.
pub(crate) static CURRENT_TASK: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(u64::MAX);

#[derive(Default)]
struct Inner {
    map: BTreeMap<String, Vec<u8>>,
    /// Set when an operation would have crashed a real host (Spin's SQLite
    /// `increment` on a value that is not 8 bytes long panics).
    fatal: Option<String>,
    ops: u64,
    ops_by_task: std::collections::HashMap<u64, u64>,
}

/// The data, shared by every request of a run.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().expect("store lock");
        inner.ops += 1;
        let task = CURRENT_TASK.load(std::sync::atomic::Ordering::SeqCst);
        *inner.ops_by_task.entry(task).or_default() += 1;
        f(&mut inner)
    }

    /// What would have crashed a real host, if anything did.
    pub fn fatal(&self) -> Option<String> {
        self.inner.lock().expect("store lock").fatal.clone()
    }

    /// KV operations performed so far.
    pub fn ops(&self) -> u64 {
        self.inner.lock().expect("store lock").ops
    }

    /// KV operations performed on behalf of one scheduler task.
    pub fn ops_of(&self, task: u64) -> u64 {
        let inner = self.inner.lock().expect("store lock");
        inner.ops_by_task.get(&task).copied().unwrap_or(0)
    }

    /// A copy of every key and value (for white-box checks).
    pub fn dump(&self) -> BTreeMap<String, Vec<u8>> {
        self.inner.lock().expect("store lock").map.clone()
    }
}

fn kv_err(message: &str) -> KvError {
    KvError::new(KvErrorKind::Other, message)
}

impl Inner {
    /// A coin flip drawn from the store's own history (operations so far
    /// and the key), so that a run's seed, which fixes that history,
    /// reproduces every draw.
    fn coin(&self, key: &str) -> bool {
        let mut z = key.bytes().fold(self.ops ^ 0xCBF2_9CE4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        });
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }
}

/// Raw `wasi:keyvalue` over a [`MemStore`], with a [`Backend`]'s quirks.
pub struct SimBucket {
    store: MemStore,
    backend: Backend,
}

impl SimBucket {
    /// A bucket on `store` behaving like `backend`.
    pub fn new(store: MemStore, backend: Backend) -> Self {
        Self { store, backend }
    }
}

impl RawBucket for SimBucket {
    type Cas = (String, Option<Vec<u8>>);

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        yield_now().await;
        Ok(self.store.with(|s| s.map.get(key).cloned()))
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        yield_now().await;
        self.store
            .with(|s| s.map.insert(key.to_owned(), value.to_vec()));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        yield_now().await;
        self.store.with(|s| s.map.remove(key));
        Ok(())
    }

    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        if self.backend == Backend::SpinRedis {
            yield_now().await;
            if let [key] = keys.as_slice() {
                // `KEYS key`: a pattern (edgesync's keys have no glob
                // characters) matched against the whole keyspace.
                return self.store.with(|s| {
                    if !s.map.contains_key(key) {
                        return Ok(Vec::new());
                    }
                    let why = format!(
                        "get-many of the one key {key} on Redis: `KEYS {key}` answers a list \
                         of key names, which Spin's host cannot parse (it panics)"
                    );
                    s.fatal.get_or_insert(why.clone());
                    Err(kv_err(&why))
                });
            }
            return Err(kv_err("ERR wrong number of arguments for 'keys' command"));
        }
        // Missing keys are left out, rows come back in key order, and (as
        // on the backends where batches are not atomic) each key is read
        // at its own moment.
        let mut sorted = keys;
        sorted.sort();
        sorted.dedup();
        let mut out = Vec::new();
        for key in sorted {
            yield_now().await;
            if let Some(v) = self.store.with(|s| s.map.get(&key).cloned()) {
                out.push((key, Some(v)));
            }
        }
        Ok(out)
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        for key in keys {
            yield_now().await;
            self.store.with(|s| s.map.remove(&key));
        }
        Ok(())
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        yield_now().await;
        let backend = self.backend;
        self.store.with(|s| {
            let current = s.map.get(key).cloned();
            match backend {
                Backend::SpinSqlite => {
                    let n = match current {
                        None => 0,
                        Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                            Ok(raw) => i64::from_le_bytes(raw),
                            Err(_) => {
                                let why = format!("increment on non-counter {key} (Spin's SQLite store panics)");
                                s.fatal.get_or_insert(why.clone());
                                return Err(kv_err(&why));
                            }
                        },
                    };
                    let new = n + delta;
                    s.map.insert(key.to_owned(), new.to_le_bytes().to_vec());
                    Ok(new)
                }
                Backend::SpinRedis => {
                    let n = match current {
                        None => 0,
                        Some(v) => match std::str::from_utf8(&v).ok().and_then(|t| t.parse::<i64>().ok()) {
                            Some(n) => n,
                            None => return Err(kv_err("ERR value is not an integer or out of range")),
                        },
                    };
                    let new = n + delta;
                    s.map.insert(key.to_owned(), new.to_string().into_bytes());
                    Ok(new)
                }
            }
        })
    }

    async fn cas_current(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        yield_now().await;
        let current = self.store.with(|s| s.map.get(key).cloned());
        Ok(((key.to_owned(), current.clone()), current))
    }

    async fn cas_swap(&self, cas: Self::Cas, value: &[u8]) -> Result<(), SwapError> {
        yield_now().await;
        let (key, seen) = cas;
        let backend = self.backend;
        self.store.with(|s| {
            let now = s.map.get(&key).cloned();
            match (backend, &seen) {
                // UPDATE ... WHERE value = old
                (Backend::SpinSqlite, Some(_)) if now == seen => {
                    s.map.insert(key, value.to_vec());
                    Ok(())
                }
                (Backend::SpinSqlite, Some(_)) => Err(SwapError::CasFailed),
                // INSERT ... ON CONFLICT DO UPDATE: no insert-if-absent.
                (Backend::SpinSqlite, None) => {
                    s.map.insert(key, value.to_vec());
                    Ok(())
                }
                // WATCH ... MULTI SET EXEC, then `UNWATCH key`: EXEC writes
                // only if the key is unchanged, and the report does not
                // depend on whether it did (see `Backend::SpinRedis`).
                (Backend::SpinRedis, _) => {
                    if now == seen {
                        s.map.insert(key.clone(), value.to_vec());
                    }
                    if s.coin(&key) {
                        Err(SwapError::CasFailed)
                    } else {
                        Ok(())
                    }
                }
            }
        })
    }
}

/// The core's [`Kv`] with exact semantics (like the native adapters), over
/// a [`MemStore`]. Batches are still read key by key.
pub struct StrictKv {
    store: MemStore,
}

impl StrictKv {
    /// Exact semantics on `store`.
    pub fn new(store: MemStore) -> Self {
        Self { store }
    }
}

impl Kv for StrictKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        yield_now().await;
        Ok(self.store.with(|s| s.map.get(key).cloned()))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            yield_now().await;
            out.push(self.store.with(|s| s.map.get(key).cloned()));
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        yield_now().await;
        self.store
            .with(|s| s.map.insert(key.to_owned(), value.to_vec()));
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        for key in keys {
            yield_now().await;
            self.store.with(|s| s.map.remove(key));
        }
        Ok(())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        yield_now().await;
        Ok(self.store.with(|s| match s.map.get(key) {
            Some(v) if v.as_slice() == current => {
                s.map.insert(key.to_owned(), new.to_vec());
                true
            }
            _ => false,
        }))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        yield_now().await;
        self.store.with(|s| {
            let n = match s.map.get(key) {
                None => 0,
                Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                    Ok(raw) => i64::from_le_bytes(raw),
                    Err(_) => return Err(kv_err("increment on a non-counter")),
                },
            };
            s.map
                .insert(key.to_owned(), (n + delta).to_le_bytes().to_vec());
            Ok(n + delta)
        })
    }
}
