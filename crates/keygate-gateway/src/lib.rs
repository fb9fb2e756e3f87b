//! keygate-gateway: a reverse proxy in front of an existing HTTP API that lets through only
//! requests with a valid API key, and tells the API who is calling.
//!
//! ```no_run
//! use keygate::Keygate;
//! use keygate_gateway::{Gateway, GatewayConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let text = std::fs::read_to_string("keygate.toml")?;
//! let config = GatewayConfig::from_toml(&text, "keygate.toml")?;
//! let keygate = Keygate::new(keygate::open("sqlite://keygate.db").await?);
//! let listener = tokio::net::TcpListener::bind(&config.listen).await?;
//! let admin = tokio::net::TcpListener::bind(&config.admin_listen).await?;
//! Gateway::new(keygate, config)?
//!     .serve(listener, admin, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await;
//! # Ok(()) }
//! ```
//!
//! Each request is matched to a route ([`routes`]); a route that is not public checks the key
//! with the library's own [`KeygateLayer::check`] (the same refusals: 401 with
//! `WWW-Authenticate`, 403, 503, as `application/problem+json`); the request then goes to the
//! route's upstream without the credential, with hop-by-hop and client-sent `X-Keygate-*`
//! headers removed and the verified identity added ([`headers`]); bodies stream both ways,
//! upgrades (WebSocket) are joined end to end. The gateway's own answers — no route (404),
//! wrong method (405), a path it will not forward (400), an upstream that cannot be reached
//! or resets (502) or is too slow (504) — are problem+json too, and every response carries
//! `X-Request-Id`. A second listener serves `/healthz`, `/readyz` (the store answers) and
//! Prometheus `/metrics`.

pub mod accept;
pub mod body;
pub mod config;
pub mod headers;
pub mod metrics;
mod proxy;
pub mod routes;
pub mod timer;
mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::response::IntoResponse;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use keygate::{Keygate, Problem};
use tokio::net::TcpListener;

pub use crate::body::{AccessLogger, AccessRecord, ResponseBody, TracingAccessLog};
pub use crate::config::{ConfigError, GatewayConfig, RouteConfig};

use crate::metrics::Metrics;
use crate::proxy::{ClientConnection, Proxy, Route};
use crate::routes::RouteTable;
use crate::upstream::IdlePool;

/// Most idle upstream connections kept for new client connections (each client connection
/// also keeps the ones it uses while it is open).
const MAX_IDLE_UPSTREAM: usize = 1024;

/// The gateway: routes, the verifier, the upstream connections and the counters.
#[derive(Debug, Clone)]
pub struct Gateway {
    proxy: Arc<Proxy>,
    keygate: Keygate,
    limits: accept::Limits,
    /// The data plane's threads; kept as long as the gateway (so that connections to the
    /// store or Redis opened from them live as long as the verifier that uses them).
    workers: Arc<accept::Workers>,
}

