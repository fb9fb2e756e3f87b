//! `keygate serve`: logging, the store, the bootstrap admin key, the HTTP server and a
//! graceful shutdown.

use std::io::Write;
use std::sync::Arc;

use std::time::Duration;

use keygate::core::scope::ADMIN;
use keygate::core::{Actor, Audit, KeySpec};
use keygate::{CacheConfig, Keygate};

use crate::Failure;
use crate::api;
use crate::cli::{LogFormat, LogLevel};
use crate::config::Settings;
use crate::metrics::Metrics;

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> Result<(), Failure> {
    // Keep the guard to the end: dropping it flushes the log lines still queued.
    let _log_guard = init_logging(settings.log_format, settings.log_level);
    let shutdown = shutdown_signal()?;
    let store = keygate::store::open(&settings.database).await?;
    let keygate = verifier(&settings, store.clone());
    bootstrap(&keygate).await?;
    // reqwest's TLS runs on rustls with the ring provider (no aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::spawn(crate::webhooks::deliver_forever(keygate.clone()));
    tokio::spawn(scheduler(
        keygate.clone(),
        settings.sweep.clone(),
        Duration::from_millis(settings.sweep_every.as_ms().unsigned_abs()),
    ));
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| Failure::Config(format!("cannot listen on {}: {e}", settings.listen)))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, database = %without_password(&settings.database), "listening");
    let admin = Arc::new(crate::admin::AdminUi::new(
        Duration::from_millis(settings.admin_idle_timeout.as_ms().unsigned_abs()),
        settings.secure_cookies,
        settings.trust_forwarded_for,
    ));
    let app = api::router(keygate.clone(), Arc::new(Metrics::default()), admin);
    // The peer address feeds the admin UI's sign-in throttle.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("shutting down: in-flight requests finished; writing key usage");
    if let Err(e) = keygate.flush_usage().await {
        tracing::error!(error = %e, "could not write key usage");
    }
    store.close().await;
    served.map_err(Failure::Io)
}

/// The long-running verifier of `serve` and `gateway`: cached (so the store's change feed
/// reaches it), last-used times written in the background.
pub(crate) fn verifier(settings: &Settings, store: Arc<dyn keygate::store::Store>) -> Keygate {
    let cache = (settings.cache_size > 0).then(|| CacheConfig {
        ttl: Duration::from_millis(settings.cache_ttl.as_ms().unsigned_abs()),
        negative_ttl: Duration::from_millis(settings.cache_ttl.as_ms().unsigned_abs())
            .min(Duration::from_secs(10)),
        capacity: settings.cache_size,
    });
    Keygate::builder(store)
        .prefix(settings.prefix.clone())
        .cache(cache)
        .sealing_key(settings.sealing_key.clone())
        .usage_flush_interval(Some(Duration::from_millis(
            settings.usage_flush.as_ms().unsigned_abs(),
        )))
        .build()
}

/// Sweeps the keys every `every`: the maximum-age policy, expiry warnings, expiry notices.
/// Several nodes may sweep at once: each notice is written once per key however many run
/// (a race between two nodes may at worst write one twice).
async fn scheduler(keygate: Keygate, sweep: keygate::Sweep, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match keygate
            .sweep(&sweep, false, &Audit::by(Actor::Scheduler))
            .await
        {
            Ok(report) => {
                let acted = report.expiry_shortened.len()
                    + report.max_age_notices.len()
                    + report.expiring_soon_notices.len()
                    + report.expired_notices.len();
                if acted > 0 {
                    tracing::info!(
                        expiry_shortened = report.expiry_shortened.len(),
                        max_age_notices = report.max_age_notices.len(),
                        expiring_soon = report.expiring_soon_notices.len(),
                        expired = report.expired_notices.len(),
                        "sweep"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed; will retry"),
        }
    }
}

/// On an empty database, issues one `keygate:admin` key and prints it once on stdout (never
/// to the log). Later starts find keys and print nothing.
async fn bootstrap(keygate: &Keygate) -> Result<(), Failure> {
    let spec = KeySpec {
        name: "bootstrap admin".into(),
        scopes: vec![ADMIN.into()],
        ..KeySpec::default()
    };
    // Atomic: several nodes starting on one empty database issue one key between them.
    let Some((record, key)) = keygate.issue_first(spec, &Audit::by(Actor::Server)).await? else {
        return Ok(());
    };
    tracing::warn!(key_id = %record.id, "empty database: issued a bootstrap admin key (printed once on stdout)");
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

/// Logs go to stderr through a background writer, so a request never waits on a write(2);
/// the queue blocks rather than drop lines when it is full.
pub(crate) fn init_logging(
    format: LogFormat,
    level: LogLevel,
) -> tracing_appender::non_blocking::WorkerGuard {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
    };
    guard
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
