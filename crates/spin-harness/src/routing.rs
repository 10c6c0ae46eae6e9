//! Spin's HTTP routing (`spin-http`'s `routes.rs`, on top of the
//! `routefinder` crate), for the routes a Spin manifest can contain.
//!
//! * `/a/b` is an exact route; `/a/...` (or `/a/*`) matches `/a` and
//!   everything below it; `/...` matches everything; `:name` segments
//!   match one path segment and are captured.
//! * Trailing slashes are ignored when matching (`/a/b/` matches `/a/b`),
//!   as routefinder does; the trailing wildcard keeps them
//!   (`spin-path-info` of `/a/x/` under `/a/...` is `/x/`).
//! * Precedence (routefinder's ordering): segment by segment, an exact
//!   segment beats a `:param`, which beats a wildcard; if one route is a
//!   prefix of the other, the shorter wins (so `/a` beats `/a/...`). Hence
//!   exact beats wildcard and the longer wildcard prefix wins.
//! * Duplicate routes: the last one in the manifest wins (Spin logs the
//!   others as unreachable). Private routes are not routable.
//! * No match: 404 with an empty body.
//!
//! Not reproduced: routefinder's treatment of `.` as a separator inside
//! segments (`/file.:ext` patterns).

use std::cmp::Ordering;
use std::collections::HashMap;

/// A route segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Exact(String),
    Param(String),
    Wildcard,
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Segment::Exact(_) => 2,
            Segment::Param(_) => 1,
            Segment::Wildcard => 0,
        }
    }
}

/// A route that a component answers.
#[derive(Debug, Clone)]
struct Route {
    /// The route as written in the manifest (Spin's "raw route").
    raw: String,
    /// With the (always `/`) base applied (Spin's "based route").
    based: String,
    segments: Vec<Segment>,
    component: String,
}

impl Route {
    fn parse(raw: &str, component: &str) -> Result<Self, String> {
        let absolute = if raw.starts_with('/') {
            raw.to_string()
        } else {
            format!("/{raw}")
        };
        // Spin strips one trailing slash from the route (`sanitize`).
        let based = absolute
            .strip_suffix('/')
            .map(str::to_string)
            .unwrap_or(absolute);
        let pattern = match based.strip_suffix("/...") {
            Some(prefix) => format!("{prefix}/*"),
            None if based == "..." => "/*".to_string(),
            None => based.clone(),
        };
        let mut segments = vec![];
        let trimmed = pattern.trim_matches('/');
        let parts: Vec<&str> = if trimmed.is_empty() {
            vec![]
        } else {
            trimmed.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let seg = if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "route {raw:?}: a wildcard must be the last segment"
                    ));
                }
                Segment::Wildcard
            } else if let Some(name) = part.strip_prefix(':') {
                if name.is_empty() {
                    return Err(format!("route {raw:?}: params must be named"));
                }
                Segment::Param(name.to_string())
            } else if part.starts_with('*') {
                return Err(format!("route {raw:?}: a wildcard does not take a name"));
            } else if part.is_empty() {
                return Err(format!("route {raw:?}: empty path segment"));
            } else {
                Segment::Exact(part.to_string())
            };
            segments.push(seg);
        }
        Ok(Self {
            raw: raw.to_string(),
            based,
            segments,
            component: component.to_string(),
        })
    }

    /// routefinder's precedence: `Less` means `self` is preferred.
    fn precedence(&self, other: &Self) -> Ordering {
        for (mine, theirs) in self.segments.iter().zip(&other.segments) {
            match theirs.rank().cmp(&mine.rank()) {
                Ordering::Equal => continue,
                unequal => return unequal,
            }
        }
        self.segments.len().cmp(&other.segments.len())
    }

    /// Match `path`: the captured params and, for wildcard routes, the
    /// matched remainder segments.
    fn matches(&self, path_segments: &[&str]) -> Option<(HashMap<String, String>, Option<String>)> {
        let mut params = HashMap::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Wildcard => {
                    return Some((
                        params,
                        Some(path_segments[i.min(path_segments.len())..].join("/")),
                    ));
                }
                Segment::Exact(e) => {
                    if path_segments.get(i) != Some(&e.as_str()) {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = path_segments.get(i)?;
                    if value.is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), value.to_string());
                }
            }
        }
        (path_segments.len() == self.segments.len()).then_some((params, None))
    }
}

/// The result of routing a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The component to run.
    pub component: String,
    /// The route as written in the manifest (`spin-raw-component-route`).
    pub raw_route: String,
    /// The route with the base applied (`spin-matched-route`).
    pub based_route: String,
    /// The raw route without a trailing `/...` (`spin-component-route`).
    pub component_route: String,
    /// The part of the path matched by a trailing wildcard
    /// (`spin-path-info`): `""`, `"/"`, `"/x"` or `"/x/"`.
    pub path_info: String,
    /// Named `:param` captures (`spin-path-match-<NAME>`).
    pub params: HashMap<String, String>,
}

/// The routing table of an app's HTTP triggers.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Sorted by precedence, best first.
    routes: Vec<Route>,
}

