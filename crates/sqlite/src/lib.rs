//! # edgesync-sqlite
//!
//! The native server's embedded store: edgesync's [`Kv`] trait on one SQLite
//! file in write-ahead-log mode.
//!
//! # Design
//!
//! * **One writer thread, group commit.** Every write (`set`, `delete_many`,
//!   `compare_and_swap`, `increment`) is sent to a dedicated thread that owns
//!   the only write connection. It takes whatever is queued (up to
//!   [`MAX_BATCH`] operations), runs it in **one** transaction and answers
//!   each caller only after `COMMIT` returned. Because one thread executes
//!   writes one after another, `compare_and_swap` and `increment` are atomic
//!   with respect to each other and to every other write, without locks. The
//!   batch grows by itself under load: while one commit is in progress the
//!   next callers queue up and are committed together.
//! * **Uncontended writes commit where they are asked for.** Handing a
//!   write to the writer thread and back costs two thread wake-ups, about
//!   ten times the commit itself (~50 µs against ~5 µs here). So when no
//!   write is queued for the writer thread and no commit is in progress, a
//!   write commits right on the calling thread, on the same connection
//!   (see [`SqliteOptions::inline_writes`]). Every commit, inline or on the
//!   writer thread, holds the connection's lock, so commits stay one after
//!   another; and while anything is queued for the thread, every write
//!   queues behind it, so group commit takes over under load and queued
//!   callers are never overtaken for long.
//! * **Reads where they are asked for.** A point read of a cached page
//!   takes a few microseconds, handing it to another thread and back tens
//!   (two context switches and a wake-up). So by default (see
//!   [`SqliteOptions::inline_reads`]) `get` and small `get_many` calls run
//!   right on the calling thread, on a read-only connection that thread
//!   keeps for this store (one per async runtime worker, in the server).
//!   Large `get_many` calls, and any read that would have to wait for a
//!   lock, go to a small pool of read-only connections on their own
//!   threads instead. In WAL mode a reader sees every transaction committed
//!   before its read began, so a read issued after an acknowledged write
//!   sees that write; readers never see a batch that has not committed.
//! * **A coherent read cache.** Small values recently read or written are
//!   kept in memory (see [`SqliteOptions::read_cache_bytes`]), so that hot
//!   keys (a user's change-log head, read by every poll) cost a hash
//!   lookup instead of SQLite's per-read locking. The writer invalidates a
//!   batch's keys before committing it and stores their new values after,
//!   so the cache never answers anything but the committed value. This
//!   relies on the store being the only writer of its file, which a lock
//!   file (`<file>.lock`) enforces: a second store on the same file, in
//!   this process or another, fails to open.
//! * **The file is the process's own while the store is open.** Every
//!   connection uses SQLite's `unix-excl` VFS (on Unix): one exclusive
//!   lock on the database file for the process, in-memory coordination
//!   between the store's connections and a WAL index on the heap. A
//!   transaction then makes no `fcntl` lock calls (there were ~9 per
//!   transaction: 37 per PUT, half of its system calls, by `strace -c`).
//!   Another process opening the file meanwhile, `sqlite3` included, is
//!   told the database is locked; stop the server to inspect or copy it.
//! * **Checkpoints off the write path.** Automatic checkpoints are off on
//!   the writer; a checkpointer thread copies the WAL back into the main
//!   file (`PASSIVE`, never blocking readers or the writer) a few times a
//!   second while there are writes, so the `fsync`s a checkpoint needs never
//!   stall a commit. Under sustained writes the WAL file may reach 256 MiB
//!   on disk (it is reused from its start, not shrunk, which is cheaper);
//!   it is emptied when the store closes.
//! * **Online backups.** [`SqliteKv::backup_to`] writes a consistent copy
//!   (`VACUUM INTO` on a snapshot) while the store serves: the only way to
//!   copy the file without stopping the process that holds it.
//!   [`restore`] puts one back while no store has the file open.
//! * **Nothing waits on the async runtime**: writes and pooled reads are
//!   awaited through a oneshot answer; inline reads never wait for a lock
//!   (they are handed to the pool when one is held).
//!
//! # Durability
//!
//! An operation is acknowledged (its future resolves `Ok`) only after the
//! transaction containing it committed. What a commit survives depends on
//! [`Synchronous`]:
//!
//! * [`Synchronous::Normal`] (default): a commit has been written to the WAL
//!   file (handed to the operating system) but not `fsync`ed. Acknowledged
//!   writes survive a crash or `kill -9` of the process, but the last
//!   commits before an operating-system crash or power loss may be lost
//!   (the database stays consistent: it rolls back to an earlier commit).
//! * [`Synchronous::Full`] (`EDGESYNC_SQLITE_SYNCHRONOUS=full` in the
//!   server): the WAL is `fsync`ed before every commit returns, so
//!   acknowledged writes also survive power loss, provided the disk honours
//!   flushes. Group commit amortises the `fsync` over every operation in the
//!   batch.
//!
//! I/O failures are reported as [`KvErrorKind::Unavailable`]; nothing on a
//! request path panics.

