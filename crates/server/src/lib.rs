//! # edgesync-server
//!
//! The native edgesync host: serves [`edgesync_core::Service`] over HTTP/1.1
//! (tokio + hyper) on an embedded SQLite file or a shared Redis/Valkey, and
//! wakes held long-polls the moment a change commits (in-process, and across
//! instances through Redis pub/sub).
//!
//! ```no_run
//! # async fn example(
//! #     config: edgesync_core::Config,
//! #     shutdown_signal: impl std::future::Future<Output = ()> + Send,
//! # ) -> Result<(), edgesync_server::ServerError> {
//! use edgesync_server::{Server, ServerOptions};
//! let mut options = ServerOptions::new(config);
//! options.listen = "127.0.0.1:0".into();
//! let server = Server::bind(options).await?;
//! println!("listening on {}", server.local_addr());
//! server.run(shutdown_signal).await
//! # }
//! ```
//!
//! Per request the server reads at most `max_body_bytes + 1` bytes of body
//! (the core answers 413 beyond that), calls [`edgesync_core::Service::handle`]
//! and logs one line (method, route template, user hash, status, duration;
//! never a token). Shutdown stops accepting, releases held long-polls so the
//! core answers them, lets in-flight requests finish (up to
//! [`ServerOptions::drain_timeout`]) and then closes the store.

mod host;
pub mod hub;
pub mod settings;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgesync_core::{Config, Handled, Host, RequestInfo, Service};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use edgesync_sqlite::{SqliteOptions, Synchronous};
pub use host::NativeHost;
pub use hub::{NotifyHub, Wake};
pub use store::{ParseStoreError, Store, StoreKind, SQLITE_FILE};

/// Longest a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `host:port` to listen on; port 0 picks a free port (see
    /// [`Server::local_addr`]).
    pub listen: String,
    /// Directory for the SQLite file (and, resolved by [`settings`], the
    /// generated JWT secret).
    pub data_dir: PathBuf,
    /// Which store to use.
    pub store: StoreKind,
    /// The core's settings.
    pub config: Config,
    /// SQLite tuning and durability (ignored for Redis).
    pub sqlite: SqliteOptions,
    /// How long shutdown waits for in-flight requests before closing the
    /// store anyway.
    pub drain_timeout: Duration,
}

