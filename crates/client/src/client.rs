use crate::backoff::{Backoff, Rng};
use crate::clock::{Clock, SystemClock};
use crate::engine::{FlushError, FlushReport, SendOutcome, Shared};
use crate::error::Error;
use crate::feed::ChangeFeed;
use crate::location::token_subject;
use crate::model::{
    ChangeEvent, Document, Mode, Mutation, Op, ParkReason, ParkedMutation, PendingMutation,
    Resolution, ResyncReason, Status, SyncEvent,
};
use crate::names;
use crate::storage::{
    Commit, MemoryStorage, Meta, NewMutation, SqliteStorage, Storage, StorageError,
};
use crate::wire::Wire;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Tunables of the sync engine. The defaults are what the crate docs' cost
/// figures are computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Initial mode (default [`Mode::Live`]).
    pub mode: Mode,
    /// How long a live-mode long-poll asks the server to hold (`Prefer:
    /// wait=`; default 25 s, the server's default maximum; the server clamps
    /// it). Also the jitter ceiling of live mode's smart polling on a server
    /// that does not hold.
    pub live_wait: Duration,
    /// Battery-mode idle schedule: the n-th idle wait is full jitter over
    /// `min(cap, base·2ⁿ)`, never below the server's `X-Poll-Interval`
    /// (default base 10 s, cap 240 s). Also paces a tight-loop back-off.
    pub idle: Backoff,
    /// Retry schedule after errors (default base 1 s, cap 60 s; in battery
    /// mode the cap is at least `idle.cap`, and while smart polling the
    /// poll floor applies). Failed flushes count on their own, so writes
    /// back off without holding up reads.
    pub retry: Backoff,
    /// Poll floor used until the server sends `X-Poll-Interval` (default 10
    /// s, the server's default advice).
    pub default_poll_interval: Duration,
    /// A long-poll that brings nothing and returns sooner than this (or than
    /// the hold the server granted, if shorter) was not held (default 1 s).
    pub min_hold: Duration,
    /// Early answers tolerated in a row before backing off (from a server
    /// that says it holds) or switching to smart polling (from one that
    /// does not say) (default 2).
    pub stall_tolerance: u32,
    /// Mutations per batch (default and maximum 100; a batch also keeps
    /// within 256 KiB, or the smaller body limit a 413 showed).
    pub batch_size: usize,
    /// Documents per listing page while bootstrapping (default 1000, the
    /// server's maximum).
    pub page_size: u32,
    /// Timeout of requests other than long-polls (default 30 s).
    pub request_timeout: Duration,
    /// Seed for jitter (default: from the OS). Set it to make back-off
    /// reproducible in tests.
    pub jitter_seed: Option<u64>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            mode: Mode::Live,
            live_wait: Duration::from_secs(25),
            idle: Backoff {
                base: Duration::from_secs(10),
                cap: Duration::from_secs(240),
            },
            retry: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
            default_poll_interval: Duration::from_secs(10),
            min_hold: Duration::from_secs(1),
            stall_tolerance: 2,
            batch_size: 100,
            page_size: 1000,
            request_timeout: Duration::from_secs(30),
            jitter_seed: None,
        }
    }
}

enum StorageChoice {
    /// SQLite at [`crate::default_replica_path`].
    Default,
    Sqlite(PathBuf),
    Custom(Arc<dyn Storage>),
}

/// Configures and opens a [`Client`].
pub struct ClientBuilder {
    url: String,
    token: String,
    storage: StorageChoice,
    clock: Option<Arc<dyn Clock>>,
    config: SyncConfig,
}

impl ClientBuilder {
    /// Keep the replica in a SQLite database at `path`. Without any storage
    /// choice, [`ClientBuilder::build`] opens SQLite at
    /// [`crate::default_replica_path`].
    pub fn sqlite(mut self, path: impl Into<PathBuf>) -> Self {
        self.storage = StorageChoice::Sqlite(path.into());
        self
    }

    /// Keep the replica in memory only.
    pub fn memory(mut self) -> Self {
        self.storage = StorageChoice::Custom(Arc::new(MemoryStorage::new()));
        self
    }