mod backup;
mod cache;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use edgesync_core::{Kv, KvError, KvErrorKind};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

pub use backup::{restore, BackupError, RestoreError, Restored};
use cache::{Final, ReadCache};

/// Most write operations committed in one transaction. Bounds how long the
/// first caller of a batch waits for the others.
pub const MAX_BATCH: usize = 512;

/// How long a connection waits for a lock held by another process on the
/// same file before reporting the store unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the checkpointer looks for committed writes to checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Most keys a `get_many` reads inline; larger batches (listing and
/// changes pages) go to the reader pool rather than hold up a runtime
/// thread.
const INLINE_MANY_MAX: usize = 16;

/// WAL size beyond which the checkpointer forces the log to start over.
/// Passive checkpoints alone cannot reset the log while readers overlap
/// without pause (SQLite's "checkpoint starvation"), and it would grow
/// without bound under sustained load.
const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Size the WAL file is truncated back to when the log starts over
/// (`journal_size_limit`); it is emptied on close. Well above
/// [`WAL_SIZE_LIMIT`], because under sustained writes the log outgrows that
/// between two checkpointer rounds (a PUT appends tens of KiB of pages), and
/// truncating it back each time made the kernel drop and re-allocate those
/// pages (over a quarter of a PUT's time, profiled in-process).
const WAL_FILE_LIMIT: u64 = 4 * WAL_SIZE_LIMIT;

/// SQLite's `synchronous` setting in WAL mode: what an acknowledged write
/// survives. See the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Survives a process crash (`kill -9`), not power loss. Default.
    #[default]
    Normal,
    /// Survives power loss too: `fsync` on every (group) commit.
    Full,
}

