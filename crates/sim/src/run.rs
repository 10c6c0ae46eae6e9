//! One simulated run: a random workload against the real service, then the
//! design's invariants checked on everything that was observed.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use edgesync_core::auth::{self, Expectations};
use edgesync_core::{Config, Kv, Service};
use edgesync_kv_wasi::WasiKv;
use http::{Method, Request};
use serde_json::{json, Value};

use crate::sched::{Rng, Sim, World};
use crate::store::{Backend, MemStore, SimBucket, StrictKv};

const SECRET: &[u8] = b"simulation-secret-simulation-secret!";
const START_MILLIS: u64 = 1_800_000_000_000;
const COLLECTIONS: &[&str] = &["todos", "notes"];
const DOC_IDS: &[&str] = &["a", "b", "c"];
/// KV operations a read that is not held may make beyond two per item of
/// its page (invariant 4's bound; see `check`). Over thousands of seeds the
/// most seen is 58 for a listing, 28 for `/v1/head` and 71 for a page of
/// 20 changes, with or without crashed writers about.
const READ_OPS_BASE: u64 = 64;
/// User ids chosen to collide if anything forgot to escape them.
const USERS: &[&str] = &["alice", "a/log/1", "a%2Flog%2F1", "u/x/h"];

/// Everything a run is parameterized by; derived from the seed.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The seed (replays the whole run).
    pub seed: u64,
    /// Backend behaviour (`None`: exact semantics, like the native adapters).
    pub backend: Option<Backend>,
    /// Log retention (small values force compaction).
    pub retention: u64,
    /// Mutations per second per user (0: off).
    pub rate_limit: u64,
    /// Probability that a poll of a mutating request crashes it.
    pub crash_probability: f64,
    /// Requests issued.
    pub requests: usize,
    /// Users involved.
    pub users: usize,
    /// Chance per scheduling step that the next request starts (how many
    /// requests overlap).
    pub arrival: f64,
    /// Most requests in flight at once (clients are a user's few devices
    /// and tabs, not an unbounded crowd).
    pub max_in_flight: usize,
}

impl RunConfig {
    /// The configuration seed `seed` runs with.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5EED);
        let backend = match rng.below(3) {
            0 => None,
            1 => Some(Backend::SpinSqlite),
            _ => Some(Backend::SpinRedis),
        };
        let compacting = rng.chance(0.3);
        Self {
            seed,
            backend,
            // The smallest retention the service accepts, with enough
            // traffic on few users to move the floor several times.
            retention: if compacting { 16 } else { 10_000 },
            rate_limit: if rng.chance(0.15) { 3 } else { 0 },
            crash_probability: [0.0, 0.002, 0.01, 0.03][rng.below(4) as usize],
            requests: if compacting {
                150 + rng.below(100) as usize
            } else {
                30 + rng.below(50) as usize
            },
            users: if compacting {
                1 + rng.below(2) as usize
            } else {
                1 + rng.below(USERS.len() as u64) as usize
            },
            arrival: [0.03, 0.08, 0.15][rng.below(3) as usize],
            max_in_flight: 2 + rng.below(11) as usize,
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Summary {
    /// Requests answered.
    pub answered: usize,
    /// Requests dropped mid-flight.
    pub crashed: usize,
    /// Mutations acknowledged.
    pub acknowledged: usize,
    /// Scheduler steps.
    pub steps: u64,
    /// KV operations.
    pub kv_ops: u64,
    /// Largest compaction floor reached.
    pub max_floor: u64,
    /// Mutations refused with 503 after losing too many races.
    pub overloaded: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    Put {
        c: String,
        id: String,
        body: Value,
        if_match: Option<u64>,
        if_none_match: bool,
        idem: Option<String>,
    },
    Patch {
        c: String,
        id: String,
        body: Value,
        if_match: Option<u64>,
        idem: Option<String>,
    },
    Delete {
        c: String,
        id: String,
        if_match: Option<u64>,
        idem: Option<String>,
    },
    Batch {
        items: Vec<Value>,
    },
    Get {
        c: String,
        id: String,
    },
    Changes {
        since: u64,
        limit: u64,
        wait: u64,
    },
    Head,
    List {
        collection: Option<String>,
        limit: u64,
    },
}

impl Kind {
    fn mutates(&self) -> bool {
        matches!(
            self,
            Kind::Put { .. } | Kind::Patch { .. } | Kind::Delete { .. } | Kind::Batch { .. }
        )
    }
}

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

#[derive(Debug, Clone)]
struct Record {
    user: usize,
    kind: Kind,
    /// Virtual time and request order at start/finish.
    started: u64,
    finished: Option<u64>,
    answer: Option<Answer>,
    /// Scheduler task id (for per-request KV accounting).
    task: u64,
}

type Records = Rc<RefCell<Vec<Record>>>;

fn token(user: &str) -> String {
    let expect = Expectations {
        secret: SECRET,
        audience: None,
        issuer: None,
    };
    auth::mint(&expect, user, START_MILLIS / 1000, 365 * 24 * 3600)
}

fn build(kind: &Kind, user: &str) -> Request<Vec<u8>> {
    let b = Request::builder().header("authorization", format!("Bearer {}", token(user)));
    let with_conditions =
        |b: http::request::Builder, if_match: &Option<u64>, idem: &Option<String>| {
            let mut b = b;
            if let Some(v) = if_match {
                b = b.header("if-match", format!("\"{v}\""));
            }
            if let Some(k) = idem {
                b = b.header("idempotency-key", k.as_str());
            }
            b
        };
    let r = match kind {
        Kind::Put {
            c,
            id,
            body,
            if_match,
            if_none_match,
            idem,
        } => {
            let mut b = with_conditions(b, if_match, idem)
                .method(Method::PUT)
                .uri(format!("/v1/docs/{c}/{id}"))
                .header("content-type", "application/json");
            if *if_none_match {
                b = b.header("if-none-match", "*");
            }
            b.body(serde_json::to_vec(body).unwrap())
        }
        Kind::Patch {
            c,
            id,
            body,
            if_match,
            idem,
        } => with_conditions(b, if_match, idem)
            .method(Method::PATCH)
            .uri(format!("/v1/docs/{c}/{id}"))
            .header("content-type", "application/merge-patch+json")
            .body(serde_json::to_vec(body).unwrap()),
        Kind::Delete {
            c,
            id,
            if_match,
            idem,
        } => with_conditions(b, if_match, idem)
            .method(Method::DELETE)
            .uri(format!("/v1/docs/{c}/{id}"))
            .body(Vec::new()),
        Kind::Batch { items } => b
            .method(Method::POST)
            .uri("/v1/mutations")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&json!({ "mutations": items })).unwrap()),
        Kind::Get { c, id } => b
            .method(Method::GET)
            .uri(format!("/v1/docs/{c}/{id}"))
            .body(Vec::new()),
        Kind::Changes { since, limit, wait } => {
            let mut b = b.method(Method::GET).uri(format!(
                "/v1/changes?since={since}&limit={limit}&wait={wait}"
            ));
            if *wait > 0 {
                b = b.header("if-none-match", format!("\"{since}\""));
            }
            b.body(Vec::new())
        }
        Kind::Head => b.method(Method::GET).uri("/v1/head").body(Vec::new()),
        Kind::List { collection, limit } => {
            let q = match collection {
                Some(c) => format!("/v1/docs?collection={c}&limit={limit}"),
                None => format!("/v1/docs?limit={limit}"),
            };
            b.method(Method::GET).uri(q).body(Vec::new())
        }
    };
    r.expect("valid request")
}