    /// Use any [`Storage`] implementation.
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = StorageChoice::Custom(Arc::new(storage));
        self
    }

    /// Use a shared [`Storage`].
    pub fn storage_arc(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = StorageChoice::Custom(storage);
        self
    }

    /// Use this clock for the engine's waits (tests: [`crate::VirtualClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Start in this mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Replace all tunables.
    pub fn config(mut self, config: SyncConfig) -> Self {
        self.config = config;
        self
    }

    /// Open the replica — by default the SQLite file of this server and the
    /// token's user in the user's data directory
    /// ([`crate::default_replica_path`]; [`Error::NoStorage`] if the token
    /// has no subject or no data directory is known). No request is made
    /// until [`Client::start`] or a one-shot operation.
    pub fn build(self) -> Result<Client, Error> {
        // Checked first: a URL that is no URL must not leave a replica
        // file behind.
        let server = crate::wire::normalize_url(&self.url)?;
        let store: Arc<dyn Storage> = match self.storage {
            StorageChoice::Default => Arc::new(SqliteStorage::open(
                crate::location::default_replica_path(&self.url, &self.token)?,
            )?),
            StorageChoice::Sqlite(path) => Arc::new(SqliteStorage::open(path)?),
            StorageChoice::Custom(s) => s,
        };
        // The replica's documents, cursor and queue are one user's on one
        // server: refuse to follow another server with them, or to send the
        // queue with another user's token.
        let user = token_subject(&self.token);
        let meta = store.bind(&server, user.as_deref())?;
        check_binding(&meta, &server, user.as_deref())?;
        let wire = Wire::new(&self.url, self.token, self.config.request_timeout)?;
        let mut rng = Rng::from_entropy();
        let candidate = format!("{:016x}", rng.next_u64());
        let replica_id = store.init_replica_id(&candidate)?;
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(SystemClock::default()));
        let shared = Arc::new(Shared::new(wire, store, clock, self.config, replica_id));
        shared.refresh_status();
        Ok(Client {
            shared,
            server,
            user_known: AtomicBool::new(meta.user.is_some()),
            task: Mutex::new(None),
        })
    }
}

/// A local replica of one user's documents, kept in sync with an edgesync
/// server. Cheap to share behind an `Arc`; all methods take `&self`.
///
/// Reads ([`Client::get`], [`Client::list`]) are local and never block on
/// the network. Writes are queued durably ([`Client::enqueue`]) and delivered
/// in order by the engine ([`Client::start`]) or by [`Client::flush`].
pub struct Client {
    shared: Arc<Shared>,
    /// The server's normalised URL, as the replica records it.
    server: String,
    /// The replica is bound to a user (queued mutations are someone's).
    user_known: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("replica_id", &self.shared.replica_id)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh idempotency key: this replica's random id and 64 random bits, so
/// keys never collide across replicas, restarts, or a re-created store.
fn new_key(replica_id: &str) -> String {
    let mut buf = [0u8; 8];
    if getrandom::getrandom(&mut buf).is_err() {
        buf = Rng::from_entropy().next_u64().to_le_bytes();
    }
    format!("{replica_id}-{:016x}", u64::from_le_bytes(buf))
}

/// Refuse a replica that [`Storage::bind`] says belongs to another server
/// or user than `server` and `user` (the token's `sub`).
fn check_binding(meta: &Meta, server: &str, user: Option<&str>) -> Result<(), Error> {
    if let Some(bound) = meta.server.as_deref().filter(|b| *b != server) {
        return Err(Error::WrongServer {
            replica: bound.to_string(),
            given: server.to_string(),
        });
    }
    if let Some(bound) = meta.user.as_deref().filter(|b| Some(*b) != user) {
        return Err(Error::WrongUser {
            replica: bound.to_string(),
            given: user.map(str::to_string),
        });
    }
    Ok(())
}

/// What [`Resolution::Overwrite`] queues for `m`, parked for `reason`:
/// the mutation again, never less conditional than it was, so that an edit
/// made meanwhile parks it again rather than being overwritten.
fn overwrite(mut m: Mutation, reason: &ParkReason) -> Result<Option<Mutation>, Error> {
    let gone = match reason {
        ParkReason::Conflict {
            current_version: Some(v),
            ..
        } => {
            m.if_version = Some(*v);
            return Ok(Some(m));
        }
        ParkReason::Conflict {
            current_version: None,
            ..
        } => true,
        ParkReason::Rejected { status, .. } => *status == 404,
    };
    if !gone {
        // Refused for what it is (a full collection, a document too
        // large…): the same mutation, under the same condition, once the
        // cause is gone.
        return Ok(Some(m));
    }
    match m.op {
        // Recreated only if it is still absent.
        Op::Put => {
            m.if_version = Some(0);
            Ok(Some(m))
        }
        // What it asked for is the server's state already.
        Op::Delete => Ok(None),
        Op::Patch => Err(Error::InvalidMutation(format!(
            "nothing to patch: {}/{} is gone on the server; discard the patch, or put the whole document",
            m.collection, m.id
        ))),
    }
}

fn validate(m: &Mutation) -> Result<(), Error> {
    names::check("collection", &m.collection)?;
    names::check("id", &m.id)?;
    match (m.op, &m.value) {
        (Op::Put | Op::Patch, None) => Err(Error::InvalidMutation(format!(
            "{} needs a value",
            m.op.as_str()
        ))),
        (Op::Delete, Some(_)) => Err(Error::InvalidMutation("delete takes no value".into())),
        _ => Ok(()),
    }
}

impl Client {
    /// Start configuring a client for the server at `url` (e.g.
    /// `https://sync.example.com`) acting with the bearer `token`.
    pub fn builder(url: impl Into<String>, token: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: token.into(),
            storage: StorageChoice::Default,
            clock: None,
            config: SyncConfig::default(),
        }
    }

