//! Loading an app and serving it over HTTP/1.1, one fresh instance per
//! request (Spin's `trigger-http` `server.rs` and `wasi.rs`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::WasiHttpView;

use crate::host::{self, Ctx, OutboundPolicy};
use crate::kv::{KvAccess, KvBackend, DB_FILE_NAME};
use crate::manifest::{Manifest, TriggerRoute};
use crate::routing::{RouteMatch, Router};
use crate::variables::{resolve_app_variables, ComponentVariables};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// How to start a [`Harness`].
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// Path of the `spin.toml`.
    pub manifest: PathBuf,
    /// Directory for the key-value database (`sqlite_key_value.db`);
    /// created if missing.
    pub data_dir: PathBuf,
    /// Where to listen (port 0: pick a free one; see [`Harness::addr`]).
    pub listen: SocketAddr,
    /// Explicit app variable values (`--var name=value`); they win over
    /// `SPIN_VARIABLE_*` environment variables and manifest defaults.
    pub variables: Vec<(String, String)>,
    /// Key-value labels defined besides `"default"` (Spin needs runtime
    /// configuration for them).
    pub kv_labels: Vec<String>,
    /// How long [`Harness::shutdown`] lets in-flight requests finish.
    pub shutdown_grace: Duration,
    /// Directory where compiled components are kept between runs (keyed by
    /// the `.wasm` bytes and the wasmtime configuration); `None` compiles
    /// every time. Default: [`default_compile_cache`].
    pub compile_cache: Option<PathBuf>,
    /// Behave like Spin before 3.2, whose store handles keep every value
    /// they read or wrote (see [`crate::kv::KvAccess::with_read_cache`]).
    pub kv_read_cache: bool,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            manifest: PathBuf::from("spin.toml"),
            data_dir: PathBuf::from(".spin"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            variables: vec![],
            kv_labels: vec![],
            shutdown_grace: Duration::from_secs(5),
            compile_cache: Some(default_compile_cache()),
            kv_read_cache: false,
        }
    }
}

/// One component, compiled and pre-instantiated.
struct PreparedComponent {
    id: Arc<str>,
    pre: ProxyPre<Ctx>,
    kv: KvAccess,
    variables: Arc<ComponentVariables>,
    environment: Vec<(String, String)>,
    outbound_allowed: bool,
}

/// What every request needs.
struct App {
    router: Router,
    components: HashMap<String, Arc<PreparedComponent>>,
}

/// A running harness. Dropping it shuts it down (like [`Harness::shutdown`]).
pub struct Harness {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("addr", &self.addr).finish()
    }
}

