//! The gateway's settings: the `[gateway]` table and its `[[gateway.route]]` array, read out of
//! the same TOML file `keygate serve` reads (every other key is left to `serve`).
//!
//! ```toml
//! [gateway]
//! listen = "0.0.0.0:8081"          # the data plane
//! admin_listen = "127.0.0.1:9091"  # /healthz, /readyz, /metrics
//! credentials = ["api-key"]        # also "bearer", "header:X-Api-Key", "query:api_key"
//! connect_timeout = "2s"           # connecting to an upstream (504 after it)
//! response_timeout = "30s"         # an upstream's response headers (504 after it)
//! header_read_timeout = "30s"      # a client's request headers, and an idle keep-alive connection
//! max_connections = 10000          # client connections at once; more wait to be accepted
//! shutdown_grace = "30s"           # on SIGTERM, how long in-flight requests and streams may go on
//!
//! [[gateway.route]]
//! prefix = "/api/orders"           # this path and everything under it (segment-wise)
//! methods = ["POST"]               # optional; GET also admits HEAD
//! upstream = "http://127.0.0.1:8000"
//! scopes = ["orders:write"]
//!
//! [[gateway.route]]
//! prefix = "/healthz"
//! upstream = "http://127.0.0.1:8000"
//! public = true                    # no key needed (none is forwarded either)
//! ```
//!
//! Every error names the file, the line and the setting.

use std::path::Path;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Method, Uri};
use keygate::CredentialSource;
use keygate_core::Lifetime;
use keygate_core::scope::check_scope;
use serde::Deserialize;
use toml::Spanned;

/// Default data-plane address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
/// Default admin address (health, readiness, metrics).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9091";

/// A configuration the gateway cannot run with: where, which setting, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config file {file} line {line} ({setting}): {message}")]
pub struct ConfigError {
    /// The file, as given.
    pub file: String,
    /// 1-based line of the offending setting.
    pub line: usize,
    /// The setting, e.g. `gateway.route.upstream`.
    pub setting: String,
    /// What is wrong.
    pub message: String,
}

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Data-plane listen address.
    pub listen: String,
    /// Admin listen address (`/healthz`, `/readyz`, `/metrics`).
    pub admin_listen: String,
    /// Where requests carry their key (every route alike).
    pub credentials: Vec<CredentialSource>,
    /// Most time to connect to an upstream.
    pub connect_timeout: Duration,
    /// Most time from sending a request upstream to its response headers (routes may differ).
    pub response_timeout: Duration,
    /// Most time a client may take to send its request headers; also how long an idle
    /// keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests and open streams may take to finish.
    pub shutdown_grace: Duration,
    /// How long an upstream connection may stay idle and still be reused.
    pub pool_idle_timeout: Duration,
    /// The routes, in file order.
    pub routes: Vec<RouteConfig>,
}

/// One `[[gateway.route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Label in metrics and the access log (default: the prefix, with the methods if any).
    pub name: String,
    /// Path prefix, matched segment-wise: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub prefix: String,
    /// Methods this route takes; empty: all.
    pub methods: Vec<Method>,
    /// Where requests go.
    pub upstream: Upstream,
    /// Scopes a key must hold.
    pub scopes: Vec<String>,
    /// No key needed.
    pub public: bool,
    /// Send the client's `Host` upstream (default: the upstream's own authority).
    pub preserve_host: bool,
    /// Add `X-Keygate-Metadata` (the key's metadata as compact JSON).
    pub forward_metadata: bool,
    /// This route's response-header timeout, if not the gateway's.
    pub response_timeout: Option<Duration>,
    /// The line of the route in the file.
    pub line: usize,
}

/// An upstream: `http://host:port` and an optional base path put before the request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`.
    pub authority: Authority,
    /// Base path without a trailing `/` (empty for none).
    pub base_path: String,
}

impl Upstream {
    fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("not a URL ({e}); expected http://HOST:PORT[/PATH]"))?;
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(s) if *s == Scheme::HTTPS => {
                return Err("https upstreams are not supported; the gateway speaks plain HTTP to the upstream (put it on a private network or loopback)".into());
            }
            _ => return Err("expected http://HOST:PORT[/PATH]".into()),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or("expected http://HOST:PORT[/PATH]")?;
        if authority.as_str().contains('@') {
            return Err("user information in the upstream URL is not supported".into());
        }
        if uri.query().is_some() {
            return Err("an upstream URL cannot have a query".into());
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            authority,
            base_path,
        })
    }
}

