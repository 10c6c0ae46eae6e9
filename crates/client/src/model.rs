//! The data the client keeps and hands to the app.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A live document as the local replica holds it (the server's
/// representation, DESIGN.md "Document representation").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Collection name.
    pub collection: String,
    /// Document id within the collection.
    pub id: String,
    /// The `seq` of the document's last mutation.
    pub version: u64,
    /// The document's value (any JSON, `null` included).
    pub value: Value,
    /// When the server last changed it (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// One row of the replica's document table. `value: None` is a tombstone: the
/// document was deleted at `version`. Tombstones stop an older put that is
/// applied out of order (e.g. a mutation result racing the changes feed) from
/// resurrecting a deleted document; they are pruned once the cursor passes
/// their version, because from then on a write at or below the cursor is
/// ignored anyway (see [`crate::DocWrite`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    /// Collection name.
    pub collection: String,
    /// Document id.
    pub id: String,
    /// Version of the last applied change.
    pub version: u64,
    /// Value, or `None` for a tombstone.
    pub value: Option<Value>,
    /// Server timestamp of the change, when known.
    pub updated_at: Option<String>,
}

impl StoredDoc {
    /// The live document, or `None` for a tombstone.
    pub fn into_document(self) -> Option<Document> {
        let value = self.value?;
        Some(Document {
            collection: self.collection,
            id: self.id,
            version: self.version,
            value,
            updated_at: self.updated_at,
        })
    }
}

impl From<Document> for StoredDoc {
    fn from(d: Document) -> Self {
        StoredDoc {
            collection: d.collection,
            id: d.id,
            version: d.version,
            value: Some(d.value),
            updated_at: d.updated_at,
        }
    }
}

/// A mutation operation, as `POST /v1/mutations` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Create or replace; the value is the new document value.
    Put,
    /// JSON Merge Patch (RFC 7396); the value is the patch.
    Patch,
    /// Delete the document.
    Delete,
}

impl Op {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Patch => "patch",
            Op::Delete => "delete",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "put" => Some(Op::Put),
            "patch" => Some(Op::Patch),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// What the app asks to change. Build with [`Mutation::put`],
/// [`Mutation::patch`] or [`Mutation::delete`], optionally
/// [`Mutation::if_version`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mutation {
    /// The operation.
    pub op: Op,
    /// Collection name.
    pub collection: String,
    /// Document id.
    pub id: String,
    /// New value (put), merge patch (patch), `None` for delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Precondition: the document must be at this version (`0`: must not
    /// exist). A failed precondition parks the mutation as a conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
}

impl Mutation {
    /// Create or replace `collection/id` with `value`.
    pub fn put(collection: impl Into<String>, id: impl Into<String>, value: Value) -> Self {
        Mutation {
            op: Op::Put,
            collection: collection.into(),
            id: id.into(),
            value: Some(value),
            if_version: None,
        }
    }

    /// Merge-patch `collection/id` with `patch`.
    pub fn patch(collection: impl Into<String>, id: impl Into<String>, patch: Value) -> Self {
        Mutation {
            op: Op::Patch,
            collection: collection.into(),
            id: id.into(),
            value: Some(patch),
            if_version: None,
        }
    }

    /// Delete `collection/id`.
    pub fn delete(collection: impl Into<String>, id: impl Into<String>) -> Self {
        Mutation {
            op: Op::Delete,
            collection: collection.into(),
            id: id.into(),
            value: None,
            if_version: None,
        }
    }

    /// Only apply if the document is at `version` (`0`: only if absent).
    pub fn if_version(mut self, version: u64) -> Self {
        self.if_version = Some(version);
        self
    }
}

/// A mutation in the durable queue. Its `key` is the idempotency key, fixed
/// at enqueue time so that every retry (after a timeout, a crash, a restart)
/// is recognised by the server and applied at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingMutation {
    /// Queue position (strictly increasing, never reused).
    pub seq: u64,
    /// Idempotency key sent as the batch item's `id`.
    pub key: String,
    /// What to change.
    pub mutation: Mutation,
    /// Wall-clock enqueue time, milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
}

/// Why a mutation left the queue without being applied. Parked mutations
/// stay in storage until the app resolves them ([`crate::Client::resolve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ParkReason {
    /// 412: the `if_version` precondition failed; the document is at
    /// `current_version` (`None`: it does not exist).
    Conflict {
        /// The server's version of the document.
        current_version: Option<u64>,
        /// The server's problem document.
        problem: Option<Problem>,
    },
    /// The server refused the mutation itself (404 document absent, 422
    /// idempotency-key mismatch, 400/413/415 bad item, 409 collection full).
    Rejected {
        /// HTTP status of the item result.
        status: u16,
        /// The server's problem document.
        problem: Option<Problem>,
    },
}

/// A mutation the server did not apply and that waits for the app's
/// decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedMutation {
    /// The mutation as it was queued.
    pub pending: PendingMutation,
    /// What went wrong.
    pub reason: ParkReason,
}

