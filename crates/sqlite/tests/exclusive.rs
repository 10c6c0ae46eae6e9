//! While a store is open, its file belongs to it: another process opening
//! the database with plain SQLite is told the database is locked (the
//! store's connections share their WAL index in memory, so an outsider
//! could not follow it safely), also after the store's readers have taken
//! and released their own locks. Once the store is closed and dropped, the
//! file is an ordinary SQLite database holding every committed write.
//!
//! The outsider is this test binary re-run as a child (the ignored
//! `outsider` test): a separate process, as POSIX locks only exclude
//! other processes.

use std::process::Command;

use edgesync_core::Kv;
use edgesync_sqlite::{SqliteKv, SqliteOptions};
use rusqlite::{Connection, OpenFlags};

const DB_ENV: &str = "EDGESYNC_SQLITE_OUTSIDER_DB";

#[test]
#[ignore = "helper process for an_outside_process_cannot_use_an_open_store"]
fn outsider() {
    let db = std::env::var(DB_ENV).expect("run by an_outside_process_cannot_use_an_open_store");
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(std::time::Duration::ZERO).unwrap();
    match conn.query_row("SELECT v FROM kv WHERE k = 'k'", [], |row| {
        row.get::<_, Vec<u8>>(0)
    }) {
        // On lines of their own: the test harness prints around them.
        Ok(v) => println!("\nREAD {}", String::from_utf8_lossy(&v)),
        Err(e) => println!("\nERROR {e}"),
    }
}

/// What the outsider process saw.
fn outsider_reads(db: &std::path::Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "outsider",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DB_ENV, db)
        .output()
        .unwrap();
    assert!(out.status.success(), "outsider failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.starts_with("READ ") || l.starts_with("ERROR "))
        .unwrap_or_else(|| panic!("outsider printed no result: {stdout}"))
        .to_owned()
}

#[test]
fn an_outside_process_cannot_use_an_open_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kv.sqlite3");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The cache off: every read below opens and ends a read transaction.
    let options = SqliteOptions {
        read_cache_bytes: 0,
        ..SqliteOptions::default()
    };
    let kv = std::sync::Arc::new(SqliteKv::open(&db, options).unwrap());
    // On the runtime's workers, not this thread: a thread keeps its inline
    // reader connection (and with it the process's lock) until it exits.
    let store = kv.clone();
    rt.block_on(rt.spawn(async move {
        store.set("k", b"committed").await.unwrap();
        for _ in 0..3 {
            let v = store.get("k").await.unwrap();
            assert_eq!(v.as_deref(), Some(&b"committed"[..]));
            let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
            store.get_many(&keys).await.unwrap(); // through the reader pool
        }
    }))
    .unwrap();
    let seen = outsider_reads(&db);
    assert!(
        seen.starts_with("ERROR") && seen.contains("locked"),
        "an outside process read an open store: {seen}"
    );
    rt.block_on(rt.spawn(async move { kv.close().await }))
        .unwrap();
    drop(rt); // joins the workers
    assert_eq!(outsider_reads(&db), "READ committed");
}
