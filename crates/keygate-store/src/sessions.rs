//! Admin-UI sessions, their one-time messages and admin users: the same SQL on every backend
//! (`$n` placeholders, which SQLite accepts as well), written once over sqlx's `Database`.

use keygate_core::{AdminSession, AdminUser, Timestamp};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::StoreError;
use crate::sql::{ADMIN_USER_COLUMNS, AdminUserRow, SESSION_COLUMNS, SessionRow};

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The session tables of one database.
pub(crate) struct SessionTables<'a, DB: Database>(pub &'a Pool<DB>);

impl<DB> SessionTables<'_, DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> SessionRow: FromRow<'r, DB::Row>,
    for<'r> AdminUserRow: FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (Vec<u8>,): FromRow<'r, DB::Row>,
{
    pub(crate) async fn get_admin_user(
        &self,
        username: &str,
    ) -> Result<Option<AdminUser>, StoreError> {
        let row: Option<AdminUserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ADMIN_USER_COLUMNS} FROM admin_users WHERE username = $1"
        )))
        .bind(username.to_owned())
        .fetch_optional(self.0)
        .await
        .map_err(backend)?;
        row.map(AdminUser::try_from).transpose()
    }

    pub(crate) async fn list_admin_users(&self) -> Result<Vec<AdminUser>, StoreError> {
        let rows: Vec<AdminUserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ADMIN_USER_COLUMNS} FROM admin_users ORDER BY username"
        )))
        .fetch_all(self.0)
        .await
        .map_err(backend)?;
        rows.into_iter().map(AdminUser::try_from).collect()
    }

    pub(crate) async fn create(&self, session: &AdminSession) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO admin_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
        )))
        .bind(session.id.to_vec())
        .bind(session.principal.encode())
        .bind(session.csrf.clone())
        .bind(session.created_at.unix_ms())
        .bind(session.last_seen_at.unix_ms())
        .execute(self.0)
        .await
        .map_err(backend)?;
        Ok(())
    }

    pub(crate) async fn get(&self, id: &[u8; 32]) -> Result<Option<AdminSession>, StoreError> {
        let row: Option<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE id = $1"
        )))
        .bind(id.to_vec())
        .fetch_optional(self.0)
        .await
        .map_err(backend)?;
        row.map(AdminSession::try_from).transpose()
    }

    pub(crate) async fn touch(&self, id: &[u8; 32], at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE admin_sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1",
        )
        .bind(at.unix_ms())
        .bind(id.to_vec())
        .execute(self.0)
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// Ends a session; its messages go with it (`ON DELETE CASCADE`).
    pub(crate) async fn end(&self, id: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE id = $1")
            .bind(id.to_vec())
            .execute(self.0)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Ends idle and old sessions, with their messages (`ON DELETE CASCADE`).
    pub(crate) async fn purge(
        &self,
        idle_before: Timestamp,
        begun_before: Timestamp,
    ) -> Result<u64, StoreError> {
        let ended: Vec<(Vec<u8>,)> = sqlx::query_as(
            "DELETE FROM admin_sessions WHERE last_seen_at < $1 OR created_at < $2 RETURNING id",
        )
        .bind(idle_before.unix_ms())
        .bind(begun_before.unix_ms())
        .fetch_all(self.0)
        .await
        .map_err(backend)?;
        Ok(ended.len() as u64)
    }

    pub(crate) async fn push_flash(&self, id: &[u8; 32], sealed: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO admin_flashes (session_id, sealed) VALUES ($1, $2)")
            .bind(id.to_vec())
            .bind(sealed.to_owned())
            .execute(self.0)
            .await
            .map_err(backend)?;
        Ok(())
    }

    pub(crate) async fn take_flashes(&self, id: &[u8; 32]) -> Result<Vec<String>, StoreError> {
        let mut taken: Vec<(i64, String)> =
            sqlx::query_as("DELETE FROM admin_flashes WHERE session_id = $1 RETURNING id, sealed")
                .bind(id.to_vec())
                .fetch_all(self.0)
                .await
                .map_err(backend)?;
        taken.sort_by_key(|(n, _)| *n);
        Ok(taken.into_iter().map(|(_, sealed)| sealed).collect())
    }
}
