//! `edgesync restore`: put a backup (see `EDGESYNC_BACKUP_DIR`) in place as
//! the data directory's SQLite store, while the server is stopped.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use edgesync_server::{settings, SQLITE_FILE};

/// Which backup, and where to.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (an `edgesync-<time>.sqlite3` from the backup
    /// directory).
    pub backup: PathBuf,
    /// The data directory of the (stopped) server.
    #[arg(long, env = "EDGESYNC_DATA_DIR", default_value = settings::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

pub fn run(args: RestoreArgs) -> anyhow::Result<()> {
    // A mistyped backup path must not leave a new, empty data directory.
    std::fs::File::open(&args.backup)
        .with_context(|| format!("cannot read the backup {}", args.backup.display()))?;
    settings::ensure_data_dir(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let store = args.data_dir.join(SQLITE_FILE);
    let restored = edgesync_sqlite::restore(&args.backup, &store).map_err(|e| match e {
        edgesync_sqlite::RestoreError::Store(edgesync_sqlite::OpenError::InUse { .. }) => {
            anyhow::anyhow!("{e}: stop the server first")
        }
        e => e.into(),
    })?;
    eprintln!(
        "edgesync: restored {} into {} ({} bytes)",
        args.backup.display(),
        store.display(),
        restored.bytes
    );
    if let Some(old) = restored.replaced {
        eprintln!(
            "edgesync: the store it replaced is kept as {} (delete it when satisfied)",
            old.display()
        );
    }
    if let Some(wal) = restored.orphaned_wal {
        eprintln!(
            "edgesync: a write-ahead log without its database was there; it is kept as {} \
             (SQLite would have applied it to the restored store)",
            wal.display()
        );
    }
    eprintln!(
        "edgesync: writes made after the backup are not in it; clients that saw them hold \
         cursors past the restored logs (see README, Durability)"
    );
    Ok(())
}
