//! # edgesync-e2e: the v1 HTTP contract as an executable specification
//!
//! This crate is the end-to-end suite for edgesync. Every case is an
//! `async fn(&Target) -> anyhow::Result<()>` that talks plain HTTP (and, where
//! exact bytes matter, raw TCP) to a running server and checks one part of
//! the contract in `DESIGN.md` and `docs/protocol-decisions.md`: statuses,
//! headers, bodies, and — after every refused request — that no data changed.
//! Assertion failures panic with a message naming the request, what the
//! contract says and what the server answered.
//!
//! The suite knows nothing about the server under test except its base URL,
//! its JWT secret (to mint tokens with [`edgesync_core::auth::mint`]) and the
//! settings it was started with ([`TargetSettings`]). So the same cases run
//! against the native server (`tests/native_e2e.rs`), the Spin components in
//! the wasmtime harness (`tests/spin_e2e.rs`) and any deployment.
//!
//! Every case uses fresh random user ids, so cases are independent and may
//! run concurrently against one shared server.
//!
//! ## Pointing the suite at any server
//!
//! The quickest way is the crate's binary, which runs every case that the
//! given settings allow (several at a time) and prints
//! `N passed, N failed, N skipped`:
//!
//! ```text
//! cargo run -p edgesync-e2e -- --url https://sync.example.com --secret "$JWT_SECRET" \
//!     --max-wait-seconds 25 --retention-entries 10000 --rate-limit-per-second 20 \
//!     --max-body-bytes 262144 --max-key-bytes 256 --cors-origins https://app.example.com
//! ```
//!
//! The settings flags must state what the server runs with (a Spin
//! deployment: `--max-key-bytes 256` unless its manifest says otherwise).
//! Cases that need other settings (a small `retention_entries` to see
//! compaction, a low rate limit to see 429, CORS origins, a short
//! `max_wait_seconds`, a key limit, or none for 128-character names) are
//! reported as skipped, with what they need.
//!
//! Or write a test file (in any crate that depends on `edgesync-e2e` and
//! `tokio`) with a function that returns the target for a case, and let
//! [`e2e_tests!`] generate one `#[tokio::test]` per case:
//!
//! ```no_run
//! use edgesync_e2e::{Case, Target, TargetSettings};
//! use std::sync::OnceLock;
//!
//! fn target(_case: &'static Case) -> &'static Target {
//!     static T: OnceLock<Target> = OnceLock::new();
//!     T.get_or_init(|| Target {
//!         base_url: std::env::var("EDGESYNC_E2E_URL").unwrap(),
//!         jwt_secret: std::env::var("EDGESYNC_E2E_SECRET").unwrap().into_bytes(),
//!         settings: TargetSettings {
//!             max_wait_seconds: 4,
//!             ..TargetSettings::default()
//!         },
//!     })
//! }
//!
//! # mod m {
//! # use super::*;
//! edgesync_e2e::e2e_tests!(target);
//! # }
//! # fn main() {}
//! ```
//!
//! The picker may also be an `async fn(&'static Case) -> &'static Target`
//! (wrap it as `e2e_tests!(async picker)`). Each case states what it needs
//! from the server's settings ([`Requires`]): a small `retention_entries` to
//! see compaction, a low `rate_limit_per_second` to see 429, a CORS origin
//! list, a small `max_wait_seconds` for long-polls. A picker can use
//! [`Case::fits`] to choose among several servers; a case run against a
//! target that does not fit fails with a message saying what it needs (the
//! suite never skips silently).
//!
//! Or run a single case by hand: `edgesync_e2e::run(case, &target).await`.

#![warn(missing_docs)]

use std::future::Future;
use std::pin::Pin;

pub mod cases;
pub mod client;
pub mod token;

pub use client::{Resp, User};

/// A server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8787`
    /// (a path prefix such as `https://host/edge` is allowed: routes are
    /// appended to it).
    pub base_url: String,
    /// The HS256 secret the server verifies tokens with.
    pub jwt_secret: Vec<u8>,
    /// What the server was started with.
    pub settings: TargetSettings,
}

