//! The server side of HTTP/1.1, just large enough for edgesync and lean
//! enough for ten thousand held long-polls.
//!
//! Why not hyper: a held long-poll should cost little more than its parked
//! state, its hub registration and the socket. A general-purpose stack keeps
//! read and write buffers (8 KiB each) and a dispatcher per connection for
//! as long as the request is pending. Here a connection owns one byte
//! vector, empty and unallocated whenever nothing is buffered (idle, or
//! parked with nothing pipelined), and a response exists only while it is
//! written.
//!
//! What is supported: keep-alive (HTTP/1.1 by default, HTTP/1.0 when asked
//! for), pipelined requests answered in order, `Content-Length` and
//! `Transfer-Encoding: chunked` request bodies (trailers read and dropped),
//! `Expect: 100-continue`, limits on head size and header count, a body cap
//! (`max_body_bytes + 1`; a longer declared body is not read), header, body,
//! idle and write timeouts, `HEAD`, a `Date` header, and graceful shutdown.
//! Responses always carry `Content-Length` (the core hands over complete
//! bodies), never chunked encoding. Not supported, on purpose: upgrades
//! (WebSocket, h2c: the `Upgrade` field is ignored, as RFC 9110 allows, and
//! the request answered as HTTP/1.1), `CONNECT` tunnels (no route: 404),
//! transfer codings other than `chunked` and HTTP versions other than 1.0
//! and 1.1 (a 400 `invalid-request` saying which, not the 501 and 505 of
//! RFC 9110: edgesync's contract is that nothing a client sends yields a
//! 5xx, so a 5xx always means the server or its store is at fault, which is
//! what monitoring alerts on). An HTTP/1.1 request without exactly one
//! `Host` field, or with one that is not `host[:port]`, is 400 (RFC 9112,
//! 3.2).

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BufMut as _;
use edgesync_core::RequestInfo;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Most header fields in one request head (as hyper's default).
pub const MAX_HEADERS: usize = 100;

/// First allocation of a connection's read buffer: a typical request head
/// with a bearer token fits (and the allocator serves this size from its
/// per-thread cache); larger heads and bodies grow it.
const INITIAL_READ: usize = 1024;

/// Idle connections wait for shutdown on one of this many [`Notify`]s, so
/// that the runtime's threads do not all queue on one lock to start and
/// stop waiting.
const DRAIN_SHARDS: usize = 32;

/// Read-ahead while decoding a chunked body.
const BODY_READ: usize = 16 * 1024;

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most chunk-extension bytes (`;name=value`, which carry nothing edgesync
/// reads) accepted in one body: without a total, a client could send
/// megabytes of them around a few bytes of data for as long as the body
/// timeout lets it.
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;

/// How long, and for how many bytes, a closing connection keeps reading
/// (and discarding) what the client still sends, so that closing with
/// unread input does not reset the connection before the client has read
/// the answer.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// How long a client still sending a request head when shutdown begins
/// has to finish it (then it is served, with `Connection: close`).
const DRAIN_HEAD_GRACE: Duration = Duration::from_secs(1);

/// Timeouts and limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Longest a client may take to send a request head, from its first
    /// byte (for a new connection: from the accept).
    pub header_timeout: Duration,
    /// Longest a client may take to send a request body.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Longest the client may take to take in a response.
    pub write_timeout: Duration,
    /// Largest request head (request line and header fields) in bytes;
    /// beyond it, 431 (or 414 when the request line alone is longer).
    pub max_head_bytes: usize,
}

impl Default for HttpOptions {
    /// 30 s to send a head, 60 s for a body, 60 s idle, 60 s to read a
    /// response, heads up to 16 KiB.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_head_bytes: 16 * 1024,
        }
    }
}

/// What handling a request produced: the response, or a long-poll to park.
pub(crate) enum Step<P> {
    Done(Response<Vec<u8>>),
    Parked(P),
}

/// What connections serve: the core in production, stand-ins in tests.
pub(crate) trait Handler: Send + Sync + 'static {
    /// A parked long-poll.
    type Parked: Send + Sync;

    fn max_body_bytes(&self) -> usize;

    fn start(&self, request: Request<Vec<u8>>) -> impl Future<Output = Step<Self::Parked>> + Send;

    /// Resolves when `parked` may have something to report. Registers
    /// interest when called, not when first polled.
    fn wait<'a>(&'a self, parked: &'a Self::Parked) -> impl Future<Output = ()> + Send + 'a;

    /// The answer to `parked`, or `None` to keep waiting.
    fn resume<'a>(
        &'a self,
        parked: &'a Self::Parked,
    ) -> impl Future<Output = Option<Response<Vec<u8>>>> + Send + 'a;

    /// What to log about `parked` if its client leaves before the answer.
    fn info(&self, parked: &Self::Parked) -> Option<RequestInfo>;
}

// ------------------------------------------------------------ shutdown

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;

/// Shared by the accept loop and every connection: whether the server is
/// draining, and how many connections are still open.
#[derive(Default)]
pub(crate) struct Lifecycle {
    state: AtomicU8,
    /// Woken when draining starts (idle connections wait on them).
    draining: [Notify; DRAIN_SHARDS],
    /// Spreads connections over `draining`.
    accepted: AtomicUsize,
    open: AtomicUsize,
    /// Woken when the last connection closes.
    all_closed: Notify,
}

impl Lifecycle {
    fn is_draining(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }

