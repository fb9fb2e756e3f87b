//! The email log page: notices to key owners' contacts and to operators, newest first, by
//! state, recipient and owner. Read-only admins see it too; it never shows an email's body.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use keygate::EmailQuery;
use keygate::core::KeyId;
use keygate::core::webhook::DeliveryStatus;
use maud::html;
use serde::Deserialize;

use super::views::{self, Nav};
use super::{Admin, PageQuery, UiError};
use crate::api::AppState;

/// Emails per page.
const PAGE: u32 = 50;

/// `GET /admin/emails` query.
#[derive(Debug, Deserialize, Default)]
pub struct EmailParams {
    #[serde(default)]
    status: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    cursor: String,
}

/// `GET /admin/emails`.
pub async fn list(
    State(app): State<AppState>,
    admin: Admin,
    PageQuery(params): PageQuery<EmailParams>,
) -> Result<Response, UiError> {
    let status = match params.status.as_str() {
        "" => None,
        text => Some(
            DeliveryStatus::parse(text)
                .ok_or_else(|| UiError::bad_request("State: choose one from the list."))?,
        ),
    };
    let recipient = params.recipient.trim();
    if recipient.chars().count() > keygate::core::email::MAX_ADDRESS_CHARS
        || recipient.chars().any(char::is_control)
    {
        return Err(UiError::bad_request(
            "Recipient: expected an address such as ops@example.com.",
        ));
    }
    let owner = params.owner.trim();
    let owner_filter = match owner {
        "" => None,
        text => Some(
            keygate::core::record::check_owner(text.to_owned())
                .map_err(|e| UiError::bad_request(format!("Owner: {e}.")))?,
        ),
    };
    let page = app
        .keygate
        .emails(&EmailQuery {
            status,
            recipient: (!recipient.is_empty()).then(|| recipient.to_owned()),
            owner: owner_filter,
            limit: PAGE,
            cursor: (!params.cursor.is_empty()).then(|| params.cursor.clone()),
        })
        .await?;
    let states = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
    ];
    let body = html! {
        p.help { "Notices to key owners' contacts and to the operators of each event type, newest first. Failed attempts are retried with backoff; a digest notice waits for 00:00 UTC." }
        form.search method="get" action="/admin/emails" role="search" {
            label for="status" { "State" }
            select #status name="status" {
                option value="" selected[status.is_none()] { "Any" }
                @for s in states {
                    option value=(s.as_str()) selected[status == Some(s)] { (s.as_str()) }
                }
            }
            label for="recipient" { "Recipient" }
            input #recipient type="text" name="recipient" value=(recipient) placeholder="ops@example.com" maxlength="254";
            label for="owner" { "Owner" }
            input #owner type="text" name="owner" value=(owner) placeholder="acct_42" maxlength="200";
            button.button type="submit" { "Filter" }
        }
        @if page.items.is_empty() { p.empty { "No emails." } }
        @else {
            div.table-wrap {
                table #emails {
                    thead { tr {
                        th scope="col" { "Recipient" } th scope="col" { "Event" } th scope="col" { "Key" }
                        th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Last error" }
                        th scope="col" { "Sent" }
                    } }
                    tbody {
                        @for e in &page.items {
                            tr {
                                td data-label="Recipient" {
                                    (e.recipient)
                                    @if e.digest { " " span.badge.neutral { "digest" } }
                                }
                                td data-label="Event" { code { (e.event.as_str()) } }
                                td data-label="Key" {
                                    @match e.key_id.as_deref().and_then(KeyId::parse) {
                                        Some(id) => (views::key_link(&id)),
                                        None => span.muted { "-" },
                                    }
                                    @if let Some(o) = &e.owner {
                                        div.muted.small { a href=(super::owners::path(o)) { (o) } }
                                    }
                                }
                                td data-label="State" { (e.status.as_str()) }
                                td data-label="Attempts" { (e.attempts) }
                                td data-label="Last error" {
                                    @match &e.last_error { Some(x) => span.muted { (x) }, None => span.muted { "-" } }
                                }
                                td data-label="Sent" { (views::time(e.sent_at, "not yet")) }
                            }
                        }
                    }
                }
            }
        }
        (views::pager(
            "/admin/emails",
            &[("status", params.status.clone()), ("recipient", recipient.to_owned()), ("owner", owner.to_owned())],
            page.next_cursor.as_deref(),
            !params.cursor.is_empty(),
        ))
    };
    Ok(views::page(admin.page(&app, Nav::Emails).await, "Emails", body).into_response())
}
