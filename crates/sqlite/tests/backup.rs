//! Online backups: taken while writers run, a backup holds every write
//! acknowledged before it started and is one consistent moment of the
//! store; it never replaces a file and never leaves a partial one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use edgesync_core::Kv;
use edgesync_sqlite::{BackupError, SqliteKv, SqliteOptions};

const WRITERS: u64 = 4;

fn key(writer: u64, n: u64) -> String {
    format!("w{writer}/{n:06}")
}

/// How many consecutive keys `w{writer}/0…` the store holds.
async fn prefix_len(kv: &SqliteKv, writer: u64) -> u64 {
    let mut n = 0;
    while kv.get(&key(writer, n)).await.unwrap().is_some() {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_is_one_consistent_moment() {
    let dir = tempfile::tempdir().unwrap();
    let kv =
        Arc::new(SqliteKv::open(dir.path().join("kv.sqlite3"), SqliteOptions::default()).unwrap());
    // Each writer writes its keys in order, one after the other's
    // acknowledgement, and counts the acknowledged ones.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (kv, acked, stop) = (Arc::clone(&kv), Arc::clone(&acked), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            // Bounded, so that a failing test cannot fill the disk.
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                kv.set(&key(w, n), &[7u8; 512]).await.unwrap();
                n += 1;
                acked[w as usize].store(n, Ordering::Release);
            }
        }));
    }
    while acked.iter().any(|a| a.load(Ordering::Acquire) < 200) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
    let dest = dir.path().join("backup.sqlite3");
    let size = {
        let (kv, dest) = (Arc::clone(&kv), dest.clone());
        tokio::task::spawn_blocking(move || kv.backup_to(&dest))
            .await
            .unwrap()
            .unwrap()
    };
    let after: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    kv.close().await;

    assert_eq!(std::fs::metadata(&dest).unwrap().len(), size);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup is readable by its owner only");
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup"))
        .collect();
    assert_eq!(
        names,
        ["backup.sqlite3"],
        "no WAL, no partial file beside it"
    );

    let copy = SqliteKv::open(&dest, SqliteOptions::default()).unwrap();
    for w in 0..WRITERS {
        // Every acknowledged write before the backup is in it; what it
        // holds of the writes racing it is a prefix (no write without the
        // ones acknowledged before it): one moment of the store.
        let held = prefix_len(&copy, w).await;
        assert!(
            (before[w as usize]..=after[w as usize] + 1).contains(&held),
            "writer {w}: {held} keys, acknowledged {} before and {} after the backup",
            before[w as usize],
            after[w as usize]
        );
        assert!(
            copy.get(&key(w, held + 1)).await.unwrap().is_none(),
            "a gap"
        );
    }
    copy.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_never_replaces_a_file_and_needs_an_open_store() {
    let dir = tempfile::tempdir().unwrap();
    let kv = SqliteKv::open(dir.path().join("kv.sqlite3"), SqliteOptions::default()).unwrap();
    let count = kv.commit_count();
    kv.set("a", b"1").await.unwrap();
    assert!(kv.commit_count() > count, "a write is a commit");
    let count = kv.commit_count();
    kv.get("a").await.unwrap();
    assert_eq!(kv.commit_count(), count, "a read is not");

    let dest = dir.path().join("taken.sqlite3");
    std::fs::write(&dest, b"precious").unwrap();
    let err = tokio::task::block_in_place(|| kv.backup_to(&dest)).unwrap_err();
    assert!(matches!(err, BackupError::Exists(_)), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"precious");

    kv.close().await;
    let dest = dir.path().join("after-close.sqlite3");
    let err = tokio::task::block_in_place(|| kv.backup_to(&dest)).unwrap_err();
    assert!(matches!(err, BackupError::Closed), "{err}");
    assert!(!dest.exists());
    let mut partial = dest.into_os_string();
    partial.push(".partial");
    assert!(!std::path::Path::new(&partial).exists());
}

/// A store left by a crash: `key` committed only in its WAL.
fn crash_with_wal_only_write(path: &std::path::Path, key: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    conn.execute("INSERT INTO kv (k, v) VALUES (?1, x'31')", [key])
        .unwrap();
    drop(conn);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(
        std::path::Path::new(&wal).exists(),
        "the write is in the WAL"
    );
}

/// A store in `dir` holding `before`, still open, and a backup of it:
/// (store, its path, the backup's path).
async fn store_with_backup(
    dir: &std::path::Path,
) -> (SqliteKv, std::path::PathBuf, std::path::PathBuf) {
    let path = dir.join("kv.sqlite3");
    let backup = dir.join("backup.sqlite3");
    let kv = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    kv.set("before", b"1").await.unwrap();
    tokio::task::block_in_place(|| kv.backup_to(&backup)).unwrap();
    (kv, path, backup)
}

