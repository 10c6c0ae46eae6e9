//! A conformance check every [`Kv`] adapter runs in its tests, so that all
//! adapters provably honour the semantics the core relies on (module docs of
//! [`crate::kv`]). Enabled by the `conformance` feature.

use super::{decode_counter, encode_counter, Kv};

/// Run every check against an empty store, using keys under `prefix` (so
/// that one store can host several runs). Panics with a description of the
/// first violated rule.
pub async fn run<K: Kv>(kv: &K, prefix: &str) {
    let k = |name: &str| format!("{prefix}{name}");

    // get / set / absent
    assert_eq!(
        kv.get(&k("a")).await.unwrap(),
        None,
        "absent key must read as None"
    );
    kv.set(&k("a"), b"one").await.unwrap();
    assert_eq!(kv.get(&k("a")).await.unwrap().as_deref(), Some(&b"one"[..]));
    kv.set(&k("a"), b"two").await.unwrap();
    assert_eq!(
        kv.get(&k("a")).await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "set overwrites"
    );
    kv.set(&k("empty"), b"").await.unwrap();
    assert_eq!(
        kv.get(&k("empty")).await.unwrap().as_deref(),
        Some(&b""[..]),
        "empty values are values"
    );

    // get_many: request order, None for absent, duplicates allowed
    kv.set(&k("b"), b"bee").await.unwrap();
    let got = kv
        .get_many(&[k("b"), k("missing"), k("a"), k("b")])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(b"bee".to_vec()),
            None,
            Some(b"two".to_vec()),
            Some(b"bee".to_vec())
        ],
        "get_many must answer in request order with None for absent keys"
    );
    assert!(kv.get_many(&[]).await.unwrap().is_empty());

    // delete_many
    kv.delete_many(&[k("a"), k("never-existed")]).await.unwrap();
    assert_eq!(
        kv.get(&k("a")).await.unwrap(),
        None,
        "deleted key must be absent"
    );
    assert_eq!(kv.get(&k("b")).await.unwrap().as_deref(), Some(&b"bee"[..]));

    // increment creates counters in a shape decode_counter understands
    assert_eq!(
        kv.increment(&k("c"), 0).await.unwrap(),
        0,
        "increment creates absent counters"
    );
    let raw = kv
        .get(&k("c"))
        .await
        .unwrap()
        .expect("increment must create the key");
    assert_eq!(
        decode_counter(&raw),
        Some(0),
        "fresh counter must decode as 0"
    );
    assert_eq!(
        kv.increment(&k("c"), 0).await.unwrap(),
        0,
        "increment by 0 keeps the value"
    );

    // compare_and_swap on existing keys only
    assert!(kv
        .compare_and_swap(&k("c"), &raw, &encode_counter(7))
        .await
        .unwrap());
    assert_eq!(
        kv.get(&k("c")).await.unwrap().as_deref(),
        Some(&encode_counter(7)[..])
    );
    assert!(
        !kv.compare_and_swap(&k("c"), &raw, &encode_counter(9))
            .await
            .unwrap(),
        "swap from a stale value must fail"
    );
    assert_eq!(
        kv.get(&k("c")).await.unwrap().as_deref(),
        Some(&encode_counter(7)[..])
    );
    assert_eq!(
        kv.increment(&k("c"), 0).await.unwrap(),
        7,
        "a late increment(0) must not undo a swap"
    );
    assert!(
        !kv.compare_and_swap(&k("nope"), &encode_counter(0), &encode_counter(1))
            .await
            .unwrap(),
        "swap of an absent key must fail"
    );
    assert_eq!(
        kv.get(&k("nope")).await.unwrap(),
        None,
        "failed swap must not create the key"
    );
    assert_eq!(kv.increment(&k("d"), 5).await.unwrap(), 5);
    assert_eq!(kv.increment(&k("d"), 2).await.unwrap(), 7);

    // values are bytes, not text
    let binary: Vec<u8> = (0..=255u8).collect();
    kv.set(&k("bin"), &binary).await.unwrap();
    assert_eq!(kv.get(&k("bin")).await.unwrap(), Some(binary));

    // keys with the characters the core uses (escaped user ids, names)
    let odd = k("u/a%2Fb%25c/d/todos/x.y~z-_");
    kv.set(&odd, b"v").await.unwrap();
    assert_eq!(kv.get(&odd).await.unwrap().as_deref(), Some(&b"v"[..]));
}
