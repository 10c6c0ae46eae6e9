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
//! sources of Spin's `key-value-spin`, `key-value-redis` and
//! `key-value-aws` crates):
//!
//! * `get-many` on the SQLite backend leaves missing keys out of the result:
//!   results are matched by key, and absent keys become `None`.
//! * `get-many` on the Redis backend sends `KEYS <keys...>` instead of
//!   `MGET`. With two keys or more that is an error, and the adapter falls
//!   back to one `get` per key (on any batch error). With exactly one key
//!   it is a valid command: `KEYS k` scans the whole keyspace and, if `k`
//!   exists, answers a one-element list of key names that older host
//!   builds cannot parse as key/value pairs (the host panics). So a
//!   one-key batch is sent as a plain `get`, and an empty one as nothing.
//! * The DynamoDB backend's batches are `BatchGetItem` (at most 100 keys)
//!   and `BatchWriteItem` (at most 25): larger ones fail, and would fall back
//!   to one call per key. Batches go out in chunks of [`MAX_BATCH_READ`] and
//!   [`MAX_BATCH_WRITE`] keys on every backend.
//! * A `swap` on a key that was absent at `current()` is an upsert on the
//!   SQLite backend: the adapter refuses to swap when `current()` returned
//!   nothing or something other than the expected bytes, so the core's
//!   compare-and-swap only ever touches existing keys.
//! * `increment` on the Redis backend is `INCRBY`, which refuses the 8-byte
//!   binary counters the core writes with compare-and-swap; an increment by
//!   zero (the core's "create if absent") on such a key returns its value.
//! * A swap's reported outcome is not trusted in either direction:
//!   - On the Redis backend a swap runs `MULTI/SET/EXEC` after `WATCH`; an
//!     aborted transaction can surface as success through the client
//!     library. Every successful swap is therefore read back.
//!   - `cas-failed` can be reported after the write happened: Spin's Redis
//!     store sends `UNWATCH <key>` after `EXEC`, which Redis refuses
//!     (`UNWATCH` takes no arguments), and maps that error, like an I/O
//!     error after `EXEC` was sent, to `cas-failed`; its DynamoDB store maps
//!     every `TransactWriteItems` error, timeouts included, to `cas-failed`.
//!     Taking such a report at its word would make the core clean up as if
//!     it had lost a race it won (deleting what a committed pointer names,
//!     or applying a committed step twice). A `cas-failed` swap is
//!     therefore read back too.
//!
//!   Either way the answer is "the key now holds `new`", the same check for
//!   both reports. It is conclusive because of how the core swaps: a log
//!   slot, a pointer or an index root only ever receives a fresh id that
//!   no other writer can produce, and the other swaps (raising the hint,
//!   floor or cleaned mark, clearing a deleted document's pointer to 0 in
//!   compaction) are ones where two writers swapping in the same value have
//!   done the same thing. Finding `new` therefore means this swap wrote it
//!   (or an equivalent one did); not finding it means it did not take
//!   effect, or that a later writer, which had to read `new` to replace
//!   it, already moved the key on.

use std::future::Future;

use edgesync_core::{Kv, KvError, MaybeSend, MaybeSync};

/// What `batch.get-many` returns: the keys found, with their values.
pub type KeyValues = Vec<(String, Option<Vec<u8>>)>;

