//! What the core needs from the host besides the KV store: a clock, entropy,
//! and a way to wait for (and announce) changes to a user's log.
//!
//! The core never reads a clock, sleeps or opens a socket itself; tests and
//! the simulator drive it with a virtual clock, the native server with
//! tokio, the Spin component with `std::thread::sleep`.

use std::future::Future;

use crate::kv::{MaybeSend, MaybeSync};

/// The host side of a request. One value may serve many requests (native
/// server) or exactly one (a Spin component instance).
pub trait Host: MaybeSync {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;

    /// 64 bits of unpredictable entropy (ids of log entries and index
    /// blobs are drawn from it).
    fn random_u64(&self) -> u64;

    /// Resolve when `user`'s log may have changed, or at `deadline_millis`
    /// (wall clock), whichever comes first. Spurious wake-ups are fine: the
    /// core re-reads one small key after every wake-up and waits again.
    ///
    /// `user` is an opaque, already-escaped topic name, identical for every
    /// request of the same user on every instance.
    ///
    /// Hosts with in-process notification (the native server) wake on
    /// [`Host::log_changed`]; hosts without (a Spin component) sleep for an
    /// adaptive interval and return, so that the core re-checks the store.
    ///
    /// Interest must be registered by the call itself, not when the future
    /// is first polled: the core calls this, checks the store once more,
    /// then awaits, so that a change committed in between still wakes it.
    fn wait_for_change(
        &self,
        user: &str,
        deadline_millis: u64,
    ) -> impl Future<Output = ()> + MaybeSend;

    /// Called after a change to `user`'s log was committed (its sequence
    /// number is `seq`), so that waiters on this and other instances can be
    /// woken. Must not block.
    fn log_changed(&self, user: &str, seq: u64);

    /// Whether [`Host::wait_for_change`] can return early because of a
    /// change (`false` for a host that only sleeps): the core then skips
    /// the re-check right after it parks a long-poll, which could only
    /// repeat the read it has just made.
    fn wakes_early(&self) -> bool {
        true
    }

    /// True once the host is shutting down: held long-polls are answered
    /// at once instead of waiting for their deadline.
    fn draining(&self) -> bool {
        false
    }

    /// This instance's turn to write for `user`. A host that runs many
    /// requests in one process may hand out turns one at a time per user
    /// (an async mutex), turning lost compare-and-swap races between its
    /// own requests into a short queue. Correctness never depends on it:
    /// other instances race through the store as usual.
    fn writer_turn(&self, _user: &str) -> impl Future<Output = impl MaybeSend> + MaybeSend {
        async {}
    }
}

impl<T: Host + ?Sized> Host for &T {
    fn now_millis(&self) -> u64 {
        (**self).now_millis()
    }
    fn random_u64(&self) -> u64 {
        (**self).random_u64()
    }
    fn wait_for_change(
        &self,
        user: &str,
        deadline_millis: u64,
    ) -> impl Future<Output = ()> + MaybeSend {
        (**self).wait_for_change(user, deadline_millis)
    }
    fn log_changed(&self, user: &str, seq: u64) {
        (**self).log_changed(user, seq)
    }
    fn wakes_early(&self) -> bool {
        (**self).wakes_early()
    }
    fn draining(&self) -> bool {
        (**self).draining()
    }
    fn writer_turn(&self, user: &str) -> impl Future<Output = impl MaybeSend> + MaybeSend {
        (**self).writer_turn(user)
    }
}
