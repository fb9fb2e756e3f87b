//! The audit log page (filters, newest first) and the webhooks pages (endpoints, adding one,
//! each endpoint's delivery log, changing, disabling and deleting one).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use keygate::AuditQuery;
use keygate::core::{EventKind, KeyId, Timestamp};
use maud::html;
use serde::Deserialize;

use super::keys::events_table;
use super::session::{Flash, Secret};
use super::views::{self, Nav};
use super::{Admin, PageQuery, Posted, UiError, split_list};
use crate::api::AppState;

/// `GET /admin/audit` query.
#[derive(Debug, Deserialize, Default)]
pub struct AuditParams {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    cursor: String,
}

/// `GET /admin/audit`: the trail, newest first, by event type, key and start date.
pub async fn audit(
    State(app): State<AppState>,
    admin: Admin,
    PageQuery(params): PageQuery<AuditParams>,
) -> Result<Response, UiError> {
    let kind = match params.kind.as_str() {
        "" => None,
        text => Some(
            EventKind::parse(text)
                .ok_or_else(|| UiError::bad_request("Event type: choose one from the list."))?,
        ),
    };
    let key = params.key.trim();
    let key_id = match key {
        "" => None,
        text => Some(
            KeyId::parse(text)
                .ok_or_else(|| UiError::bad_request("Key: expected a key id such as key_01JD…."))?,
        ),
    };
    let since = match params.since.trim() {
        "" => None,
        text => Some(
            Timestamp::parse_rfc3339(&format!("{text}T00:00:00Z"))
                .map_err(|_| UiError::bad_request("Since: expected a date such as 2026-11-01."))?,
        ),
    };
    let page = app
        .keygate
        .audit_trail(&AuditQuery {
            key_id,
            kind,
            since,
            limit: 50,
            cursor: (!params.cursor.is_empty()).then(|| params.cursor.clone()),
            newest_first: true,
        })
        .await?;
    let body = html! {
        form.search method="get" action="/admin/audit" role="search" {
            label for="kind" { "Event type" }
            select #kind name="kind" {
                option value="" selected[kind.is_none()] { "Any" }
                @for k in EventKind::ALL {
                    option value=(k.as_str()) selected[kind == Some(k)] { (k.as_str()) }
                }
            }
            label for="key" { "Key id" }
            input #key type="text" name="key" value=(key) placeholder="key_…";
            label for="since" { "Since" }
            input #since type="date" name="since" value=(params.since.trim());
            button.button type="submit" { "Filter" }
        }
        (events_table(&page.items, true))
        (views::pager(
            "/admin/audit",
            &[("kind", params.kind.clone()), ("key", key.to_owned()), ("since", params.since.trim().to_owned())],
            page.next_cursor.as_deref(),
            !params.cursor.is_empty(),
        ))
    };
    Ok(views::page(admin.page(&app, Nav::Audit).await, "Audit log", body).into_response())
}

/// `GET /admin/webhooks`: the endpoints and (for admins) a form to add one.
pub async fn webhooks(State(app): State<AppState>, admin: Admin) -> Result<Response, UiError> {
    let endpoints = app.keygate.webhooks().await?;
    let body = html! {
        @if endpoints.is_empty() { p.empty { "No webhook endpoints yet." } }
        @else {
            div.table-wrap {
                table #webhooks {
                    thead { tr {
                        th scope="col" { "Endpoint" } th scope="col" { "Events" } th scope="col" { "Format" }
                        th scope="col" { "State" } th scope="col" { "Created" }
                    } }
                    tbody {
                        @for e in &endpoints {
                            tr {
                                td data-label="Endpoint" { a href={ "/admin/webhooks/" (e.id) } { (e.shown_url(admin.can_manage)) } div.muted.small { code { (e.id) } } }
                                td data-label="Events" { (views::scopes(&e.events)) }
                                td data-label="Format" { @if e.slack { "Slack" } @else { "Standard Webhooks" } @if e.receives_secrets { " · receives new keys (sealed)" } }
                                td data-label="State" { @if e.enabled { span.badge.ok { "enabled" } } @else { span.badge.neutral { "disabled" } } }
                                td data-label="Created" { (views::time(Some(e.created_at), "")) }
                            }
                        }
                    }
                }
            }
        }
        @if admin.can_manage {
            section.card aria-labelledby="add-webhook" {
                h2 #add-webhook { "Add an endpoint" }
                form.stack method="post" action="/admin/webhooks" {
                    (views::csrf_field(&admin.session.csrf))
                    label for="url" { "URL" }
                    input #url type="url" name="url" required placeholder="https://example.com/hooks/keygate";
                    label for="events" { "Events" }
                    input #events type="text" name="events" value="*" aria-describedby="events-help";
                    p.help #events-help { "Event types separated by spaces, or " code { "*" } " for all, e.g. " code { "key.revoked key.rotated" } "." }
                    div.check {
                        input #slack type="checkbox" name="slack" value="true";
                        label for="slack" { "Slack-compatible body (" code { "{\"text\": …}" } ")" }
                    }
                    div.actions { button.button.primary type="submit" { "Add endpoint" } }
                }
            }
        }
    };
    Ok(views::page(admin.page(&app, Nav::Webhooks).await, "Webhooks", body).into_response())
}

