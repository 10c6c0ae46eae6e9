//! The change log and the documents derived from it, over the [`Kv`] trait.
//!
//! See the crate docs for the layout, the commit protocol and why it keeps
//! the invariants; this module is the code that does it. Everything here
//! acts for one user ([`Log`] is built per request from the authenticated
//! user id).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::config::Config;
use crate::entry::{Entry, Op};
use crate::host::Host;
use crate::keys::UserKeys;
use crate::kv::{decode_counter, encode_counter, Kv, KvError, KvErrorKind};
use crate::merge_patch;
use crate::problem::{Failure, Problem};

/// Slots read in the first round trip when looking for the tail of the
/// log: the hint trails the tail by fewer than `HINT_EVERY` slots unless a
/// writer crashed, so this usually finds it at once. Later windows double.
const WINDOW: u64 = HINT_EVERY + 1;
/// Largest window of slots read in one round trip.
const MAX_WINDOW: u64 = 128;
/// The hint is advanced on every seq divisible by this.
const HINT_EVERY: u64 = 8;
/// Give up (503) after this many optimistic attempts.
const MAX_ATTEMPTS: usize = 64;
/// Compaction runs on seqs divisible by this and moves the floor by at
/// least this much.
pub(crate) const COMPACT_STEP: u64 = 16;
/// Most log entries one request cleans up (bounds the work a single
/// writer does on behalf of everyone).
const MAX_CLEAN_PER_REQUEST: u64 = 64;
/// Largest collection index blob; beyond it creates are refused (409
/// `collection-full`). Half of the 1 MB value limit of managed hosts
/// (lower where `max_value_bytes` is).
pub(crate) const INDEX_MAX_BYTES: usize = 512 * 1024;
/// Most collections a user may have (their names are one KV value, read by
/// every unfiltered listing); creating a document in one more is refused
/// (409 `too-many-collections`). 1,000 names of 128 bytes fit in 131 KB.
pub(crate) const MAX_COLLECTIONS: usize = 1000;
/// Largest seq a cursor may name (2^53, exact in every JSON parser). No
/// user's log gets anywhere near it; larger cursors are simply ahead.
pub(crate) const MAX_SEQ: u64 = 1 << 53;
/// A page of changes or documents stops growing once its values reach this
/// size (it always holds at least one).
const PAGE_VALUE_BUDGET: usize = 1024 * 1024;
/// How many entries a page loads before it knows how big they are: with
/// values up to the 256 KiB default body limit, 8 MiB at most in memory.
const FIRST_LOAD: usize = 32;

/// The value bytes a page has taken, and how many entries to load next so
/// that a page of large values never loads much more than it can send (a
/// page of 1,000 large values would otherwise sit in memory whole).
#[derive(Default)]
struct PageBudget {
    bytes: usize,
    taken: usize,
}

impl PageBudget {
    /// Entries to load next, of `remaining`: [`FIRST_LOAD`] first, then as
    /// many as the rest of the budget holds at the average size so far.
    fn next_load(&self, remaining: usize) -> usize {
        let n = match self.bytes.checked_div(self.taken) {
            None => FIRST_LOAD,
            Some(average) => PAGE_VALUE_BUDGET.saturating_sub(self.bytes) / average.max(1),
        };
        n.clamp(1, remaining.max(1))
    }

    /// Take `entry` into the page, unless the page holds something already
    /// and `entry` would take it past the budget.
    fn take(&mut self, entry: &Entry) -> bool {
        let bytes = entry.v.as_ref().map_or(0, json_len);
        if self.taken > 0 && self.bytes + bytes > PAGE_VALUE_BUDGET {
            return false;
        }
        self.bytes += bytes;
        self.taken += 1;
        true
    }
}

/// A counter as read from the store: its raw bytes (for compare-and-swap)
/// and decoded value. `raw == None` means the key is absent (value 0).
#[derive(Debug, Clone)]
struct Counter {
    key: String,
    raw: Option<Vec<u8>>,
    value: u64,
}

fn corrupt(key: &str) -> Failure {
    Failure::Kv(KvError::new(
        KvErrorKind::Other,
        format!("value at {key} is not a counter"),
    ))
}

fn counter(key: String, raw: Option<Vec<u8>>) -> Result<Counter, Failure> {
    let value = match &raw {
        None => 0,
        Some(bytes) => decode_counter(bytes).ok_or_else(|| corrupt(&key))?,
    };
    Ok(Counter { key, raw, value })
}

/// Signals an optimistic attempt that lost a race and must start over.
enum Step<T> {
    Done(T),
    Retry,
}

/// What to do to a document.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Put(Value),
    Patch(Value),
    Delete,
}

/// An entity-tag condition (`If-Match` / `If-None-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cond {
    /// `*`
    Any,
    /// A list of versions (strong tags `"n"`); may be empty when only
    /// unusable tags were given.
    Versions(Vec<u64>),
}

/// Preconditions of a mutation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conditions {
    pub if_match: Option<Cond>,
    pub if_none_match: Option<Cond>,
}

/// One mutation request.
#[derive(Debug, Clone)]
pub(crate) struct Mutation {
    pub collection: String,
    pub id: String,
    pub action: Action,
    pub conditions: Conditions,
    /// Idempotency key and the fingerprint of the request it came with.
    pub idempotency: Option<(String, String)>,
}

/// Result of a mutation.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Committed (now, or earlier under the same idempotency key).
    Applied { entry: Entry, replayed: bool },
    /// Refused without changing anything.
    Refused(Problem),
}

/// The committed state of a document.
#[derive(Debug, Clone, Default)]
struct DocState {
    /// Entry holding the state (0: never existed or forgotten).
    id: u64,
    version: u64,
    live: bool,
    /// The entry itself, when loaded.
    entry: Option<Entry>,
}

impl DocState {
    fn from_entry(id: u64, e: Entry) -> Self {
        Self {
            id,
            version: e.k,
            live: e.is_live(),
            entry: Some(e),
        }
    }
    /// The state before the (uncommitted) intent `x`.
    fn before(x: &Entry) -> Self {
        Self {
            id: x.p,
            version: x.pv,
            live: x.px,
            entry: None,
        }
    }
}

/// How a pointer (document or idempotency) resolves.
#[derive(Debug, Clone)]
enum Resolution {
    /// No pointer, or a zero one.
    Nothing,
    /// An entry matching the pointer's subject is committed at the target
    /// seq of the pointed-to intent.
    Committed(u64, Entry),
    /// The pointed-to intent is not committed; `pending` when its target
    /// slot is still the free tail (so another writer may take it over).
    /// `holder` is what its target slot holds instead (0: nothing).
    Open {
        intent: u64,
        x: Entry,
        pending: bool,
        holder: u64,
    },
}

/// An intent a request wrote and gave up on before any document pointer
/// named it, while its key's pointer (`pointer`) did.
#[derive(Debug, Clone)]
struct Abandoned {
    id: u64,
    pointer: String,
}

