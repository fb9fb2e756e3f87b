//! Rows as the database returns them, their conversion to keygate's records, and the queries
//! that are built rather than written out (lists, audit pages, outbox rows), for any sqlx
//! database.

use keygate_core::limits::{IpAllowlist, Quota, RateLimits, Refill};
use keygate_core::{
    AuditEvent, EventKind, KeyHash, KeyId, KeyLimits, KeyRecord, Status, Timestamp,
};
use serde_json::{Map, Value};
use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::{AuditPage, AuditQuery, ListQuery, StoreError};

/// `SELECT <every column> FROM keys WHERE <condition>`, as one static string.
macro_rules! select_where {
    ($condition:literal) => {
        concat!(
            "SELECT id, name, start, hash, owner, scopes, metadata, created_at, expires_at, ",
            "revoked_at, revoked_reason, enabled, last_used_at, rotated_from, rotated_to, ",
            "rotated_at, max_age_ms, rate_limits, allowed_ips, quota_remaining, quota_refill, ",
            "quota_refilled_at, quota_holder, first_used_at, uses_since_rotation, ",
            "retire_when_switched_ms, ",
            "(SELECT o.rate_limits FROM owners o WHERE o.owner = keys.owner) AS owner_rate_limits ",
            "FROM keys WHERE ",
            $condition
        )
    };
}
pub(crate) use select_where;

/// An `owners` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OwnerRow {
    pub(crate) owner: String,
    pub(crate) rate_limits: String,
    pub(crate) updated_at: i64,
}

/// A `keys` row as the database returns it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Row {
    id: String,
    name: String,
    start: String,
    hash: Vec<u8>,
    owner: Option<String>,
    scopes: String,
    metadata: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    revoked_reason: Option<String>,
    enabled: bool,
    last_used_at: Option<i64>,
    rotated_from: Option<String>,
    rotated_to: Option<String>,
    rotated_at: Option<i64>,
    max_age_ms: Option<i64>,
    rate_limits: String,
    allowed_ips: Option<String>,
    quota_remaining: Option<i64>,
    quota_refill: Option<String>,
    quota_refilled_at: Option<i64>,
    quota_holder: Option<String>,
    first_used_at: Option<i64>,
    uses_since_rotation: i64,
    retire_when_switched_ms: Option<i64>,
    /// The owner's shared limits (from `owners`), if it has a row there.
    owner_rate_limits: Option<String>,
}

impl TryFrom<Row> for KeyRecord {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        let time = |ms: i64| {
            Timestamp::from_unix_ms(ms)
                .ok_or_else(|| StoreError::Corrupt("time out of range".into()))
        };
        let key_id =
            |id: &str| KeyId::parse(id).ok_or_else(|| StoreError::Corrupt("bad key id".into()));
        fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
            move |e| StoreError::Corrupt(format!("{what}: {e}"))
        }
        let quota = match (row.quota_remaining, row.quota_refilled_at) {
            (Some(remaining), Some(refilled_at)) => {
                let refill = row
                    .quota_refill
                    .as_deref()
                    .map(serde_json::from_str::<Refill>)
                    .transpose()
                    .map_err(corrupt("quota refill"))?;
                let remaining = u64::try_from(remaining)
                    .map_err(|_| StoreError::Corrupt("negative quota".into()))?;
                Some(
                    Quota::new(remaining, refill, time(refilled_at)?)
                        .map_err(|e| StoreError::Corrupt(format!("quota: {e}")))?,
                )
            }
            _ => None,
        };
        let limits = KeyLimits {
            rate: serde_json::from_str::<RateLimits>(&row.rate_limits)
                .map_err(corrupt("rate limits"))?,
            quota,
            quota_holder: row.quota_holder.as_deref().map(key_id).transpose()?,
            allowed_ips: row
                .allowed_ips
                .as_deref()
                .map(serde_json::from_str::<IpAllowlist>)
                .transpose()
                .map_err(corrupt("allowed ips"))?,
            owner_rate: row
                .owner_rate_limits
                .as_deref()
                .map(serde_json::from_str::<RateLimits>)
                .transpose()
                .map_err(corrupt("owner rate limits"))?
                .unwrap_or_default(),
        };
        Ok(KeyRecord {
            limits,
            id: KeyId::parse(&row.id).ok_or_else(|| StoreError::Corrupt("bad key id".into()))?,
            name: row.name,
            start: row.start,
            hash: KeyHash::from_slice(&row.hash)
                .ok_or_else(|| StoreError::Corrupt("hash is not 32 bytes".into()))?,
            owner: row.owner,
            scopes: serde_json::from_str::<Vec<String>>(&row.scopes)
                .map_err(|e| StoreError::Corrupt(format!("scopes: {e}")))?,
            metadata: serde_json::from_str::<Map<String, Value>>(&row.metadata)
                .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
            created_at: time(row.created_at)?,
            expires_at: row.expires_at.map(time).transpose()?,
            revoked_at: row.revoked_at.map(time).transpose()?,
            revoked_reason: row.revoked_reason,
            enabled: row.enabled,
            last_used_at: row.last_used_at.map(time).transpose()?,
            rotated_from: row.rotated_from.as_deref().map(key_id).transpose()?,
            rotated_to: row.rotated_to.as_deref().map(key_id).transpose()?,
            rotated_at: row.rotated_at.map(time).transpose()?,
            max_age: row.max_age_ms.and_then(keygate_core::Lifetime::from_ms),
            first_used_at: row.first_used_at.map(time).transpose()?,
            uses_since_rotation: u64::try_from(row.uses_since_rotation).unwrap_or(0),
            retire_when_switched: row
                .retire_when_switched_ms
                .and_then(keygate_core::Lifetime::from_ms),
        })
    }
}