/// Run one seed; `Err` describes the first violated invariant.
pub fn run(seed: u64) -> Result<Summary, String> {
    let cfg = RunConfig::for_seed(seed);
    let store = MemStore::new();
    match cfg.backend {
        None => run_with(&cfg, store.clone(), StrictKv::new(store)),
        Some(backend) => run_with(
            &cfg,
            store.clone(),
            WasiKv::new(SimBucket::new(store, backend)),
        ),
    }
}

fn service_config(cfg: &RunConfig) -> Config {
    let mut config = Config::with_secret(SECRET.to_vec());
    config.retention_entries = cfg.retention;
    config.rate_limit_per_second = cfg.rate_limit;
    config.max_wait_seconds = 5;
    config
}

struct Workload {
    rng: Rng,
    counter: u64,
    /// Last version seen per (user, collection, id).
    versions: HashMap<(usize, String, String), u64>,
    /// Highest seq seen per user.
    heads: HashMap<usize, u64>,
    /// Mutations that may be retried with the same idempotency key.
    retryable: Vec<(usize, Kind)>,
}

impl Workload {
    fn tag(&mut self, user: usize) -> String {
        self.counter += 1;
        format!("{user}:{}", self.counter)
    }

    fn pick_doc(&mut self) -> (String, String) {
        let c = COLLECTIONS[self.rng.below(COLLECTIONS.len() as u64) as usize].to_owned();
        let id = DOC_IDS[self.rng.below(DOC_IDS.len() as u64) as usize].to_owned();
        (c, id)
    }