impl Synchronous {
    /// Parse `normal` or `full` (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "normal" => Some(Self::Normal),
            "full" => Some(Self::Full),
            _ => None,
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// How to open a [`SqliteKv`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability of acknowledged writes.
    pub synchronous: Synchronous,
    /// Number of pooled read connections (and reader threads); at least 1.
    pub readers: usize,
    /// Serve point reads on the calling thread (a read-only connection per
    /// thread) instead of the reader pool. Default `true`.
    pub inline_reads: bool,
    /// Memory for the read cache (keys and values of up to 4 KiB), in
    /// bytes; 0 turns it off. Default 16 MiB.
    pub read_cache_bytes: usize,
    /// Commit a write on the calling thread when no other write is queued
    /// or committing, instead of handing it to the writer thread. Default
    /// `true`. Only with [`Synchronous::Normal`]: under `Full` a commit
    /// waits for an `fsync`, which must not stall a caller's (async
    /// runtime) thread, so writes always go to the writer thread.
    pub inline_writes: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
            readers: 4,
            inline_reads: true,
            read_cache_bytes: 16 * 1024 * 1024,
            inline_writes: true,
        }
    }
}

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// SQLite could not open or set up the file.
    #[error("cannot open SQLite store {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file could not be created.
    #[error("cannot create SQLite store {path}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Another store (in this process or another) has the file open.
    #[error("SQLite store {path} is in use by another store (lock file {lock})")]
    InUse {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock SQLite store {path} (lock file {lock})")]
    Lock {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

enum WriteOp {
    Set(String, Vec<u8>),
    DeleteMany(Vec<String>),
    CompareAndSwap {
        key: String,
        current: Vec<u8>,
        new: Vec<u8>,
    },
    Increment(String, i64),
}

enum WriteResult {
    Unit,
    Swapped(bool),
    Counter(i64),
}

type Reply<T> = oneshot::Sender<Result<T, KvError>>;

enum WriterMsg {
    Op(WriteOp, Reply<WriteResult>),
    Close(oneshot::Sender<()>),
}

enum ReadOp {
    Get(String, Reply<Option<Vec<u8>>>),
    GetMany(Vec<String>, Reply<Vec<Option<Vec<u8>>>>),
    Close,
}

/// edgesync's [`Kv`] on a SQLite file. Cheap to share by reference; work
/// happens on the calling thread when that is cheap and never waits for a
/// lock, on the store's own threads otherwise.
pub struct SqliteKv {
    /// Shared with the writer thread and (as identity) with the per-thread
    /// inline readers.
    state: Arc<StoreState>,
    writer: mpsc::Sender<WriterMsg>,
    checkpointer: Mutex<Option<mpsc::Sender<()>>>,
    readers: mpsc::Sender<ReadOp>,
    reader_count: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKv")
            .field("path", &self.path)
            .finish()
    }
}

/// The one table of a store.
const SCHEMA_TABLE: &str = "kv";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS kv (
    k TEXT PRIMARY KEY NOT NULL,
    v BLOB NOT NULL
)";

fn unavailable(context: &str, err: impl std::fmt::Display) -> KvError {
    KvError::new(KvErrorKind::Unavailable, format!("sqlite {context}: {err}"))
}

fn closed() -> KvError {
    KvError::new(KvErrorKind::Unavailable, "sqlite store is closed")
}

impl SqliteKv {
    /// Open (or create) the database at `path`, switch it to WAL mode and
    /// start the writer and reader threads.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| OpenError::Sqlite {
            path: path.clone(),
            source,
        };
        let lock = lock_store(&path)?;
        create_private(&path).map_err(|source| OpenError::Create {
            path: path.clone(),
            source,
        })?;
        let write_conn = open_conn(&path, Access::Write).map_err(err)?;
        write_conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // journal_mode answers with the mode in force; anything but "wal"
        // (e.g. on a filesystem without shared memory) would silently lose
        // the concurrency and durability this crate documents.
        let mode: String = write_conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode}, WAL is required"
            ))));
        }
        write_conn
            .execute_batch(&format!(
                "PRAGMA synchronous={};\n\
                 PRAGMA wal_autocheckpoint=0;\n\
                 PRAGMA journal_size_limit={};\n\
                 {SCHEMA}",
                options.synchronous.pragma(),
                WAL_FILE_LIMIT
            ))
            .map_err(err)?;
        let checkpoint_conn = open_conn(&path, Access::Write).map_err(err)?;
        checkpoint_conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        checkpoint_conn
            .execute_batch(&format!(
                "PRAGMA synchronous={};",
                options.synchronous.pragma()
            ))
            .map_err(err)?;

        let reader_count = options.readers.max(1);
        let mut read_conns = Vec::with_capacity(reader_count);
        for _ in 0..reader_count {
            read_conns.push(open_reader(&path, BUSY_TIMEOUT).map_err(err)?);
        }

        let (writer_tx, writer_rx) = mpsc::channel();
        let (checkpoint_tx, checkpoint_rx) = mpsc::channel();
        let (reader_tx, reader_rx) = mpsc::channel();
        let reader_rx = Arc::new(Mutex::new(reader_rx));
        let mut threads = Vec::with_capacity(reader_count + 1);
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|e| err(rusqlite::Error::InvalidParameterName(e.to_string())))
        };
        let state = Arc::new(StoreState {
            path: path.clone(),
            closed: AtomicBool::new(false),
            inline_reads: options.inline_reads,
            cache: (options.read_cache_bytes > 0).then(|| ReadCache::new(options.read_cache_bytes)),
            write_conn: Mutex::new(Some(write_conn)),
            queued: AtomicUsize::new(0),
            inline_writes: options.inline_writes && options.synchronous == Synchronous::Normal,
            dirty: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            backup_running: AtomicBool::new(false),
            backup_interrupt: Mutex::new(None),
        });
        let writer_state = Arc::clone(&state);
        threads.push(spawn(
            "sqlite-writer".into(),
            Box::new(move || writer_loop(writer_rx, &writer_state, lock)),
        )?);
        let checkpoint_state = Arc::clone(&state);
        let wal_path = with_suffix(&path, "-wal");
        threads.push(spawn(
            "sqlite-checkpoint".into(),
            Box::new(move || {
                checkpoint_loop(checkpoint_conn, checkpoint_rx, &checkpoint_state, &wal_path)
            }),
        )?);
        for (i, conn) in read_conns.into_iter().enumerate() {
            let rx = Arc::clone(&reader_rx);
            threads.push(spawn(
                format!("sqlite-reader-{i}"),
                Box::new(move || reader_loop(conn, rx)),
            )?);
        }
        Ok(Self {
            state,
            writer: writer_tx,
            checkpointer: Mutex::new(Some(checkpoint_tx)),
            readers: reader_tx,
            reader_count,
            threads: Mutex::new(threads),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finish every operation queued so far, checkpoint the WAL into the
    /// main file and stop the store's threads. Operations issued afterwards
    /// fail with [`KvErrorKind::Unavailable`]. Calling it twice is harmless.
    ///
    /// A thread that read inline keeps its connection to the file until its
    /// next inline read (of any store) or until it exits, and with it the
    /// process's exclusive lock (see the crate docs): another process can
    /// open the file once those threads are gone, as when the server exits.
    pub async fn close(&self) {
        // Threads drop their inline connections to this store on their
        // next inline read of any store.
        self.state.closed.store(true, Ordering::Release);
        // A backup would hold its snapshot open through the final
        // checkpoint; it is only a copy, so it gives way.
        if let Some(handle) = self
            .state
            .backup_interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            handle.interrupt();
        }
        // The checkpointer goes first, so that the writer's final checkpoint
        // does not compete with it.
        self.checkpointer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriterMsg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        for _ in 0..self.reader_count {
            let _ = self.readers.send(ReadOp::Close);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        // The threads have been told to stop and only finish what they hold;
        // joining them on a blocking-capable thread keeps the runtime free.
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::spawn(move || {
            for t in threads {
                let _ = t.join();
            }
            let _ = done_tx.send(());
        });
        let _ = done_rx.await;
    }

    async fn write(&self, op: WriteOp) -> Result<WriteResult, KvError> {
        let op = match self.write_inline(op) {
            Ok(result) => return result,
            Err(op) => op,
        };
        let queued = &self.state.queued;
        queued.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriterMsg::Op(op, tx)).is_err() {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(closed());
        }
        rx.await.map_err(|_| closed())?
    }

    /// Commit `op` on this thread if that needs no waiting: inline writes
    /// are on, nothing is queued for the writer thread, and no commit holds
    /// the connection. Otherwise hand `op` back for the writer thread.
    fn write_inline(&self, op: WriteOp) -> Result<Result<WriteResult, KvError>, WriteOp> {
        let state = &*self.state;
        if !state.inline_writes || state.queued.load(Ordering::Acquire) != 0 {
            return Err(op);
        }
        let mut guard = match state.write_conn.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(op),
        };
        // `None`: closed; the writer thread's channel says so.
        let Some(conn) = guard.as_mut() else {
            return Err(op);
        };
        Ok(commit(conn, &[&op], state)
            .pop()
            .unwrap_or_else(|| Err(closed())))
    }
}

