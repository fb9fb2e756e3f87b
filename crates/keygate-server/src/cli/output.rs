//! How the command line prints: one line of JSON per `--json` answer, aligned tables, and the
//! text form of a key.

use std::io::Write;

use keygate::KeyView;
use keygate::core::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::Failure;

/// Writes `value` as one line of JSON.
pub fn print_json(out: &mut dyn Write, value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|e| Failure::Other(e.to_string()))?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// Scopes as `a,b`, or `-` for none.
pub fn scopes_text(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "-".into()
    } else {
        scopes.join(",")
    }
}

/// A time, or `never` (no expiry; never used).
pub fn time_text(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "never".into(), |t| t.to_string())
}

/// A key, as JSON or as `field: value` lines (never its secret or hash: a view has neither).
pub fn print_key(out: &mut dyn Write, view: &KeyView, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(out, view);
    }
    writeln!(out, "id:          {}", view.id)?;
    writeln!(out, "name:        {}", view.name)?;
    writeln!(out, "start:       {}", view.start)?;
    writeln!(out, "owner:       {}", view.owner.as_deref().unwrap_or("-"))?;
    writeln!(out, "status:      {}", view.status)?;
    writeln!(out, "scopes:      {}", scopes_text(&view.scopes))?;
    writeln!(out, "metadata:    {}", Value::Object(view.metadata.clone()))?;
    writeln!(out, "created_at:  {}", view.created_at)?;
    writeln!(out, "expires_at:  {}", time_text(view.expires_at))?;
    writeln!(out, "last_used:   {}", time_text(view.last_used_at))?;
    if let Some(max_age) = view.max_age {
        writeln!(out, "max_age:     {max_age}")?;
    }
    if let Some(from) = &view.rotated_from {
        writeln!(out, "rotated from: {from}")?;
    }
    if let Some(to) = &view.rotated_to {
        writeln!(out, "rotated to:  {to} (at {})", time_text(view.rotated_at))?;
    }
    if let Some(switch) = &view.switch_over {
        let state = if switch.in_grace {
            "in grace"
        } else {
            "grace over"
        };
        writeln!(
            out,
            "switch-over: {state} until {}",
            time_text(switch.grace_ends_at)
        )?;
        writeln!(
            out,
            "  successor first used: {}",
            time_text(switch.successor_first_used_at)
        )?;
        writeln!(
            out,
            "  old key last used:    {}",
            time_text(switch.old_last_used_at)
        )?;
        writeln!(
            out,
            "  old key uses since rotation: {}",
            switch.old_uses_since_rotation
        )?;
        if let Some(quiet) = switch.retire_when_switched {
            writeln!(
                out,
                "  retired once the successor is used and the old key is quiet for {quiet}"
            )?;
        }
    }
    if let Some(at) = view.revoked_at {
        writeln!(out, "revoked_at:  {at}")?;
        writeln!(
            out,
            "reason:      {}",
            view.revoked_reason.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}

/// Rows under a header, each column as wide as its widest cell; `empty` if there are none.
pub fn print_table<const N: usize>(
    out: &mut dyn Write,
    header: [&str; N],
    rows: &[[String; N]],
    empty: &str,
) -> Result<(), Failure> {
    let header = header.map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    if rows.is_empty() {
        writeln!(out, "{empty}")?;
    }
    Ok(())
}