/// What a pointer naming an entry that is not there means.
#[derive(Debug, Clone, Copy)]
enum Missing {
    /// A document pointer never names a deleted entry for long: its old
    /// target is deleted only after it moved on. Read again.
    Retry,
    /// An idempotency pointer may keep naming an intent that was deleted
    /// as dead: one whose target slot went to an entry without the key
    /// (so the key was not used there). No committed use of the key is
    /// named then, as for an absent pointer; a later use swaps it on.
    Nothing,
}

/// Whether `x`, an intent whose target slot holds `holder`, is dead for
/// both pointers that may name it: its document's (the slot went to
/// another entry) and, if it carries an idempotency key, the key's (the
/// holder does not carry that key, so the key was not used there and the
/// intent is no link to a use of it). Only then may it be deleted.
fn dead_for_its_key(cache: &HashMap<u64, Option<Entry>>, x: &Entry, holder: u64) -> bool {
    let Some(key) = &x.ik else { return true };
    let holder_key = cache.get(&holder).cloned().flatten().and_then(|h| h.ik);
    holder_key.as_ref() != Some(key)
}

/// A snapshot of where the log ends.
#[derive(Debug)]
struct Tail {
    hint: Counter,
    /// First free slot.
    tail: u64,
    /// That slot as read (absent, or zero).
    tail_slot: Counter,
    /// Claimed slots seen while scanning: seq → entry id.
    claimed: BTreeMap<u64, u64>,
}

/// A page of the change feed.
#[derive(Debug)]
pub(crate) enum ChangesPage {
    /// Nothing after `since` (which is the head).
    Idle,
    /// Entries after `since`.
    Entries {
        changes: Vec<(u64, Entry)>,
        head: u64,
    },
}

/// A page of the snapshot listing.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub cursor: u64,
    pub documents: Vec<Entry>,
    pub next_after: Option<(String, String)>,
}

/// A key a request will use, named before it is built (see
/// [`Log::check_key_lengths`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyUse<'n> {
    /// A document's pointer (collection, id).
    Document(&'n str, &'n str),
    /// An idempotency key's pointer, in whatever epoch it will be.
    Idempotency(&'n str),
    /// A collection's index.
    Collection(&'n str),
}

/// One user's log, for the duration of one request.
pub(crate) struct Log<'a, K, H> {
    kv: &'a K,
    host: &'a H,
    cfg: &'a Config,
    keys: UserKeys,
}

impl<'a, K: Kv, H: Host> Log<'a, K, H> {
    pub fn new(kv: &'a K, host: &'a H, cfg: &'a Config, user_id: &str) -> Self {
        Self {
            kv,
            host,
            cfg,
            keys: UserKeys::new(user_id),
        }
    }

