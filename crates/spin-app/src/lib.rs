//! # edgesync-spin-app
//!
//! Everything the edgesync Spin components share: it runs the I/O-free
//! core ([`edgesync_core::Service`]) inside a Spin (WASI 0.2) component.
//! Each component (`components/write`, `components/read`) is a few lines
//! that hand their request to [`serve`]. What this crate adds around the
//! core:
//!
//! * **Key-value store**: `SpinBucket` implements
//!   [`edgesync_kv_wasi::RawBucket`] over the `wasi:keyvalue@0.2.0-draft2`
//!   `store`, `atomics` and `batch` imports (bindings generated from the
//!   repository's `wit/` with wit-bindgen 0.51, the version spin-sdk 5.2
//!   uses). The bucket is the store labelled `default`, opened once per
//!   request on first use; reads go through a handle of their own, opened
//!   again before it would read a key a second time (Spin before 3.2
//!   cached every read of a handle for good; see `SpinBucket`).
//!   [`edgesync_kv_wasi::WasiKv`] turns it into the core's `Kv`, correcting
//!   for the backends' quirks.
//! * **Host**: `SpinHost` gives the core the wall clock, `wasi:random`
//!   entropy and long-poll waiting; `log_changed` does nothing, because
//!   another instance cannot be woken.
//! * **Settings** from the Spin variables named in
//!   [`edgesync_core::config::SETTING_NAMES`] (see [`settings`]). The
//!   manifest marks `jwt_secret` `required`, so without one `spin up`
//!   refuses to start the app. If the values do not form a valid
//!   configuration (for example `jwt_secret` is shorter than 32 bytes),
//!   every request, `/v1/health` included, is answered `500` with an
//!   `application/problem+json` body of type `misconfigured`, and the
//!   reason is written to stderr (Spin's component log): it is the
//!   operator's mistake, not the client's. A variables provider that fails
//!   (a secrets store being down) is answered `503 unavailable` with
//!   `Retry-After` instead: it may recover by itself.
//! * **HTTP glue** between spin-sdk's wasi:http types and the
//!   `http::Request<Vec<u8>>` / `http::Response<Vec<u8>>` the core speaks
//!   (see [`convert`]). The body is streamed in and reading stops after
//!   `max_body_bytes + 1` bytes, so an oversized upload is never buffered
//!   and the core answers it with 413.
//!
//! ## What a waiting long-poll costs
//!
//! Spin has no key-value watch and a component instance serves one request,
//! so a `GET /v1/changes?wait=S` that finds nothing new is held by sleeping
//! (`std::thread::sleep`) and letting the core re-read its one small
//! change-detection key after each sleep (see [`wait`]):
//!
//! | part of the wait | re-check interval | KV reads per second |
//! |---|---|---|
//! | first half second | 100 ms | 10 |
//! | after that | 215 ms | 4.7 |
//!
//! The core's own reads before it starts waiting and after it wakes up to
//! a change are not in this table. Each re-check also opens the store
//! again (a host call, not a KV read; Spin's Redis store sends a `PING`
//! for it, so there a re-check is two Redis commands; see `SpinBucket`). A held request never sleeps past the
//! deadline the core sets. A write is therefore seen by a waiter at most
//! 215 ms later, plus one KV read. Over whole holds, per waiting client:
//!
//! | hold with no change | reads | average reads/s |
//! |---|---|---|
//! | 1 s | 8 | 8 |
//! | 5 s | 26 | 5.2 |
//! | 10 s | 50 | 5.0 |
//! | 25 s (the default `max_wait_seconds`) | 119 | 4.8 |
//!
//! A user who has never written has no next slot to read yet, so each
//! re-check also reads the floor: twice these figures until the first
//! write. So 200 clients holding default long-polls cost about 950 reads/s, the
//! order of a managed host's per-app cap (~1,000 reads/s): plan capacity
//! with that in mind, or raise clients' smart-polling intervals instead.
//!
//! ## Two components, one core
//!
//! Spin routes by path, not by method, so the split (in `spin.toml`) is by
//! path:
//!
//! * `edgesync-write`: `/v1/docs/...` (single documents: GET, PUT, PATCH,
//!   DELETE) and `/v1/mutations`;
//! * `edgesync-read`: `/v1/changes`, `/v1/head`, `/v1/docs` (the snapshot
//!   listing; exact path), `/v1/health`, and every other path, so that
//!   unknown routes get the core's `404` problem rather than Spin's own
//!   plain-text one.
//!
//! Long-polls, the bulk of the traffic, land on the read component and
//! can be scaled, limited or timed out separately from writes. Both
//! components embed the same core and call [`serve`] the same way, so a
//! request that reaches the "wrong" one is still answered exactly right;
//! the split is only for operations.

pub mod body;
pub mod convert;
pub mod settings;
pub mod store_errors;
pub mod wait;

#[cfg(target_family = "wasm")]
mod bindings;
#[cfg(target_family = "wasm")]
mod host;
#[cfg(target_family = "wasm")]
mod kv;

