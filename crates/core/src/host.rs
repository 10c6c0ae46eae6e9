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
    fn wait_for_change(
        &self,
        user: &str,
        deadline_millis: u64,
    ) -> impl Future<Output = ()> + MaybeSend;

    /// Called after a change to `user`'s log was committed (its sequence
    /// number is `seq`), so that waiters on this and other instances can be
    /// woken. Must not block.
    fn log_changed(&self, user: &str, seq: u64);
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
}
