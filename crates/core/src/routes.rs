//! Routing and the HTTP face of every route.

use hmac::{Hmac, Mac};
use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, LOCATION, ORIGIN, VARY,
};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::auth::{self, Expectations};
use crate::config::CorsOrigins;
use crate::engine::{Action, ChangesPage, Cond, Conditions, KeyUse, Log, Mutation, Outcome};
use crate::entry::Entry;
use crate::host::Host;
use crate::http_util::{
    media_type, normalize_segment, parse_etag_list, parse_u64, parse_version_tag, prefer_wait,
    query_params, single_field, ETagList, Query, QueryError,
};
use crate::kv::Kv;
use crate::names::{is_valid_idempotency_key, is_valid_name};
use crate::problem::{Failure, Problem};
use crate::service::{RequestInfo, Service};
use crate::strict_json;

const MAX_LIMIT: u64 = 1000;
const DEFAULT_LIMIT: u64 = 100;
const MAX_BATCH: usize = 100;

/// How deeply a document value or merge patch may nest arrays and objects.
/// The store wraps a value in a few more levels, and every reader (this
/// core, serde_json clients, browsers) refuses to parse beyond 128: a value
/// accepted near that limit would be written and then be unreadable, and
/// with it the user's log.
pub(crate) const MAX_VALUE_DEPTH: usize = 64;
const EXPOSED_HEADERS: &str = "ETag, X-Poll-Interval, Retry-After, Location, \
    Idempotent-Replayed, Preference-Applied, WWW-Authenticate, Accept-Patch";
const ALLOWED_REQUEST_HEADERS: &str =
    "Authorization, Content-Type, If-Match, If-None-Match, Idempotency-Key, Prefer";
const X_POLL_INTERVAL: HeaderName = HeaderName::from_static("x-poll-interval");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
const ACCEPT_PATCH: HeaderName = HeaderName::from_static("accept-patch");
const MERGE_PATCH: &str = "application/merge-patch+json";

/// The routes, as matched.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Health,
    Head,
    Changes,
    List,
    Doc { collection: String, id: String },
    Mutations,
}

