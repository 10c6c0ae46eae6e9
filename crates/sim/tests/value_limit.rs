//! `max_value_bytes`: on a store that refuses values larger than a limit
//! (DynamoDB items hold 400 KB; Spin documents 1 MB for its stores), no
//! request ever writes a value the store would refuse. A full collection
//! index is 409 `collection-full` and a document that would not fit is 413,
//! both before anything is written, where the store's refusal could only
//! be answered with a 503 that no retry gets past.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use edgesync_core::Config;
use edgesync_sim::direct::{Answer, Api};
use edgesync_sim::faults::{Faulty, Op, Verdict};
use edgesync_sim::store::{MemStore, StrictKv};
use serde_json::json;

const NOW: u64 = 1_800_000_000_000;
/// The smallest limit the setting takes: index blobs reach it after about
/// a thousand documents with 128-character ids.
const LIMIT: usize = 128 * 1024;
/// What `max_value_bytes = LIMIT` leaves for a document.
const BODY: usize = LIMIT - 1024;

/// A store that refuses values over [`LIMIT`] bytes.
type Limited = Faulty<StrictKv, Box<dyn for<'a> Fn(Op<'a>) -> Verdict + Send + Sync>>;

/// `alice`'s view of a service on a [`Limited`] store over `store`, told
/// of the limit or not, and the size of the largest value written.
fn api(store: &MemStore, told: bool) -> (Api<Limited>, Arc<AtomicUsize>) {
    let mut config = Config::with_secret(Vec::new());
    config.rate_limit_per_second = 0;
    config.max_body_bytes = BODY;
    if told {
        config.max_value_bytes = LIMIT;
    }
    let largest = Arc::new(AtomicUsize::new(0));
    let seen = largest.clone();
    let kv = Faulty::new(
        StrictKv::new(store.clone()),
        Box::new(move |op: Op<'_>| match op {
            Op::Set(_, value) => {
                seen.fetch_max(value.len(), Ordering::Relaxed);
                if value.len() > LIMIT {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                }
            }
            _ => Verdict::Pass,
        }) as Box<dyn for<'a> Fn(Op<'a>) -> Verdict + Send + Sync>,
    );
    (Api::new(config, kv, NOW, "alice"), largest)
}

/// Create documents with 128-character ids in one collection until a
/// create is refused; that refusal and how many were created.
fn fill(api: &Api<Limited>) -> (Answer, usize) {
    for n in 0.. {
        let id = format!("{n:0>128}");
        let answer = api.call("PUT", &format!("/v1/docs/full/{id}"), Some(&json!(n)));
        if answer.status != 201 {
            return (answer, n);
        }
    }
    unreachable!()
}

#[test]
fn a_full_collection_index_is_409_before_the_store_refuses_it() {
    let store = MemStore::new();
    let (api, largest) = api(&store, true);
    let (refused, created) = fill(&api);
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["type"], "collection-full");
    assert!(created > 900, "the index fills up to the limit: {created}");
    assert!(largest.load(Ordering::Relaxed) <= LIMIT);
    // The refusal changed nothing; updates and other collections go on.
    let before = store.dump();
    let again = api.call(
        "PUT",
        &format!("/v1/docs/full/{}", "z".repeat(128)),
        Some(&json!(1)),
    );
    assert_eq!(again.status, 409);
    assert_eq!(store.dump(), before);
    let first = format!("/v1/docs/full/{:0>128}", 0);
    assert_eq!(api.call("PUT", &first, Some(&json!("again"))).status, 200);
    assert_eq!(
        api.call("PUT", "/v1/docs/other/a", Some(&json!(1))).status,
        201
    );
    assert!(largest.load(Ordering::Relaxed) <= LIMIT);
}

#[test]
fn untold_of_the_limit_the_same_store_answers_503() {
    // What the setting is for: without it, the index outgrows the store's
    // limit and every later create in that collection fails.
    let (api, _) = api(&MemStore::new(), false);
    let (refused, _) = fill(&api);
    assert_eq!(refused.status, 503, "{}", refused.body);
}

#[test]
fn the_largest_document_fits_beside_its_entry() {
    let store = MemStore::new();
    let (api, largest) = api(&store, true);
    let (c, id) = ("c".repeat(128), "i".repeat(128));
    let path = format!("/v1/docs/{c}/{id}");
    // A string value of exactly the body limit, as stored (two quotes).
    let value = json!("v".repeat(BODY - 2));
    let mut request = api.request("PUT", &path, Some(&value));
    request
        .headers_mut()
        .insert("idempotency-key", "\"".repeat(255).parse().unwrap());
    let response = edgesync_sim::direct::block_on(api.service.handle(request));
    assert_eq!(response.status(), 201);
    assert!(largest.load(Ordering::Relaxed) <= LIMIT);
    // Grown past the body limit by a merge patch: 413, nothing written.
    let half = "v".repeat(BODY / 2);
    assert_eq!(
        api.call("PUT", "/v1/docs/c/grown", Some(&json!({"a": half})))
            .status,
        201
    );
    let before = store.dump();
    let mut patch = api.request("PATCH", "/v1/docs/c/grown", Some(&json!({"b": half})));
    patch.headers_mut().insert(
        "content-type",
        "application/merge-patch+json".parse().unwrap(),
    );
    let response = edgesync_sim::direct::block_on(api.service.handle(patch));
    assert_eq!(response.status(), 413);
    let problem: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(problem["type"], "document-too-large");
    assert_eq!(store.dump(), before);
    assert!(largest.load(Ordering::Relaxed) <= LIMIT);
}
