//! [`Host`] for one Spin instance (one request).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgesync_core::Host;

use crate::wait::AdaptiveWait;

/// Clock, entropy and long-poll waiting for one request. Create one per
/// request: it remembers when the request started waiting.
#[derive(Debug)]
pub struct SpinHost {
    wait: AdaptiveWait,
    /// Wall-clock time (ms since the epoch) when the request began, and
    /// the monotonic instant of that moment. Time within the request is
    /// counted from them on the monotonic clock, so a step of the host's
    /// wall clock cannot stretch a long-poll past its wait (and the
    /// host's request time limit); a request is short enough for the
    /// drift from wall time not to matter.
    started: (u64, Instant),
}

impl Default for SpinHost {
    fn default() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            wait: AdaptiveWait::default(),
            started: (wall, Instant::now()),
        }
    }
}

impl SpinHost {
    /// A host for a request that has not waited yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Host for SpinHost {
    fn now_millis(&self) -> u64 {
        let (wall, at) = self.started;
        let elapsed = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        wall.saturating_add(elapsed)
    }

    fn random_u64(&self) -> u64 {
        wasi::random::random::get_random_u64()
    }

    /// Sleeps the whole instance (there is nothing else for it to do) for
    /// the next interval of the [`AdaptiveWait`] schedule and returns, so the
    /// core re-reads its change-detection key. No KV watch exists, so there
    /// is nothing to wake on early.
    async fn wait_for_change(&self, _user: &str, deadline_millis: u64) {
        let sleep = self.wait.next_sleep_ms(self.now_millis(), deadline_millis);
        if sleep > 0 {
            std::thread::sleep(Duration::from_millis(sleep));
        }
    }

    /// Only sleeps: nothing wakes it early.
    fn wakes_early(&self) -> bool {
        false
    }

    /// Nothing to do: other instances find out by re-reading the store.
    fn log_changed(&self, _user: &str, _seq: u64) {}
}
