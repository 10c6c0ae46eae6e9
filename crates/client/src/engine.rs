//! The sync engine: one loop per replica that bootstraps, flushes the queue
//! and follows the changes feed, one request at a time.

use crate::backoff::{Backoff, PollSchedule, Rng};
use crate::clock::Clock;
use crate::error::Error;
use crate::feed::Feeds;
use crate::model::{
    ChangeEvent, Document, Mode, Op, Origin, ParkReason, ParkedMutation, PendingMutation, Phase,
    Polling, ResyncReason, Status, StoredDoc, SyncEvent,
};
use crate::storage::{open_private, Commit, DocWrite, Storage, StorageError, WriteOutcome};
use crate::wire::{BatchResponse, ChangesOutcome, ChangesResponse, ItemResult, Wire};
use crate::SyncConfig;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify};

const CHANNEL_CAPACITY: usize = 1024;
/// Above this lag, catch-up pages ask for the maximum page size.
const DEFAULT_PAGE: u64 = 100;
const CATCH_UP_LIMIT: u32 = 1000;

/// How long a step held back for a lossless feed sleeps at most; the
/// feed's reader, a new mutation or queued mutations coming due end it
/// sooner.
const HELD_FOR_A_FEED: Duration = Duration::from_secs(3600);

/// What one flush delivered and parked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushReport {
    /// Mutations the server applied.
    pub delivered: Vec<Delivered>,
    /// Mutations parked as conflicts or rejections.
    pub parked: Vec<ParkedMutation>,
}

/// A [`crate::Client::flush`] that stopped at an error: what it delivered
/// and parked before it stopped (applied, stored and announced all the
/// same), and the error. The mutations not in the report stay queued.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct FlushError {
    /// What was delivered and parked before the error.
    pub report: FlushReport,
    /// Why the flush stopped.
    pub error: Error,
}

impl FlushError {
    /// Whether retrying later may succeed (see [`Error::is_transient`]);
    /// `error.retry_after`, when the server sent one, says when.
    pub fn is_transient(&self) -> bool {
        self.error.is_transient()
    }
}

impl From<FlushError> for Error {
    fn from(e: FlushError) -> Error {
        e.error
    }
}

/// A mutation the server applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// Its idempotency key.
    pub key: String,
    /// Status of its result (200, 201 or 204).
    pub status: u16,
    /// The version it produced.
    pub version: Option<u64>,
    /// The document after a put or patch.
    pub document: Option<Document>,
    /// The server replayed the first result for this key.
    pub replayed: bool,
}

/// The outcome of one mutation sent with [`crate::Client::send_now`].
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Applied.
    Delivered(Delivered),
    /// Not applied; nothing was queued.
    Refused(ParkedMutation),
}

/// Per-collection change fan-out.
pub(crate) struct Bus {
    all: broadcast::Sender<ChangeEvent>,
    by_collection: Mutex<HashMap<String, broadcast::Sender<ChangeEvent>>>,
    pub feeds: Feeds,
}

impl Bus {
    fn new() -> Self {
        Bus {
            all: broadcast::channel(CHANNEL_CAPACITY).0,
            by_collection: Mutex::new(HashMap::new()),
            feeds: Feeds::default(),
        }
    }

    pub fn subscribe(&self, collection: &str) -> broadcast::Receiver<ChangeEvent> {
        self.by_collection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(collection.to_string())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    pub fn subscribe_all(&self) -> broadcast::Receiver<ChangeEvent> {
        self.all.subscribe()
    }

    fn publish(&self, ev: ChangeEvent) {
        self.feeds.publish(&ev);
        let mut map = self.by_collection.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(&ev.collection) {
            // No receivers left: forget the collection.
            if tx.send(ev.clone()).is_err() {
                map.remove(&ev.collection);
            }
        }
        drop(map);
        let _ = self.all.send(ev);
    }
}

/// Mutable engine state, owned by whoever holds the request gate.
pub(crate) struct NetState {
    rng: Rng,
    schedule: PollSchedule,
    /// Consecutive failed requests.
    failures: u32,
    /// Consecutive responses that neither advanced nor were held, from a
    /// server that says it holds long-polls (or with a broken page).
    stalls: u32,
    /// Long-polls in a row answered at once with nothing, by a server that
    /// did not say whether it holds them. Reset by evidence of a hold.
    unheld: u32,
    /// No request may start before this clock time (back-off, Retry-After).
    not_before: Duration,
    /// Consecutive failed flushes. Writes back off on their own, so that a
    /// flush that keeps failing (a proxy's 403, long 429s, a 5xx on writes)
    /// does not stop the replica from reading.
    write_failures: u32,
    /// No mutation batch may be sent before this clock time (a failed
    /// flush's back-off or `Retry-After`); reads go on meanwhile.
    write_not_before: Duration,
    /// Smart polling: when the next probe is due.
    next_poll: Duration,
    /// The server's last `X-Poll-Interval`.
    server_floor: Option<Duration>,
    /// Send one mutation per batch up to this queue position, to find the
    /// item that made a whole batch fail with 400.
    isolate_until: u64,
    /// Most body bytes a batch may take: the contract's default body limit
    /// until a 413 tells (or shows) that the server, or something on the
    /// way, takes less. A queue of large values filled offline then goes
    /// out in as few requests as fit, not one item per request.
    batch_bytes: usize,
    /// Why the pending resync was requested (kept in memory only; a restart
    /// reports `CursorExpired`).
    resync_reason: Option<ResyncReason>,
    /// An `AuthFailed` event was sent for the current failure streak.
    auth_reported: bool,
    /// Resyncs in a row whose cursor the server refused again at once.
    pub(crate) resyncs_in_row: u32,
    /// The latest version of each document that this handle announced as
    /// its own (`Origin::Local`) and the changes feed has not brought back
    /// yet. When the feed brings a version the storage already holds
    /// (`WriteOutcome::Same`), this tells whether subscribers here heard of
    /// it: if not, another handle on the same storage (another process,
    /// say `edgesync put` beside `edgesync watch`) stored it, and it is
    /// announced now as a remote change.
    announced_local: HashMap<(String, String), u64>,
    /// The cursor up to which this handle has read the feed and told its
    /// subscribers. The storage's cursor may be ahead of it: another
    /// handle on the same storage (another process: `edgesync list` beside
    /// `edgesync watch`, or a second `watch`) read further. Polls start
    /// from here, so subscribers still hear of every change — including
    /// those the other handle stored first, whose deletes it may have
    /// pruned already. `None` until the first poll: the storage's cursor.
    seen: Option<u64>,
}

pub(crate) struct Shared {
    pub wire: Wire,
    pub store: Arc<dyn Storage>,
    pub clock: Arc<dyn Clock>,
    pub config: SyncConfig,
    pub replica_id: String,
    pub mode: Mutex<Mode>,
    pub wake: Notify,
    pub stopping: AtomicBool,
    /// The server does not hold long-polls, as far as its latest answers
    /// tell: live mode smart-polls meanwhile. Outside the gate because the
    /// status (and `set_mode`) reports it.
    no_hold: AtomicBool,
    pub stop_tx: watch::Sender<bool>,
    /// Exactly one request in flight per replica: every request is made while
    /// holding this lock. tokio's mutex is fair, so a one-shot operation that
    /// asks for it while the engine long-polls (and wakes the engine) gets it
    /// before the engine's next step.
    pub gate: tokio::sync::Mutex<NetState>,
    pub status: watch::Sender<Status>,
    pub bus: Bus,
    pub events: broadcast::Sender<SyncEvent>,
}

impl Shared {
    /// The gate, for a one-shot operation the app asked for. If the engine
    /// has it (holding a long-poll, say), the operation queues for it and
    /// then wakes the engine, so the hold ends now instead of being waited
    /// out, and the gate the engine lets go of goes to the first in its
    /// queue (tokio's mutex is fair), not back to the engine.
    pub async fn gate_for_app(&self) -> tokio::sync::MutexGuard<'_, NetState> {
        let mut lock = std::pin::pin!(self.gate.lock());
        let first = std::future::poll_fn(|cx| Poll::Ready(lock.as_mut().poll(cx))).await;
        if let Poll::Ready(free) = first {
            return free;
        }
        self.wake.notify_one();
        lock.await
    }

