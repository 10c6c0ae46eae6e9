//! # edgesync-redis
//!
//! Redis/Valkey for native edgesync deployments of many instances sharing
//! one store: [`RedisKv`], edgesync's [`Kv`] trait over a multiplexed,
//! self-reconnecting connection, and [`ChangeBus`], which carries "user X's
//! log changed" between instances over Redis pub/sub so that a long-poll
//! held by one instance wakes when another commits.
//!
//! # How each KV operation maps to Redis
//!
//! * `get` / `get_many` / `set` / `delete_many`: `GET`, `MGET`, `SET`, `DEL`.
//! * `compare_and_swap`: one Lua script (atomic on the server, no `WATCH`):
//!   the key is replaced only if it exists and holds exactly `current`.
//! * `increment`: a Lua script around `INCRBY`. `INCRBY` creates absent
//!   counters as ASCII decimal, which the core's `decode_counter` reads. The
//!   core advances counters with `compare_and_swap`, writing 8-byte binary
//!   values, and `INCRBY` refuses those ("not an integer"); so
//!   `increment(k, 0)` of an existing key returns its bytes unchanged
//!   instead of calling `INCRBY`, and a non-zero increment of a binary
//!   counter fails with a [`KvError`] (the core never asks for one).
//!
//! Connection failures and timeouts are [`KvErrorKind::Unavailable`].
//!
//! # The database is edgesync's
//!
//! Every key edgesync writes is under a user's `u/<escaped id>/` prefix, and
//! edgesync's keys carry no prefix of their own, so it needs a database to
//! itself. [`RedisKv::connect`] checks that: a database marked as
//! edgesync's (the key `edgesync/store`) is used as it is; an unmarked one
//! is marked if the first keys it holds (up to 10,000, by `SCAN`) are all
//! edgesync's, and refused otherwise, naming a foreign key. It also warns
//! (through `tracing`) when the server keeps nothing across a restart.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgesync_core::{Kv, KvError, KvErrorKind};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

#[cfg(feature = "testing")]
pub mod testing;

/// Longest wait for a connection or a reply before an operation fails as
/// unavailable (the core then answers 503 with `Retry-After`).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Marks a database as edgesync's; outside every user's `u/` prefix.
const MARKER: &str = "edgesync/store";

/// Keys looked at (by `SCAN`) before an unmarked database is claimed.
const CLAIM_SCAN_KEYS: usize = 10_000;

const CAS_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
else
  return 0
end";

const INCREMENT_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and ARGV[1] == '0' then
  return v
end
return redis.call('INCRBY', KEYS[1], ARGV[1])";

fn kv_error(context: &str, err: RedisError) -> KvError {
    // Server replies that mean "not now" (a replica catching up, a busy
    // script, a failover) are as retryable as a dropped connection.
    let transient = matches!(
        err.code(),
        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN")
    );
    let kind = if transient
        || err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        KvErrorKind::Unavailable
    } else {
        KvErrorKind::Other
    };
    KvError::new(kind, format!("redis {context}: {err}"))
}

fn open_client(url: &str) -> Result<redis::Client, KvError> {
    redis::Client::open(url).map_err(|e| {
        KvError::new(
            KvErrorKind::Other,
            format!("invalid redis url: {}", e.detail().unwrap_or("unparsable")),
        )
    })
}

async fn connection_manager(client: &redis::Client) -> Result<ConnectionManager, KvError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| {
            let mut err = kv_error("connect", e);
            if err.kind == KvErrorKind::Other {
                // What a server that is not Redis answers parses as
                // gibberish ("Unexpected `60`"): say what it likely means.
                err = KvError::new(
                    KvErrorKind::Other,
                    format!("{err} (is a Redis or Valkey server listening there?)"),
                );
            }
            err
        })
}

/// edgesync's [`Kv`] on Redis/Valkey. Cloning shares one multiplexed
/// connection, which reconnects by itself after failures.
#[derive(Clone)]
pub struct RedisKv {
    conn: ConnectionManager,
    cas: Arc<Script>,
    increment: Arc<Script>,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv").finish_non_exhaustive()
    }
}