impl ServerOptions {
    /// Defaults (`127.0.0.1:8787`, `./.edgesync`, SQLite with
    /// `synchronous=NORMAL`, 10 s drain) around `config`.
    pub fn new(config: Config) -> Self {
        Self {
            listen: settings::DEFAULT_LISTEN.into(),
            data_dir: PathBuf::from(settings::DEFAULT_DATA_DIR),
            store: StoreKind::Sqlite,
            config,
            sqlite: SqliteOptions::default(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Listening socket or data directory trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(String),
}

type EdgeService = Service<Store, NativeHost>;

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    service: Arc<EdgeService>,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Open the store, start cross-instance notification (Redis) and bind
    /// the listening socket.
    pub async fn bind(options: ServerOptions) -> Result<Self, ServerError> {
        let ServerOptions {
            listen,
            data_dir,
            store,
            config,
            sqlite,
            drain_timeout,
        } = options;
        if store == StoreKind::Sqlite {
            settings::ensure_data_dir(&data_dir).map_err(|source| ServerError::Io {
                context: format!("creating data directory {}", data_dir.display()),
                source,
            })?;
        }
        let kv = Store::open(&store, &data_dir, &sqlite).await?;
        let host = match &store {
            StoreKind::Sqlite => NativeHost::local(),
            StoreKind::Redis(url) => match NativeHost::with_redis(url).await {
                Ok(host) => host,
                Err(e) => {
                    kv.close().await;
                    return Err(ServerError::Store(format!("change notification: {e}")));
                }
            },
        };
        let bound = async {
            let listener = TcpListener::bind(&listen).await?;
            let local_addr = listener.local_addr()?;
            Ok::<_, std::io::Error>((listener, local_addr))
        }
        .await;
        let (listener, local_addr) = match bound {
            Ok(pair) => pair,
            Err(source) => {
                kv.close().await;
                host.close();
                return Err(ServerError::Io {
                    context: format!("listening on {listen}"),
                    source,
                });
            }
        };
        tracing::info!(
            addr = %local_addr,
            store = %store,
            data_dir = %data_dir.display(),
            "edgesync listening"
        );
        Ok(Self {
            listener,
            local_addr,
            service: Arc::new(Service::new(config, kv, host)),
            drain_timeout,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's host (clock, entropy, notification hub).
    pub fn host(&self) -> &NativeHost {
        self.service.host()
    }

    /// Serve until `shutdown` resolves, then shut down gracefully: stop
    /// accepting, release held long-polls, let in-flight requests finish
    /// (at most [`ServerOptions::drain_timeout`]) and close the store.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server {
            listener,
            service,
            drain_timeout,
            ..
        } = self;
        let host = service.host().clone();
        serve(
            listener,
            Arc::clone(&service),
            shutdown,
            drain_timeout,
            || host.shutdown(),
        )
        .await;
        service.kv().close().await;
        service.host().close();
        tracing::info!("edgesync stopped");
        Ok(())
    }
}

/// [`Server::bind`] then [`Server::run`].
pub async fn run(
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    Server::bind(options).await?.run(shutdown).await
}

/// What the connection loop serves; [`Service`] in production, a stand-in
/// in this crate's tests.
trait Handler: Send + Sync + 'static {
    fn max_body_bytes(&self) -> usize;
    fn handle(&self, request: Request<Vec<u8>>) -> impl Future<Output = Response<Vec<u8>>> + Send;
}

impl Handler for EdgeService {
    fn max_body_bytes(&self) -> usize {
        self.config().max_body_bytes
    }
    async fn handle(&self, request: Request<Vec<u8>>) -> Response<Vec<u8>> {
        // A held long-poll should cost little memory. The core's request
        // future is a few KiB, so it lives on the heap only while it runs;
        // between checks, a parked long-poll is just its `Parked` state and
        // a hub registration.
        let parked = match Box::pin(self.start(request)).await {
            Handled::Done(response) => return response,
            Handled::Parked(parked) => parked,
        };
        loop {
            // Registered before the check, so a change committed in
            // between still wakes us.
            let wake = self
                .host()
                .wait_for_change(parked.topic(), parked.deadline_millis());
            if let Some(response) = Box::pin(self.resume(&parked)).await {
                return response;
            }
            wake.await;
        }
    }
}

/// Accept connections until `shutdown`, then call `on_shutdown` (releases
/// held waits) and wait for open connections to finish, at most `drain`.
async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
    on_shutdown: impl FnOnce(),
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning; existing connections keep being served.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let service = service_fn(move |request| {
            let handler = Arc::clone(&handler);
            async move { handle_request(&*handler, request).await }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting, draining connections");
    on_shutdown();
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_secs = drain.as_secs(),
            "connections still open after the drain timeout; closing anyway"
        );
    }
}

/// The request body could not be read (client went away or was too slow);
/// hyper closes the connection.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("reading request body: {0}")]
    Read(#[from] hyper::Error),
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
}

async fn handle_request<H: Handler>(
    handler: &H,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BodyError> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let limit = handler.max_body_bytes().saturating_add(1);
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, read_body(body, &parts.headers, limit)).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                log_aborted(&parts.method, started, &e);
                return Err(e);
            }
            Err(_) => {
                let e = BodyError::Timeout(BODY_TIMEOUT);
                log_aborted(&parts.method, started, &e);
                return Err(e);
            }
        };
    let method = parts.method.clone();
    let request = Request::from_parts(parts, body);
    // A held long-poll is answered promptly at shutdown by the core itself
    // (the host reports `draining`).
    let response = handler.handle(request).await;
    let info = response.extensions().get::<RequestInfo>();
    tracing::info!(
        method = %method,
        route = info.map_or("unmatched", |i| i.route),
        user = info.and_then(|i| i.user_hash.as_deref()).unwrap_or("-"),
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response.map(|body| Full::new(Bytes::from(body))))
}

fn log_aborted(method: &http::Method, started: Instant, error: &BodyError) {
    tracing::info!(
        method = %method,
        route = "unmatched",
        user = "-",
        status = "aborted",
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        error = %error,
        "request"
    );
}

/// The body, cut at `limit` bytes (callers pass `max_body_bytes + 1`, so
/// the core sees that it is too long and answers 413). A declared length
/// over the limit is not read at all; the core gets `limit` placeholder
/// bytes, which it rejects by length alone.
async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len >= limit as u64) {
        return Ok(vec![0; limit]);
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = limit - buf.len();
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if buf.len() >= limit {
                break;
            }
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests;
