//! The measured jobs, each for edgesync (native or Spin: the same HTTP API)
//! and for its CouchDB-protocol equivalent on PouchDB Server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use edgesync_core::auth::{self, Expectations};
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::Full;

use crate::client::{self, closed_loop, Conn, Job, Reply, Req, Stats};
use crate::procs::JWT_SECRET;

/// Which protocol a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// edgesync's v1 API (native server or Spin components).
    Edgesync,
    /// CouchDB's API (PouchDB Server); a "user" is a database.
    Couch,
    /// The fixed-304 server: answers anything with 304.
    Limit,
}

/// A server to measure.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub label: &'static str,
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
}

/// The `Authorization` value for `user` (see [`token`]).
pub fn bearer(user: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {}", token(user))).expect("token is header-safe")
}

/// A token for `user`, signed with the servers' [`JWT_SECRET`], valid for a
/// day.
pub fn token(user: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let expect = Expectations {
        secret: JWT_SECRET.as_bytes(),
        audience: None,
        issuer: None,
    };
    auth::mint(&expect, user, now, 24 * 3600)
}

/// A JSON document of exactly `size` bytes, `{"title":..,"body":"xxx.."}`.
pub fn json_doc(size: usize, tag: &str) -> String {
    let head = format!("{{\"title\":\"{tag}\",\"done\":false,\"body\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// The 1 KiB document every write benchmark sends.
pub fn doc_1k() -> String {
    json_doc(1024, "benchmark")
}

fn req(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&HeaderValue>,
    body: Option<String>,
) -> Req {
    let mut b = client::request(method, addr, path);
    if let Some(auth) = auth {
        b = b.header(http::header::AUTHORIZATION, auth.clone());
    }
    match body {
        Some(body) => b
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body))),
        None => b.body(Full::default()),
    }
    .expect("valid request")
}

async fn expect_ok(conn: &mut Conn, request: Req, what: &str) -> Result<Reply> {
    let reply = conn.send(request).await.with_context(|| what.to_owned())?;
    if !reply.status.is_success() {
        bail!(
            "{what}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)])
        );
    }
    Ok(reply)
}

/// PUT one document for an edgesync user; returns its version (= the
/// user's head right after).
async fn es_put(
    conn: &mut Conn,
    addr: SocketAddr,
    user: &str,
    id: &str,
    body: &str,
) -> Result<u64> {
    let auth = bearer(user);
    let reply = expect_ok(
        conn,
        req(
            addr,
            "PUT",
            &format!("/v1/docs/todos/{id}"),
            Some(&auth),
            Some(body.to_owned()),
        ),
        "edgesync PUT",
    )
    .await?;
    reply.json()["version"]
        .as_u64()
        .context("PUT answer without version")
}

/// PUT a new document into a CouchDB database (a "user").
async fn couch_put(
    conn: &mut Conn,
    addr: SocketAddr,
    db: &str,
    id: &str,
    body: &str,
) -> Result<()> {
    let path = format!("/{db}/{id}");
    let request = req(addr, "PUT", &path, None, Some(body.to_owned()));
    expect_ok(conn, request, "couch PUT").await?;
    Ok(())
}

/// Create a CouchDB database (a "user").
async fn couch_db(conn: &mut Conn, addr: SocketAddr, db: &str) -> Result<()> {
    let reply = conn
        .send(req(addr, "PUT", &format!("/{db}"), None, None))
        .await?;
    if !(reply.status.is_success() || reply.status == StatusCode::PRECONDITION_FAILED) {
        bail!("creating database {db}: {}", reply.status);
    }
    Ok(())
}

async fn couch_update_seq(
    conn: &mut Conn,
    addr: SocketAddr,
    db: &str,
) -> Result<serde_json::Value> {
    let reply = expect_ok(
        conn,
        req(addr, "GET", &format!("/{db}"), None, None),
        "GET /db",
    )
    .await?;
    Ok(reply.json()["update_seq"].clone())
}

