//! Settings: command-line flags, then `KEYGATE_*` environment variables (clap reads both), then
//! the TOML file named by `--config`, then defaults.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! database = "sqlite:///var/lib/keygate/keygate.db"
//! prefix = "acme_live"
//! log_format = "json"   # or "text"
//! log_level = "info"    # error, warn, info, debug, trace
//! cache_ttl = "30s"     # how long a cached key is trusted without a change notice
//! cache_size = 100000   # most keys cached; 0 turns the cache off
//! usage_flush = "10s"   # how often last-used times and usage counts are written
//! usage_retention = "90d"  # how long hourly usage counts are kept
//! max_age = "90d"       # the scheduler's maximum key age (default: no policy)
//! max_age_action = "notify"   # or "expire"
//! max_age_grace = "7d"  # with "expire": how long a due key keeps working
//! expiry_warning = "7d" # announce keys expiring within this long
//! sweep_every = "1m"    # how often the scheduler sweeps
//! smtp_url = "smtps://user:password@mail.example.com"  # email notices to key owners
//! email_from = "keygate <keygate@example.com>"
//! smtp_ca_file = "/etc/keygate/smtp-ca.pem"  # trust this CA for the SMTP server's TLS too
//! public_url = "https://keys.example.com"   # emails link to the admin UI under it
//! email_operator_digest = false  # operators' notices as one email a day per address
//!
//! [email_operators]     # who hears of emailed events besides the key's owner
//! "key.revoked" = ["security@example.com"]
//! "*" = ["audit@example.com"]   # every event type emails are sent for
//!
//! retire_when_switched = "1h"  # rotations' default: retire the old key once the successor
//!                              # is in use and the old key was unused this long (default: off)
//! secret_key = "..."    # base64 of 32 bytes; seals webhook signing secrets and the keys
//!                       # the "rotate" action delivers
//! max_connections = 1024        # client connections at once; more wait to be accepted
//! header_read_timeout = "10s"   # a request's headers, and an idle keep-alive connection
//! body_read_timeout = "10s"     # a request's whole body
//! shutdown_grace = "10s"        # on SIGTERM, how long open requests may go on
//! metrics_listen = "127.0.0.1:9090"  # serve /metrics there instead of on `listen`
//! metrics_require_key = false   # /metrics only for a key with keygate:read or keygate:admin
//! allow_private_webhooks = false     # webhooks may target loopback/private addresses
//! redis = "redis://127.0.0.1:6379/0"  # share rate-limit counts between nodes
//! redis_timeout = "100ms"        # no answer by then: count in this process until it answers
//! trusted_proxies = ["10.0.0.0/8"]    # believe these proxies' X-Forwarded-For entries
//! [gateway]             # keygate gateway's table (keygate_gateway::GatewayConfig reads it)
//! ```

use std::path::Path;
use std::time::Duration;

use keygate::core::limits::IpAllowlist;
use keygate::core::{Lifetime, Prefix};
use serde::Deserialize;

use crate::Failure;
use crate::cli::Command;
use crate::cli::args::{
    AgeActionArg, Cli, LogFormat, LogLevel, ServeArgs, parse_lifetime, parse_prefix,
};
use keygate::core::policy::MaxAge;

/// Default database URL.
pub const DEFAULT_DATABASE: &str = "sqlite://keygate.db";
/// Default listen address of `keygate serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default connection cap of `keygate serve` (lowered to fit the open-file limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How long a node waits for Redis before deciding rate limits on its own.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// What the configuration file may say. Unknown keys are an error, not a silent typo.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database: Option<String>,
    prefix: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<LogLevel>,
    cache_ttl: Option<String>,
    cache_size: Option<usize>,
    usage_flush: Option<String>,
    usage_retention: Option<String>,
    max_age: Option<String>,
    max_age_action: Option<AgeActionArg>,
    max_age_grace: Option<String>,
    expiry_warning: Option<String>,
    retire_when_switched: Option<String>,
    smtp_url: Option<String>,
    email_from: Option<String>,
    smtp_ca_file: Option<std::path::PathBuf>,
    public_url: Option<String>,
    email_operators: Option<std::collections::BTreeMap<String, Vec<String>>>,
    email_operator_digest: Option<bool>,
    sweep_every: Option<String>,
    secret_key: Option<String>,
    admin_idle_timeout: Option<String>,
    secure_cookies: Option<bool>,
    trust_forwarded_for: Option<bool>,
    max_connections: Option<u32>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
    metrics_listen: Option<String>,
    metrics_require_key: Option<bool>,
    allow_private_webhooks: Option<bool>,
    redis: Option<String>,
    redis_timeout: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    /// `keygate gateway`'s table: read by keygate-gateway, ignored here.
    #[serde(rename = "gateway")]
    _gateway: Option<toml::Table>,
}

