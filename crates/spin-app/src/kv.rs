//! [`RawBucket`] over the `wasi:keyvalue@0.2.0-draft2` imports.
//!
//! Deliberately a one-to-one mapping: every backend quirk is corrected in
//! `edgesync_kv_wasi::WasiKv`, where the simulator exercises it too.

use std::cell::{OnceCell, RefCell};
use std::collections::BTreeSet;

use edgesync_core::{KvError, KvErrorKind};
use edgesync_kv_wasi::{RawBucket, SwapError};

use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::store_errors::{message, StoreError};

/// The store label the app's `spin.toml` grants both components.
pub const STORE_LABEL: &str = "default";

/// The store with one label, opened on first use and then kept for the
/// rest of the request (a Spin instance serves exactly one request).
/// Opening lazily keeps requests that never touch the store, such as
/// `/v1/health`, from failing when the store is unreachable.
///
/// **Reads go through a handle of their own, opened again for a re-read.**
/// Spin before 3.2 wrapped every store in a cache (`CachingStoreManager`,
/// removed by spinframework/spin PR 2995): an opened handle keeps each
/// value it read or wrote and never reads that key from the backend
/// again. The core reads a key a second time only to see whether it
/// changed (a long-poll's re-check, a retry after losing a race), which
/// such a handle would never show: a held long-poll would sleep through
/// every write, a writer would retry on the same stale root until it gave
/// up. So `get` and `get-many` use a reading handle that is let go and
/// opened again (a host call, no KV read; Spin's Redis store answers each
/// open with a `PING` round trip, its SQLite store with nothing) before it
/// would read a key a second time. Writes, increments and compare-and-swaps use one writing
/// handle for the whole request: such a handle's `set` and `delete` return
/// before they reach the backend, in order, and its compare-and-swap
/// flushes them first and always asks the backend, so nothing the core
/// makes reachable by a swap can be missing from the store. On later Spin
/// versions this changes nothing but the extra opens (and, on Redis, their
/// `PING`s: a long-poll's re-check there is two round trips, not one).
pub struct SpinBucket {
    label: &'static str,
    writer: OnceCell<Result<store::Bucket, KvError>>,
    reader: RefCell<Option<Result<store::Bucket, KvError>>>,
    /// Keys the current reading handle has read.
    read: RefCell<BTreeSet<String>>,
}

impl SpinBucket {
    /// A bucket for the store with this label (see [`STORE_LABEL`]).
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            writer: OnceCell::new(),
            reader: RefCell::new(None),
            read: RefCell::new(BTreeSet::new()),
        }
    }

    fn open(&self) -> Result<store::Bucket, KvError> {
        store::open(self.label).map_err(|e| {
            let err = store_error(&format!("open `{}`", self.label), e);
            // Almost always a deployment mistake: make it visible.
            eprintln!("edgesync: {err}");
            err
        })
    }

    /// The writing handle.
    fn writer(&self) -> Result<&store::Bucket, KvError> {
        self.writer
            .get_or_init(|| self.open())
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Run the read `op` of `keys` on a reading handle that has not read
    /// any of them yet (see the type's docs).
    fn reading<T>(
        &self,
        keys: &[&str],
        op: impl FnOnce(&store::Bucket) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let mut read = self.read.borrow_mut();
        let mut reader = self.reader.borrow_mut();
        if keys.iter().any(|k| read.contains(*k)) {
            *reader = None;
            read.clear();
        }
        read.extend(keys.iter().map(|k| (*k).to_owned()));
        let reader = reader.get_or_insert_with(|| self.open());
        op(reader.as_ref().map_err(Clone::clone)?)
    }
}

fn store_error(op: &str, error: store::Error) -> KvError {
    let message = match &error {
        store::Error::NoSuchStore => message(op, STORE_LABEL, StoreError::NoSuchStore),
        store::Error::AccessDenied => message(op, STORE_LABEL, StoreError::AccessDenied),
        store::Error::Other(detail) => message(op, STORE_LABEL, StoreError::Other(detail)),
    };
    // wasi:keyvalue does not say whether a backend failure is transient;
    // the core answers every kind with 503 + Retry-After anyway.
    KvError::new(KvErrorKind::Other, message)
}

impl RawBucket for SpinBucket {
    type Cas = atomics::Cas;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.reading(&[key], |b| b.get(key).map_err(|e| store_error("get", e)))
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.writer()?
            .set(key, value)
            .map_err(|e| store_error("set", e))
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.writer()?
            .delete(key)
            .map_err(|e| store_error("delete", e))
    }

    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.reading(&names, |b| {
            batch::get_many(b, &keys).map_err(|e| store_error("get-many", e))
        })
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        batch::delete_many(self.writer()?, &keys).map_err(|e| store_error("delete-many", e))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        atomics::increment(self.writer()?, key, delta).map_err(|e| store_error("increment", e))
    }

    async fn cas_current(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        let cas = atomics::Cas::new(self.writer()?, key).map_err(|e| store_error("cas.new", e))?;
        let current = cas.current().map_err(|e| store_error("cas.current", e))?;
        Ok((cas, current))
    }

    async fn cas_swap(&self, cas: Self::Cas, value: &[u8]) -> Result<(), SwapError> {
        match atomics::swap(cas, value) {
            Ok(()) => Ok(()),
            // The fresh handle `cas-failed` carries is dropped: the core
            // decides itself whether and how to retry.
            Err(atomics::CasError::CasFailed(_)) => Err(SwapError::CasFailed),
            Err(atomics::CasError::StoreError(e)) => Err(SwapError::Store(store_error("swap", e))),
        }
    }
}
