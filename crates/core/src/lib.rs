//! # edgesync-core
//!
//! The whole edgesync v1 protocol as an I/O-free library. A host hands
//! [`Service::handle`] an `http::Request` and gets an `http::Response`; in
//! between the core talks only to a [`Kv`] store and a [`Host`] (clock,
//! entropy, change notification). Spin, tokio and SQLite live in the hosts.

pub mod auth;
pub mod config;
mod engine;
mod entry;
pub mod host;
mod http_util;
mod keys;
pub mod kv;
mod merge_patch;
pub mod names;
mod problem;
mod routes;
mod service;
mod time;

pub use config::{Config, ConfigError, CorsOrigins};
pub use host::Host;
pub use kv::{decode_counter, encode_counter, Kv, KvError, KvErrorKind, MaybeSend, MaybeSync};
pub use service::{Handled, Parked, RequestInfo, Service};

/// Every route of the v1 API with the methods it accepts (besides `HEAD`,
/// accepted wherever `GET` is, and `OPTIONS`, accepted everywhere). The
/// OpenAPI file is checked against this list.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/health", &["GET"]),
    ("/v1/head", &["GET"]),
    ("/v1/changes", &["GET"]),
    ("/v1/docs", &["GET"]),
    (
        "/v1/docs/{collection}/{id}",
        &["GET", "PUT", "PATCH", "DELETE"],
    ),
    ("/v1/mutations", &["POST"]),
];