/// Settings every command uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Database URL.
    pub database: String,
    /// Prefix of new keys.
    pub prefix: Prefix,
    /// `serve` only: listen address, log format and level.
    pub listen: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level.
    pub log_level: LogLevel,
    /// How long a cached key is trusted.
    pub cache_ttl: Lifetime,
    /// Most keys cached (0: no cache).
    pub cache_size: usize,
    /// How often last-used times are written.
    pub usage_flush: Lifetime,
    /// How long hourly usage counts are kept (the scheduler purges older ones).
    pub usage_retention: Lifetime,
    /// The scheduler's sweep.
    pub sweep: keygate::Sweep,
    /// How often the scheduler sweeps.
    pub sweep_every: Lifetime,
    /// Rotations' default quiet period for retiring the old key on switch-over.
    pub retire_when_switched: Option<Lifetime>,
    /// `serve`: the SMTP transport email notices go through (`smtp_url`, `email_from`,
    /// `smtp_ca_file`).
    pub mailer: Option<crate::jobs::email::Mailer>,
    /// Which operators get emails besides key owners (`email_operators`,
    /// `email_operator_digest`) and where emails link to (`public_url`): every command that
    /// writes events queues their emails with it.
    pub email_routing: keygate::core::email::EmailRouting,
    /// Seals new keys waiting in the webhook outbox: `KEYGATE_SECRET_KEY` (never a flag, so it
    /// stays out of process listings) or the file's `secret_key`.
    pub sealing_key: Option<keygate::sealing::SealingKey>,
    /// Admin UI: a session ends after this long without a request.
    pub admin_idle_timeout: Lifetime,
    /// Admin UI: always mark cookies `Secure` (they are anyway behind `X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
    /// Admin UI: take the client's address from the last `X-Forwarded-For` entry.
    pub trust_forwarded_for: bool,
    /// `serve`: connection cap, header timeout (also for idle keep-alive connections) and
    /// shutdown grace.
    pub connections: keygate_gateway::accept::Limits,
    /// `serve`: most time to receive a request's whole body.
    pub body_read_timeout: Duration,
    /// `serve`: where `/metrics` is served instead of `listen`, if anywhere.
    pub metrics_listen: Option<String>,
    /// `serve`: `/metrics` answers only a key with `keygate:read` or `keygate:admin`.
    pub metrics_require_key: bool,
    /// Webhook endpoints may be loopback or private addresses (tests, internal receivers).
    pub allow_private_webhooks: bool,
    /// Rate-limit counts shared through this Redis; `None`: counted in this process.
    pub redis: Option<String>,
    /// How long to wait for Redis before deciding locally (degraded).
    pub redis_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` entries are believed for IP allowlists.
    pub trusted_proxies: Option<IpAllowlist>,
}

impl Settings {
    /// Resolves the settings from the parsed command line (flags and environment) and the file.
    pub fn resolve(cli: &Cli, serve: Option<&ServeArgs>) -> Result<Self, Failure> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve_with(cli, serve, file)
    }

    /// The settings of `keygate serve` with nothing but the configuration file `text` (named
    /// `name` in errors); what a bad file gets is the one-line error `keygate` prints.
    pub fn from_toml(text: &str, name: &str) -> Result<Self, Failure> {
        let cli = <Cli as clap::Parser>::try_parse_from(["keygate", "serve"])
            .map_err(|e| Failure::Other(e.to_string()))?;
        let Command::Serve(serve) = &cli.command else {
            unreachable!("parsed as serve")
        };
        Self::resolve_with(&cli, Some(serve), parse_file(text, name)?)
    }

    fn resolve_with(
        cli: &Cli,
        serve: Option<&ServeArgs>,
        file: FileConfig,
    ) -> Result<Self, Failure> {
        let prefix = match (&cli.prefix, &file.prefix) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => {
                parse_prefix(p).map_err(|e| Failure::Config(format!("config file: prefix: {e}")))?
            }
            (None, None) => Prefix::default(),
        };
        let lifetime =
            |name: &str, flag: Option<Lifetime>, file: Option<String>, default: &str| match (
                flag, file,
            ) {
                (Some(v), _) => Ok(v),
                (None, Some(text)) => parse_lifetime(&text)
                    .map_err(|e| Failure::Config(format!("config file: {name}: {e}"))),
                (None, None) => Ok(parse_lifetime(default).expect("valid default")),
            };
        let cache_ttl = lifetime(
            "cache_ttl",
            serve.and_then(|s| s.cache_ttl),
            file.cache_ttl,
            "30s",
        )?;
        let usage_flush = lifetime(
            "usage_flush",
            serve.and_then(|s| s.usage_flush),
            file.usage_flush,
            "10s",
        )?;
        let usage_retention = lifetime(
            "usage_retention",
            serve.and_then(|s| s.usage_retention),
            file.usage_retention,
            "90d",
        )?;
        let sweep_every = lifetime(
            "sweep_every",
            serve.and_then(|s| s.sweep_every),
            file.sweep_every,
            "1m",
        )?;
        let expiry_warning = lifetime(
            "expiry_warning",
            serve.and_then(|s| s.expiry_warning),
            file.expiry_warning,
            "7d",
        )?;
        let admin_idle_timeout = lifetime(
            "admin_idle_timeout",
            serve.and_then(|s| s.admin_idle_timeout),
            file.admin_idle_timeout,
            "30m",
        )?;
        let max_age = match (serve.and_then(|s| s.max_age), file.max_age) {
            (Some(v), _) => Some(v),
            (None, Some(text)) => Some(
                parse_lifetime(&text)
                    .map_err(|e| Failure::Config(format!("config file: max_age: {e}")))?,
            ),
            (None, None) => None,
        };
        let grace_ms = match (serve.and_then(|s| s.max_age_grace), file.max_age_grace) {
            (Some(v), _) => v,
            (None, Some(text)) => keygate::core::parse_grace(&text)
                .map_err(|e| Failure::Config(format!("config file: max_age_grace: {e}")))?,
            (None, None) => 7 * 86_400_000,
        };
        let action = serve
            .and_then(|s| s.max_age_action)
            .or(file.max_age_action)
            .unwrap_or(AgeActionArg::Notify);
        let sweep = keygate::Sweep {
            max_age: max_age.map(|max_age| MaxAge {
                max_age,
                grace_ms,
                action: action.into(),
            }),
            expiry_warning: Some(expiry_warning),
            announce_expired: true,
            watch_grace: true,
        };
        let retire_when_switched = match (
            serve.and_then(|s| s.retire_when_switched),
            file.retire_when_switched,
        ) {
            (Some(v), _) => Some(v),
            (None, Some(text)) => Some(
                keygate::core::switch::parse_quiet(&text)
                    .map_err(|e| Failure::Config(format!("config file: {e}")))?,
            ),
            (None, None) => None,
        };
        let smtp_url = std::env::var("KEYGATE_SMTP_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .or(file.smtp_url);
        let email_from = serve.and_then(|s| s.email_from.clone()).or(file.email_from);
        let smtp_ca_file = serve
            .and_then(|s| s.smtp_ca_file.clone())
            .or(file.smtp_ca_file);
        let mailer = match (smtp_url, email_from) {
            (None, None) if smtp_ca_file.is_some() => {
                return Err(Failure::Config(
                    "smtp_ca_file is set but email is not (smtp_url and email_from)".into(),
                ));
            }
            (None, None) => None,
            (Some(url), Some(from)) => Some(
                crate::jobs::email::Mailer::new(&url, &from, smtp_ca_file.as_deref())
                    .map_err(Failure::Config)?,
            ),
            _ => {
                return Err(Failure::Config(
                    "email needs both smtp_url (KEYGATE_SMTP_URL) and email_from".into(),
                ));
            }
        };
        let email_routing = email_routing(
            cli.public_url.as_deref(),
            file.public_url,
            file.email_operators,
            file.email_operator_digest,
        )?;
        let sealing_key = std::env::var("KEYGATE_SECRET_KEY")
            .ok()
            .filter(|v| !v.is_empty())
            .or(file.secret_key)
            .map(|text| {
                keygate::sealing::SealingKey::from_base64(&text)
                    .map_err(|e| Failure::Config(format!("KEYGATE_SECRET_KEY: {e}")))
            })
            .transpose()?;
        let timeout =
            |name: &str, flag: Option<Duration>, file: Option<String>, default: u64| match (
                flag, file,
            ) {
                (Some(v), _) => Ok(v),
                (None, Some(text)) => keygate_gateway::config::parse_duration(&text)
                    .map_err(|e| Failure::Config(format!("config file: {name}: {e}"))),
                (None, None) => Ok(Duration::from_secs(default)),
            };
        let connections = keygate_gateway::accept::Limits {
            max_connections: serve
                .and_then(|s| s.max_connections)
                .or(file.max_connections)
                .map_or(DEFAULT_MAX_CONNECTIONS, |n| n as usize),
            header_read_timeout: timeout(
                "header_read_timeout",
                serve.and_then(|s| s.header_read_timeout),
                file.header_read_timeout,
                10,
            )?,
            shutdown_grace: timeout(
                "shutdown_grace",
                serve.and_then(|s| s.shutdown_grace),
                file.shutdown_grace,
                10,
            )?,
        };
        let body_read_timeout = timeout(
            "body_read_timeout",
            serve.and_then(|s| s.body_read_timeout),
            file.body_read_timeout,
            10,
        )?;
        let trusted_proxies = match (&cli.trusted_proxies, file.trusted_proxies) {
            (Some(list), _) => Some(list.clone()),
            (None, Some(entries)) => Some(
                IpAllowlist::parse(entries.iter().map(String::as_str))
                    .map_err(|e| Failure::Config(format!("config file: trusted_proxies: {e}")))?,
            ),
            (None, None) => None,
        };
        let redis_timeout = match (cli.redis_timeout, file.redis_timeout) {
            (Some(v), _) => v,
            (None, Some(text)) => keygate_gateway::config::parse_duration(&text)
                .map_err(|e| Failure::Config(format!("config file: redis_timeout: {e}")))?,
            (None, None) => DEFAULT_REDIS_TIMEOUT,
        };
        Ok(Self {
            redis: cli.redis.clone().or(file.redis),
            redis_timeout,
            trusted_proxies,
            connections,
            body_read_timeout,
            metrics_listen: serve
                .and_then(|s| s.metrics_listen.clone())
                .or(file.metrics_listen),
            metrics_require_key: serve.is_some_and(|s| s.metrics_require_key)
                || file.metrics_require_key.unwrap_or(false),
            allow_private_webhooks: cli.allow_private_webhooks
                || file.allow_private_webhooks.unwrap_or(false),
            admin_idle_timeout,
            secure_cookies: serve.is_some_and(|s| s.secure_cookies)
                || file.secure_cookies.unwrap_or(false),
            trust_forwarded_for: serve.is_some_and(|s| s.trust_forwarded_for)
                || file.trust_forwarded_for.unwrap_or(false),
            sealing_key,
            sweep,
            sweep_every,
            retire_when_switched,
            mailer,
            email_routing,
            cache_ttl,
            usage_flush,
            usage_retention,
            cache_size: serve
                .and_then(|s| s.cache_size)
                .or(file.cache_size)
                .unwrap_or(100_000),
            database: cli
                .database
                .clone()
                .or(file.database)
                .unwrap_or_else(|| DEFAULT_DATABASE.to_owned()),
            prefix,
            listen: serve
                .and_then(|s| s.listen.clone())
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            log_format: serve
                .and_then(|s| s.log_format)
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level: serve
                .and_then(|s| s.log_level)
                .or(file.log_level)
                .unwrap_or(LogLevel::Info),
        })
    }
}

/// The email routing from the command line, the environment and the file: operators from
/// `KEYGATE_EMAIL_OPERATORS` (one line, see [`Operators::parse_list`]) or the file's
/// `[email_operators]` table, their digest from `KEYGATE_EMAIL_OPERATOR_DIGEST` or the file,
/// the public URL from `--public-url` / `KEYGATE_PUBLIC_URL` or the file. A bad value is an
/// error naming where it came from.
///
/// [`Operators::parse_list`]: keygate::core::email::Operators::parse_list
fn email_routing(
    flag_url: Option<&str>,
    file_url: Option<String>,
    file_operators: Option<std::collections::BTreeMap<String, Vec<String>>>,
    file_digest: Option<bool>,
) -> Result<keygate::core::email::EmailRouting, Failure> {
    use keygate::core::email::{EmailRouting, Operators, check_public_url};
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let digest = match env("KEYGATE_EMAIL_OPERATOR_DIGEST") {
        Some(v) => match v.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(Failure::Config(
                    "KEYGATE_EMAIL_OPERATOR_DIGEST: expected true or false".into(),
                ));
            }
        },
        None => file_digest.unwrap_or(false),
    };
    let operators = match (env("KEYGATE_EMAIL_OPERATORS"), file_operators) {
        (Some(line), _) => Operators::parse_list(&line, digest)
            .map_err(|e| Failure::Config(format!("KEYGATE_EMAIL_OPERATORS: {e}")))?,
        (None, Some(table)) => Operators::from_entries(
            table
                .iter()
                .map(|(event, list)| (event.as_str(), list.as_slice())),
            digest,
        )
        .map_err(|e| Failure::Config(format!("config file: email_operators: {e}")))?,
        (None, None) => {
            Operators::from_entries(std::iter::empty(), digest).map_err(Failure::Config)?
        }
    };
    let public_url = match (flag_url, file_url) {
        (Some(text), _) => Some(check_public_url(text).map_err(|e| {
            Failure::Config(format!(
                "public_url (--public-url / KEYGATE_PUBLIC_URL): {e}"
            ))
        })?),
        (None, Some(text)) => Some(
            check_public_url(&text)
                .map_err(|e| Failure::Config(format!("config file: public_url: {e}")))?,
        ),
        (None, None) => None,
    };
    Ok(EmailRouting {
        operators,
        public_url,
    })
}

fn read_file(path: &Path) -> Result<FileConfig, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Config(format!("cannot read config file {}: {e}", path.display())))?;
    parse_file(&text, &path.display().to_string())
}

fn parse_file(text: &str, name: &str) -> Result<FileConfig, Failure> {
    toml::from_str(text).map_err(|e| {
        // toml's message spans lines (it quotes the offending line): keep its first sentence.
        let message = e.message().replace('\n', " ");
        let Some(span) = e.span() else {
            return Failure::Config(format!("config file {name}: {message}"));
        };
        let start = span.start.min(text.len());
        let line = text.get(..start).unwrap_or(text).matches('\n').count() + 1;
        // Name the setting: the key on the offending line, if it has one.
        let setting = text
            .lines()
            .nth(line - 1)
            .and_then(|l| l.split_once('='))
            .map(|(key, _)| format!(" ({})", key.trim()))
            .unwrap_or_default();
        Failure::Config(format!(
            "config file {name} line {line}{setting}: {message}"
        ))
    })
}

/// `limits` with the connection cap lowered to fit the process's open-file limit.
pub fn capped(limits: &keygate_gateway::accept::Limits) -> keygate_gateway::accept::Limits {
    keygate_gateway::accept::Limits {
        max_connections: keygate_gateway::accept::connection_cap(limits.max_connections),
        ..limits.clone()
    }
}
