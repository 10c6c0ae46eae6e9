//! Problem details (RFC 9457): the one shape every error response takes.

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::kv::KvError;

/// A problem to answer with. `kind` becomes the `type` member: a short
/// relative URI reference naming the problem (see docs/protocol-decisions.md).
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &str, value: Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    fn header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn invalid_token(detail: &str) -> Self {
        let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{detail}\"");
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid-token",
            "Invalid or missing bearer token",
            detail,
        )
        .header(WWW_AUTHENTICATE, challenge)
    }
    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "Request body is not valid JSON",
            detail,
        )
    }
    pub fn invalid_body(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Request body has the wrong shape",
            detail,
        )
    }
    pub fn invalid_name(what: &str, value: &str) -> Self {
        let shown: String = value.chars().take(160).collect();
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-name",
            "Invalid collection or document name",
            format!("{what} {shown:?} must be 1-128 characters of [A-Za-z0-9._~-] and not \".\" or \"..\""),
        )
    }
    pub fn invalid_parameter(parameter: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid parameter",
            detail,
        )
        .with("parameter", json!(parameter))
    }
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such route",
            "no route matches this path",
        )
    }
    pub fn document_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "document-not-found",
            "Document not found",
            "the document does not exist or was deleted",
        )
    }
    pub fn method_not_allowed(allow: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("this route accepts {allow}"),
        )
        .header(http::header::ALLOW, allow)
    }
    pub fn cursor_ahead(since: u64, head: u64) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "cursor-ahead",
            "Cursor is ahead of the log",
            format!("since={since} is greater than the head ({head}); resync from /v1/docs"),
        )
        .with("head", json!(head))
    }
    pub fn cursor_expired(since: u64, floor: u64) -> Self {
        Self::new(
            StatusCode::GONE,
            "cursor-expired",
            "Cursor has expired",
            format!(
                "changes up to {floor} were compacted away (since={since}); resync from /v1/docs"
            ),
        )
        .with("floor", json!(floor))
    }
    pub fn collection_full(collection: &str, max_bytes: usize) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "collection-full",
            "Collection is full",
            format!("the index of collection {collection:?} would exceed {max_bytes} bytes"),
        )
    }
    pub fn too_many_collections(limit: usize) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "too-many-collections",
            "Too many collections",
            format!("this user already has {limit} collections, the most a user may have"),
        )
    }
    pub fn precondition_failed(current_version: Option<u64>) -> Self {
        Self::failed_precondition(
            current_version,
            match current_version {
                Some(v) => format!("the document is at version {v}"),
                None => "the document does not exist".to_owned(),
            },
        )
    }
    /// `If-Match` on a read did not hold; `current` is the number in the
    /// answer's `ETag` (the document's version, the head, the next cursor).
    pub fn read_precondition_failed(current: Option<u64>) -> Self {
        Self::failed_precondition(
            current,
            match current {
                Some(v) => format!("If-Match does not list the current entity tag \"{v}\""),
                None => "this answer has no entity tag for If-Match to match".to_owned(),
            },
        )
    }
    fn failed_precondition(current: Option<u64>, detail: String) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            detail,
        )
        .with("current_version", json!(current))
    }
    pub fn payload_too_large(max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
            format!("request bodies are limited to {max} bytes"),
        )
        .with("max_body_bytes", json!(max))
    }
    /// A name (or the user id) that would make a key longer than the store
    /// takes (`max_key_bytes`).
    pub fn key_too_long(what: &str, len: usize, max: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "key-too-long",
            "Names too long for this store",
            format!(
                "{what} would make a key of {len} bytes; this store takes keys of at most {max} bytes"
            ),
        )
        .with("max_key_bytes", json!(max))
    }
    /// A write whose resulting value (a merge patch can grow a document
    /// past any one request body) would be larger than a body may be.
    pub fn document_too_large(max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "document-too-large",
            "Document too large",
            format!("a document's value is limited to {max} bytes of JSON"),
        )
        .with("max_document_bytes", json!(max))
    }
    pub fn unsupported_media_type(expected: &str) -> Self {
        let problem = Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("send the body as {expected}"),
        )
        .header(http::header::ACCEPT, expected);
        if expected == "application/merge-patch+json" {
            // RFC 5789 §2.2: a PATCH refused for its format names the ones
            // the resource takes.
            problem.header(HeaderName::from_static("accept-patch"), expected)
        } else {
            problem
        }
    }
    pub fn unsupported_content_encoding() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body without a Content-Encoding",
        )
        .header(http::header::ACCEPT_ENCODING, "identity")
    }
    pub fn idempotency_mismatch() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-mismatch",
            "Idempotency key reused",
            "this idempotency key was already used for a different request",
        )
    }
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many mutations",
            format!("this user's mutation rate limit is exhausted; retry in {retry_after_secs} s"),
        )
        .header(RETRY_AFTER, retry_after_secs)
    }
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service temporarily unavailable",
            detail,
        )
        .header(RETRY_AFTER, 1)
    }

    /// The problem as a JSON object (used inside batch results too).
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), json!(self.kind));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        for (k, v) in &self.extensions {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }

    pub fn into_response(self) -> Response<Vec<u8>> {
        let body = serde_json::to_vec(&self.to_json()).expect("JSON serializes");
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// Why a handler stopped: a problem to report, or a KV failure (answered
/// with 503, details only in logs).
#[derive(Debug)]
pub(crate) enum Failure {
    Problem(Problem),
    Kv(KvError),
    /// A batch stopped at an item worth retrying: the answer is that
    /// item's problem, and it carries the results of the items settled
    /// before it (member `results`), so that a client learns their
    /// outcomes — a final refusal above all, which sending the batch
    /// again would evaluate afresh.
    BatchStopped {
        cause: Box<Failure>,
        settled: Vec<Value>,
    },
}

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        Failure::Problem(p)
    }
}

impl From<KvError> for Failure {
    fn from(e: KvError) -> Self {
        Failure::Kv(e)
    }
}

impl Failure {
    pub fn into_problem(self) -> Problem {
        match self {
            Failure::Problem(p) => p,
            Failure::Kv(_) => {
                Problem::unavailable("the key-value store is unavailable; retry shortly")
            }
            Failure::BatchStopped { cause, settled } => {
                cause.into_problem().with("results", Value::Array(settled))
            }
        }
    }

    /// The store's failure behind this one, if any (for the logs).
    pub fn store_error(&self) -> Option<&KvError> {
        match self {
            Failure::Problem(_) => None,
            Failure::Kv(e) => Some(e),
            Failure::BatchStopped { cause, .. } => cause.store_error(),
        }
    }
}
