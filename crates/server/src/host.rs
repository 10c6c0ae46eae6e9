//! The native [`Host`]: wall clock, OS entropy, and change notification
//! through the in-process [`NotifyHub`] (plus Redis pub/sub when instances
//! share a Redis store).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgesync_core::Host;
use edgesync_redis::{ChangeBus, ChangeEvent};

use crate::hub::NotifyHub;

/// Longest a single wait is scheduled for: keeps `Instant + Duration` far
/// from overflow whatever deadline the caller passes (the core re-waits
/// after a spurious return).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Longest a writer waits for its user's turn before going ahead without
/// it. Turns only spare this instance's writers compare-and-swap races
/// (the core is correct without them): when the store stalls, the writer
/// holding the turn waits out its own store timeout, and a queue behind it
/// would add one timeout per writer ahead; with this bound every writer
/// answers within its own timeout plus this. Far above a turn's length in
/// normal operation (a commit takes a millisecond or so).
const TURN_PATIENCE: Duration = Duration::from_secs(2);

/// The native server's [`Host`]. Cloning shares the hub and the bus.
#[derive(Clone, Default)]
pub struct NativeHost {
    hub: NotifyHub,
    bus: Option<Arc<ChangeBus>>,
    writers: WriterTurns,
}

/// One async mutex per user with writes in flight on this instance: the
/// core takes a turn around each mutation, so this process's requests for
/// one user queue up instead of losing compare-and-swap races to each
/// other. Entries go away with their last holder.
#[derive(Clone, Default)]
struct WriterTurns(Arc<Mutex<TurnMap>>);

#[derive(Default)]
struct TurnMap {
    locks: HashMap<String, Weak<tokio::sync::Mutex<()>>>,
    /// Sweep finished users once the map grows past this (amortized O(1)).
    sweep_at: usize,
}

impl WriterTurns {
    fn turn(&self, user: &str) -> impl Future<Output = WriterTurn> + Send {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match map.locks.get(user).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if map.locks.len() >= map.sweep_at {
                        map.locks.retain(|_, w| w.strong_count() > 0);
                        map.sweep_at = 2 * map.locks.len() + 64;
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.locks.insert(user.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        async move {
            WriterTurn(
                tokio::time::timeout(TURN_PATIENCE, lock.lock_owned())
                    .await
                    .ok(),
            )
        }
    }
}

/// A user's writer turn on this instance (or, after [`TURN_PATIENCE`],
/// none: the writer goes ahead and may race); released on drop.
pub struct WriterTurn(
    // Held, never read: dropping it hands the turn to the next writer.
    #[allow(dead_code)] Option<tokio::sync::OwnedMutexGuard<()>>,
);

impl std::fmt::Debug for NativeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeHost")
            .field("hub", &self.hub)
            .field("redis_bus", &self.bus.is_some())
            .finish()
    }
}

impl NativeHost {
    /// A host that notifies waiters in this process only (SQLite store).
    pub fn local() -> Self {
        Self::default()
    }

    /// A host that also announces changes to, and hears them from, every
    /// other instance sharing the Redis/Valkey server at `url`.
    pub async fn with_redis(url: &str) -> Result<Self, edgesync_core::KvError> {
        let hub = NotifyHub::new();
        let local = hub.clone();
        let bus = ChangeBus::start(url, move |event| match event {
            ChangeEvent::Changed { user, .. } => local.notify(user),
            ChangeEvent::MaybeMissed => local.notify_all(),
        })
        .await?;
        Ok(Self {
            hub,
            bus: Some(Arc::new(bus)),
            writers: WriterTurns::default(),
        })
    }

    /// The in-process hub.
    pub fn hub(&self) -> &NotifyHub {
        &self.hub
    }

    /// Release every held wait now and from now on (graceful shutdown).
    pub fn shutdown(&self) {
        self.hub.shutdown();
    }

    /// Stop talking to Redis (after the server has drained), once the
    /// announcements still queued have gone out.
    pub async fn close(&self) {
        if let Some(bus) = &self.bus {
            bus.close().await;
        }
    }
}

impl Host for NativeHost {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn random_u64(&self) -> u64 {
        getrandom::u64().unwrap_or_else(|_| fallback_random())
    }

    fn wait_for_change(&self, user: &str, deadline_millis: u64) -> impl Future<Output = ()> + Send {
        let remaining = Duration::from_millis(deadline_millis.saturating_sub(self.now_millis()));
        // A named future, not an `async` block around one: that would hold
        // the wait twice over (its size is what every held long-poll costs).
        Discard {
            wait: self
                .hub
                .wait(user, tokio::time::Instant::now() + remaining.min(MAX_WAIT)),
        }
    }

    fn log_changed(&self, user: &str, seq: u64) {
        self.hub.notify(user);
        if let Some(bus) = &self.bus {
            bus.publish(user, seq);
        }
    }

    fn draining(&self) -> bool {
        self.hub.is_shut_down()
    }

    fn writer_turn(&self, user: &str) -> impl Future<Output = impl Send> + Send {
        self.writers.turn(user)
    }
}

pin_project_lite::pin_project! {
    /// A hub wait whose reason does not matter to the core.
    struct Discard {
        #[pin]
        wait: crate::hub::Wait,
    }
}

impl Future for Discard {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.project().wait.poll(cx).map(|_| ())
    }
}

/// Only if the OS entropy source fails (it does not on supported systems):
/// std's randomly keyed SipHash over a counter and the clock, rather than a
/// panic on a request path.
fn fallback_random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
