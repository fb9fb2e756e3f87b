//! Which route a request belongs to.
//!
//! The request path is percent-decoded first, so that what is matched is what the upstream will
//! see (`/api/%61dmin` is `/api/admin`); a path the upstream could read as a different one — a
//! `.` or `..` segment, an empty segment, an encoded `/` or `\`, a control character — is
//! refused instead. The longest prefix wins, segment-wise (`/api` matches `/api` and `/api/x`,
//! never `/apix`); among routes with that prefix, the one listing the method (`GET` also
//! admits `HEAD`), else the one listing none. A method no route of the longest prefix takes is
//! refused (405): it never falls through to a shorter prefix, which could be public. A path no
//! prefix matches is refused (404).

use http::Method;
use percent_encoding::percent_decode_str;

use crate::config::RouteConfig;

/// Why a request has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// The path is not one the gateway forwards (see the module docs).
    BadPath(&'static str),
    /// No prefix matches.
    NotFound,
    /// The prefix matches, but not with this method; the methods it takes.
    MethodNotAllowed(Vec<Method>),
}

/// The routes, grouped by prefix, longest first.
#[derive(Debug, Clone)]
pub struct RouteTable {
    groups: Vec<Group>,
}

#[derive(Debug, Clone)]
struct Group {
    prefix: String,
    /// (method, route index) for routes that list methods.
    by_method: Vec<(Method, usize)>,
    /// The route of this prefix that lists no methods.
    any: Option<usize>,
}

