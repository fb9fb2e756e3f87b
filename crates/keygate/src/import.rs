//! Importing keys from another system, so that the keys clients hold keep working.
//!
//! - [`plan_drf`]: the rows of a djangorestframework-api-key table ([`read_drf`] reads them
//!   from the Django database, read-only): each key keeps its prefix and stored hash and is
//!   checked against it on its first use, then rehashed (see the verifier).
//! - [`plan_jsonl`]: records of a JSON Lines file that give each key's SHA-256 (what
//!   Unkey-style services store); the schema is in docs/IMPORT.md.
//!
//! Planning checks everything first (one bad row refuses the whole import, before anything is
//! written); [`Keygate::import`] then writes each key with its `key.imported` event, skipping
//! keys imported before (by origin), so running an import twice imports nothing twice.

use std::collections::HashSet;

use keygate_core::legacy::{LegacyHash, imported_record, is_drf_prefix, parse_django_time};
use keygate_core::{Audit, KeyHash, KeyRecord, KeySpec, Timestamp};
use keygate_store::{ImportedKey, LegacyCredential, StoreError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub use keygate_store::django::{MAX_ROWS, SourceTable, is_identifier};

use crate::{Error, Keygate};

/// drf-api-key's own table.
pub const DRF_TABLE: &str = "rest_framework_api_key_apikey";
/// The columns every drf-api-key table has (`AbstractAPIKey`); any other column of a custom
/// model's table goes into the key's metadata.
pub const DRF_COLUMNS: [&str; 7] = [
    "id",
    "prefix",
    "hashed_key",
    "name",
    "created",
    "revoked",
    "expiry_date",
];
/// Largest JSON Lines file [`plan_jsonl`] reads.
pub const MAX_JSONL_BYTES: usize = 64 * 1024 * 1024;
/// Longest line of a JSON Lines import.
pub const MAX_JSONL_LINE: usize = 64 * 1024;
/// Longest `id` or `start` of a JSON Lines record.
pub const MAX_JSONL_ID_CHARS: usize = 200;

/// One key, checked and ready to import.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The record to store.
    pub record: KeyRecord,
    /// Its origin, unique (a second import of the same origin writes nothing).
    pub origin_id: String,
    /// The origin its `key.imported` event names.
    pub origin: Map<String, Value>,
    /// The other system's prefix and hash, for keys imported without their SHA-256.
    pub legacy: Option<LegacyCredential>,
}

/// What [`Keygate::import`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Keys read.
    pub read: usize,
    /// Keys written (with `dry_run`: keys that would be).
    pub imported: usize,
    /// Keys imported before, left alone.
    pub already: usize,
}

fn invalid(message: String) -> Error {
    Error::Invalid {
        field: "import",
        message,
    }
}

/// Reads a drf-api-key table from the Django database `from` names (a SQLite file path,
/// `sqlite://PATH` or `postgres://…`), read-only, and plans its import.
pub async fn read_drf(
    from: &str,
    table: &str,
    owner_column: Option<&str>,
    now: Timestamp,
) -> Result<Vec<Planned>, Error> {
    if let Some(owner) = owner_column
        && !is_identifier(owner)
    {
        return Err(invalid(format!(
            "--owner-column `{}` is not a column name (letters, digits and _)",
            owner.chars().take(80).collect::<String>()
        )));
    }
    let source = keygate_store::django::read_table(from, table)
        .await
        .map_err(|e| match e {
            StoreError::Config(message) | StoreError::Backend(message) => Error::Invalid {
                field: "from",
                message,
            },
            other => Error::store("read the Django database")(other),
        })?;
    plan_drf(&source, table, owner_column, now)
}

