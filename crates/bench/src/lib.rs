//! # edgesync-bench
//!
//! The benchmark tool behind `BENCHMARKS.md`: edgesync's native server and
//! its Spin components (in the test harness), side by side in one run with
//! a real peer doing the same job over HTTP (PouchDB Server, in memory) and
//! the loopback limit (a hyper server doing no work: a fixed 304 for idle
//! polls, fixed answers to held requests for the fan-out wake-up), all
//! measured by one load generator. It reports; it never fails on a threshold.
//!
//! ```text
//! cargo run --release -p edgesync-bench -- all            # full run, for BENCHMARKS.md
//! cargo run --release -p edgesync-bench -- all --quick    # a few minutes (CI smoke check)
//! cargo run --release -p edgesync-bench -- all --out bench.md --no-peer --no-spin
//! cargo run --release -p edgesync-bench -- kv             # KV cost per request type only
//! ```
//!
//! The tool builds the release `edgesync` and `edgesync-spin-harness`
//! binaries it spawns (`cargo build --release`, same target directory),
//! installs PouchDB Server with `npm` into `<target>/bench-peer/` the first
//! time, starts every server on a free 127.0.0.1 port with a temporary data
//! directory, and stops them at the end. Missing Spin components, Node or
//! npm only skip the rows that need them, and the output says so.
//!
//! What is measured, and how each figure maps onto the peer, is written
//! next to each table in the output. This crate is not part of `cargo
//! test`: the numbers depend on the machine and on what else runs on it.

pub mod client;
pub mod kvcost;
pub mod limit;
pub mod procs;
pub mod report;
pub mod scenarios;
