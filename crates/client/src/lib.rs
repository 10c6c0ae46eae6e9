//! # edgesync-client
//!
//! A local replica of one user's edgesync documents, kept in sync over plain
//! HTTP — long-polling when the app is in the foreground, battery-friendly
//! smart polling when it is not — with a durable offline mutation queue.
//! Apps read and write the replica locally; the engine moves changes both
//! ways, one request at a time.
//!
//! ```no_run
//! # async fn demo() -> Result<(), edgesync_client::Error> {
//! use edgesync_client::{Client, Mode};
//! let client = Client::builder("https://sync.example.com", "<jwt>")
//!     .sqlite("/var/lib/myapp/replica.db")
//!     .mode(Mode::Live)
//!     .build()?;
//! let mut todos = client.subscribe("todos"); // refresh only the todo views
//! client.start();
//! client.put("todos", "a1", serde_json::json!({"title": "milk"}))?; // queued durably
//! while let Ok(change) = todos.recv().await {
//!     println!("{} {}/{} v{}", change.op.as_str(), change.collection, change.id, change.version);
//! }
//! # Ok(()) }
//! ```
//!
//! ## State machine
//!
//! ```text
//!   (no cursor) ──► BOOTSTRAP ──► FOLLOW ◄──────────────┐
//!                   GET /v1/docs   GET /v1/changes       │ 200: apply, advance cursor
//!                   all pages,     ?since=<cursor>       │ 304: nothing new
//!                   keep page 1's  If-None-Match: "<cursor>"
//!                   `cursor`          │
//!                        ▲            │ 409 cursor-ahead / 410 cursor-expired
//!                        └── RESYNC ◄─┘ (flag stored, so a restart resumes it)
//! ```
//!
//! Before each poll the engine delivers queued mutations (`POST
//! /v1/mutations`, batches ≤ 100, in queue order). Errors move it to a
//! back-off wait (full jitter, `Retry-After` honoured) and back. Writes back
//! off on their own: a flush that fails while the server answers (a proxy's
//! `403`, a long `429`, a `5xx` on writes) is followed in the same step by
//! the poll, and the queue waits for its own back-off while the replica
//! keeps following changes (reads are never rate limited, so a `429`'s
//! `Retry-After` on mutations delays only the next mutation). Only an
//! unreachable server stops both.
//!
//! What counts as an error is strict, because a broken or hostile server
//! must not be able to make the client spin, hoard memory or lose a write:
//! a page of changes that breaks the protocol (`next` behind `since` or past
//! `head`, entries out of order or outside `since..=next`), a body over
//! 32 MiB, and any redirect (edgesync never redirects: following one would
//! hand a queued mutation to another host and count its answer as
//! delivery) are errors like an unreachable server: backed off from, the
//! queue untouched.
//!
//! * **Bootstrap/resync** reads every listing page (`after` = the previous
//!   page's `next_after`), then replaces the local documents in one
//!   transaction and follows changes from the *first* page's `cursor`. Until
//!   that commit the app keeps reading the old replica; afterwards it gets
//!   change events for exactly the documents that differ (origin `resync`).
//!   Pending and parked mutations are untouched by a resync.
//! * **Follow** applies each page of changes and the new cursor in one
//!   transaction. A change is applied only if its version is newer than the
//!   local copy (deletes leave a tombstone until the cursor passes them), so
//!   applying a page twice, or a change the replica already learned from its
//!   own mutation's result, is harmless. A mutation's result or a
//!   [`Client::fetch`] is applied only if it is newer than the cursor too:
//!   at or below it, the feed has already brought it or something later
//!   (perhaps a delete whose tombstone is gone), so a late or replayed result
//!   never brings a deleted document back.
//! * **Handles sharing a storage** (processes on one SQLite replica) each
//!   follow the feed from the cursor they last read themselves, not from the
//!   storage's (which another handle may have moved on), so each announces
//!   every change once: a change another handle stored first is announced
//!   here as `Origin::Remote`, a delete whose tombstone it already pruned
//!   included. Only a handle that falls behind the retained log meanwhile
//!   skips to the storage's cursor without announcing the gap.
//!
//! ## Modes
//!
//! * [`Mode::Live`] long-polls: `Prefer: wait=25` (the server's default
//!   maximum; [`SyncConfig::live_wait`]). A committed change is answered to
//!   the held request at once, so it reaches the replica about one round
//!   trip after the write. An idle replica costs one request per 25 s (144
//!   per hour). On a server that does not hold requests, live mode
//!   smart-polls instead (below).
//! * [`Mode::Battery`] probes `GET /v1/changes?since=<cursor>` with
//!   `If-None-Match: "<cursor>"` and `wait=0`: a `304` when nothing changed,
//!   or the changes themselves (no second request). After activity (changes
//!   received, a mutation delivered) the next probe comes after the floor;
//!   each idle probe doubles the ceiling of a full-jitter wait — the n-th
//!   wait is `max(floor, U[0, min(240 s, 10 s·2ⁿ)])`. The floor is the
//!   server's `X-Poll-Interval` (default advice 10 s), so the client never
//!   probes more often than the server asks.
//!
//! ### Live mode on a server that does not hold
//!
//! The hold is asked for with `Prefer: wait=25` (not `?wait=`) because the
//! server then states what it granted: `Preference-Applied: wait=N`, with
//! `N` clamped to its `max_wait_seconds`. The engine reads each long-poll's
//! answer:
//!
//! * `Preference-Applied: wait=0` (the server is configured not to hold):
//!   smart polling from this answer on;
//! * `Preference-Applied: wait=N`, `N > 0`: the server holds;
//! * no `Preference-Applied` (a proxy or server that ignores `Prefer`): an
//!   empty answer (`304` or no changes) held for at least
//!   [`SyncConfig::min_hold`] shows the server holds;
//!   more than [`SyncConfig::stall_tolerance`] early ones in a row show it
//!   does not.
//!
//! Smart polling in live mode is battery mode's schedule (`If-None-Match`,
//! the floor after activity, full-jitter back-off, never more often than
//! `X-Poll-Interval`) with the jitter ceiling held at `live_wait`, so a
//! change still reaches the replica within 25 s — or the server's
//! `X-Poll-Interval`, if longer: an operator who turns holds off keeps
//! control of the rate. With the default 10 s advice that is ≈ 14.5 s per
//! idle probe (≈ 250 requests per idle hour). Every probe still carries
//! `Prefer: wait=25`, which costs nothing while no hold is granted, so the
//! first answer that shows a hold again switches the replica back to
//! long-polling. [`Status::polling`] tells which is in use.
//!
//! Switch with [`Client::set_mode`] (e.g. live in the foreground, battery in
//! the background; switching to live probes at once);
//! [`Client::sync_now`] probes at once (app resumed, network back).
//!
//! ### Idle cost in battery mode (defaults)
//!
//! With ceiling `c` = 240 s and floor `f` = 10 s, the expected wait is
//! `f²/c + (c² − f²)/2c` = 0.42 + 119.79 ≈ **120.2 s**, i.e. **≈ 30 requests
//! per idle hour** in steady state. The ramp after activity (expected waits
//! 10 + 12.5 + 21.25 + 40.6 + 80.3 ≈ 165 s for the first five probes) makes
//! the first idle hour ≈ 5 + 3435/120.2 ≈ **34 requests**. Reaching 60 in an
//! hour would need 60 waits averaging under 60 s where each averages 120 s
//! (σ ≈ 69 s): over six standard deviations away.
//!
//! Each idle probe is one request and one `304`. Measured against a
//! byte-counting server (`tests/fake_server.rs`) with the ~147-byte token
//! `edgesync token` mints (`sub`, `iat`, `exp`): the request is about 263 bytes
//! (`GET /v1/changes?since=N`, `if-none-match`, `authorization`, `accept`,
//! `host`) and a `304` carrying `etag`, `x-poll-interval`, `cache-control`
//! and `date` is 132 bytes: ≈ 395 bytes per probe, so ≈ **13.4 KB in the
//! first idle hour** (34 probes), ≈ 11.9 KB per hour after (30 probes), and
//! 23.7 KB even at 60 probes — inside the 30 KB/hour budget with room for
//! ~100 more bytes of token or headers per probe. The client keeps its
//! connection for 300 s between probes, so as long as the server does too
//! (and rustls resumes sessions when it does not), idle probes do not pay a
//! new TLS handshake each (handshake bytes are not in these figures).
//!
//! ### Tight-loop guard
//!
//! A long-poll that returns with nothing new in under 1 s
//! ([`SyncConfig::min_hold`]) although the server said it holds, or a page
//! that does not move the cursor while the server reports a head beyond it,
//! is a *stall*. Two in a row are tolerated (a restarting server ends holds
//! early); after that the engine waits a full-jitter back-off on the idle
//! schedule before the next request. (Early answers from a server that does
//! not hold are paced by smart polling, above.)
//! Likewise, if the cursor of a fresh listing is refused again at once
//! (409/410 in a loop), resyncs back off on the idle schedule.
//! Errors back off on [`SyncConfig::retry`] (1 s doubling to 60 s, full
//! jitter; in battery mode up to 240 s), and a `Retry-After` on 429/503 (or
//! any response) is a minimum wait. While smart polling (battery mode, or
//! live mode on a server that does not hold) the wait after an error is at
//! least the poll floor as well — the latest `X-Poll-Interval`, including
//! one sent on the error response — so errors never make the replica poll
//! more often than the server asks.
//!
//! ## Offline mutations
//!
//! [`Client::enqueue`] (and `put`/`patch`/`delete`) validates names, stores
//! the mutation with a fresh idempotency key (`<replica id>-<64 random
//! bits>`) and returns at once. The engine sends the queue in order in
//! batches of ≤ 100; every retry reuses the keys, so a batch whose response
//! was lost is applied exactly once. The server remembers only the
//! mutations it applied — one it refused is judged again when sent again —
//! so a batch ends before an item on a document that an earlier item of
//! the batch depends on the state of (a patch or delete, or anything with
//! `if_version`): resent after a lost answer, that earlier item is judged
//! against its document as it was, not after the items that followed it
//! (unconditional puts, and items on different documents, batch freely).
//! Per item:
//!
//! * 200/201/204: removed from the queue, and its result document applied
//!   to the replica (event origin `local`);
//! * 412: **parked as a conflict** ([`SyncEvent::Conflict`],
//!   [`Client::parked`]) until the app calls [`Client::resolve`] with
//!   [`Resolution::Discard`], [`Resolution::Overwrite`] (re-queued with
//!   `if_version` = the server's current version; see there for documents
//!   gone on the server) or
//!   [`Resolution::Replace`]. A conditional write (below) is never applied
//!   over another edit, nor dropped, without the app deciding.
//! * 400/404/409/413/415/422: parked as a rejection ([`SyncEvent::Rejected`]).
//!   A 400 for the whole batch makes the engine resend that batch one item
//!   at a time to find the culprit; a 413 makes it send smaller batches
//!   (within the `max_body_bytes` the server names, or half the size), so
//!   an item too big alone ends up alone. Batches start within 256 KiB,
//!   the default body limit. A 400 or 415 that is not an edgesync
//!   problem document (a proxy's or firewall's) says nothing about the
//!   items: they stay queued, retried after back-off.
//! * 429/5xx (whole batch or item): stays queued, retried after back-off
//!   (writes' own; reading goes on meanwhile). The items a stopped batch
//!   settled before the stop (its answer's `results`) are settled as above
//!   and not sent again. [`Client::flush`] does not
//!   retry within the call: its [`FlushError`] carries the error and the
//!   report of what was delivered and parked before it.
//!
//! Later mutations keep flowing while one is parked (the server applies batch
//! items independently too); a resolved mutation is re-queued at the end with
//! a new key.
//!
//! ### Last writer wins, unless the write is conditional
//!
//! [`Client::put`], [`Client::patch`] and [`Client::delete`] send no
//! precondition: the server applies them to whatever version it holds when
//! they arrive, so an edit made meanwhile on another device (or while this
//! one was offline) is replaced without a conflict. To have concurrent edits
//! surface as conflicts instead, write conditionally: queue the mutation with
//! the version it is based on, [`Mutation::if_version`] (`0`: only if the
//! document does not exist). If the document has moved on, the server
//! answers `412` and the mutation is parked as a [`SyncEvent::Conflict`]
//! instead of being applied. The command line's `--if-version N` does the
//! same.
//!
//! ```no_run
//! # fn demo(client: &edgesync_client::Client) -> Result<(), edgesync_client::Error> {
//! use edgesync_client::Mutation;
//! if let Some(doc) = client.get("todos", "a1")? {
//!     let edited = serde_json::json!({"title": "oat milk"});
//!     client.enqueue(Mutation::put("todos", "a1", edited).if_version(doc.version))?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Storage
//!
//! [`Storage`] is a small transactional trait; [`SqliteStorage`] (bundled
//! SQLite, WAL, `synchronous=FULL`) is the durable default and
//! [`MemoryStorage`] is for tests. Without a storage choice
//! ([`ClientBuilder::sqlite`], [`ClientBuilder::memory`],
//! [`ClientBuilder::storage`]), [`ClientBuilder::build`] opens SQLite at
//! [`default_replica_path`]: `<data dir>/edgesync/<hash of server URL and
//! the token's sub>/replica.db`, with the data dir from `$XDG_DATA_HOME`,
//! else `$HOME/.local/share`, else `%LOCALAPPDATA%` — the replica the
//! `edgesync` commands use for that server and user, so they see (and
//! deliver) what the app queued. Handles on one replica share its cursor
//! (see Guarantees): give an app its own path with
//! [`ClientBuilder::sqlite`] if it must hear of every change while
//! `edgesync watch` follows the same user. If the token has no `sub` or no
//! data dir is known, `build` fails with [`Error::NoStorage`].
//!
//! A replica belongs to one server and one user: on first use it records
//! the server's URL (normalised: `HTTP://Host:80/` is `http://host`) and the
//! token's `sub` ([`Storage::bind`]), and from then on [`ClientBuilder::build`]
//! refuses another server ([`Error::WrongServer`]: its cursor means nothing
//! there) or another user ([`Error::WrongUser`]: the queue would be sent with
//! their token), and [`Client::set_token`] refuses a token for another user.
//!
//! SQLite was chosen over an atomically replaced file because every applied
//! change would otherwise rewrite the whole replica; SQLite updates in
//! place, commits a page of changes and its cursor atomically, and lets two
//! processes (say `edgesync watch` and `edgesync put`) share one replica.
//!
//! ## Guarantees
//!
//! * At most one request in flight per [`Client`]; one-shot calls
//!   ([`Client::flush`], [`Client::fetch`], [`Client::sync_once`]) take turns
//!   with the engine, interrupting an idle long-poll. Clients sharing one
//!   replica file (in one process or several) take turns sending its queue
//!   too, under the lock of `<replica>.queue-lock`.
//! * Documents, cursor and queue change only in whole transactions; the
//!   cursor never moves past changes that are not applied.
//! * A mutation acknowledged by [`Client::enqueue`] is delivered exactly once
//!   or parked for the app — unless it stays undelivered so long that the
//!   server forgets its idempotency key (keys live as long as their change is
//!   in the server's retained log) *and* an earlier attempt had in fact been
//!   applied.
//! * Change events are published after the transaction that made them, per
//!   collection ([`Client::subscribe`]) and for all ([`Client::subscribe_all`]).
//!   These suit a UI: a slow receiver may lose events (`RecvError::Lagged`);
//!   re-read with [`Client::list`] then. A [`ChangeFeed`]
//!   ([`Client::changes`]) loses none: while one is more than
//!   [`MAX_BACKLOG`] changes behind, the replica stops reading the feed
//!   until it catches up.
//! * Events are per [`Client`]. When several handles share one replica (two
//!   processes on one file), a change that another handle already stored —
//!   the acknowledged result of its own mutation — is still announced here
//!   when the changes feed brings it (origin `remote`); a handle's own
//!   change is announced once, when acknowledged. Each handle follows the
//!   feed from its own cursor (see "Handles sharing a storage" above), so
//!   each announces every change.
//! * Time for waits comes from a [`Clock`]; [`VirtualClock`] runs simulated
//!   hours of back-off in milliseconds.

mod backoff;
mod client;
mod clock;
mod engine;
mod error;
mod feed;
mod location;
mod model;
mod names;
mod storage;
mod wire;

pub use backoff::{expected_wait_secs, Backoff, PollSchedule, Rng};
pub use client::{Client, ClientBuilder, SyncConfig};
pub use clock::{Clock, Sleep, SystemClock, VirtualClock};
pub use engine::{Delivered, FlushError, FlushReport, SendOutcome};
pub use error::Error;
pub use feed::{ChangeFeed, MAX_BACKLOG};
pub use location::{default_replica_path, default_state_dir, NoDefaultLocation, REPLICA_FILE};
pub use model::{
    ChangeEvent, Document, Mode, Mutation, Op, Origin, ParkReason, ParkedMutation, PendingMutation,
    Phase, Polling, Problem, Resolution, ResyncReason, Status, StoredDoc, SyncEvent,
};
pub use names::is_valid_name;
pub use storage::{
    Commit, CommitResult, DocWrite, MemoryStorage, Meta, NewMutation, QueueCounts, SqliteStorage,
    Storage, StorageError, WriteOutcome,
};
