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
