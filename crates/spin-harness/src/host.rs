//! The per-request store data and the Spin-specific host interfaces:
//! `fermyon:spin/key-value@2.0.0`, `fermyon:spin/variables@2.0.0`,
//! `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2` and
//! `wasi:config/store@0.2.0-draft-2024-09-27`, bound with `bindgen!` against
//! the WIT files in `crates/spin-harness/wit/`.
//!
//! The mapping from store results to WIT errors follows Spin's
//! `factor-key-value/src/host.rs` and `factor-variables/src/host.rs`.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::kv::{self, KvAccess, KvError, SqliteStore, SwapError};
use crate::variables::{ComponentVariables, VariableError};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "edgesync:spin-harness/host",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/key-value.store": super::SpinStore,
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
        require_store_data_send: true,
    });
}

use bindings::fermyon::spin::{key_value as spin_kv, variables as spin_vars};
use bindings::wasi::config::store as wasi_config;
use bindings::wasi::keyvalue::{atomics, batch, store as wasi_kv};

/// A `fermyon:spin/key-value` `store` resource.
pub struct SpinStore(SqliteStore);

/// A `wasi:keyvalue/store` `bucket` resource.
pub struct Bucket(SqliteStore);

/// A `wasi:keyvalue/atomics` `cas` resource, with the rep of the bucket it
/// was opened from (Spin re-opens a CAS through that bucket after a failed
/// swap).
pub struct CasHandle {
    cas: kv::Cas,
    bucket_rep: u32,
}

/// Outgoing HTTP policy of a component. Spin refuses every outgoing
/// request unless the component lists `allowed_outbound_hosts`; the harness
/// refuses when the list is empty and otherwise lets every request through
/// (it does not implement Spin's host-pattern matching).
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    /// The component's id (for logs).
    pub component: Arc<str>,
    /// Whether any outbound host is allowed.
    pub allowed: bool,
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        drop(fut);
        if !self.allowed {
            tracing::warn!(
                component = %self.component,
                uri = %request.uri(),
                "outbound request denied: the component has no allowed_outbound_hosts"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// Everything one instance (one request) can reach.
pub struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: OutboundPolicy,
    kv: KvAccess,
    variables: Arc<ComponentVariables>,
}

impl Ctx {
    /// Fresh state for one request.
    pub fn new(
        wasi: WasiCtx,
        outbound: OutboundPolicy,
        kv: KvAccess,
        variables: Arc<ComponentVariables>,
    ) -> Self {
        Self {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            outbound,
            kv,
            variables,
        }
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Add every import the harness provides to `linker`.
pub fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    bindings::Host_::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |ctx| ctx)?;
    Ok(())
}

/// Run a (short, synchronous) SQLite operation without stalling the async
/// worker's other tasks, as Spin does with `block_in_place`.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A store result as Spin's host returns it: guest-visible errors inside,
/// Spin's panics as traps.
fn guest<T, E>(
    result: Result<T, KvError>,
    map: impl FnOnce(KvError) -> E,
) -> wasmtime::Result<Result<T, E>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(KvError::SpinPanic(msg)) => {
            tracing::error!("key-value operation trapped (Spin panics here): {msg}");
            Err(wasmtime::format_err!(
                "key-value operation trapped (Spin's SQLite backend panics here): {msg}"
            ))
        }
        Err(e) => Ok(Err(map(e))),
    }
}

fn spin_error(e: KvError) -> spin_kv::Error {
    match e {
        KvError::StoreTableFull => spin_kv::Error::StoreTableFull,
        KvError::NoSuchStore => spin_kv::Error::NoSuchStore,
        KvError::AccessDenied => spin_kv::Error::AccessDenied,
        KvError::Other(m) | KvError::SpinPanic(m) => spin_kv::Error::Other(m),
    }
}

fn wasi_error(e: KvError) -> wasi_kv::Error {
    match e {
        KvError::AccessDenied => wasi_kv::Error::AccessDenied,
        KvError::NoSuchStore => wasi_kv::Error::NoSuchStore,
        KvError::StoreTableFull => wasi_kv::Error::Other("store table full".to_string()),
        KvError::Other(m) | KvError::SpinPanic(m) => wasi_kv::Error::Other(m),
    }
}

impl spin_kv::Host for Ctx {}

impl spin_kv::HostStore for Ctx {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<SpinStore>, spin_kv::Error>> {
        match self.kv.open(&label) {
            Ok(store) => Ok(Ok(self.table.push(SpinStore(store))?)),
            Err(e) => Ok(Err(spin_error(e))),
        }
    }