    fn next(&mut self, users: usize) -> (usize, Kind) {
        let user = self.rng.below(users as u64) as usize;
        if !self.retryable.is_empty() && self.rng.chance(0.08) {
            let i = self.rng.below(self.retryable.len() as u64) as usize;
            return self.retryable[i].clone();
        }
        let (c, id) = self.pick_doc();
        let known = self.versions.get(&(user, c.clone(), id.clone())).copied();
        let if_match = if known.is_some() && self.rng.chance(0.3) {
            known
        } else {
            None
        };
        let idem = self
            .rng
            .chance(0.4)
            .then(|| format!("key-{}", self.rng.next_u64()));
        let kind = match self.rng.below(100) {
            0..=29 => {
                let tag = self.tag(user);
                Kind::Put {
                    c,
                    id,
                    body: json!({"tag": tag, "n": self.counter}),
                    if_match,
                    if_none_match: if_match.is_none() && self.rng.chance(0.1),
                    idem,
                }
            }
            30..=41 => {
                let tag = self.tag(user);
                Kind::Patch {
                    c,
                    id,
                    body: json!({"tag": tag, "p": {"x": self.counter}}),
                    if_match,
                    idem,
                }
            }
            42..=49 => Kind::Delete {
                c,
                id,
                if_match,
                idem,
            },
            50..=55 => {
                let n = 1 + self.rng.below(4);
                let items = (0..n)
                    .map(|_| {
                        let (c, id) = self.pick_doc();
                        let tag = self.tag(user);
                        let op = ["put", "put", "patch", "delete"][self.rng.below(4) as usize];
                        let mut item = json!({"id": format!("item-{}", self.rng.next_u64()), "op": op, "collection": c, "doc": id});
                        if op != "delete" {
                            item["value"] = json!({"tag": tag, "n": self.counter});
                        }
                        item
                    })
                    .collect();
                Kind::Batch { items }
            }
            56..=67 => Kind::Get { c, id },
            68..=85 => {
                let head = self.heads.get(&user).copied().unwrap_or(0);
                let since = match self.rng.below(4) {
                    0 => 0,
                    1 => head,
                    2 => head.saturating_sub(self.rng.below(5)),
                    _ => head + self.rng.below(3),
                };
                let wait = if self.rng.chance(0.4) {
                    1 + self.rng.below(3)
                } else {
                    0
                };
                Kind::Changes {
                    since,
                    limit: 1 + self.rng.below(20),
                    wait,
                }
            }
            86..=91 => Kind::Head,
            _ => Kind::List {
                collection: self
                    .rng
                    .chance(0.5)
                    .then(|| COLLECTIONS[self.rng.below(2) as usize].to_owned()),
                limit: 1 + self.rng.below(10),
            },
        };
        if kind.mutates() && !matches!(kind, Kind::Batch { .. }) && self.rng.chance(0.5) {
            let has_key = match &kind {
                Kind::Put { idem, .. } | Kind::Patch { idem, .. } | Kind::Delete { idem, .. } => {
                    idem.is_some()
                }
                _ => false,
            };
            if has_key {
                self.retryable.push((user, kind.clone()));
            }
        }
        if let Kind::Batch { .. } = kind {
            if self.rng.chance(0.5) {
                self.retryable.push((user, kind.clone()));
            }
        }
        (user, kind)
    }

    fn observe(&mut self, user: usize, answer: &Answer) {
        let mut note = |c: &Value, id: &Value, v: &Value| {
            if let (Some(c), Some(id), Some(v)) = (c.as_str(), id.as_str(), v.as_u64()) {
                self.versions.insert((user, c.to_owned(), id.to_owned()), v);
                let h = self.heads.entry(user).or_default();
                *h = (*h).max(v);
            }
        };
        let b = &answer.body;
        note(&b["collection"], &b["id"], &b["version"]);
        for ch in b["changes"].as_array().into_iter().flatten() {
            note(&ch["collection"], &ch["id"], &ch["version"]);
        }
        for r in b["results"].as_array().into_iter().flatten() {
            note(
                &r["document"]["collection"],
                &r["document"]["id"],
                &r["document"]["version"],
            );
        }
        for h in [&b["head"], &b["next"]] {
            if let Some(h) = h.as_u64() {
                let e = self.heads.entry(user).or_default();
                *e = (*e).max(h);
            }
        }
    }
}

fn spawn_request<K: Kv + 'static>(
    sim: &mut Sim,
    service: &Arc<Service<K, World>>,
    records: &Records,
    user: usize,
    kind: Kind,
    crashable: bool,
) {
    let started = sim.steps;
    let index = {
        let mut r = records.borrow_mut();
        r.push(Record {
            user,
            kind: kind.clone(),
            started,
            finished: None,
            answer: None,
            task: u64::MAX,
        });
        r.len() - 1
    };
    let request = build(&kind, USERS[user]);
    let service = service.clone();
    let records_for_task = records.clone();
    let records = records.clone();
    let task = sim.spawn(crashable && kind.mutates(), async move {
        let response = service.handle(request).await;
        let (parts, body) = response.into_parts();
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        let mut r = records.borrow_mut();
        r[index].answer = Some(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        });
        // Finishing order is what "happened before" means for the checks;
        // the step counter is not visible here, so use a global sequence.
        r[index].finished = Some(u64::MAX);
    });
    records_for_task.borrow_mut()[index].task = task;
}

