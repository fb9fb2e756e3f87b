//! Lifecycle sweeps: the maximum-age policy, expiry warnings and expiry notices, applied to
//! every key. The CLI's `rotate-due` and the server's scheduler both call [`Keygate::sweep`];
//! each notice is written once per key (the audit trail is the memory), so sweeps can run as
//! often as wanted and twice in a row act once.

use keygate_core::policy::{
    AgeAction, EXPIRED_LOOKBACK, MaxAge, expired_recently, expiring_soon, past_max_age,
    shortened_expiry,
};
use keygate_core::switch::{in_grace, retire_due, still_in_use};
use keygate_core::{Audit, AuditEvent, EventKind, KeyId, KeyPatch, KeyRecord, Lifetime, Timestamp};
use keygate_store::{AuditQuery, ListQuery, MAX_PAGE_SIZE, SweepFilter};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::Keygate;
use crate::error::Error;

/// What a sweep checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// The maximum-age policy, if any.
    pub max_age: Option<MaxAge>,
    /// Announce keys expiring within this long (`key.expiring_soon`), if set.
    pub expiry_warning: Option<Lifetime>,
    /// Announce keys that have expired (`key.expired`).
    pub announce_expired: bool,
    /// Watch rotated keys in their grace period: announce those still in use with more than
    /// half the grace gone (`key.still_in_use`), and retire those whose holder switched
    /// (`key.retired`; see [`keygate_core::switch`]).
    pub watch_grace: bool,
}

/// What a sweep did (or, in a dry run, would do), by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Keys past the maximum age.
    pub past_max_age: Vec<KeyId>,
    /// Keys whose expiry the policy brought forward.
    pub expiry_shortened: Vec<KeyId>,
    /// Keys the policy rotated (their successors went, sealed, to secret-receiving webhooks).
    pub rotated: Vec<KeyId>,
    /// `key.max_age_exceeded` notices written.
    pub max_age_notices: Vec<KeyId>,
    /// `key.expiring_soon` notices written.
    pub expiring_soon_notices: Vec<KeyId>,
    /// `key.expired` notices written.
    pub expired_notices: Vec<KeyId>,
    /// `key.still_in_use` notices written.
    pub still_in_use_notices: Vec<KeyId>,
    /// Rotated keys retired because their holder switched to the successor.
    pub retired: Vec<KeyId>,
}

impl Keygate {
    /// Applies `sweep` to every key; with `dry_run`, reports what it would do and writes nothing.
    pub async fn sweep(
        &self,
        sweep: &Sweep,
        dry_run: bool,
        audit: &Audit,
    ) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        let now = self.now();
        let mut query = ListQuery::new(now);
        query.limit = MAX_PAGE_SIZE;
        // Read only the keys the sweep may act on, not every key.
        query.sweep = Some(SweepFilter {
            max_age_ms: sweep.max_age.map(|p| p.max_age.as_ms()),
            expiring_until: sweep
                .expiry_warning
                .and_then(|warning| now.checked_add(warning)),
            expired_since: sweep
                .announce_expired
                .then(|| Timestamp::from_unix_ms(now.unix_ms() - EXPIRED_LOOKBACK.as_ms()))
                .flatten(),
            in_grace: sweep.watch_grace,
        });
        loop {
            let page = self.list(query.clone()).await?;
            for record in &page.items {
                self.sweep_one(record, sweep, dry_run, audit, &mut report)
                    .await?;
            }
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        Ok(report)
    }