/// The settings the server under test was started with (the names are the
/// configuration names of DESIGN.md, "Configuration names").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSettings {
    /// `max_wait_seconds`: longest long-poll hold.
    pub max_wait_seconds: u64,
    /// `poll_interval_seconds`: the `X-Poll-Interval` advice.
    pub poll_interval_seconds: u64,
    /// `retention_entries`: log entries kept behind the head.
    pub retention_entries: u64,
    /// `rate_limit_per_second`: sustained mutations per second per user
    /// (0 = unlimited).
    pub rate_limit_per_second: u64,
    /// `max_body_bytes`: largest accepted request body.
    pub max_body_bytes: usize,
    /// `max_key_bytes`: longest KV key the store takes (0 = no limit).
    pub max_key_bytes: usize,
    /// `cors_origins`: allowed origins; `["*"]` for any, empty for none.
    pub cors_origins: Vec<String>,
    /// `jwt_audience`: the `aud` every token must carry (`None`: tokens must
    /// carry none).
    pub jwt_audience: Option<String>,
    /// `jwt_issuer`: the `iss` every token must carry (`None`: not checked).
    pub jwt_issuer: Option<String>,
}

impl Default for TargetSettings {
    /// The defaults of `edgesync_core::Config`.
    fn default() -> Self {
        let c = edgesync_core::Config::with_secret(Vec::new());
        Self {
            max_wait_seconds: c.max_wait_seconds,
            poll_interval_seconds: c.poll_interval_seconds,
            retention_entries: c.retention_entries,
            rate_limit_per_second: c.rate_limit_per_second,
            max_body_bytes: c.max_body_bytes,
            max_key_bytes: c.max_key_bytes,
            cors_origins: Vec::new(),
            jwt_audience: c.jwt_audience,
            jwt_issuer: c.jwt_issuer,
        }
    }
}

impl TargetSettings {
    /// Largest burst of mutations per user (docs/protocol-decisions.md,
    /// "Rate limit": `max(5 × rate, 100)`), `None` when unlimited.
    pub fn burst(&self) -> Option<u64> {
        (self.rate_limit_per_second > 0).then(|| (self.rate_limit_per_second * 5).max(100))
    }

    /// The environment a native `edgesync serve` needs to run with these
    /// settings (`EDGESYNC_*`), without the secret.
    pub fn env(&self) -> Vec<(String, String)> {
        self.variables()
            .into_iter()
            .map(|(k, v)| (format!("EDGESYNC_{}", k.to_uppercase()), v))
            .collect()
    }

    /// The same settings as Spin variables (`max_wait_seconds=...`),
    /// without the secret.
    pub fn variables(&self) -> Vec<(String, String)> {
        let claims = [
            ("jwt_audience", &self.jwt_audience),
            ("jwt_issuer", &self.jwt_issuer),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.clone()?)));
        [
            ("max_wait_seconds".into(), self.max_wait_seconds.to_string()),
            (
                "poll_interval_seconds".into(),
                self.poll_interval_seconds.to_string(),
            ),
            (
                "retention_entries".into(),
                self.retention_entries.to_string(),
            ),
            (
                "rate_limit_per_second".into(),
                self.rate_limit_per_second.to_string(),
            ),
            ("max_body_bytes".into(), self.max_body_bytes.to_string()),
            ("max_key_bytes".into(), self.max_key_bytes.to_string()),
            ("cors_origins".into(), self.cors_origins.join(",")),
        ]
        .into_iter()
        .chain(claims)
        .collect()
    }
}

/// What a case needs from the target's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requires {
    /// Mutations the case makes for one user in a quick burst; the target's
    /// rate limit must allow them (unlimited, or burst ≥ this).
    pub writes_per_user: u64,
    /// `retention_entries` small enough (≤ 64) to compact the log within a
    /// burst of writes.
    pub small_retention: bool,
    /// A rate limit low enough to hit (1..=100 per second).
    pub rate_limit: bool,
    /// An explicit CORS origin list (not empty, not `*`).
    pub cors_list: bool,
    /// CORS enabled at all (a list or `*`).
    pub cors: bool,
    /// Long-polls allowed and short: `max_wait_seconds` in 2..=10.
    pub long_poll: bool,
    /// A required audience and issuer (`jwt_audience`, `jwt_issuer`).
    pub jwt_claims: bool,
    /// Keys of 128-character names and 255-character idempotency keys fit
    /// the store: `max_key_bytes` 0 (no limit) or at least 1024.
    pub long_keys: bool,
    /// A key limit names can reach: `max_key_bytes` in 64..=256.
    pub key_limit: bool,
}