impl Harness {
    /// Load the manifest, resolve variables, open the key-value store,
    /// compile and pre-instantiate every routed component, bind the
    /// listener and start serving on a runtime of its own. Every
    /// configuration problem (bad manifest, unresolved required variable,
    /// undefined key-value label, missing `.wasm`, an import the harness
    /// does not provide, no `wasi:http/incoming-handler` export) is an
    /// error here, before anything is served.
    pub fn start(options: HarnessOptions) -> anyhow::Result<Harness> {
        let app = Arc::new(load(&options)?);
        let listener = std::net::TcpListener::bind(options.listen)
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let grace = options.shutdown_grace;
        let thread = std::thread::Builder::new()
            .name("spin-harness".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("spin-harness-worker")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!(e).context("cannot start tokio")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    serve(app, listener, shutdown_rx, grace).await;
                });
                // Guests still running (their clients gone) are dropped here.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the harness thread died while starting"))??;
        tracing::info!("listening on http://{addr}");
        Ok(Harness {
            addr,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting connections, let in-flight requests finish (up to
    /// the options' `shutdown_grace`), then stop. Blocks until done.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One engine per process, so that harnesses started one after another
/// (a test suite) share compiled components.
fn engine() -> anyhow::Result<Engine> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine.clone());
    }
    // wasmtime 48 always supports async host calls (`Config::async_support`
    // is a no-op): a guest blocked in `wasi:io/poll` (e.g. `thread::sleep`)
    // parks its fiber and frees the worker thread.
    let engine = Engine::new(&Config::new())?;
    Ok(ENGINE.get_or_init(|| engine).clone())
}

/// Where compiled components are kept between runs unless
/// [`HarnessOptions::compile_cache`] says otherwise:
/// `<temp dir>/edgesync-spin-harness-cache`.
pub fn default_compile_cache() -> PathBuf {
    std::env::temp_dir().join("edgesync-spin-harness-cache")
}

/// Compile `path`, or reuse an earlier compilation of the same bytes by
/// the same wasmtime configuration: from `cache_dir` if given (loading one
/// takes milliseconds), else from this process (compiling a component takes
/// tens of seconds in a debug build).
fn compile(
    engine: &Engine,
    path: &std::path::Path,
    cache_dir: Option<&std::path::Path>,
) -> anyhow::Result<Component> {
    static MEMORY: OnceLock<Mutex<HashMap<(u64, usize), Component>>> = OnceLock::new();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let key = (hasher.finish(), bytes.len());

    let Some(dir) = cache_dir else {
        let memory = MEMORY.get_or_init(Default::default);
        if let Some(c) = memory.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let component = Component::new(engine, &bytes)?;
        memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, component.clone());
        return Ok(component);
    };

    let file = dir.join(format!("{:016x}-{}.cwasm", key.0, key.1));
    // SAFETY: the files in the cache directory are written by this function
    // only, from `Engine::precompile_component`, and appear atomically
    // (rename); wasmtime checks that a file was made by a compatible engine
    // before using it.
    if let Ok(component) = unsafe { Component::deserialize_file(engine, &file) } {
        return Ok(component);
    }
    let compiled = engine.precompile_component(&bytes)?;
    if let Err(e) = write_atomically(dir, &file, &compiled) {
        tracing::warn!(
            "cannot keep the compiled component in {}: {e}",
            dir.display()
        );
    }
    // SAFETY: `compiled` was just produced by this engine.
    Ok(unsafe { Component::deserialize(engine, &compiled)? })
}

fn write_atomically(
    dir: &std::path::Path,
    file: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

fn load(options: &HarnessOptions) -> anyhow::Result<App> {
    let manifest = Manifest::from_file(&options.manifest)?;
    let app_values = resolve_app_variables(&manifest.variables, &options.variables, |name| {
        std::env::var(name).ok()
    })
    .context("resolving application variables")?;

    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("cannot create data dir {}", options.data_dir.display()))?;
    let db = options.data_dir.join(DB_FILE_NAME);
    let backend = KvBackend::open(&db, &options.kv_labels)
        .map_err(|e| anyhow!("cannot open key-value database {}: {e}", db.display()))?;

    let engine = engine()?;
    let mut linker = Linker::<Ctx>::new(&engine);
    host::add_to_linker(&mut linker)?;

    let mut routes = vec![];
    let mut components = HashMap::new();
    for trigger in &manifest.http_triggers {
        let TriggerRoute::Path(route) = &trigger.route else {
            continue;
        };
        routes.push((route.as_str(), trigger.component.as_str()));
        if components.contains_key(&trigger.component) {
            continue;
        }
        let c = &manifest.components[&trigger.component];
        for label in &c.key_value_stores {
            if !backend.is_defined(label) {
                bail!(
                    "unknown key_value_stores label {label:?} for component {:?} \
                     (defined: {}; add others with --kv-label)",
                    c.id,
                    backend.labels().collect::<Vec<_>>().join(", ")
                );
            }
        }
        let variables = ComponentVariables::resolve(&c.id, &c.variables, &app_values)
            .with_context(|| format!("component {:?} variables", c.id))?;
        let started = Instant::now();
        let component = compile(&engine, &c.source, options.compile_cache.as_deref())
            .with_context(|| format!("component {:?}: cannot load {}", c.id, c.source.display()))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            anyhow::Error::from(e).context(format!(
                "component {:?} imports something the harness does not provide",
                c.id
            ))
        })?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| {
            anyhow::Error::from(e).context(format!(
                "component {:?} does not export wasi:http/incoming-handler@0.2.x",
                c.id
            ))
        })?;
        tracing::info!(
            component = %c.id,
            ms = started.elapsed().as_millis() as u64,
            "compiled {}",
            c.source.display()
        );
        if !c.allowed_outbound_hosts.is_empty() {
            tracing::warn!(
                component = %c.id,
                "allowed_outbound_hosts is not matched host by host: every outbound request is allowed"
            );
        }
        components.insert(
            trigger.component.clone(),
            Arc::new(PreparedComponent {
                id: c.id.as_str().into(),
                pre,
                kv: {
                    let kv = KvAccess::new(backend.clone(), c.key_value_stores.iter().cloned());
                    if options.kv_read_cache {
                        kv.with_read_cache()
                    } else {
                        kv
                    }
                },
                variables: Arc::new(variables),
                environment: c.environment.clone().into_iter().collect(),
                outbound_allowed: !c.allowed_outbound_hosts.is_empty(),
            }),
        );
    }
    let router = Router::build(routes).map_err(|e| anyhow!("invalid route: {e}"))?;
    for (route, component) in router.routes() {
        tracing::info!("route {route} -> {component}");
    }
    Ok(App { router, components })
}

