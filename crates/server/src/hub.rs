//! In-process change notification: long-polls waiting on a user's log wake
//! as soon as a change for that user commits.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

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

/// Waiters grouped by user. A user has an entry (one [`Notify`]) only while
/// at least one waiter for it exists. A waiter is a plain future of about
/// two hundred bytes (a [`Notify`] registration, a timer entry, and the
/// handles to unregister), with no task, channel or timer thread of its
/// own, so that ten thousand held long-polls stay cheap. Cloning shares the
/// hub.
#[derive(Clone)]
pub struct NotifyHub {
    inner: Arc<Inner>,
}

struct Inner {
    users: Mutex<HashMap<Arc<str>, Arc<Notify>>>,
    shut_down: AtomicBool,
}

impl Default for NotifyHub {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                users: Mutex::new(HashMap::new()),
                shut_down: AtomicBool::new(false),
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
    fn users(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Notify>>> {
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
    pub fn wait(&self, user: &str, deadline: Instant) -> Wait {
        let (user, notify) = {
            let mut users = self.inner.users();
            match users.get_key_value(user) {
                Some((key, notify)) => (Arc::clone(key), Arc::clone(notify)),
                None => {
                    let key: Arc<str> = Arc::from(user);
                    let notify = Arc::new(Notify::new());
                    users.insert(Arc::clone(&key), Arc::clone(&notify));
                    (key, notify)
                }
            }
        };
        // `notify_waiters` reaches an `OwnedNotified` from its creation on,
        // polled or not.
        let changed = notify.notified_owned();
        Wait {
            changed,
            sleep: tokio::time::sleep_until(deadline),
            registration: Registration {
                hub: Arc::clone(&self.inner),
                user,
            },
        }
    }

    /// Wake every current waiter for `user`. Cheap when nobody waits.
    pub fn notify(&self, user: &str) {
        // Woken under the lock: entries are only ever referenced from
        // outside it by their waiters (see `Registration`).
        if let Some(notify) = self.inner.users().get(user) {
            notify.notify_waiters();
        }
    }

    /// Wake every current waiter (e.g. after notifications may have been
    /// missed); the core re-checks and waits again.
    pub fn notify_all(&self) {
        for notify in self.inner.users().values() {
            notify.notify_waiters();
        }
    }

    /// Resolve every current and future wait at once with
    /// [`Wake::Shutdown`].
    pub fn shutdown(&self) {
        // Set before waking: a waiter registered after the wake-ups below
        // sees the flag when first polled.
        self.inner.shut_down.store(true, Ordering::SeqCst);
        self.notify_all();
    }

    /// Whether [`NotifyHub::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shut_down.load(Ordering::SeqCst)
    }

    /// How many users have at least one waiter.
    pub fn waiting_users(&self) -> usize {
        self.inner.users().len()
    }
}

pin_project_lite::pin_project! {
    /// A registered wait (see [`NotifyHub::wait`]). It unregisters (and
    /// drops the user's entry when it was the last waiter) however it ends,
    /// including by being dropped.
    #[must_use = "a wait does nothing unless awaited"]
    pub struct Wait {
        // Declared (so dropped) before `registration`, which relies on it.
        #[pin]
        changed: OwnedNotified,
        #[pin]
        sleep: Sleep,
        registration: Registration,
    }
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait")
            .field("user", &self.registration.user)
            .finish_non_exhaustive()
    }
}

impl Future for Wait {
    type Output = Wake;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake> {
        let this = self.project();
        let shut_down = || this.registration.hub.shut_down.load(Ordering::SeqCst);
        if shut_down() {
            return Poll::Ready(Wake::Shutdown);
        }
        if this.changed.poll(cx).is_ready() {
            // Shutdown wakes through the same channel.
            return Poll::Ready(if shut_down() {
                Wake::Shutdown
            } else {
                Wake::Changed
            });
        }
        if this.sleep.poll(cx).is_ready() {
            return Poll::Ready(Wake::Deadline);
        }
        Poll::Pending
    }
}

struct Registration {
    hub: Arc<Inner>,
    user: Arc<str>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A user's `Notify` is referenced by the map and by each live
        // waiter's `OwnedNotified`, and new references are only taken under
        // the lock. This waiter's own was dropped just before (field
        // order), so a count of one means nobody else waits: the entry
        // goes. A concurrent `wait` for the same user either found the
        // entry before (and keeps it alive) or creates a fresh one after.
        let mut users = self.hub.users();
        if users
            .get(&*self.user)
            .is_some_and(|notify| Arc::strong_count(notify) == 1)
        {
            users.remove(&*self.user);
        }
    }
}