fn run_with<K: Kv + 'static>(cfg: &RunConfig, store: MemStore, kv: K) -> Result<Summary, String> {
    let mut sim = Sim::new(cfg.seed, START_MILLIS, cfg.crash_probability);
    let service = Arc::new(Service::new(service_config(cfg), kv, sim.world()));
    let records: Records = Rc::new(RefCell::new(Vec::new()));
    let mut workload = Workload {
        rng: Rng::new(cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D)),
        counter: 0,
        versions: HashMap::new(),
        heads: HashMap::new(),
        retryable: Vec::new(),
    };
    let mut issued = 0;
    let mut seen = 0;
    while issued < cfg.requests || sim.pending() > 0 {
        if issued < cfg.requests
            && (sim.pending() == 0
                || (sim.pending() < cfg.max_in_flight && workload.rng.chance(cfg.arrival)))
        {
            let (user, kind) = workload.next(cfg.users);
            spawn_request(&mut sim, &service, &records, user, kind, true);
            issued += 1;
        } else {
            sim.step();
            assert!(
                sim.steps < 5_000_000,
                "seed {}: runaway simulation",
                cfg.seed
            );
        }
        // Stamp newly finished records with their finishing order, and let
        // the workload learn versions from the answers.
        let mut r = records.borrow_mut();
        for rec in r.iter_mut().skip(seen) {
            if rec.finished == Some(u64::MAX) {
                rec.finished = Some(sim.steps);
            }
        }
        for rec in r.iter().skip(seen) {
            if let (Some(_), Some(a)) = (rec.finished, &rec.answer) {
                workload.observe(rec.user, a);
            }
        }
        while seen < r.len() && r[seen].finished.is_some() {
            seen += 1;
        }
    }
    let crashed = sim.crashed.len();

    // Quiescent final reads (never crashed).
    let final_start = records.borrow().len();
    for user in 0..cfg.users {
        spawn_request(
            &mut sim,
            &service,
            &records,
            user,
            Kind::Changes {
                since: 0,
                limit: 1000,
                wait: 0,
            },
            false,
        );
        spawn_request(
            &mut sim,
            &service,
            &records,
            user,
            Kind::List {
                collection: None,
                limit: 1000,
            },
            false,
        );
        for c in COLLECTIONS {
            for id in DOC_IDS {
                spawn_request(
                    &mut sim,
                    &service,
                    &records,
                    user,
                    Kind::Get {
                        c: (*c).into(),
                        id: (*id).into(),
                    },
                    false,
                );
            }
        }
    }
    sim.run_to_completion(10_000_000);
    let mut r = records.borrow_mut();
    for rec in r.iter_mut() {
        if rec.finished == Some(u64::MAX) {
            rec.finished = Some(sim.steps);
        }
    }
    drop(r);

    if let Some(fatal) = store.fatal() {
        return Err(format!("a real host would have crashed: {fatal}"));
    }
    let records = records.borrow();
    let mut summary = Summary {
        answered: records.iter().filter(|r| r.answer.is_some()).count(),
        crashed,
        steps: sim.steps,
        kv_ops: store.ops(),
        ..Summary::default()
    };
    let result = check(
        &store,
        cfg,
        &records,
        final_start,
        &mut summary,
        &mut sim,
        &service,
    )
    .and_then(|()| match crashed {
        0 => unreachable_entries(&store, &records),
        _ => Ok(()),
    });
    if result.is_err() && std::env::var_os("EDGESYNC_SIM_DUMP").is_some() {
        for (k, v) in store.dump() {
            let shown = match edgesync_core::decode_counter(&v) {
                Some(n) if v.len() == 8 || v.first().is_some_and(u8::is_ascii_digit) => {
                    format!("#{n}")
                }
                _ => String::from_utf8_lossy(&v).into_owned(),
            };
            eprintln!("{k} = {shown}");
        }
        for r in records.iter() {
            eprintln!(
                "{:?} -> {:?}",
                r.kind,
                r.answer.as_ref().map(|a| (a.status, a.body.to_string()))
            );
        }
    }
    result?;
    // Losing races now and then is fine; a run where mutations routinely
    // give up is a livelock, which the invariants alone would not catch.
    if summary.overloaded * 10 > summary.acknowledged.max(10) {
        return Err(format!(
            "livelock: {} mutations gave up after too many lost races, {} were acknowledged",
            summary.overloaded, summary.acknowledged
        ));
    }
    Ok(summary)
}

/// The final log of one user: seq → change, plus the floor.
struct FinalLog {
    floor: u64,
    entries: BTreeMap<u64, Value>,
}

fn final_log<K: Kv + 'static>(
    sim: &mut Sim,
    service: &Arc<Service<K, World>>,
    user: usize,
) -> Result<FinalLog, String> {
    let records: Records = Rc::new(RefCell::new(Vec::new()));
    let mut since = 0;
    let mut floor = 0;
    let mut entries = BTreeMap::new();
    loop {
        spawn_request(
            sim,
            service,
            &records,
            user,
            Kind::Changes {
                since,
                limit: 1000,
                wait: 0,
            },
            false,
        );
        sim.run_to_completion(10_000_000);
        let rec = records.borrow().last().cloned().expect("record");
        let a = rec.answer.ok_or("final read crashed")?;
        match a.status {
            410 => {
                floor = a.body["floor"].as_u64().ok_or("410 without floor")?;
                if since >= floor {
                    return Err(format!("410 for since={since} but floor={floor}"));
                }
                since = floor;
            }
            200 => {
                let changes = a.body["changes"].as_array().cloned().unwrap_or_default();
                if changes.is_empty() {
                    return Ok(FinalLog { floor, entries });
                }
                for ch in changes {
                    let seq = ch["seq"].as_u64().ok_or("change without seq")?;
                    entries.insert(seq, ch);
                }
                since = a.body["next"].as_u64().ok_or("no next")?;
            }
            s => return Err(format!("final changes read answered {s}: {}", a.body)),
        }
    }
}

fn tag_of(v: &Value) -> Option<String> {
    v["tag"].as_str().map(str::to_owned)
}

