//! Values of recently read and written keys, served without touching
//! SQLite, and never different from what is committed.
//!
//! Why: even an inline point read is a SQLite read transaction (its WAL
//! read lock, and a process-wide mutex that the runtime's threads contend
//! for), about as much as the rest of a 304 poll. A hit here is a hash
//! lookup.
//!
//! Coherence rests on this store's commits being the only writes to the
//! file (the lock file enforces one store per file) and never overlapping
//! (each holds the write connection's lock):
//!
//! * Before a batch is committed, its keys' entries are removed and the
//!   cache is marked *committing*; after the commit (or its failure) the
//!   mark is lifted. Both steps bump a generation counter. So while a batch
//!   is in flight, no entry exists for any key it writes, and every other
//!   entry holds a value the batch does not change.
//! * A reader that misses notes the generation (unless a commit is in
//!   flight) before reading SQLite, and may insert what it read only if the
//!   generation is unchanged and no commit is in flight: then no commit
//!   began or ended around its read, so the value is the committed one.
//! * After a successful commit the committer inserts the final value of every
//!   key whose outcome it knows, before answering any caller.
//!
//! Hence a hit returns the latest committed value, a read that follows an
//! acknowledged write sees it, and reads never go backwards.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Largest value kept; bigger ones are read from SQLite every time.
pub(crate) const MAX_VALUE: usize = 4096;

/// Bookkeeping charged per entry on top of its key and value bytes.
const ENTRY_OVERHEAD: usize = 64;

/// What a miss may later insert: the generation it saw, or nothing if a
/// commit was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(Option<u64>);

/// A key's value after a committed batch, as far as the writer knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Final<'a> {
    /// Holds these bytes.
    Value(Cow<'a, [u8]>),
    /// Absent (deleted).
    Absent,
    /// Changed in a way the writer did not observe (left uncached).
    Unknown,
}

pub(crate) struct ReadCache {
    state: Mutex<State>,
    max_bytes: usize,
}

struct State {
    /// `None`: known to be absent.
    entries: HashMap<Box<str>, Option<Box<[u8]>>>,
    bytes: usize,
    generation: u64,
    committing: bool,
}

fn cost(key: &str, value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD
}

impl State {
    fn insert(&mut self, key: &str, value: Option<&[u8]>, max_bytes: usize) {
        if value.is_some_and(|v| v.len() > MAX_VALUE) {
            self.remove(key);
            return;
        }
        let added = cost(key, value);
        if self.bytes + added > max_bytes {
            // Over budget: drop about half the entries (in hash order,
            // i.e. arbitrary ones). Amortized O(1) per insert.
            let mut keep = false;
            let mut freed = 0;
            self.entries.retain(|k, v| {
                keep = !keep;
                if !keep {
                    freed += cost(k, v.as_deref());
                }
                keep
            });
            self.bytes -= freed;
        }
        if let Some(old) = self
            .entries
            .insert(key.into(), value.map(Box::<[u8]>::from))
        {
            self.bytes -= cost(key, old.as_deref());
        }
        self.bytes += added;
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= cost(key, old.as_deref());
        }
    }

    fn ticket(&self) -> Ticket {
        Ticket((!self.committing).then_some(self.generation))
    }

    fn admits(&self, ticket: Ticket) -> bool {
        !self.committing && ticket.0 == Some(self.generation)
    }
}