/// The add-endpoint form's fields.
#[derive(Debug, Deserialize)]
pub struct NewWebhook {
    #[serde(default)]
    url: String,
    #[serde(default)]
    events: String,
    #[serde(default)]
    slack: Option<String>,
}

/// `POST /admin/webhooks`: add an endpoint and show its signing secret once.
pub async fn add_webhook(
    State(app): State<AppState>,
    posted: Posted<NewWebhook>,
) -> Result<Response, UiError> {
    let Posted { admin, form } = posted;
    let events = split_list(&form.events);
    let endpoint = app
        .keygate
        .add_webhook(
            form.url.trim(),
            events,
            form.slack.as_deref() == Some("true"),
            false,
            &admin.audit,
        )
        .await?;
    admin
        .flash(
            &app,
            Flash::Secret {
                title: format!("Signing secret of {}", endpoint.url),
                value: Secret::new(endpoint.secret.clone()),
                key: None,
            },
        )
        .await?;
    Ok(Redirect::to(&format!("/admin/webhooks/{}", endpoint.id)).into_response())
}

/// `GET /admin/webhooks/{id}`: an endpoint's latest deliveries.
pub async fn deliveries(
    State(app): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let endpoint = app
        .keygate
        .webhooks()
        .await?
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| {
            UiError::new(
                http::StatusCode::NOT_FOUND,
                "No such webhook",
                "There is no webhook endpoint with that id.",
            )
        })?;
    let deliveries = app.keygate.webhook_deliveries(&endpoint.id, 100).await?;
    let body = html! {
        p { "Deliveries to " code { (endpoint.shown_url(admin.can_manage)) } ", newest first. Failed attempts are retried with backoff." }
        @if deliveries.is_empty() { p.empty { "Nothing delivered yet." } }
        @else {
            div.table-wrap {
                table #deliveries {
                    thead { tr {
                        th scope="col" { "Id" } th scope="col" { "Event" } th scope="col" { "State" }
                        th scope="col" { "Attempts" } th scope="col" { "Last answer" } th scope="col" { "Delivered" }
                    } }
                    tbody {
                        @for d in &deliveries {
                            tr {
                                td data-label="Id" { code { "msg_" (d.id) } }
                                td data-label="Event" { code { (event_type(&d.payload)) } }
                                td data-label="State" { (d.status.as_str()) }
                                td data-label="Attempts" { (d.attempts) }
                                td data-label="Last answer" {
                                    @if let Some(s) = d.last_status { "HTTP " (s) }
                                    @if let Some(e) = &d.last_error { " " span.muted { (e) } }
                                }
                                td data-label="Delivered" { (views::time(d.delivered_at, "not yet")) }
                            }
                        }
                    }
                }
            }
        }
        @if admin.can_manage {
            section.card aria-labelledby="change-webhook" {
                h2 #change-webhook { "Change this endpoint" }
                form.stack method="post" action={ "/admin/webhooks/" (endpoint.id) "/edit" } {
                    (views::csrf_field(&admin.session.csrf))
                    label for="url" { "URL" }
                    input #url type="url" name="url" required value=(endpoint.url);
                    label for="events" { "Events" }
                    input #events type="text" name="events" required value=(endpoint.events.join(" ")) aria-describedby="events-help";
                    p.help #events-help { "Event types separated by spaces, or " code { "*" } " for all." }
                    div.actions { button.button.primary #save-webhook type="submit" { "Save changes" } }
                }
                div.actions {
                    form method="post" action={ "/admin/webhooks/" (endpoint.id) "/enabled" } {
                        (views::csrf_field(&admin.session.csrf))
                        @if endpoint.enabled {
                            input type="hidden" name="enabled" value="false";
                            button.button #disable-webhook type="submit" { "Disable endpoint" }
                        } @else {
                            input type="hidden" name="enabled" value="true";
                            button.button #enable-webhook type="submit" { "Enable endpoint" }
                        }
                    }
                    form method="post" action={ "/admin/webhooks/" (endpoint.id) "/delete" } {
                        (views::csrf_field(&admin.session.csrf))
                        button.button.danger #delete-webhook type="submit" { "Delete endpoint" }
                    }
                }
                p.help { "A disabled endpoint gets no new deliveries; its pending ones wait until it is enabled again. Deleting it drops its pending deliveries (the count is in the audit log)." }
            }
        }
        p { a href="/admin/webhooks" { "All endpoints" } }
    };
    Ok(views::page(
        admin.page(&app, Nav::Webhooks).await,
        "Webhook deliveries",
        body,
    )
    .into_response())
}