impl RedisKv {
    /// Connect to `url` (`redis://host:port/db`; this build has no TLS, so
    /// not `rediss://`). Fails if the server cannot be reached now.
    ///
    /// Refuses a database that holds keys that are not edgesync's (see the
    /// crate docs), and warns when the server has persistence off.
    pub async fn connect(url: &str) -> Result<Self, KvError> {
        let client = open_client(url)?;
        let kv = Self {
            conn: connection_manager(&client).await?,
            cas: Arc::new(Script::new(CAS_SCRIPT)),
            increment: Arc::new(Script::new(INCREMENT_SCRIPT)),
        };
        kv.claim_database().await?;
        kv.warn_if_volatile().await;
        Ok(kv)
    }

    /// Use a database marked as edgesync's; mark an unmarked one whose keys
    /// are all edgesync's (a new database, or one whose server restarted
    /// empty and took writes since); refuse one that holds other keys.
    async fn claim_database(&self) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        let marked: bool = redis::cmd("EXISTS")
            .arg(MARKER)
            .query_async(&mut conn)
            .await
            .map_err(|e| kv_error("EXISTS", e))?;
        if marked {
            return Ok(());
        }
        let mut cursor = 0u64;
        let mut seen = 0usize;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| kv_error("SCAN", e))?;
            // The marker itself may appear: a sibling instance starting at
            // the same moment has claimed the database since our EXISTS.
            if let Some(foreign) = keys
                .iter()
                .find(|k| !k.starts_with(b"u/") && k.as_slice() != MARKER.as_bytes())
            {
                return Err(KvError::new(
                    KvErrorKind::Other,
                    format!(
                        "this Redis database holds keys that are not edgesync's (for one, {:?}): \
                         give edgesync a database of its own (the /<db> of the URL), since its \
                         keys carry no prefix",
                        String::from_utf8_lossy(foreign)
                    ),
                ));
            }
            seen += keys.len();
            cursor = next;
            if cursor == 0 || seen >= CLAIM_SCAN_KEYS {
                break;
            }
        }
        redis::cmd("SET")
            .arg(MARKER)
            .arg(r#"{"format":1}"#)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| kv_error("SET", e))
    }

    /// Warn when the server keeps nothing across a restart: every document
    /// would be lost, and cursors and versions would be handed out again.
    /// Managed servers often refuse `CONFIG`: then nothing is said.
    async fn warn_if_volatile(&self) {
        let config = |name: &'static str| {
            let mut conn = self.conn.clone();
            async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async::<Vec<String>>(&mut conn)
                    .await
                    .ok()
                    .and_then(|pair| pair.into_iter().nth(1))
            }
        };
        let (aof, save) = (config("appendonly").await, config("save").await);
        if let (Some(aof), Some(save)) = (aof, save) {
            if aof == "no" && save.trim().is_empty() {
                tracing::warn!(
                    "Redis has persistence off (appendonly no, no save points): a Redis restart \
                     loses every document, and clients' cursors and versions would be reused; \
                     turn on appendonly (see the README, \"Many native instances\")"
                );
            }
        }
    }
}

/// Whether a command failed because the connection broke under it (the
/// server closed an idle client, a network blip): the connection manager
/// reconnects on such an error but does not resend, so the first command
/// after every drop would fail.
fn connection_broke(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error()
}

/// Run `command` on a clone of `conn`, and once more after the connection
/// broke under it. Only for commands that may run twice: reads, `SET` of
/// an immutable value, `DEL`, an increment by zero.
async fn once_more<T, F, Fut>(conn: &ConnectionManager, command: F) -> Result<T, RedisError>
where
    F: Fn(ConnectionManager) -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    match command(conn.clone()).await {
        // A server that did not answer in time would not answer a second
        // try sooner: that would only double the wait before the 503.
        Err(e) if connection_broke(&e) && !e.is_timeout() => command(conn.clone()).await,
        done => done,
    }
}

