//! The command line, as clap parses it. Every value is checked here, before anything opens the
//! database, so bad input never writes.

use clap::{Args, Parser, Subcommand, ValueEnum};
use keygate::core::limits::{IpAllowlist, RateLimit, Refill, parse_quota};
use keygate::core::{EventKind, KeyId, Lifetime, Prefix, Timestamp, scope::check_scope};
use serde_json::{Map, Value};

/// keygate: API-key authentication for public HTTP APIs.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, propagate_version = true)]
pub struct Cli {
    /// Database URL: sqlite://PATH (created on first use) or a plain file path
    /// [default: sqlite://keygate.db].
    #[arg(long, global = true, env = "KEYGATE_DATABASE", value_name = "URL")]
    pub database: Option<String>,

    /// Prefix of the keys this deployment issues (lowercase letters, digits, `_`) [default: kg].
    #[arg(long, global = true, env = "KEYGATE_PREFIX", value_parser = parse_prefix)]
    pub prefix: Option<Prefix>,

    /// TOML configuration file; flags and KEYGATE_* variables override what it says.
    #[arg(long, global = true, env = "KEYGATE_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Let webhook endpoints be loopback or private addresses (refused by default, so that an
    /// admin key cannot probe the internal network).
    #[arg(long, global = true, env = "KEYGATE_ALLOW_PRIVATE_WEBHOOKS")]
    pub allow_private_webhooks: bool,

    /// `serve`/`gateway`: share rate-limit counts with the other nodes through this Redis
    /// (`redis://host:port/db`) [default: count in this process].
    #[arg(long, global = true, env = "KEYGATE_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// `serve`/`gateway`: how long to wait for Redis before counting in this process
    /// (degraded) until it answers again, e.g. 250ms [default: 100ms].
    #[arg(long, global = true, env = "KEYGATE_REDIS_TIMEOUT", value_name = "DURATION", value_parser = keygate_gateway::config::parse_duration)]
    pub redis_timeout: Option<std::time::Duration>,

    /// `serve`/`gateway`: proxies (addresses or networks, comma-separated) whose
    /// `X-Forwarded-For` entries are believed when finding a client's address for IP
    /// allowlists [default: none; the socket peer is the client].
    #[arg(long, global = true, env = "KEYGATE_TRUSTED_PROXIES", value_name = "CIDRS", value_parser = parse_networks)]
    pub trusted_proxies: Option<keygate::core::limits::IpAllowlist>,

