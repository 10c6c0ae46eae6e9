//! What each route costs in KV operations, measured on the real core with a
//! counting store, so that the cost table in the core's docs stays true and
//! the most important promise stays kept: an idle "anything new?" poll is
//! one read of one small key.
//!
//! `cargo test -p edgesync-sim --test kv_costs -- --nocapture` prints the
//! table.

use edgesync_core::auth::{mint, Expectations};
use edgesync_core::{Config, Service};
use edgesync_sim::counting::{Counting, Snapshot};
use edgesync_sim::direct::{block_on, DirectHost};
use edgesync_sim::store::{MemStore, StrictKv};
use http::Request;

const SECRET: &[u8] = b"kv-cost-secret-kv-cost-secret-kv-cost!!";

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Cost {
    /// Calls that read (get, get_many).
    read_calls: u64,
    /// Keys those calls read.
    keys_read: u64,
    /// Bytes they returned.
    bytes_read: u64,
    /// Calls that write (set, delete_many, compare_and_swap, increment).
    write_calls: u64,
}

impl From<Snapshot> for Cost {
    fn from(s: Snapshot) -> Self {
        Cost {
            read_calls: s.reads(),
            keys_read: s.keys_read,
            bytes_read: s.bytes_read,
            write_calls: s.writes(),
        }
    }
}

struct Bench {
    service: Service<Counting<StrictKv>, DirectHost>,
    token: String,
}

impl Bench {
    fn new(rate_limit: u64) -> Self {
        let kv = Counting::new(StrictKv::new(MemStore::new()));
        let mut config = Config::with_secret(SECRET.to_vec());
        config.rate_limit_per_second = rate_limit;
        let now = 1_800_000_000_000;
        let host = DirectHost::new(now);
        let expect = Expectations {
            secret: SECRET,
            audience: None,
            issuer: None,
        };
        let token = mint(&expect, "alice", now / 1000, 3600);
        Bench {
            service: Service::new(config, kv, host),
            token,
        }
    }

