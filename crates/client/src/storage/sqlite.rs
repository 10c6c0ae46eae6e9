use super::{
    open_private, Commit, CommitResult, Meta, QueueCounts, Storage, StorageError, WriteOutcome,
};
use crate::model::{Mutation, Op, ParkReason, ParkedMutation, PendingMutation, StoredDoc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
-- value NULL is a tombstone; JSON null is stored as the text 'null'.
CREATE TABLE IF NOT EXISTS docs (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    value      TEXT,
    updated_at TEXT,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
-- AUTOINCREMENT: a queue position is never reused, even after deletions.
CREATE TABLE IF NOT EXISTS queue (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL UNIQUE,
    op          TEXT NOT NULL,
    collection  TEXT NOT NULL,
    doc         TEXT NOT NULL,
    value       TEXT,
    if_version  INTEGER,
    enqueued_at INTEGER NOT NULL,
    parked      TEXT
);
";

/// The durable replica: one SQLite database file (WAL mode,
/// `synchronous=FULL`, so a commit that returned survives power loss).
/// Several processes may open the same file; SQLite serialises their
/// transactions (each waits up to 5 s for the others), and the lock of
/// `<path>.queue-lock` their sending of the queue
/// ([`Storage::queue_lock_file`]).
#[derive(Debug)]
pub struct SqliteStorage {
    conn: Mutex<Connection>,
    queue_lock: Option<PathBuf>,
}

/// How long a statement waits for another process's transaction on the
/// same replica.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn to_i64(v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::Corrupt(format!("number {v} is out of range")))
}

fn to_u64(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("negative number {v}")))
}

fn json_text(v: &serde_json::Value) -> String {
    v.to_string()
}

fn parse_json(text: &str) -> Result<serde_json::Value, StorageError> {
    serde_json::from_str(text).map_err(|e| StorageError::Corrupt(e.to_string()))
}

impl SqliteStorage {
    /// Open (creating if needed) the replica at `path`. Parent directories
    /// are created. What this creates is private to its owner (directories
    /// 0700, the file 0600, and so its WAL): a replica holds the user's
    /// documents and queued writes, whatever the umask says.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let mut dirs = std::fs::DirBuilder::new();
            dirs.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut dirs, 0o700);
            dirs.create(parent)?;
        }
        // SQLite would create the file readable by all: create it empty
        // first (SQLite takes an empty file as a new database).
        open_private(path)?;
        let conn = Connection::open(path)?;
        let mut lock = path.as_os_str().to_owned();
        lock.push(".queue-lock");
        Self::init(conn, Some(lock.into()))
    }

    /// A private in-memory SQLite database (for tests of the SQL itself).
    pub fn open_in_memory() -> Result<Self, StorageError> {
        Self::init(Connection::open_in_memory()?, None)
    }

    fn init(mut conn: Connection, queue_lock: Option<PathBuf>) -> Result<Self, StorageError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Another process may be opening (or creating) the same replica
        // right now. Switching the journal mode can fail with SQLITE_BUSY
        // without waiting for the busy handler, so it is retried; the
        // schema is written (only when missing) in an IMMEDIATE
        // transaction, which does wait; an up-to-date replica is only read.
        let started = Instant::now();
        loop {
            // journal_mode returns a row, so it cannot go through execute().
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Ok(_) => break,
                Err(e) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StorageError::Corrupt(format!(
                "replica schema version {version} is newer than this client ({SCHEMA_VERSION})"
            )));
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}"))?;
        }
        tx.commit()?;
        Ok(SqliteStorage {
            conn: Mutex::new(conn),
            queue_lock,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, StorageError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StorageError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn meta_u64(conn: &Connection, key: &str) -> Result<Option<u64>, StorageError> {
    get_meta(conn, key)?
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| StorageError::Corrupt(format!("meta {key} = {v:?}")))
        })
        .transpose()
}

fn read_meta(conn: &Connection) -> Result<Meta, StorageError> {
    Ok(Meta {
        replica_id: get_meta(conn, "replica_id")?,
        cursor: meta_u64(conn, "cursor")?,
        head: meta_u64(conn, "head")?,
        needs_resync: get_meta(conn, "needs_resync")?.as_deref() == Some("1"),
        server: get_meta(conn, "server")?,
        user: get_meta(conn, "user")?,
    })
}

type DocRow = (String, String, i64, Option<String>, Option<String>);

fn doc_from_row(row: &Row<'_>) -> rusqlite::Result<DocRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn stored_doc(
    (collection, id, version, value, updated_at): DocRow,
) -> Result<StoredDoc, StorageError> {
    Ok(StoredDoc {
        collection,
        id,
        version: to_u64(version)?,
        value: value.as_deref().map(parse_json).transpose()?,
        updated_at,
    })
}

