//! `keygate keys ...`: each command is a few calls on [`Keygate`] and a printout.

use std::io::{BufRead, Write};

use keygate::store::{ListQuery, StoreError};
use keygate::{KeyPatch, KeyRecord, KeySpec, Keygate, Outcome};
use keygate_core::{Actor, Audit, Expiry, Status, Timestamp};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::Failure;
use crate::cli::{
    AuditArgs, CreateArgs, IncidentArgs, KeysCommand, ListArgs, RotateDueArgs, StatusArg,
    WebhooksCommand,
};

/// Changes made from the command line are audited as `cli`.
fn cli() -> Audit {
    Audit::by(Actor::Cli)
}

/// What `show`, `list` and `--json` print about a key: everything but its hash.
#[derive(Debug, Serialize)]
struct KeyView<'a> {
    id: &'a str,
    name: &'a str,
    start: &'a str,
    owner: Option<&'a str>,
    scopes: &'a [String],
    metadata: &'a Map<String, Value>,
    status: Status,
    enabled: bool,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
    revoked_reason: Option<&'a str>,
    last_used_at: Option<Timestamp>,
    rotated_from: Option<&'a str>,
    rotated_to: Option<&'a str>,
    rotated_at: Option<Timestamp>,
    max_age: Option<keygate_core::Lifetime>,
}

/// `keys create --json`: the key's view plus, this once, the key itself.
#[derive(Debug, Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    view: KeyView<'a>,
    key: &'a str,
}

impl<'a> KeyView<'a> {
    fn of(r: &'a KeyRecord, now: Timestamp) -> Self {
        Self {
            id: r.id.as_str(),
            name: &r.name,
            start: &r.start,
            owner: r.owner.as_deref(),
            scopes: &r.scopes,
            metadata: &r.metadata,
            status: r.status(now),
            enabled: r.enabled,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            revoked_reason: r.revoked_reason.as_deref(),
            last_used_at: r.last_used_at,
            rotated_from: r.rotated_from.as_ref().map(|id| id.as_str()),
            rotated_to: r.rotated_to.as_ref().map(|id| id.as_str()),
            rotated_at: r.rotated_at,
            max_age: r.max_age,
        }
    }
}

/// Runs one `keys` command; `Ok(code)` is the exit status.
pub async fn run(keygate: &Keygate, command: KeysCommand) -> Result<u8, Failure> {
    let mut out = std::io::stdout().lock();
    let now = keygate.now();
    match command {
        KeysCommand::Create(args) => create(keygate, args, &mut out).await?,
        KeysCommand::List(args) => list(keygate, args, &mut out).await?,
        KeysCommand::Show { id, json } => {
            let record = keygate.get(&id).await?.ok_or(StoreError::NotFound)?;
            print_key(&mut out, &record, now, json)?;
        }
        KeysCommand::Revoke { id, reason, json } => {
            let record = keygate.revoke(&id, reason, &cli()).await?;
            if json {
                print_key(&mut out, &record, now, true)?;
            } else {
                writeln!(out, "Revoked {}", record.id)?;
            }
        }
        KeysCommand::Rotate { id, grace, json } => {
            let (old, new, key) = keygate.rotate(&id, grace, &cli()).await?;
            if json {
                let created = Created {
                    view: KeyView::of(&new, now),
                    key: key.expose(),
                };
                print_json(&mut out, &created)?;
            } else {
                writeln!(out, "Rotated {} -> {} ({})", old.id, new.id, new.name)?;
                writeln!(
                    out,
                    "The old key works until {}.",
                    time_text(old.expires_at)
                )?;
                writeln!(out)?;
                writeln!(out, "The new key, shown only this once:")?;
                writeln!(out)?;
                writeln!(out, "{}", key.expose())?;
            }
        }
        KeysCommand::Disable { id } => {
            let patch = KeyPatch {
                enabled: Some(false),
                ..KeyPatch::default()
            };
            let record = keygate.update(&id, patch, &cli()).await?;
            writeln!(out, "Disabled {}", record.id)?;
        }
        KeysCommand::Enable { id } => {
            let patch = KeyPatch {
                enabled: Some(true),
                ..KeyPatch::default()
            };
            let record = keygate.update(&id, patch, &cli()).await?;
            writeln!(out, "Enabled {} (now {})", record.id, record.status(now))?;
        }
        KeysCommand::Verify { key, scopes, json } => {
            let key = if key == "-" {
                read_key_from_stdin()?
            } else {
                key
            };
            let verification = keygate.verify(&key, &scopes).await?;
            keygate.flush_usage().await?;
            if json {
                let body = json!({
                    "valid": verification.outcome.is_valid(),
                    "code": verification.outcome.code(),
                    "detail": verification.detail,
                    "key": verification.key,
                });
                writeln!(out, "{body}")?;
            } else {
                writeln!(out, "{}", verification.outcome.code())?;
            }
            return Ok(if verification.outcome == Outcome::Valid {
                0
            } else {
                1
            });
        }
    }
    Ok(0)
}

