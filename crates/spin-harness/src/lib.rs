//! # edgesync-spin-harness — a Spin-faithful test harness
//!
//! **This is a test tool, not a product runtime.** No Spin CLI can be
//! installed on the project's machines, so the Spin components
//! (`components/write`, `components/read`) are tested by running their real
//! `.wasm` files here: a small host built on `wasmtime`, `wasmtime-wasi` and
//! `wasmtime-wasi-http` 48 that reads the app's `spin.toml` and serves it
//! over HTTP/1.1 the way `spin up` would — including the behaviours of
//! Spin's default SQLite key-value store that the design must survive.
//! Production deployments run on real Spin hosts; nothing here is meant to
//! be deployed.
//!
//! ## Use
//!
//! ```no_run
//! use edgesync_spin_harness::{Harness, HarnessOptions};
//! let harness = Harness::start(HarnessOptions {
//!     manifest: "spin.toml".into(),
//!     data_dir: "/tmp/edgesync-test".into(),
//!     variables: vec![("jwt_secret".into(), "a-secret-of-at-least-32-bytes!!!".into())],
//!     ..HarnessOptions::default() // 127.0.0.1:0, label "default" only
//! })?;
//! let url = harness.base_url(); // http://127.0.0.1:PORT
//! // ... send requests ...
//! harness.shutdown();
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! or the binary: `edgesync-spin-harness --manifest spin.toml --listen
//! 127.0.0.1:0 --data-dir DIR --var jwt_secret=...` (also `--kv-label L`,
//! `--shutdown-grace SECS`, `--compile-cache DIR`, `--no-compile-cache`,
//! `--kv-read-cache` for Spin before 3.2),
//! which prints exactly one line, `listening on http://127.0.0.1:PORT`, on
//! stdout once it serves, logs one line per request (method, path,
//! component, status, ms) on stderr (`RUST_LOG` filters), and serves until
//! SIGINT/SIGTERM. Guests' stdout and stderr go to the harness's stderr.
//!
//! Compiling a component takes ~20 s in a debug build of the harness, so
//! compiled components are kept in [`HarnessOptions::compile_cache`]
//! (default [`default_compile_cache`], keyed by the `.wasm` bytes and the
//! wasmtime configuration): a later start takes well under a second.
//!
//! ## Spin behaviours reproduced, and where they come from
//!
//! (Paths are in the spinframework/spin repository unless noted.)
//!
//! * **Manifest** (`crates/manifest`): `spin_manifest_version = 2`, app
//!   `[variables]` (exactly one of `required`/`default`), `[[trigger.http]]`
//!   `route`/`component`, `[component.<id>]` `source`, `key_value_stores`,
//!   `variables` templates, `environment`. See [`manifest`].
//! * **Routing** (`crates/http/src/routes.rs` over `routefinder`): exact
//!   and `/...` wildcard routes, `:name` segments, exact beats wildcard,
//!   longer prefix wins, last duplicate wins, unmatched → 404 with an empty
//!   body; `/.well-known/spin/health` answers `OK`. See [`routing`].
//! * **Request headers** (`crates/trigger-http/src/headers.rs`): the
//!   guest sees an absolute URI and, appended after the client's headers,
//!   `spin-full-url`, `spin-path-info`, `spin-matched-route`,
//!   `spin-base-path`, `spin-raw-component-route`, `spin-component-route`,
//!   `spin-client-addr` and `spin-path-match-<name>`. wasmtime-wasi-http
//!   (which Spin also runs on) strips its forbidden headers (`Host`,
//!   `Connection`, `Transfer-Encoding`, …) before the guest sees them; the
//!   authority is in the URI.
//! * **Execution** (`crates/trigger-http/src/wasi.rs`): a fresh instance
//!   per request from an `InstancePre` made at startup; the guest's
//!   `wasi:http/incoming-handler` runs in its own task, so it may keep
//!   streaming after the response head; a guest that traps or returns
//!   without responding gets a 500 with an empty body; when the client goes
//!   away while the body streams, the guest is aborted. wasmtime's async
//!   support turns a guest's `std::thread::sleep` into a timer, so many
//!   held long-polls run concurrently.
//! * **Variables** (`crates/expressions`, `crates/factor-variables`):
//!   provider order `--var` (`spin up --variable`), then
//!   `SPIN_VARIABLE_<NAME>`, then the default; an unresolved variable stops
//!   startup; `fermyon:spin/variables.get` errors `invalid-name` /
//!   `undefined`; `wasi:config/store` answers `none` for both. See
//!   [`variables`].
//! * **Key-value** (`crates/key-value-spin/src/store.rs`,
//!   `crates/factor-key-value`): SQLite table `spin_key_value(store, key,
//!   value)` in `<data-dir>/sqlite_key_value.db`, one `store` per label,
//!   shared by `fermyon:spin/key-value` and `wasi:keyvalue`; value-compared
//!   CAS that remembers `current()`, upsert on a key absent at `current()`,
//!   `get-many` leaving missing keys out, `increment` as 8-byte little-endian
//!   `i64`, `access-denied` / `no-such-store`, a component listing an
//!   undefined label refused at startup. On a non-8-byte value Spin's
//!   `increment` panics and poisons the store's connection mutex: the
//!   harness traps the request (500, logged as an error) and every later
//!   operation on that label traps too, until the harness restarts. See
//!   [`kv`].
//! * **Key-value on Spin before 3.2** (`crates/factor-key-value/src/util.rs`
//!   `CachingStoreManager`, removed by spinframework/spin PR 2995), with
//!   [`HarnessOptions::kv_read_cache`]: every opened store handle keeps
//!   each value it read or wrote, and never reads that key again.
//!
//! ## Imports provided
//!
//! `wasi:cli`, `wasi:clocks`, `wasi:random`, `wasi:io`, `wasi:filesystem`
//! (no preopens), `wasi:sockets` (wasmtime-wasi, 0.2.x), `wasi:http/types`
//! and `wasi:http/outgoing-handler` (wasmtime-wasi-http; denied unless the
//! component lists `allowed_outbound_hosts`, then not filtered by host),
//! `fermyon:spin/key-value@2.0.0`, `fermyon:spin/variables@2.0.0`,
//! `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2` and
//! `wasi:config/store@0.2.0-draft-2024-09-27`. A component importing
//! anything else (Spin's SQLite, Redis, Postgres, LLM, …) fails at startup
//! with an error naming the import.
//!
//! ## Not reproduced
//!
//! Spin's `.env` variable file, `allowed_outbound_hosts` host matching,
//! service chaining, file mounts, the `/.well-known/spin/info` endpoint,
//! result-size limits of the key-value store, routefinder's `.`-separated
//! segments, and every trigger but HTTP.

pub mod host;
pub mod kv;
pub mod manifest;
pub mod routing;
mod server;
pub mod variables;

pub use server::{default_compile_cache, Harness, HarnessOptions};