impl Route {
    fn template(&self) -> &'static str {
        match self {
            Route::Health => "/v1/health",
            Route::Head => "/v1/head",
            Route::Changes => "/v1/changes",
            Route::List => "/v1/docs",
            Route::Doc { .. } => "/v1/docs/{collection}/{id}",
            Route::Mutations => "/v1/mutations",
        }
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Doc { .. } => &[
                Method::GET,
                Method::HEAD,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ],
            Route::Mutations => &[Method::POST, Method::OPTIONS],
            _ => &[Method::GET, Method::HEAD, Method::OPTIONS],
        }
    }

    fn allow(&self) -> String {
        self.methods()
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn match_route(path: &str) -> Option<Route> {
    match path {
        "/v1/health" => return Some(Route::Health),
        "/v1/head" => return Some(Route::Head),
        "/v1/changes" => return Some(Route::Changes),
        "/v1/docs" => return Some(Route::List),
        "/v1/mutations" => return Some(Route::Mutations),
        _ => {}
    }
    let rest = path.strip_prefix("/v1/docs/")?;
    let (collection, id) = rest.split_once('/')?;
    if id.contains('/') {
        return None;
    }
    Some(Route::Doc {
        collection: normalize_segment(collection).into_owned(),
        id: normalize_segment(id).into_owned(),
    })
}

/// What the last steps of answering need to know about the request.
#[derive(Debug, Clone)]
struct Finish {
    route: &'static str,
    user_hash: Option<String>,
    cors_origin: Option<HeaderValue>,
    is_head: bool,
}

/// A long-poll parked until its user's log changes or its deadline passes
/// (see [`crate::Service::start`]). Holds only what answering it needs, so a
/// host can keep thousands cheaply.
#[derive(Debug, Clone)]
pub struct Parked {
    finish: Finish,
    user: String,
    topic: String,
    waiting: ChangesWait,
}

impl Parked {
    /// The topic to wait on (see [`Host::wait_for_change`]).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// When the long-poll must be answered, wall-clock ms.
    pub fn deadline_millis(&self) -> u64 {
        self.waiting.deadline
    }

    /// What a host logs about this request should it end unanswered (its
    /// client gone): its route and user hash.
    pub fn info(&self) -> crate::RequestInfo {
        crate::RequestInfo {
            route: self.finish.route,
            user_hash: self.finish.user_hash.clone(),
            store_error: None,
        }
    }
}

/// The first step of answering a request.
#[derive(Debug)]
pub enum Handled {
    /// The answer.
    Done(Response<Vec<u8>>),
    /// A long-poll with nothing to report yet: register for changes on
    /// [`Parked::topic`], then call [`crate::Service::resume`] until it answers.
    Parked(Parked),
}

enum Dispatched {
    Respond(Result<Response<Vec<u8>>, Failure>),
    Wait { user: String, waiting: ChangesWait },
}

pub(crate) async fn handle<K: Kv, H: Host>(
    service: &Service<K, H>,
    request: Request<Vec<u8>>,
) -> Response<Vec<u8>> {
    let parked = match start(service, request).await {
        Handled::Done(response) => return response,
        Handled::Parked(parked) => parked,
    };
    // `start` has just read the store: a host that only sleeps gains
    // nothing from reading it again before its first sleep.
    let mut check = service.host.wakes_early();
    loop {
        // Register before checking, so that a change committed between the
        // check and the wait still wakes us.
        let wake = service
            .host
            .wait_for_change(parked.topic(), parked.deadline_millis());
        if check {
            if let Some(response) = resume(service, &parked).await {
                return response;
            }
        }
        check = true;
        wake.await;
    }
}

pub(crate) async fn start<K: Kv, H: Host>(
    service: &Service<K, H>,
    request: Request<Vec<u8>>,
) -> Handled {
    let cors_origin = cors_origin(&service.config.cors_origins, request.headers().get(ORIGIN));
    let is_head = request.method() == Method::HEAD;
    let (route, user_hash, dispatched) = dispatch(service, request, cors_origin.is_some()).await;
    let finish = Finish {
        route,
        user_hash,
        cors_origin,
        is_head,
    };
    match dispatched {
        Dispatched::Respond(result) => Handled::Done(finish_response(service, &finish, result)),
        Dispatched::Wait { user, waiting } => Handled::Parked(Parked {
            finish,
            topic: crate::keys::UserKeys::new(&user).topic().to_owned(),
            user,
            waiting,
        }),
    }
}

pub(crate) async fn resume<K: Kv, H: Host>(
    service: &Service<K, H>,
    parked: &Parked,
) -> Option<Response<Vec<u8>>> {
    let log = Log::new(&service.kv, &service.host, &service.config, &parked.user);
    let result = match changes_resume(service, &log, &parked.waiting).await {
        Ok(None) => return None,
        Ok(Some(response)) => read_precondition(parked.waiting.if_match.as_ref(), response),
        Err(failure) => Err(failure),
    };
    Some(finish_response(service, &parked.finish, result))
}

fn finish_response<K: Kv, H: Host>(
    service: &Service<K, H>,
    finish: &Finish,
    result: Result<Response<Vec<u8>>, Failure>,
) -> Response<Vec<u8>> {
    let mut store_error = None;
    let mut response = result.unwrap_or_else(|failure| {
        store_error = failure.store_error().map(ToString::to_string);
        failure.into_problem().into_response()
    });
    if let Some(origin) = &finish.cors_origin {
        let h = response.headers_mut();
        if !h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            );
        }
    }
    if service.config.cors_origins != CorsOrigins::None {
        // With CORS on, whether the answer carries CORS headers (and which
        // origin they name) depends on `Origin`: a cache must not hand one
        // origin's answer, or a same-origin one, to another.
        response
            .headers_mut()
            .append(VARY, HeaderValue::from_static("Origin"));
    }
    if finish.is_head {
        // Same headers as GET, no body. A 304 or 204 has no content, so no
        // length to announce (RFC 9110 §8.6: a 304's would have to be that
        // of the 200 it stands for).
        let status = response.status();
        if status != StatusCode::NOT_MODIFIED && status != StatusCode::NO_CONTENT {
            let len = response.body().len();
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        response.body_mut().clear();
    }
    if finish.route == "/v1/changes" || finish.route == "/v1/head" {
        // Every answer on the polling routes (errors too) tells a client
        // how often to come back and that it must revalidate.
        let h = response.headers_mut();
        h.entry(X_POLL_INTERVAL)
            .or_insert_with(|| HeaderValue::from(service.config.poll_interval_seconds));
        h.entry(CACHE_CONTROL)
            .or_insert_with(|| HeaderValue::from_static("private, no-cache"));
        if finish.route == "/v1/changes" {
            // `Prefer: wait` decides whether the answer is held.
            h.append(VARY, HeaderValue::from_static("Prefer"));
        }
    }
    // Nothing here is for shared caches, and an answer without its own
    // policy (an error, a 404, a write's result) must not be reused by a
    // private one either: a cached 404 would hide the document once made.
    response
        .headers_mut()
        .entry(CACHE_CONTROL)
        .or_insert_with(|| HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(RequestInfo {
        route: finish.route,
        user_hash: finish.user_hash.clone(),
        store_error,
    });
    response
}

fn cors_origin(allowed: &CorsOrigins, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    let origin = origin?;
    match allowed {
        CorsOrigins::None => None,
        CorsOrigins::Any => Some(HeaderValue::from_static("*")),
        CorsOrigins::List(list) => {
            let o = origin.to_str().ok()?;
            list.iter().any(|a| a == o).then(|| origin.clone())
        }
    }
}

async fn dispatch<K: Kv, H: Host>(
    service: &Service<K, H>,
    request: Request<Vec<u8>>,
    cors_allowed: bool,
) -> (&'static str, Option<String>, Dispatched) {
    let Some(route) = match_route(request.uri().path()) else {
        return (
            "unmatched",
            None,
            Dispatched::Respond(Ok(Problem::not_found().into_response())),
        );
    };
    let template = route.template();
    let method = request.method().clone();
    if !route.methods().contains(&method) {
        return (
            template,
            None,
            Dispatched::Respond(Ok(
                Problem::method_not_allowed(&route.allow()).into_response()
            )),
        );
    }
    if request.body().len() > service.config.max_body_bytes {
        return (
            template,
            None,
            Dispatched::Respond(Ok(Problem::payload_too_large(
                service.config.max_body_bytes,
            )
            .into_response())),
        );
    }
    if method == Method::OPTIONS {
        let mut r = empty(StatusCode::NO_CONTENT);
        let allow = route.allow();
        r.headers_mut().insert(ALLOW, header_value(&allow));
        if matches!(route, Route::Doc { .. }) {
            r.headers_mut()
                .insert(ACCEPT_PATCH, HeaderValue::from_static(MERGE_PATCH));
        }
        if cors_allowed
            && request
                .headers()
                .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            let h = r.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, header_value(&allow));
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOWED_REQUEST_HEADERS),
            );
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        return (template, None, Dispatched::Respond(Ok(r)));
    }
    if route == Route::Health {
        return (
            template,
            None,
            Dispatched::Respond(Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))),
        );
    }
    let expect = Expectations {
        secret: &service.config.jwt_secret,
        audience: service.config.jwt_audience.as_deref(),
        issuer: service.config.jwt_issuer.as_deref(),
    };
    let now_seconds = service.host.now_millis() / 1000;
    let claims = match auth::bearer(request.headers())
        .and_then(|token| service.tokens.verify(token, &expect, now_seconds))
    {
        Ok(claims) => claims,
        Err(e) => {
            return (
                template,
                None,
                Dispatched::Respond(Ok(Problem::invalid_token(&e.to_string()).into_response())),
            )
        }
    };
    let user_hash = Some(user_hash(&service.log_hasher, &claims.sub));
    // Every route's query (health, answered above, aside) is checked, also
    // where no parameter is read: a repeated one is refused everywhere
    // alike. On a read, `If-Match` is checked against the tag the answer
    // carries (RFC 9110 §13.1.1); on a write it is part of the mutation.
    let checked = query(&request).and_then(|params| {
        let read = method == Method::GET || method == Method::HEAD;
        Ok((params, if read { if_match(&request)? } else { None }))
    });
    let (params, read_if_match) = match checked {
        Ok(checked) => checked,
        Err(problem) => {
            return (
                template,
                user_hash,
                Dispatched::Respond(Err(problem.into())),
            )
        }
    };
    let log = Log::new(&service.kv, &service.host, &service.config, &claims.sub);
    if let Err(problem) = log.check_key_lengths(&[]) {
        return (
            template,
            user_hash,
            Dispatched::Respond(Err(problem.into())),
        );
    }
    let result = match route {
        Route::Head => head(service, &log, &request).await,
        Route::Changes => {
            match changes_start(service, &log, &request, &params, &read_if_match).await {
                Ok(ChangesStart::Respond(r)) => Ok(r),
                Ok(ChangesStart::Wait(waiting)) => {
                    let user = claims.sub;
                    return (template, user_hash, Dispatched::Wait { user, waiting });
                }
                Err(failure) => Err(failure),
            }
        }
        Route::List => list(&log, &params).await,
        Route::Doc { collection, id } => doc(&log, &request, collection, id).await,
        Route::Mutations => mutations(&log, &request).await,
        Route::Health => unreachable!("answered above"),
    };
    let result = result.and_then(|r| read_precondition(read_if_match.as_ref(), r));
    (template, user_hash, Dispatched::Respond(result))
}

