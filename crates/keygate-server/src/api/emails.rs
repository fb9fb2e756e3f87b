//! `GET /v1/emails`: the email log — notices to key owners' contacts and to operators, and
//! where each stands — newest first.

use axum::Json;
use axum::extract::State;
use keygate::EmailQuery;
use keygate::core::email::{EmailDelivery, MAX_ADDRESS_CHARS};
use keygate::core::webhook::DeliveryStatus;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Caller, Read};
use super::error::{ApiError, ApiQuery, page_limit};

/// `GET /v1/emails` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EmailParams {
    /// Only emails in this state: `pending`, `delivered` or `failed`.
    pub status: Option<String>,
    /// Only emails to this address (compared without regard to case).
    pub recipient: Option<String>,
    /// Only emails about keys of this owner.
    pub owner: Option<String>,
    /// Page size, 1–1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One email, as documented (never its body, never a key).
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailDoc {
    /// Position in the outbox (its `Message-ID` is `<keygate-email-<id>@keygate>`).
    pub id: i64,
    /// The audit event it tells of.
    pub event_seq: i64,
    /// That event's type, e.g. `key.revoked`.
    pub event: String,
    /// The key the event is about.
    pub key_id: Option<String>,
    /// The key's owner when the event happened.
    pub owner: Option<String>,
    /// To whom.
    pub recipient: String,
    /// Held for the recipient's daily digest (sent after 00:00 UTC with the day's others).
    pub digest: bool,
    /// Subject line.
    pub subject: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    #[schema(format = DateTime)]
    pub next_attempt_at: String,
    /// The last error (connection refused, a certificate not trusted, an SMTP reply).
    pub last_error: Option<String>,
    /// When the SMTP server accepted it.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<String>,
}

/// One page of the email log.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailList {
    /// The emails, newest first.
    #[schema(value_type = Vec<EmailDoc>)]
    pub items: Vec<EmailDelivery>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The email log, newest first: recipient, event, state, attempts, last error, when sent.
#[utoipa::path(
    get, path = "/v1/emails", tag = "emails",
    params(EmailParams),
    responses(
        (status = 200, description = "A page of emails, newest first", body = EmailList),
        (status = 400, description = "Invalid parameter", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_emails(
    State(app): State<AppState>,
    _caller: Caller<Read>,
    ApiQuery(params): ApiQuery<EmailParams>,
) -> Result<Json<EmailList>, ApiError> {
    let status = params
        .status
        .map(|s| {
            DeliveryStatus::parse(&s).ok_or_else(|| {
                ApiError::bad_request("status: expected pending, delivered or failed")
            })
        })
        .transpose()?;
    let recipient = params
        .recipient
        .map(|r| {
            if r.trim().is_empty()
                || r.chars().count() > MAX_ADDRESS_CHARS
                || r.chars().any(char::is_control)
            {
                Err(ApiError::bad_request(format!(
                    "recipient: 1 to {MAX_ADDRESS_CHARS} characters, not blank, no control characters"
                )))
            } else {
                Ok(r)
            }
        })
        .transpose()?;
    let owner = params
        .owner
        .map(|o| {
            keygate::core::record::check_owner(o)
                .map_err(|e| ApiError::bad_request(format!("owner: {e}")))
        })
        .transpose()?;
    let mut query = EmailQuery {
        status,
        recipient,
        owner,
        cursor: params.cursor,
        ..EmailQuery::default()
    };
    if let Some(limit) = params.limit {
        query.limit = page_limit(limit)?;
    }
    let page = app.keygate.emails(&query).await?;
    Ok(Json(EmailList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}
