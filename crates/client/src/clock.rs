//! Time, behind a trait so that back-off can be tested by simulating hours of
//! idling in milliseconds.
//!
//! tokio's paused time (`start_paused`) is not used for that: it auto-advances
//! whenever the runtime is idle, which includes every moment a real socket is
//! waiting for a response, so request timeouts would fire spuriously in tests
//! that talk to a real (fake) server. A [`VirtualClock`] only moves when the
//! client itself sleeps.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// A boxed sleep future.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The client's source of time. Only the sync engine's waits go through it
/// (poll intervals, back-off, `Retry-After`); request timeouts stay on real
/// time.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since an arbitrary origin.
    fn now(&self) -> Duration;
    /// Complete after `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Sleep;
}

/// Real time (tokio's timer).
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Simulated time: a sleep completes at once (after yielding to the
/// scheduler) and moves the clock forward by its duration — but only if it
/// ran to completion, so a sleep cut short by a wake-up costs no simulated
/// time. Every completed sleep is recorded.
///
/// With a horizon ([`VirtualClock::with_horizon`]), a sleep that would end
/// past it never completes: the engine parks there, and the test can count
/// what happened within the simulated span.
#[derive(Debug, Clone, Default)]
pub struct VirtualClock {
    inner: Arc<Mutex<VirtualState>>,
    horizon_reached: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct VirtualState {
    now: Duration,
    horizon: Option<Duration>,
    parked: bool,
    sleeps: Vec<Duration>,
}

impl VirtualClock {
    /// A clock at zero with no horizon.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock at zero whose sleeps stop at `horizon`.
    pub fn with_horizon(horizon: Duration) -> Self {
        let c = Self::default();
        c.state().horizon = Some(horizon);
        c
    }

    fn state(&self) -> std::sync::MutexGuard<'_, VirtualState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Move time forward by `d` (as if something else had waited).
    pub fn advance(&self, d: Duration) {
        self.state().now += d;
    }

    /// Every completed sleep, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.state().sleeps.clone()
    }

    /// Whether a sleep is parked at the horizon.
    pub fn at_horizon(&self) -> bool {
        self.state().parked
    }

    /// Wait (in real time) until a sleep parks at the horizon.
    pub async fn wait_for_horizon(&self) {
        loop {
            let notified = self.horizon_reached.notified();
            if self.at_horizon() {
                return;
            }
            notified.await;
        }
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Duration {
        self.state().now
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(VirtualSleep {
            clock: self.clone(),
            duration: d,
            yielded: false,
        })
    }
}

struct VirtualSleep {
    clock: VirtualClock,
    duration: Duration,
    yielded: bool,
}

impl Future for VirtualSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Yield once so that a sleep racing a wake-up in `select!` gives the
        // wake-up a chance, as a real sleep would.
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut s = self.clock.state();
        let end = s.now + self.duration;
        if s.horizon.is_some_and(|h| end > h) {
            if !s.parked {
                s.parked = true;
                drop(s);
                self.clock.horizon_reached.notify_waiters();
            }
            // Never woken: the simulation ends here.
            return Poll::Pending;
        }
        s.now = end;
        s.sleeps.push(self.duration);
        Poll::Ready(())
    }
}

impl Drop for VirtualSleep {
    fn drop(&mut self) {
        // A parked sleep that is cancelled (e.g. by stop) un-parks the clock.
        let mut s = self.clock.state();
        if s.parked && s.horizon.is_some_and(|h| s.now + self.duration > h) {
            s.parked = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn virtual_sleep_advances_only_when_completed() {
        let c = VirtualClock::new();
        c.sleep(Duration::from_secs(5)).await;
        assert_eq!(c.now(), Duration::from_secs(5));
        let notify = tokio::sync::Notify::new();
        notify.notify_one();
        tokio::select! {
            biased;
            _ = notify.notified() => {}
            _ = c.sleep(Duration::from_secs(100)) => panic!("wake-up should win"),
        }
        assert_eq!(c.now(), Duration::from_secs(5));
        assert_eq!(c.sleeps(), vec![Duration::from_secs(5)]);
    }

    #[tokio::test]
    async fn horizon_parks() {
        let c = VirtualClock::with_horizon(Duration::from_secs(10));
        c.sleep(Duration::from_secs(6)).await;
        let c2 = c.clone();
        let task = tokio::spawn(async move { c2.sleep(Duration::from_secs(6)).await });
        c.wait_for_horizon().await;
        assert_eq!(c.now(), Duration::from_secs(6));
        task.abort();
    }
}
