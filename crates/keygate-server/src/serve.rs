//! `keygate serve`: the store, the bootstrap admin key, the background jobs, the HTTP server
//! and a graceful shutdown. [`Service::open`] builds everything but the listener, so tests
//! can serve [`Service::router`] in-process.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use keygate::core::scope::ADMIN;
use keygate::core::{Actor, Audit, Clock, KeyRecord, KeySpec, Lifetime};
use keygate::{CacheConfig, Keygate, PlainKey};

use crate::config::Settings;
use crate::logging::init_logging;
use crate::{AppState, Failure, app};

/// A `Duration` from a lifetime.
fn duration(lifetime: Lifetime) -> Duration {
    Duration::from_millis(lifetime.as_ms().unsigned_abs())
}

/// The service, built from its settings: the store opened, the keygate over it, the state
/// the HTTP application is served from.
#[derive(Debug)]
pub struct Service {
    /// The verifier and key manager.
    pub keygate: Keygate,
    /// What every request handler reaches.
    pub state: AppState,
    settings: Settings,
}

impl Service {
    /// Opens the store named by `settings` and builds the service over it, on `clock` (the
    /// system clock in production; a fixed one in tests).
    pub async fn open(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, Failure> {
        let keygate = long_running(&settings, clock).await?;
        let state = AppState::new(keygate.clone(), &settings);
        Ok(Self {
            keygate,
            state,
            settings,
        })
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The HTTP application: the JSON API, the operations endpoints and the admin UI.
    pub fn router(&self) -> crate::api::Application {
        app(self.state.clone())
    }

    /// Starts the background jobs (webhook sender, scheduler) on the current runtime.
    pub fn spawn_jobs(&self) {
        tokio::spawn(crate::jobs::deliver::run(self.keygate.clone()));
        if let Some(mailer) = &self.settings.mailer {
            tokio::spawn(crate::jobs::email::run(
                self.keygate.clone(),
                mailer.clone(),
            ));
        }
        tokio::spawn(crate::jobs::scheduler::run(
            self.keygate.clone(),
            self.settings.sweep.clone(),
            duration(self.settings.sweep_every),
            duration(self.settings.usage_retention),
        ));
    }
}

/// The long-running keygate of `serve` and `gateway`, over the store `settings` name: cached
/// (the store's change feed reaches the cache), last-used times written in the background.
pub async fn long_running(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Keygate, Failure> {
    let store = keygate::open(&settings.database).await?;
    let cache = (settings.cache_size > 0).then(|| CacheConfig {
        ttl: duration(settings.cache_ttl),
        negative_ttl: duration(settings.cache_ttl).min(Duration::from_secs(10)),
        capacity: settings.cache_size,
    });
    let limiter = match &settings.redis {
        None => keygate::limits::Limiter::Local(keygate::limits::LocalLimiter::default()),
        Some(url) => keygate::limits::Limiter::Redis(
            keygate::limits::RedisLimiter::builder(url.clone())
                .clock(clock.clone())
                .timeout(settings.redis_timeout)
                .connect()
                .await
                .map_err(|e| Failure::Config(format!("redis: {e}")))?,
        ),
    };
    Ok(Keygate::builder(store)
        .prefix(settings.prefix.clone())
        .cache(cache)
        .limiter(limiter)
        .trusted_proxies(settings.trusted_proxies.clone())
        .clock(clock)
        .sealing_key(settings.sealing_key.clone())
        .allow_private_webhooks(settings.allow_private_webhooks)
        .email_routing(settings.email_routing.clone())
        .usage_flush_interval(Some(duration(settings.usage_flush)))
        .retire_when_switched(settings.retire_when_switched)?
        .build())
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> Result<(), Failure> {
    // Keep the guard to the end: dropping it flushes the log lines still queued.
    let (_log_guard, access_log) = init_logging(settings.log_format, settings.log_level);
    let shutdown = shutdown_signal()?;
    let mut service = Service::open(settings, Arc::new(keygate::SystemClock)).await?;
    service.state.set_access_log(access_log);
    if let Some((record, key)) = bootstrap(&service.keygate).await? {
        print_bootstrap_key(&record, &key)?;
    }
    service.spawn_jobs();
    let listen = &service.settings.listen;
    let listener = bind(listen).await?;
    let addr = listener.local_addr()?;
    let database = without_password(&service.settings.database);
    let limits = crate::config::capped(&service.settings.connections);
    tracing::info!(%addr, %database, max_connections = limits.max_connections, "listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let metrics_listener = match &service.settings.metrics_listen {
        Some(address) => {
            let listener = bind(address).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
            let limits = keygate_gateway::accept::Limits {
                max_connections: 16,
                ..limits.clone()
            };
            let state = service.state.clone();
            Some(tokio::spawn(serve_router(
                listener,
                limits,
                Arc::default(),
                metrics_router(state),
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    let api = serve_router(
        listener,
        limits,
        service.state.connections.clone(),
        service.router(),
        stopped(stop_rx),
    );
    tokio::pin!(api);
    tokio::select! {
        () = &mut api => {}
        () = shutdown => {
            let _ = stop_tx.send(true);
            api.await;
        }
    }
    let _ = stop_tx.send(true);
    if let Some(task) = metrics_listener {
        let _ = task.await;
    }
    tracing::info!("shutting down: in-flight requests finished; writing key usage");
    if let Err(e) = service.keygate.flush_usage().await {
        tracing::error!(error = %e, "could not write key usage");
    }
    service.keygate.close().await;
    Ok(())
}

async fn bind(address: &str) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Failure::Config(format!("cannot listen on {address}: {e}")))
}

/// Serves `router` on `listener` within `limits` (connection cap, header timeout, shutdown
/// grace) until `stop` resolves; each request carries its peer's address as [`ConnectInfo`].
async fn serve_router<S>(
    listener: tokio::net::TcpListener,
    limits: keygate_gateway::accept::Limits,
    stats: Arc<keygate_gateway::accept::ConnectionStats>,
    router: S,
    stop: impl std::future::Future<Output = ()>,
) where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use tower::ServiceExt;
    keygate_gateway::accept::serve(
        listener,
        &limits,
        stats,
        None,
        |peer, _| {
            let router = router.clone();
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            })
        },
        stop,
    )
    .await;
}

/// `/metrics` alone, for `metrics_listen`.
fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(app): axum::extract::State<AppState>| async move {
                    crate::api::ops::metrics_text(&app).await
                },
            ),
        )
        .with_state(state)
}

/// On an empty database, issues one `keygate:admin` key (atomically: several nodes starting
/// on one empty database issue one key between them). Later starts find keys: `None`.
pub async fn bootstrap(keygate: &Keygate) -> Result<Option<(KeyRecord, PlainKey)>, Failure> {
    let spec = KeySpec {
        name: "bootstrap admin".into(),
        scopes: vec![ADMIN.into()],
        ..KeySpec::default()
    };
    let issued = keygate.issue_first(spec, &Audit::by(Actor::Server)).await?;
    if let Some((record, _)) = &issued {
        tracing::warn!(key_id = %record.id, "empty database: issued a bootstrap admin key (printed once on stdout)");
    }
    Ok(issued)
}

/// Prints the bootstrap key once on stdout, never to the log.
fn print_bootstrap_key(record: &KeyRecord, key: &PlainKey) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "keygate: the database had no keys, so this admin key ({}, scope {ADMIN}) was issued.\n\
         keygate: it is shown only this once; store it now:\n\n{}\n",
        record.id,
        key.expose()
    )?;
    out.flush()?;
    Ok(())
}

/// A database URL fit for a log line: any password replaced.
pub(crate) fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled, so a signal that arrives during start-up is not lost
/// (nor does it kill the process half-way).
pub(crate) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutdown signal received");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown signal received");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            without_password("postgres://app:s3cret@db:5432/keys"),
            "postgres://app:***@db:5432/keys"
        );
        assert_eq!(
            without_password("sqlite://keygate.db"),
            "sqlite://keygate.db"
        );
    }
}
