//! Tests of the connection loop and the hub with stand-in handlers (the
//! core's protocol is tested elsewhere).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use edgesync_core::Host;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant as TokioInstant;

use super::*;

/// Poll a future exactly once, outside tokio's cooperative budget (which
/// would make the 129th poll in one task pending whatever the hub did).
async fn poll_once<F: Future + ?Sized>(fut: &mut Pin<Box<F>>) -> Poll<F::Output> {
    tokio::task::unconstrained(std::future::poll_fn(|cx| {
        Poll::Ready(fut.as_mut().poll(cx))
    }))
    .await
}

fn far() -> TokioInstant {
    TokioInstant::now() + Duration::from_secs(3600)
}

#[tokio::test]
async fn hub_wakes_every_waiter_of_a_user_and_only_them() {
    let hub = NotifyHub::new();
    let mut alice: Vec<_> = (0..1000)
        .map(|_| Box::pin(hub.wait("alice", far())))
        .collect();
    let mut bob = Box::pin(hub.wait("bob", far()));
    assert_eq!(hub.waiting_users(), 2);
    for w in &mut alice {
        assert!(poll_once(w).await.is_pending());
    }
    hub.notify("alice");
    hub.notify("nobody"); // no entry, no effect
    for w in &mut alice {
        assert_eq!(poll_once(w).await, Poll::Ready(Wake::Changed));
    }
    assert!(poll_once(&mut bob).await.is_pending());
    drop(alice);
    assert_eq!(
        hub.waiting_users(),
        1,
        "alice's entry goes with her last waiter"
    );
    hub.notify_all();
    assert_eq!(poll_once(&mut bob).await, Poll::Ready(Wake::Changed));
    drop(bob);
    assert_eq!(hub.waiting_users(), 0);
}

#[tokio::test]
async fn hub_registers_at_call_time_so_no_wakeup_is_lost() {
    let hub = NotifyHub::new();
    let wait = hub.wait("u", far());
    hub.notify("u"); // before the first poll
    assert_eq!(wait.await, Wake::Changed);
    // A wait that starts after the notification is not woken by it.
    let mut late = Box::pin(hub.wait("u", far()));
    assert!(poll_once(&mut late).await.is_pending());
}

#[tokio::test(start_paused = true)]
async fn hub_waits_end_at_their_deadline_and_clean_up() {
    let hub = NotifyHub::new();
    let start = TokioInstant::now();
    let short = hub.wait("u", start + Duration::from_secs(5));
    let long = hub.wait("u", start + Duration::from_secs(50));
    let (a, b) = tokio::join!(short, async {
        let r = long.await;
        (r, TokioInstant::now())
    });
    assert_eq!(a, Wake::Deadline);
    assert_eq!(b.0, Wake::Deadline);
    assert!(b.1 >= start + Duration::from_secs(50));
    assert_eq!(hub.waiting_users(), 0);
}

