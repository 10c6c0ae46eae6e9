//! `max_key_bytes`: on a store that refuses keys longer than a limit (Spin
//! documents 256 bytes for its stores, and a managed host may enforce it),
//! a request whose user id, names or idempotency key would make a longer
//! key is refused with 400 `key-too-long` before it touches the store: it
//! changes nothing, and no request ever reaches the store with a key the
//! store would refuse (which it could only answer with a 503, possibly
//! half-way through a write).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use edgesync_core::Config;
use edgesync_sim::direct::{Answer, Api};
use edgesync_sim::faults::{Faulty, Op, Verdict};
use edgesync_sim::store::{MemStore, StrictKv};
use proptest::prelude::*;
use serde_json::json;

const NOW: u64 = 1_800_000_000_000;
const LIMIT: usize = 256;

/// A store that refuses keys over [`LIMIT`] bytes, as a managed host may.
type Limited = Faulty<StrictKv, Box<dyn for<'a> Fn(Op<'a>) -> Verdict + Send + Sync>>;

/// `user`'s view of a service with `max_key_bytes = limit` on a [`Limited`]
/// store over `store`, and the length of the longest key that store was
/// asked for.
fn api(user: &str, store: &MemStore, limit: usize) -> (Api<Limited>, Arc<AtomicUsize>) {
    let mut config = Config::with_secret(Vec::new());
    config.max_key_bytes = limit;
    config.rate_limit_per_second = 0;
    let longest = Arc::new(AtomicUsize::new(0));
    let seen = longest.clone();
    let kv = Faulty::new(
        StrictKv::new(store.clone()),
        Box::new(move |op: Op<'_>| {
            let len = op.keys().iter().map(|k| k.len()).max().unwrap_or(0);
            seen.fetch_max(len, Ordering::Relaxed);
            if len > LIMIT {
                Verdict::Fail
            } else {
                Verdict::Pass
            }
        }) as Box<dyn for<'a> Fn(Op<'a>) -> Verdict + Send + Sync>,
    );
    (Api::new(config, kv, NOW, user), longest)
}

fn put(api: &Api<Limited>, c: &str, i: &str, key: Option<&str>) -> Answer {
    let mut request = api.request("PUT", &format!("/v1/docs/{c}/{i}"), Some(&json!({"v": 1})));
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    let response = edgesync_sim::direct::block_on(api.service.handle(request));
    Answer {
        status: response.status().as_u16(),
        retry_after: None,
        body: serde_json::from_slice(response.body()).unwrap_or_default(),
    }
}

fn assert_too_long(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 400, "{what}: {}", answer.body);
    assert_eq!(answer.body["type"], "key-too-long", "{what}");
    assert_eq!(answer.body["max_key_bytes"], LIMIT, "{what}");
}

#[test]
fn names_that_just_fit_are_served_and_one_byte_more_is_400() {
    let store = MemStore::new();
    let (api, longest) = api("alice", &store, LIMIT);
    // `u/alice/d/<c>/<i>`: 11 bytes around the names.
    let c = "c".repeat(120);
    let fits = "i".repeat(LIMIT - 11 - c.len());
    assert_eq!(put(&api, &c, &fits, None).status, 201);
    assert_eq!(
        api.call("GET", &format!("/v1/docs/{c}/{fits}"), None)
            .status,
        200
    );
    let before = store.dump();
    let over = format!("{fits}i");
    assert_too_long(&put(&api, &c, &over, None), "PUT");
    for method in ["GET", "DELETE"] {
        assert_too_long(
            &api.call(method, &format!("/v1/docs/{c}/{over}"), None),
            method,
        );
    }
    assert_eq!(store.dump(), before);
    // An idempotency key counts escaped, in the longest epoch:
    // `u/alice/k/<20 digits>/<key>`.
    let key_room = LIMIT - 8 - 2 - 20 - 1;
    assert_eq!(put(&api, "c", "d", Some(&"k".repeat(key_room))).status, 201);
    let before_key = store.dump();
    assert_too_long(
        &put(&api, "c", "d", Some(&"/".repeat(key_room / 3 + 1))),
        "key",
    );
    assert_eq!(store.dump(), before_key);
    // A batch is refused as a whole, before its first item is applied.
    let batch = json!({"mutations": [
        {"id": "k1", "op": "put", "collection": "c", "doc": "e", "value": 1},
        {"id": "k2", "op": "put", "collection": c, "doc": over, "value": 1},
    ]});
    assert_too_long(&api.call("POST", "/v1/mutations", Some(&batch)), "batch");
    assert_eq!(store.dump(), before_key, "no item applied");
    // A listing's collection index, `u/alice/x/<c>`, is shorter.
    let listing = format!("/v1/docs?collection={}", "c".repeat(128));
    assert_eq!(api.call("GET", &listing, None).status, 200);
    assert!(longest.load(Ordering::Relaxed) <= LIMIT);
}

