//! A mutation is committed when its slot swap succeeds, and from then on it
//! is acknowledged whatever the store does: moving the hint, deleting a
//! dead intent and compacting come after the commit, and their failure must
//! not turn it into a 503 (a client without an idempotency key would retry
//! and apply it twice). Any later writer resumes that housekeeping.

use std::sync::atomic::{AtomicBool, Ordering};

use edgesync_core::Config;
use edgesync_sim::direct::Api;
use edgesync_sim::faults::{Faulty, Op, Verdict};
use edgesync_sim::store::{MemStore, StrictKv};
use serde_json::json;

const NOW: u64 = 1_800_000_000_000;

#[test]
fn failed_housekeeping_never_fails_a_committed_write() {
    // While `broken` is on, the housekeeping operations fail: swaps of the
    // hint (`…/h`), reads of the compaction mark (`…/g`), and deletions of
    // entries and slots (`…/e/…`, `…/s/…`: dead intents, compaction's
    // garbage).
    let broken = AtomicBool::new(true);
    let kv = Faulty::new(StrictKv::new(MemStore::new()), |op: Op<'_>| {
        let any = |f: fn(&str) -> bool| op.keys().into_iter().any(f);
        let housekeeping = match op {
            Op::CompareAndSwap(key) => key.ends_with("/h"),
            Op::GetMany(_) => any(|k| k.ends_with("/g")),
            Op::DeleteMany(_) => any(|k| k.contains("/e/") || k.contains("/s/")),
            _ => false,
        };
        if housekeeping && broken.load(Ordering::SeqCst) {
            Verdict::Fail
        } else {
            Verdict::Pass
        }
    });
    let mut config = Config::with_secret(Vec::new());
    config.rate_limit_per_second = 0;
    config.retention_entries = 16;
    let api = Api::new(config, &kv, NOW, "tidy");
    let put = |n: u64| {
        let a = api.call("PUT", &format!("/v1/docs/c/d{}", n % 3), Some(&json!(n)));
        assert!(
            matches!(a.status, 200 | 201),
            "write {n}: {} {}",
            a.status,
            a.body
        );
        assert_eq!(a.body["version"], n, "write {n}");
    };

    // Housekeeping fails at every step: every write is still answered with
    // the version it was committed at, and the log reads back whole.
    for n in 1..=40 {
        put(n);
    }
    assert_eq!(api.head(), 40);
    let page = api.call("GET", "/v1/changes?since=0&limit=1000", None);
    assert_eq!(page.status, 200, "{}", page.body);
    let seqs: Vec<u64> = page.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "nothing compacted yet");

    // The store recovers: later writers catch the housekeeping up
    // (compaction moves the floor past the old cursors).
    broken.store(false, Ordering::SeqCst);
    for n in 41..=64 {
        put(n);
    }
    assert_eq!(api.head(), 64);
    assert_eq!(api.call("GET", "/v1/changes?since=0", None).status, 410);
    let tail = api.call("GET", "/v1/changes?since=56", None);
    assert_eq!(tail.status, 200, "{}", tail.body);
    assert_eq!(tail.body["changes"].as_array().unwrap().len(), 8);
    for (id, value) in [("d0", 63), ("d1", 64), ("d2", 62)] {
        let doc = api.call("GET", &format!("/v1/docs/c/{id}"), None);
        assert_eq!(doc.body["value"], value, "{id}");
    }
}

#[test]
fn a_stale_hint_heals_on_the_next_commit() {
    // The writers due to move the hint (every 8th seq) all failed to:
    // tail scans would start ever further back until a compaction came
    // by. The first commit that finds the hint two steps behind moves it,
    // whatever its seq.
    let store = MemStore::new();
    let hint_swaps_fail = AtomicBool::new(true);
    let kv = Faulty::new(StrictKv::new(store.clone()), |op: Op<'_>| {
        let hint_swap = matches!(op, Op::CompareAndSwap(key) if key.ends_with("/h"));
        if hint_swap && hint_swaps_fail.load(Ordering::SeqCst) {
            Verdict::Fail
        } else {
            Verdict::Pass
        }
    });
    let mut config = Config::with_secret(Vec::new());
    config.rate_limit_per_second = 0;
    let api = Api::new(config, &kv, NOW, "tidy");
    let hint = || {
        let raw = store.dump().remove("u/tidy/h");
        raw.map_or(0, |raw| {
            edgesync_core::decode_counter(&raw).expect("a counter")
        })
    };
    let put = |n: u64| {
        let a = api.call("PUT", "/v1/docs/c/d", Some(&json!(n)));
        assert!(matches!(a.status, 200 | 201), "write {n}: {}", a.body);
    };

    for n in 1..=12 {
        put(n);
    }
    assert_eq!(hint(), 0, "every hint swap failed");
    hint_swaps_fail.store(false, Ordering::SeqCst);
    put(13);
    assert_eq!(
        hint(),
        0,
        "13 is not a multiple of 8 and trails by less than 16"
    );
    for n in 14..=17 {
        put(n);
    }
    assert_eq!(hint(), 16, "the writer of 16 moved it");

    hint_swaps_fail.store(true, Ordering::SeqCst);
    for n in 18..=33 {
        put(n);
    }
    assert_eq!(hint(), 16);
    hint_swaps_fail.store(false, Ordering::SeqCst);
    put(34);
    assert_eq!(hint(), 34, "the first commit 16 past the hint moved it");
    assert_eq!(api.head(), 34);
}
