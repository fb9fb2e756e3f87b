//! What callers ask the store for and what it answers: list and audit queries with their
//! pages, status counts, change notices, delivery attempts.

use keygate_core::{
    AuditEvent, EventKind, KeyHash, KeyId, KeyRecord, RecordError, Status, Timestamp,
};

use crate::StoreError;

/// Default page size for [`KeyStore::list`](crate::KeyStore::list).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size [`KeyStore::list`](crate::KeyStore::list) returns.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Filters and position for [`KeyStore::list`](crate::KeyStore::list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only keys with this owner.
    pub owner: Option<String>,
    /// Only keys with this status at [`ListQuery::now`]; `None` for all.
    pub status: Option<Status>,
    /// Only keys whose name contains this text (ASCII case-insensitive).
    pub name_contains: Option<String>,
    /// Only keys whose name, owner or display start contains this text (ASCII
    /// case-insensitive): the admin UI's search box.
    pub search: Option<String>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`] (out-of-range values are clamped).
    pub limit: u32,
    /// Where the previous page ended ([`Page::next_cursor`]).
    pub cursor: Option<String>,
    /// The time the status filter is judged at.
    pub now: Timestamp,
    /// Only keys a lifecycle sweep may have to act on (a superset: keygate-core decides).
    pub sweep: Option<SweepFilter>,
}

/// Which keys a lifecycle sweep looks at, so that it reads those rather than every key. Any
/// key matching one of the set conditions (and not revoked) is listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepFilter {
    /// Keys older than their own maximum age, or than this one (milliseconds), unrotated.
    pub max_age_ms: Option<i64>,
    /// Keys not yet expired that expire at or before this time.
    pub expiring_until: Option<Timestamp>,
    /// Keys expired at or after this time (and by [`ListQuery::now`]).
    pub expired_since: Option<Timestamp>,
    /// Rotated keys still in their grace period.
    pub in_grace: bool,
}

impl ListQuery {
    /// All keys, first page, default size, status judged at `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            owner: None,
            status: None,
            name_contains: None,
            search: None,
            limit: DEFAULT_PAGE_SIZE,
            cursor: None,
            now,
            sweep: None,
        }
    }

    /// The limit clamped to 1..=[`MAX_PAGE_SIZE`].
    pub fn page_size(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE_SIZE)
    }

    /// The cursor as a key id, if one was given.
    pub fn cursor_id(&self) -> Result<Option<KeyId>, StoreError> {
        self.cursor
            .as_deref()
            .map(|c| KeyId::parse(c).ok_or(StoreError::InvalidCursor))
            .transpose()
    }
}

/// One page of keys, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The keys on this page.
    pub items: Vec<KeyRecord>,
    /// Pass this as [`ListQuery::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// How a rotation turns the stored record into (the old record as it must now be, its
/// successor); see [`KeyStore::rotate`](crate::KeyStore::rotate).
pub type RotationPlan<'a> =
    dyn Fn(&KeyRecord) -> Result<(KeyRecord, KeyRecord), RecordError> + Send + Sync + 'a;

/// Whether a rotated key, as stored now, is to be retired: the evidence to record in its
/// `key.retired` event, or `None` to leave it; see [`KeyStore::retire`](crate::KeyStore::retire).
pub type RetirePlan<'a> =
    dyn Fn(&KeyRecord) -> Option<serde_json::Map<String, serde_json::Value>> + Send + Sync + 'a;

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it was made.
    pub at: Timestamp,
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// When to try again; `None` with `delivered == false` gives up.
    pub next_attempt_at: Option<Timestamp>,
}

impl Attempt {
    /// The delivery's status after this attempt (webhook and email outboxes alike).
    pub fn outcome(&self) -> keygate_core::webhook::DeliveryStatus {
        use keygate_core::webhook::DeliveryStatus;
        if self.delivered {
            DeliveryStatus::Delivered
        } else if self.next_attempt_at.is_some() {
            DeliveryStatus::Pending
        } else {
            DeliveryStatus::Failed
        }
    }
}

/// Filters and position for [`AuditLog::list_audit`](crate::AuditLog::list_audit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events about this key.
    pub key_id: Option<KeyId>,
    /// Only events of this kind.
    pub kind: Option<EventKind>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`] (0 means the default).
    pub limit: u32,
    /// Where the previous page ended ([`AuditPage::next_cursor`]).
    pub cursor: Option<String>,
    /// Newest events first (the default is oldest first, the order to follow the trail in).
    pub newest_first: bool,
}

impl AuditQuery {
    /// The limit clamped to 1..=[`MAX_PAGE_SIZE`] (default [`DEFAULT_PAGE_SIZE`]).
    pub fn page_size(&self) -> u32 {
        page_size(self.limit)
    }

    /// The cursor as a position in the trail.
    pub fn cursor_seq(&self) -> Result<Option<i64>, StoreError> {
        position(self.cursor.as_deref())
    }
}

/// One page of audit events, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The events.
    pub items: Vec<AuditEvent>,
    /// Pass as [`AuditQuery::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and position for [`EmailOutbox::list_emails`](crate::EmailOutbox::list_emails):
