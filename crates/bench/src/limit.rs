//! The loopback limit: a minimal hyper server doing no work per request,
//! so that what the load generator measures against it is the ceiling any
//! HTTP/1.1 server on this machine and runtime could reach with this
//! client.
//!
//! * A request with `wait=` in its query is held until the next `PUT`
//!   (or 25 s), then answered with a fixed 200 the size and shape of
//!   edgesync's answer to the wake-up scenario's write: the floor of the
//!   fan-out wake-up shape, where one write answers every held request.
//! * A `PUT` wakes every held request, then answers a fixed 201 carrying
//!   a `version`, as edgesync's does.
//! * Anything else gets a fixed 304 with headers shaped like edgesync's
//!   idle-poll answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What edgesync's native server answers a held long-poll woken by the
/// wake-up scenario's write (captured from a run; 146 bytes).
const CHANGED: &str = r#"{"changes":[{"collection":"todos","id":"wake0","op":"put","seq":2,"ts":"2026-11-30T04:01:25.735Z","value":{"n":1},"version":2}],"head":2,"next":2}"#;

/// What it answers the write (103 bytes).
const CREATED: &str = r#"{"collection":"todos","id":"wake0","updated_at":"2026-11-30T04:01:25.735Z","value":{"n":1},"version":2}"#;

/// How long a held request waits for a `PUT` (the scenario's `wait=25`).
const HOLD: Duration = Duration::from_secs(25);

fn not_modified() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .header("etag", "\"1\"")
        .header("cache-control", "private, no-cache")
        .header("x-poll-interval", "10")
        .body(Full::default())
        .expect("valid response")
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("etag", "\"2\"")
        .header("x-poll-interval", "10")
        .header("cache-control", "private, no-cache")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}

async fn answer(req: Request<Incoming>, writes: Arc<Notify>) -> Response<Full<Bytes>> {
    if req.method() == Method::PUT {
        writes.notify_waiters();
        return json(StatusCode::CREATED, CREATED);
    }
    let holds = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("wait=")));
    if !holds {
        return not_modified();
    }
    match tokio::time::timeout(HOLD, writes.notified()).await {
        Ok(()) => json(StatusCode::OK, CHANGED),
        Err(_) => not_modified(),
    }
}

/// Serve until the process is killed (same runtime shape as `edgesync
/// serve`: tokio's multi-threaded runtime, one task per connection).
pub async fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let writes = Arc::new(Notify::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let writes = Arc::clone(&writes);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let writes = Arc::clone(&writes);
                async move { Ok::<_, Infallible>(answer(req, writes).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
