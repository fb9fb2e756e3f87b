//! `keygate audit`: the trail, oldest first, as text or JSON lines (for a SIEM).

use std::io::Write;

use keygate::{AuditQuery, Keygate, MAX_PAGE_SIZE};
use serde_json::Value;

use super::args::AuditArgs;
use super::output::print_json;
use crate::Failure;

/// `keygate audit`: every matching event, oldest first.
pub async fn audit(keygate: &Keygate, args: AuditArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    let mut query = AuditQuery {
        key_id: args.key_id,
        kind: args.kind,
        since: args.since,
        limit: MAX_PAGE_SIZE,
        ..AuditQuery::default()
    };
    let mut printed = 0;
    loop {
        let page = keygate.audit_trail(&query).await?;
        for event in &page.items {
            if args.json {
                print_json(out, event)?;
            } else {
                writeln!(
                    out,
                    "{}  {}  {:<12} {:<36} {}  {}",
                    event.seq,
                    event.at,
                    event.kind,
                    event.actor,
                    event.key_id.as_ref().map_or("-", |id| id.as_str()),
                    Value::Object(event.details.clone())
                )?;
            }
            printed += 1;
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    if printed == 0 && !args.json {
        writeln!(out, "(no events)")?;
    }
    Ok(0)
}
