//! The admin web UI at `/admin`: server-rendered pages over the same [`Keygate`] calls as the
//! JSON API. Sign-in with an admin key or a username and password, sessions with a CSRF token,
//! read-only admins, and no asset from anywhere but keygate itself.
//!
//! Every state-changing request is a form POST taken through [`Posted`], which checks the
//! session, the CSRF token and the right to change things before the handler runs.

pub mod chart;
mod emails;
mod keys;
mod owners;
pub mod password;
pub mod session;
mod signin;
mod trail;
pub mod usage;
mod views;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use keygate::StatusCounts;
use keygate::core::scope::AdminAction;
use keygate::core::{Actor, Audit, Status, Timestamp};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::{AppState, RequestId};
use session::{COOKIE, Principal, SessionView, Sessions, tokens_match};

/// Most passwords checked at once on a node. argon2id takes 19 MiB and tens of milliseconds
/// per check by design; sign-ins beyond this wait their turn (briefly), so that a burst cannot
/// take the node's memory.
pub const MAX_PASSWORD_CHECKS: usize = 2;

/// How long a sign-in waits for its turn at a password check before it is told to come back.
pub const PASSWORD_CHECK_WAIT: Duration = Duration::from_secs(2);

/// The admin UI's own state: its sessions, and what bounds sign-ins on this node.
#[derive(Debug)]
pub struct AdminUi {
    /// Signed-in sessions.
    pub sessions: Sessions,
    /// Turns at checking a password ([`MAX_PASSWORD_CHECKS`]).
    pub password_checks: tokio::sync::Semaphore,
    /// The key that signs sign-in forms' tokens (shared by every node, read once).
    signin_key: tokio::sync::OnceCell<[u8; 32]>,
    /// When old sign-in counts were last cleared out.
    counts_purged: std::sync::Mutex<Option<Timestamp>>,
    /// Mark cookies `Secure` even without `X-Forwarded-Proto: https`.
    pub secure_cookies: bool,
    /// Take the client's address from the last `X-Forwarded-For` entry (behind a proxy).
    pub trust_forwarded_for: bool,
    /// The keys list's status counts, and when they were counted.
    counts: std::sync::Mutex<Option<(Timestamp, StatusCounts)>>,
}

/// How long the keys list's status counts are reused: counting reads every key (≈30 ms per
/// 100,000), too much for every page view. Changes made in the UI count afresh at once.
const COUNTS_FOR: Duration = Duration::from_secs(10);

impl AdminUi {
    /// Sessions ending after `idle` without a request.
    pub fn new(idle: Duration, secure_cookies: bool, trust_forwarded_for: bool) -> Self {
        Self {
            sessions: Sessions::new(idle),
            password_checks: tokio::sync::Semaphore::new(MAX_PASSWORD_CHECKS),
            signin_key: tokio::sync::OnceCell::new(),
            counts_purged: std::sync::Mutex::new(None),
            secure_cookies,
            trust_forwarded_for,
            counts: std::sync::Mutex::new(None),
        }
    }

    /// How many keys have each status: counted at most every [`COUNTS_FOR`].
    async fn counts(&self, keygate: &keygate::Keygate) -> Result<StatusCounts, keygate::Error> {
        let now = keygate.now();
        let cached = *self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, counts)) = cached
            && (now.unix_ms() - at.unix_ms()) < COUNTS_FOR.as_millis() as i64
        {
            return Ok(counts);
        }
        let counts = keygate.count_by_status().await?;
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, counts));
        Ok(counts)
    }

    /// The key that signs sign-in forms' tokens.
    async fn signin_key(&self, keygate: &keygate::Keygate) -> Result<[u8; 32], keygate::Error> {
        self.signin_key
            .get_or_try_init(|| async {
                keygate
                    .accounts()
                    .server_secret("admin-sign-in-token")
                    .await
            })
            .await
            .copied()
    }

    /// Clears out old sign-in counts, at most once a minute.
    async fn purge_sign_in_counts(&self, keygate: &keygate::Keygate) {
        let now = keygate.now();
        let due = {
            let mut last = self.counts_purged.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|at| now.unix_ms() - at.unix_ms() >= 60_000);
            if due {
                *last = Some(now);
            }
            due
        };
        if due && let Err(e) = keygate.accounts().purge_sign_in_counts().await {
            tracing::warn!(error = %e, "could not clear out old sign-in counts");
        }
    }

    /// Drops the cached counts (a change is being made).
    fn forget_counts(&self) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The `/admin` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(home))
        .route("/admin/", get(home))
        .route("/admin/login", get(signin::form).post(signin::submit))
        .route("/admin/logout", post(signin::sign_out))
        .route("/admin/keys", get(keys::list).post(keys::create))
        .route("/admin/keys/new", get(keys::new_form))
        .route("/admin/keys/{id}", get(keys::show))
        .route(
            "/admin/keys/{id}/revoke",
            get(keys::revoke_form).post(keys::revoke),
        )
        .route(
            "/admin/keys/{id}/edit",
            get(keys::edit_form).post(keys::edit),
        )
        .route("/admin/keys/{id}/rotate", post(keys::rotate))
        .route("/admin/keys/{id}/enabled", post(keys::set_enabled))
        .route("/admin/owners/{owner}", get(owners::show).post(owners::set))
        .route("/admin/audit", get(trail::audit))
        .route("/admin/emails", get(emails::list))
        .route(
            "/admin/webhooks",
            get(trail::webhooks).post(trail::add_webhook),
        )
        .route("/admin/webhooks/{id}", get(trail::deliveries))
        .route("/admin/webhooks/{id}/edit", post(trail::edit_webhook))
        .route(
            "/admin/webhooks/{id}/enabled",
            post(trail::set_webhook_enabled),
        )
        .route("/admin/webhooks/{id}/delete", post(trail::delete_webhook))
        .route("/admin/assets/admin.css", get(css))
        .route("/admin/assets/admin.js", get(js))
        .route("/admin/{*rest}", get(not_found).post(not_found))
        .layer(map_response(protect))
}

