//! The command line: what clap parses ([`args`]) and the one-shot commands that manage keys
//! from the shell (everything but `serve`, which is [`crate::serve`]).

mod admin;
pub mod args;
mod audit;
pub mod client;
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
        Command::Client(command) => client::run(command, out).await,
        Command::Owners(command) => owners(keygate, command, out).await,
        Command::Serve(_) | Command::Gateway(_) => Err(Failure::Other(
            "serve and gateway are not one-shot commands".into(),
        )),
    }
}

/// `keygate owners ...`
async fn owners(
    keygate: &Keygate,
    command: args::OwnersCommand,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    match command {
        args::OwnersCommand::Set {
            owner,
            emails,
            digest,
        } => {
            let set = keygate
                .set_owner_emails(&owner, &emails, digest, &keys::cli())
                .await?;
            if set.emails.is_empty() {
                writeln!(out, "{owner}: no contact addresses")?;
            } else {
                let mode = if set.digest { " (daily digest)" } else { "" };
                writeln!(out, "{owner}: {}{mode}", set.emails.join(", "))?;
            }
        }
        args::OwnersCommand::Show { owner, json } => {
            let contacts = keygate.owner_contacts(&owner).await?;
            if json {
                output::print_json(
                    out,
                    &serde_json::json!({"owner": owner, "emails": contacts.emails, "digest": contacts.digest}),
                )?;
            } else {
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
            }
        }
        args::OwnersCommand::Emails { json } => {
            let emails = keygate.emails(100).await?;
            if json {
                output::print_json(out, &emails)?;
            } else {
                for e in &emails {
                    writeln!(
                        out,
                        "email_{}  {}  {}  {}  attempts {}{}",
                        e.id,
                        e.status.as_str(),
                        e.recipient,
                        e.subject,
                        e.attempts,
                        e.last_error
                            .as_deref()
                            .map_or(String::new(), |x| format!(" ({x})"))
                    )?;
                }
                if emails.is_empty() {
                    writeln!(out, "(no emails)")?;
                }
            }
        }
    }
    Ok(0)
}
