//! The tower [`Layer`] that puts keygate in front of a service.
//!
//! It reads the key from the request ([`CredentialSource`]s), verifies it, and either rejects
//! the request with `application/problem+json` (401 with `WWW-Authenticate`, or 403 for a
//! missing scope, or 503 if the store cannot be asked) or passes it on with the verified
//! [`ApiKey`] in the request extensions, where the [`ApiKey`] extractor finds it.
//!
//! Layers nest: a scoped layer on a route (`.route_layer(keygate.layer().require_scopes(..))`)
//! under a router-wide one reuses the key the outer layer verified and only checks scopes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use keygate_core::limits::{
    Decision, ratelimit_header, ratelimit_policy_header, retry_after_header,
};
use keygate_core::scope::{check_scope, first_missing};
use keygate_core::{Outcome, Timestamp, lacks_scope};
use tower_layer::Layer;
use tower_service::Service;

use crate::credentials::{CredentialSource, extract};
use crate::key::ApiKey;
use crate::problem::Problem;
use crate::verify::{Demand, Verifier};

/// Layer that requires a valid API key (and optionally scopes) on every request.
#[derive(Debug, Clone)]
pub struct KeygateLayer {
    verifier: Verifier,
    config: Arc<LayerConfig>,
}

#[derive(Debug, Clone)]
struct LayerConfig {
    sources: Vec<CredentialSource>,
    realm: String,
    required: Vec<String>,
    /// Units each request spends of the key's rate limits and credits.
    cost: u64,
    /// `WWW-Authenticate` value, built once from `realm` and `sources`.
    challenge: HeaderValue,
}

impl KeygateLayer {
    /// A layer over `verifier` that accepts `Authorization: Api-Key <key>` and requires no
    /// scope (`keygate.layer()` is the usual way to get one).
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            config: Arc::new(LayerConfig {
                sources: vec![CredentialSource::ApiKeyScheme],
                realm: "keygate".into(),
                required: Vec::new(),
                cost: 1,
                challenge: HeaderValue::from_static("Api-Key realm=\"keygate\""),
            }),
        }
    }

    /// Where keys are read from, in order (replaces the default `Api-Key` scheme).
    ///
    /// # Panics
    /// If `sources` is empty.
    pub fn sources(mut self, sources: impl IntoIterator<Item = CredentialSource>) -> Self {
        let sources: Vec<_> = sources.into_iter().collect();
        assert!(
            !sources.is_empty(),
            "keygate: at least one credential source is needed"
        );
        let config = Arc::make_mut(&mut self.config);
        config.sources = sources;
        config.challenge = config.build_challenge();
        self
    }

    /// The realm named in `WWW-Authenticate` (default `keygate`).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.realm = realm.into();
        config.challenge = config.build_challenge();
        self
    }

    /// Units each request spends of its key's rate limits and credits (default 1; at most
    /// [`MAX_COST`](crate::MAX_COST)). An expensive route can cost more.
    pub fn cost(mut self, cost: u64) -> Self {
        Arc::make_mut(&mut self.config).cost = cost.min(crate::MAX_COST);
        self
    }

    /// Scopes every request must hold (403 `INSUFFICIENT_SCOPE` otherwise).
    ///
    /// # Panics
    /// If a scope is not well-formed: that is a bug in the route table, not a runtime event.
    pub fn require_scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        for scope in scopes {
            let scope = scope.into();
            if let Err(why) = check_scope(&scope) {
                panic!("keygate: required scope {scope:?} is invalid: {why}");
            }
            Arc::make_mut(&mut self.config).required.push(scope);
        }
        self
    }
}

/// A request [`KeygateLayer::check`] let through.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The verified key.
    pub key: ApiKey,
    /// The client's address the key was checked from: the peer's, or behind trusted proxies
    /// the address they forwarded (`None` when no peer was given).
    pub client: Option<IpAddr>,
    /// Headers to add to the response the request gets: `Deprecation` and `Sunset` while the
    /// key is in the grace period of a rotation.
    pub response_headers: HeaderMap,
}

impl KeygateLayer {
    /// Decides one request the way the layer's service does: reads the key from `headers` and
    /// `query` with this layer's sources, verifies it for this layer's scopes and cost from
    /// the client's address (`peer`, or behind trusted proxies the address they forwarded),
    /// and returns the verified key with the headers its response gets (`RateLimit-Policy` and
    /// `RateLimit` for a key with rate limits; `Deprecation` and `Sunset` during a rotation's
    /// grace period), or the refusal to send (problem+json: 401 with `WWW-Authenticate`, 403,
    /// 429 with `Retry-After`, or 503 when the store cannot be asked). Counts the outcome.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<Admitted, Response> {
        let (key, notice, client) = self.admit(headers, query, peer).await?;
        let mut response_headers = HeaderMap::new();
        notice.write(&mut response_headers);
        Ok(Admitted {
            key,
            client,
            response_headers,
        })
    }

    /// [`KeygateLayer::check`] without building the headers: the service writes them straight
    /// into the response.
    async fn admit(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<(ApiKey, Notice, Option<IpAddr>), Response> {
        let config = &self.config;
        let demand = Demand {
            cost: config.cost,
            client: peer.map(|peer| self.verifier.client_address(peer.ip(), headers)),
        };
        // The presented key is borrowed from the headers only while it is checked.
        let verification = {
            let presented = match extract(headers, query, &config.sources) {
                Ok(p) => p,
                Err(e) => {
                    self.verifier.count(e.outcome);
                    return Err(config.reject(e.outcome, e.detail, None, None));
                }
            };
            self.verifier
                .verify_demand(&presented, &config.required, demand)
                .await
        };
        match verification {
            Ok(v) => match v.key {
                Some(key) if v.outcome.is_valid() => {
                    let notice = Notice {
                        limits: v.limits,
                        sunset: key.sunset(),
                    };
                    Ok((key, notice, demand.client))
                }
                _ => {
                    Err(config.reject(v.outcome, v.detail, v.limits.as_ref(), v.credits_refill_in))
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "key store failed during verification");
                Err(Problem::unavailable().into_response())
            }
        }
    }

    /// For a key an outer layer verified already: the refusal (403 `INSUFFICIENT_SCOPE`) if it
    /// lacks one of this layer's scopes.
    fn scope_refusal(&self, key: &ApiKey) -> Option<Response> {
        let missing = first_missing(key.scopes(), &self.config.required)?;
        let detail = lacks_scope(missing);
        self.verifier.count(Outcome::InsufficientScope);
        Some(
            self.config
                .reject(Outcome::InsufficientScope, detail, None, None),
        )
    }
}