    /// Stop keeping connections alive and close the idle ones.
    pub(crate) fn drain(&self) {
        self.state.store(DRAINING, Ordering::Release);
        for shard in &self.draining {
            shard.notify_waiters();
        }
    }

    /// Wait until every connection has closed.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// A connection, counted as open from its accept until it closes (the
/// value is dropped): counted from the accept, not from when its task first
/// runs, a drain that starts in between still waits for it.
pub(crate) struct Accepted<H>(Arc<Shared<H>>);

impl<H> Accepted<H> {
    pub(crate) fn new(shared: &Arc<Shared<H>>) -> Self {
        shared.lifecycle.open.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(shared))
    }
}

impl<H> Drop for Accepted<H> {
    fn drop(&mut self) {
        let lifecycle = &self.0.lifecycle;
        if lifecycle.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            lifecycle.all_closed.notify_waiters();
        }
    }
}

/// Whether bytes from the client wait unread in the socket: looked at
/// without reading them and without waiting (tokio's own readiness is not
/// known before its reactor has seen the socket).
#[cfg(unix)]
fn bytes_waiting(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer of our own; MSG_PEEK leaves the data in the
    // socket and MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

#[cfg(not(unix))]
fn bytes_waiting(_: &TcpStream) -> bool {
    false
}

/// Everything connections share.
pub(crate) struct Shared<H> {
    pub handler: Arc<H>,
    pub options: HttpOptions,
    pub lifecycle: Lifecycle,
}

// ---------------------------------------------------------- connection

/// Serve one connection until it closes.
pub(crate) async fn serve_connection<H: Handler>(stream: TcpStream, accepted: Accepted<H>) {
    let shared: &Shared<H> = &accepted.0;
    let shard = shared.lifecycle.accepted.fetch_add(1, Ordering::Relaxed) % DRAIN_SHARDS;
    let conn = Conn {
        stream,
        buf: Vec::new(),
        shared,
        drain_shard: shard as u8,
    };
    conn.run().await;
}

struct Conn<'a, H> {
    stream: TcpStream,
    /// Received, not yet consumed bytes. Unallocated while empty and
    /// waiting.
    buf: Vec<u8>,
    shared: &'a Shared<H>,
    /// Which of the lifecycle's `draining` notifiers this connection waits on.
    drain_shard: u8,
}

/// A request head, parsed and checked.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// Why a request could not be served; answered (when possible) and the
/// connection closed.
#[derive(Debug)]
enum Fail {
    /// Answer with this status and detail, then close.
    Reject(StatusCode, &'static str),
    /// Close without answering (timeout, client gone, I/O error).
    Drop(&'static str),
}

enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

enum Filled {
    Data,
    Eof,
    TimedOut,
}

/// A request read whole, ready for the handler.
struct Incoming {
    request: Request<Vec<u8>>,
    keep_alive: bool,
    /// Whether the body was read to its end.
    consumed: bool,
}

/// A request handed to the handler: its first answer (or long-poll to
/// park) and what answering it needs to know.
struct Begun<P> {
    step: Step<P>,
    meta: Meta,
}

struct Meta {
    method: Method,
    version: Version,
    started: std::time::Instant,
    keep_alive: bool,
    consumed: bool,
}

/// What a finished exchange leaves the connection fit for.
enum After {
    KeepAlive,
    /// Close; `true` when input may be left unread.
    Close(bool),
}

impl<H: Handler> Conn<'_, H> {
    async fn run(mut self) {
        // A task is as large as its largest state, and a held long-poll's
        // task should be small: only waiting for a head and the parked
        // state are inline; everything else is boxed while it runs, and
        // the head and request are out of scope before anything parks.
        let mut first = true;
        let linger = loop {
            let begun = {
                let head = match self.read_head(first).await {
                    Ok(Some(head)) => head,
                    Ok(None) => break false,
                    Err(Fail::Reject(status, detail)) => {
                        // Refused as soon as the head is complete. The
                        // head did not parse, but an answer to what reads
                        // as a HEAD request still carries no content.
                        let started = std::time::Instant::now();
                        let method = self.buf.starts_with(b"HEAD ").then_some(Method::HEAD);
                        Box::pin(self.reject(method.as_ref(), started, status, detail)).await;
                        break true;
                    }
                    Err(Fail::Drop(why)) => {
                        tracing::debug!(
                            reason = why,
                            "connection closed while reading a request head"
                        );
                        break false;
                    }
                };
                first = false;
                match Box::pin(self.begin(head)).await {
                    Ok(begun) => begun,
                    Err(After::Close(linger)) => break linger,
                    Err(After::KeepAlive) => continue,
                }
            };
            let after = if matches!(begun.step, Step::Parked(_)) {
                self.park(&begun).await
            } else {
                Box::pin(self.respond_now(begun)).await
            };
            match after {
                After::KeepAlive => {}
                After::Close(linger) => break linger,
            }
        };
        Box::pin(self.close(linger)).await;
    }

    /// Read the next request head. `None`: the connection should close
    /// quietly (client closed between requests, idle timeout, shutdown).
    async fn read_head(&mut self, first: bool) -> Result<Option<Box<Head>>, Fail> {
        let opts = &self.shared.options;
        let mut deadline = first.then(|| Instant::now() + opts.header_timeout);
        let mut scanned = 0;
        // Set once a shutdown is seen while a head is coming in: the client
        // gets a short grace to finish it, not the whole head timeout (a
        // slow or stalled client must not hold every restart that long).
        let mut drain_grace: Option<Instant> = None;
        loop {
            // At least one empty line before a request line is to be
            // ignored (RFC 9112, 2.2); dropping them here also keeps the
            // head scan linear.
            let blank = self
                .buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if blank > 0 {
                self.buf.drain(..blank);
                scanned = 0;
                // Empty lines are the start of a head, not activity: a
                // client sending only those is held to the head timeout,
                // not given a fresh idle timeout each time.
                deadline.get_or_insert_with(|| Instant::now() + opts.header_timeout);
            }
            if !self.buf.is_empty() {
                let deadline =
                    *deadline.get_or_insert_with(|| Instant::now() + opts.header_timeout);
                if let Some(end) = find_head_end(&self.buf, scanned) {
                    if end > opts.max_head_bytes {
                        return Err(too_large(&self.buf, opts.max_head_bytes));
                    }
                    match parse_head(&self.buf[..end])? {
                        Some(head) => {
                            self.buf.drain(..end);
                            return Ok(Some(Box::new(head)));
                        }
                        None => scanned = end,
                    }
                } else {
                    scanned = self.buf.len();
                }
                if self.buf.len() > opts.max_head_bytes {
                    return Err(too_large(&self.buf, opts.max_head_bytes));
                }
                // Registered before the check, so a shutdown starting in
                // between still wakes us.
                let lifecycle = &self.shared.lifecycle;
                let draining = lifecycle.draining[usize::from(self.drain_shard)].notified();
                if drain_grace.is_none() && lifecycle.is_draining() {
                    drain_grace = Some(Instant::now() + DRAIN_HEAD_GRACE);
                }
                let filled = match drain_grace {
                    Some(grace) => self.fill(grace.min(deadline), INITIAL_READ).await,
                    None => tokio::select! {
                        biased;
                        () = draining => continue,
                        filled = self.fill(deadline, INITIAL_READ) => filled,
                    },
                };
                match filled {
                    Ok(Filled::Data) => continue,
                    Ok(Filled::Eof) => return Err(Fail::Drop("closed mid-head")),
                    Ok(Filled::TimedOut) => return Err(Fail::Drop("head not received in time")),
                    Err(_) => return Err(Fail::Drop("read error")),
                }
            }
            // Between requests: idle. Registered before the check, so a
            // shutdown starting in between still wakes us.
            let lifecycle = &self.shared.lifecycle;
            let draining = lifecycle.draining[usize::from(self.drain_shard)].notified();
            if lifecycle.is_draining() {
                // A request already waiting as the drain began (on a
                // connection just accepted, or the next one of a keep-alive
                // client) is served, not dropped unread.
                if bytes_waiting(&self.stream) {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + opts.header_timeout);
                    match self.fill(deadline, INITIAL_READ).await {
                        Ok(Filled::Data) => continue,
                        _ => return Ok(None),
                    }
                }
                return Ok(None);
            }
            let wait = deadline.unwrap_or_else(|| Instant::now() + opts.idle_timeout);
            tokio::select! {
                biased;
                // Back to the check above: a request may have come in.
                () = draining => continue,
                filled = self.fill(wait, INITIAL_READ) => match filled {
                    Ok(Filled::Data) => {}
                    Ok(Filled::Eof | Filled::TimedOut) | Err(_) => return Ok(None),
                },
            }
        }
    }

