//! The per-user mutation rate limit.

use std::time::Duration;

use serde_json::{json, Value};

use super::mutations::post_batch;
use super::*;
use crate::Target;

/// Exceeding the per-user mutation rate (after the burst) is 429
/// `rate-limited` with `Retry-After` (seconds); the refused write changes
/// nothing; a batch applies what the rate allows, in order, then stops with
/// 429, and resent after `Retry-After` replays and completes; reads and
/// other users are not limited; after `Retry-After` a write succeeds again.
pub async fn rate_limit_is_429_with_retry_after(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let c = coll();
    let burst = t.settings.burst().expect("a rate-limited target");
    // Drain the bucket with single writes until one is refused.
    let mut limited = None;
    let started = tokio::time::Instant::now();
    for i in 0..(3 * burst + 100) {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let before = head(&api, &u).await?;
        let id = format!("s{i}");
        let r = put(&api, &u, &c, &id, &json!(i)).await?;
        match r.status {
            201 => continue,
            429 => {
                limited = Some((r, before, id));
                break;
            }
            s => panic!(
                "a write under load must be 201 or 429, got {s} {}",
                r.text()
            ),
        }
    }
    let (r, before, id) = limited.unwrap_or_else(|| {
        panic!(
            "no 429 after more than the burst ({burst}) of writes at {} per second",
            t.settings.rate_limit_per_second
        )
    });
    r.expect_problem(429, "rate-limited");
    let retry_after: u64 = r
        .must_header("retry-after")
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "Retry-After must be a number of seconds, got {:?}",
                r.header("retry-after")
            )
        });
    assert!(
        retry_after >= 1,
        "Retry-After must be at least 1 second, got {retry_after}"
    );
    assert_nothing_changed(&api, &u, before, Some((&c, &id, 404)), "a rate-limited PUT").await?;

    // A batch takes one token per item it applies: it goes as far as the
    // tokens that came back since the 429 allow, then stops with 429, and
    // nothing behind the refused item is applied; the 429 lists the results
    // of the items before it. Sent again after each Retry-After, it replays
    // what was applied (replays take no token) and goes on, until every
    // item is in, once, in order.
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("late{i}-{}", random_name(6)), "op": "put", "collection": c, "doc": format!("late{i}"), "value": i}))
        .collect();
    let batch = json!({ "mutations": items });
    let mut applied = 0;
    let mut rounds = 0;
    let results = loop {
        rounds += 1;
        assert!(
            rounds <= 20,
            "a 5-item batch still refused after {rounds} rounds"
        );
        let r = post_batch(&api, &u, &batch).await?;
        if r.status == 200 {
            break r.json()["results"].clone();
        }
        r.expect_problem(429, "rate-limited");
        let wait: u64 = r.must_header("retry-after").trim().parse()?;
        let now = head(&api, &u).await? - before;
        assert!(now >= applied, "a refused batch took back applied items");
        let body = r.json();
        let settled: Vec<(String, bool)> = body["results"]
            .as_array()
            .unwrap_or_else(|| panic!("a stopped batch lists its settled items: {body}"))
            .iter()
            .map(|r| {
                assert_eq!(r["status"], 201, "{body}");
                (
                    r["id"].as_str().unwrap_or("").to_string(),
                    r["replayed"] == true,
                )
            })
            .collect();
        let expected: Vec<(String, bool)> = (0..now as usize)
            .map(|i| {
                (
                    items[i]["id"].as_str().unwrap().to_string(),
                    (i as u64) < applied,
                )
            })
            .collect();
        assert_eq!(settled, expected, "the 429 settles the items before it");
        applied = now;
        let expected: Vec<String> = (0..applied).map(|i| format!("late{i}")).collect();
        assert_eq!(
            ids_logged_after(&api, &u, before).await?,
            expected,
            "a rate-limited batch applies a prefix, in order"
        );
        tokio::time::sleep(Duration::from_secs(wait.min(10)) + millis(100)).await;
    };
    for (i, result) in results.as_array().expect("results").iter().enumerate() {
        assert_eq!(result["status"], 201, "{results}");
        assert_eq!(
            result["replayed"],
            (i as u64) < applied,
            "item {i}: {results}"
        );
    }
    assert_eq!(
        ids_logged_after(&api, &u, before).await?,
        ["late0", "late1", "late2", "late3", "late4"]
    );
    // With the bucket empty again, the whole batch once more: replays take
    // no token, so it is answered (all replayed), not refused.
    let again = post_batch(&api, &u, &batch).await?.expect(200).json();
    for result in again["results"].as_array().expect("results") {
        assert_eq!(result["replayed"], true, "{again}");
    }
    let before = before + 5;

    // Reads are never limited.
    for _ in 0..20 {
        api.get("/v1/head").auth(&u).send().await?.expect(200);
        api.get(format!("/v1/changes?since={before}"))
            .auth(&u)
            .send()
            .await?
            .expect(200);
        api.get("/v1/docs?limit=1")
            .auth(&u)
            .send()
            .await?
            .expect(200);
    }
    // Other users have their own budget.
    let other = t.new_user();
    put(&api, &other, &c, "x", &json!(1)).await?.expect(201);

    // After Retry-After, writing works again.
    tokio::time::sleep(Duration::from_secs(retry_after.min(10)) + millis(100)).await;
    put(&api, &u, &c, "after", &json!(1)).await?.expect(201);
    Ok(())
}

