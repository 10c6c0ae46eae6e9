//! Whole servers (real core, real stores) started in-process on port 0.

use std::net::SocketAddr;
use std::time::Duration;

use edgesync_core::{Config, Host};
use edgesync_redis::testing::RedisServer;
use edgesync_server::{Server, ServerOptions, StoreKind, SQLITE_FILE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

fn options(data_dir: &std::path::Path, store: StoreKind) -> ServerOptions {
    let mut options = ServerOptions::new(Config::with_secret(vec![7u8; 32]));
    options.listen = "127.0.0.1:0".into();
    options.data_dir = data_dir.to_path_buf();
    options.store = store;
    options
}

struct Running {
    addr: SocketAddr,
    host: edgesync_server::NativeHost,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), edgesync_server::ServerError>>,
}

async fn start(options: ServerOptions) -> Running {
    let server = Server::bind(options).await.unwrap();
    let addr = server.local_addr();
    let host = server.host().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        host,
        stop,
        done,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.done.await.unwrap().unwrap();
    }
}

async fn get(addr: SocketAddr, path: &str) -> String {
    send(addr, "GET", path, None, "").await
}

/// One request on a fresh connection; the whole response as text.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

fn token(config: &Config, sub: &str) -> String {
    let expect = edgesync_core::auth::Expectations {
        secret: &config.jwt_secret,
        audience: None,
        issuer: None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    edgesync_core::auth::mint(&expect, sub, now, 3600)
}

/// Options whose long-polls may be held for an hour, so that a test
/// finishing at all shows the wake-up did not wait for the deadline.
fn long_poll_options(data_dir: &std::path::Path) -> ServerOptions {
    let mut opts = options(data_dir, StoreKind::Sqlite);
    opts.config.max_wait_seconds = 3600;
    opts
}

async fn wait_for_waiters(host: &edgesync_server::NativeHost, users: usize) {
    while host.hub().waiting_users() < users {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_long_poll_wakes_when_a_change_commits() {
    let dir = tempfile::tempdir().unwrap();
    let opts = long_poll_options(dir.path());
    let tok = token(&opts.config, "alice");
    let server = start(opts).await;
    let addr = server.addr;
    let t = tok.clone();
    let poll = tokio::spawn(async move {
        send(addr, "GET", "/v1/changes?since=0&wait=3600", Some(&t), "").await
    });
    wait_for_waiters(&server.host, 1).await;
    let put = send(
        addr,
        "PUT",
        "/v1/docs/todos/a1",
        Some(&tok),
        r#"{"title":"milk"}"#,
    )
    .await;
    assert!(put.starts_with("HTTP/1.1 201"), "{put}");
    let resp = tokio::time::timeout(Duration::from_secs(60), poll)
        .await
        .expect("the change wakes the held long-poll")
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""title":"milk""#), "{resp}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_held_long_polls_through_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let opts = long_poll_options(dir.path());
    // One user per poll, so that the hub shows when all of them are held
    // (a connection still in the accept backlog at shutdown is refused).
    let tokens: Vec<String> = (0..20)
        .map(|i| token(&opts.config, &format!("bob{i}")))
        .collect();
    let server = start(opts).await;
    let addr = server.addr;
    let polls: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            tokio::spawn(async move {
                send(addr, "GET", "/v1/changes?since=0&wait=3600", Some(&t), "").await
            })
        })
        .collect();
    wait_for_waiters(&server.host, 20).await;
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("shutdown does not wait for long-poll deadlines");
    for poll in polls {
        let resp = poll.await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains(r#""changes":[]"#), "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_server_serves_stops_and_restarts_on_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(options(&data, StoreKind::Sqlite)).await;
    let health = get(server.addr, "/v1/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with(r#"{"status":"ok"}"#), "{health}");
    server.stop().await;
    assert!(data.join(SQLITE_FILE).exists());

    // The same data dir opens again (the store was closed cleanly).
    let server = start(options(&data, StoreKind::Sqlite)).await;
    assert!(get(server.addr, "/v1/health")
        .await
        .starts_with("HTTP/1.1 200"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors_are_reported_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut opts = options(dir.path(), StoreKind::Sqlite);
    opts.listen = taken.local_addr().unwrap().to_string();
    let err = Server::bind(opts).await.unwrap_err();
    assert!(err.to_string().contains("listening on"), "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let err = Server::bind(options(&file, StoreKind::Sqlite))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("data directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_wake_each_others_waiters() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = StoreKind::Redis(redis.url(0));
    let a = start(options(&dir.path().join("a"), store.clone())).await;
    let b = start(options(&dir.path().join("b"), store)).await;
    assert!(get(a.addr, "/v1/health").await.starts_with("HTTP/1.1 200"));
    assert!(get(b.addr, "/v1/health").await.starts_with("HTTP/1.1 200"));

    // A long-poll held on b, for an hour; a commits a change for that user.
    let deadline = b.host.now_millis() + 3_600_000;
    let waits: Vec<_> = (0..10)
        .map(|_| {
            let host = b.host.clone();
            tokio::spawn(async move { host.wait_for_change("u/alice", deadline).await })
        })
        .collect();
    let host = b.host.clone();
    let other = tokio::spawn(async move { host.wait_for_change("u/bob", deadline).await });
    while b.host.hub().waiting_users() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.host.log_changed("u/alice", 1);
    for w in waits {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("a change on instance a wakes waiters on instance b")
            .unwrap();
    }
    // bob's waiter is still registered (nobody changed bob's log)...
    assert_eq!(b.host.hub().waiting_users(), 1);
    // ...until shutdown releases it.
    b.stop().await;
    tokio::time::timeout(Duration::from_secs(30), other)
        .await
        .expect("shutdown releases held waits")
        .unwrap();
    a.stop().await;
}