    /// Read more bytes into `buf` (reserving `spare` when it runs low).
    async fn fill(&mut self, deadline: Instant, spare: usize) -> io::Result<Filled> {
        loop {
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                // Nothing buffered: hold no memory while waiting.
                self.buf = Vec::new();
            }
            match tokio::time::timeout_at(deadline, read_ready(&self.stream)).await {
                Err(_) => return Ok(Filled::TimedOut),
                Ok(ready) => ready?,
            }
            if self.buf.capacity() - self.buf.len() < spare / 4 {
                self.buf.reserve(spare.max(self.buf.len()));
            }
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(Filled::Eof),
                Ok(_) => return Ok(Filled::Data),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Read the body, call the handler, write the response.
    /// Read the request and hand it to the handler.
    async fn begin(&mut self, head: Box<Head>) -> Result<Box<Begun<H::Parked>>, After> {
        let started = std::time::Instant::now();
        let Incoming {
            request,
            keep_alive,
            consumed,
        } = self.read_request(head, started).await?;
        let method = request.method().clone();
        let version = request.version();
        let step = self.shared.handler.start(request).await;
        Ok(Box::new(Begun {
            step,
            meta: Meta {
                method,
                version,
                started,
                keep_alive,
                consumed,
            },
        }))
    }

    /// Answer a request the handler answered at once.
    async fn respond_now(&mut self, begun: Box<Begun<H::Parked>>) -> After {
        let begun = *begun;
        match begun.step {
            Step::Done(response) => self.respond(&begun.meta, response).await,
            Step::Parked(_) => After::Close(false),
        }
    }

    async fn respond(&mut self, meta: &Meta, response: Response<Vec<u8>>) -> After {
        let keep_alive = meta.keep_alive && !self.shared.lifecycle.is_draining();
        log_request(&meta.method, meta.started, &response);
        let is_head = meta.method == Method::HEAD;
        match self
            .write_response(response, is_head, meta.version, keep_alive)
            .await
        {
            Ok(()) if keep_alive => After::KeepAlive,
            Ok(()) => After::Close(!meta.consumed),
            Err(_) => After::Close(false),
        }
    }

    /// Check the head's framing, read the body and assemble the request;
    /// requests that cannot be served are answered here.
    async fn read_request(
        &mut self,
        head: Box<Head>,
        started: std::time::Instant,
    ) -> Result<Incoming, After> {
        let checked = framing(&head).and_then(|f| Ok((f, expects_continue(&head)?)));
        let (framing, expects_continue) = match checked {
            Ok(checked) => checked,
            Err(Fail::Reject(status, detail)) => {
                self.reject(Some(&head.method), started, status, detail)
                    .await;
                return Err(After::Close(true));
            }
            Err(Fail::Drop(_)) => return Err(After::Close(true)),
        };
        let limit = self.shared.handler.max_body_bytes().saturating_add(1);
        let (body, consumed) = match self.read_body(framing, limit, expects_continue).await {
            Ok(read) => read,
            Err(Fail::Reject(status, detail)) => {
                self.reject(Some(&head.method), started, status, detail)
                    .await;
                return Err(After::Close(true));
            }
            Err(Fail::Drop(why)) => {
                log_aborted(&head.method, started, None, why);
                return Err(After::Close(false));
            }
        };
        let keep_alive = consumed && wants_keep_alive(&head);
        let Head {
            method,
            uri,
            version,
            headers,
        } = *head;
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        Ok(Incoming {
            request,
            keep_alive,
            consumed,
        })
    }

    /// The request body, cut at `limit` bytes, and whether it was read to
    /// its end (if not, the connection must close after the answer).
    async fn read_body(
        &mut self,
        framing: Framing,
        limit: usize,
        expects_continue: bool,
    ) -> Result<(Vec<u8>, bool), Fail> {
        let deadline = Instant::now() + self.shared.options.body_timeout;
        match framing {
            Framing::Empty => Ok((Vec::new(), true)),
            Framing::Length(len) if len >= limit as u64 => {
                // Too long to accept: not read at all. The core rejects the
                // body by its length alone (413).
                Ok((vec![0; limit], false))
            }
            Framing::Length(len) => {
                let len = len as usize;
                if expects_continue && self.buf.is_empty() {
                    self.send_continue().await?;
                }
                // The body's memory grows with the bytes that arrive, not
                // to the declared length up front: a client that declares
                // the largest body and then stalls holds little until the
                // body timeout.
                let have = self.buf.len().min(len);
                let mut body = Vec::with_capacity(have.max(len.min(BODY_READ)));
                body.extend_from_slice(&self.buf[..have]);
                self.buf.drain(..have);
                while body.len() < len {
                    match tokio::time::timeout_at(deadline, read_ready(&self.stream)).await {
                        Err(_) => return Err(Fail::Drop("body not received in time")),
                        Ok(Err(_)) => return Err(Fail::Drop("read error")),
                        Ok(Ok(())) => {}
                    }
                    let missing = len - body.len();
                    if body.len() == body.capacity() {
                        body.reserve_exact(missing.min(body.len().max(BODY_READ)));
                    }
                    // Read straight into the body, never past it: what
                    // follows belongs to the next request.
                    match self.stream.try_read_buf(&mut (&mut body).limit(missing)) {
                        Ok(0) => return Err(Fail::Drop("closed mid-body")),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Err(Fail::Drop("read error")),
                    }
                }
                Ok((body, true))
            }
            Framing::Chunked => {
                if expects_continue && self.buf.is_empty() {
                    self.send_continue().await?;
                }
                let mut body = Vec::new();
                let mut decoder = ChunkedDecoder::new(self.shared.options.max_head_bytes);
                loop {
                    let (used, progress) = decoder
                        .decode(&self.buf, &mut body, limit)
                        .map_err(|detail| Fail::Reject(StatusCode::BAD_REQUEST, detail))?;
                    self.buf.drain(..used);
                    match progress {
                        Progress::Done => return Ok((body, true)),
                        Progress::Full => return Ok((body, false)),
                        Progress::NeedMore => {}
                    }
                    match self.fill(deadline, BODY_READ).await {
                        Ok(Filled::Data) => {}
                        Ok(Filled::Eof) => return Err(Fail::Drop("closed mid-body")),
                        Ok(Filled::TimedOut) => {
                            return Err(Fail::Drop("body not received in time"))
                        }
                        Err(_) => return Err(Fail::Drop("read error")),
                    }
                }
            }
        }
    }

    async fn send_continue(&mut self) -> Result<(), Fail> {
        let deadline = Instant::now() + self.shared.options.write_timeout;
        match tokio::time::timeout_at(
            deadline,
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(Fail::Drop("could not send 100 Continue")),
        }
    }

    /// Hold a parked long-poll until the handler answers it, then answer.
    async fn park(&mut self, begun: &Begun<H::Parked>) -> After {
        let Step::Parked(parked) = &begun.step else {
            return After::Close(false);
        };
        // The answer comes out of a function of its own, so that it does
        // not sit in this future's state beside the wait.
        match self.await_answer(parked).await {
            Some(response) => Box::pin(self.respond(&begun.meta, *response)).await,
            None => {
                let meta = &begun.meta;
                let info = self.shared.handler.info(parked);
                log_aborted(
                    &meta.method,
                    meta.started,
                    info.as_ref(),
                    "client closed the connection",
                );
                After::Close(false)
            }
        }
    }

    /// Wait for the handler's answer to `parked`. Meanwhile the connection
    /// holds no buffer unless the client pipelines more requests, and
    /// notices when the client goes away (`None`).
    async fn await_answer(&mut self, parked: &H::Parked) -> Option<Box<Response<Vec<u8>>>> {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        } else {
            self.buf.shrink_to_fit();
        }
        let handler = &*self.shared.handler;
        let mut watch_socket = self.buf.len() < self.shared.options.max_head_bytes;
        loop {
            // Registered before the check, so a change committed in between
            // still wakes us.
            let mut wake = std::pin::pin!(handler.wait(parked));
            if let Some(response) = Box::pin(handler.resume(parked)).await {
                return Some(Box::new(response));
            }
            loop {
                tokio::select! {
                    biased;
                    () = &mut wake => break,
                    ready = read_ready(&self.stream), if watch_socket => {
                        if ready.is_err() {
                            return None;
                        }
                        if self.buf.capacity() - self.buf.len() < 256 {
                            self.buf.reserve(INITIAL_READ);
                        }
                        match self.stream.try_read_buf(&mut self.buf) {
                            // The client closed (or half-closed) its side:
                            // nobody waits for this answer.
                            Ok(0) => return None,
                            // Pipelined requests, kept for later; once a
                            // head's worth is buffered, stop reading.
                            Ok(_) => {
                                watch_socket =
                                    self.buf.len() < self.shared.options.max_head_bytes;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => return None,
                        }
                    }
                }
            }
        }
    }

    async fn write_response(
        &mut self,
        response: Response<Vec<u8>>,
        is_head: bool,
        version: Version,
        keep_alive: bool,
    ) -> io::Result<()> {
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let mut out = Vec::with_capacity(
            160 + parts
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>()
                + if body.len() <= 4096 { body.len() } else { 0 },
        );
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut declared_length = None;
        for (name, value) in &parts.headers {
            // Framing and connection management are this layer's business.
            if name == header::CONTENT_LENGTH {
                declared_length = Some(value);
                continue;
            }
            if name == header::CONNECTION
                || name == header::TRANSFER_ENCODING
                || name == header::DATE
                || name.as_str() == "keep-alive"
            {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"date: ");
        push_date(&mut out);
        out.extend_from_slice(b"\r\n");
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        if !bodiless {
            out.extend_from_slice(b"content-length: ");
            match declared_length {
                // HEAD: the length the GET would have had, as the core set it.
                Some(value) if is_head => out.extend_from_slice(value.as_bytes()),
                _ => {
                    let _ = write!(out, "{}", body.len());
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let body: &[u8] = if is_head || bodiless { &[] } else { &body };
        let deadline = Instant::now() + self.shared.options.write_timeout;
        // Small bodies go out in the same buffer; large ones beside it.
        let body = if body.len() <= out.capacity() - out.len() {
            out.extend_from_slice(body);
            &[]
        } else {
            body
        };
        match tokio::time::timeout_at(deadline, write_all_vectored(&mut self.stream, &out, body))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Answer a request this layer could not pass on (`Connection: close`).
    async fn reject(
        &mut self,
        method: Option<&Method>,
        started: std::time::Instant,
        status: StatusCode,
        detail: &'static str,
    ) {
        tracing::info!(
            method = method.map_or("-", Method::as_str),
            route = "unmatched",
            user = "-",
            status = status.as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            error = detail,
            "request"
        );
        let body = format!(
            "{{\"type\":\"invalid-request\",\"title\":\"{}\",\"status\":{},\"detail\":\"{}\"}}",
            status.canonical_reason().unwrap_or("Bad Request"),
            status.as_u16(),
            detail
        );
        let mut response = Response::new(body.into_bytes());
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let is_head = method == Some(&Method::HEAD);
        let _ = self
            .write_response(response, is_head, Version::HTTP_11, false)
            .await;
    }

    /// Close the connection. With input possibly left unread, keep reading
    /// (and dropping) it for a moment after our FIN, so that the client
    /// gets to read our answer instead of a reset.
    async fn close(mut self, linger: bool) {
        let _ = self.stream.shutdown().await;
        let unread = linger || !self.buf.is_empty() || bytes_waiting(&self.stream);
        if !unread {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut discarded = 0;
        self.buf.clear();
        while discarded < LINGER_BYTES {
            match self.fill(deadline, BODY_READ).await {
                Ok(Filled::Data) => {
                    discarded += self.buf.len();
                    self.buf.clear();
                }
                _ => return,
            }
        }
    }
}

/// Until `stream` is (or may be) readable. Unlike `TcpStream::readable`,
/// this keeps no waiter of its own in the future: the socket's single
/// reader slot holds the waker.
fn read_ready(stream: &TcpStream) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(|cx| stream.poll_read_ready(cx))
}

async fn write_all_vectored(stream: &mut TcpStream, head: &[u8], body: &[u8]) -> io::Result<()> {
    let mut slices = [IoSlice::new(head), IoSlice::new(body)];
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

// ------------------------------------------------------------- parsing

/// End (exclusive) of the first head in `buf`, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// 414 when not even the request line fits, else 431.
fn too_large(buf: &[u8], max: usize) -> Fail {
    let line_end = buf[..buf.len().min(max)].iter().position(|&b| b == b'\n');
    if line_end.is_none() {
        Fail::Reject(StatusCode::URI_TOO_LONG, "request line too long")
    } else {
        Fail::Reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        )
    }
}

/// `uri-host [":" port]` (RFC 9110, 7.2): no userinfo, digits after the
/// colon (the `http` crate's authority parser takes any port text).
fn is_host_and_port(value: &[u8]) -> bool {
    if value.contains(&b'@') {
        return false;
    }
    let Ok(authority) = http::uri::Authority::try_from(value) else {
        return false;
    };
    let text = authority.as_str();
    match text.get(authority.host().len()..) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(':')
            .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Parse a complete head (`bytes` ends with its empty line). `None` if
/// httparse does not see a complete head there after all.
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, Fail> {
    let bad = |detail| Fail::Reject(StatusCode::BAD_REQUEST, detail);
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(bytes, &mut storage) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Fail::Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ))
        }
        Err(httparse::Error::Version) if names_other_version(bytes) => {
            return Err(bad("only HTTP/1.0 and HTTP/1.1 are supported"))
        }
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            return Err(bad("malformed header field"))
        }
        Err(_) => return Err(bad("malformed request line")),
    }
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| bad("malformed method"))?;
    // A fragment is never part of a request target (RFC 9112, 3.2); the
    // URI parser would quietly drop it.
    let uri = parsed
        .path
        .filter(|p| !p.contains('#'))
        .and_then(|p| p.parse::<Uri>().ok())
        .ok_or_else(|| bad("malformed request target"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(bad("only HTTP/1.0 and HTTP/1.1 are supported")),
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| bad("malformed header field name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| bad("malformed header field value"))?;
        headers.append(name, value);
    }
    // RFC 9112, 3.2: a server MUST answer 400 to an HTTP/1.1 request
    // without a Host field, and to any request with more than one or with
    // an invalid one (empty is valid: a target without an authority).
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => {
            return Err(bad("an HTTP/1.1 request needs a Host header field"))
        }
        (None, _) => {}
        (Some(host), None) => {
            let valid = host.is_empty() || is_host_and_port(host.as_bytes());
            if !valid {
                return Err(bad("the Host header field is not a host[:port]"));
            }
        }
        (Some(_), Some(_)) => return Err(bad("more than one Host header field")),
    }
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
    }))
}

