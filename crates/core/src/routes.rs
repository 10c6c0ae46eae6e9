//! Routing (placeholder until the protocol lands).

use http::{Request, Response, StatusCode};

use crate::host::Host;
use crate::kv::Kv;
use crate::service::Service;

pub(crate) async fn handle<K: Kv, H: Host>(
    _service: &Service<K, H>,
    request: Request<Vec<u8>>,
) -> Response<Vec<u8>> {
    if request.uri().path() == "/v1/health" {
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(br#"{"status":"ok"}"#.to_vec())
            .expect("static response");
    }
    Response::builder()
        .status(StatusCode::NOT_IMPLEMENTED)
        .body(Vec::new())
        .expect("static response")
}
