//! Who may call keygate's own API: admin keys are ordinary keys with reserved scopes, checked
//! by keygate's own layer (we use what we sell) and then by [`Caller`] for the action.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use http::request::Parts;
use keygate::core::scope::AdminAction;
use keygate::core::{Actor, Audit, Outcome};
use keygate::{ApiKey, Problem};

/// An admin action, as a type, so that handlers state what they need in their signature.
pub trait Action: Send + Sync {
    /// The action.
    const ACTION: AdminAction;
}

/// Create, update, revoke: `keygate:admin`.
#[derive(Debug)]
pub struct Manage;
/// List and show: `keygate:read` or `keygate:admin`.
#[derive(Debug)]
pub struct Read;
/// Verify: `keygate:verify` or `keygate:admin`.
#[derive(Debug)]
pub struct Verify;

impl Action for Manage {
    const ACTION: AdminAction = AdminAction::Manage;
}
impl Action for Read {
    const ACTION: AdminAction = AdminAction::Read;
}
impl Action for Verify {
    const ACTION: AdminAction = AdminAction::Verify;
}

/// Admits a request that `/v1`'s layer does not guard (`/metrics` with
/// `metrics_require_key`, a refusal under `/v1` that no route matched) when it holds a key
/// allowed to do `A`; else the refusal to send (401, 403, or 503).
pub async fn admit<A: Action>(
    app: &super::AppState,
    headers: &http::HeaderMap,
) -> Result<ApiKey, axum::response::Response> {
    use axum::response::IntoResponse;
    let key = authenticate(app, headers).await?;
    if A::ACTION.permitted(key.scopes()) {
        Ok(key)
    } else {
        Err(refused::<A>().into_response())
    }
}

/// The valid key a request holds, whatever its scopes; else the refusal to send.
pub async fn authenticate(
    app: &super::AppState,
    headers: &http::HeaderMap,
) -> Result<ApiKey, axum::response::Response> {
    let admitted = app
        .keygate
        .layer()
        .sources([
            keygate::CredentialSource::ApiKeyScheme,
            keygate::CredentialSource::BearerScheme,
        ])
        .check(headers, None, None)
        .await?;
    Ok(admitted.key)
}

/// 403 for a key without the scope `A` needs.
fn refused<A: Action>() -> Problem {
    let needed = A::ACTION.allowed_by().join(" or ");
    Problem::from_outcome(
        Outcome::InsufficientScope,
        format!("this needs an admin key with the scope {needed}"),
    )
}

impl<A> Caller<A> {
    /// The audit context of a change this caller makes in request `request_id`.
    pub fn audit(&self, request_id: &super::RequestId) -> Audit {
        Audit::by(Actor::Admin(self.0.id().clone())).in_request(request_id.0.as_ref())
    }
}

/// The verified admin key of a request, allowed to do `A` (else 403 `INSUFFICIENT_SCOPE`).
/// Runs before the body is read, so a caller without the scope learns nothing from it.
#[derive(Debug)]
pub struct Caller<A>(pub ApiKey, PhantomData<A>);

impl<S: Send + Sync, A: Action> FromRequestParts<S> for Caller<A> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = <ApiKey as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Self::permit(key)
    }
}

impl<A: Action> Caller<A> {
    /// The caller with key `key`, if it may do `A` (else 403 `INSUFFICIENT_SCOPE`).
    pub fn permit(key: ApiKey) -> Result<Self, Problem> {
        if A::ACTION.permitted(key.scopes()) {
            Ok(Self(key, PhantomData))
        } else {
            Err(refused::<A>())
        }
    }
}
