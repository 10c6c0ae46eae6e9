//! Whatever a client sends, the core answers without panicking, never with
//! a 5xx, always with problem+json for errors, and a refused request
//! changes nothing. Requests are generated from pieces that are close to
//! valid (right routes, wrong everything else) so that they reach deep into
//! the handlers instead of all stopping at the router.

use edgesync_core::auth::{mint, Expectations};
use edgesync_core::{Config, Service};
use edgesync_sim::direct::{block_on, DirectHost};
use edgesync_sim::store::{MemStore, StrictKv};
use http::Request;
use proptest::prelude::*;

const SECRET: &[u8] = b"hostile-requests-secret-hostile-requests";
const NOW: u64 = 1_800_000_000_000;

fn token() -> String {
    let expect = Expectations {
        secret: SECRET,
        audience: None,
        issuer: None,
    };
    mint(&expect, "mallory", NOW / 1000, 3600)
}

fn arb_method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "HEAD", "PUT", "PATCH", "DELETE", "POST", "OPTIONS", "TRACE", "CONNECT", "BREW",
    ])
}

fn arb_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("todos".to_string()),
        Just("a1".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just(String::new()),
        Just("%2F".to_string()),
        Just("a%20b".to_string()),
        Just("x".repeat(129)),
        "[A-Za-z0-9._~%-]{1,12}",
    ]
}

fn arb_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v1/health".to_string()),
        Just("/v1/head".to_string()),
        Just("/v1/changes".to_string()),
        Just("/v1/docs".to_string()),
        Just("/v1/mutations".to_string()),
        (arb_segment(), arb_segment()).prop_map(|(c, i)| format!("/v1/docs/{c}/{i}")),
        (arb_segment(), arb_segment(), arb_segment())
            .prop_map(|(a, b, c)| format!("/v1/docs/{a}/{b}/{c}")),
        "/[a-z0-9/]{0,20}",
    ]
}

fn arb_query() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("".to_string()),
        Just("18446744073709551615".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("%ZZ".to_string()),
        Just("todos%2Fa1".to_string()),
        "[a-z0-9%/]{0,8}",
    ];
    let name = prop::sample::select(vec!["since", "limit", "wait", "collection", "after", "x"]);
    prop::collection::vec((name, value), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(br#"{"a":1}"#.to_vec()),
        Just(br#"{"a":"#.to_vec()),
        Just(b"null".to_vec()),
        Just(br#"{"mutations":[]}"#.to_vec()),
        Just(
            br#"{"mutations":[{"id":"k","op":"put","collection":"c","doc":"d","value":1}]}"#
                .to_vec()
        ),
        Just(br#"[{"id":"k","op":"zap","collection":"c","doc":"d"}]"#.to_vec()),
        Just(
            br#"{"mutations":[{"id":"","op":"put","collection":"..","doc":"d","value":1}]}"#
                .to_vec()
        ),
        Just(vec![0xff, 0xfe, 0x00]),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn arb_headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let header = prop_oneof![
        prop::sample::select(vec![
            "application/json",
            "application/merge-patch+json",
            "text/plain",
            "",
            "APPLICATION/JSON; charset=utf-8"
        ])
        .prop_map(|v| ("content-type", v.to_string())),
        prop::sample::select(vec!["*", "\"1\"", "W/\"1\"", "1", "\"", "\"a\", \"2\""])
            .prop_map(|v| ("if-match", v.to_string())),
        prop::sample::select(vec!["*", "\"0\"", "W/\"0\"", "0", "\"x"])
            .prop_map(|v| ("if-none-match", v.to_string())),
        prop::sample::select(vec!["k1", "", "has space", "ü"])
            .prop_map(|v| ("idempotency-key", v.to_string())),
        prop::sample::select(vec!["wait=1", "wait=soon", "wait", "respond-async"])
            .prop_map(|v| ("prefer", v.to_string())),
        prop::sample::select(vec!["https://a.example", "null"])
            .prop_map(|v| ("origin", v.to_string())),
        prop::sample::select(vec!["Bearer x.y.z", "Basic abc", "Bearer"])
            .prop_map(|v| ("authorization", v.to_string())),
    ];
    prop::collection::vec(header, 0..4)
}

fn head_of(service: &Service<StrictKv, DirectHost>, token: &str) -> u64 {
    let request = Request::get("/v1/head")
        .header("authorization", format!("Bearer {token}"))
        .body(Vec::new())
        .unwrap();
    let response = block_on(service.handle(request));
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    body["head"].as_u64().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn hostile_requests_get_4xx_problems_and_change_nothing(
        method in arb_method(),
        path in arb_path(),
        query in arb_query(),
        headers in arb_headers(),
        body in arb_body(),
        authenticated in any::<bool>(),
    ) {
        let mut config = Config::with_secret(SECRET.to_vec());
        config.max_body_bytes = 48;
        config.cors_origins = edgesync_core::CorsOrigins::Any;
        let host = DirectHost::new(NOW);
        let service = Service::new(config, StrictKv::new(MemStore::new()), host);
        let token = token();
        let before = head_of(&service, &token);

        let uri = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let Ok(mut builder) = http::Method::from_bytes(method.as_bytes()).map(|m| Request::builder().method(m).uri(uri.as_str())) else {
            return Ok(());
        };
        if authenticated {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in &headers {
            builder = builder.header(*name, value.as_str());
        }
        let Ok(request) = builder.body(body.clone()) else {
            return Ok(()); // not even a valid HTTP request
        };
        let response = block_on(service.handle(request));
        let status = response.status().as_u16();
        prop_assert!(status < 500, "{method} {uri} {headers:?} answered {status}: {}", String::from_utf8_lossy(response.body()));
        if status >= 400 && method != "HEAD" {
            prop_assert_eq!(
                response.headers().get("content-type").map(|v| v.to_str().unwrap()),
                Some("application/problem+json"),
                "{} {} answered {} without problem+json", method, uri, status
            );
            let problem: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            for member in ["type", "title", "status", "detail"] {
                prop_assert!(problem.get(member).is_some(), "problem without {member}: {problem}");
            }
            prop_assert_eq!(head_of(&service, &token), before, "a refused request changed the log");
        }
    }
}
