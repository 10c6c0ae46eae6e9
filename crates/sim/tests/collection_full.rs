//! A collection's index is one KV value, so it has a size cap (half of a
//! managed host's 1 MB value limit): past it, creating a document in that
//! collection is refused with 409 `collection-full` and changes nothing,
//! while updates of its documents and other collections carry on.

use edgesync_core::Config;
use edgesync_sim::direct::Api;
use edgesync_sim::store::{MemStore, StrictKv};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000_000;

fn api() -> Api<StrictKv> {
    let mut config = Config::with_secret(Vec::new());
    config.rate_limit_per_second = 0;
    Api::new(config, StrictKv::new(MemStore::new()), NOW, "hoarder")
}

/// Status and body of a call.
fn call(api: &Api<StrictKv>, method: &str, uri: &str, body: Option<&Value>) -> (u16, Value) {
    let a = api.call(method, uri, body);
    (a.status, a.body)
}

/// The longest id: fills the index in the fewest documents.
fn id(n: usize) -> String {
    format!("{n:0>128}")
}

#[test]
fn a_full_collection_refuses_creates_and_nothing_else() {
    let api = api();
    // Fill "big" through batches until an item is refused.
    let mut created = 0;
    let refused = 'fill: loop {
        let items: Vec<Value> = (created..created + 100)
            .map(|n| json!({"id": format!("k{n}"), "op": "put", "collection": "big", "doc": id(n), "value": n}))
            .collect();
        let (status, body) = call(
            &api,
            "POST",
            "/v1/mutations",
            Some(&json!({ "mutations": items })),
        );
        assert_eq!(status, 200, "{body}");
        for result in body["results"].as_array().unwrap() {
            match result["status"].as_u64() {
                Some(201) => created += 1,
                Some(409) => break 'fill result.clone(),
                _ => panic!("unexpected batch result {result}"),
            }
        }
        assert!(created < 10_000, "the index never filled up");
    };
    assert_eq!(refused["problem"]["type"], "collection-full", "{refused}");
    assert_eq!(refused["replayed"], false);
    // 512 KiB of 128-byte ids (131 bytes each in the index).
    assert_eq!(created, 512 * 1024 / 131);

    // A single create is refused the same way and changes nothing.
    let head = api.head();
    let next = format!("/v1/docs/big/{}", id(created));
    let (status, problem) = call(&api, "PUT", &next, Some(&json!("one too many")));
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "collection-full");
    assert_eq!(api.head(), head, "a refused create logs nothing");
    assert_eq!(call(&api, "GET", &next, None).0, 404);

    // What is already there can still change, and other collections grow.
    let first = format!("/v1/docs/big/{}", id(0));
    assert_eq!(call(&api, "PUT", &first, Some(&json!("updated"))).0, 200);
    assert_eq!(call(&api, "GET", &first, None).1["value"], "updated");
    assert_eq!(
        call(&api, "PUT", "/v1/docs/small/a", Some(&json!(1))).0,
        201
    );
    assert_eq!(api.head(), head + 2);
}

#[test]
fn a_user_with_the_most_collections_can_fill_them_but_not_add_one() {
    let api = api();
    for n in 0..1000 {
        let (status, body) = call(
            &api,
            "PUT",
            &format!("/v1/docs/c{n}/first"),
            Some(&json!(n)),
        );
        assert_eq!(status, 201, "collection {n}: {body}");
    }
    let head = api.head();
    let (status, problem) = call(&api, "PUT", "/v1/docs/one-more/first", Some(&json!(0)));
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "too-many-collections");
    assert_eq!(api.head(), head, "a refused create logs nothing");
    assert_eq!(
        call(&api, "GET", "/v1/docs?collection=one-more", None).1["documents"],
        json!([])
    );
    // The collections there are can still grow.
    assert_eq!(
        call(&api, "PUT", "/v1/docs/c999/second", Some(&json!(1))).0,
        201
    );
    assert_eq!(api.head(), head + 1);
}
