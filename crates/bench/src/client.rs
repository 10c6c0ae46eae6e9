//! The one load generator every figure comes from: HTTP/1.1 keep-alive
//! connections (hyper's client connection, one per simulated client) and a
//! closed loop per client, latencies in an HDR histogram.
//!
//! Every target (edgesync native, the Spin components, PouchDB Server and
//! the fixed-304 server) is measured with exactly this code, so the client's
//! own cost is the same in every ratio.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request as the jobs build it.
pub type Req = Request<Full<Bytes>>;

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (null if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One keep-alive connection that reconnects when the server closed it
/// between requests (PouchDB's Express closes idle sockets after 5 s).
pub struct Conn {
    addr: SocketAddr,
    tx: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            addr,
            tx: handshake(addr).await?,
        })
    }

    /// Send one request and read the whole response body.
    pub async fn send(&mut self, req: Req) -> Result<Reply> {
        if self.tx.is_closed() || self.tx.ready().await.is_err() {
            self.tx = handshake(self.addr).await?;
        }
        let resp = self.tx.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

async fn handshake(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

/// A request builder with the headers every request needs (`Host`: Node's
/// HTTP server refuses HTTP/1.1 requests without one).
pub fn request(method: &str, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
}

/// Latencies in microseconds, 1 µs to 2 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Record a duration (µs, clamped into the histogram's range).
pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 120_000_000);
    hist.record(us).expect("clamped into range");
}

/// What one simulated client does in a closed loop.
pub trait Job: Send + 'static {
    /// The next request.
    fn request(&mut self) -> Req;
    /// Whether `reply` is the expected answer (updates the job's state,
    /// e.g. a document's CouchDB revision).
    fn check(&mut self, reply: &Reply) -> bool;
}

/// Result of a closed-loop run.
#[derive(Debug)]
pub struct Stats {
    /// Expected answers completed inside the measured window.
    pub ok: u64,
    /// Unexpected statuses or transport errors inside the window.
    pub errors: u64,
    /// First unexpected answer, for the report.
    pub first_error: Option<String>,
    pub seconds: f64,
    pub hist: Histogram<u64>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
    pub fn p(&self, q: f64) -> Duration {
        Duration::from_micros(self.hist.value_at_quantile(q))
    }
}

/// Run every job on its own connection as fast as answers come back: a
/// warm-up (not counted), then `measure`. Only requests that both start and
/// finish inside the measured window count.
pub async fn closed_loop<J: Job>(
    addr: SocketAddr,
    jobs: Vec<J>,
    warmup: Duration,
    measure: Duration,
) -> Result<Stats> {
    let begin = Instant::now() + Duration::from_millis(50);
    let start = begin + warmup;
    let end = start + measure;
    let mut tasks = Vec::new();
    for mut job in jobs {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut hist = histogram();
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            tokio::time::sleep_until(begin.into()).await;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let outcome = conn.send(job.request()).await;
                let t1 = Instant::now();
                let counted = t0 >= start && t1 <= end;
                match outcome {
                    Ok(reply) if job.check(&reply) => {
                        if counted {
                            ok += 1;
                            record(&mut hist, t1 - t0);
                        }
                    }
                    other => {
                        if counted {
                            errors += 1;
                        }
                        if first_error.is_none() {
                            first_error = Some(match other {
                                Ok(reply) => format!(
                                    "{} {}",
                                    reply.status,
                                    String::from_utf8_lossy(
                                        &reply.body[..reply.body.len().min(200)]
                                    )
                                ),
                                Err(e) => format!("{e:#}"),
                            });
                        }
                        // Don't spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            Ok::<_, anyhow::Error>((ok, errors, first_error, hist))
        }));
    }
    let mut stats = Stats {
        ok: 0,
        errors: 0,
        first_error: None,
        seconds: measure.as_secs_f64(),
        hist: histogram(),
    };
    for task in tasks {
        let (ok, errors, first_error, hist) =
            task.await.map_err(|e| anyhow!("client task: {e}"))??;
        stats.ok += ok;
        stats.errors += errors;
        if stats.first_error.is_none() {
            stats.first_error = first_error;
        }
        stats.hist.add(&hist).expect("same bounds");
    }
    Ok(stats)
}

/// Send `req` on a fresh connection and return the reply (setup steps).
pub async fn once(addr: SocketAddr, req: Req) -> Result<Reply> {
    Conn::connect(addr).await?.send(req).await
}