fn seq_str(seq: &serde_json::Value) -> String {
    match seq {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Idle poll

/// A fixed request with fixed headers, expecting one status.
pub struct Probe {
    addr: SocketAddr,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    expect: StatusCode,
}

impl Job for Probe {
    fn request(&mut self) -> Req {
        let mut b = client::request("GET", self.addr, &self.path);
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b.body(Full::default()).expect("valid request")
    }
    fn check(&mut self, reply: &Reply) -> bool {
        reply.status == self.expect
    }
}

/// Which idle probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `/v1/changes?since=N` + `If-None-Match: "N"` (CouchDB: `_changes?since=`
    /// + the ETag Express computed for the previous answer).
    Changes,
    /// `/v1/head` + `If-None-Match` (CouchDB: `GET /db` + its ETag).
    Head,
}

/// 304 probes from `clients` users (one connection each).
pub async fn idle_poll(
    target: &Target,
    probe: ProbeKind,
    clients: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Stats> {
    let addr = target.addr;
    let mut conn = Conn::connect(addr).await?;
    let mut jobs = Vec::new();
    let inm = HeaderName::from_static("if-none-match");
    for i in 0..clients {
        let user = format!("idle-{i}");
        let (path, headers) = match target.kind {
            Kind::Limit => (
                "/v1/changes?since=1".to_owned(),
                vec![
                    (http::header::AUTHORIZATION, bearer(&user)),
                    (inm.clone(), HeaderValue::from_static("\"1\"")),
                ],
            ),
            Kind::Edgesync => {
                let head = match probe {
                    // Only the first probe creates the users' data.
                    ProbeKind::Changes => es_put(&mut conn, addr, &user, "a", "{\"n\":1}").await?,
                    ProbeKind::Head => {
                        let r = expect_ok(
                            &mut conn,
                            req(addr, "GET", "/v1/head", Some(&bearer(&user)), None),
                            "GET /v1/head",
                        )
                        .await?;
                        r.json()["head"].as_u64().context("head")?
                    }
                };
                let path = match probe {
                    ProbeKind::Changes => format!("/v1/changes?since={head}"),
                    ProbeKind::Head => "/v1/head".to_owned(),
                };
                (
                    path,
                    vec![
                        (http::header::AUTHORIZATION, bearer(&user)),
                        (inm.clone(), HeaderValue::from_str(&format!("\"{head}\""))?),
                    ],
                )
            }
            Kind::Couch => {
                if probe == ProbeKind::Changes {
                    couch_db(&mut conn, addr, &user).await?;
                    couch_put(&mut conn, addr, &user, "a", "{\"n\":1}").await?;
                }
                let seq = seq_str(&couch_update_seq(&mut conn, addr, &user).await?);
                let path = match probe {
                    ProbeKind::Changes => format!("/{user}/_changes?since={seq}"),
                    ProbeKind::Head => format!("/{user}"),
                };
                let first = expect_ok(
                    &mut conn,
                    req(addr, "GET", &path, None, None),
                    "couch probe",
                )
                .await?;
                let etag = first
                    .headers
                    .get(http::header::ETAG)
                    .context("PouchDB Server sent no ETag")?
                    .clone();
                (path, vec![(inm.clone(), etag)])
            }
        };
        jobs.push(Probe {
            addr,
            path,
            headers,
            expect: StatusCode::NOT_MODIFIED,
        });
    }
    closed_loop(addr, jobs, warmup, measure).await
}

// ---------------------------------------------------------------------------
// Writes

/// Documents each writer cycles over.
const WRITER_DOCS: u64 = 64;

/// A writer cycling over [`WRITER_DOCS`] documents of its own, created
/// before the measurement starts (see [`writes`]).
pub struct Writer {
    addr: SocketAddr,
    kind: Kind,
    /// edgesync: the user's token; CouchDB: none.
    auth: Option<HeaderValue>,
    /// edgesync: `/v1/docs/todos/`; CouchDB: `/<db>/`.
    prefix: String,
    writer: usize,
    i: u64,
    body: String,
    pending: String,
    revs: HashMap<String, String>,
}

impl Job for Writer {
    fn request(&mut self) -> Req {
        let doc = format!("w{}-{}", self.writer, self.i % WRITER_DOCS);
        self.i += 1;
        let body = match (self.kind, self.revs.get(&doc)) {
            (Kind::Couch, Some(rev)) => format!("{{\"_rev\":\"{rev}\",{}", &self.body[1..]),
            _ => self.body.clone(),
        };
        let path = format!("{}{doc}", self.prefix);
        self.pending = doc;
        req(self.addr, "PUT", &path, self.auth.as_ref(), Some(body))
    }
    fn check(&mut self, reply: &Reply) -> bool {
        match self.kind {
            Kind::Couch if reply.status == StatusCode::CREATED => {
                if let Some(rev) = reply.json()["rev"].as_str() {
                    self.revs.insert(self.pending.clone(), rev.to_owned());
                }
                true
            }
            Kind::Couch => false,
            _ => reply.status == StatusCode::OK || reply.status == StatusCode::CREATED,
        }
    }
}

/// `writers` concurrent writers of 1 KiB documents, each its own user
/// (`same_user == false`) or all one user. Every figure is of replaces:
/// the documents are created first, unmeasured — a create costs a store
/// more than a replace (twice the KV writes on Spin), and a slow target
/// would otherwise spend its measured window creating while a fast one
/// spends it replacing.
pub async fn writes(
    target: &Target,
    writers: usize,
    same_user: bool,
    run: &str,
    warmup: Duration,
    measure: Duration,
) -> Result<Stats> {
    let addr = target.addr;
    let mut conn = Conn::connect(addr).await?;
    let mut jobs = Vec::new();
    for w in 0..writers {
        let user = if same_user {
            format!("writes-{run}")
        } else {
            format!("writes-{run}-{w}")
        };
        let (auth, prefix) = match target.kind {
            Kind::Couch => {
                couch_db(&mut conn, addr, &user).await?;
                (None, format!("/{user}/"))
            }
            _ => (Some(bearer(&user)), "/v1/docs/todos/".to_owned()),
        };
        jobs.push(Writer {
            addr,
            kind: target.kind,
            auth,
            prefix,
            writer: w,
            i: 0,
            body: doc_1k(),
            pending: String::new(),
            revs: HashMap::new(),
        });
    }
    let created = jobs.into_iter().map(|mut job| {
        tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            for _ in 0..WRITER_DOCS {
                let reply = conn.send(job.request()).await?;
                if !job.check(&reply) {
                    bail!("creating a writer's documents: {}", reply.status);
                }
            }
            Ok(job)
        })
    });
    let mut jobs = Vec::new();
    for task in created.collect::<Vec<_>>() {
        jobs.push(task.await??);
    }
    closed_loop(addr, jobs, warmup, measure).await
}