/// A counter as `INCRBY` stores it (ASCII decimal) or as the core writes it
/// (8-byte little-endian).
fn decode_i64(bytes: &[u8]) -> Option<i64> {
    if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
        return Some(i64::from_le_bytes(raw));
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

impl RedisKv {
    async fn swap_script(&self, key: &str, current: &[u8], new: &[u8]) -> Result<i64, RedisError> {
        let mut conn = self.conn.clone();
        self.cas
            .key(key)
            .arg(current)
            .arg(new)
            .invoke_async(&mut conn)
            .await
    }
}

impl Kv for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        once_more(&self.conn, |mut conn| async move {
            redis::cmd("GET").arg(key).query_async(&mut conn).await
        })
        .await
        .map_err(|e| kv_error("GET", e))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = once_more(&self.conn, |mut conn| async move {
            redis::cmd("MGET").arg(keys).query_async(&mut conn).await
        })
        .await
        .map_err(|e| kv_error("MGET", e))?;
        if values.len() != keys.len() {
            return Err(KvError::new(
                KvErrorKind::Other,
                format!("redis MGET: {} keys, {} values", keys.len(), values.len()),
            ));
        }
        Ok(values)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        once_more(&self.conn, |mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async(&mut conn)
                .await
        })
        .await
        .map_err(|e| kv_error("SET", e))
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        if keys.is_empty() {
            return Ok(());
        }
        once_more(&self.conn, |mut conn| async move {
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
        .map_err(|e| kv_error("DEL", e))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        let err = match self.swap_script(key, current, new).await {
            Ok(swapped) => return Ok(swapped == 1),
            Err(e) if connection_broke(&e) => e,
            Err(e) => return Err(kv_error("compare-and-swap script", e)),
        };
        // The connection broke: the script may or may not have run. The
        // key tells (the core only swaps in values no other writer
        // produces): `new` means it ran, `current` that it did not (send it
        // again), anything else that another writer moved the key on.
        match self.get(key).await {
            Ok(Some(now)) if now == new => Ok(true),
            Ok(Some(now)) if now == current => self
                .swap_script(key, current, new)
                .await
                .map(|swapped| swapped == 1)
                .map_err(|e| kv_error("compare-and-swap script", e)),
            Ok(_) => Ok(false),
            Err(_) => Err(kv_error("compare-and-swap script", err)),
        }
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let run = |mut conn: ConnectionManager| async move {
            self.increment
                .key(key)
                .arg(delta)
                .invoke_async::<Value>(&mut conn)
                .await
        };
        // An increment by zero (the core's "create if absent") may run twice.
        let value = if delta == 0 {
            once_more(&self.conn, run).await
        } else {
            run(self.conn.clone()).await
        }
        .map_err(|e| kv_error("increment script", e))?;
        match value {
            Value::Int(n) => Ok(n),
            Value::BulkString(bytes) => decode_i64(&bytes).ok_or_else(|| {
                KvError::new(
                    KvErrorKind::Other,
                    format!("increment of {key:?}: the value is not a counter"),
                )
            }),
            other => Err(KvError::new(
                KvErrorKind::Other,
                format!("increment of {key:?}: unexpected reply {other:?}"),
            )),
        }
    }
}

// ------------------------------------------------------------ change bus

/// What the [`ChangeBus`] reports to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeEvent<'a> {
    /// Another instance committed change `seq` to `user`'s log.
    Changed {
        /// The opaque user topic passed to [`ChangeBus::publish`].
        user: &'a str,
        /// The change's sequence number.
        seq: u64,
    },
    /// Changes may have been missed — the subscription was (re)established
    /// after a gap, or another instance could not announce some of its
    /// changes: wake every local waiter.
    MaybeMissed,
}

/// Most announcements queued for publishing; beyond that they are dropped
/// (remote waiters then wake at their deadline instead).
const PUBLISH_QUEUE: usize = 16 * 1024;
/// How often an idle subscription is checked with `PING`, so that a silently
/// dead connection is noticed and re-established.
const PING_EVERY: Duration = Duration::from_secs(15);

/// Cross-instance change notification over one Redis pub/sub channel per
/// database (`edgesync:changes:<db>`). Every instance receives every
/// announcement and ignores its own, which keeps subscription management
/// trivial; the cost is one message per change per instance.
pub struct ChangeBus {
    queue: mpsc::Sender<(String, u64)>,
    overflow_warned: AtomicBool,
    /// Set when an announcement was dropped for a full queue: the
    /// publisher then tells every instance it may have missed changes.
    dropped: Arc<AtomicBool>,
    subscriber: JoinHandle<()>,
    publisher: std::sync::Mutex<Option<Publisher>>,
}

/// The publishing task and how to ask it to finish.
struct Publisher {
    task: JoinHandle<()>,
    finish: oneshot::Sender<()>,
}

/// How long [`ChangeBus::close`] waits for queued announcements to go out.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);