impl Drop for SqliteKv {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        // Without an explicit close, the threads still finish what is queued
        // (the channels' senders disappear with `self`) and exit on their own.
        let _ = self.writer.send(WriterMsg::Close(oneshot::channel().0));
        for _ in 0..self.reader_count {
            let _ = self.readers.send(ReadOp::Close);
        }
    }
}

impl Kv for SqliteKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        if self.state.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let ticket = match self.state.cache.as_ref().map(|cache| cache.get(key)) {
            Some(Ok(hit)) => return Ok(hit),
            Some(Err(ticket)) => Some(ticket),
            None => None,
        };
        let value = match self.read_inline(|conn| read_one(conn, key)) {
            Some(result) => result?,
            None => {
                let (tx, rx) = oneshot::channel();
                self.readers
                    .send(ReadOp::Get(key.to_owned(), tx))
                    .map_err(|_| closed())?;
                rx.await.map_err(|_| closed())??
            }
        };
        if let (Some(cache), Some(ticket)) = (&self.state.cache, ticket) {
            cache.fill(ticket, [(key, value.as_deref())]);
        }
        Ok(value)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if self.state.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let Some(cache) = &self.state.cache else {
            return self.read_many_uncached(keys.to_vec()).await;
        };
        let (mut found, ticket) = cache.get_many(keys);
        let missing: Vec<String> = keys
            .iter()
            .zip(&found)
            .filter(|(_, hit)| hit.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if missing.is_empty() {
            return Ok(found.into_iter().map(Option::unwrap_or_default).collect());
        }
        let read = self.read_many_uncached(missing.clone()).await?;
        cache.fill(
            ticket,
            missing
                .iter()
                .map(String::as_str)
                .zip(read.iter().map(Option::as_deref)),
        );
        let mut read = read.into_iter();
        for slot in found.iter_mut().filter(|hit| hit.is_none()) {
            *slot = Some(read.next().flatten());
        }
        Ok(found.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.write(WriteOp::Set(key.to_owned(), value.to_vec()))
            .await
            .map(|_| ())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::DeleteMany(keys.to_vec()))
            .await
            .map(|_| ())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        match self
            .write(WriteOp::CompareAndSwap {
                key: key.to_owned(),
                current: current.to_vec(),
                new: new.to_vec(),
            })
            .await?
        {
            WriteResult::Swapped(done) => Ok(done),
            _ => Err(KvError::new(
                KvErrorKind::Other,
                "sqlite writer: wrong reply",
            )),
        }
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        match self
            .write(WriteOp::Increment(key.to_owned(), delta))
            .await?
        {
            WriteResult::Counter(value) => Ok(value),
            _ => Err(KvError::new(
                KvErrorKind::Other,
                "sqlite writer: wrong reply",
            )),
        }
    }
}

