//! An owner's page: the rate limits all of its keys share (set here by a key admin), its
//! email contacts (with a link to their email log), the usage of all its keys (chart,
//! headroom, credits) and its keys.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use keygate::core::KeyRecord;
use keygate::core::limits::RateLimits;
use keygate::{ListQuery, MAX_PAGE_SIZE};
use maud::html;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::views::{self, Nav};
use super::{Admin, Posted, UiError};
use crate::api::AppState;

/// Most keys listed on an owner's page (the keys list, searched by owner, has them all).
const KEYS_SHOWN: usize = 50;
/// Most keys read to add up an owner's credits (pages of [`MAX_PAGE_SIZE`]).
const KEYS_READ: usize = 10 * MAX_PAGE_SIZE as usize;

/// The path of `owner`'s page.
pub fn path(owner: &str) -> String {
    format!(
        "/admin/owners/{}",
        utf8_percent_encode(owner, NON_ALPHANUMERIC)
    )
}

fn checked(owner: String) -> Result<String, UiError> {
    keygate::core::record::check_owner(owner).map_err(|e| UiError::bad_request(format!("{e}.")))
}

/// `GET /admin/owners/{owner}`.
pub async fn show(
    State(app): State<AppState>,
    admin: Admin,
    Path(owner): Path<String>,
) -> Result<Response, UiError> {
    let owner = checked(owner)?;
    let now = app.keygate.now();
    let limits = app.keygate.owner(&owner).await?;
    let contacts = app.keygate.owner_contacts(&owner).await?;
    let (keys, complete) = keys_of(&app, &owner).await?;
    let rate = limits
        .as_ref()
        .map(|l| l.rate_limits.clone())
        .unwrap_or_default();
    let shared = rate.to_string();
    let usage = super::usage::owner_section(&app, &owner, &rate, &keys, complete).await;
    let body = html! {
        div.grid {
            section.card aria-labelledby="limits" {
                h2 #limits { "Shared rate limits" }
                p.help { "Every request with any of this owner's keys spends these as well as the key's own limits, on every node." }
                dl.fields {
                    dt { "Owner" } dd { code #owner-id { (owner) } }
                    dt { "Rate limits" } dd #owner-rate-limits {
                        @if shared.is_empty() { span.muted { "none" } } @else { (shared) }
                    }
                    @if let Some(l) = &limits { dt { "Set" } dd { (views::time(Some(l.updated_at), "")) } }
                }
                @if admin.can_manage {
                    form.stack method="post" action=(path(&owner)) {
                        (views::csrf_field(&admin.session.csrf))
                        label for="rate_limits" { "Rate limits" }
                        input #rate_limits type="text" name="rate_limits" value=(shared) maxlength="400" aria-describedby="rate-help";
                        p.help #rate-help { "Comma-separated, e.g. " code { "1000/1m, 50000/1d" } "; empty removes them." }
                        button.button #save-owner type="submit" { "Save limits" }
                    }
                }
            }
            section.card aria-labelledby="contacts" {
                h2 #contacts { "Email contacts" }
                p.help { "Notices about this owner's keys go to these addresses (" code { "keygate owners set" } " changes them)." }
                dl.fields {
                    dt { "Addresses" } dd #owner-emails {
                        @if contacts.emails.is_empty() { span.muted { "none" } } @else { (contacts.emails.join(", ")) }
                    }
                    dt { "Mode" } dd { @if contacts.digest { "one daily digest per address" } @else { "one email per notice" } }
                }
                p { a #owner-email-log href={ "/admin/emails?owner=" (utf8_percent_encode(&owner, NON_ALPHANUMERIC)) } { "Emails about this owner's keys" } }
            }
            section.card aria-labelledby="keys" {
                h2 #keys { "Keys" }
                @if keys.is_empty() { p.empty { "No keys name this owner." } }
                @else {
                    ul {
                        @for key in keys.iter().take(KEYS_SHOWN) {
                            li { (views::key_link(&key.id)) " " (key.name) " " (views::status_badge(key.status(now))) }
                        }
                    }
                    @if keys.len() > KEYS_SHOWN {
                        p { a href={ "/admin/keys?q=" (utf8_percent_encode(&owner, NON_ALPHANUMERIC)) } { "All keys of this owner" } }
                    }
                }
            }
        }
        (usage)
    };
    let title = format!("Owner {owner}");
    Ok(views::page(admin.page(&app, Nav::Keys).await, &title, body).into_response())
}

/// `owner`'s keys, up to [`KEYS_READ`]; and whether that is all of them.
async fn keys_of(app: &AppState, owner: &str) -> Result<(Vec<KeyRecord>, bool), keygate::Error> {
    let mut query = ListQuery::new(app.keygate.now());
    query.owner = Some(owner.to_owned());
    query.limit = MAX_PAGE_SIZE;
    let mut keys = Vec::new();
    loop {
        let page = app.keygate.list(query.clone()).await?;
        keys.extend(page.items);
        match page.next_cursor {
            None => return Ok((keys, true)),
            Some(_) if keys.len() >= KEYS_READ => return Ok((keys, false)),
            Some(cursor) => query.cursor = Some(cursor),
        }
    }
}

/// The owner form's field.
#[derive(Debug, Deserialize)]
pub struct OwnerForm {
    #[serde(default)]
    rate_limits: String,
}

/// `POST /admin/owners/{owner}`.
pub async fn set(
    State(app): State<AppState>,
    Path(owner): Path<String>,
    posted: Posted<OwnerForm>,
) -> Result<Response, UiError> {
    let owner = checked(owner)?;
    let limits = RateLimits::parse(&posted.form.rate_limits)
        .map_err(|e| UiError::bad_request(format!("Rate limits: {e}.")))?;
    app.keygate
        .set_owner_limits(&owner, &limits, &posted.admin.audit)
        .await?;
    let notice = if limits.is_empty() {
        format!("Owner \"{owner}\" has no shared rate limits now.")
    } else {
        format!("Owner \"{owner}\" shares {limits} across its keys.")
    };
    posted.admin.done(&app, notice, &path(&owner)).await
}