impl std::fmt::Debug for ChangeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeBus").finish_non_exhaustive()
    }
}

type OnEvent = Arc<dyn Fn(ChangeEvent<'_>) + Send + Sync>;

impl ChangeBus {
    /// Connect to `url`, subscribe, and call `on_event` for every change
    /// announced by other instances. Returns once the subscription is live,
    /// so announcements made after `start` returns are not missed. Must be
    /// called inside a tokio runtime (it spawns the publisher and
    /// subscriber tasks).
    pub async fn start(
        url: &str,
        on_event: impl Fn(ChangeEvent<'_>) + Send + Sync + 'static,
    ) -> Result<Self, KvError> {
        let client = open_client(url)?;
        let channel = format!(
            "edgesync:changes:{}",
            client.get_connection_info().redis_settings().db()
        );
        let instance = instance_id();
        let publisher = connection_manager(&client).await?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let subscriber = tokio::spawn(subscribe_loop(
            client,
            channel.clone(),
            instance,
            Arc::new(on_event),
            ready_tx,
        ));
        match tokio::time::timeout(TIMEOUT * 2, ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                subscriber.abort();
                return Err(e);
            }
            Ok(Err(_)) | Err(_) => {
                subscriber.abort();
                return Err(KvError::new(
                    KvErrorKind::Unavailable,
                    "redis SUBSCRIBE: no confirmation",
                ));
            }
        }
        let (queue, rx) = mpsc::channel(PUBLISH_QUEUE);
        let (finish, finishing) = oneshot::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(publish_loop(
            publisher,
            channel,
            instance,
            rx,
            Arc::clone(&dropped),
            finishing,
        ));
        Ok(Self {
            queue,
            overflow_warned: AtomicBool::new(false),
            dropped,
            subscriber,
            publisher: std::sync::Mutex::new(Some(Publisher { task, finish })),
        })
    }

    /// Announce that `user`'s log changed to `seq`. Never blocks: the
    /// announcement is queued and published in the background.
    pub fn publish(&self, user: &str, seq: u64) {
        match self.queue.try_send((user.to_owned(), seq)) {
            Ok(()) => self.overflow_warned.store(false, Ordering::Relaxed),
            // Closed: the instance is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.store(true, Ordering::Relaxed);
                if !self.overflow_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "change announcements are backing up (is Redis reachable?); \
                         dropping some: remote long-polls may wait until their deadline"
                    );
                }
            }
        }
    }

    /// Stop subscribing, publish what is queued (for at most a couple of
    /// seconds: the announcements of the last writes a shutting-down
    /// instance acknowledged wake long-polls on the others now, not at
    /// their deadline), then stop publishing. Announcements made meanwhile
    /// are dropped.
    pub async fn close(&self) {
        self.subscriber.abort();
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(Publisher { mut task, finish }) = publisher else {
            return;
        };
        let _ = finish.send(());
        if tokio::time::timeout(FLUSH_ON_CLOSE, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("change announcements still queued at shutdown were dropped");
            task.abort();
        }
    }
}

impl Drop for ChangeBus {
    fn drop(&mut self) {
        self.subscriber.abort();
        if let Some(publisher) = self
            .publisher
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            publisher.task.abort();
        }
    }
}

/// A random id for this process's bus, so that it can recognise (and skip)
/// its own announcements. Not a secret: std's randomly keyed hasher is
/// plenty.
fn instance_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// One message on the bus, from the instance whose id it carries.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    /// `user`'s log changed to `seq`.
    Changed { user: &'a str, seq: u64 },
    /// Some of the sender's announcements were lost (Redis was unreachable
    /// for it, or its queue overflowed): any user's log may have changed.
    Missed,
}

const MISSED: &str = "missed";

fn encode_message(instance: u64, message: &Message<'_>) -> String {
    match message {
        Message::Changed { user, seq } => format!("{instance:016x} {seq} {user}"),
        Message::Missed => format!("{instance:016x} {MISSED}"),
    }
}

fn decode_message(payload: &[u8]) -> Option<(u64, Message<'_>)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (instance, rest) = text.split_once(' ')?;
    let instance = u64::from_str_radix(instance, 16).ok()?;
    if rest == MISSED {
        return Some((instance, Message::Missed));
    }
    let (seq, user) = rest.split_once(' ')?;
    Some((
        instance,
        Message::Changed {
            user,
            seq: seq.parse().ok()?,
        },
    ))
}