/// `response` if a read's `If-Match` holds for the tag it carries, else 412.
/// Only answers that would have succeeded are checked (RFC 9110 §13.2.1):
/// a 404 stays a 404.
fn read_precondition(
    if_match: Option<&ETagList>,
    response: Response<Vec<u8>>,
) -> Result<Response<Vec<u8>>, Failure> {
    let Some(list) = if_match else {
        return Ok(response);
    };
    if !(response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED) {
        return Ok(response);
    }
    let current = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix('"')?.strip_suffix('"'))
        .and_then(parse_version_tag);
    if list.matches_strongly(current) {
        Ok(response)
    } else {
        Err(Problem::read_precondition_failed(current).into())
    }
}

/// The keyed hash behind [`user_hash`], set up once per service: keyed with
/// a key derived from the secret under a label of its own, so that nothing
/// hashed with it is ever a token signature.
pub(crate) fn log_hasher(secret: &[u8]) -> Hmac<Sha256> {
    let mut derive = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    derive.update(b"edgesync: user ids in logs");
    Hmac::new_from_slice(&derive.finalize().into_bytes()).expect("HMAC takes any key length")
}

/// A short id of the user for logs: the same for a user on every request
/// and instance (sharing the secret), and not reversible by whoever reads
/// the logs. Keyed, because an unkeyed hash of an email address or a
/// numeric id is reversed by hashing candidates.
pub(crate) fn user_hash(hasher: &Hmac<Sha256>, sub: &str) -> String {
    let mut mac = hasher.clone();
    mac.update(sub.as_bytes());
    hex(&mac.finalize().into_bytes()[..6])
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header values we build are visible ASCII")
}

