//! The native [`Host`]: wall clock, OS entropy, and change notification
//! through the in-process [`NotifyHub`] (plus Redis pub/sub when instances
//! share a Redis store).

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgesync_core::Host;
use edgesync_redis::{ChangeBus, ChangeEvent};

use crate::hub::NotifyHub;

/// Longest a single wait is scheduled for: keeps `Instant + Duration` far
/// from overflow whatever deadline the caller passes (the core re-waits
/// after a spurious return).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The native server's [`Host`]. Cloning shares the hub and the bus.
#[derive(Clone, Default)]
pub struct NativeHost {
    hub: NotifyHub,
    bus: Option<Arc<ChangeBus>>,
}

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

    /// Stop talking to Redis (after the server has drained).
    pub fn close(&self) {
        if let Some(bus) = &self.bus {
            bus.close();
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
        let wait = self
            .hub
            .wait(user, tokio::time::Instant::now() + remaining.min(MAX_WAIT));
        async move {
            wait.await;
        }
    }

    fn log_changed(&self, user: &str, seq: u64) {
        self.hub.notify(user);
        if let Some(bus) = &self.bus {
            bus.publish(user, seq);
        }
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
