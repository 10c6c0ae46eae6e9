//! Driving the core directly, without the scheduler, for tests that send it
//! one request at a time (the hostile-input property test, the KV cost
//! table, the stores' conformance).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use edgesync_core::Host;

/// Run `f` to completion on this thread. The simulated stores only ever
/// yield once and wake themselves, and [`DirectHost`] never parks, so
/// polling in a loop is a complete executor for them.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A host whose clock stands still until a long-poll waits, which moves it
/// to the wait's deadline at once (so a held request ends without real
/// time passing), and whose ids are distinct and deterministic.
pub struct DirectHost {
    now: AtomicU64,
    seed: AtomicU64,
}

impl DirectHost {
    /// A host whose clock reads `now_millis`.
    pub fn new(now_millis: u64) -> Self {
        Self {
            now: AtomicU64::new(now_millis),
            seed: AtomicU64::new(1),
        }
    }

    /// Set the clock, backwards too (as an NTP step or an operator can).
    pub fn set_now(&self, now_millis: u64) {
        self.now.store(now_millis, Ordering::SeqCst);
    }
}

impl Host for DirectHost {
    fn now_millis(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
    fn random_u64(&self) -> u64 {
        self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
    }
    async fn wait_for_change(&self, _: &str, deadline_millis: u64) {
        self.now.fetch_max(deadline_millis, Ordering::SeqCst);
    }
    /// Its wait jumps the clock to the deadline: nothing runs meanwhile that
    /// could wake it early, as on a Spin host.
    fn wakes_early(&self) -> bool {
        false
    }
    fn log_changed(&self, _: &str, _: u64) {}
}

/// One user's view of a [`Service`](edgesync_core::Service) driven with
/// [`block_on`]: JSON in, status and JSON out.
pub struct Api<K: edgesync_core::Kv> {
    /// The service under test.
    pub service: edgesync_core::Service<K, DirectHost>,
    token: String,
}

/// What [`Api::call`] got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body as JSON (`null` when empty).
    pub body: serde_json::Value,
}

/// The HS256 secret of every [`Api`].
const API_SECRET: &[u8] = b"edgesync-sim-direct-api-secret-0123456789";

impl<K: edgesync_core::Kv> Api<K> {
    /// `user`'s view of a service on `kv` with `config` (its secret is
    /// replaced by the one the token is signed with), with the clock at
    /// `now_millis`.
    pub fn new(mut config: edgesync_core::Config, kv: K, now_millis: u64, user: &str) -> Self {
        config.jwt_secret = API_SECRET.to_vec();
        let expect = edgesync_core::auth::Expectations {
            secret: API_SECRET,
            audience: config.jwt_audience.as_deref(),
            issuer: config.jwt_issuer.as_deref(),
        };
        let token = edgesync_core::auth::mint(&expect, user, now_millis / 1000, 3600);
        Self {
            service: edgesync_core::Service::new(config, kv, DirectHost::new(now_millis)),
            token,
        }
    }

    /// `method uri` with `body` as `application/json` (`PATCH`:
    /// `application/merge-patch+json`).
    pub fn call(&self, method: &str, uri: &str, body: Option<&serde_json::Value>) -> Answer {
        let response = block_on(self.service.handle(self.request(method, uri, body)));
        Answer {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: if response.body().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(response.body()).expect("a JSON body")
            },
        }
    }

    /// The request [`Api::call`] sends, for tests that drive the service
    /// step by step ([`edgesync_core::Service::start`]).
    pub fn request(
        &self,
        method: &str,
        uri: &str,
        body: Option<&serde_json::Value>,
    ) -> http::Request<Vec<u8>> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            let content_type = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            request = request.header("content-type", content_type);
        }
        let body = body.map_or_else(Vec::new, |b| serde_json::to_vec(b).expect("JSON"));
        request.body(body).expect("a request")
    }

    /// The user's head (`GET /v1/head` must answer 200).
    pub fn head(&self) -> u64 {
        let a = self.call("GET", "/v1/head", None);
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["head"].as_u64().expect("a head")
    }
}
