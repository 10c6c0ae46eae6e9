//! Where the replica lives: documents, cursor, and the mutation queue.
//!
//! The client talks to storage through [`Storage`], a small synchronous,
//! transaction-shaped trait: every change of replica state is one
//! [`Commit`] that an implementation applies atomically, so a crash can never
//! leave documents ahead of the cursor or a delivered mutation still queued
//! next to its applied result. Two implementations ship:
//!
//! * [`SqliteStorage`], the durable default (SQLite in WAL mode,
//!   `synchronous=FULL`): incremental updates, one fsync'd transaction per
//!   commit, safe against crashes and power loss, and usable by several
//!   processes at once (the CLI's `watch` and `put` may share a state dir).
//!   An atomically-replaced file was rejected because every change would
//!   rewrite the whole replica, which costs O(replica) per applied change.
//! * [`MemoryStorage`], for tests and for apps that want no persistence.
//!
//! The calls are synchronous because SQLite is; each is a short transaction
//! on a local file (well under a millisecond, plus an fsync for commits).

mod memory;
mod sqlite;

pub use memory::MemoryStorage;
pub use sqlite::SqliteStorage;

use std::path::Path;

use crate::model::{Mutation, ParkReason, ParkedMutation, PendingMutation, StoredDoc};
use serde_json::Value;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored data could not be decoded.
    #[error("corrupt replica data: {0}")]
    Corrupt(String),
    /// Opening the store failed.
    #[error("cannot open the replica store: {0}")]
    Io(#[from] std::io::Error),
    /// [`Commit::unpark`] named an entry that is not parked (any more):
    /// another handle settled it first. Nothing was committed.
    #[error("mutation #{0} is not parked")]
    NotParked(u64),
}

/// Sync position of the replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Random id of this replica, used to make idempotency keys unique.
    pub replica_id: Option<String>,
    /// Last change `seq` the replica has applied (`None`: never
    /// bootstrapped).
    pub cursor: Option<u64>,
    /// Latest head the server reported.
    pub head: Option<u64>,
    /// A 409/410 asked for a resync that has not completed yet (so a restart
    /// resumes it instead of polling a dead cursor).
    pub needs_resync: bool,
    /// The server this replica follows (its normalised base URL), recorded
    /// by [`Storage::bind`] on first use.
    pub server: Option<String>,
    /// The user (the token's `sub`) whose documents and queue this replica
    /// holds, recorded by [`Storage::bind`] on first use.
    pub user: Option<String>,
}

/// A conditional document write: applied only if `version` is newer than
/// both the stored row (tombstones included; or there is no row) and the
/// replica's cursor as it was before the commit, i.e. only if `version >
/// max(row version, cursor)`. `value: None` writes a tombstone. This single
/// rule makes applying a change twice, or a stale change after a newer one,
/// a no-op.
///
/// The cursor bound matters once a tombstone is gone: tombstones are pruned
/// when the cursor passes them, and a write at or below the cursor (a
/// mutation result replayed after the feed brought a later delete, a
/// `fetch` that raced it, a page another process already applied) is
/// already reflected by the feed — applied, it would bring a deleted
/// document back for good.
#[derive(Debug, Clone, PartialEq)]
pub struct DocWrite {
    /// Collection name.
    pub collection: String,
    /// Document id.
    pub id: String,
    /// Version of the change.
    pub version: u64,
    /// New value, or `None` to delete.
    pub value: Option<Value>,
    /// Server timestamp of the change.
    pub updated_at: Option<String>,
}

/// What happened to one [`DocWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Older than the stored version: nothing changed.
    Superseded,
    /// No stored row, and at or below the cursor: the feed already brought
    /// it or something later (a delete whose tombstone has been pruned), so
    /// nothing changed. When the feed itself brings such a change, another
    /// handle on the same storage applied it and moved the cursor past it.
    BelowCursor,
    /// The stored row already has this version (tombstones included):
    /// nothing changed. Either the change was applied before, or another
    /// handle on the same storage (another process) stored it first, e.g.
    /// as the result of its own mutation.
    Same,
    /// Stored. `was_live` tells whether a live document was there before (so
    /// a delete of a document the replica never had is not reported).
    Applied {
        /// A live (non-tombstone) document existed before.
        was_live: bool,
    },
}

/// A mutation to add to the queue; `key` is its idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMutation {
    /// Idempotency key, unique for this replica.
    pub key: String,
    /// What to change.
    pub mutation: Mutation,
    /// Wall-clock enqueue time in ms since the epoch.
    pub enqueued_at_ms: u64,
}