async fn publish_loop(
    mut conn: ConnectionManager,
    channel: String,
    instance: u64,
    mut rx: mpsc::Receiver<(String, u64)>,
    dropped: Arc<AtomicBool>,
    mut finish: oneshot::Receiver<()>,
) {
    let mut finishing = false;
    // Announcements were lost: until the other instances have been told
    // (a `Missed` message, retried with back-off), their long-polls would
    // sleep through those changes to their deadline.
    let mut missed = false;
    let mut retry = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            biased;
            // Closed, the queue still hands out what it holds, then ends.
            _ = &mut finish, if !finishing => {
                finishing = true;
                rx.close();
                continue;
            }
            queued = rx.recv() => match queued {
                Some(announcement) => Some(announcement),
                None => return,
            },
            () = tokio::time::sleep(retry), if missed => None,
        };
        let mut pipe = redis::pipe();
        let mut publish = |message: Message<'_>| {
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(encode_message(instance, &message))
                .ignore();
        };
        if dropped.swap(false, Ordering::Relaxed) || missed {
            publish(Message::Missed);
        }
        // Pipeline whatever else is queued: one round trip for a burst.
        let queued = first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()).take(255));
        for (user, seq) in queued {
            publish(Message::Changed { user: &user, seq });
        }
        // Once more after the connection broke (the connection manager
        // reconnects but does not resend).
        let sent = match pipe.query_async::<()>(&mut conn).await {
            Err(e) if connection_broke(&e) => pipe.query_async::<()>(&mut conn).await,
            sent => sent,
        };
        match sent {
            Ok(()) => {
                missed = false;
                retry = Duration::from_millis(100);
            }
            Err(e) => {
                if !missed {
                    tracing::warn!(error = %e, "could not publish change announcements");
                }
                missed = true;
                retry = (retry * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn subscribe_loop(
    client: redis::Client,
    channel: String,
    instance: u64,
    on_event: OnEvent,
    ready: oneshot::Sender<Result<(), KvError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(&channel).await?;
            Ok::<_, RedisError>((sink, stream))
        };
        let (mut sink, mut stream) = match tokio::time::timeout(TIMEOUT, subscribed).await {
            Ok(Ok(pair)) => pair,
            failure => {
                let err = match failure {
                    Ok(Err(e)) => kv_error("SUBSCRIBE", e),
                    _ => KvError::new(KvErrorKind::Unavailable, "redis SUBSCRIBE timed out"),
                };
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(err));
                    return;
                }
                tracing::warn!(error = %err, "change subscription lost; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        match ready.take() {
            Some(ready) => {
                let _ = ready.send(Ok(()));
            }
            None => {
                tracing::info!("change subscription re-established");
                on_event(ChangeEvent::MaybeMissed);
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    match decode_message(msg.get_payload_bytes()) {
                        Some((from, _)) if from == instance => {}
                        Some((_, Message::Changed { user, seq })) => {
                            on_event(ChangeEvent::Changed { user, seq });
                        }
                        Some((_, Message::Missed)) => on_event(ChangeEvent::MaybeMissed),
                        None => tracing::debug!("ignoring malformed change announcement"),
                    }
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(TIMEOUT, sink.ping::<Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!("change subscription connection lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_any_user_topic() {
        for user in ["alice", "a b c", "u/a%2Fb", "", "missed"] {
            let changed = Message::Changed { user, seq: 42 };
            let msg = encode_message(0xdead_beef, &changed);
            assert_eq!(decode_message(msg.as_bytes()), Some((0xdead_beef, changed)));
        }
        let msg = encode_message(7, &Message::Missed);
        assert_eq!(decode_message(msg.as_bytes()), Some((7, Message::Missed)));
        assert_eq!(decode_message(b"nonsense"), None);
        assert_eq!(decode_message(b"zz 1 u"), None);
    }

    #[test]
    fn counters_decode_in_both_shapes() {
        assert_eq!(decode_i64(&7i64.to_le_bytes()), Some(7));
        assert_eq!(decode_i64(b"12"), Some(12));
        assert_eq!(decode_i64(b"-3"), Some(-3));
        assert_eq!(decode_i64(b"x"), None);
    }
}