#[tokio::test]
async fn hub_shutdown_releases_current_and_future_waits() {
    let hub = NotifyHub::new();
    let mut held: Vec<_> = (0..100)
        .map(|i| Box::pin(hub.wait(&format!("user{}", i % 10), far())))
        .collect();
    for w in &mut held {
        assert!(poll_once(w).await.is_pending());
    }
    hub.shutdown();
    for w in &mut held {
        assert_eq!(poll_once(w).await, Poll::Ready(Wake::Shutdown));
    }
    assert_eq!(hub.wait("new", far()).await, Wake::Shutdown);
    drop(held);
    assert_eq!(hub.waiting_users(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_survives_concurrent_churn_without_leaking_entries() {
    let hub = NotifyHub::new();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let user = format!("u{}", (t + i) % 5);
                let w = hub.wait(&user, TokioInstant::now() + Duration::from_millis(1));
                if i % 3 == 0 {
                    hub.notify(&user);
                }
                if i % 2 == 0 {
                    w.await;
                } else {
                    drop(w); // abandoned, as when a client disconnects
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(hub.waiting_users(), 0);
}

#[tokio::test]
async fn host_handles_absurd_deadlines_without_panicking() {
    let host = NativeHost::local();
    // A deadline in the past returns at once; one at the end of time is
    // capped (and released here by a change).
    host.wait_for_change("u", 0).await;
    let wait = host.wait_for_change("u", u64::MAX);
    host.log_changed("u", 1);
    wait.await;
    assert_ne!(host.random_u64(), host.random_u64());
    assert!(host.now_millis() > 1_600_000_000_000);
}

// ------------------------------------------------------- connection loop

/// A stand-in for the core: `/wait` parks like a long-poll (answered once
/// `release` is set and the hub notified, or at shutdown), `/gate` waits
/// for the test to open it, `/body` echoes the body, `/info` describes the
/// request, `/status/N` answers status N, `/head-length` declares a length
/// of 42 for HEAD; anything else answers the body's length.
struct TestHandler {
    host: NativeHost,
    gate: Notify,
    gate_entered: Notify,
    max_body: usize,
    seen_body_lengths: std::sync::Mutex<Vec<usize>>,
    handled: AtomicUsize,
    waiting: AtomicUsize,
    release: std::sync::atomic::AtomicBool,
}

impl Handler for TestHandler {
    type Parked = ();

    fn max_body_bytes(&self) -> usize {
        self.max_body
    }

    async fn start(&self, request: Request<Vec<u8>>) -> Step<()> {
        let path = request.uri().path().to_owned();
        let mut response = Response::new(Vec::new());
        match path.as_str() {
            "/wait" => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                return Step::Parked(());
            }
            "/gate" => {
                let opened = self.gate.notified();
                self.gate_entered.notify_one();
                opened.await;
                *response.body_mut() = b"finished".to_vec();
            }
            "/body" => *response.body_mut() = request.body().clone(),
            "/info" => {
                *response.body_mut() = format!(
                    "{} {} {:?} {}",
                    request.method(),
                    request.uri(),
                    request.version(),
                    request.headers().len()
                )
                .into_bytes()
            }
            "/head-length" => {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(42));
            }
            p if p.starts_with("/status/") => {
                *response.status_mut() = http::StatusCode::from_bytes(&p.as_bytes()[8..]).unwrap();
            }
            _ => {
                self.seen_body_lengths
                    .lock()
                    .unwrap()
                    .push(request.body().len());
                *response.body_mut() = request.body().len().to_string().into_bytes();
            }
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Step::Done(response)
    }

    fn wait<'a>(&'a self, _: &'a ()) -> impl Future<Output = ()> + Send + 'a {
        let deadline = self.host.now_millis() + 3_600_000;
        self.host.wait_for_change("u", deadline)
    }

    async fn resume(&self, _: &()) -> Option<Response<Vec<u8>>> {
        if self.host.draining() || self.release.load(Ordering::SeqCst) {
            self.handled.fetch_add(1, Ordering::SeqCst);
            Some(Response::new(b"released".to_vec()))
        } else {
            None
        }
    }

    fn info(&self, _: &()) -> Option<edgesync_core::RequestInfo> {
        None
    }
}

struct Running {
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(max_body: usize) -> Running {
    start_with(max_body, HttpOptions::default()).await
}

fn test_handler(max_body: usize) -> Arc<TestHandler> {
    Arc::new(TestHandler {
        host: NativeHost::local(),
        gate: Notify::new(),
        gate_entered: Notify::new(),
        max_body,
        seen_body_lengths: Default::default(),
        handled: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        release: Default::default(),
    })
}

async fn start_with(max_body: usize, options: HttpOptions) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = test_handler(max_body);
    let (stop, stopped) = oneshot::channel::<()>();
    let h = Arc::clone(&handler);
    let done = tokio::spawn(async move {
        let host = h.host.clone();
        serve(
            listener,
            h,
            options,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(30),
            move || host.shutdown(),
        )
        .await;
    });
    Running {
        addr,
        handler,
        stop: Some(stop),
        done,
    }
}

/// Send raw request bytes and read everything until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// One parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Read one response from a keep-alive connection (`carry` holds bytes
/// read past the previous one). Interim (1xx) responses are returned too.
async fn read_reply(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    carry: &mut Vec<u8>,
    head_request: bool,
) -> Reply {
    loop {
        if let Some(end) = carry.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(carry[..end].to_vec()).unwrap();
            let status: u16 = head[9..12].parse().unwrap();
            let mut reply = Reply {
                status,
                head,
                body: String::new(),
            };
            let len = if head_request || status < 200 || status == 204 || status == 304 {
                0
            } else {
                reply
                    .header("content-length")
                    .expect("every response has a Content-Length")
                    .parse()
                    .unwrap()
            };
            while carry.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "closed mid-response: {:?}",
                    String::from_utf8_lossy(carry)
                );
                carry.extend_from_slice(&chunk[..n]);
            }
            reply.body = String::from_utf8_lossy(&carry[end + 4..end + 4 + len]).into_owned();
            carry.drain(..end + 4 + len);
            return reply;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(carry)
        );
        carry.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the server closed the connection (EOF or reset, nothing more).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => rest.is_empty(),
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_passed_whole_up_to_the_cap_and_cut_beyond_it() {
    let server = start(1024).await;
    let ok = exchange(server.addr, &post("/echo", &[b'a'; 1024])).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(body_of(&ok), "1024");
    let big = exchange(server.addr, &post("/echo", &[b'a'; 5000])).await;
    assert_eq!(body_of(&big), "1025", "cut at max_body_bytes + 1");
    // Chunked, no declared length: read until the cap, then stop.
    let chunk = "a".repeat(600);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let resp = exchange(server.addr, chunked.as_bytes()).await;
    assert_eq!(body_of(&resp), "1025");
    // A declared length far over the cap is not read at all.
    let huge =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 999999999\r\n\r\n";
    let resp = exchange(server.addr, huge).await;
    assert_eq!(body_of(&resp), "1025");
    assert_eq!(
        *server.handler.seen_body_lengths.lock().unwrap(),
        vec![1024, 1025, 1025, 1025]
    );
}

/// A declared-length body that arrives in pieces is read to its length
/// exactly: whole, in order, and not a byte of the request behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_arriving_in_pieces_is_read_to_its_length_and_no_further() {
    let server = start(200_000).await;
    let body: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(30_000) {
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.write_all(&post("/echo", b"next")).await.unwrap();
    let replies = read_to_close(&mut stream).await;
    let (first, second) = replies
        .split_once("HTTP/1.1 200 OK\r\n")
        .map_or(("", ""), |(_, rest)| {
            rest.split_once("HTTP/1.1 200").unwrap_or((rest, ""))
        });
    assert!(
        first.ends_with(std::str::from_utf8(&body).unwrap()),
        "the body comes back whole"
    );
    assert!(second.ends_with("\r\n\r\n4"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let server = start(1024).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut carry = Vec::new();
    for body in ["abc", "", "hello world"] {
        let req = format!(
            "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let reply = read_reply(&mut stream, &mut carry, false).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, body);
        assert_eq!(reply.header("connection"), None);
        assert!(
            reply.header("date").is_some_and(|d| d.ends_with(" GMT")),
            "{reply:?}"
        );
    }
    // `Connection: close` is honoured (and said back).
    stream
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut carry, false).await;
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(closed(&mut stream).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let server = start(1024).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut all = Vec::new();
    for i in 0..20 {
        let body = format!("request {i}");
        all.extend_from_slice(
            format!(
                "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        if i % 3 == 0 {
            all.extend_from_slice(
                b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nc\r\n0\r\n\r\n",
            );
        }
    }
    // One write, so that several requests arrive together.
    stream.write_all(&all).await.unwrap();
    let mut carry = Vec::new();
    for i in 0..20 {
        let reply = read_reply(&mut stream, &mut carry, false).await;
        assert_eq!(reply.body, format!("request {i}"));
        if i % 3 == 0 {
            assert_eq!(read_reply(&mut stream, &mut carry, false).await.body, "c");
        }
    }
    // A request pipelined behind a held long-poll waits its turn.
    stream
        .write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\nGET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    while server.handler.waiting.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.handler.release.store(true, Ordering::SeqCst);
    server.handler.host.log_changed("u", 1);
    assert_eq!(
        read_reply(&mut stream, &mut carry, false).await.body,
        "released"
    );
    assert_eq!(
        read_reply(&mut stream, &mut carry, false).await.body,
        "GET /info HTTP/1.1 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_with_extensions_and_trailers_are_decoded() {
    let server = start(1024).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut carry = Vec::new();
    stream
        .write_all(
            b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n1 \r\n \r\nA\r\n0123456789\r\n0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n",
        )
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut carry, false).await;
    assert_eq!(reply.body, "hello 0123456789");
    // The connection stays usable: the body was read to its end.
    stream
        .write_all(b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut stream, &mut carry, false).await.body, "");
    // Chunked data sent a byte at a time.
    let req: &[u8] = b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    for b in req {
        stream.write_all(&[*b]).await.unwrap();
    }
    assert_eq!(
        read_reply(&mut stream, &mut carry, false).await.body,
        "abcde"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_framing_is_400_and_closes() {
    let server = start(1024).await;
    let cases: &[&[u8]] = &[
        b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n12345678901234567\r\n",
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\nabc",
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc",
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000000000000000\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST /body HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /in valid HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nNo Colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: bad\x7fvalue\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ];
    for case in cases {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(case).await.unwrap();
        let mut carry = Vec::new();
        let reply = read_reply(&mut stream, &mut carry, false).await;
        assert_eq!(
            reply.status,
            400,
            "{:?}: {reply:?}",
            String::from_utf8_lossy(case)
        );
        assert_eq!(reply.header("connection"), Some("close"));
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert!(
            closed(&mut stream).await,
            "{:?}",
            String::from_utf8_lossy(case)
        );
    }
    // Other transfer codings and other versions are refused as the client's
    // fault, saying which: never a 5xx for what a client sent.
    for (case, detail) in [
        (
            &b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            "only the chunked transfer coding is supported",
        ),
        (
            b"GET / HTTP/2.0\r\n\r\n",
            "only HTTP/1.0 and HTTP/1.1 are supported",
        ),
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "only HTTP/1.0 and HTTP/1.1 are supported",
        ),
    ] {
        let reply = exchange(server.addr, case).await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
        assert!(reply.contains(detail), "{reply}");
    }
    assert_eq!(server.handler.handled.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_431_and_long_request_lines_414() {
    let server = start(1024).await;
    let big = "x".repeat(20 * 1024);
    let reply = exchange(
        server.addr,
        format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431 "), "{}", &reply[..80]);
    let reply = exchange(
        server.addr,
        format!("GET /{big} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 414 "), "{}", &reply[..80]);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let reply = exchange(
        server.addr,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    // Just under the limit is fine.
    let fits = "x".repeat(15 * 1024);
    let reply = exchange(
        server.addr,
        format!("GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: {fits}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    // Leading empty lines before a request line are ignored.
    let reply = exchange(
        server.addr,
        b"\r\n\r\nGET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_honoured() {
    let server = start(1024).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut carry = Vec::new();
    stream
        .write_all(
            b"PUT /body HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    // The body is sent only once the server asked for it.
    let interim = read_reply(&mut stream, &mut carry, false).await;
    assert_eq!(interim.status, 100);
    stream.write_all(b"hello").await.unwrap();
    let reply = read_reply(&mut stream, &mut carry, false).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "hello"));
    // Chunked too.
    stream
        .write_all(
            b"PUT /body HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(read_reply(&mut stream, &mut carry, false).await.status, 100);
    stream.write_all(b"2\r\nok\r\n0\r\n\r\n").await.unwrap();
    assert_eq!(read_reply(&mut stream, &mut carry, false).await.body, "ok");
    // Too long a body is refused without a 100 and without being read.
    stream
        .write_all(b"PUT /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut carry, false).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "1025"));
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(closed(&mut stream).await);
    // Unknown expectations are 417.
    let reply = exchange(
        server.addr,
        b"PUT /body HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 417 "), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_closes_unless_asked_to_keep_alive() {
    let server = start(1024).await;
    let reply = exchange(server.addr, b"GET /info HTTP/1.0\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(reply.contains("connection: close\r\n"), "{reply}");
    assert_eq!(body_of(&reply), "GET /info HTTP/1.0 0");

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut carry = Vec::new();
    for _ in 0..2 {
        stream
            .write_all(b"GET /info HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let reply = read_reply(&mut stream, &mut carry, false).await;
        assert_eq!(reply.header("connection"), Some("keep-alive"));
        assert_eq!(reply.body, "GET /info HTTP/1.0 1");
    }
    // Expectations of HTTP/1.0 requests are ignored.
    stream
        .write_all(b"PUT /body HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut carry, false).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "hi"));
    assert!(closed(&mut stream).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_carry_headers_only_and_bodiless_statuses_no_length() {
    let server = start(1024).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut carry = Vec::new();
    stream
        .write_all(b"HEAD /head-length HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut carry, true).await;
    assert_eq!(reply.header("content-length"), Some("42"));
    // HEAD of a response with a body: no body on the wire.
    stream
        .write_all(b"HEAD /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut carry, true).await;
    assert_eq!(reply.status, 200);
    for status in [204, 304] {
        stream
            .write_all(format!("GET /status/{status} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let reply = read_reply(&mut stream, &mut carry, false).await;
        assert_eq!(reply.status, status);
        assert_eq!(reply.header("content-length"), None);
    }
    // Still in sync: nothing stray was written.
    stream
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut stream, &mut carry, false).await;
    assert_eq!(reply.body, "GET /info HTTP/1.1 1");
    assert!(carry.is_empty());
    // A HEAD refused for its head (no Host; a malformed field) gets the
    // problem's length and no content either.
    for request in [
        &b"HEAD /info HTTP/1.1\r\n\r\n"[..],
        b"HEAD /info HTTP/1.1\r\nHost: t\r\nX : y\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut carry = Vec::new();
        stream.write_all(request).await.unwrap();
        let reply = read_reply(&mut stream, &mut carry, true).await;
        assert_eq!(reply.status, 400);
        assert_ne!(reply.header("content-length"), Some("0"));
        assert!(closed(&mut stream).await, "no content follows");
        assert!(carry.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_by_the_timeouts() {
    let options = HttpOptions {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..HttpOptions::default()
    };
    let server = start_with(1024, options).await;
    // Half a head.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\nHo")
        .await
        .unwrap();
    assert!(closed(&mut stream).await);
    // Nothing at all.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed(&mut stream).await);
    // Half a body.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"PUT /body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    assert!(closed(&mut stream).await);
    // Half a chunked body.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"PUT /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        .await
        .unwrap();
    assert!(closed(&mut stream).await);
    // An idle keep-alive connection, after one answer.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut carry = Vec::new();
    assert_eq!(read_reply(&mut stream, &mut carry, false).await.status, 200);
    assert!(closed(&mut stream).await);
    // One kept open with empty lines only, each well within the idle
    // timeout: they are the start of a head, held to the head timeout.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut read, &mut carry, false).await.status, 200);
    let padding = tokio::spawn(async move {
        for _ in 0..300 {
            if write.write_all(b"\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(25), read.read_to_end(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "a connection sending only empty lines stayed open: {ended:?}"
    );
    padding.abort();
    assert_eq!(server.handler.handled.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_held_long_poll_releases_it() {
    let server = start(1024).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    while server.handler.host.hub().waiting_users() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stream);
    while server.handler.host.hub().waiting_users() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_panics_the_server() {
    let server = start(64).await;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"/",
        b"/body",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\n",
        b"\r",
        b": ",
        b"Content-Length",
        b"Transfer-Encoding",
        b"chunked",
        b"Expect",
        b"100-continue",
        b"Connection",
        b"close",
        b"0",
        b"5",
        b"ff",
        b";",
        b"\x00",
        b"\xff",
        b" ",
        b"\t",
        b",",
    ];
    for _ in 0..200 {
        let mut input = Vec::new();
        for _ in 0..(next() % 40) {
            input.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
        }
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(&input).await;
        let _ = stream.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(30), read_to_close(&mut stream)).await;
    }
    // Still serving.
    let reply = exchange(
        server.addr,
        b"GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_held_waits_and_finishes_in_flight_requests() {
    let mut server = start(1024).await;
    let addr = server.addr;
    let held: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(exchange(
                addr,
                b"GET /wait HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            ))
        })
        .collect();
    let in_flight = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        read_to_close(&mut stream).await
    });
    server.handler.gate_entered.notified().await;
    // An idle keep-alive connection (one answered request) and one that
    // never sent anything.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut carry = Vec::new();
    read_reply(&mut idle, &mut carry, false).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Wait until every long-poll reached the handler (connections still in
    // the accept backlog at shutdown are refused, as they should be).
    while server.handler.waiting.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    server.stop.take().unwrap().send(()).unwrap();
    for h in held {
        let resp = h.await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert_eq!(body_of(&resp), "released");
    }
    assert!(closed(&mut idle).await, "idle connections are closed");
    assert!(closed(&mut silent).await, "idle connections are closed");
    // The server is still draining the gated request...
    assert!(!server.done.is_finished());
    // ...and no longer accepts new connections.
    let refused = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr))
        .await
        .unwrap();
    assert!(refused.is_err(), "listener must be closed");
    server.handler.gate.notify_one();
    let resp = in_flight.await.unwrap();
    assert_eq!(body_of(&resp), "finished", "{resp}");
    assert!(resp.contains("connection: close\r\n"), "{resp}");
    server.done.await.unwrap();
    assert_eq!(server.handler.handled.load(Ordering::SeqCst), 52);
}

/// A connection accepted just as shutdown begins is served before the
/// server returns (and the store closes): it counts as open from its
/// accept, not from when its task first runs, and a request that arrived
/// with it is answered, not dropped unread as an idle connection would be.
#[tokio::test]
async fn a_connection_accepted_as_shutdown_begins_is_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    client
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let handler = test_handler(1024);
    let shared = Arc::new(http1::Shared {
        handler: Arc::clone(&handler),
        options: HttpOptions::default(),
        lifecycle: http1::Lifecycle::default(),
    });
    // As the accept loop does; then the drain starts before the
    // connection's task has run at all.
    let (stream, _) = listener.accept().await.unwrap();
    let accepted = http1::Accepted::new(&shared);
    shared.lifecycle.drain();
    assert_eq!(
        shared.lifecycle.open_connections(),
        1,
        "counted from its accept"
    );
    tokio::spawn(http1::serve_connection(stream, accepted));
    tokio::time::timeout(Duration::from_secs(30), shared.lifecycle.closed())
        .await
        .expect("the drain ends when the connection is done");
    assert_eq!(
        handler.handled.load(Ordering::SeqCst),
        1,
        "served, not dropped"
    );
    let reply = read_to_close(&mut client).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(reply.contains("connection: close\r\n"), "{reply}");
}

/// Shutdown does not wait out the head timeout of a client still sending
/// its request head: it gets a short grace. One that finishes within it is
/// served (with `Connection: close`), one that stalls is closed unanswered,
/// and the next request a keep-alive client sent before the drain is
/// answered, not dropped unread.
#[tokio::test]
async fn heads_in_progress_at_shutdown_get_a_grace_not_the_head_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = test_handler(1024);
    let shared = Arc::new(http1::Shared {
        handler: Arc::clone(&handler),
        // Long enough that a connection held to them outlives the test.
        options: HttpOptions {
            header_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            ..HttpOptions::default()
        },
        lifecycle: http1::Lifecycle::default(),
    });
    let connect = async || {
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(http1::serve_connection(
            stream,
            http1::Accepted::new(&shared),
        ));
        client
    };
    let mut stalled = connect().await;
    stalled
        .write_all(b"GET /info HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut finishing = connect().await;
    finishing
        .write_all(b"GET /info HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut keep_alive = connect().await;
    keep_alive
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut carry = Vec::new();
    read_reply(&mut keep_alive, &mut carry, false).await;
    keep_alive
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Let the connections read what they were sent.
    tokio::time::sleep(Duration::from_millis(100)).await;

    shared.lifecycle.drain();
    finishing.write_all(b"st: t\r\n\r\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), shared.lifecycle.closed())
        .await
        .expect("the drain ends without waiting out the head timeout");
    let reply = read_to_close(&mut finishing).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(reply.contains("connection: close\r\n"), "{reply}");
    let reply = read_to_close(&mut keep_alive).await;
    assert!(
        reply.starts_with("HTTP/1.1 200 "),
        "the second request: {reply}"
    );
    assert_eq!(read_to_close(&mut stalled).await, "", "closed unanswered");
    assert_eq!(handler.handled.load(Ordering::SeqCst), 3);
}

/// A connection is one small future: its size (the largest of its states)
/// is most of what each of ten thousand held long-polls costs.
#[tokio::test]
async fn a_connection_future_is_small() {
    fn size<F: Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }
    let dir = tempfile::tempdir().unwrap();
    let kv = Store::open(&StoreKind::Sqlite, dir.path(), &SqliteOptions::default())
        .await
        .unwrap();
    let service = Arc::new(Service::new(
        Config::with_secret(vec![7; 32]),
        kv,
        NativeHost::local(),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let shared = Arc::new(http1::Shared {
        handler: Arc::clone(&service),
        options: HttpOptions::default(),
        lifecycle: http1::Lifecycle::default(),
    });
    let conn = http1::serve_connection(stream, http1::Accepted::new(&shared));
    let bytes = size(&conn);
    println!("connection future: {bytes} bytes");
    assert!(bytes <= 1024, "connection future is {bytes} bytes");
    drop(conn);
    service.kv().close().await;
}

#[tokio::test]
async fn writer_turns_queue_one_user_and_not_others() {
    let host = NativeHost::local();
    let first = host.writer_turn("u").await;
    // Another user's writer is not held up.
    let other = host.writer_turn("v").await;
    drop(other);
    // The same user's next writer waits until the first turn ends.
    let entered = Arc::new(AtomicUsize::new(0));
    let task = {
        let (host, entered) = (host.clone(), entered.clone());
        tokio::spawn(async move {
            let _turn = host.writer_turn("u").await;
            entered.fetch_add(1, Ordering::SeqCst);
        })
    };
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        entered.load(Ordering::SeqCst),
        0,
        "second writer ran during the first's turn"
    );
    drop(first);
    task.await.unwrap();
    assert_eq!(entered.load(Ordering::SeqCst), 1);
}

/// A turn held for long (its writer stuck on a stalled store) does not hold
/// the next writers for longer than the patience: they go ahead without it,
/// so a queue of writers does not add up their store timeouts.
#[tokio::test(start_paused = true)]
async fn a_stuck_turn_is_waited_for_only_so_long() {
    let host = NativeHost::local();
    let _stuck = host.writer_turn("u").await;
    let started = tokio::time::Instant::now();
    let _second = host.writer_turn("u").await;
    let _third = host.writer_turn("u").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(5),
        "each waited the patience (2 s) and went ahead: {waited:?}"
    );
}