/// Whether the request line ends in a well-formed version other than 1.x
/// (`HTTP/2.0`), which deserves a clearer message than "malformed".
fn names_other_version(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(version) = line.rsplit(|&b| b == b' ').next() else {
        return false;
    };
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit() && *major != b'1')
}

/// Comma-separated list elements of every `name` field, trimmed, empty
/// ones skipped.
fn list_elements<'h>(
    headers: &'h HeaderMap,
    name: &header::HeaderName,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// How the body is delimited (RFC 9112, 6.3), rejecting ambiguous framing.
fn framing(head: &Head) -> Result<Framing, Fail> {
    let bad = |detail| Fail::Reject(StatusCode::BAD_REQUEST, detail);
    let headers = &head.headers;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        if head.version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        let codings: Vec<&[u8]> = list_elements(headers, &header::TRANSFER_ENCODING).collect();
        match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            [.., last] if last.eq_ignore_ascii_case(b"chunked") => {
                if codings[..codings.len() - 1]
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(b"chunked"))
                {
                    Err(bad("chunked applied more than once"))
                } else {
                    Err(bad("only the chunked transfer coding is supported"))
                }
            }
            _ => Err(bad("chunked is not the final transfer coding")),
        }
    } else {
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        let Some(value) = lengths.next() else {
            return Ok(Framing::Empty);
        };
        if lengths.next().is_some() {
            return Err(bad("more than one Content-Length"));
        }
        let digits = value.as_bytes().trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("invalid Content-Length"));
        }
        let len = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        Ok(if len == 0 {
            Framing::Empty
        } else {
            Framing::Length(len)
        })
    }
}