#[cfg(target_family = "wasm")]
pub use host::SpinHost;
#[cfg(target_family = "wasm")]
pub use kv::{SpinBucket, STORE_LABEL};

#[cfg(target_family = "wasm")]
pub use app::serve;

#[cfg(target_family = "wasm")]
mod app {
    use edgesync_core::{RequestInfo, Service};
    use edgesync_kv_wasi::WasiKv;
    use spin_sdk::http::{Fields, IncomingRequest, OutgoingResponse, ResponseOutparam};

    use crate::{body, convert, settings, SpinBucket, SpinHost, STORE_LABEL};

    /// Answer one request with the edgesync core. `component` names the
    /// caller in log lines.
    pub async fn serve(component: &str, request: IncomingRequest, response_out: ResponseOutparam) {
        let response = respond(component, request).await;
        send(component, response, response_out).await;
    }

    async fn respond(component: &str, request: IncomingRequest) -> http::Response<Vec<u8>> {
        let config = match settings::load(read_variable) {
            Ok(config) => config,
            Err(e @ settings::SettingsError::Provider { .. }) => {
                eprintln!("{component}: settings unavailable: {e}");
                let mut r = convert::problem(
                    503,
                    "unavailable",
                    "Service unavailable",
                    "The app's settings could not be read just now; retry.",
                );
                r.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("1"));
                return r;
            }
            Err(e) => {
                eprintln!("{component}: the app is misconfigured: {e}");
                return misconfigured();
            }
        };
        let method = request.method().to_string();
        let target = request.path_with_query();
        let headers = request.headers().entries();
        let body = if body::announced_too_large(&headers, config.max_body_bytes) {
            // Not read: the core answers 413 by length alone.
            Ok(vec![0; config.max_body_bytes + 1])
        } else {
            body::read_limited(request.into_body_stream(), config.max_body_bytes).await
        };
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                // The client went away or broke framing mid-body: its fault.
                eprintln!(
                    "{component}: reading the request body failed: {}",
                    e.to_debug_string()
                );
                return convert::problem(
                    400,
                    "invalid-body",
                    "Bad Request",
                    "The request body could not be read.",
                );
            }
        };
        let request = match convert::to_core_request(&method, target.as_deref(), headers, body) {
            Ok(request) => request,
            Err(e) => {
                return convert::problem(400, "invalid-request", "Bad Request", &e.to_string())
            }
        };
        let service = Service::new(
            config,
            WasiKv::new(SpinBucket::new(STORE_LABEL)),
            SpinHost::new(),
        );
        let response = service.handle(request).await;
        if response.status().is_server_error() {
            let route = response
                .extensions()
                .get::<RequestInfo>()
                .map_or("unmatched", |info| info.route);
            eprintln!(
                "{component}: {method} {route} answered {}",
                response.status()
            );
        }
        response
    }

    fn read_variable(name: &str) -> Result<Option<String>, settings::ReadError> {
        use spin_sdk::variables::Error;
        match spin_sdk::variables::get(name) {
            Ok(value) => Ok(Some(value)),
            Err(Error::Undefined(_)) => Ok(None),
            Err(Error::Provider(message)) => Err(settings::ReadError::Provider(message)),
            Err(e) => Err(settings::ReadError::Other(format!("{e:?}"))),
        }
    }

    fn misconfigured() -> http::Response<Vec<u8>> {
        convert::problem(
            500,
            "misconfigured",
            "Service misconfigured",
            "The edgesync app is misconfigured; its operator must fix its settings \
             (the reason is in the app's log).",
        )
    }

    async fn send(component: &str, response: http::Response<Vec<u8>>, out: ResponseOutparam) {
        let parts = convert::from_core_response(response);
        let status = parts.status;
        let (outgoing, body) = match outgoing(parts) {
            Ok(sendable) => sendable,
            Err(e) => {
                eprintln!("{component}: could not pass on a {status} response: {e}");
                let fallback = convert::from_core_response(convert::problem(
                    500,
                    "internal-error",
                    "Internal Server Error",
                    "The response could not be sent.",
                ));
                match outgoing(fallback) {
                    Ok(sendable) => sendable,
                    Err(e) => {
                        eprintln!("{component}: could not send a 500 either: {e}");
                        return;
                    }
                }
            }
        };
        if let Err(e) = out.set_with_body(outgoing, body).await {
            // The client is gone; nothing else to tell.
            eprintln!("{component}: writing the response body failed: {e:?}");
        }
    }

    fn outgoing(parts: convert::ResponseParts) -> Result<(OutgoingResponse, Vec<u8>), String> {
        let fields = Fields::from_list(&parts.headers).map_err(|e| format!("headers: {e:?}"))?;
        let response = OutgoingResponse::new(fields);
        response
            .set_status_code(parts.status)
            .map_err(|()| format!("status {}", parts.status))?;
        Ok((response, parts.body))
    }
}
