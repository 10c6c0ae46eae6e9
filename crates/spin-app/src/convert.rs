//! Between the raw parts of a wasi:http request/response and the `http`
//! crate's types the core speaks. Kept free of Spin types so it is tested
//! natively; `lib.rs` feeds it what spin-sdk hands over.

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, Response, Uri};

/// A request that Spin accepted but the `http` crate cannot represent.
/// Spin's HTTP stack (hyper) has already validated what reaches a
/// component, so these are answered with a plain 400 rather than handed to
/// the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The method is not a valid HTTP token.
    #[error("invalid method {0:?}")]
    Method(String),
    /// The path and query do not form a valid origin-form URI.
    #[error("invalid request target {0:?}")]
    Target(String),
}

/// Build the core's request from Spin's parts. The URI is origin-form
/// (`/v1/changes?since=3`), as the native server's HTTP layer hands it
/// over, so both hosts give the core the same thing. Header entries that
/// are not valid `http` names/values are dropped; repeated headers are kept.
pub fn to_core_request(
    method: &str,
    path_with_query: Option<&str>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
) -> Result<Request<Vec<u8>>, RequestError> {
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| RequestError::Method(method.into()))?;
    let target = path_with_query.filter(|t| !t.is_empty()).unwrap_or("/");
    let uri: Uri = target
        .parse()
        .map_err(|_| RequestError::Target(target.into()))?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let map = request.headers_mut();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
    }
    Ok(request)
}

/// Response headers the wasi:http host refuses (`Fields.from-list` fails on
/// any of them, losing the whole response). They are hop-by-hop, so the
/// core has no business sending them; dropping them keeps a stray one from
/// turning a good answer into a 500.
const FORBIDDEN: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "http2-settings",
];

/// A response as `wasi:http` `outgoing-response` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseParts {
    /// Status code.
    pub status: u16,
    /// Header entries, order and repetitions kept.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// Split the core's response into what `wasi:http` `outgoing-response`
/// takes.
///
/// `content-length` is passed on only when it equals the body's length:
/// the host enforces it against the bytes written and fails the response on
/// a mismatch (for `HEAD`, the core may describe a body it does not send);
/// without it the host frames the body itself.
pub fn from_core_response(response: Response<Vec<u8>>) -> ResponseParts {
    let (parts, body) = response.into_parts();
    let body_len = body.len().to_string();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, value)| {
            if *name == CONTENT_LENGTH {
                return value.as_bytes() == body_len.as_bytes();
            }
            !FORBIDDEN.contains(&name.as_str())
        })
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    ResponseParts {
        status: parts.status.as_u16(),
        headers,
        body,
    }
}

/// A complete `application/problem+json` response (RFC 9457).
pub fn problem(status: u16, kind: &str, title: &str, detail: &str) -> Response<Vec<u8>> {
    let body = serde_json::json!({
        "type": kind,
        "title": title,
        "status": status,
        "detail": detail,
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .header("cache-control", "no-store")
        .body(body.to_string().into_bytes())
        .expect("status codes used here are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_method_target_repeated_headers_and_body() {
        let request = to_core_request(
            "PATCH",
            Some("/v1/docs/todos/a1?x=1"),
            vec![
                (
                    "content-type".into(),
                    b"application/merge-patch+json".to_vec(),
                ),
                ("accept".into(), b"a".to_vec()),
                ("Accept".into(), b"b".to_vec()),
                ("bad header".into(), b"dropped".to_vec()),
                (
                    "spin-full-url".into(),
                    b"http://h/v1/docs/todos/a1".to_vec(),
                ),
            ],
            b"{}".to_vec(),
        )
        .unwrap();
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), "/v1/docs/todos/a1");
        assert_eq!(request.uri().query(), Some("x=1"));
        let accepts: Vec<_> = request.headers().get_all("accept").iter().collect();
        assert_eq!(accepts, ["a", "b"]);
        assert_eq!(request.headers().len(), 4);
        assert_eq!(request.body(), b"{}");
    }

    #[test]
    fn odd_requests_are_refused_or_defaulted() {
        assert_eq!(
            to_core_request("GE T", Some("/"), vec![], vec![]).unwrap_err(),
            RequestError::Method("GE T".into())
        );
        assert!(matches!(
            to_core_request("GET", Some("/a b"), vec![], vec![]),
            Err(RequestError::Target(_))
        ));
        let request = to_core_request("PROPFIND", None, vec![], vec![]).unwrap();
        assert_eq!(request.uri(), "/");
        assert_eq!(request.method().as_str(), "PROPFIND");
    }

    #[test]
    fn responses_keep_headers_but_drop_what_the_host_would_reject() {
        let response = Response::builder()
            .status(200)
            .header("etag", "\"3\"")
            .header("vary", "Origin")
            .header("vary", "Accept")
            .header("connection", "close")
            .header("content-length", "2")
            .body(b"{}".to_vec())
            .unwrap();
        let parts = from_core_response(response);
        assert_eq!(parts.status, 200);
        assert_eq!(parts.body, b"{}");
        let names: Vec<_> = parts.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["etag", "vary", "vary", "content-length"]);

        // HEAD: the length describes a body that is not sent.
        let head = Response::builder()
            .status(200)
            .header("content-length", "120")
            .body(Vec::new())
            .unwrap();
        assert!(from_core_response(head).headers.is_empty());
    }

    #[test]
    fn problems_are_rfc_9457() {
        let response = problem(500, "misconfigured", "Service misconfigured", "see logs");
        assert_eq!(response.status(), 500);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["type"], "misconfigured");
        assert_eq!(body["status"], 500);
        assert_eq!(body["detail"], "see logs");
    }
}