/// Whether the client waits for `100 Continue` before sending its body.
/// Anything but `100-continue` is 417; HTTP/1.0 requests' expectations are
/// ignored (RFC 9110, 10.1.1).
fn expects_continue(head: &Head) -> Result<bool, Fail> {
    if head.version == Version::HTTP_10 {
        return Ok(false);
    }
    let mut expects = false;
    for value in head.headers.get_all(header::EXPECT) {
        if value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
        {
            expects = true;
        } else {
            return Err(Fail::Reject(
                StatusCode::EXPECTATION_FAILED,
                "only the 100-continue expectation is supported",
            ));
        }
    }
    Ok(expects)
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only when
/// asked for `keep-alive`.
fn wants_keep_alive(head: &Head) -> bool {
    let mut close = false;
    let mut keep = false;
    for token in list_elements(&head.headers, &header::CONNECTION) {
        close |= token.eq_ignore_ascii_case(b"close");
        keep |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    !close && (head.version == Version::HTTP_11 || keep)
}

// ------------------------------------------------------- chunked bodies

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Everything buffered was used; more input is needed.
    NeedMore,
    /// The body (and its trailers) ended.
    Done,
    /// The body reached the cap; the rest is not read.
    Full,
}

enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Incremental, strict decoder of a chunked request body: CRLF line ends
/// only, 1–16 hex digits, extensions and trailers read and dropped.
struct ChunkedDecoder {
    state: ChunkState,
    extension_bytes: usize,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    fn new(max_trailer_bytes: usize) -> Self {
        Self {
            state: ChunkState::Size,
            extension_bytes: 0,
            trailer_bytes: 0,
            max_trailer_bytes,
        }
    }

    /// Decode from `input` into `body` (at most `limit` bytes in all);
    /// returns how much of `input` was used.
    fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(usize, Progress), &'static str> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Size => {
                    let Some(line) = line(rest, MAX_CHUNK_LINE)? else {
                        return Ok((pos, Progress::NeedMore));
                    };
                    pos += line.len() + 2;
                    let (size, extension) = parse_chunk_size(line)?;
                    // Padding before the `;` counts too: it costs reading
                    // as much as the extensions do.
                    self.extension_bytes += extension;
                    if self.extension_bytes > MAX_CHUNK_EXTENSIONS {
                        return Err("too many chunk-extension bytes");
                    }
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok((pos, Progress::NeedMore));
                    }
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let room = limit.saturating_sub(body.len());
                    body.extend_from_slice(&rest[..take.min(room)]);
                    pos += take;
                    if body.len() >= limit {
                        return Ok((pos, Progress::Full));
                    }
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining)
                    };
                }
                ChunkState::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok((pos, Progress::NeedMore)),
                    _ => return Err("chunk data not followed by CRLF"),
                },
                ChunkState::Trailers => {
                    let room = self.max_trailer_bytes.saturating_sub(self.trailer_bytes);
                    let Some(line) = line(rest, room).map_err(|_| "trailer section too large")?
                    else {
                        return Ok((pos, Progress::NeedMore));
                    };
                    pos += line.len() + 2;
                    self.trailer_bytes += line.len() + 2;
                    if line.is_empty() {
                        return Ok((pos, Progress::Done));
                    }
                    if !line.iter().skip(1).any(|&b| b == b':')
                        || line.iter().any(|&b| b == b'\r' || b == 0)
                    {
                        return Err("malformed trailer field");
                    }
                }
            }
        }
    }
}

