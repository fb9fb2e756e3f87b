//! A public API behind keygate.
//!
//! ```sh
//! cargo run -p keygate-server -- keys create --name demo --scope orders:read
//! cargo run -p keygate --example public_api
//! curl -H "Authorization: Api-Key <key>" http://127.0.0.1:3000/api/public/
//! ```
//!
//! `KEYGATE_DATABASE` names the database (default `sqlite://keygate.db`, created on first use)
//! and `KEYGATE_LISTEN` the address (default `127.0.0.1:3000`).
//!
//! - `GET /api/public/` needs any valid key;
//! - `GET /api/orders/` needs a key with the scope `orders:read`.

use axum::{Json, Router, routing::get};
use keygate::{ApiKey, Keygate};
use serde_json::{Value, json};

/// The example's routes, behind `keygate`.
pub fn app(keygate: &Keygate) -> Router {
    let orders = Router::new()
        .route("/api/orders/", get(orders))
        .route_layer(keygate.layer().require_scopes(["orders:read"]));
    Router::new()
        .route("/api/public/", get(public))
        .merge(orders)
        .layer(keygate.layer())
}

async fn public(_key: ApiKey) -> Json<Value> {
    Json(json!({"message": "This is a public API that requires an API key."}))
}

async fn orders(key: ApiKey) -> Json<Value> {
    Json(json!({"key_id": key.id(), "owner": key.owner(), "orders": []}))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[tokio::main]
async fn main() {
    let database =
        std::env::var("KEYGATE_DATABASE").unwrap_or_else(|_| "sqlite://keygate.db".to_owned());
    let listen = std::env::var("KEYGATE_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let store = match keygate::open(&database).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("public_api: cannot open {database}: {e}");
            std::process::exit(2);
        }
    };
    let keygate = Keygate::new(store);
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("public_api: cannot listen on {listen}: {e}");
            std::process::exit(2);
        }
    };
    eprintln!("public_api: listening on http://{listen} (database {database})");
    eprintln!(
        "public_api: make a key with `cargo run -p keygate-server -- keys create --name demo --scope orders:read`"
    );
    let served = axum::serve(listener, app(&keygate))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    if let Err(e) = keygate.flush_usage().await {
        eprintln!("public_api: could not record key usage: {e}");
    }
    if let Err(e) = served {
        eprintln!("public_api: server error: {e}");
        std::process::exit(1);
    }
}