impl Requires {
    /// A case that makes at most a handful of writes per user.
    pub const BASIC: Requires = Requires {
        writes_per_user: 20,
        small_retention: false,
        rate_limit: false,
        cors_list: false,
        cors: false,
        long_poll: false,
        jwt_claims: false,
        long_keys: false,
        key_limit: false,
    };

    /// Why `settings` cannot run a case with these requirements, if they
    /// cannot.
    pub fn check(&self, s: &TargetSettings) -> Result<(), String> {
        let mut missing = Vec::new();
        if let Some(burst) = s.burst() {
            if self.writes_per_user > burst {
                missing.push(format!(
                    "a rate limit whose burst allows {} quick writes per user (rate_limit_per_second = {} allows {burst}; use 0 or ≥ {})",
                    self.writes_per_user,
                    s.rate_limit_per_second,
                    self.writes_per_user.div_ceil(5)
                ));
            }
        }
        if self.small_retention {
            if s.retention_entries > 64 {
                missing.push(format!(
                    "retention_entries ≤ 64 to see compaction (target has {})",
                    s.retention_entries
                ));
            }
            if let Some(burst) = s.burst() {
                if 4 * s.retention_entries + 8 > burst {
                    missing.push(format!(
                        "a rate-limit burst ≥ {} to compact quickly (target has {burst})",
                        4 * s.retention_entries + 8
                    ));
                }
            }
        }
        if self.rate_limit && !(1..=100).contains(&s.rate_limit_per_second) {
            missing.push(format!(
                "rate_limit_per_second in 1..=100 to see 429 (target has {})",
                s.rate_limit_per_second
            ));
        }
        if self.cors_list && (s.cors_origins.is_empty() || s.cors_origins.iter().any(|o| o == "*"))
        {
            missing.push(format!(
                "an explicit cors_origins list without `*` (target has {:?})",
                s.cors_origins
            ));
        }
        if self.cors && s.cors_origins.is_empty() {
            missing.push("cors_origins set (target has none)".to_string());
        }
        if self.long_poll && !(2..=10).contains(&s.max_wait_seconds) {
            missing.push(format!(
                "max_wait_seconds in 2..=10 to exercise long-polls quickly (target has {})",
                s.max_wait_seconds
            ));
        }
        if self.jwt_claims && (s.jwt_audience.is_none() || s.jwt_issuer.is_none()) {
            missing.push("jwt_audience and jwt_issuer set (target lacks one)".to_string());
        }
        let limit = s.max_key_bytes;
        if self.long_keys && (1..1024).contains(&limit) {
            missing.push(format!(
                "max_key_bytes 0 or ≥ 1024 for keys of 128-character names (target has {limit})"
            ));
        }
        if self.key_limit && !(64..=256).contains(&limit) {
            missing.push(format!(
                "max_key_bytes in 64..=256 to see 400 key-too-long (target has {limit})"
            ));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

/// The future a case returns.
pub type CaseFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// One end-to-end case.
pub struct Case {
    /// The case's name (also the name of its `async fn` in [`cases`]).
    pub name: &'static str,
    /// What it needs from the target's settings.
    pub requires: Requires,
    /// Runs it.
    pub run: for<'a> fn(&'a Target) -> CaseFuture<'a>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("requires", &self.requires)
            .finish()
    }
}

impl Case {
    /// Whether `target` was started with settings this case can run on.
    pub fn fits(&self, target: &Target) -> bool {
        self.requires.check(&target.settings).is_ok()
    }
}

/// The case named `name`.
///
/// # Panics
/// If there is no such case.
pub fn case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no e2e case named {name}"))
}

/// Run `case` against `target`: fails (with what is missing) if the target's
/// settings do not fit the case, and fails if the case fails.
pub async fn run(case: &Case, target: &Target) -> anyhow::Result<()> {
    if let Err(missing) = case.requires.check(&target.settings) {
        anyhow::bail!(
            "case `{}` cannot run against {}: it needs {missing}",
            case.name,
            target.base_url
        );
    }
    (case.run)(target).await
}

