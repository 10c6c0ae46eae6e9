//! The KV key layout: every key a user's data lives under.
//!
//! All keys of one user share the prefix `u/<escaped user id>/`, where the
//! user id is percent-escaped by [`crate::names::escape_segment`] so it
//! contains no `/`; collection names and document ids are validated to
//! `[A-Za-z0-9._~-]` before they get here, and idempotency keys are
//! escaped. No string a client controls can therefore reach outside its
//! own user's prefix or collide with another key kind.
//!
//! | key | kind | holds |
//! |---|---|---|
//! | `h` | counter | hint: a lower bound on the newest seq |
//! | `f` | counter | floor: seqs ≤ f may have been compacted |
//! | `g` | counter | cleaned: compaction has removed garbage up to here |
//! | `s/<seq>` | counter | slot: 0 = free, else id of the entry committed at `seq` |
//! | `e/<id>` | immutable | entry (a mutation, intended for one seq) |
//! | `d/<collection>/<doc>` | counter | id of the document's latest entry (intent) |
//! | `k/<epoch>/<escaped key>` | counter | id of the entry that used an idempotency key |
//! | `x/<collection>` | counter | id of the collection's index blob (0 = empty) |
//! | `xs` | counter | id of the blob listing the user's collections |
//! | `b/<id>` | immutable | blob: a sorted JSON array of names |

use crate::names::escape_segment;

/// Key builder for one user.
#[derive(Debug, Clone)]
pub(crate) struct UserKeys {
    prefix: String,
}

/// Render an entry or blob id as a fixed-width key segment.
pub(crate) fn id_segment(id: u64) -> String {
    format!("{id:016x}")
}

impl UserKeys {
    pub fn new(user_id: &str) -> Self {
        Self {
            prefix: format!("u/{}/", escape_segment(user_id)),
        }
    }

    /// The topic name hosts use for change notifications of this user
    /// (the escaped prefix: identical on every instance).
    pub fn topic(&self) -> &str {
        &self.prefix
    }

    pub fn hint(&self) -> String {
        format!("{}h", self.prefix)
    }
    pub fn floor(&self) -> String {
        format!("{}f", self.prefix)
    }
    pub fn cleaned(&self) -> String {
        format!("{}g", self.prefix)
    }
    pub fn slot(&self, seq: u64) -> String {
        format!("{}s/{seq}", self.prefix)
    }
    pub fn entry(&self, id: u64) -> String {
        format!("{}e/{}", self.prefix, id_segment(id))
    }
    pub fn doc(&self, collection: &str, id: &str) -> String {
        format!("{}d/{collection}/{id}", self.prefix)
    }
    pub fn idempotency(&self, epoch: u64, key: &str) -> String {
        format!("{}k/{epoch}/{}", self.prefix, escape_segment(key))
    }
    pub fn index(&self, collection: &str) -> String {
        format!("{}x/{collection}", self.prefix)
    }
    pub fn collections(&self) -> String {
        format!("{}xs", self.prefix)
    }
    pub fn blob(&self, id: u64) -> String {
        format!("{}b/{}", self.prefix, id_segment(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_user_ids_stay_inside_their_prefix() {
        let a = UserKeys::new("a/log/1");
        let b = UserKeys::new("a");
        assert_eq!(a.slot(1), "u/a%2Flog%2F1/s/1");
        assert!(!a.slot(1).starts_with(b.topic()));
        assert_eq!(UserKeys::new("../x").hint(), "u/..%2Fx/h");
        assert_eq!(a.idempotency(3, "k/1"), "u/a%2Flog%2F1/k/3/k%2F1");
    }
}