fn read_key_from_stdin() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

async fn create(keygate: &Keygate, args: CreateArgs, out: &mut impl Write) -> Result<(), Failure> {
    let spec = KeySpec {
        name: args.name,
        owner: args.owner,
        scopes: args.scopes,
        metadata: args.metadata.unwrap_or_default(),
        expires: match (args.expires_in, args.expires_at) {
            (Some(lifetime), _) => Some(Expiry::In(lifetime)),
            (None, Some(at)) => Some(Expiry::At(at)),
            (None, None) => None,
        },
        max_age: args.max_age,
    };
    let (record, key) = keygate.issue(spec, &cli()).await?;
    if args.json {
        let created = Created {
            view: KeyView::of(&record, keygate.now()),
            key: key.expose(),
        };
        print_json(out, &created)?;
    } else {
        writeln!(out, "Created {} ({})", record.id, record.name)?;
        writeln!(out, "Scopes:  {}", scopes_text(&record.scopes))?;
        writeln!(out, "Expires: {}", time_text(record.expires_at))?;
        writeln!(out)?;
        writeln!(out, "The key, shown only this once:")?;
        writeln!(out)?;
        writeln!(out, "{}", key.expose())?;
    }
    Ok(())
}

async fn list(keygate: &Keygate, args: ListArgs, out: &mut impl Write) -> Result<(), Failure> {
    let mut query = ListQuery::new(keygate.now());
    query.owner = args.owner;
    query.name_contains = args.search;
    query.status = match args.status {
        StatusArg::Active => Some(Status::Active),
        StatusArg::Disabled => Some(Status::Disabled),
        StatusArg::Expired => Some(Status::Expired),
        StatusArg::Revoked => Some(Status::Revoked),
        StatusArg::All => None,
    };
    let wanted = args.limit.map_or(usize::MAX, |n| n as usize);
    query.limit = args.limit.unwrap_or(keygate::store::MAX_PAGE_SIZE);
    let mut records = Vec::new();
    loop {
        let page = keygate.list(query.clone()).await?;
        records.extend(page.items);
        match page.next_cursor {
            Some(cursor) if records.len() < wanted => query.cursor = Some(cursor),
            _ => break,
        }
    }
    records.truncate(wanted);
    let now = keygate.now();
    if args.json {
        let views: Vec<KeyView<'_>> = records.iter().map(|r| KeyView::of(r, now)).collect();
        print_json(out, &views)?;
        return Ok(());
    }
    let rows: Vec<[String; 8]> = records
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.name.clone(),
                r.start.clone(),
                r.owner.clone().unwrap_or_else(|| "-".into()),
                r.status(now).to_string(),
                scopes_text(&r.scopes),
                time_text(r.expires_at),
                time_text(r.last_used_at),
            ]
        })
        .collect();
    let header = [
        "ID",
        "NAME",
        "START",
        "OWNER",
        "STATUS",
        "SCOPES",
        "EXPIRES",
        "LAST USED",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    if rows.is_empty() {
        writeln!(out, "(no keys)")?;
    }
    Ok(())
}

fn print_key(
    out: &mut impl Write,
    record: &KeyRecord,
    now: Timestamp,
    json: bool,
) -> Result<(), Failure> {
    let view = KeyView::of(record, now);
    if json {
        print_json(out, &view)?;
        return Ok(());
    }
    writeln!(out, "id:          {}", view.id)?;
    writeln!(out, "name:        {}", view.name)?;
    writeln!(out, "start:       {}", view.start)?;
    writeln!(out, "owner:       {}", view.owner.unwrap_or("-"))?;
    writeln!(out, "status:      {}", view.status)?;
    writeln!(out, "scopes:      {}", scopes_text(view.scopes))?;
    writeln!(out, "metadata:    {}", Value::Object(view.metadata.clone()))?;
    writeln!(out, "created_at:  {}", view.created_at)?;
    writeln!(out, "expires_at:  {}", time_text(view.expires_at))?;
    writeln!(out, "last_used:   {}", time_text(view.last_used_at))?;
    if let Some(max_age) = view.max_age {
        writeln!(out, "max_age:     {max_age}")?;
    }
    if let Some(from) = view.rotated_from {
        writeln!(out, "rotated from: {from}")?;
    }
    if let Some(to) = view.rotated_to {
        writeln!(out, "rotated to:  {to} (at {})", time_text(view.rotated_at))?;
    }
    if let Some(at) = view.revoked_at {
        writeln!(out, "revoked_at:  {at}")?;
        writeln!(out, "reason:      {}", view.revoked_reason.unwrap_or("-"))?;
    }
    Ok(())
}

