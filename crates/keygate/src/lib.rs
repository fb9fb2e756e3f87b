//! keygate: API-key authentication for axum and tower services.
//!
//! Put a [`KeygateLayer`] in front of your routes and take the caller's [`ApiKey`] in handlers:
//!
//! ```no_run
//! use axum::{Json, Router, routing::get};
//! use keygate::{ApiKey, Keygate};
//!
//! async fn orders(key: ApiKey) -> Json<serde_json::Value> {
//!     Json(serde_json::json!({ "owner": key.owner(), "orders": [] }))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let keygate = Keygate::new(keygate::open("sqlite://keygate.db").await?);
//! let app = Router::new()
//!     .route("/api/orders/", get(orders))
//!     .route_layer(keygate.layer().require_scopes(["orders:read"]));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! A request must carry `Authorization: Api-Key <key>` (other [`CredentialSource`]s can be
//! turned on). A refusal is an RFC 9457 `application/problem+json` body with a stable `code`:
//! `MISSING`, `MALFORMED`, `NOT_FOUND`, `REVOKED`, `EXPIRED`, `DISABLED` (401, with
//! `WWW-Authenticate`) or `INSUFFICIENT_SCOPE` (403). No response repeats the presented key.
//!
//! [`Keygate`] also issues, lists, updates, rotates and revokes keys; every rule it applies
//! lives in [`keygate_core`], and every byte it stores goes through the store's roles
//! ([`store`]). Failures are [`Error`]s, rendered once as a [`Problem`]. The verifier
//! ([`Verifier`]) needs only the store's keys role.

pub mod accounts;
pub mod cache;
pub mod credentials;
pub mod email;
mod error;
mod extract;
pub mod import;
mod key;
pub mod layer;
pub mod lifecycle;
pub mod limits;
mod manage;
pub mod problem;
pub mod sealing;
pub mod usage;
mod verify;

/// The maps the per-request path touches (cache, usage counts): foldhash, seeded per process,
/// several times cheaper than std's SipHash for the short keys hashed on every request.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub mod webhooks;

use std::sync::Arc;

pub use cache::{CacheConfig, CacheStats};
pub use credentials::CredentialSource;
pub use error::Error;
pub use key::{ApiKey, CreatedKey, CreditsView, KeyView};
#[cfg(feature = "openapi")]
pub use key::{RateLimitDoc, RefillDoc, SwitchOverDoc};
pub use keygate_core as core;
pub use keygate_core::limits::MAX_COST;
pub use keygate_core::{KeyId, KeyPatch, KeyRecord, KeySpec, Outcome, PlainKey, Prefix};
pub use keygate_store::{
    Attempt, AuditPage, AuditQuery, DEFAULT_PAGE_SIZE, EmailPage, EmailQuery, ListQuery,
    MAX_PAGE_SIZE, Page, StatusCounts, SweepFilter,
};
pub use layer::{Admitted, KeygateLayer, KeygateService};
pub use lifecycle::{Sweep, SweepReport};
pub use manage::{Keygate, KeygateBuilder};
pub use problem::{Problem, ProblemCode};
pub use verify::{Demand, SystemClock, Verification, Verifier, VerifierConfig};

/// The store behind keygate, for programs that implement or wrap one (most programs need only
/// [`open`]): its roles, its SQL implementation and backends, and its errors.
pub mod store {
    pub use keygate_store::{
        AdminAccounts, AuditLog, Backend, Change, EmailOutbox, ImportedKey, ImportedKinds,
        KeyStore, LegacyCredential, MAX_LEGACY_CANDIDATES, RetirePlan, RotationPlan, Spend,
        SqlStore, Store, StoreError, UsageDelta, UsageLog, WebhookOutbox,
    };
    #[cfg(feature = "postgres")]
    pub use keygate_store::{Postgres, PostgresStore};
    #[cfg(feature = "sqlite")]
    pub use keygate_store::{Sqlite, SqliteStore};
}

/// Opens the store a URL names, creating and migrating it as needed: `sqlite://path`,
/// `sqlite:path` or a plain path (SQLite, the default), `sqlite::memory:`, or
/// `postgres://user@host/db` (PostgreSQL, for many nodes).
pub async fn open(url: &str) -> Result<Arc<dyn store::Store>, Error> {
    keygate_store::open(url)
        .await
        .map_err(Error::store("open the database"))
}

impl Keygate {
    /// A [`KeygateLayer`] over this instance's verifier with the defaults:
    /// `Authorization: Api-Key`, no required scope.
    pub fn layer(&self) -> KeygateLayer {
        KeygateLayer::new(self.verifier().clone())
    }
}