// ---------------------------------------------------------------- readers

/// What the store's handle, its threads and the per-thread inline readers
/// share.
struct StoreState {
    path: PathBuf,
    closed: AtomicBool,
    inline_reads: bool,
    cache: Option<ReadCache>,
    /// The only write connection (`None` once closed). Whoever commits holds
    /// this lock: the writer thread, an inline writer, or the checkpointer
    /// while it restarts the WAL (which would otherwise make a commit wait
    /// inside SQLite).
    write_conn: Mutex<Option<Connection>>,
    /// Writes sent to the writer thread and not yet committed. Inline
    /// commits happen only while it is zero.
    queued: AtomicUsize,
    inline_writes: bool,
    /// Something was committed since the last checkpoint.
    dirty: AtomicBool,
    /// Commits attempted since the store was opened (failed ones too:
    /// equal counts still mean nothing was written in between).
    commits: AtomicU64,
    /// A backup is reading a snapshot (see the `backup` module).
    backup_running: AtomicBool,
    /// Stops the running backup's copy when the store closes.
    backup_interrupt: Mutex<Option<rusqlite::InterruptHandle>>,
}

/// One thread's read-only connection to one store.
struct InlineReader {
    store: Weak<StoreState>,
    conn: Connection,
}

thread_local! {
    /// This thread's inline read connections, one per open store (usually
    /// exactly one).
    static INLINE_READERS: RefCell<Vec<InlineReader>> = const { RefCell::new(Vec::new()) };
}

impl SqliteKv {
    /// Read `keys` from SQLite (inline when few, else on the pool).
    async fn read_many_uncached(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.len() <= INLINE_MANY_MAX {
            if let Some(result) = self.read_inline(|conn| read_many(conn, &keys)) {
                return result;
            }
        }
        let (tx, rx) = oneshot::channel();
        self.readers
            .send(ReadOp::GetMany(keys, tx))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Run `read` on this thread's connection to the store. `None` when it
    /// should go to the reader pool instead: inline reads are off, the
    /// store is closing, no connection could be opened, or the read would
    /// have to wait for a lock (`SQLITE_BUSY`: the pool's connections wait
    /// for it, a runtime thread must not).
    fn read_inline<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<Result<T, KvError>> {
        let store = &self.state;
        if !store.inline_reads || store.closed.load(Ordering::Acquire) {
            return None;
        }
        INLINE_READERS.with(|readers| {
            let mut readers = readers.try_borrow_mut().ok()?;
            readers.retain(|r| {
                r.store
                    .upgrade()
                    .is_some_and(|s| !s.closed.load(Ordering::Acquire))
            });
            let index = match readers
                .iter()
                .position(|r| std::ptr::eq(r.store.as_ptr(), Arc::as_ptr(store)))
            {
                Some(index) => index,
                None => {
                    readers.push(InlineReader {
                        store: Arc::downgrade(store),
                        conn: open_reader(&store.path, Duration::ZERO).ok()?,
                    });
                    readers.len() - 1
                }
            };
            match read(&readers[index].conn) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) =>
                {
                    None
                }
                result => Some(result.map_err(|e| unavailable("read", e))),
            }
        })
    }
}

/// What a connection is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The writer (creates the file), the checkpointer and backups.
    Write,
    /// Readers: `query_only`, and never creates the file.
    Read,
}

