//! Signing in (with an admin key, or a username and password) and out.
//!
//! Every attempt is counted against its address and (with a password) its username in the
//! store — on every node, before anything is checked — so after a few failures each further
//! attempt must wait, and a burst cannot outrun the count; a success takes back only its own
//! attempt. Passwords are checked a few at a time per node ([`MAX_PASSWORD_CHECKS`]). The
//! form carries a token keygate signed. Failures are written to the audit trail as
//! `admin.sign_in_failed`; the key or password presented is never written anywhere.

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderValue, StatusCode, header};
use keygate::core::{Actor, Audit, AuditEvent, EventKind, Outcome};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::session::{ABSOLUTE_LIFETIME, COOKIE, Principal, SIGNIN_COOKIE, SignInToken};
use super::{
    Admin, PASSWORD_CHECK_WAIT, client_ip, cookie, form_body, key_can_manage, password, safe_next,
    secure, set_cookie, views,
};
use crate::api::{AppState, RequestId};
use keygate::accounts::{Admission, Finished, address_subject, user_subject};

/// `GET /admin/login` query.
#[derive(Debug, Deserialize, Default)]
pub struct SignInQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    signed_out: Option<String>,
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize, Default)]
pub struct SignInForm {
    #[serde(default)]
    method: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

/// `GET /admin/login`: the sign-in page (or on to the keys, if signed in already).
pub async fn form(State(app): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let query: SignInQuery = Query::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let next = query.next.filter(|n| safe_next(n)).unwrap_or_default();
    if Admin::from_request_parts(&mut parts, &app).await.is_ok() {
        let to = if next.is_empty() {
            "/admin/keys"
        } else {
            &next
        };
        return Redirect::to(to).into_response();
    }
    let key = match app.admin.signin_key(&app.keygate).await {
        Ok(key) => key,
        Err(e) => return super::UiError::from(e).into_response(),
    };
    let now = app.keygate.now();
    // Keep a token we issued (another tab's form stays good), else issue one.
    let token = cookie(&parts.headers, SIGNIN_COOKIE)
        .filter(|t| SignInToken::valid(&key, t, now))
        .map_or_else(|| SignInToken::issue(&key, now), str::to_owned);
    let notice = query.signed_out.is_some().then_some("You are signed out.");
    let mut response = sign_in_page(StatusCode::OK, &token, &next, notice, None).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(
            SIGNIN_COOKIE,
            &token,
            "/admin/login",
            3600,
            secure(&app, &parts.headers),
        ),
    );
    response
}

fn sign_in_page(
    status: StatusCode,
    csrf: &str,
    next: &str,
    notice: Option<&str>,
    error: Option<&str>,
) -> (StatusCode, Markup) {
    let hidden = |method: &str| {
        html! {
            (views::csrf_field(csrf))
            input type="hidden" name="method" value=(method);
            input type="hidden" name="next" value=(next);
        }
    };
    let body = html! {
        @if let Some(text) = notice { p.notice role="status" { (text) } }
        @if let Some(text) = error { p.error role="alert" #signin-error { (text) } }
        div.signin {
            form.card method="post" action="/admin/login" aria-labelledby="with-key" {
                h2 #with-key { "With an admin key" }
                (hidden("key"))
                label for="key" { "Admin key" }
                input #key type="password" name="key" required autocomplete="off" spellcheck="false"
                    aria-describedby="key-help";
                p.help #key-help { "A key with the scope " code { "keygate:admin" } ", or "
                    code { "keygate:read" } " for a read-only view." }
                button.button.primary type="submit" { "Sign in with key" }
            }
            form.card method="post" action="/admin/login" aria-labelledby="with-password" {
                h2 #with-password { "With a username and password" }
                (hidden("password"))
                label for="username" { "Username" }
                input #username type="text" name="username" required autocomplete="username"
                    autocapitalize="none" spellcheck="false";
                label for="password" { "Password" }
                input #password type="password" name="password" required autocomplete="current-password";
                p.help { "Set with " code { "keygate admin set-password <username>" } "." }
                button.button.primary type="submit" { "Sign in" }
            }
        }
    };
    (status, views::bare_page("Sign in", body))
}

