//! A store whose test decides, operation by operation, whether the inner
//! store answers: for failures at one precise place (a race every
//! compare-and-swap of one document loses, a store that fails only the
//! housekeeping after a commit), which no backend model produces on its own.

use edgesync_core::{Kv, KvError, KvErrorKind, MaybeSync};

/// A KV operation about to run, with the keys it touches.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    Get(&'a str),
    GetMany(&'a [String]),
    /// A key and the value written to it.
    Set(&'a str, &'a [u8]),
    DeleteMany(&'a [String]),
    CompareAndSwap(&'a str),
    Increment(&'a str),
}

impl<'a> Op<'a> {
    /// The keys the operation touches.
    pub fn keys(&self) -> Vec<&'a str> {
        match *self {
            Op::Get(key) | Op::Set(key, _) | Op::CompareAndSwap(key) | Op::Increment(key) => {
                vec![key]
            }
            Op::GetMany(keys) | Op::DeleteMany(keys) => keys.iter().map(String::as_str).collect(),
        }
    }
}

/// What happens to an [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The inner store runs it.
    Pass,
    /// It fails with a store error, and the inner store never sees it.
    Fail,
    /// A compare-and-swap loses (`false`, as to another writer that got
    /// there first) and changes nothing; any other operation fails.
    Lose,
}

/// `inner`, with every operation first put to `decide`.
pub struct Faulty<K, F> {
    inner: K,
    decide: F,
}

impl<K: Kv, F: Fn(Op<'_>) -> Verdict + MaybeSync> Faulty<K, F> {
    /// `inner` with `decide` judging each operation.
    pub fn new(inner: K, decide: F) -> Self {
        Self { inner, decide }
    }

    /// Whether `op` goes through; the error it gets if not.
    fn judge(&self, op: Op<'_>) -> Result<Verdict, KvError> {
        match (self.decide)(op) {
            Verdict::Pass => Ok(Verdict::Pass),
            Verdict::Lose if matches!(op, Op::CompareAndSwap(_)) => Ok(Verdict::Lose),
            Verdict::Fail | Verdict::Lose => Err(KvError::new(
                KvErrorKind::Other,
                format!("{op:?}: failure injected by the test"),
            )),
        }
    }
}

impl<K: Kv, F: Fn(Op<'_>) -> Verdict + MaybeSync> Kv for Faulty<K, F> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.judge(Op::Get(key))?;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.judge(Op::GetMany(keys))?;
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.judge(Op::Set(key, value))?;
        self.inner.set(key, value).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        self.judge(Op::DeleteMany(keys))?;
        self.inner.delete_many(keys).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        if self.judge(Op::CompareAndSwap(key))? == Verdict::Lose {
            return Ok(false);
        }
        self.inner.compare_and_swap(key, current, new).await
    }
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.judge(Op::Increment(key))?;
        self.inner.increment(key, delta).await
    }
}