/// Rows to records, failing on the first corrupt one.
pub(crate) fn records(rows: Vec<Row>) -> Result<Vec<KeyRecord>, StoreError> {
    rows.into_iter().map(KeyRecord::try_from).collect()
}

/// JSON text of scopes or metadata.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("scopes and metadata always serialize")
}

/// `text` as a LIKE pattern matching it anywhere, with `\` as the escape character.
fn contains_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The list query: filters, the status predicate with core's precedence (revoked, expired,
/// disabled, active), the cursor, newest first, one row more than the page to tell whether
/// another page follows. `like` is the case-insensitive match operator and `filtered_order`
/// the order clause for text-filtered lists (see [`Backend`](super::Backend)).
pub(crate) fn list_query<DB>(
    query: &ListQuery,
    cursor: Option<&KeyId>,
    like: &str,
    filtered_order: &'static str,
) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let now = query.now.unix_ms();
    let mut sql = QueryBuilder::<DB>::new(select_where!("1 = 1"));
    if let Some(owner) = &query.owner {
        sql.push(" AND owner = ").push_bind(owner.clone());
    }
    if let Some(text) = &query.name_contains {
        sql.push(format!(" AND name {like} "))
            .push_bind(contains_pattern(text))
            .push(" ESCAPE '\\'");
    }
    if let Some(text) = &query.search {
        let pattern = contains_pattern(text);
        sql.push(format!(" AND (name {like} "))
            .push_bind(pattern.clone())
            .push(format!(" ESCAPE '\\' OR owner {like} "))
            .push_bind(pattern.clone())
            .push(format!(" ESCAPE '\\' OR start {like} "))
            .push_bind(pattern)
            .push(" ESCAPE '\\')");
    }
    if let Some(cursor) = cursor {
        sql.push(" AND id < ").push_bind(cursor.as_str().to_owned());
    }
    match query.status {
        None => {}
        Some(Status::Revoked) => {
            sql.push(" AND revoked_at IS NOT NULL");
        }
        Some(Status::Expired) => {
            sql.push(" AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ")
                .push_bind(now);
        }
        Some(status @ (Status::Disabled | Status::Active)) => {
            sql.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ")
                .push_bind(now)
                .push(if status == Status::Active {
                    ") AND enabled = TRUE"
                } else {
                    ") AND enabled = FALSE"
                });
        }
    }
    if let Some(sweep) = &query.sweep {
        // The same rules as keygate-core's policy functions, loosened to a superset. Expiring
        // soon (now, until] and expired lately [since, now] are read as one range [since,
        // until], so that the `keys_expiring` index serves the sweep instead of a table scan.
        let expiry = match (sweep.expired_since, sweep.expiring_until) {
            (None, None) => None,
            (since, until) => Some((
                since.map_or(now, Timestamp::unix_ms),
                until.map_or(now, Timestamp::unix_ms),
            )),
        };
        sql.push(" AND revoked_at IS NULL AND (1 = 0");
        if let Some(max_age) = sweep.max_age_ms {
            sql.push(" OR (rotated_to IS NULL AND created_at + COALESCE(max_age_ms, ")
                .push_bind(max_age)
                .push(") <= ")
                .push_bind(now)
                .push(")");
        }
        if let Some((from, to)) = expiry {
            sql.push(" OR (expires_at >= ")
                .push_bind(from)
                .push(" AND expires_at <= ")
                .push_bind(to)
                .push(")");
        }
        if sweep.in_grace {
            sql.push(" OR (rotated_at IS NOT NULL AND expires_at > ")
                .push_bind(now)
                .push(")");
        }
        sql.push(")");
    }
    let text_filter = query.search.is_some() || query.name_contains.is_some();
    sql.push(if text_filter {
        filtered_order
    } else {
        " ORDER BY id DESC LIMIT "
    })
    .push_bind(i64::from(query.page_size()) + 1);
    sql
}