/// Restoring puts the backup's moment in place — not the writes made since,
/// not a WAL the old store left behind — and keeps the old store, whole,
/// under another name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_replaces_the_store_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, path, backup) = store_with_backup(dir.path()).await;
    kv.set("after", b"2").await.unwrap();

    // Not while the store is open.
    let err = edgesync_sqlite::restore(&backup, &path).unwrap_err();
    assert!(
        matches!(err, edgesync_sqlite::RestoreError::Store(_)),
        "{err}"
    );
    kv.close().await;
    drop(kv);
    crash_with_wal_only_write(&path, "crashed");

    let restored = edgesync_sqlite::restore(&backup, &path).unwrap();
    assert_eq!(restored.bytes, std::fs::metadata(&path).unwrap().len());
    let old = restored.replaced.expect("the old store is kept");
    let kv = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    assert!(kv.get("before").await.unwrap().is_some());
    assert_eq!(kv.get("after").await.unwrap(), None);
    assert_eq!(
        kv.get("crashed").await.unwrap(),
        None,
        "the old WAL was applied"
    );
    kv.close().await;
    let kv = SqliteKv::open(&old, SqliteOptions::default()).unwrap();
    for key in ["before", "after", "crashed"] {
        assert!(
            kv.get(key).await.unwrap().is_some(),
            "{key} lost from the old store"
        );
    }
    kv.close().await;
    assert!(backup.exists(), "the backup itself is only read");
}

/// Restored by root (`sudo edgesync restore`), the store still belongs to
/// the user who owned the one it replaced, so the server can open it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_keeps_the_store_s_owner() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (kv, path, backup) = store_with_backup(dir.path()).await;
    kv.close().await;
    drop(kv);
    let (uid, gid) = (4321, 4322);
    if let Err(e) = std::os::unix::fs::chown(&path, Some(uid), Some(gid)) {
        // Only root can give files away; CI runs the tests as root.
        eprintln!("skipped: cannot chown here ({e})");
        return;
    }
    edgesync_sqlite::restore(&backup, &path).unwrap();
    let restored = std::fs::metadata(&path).unwrap();
    assert_eq!((restored.uid(), restored.gid()), (uid, gid));

    // Onto a data directory with no store yet (a new host): the store and
    // the lock file the restore made are the directory owner's, so that
    // the server, running as that user, can open both.
    let empty = dir.path().join("new-host");
    std::fs::create_dir(&empty).unwrap();
    std::os::unix::fs::chown(&empty, Some(uid), Some(gid)).unwrap();
    let path = empty.join("kv.sqlite3");
    edgesync_sqlite::restore(&backup, &path).unwrap();
    for made in [path.clone(), empty.join("kv.sqlite3.lock")] {
        let meta = std::fs::metadata(&made).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", made.display());
    }
}

/// Anything but an edgesync backup is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_what_is_not_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.sqlite3");
    let kv = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    kv.set("mine", b"1").await.unwrap();
    kv.close().await;
    drop(kv);

    let garbage = dir.path().join("notes.txt");
    std::fs::write(
        &garbage,
        "not a database, but long enough to look at".repeat(50),
    )
    .unwrap();
    let other = dir.path().join("other.sqlite3");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    for not_a_backup in [&garbage, &other] {
        let err = edgesync_sqlite::restore(not_a_backup, &path).unwrap_err();
        assert!(
            matches!(err, edgesync_sqlite::RestoreError::NotABackup { .. }),
            "{err}"
        );
    }
    // A missing backup is named as such, not as the store it would replace.
    let missing = dir.path().join("missing");
    let err = edgesync_sqlite::restore(&missing, &path).unwrap_err();
    assert!(
        matches!(&err, edgesync_sqlite::RestoreError::Unreadable { path, .. } if *path == missing),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("cannot read the backup {}", missing.display())
    );

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kv."))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["kv.sqlite3", "kv.sqlite3.lock"],
        "nothing left behind"
    );
    let kv = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    assert!(kv.get("mine").await.unwrap().is_some());
    kv.close().await;
}

/// A WAL whose database is gone (moved away by hand after a crash, say)
/// must not stay beside the restored store: SQLite would apply it there.
/// It is kept aside, not deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_sets_aside_a_wal_whose_database_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, path, backup) = store_with_backup(dir.path()).await;
    kv.close().await;
    drop(kv);
    // The old store, crashed with a write only in its WAL...
    crash_with_wal_only_write(&path, "crashed");
    // ...moved away by the operator, leaving its WAL behind.
    std::fs::rename(&path, dir.path().join("moved-away.sqlite3")).unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    let old_wal = std::fs::read(&wal).unwrap();

    let restored = edgesync_sqlite::restore(&backup, &path).unwrap();
    assert_eq!(restored.replaced, None);
    let aside = restored.orphaned_wal.expect("the orphaned WAL is reported");
    assert_eq!(std::fs::read(&aside).unwrap(), old_wal, "kept whole");
    assert!(
        !wal.exists(),
        "an old WAL was left beside the restored store"
    );
    let kv = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    assert!(kv.get("before").await.unwrap().is_some());
    assert_eq!(
        kv.get("crashed").await.unwrap(),
        None,
        "the old WAL was applied to the restored store"
    );
    kv.close().await;
}