async fn home() -> Redirect {
    Redirect::to("/admin/keys")
}

async fn not_found() -> UiError {
    UiError::new(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page in the admin UI.",
    )
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/admin.css"))
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/admin.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Headers on every admin response: nothing from elsewhere may load or frame the pages, and
/// no page (one may hold a new key) is stored by the browser or a proxy.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, "x-frame-options", "DENY");
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "no-referrer");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    response
}

/// An error page.
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    title: String,
    detail: String,
    retry_after: Option<u64>,
}

impl UiError {
    /// A page with `status`, a title and what to do about it.
    pub fn new(status: StatusCode, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            title: title.into(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Invalid input", detail)
    }

    fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Form refused",
            "This form was not sent from a current keygate page (its security token is missing \
             or stale), so nothing was changed. Go back, reload the page and try again.",
        )
    }

    fn read_only() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Read-only access",
            "You are signed in read-only: you can look at everything but change nothing.",
        )
    }

    fn no_such_key() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "No such key",
            "There is no key with that id.",
        )
    }
}

impl From<keygate::Error> for UiError {
    fn from(e: keygate::Error) -> Self {
        let problem = keygate::Problem::from(e);
        Self::new(
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            problem.title,
            capitalized(&problem.detail),
        )
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            views::error_page(self.status, &self.title, &self.detail),
        )
            .into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// A signed-in person, checked again against the store on every request: a session ends as
/// soon as its key stops being an active admin key or its user's password or role changes.
#[derive(Debug)]
pub struct Admin {
    /// The session.
    pub session: SessionView,
    /// How the page names them.
    pub display: String,
    /// Whether they may change things (else read-only).
    pub can_manage: bool,
    /// The audit context of their changes.
    pub audit: Audit,
}

impl Admin {
    /// The context a page is drawn with; takes the session's one-time messages.
    async fn page(&self, app: &AppState, nav: views::Nav) -> views::Ctx {
        let flashes = app
            .admin
            .sessions
            .take_flashes(&app.keygate, &self.session)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not read the session's messages");
                Vec::new()
            });
        views::Ctx {
            who: self.display.clone(),
            read_only: !self.can_manage,
            csrf: self.session.csrf.clone(),
            flashes,
            nav,
        }
    }

    /// Confirms a change on the next page: queues `notice` and redirects (303) to `to`.
    async fn done(&self, app: &AppState, notice: String, to: &str) -> Result<Response, UiError> {
        self.flash(app, session::Flash::Notice(notice)).await?;
        Ok(Redirect::to(to).into_response())
    }

    /// Queues a one-time message for this person's next page.
    async fn flash(&self, app: &AppState, flash: session::Flash) -> Result<(), UiError> {
        app.admin
            .sessions
            .flash(&app.keygate, &self.session, &flash)
            .await
            .map_err(UiError::from)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let request_id = RequestId::from_request_parts(parts, app)
            .await
            .unwrap_or_else(|never| match never {});
        let now = app.keygate.now();
        let found = match cookie(&parts.headers, COOKIE) {
            Some(token) => app
                .admin
                .sessions
                .find(&app.keygate, token)
                .await
                .map_err(|e| UiError::from(e).into_response())?,
            None => None,
        };
        let session = found.ok_or_else(|| to_sign_in(parts))?;
        let checked = match &session.principal {
            Principal::Key(id) => app
                .keygate
                .get(id)
                .await
                .map_err(|e| UiError::from(e).into_response())?
                .filter(|r| r.status(now) == Status::Active)
                .and_then(|r| {
                    let can_manage = key_can_manage(&r.scopes)?;
                    Some((
                        format!("{} ({})", r.name, r.start),
                        can_manage,
                        Actor::Admin(r.id),
                    ))
                }),
            Principal::User { name, since } => app
                .keygate
                .accounts()
                .user(name)
                .await
                .map_err(|e| UiError::from(e).into_response())?
                .filter(|u| u.updated_at == *since)
                .map(|u| (u.username.clone(), !u.read_only, Actor::User(u.username))),
        };
        let Some((display, can_manage, actor)) = checked else {
            app.admin
                .sessions
                .end(&app.keygate, &session.id)
                .await
                .map_err(|e| UiError::from(e).into_response())?;
            return Err(to_sign_in(parts));
        };
        Ok(Self {
            session,
            display,
            can_manage,
            audit: Audit::by(actor).in_request(request_id.0.as_ref()),
        })
    }
}