fn empty(status: StatusCode) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = status;
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let mut r = Response::new(serde_json::to_vec(body).expect("JSON serializes"));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn etag(version: u64) -> HeaderValue {
    header_value(&format!("\"{version}\""))
}

/// Headers every changes/head response carries, 304 included.
fn poll_headers<K: Kv, H: Host>(service: &Service<K, H>, r: &mut Response<Vec<u8>>, tag: u64) {
    let h = r.headers_mut();
    h.insert(ETAG, etag(tag));
    h.insert(
        X_POLL_INTERVAL,
        HeaderValue::from(service.config.poll_interval_seconds),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
}

/// An empty `If-None-Match` lists no tags, so none can match: the request
/// goes ahead as if it had none.
fn if_none_match<T>(request: &Request<T>) -> Result<Option<ETagList>, Problem> {
    let list = parse_etag_list(request.headers().get_all(IF_NONE_MATCH).iter()).map_err(|()| {
        Problem::invalid_parameter("If-None-Match", "entity-tags must be quoted, e.g. \"12\"")
    })?;
    Ok(list.filter(|list| !matches!(list, ETagList::Tags(tags) if tags.is_empty())))
}

/// An empty `If-Match` would be a condition nothing can meet; refusing it
/// is more useful than a 412 that hides a client bug, and going ahead
/// unconditionally would be a lost update.
fn if_match<T>(request: &Request<T>) -> Result<Option<ETagList>, Problem> {
    let bad = |detail| Problem::invalid_parameter("If-Match", detail);
    match parse_etag_list(request.headers().get_all(IF_MATCH).iter()) {
        Err(()) => Err(bad("entity-tags must be quoted, e.g. \"12\"")),
        Ok(Some(ETagList::Tags(tags))) if tags.is_empty() => Err(bad(
            "an empty If-Match can never be met; send \"<version>\" or *",
        )),
        Ok(list) => Ok(list),
    }
}

/// The request's query parameters; a repeated one is 400.
fn query<T>(request: &Request<T>) -> Result<Query<'_>, Problem> {
    query_params(request.uri().query()).map_err(query_problem)
}

/// The 400 for a query parameter that is repeated, or malformed where it
/// is read.
fn query_problem(e: QueryError) -> Problem {
    match e {
        QueryError::Malformed(name) => Problem::invalid_parameter(
            &name,
            "query parameters must be valid percent-encoded UTF-8",
        ),
        QueryError::Repeated(name) => Problem::invalid_parameter(
            &name,
            format!("the parameter {name:?} is given more than once"),
        ),
    }
}

// -------------------------------------------------------------------
// /v1/head
// -------------------------------------------------------------------

async fn head<K: Kv, H: Host>(
    service: &Service<K, H>,
    log: &Log<'_, K, H>,
    request: &Request<Vec<u8>>,
) -> Result<Response<Vec<u8>>, Failure> {
    let inm = if_none_match(request)?;
    // The cheap probe: one small read answers "still at N?".
    if let Some(ETagList::Tags(tags)) = &inm {
        if let [tag] = tags.as_slice() {
            if let Some(n) = parse_version_tag(&tag.opaque) {
                if log.nothing_after(n).await? == Some(true) {
                    let mut r = empty(StatusCode::NOT_MODIFIED);
                    poll_headers(service, &mut r, n);
                    return Ok(r);
                }
            }
        }
    }
    let head = log.head().await?;
    let mut r = if inm.is_some_and(|l| l.matches_weakly(head)) {
        empty(StatusCode::NOT_MODIFIED)
    } else {
        json_response(StatusCode::OK, &json!({"head": head}))
    };
    poll_headers(service, &mut r, head);
    Ok(r)
}

// -------------------------------------------------------------------
// /v1/changes
// -------------------------------------------------------------------

/// A `/v1/changes` request with nothing to report yet, waiting for a change
/// or its deadline.
#[derive(Debug, Clone)]
pub(crate) struct ChangesWait {
    since: u64,
    limit: u64,
    wait: u64,
    /// Wall-clock ms when the request came in. A clock that reads earlier
    /// than this has been stepped back: the wait ends there rather than
    /// being stretched by the step (which could be hours).
    started: u64,
    deadline: u64,
    preferred: bool,
    inm: Option<ETagList>,
    /// Checked against the answer when it is finally given.
    if_match: Option<ETagList>,
}

enum ChangesStart {
    Respond(Response<Vec<u8>>),
    Wait(ChangesWait),
}