#[test]
fn a_user_id_too_long_for_the_store_is_refused_everywhere() {
    // `u/<id>/s/<20 digits>` is the longest of the log's own keys.
    let (fits, _) = api(&"a".repeat(LIMIT - 2 - 1 - 22), &MemStore::new(), LIMIT);
    assert_eq!(fits.call("GET", "/v1/head", None).status, 200);
    assert_eq!(put(&fits, "c", "d", None).status, 201);
    let store = MemStore::new();
    let (over, longest) = api(&"%".repeat(80), &store, LIMIT); // 240 bytes escaped
    for (method, path) in [
        ("GET", "/v1/head"),
        ("GET", "/v1/changes?since=0"),
        ("GET", "/v1/docs"),
        ("GET", "/v1/docs/c/d"),
    ] {
        assert_too_long(&over.call(method, path, None), path);
    }
    assert_too_long(&put(&over, "c", "d", None), "PUT");
    assert!(store.dump().is_empty(), "nothing was written");
    assert_eq!(longest.load(Ordering::Relaxed), 0);
}

#[test]
fn without_a_limit_long_names_are_served() {
    let store = MemStore::new();
    let (api, _) = api("alice", &store, 0);
    let long = "n".repeat(128);
    let answer = put(&api, &long, &long, None);
    assert_eq!(
        answer.status, 503,
        "the limited store refuses it: {}",
        answer.body
    );
    let plain = Api::new(
        Config::with_secret(Vec::new()),
        StrictKv::new(MemStore::new()),
        NOW,
        "alice",
    );
    let uri = format!("/v1/docs/{long}/{long}");
    assert_eq!(plain.call("PUT", &uri, Some(&json!(1))).status, 201);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the lengths, the limited store never sees a key over its
    /// limit, nothing is a 5xx, and a refusal changes nothing.
    #[test]
    fn the_store_never_sees_a_key_over_the_limit(
        user in "[a-z%/]{1,120}",
        c_len in 1usize..=128,
        i_len in 1usize..=128,
        key in proptest::option::of("[!-~]{1,200}"),
    ) {
        let store = MemStore::new();
        let (api, longest) = api(&user, &store, LIMIT);
        let (c, i) = ("c".repeat(c_len), "i".repeat(i_len));
        let answer = put(&api, &c, &i, key.as_deref());
        let batch = json!({"mutations": [
            {"id": key.clone().unwrap_or_else(|| "k".into()), "op": "put",
             "collection": c, "doc": i, "value": 2},
        ]});
        let before = store.dump();
        let batched = api.call("POST", "/v1/mutations", Some(&batch));
        for a in [&answer, &batched] {
            prop_assert!(a.status < 500, "{}", a.body);
            if a.status == 400 {
                prop_assert_eq!(&a.body["type"], "key-too-long");
            } else {
                prop_assert!(a.status == 200 || a.status == 201, "{}", a.status);
            }
        }
        if batched.status == 400 {
            prop_assert_eq!(store.dump(), before);
        }
        prop_assert!(longest.load(Ordering::Relaxed) <= LIMIT);
    }
}
