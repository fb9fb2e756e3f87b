//! `keygate import drf-api-key` and `keygate import jsonl`: plan every key first (a bad row
//! refuses the whole import before anything is written), then write each with its
//! `key.imported` event.

use std::io::{Read, Write};

use keygate::Keygate;
use keygate::import::{ImportReport, MAX_JSONL_BYTES, Planned, plan_jsonl, read_drf};
use serde_json::json;

use super::args::ImportCommand;
use super::keys::cli;
use super::output::print_json;
use crate::Failure;

/// Runs one `import` command.
pub async fn run(
    keygate: &Keygate,
    command: ImportCommand,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let now = keygate.now();
    match command {
        ImportCommand::DrfApiKey(args) => {
            let planned =
                read_drf(&args.from, &args.table, args.owner_column.as_deref(), now).await?;
            let report = keygate.import(&planned, args.dry_run, &cli()).await?;
            let what = json!({"source": "drf-api-key", "table": args.table});
            print_report(out, &report, &planned, args.dry_run, args.json, what)?;
        }
        ImportCommand::Jsonl(args) => {
            let text = read_bounded(&args.file)?;
            let planned = plan_jsonl(&text, now)?;
            let report = keygate.import(&planned, args.dry_run, &cli()).await?;
            let what = json!({"source": "jsonl"});
            print_report(out, &report, &planned, args.dry_run, args.json, what)?;
        }
    }
    Ok(0)
}

/// The file's text, refused beyond [`MAX_JSONL_BYTES`] or if it is not UTF-8.
fn read_bounded(path: &std::path::Path) -> Result<String, Failure> {
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::Other(format!("cannot open {shown}: {e}")))?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_JSONL_BYTES).unwrap_or(u64::MAX) + 1;
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Other(format!("cannot read {shown}: {e}")))?;
    if bytes.len() > MAX_JSONL_BYTES {
        return Err(Failure::Other(format!(
            "{shown} is larger than {} MiB; import it in parts",
            MAX_JSONL_BYTES / 1024 / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|_| Failure::Other(format!("{shown} is not UTF-8 text")))
}

fn print_report(
    out: &mut dyn Write,
    report: &ImportReport,
    planned: &[Planned],
    dry_run: bool,
    as_json: bool,
    mut what: serde_json::Value,
) -> Result<(), Failure> {
    let legacy = planned.iter().filter(|p| p.legacy.is_some()).count();
    if as_json {
        if let Some(map) = what.as_object_mut() {
            map.insert("imported".into(), json!(report.imported));
            map.insert("already_imported".into(), json!(report.already));
            map.insert("read".into(), json!(report.read));
            map.insert("dry_run".into(), json!(dry_run));
        }
        return print_json(out, &what);
    }
    let verb = if dry_run { "Would import" } else { "Imported" };
    writeln!(
        out,
        "{verb} {} of {} keys ({} imported before).",
        report.imported, report.read, report.already
    )?;
    if legacy > 0 && !dry_run {
        writeln!(
            out,
            "Keys keep their stored hash until first used; keygate then stores its own (key.rehashed)."
        )?;
    }
    Ok(())
}
