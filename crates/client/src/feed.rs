//! A lossless, ordered subscription to a replica's changes, for consumers
//! that must see each one (a log, an export, `edgesync watch`). The
//! per-collection broadcasts of [`crate::Client::subscribe`] suit a UI,
//! which only needs to know what to refresh and may drop events when it
//! falls behind; a feed never drops one. Instead, a feed that falls behind
//! slows the replica: while one holds more than [`MAX_BACKLOG`] unread
//! changes, the engine stops reading the changes feed (it still delivers
//! queued mutations), so memory stays bounded and no change is skipped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use crate::model::ChangeEvent;

/// Unread changes a [`ChangeFeed`] may hold before the engine stops
/// reading the changes feed for it. A page of changes (at most 1,000) or a
/// resync (one event per document) may take it past this at once.
pub const MAX_BACKLOG: usize = 4096;

/// Every change of a replica (or of one collection), in the order it was
/// applied, none dropped. From [`crate::Client::changes`].
#[derive(Debug)]
pub struct ChangeFeed {
    rx: mpsc::UnboundedReceiver<ChangeEvent>,
    backlog: Arc<Backlog>,
}

impl ChangeFeed {
    /// The next change; `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<ChangeEvent> {
        let ev = self.rx.recv().await?;
        self.backlog.taken();
        Some(ev)
    }

    /// The next change if one is waiting.
    pub fn try_recv(&mut self) -> Option<ChangeEvent> {
        let ev = self.rx.try_recv().ok()?;
        self.backlog.taken();
        Some(ev)
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        // Nothing will read what is queued: let the engine go on.
        self.backlog.unread.store(0, Ordering::SeqCst);
        self.backlog.read.notify_waiters();
    }
}

/// How far one feed's reader is behind.
#[derive(Debug, Default)]
struct Backlog {
    unread: AtomicUsize,
    /// Notified when a change is read while at or under the limit.
    read: Notify,
}

impl Backlog {
    fn taken(&self) {
        let before = self.unread.fetch_sub(1, Ordering::SeqCst);
        if before <= MAX_BACKLOG + 1 {
            self.read.notify_waiters();
        }
    }

    fn over(&self) -> bool {
        self.unread.load(Ordering::SeqCst) > MAX_BACKLOG
    }
}

struct Subscriber {
    collection: Option<String>,
    tx: mpsc::UnboundedSender<ChangeEvent>,
    backlog: Arc<Backlog>,
}

/// The feeds of one client.
#[derive(Default)]
pub(crate) struct Feeds {
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Feeds {
    /// A new feed of every change, or of `collection`'s.
    pub fn subscribe(&self, collection: Option<&str>) -> ChangeFeed {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        self.lock().push(Subscriber {
            collection: collection.map(str::to_owned),
            tx,
            backlog: backlog.clone(),
        });
        ChangeFeed { rx, backlog }
    }

    pub fn publish(&self, ev: &ChangeEvent) {
        self.lock().retain(|s| {
            if s.collection.as_ref().is_some_and(|c| *c != ev.collection) {
                return !s.tx.is_closed();
            }
            // Counted before sending, so the reader never sees more read
            // than sent.
            s.backlog.unread.fetch_add(1, Ordering::SeqCst);
            s.tx.send(ev.clone()).is_ok()
        });
    }

    /// Whether some open feed is over [`MAX_BACKLOG`].
    pub fn is_behind(&self) -> bool {
        self.first_behind().is_some()
    }

    fn first_behind(&self) -> Option<Arc<Backlog>> {
        self.lock()
            .iter()
            .find(|s| s.backlog.over() && !s.tx.is_closed())
            .map(|s| s.backlog.clone())
    }

    /// Return once no feed is over [`MAX_BACKLOG`].
    pub async fn wait_until_read(&self) {
        loop {
            let Some(backlog) = self.first_behind() else {
                return;
            };
            let read = backlog.read.notified();
            tokio::pin!(read);
            // Registered before the check, so a read in between wakes us.
            read.as_mut().enable();
            if backlog.over() {
                read.await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Origin};
    use std::time::Duration;

    fn ev(collection: &str, version: u64) -> ChangeEvent {
        ChangeEvent {
            op: Op::Put,
            collection: collection.into(),
            id: "d".into(),
            version,
            value: Some(serde_json::json!(version)),
            ts: None,
            origin: Origin::Remote,
        }
    }

    #[tokio::test]
    async fn feeds_keep_every_change_in_order_and_filter_by_collection() {
        let feeds = Feeds::default();
        let mut all = feeds.subscribe(None);
        let mut todos = feeds.subscribe(Some("todos"));
        for v in 1..=3000 {
            feeds.publish(&ev(if v % 2 == 0 { "todos" } else { "notes" }, v));
        }
        let mut seen = Vec::new();
        while let Some(e) = all.try_recv() {
            seen.push(e.version);
        }
        assert_eq!(seen, (1..=3000).collect::<Vec<_>>());
        let mut seen = Vec::new();
        while let Some(e) = todos.try_recv() {
            seen.push(e.version);
        }
        assert_eq!(seen, (2..=3000).step_by(2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_reader_behind_holds_the_engine_until_it_catches_up() {
        let feeds = Arc::new(Feeds::default());
        let mut feed = feeds.subscribe(None);
        for v in 0..MAX_BACKLOG as u64 + 10 {
            feeds.publish(&ev("c", v));
        }
        let waiting = tokio::spawn({
            let feeds = feeds.clone();
            async move { feeds.wait_until_read().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "held while over the limit");
        for _ in 0..9 {
            feed.recv().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "still one over");
        feed.recv().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released at the limit")
            .unwrap();
        // A feed nobody reads any more holds nothing up.
        for v in 0..MAX_BACKLOG as u64 + 10 {
            feeds.publish(&ev("c", v));
        }
        let waiting = tokio::spawn({
            let feeds = feeds.clone();
            async move { feeds.wait_until_read().await }
        });
        drop(feed);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released when the feed is dropped")
            .unwrap();
        feeds.publish(&ev("c", 0));
        assert!(feeds.lock().is_empty(), "a dropped feed is forgotten");
    }
}