    /// The admin UI's public address, e.g. https://keys.example.com: emails link to the key's
    /// page under it [default: no link].
    #[arg(long, global = true, env = "KEYGATE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A comma-separated list of addresses or networks.
fn parse_networks(text: &str) -> Result<keygate::core::limits::IpAllowlist, String> {
    keygate::core::limits::IpAllowlist::parse_list(text).map_err(|e| e.to_string())
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the key service: JSON API under /v1, /v1/verify, health, metrics, OpenAPI.
    Serve(ServeArgs),
    /// Run the gateway: a reverse proxy that lets through only requests with a valid key to
    /// the upstreams of the config file's [[gateway.route]] table.
    Gateway(GatewayArgs),
    /// Issue, list, show, revoke and verify API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the audit trail, oldest first (`--json`: one JSON object per line, for a SIEM).
    Audit(AuditArgs),
    /// Manage webhook endpoints (signed deliveries of key events).
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Apply the maximum-age policy once (for cron): announce keys older than --max-age, or
    /// make them expire after --grace. Running it twice in a row acts once.
    RotateDue(RotateDueArgs),
    /// Refill the credits of every key whose refill is due (for cron; `serve` does it too).
    /// Running it twice in a period refills once.
    Refill {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Owners: the rate limits all of an owner's keys share.
    #[command(subcommand)]
    Owners(OwnersCommand),
    /// The email log: notices to owners' contacts and operators, and where each stands.
    #[command(subcommand)]
    Emails(EmailsCommand),
    /// Incident response: revoke many keys at once, by owner, creation time or scope. Run with
    /// --dry-run first.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// Admin web UI users (sign-in with a username and password).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The key holder's side, run by its own cron or CI job against a keygate server (no
    /// database needed).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Import keys from another system; clients keep the keys they hold (docs/IMPORT.md).
    /// Running an import twice imports nothing twice.
    #[command(subcommand)]
    Import(ImportCommand),
}

/// `keygate import ...`
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import djangorestframework-api-key keys from a Django database (read-only, never
    /// written): name, created, expiry, revoked and the stored hash; a key verifies unchanged
    /// and is rehashed on its first use. Other columns of the table go into metadata.
    DrfApiKey(DrfImportArgs),
    /// Import keys from a JSON Lines file of records that give each key's SHA-256 (schema in
    /// docs/IMPORT.md).
    Jsonl(JsonlImportArgs),
}

/// `keygate import drf-api-key`
#[derive(Debug, Args)]
pub struct DrfImportArgs {
    /// The Django database: a SQLite file (PATH or sqlite://PATH) or a postgres:// URL.
    #[arg(long, value_name = "DATABASE")]
    pub from: String,
    /// The table: drf-api-key's own, or a custom model's (a subclass of AbstractAPIKey).
    #[arg(long, default_value = keygate::import::DRF_TABLE, value_parser = parse_identifier)]
    pub table: String,
    /// A column whose value (as text) becomes the key's owner, e.g. organization_id.
    #[arg(long, value_name = "COLUMN", value_parser = parse_identifier)]
    pub owner_column: Option<String>,
    /// Count what would be imported; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `keygate import jsonl`
#[derive(Debug, Args)]
pub struct JsonlImportArgs {
    /// The JSON Lines file: one record a line.
    pub file: std::path::PathBuf,
    /// Count what would be imported; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_identifier(text: &str) -> Result<String, String> {
    if keygate::import::is_identifier(text) {
        Ok(text.to_owned())
    } else {
        Err("must be a table or column name: letters, digits and _, at most 63".into())
    }
}

/// `keygate owners ...`
#[derive(Debug, Subcommand)]
pub enum OwnersCommand {
    /// Show an owner's record: its shared rate limits and contact addresses.
    Show {
        /// The owner, as its keys name it (e.g. acct_42).
        owner: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change an owner's record; only what is given changes: the rate limits all of its keys
    /// share (they apply at once on every node), its contact addresses, its email mode.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)
        .args(["rates", "no_rate", "emails", "no_email", "digest", "no_digest"])))]
    Set {
        /// The owner, as its keys name it (e.g. acct_42).
        owner: String,
        /// A shared rate limit, e.g. 1000/1m (repeatable; replaces the owner's limits).
        #[arg(long = "rate", value_name = "N/WINDOW", value_parser = parse_rate, conflicts_with = "no_rate")]
        rates: Vec<RateLimit>,
        /// Remove the owner's shared limits.
        #[arg(long)]
        no_rate: bool,
        /// A contact address for email notices (repeatable; replaces the addresses).
        #[arg(long = "email", value_name = "ADDRESS", conflicts_with = "no_email")]
        emails: Vec<String>,
        /// Remove the contact addresses.
        #[arg(long)]
        no_email: bool,
        /// One email a day per address (after 00:00 UTC) with every notice, instead of one
        /// email per notice.
        #[arg(long, conflicts_with = "no_digest")]
        digest: bool,
        /// One email per notice (the default).
        #[arg(long)]
        no_digest: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The latest 100 emails sent or waiting, newest first (`keygate emails list` filters).
    Emails {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `keygate emails ...`
#[derive(Debug, Subcommand)]
pub enum EmailsCommand {
    /// Emails sent or waiting, newest first: recipient, event, state, attempts, last error,
    /// when sent (never a key).
    List(EmailsListArgs),
}

/// `keygate emails list`
#[derive(Debug, Args)]
pub struct EmailsListArgs {
    /// Only emails in this state.
    #[arg(long, value_enum)]
    pub status: Option<EmailStatusArg>,
    /// Only emails to this address (any case).
    #[arg(long, value_name = "ADDRESS", value_parser = parse_recipient)]
    pub recipient: Option<String>,
    /// Only emails about keys of this owner.
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<String>,
    /// Most emails listed (1-1000) [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// List the emails before this one (the last id of the previous listing).
    #[arg(long, value_name = "ID", value_parser = parse_email_id)]
    pub before: Option<i64>,
    /// Print JSON (`{"items": [...], "next_cursor": ...}`).
    #[arg(long)]
    pub json: bool,
}

/// An email's state, as `--status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmailStatusArg {
    /// Waiting for its first or next attempt.
    Pending,
    /// Accepted by the SMTP server.
    Delivered,
    /// Given up on.
    Failed,
}

impl From<EmailStatusArg> for keygate::core::webhook::DeliveryStatus {
    fn from(arg: EmailStatusArg) -> Self {
        match arg {
            EmailStatusArg::Pending => Self::Pending,
            EmailStatusArg::Delivered => Self::Delivered,
            EmailStatusArg::Failed => Self::Failed,
        }
    }
}

/// A recipient to filter by: any text up to an address's length.
fn parse_recipient(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > keygate::core::email::MAX_ADDRESS_CHARS {
        return Err("expected an address (at most 254 characters)".into());
    }
    Ok(text.to_owned())
}

/// An owner, checked as a key's owner is.
fn parse_owner(text: &str) -> Result<String, String> {
    keygate::core::record::check_owner(text.to_owned()).map_err(|e| e.to_string())
}

/// An email's id in the log (`email_12` or `12`).
fn parse_email_id(text: &str) -> Result<i64, String> {
    text.strip_prefix("email_")
        .unwrap_or(text)
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| "expected an email id such as email_12".into())
}

/// `keygate client ...`
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Rotate the key in an environment variable (it needs keygate:self-rotate) and hand the
    /// new key over: rewrite VAR= in an env file atomically, or pipe it to a command's stdin.
    /// Optionally check it against your own API, then retire the old key. On any failure the
    /// old key keeps working; one line on stderr, exit status 2. The key never appears in
    /// arguments or output.
    Rotate(ClientRotateArgs),
}

/// `keygate client rotate`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["write_env", "exec"])))]
pub struct ClientRotateArgs {
    /// The keygate server, e.g. https://keys.example.com.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The environment variable that holds the current key (and the env file's variable).
    #[arg(long, value_name = "VAR", value_parser = parse_env_name)]
    pub key_env: String,
    /// Rewrite `VAR=...` in this env file (temporary file in the same directory, then
    /// rename; its mode is kept).
    #[arg(long, value_name = "FILE")]
    pub write_env: Option<std::path::PathBuf>,
    /// Run this command with `sh -c` and write the new key, and a newline, to its stdin
    /// (e.g. a secrets manager's CLI); it must exit 0.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Check the new key: GET this URL of your own API with it; a 2xx passes.
    #[arg(long, value_name = "URL")]
    pub check: Option<String>,
    /// After the check passed, end the old key's grace period now (POST /v1/self/retire).
    #[arg(long, requires = "check")]
    pub retire: bool,
    /// How long the old key keeps working if not retired [default: the server's, one day].
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<String>,
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn parse_env_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("expected a variable name of letters, digits and _".into())
    }
}