/// One atomic change of replica state. Fields are applied in this order:
/// document writes, cursor/head, tombstone pruning, queue removals, parking,
/// enqueues.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Conditional document writes.
    pub docs: Vec<DocWrite>,
    /// Advance the cursor to this value (never moves it backwards: two
    /// processes sharing a store may commit pages out of order). Tombstones at
    /// or below the new cursor are pruned.
    pub cursor: Option<u64>,
    /// The cursor the page being committed was read from. With it, the
    /// cursor advances only if the stored one is at or past it: otherwise
    /// another handle has meanwhile put back a snapshot from an earlier
    /// cursor ([`Storage::replace_all`]), and the changes between the two
    /// are in neither; advancing would skip them for good. The documents
    /// are written either way.
    pub cursor_from: Option<u64>,
    /// Record the server's head.
    pub head: Option<u64>,
    /// Set or clear the resync flag.
    pub needs_resync: Option<bool>,
    /// Queue entries (by `seq`) to delete: delivered or discarded.
    pub remove: Vec<u64>,
    /// Queue entries to park with a reason.
    pub park: Vec<(u64, ParkReason)>,
    /// Settle this parked entry: remove it, and commit the rest only if it
    /// was still parked (else [`StorageError::NotParked`] and nothing
    /// changes), so that two handles resolving one conflict at once cannot
    /// both queue a replacement.
    pub unpark: Option<u64>,
    /// Mutations to append to the queue.
    pub enqueue: Vec<NewMutation>,
}

impl Commit {
    /// The cursor after this commit, given the `stored` one; `None` if it
    /// stays as it is. For [`Storage`] implementations: the rules of
    /// [`Commit::cursor`] and [`Commit::cursor_from`].
    pub fn new_cursor(&self, stored: Option<u64>) -> Option<u64> {
        let to = self.cursor?;
        match (stored, self.cursor_from) {
            (Some(old), Some(from)) if from > old => None,
            (Some(old), _) => Some(old.max(to)),
            (None, _) => Some(to),
        }
    }
}

/// Counts of queued mutations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting to be sent.
    pub pending: u64,
    /// Waiting for the app's resolution.
    pub parked: u64,
}

/// The replica store. Implementations must apply each [`Commit`] atomically
/// and durably (for a durable store) before returning, and follow the
/// [`DocWrite`] rule exactly; the crate's storage conformance tests check both
/// against the same expectations.
pub trait Storage: Send + Sync + 'static {
    /// Sync position and replica id.
    fn meta(&self) -> Result<Meta, StorageError>;
    /// Set the replica id if none is stored yet; returns the stored id.
    fn init_replica_id(&self, candidate: &str) -> Result<String, StorageError>;
    /// Record the server and the user this replica belongs to, each only if
    /// none is recorded yet (`user: None` records nothing), atomically, and
    /// return the metadata as stored afterwards. The client compares the
    /// result with its own server and user and refuses a mismatch.
    fn bind(&self, server: &str, user: Option<&str>) -> Result<Meta, StorageError>;
    /// One row (tombstones included).
    fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StorageError>;
    /// Live documents, ordered by (collection, id), optionally of one
    /// collection.
    fn list(&self, collection: Option<&str>) -> Result<Vec<StoredDoc>, StorageError>;
    /// Apply a commit atomically. Returns one outcome per `docs` entry and the
    /// stored form of each `enqueue` entry.
    fn commit(&self, commit: Commit) -> Result<CommitResult, StorageError>;
    /// Replace every document (tombstones included) with `docs`, set the
    /// cursor to `cursor` (even backwards), the head to `head`, and clear the
    /// resync flag, atomically. The queue is untouched.
    fn replace_all(&self, docs: Vec<StoredDoc>, cursor: u64, head: u64)
        -> Result<(), StorageError>;
    /// The oldest `limit` mutations that are not parked, in queue order.
    fn pending(&self, limit: usize) -> Result<Vec<PendingMutation>, StorageError>;
    /// Parked mutations in queue order.
    fn parked(&self) -> Result<Vec<ParkedMutation>, StorageError>;
    /// How many mutations are pending and parked.
    fn counts(&self) -> Result<QueueCounts, StorageError>;
    /// A file whose lock (`File::lock`) a client holds from reading queued
    /// mutations to recording their results, for storage that other
    /// processes (or other clients) can open too: without it, two of them
    /// could send the same mutations at once, and a refusal one of them
    /// is about to park would be sent again and evaluated afresh. `None`
    /// (the default) for storage only this client uses.
    fn queue_lock_file(&self) -> Option<&Path> {
        None
    }
}

/// Open `path` for writing, creating it empty if missing, private to its
/// owner (0600) whatever the umask says: a replica's files hold the user's
/// documents and queued writes.
pub(crate) fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// What a [`Storage::commit`] did.
#[derive(Debug, Clone, Default)]
pub struct CommitResult {
    /// One outcome per document write, in order.
    pub docs: Vec<WriteOutcome>,
    /// The enqueued mutations with their queue positions.
    pub enqueued: Vec<PendingMutation>,
}