/// the email log, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmailQuery {
    /// Only emails in this state.
    pub status: Option<keygate_core::webhook::DeliveryStatus>,
    /// Only emails to this address (ASCII case-insensitive).
    pub recipient: Option<String>,
    /// Only emails about keys of this owner.
    pub owner: Option<String>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`] (0 means the default).
    pub limit: u32,
    /// Where the previous page ended ([`EmailPage::next_cursor`]).
    pub cursor: Option<String>,
}

impl EmailQuery {
    /// The limit clamped to 1..=[`MAX_PAGE_SIZE`] (default [`DEFAULT_PAGE_SIZE`]).
    pub fn page_size(&self) -> u32 {
        page_size(self.limit)
    }

    /// The cursor as an outbox position: the page holds emails before it.
    pub fn cursor_id(&self) -> Result<Option<i64>, StoreError> {
        position(self.cursor.as_deref())
    }
}

/// One page of the email log, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailPage {
    /// The emails.
    pub items: Vec<keygate_core::email::EmailDelivery>,
    /// Pass as [`EmailQuery::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// How many keys have each [`Status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Usable keys.
    pub active: u64,
    /// Disabled keys.
    pub disabled: u64,
    /// Expired keys.
    pub expired: u64,
    /// Revoked keys.
    pub revoked: u64,
}

impl StatusCounts {
    /// The count for one status.
    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::Active => self.active,
            Status::Disabled => self.disabled,
            Status::Expired => self.expired,
            Status::Revoked => self.revoked,
        }
    }

    /// All keys.
    pub fn total(&self) -> u64 {
        self.active + self.disabled + self.expired + self.revoked
    }
}

/// A change to a stored key, made by any process, that caches must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The key with this hash was created, changed or revoked.
    Key(KeyHash),
    /// Changes may have been missed (a lost connection): drop everything.
    Everything,
}

/// What spending credits did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Spent; this many are left.
    Spent {
        /// The balance after spending.
        remaining: u64,
    },
    /// Not spent: the balance does not cover the cost.
    Short {
        /// The balance, untouched.
        remaining: u64,
        /// When the quota's next refill is due (`None`: it has no refill), to tell the client
        /// when to retry.
        refill_due: Option<Timestamp>,
    },
    /// The key has no credits to spend (its quota was removed): nothing to count.
    NoQuota,
}

/// A key imported from another system, as [`KeyStore::import`](crate::KeyStore::import)
/// writes it.
#[derive(Debug, Clone)]
pub struct ImportedKey<'a> {
    /// The record. For a key whose plaintext keygate never saw, its `hash` is a random
    /// placeholder that no key hashes to, replaced by the rehash.
    pub record: &'a KeyRecord,
    /// Where it came from, unique per key (e.g. `drf-api-key:<table>:<prefix>`,
    /// `jsonl:<id>`): a second import of the same origin writes nothing. Holds no secret.
    pub origin_id: String,
    /// The `origin` of its `key.imported` event (system, table...). Holds no secret.
    pub origin: serde_json::Map<String, serde_json::Value>,
    /// The other system's prefix and stored hash, checked until the first success.
    pub legacy: Option<LegacyCredential>,
}

/// An imported key's prefix in its own system and the hash that system stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyCredential {
    /// The prefix a presented key is found by (e.g. drf-api-key's 8 characters).
    pub prefix: String,
    /// The stored hash.
    pub hash: keygate_core::legacy::LegacyHash,
}

/// Which kinds of imported key a store holds: the verifier looks a presented key of a
/// foreign format up only while keys of its kind exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportedKinds {
    /// Keys imported with another system's prefix and hash (drf-api-key), rehashed or not.
    pub legacy: bool,
    /// Keys imported by their SHA-256 alone (`keygate import jsonl`).
    pub sha256: bool,
}

/// Counts to add to one key's usage in one hour (see
/// [`UsageLog::record_counts`](crate::UsageLog::record_counts)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key.
    pub key: KeyId,
    /// The key's owner, kept on the row so that an owner's usage is a sum over its rows.
    pub owner: Option<String>,
    /// The hour's start ([`hour_of`](keygate_core::usage::hour_of) the requests' time).
    pub hour: Timestamp,
    /// The requests, by outcome.
    pub counts: keygate_core::usage::UsageCounts,
}

/// A page size: `limit` clamped to 1..=[`MAX_PAGE_SIZE`], 0 meaning [`DEFAULT_PAGE_SIZE`].
fn page_size(limit: u32) -> u32 {
    if limit == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        limit.min(MAX_PAGE_SIZE)
    }
}

/// A cursor as a non-negative position (an audit sequence number or an outbox row id).
fn position(cursor: Option<&str>) -> Result<Option<i64>, StoreError> {
    cursor
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or(StoreError::InvalidCursor)
        })
        .transpose()
}
