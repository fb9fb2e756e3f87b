//! The two durable outboxes — webhook deliveries and emails — are one shape: rows written in
//! their event's transaction, taken when due, marked after each attempt, listed newest first.
//! [`Outbox`] names what differs (table, columns, the delivered-at column, whether the
//! receiver's status is kept); the statements are written here once for both.

use keygate_core::Timestamp;
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::rows::{DELIVERY_COLUMNS, EMAIL_COLUMNS};
use crate::Attempt;

/// One outbox table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outbox {
    /// The table.
    table: &'static str,
    /// The `SELECT` list and `FROM` of its rows (with any joins).
    select: &'static str,
    /// Its alias in `select`, with the dot (empty when not aliased).
    alias: &'static str,
    /// The column that holds when it was delivered.
    delivered_at: &'static str,
    /// Whether it keeps the receiver's last status (`last_status`).
    last_status: bool,
}

/// Webhook deliveries (joined with their endpoint: its URL and secret).
pub(crate) const WEBHOOKS: Outbox = Outbox {
    table: "webhook_deliveries",
    select: DELIVERY_COLUMNS,
    alias: "d.",
    delivered_at: "delivered_at",
    last_status: true,
};

/// Emails.
pub(crate) const EMAILS: Outbox = Outbox {
    table: "email_deliveries",
    select: EMAIL_COLUMNS,
    alias: "",
    delivered_at: "sent_at",
    last_status: false,
};

impl Outbox {
    /// Pending rows due at `now` that also meet `also` (SQL, `AND ...`, or empty), in `order`
    /// (columns, without `ORDER BY`), at most `limit`.
    pub(crate) fn due<DB>(
        &self,
        now: Timestamp,
        also: &str,
        order: &str,
        limit: u32,
    ) -> QueryBuilder<DB>
    where
        DB: Database,
        DB::Arguments: Default,
        i64: for<'q> Encode<'q, DB> + Type<DB>,
    {
        let a = self.alias;
        let mut sql = QueryBuilder::<DB>::new(format!(
            "SELECT {} WHERE {a}status = 'pending' AND {a}next_attempt_at <= ",
            self.select
        ));
        sql.push_bind(now.unix_ms())
            .push(format!("{also} ORDER BY {order} LIMIT "))
            .push_bind(i64::from(limit));
        sql
    }

    /// Claims row `id` for one sender until `until`: moves its next attempt there if it is
    /// still pending and due at `now`. Of several senders (nodes) that read the same due row,
    /// exactly one changes it (and gets its id back); the others leave it alone. A sender that dies
    /// after claiming leaves the row to be tried again at `until`.
    pub(crate) fn claim<DB>(&self, id: i64, now: Timestamp, until: Timestamp) -> QueryBuilder<DB>
    where
        DB: Database,
        DB::Arguments: Default,
        i64: for<'q> Encode<'q, DB> + Type<DB>,
    {
        let mut sql =
            QueryBuilder::<DB>::new(format!("UPDATE {} SET next_attempt_at = ", self.table));
        sql.push_bind(until.unix_ms())
            .push(" WHERE id = ")
            .push_bind(id)
            .push(" AND status = 'pending' AND next_attempt_at <= ")
            .push_bind(now.unix_ms())
            .push(" RETURNING id");
        sql
    }

    /// Records `attempt` at row `id`; a no-op once the row is no longer pending.
    pub(crate) fn finish<DB>(&self, id: i64, attempt: &Attempt) -> QueryBuilder<DB>
    where
        DB: Database,
        DB::Arguments: Default,
        i64: for<'q> Encode<'q, DB> + Type<DB>,
        String: for<'q> Encode<'q, DB> + Type<DB>,
        Option<i64>: for<'q> Encode<'q, DB> + Type<DB>,
        Option<i32>: for<'q> Encode<'q, DB> + Type<DB>,
        Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
    {
        let mut sql = QueryBuilder::<DB>::new(format!("UPDATE {} SET status = ", self.table));
        sql.push_bind(attempt.outcome().as_str().to_owned())
            .push(", attempts = attempts + 1, last_error = ")
            .push_bind(attempt.error.clone())
            .push(", next_attempt_at = COALESCE(")
            .push_bind(attempt.next_attempt_at.map(Timestamp::unix_ms))
            .push(", next_attempt_at), ")
            .push(self.delivered_at)
            .push(" = ")
            .push_bind(attempt.delivered.then(|| attempt.at.unix_ms()));
        if self.last_status {
            sql.push(", last_status = ")
                .push_bind(attempt.status.map(i32::from));
        }
        sql.push(" WHERE id = ")
            .push_bind(id)
            .push(" AND status = 'pending'");
        sql
    }

    /// Rows where each `(expression, value)` of `filters` holds (`expression = value`), before
    /// row `before` if given, newest first, at most `limit`.
    pub(crate) fn page<DB>(
        &self,
        filters: Vec<(&str, String)>,
        before: Option<i64>,
        limit: u32,
    ) -> QueryBuilder<DB>
    where
        DB: Database,
        DB::Arguments: Default,
        i64: for<'q> Encode<'q, DB> + Type<DB>,
        String: for<'q> Encode<'q, DB> + Type<DB>,
    {
        let a = self.alias;
        let mut sql = QueryBuilder::<DB>::new(format!("SELECT {} WHERE 1 = 1", self.select));
        for (expression, value) in filters {
            sql.push(format!(" AND {expression} = ")).push_bind(value);
        }
        if let Some(before) = before {
            sql.push(format!(" AND {a}id < ")).push_bind(before);
        }
        sql.push(format!(" ORDER BY {a}id DESC LIMIT "))
            .push_bind(i64::from(limit));
        sql
    }
}
