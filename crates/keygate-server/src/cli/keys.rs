//! `keygate keys ...`, `keygate incident revoke` and `keygate rotate-due`: each command is a
//! few calls on [`Keygate`] and a printout.

use std::io::{BufRead, Write};

use keygate::core::limits::{IpAllowlist, Quota, RateLimit, RateLimits, Refill};
use keygate::core::policy::{IncidentFilter, MaxAge};
use keygate::core::{Actor, Audit, DEFAULT_GRACE, Expiry, Status, Timestamp};
use keygate::{CreatedKey, KeyPatch, KeySpec, KeyView, Keygate, ListQuery, MAX_PAGE_SIZE, Outcome};
use serde_json::{Value, json};

use super::args::{
    BucketArg, CreateArgs, IncidentArgs, KeysCommand, ListArgs, RotateDueArgs, StatusArg,
    UpdateArgs, UsageArgs,
};
use super::output::{print_json, print_key, print_table, scopes_text, time_text};
use crate::Failure;

/// Changes made from the command line are audited as `cli`.
pub(super) fn cli() -> Audit {
    Audit::by(Actor::Cli)
}

/// Runs one `keys` command; `Ok(code)` is the exit status.
pub async fn run(
    keygate: &Keygate,
    command: KeysCommand,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let now = keygate.now();
    match command {
        KeysCommand::Create(args) => create(keygate, args, out).await?,
        KeysCommand::Update(args) => update(keygate, args, out).await?,
        KeysCommand::List(args) => list(keygate, args, out).await?,
        KeysCommand::Usage(args) => usage(keygate, args, out).await?,
        KeysCommand::Show { id, json } => {
            let record = keygate.get(&id).await?.ok_or(keygate::Error::NotFound)?;
            print_key(out, &keygate.view(record).await?, json)?;
        }
        KeysCommand::Revoke { id, reason, json } => {
            let record = keygate.revoke(&id, reason, &cli()).await?;
            if json {
                print_key(out, &KeyView::of(record, now), true)?;
            } else {
                writeln!(out, "Revoked {}", record.id)?;
            }
        }
        KeysCommand::Rotate {
            id,
            grace,
            retire_when_switched,
            json,
        } => {
            let grace = grace.unwrap_or(DEFAULT_GRACE.as_ms());
            let (old, new, key) = keygate
                .rotate_retiring(&id, grace, retire_when_switched, &cli())
                .await?;
            if json {
                let created = CreatedKey {
                    key: key.expose().to_owned(),
                    view: KeyView::of(new, now),
                };
                print_json(out, &created)?;
            } else {
                writeln!(out, "Rotated {} -> {} ({})", old.id, new.id, new.name)?;
                writeln!(
                    out,
                    "The old key works until {}.",
                    time_text(old.expires_at)
                )?;
                writeln!(
                    out,
                    "\nThe new key, shown only this once:\n\n{}",
                    key.expose()
                )?;
            }
        }
        KeysCommand::Disable { id } => {
            let record = keygate.update(&id, enabled(false), &cli()).await?;
            writeln!(out, "Disabled {}", record.id)?;
        }
        KeysCommand::Enable { id } => {
            let record = keygate.update(&id, enabled(true), &cli()).await?;
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

fn enabled(on: bool) -> KeyPatch {
    KeyPatch {
        enabled: Some(on),
        ..KeyPatch::default()
    }
}

fn read_key_from_stdin() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

async fn create(keygate: &Keygate, args: CreateArgs, out: &mut dyn Write) -> Result<(), Failure> {
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
        rate_limits: rate_limits(args.limits.rates)?,
        quota: args
            .limits
            .quota
            .map(|q| quota(q, keygate.now()))
            .transpose()?,
        allowed_ips: allowlist(&args.limits.allow_ips)?,
    };
    let (record, key) = keygate.issue(spec, &cli()).await?;
    if args.json {
        let created = CreatedKey {
            key: key.expose().to_owned(),
            view: KeyView::of(record, keygate.now()),
        };
        return print_json(out, &created);
    }
    writeln!(out, "Created {} ({})", record.id, record.name)?;
    writeln!(out, "Scopes:  {}", scopes_text(&record.scopes))?;
    writeln!(out, "Expires: {}", time_text(record.expires_at))?;
    writeln!(out, "\nThe key, shown only this once:\n\n{}", key.expose())?;
    Ok(())
}

async fn update(keygate: &Keygate, args: UpdateArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let now = keygate.now();
    let patch = KeyPatch {
        name: args.name,
        owner: match (args.owner, args.no_owner) {
            (Some(owner), _) => Some(Some(owner)),
            (None, true) => Some(None),
            (None, false) => None,
        },
        scopes: (!args.scopes.is_empty()).then_some(args.scopes),
        metadata: args.metadata,
        rate_limits: if args.no_rate {
            Some(RateLimits::default())
        } else if args.limits.rates.is_empty() {
            None
        } else {
            Some(rate_limits(args.limits.rates)?)
        },
        quota: match (args.limits.quota, args.no_quota) {
            (Some(q), _) => Some(Some(quota(q, now)?)),
            (None, true) => Some(None),
            (None, false) => None,
        },
        allowed_ips: if args.any_ip {
            Some(None)
        } else if args.limits.allow_ips.is_empty() {
            None
        } else {
            Some(allowlist(&args.limits.allow_ips)?)
        },
        ..KeyPatch::default()
    };
    if patch == KeyPatch::default() {
        return Err(Failure::Config(
            "nothing to change: name at least one of --name, --owner, --scope, --rate, --quota, --allow-ip, ...".into(),
        ));
    }
    let record = keygate.update(&args.id, patch, &cli()).await?;
    if args.json {
        return print_key(out, &KeyView::of(record, now), true);
    }
    writeln!(out, "Updated {} ({})", record.id, record.name)?;
    Ok(())
}

/// The rate limits of `--rate` flags, checked together (count, unique names).
pub(super) fn rate_limits(rates: Vec<RateLimit>) -> Result<RateLimits, Failure> {
    RateLimits::new(rates).map_err(|e| Failure::Config(format!("--rate: {e}")))
}

/// The credits of `--quota`, set at `now`.
fn quota((remaining, refill): (u64, Option<Refill>), now: Timestamp) -> Result<Quota, Failure> {
    Quota::new(remaining, refill, now).map_err(|e| Failure::Config(format!("--quota: {e}")))
}

/// The allowlist of `--allow-ip` flags; none: anywhere.
fn allowlist(networks: &[String]) -> Result<Option<IpAllowlist>, Failure> {
    if networks.is_empty() {
        return Ok(None);
    }
    IpAllowlist::parse(networks.iter().map(String::as_str))
        .map(Some)
        .map_err(|e| Failure::Config(format!("--allow-ip: {e}")))
}

/// `keygate refill`: refills every key whose refill is due, in batches.
pub async fn refill(keygate: &Keygate, json: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let refilled = keygate.refill_due(&cli()).await?;
    if json {
        writeln!(out, "{}", json!({ "refilled": refilled }))?;
    } else {
        writeln!(out, "Refilled the credits of {refilled} key(s).")?;
    }
    Ok(())
}

async fn list(keygate: &Keygate, args: ListArgs, out: &mut dyn Write) -> Result<(), Failure> {
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
    query.limit = args.limit.unwrap_or(MAX_PAGE_SIZE);
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
    let views: Vec<KeyView> = records.into_iter().map(|r| KeyView::of(r, now)).collect();
    if args.json {
        return print_json(out, &views);
    }
    let rows: Vec<[String; 8]> = views
        .iter()
        .map(|v| {
            [
                v.id.to_string(),
                v.name.clone(),
                v.start.clone(),
                v.owner.clone().unwrap_or_else(|| "-".into()),
                v.status.to_string(),
                scopes_text(&v.scopes),
                time_text(v.expires_at),
                time_text(v.last_used_at),
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
    ];
    print_table(out, header, &rows, "(no keys)")
}

/// `keygate incident revoke`: every unrevoked key matching all filters; `--dry-run` lists them.
pub async fn incident_revoke(
    keygate: &Keygate,
    args: IncidentArgs,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let filter = IncidentFilter {
        owner: args.owner,
        created_before: args.created_before,
        created_after: args.created_after,
        scope: args.scope,
    };
    if filter.is_empty() {
        return Err(Failure::Other(
            "give at least one of --owner, --created-before, --created-after, --scope".into(),
        ));
    }
    let (matched, revoked) = keygate
        .revoke_matching(&filter, &args.reason, args.dry_run, &cli())
        .await?;
    if args.json {
        let body = json!({
            "dry_run": args.dry_run,
            "matched": matched.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            "revoked": revoked.iter().map(|id| id.as_str()).collect::<Vec<_>>(),
        });
        writeln!(out, "{body}")?;
        return Ok(0);
    }
    for r in &matched {
        let owner = r.owner.as_deref().unwrap_or("-");
        writeln!(out, "{}  {}  {owner}", r.id, r.name)?;
    }
    if args.dry_run {
        let n = matched.len();
        writeln!(out, "{n} keys would be revoked (dry run: nothing changed)")?;
    } else {
        writeln!(out, "{} keys revoked", revoked.len())?;
    }
    Ok(0)
}

/// `keygate rotate-due`: the maximum-age policy, once.
pub async fn rotate_due(
    keygate: &Keygate,
    args: RotateDueArgs,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let sweep = keygate::Sweep {
        max_age: Some(MaxAge {
            max_age: args.max_age,
            grace_ms: args.grace,
            action: args.action.into(),
        }),
        expiry_warning: None,
        announce_expired: false,
        watch_grace: false,
    };
    let report = keygate.sweep(&sweep, args.dry_run, &cli()).await?;
    if args.json {
        let mut body = serde_json::to_value(&report).map_err(|e| Failure::Other(e.to_string()))?;
        body["dry_run"] = Value::Bool(args.dry_run);
        writeln!(out, "{body}")?;
        return Ok(0);
    }
    let verb = if args.dry_run { "would be" } else { "were" };
    let due = report.past_max_age.len();
    writeln!(out, "{due} keys are past the maximum age")?;
    for id in &report.past_max_age {
        writeln!(out, "  {id}")?;
    }
    let shortened = report.expiry_shortened.len();
    writeln!(out, "{shortened} expiries {verb} brought forward")?;
    writeln!(out, "{} keys {verb} rotated", report.rotated.len())?;
    let notices = report.max_age_notices.len();
    writeln!(out, "{notices} key.max_age_exceeded events {verb} written")?;
    if args.dry_run {
        writeln!(out, "(dry run: nothing changed)")?;
    }
    Ok(0)
}

/// `keys usage`: the buckets that counted something (every bucket with `--json`), and totals.
async fn usage(keygate: &Keygate, args: UsageArgs, out: &mut dyn Write) -> Result<(), Failure> {
    use keygate::core::usage::{Bucket, REFUSALS, UsageCounts, UsageRange};
    let bucket = match args.bucket {
        BucketArg::Hour => Bucket::Hour,
        BucketArg::Day => Bucket::Day,
    };
    let range = UsageRange::new(args.since, args.until, bucket, keygate.now());
    let items = keygate
        .usage(keygate::usage::UsageOf::Key(&args.id), &range)
        .await?;
    if args.json {
        let report = crate::api::usage::UsageReport {
            bucket,
            since: range.since(),
            until: range.until(),
            items,
        };
        return print_json(out, &report);
    }
    writeln!(
        out,
        "Requests of {} by {bucket}, {} to {} (UTC)",
        args.id,
        range.since(),
        range.until()
    )?;
    let refusals = |c: &UsageCounts| {
        let named: Vec<String> = REFUSALS
            .iter()
            .filter(|o| c.get(**o) > 0)
            .map(|o| format!("{} {}", o.code(), c.get(*o)))
            .collect();
        if named.is_empty() {
            "-".to_owned()
        } else {
            named.join(", ")
        }
    };
    let row = |start: String, c: &UsageCounts| {
        [
            start,
            c.verified().to_string(),
            c.refused().to_string(),
            c.rate_limited().to_string(),
            refusals(c),
        ]
    };
    let mut total = UsageCounts::default();
    let mut rows: Vec<[String; 5]> = Vec::new();
    for item in items.iter().filter(|i| !i.counts.is_empty()) {
        total.merge(&item.counts);
        rows.push(row(item.start.to_string(), &item.counts));
    }
    if !rows.is_empty() {
        rows.push(row("total".to_owned(), &total));
    }
    print_table(
        out,
        [
            "START",
            "VERIFIED",
            "REFUSED",
            "RATE_LIMITED",
            "REFUSED BY CODE",
        ],
        &rows,
        "No requests counted in this range.",
    )
}
