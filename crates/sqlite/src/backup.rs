//! Online backups (a consistent copy of the store, taken while it serves)
//! and restoring one.
//!
//! The store's file is the process's own while it is open (see the crate
//! docs), so no other process can copy it consistently; the copy has to be
//! made from inside. `VACUUM INTO` on a connection of our own reads one
//! snapshot (a WAL read transaction: every commit before it, none after)
//! and writes it compacted to a new file, without blocking the writer or
//! other readers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::{
    create_private, lock_store, open_conn, with_suffix, Access, OpenError, SqliteKv, SCHEMA_TABLE,
};

/// A backup could not be written. Nothing is left at the destination.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store was closed before or during the backup.
    #[error("the store is closed")]
    Closed,
    /// Another backup of this store is running.
    #[error("another backup of this store is running")]
    Busy,
    /// The destination exists already: backups never overwrite.
    #[error("{0} exists already")]
    Exists(PathBuf),
    /// SQLite could not read the store or write the copy.
    #[error("cannot back up to {path}")]
    Sqlite {
        /// The destination.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The copy could not be made durable or put in place.
    #[error("cannot back up to {path}")]
    Io {
        /// The destination.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

impl SqliteKv {
    /// Write a consistent copy of the store to `dest`, a new file: every
    /// write acknowledged before the call is in it, and nothing half-done.
    /// The copy is a self-contained SQLite database (no WAL beside it),
    /// `fsync`ed and then linked into place, so `dest` either does not
    /// exist or is complete. Returns its size in bytes.
    ///
    /// Blocks for as long as copying takes (about as long as reading the
    /// whole database): call it from a thread that may block. Writes and
    /// reads go on meanwhile. [`SqliteKv::close`] interrupts it.
    pub fn backup_to(&self, dest: &Path) -> Result<u64, BackupError> {
        let state = &self.state;
        if dest.exists() {
            return Err(BackupError::Exists(dest.to_path_buf()));
        }
        if state
            .backup_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(BackupError::Busy);
        }
        let partial = with_suffix(dest, ".partial");
        let result = self.copy_into(&partial, dest);
        *state
            .backup_interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        state.backup_running.store(false, Ordering::Release);
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    fn copy_into(&self, partial: &Path, dest: &Path) -> Result<u64, BackupError> {
        let state = &self.state;
        let sqlite = |source| BackupError::Sqlite {
            path: dest.to_path_buf(),
            source,
        };
        let io = |source| BackupError::Io {
            path: dest.to_path_buf(),
            source,
        };
        // A partial file left by a crash would make VACUUM INTO refuse.
        match std::fs::remove_file(partial) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        // VACUUM INTO fills an empty file it is given.
        create_private(partial).map_err(io)?;
        // A connection of the store's own kind: it shares the process's
        // exclusive lock instead of being refused by it. Not a reader:
        // `query_only` refuses VACUUM INTO, though it writes only the copy.
        let conn = open_conn(&state.path, Access::Write).map_err(sqlite)?;
        *state
            .backup_interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(conn.get_interrupt_handle());
        // Checked after the handle is published: a close from now on
        // interrupts the copy, one before it is seen here.
        if state.closed.load(Ordering::Acquire) {
            return Err(BackupError::Closed);
        }
        let target = partial.to_str().ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the backup path is not valid UTF-8",
            ))
        })?;
        conn.execute("VACUUM INTO ?1", [target]).map_err(|e| {
            if state.closed.load(Ordering::Acquire) {
                BackupError::Closed
            } else {
                sqlite(e)
            }
        })?;
        drop(conn);
        let file = File::open(partial).map_err(io)?;
        file.sync_all().map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        drop(file);
        // Never replace a file that appeared meanwhile (hard_link fails if
        // `dest` exists, unlike rename).
        std::fs::hard_link(partial, dest).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(dest.to_path_buf())
            } else {
                io(e)
            }
        })?;
        let _ = std::fs::remove_file(partial);
        sync_parent(dest).map_err(io)?;
        Ok(size)
    }

    /// Counts the store's commits since it was opened: equal counts mean
    /// nothing was written in between (so an unchanged store need not be
    /// backed up again).
    pub fn commit_count(&self) -> u64 {
        self.state.commits.load(Ordering::Acquire)
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Make a new directory entry durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir_of(path))?.sync_all()?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Size of the restored store in bytes.
    pub bytes: u64,
    /// Where the store that was replaced went (with its WAL, so it is
    /// still a whole database), if there was one.
    pub replaced: Option<PathBuf>,
    /// Where a WAL found without its database went (SQLite would have
    /// applied it to the restored store), if there was one.
    pub orphaned_wal: Option<PathBuf>,
}