impl Gateway {
    /// A gateway checking keys with `keygate` and forwarding as `config` says. Fails (naming
    /// the route's line) on routes that clash or require an invalid scope, or if its worker
    /// threads cannot be started: one per CPU this process may use, each serving its share of
    /// the client connections on a single-threaded runtime of its own, ended when the last
    /// clone of the gateway is dropped.
    pub fn new(keygate: Keygate, config: GatewayConfig) -> Result<Self, ConfigError> {
        let table = RouteTable::new(&config.routes).map_err(|(line, message)| ConfigError {
            file: "(gateway config)".into(),
            line,
            setting: "gateway.route.prefix".into(),
            message,
        })?;
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            if let Some(bad) = route
                .scopes
                .iter()
                .find(|s| keygate_core::scope::check_scope(s).is_err())
            {
                return Err(ConfigError {
                    file: "(gateway config)".into(),
                    line: route.line,
                    setting: "gateway.route.scopes".into(),
                    message: format!("{bad:?} is not a scope"),
                });
            }
            let layer = (!route.public).then(|| {
                keygate
                    .layer()
                    .sources(config.credentials.clone())
                    .require_scopes(route.scopes.iter().cloned())
            });
            routes.push(Route {
                host: proxy::host_header(&route.upstream.authority),
                config: route.clone(),
                layer,
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(config.pool_idle_timeout));
        let idle = IdlePool::new(connector, config.pool_idle_timeout, MAX_IDLE_UPSTREAM);
        let route_names: Arc<[String]> = config.routes.iter().map(|r| r.name.clone()).collect();
        let metrics = Arc::new(Metrics::new(route_names.iter().map(String::as_str)));
        Ok(Self {
            proxy: Arc::new(Proxy {
                routes,
                route_names,
                table,
                sources: config.credentials.clone(),
                idle: Arc::new(idle),
                response_timeout: config.response_timeout,
                metrics,
                verifier: keygate.verifier().clone(),
                access_log: Arc::new(TracingAccessLog),
            }),
            keygate,
            workers: Arc::new(
                accept::Workers::per_cpu("keygate-gw").map_err(|e| ConfigError {
                    file: "(gateway)".into(),
                    line: 0,
                    setting: "gateway".into(),
                    message: format!("cannot start the worker threads: {e}"),
                })?,
            ),
            limits: accept::Limits {
                max_connections: accept::connection_cap(config.max_connections),
                header_read_timeout: config.header_read_timeout,
                shutdown_grace: config.shutdown_grace,
            },
        })
    }

    /// Sends the access log's lines to `logger` instead of `tracing` events
    /// ([`TracingAccessLog`], the default).
    pub fn access_log(mut self, logger: Arc<dyn AccessLogger>) -> Self {
        Arc::make_mut(&mut self.proxy).access_log = logger;
        self
    }

    /// The Prometheus text exposition of the gateway's counters.
    pub fn metrics(&self) -> String {
        self.proxy.metrics.render(&self.keygate)
    }

    /// Serves the data plane on `listener` and `/healthz`, `/readyz`, `/metrics` on `admin`
    /// until `shutdown` resolves; then stops accepting, lets open requests and streams finish
    /// within the shutdown grace period, and returns. The worker threads stay until the
    /// gateway is dropped: write what must be written (key usage) before that.
    pub async fn serve(
        &self,
        listener: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let admin_limits = accept::Limits {
            max_connections: 64,
            ..self.limits.clone()
        };
        let admin_task = {
            let gateway = self.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                let stats = Arc::new(accept::ConnectionStats::default());
                accept::serve(
                    admin,
                    &admin_limits,
                    stats,
                    None,
                    |_, _| {
                        let gateway = gateway.clone();
                        hyper::service::service_fn(move |request| {
                            let gateway = gateway.clone();
                            async move { gateway.admin(request).await }
                        })
                    },
                    stop,
                )
                .await;
            })
        };
        let proxy = self.proxy.clone();
        let data_plane = accept::serve(
            listener,
            &self.limits,
            self.proxy.metrics.connections.clone(),
            Some(&self.workers),
            move |peer, tracker| {
                let proxy = proxy.clone();
                let connection = Arc::new(ClientConnection::new(proxy.idle.clone()));
                hyper::service::service_fn(move |request| {
                    proxy
                        .clone()
                        .handle(peer, tracker.clone(), connection.clone(), request)
                })
            },
            stopped(stop_rx),
        );
        tokio::pin!(data_plane);
        tokio::select! {
            () = &mut data_plane => {}
            () = shutdown => {
                tracing::info!("shutting down the gateway");
                let _ = stop_tx.send(true);
                data_plane.await;
            }
        }
        let _ = stop_tx.send(true);
        let _ = admin_task.await;
    }

    /// The admin listener: `/healthz`, `/readyz`, `/metrics`.
    async fn admin(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let response = match request.uri().path() {
            "/healthz" => json_status("ok"),
            "/readyz" => match self.keygate.ping().await {
                Ok(()) => match self.keygate.shared_limits_health() {
                    None => json_status("ready"),
                    Some(health) => {
                        let detail = health.map_or_else(|why| why, |()| "shared".to_owned());
                        let body = serde_json::json!({"status": "ready", "rate_limits": detail});
                        axum::Json(body).into_response()
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "readiness: the key store does not answer");
                    Problem::unavailable().into_response()
                }
            },
            "/metrics" => {
                let mut response = self.metrics().into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => Problem::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "Not found",
                "the admin listener serves /healthz, /readyz and /metrics",
            )
            .into_response(),
        };
        Ok(response.map(|body| ResponseBody::local(body, None)))
    }
}

fn json_status(status: &'static str) -> axum::response::Response {
    let mut response = format!("{{\"status\":\"{status}\"}}").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