/// What the response to a request let through must tell its client.
struct Notice {
    limits: Option<Decision>,
    /// `(rotated_at, expires_at)` during a rotation's grace period.
    sunset: Option<(Timestamp, Timestamp)>,
}

impl Notice {
    /// The `RateLimit` and `Deprecation`/`Sunset` headers (see [`KeygateLayer::check`]).
    fn write(&self, headers: &mut HeaderMap) {
        if let Some(limits) = &self.limits {
            ratelimit_headers(headers, limits);
        }
        if let Some((rotated_at, expires_at)) = self.sunset {
            announce_sunset(headers, rotated_at, expires_at);
        }
    }
}

impl LayerConfig {
    fn build_challenge(&self) -> HeaderValue {
        let realm: String = self
            .realm
            .chars()
            .filter(|c| !c.is_control())
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let mut challenge = format!("Api-Key realm=\"{realm}\"");
        if self.sources.contains(&CredentialSource::BearerScheme) {
            challenge.push_str(&format!(", Bearer realm=\"{realm}\""));
        }
        // Control characters were dropped above, so this cannot fail; fall back just in case.
        HeaderValue::from_str(&challenge)
            .unwrap_or_else(|_| HeaderValue::from_static("Api-Key realm=\"keygate\""))
    }

    /// The refusal for `outcome`: with the `WWW-Authenticate` challenge when it is a 401, and
    /// `Retry-After` and the `RateLimit` headers when a rate limit said no, and `Retry-After`
    /// (`credits_refill_in` seconds) when the key is out of credits until a refill.
    fn reject(
        &self,
        outcome: Outcome,
        detail: impl Into<std::borrow::Cow<'static, str>>,
        limits: Option<&Decision>,
        credits_refill_in: Option<u64>,
    ) -> Response {
        let problem = Problem::from_outcome(outcome, detail);
        let mut response = if problem.status == 401 {
            problem
                .with_challenge(self.challenge.clone())
                .into_response()
        } else {
            problem.into_response()
        };
        if let Some(limits) = limits {
            ratelimit_headers(response.headers_mut(), limits);
            if let Some(value) =
                retry_after_header(limits).and_then(|v| HeaderValue::from_str(&v).ok())
            {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, value);
            }
        }
        if let Some(secs) = credits_refill_in {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The IETF `RateLimit-Policy` and `RateLimit` headers of a decision.
/// (Names made once, values handed over without a copy: this runs on every request of a
/// limited key.)
fn ratelimit_headers(headers: &mut HeaderMap, limits: &Decision) {
    static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    static STATE: HeaderName = HeaderName::from_static("ratelimit");
    for (name, value) in [
        (&POLICY, ratelimit_policy_header(limits)),
        (&STATE, ratelimit_header(limits)),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::try_from(v).ok()) {
            headers.insert(name.clone(), value);
        }
    }
}

/// Tells a client whose key was rotated that it must switch: RFC 9745 `Deprecation` (since
/// when) and RFC 8594 `Sunset` (until when the key works).
fn announce_sunset(headers: &mut http::HeaderMap, rotated_at: Timestamp, expires_at: Timestamp) {
    let deprecation = format!("@{}", rotated_at.unix_ms().div_euclid(1000));
    if let Ok(value) = HeaderValue::from_str(&deprecation) {
        headers.insert("deprecation", value);
    }
    if let Ok(value) = HeaderValue::from_str(&expires_at.to_http_date()) {
        headers.insert("sunset", value);
    }
}

impl<S> Layer<S> for KeygateLayer {
    type Service = KeygateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeygateService {
            inner,
            verifier: self.verifier.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service [`KeygateLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct KeygateService<S> {
    inner: S,
    verifier: Verifier,
    config: Arc<LayerConfig>,
}

impl<S, B> Service<Request<B>> for KeygateService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is not ready yet; keep the one that is (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = KeygateLayer {
            verifier: self.verifier.clone(),
            config: self.config.clone(),
        };
        Box::pin(async move {
            if let Some(key) = request.extensions().get::<ApiKey>() {
                if let Some(refusal) = layer.scope_refusal(key) {
                    return Ok(refusal);
                }
                return inner.call(request).await;
            }
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            let (key, notice, _client) = match layer
                .admit(request.headers(), request.uri().query(), peer)
                .await
            {
                Ok(admitted) => admitted,
                Err(refusal) => return Ok(refusal),
            };
            request.extensions_mut().insert(key);
            let mut response = inner.call(request).await?;
            notice.write(response.headers_mut());
            Ok(response)
        })
    }
}
