//! # edgesync-core
//!
//! The whole edgesync v1 protocol as an I/O-free library. A host hands
//! [`Service::handle`] an `http::Request` and gets an `http::Response`; in
//! between the core talks only to a [`Kv`] store and a [`Host`] (clock,
//! entropy, change notification). Spin, tokio and SQLite live in the hosts.

pub mod config;
pub mod host;
pub mod kv;
mod routes;
mod service;

pub use config::{Config, ConfigError, CorsOrigins};
pub use host::Host;
pub use kv::{decode_counter, encode_counter, Kv, KvError, KvErrorKind, MaybeSend, MaybeSync};
pub use service::{RequestInfo, Service};
