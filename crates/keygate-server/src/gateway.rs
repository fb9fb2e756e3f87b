//! `keygate gateway`: reads the config file's `[gateway]` table, opens the store like `serve`
//! (same cache, so revocations reach it through the change feed), and runs the reverse proxy
//! until SIGINT or SIGTERM.

use std::path::Path;

use keygate_gateway::{Gateway, GatewayConfig};

use crate::Failure;
use crate::cli::args::{GatewayArgs, LogFormat, LogLevel};
use crate::config::Settings;
use crate::logging::init_logging;
use crate::serve::{long_running, shutdown_signal, without_password};

/// Runs the gateway until SIGINT or SIGTERM, then lets open requests and streams finish
/// (within the shutdown grace period) and writes pending last-used times.
pub async fn run(
    mut settings: Settings,
    config_file: Option<&Path>,
    args: GatewayArgs,
) -> Result<(), Failure> {
    let Some(path) = config_file else {
        return Err(Failure::Config(
            "keygate gateway needs --config FILE (or KEYGATE_CONFIG) with its [gateway] table and [[gateway.route]]s".into(),
        ));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Config(format!("cannot read config file {}: {e}", path.display())))?;
    let mut config =
        GatewayConfig::from_toml(&text, path).map_err(|e| Failure::Config(e.to_string()))?;
    // Flags and KEYGATE_* variables win over the file.
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        config.admin_listen = admin;
    }
    if let Some(t) = args.connect_timeout {
        config.connect_timeout = t;
    }
    if let Some(t) = args.response_timeout {
        config.response_timeout = t;
    }
    if let Some(n) = args.max_connections {
        config.max_connections = n as usize;
    }
    if let Some(t) = args.shutdown_grace {
        config.shutdown_grace = t;
    }
    if let Some(ttl) = args.cache_ttl {
        settings.cache_ttl = ttl;
    }
    if let Some(size) = args.cache_size {
        settings.cache_size = size;
    }
    if let Some(every) = args.usage_flush {
        settings.usage_flush = every;
    }
    let format: LogFormat = args.log_format.unwrap_or(settings.log_format);
    let level: LogLevel = args.log_level.unwrap_or(settings.log_level);

    // Keep the guard to the end: dropping it flushes the log lines still queued.
    let (_log_guard, access_log) = init_logging(format, level);
    let shutdown = shutdown_signal()?;
    let keygate = long_running(&settings, std::sync::Arc::new(keygate::SystemClock)).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Failure::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let admin = tokio::net::TcpListener::bind(&config.admin_listen)
        .await
        .map_err(|e| {
            Failure::Config(format!(
                "cannot listen on {} (admin): {e}",
                config.admin_listen
            ))
        })?;
    let routes = config.routes.len();
    let gateway = Gateway::new(keygate.clone(), config)
        .map_err(|e| Failure::Config(e.to_string()))?
        .access_log(std::sync::Arc::new(access_log));
    tracing::info!(
        addr = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        routes,
        database = %without_password(&settings.database),
        "gateway listening"
    );
    gateway.serve(listener, admin, shutdown).await;
    tracing::info!("gateway stopped; writing key usage");
    if let Err(e) = keygate.flush_usage().await {
        tracing::error!(error = %e, "could not write key usage");
    }
    keygate.close().await;
    // Last: store connections opened from its worker threads were usable until now.
    drop(gateway);
    Ok(())
}
