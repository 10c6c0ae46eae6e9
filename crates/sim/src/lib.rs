//! # edgesync-sim
//!
//! Deterministic simulation of the edgesync service, in the spirit of
//! FoundationDB's simulator and TigerBeetle's VOPR: one seed reproduces one
//! whole run.
//!
//! A run starts the real [`edgesync_core::Service`] on an in-memory store
//! that behaves like a chosen backend ([`store::Backend`]: Spin's SQLite
//! store with its upsert-on-absent swap and key-dropping batches, Spin's
//! Redis store with its failing batches and lying swaps — both through the
//! project's real `edgesync-kv-wasi` adapter — or exact semantics like the
//! native adapters). A seeded scheduler ([`sched::Sim`]) interleaves many
//! concurrent requests at KV-operation granularity, drops requests between
//! any two KV operations (a crashed host), and drives a virtual clock that
//! long-poll deadlines run on. Afterwards [`run::run`] checks the six
//! invariants of the design on everything clients observed.
//!
//! ```text
//! cargo run -p edgesync-sim --release -- --seeds 10000          # many seeds
//! cargo run -p edgesync-sim --release -- --seed 1234 --verbose  # replay one
//! EDGESYNC_SIM_DUMP=1 cargo run -p edgesync-sim --release -- --seed 1234
//!     # a failing seed also prints the store and every request's answer
//! ```
//!
//! Three small modules serve tests and the benchmark tool that drive the
//! core one request at a time: [`counting`] counts the KV calls a request
//! makes (at the `Kv` trait or at the raw `wasi:keyvalue` calls),
//! [`direct`] runs a request without the scheduler, and [`faults`] fails
//! chosen KV operations.

pub mod counting;
pub mod direct;
pub mod faults;
pub mod run;
pub mod sched;
pub mod store;

pub use run::{run, RunConfig, Summary};