/// Open a connection of this store, on SQLite's `unix-excl` VFS on Unix
/// (see the crate docs): the first connection takes an exclusive lock on
/// the file for the whole process; from then on the connections' file
/// locks are in-memory counters and the WAL index lives on the heap, not
/// in a `-shm` file. Readers are opened read-write with `query_only`,
/// because `unix-excl` keeps only read-write handles off the real POSIX
/// locks and every connection of the store should share one locking
/// regime.
fn open_conn(path: &Path, access: Access) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if access == Access::Write {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    #[cfg(unix)]
    let conn = Connection::open_with_flags_and_vfs(path, flags, c"unix-excl")?;
    #[cfg(not(unix))]
    let conn = Connection::open_with_flags(path, flags)?;
    if access == Access::Read {
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok(conn)
}

/// A reader connection that waits at most `busy_timeout` for locks.
fn open_reader(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = open_conn(path, Access::Read)?;
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}

fn reader_loop(conn: Connection, jobs: Arc<Mutex<mpsc::Receiver<ReadOp>>>) {
    loop {
        // Holding the lock while blocked in `recv` is the point: idle
        // readers queue on the mutex and exactly one waits on the channel.
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        match job {
            Ok(ReadOp::Get(key, reply)) => {
                let _ = reply.send(read_one(&conn, &key).map_err(|e| unavailable("read", e)));
            }
            Ok(ReadOp::GetMany(keys, reply)) => {
                let _ = reply.send(read_many(&conn, &keys).map_err(|e| unavailable("read", e)));
            }
            Ok(ReadOp::Close) | Err(_) => return,
        }
    }
}

fn read_one(conn: &Connection, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT v FROM kv WHERE k = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()
}

fn read_many(conn: &Connection, keys: &[String]) -> rusqlite::Result<Vec<Option<Vec<u8>>>> {
    let mut stmt = conn.prepare_cached("SELECT v FROM kv WHERE k = ?1")?;
    keys.iter()
        .map(|key| stmt.query_row([key], |row| row.get(0)).optional())
        .collect()
}

// ----------------------------------------------------------------- writer

fn checkpoint_loop(
    conn: Connection,
    stop: mpsc::Receiver<()>,
    state: &StoreState,
    wal_path: &Path,
) {
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Told to stop, or the store is gone.
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if state.dirty.swap(false, Ordering::Relaxed) {
            // A failed or partial checkpoint is retried on the next round;
            // committed data is safe in the WAL meanwhile.
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            let wal_size = std::fs::metadata(wal_path).map_or(0, |m| m.len());
            // A backup's snapshot is a reader that stays for as long as the
            // copy takes: restarting the log would hold writers back for
            // all of it (up to the busy timeout). The log may grow meanwhile.
            if wal_size > WAL_SIZE_LIMIT && !state.backup_running.load(Ordering::Acquire) {
                // Waits for the (short) reads still on older snapshots and
                // holds writers back meanwhile; the next commit then
                // rewrites the log from its start. Holding the write
                // connection's lock meanwhile keeps writers from waiting
                // inside SQLite, where an inline writer would stall its
                // (runtime) thread: they queue for the writer thread.
                let _writers_held = state.write_conn.lock().unwrap_or_else(|e| e.into_inner());
                let _ = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
            }
        }
    }
}

fn writer_loop(jobs: mpsc::Receiver<WriterMsg>, state: &StoreState, lock: File) {
    let mut batch: Vec<(WriteOp, Reply<WriteResult>)> = Vec::with_capacity(MAX_BATCH);
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        match jobs.recv() {
            Ok(WriterMsg::Op(op, reply)) => batch.push((op, reply)),
            Ok(WriterMsg::Close(done)) => closing = Some(done),
            Err(_) => break,
        }
        // Group commit: everything that queued up while we were busy goes
        // into this transaction.
        while closing.is_none() && batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(WriterMsg::Op(op, reply)) => batch.push((op, reply)),
                Ok(WriterMsg::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let ops: Vec<&WriteOp> = batch.iter().map(|(op, _)| op).collect();
        let results = match state
            .write_conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(conn) => commit(conn, &ops, state),
            None => ops.iter().map(|_| Err(closed())).collect(),
        };
        state.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        for ((_, reply), result) in batch.drain(..).zip(results) {
            let _ = reply.send(result);
        }
    }
    let conn = state
        .write_conn
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    // Checkpointing on a clean close leaves one self-contained file behind;
    // a failure only means the WAL is replayed on the next open.
    if let Some(conn) = conn {
        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }
    // Released only once the last write is done (and before `close`
    // returns): a store opened next on this file starts from everything
    // committed.
    drop(lock);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Run `ops` in one transaction and return each one's result. The caller
