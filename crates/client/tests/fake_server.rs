//! The engine against a scripted HTTP server and a virtual clock: back-off,
//! `Retry-After`, the tight-loop guard, resync, conflicts — counted in
//! requests and simulated seconds, never in real time.

mod support;

use edgesync_client::{
    Client, Clock, Commit, DocWrite, Error, MemoryStorage, Mode, Mutation, Origin, ParkReason,
    Polling, Resolution, ResyncReason, SendOutcome, Storage, SyncConfig, SyncEvent, VirtualClock,
};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, token, FakeServer, Request, Response};

const HOUR: Duration = Duration::from_secs(3600);

fn client(
    server: &FakeServer,
    clock: &VirtualClock,
    storage: MemoryStorage,
    mode: Mode,
    seed: u64,
) -> Client {
    Client::builder(&server.url, token())
        .storage(storage)
        .clock(clock.clone())
        .config(SyncConfig {
            mode,
            jitter_seed: Some(seed),
            ..SyncConfig::default()
        })
        .build()
        .unwrap()
}

/// A replica that already follows from `cursor` (no bootstrap needed).
fn following(cursor: u64) -> MemoryStorage {
    following_with(cursor, vec![])
}

/// A replica that already follows from `cursor` and holds `docs` (written
/// with the cursor: a write at or below a stored cursor is ignored).
fn following_with(cursor: u64, docs: Vec<DocWrite>) -> MemoryStorage {
    let s = MemoryStorage::new();
    s.commit(Commit {
        docs,
        cursor: Some(cursor),
        head: Some(cursor),
        ..Default::default()
    })
    .unwrap();
    s
}

fn not_modified(req: &Request) -> Response {
    let since: u64 = req.query("since").unwrap().parse().unwrap();
    Response::new(304).poll_headers(since, 10)
}

/// Run the engine until its clock parks at the horizon.
async fn run_until_horizon(client: &Client, clock: &VirtualClock) {
    client.start();
    tokio::time::timeout(Duration::from_secs(60), clock.wait_for_horizon())
        .await
        .expect("engine reaches the simulated horizon");
    client.stop().await;
}

#[tokio::test]
async fn idle_battery_replica_backs_off_within_budget() {
    for seed in [1, 2, 3, 42, 1234] {
        let clock = VirtualClock::with_horizon(HOUR);
        let server = FakeServer::start(clock.clone(), not_modified).await;
        let c = client(&server, &clock, following(5), Mode::Battery, seed);
        run_until_horizon(&c, &clock).await;

        let polls = server.requests_to("/v1/changes");
        let all = server.exchanges();
        assert_eq!(polls.len(), all.len(), "an idle replica only probes");
        // At most 60 requests in the idle hour (expected ~34 with the ramp).
        assert!(
            (10..=60).contains(&polls.len()),
            "seed {seed}: {} probes in an idle hour",
            polls.len()
        );
        for p in &polls {
            assert_eq!(p.header("if-none-match"), Some("\"5\""));
            assert_eq!(p.query("wait"), None, "battery probes do not hold");
            assert_eq!(p.header("prefer"), None, "battery probes do not hold");
        }
        // Never more often than X-Poll-Interval (10 s), and slower over time.
        let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1].at - w[0].at).collect();
        assert!(
            gaps.iter().all(|g| *g >= Duration::from_secs(10)),
            "{gaps:?}"
        );
        let first_half: Duration = gaps[..3].iter().sum();
        let last: Duration = gaps[gaps.len() - 3..].iter().sum();
        assert!(last > first_half, "backs off when idle: {gaps:?}");
        // 30 KB per idle hour, request and response bytes counted.
        let bytes: usize = all.iter().map(|e| e.request.bytes + e.response_bytes).sum();
        assert!(
            bytes <= 30_000,
            "seed {seed}: {bytes} bytes in an idle hour"
        );
        if seed == 1 {
            let e = &all[0];
            eprintln!(
                "idle probe: request {} B, response {} B; {} probes, {} B per idle hour",
                e.request.bytes,
                e.response_bytes,
                polls.len(),
                bytes
            );
        }
    }
}

#[tokio::test]
async fn battery_polls_fast_again_after_changes() {
    let clock = VirtualClock::with_horizon(Duration::from_secs(1800));
    let clock2 = clock.clone();
    let server = FakeServer::start(clock.clone(), move |req| {
        let since: u64 = req.query("since").unwrap().parse().unwrap();
        // One change arrives after ~10 idle minutes.
        if since == 5 && clock2.now() >= Duration::from_secs(600) {
            Response::json(
                200,
                json!({"changes":[{"seq":6,"op":"put","collection":"todos","id":"a",
                    "version":6,"value":{"t":1},"ts":"2026-11-29T20:03:00.000Z"}],
                    "next":6,"head":6}),
            )
            .poll_headers(6, 10)
        } else {
            not_modified(req)
        }
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Battery, 7);
    let mut todos = c.subscribe("todos");
    let mut other = c.subscribe("notes");
    run_until_horizon(&c, &clock).await;

    let ev = todos.try_recv().expect("todos subscribers see the change");
    assert_eq!(
        (ev.id.as_str(), ev.version, ev.origin),
        ("a", 6, Origin::Remote)
    );
    assert!(other.try_recv().is_err(), "other collections are not told");
    assert_eq!(c.get("todos", "a").unwrap().unwrap().value, json!({"t": 1}));

    let polls = server.requests_to("/v1/changes");
    let change_at = polls
        .iter()
        .position(|p| p.query("since").as_deref() == Some("6"))
        .unwrap();
    // Right after the change the schedule restarts at the floor.
    let gap = polls[change_at].at - polls[change_at - 1].at;
    assert_eq!(gap, Duration::from_secs(10), "fast after activity");
    assert_eq!(c.status().cursor, Some(6));
    assert_eq!(c.status().lag, Some(0));
}

#[tokio::test]
async fn retry_after_on_503_and_429_is_honoured() {
    let clock = VirtualClock::with_horizon(HOUR);
    let changes = Arc::new(AtomicUsize::new(0));
    let mutations = Arc::new(AtomicUsize::new(0));
    let (ch, mu) = (changes.clone(), mutations.clone());
    let server = FakeServer::start(clock.clone(), move |req| match req.path() {
        "/v1/mutations" => {
            if mu.fetch_add(1, Ordering::SeqCst) < 2 {
                Response::problem(429, "rate-limited", "Too many mutations")
                    .header("retry-after", "30")
            } else {
                let items = req.json()["mutations"].as_array().unwrap().clone();
                let results: Vec<_> = items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| {
                        json!({"id": it["id"], "status": 201, "version": 6 + i as u64, "replayed": false,
                            "document": {"collection": it["collection"], "id": it["doc"],
                                "version": 6 + i as u64, "value": it["value"],
                                "updated_at": "2026-11-29T20:03:00.000Z"}})
                    })
                    .collect();
                Response::json(200, json!({"results": results, "head": 6 + items.len() as u64}))
            }
        }
        _ => {
            if ch.fetch_add(1, Ordering::SeqCst) < 3 {
                Response::problem(503, "unavailable", "Store unavailable")
                    .header("retry-after", "120")
            } else {
                let since: u64 = req.query("since").unwrap().parse().unwrap();
                // Answer held polls as a held poll would, without the hold.
                Response::new(304).poll_headers(since, 10)
            }
        }
    })
    .await;
    let storage = following(5);
    let c = client(&server, &clock, storage, Mode::Battery, 3);
    let queued = c.put("todos", "a", json!({"t": 1})).unwrap();
    run_until_horizon(&c, &clock).await;

    let log = server.exchanges();
    for (i, e) in log.iter().enumerate() {
        // A 503 on reads (the store failing) holds back every request; a
        // 429 on mutations only the next mutation (reads are never rate
        // limited).
        let (ra, next) = match e.status {
            429 => (
                30,
                log[i + 1..]
                    .iter()
                    .find(|n| n.request.path() == "/v1/mutations"),
            ),
            503 => (120, log.get(i + 1)),
            _ => continue,
        };
        if let Some(next) = next {
            let gap = next.request.at - e.request.at;
            assert!(
                gap >= Duration::from_secs(ra),
                "{} then {} after only {gap:?}",
                e.status,
                next.request.path()
            );
        }
    }
    // The mutation went out three times with the same idempotency key.
    let posts = server.requests_to("/v1/mutations");
    assert_eq!(posts.len(), 3);
    for p in &posts {
        assert_eq!(p.json()["mutations"][0]["id"], json!(queued.key));
    }
    assert_eq!(c.pending().unwrap().len(), 0);
    assert_eq!(c.get("todos", "a").unwrap().unwrap().version, 6);
    assert!(server.requests_to("/v1/changes").len() >= 3);
}