/// Cuts the extra row off and turns it into the next cursor.
pub(crate) fn page(mut items: Vec<KeyRecord>, size: u32) -> crate::Page {
    let size = size as usize;
    let next_cursor = if items.len() > size {
        items.truncate(size);
        items.last().map(|r| r.id.as_str().to_owned())
    } else {
        None
    };
    crate::Page { items, next_cursor }
}

/// `count_by_status`, with core's precedence; `$1` is the time.
pub(crate) const COUNT_BY_STATUS: &str = concat!(
    "SELECT ",
    "COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS revoked, ",
    "COALESCE(SUM(CASE WHEN revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1 ",
    "THEN 1 ELSE 0 END), 0) AS expired, ",
    "COALESCE(SUM(CASE WHEN revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) ",
    "AND enabled = FALSE THEN 1 ELSE 0 END), 0) AS disabled, ",
    "COALESCE(SUM(CASE WHEN revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) ",
    "AND enabled = TRUE THEN 1 ELSE 0 END), 0) AS active ",
    "FROM keys"
);

/// The four counts as the query returns them.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Counts {
    active: i64,
    disabled: i64,
    expired: i64,
    revoked: i64,
}

impl From<Counts> for crate::StatusCounts {
    fn from(c: Counts) -> Self {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Self {
            active: n(c.active),
            disabled: n(c.disabled),
            expired: n(c.expired),
            revoked: n(c.revoked),
        }
    }
}

/// An `audit_events` row as the database returns it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AuditRow {
    seq: i64,
    at: i64,
    kind: String,
    actor: String,
    key_id: Option<String>,
    request_id: Option<String>,
    details: String,
}

impl From<AuditRow> for AuditEvent {
    /// Every stored event is readable: one this version cannot decode (written by a newer
    /// version, or damaged) comes back as [`EventKind::Undecodable`] with its stored fields,
    /// as text, in `details.raw` — so that one bad row never makes the trail unreadable.
    fn from(row: AuditRow) -> Self {
        let at = Timestamp::from_unix_ms(row.at);
        let kind = EventKind::parse(&row.kind);
        let key_id = row.key_id.as_deref().map(KeyId::parse);
        let details = serde_json::from_str::<Map<String, Value>>(&row.details);
        match (at, kind, key_id, details) {
            (Some(at), Some(kind), key_id, Ok(details))
                if key_id.as_ref().is_none_or(Option::is_some) =>
            {
                AuditEvent {
                    seq: row.seq,
                    at,
                    kind,
                    actor: row.actor,
                    key_id: key_id.flatten(),
                    request_id: row.request_id,
                    details,
                }
            }
            (at, ..) => {
                tracing::warn!(
                    seq = row.seq,
                    "an audit event could not be decoded; shown raw"
                );
                let mut raw = Map::new();
                raw.insert("at".into(), Value::from(row.at));
                raw.insert("type".into(), Value::from(row.kind));
                raw.insert(
                    "key_id".into(),
                    row.key_id.clone().map_or(Value::Null, Value::from),
                );
                raw.insert("details".into(), Value::from(row.details));
                let mut details = Map::new();
                details.insert("raw".into(), Value::Object(raw));
                AuditEvent {
                    seq: row.seq,
                    at: at.unwrap_or_else(|| {
                        Timestamp::from_unix_ms(0).expect("the epoch is a time")
                    }),
                    kind: EventKind::Undecodable,
                    actor: row.actor,
                    key_id: row.key_id.as_deref().and_then(KeyId::parse),
                    request_id: row.request_id,
                    details,
                }
            }
        }
    }
}