// ---------------------------------------------------------------------------
// Wake-up

/// How held long-polls are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One waiter per user; `sample` of those users get one write each,
    /// one after another on each of a few writer connections.
    Spread,
    /// Every waiter on one user; one write wakes them all.
    FanOut,
}

/// What a wake-up run measured.
#[derive(Debug)]
pub struct WakeStats {
    pub held: usize,
    /// Waiters whose user was written to.
    pub affected: usize,
    /// Of those, answered with the change.
    pub woken: usize,
    /// Answered before the write (should be 0).
    pub early: usize,
    /// Waiters woken before their write's acknowledgement reached the
    /// writer (counted as 0 ms).
    pub before_ack: usize,
    pub hist: Histogram<u64>,
    pub rss_idle_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    /// Time to open and send every long-poll.
    pub hold_setup: Duration,
}

impl WakeStats {
    /// Pool another round of the same shape and size into this one: counts
    /// and latencies add up; memory and set-up time stay the first round's.
    pub fn pool(&mut self, other: WakeStats) {
        self.affected += other.affected;
        self.woken += other.woken;
        self.early += other.early;
        self.before_ack += other.before_ack;
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds");
    }
}

/// Aborts every task still running when dropped, so that a failed or
/// timed-out run releases its connections (and file descriptors).
struct AbortOnDrop<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct Waiter {
    user: String,
    done: Instant,
    changed: bool,
}

/// Connections the wake-up scenario writes on at once.
pub const WAKE_WRITERS: usize = 4;

