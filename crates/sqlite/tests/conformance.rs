//! The core's KV conformance suite against a fresh SQLite file.

use edgesync_core::kv::conformance;
use edgesync_core::{encode_counter, Kv};
use edgesync_sqlite::{SqliteKv, SqliteOptions, Synchronous};

/// The suite under each prefix, on a fresh file opened with `options`.
async fn conformance_with(options: SqliteOptions, prefixes: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let kv = SqliteKv::open(dir.path().join("kv.sqlite3"), options).unwrap();
    for prefix in prefixes {
        conformance::run(&kv, prefix).await;
    }
    kv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_normal() {
    conformance_with(SqliteOptions::default(), &["t1/", "t2/"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_full_single_reader() {
    // Every read through the (single) pooled reader, no cache.
    let options = SqliteOptions {
        synchronous: Synchronous::Full,
        readers: 1,
        inline_reads: false,
        read_cache_bytes: 0,
        inline_writes: false,
    };
    conformance_with(options, &[""]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_every_write_on_the_writer_thread() {
    let options = SqliteOptions {
        inline_writes: false,
        ..SqliteOptions::default()
    };
    conformance_with(options, &[""]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_a_tiny_cache() {
    // Evicting all the time.
    let options = SqliteOptions {
        read_cache_bytes: 300,
        ..SqliteOptions::default()
    };
    conformance_with(options, &[""]).await;
}

/// Many concurrent swaps on one counter: exactly one swap per value may win,
/// so the final value equals the number of successful swaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_swaps_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let kv = std::sync::Arc::new(
        SqliteKv::open(dir.path().join("kv.sqlite3"), SqliteOptions::default()).unwrap(),
    );
    kv.increment("n", 0).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0u64;
            for _ in 0..200 {
                let raw = kv.get("n").await.unwrap().unwrap();
                let v = edgesync_core::decode_counter(&raw).unwrap();
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
    let raw = kv.get("n").await.unwrap().unwrap();
    assert_eq!(edgesync_core::decode_counter(&raw), Some(total));
    assert!(total > 0);
    kv.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_data_and_closed_store_reports_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.sqlite3");
    let kv = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    kv.set("k", b"v").await.unwrap();
    assert_eq!(kv.increment("c", 3).await.unwrap(), 3);
    kv.close().await;
    let err = kv.get("k").await.unwrap_err();
    assert_eq!(err.kind, edgesync_core::KvErrorKind::Unavailable);
    let err = kv.set("k", b"w").await.unwrap_err();
    assert_eq!(err.kind, edgesync_core::KvErrorKind::Unavailable);
    kv.close().await; // twice is fine

    let kv = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(kv.increment("c", 1).await.unwrap(), 4);
    kv.close().await;
}

#[tokio::test]
async fn increment_of_a_non_counter_fails_without_failing_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let kv = SqliteKv::open(dir.path().join("kv.sqlite3"), SqliteOptions::default()).unwrap();
    kv.set("text", b"{\"a\":1}").await.unwrap();
    let (bad, good) = tokio::join!(kv.increment("text", 1), kv.set("other", b"x"));
    assert_eq!(bad.unwrap_err().kind, edgesync_core::KvErrorKind::Other);
    good.unwrap();
    assert_eq!(kv.get("other").await.unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(
        kv.get("text").await.unwrap().as_deref(),
        Some(&b"{\"a\":1}"[..])
    );
    kv.close().await;
}

#[test]
fn opening_an_unwritable_path_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteKv::open(
        dir.path().join("no/such/dir/kv.sqlite3"),
        SqliteOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("kv.sqlite3"), "{err}");
}
