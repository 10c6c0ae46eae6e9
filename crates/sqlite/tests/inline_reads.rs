//! Reads served on the calling thread: each store keeps to its own file,
//! writes are seen by the next read, a closed store's connections are let
//! go, and large batches read the same through the reader pool.

use edgesync_core::Kv;
use edgesync_sqlite::{SqliteKv, SqliteOptions};

/// One thread, so both stores' inline connections live side by side.
#[tokio::test(flavor = "current_thread")]
async fn stores_on_one_thread_keep_to_their_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let a_path = dir.path().join("a.sqlite3");
    let a = SqliteKv::open(&a_path, SqliteOptions::default()).unwrap();
    let b = SqliteKv::open(dir.path().join("b.sqlite3"), SqliteOptions::default()).unwrap();
    a.set("k", b"from a").await.unwrap();
    b.set("k", b"from b").await.unwrap();
    for _ in 0..3 {
        assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"from a"[..]));
        assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"from b"[..]));
        let many = a
            .get_many(&["k".to_owned(), "none".to_owned()])
            .await
            .unwrap();
        assert_eq!(many, vec![Some(b"from a".to_vec()), None]);
    }
    // A write is visible to the very next inline read.
    for i in 0..50u32 {
        a.set("n", &i.to_le_bytes()).await.unwrap();
        assert_eq!(a.get("n").await.unwrap(), Some(i.to_le_bytes().to_vec()));
    }
    a.close().await;
    assert!(a.get("k").await.is_err(), "a closed store reads nothing");
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"from b"[..]));
    let a = SqliteKv::open(&a_path, SqliteOptions::default()).unwrap();
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"from a"[..]));
    a.close().await;
    b.close().await;
}

/// Large batches go to the pool; the answer is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_read_the_same_through_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let kv = SqliteKv::open(dir.path().join("kv.sqlite3"), SqliteOptions::default()).unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    for key in keys.iter().step_by(2) {
        kv.set(key, key.as_bytes()).await.unwrap();
    }
    let values = kv.get_many(&keys).await.unwrap();
    for (i, (key, value)) in keys.iter().zip(values).enumerate() {
        assert_eq!(
            value,
            (i % 2 == 0).then(|| key.as_bytes().to_vec()),
            "{key}"
        );
    }
    kv.close().await;
}
