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
//! let keygate = Keygate::new(keygate::store::open("sqlite://keygate.db").await?);
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
//! [`Keygate`] also issues, lists, updates and revokes keys; every rule it applies lives in
//! [`keygate_core`], and every byte it stores goes through a [`store::Store`].

pub mod cache;
pub mod credentials;
mod extract;
pub mod layer;
pub mod lifecycle;
pub mod limits;
pub mod problem;
pub mod sealing;
pub mod verifier;
pub mod webhooks;

pub use cache::{CacheConfig, CacheStats};
pub use credentials::CredentialSource;
pub use keygate_core as core;
pub use keygate_core::{KeyId, KeyPatch, KeyRecord, KeySpec, Outcome, PlainKey, Prefix};
pub use keygate_store as store;
pub use layer::{KeygateLayer, KeygateService};
pub use lifecycle::{Sweep, SweepReport};
pub use problem::{Problem, ProblemCode};
pub use verifier::{ApiKey, Keygate, KeygateBuilder, SystemClock, Verification};

impl Keygate {
    /// A [`KeygateLayer`] over this verifier with the defaults: `Authorization: Api-Key`, no
    /// required scope.
    pub fn layer(&self) -> KeygateLayer {
        KeygateLayer::new(self.clone())
    }
}