#[tokio::test]
async fn live_mode_tight_loop_backs_off() {
    for (name, answer) in [
        // A server that says it holds but answers at once (as a draining or
        // restarting one does).
        ("immediate 304 despite Preference-Applied", 0),
        // 200s that never advance although the head is ahead.
        ("200 without progress", 1),
    ] {
        let clock = VirtualClock::with_horizon(HOUR);
        let server = FakeServer::start(clock.clone(), move |req| {
            let since: u64 = req.query("since").unwrap().parse().unwrap();
            if answer == 0 {
                Response::new(304)
                    .poll_headers(since, 10)
                    .header("preference-applied", "wait=25")
            } else {
                Response::json(
                    200,
                    json!({"changes": [], "next": since, "head": since + 3}),
                )
                .poll_headers(since, 10)
            }
        })
        .await;
        let c = client(&server, &clock, following(5), Mode::Live, 11);
        run_until_horizon(&c, &clock).await;
        let polls = server.requests_to("/v1/changes");
        assert!(
            polls.len() <= 60,
            "{name}: {} requests in a simulated hour",
            polls.len()
        );
        assert!(polls.iter().all(|p| p.header("prefer") == Some("wait=25")));
        assert_eq!(
            c.status().polling,
            Polling::LongPoll,
            "{name}: not a reason to stop asking for holds"
        );
    }
}

/// Answer a long-poll as a server that holds it would: 25 simulated seconds
/// later, nothing new.
fn held(clock: &VirtualClock, req: &Request, preference_applied: bool) -> Response {
    clock.advance(Duration::from_secs(25));
    let r = not_modified(req);
    if preference_applied {
        r.header("preference-applied", "wait=25")
    } else {
        r
    }
}

#[tokio::test]
async fn live_mode_smart_polls_a_server_that_does_not_hold() {
    for (name, says, early_answers) in [
        // `max_wait_seconds = 0`: the server says so at once.
        ("Preference-Applied: wait=0", true, 1),
        // A proxy or server that ignores `Prefer`: only timing tells, and a
        // couple of early answers are tolerated first.
        ("no Preference-Applied", false, 3),
    ] {
        let clock = VirtualClock::with_horizon(HOUR);
        let server = FakeServer::start(clock.clone(), move |req| {
            let r = not_modified(req);
            if says {
                r.header("preference-applied", "wait=0")
            } else {
                r
            }
        })
        .await;
        let c = client(&server, &clock, following(5), Mode::Live, 13);
        run_until_horizon(&c, &clock).await;

        let status = c.status();
        assert_eq!(
            (status.mode, status.polling),
            (Mode::Live, Polling::SmartPoll),
            "{name}"
        );
        let polls = server.requests_to("/v1/changes");
        for p in &polls {
            assert_eq!(p.header("if-none-match"), Some("\"5\""), "{name}");
            // Still asking: a server that starts holding is noticed at once.
            assert_eq!(p.header("prefer"), Some("wait=25"), "{name}");
        }
        let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1].at - w[0].at).collect();
        let (early, paced) = gaps.split_at(early_answers - 1);
        assert!(early.iter().all(Duration::is_zero), "{name}: {gaps:?}");
        // Never faster than X-Poll-Interval, never slower than a hold.
        assert!(
            paced
                .iter()
                .all(|g| *g >= Duration::from_secs(10) && *g <= Duration::from_secs(25)),
            "{name}: {gaps:?}"
        );
        // ≈ 250 expected (14.5 s per probe); 360 would be the floor every time.
        assert!(
            (150..=360 + early_answers).contains(&polls.len()),
            "{name}: {} probes in a simulated hour",
            polls.len()
        );
    }
}

#[tokio::test]
async fn switching_to_live_probes_at_once_on_a_server_that_does_not_hold() {
    let clock = VirtualClock::with_horizon(HOUR);
    let server = FakeServer::start(clock.clone(), |req| {
        not_modified(req).header("preference-applied", "wait=0")
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 23);
    c.start();
    tokio::time::timeout(Duration::from_secs(60), clock.wait_for_horizon())
        .await
        .unwrap();
    let before = server.requests_to("/v1/changes").len();
    let now = clock.now();
    // The app comes to the foreground: no waiting out the schedule.
    c.set_mode(Mode::Live);
    eventually("a probe right away", || {
        server.requests_to("/v1/changes").len() > before
    })
    .await;
    c.stop().await;
    assert_eq!(server.requests_to("/v1/changes")[before].at, now);
}

#[tokio::test]
async fn live_mode_long_polls_again_once_the_server_holds() {
    let clock = VirtualClock::new();
    let clock2 = clock.clone();
    // Holds are off for the first ten minutes, then on (a redeploy).
    let server = FakeServer::start(clock.clone(), move |req| {
        if clock2.now() < Duration::from_secs(600) {
            not_modified(req).header("preference-applied", "wait=0")
        } else {
            held(&clock2, req, true)
        }
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 17);
    let mut status = c.watch_status();
    c.start();
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.polling == Polling::SmartPoll),
    )
    .await
    .expect("smart polls while the server does not hold")
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.polling == Polling::LongPoll),
    )
    .await
    .expect("long-polls again once the server holds")
    .unwrap();
    drop(status);
    let switched_at = server.requests_to("/v1/changes").len();
    eventually("ten held long-polls", || {
        server.requests_to("/v1/changes").len() >= switched_at + 10
    })
    .await;
    c.stop().await;

    let polls = server.requests_to("/v1/changes");
    let first_held = polls
        .iter()
        .position(|p| p.at >= Duration::from_secs(600))
        .unwrap();
    assert!(first_held > 10, "smart-polled meanwhile: {first_held}");
    // From the first held answer on, each request right after the previous
    // one's 25 s hold: no smart-poll waits in between.
    let after: Vec<Duration> = polls[first_held..switched_at + 10]
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .collect();
    assert!(
        after.iter().all(|g| *g == Duration::from_secs(25)),
        "{after:?}"
    );
}

#[tokio::test]
async fn live_mode_keeps_long_polling_a_server_that_holds_silently() {
    let clock = VirtualClock::new();
    let clock2 = clock.clone();
    let server = FakeServer::start(clock.clone(), move |req| held(&clock2, req, false)).await;
    let c = client(&server, &clock, following(5), Mode::Live, 19);
    c.start();
    eventually("twenty held long-polls", || {
        server.requests_to("/v1/changes").len() >= 20
    })
    .await;
    c.stop().await;
    assert_eq!(c.status().polling, Polling::LongPoll);
    assert!(clock.sleeps().is_empty(), "{:?}", clock.sleeps());
}

/// A broken listing that comes back to a page it gave already (A, B, A…)
/// fails the bootstrap instead of being read forever.
#[tokio::test]
async fn a_listing_that_goes_round_in_circles_is_a_protocol_error() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| {
        let next = match req.query("after").as_deref() {
            Some("todos/a") => "todos/b",
            _ => "todos/a",
        };
        Response::json(
            200,
            json!({"documents": [], "cursor": 9, "next_after": next}),
        )
    })
    .await;
    let c = client(&server, &clock, MemoryStorage::new(), Mode::Live, 5);
    let err = c.sync_once().await.unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err}");
    assert_eq!(server.requests_to("/v1/docs").len(), 3, "first, A, B");
}

