//! The snapshot listing `GET /v1/docs`: order, filter, paging, and the
//! `cursor` that makes snapshot + changes converge.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;
use crate::Target;

/// Every page of the listing (following `next_after`); returns the
/// documents and the first page's cursor.
pub async fn list_all(
    api: &Api<'_>,
    u: &User,
    collection: Option<&str>,
    limit: u64,
) -> anyhow::Result<(Vec<Value>, u64)> {
    let mut docs = Vec::new();
    let mut after: Option<String> = None;
    let mut first_cursor = None;
    for _ in 0..10_000 {
        let mut q = format!("/v1/docs?limit={limit}");
        if let Some(c) = collection {
            q.push_str(&format!("&collection={c}"));
        }
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let r = api.get(q.clone()).auth(u).send().await?.expect(200);
        let page = r.json();
        let page_docs = page["documents"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {q}: a listing page needs a `documents` array: {page}"));
        assert!(
            page_docs.len() as u64 <= limit,
            "GET {q}: more than limit={limit} documents"
        );
        let cursor = page["cursor"]
            .as_u64()
            .unwrap_or_else(|| panic!("GET {q}: a listing page needs a numeric `cursor`: {page}"));
        first_cursor.get_or_insert(cursor);
        docs.extend(page_docs.iter().cloned());
        match page.get("next_after") {
            None | Some(Value::Null) => return Ok((docs, first_cursor.unwrap())),
            Some(Value::String(next)) => {
                let last = page_docs
                    .last()
                    .unwrap_or_else(|| panic!("GET {q}: next_after on an empty page: {page}"));
                assert_eq!(
                    next,
                    &format!(
                        "{}/{}",
                        last["collection"].as_str().unwrap(),
                        last["id"].as_str().unwrap()
                    ),
                    "GET {q}: next_after must be the last document's \"collection/id\""
                );
                after = Some(next.clone());
            }
            Some(other) => panic!("GET {q}: next_after must be a string, got {other}"),
        }
    }
    panic!("listing did not end after 10000 pages");
}

fn key_of(d: &Value) -> (String, String) {
    (
        d["collection"].as_str().unwrap().to_string(),
        d["id"].as_str().unwrap().to_string(),
    )
}

/// Live documents ordered by (collection, id) — tuple order, so `a` <
/// `a-b` < `a.b` whatever `/` sorts like — filtered by `collection`;
/// deleted ones absent; `cursor` = the head; no `next_after` on the last
/// page.
pub async fn listing_is_ordered_and_filtered(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let r = api.get("/v1/docs").auth(&u).send().await?.expect(200);
    let page = r.json();
    assert_eq!(
        page["documents"],
        json!([]),
        "a fresh user's listing is empty: {page}"
    );
    assert_eq!(page["cursor"], json!(0));
    assert!(
        page.get("next_after").is_none_or(|v| v.is_null()),
        "no next_after on the last page: {page}"
    );

    let mut expected: BTreeMap<(String, String), (u64, Value)> = BTreeMap::new();
    for (c, id) in [
        ("a.b", "1"),
        ("a", "x"),
        ("a-b", "y"),
        ("a", "10"),
        ("a", "2"),
        ("a", "Z"),
        ("b", "gone"),
        ("a", "_"),
        ("a", "~"),
    ] {
        let value = json!({"c": c, "id": id});
        let v = put_ok(&api, &u, c, id, &value).await?;
        expected.insert((c.to_string(), id.to_string()), (v, value));
    }
    api.delete(doc_path("b", "gone"))
        .auth(&u)
        .send()
        .await?
        .expect(204);
    expected.remove(&("b".to_string(), "gone".to_string()));
    let h = head(&api, &u).await?;

    let r = api.get("/v1/docs").auth(&u).send().await?.expect(200);
    let page = r.json();
    let cursor = page["cursor"].as_u64().expect("numeric cursor");
    assert!(
        cursor <= h,
        "cursor {cursor} must be a seq read before the page: at most the head {h}"
    );
    assert!(
        page.get("next_after").is_none_or(|v| v.is_null()),
        "everything fits one page: {page}"
    );
    let docs = page["documents"].as_array().unwrap();
    let keys: Vec<(String, String)> = docs.iter().map(key_of).collect();
    let want: Vec<(String, String)> = expected.keys().cloned().collect();
    assert_eq!(
        keys, want,
        "documents ordered by (collection, id), deleted ones left out"
    );
    for d in docs {
        let (c, id) = key_of(d);
        let (v, value) = &expected[&(c.clone(), id.clone())];
        assert_document(d, &c, &id, *v, value);
    }

    for c in ["a", "a-b", "b", "nothing"] {
        let r = api
            .get(format!("/v1/docs?collection={c}"))
            .auth(&u)
            .send()
            .await?
            .expect(200);
        let page = r.json();
        let keys: Vec<(String, String)> = page["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(key_of)
            .collect();
        let want: Vec<(String, String)> =
            expected.keys().filter(|(kc, _)| kc == c).cloned().collect();
        assert_eq!(keys, want, "listing filtered to collection {c}");
    }
    Ok(())
}

/// `limit` + `after`/`next_after` page through every document exactly once
/// in order; `after` need not name an existing document.
pub async fn listing_pages_with_after(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let mut want = Vec::new();
    for c in ["k1", "k2"] {
        for i in 0..5 {
            let id = format!("doc{i}");
            put_ok(&api, &u, c, &id, &json!(i)).await?;
            want.push((c.to_string(), id));
        }
    }
    for limit in [1, 2, 3, 1000] {
        let (docs, cursor) = list_all(&api, &u, None, limit).await?;
        let keys: Vec<(String, String)> = docs.iter().map(key_of).collect();
        assert_eq!(
            keys, want,
            "paging with limit={limit} sees every document once, in order"
        );
        assert!(cursor <= 10, "cursor {cursor} beyond the head 10");
    }
    let (docs, _) = list_all(&api, &u, Some("k2"), 2).await?;
    assert_eq!(docs.len(), 5, "paging within a collection");
    assert!(docs.iter().all(|d| d["collection"] == json!("k2")));
    // Keyset paging: `after` is a position, not a document.
    let r = api
        .get("/v1/docs?after=k1/doc2x")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    let keys: Vec<(String, String)> = r.json()["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(key_of)
        .collect();
    assert_eq!(keys, want[3..].to_vec(), "after=k1/doc2x starts at k1/doc3");
    let r = api
        .get("/v1/docs?after=k2/doc4")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    let page = r.json();
    assert_eq!(
        page["documents"],
        json!([]),
        "nothing after the last document: {page}"
    );
    assert!(page.get("next_after").is_none_or(|v| v.is_null()));
    // Default limit is 100 (all ten fit).
    let r = api.get("/v1/docs").auth(&u).send().await?.expect(200);
    assert_eq!(r.json()["documents"].as_array().unwrap().len(), 10);
    Ok(())
}

/// Bad `limit`, `collection` and `after` are 400 `invalid-parameter` naming
/// the parameter.
pub async fn listing_bad_parameters_are_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let long = "a".repeat(129);
    let cases: Vec<(String, &str)> = vec![
        ("limit=0".into(), "limit"),
        ("limit=1001".into(), "limit"),
        ("limit=-5".into(), "limit"),
        ("limit=x".into(), "limit"),
        ("limit=".into(), "limit"),
        ("limit=99999999999999999999999".into(), "limit"),
        ("collection=.".into(), "collection"),
        ("collection=..".into(), "collection"),
        ("collection=a%20b".into(), "collection"),
        ("collection=a%2Fb".into(), "collection"),
        (format!("collection={long}"), "collection"),
        ("collection=".into(), "collection"),
        ("after=noslash".into(), "after"),
        ("after=a/".into(), "after"),
        ("after=/b".into(), "after"),
        ("after=a/b/c".into(), "after"),
        ("after=../x".into(), "after"),
        ("after=a/..".into(), "after"),
        ("after=".into(), "after"),
        ("collection=a&collection=b".into(), "collection"),
        ("limit=1&limit=1".into(), "limit"),
    ];
    for (q, param) in cases {
        let path = format!("/v1/docs?{q}");
        let r = api.get(path.clone()).auth(&u).send().await?;
        let p = r.expect_problem(400, "invalid-parameter");
        assert_eq!(
            p["parameter"],
            json!(param),
            "GET {path}: the problem must name `{param}`: {p}"
        );
    }
    Ok(())
}

/// A writer mutates documents while a reader pages the listing (small
/// pages) keeping the first page's `cursor`; then the reader applies
/// `/v1/changes?since=<cursor>` with the version rule ("apply only if newer
/// than the local copy") and must end with exactly the final listing.
pub async fn snapshot_plus_changes_converges_under_concurrent_writes(
    t: &Target,
) -> anyhow::Result<()> {
    let api = t.api();
    let writer_api = t.api();
    let u = t.new_user();
    let ids: Vec<(String, String)> = (0..12)
        .map(|i| (format!("col{}", i % 2), format!("doc{i:02}")))
        .collect();
    for (c, id) in &ids {
        put_ok(&api, &u, c, id, &json!({"gen": 0})).await?;
    }

    let writer = async {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        for gen in 1..=60u64 {
            let (c, id) = &ids[rng.usize(..ids.len())];
            let path = doc_path(c, id);
            match rng.u8(..3) {
                0 => {
                    writer_api
                        .put(path)
                        .auth(&u)
                        .json(&json!({"gen": gen}))
                        .send()
                        .await?
                        .expect_in(&[200, 201]);
                }
                1 => {
                    writer_api
                        .patch(path)
                        .auth(&u)
                        .merge_patch(&json!({"patched": gen}))
                        .send()
                        .await?
                        .expect_in(&[200, 404]);
                }
                _ => {
                    writer_api
                        .delete(path)
                        .auth(&u)
                        .send()
                        .await?
                        .expect_in(&[204, 404]);
                }
            }
            tokio::time::sleep(millis(3)).await;
        }
        anyhow::Ok(())
    };
    let reader = async {
        let mut docs = Vec::new();
        let mut after: Option<String> = None;
        let mut cursor = None;
        loop {
            let q = match &after {
                Some(a) => format!("/v1/docs?limit=2&after={a}"),
                None => "/v1/docs?limit=2".to_string(),
            };
            let page = api.get(q).auth(&u).send().await?.expect(200).json();
            cursor.get_or_insert(page["cursor"].as_u64().expect("cursor"));
            docs.extend(page["documents"].as_array().unwrap().iter().cloned());
            match page["next_after"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
            tokio::time::sleep(millis(10)).await;
        }
        anyhow::Ok((docs, cursor.unwrap()))
    };
    let (w, snapshot) = tokio::join!(writer, reader);
    w?;
    let (snapshot, cursor) = snapshot?;

    // key -> (version, value or None for deleted)
    let mut local: BTreeMap<(String, String), (u64, Option<Value>)> = BTreeMap::new();
    for d in &snapshot {
        local.insert(key_of(d), (version_of(d), Some(d["value"].clone())));
    }
    for e in all_changes(&api, &u, cursor).await? {
        let key = key_of(&e);
        let version = version_of(&e);
        let newer = local.get(&key).is_none_or(|(v, _)| version > *v);
        if newer {
            let value = match e["op"].as_str() {
                Some("put") => Some(e["value"].clone()),
                Some("delete") => None,
                other => panic!("unknown op {other:?} in {e}"),
            };
            local.insert(key, (version, value));
        }
    }
    let converged: BTreeMap<(String, String), (u64, Value)> = local
        .into_iter()
        .filter_map(|(k, (v, val))| val.map(|val| (k, (v, val))))
        .collect();
    let (final_docs, _) = list_all(&api, &u, None, 1000).await?;
    let truth: BTreeMap<(String, String), (u64, Value)> = final_docs
        .iter()
        .map(|d| (key_of(d), (version_of(d), d["value"].clone())))
        .collect();
    assert_eq!(
        converged, truth,
        "snapshot (first cursor {cursor}) + changes since the cursor must converge to the final listing"
    );
    Ok(())
}
