//! Acknowledged writes survive `kill -9` of the process that made them.
//!
//! The test re-runs its own binary as a child (the ignored `crash_child`
//! test, selected with `--exact --ignored`) that writes through
//! [`SqliteKv`] from 16 concurrent tasks and prints one line per
//! acknowledged operation. The parent SIGKILLs it mid-stream, reopens the
//! file and checks that everything acknowledged is there.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use edgesync_core::{decode_counter, encode_counter, Kv};
use edgesync_sqlite::{SqliteKv, SqliteOptions, Synchronous};

const DB_ENV: &str = "EDGESYNC_SQLITE_CRASH_DB";
const SYNC_ENV: &str = "EDGESYNC_SQLITE_CRASH_SYNC";
const WRITERS: u64 = 16;

fn doc_value(task: u64, n: u64) -> Vec<u8> {
    let mut v = format!("{task}:{n}:").into_bytes();
    v.resize(1024, b'x');
    v
}

#[test]
#[ignore = "helper process for kill_9_keeps_acknowledged_writes_*"]
fn crash_child() {
    let db = std::env::var(DB_ENV).expect("run by kill_9_keeps_acknowledged_writes_*");
    let synchronous = Synchronous::parse(&std::env::var(SYNC_ENV).unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let options = SqliteOptions {
            synchronous,
            ..SqliteOptions::default()
        };
        let kv = Arc::new(SqliteKv::open(&db, options).unwrap());
        let mut tasks = Vec::new();
        for task in 0..WRITERS {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move {
                let counter = format!("count/{task}");
                kv.increment(&counter, 0).await.unwrap();
                for n in 1.. {
                    kv.set(&format!("doc/{task}/{n}"), &doc_value(task, n))
                        .await
                        .unwrap();
                    let swapped = kv
                        .compare_and_swap(&counter, &encode_counter(n - 1), &encode_counter(n))
                        .await
                        .unwrap();
                    assert!(swapped, "only this task advances its counter");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {task} {n}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn kill_9_keeps_acknowledged_writes(synchronous: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kv.sqlite3");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DB_ENV, &db)
        .env(SYNC_ENV, synchronous)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut total = 0;
    let mut record = |line: &str, acked: &mut HashMap<u64, u64>| {
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (task, n) = rest.split_once(' ').unwrap();
            let (task, n): (u64, u64) = (task.parse().unwrap(), n.parse().unwrap());
            let best = acked.entry(task).or_default();
            *best = (*best).max(n);
            total += 1;
        }
        total
    };
    for line in lines.by_ref() {
        if record(&line.unwrap(), &mut acked) >= 3000 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
                           // Lines already in the pipe were acknowledged before the kill.
    for line in lines {
        record(&line.unwrap(), &mut acked);
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have been killed");
    assert!(total >= 3000, "child stopped early after {total} acks");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let kv = SqliteKv::open(&db, SqliteOptions::default()).unwrap();
        for (&task, &last) in &acked {
            let raw = kv.get(&format!("count/{task}")).await.unwrap().unwrap();
            let count = decode_counter(&raw).unwrap();
            assert!(count >= last, "task {task}: acked {last}, found {count}");
            let keys: Vec<String> = (1..=last).map(|n| format!("doc/{task}/{n}")).collect();
            let values = kv.get_many(&keys).await.unwrap();
            for (n, value) in (1..=last).zip(values) {
                assert_eq!(
                    value.as_deref(),
                    Some(&doc_value(task, n)[..]),
                    "task {task}: acknowledged doc {n} lost"
                );
            }
        }
        kv.close().await;
    });
}

#[test]
fn kill_9_keeps_acknowledged_writes_normal() {
    kill_9_keeps_acknowledged_writes("normal");
}

#[test]
fn kill_9_keeps_acknowledged_writes_full() {
    kill_9_keeps_acknowledged_writes("full");
}