/// `POST /admin/login`.
pub async fn submit(State(app): State<AppState>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let request_id = RequestId::from_request_parts(&mut parts, &app)
        .await
        .unwrap_or_else(|never| match never {});
    let ip = client_ip(&app, &parts);
    let secure = secure(&app, &parts.headers);
    let expected = cookie(&parts.headers, SIGNIN_COOKIE)
        .unwrap_or_default()
        .to_owned();
    let previous = cookie(&parts.headers, COOKIE).map(str::to_owned);
    let issued = match app.admin.signin_key(&app.keygate).await {
        Ok(key) => SignInToken::valid(&key, &expected, app.keygate.now()),
        Err(e) => return super::UiError::from(e).into_response(),
    };
    // The form must carry the cookie's token, and the token must be one keygate issued.
    let expected = if issued { expected } else { String::new() };
    let form: SignInForm = match form_body(Request::from_parts(parts, body), &app, &expected).await
    {
        Ok(form) => form,
        Err(e) => return e.into_response(),
    };
    let next = Some(form.next.clone())
        .filter(|n| safe_next(n))
        .unwrap_or_else(|| "/admin/keys".to_owned());
    let refuse = |status: StatusCode, message: &str| {
        sign_in_page(status, &expected, &form.next, None, Some(message)).into_response()
    };
    // Counted before anything is checked: against the address, and the username tried.
    app.admin.purge_sign_in_counts(&app.keygate).await;
    let username = (form.method == "password"
        && keygate::accounts::check_username(&form.username).is_ok())
    .then_some(form.username.as_str());
    let mut subjects = vec![address_subject(ip)];
    subjects.extend(username.map(user_subject));
    let failures_before = match app.keygate.accounts().admit_sign_in(&subjects).await {
        Ok(Admission::Check { failures }) => failures,
        Ok(Admission::Wait(wait)) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed sign-ins. Try again in {secs} s."),
            );
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Err(e) => return super::UiError::from(e).into_response(),
    };
    let checked = match form.method.as_str() {
        "key" => by_key(&app, &form.key).await,
        "password" => by_password(&app, &form.username, &form.password).await,
        _ => Err(Refusal::new("UNKNOWN_METHOD", Map::new())),
    };
    let how = match &checked {
        Ok(_) => Finished::Succeeded,
        Err(r) if r.reason == STORE_UNAVAILABLE || r.reason == BUSY => Finished::Unchecked,
        Err(_) => Finished::Failed,
    };
    let lockout = app
        .keygate
        .accounts()
        .finish_sign_in(&subjects, how)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not finish counting a sign-in attempt");
            None
        });
    match &checked {
        Err(r) if r.reason == STORE_UNAVAILABLE => {
            // Not the caller's failure: no event (the store is what is down).
            return super::UiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                "The key store cannot be reached, so nobody can sign in right now.",
            )
            .into_response();
        }
        Err(r) if r.reason == BUSY => {
            // Not checked, so not counted: ask the caller to come again.
            let mut response = super::UiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                "Too many sign-ins are being checked right now. Try again in a second.",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        _ => {}
    }
    let mut details = Map::new();
    details.insert("method".into(), json!(form.method));
    details.insert("address".into(), json!(ip.to_string()));
    match checked {
        Ok((principal, actor, read_only)) => {
            // Signing in again (perhaps as someone else) ends the session this browser had.
            if let Some(token) = previous
                && let Ok(Some(old)) = app.admin.sessions.find(&app.keygate, &token).await
            {
                let _ = app.admin.sessions.end(&app.keygate, &old.id).await;
            }
            let token = match app.admin.sessions.start(&app.keygate, principal).await {
                Ok(token) => token,
                Err(e) => return super::UiError::from(e).into_response(),
            };
            details.insert("read_only".into(), json!(read_only));
            let audit = Audit::by(actor.clone()).in_request(request_id.0.as_ref());
            let mut event = AuditEvent::about_admin(
                EventKind::AdminSignedIn,
                &audit,
                app.keygate.now(),
                details,
            );
            if let Actor::Admin(id) = actor {
                event.key_id = Some(id);
            }
            record(&app, &event).await;
            tracing::info!(actor = %audit.actor, request_id = %request_id.0, "signed in to the admin UI");
            let mut response = Redirect::to(&next).into_response();
            let headers = response.headers_mut();
            let lifetime = ABSOLUTE_LIFETIME.as_secs();
            headers.append(
                header::SET_COOKIE,
                set_cookie(COOKIE, &token, "/admin", lifetime, secure),
            );
            headers.append(
                header::SET_COOKIE,
                set_cookie(SIGNIN_COOKIE, "", "/admin/login", 0, secure),
            );
            response
        }
        Err(refusal) => {
            details.insert("reason".into(), json!(refusal.reason));
            details.insert("failures".into(), json!(failures_before + 1));
            if let Some(wait) = lockout {
                details.insert("locked_for_s".into(), json!(wait.as_secs()));
            }
            details.extend(refusal.details);
            let audit = Audit::by(Actor::Anonymous).in_request(request_id.0.as_ref());
            let event = AuditEvent::about_admin(
                EventKind::AdminSignInFailed,
                &audit,
                app.keygate.now(),
                details,
            );
            record(&app, &event).await;
            tracing::warn!(request_id = %request_id.0, reason = refusal.reason, %ip, failures = failures_before + 1, "admin UI sign-in refused");
            let message = if form.method == "password" {
                "That username and password do not match."
            } else {
                "That key cannot sign in: it must be a valid, active key with keygate:admin or keygate:read."
            };
            refuse(StatusCode::UNAUTHORIZED, message)
        }
    }
}

