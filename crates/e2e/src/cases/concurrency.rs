//! Races between requests on separate connections.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::*;
use crate::Target;

const N: usize = 8;

/// N concurrent `If-Match` PUTs on the same version: exactly one 2xx, the
/// rest 412 with the winner's version; exactly one entry logged. Three
/// rounds.
pub async fn concurrent_if_match_exactly_one_wins(t: &Target) -> anyhow::Result<()> {
    let apis: Vec<_> = (0..N).map(|_| t.api()).collect();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let mut v = put_ok(&apis[0], &u, &c, &id, &json!("start")).await?;
    for round in 0..3 {
        let responses = join_all(apis.iter().enumerate().map(|(i, api)| {
            api.put(doc_path(&c, &id))
                .auth(&u)
                .header("If-Match", etag(v))
                .json(&json!({"round": round, "writer": i}))
                .send()
        }))
        .await;
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for (i, r) in responses.into_iter().enumerate() {
            let r = r?;
            match r.status {
                200 => winners.push((i, r)),
                412 => losers.push(r),
                s => panic!(
                    "round {round}: a conditional PUT must be 200 or 412, got {s} {}",
                    r.text()
                ),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {N} If-Match PUTs on version {v} may succeed"
        );
        let (wi, w) = &winners[0];
        let new_v = version_of(&w.json());
        for l in &losers {
            let p = l.expect_problem(412, "precondition-failed");
            assert_eq!(
                p["current_version"],
                json!(new_v),
                "round {round}: losers see the winner's version"
            );
        }
        let entries = all_changes(&apis[0], &u, v).await?;
        assert_eq!(
            entries.len(),
            1,
            "round {round}: exactly one entry logged: {entries:?}"
        );
        assert_eq!(entries[0]["value"], json!({"round": round, "writer": wi}));
        v = new_v;
    }
    Ok(())
}

/// N concurrent `If-None-Match: *` creates of one document: exactly one
/// 201, the rest 412.
pub async fn concurrent_creates_exactly_one_wins(t: &Target) -> anyhow::Result<()> {
    let apis: Vec<_> = (0..N).map(|_| t.api()).collect();
    let u = t.new_user();
    for round in 0..3 {
        let c = coll();
        let id = doc_id();
        let responses = join_all(apis.iter().enumerate().map(|(i, api)| {
            api.put(doc_path(&c, &id))
                .auth(&u)
                .header("If-None-Match", "*")
                .json(&json!({"writer": i}))
                .send()
        }))
        .await;
        let mut created = 0;
        for r in responses {
            let r = r?;
            match r.status {
                201 => created += 1,
                412 => {
                    r.expect_problem(412, "precondition-failed");
                }
                s => panic!(
                    "round {round}: a create-only PUT must be 201 or 412, got {s} {}",
                    r.text()
                ),
            }
        }
        assert_eq!(
            created, 1,
            "round {round}: exactly one create-only PUT may succeed"
        );
    }
    assert_eq!(head(&apis[0], &u).await?, 3, "three creates logged");
    Ok(())
}

/// Concurrent writers to different documents (single writes and batches):
/// every acknowledged write appears exactly once in `/v1/changes`, with
/// strictly increasing, gap-free seqs, and its acknowledged version.
pub async fn concurrent_writers_are_logged_exactly_once(t: &Target) -> anyhow::Result<()> {
    let apis: Vec<_> = (0..N).map(|_| t.api()).collect();
    let u = t.new_user();
    let c = coll();
    let writers = apis.iter().enumerate().map(|(w, api)| {
        let u = &u;
        let c = &c;
        async move {
            let mut acked: Vec<(String, u64)> = Vec::new();
            for j in 0..4 {
                let id = format!("w{w}-{j}");
                let v = put_ok(api, u, c, &id, &json!({"w": w, "j": j})).await?;
                acked.push((id, v));
            }
            let items: Vec<Value> = (0..2)
                .map(|j| json!({"id": format!("b{w}-{j}-{}", random_name(6)), "op": "put", "collection": c, "doc": format!("wb{w}-{j}"), "value": j}))
                .collect();
            let r = api.post("/v1/mutations").auth(u).json(&json!({"mutations": items})).send().await?.expect(200);
            for (j, res) in r.json()["results"].as_array().unwrap().iter().enumerate() {
                assert_eq!(res["status"], json!(201), "batch item: {res}");
                acked.push((format!("wb{w}-{j}"), version_of(res)));
            }
            anyhow::Ok(acked)
        }
    });
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for r in join_all(writers).await {
        for (id, v) in r? {
            acked.insert(id, v);
        }
    }
    let total = acked.len() as u64;
    assert_eq!(total, (N * 6) as u64);
    let entries = all_changes(&apis[0], &u, 0).await?;
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "seqs 1..={total}, strictly increasing, no gaps, no duplicates"
    );
    let mut seen = BTreeSet::new();
    for e in &entries {
        let id = e["id"].as_str().unwrap().to_string();
        assert!(seen.insert(id.clone()), "{id} logged more than once");
        assert_eq!(
            acked.get(&id),
            Some(&version_of(e)),
            "{id}: the logged version is the acknowledged one"
        );
    }
    assert_eq!(
        seen.len() as u64,
        total,
        "every acknowledged write is logged"
    );
    assert_eq!(head(&apis[0], &u).await?, total);
    Ok(())
}

/// N concurrent identical requests with one `Idempotency-Key`: one
/// mutation logged, and every response is the same result (201 with the
/// same version), all but one marked replayed.
pub async fn concurrent_idempotent_retries_log_once(t: &Target) -> anyhow::Result<()> {
    let apis: Vec<_> = (0..N).map(|_| t.api()).collect();
    let u = t.new_user();
    let c = coll();
    let id = doc_id();
    let key = format!("race-{}", random_name(10));
    let responses = join_all(apis.iter().map(|api| {
        api.put(doc_path(&c, &id))
            .auth(&u)
            .header("Idempotency-Key", &key)
            .json(&json!({"once": true}))
            .send()
    }))
    .await;
    let mut versions = BTreeSet::new();
    let mut originals = 0;
    for r in responses {
        let r = r?;
        if r.status != 201 {
            panic!(
                "a concurrent retry must answer the first result (201), got {} {}",
                r.status,
                r.text()
            );
        }
        versions.insert(version_of(&r.json()));
        if r.header("idempotent-replayed").as_deref() != Some("true") {
            originals += 1;
        }
    }
    assert_eq!(
        versions.len(),
        1,
        "every retry answers the same version: {versions:?}"
    );
    assert_eq!(
        originals, 1,
        "exactly one response is the original, the rest are replays"
    );
    assert_eq!(
        all_changes(&apis[0], &u, 0).await?.len(),
        1,
        "one mutation logged for {N} concurrent retries"
    );
    Ok(())
}
