//! Counting what the core asks of a store: every call and the bytes it
//! moves, at the [`Kv`] trait ([`Counting`]) or at the raw `wasi:keyvalue`
//! calls under the Spin adapter ([`CountingBucket`]). On managed Spin hosts
//! each KV operation is quota, so the cost of each route is measured
//! (`tests/kv_costs.rs` holds it to its budget; `edgesync-bench kv` prints
//! the table).

use std::sync::atomic::{AtomicU64, Ordering};

use edgesync_core::{Kv, KvError};
use edgesync_kv_wasi::{KeyValues, RawBucket, SwapError};

/// Counters of one store's operations.
#[derive(Debug, Default)]
pub struct Counts {
    get: AtomicU64,
    get_many: AtomicU64,
    keys_read: AtomicU64,
    bytes_read: AtomicU64,
    set: AtomicU64,
    delete: AtomicU64,
    cas: AtomicU64,
    increment: AtomicU64,
    bytes_written: AtomicU64,
}

/// A copy of [`Counts`] at one instant; differences of two are the cost of
/// what happened in between.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Single-key reads (raw: `get` and `cas.current`).
    pub get: u64,
    /// Batch reads.
    pub get_many: u64,
    /// Keys asked for by all reads.
    pub keys_read: u64,
    /// Bytes of the values they returned.
    pub bytes_read: u64,
    /// `set` calls.
    pub set: u64,
    /// Delete calls (single or batch).
    pub delete: u64,
    /// Compare-and-swap calls (raw: `cas.swap`).
    pub cas: u64,
    /// `increment` calls.
    pub increment: u64,
    /// Bytes of the values written by `set` and swaps.
    pub bytes_written: u64,
}

impl Counts {
    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            get: l(&self.get),
            get_many: l(&self.get_many),
            keys_read: l(&self.keys_read),
            bytes_read: l(&self.bytes_read),
            set: l(&self.set),
            delete: l(&self.delete),
            cas: l(&self.cas),
            increment: l(&self.increment),
            bytes_written: l(&self.bytes_written),
        }
    }

    fn read(&self, single: bool, keys: usize, bytes: usize) {
        add(if single { &self.get } else { &self.get_many }, 1);
        add(&self.keys_read, keys);
        add(&self.bytes_read, bytes);
    }

    fn write(&self, counter: &AtomicU64, bytes: usize) {
        add(counter, 1);
        add(&self.bytes_written, bytes);
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl Snapshot {
    /// Read calls (single and batch).
    pub fn reads(&self) -> u64 {
        self.get + self.get_many
    }

    /// Write calls of every kind.
    pub fn writes(&self) -> u64 {
        self.set + self.delete + self.cas + self.increment
    }

    fn zip(self, o: Snapshot, f: impl Fn(u64, u64) -> u64) -> Snapshot {
        Snapshot {
            get: f(self.get, o.get),
            get_many: f(self.get_many, o.get_many),
            keys_read: f(self.keys_read, o.keys_read),
            bytes_read: f(self.bytes_read, o.bytes_read),
            set: f(self.set, o.set),
            delete: f(self.delete, o.delete),
            cas: f(self.cas, o.cas),
            increment: f(self.increment, o.increment),
            bytes_written: f(self.bytes_written, o.bytes_written),
        }
    }
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, o: Snapshot) -> Snapshot {
        self.zip(o, |a, b| a - b)
    }
}

impl std::ops::Add for Snapshot {
    type Output = Snapshot;
    fn add(self, o: Snapshot) -> Snapshot {
        self.zip(o, |a, b| a + b)
    }
}

fn value_bytes<'a>(values: impl Iterator<Item = &'a Option<Vec<u8>>>) -> usize {
    values.map(|v| v.as_ref().map_or(0, Vec::len)).sum()
}

/// A [`Kv`] that counts every call made through it.
pub struct Counting<K> {
    inner: K,
    /// What went through so far.
    pub counts: Counts,
}

impl<K> Counting<K> {
    /// Count the calls made to `inner`.
    pub fn new(inner: K) -> Self {
        Self {
            inner,
            counts: Counts::default(),
        }
    }
}

impl<K: Kv> Kv for Counting<K> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let v = self.inner.get(key).await?;
        self.counts.read(true, 1, value_bytes(std::iter::once(&v)));
        Ok(v)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let v = self.inner.get_many(keys).await?;
        self.counts.read(false, keys.len(), value_bytes(v.iter()));
        Ok(v)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.counts.write(&self.counts.set, value.len());
        self.inner.set(key, value).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        self.counts.write(&self.counts.delete, 0);
        self.inner.delete_many(keys).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        self.counts.write(&self.counts.cas, new.len());
        self.inner.compare_and_swap(key, current, new).await
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.counts.write(&self.counts.increment, 0);
        self.inner.increment(key, delta).await
    }
}

/// A raw `wasi:keyvalue` bucket that counts every call made to it (a
/// `cas.current` counts as a single read, a `cas.swap` as a swap).
pub struct CountingBucket<B> {
    inner: B,
    /// What went through so far.
    pub counts: Counts,
}

impl<B> CountingBucket<B> {
    /// Count the calls made to `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            counts: Counts::default(),
        }
    }
}

impl<B: RawBucket> RawBucket for CountingBucket<B> {
    type Cas = B::Cas;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let v = self.inner.get(key).await?;
        self.counts.read(true, 1, value_bytes(std::iter::once(&v)));
        Ok(v)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.counts.write(&self.counts.set, value.len());
        self.inner.set(key, value).await
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.counts.write(&self.counts.delete, 0);
        self.inner.delete(key).await
    }

    async fn get_many(&self, keys: Vec<String>) -> Result<KeyValues, KvError> {
        let asked = keys.len();
        let found = self.inner.get_many(keys).await?;
        self.counts
            .read(false, asked, value_bytes(found.iter().map(|(_, v)| v)));
        Ok(found)
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        self.counts.write(&self.counts.delete, 0);
        self.inner.delete_many(keys).await
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.counts.write(&self.counts.increment, 0);
        self.inner.increment(key, delta).await
    }

    async fn cas_current(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        let (cas, v) = self.inner.cas_current(key).await?;
        self.counts.read(true, 1, value_bytes(std::iter::once(&v)));
        Ok((cas, v))
    }

    async fn cas_swap(&self, cas: Self::Cas, value: &[u8]) -> Result<(), SwapError> {
        self.counts.write(&self.counts.cas, value.len());
        self.inner.cas_swap(cas, value).await
    }
}