    /// This replica's random id (the prefix of its idempotency keys).
    pub fn replica_id(&self) -> &str {
        &self.shared.replica_id
    }

    /// Spawn the sync engine on the current tokio runtime (idempotent).
    pub fn start(&self) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.shared.stopping.store(false, Ordering::SeqCst);
        self.shared.stop_tx.send_replace(false);
        *task = Some(tokio::spawn(self.shared.clone().run()));
    }

    /// Stop the engine and wait for it; an in-flight request is abandoned
    /// (the queue is durable, and delivery is idempotent).
    pub async fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop_tx.send_replace(true);
        self.shared.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Switch between live long-polling and battery-friendly polling.
    /// Switching to live also checks for changes at once (as
    /// [`Client::sync_now`]): a replica coming to the foreground should not
    /// wait out battery mode's back-off, even on a server that does not
    /// hold long-polls.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        let polling = self.shared.polling(mode);
        self.shared.set_status(|s| {
            s.mode = mode;
            s.polling = polling;
        });
        if mode == Mode::Live {
            self.sync_now();
        } else {
            self.shared.wake.notify_one();
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Replace the bearer token (e.g. after refreshing it); the next
    /// request carries it, and a sync is asked for at once ([`sync_now`]).
    /// A back-off already running after failed requests (a 401 included)
    /// runs out first.
    ///
    /// [`sync_now`]: Client::sync_now
    ///
    /// The new token must be for the replica's user (the same `sub`): a
    /// token for another user is refused with [`Error::WrongUser`] and the
    /// current one kept, since the queued mutations are the replica user's
    /// (open another replica for another user).
    pub fn set_token(&self, token: impl Into<String>) -> Result<(), Error> {
        let token = token.into();
        let user = token_subject(&token);
        let meta = self.shared.store.bind(&self.server, user.as_deref())?;
        check_binding(&meta, &self.server, user.as_deref())?;
        if user.is_some() {
            self.user_known.store(true, Ordering::Release);
        }
        self.shared.wire.set_token(token);
        self.sync_now();
        Ok(())
    }

    /// Ask the engine to act now: flush, and in battery mode poll now (e.g.
    /// when the app comes to the foreground or the network comes back). It
    /// does not override a server's `Retry-After`.
    pub fn sync_now(&self) {
        let shared = self.shared.clone();
        // try_lock: if a step holds the gate, it will see the wake-up anyway.
        if let Ok(mut st) = shared.gate.try_lock() {
            crate::engine::poll_now(&mut st, shared.clock.now());
        }
        self.shared.wake.notify_one();
    }

    // -------------------------------------------------------------- reads

    /// The local copy of a document (`None` if absent or deleted).
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, Error> {
        Ok(self
            .shared
            .store
            .get(collection, id)?
            .and_then(|d| d.into_document()))
    }

    /// Local documents, ordered by (collection, id), optionally of one
    /// collection.
    pub fn list(&self, collection: Option<&str>) -> Result<Vec<Document>, Error> {
        Ok(self
            .shared
            .store
            .list(collection)?
            .into_iter()
            .filter_map(|d| d.into_document())
            .collect())
    }

    // ------------------------------------------------------------- writes

    /// Queue a mutation durably and wake the engine. Its idempotency key is
    /// fixed now, so every later retry is recognised by the server.
    pub fn enqueue(&self, mutation: Mutation) -> Result<PendingMutation, Error> {
        validate(&mutation)?;
        if !self.user_known.load(Ordering::Acquire) {
            return Err(Error::UnknownUser);
        }
        let result = self.shared.store.commit(Commit {
            enqueue: vec![NewMutation {
                key: new_key(&self.shared.replica_id),
                mutation,
                enqueued_at_ms: now_ms(),
            }],
            ..Default::default()
        })?;
        self.shared.refresh_status();
        self.shared.wake.notify_one();
        result
            .enqueued
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol("storage did not enqueue".into()))
    }

    /// Queue a put. Last writer wins: it carries no precondition, so it
    /// replaces whatever the server holds when it arrives. For a conditional
    /// write (a concurrent edit then parks it as a [`SyncEvent::Conflict`]),
    /// [`Client::enqueue`] a [`Mutation::put`] with
    /// [`Mutation::if_version`].
    pub fn put(
        &self,
        collection: &str,
        id: &str,
        value: serde_json::Value,
    ) -> Result<PendingMutation, Error> {
        self.enqueue(Mutation::put(collection, id, value))
    }

    /// Queue a merge patch. Last writer wins, as [`Client::put`]; use
    /// [`Client::enqueue`] with [`Mutation::if_version`] to write
    /// conditionally.
    pub fn patch(
        &self,
        collection: &str,
        id: &str,
        patch: serde_json::Value,
    ) -> Result<PendingMutation, Error> {
        self.enqueue(Mutation::patch(collection, id, patch))
    }

    /// Queue a delete. Last writer wins, as [`Client::put`]; use
    /// [`Client::enqueue`] with [`Mutation::if_version`] to delete only the
    /// version the app saw.
    pub fn delete(&self, collection: &str, id: &str) -> Result<PendingMutation, Error> {
        self.enqueue(Mutation::delete(collection, id))
    }

    /// Mutations waiting to be delivered, in order.
    pub fn pending(&self) -> Result<Vec<PendingMutation>, Error> {
        Ok(self.shared.store.pending(usize::MAX)?)
    }

    /// Mutations waiting for the app's decision (conflicts and rejections).
    pub fn parked(&self) -> Result<Vec<ParkedMutation>, Error> {
        Ok(self.shared.store.parked()?)
    }

    /// Settle a parked mutation (by queue position). Returns the mutation
    /// queued in its place, if any; it gets a new idempotency key, because
    /// the server would refuse the old key with a different request.
    pub fn resolve(
        &self,
        seq: u64,
        resolution: Resolution,
    ) -> Result<Option<PendingMutation>, Error> {
        let parked = self
            .shared
            .store
            .parked()?
            .into_iter()
            .find(|p| p.pending.seq == seq)
            .ok_or(Error::NotParked(seq))?;
        let replacement = match resolution {
            Resolution::Discard => None,
            Resolution::Overwrite => overwrite(parked.pending.mutation.clone(), &parked.reason)?,
            Resolution::Replace(m) => Some(m),
        };
        if let Some(m) = &replacement {
            validate(m)?;
        }
        let result = self.shared.store.commit(Commit {
            unpark: Some(seq),
            enqueue: replacement
                .into_iter()
                .map(|mutation| NewMutation {
                    key: new_key(&self.shared.replica_id),
                    mutation,
                    enqueued_at_ms: now_ms(),
                })
                .collect(),
            ..Default::default()
        });
        let result = match result {
            // Settled meanwhile by another handle on the replica.
            Err(StorageError::NotParked(seq)) => return Err(Error::NotParked(seq)),
            other => other?,
        };
        self.shared.refresh_status();
        self.shared.wake.notify_one();
        Ok(result.enqueued.into_iter().next())
    }

    // ------------------------------------------------------------- events

    /// Changes to one collection's documents.
    pub fn subscribe(&self, collection: &str) -> broadcast::Receiver<ChangeEvent> {
        self.shared.bus.subscribe(collection)
    }

    /// Changes to any document.
    pub fn subscribe_all(&self) -> broadcast::Receiver<ChangeEvent> {
        self.shared.bus.subscribe_all()
    }

    /// Every change (or every change to `collection`), in order, none
    /// dropped: for consumers that must see each one, such as a log or
    /// `edgesync watch`. A feed that falls far behind ([`MAX_BACKLOG`]
    /// unread) holds the replica back until it catches up.
    ///
    /// [`MAX_BACKLOG`]: crate::MAX_BACKLOG
    pub fn changes(&self, collection: Option<&str>) -> ChangeFeed {
        self.shared.bus.feeds.subscribe(collection)
    }

    /// Deliveries, conflicts, rejections, resyncs, auth failures. Events are
    /// notifications: a receiver that lags loses some, but conflicts and
    /// rejections stay in [`Client::parked`] until resolved.
    pub fn events(&self) -> broadcast::Receiver<SyncEvent> {
        self.shared.events.subscribe()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// Status updates.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    // --------------------------------------------------- one-shot operations

    /// Deliver every queued mutation now (one batch after another), without
    /// the engine.
    ///
    /// Stops at the first failure, leaving the rest queued: the
    /// [`FlushError`] carries the report of what was delivered and parked
    /// before it (those results are stored and announced either way) and the
    /// error. A failure is not retried within the call; it sets the
    /// engine's back-off for writes (honouring `Retry-After`, which the
    /// error carries when the server sent one), and the caller decides when
    /// to try again.
    pub async fn flush(&self) -> Result<FlushReport, FlushError> {
        let mut st = self.shared.gate_for_app().await;
        let mut total = FlushReport::default();
        let mut idle_rounds = 0;
        loop {
            let pending = match self.shared.store.counts() {
                Ok(c) => c.pending,
                Err(e) => {
                    return Err(FlushError {
                        report: total,
                        error: e.into(),
                    })
                }
            };
            if pending == 0 {
                return Ok(total);
            }
            let (report, transient) = match self.shared.flush_step(&mut st).await {
                Ok(r) => r,
                Err(error) => {
                    self.shared.on_flush_failure(&mut st, &error);
                    return Err(FlushError {
                        report: total,
                        error,
                    });
                }
            };
            self.shared.after_flush(&mut st, &report);
            let progress = !report.delivered.is_empty() || !report.parked.is_empty();
            total.delivered.extend(report.delivered);
            total.parked.extend(report.parked);
            if let Some(error) = transient {
                // Some items failed temporarily: they wait out the back-off
                // just set instead of going out again at once.
                self.shared.on_write_failure(&mut st, &error);
                return Err(FlushError {
                    report: total,
                    error,
                });
            }
            // A round that only narrowed a refused batch down to find the bad
            // item is fine; several without progress in a row are not.
            idle_rounds = if progress { 0 } else { idle_rounds + 1 };
            if idle_rounds > 2 {
                return Err(FlushError {
                    report: total,
                    error: Error::Protocol("mutation batches make no progress".into()),
                });
            }
        }
    }

    /// Bring the replica up to date once, without the engine: bootstrap or
    /// resync if needed, read changes until caught up, then flush the queue.
    /// For scripts and tests. Reading comes first so that a server that
    /// refuses writes for now still lets the replica catch up (the write
    /// error is returned afterwards).
    pub async fn sync_once(&self) -> Result<(), Error> {
        self.pull().await?;
        self.flush().await?;
        Ok(())
    }

    async fn pull(&self) -> Result<(), Error> {
        let mut st = self.shared.gate_for_app().await;
        // Bounded: a resync plus catch-up pages; more means the server is
        // misbehaving.
        for _ in 0..10_000 {
            let meta = self.shared.store.meta()?;
            let cursor = match meta.cursor {
                Some(c) if !meta.needs_resync => c,
                _ => {
                    let reason = if meta.cursor.is_none() {
                        ResyncReason::Initial
                    } else {
                        ResyncReason::CursorExpired
                    };
                    self.shared.bootstrap(&mut st, reason).await?;
                    continue;
                }
            };
            let advanced = self
                .shared
                .poll(&mut st, cursor, meta.head, Duration::ZERO)
                .await?;
            let meta = self.shared.store.meta()?;
            if meta.needs_resync {
                if st.resyncs_in_row > 2 {
                    return Err(Error::Protocol(
                        "the server keeps refusing the cursor its own listing gave".into(),
                    ));
                }
                continue;
            }
            let caught_up = meta
                .head
                .is_none_or(|h| meta.cursor.is_some_and(|c| c >= h));
            if !advanced || caught_up {
                return Ok(());
            }
        }
        Err(Error::Protocol("changes feed did not catch up".into()))
    }

    /// Read one document straight from the server (and update the local copy
    /// if the server's is newer). `Ok(None)`: absent or deleted.
    pub async fn fetch(&self, collection: &str, id: &str) -> Result<Option<Document>, Error> {
        names::check("collection", collection)?;
        names::check("id", id)?;
        let _st = self.shared.gate_for_app().await;
        let doc = self.shared.wire.get_doc(collection, id).await?;
        if let Some(d) = &doc {
            self.shared.store.commit(Commit {
                docs: vec![crate::storage::DocWrite {
                    collection: d.collection.clone(),
                    id: d.id.clone(),
                    version: d.version,
                    value: Some(d.value.clone()),
                    updated_at: d.updated_at.clone(),
                }],
                ..Default::default()
            })?;
        }
        Ok(doc)
    }

    /// Send one mutation now, bypassing the queue (after flushing what is
    /// already queued, so order is kept). Nothing is stored if it fails: for
    /// callers that prefer an error to an offline queue.
    pub async fn send_now(&self, mutation: Mutation) -> Result<SendOutcome, Error> {
        validate(&mutation)?;
        self.flush().await?;
        let pending = PendingMutation {
            seq: 0,
            key: new_key(&self.shared.replica_id),
            mutation,
            enqueued_at_ms: now_ms(),
        };
        let mut st = self.shared.gate_for_app().await;
        self.shared.send_now(&mut st, pending).await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Dropping the client ends its engine; the queue stays in storage.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop_tx.send_replace(true);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conflict(current_version: Option<u64>) -> ParkReason {
        ParkReason::Conflict {
            current_version,
            problem: None,
        }
    }

    fn rejected(status: u16) -> ParkReason {
        ParkReason::Rejected {
            status,
            problem: None,
        }
    }

    fn condition(m: Mutation, reason: ParkReason) -> Option<Option<u64>> {
        overwrite(m, &reason).unwrap().map(|m| m.if_version)
    }

    /// Overwriting never makes a mutation less conditional than it was:
    /// an edit made meanwhile parks it again.
    #[test]
    fn overwrite_keeps_a_condition() {
        let put = || Mutation::put("t", "x", json!(1));
        assert_eq!(
            condition(put().if_version(3), conflict(Some(9))),
            Some(Some(9))
        );
        // Refused for what it was: again, as it was.
        assert_eq!(condition(put().if_version(5), rejected(409)), Some(Some(5)));
        assert_eq!(condition(put(), rejected(413)), Some(None));
        // Gone on the server: recreated only while it is still absent.
        assert_eq!(
            condition(put().if_version(3), conflict(None)),
            Some(Some(0))
        );
        // A delete of what is gone is done; a patch has nothing to apply to.
        let delete = || Mutation::delete("t", "x");
        assert_eq!(condition(delete().if_version(3), conflict(None)), None);
        assert_eq!(condition(delete(), rejected(404)), None);
        let patch = || Mutation::patch("t", "x", json!({"a": 1}));
        for reason in [conflict(None), rejected(404)] {
            let err = overwrite(patch(), &reason).unwrap_err();
            assert!(err.to_string().contains("nothing to patch"), "{err}");
        }
        assert_eq!(
            condition(patch().if_version(2), conflict(Some(4))),
            Some(Some(4))
        );
    }
}
