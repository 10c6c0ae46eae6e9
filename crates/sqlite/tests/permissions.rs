//! The store's files are private to their owner.

use edgesync_core::Kv;
use edgesync_sqlite::{SqliteKv, SqliteOptions};

/// The store's files hold every user's data: only their owner may read
/// them, even in a directory others can list and under a lax umask.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("kv.sqlite3");
    let kv = SqliteKv::open(&path, SqliteOptions::default()).unwrap();
    kv.set("a", b"1").await.unwrap();
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    for file in [path.as_os_str(), &wal] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file:?}");
    }
    kv.close().await;
}
