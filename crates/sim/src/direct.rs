//! Driving the core directly, without the scheduler, for tests that send it
//! one request at a time (the hostile-input property test, the KV cost
//! table, the stores' conformance).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use edgesync_core::Host;

/// Run `f` to completion on this thread. The simulated stores only ever
/// yield once and wake themselves, and [`DirectHost`] never parks, so
/// polling in a loop is a complete executor for them.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A host whose clock stands still until a long-poll waits, which moves it
/// to the wait's deadline at once (so a held request ends without real
/// time passing), and whose ids are distinct and deterministic.
pub struct DirectHost {
    now: AtomicU64,
    seed: AtomicU64,
}

impl DirectHost {
    /// A host whose clock reads `now_millis`.
    pub fn new(now_millis: u64) -> Self {
        Self {
            now: AtomicU64::new(now_millis),
            seed: AtomicU64::new(1),
        }
    }
}

impl Host for DirectHost {
    fn now_millis(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
    fn random_u64(&self) -> u64 {
        self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
    }
    async fn wait_for_change(&self, _: &str, deadline_millis: u64) {
        self.now.fetch_max(deadline_millis, Ordering::SeqCst);
    }
    fn log_changed(&self, _: &str, _: u64) {}
}