    async fn sweep_one(
        &self,
        record: &KeyRecord,
        sweep: &Sweep,
        dry_run: bool,
        audit: &Audit,
        report: &mut SweepReport,
    ) -> Result<(), Error> {
        let now = self.now();
        if let Some(policy) = &sweep.max_age
            && past_max_age(record, now, policy)
        {
            report.past_max_age.push(record.id.clone());
            if policy.action == AgeAction::Expire
                && let Some(end) = shortened_expiry(record, now, policy.grace_ms)
            {
                report.expiry_shortened.push(record.id.clone());
                if !dry_run {
                    let patch = KeyPatch {
                        expires_at: Some(Some(end)),
                        ..KeyPatch::default()
                    };
                    self.update(&record.id, patch, audit).await?;
                }
            }
            if policy.action == AgeAction::Rotate {
                report.rotated.push(record.id.clone());
                if !dry_run {
                    self.rotate_delivering(&record.id, policy.grace_ms, audit)
                        .await?;
                }
            }
            let details =
                json!({"created_at": record.created_at, "max_age_ms": policy.max_age.as_ms()});
            if self
                .notice_once(
                    EventKind::KeyMaxAgeExceeded,
                    record,
                    details,
                    dry_run,
                    audit,
                )
                .await?
            {
                report.max_age_notices.push(record.id.clone());
            }
        }
        if let Some(warning) = sweep.expiry_warning
            && expiring_soon(record, now, warning)
        {
            let details = json!({"expires_at": record.expires_at});
            if self
                .notice_once(EventKind::KeyExpiringSoon, record, details, dry_run, audit)
                .await?
            {
                report.expiring_soon_notices.push(record.id.clone());
            }
        }
        if sweep.watch_grace && in_grace(record, now) {
            self.watch_grace(record, dry_run, audit, report).await?;
        }
        if sweep.announce_expired && expired_recently(record, now) {
            let details = json!({"expires_at": record.expires_at});
            if self
                .notice_once(EventKind::KeyExpired, record, details, dry_run, audit)
                .await?
            {
                report.expired_notices.push(record.id.clone());
            }
        }
        Ok(())
    }

    /// A rotated key in its grace period: announce it if it is still in use (once), retire it
    /// if its holder has switched.
    async fn watch_grace(
        &self,
        record: &KeyRecord,
        dry_run: bool,
        audit: &Audit,
        report: &mut SweepReport,
    ) -> Result<(), Error> {
        let now = self.now();
        if still_in_use(record, now) {
            let details = json!({
                "rotated_at": record.rotated_at,
                "grace_ends_at": record.expires_at,
                "successor_id": record.rotated_to,
                "last_used_at": record.last_used_at,
                "uses_since_rotation": record.uses_since_rotation,
            });
            if self
                .notice_once(EventKind::KeyStillInUse, record, details, dry_run, audit)
                .await?
            {
                report.still_in_use_notices.push(record.id.clone());
            }
        }
        if record.retire_when_switched.is_none() {
            return Ok(());
        }
        let Some(switch) = self.switch_over(record).await? else {
            return Ok(());
        };
        let first = switch.successor_first_used_at;
        if retire_due(record, first, now).is_none() {
            return Ok(());
        }
        if dry_run {
            report.retired.push(record.id.clone());
            return Ok(());
        }
        // Checked again on the key as stored, in the retiring transaction: a use recorded
        // meanwhile keeps it.
        let plan = |stored: &KeyRecord| {
            retire_due(stored, first, now).and_then(|evidence| {
                serde_json::to_value(evidence)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
            })
        };
        if self.retire(&record.id, &plan, audit).await?.is_some() {
            report.retired.push(record.id.clone());
        }
        Ok(())
    }

    /// Writes a `kind` notice for `record` unless the trail has one already; `true` if it was
    /// (or, in a dry run, would be) written.
    async fn notice_once(
        &self,
        kind: EventKind,
        record: &KeyRecord,
        details: Value,
        dry_run: bool,
        audit: &Audit,
    ) -> Result<bool, Error> {
        let seen = AuditQuery {
            key_id: Some(record.id.clone()),
            kind: Some(kind),
            limit: 1,
            ..AuditQuery::default()
        };
        if !self.audit_trail(&seen).await?.items.is_empty() {
            return Ok(false);
        }
        if !dry_run {
            let details: Map<String, Value> = details.as_object().cloned().unwrap_or_default();
            let event = AuditEvent::notice(kind, record, audit, self.now(), details);
            self.record_event(&event).await?;
        }
        Ok(true)
    }
}
