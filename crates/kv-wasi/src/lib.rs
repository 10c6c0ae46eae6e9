//! # edgesync-kv-wasi
//!
//! Implements [`edgesync_core::Kv`] on top of the operations of
//! `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`, `batch`), which is what
//! a Spin component can call on every Spin key-value backend.
//!
//! The raw operations are abstracted as [`RawBucket`] so that the exact same
//! adapter code runs in the Spin component (over wit-bindgen bindings) and in
//! the deterministic simulator (over a model of each backend's quirks).
//!
//! What the adapter corrects for (see DESIGN.md, "Platform facts", and the
//! sources of Spin's `key-value-spin` and `key-value-redis` crates):
//!
//! * `get-many` on the SQLite backend leaves missing keys out of the result:
//!   results are matched by key, and absent keys become `None`.
//! * `get-many` on the Redis backend sends `KEYS` and fails: on any batch
//!   error the adapter falls back to one `get` per key.
//! * A `swap` on a key that was absent at `current()` is an upsert on the
//!   SQLite backend: the adapter refuses to swap when `current()` returned
//!   nothing or something other than the expected bytes, so the core's
//!   compare-and-swap only ever touches existing keys.
//! * `increment` on the Redis backend is `INCRBY`, which refuses the 8-byte
//!   binary counters the core writes with compare-and-swap; an increment by
//!   zero (the core's "create if absent") on such a key returns its value.
//! * A `swap` on the Redis backend runs `MULTI/SET/EXEC` after `WATCH`; an
//!   aborted transaction can surface as success through the client library.
//!   Every successful swap is therefore verified by reading the key back
//!   (the core only swaps in values no concurrent writer can produce, so the
//!   read-back is conclusive).

use std::future::Future;

use edgesync_core::{Kv, KvError, MaybeSend, MaybeSync};

/// What `batch.get-many` returns: the keys found, with their values.
pub type KeyValues = Vec<(String, Option<Vec<u8>>)>;

/// Outcome of a raw `atomics.swap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapError {
    /// `cas-failed`: the value changed since `current()`.
    CasFailed,
    /// `store-error`: the backend failed.
    Store(KvError),
}

/// The raw `wasi:keyvalue@0.2.0-draft2` operations on one bucket, with the
/// backend's native behaviour (quirks included).
pub trait RawBucket: MaybeSync {
    /// A `cas` resource: the key plus whatever the backend remembers at
    /// `current()` time.
    type Cas: MaybeSend;

    /// `store.bucket.get`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, KvError>> + MaybeSend;
    /// `store.bucket.set`.
    fn set(&self, key: &str, value: &[u8])
        -> impl Future<Output = Result<(), KvError>> + MaybeSend;
    /// `store.bucket.delete`.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), KvError>> + MaybeSend;
    /// `batch.get-many` (backends may omit missing keys, reorder, or fail).
    fn get_many(
        &self,
        keys: Vec<String>,
    ) -> impl Future<Output = Result<KeyValues, KvError>> + MaybeSend;
    /// `batch.delete-many`.
    fn delete_many(
        &self,
        keys: Vec<String>,
    ) -> impl Future<Output = Result<(), KvError>> + MaybeSend;
    /// `atomics.increment`.
    fn increment(
        &self,
        key: &str,
        delta: i64,
    ) -> impl Future<Output = Result<i64, KvError>> + MaybeSend;
    /// `atomics.cas.new` followed by `cas.current`.
    fn cas_current(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<(Self::Cas, Option<Vec<u8>>), KvError>> + MaybeSend;
    /// `atomics.swap`.
    fn cas_swap(
        &self,
        cas: Self::Cas,
        value: &[u8],
    ) -> impl Future<Output = Result<(), SwapError>> + MaybeSend;
}

/// [`Kv`] over a [`RawBucket`], with the corrections listed in the crate docs.
pub struct WasiKv<B> {
    bucket: B,
}

impl<B: RawBucket> WasiKv<B> {
    /// Wrap a bucket.
    pub fn new(bucket: B) -> Self {
        Self { bucket }
    }

    /// The wrapped bucket.
    pub fn bucket(&self) -> &B {
        &self.bucket
    }
}

impl<B: RawBucket> Kv for WasiKv<B> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.bucket.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match self.bucket.get_many(keys.to_vec()).await {
            Ok(pairs) => {
                // Match by key: the SQLite backend drops missing keys and
                // returns rows in its own order.
                let found: std::collections::HashMap<String, Option<Vec<u8>>> =
                    pairs.into_iter().collect();
                Ok(keys
                    .iter()
                    .map(|k| found.get(k).cloned().flatten())
                    .collect())
            }
            Err(_) => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(self.bucket.get(key).await?);
                }
                Ok(out)
            }
        }
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.bucket.set(key, value).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        if keys.is_empty() {
            return Ok(());
        }
        if self.bucket.delete_many(keys.to_vec()).await.is_ok() {
            return Ok(());
        }
        for key in keys {
            self.bucket.delete(key).await?;
        }
        Ok(())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        let (cas, seen) = self.bucket.cas_current(key).await?;
        // Never swap a key that was absent at `current()`: on the SQLite
        // backend that swap is an unconditional upsert.
        if seen.as_deref() != Some(current) {
            return Ok(false);
        }
        match self.bucket.cas_swap(cas, new).await {
            Ok(()) => Ok(self.bucket.get(key).await?.as_deref() == Some(new)),
            Err(SwapError::CasFailed) => Ok(false),
            Err(SwapError::Store(e)) => Err(e),
        }
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        match self.bucket.increment(key, delta).await {
            Ok(n) => Ok(n),
            // Redis's INCRBY refuses the 8-byte binary counters the core
            // writes; an increment by zero only needs the key to exist, so
            // an existing counter in either form is the answer.
            Err(e) if delta == 0 => match self.bucket.get(key).await? {
                Some(raw) => edgesync_core::decode_counter(&raw)
                    .map(|n| n as i64)
                    .ok_or(e),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }
}
