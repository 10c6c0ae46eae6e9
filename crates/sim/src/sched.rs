//! A seeded single-threaded executor with a virtual clock.
//!
//! One seed fixes everything: which ready task is polled next, when the
//! clock moves, which task is dropped mid-flight (a crashed host), and all
//! entropy the service draws. Time is virtual: when nothing is ready the
//! clock jumps to the next deadline, so long-poll timeouts cost no real time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use edgesync_core::Host;

/// SplitMix64: small, fast, and good enough to drive schedules.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

struct Waiter {
    topic: String,
    deadline: u64,
    fired: Arc<AtomicBool>,
    waker: Option<Waker>,
}

/// Clock, entropy and change notification shared by the simulated hosts.
#[derive(Clone)]
pub struct World {
    now: Arc<AtomicU64>,
    rng: Arc<Mutex<Rng>>,
    waiters: Arc<Mutex<HashMap<u64, Waiter>>>,
    next_waiter: Arc<AtomicU64>,
}

impl World {
    fn new(seed: u64, start_millis: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(start_millis)),
            rng: Arc::new(Mutex::new(Rng::new(seed.wrapping_mul(31).wrapping_add(7)))),
            waiters: Arc::new(Mutex::new(HashMap::new())),
            next_waiter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Virtual wall clock, ms.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn advance_to(&self, t: u64) {
        self.now.fetch_max(t, Ordering::SeqCst);
        let now = self.now();
        for w in self.waiters.lock().expect("waiters").values_mut() {
            if w.deadline <= now {
                w.fired.store(true, Ordering::SeqCst);
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.waiters
            .lock()
            .expect("waiters")
            .values()
            .map(|w| w.deadline)
            .min()
    }
}

/// Resolves on a change notification for its topic or at its deadline.
struct WaitForChange {
    world: World,
    id: u64,
    fired: Arc<AtomicBool>,
}

impl Future for WaitForChange {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if let Some(w) = self
            .world
            .waiters
            .lock()
            .expect("waiters")
            .get_mut(&self.id)
        {
            w.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for WaitForChange {
    fn drop(&mut self) {
        self.world.waiters.lock().expect("waiters").remove(&self.id);
    }
}

impl Host for World {
    fn now_millis(&self) -> u64 {
        self.now()
    }

    fn random_u64(&self) -> u64 {
        self.rng.lock().expect("rng").next_u64()
    }

    fn wait_for_change(
        &self,
        topic: &str,
        deadline_millis: u64,
    ) -> impl Future<Output = ()> + Send {
        let id = self.next_waiter.fetch_add(1, Ordering::SeqCst);
        let fired = Arc::new(AtomicBool::new(deadline_millis <= self.now()));
        self.waiters.lock().expect("waiters").insert(
            id,
            Waiter {
                topic: topic.to_owned(),
                deadline: deadline_millis,
                fired: fired.clone(),
                waker: None,
            },
        );
        WaitForChange {
            world: self.clone(),
            id,
            fired,
        }
    }

    fn log_changed(&self, topic: &str, _seq: u64) {
        for w in self.waiters.lock().expect("waiters").values_mut() {
            if w.topic == topic {
                w.fired.store(true, Ordering::SeqCst);
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            }
        }
    }
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type Job = Pin<Box<dyn Future<Output = ()>>>;

struct Task {
    id: u64,
    job: Job,
    ready: Arc<Flag>,
    crashable: bool,
}

/// The executor.
pub struct Sim {
    rng: Rng,
    world: World,
    tasks: Vec<Task>,
    next_id: u64,
    crash_probability: f64,
    /// Ids of tasks dropped mid-flight.
    pub crashed: Vec<u64>,
    /// Polls performed so far.
    pub steps: u64,
}

impl Sim {
    /// A simulation for `seed`, starting at `start_millis` on the virtual
    /// clock; each poll of a crashable task drops it with `crash_probability`.
    pub fn new(seed: u64, start_millis: u64, crash_probability: f64) -> Self {
        Self {
            rng: Rng::new(seed),
            world: World::new(seed, start_millis),
            tasks: Vec::new(),
            next_id: 0,
            crash_probability,
            crashed: Vec::new(),
            steps: 0,
        }
    }

    /// The shared clock/entropy/notification host.
    pub fn world(&self) -> World {
        self.world.clone()
    }

    /// The scheduler's own random source (for workload decisions).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Start a task; returns its id.
    pub fn spawn(&mut self, crashable: bool, job: impl Future<Output = ()> + 'static) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.tasks.push(Task {
            id,
            job: Box::pin(job),
            ready: Arc::new(Flag(AtomicBool::new(true))),
            crashable,
        });
        id
    }

    /// Number of unfinished tasks.
    pub fn pending(&self) -> usize {
        self.tasks.len()
    }

    /// Run one scheduling step: poll one ready task (or drop it, or move
    /// the clock when nothing is ready). Returns false when no task is left.
    pub fn step(&mut self) -> bool {
        if self.tasks.is_empty() {
            return false;
        }
        self.steps += 1;
        // Time passes a little with every step.
        let jitter = self.rng.below(3);
        self.world.advance_to(self.world.now() + jitter);
        let ready: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].ready.0.load(Ordering::SeqCst))
            .collect();
        if ready.is_empty() {
            match self.world.next_deadline() {
                Some(t) => self.world.advance_to(t.max(self.world.now() + 1)),
                None => panic!("deadlock: {} tasks wait with no deadline", self.tasks.len()),
            }
            return true;
        }
        let i = ready[self.rng.below(ready.len() as u64) as usize];
        if self.tasks[i].crashable && self.rng.chance(self.crash_probability) {
            let task = self.tasks.swap_remove(i);
            self.crashed.push(task.id);
            return true;
        }
        let task = &mut self.tasks[i];
        crate::store::CURRENT_TASK.store(task.id, Ordering::SeqCst);
        task.ready.0.store(false, Ordering::SeqCst);
        let waker = Waker::from(task.ready.clone());
        let mut cx = Context::from_waker(&waker);
        if task.job.as_mut().poll(&mut cx).is_ready() {
            self.tasks.swap_remove(i);
        }
        true
    }

    /// Run until every task has finished (or crashed).
    pub fn run_to_completion(&mut self, max_steps: u64) {
        while self.step() {
            assert!(
                self.steps < max_steps,
                "simulation did not finish within {max_steps} steps"
            );
        }
    }
}
