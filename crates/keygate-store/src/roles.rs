//! The store's roles. A caller depends on the role it needs; [`Store`] is every role at once.

use async_trait::async_trait;
use keygate_core::email::{Contacts, EmailDelivery, EmailRouting};
use keygate_core::limits::{OwnerLimits, RateLimits};
use keygate_core::switch::Usage;
use keygate_core::usage::{UsageBucket, UsageRange};
use keygate_core::webhook::{Delivery, Endpoint, EndpointPatch};
use keygate_core::{Audit, AuditEvent, KeyHash, KeyId, KeyPatch, KeyRecord, Timestamp};
use tokio::sync::mpsc;

use crate::StoreError;
use crate::accounts::{AdminSession, AdminUser, AttemptsPlan, SignInAttempts};
use crate::query::{
    Attempt, AuditPage, AuditQuery, Change, EmailPage, EmailQuery, ImportedKey, ImportedKinds,
    LegacyCredential, ListQuery, Page, RetirePlan, RotationPlan, Spend, StatusCounts, UsageDelta,
};

/// Most candidates [`KeyStore::find_by_legacy_prefix`] returns (a drf-api-key prefix is
/// unique per table; several tables may be imported).
pub const MAX_LEGACY_CANDIDATES: u32 = 8;

/// Keys: their records, every change to them (each with its audit event, in one transaction),
/// the change feed caches follow, and the database's health.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// The record with this hash: the verify path's lookup.
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError>;

    /// The record with this id.
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Keys matching `query`, newest first, one page at a time.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// How many keys have each status at `now`.
    async fn count_by_status(&self, now: Timestamp) -> Result<StatusCounts, StoreError>;

    /// Stores a new record, and its `key.created` event. [`StoreError::Duplicate`] if its id or
    /// hash is taken.
    async fn create(&self, record: &KeyRecord, audit: &Audit) -> Result<(), StoreError>;

    /// Stores `record` only if the store holds no key at all, atomically (for the bootstrap
    /// admin key: several nodes starting on one empty database must issue one key, not one
    /// each). `Ok(false)` if there were keys already.
    async fn create_if_empty(&self, record: &KeyRecord, audit: &Audit) -> Result<bool, StoreError>;

    /// Applies `patch` atomically, with its `key.updated` event (time `at`), and returns the
    /// updated record.
    async fn update(
        &self,
        id: &KeyId,
        patch: KeyPatch,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<KeyRecord, StoreError>;

    /// Revokes the key at `at` atomically, with its `key.revoked` event, and returns the updated
    /// record. [`RecordError::AlreadyRevoked`](keygate_core::RecordError::AlreadyRevoked) if it
    /// was revoked before.
    async fn revoke(
        &self,
        id: &KeyId,
        at: Timestamp,
        reason: Option<String>,
        audit: &Audit,
    ) -> Result<KeyRecord, StoreError>;

    /// Rotates the key `id` in one transaction: `plan` (keygate-core's
    /// [`plan_rotation`](keygate_core::plan_rotation)) turns the stored record into the old
    /// record as it must now be and its successor; both are written, with `key.rotated` and
    /// `key.created` events. With `sealed` (the successor's plaintext, sealed by the caller),
    /// also queues it for every enabled endpoint that receives secrets. Returns (old,
    /// successor).
    async fn rotate(
        &self,
        id: &KeyId,
        plan: &RotationPlan<'_>,
        at: Timestamp,
        audit: &Audit,
        sealed: Option<&str>,
    ) -> Result<(KeyRecord, KeyRecord), StoreError>;

    /// Retires rotated key `id` if `plan` (given the key as stored now, in the transaction)
    /// says so: its grace period ends at `at`, with a `key.retired` event carrying the plan's
    /// evidence, in one transaction. `Ok(None)` if the plan says no.
    async fn retire(
        &self,
        id: &KeyId,
        plan: &RetirePlan<'_>,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Records a batch of uses in one write: last-used times (never moving backwards),
    /// first-used times (never moving forwards) and uses since rotation (added); unknown ids
    /// are ignored.
    async fn record_usage(&self, usage: &[Usage]) -> Result<(), StoreError>;

    /// Spends `cost` credits of key `payer` if its balance covers them: one conditional
    /// decrement, so the balance is exact however many processes spend from it at once.
    async fn spend_quota(&self, payer: &KeyId, cost: u64) -> Result<Spend, StoreError>;

    /// The owner's record (its shared rate limits), if it has one.
    async fn get_owner(&self, owner: &str) -> Result<Option<OwnerLimits>, StoreError>;

    /// Sets the rate limits all of `owner`'s keys share (empty: removes them), with its
    /// `owner.updated` event; every process's cache learns it through the change feed.
    async fn set_owner_limits(
        &self,
        owner: &str,
        rate_limits: &RateLimits,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<OwnerLimits, StoreError>;

    /// Refills the credits of up to `limit` keys whose refill was due by `now` (the balance
    /// set to the refill's amount), each with its `key.quota_refilled` event; returns how many
    /// it refilled. A key already refilled in this period is not refilled again, so running
    /// it twice, or on several nodes at once, refills once.
    async fn refill_quotas(
        &self,
        now: Timestamp,
        limit: u32,
        audit: &Audit,
    ) -> Result<u64, StoreError>;

    /// Stores an imported key with its `key.imported` event and change signal, in one
    /// transaction. `Ok(false)`, and nothing written, if a key of the same origin was imported
    /// before; [`StoreError::Duplicate`] if its id or hash is taken.
    async fn import(&self, key: &ImportedKey<'_>, audit: &Audit) -> Result<bool, StoreError>;

    /// Whether a key of this origin was imported.
    async fn is_imported(&self, origin_id: &str) -> Result<bool, StoreError>;

    /// The imported keys (at most [`MAX_LEGACY_CANDIDATES`]) that carry this prefix of their
    /// own system and still wait for their rehash, each with its credential.
    async fn find_by_legacy_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(KeyRecord, LegacyCredential)>, StoreError>;

    /// The lazy rehash: after a presented key matched the imported hash of key `id`, stores
    /// `hash` (the key's SHA-256) as its index and drops the imported hash, with a
    /// `key.rehashed` event and change signals, in one transaction. Returns the updated record,
    /// or `None` (nothing written) if the key was rehashed already (by a concurrent check,
    /// another node) or has no imported hash.
    async fn rehash(
        &self,
        id: &KeyId,
        hash: &KeyHash,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Which kinds of imported key the store holds.
    async fn imported_kinds(&self) -> Result<ImportedKinds, StoreError>;

    /// Follows changes to keys made by any process on this database, this one included,
    /// until the receiver is dropped.
    async fn watch(&self) -> Result<mpsc::Receiver<Change>, StoreError>;

    /// Checks that the database answers and is the one opened.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Checks that the database takes writes (a probe row is written): a full disk or a
    /// read-only file shows here before a real change fails.
    async fn ping_write(&self, at: Timestamp) -> Result<(), StoreError>;

    /// Closes the store's connections (for a clean shutdown); later calls fail.
    async fn close(&self);
}

/// The append-only audit trail. Key changes write their events themselves (in their own
/// transaction); this role adds notices that change no key and reads the trail.
#[async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Appends a notice that changes no key (`key.expiring_soon`, `admin.signed_in`, ...),
    /// with its webhook deliveries, in one transaction.
    async fn append_event(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Events matching `query`, one page at a time. No method changes or removes an event.
    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;
}

/// Webhook endpoints and the durable outbox of deliveries (rows written in the same
/// transaction as the event they carry).
#[async_trait]
pub trait WebhookOutbox: Send + Sync + std::fmt::Debug {
    /// Adds a webhook endpoint, with its `webhook.created` event.
    async fn create_endpoint(&self, endpoint: &Endpoint, audit: &Audit) -> Result<(), StoreError>;

    /// Every webhook endpoint.
    async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StoreError>;

    /// Applies `patch` to endpoint `id` atomically, with its event (`webhook.updated`,
    /// `webhook.disabled` or `webhook.enabled`, at `at`), and returns the endpoint as it now
    /// is. [`StoreError::NotFound`] if there is none.
    async fn update_endpoint(
        &self,
        id: &str,
        patch: &EndpointPatch,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<Endpoint, StoreError>;

    /// Deletes endpoint `id` and its deliveries (its log, and those still pending: they are
    /// dropped, and counted in its `webhook.deleted` event), atomically. Returns the endpoint
    /// as it was and how many pending deliveries were dropped.
    async fn delete_endpoint(
        &self,
        id: &str,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<(Endpoint, u64), StoreError>;

    /// Pending deliveries to enabled endpoints whose next attempt is due at `now`, oldest
    /// first (a disabled endpoint's pending deliveries wait until it is enabled again).
    async fn due_deliveries(&self, now: Timestamp, limit: u32)
    -> Result<Vec<Delivery>, StoreError>;

    /// Claims delivery `id` for this sender until `until`, right before it is attempted:
    /// `true` if it was still pending and due at `now` and no other sender claimed it first
    /// (then it is this sender's to attempt; if the sender dies, it is due again at `until`).
    async fn claim_delivery(
        &self,
        id: i64,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Records the outcome of an attempt at delivery `id` (a no-op if it is no longer pending).
    async fn finish_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError>;

    /// The latest deliveries to an endpoint, newest first: its delivery log.
    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;
}

/// Key owners' contact addresses and the email outbox (rows written in the same transaction
/// as the event they tell of, for the owner of the key concerned and the operators of its
/// event type).
#[async_trait]
pub trait EmailOutbox: Send + Sync + std::fmt::Debug {
    /// Where this process's emails link to and which operators get them: applies to the
    /// emails of every event written from now on (default: no operators, no link).
    fn set_email_routing(&self, routing: EmailRouting);

    /// Sets `owner`'s contacts (replacing them; no address removes the record), with an
    /// `owner.updated` event, in one transaction.
    async fn set_owner(
        &self,
        owner: &str,
        contacts: &Contacts,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<(), StoreError>;

    /// `owner`'s contacts (none if it has no record).
    async fn owner_contacts(&self, owner: &str) -> Result<Contacts, StoreError>;

    /// Pending single emails (not digest notices) whose next attempt is due at `now`, oldest
    /// first.
    async fn due_emails(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<EmailDelivery>, StoreError>;

    /// Pending digest notices due at `now`, by recipient then oldest first: each recipient's
    /// are sent as one email.
    async fn due_digest_notices(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<EmailDelivery>, StoreError>;

    /// Claims email (or digest notice) `id` for this sender until `until`, right before it is
    /// sent: as [`WebhookOutbox::claim_delivery`].
    async fn claim_email(
        &self,
        id: i64,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Records the outcome of an attempt at email `id` (a no-op if it is no longer pending).
    async fn finish_email(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError>;

    /// Emails matching `query`, newest first, one page at a time: the email log.
    async fn list_emails(&self, query: &EmailQuery) -> Result<EmailPage, StoreError>;
}

/// The admin web UI's accounts: users with passwords, sessions, and their one-time messages.
#[async_trait]
pub trait AdminAccounts: Send + Sync + std::fmt::Debug {
    /// Adds an admin-UI user, or replaces the password and role of an existing one (keeping
    /// its creation time), with an `admin.password_set` event, in one transaction.
    async fn set_admin_user(&self, user: &AdminUser, audit: &Audit) -> Result<(), StoreError>;

    /// The admin-UI user called `username`.
    async fn get_admin_user(&self, username: &str) -> Result<Option<AdminUser>, StoreError>;

    /// Every admin-UI user, by name.
    async fn list_admin_users(&self) -> Result<Vec<AdminUser>, StoreError>;

    /// Removes admin-UI user `username`, with an `admin.user_removed` event, in one
    /// transaction; `false` (and nothing written) if there is no such user.
    async fn remove_admin_user(
        &self,
        username: &str,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<bool, StoreError>;

    /// Stores a new admin-UI session.
    async fn create_session(&self, session: &AdminSession) -> Result<(), StoreError>;

    /// The session whose token hashes to `id`.
    async fn get_session(&self, id: &[u8; 32]) -> Result<Option<AdminSession>, StoreError>;

    /// Records a request in session `id` at `at`.
    async fn touch_session(&self, id: &[u8; 32], at: Timestamp) -> Result<(), StoreError>;

    /// Ends session `id` (and drops its messages).
    async fn end_session(&self, id: &[u8; 32]) -> Result<(), StoreError>;

    /// Ends every session idle since before `idle_before` or begun before `begun_before`;
    /// returns how many.
    async fn purge_sessions(
        &self,
        idle_before: Timestamp,
        begun_before: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Queues a (sealed) one-time message for session `id`'s next page.
    async fn push_flash(&self, id: &[u8; 32], sealed: &str) -> Result<(), StoreError>;

    /// Takes session `id`'s messages, oldest first: a message is returned once, to one caller.
    async fn take_flashes(&self, id: &[u8; 32]) -> Result<Vec<String>, StoreError>;

    /// Reads the sign-in counts of `subjects`, lets `plan` decide what they become, and writes
    /// that — in one write transaction, so that concurrent attempts are counted one after the
    /// other, on every node. Returns what was read.
    async fn count_sign_in(
        &self,
        subjects: &[String],
        plan: &AttemptsPlan<'_>,
    ) -> Result<Vec<Option<SignInAttempts>>, StoreError>;

    /// Forgets the sign-in counts last changed before `before` that lock nothing any more.
    async fn purge_sign_in_counts(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// The server secret called `name`: `fresh` is stored if there is none yet (whichever node
    /// asks first makes it), and the stored one is returned.
    async fn server_secret(&self, name: &str, fresh: &[u8; 32]) -> Result<[u8; 32], StoreError>;
}

/// Usage by hour: counts of requests per (key, hour) by outcome, added to in batches, read per
/// key or per owner (a sum over the owner's keys), purged after a retention period.
#[async_trait]
pub trait UsageLog: Send + Sync + std::fmt::Debug {
    /// Adds `batch`'s counts to the stored ones, in one statement: concurrent batches (from
    /// any number of processes) add up exactly. Rows for the same (key, hour) are added
    /// together; a row's owner becomes the last one given for it.
    async fn record_counts(&self, batch: &[UsageDelta]) -> Result<(), StoreError>;

    /// Key `id`'s usage over `range`: every bucket of it, in order, empty ones included.
    async fn usage_for_key(
        &self,
        id: &KeyId,
        range: &UsageRange,
    ) -> Result<Vec<UsageBucket>, StoreError>;

    /// The usage of every key of `owner` over `range`, added together bucket by bucket.
    async fn usage_for_owner(
        &self,
        owner: &str,
        range: &UsageRange,
    ) -> Result<Vec<UsageBucket>, StoreError>;

    /// Removes the rows of hours before `before`; returns how many.
    async fn purge_usage(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// Every role: what [`open`](crate::open) returns and keygate's library manages keys through.
pub trait Store:
    KeyStore + AuditLog + WebhookOutbox + EmailOutbox + AdminAccounts + UsageLog
{
}

impl<T: KeyStore + AuditLog + WebhookOutbox + EmailOutbox + AdminAccounts + UsageLog> Store for T {}
