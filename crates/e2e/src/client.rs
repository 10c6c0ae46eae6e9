//! How the cases talk to the server: a small request builder over `reqwest`
//! (rustls, no OpenSSL), and a raw HTTP/1.1 client over TCP (or TLS) for the
//! requests where the exact bytes matter.
//!
//! Every response the suite receives passes through [`Resp::check_envelope`]:
//! a 5xx fails the case (the contract never allows one for client input), and
//! every 4xx must be `application/problem+json` with `type`, `title`,
//! `status` (equal to the HTTP status) and `detail`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Target;

/// How long any single request may take before the suite calls it hung
/// (generous: debug builds of a host can be slow; this detects hangs, it
/// measures nothing). Long-polls get the target's `max_wait_seconds` on top.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a raw exchange waits for the server's answer. Raw requests are
/// small or deliberately incomplete (a body announced and never sent must
/// be answered without waiting for it), so this is shorter.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(30);

/// A user of the server under test, with a valid token.
#[derive(Debug, Clone)]
pub struct User {
    /// The `sub` claim.
    pub sub: String,
    /// A valid bearer token for `sub` (one hour).
    pub token: String,
}

/// A random lowercase alphanumeric string of `n` characters.
pub fn random_name(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

impl Target {
    /// A fresh user with a random id (so cases never share data).
    pub fn new_user(&self) -> User {
        self.user(&format!("e2e-{}", random_name(16)))
    }

    /// A user with exactly this `sub` (hostile ones included).
    pub fn user(&self, sub: &str) -> User {
        User {
            sub: sub.to_string(),
            token: crate::token::mint_for(&self.jwt_secret, &self.settings, sub),
        }
    }

    /// A client for this target. Make one per case: a `reqwest::Client`'s
    /// connections belong to the tokio runtime that opened them.
    pub fn api(&self) -> Api<'_> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT + Duration::from_secs(self.settings.max_wait_seconds))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building the HTTP client");
        Api { target: self, http }
    }

    /// `base_url` + `path` (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path)
    }
}

/// A client bound to one target.
#[derive(Debug, Clone)]
pub struct Api<'t> {
    /// The server.
    pub target: &'t Target,
    http: reqwest::Client,
}

/// A request being built.
#[derive(Debug)]
pub struct Req<'a> {
    api: &'a Api<'a>,
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl<'t> Api<'t> {
    /// A request with any method.
    pub fn request(&self, method: Method, path: impl Into<String>) -> Req<'_> {
        Req {
            api: self,
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }
    /// `GET path`.
    pub fn get(&self, path: impl Into<String>) -> Req<'_> {
        self.request(Method::GET, path)
    }
    /// `HEAD path`.
    pub fn head(&self, path: impl Into<String>) -> Req<'_> {
        self.request(Method::HEAD, path)
    }
    /// `PUT path`.
    pub fn put(&self, path: impl Into<String>) -> Req<'_> {
        self.request(Method::PUT, path)
    }
    /// `PATCH path`.
    pub fn patch(&self, path: impl Into<String>) -> Req<'_> {
        self.request(Method::PATCH, path)
    }
    /// `DELETE path`.
    pub fn delete(&self, path: impl Into<String>) -> Req<'_> {
        self.request(Method::DELETE, path)
    }
    /// `POST path`.
    pub fn post(&self, path: impl Into<String>) -> Req<'_> {
        self.request(Method::POST, path)
    }
    /// `OPTIONS path`.
    pub fn options(&self, path: impl Into<String>) -> Req<'_> {
        self.request(Method::OPTIONS, path)
    }
}

