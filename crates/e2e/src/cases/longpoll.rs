//! Long-polls: a held `/v1/changes` request returns as soon as a change
//! arrives (before its wait elapses), times out with an empty list or 304,
//! and never waits longer than `max_wait_seconds`.

use std::time::Duration;

use serde_json::json;
use tokio::time::{sleep, sleep_until, Instant};

use super::*;
use crate::Target;

/// A held request (started first, `wait` = the maximum) returns the change
/// that another connection writes ~300 ms later, and returns it before its
/// wait elapses: a server that only re-reads at the deadline fails this.
pub async fn held_request_returns_early_with_the_change(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let writer_api = t.api();
    let u = t.new_user();
    let c = coll();
    put_ok(&api, &u, &c, "before", &json!(0)).await?;
    let wait = t.settings.max_wait_seconds;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(wait);
    let held = api
        .get(format!("/v1/changes?since=1&wait={wait}"))
        .auth(&u)
        .header("If-None-Match", etag(1))
        .send();
    let write = async {
        sleep(millis(300)).await;
        put_ok(&writer_api, &u, &c, "during", &json!({"hello": "waiter"})).await
    };
    let (resp, version) = tokio::select! {
        biased;
        both = async { tokio::join!(held, write) } => both,
        _ = sleep_until(deadline) => panic!(
            "a long-poll with wait={wait} was still held when its wait elapsed, although a change was written ~300 ms after it started: a waiting client must be answered when the change arrives"
        ),
    };
    let version = version?;
    let r = resp?;
    if r.status != 200 {
        panic!(
            "the held request must answer 200 with the change, got {} {}",
            r.status,
            r.text()
        );
    }
    let page = r.json();
    let entries = page["changes"].as_array().unwrap();
    assert!(
        !entries.is_empty(),
        "the held request returned without the change: {page}"
    );
    assert_eq!(
        entries[0]["seq"],
        json!(version),
        "the change written while held: {page}"
    );
    assert_eq!(entries[0]["id"], json!("during"));
    assert_eq!(entries[0]["value"], json!({"hello": "waiter"}));
    assert_eq!(page["next"], json!(version));
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    Ok(())
}

/// Several requests held on the same cursor are all answered with the one
/// change, before their wait elapses.
pub async fn every_waiter_is_woken(t: &Target) -> anyhow::Result<()> {
    let apis: Vec<_> = (0..4).map(|_| t.api()).collect();
    let u = t.new_user();
    let c = coll();
    let wait = t.settings.max_wait_seconds;
    let deadline = Instant::now() + Duration::from_secs(wait);
    let held = join_all(apis[..3].iter().map(|api| {
        api.get(format!("/v1/changes?since=0&wait={wait}"))
            .auth(&u)
            .send()
    }));
    let write = async {
        sleep(millis(300)).await;
        put_ok(&apis[3], &u, &c, "x", &json!(1)).await
    };
    let (responses, version) = tokio::select! {
        biased;
        both = async { tokio::join!(held, write) } => both,
        _ = sleep_until(deadline) => panic!("not every held long-poll was answered before its wait elapsed after a change"),
    };
    let version = version?;
    for r in responses {
        let r = r?.expect(200);
        let page = r.json();
        assert_eq!(
            page["changes"][0]["seq"],
            json!(version),
            "every waiter gets the change: {page}"
        );
    }
    Ok(())
}

/// A long-poll by one user is never answered with another user's change,
/// however that user is named.
pub async fn other_users_writes_do_not_leak(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let writer_api = t.api();
    let a = t.new_user();
    // B's sub is A's sub with a suffix: key prefixes must not collide.
    let b = t.user(&format!("{}/log", a.sub));
    let held = api
        .get("/v1/changes?since=0&wait=1")
        .auth(&b)
        .header("If-None-Match", etag(0))
        .send();
    let write = async {
        sleep(millis(200)).await;
        put_ok(&writer_api, &a, &coll(), "secret", &json!("for a only")).await
    };
    let (r, v) = tokio::join!(held, write);
    v?;
    let r = r?;
    match r.status {
        304 => {}
        200 => panic!(
            "B's long-poll must not see A's change (expected 304), got {}",
            r.text()
        ),
        s => panic!("B's long-poll: unexpected status {s} {}", r.text()),
    }
    assert_eq!(
        head(&api, &b).await?,
        0,
        "B's head is untouched by A's write"
    );
    Ok(())
}

/// When nothing changes, a held request answers after its wait: 200 with
/// an empty list (`next` = `since`), or 304 if it sent
/// `If-None-Match: "<since>"`.
pub async fn timeout_answers_empty_or_304(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    put_ok(&api, &u, &coll(), &doc_id(), &json!(1)).await?;
    let r = api
        .get("/v1/changes?since=1&wait=1")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert_eq!(r.json(), json!({"changes": [], "next": 1, "head": 1}));
    assert_eq!(r.etag(), etag(1));
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    let r = api
        .get("/v1/changes?since=1&wait=1")
        .auth(&u)
        .header("If-None-Match", etag(1))
        .send()
        .await?
        .expect(304);
    assert_eq!(r.etag(), etag(1));
    assert_poll_headers(&r, t.settings.poll_interval_seconds);
    // A held request whose cursor is behind answers at once with the
    // entries (it never waits when there is something to return).
    let r = api
        .get("/v1/changes?since=0&wait=1")
        .auth(&u)
        .send()
        .await?
        .expect(200);
    assert_eq!(r.json()["changes"].as_array().unwrap().len(), 1);
    Ok(())
}

/// `wait` above `max_wait_seconds` is clamped: the request is answered
/// (empty) once the maximum has elapsed, not after the requested wait.
pub async fn wait_above_max_is_clamped(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let u = t.new_user();
    let max = t.settings.max_wait_seconds;
    let bound = Duration::from_secs(max + 10);
    let r = tokio::time::timeout(
        bound,
        api.get("/v1/changes?since=0&wait=100000").auth(&u).send(),
    )
    .await
    .unwrap_or_else(|_| {
        panic!("wait=100000 was not clamped to max_wait_seconds={max}: no answer after {bound:?}")
    })?
    .expect(200);
    assert_eq!(r.json(), json!({"changes": [], "next": 0, "head": 0}));
    Ok(())
}
