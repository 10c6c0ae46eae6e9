//! The key-value trait the core is written against, and what it promises.
//!
//! Every host adapter (Spin's key-value store, SQLite, Redis/Valkey, the
//! simulator's in-memory store) implements [`Kv`]. The trait is deliberately
//! smaller than what any single backend offers: it is the intersection that
//! *every* backend edgesync targets can honour exactly, after the adapter has
//! smoothed over the backend's quirks (see "Platform facts" in the design).
//!
//! # Semantics every adapter must honour
//!
//! * [`Kv::get`] returns the stored bytes, or `None` if the key is absent.
//! * [`Kv::get_many`] returns one entry per requested key, **in request order**,
//!   `None` for absent keys. Backends that drop missing keys from a batch
//!   (Spin's SQLite store does) must be matched by key in the adapter. The
//!   batch need not be atomic: the core never assumes two keys in one batch
//!   were read at the same instant.
//! * [`Kv::set`] is a blind write. The core only uses it for *immutable*
//!   payload keys (written once, or rewritten with identical bytes), so no
//!   ordering between concurrent `set`s matters.
//! * [`Kv::delete_many`] removes keys (absent keys are not an error). It need
//!   not be atomic across keys.
//! * [`Kv::compare_and_swap`] replaces the value of an **existing** key only if
//!   it currently holds exactly `current` (byte equality), and reports whether
//!   it did. The core never asks to swap an absent key: on Spin's default
//!   backend a swap on a key that was absent is an unconditional upsert, so
//!   the core never relies on it (it creates keys with `increment` instead).
//!   A swap that reports `true` must really have happened; adapters over
//!   backends that cannot guarantee that must verify (e.g. read back).
//! * [`Kv::increment`] atomically adds `delta` to a counter and returns the new
//!   value; an absent key counts as 0 and is created. The core calls it only
//!   with `delta == 0`, as the one way to *create* a key that will later be
//!   compare-and-swapped: unlike a blind write, a late `increment(k, 0)`
//!   can never overwrite progress someone else made on `k`.
//!
//! # Counters
//!
//! All mutable state lives in *counters*: keys whose value is a 64-bit
//! integer, created by `increment` and advanced by `compare_and_swap`. The
//! core writes counters as 8-byte little-endian integers (what Spin's SQLite
//! backend stores for `increment`, and the only value shape its `increment`
//! accepts without panicking) and reads either that form or ASCII decimal
//! (what Redis `INCRBY` stores). See [`decode_counter`].

use std::future::Future;

#[cfg(feature = "conformance")]
pub mod conformance;

/// `Send` on native targets, nothing on wasm (where Spin's executor is
/// single-threaded and its resource handles are not `Send`).
#[cfg(not(target_family = "wasm"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_family = "wasm"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on native targets, nothing on wasm.
#[cfg(target_family = "wasm")]
pub trait MaybeSend {}
#[cfg(target_family = "wasm")]
impl<T: ?Sized> MaybeSend for T {}

/// `Sync` on native targets, nothing on wasm.
#[cfg(not(target_family = "wasm"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_family = "wasm"))]
impl<T: Sync + ?Sized> MaybeSync for T {}
/// `Sync` on native targets, nothing on wasm.
#[cfg(target_family = "wasm")]
pub trait MaybeSync {}
#[cfg(target_family = "wasm")]
impl<T: ?Sized> MaybeSync for T {}

/// Why a KV operation failed. The core answers a KV failure with
/// `503 Service Unavailable` and `Retry-After` (nothing a client sent can
/// cause one), except after a mutation's commit, which is acknowledged
/// whatever fails after it. A failure during the commit leaves its outcome
/// unknown to the client: retrying with the same `Idempotency-Key` is what
/// makes it exactly once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key-value store error ({kind:?}): {message}")]
pub struct KvError {
    /// Broad class of the failure.
    pub kind: KvErrorKind,
    /// Backend-specific detail, for logs only (never sent to clients).
    pub message: String,
}

/// Broad class of a [`KvError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvErrorKind {
    /// The store could not be reached or timed out; try again later.
    Unavailable,
    /// The backend refused because of contention (e.g. DynamoDB's
    /// conditional-update conflicts); an immediate retry may succeed.
    Contention,
    /// Anything else the backend reported.
    Other,
}

impl KvError {
    /// A failure of the given kind with a message for the logs.
    pub fn new(kind: KvErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The async key-value store the core runs on. See the module docs for the
/// exact semantics an implementation must provide.
pub trait Kv: MaybeSync {
    /// The value stored at `key`, or `None`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, KvError>> + MaybeSend;

    /// The values at `keys`, in the same order, `None` where absent.
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, KvError>> + MaybeSend;

    /// Blind write (used only for immutable payloads).
    fn set(&self, key: &str, value: &[u8])
        -> impl Future<Output = Result<(), KvError>> + MaybeSend;

    /// Remove keys; absent keys are fine; not atomic across keys.
    fn delete_many(&self, keys: &[String])
        -> impl Future<Output = Result<(), KvError>> + MaybeSend;

    /// If the existing `key` holds exactly `current`, store `new` and return
    /// `true`; otherwise change nothing and return `false`.
    fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> impl Future<Output = Result<bool, KvError>> + MaybeSend;

    /// Atomically add `delta` to the counter at `key` (absent = 0, created)
    /// and return the new value.
    fn increment(
        &self,
        key: &str,
        delta: i64,
    ) -> impl Future<Output = Result<i64, KvError>> + MaybeSend;
}

impl<T: Kv + ?Sized> Kv for &T {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, KvError>> + MaybeSend {
        (**self).get(key)
    }
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, KvError>> + MaybeSend {
        (**self).get_many(keys)
    }
    fn set(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<(), KvError>> + MaybeSend {
        (**self).set(key, value)
    }
    fn delete_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<(), KvError>> + MaybeSend {
        (**self).delete_many(keys)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> impl Future<Output = Result<bool, KvError>> + MaybeSend {
        (**self).compare_and_swap(key, current, new)
    }
    fn increment(
        &self,
        key: &str,
        delta: i64,
    ) -> impl Future<Output = Result<i64, KvError>> + MaybeSend {
        (**self).increment(key, delta)
    }
}

/// Encode a counter value the way the core stores counters: 8 bytes,
/// little-endian (the shape Spin's SQLite `increment` reads and writes).
pub fn encode_counter(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

/// Decode a counter written either by the core (8-byte little-endian) or by a
/// backend's own `increment` (8-byte little-endian on SQLite, ASCII decimal
/// on Redis). `None` if the bytes are neither.
pub fn decode_counter(bytes: &[u8]) -> Option<u64> {
    if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
        return Some(u64::from_le_bytes(raw));
    }
    if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_accept_redis_decimal() {
        for v in [0u64, 1, 255, 1 << 40, u64::MAX] {
            assert_eq!(decode_counter(&encode_counter(v)), Some(v));
        }
        assert_eq!(decode_counter(b"0"), Some(0));
        assert_eq!(decode_counter(b"1234567"), Some(1_234_567));
        assert_eq!(decode_counter(b""), None);
        assert_eq!(decode_counter(b"-1"), None);
        assert_eq!(decode_counter(b"{\"a\":1}"), None);
    }
}