/// A row's owner value as text: a string as it is, a number or boolean as JSON prints it.
fn owner_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Plans the import of a drf-api-key table's rows (read at `now`).
pub fn plan_drf(
    source: &SourceTable,
    table: &str,
    owner_column: Option<&str>,
    now: Timestamp,
) -> Result<Vec<Planned>, Error> {
    for column in DRF_COLUMNS {
        if !source.columns.iter().any(|c| c == column) {
            return Err(invalid(format!(
                "table `{table}` is not a drf-api-key table: it has no column `{column}`"
            )));
        }
    }
    if let Some(owner) = owner_column {
        if DRF_COLUMNS.contains(&owner) {
            return Err(invalid(format!(
                "--owner-column `{owner}` is one of drf-api-key's own columns"
            )));
        }
        if !source.columns.iter().any(|c| c == owner) {
            return Err(invalid(format!(
                "table `{table}` has no column `{owner}` (--owner-column)"
            )));
        }
    }
    let origin = json!({"source": "drf-api-key", "table": table})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut planned = Vec::with_capacity(source.rows.len());
    for (i, row) in source.rows.iter().enumerate() {
        let n = i + 1;
        let text = |column: &str| row.get(column).and_then(Value::as_str);
        let prefix = text("prefix").filter(|p| is_drf_prefix(p)).ok_or_else(|| {
            invalid(format!(
                "row {n} of `{table}`: `prefix` is not 8 letters and digits"
            ))
        })?;
        let at = |what: &str| invalid(format!("row {n} of `{table}` (prefix {prefix}): {what}"));
        let hash = LegacyHash::parse(text("hashed_key").ok_or_else(|| at("no `hashed_key`"))?)
            .map_err(|e| at(&format!("`hashed_key`: {e}")))?;
        let name = text("name").ok_or_else(|| at("no `name`"))?;
        let created = text("created")
            .and_then(parse_django_time)
            .ok_or_else(|| at("`created` is not a time"))?;
        let revoked = match row.get("revoked") {
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) if n.as_i64() == Some(0) => false,
            Some(Value::Number(n)) if n.as_i64() == Some(1) => true,
            _ => return Err(at("`revoked` is not a boolean")),
        };
        let expires_at = match row.get("expiry_date") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(parse_django_time(s).ok_or_else(|| at("`expiry_date` is not a time"))?)
            }
            Some(_) => return Err(at("`expiry_date` is not a time")),
        };
        let metadata: Map<String, Value> = source
            .columns
            .iter()
            .filter(|c| !DRF_COLUMNS.contains(&c.as_str()) && Some(c.as_str()) != owner_column)
            .map(|c| (c.clone(), row.get(c).cloned().unwrap_or(Value::Null)))
            .collect();
        let spec = KeySpec {
            name: name.to_owned(),
            owner: owner_column.and_then(|c| row.get(c)).and_then(owner_text),
            metadata,
            ..KeySpec::default()
        };
        let mut record = imported_record(
            spec,
            prefix.to_owned(),
            None,
            created,
            revoked.then_some(now),
        )
        .map_err(|e| at(&e.to_string()))?;
        record.expires_at = expires_at;
        if revoked {
            record.revoked_reason = Some("revoked in drf-api-key before the import".into());
        }
        planned.push(Planned {
            record,
            origin_id: format!("drf-api-key:{table}:{prefix}"),
            origin: origin.clone(),
            legacy: Some(LegacyCredential {
                prefix: prefix.to_owned(),
                hash,
            }),
        });
    }
    Ok(planned)
}

/// One record of a JSON Lines import (schema in docs/IMPORT.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlRecord {
    id: String,
    name: String,
    sha256: String,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    revoked_at: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

fn short_text(value: &str) -> bool {
    !value.is_empty()
        && value.chars().count() <= MAX_JSONL_ID_CHARS
        && value.chars().all(|c| !c.is_control())
}

