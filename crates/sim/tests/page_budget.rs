//! A page of changes or of the listing stops at 1 MiB of values, whatever
//! its `limit`, and loads from the store little more than it sends: one
//! user with large documents cannot make a request hold its whole log in
//! memory. Paging on from `next` / `next_after` still yields everything
//! exactly once.

use edgesync_core::Config;
use edgesync_sim::counting::Counting;
use edgesync_sim::direct::Api;
use edgesync_sim::store::{MemStore, StrictKv};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000_000;
/// 120 documents of ~200 KB: 24 MB in all, five to a 1 MiB page.
const DOCS: u64 = 120;
const VALUE_BYTES: usize = 200_000;

fn big(n: u64) -> Value {
    json!(format!("{n:04}{}", "x".repeat(VALUE_BYTES - 4)))
}

fn api() -> Api<Counting<StrictKv>> {
    let mut config = Config::with_secret(Vec::new());
    config.rate_limit_per_second = 0;
    let api = Api::new(
        config,
        Counting::new(StrictKv::new(MemStore::new())),
        NOW,
        "hoarder",
    );
    for n in 1..=DOCS {
        let a = api.call("PUT", &format!("/v1/docs/big/d{n:04}"), Some(&big(n)));
        assert_eq!(a.status, 201, "{}", a.body);
    }
    api
}

/// Bytes the store returned while `f` ran.
fn bytes_read<T>(api: &Api<Counting<StrictKv>>, f: impl FnOnce() -> T) -> (T, u64) {
    let before = api.service.kv().counts.snapshot().bytes_read;
    let out = f();
    (out, api.service.kv().counts.snapshot().bytes_read - before)
}

#[test]
fn a_page_of_changes_stops_at_the_budget_and_loads_little_more() {
    let api = api();
    let mut since = 0;
    let mut seen = Vec::new();
    while since < DOCS {
        let (page, read) = bytes_read(&api, || {
            api.call(
                "GET",
                &format!("/v1/changes?since={since}&limit=1000"),
                None,
            )
        });
        assert_eq!(page.status, 200, "{}", page.body);
        let changes = page.body["changes"].as_array().unwrap();
        assert!(
            !changes.is_empty() && changes.len() <= 5,
            "{} changes",
            changes.len()
        );
        // The first load is 32 entries before the sizes are known.
        assert!(read < 33 * VALUE_BYTES as u64, "a page read {read} bytes");
        for c in changes {
            seen.push(c["seq"].as_u64().unwrap());
            assert_eq!(c["value"], big(c["seq"].as_u64().unwrap()));
        }
        since = page.body["next"].as_u64().unwrap();
        assert_eq!(page.body["head"], DOCS);
    }
    assert_eq!(seen, (1..=DOCS).collect::<Vec<_>>());
}

#[test]
fn a_listing_page_stops_at_the_budget_and_loads_little_more() {
    let api = api();
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let uri = match &after {
            None => "/v1/docs?limit=1000".to_owned(),
            Some(a) => format!("/v1/docs?limit=1000&after={a}"),
        };
        let (page, read) = bytes_read(&api, || api.call("GET", &uri, None));
        assert_eq!(page.status, 200, "{}", page.body);
        let docs = page.body["documents"].as_array().unwrap();
        assert!(
            !docs.is_empty() && docs.len() <= 5,
            "{} documents",
            docs.len()
        );
        assert!(read < 33 * VALUE_BYTES as u64, "a page read {read} bytes");
        for d in docs {
            let id = d["id"].as_str().unwrap().to_owned();
            assert_eq!(d["value"], big(id[1..].parse().unwrap()));
            seen.push(id);
        }
        match page.body["next_after"].as_str() {
            Some(a) => after = Some(a.replace('/', "%2F")),
            None => break,
        }
    }
    let all: Vec<String> = (1..=DOCS).map(|n| format!("d{n:04}")).collect();
    assert_eq!(seen, all);
}
