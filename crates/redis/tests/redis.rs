//! `RedisKv` and `ChangeBus` against a real, throwaway redis-server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesync_core::kv::conformance;
use edgesync_core::{decode_counter, encode_counter, Kv, KvErrorKind};
use edgesync_redis::testing::RedisServer;
use edgesync_redis::{ChangeBus, ChangeEvent, RedisKv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let server = RedisServer::start();
    let kv = RedisKv::connect(&server.url(0)).await.unwrap();
    conformance::run(&kv, "t1/").await;
    // A second database is a separate namespace.
    let kv1 = RedisKv::connect(&server.url(1)).await.unwrap();
    conformance::run(&kv1, "t1/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_swaps_are_atomic() {
    let server = RedisServer::start();
    let kv = RedisKv::connect(&server.url(0)).await.unwrap();
    kv.increment("n", 0).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0u64;
            for _ in 0..100 {
                let raw = kv.get("n").await.unwrap().unwrap();
                let v = decode_counter(&raw).unwrap();
                if kv
                    .compare_and_swap("n", &raw, &encode_counter(v + 1))
                    .await
                    .unwrap()
                {
                    wins += 1;
                }
            }
            wins
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert!(total > 0);
    let raw = kv.get("n").await.unwrap().unwrap();
    assert_eq!(decode_counter(&raw), Some(total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_of_non_counters_are_errors_not_panics() {
    let server = RedisServer::start();
    let kv = RedisKv::connect(&server.url(0)).await.unwrap();
    kv.set("bin", &encode_counter(5)).await.unwrap();
    assert_eq!(kv.increment("bin", 0).await.unwrap(), 5);
    assert_eq!(
        kv.increment("bin", 1).await.unwrap_err().kind,
        KvErrorKind::Other
    );
    kv.set("text", b"hello").await.unwrap();
    assert_eq!(
        kv.increment("text", 0).await.unwrap_err().kind,
        KvErrorKind::Other
    );
    assert_eq!(kv.get("bin").await.unwrap().unwrap(), encode_counter(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_unavailable_not_a_hang() {
    let mut server = RedisServer::start();
    let kv = RedisKv::connect(&server.url(0)).await.unwrap();
    kv.set("k", b"v").await.unwrap();
    server.stop();
    let err = tokio::time::timeout(Duration::from_secs(60), kv.get("k"))
        .await
        .expect("operations on a dead server must fail, not hang")
        .unwrap_err();
    assert_eq!(err.kind, KvErrorKind::Unavailable, "{err}");
    let err = RedisKv::connect(&server.url(0)).await.unwrap_err();
    assert_eq!(err.kind, KvErrorKind::Unavailable, "{err}");
    let err = RedisKv::connect("not a url").await.unwrap_err();
    assert_eq!(err.kind, KvErrorKind::Other, "{err}");
}

type Seen = Arc<Mutex<Vec<(String, u64)>>>;

async fn bus(url: &str, notify: Arc<tokio::sync::Notify>) -> (ChangeBus, Seen) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let bus = ChangeBus::start(url, move |event| {
        if let ChangeEvent::Changed { user, seq } = event {
            sink.lock().unwrap().push((user.to_owned(), seq));
            notify.notify_one();
        }
    })
    .await
    .unwrap();
    (bus, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_bus_reaches_other_instances_but_not_itself() {
    let server = RedisServer::start();
    let url = server.url(0);
    let (a_notify, b_notify) = (Arc::default(), Arc::<tokio::sync::Notify>::default());
    let (a, a_seen) = bus(&url, a_notify).await;
    let (b, b_seen) = bus(&url, b_notify.clone()).await;
    // A bus on another database is another deployment: it hears nothing.
    let (_c, c_seen) = bus(&server.url(3), Arc::default()).await;

    a.publish("u/alice", 1);
    a.publish("u/with space", 2);
    tokio::time::timeout(Duration::from_secs(30), async {
        while b_seen.lock().unwrap().len() < 2 {
            b_notify.notified().await;
        }
    })
    .await
    .expect("b hears a's announcements");
    assert_eq!(
        *b_seen.lock().unwrap(),
        vec![("u/alice".to_owned(), 1), ("u/with space".to_owned(), 2)]
    );

    // A round trip the other way proves a's subscription is live, so had a
    // heard its own messages they would have arrived before this one.
    b.publish("u/bob", 3);
    tokio::time::timeout(Duration::from_secs(30), async {
        while a_seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a hears b");
    assert_eq!(*a_seen.lock().unwrap(), vec![("u/bob".to_owned(), 3)]);
    assert!(c_seen.lock().unwrap().is_empty());
}

/// Closing a bus publishes what is queued first: the last writes of an
/// instance that shuts down wake long-polls on the others at once, not at
/// their deadline. On one thread the publisher has not run when `close`
/// is called right after `publish`.
#[tokio::test(flavor = "current_thread")]
async fn closing_a_bus_publishes_what_is_queued() {
    let server = RedisServer::start();
    let url = server.url(0);
    let b_notify = Arc::<tokio::sync::Notify>::default();
    let (a, _) = bus(&url, Arc::default()).await;
    let (_b, b_seen) = bus(&url, b_notify.clone()).await;
    for seq in 1..=100 {
        a.publish("u/last", seq);
    }
    a.close().await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while b_seen.lock().unwrap().len() < 100 {
            b_notify.notified().await;
        }
    })
    .await
    .expect("b hears every announcement a had queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_bus_needs_a_reachable_server() {
    let mut server = RedisServer::start();
    let url = server.url(0);
    server.stop();
    let err = ChangeBus::start(&url, |_| {}).await.unwrap_err();
    assert_eq!(err.kind, KvErrorKind::Unavailable, "{err}");
}

/// Close every normal client connection of `url`'s server (as its idle
/// `timeout` or a network blip would), pub/sub subscriptions aside.
async fn drop_clients(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed > 0, "no connection to drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_command_after_a_dropped_connection_succeeds() {
    let server = RedisServer::start();
    let url = server.url(0);
    let kv = RedisKv::connect(&url).await.unwrap();
    kv.set("k", b"v1").await.unwrap();
    kv.increment("n", 0).await.unwrap();

    drop_clients(&url).await;
    assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    drop_clients(&url).await;
    assert_eq!(
        kv.get_many(&["k".into(), "absent".into()]).await.unwrap(),
        vec![Some(b"v1".to_vec()), None]
    );
    drop_clients(&url).await;
    assert!(kv.compare_and_swap("k", b"v1", b"v2").await.unwrap());
    assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    drop_clients(&url).await;
    assert!(!kv.compare_and_swap("k", b"v1", b"v3").await.unwrap());
    drop_clients(&url).await;
    assert_eq!(kv.increment("n", 0).await.unwrap(), 0);
    drop_clients(&url).await;
    kv.set("k2", b"x").await.unwrap();
    drop_clients(&url).await;
    kv.delete_many(&["k2".into()]).await.unwrap();
    assert_eq!(kv.get("k2").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_after_a_dropped_connection_still_arrives() {
    let server = RedisServer::start();
    let url = server.url(0);
    let (a, _) = bus(&url, Arc::default()).await;
    let b_notify = Arc::<tokio::sync::Notify>::default();
    let (_b, b_seen) = bus(&url, b_notify.clone()).await;
    a.publish("u/alice", 1);
    let heard = |n: usize| {
        let (seen, notify) = (b_seen.clone(), b_notify.clone());
        async move {
            while seen.lock().unwrap().len() < n {
                notify.notified().await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), heard(1))
        .await
        .expect("b hears a");
    drop_clients(&url).await;
    a.publish("u/alice", 2);
    tokio::time::timeout(Duration::from_secs(30), heard(2))
        .await
        .expect("b hears a's announcement sent over a dropped connection");
    assert_eq!(b_seen.lock().unwrap()[1], ("u/alice".to_owned(), 2));
}

async fn raw_set(url: &str, key: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg(key)
        .arg("x")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// edgesync's keys carry no prefix, so it needs a database of its own: one
/// holding other keys is refused at connect, naming one; one holding only
/// edgesync's keys (or none) is claimed, and a claimed one stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_holding_foreign_keys_is_refused() {
    let server = RedisServer::start();
    raw_set(&server.url(2), "u/alice/h").await;
    raw_set(&server.url(2), "sess:1").await;
    let err = RedisKv::connect(&server.url(2)).await.unwrap_err();
    assert_eq!(err.kind, KvErrorKind::Other, "{err}");
    assert!(
        err.to_string().contains("sess:1") && err.to_string().contains("database of its own"),
        "{err}"
    );

    raw_set(&server.url(3), "u/alice/h").await;
    RedisKv::connect(&server.url(3)).await.unwrap();
    // Claimed: later foreign keys are the operator's business.
    raw_set(&server.url(3), "sess:2").await;
    RedisKv::connect(&server.url(3)).await.unwrap();
}

/// Instances starting together on an unclaimed database all start: the
/// marker one of them writes is not a foreign key to the others, whose
/// check for foreign keys may run after it appeared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_claiming_one_database_at_once_all_start() {
    let server = RedisServer::start();
    for db in 4..12 {
        let url = server.url(db);
        let starts: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { RedisKv::connect(&url).await.map(|_| ()) })
            })
            .collect();
        for start in starts {
            start.await.unwrap().unwrap();
        }
    }
}

/// Something that is not Redis on the port: the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_redis_is_named_as_such() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut sock in listener.incoming().flatten() {
            let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let err = RedisKv::connect(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Redis or Valkey server"), "{err}");
}

/// Run `ACL <args>` on `url`'s server.
async fn acl(url: &str, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ACL")
        .arg(args)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Announcements an instance could not publish are made up for: once it
/// can publish again, it tells the others that they may have missed
/// changes, so their long-polls re-check the store instead of sleeping
/// through those changes to their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_that_could_not_be_published_are_made_up_for() {
    let server = RedisServer::start();
    let url = server.url(0);
    let (a, _) = bus(&url, Arc::default()).await;
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let (sink, b_notify) = (events.clone(), Arc::<tokio::sync::Notify>::default());
    let notify = b_notify.clone();
    let _b = ChangeBus::start(&url, move |event| {
        sink.lock().unwrap().push(format!("{event:?}"));
        notify.notify_one();
    })
    .await
    .unwrap();

    // Publishing is refused (as to an instance cut off from Redis while
    // the others are not) until a's attempt has been turned away.
    acl(&url, &["SETUSER", "default", "-publish"]).await;
    a.publish("u/alice", 1);
    tokio::time::timeout(Duration::from_secs(30), async {
        while !format!("{:?}", acl(&url, &["LOG"]).await).contains("publish") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a tries to publish");
    assert!(events.lock().unwrap().is_empty());
    acl(&url, &["SETUSER", "default", "+publish"]).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while events.lock().unwrap().is_empty() {
            b_notify.notified().await;
        }
    })
    .await
    .expect("b hears that it may have missed changes");
    assert_eq!(*events.lock().unwrap(), ["MaybeMissed"]);
}