type QueueRow = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    i64,
    Option<String>,
);

const QUEUE_COLUMNS: &str = "seq, key, op, collection, doc, value, if_version, enqueued_at, parked";

fn queue_from_row(row: &Row<'_>) -> rusqlite::Result<QueueRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
    ))
}

fn pending_mutation(row: QueueRow) -> Result<(PendingMutation, Option<ParkReason>), StorageError> {
    let (seq, key, op, collection, id, value, if_version, enqueued_at, parked) = row;
    let op = Op::parse(&op).ok_or_else(|| StorageError::Corrupt(format!("queued op {op:?}")))?;
    let pending = PendingMutation {
        seq: to_u64(seq)?,
        key,
        mutation: Mutation {
            op,
            collection,
            id,
            value: value.as_deref().map(parse_json).transpose()?,
            if_version: if_version.map(to_u64).transpose()?,
        },
        enqueued_at_ms: to_u64(enqueued_at)?,
    };
    let reason = parked
        .map(|p| serde_json::from_str(&p).map_err(|e| StorageError::Corrupt(e.to_string())))
        .transpose()?;
    Ok((pending, reason))
}

impl Storage for SqliteStorage {
    fn queue_lock_file(&self) -> Option<&Path> {
        self.queue_lock.as_deref()
    }

    fn meta(&self) -> Result<Meta, StorageError> {
        read_meta(&self.conn())
    }

