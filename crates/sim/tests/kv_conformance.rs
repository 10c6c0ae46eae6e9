//! The simulated stores honour the KV semantics the core relies on (the
//! same checks the native adapters run), including through the Spin adapter
//! over each quirky backend model.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use edgesync_core::kv::conformance;
use edgesync_kv_wasi::WasiKv;
use edgesync_sim::store::{Backend, MemStore, SimBucket, StrictKv};

/// The stores only ever yield once and wake themselves, so polling in a
/// loop is a complete executor for them.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

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