impl RouteTable {
    /// Groups `routes` (indexes into it are what [`RouteTable::find`] returns). Two routes
    /// with the same prefix and a method in common, or both without methods, are an error:
    /// `(line of the later one, message)`.
    pub fn new(routes: &[RouteConfig]) -> Result<Self, (usize, String)> {
        let mut groups: Vec<Group> = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let group = match groups.iter_mut().position(|g| g.prefix == route.prefix) {
                Some(g) => &mut groups[g],
                None => {
                    groups.push(Group {
                        prefix: route.prefix.clone(),
                        by_method: Vec::new(),
                        any: None,
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            let clash = |other: usize| {
                (
                    route.line,
                    format!(
                        "the route on line {} has the same prefix {:?} and takes the same methods",
                        routes[other].line, route.prefix
                    ),
                )
            };
            if route.methods.is_empty() {
                if let Some(other) = group.any {
                    return Err(clash(other));
                }
                group.any = Some(i);
            }
            for method in &route.methods {
                if let Some((_, other)) = group.by_method.iter().find(|(m, _)| m == method) {
                    return Err(clash(*other));
                }
                group.by_method.push((method.clone(), i));
            }
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.prefix.len()));
        Ok(Self { groups })
    }

    /// The route for a request with this method and raw (still percent-encoded) path.
    pub fn find(&self, method: &Method, raw_path: &str) -> Result<usize, NoRoute> {
        let path = decoded_path(raw_path).map_err(NoRoute::BadPath)?;
        let group = self
            .groups
            .iter()
            .find(|g| under(&path, g.prefix.as_bytes()))
            .ok_or(NoRoute::NotFound)?;
        let listed = |m: &Method| {
            group
                .by_method
                .iter()
                .find(|(l, _)| l == m)
                .map(|(_, i)| *i)
        };
        listed(method)
            .or_else(|| {
                (*method == Method::HEAD)
                    .then(|| listed(&Method::GET))
                    .flatten()
            })
            .or(group.any)
            .ok_or_else(|| {
                let mut allowed: Vec<Method> =
                    group.by_method.iter().map(|(m, _)| m.clone()).collect();
                if allowed.contains(&Method::GET) && !allowed.contains(&Method::HEAD) {
                    allowed.push(Method::HEAD);
                }
                NoRoute::MethodNotAllowed(allowed)
            })
    }
}

/// Whether `path` is `prefix` or below it, segment-wise.
fn under(path: &[u8], prefix: &[u8]) -> bool {
    prefix == b"/"
        || (path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/'))
}

/// The percent-decoded path, or why it is refused.
fn decoded_path(raw: &str) -> Result<std::borrow::Cow<'_, [u8]>, &'static str> {
    if !raw.starts_with('/') {
        return Err("the request target is not an absolute path");
    }
    let bytes = raw.as_bytes();
    let encoded_separator = bytes.windows(3).any(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    });
    if encoded_separator || bytes.contains(&b'\\') {
        return Err("the path holds an encoded `/` or a `\\`");
    }
    let path: std::borrow::Cow<'_, [u8]> = percent_decode_str(raw).into();
    if path.iter().any(|b| b.is_ascii_control()) {
        return Err("the path holds a control character");
    }
    let segments = path[1..].split(|b| *b == b'/');
    let count = path[1..].split(|b| *b == b'/').count();
    for (i, segment) in segments.enumerate() {
        // An empty last segment is a trailing slash, which is fine.
        if (segment.is_empty() && i + 1 < count) || segment == b"." || segment == b".." {
            return Err("the path has an empty, `.` or `..` segment");
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;

    fn route(prefix: &str, methods: &[Method], line: usize) -> RouteConfig {
        RouteConfig {
            name: prefix.into(),
            prefix: prefix.into(),
            methods: methods.to_vec(),
            upstream: Upstream {
                authority: "127.0.0.1:1".parse().unwrap(),
                base_path: String::new(),
            },
            scopes: Vec::new(),
            public: false,
            preserve_host: false,
            forward_metadata: false,
            response_timeout: None,
            line,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(&[
            route("/", &[], 1),                                    // 0
            route("/api", &[], 2),                                 // 1
            route("/api/orders", &[Method::GET], 3),               // 2
            route("/api/orders", &[Method::POST, Method::PUT], 4), // 3
            route("/api/admin", &[Method::POST], 5),               // 4
        ])
        .unwrap()
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = table();
        let get = |p: &str| t.find(&Method::GET, p);
        assert_eq!(get("/api"), Ok(1));
        assert_eq!(get("/api/"), Ok(1));
        assert_eq!(get("/api/things"), Ok(1));
        assert_eq!(get("/apix"), Ok(0), "/api is not a prefix of /apix");
        assert_eq!(get("/api/ordersx"), Ok(1));
        assert_eq!(get("/api/orders"), Ok(2));
        assert_eq!(get("/api/orders/7"), Ok(2));
        assert_eq!(get("/"), Ok(0));
        assert_eq!(get("/other"), Ok(0));

        let t = RouteTable::new(&[route("/api", &[], 1)]).unwrap();
        assert_eq!(t.find(&Method::GET, "/apix"), Err(NoRoute::NotFound));
        assert_eq!(t.find(&Method::GET, "/"), Err(NoRoute::NotFound));
        assert_eq!(t.find(&Method::GET, "/ap"), Err(NoRoute::NotFound));
    }

    #[test]
    fn methods_pick_the_route_and_never_fall_through_to_a_shorter_prefix() {
        let t = table();
        assert_eq!(t.find(&Method::POST, "/api/orders"), Ok(3));
        assert_eq!(t.find(&Method::PUT, "/api/orders/1"), Ok(3));
        assert_eq!(
            t.find(&Method::HEAD, "/api/orders"),
            Ok(2),
            "GET admits HEAD"
        );
        assert_eq!(
            t.find(&Method::DELETE, "/api/orders"),
            Err(NoRoute::MethodNotAllowed(vec![
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::HEAD
            ])),
            "not the catch-all / route"
        );
        assert_eq!(
            t.find(&Method::GET, "/api/admin/users"),
            Err(NoRoute::MethodNotAllowed(vec![Method::POST]))
        );
    }

    #[test]
    fn paths_are_matched_decoded_and_ambiguous_ones_refused() {
        let t = table();
        assert_eq!(
            t.find(&Method::POST, "/api/%61dmin"),
            Ok(4),
            "decoded before matching"
        );
        assert_eq!(t.find(&Method::GET, "/api/%6Frders"), Ok(2));
        for bad in [
            "/api/../admin",
            "/api/./orders",
            "/api/%2e%2e/admin",
            "/api/%2E/orders",
            "/api//orders",
            "/api%2forders",
            "/api%2Forders",
            "/api%5corders",
            "/api\\orders",
            "/api/%00",
            "/api/%0d%0a",
            "*",
            "",
            "api",
        ] {
            assert!(
                matches!(t.find(&Method::GET, bad), Err(NoRoute::BadPath(_))),
                "{bad}"
            );
        }
        // Non-UTF-8 after decoding is just bytes.
        assert_eq!(t.find(&Method::GET, "/api/%ff"), Ok(1));
    }

    #[test]
    fn clashing_routes_are_refused() {
        let e = RouteTable::new(&[route("/a", &[], 3), route("/a", &[], 7)]).unwrap_err();
        assert_eq!(e.0, 7);
        assert!(e.1.contains("line 3"), "{}", e.1);
        let e = RouteTable::new(&[
            route("/a", &[Method::GET, Method::POST], 3),
            route("/a", &[Method::POST], 9),
        ])
        .unwrap_err();
        assert_eq!(e.0, 9);
        assert!(RouteTable::new(&[route("/a", &[Method::GET], 3), route("/a", &[], 9)]).is_ok());
    }
}
