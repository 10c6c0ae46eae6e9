//! Scheduled online backups of the embedded store.
//!
//! The SQLite file is the server process's own while it runs, so it cannot
//! be copied from outside; with a backup directory configured the server
//! copies it itself ([`edgesync_sqlite::SqliteKv::backup_to`]) every
//! interval, into `edgesync-<UTC time>.sqlite3` files, and keeps the newest
//! few. The schedule survives restarts: the next backup is due one interval
//! after the newest file in the directory. An interval in which nothing
//! was committed writes nothing, so the files kept are distinct moments.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::EdgeService;

/// Backup file names: `edgesync-2026-12-07T07-30-00.123Z.sqlite3`, which
/// sort by time.
const PREFIX: &str = "edgesync-";
const SUFFIX: &str = ".sqlite3";

/// How soon a failed backup is tried again (at most; never later than the
/// next scheduled one).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where and how often to back up (`EDGESYNC_BACKUP_DIR`,
/// `EDGESYNC_BACKUP_INTERVAL_SECONDS`, `EDGESYNC_BACKUP_KEEP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOptions {
    /// Directory of the backup files (created, private, if missing).
    pub dir: PathBuf,
    /// Time between backups.
    pub interval: Duration,
    /// How many backup files to keep (the newest); at least 1.
    pub keep: usize,
}

/// The file name of a backup taken at `now`.
fn file_name(now: SystemTime) -> String {
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // Colons are not allowed in file names everywhere.
    let stamp = edgesync_core::rfc3339_millis(millis).replace(':', "-");
    format!("{PREFIX}{stamp}{SUFFIX}")
}

fn is_backup_name(name: &str) -> bool {
    name.len() == file_name(UNIX_EPOCH).len() && name.starts_with(PREFIX) && name.ends_with(SUFFIX)
}

/// The backup files in `dir`, oldest first.
fn backups(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_backup_name))
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found)
}

/// Delete all but the newest `keep` backup files, `written` (the one just
/// taken) always among those kept: files named later than it (taken while
/// the clock was ahead) must not make each new backup the first to go.
/// Returns how many went, and how many are named later than `written`.
fn prune(dir: &Path, keep: usize, written: &Path) -> std::io::Result<(usize, usize)> {
    let others: Vec<PathBuf> = backups(dir)?.into_iter().filter(|p| p != written).collect();
    let excess = others.len().saturating_sub(keep.max(1) - 1);
    for old in &others[..excess] {
        std::fs::remove_file(old)?;
    }
    let later = others[excess..]
        .iter()
        .filter(|p| p.as_path() > written)
        .count();
    Ok((excess, later))
}

/// When the first backup is due: one interval after the newest one there
/// is, or now.
fn first_due(dir: &Path, interval: Duration) -> Instant {
    let now = Instant::now();
    let newest_age = backups(dir)
        .ok()
        .and_then(|found| found.last().cloned())
        .and_then(|newest| std::fs::metadata(newest).ok()?.modified().ok())
        .and_then(|modified| SystemTime::now().duration_since(modified).ok());
    match newest_age {
        Some(age) => now + interval.saturating_sub(age),
        None => now,
    }
}