/// holds the write connection's lock (so commits never overlap) and
/// answers no one before this returns. If the transaction fails as a
/// whole, each operation is retried in a transaction of its own so that one
/// bad operation cannot fail the others. The read cache forgets the ops'
/// keys before and learns their new values after (see the `cache` module).
fn commit(
    conn: &mut Connection,
    ops: &[&WriteOp],
    state: &StoreState,
) -> Vec<Result<WriteResult, KvError>> {
    let cache = state.cache.as_ref();
    if let Some(cache) = cache {
        cache.begin_commit(ops.iter().flat_map(|op| op.keys()));
    }
    let results = match run_transaction(conn, ops) {
        Ok(results) => {
            if let Some(cache) = cache {
                cache.end_commit(final_values(ops, &results));
            }
            results
        }
        Err(_) if ops.len() > 1 => {
            let results = ops
                .iter()
                .map(|op| match run_transaction(conn, &[op]) {
                    Ok(mut results) => results.pop().unwrap_or_else(|| Err(closed())),
                    Err(e) => Err(e),
                })
                .collect();
            if let Some(cache) = cache {
                cache.end_commit([]);
            }
            results
        }
        Err(e) => {
            if let Some(cache) = cache {
                cache.end_commit([]);
            }
            vec![Err(e)]
        }
    };
    state.commits.fetch_add(1, Ordering::Release);
    state.dirty.store(true, Ordering::Relaxed);
    results
}

impl WriteOp {
    fn keys(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            WriteOp::Set(key, _)
            | WriteOp::CompareAndSwap { key, .. }
            | WriteOp::Increment(key, _) => (Some(key.as_str()), &[][..]),
            WriteOp::DeleteMany(keys) => (None, &keys[..]),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }
}

/// What each key written by a committed batch now holds, as far as the
/// operations and their results tell (in order: later operations win).
fn final_values<'a>(
    ops: &[&'a WriteOp],
    results: &'a [Result<WriteResult, KvError>],
) -> Vec<(&'a str, Final<'a>)> {
    let mut finals: Vec<(&'a str, Final<'a>)> = Vec::new();
    let mut index: HashMap<&'a str, usize> = HashMap::new();
    let mut learn = |key: &'a str, value: Final<'a>| match index.get(key) {
        Some(&i) => finals[i].1 = value,
        None => {
            index.insert(key, finals.len());
            finals.push((key, value));
        }
    };
    for (op, result) in ops.iter().zip(results) {
        match (op, result) {
            (WriteOp::Set(key, value), Ok(_)) => learn(key, Final::Value(Cow::Borrowed(value))),
            (WriteOp::DeleteMany(keys), Ok(_)) => {
                for key in keys {
                    learn(key, Final::Absent);
                }
            }
            (WriteOp::CompareAndSwap { key, new, .. }, Ok(WriteResult::Swapped(true))) => {
                learn(key, Final::Value(Cow::Borrowed(new)))
            }
            (WriteOp::Increment(key, delta), Ok(WriteResult::Counter(n))) if *delta != 0 => {
                learn(key, Final::Value(Cow::Owned(n.to_le_bytes().to_vec())))
            }
            // A failed swap or increment changed nothing: what was known
            // before still holds (and an unknown key stays uncached).
            (WriteOp::CompareAndSwap { .. }, Ok(WriteResult::Swapped(false)))
            | (WriteOp::Increment(..), Err(_)) => {}
            // `increment(k, 0)` may or may not have written the counter.
            (op, _) => {
                for key in op.keys() {
                    learn(key, Final::Unknown);
                }
            }
        }
    }
    finals
}