impl ReadCache {
    /// A cache holding at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                bytes: 0,
                generation: 0,
                committing: false,
            }),
            max_bytes,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; should it ever, an entry
        // set is still coherent (each step is one map operation).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value of `key` (`Ok`; `None` inside: known absent), or a
    /// ticket for inserting what SQLite answers.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Ticket> {
        let state = self.state();
        match state.entries.get(key) {
            Some(value) => Ok(value.as_deref().map(<[u8]>::to_vec)),
            None => Err(state.ticket()),
        }
    }

    /// [`ReadCache::get`] for many keys: the hits (`None` for a miss) and
    /// a ticket for the misses.
    #[allow(clippy::type_complexity)]
    pub fn get_many(&self, keys: &[String]) -> (Vec<Option<Option<Vec<u8>>>>, Ticket) {
        let state = self.state();
        let found = keys
            .iter()
            .map(|key| {
                state
                    .entries
                    .get(key.as_str())
                    .map(|value| value.as_deref().map(<[u8]>::to_vec))
            })
            .collect();
        (found, state.ticket())
    }

    /// Insert what SQLite answered for `key` after a miss, if still valid.
    pub fn fill<'a>(
        &self,
        ticket: Ticket,
        values: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) {
        if ticket.0.is_none() {
            return;
        }
        let mut state = self.state();
        if !state.admits(ticket) {
            return;
        }
        for (key, value) in values {
            state.insert(key, value, self.max_bytes);
        }
    }

    /// A batch writing `keys` is about to be committed.
    pub fn begin_commit<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut state = self.state();
        state.generation += 1;
        state.committing = true;
        for key in keys {
            state.remove(key);
        }
    }

    /// The batch was committed (with these final values) or failed
    /// (nothing known).
    pub fn end_commit<'a>(&self, known: impl IntoIterator<Item = (&'a str, Final<'a>)>) {
        let mut state = self.state();
        for (key, value) in known {
            match value {
                Final::Value(bytes) => state.insert(key, Some(bytes.as_ref()), self.max_bytes),
                Final::Absent => state.insert(key, None, self.max_bytes),
                Final::Unknown => state.remove(key),
            }
        }
        state.generation += 1;
        state.committing = false;
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let state = self.state();
        (state.entries.len(), state.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_misses_and_known_absence() {
        let cache = ReadCache::new(1 << 20);
        let ticket = cache.get("k").unwrap_err();
        cache.fill(ticket, [("k", Some(&b"v"[..])), ("gone", None)]);
        assert_eq!(cache.get("k"), Ok(Some(b"v".to_vec())));
        assert_eq!(cache.get("gone"), Ok(None));
    }

    #[test]
    fn a_read_overlapping_a_commit_is_not_kept() {
        let cache = ReadCache::new(1 << 20);
        cache.fill(cache.get("k").unwrap_err(), [("k", Some(&b"old"[..]))]);

        // Missed before the commit began, answered after it ended.
        let before = cache.get("other").unwrap_err();
        cache.begin_commit(["k"]);
        assert!(cache.get("k").is_err(), "a key being written has no entry");
        // Missed while the commit is in flight.
        let during = cache.get("k").unwrap_err();
        cache.fill(during, [("k", Some(&b"old"[..]))]);
        assert!(cache.get("k").is_err());
        cache.end_commit([("k", Final::Value(Cow::Borrowed(&b"new"[..])))]);
        cache.fill(before, [("other", Some(&b"stale?"[..]))]);
        cache.fill(during, [("k", Some(&b"old"[..]))]);
        assert_eq!(cache.get("k"), Ok(Some(b"new".to_vec())));
        assert!(cache.get("other").is_err());
    }

    #[test]
    fn unknown_outcomes_and_failed_commits_leave_keys_uncached() {
        let cache = ReadCache::new(1 << 20);
        cache.fill(
            cache.get("a").unwrap_err(),
            [("a", Some(&b"1"[..])), ("b", Some(&b"2"[..]))],
        );
        cache.begin_commit(["a", "b"]);
        cache.end_commit([("a", Final::Unknown)]);
        assert!(cache.get("a").is_err());
        assert!(cache.get("b").is_err());
        cache.begin_commit(["c"]);
        cache.end_commit([]);
        assert!(cache.get("c").is_err());
    }

    #[test]
    fn the_budget_holds_and_large_values_are_not_kept() {
        let cache = ReadCache::new(10_000);
        for i in 0..1000 {
            let key = format!("key{i}");
            cache.fill(
                cache.get(&key).unwrap_err(),
                [(key.as_str(), Some(&[7u8; 20][..]))],
            );
            assert!(cache.len().1 <= 10_000);
        }
        assert!(cache.len().0 > 20);
        let big = vec![1u8; MAX_VALUE + 1];
        cache.fill(cache.get("big").unwrap_err(), [("big", Some(&big[..]))]);
        assert!(cache.get("big").is_err());
        // Replacing an entry does not leak budget.
        let small = ReadCache::new(1 << 20);
        for i in 0..100 {
            small.begin_commit(["x"]);
            let value = if i % 2 == 0 {
                &b"abc"[..]
            } else {
                &b"abcd"[..]
            };
            small.end_commit([("x", Final::Value(Cow::Borrowed(value)))]);
            // Filling over an entry replaces it too.
            let generation = small.state().generation;
            small.fill(Ticket(Some(generation)), [("x", Some(value))]);
        }
        assert_eq!(small.len().0, 1);
        assert_eq!(small.len().1, cost("x", Some(b"abcd")));
    }
}