#[tokio::test]
async fn expired_cursor_resyncs_and_keeps_pending_mutations() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| match req.path() {
        "/v1/docs" => {
            if req.query("after").is_none() {
                Response::json(
                    200,
                    json!({"documents":[{"collection":"todos","id":"a","version":7,
                        "value":{"t":"new"},"updated_at":"2026-11-29T20:03:00.000Z"}],
                        "cursor": 9, "next_after": "todos/a"}),
                )
            } else {
                assert_eq!(req.query("after").as_deref(), Some("todos/a"));
                Response::json(
                    200,
                    json!({"documents":[{"collection":"todos","id":"b","version":8,
                        "value":2,"updated_at":"2026-11-29T20:03:00.000Z"}],
                        "cursor": 10}),
                )
            }
        }
        "/v1/changes" => match req.query("since").as_deref() {
            Some("3") => Response::problem(410, "cursor-expired", "Cursor expired")
                .header("x-poll-interval", "10"),
            _ => not_modified(req),
        },
        // The server is refusing writes for now: the mutation stays queued.
        _ => Response::problem(503, "unavailable", "Unavailable").header("retry-after", "5"),
    })
    .await;
    let storage = following_with(
        3,
        vec![
            DocWrite {
                collection: "todos".into(),
                id: "a".into(),
                version: 2,
                value: Some(json!({"t": "old"})),
                updated_at: None,
            },
            DocWrite {
                collection: "todos".into(),
                id: "gone".into(),
                version: 3,
                value: Some(json!(1)),
                updated_at: None,
            },
        ],
    );
    let c = client(&server, &clock, storage.clone(), Mode::Live, 5);
    let queued = c.put("todos", "c", json!("offline")).unwrap();
    let mut events = c.events();
    let mut todos = c.subscribe("todos");
    let err = c.sync_once().await.unwrap_err();
    assert!(
        err.is_transient(),
        "503 on writes leaves the mutation queued: {err}"
    );

    // Pending mutation kept, same key.
    let pending = c.pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, queued.key);
    // The replica is the listing, followed from the FIRST page's cursor.
    let docs: Vec<_> = c
        .list(Some("todos"))
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.version))
        .collect();
    assert_eq!(docs, [("a".to_string(), 7), ("b".to_string(), 8)]);
    assert_eq!(c.status().cursor, Some(9));
    let polls = server.requests_to("/v1/changes");
    assert_eq!(polls.last().unwrap().query("since").as_deref(), Some("9"));
    // The app hears exactly the differences.
    let mut seen = Vec::new();
    while let Ok(ev) = todos.try_recv() {
        assert_eq!(ev.origin, Origin::Resync);
        seen.push((ev.op.as_str(), ev.id));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("delete", "gone".to_string()),
            ("put", "a".to_string()),
            ("put", "b".to_string())
        ]
    );
    let mut resynced = false;
    while let Ok(ev) = events.try_recv() {
        if let SyncEvent::Resynced {
            reason,
            cursor,
            documents,
        } = ev
        {
            assert_eq!(
                (reason, cursor, documents),
                (ResyncReason::CursorExpired, 9, 2)
            );
            resynced = true;
        }
    }
    assert!(resynced);
    assert!(!storage.meta().unwrap().needs_resync);
}

fn item_result(it: &serde_json::Value, status: u16, version: u64) -> serde_json::Value {
    let mut r = json!({"id": it["id"], "status": status, "replayed": false});
    match status {
        200 | 201 => {
            r["version"] = version.into();
            r["document"] = json!({"collection": it["collection"], "id": it["doc"],
                "version": version, "value": it["value"], "updated_at": "2026-11-29T20:03:00.000Z"});
        }
        204 => r["version"] = version.into(),
        412 => {
            r["problem"] = json!({"type":"precondition-failed","title":"Precondition failed",
                "status":412,"current_version":9});
        }
        s => {
            r["problem"] = json!({"type":"document-not-found","title":"Not found","status":s});
        }
    }
    r
}

/// A batch stopped by a refusal worth retrying (429 or 503), listing the
/// results of the items it settled before the stop.
fn stopped_batch(status: u16, settled: &[serde_json::Value], retry_after: &str) -> Response {
    let (kind, title) = match status {
        429 => ("rate-limited", "Too many mutations"),
        _ => ("unavailable", "Store unavailable"),
    };
    Response::json(
        status,
        json!({"type": kind, "title": title, "status": status, "detail": "retry later",
            "results": settled}),
    )
    .header("retry-after", retry_after)
}

/// A batch answered with every item applied (201) at `version`, the head.
fn all_applied(req: &Request, version: u64) -> Response {
    let items = req.json()["mutations"].as_array().unwrap().clone();
    let results: Vec<_> = items
        .iter()
        .map(|it| item_result(it, 201, version))
        .collect();
    Response::json(200, json!({"results": results, "head": version}))
}