/// Hold `held` long-polls (`wait=25`), write, and time each affected
/// waiter's answer from its write's acknowledgement.
pub async fn wakeup(
    target: &Target,
    held: usize,
    shape: Shape,
    sample: usize,
    run: &str,
    settle: Duration,
) -> Result<WakeStats> {
    let addr = target.addr;
    let kind = target.kind;
    let mut setup = Conn::connect(addr).await?;
    let users: Vec<String> = match shape {
        Shape::Spread => (0..held).map(|i| format!("wake-{run}-{i}")).collect(),
        Shape::FanOut => vec![format!("wake-{run}"); held],
    };
    let affected = match shape {
        Shape::Spread => sample.min(held),
        Shape::FanOut => held,
    };
    let written: Vec<String> = match shape {
        Shape::Spread => users[..affected].to_vec(),
        Shape::FanOut => vec![users[0].clone()],
    };
    // Written users get data first, so their waiters sit at a real cursor;
    // the others wait on an empty log (edgesync) or an empty database.
    let mut cursor: HashMap<String, String> = HashMap::new();
    for user in &written {
        let seq = match kind {
            Kind::Couch => {
                couch_db(&mut setup, addr, user).await?;
                couch_put(&mut setup, addr, user, "seed", "{\"n\":0}").await?;
                seq_str(&couch_update_seq(&mut setup, addr, user).await?)
            }
            _ => es_put(&mut setup, addr, user, "seed", "{\"n\":0}")
                .await?
                .to_string(),
        };
        cursor.insert(user.clone(), seq);
    }
    if kind == Kind::Couch && shape == Shape::Spread {
        for user in &users[affected..] {
            couch_db(&mut setup, addr, user).await?;
        }
    }
    let rss_idle_kib = crate::procs::rss_kib(target.pid);

    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let sent = Arc::new(AtomicUsize::new(0));
    let t_setup = Instant::now();
    let mut tasks = AbortOnDrop(Vec::with_capacity(held));
    for user in &users {
        let since = cursor.get(user).cloned().unwrap_or_else(|| "0".into());
        let (path, auth, inm) = match kind {
            Kind::Couch => (
                format!("/{user}/_changes?feed=longpoll&since={since}&timeout=25000"),
                None,
                None,
            ),
            _ => (
                format!("/v1/changes?since={since}&wait=25"),
                Some(bearer(user)),
                Some(HeaderValue::from_str(&format!("\"{since}\""))?),
            ),
        };
        let user = user.clone();
        let connecting = connecting.clone();
        let sent = sent.clone();
        tasks.0.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.expect("open semaphore");
            let mut conn = Conn::connect(addr).await?;
            drop(permit);
            let mut request = req(addr, "GET", &path, auth.as_ref(), None);
            if let Some(inm) = inm {
                request
                    .headers_mut()
                    .insert(http::header::IF_NONE_MATCH, inm);
            }
            sent.fetch_add(1, Ordering::Relaxed);
            let reply = conn.send(request).await?;
            let done = Instant::now();
            let changed = reply.status == StatusCode::OK && {
                let v = reply.json();
                let list = if kind == Kind::Couch {
                    &v["results"]
                } else {
                    &v["changes"]
                };
                list.as_array().is_some_and(|a| !a.is_empty())
            };
            Ok::<_, anyhow::Error>(Waiter {
                user,
                done,
                changed,
            })
        }));
    }
    while sent.load(Ordering::Relaxed) < held {
        if Instant::now() - t_setup > Duration::from_secs(20) {
            bail!(
                "only {} of {held} long-polls connected in 20 s",
                sent.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hold_setup = t_setup.elapsed();
    // Let the last requests reach the server and park.
    tokio::time::sleep(settle).await;
    let rss_held_kib = crate::procs::rss_kib(target.pid);
    let early_before_writes = tasks.0.iter().filter(|t| t.is_finished()).count();

    // The writes go out on a few connections at once: one after another,
    // a host that acknowledges ~40 writes/s (the Spin components in the
    // harness) would still be writing when the first holds run out, and
    // the last waiters would time out instead of being woken.
    let mut writers = AbortOnDrop(Vec::with_capacity(WAKE_WRITERS));
    for w in 0..WAKE_WRITERS.min(written.len()) {
        let mine: Vec<(usize, String)> = written
            .iter()
            .cloned()
            .enumerate()
            .skip(w)
            .step_by(WAKE_WRITERS)
            .collect();
        writers.0.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut acks = Vec::with_capacity(mine.len());
            for (n, user) in mine {
                let id = format!("wake{n}");
                match kind {
                    Kind::Couch => couch_put(&mut conn, addr, &user, &id, "{\"n\":1}").await?,
                    _ => {
                        es_put(&mut conn, addr, &user, &id, "{\"n\":1}").await?;
                    }
                }
                acks.push((user, Instant::now()));
            }
            Ok::<_, anyhow::Error>(acks)
        }));
    }
    let mut acks: HashMap<String, Instant> = HashMap::new();
    for writer in writers.0.iter_mut() {
        acks.extend(writer.await??);
    }

    let mut hist = client::histogram();
    let (mut woken, mut before_ack) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    for task in tasks.0.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(joined) = tokio::time::timeout(left, task).await else {
            continue;
        };
        let Ok(Ok(w)) = joined else { continue };
        let Some(ack) = acks.get(&w.user) else {
            continue;
        };
        if !w.changed {
            continue;
        }
        woken += 1;
        match w.done.checked_duration_since(*ack) {
            Some(d) => client::record(&mut hist, d),
            None => {
                before_ack += 1;
                client::record(&mut hist, Duration::ZERO);
            }
        }
    }
    Ok(WakeStats {
        held,
        affected,
        woken,
        early: early_before_writes,
        before_ack,
        hist,
        rss_idle_kib,
        rss_held_kib,
        hold_setup,
    })
}