/// `INSERT` of one audit event (7 parameters, in this order: at, kind, actor, key_id,
/// request_id, details), with the placeholder style of the backend.
pub(crate) fn insert_event<DB>(event: &AuditEvent) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut sql = QueryBuilder::<DB>::new(
        "INSERT INTO audit_events (at, kind, actor, key_id, request_id, details) VALUES (",
    );
    let mut values = sql.separated(", ");
    values.push_bind(event.at.unix_ms());
    values.push_bind(event.kind.as_str().to_owned());
    values.push_bind(event.actor.clone());
    values.push_bind(event.key_id.as_ref().map(|id| id.as_str().to_owned()));
    values.push_bind(event.request_id.clone());
    values.push_bind(to_json(&event.details));
    sql.push(")");
    sql
}

/// The outbox rows for an event stored at `seq`: one per enabled endpoint (`endpoints`: id,
/// events JSON, slack) that wants its type; `None` if none does.
pub(crate) fn deliveries_for<DB>(
    event: &AuditEvent,
    seq: i64,
    endpoints: Vec<(String, String, bool)>,
    now_ms: i64,
) -> Option<QueryBuilder<DB>>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut stored = event.clone();
    stored.seq = seq;
    let rows: Vec<(String, String)> = endpoints
        .into_iter()
        .filter(|(_, events, _)| {
            let filter: Vec<String> = serde_json::from_str(events).unwrap_or_default();
            keygate_core::webhook::wants(&filter, event.kind)
        })
        .map(|(id, _, slack)| {
            (
                id,
                keygate_core::webhook::payload(&stored, slack).to_string(),
            )
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut sql = QueryBuilder::<DB>::new(
        "INSERT INTO webhook_deliveries (endpoint_id, event_seq, payload, next_attempt_at) ",
    );
    sql.push_values(rows, |mut row, (endpoint, payload)| {
        row.push_bind(endpoint)
            .push_bind(seq)
            .push_bind(payload)
            .push_bind(now_ms);
    });
    Some(sql)
}

/// The delivery columns, joined with the endpoint's URL and secret.
pub(crate) const DELIVERY_COLUMNS: &str = "d.id, d.endpoint_id, d.event_seq, d.payload, d.status, \
    d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.delivered_at, e.url, e.secret \
    FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id";

/// A delivery row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: i64,
    endpoint_id: String,
    event_seq: i64,
    payload: String,
    status: String,
    attempts: i32,
    next_attempt_at: i64,
    last_status: Option<i32>,
    last_error: Option<String>,
    delivered_at: Option<i64>,
    url: String,
    secret: String,
}

impl TryFrom<DeliveryRow> for keygate_core::webhook::Delivery {
    type Error = StoreError;

    fn try_from(r: DeliveryRow) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("webhook delivery {}", r.id));
        Ok(Self {
            id: r.id,
            endpoint_id: r.endpoint_id.clone(),
            event_seq: r.event_seq,
            payload: r.payload.clone(),
            status: keygate_core::webhook::DeliveryStatus::parse(&r.status).ok_or_else(corrupt)?,
            attempts: u32::try_from(r.attempts).map_err(|_| corrupt())?,
            next_attempt_at: Timestamp::from_unix_ms(r.next_attempt_at).ok_or_else(corrupt)?,
            last_status: r.last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: r.last_error.clone(),
            delivered_at: r.delivered_at.and_then(Timestamp::from_unix_ms),
            url: r.url.clone(),
            secret: r.secret.clone(),
        })
    }
}