/// `keygate admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Add a user of the admin web UI, or change its password or role (ends its sessions).
    /// Reads the password from the terminal twice, or one line from stdin with
    /// --password-stdin.
    SetPassword {
        /// Username: letters, digits and . _ @ - (at most 64).
        username: String,
        /// The user may look but not change anything.
        #[arg(long)]
        read_only: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the admin web UI's users (never their password hashes).
    Users {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user of the admin web UI; their sessions end at once.
    RemoveUser {
        /// Username.
        username: String,
    },
}

/// `keygate keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key and print it once.
    Create(CreateArgs),
    /// Change a key's name, owner, scopes, metadata, rate limits, credits or allowlist (each
    /// change audited); what is not named stays.
    Update(UpdateArgs),
    /// List keys (never secrets or hashes).
    List(ListArgs),
    /// Show one key (never its secret or hash).
    Show {
        /// Key id (key_...).
        #[arg(value_parser = parse_id)]
        id: KeyId,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key for good.
    Revoke {
        /// Key id (key_...).
        #[arg(value_parser = parse_id)]
        id: KeyId,
        /// Why (kept in the record).
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate a key: issue its successor, printed once, and let the old key work for a grace
    /// period (then it verifies EXPIRED).
    Rotate {
        /// Key id (key_...).
        #[arg(value_parser = parse_id)]
        id: KeyId,
        /// How long the old key keeps working: 0 or a duration such as 24h [default: one day].
        #[arg(long, value_name = "DURATION", value_parser = parse_grace_arg)]
        grace: Option<i64>,
        /// End the grace early once the new key is in use and the old one unused this long
        /// (at least 1m) [default: the server's retire_when_switched policy, if set].
        #[arg(long, value_name = "DURATION", value_parser = parse_quiet_arg)]
        retire_when_switched: Option<Lifetime>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Disable a key until it is enabled again.
    Disable {
        /// Key id (key_...).
        #[arg(value_parser = parse_id)]
        id: KeyId,
    },
    /// Enable a disabled key (a revoked key stays revoked).
    Enable {
        /// Key id (key_...).
        #[arg(value_parser = parse_id)]
        id: KeyId,
    },
    /// Check a key: prints the outcome code; exits 0 only for VALID, 1 otherwise.
    Verify {
        /// The key, or `-` to read it from standard input (keeps it out of shell history).
        key: String,
        /// A scope the key must hold (repeatable).
        #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_scope)]
        scopes: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a key's requests by hour or by day (UTC): verified, refused by code, rate limited.
    /// A range longer than 744 hours or 400 days keeps its last buckets.
    Usage(UsageArgs),
}

/// `keygate keys usage`
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Key id (key_...).
    #[arg(value_parser = parse_id)]
    pub id: KeyId,
    /// Start of the range (RFC 3339) [default: 7 days of hours or 30 days of days before
    /// --until].
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp)]
    pub since: Option<Timestamp>,
    /// End of the range (RFC 3339, exclusive) [default: the end of the current hour or day].
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp)]
    pub until: Option<Timestamp>,
    /// Bucket width.
    #[arg(long, value_enum, default_value = "hour")]
    pub bucket: BucketArg,
    /// Print JSON (every bucket, as `GET /v1/keys/{id}/usage` answers).
    #[arg(long)]
    pub json: bool,
}