/// The event type a delivery carries (its payload's `type`, or Slack text's absence of one).
fn event_type(payload: &str) -> String {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "slack message".to_owned())
}

fn no_such_webhook(e: keygate::Error) -> UiError {
    match e {
        keygate::Error::NotFound => UiError::new(
            http::StatusCode::NOT_FOUND,
            "No such webhook",
            "There is no webhook endpoint with that id.",
        ),
        e => e.into(),
    }
}

/// The change-endpoint form's fields.
#[derive(Debug, Deserialize)]
pub struct EditWebhook {
    #[serde(default)]
    url: String,
    #[serde(default)]
    events: String,
}

/// `POST /admin/webhooks/{id}/edit`: a new URL and event types.
pub async fn edit_webhook(
    State(app): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<EditWebhook>,
) -> Result<Response, UiError> {
    let Posted { admin, form } = posted;
    let endpoint = app
        .keygate
        .update_webhook(
            &id,
            Some(form.url.trim()),
            Some(split_list(&form.events)),
            None,
            &admin.audit,
        )
        .await
        .map_err(no_such_webhook)?;
    let notice = format!("Endpoint {} now goes to {}.", endpoint.id, endpoint.url);
    admin
        .done(&app, notice, &format!("/admin/webhooks/{}", endpoint.id))
        .await
}

/// The enable/disable form's field.
#[derive(Debug, Deserialize)]
pub struct WebhookEnabledForm {
    enabled: bool,
}

/// `POST /admin/webhooks/{id}/enabled`.
pub async fn set_webhook_enabled(
    State(app): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<WebhookEnabledForm>,
) -> Result<Response, UiError> {
    let Posted { admin, form } = posted;
    let endpoint = app
        .keygate
        .update_webhook(&id, None, None, Some(form.enabled), &admin.audit)
        .await
        .map_err(no_such_webhook)?;
    let notice = if endpoint.enabled {
        format!("Endpoint {} enabled.", endpoint.id)
    } else {
        format!(
            "Endpoint {} disabled: its pending deliveries wait until it is enabled again.",
            endpoint.id
        )
    };
    admin
        .done(&app, notice, &format!("/admin/webhooks/{}", endpoint.id))
        .await
}

/// The delete form carries nothing but its CSRF token.
#[derive(Debug, Deserialize)]
pub struct DeleteWebhook {}

/// `POST /admin/webhooks/{id}/delete`.
pub async fn delete_webhook(
    State(app): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<DeleteWebhook>,
) -> Result<Response, UiError> {
    let Posted { admin, .. } = posted;
    let (endpoint, dropped) = app
        .keygate
        .delete_webhook(&id, &admin.audit)
        .await
        .map_err(no_such_webhook)?;
    let notice = format!(
        "Endpoint {} deleted; {dropped} pending deliveries dropped.",
        endpoint.id
    );
    admin.done(&app, notice, "/admin/webhooks").await
}