async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    mut shutdown: oneshot::Receiver<()>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                };
                let app = app.clone();
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(app, req, client).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection from {client}: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: in-flight requests did not finish within {grace:?}");
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(
        Empty::new()
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

async fn handle(app: Arc<App>, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();

    let (component, response) = if path == "/.well-known/spin/health" {
        let body = Full::new(Bytes::from_static(b"OK"))
            .map_err(|e: Infallible| match e {})
            .boxed_unsync();
        ("-".to_string(), Response::new(body))
    } else if let Some(route) = app.router.route(&path) {
        let component = app.components[&route.component].clone();
        let response = match execute(&component, req, &route, client).await {
            Ok(response) => response,
            Err(e) => {
                tracing::error!(component = %component.id, "error processing request: {e:#}");
                empty(StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
        (route.component, response)
    } else {
        ("-".to_string(), empty(StatusCode::NOT_FOUND))
    };
    tracing::info!(
        target: "edgesync_spin_harness::request",
        method = %method,
        path = %path,
        component = %component,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// Spin's `prepare_request_headers` + `set_req_uri`: absolute URI, the
/// original headers followed by the `spin-*` ones.
fn prepare_request<B>(
    req: &mut Request<B>,
    route: &RouteMatch,
    client: SocketAddr,
) -> anyhow::Result<()> {
    let host = match req.headers().get(http::header::HOST) {
        Some(h) => h
            .to_str()
            .context("'Host' header is not valid UTF-8")?
            .to_string(),
        None => match req.uri().authority() {
            Some(a) => a.to_string(),
            None => bail!("no 'Host' header present in request"),
        },
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let full_url = format!("http://{host}{path_and_query}");
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(host.as_str())
        .path_and_query(path_and_query.as_str())
        .build()
        .context("'Host' header contains an invalid authority")?;

    let mut add = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            req.headers_mut().append(n, v);
        }
    };
    add("spin-path-info", &route.path_info);
    add("spin-full-url", &full_url);
    add("spin-matched-route", &route.based_route);
    add("spin-base-path", "/");
    add("spin-raw-component-route", &route.raw_route);
    add("spin-component-route", &route.component_route);
    add("spin-client-addr", &client.to_string());
    for (name, value) in &route.params {
        add(
            &format!(
                "spin-path-match-{}",
                name.to_ascii_lowercase().replace('_', "-")
            ),
            value,
        );
    }
    Ok(())
}

async fn execute(
    component: &Arc<PreparedComponent>,
    mut req: Request<Incoming>,
    route: &RouteMatch,
    client: SocketAddr,
) -> anyhow::Result<Response<Body>> {
    prepare_request(&mut req, route, client)?;

    let wasi = WasiCtxBuilder::new()
        .envs(&component.environment)
        // Keep the harness's stdout for its own "listening on" line.
        .stdout(std::io::stderr())
        .inherit_stderr()
        .build();
    let ctx = Ctx::new(
        wasi,
        OutboundPolicy {
            component: component.id.clone(),
            allowed: component.outbound_allowed,
        },
        component.kv.clone(),
        component.variables.clone(),
    );
    let mut store = Store::new(component.pre.engine(), ctx);
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let (tx, rx) = oneshot::channel();
    let out = store.data_mut().http().new_response_outparam(tx)?;

    let pre = component.pre.clone();
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, request, out)
            .await
    });
    let abort = task.abort_handle();

    match rx.await {
        Ok(response) => {
            let id = component.id.clone();
            tokio::spawn(async move {
                match task.await {
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => tracing::error!(
                        component = %id,
                        "guest invocation panicked after the response started: {e}"
                    ),
                    Ok(Err(e)) => tracing::error!(
                        component = %id,
                        "guest failed after the response started (the body may be cut short): {e:#}"
                    ),
                    Ok(Ok(())) => {}
                }
            });
            let response =
                response.map_err(|code| anyhow!("guest responded with error code {code:?}"))?;
            Ok(response.map(|body| AbortOnDropBody { body, abort }.boxed_unsync()))
        }
        Err(_) => match task.await {
            Err(e) => bail!("guest invocation panicked: {e}"),
            Ok(Err(e)) => Err(anyhow::Error::from(e).context("guest invocation failed")),
            Ok(Ok(())) => bail!("guest failed to produce a response prior to returning"),
        },
    }
}

/// Aborts the guest's task when hyper drops the response body (the client
/// went away), as Spin does.
struct AbortOnDropBody {
    body: Body,
    abort: tokio::task::AbortHandle,
}

impl Drop for AbortOnDropBody {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

impl hyper::body::Body for AbortOnDropBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_headers_are_appended_and_uri_made_absolute() {
        let router = Router::build([("/v1/docs/...", "docs")]).unwrap();
        let route = router.route("/v1/docs/todos/a1").unwrap();
        let mut req = Request::get("/v1/docs/todos/a1?x=1")
            .header("host", "example.test:8080")
            .header("spin-path-info", "/spoofed")
            .body(())
            .unwrap();
        prepare_request(&mut req, &route, "127.0.0.1:5555".parse().unwrap()).unwrap();
        assert_eq!(
            req.uri().to_string(),
            "http://example.test:8080/v1/docs/todos/a1?x=1"
        );
        let h = req.headers();
        assert_eq!(
            h["spin-full-url"],
            "http://example.test:8080/v1/docs/todos/a1?x=1"
        );
        // Spin appends after the client's headers: a spoofed value comes first.
        let infos: Vec<_> = h.get_all("spin-path-info").iter().collect();
        assert_eq!(infos, vec!["/spoofed", "/todos/a1"]);
        assert_eq!(h["spin-matched-route"], "/v1/docs/...");
        assert_eq!(h["spin-raw-component-route"], "/v1/docs/...");
        assert_eq!(h["spin-component-route"], "/v1/docs");
        assert_eq!(h["spin-base-path"], "/");
        assert_eq!(h["spin-client-addr"], "127.0.0.1:5555");
    }

    #[test]
    fn request_without_host_is_refused() {
        let router = Router::build([("/...", "all")]).unwrap();
        let route = router.route("/x").unwrap();
        let mut req = Request::get("/x").body(()).unwrap();
        assert!(prepare_request(&mut req, &route, "127.0.0.1:1".parse().unwrap()).is_err());
    }
}