/// Shared semantic checks for [`Storage`] implementations.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use crate::model::Mutation;
    use serde_json::json;

    fn w(c: &str, id: &str, version: u64, value: Option<Value>) -> DocWrite {
        DocWrite {
            collection: c.into(),
            id: id.into(),
            version,
            value,
            updated_at: None,
        }
    }

    fn nm(key: &str, m: Mutation) -> NewMutation {
        NewMutation {
            key: key.into(),
            mutation: m,
            enqueued_at_ms: 1,
        }
    }

    pub fn run(s: &dyn Storage) {
        // Fresh store.
        let meta = s.meta().unwrap();
        assert_eq!(meta.cursor, None);
        assert!(!meta.needs_resync);
        let id = s.init_replica_id("r1").unwrap();
        assert_eq!(id, "r1");
        assert_eq!(s.init_replica_id("r2").unwrap(), "r1");

        // Bound on first use; later calls report the binding, never move it.
        assert_eq!((meta.server, meta.user), (None, None));
        let m = s.bind("http://a", None).unwrap();
        assert_eq!((m.server.as_deref(), m.user), (Some("http://a"), None));
        let m = s.bind("http://b", Some("alice")).unwrap();
        assert_eq!(
            (m.server.as_deref(), m.user.as_deref()),
            (Some("http://a"), Some("alice"))
        );
        let m = s.bind("http://b", Some("bob")).unwrap();
        assert_eq!(
            (m.server.as_deref(), m.user.as_deref()),
            (Some("http://a"), Some("alice"))
        );
        assert_eq!(m.replica_id.as_deref(), Some("r1"));

        // Per-version application, idempotent.
        let r = s
            .commit(Commit {
                docs: vec![
                    w("t", "a", 3, Some(json!({"x": 1}))),
                    w("t", "a", 3, Some(json!({"x": 2}))),
                    w("t", "a", 2, Some(json!({"x": 0}))),
                    w("t", "b", 4, Some(json!(null))),
                    w("u", "c", 5, None),
                ],
                cursor: Some(5),
                head: Some(9),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            r.docs,
            vec![
                WriteOutcome::Applied { was_live: false },
                WriteOutcome::Same,
                WriteOutcome::Superseded,
                WriteOutcome::Applied { was_live: false },
                WriteOutcome::Applied { was_live: false },
            ]
        );
        assert_eq!(
            s.get("t", "a").unwrap().unwrap().value,
            Some(json!({"x": 1}))
        );
        // JSON null is a value, not a tombstone.
        assert_eq!(s.get("t", "b").unwrap().unwrap().value, Some(json!(null)));
        // The tombstone at 5 was pruned: the cursor reached 5.
        assert_eq!(s.get("u", "c").unwrap(), None);
        let meta = s.meta().unwrap();
        assert_eq!((meta.cursor, meta.head), (Some(5), Some(9)));

        // The cursor never moves backwards through commit.
        s.commit(Commit {
            cursor: Some(4),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.meta().unwrap().cursor, Some(5));
        // Nor past a gap: a page read from beyond the stored cursor (which
        // a snapshot put back meanwhile) leaves it where it is.
        s.commit(Commit {
            cursor: Some(7),
            cursor_from: Some(6),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.meta().unwrap().cursor, Some(5));
        s.commit(Commit {
            cursor: Some(6),
            cursor_from: Some(5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.meta().unwrap().cursor, Some(6));

        // A delete newer than the copy; a tombstone above the cursor blocks
        // an older put from resurrecting the document.
        let r = s
            .commit(Commit {
                docs: vec![w("t", "a", 8, None), w("t", "a", 7, Some(json!(1)))],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            r.docs,
            vec![
                WriteOutcome::Applied { was_live: true },
                WriteOutcome::Superseded
            ]
        );
        let tomb = s.get("t", "a").unwrap().unwrap();
        assert_eq!((tomb.version, tomb.value), (8, None));
        assert_eq!(
            s.list(Some("t")).unwrap().len(),
            1,
            "tombstones are not listed"
        );
        // Delete applied twice: harmless.
        let r = s
            .commit(Commit {
                docs: vec![w("t", "a", 8, None)],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.docs, vec![WriteOutcome::Same]);
        // A newer put recreates it.
        let r = s
            .commit(Commit {
                docs: vec![w("t", "a", 9, Some(json!(2)))],
                cursor: Some(9),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.docs, vec![WriteOutcome::Applied { was_live: false }]);

        // Listing order and filter.
        s.commit(Commit {
            docs: vec![
                w("a", "z", 10, Some(json!(0))),
                w("t", "0", 11, Some(json!(0))),
            ],
            ..Default::default()
        })
        .unwrap();
        let all: Vec<_> = s
            .list(None)
            .unwrap()
            .into_iter()
            .map(|d| format!("{}/{}", d.collection, d.id))
            .collect();
        assert_eq!(all, ["a/z", "t/0", "t/a", "t/b"]);

        // Queue: order, parking, removal, counts.
        let r = s
            .commit(Commit {
                enqueue: vec![
                    nm("k1", Mutation::put("t", "a", json!(1))),
                    nm("k2", Mutation::delete("t", "b").if_version(4)),
                    nm("k3", Mutation::patch("t", "a", json!({"y": 1}))),
                ],
                ..Default::default()
            })
            .unwrap();
        let seqs: Vec<u64> = r.enqueued.iter().map(|p| p.seq).collect();
        assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2]);
        assert_eq!(
            r.enqueued[1].mutation,
            Mutation::delete("t", "b").if_version(4)
        );
        let pending = s.pending(2).unwrap();
        assert_eq!(
            pending.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        s.commit(Commit {
            remove: vec![seqs[0]],
            park: vec![(
                seqs[1],
                ParkReason::Conflict {
                    current_version: Some(6),
                    problem: None,
                },
            )],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.counts().unwrap(),
            QueueCounts {
                pending: 1,
                parked: 1
            }
        );
        assert_eq!(s.pending(10).unwrap()[0].key, "k3");
        // Unparking is all or nothing: an entry that is queued, not parked,
        // is refused with nothing else applied.
        let refused = s.commit(Commit {
            unpark: Some(seqs[2]),
            enqueue: vec![nm("k-no", Mutation::delete("t", "z"))],
            ..Default::default()
        });
        assert!(matches!(refused, Err(StorageError::NotParked(n)) if n == seqs[2]));
        assert_eq!(s.counts().unwrap().pending, 1, "nothing enqueued");
        let parked = s.parked().unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].pending.key, "k2");
        assert!(matches!(
            parked[0].reason,
            ParkReason::Conflict {
                current_version: Some(6),
                ..
            }
        ));
        // New entries get later positions than every earlier one, even after
        // removals (keys are never reused).
        let r = s
            .commit(Commit {
                enqueue: vec![nm("k4", Mutation::delete("t", "a"))],
                ..Default::default()
            })
            .unwrap();
        assert!(r.enqueued[0].seq > seqs[2]);

        // Once the cursor has passed a delete and pruned its tombstone, a
        // late write at or below the cursor (a replayed mutation result, a
        // fetch that raced the feed) is already reflected by the feed: it
        // must not bring the document back. Above the cursor it applies.
        assert_eq!(s.meta().unwrap().cursor, Some(9));
        let r = s
            .commit(Commit {
                docs: vec![w("t", "r", 10, Some(json!("mine"))), w("t", "r", 12, None)],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            r.docs,
            vec![
                WriteOutcome::Applied { was_live: false },
                WriteOutcome::Applied { was_live: true }
            ]
        );
        s.commit(Commit {
            cursor: Some(12),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.get("t", "r").unwrap(), None, "tombstone pruned");
        let r = s
            .commit(Commit {
                docs: vec![
                    w("t", "r", 10, Some(json!("mine"))),
                    w("t", "r", 12, Some(json!("mine"))),
                ],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            r.docs,
            vec![WriteOutcome::BelowCursor, WriteOutcome::BelowCursor]
        );
        assert_eq!(s.get("t", "r").unwrap(), None, "not resurrected");
        let r = s
            .commit(Commit {
                docs: vec![w("t", "r", 13, Some(json!("new")))],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.docs, vec![WriteOutcome::Applied { was_live: false }]);
        assert_eq!(s.get("t", "r").unwrap().unwrap().value, Some(json!("new")));

        // Resync flag, and replace_all keeps the queue and may move the
        // cursor backwards.
        s.commit(Commit {
            needs_resync: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert!(s.meta().unwrap().needs_resync);
        s.replace_all(
            vec![StoredDoc {
                collection: "n".into(),
                id: "1".into(),
                version: 2,
                value: Some(json!("x")),
                updated_at: Some("2026-01-01T00:00:00.000Z".into()),
            }],
            3,
            4,
        )
        .unwrap();
        let meta = s.meta().unwrap();
        assert_eq!(
            (meta.cursor, meta.head, meta.needs_resync),
            (Some(3), Some(4), false)
        );
        assert_eq!(s.list(None).unwrap().len(), 1);
        assert_eq!(
            s.get("n", "1").unwrap().unwrap().updated_at.as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert_eq!(
            s.counts().unwrap(),
            QueueCounts {
                pending: 2,
                parked: 1
            }
        );
        let meta = s.meta().unwrap();
        assert_eq!(meta.replica_id.as_deref(), Some("r1"));
        assert_eq!(
            (meta.server.as_deref(), meta.user.as_deref()),
            (Some("http://a"), Some("alice")),
            "a resync keeps the binding"
        );
    }
}
