//! The loopback limit: a minimal hyper server that answers every request
//! with the same 304 (headers shaped like edgesync's idle-poll answer),
//! doing no work per request. What the load generator measures against it
//! is the ceiling any HTTP/1.1 server on this machine and runtime could
//! reach with this client.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn not_modified() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .header("etag", "\"1\"")
        .header("cache-control", "private, no-cache")
        .header("x-poll-interval", "10")
        .body(Full::default())
        .expect("valid response")
}

/// Serve until the process is killed (same runtime shape as `edgesync
/// serve`: tokio's multi-threaded runtime, one task per connection).
pub async fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req| async { Ok::<_, Infallible>(not_modified()) });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
