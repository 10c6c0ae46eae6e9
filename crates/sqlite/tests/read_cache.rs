//! The read cache never answers anything but the committed value: reads
//! follow acknowledged writes and never go backwards, under concurrent
//! writers; and one file has one store at a time (the cache relies on it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use edgesync_core::{decode_counter, encode_counter, Kv};
use edgesync_sqlite::{OpenError, SqliteKv, SqliteOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_acknowledged_writes_and_never_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let kv =
        Arc::new(SqliteKv::open(dir.path().join("kv.sqlite3"), SqliteOptions::default()).unwrap());
    const COUNTERS: usize = 3;
    for c in 0..COUNTERS {
        kv.set(&format!("c{c}"), &encode_counter(0)).await.unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    // Writers: swaps and increments on shared counters (only ever up),
    // each checking that a read right after its acknowledged write sees
    // at least what it wrote.
    let mut writers = Vec::new();
    for w in 0..4 {
        let kv = kv.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..300 {
                let key = format!("c{}", (w + i) % COUNTERS);
                let written = if i % 2 == 0 {
                    kv.increment(&key, 1).await.unwrap() as u64
                } else {
                    let raw = kv.get(&key).await.unwrap().unwrap();
                    let v = decode_counter(&raw).unwrap();
                    if !kv
                        .compare_and_swap(&key, &raw, &encode_counter(v + 1))
                        .await
                        .unwrap()
                    {
                        continue;
                    }
                    v + 1
                };
                let seen = decode_counter(&kv.get(&key).await.unwrap().unwrap()).unwrap();
                assert!(seen >= written, "{key}: wrote {written}, then read {seen}");
                // Values that come and go.
                let scratch = format!("s{w}");
                kv.set(&scratch, format!("{i}").as_bytes()).await.unwrap();
                assert_eq!(
                    kv.get(&scratch).await.unwrap(),
                    Some(format!("{i}").into_bytes())
                );
                kv.delete_many(std::slice::from_ref(&scratch))
                    .await
                    .unwrap();
                assert_eq!(kv.get(&scratch).await.unwrap(), None);
            }
        }));
    }
    // Readers: each sees every counter only go up, by get and get_many.
    let mut readers = Vec::new();
    for r in 0..4 {
        let (kv, done) = (kv.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let keys: Vec<String> = (0..COUNTERS).map(|c| format!("c{c}")).collect();
            let mut last = vec![0u64; COUNTERS];
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) || reads < 100 {
                let now: Vec<u64> = if r % 2 == 0 {
                    let mut v = Vec::new();
                    for key in &keys {
                        v.push(decode_counter(&kv.get(key).await.unwrap().unwrap()).unwrap());
                    }
                    v
                } else {
                    kv.get_many(&keys)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|raw| decode_counter(&raw.unwrap()).unwrap())
                        .collect()
                };
                for c in 0..COUNTERS {
                    assert!(
                        now[c] >= last[c],
                        "c{c} went back from {} to {}",
                        last[c],
                        now[c]
                    );
                }
                last = now;
                reads += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    // The final values, through the cache and straight from the file.
    let cached: Vec<_> = kv
        .get_many(&(0..COUNTERS).map(|c| format!("c{c}")).collect::<Vec<_>>())
        .await
        .unwrap();
    let kv = Arc::try_unwrap(kv).unwrap();
    kv.close().await;
    let direct = rusqlite::Connection::open(dir.path().join("kv.sqlite3")).unwrap();
    for (c, value) in cached.into_iter().enumerate() {
        let stored: Vec<u8> = direct
            .query_row("SELECT v FROM kv WHERE k = ?1", [format!("c{c}")], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(value.unwrap(), stored);
    }
}

#[tokio::test]
async fn one_file_has_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.sqlite3");
    let first = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    first.set("k", b"v").await.unwrap();
    let err = SqliteKv::open(&path, SqliteOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    first.close().await;
    let second = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    assert_eq!(second.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    second.close().await;
}