impl Router {
    /// Build from `(route, component)` pairs in manifest order.
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut by_raw: Vec<Route> = vec![];
        for (raw, component) in routes {
            let route = Route::parse(raw, component)?;
            if let Some(existing) = by_raw.iter_mut().find(|r| r.raw == route.raw) {
                tracing::warn!(
                    "duplicate route {raw:?}: component {:?} is unreachable, {component:?} wins",
                    existing.component
                );
                *existing = route;
            } else {
                by_raw.push(route);
            }
        }
        by_raw.sort_by(|a, b| a.precedence(b));
        Ok(Self { routes: by_raw })
    }

    /// Route `path` (the URI's path, without the query).
    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let trimmed = path.trim_matches('/');
        let segments: Vec<&str> = if trimmed.is_empty() {
            vec![]
        } else {
            trimmed.split('/').collect()
        };
        self.routes.iter().find_map(|route| {
            let (params, rest) = route.matches(&segments)?;
            let path_info = match rest {
                None => String::new(),
                Some(rest) => match (rest.is_empty(), path.ends_with('/')) {
                    (true, false) => String::new(),
                    (true, true) => "/".to_string(),
                    (false, false) => format!("/{rest}"),
                    (false, true) => format!("/{rest}/"),
                },
            };
            Some(RouteMatch {
                component: route.component.clone(),
                raw_route: route.raw.clone(),
                based_route: route.based.clone(),
                component_route: route
                    .raw
                    .strip_suffix("/...")
                    .unwrap_or(&route.raw)
                    .to_string(),
                path_info,
                params,
            })
        })
    }

    /// `(raw route, component)` in precedence order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.routes
            .iter()
            .map(|r| (r.raw.as_str(), r.component.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::build(routes.iter().copied()).unwrap()
    }

    fn component(r: &Router, path: &str) -> Option<String> {
        r.route(path).map(|m| m.component)
    }

    #[test]
    fn exact_routes() {
        let r = router(&[("/foo", "foo"), ("/foo/bar", "foobar")]);
        assert_eq!(component(&r, "/foo").as_deref(), Some("foo"));
        assert_eq!(component(&r, "/foo/bar").as_deref(), Some("foobar"));
        assert_eq!(component(&r, "/foo/").as_deref(), Some("foo"));
        assert_eq!(component(&r, "/foo/baz"), None);
        assert_eq!(component(&r, "/foobar"), None);
        assert_eq!(component(&r, "/"), None);
    }

    #[test]
    fn exact_beats_wildcard_and_longer_prefix_wins() {
        let r = router(&[
            ("/...", "all"),
            ("/v1/docs/...", "docs"),
            ("/v1/docs", "list"),
            ("/v1/...", "v1"),
        ]);
        assert_eq!(component(&r, "/v1/docs").as_deref(), Some("list"));
        assert_eq!(component(&r, "/v1/docs/todos/a1").as_deref(), Some("docs"));
        assert_eq!(component(&r, "/v1/changes").as_deref(), Some("v1"));
        assert_eq!(component(&r, "/v1").as_deref(), Some("v1"));
        assert_eq!(component(&r, "/other").as_deref(), Some("all"));
        assert_eq!(component(&r, "/").as_deref(), Some("all"));
        // Order of declaration does not matter.
        let r = router(&[
            ("/one/...", "one"),
            ("/one/two/three/...", "three"),
            ("/one/two/...", "two"),
        ]);
        assert_eq!(
            component(&r, "/one/two/three/four").as_deref(),
            Some("three")
        );
        assert_eq!(component(&r, "/one/two/x").as_deref(), Some("two"));
        assert_eq!(component(&r, "/one/x").as_deref(), Some("one"));
    }

    #[test]
    fn unmatched_is_none() {
        let r = router(&[("/v1/docs/...", "docs")]);
        assert_eq!(component(&r, "/v2"), None);
        assert_eq!(component(&r, "/v1/docsx"), None);
    }

    #[test]
    fn spin_header_values() {
        let r = router(&[("/foo/...", "c"), ("/exact", "e")]);
        let m = r.route("/foo/bar").unwrap();
        assert_eq!(m.path_info, "/bar");
        assert_eq!(m.based_route, "/foo/...");
        assert_eq!(m.raw_route, "/foo/...");
        assert_eq!(m.component_route, "/foo");
        assert_eq!(r.route("/foo").unwrap().path_info, "");
        assert_eq!(r.route("/foo/").unwrap().path_info, "/");
        assert_eq!(r.route("/foo/a/b/").unwrap().path_info, "/a/b/");
        let e = r.route("/exact").unwrap();
        assert_eq!(e.path_info, "");
        assert_eq!(e.component_route, "/exact");
        let all = router(&[("/...", "all")]);
        assert_eq!(all.route("/1/2/3").unwrap().path_info, "/1/2/3");
        assert_eq!(all.route("/").unwrap().path_info, "/");
        assert_eq!(all.route("/").unwrap().component_route, "");
    }

    #[test]
    fn named_params() {
        let r = router(&[
            ("/users/:id/...", "u"),
            ("/users/me", "me"),
            ("/1/:two/3", "p"),
        ]);
        let m = r.route("/users/42/posts").unwrap();
        assert_eq!(m.component, "u");
        assert_eq!(m.params["id"], "42");
        assert_eq!(m.path_info, "/posts");
        assert_eq!(component(&r, "/users/me").as_deref(), Some("me"));
        assert_eq!(r.route("/1/2/3").unwrap().params["two"], "2");
        assert_eq!(component(&r, "/1/2/4"), None);
    }

    #[test]
    fn duplicates_last_wins() {
        let r = router(&[("/foo", "first"), ("/foo", "second")]);
        assert_eq!(component(&r, "/foo").as_deref(), Some("second"));
        assert_eq!(r.routes().count(), 1);
    }

    #[test]
    fn bad_routes_are_rejected() {
        assert!(Router::build([("/a/*x", "c")]).is_err());
        assert!(Router::build([("/a/:/b", "c")]).is_err());
        assert!(Router::build([("/a/*/b", "c")]).is_err());
    }
}
