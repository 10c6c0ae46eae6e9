//! # edgesync-write
//!
//! The Spin component `spin.toml` routes single-document requests
//! (`/v1/docs/...`: GET, PUT, PATCH, DELETE) and `/v1/mutations` to. All the
//! work happens in `edgesync-spin-app`, which embeds the same core as
//! `edgesync-read`: a request routed to the other component is answered
//! identically.

#[cfg(target_family = "wasm")]
#[spin_sdk::http_component]
async fn handle(
    request: spin_sdk::http::IncomingRequest,
    response_out: spin_sdk::http::ResponseOutparam,
) {
    edgesync_spin_app::serve(env!("CARGO_PKG_NAME"), request, response_out).await;
}