macro_rules! registry {
    ($d:tt; $( $module:ident :: $name:ident => $req:expr ),* $(,)?) => {
        /// Every case of the suite, in a stable order.
        pub const CASES: &[Case] = &[
            $(
                Case {
                    name: stringify!($name),
                    requires: $req,
                    run: {
                        fn run(t: &Target) -> CaseFuture<'_> {
                            Box::pin(cases::$module::$name(t))
                        }
                        run
                    },
                },
            )*
        ];

        /// Generate one `#[tokio::test]` per case of [`CASES`].
        ///
        /// `e2e_tests!(pick)` with `fn pick(&'static Case) -> &'static Target`,
        /// or `e2e_tests!(async pick)` with an `async fn` of the same shape.
        /// Also generates `e2e_case_list_is_complete`, which fails if the
        /// generated list and [`CASES`] ever disagree.
        #[macro_export]
        macro_rules! e2e_tests {
            (@complete) => {
                #[test]
                fn e2e_case_list_is_complete() {
                    let generated: &[&str] = &[$(stringify!($name)),*];
                    let all: Vec<&str> = $d crate::CASES.iter().map(|c| c.name).collect();
                    assert_eq!(generated, all.as_slice());
                }
            };
            (async $d pick:path) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let case = $d crate::case(stringify!($name));
                        let target = $d pick(case).await;
                        if let Err(e) = $d crate::run(case, target).await {
                            panic!("e2e case `{}` against {} failed: {e:?}", case.name, target.base_url);
                        }
                    }
                )*
                $d crate::e2e_tests!(@complete);
            };
            ($d pick:path) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let case = $d crate::case(stringify!($name));
                        let target = $d pick(case);
                        if let Err(e) = $d crate::run(case, target).await {
                            panic!("e2e case `{}` against {} failed: {e:?}", case.name, target.base_url);
                        }
                    }
                )*
                $d crate::e2e_tests!(@complete);
            };
        }
    };
}

/// Shorthand for [`Requires`] values in the registry.
const fn writes(n: u64) -> Requires {
    Requires {
        writes_per_user: n,
        ..Requires::BASIC
    }
}
const BASIC: Requires = Requires::BASIC;
const LONG_POLL: Requires = Requires {
    long_poll: true,
    ..Requires::BASIC
};
const LONG_KEYS: Requires = Requires {
    long_keys: true,
    ..Requires::BASIC
};

