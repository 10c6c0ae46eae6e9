//! The adaptive re-check schedule of a held long-poll.
//!
//! A Spin instance cannot be woken by another instance's write: there is no
//! key-value watch. So a held `/v1/changes` request sleeps, returns from
//! `Host::wait_for_change`, lets the core re-read its one small
//! change-detection key, and waits again. The interval trades wake-up
//! latency against KV reads (managed hosts cap an app at ~1,000 reads/s):
//!
//! * for the first [`FAST_PHASE_MS`] of a wait: every [`FAST_INTERVAL_MS`].
//!   Changes are bursty: a client that was just answered and re-polls is
//!   likely to be followed by more changes soon;
//! * afterwards: every [`SLOW_INTERVAL_MS`], which still wakes a waiter
//!   within 250 ms of a write as long as one KV read plus the host's sleep
//!   overshoot stay under 35 ms;
//! * never past the deadline the core passed in.

use std::sync::atomic::{AtomicU64, Ordering};

/// Re-check interval at the start of a wait.
pub const FAST_INTERVAL_MS: u64 = 100;
/// How long the fast interval lasts, from the first `wait_for_change` call.
pub const FAST_PHASE_MS: u64 = 500;
/// Re-check interval for the rest of a wait.
pub const SLOW_INTERVAL_MS: u64 = 215;

// The 250 ms wake-up target leaves 35 ms for the re-read and the sleep's
// overshoot (with a thousand requests held, the host's CPU queue adds to
// both).
const _: () = assert!(SLOW_INTERVAL_MS + 35 <= 250);

const NOT_STARTED: u64 = u64::MAX;

/// Per-request state of the schedule: when the request started waiting.
///
/// The core calls `wait_for_change` again after every wake-up, so the phase
/// must live in the host, which Spin creates afresh for each request.
#[derive(Debug)]
pub struct AdaptiveWait {
    // An atomic rather than a `Cell` so the host stays `Sync` natively.
    started_ms: AtomicU64,
}

impl Default for AdaptiveWait {
    fn default() -> Self {
        Self::new()
    }
}

impl AdaptiveWait {
    /// A schedule for a request that has not waited yet.
    pub const fn new() -> Self {
        Self {
            started_ms: AtomicU64::new(NOT_STARTED),
        }
    }

    /// How long to sleep now (`now_ms`, the host's clock) before the core should
    /// re-check, given its absolute `deadline_ms`. Zero once the deadline
    /// has passed. The first call starts the wait.
    pub fn next_sleep_ms(&self, now_ms: u64, deadline_ms: u64) -> u64 {
        let started = match self.started_ms.compare_exchange(
            NOT_STARTED,
            now_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now_ms,
            Err(started) => started,
        };
        // A clock that went backwards counts as "just started":
        // that only makes the next few checks faster.
        let waited = now_ms.saturating_sub(started);
        let interval = if waited < FAST_PHASE_MS {
            FAST_INTERVAL_MS
        } else {
            SLOW_INTERVAL_MS
        };
        interval.min(deadline_ms.saturating_sub(now_ms))
    }
}

/// How many times the core re-reads its change-detection key while a
/// request is held for `wait_ms` with nothing changing (one read per
/// wake-up, the last one at the deadline). Used by the crate docs' table
/// and its tests.
pub fn reads_during_wait(wait_ms: u64) -> u64 {
    let schedule = AdaptiveWait::new();
    let (mut now, deadline, mut reads) = (0, wait_ms, 0);
    loop {
        let sleep = schedule.next_sleep_ms(now, deadline);
        if sleep == 0 {
            return reads;
        }
        now += sleep;
        reads += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wake-up times of one wait that starts at `start` and sees nothing.
    fn wakeups(start: u64, wait_ms: u64) -> Vec<u64> {
        let schedule = AdaptiveWait::new();
        let (mut now, deadline, mut out) = (start, start + wait_ms, Vec::new());
        loop {
            let sleep = schedule.next_sleep_ms(now, deadline);
            if sleep == 0 {
                return out;
            }
            now += sleep;
            out.push(now);
        }
    }

    #[test]
    fn fast_for_the_first_half_second_then_slower() {
        let start = 1_700_000_000_000;
        let times = wakeups(start, 3_000);
        let gaps: Vec<u64> = std::iter::once(times[0] - start)
            .chain(times.windows(2).map(|w| w[1] - w[0]))
            .collect();
        assert_eq!(&gaps[..5], &[FAST_INTERVAL_MS; 5]);
        assert!(gaps[5..gaps.len() - 1]
            .iter()
            .all(|&g| g == SLOW_INTERVAL_MS));
        assert_eq!(*times.last().unwrap(), start + 3_000);
    }

    #[test]
    fn never_sleeps_past_the_deadline() {
        for wait in [0, 1, 99, 100, 101, 950, 1_000, 1_001, 1_224, 25_000] {
            let times = wakeups(5, wait);
            assert!(times.iter().all(|&t| t <= 5 + wait), "wait {wait}");
            if wait > 0 {
                assert_eq!(*times.last().unwrap(), 5 + wait, "wait {wait}");
            }
        }
        let schedule = AdaptiveWait::new();
        assert_eq!(schedule.next_sleep_ms(1_000, 999), 0);
        assert_eq!(schedule.next_sleep_ms(1_000, 1_000), 0);
        assert_eq!(schedule.next_sleep_ms(1_000, 1_040), 40);
    }

    #[test]
    fn a_write_is_seen_within_250_ms_at_any_moment() {
        // Latency of a write at time w = first wake-up at or after w, minus w.
        let times = wakeups(0, 25_000);
        let worst = (0..25_000u64)
            .map(|w| times.iter().find(|&&t| t >= w).unwrap() - w)
            .max()
            .unwrap();
        assert!(worst < SLOW_INTERVAL_MS, "worst {worst} ms");
    }

    #[test]
    fn a_full_long_poll_costs_under_five_reads_per_second() {
        // 5 reads in the first half second, then one per 215 ms.
        assert_eq!(reads_during_wait(500), 5);
        let reads = reads_during_wait(25_000);
        assert_eq!(reads, 5 + 24_500u64.div_ceil(SLOW_INTERVAL_MS));
        assert!(reads * 1_000 < 5 * 25_000, "{reads} reads in 25 s");
        // The break-even hold: any wait of 10 s or more averages ≤ 5/s.
        for secs in 10..=60 {
            assert!(reads_during_wait(secs * 1_000) <= 5 * secs, "{secs} s");
        }
    }

    #[test]
    fn the_crate_docs_table_is_right() {
        let table = [(1, 8), (5, 26), (10, 50), (25, 119)];
        for (secs, reads) in table {
            assert_eq!(reads_during_wait(secs * 1_000), reads, "{secs} s");
        }
    }

    #[test]
    fn a_clock_stepping_back_does_not_stall_the_wait() {
        let schedule = AdaptiveWait::new();
        assert_eq!(schedule.next_sleep_ms(10_000, 20_000), FAST_INTERVAL_MS);
        assert_eq!(schedule.next_sleep_ms(9_000, 20_000), FAST_INTERVAL_MS);
        assert_eq!(schedule.next_sleep_ms(12_000, 20_000), SLOW_INTERVAL_MS);
    }
}