/// `path` with `suffix` appended to its file name (`kv.sqlite3` →
/// `kv.sqlite3-wal`): the names SQLite and this crate give a store's
/// companion files.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Create `path` as an empty file only its owner can read, unless it
/// exists. A store (and a backup) holds every user's data: private from its
/// first byte whatever the directory's or the umask's permissions, and its
/// WAL takes the same mode. (SQLite would create it readable by all.)
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Take `<path>.lock`, so that no other store (in this process or another)
/// writes the same file behind this one's cache.
fn lock_store(path: &Path) -> Result<File, OpenError> {
    let lock = with_suffix(path, ".lock");
    let fail = |source| OpenError::Lock {
        path: path.to_path_buf(),
        lock: lock.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(fail)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::InUse {
            path: path.to_path_buf(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
    }
}

/// One transaction over `ops`. The outer error means nothing was committed;
/// the per-operation results are what each caller gets after the commit.
#[allow(clippy::type_complexity)]
fn run_transaction(
    conn: &mut Connection,
    ops: &[&WriteOp],
) -> Result<Vec<Result<WriteResult, KvError>>, KvError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| unavailable("begin", e))?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match apply(&tx, op) {
            Ok(r) => results.push(r),
            Err(e) => return Err(unavailable("write", e)), // tx rolls back on drop
        }
    }
    tx.commit().map_err(|e| unavailable("commit", e))?;
    Ok(results)
}

/// Apply one operation. SQLite errors abort the transaction; logical
/// failures (a non-counter under `increment`) only fail this operation.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: &WriteOp,
) -> rusqlite::Result<Result<WriteResult, KvError>> {
    Ok(Ok(match op {
        WriteOp::Set(key, value) => {
            tx.prepare_cached(
                "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            )?
            .execute(params![key, value])?;
            WriteResult::Unit
        }
        WriteOp::DeleteMany(keys) => {
            let mut stmt = tx.prepare_cached("DELETE FROM kv WHERE k = ?1")?;
            for key in keys {
                stmt.execute([key])?;
            }
            WriteResult::Unit
        }
        WriteOp::CompareAndSwap { key, current, new } => {
            // Blob = blob compares bytes exactly; an absent key matches no row.
            let changed = tx
                .prepare_cached("UPDATE kv SET v = ?3 WHERE k = ?1 AND v = ?2")?
                .execute(params![key, current, new])?;
            WriteResult::Swapped(changed == 1)
        }
        WriteOp::Increment(key, delta) => {
            let stored: Option<Vec<u8>> = tx
                .prepare_cached("SELECT v FROM kv WHERE k = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()?;
            let old = match stored.as_deref().map(decode_i64) {
                None => 0,
                Some(Some(v)) => v,
                Some(None) => {
                    return Ok(Err(KvError::new(
                        KvErrorKind::Other,
                        format!("increment of {key:?}: the value is not a counter"),
                    )))
                }
            };
            let Some(new) = old.checked_add(*delta) else {
                return Ok(Err(KvError::new(
                    KvErrorKind::Other,
                    format!("increment of {key:?} overflows"),
                )));
            };
            // `increment(k, 0)` of an existing counter leaves its bytes alone
            // (they may be ASCII decimal), so a swap from the bytes a caller
            // read still succeeds.
            if stored.is_none() || new != old {
                tx.prepare_cached(
                    "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                )?
                .execute(params![key, &new.to_le_bytes()[..]])?;
            }
            WriteResult::Counter(new)
        }
    }))
}

/// A counter as this store writes it (8-byte little-endian, the core's
/// shape) or as ASCII decimal (what other backends' increments store).
fn decode_i64(bytes: &[u8]) -> Option<i64> {
    if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
        return Some(i64::from_le_bytes(raw));
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that meets a lock is not answered inline (the pool, whose
    /// connections wait for locks, takes it); other errors are answers.
    #[test]
    fn inline_reads_hand_locked_reads_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let kv = SqliteKv::open(dir.path().join("kv.sqlite3"), SqliteOptions::default()).unwrap();
        let failure = |code| {
            Err::<(), _>(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        assert!(kv
            .read_inline(|_| failure(rusqlite::ffi::SQLITE_BUSY))
            .is_none());
        assert!(kv
            .read_inline(|_| failure(rusqlite::ffi::SQLITE_LOCKED))
            .is_none());
        let answered = kv.read_inline(|_| failure(rusqlite::ffi::SQLITE_IOERR));
        assert_eq!(
            answered.unwrap().unwrap_err().kind,
            KvErrorKind::Unavailable
        );
        assert_eq!(kv.read_inline(|_| Ok(7)).unwrap().unwrap(), 7);
        drop(kv);

        let off = SqliteOptions {
            inline_reads: false,
            ..SqliteOptions::default()
        };
        let kv = SqliteKv::open(dir.path().join("pool.sqlite3"), off).unwrap();
        assert!(kv.read_inline(|_| Ok(7)).is_none());
    }
}
