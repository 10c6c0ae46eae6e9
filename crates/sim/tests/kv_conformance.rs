//! The simulated stores honour the KV semantics the core relies on (the
//! same checks the native adapters run), including through the Spin adapter
//! over each quirky backend model.

use edgesync_core::kv::conformance;
use edgesync_kv_wasi::WasiKv;
use edgesync_sim::direct::block_on;
use edgesync_sim::store::{Backend, MemStore, SimBucket, StrictKv};

#[test]
fn strict_store_conforms() {
    block_on(conformance::run(&StrictKv::new(MemStore::new()), "t/"));
}

#[test]
fn spin_sqlite_model_conforms_through_the_adapter() {
    let store = MemStore::new();
    block_on(conformance::run(
        &WasiKv::new(SimBucket::new(store.clone(), Backend::SpinSqlite)),
        "t/",
    ));
    assert_eq!(store.fatal(), None);
}

#[test]
fn spin_redis_model_conforms_through_the_adapter() {
    let store = MemStore::new();
    block_on(conformance::run(
        &WasiKv::new(SimBucket::new(store.clone(), Backend::SpinRedis)),
        "t/",
    ));
    assert_eq!(store.fatal(), None);
}

/// Spin's Redis store sends `KEYS <keys...>` for get-many. With one key
/// that is a valid command: it scans the keyspace and, if the key exists,
/// crashes the host (it cannot parse a list of key names as key/value
/// pairs). The model reproduces that; the adapter must never send it.
#[test]
fn spin_redis_one_key_batches_never_reach_keys() {
    use edgesync_core::Kv;
    use edgesync_kv_wasi::RawBucket;

    let store = MemStore::new();
    let raw = SimBucket::new(store.clone(), Backend::SpinRedis);
    block_on(raw.set("u/k", b"v")).unwrap();
    // The model: an absent key matches nothing...
    assert_eq!(block_on(raw.get_many(vec!["u/absent".into()])), Ok(vec![]));
    assert_eq!(store.fatal(), None);
    // ...and an existing one would crash a real host.
    assert!(block_on(raw.get_many(vec!["u/k".into()])).is_err());
    assert!(store.fatal().is_some());

    let store = MemStore::new();
    let kv = WasiKv::new(SimBucket::new(store.clone(), Backend::SpinRedis));
    block_on(kv.set("u/k", b"v")).unwrap();
    assert_eq!(
        block_on(kv.get_many(&["u/k".into()])).unwrap(),
        vec![Some(b"v".to_vec())]
    );
    assert_eq!(
        block_on(kv.get_many(&["u/absent".into()])).unwrap(),
        vec![None]
    );
    assert_eq!(store.fatal(), None, "the adapter sent KEYS with one key");
}

/// Spin's Redis store can report `cas-failed` for a swap that happened (its
/// `UNWATCH <key>` after EXEC is refused, or the connection drops after
/// EXEC), and success for one that did not (an aborted EXEC). The model
/// draws the report per swap; through the adapter every swap is answered
/// by what really happened.
#[test]
fn spin_redis_swap_reports_are_untrustworthy_but_the_adapter_is_not() {
    use edgesync_core::{encode_counter, Kv};
    use edgesync_kv_wasi::{RawBucket, SwapError};

    let store = MemStore::new();
    let raw = SimBucket::new(store.clone(), Backend::SpinRedis);
    let (mut applied_but_failed, mut applied_and_ok) = (0, 0);
    for i in 0..64 {
        let key = format!("raw/{i}");
        block_on(raw.set(&key, b"old")).unwrap();
        let (cas, _) = block_on(raw.cas_current(&key)).unwrap();
        let report = block_on(raw.cas_swap(cas, b"new"));
        assert_eq!(
            block_on(raw.get(&key)).unwrap().as_deref(),
            Some(&b"new"[..])
        );
        match report {
            Err(SwapError::CasFailed) => applied_but_failed += 1,
            Ok(()) => applied_and_ok += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(
        applied_but_failed > 8 && applied_and_ok > 8,
        "{applied_but_failed} {applied_and_ok}"
    );

    let kv = WasiKv::new(SimBucket::new(store.clone(), Backend::SpinRedis));
    for i in 0..64u64 {
        let key = format!("adapted/{i}");
        block_on(kv.increment(&key, 0)).unwrap();
        let raw = block_on(kv.get(&key)).unwrap().unwrap();
        assert!(
            block_on(kv.compare_and_swap(&key, &raw, &encode_counter(i + 1))).unwrap(),
            "a swap that happened was reported lost"
        );
        assert!(
            !block_on(kv.compare_and_swap(&key, &raw, &encode_counter(i + 2))).unwrap(),
            "a swap from a stale value was reported won"
        );
        assert_eq!(
            block_on(kv.get(&key)).unwrap().as_deref(),
            Some(&encode_counter(i + 1)[..])
        );
    }
    assert_eq!(store.fatal(), None);
}