#[derive(Deserialize)]
struct File {
    gateway: Option<Spanned<RawGateway>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    credentials: Option<Spanned<Vec<String>>>,
    connect_timeout: Option<Spanned<String>>,
    response_timeout: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<String>>,
    pool_idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<Spanned<String>>,
    prefix: Spanned<String>,
    methods: Option<Spanned<Vec<String>>>,
    upstream: Spanned<String>,
    #[serde(default)]
    scopes: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    public: Option<Spanned<bool>>,
    #[serde(default)]
    preserve_host: bool,
    #[serde(default)]
    forward_metadata: bool,
    response_timeout: Option<Spanned<String>>,
}

/// Turns byte offsets into lines and errors.
struct Source<'a> {
    text: &'a str,
    file: String,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error<T>(&self, at: &Spanned<T>, setting: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line(at.span().start),
            setting: setting.into(),
            message: message.into(),
        }
    }
}

impl GatewayConfig {
    /// Reads the `[gateway]` table of a TOML file's `text` (`file` names it in errors). Other
    /// top-level keys are ignored; unknown keys inside `[gateway]` are errors.
    pub fn from_toml(text: &str, file: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let source = Source {
            text,
            file: file.as_ref().display().to_string(),
        };
        let parsed: File = toml::from_str(text).map_err(|e| {
            let message = e.message().replace('\n', " ");
            let line = e.span().map_or(1, |s| source.line(s.start));
            let setting = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map_or_else(|| "gateway".to_owned(), |(k, _)| k.trim().to_owned());
            ConfigError {
                file: source.file.clone(),
                line,
                setting,
                message,
            }
        })?;
        let Some(raw) = parsed.gateway else {
            return Err(ConfigError {
                file: source.file.clone(),
                line: 1,
                setting: "gateway".into(),
                message: "no [gateway] table: the gateway needs at least one [[gateway.route]]"
                    .into(),
            });
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let duration = |value: &Option<Spanned<String>>, name: &str, default: Duration| match value
        {
            None => Ok(default),
            Some(v) => parse_duration(v.get_ref()).map_err(|m| source.error(v, name, m)),
        };
        let credentials = match &raw.credentials {
            None => vec![CredentialSource::ApiKeyScheme],
            Some(list) => parse_credentials(list.get_ref())
                .map_err(|m| source.error(list, "gateway.credentials", m))?,
        };
        let max_connections = match &raw.max_connections {
            None => 10_000,
            Some(v) => usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    source.error(v, "gateway.max_connections", "expected 1 to 1000000")
                })?,
        };
        let config = Self {
            listen: raw
                .listen
                .map_or_else(|| DEFAULT_LISTEN.to_owned(), Spanned::into_inner),
            admin_listen: raw
                .admin_listen
                .map_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned(), Spanned::into_inner),
            credentials,
            connect_timeout: duration(
                &raw.connect_timeout,
                "gateway.connect_timeout",
                Duration::from_secs(2),
            )?,
            response_timeout: duration(
                &raw.response_timeout,
                "gateway.response_timeout",
                Duration::from_secs(30),
            )?,
            header_read_timeout: duration(
                &raw.header_read_timeout,
                "gateway.header_read_timeout",
                Duration::from_secs(30),
            )?,
            max_connections,
            shutdown_grace: duration(
                &raw.shutdown_grace,
                "gateway.shutdown_grace",
                Duration::from_secs(30),
            )?,
            pool_idle_timeout: duration(
                &raw.pool_idle_timeout,
                "gateway.pool_idle_timeout",
                Duration::from_secs(90),
            )?,
            routes: raw
                .route
                .iter()
                .map(|r| route(&source, r))
                .collect::<Result<_, _>>()?,
        };
        if config.routes.is_empty() {
            return Err(ConfigError {
                file: source.file.clone(),
                line: source.line(span.start),
                setting: "gateway.route".into(),
                message: "no [[gateway.route]]: a gateway without routes would refuse everything"
                    .into(),
            });
        }
        crate::routes::RouteTable::new(&config.routes).map_err(|(line, message)| ConfigError {
            file: source.file.clone(),
            line,
            setting: "gateway.route.prefix".into(),
            message,
        })?;
        Ok(config)
    }
}

