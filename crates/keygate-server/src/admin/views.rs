//! The admin UI's page frame and the pieces every page shares: navigation, one-time
//! messages, status badges, times, pagination. Markup is maud, escaped by default.

use http::StatusCode;
use keygate::core::{KeyId, Status, Timestamp};
use maud::{DOCTYPE, Markup, html};

use super::session::Flash;

/// Which section a page belongs to (highlighted in the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Keys.
    Keys,
    /// Audit log.
    Audit,
    /// Webhooks.
    Webhooks,
    /// The email log.
    Emails,
}

/// What the frame needs to know about the person and the session.
#[derive(Debug)]
pub struct Ctx {
    /// Their display name.
    pub who: String,
    /// Signed in read-only.
    pub read_only: bool,
    /// The session's CSRF token, for the forms on the page.
    pub csrf: String,
    /// One-time messages to show on this page.
    pub flashes: Vec<Flash>,
    /// The current section.
    pub nav: Nav,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · keygate admin" }
            link rel="stylesheet" href="/admin/assets/admin.css";
            script src="/admin/assets/admin.js" defer {}
        }
    }
}

/// A whole page for a signed-in person: the frame, the messages, the title, `body`.
pub fn page(ctx: Ctx, title: &str, body: Markup) -> Markup {
    let link = |nav: Nav, href: &str, label: &str| {
        html! {
            li { a href=(href) aria-current=[(ctx.nav == nav).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/admin/keys" { "keygate" }
                    nav aria-label="Sections" {
                        ul {
                            (link(Nav::Keys, "/admin/keys", "Keys"))
                            (link(Nav::Audit, "/admin/audit", "Audit log"))
                            (link(Nav::Webhooks, "/admin/webhooks", "Webhooks"))
                            (link(Nav::Emails, "/admin/emails", "Emails"))
                        }
                    }
                    div.who {
                        span.name title="Signed in as" { (ctx.who) }
                        @if ctx.read_only { span.badge.neutral { "read-only" } }
                        form method="post" action="/admin/logout" {
                            (csrf_field(&ctx.csrf))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    @for flash in &ctx.flashes { (flash_box(flash)) }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page outside a session (sign-in, errors).
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main #main {
                    p.brand-line { span.brand { "keygate" } " admin" }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error page: what happened, what to do.
pub fn error_page(status: StatusCode, title: &str, detail: &str) -> Markup {
    bare_page(
        title,
        html! {
            p.error role="alert" { (detail) }
            p.muted { "HTTP " (status.as_u16()) }
            p { a href="/admin/keys" { "Back to the keys" } }
        },
    )
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

fn flash_box(flash: &Flash) -> Markup {
    match flash {
        Flash::Notice(text) => html! { p.notice role="status" { (text) } },
        Flash::Secret { title, value, key } => html! {
            section.secret aria-labelledby="secret-title" {
                h2 #secret-title { (title) }
                p.warn {
                    strong { "Copy it now: you won't see it again. " }
                    "keygate keeps only a hash of it; if it is lost, rotate or revoke the key."
                }
                div.copy-row {
                    code #secret-value data-secret { (value.expose()) }
                    button.button type="button" data-copy="secret-value" hidden { "Copy" }
                }
                @if let Some(id) = key {
                    p.muted { "Key " code { (id) } }
                }
            }
        },
    }
}

/// A coloured status label (colour is not the only cue: the word is there too).
pub fn status_badge(status: Status) -> Markup {
    let class = match status {
        Status::Active => "ok",
        Status::Disabled => "neutral",
        Status::Expired => "warn",
        Status::Revoked => "bad",
    };
    html! { span class={ "badge " (class) } { (status.as_str()) } }
}

/// A time, machine-readable, shown in UTC to the minute; "never" for none.
pub fn time(at: Option<Timestamp>, none: &str) -> Markup {
    match at {
        Some(at) => {
            let text = at.to_rfc3339();
            let shown = text.get(..16).unwrap_or(&text).replace('T', " ");
            html! { time datetime=(text) title=(text) { (shown) " UTC" } }
        }
        None => html! { span.muted { (none) } },
    }
}

/// A link to a key's page.
pub fn key_link(id: &KeyId) -> Markup {
    html! { a href={ "/admin/keys/" (id) } { code { (id) } } }
}

/// Scope names as chips.
pub fn scopes(scopes: &[String]) -> Markup {
    html! {
        @if scopes.is_empty() { span.muted { "none" } }
        @else {
            ul.chips { @for s in scopes { li { code { (s) } } } }
        }
    }
}

/// "Next page" (and "first page") links keeping the current filters.
pub fn pager(
    base: &str,
    filters: &[(&str, String)],
    next_cursor: Option<&str>,
    paged: bool,
) -> Markup {
    let href = |cursor: Option<&str>| {
        let mut pairs: Vec<(&str, &str)> = filters
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        if let Some(c) = cursor {
            pairs.push(("cursor", c));
        }
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        if query.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{query}")
        }
    };
    html! {
        nav.pager aria-label="Pages" {
            @if paged { a href=(href(None)) { "« First page" } }
            @if let Some(cursor) = next_cursor { a rel="next" href=(href(Some(cursor))) { "Next page »" } }
        }
    }
}

/// JSON, indented, for metadata and event details.
pub fn json_block(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}