const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
/// Every turn at checking a password was taken for longer than [`PASSWORD_CHECK_WAIT`].
const BUSY: &str = "BUSY";

/// Why a sign-in was refused, for the audit trail (never the key or password).
struct Refusal {
    reason: &'static str,
    details: Map<String, Value>,
}

impl Refusal {
    fn new(reason: &'static str, details: Map<String, Value>) -> Self {
        Self { reason, details }
    }
}

async fn by_key(app: &AppState, presented: &str) -> Result<(Principal, Actor, bool), Refusal> {
    let presented = presented.trim();
    let verification = app
        .keygate
        .verify::<&str>(presented, &[])
        .await
        .map_err(|_| Refusal::new(STORE_UNAVAILABLE, Map::new()))?;
    let key = match verification.key {
        Some(key) if verification.outcome == Outcome::Valid => key,
        found => {
            let mut details = Map::new();
            if let Some(key) = found {
                details.insert("key_id".into(), json!(key.id()));
            }
            return Err(Refusal::new(verification.outcome.code(), details));
        }
    };
    let Some(can_manage) = key_can_manage(key.scopes()) else {
        let mut details = Map::new();
        details.insert("key_id".into(), json!(key.id()));
        return Err(Refusal::new("INSUFFICIENT_SCOPE", details));
    };
    Ok((
        Principal::Key(key.id().clone()),
        Actor::Admin(key.id().clone()),
        !can_manage,
    ))
}

async fn by_password(
    app: &AppState,
    username: &str,
    password: &str,
) -> Result<(Principal, Actor, bool), Refusal> {
    let mut details = Map::new();
    if keygate::accounts::check_username(username).is_ok() {
        details.insert("username".into(), json!(username));
    }
    let user = if details.is_empty() {
        None
    } else {
        app.keygate
            .accounts()
            .user(username)
            .await
            .map_err(|_| Refusal::new(STORE_UNAVAILABLE, Map::new()))?
    };
    // Hash even for an unknown user, so the time taken does not tell which names exist; at
    // most MAX_PASSWORD_CHECKS at a time.
    let phc = user.as_ref().map(|u| u.password_hash.clone());
    let Ok(Ok(_turn)) =
        tokio::time::timeout(PASSWORD_CHECK_WAIT, app.admin.password_checks.acquire()).await
    else {
        return Err(Refusal::new(BUSY, Map::new()));
    };
    let given = password.to_owned();
    let matched = password.len() <= keygate::accounts::MAX_PASSWORD
        && tokio::task::spawn_blocking(move || match &phc {
            Some(phc) => password::matches(&given, phc),
            None => password::matches(&given, password::decoy()),
        })
        .await
        .unwrap_or(false);
    match user {
        Some(user) if matched => Ok((
            Principal::User {
                name: user.username.clone(),
                since: user.updated_at,
            },
            Actor::User(user.username),
            user.read_only,
        )),
        Some(_) => Err(Refusal::new("WRONG_PASSWORD", details)),
        None => Err(Refusal::new("UNKNOWN_USER", details)),
    }
}

async fn record(app: &AppState, event: &AuditEvent) {
    if let Err(e) = app.keygate.record_event(event).await {
        tracing::warn!(error = %e, kind = %event.kind, "could not record a sign-in event");
    }
}

/// `POST /admin/logout`: ends the session (read-only admins may too).
pub async fn sign_out(State(app): State<AppState>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let secure = secure(&app, &parts.headers);
    let admin = match Admin::from_request_parts(&mut parts, &app).await {
        Ok(admin) => admin,
        Err(response) => return response,
    };
    if let Err(e) =
        form_body::<Map<String, Value>>(Request::from_parts(parts, body), &app, &admin.session.csrf)
            .await
    {
        return e.into_response();
    }
    if let Err(e) = app
        .admin
        .sessions
        .end(&app.keygate, &admin.session.id)
        .await
    {
        return super::UiError::from(e).into_response();
    }
    let mut response = Redirect::to("/admin/login?signed_out=1").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(COOKIE, "", "/admin", 0, secure),
    );
    response
}