async fn changes_start<K: Kv, H: Host>(
    service: &Service<K, H>,
    log: &Log<'_, K, H>,
    request: &Request<Vec<u8>>,
    params: &Query<'_>,
    if_match: &Option<ETagList>,
) -> Result<ChangesStart, Failure> {
    let get = |name: &str| params.get(name).map_err(query_problem);
    let since = match get("since")? {
        None => 0,
        Some(v) => parse_u64(&v).ok_or_else(|| {
            Problem::invalid_parameter("since", "since must be a non-negative integer")
        })?,
    };
    let limit = match get("limit")? {
        None => DEFAULT_LIMIT,
        Some(v) => parse_u64(&v)
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                Problem::invalid_parameter("limit", "limit must be an integer from 1 to 1000")
            })?,
    };
    let (wait, preferred) = match get("wait")? {
        Some(v) => (
            parse_u64(&v).ok_or_else(|| {
                Problem::invalid_parameter(
                    "wait",
                    "wait must be a non-negative integer number of seconds",
                )
            })?,
            false,
        ),
        None => match prefer_wait(request.headers().get_all(PREFER).iter()) {
            Ok(Some(w)) => (w, true),
            Ok(None) => (0, false),
            Err(()) => {
                return Err(Problem::invalid_parameter(
                    "Prefer",
                    "the wait preference must be a non-negative integer number of seconds",
                )
                .into())
            }
        },
    };
    let wait = wait.min(service.config.max_wait_seconds);
    let started = service.host.now_millis();
    let waiting = ChangesWait {
        since,
        limit,
        wait,
        started,
        deadline: started.saturating_add(wait.saturating_mul(1000)),
        preferred,
        inm: if_none_match(request)?,
        if_match: if_match.clone(),
    };
    let page = log.changes(since, limit).await?.map_err(Failure::from)?;
    if matches!(page, ChangesPage::Idle) && wait > 0 && !service.host.draining() {
        return Ok(ChangesStart::Wait(waiting));
    }
    Ok(ChangesStart::Respond(changes_response(
        service, &waiting, page,
    )))
}

/// Check a waiting `/v1/changes` request once more: the response, or
/// `None` while there is still nothing to report and time left. Hosts
/// register for change notification *before* calling this (see
/// `Host::wait_for_change`).
async fn changes_resume<K: Kv, H: Host>(
    service: &Service<K, H>,
    log: &Log<'_, K, H>,
    waiting: &ChangesWait,
) -> Result<Option<Response<Vec<u8>>>, Failure> {
    let page = match log.nothing_after(waiting.since).await? {
        Some(true) => ChangesPage::Idle,
        // Something new, or one read could not tell (e.g. the cursor is
        // not valid any more): the full read decides.
        _ => log
            .changes(waiting.since, waiting.limit)
            .await?
            .map_err(Failure::from)?,
    };
    // A step back of the clock smaller than the time already waited can
    // lengthen the wait by at most that much; a larger one ends it.
    let now = service.host.now_millis();
    let over = now >= waiting.deadline || now < waiting.started || service.host.draining();
    if matches!(page, ChangesPage::Idle) && !over {
        return Ok(None);
    }
    Ok(Some(changes_response(service, waiting, page)))
}

fn changes_response<K: Kv, H: Host>(
    service: &Service<K, H>,
    waiting: &ChangesWait,
    page: ChangesPage,
) -> Response<Vec<u8>> {
    let since = waiting.since;
    // A page's tag is its `next`: an `If-None-Match` holding it (usually
    // `"<since>"` on an idle poll) is answered 304, as on every GET.
    let not_modified = |tag: u64| waiting.inm.as_ref().is_some_and(|l| l.matches_weakly(tag));
    let (mut response, tag) = match page {
        ChangesPage::Idle if not_modified(since) => (empty(StatusCode::NOT_MODIFIED), since),
        ChangesPage::Idle => (
            json_response(
                StatusCode::OK,
                &json!({"changes": [], "next": since, "head": since}),
            ),
            since,
        ),
        ChangesPage::Entries { changes, head } => {
            let next = changes.last().map_or(since, |(seq, _)| *seq);
            if not_modified(next) {
                (empty(StatusCode::NOT_MODIFIED), next)
            } else {
                let list: Vec<Value> = changes.iter().map(|(seq, e)| e.change(*seq)).collect();
                let r = json_response(
                    StatusCode::OK,
                    &json!({"changes": list, "next": next, "head": head.max(next)}),
                );
                (r, next)
            }
        }
    };
    poll_headers(service, &mut response, tag);
    if waiting.preferred {
        response.headers_mut().insert(
            PREFERENCE_APPLIED,
            header_value(&format!("wait={}", waiting.wait)),
        );
    }
    response
}

// -------------------------------------------------------------------
// /v1/docs (listing)
// -------------------------------------------------------------------