/// RSS before and while `n` connections are open that never send a request.
pub async fn idle_connections(
    target: &Target,
    n: usize,
    settle: Duration,
) -> Result<(Option<u64>, Option<u64>)> {
    let before = crate::procs::rss_kib(target.pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(tokio::net::TcpStream::connect(target.addr).await?);
    }
    tokio::time::sleep(settle).await;
    let open = crate::procs::rss_kib(target.pid);
    drop(conns);
    Ok((before, open))
}

// ---------------------------------------------------------------------------
// Catch-up

/// A catch-up measurement.
#[derive(Debug)]
pub struct CatchUp {
    pub changes: u64,
    pub requests: usize,
    pub bytes: usize,
    /// One time per round.
    pub times: Vec<Duration>,
}

/// Give `user` `total` changes (in batches of 100) of ~100-byte values.
pub async fn seed_log(target: &Target, user: &str, total: usize) -> Result<()> {
    let addr = target.addr;
    let mut conn = Conn::connect(addr).await?;
    if target.kind == Kind::Couch {
        couch_db(&mut conn, addr, user).await?;
    }
    let auth = bearer(user);
    for start in (0..total).step_by(100) {
        let items: Vec<serde_json::Value> = (start..(start + 100).min(total))
            .map(|n| {
                let value: serde_json::Value =
                    serde_json::from_str(&json_doc(100, &format!("item {n}"))).expect("json");
                match target.kind {
                    Kind::Couch => {
                        let mut v = value;
                        v["_id"] = format!("d{n}").into();
                        v
                    }
                    _ => serde_json::json!({
                        "id": format!("k{n}"), "op": "put", "collection": "todos",
                        "doc": format!("d{n}"), "value": value,
                    }),
                }
            })
            .collect();
        let request = match target.kind {
            Kind::Couch => req(
                addr,
                "POST",
                &format!("/{user}/_bulk_docs"),
                None,
                Some(serde_json::json!({ "docs": items }).to_string()),
            ),
            _ => req(
                addr,
                "POST",
                "/v1/mutations",
                Some(&auth),
                Some(serde_json::json!({ "mutations": items }).to_string()),
            ),
        };
        expect_ok(&mut conn, request, "seeding the catch-up log").await?;
    }
    Ok(())
}

