//! The entry point: one HTTP request in, one HTTP response out.

use http::{Request, Response};

use crate::config::Config;
use crate::host::Host;
use crate::kv::Kv;
pub use crate::routes::{Handled, Parked};

/// Attached to every response's extensions so hosts can log without
/// re-parsing the request: the matched route template and a short keyed
/// hash of the user id (never the token or the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// Route template such as `/v1/docs/{collection}/{id}`, or `unmatched`.
    pub route: &'static str,
    /// When authenticated, 12 hex digits of an HMAC-SHA256 of the user id
    /// under a key derived from the JWT secret.
    pub user_hash: Option<String>,
    /// Why the store failed, when the response is a 503 caused by it (for
    /// the host's logs; never sent to the client).
    pub store_error: Option<String>,
}

/// The edgesync service over a KV store and a host.
pub struct Service<K, H> {
    pub(crate) config: Config,
    pub(crate) kv: K,
    pub(crate) host: H,
    pub(crate) tokens: crate::auth::VerifiedTokens,
    /// Keys the user hash in [`RequestInfo`] (derived from the secret).
    pub(crate) log_hasher: hmac::Hmac<sha2::Sha256>,
}

impl<K: Kv, H: Host> Service<K, H> {
    /// A service with the given settings, store and host.
    pub fn new(config: Config, kv: K, host: H) -> Self {
        Self {
            log_hasher: crate::routes::log_hasher(&config.jwt_secret),
            config,
            kv,
            host,
            tokens: Default::default(),
        }
    }

    /// The settings this service runs with (hosts read `max_body_bytes` to
    /// stop reading oversized bodies early).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store this service runs on.
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// The host this service runs on.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// Answer one request. Never panics and never returns a 5xx because of
    /// anything the client sent; a body longer than `max_body_bytes` is
    /// answered with 413 (hosts may truncate the body they pass in to
    /// `max_body_bytes + 1` bytes).
    pub async fn handle(&self, request: Request<Vec<u8>>) -> Response<Vec<u8>> {
        crate::routes::handle(self, request).await
    }

    /// The first step of [`Service::handle`], for hosts that hold many
    /// long-polls and would rather not keep a future alive for each: the
    /// answer, or a [`Parked`] long-poll. To finish a parked one, loop:
    /// register for changes on [`Parked::topic`] (as
    /// [`Host::wait_for_change`] does), call [`Service::resume`], and if it
    /// answers `None`, wait for the change or [`Parked::deadline_millis`].
    pub async fn start(&self, request: Request<Vec<u8>>) -> Handled {
        crate::routes::start(self, request).await
    }

    /// Check a parked long-poll again: its answer, or `None` while there is
    /// nothing to report and time left (see [`Service::start`]).
    pub async fn resume(&self, parked: &Parked) -> Option<Response<Vec<u8>>> {
        crate::routes::resume(self, parked).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvError;

    struct NoKv;
    impl Kv for NoKv {
        async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, KvError> {
            Ok(None)
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
            Ok(vec![None; keys.len()])
        }
        async fn set(&self, _: &str, _: &[u8]) -> Result<(), KvError> {
            Ok(())
        }
        async fn delete_many(&self, _: &[String]) -> Result<(), KvError> {
            Ok(())
        }
        async fn compare_and_swap(&self, _: &str, _: &[u8], _: &[u8]) -> Result<bool, KvError> {
            Ok(false)
        }
        async fn increment(&self, _: &str, _: i64) -> Result<i64, KvError> {
            Ok(0)
        }
    }
    struct NoHost;
    impl Host for NoHost {
        fn now_millis(&self) -> u64 {
            0
        }
        fn random_u64(&self) -> u64 {
            4
        }
        async fn wait_for_change(&self, _: &str, _: u64) {}
        fn log_changed(&self, _: &str, _: u64) {}
    }

    /// Native hosts spawn one task per connection, which needs the
    /// request future to be `Send` whenever the store and host are.
    #[test]
    fn handling_a_request_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let service = Service::new(Config::with_secret(vec![0; 32]), NoKv, NoHost);
        let future = service.handle(Request::new(Vec::new()));
        assert_send(&future);
    }
}
