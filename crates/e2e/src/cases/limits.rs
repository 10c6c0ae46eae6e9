//! The per-user mutation rate limit.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::Target;

/// Exceeding the per-user mutation rate (after the burst) is 429
/// `rate-limited` with `Retry-After` (seconds); the refused write and a
/// refused batch change nothing; reads and other users are not limited;
/// after `Retry-After` a write succeeds again.
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

    // A batch needs one token per item: refused whole (five items need
    // more tokens than can have come back since the 429).
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("late{i}-{}", random_name(6)), "op": "put", "collection": c, "doc": format!("late{i}"), "value": i}))
        .collect();
    let r = api
        .post("/v1/mutations")
        .auth(&u)
        .json(&json!({"mutations": items}))
        .send()
        .await?;
    r.expect_problem(429, "rate-limited");
    r.must_header("retry-after");
    assert_nothing_changed(
        &api,
        &u,
        before,
        Some((&c, "late0", 404)),
        "a rate-limited batch",
    )
    .await?;

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