async fn list<K: Kv, H: Host>(
    log: &Log<'_, K, H>,
    params: &Query<'_>,
) -> Result<Response<Vec<u8>>, Failure> {
    let get = |name: &str| params.get(name).map_err(query_problem);
    let collection = match get("collection")? {
        None => None,
        Some(c) if is_valid_name(&c) => Some(c),
        Some(_) => {
            return Err(Problem::invalid_parameter(
                "collection",
                "collection must be a valid collection name",
            )
            .into())
        }
    };
    let after = match get("after")? {
        None => None,
        Some(a) => match a.split_once('/') {
            Some((c, i)) if is_valid_name(c) && is_valid_name(i) => {
                Some((c.to_owned(), i.to_owned()))
            }
            _ => {
                return Err(Problem::invalid_parameter(
                    "after",
                    "after must be \"{collection}/{id}\" as returned in next_after",
                )
                .into())
            }
        },
    };
    let limit = match get("limit")? {
        None => DEFAULT_LIMIT,
        Some(v) => parse_u64(&v)
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                Problem::invalid_parameter("limit", "limit must be an integer from 1 to 1000")
            })?,
    };
    if let Some(c) = &collection {
        log.check_key_lengths(&[KeyUse::Collection(c)])?;
    }
    let page = log
        .list(collection.as_deref(), after, limit as usize)
        .await?;
    let mut body = json!({
        "documents": page.documents.iter().map(Entry::document).collect::<Vec<_>>(),
        "cursor": page.cursor,
    });
    if let Some((c, i)) = page.next_after {
        body["next_after"] = json!(format!("{c}/{i}"));
    }
    let mut r = json_response(StatusCode::OK, &body);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    Ok(r)
}

// -------------------------------------------------------------------
// /v1/docs/{collection}/{id}
// -------------------------------------------------------------------

fn check_names(collection: &str, id: &str) -> Result<(), Problem> {
    if !is_valid_name(collection) {
        return Err(Problem::invalid_name("collection", collection));
    }
    if !is_valid_name(id) {
        return Err(Problem::invalid_name("id", id));
    }
    Ok(())
}

/// What an idempotency key is bound to: the mutation as it means, not as
/// it was spelled (the parsed value, so whitespace and member order do not
/// matter; the preconditions, so the same body under another `If-Match` is
/// another request), whether it came as a single-document request or as a
/// batch item.
fn fingerprint(collection: &str, id: &str, action: &Action, conditions: &Conditions) -> String {
    let (op, value) = match action {
        Action::Put(v) => ("put", Some(v)),
        Action::Patch(v) => ("patch", Some(v)),
        Action::Delete => ("delete", None),
    };
    let cond = |c: &Option<Cond>| match c {
        None => Value::Null,
        Some(Cond::Any) => json!("*"),
        Some(Cond::Versions(versions)) => json!(versions),
    };
    let canonical = serde_json::to_vec(&json!({
        "op": op, "collection": collection, "doc": id, "value": value,
        "if_match": cond(&conditions.if_match), "if_none_match": cond(&conditions.if_none_match),
    }))
    .expect("JSON serializes");
    hex(&Sha256::digest(canonical))
}

fn parse_json(body: &[u8]) -> Result<Value, Problem> {
    strict_json::parse(body)
        .map_err(|e| Problem::invalid_json(format!("the body is not valid JSON: {e}")))
}