/// Outcome of a raw `atomics.swap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapError {
    /// `cas-failed`: the backend says the value changed since `current()`
    /// (which may not be so: see the crate docs).
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

    /// `get_many` of at most [`MAX_BATCH_READ`] keys, in `keys`' order.
    async fn get_chunk(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        match keys {
            [] => return Ok(Vec::new()),
            // Never `KEYS k` on Redis (see the crate docs).
            [key] => return Ok(vec![self.bucket.get(key).await?]),
            _ => {}
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
}

/// Most keys one `get-many` asks for: DynamoDB's `BatchGetItem` takes at
/// most 100, and a larger batch would fail and fall back to one `get` per
/// key.
pub const MAX_BATCH_READ: usize = 100;

/// Most keys one `delete-many` names: DynamoDB's `BatchWriteItem` takes at
/// most 25.
pub const MAX_BATCH_WRITE: usize = 25;

impl<B: RawBucket> Kv for WasiKv<B> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.bucket.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_BATCH_READ) {
            out.extend(self.get_chunk(chunk).await?);
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.bucket.set(key, value).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        for chunk in keys.chunks(MAX_BATCH_WRITE) {
            if self.bucket.delete_many(chunk.to_vec()).await.is_ok() {
                continue;
            }
            for key in chunk {
                self.bucket.delete(key).await?;
            }
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
            // Neither report is trusted: Redis can report success for an
            // aborted transaction, and Redis and DynamoDB can report
            // `cas-failed` after the write happened. The core only swaps in
            // values unique to this writer (see the crate docs), so whether
            // the key holds `new` now is the answer.
            Ok(()) | Err(SwapError::CasFailed) => {
                Ok(self.bucket.get(key).await?.as_deref() == Some(new))
            }
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

#[cfg(test)]
mod tests {
    //! The adapter against a scripted bucket that records which raw calls
    //! were made and can report a swap that happened as `cas-failed`.

    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    /// How the scripted bucket reports a swap.
    #[derive(Clone, Copy)]
    enum Report {
        /// Writes when the value is unchanged; reports what happened.
        Truthfully,
        /// Writes when the value is unchanged, and reports `cas-failed`
        /// either way (Spin's Redis store: its `UNWATCH <key>` after EXEC
        /// is refused).
        CasFailedAlways,
    }

    struct Scripted {
        map: Mutex<BTreeMap<String, Vec<u8>>>,
        calls: Mutex<Vec<String>>,
        report: Report,
        /// Written by the next `cas.current`, just after it reads: a
        /// concurrent writer that gets in before the swap.
        race: Mutex<Option<&'static [u8]>>,
    }

    impl Scripted {
        fn new(report: Report) -> Self {
            Self {
                map: Mutex::new(BTreeMap::new()),
                calls: Mutex::new(Vec::new()),
                report,
                race: Mutex::new(None),
            }
        }
        fn log(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
        fn put(&self, key: &str, value: &[u8]) {
            self.map
                .lock()
                .unwrap()
                .insert(key.to_owned(), value.to_vec());
        }
    }

    impl RawBucket for Scripted {
        type Cas = (String, Option<Vec<u8>>);

        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
            self.log(format!("get {key}"));
            Ok(self.map.lock().unwrap().get(key).cloned())
        }
        async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
            self.log(format!("set {key}"));
            self.put(key, value);
            Ok(())
        }
        async fn delete(&self, key: &str) -> Result<(), KvError> {
            self.log(format!("delete {key}"));
            self.map.lock().unwrap().remove(key);
            Ok(())
        }
        async fn get_many(&self, keys: Vec<String>) -> Result<KeyValues, KvError> {
            self.log(format!("get-many {}", keys.join(" ")));
            let map = self.map.lock().unwrap();
            Ok(keys
                .into_iter()
                .filter_map(|k| map.get(&k).cloned().map(|v| (k, Some(v))))
                .collect())
        }
        async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
            self.log(format!("delete-many {}", keys.join(" ")));
            let mut map = self.map.lock().unwrap();
            for k in keys {
                map.remove(&k);
            }
            Ok(())
        }
        async fn increment(&self, key: &str, _delta: i64) -> Result<i64, KvError> {
            self.log(format!("increment {key}"));
            Err(KvError::new(edgesync_core::KvErrorKind::Other, "unused"))
        }
        async fn cas_current(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
            self.log(format!("cas.current {key}"));
            let seen = self.map.lock().unwrap().get(key).cloned();
            if let Some(theirs) = self.race.lock().unwrap().take() {
                self.put(key, theirs);
            }
            Ok(((key.to_owned(), seen.clone()), seen))
        }
        async fn cas_swap(&self, cas: Self::Cas, value: &[u8]) -> Result<(), SwapError> {
            let (key, seen) = cas;
            self.log(format!("swap {key}"));
            let mut map = self.map.lock().unwrap();
            let applied = map.get(&key) == seen.as_ref();
            if applied {
                map.insert(key, value.to_vec());
            }
            match self.report {
                Report::Truthfully if applied => Ok(()),
                Report::Truthfully | Report::CasFailedAlways => Err(SwapError::CasFailed),
            }
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_one_key_batch_is_a_plain_get_and_no_keys_touch_nothing() {
        // Spin's Redis store sends `KEYS <keys...>` for get-many: one key is
        // a valid KEYS pattern that scans the keyspace and crashes the host.
        let kv = WasiKv::new(Scripted::new(Report::Truthfully));
        kv.bucket().put("u/a", b"1");
        assert_eq!(
            block_on(kv.get_many(&strings(&["u/a"]))).unwrap(),
            vec![Some(b"1".to_vec())]
        );
        assert_eq!(
            block_on(kv.get_many(&strings(&["u/b"]))).unwrap(),
            vec![None]
        );
        assert_eq!(kv.bucket().calls(), strings(&["get u/a", "get u/b"]));

        assert!(block_on(kv.get_many(&[])).unwrap().is_empty());
        assert!(kv.bucket().calls().is_empty());

        // Two keys or more still go out as one batch.
        assert_eq!(
            block_on(kv.get_many(&strings(&["u/b", "u/a"]))).unwrap(),
            vec![None, Some(b"1".to_vec())]
        );
        assert_eq!(kv.bucket().calls(), strings(&["get-many u/b u/a"]));
    }

    #[test]
    fn batches_stay_within_what_every_backend_takes_in_one_call() {
        let kv = WasiKv::new(Scripted::new(Report::Truthfully));
        let keys: Vec<String> = (0..250).map(|i| format!("u/{i:03}")).collect();
        kv.bucket().put("u/007", b"7");
        kv.bucket().put("u/207", b"207");
        let got = block_on(kv.get_many(&keys)).unwrap();
        assert_eq!(got.len(), 250);
        assert_eq!(got[7].as_deref(), Some(&b"7"[..]));
        assert_eq!(got[207].as_deref(), Some(&b"207"[..]));
        assert_eq!(got.iter().filter(|v| v.is_some()).count(), 2);
        let sizes: Vec<usize> = kv
            .bucket()
            .calls()
            .iter()
            .map(|c| c.strip_prefix("get-many ").unwrap().split(' ').count())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);

        block_on(kv.delete_many(&keys[..60])).unwrap();
        let sizes: Vec<usize> = kv
            .bucket()
            .calls()
            .iter()
            .map(|c| c.strip_prefix("delete-many ").unwrap().split(' ').count())
            .collect();
        assert_eq!(sizes, [25, 25, 10]);
        assert_eq!(block_on(kv.get("u/007")).unwrap(), None);
    }

    #[test]
    fn a_swap_that_happened_but_reports_cas_failed_is_a_success() {
        let kv = WasiKv::new(Scripted::new(Report::CasFailedAlways));
        kv.bucket().put("k", b"old");
        assert!(block_on(kv.compare_and_swap("k", b"old", b"new")).unwrap());
        assert_eq!(block_on(kv.get("k")).unwrap().as_deref(), Some(&b"new"[..]));
        // ...and one that did not happen is still a failure.
        assert!(!block_on(kv.compare_and_swap("k", b"old", b"newer")).unwrap());
        assert_eq!(block_on(kv.get("k")).unwrap().as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_swap_that_lost_the_race_is_read_back_and_stays_lost() {
        let kv = WasiKv::new(Scripted::new(Report::Truthfully));
        kv.bucket().put("k", b"old");
        // Someone else moves the key between current() and swap().
        *kv.bucket().race.lock().unwrap() = Some(b"theirs");
        assert!(!block_on(kv.compare_and_swap("k", b"old", b"mine")).unwrap());
        assert_eq!(
            kv.bucket().calls(),
            strings(&["cas.current k", "swap k", "get k"])
        );
        assert_eq!(
            block_on(kv.get("k")).unwrap().as_deref(),
            Some(&b"theirs"[..])
        );
    }
}