fn scopes_text(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "-".into()
    } else {
        scopes.join(",")
    }
}

/// Writes `value` as one line of JSON.
fn print_json(out: &mut impl Write, value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|e| Failure::Other(e.to_string()))?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// A time, or `never` (no expiry; never used).
fn time_text(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "never".into(), |t| t.to_string())
}

/// `keygate audit`: every matching event, oldest first.
pub async fn audit(keygate: &Keygate, args: AuditArgs) -> Result<u8, Failure> {
    let mut out = std::io::stdout().lock();
    let mut query = keygate::store::AuditQuery {
        key_id: args.key_id,
        kind: args.kind,
        since: args.since,
        limit: keygate::store::MAX_PAGE_SIZE,
        ..keygate::store::AuditQuery::default()
    };
    let mut printed = 0;
    loop {
        let page = keygate.audit_trail(&query).await?;
        for event in &page.items {
            if args.json {
                print_json(&mut out, event)?;
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

/// `keygate incident revoke`: every unrevoked key matching all filters; `--dry-run` lists them.
pub async fn incident_revoke(keygate: &Keygate, args: IncidentArgs) -> Result<u8, Failure> {
    if args.owner.is_none()
        && args.created_before.is_none()
        && args.created_after.is_none()
        && args.scope.is_none()
    {
        return Err(Failure::Other(
            "give at least one of --owner, --created-before, --created-after, --scope".into(),
        ));
    }
    let mut query = ListQuery::new(keygate.now());
    query.owner = args.owner.clone();
    query.limit = keygate::store::MAX_PAGE_SIZE;
    let mut doomed = Vec::new();
    loop {
        let page = keygate.list(query.clone()).await?;
        for r in page.items {
            let matches = r.revoked_at.is_none()
                && args.created_before.is_none_or(|t| r.created_at < t)
                && args.created_after.is_none_or(|t| r.created_at >= t)
                && args.scope.as_deref().is_none_or(|s| {
                    r.scopes
                        .iter()
                        .any(|held| keygate_core::scope::grants(held, s))
                });
            if matches {
                doomed.push(r);
            }
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    let mut out = std::io::stdout().lock();
    let mut revoked = Vec::new();
    if !args.dry_run {
        for r in &doomed {
            match keygate
                .revoke(&r.id, Some(args.reason.clone()), &cli())
                .await
            {
                Ok(_) => revoked.push(r.id.clone()),
                // Revoked by someone else meanwhile: the goal is met.
                Err(StoreError::Record(keygate_core::RecordError::AlreadyRevoked)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if args.json {
        let body = json!({
            "dry_run": args.dry_run,
            "matched": doomed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            "revoked": revoked.iter().map(|id| id.as_str()).collect::<Vec<_>>(),
        });
        writeln!(out, "{body}")?;
    } else {
        for r in &doomed {
            writeln!(
                out,
                "{}  {}  {}",
                r.id,
                r.name,
                r.owner.as_deref().unwrap_or("-")
            )?;
        }
        if args.dry_run {
            writeln!(
                out,
                "{} keys would be revoked (dry run: nothing changed)",
                doomed.len()
            )?;
        } else {
            writeln!(out, "{} keys revoked", revoked.len())?;
        }
    }
    Ok(0)
}

/// `keygate rotate-due`: the maximum-age policy, once.
pub async fn rotate_due(keygate: &Keygate, args: RotateDueArgs) -> Result<u8, Failure> {
    let sweep = keygate::Sweep {
        max_age: Some(keygate_core::policy::MaxAge {
            max_age: args.max_age,
            grace_ms: args.grace,
            action: args.action.into(),
        }),
        expiry_warning: None,
        announce_expired: false,
    };
    let report = keygate.sweep(&sweep, args.dry_run, &cli()).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut body = serde_json::to_value(&report).map_err(|e| Failure::Other(e.to_string()))?;
        body["dry_run"] = Value::Bool(args.dry_run);
        writeln!(out, "{body}")?;
    } else {
        let verb = if args.dry_run { "would be" } else { "were" };
        writeln!(
            out,
            "{} keys are past the maximum age",
            report.past_max_age.len()
        )?;
        for id in &report.past_max_age {
            writeln!(out, "  {id}")?;
        }
        writeln!(
            out,
            "{} expiries {verb} brought forward",
            report.expiry_shortened.len()
        )?;
        writeln!(out, "{} keys {verb} rotated", report.rotated.len())?;
        writeln!(
            out,
            "{} key.max_age_exceeded events {verb} written",
            report.max_age_notices.len()
        )?;
        if args.dry_run {
            writeln!(out, "(dry run: nothing changed)")?;
        }
    }
    Ok(0)
}

/// `keygate webhooks ...`
pub async fn webhooks(keygate: &Keygate, command: WebhooksCommand) -> Result<u8, Failure> {
    let mut out = std::io::stdout().lock();
    match command {
        WebhooksCommand::Add {
            url,
            events,
            slack,
            receives_secrets,
            json,
        } => {
            let endpoint = keygate
                .add_webhook(&url, events, slack, receives_secrets, &cli())
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
                print_json(&mut out, &endpoints)?;
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
        WebhooksCommand::Deliveries { id, json } => {
            let deliveries = keygate.webhook_deliveries(&id, 100).await?;
            if json {
                print_json(&mut out, &deliveries)?;
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

/// `keygate admin set-password`: adds or changes an admin-UI user. The password is read from
/// the terminal (twice) or from stdin's first line, checked, hashed with argon2id, and never
/// printed or stored in the clear.
pub async fn admin(keygate: &Keygate, command: crate::cli::AdminCommand) -> Result<u8, Failure> {
    use crate::cli::AdminCommand;
    match command {
        AdminCommand::SetPassword {
            username,
            read_only,
            password_stdin,
        } => set_password(keygate, username, read_only, password_stdin).await,
        AdminCommand::Users { json } => admin_users(keygate, json).await,
        AdminCommand::RemoveUser { username } => {
            let removed = keygate
                .store()
                .remove_admin_user(&username, keygate.now(), &Audit::by(Actor::Cli))
                .await?;
            if !removed {
                return Err(Failure::Other(format!(
                    "no admin UI user called {username}"
                )));
            }
            println!("admin UI user {username} removed; their sessions have ended");
            Ok(0)
        }
    }
}

/// `keygate admin users`: name, role and times; never the hash.
async fn admin_users(keygate: &Keygate, json: bool) -> Result<u8, Failure> {
    let users = keygate.store().list_admin_users().await?;
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<Value> = users
            .iter()
            .map(|u| {
                json!({"username": u.username, "read_only": u.read_only,
                       "created_at": u.created_at, "updated_at": u.updated_at})
            })
            .collect();
        print_json(&mut out, &Value::Array(list))?;
        return Ok(0);
    }
    for u in &users {
        let role = if u.read_only {
            "read-only"
        } else {
            "full access"
        };
        writeln!(out, "{}\t{role}\tpassword set {}", u.username, u.updated_at)?;
    }
    if users.is_empty() {
        writeln!(
            out,
            "no admin UI users (keygate admin set-password NAME adds one)"
        )?;
    }
    Ok(0)
}

async fn set_password(
    keygate: &Keygate,
    username: String,
    read_only: bool,
    password_stdin: bool,
) -> Result<u8, Failure> {
    keygate_core::admin::check_username(&username)
        .map_err(|e| Failure::Other(format!("username: {e}")))?;
    let password = read_password(password_stdin)?;
    keygate_core::admin::check_password(&password)
        .map_err(|e| Failure::Other(format!("password: {e}")))?;
    let hash = tokio::task::spawn_blocking(move || crate::admin::password::hash(&password))
        .await
        .map_err(|e| Failure::Other(e.to_string()))?
        .map_err(Failure::Other)?;
    let now = keygate.now();
    // For an existing user the store keeps the first `created_at`.
    let user = keygate_core::AdminUser {
        username,
        password_hash: hash,
        read_only,
        created_at: now,
        updated_at: now,
    };
    keygate
        .store()
        .set_admin_user(&user, &Audit::by(Actor::Cli))
        .await?;
    println!(
        "admin UI user {} set ({}); sign in at /admin",
        user.username,
        if read_only {
            "read-only"
        } else {
            "full access"
        }
    );
    Ok(0)
}

fn read_password(from_stdin: bool) -> Result<String, Failure> {
    use std::io::{BufRead, IsTerminal};
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Other(
            "no terminal to ask for the password on; pass it with --password-stdin".into(),
        ));
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Password again: ")?;
    if first != second {
        return Err(Failure::Other(
            "the two passwords differ; nothing was changed".into(),
        ));
    }
    Ok(first)
}
