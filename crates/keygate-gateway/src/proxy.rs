//! The proxy service: route, check the key, clean the headers, forward, stream back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::{IntoResponse, Response as AxumResponse};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keygate::{CredentialSource, KeygateLayer, Problem, ProblemCode, Verifier};

use crate::accept::Tracker;
use crate::body::{AccessLog, AccessLogger, ResponseBody};
use crate::config::{RouteConfig, Upstream};
use crate::headers::{self, Forwarding, Identity, REQUEST_ID};
use crate::metrics::{Metrics, Unrouted, UpstreamFailure};
use crate::routes::{NoRoute, RouteTable};
use crate::timer::ConnectionTimer;
use crate::upstream::{IdlePool, UpstreamError, Upstreams};

/// What every request of one gateway shares.
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    pub(crate) routes: Vec<Route>,
    pub(crate) route_names: Arc<[String]>,
    pub(crate) table: RouteTable,
    pub(crate) sources: Vec<CredentialSource>,
    /// Idle upstream connections, for client connections that have none yet.
    pub(crate) idle: Arc<IdlePool<Incoming>>,
    pub(crate) response_timeout: Duration,
    pub(crate) metrics: Arc<Metrics>,
    /// Finds the client's address behind trusted proxies, as the key checks do.
    pub(crate) verifier: Verifier,
    /// Where each request's access-log line goes.
    pub(crate) access_log: Arc<dyn AccessLogger>,
}

/// What one client connection keeps between its requests: its upstream connections, and the
/// forwarding and identity headers of its last request (a connection's requests usually come
/// from one client with one key, so these are made once, not per request).
#[derive(Debug)]
pub(crate) struct ClientConnection {
    upstreams: Upstreams<Incoming>,
    /// The upstream response timeouts of this connection's requests.
    timer: ConnectionTimer,
    last: Mutex<LastHeaders>,
}

#[derive(Debug, Default)]
struct LastHeaders {
    forwarding: Option<Forwarding>,
    identity: Option<Identity>,
}

impl ClientConnection {
    pub(crate) fn new(idle: Arc<IdlePool<Incoming>>) -> Self {
        Self {
            upstreams: Upstreams::new(idle),
            timer: ConnectionTimer::new(),
            last: Mutex::default(),
        }
    }

    /// Sets the forwarding headers naming `client`, and `key`'s identity headers.
    fn set_headers(
        &self,
        headers: &mut http::HeaderMap,
        client: std::net::IpAddr,
        key: Option<(&keygate::ApiKey, bool)>,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let host = headers.get(header::HOST);
        reuse(
            &mut last.forwarding,
            |f| f.is_for(client, host),
            || Forwarding::new(client, host),
        )
        .apply(headers);
        if let Some((key, metadata)) = key {
            reuse(
                &mut last.identity,
                |i| i.is_for(key, metadata),
                || Identity::of(key, metadata),
            )
            .apply(headers);
        }
    }
}

/// What `slot` holds if it `fits`, else a new value from `make`, kept in `slot`.
fn reuse<T>(slot: &mut Option<T>, fits: impl FnOnce(&T) -> bool, make: impl FnOnce() -> T) -> &T {
    if slot.as_ref().is_some_and(|held| !fits(held)) {
        *slot = None;
    }
    slot.get_or_insert_with(make)
}

/// A route and the layer that checks its keys (`None`: public).
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    /// The `Host` header naming the upstream (unless the route keeps the client's).
    pub(crate) host: HeaderValue,
    pub(crate) layer: Option<KeygateLayer>,
}

impl Proxy {
    /// Handles one request from `peer`.
    pub(crate) async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        tracker: Tracker,
        connection: Arc<ClientConnection>,
        mut request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let request_id = headers::request_id(request.headers());
        let mut log = AccessLog::new(self.clone(), request_id.clone(), request.method().clone());
        let index = match self.table.find(request.method(), request.uri().path()) {
            Ok(index) => index,
            Err(no_route) => return Ok(self.no_route(no_route, log, request_id)),
        };
        log.route = Some(index);
        self.metrics.request(index);
        let route = &self.routes[index];

        let admitted = match &route.layer {
            None => None,
            Some(layer) => match layer
                .check(request.headers(), request.uri().query(), Some(peer))
                .await
            {
                Ok(admitted) => Some(admitted),
                Err(refusal) => {
                    let code = refusal
                        .extensions()
                        .get::<ProblemCode>()
                        .map_or("OTHER", |c| c.0);
                    self.metrics.refused(index, code);
                    return Ok(local(refusal, log, request_id));
                }
            },
        };