fn route(source: &Source<'_>, raw: &Spanned<RawRoute>) -> Result<RouteConfig, ConfigError> {
    let line = source.line(raw.span().start);
    let raw = raw.get_ref();
    let prefix = check_prefix(raw.prefix.get_ref())
        .map_err(|m| source.error(&raw.prefix, "gateway.route.prefix", m))?;
    let upstream = Upstream::parse(raw.upstream.get_ref())
        .map_err(|m| source.error(&raw.upstream, "gateway.route.upstream", m))?;
    let mut methods = Vec::new();
    if let Some(list) = &raw.methods {
        if list.get_ref().is_empty() {
            return Err(source.error(
                list,
                "gateway.route.methods",
                "an empty list admits nothing; leave `methods` out to admit every method",
            ));
        }
        for m in list.get_ref() {
            let method = Method::from_bytes(m.as_bytes())
                .ok()
                .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| {
                    source.error(
                        list,
                        "gateway.route.methods",
                        format!("{m:?} is not a method name such as GET or POST"),
                    )
                })?;
            if methods.contains(&method) {
                return Err(source.error(
                    list,
                    "gateway.route.methods",
                    format!("{m} is listed twice"),
                ));
            }
            methods.push(method);
        }
    }
    let public = raw.public.as_ref().is_some_and(|p| *p.get_ref());
    let mut scopes = Vec::new();
    if let Some(list) = &raw.scopes {
        if public && !list.get_ref().is_empty() {
            return Err(source.error(
                list,
                "gateway.route.scopes",
                "a public route checks no key, so it cannot require scopes",
            ));
        }
        for scope in list.get_ref() {
            check_scope(scope).map_err(|why| {
                source.error(
                    list,
                    "gateway.route.scopes",
                    format!("{scope:?} is not a scope: {why}"),
                )
            })?;
            scopes.push(scope.clone());
        }
    }
    let response_timeout = raw
        .response_timeout
        .as_ref()
        .map(|v| {
            parse_duration(v.get_ref())
                .map_err(|m| source.error(v, "gateway.route.response_timeout", m))
        })
        .transpose()?;
    let name = match &raw.name {
        Some(n) if n.get_ref().is_empty() || n.get_ref().len() > 100 => {
            return Err(source.error(n, "gateway.route.name", "expected 1 to 100 characters"));
        }
        Some(n) => n.get_ref().clone(),
        None if methods.is_empty() => prefix.clone(),
        None => {
            let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
            format!("{} {}", names.join(","), prefix)
        }
    };
    Ok(RouteConfig {
        name,
        prefix,
        methods,
        upstream,
        scopes,
        public,
        preserve_host: raw.preserve_host,
        forward_metadata: raw.forward_metadata,
        response_timeout,
        line,
    })
}

/// A route prefix: starts with `/`, plain path characters (no query, fragment,
/// percent-encoding, empty, `.` or `..` segment); a trailing `/` is dropped (`/api/` is `/api`).
fn check_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err("a prefix starts with `/`".into());
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '%' | '\\'))
    {
        return Err(format!(
            "a prefix is a plain path; {c:?} is not allowed (write it unencoded)"
        ));
    }
    let trimmed = if prefix == "/" {
        prefix
    } else {
        prefix.strip_suffix('/').unwrap_or(prefix)
    };
    if trimmed != "/"
        && trimmed[1..]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("a prefix cannot have empty, `.` or `..` segments".into());
    }
    Ok(trimmed.to_owned())
}

fn parse_credentials(list: &[String]) -> Result<Vec<CredentialSource>, String> {
    if list.is_empty() {
        return Err("at least one place to read keys from is needed".into());
    }
    let mut sources = Vec::new();
    for item in list {
        let source = match item.as_str() {
            "api-key" => CredentialSource::ApiKeyScheme,
            "bearer" => CredentialSource::BearerScheme,
            other => match other.split_once(':') {
                Some(("header", name)) => {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("{other:?}: not a header name"))?;
                    if name == http::header::AUTHORIZATION {
                        return Err(
                            "use \"api-key\" or \"bearer\" for the Authorization header".into()
                        );
                    }
                    CredentialSource::Header(name)
                }
                Some(("query", name)) if !name.is_empty() => {
                    CredentialSource::Query(name.to_owned())
                }
                _ => {
                    return Err(format!(
                        "{other:?}: expected \"api-key\", \"bearer\", \"header:NAME\" or \"query:NAME\""
                    ));
                }
            },
        };
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    Ok(sources)
}

