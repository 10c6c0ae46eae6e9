//! The HTTP contract as the client speaks it: one function per request, each
//! turning the response into a typed outcome. Requests are kept small
//! (battery mode's idle cost is dominated by header bytes).

use crate::error::Error;
use crate::model::{Document, Op, PendingMutation, Problem};
use reqwest::header::{
    HeaderMap, HeaderName, AUTHORIZATION, CONTENT_TYPE, IF_NONE_MATCH, RETRY_AFTER,
};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

/// Extra time allowed beyond the requested hold of a long-poll before the
/// request is abandoned as lost.
const LONG_POLL_GRACE: Duration = Duration::from_secs(15);

const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// One change-log entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct ChangeEntry {
    pub seq: u64,
    pub op: Op,
    pub collection: String,
    pub id: String,
    pub version: u64,
    #[serde(default)]
    pub value: Value,
    #[serde(default)]
    pub ts: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChangesPage {
    pub changes: Vec<ChangeEntry>,
    pub next: u64,
    pub head: u64,
}

#[derive(Debug)]
pub(crate) enum ChangesOutcome {
    /// 304: nothing after `since`.
    NotModified,
    /// 200.
    Page(ChangesPage),
    /// 409 `cursor-ahead`.
    CursorAhead,
    /// 410 `cursor-expired`.
    CursorExpired,
}

#[derive(Debug)]
pub(crate) struct ChangesResponse {
    pub outcome: ChangesOutcome,
    /// `X-Poll-Interval`, when sent.
    pub poll_interval: Option<Duration>,
    /// The hold the server granted a long-poll (`Preference-Applied:
    /// wait=N`); `None` when it did not say (a server or proxy that ignores
    /// `Prefer`).
    pub wait_applied: Option<Duration>,
}

/// A changes request that failed, with the `X-Poll-Interval` its answer
/// carried (every changes answer does, 429 and 503 included), so that the
/// retry heeds it too.
#[derive(Debug)]
pub(crate) struct ChangesFailure {
    pub error: Error,
    pub poll_interval: Option<Duration>,
}

