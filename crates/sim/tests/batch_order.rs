//! A batch is an offline queue: its items land in the log in the order the
//! user made them. An item that cannot be applied for now (it lost every
//! race to other writers) stops the batch with 503 and `Retry-After`, so
//! that nothing behind it lands first; retrying the whole batch replays
//! what was applied and goes on in order.

use std::sync::atomic::{AtomicBool, Ordering};

use edgesync_core::{Config, Kv, KvError};
use edgesync_sim::direct::Api;
use edgesync_sim::store::{MemStore, StrictKv};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000_000;

/// A store on which, while the mutation of `todos/jammed` runs (from the
/// first read of its document key to the first read of another document's
/// key) and `jam` is on, every compare-and-swap loses, as it would to a
/// crowd of other writers that always win.
struct JammedKv {
    inner: StrictKv,
    jam: AtomicBool,
    in_jammed: AtomicBool,
}

impl JammedKv {
    fn saw(&self, key: &str) {
        if let Some((_, doc)) = key.split_once("/d/") {
            self.in_jammed
                .store(doc == "todos/jammed", Ordering::SeqCst);
        }
    }
}

impl Kv for JammedKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.saw(key);
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        keys.iter().for_each(|k| self.saw(k));
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.inner.set(key, value).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        self.inner.delete_many(keys).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        if self.jam.load(Ordering::SeqCst) && self.in_jammed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.inner.compare_and_swap(key, current, new).await
    }
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.inner.increment(key, delta).await
    }
}

#[test]
fn an_item_that_loses_every_race_stops_the_batch_and_the_retry_keeps_its_order() {
    let kv = JammedKv {
        inner: StrictKv::new(MemStore::new()),
        jam: AtomicBool::new(true),
        in_jammed: AtomicBool::new(false),
    };
    let mut config = Config::with_secret(Vec::new());
    config.rate_limit_per_second = 0;
    let api = Api::new(config, &kv, NOW, "queue");
    let call = |method, uri, body| {
        let a = api.call(method, uri, body);
        (a.status, a.retry_after, a.body)
    };

    let batch = json!({"mutations": [
        {"id": "m1", "op": "put", "collection": "todos", "doc": "a", "value": 1},
        {"id": "m2", "op": "put", "collection": "todos", "doc": "jammed", "value": 2},
        {"id": "m3", "op": "put", "collection": "todos", "doc": "a", "value": 3},
    ]});
    let (status, retry_after, body) = call("POST", "/v1/mutations", Some(&batch));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "unavailable", "{body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    // The item before the jam stands; nothing behind it was applied.
    let (_, _, changes) = call("GET", "/v1/changes?since=0", None);
    let logged: Vec<(&str, &Value)> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), &e["value"]))
        .collect();
    assert_eq!(logged, [("a", &json!(1))], "{changes}");
    assert_eq!(call("GET", "/v1/docs/todos/jammed", None).0, 404);

    // The races are over: the same batch again replays m1 and applies the
    // rest in order, so `a` ends at the value the user gave it last.
    kv.jam.store(false, Ordering::SeqCst);
    let (status, _, body) = call("POST", "/v1/mutations", Some(&batch));
    assert_eq!(status, 200, "{body}");
    let results: Vec<(u64, bool)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["replayed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(results, [(201, true), (201, false), (200, false)], "{body}");
    let (_, _, changes) = call("GET", "/v1/changes?since=0", None);
    let logged: Vec<(&str, &Value)> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), &e["value"]))
        .collect();
    assert_eq!(
        logged,
        [("a", &json!(1)), ("jammed", &json!(2)), ("a", &json!(3))],
        "{changes}"
    );
    assert_eq!(call("GET", "/v1/docs/todos/a", None).2["value"], 3);
}