/// An endpoint row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EndpointRow {
    id: String,
    url: String,
    events: String,
    secret: String,
    slack: bool,
    enabled: bool,
    created_at: i64,
    receives_secrets: bool,
}

impl TryFrom<EndpointRow> for keygate_core::webhook::Endpoint {
    type Error = StoreError;

    fn try_from(r: EndpointRow) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("webhook endpoint {}", r.id));
        Ok(Self {
            events: serde_json::from_str(&r.events).map_err(|_| corrupt())?,
            created_at: Timestamp::from_unix_ms(r.created_at).ok_or_else(corrupt)?,
            id: r.id,
            url: r.url,
            secret: r.secret,
            slack: r.slack,
            enabled: r.enabled,
            receives_secrets: r.receives_secrets,
        })
    }
}

/// An admin-UI user row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AdminUserRow {
    username: String,
    password_hash: String,
    read_only: bool,
    created_at: i64,
    updated_at: i64,
}

/// Columns of [`AdminUserRow`].
pub(crate) const ADMIN_USER_COLUMNS: &str =
    "username, password_hash, read_only, created_at, updated_at";

impl TryFrom<AdminUserRow> for crate::AdminUser {
    type Error = StoreError;

    fn try_from(r: AdminUserRow) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("admin user {}", r.username));
        Ok(Self {
            created_at: Timestamp::from_unix_ms(r.created_at).ok_or_else(corrupt)?,
            updated_at: Timestamp::from_unix_ms(r.updated_at).ok_or_else(corrupt)?,
            username: r.username,
            password_hash: r.password_hash,
            read_only: r.read_only,
        })
    }
}

/// An admin-UI session row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SessionRow {
    id: Vec<u8>,
    principal: String,
    csrf: String,
    created_at: i64,
    last_seen_at: i64,
}

/// Columns of [`SessionRow`].
pub(crate) const SESSION_COLUMNS: &str = "id, principal, csrf, created_at, last_seen_at";

impl TryFrom<SessionRow> for crate::AdminSession {
    type Error = StoreError;

    fn try_from(r: SessionRow) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("admin session".into());
        Ok(Self {
            id: r.id.try_into().map_err(|_| corrupt())?,
            principal: crate::Principal::decode(&r.principal).ok_or_else(corrupt)?,
            csrf: r.csrf,
            created_at: Timestamp::from_unix_ms(r.created_at).ok_or_else(corrupt)?,
            last_seen_at: Timestamp::from_unix_ms(r.last_seen_at).ok_or_else(corrupt)?,
        })
    }
}

/// The `admin.user_removed` event for `username`.
pub(crate) fn user_removed_event(
    username: &str,
    audit: &keygate_core::Audit,
    at: Timestamp,
) -> AuditEvent {
    let mut details = Map::new();
    details.insert("username".into(), Value::from(username.to_owned()));
    AuditEvent::about_admin(EventKind::AdminUserRemoved, audit, at, details)
}

/// The `admin.password_set` event for `user`: name and role, never the hash.
pub(crate) fn password_set_event(
    user: &crate::AdminUser,
    audit: &keygate_core::Audit,
) -> AuditEvent {
    let mut details = Map::new();
    details.insert("username".into(), Value::from(user.username.clone()));
    details.insert("read_only".into(), Value::from(user.read_only));
    AuditEvent::about_admin(EventKind::AdminPasswordSet, audit, user.updated_at, details)
}

