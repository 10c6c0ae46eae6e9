//! # edgesync-server
//!
//! The native edgesync host: serves [`edgesync_core::Service`] over HTTP/1.1
//! (tokio and a small HTTP/1.1 layer of its own, see [`HttpOptions`]) on
//! an embedded SQLite file or a shared Redis/Valkey, and
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
//! (the core answers 413 beyond that), calls [`edgesync_core::Service::start`]
//! and logs one line (method, route template, user hash, status, duration;
//! never a token). A long-poll with nothing to report yet is parked: the
//! connection keeps only the core's [`edgesync_core::Parked`] state, a hub
//! registration and its socket until a change (or the deadline) comes.
//! Shutdown stops accepting, closes idle connections, releases held
//! long-polls so the core answers them, lets in-flight requests finish (up
//! to [`ServerOptions::drain_timeout`]) and then closes the store.
//! With [`ServerOptions::backup`] set, a background task copies the SQLite
//! store on a schedule while it serves (see [`BackupOptions`]).

mod backup;
mod host;
mod http1;
pub mod hub;
pub mod settings;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgesync_core::{Config, Handled, Host, Parked, RequestInfo, Service};
use http::{Request, Response};
use tokio::net::{TcpListener, TcpSocket};

use http1::{Handler, Lifecycle, Shared, Step};

pub use backup::BackupOptions;
pub use edgesync_sqlite::{SqliteOptions, Synchronous};
pub use host::NativeHost;
pub use http1::HttpOptions;
pub use hub::{NotifyHub, Wake};
pub use store::{ParseStoreError, Store, StoreKind, SQLITE_FILE};

/// Pending connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

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
    /// Timeouts and limits of the HTTP layer.
    pub http: HttpOptions,
    /// Scheduled backups of the SQLite store (`None`: off).
    pub backup: Option<BackupOptions>,
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
            http: HttpOptions::default(),
            backup: None,
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Listening socket or data directory trouble. (The cause is the
    /// error's source, not repeated in its message: error chains print
    /// both.)
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened (the cause is the source, as above).
    #[error("store: {context}")]
    Store {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Backups are configured for a store that the server cannot back up.
    #[error(
        "EDGESYNC_BACKUP_DIR backs up the embedded SQLite store; a Redis/Valkey store is backed \
         up by Redis itself (RDB snapshots or the append-only file)"
    )]
    BackupUnsupported,
}

type EdgeService = Service<Store, NativeHost>;

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    service: Arc<EdgeService>,
    drain_timeout: Duration,
    http: HttpOptions,
    backup: Option<BackupOptions>,
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
            http,
            backup,
        } = options;
        if store == StoreKind::Sqlite {
            settings::ensure_data_dir(&data_dir).map_err(|source| ServerError::Io {
                context: format!("creating data directory {}", data_dir.display()),
                source,
            })?;
        }
        if let Some(b) = &backup {
            if store != StoreKind::Sqlite {
                return Err(ServerError::BackupUnsupported);
            }
            backup::prepare(b).map_err(|source| ServerError::Io {
                context: format!("preparing backup directory {}", b.dir.display()),
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
                    return Err(ServerError::Store {
                        context: "change notification",
                        source: e.into(),
                    });
                }
            },
        };
        let bound = async {
            let listener = bind_listener(&listen).await?;
            let local_addr = listener.local_addr()?;
            Ok::<_, std::io::Error>((listener, local_addr))
        }
        .await;
        let (listener, local_addr) = match bound {
            Ok(pair) => pair,
            Err(source) => {
                kv.close().await;
                host.close().await;
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
            http,
            backup,
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
    /// (at most [`ServerOptions::drain_timeout`]) and close the store
    /// (which interrupts a backup in progress: it is only a copy).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server {
            listener,
            service,
            drain_timeout,
            http,
            backup,
            ..
        } = self;
        let (stop_backups, stopped) = tokio::sync::watch::channel(false);
        let backups =
            backup.map(|options| tokio::spawn(backup::run(Arc::clone(&service), options, stopped)));
        let host = service.host().clone();
        serve(
            listener,
            Arc::clone(&service),
            http,
            shutdown,
            drain_timeout,
            || host.shutdown(),
        )
        .await;
        let _ = stop_backups.send(true);
        service.kv().close().await;
        if let Some(task) = backups {
            let _ = task.await;
        }
        service.host().close().await;
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

impl Handler for EdgeService {
    type Parked = Parked;

    fn max_body_bytes(&self) -> usize {
        self.config().max_body_bytes
    }

    async fn start(&self, request: Request<Vec<u8>>) -> Step<Parked> {
        match Service::start(self, request).await {
            Handled::Done(response) => Step::Done(response),
            Handled::Parked(parked) => Step::Parked(parked),
        }
    }

    fn wait<'a>(&'a self, parked: &'a Parked) -> impl Future<Output = ()> + Send + 'a {
        self.host()
            .wait_for_change(parked.topic(), parked.deadline_millis())
    }

    fn resume<'a>(
        &'a self,
        parked: &'a Parked,
    ) -> impl Future<Output = Option<Response<Vec<u8>>>> + Send + 'a {
        Service::resume(self, parked)
    }

    fn info(&self, parked: &Parked) -> Option<RequestInfo> {
        Some(parked.info())
    }
}

/// Accept connections until `shutdown`, then call `on_shutdown` (releases
/// held waits), close idle connections and wait for the others to finish,
/// at most `drain`.
async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: HttpOptions,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
    on_shutdown: impl FnOnce(),
) {
    let shared = Arc::new(Shared {
        handler,
        options,
        lifecycle: Lifecycle::default(),
    });
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning; existing connections keep being served.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Responses go out whole, in one write: no reason to wait for ACKs.
        let _ = stream.set_nodelay(true);
        tokio::spawn(http1::serve_connection(
            stream,
            http1::Accepted::new(&shared),
        ));
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting, draining connections");
    shared.lifecycle.drain();
    on_shutdown();
    if tokio::time::timeout(drain, shared.lifecycle.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_secs = drain.as_secs(),
            open = shared.lifecycle.open_connections(),
            "connections still open after the drain timeout; closing anyway"
        );
    }
}

/// Raise this process's soft limit of open files to its hard limit, as Go's
/// runtime and many servers do. Every connection is a file, a held
/// long-poll included, and the usual soft limit (1,024) would cap the server
/// at about a thousand waiting clients while the hard limit (often 524,288
/// under systemd, 1,048,576 in containers) allows far more. Returns the
/// (soft, hard) limits now in force. Process-wide: for the `edgesync`
/// binary (and the benchmark tool) to call, not for [`Server`] to do behind
/// an embedder's back.
#[cfg(unix)]
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // Refused (macOS caps the soft limit below an infinite hard
            // one): keep the limit there is.
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every Unix
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// Bind `listen` with a backlog deep enough for bursts of thousands of
/// connecting long-polls.
async fn bind_listener(listen: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(listen).await? {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

#[cfg(test)]
mod tests;