/// Plans the import of a JSON Lines file's records (read at `now`): one JSON object a line,
/// blank lines skipped.
pub fn plan_jsonl(text: &str, now: Timestamp) -> Result<Vec<Planned>, Error> {
    if text.len() > MAX_JSONL_BYTES {
        return Err(invalid(format!(
            "the file is larger than {} MiB; import it in parts",
            MAX_JSONL_BYTES / 1024 / 1024
        )));
    }
    let mut planned = Vec::new();
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let at = |what: &str| invalid(format!("line {n}: {what}"));
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_JSONL_LINE {
            return Err(at(&format!("longer than {MAX_JSONL_LINE} bytes")));
        }
        if planned.len() >= MAX_ROWS {
            return Err(at(&format!(
                "more than {MAX_ROWS} records; import in parts"
            )));
        }
        let record: JsonlRecord = serde_json::from_str(line).map_err(|e| {
            // serde's message names the field and never repeats a value
            at(&e.to_string())
        })?;
        if !short_text(&record.id) {
            return Err(at(
                "`id` must be 1 to 200 characters, no control characters",
            ));
        }
        if !ids.insert(record.id.clone()) {
            return Err(at("`id` repeats an earlier line's"));
        }
        let hash = keygate_core::legacy::parse_sha256_hex(&record.sha256)
            .map(KeyHash::from_bytes)
            .ok_or_else(|| at("`sha256` is not 64 hex digits"))?;
        if !hashes.insert(hash) {
            return Err(at("`sha256` repeats an earlier line's"));
        }
        let start = record.start.unwrap_or_else(|| "imported".into());
        if !short_text(&start) || start.chars().count() > 40 {
            return Err(at("`start` must be 1 to 40 characters"));
        }
        let time = |field: &str, value: Option<&String>| -> Result<Option<Timestamp>, Error> {
            value
                .map(|v| {
                    Timestamp::parse_rfc3339(v)
                        .map_err(|_| at(&format!("`{field}` is not an RFC 3339 time")))
                })
                .transpose()
        };
        let created_at = time("created_at", record.created_at.as_ref())?.unwrap_or(now);
        let expires_at = time("expires_at", record.expires_at.as_ref())?;
        let revoked_at = time("revoked_at", record.revoked_at.as_ref())?;
        let spec = KeySpec {
            name: record.name,
            owner: record.owner,
            scopes: record.scopes,
            metadata: record.metadata,
            ..KeySpec::default()
        };
        let mut key = imported_record(spec, start, Some(hash), created_at, revoked_at)
            .map_err(|e| at(&e.to_string()))?;
        key.expires_at = expires_at;
        key.enabled = record.enabled;
        planned.push(Planned {
            record: key,
            origin_id: format!("jsonl:{}", record.id),
            origin: json!({"source": "jsonl", "id": record.id})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            legacy: None,
        });
    }
    Ok(planned)
}

impl Keygate {
    /// Imports planned keys, each with its `key.imported` event; keys whose origin was
    /// imported before are left alone. With `dry_run`, writes nothing and counts what it would
    /// write.
    pub async fn import(
        &self,
        planned: &[Planned],
        dry_run: bool,
        audit: &Audit,
    ) -> Result<ImportReport, Error> {
        let store = self.store();
        let mut report = ImportReport {
            read: planned.len(),
            ..ImportReport::default()
        };
        for key in planned {
            let done = if dry_run {
                !store
                    .is_imported(&key.origin_id)
                    .await
                    .map_err(Error::store("read the imported keys"))?
            } else {
                let imported = ImportedKey {
                    record: &key.record,
                    origin_id: key.origin_id.clone(),
                    origin: key.origin.clone(),
                    legacy: key.legacy.clone(),
                };
                store.import(&imported, audit).await.map_err(|e| match e {
                    StoreError::Duplicate => invalid(format!(
                        "key `{}` ({}): a key with the same hash exists already",
                        key.record.name, key.origin_id
                    )),
                    other => Error::store("import the key")(other),
                })?
            };
            if done {
                report.imported += 1;
            } else {
                report.already += 1;
            }
        }
        Ok(report)
    }
}