/// A usage bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BucketArg {
    /// An hour.
    Hour,
    /// A day.
    Day,
}

/// `keygate webhooks ...`
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Add an endpoint; prints its signing secret once.
    Add {
        /// Where deliveries are POSTed.
        url: String,
        /// An event type to receive, e.g. key.rotated (repeatable; default: all).
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
        /// Send Slack-compatible `{"text": ...}` payloads.
        #[arg(long)]
        slack: bool,
        /// Also receive the new keys the rotation policy issues (a vault you trust).
        #[arg(long)]
        receives_secrets: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List endpoints (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change an endpoint's URL or event types (audited as webhook.updated).
    Update {
        /// Endpoint id (whk_...).
        id: String,
        /// New URL.
        #[arg(long)]
        url: Option<String>,
        /// An event type to receive from now on, or `*` (repeatable; replaces the list).
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop deliveries to an endpoint; its pending ones wait until it is enabled again.
    Disable {
        /// Endpoint id (whk_...).
        id: String,
    },
    /// Resume deliveries to a disabled endpoint.
    Enable {
        /// Endpoint id (whk_...).
        id: String,
    },
    /// Delete an endpoint and its delivery log; pending deliveries are dropped (and counted).
    Delete {
        /// Endpoint id (whk_...).
        id: String,
    },
    /// An endpoint's delivery log, newest first.
    Deliveries {
        /// Endpoint id (whk_...).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `keygate rotate-due`
#[derive(Debug, Args)]
pub struct RotateDueArgs {
    /// Keys older than this are due.
    #[arg(long, default_value = "90d", value_parser = parse_lifetime)]
    pub max_age: Lifetime,
    /// With --action expire: how long a due key keeps working.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_grace_arg)]
    pub grace: i64,
    /// What to do with due keys.
    #[arg(long, value_enum, default_value_t = AgeActionArg::Notify)]
    pub action: AgeActionArg,
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--action` of `rotate-due` and `max_age_action` of `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgeActionArg {
    /// Write a `key.max_age_exceeded` event, once per key.
    Notify,
    /// Bring the key's expiry forward to now + grace (and notify).
    Expire,
    /// Issue the successor, delivered sealed only to webhook endpoints that receive secrets
    /// (needs KEYGATE_SECRET_KEY), and let the old key work for the grace period.
    Rotate,
}

/// `keygate incident ...`
#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Revoke every unrevoked key that matches all the given filters (at least one).
    Revoke(IncidentArgs),
}

/// Which keys an incident concerns.
#[derive(Debug, Args)]
pub struct IncidentArgs {
    /// Keys of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Keys created before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_timestamp)]
    pub created_before: Option<Timestamp>,
    /// Keys created at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_timestamp)]
    pub created_after: Option<Timestamp>,
    /// Keys holding a scope that grants this one (e.g. orders:write).
    #[arg(long, value_name = "SCOPE", value_parser = parse_scope)]
    pub scope: Option<String>,
    /// Reason recorded on each key.
    #[arg(long, default_value = "incident")]
    pub reason: String,
    /// List what would be revoked; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `keygate audit`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events about this key.
    #[arg(long = "key", value_name = "ID", value_parser = parse_id)]
    pub key_id: Option<KeyId>,
    /// Only events of this type (key.created, key.updated, key.rotated, key.revoked).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_event_kind)]
    pub kind: Option<EventKind>,
    /// Only events at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_timestamp)]
    pub since: Option<Timestamp>,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `keygate serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Most detailed log level shown [default: info].
    #[arg(long, env = "KEYGATE_LOG_LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,
    /// How long a cached key is trusted without a change notice, e.g. 30s [default: 30s].
    #[arg(long, env = "KEYGATE_CACHE_TTL", value_name = "DURATION", value_parser = parse_lifetime)]
    pub cache_ttl: Option<Lifetime>,
    /// Most keys cached; 0 turns the cache off [default: 100000].
    #[arg(long, env = "KEYGATE_CACHE_SIZE", value_name = "N")]
    pub cache_size: Option<usize>,
    /// Maximum key age for the scheduler's policy, e.g. 90d [default: none].
    #[arg(long, env = "KEYGATE_MAX_AGE", value_name = "DURATION", value_parser = parse_lifetime)]
    pub max_age: Option<Lifetime>,
    /// What the scheduler does with keys past the maximum age [default: notify].
    #[arg(long, env = "KEYGATE_MAX_AGE_ACTION", value_enum)]
    pub max_age_action: Option<AgeActionArg>,
    /// With max_age_action expire: how long a due key keeps working [default: 7d].
    #[arg(long, env = "KEYGATE_MAX_AGE_GRACE", value_name = "DURATION", value_parser = parse_grace_arg)]
    pub max_age_grace: Option<i64>,
    /// Announce keys expiring within this long (key.expiring_soon) [default: 7d].
    #[arg(long, env = "KEYGATE_EXPIRY_WARNING", value_name = "DURATION", value_parser = parse_lifetime)]
    pub expiry_warning: Option<Lifetime>,
    /// Rotations' default: retire the old key once its successor is in use and it has been
    /// unused this long (at least 1m) [default: off].
    #[arg(long, env = "KEYGATE_RETIRE_WHEN_SWITCHED", value_name = "DURATION", value_parser = parse_quiet_arg)]
    pub retire_when_switched: Option<Lifetime>,
    /// Email notices to key owners are sent from this address (with smtp_url, read from
    /// KEYGATE_SMTP_URL or the config file only: it may hold a password).
    #[arg(long, env = "KEYGATE_EMAIL_FROM", value_name = "ADDRESS")]
    pub email_from: Option<String>,
    /// A PEM file of certificates (a private CA) the SMTP server's TLS certificate may chain
    /// to, besides the Mozilla roots; needs smtps:// or ?tls=required.
    #[arg(long, env = "KEYGATE_SMTP_CA_FILE", value_name = "FILE")]
    pub smtp_ca_file: Option<std::path::PathBuf>,
    /// How often the scheduler sweeps the keys [default: 1m].
    #[arg(long, env = "KEYGATE_SWEEP_EVERY", value_name = "DURATION", value_parser = parse_lifetime)]
    pub sweep_every: Option<Lifetime>,
    /// How often last-used times are written, e.g. 10s [default: 10s].
    #[arg(long, env = "KEYGATE_USAGE_FLUSH", value_name = "DURATION", value_parser = parse_lifetime)]
    pub usage_flush: Option<Lifetime>,
    /// How long hourly usage counts are kept, e.g. 90d [default: 90d]; the scheduler purges
    /// older ones.
    #[arg(long, env = "KEYGATE_USAGE_RETENTION", value_name = "DURATION", value_parser = parse_lifetime)]
    pub usage_retention: Option<Lifetime>,
    /// Admin UI: sign out after this long without a request [default: 30m].
    #[arg(long, env = "KEYGATE_ADMIN_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_lifetime)]
    pub admin_idle_timeout: Option<Lifetime>,
    /// Admin UI: mark cookies Secure even without `X-Forwarded-Proto: https` (serve over https).
    #[arg(long, env = "KEYGATE_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// Admin UI: behind a reverse proxy, throttle sign-ins by the client address the proxy
    /// appends to `X-Forwarded-For` (only if every request comes through that proxy).
    #[arg(long, env = "KEYGATE_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Most client connections at once; more wait to be accepted [default: 1024, lowered to
    /// fit the open-file limit].
    #[arg(long, env = "KEYGATE_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,
    /// Most time to receive a request's headers, and to keep an idle connection open, e.g.
    /// 10s [default: 10s].
    #[arg(long, env = "KEYGATE_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = keygate_gateway::config::parse_duration)]
    pub header_read_timeout: Option<std::time::Duration>,
    /// Most time to receive a request's whole body (then 408) [default: 10s].
    #[arg(long, env = "KEYGATE_BODY_READ_TIMEOUT", value_name = "DURATION", value_parser = keygate_gateway::config::parse_duration)]
    pub body_read_timeout: Option<std::time::Duration>,
    /// On SIGTERM, how long open requests may go on [default: 10s].
    #[arg(long, env = "KEYGATE_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = keygate_gateway::config::parse_duration)]
    pub shutdown_grace: Option<std::time::Duration>,
    /// Serve /metrics on this address instead of on --listen.
    #[arg(long, env = "KEYGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Answer /metrics only for a key with keygate:read or keygate:admin.
    #[arg(long, env = "KEYGATE_METRICS_REQUIRE_KEY")]
    pub metrics_require_key: bool,
}

/// `keygate gateway` (the rest of its settings are in the config file's `[gateway]` table).
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address of the data plane [default: the file's gateway.listen, else 127.0.0.1:8081].
    #[arg(long, env = "KEYGATE_GATEWAY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of /healthz, /readyz and /metrics [default: gateway.admin_listen, else
    /// 127.0.0.1:9091].
    #[arg(long, env = "KEYGATE_GATEWAY_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Most time to connect to an upstream, e.g. 2s or 500ms (then 504).
    #[arg(long, env = "KEYGATE_GATEWAY_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = keygate_gateway::config::parse_duration)]
    pub connect_timeout: Option<std::time::Duration>,
    /// Most time to an upstream's response headers, e.g. 30s (then 504).
    #[arg(long, env = "KEYGATE_GATEWAY_RESPONSE_TIMEOUT", value_name = "DURATION", value_parser = keygate_gateway::config::parse_duration)]
    pub response_timeout: Option<std::time::Duration>,
    /// Most client connections at once.
    #[arg(long, env = "KEYGATE_GATEWAY_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,
    /// On SIGTERM, how long open requests and streams may go on, e.g. 30s.
    #[arg(long, env = "KEYGATE_GATEWAY_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = keygate_gateway::config::parse_duration)]
    pub shutdown_grace: Option<std::time::Duration>,
    /// Log format [default: text].
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Most detailed log level shown [default: info; the access log is at info].
    #[arg(long, env = "KEYGATE_LOG_LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,
    /// How long a cached key is trusted without a change notice [default: 30s].
    #[arg(long, env = "KEYGATE_CACHE_TTL", value_name = "DURATION", value_parser = parse_lifetime)]
    pub cache_ttl: Option<Lifetime>,
    /// Most keys cached; 0 turns the cache off [default: 100000].
    #[arg(long, env = "KEYGATE_CACHE_SIZE", value_name = "N")]
    pub cache_size: Option<usize>,
    /// How often last-used times are written [default: 10s].
    #[arg(long, env = "KEYGATE_USAGE_FLUSH", value_name = "DURATION", value_parser = parse_lifetime)]
    pub usage_flush: Option<Lifetime>,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// The most detailed log level shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Requests, key changes, start-up and shutdown.
    Info,
    /// Every verification decision too.
    Debug,
    /// Everything.
    Trace,
}

/// `keygate keys create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Human name for the key (1-200 characters).
    #[arg(long)]
    pub name: String,
    /// A scope to grant, e.g. orders:read or orders:* (repeatable).
    #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_scope)]
    pub scopes: Vec<String>,
    /// Owner id (your user, team or customer id).
    #[arg(long)]
    pub owner: Option<String>,
    /// Lifetime, e.g. 90d, 12h, 30m, 2w.
    #[arg(long, value_name = "DURATION", value_parser = parse_lifetime, conflicts_with = "expires_at")]
    pub expires_in: Option<Lifetime>,
    /// Expiry time, RFC 3339 (e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_timestamp)]
    pub expires_at: Option<Timestamp>,
    /// This key's own maximum age (e.g. 30d), overriding the policy of rotate-due/serve.
    #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
    pub max_age: Option<Lifetime>,
    /// A JSON object to attach, e.g. '{"plan":"pro"}'.
    #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
    pub metadata: Option<Map<String, Value>>,
    #[command(flatten)]
    /// Rate limits, credits and allowed networks.
    pub limits: LimitArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Usage controls of a key, as `keys create` and `keys update` take them.
#[derive(Debug, Args, Default)]
pub struct LimitArgs {
    /// A rate limit, e.g. 100/1m or burst=20/1s (repeatable; all apply).
    #[arg(long = "rate", value_name = "N/WINDOW", value_parser = parse_rate)]
    pub rates: Vec<RateLimit>,
    /// Credits: N (never refilled), N/day, N/month or N/month@D (refilled on day D).
    #[arg(long, value_name = "CREDITS", value_parser = parse_quota_arg)]
    pub quota: Option<(u64, Option<Refill>)>,
    /// A network the key may be used from, e.g. 203.0.113.0/24 or 2001:db8::/32 (repeatable;
    /// without any, from anywhere).
    #[arg(long = "allow-ip", value_name = "CIDR", value_parser = parse_network)]
    pub allow_ips: Vec<String>,
}

/// `keygate keys update`
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Key id (key_...).
    #[arg(value_parser = parse_id)]
    pub id: KeyId,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New owner id.
    #[arg(long, conflicts_with = "no_owner")]
    pub owner: Option<String>,
    /// Remove the owner.
    #[arg(long)]
    pub no_owner: bool,
    /// Replace the scopes with these (repeatable).
    #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_scope)]
    pub scopes: Vec<String>,
    /// Replace the metadata with this JSON object.
    #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
    pub metadata: Option<Map<String, Value>>,
    /// New rate limits, credits or allowed networks.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Remove every rate limit.
    #[arg(long, conflicts_with = "rates")]
    pub no_rate: bool,
    /// Remove the quota.
    #[arg(long, conflicts_with = "quota")]
    pub no_quota: bool,
    /// Let the key be used from any address again.
    #[arg(long, conflicts_with = "allow_ips")]
    pub any_ip: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `keygate keys list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only keys with this status.
    #[arg(long, value_enum, default_value_t = StatusArg::All)]
    pub status: StatusArg,
    /// Only keys whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// At most this many keys.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// The `--status` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Usable keys.
    Active,
    /// Disabled keys.
    Disabled,
    /// Keys past their expiry.
    Expired,
    /// Revoked keys.
    Revoked,
    /// Every key.
    All,
}

pub(crate) fn parse_grace_arg(s: &str) -> Result<i64, String> {
    keygate::core::parse_grace(s).map_err(|e| format!("expected 0 or a duration such as 24h; {e}"))
}

fn parse_event_kind(s: &str) -> Result<EventKind, String> {
    EventKind::parse(s)
        .ok_or_else(|| "expected key.created, key.updated, key.rotated or key.revoked".into())
}

fn parse_id(s: &str) -> Result<KeyId, String> {
    KeyId::parse(s).ok_or_else(|| "not a key id (expected key_ followed by 26 characters)".into())
}

fn parse_rate(s: &str) -> Result<RateLimit, String> {
    RateLimit::parse(s).map_err(|e| e.to_string())
}

fn parse_quota_arg(s: &str) -> Result<(u64, Option<Refill>), String> {
    parse_quota(s).map_err(|e| e.to_string())
}

fn parse_network(s: &str) -> Result<String, String> {
    IpAllowlist::parse([s])
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_scope(s: &str) -> Result<String, String> {
    check_scope(s).map(|()| s.to_owned()).map_err(str::to_owned)
}

pub(crate) fn parse_quiet_arg(s: &str) -> Result<Lifetime, String> {
    keygate::core::switch::parse_quiet(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_lifetime(s: &str) -> Result<Lifetime, String> {
    Lifetime::parse(s).map_err(|e| e.to_string())
}

fn parse_timestamp(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_prefix(s: &str) -> Result<Prefix, String> {
    Prefix::new(s).map_err(|e| e.to_string())
}

fn parse_metadata(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("metadata must be a JSON object, e.g. '{\"plan\":\"pro\"}'".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

impl From<AgeActionArg> for keygate::core::policy::AgeAction {
    fn from(a: AgeActionArg) -> Self {
        match a {
            AgeActionArg::Notify => Self::Notify,
            AgeActionArg::Expire => Self::Expire,
            AgeActionArg::Rotate => Self::Rotate,
        }
    }
}
