//! keygate-server: the `keygate` command as a library — the key service (`keygate serve`: the
//! JSON API, `/v1/verify`, the admin web UI, the background jobs) and key management from the
//! shell. `main.rs` only parses the command line and calls [`run`]; tests serve [`app`]
//! in-process.
//!
//! Modules by job: [`cli`] (the command line), [`api`] (JSON `/v1`, operations, OpenAPI),
//! [`admin`] (the web UI), [`jobs`] (scheduler, webhook sender), [`config`] (settings),
//! [`serve`] (putting the service together). The store is reached only through the
//! [`keygate`] library.

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod serve;

use std::sync::Arc;

use keygate::Keygate;

pub use cli::{Cli, Command};
pub use config::Settings;

/// What every request handler can reach: one shared [`Shared`], so that the clones axum makes
/// per request and per layer cost one reference count, not one per field.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Debug, Clone)]
pub struct Shared {
    /// The verifier and key manager.
    pub keygate: Keygate,
    /// Request counters.
    pub metrics: Arc<metrics::Metrics>,
    /// The rendered OpenAPI document.
    pub openapi: Arc<String>,
    /// The admin web UI's sessions and sign-in throttle.
    pub admin: Arc<admin::AdminUi>,
    /// Where each request's log line goes.
    pub access_log: logging::AccessLog,
    /// The listener's connection counters (shown in `/metrics`).
    pub connections: Arc<keygate_gateway::accept::ConnectionStats>,
    /// Most time to receive a request's whole body.
    pub body_read_timeout: std::time::Duration,
    /// Who may read `/metrics` on the main listener.
    pub metrics_access: api::ops::MetricsAccess,
}

impl AppState {
    /// The state of a service over `keygate` with `settings`.
    pub fn new(keygate: Keygate, settings: &Settings) -> Self {
        let admin = admin::AdminUi::new(
            std::time::Duration::from_millis(settings.admin_idle_timeout.as_ms().unsigned_abs()),
            settings.secure_cookies,
            settings.trust_forwarded_for,
        );
        Self(Arc::new(Shared {
            openapi: Arc::new(api::document(&keygate)),
            keygate,
            metrics: Arc::default(),
            admin: Arc::new(admin),
            access_log: logging::AccessLog::default(),
            connections: Arc::default(),
            body_read_timeout: settings.body_read_timeout,
            metrics_access: if settings.metrics_listen.is_some() {
                api::ops::MetricsAccess::Elsewhere
            } else if settings.metrics_require_key {
                api::ops::MetricsAccess::Key
            } else {
                api::ops::MetricsAccess::Public
            },
        }))
    }

    /// Sends each request's log line to `access_log` (in this state; clones made before keep
    /// theirs).
    pub fn set_access_log(&mut self, access_log: logging::AccessLog) {
        Arc::make_mut(&mut self.0).access_log = access_log;
    }
}

/// The whole HTTP application over `state`: the JSON API, the operations endpoints and the
/// admin UI.
pub fn app(state: AppState) -> api::Application {
    api::router(state)
}

/// Why a command failed; printed as one line, exit status 2.
#[derive(Debug)]
pub enum Failure {
    /// keygate refused or failed.
    Keygate(keygate::Error),
    /// Writing output failed.
    Io(std::io::Error),
    /// The configuration is not usable.
    Config(String),
    /// Anything else.
    Other(String),
}

impl From<keygate::Error> for Failure {
    fn from(e: keygate::Error) -> Self {
        Self::Keygate(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Keygate(e) => write!(f, "{e}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Config(e) | Self::Other(e) => f.write_str(e),
        }
    }
}

/// Runs a parsed command line; `Ok(code)` is the exit status.
pub async fn run(cli: Cli) -> Result<u8, Failure> {
    if let Command::Client(command) = cli.command {
        // The key holder's side: no database, no settings.
        return cli::client::run(command, &mut std::io::stdout().lock()).await;
    }
    let serve_args = match &cli.command {
        Command::Serve(args) => Some(args),
        _ => None,
    };
    let settings = Settings::resolve(&cli, serve_args)?;
    match cli.command {
        Command::Serve(_) => return serve::run(settings).await.map(|()| 0),
        Command::Gateway(args) => {
            return gateway::run(settings, cli.config.as_deref(), args)
                .await
                .map(|()| 0);
        }
        _ => {}
    }
    // A one-shot command: no cache, usage written before exit.
    let keygate = Keygate::builder(keygate::open(&settings.database).await?)
        .prefix(settings.prefix)
        .usage_flush_interval(None)
        .cache(None)
        .sealing_key(settings.sealing_key)
        .allow_private_webhooks(settings.allow_private_webhooks)
        .email_routing(settings.email_routing)
        .build();
    cli::run(&keygate, cli.command, &mut std::io::stdout().lock()).await
}
