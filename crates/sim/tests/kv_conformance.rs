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
