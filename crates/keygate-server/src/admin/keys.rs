//! The key pages: list and search, detail (with rotation chain and audit events), issue,
//! revoke, rotate, disable and enable.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::StatusCode;
use keygate::core::limits::{IpAllowlist, Quota, RateLimits, parse_quota, quota_short_form};
use keygate::core::{
    AuditEvent, DEFAULT_GRACE, Expiry, KeyId, KeyPatch, KeyRecord, KeySpec, Lifetime, Status,
    Timestamp, parse_grace,
};
use keygate::{AuditQuery, ListQuery};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::session::{Flash, Secret};
use super::views::{self, Nav};
use super::{Admin, PageQuery, Posted, UiError, split_list};
use crate::api::AppState;

/// Keys per page in the list.
const PAGE: u32 = 25;

/// `GET /admin/keys` query.
#[derive(Debug, Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    cursor: String,
}

fn parse_id(raw: &str) -> Result<KeyId, UiError> {
    KeyId::parse(raw).ok_or_else(UiError::no_such_key)
}

async fn load(app: &AppState, raw: &str) -> Result<KeyRecord, UiError> {
    let id = parse_id(raw)?;
    app.keygate.get(&id).await?.ok_or_else(UiError::no_such_key)
}

/// `GET /admin/keys`: search, filter by status, page.
pub async fn list(
    State(app): State<AppState>,
    admin: Admin,
    PageQuery(params): PageQuery<ListParams>,
) -> Result<Response, UiError> {
    let now = app.keygate.now();
    let mut query = ListQuery::new(now);
    query.limit = PAGE;
    query.status = match params.status.as_str() {
        "" | "all" => None,
        text => Some(Status::parse(text).ok_or_else(|| {
            UiError::bad_request("Status must be active, disabled, expired, revoked or all.")
        })?),
    };
    let search = params.q.trim();
    query.search = (!search.is_empty()).then(|| search.to_owned());
    query.cursor = (!params.cursor.is_empty()).then(|| params.cursor.clone());
    let page = app.keygate.list(query).await?;
    let counts = app.admin.counts(&app.keygate).await?;
    let status_option = |value: &str, label: String| {
        html! { option value=(value) selected[params.status == value] { (label) } }
    };
    let body = html! {
        div.toolbar {
            form.search method="get" action="/admin/keys" role="search" {
                label for="q" { "Search" }
                input #q type="search" name="q" value=(search) placeholder="Name, owner or kg_4fT0";
                label for="status" { "Status" }
                select #status name="status" {
                    (status_option("", format!("All ({})", counts.active + counts.disabled + counts.expired + counts.revoked)))
                    (status_option("active", format!("Active ({})", counts.active)))
                    (status_option("disabled", format!("Disabled ({})", counts.disabled)))
                    (status_option("expired", format!("Expired ({})", counts.expired)))
                    (status_option("revoked", format!("Revoked ({})", counts.revoked)))
                }
                button.button type="submit" { "Search" }
            }
            @if admin.can_manage {
                a.button.primary href="/admin/keys/new" { "New key" }
            }
        }
        @if page.items.is_empty() {
            p.empty { "No keys match." }
        } @else {
            div.table-wrap {
                table #keys {
                    caption.visually-hidden { "Keys, newest first" }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Start" } th scope="col" { "Owner" }
                        th scope="col" { "Scopes" } th scope="col" { "Status" } th scope="col" { "Last used" }
                        th scope="col" { "Created" } th scope="col" { "Expires" }
                    } }
                    tbody {
                        @for key in &page.items {
                            tr data-key-id=(key.id) {
                                td data-label="Name" { a href={ "/admin/keys/" (key.id) } { (key.name) } }
                                td data-label="Start" { code { (key.start) "…" } }
                                td data-label="Owner" { @if let Some(o) = &key.owner { (o) } @else { span.muted { "—" } } }
                                td data-label="Scopes" { (views::scopes(&key.scopes)) }
                                td data-label="Status" { (views::status_badge(key.status(now))) }
                                td data-label="Last used" { (views::time(key.last_used_at, "never")) }
                                td data-label="Created" { (views::time(Some(key.created_at), "")) }
                                td data-label="Expires" { (views::time(key.expires_at, "never")) }
                            }
                        }
                    }
                }
            }
        }
        (views::pager(
            "/admin/keys",
            &[("q", search.to_owned()), ("status", params.status.clone())],
            page.next_cursor.as_deref(),
            !params.cursor.is_empty(),
        ))
    };
    Ok(views::page(admin.page(&app, Nav::Keys).await, "Keys", body).into_response())
}

