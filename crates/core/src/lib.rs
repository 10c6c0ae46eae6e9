//! # edgesync-core
//!
//! The whole edgesync v1 protocol (see `docs/protocol-decisions.md` and the
//! project's `openapi.yaml`) as an I/O-free library. A host hands
//! [`Service::handle`] an `http::Request` and gets an `http::Response`; in
//! between the core talks only to a [`Kv`] store and a [`Host`] (clock,
//! entropy, change notification). Spin, tokio and SQLite live in the hosts:
//! `edgesync-spin-app` (Spin components), `edgesync-server` (native, on
//! `edgesync-sqlite` or `edgesync-redis`), and the simulator
//! (`edgesync-sim`). The crate builds for `wasm32-wasip2` as well as natively.
//!
//! ```ignore
//! let service = Service::new(config, kv, host);
//! let response = service.handle(request).await;
//! ```
//!
//! Hosts that hold many long-polls can use [`Service::start`] and
//! [`Service::resume`] instead, which park a long-poll as a small
//! [`Parked`] value rather than a live future.
//!
//! # The store it needs
//!
//! The [`kv`] module defines the trait and its exact semantics. The design is
//! shaped by what the *weakest* supported backend offers (DESIGN.md,
//! "Platform facts", checked against Spin's `key-value-spin` and
//! `key-value-redis` sources):
//!
//! * no multi-key transactions, and batches that are not atomic;
//! * a compare-and-swap that is only trustworthy on a key that already
//!   exists: on Spin's default SQLite store a swap on a key that was absent
//!   is an unconditional upsert, so there is no insert-if-absent;
//! * `increment` as the only atomic create, and on the SQLite store it
//!   panics the host if the key holds anything but an 8-byte integer.
//!
//! So the core follows one rule: **mutable state lives only in 8-byte
//! counters** (created by `increment(key, 0)`, which can never undo anyone's
//! progress, and advanced by compare-and-swap from the exact bytes read),
//! and **everything else is written once under a key nobody else uses**
//! (log entries under random 64-bit ids, index blobs likewise). No blind
//! write ever lands on a key whose value matters to someone else.
//!
//! # Key layout
//!
//! All keys of a user live under `u/<escaped user id>/`; the id is
//! percent-escaped so it contains no `/` (a `sub` of `a/log/1` is just a
//! name), collections and document ids are validated to
//! `[A-Za-z0-9._~-]`, idempotency keys are escaped. See `keys.rs`:
//!
//! | key | kind | holds |
//! |---|---|---|
//! | `s/<seq>` | counter | **slot**: 0 = free, else the id of the entry committed at `seq` |
//! | `e/<id>` | written once | **entry**: one mutation, written for one target seq, with the document's whole value after it |
//! | `h` | counter | hint: a lower bound of the newest seq (advanced every 8 commits) |
//! | `f`, `g` | counters | compaction floor (seqs ≤ f may be gone) and how far garbage was removed |
//! | `d/<collection>/<id>` | counter | **document pointer**: id of the document's latest entry (an *intent*) |
//! | `k/<epoch>/<key>` | counter | **idempotency pointer**: id of the entry that used the key |
//! | `x/<collection>`, `xs` | counters | ids of the blobs listing a collection's documents / the collections |
//! | `b/<id>` | written once | blob: a sorted JSON array of names |
//!
//! # Committing a mutation
//!
//! A mutation (`PUT`, `PATCH`, `DELETE`, or a batch item) is an optimistic
//! attempt, retried from the start when it loses a race (with jittered
//! back-off after two losses, and a per-user writer turn on hosts that
//! offer one, [`Host::writer_turn`]):
//!
//! 1. Read the hint and the document pointer. Scan slots from the hint to
//!    the first free one, `t` — the seq this attempt will try to take.
//! 2. Read the floor *after* the scan (compaction raises the hint, then the
//!    floor, then deletes, so a floor at or below our hint proves no slot we
//!    scanned had been deleted) and the idempotency pointers.
//! 3. Resolve the pointers. A pointer names an *intent*: an entry `X`
//!    written for seq `X.k`. It is **committed** if slot `X.k` holds `X` —
//!    or holds another entry for the same document (same key, for an
//!    idempotency pointer): any such entry committed at `X.k` *is* that
//!    version; **pending** if `X.k` is the free tail `t`; otherwise **dead**,
//!    and the document's state is the one `X` recorded as its predecessor.
//!    A committed entry with our idempotency key answers the request (a
//!    replay, or 422 if the request differs).
//! 4. Check preconditions (`If-Match`, `If-None-Match`, `if_version`)
//!    against that state, the rate limit (a GCRA whose state rides on the
//!    previous entry, so it costs no writes), and compute the new value
//!    (RFC 7396 for `PATCH`).
//! 5. Write the entry under a fresh random id `z` (never read before it is
//!    referenced, never written again).
//! 6. If the document has no pointer yet, add it to its collection's index
//!    (copy-on-write blob + swap of the root; indexes may list more
//!    documents than exist, never fewer).
//! 7. Swap the idempotency pointer, then the document pointer, to `z` —
//!    unless it already holds a pending intent for `t`, which we take over
//!    without a swap (any of those entries committing at `t` is valid, since
//!    they share the same predecessor). Having moved the document pointer
//!    off an intent that is dead or was committed for by another entry,
//!    delete that intent's entry (nothing names it any more).
//! 8. **Commit**: swap slot `t` from 0 to `z`. Exactly one entry can ever
//!    take a slot; losing this swap means someone else committed at `t`:
//!    start over (deleting `z` first if no pointer names it).
//! 9. Housekeeping anyone could do, whose failure no longer matters to
//!    this request (it is acknowledged): pre-create slot `t + 1` (so
//!    "anything new after t?" is one read of an existing zero), notify
//!    waiters ([`Host::log_changed`]), advance the hint every 8 seqs (or
//!    whenever it trails by 16 or more: the writer due to move it may have
//!    crashed), compact every 16.
//!
//! # Reading
//!
//! * **"Anything new after N?"** reads slot `N + 1`: present and zero means
//!   no (one read of an 8-byte key — an idle smart-poll, a 304 on
//!   `/v1/changes` or `/v1/head`, and every re-check of a held long-poll).
//! * **A page of changes** reads the slots after `N` in growing windows up to
//!   the first free one, the floor, and the entries: the first 32 in one
//!   batch, then as many as the page's 1 MiB value budget holds at their
//!   average size (so a page of large values never sits in memory whole;
//!   a page of small ones costs one more batch past 32).
//! * **A document** reads its pointer, the entry, the entry's slot, and,
//!   only when the intent is not committed, its predecessor.
//! * **The listing** reads the head, the index blobs, and resolves documents
//!   in batches sized the same way (a page also stops at 1 MiB of values);
//!   its `cursor` is the head read before the page.
//!
//! # Compaction
//!
//! Every 16th commit, the writer moves the floor to `retention_entries`
//! behind the head (hint first, then floor) and cleans at most 64 seqs below
//! it: for each entry there, the entry and slot of the *previous* state of
//! its document (superseded now), its idempotency pointer, and documents
//! whose delete is still their current state (pointer swapped to 0, index
//! entry removed, entry and slot deleted). A document's current entry and
//! its slot are never deleted, so resolving a pointer always works. Cursors
//! below the floor get 410 `cursor-expired`.
//!
//! # Why the invariants hold
//!
//! The deterministic simulation (`edgesync-sim`) checks each of these on
//! thousands of seeds with interleaved requests, crashes between any two KV
//! operations, and the Spin backends' quirks; `cargo test` runs 1,200.
//!
//! 1. **Acknowledged ⇒ logged exactly once.** A mutation is acknowledged
//!    only after its slot swap succeeded; a slot changes from 0 exactly once
//!    and never again (until compaction, below the floor). An idempotent
//!    retry finds the committed entry through its key's pointer before it
//!    can take a second slot (the pointer is swapped before the slot, and a
//!    pointer is honoured for as long as its entry is above the floor).
//! 2. **Readers see strictly increasing seqs; a returned entry never
//!    changes.** Slots are claimed in order (a writer claims only the first
//!    free slot it saw after all before it were claimed), entries are
//!    immutable, and readers return only claimed slots, contiguously from
//!    their cursor.
//! 3. **Replay = documents.** A document's state *is* its latest committed
//!    entry, found by resolving its pointer — there is no separate copy that
//!    could lag or run ahead of the log.
//! 4. **A crashed writer never blocks readers, and its half-done work is
//!    completed or discarded, never half-visible.** Readers never wait on
//!    writers. Before its slot swap, a crashed writer has left only an entry
//!    nobody reads as committed and pointers to an intent that resolves to
//!    the previous state (and is taken over or superseded by the next
//!    writer); after it, the mutation is complete and visible everywhere at
//!    once, because the log, the document and the feed all derive from that
//!    one slot.
//! 5. **One winner per conditional version.** Writers that checked the
//!    same version race for the same tail slot (directly, or through the
//!    document pointer); one swap wins, the others start over and see the
//!    new version: 412.
//! 6. **No cross-user visibility.** Every key is built from the escaped user
//!    id of the verified token; escaping is injective and leaves no `/`.
//!
//! # What each route costs
//!
//! Measured by `crates/sim/tests/kv_costs.rs` (which also holds the idle poll
//! to one read of one key). "Calls" are KV round trips; a batch read counts
//! once, with all its keys.
//!
//! | request | read calls | keys read | write calls |
//! |---|---|---|---|
//! | `GET /v1/changes` at the head (idle poll, 304) | 1 | 1 | 0 |
//! | the same, for a user who has never written (no log yet) | 2 | 2 | 0 |
//! | `GET /v1/head` with `If-None-Match` at the head (304) | 1 | 1 | 0 |
//! | held long-poll, per wake-up | 1 | 1 | 0 |
//! | `GET /v1/changes`, a few new changes | 3 | ~13 | 0 |
//! | `GET /v1/head` | 2 | ~10 | 0 |
//! | `GET /v1/docs/{c}/{id}` | 3 | 3 | 0 |
//! | `GET /v1/docs` (listing page) | ~9 | ~20 | 0 |
//! | `PUT`/`PATCH` of an existing document | 4 | ~14 | 4 |
//! | `PUT` creating a document | 7 | ~17 | 8 |
//! | `DELETE` | 5 | ~15 | 4 |
//! | `PUT` with `Idempotency-Key` | 5 | ~16 | 6 |
//! | replay of an `Idempotency-Key` | 4 | ~15 | 0 |
//! | `POST /v1/mutations`, per item | as the single-document route with an `Idempotency-Key` (every item has one) | | |
//!
//! The four writes of an update are: the entry, the document pointer, the
//! slot (the commit), and pre-creating the next slot. Creates add the
//! collection index (blob, root swap, old blob removal) and the pointer's
//! creation. About every 8th commit adds a hint swap, every 16th a compaction
//! step (a few reads, then deletes of what it cleans). On the Spin
//! components each swap also reads the key back (see `edgesync-kv-wasi`).
//!
//! # Limits
//!
//! * Seqs are exact up to 2^53 (cursors beyond are simply ahead).
//! * A page of changes or documents holds at most 1 MiB of values (and at
//!   least one entry), whatever its `limit`.
//! * A collection's index blob is capped at 512 KiB (tens of thousands of
//!   documents with short ids), or below `max_value_bytes` where the store
//!   takes less; beyond it, creates get 409
//!   `collection-full`; a user has at most 1,000 collections (409
//!   `too-many-collections`).
//! * Idempotency keys are remembered while their entry is above the floor:
//!   at least `retention_entries` later changes.
//! * Storage is bounded by retention, the current documents, and a little
//!   garbage no one can find to delete: entries of writers that crashed
//!   before a pointer named them (or before deleting them), and tombstones
//!   of deletes committed by taking over another writer's intent. A writer
//!   deletes its own entry when it loses a race before anything names it,
//!   and a dead intent (never to commit, or committed for by another
//!   writer's entry) as soon as it has moved the document pointer off it.
//!   An intent with an idempotency key has a second pointer, the key's:
//!   it is deleted by the document path only when dead for the key too
//!   (its slot went to an entry without the key: an idempotency pointer
//!   naming a deleted entry means "no use of the key", as an absent one
//!   does); one its writer gave up on before the document pointer named
//!   it is deleted by that writer when done (clearing the key's pointer if
//!   it still names it and the intent is dead); one that links the key's
//!   pointer to a use of the key committed by another writer at its slot
//!   is deleted by whichever comes last: compaction removing the key's
//!   pointer (if no stalled writer can still name it from the document's
//!   pointer: its writer found the document, so expected a pointer that
//!   has moved on for good, or the pointer names a later entry), or
//!   the writer moving the document's pointer off it (if the key's pointer
//!   is gone). Left are intents of a key that several requests used at
//!   once (an intent still pending when its request ended, that dies later
//!   and whose key is then used again: that use cannot tell whether the
//!   intent's writer is still about to name it from the document pointer).
//!   The simulation checks that a run without crashes leaves no entry that
//!   nothing names, but for keys more than one request sent.

pub mod auth;
pub mod config;
mod engine;
mod entry;
pub mod host;
mod http_util;
mod keys;
pub mod kv;
mod merge_patch;
pub mod names;
mod problem;
mod routes;
mod service;
pub mod strict_json;
mod time;

pub use config::{Config, ConfigError, CorsOrigins};
pub use host::Host;
pub use kv::{decode_counter, encode_counter, Kv, KvError, KvErrorKind, MaybeSend, MaybeSync};
pub use service::{Handled, Parked, RequestInfo, Service};
pub use time::rfc3339_millis;

/// Every route of the v1 API with the methods it accepts (besides `HEAD`,
/// accepted wherever `GET` is, and `OPTIONS`, accepted everywhere). The
/// OpenAPI file is checked against this list.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/health", &["GET"]),
    ("/v1/head", &["GET"]),
    ("/v1/changes", &["GET"]),
    ("/v1/docs", &["GET"]),
    (
        "/v1/docs/{collection}/{id}",
        &["GET", "PUT", "PATCH", "DELETE"],
    ),
    ("/v1/mutations", &["POST"]),
];