/// The next CRLF-terminated line of `input` (without the CRLF); `None`
/// while incomplete. Lines longer than `max` and bare LFs are errors.
fn line(input: &[u8], max: usize) -> Result<Option<&[u8]>, &'static str> {
    match input.iter().position(|&b| b == b'\n') {
        Some(nl) if nl > 0 && input[nl - 1] == b'\r' => {
            if nl - 1 > max {
                Err("chunk line too long")
            } else {
                Ok(Some(&input[..nl - 1]))
            }
        }
        Some(_) => Err("line not ended by CRLF"),
        None if input.len() > max => Err("chunk line too long"),
        None => Ok(None),
    }
}

/// `1*16HEXDIG [ BWS ";" extensions ]`: the size, and how many bytes
/// follow it on the line.
fn parse_chunk_size(line: &[u8]) -> Result<(u64, usize), &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size");
    }
    let after = &line[digits..];
    // BWS is spaces and tabs only: a CR or form feed here is a line that
    // some other parser on the way may read differently.
    let bws = after
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &after[bws..];
    if !(rest.is_empty() || rest[0] == b';') || rest.iter().any(|&b| b < 0x20 && b != b'\t') {
        return Err("invalid chunk size");
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0))
    });
    Ok((size, after.len()))
}

// ------------------------------------------------------------- writing

