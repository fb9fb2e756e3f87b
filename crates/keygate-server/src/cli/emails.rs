//! `keygate emails list`: the email log, newest first, filtered by state, recipient and owner.

use std::io::Write;

use keygate::core::email::EmailDelivery;
use keygate::{EmailQuery, Keygate};

use super::args::{EmailsCommand, EmailsListArgs};
use super::output::{print_json, print_table, time_text};
use crate::Failure;

/// Emails listed when `--limit` is not given.
const DEFAULT_LIMIT: u32 = 100;

/// `keygate emails ...`
pub async fn run(
    keygate: &Keygate,
    command: EmailsCommand,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    match command {
        EmailsCommand::List(args) => list(keygate, args, out).await,
    }
}

async fn list(keygate: &Keygate, args: EmailsListArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    let query = EmailQuery {
        status: args.status.map(Into::into),
        recipient: args.recipient,
        owner: args.owner,
        limit: args.limit.unwrap_or(DEFAULT_LIMIT),
        cursor: args.before.map(|id| id.to_string()),
    };
    let page = keygate.emails(&query).await?;
    if args.json {
        print_json(
            out,
            &serde_json::json!({"items": page.items, "next_cursor": page.next_cursor}),
        )?;
    } else {
        print_emails(out, &page.items)?;
        if let Some(next) = page.next_cursor {
            writeln!(out, "(more: --before {next})")?;
        }
    }
    Ok(0)
}

/// The log as a table: id, event, key, recipient, state, attempts, when sent, last error.
pub fn print_emails(out: &mut dyn Write, emails: &[EmailDelivery]) -> Result<(), Failure> {
    let rows: Vec<[String; 8]> = emails
        .iter()
        .map(|e| {
            [
                format!("email_{}", e.id),
                e.event.to_string(),
                e.key_id.clone().unwrap_or_else(|| "-".into()),
                if e.digest {
                    format!("{} (digest)", e.recipient)
                } else {
                    e.recipient.clone()
                },
                e.status.as_str().to_owned(),
                e.attempts.to_string(),
                e.sent_at
                    .map_or_else(|| "-".to_owned(), |t| time_text(Some(t))),
                e.last_error
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |x| x.replace(['\r', '\n'], " ")),
            ]
        })
        .collect();
    let header = [
        "ID",
        "EVENT",
        "KEY",
        "RECIPIENT",
        "STATUS",
        "ATTEMPTS",
        "SENT",
        "LAST ERROR",
    ];
    print_table(out, header, &rows, "(no emails)")
}
