//! `openapi.yaml` (repository root) must describe exactly the routes and
//! methods of `edgesync_core::ROUTES` (HEAD and OPTIONS aside), document at
//! least the contract's status codes for each operation, and hold together
//! (every `$ref` resolves, every error response is a problem).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_norway::Value;

fn spec() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("openapi.yaml does not parse: {e}"))
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping()?.get(Value::String(key.to_string()))
}

fn keys(v: &Value) -> Vec<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .map(|k| match k {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("unexpected mapping key {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

const METHODS: &[&str] = &["get", "put", "patch", "delete", "post"];
const IGNORED: &[&str] = &["head", "options"];
const NOT_OPERATIONS: &[&str] = &["parameters", "summary", "description", "servers", "$ref"];

/// Operations described in the file: route → methods (upper-case).
fn described(spec: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let paths = get(spec, "paths").expect("openapi.yaml has no `paths`");
    let mut out = BTreeMap::new();
    for route in keys(paths) {
        let item = get(paths, &route).unwrap();
        let mut methods = BTreeSet::new();
        for k in keys(item) {
            if METHODS.contains(&k.as_str()) {
                methods.insert(k.to_uppercase());
            } else if !IGNORED.contains(&k.as_str()) && !NOT_OPERATIONS.contains(&k.as_str()) {
                panic!("{route}: `{k}` is not an operation the contract has (trace? connect?)");
            }
        }
        out.insert(route, methods);
    }
    out
}

#[test]
fn routes_and_methods_match_the_core() {
    let spec = spec();
    assert_eq!(
        get(&spec, "openapi")
            .and_then(|v| v.as_str())
            .map(|s| s.starts_with("3.1")),
        Some(true),
        "openapi.yaml must be OpenAPI 3.1"
    );
    let file = described(&spec);
    let core: BTreeMap<String, BTreeSet<String>> = edgesync_core::ROUTES
        .iter()
        .map(|(route, methods)| {
            (
                route.to_string(),
                methods
                    .iter()
                    .filter(|m| !matches!(**m, "HEAD" | "OPTIONS"))
                    .map(|m| m.to_string())
                    .collect(),
            )
        })
        .collect();
    for (route, methods) in &core {
        let Some(described) = file.get(route) else {
            panic!("openapi.yaml lacks the route {route} (methods {methods:?})");
        };
        for m in methods {
            assert!(described.contains(m), "openapi.yaml lacks {m} {route}");
        }
    }
    for (route, methods) in &file {
        let Some(real) = core.get(route) else {
            panic!("openapi.yaml describes {route}, which is not in edgesync_core::ROUTES");
        };
        for m in methods {
            assert!(
                real.contains(m),
                "openapi.yaml describes {m} {route}, which edgesync_core::ROUTES does not accept"
            );
        }
    }
}

/// The statuses each operation must document, from DESIGN.md and
/// docs/protocol-decisions.md.
fn contract_statuses() -> Vec<(&'static str, &'static str, &'static [u16])> {
    vec![
        ("/v1/health", "get", &[200]),
        ("/v1/head", "get", &[200, 304, 401, 503]),
        ("/v1/changes", "get", &[200, 304, 400, 401, 409, 410, 503]),
        ("/v1/docs", "get", &[200, 400, 401, 503]),
        (
            "/v1/docs/{collection}/{id}",
            "get",
            &[200, 304, 400, 401, 404, 503],
        ),
        (
            "/v1/docs/{collection}/{id}",
            "put",
            &[200, 201, 400, 401, 412, 413, 415, 422, 429, 503],
        ),
        (
            "/v1/docs/{collection}/{id}",
            "patch",
            &[200, 400, 401, 404, 412, 413, 415, 422, 429, 503],
        ),
        (
            "/v1/docs/{collection}/{id}",
            "delete",
            &[204, 400, 401, 404, 412, 422, 429, 503],
        ),
        (
            "/v1/mutations",
            "post",
            &[200, 400, 401, 413, 415, 429, 503],
        ),
    ]
}

#[test]
fn every_operation_documents_its_contract_statuses() {
    let spec = spec();
    let paths = get(&spec, "paths").unwrap();
    let listed: BTreeSet<(String, String)> = contract_statuses()
        .iter()
        .map(|(r, m, _)| (r.to_string(), m.to_string()))
        .collect();
    for (route, methods) in described(&spec) {
        for m in methods {
            assert!(
                listed.contains(&(route.clone(), m.to_lowercase())),
                "this test has no contract statuses for {m} {route}: add them"
            );
        }
    }
    for (route, method, statuses) in contract_statuses() {
        let op = get(paths, route)
            .and_then(|p| get(p, method))
            .unwrap_or_else(|| panic!("openapi.yaml lacks {method} {route}"));
        let responses =
            get(op, "responses").unwrap_or_else(|| panic!("{method} {route} has no responses"));
        let documented: BTreeSet<String> = keys(responses).into_iter().collect();
        for s in statuses {
            assert!(
                documented.contains(&s.to_string()),
                "{method} {route} must document status {s} (documents {documented:?})"
            );
        }
        // Authentication: everything but health needs the bearer scheme.
        let security = get(op, "security").or_else(|| get(&spec, "security"));
        let needs_auth = security
            .and_then(|s| s.as_sequence())
            .is_some_and(|s| !s.is_empty());
        if route == "/v1/health" {
            assert!(!needs_auth, "/v1/health must declare `security: []`");
        } else {
            assert!(
                needs_auth,
                "{method} {route} must require the bearer scheme"
            );
            assert!(
                documented.contains("401"),
                "{method} {route} must document 401"
            );
        }
    }
}

/// Resolve a local `$ref` (`#/a/b/c`).
fn resolve<'a>(spec: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix("#/")?;
    let mut node = spec;
    for part in pointer.split('/') {
        let part = part.replace("~1", "/").replace("~0", "~");
        node = get(node, &part)?;
    }
    Some(node)
}

fn walk<'a>(v: &'a Value, path: &mut Vec<String>, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                if key == "$ref" {
                    if let Some(r) = child.as_str() {
                        out.push((path.join("/"), r));
                    }
                }
                path.push(key);
                walk(child, path, out);
                path.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                path.push(i.to_string());
                walk(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let spec = spec();
    let mut refs = Vec::new();
    walk(&spec, &mut Vec::new(), &mut refs);
    assert!(!refs.is_empty());
    for (at, r) in refs {
        assert!(
            resolve(&spec, r).is_some(),
            "openapi.yaml: `$ref: {r}` at {at} does not resolve"
        );
    }
}

#[test]
fn errors_are_problems_with_the_documented_types() {
    let spec = spec();
    let paths = get(&spec, "paths").unwrap();
    for route in keys(paths) {
        let item = get(paths, &route).unwrap();
        for method in keys(item) {
            let Some(responses) = get(get(item, &method).unwrap(), "responses") else {
                continue;
            };
            for status in keys(responses) {
                let code: u16 = status.parse().unwrap_or_else(|_| {
                    panic!("{method} {route}: response key {status} is not a status code")
                });
                let mut response = get(responses, &status).unwrap();
                if let Some(r) = get(response, "$ref").and_then(|r| r.as_str()) {
                    response = resolve(&spec, r).unwrap();
                }
                let content = get(response, "content");
                if code >= 400 && method != "head" {
                    let problem = content.and_then(|c| get(c, "application/problem+json"));
                    assert!(
                        problem.is_some(),
                        "{method} {route} {status}: errors must be application/problem+json"
                    );
                }
                if code == 304 || code == 204 {
                    assert!(content.is_none(), "{method} {route} {status}: has no body");
                }
            }
        }
    }
    // The problem types of docs/protocol-decisions.md, exactly.
    let types: BTreeSet<String> =
        resolve(&spec, "#/components/schemas/Problem/properties/type/enum")
            .and_then(|v| v.as_sequence())
            .expect("Problem.type enum")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
    // Read from the decisions document itself, so the two cannot drift.
    let decisions = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol-decisions.md"),
    )
    .expect("docs/protocol-decisions.md");
    let expected: BTreeSet<String> = decisions
        .lines()
        .filter_map(|l| l.trim().strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_string())
        .collect();
    assert!(expected.len() >= 17, "no problem table found: {expected:?}");
    assert_eq!(
        types, expected,
        "Problem.type must list the contract's problem types"
    );
    let props = keys(resolve(&spec, "#/components/schemas/Problem/properties").unwrap());
    for member in [
        "type",
        "title",
        "status",
        "detail",
        "parameter",
        "head",
        "floor",
        "current_version",
        "max_body_bytes",
    ] {
        assert!(
            props.iter().any(|p| p == member),
            "Problem lacks the member `{member}`"
        );
    }
}

#[test]
fn contract_headers_are_described() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi.yaml"),
    )
    .unwrap();
    for header in [
        "ETag",
        "If-Match",
        "If-None-Match",
        "Idempotency-Key",
        "Idempotent-Replayed",
        "Prefer",
        "Preference-Applied",
        "X-Poll-Interval",
        "Retry-After",
        "Location",
        "WWW-Authenticate",
        "Allow",
        "Cache-Control",
    ] {
        assert!(
            text.contains(&format!("{header}:")) || text.contains(&format!("name: {header}")),
            "openapi.yaml does not describe the header {header}"
        );
    }
}
