//! Back-off with full jitter ("Exponential Backoff And Jitter", AWS
//! Architecture Blog): the n-th wait is uniform in `[0, min(cap, base·2ⁿ)]`.
//! Full jitter spreads retries of many clients evenly instead of in
//! synchronised waves, and never waits longer than the plain exponential
//! schedule would. Floors (the server's `X-Poll-Interval`, `Retry-After`)
//! are applied on top by the caller, so they can only lengthen a wait.

use std::time::Duration;

/// A small, seedable PRNG (SplitMix64). Jitter needs spread, not secrecy;
/// seeding makes back-off tests deterministic.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator with a fixed seed.
    pub fn seeded(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A generator seeded from the OS.
    pub fn from_entropy() -> Self {
        let mut buf = [0u8; 8];
        // Falling back to a time-based seed is fine: this only spreads waits.
        if getrandom::getrandom(&mut buf).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            buf = (nanos ^ u64::from(std::process::id())).to_le_bytes();
        }
        Rng::seeded(u64::from_le_bytes(buf))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]`, at millisecond resolution.
    pub fn uniform(&mut self, max: Duration) -> Duration {
        let ms = max.as_millis().min(u128::from(u64::MAX - 1)) as u64;
        Duration::from_millis(self.next_u64() % (ms + 1))
    }
}

/// An exponential schedule: `min(cap, base·2ⁿ)` for attempt `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first attempt.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling for attempt `n` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A full-jitter wait for attempt `n`: uniform in `[0, ceiling(n)]`.
    pub fn full_jitter(&self, attempt: u32, rng: &mut Rng) -> Duration {
        rng.uniform(self.ceiling(attempt))
    }
}

/// The smart-polling schedule: after activity the next poll comes after
/// the floor; each idle poll doubles the jitter ceiling up to the cap.
#[derive(Debug, Clone)]
pub struct PollSchedule {
    idle: Backoff,
    attempt: u32,
}

impl PollSchedule {
    /// A schedule that starts fast.
    pub fn new(idle: Backoff) -> Self {
        PollSchedule { idle, attempt: 0 }
    }

    /// Something happened (changes arrived, a local mutation was sent):
    /// poll fast again.
    pub fn activity(&mut self) {
        self.attempt = 0;
    }

    /// How many idle polls in a row so far.
    pub fn idle_polls(&self) -> u32 {
        self.attempt
    }

    /// The wait before the next poll, never shorter than `floor` (the
    /// server's `X-Poll-Interval`), and counts one more idle poll.
    pub fn next_interval(&mut self, floor: Duration, rng: &mut Rng) -> Duration {
        self.next_interval_capped(self.idle.cap, floor, rng)
    }

    /// [`PollSchedule::next_interval`] with the jitter ceiling held at or
    /// below `cap`: for a replica that must stay fresher than the idle
    /// schedule allows (live mode on a server that does not hold requests).
    /// The floor still wins over the cap.
    pub fn next_interval_capped(
        &mut self,
        cap: Duration,
        floor: Duration,
        rng: &mut Rng,
    ) -> Duration {
        let ceiling = self.idle.ceiling(self.attempt).min(cap);
        let wait = rng.uniform(ceiling).max(floor);
        self.attempt = self.attempt.saturating_add(1);
        wait
    }
}

/// Expected wait of `max(floor, U[0, ceiling])`, in seconds: what the crate
/// docs' idle-cost arithmetic uses.
pub fn expected_wait_secs(ceiling: Duration, floor: Duration) -> f64 {
    let c = ceiling.as_secs_f64();
    let f = floor.as_secs_f64().min(c);
    if c == 0.0 {
        return floor.as_secs_f64();
    }
    // P(U < f)·f + ∫_f^c u du / c
    f * f / c + (c * c - f * f) / (2.0 * c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ceiling_doubles_up_to_cap() {
        let b = Backoff {
            base: S(10),
            cap: S(240),
        };
        let c: Vec<_> = (0..8).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(c, [10, 20, 40, 80, 160, 240, 240, 240]);
        assert_eq!(b.ceiling(u32::MAX), S(240));
        let tiny = Backoff {
            base: Duration::from_millis(1),
            cap: Duration::MAX,
        };
        assert!(tiny.ceiling(200) > S(1_000_000), "no overflow panic");
    }

    #[test]
    fn full_jitter_stays_in_range_and_spreads() {
        let b = Backoff {
            base: S(1),
            cap: S(60),
        };
        let mut rng = Rng::seeded(7);
        for attempt in 0..12 {
            let ceiling = b.ceiling(attempt);
            let samples: Vec<_> = (0..500).map(|_| b.full_jitter(attempt, &mut rng)).collect();
            assert!(samples.iter().all(|s| *s <= ceiling));
            // Full jitter covers the whole range, low end included.
            assert!(samples.iter().any(|s| *s < ceiling / 4));
            assert!(samples.iter().any(|s| *s > ceiling * 3 / 4));
        }
    }

    #[test]
    fn jitter_mean_is_half_the_ceiling() {
        let b = Backoff {
            base: S(240),
            cap: S(240),
        };
        let mut rng = Rng::seeded(1);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| b.full_jitter(0, &mut rng).as_secs_f64())
            .sum();
        let mean = total / n as f64;
        assert!((mean - 120.0).abs() < 3.0, "mean {mean}");
    }

    #[test]
    fn seeded_rng_is_deterministic() {
        let mut a = Rng::seeded(42);
        let mut b = Rng::seeded(42);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }

    #[test]
    fn schedule_is_fast_after_activity_and_floored() {
        let mut s = PollSchedule::new(Backoff {
            base: S(10),
            cap: S(240),
        });
        let mut rng = Rng::seeded(3);
        let floor = S(10);
        // Attempt 0: ceiling 10 = floor, so exactly the floor.
        assert_eq!(s.next_interval(floor, &mut rng), floor);
        for _ in 0..50 {
            let w = s.next_interval(floor, &mut rng);
            assert!(w >= floor && w <= S(240));
        }
        assert_eq!(s.idle_polls(), 51);
        s.activity();
        assert_eq!(s.next_interval(floor, &mut rng), floor);
        // A larger server floor always wins.
        s.activity();
        for _ in 0..20 {
            assert!(s.next_interval(S(300), &mut rng) >= S(300));
        }
    }

    #[test]
    fn capped_schedule_stays_under_the_cap_but_not_the_floor() {
        let mut s = PollSchedule::new(Backoff {
            base: S(10),
            cap: S(240),
        });
        let mut rng = Rng::seeded(5);
        for _ in 0..200 {
            let w = s.next_interval_capped(S(25), S(10), &mut rng);
            assert!(w >= S(10) && w <= S(25), "{w:?}");
        }
        assert_eq!(s.next_interval_capped(S(25), S(60), &mut rng), S(60));
    }

    #[test]
    fn expected_wait_matches_simulation() {
        let ceiling = S(240);
        let floor = S(10);
        let e = expected_wait_secs(ceiling, floor);
        assert!((e - 120.208).abs() < 0.01, "{e}");
        let b = Backoff {
            base: ceiling,
            cap: ceiling,
        };
        let mut rng = Rng::seeded(9);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| b.full_jitter(0, &mut rng).max(floor).as_secs_f64())
            .sum();
        assert!((total / n as f64 - e).abs() < 3.0);
    }
}
