//! Informal throughput check of the store alone: `writers` concurrent
//! tasks each doing "document writes" shaped like the core's (3 reads,
//! 1 blind 1 KiB set, 3 counter swaps), for `seconds`.
//!
//! `cargo run --release -p edgesync-sqlite --example doc_writes -- [writers] [seconds] [normal|full]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_core::{decode_counter, encode_counter, Kv};
use edgesync_sqlite::{SqliteKv, SqliteOptions, Synchronous};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let writers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let synchronous = args
        .get(3)
        .and_then(|a| Synchronous::parse(a))
        .unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        synchronous,
        ..SqliteOptions::default()
    };
    let kv = Arc::new(SqliteKv::open(dir.path().join("bench.sqlite3"), options).unwrap());
    let value = vec![b'x'; 1024];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let kv = kv.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let counters = [format!("w{w}/a"), format!("w{w}/b"), format!("w{w}/c")];
            for c in &counters {
                kv.increment(c, 0).await.unwrap();
            }
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(seconds) {
                let raws = kv.get_many(&counters).await.unwrap();
                let _ = kv.get(&format!("w{w}/doc/{n}")).await.unwrap();
                kv.set(&format!("w{w}/entry/{n}"), &value).await.unwrap();
                for (c, raw) in counters.iter().zip(raws) {
                    let raw = raw.unwrap();
                    let v = decode_counter(&raw).unwrap();
                    assert!(kv
                        .compare_and_swap(c, &raw, &encode_counter(v + 1))
                        .await
                        .unwrap());
                }
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let wal = std::fs::metadata(dir.path().join("bench.sqlite3-wal")).map_or(0, |m| m.len());
    println!(
        "{writers} writers, synchronous={synchronous:?}: {total} doc writes in {secs:.1} s = {:.0}/s, WAL {} MiB",
        total as f64 / secs,
        wal >> 20
    );
    kv.close().await;
}