    pub fn new(
        wire: Wire,
        store: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        config: SyncConfig,
        replica_id: String,
    ) -> Shared {
        let rng = config
            .jitter_seed
            .map(Rng::seeded)
            .unwrap_or_else(Rng::from_entropy);
        let state = NetState {
            rng,
            schedule: PollSchedule::new(config.idle),
            failures: 0,
            stalls: 0,
            unheld: 0,
            not_before: Duration::ZERO,
            write_failures: 0,
            write_not_before: Duration::ZERO,
            next_poll: Duration::ZERO,
            server_floor: None,
            isolate_until: 0,
            batch_bytes: DEFAULT_BATCH_BYTES,
            resync_reason: None,
            auth_reported: false,
            resyncs_in_row: 0,
            announced_local: HashMap::new(),
            seen: None,
        };
        let status = Status {
            mode: config.mode,
            polling: polling(config.mode, false),
            ..Status::default()
        };
        Shared {
            wire,
            store,
            clock,
            mode: Mutex::new(config.mode),
            config,
            replica_id,
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            no_hold: AtomicBool::new(false),
            stop_tx: watch::channel(false).0,
            gate: tokio::sync::Mutex::new(state),
            status: watch::channel(status).0,
            bus: Bus::new(),
            events: broadcast::channel(CHANNEL_CAPACITY).0,
        }
    }

    pub fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How changes are asked for in `mode` on this server.
    pub fn polling(&self, mode: Mode) -> Polling {
        polling(mode, self.no_hold.load(Ordering::SeqCst))
    }

    /// Record what the server's latest answer told about holding
    /// long-polls.
    fn set_no_hold(&self, no_hold: bool) {
        if self.no_hold.swap(no_hold, Ordering::SeqCst) != no_hold {
            let polling = self.polling(self.mode());
            self.set_status(|s| s.polling = polling);
        }
    }

    pub fn set_status(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_if_modified(|s| {
            let before = s.clone();
            f(s);
            *s != before
        });
    }

    /// Re-read counts and position from storage into the status.
    pub fn refresh_status(&self) {
        let counts = self.store.counts();
        let meta = self.store.meta();
        self.set_status(|s| {
            if let Ok(c) = counts {
                s.pending = c.pending;
                s.parked = c.parked;
            }
            if let Ok(m) = meta {
                s.cursor = m.cursor;
                s.head = m.head.or(s.head);
                s.lag = match (s.head, s.cursor) {
                    (Some(h), Some(c)) => Some(h.saturating_sub(c)),
                    _ => None,
                };
            }
            s.mode = *self.mode.lock().unwrap_or_else(|e| e.into_inner());
            s.polling = self.polling(s.mode);
        });
    }

    fn floor(&self, st: &NetState) -> Duration {
        st.server_floor.unwrap_or(self.config.default_poll_interval)
    }