        // What goes upstream: no credential, no hop-by-hop or spoofed identity headers; the
        // gateway's forwarding headers, the verified identity and the request id.
        let upgrade = headers::is_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        // The address the key was checked from; on a public route, found the same way.
        let client = admitted
            .as_ref()
            .and_then(|a| a.client)
            .unwrap_or_else(|| self.verifier.client_address(peer.ip(), &parts.headers));
        let query =
            keygate::credentials::strip(&mut parts.headers, parts.uri.query(), &self.sources);
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        headers::remove_keygate_headers(&mut parts.headers);
        // The gateway answers `Expect: 100-continue` itself, as it starts reading the body.
        parts.headers.remove(header::EXPECT);
        // Room for what is added below, grown once rather than insert by insert.
        parts.headers.reserve(12);
        connection.set_headers(
            &mut parts.headers,
            client,
            admitted
                .as_ref()
                .map(|a| (&a.key, route.config.forward_metadata)),
        );
        if let Some(admitted) = &admitted {
            log.key = Some(admitted.key.clone());
        }
        parts.headers.insert(REQUEST_ID, request_id.clone());
        if !route.config.preserve_host || !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, route.host.clone());
        }
        parts.uri = match upstream_uri(&route.config.upstream, parts.uri.path(), query.as_deref()) {
            Ok(uri) => uri,
            Err(_) => {
                return Ok(self.no_route(
                    NoRoute::BadPath("the path cannot be forwarded"),
                    log,
                    request_id,
                ));
            }
        };
        parts.version = Version::HTTP_11;

        let timeout = route
            .config
            .response_timeout
            .unwrap_or(self.response_timeout);
        let sent = tokio::time::Instant::now();
        let authority = &route.config.upstream.authority;
        let answer = connection
            .timer
            .timeout_at(
                sent + timeout,
                connection.upstreams.send(
                    authority,
                    Request::from_parts(parts, body),
                    sent.into_std(),
                ),
            )
            .await;
        let mut response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let timed_out = caused_by_timeout(&e);
                let why = if timed_out {
                    UpstreamFailure::Timeout
                } else {
                    UpstreamFailure::Unavailable
                };
                self.metrics.upstream_failed(index, why);
                tracing::warn!(request_id = request_id.to_str().unwrap_or("-"), route = %route.config.name, error = %error_chain(&e), "upstream request failed");
                let problem = if timed_out {
                    upstream_timeout("the upstream did not accept the connection in time")
                } else if matches!(e, UpstreamError::Connect(_)) {
                    upstream_unavailable("the upstream could not be reached")
                } else {
                    upstream_unavailable("the upstream closed the connection without a response")
                };
                return Ok(local(problem.into_response(), log, request_id));
            }
            Err(_) => {
                self.metrics
                    .upstream_failed(index, UpstreamFailure::Timeout);
                tracing::warn!(request_id = request_id.to_str().unwrap_or("-"), route = %route.config.name, timeout_ms = timeout.as_millis() as u64, "upstream response timed out");
                let problem = upstream_timeout("the upstream did not answer in time");
                return Ok(local(problem.into_response(), log, request_id));
            }
        };
        let took = sent.elapsed();
        let status = response.status();
        self.metrics.upstream(index, status.as_u16(), took);
        log.upstream_latency = Some(took);
        log.status = status.as_u16();

        let switched = status == StatusCode::SWITCHING_PROTOCOLS;
        if switched {
            match client_upgrade {
                Some(client_upgrade) => {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, upstream_upgrade, tracker));
                }
                None => {
                    // A 101 to a request that asked for no upgrade: nothing sane to pass on.
                    self.metrics
                        .upstream_failed(index, UpstreamFailure::Unavailable);
                    let problem = upstream_unavailable("the upstream switched protocols unasked");
                    return Ok(local(problem.into_response(), log, request_id));
                }
            }
        }
        let headers = response.headers_mut();
        headers::remove_hop_by_hop(headers, switched);
        headers.insert(REQUEST_ID, request_id);
        if let Some(admitted) = admitted {
            headers.extend(admitted.response_headers);
        }
        Ok(response.map(|body| ResponseBody::upstream(body, Some(log))))
    }

    fn no_route(
        &self,
        why: NoRoute,
        log: AccessLog,
        request_id: HeaderValue,
    ) -> Response<ResponseBody> {
        let response = match why {
            NoRoute::NotFound => {
                self.metrics.unrouted(Unrouted::NotFound);
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "NO_ROUTE",
                    "No route",
                    "no route of this gateway matches the path",
                )
                .into_response()
            }
            NoRoute::MethodNotAllowed(allowed) => {
                self.metrics.unrouted(Unrouted::MethodNotAllowed);
                let mut response = Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "METHOD_NOT_ALLOWED",
                    "Method not allowed",
                    "the route of this path does not take this method",
                )
                .into_response();
                let list: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
                if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
            NoRoute::BadPath(why) => {
                self.metrics.unrouted(Unrouted::BadPath);
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "BAD_PATH",
                    "Path not accepted",
                    why,
                )
                .into_response()
            }
        };
        local(response, log, request_id)
    }
}

