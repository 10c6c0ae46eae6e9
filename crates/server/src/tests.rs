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

/// A stand-in for the core: `/wait` holds like a long-poll, `/gate` waits
/// for the test to open it, anything else echoes the body length.
struct TestHandler {
    host: NativeHost,
    gate: Notify,
    gate_entered: Notify,
    max_body: usize,
    seen_body_lengths: std::sync::Mutex<Vec<usize>>,
    handled: AtomicUsize,
    waiting: AtomicUsize,
}

impl Handler for TestHandler {
    fn max_body_bytes(&self) -> usize {
        self.max_body
    }
    async fn handle(&self, request: Request<Vec<u8>>) -> Response<Vec<u8>> {
        let body = match request.uri().path() {
            "/wait" => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                let deadline = self.host.now_millis() + 3_600_000;
                self.host.wait_for_change("u", deadline).await;
                b"released".to_vec()
            }
            "/gate" => {
                let opened = self.gate.notified();
                self.gate_entered.notify_one();
                opened.await;
                b"finished".to_vec()
            }
            _ => {
                self.seen_body_lengths
                    .lock()
                    .unwrap()
                    .push(request.body().len());
                request.body().len().to_string().into_bytes()
            }
        };
        self.handled.fetch_add(1, Ordering::SeqCst);
        Response::new(body)
    }
}

struct Running {
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(max_body: usize) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(TestHandler {
        host: NativeHost::local(),
        gate: Notify::new(),
        gate_entered: Notify::new(),
        max_body,
        seen_body_lengths: Default::default(),
        handled: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let h = Arc::clone(&handler);
    let done = tokio::spawn(async move {
        let host = h.host.clone();
        serve(
            listener,
            h,
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

/// Send raw request bytes and read the whole response (the request says
/// `Connection: close`).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let server = start(1024).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut two = post("/echo", b"abc");
    two.extend(post("/echo", b"hello"));
    let two = String::from_utf8(two)
        .unwrap()
        .replacen("Connection: close\r\n", "", 1);
    stream.write_all(two.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
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
    let in_flight = tokio::spawn(exchange(
        addr,
        b"GET /gate HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ));
    server.handler.gate_entered.notified().await;
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
    server.done.await.unwrap();
    assert_eq!(server.handler.handled.load(Ordering::SeqCst), 51);
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