/// The audit query: filters, cursor, oldest first, one row more than the page.
pub(crate) fn audit_query<DB>(query: &AuditQuery, cursor: Option<i64>) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut sql = QueryBuilder::<DB>::new(
        "SELECT seq, at, kind, actor, key_id, request_id, details FROM audit_events WHERE 1 = 1",
    );
    if let Some(id) = &query.key_id {
        sql.push(" AND key_id = ").push_bind(id.as_str().to_owned());
    }
    if let Some(kind) = query.kind {
        sql.push(" AND kind = ").push_bind(kind.as_str().to_owned());
    }
    if let Some(since) = query.since {
        sql.push(" AND at >= ").push_bind(since.unix_ms());
    }
    if let Some(cursor) = cursor {
        sql.push(if query.newest_first {
            " AND seq < "
        } else {
            " AND seq > "
        })
        .push_bind(cursor);
    }
    sql.push(if query.newest_first {
        " ORDER BY seq DESC LIMIT "
    } else {
        " ORDER BY seq ASC LIMIT "
    })
    .push_bind(i64::from(query.page_size()) + 1);
    sql
}

/// Rows to a page of events.
pub(crate) fn audit_page(rows: Vec<AuditRow>, size: u32) -> Result<AuditPage, StoreError> {
    let mut items: Vec<AuditEvent> = rows.into_iter().map(AuditEvent::from).collect();
    let next_cursor = if items.len() > size as usize {
        items.truncate(size as usize);
        items.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(AuditPage { items, next_cursor })
}

/// A `sign_in_attempts` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AttemptsRow {
    failures: i32,
    last_at: Option<i64>,
    locked_until: Option<i64>,
    pending: i32,
    pending_since: Option<i64>,
}

impl TryFrom<AttemptsRow> for crate::SignInAttempts {
    type Error = StoreError;

    fn try_from(r: AttemptsRow) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("sign-in attempts".into());
        let time = |t: Option<i64>| {
            t.map(|t| Timestamp::from_unix_ms(t).ok_or_else(corrupt))
                .transpose()
        };
        Ok(Self {
            failures: u32::try_from(r.failures).map_err(|_| corrupt())?,
            last_at: time(r.last_at)?,
            locked_until: time(r.locked_until)?,
            pending: u32::try_from(r.pending).map_err(|_| corrupt())?,
            pending_since: time(r.pending_since)?,
        })
    }
}

/// Columns of [`EmailRow`].
pub(crate) const EMAIL_COLUMNS: &str = "id, event_seq, event, key_id, owner, recipient, digest, \
    subject, body_text, body_html, status, attempts, next_attempt_at, last_error, sent_at \
    FROM email_deliveries";

/// An email outbox row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EmailRow {
    id: i64,
    event_seq: i64,
    event: String,
    key_id: Option<String>,
    owner: Option<String>,
    recipient: String,
    digest: bool,
    subject: String,
    body_text: String,
    body_html: String,
    status: String,
    attempts: i32,
    next_attempt_at: i64,
    last_error: Option<String>,
    sent_at: Option<i64>,
}

impl TryFrom<EmailRow> for keygate_core::email::EmailDelivery {
    type Error = StoreError;

    fn try_from(r: EmailRow) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("email {}", r.id));
        Ok(Self {
            status: keygate_core::webhook::DeliveryStatus::parse(&r.status).ok_or_else(corrupt)?,
            attempts: u32::try_from(r.attempts).map_err(|_| corrupt())?,
            next_attempt_at: Timestamp::from_unix_ms(r.next_attempt_at).ok_or_else(corrupt)?,
            sent_at: match r.sent_at {
                Some(ms) => Some(Timestamp::from_unix_ms(ms).ok_or_else(corrupt)?),
                None => None,
            },
            id: r.id,
            event_seq: r.event_seq,
            // A type this version does not know (written by a newer one) is shown as such.
            event: keygate_core::EventKind::parse(&r.event)
                .unwrap_or(keygate_core::EventKind::Undecodable),
            key_id: r.key_id,
            owner: r.owner,
            recipient: r.recipient,
            digest: r.digest,
            subject: r.subject,
            text: r.body_text,
            html: r.body_html,
            last_error: r.last_error,
        })
    }
}

/// Who gets an event's emails about a key: the key's name and owner, and the owner's contacts
/// if it has a record.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EmailTargetRow {
    pub(crate) name: String,
    pub(crate) owner: Option<String>,
    pub(crate) emails: Option<String>,
    pub(crate) digest: Option<bool>,
}