/// Whether an admin key with `scopes` may use the UI: `None` if not at all, else whether it
/// may change things (`keygate:admin`) or only look (`keygate:read`).
fn key_can_manage(scopes: &[String]) -> Option<bool> {
    AdminAction::Read
        .permitted(scopes)
        .then(|| AdminAction::Manage.permitted(scopes))
}

/// A form's list field (scopes, event types): items separated by commas or whitespace.
fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// To the sign-in page, coming back here afterwards (for a page, not a form post).
fn to_sign_in(parts: &Parts) -> Response {
    let next = (parts.method == Method::GET)
        .then(|| parts.uri.path_and_query().map(|p| p.as_str().to_owned()))
        .flatten()
        .filter(|p| safe_next(p));
    let location = match next {
        Some(next) => format!(
            "/admin/login?{}",
            serde_urlencoded::to_string([("next", next)]).unwrap_or_default()
        ),
        None => "/admin/login".to_owned(),
    };
    Redirect::to(&location).into_response()
}

/// Whether `next` is a page of the admin UI to return to after sign-in (never elsewhere):
/// a path under `/admin/` of visible ASCII only (no spaces or control characters, which a
/// `Location` header cannot carry).
pub fn safe_next(next: &str) -> bool {
    next.starts_with("/admin/")
        && next.bytes().all(|b| b.is_ascii_graphic())
        && !next.starts_with("/admin/login")
        && !next.contains("//")
        && !next.contains('\\')
        && next.len() <= 1000
}

/// A state-changing form, accepted only from a signed-in admin who may change things, with
/// the session's CSRF token in the `csrf` field. The body is form-encoded (at most 64 KiB).
#[derive(Debug)]
pub struct Posted<T> {
    /// Who posted it.
    pub admin: Admin,
    /// The form's fields.
    pub form: T,
}

#[derive(Deserialize, Default)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// The fields of a form body, the CSRF token checked against `expected`.
async fn form_body<T: DeserializeOwned>(
    request: Request,
    app: &AppState,
    expected: &str,
) -> Result<T, UiError> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(UiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Not a form",
            "This address takes a form submitted from a keygate page.",
        ));
    }
    let bytes = Bytes::from_request(request, app)
        .await
        .map_err(|_| UiError::bad_request("The form is too large (at most 64 KiB)."))?;
    let csrf: CsrfField = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    if !tokens_match(&csrf.csrf, expected) {
        return Err(UiError::csrf());
    }
    serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| UiError::bad_request(format!("The form could not be read: {e}.")))
}

impl<T: DeserializeOwned> FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let admin = Admin::from_request_parts(&mut parts, app).await?;
        let request = Request::from_parts(parts, body);
        let form = form_body(request, app, &admin.session.csrf)
            .await
            .map_err(IntoResponse::into_response)?;
        if !admin.can_manage {
            return Err(UiError::read_only().into_response());
        }
        app.admin.forget_counts();
        Ok(Self { admin, form })
    }
}

/// A page's query string, read into `T`; unreadable ones get an error page (400).
#[derive(Debug)]
pub struct PageQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for PageQuery<T> {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, UiError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or_default())
            .map(Self)
            .map_err(|e| {
                UiError::bad_request(format!("The address's query could not be read: {e}."))
            })
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, `Secure` when asked; `max_age` 0 deletes.
fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// Whether cookies must be `Secure`: configured so, or the request came over https through a
/// proxy.
fn secure(app: &AppState, headers: &HeaderMap) -> bool {
    app.admin.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The client's address: the peer's, or — when configured to trust a proxy — the last entry
/// of `X-Forwarded-For` (the one that proxy appended; entries before it are the client's
/// word). Never `X-Forwarded-For` otherwise: any client can write it.
fn client_ip(app: &AppState, parts: &Parts) -> IpAddr {
    let forwarded = app
        .admin
        .trust_forwarded_for
        .then(|| parts.headers.get_all("x-forwarded-for").iter().next_back())
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok());
    forwarded.unwrap_or_else(|| {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_the_admin_ui() {
        assert!(safe_next("/admin/keys?status=active"));
        for bad in [
            "https://evil.example/",
            "//evil.example/admin/",
            "/admin//evil",
            "/admin/\\evil",
            "/v1/keys",
            "/admin/login?next=/admin/keys",
            "/admin/keys\n",
            "/admin/keys\r\nSet-Cookie: a=b",
            "/admin/keys\t",
            "/admin/keys x",
            "/admin/kéys",
            "/admin/keys\u{7f}",
        ] {
            assert!(!safe_next(bad), "{bad}");
        }
    }

    #[test]
    fn cookies_are_read_from_any_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("keygate_session=xyz"),
        );
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(COOKIE, "t", "/admin", 60, true);
        let set = set.to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.ends_with("Secure")
        );
    }
}