/// A response the gateway made (`log` gets its status), with the request id.
fn local(
    mut response: AxumResponse,
    mut log: AccessLog,
    request_id: HeaderValue,
) -> Response<ResponseBody> {
    log.status = response.status().as_u16();
    response.headers_mut().insert(REQUEST_ID, request_id);
    response.map(|body| ResponseBody::local(body, Some(log)))
}

fn upstream_timeout(detail: &'static str) -> Problem {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        "UPSTREAM_TIMEOUT",
        "Upstream timed out",
        detail,
    )
}

fn upstream_unavailable(detail: &'static str) -> Problem {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "UPSTREAM_UNAVAILABLE",
        "Upstream unavailable",
        detail,
    )
}

/// The request target sent upstream, in origin form: `<base path><path>[?query]`.
fn upstream_uri(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
    let mut target = String::with_capacity(
        upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    target.push_str(&upstream.base_path);
    target.push_str(path);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    Ok(Uri::from(PathAndQuery::try_from(target)?))
}

/// The `Host` header for requests to `authority`: its host, and its port unless it is HTTP's
/// default (80).
pub(crate) fn host_header(authority: &Authority) -> HeaderValue {
    let text = match authority.port_u16() {
        Some(80) => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(text).expect("an authority is a valid header value")
}

/// Whether an I/O timeout (the connect timeout) is somewhere in the error's causes.
fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The error and its causes on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Joins the client's and the upstream's upgraded connections (WebSocket and the like) until
/// either side closes or the shutdown grace period ends.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    tracker: Tracker,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "an upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        () = tracker.cut() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_targets_join_base_path_path_and_query_and_hosts_name_the_upstream() {
        let up = |base: &str| Upstream {
            authority: "10.0.0.1:8000".parse().unwrap(),
            base_path: base.into(),
        };
        assert_eq!(upstream_uri(&up(""), "/api/x", None).unwrap(), "/api/x");
        assert_eq!(
            upstream_uri(&up("/v2"), "/api/x%20y", Some("a=1&b=%C3%A9")).unwrap(),
            "/v2/api/x%20y?a=1&b=%C3%A9"
        );
        let host = |authority: &str| host_header(&authority.parse().unwrap());
        assert_eq!(host("10.0.0.1:8000"), "10.0.0.1:8000");
        assert_eq!(host("api.internal:80"), "api.internal");
        assert_eq!(host("api.internal"), "api.internal");
        assert_eq!(host("[::1]:8080"), "[::1]:8080");
    }

    #[test]
    fn a_connection_s_next_request_gets_its_own_client_host_and_key_headers() {
        use crate::headers::test_key;
        let connection = ClientConnection::new(Arc::new(IdlePool::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
            Duration::from_secs(60),
            4,
        )));
        let (ada, bob) = (
            test_key("ada", Some("acct_1"), &["a"]),
            test_key("bob", None, &["b"]),
        );
        let sent = |client: &str, host: &str, key: Option<&keygate::ApiKey>| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            connection.set_headers(
                &mut headers,
                client.parse().unwrap(),
                key.map(|k| (k, false)),
            );
            headers
        };
        let first = sent("10.0.0.1", "a.example", Some(&ada));
        assert_eq!(first["x-keygate-key-name"], "ada");
        assert_eq!(first["x-keygate-owner"], "acct_1");
        assert_eq!(first["x-forwarded-for"], "10.0.0.1");
        assert_eq!(sent("10.0.0.1", "a.example", Some(&ada)), first, "reused");
        let second = sent("10.0.0.2", "b.example", Some(&bob));
        assert_eq!(second["x-keygate-key-name"], "bob");
        assert!(second.get("x-keygate-owner").is_none());
        assert_eq!(second["x-keygate-scopes"], "b");
        assert_eq!(second["x-forwarded-for"], "10.0.0.2");
        assert_eq!(second["x-forwarded-host"], "b.example");
        let public = sent("10.0.0.2", "b.example", None);
        assert!(
            public.get("x-keygate-key-id").is_none(),
            "no key, no identity"
        );
    }

    #[test]
    fn a_connect_timeout_is_found_among_the_causes() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tcp connect error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let timed_out = Wrapper(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ));
        assert!(caused_by_timeout(&timed_out));
        assert_eq!(
            error_chain(&timed_out),
            "tcp connect error: connect timed out"
        );
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!caused_by_timeout(&refused));
    }
}