/// A backup could not be restored. The store at the destination is as it
/// was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file is not a backup of an edgesync store.
    #[error("{path} is not an edgesync backup: {why}")]
    NotABackup {
        /// The file given as the backup.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The backup could not be opened for reading.
    #[error("cannot read the backup {path}")]
    Unreadable {
        /// The file given as the backup.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The destination is in use by a store (a running server) or cannot
    /// be locked.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// Copying or moving files failed.
    #[error("cannot restore to {path}")]
    Io {
        /// The store's path.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// Make the backup at `backup` the store at `path`, while no store has
/// `path` open (a running server is refused by the lock it holds). The
/// backup is copied, checked (a whole SQLite database holding edgesync's
/// table) and only then put in place; the store it replaces is kept as
/// `<path>.replaced-<unix ms>` (its WAL folded in first), never deleted.
/// `backup` itself is only read.
pub fn restore(backup: &Path, path: &Path) -> Result<Restored, RestoreError> {
    let io = |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut from = File::open(backup).map_err(|source| RestoreError::Unreadable {
        path: backup.to_path_buf(),
        source,
    })?;
    let _lock = lock_store(path)?;
    // A lock file this run created (restoring onto an empty data
    // directory, as root) must be the server's to open, like the store.
    take_owner(&with_suffix(path, ".lock"), path).map_err(io)?;
    let partial = with_suffix(path, ".restore.partial");
    let _ = std::fs::remove_file(&partial);
    let copied = (|| {
        create_private(&partial)?;
        let mut to = std::fs::OpenOptions::new().write(true).open(&partial)?;
        let bytes = std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        Ok(bytes)
    })();
    let bytes = match copied {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(io(e));
        }
    };
    if let Err(why) = check_backup(&partial) {
        for leftover in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(with_suffix(&partial, leftover));
        }
        return Err(RestoreError::NotABackup {
            path: backup.to_path_buf(),
            why,
        });
    }
    if let Err(e) = take_owner(&partial, path) {
        let _ = std::fs::remove_file(&partial);
        return Err(io(e));
    }
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let replaced = if path.exists() {
        let aside = with_suffix(path, &format!(".replaced-{millis}"));
        // Fold the old store's WAL into its file, so that the file alone is
        // the whole old store and no WAL stays beside the new one (SQLite
        // would apply it to the wrong database). A store too broken to
        // open keeps its WAL beside its new name instead.
        let wal = with_suffix(path, "-wal");
        let _ = checkpoint(path);
        if wal.exists() {
            std::fs::rename(&wal, with_suffix(&aside, "-wal")).map_err(io)?;
        }
        // A second name first, then the new store replaces the old in one
        // rename: a crash leaves one whole store at `path`, old or new.
        std::fs::hard_link(path, &aside).map_err(io)?;
        Some(aside)
    } else {
        None
    };
    // A WAL whose database is gone (moved away by hand after a crash, say)
    // would be applied to the restored one: keep it aside instead.
    let wal = with_suffix(path, "-wal");
    let orphaned_wal = if wal.exists() {
        let aside = with_suffix(path, &format!(".orphaned-wal-{millis}"));
        std::fs::rename(&wal, &aside).map_err(io)?;
        Some(aside)
    } else {
        None
    };
    // A shared-memory index left by another tool describes the old WAL.
    let _ = std::fs::remove_file(with_suffix(path, "-shm"));
    std::fs::rename(&partial, path).map_err(io)?;
    sync_parent(path).map_err(io)?;
    Ok(Restored {
        bytes,
        replaced,
        orphaned_wal,
    })
}

/// Give `copy` the owner of the store it is to replace (or of the store's
/// directory, if there is no store yet): a restore run as root must not
/// leave the server's own user a store it cannot open.
#[cfg(unix)]
fn take_owner(copy: &Path, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(path).or_else(|_| std::fs::metadata(dir_of(path)))?;
    let mine = std::fs::metadata(copy)?;
    if (mine.uid(), mine.gid()) == (owner.uid(), owner.gid()) {
        return Ok(());
    }
    std::os::unix::fs::chown(copy, Some(owner.uid()), Some(owner.gid()))
}

#[cfg(not(unix))]
fn take_owner(_: &Path, _: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Copy `path`'s WAL into the database file and remove it (SQLite deletes
/// the WAL when the last connection closes after a complete checkpoint).
fn checkpoint(path: &Path) -> rusqlite::Result<()> {
    let conn = open_existing(path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.close().map_err(|(_, e)| e)
}

/// A plain connection to a database file that must exist already (no
/// store around it: restoring works on files no store has open).
fn open_existing(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// A copy of a backup is a whole SQLite database with edgesync's table.
fn check_backup(copy: &Path) -> Result<(), String> {
    let conn = open_existing(copy).map_err(|e| e.to_string())?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("SQLite's quick_check says {check:?}"));
    }
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [SCHEMA_TABLE],
            |row| row.get(0),
        )
        .map_err(|e| e.to_string())?;
    if tables != 1 {
        return Err(format!("it has no `{SCHEMA_TABLE}` table"));
    }
    Ok(())
}
