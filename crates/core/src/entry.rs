//! Log entries and the document representation derived from them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::time::rfc3339_millis;

/// What a mutation did to its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Op {
    Put,
    Delete,
}

/// Most bytes an entry's stored form takes beyond its document's value (a
/// delete of a 128-character id in a 128-character collection, with a
/// 255-character idempotency key that JSON escapes in full, and every
/// number at its longest; pinned by a test). A value limit of the store
/// (`max_value_bytes`) must leave this much room beside the largest
/// document (`max_body_bytes`).
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 1024;

/// One mutation, stored immutably at `e/<id>` before it is committed. It is
/// committed at seq `k` iff slot `s/<k>` holds its id (or, for the
/// document/idempotency pointers, an entry for the same document/key: see
/// `engine::resolve`). Field names are short because every byte is stored
/// once per change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The seq this entry was written for.
    pub k: u64,
    pub op: Op,
    /// Collection.
    pub c: String,
    /// Document id.
    pub i: String,
    /// The whole value after the change (puts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Value>,
    /// Wall-clock time of the mutation, ms since the epoch.
    pub ts: u64,
    /// Id of the entry holding the document's previous committed state (0:
    /// none), its version, and whether the document existed then.
    #[serde(default)]
    pub p: u64,
    #[serde(default)]
    pub pv: u64,
    #[serde(default)]
    pub px: bool,
    /// Idempotency key and request fingerprint, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ik: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp: Option<String>,
    /// Rate limiter state after this entry (GCRA theoretical arrival time,
    /// µs since the epoch); chained through the log so it costs no writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl: Option<u64>,
}

impl Entry {
    pub fn is_for(&self, collection: &str, id: &str) -> bool {
        self.c == collection && self.i == id
    }

    pub fn is_live(&self) -> bool {
        self.op == Op::Put
    }

    pub fn value(&self) -> Value {
        self.v.clone().unwrap_or(Value::Null)
    }

    /// The status the single-document route answered (and replays).
    pub fn status(&self) -> u16 {
        match (self.op, self.px) {
            (Op::Delete, _) => 204,
            (Op::Put, false) => 201,
            (Op::Put, true) => 200,
        }
    }

    /// The document representation after this entry (puts).
    pub fn document(&self) -> Value {
        json!({
            "collection": self.c,
            "id": self.i,
            "version": self.k,
            "value": self.value(),
            "updated_at": rfc3339_millis(self.ts),
        })
    }

    /// The change-feed representation, given the seq it was committed at.
    pub fn change(&self, seq: u64) -> Value {
        json!({
            "seq": seq,
            "op": self.op,
            "collection": self.c,
            "id": self.i,
            "version": seq,
            "value": if self.is_live() { self.value() } else { Value::Null },
            "ts": rfc3339_millis(self.ts),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entries serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Entry> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{MAX_IDEMPOTENCY_KEY_LEN, MAX_NAME_LEN};

    #[test]
    fn the_overhead_bound_holds_for_the_largest_entry() {
        let value = json!({"x": "v".repeat(1000)});
        let value_len = serde_json::to_vec(&value).unwrap().len();
        for (op, v) in [(Op::Put, Some(value)), (Op::Delete, None)] {
            let entry = Entry {
                k: u64::MAX,
                op,
                c: "c".repeat(MAX_NAME_LEN),
                i: "i".repeat(MAX_NAME_LEN),
                v: v.clone(),
                ts: u64::MAX,
                p: u64::MAX,
                pv: u64::MAX,
                px: false,
                // `"` and `\` are the visible characters JSON escapes.
                ik: Some("\"".repeat(MAX_IDEMPOTENCY_KEY_LEN)),
                fp: Some("f".repeat(64)),
                rl: Some(u64::MAX),
            };
            let around = entry.to_bytes().len() - if v.is_some() { value_len } else { 0 };
            assert!(around <= ENTRY_OVERHEAD_BYTES, "{op:?}: {around} bytes");
            assert!(around > ENTRY_OVERHEAD_BYTES / 2, "the bound is not slack");
        }
    }
}