impl Req<'_> {
    /// Add a header (any bytes; invalid header bytes are the caller's wish).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }
    /// `Authorization: Bearer <user's token>`.
    pub fn auth(self, user: &User) -> Self {
        let v = format!("Bearer {}", user.token);
        self.header("Authorization", v)
    }
    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, value: &Value) -> Self {
        self.body_with_type("application/json", serde_json::to_vec(value).unwrap())
    }
    /// A merge-patch body with `Content-Type: application/merge-patch+json`.
    pub fn merge_patch(self, value: &Value) -> Self {
        self.body_with_type(
            "application/merge-patch+json",
            serde_json::to_vec(value).unwrap(),
        )
    }
    /// A body with the given content type.
    pub fn body_with_type(self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        let mut r = self.header("Content-Type", content_type);
        r.body = Some(body.into());
        r
    }
    /// A body without a content type.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// `METHOD path` for messages.
    pub fn what(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Send it; fails on transport errors, panics on a 5xx or on an error
    /// response that is not a well-formed problem.
    pub async fn send(self) -> anyhow::Result<Resp> {
        let what = self.what();
        let url = self.api.target.url(&self.path);
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("{what}: header name {name:?}"))?;
            let value = HeaderValue::from_bytes(value)
                .with_context(|| format!("{what}: header value for {name}"))?;
            headers.append(name, value);
        }
        let mut rb = self
            .api
            .http
            .request(self.method.clone(), &url)
            .headers(headers);
        if let Some(body) = self.body {
            rb = rb.body(body);
        }
        let response = rb
            .send()
            .await
            .with_context(|| {
                format!("{what}: request to {url} got no HTTP answer (did the server crash or drop the connection?)")
            })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("{what}: reading the body"))?
            .to_vec();
        let resp = Resp {
            what,
            status,
            headers,
            body,
        };
        resp.check_envelope();
        Ok(resp)
    }
}

/// A response, with the request it answers (for messages).
#[derive(Debug, Clone)]
pub struct Resp {
    /// `METHOD path` of the request.
    pub what: String,
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text (the first one), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// All values of a header joined with `, ` (lists may be split across
    /// several header lines).
    pub fn header_list(&self, name: &str) -> Option<String> {
        let all: Vec<String> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    }

    /// Comma-separated tokens of a header, trimmed, across all its lines.
    pub fn header_tokens(&self, name: &str) -> Vec<String> {
        self.header_list(name)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The header's value; panics naming the request if it is missing.
    pub fn must_header(&self, name: &str) -> String {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "{}: expected a `{name}` header; got status {} headers {:?} body {}",
                self.what,
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    /// Panic unless the status is `status`.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        self.expect_in(&[status])
    }

    /// Panic unless the status is one of `statuses`.
    #[track_caller]
    pub fn expect_in(self, statuses: &[u16]) -> Self {
        if !statuses.contains(&self.status) {
            panic!(
                "{}: expected status {statuses:?}, got {}; headers {:?}; body {}",
                self.what,
                self.status,
                self.headers,
                self.text()
            );
        }
        self
    }

    /// The body as JSON; panics naming the request if it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: expected a JSON body (status {}), got {:?}: {e}",
                self.what,
                self.status,
                self.text()
            )
        })
    }

    /// The `ETag` header; panics if missing.
    #[track_caller]
    pub fn etag(&self) -> String {
        self.must_header("etag")
    }

    /// Panic unless this is the problem `type_` with `status`; returns the
    /// problem object.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, type_: &str) -> Value {
        if self.status != status {
            panic!(
                "{}: expected {status} `{type_}`, got {}; headers {:?}; body {}",
                self.what,
                self.status,
                self.headers,
                self.text()
            );
        }
        let p = self.json();
        let got = p["type"].as_str().unwrap_or_default();
        if got != type_ {
            panic!(
                "{}: expected problem type `{type_}`, got `{got}` in {p}",
                self.what
            );
        }
        p
    }

    /// Panic on a 5xx; for a 4xx, panic unless the body is a well-formed
    /// RFC 9457 problem whose `status` matches.
    #[track_caller]
    pub fn check_envelope(&self) {
        if self.status >= 500 {
            panic!(
                "{}: the server answered {} (a 5xx is never acceptable for client input); headers {:?}; body {}",
                self.what,
                self.status,
                self.headers,
                self.text()
            );
        }
        if self.status < 400 || self.what.starts_with("HEAD ") {
            return;
        }
        let ct = self.header("content-type").unwrap_or_default();
        if !ct
            .to_ascii_lowercase()
            .starts_with("application/problem+json")
        {
            panic!(
                "{}: error {} must be `application/problem+json`, got content-type {ct:?}; body {}",
                self.what,
                self.status,
                self.text()
            );
        }
        let p: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: error {} body is not JSON ({e}): {}",
                self.what,
                self.status,
                self.text()
            )
        });
        for member in ["type", "title", "detail"] {
            if !p[member].is_string() {
                panic!("{}: problem lacks a string `{member}`: {p}", self.what);
            }
        }
        if p["status"].as_u64() != Some(u64::from(self.status)) {
            panic!(
                "{}: problem `status` must equal the HTTP status {}: {p}",
                self.what, self.status
            );
        }
    }
}