/// How the app settles a parked mutation.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Drop it: the server's state wins.
    Discard,
    /// Apply it anyway on top of the server's current version: re-queued at
    /// the end of the queue with `if_version` set to the version the conflict
    /// reported (so a further concurrent change conflicts again instead of
    /// being overwritten blindly). A put of a document gone on the server
    /// recreates it only if it is still absent (`if_version: 0`); a delete of
    /// one has nothing left to do (nothing is queued); a patch of one is
    /// refused ([`crate::Error::InvalidMutation`]: nothing to patch). A
    /// mutation refused for what it is (409 `collection-full`, 413…) is
    /// queued again as it was, under its own condition.
    Overwrite,
    /// Queue this mutation instead (e.g. a merge the app computed).
    Replace(Mutation),
}

/// RFC 9457 problem details, as the server sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Problem {
    /// Stable problem identifier (`cursor-expired`, `precondition-failed`…).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Short human-readable summary.
    #[serde(default)]
    pub title: String,
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// Human-readable explanation of this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension members (`current_version`, `head`, `floor`, …).
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, Value>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let title = if self.title.is_empty() {
            "request failed"
        } else {
            &self.title
        };
        write!(f, "{title}")?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        if self.status != 0 {
            write!(f, " ({})", self.status)?;
        }
        Ok(())
    }
}

/// Where a change event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The server's changes feed.
    Remote,
    /// The result of one of this replica's own mutations.
    Local,
    /// The first snapshot of an empty replica.
    Snapshot,
    /// A difference found while re-bootstrapping after 409/410.
    Resync,
}

/// A change to the local replica, delivered to subscribers of its collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// `put` (created or replaced) or `delete`.
    pub op: Op,
    /// Collection name.
    pub collection: String,
    /// Document id.
    pub id: String,
    /// Version of the change.
    pub version: u64,
    /// The whole value after the change; `None` for a delete.
    pub value: Option<Value>,
    /// Server timestamp, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    /// Where it came from.
    pub origin: Origin,
}

/// Why the replica re-bootstrapped from the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResyncReason {
    /// The replica had no cursor yet.
    Initial,
    /// 409: the cursor is ahead of the server's head (e.g. a restored backup).
    CursorAhead,
    /// 410: the cursor is older than the server's compaction floor.
    CursorExpired,
}

/// Things the app may want to react to besides document changes.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    /// A queued mutation was applied by the server.
    Delivered {
        /// Its idempotency key.
        key: String,
        /// HTTP status of its result (200/201/204).
        status: u16,
        /// The version it produced.
        version: Option<u64>,
        /// Whether the server replayed an earlier result for this key.
        replayed: bool,
    },
    /// A mutation's `if_version` precondition failed (412). It is parked until
    /// the app calls [`crate::Client::resolve`].
    Conflict(ParkedMutation),
    /// The server refused a mutation (404/422/400…). It is parked until the
    /// app calls [`crate::Client::resolve`].
    Rejected(ParkedMutation),
    /// The replica (re-)bootstrapped from the listing.
    Resynced {
        /// Why.
        reason: ResyncReason,
        /// The listing's cursor the replica now follows from.
        cursor: u64,
        /// Live documents in the new snapshot.
        documents: usize,
    },
    /// The server refused the token (401); the engine slows down until
    /// [`crate::Client::set_token`] is called.
    AuthFailed(Problem),
}

/// Sync mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Long-poll: a change reaches the replica about one round trip after it
    /// is committed, at the cost of one held request at all times.
    #[default]
    Live,
    /// Smart polling with `If-None-Match`: fast after activity, backing off
    /// with full jitter when idle (see the crate docs for the idle cost).
    Battery,
}

/// How the replica asks for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Polling {
    /// Held requests (`Prefer: wait=25`): live mode on a server that holds
    /// them.
    #[default]
    LongPoll,
    /// Probes with `If-None-Match` on the poll schedule: battery mode, or
    /// live mode while the server does not hold requests (each probe still
    /// asks for a hold, so the replica long-polls again as soon as the
    /// server does).
    SmartPoll,
}

/// What the replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not started, or stopped.
    #[default]
    Idle,
    /// Reading the snapshot listing.
    Bootstrapping,
    /// Following the changes feed.
    Following,
    /// Waiting before retrying after an error.
    Backoff,
}

/// What an app can show about sync.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Status {
    /// The last request got an HTTP response from the server.
    pub online: bool,
    /// A request that moves data (snapshot, mutations, catching up) is in
    /// flight; an idle long-poll or probe does not count.
    pub syncing: bool,
    /// What the engine is doing.
    pub phase: Phase,
    /// Current mode.
    pub mode: Mode,
    /// How changes are asked for: in live mode, [`Polling::SmartPoll`]
    /// means the server does not hold long-polls.
    pub polling: Polling,
    /// Mutations waiting to be delivered.
    pub pending: u64,
    /// Mutations waiting for the app's resolution (conflicts, rejections).
    pub parked: u64,
    /// Last applied change `seq` (`None`: never bootstrapped).
    pub cursor: Option<u64>,
    /// Latest head the server reported.
    pub head: Option<u64>,
    /// `head - cursor`: how many changes the replica is behind, as of the
    /// last response.
    pub lag: Option<u64>,
    /// The last error, cleared by the next success (a failing flush's
    /// error stays while writes keep failing, even as reads succeed).
    pub last_error: Option<String>,
}
