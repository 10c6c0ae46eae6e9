//! # edgesync-read
//!
//! The Spin component `spin.toml` routes the read side to: `/v1/changes`
//! (long-polls), `/v1/head`, the `/v1/docs` listing, `/v1/health`, and any
//! path no other route claims. All the work happens in `edgesync-spin-app`,
//! which embeds the same core as `edgesync-write`: a request routed to the
//! other component is answered identically.

#[cfg(target_family = "wasm")]
#[spin_sdk::http_component]
async fn handle(
    request: spin_sdk::http::IncomingRequest,
    response_out: spin_sdk::http::ResponseOutparam,
) {
    edgesync_spin_app::serve(env!("CARGO_PKG_NAME"), request, response_out).await;
}
