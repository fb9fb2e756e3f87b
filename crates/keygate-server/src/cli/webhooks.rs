//! `keygate webhooks ...`: add endpoints (the signing secret is printed once), list, change,
//! disable, enable and delete them, read an endpoint's delivery log.

use std::io::Write;

use keygate::Keygate;
use serde_json::Value;

use super::args::WebhooksCommand;
use super::output::print_json;
use crate::Failure;

/// `keygate webhooks ...`
pub async fn webhooks(
    keygate: &Keygate,
    command: WebhooksCommand,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    match command {
        WebhooksCommand::Add {
            url,
            events,
            slack,
            receives_secrets,
            json,
        } => {
            let endpoint = keygate
                .add_webhook(&url, events, slack, receives_secrets, &super::keys::cli())
                .await?;
            if json {
                let mut body =
                    serde_json::to_value(&endpoint).map_err(|e| Failure::Other(e.to_string()))?;
                body["secret"] = Value::String(endpoint.secret.clone());
                writeln!(out, "{body}")?;
            } else {
                writeln!(
                    out,
                    "Added {} -> {} ({})",
                    endpoint.id,
                    endpoint.url,
                    endpoint.events.join(",")
                )?;
                writeln!(
                    out,
                    "Signing secret, shown only this once:\n\n{}\n",
                    endpoint.secret
                )?;
            }
        }
        WebhooksCommand::List { json } => {
            let endpoints = keygate.webhooks().await?;
            if json {
                print_json(out, &endpoints)?;
            } else {
                for e in &endpoints {
                    writeln!(
                        out,
                        "{}  {}  {}{}",
                        e.id,
                        e.url,
                        e.events.join(","),
                        if e.slack { "  (slack)" } else { "" }
                    )?;
                }
                if endpoints.is_empty() {
                    writeln!(out, "(no webhooks)")?;
                }
            }
        }
        WebhooksCommand::Update {
            id,
            url,
            events,
            json,
        } => {
            let events = (!events.is_empty()).then_some(events);
            let endpoint = keygate
                .update_webhook(&id, url.as_deref(), events, None, &super::keys::cli())
                .await
                .map_err(no_such_webhook)?;
            if json {
                print_json(out, &endpoint)?;
            } else {
                writeln!(
                    out,
                    "Updated {} -> {} ({})",
                    endpoint.id,
                    endpoint.url,
                    endpoint.events.join(",")
                )?;
            }
        }
        WebhooksCommand::Disable { id } => set_enabled(keygate, &id, false, out).await?,
        WebhooksCommand::Enable { id } => set_enabled(keygate, &id, true, out).await?,
        WebhooksCommand::Delete { id } => {
            let (endpoint, dropped) = keygate
                .delete_webhook(&id, &super::keys::cli())
                .await
                .map_err(no_such_webhook)?;
            writeln!(
                out,
                "Deleted {} ({dropped} pending deliveries dropped)",
                endpoint.id
            )?;
        }
        WebhooksCommand::Deliveries { id, json } => {
            let deliveries = keygate.webhook_deliveries(&id, 100).await?;
            if json {
                print_json(out, &deliveries)?;
            } else {
                for d in &deliveries {
                    writeln!(
                        out,
                        "msg_{}  event {}  {}  attempts {}  last {}{}",
                        d.id,
                        d.event_seq,
                        d.status.as_str(),
                        d.attempts,
                        d.last_status.map_or("-".to_owned(), |s| s.to_string()),
                        d.last_error
                            .as_deref()
                            .map_or(String::new(), |e| format!(" ({e})"))
                    )?;
                }
                if deliveries.is_empty() {
                    writeln!(out, "(no deliveries)")?;
                }
            }
        }
    }
    Ok(0)
}

/// `keygate webhooks enable|disable ID`
async fn set_enabled(
    keygate: &Keygate,
    id: &str,
    enabled: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let endpoint = keygate
        .update_webhook(id, None, None, Some(enabled), &super::keys::cli())
        .await
        .map_err(no_such_webhook)?;
    let state = if endpoint.enabled {
        "enabled"
    } else {
        "disabled (its pending deliveries wait)"
    };
    writeln!(out, "{} {state}", endpoint.id)?;
    Ok(())
}

/// "No key with that id" would mislead here.
fn no_such_webhook(e: keygate::Error) -> Failure {
    match e {
        keygate::Error::NotFound => Failure::Other("no webhook endpoint with that id".into()),
        e => e.into(),
    }
}