/// Create the backup directory and check that it can be written, and
/// hard links made in it (how a finished copy is put in place; not every
/// file system has them), so that a wrong setting stops the start rather
/// than every backup.
pub(crate) fn prepare(options: &BackupOptions) -> std::io::Result<()> {
    crate::settings::ensure_data_dir(&options.dir)?;
    let probe = options
        .dir
        .join(format!(".edgesync-probe-{}", std::process::id()));
    let link = options
        .dir
        .join(format!(".edgesync-probe-{}-link", std::process::id()));
    std::fs::write(&probe, b"")?;
    let linked = std::fs::hard_link(&probe, &link);
    let _ = std::fs::remove_file(&link);
    std::fs::remove_file(&probe)?;
    linked.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot make hard links there (needed to put finished backups in place): {e}"),
        )
    })?;
    // Partial copies left by a crash are garbage.
    for entry in std::fs::read_dir(&options.dir)?.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name.strip_suffix(".partial") {
            if is_backup_name(base) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// Back up on schedule until `stop` turns true. A backup in progress is
/// interrupted by closing the store, not by `stop`.
pub(crate) async fn run(
    service: Arc<EdgeService>,
    options: BackupOptions,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(
        dir = %options.dir.display(),
        interval_secs = options.interval.as_secs(),
        keep = options.keep,
        "backups of the store are on"
    );
    let mut due = first_due(&options.dir, options.interval);
    // Commit count at the last backup this process took.
    let mut backed_up_at: Option<u64> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let Some(kv) = service.kv().sqlite() else {
            return;
        };
        let commits = kv.commit_count();
        if backed_up_at == Some(commits) {
            due += options.interval;
            continue;
        }
        let dest = options.dir.join(file_name(SystemTime::now()));
        let started = Instant::now();
        let task = {
            let (service, dest) = (Arc::clone(&service), dest.clone());
            tokio::task::spawn_blocking(move || {
                service
                    .kv()
                    .sqlite()
                    .map_or(Err(edgesync_sqlite::BackupError::Closed), |kv| {
                        kv.backup_to(&dest)
                    })
            })
        };
        match task.await {
            Ok(Ok(bytes)) => {
                backed_up_at = Some(commits);
                due = Instant::now() + options.interval;
                let pruned = match prune(&options.dir, options.keep, &dest) {
                    Ok((pruned, 0)) => pruned,
                    Ok((pruned, later)) => {
                        tracing::warn!(
                            dir = %options.dir.display(),
                            later,
                            "backup files named after now are kept until removed by hand \
                             (taken while the clock was ahead?)"
                        );
                        pruned
                    }
                    Err(e) => {
                        tracing::warn!(dir = %options.dir.display(), error = %e, "cannot remove old backups");
                        0
                    }
                };
                tracing::info!(
                    path = %dest.display(),
                    bytes,
                    duration_ms = started.elapsed().as_millis() as u64,
                    pruned,
                    "backup written"
                );
            }
            Ok(Err(edgesync_sqlite::BackupError::Closed)) => return,
            Ok(Err(e)) => {
                tracing::warn!(error = %with_causes(&e), "backup failed; trying again");
                due = Instant::now() + options.interval.min(RETRY_AFTER);
            }
            Err(e) => {
                tracing::warn!(error = %e, "backup task failed; trying again");
                due = Instant::now() + options.interval.min(RETRY_AFTER);
            }
        }
    }
}

/// `e` and its causes, `: `-separated: error messages leave their cause
/// to the source chain, and a log line must carry it.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_errors_carry_their_causes_once() {
        let e = edgesync_sqlite::BackupError::Io {
            path: "/b/x.sqlite3".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(with_causes(&e), "cannot back up to /b/x.sqlite3: disk full");
    }

    #[test]
    fn names_sort_by_time_and_are_recognised() {
        let a = file_name(UNIX_EPOCH + Duration::from_millis(1_765_092_600_123));
        let b = file_name(UNIX_EPOCH + Duration::from_millis(1_765_092_601_000));
        assert_eq!(a, "edgesync-2025-12-07T07-30-00.123Z.sqlite3");
        assert!(a < b);
        assert!(is_backup_name(&a));
        for other in [
            "edgesync.sqlite3",
            "edgesync-notes.sqlite3",
            "jwt_secret",
            &format!("{a}.partial"),
        ] {
            assert!(!is_backup_name(other), "{other}");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_touches_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..5)
            .map(|i| file_name(UNIX_EPOCH + Duration::from_secs(1_765_000_000 + i)))
            .collect();
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let newest = dir.path().join(&names[4]);
        assert_eq!(prune(dir.path(), 2, &newest).unwrap(), (3, 0));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [names[3].clone(), names[4].clone(), "notes.txt".into()]
        );
    }

    /// Files named in the future (the clock was once ahead) sort as the
    /// newest: the backup just taken is kept all the same.
    #[test]
    fn pruning_never_deletes_the_backup_just_taken() {
        let dir = tempfile::tempdir().unwrap();
        let year = Duration::from_secs(365 * 24 * 3600);
        for i in 0..3 {
            let ahead = SystemTime::now() + year + Duration::from_secs(i);
            std::fs::write(dir.path().join(file_name(ahead)), b"x").unwrap();
        }
        let written = dir.path().join(file_name(SystemTime::now()));
        std::fs::write(&written, b"x").unwrap();
        assert_eq!(prune(dir.path(), 3, &written).unwrap(), (1, 2));
        assert!(written.exists());
        assert_eq!(backups(dir.path()).unwrap().len(), 3);
        assert_eq!(prune(dir.path(), 1, &written).unwrap(), (2, 0));
        assert_eq!(backups(dir.path()).unwrap(), [written]);
    }

    #[test]
    fn the_schedule_continues_from_the_newest_backup() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        assert!(
            first_due(dir.path(), hour) <= Instant::now(),
            "none yet: now"
        );
        std::fs::write(dir.path().join(file_name(SystemTime::now())), b"x").unwrap();
        let due = first_due(dir.path(), hour);
        assert!(
            due > Instant::now() + hour - Duration::from_secs(60),
            "fresh one: an hour on"
        );
    }
}