/// Read `user`'s whole log from the start with `limit=1000`, `rounds` times.
pub async fn catch_up(target: &Target, user: &str, rounds: usize) -> Result<CatchUp> {
    let addr = target.addr;
    let auth = bearer(user);
    let mut conn = Conn::connect(addr).await?;
    let mut result = CatchUp {
        changes: 0,
        requests: 0,
        bytes: 0,
        times: Vec::new(),
    };
    for _ in 0..rounds {
        let (mut changes, mut requests, mut bytes) = (0u64, 0usize, 0usize);
        let t0 = Instant::now();
        match target.kind {
            Kind::Couch => {
                // The head is read first, as edgesync's answers carry it.
                let head = couch_update_seq(&mut conn, addr, user).await?;
                requests += 1;
                let mut since = "0".to_owned();
                loop {
                    let path =
                        format!("/{user}/_changes?since={since}&limit=1000&include_docs=true");
                    let r = expect_ok(
                        &mut conn,
                        req(addr, "GET", &path, None, None),
                        "couch changes",
                    )
                    .await?;
                    requests += 1;
                    bytes += r.body.len();
                    let v = r.json();
                    let n = v["results"].as_array().map_or(0, Vec::len);
                    changes += n as u64;
                    since = seq_str(&v["last_seq"]);
                    if n == 0 || v["last_seq"] == head {
                        break;
                    }
                }
            }
            _ => {
                let mut since = 0u64;
                loop {
                    let path = format!("/v1/changes?since={since}&limit=1000");
                    let r = expect_ok(
                        &mut conn,
                        req(addr, "GET", &path, Some(&auth), None),
                        "changes",
                    )
                    .await?;
                    requests += 1;
                    bytes += r.body.len();
                    let v = r.json();
                    changes += v["changes"].as_array().map_or(0, Vec::len) as u64;
                    since = v["next"].as_u64().context("next")?;
                    if since >= v["head"].as_u64().context("head")? {
                        break;
                    }
                }
            }
        }
        result.times.push(t0.elapsed());
        result.changes = changes;
        result.requests = requests;
        result.bytes = bytes;
    }
    Ok(result)
}

// ---------------------------------------------------------------------------
// Write → `edgesync watch`

/// Start `edgesync watch --json` (live mode, its own state directory) for a
/// fresh user on `target`, then write `writes` documents one at a time,
/// `gap` apart, and time each from its acknowledgement to the tool reading
/// the line `watch` prints for it.
pub async fn watch_delay(
    target: &Target,
    edgesync: &std::path::Path,
    run: &str,
    writes: usize,
    gap: Duration,
) -> Result<Histogram<u64>> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let addr = target.addr;
    let user = format!("watch-{run}");
    let state = tempfile::Builder::new()
        .prefix("edgesync-bench-watch")
        .tempdir()?;
    let mut watch = tokio::process::Command::new(edgesync)
        .args(["watch", "--json"])
        .env("EDGESYNC_URL", format!("http://{addr}"))
        .env("EDGESYNC_TOKEN", token(&user))
        .env("EDGESYNC_STATE_DIR", state.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} watch", edgesync.display()))?;
    let mut lines = BufReader::new(watch.stdout.take().context("watch stdout")?).lines();
    let mut conn = Conn::connect(addr).await?;
    // The line `watch` prints for document `id`, and when it was read.
    let mut printed = async |id: &str, within: Duration| -> Result<Option<Instant>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Err(_) => return Ok(None),
                Ok(line) => line?.context("watch exited")?,
            };
            let at = Instant::now();
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("watch printed {line:?}"))?;
            if v["id"] == id {
                return Ok(Some(at));
            }
        }
    };
    // Writes before `watch` has bootstrapped are part of its snapshot, not
    // changes: write until one is printed.
    let mut ready = false;
    for i in 0..100 {
        let id = format!("warm{i}");
        es_put(&mut conn, addr, &user, &id, "{\"n\":0}").await?;
        if printed(&id, Duration::from_millis(500)).await?.is_some() {
            ready = true;
            break;
        }
    }
    if !ready {
        bail!("edgesync watch printed none of 100 warm-up writes");
    }
    let mut hist = client::histogram();
    for i in 0..writes {
        tokio::time::sleep(gap).await;
        let id = format!("w{i}");
        es_put(&mut conn, addr, &user, &id, "{\"n\":1}").await?;
        let ack = Instant::now();
        let at = printed(&id, Duration::from_secs(10))
            .await?
            .with_context(|| format!("watch did not print write {i} within 10 s"))?;
        client::record(&mut hist, at.saturating_duration_since(ack));
    }
    watch.kill().await.ok();
    Ok(hist)
}