/// The issue and edit forms' fields.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct NewKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    scopes: String,
    #[serde(default)]
    expires_in: String,
    #[serde(default)]
    expires_at: String,
    #[serde(default)]
    max_age: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    rate_limits: String,
    #[serde(default)]
    quota: String,
    #[serde(default)]
    allowed_ips: String,
}

/// `GET /admin/keys/new`.
pub async fn new_form(State(app): State<AppState>, admin: Admin) -> Result<Response, UiError> {
    if !admin.can_manage {
        return Err(UiError::read_only());
    }
    Ok(key_form_page(&app, &admin, &NewKey::default(), None, None)
        .await
        .into_response())
}

/// Which form the key fields are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFormKind {
    /// Issue a key: a lifetime from now.
    Issue,
    /// Edit a key: an expiry time.
    Edit,
}

/// The page with the issue form, or (with `editing`) the edit form of that key.
async fn key_form_page(
    app: &AppState,
    admin: &Admin,
    form: &NewKey,
    editing: Option<&KeyRecord>,
    error: Option<&str>,
) -> Markup {
    let kind = if editing.is_some() {
        KeyFormKind::Edit
    } else {
        KeyFormKind::Issue
    };
    let (action, title, submit, cancel) = match editing {
        Some(record) => (
            format!("/admin/keys/{}/edit", record.id),
            format!("Edit {}", record.name),
            "Save changes",
            format!("/admin/keys/{}", record.id),
        ),
        None => (
            "/admin/keys".to_owned(),
            "New key".to_owned(),
            "Issue key",
            "/admin/keys".to_owned(),
        ),
    };
    let body = html! {
        @if let Some(text) = error { p.error role="alert" #form-error { (text) } }
        form.card.stack method="post" action=(action) {
            (views::csrf_field(&admin.session.csrf))
            label for="name" { "Name" span.req { " (required)" } }
            input #name type="text" name="name" value=(form.name) required maxlength="200"
                aria-describedby="name-help";
            p.help #name-help { "What the key is for, e.g. \"billing service (prod)\"." }
            label for="owner" { "Owner" }
            input #owner type="text" name="owner" value=(form.owner) maxlength="200"
                aria-describedby="owner-help";
            p.help #owner-help { "Your user, team or customer id. Optional." }
            label for="scopes" { "Scopes" }
            input #scopes type="text" name="scopes" value=(form.scopes) aria-describedby="scopes-help"
                placeholder="orders:read orders:write";
            p.help #scopes-help { "Separated by spaces or commas. " code { "orders:*" } " grants every orders scope." }
            @if kind == KeyFormKind::Issue {
                label for="expires_in" { "Expires in" }
                input #expires_in type="text" name="expires_in" value=(form.expires_in) list="lifetimes"
                    aria-describedby="expires-help" placeholder="never";
                datalist #lifetimes { option value="7d"; option value="30d"; option value="90d"; option value="365d"; }
                p.help #expires-help { "Empty for never, or a lifetime such as " code { "90d" } ", " code { "12h" } ", " code { "2w" } "." }
            } @else {
                label for="expires_at" { "Expires at" }
                input #expires_at type="text" name="expires_at" value=(form.expires_at)
                    aria-describedby="expires-help" placeholder="never";
                p.help #expires-help { "Empty for never, or a UTC time such as " code { "2027-01-31T00:00:00Z" } "." }
            }
            label for="max_age" { "Maximum age" }
            input #max_age type="text" name="max_age" value=(form.max_age) aria-describedby="max-age-help";
            p.help #max-age-help { "Optional: this key's own rotation policy, e.g. " code { "30d" } "." }
            fieldset.stack {
                legend { "Usage limits" }
                label for="rate_limits" { "Rate limits" }
                input #rate_limits type="text" name="rate_limits" value=(form.rate_limits)
                    aria-describedby="rate-help" placeholder="none";
                p.help #rate-help { "Optional, comma-separated, e.g. " code { "100/1m, 5000/1h" } ": every one must allow a request (else 429)." }
                label for="quota" { "Credits" }
                input #quota type="text" name="quota" value=(form.quota)
                    aria-describedby="quota-help" placeholder="unlimited";
                p.help #quota-help { "Optional: " code { "500" } " (never refilled), " code { "10000/month" } ", " code { "10000/month@15" } " or " code { "1000/day" } ". Each request spends one. Changing it resets the balance." }
                label for="allowed_ips" { "Allowed networks" }
                input #allowed_ips type="text" name="allowed_ips" value=(form.allowed_ips)
                    aria-describedby="ips-help" placeholder="anywhere";
                p.help #ips-help { "Optional, separated by spaces or commas, e.g. " code { "203.0.113.0/24 2001:db8::/32" } "." }
            }
            label for="metadata" { "Metadata" }
            textarea #metadata name="metadata" rows="3" aria-describedby="metadata-help" { (form.metadata) }
            p.help #metadata-help { "Optional JSON object, e.g. " code { "{\"plan\": \"pro\"}" } "." }
            div.actions {
                button.button.primary type="submit" { (submit) }
                a.button href=(cancel) { "Cancel" }
            }
        }
    };
    views::page(admin.page(app, Nav::Keys).await, &title, body)
}

fn optional(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn spec_of(form: &NewKey, now: Timestamp) -> Result<KeySpec, String> {
    let expires = optional(&form.expires_in)
        .filter(|t| t != "never")
        .map(|t| Lifetime::parse(&t).map(Expiry::In))
        .transpose()
        .map_err(|e| format!("Expires in: {e}."))?;
    let max_age = optional(&form.max_age)
        .map(|t| Lifetime::parse(&t))
        .transpose()
        .map_err(|e| format!("Maximum age: {e}."))?;
    let metadata = match optional(&form.metadata) {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => map,
            _ => return Err("Metadata: must be a JSON object such as {\"plan\": \"pro\"}.".into()),
        },
    };
    let rate_limits =
        RateLimits::parse(&form.rate_limits).map_err(|e| format!("Rate limits: {e}."))?;
    let quota = optional(&form.quota)
        .map(|t| parse_quota(&t))
        .transpose()
        .map_err(|e| format!("Credits: {e}."))?;
    let networks = split_list(&form.allowed_ips);
    let allowed_ips = if networks.is_empty() {
        None
    } else {
        Some(
            IpAllowlist::parse(networks.iter().map(String::as_str))
                .map_err(|e| format!("Allowed networks: {e}."))?,
        )
    };
    Ok(KeySpec {
        name: form.name.trim().to_owned(),
        owner: optional(&form.owner),
        scopes: split_list(&form.scopes),
        metadata,
        expires,
        max_age,
        rate_limits,
        quota: quota
            .map(|(remaining, refill)| Quota::new(remaining, refill, now))
            .transpose()
            .map_err(|e| format!("Credits: {e}."))?,
        allowed_ips,
    })
}

/// The edit form of `record`, filled in with what it holds now.
fn form_of(record: &KeyRecord) -> NewKey {
    NewKey {
        name: record.name.clone(),
        owner: record.owner.clone().unwrap_or_default(),
        scopes: record.scopes.join(" "),
        expires_in: String::new(),
        expires_at: record
            .expires_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        max_age: record.max_age.map(|m| m.to_string()).unwrap_or_default(),
        metadata: if record.metadata.is_empty() {
            String::new()
        } else {
            serde_json::to_string_pretty(&record.metadata).unwrap_or_default()
        },
        rate_limits: record.limits.rate.to_string(),
        quota: record
            .limits
            .quota
            .as_ref()
            .map(quota_short_form)
            .unwrap_or_default(),
        allowed_ips: record
            .limits
            .allowed_ips
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// What the edit `form` changes in `record`: only the fields that differ.
fn patch_of(form: &NewKey, record: &KeyRecord, now: Timestamp) -> Result<Option<KeyPatch>, String> {
    let spec = spec_of(
        &NewKey {
            expires_in: String::new(),
            ..form.clone()
        },
        now,
    )?;
    // Credits change only when their short form does (the balance itself is not in the form).
    let quota_text = record.limits.quota.as_ref().map(quota_short_form);
    let quota_changed = optional(&form.quota) != quota_text;
    let expires_at = optional(&form.expires_at)
        .filter(|t| t != "never")
        .map(|t| Timestamp::parse_rfc3339(&t))
        .transpose()
        .map_err(|e| format!("Expires at: {e}."))?;
    let patch = KeyPatch {
        name: (spec.name != record.name).then_some(spec.name),
        owner: (spec.owner != record.owner).then_some(spec.owner),
        scopes: (spec.scopes != record.scopes).then_some(spec.scopes),
        metadata: (spec.metadata != record.metadata).then_some(spec.metadata),
        expires_at: (expires_at != record.expires_at).then_some(expires_at),
        max_age: (spec.max_age != record.max_age).then_some(spec.max_age),
        enabled: None,
        rate_limits: (spec.rate_limits != record.limits.rate).then_some(spec.rate_limits),
        quota: quota_changed.then_some(spec.quota),
        allowed_ips: (spec.allowed_ips != record.limits.allowed_ips).then_some(spec.allowed_ips),
    };
    Ok((patch != KeyPatch::default()).then_some(patch))
}

/// `GET /admin/keys/{id}/edit`.
pub async fn edit_form(
    State(app): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    if !admin.can_manage {
        return Err(UiError::read_only());
    }
    let record = load(&app, &id).await?;
    Ok(
        key_form_page(&app, &admin, &form_of(&record), Some(&record), None)
            .await
            .into_response(),
    )
}

/// `POST /admin/keys/{id}/edit`: change what differs, audited field by field.
pub async fn edit(
    State(app): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<NewKey>,
) -> Result<Response, UiError> {
    let Posted { admin, form } = posted;
    let record = load(&app, &id).await?;
    let updated = match patch_of(&form, &record, app.keygate.now()) {
        Ok(None) => {
            return admin
                .done(
                    &app,
                    "Nothing changed.".into(),
                    &format!("/admin/keys/{}", record.id),
                )
                .await;
        }
        Ok(Some(patch)) => app
            .keygate
            .update(&record.id, patch, &admin.audit)
            .await
            .map_err(UiError::from),
        Err(message) => Err(UiError::bad_request(message)),
    };
    let updated = match updated {
        Ok(updated) => updated,
        Err(error) if error.status == StatusCode::BAD_REQUEST => {
            let page = key_form_page(&app, &admin, &form, Some(&record), Some(&error.detail)).await;
            return Ok((StatusCode::BAD_REQUEST, page).into_response());
        }
        Err(error) => return Err(error),
    };
    tracing::info!(actor = %admin.audit.actor, key_id = %updated.id, "key changed in the admin UI");
    admin
        .done(
            &app,
            format!("Saved changes to \"{}\".", updated.name),
            &format!("/admin/keys/{}", updated.id),
        )
        .await
}

/// `POST /admin/keys`: issue, then show the key once on its page.
pub async fn create(
    State(app): State<AppState>,
    posted: Posted<NewKey>,
) -> Result<Response, UiError> {
    let Posted { admin, form } = posted;
    let issued = match spec_of(&form, app.keygate.now()) {
        Ok(spec) => app
            .keygate
            .issue(spec, &admin.audit)
            .await
            .map_err(UiError::from),
        Err(message) => Err(UiError::bad_request(message)),
    };
    let (record, key) = match issued {
        Ok(issued) => issued,
        Err(error) if error.status == StatusCode::BAD_REQUEST => {
            let page = key_form_page(&app, &admin, &form, None, Some(&error.detail)).await;
            return Ok((StatusCode::BAD_REQUEST, page).into_response());
        }
        Err(error) => return Err(error),
    };
    tracing::info!(actor = %admin.audit.actor, key_id = %record.id, "key issued in the admin UI");
    admin
        .flash(
            &app,
            Flash::Secret {
                title: format!("New key \"{}\"", record.name),
                value: Secret::new(key.expose()),
                key: Some(record.id.to_string()),
            },
        )
        .await?;
    Ok(Redirect::to(&format!("/admin/keys/{}", record.id)).into_response())
}

/// The keys before and after `record` in its rotation chain, oldest first (at most ten each
/// way).
async fn chain(app: &AppState, record: &KeyRecord) -> Result<Vec<KeyRecord>, UiError> {
    let mut chain = follow(app, record, |r| r.rotated_from.clone()).await?;
    chain.reverse();
    chain.push(record.clone());
    chain.extend(follow(app, record, |r| r.rotated_to.clone()).await?);
    Ok(chain)
}

/// The keys reached from `record` by `step` (one link of the rotation chain), nearest first,
/// at most ten.
async fn follow(
    app: &AppState,
    record: &KeyRecord,
    step: fn(&KeyRecord) -> Option<KeyId>,
) -> Result<Vec<KeyRecord>, UiError> {
    let mut found = Vec::new();
    let mut at = step(record);
    while let Some(id) = at.take().filter(|_| found.len() < 10) {
        if let Some(r) = app.keygate.get(&id).await? {
            at = step(&r);
            found.push(r);
        }
    }
    Ok(found)
}

/// `GET /admin/keys/{id}`.
pub async fn show(
    State(app): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let record = load(&app, &id).await?;
    let now = app.keygate.now();
    let status = record.status(now);
    let chain = chain(&app, &record).await?;
    let switch = app.keygate.switch_over(&record).await?;
    let events = app
        .keygate
        .audit_trail(&AuditQuery {
            key_id: Some(record.id.clone()),
            limit: 100,
            newest_first: true,
            ..AuditQuery::default()
        })
        .await?;
    let revoked = record.revoked_at.is_some();
    let usage = super::usage::key_section(&app, &record).await;
    let body = html! {
        div.detail-head {
            (views::status_badge(status))
            code.start { (record.start) "…" }
        }
        div.grid {
            section.card aria-labelledby="about" {
                h2 #about { "Key" }
                dl.fields {
                    dt { "Id" } dd { code #key-id { (record.id) } }
                    dt { "Name" } dd { (record.name) }
                    dt { "Owner" } dd { @if let Some(o) = &record.owner { a #key-owner href=(super::owners::path(o)) { (o) } } @else { span.muted { "none" } } }
                    dt { "Scopes" } dd { (views::scopes(&record.scopes)) }
                    dt { "Status" } dd #key-status { (status.as_str()) @if !record.enabled && !revoked { " (disabled)" } }
                    dt { "Created" } dd { (views::time(Some(record.created_at), "")) }
                    dt { "Expires" } dd { (views::time(record.expires_at, "never")) }
                    dt { "Last used" } dd { (views::time(record.last_used_at, "never")) }
                    @if let Some(max_age) = record.max_age { dt { "Maximum age" } dd { (max_age) } }
                    @if revoked {
                        dt { "Revoked" } dd { (views::time(record.revoked_at, "")) }
                        dt { "Reason" } dd { @if let Some(r) = &record.revoked_reason { (r) } @else { span.muted { "none given" } } }
                    }
                    @if let Some(at) = record.rotated_at { dt { "Rotated" } dd { (views::time(Some(at), "")) } }
                    dt { "Rate limits" } dd #key-rate-limits { @if record.limits.rate.is_empty() { span.muted { "none" } } @else { (record.limits.rate.to_string()) } }
                    @if !record.limits.owner_rate.is_empty() {
                        dt { "Owner's limits" } dd #key-owner-rate-limits { (record.limits.owner_rate.to_string()) " (shared with the owner's other keys)" }
                    }
                    dt { "Credits" } dd #key-credits {
                        @if let Some(q) = &record.limits.quota {
                            (q.remaining) " left"
                            @if let Some(next) = q.next_refill(now) { " · refilled to " (q.refill.map_or(0, |r| r.amount)) " " (views::time(Some(next), "")) }
                        } @else if let Some(holder) = &record.limits.quota_holder {
                            "spends the credits of " a href={ "/admin/keys/" (holder) } { code { (holder) } }
                        } @else { span.muted { "unlimited" } }
                    }
                    dt { "Allowed networks" } dd #key-allowed-ips { @if let Some(ips) = &record.limits.allowed_ips { (ips.to_string()) } @else { span.muted { "anywhere" } } }
                    dt { "Metadata" } dd { (views::json_block(&Value::Object(record.metadata.clone()))) }
                }
            }
            @if let Some(switch) = &switch {
                section.card #switch-over aria-labelledby="switch-over-title" {
                    h2 #switch-over-title { "Switch-over to the successor" }
                    dl.fields {
                        dt { "Successor" } dd { a href={ "/admin/keys/" (switch.successor_id) } { code { (switch.successor_id) } } }
                        dt { "Grace period" } dd { @if switch.in_grace { "ends " } @else { "ended " } (views::time(switch.grace_ends_at, "never")) }
                        dt { "Successor first used" } dd #successor-first-used { (views::time(switch.successor_first_used_at, "not yet")) }
                        dt { "This key last used" } dd #old-last-used { (views::time(switch.old_last_used_at, "never")) }
                        dt { "Uses since rotation" } dd #uses-since-rotation { (switch.old_uses_since_rotation) }
                        @if let Some(quiet) = switch.retire_when_switched {
                            dt { "Retired on switch-over" } dd { "once the successor is in use and this key has been unused for " (quiet) }
                        }
                    }
                }
            }
            @if admin.can_manage && !revoked {
                section.card aria-labelledby="actions" {
                    h2 #actions { "Actions" }
                    @if record.rotated_to.is_none() {
                        form.stack method="post" action={ "/admin/keys/" (record.id) "/rotate" } {
                            (views::csrf_field(&admin.session.csrf))
                            label for="grace" { "Grace period for the old key" }
                            input #grace type="text" name="grace" value=(DEFAULT_GRACE) aria-describedby="grace-help";
                            p.help #grace-help { "How long this key keeps working after rotation: " code { "0" } " or e.g. " code { "24h" } ", " code { "7d" } "." }
                            label for="retire_when_switched" { "Retire on switch-over (optional)" }
                            input #retire_when_switched type="text" name="retire_when_switched" aria-describedby="retire-help";
                            p.help #retire-help { "End the grace early once the new key is in use and this one has been unused this long, e.g. " code { "1h" } " (at least " code { "1m" } "; empty: the server's default)." }
                            button.button #rotate type="submit" { "Rotate key" }
                        }
                    }
                    form method="post" action={ "/admin/keys/" (record.id) "/enabled" } {
                        (views::csrf_field(&admin.session.csrf))
                        @if record.enabled {
                            input type="hidden" name="enabled" value="false";
                            button.button #disable type="submit" { "Disable key" }
                        } @else {
                            input type="hidden" name="enabled" value="true";
                            button.button #enable type="submit" { "Enable key" }
                        }
                    }
                    a.button #edit href={ "/admin/keys/" (record.id) "/edit" } { "Edit…" }
                    " "
                    a.button.danger #revoke href={ "/admin/keys/" (record.id) "/revoke" } { "Revoke key…" }
                }
            }
        }
        (usage)
        @if chain.len() > 1 {
            section aria-labelledby="chain" {
                h2 #chain { "Rotation chain" }
                ol.chain {
                    @for key in &chain {
                        li {
                            @if key.id == record.id { strong { code { (key.id) } " (this key)" } }
                            @else { (views::key_link(&key.id)) }
                            " " (views::status_badge(key.status(now)))
                            " created " (views::time(Some(key.created_at), ""))
                        }
                    }
                }
            }
        }
        section aria-labelledby="events" {
            h2 #events { "Audit events" }
            (events_table(&events.items, false))
            @if events.next_cursor.is_some() {
                p { a href={ "/admin/audit?key=" (record.id) } { "All events of this key" } }
            }
        }
    };
    Ok(views::page(admin.page(&app, Nav::Keys).await, &record.name, body).into_response())
}

/// Audit events as a table, newest first; `with_key` adds a column linking each event's key.
pub fn events_table(events: &[AuditEvent], with_key: bool) -> Markup {
    html! {
        @if events.is_empty() { p.empty { "No events." } }
        @else {
            div.table-wrap {
                table.events {
                    thead { tr {
                        th scope="col" { "Time" } th scope="col" { "Event" } th scope="col" { "Actor" }
                        @if with_key { th scope="col" { "Key" } }
                        th scope="col" { "Details" }
                    } }
                    tbody {
                        @for event in events {
                            tr {
                                td data-label="Time" { (views::time(Some(event.at), "")) }
                                td data-label="Event" { code { (event.kind) } }
                                td data-label="Actor" { (event.actor) }
                                @if with_key {
                                    td data-label="Key" { @if let Some(id) = &event.key_id { (views::key_link(id)) } @else { span.muted { "—" } } }
                                }
                                td data-label="Details" {
                                    @if event.details.is_empty() { span.muted { "—" } }
                                    @else {
                                        details {
                                            summary { (summary(&event.details)) }
                                            (views::json_block(&Value::Object(event.details.clone())))
                                        }
                                    }
                                    @if let Some(r) = &event.request_id { div.muted.small { "request " (r) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The changed fields' names, e.g. "name, enabled".
fn summary(details: &Map<String, Value>) -> String {
    let names: Vec<&str> = details.keys().map(String::as_str).take(4).collect();
    let more = details.len().saturating_sub(4);
    if more > 0 {
        format!("{} +{more}", names.join(", "))
    } else {
        names.join(", ")
    }
}

/// `GET /admin/keys/{id}/revoke`: the confirmation.
pub async fn revoke_form(
    State(app): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    if !admin.can_manage {
        return Err(UiError::read_only());
    }
    let record = load(&app, &id).await?;
    let body = html! {
        form.card.stack method="post" action={ "/admin/keys/" (record.id) "/revoke" } {
            (views::csrf_field(&admin.session.csrf))
            p.warn {
                "Revoking " strong { (record.name) } " (" code { (record.start) "…" } ") is final: "
                "every request with it is refused from now on, on every node. It cannot be undone."
            }
            label for="reason" { "Reason" }
            textarea #reason name="reason" rows="2" maxlength="500" aria-describedby="reason-help" {}
            p.help #reason-help { "Kept with the key and in the audit log, e.g. \"leaked in a CI log\"." }
            div.actions {
                button.button.danger #confirm-revoke type="submit" { "Revoke key" }
                a.button href={ "/admin/keys/" (record.id) } { "Cancel" }
            }
        }
    };
    Ok(views::page(admin.page(&app, Nav::Keys).await, "Revoke key", body).into_response())
}

/// The revoke form's fields.
#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    reason: String,
}

/// `POST /admin/keys/{id}/revoke`.
pub async fn revoke(
    State(app): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<RevokeForm>,
) -> Result<Response, UiError> {
    let id = parse_id(&id)?;
    let record = app
        .keygate
        .revoke(&id, optional(&posted.form.reason), &posted.admin.audit)
        .await?;
    tracing::info!(actor = %posted.admin.audit.actor, key_id = %record.id, "key revoked in the admin UI");
    posted
        .admin
        .done(
            &app,
            format!("Key \"{}\" revoked.", record.name),
            &format!("/admin/keys/{id}"),
        )
        .await
}

/// The rotate form's fields.
#[derive(Debug, Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    grace: String,
    #[serde(default)]
    retire_when_switched: String,
}

/// `POST /admin/keys/{id}/rotate`: issue the successor and show it once on its page.
pub async fn rotate(
    State(app): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<RotateForm>,
) -> Result<Response, UiError> {
    let id = parse_id(&id)?;
    let grace = optional(&posted.form.grace).unwrap_or_else(|| DEFAULT_GRACE.to_string());
    let grace_ms = parse_grace(&grace).map_err(|e| {
        UiError::bad_request(format!(
            "Grace period: expected 0 or a duration such as 24h; {e}."
        ))
    })?;
    let retire = optional(&posted.form.retire_when_switched)
        .map(|text| keygate::core::switch::parse_quiet(&text))
        .transpose()
        .map_err(|e| UiError::bad_request(format!("Retire on switch-over: {e}.")))?;
    let (old, new, key) = app
        .keygate
        .rotate_retiring(&id, grace_ms, retire, &posted.admin.audit)
        .await?;
    tracing::info!(actor = %posted.admin.audit.actor, key_id = %old.id, successor = %new.id, "key rotated in the admin UI");
    let admin = &posted.admin;
    admin
        .flash(
            &app,
            Flash::Secret {
                title: format!("New key \"{}\"", new.name),
                value: Secret::new(key.expose()),
                key: Some(new.id.to_string()),
            },
        )
        .await?;
    let notice = match old.expires_at {
        Some(at) => format!("Rotated. The old key ({}…) works until {at}.", old.start),
        None => format!("Rotated. The old key ({}…) no longer works.", old.start),
    };
    admin
        .done(&app, notice, &format!("/admin/keys/{}", new.id))
        .await
}

/// The enable/disable form's field.
#[derive(Debug, Deserialize)]
pub struct EnabledForm {
    enabled: bool,
}

/// `POST /admin/keys/{id}/enabled`.
pub async fn set_enabled(
    State(app): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<EnabledForm>,
) -> Result<Response, UiError> {
    let id = parse_id(&id)?;
    let patch = KeyPatch {
        enabled: Some(posted.form.enabled),
        ..KeyPatch::default()
    };
    let record = app.keygate.update(&id, patch, &posted.admin.audit).await?;
    let state = if record.enabled {
        "enabled"
    } else {
        "disabled"
    };
    let notice = format!("Key \"{}\" {state}.", record.name);
    posted
        .admin
        .done(&app, notice, &format!("/admin/keys/{id}"))
        .await
}