impl From<Error> for ChangesFailure {
    fn from(error: Error) -> Self {
        ChangesFailure {
            error,
            poll_interval: None,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct DocsPage {
    pub documents: Vec<Document>,
    pub cursor: u64,
    #[serde(default)]
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ItemResult {
    pub id: String,
    pub status: u16,
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub document: Option<Document>,
    #[serde(default)]
    pub replayed: bool,
    #[serde(default)]
    pub problem: Option<Problem>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BatchResponse {
    pub results: Vec<ItemResult>,
    #[serde(default)]
    pub head: Option<u64>,
}

/// The server's identity as a replica records it: the base URL parsed and
/// printed back (scheme and host lower-cased, a default port dropped), with
/// any credentials left out and no trailing `/`, so that one server spelled
/// two ways is one server.
pub(crate) fn normalize_url(base_url: &str) -> Result<String, Error> {
    let mut url = parse_base(base_url)?;
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn parse_base(base_url: &str) -> Result<reqwest::Url, Error> {
    let parsed =
        reqwest::Url::parse(base_url).map_err(|e| Error::InvalidUrl(format!("{base_url}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::InvalidUrl(format!(
            "{base_url}: only http and https are supported"
        )));
    }
    Ok(parsed)
}

pub(crate) struct Wire {
    http: reqwest::Client,
    base: String,
    token: RwLock<String>,
    timeout: Duration,
}

impl Wire {
    pub fn new(base_url: &str, token: String, timeout: Duration) -> Result<Wire, Error> {
        parse_base(base_url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Keep the connection across battery-mode polls (up to the idle
            // cap apart), so an idle replica does not pay a TCP/TLS handshake
            // per probe; the server may still close it sooner.
            .pool_idle_timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(1)
            // edgesync never redirects. Following one would send a queued
            // mutation (body and all) to whatever host the answer names and
            // take that host's 200 as delivery, or fill the replica with its
            // "changes": a 3xx is an error, and the mutation stays queued.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::InvalidUrl(e.to_string()))?;
        Ok(Wire {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            token: RwLock::new(token),
            timeout,
        })
    }

    pub fn set_token(&self, token: String) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    fn auth(&self) -> String {
        format!(
            "Bearer {}",
            self.token.read().unwrap_or_else(|e| e.into_inner())
        )
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, Error> {
        req.header(AUTHORIZATION, self.auth())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Error::Unreachable(describe(&e)))
    }

    /// `GET /v1/changes?since=&limit=` with `If-None-Match: "<since>"`, and
    /// `Prefer: wait=N` for a long-poll.
    pub async fn changes(
        &self,
        since: u64,
        wait: Duration,
        limit: Option<u32>,
    ) -> Result<ChangesResponse, ChangesFailure> {
        // Only non-default parameters are sent: every byte repeats on each
        // idle probe.
        let mut q = format!("/v1/changes?since={since}");
        if let Some(l) = limit {
            q.push_str(&format!("&limit={l}"));
        }
        let mut req = self
            .http
            .get(self.url(&q))
            .header(IF_NONE_MATCH, format!("\"{since}\""));
        // The hold is asked for with `Prefer` rather than `?wait=` because
        // only then does the server say what it granted
        // (`Preference-Applied`): that is how the engine tells a server
        // that does not hold requests from one that had nothing to say.
        let wait_s = wait.as_secs();
        if wait_s > 0 {
            req = req.header(PREFER, format!("wait={wait_s}"));
        }
        let resp = self
            .send(req, wait + LONG_POLL_GRACE.max(self.timeout))
            .await?;
        let poll_interval = header_seconds(resp.headers(), "x-poll-interval");
        let wait_applied = wait_applied(resp.headers());
        let status = resp.status();
        let outcome = match status {
            StatusCode::NOT_MODIFIED => ChangesOutcome::NotModified,
            StatusCode::OK => ChangesOutcome::Page(json_body(resp).await?),
            // Only the server's own verdict on the cursor means a resync: a
            // 409 or 410 from anything else (a proxy, a CDN) would otherwise
            // make us re-read every document each time.
            StatusCode::CONFLICT | StatusCode::GONE => match server_error(resp).await {
                Error::Server { problem, .. } if problem.kind == "cursor-ahead" => {
                    ChangesOutcome::CursorAhead
                }
                Error::Server { problem, .. } if problem.kind == "cursor-expired" => {
                    ChangesOutcome::CursorExpired
                }
                error => {
                    return Err(ChangesFailure {
                        error,
                        poll_interval,
                    })
                }
            },
            _ => {
                return Err(ChangesFailure {
                    error: server_error(resp).await,
                    poll_interval,
                })
            }
        };
        Ok(ChangesResponse {
            outcome,
            poll_interval,
            wait_applied,
        })
    }

    /// One page of `GET /v1/docs`.
    pub async fn docs_page(&self, after: Option<&str>, limit: u32) -> Result<DocsPage, Error> {
        let mut q = format!("/v1/docs?limit={limit}");
        if let Some(after) = after {
            q.push_str("&after=");
            q.push_str(&encode_query_value(after));
        }
        let resp = self.send(self.http.get(self.url(&q)), self.timeout).await?;
        if resp.status() != StatusCode::OK {
            return Err(server_error(resp).await);
        }
        json_body(resp).await
    }

    /// `POST /v1/mutations` with the given queued mutations, in order.
    pub async fn mutations(&self, batch: &[PendingMutation]) -> Result<BatchResponse, Error> {
        let items: Vec<Value> = batch.iter().map(batch_item).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "mutations": items }))
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let req = self
            .http
            .post(self.url("/v1/mutations"))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let resp = self.send(req, self.timeout).await?;
        if resp.status() != StatusCode::OK {
            return Err(server_error(resp).await);
        }
        json_body(resp).await
    }

    /// `GET /v1/docs/{c}/{id}`: `None` on 404.
    pub async fn get_doc(&self, collection: &str, id: &str) -> Result<Option<Document>, Error> {
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/v1/docs/{collection}/{id}"))),
                self.timeout,
            )
            .await?;
        match resp.status() {
            StatusCode::OK => json_body(resp).await.map(Some),
            StatusCode::NOT_FOUND => {
                let (status, problem) = problem_of(resp).await;
                // Only edgesync's own answer means the document is absent; a
                // 404 for an unknown route, or one that is no problem
                // document of edgesync's (a proxy, a wrong path prefix in
                // the server URL), is an error.
                if problem.kind == "document-not-found" {
                    Ok(None)
                } else {
                    Err(Error::Server {
                        status,
                        problem,
                        retry_after: None,
                    })
                }
            }
            _ => Err(server_error(resp).await),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's Display hides the cause ("error sending request"); the chain
    // says what actually happened (connection refused, timeout…).
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

pub(crate) fn batch_item(p: &PendingMutation) -> Value {
    let m = &p.mutation;
    let mut item = serde_json::json!({
        "id": p.key,
        "op": m.op.as_str(),
        "collection": m.collection,
        "doc": m.id,
    });
    if let Some(v) = &m.value {
        item["value"] = v.clone();
    }
    if let Some(v) = m.if_version {
        item["if_version"] = v.into();
    }
    item
}

/// Percent-encode a query value (names are `[A-Za-z0-9._~-]` plus the `/`
/// between collection and id; anything else is encoded defensively).
fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header_seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// The `wait` preference a server applied (RFC 7240 `Preference-Applied`,
/// e.g. `wait=25`; several preferences may share the header, comma-separated).
fn wait_applied(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(PREFERENCE_APPLIED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| {
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let secs: u64 = value.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(secs.min(86_400)))
        })
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86_400)),
    )
}

/// Largest response body read, errors included: a page of changes or
/// documents holds at most 1 MiB of values, and one document at most the
/// server's largest body (16 MiB), so this is room to spare for any
/// edgesync answer, and a bound on what a broken or hostile server can make
/// the client hold. A problem document is usually a few hundred bytes, but
/// the one that stops a batch lists the results (documents included) of
/// every item settled before it: cut short, they would be lost, and items
/// refused for good would be sent, and judged, again.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// The body, or an error once it passes `max` bytes (read no further).
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Error> {
    let too_large = || Error::Protocol(format!("response body larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::Unreachable(describe(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn json_body<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, Error> {
    let bytes = read_capped(resp, MAX_RESPONSE_BYTES).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("bad response body: {e}")))
}

async fn problem_of(resp: reqwest::Response) -> (u16, Problem) {
    let status = resp.status();
    let bytes = read_capped(resp, MAX_RESPONSE_BYTES)
        .await
        .unwrap_or_default();
    let problem = serde_json::from_slice::<Problem>(&bytes)
        .ok()
        .filter(|p| !p.title.is_empty() || !p.kind.is_empty())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim();
            Problem {
                kind: String::new(),
                title: status
                    .canonical_reason()
                    .unwrap_or("unexpected status")
                    .to_string(),
                status: status.as_u16(),
                detail: (!text.is_empty()).then(|| text.chars().take(300).collect()),
                extensions: Default::default(),
            }
        });
    (status.as_u16(), problem)
}