/// `250ms`, or a positive duration such as `2s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Some(ms) = text.strip_suffix("ms")
        && !ms.is_empty()
        && ms.len() <= 9
        && ms.bytes().all(|b| b.is_ascii_digit())
    {
        let ms: u64 = ms.parse().map_err(|_| "not a duration")?;
        if ms == 0 {
            return Err("a duration must be positive".into());
        }
        return Ok(Duration::from_millis(ms));
    }
    Lifetime::parse(text)
        .map(|l| Duration::from_millis(l.as_ms().unsigned_abs()))
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 2s, 5m or 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "[[gateway.route]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:8000\"\n";

    fn error(text: &str) -> ConfigError {
        GatewayConfig::from_toml(text, "gw.toml").unwrap_err()
    }

    #[test]
    fn reads_the_gateway_table_and_ignores_the_rest_of_the_file() {
        let text = format!(
            "listen = \"0.0.0.0:8080\"\ndatabase = \"sqlite://x.db\"\nwhatever = 1\n\n[gateway]\n\
             listen = \"0.0.0.0:9000\"\ncredentials = [\"api-key\", \"header:X-Api-Key\", \"query:api_key\"]\n\
             response_timeout = \"250ms\"\n\n{ROUTE}scopes = [\"orders:read\"]\nmethods = [\"GET\"]\n\
             forward_metadata = true\n\n[[gateway.route]]\nprefix = \"/health/\"\n\
             upstream = \"http://localhost:8000/base/\"\npublic = true\npreserve_host = true\n"
        );
        let config = GatewayConfig::from_toml(&text, "gw.toml").unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.admin_listen, DEFAULT_ADMIN_LISTEN);
        assert_eq!(config.response_timeout, Duration::from_millis(250));
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(
            config.credentials,
            vec![
                CredentialSource::ApiKeyScheme,
                CredentialSource::x_api_key(),
                CredentialSource::Query("api_key".into())
            ]
        );
        let [api, health] = &config.routes[..] else {
            panic!("two routes")
        };
        assert_eq!((api.prefix.as_str(), api.line), ("/api", 10));
        assert_eq!(api.name, "GET /api");
        assert_eq!(api.methods, vec![Method::GET]);
        assert_eq!(api.scopes, vec!["orders:read".to_owned()]);
        assert!(api.forward_metadata && !api.public && !api.preserve_host);
        assert_eq!(api.upstream.authority.as_str(), "127.0.0.1:8000");
        assert_eq!(api.upstream.base_path, "");
        assert_eq!(
            (health.prefix.as_str(), health.name.as_str()),
            ("/health", "/health")
        );
        assert!(health.public && health.preserve_host);
        assert_eq!(health.upstream.base_path, "/base");
    }

    #[test]
    fn errors_name_the_file_line_and_setting() {
        let cases: Vec<(String, usize, &str, &str)> = vec![
            (format!("{ROUTE}scopes = [\"Orders Read\"]\n"), 4, "gateway.route.scopes", "not a scope"),
            (
                "[gateway]\n\n[[gateway.route]]\nprefix = \"/api\"\nupstream = \"https://api.internal\"\n".into(),
                5,
                "gateway.route.upstream",
                "https upstreams are not supported",
            ),
            (
                format!("[gateway]\nlisten = \"x\"\n{ROUTE}upstream_url = \"x\"\n"),
                6,
                "upstream_url",
                "unknown field",
            ),
            (format!("{ROUTE}methods = [\"get\"]\n"), 4, "gateway.route.methods", "not a method"),
            (format!("{ROUTE}methods = []\n"), 4, "gateway.route.methods", "admits nothing"),
            (
                format!("{ROUTE}public = true\nscopes = [\"a:b\"]\n"),
                5,
                "gateway.route.scopes",
                "cannot require scopes",
            ),
            (
                "[[gateway.route]]\nprefix = \"api\"\nupstream = \"http://a:1\"\n".into(),
                2,
                "gateway.route.prefix",
                "starts with `/`",
            ),
            (
                "[[gateway.route]]\nprefix = \"/a/../b\"\nupstream = \"http://a:1\"\n".into(),
                2,
                "gateway.route.prefix",
                "`..`",
            ),
            (
                "[[gateway.route]]\nprefix = \"/a%2Fb\"\nupstream = \"http://a:1\"\n".into(),
                2,
                "gateway.route.prefix",
                "plain path",
            ),
            (
                "[gateway]\nconnect_timeout = \"soon\"\n".into(),
                2,
                "gateway.connect_timeout",
                "not a duration",
            ),
            (
                "[gateway]\nmax_connections = 0\n".into(),
                2,
                "gateway.max_connections",
                "expected 1",
            ),
            (
                "[gateway]\ncredentials = [\"cookie:x\"]\n".into(),
                2,
                "gateway.credentials",
                "expected \"api-key\"",
            ),
            ("[gateway]\nlisten = \"x\"\n".into(), 1, "gateway.route", "no [[gateway.route]]"),
            ("listen = \"x\"\n".into(), 1, "gateway", "no [gateway] table"),
            (
                format!("{ROUTE}\n[[gateway.route]]\nprefix = \"/api/\"\nupstream = \"http://b:2\"\n"),
                5,
                "gateway.route.prefix",
                "same prefix",
            ),
            (
                "[[gateway.route]]\nprefix = \"/api\"\n".into(),
                1,
                "gateway",
                "missing field `upstream`",
            ),
        ];
        for (text, line, setting, words) in cases {
            let e = error(&text);
            assert_eq!(
                (e.line, e.setting.as_str()),
                (line, setting),
                "{e} in\n{text}"
            );
            assert!(e.message.contains(words), "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("config file gw.toml line {line} (")),
                "{e}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("750ms"), Ok(Duration::from_millis(750)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["0ms", "0s", "ms", "1.5s", "-1s", "10", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
