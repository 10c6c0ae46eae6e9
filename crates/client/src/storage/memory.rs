use super::{Commit, CommitResult, Meta, QueueCounts, Storage, StorageError, WriteOutcome};
use crate::model::{ParkReason, ParkedMutation, PendingMutation, StoredDoc};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// A replica that lives only as long as the process: for tests, and for apps
/// that do not need to survive restarts. Clones share the same data, so a
/// test can "restart" a client on the same replica.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    inner: std::sync::Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    meta: Meta,
    docs: BTreeMap<(String, String), StoredDoc>,
    queue: BTreeMap<u64, (PendingMutation, Option<ParkReason>)>,
    next_seq: u64,
}

impl MemoryStorage {
    /// An empty replica.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a
        // way later readers would misinterpret worse than the panic itself.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn meta(&self) -> Result<Meta, StorageError> {
        Ok(self.lock().meta.clone())
    }

    fn init_replica_id(&self, candidate: &str) -> Result<String, StorageError> {
        let mut s = self.lock();
        Ok(s.meta
            .replica_id
            .get_or_insert_with(|| candidate.to_string())
            .clone())
    }

    fn bind(&self, server: &str, user: Option<&str>) -> Result<Meta, StorageError> {
        let mut s = self.lock();
        s.meta.server.get_or_insert_with(|| server.to_string());
        if let (None, Some(user)) = (&s.meta.user, user) {
            s.meta.user = Some(user.to_string());
        }
        Ok(s.meta.clone())
    }

    fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StorageError> {
        Ok(self
            .lock()
            .docs
            .get(&(collection.to_string(), id.to_string()))
            .cloned())
    }

    fn list(&self, collection: Option<&str>) -> Result<Vec<StoredDoc>, StorageError> {
        Ok(self
            .lock()
            .docs
            .values()
            .filter(|d| d.value.is_some() && collection.is_none_or(|c| d.collection == c))
            .cloned()
            .collect())
    }

    fn commit(&self, commit: Commit) -> Result<CommitResult, StorageError> {
        let mut s = self.lock();
        if let Some(seq) = commit.unpark {
            if !s
                .queue
                .get(&seq)
                .is_some_and(|(_, parked)| parked.is_some())
            {
                return Err(StorageError::NotParked(seq));
            }
            s.queue.remove(&seq);
        }
        let mut result = CommitResult::default();
        // The cursor before this commit: writes at or below it are already
        // reflected by the feed (see `DocWrite`).
        let cursor = s.meta.cursor;
        let new_cursor = commit.new_cursor(cursor);
        for w in commit.docs {
            let key = (w.collection.clone(), w.id.clone());
            let outcome = match s.docs.get(&key) {
                Some(old) if old.version > w.version => WriteOutcome::Superseded,
                Some(old) if old.version == w.version => WriteOutcome::Same,
                _ if cursor.is_some_and(|c| w.version <= c) => WriteOutcome::BelowCursor,
                old => WriteOutcome::Applied {
                    was_live: old.is_some_and(|o| o.value.is_some()),
                },
            };
            if matches!(outcome, WriteOutcome::Applied { .. }) {
                s.docs.insert(
                    key,
                    StoredDoc {
                        collection: w.collection,
                        id: w.id,
                        version: w.version,
                        value: w.value,
                        updated_at: w.updated_at,
                    },
                );
            }
            result.docs.push(outcome);
        }
        if let Some(cursor) = new_cursor {
            s.meta.cursor = Some(cursor);
            s.docs
                .retain(|_, d| d.value.is_some() || d.version > cursor);
        }
        if let Some(h) = commit.head {
            s.meta.head = Some(h);
        }
        if let Some(r) = commit.needs_resync {
            s.meta.needs_resync = r;
        }
        for seq in commit.remove {
            s.queue.remove(&seq);
        }
        for (seq, reason) in commit.park {
            if let Some(entry) = s.queue.get_mut(&seq) {
                entry.1 = Some(reason);
            }
        }
        for m in commit.enqueue {
            s.next_seq += 1;
            let p = PendingMutation {
                seq: s.next_seq,
                key: m.key,
                mutation: m.mutation,
                enqueued_at_ms: m.enqueued_at_ms,
            };
            s.queue.insert(p.seq, (p.clone(), None));
            result.enqueued.push(p);
        }
        Ok(result)
    }

    fn replace_all(
        &self,
        docs: Vec<StoredDoc>,
        cursor: u64,
        head: u64,
    ) -> Result<(), StorageError> {
        let mut s = self.lock();
        s.docs = docs
            .into_iter()
            .map(|d| ((d.collection.clone(), d.id.clone()), d))
            .collect();
        s.meta.cursor = Some(cursor);
        s.meta.head = Some(head);
        s.meta.needs_resync = false;
        Ok(())
    }

    fn pending(&self, limit: usize) -> Result<Vec<PendingMutation>, StorageError> {
        Ok(self
            .lock()
            .queue
            .values()
            .filter(|(_, parked)| parked.is_none())
            .take(limit)
            .map(|(p, _)| p.clone())
            .collect())
    }

    fn parked(&self) -> Result<Vec<ParkedMutation>, StorageError> {
        Ok(self
            .lock()
            .queue
            .values()
            .filter_map(|(p, reason)| {
                reason.clone().map(|reason| ParkedMutation {
                    pending: p.clone(),
                    reason,
                })
            })
            .collect())
    }

    fn counts(&self) -> Result<QueueCounts, StorageError> {
        let s = self.lock();
        let parked = s.queue.values().filter(|(_, r)| r.is_some()).count() as u64;
        Ok(QueueCounts {
            pending: s.queue.len() as u64 - parked,
            parked,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::run(&super::MemoryStorage::new());
    }
}