/// Raw HTTP/1.1 over a fresh connection.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What a raw exchange produced.
#[derive(Debug)]
pub enum RawOutcome {
    /// A parsed response.
    Response(Resp),
    /// The server closed the connection (or reset it) without answering.
    Closed(String),
}

impl RawOutcome {
    /// The response; panics if the connection was closed without one.
    #[track_caller]
    pub fn response(self) -> Resp {
        match self {
            RawOutcome::Response(r) => r,
            RawOutcome::Closed(why) => panic!("expected a response, the server closed: {why}"),
        }
    }
}

impl Api<'_> {
    /// Host and port of the target, the path prefix, and whether it is TLS.
    fn endpoint(&self) -> anyhow::Result<(String, u16, String, bool)> {
        let url = reqwest::Url::parse(&self.target.base_url)
            .with_context(|| format!("base URL {:?}", self.target.base_url))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            s => bail!("unsupported scheme {s}"),
        };
        let host = url
            .host_str()
            .ok_or_else(|| anyhow!("base URL without host"))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| anyhow!("base URL without port"))?;
        let prefix = url.path().trim_end_matches('/').to_string();
        Ok((host, port, prefix, tls))
    }

    /// Open a raw connection to the target.
    pub async fn connect(&self) -> anyhow::Result<Box<dyn Stream>> {
        let (host, port, _, tls) = self.endpoint()?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        tcp.set_nodelay(true)?;
        if !tls {
            return Ok(Box::new(tcp));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        use rustls_platform_verifier::ConfigVerifierExt as _;
        let config = rustls::ClientConfig::with_platform_verifier()?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        Ok(Box::new(connector.connect(name, tcp).await?))
    }

    /// The bytes of a request head: `METHOD <prefix><path> HTTP/1.1`, `Host`,
    /// `Connection: close`, then `headers` as given (no Content-Length is
    /// added: say it yourself), then the blank line.
    pub fn raw_head(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let (host, port, prefix, _) = self.endpoint().expect("base URL");
        let mut head = format!(
            "{method} {prefix}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// A complete request: head (with `Content-Length` of `body` when there
    /// is a body) and body.
    pub fn raw_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Vec<u8> {
        let len;
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(b) = body {
            len = b.len().to_string();
            all.push(("Content-Length", &len));
        }
        let mut bytes = self.raw_head(method, path, &all);
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        bytes
    }

    /// Send `bytes` on a fresh connection (writing concurrently with
    /// reading, so that an early answer to a large body is seen), optionally
    /// half-close, and read the response until the server closes.
    ///
    /// A response must pass [`Resp::check_envelope`].
    pub async fn raw(
        &self,
        what: &str,
        bytes: Vec<u8>,
        half_close: bool,
    ) -> anyhow::Result<RawOutcome> {
        self.raw_exchange(what, bytes, half_close, true).await
    }

    /// Like [`Api::raw`] for requests that are malformed at the HTTP
    /// framing level (conflicting lengths, truncated bodies): the HTTP
    /// stack may answer them before the application sees them, so only
    /// "never a 5xx" is checked.
    pub async fn raw_framing(
        &self,
        what: &str,
        bytes: Vec<u8>,
        half_close: bool,
    ) -> anyhow::Result<RawOutcome> {
        self.raw_exchange(what, bytes, half_close, false).await
    }

    async fn raw_exchange(
        &self,
        what: &str,
        bytes: Vec<u8>,
        half_close: bool,
        strict: bool,
    ) -> anyhow::Result<RawOutcome> {
        let head_request = bytes.starts_with(b"HEAD ");
        let stream = self.connect().await?;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let write = tokio::spawn(async move {
            for chunk in bytes.chunks(16 * 1024) {
                if writer.write_all(chunk).await.is_err() {
                    return;
                }
            }
            let _ = writer.flush().await;
            if half_close {
                let _ = writer.shutdown().await;
            }
            // Keep the write half alive until the reader is done.
            std::future::pending::<()>().await;
        });
        let mut buf = Vec::new();
        let mut error = None;
        let read = tokio::time::timeout(RAW_TIMEOUT, async {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match reader.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if response_complete(&buf, head_request) {
                            break;
                        }
                    }
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
        })
        .await;
        write.abort();
        if read.is_err() {
            bail!(
                "{what}: no complete response within {RAW_TIMEOUT:?} (got {} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf)
            );
        }
        if buf.is_empty() || !response_complete(&buf, head_request) && parse_head(&buf).is_none() {
            return Ok(RawOutcome::Closed(format!(
                "{what}: connection closed{} after {} bytes",
                error.map(|e| format!(" ({e})")).unwrap_or_default(),
                buf.len()
            )));
        }
        let resp = parse_response(what, &buf, head_request)?;
        if strict {
            resp.check_envelope();
        } else if resp.status >= 500 {
            panic!(
                "{what}: the server answered {} (never a 5xx for client input): {}",
                resp.status,
                resp.text()
            );
        }
        Ok(RawOutcome::Response(resp))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Status, headers and the offset of the body, once the head is complete.
fn parse_head(buf: &[u8]) -> Option<(u16, HeaderMap, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    if status == 100 {
        // Skip an interim response and parse what follows.
        let rest = &buf[end + 4..];
        let (s, h, off) = parse_head(rest)?;
        return Some((s, h, end + 4 + off));
    }
    Some((status, headers, end + 4))
}

fn is_chunked(headers: &HeaderMap) -> bool {
    headers.get_all("transfer-encoding").iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("chunked")
    })
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Decode a chunked body; `None` while incomplete.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn response_complete(buf: &[u8], head_request: bool) -> bool {
    let Some((status, headers, off)) = parse_head(buf) else {
        return false;
    };
    if head_request || status == 204 || status == 304 {
        return true;
    }
    if is_chunked(&headers) {
        return dechunk(&buf[off..]).is_some();
    }
    match content_length(&headers) {
        Some(n) => buf.len() - off >= n,
        None => false, // read until close
    }
}

fn parse_response(what: &str, buf: &[u8], head_request: bool) -> anyhow::Result<Resp> {
    let (status, headers, off) = parse_head(buf).ok_or_else(|| {
        anyhow!(
            "{what}: unparseable response {:?}",
            String::from_utf8_lossy(buf)
        )
    })?;
    let raw_body = &buf[off..];
    let body = if head_request || status == 204 || status == 304 {
        Vec::new()
    } else if is_chunked(&headers) {
        dechunk(raw_body).ok_or_else(|| anyhow!("{what}: truncated chunked body"))?
    } else if let Some(n) = content_length(&headers) {
        if raw_body.len() < n {
            bail!("{what}: body shorter than its Content-Length");
        }
        raw_body[..n].to_vec()
    } else {
        raw_body.to_vec()
    };
    Ok(Resp {
        what: what.to_string(),
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_chunked_and_interim_responses() {
        let r = parse_response(
            "t",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi",
            false,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        assert_eq!(r.header("x-a").as_deref(), Some("b"));
        let chunked = b"HTTP/1.1 413 Payload Too Large\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert!(response_complete(chunked, false));
        assert!(!response_complete(&chunked[..chunked.len() - 3], false));
        assert_eq!(parse_response("t", chunked, false).unwrap().body, b"abcde");
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_response("t", interim, false).unwrap().status, 204);
        assert!(parse_head(b"garbage\r\n\r\n").is_none());
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            false
        ));
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            true
        ));
    }
}
