//! Online backups: a consistent copy of the store, taken while it serves.
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

use crate::{create_private, open_conn, Access, SqliteKv};

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
    #[error("cannot back up to {path}: {source}")]
    Sqlite {
        /// The destination.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The copy could not be made durable or put in place.
    #[error("cannot back up to {path}: {source}")]
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
    /// `fsync`ed and then renamed into place, so `dest` either does not
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
        let mut partial = dest.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
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

/// Make a new directory entry durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