    /// Refuses (400 `key-too-long`), before any KV operation, a request
    /// that would need a key longer than the store takes (`max_key_bytes`;
    /// 0: no limit) — on a store that enforces a limit it would fail
    /// half-way instead, with a 503. The log's own keys are always checked
    /// (the user id is part of every key). Seqs and epochs count at their
    /// largest, so a request that passes never meets a longer key later.
    pub fn check_key_lengths(&self, uses: &[KeyUse<'_>]) -> Result<(), Problem> {
        let max = self.cfg.max_key_bytes;
        if max == 0 {
            return Ok(());
        }
        // The longest of the log's own keys: a slot.
        let own = ("the user id", self.keys.slot(u64::MAX).len());
        let named = uses.iter().map(|u| match *u {
            KeyUse::Document(c, i) => ("collection and document id", self.keys.doc(c, i).len()),
            KeyUse::Idempotency(k) => ("idempotency key", self.keys.idempotency(u64::MAX, k).len()),
            KeyUse::Collection(c) => ("collection", self.keys.index(c).len()),
        });
        match std::iter::once(own)
            .chain(named)
            .find(|&(_, len)| len > max)
        {
            Some((what, len)) => Err(Problem::key_too_long(what, len, max)),
            None => Ok(()),
        }
    }

    fn fresh_id(&self) -> u64 {
        loop {
            let id = self.host.random_u64();
            if id != 0 {
                return id;
            }
        }
    }

    // ---------------------------------------------------------------
    // Small KV helpers
    // ---------------------------------------------------------------

    async fn read_counter(&self, key: String) -> Result<Counter, Failure> {
        let raw = self.kv.get(&key).await?;
        counter(key, raw)
    }

    async fn read_counters(&self, keys: Vec<String>) -> Result<Vec<Counter>, Failure> {
        let raws = self.kv.get_many(&keys).await?;
        keys.into_iter()
            .zip(raws)
            .map(|(k, r)| counter(k, r))
            .collect()
    }

    /// Make sure a counter exists (creating it with `increment(_, 0)`, the
    /// only creation that can never undo someone else's progress) and
    /// return it as it now is.
    async fn ensure(&self, c: Counter) -> Result<Counter, Failure> {
        if c.raw.is_some() {
            return Ok(c);
        }
        // On Redis, INCRBY fails if someone swapped in a binary value
        // meanwhile: then the key exists, which is all we wanted.
        let incremented = self.kv.increment(&c.key, 0).await;
        let raw = self.kv.get(&c.key).await?;
        match (raw, incremented) {
            (Some(raw), _) => counter(c.key, Some(raw)),
            (None, Err(e)) => Err(e.into()),
            (None, Ok(_)) => Err(Failure::Kv(KvError::new(
                KvErrorKind::Other,
                format!("{} vanished right after increment", c.key),
            ))),
        }
    }

    /// Swap a counter (which must exist) from what was read to `new`.
    async fn swap(&self, c: &Counter, new: u64) -> Result<bool, Failure> {
        let current = c.raw.as_deref().expect("swap only on existing counters");
        Ok(self
            .kv
            .compare_and_swap(&c.key, current, &encode_counter(new))
            .await?)
    }

    /// Raise a counter to at least `min` (never lowers it).
    async fn raise(&self, key: String, min: u64) -> Result<bool, Failure> {
        for _ in 0..8 {
            let c = self.read_counter(key.clone()).await?;
            if c.value >= min {
                return Ok(true);
            }
            let c = self.ensure(c).await?;
            if c.value >= min {
                return Ok(true);
            }
            if self.swap(&c, min).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn load_entries(
        &self,
        cache: &mut HashMap<u64, Option<Entry>>,
        ids: &[u64],
    ) -> Result<(), Failure> {
        let missing: Vec<u64> = {
            let mut v: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| *id != 0 && !cache.contains_key(id))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = missing.iter().map(|id| self.keys.entry(*id)).collect();
        let raws = self.kv.get_many(&keys).await?;
        for (id, raw) in missing.into_iter().zip(raws) {
            let entry = match raw {
                None => None,
                Some(bytes) => {
                    Some(Entry::from_bytes(&bytes).ok_or_else(|| corrupt(&self.keys.entry(id)))?)
                }
            };
            cache.insert(id, entry);
        }
        Ok(())
    }

    // ---------------------------------------------------------------
    // The tail of the log
    // ---------------------------------------------------------------

    /// Find the first free slot, scanning forward from the hint.
    async fn scan_tail(&self, hint: Counter) -> Result<Tail, Failure> {
        let mut start = hint.value + 1;
        let mut claimed = BTreeMap::new();
        let mut window = WINDOW;
        for _ in 0..1024 {
            let keys: Vec<String> = (start..start + window).map(|s| self.keys.slot(s)).collect();
            let slots = self.read_counters(keys).await?;
            for (i, slot) in slots.into_iter().enumerate() {
                let seq = start + i as u64;
                if slot.value == 0 {
                    return Ok(Tail {
                        hint,
                        tail: seq,
                        tail_slot: slot,
                        claimed,
                    });
                }
                claimed.insert(seq, slot.value);
            }
            start += window;
            window = (window * 2).min(MAX_WINDOW);
        }
        Err(Problem::unavailable("the log tail is too far from its hint").into())
    }

    /// The newest committed seq.
    pub async fn head(&self) -> Result<u64, Failure> {
        let hint = self.read_counter(self.keys.hint()).await?;
        Ok(self.scan_tail(hint).await?.tail - 1)
    }

    /// The newest committed seq, given one known to be committed.
    async fn head_after(&self, committed: u64) -> Result<u64, Failure> {
        let start = Counter {
            key: self.keys.hint(),
            raw: None,
            value: committed,
        };
        Ok(self.scan_tail(start).await?.tail - 1)
    }

    /// Whether nothing was committed after `since`: usually one read of
    /// one small key (slot `since + 1` exists and is zero exactly when
    /// `since` is the head). When that slot is absent — a user without a
    /// log yet, or a head whose writer has not pre-created the next slot —
    /// the floor and slot `since` decide. `None` when `since` is not a
    /// valid cursor at all (ahead of the head or below the floor): the full
    /// read answers those.
    pub async fn nothing_after(&self, since: u64) -> Result<Option<bool>, Failure> {
        if since >= MAX_SEQ {
            return Ok(None);
        }
        let slot = self.read_counter(self.keys.slot(since + 1)).await?;
        if slot.value != 0 {
            return Ok(Some(false));
        }
        if slot.raw.is_some() {
            return Ok(Some(true));
        }
        let mut keys = vec![self.keys.floor()];
        if since > 0 {
            keys.push(self.keys.slot(since));
        }
        let c = self.read_counters(keys).await?;
        let at_head = since >= c[0].value && (since == 0 || c[1].value != 0);
        Ok(at_head.then_some(true))
    }

    // ---------------------------------------------------------------
    // Pointer resolution
    // ---------------------------------------------------------------

    /// Resolve a pointer to the entry it names. `matches` says whether a
    /// committed entry belongs to the pointer's subject (same document, or
    /// same idempotency key): any such entry committed at the intent's
    /// target seq counts, which is what lets writers take over each other's
    /// pending intents safely.
    async fn resolve(
        &self,
        ptr: u64,
        tail: &Tail,
        cache: &mut HashMap<u64, Option<Entry>>,
        matches: &(dyn Fn(&Entry) -> bool + Sync),
        missing: Missing,
    ) -> Result<Step<Resolution>, Failure> {
        if ptr == 0 {
            return Ok(Step::Done(Resolution::Nothing));
        }
        self.load_entries(cache, &[ptr]).await?;
        let Some(x) = cache.get(&ptr).cloned().flatten() else {
            return Ok(match missing {
                // The pointer moved on and its old target was cleaned up
                // between our two reads.
                Missing::Retry => Step::Retry,
                // See `Missing::Nothing`.
                Missing::Nothing => Step::Done(Resolution::Nothing),
            });
        };
        if x.k > tail.tail {
            // Our view of the tail is older than the pointer: start over.
            return Ok(Step::Retry);
        }
        if x.k == tail.tail {
            return Ok(Step::Done(Resolution::Open {
                intent: ptr,
                x,
                pending: true,
                holder: 0,
            }));
        }
        let slot = match tail.claimed.get(&x.k) {
            Some(id) => *id,
            None => self.read_counter(self.keys.slot(x.k)).await?.value,
        };
        if slot == ptr {
            return Ok(Step::Done(Resolution::Committed(ptr, x)));
        }
        if slot != 0 {
            self.load_entries(cache, &[slot]).await?;
            if let Some(Some(y)) = cache.get(&slot) {
                if matches(y) {
                    return Ok(Step::Done(Resolution::Committed(slot, y.clone())));
                }
            }
        }
        // The target slot went to an entry for something else, or was
        // deleted by compaction (which never deletes the slot of a
        // document's current state): the intent never committed.
        Ok(Step::Done(Resolution::Open {
            intent: ptr,
            x,
            pending: false,
            holder: slot,
        }))
    }

    // ---------------------------------------------------------------
    // Mutations
    // ---------------------------------------------------------------

    /// Apply a mutation, retrying lost races.
    pub async fn mutate(&self, m: &Mutation) -> Result<Outcome, Failure> {
        let _turn = self.host.writer_turn(self.keys.topic()).await;
        let mut abandoned = Vec::new();
        let result = self.mutate_attempts(m, &mut abandoned).await;
        self.forget_abandoned(&abandoned).await;
        result
    }

    async fn mutate_attempts(
        &self,
        m: &Mutation,
        abandoned: &mut Vec<Abandoned>,
    ) -> Result<Outcome, Failure> {
        for attempt in 0..MAX_ATTEMPTS {
            if let Step::Done(outcome) = self.try_mutate(m, abandoned).await? {
                return Ok(outcome);
            }
            if attempt >= 2 {
                // Lost several races in a row: back off for a random while
                // (full jitter, growing to 64 ms) or until the log moves, so
                // that a crowd of writers spreads out instead of colliding
                // again in lockstep.
                let ceiling = 1u64 << attempt.min(6);
                let pause = self.host.random_u64() % (ceiling + 1);
                let deadline = self.host.now_millis() + pause;
                self.host.wait_for_change(self.keys.topic(), deadline).await;
            }
        }
        Err(Problem::unavailable("too much contention on this user's log; retry").into())
    }

    /// Clean up this request's abandoned intents, now that it is done with
    /// them. One the key's pointer has left (another use of the key moved
    /// it on) is named by nothing: deleted. One it still names is dead when
    /// its target slot went to an entry without the key: the pointer is
    /// cleared (which means the same, "no use of the key committed") and
    /// the intent deleted. One whose slot is still free, or went to a use
    /// of the key (it is then the link to it), stays; compaction deletes
    /// links with their pointer. Best effort, like all cleanup: what a
    /// failure leaves is what a crash here would.
    async fn forget_abandoned(&self, abandoned: &[Abandoned]) {
        for a in abandoned {
            let _ = self.forget_one(a).await;
        }
    }

    async fn forget_one(&self, a: &Abandoned) -> Result<(), Failure> {
        let pointer = self.read_counter(a.pointer.clone()).await?;
        if pointer.value == a.id {
            let mut cache = HashMap::new();
            self.load_entries(&mut cache, &[a.id]).await?;
            let Some(Some(x)) = cache.get(&a.id).cloned() else {
                return Ok(());
            };
            let holder = self.read_counter(self.keys.slot(x.k)).await?.value;
            if holder == 0 || holder == a.id {
                return Ok(());
            }
            self.load_entries(&mut cache, &[holder]).await?;
            if !dead_for_its_key(&cache, &x, holder) || !self.swap(&pointer, 0).await? {
                // A link, or the pointer moved on meanwhile: then it is
                // another writer's to decide, and this intent unnamed.
                if self.read_counter(a.pointer.clone()).await?.value == a.id {
                    return Ok(());
                }
            }
        }
        Ok(self.kv.delete_many(&[self.keys.entry(a.id)]).await?)
    }

    async fn try_mutate(
        &self,
        m: &Mutation,
        abandoned: &mut Vec<Abandoned>,
    ) -> Result<Step<Outcome>, Failure> {
        let z = self.fresh_id();
        let doc_key = self.keys.doc(&m.collection, &m.id);
        let first = self
            .kv
            .get_many(&[self.keys.hint(), doc_key.clone(), self.keys.entry(z)])
            .await?;
        let [hint_raw, doc_raw, z_raw]: [Option<Vec<u8>>; 3] =
            first.try_into().expect("three keys");
        if z_raw.is_some() {
            return Ok(Step::Retry); // a 2^-64 id collision: draw again
        }
        let hint = counter(self.keys.hint(), hint_raw)?;
        let doc_ptr = counter(doc_key, doc_raw)?;
        let tail = self.scan_tail(hint).await?;
        let t = tail.tail;
        let retention = self.cfg.retention_entries;
        let epoch = t / retention;

        // Read the floor only now: compaction raises the hint, then the
        // floor, then deletes; a floor at or below our hint, read after
        // the slots, proves none of the slots we scanned had been deleted.
        // Idempotency pointers live in one key per epoch of `retention`
        // seqs; a key is remembered as long as its entry is above the
        // floor, so every epoch from the floor's up to ours is consulted
        // (usually two or three: speculatively read with the floor).
        let mut second = vec![self.keys.floor()];
        let speculative_from = epoch.saturating_sub(2);
        if let Some((key, _)) = &m.idempotency {
            second.extend(
                (speculative_from..=epoch)
                    .rev()
                    .map(|e| self.keys.idempotency(e, key)),
            );
        }
        let mut counters = self.read_counters(second).await?.into_iter();
        let floor = counters.next().expect("floor");
        if floor.value > tail.hint.value {
            return Ok(Step::Retry);
        }
        let mut idem_ptrs: Vec<Counter> = counters.collect();
        if let Some((key, _)) = &m.idempotency {
            let oldest = floor.value / retention;
            if oldest < speculative_from {
                let keys = (oldest..speculative_from)
                    .rev()
                    .map(|e| self.keys.idempotency(e, key))
                    .collect();
                idem_ptrs.extend(self.read_counters(keys).await?);
            }
        }

        let mut cache: HashMap<u64, Option<Entry>> = HashMap::new();
        let prefetch: Vec<u64> = std::iter::once(doc_ptr.value)
            .chain(idem_ptrs.iter().map(|c| c.value))
            .collect();
        self.load_entries(&mut cache, &prefetch).await?;

        // Idempotency: a committed entry with this key answers the request.
        // A pointer that already holds a pending intent for slot `t` needs
        // no swap: whichever entry with this key commits at `t` is "the"
        // use of the key.
        let mut idem_current: Option<Counter> = None;
        let mut idem_pending_here = false;
        // An intent of this request's that only the key's pointer names,
        // dead now: deleted once the pointer has moved on from it.
        let mut retire = None;
        if let Some((key, fingerprint)) = &m.idempotency {
            let same_key = |e: &Entry| e.ik.as_deref() == Some(key.as_str());
            for (i, ptr) in idem_ptrs.iter().enumerate() {
                match self
                    .resolve(ptr.value, &tail, &mut cache, &same_key, Missing::Nothing)
                    .await?
                {
                    Step::Retry => return Ok(Step::Retry),
                    Step::Done(Resolution::Committed(_, e)) => {
                        if e.fp.as_deref() == Some(fingerprint.as_str()) {
                            return Ok(Step::Done(Outcome::Applied {
                                entry: e,
                                replayed: true,
                            }));
                        }
                        return Ok(Step::Done(
                            Outcome::Refused(Problem::idempotency_mismatch()),
                        ));
                    }
                    Step::Done(Resolution::Open { pending: true, .. }) if i > 0 => {
                        // A pending intent always sits in the current epoch
                        // (the first pointer read).
                        return Ok(Step::Retry);
                    }
                    Step::Done(Resolution::Open { pending: true, .. }) => idem_pending_here = true,
                    Step::Done(Resolution::Open { intent, .. })
                        if i == 0 && abandoned.iter().any(|a| a.id == intent) =>
                    {
                        retire = Some(intent);
                    }
                    Step::Done(_) => {}
                }
            }
            idem_current = idem_ptrs.first().cloned();
        }

        // The document's committed state. A pointer holding a pending intent
        // for slot `t` (with the same previous state, by construction) is
        // taken over without a swap: any entry for this document committed
        // at `t` is its version `t`. That keeps concurrent writers of one
        // document from fighting over the pointer.
        let same_doc = |e: &Entry| e.is_for(&m.collection, &m.id);
        let resolution = self
            .resolve(doc_ptr.value, &tail, &mut cache, &same_doc, Missing::Retry)
            .await?;
        // An intent the document pointer names that links its key's
        // pointer to a use of the key committed at its slot: garbage too
        // once that pointer no longer names it (compaction removed it).
        let mut link = None;
        let (state, dead_intent, doc_pending_here) = match resolution {
            Step::Retry => return Ok(Step::Retry),
            Step::Done(Resolution::Nothing) => (DocState::default(), None, false),
            Step::Done(Resolution::Committed(id, e)) => {
                // A pointer naming an intent that another writer took over
                // (its entry committed at the intent's slot instead) is
                // about to move on: the intent's entry is then garbage no
                // one can find, unless it links its key's pointer to that
                // entry (the two share the key).
                let over = (id != doc_ptr.value)
                    .then(|| cache.get(&doc_ptr.value).cloned().flatten())
                    .flatten();
                let taken_over = match over {
                    Some(x) if dead_for_its_key(&cache, &x, id) => Some(doc_ptr.value),
                    Some(x) => {
                        link = Some((doc_ptr.value, x));
                        None
                    }
                    None => None,
                };
                (DocState::from_entry(id, e), taken_over, false)
            }
            Step::Done(Resolution::Open {
                intent,
                x,
                pending,
                holder,
            }) => {
                let dead = (!pending && dead_for_its_key(&cache, &x, holder)).then_some(intent);
                if !pending && dead.is_none() {
                    link = Some((intent, x.clone()));
                }
                (DocState::before(&x), dead, pending)
            }
        };

        if let Some(problem) = check_conditions(&m.conditions, &state) {
            return Ok(Step::Done(Outcome::Refused(problem)));
        }
        if !state.live && !matches!(m.action, Action::Put(_)) {
            return Ok(Step::Done(Outcome::Refused(Problem::document_not_found())));
        }

        // The rate limiter's state rides on the previous entry.
        let mut prev_tat = 0;
        if self.cfg.rate_limit_per_second > 0 && t > 1 {
            let prev_id = match tail.claimed.get(&(t - 1)) {
                Some(id) => *id,
                None => self.read_counter(self.keys.slot(t - 1)).await?.value,
            };
            self.load_entries(&mut cache, &[prev_id]).await?;
            prev_tat = cache
                .get(&prev_id)
                .cloned()
                .flatten()
                .and_then(|e| e.rl)
                .unwrap_or(0);
        }
        let now = self.host.now_millis();
        let tat = match self.rate_check(prev_tat, now) {
            Ok(tat) => tat,
            Err(retry_after) => {
                return Ok(Step::Done(Outcome::Refused(Problem::rate_limited(
                    retry_after,
                ))))
            }
        };

        let value = match &m.action {
            Action::Put(v) => Some(v.clone()),
            Action::Delete => None,
            Action::Patch(patch) => {
                let mut current = match state.entry.clone() {
                    Some(e) => e.value(),
                    None => {
                        self.load_entries(&mut cache, &[state.id]).await?;
                        match cache.get(&state.id).cloned().flatten() {
                            Some(e) => e.value(),
                            None => return Ok(Step::Retry),
                        }
                    }
                };
                merge_patch::apply(&mut current, patch);
                Some(current)
            }
        };
        // Every log entry carries the whole value, and pages, listings and
        // the host's value limit (1 MB on managed hosts) are sized for
        // values no larger than a body: without this, patch after patch
        // grows one document without bound.
        let max = self.cfg.max_body_bytes;
        if value.as_ref().is_some_and(|v| json_len(v) > max) {
            return Ok(Step::Done(Outcome::Refused(Problem::document_too_large(
                max,
            ))));
        }
        let entry = Entry {
            k: t,
            op: if value.is_some() { Op::Put } else { Op::Delete },
            c: m.collection.clone(),
            i: m.id.clone(),
            v: value,
            ts: now,
            p: state.id,
            pv: state.version,
            px: state.live,
            ik: m.idempotency.as_ref().map(|(k, _)| k.clone()),
            fp: m.idempotency.as_ref().map(|(_, f)| f.clone()),
            rl: (self.cfg.rate_limit_per_second > 0).then_some(tat),
        };
        self.kv.set(&self.keys.entry(z), &entry.to_bytes()).await?;

        // A document that has no pointer is in no index: put it there
        // before anything can make it visible (indexes may list more than
        // exists, never less).
        if doc_ptr.value == 0 && entry.op == Op::Put {
            if let Some(problem) = self.index_add(&m.collection, &m.id).await? {
                self.kv.delete_many(&[self.keys.entry(z)]).await?;
                return Ok(Step::Done(Outcome::Refused(problem)));
            }
        }

        if let Some(ptr) = idem_current.clone().filter(|_| !idem_pending_here) {
            // Resolved above to nothing or to an uncommitted intent; the swap
            // from exactly what we read catches any change since.
            let resolved = ptr.value;
            let ptr = self.ensure(ptr).await?;
            if ptr.value != resolved || !self.swap(&ptr, z).await? {
                self.kv.delete_many(&[self.keys.entry(z)]).await?;
                return Ok(Step::Retry);
            }
            if let Some(old) = retire.filter(|old| *old == resolved) {
                // Our own earlier intent, which no document pointer ever
                // named and the key's pointer has just left: garbage.
                self.kv.delete_many(&[self.keys.entry(old)]).await?;
                abandoned.retain(|a| a.id != old);
            }
        }

        if !doc_pending_here {
            let resolved = doc_ptr.value;
            let doc_ptr = self.ensure(doc_ptr).await?;
            if doc_ptr.value != resolved || !self.swap(&doc_ptr, z).await? {
                match idem_current.as_ref().filter(|_| !idem_pending_here) {
                    // The key's pointer names our entry, and another use of
                    // the key may have taken it over as the link to its
                    // commit: it stays until the pointer moves on.
                    Some(ptr) => abandoned.push(Abandoned {
                        id: z,
                        pointer: ptr.key.clone(),
                    }),
                    // Nothing points at our entry: drop it.
                    None => self.kv.delete_many(&[self.keys.entry(z)]).await?,
                }
                return Ok(Step::Retry);
            }
            if let Some(dead) = dead_intent {
                // The pointer moved off an intent that will never commit
                // (or that another writer's entry committed for): nothing
                // names it any more. Now, not after our commit: if we lose
                // the slot, no one else would know to.
                self.kv.delete_many(&[self.keys.entry(dead)]).await?;
            }
            if let Some((id, x)) = &link {
                let key = x.ik.as_deref().unwrap_or_default();
                let pointer = self.keys.idempotency(x.k / retention, key);
                if self.read_counter(pointer).await?.value != *id {
                    self.kv.delete_many(&[self.keys.entry(*id)]).await?;
                }
            }
        }

        let slot = self.ensure(tail.tail_slot.clone()).await?;
        if slot.value != 0 || !self.swap(&slot, z).await? {
            // A pointer naming our entry makes it a dead intent that a later
            // writer deletes; with both pointers taken over (naming another
            // writer's intent), nothing names it: delete it now.
            let named = !doc_pending_here || (m.idempotency.is_some() && !idem_pending_here);
            if !named {
                self.kv.delete_many(&[self.keys.entry(z)]).await?;
            } else if doc_pending_here {
                // Only the key's pointer names it: ours to clean up, as
                // when the document's pointer refused us.
                if let Some(ptr) = &idem_current {
                    abandoned.push(Abandoned {
                        id: z,
                        pointer: ptr.key.clone(),
                    });
                }
            }
            return Ok(Step::Retry);
        }

        // Committed at seq t, and that is what the client must hear: a 503
        // now would make a client without an idempotency key apply the
        // mutation again. Everything below is housekeeping that a later
        // writer also does or tolerates missing, so a failure of it is
        // dropped (as if the host had crashed right after the commit, which
        // the simulation checks).
        // Pre-create the next slot so that "nothing after t" is one read of
        // an existing zero; without it, readers treat an absent next slot
        // after a claimed one as the head.
        let _ = self.kv.increment(&self.keys.slot(t + 1), 0).await;
        self.host.log_changed(self.keys.topic(), t);
        self.after_commit(t, &tail.hint).await;
        Ok(Step::Done(Outcome::Applied {
            entry,
            replayed: false,
        }))
    }

    /// Housekeeping after the commit of `t`, each step on its own and each
    /// resumable by any later writer: move the hint up (every
    /// [`HINT_EVERY`] seqs; it is only where tail scans start) and compact
    /// (every [`COMPACT_STEP`] seqs; it resumes from the persisted floor and
    /// cleaned mark). Failures are dropped: see the caller.
    ///
    /// The committer of a multiple of [`HINT_EVERY`] may crash, or that
    /// seq may go to a writer that never commits; then whoever commits
    /// with the hint two steps behind moves it, so a stale hint heals on
    /// the next commit instead of lengthening every tail scan until
    /// compaction comes by.
    async fn after_commit(&self, t: u64, hint: &Counter) {
        let due = t.is_multiple_of(HINT_EVERY) || t >= hint.value + 2 * HINT_EVERY;
        if due && hint.value < t {
            if let Ok(hint) = self.ensure(hint.clone()).await {
                if hint.value < t {
                    let _ = self.swap(&hint, t).await;
                }
            }
        }
        if t.is_multiple_of(COMPACT_STEP) {
            let _ = self.compact(t).await;
        }
    }

    /// GCRA over the chained theoretical arrival time (µs): the new TAT if
    /// one more mutation fits now, else the seconds to wait.
    fn rate_check(&self, prev_tat: u64, now_millis: u64) -> Result<u64, u64> {
        let rate = self.cfg.rate_limit_per_second;
        if rate == 0 {
            return Ok(0);
        }
        let interval = 1_000_000 / rate;
        let now = now_millis.saturating_mul(1000);
        let tat = prev_tat.max(now);
        let tolerance = interval.saturating_mul(self.cfg.rate_limit_burst().saturating_sub(1));
        if tat.saturating_sub(now) > tolerance {
            let wait_us = tat - now - tolerance;
            return Err(wait_us.div_ceil(1_000_000).max(1));
        }
        Ok(tat.saturating_add(interval))
    }

    // ---------------------------------------------------------------
    // Reads
    // ---------------------------------------------------------------

    /// The committed, live state of documents (`None`: absent or deleted).
    pub async fn documents(
        &self,
        docs: &[(String, String)],
    ) -> Result<Vec<Option<Entry>>, Failure> {
        for _ in 0..MAX_ATTEMPTS {
            if let Step::Done(found) = self.try_documents(docs).await? {
                return Ok(found);
            }
        }
        Err(Problem::unavailable("documents kept changing under the read; retry").into())
    }

    async fn try_documents(
        &self,
        docs: &[(String, String)],
    ) -> Result<Step<Vec<Option<Entry>>>, Failure> {
        let keys: Vec<String> = docs.iter().map(|(c, i)| self.keys.doc(c, i)).collect();
        let ptrs: Vec<u64> = self
            .read_counters(keys)
            .await?
            .into_iter()
            .map(|c| c.value)
            .collect();
        let mut cache = HashMap::new();
        self.load_entries(&mut cache, &ptrs).await?;
        // The target slot of every intent.
        let mut targets = Vec::new();
        for ptr in &ptrs {
            if *ptr != 0 {
                match cache.get(ptr) {
                    Some(Some(x)) => targets.push(x.k),
                    _ => return Ok(Step::Retry),
                }
            }
        }
        targets.sort_unstable();
        targets.dedup();
        let slot_keys: Vec<String> = targets.iter().map(|k| self.keys.slot(*k)).collect();
        let slot_values: HashMap<u64, u64> = targets
            .iter()
            .copied()
            .zip(
                self.read_counters(slot_keys)
                    .await?
                    .into_iter()
                    .map(|c| c.value),
            )
            .collect();
        // Entries that took a slot, and previous states of open intents.
        let mut more = Vec::new();
        for ptr in &ptrs {
            if let Some(Some(x)) = cache.get(ptr) {
                let slot = slot_values[&x.k];
                if slot != *ptr && slot != 0 {
                    more.push(slot);
                }
                if slot != *ptr && x.px {
                    more.push(x.p);
                }
            }
        }
        self.load_entries(&mut cache, &more).await?;
        let mut out = Vec::with_capacity(docs.len());
        for ((c, i), ptr) in docs.iter().zip(&ptrs) {
            if *ptr == 0 {
                out.push(None);
                continue;
            }
            let x = cache[ptr].clone().expect("checked above");
            let slot = slot_values[&x.k];
            let current = if slot == *ptr {
                Some(x)
            } else {
                let taken_over = match cache.get(&slot) {
                    Some(Some(y)) if slot != 0 && y.is_for(c, i) => Some(y.clone()),
                    _ => None,
                };
                match taken_over {
                    Some(y) => Some(y),
                    None if x.px => match cache.get(&x.p) {
                        Some(Some(p)) => Some(p.clone()),
                        _ => return Ok(Step::Retry),
                    },
                    None => None,
                }
            };
            out.push(current.filter(Entry::is_live));
        }
        Ok(Step::Done(out))
    }

    /// Changes after `since`, at most `limit`.
    pub async fn changes(
        &self,
        since: u64,
        limit: u64,
    ) -> Result<Result<ChangesPage, Problem>, Failure> {
        for _ in 0..MAX_ATTEMPTS {
            if let Step::Done(page) = self.try_changes(since, limit).await? {
                return Ok(page);
            }
        }
        Err(Problem::unavailable("the log kept changing under the read; retry").into())
    }

    async fn try_changes(
        &self,
        since: u64,
        limit: u64,
    ) -> Result<Step<Result<ChangesPage, Problem>>, Failure> {
        if since >= MAX_SEQ {
            let head = self.head().await?;
            return Ok(Step::Done(Err(Problem::cursor_ahead(since, head))));
        }
        let first = self.read_counter(self.keys.slot(since + 1)).await?;
        if first.value == 0 {
            if first.raw.is_some() {
                return Ok(Step::Done(Ok(ChangesPage::Idle)));
            }
            // Absent: `since` is beyond the head, below the floor, or the
            // head whose writer has not pre-created the next slot yet.
            let mut keys = vec![self.keys.floor()];
            if since > 0 {
                keys.push(self.keys.slot(since));
            }
            let c = self.read_counters(keys).await?;
            let floor = c[0].value;
            if since < floor {
                return Ok(Step::Done(Err(Problem::cursor_expired(since, floor))));
            }
            if since == 0 || c[1].value != 0 {
                return Ok(Step::Done(Ok(ChangesPage::Idle)));
            }
            let head = self.head().await?;
            if since > head {
                return Ok(Step::Done(Err(Problem::cursor_ahead(since, head))));
            }
            if since == head {
                return Ok(Step::Done(Ok(ChangesPage::Idle)));
            }
            return Ok(Step::Retry);
        }
        // Read the following slots in growing windows, stopping at the
        // first free one, so a page of a few changes costs a few reads.
        let mut run = vec![(since + 1, first.value)];
        let mut head = None;
        let mut next = since + 2;
        let mut window = WINDOW;
        let mut floor = None;
        let mut hint = 0;
        while head.is_none() && run.len() < limit as usize + 1 {
            let end = (next + window).min(since + limit + 2);
            let mut keys: Vec<String> = (next..end).map(|s| self.keys.slot(s)).collect();
            if floor.is_none() {
                keys.push(self.keys.floor());
                keys.push(self.keys.hint());
            }
            let mut counters = self.read_counters(keys).await?;
            if floor.is_none() {
                hint = counters.pop().expect("hint").value;
                floor = Some(counters.pop().expect("floor").value);
            }
            for (i, c) in counters.into_iter().enumerate() {
                let seq = next + i as u64;
                if c.value == 0 {
                    head = Some(seq - 1);
                    break;
                }
                run.push((seq, c.value));
            }
            next = end;
            window *= 4;
        }
        let floor = floor.unwrap_or(0);
        if since < floor {
            return Ok(Step::Done(Err(Problem::cursor_expired(since, floor))));
        }
        // One slot past the page was read to learn whether more follow.
        run.truncate(limit as usize);
        let head = match head {
            Some(head) => head,
            // A full page: the slot after it is claimed, find the real head.
            None => self.head_after(hint.max(since + limit + 1)).await?,
        };
        let mut changes = Vec::with_capacity(run.len());
        let mut budget = PageBudget::default();
        'page: while changes.len() < run.len() {
            let load = &run[changes.len()..][..budget.next_load(run.len() - changes.len())];
            let mut cache = HashMap::new();
            let ids: Vec<u64> = load.iter().map(|(_, id)| *id).collect();
            self.load_entries(&mut cache, &ids).await?;
            for (seq, id) in load {
                let Some(Some(entry)) = cache.remove(id) else {
                    // Compaction removed it after we read the floor.
                    let floor = self.read_counter(self.keys.floor()).await?.value;
                    if since < floor {
                        return Ok(Step::Done(Err(Problem::cursor_expired(since, floor))));
                    }
                    return Ok(Step::Retry);
                };
                if !budget.take(&entry) {
                    break 'page;
                }
                changes.push((*seq, entry));
            }
        }
        Ok(Step::Done(Ok(ChangesPage::Entries { changes, head })))
    }

    /// A page of live documents ordered by (collection, id).
    pub async fn list(
        &self,
        collection: Option<&str>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<ListPage, Failure> {
        // The head now: the documents read below reflect at least
        // everything up to it (and perhaps more, which replaying the
        // changes after it corrects).
        let cursor = self.head().await?;
        let collections = match collection {
            Some(c) => vec![c.to_owned()],
            None => self.read_blob_root(self.keys.collections()).await?.1,
        };
        let mut documents: Vec<Entry> = Vec::new();
        let mut next_after = None;
        let mut budget = PageBudget::default();
        'outer: for c in collections {
            if let Some((ac, _)) = &after {
                if c.as_str() < ac.as_str() {
                    continue;
                }
            }
            let (_, ids) = self.read_blob_root(self.keys.index(&c)).await?;
            let ids: Vec<String> = ids
                .into_iter()
                .filter(|id| match &after {
                    Some((ac, ai)) if *ac == c => id.as_str() > ai.as_str(),
                    _ => true,
                })
                .collect();
            // Indexes may name documents that no longer exist, so load a
            // little past what the page still needs.
            let mut ids = ids.as_slice();
            while !ids.is_empty() {
                let wanted = budget.next_load(limit + 1 - documents.len()).max(16);
                let (chunk, rest) = ids.split_at(wanted.min(ids.len()));
                ids = rest;
                let docs: Vec<(String, String)> =
                    chunk.iter().map(|i| (c.clone(), i.clone())).collect();
                for found in self.documents(&docs).await?.into_iter().flatten() {
                    if documents.len() == limit || !budget.take(&found) {
                        let last = documents.last().expect("a page takes its first document");
                        next_after = Some((last.c.clone(), last.i.clone()));
                        break 'outer;
                    }
                    documents.push(found);
                }
            }
        }
        Ok(ListPage {
            cursor,
            documents,
            next_after,
        })
    }

    // ---------------------------------------------------------------
    // Index blobs
    // ---------------------------------------------------------------

    /// Read a blob root and its sorted names.
    async fn read_blob_root(&self, root_key: String) -> Result<(Counter, Vec<String>), Failure> {
        for _ in 0..MAX_ATTEMPTS {
            let root = self.read_counter(root_key.clone()).await?;
            if root.value == 0 {
                return Ok((root, Vec::new()));
            }
            let key = self.keys.blob(root.value);
            match self.kv.get(&key).await? {
                Some(bytes) => {
                    let names: Vec<String> =
                        serde_json::from_slice(&bytes).map_err(|_| corrupt(&key))?;
                    return Ok((root, names));
                }
                // Replaced and deleted since we read the root.
                None => continue,
            }
        }
        Err(Problem::unavailable("an index kept changing under the read; retry").into())
    }

    /// Replace a blob root by a new blob with `names`; false if the root
    /// moved since `root` was read.
    async fn replace_blob(&self, root: Counter, names: &[String]) -> Result<bool, Failure> {
        let new_id = self.fresh_id();
        let bytes = serde_json::to_vec(names).expect("names serialize");
        self.kv.set(&self.keys.blob(new_id), &bytes).await?;
        // `ensure` may find a root someone created meanwhile: then the names
        // we computed are stale.
        let expected = root.value;
        let root = self.ensure(root).await?;
        if root.value != expected || !self.swap(&root, new_id).await? {
            self.kv.delete_many(&[self.keys.blob(new_id)]).await?;
            return Ok(false);
        }
        if root.value != 0 {
            self.kv.delete_many(&[self.keys.blob(root.value)]).await?;
        }
        Ok(true)
    }

    /// Add a document to its collection's index (and the collection to the
    /// user's list of collections). Always installs a new blob, even when
    /// the id is already there: that serializes it against compaction's
    /// removal of the same id (see `index_remove`).
    async fn index_add(&self, collection: &str, id: &str) -> Result<Option<Problem>, Failure> {
        for _ in 0..MAX_ATTEMPTS {
            let (root, mut names) = self.read_blob_root(self.keys.index(collection)).await?;
            if names.is_empty() {
                if let Some(problem) = self.collection_add(collection).await? {
                    return Ok(Some(problem));
                }
            }
            if let Err(at) = names.binary_search_by(|n| n.as_str().cmp(id)) {
                names.insert(at, id.to_owned());
            }
            // As stored: `["a","b"]`.
            let size: usize = names.iter().map(|n| n.len() + 3).sum::<usize>() + 1;
            let max = self.index_max_bytes();
            if size > max {
                return Ok(Some(Problem::collection_full(collection, max)));
            }
            if self.replace_blob(root, &names).await? {
                return Ok(None);
            }
        }
        Err(Problem::unavailable("too much contention on a collection index; retry").into())
    }

    /// Largest collection index blob: [`INDEX_MAX_BYTES`], or less where the
    /// store takes smaller values (`max_value_bytes`).
    fn index_max_bytes(&self) -> usize {
        match self.cfg.max_value_bytes {
            0 => INDEX_MAX_BYTES,
            n => n.min(INDEX_MAX_BYTES),
        }
    }

    /// Add a collection name to the user's list (names are never removed:
    /// an empty collection costs one empty blob), unless the user has
    /// [`MAX_COLLECTIONS`] already: then the problem to answer.
    async fn collection_add(&self, collection: &str) -> Result<Option<Problem>, Failure> {
        for _ in 0..MAX_ATTEMPTS {
            let (root, mut names) = self.read_blob_root(self.keys.collections()).await?;
            match names.binary_search_by(|n| n.as_str().cmp(collection)) {
                Ok(_) => return Ok(None),
                Err(_) if names.len() >= MAX_COLLECTIONS => {
                    return Ok(Some(Problem::too_many_collections(MAX_COLLECTIONS)))
                }
                Err(at) => names.insert(at, collection.to_owned()),
            }
            if self.replace_blob(root, &names).await? {
                return Ok(None);
            }
        }
        Err(Problem::unavailable("too much contention on the collection list; retry").into())
    }

    /// Remove a forgotten document from its collection's index. Safe
    /// against a concurrent re-creation: the creator installs a new blob
    /// after setting the document pointer, and we re-check the pointer
    /// after reading the blob we replace.
    async fn index_remove(&self, collection: &str, id: &str) -> Result<(), Failure> {
        for _ in 0..MAX_ATTEMPTS {
            let (root, mut names) = self.read_blob_root(self.keys.index(collection)).await?;
            let Ok(at) = names.binary_search_by(|n| n.as_str().cmp(id)) else {
                return Ok(());
            };
            if self
                .read_counter(self.keys.doc(collection, id))
                .await?
                .value
                != 0
            {
                return Ok(()); // re-created meanwhile: it stays
            }
            names.remove(at);
            if self.replace_blob(root, &names).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------
    // Compaction
    // ---------------------------------------------------------------

    /// Move the floor to `retention_entries` behind `head` and remove what
    /// is no longer needed below it. Called by the writer that committed
    /// `head` (every COMPACT_STEP seqs); bounded work per call.
    async fn compact(&self, head: u64) -> Result<(), Failure> {
        let retention = self.cfg.retention_entries;
        let c = self
            .read_counters(vec![self.keys.floor(), self.keys.cleaned()])
            .await?;
        let (floor, cleaned) = (c[0].clone(), c[1].clone());
        let target = head.saturating_sub(retention);
        if target >= floor.value + COMPACT_STEP {
            // Order matters: hint first (writers scan from it and must
            // never scan below the floor), then the floor (readers check
            // it), then deletions.
            if !self.raise(self.keys.hint(), head).await? {
                return Ok(());
            }
            let floor = self.ensure(floor).await?;
            if floor.value < target {
                self.swap(&floor, target).await?;
            }
        }
        let floor = self.read_counter(self.keys.floor()).await?.value;
        if cleaned.value >= floor {
            return Ok(());
        }
        let end = floor.min(cleaned.value + MAX_CLEAN_PER_REQUEST);
        self.clean(cleaned.value, end).await?;
        let cleaned = self.ensure(cleaned).await?;
        if cleaned.value < end {
            self.swap(&cleaned, end).await?;
        }
        Ok(())
    }

    /// Whether the intent `link` (named by its key's pointer, never
    /// committed: another entry with its key took its slot) can no longer
    /// be named by its document's pointer.
    ///
    /// Its writer's swap of that pointer expects the value it read, `E`.
    /// A pointer moves only to fresh ids, and back to 0 only when
    /// compaction removes a deleted document. If the writer found the
    /// document (`p != 0`), `E` is not 0, and the pointer has left `E` for
    /// good since: whoever committed at the link's slot moved it on, or
    /// found it naming an intent pending for that slot, which the link's
    /// writer, had it read that too, takes over without a swap. If the
    /// writer was creating the document, the pointer must name an entry
    /// written after the link; otherwise (it names the link, nothing, or
    /// something older) a stalled writer might still name it, and it is
    /// let be.
    async fn link_is_settled(&self, link: u64) -> Result<bool, Failure> {
        let mut cache = HashMap::new();
        self.load_entries(&mut cache, &[link]).await?;
        let Some(Some(x)) = cache.get(&link).cloned() else {
            return Ok(false);
        };
        if x.p != 0 {
            return Ok(true);
        }
        let doc = self.read_counter(self.keys.doc(&x.c, &x.i)).await?.value;
        if doc == 0 || doc == link {
            return Ok(false);
        }
        self.load_entries(&mut cache, &[doc]).await?;
        Ok(cache
            .get(&doc)
            .cloned()
            .flatten()
            .is_some_and(|now| now.k > x.k))
    }

    /// Remove garbage for seqs in (from, to]: each entry's predecessor for
    /// the same document (superseded now that the entry is below the
    /// floor), its idempotency record, and deleted documents altogether.
    async fn clean(&self, from: u64, to: u64) -> Result<(), Failure> {
        let keys: Vec<String> = (from + 1..=to).map(|s| self.keys.slot(s)).collect();
        let slots = self.read_counters(keys).await?;
        let mut cache = HashMap::new();
        let ids: Vec<u64> = slots.iter().map(|c| c.value).collect();
        self.load_entries(&mut cache, &ids).await?;
        // The key pointers of the window's idempotent entries, in one read.
        let pointer_of = |i: usize, slot: &Counter| {
            let key = cache.get(&slot.value)?.as_ref()?.ik.as_deref()?;
            let seq = from + 1 + i as u64;
            Some(self.keys.idempotency(seq / self.cfg.retention_entries, key))
        };
        let pointers: Vec<String> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| pointer_of(i, slot))
            .collect();
        let links: HashMap<String, u64> = if pointers.is_empty() {
            HashMap::new()
        } else {
            let values = self.read_counters(pointers.clone()).await?;
            pointers
                .into_iter()
                .zip(values.iter().map(|c| c.value))
                .collect()
        };
        for (i, slot) in slots.iter().enumerate() {
            let seq = from + 1 + i as u64;
            let Some(Some(entry)) = cache.get(&slot.value) else {
                continue;
            };
            let mut garbage = Vec::new();
            if entry.p != 0 {
                garbage.push(self.keys.entry(entry.p));
                garbage.push(self.keys.slot(entry.pv));
            }
            if let Some(pointer) = pointer_of(i, slot) {
                let link = links.get(&pointer).copied().unwrap_or(0);
                if link != 0 && link != slot.value && self.link_is_settled(link).await? {
                    garbage.push(self.keys.entry(link));
                }
                garbage.push(pointer);
            }
            if entry.op == Op::Delete {
                let ptr = self.read_counter(self.keys.doc(&entry.c, &entry.i)).await?;
                if ptr.value == slot.value && self.swap(&ptr, 0).await? {
                    self.index_remove(&entry.c, &entry.i).await?;
                    garbage.push(self.keys.entry(slot.value));
                    garbage.push(self.keys.slot(seq));
                }
            }
            if !garbage.is_empty() {
                self.kv.delete_many(&garbage).await?;
            }
        }
        Ok(())
    }
}

/// Evaluate `If-Match` then `If-None-Match` (RFC 9110 §13.2.2) against the
/// committed state.
fn check_conditions(conditions: &Conditions, state: &DocState) -> Option<Problem> {
    let current = state.live.then_some(state.version);
    let matches = |cond: &Cond| match cond {
        Cond::Any => state.live,
        Cond::Versions(vs) => state.live && vs.contains(&state.version),
    };
    if let Some(cond) = &conditions.if_match {
        if !matches(cond) {
            return Some(Problem::precondition_failed(current));
        }
    }
    if let Some(cond) = &conditions.if_none_match {
        if matches(cond) {
            return Some(Problem::precondition_failed(current));
        }
    }
    None
}

/// Bytes `value` takes as compact JSON (as stored), counted without
/// building the string.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that cannot fail cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