/// Append the current `Date` (IMF-fixdate), formatted once a second per
/// thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            *cache = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cache.1.as_bytes());
    });
}

// ------------------------------------------------------------- logging

fn log_request(method: &Method, started: std::time::Instant, response: &Response<Vec<u8>>) {
    let info = response.extensions().get::<RequestInfo>();
    tracing::info!(
        method = %method,
        route = info.map_or("unmatched", |i| i.route),
        user = info.and_then(|i| i.user_hash.as_deref()).unwrap_or("-"),
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        // A 503's cause: the client only sees "try again".
        error = info.and_then(|i| i.store_error.as_deref()),
        "request"
    );
}

/// A request that ended without an answer; `info` when the core had
/// already routed it (a parked long-poll).
fn log_aborted(
    method: &Method,
    started: std::time::Instant,
    info: Option<&RequestInfo>,
    why: &str,
) {
    tracing::info!(
        method = %method,
        route = info.map_or("unmatched", |i| i.route),
        user = info.and_then(|i| i.user_hash.as_deref()).unwrap_or("-"),
        status = "aborted",
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        error = why,
        "request"
    );
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn decode_all(input: &[u8], limit: usize) -> Result<(Vec<u8>, usize, Progress), &'static str> {
        let mut body = Vec::new();
        let (used, progress) = ChunkedDecoder::new(1024).decode(input, &mut body, limit)?;
        Ok((body, used, progress))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let input = b"4\r\nWiki\r\n5;name=value\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let (body, used, progress) = decode_all(input, 1000).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(progress, Progress::Done);
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte() {
        let input = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::new(1024);
        let mut body = Vec::new();
        let mut pending = Vec::new();
        let mut done = false;
        for &b in input.iter() {
            pending.push(b);
            let (used, progress) = decoder.decode(&pending, &mut body, 1000).unwrap();
            pending.drain(..used);
            done = progress == Progress::Done;
        }
        assert!(done);
        assert_eq!(body, b"abc0123456789abcdef");
    }

    #[test]
    fn chunked_bodies_stop_at_the_cap() {
        let (body, _, progress) = decode_all(b"a\r\n0123456789\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(body, b"0123");
        assert_eq!(progress, Progress::Full);
    }

    #[test]
    fn bad_chunk_framing_is_rejected() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"+5\r\nabcde\r\n",
            b"0x5\r\nabcde\r\n",
            b"11111111111111111\r\n",
            b"5\nabcde\r\n",
            b"5\r\nabcdeXY0\r\n\r\n",
            b"5 x\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"5\r\r\nabcde\r\n0\r\n\r\n",
            b"5\x0c\r\nabcde\r\n0\r\n\r\n",
            b"5\r;x\r\nabcde\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 1000).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A size line that never ends is cut off.
        assert!(decode_all(&[b'1'; MAX_CHUNK_LINE + 10], 1000).is_err());
        // So are extensions past their total, each line within its limit.
        let line = format!("1;{}\r\nx\r\n", "e".repeat(4000));
        let fits = line.repeat(MAX_CHUNK_EXTENSIONS / 4001) + "0\r\n\r\n";
        assert!(decode_all(fits.as_bytes(), 1000).is_ok());
        let over = line.repeat(MAX_CHUNK_EXTENSIONS / 4001 + 1) + "0\r\n\r\n";
        assert!(decode_all(over.as_bytes(), 1000).is_err());
        // Padding before the extensions counts as well.
        let padded = format!("1{}\r\nx\r\n", " ".repeat(4000));
        let over = padded.repeat(MAX_CHUNK_EXTENSIONS / 4000 + 1) + "0\r\n\r\n";
        assert!(decode_all(over.as_bytes(), 1000).is_err());
        let spaced = b"5 \t; name=value\r\nabcde\r\n0 \r\n\r\n";
        assert_eq!(decode_all(spaced, 1000).unwrap().0, b"abcde");
        // Biggest representable size is fine (the cap stops reading).
        let (_, _, progress) = decode_all(b"ffffffffffffffff\r\nab", 1).unwrap();
        assert_eq!(progress, Progress::Full);
    }

    #[test]
    fn head_ends_are_found_incrementally() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        assert_eq!(find_head_end(head, 0), Some(head.len() - 4));
        for split in 0..head.len() {
            let found = find_head_end(&head[..split], 0).or_else(|| find_head_end(head, split));
            assert_eq!(found, Some(head.len() - 4));
        }
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    }

    #[test]
    fn framing_rules() {
        let head = |version, fields: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (n, v) in fields {
                headers.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            Head {
                method: Method::POST,
                uri: Uri::from_static("/"),
                version,
                headers,
            }
        };
        let v11 = Version::HTTP_11;
        let ok = |h: &Head| framing(h).ok();
        assert!(matches!(ok(&head(v11, &[])), Some(Framing::Empty)));
        assert!(matches!(
            ok(&head(v11, &[("content-length", "0")])),
            Some(Framing::Empty)
        ));
        assert!(matches!(
            ok(&head(v11, &[("content-length", " 12 ")])),
            Some(Framing::Length(12))
        ));
        assert!(matches!(
            ok(&head(v11, &[("transfer-encoding", "Chunked")])),
            Some(Framing::Chunked)
        ));
        let status = |h: &Head| match framing(h) {
            Err(Fail::Reject(s, _)) => s.as_u16(),
            _ => 0,
        };
        for bad in [
            vec![("content-length", "1"), ("content-length", "1")],
            vec![("content-length", "1, 1")],
            vec![("content-length", "-1")],
            vec![("content-length", "+1")],
            vec![("content-length", "0x10")],
            vec![("content-length", "99999999999999999999")],
            vec![("content-length", "")],
            vec![("content-length", "4"), ("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "chunked, identity")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            assert_eq!(status(&head(v11, &bad)), 400, "{bad:?}");
        }
        assert_eq!(
            status(&head(v11, &[("transfer-encoding", "gzip, chunked")])),
            400
        );
        assert_eq!(
            status(&head(Version::HTTP_10, &[("transfer-encoding", "chunked")])),
            400
        );
    }

    #[test]
    fn keep_alive_rules() {
        let head = |version, connection: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(c) = connection {
                headers.insert(header::CONNECTION, HeaderValue::from_str(c).unwrap());
            }
            Head {
                method: Method::GET,
                uri: Uri::from_static("/"),
                version,
                headers,
            }
        };
        assert!(wants_keep_alive(&head(Version::HTTP_11, None)));
        assert!(!wants_keep_alive(&head(Version::HTTP_11, Some("Close"))));
        assert!(!wants_keep_alive(&head(
            Version::HTTP_11,
            Some("te, close")
        )));
        assert!(!wants_keep_alive(&head(Version::HTTP_10, None)));
        assert!(wants_keep_alive(&head(
            Version::HTTP_10,
            Some("Keep-Alive")
        )));
    }

    #[test]
    fn heads_parse_or_are_rejected() {
        let head =
            parse_head(b"GET /v1/changes?since=1 HTTP/1.1\r\nHost: x\r\nA: 1\r\nA: 2\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.path(), "/v1/changes");
        assert_eq!(head.uri.query(), Some("since=1"));
        assert_eq!(head.headers.get_all("a").iter().count(), 2);
        let status = |bytes: &[u8]| match parse_head(bytes) {
            Err(Fail::Reject(s, _)) => s.as_u16(),
            Ok(Some(_)) => 200,
            _ => 0,
        };
        // Host: exactly one on HTTP/1.1, at most one on HTTP/1.0.
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        // ... and a valid one: host[:port], or empty.
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a:x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a:8787\r\n\r\n"), 200);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: [::1]:8787\r\n\r\n"), 200);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), 200);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), 200);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n"), 400);
        assert_eq!(status(b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n"), 400);
        assert_eq!(status(b"GET /v1/health#x HTTP/1.1\r\nHost: t\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET /v1/health?a#x HTTP/1.1\r\nHost: t\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: t\r\nx: a\x01b\r\n\r\n"),
            400
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes()),
            431
        );
        assert_eq!(
            status(b"GET http://example.com/v1/head HTTP/1.1\r\nHost: t\r\n\r\n"),
            200
        );
        assert_eq!(status(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"), 200);
    }
}
