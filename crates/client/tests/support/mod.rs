//! A tiny HTTP/1.1 server for tests that need exact control over responses
//! (429/503 with `Retry-After`, immediate returns, forced 410) and exact byte
//! counts of what crosses the wire.

#![allow(dead_code)]

use edgesync_client::{Clock, VirtualClock};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Request {
    /// Position in the request log.
    pub index: usize,
    /// Virtual time when it arrived.
    pub at: Duration,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// Bytes of the request on the wire (head + body).
    pub bytes: usize,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn json(status: u16, body: Value) -> Self {
        let ct = if status >= 400 {
            "application/problem+json"
        } else {
            "application/json"
        };
        Response::new(status)
            .header("content-type", ct)
            .body(body.to_string().into_bytes())
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn body(mut self, b: Vec<u8>) -> Self {
        self.body = b;
        self
    }

    /// The headers the real server puts on every changes/head response.
    pub fn poll_headers(self, etag: u64, poll_interval: u64) -> Self {
        self.header("etag", &format!("\"{etag}\""))
            .header("x-poll-interval", &poll_interval.to_string())
            .header("cache-control", "private, no-cache")
    }

    pub fn problem(status: u16, kind: &str, title: &str) -> Self {
        Response::json(
            status,
            serde_json::json!({"type": kind, "title": title, "status": status}),
        )
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

#[derive(Debug, Clone)]
pub struct Exchange {
    pub request: Request,
    pub status: u16,
    /// Bytes of the response on the wire.
    pub response_bytes: usize,
}

pub struct FakeServer {
    pub url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Serve `handler` on a loopback port; `clock` stamps each request.
    pub async fn start(
        clock: VirtualClock,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (h, l, c) = (handler.clone(), log2.clone(), clock.clone());
                tokio::spawn(async move {
                    let _ = serve_conn(sock, h, l, c).await;
                });
            }
        });
        FakeServer { url, log, task }
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.exchanges()
            .into_iter()
            .filter(|e| e.request.path() == path)
            .map(|e| e.request)
            .collect()
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<Exchange>>>,
    clock: VirtualClock,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let index = log.lock().unwrap().len();
        let request = Request {
            index,
            at: clock.now(),
            method,
            target,
            headers,
            body,
            bytes: head_end + len,
        };
        let resp = handler(&request);
        let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        // What hyper adds to every response.
        out.push_str(&format!("date: {}\r\n", httpdate_now()));
        if resp.status != 304 && resp.status != 204 {
            out.push_str(&format!("content-length: {}\r\n", resp.body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if resp.status != 304 && resp.status != 204 {
            bytes.extend_from_slice(&resp.body);
        }
        log.lock().unwrap().push(Exchange {
            request,
            status: resp.status,
            response_bytes: bytes.len(),
        });
        sock.write_all(&bytes).await?;
    }
}

fn httpdate_now() -> String {
    // A fixed-width IMF-fixdate is all that matters for byte counts.
    "Sun, 29 Nov 2026 20:03:00 GMT".to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A token of realistic size: what `edgesync token --sub alice` mints
/// (HS256 with `sub`, `iat`, `exp`).
pub fn token() -> String {
    token_for("alice", 1_764_446_580)
}

/// A token like [`token`] for another user, or issued at another time.
pub fn token_for(sub: &str, iat: u64) -> String {
    let secret = [7u8; 32];
    let expect = edgesync_core::auth::Expectations {
        secret: &secret,
        audience: None,
        issuer: None,
    };
    edgesync_core::auth::mint(&expect, sub, iat, 3600)
}

/// Poll `cond` (real time) until true, at most ~10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
