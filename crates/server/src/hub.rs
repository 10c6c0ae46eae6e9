//! In-process change notification: long-polls waiting on a user's log wake
//! as soon as a change for that user commits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;

/// Why [`NotifyHub::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// [`NotifyHub::notify`] (or [`NotifyHub::notify_all`]) for this user.
    Changed,
    /// The deadline passed.
    Deadline,
    /// The hub is shutting down; every wait returns at once from now on.
    Shutdown,
}

/// Waiters grouped by user. A user has an entry (one `watch` channel) only
/// while at least one waiter for it exists, and waiters are plain futures
/// (no task, no timer thread each), so a held long-poll costs a few hundred
/// bytes here. Cloning shares the hub.
#[derive(Clone)]
pub struct NotifyHub {
    inner: Arc<Inner>,
}

struct Inner {
    users: Mutex<HashMap<Arc<str>, watch::Sender<u64>>>,
    shutdown: watch::Sender<bool>,
}

impl Default for NotifyHub {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                users: Mutex::new(HashMap::new()),
                shutdown: watch::Sender::new(false),
            }),
        }
    }
}

impl std::fmt::Debug for NotifyHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyHub")
            .field("users", &self.waiting_users())
            .finish()
    }
}

impl Inner {
    fn users(&self) -> MutexGuard<'_, HashMap<Arc<str>, watch::Sender<u64>>> {
        // Nothing panics while holding the lock; if something ever did, the
        // map is still consistent, so carry on rather than poison requests.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl NotifyHub {
    /// A hub with no waiters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wait until `user` is notified, `deadline` passes or the hub shuts
    /// down. The waiter is registered when this is *called*, not when the
    /// future is first polled, so a notification in between is not lost.
    pub fn wait(
        &self,
        user: &str,
        deadline: Instant,
    ) -> impl Future<Output = Wake> + Send + 'static {
        let mut shutdown = self.inner.shutdown.subscribe();
        let (user, rx) = {
            let mut users = self.inner.users();
            match users.get_key_value(user) {
                Some((key, tx)) => (Arc::clone(key), tx.subscribe()),
                None => {
                    let key: Arc<str> = Arc::from(user);
                    let tx = watch::Sender::new(0);
                    let rx = tx.subscribe();
                    users.insert(Arc::clone(&key), tx);
                    (key, rx)
                }
            }
        };
        let mut waiter = Waiter {
            hub: Arc::clone(&self.inner),
            user,
            rx: Some(rx),
        };
        async move {
            if *shutdown.borrow_and_update() {
                return Wake::Shutdown;
            }
            let Some(rx) = waiter.rx.as_mut() else {
                return Wake::Shutdown;
            };
            tokio::select! {
                _ = rx.changed() => Wake::Changed,
                _ = shutdown.changed() => Wake::Shutdown,
                () = tokio::time::sleep_until(deadline) => Wake::Deadline,
            }
        }
    }

    /// Wake every current waiter for `user`. Cheap when nobody waits.
    pub fn notify(&self, user: &str) {
        if let Some(tx) = self.inner.users().get(user) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wake every current waiter (e.g. after notifications may have been
    /// missed); the core re-checks and waits again.
    pub fn notify_all(&self) {
        for tx in self.inner.users().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Resolve every current and future wait at once with
    /// [`Wake::Shutdown`].
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Whether [`NotifyHub::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// How many users have at least one waiter.
    pub fn waiting_users(&self) -> usize {
        self.inner.users().len()
    }
}

/// One registered wait; unregisters (and drops the user's entry when it was
/// the last waiter) however the wait ends, including by being dropped.
struct Waiter {
    hub: Arc<Inner>,
    user: Arc<str>,
    rx: Option<watch::Receiver<u64>>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut users = self.hub.users();
        // Drop the receiver under the lock, so that a concurrent `wait` for
        // the same user either sees the entry before removal or creates a
        // fresh one after it.
        drop(self.rx.take());
        if users
            .get(&*self.user)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            users.remove(&*self.user);
        }
    }
}