    async fn get(
        &mut self,
        this: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.get(&key)), spin_error)
    }

    async fn set(
        &mut self,
        this: Resource<SpinStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.set(&key, &value)), spin_error)
    }

    async fn delete(
        &mut self,
        this: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.delete(&key)), spin_error)
    }

    async fn exists(
        &mut self,
        this: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, spin_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.exists(&key)), spin_error)
    }

    async fn get_keys(
        &mut self,
        this: Resource<SpinStore>,
    ) -> wasmtime::Result<Result<Vec<String>, spin_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.get_keys()), spin_error)
    }

    async fn drop(&mut self, this: Resource<SpinStore>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl spin_vars::Host for Ctx {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, spin_vars::Error>> {
        Ok(self.variables.get(&name).map_err(|e| match e {
            VariableError::InvalidName(m) => spin_vars::Error::InvalidName(m),
            VariableError::Undefined(m) => spin_vars::Error::Undefined(m),
            other => spin_vars::Error::Other(other.to_string()),
        }))
    }
}

impl wasi_config::Host for Ctx {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, wasi_config::Error>> {
        Ok(Ok(self.variables.get(&key).ok()))
    }

    async fn get_all(
        &mut self,
    ) -> wasmtime::Result<Result<Vec<(String, String)>, wasi_config::Error>> {
        Ok(Ok(self
            .variables
            .all()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()))
    }
}

impl wasi_kv::Host for Ctx {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, wasi_kv::Error>> {
        match self.kv.open(&identifier) {
            Ok(store) => Ok(Ok(self.table.push(Bucket(store))?)),
            Err(e) => Ok(Err(wasi_error(e))),
        }
    }
}

impl wasi_kv::HostBucket for Ctx {
    async fn get(
        &mut self,
        this: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.get(&key)), wasi_error)
    }

    async fn set(
        &mut self,
        this: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.set(&key, &value)), wasi_error)
    }

    async fn delete(
        &mut self,
        this: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.delete(&key)), wasi_error)
    }

    async fn exists(
        &mut self,
        this: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wasi_kv::Error>> {
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.exists(&key)), wasi_error)
    }

    async fn list_keys(
        &mut self,
        this: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<wasi_kv::KeyResponse, wasi_kv::Error>> {
        if cursor.is_some() {
            return Ok(Err(wasi_kv::Error::Other(
                "list_keys: cursor not supported".to_owned(),
            )));
        }
        let store = &self.table.get(&this)?.0;
        guest(blocking(|| store.get_keys()), wasi_error)
            .map(|r| r.map(|keys| wasi_kv::KeyResponse { keys, cursor: None }))
    }

    async fn drop(&mut self, this: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl batch::Host for Ctx {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<kv::KeyValue>, wasi_kv::Error>> {
        let store = &self.table.get(&bucket)?.0;
        if keys.is_empty() {
            return Ok(Ok(vec![]));
        }
        guest(blocking(|| store.get_many(keys)), wasi_error)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        let store = &self.table.get(&bucket)?.0;
        if key_values.is_empty() {
            return Ok(Ok(()));
        }
        guest(blocking(|| store.set_many(key_values)), wasi_error)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wasi_kv::Error>> {
        let store = &self.table.get(&bucket)?.0;
        if keys.is_empty() {
            return Ok(Ok(()));
        }
        guest(blocking(|| store.delete_many(keys)), wasi_error)
    }
}

impl Ctx {
    /// Spin's `HostCas::new`: a CAS handle on `key` of the bucket `bucket_rep`.
    fn new_cas(
        &mut self,
        bucket_rep: u32,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, wasi_kv::Error>> {
        let bucket: Resource<Bucket> = Resource::new_borrow(bucket_rep);
        let Ok(Bucket(store)) = self.table.get(&bucket) else {
            // Spin: `get_store_wasi` fails with `no-such-store` when the
            // bucket is gone.
            return Ok(Err(wasi_kv::Error::NoSuchStore));
        };
        let cas = store.new_cas(&key);
        Ok(Ok(self.table.push(CasHandle { cas, bucket_rep })?))
    }
}

impl atomics::HostCas for Ctx {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, wasi_kv::Error>> {
        // Type-check the handle (traps on a bad one, like any borrow).
        self.table.get(&bucket)?;
        self.new_cas(bucket.rep(), key)
    }

    async fn current(
        &mut self,
        this: Resource<CasHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_kv::Error>> {
        let handle = self.table.get_mut(&this)?;
        guest(blocking(|| handle.cas.current()), wasi_error)
    }

    async fn drop(&mut self, this: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl atomics::Host for Ctx {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wasi_kv::Error>> {
        let store = &self.table.get(&bucket)?.0;
        guest(blocking(|| store.increment(&key, delta)), wasi_error)
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let handle = self.table.delete(cas)?;
        match blocking(|| handle.cas.swap(&value)) {
            Ok(()) => Ok(Ok(())),
            Err(SwapError::CasFailed(_)) => {
                // Spin hands back a new CAS on the same key, on which it has
                // already called `current()`.
                let new = match self.new_cas(handle.bucket_rep, handle.cas.key().to_string())? {
                    Ok(new) => new,
                    Err(e) => return Ok(Err(atomics::CasError::StoreError(e))),
                };
                let new_handle = self.table.get_mut(&new)?;
                match guest(blocking(|| new_handle.cas.current()), wasi_error)? {
                    Ok(_) => Ok(Err(atomics::CasError::CasFailed(new))),
                    Err(e) => Ok(Err(atomics::CasError::StoreError(e))),
                }
            }
            Err(SwapError::Store(e)) => guest(Err::<(), _>(e), |e| {
                atomics::CasError::StoreError(wasi_error(e))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::kv::KvBackend;
    use atomics::{Host as _, HostCas as _};
    use batch::Host as _;
    use wasi_config::Host as _;
    use wasi_kv::HostBucket as _;

    fn ctx(allowed: &[&str]) -> Ctx {
        let backend = KvBackend::open_in_memory(&["other".to_string()]).unwrap();
        let app: HashMap<String, String> = [("s".to_string(), "v".to_string())].into();
        let templates: BTreeMap<String, String> =
            [("greeting".to_string(), "hi {{ s }}".to_string())].into();
        Ctx::new(
            WasiCtx::builder().build(),
            OutboundPolicy {
                component: "c".into(),
                allowed: false,
            },
            KvAccess::new(backend, allowed.iter().map(|s| s.to_string())),
            Arc::new(ComponentVariables::resolve("c", &templates, &app).unwrap()),
        )
    }

    async fn bucket(ctx: &mut Ctx) -> Resource<Bucket> {
        wasi_kv::Host::open(ctx, "default".into())
            .await
            .unwrap()
            .unwrap()
    }

    fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
        Resource::new_borrow(r.rep())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn open_checks_labels_on_both_interfaces() {
        let mut c = ctx(&["default", "undefined"]);
        assert!(spin_kv::HostStore::open(&mut c, "default".into())
            .await
            .unwrap()
            .is_ok());
        assert!(matches!(
            spin_kv::HostStore::open(&mut c, "other".into())
                .await
                .unwrap(),
            Err(spin_kv::Error::AccessDenied)
        ));
        assert!(matches!(
            spin_kv::HostStore::open(&mut c, "undefined".into())
                .await
                .unwrap(),
            Err(spin_kv::Error::NoSuchStore)
        ));
        assert!(matches!(
            wasi_kv::Host::open(&mut c, "other".into()).await.unwrap(),
            Err(wasi_kv::Error::AccessDenied)
        ));
        assert!(matches!(
            wasi_kv::Host::open(&mut c, "undefined".into())
                .await
                .unwrap(),
            Err(wasi_kv::Error::NoSuchStore)
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn both_interfaces_share_data() {
        let mut c = ctx(&["default"]);
        let s = spin_kv::HostStore::open(&mut c, "default".into())
            .await
            .unwrap()
            .unwrap();
        spin_kv::HostStore::set(&mut c, borrow(&s), "k".into(), b"v".to_vec())
            .await
            .unwrap()
            .unwrap();
        let b = bucket(&mut c).await;
        assert_eq!(
            wasi_kv::HostBucket::get(&mut c, borrow(&b), "k".into())
                .await
                .unwrap()
                .unwrap(),
            Some(b"v".to_vec())
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_swap_hands_back_a_cas_that_already_read_the_new_value() {
        let mut c = ctx(&["default"]);
        let b = bucket(&mut c).await;
        wasi_kv::HostBucket::set(&mut c, borrow(&b), "k".into(), b"1".to_vec())
            .await
            .unwrap()
            .unwrap();
        let cas = c.new(borrow(&b), "k".into()).await.unwrap().unwrap();
        assert_eq!(
            c.current(borrow(&cas)).await.unwrap().unwrap(),
            Some(b"1".to_vec())
        );
        wasi_kv::HostBucket::set(&mut c, borrow(&b), "k".into(), b"2".to_vec())
            .await
            .unwrap()
            .unwrap();
        let again = match c.swap(cas, b"x".to_vec()).await.unwrap() {
            Err(atomics::CasError::CasFailed(again)) => again,
            other => panic!("expected cas-failed, got {other:?}"),
        };
        // The new handle already read "2" (no current() call): had it not,
        // its swap would be an unconditional upsert and succeed below.
        wasi_kv::HostBucket::set(&mut c, borrow(&b), "k".into(), b"3".to_vec())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            c.swap(again, b"x".to_vec()).await.unwrap(),
            Err(atomics::CasError::CasFailed(_))
        ));
        assert_eq!(
            wasi_kv::HostBucket::get(&mut c, borrow(&b), "k".into())
                .await
                .unwrap()
                .unwrap(),
            Some(b"3".to_vec())
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_swap_after_the_bucket_is_gone_is_a_store_error() {
        let mut c = ctx(&["default"]);
        let b = bucket(&mut c).await;
        wasi_kv::HostBucket::set(&mut c, borrow(&b), "k".into(), b"1".to_vec())
            .await
            .unwrap()
            .unwrap();
        let cas = c.new(borrow(&b), "k".into()).await.unwrap().unwrap();
        c.current(borrow(&cas)).await.unwrap().unwrap();
        wasi_kv::HostBucket::set(&mut c, borrow(&b), "k".into(), b"2".to_vec())
            .await
            .unwrap()
            .unwrap();
        wasi_kv::HostBucket::drop(&mut c, b).await.unwrap();
        assert!(matches!(
            c.swap(cas, b"x".to_vec()).await.unwrap(),
            Err(atomics::CasError::StoreError(wasi_kv::Error::NoSuchStore))
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn increment_on_a_wrong_length_value_traps() {
        let mut c = ctx(&["default"]);
        let b = bucket(&mut c).await;
        wasi_kv::HostBucket::set(&mut c, borrow(&b), "n".into(), b"7".to_vec())
            .await
            .unwrap()
            .unwrap();
        let trap = c.increment(borrow(&b), "n".into(), 1).await.unwrap_err();
        assert!(trap.to_string().contains("incorrect length"), "{trap}");
        // The label stays poisoned: a plain get traps too.
        assert!(wasi_kv::HostBucket::get(&mut c, borrow(&b), "n".into())
            .await
            .is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn batch_and_list_quirks() {
        let mut c = ctx(&["default"]);
        let b = bucket(&mut c).await;
        assert_eq!(
            c.get_many(borrow(&b), vec![]).await.unwrap().unwrap(),
            vec![]
        );
        c.set_many(borrow(&b), vec![("a".into(), b"1".to_vec())])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            c.get_many(borrow(&b), vec!["zz".into(), "a".into()])
                .await
                .unwrap()
                .unwrap(),
            vec![("a".to_string(), Some(b"1".to_vec()))]
        );
        assert!(matches!(
            c.list_keys(borrow(&b), Some("0".into())).await.unwrap(),
            Err(wasi_kv::Error::Other(m)) if m == "list_keys: cursor not supported"
        ));
        let listed = c.list_keys(borrow(&b), None).await.unwrap().unwrap();
        assert_eq!(listed.keys, vec!["a".to_string()]);
        assert_eq!(listed.cursor, None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn variables_and_wasi_config() {
        let mut c = ctx(&[]);
        assert_eq!(
            spin_vars::Host::get(&mut c, "greeting".into())
                .await
                .unwrap()
                .unwrap(),
            "hi v"
        );
        assert!(matches!(
            spin_vars::Host::get(&mut c, "missing".into())
                .await
                .unwrap(),
            Err(spin_vars::Error::Undefined(_))
        ));
        assert!(matches!(
            spin_vars::Host::get(&mut c, "Nope".into()).await.unwrap(),
            Err(spin_vars::Error::InvalidName(_))
        ));
        assert_eq!(
            wasi_config::Host::get(&mut c, "greeting".into())
                .await
                .unwrap()
                .unwrap(),
            Some("hi v".to_string())
        );
        assert_eq!(
            wasi_config::Host::get(&mut c, "Nope".into())
                .await
                .unwrap()
                .unwrap(),
            None
        );
        assert_eq!(
            c.get_all().await.unwrap().unwrap(),
            vec![("greeting".to_string(), "hi v".to_string())]
        );
    }
}