/// The document ids of `user`'s first changes after `since`, in log order.
async fn ids_logged_after(api: &Api<'_>, user: &User, since: u64) -> anyhow::Result<Vec<String>> {
    let page = changes_page(api, user, since, 10).await?;
    Ok(page["changes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// With a key limit (`max_key_bytes`), names that would make a document's
/// key (`u/<escaped user id>/d/<collection>/<id>`) longer are refused with
/// 400 `key-too-long` (carrying the limit) on every method and in a batch,
/// and change nothing; names that make a key of exactly the limit are
/// served. Likewise for an idempotency key's
/// (`u/<escaped user id>/k/<epoch>/<escaped key>`, the epoch counted at its
/// longest, 20 digits).
pub async fn keys_too_long_for_the_store_are_400(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let max = t.settings.max_key_bytes;
    // The suite's subs need no escaping.
    let prefix = format!("u/{}/", u.sub).len();
    let room = max - prefix - "d//".len();
    let c = "c".repeat(room / 2);
    let fits = "i".repeat(room - c.len());
    put(&api, &u, &c, &fits, &json!(1)).await?.expect(201);
    api.get(doc_path(&c, &fits))
        .auth(&u)
        .send()
        .await?
        .expect(200);
    let h = head(&api, &u).await?;

    let over = format!("{fits}i");
    let path = doc_path(&c, &over);
    let refusals = [
        put(&api, &u, &c, &over, &json!(1)).await?,
        api.get(&path).auth(&u).send().await?,
        api.delete(&path).auth(&u).send().await?,
        api.patch(&path)
            .auth(&u)
            .body_with_type("application/merge-patch+json", "{}")
            .send()
            .await?,
        post_batch(
            &api,
            &u,
            &json!({"mutations": [
                {"id": "k1", "op": "put", "collection": c, "doc": "fine", "value": 1},
                {"id": "k2", "op": "put", "collection": c, "doc": over, "value": 1},
            ]}),
        )
        .await?,
    ];
    for r in refusals {
        let problem = r.expect_problem(400, "key-too-long");
        assert_eq!(problem["max_key_bytes"], json!(max), "{problem}");
    }
    assert_nothing_changed(&api, &u, h, Some((&c, "fine", 404)), "keys too long").await?;

    let key_room = max - prefix - "k/".len() - 20 - "/".len();
    let with_key = |key: String| {
        api.put(doc_path(&c, "keyed"))
            .auth(&u)
            .header("Idempotency-Key", key)
            .json(&json!(2))
            .send()
    };
    with_key("k".repeat(key_room + 1))
        .await?
        .expect_problem(400, "key-too-long");
    assert_nothing_changed(&api, &u, h, Some((&c, "keyed", 404)), "a key too long").await?;
    with_key("k".repeat(key_room)).await?.expect(201);
    Ok(())
}