    async fn stopped(&self) {
        let mut rx = self.stop_tx.subscribe();
        // The sender lives as long as `self`, so this only ends on stop.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Sleep on the engine's clock; a wake-up or stop ends it early.
    async fn sleep_wakeable(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        tokio::select! {
            _ = self.clock.sleep(d) => {}
            _ = self.wake.notified() => {}
            _ = self.stopped() => {}
        }
    }

    // ---------------------------------------------------------------- loop

    pub async fn run(self: Arc<Self>) {
        self.refresh_status();
        while !self.stopping.load(Ordering::SeqCst) {
            let mut st = self.gate.lock().await;
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let now = self.clock.now();
            if st.not_before > now {
                let d = st.not_before - now;
                drop(st);
                self.set_status(|s| s.phase = Phase::Backoff);
                self.sleep_wakeable(d).await;
                continue;
            }
            let result = tokio::select! {
                r = self.step(&mut st) => r,
                _ = self.stopped() => break,
            };
            match result {
                Ok(Some(sleep)) => {
                    drop(st);
                    // Held back for a lossless feed: go on once it is read.
                    let behind = self.bus.feeds.is_behind();
                    tokio::select! {
                        _ = self.sleep_wakeable(sleep) => {}
                        _ = self.bus.feeds.wait_until_read(), if behind => {}
                    }
                }
                Ok(None) => {}
                Err(e) => self.on_failure(&mut st, &e),
            }
        }
        self.set_status(|s| {
            s.phase = Phase::Idle;
            s.syncing = false;
        });
    }

    /// One unit of work. `Ok(Some(d))`: nothing to do for `d`.
    ///
    /// Queued mutations go first, but a flush that fails while the server
    /// is reachable does not hold up reading: the same step goes on to the
    /// pull (still one request at a time), and writes wait for their own
    /// back-off (`write_not_before`) while the replica keeps following.
    async fn step(&self, st: &mut NetState) -> Result<Option<Duration>, Error> {
        let counts = self.store.counts()?;
        // When queued mutations are next due, if any are waiting.
        let mut write_due = None;
        if counts.pending > 0 {
            if st.write_not_before <= self.clock.now() {
                match self.flush_step(st).await {
                    Ok((report, None)) => {
                        self.after_flush(st, &report);
                        return Ok(None);
                    }
                    Ok((report, Some(e))) => {
                        self.after_flush(st, &report);
                        self.on_write_failure(st, &e);
                    }
                    Err(e) if reads_may_work(&e) => self.on_write_failure(st, &e),
                    Err(e) => return Err(e),
                }
            }
            write_due = Some(st.write_not_before);
        }
        // Sleep no longer than until the queue is due again.
        let until =
            |at: Duration, now: Duration| write_due.map_or(at, |w| w.min(at)).saturating_sub(now);
        // A lossless feed that is far behind holds reading back (not the
        // delivery of queued mutations, above) rather than have it drop
        // changes or buffer without bound.
        if self.bus.feeds.is_behind() {
            let now = self.clock.now();
            return Ok(Some(until(now + HELD_FOR_A_FEED, now)));
        }
        let meta = self.store.meta()?;
        let Some(cursor) = meta.cursor.filter(|_| !meta.needs_resync) else {
            let reason = match meta.cursor {
                None => ResyncReason::Initial,
                Some(_) => st.resync_reason.unwrap_or(ResyncReason::CursorExpired),
            };
            self.bootstrap(st, reason).await?;
            return Ok(None);
        };
        self.set_status(|s| s.phase = Phase::Following);
        match self.mode() {
            Mode::Live => {
                // A server that does not hold is probed on the poll
                // schedule instead. Each probe still asks for a hold (it
                // costs nothing when none is granted), so the replica
                // long-polls again as soon as the server holds.
                let now = self.clock.now();
                if self.no_hold.load(Ordering::SeqCst) && st.next_poll > now {
                    return Ok(Some(until(st.next_poll, now)));
                }
                // A wake-up (enqueue, sync_now, a one-shot operation waiting
                // for the gate), or queued mutations coming due after their
                // back-off, abandons the held request.
                let write_wait = write_due.map(|w| w.saturating_sub(now));
                let abandoned = tokio::select! {
                    r = self.poll(st, cursor, meta.head, self.config.live_wait) => {
                        r?;
                        false
                    }
                    _ = self.wake.notified() => true,
                    _ = self.clock.sleep(write_wait.unwrap_or_default()), if write_wait.is_some() => true,
                };
                // An abandoned probe told nothing: it is due again at once,
                // as a long-poll would be.
                if abandoned && self.no_hold.load(Ordering::SeqCst) {
                    poll_now(st, self.clock.now());
                }
                Ok(None)
            }
            Mode::Battery => {
                let now = self.clock.now();
                if st.next_poll > now {
                    return Ok(Some(until(st.next_poll, now)));
                }
                self.poll(st, cursor, meta.head, Duration::ZERO).await?;
                Ok(None)
            }
        }
    }

    /// The wait after the `n`-th failure in a row (from 1) that ended with
    /// `e`: full jitter on the retry schedule, never sooner than `e`'s
    /// `Retry-After` nor, while smart polling, the server's
    /// `X-Poll-Interval`.
    fn retry_wait(&self, st: &mut NetState, n: u32, e: &Error) -> Duration {
        let mode = self.mode();
        let schedule = if mode == Mode::Battery {
            // Errors must not make a battery replica poll faster than idling.
            Backoff {
                base: self.config.retry.base,
                cap: self.config.retry.cap.max(self.config.idle.cap),
            }
        } else {
            self.config.retry
        };
        let mut wait = schedule.full_jitter(n.saturating_sub(1), &mut st.rng);
        // A smart-polling replica (battery mode, or live mode on a server
        // that does not hold) never asks more often than X-Poll-Interval,
        // after errors too.
        if self.polling(mode) == Polling::SmartPoll {
            wait = wait.max(self.floor(st));
        }
        if let Error::Server {
            retry_after: Some(ra),
            ..
        } = e
        {
            wait = wait.max(*ra);
        }
        wait
    }

    /// Tell the app about a 401, once per failure streak.
    fn report_auth_failure(&self, st: &mut NetState, e: &Error) {
        if let Error::Server {
            status: 401,
            problem,
            ..
        } = e
        {
            if !st.auth_reported {
                st.auth_reported = true;
                let _ = self.events.send(SyncEvent::AuthFailed(problem.clone()));
            }
        }
    }

    /// A request failed: no request of any kind until the back-off ends.
    pub(crate) fn on_failure(&self, st: &mut NetState, e: &Error) {
        let now = self.clock.now();
        st.failures = st.failures.saturating_add(1);
        let wait = self.retry_wait(st, st.failures, e);
        self.report_auth_failure(st, e);
        let online = !matches!(e, Error::Unreachable(_));
        st.not_before = now + wait;
        self.set_status(|s| {
            s.online = online;
            s.syncing = false;
            s.phase = Phase::Backoff;
            s.last_error = Some(e.to_string());
        });
    }

    /// A flush failed although the server may still answer reads (anything
    /// but an unreachable server or a local storage failure): only writes
    /// back off, on their own count; reads go on.
    pub(crate) fn on_write_failure(&self, st: &mut NetState, e: &Error) {
        let now = self.clock.now();
        st.write_failures = st.write_failures.saturating_add(1);
        let wait = self.retry_wait(st, st.write_failures, e);
        self.report_auth_failure(st, e);
        st.write_not_before = now + wait;
        self.set_status(|s| {
            s.syncing = false;
            s.last_error = Some(e.to_string());
        });
    }

    /// Record a failed one-shot flush as the engine would: writes back off
    /// (or everything, if the server cannot be reached).
    pub(crate) fn on_flush_failure(&self, st: &mut NetState, e: &Error) {
        if reads_may_work(e) {
            self.on_write_failure(st, e);
        } else {
            self.on_failure(st, e);
        }
    }

    fn on_write_success(&self, st: &mut NetState) {
        if st.write_failures > 0 {
            st.write_failures = 0;
            st.write_not_before = Duration::ZERO;
            self.set_status(|s| s.last_error = None);
        }
    }

    /// No request before the `n`-th step of the idle back-off (full jitter,
    /// never below the server's poll interval) from `now`: for answers that
    /// would otherwise make us ask again at once.
    fn hold_off(&self, st: &mut NetState, now: Duration, n: u32) {
        let wait = self
            .config
            .idle
            .full_jitter(n, &mut st.rng)
            .max(self.floor(st));
        st.not_before = st.not_before.max(now + wait);
    }

    fn on_success(&self, st: &mut NetState) {
        st.failures = 0;
        st.auth_reported = false;
        // A failing flush's error stays visible while writes keep failing.
        let writes_failing = st.write_failures > 0;
        self.set_status(|s| {
            s.online = true;
            if !writes_failing {
                s.last_error = None;
            }
        });
    }

    // ----------------------------------------------------------- bootstrap

    /// Read the whole listing, then replace the local documents with it in
    /// one transaction (the app keeps seeing the old replica until then) and
    /// follow changes from the first page's cursor. The queue is untouched.
    pub async fn bootstrap(&self, st: &mut NetState, reason: ResyncReason) -> Result<(), Error> {
        self.set_status(|s| {
            s.phase = Phase::Bootstrapping;
            s.syncing = true;
        });
        let first = self.wire.docs_page(None, self.config.page_size).await;
        let first = self.settle(st, first)?;
        let cursor = first.cursor;
        let mut docs: Vec<StoredDoc> = first.documents.into_iter().map(Into::into).collect();
        let mut after = first.next_after;
        // A listing that comes back to a page it has given already would
        // be read forever.
        let mut pages_seen = std::collections::HashSet::new();
        while let Some(a) = after {
            if !pages_seen.insert(a.clone()) {
                return Err(Error::Protocol(format!(
                    "listing does not advance past {a}"
                )));
            }
            let page = self.wire.docs_page(Some(&a), self.config.page_size).await;
            let page = self.settle(st, page)?;
            docs.extend(page.documents.into_iter().map(StoredDoc::from));
            after = page.next_after;
        }
        let old: BTreeMap<(String, String), StoredDoc> = self
            .store
            .list(None)?
            .into_iter()
            .map(|d| ((d.collection.clone(), d.id.clone()), d))
            .collect();
        let new_len = docs.len();
        // Listed at a version past the cursor (written while the listing
        // was read): the feed from the cursor brings that version again,
        // and the events below already tell of it.
        let listed_ahead: Vec<((String, String), u64)> = docs
            .iter()
            .filter(|d| d.version > cursor)
            .map(|d| ((d.collection.clone(), d.id.clone()), d.version))
            .collect();
        // The first sync is the starting point, even of a replica that
        // already holds the results of writes made before it.
        let origin = if reason == ResyncReason::Initial {
            Origin::Snapshot
        } else {
            Origin::Resync
        };
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for d in &docs {
            let key = (d.collection.clone(), d.id.clone());
            let changed = old.get(&key).is_none_or(|o| o.version != d.version);
            seen.insert(key);
            if changed {
                events.push(ChangeEvent {
                    op: Op::Put,
                    collection: d.collection.clone(),
                    id: d.id.clone(),
                    version: d.version,
                    value: d.value.clone(),
                    ts: d.updated_at.clone(),
                    origin,
                });
            }
        }
        for (key, o) in &old {
            if !seen.contains(key) {
                events.push(ChangeEvent {
                    op: Op::Delete,
                    collection: o.collection.clone(),
                    id: o.id.clone(),
                    version: cursor.max(o.version),
                    value: None,
                    ts: None,
                    origin,
                });
            }
        }
        self.store.replace_all(docs, cursor, cursor)?;
        // The events above describe the new replica as a whole.
        st.announced_local.clear();
        st.announced_local.extend(listed_ahead);
        st.seen = Some(cursor);
        st.resync_reason = None;
        st.stalls = 0;
        st.schedule.activity();
        // Catch up from the snapshot's cursor right away.
        st.next_poll = self.clock.now();
        for ev in events {
            self.bus.publish(ev);
        }
        let _ = self.events.send(SyncEvent::Resynced {
            reason,
            cursor,
            documents: new_len,
        });
        self.set_status(|s| {
            s.phase = Phase::Following;
            s.head = Some(cursor);
        });
        self.refresh_status();
        Ok(())
    }

    /// Record success (or reachability) of a response.
    fn settle<T>(&self, st: &mut NetState, r: Result<T, Error>) -> Result<T, Error> {
        if r.is_ok() {
            self.on_success(st);
        }
        r
    }

    // ---------------------------------------------------------------- poll

    /// One changes request, from what this handle has read (the stored
    /// `cursor`, unless another handle on the storage moved it on; see
    /// `NetState::seen`). Returns whether this handle's cursor advanced.
    pub async fn poll(
        &self,
        st: &mut NetState,
        cursor: u64,
        head: Option<u64>,
        wait: Duration,
    ) -> Result<bool, Error> {
        let since = st.seen.map_or(cursor, |seen| seen.min(cursor));
        let lag = head.map_or(0, |h| h.saturating_sub(since));
        let limit = (lag > DEFAULT_PAGE).then_some(CATCH_UP_LIMIT);
        self.set_status(|s| s.syncing = lag > 0);
        let started = self.clock.now();
        let resp = match self.wire.changes(since, wait, limit).await {
            Ok(resp) => resp,
            Err(failure) => {
                // A 429/503 carries the server's poll advice too: the retry
                // heeds it.
                if let Some(pi) = failure.poll_interval {
                    st.server_floor = Some(pi);
                }
                return Err(failure.error);
            }
        };
        let elapsed = self.clock.now().saturating_sub(started);
        let r = self.on_changes(st, since, cursor, head, resp, wait, elapsed);
        // Only an answer the replica could use is a success: a page that
        // breaks the protocol counts as a failure, backed off from like an
        // unreadable one (else every retry would be the first).
        if r.is_ok() {
            self.on_success(st);
        }
        self.set_status(|s| s.syncing = false);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn on_changes(
        &self,
        st: &mut NetState,
        since: u64,
        stored_cursor: u64,
        known_head: Option<u64>,
        resp: ChangesResponse,
        wait: Duration,
        elapsed: Duration,
    ) -> Result<bool, Error> {
        if let Some(pi) = resp.poll_interval {
            st.server_floor = Some(pi);
        }
        let now = self.clock.now();
        let (progress, more, anomaly) = match resp.outcome {
            ChangesOutcome::NotModified => {
                // 304 means nothing after `since`: the head is the cursor.
                // Written only when it differs: an idle probe should not
                // cost a disk sync.
                if known_head != Some(since) && since >= stored_cursor {
                    self.store.commit(Commit {
                        head: Some(since),
                        ..Default::default()
                    })?;
                }
                st.seen = Some(since);
                (false, false, false)
            }
            ChangesOutcome::Page(page) => {
                let ordered = page.changes.windows(2).all(|w| w[0].seq < w[1].seq);
                let within = page
                    .changes
                    .iter()
                    .all(|c| c.seq > since && c.seq <= page.next);
                if page.next < since || page.next > page.head || !ordered || !within {
                    return Err(Error::Protocol(format!(
                        "changes since {since} answered a page that breaks the protocol \
                         (next {}, head {}, entries out of order or outside since..=next)",
                        page.next, page.head
                    )));
                }
                let writes: Vec<DocWrite> = page
                    .changes
                    .iter()
                    .map(|c| DocWrite {
                        collection: c.collection.clone(),
                        id: c.id.clone(),
                        version: c.version,
                        value: (c.op != Op::Delete).then(|| c.value.clone()),
                        updated_at: c.ts.clone(),
                    })
                    .collect();
                let result = self.store.commit(Commit {
                    docs: writes,
                    cursor: Some(page.next),
                    cursor_from: Some(since),
                    head: Some(page.head),
                    ..Default::default()
                })?;
                for (c, outcome) in page.changes.iter().zip(result.docs) {
                    // Not yet told here (a page may repeat what this
                    // handle read when the storage's cursor lagged it).
                    let fresh = st.seen.is_none_or(|seen| c.seq > seen);
                    let key = (c.collection.clone(), c.id.clone());
                    let announced = match st.announced_local.get(&key) {
                        Some(&v) if v <= c.version => {
                            st.announced_local.remove(&key);
                            v == c.version
                        }
                        _ => false,
                    };
                    let publish = match outcome {
                        WriteOutcome::Applied { was_live } => c.op != Op::Delete || was_live,
                        // Stored by another handle first (its own write's
                        // result, or its read of the feed).
                        WriteOutcome::Same => fresh && !announced,
                        // Another handle read the feed past it; the latest
                        // change of a document still reaches subscribers
                        // here, a delete included.
                        WriteOutcome::BelowCursor => fresh,
                        // A newer version is stored: that one is (or was)
                        // announced instead.
                        WriteOutcome::Superseded => false,
                    };
                    if publish {
                        self.bus.publish(ChangeEvent {
                            op: if c.op == Op::Delete {
                                Op::Delete
                            } else {
                                Op::Put
                            },
                            collection: c.collection.clone(),
                            id: c.id.clone(),
                            version: c.version,
                            value: (c.op != Op::Delete).then(|| c.value.clone()),
                            ts: c.ts.clone(),
                            origin: Origin::Remote,
                        });
                    }
                }
                st.seen = Some(st.seen.map_or(page.next, |seen| seen.max(page.next)));
                let progress = page.next > since;
                // Entries that do not move the cursor, or a head ahead of a
                // page that brought nothing, would make us re-ask at once.
                let anomaly = !progress && (!page.changes.is_empty() || page.head > since);
                (progress, progress && page.next < page.head, anomaly)
            }
            ChangesOutcome::CursorExpired if since < stored_cursor => {
                // This handle fell behind the retained log while another
                // one kept the storage current: the replica needs no
                // resync, this handle goes on from the storage's cursor
                // (the changes in between are not announced here).
                st.seen = None;
                return Ok(false);
            }
            ChangesOutcome::CursorAhead | ChangesOutcome::CursorExpired => {
                let reason = if matches!(resp.outcome, ChangesOutcome::CursorAhead) {
                    ResyncReason::CursorAhead
                } else {
                    ResyncReason::CursorExpired
                };
                self.store.commit(Commit {
                    needs_resync: Some(true),
                    ..Default::default()
                })?;
                st.resync_reason = Some(reason);
                // A server whose listing hands out a cursor it then refuses
                // would make us resync in a loop: back off from the second
                // refusal in a row.
                st.resyncs_in_row = st.resyncs_in_row.saturating_add(1);
                if st.resyncs_in_row > 1 {
                    self.hold_off(st, now, st.resyncs_in_row - 2);
                }
                self.refresh_status();
                return Ok(false);
            }
        };
        st.resyncs_in_row = 0;
        self.refresh_status();
        let idle_answer = !progress && !anomaly;
        // A long-poll answered with nothing sooner than its hold (or the
        // configured minimum, if shorter) was not held.
        let premature = wait > Duration::ZERO
            && idle_answer
            && elapsed < self.config.min_hold.min(resp.wait_applied.unwrap_or(wait));
        if wait > Duration::ZERO {
            self.judge_holding(st, resp.wait_applied, idle_answer, premature);
        }
        // Tight-loop guard: an early answer from a server that says it holds
        // (a restarting or draining server ends holds early), or an
        // anomalous page, is a stall. A couple are tolerated; after that we
        // back off with jitter instead of hammering. Early answers from a
        // server that does not hold are paced by the poll schedule instead.
        let stall = anomaly || (premature && resp.wait_applied.is_some_and(|w| !w.is_zero()));
        if progress {
            st.stalls = 0;
            st.schedule.activity();
        } else if stall {
            st.stalls = st.stalls.saturating_add(1);
            if st.stalls > self.config.stall_tolerance {
                self.hold_off(st, now, st.stalls - self.config.stall_tolerance - 1);
            }
        } else {
            st.stalls = 0;
        }
        let mode = self.mode();
        if self.polling(mode) == Polling::SmartPoll {
            st.next_poll = if more {
                now
            } else {
                let floor = self.floor(st);
                // Live mode keeps a change's delay within about what a
                // long-poll's hold would be; the server's floor still wins,
                // so an operator who turns holds off keeps control of the
                // request rate through `X-Poll-Interval`.
                now + match mode {
                    Mode::Live => {
                        st.schedule
                            .next_interval_capped(self.config.live_wait, floor, &mut st.rng)
                    }
                    Mode::Battery => st.schedule.next_interval(floor, &mut st.rng),
                }
            };
        }
        Ok(progress)
    }

    /// Decide from a long-poll's answer whether the server holds requests
    /// (DESIGN.md: `Prefer: wait` is answered with `Preference-Applied`).
    fn judge_holding(
        &self,
        st: &mut NetState,
        wait_applied: Option<Duration>,
        idle_answer: bool,
        premature: bool,
    ) {
        match wait_applied {
            // Said outright: the server is configured not to hold.
            Some(w) if w.is_zero() => self.set_no_hold(true),
            Some(_) => {
                st.unheld = 0;
                self.set_no_hold(false);
            }
            // Silent (a proxy or server that ignores `Prefer`): only the
            // timing of empty answers tells. A few early ones are tolerated
            // (a restarting server ends holds early too).
            None if idle_answer => {
                if premature {
                    st.unheld = st.unheld.saturating_add(1);
                    if st.unheld > self.config.stall_tolerance {
                        self.set_no_hold(true);
                    }
                } else {
                    st.unheld = 0;
                    self.set_no_hold(false);
                }
            }
            // Changes or a broken page say nothing about holding.
            None => {}
        }
    }

    // --------------------------------------------------------------- flush

    /// Send one batch of queued mutations and settle each result. Besides
    /// the report, the error of the first item that failed temporarily (it
    /// and the items after it that failed so stay queued), if any; the
    /// caller records it (`on_write_failure`).
    pub async fn flush_step(
        &self,
        st: &mut NetState,
    ) -> Result<(FlushReport, Option<Error>), Error> {
        let _queue_lock = self.lock_queue().await?;
        let first = self.store.pending(1)?;
        let Some(first) = first.first() else {
            return Ok((FlushReport::default(), None));
        };
        let limit = if first.seq <= st.isolate_until {
            1
        } else {
            self.config.batch_size.clamp(1, 100)
        };
        let mut batch = self.store.pending(limit)?;
        batch.truncate(batch_len(&batch));
        let body_bytes = fit_body(&mut batch, st.batch_bytes);
        self.set_status(|s| s.syncing = true);
        let resp = self.wire.mutations(&batch).await;
        self.set_status(|s| s.syncing = false);
        match resp {
            Ok(resp) => {
                self.on_success(st);
                let (report, transient) = self.settle_batch(st, &batch, resp.results, resp.head)?;
                if report.delivered.is_empty() && report.parked.is_empty() && transient.is_none() {
                    return Err(Error::Protocol(
                        "mutation batch answered without results for its items".into(),
                    ));
                }
                if transient.is_none() {
                    self.on_write_success(st);
                }
                Ok((report, transient))
            }
            // A 400 or 415 that is no problem document of edgesync's came
            // from something on the way (a proxy, a firewall), and says
            // nothing about the items: they stay queued, retried after
            // back-off. (A foreign 413 is a proxy's smaller body limit:
            // smaller batches may pass it.)
            Err(Error::Server {
                status: status @ (400 | 413 | 415),
                problem,
                ..
            }) if status == 413 || !problem.kind.is_empty() => {
                // Still reachable: the batch itself was refused.
                self.on_success(st);
                self.on_write_success(st);
                if batch.len() > 1 {
                    if status == 413 {
                        // Too big as a whole: send batches that fit (the
                        // server names its limit; a proxy does not, so
                        // halve). An item too big alone ends up alone.
                        let told = problem
                            .extensions
                            .get("max_body_bytes")
                            .and_then(serde_json::Value::as_u64)
                            .and_then(|n| usize::try_from(n).ok())
                            .filter(|&n| n < body_bytes);
                        st.batch_bytes = told.unwrap_or(body_bytes / 2);
                    } else {
                        // One bad item refuses the whole batch; send one
                        // at a time up to the end of this batch to find it.
                        st.isolate_until = batch.last().map_or(0, |p| p.seq);
                    }
                    return Ok((FlushReport::default(), None));
                }
                let parked = ParkedMutation {
                    pending: batch[0].clone(),
                    reason: ParkReason::Rejected {
                        status,
                        problem: Some(problem),
                    },
                };
                self.store.commit(Commit {
                    park: vec![(parked.pending.seq, parked.reason.clone())],
                    ..Default::default()
                })?;
                let _ = self.events.send(SyncEvent::Rejected(parked.clone()));
                self.refresh_status();
                Ok((
                    FlushReport {
                        delivered: vec![],
                        parked: vec![parked],
                    },
                    None,
                ))
            }
            Err(Error::Server {
                status: status @ (429 | 503),
                problem,
                retry_after,
            }) => {
                // The batch stopped at an item worth retrying; the answer
                // settles the items before it. Settle them here: sent again,
                // an item refused for good would be evaluated afresh, after
                // the items that followed it.
                let settled = settled_before_stop(&problem);
                let error = Error::Server {
                    status,
                    problem,
                    retry_after,
                };
                if settled.is_empty() {
                    return Err(error);
                }
                let whole_batch = settled.len() == batch.len();
                self.on_success(st);
                let (report, transient) = self.settle_batch(st, &batch, settled, None)?;
                if whole_batch && transient.is_none() {
                    // Every item was settled; the server failed only after
                    // them (reading the head): this flush worked.
                    self.on_write_success(st);
                    return Ok((report, None));
                }
                Ok((report, Some(error)))
            }
            Err(e) => Err(e),
        }
    }

    /// Take the storage's queue lock, if it has one (see
    /// [`Storage::queue_lock_file`]); released when the file is dropped.
    /// Waits for another process's flush to end, on a blocking thread.
    async fn lock_queue(&self) -> Result<Option<std::fs::File>, Error> {
        let Some(path) = self.store.queue_lock_file().map(Path::to_path_buf) else {
            return Ok(None);
        };
        let locked = tokio::task::spawn_blocking(move || {
            let file = open_private(&path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|locked| locked)
        .map_err(StorageError::from)?;
        Ok(Some(locked))
    }

    pub(crate) fn after_flush(&self, st: &mut NetState, report: &FlushReport) {
        if !report.delivered.is_empty() {
            st.schedule.activity();
            let soon = self.clock.now() + self.floor(st);
            st.next_poll = st.next_poll.min(soon);
        }
    }

    /// Apply a batch's results in one commit. Returns the report and, if
    /// some items failed temporarily (they stay queued), the first one's
    /// error.
    fn settle_batch(
        &self,
        st: &mut NetState,
        batch: &[PendingMutation],
        results: Vec<ItemResult>,
        head: Option<u64>,
    ) -> Result<(FlushReport, Option<Error>), Error> {
        let mut commit = Commit {
            head,
            ..Default::default()
        };
        let mut report = FlushReport::default();
        let mut transient = None;
        let mut local = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let r = results
                .get(i)
                .filter(|r| r.id == p.key)
                .or_else(|| results.iter().find(|r| r.id == p.key));
            let Some(r) = r else { continue };
            match classify(p, r) {
                Settled::Delivered(d, write) => {
                    commit.remove.push(p.seq);
                    if let Some(w) = write {
                        local.push(commit.docs.len());
                        commit.docs.push(w);
                    }
                    report.delivered.push(d);
                }
                Settled::Parked(reason) => {
                    commit.park.push((p.seq, reason.clone()));
                    report.parked.push(ParkedMutation {
                        pending: p.clone(),
                        reason,
                    });
                }
                Settled::Transient => {
                    transient.get_or_insert_with(|| item_error(r));
                }
            }
        }
        let result = self.store.commit(commit.clone())?;
        self.publish_local(st, &commit.docs, &result.docs);
        for d in &report.delivered {
            let _ = self.events.send(SyncEvent::Delivered {
                key: d.key.clone(),
                status: d.status,
                version: d.version,
                replayed: d.replayed,
            });
        }
        for p in &report.parked {
            let ev = match p.reason {
                ParkReason::Conflict { .. } => SyncEvent::Conflict(p.clone()),
                ParkReason::Rejected { .. } => SyncEvent::Rejected(p.clone()),
            };
            let _ = self.events.send(ev);
        }
        self.refresh_status();
        Ok((report, transient))
    }

    fn publish_local(&self, st: &mut NetState, writes: &[DocWrite], outcomes: &[WriteOutcome]) {
        for (w, outcome) in writes.iter().zip(outcomes) {
            if let WriteOutcome::Applied { was_live } = outcome {
                let key = (w.collection.clone(), w.id.clone());
                let latest = st.announced_local.entry(key).or_insert(w.version);
                *latest = (*latest).max(w.version);
                if w.value.is_none() && !was_live {
                    continue;
                }
                self.bus.publish(ChangeEvent {
                    op: if w.value.is_some() {
                        Op::Put
                    } else {
                        Op::Delete
                    },
                    collection: w.collection.clone(),
                    id: w.id.clone(),
                    version: w.version,
                    value: w.value.clone(),
                    ts: w.updated_at.clone(),
                    origin: Origin::Local,
                });
            }
        }
    }

    /// Send one mutation outside the queue (fail-fast).
    pub async fn send_now(
        &self,
        st: &mut NetState,
        pending: PendingMutation,
    ) -> Result<SendOutcome, Error> {
        let resp = match self.wire.mutations(std::slice::from_ref(&pending)).await {
            // The batch stopped after settling its one item (the server
            // applied it, then could not read the head): the item's result
            // is in the answer, and it was applied.
            Err(Error::Server {
                status: status @ (429 | 503),
                problem,
                retry_after,
            }) => {
                let results = settled_before_stop(&problem);
                if !results.iter().any(|r| r.id == pending.key) {
                    return Err(Error::Server {
                        status,
                        problem,
                        retry_after,
                    });
                }
                self.on_success(st);
                BatchResponse {
                    results,
                    head: None,
                }
            }
            resp => self.settle(st, resp)?,
        };
        let r = resp
            .results
            .iter()
            .find(|r| r.id == pending.key)
            .ok_or_else(|| Error::Protocol("no result for the mutation".into()))?;
        match classify(&pending, r) {
            Settled::Delivered(d, write) => {
                if let Some(w) = write {
                    let result = self.store.commit(Commit {
                        docs: vec![w.clone()],
                        head: resp.head,
                        ..Default::default()
                    })?;
                    self.publish_local(st, &[w], &result.docs);
                }
                Ok(SendOutcome::Delivered(d))
            }
            Settled::Parked(reason) => Ok(SendOutcome::Refused(ParkedMutation { pending, reason })),
            Settled::Transient => Err(item_error(r)),
        }
    }
}

fn polling(mode: Mode, no_hold: bool) -> Polling {
    if mode == Mode::Battery || no_hold {
        Polling::SmartPoll
    } else {
        Polling::LongPoll
    }
}

/// Whether reading may still work after a flush failed with `e`: the server
/// answered (a 403 from a proxy, a 429, a 5xx on writes, a bad answer), as
/// opposed to not being reachable at all, or the local store failing.
fn reads_may_work(e: &Error) -> bool {
    !matches!(e, Error::Unreachable(_) | Error::Storage(_))
}

/// The error of a batch item that failed temporarily (an item-level 429 or
/// 5xx: with the current server's batches a whole-response 503 instead, so
/// this is a defence).
fn item_error(r: &ItemResult) -> Error {
    Error::Server {
        status: r.status,
        problem: r.problem.clone().unwrap_or_else(|| crate::model::Problem {
            title: "mutation failed temporarily".into(),
            status: r.status,
            ..Default::default()
        }),
        retry_after: None,
    }
}

/// Make the next smart-poll probe due now.
pub(crate) fn poll_now(st: &mut NetState, now: Duration) {
    st.next_poll = now;
}

enum Settled {
    Delivered(Delivered, Option<DocWrite>),
    Parked(ParkReason),
    Transient,
}

fn classify(p: &PendingMutation, r: &ItemResult) -> Settled {
    match r.status {
        200 | 201 | 204 => {
            let write = match (&r.document, p.mutation.op) {
                (Some(doc), _) => Some(DocWrite {
                    collection: doc.collection.clone(),
                    id: doc.id.clone(),
                    version: doc.version,
                    value: Some(doc.value.clone()),
                    updated_at: doc.updated_at.clone(),
                }),
                (None, Op::Delete) => r.version.map(|version| DocWrite {
                    collection: p.mutation.collection.clone(),
                    id: p.mutation.id.clone(),
                    version,
                    value: None,
                    updated_at: None,
                }),
                (None, _) => None,
            };
            Settled::Delivered(
                Delivered {
                    key: p.key.clone(),
                    status: r.status,
                    version: r.version.or(r.document.as_ref().map(|d| d.version)),
                    document: r.document.clone(),
                    replayed: r.replayed,
                },
                write,
            )
        }
        412 => Settled::Parked(ParkReason::Conflict {
            current_version: r
                .problem
                .as_ref()
                .and_then(|p| p.extensions.get("current_version"))
                .and_then(|v| v.as_u64()),
            problem: r.problem.clone(),
        }),
        400 | 404 | 409 | 413 | 415 | 422 => Settled::Parked(ParkReason::Rejected {
            status: r.status,
            problem: r.problem.clone(),
        }),
        _ => Settled::Transient,
    }
}

/// The results of the items a batch settled before the refusal worth
/// retrying (429, 503) that stopped it, as that refusal lists them.
fn settled_before_stop(problem: &crate::model::Problem) -> Vec<ItemResult> {
    problem
        .extensions
        .get("results")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default()
}

/// The body limit the contract gives servers by default (DESIGN.md).
const DEFAULT_BATCH_BYTES: usize = 256 * 1024;

/// Shorten `batch` to the items whose request body stays within
/// `max_bytes` (at least one: an item too big alone is the server's to
/// refuse), and return that body's size in bytes.
fn fit_body(batch: &mut Vec<PendingMutation>, max_bytes: usize) -> usize {
    // `{"mutations":[` … `]}`, and a comma between items.
    let mut bytes = r#"{"mutations":[]}"#.len();
    for (i, pending) in batch.iter().enumerate() {
        let item = serde_json::to_vec(&crate::wire::batch_item(pending)).map_or(0, |v| v.len());
        let more = item + usize::from(i > 0);
        if i > 0 && bytes + more > max_bytes {
            batch.truncate(i);
            break;
        }
        bytes += more;
    }
    bytes
}

/// How many of `queue`'s first items may share one batch. A batch whose
/// answer is lost is sent again whole, and the server remembers only the
/// mutations it applied: an item it refused is judged again. So an item
/// whose outcome depends on its document's state (a patch or delete: the
/// document must exist; anything with `if_version`) must not share a batch
/// with a later item on the same document, or its second judgement would
/// see that later item (a patch refused for a missing document, applied
/// after the put behind it). Unconditional puts depend on no state and
/// batch freely; so do items on different documents.
fn batch_len(queue: &[PendingMutation]) -> usize {
    let mut judged = HashSet::new();
    for (i, pending) in queue.iter().enumerate() {
        let m = &pending.mutation;
        let doc = (m.collection.as_str(), m.id.as_str());
        if judged.contains(&doc) {
            return i;
        }
        if m.op != Op::Put || m.if_version.is_some() {
            judged.insert(doc);
        }
    }
    queue.len()
}