#[tokio::test]
async fn conflicts_are_parked_until_the_app_resolves_them() {
    let clock = VirtualClock::new();
    let version = Arc::new(AtomicUsize::new(10));
    let v2 = version.clone();
    let server = FakeServer::start(clock.clone(), move |req| match req.path() {
        "/v1/mutations" => {
            let items = req.json()["mutations"].as_array().unwrap().clone();
            let results: Vec<_> = items
                .iter()
                .map(|it| {
                    let v = v2.fetch_add(1, Ordering::SeqCst) as u64;
                    match it["if_version"].as_u64() {
                        Some(3) => item_result(it, 412, v),
                        _ if it["op"] == "patch" => item_result(it, 404, v),
                        _ if it["op"] == "delete" => item_result(it, 204, v),
                        _ => item_result(it, 201, v),
                    }
                })
                .collect();
            Response::json(200, json!({"results": results, "head": 20}))
        }
        _ => not_modified(req),
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    let mut events = c.events();
    let mut todos = c.subscribe("todos");
    let conflicted = c
        .enqueue(Mutation::put("todos", "x", json!("mine")).if_version(3))
        .unwrap();
    c.put("todos", "y", json!("ok")).unwrap();
    let missing = c.patch("todos", "nope", json!({"a": 1})).unwrap();
    let report = c.flush().await.unwrap();
    assert_eq!(report.delivered.len(), 1);
    assert_eq!(report.parked.len(), 2);

    // The put that went through is applied locally at once.
    let ev = todos.try_recv().unwrap();
    assert_eq!((ev.id.as_str(), ev.origin), ("y", Origin::Local));
    assert_eq!(c.get("todos", "y").unwrap().unwrap().value, json!("ok"));
    // The conflict and the rejection are surfaced, kept, and not applied.
    assert_eq!(c.get("todos", "x").unwrap(), None);
    let parked = c.parked().unwrap();
    assert_eq!(parked.len(), 2);
    assert!(matches!(
        parked[0].reason,
        ParkReason::Conflict {
            current_version: Some(9),
            ..
        }
    ));
    assert!(matches!(
        parked[1].reason,
        ParkReason::Rejected { status: 404, .. }
    ));
    let mut kinds = Vec::new();
    while let Ok(ev) = events.try_recv() {
        kinds.push(match ev {
            SyncEvent::Conflict(p) => format!("conflict {}", p.pending.key == conflicted.key),
            SyncEvent::Rejected(p) => format!("rejected {}", p.pending.key == missing.key),
            SyncEvent::Delivered { .. } => "delivered".into(),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(kinds, ["delivered", "conflict true", "rejected true"]);
    assert_eq!(c.status().parked, 2);
    assert_eq!(c.status().pending, 0);

    // Overwrite: re-queued with a new key on top of the server's version.
    let again = c
        .resolve(conflicted.seq, Resolution::Overwrite)
        .unwrap()
        .unwrap();
    assert_ne!(again.key, conflicted.key);
    assert_eq!(again.mutation.if_version, Some(9));
    c.resolve(missing.seq, Resolution::Discard).unwrap();
    assert!(c.resolve(missing.seq, Resolution::Discard).is_err());
    let report = c.flush().await.unwrap();
    assert_eq!(report.delivered.len(), 1);
    assert!(c.parked().unwrap().is_empty());
    let posts = server.requests_to("/v1/mutations");
    assert_eq!(
        posts.last().unwrap().json()["mutations"][0]["if_version"],
        json!(9)
    );
}

#[tokio::test]
async fn a_batch_refused_whole_is_split_to_find_the_bad_item() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| {
        let items = req.json()["mutations"].as_array().unwrap().clone();
        let bad = |it: &serde_json::Value| it["value"] == json!("bad");
        if items.iter().any(bad) {
            return Response::problem(400, "invalid-body", "Invalid item");
        }
        all_applied(req, 7)
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    c.put("t", "1", json!(1)).unwrap();
    let bad = c.put("t", "2", json!("bad")).unwrap();
    c.put("t", "3", json!(3)).unwrap();
    let report = c.flush().await.unwrap();
    assert_eq!(report.delivered.len(), 2);
    assert_eq!(report.parked.len(), 1);
    assert_eq!(report.parked[0].pending.key, bad.key);
    // In order: the batch, then one by one.
    assert_eq!(
        sent_batches(&server),
        [
            vec!["put 1", "put 2", "put 3"],
            vec!["put 1"],
            vec!["put 2"],
            vec!["put 3"]
        ]
    );
}

/// The items of each batch `server` received, in order, as `"<op> <doc>"`.
fn sent_batches(server: &FakeServer) -> Vec<Vec<String>> {
    server
        .requests_to("/v1/mutations")
        .iter()
        .map(|r| {
            r.json()["mutations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    format!(
                        "{} {}",
                        m["op"].as_str().unwrap(),
                        m["doc"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .collect()
}

/// A batch whose answer is lost is sent again whole, and a refused item is
/// judged again then: an item that depends on its document's state never
/// shares a batch with a later item on that document, so that its second
/// judgement cannot see that item.
#[tokio::test]
async fn a_state_dependent_item_does_not_share_a_batch_with_a_later_one_on_its_document() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| all_applied(req, 7)).await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    c.put("t", "a", json!(1)).unwrap();
    c.put("t", "a", json!(2)).unwrap(); // unconditional puts batch freely
    c.patch("t", "a", json!({"x": 1})).unwrap();
    c.put("t", "b", json!(1)).unwrap(); // another document
    c.put("t", "a", json!(3)).unwrap(); // after the patch of `a`: next batch
    c.delete("t", "b").unwrap();
    c.enqueue(Mutation::put("t", "b", json!(4)).if_version(0))
        .unwrap(); // after the delete of `b`: next batch
    c.put("t", "c", json!(1)).unwrap();
    let report = c.flush().await.unwrap();
    assert_eq!(report.delivered.len(), 8);
    assert_eq!(
        sent_batches(&server),
        [
            vec!["put a", "put a", "patch a", "put b"],
            vec!["put a", "delete b"],
            vec!["put b", "put c"],
        ]
    );
}

/// A 400 that is not edgesync's problem document (a proxy's, a
/// firewall's) says nothing about the items: they stay queued.
#[tokio::test]
async fn a_foreign_400_keeps_the_batch_queued() {
    let clock = VirtualClock::new();
    let foreign = Arc::new(AtomicUsize::new(1));
    let answers = foreign.clone();
    let server = FakeServer::start(clock.clone(), move |req| {
        if answers.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Response::new(400).body(b"<html>Bad Request</html>".to_vec());
        }
        all_applied(req, 7)
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    c.put("t", "1", json!(1)).unwrap();
    c.put("t", "2", json!(2)).unwrap();
    let error = c.flush().await.unwrap_err();
    assert!(error.report.parked.is_empty(), "{error:?}");
    assert_eq!(c.pending().unwrap().len(), 2);
    assert_eq!(server.requests_to("/v1/mutations").len(), 1, "not split");
    let report = c.flush().await.unwrap();
    assert_eq!(report.delivered.len(), 2);
    assert!(c.parked().unwrap().is_empty());
}

#[tokio::test]
async fn own_mutation_echoed_by_the_feed_is_applied_once() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| match req.path() {
        "/v1/mutations" => {
            let items = req.json()["mutations"].as_array().unwrap().clone();
            let results = vec![item_result(&items[0], 204, 8)];
            Response::json(200, json!({"results": results, "head": 8}))
        }
        _ => match req.query("since").as_deref() {
            // The feed replays: an older put, then the delete we already know.
            Some("5") => Response::json(
                200,
                json!({"changes":[
                    {"seq":6,"op":"put","collection":"t","id":"a","version":6,"value":1,"ts":"2026-11-29T20:03:00.000Z"},
                    {"seq":8,"op":"delete","collection":"t","id":"a","version":8,"value":null,"ts":"2026-11-29T20:03:00.000Z"}],
                    "next":8,"head":8}),
            )
            .poll_headers(8, 10),
            _ => not_modified(req),
        },
    })
    .await;
    let storage = following_with(
        5,
        vec![DocWrite {
            collection: "t".into(),
            id: "a".into(),
            version: 4,
            value: Some(json!(0)),
            updated_at: None,
        }],
    );
    let c = client(&server, &clock, storage, Mode::Live, 5);
    let mut all = c.subscribe_all();
    c.delete("t", "a").unwrap();
    c.flush().await.unwrap();
    assert_eq!(c.get("t", "a").unwrap(), None);
    c.sync_once().await.unwrap();
    // The tombstone kept the older put from resurrecting the document.
    assert_eq!(c.get("t", "a").unwrap(), None);
    let evs: Vec<_> = std::iter::from_fn(|| all.try_recv().ok())
        .map(|e| (e.op.as_str(), e.version, e.origin))
        .collect();
    assert_eq!(evs, [("delete", 8, Origin::Local)]);
    assert_eq!(c.status().cursor, Some(8));
}

#[tokio::test]
async fn enqueue_interrupts_an_idle_long_poll_and_flushes_promptly() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| match req.path() {
        "/v1/mutations" => all_applied(req, 6),
        _ => {
            // Hold like a real long-poll (real time), then nothing new.
            std::thread::sleep(Duration::from_millis(200));
            not_modified(req)
        }
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    c.start();
    eventually("a long-poll is in flight", || {
        !server.requests_to("/v1/changes").is_empty()
    })
    .await;
    c.put("t", "a", json!(1)).unwrap();
    eventually("the mutation is delivered", || c.status().pending == 0).await;
    c.stop().await;
    assert_eq!(c.get("t", "a").unwrap().unwrap().version, 6);
}

#[tokio::test]
async fn unauthorized_is_reported_and_slows_down() {
    let clock = VirtualClock::with_horizon(Duration::from_secs(600));
    let server = FakeServer::start(clock.clone(), |_| {
        Response::problem(401, "invalid-token", "Invalid token")
            .header("www-authenticate", "Bearer error=\"invalid_token\"")
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    let mut events = c.events();
    run_until_horizon(&c, &clock).await;
    let n = server.exchanges().len();
    assert!(
        n <= 20,
        "{n} requests in 10 simulated minutes with a bad token"
    );
    let auth: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, SyncEvent::AuthFailed(_)))
        .collect();
    assert_eq!(auth.len(), 1, "reported once per failure streak");
    assert!(c.status().last_error.unwrap().contains("Invalid token"));
}

#[tokio::test]
async fn a_listing_cursor_the_server_keeps_refusing_does_not_loop() {
    let clock = VirtualClock::with_horizon(HOUR);
    let server = FakeServer::start(clock.clone(), |req| match req.path() {
        "/v1/docs" => Response::json(200, json!({"documents": [], "cursor": 3})),
        _ => Response::problem(410, "cursor-expired", "Cursor expired")
            .header("x-poll-interval", "10"),
    })
    .await;
    let c = client(&server, &clock, MemoryStorage::new(), Mode::Live, 5);
    let err = c.sync_once().await.unwrap_err();
    assert!(err.to_string().contains("keeps refusing"), "{err}");
    run_until_horizon(&c, &clock).await;
    let listings = server.requests_to("/v1/docs").len();
    assert!(listings <= 60, "{listings} resyncs in a simulated hour");
}

/// A mutation applied on the server whose answer was lost, then deleted by
/// another device: the feed brings the put and the delete (and the cursor
/// passes the delete, pruning its tombstone) before the retry's replayed
/// result comes back. That result is older than the cursor: already
/// reflected by the feed, it must not bring the document back.
#[tokio::test]
async fn a_replayed_result_behind_the_cursor_does_not_resurrect_a_deleted_document() {
    let clock = VirtualClock::new();
    let posts = Arc::new(AtomicUsize::new(0));
    let posts2 = posts.clone();
    let server = FakeServer::start(clock.clone(), move |req| match req.path() {
        "/v1/mutations" => {
            // The first attempt is applied at version 6, but its answer is
            // lost (a whole-response 503, as from a proxy); the retry is
            // answered with the replayed first result.
            if posts2.fetch_add(1, Ordering::SeqCst) == 0 {
                return Response::problem(503, "unavailable", "Unavailable")
                    .header("retry-after", "1");
            }
            let items = req.json()["mutations"].as_array().unwrap().clone();
            let mut r = item_result(&items[0], 201, 6);
            r["replayed"] = json!(true);
            Response::json(200, json!({"results": [r], "head": 7}))
        }
        // A read that raced the delete (say, from a lagging store replica).
        "/v1/docs/t/a" => Response::json(
            200,
            json!({"collection":"t","id":"a","version":6,"value":"mine",
                "updated_at":"2026-11-29T20:03:00.000Z"}),
        ),
        _ => match req.query("since").as_deref() {
            Some("5") => Response::json(
                200,
                json!({"changes":[
                    {"seq":6,"op":"put","collection":"t","id":"a","version":6,"value":"mine","ts":"2026-11-29T20:03:00.000Z"},
                    {"seq":7,"op":"delete","collection":"t","id":"a","version":7,"value":null,"ts":"2026-11-29T20:03:01.000Z"}],
                    "next":7,"head":7}),
            )
            .poll_headers(7, 10),
            _ => not_modified(req),
        },
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    c.put("t", "a", json!("mine")).unwrap();
    assert!(c.flush().await.is_err(), "the answer was lost");
    // The feed first, then the retried flush.
    c.sync_once().await.unwrap();
    assert_eq!(c.pending().unwrap().len(), 0, "delivered on the retry");
    assert_eq!(c.status().cursor, Some(7));
    assert_eq!(c.get("t", "a").unwrap(), None, "the delete stands");
    // Nor does a fetch answered with that older version.
    let fetched = c.fetch("t", "a").await.unwrap().unwrap();
    assert_eq!(fetched.version, 6);
    assert_eq!(c.get("t", "a").unwrap(), None, "the delete still stands");
    assert_eq!(c.list(None).unwrap(), vec![]);
}

/// A server that applies every mutation (at version 6) and has nothing
/// new to read.
async fn applying_server(clock: &VirtualClock) -> FakeServer {
    FakeServer::start(clock.clone(), |req| match req.path() {
        "/v1/mutations" => all_applied(req, 6),
        _ => not_modified(req),
    })
    .await
}

/// A replica is alice's on this server: a client for another user (say the
/// same storage opened with bob's token, or alice's client handed bob's
/// token) must not send alice's queued mutations with bob's token, and one
/// for another server must not reuse this server's cursor.
#[tokio::test]
async fn a_replica_refuses_another_user_or_server() {
    let clock = VirtualClock::new();
    let server = applying_server(&clock).await;
    let storage = following(5);
    let alice = client(&server, &clock, storage.clone(), Mode::Live, 5);
    alice.put("t", "a", json!("alice's")).unwrap();
    drop(alice);

    let bob = support::token_for("bob", 1_764_446_580);
    let as_bob = Client::builder(&server.url, &bob)
        .storage(storage.clone())
        .build();
    if let Ok(c) = &as_bob {
        let _ = c.flush().await;
    }
    let other = Client::builder("http://127.0.0.1:9", token())
        .storage(storage.clone())
        .build();
    let alice = client(&server, &clock, storage.clone(), Mode::Live, 5);
    let _ = alice.set_token(bob.clone());
    let _ = alice.flush().await;

    let posts = server.requests_to("/v1/mutations");
    assert!(!posts.is_empty());
    for p in &posts {
        assert_eq!(
            p.header("authorization"),
            Some(format!("Bearer {}", token()).as_str()),
            "alice's mutations go out with alice's token only"
        );
    }
    assert!(
        matches!(
            &as_bob,
            Err(Error::WrongUser { replica, given: Some(given) })
                if replica == "alice" && given == "bob"
        ),
        "bob's token on alice's replica: {:?}",
        as_bob.err()
    );
    assert!(
        matches!(&other, Err(Error::WrongServer { replica, given })
            if *replica == server.url && given == "http://127.0.0.1:9"),
        "another server on this server's replica: {:?}",
        other.err()
    );
    let refused = alice.set_token(bob).unwrap_err();
    assert!(matches!(refused, Error::WrongUser { .. }), "{refused}");
    assert!(
        refused.to_string().contains("separate replica"),
        "{refused}"
    );
    // A refreshed token for alice, and the server's URL spelled another
    // way, are fine.
    alice
        .set_token(support::token_for("alice", 1_764_450_000))
        .unwrap();
    let spelled = server.url.replace("http://", "HTTP://") + "/";
    Client::builder(spelled, token())
        .storage(storage)
        .build()
        .unwrap();
}

/// A replica that does not know its user (the token has no readable
/// `sub`) queues nothing: the mutation would otherwise wait there and go
/// out with whichever user's token came next. Once a token names the user,
/// queueing works.
#[tokio::test]
async fn no_mutation_is_queued_for_an_unknown_user() {
    let clock = VirtualClock::new();
    let server = applying_server(&clock).await;
    let storage = following(5);
    let nobody = Client::builder(&server.url, "garbage")
        .storage(storage.clone())
        .build()
        .unwrap();
    let refused = nobody.put("t", "x", json!("whose?")).unwrap_err();
    assert!(matches!(refused, Error::UnknownUser), "{refused}");
    assert!(nobody.pending().unwrap().is_empty());
    drop(nobody);

    let bob = Client::builder(&server.url, support::token_for("bob", 1_764_446_580))
        .storage(storage.clone())
        .build()
        .unwrap();
    bob.put("t", "y", json!("bob's")).unwrap();
    bob.flush().await.unwrap();
    let posts = server.requests_to("/v1/mutations");
    let docs: Vec<_> = posts
        .iter()
        .flat_map(|p| {
            p.json()["mutations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|m| m["doc"].clone())
        .collect();
    assert_eq!(docs, vec![json!("y")], "only bob's own mutation went out");

    // A client started without a user learns it from a token that names one.
    let late = Client::builder(&server.url, "garbage")
        .storage(MemoryStorage::new())
        .build()
        .unwrap();
    late.set_token(token()).unwrap();
    late.put("t", "z", json!(1)).unwrap();
}

/// A change on the server, seen by the first probe from `since = 5`.
fn one_remote_change(req: &Request) -> Option<Response> {
    (req.query("since").as_deref() == Some("5")).then(|| {
        Response::json(
            200,
            json!({"changes":[{"seq":6,"op":"put","collection":"todos","id":"remote",
                "version":6,"value":"theirs","ts":"2026-11-29T20:03:00.000Z"}],
                "next":6,"head":6}),
        )
        .poll_headers(6, 10)
    })
}

/// Writes refused for good by something in front of the server (a proxy's
/// 403) must not stop the replica from reading: each step that fails to
/// flush goes on to the pull, and the mutation stays queued.
#[tokio::test]
async fn a_failing_flush_does_not_starve_reading() {
    let clock = VirtualClock::with_horizon(Duration::from_secs(600));
    let server = FakeServer::start(clock.clone(), |req| match req.path() {
        "/v1/mutations" => Response::problem(403, "forbidden", "Forbidden by proxy policy"),
        _ => one_remote_change(req).unwrap_or_else(|| not_modified(req)),
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Battery, 9);
    c.put("todos", "mine", json!("queued")).unwrap();
    run_until_horizon(&c, &clock).await;

    assert_eq!(
        c.get("todos", "remote").unwrap().map(|d| d.value),
        Some(json!("theirs")),
        "the remote change was pulled"
    );
    assert_eq!(c.status().cursor, Some(6));
    assert_eq!(c.pending().unwrap().len(), 1, "the write stays queued");
    let status = c.status();
    assert!(status.online);
    assert!(
        status.last_error.unwrap().contains("Forbidden"),
        "the write failure stays visible"
    );
    // Writes are retried on back-off, reads on the poll schedule: never a
    // tight loop of either.
    assert!(server.requests_to("/v1/mutations").len() <= 30);
    assert!(server.requests_to("/v1/changes").len() <= 60);
}

/// A 429 on mutations (with a long `Retry-After`) delays the next write,
/// not the next read: reads are never rate limited.
#[tokio::test]
async fn retry_after_on_mutations_does_not_delay_reads() {
    let clock = VirtualClock::with_horizon(Duration::from_secs(600));
    let clock2 = clock.clone();
    let server = FakeServer::start(clock.clone(), move |req| match req.path() {
        "/v1/mutations" => Response::problem(429, "rate-limited", "Too many mutations")
            .header("retry-after", "3600"),
        _ => one_remote_change(req).unwrap_or_else(|| held(&clock2, req, true)),
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 9);
    c.put("todos", "mine", json!("queued")).unwrap();
    c.start();
    eventually("the remote change is pulled", || {
        c.get("todos", "remote").unwrap().is_some()
    })
    .await;
    eventually("a few held long-polls", || {
        server.requests_to("/v1/changes").len() >= 5
    })
    .await;
    c.stop().await;

    let posts = server.requests_to("/v1/mutations");
    assert_eq!(posts.len(), 1, "the next write waits out Retry-After");
    let polls = server.requests_to("/v1/changes");
    assert_eq!(polls[0].at, posts[0].at, "the read went out at once");
    assert_eq!(c.pending().unwrap().len(), 1);
    assert_eq!(c.status().polling, Polling::LongPoll);
}

/// One-shot flush against a server that fails one item temporarily (an
/// item-level 503, as an older server answered): the report of what was
/// delivered comes back with the error, and the failed item is not retried
/// at once in the same call, ignoring the back-off just set.
#[tokio::test]
async fn flush_returns_what_it_delivered_with_the_error_and_does_not_retry_at_once() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| {
        let items = req.json()["mutations"].as_array().unwrap().clone();
        let results: Vec<_> = items
            .iter()
            .map(|it| {
                if it["doc"] == "jammed" {
                    json!({"id": it["id"], "status": 503, "replayed": false,
                        "problem": {"type":"unavailable","title":"Unavailable","status":503}})
                } else {
                    item_result(it, 201, 6)
                }
            })
            .collect();
        Response::json(200, json!({"results": results, "head": 6}))
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    c.put("t", "jammed", json!(1)).unwrap();
    let mine = c.put("t", "mine", json!(2)).unwrap();
    let err = c.flush().await.unwrap_err();
    assert_eq!(
        server.requests_to("/v1/mutations").len(),
        1,
        "no immediate retry"
    );
    assert!(err.is_transient(), "{err}");
    assert!(matches!(err.error, Error::Server { status: 503, .. }));
    let delivered: Vec<_> = err.report.delivered.iter().map(|d| &d.key).collect();
    assert_eq!(delivered, [&mine.key], "what was delivered is reported");
    assert_eq!(c.get("t", "mine").unwrap().unwrap().version, 6);
    assert_eq!(c.pending().unwrap().len(), 1);
    assert!(c.status().last_error.is_some());
}

/// A batch stopped by a 429 settles the items before the stop from the
/// answer's `results`: the refused one is parked at once rather than sent
/// again (where the server would evaluate it afresh, after the item that
/// followed it), the applied one is delivered, and only the rest stay
/// queued.
#[tokio::test]
async fn a_stopped_batch_settles_the_items_before_the_stop() {
    let clock = VirtualClock::new();
    let posts = Arc::new(AtomicUsize::new(0));
    let posts2 = posts.clone();
    let server = FakeServer::start(clock.clone(), move |req| {
        let items = req.json()["mutations"].as_array().unwrap().clone();
        if posts2.fetch_add(1, Ordering::SeqCst) > 0 {
            return all_applied(req, 9);
        }
        let mut settled = [
            item_result(&items[0], 412, 0),
            item_result(&items[1], 201, 8),
        ];
        // A stop lists whole documents: it may be far larger than a
        // plain problem document.
        settled[1]["document"]["padding"] = "p".repeat(200 * 1024).into();
        stopped_batch(429, &settled, "30")
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    let stale = c
        .enqueue(Mutation::put("todos", "x", json!("mine")).if_version(3))
        .unwrap();
    let applied = c.put("todos", "y", json!("ok")).unwrap();
    let stopped = c.put("todos", "z", json!("later")).unwrap();

    let err = c.flush().await.unwrap_err();
    assert!(
        matches!(err.error, Error::Server { status: 429, .. }),
        "{err}"
    );
    let delivered: Vec<_> = err.report.delivered.iter().map(|d| &d.key).collect();
    assert_eq!(delivered, [&applied.key]);
    let parked: Vec<_> = err.report.parked.iter().map(|p| &p.pending.key).collect();
    assert_eq!(parked, [&stale.key]);
    assert_eq!(c.get("todos", "y").unwrap().unwrap().version, 8);
    assert!(matches!(
        c.parked().unwrap()[0].reason,
        ParkReason::Conflict {
            current_version: Some(9),
            ..
        }
    ));
    let queued: Vec<_> = c.pending().unwrap().into_iter().map(|p| p.key).collect();
    assert_eq!(queued, std::slice::from_ref(&stopped.key));

    // Sent again, the batch starts at the item that stopped it.
    c.flush().await.unwrap();
    let posts = server.requests_to("/v1/mutations");
    let resent: Vec<_> = posts[1].json()["mutations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(resent, [stopped.key]);
    assert_eq!(
        c.parked().unwrap().len(),
        1,
        "the conflict waits for the app"
    );
}

/// `send_now` (the CLI's fail-fast writes): a batch that stopped with 503
/// after applying its one item (the server could not read the head after
/// it) lists that item's result, so the write is reported as applied and
/// stored, not as failed (retried, it would be written twice); a 503 that
/// settled nothing is an error and stores nothing. And `fetch` takes only
/// edgesync's `document-not-found` for an absent document: a 404 from
/// something else (a proxy, a wrong path prefix in the URL) is an error.
#[tokio::test]
async fn send_now_reads_a_stopped_batch_and_fetch_trusts_only_document_not_found() {
    let clock = VirtualClock::new();
    let posts = Arc::new(AtomicUsize::new(0));
    let posts2 = posts.clone();
    let server = FakeServer::start(clock.clone(), move |req| {
        match req.path() {
            "/v1/docs/todos/gone" => {
                return Response::problem(404, "document-not-found", "Document not found")
            }
            "/v1/docs/todos/elsewhere" => {
                return Response::new(404)
                    .header("content-type", "text/html")
                    .body(b"<h1>404 Not Found</h1>".to_vec())
            }
            _ => {}
        }
        let items = req.json()["mutations"].as_array().unwrap().clone();
        let settled = if posts2.fetch_add(1, Ordering::SeqCst) == 0 {
            vec![item_result(&items[0], 201, 8)]
        } else {
            vec![]
        };
        stopped_batch(503, &settled, "1")
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    match c.send_now(Mutation::put("todos", "y", json!("ok"))).await {
        Ok(SendOutcome::Delivered(d)) => assert_eq!(d.version, Some(8)),
        other => panic!("applied, so delivered: {other:?}"),
    }
    assert_eq!(c.get("todos", "y").unwrap().unwrap().version, 8);
    let err = c
        .send_now(Mutation::put("todos", "z", json!(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 503, .. }), "{err}");
    assert!(c.get("todos", "z").unwrap().is_none());
    assert!(c.pending().unwrap().is_empty(), "fail-fast queues nothing");

    assert!(c.fetch("todos", "gone").await.unwrap().is_none());
    let err = c.fetch("todos", "elsewhere").await.unwrap_err();
    assert!(matches!(err, Error::Server { status: 404, .. }), "{err}");
}

/// A queue of large values filled offline goes out in batches that fit the
/// body limit, not one item per request: within the contract's default
/// limit to begin with, within the limit a 413 names after it, and in
/// halves after a 413 that names none (a proxy's). Every item arrives once,
/// in order.
#[tokio::test]
async fn a_queue_of_large_values_goes_out_in_batches_that_fit() {
    // ~370 KB in all: a 413, then two batches when the limit is named;
    // two 413s (256 KiB, 128 KiB) and six batches of 64 KiB when halving.
    for (limit, names_it, most_requests) in [(200_000, true, 4), (100_000, false, 9)] {
        let clock = VirtualClock::new();
        let server = FakeServer::start(clock.clone(), move |req| {
            if req.body.len() > limit {
                if names_it {
                    let mut r = Response::problem(413, "payload-too-large", "Payload too large");
                    let mut body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    body["max_body_bytes"] = limit.into();
                    r.body = body.to_string().into_bytes();
                    return r;
                }
                return Response::new(413)
                    .header("content-type", "text/html")
                    .body(b"<h1>413 Request Entity Too Large</h1>".to_vec());
            }
            all_applied(req, 7)
        })
        .await;
        let c = client(&server, &clock, following(5), Mode::Live, 5);
        let queued: Vec<String> = (0..120)
            .map(|i| {
                let value = json!({"n": i, "text": "x".repeat(3000)});
                c.put("notes", &format!("n{i}"), value).unwrap().key
            })
            .collect();
        while !c.pending().unwrap().is_empty() {
            c.flush().await.unwrap();
        }
        let posts = server.requests_to("/v1/mutations");
        assert!(
            posts[0].body.len() <= 256 * 1024,
            "the first batch keeps to the default limit: {} bytes",
            posts[0].body.len()
        );
        let sent: Vec<String> = posts
            .iter()
            .filter(|p| p.body.len() <= limit)
            .flat_map(|p| p.json()["mutations"].as_array().unwrap().clone())
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(sent, queued, "every item once, in order (limit {limit})");
        assert!(
            posts.len() <= most_requests,
            "{} requests for 120 items of 3 KiB under a {limit}-byte limit",
            posts.len()
        );
    }
}

/// A batch answered 503 after every item was applied (the server could not
/// read the head afterwards) lists every result: the flush worked, and
/// nothing waits out a back-off for it.
#[tokio::test]
async fn a_batch_stopped_after_its_last_item_is_a_success() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| {
        let items = req.json()["mutations"].as_array().unwrap().clone();
        let settled: Vec<_> = items.iter().map(|it| item_result(it, 201, 8)).collect();
        stopped_batch(503, &settled, "30")
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 5);
    c.put("todos", "a", json!(1)).unwrap();
    c.put("todos", "b", json!(2)).unwrap();
    let report = c.flush().await.unwrap();
    assert_eq!(report.delivered.len(), 2);
    assert!(c.pending().unwrap().is_empty());
    assert!(
        c.status().last_error.is_none(),
        "{:?}",
        c.status().last_error
    );
    // A write made now goes out at once, not after Retry-After.
    match c.send_now(Mutation::put("todos", "c", json!(3))).await {
        Ok(SendOutcome::Delivered(d)) => assert_eq!(d.version, Some(8)),
        other => panic!("applied, so delivered: {other:?}"),
    }
    assert_eq!(server.requests_to("/v1/mutations").len(), 2);
}

/// Two clients on one replica file (say `edgesync watch` and `edgesync put`
/// in two processes) never send the queue at the same time: the second
/// waits for the first to record its results, and then has nothing left to
/// send. Sent by both at once, a refusal the first is about to park would
/// be evaluated afresh by the server, after the items that followed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_sharing_a_replica_take_turns_sending_its_queue() {
    let clock = VirtualClock::new();
    let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (in_flight2, most2) = (in_flight.clone(), most.clone());
    let server = FakeServer::start(clock.clone(), move |req| {
        let now = in_flight2.fetch_add(1, Ordering::SeqCst) + 1;
        most2.fetch_max(now, Ordering::SeqCst);
        // Long enough for the other client's flush to start meanwhile (the
        // handler runs on a worker thread of its own).
        std::thread::sleep(Duration::from_millis(300));
        in_flight2.fetch_sub(1, Ordering::SeqCst);
        all_applied(req, 7)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.sqlite3");
    let open = || {
        Client::builder(&server.url, token())
            .sqlite(&path)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (open(), open());
    let first = a.put("todos", "a", json!(1)).unwrap();
    let second = b.put("todos", "b", json!(2)).unwrap();

    let (ra, rb) = tokio::join!(a.flush(), b.flush());
    let delivered: usize = [ra.unwrap(), rb.unwrap()]
        .iter()
        .map(|r| r.delivered.len())
        .sum();
    assert_eq!(delivered, 2, "each mutation delivered once, by one of them");
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two batches at once");
    let mut sent: Vec<String> = server
        .requests_to("/v1/mutations")
        .iter()
        .flat_map(|r| r.json()["mutations"].as_array().unwrap().clone())
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    sent.sort();
    let mut expected = vec![first.key, second.key];
    expected.sort();
    assert_eq!(sent, expected, "each mutation sent once");
    assert!(a.pending().unwrap().is_empty());
}

/// Live mode on a server that does not hold: after an error the retry
/// still comes no sooner than `X-Poll-Interval` — the last one seen, or the
/// one on the error response itself.
#[tokio::test]
async fn live_smart_polling_keeps_the_poll_interval_after_errors() {
    for (name, error_interval, floor) in [
        ("503 without X-Poll-Interval", None, 30),
        ("503 with X-Poll-Interval", Some(90), 90),
    ] {
        let clock = VirtualClock::with_horizon(HOUR);
        let calls = Arc::new(AtomicUsize::new(0));
        let calls2 = calls.clone();
        let server = FakeServer::start(clock.clone(), move |req| {
            // Every other answer fails (briefly: Retry-After 1).
            if calls2.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                let since: u64 = req.query("since").unwrap().parse().unwrap();
                Response::new(304)
                    .poll_headers(since, 30)
                    .header("preference-applied", "wait=0")
            } else {
                let r =
                    Response::problem(503, "unavailable", "Unavailable").header("retry-after", "1");
                match error_interval {
                    Some(s) => r.header("x-poll-interval", &s.to_string()),
                    None => r,
                }
            }
        })
        .await;
        let c = client(&server, &clock, following(5), Mode::Live, 29);
        run_until_horizon(&c, &clock).await;
        assert_eq!(c.status().polling, Polling::SmartPoll, "{name}");
        let log = server.exchanges();
        assert!(log.len() > 10, "{name}: {}", log.len());
        for pair in log.windows(2) {
            if pair[0].status == 503 {
                let gap = pair[1].request.at - pair[0].request.at;
                assert!(
                    gap >= Duration::from_secs(floor),
                    "{name}: retried {gap:?} after a 503"
                );
            }
        }
    }
}

/// Pages that parse but break the protocol (a `next` going backwards or
/// past the head, entries out of order or at or before `since`) are errors
/// the engine backs off from, not successes it retries at once.
#[tokio::test]
async fn pages_that_break_the_protocol_are_backed_off_from() {
    let entry = |seq: u64| {
        json!({"seq": seq, "op": "put", "collection": "c", "id": "x", "version": seq,
               "value": seq, "ts": "2026-11-29T20:03:00.000Z"})
    };
    let broken = [
        (
            "next behind since",
            json!({"changes": [], "next": 2, "head": 20}),
        ),
        (
            "next past head",
            json!({"changes": [entry(6)], "next": 1000, "head": 6}),
        ),
        (
            "entry at since",
            json!({"changes": [entry(5), entry(6)], "next": 6, "head": 6}),
        ),
        (
            "out of order",
            json!({"changes": [entry(7), entry(6)], "next": 7, "head": 7}),
        ),
        (
            "entry past next",
            json!({"changes": [entry(9)], "next": 6, "head": 9}),
        ),
    ];
    for (name, page) in broken {
        let clock = VirtualClock::with_horizon(HOUR);
        let server = FakeServer::start(clock.clone(), move |_| {
            Response::json(200, page.clone()).poll_headers(5, 10)
        })
        .await;
        let c = client(&server, &clock, following(5), Mode::Live, 3);
        run_until_horizon(&c, &clock).await;
        // The error back-off: full jitter up to 60 s, ~120 an hour (a
        // retry "as the first" each time would be thousands).
        let polls = server.requests_to("/v1/changes").len();
        assert!(polls <= 150, "{name}: {polls} requests in a simulated hour");
        assert_eq!(c.status().cursor, Some(5), "{name}: the cursor stays");
        assert!(
            c.get("c", "x").unwrap().is_none(),
            "{name}: nothing applied"
        );
    }
}

/// edgesync never redirects: a 3xx is an error, so a queued mutation is
/// never handed to (and counted as delivered by) the host a redirect names,
/// and that host's "changes" never reach the replica.
#[tokio::test]
async fn redirects_are_not_followed() {
    let clock = VirtualClock::new();
    let elsewhere = FakeServer::start(clock.clone(), |req| match req.path() {
        "/v1/mutations" => all_applied(req, 6),
        _ => one_remote_change(req).unwrap_or_else(|| not_modified(req)),
    })
    .await;
    let target = elsewhere.url.clone();
    let server = FakeServer::start(clock.clone(), move |req| {
        Response::new(307).header("location", &format!("{target}{}", req.target))
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 1);
    c.put("todos", "mine", json!("queued")).unwrap();
    assert!(
        c.flush().await.is_err(),
        "a redirected write is not delivered"
    );
    assert!(
        c.sync_once().await.is_err(),
        "a redirected read is an error"
    );
    assert!(
        elsewhere.exchanges().is_empty(),
        "nothing went to the other host"
    );
    assert_eq!(c.pending().unwrap().len(), 1, "the write stays queued");
    assert!(c.get("todos", "remote").unwrap().is_none());
}

/// A response body is read up to a bound (well above any page edgesync
/// sends), so a broken server cannot make the client hold what it sends.
#[tokio::test]
async fn oversized_response_bodies_are_refused() {
    let clock = VirtualClock::new();
    let huge = Arc::new(vec![b' '; 33 * 1024 * 1024]);
    let server = FakeServer::start(clock.clone(), move |_| {
        Response::new(200)
            .header("content-type", "application/json")
            .body(huge.to_vec())
    })
    .await;
    let c = client(&server, &clock, following(5), Mode::Live, 1);
    let err = c.sync_once().await.unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(c.status().cursor, Some(5));
}

/// A handle that fell behind the retained log while another handle on the
/// same storage kept it current (410 for its own cursor, which is behind
/// the storage's) goes on from the storage's cursor: the replica is fine,
/// so no resync — no listing is read and the shared replica is left alone.
#[tokio::test]
async fn a_handle_behind_a_shared_replica_skips_ahead_instead_of_resyncing() {
    let clock = VirtualClock::new();
    let compacted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let compacted2 = compacted.clone();
    let server = FakeServer::start(clock.clone(), move |req| {
        let since: u64 = req.query("since").unwrap().parse().unwrap();
        if compacted2.load(Ordering::SeqCst) && since < 8 {
            Response::problem(410, "cursor-expired", "Cursor expired")
        } else {
            not_modified(req)
        }
    })
    .await;
    let storage = following(5);
    let c = client(&server, &clock, storage.clone(), Mode::Battery, 1);
    c.sync_once().await.unwrap();
    // Meanwhile another handle on the storage reads on to 12, and the
    // server compacts past 5.
    storage
        .commit(Commit {
            cursor: Some(12),
            head: Some(12),
            ..Default::default()
        })
        .unwrap();
    compacted.store(true, Ordering::SeqCst);
    c.sync_once().await.unwrap();
    assert!(!storage.meta().unwrap().needs_resync, "no resync");
    c.sync_once().await.unwrap();
    let sinces: Vec<String> = server
        .requests_to("/v1/changes")
        .iter()
        .map(|r| r.query("since").unwrap())
        .collect();
    assert_eq!(
        sinces,
        ["5", "5", "12"],
        "its own cursor, then the storage's"
    );
    assert!(server.requests_to("/v1/docs").is_empty(), "no listing read");
    assert_eq!(storage.meta().unwrap().cursor, Some(12));
}

/// Another handle on the storage puts back a snapshot from an earlier
/// cursor (its resync) while this handle's page is in flight: the page's
/// documents are written, but the cursor does not jump from the snapshot's
/// cursor to the page's end, which would skip the changes between them for
/// good (a document changed there would stay stale). The handle reads on
/// from the snapshot's cursor instead, and the replica converges.
#[tokio::test]
async fn a_page_read_past_a_snapshot_put_back_meanwhile_does_not_skip_the_gap() {
    let clock = VirtualClock::new();
    let storage = following(40);
    let other_handle = storage.clone();
    let change = |seq: u64, id: &str| {
        json!({"seq": seq, "op": "put", "collection": "todos", "id": id,
            "version": seq, "value": seq, "ts": "2026-11-29T20:03:00.000Z"})
    };
    let server = FakeServer::start(clock.clone(), move |req| {
        let page = match req.query("since").as_deref() {
            Some("40") => {
                // The other handle's resync lands now: a snapshot at 35,
                // taken before "gap" changed at 38.
                other_handle.replace_all(vec![], 35, 40).unwrap();
                json!({"changes": [change(45, "late")], "next": 45, "head": 45})
            }
            Some("35") => json!({"changes": [change(38, "gap"), change(45, "late")],
                "next": 45, "head": 45}),
            _ => return not_modified(req),
        };
        Response::json(200, page).poll_headers(45, 10)
    })
    .await;
    let c = client(&server, &clock, storage.clone(), Mode::Battery, 1);
    c.sync_once().await.unwrap();
    let sinces: Vec<String> = server
        .requests_to("/v1/changes")
        .iter()
        .map(|r| r.query("since").unwrap())
        .collect();
    assert_eq!(sinces, ["40", "35"], "on from the snapshot's cursor");
    assert_eq!(c.get("todos", "gap").unwrap().unwrap().version, 38);
    assert_eq!(c.get("todos", "late").unwrap().unwrap().version, 45);
    assert_eq!(storage.meta().unwrap().cursor, Some(45));
}

/// A 409 or 410 that is not the server's verdict on the cursor (a proxy's
/// or a CDN's, without the problem type) is an error to back off from, not
/// a reason to re-read every document.
#[tokio::test]
async fn a_foreign_409_or_410_is_an_error_not_a_resync() {
    for status in [409, 410] {
        let clock = VirtualClock::new();
        let server = FakeServer::start(clock.clone(), move |_| {
            Response::new(status).body(b"<html>Gone</html>".to_vec())
        })
        .await;
        let storage = following(5);
        let c = client(&server, &clock, storage.clone(), Mode::Battery, 1);
        let err = c.sync_once().await.unwrap_err();
        assert!(
            matches!(&err, Error::Server { status: s, .. } if *s == status),
            "{status}: {err}"
        );
        assert!(
            server.requests_to("/v1/docs").is_empty(),
            "{status}: no listing"
        );
        assert!(!storage.meta().unwrap().needs_resync, "{status}: no resync");
    }
}

/// A listing's cursor is read before its page, so a document written
/// meanwhile is listed at a version past the cursor, and the feed from the
/// cursor brings that version again: the resync told of it already, and it
/// is not told twice (to subscribers or to a lossless feed).
#[tokio::test]
async fn a_document_written_during_the_listing_is_announced_once() {
    let clock = VirtualClock::new();
    let server = FakeServer::start(clock.clone(), |req| match req.path() {
        "/v1/docs" => Response::json(
            200,
            json!({"documents":[{"collection":"t","id":"x","version":12,
                "value":"new","updated_at":"2026-11-29T20:03:00.000Z"}],
                "cursor": 10}),
        ),
        "/v1/changes" => match req.query("since").as_deref() {
            Some("3") => Response::problem(410, "cursor-expired", "Cursor expired"),
            Some("10") => Response::json(
                200,
                json!({"changes":[{"seq":12,"op":"put","collection":"t","id":"x",
                    "version":12,"value":"new","ts":"2026-11-29T20:03:00.000Z"}],
                    "next":12,"head":12}),
            )
            .poll_headers(12, 10),
            _ => not_modified(req),
        },
        _ => Response::new(404),
    })
    .await;
    let storage = following_with(
        3,
        vec![DocWrite {
            collection: "t".into(),
            id: "x".into(),
            version: 2,
            value: Some(json!("old")),
            updated_at: None,
        }],
    );
    let c = client(&server, &clock, storage, Mode::Live, 5);
    let mut all = c.subscribe_all();
    let mut feed = c.changes(None);
    c.sync_once().await.unwrap();
    assert_eq!(c.get("t", "x").unwrap().unwrap().version, 12);
    assert_eq!(c.status().cursor, Some(12));
    let told: Vec<_> = std::iter::from_fn(|| all.try_recv().ok())
        .map(|e| (e.id, e.version, e.origin))
        .collect();
    assert_eq!(told, [("x".to_string(), 12, Origin::Resync)], "subscribers");
    let told: Vec<_> = std::iter::from_fn(|| feed.try_recv())
        .map(|e| (e.id, e.version, e.origin))
        .collect();
    assert_eq!(told, [("x".to_string(), 12, Origin::Resync)], "feed");
}

/// A lossless feed far behind holds back reading the changes feed, not
/// the delivery of queued mutations; once it is read, reading resumes.
#[tokio::test]
async fn a_feed_behind_holds_reading_back_but_not_writing() {
    // Sleeps past the horizon never end: only the feed's reader can
    // release the engine then.
    let clock = VirtualClock::with_horizon(HOUR);
    let n = edgesync_client::MAX_BACKLOG + 10;
    let server = FakeServer::start(clock.clone(), move |req| match req.path() {
        "/v1/docs" => {
            let docs: Vec<_> = (0..n)
                .map(|i| json!({"collection":"t","id":format!("d{i:05}"),"version":1,"value":i}))
                .collect();
            Response::json(200, json!({"documents": docs, "cursor": 10}))
        }
        "/v1/mutations" => all_applied(req, 11),
        _ => not_modified(req),
    })
    .await;
    let c = client(&server, &clock, MemoryStorage::new(), Mode::Battery, 5);
    // A lossless consumer (a log, an export) that is busy for now.
    let mut feed = c.changes(None);
    c.start();
    eventually("bootstrapped", || c.status().cursor == Some(10)).await;
    c.put("t", "mine", json!("queued")).unwrap();
    eventually("the queued put is delivered", || {
        !server.requests_to("/v1/mutations").is_empty()
    })
    .await;
    clock.wait_for_horizon().await;
    assert!(
        server.requests_to("/v1/changes").is_empty(),
        "the feed is read while the lossless feed is behind"
    );
    while feed.try_recv().is_some() {}
    eventually("reading resumes once the feed is read", || {
        !server.requests_to("/v1/changes").is_empty()
    })
    .await;
    c.stop().await;
}