registry! { $;
    // Health, routing, methods.
    general::health_needs_no_auth => BASIC,
    general::unknown_routes_are_404 => BASIC,
    general::wrong_methods_are_405_with_allow => BASIC,
    general::options_answers_204_with_allow => BASIC,
    general::head_mirrors_get => BASIC,
    general::repeated_query_parameters_are_400_everywhere => BASIC,
    // Authentication.
    auth::missing_token_is_401_on_every_route => BASIC,
    auth::malformed_tokens_are_401 => BASIC,
    auth::wrong_signature_is_401 => BASIC,
    auth::expired_and_not_yet_valid_tokens_are_401 => BASIC,
    auth::alg_none_and_other_algorithms_are_401 => BASIC,
    auth::tokens_without_exp_or_sub_are_401 => BASIC,
    auth::audience_and_issuer_are_enforced => Requires { jwt_claims: true, ..BASIC },
    // Documents.
    documents::put_creates_201_then_replaces_200 => BASIC,
    documents::put_accepts_any_json_value => LONG_KEYS,
    documents::put_recreates_deleted_document_with_201 => BASIC,
    documents::get_has_etag_and_cache_control => BASIC,
    documents::escaped_unreserved_characters_name_the_same_document => BASIC,
    documents::get_if_none_match_is_304 => BASIC,
    documents::patch_applies_json_merge_patch => BASIC,
    documents::patch_absent_document_is_404 => BASIC,
    documents::delete_is_204_then_404 => BASIC,
    documents::content_types_are_enforced_with_415 => BASIC,
    // Preconditions.
    preconditions::if_match_is_strong => BASIC,
    preconditions::if_match_star_and_absent_documents => BASIC,
    preconditions::if_none_match_star_creates_only => BASIC,
    preconditions::patch_and_delete_honour_if_match => BASIC,
    preconditions::malformed_precondition_headers_are_400 => BASIC,
    preconditions::empty_if_none_match_matches_nothing => BASIC,
    preconditions::tags_compare_as_strings_and_reads_honour_if_match => BASIC,
    // Idempotency.
    idempotency::put_replay_returns_first_result => BASIC,
    idempotency::patch_and_delete_replays => BASIC,
    idempotency::key_reuse_with_other_request_is_422 => BASIC,
    idempotency::bad_keys_are_400 => LONG_KEYS,
    idempotency::keys_are_per_user => BASIC,
    // Changes feed.
    changes::entries_have_the_contract_shape => BASIC,
    changes::paging_with_limit_and_next => writes(110),
    changes::bad_parameters_are_400 => BASIC,
    changes::cursor_ahead_is_409 => BASIC,
    changes::compaction_expires_old_cursors_with_410 => Requires { small_retention: true, ..BASIC },
    changes::if_none_match_is_304_when_nothing_changed => BASIC,
    changes::prefer_wait_is_applied => LONG_POLL,
    // Long-poll.
    longpoll::held_request_returns_early_with_the_change => LONG_POLL,
    longpoll::every_waiter_is_woken => LONG_POLL,
    longpoll::other_users_writes_do_not_leak => LONG_POLL,
    longpoll::timeout_answers_empty_or_304 => LONG_POLL,
    longpoll::wait_above_max_is_clamped => LONG_POLL,
    // Head.
    head::head_reports_seq_with_etag_and_304 => BASIC,
    // Listing.
    listing::listing_is_ordered_and_filtered => BASIC,
    listing::listing_pages_with_after => BASIC,
    listing::listing_bad_parameters_are_400 => BASIC,
    listing::snapshot_plus_changes_converges_under_concurrent_writes => writes(90),
    // Batches.
    mutations::batch_applies_items_in_order => BASIC,
    mutations::batch_items_fail_independently => BASIC,
    mutations::batch_items_replay_individually => BASIC,
    mutations::oversized_or_empty_batches_are_400 => writes(101),
    mutations::invalid_item_rejects_whole_batch => BASIC,
    mutations::batch_input_errors => BASIC,
    // Isolation.
    isolation::users_cannot_see_each_other => BASIC,
    isolation::hostile_subs_are_just_names => BASIC,
    // Bad input.
    input::bad_names_are_400 => LONG_KEYS,
    input::bad_json_is_400 => BASIC,
    input::values_nested_too_deep_are_400 => BASIC,
    input::oversized_bodies_are_413 => BASIC,
    input::documents_cannot_outgrow_the_body_limit => BASIC,
    input::content_length_games_change_nothing => BASIC,
    // Limits.
    limits::rate_limit_is_429_with_retry_after => Requires { rate_limit: true, ..BASIC },
    limits::keys_too_long_for_the_store_are_400 => Requires { key_limit: true, ..BASIC },
    // CORS.
    cors::preflight_needs_no_token => Requires { cors: true, ..BASIC },
    cors::allowed_origin_gets_exposed_headers => Requires { cors: true, ..BASIC },
    cors::disallowed_origin_gets_no_cors_headers => Requires { cors_list: true, ..BASIC },
    // Concurrency.
    concurrency::concurrent_if_match_exactly_one_wins => BASIC,
    concurrency::concurrent_creates_exactly_one_wins => BASIC,
    concurrency::concurrent_writers_are_logged_exactly_once => writes(48),
    concurrency::concurrent_idempotent_retries_log_once => BASIC,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate case names");
    }

    #[test]
    fn requirements_explain_what_is_missing() {
        let defaults = TargetSettings::default();
        let compaction = case("compaction_expires_old_cursors_with_410");
        let why = compaction.requires.check(&defaults).unwrap_err();
        assert!(why.contains("retention_entries"), "{why}");
        let small = TargetSettings {
            retention_entries: 16,
            rate_limit_per_second: 0,
            ..defaults.clone()
        };
        assert!(compaction.requires.check(&small).is_ok());
        let paging = case("paging_with_limit_and_next");
        assert!(
            paging.requires.check(&defaults).is_err(),
            "110 writes exceed the default burst of 100"
        );
        assert!(case("health_needs_no_auth")
            .requires
            .check(&defaults)
            .is_ok());
    }

    #[test]
    fn settings_become_env_and_variables() {
        let s = TargetSettings {
            cors_origins: vec!["https://a".into(), "https://b".into()],
            ..TargetSettings::default()
        };
        let env = s.env();
        assert!(env.contains(&("EDGESYNC_MAX_WAIT_SECONDS".into(), "25".into())));
        assert!(env.contains(&("EDGESYNC_CORS_ORIGINS".into(), "https://a,https://b".into())));
        assert!(s
            .variables()
            .contains(&("max_body_bytes".into(), "262144".into())));
        assert!(!s.variables().iter().any(|(k, _)| k == "jwt_audience"));
        let claims = TargetSettings {
            jwt_audience: Some("app".into()),
            ..s
        };
        assert!(claims
            .env()
            .contains(&("EDGESYNC_JWT_AUDIENCE".into(), "app".into())));
    }
}