/// Storage stays bounded: with no crash in the run, every log entry left
/// in the store is named by a slot, a document pointer or an idempotency
/// pointer, so that compaction or a later writer can find and delete it.
/// The garbage the core documents as unreachable comes from crashes, and
/// from intents whose idempotency key more than one request sent (a
/// client's retry racing or following the first try): those are let be.
/// An intent of a key only one request used is garbage no one left.
fn unreachable_entries(store: &MemStore, records: &[Record]) -> Result<(), String> {
    let mut uses: HashMap<String, usize> = HashMap::new();
    for r in records {
        let keys: Vec<String> = match &r.kind {
            Kind::Put { idem, .. } | Kind::Patch { idem, .. } | Kind::Delete { idem, .. } => {
                idem.iter().cloned().collect()
            }
            Kind::Batch { items } => items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        for key in keys {
            *uses.entry(key).or_default() += 1;
        }
    }
    let dump = store.dump();
    let mut named = std::collections::HashSet::new();
    for (key, value) in &dump {
        let is_pointer = ["/s/", "/d/", "/k/"].iter().any(|m| key.contains(m));
        if let Some(id) = is_pointer
            .then(|| edgesync_core::decode_counter(value))
            .flatten()
        {
            let user = key.split('/').nth(1).unwrap_or_default();
            named.insert(format!("u/{user}/e/{id:016x}"));
        }
    }
    for (key, value) in &dump {
        if !key.contains("/e/") || named.contains(key) {
            continue;
        }
        let entry: Value = serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?;
        let reused = entry["ik"]
            .as_str()
            .is_some_and(|k| uses.get(k).is_some_and(|n| *n > 1));
        if !reused {
            return Err(format!(
                "entry {key} ({entry}) is left in the store, and nothing names it"
            ));
        }
    }
    Ok(())
}

fn check<K: Kv + 'static>(
    store: &MemStore,
    cfg: &RunConfig,
    records: &[Record],
    final_start: usize,
    summary: &mut Summary,
    sim: &mut Sim,
    service: &Arc<Service<K, World>>,
) -> Result<(), String> {
    // Nothing a client sent may cause a 5xx, and readers are never starved.
    // The one 5xx allowed is a mutation refused after losing too many races
    // (503, changes nothing; checked below like every refusal).
    let overloaded = |r: &Record, a: &Answer| {
        a.status == 503
            && r.kind.mutates()
            && a.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("contention"))
    };
    for r in records {
        if let Some(a) = &r.answer {
            if overloaded(r, a) {
                summary.overloaded += 1;
            } else if a.status >= 500 {
                return Err(format!(
                    "{:?} for user {} answered {}: {}",
                    r.kind, r.user, a.status, a.body
                ));
            }
            for item in a.body["results"].as_array().into_iter().flatten() {
                if item["status"] == 503 {
                    summary.overloaded += 1;
                }
            }
        }
    }

    // Invariant 4: readers never wait for writers, so a crashed writer
    // cannot hold one up. A read that does not ask to be held does work
    // bounded by its own page size, however many half-done mutations it
    // runs into (that their work is never half-visible is invariants 2
    // and 3 below). Work, not time: time here is the scheduler's. A read
    // that waited for good would not get here: the run stops as runaway.
    for r in records {
        let limit = match &r.kind {
            Kind::Changes { wait: 0, limit, .. } | Kind::List { limit, .. } => *limit,
            Kind::Get { .. } | Kind::Head => 0,
            _ => continue,
        };
        if r.task == u64::MAX {
            continue;
        }
        let ops = store.ops_of(r.task);
        let budget = READ_OPS_BASE + 2 * limit;
        if ops > budget {
            return Err(format!(
                "user {}: a read ({:?}) made {ops} KV operations (budget {budget}; {} writers crashed): did it wait for a writer?",
                r.user,
                r.kind,
                sim.crashed.len()
            ));
        }
    }

    for user in 0..cfg.users {
        let log = final_log(sim, service, user)?;
        summary.max_floor = summary.max_floor.max(log.floor);
        let floor = log.floor;
        let mine: Vec<&Record> = records.iter().filter(|r| r.user == user).collect();

        // Invariant 2 (final log): contiguous from the floor, each seq once.
        let mut expected = floor + 1;
        for (seq, ch) in &log.entries {
            if *seq != expected {
                return Err(format!(
                    "user {user}: final log jumps from {} to {seq}",
                    expected - 1
                ));
            }
            if ch["version"] != json!(seq) {
                return Err(format!(
                    "user {user}: change {seq} has version {}",
                    ch["version"]
                ));
            }
            expected += 1;
        }
        let head = expected - 1;

        // Invariant 6: nothing of another user anywhere in this user's answers.
        for r in &mine {
            if let Some(a) = &r.answer {
                let text = a.body.to_string();
                for other in 0..USERS.len() {
                    if other != user && text.contains(&format!("\"{other}:")) {
                        return Err(format!("user {user} saw a value of user {other}: {text}"));
                    }
                }
            }
        }

        // Invariant 1: each tag at most once in the log; acknowledged
        // mutations exactly at the seq they were acknowledged with.
        let mut tags: HashMap<String, u64> = HashMap::new();
        for (seq, ch) in &log.entries {
            if let Some(tag) = tag_of(&ch["value"]) {
                if let Some(prev) = tags.insert(tag.clone(), *seq) {
                    return Err(format!(
                        "user {user}: mutation {tag} logged twice (seq {prev} and {seq})"
                    ));
                }
            }
        }
        let expect_at = |seq: u64,
                         c: &str,
                         id: &str,
                         op: &str,
                         tag: Option<&str>,
                         what: &str|
         -> Result<(), String> {
            if seq <= floor {
                return Ok(());
            }
            let Some(ch) = log.entries.get(&seq) else {
                return Err(format!("user {user}: acknowledged {what} at seq {seq} missing from the log (head {head})"));
            };
            if ch["collection"] != json!(c) || ch["id"] != json!(id) || ch["op"] != json!(op) {
                return Err(format!(
                    "user {user}: acknowledged {what} at seq {seq} but the log has {ch}"
                ));
            }
            if let Some(tag) = tag {
                if tag_of(&ch["value"]).as_deref() != Some(tag) {
                    return Err(format!("user {user}: acknowledged {what} ({tag}) at seq {seq} but the log has {ch}"));
                }
            }
            Ok(())
        };
        // A tag sent more than once (an idempotent retry) may be refused on
        // one attempt and applied by another.
        let mut issued: HashMap<String, usize> = HashMap::new();
        for r in &mine {
            match &r.kind {
                Kind::Put { body, .. } | Kind::Patch { body, .. } => {
                    if let Some(t) = tag_of(body) {
                        *issued.entry(t).or_default() += 1;
                    }
                }
                Kind::Batch { items } => {
                    for item in items {
                        if let Some(t) = tag_of(&item["value"]) {
                            *issued.entry(t).or_default() += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        let refused_but_logged = |tag: &str| tags.contains_key(tag) && issued.get(tag) == Some(&1);
        // A batch is an ordered queue: its items are logged in its order,
        // and none is logged while an earlier unconditional put of it is
        // not (a put can only be refused by a stop: 429 or 503), whatever
        // the batch was answered. Only for batches sent once: a refusal
        // is not remembered, so an item refused for good (a patch of an
        // absent document: 404) may apply when the batch is sent again,
        // after the items behind it.
        for r in &mine {
            let Kind::Batch { items } = &r.kind else {
                continue;
            };
            let sent_once = items
                .iter()
                .all(|item| tag_of(&item["value"]).is_none_or(|t| issued.get(&t) == Some(&1)));
            if !sent_once {
                continue;
            }
            let mut last: Option<(u64, usize)> = None;
            let mut missing_put: Option<usize> = None;
            for (i, item) in items.iter().enumerate() {
                match tag_of(&item["value"]).and_then(|t| tags.get(&t).copied()) {
                    Some(seq) => {
                        if let Some((before, j)) = last.filter(|(before, _)| *before > seq) {
                            return Err(format!("user {user}: batch item {i} logged at {seq}, before item {j} at {before}: {items:?}"));
                        }
                        if let Some(j) = missing_put.filter(|_| floor == 0) {
                            return Err(format!("user {user}: batch item {i} logged at {seq} but the put before it (item {j}) is not: {items:?}"));
                        }
                        last = Some((seq, i));
                    }
                    None if item["op"] == "put" => {
                        missing_put.get_or_insert(i);
                    }
                    None => {}
                }
            }
        }
        let mut acked_versions: Vec<(usize, String, String, u64, bool)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if r.user != user {
                continue;
            }
            let Some(a) = &r.answer else { continue };
            match &r.kind {
                Kind::Put { c, id, body, .. } | Kind::Patch { c, id, body, .. }
                    if a.status == 200 || a.status == 201 =>
                {
                    let v = a.body["version"]
                        .as_u64()
                        .ok_or("mutation answer without version")?;
                    expect_at(v, c, id, "put", tag_of(body).as_deref(), "write")?;
                    acked_versions.push((i, c.clone(), id.clone(), v, false));
                    summary.acknowledged += 1;
                }
                Kind::Delete { c, id, .. } if a.status == 204 => {
                    let v = a
                        .headers
                        .get("etag")
                        .and_then(|e| e.to_str().ok())
                        .and_then(|e| e.trim_matches('"').parse().ok())
                        .ok_or("204 without ETag")?;
                    expect_at(v, c, id, "delete", None, "delete")?;
                    acked_versions.push((i, c.clone(), id.clone(), v, true));
                    summary.acknowledged += 1;
                }
                Kind::Put { body, .. } | Kind::Patch { body, .. } => {
                    // Refused: it must not be in the log.
                    if let Some(tag) = tag_of(body) {
                        if refused_but_logged(&tag) {
                            return Err(format!(
                                "user {user}: refused mutation {tag} ({}) is in the log",
                                a.status
                            ));
                        }
                    }
                }
                Kind::Batch { items } if a.status == 200 => {
                    let results = a.body["results"]
                        .as_array()
                        .ok_or("batch without results")?;
                    if results.len() != items.len() {
                        return Err("batch answered a different number of results".into());
                    }
                    for (item, res) in items.iter().zip(results) {
                        let status = res["status"].as_u64().unwrap_or(0);
                        let (c, id) = (
                            item["collection"].as_str().unwrap(),
                            item["doc"].as_str().unwrap(),
                        );
                        match status {
                            200 | 201 | 204 => {
                                let v = res["version"]
                                    .as_u64()
                                    .ok_or("batch result without version")?;
                                let op = if item["op"] == "delete" {
                                    "delete"
                                } else {
                                    "put"
                                };
                                expect_at(
                                    v,
                                    c,
                                    id,
                                    op,
                                    tag_of(&item["value"]).as_deref(),
                                    "batch item",
                                )?;
                                acked_versions.push((
                                    i,
                                    c.to_owned(),
                                    id.to_owned(),
                                    v,
                                    op == "delete",
                                ));
                                summary.acknowledged += 1;
                            }
                            _ => {
                                if let Some(tag) = tag_of(&item["value"]) {
                                    if refused_but_logged(&tag) {
                                        return Err(format!("user {user}: refused batch item {tag} ({status}) is in the log"));
                                    }
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }

        // Held requests cost a bounded number of reads per change they
        // wait through, never a busy loop.
        for r in &mine {
            let Kind::Changes { limit, wait, .. } = &r.kind else {
                continue;
            };
            if *wait == 0 || r.task == u64::MAX {
                continue;
            }
            let finished = r.finished.unwrap_or(u64::MAX);
            let commits_meanwhile = acked_versions
                .iter()
                .filter(|(i, ..)| {
                    records[*i]
                        .finished
                        .is_some_and(|f| f >= r.started && f <= finished)
                })
                .count() as u64;
            let ops = store.ops_of(r.task);
            let budget = 60 + 3 * limit + 8 * commits_meanwhile + 8 * *wait;
            if ops > budget {
                return Err(format!(
                    "user {user}: a long-poll ({:?}) made {ops} KV operations (budget {budget}): busy waiting?",
                    r.kind
                ));
            }
        }

        // Invariant 2 (observations): every page contiguous from since+1,
        // every observed entry identical to the final one.
        for r in &mine {
            let (Kind::Changes { since, .. }, Some(a)) = (&r.kind, &r.answer) else {
                continue;
            };
            if a.status != 200 {
                continue;
            }
            let changes = a.body["changes"]
                .as_array()
                .ok_or("changes answer without list")?;
            for (k, ch) in changes.iter().enumerate() {
                let seq = ch["seq"].as_u64().ok_or("no seq")?;
                if seq != since + 1 + k as u64 {
                    return Err(format!(
                        "user {user}: page since {since} has seq {seq} at position {k}"
                    ));
                }
                if seq > floor {
                    match log.entries.get(&seq) {
                        Some(fin) if fin == ch => {}
                        other => {
                            return Err(format!(
                                "user {user}: seq {seq} was {ch}, finally {other:?}"
                            ))
                        }
                    }
                }
            }
            let next = a.body["next"].as_u64().ok_or("no next")?;
            if next != since + changes.len() as u64 {
                return Err(format!(
                    "user {user}: next {next} after {} changes since {since}",
                    changes.len()
                ));
            }
        }

        // Documents as read (GET and listings) are states the log produced.
        let doc_matches_log = |d: &Value, what: &str| -> Result<(), String> {
            let v = d["version"].as_u64().ok_or("document without version")?;
            if v <= floor {
                return Ok(());
            }
            match log.entries.get(&v) {
                Some(ch)
                    if ch["op"] == "put"
                        && ch["collection"] == d["collection"]
                        && ch["id"] == d["id"]
                        && ch["value"] == d["value"] =>
                {
                    Ok(())
                }
                other => Err(format!(
                    "user {user}: {what} returned {d} but the log at {v} has {other:?}"
                )),
            }
        };
        for r in &mine {
            let Some(a) = &r.answer else { continue };
            match &r.kind {
                Kind::Get { .. } if a.status == 200 => doc_matches_log(&a.body, "GET")?,
                Kind::List { .. } if a.status == 200 => {
                    for d in a.body["documents"].as_array().into_iter().flatten() {
                        doc_matches_log(d, "listing")?;
                    }
                }
                _ => {}
            }
        }

        // Monotonic reads: a read that started after a mutation was
        // acknowledged sees it (or something later).
        for r in &mine {
            let (Some(a), started) = (&r.answer, r.started) else {
                continue;
            };
            let before: Vec<&(usize, String, String, u64, bool)> = acked_versions
                .iter()
                .filter(|(i, ..)| records[*i].finished.is_some_and(|f| f < started))
                .collect();
            let max_seq = before.iter().map(|(_, _, _, v, _)| *v).max().unwrap_or(0);
            match &r.kind {
                Kind::Head if a.status == 200 => {
                    let h = a.body["head"].as_u64().unwrap_or(0);
                    if h < max_seq {
                        return Err(format!(
                            "user {user}: head {h} after seq {max_seq} was acknowledged"
                        ));
                    }
                }
                Kind::Changes { since, .. }
                    if (a.status == 200 || a.status == 304)
                        && *since < max_seq
                        && max_seq > floor =>
                {
                    let empty =
                        a.status == 304 || a.body["changes"].as_array().is_some_and(Vec::is_empty);
                    if empty {
                        return Err(format!("user {user}: changes since {since} empty after seq {max_seq} was acknowledged"));
                    }
                }
                Kind::Get { c, id } => {
                    let latest = before
                        .iter()
                        .filter(|(_, bc, bi, _, _)| bc == c && bi == id)
                        .max_by_key(|(_, _, _, v, _)| *v);
                    if let Some((_, _, _, v, was_delete)) = latest {
                        if *v <= floor {
                            continue;
                        }
                        let same_doc =
                            |ch: &Value| ch["collection"] == json!(c) && ch["id"] == json!(id);
                        let changed_later = log.entries.range(v + 1..).any(|(_, ch)| same_doc(ch));
                        let ok = match a.status {
                            200 => a.body["version"].as_u64().unwrap_or(0) >= *v,
                            404 => *was_delete || changed_later,
                            _ => true,
                        };
                        if !ok {
                            return Err(format!("user {user}: GET {c}/{id} answered {} {} after version {v} was acknowledged", a.status, a.body));
                        }
                    }
                }
                _ => {}
            }
        }

        // Invariant 5: one winner per conditional version.
        let mut winners: HashMap<(String, String, u64), usize> = HashMap::new();
        for r in &mine {
            let Some(a) = &r.answer else { continue };
            let replayed = a.headers.contains_key("idempotent-replayed");
            let (c, id, v) = match &r.kind {
                Kind::Put {
                    c,
                    id,
                    if_match: Some(v),
                    ..
                }
                | Kind::Patch {
                    c,
                    id,
                    if_match: Some(v),
                    ..
                }
                | Kind::Delete {
                    c,
                    id,
                    if_match: Some(v),
                    ..
                } => (c, id, *v),
                _ => continue,
            };
            if (200..300).contains(&a.status) && !replayed {
                let n = winners.entry((c.clone(), id.clone(), v)).or_default();
                *n += 1;
                if *n > 1 {
                    return Err(format!(
                        "user {user}: two conditional writes on {c}/{id}@{v} succeeded"
                    ));
                }
            }
        }

        // Invariant 3: replaying the log gives the documents (final, quiescent).
        let mut finals: BTreeMap<(String, String), Option<Value>> = BTreeMap::new();
        let mut listing: Option<Vec<Value>> = None;
        for r in records.iter().skip(final_start).filter(|r| r.user == user) {
            let a = r.answer.as_ref().ok_or("final read crashed")?;
            match &r.kind {
                Kind::Get { c, id } => {
                    finals.insert(
                        (c.clone(), id.clone()),
                        (a.status == 200).then(|| a.body.clone()),
                    );
                }
                Kind::List { .. } => {
                    if a.body.get("next_after").is_some() {
                        return Err("final listing was paged".into());
                    }
                    listing = Some(a.body["documents"].as_array().cloned().unwrap_or_default());
                }
                _ => {}
            }
        }
        let listing = listing.ok_or("no final listing")?;
        let listed: BTreeMap<(String, String), Value> = listing
            .iter()
            .map(|d| {
                (
                    (
                        d["collection"].as_str().unwrap().to_owned(),
                        d["id"].as_str().unwrap().to_owned(),
                    ),
                    d.clone(),
                )
            })
            .collect();
        let order: Vec<(String, String)> = listing
            .iter()
            .map(|d| {
                (
                    d["collection"].as_str().unwrap().to_owned(),
                    d["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        if sorted != order {
            return Err(format!(
                "user {user}: listing not ordered by (collection, id): {order:?}"
            ));
        }
        for ((c, id), got) in &finals {
            if listed.get(&(c.clone(), id.clone())) != got.as_ref() {
                return Err(format!(
                    "user {user}: listing and GET disagree on {c}/{id}: {:?} vs {got:?}",
                    listed.get(&(c.clone(), id.clone()))
                ));
            }
        }
        if floor == 0 {
            let mut replay: BTreeMap<(String, String), (u64, Value)> = BTreeMap::new();
            for (seq, ch) in &log.entries {
                let key = (
                    ch["collection"].as_str().unwrap().to_owned(),
                    ch["id"].as_str().unwrap().to_owned(),
                );
                if ch["op"] == "put" {
                    replay.insert(key, (*seq, ch["value"].clone()));
                } else {
                    replay.remove(&key);
                }
            }
            for ((c, id), got) in &finals {
                let want = replay.get(&(c.clone(), id.clone()));
                let ok = match (want, got) {
                    (None, None) => true,
                    (Some((v, value)), Some(doc)) => {
                        doc["version"] == json!(v) && doc["value"] == *value
                    }
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "user {user}: replay gives {want:?} for {c}/{id}, the store has {got:?}"
                    ));
                }
            }
        } else {
            // Below the floor the log is gone; what remains must still
            // agree with the documents: each document's version is either
            // below the floor or the last change to it in the log.
            for ((c, id), got) in &finals {
                let last = log
                    .entries
                    .iter()
                    .rev()
                    .find(|(_, ch)| ch["collection"] == json!(c) && ch["id"] == json!(id));
                match (last, got) {
                    (Some((seq, ch)), Some(doc))
                        if ch["op"] != "put"
                            || doc["version"] != json!(seq)
                            || doc["value"] != ch["value"] =>
                    {
                        return Err(format!(
                            "user {user}: {c}/{id} is {doc} but its last change is {ch}"
                        ));
                    }
                    (Some((_, ch)), None) if ch["op"] == "put" => {
                        return Err(format!(
                            "user {user}: {c}/{id} is absent but its last change is {ch}"
                        ));
                    }
                    (None, Some(doc)) if doc["version"].as_u64().unwrap_or(0) > floor => {
                        return Err(format!(
                            "user {user}: {c}/{id} at {doc} has no change above the floor {floor}"
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}