/// `value` if it nests at most [`MAX_VALUE_DEPTH`] levels of arrays and
/// objects; `what` names it in the problem.
fn shallow_enough(value: Value, what: &str) -> Result<Value, Problem> {
    let mut stack = vec![(&value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(members) => Box::new(members.values()),
            _ => continue,
        };
        if depth == MAX_VALUE_DEPTH {
            return Err(Problem::invalid_body(format!(
                "{what} nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep"
            )));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(value)
}

/// A body we can read: `expected` as its media type (parameters aside:
/// JSON defines none, RFC 8259 §11) and no content coding, which we would
/// otherwise parse as if it were plain.
fn require_media_type<T>(request: &Request<T>, expected: &str) -> Result<(), Problem> {
    let identity = request
        .headers()
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        // An empty list element (or field) names no coding.
        .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"));
    if !identity {
        return Err(Problem::unsupported_content_encoding());
    }
    // Two Content-Type fields name no one type: 415 like a wrong one.
    let content_type = single_field(request.headers(), &CONTENT_TYPE).unwrap_or(None);
    if media_type(content_type).as_deref() == Some(expected) {
        Ok(())
    } else {
        Err(Problem::unsupported_media_type(expected))
    }
}

async fn doc<K: Kv, H: Host>(
    log: &Log<'_, K, H>,
    request: &Request<Vec<u8>>,
    collection: String,
    id: String,
) -> Result<Response<Vec<u8>>, Failure> {
    check_names(&collection, &id)?;
    log.check_key_lengths(&[KeyUse::Document(&collection, &id)])?;
    let method = request.method().clone();
    if method == Method::GET || method == Method::HEAD {
        let inm = if_none_match(request)?;
        let found = log.documents(&[(collection, id)]).await?.pop().flatten();
        let Some(entry) = found else {
            return Err(Problem::document_not_found().into());
        };
        let mut r = if inm.is_some_and(|l| l.matches_weakly(entry.k)) {
            empty(StatusCode::NOT_MODIFIED)
        } else {
            json_response(StatusCode::OK, &entry.document())
        };
        r.headers_mut().insert(ETAG, etag(entry.k));
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
        return Ok(r);
    }

    let action = if method == Method::PUT {
        require_media_type(request, "application/json")?;
        Action::Put(shallow_enough(parse_json(request.body())?, "the value")?)
    } else if method == Method::PATCH {
        require_media_type(request, MERGE_PATCH)?;
        Action::Patch(shallow_enough(parse_json(request.body())?, "the patch")?)
    } else {
        Action::Delete
    };
    let conditions = Conditions {
        if_match: if_match(request)?.map(|l| l.to_cond(true)),
        if_none_match: if_none_match(request)?.map(|l| l.to_cond(false)),
    };
    let bad_key = || {
        Problem::invalid_parameter(
            "Idempotency-Key",
            "must be one field of 1-255 visible ASCII characters",
        )
    };
    let idempotency =
        match single_field(request.headers(), &IDEMPOTENCY_KEY).map_err(|_| bad_key())? {
            None => None,
            Some(v) => {
                let key = v
                    .to_str()
                    .ok()
                    .filter(|k| is_valid_idempotency_key(k))
                    .ok_or_else(bad_key)?;
                log.check_key_lengths(&[KeyUse::Idempotency(key)])?;
                let fp = fingerprint(&collection, &id, &action, &conditions);
                Some((key.to_owned(), fp))
            }
        };
    let mutation = Mutation {
        collection,
        id,
        action,
        conditions,
        idempotency,
    };
    match log.mutate(&mutation).await? {
        Outcome::Refused(problem) => Err(problem.into()),
        Outcome::Applied { entry, replayed } => Ok(mutation_response(&entry, replayed)),
    }
}

fn mutation_response(entry: &Entry, replayed: bool) -> Response<Vec<u8>> {
    let status = StatusCode::from_u16(entry.status()).expect("valid status");
    let mut r = if entry.is_live() {
        json_response(status, &entry.document())
    } else {
        empty(status)
    };
    let h = r.headers_mut();
    h.insert(ETAG, etag(entry.k));
    if status == StatusCode::CREATED {
        h.insert(
            LOCATION,
            header_value(&format!("/v1/docs/{}/{}", entry.c, entry.i)),
        );
    }
    if replayed {
        h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    r
}

// -------------------------------------------------------------------
// /v1/mutations
// -------------------------------------------------------------------

/// Whether a refused batch item may succeed when sent again later as is.
fn is_worth_retrying(problem: &Problem) -> bool {
    matches!(
        problem.status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

fn parse_batch(body: &[u8]) -> Result<Vec<(Mutation, String)>, Problem> {
    let value = parse_json(body)?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut obj) => match obj.remove("mutations") {
            Some(Value::Array(items)) => items,
            _ => return Err(Problem::invalid_body("expected {\"mutations\": [...]}")),
        },
        _ => return Err(Problem::invalid_body("expected {\"mutations\": [...]}")),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(Problem::invalid_body(format!(
            "a batch holds 1 to {MAX_BATCH} mutations, not {}",
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for (n, item) in items.into_iter().enumerate() {
        let bad = |what: &str| Problem::invalid_body(format!("mutation #{n}: {what}"));
        let Value::Object(obj) = &item else {
            return Err(bad("must be an object"));
        };
        let text = |name: &str| obj.get(name).and_then(Value::as_str);
        let key = text("id").ok_or_else(|| bad("needs an \"id\" (its idempotency key)"))?;
        if !is_valid_idempotency_key(key) {
            return Err(bad("\"id\" must be 1-255 visible ASCII characters"));
        }
        let collection = text("collection").ok_or_else(|| bad("needs a \"collection\""))?;
        let id = text("doc").ok_or_else(|| bad("needs a \"doc\" (the document id)"))?;
        if !is_valid_name(collection) {
            return Err(Problem::invalid_name("collection", collection));
        }
        if !is_valid_name(id) {
            return Err(Problem::invalid_name("id", id));
        }
        let value = obj.get("value");
        let value_for = |missing: &str| {
            let value = value.cloned().ok_or_else(|| bad(missing))?;
            shallow_enough(value, &format!("mutation #{n}: \"value\""))
        };
        let action = match text("op") {
            Some("put") => Action::Put(value_for("\"put\" needs a \"value\"")?),
            Some("patch") => {
                Action::Patch(value_for("\"patch\" needs a \"value\" (the merge patch)")?)
            }
            Some("delete") => Action::Delete,
            _ => return Err(bad("\"op\" must be \"put\", \"patch\" or \"delete\"")),
        };
        let conditions = match obj.get("if_version") {
            None | Some(Value::Null) => Conditions::default(),
            Some(v) => match v.as_u64() {
                Some(0) => Conditions {
                    if_none_match: Some(Cond::Any),
                    ..Conditions::default()
                },
                Some(n) => Conditions {
                    if_match: Some(Cond::Versions(vec![n])),
                    ..Conditions::default()
                },
                None => return Err(bad("\"if_version\" must be a non-negative integer")),
            },
        };
        let fp = fingerprint(collection, id, &action, &conditions);
        out.push((
            Mutation {
                collection: collection.to_owned(),
                id: id.to_owned(),
                action,
                conditions,
                idempotency: Some((key.to_owned(), fp)),
            },
            key.to_owned(),
        ));
    }
    Ok(out)
}

async fn mutations<K: Kv, H: Host>(
    log: &Log<'_, K, H>,
    request: &Request<Vec<u8>>,
) -> Result<Response<Vec<u8>>, Failure> {
    require_media_type(request, "application/json")?;
    if request.headers().contains_key(IDEMPOTENCY_KEY) {
        // Ignoring it would let a client believe the batch is deduplicated
        // as a whole; it is not, item by item it is.
        return Err(Problem::invalid_parameter(
            "Idempotency-Key",
            "a batch takes no Idempotency-Key header: each item's \"id\" is its idempotency key",
        )
        .into());
    }
    for (name, shown) in [(IF_MATCH, "If-Match"), (IF_NONE_MATCH, "If-None-Match")] {
        if request.headers().contains_key(name) {
            // Likewise: the batch as a whole has no version to compare.
            return Err(Problem::invalid_parameter(
                shown,
                format!(
                    "a batch takes no {shown} header: an item's \"if_version\" is its precondition"
                ),
            )
            .into());
        }
    }
    let batch = parse_batch(request.body())?;
    for (m, key) in &batch {
        log.check_key_lengths(&[
            KeyUse::Document(&m.collection, &m.id),
            KeyUse::Idempotency(key),
        ])?;
    }
    let mut results = Vec::with_capacity(batch.len());
    for (mutation, key) in &batch {
        // A refusal worth retrying (429: the rate limit; 503: the store
        // failed, or the item lost too many races) stops the batch, so that
        // no later item is applied before it: the batch is an offline queue,
        // and its order is the user's. Retrying from the stopping item is
        // safe and free — so is retrying the whole batch: the items applied
        // so far replay, and replays take no rate limit token. A final
        // refusal (404, 409, 412, 422) is that item's result and the rest go
        // on; the stop answer lists the results so far, because a refused
        // item sent again would be evaluated afresh, after the items that
        // followed it.
        let outcome = match log.mutate(mutation).await {
            Ok(Outcome::Refused(problem)) | Err(Failure::Problem(problem))
                if is_worth_retrying(&problem) =>
            {
                return Err(Failure::BatchStopped {
                    cause: Box::new(problem.into()),
                    settled: results,
                })
            }
            Ok(outcome) => outcome,
            Err(Failure::Problem(problem)) => Outcome::Refused(problem),
            Err(failure) => {
                return Err(Failure::BatchStopped {
                    cause: Box::new(failure),
                    settled: results,
                })
            }
        };
        results.push(match outcome {
            Outcome::Applied { entry, replayed } => {
                let mut r = json!({
                    "id": key, "status": entry.status(), "version": entry.k, "replayed": replayed,
                });
                if entry.is_live() {
                    r["document"] = entry.document();
                }
                r
            }
            Outcome::Refused(problem) => json!({
                "id": key, "status": problem.status.as_u16(), "replayed": false, "problem": problem.to_json(),
            }),
        });
    }
    // Should the head not be read now, every item is settled all the same:
    // the stop answer carries all their results, so that no client sends a
    // refused item again (it would be judged afresh).
    let head = match log.head().await {
        Ok(head) => head,
        Err(cause) => {
            return Err(Failure::BatchStopped {
                cause: Box::new(cause),
                settled: results,
            })
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"results": results, "head": head}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_hashes_are_stable_short_and_keyed() {
        let (one, two) = (log_hasher(b"secret-one"), log_hasher(b"secret-two"));
        let a = user_hash(&one, "dave@example.com");
        assert_eq!(a, user_hash(&log_hasher(b"secret-one"), "dave@example.com"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, user_hash(&one, "erin@example.com"));
        assert_ne!(a, user_hash(&two, "dave@example.com"));
        // Not the unkeyed digest anyone can compute from a guess.
        let unkeyed = hex(&Sha256::digest(b"dave@example.com")[..6]);
        assert_ne!(a, unkeyed);
    }

    #[test]
    fn routes_match_the_public_table() {
        let examples = [
            ("/v1/health", "/v1/health"),
            ("/v1/head", "/v1/head"),
            ("/v1/changes", "/v1/changes"),
            ("/v1/docs", "/v1/docs"),
            ("/v1/docs/a/b", "/v1/docs/{collection}/{id}"),
            ("/v1/mutations", "/v1/mutations"),
        ];
        for (path, template) in examples {
            let route = match_route(path).unwrap();
            assert_eq!(route.template(), template);
            let (_, methods) = crate::ROUTES.iter().find(|(t, _)| *t == template).unwrap();
            let mut mine: Vec<&str> = route
                .methods()
                .iter()
                .map(Method::as_str)
                .filter(|m| *m != "HEAD" && *m != "OPTIONS")
                .collect();
            mine.sort_unstable();
            let mut theirs = methods.to_vec();
            theirs.sort_unstable();
            assert_eq!(mine, theirs, "{template}");
        }
        assert_eq!(crate::ROUTES.len(), examples.len());
        for unmatched in [
            "/",
            "/v1",
            "/v1/docs/a",
            "/v1/docs/a/b/c",
            "/v1/head/",
            "/v2/head",
        ] {
            assert_eq!(match_route(unmatched), None, "{unmatched}");
        }
    }
}