    fn call(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> (u16, Cost) {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.token));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let request = b.body(body.as_bytes().to_vec()).unwrap();
        let counts = &self.service.kv().counts;
        let before = counts.snapshot();
        let status = block_on(self.service.handle(request)).status().as_u16();
        (status, (counts.snapshot() - before).into())
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");
const PATCH: (&str, &str) = ("content-type", "application/merge-patch+json");

fn print(name: &str, c: Cost) {
    println!(
        "| {name} | {} | {} | {} | {} |",
        c.read_calls, c.keys_read, c.bytes_read, c.write_calls
    );
}

#[test]
fn route_costs_stay_within_their_budget() {
    let b = Bench::new(20);
    println!("| request | read calls | keys read | bytes read | write calls |");
    println!("|---|---|---|---|---|");

    // Before the user's first write there is no next slot to read: the
    // floor must be read too, to tell "no log yet" from "compacted away".
    let (s, c) = b.call(
        "GET",
        "/v1/changes?since=0",
        &[("if-none-match", "\"0\"")],
        "",
    );
    assert_eq!(s, 304);
    print("GET /v1/changes?since=0, user with no log yet (304)", c);
    assert_eq!(
        (c.read_calls, c.keys_read, c.write_calls),
        (2, 2, 0),
        "a user without a log: the absent slot, then the floor"
    );

    // A first write sets up the user's log.
    let (s, c) = b.call("PUT", "/v1/docs/todos/a", &[JSON], r#"{"title":"first"}"#);
    assert_eq!(s, 201);
    print("PUT (first ever: creates collection + index)", c);
    let (s, c) = b.call("PUT", "/v1/docs/todos/b", &[JSON], r#"{"title":"second"}"#);
    assert_eq!(s, 201);
    print("PUT create", c);
    let create = c;
    let (s, c) = b.call("PUT", "/v1/docs/todos/b", &[JSON], r#"{"title":"again"}"#);
    assert_eq!(s, 200);
    print("PUT replace", c);
    let replace = c;
    let (s, c) = b.call("PATCH", "/v1/docs/todos/b", &[PATCH], r#"{"done":true}"#);
    assert_eq!(s, 200);
    print("PATCH", c);
    let (s, c) = b.call(
        "PUT",
        "/v1/docs/todos/b",
        &[JSON, ("idempotency-key", "k1")],
        r#"{"x":1}"#,
    );
    assert_eq!(s, 200);
    print("PUT with Idempotency-Key", c);
    let (s, c) = b.call(
        "PUT",
        "/v1/docs/todos/b",
        &[JSON, ("idempotency-key", "k1")],
        r#"{"x":1}"#,
    );
    assert_eq!(s, 200);
    print("PUT replayed (same Idempotency-Key)", c);
    let replayed = c;
    let (s, c) = b.call("DELETE", "/v1/docs/todos/a", &[], "");
    assert_eq!(s, 204);
    print("DELETE", c);
    let (s, c) = b.call("GET", "/v1/docs/todos/b", &[], "");
    assert_eq!(s, 200);
    print("GET document", c);
    let get = c;
    let (s, c) = b.call("GET", "/v1/head", &[], "");
    assert_eq!(s, 200);
    print("GET /v1/head", c);
    let (s, c) = b.call("GET", "/v1/head", &[("if-none-match", "\"6\"")], "");
    assert_eq!(s, 304);
    print("GET /v1/head, If-None-Match at head (304)", c);
    let head_probe = c;
    let (s, c) = b.call(
        "GET",
        "/v1/changes?since=6",
        &[("if-none-match", "\"6\"")],
        "",
    );
    assert_eq!(s, 304);
    print("GET /v1/changes at head (idle poll, 304)", c);
    let idle = c;
    let (s, c) = b.call("GET", "/v1/changes?since=6&wait=5", &[], "");
    assert_eq!(s, 200);
    print(
        "GET /v1/changes?wait=5 at head, nothing comes (one wake-up)",
        c,
    );
    let held = c;
    let (s, c) = b.call("GET", "/v1/changes?since=5", &[], "");
    assert_eq!(s, 200);
    print("GET /v1/changes, 1 new change", c);
    let (s, c) = b.call("GET", "/v1/changes?since=0", &[], "");
    assert_eq!(s, 200);
    print("GET /v1/changes, 6 new changes", c);
    let (s, c) = b.call("GET", "/v1/docs", &[], "");
    assert_eq!(s, 200);
    print("GET /v1/docs (listing, 1 live document)", c);
    let items: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"id":"b{i}","op":"put","collection":"todos","doc":"d{i}","value":{{"i":{i}}}}}"#))
        .collect();
    let (s, c) = b.call(
        "POST",
        "/v1/mutations",
        &[JSON],
        &format!(r#"{{"mutations":[{}]}}"#, items.join(",")),
    );
    assert_eq!(s, 200);
    print("POST /v1/mutations, 10 creates", c);

    // The promises.
    assert_eq!(
        (idle.read_calls, idle.keys_read, idle.write_calls),
        (1, 1, 0),
        "an idle poll must be one read of one key"
    );
    assert!(idle.bytes_read <= 8, "the key an idle poll reads is small");
    assert_eq!((head_probe.read_calls, head_probe.keys_read), (1, 1));
    // A host that only sleeps (Spin) reads once when the poll is held and
    // once per wake-up, nothing in between.
    assert_eq!(
        (held.read_calls, held.keys_read, held.write_calls),
        (2, 2, 0),
        "a held long-poll: one read when it parks, one per wake-up"
    );
    assert!(get.read_calls <= 3 && get.write_calls == 0, "{get:?}");
    assert!(
        replace.read_calls <= 5 && replace.write_calls <= 4,
        "{replace:?}"
    );
    assert!(create.write_calls <= 10, "{create:?}");
    assert_eq!(replayed.write_calls, 0, "a replay writes nothing");
}