async fn server_error(resp: reqwest::Response) -> Error {
    let retry_after = retry_after(resp.headers());
    let (status, problem) = problem_of(resp).await;
    Error::Server {
        status,
        problem,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn preference_applied_wait() {
        let mut h = HeaderMap::new();
        assert_eq!(wait_applied(&h), None);
        h.insert(PREFERENCE_APPLIED, HeaderValue::from_static("wait=25"));
        assert_eq!(wait_applied(&h), Some(Duration::from_secs(25)));
        h.insert(
            PREFERENCE_APPLIED,
            HeaderValue::from_static("return=minimal, Wait=\"0\""),
        );
        assert_eq!(wait_applied(&h), Some(Duration::ZERO));
        h.insert(
            PREFERENCE_APPLIED,
            HeaderValue::from_static("return=minimal"),
        );
        assert_eq!(wait_applied(&h), None);
    }

    #[test]
    fn batch_items_follow_the_contract() {
        let p = PendingMutation {
            seq: 1,
            key: "k".into(),
            mutation: crate::Mutation::delete("c", "d").if_version(0),
            enqueued_at_ms: 0,
        };
        assert_eq!(
            batch_item(&p),
            serde_json::json!({"id":"k","op":"delete","collection":"c","doc":"d","if_version":0})
        );
    }

    #[test]
    fn server_urls_are_normalised() {
        for (given, normalised) in [
            ("http://sync.example.com", "http://sync.example.com"),
            ("HTTP://Sync.Example.COM:80/", "http://sync.example.com"),
            ("https://sync.example.com:443", "https://sync.example.com"),
            (
                "https://u:p@sync.example.com:8443/base/",
                "https://sync.example.com:8443/base",
            ),
        ] {
            assert_eq!(normalize_url(given).unwrap(), normalised, "{given}");
        }
        assert!(normalize_url("ftp://x").is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query_value("todos/a1"), "todos/a1");
        assert_eq!(encode_query_value("a b&c"), "a%20b%26c");
    }
}