    fn bind(&self, server: &str, user: Option<&str>) -> Result<Meta, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if get_meta(&tx, "server")?.is_none() {
            set_meta(&tx, "server", server)?;
        }
        if let (None, Some(user)) = (get_meta(&tx, "user")?, user) {
            set_meta(&tx, "user", user)?;
        }
        let meta = read_meta(&tx)?;
        tx.commit()?;
        Ok(meta)
    }

    fn init_replica_id(&self, candidate: &str) -> Result<String, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = match get_meta(&tx, "replica_id")? {
            Some(id) => id,
            None => {
                set_meta(&tx, "replica_id", candidate)?;
                candidate.to_string()
            }
        };
        tx.commit()?;
        Ok(id)
    }

    fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StorageError> {
        let conn = self.conn();
        conn.query_row(
            "SELECT collection, id, version, value, updated_at FROM docs
             WHERE collection = ?1 AND id = ?2",
            params![collection, id],
            doc_from_row,
        )
        .optional()?
        .map(stored_doc)
        .transpose()
    }

    fn list(&self, collection: Option<&str>) -> Result<Vec<StoredDoc>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT collection, id, version, value, updated_at FROM docs
             WHERE value IS NOT NULL AND (?1 IS NULL OR collection = ?1)
             ORDER BY collection, id",
        )?;
        let rows = stmt.query_map([collection], doc_from_row)?;
        rows.map(|r| stored_doc(r?)).collect()
    }

    fn commit(&self, commit: Commit) -> Result<CommitResult, StorageError> {
        let mut conn = self.conn();
        // IMMEDIATE: take the write lock up front, so the read-then-write of
        // the version check cannot interleave with another process.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(seq) = commit.unpark {
            // Dropping `tx` on the error rolls everything back.
            let removed = tx.execute(
                "DELETE FROM queue WHERE seq = ?1 AND parked IS NOT NULL",
                [to_i64(seq)?],
            )?;
            if removed == 0 {
                return Err(StorageError::NotParked(seq));
            }
        }
        let mut result = CommitResult::default();
        // The cursor before this commit: writes at or below it are already
        // reflected by the feed (see `DocWrite`).
        let cursor = meta_u64(&tx, "cursor")?;
        let new_cursor = commit.new_cursor(cursor);
        for w in commit.docs {
            let old: Option<(i64, bool)> = tx
                .query_row(
                    "SELECT version, value IS NOT NULL FROM docs
                     WHERE collection = ?1 AND id = ?2",
                    params![w.collection, w.id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let version = to_i64(w.version)?;
            let outcome = match old {
                Some((v, _)) if v > version => WriteOutcome::Superseded,
                Some((v, _)) if v == version => WriteOutcome::Same,
                _ if cursor.is_some_and(|c| w.version <= c) => WriteOutcome::BelowCursor,
                old => WriteOutcome::Applied {
                    was_live: old.is_some_and(|(_, live)| live),
                },
            };
            if matches!(outcome, WriteOutcome::Applied { .. }) {
                tx.execute(
                    "INSERT INTO docs (collection, id, version, value, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(collection, id) DO UPDATE SET
                        version = excluded.version, value = excluded.value,
                        updated_at = excluded.updated_at",
                    params![
                        w.collection,
                        w.id,
                        version,
                        w.value.as_ref().map(json_text),
                        w.updated_at
                    ],
                )?;
            }
            result.docs.push(outcome);
        }
        if let Some(cursor) = new_cursor {
            set_meta(&tx, "cursor", &cursor.to_string())?;
            tx.execute(
                "DELETE FROM docs WHERE value IS NULL AND version <= ?1",
                [to_i64(cursor)?],
            )?;
        }
        if let Some(h) = commit.head {
            set_meta(&tx, "head", &h.to_string())?;
        }
        if let Some(r) = commit.needs_resync {
            set_meta(&tx, "needs_resync", if r { "1" } else { "0" })?;
        }
        for seq in commit.remove {
            tx.execute("DELETE FROM queue WHERE seq = ?1", [to_i64(seq)?])?;
        }
        for (seq, reason) in commit.park {
            let reason =
                serde_json::to_string(&reason).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE queue SET parked = ?2 WHERE seq = ?1",
                params![to_i64(seq)?, reason],
            )?;
        }
        for m in commit.enqueue {
            let seq: i64 = tx.query_row(
                "INSERT INTO queue (key, op, collection, doc, value, if_version, enqueued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING seq",
                params![
                    m.key,
                    m.mutation.op.as_str(),
                    m.mutation.collection,
                    m.mutation.id,
                    m.mutation.value.as_ref().map(json_text),
                    m.mutation.if_version.map(to_i64).transpose()?,
                    to_i64(m.enqueued_at_ms)?
                ],
                |r| r.get(0),
            )?;
            result.enqueued.push(PendingMutation {
                seq: to_u64(seq)?,
                key: m.key,
                mutation: m.mutation,
                enqueued_at_ms: m.enqueued_at_ms,
            });
        }
        tx.commit()?;
        Ok(result)
    }

    fn replace_all(
        &self,
        docs: Vec<StoredDoc>,
        cursor: u64,
        head: u64,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM docs", [])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO docs (collection, id, version, value, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for d in docs {
                insert.execute(params![
                    d.collection,
                    d.id,
                    to_i64(d.version)?,
                    d.value.as_ref().map(json_text),
                    d.updated_at
                ])?;
            }
        }
        set_meta(&tx, "cursor", &cursor.to_string())?;
        set_meta(&tx, "head", &head.to_string())?;
        set_meta(&tx, "needs_resync", "0")?;
        tx.commit()?;
        Ok(())
    }

    fn pending(&self, limit: usize) -> Result<Vec<PendingMutation>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {QUEUE_COLUMNS} FROM queue WHERE parked IS NULL ORDER BY seq LIMIT ?1"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit], queue_from_row)?;
        rows.map(|r| pending_mutation(r?).map(|(p, _)| p)).collect()
    }

    fn parked(&self) -> Result<Vec<ParkedMutation>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {QUEUE_COLUMNS} FROM queue WHERE parked IS NOT NULL ORDER BY seq"
        ))?;
        let rows = stmt.query_map([], queue_from_row)?;
        let mut out = Vec::new();
        for r in rows {
            let (pending, reason) = pending_mutation(r?)?;
            if let Some(reason) = reason {
                out.push(ParkedMutation { pending, reason });
            }
        }
        Ok(out)
    }

    fn counts(&self) -> Result<QueueCounts, StorageError> {
        let conn = self.conn();
        let (pending, parked): (i64, i64) = conn.query_row(
            "SELECT COUNT(*) FILTER (WHERE parked IS NULL),
                    COUNT(*) FILTER (WHERE parked IS NOT NULL) FROM queue",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(QueueCounts {
            pending: to_u64(pending)?,
            parked: to_u64(parked)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance_in_memory() {
        super::super::conformance::run(&SqliteStorage::open_in_memory().unwrap());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("replica.db");
        {
            let s = SqliteStorage::open(&path).unwrap();
            super::super::conformance::run(&s);
        }
        let s = SqliteStorage::open(&path).unwrap();
        let meta = s.meta().unwrap();
        assert_eq!(meta.cursor, Some(3));
        assert_eq!(meta.replica_id.as_deref(), Some("r1"));
        assert_eq!(meta.user.as_deref(), Some("alice"));
        assert_eq!(s.counts().unwrap().pending, 2);
        assert_eq!(s.parked().unwrap().len(), 1);
        let journal: String = s
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[cfg(unix)]
    #[test]
    fn the_replica_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("replica.db");
        let s = SqliteStorage::open(&path).unwrap();
        super::super::conformance::run(&s);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            mode(&dir.path().join("state").join("replica.db-wal")),
            0o600
        );
    }
}
