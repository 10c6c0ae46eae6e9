//! edgesync-client and the `edgesync` client commands against a real
//! `edgesync serve` process: convergence, an offline queue across a server
//! outage, resync after a forced 410, long-polling (or smart polling when
//! the server does not hold), 429 and 503 with `Retry-After`, idle back-off, and the
//! CLI's exit codes.
//!
//! Every wait here is a bounded poll for a condition (generous deadlines,
//! never a timing assertion). Requests are counted by a recording proxy
//! between client and server; waits are measured on the client's own clock.

use edgesync_client::{
    Client, Clock, Mode, Mutation, Origin, Polling, SendOutcome, Sleep, SyncConfig, SyncEvent,
    SystemClock, VirtualClock,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "client-e2e-secret-0123456789abcdefghijklmnop";

/// The binary under test; `EDGESYNC_TEST_BIN` points the suite at another
/// build (e.g. a release binary).
fn bin() -> String {
    std::env::var("EDGESYNC_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_edgesync").to_string())
}

// ------------------------------------------------------------------ helpers

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "edgesync-client-e2e-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `edgesync serve` process.
struct Server {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Server {
    fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            child: None,
            port: free_port(),
            data_dir: data_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: data_dir.with_extension("log"),
        };
        s.spawn();
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("EDGESYNC_JWT_SECRET", SECRET)
            .env_remove("EDGESYNC_URL")
            .env_remove("EDGESYNC_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn edgesync serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "edgesync serve exited with {status} before becoming healthy:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if http_get(self.port, "/v1/health", None).is_some_and(|(s, _)| s == 200) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "edgesync serve did not answer GET /v1/health within 30 s:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// Stop the process (as a crash would: no graceful shutdown).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and data dir.
    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The server's whole change log for `user` (from `since`).
    fn changes(&self, user: &str, since: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = since;
        loop {
            let (status, body) = http_get(
                self.port,
                &format!("/v1/changes?since={since}&limit=1000"),
                Some(&token(user)),
            )
            .expect("server reachable");
            assert_eq!(status, 200, "GET /v1/changes: {body}");
            let page: Value = serde_json::from_str(&body).unwrap();
            let entries = page["changes"].as_array().unwrap().clone();
            let next = page["next"].as_u64().unwrap();
            let head = page["head"].as_u64().unwrap();
            out.extend(entries);
            if next >= head || next == since {
                return out;
            }
            since = next;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn token(user: &str) -> String {
    let expect = edgesync_core::auth::Expectations {
        secret: SECRET.as_bytes(),
        audience: None,
        issuer: None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    edgesync_core::auth::mint(&expect, user, now, 3600)
}

/// A minimal blocking HTTP/1.1 GET (no client library in the way).
fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    http_request(port, "GET", path, token, None)
}

/// A minimal blocking HTTP/1.1 request with an optional JSON body.
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.map(Value::to_string).unwrap_or_default();
    let content = if body.is_empty() {
        String::new()
    } else {
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}{content}connection: close\r\n\r\n{body}"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b)?;
    // Small bodies only: undo chunked encoding if the server used it.
    let body = if resp
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Poll `cond` until it holds (bounded), with a message that says what did
/// not happen.
async fn eventually<F: FnMut() -> bool>(what: &str, secs: u64, mut cond: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Fast retries, so that tests do not wait out production back-off.
fn test_config(mode: Mode) -> SyncConfig {
    SyncConfig {
        mode,
        retry: edgesync_client::Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(500),
        },
        ..SyncConfig::default()
    }
}

fn replica(server: &Server, user: &str, db: &Path, mode: Mode) -> Client {
    Client::builder(server.url(), token(user))
        .sqlite(db)
        .config(test_config(mode))
        .build()
        .unwrap()
}

fn snapshot(c: &Client) -> Vec<(String, String, u64, Value)> {
    c.list(None)
        .unwrap()
        .into_iter()
        .map(|d| (d.collection, d.id, d.version, d.value))
        .collect()
}

/// One request and its answer, as the recording proxy saw them.
#[derive(Debug, Clone)]
struct Exchange {
    /// Path and query.
    target: String,
    request_headers: Vec<(String, String)>,
    request_body: Vec<u8>,
    status: u16,
    response_headers: Vec<(String, String)>,
    response_body: Vec<u8>,
    /// The client's clock when the request arrived.
    sent_at: Duration,
}

impl Exchange {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn request_header(&self, name: &str) -> Option<&str> {
        header(&self.request_headers, name)
    }

    fn response_header(&self, name: &str) -> Option<&str> {
        header(&self.response_headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Called with each exchange before its answer is passed on to the client.
type Hook = dyn Fn(&Exchange) + Send + Sync;

/// A proxy hook that writes `todos/<id>` = `value` for `user` on the server
/// right after the first changes probe sent at or after `after` on `clock`
/// has been answered, and the time that probe was sent (the last one before
/// the change).
fn write_once_after(
    port: u16,
    clock: &VirtualClock,
    after: Duration,
    (user, id, value): (&'static str, &'static str, Value),
) -> (Box<Hook>, Arc<Mutex<Option<Duration>>>) {
    let trigger = Arc::new(Mutex::new(None));
    let (clock, fired) = (clock.clone(), trigger.clone());
    let hook = move |e: &Exchange| {
        let mut fired = fired.lock().unwrap();
        if e.path() == "/v1/changes" && fired.is_none() && clock.now() >= after {
            *fired = Some(e.sent_at);
            let path = format!("/v1/docs/todos/{id}");
            let (status, _) =
                http_request(port, "PUT", &path, Some(&token(user)), Some(&value)).unwrap();
            assert_eq!(status, 201);
        }
    };
    (Box::new(hook), trigger)
}

/// A recording HTTP/1.1 proxy in front of a server: counts what the client
/// really sends, stamped with the client's clock. Requests on a connection
/// are relayed one at a time, as the client sends them (it does not
/// pipeline).
struct Proxy {
    port: u16,
    log: Arc<Mutex<Vec<Exchange>>>,
    /// Requests passed on to the server (answered or not).
    forwarded: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(upstream: u16, clock: Arc<dyn Clock>, hook: Option<Box<Hook>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let hook: Arc<Hook> = Arc::from(hook.unwrap_or_else(|| Box::new(|_: &Exchange| {})));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let (log2, forwarded2) = (log.clone(), forwarded.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (log, forwarded, clock, hook) = (
                    log2.clone(),
                    forwarded2.clone(),
                    clock.clone(),
                    hook.clone(),
                );
                std::thread::spawn(move || {
                    let relay = Relay {
                        upstream,
                        log: &log,
                        forwarded: &forwarded,
                        clock: clock.as_ref(),
                        hook: hook.as_ref(),
                    };
                    let _ = relay.run(client);
                });
            }
        });
        Proxy {
            port,
            log,
            forwarded,
        }
    }

    /// Requests the server has and has not answered yet.
    fn in_flight(&self) -> usize {
        // Read the log first: an answer is logged after its request counted.
        let answered = self.log.lock().unwrap().len();
        self.forwarded.load(Ordering::SeqCst) - answered
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }

    fn to(&self, path: &str) -> Vec<Exchange> {
        self.exchanges()
            .into_iter()
            .filter(|e| e.path() == path)
            .collect()
    }
}

/// One client connection's relay.
struct Relay<'a> {
    upstream: u16,
    log: &'a Mutex<Vec<Exchange>>,
    forwarded: &'a AtomicUsize,
    clock: &'a dyn Clock,
    hook: &'a Hook,
}

impl Relay<'_> {
    fn run(&self, client: TcpStream) -> std::io::Result<()> {
        let mut from_client = BufReader::new(client.try_clone()?);
        let mut to_client = client;
        let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;
        while let Some((head, len)) = read_head(&mut from_client)? {
            let (line, request_headers) = parse_head(&head);
            let mut parts = line.split(' ');
            let method = parts.next().unwrap_or("").to_string();
            let target = parts.next().unwrap_or("").to_string();
            let body = read_body(&mut from_client, len)?;
            let sent_at = self.clock.now();
            // The server may have closed an idle kept-alive connection: one
            // fresh connection is tried before giving up.
            let mut answer = None;
            for _ in 0..2 {
                if upstream.is_none() {
                    let s = TcpStream::connect(("127.0.0.1", self.upstream))?;
                    upstream = Some((BufReader::new(s.try_clone()?), s));
                }
                let (up_reader, up_writer) = upstream.as_mut().unwrap();
                if up_writer
                    .write_all(&head)
                    .and_then(|_| up_writer.write_all(&body))
                    .is_ok()
                {
                    self.forwarded.fetch_add(1, Ordering::SeqCst);
                    if let Ok(Some(h)) = read_head(up_reader) {
                        answer = Some(h);
                        break;
                    }
                    self.forwarded.fetch_sub(1, Ordering::SeqCst);
                }
                upstream = None;
            }
            let Some((response_head, response_len)) = answer else {
                return Ok(());
            };
            let (status_line, response_headers) = parse_head(&response_head);
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let bodyless = method == "HEAD" || status == 204 || status == 304 || status < 200;
            let response_body = if bodyless {
                Vec::new()
            } else {
                read_body(&mut upstream.as_mut().unwrap().0, response_len)?
            };
            let exchange = Exchange {
                target,
                request_headers,
                request_body: body,
                status,
                response_headers,
                response_body: response_body.clone(),
                sent_at,
            };
            let close = exchange
                .response_header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            self.log.lock().unwrap().push(exchange.clone());
            (self.hook)(&exchange);
            to_client.write_all(&response_head)?;
            to_client.write_all(&response_body)?;
            if close {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// One message head (through the blank line) and its `Content-Length`;
/// `None` at a clean end of the stream.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let (_, headers) = parse_head(&head);
    assert!(
        header(&headers, "transfer-encoding").is_none(),
        "client and server frame bodies with Content-Length"
    );
    let len = header(&headers, "content-length").map_or(0, |v| v.parse().unwrap());
    Ok(Some((head, len)))
}

fn read_body(r: &mut impl Read, len: usize) -> std::io::Result<Vec<u8>> {
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// The first line and the headers of a message head.
fn parse_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (first, headers)
}

/// A clock whose waits take real time (the server's rate limiter runs on
/// real time) but which reads only the sum of the waits the engine
/// completed, like [`VirtualClock`]: the gap between two requests on it is
/// exactly how long the client chose to wait, whatever the machine's speed.
#[derive(Debug, Clone, Default)]
struct PacedClock {
    waited: Arc<Mutex<Duration>>,
}

impl Clock for PacedClock {
    fn now(&self) -> Duration {
        *self.waited.lock().unwrap()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        let waited = self.waited.clone();
        Box::pin(async move {
            tokio::time::sleep(d).await;
            *waited.lock().unwrap() += d;
        })
    }
}

// -------------------------------------------------------------- scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_converge_after_concurrent_edits() {
    let dir = TempDir::new("converge");
    let server = Server::start(&dir.path().join("data"), &[]);
    let a = replica(&server, "alice", &dir.path().join("a.db"), Mode::Live);
    let b = replica(&server, "alice", &dir.path().join("b.db"), Mode::Live);
    // Both bootstrapped first, so everything B writes reaches A as a change.
    a.sync_once().await.unwrap();
    b.sync_once().await.unwrap();
    let mut a_todos = a.subscribe("todos");
    a.start();
    b.start();
    for i in 0..10 {
        a.put("todos", &format!("a{i}"), json!({"by": "a", "i": i}))
            .unwrap();
        b.put("todos", &format!("b{i}"), json!({"by": "b", "i": i}))
            .unwrap();
        // Both edit the same documents.
        a.patch("notes", "shared", json!({"a": i})).unwrap();
        b.put("notes", "shared", json!({"b": i})).unwrap();
    }
    eventually("both replicas deliver their queues", 60, || {
        a.status().pending == 0 && b.status().pending == 0
    })
    .await;
    let server_head = server.changes("alice", 0).len() as u64;
    eventually("both replicas reach the server's head", 60, || {
        a.status().cursor == Some(server_head) && b.status().cursor == Some(server_head)
    })
    .await;
    a.stop().await;
    b.stop().await;
    assert_eq!(snapshot(&a), snapshot(&b), "replicas converged");
    assert_eq!(a.list(Some("todos")).unwrap().len(), 20);
    // A patch of a document that did not exist yet may be rejected (404):
    // that is reported and kept, never silently dropped.
    for p in a.parked().unwrap() {
        assert_eq!(p.pending.mutation.op, edgesync_client::Op::Patch);
    }
    // A learned of B's documents through change events on its collection.
    let mut from_b = 0;
    while let Ok(ev) = a_todos.try_recv() {
        assert_eq!(ev.collection, "todos");
        if ev.id.starts_with('b') {
            assert_eq!(ev.origin, Origin::Remote);
            from_b += 1;
        }
    }
    assert_eq!(from_b, 10);
}

/// Two handles on one replica file, as `edgesync put` and `edgesync watch`
/// in two terminals: the writer stores its acknowledged result in the
/// shared replica, and the follower must still announce the change when
/// the feed brings it, although the storage already holds that version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_replica_announces_what_another_handle_wrote() {
    let dir = TempDir::new("shared-replica");
    let server = Server::start(&dir.path().join("data"), &[]);
    let path = dir.path().join("replica.db");
    let follower = replica(&server, "hana", &path, Mode::Live);
    follower.sync_once().await.unwrap();
    let mut followed = follower.subscribe("todos");
    let writer = replica(&server, "hana", &path, Mode::Live);
    let mut written = writer.subscribe("todos");
    writer.put("todos", "t1", json!({"n": 1})).unwrap();
    writer.flush().await.unwrap();
    let own = written
        .try_recv()
        .expect("the writer announces its own change");
    assert_eq!((own.id.as_str(), own.origin), ("t1", Origin::Local));
    assert_eq!(
        follower.get("todos", "t1").unwrap().unwrap().version,
        own.version
    );

    follower.sync_once().await.unwrap();
    let ev = followed
        .try_recv()
        .expect("the follower announces the change it had not heard of");
    assert_eq!(
        (ev.id.as_str(), ev.version, ev.origin, ev.value),
        ("t1", own.version, Origin::Remote, Some(json!({"n": 1})))
    );
    assert!(followed.try_recv().is_err(), "announced once");
}

/// Handles sharing a replica (two processes: `edgesync watch` beside
/// `edgesync list`, or two `watch`es) each announce every change of the
/// feed, including those another handle read first — a delete whose
/// tombstone the other handle's cursor has pruned too — and each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_sharing_a_replica_each_announce_every_change() {
    let dir = TempDir::new("shared-feed");
    let server = Server::start(&dir.path().join("data"), &[]);
    let path = dir.path().join("replica.db");
    let first = replica(&server, "ivo", &path, Mode::Battery);
    first.sync_once().await.unwrap();
    let second = replica(&server, "ivo", &path, Mode::Battery);
    second.sync_once().await.unwrap();
    let mut heard_first = first.subscribe("todos");
    let mut heard_second = second.subscribe("todos");
    server_put(&server, "ivo", "todos", "a", &json!(1));
    server_put(&server, "ivo", "todos", "b", &json!(2));
    let (status, _) = http_request(
        server.port,
        "DELETE",
        "/v1/docs/todos/b",
        Some(&token("ivo")),
        None,
    )
    .unwrap();
    assert_eq!(status, 204);

    // The first handle reads the feed (and moves the replica's cursor past
    // all three, pruning the delete's tombstone); the second reads after it.
    first.sync_once().await.unwrap();
    assert_eq!(first.status().cursor, Some(3));
    second.sync_once().await.unwrap();
    for (name, heard) in [("first", &mut heard_first), ("second", &mut heard_second)] {
        let mut events = Vec::new();
        while let Ok(ev) = heard.try_recv() {
            events.push((ev.op, ev.id, ev.version, ev.origin));
        }
        assert_eq!(
            events,
            vec![
                (edgesync_client::Op::Put, "a".into(), 1, Origin::Remote),
                (edgesync_client::Op::Put, "b".into(), 2, Origin::Remote),
                (edgesync_client::Op::Delete, "b".into(), 3, Origin::Remote),
            ],
            "{name} handle"
        );
    }
    // Nothing twice: the next reads bring nothing new to either.
    first.sync_once().await.unwrap();
    second.sync_once().await.unwrap();
    assert!(heard_first.try_recv().is_err() && heard_second.try_recv().is_err());
}

/// The first sync is a snapshot, also of a replica that already holds the
/// result of a write made before it (`edgesync put` before the first
/// `edgesync watch`): what was on the server is announced as the starting
/// point (origin `snapshot`), never as changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_is_a_snapshot_even_after_a_write() {
    let dir = TempDir::new("first-snapshot");
    let server = Server::start(&dir.path().join("data"), &[]);
    server_put(&server, "lea", "todos", "old", &json!("there before"));
    let c = replica(&server, "lea", &dir.path().join("r.db"), Mode::Live);
    c.put("todos", "new", json!("mine")).unwrap();
    c.flush().await.unwrap();
    let mut heard = c.changes(None);
    c.sync_once().await.unwrap();
    let mut origins = Vec::new();
    while let Some(ev) = heard.try_recv() {
        origins.push((ev.id, ev.origin));
    }
    assert_eq!(origins, vec![("old".to_string(), Origin::Snapshot)]);
}

/// A handle's own change is announced once, when its mutation is
/// acknowledged, not again when the changes feed brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_changes_are_announced_once() {
    let dir = TempDir::new("own-once");
    let server = Server::start(&dir.path().join("data"), &[]);
    let c = replica(&server, "ines", &dir.path().join("r.db"), Mode::Live);
    c.sync_once().await.unwrap();
    let mut todos = c.subscribe("todos");
    c.put("todos", "t1", json!(1)).unwrap();
    c.delete("todos", "t1").unwrap();
    c.flush().await.unwrap();
    c.sync_once().await.unwrap();
    assert_eq!(c.status().cursor, Some(2), "the feed brought both back");
    let mut seen = Vec::new();
    while let Ok(ev) = todos.try_recv() {
        seen.push((ev.op, ev.version, ev.origin));
    }
    assert_eq!(
        seen,
        vec![
            (edgesync_client::Op::Put, 1, Origin::Local),
            (edgesync_client::Op::Delete, 2, Origin::Local)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_is_delivered_exactly_once_after_an_outage() {
    let dir = TempDir::new("offline");
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let db = dir.path().join("replica.db");
    let c = replica(&server, "bob", &db, Mode::Live);
    c.sync_once().await.unwrap();
    c.start();

    server.stop();
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(
            c.put("todos", &format!("t{i}"), json!({"i": i}))
                .unwrap()
                .key,
        );
    }
    keys.push(c.delete("todos", "t0").unwrap().key);
    eventually("the replica notices the server is gone", 30, || {
        !c.status().online
    })
    .await;
    assert_eq!(c.status().pending, 6);
    // Crash-restart the app: the queue is in the replica file.
    c.stop().await;
    drop(c);

    server.restart();
    let c = replica(&server, "bob", &db, Mode::Live);
    // A second process on the same replica flushes concurrently: the shared
    // idempotency keys make the duplicates harmless.
    let twin = replica(&server, "bob", &db, Mode::Live);
    assert_eq!(c.pending().unwrap().len(), 6);
    c.start();
    let _ = twin.flush().await;
    eventually("the queue drains", 60, || c.status().pending == 0).await;
    c.stop().await;

    let log = server.changes("bob", 0);
    for i in 0..5 {
        let id = format!("t{i}");
        let puts = log
            .iter()
            .filter(|e| e["id"] == json!(id) && e["op"] == "put")
            .count();
        assert_eq!(puts, 1, "{id} applied exactly once: {log:?}");
    }
    let deletes = log.iter().filter(|e| e["op"] == "delete").count();
    assert_eq!(deletes, 1);
    assert_eq!(log.len(), 6);
    c.sync_once().await.unwrap();
    assert_eq!(c.get("todos", "t0").unwrap(), None);
    assert_eq!(c.list(Some("todos")).unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cursor_resyncs_and_keeps_pending_mutations() {
    let dir = TempDir::new("resync");
    let server = Server::start(
        &dir.path().join("data"),
        &[
            ("EDGESYNC_RETENTION_ENTRIES", "16"),
            ("EDGESYNC_RATE_LIMIT_PER_SECOND", "0"),
        ],
    );
    let a = replica(&server, "carol", &dir.path().join("a.db"), Mode::Live);
    let writer = replica(&server, "carol", &dir.path().join("w.db"), Mode::Live);
    writer.put("todos", "early", json!(1)).unwrap();
    writer.flush().await.unwrap();
    a.sync_once().await.unwrap();
    assert_eq!(a.get("todos", "early").unwrap().unwrap().value, json!(1));
    let cursor_before = a.status().cursor.unwrap();

    // A is "stopped" (no sync) while the log moves far past its retention.
    let mine = a.put("todos", "mine", json!("offline edit")).unwrap();
    for round in 0..3 {
        for i in 0..40 {
            writer
                .put("bulk", &format!("d{i}"), json!({"round": round}))
                .unwrap();
        }
        writer.flush().await.unwrap();
    }
    writer.delete("todos", "early").unwrap();
    writer.flush().await.unwrap();

    let mut events = a.events();
    a.sync_once().await.unwrap();
    let mut order = Vec::new();
    while let Ok(ev) = events.try_recv() {
        match ev {
            SyncEvent::Resynced { reason, cursor, .. } => {
                assert!(cursor > cursor_before);
                order.push(format!("resynced {reason:?}"));
            }
            SyncEvent::Delivered { key, .. } if key == mine.key => order.push("mine".into()),
            _ => {}
        }
    }
    assert_eq!(
        order,
        ["resynced CursorExpired", "mine"],
        "a 410 (retention 16, 121 writes behind) resyncs before the pending \
         mutation is delivered"
    );
    assert_eq!(
        a.get("todos", "early").unwrap(),
        None,
        "delete seen via resync"
    );
    assert_eq!(a.list(Some("bulk")).unwrap().len(), 40);
    assert_eq!(
        a.get("todos", "mine").unwrap().unwrap().value,
        json!("offline edit")
    );
    assert_eq!(a.status().pending, 0);
    let log = server.changes("carol", a.status().cursor.unwrap().saturating_sub(5));
    assert!(log
        .iter()
        .all(|e| e["id"] != json!("mine") || e["op"] == "put"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_replica_sees_a_change() {
    let dir = TempDir::new("battery");
    let server = Server::start(
        &dir.path().join("data"),
        &[("EDGESYNC_POLL_INTERVAL_SECONDS", "1")],
    );
    let mut config = test_config(Mode::Battery);
    config.idle = edgesync_client::Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(2),
    };
    let a = Client::builder(server.url(), token("dave"))
        .memory()
        .config(config)
        .build()
        .unwrap();
    let w = replica(&server, "dave", &dir.path().join("w.db"), Mode::Live);
    let mut todos = a.subscribe("todos");
    a.start();
    eventually("bootstrapped", 30, || a.status().cursor.is_some()).await;
    w.put("todos", "x", json!("hello")).unwrap();
    w.flush().await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(30), todos.recv())
        .await
        .expect("a battery replica sees the change within a few intervals")
        .unwrap();
    assert_eq!((ev.id.as_str(), ev.value), ("x", Some(json!("hello"))));
    a.stop().await;
}

/// A replica for `user` that talks to the server through `proxy` on
/// `clock`.
fn proxied(proxy: &Proxy, user: &str, db: &Path, config: SyncConfig, clock: impl Clock) -> Client {
    Client::builder(proxy.url(), token(user))
        .sqlite(db)
        .config(config)
        .clock(clock)
        .build()
        .unwrap()
}

/// `PUT /v1/docs/{collection}/{id}` straight to the server.
fn server_put(server: &Server, user: &str, collection: &str, id: &str, value: &Value) {
    let (status, body) = http_request(
        server.port,
        "PUT",
        &format!("/v1/docs/{collection}/{id}"),
        Some(&token(user)),
        Some(value),
    )
    .expect("server reachable");
    assert!(status == 200 || status == 201, "PUT: {status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_replica_long_polls_a_real_server() {
    let dir = TempDir::new("long-poll");
    let server = Server::start(&dir.path().join("data"), &[]);
    let clock = SystemClock::default();
    let proxy = Proxy::start(server.port, Arc::new(clock.clone()), None);
    let c = proxied(
        &proxy,
        "kim",
        &dir.path().join("r.db"),
        test_config(Mode::Live),
        clock,
    );
    let mut todos = c.subscribe("todos");
    c.start();
    eventually("bootstrapped", 30, || c.status().cursor.is_some()).await;
    assert_eq!(c.status().polling, Polling::LongPoll);
    // Write while the long-poll is held: the held request answers with the
    // change.
    eventually("a long-poll is held", 30, || proxy.in_flight() == 1).await;
    server_put(&server, "kim", "todos", "a", &json!("held"));
    let ev = tokio::time::timeout(Duration::from_secs(30), todos.recv())
        .await
        .expect("the held long-poll brings the change")
        .unwrap();
    assert_eq!((ev.id.as_str(), ev.origin), ("a", Origin::Remote));
    c.stop().await;

    let polls = proxy.to("/v1/changes");
    assert_eq!(
        polls.len(),
        1,
        "one held request, answered by the write: {polls:?}"
    );
    let p = &polls[0];
    assert_eq!(p.request_header("prefer"), Some("wait=25"));
    assert_eq!(p.response_header("preference-applied"), Some("wait=25"));
    assert_eq!(p.status, 200);
    assert_eq!(c.status().polling, Polling::LongPoll);
}

/// A one-shot operation (`send_now`, the CLI's fail-fast write; `fetch`)
/// made while the engine holds a long-poll ends the hold and goes next: it
/// does not wait for the server to answer the hold (a 304 after 25 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_operations_do_not_wait_out_a_held_long_poll() {
    let dir = TempDir::new("one-shot");
    let server = Server::start(&dir.path().join("data"), &[]);
    server_put(&server, "lou", "todos", "a", &json!("there"));
    for op in ["send_now", "fetch"] {
        let clock = SystemClock::default();
        let proxy = Proxy::start(server.port, Arc::new(clock.clone()), None);
        let db = dir.path().join(format!("{op}.db"));
        let c = proxied(&proxy, "lou", &db, test_config(Mode::Live), clock);
        c.start();
        eventually("bootstrapped", 30, || c.status().cursor.is_some()).await;
        eventually("a long-poll is held", 30, || proxy.in_flight() == 1).await;
        if op == "send_now" {
            let sent = c.send_now(Mutation::put("todos", "b", json!(1))).await;
            assert!(matches!(sent, Ok(SendOutcome::Delivered(_))), "{sent:?}");
        } else {
            let doc = c.fetch("todos", "a").await.unwrap().unwrap();
            assert_eq!(doc.value, json!("there"));
        }
        let waited_out: Vec<_> = proxy
            .to("/v1/changes")
            .into_iter()
            .filter(|e| e.status == 304)
            .collect();
        assert!(
            waited_out.is_empty(),
            "{op} waited out a hold: {waited_out:?}"
        );
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_replica_smart_polls_a_real_server_that_does_not_hold() {
    let dir = TempDir::new("no-hold");
    let server = Server::start(
        &dir.path().join("data"),
        &[("EDGESYNC_MAX_WAIT_SECONDS", "0")],
    );
    let clock = VirtualClock::with_horizon(Duration::from_secs(3600));
    // A change lands on the server just after the first probe past 30
    // simulated minutes has been answered.
    let (hook, trigger) = write_once_after(
        server.port,
        &clock,
        Duration::from_secs(1800),
        ("lena", "late", json!(1)),
    );
    let proxy = Proxy::start(server.port, Arc::new(clock.clone()), Some(hook));
    let c = proxied(
        &proxy,
        "lena",
        &dir.path().join("r.db"),
        test_config(Mode::Live),
        clock.clone(),
    );
    c.start();
    tokio::time::timeout(Duration::from_secs(120), clock.wait_for_horizon())
        .await
        .expect("the simulated hour ends");
    c.stop().await;

    let status = c.status();
    assert_eq!(
        (status.mode, status.polling),
        (Mode::Live, Polling::SmartPoll)
    );
    let polls = proxy.to("/v1/changes");
    for p in &polls {
        assert_eq!(p.request_header("prefer"), Some("wait=25"));
        assert_eq!(p.response_header("preference-applied"), Some("wait=0"));
        assert!(p.request_header("if-none-match").is_some());
    }
    // Never more often than X-Poll-Interval (the server's 10 s) after the
    // answer that said "no holds", never slower than a hold would be.
    for w in polls.windows(2) {
        let gap = w[1].sent_at - w[0].sent_at;
        assert!(
            gap >= Duration::from_secs(10) && gap <= Duration::from_secs(25),
            "{gap:?}"
        );
    }
    assert!(polls.len() <= 361, "{} probes in an hour", polls.len());
    // The change is seen by the very next probe.
    let at = trigger.lock().unwrap().expect("a probe after 30 minutes");
    let i = polls.iter().position(|p| p.sent_at == at).unwrap();
    assert_eq!(polls[i].status, 304);
    assert_eq!(polls[i + 1].status, 200);
    assert_eq!(c.get("todos", "late").unwrap().unwrap().value, json!(1));
}

/// 429 with `Retry-After` from the real rate limiter: the client waits as
/// told (on its own clock), then delivers every mutation exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_flush_waits_as_told_and_delivers_exactly_once() {
    let dir = TempDir::new("rate-limit");
    // 10 mutations per second, burst 100 (settings: max(5 × rate, 100)).
    let server = Server::start(
        &dir.path().join("data"),
        &[("EDGESYNC_RATE_LIMIT_PER_SECOND", "10")],
    );
    let clock = PacedClock::default();
    let proxy = Proxy::start(server.port, Arc::new(clock.clone()), None);
    // Batches of 10: past the burst, each batch needs about a second of
    // refill, so the server answers 429 with `Retry-After: 1`.
    let mut config = test_config(Mode::Live);
    config.batch_size = 10;
    let c = proxied(
        &proxy,
        "mia",
        &dir.path().join("r.db"),
        config,
        clock.clone(),
    );
    let n = 150;
    for i in 0..n {
        c.put("todos", &format!("t{i}"), json!({"i": i})).unwrap();
    }
    c.start();
    eventually("the queue drains", 120, || c.status().pending == 0).await;
    c.stop().await;

    let posts = proxy.to("/v1/mutations");
    assert!(
        posts.iter().any(|e| e.status == 429),
        "150 mutations at 10/s past a burst of 100 hit the limit"
    );
    // Every mutation is applied by one request and never sent again: the
    // items a 429 settled (its `results`) are not part of the retry.
    let mut settled = std::collections::HashSet::new();
    for post in &posts {
        let sent: Value = serde_json::from_slice(&post.request_body).unwrap();
        for item in sent["mutations"].as_array().unwrap() {
            let key = item["id"].as_str().unwrap();
            assert!(!settled.contains(key), "{key} sent again after its result");
        }
        let answer: Value = serde_json::from_slice(&post.response_body).unwrap();
        for result in answer["results"].as_array().into_iter().flatten() {
            assert_eq!(result["status"], 201, "{result}");
            assert_eq!(result["replayed"], false, "{result}");
            settled.insert(result["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(settled.len(), n, "every mutation settled once");
    assert_retries_wait_as_told(&posts);
    assert_each_logged_once(&server.changes("mia", 0), n);
    assert_eq!(c.status().parked, 0);
}

/// 503 with `Retry-After` from the real server, whose Redis store has gone
/// away under it: the client keeps its queue, waits as told between
/// attempts (on its own clock), and once the store is back delivers every
/// mutation exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_503_waits_as_told_and_delivers_exactly_once() {
    let dir = TempDir::new("store-outage");
    let mut redis = edgesync_redis::testing::RedisServer::start();
    let server = Server::start(
        &dir.path().join("data"),
        &[("EDGESYNC_STORE", &redis.url(0))],
    );
    let clock = PacedClock::default();
    let proxy = Proxy::start(server.port, Arc::new(clock.clone()), None);
    let c = proxied(
        &proxy,
        "omar",
        &dir.path().join("r.db"),
        test_config(Mode::Live),
        clock.clone(),
    );
    c.sync_once().await.unwrap();
    // Nothing is stored yet, so the restart below loses nothing.
    redis.stop();
    let n: usize = 5;
    for i in 0..n {
        c.put("todos", &format!("t{i}"), json!({"i": i})).unwrap();
    }
    c.start();
    let unavailable = |proxy: &Proxy| {
        proxy
            .to("/v1/mutations")
            .iter()
            .filter(|e| e.status == 503)
            .count()
    };
    eventually("flushes are answered 503", 60, || unavailable(&proxy) >= 3).await;
    assert_eq!(
        c.status().pending as usize,
        n,
        "nothing leaves the queue on a 503"
    );
    redis.restart();
    eventually("the queue drains", 60, || c.status().pending == 0).await;
    c.stop().await;

    let posts = proxy.to("/v1/mutations");
    assert_retries_wait_as_told(&posts);
    assert!(posts.iter().all(|e| e.status == 503 || e.status == 200));
    assert_each_logged_once(&server.changes("omar", 0), n);
}

/// After each 429 or 503 in `exchanges` (one endpoint's, in order), the
/// next attempt came no sooner than its `Retry-After` said.
fn assert_retries_wait_as_told(exchanges: &[Exchange]) {
    for pair in exchanges.windows(2) {
        if pair[0].status != 429 && pair[0].status != 503 {
            continue;
        }
        let retry_after: u64 = pair[0]
            .response_header("retry-after")
            .unwrap_or_else(|| panic!("{} carries Retry-After", pair[0].status))
            .parse()
            .unwrap();
        let waited = pair[1].sent_at - pair[0].sent_at;
        assert!(
            waited >= Duration::from_secs(retry_after),
            "{}: asked to wait {retry_after} s, retried after {waited:?}",
            pair[0].status
        );
    }
}

/// `log` has `n` entries, each for a different document: exactly once,
/// whatever was retried.
fn assert_each_logged_once(log: &[Value], n: usize) {
    assert_eq!(log.len(), n, "{log:?}");
    let mut ids: Vec<&str> = log.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "{log:?}");
}

/// An idle battery replica against the real server: at most 60 requests in a
/// simulated hour, and a change made on the server is picked up by the very
/// next probe, within the current interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_battery_replica_backs_off_against_a_real_server() {
    let dir = TempDir::new("battery-idle");
    let server = Server::start(&dir.path().join("data"), &[]);
    let hour = Duration::from_secs(3600);
    let clock = VirtualClock::with_horizon(2 * hour);
    let (hook, trigger) = write_once_after(
        server.port,
        &clock,
        hour,
        ("noor", "news", json!("after an idle hour")),
    );
    let proxy = Proxy::start(server.port, Arc::new(clock.clone()), Some(hook));
    let c = proxied(
        &proxy,
        "noor",
        &dir.path().join("r.db"),
        test_config(Mode::Battery),
        clock.clone(),
    );
    let mut todos = c.subscribe("todos");
    c.start();
    tokio::time::timeout(Duration::from_secs(120), clock.wait_for_horizon())
        .await
        .expect("two simulated hours end");
    c.stop().await;

    let first_hour: Vec<Exchange> = proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.sent_at < hour)
        .collect();
    assert!(
        first_hour.len() <= 60,
        "{} requests in an idle hour",
        first_hour.len()
    );
    for e in first_hour.iter().filter(|e| e.path() == "/v1/changes") {
        assert_eq!(e.status, 304, "idle probes are answered 304");
        assert!(e.request_header("if-none-match").is_some());
        assert_eq!(e.request_header("prefer"), None);
    }
    let polls = proxy.to("/v1/changes");
    let at = trigger.lock().unwrap().expect("a probe after an hour");
    let i = polls.iter().position(|p| p.sent_at == at).unwrap();
    assert_eq!(polls[i].status, 304, "the change came after this probe");
    assert_eq!(polls[i + 1].status, 200, "and the next probe brought it");
    assert!(
        polls[i + 1].sent_at - at <= Duration::from_secs(240),
        "within the idle ceiling"
    );
    let ev = todos.try_recv().expect("the app hears of the change");
    assert_eq!((ev.id.as_str(), ev.origin), ("news", Origin::Remote));
}

// --------------------------------------------------------------------- CLI

fn cli(server_url: &str, state: &Path, user: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("EDGESYNC_URL", server_url)
        .env("EDGESYNC_TOKEN", token(user))
        .env("EDGESYNC_STATE_DIR", state)
        .stdin(Stdio::null())
        .output()
        .expect("run edgesync")
}

/// `edgesync watch --json` for `user`, and the lines it prints.
fn spawn_watch(
    server_url: &str,
    user: &str,
    state: &Path,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let (watch, rx, go) = spawn_watch_paused(server_url, user, state, args);
    go.send(()).unwrap();
    (watch, rx)
}

/// Like [`spawn_watch`], but after the first line its output is not read
/// until `()` is sent on the returned sender: a slow reader of the pipe.
fn spawn_watch_paused(
    server_url: &str,
    user: &str,
    state: &Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::sync::mpsc::Sender<()>,
) {
    let mut watch = Command::new(bin())
        .args(["watch", "--json"])
        .args(args)
        .env("EDGESYNC_URL", server_url)
        .env("EDGESYNC_TOKEN", token(user))
        .env("EDGESYNC_STATE_DIR", state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run edgesync watch");
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, line) in BufReader::new(stdout).lines().enumerate() {
            if n == 1 && go.recv().is_err() {
                return;
            }
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    (watch, rx, go_tx)
}

/// Call `write(0)`, `write(1)`, … until `watch` prints a line (waiting
/// `per_try` after each, for at most a minute), then stop `watch`. One
/// write is not enough: one that lands before `watch` has bootstrapped is
/// part of its snapshot, not a change.
async fn first_printed(
    watch: &mut Child,
    lines: &std::sync::mpsc::Receiver<String>,
    per_try: Duration,
    mut write: impl AsyncFnMut(usize),
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = None;
    let mut i = 0;
    while printed.is_none() && Instant::now() < deadline {
        write(i).await;
        i += 1;
        printed = lines.recv_timeout(per_try).ok();
    }
    let _ = watch.kill();
    let _ = watch.wait();
    printed
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).to_string()
}

#[test]
fn cli_usage_errors_exit_2() {
    let dir = TempDir::new("cli-usage");
    for args in [
        &["put", "todos"][..],
        &["put", "todos", "a", "{not json"][..],
        &["put", "todos", "a", r#"{"a":1,"a":2}"#][..],
        &["get", "bad/name", "a"][..],
        &["resolve", "1"][..],
        &["resolve", "1", "--discard", "--overwrite"][..],
        &["resolve", "first", "--discard"][..],
    ] {
        let out = cli("http://127.0.0.1:9", dir.path(), "erin", args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

/// A command whose reader has gone (`edgesync token … | true`) ends
/// quietly with success, neither panicking nor reporting an error.
#[test]
fn cli_output_to_a_closed_pipe_is_not_an_error() {
    let dir = TempDir::new("cli-pipe");
    for _ in 0..3 {
        let mut child = Command::new(bin())
            .args(["token", "--sub", "pat", "--data-dir"])
            .arg(dir.path())
            .env("EDGESYNC_JWT_SECRET", "0123456789abcdef0123456789abcdef")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command gets to write.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    }
}

/// `get` of a document whose queued write the server has not taken yet (a
/// rate limit stops the flush first) says so, rather than "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_get_names_a_write_still_queued_for_the_document() {
    let dir = TempDir::new("get-queued");
    let server = Server::start(
        &dir.path().join("data"),
        &[("EDGESYNC_RATE_LIMIT_PER_SECOND", "1")],
    );
    let url = server.url();
    let state = dir.path().join("state");
    let queue = Client::builder(&url, token("max"))
        .sqlite(state.join(edgesync_client::REPLICA_FILE))
        .build()
        .unwrap();
    // More than the rate limit's burst (100): the flush stops before the last.
    for i in 0..150 {
        queue.put("bulk", &format!("d{i}"), json!(i)).unwrap();
    }
    drop(queue);
    let out = cli(&url, &state, "max", &["get", "bulk", "d149"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("bulk/d149: not on the server")
            && err.contains("not delivered yet")
            && err.contains("429"),
        "{err}"
    );
    let pending = pending_json(&url, &state, "max");
    assert!(
        pending.iter().any(|p| p["mutation"]["id"] == "d149"),
        "d149 still queued ({} pending)",
        pending.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_get_delete_and_offline_queue() {
    let dir = TempDir::new("cli");
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let url = server.url();
    let state = dir.path().join("state");

    let out = cli(&url, &state, "frank", &["put", "todos", "a", r#"{"t":1}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["version"].as_u64(), &doc["value"]),
        (Some(1), &json!({"t": 1}))
    );

    let out = cli(
        &url,
        &state,
        "frank",
        &["patch", "todos", "a", r#"{"u":2}"#],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = cli(&url, &state, "frank", &["get", "todos", "a"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["value"], json!({"t": 1, "u": 2}));

    // Missing document: runtime error with the server's words.
    let out = cli(&url, &state, "frank", &["get", "todos", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());

    // Value from a file.
    let file = dir.path().join("v.json");
    std::fs::write(&file, r#"[1,2,3]"#).unwrap();
    let at = format!("@{}", file.display());
    let out = cli(&url, &state, "frank", &["put", "todos", "f", &at]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Server down: queued by default, an error with --fail-fast.
    server.stop();
    let out = cli(
        &url,
        &state,
        "frank",
        &["put", "--fail-fast", "todos", "z", "1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = cli(&url, &state, "frank", &["put", "todos", "b", r#""queued""#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("queued"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&url, &state, "frank", &["delete", "todos", "f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Back up: the next command delivers the queue first, in order.
    server.restart();
    let out = cli(&url, &state, "frank", &["get", "todos", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["value"], json!("queued"));
    let log = server.changes("frank", 0);
    let ops: Vec<String> = log
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["op"].as_str().unwrap(),
                e["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(ops, ["put a", "put a", "put f", "put b", "delete f"]);
    let out = cli(&url, &state, "frank", &["delete", "todos", "f"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "already deleted: {}",
        text(&out.stderr)
    );
}

/// `edgesync list`: every live document, one JSON object per line, by
/// collection and id (one collection with --collection), read after the
/// replica caught up; the local copies when the server is down, or an
/// error with --fail-fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_list_prints_documents_by_collection_and_id() {
    let dir = TempDir::new("cli-list");
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let url = server.url();
    let state = dir.path().join("state");
    let run = |args: &[&str]| cli(&url, &state, "hana", args);
    let listed = |out: std::process::Output| -> Vec<(String, String, Value)> {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| {
                let d: Value = serde_json::from_str(l).expect("one JSON object per line");
                (
                    d["collection"].as_str().unwrap().to_string(),
                    d["id"].as_str().unwrap().to_string(),
                    d["value"].clone(),
                )
            })
            .collect()
    };
    // Written elsewhere (not through this replica), and one deleted.
    for (c, id) in [("b", "2"), ("a", "z"), ("b", "1"), ("a", "gone")] {
        server_put(&server, "hana", c, id, &json!(format!("{c}/{id}")));
    }
    let out = run(&["delete", "a", "gone"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let row = |c: &str, id: &str| (c.to_string(), id.to_string(), json!(format!("{c}/{id}")));
    assert_eq!(
        listed(run(&["list"])),
        [row("a", "z"), row("b", "1"), row("b", "2")]
    );
    assert_eq!(
        listed(run(&["list", "--collection", "b"])),
        [row("b", "1"), row("b", "2")]
    );

    server.stop();
    let out = run(&["list", "--collection", "a"]);
    assert!(
        text(&out.stderr).contains("local copies"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(listed(out), [row("a", "z")]);
    let out = run(&["list", "--fail-fast"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// `edgesync pending --json`, one object per line.
fn pending_json(url: &str, state: &Path, user: &str) -> Vec<Value> {
    let out = cli(url, state, user, &["pending", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Conditional writes queued offline that conflict when delivered stay
/// parked, are listed by `pending` and settled by `resolve`: `--overwrite`
/// applies the value on top of the version the conflict reported (and,
/// when the document moved again meanwhile, conflicts again and stays
/// parked instead of losing the value); `--discard` lets the server win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pending_and_resolve_settle_parked_conflicts() {
    let dir = TempDir::new("cli-resolve");
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let url = server.url();
    let state = dir.path().join("state");
    let run = |args: &[&str]| cli(&url, &state, "gina", args);

    for (id, v) in [("a", "1"), ("c", "2")] {
        let out = run(&["put", "notes", id, v]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    server.stop();
    let out = run(&["put", "--if-version", "1", "notes", "a", r#""mine""#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&["patch", "--if-version", "2", "notes", "c", r#"{"x":1}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Offline, both are listed as queued, in order.
    let listed = pending_json(&url, &state, "gina");
    let states: Vec<(&str, &str)> = listed
        .iter()
        .map(|p| {
            (
                p["state"].as_str().unwrap(),
                p["mutation"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(states, [("queued", "a"), ("queued", "c")]);
    let (num_a, num_c) = (
        listed[0]["number"].as_u64().unwrap(),
        listed[1]["number"].as_u64().unwrap(),
    );

    // Another device edits both meanwhile; the queued writes conflict.
    server.restart();
    server_put(&server, "gina", "notes", "a", &json!("theirs")); // v3
    server_put(&server, "gina", "notes", "c", &json!({"y": 2})); // v4
    let out = run(&["get", "notes", "c"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("#{num_a}")) && stderr.contains("edgesync pending"),
        "{stderr}"
    );
    let listed = pending_json(&url, &state, "gina");
    let parked: Vec<(u64, &str, Option<u64>)> = listed
        .iter()
        .map(|p| {
            assert_eq!(p["reason"]["kind"], "conflict", "{p}");
            (
                p["number"].as_u64().unwrap(),
                p["state"].as_str().unwrap(),
                p["reason"]["current_version"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        parked,
        [(num_a, "parked", Some(3)), (num_c, "parked", Some(4))]
    );

    // Every later command warns about them until they are settled, not
    // only the one whose flush parked them.
    for args in [
        &["put", "notes", "other", "3"][..], // v5
        &["get", "notes", "other"][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        for num in [num_a, num_c] {
            assert!(stderr.contains(&format!("(#{num})")), "{args:?}: {stderr}");
        }
    }

    // The document moves again before the overwrite: it conflicts again
    // (exit 1) and stays parked under a new number with the new version.
    server_put(&server, "gina", "notes", "a", &json!("theirs, later")); // v6
    let out = run(&["resolve", &num_a.to_string(), "--overwrite"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("stays parked"),
        "{}",
        text(&out.stderr)
    );
    let listed = pending_json(&url, &state, "gina");
    let again = listed
        .iter()
        .find(|p| p["mutation"]["id"] == "a")
        .expect("still parked");
    assert_eq!(again["reason"]["current_version"], 6, "{again}");
    assert_eq!(again["mutation"]["value"], "mine");
    let num_a = again["number"].as_u64().unwrap();

    let out = run(&["resolve", &num_a.to_string(), "--overwrite"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["version"].as_u64(), &doc["value"]),
        (Some(7), &json!("mine"))
    );

    let out = run(&["resolve", &num_c.to_string(), "--discard"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(pending_json(&url, &state, "gina").is_empty());
    let out = run(&["resolve", &num_c.to_string(), "--discard"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "settled twice: {}",
        text(&out.stderr)
    );

    // Settled: no more warnings, and the server kept the other device's c.
    let out = run(&["get", "notes", "c"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("not applied"),
        "{}",
        text(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["version"].as_u64(), &doc["value"]),
        (Some(4), &json!({"y": 2}))
    );
    let ops: Vec<(u64, Value)> = server
        .changes("gina", 0)
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["value"].clone()))
        .collect();
    assert_eq!(
        ops,
        [
            (1, json!(1)),
            (2, json!(2)),
            (3, json!("theirs")),
            (4, json!({"y": 2})),
            (5, json!(3)),
            (6, json!("theirs, later")),
            (7, json!("mine")),
        ]
    );
}

/// One state dir (say a shared `EDGESYNC_STATE_DIR`) for two users, or for
/// two servers: the replica belongs to the first, so the second is refused
/// (exit 1, with advice), and the first user's queued mutation is never
/// sent with the second user's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_a_state_dir_of_another_user_or_server() {
    let dir = TempDir::new("cli-bound");
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let url = server.url();
    let state = dir.path().join("state");
    server.stop();
    let out = cli(&url, &state, "ulla", &["put", "todos", "a", r#""ulla's""#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("queued"));
    server.restart();

    let out = cli(&url, &state, "vera", &["put", "todos", "b", "1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"ulla\"") && stderr.contains("--state-dir"),
        "{stderr}"
    );
    assert!(
        server.changes("vera", 0).is_empty(),
        "nothing was written as vera"
    );
    let other = Server::start(&dir.path().join("other"), &[]);
    let out = cli(&other.url(), &state, "ulla", &["get", "todos", "a"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(other.changes("ulla", 0).is_empty());

    // Its own user on its own server delivers the queue.
    let out = cli(&url, &state, "ulla", &["get", "todos", "a"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["value"], json!("ulla's"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_prints_json_lines() {
    let dir = TempDir::new("watch");
    let server = Server::start(&dir.path().join("data"), &[]);
    let url = server.url();
    let (mut watch, rx) = spawn_watch(
        &url,
        "gina",
        &dir.path().join("watch-state"),
        &["--collection", "todos"],
    );
    let w = replica(&server, "gina", &dir.path().join("w.db"), Mode::Live);
    let printed = first_printed(&mut watch, &rx, Duration::from_millis(500), async |i| {
        w.put("notes", &format!("n{i}"), json!(i)).unwrap();
        w.put("todos", &format!("t{i}"), json!({"i": i})).unwrap();
        w.flush().await.unwrap();
    })
    .await;
    let line = printed.expect("watch printed a change");
    let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(
        v["collection"], "todos",
        "only the watched collection: {line}"
    );
    assert_eq!(v["op"], "put");
    assert!(v["version"].as_u64().is_some());
}

/// `watch` prints every change even when its output is read slowly: more
/// changes than any event buffer holds wait in the pipe and in the watch,
/// and come out complete and in order once the reader catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_prints_every_change_when_its_output_is_read_slowly() {
    let dir = TempDir::new("watch-slow");
    let server = Server::start(
        &dir.path().join("data"),
        &[("EDGESYNC_RATE_LIMIT_PER_SECOND", "0")],
    );
    let url = server.url();
    let (mut watch, rx, go) = spawn_watch_paused(&url, "kai", &dir.path().join("watch-state"), &[]);
    let w = replica(&server, "kai", &dir.path().join("w.db"), Mode::Live);
    // Following: a marker write shows up (one before the first sync would
    // be part of its snapshot instead).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = None;
    for i in 0.. {
        assert!(Instant::now() < deadline, "watch printed nothing");
        w.put("marks", &format!("m{i}"), json!(i)).unwrap();
        w.flush().await.unwrap();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            first = Some(line);
            break;
        }
    }
    assert!(first.is_some());
    // Far more than a broadcast buffer (1,024) and a pipe (64 KiB) hold,
    // written while nobody reads the output.
    const N: usize = 1500;
    let pad = "x".repeat(200);
    for i in 0..N {
        w.put("bulk", &format!("b{i:04}"), json!({"n": i, "pad": pad}))
            .unwrap();
    }
    w.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    go.send(()).unwrap();
    let mut bulk = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while bulk.len() < N && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
        if v["collection"] == "bulk" {
            bulk.push(v["value"]["n"].as_u64().unwrap() as usize);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let first_wrong = bulk.iter().enumerate().find(|(i, n)| i != *n);
    assert!(
        bulk.len() == N && first_wrong.is_none(),
        "every change, in order: got {} of {N}, first out of place: {first_wrong:?}",
        bulk.len()
    );
}

/// The README's walkthrough: `edgesync watch` in one terminal, `edgesync
/// put` in another, both on the same (default) replica of the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_prints_a_put_made_on_the_same_replica() {
    let dir = TempDir::new("watch-shared");
    let server = Server::start(&dir.path().join("data"), &[]);
    let url = server.url();
    let state = dir.path().join("state");
    let (mut watch, rx) = spawn_watch(&url, "jo", &state, &[]);
    let printed = first_printed(&mut watch, &rx, Duration::from_secs(1), async |i| {
        let out = cli(
            &url,
            &state,
            "jo",
            &["put", "todos", &format!("t{i}"), "{\"i\":1}"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    })
    .await;
    let line = printed.expect("watch printed the put");
    let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(
        (&v["op"], &v["collection"]),
        (&json!("put"), &json!("todos"))
    );
}
