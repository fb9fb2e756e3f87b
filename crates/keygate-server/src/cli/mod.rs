//! The command line: what clap parses ([`args`]) and the one-shot commands that manage keys
//! from the shell (everything but `serve`, which is [`crate::serve`]).

mod admin;
pub mod args;
mod audit;
pub mod client;
mod emails;
mod import;
mod keys;
mod output;
mod webhooks;

use std::io::Write;

use keygate::Keygate;

pub use args::{Cli, Command};

use crate::Failure;

/// Runs a one-shot command on `keygate`, printing to `out`; `Ok(code)` is the exit status.
pub async fn run(keygate: &Keygate, command: Command, out: &mut dyn Write) -> Result<u8, Failure> {
    match command {
        Command::Keys(command) => keys::run(keygate, command, out).await,
        Command::Audit(args) => audit::audit(keygate, args, out).await,
        Command::Incident(args::IncidentCommand::Revoke(args)) => {
            keys::incident_revoke(keygate, args, out).await
        }
        Command::RotateDue(args) => keys::rotate_due(keygate, args, out).await,
        Command::Refill { json } => keys::refill(keygate, json, out).await.map(|()| 0),
        Command::Webhooks(command) => webhooks::webhooks(keygate, command, out).await,
        Command::Admin(command) => admin::run(keygate, command, out).await,
        Command::Import(command) => import::run(keygate, command, out).await,
        Command::Client(command) => client::run(command, out).await,
        Command::Owners(command) => owners(keygate, command, out).await,
        Command::Emails(command) => emails::run(keygate, command, out).await,
        Command::Serve(_) | Command::Gateway(_) => Err(Failure::Other(
            "serve and gateway are not one-shot commands".into(),
        )),
    }
}

/// `keygate owners ...`: an owner's record — shared rate limits, contact addresses.
async fn owners(
    keygate: &Keygate,
    command: args::OwnersCommand,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let (owner, json) = match command {
        args::OwnersCommand::Set {
            owner,
            rates,
            no_rate,
            emails,
            no_email,
            digest,
            no_digest,
            json,
        } => {
            // Check everything before changing anything.
            let limits = (!rates.is_empty() || no_rate)
                .then(|| keys::rate_limits(rates))
                .transpose()?;
            if !emails.is_empty() || no_email || digest || no_digest {
                let now = keygate.owner_contacts(&owner).await?;
                let emails = if emails.is_empty() && !no_email {
                    now.emails
                } else {
                    emails
                };
                let digest = if digest || no_digest {
                    digest
                } else {
                    now.digest
                };
                keygate
                    .set_owner_emails(&owner, &emails, digest, &keys::cli())
                    .await?;
            }
            if let Some(limits) = limits {
                keygate
                    .set_owner_limits(&owner, &limits, &keys::cli())
                    .await?;
            }
            (owner, json)
        }
        args::OwnersCommand::Show { owner, json } => (owner, json),
        args::OwnersCommand::Emails { json } => {
            let page = keygate
                .emails(&keygate::EmailQuery {
                    limit: 100,
                    ..keygate::EmailQuery::default()
                })
                .await?;
            if json {
                output::print_json(out, &page.items)?;
            } else {
                emails::print_emails(out, &page.items)?;
            }
            return Ok(0);
        }
    };
    let contacts = keygate.owner_contacts(&owner).await?;
    let limits = keygate
        .owner(&owner)
        .await?
        .map(|o| o.rate_limits)
        .unwrap_or_default();
    if json {
        output::print_json(
            out,
            &serde_json::json!({"owner": owner, "rate_limits": limits, "emails": contacts.emails, "digest": contacts.digest}),
        )?;
        return Ok(0);
    }
    let emails = if contacts.emails.is_empty() {
        "-".to_owned()
    } else {
        contacts.emails.join(", ")
    };
    let mode = if contacts.digest {
        " (daily digest)"
    } else {
        ""
    };
    writeln!(out, "{owner}: {emails}{mode}")?;
    if !limits.is_empty() {
        writeln!(out, "{owner}: {limits} (shared by all of its keys)")?;
    }
    Ok(0)
}
