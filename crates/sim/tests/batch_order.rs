//! A batch is an offline queue: its items land in the log in the order the
//! user made them. An item that cannot be applied for now (it lost every
//! race to other writers) stops the batch with 503 and `Retry-After`, so
//! that nothing behind it lands first; its answer lists the results of the
//! items settled before it, refusals included; retrying the whole batch
//! replays what was applied and goes on in order.

use std::sync::atomic::{AtomicBool, Ordering};

use edgesync_core::Config;
use edgesync_sim::direct::Api;
use edgesync_sim::faults::{Faulty, Op, Verdict};
use edgesync_sim::store::{MemStore, StrictKv};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000_000;

/// `(id, value)` of each change `answer` (a page of `/v1/changes`) holds.
fn logged(answer: &Value) -> Vec<(&str, &Value)> {
    answer["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), &e["value"]))
        .collect()
}

#[test]
fn an_item_that_loses_every_race_stops_the_batch_and_the_retry_keeps_its_order() {
    // While the mutation of `todos/jammed` runs (from the first read of its
    // document key to the first read of another document's key) and `jam`
    // is on, every compare-and-swap loses, as it would to a crowd of other
    // writers that always win.
    let jam = AtomicBool::new(true);
    let in_jammed = AtomicBool::new(false);
    let kv = Faulty::new(StrictKv::new(MemStore::new()), |op: Op<'_>| {
        if let Op::Get(_) | Op::GetMany(_) = op {
            for key in op.keys() {
                if let Some((_, doc)) = key.split_once("/d/") {
                    in_jammed.store(doc == "todos/jammed", Ordering::SeqCst);
                }
            }
        }
        let jammed = jam.load(Ordering::SeqCst) && in_jammed.load(Ordering::SeqCst);
        match op {
            Op::CompareAndSwap(_) if jammed => Verdict::Lose,
            _ => Verdict::Pass,
        }
    });
    let mut config = Config::with_secret(Vec::new());
    config.rate_limit_per_second = 0;
    let api = Api::new(config, &kv, NOW, "queue");
    let call = |method, uri, body| {
        let a = api.call(method, uri, body);
        (a.status, a.retry_after, a.body)
    };

    let zero = json!(0);
    assert_eq!(call("PUT", "/v1/docs/todos/b", Some(&zero)).0, 201);
    let batch = json!({"mutations": [
        {"id": "m1", "op": "put", "collection": "todos", "doc": "a", "value": 1},
        {"id": "m1b", "op": "put", "collection": "todos", "doc": "b", "value": 1, "if_version": 0},
        {"id": "m2", "op": "put", "collection": "todos", "doc": "jammed", "value": 2},
        {"id": "m3", "op": "put", "collection": "todos", "doc": "a", "value": 3},
    ]});
    let (status, retry_after, body) = call("POST", "/v1/mutations", Some(&batch));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "unavailable", "{body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    // The answer settles the items before the stop: the client learns of
    // the refusal now, and need not send it again.
    let settled: Vec<(&str, u64)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(settled, [("m1", 201), ("m1b", 412)], "{body}");
    assert_eq!(
        body["results"][1]["problem"]["current_version"], 1,
        "{body}"
    );
    // The item before the jam stands; nothing behind it was applied.
    let (_, _, changes) = call("GET", "/v1/changes?since=0", None);
    assert_eq!(
        logged(&changes),
        [("b", &json!(0)), ("a", &json!(1))],
        "{changes}"
    );
    assert_eq!(call("GET", "/v1/docs/todos/jammed", None).0, 404);

    // The races are over: the same batch again replays m1 and applies the
    // rest in order, so `a` ends at the value the user gave it last.
    jam.store(false, Ordering::SeqCst);
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
    assert_eq!(
        results,
        [(201, true), (412, false), (201, false), (200, false)],
        "{body}"
    );
    let (_, _, changes) = call("GET", "/v1/changes?since=0", None);
    assert_eq!(
        logged(&changes),
        [
            ("b", &json!(0)),
            ("a", &json!(1)),
            ("jammed", &json!(2)),
            ("a", &json!(3))
        ],
        "{changes}"
    );
    assert_eq!(call("GET", "/v1/docs/todos/a", None).2["value"], 3);
}

#[test]
fn a_batch_whose_head_cannot_be_read_still_settles_every_item() {
    // Every item is handled, then reading the head (a plain read of the
    // hint, `…/h`) fails: the 503 lists every item's result, so that the
    // client sends none of them again — the refused patch would be judged
    // afresh, after the put of its document that followed it.
    let kv = Faulty::new(StrictKv::new(MemStore::new()), |op: Op<'_>| match op {
        Op::Get(key) if key.ends_with("/h") => Verdict::Fail,
        _ => Verdict::Pass,
    });
    let mut config = Config::with_secret(Vec::new());
    config.rate_limit_per_second = 0;
    let api = Api::new(config, &kv, NOW, "head");
    let batch = json!({"mutations": [
        {"id": "p", "op": "patch", "collection": "todos", "doc": "a", "value": {"x": 1}},
        {"id": "q", "op": "put", "collection": "todos", "doc": "a", "value": {"y": 2}},
    ]});
    let answer = api.call("POST", "/v1/mutations", Some(&batch));
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.retry_after.is_some());
    let settled: Vec<(&str, u64)> = answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(settled, [("p", 404), ("q", 201)], "{}", answer.body);
}
