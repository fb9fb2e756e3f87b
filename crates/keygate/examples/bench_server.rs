//! The HTTP benchmark's server: one handler served twice, `/open` with no authentication and
//! `/protected` behind the keygate layer, so that the difference is keygate alone.
//!
//! `KEYGATE_DATABASE` (default `sqlite://keygate.db`) and `KEYGATE_LISTEN` (default
//! `127.0.0.1:3000`). Used by `bench/http.sh`.

use axum::{Json, Router, routing::get};
use keygate::Keygate;
use serde_json::{Value, json};

async fn hello() -> Json<Value> {
    Json(json!({"message": "hello"}))
}

#[tokio::main]
async fn main() {
    let database =
        std::env::var("KEYGATE_DATABASE").unwrap_or_else(|_| "sqlite://keygate.db".to_owned());
    let listen = std::env::var("KEYGATE_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let store = keygate::open(&database).await.expect("open the database");
    let keygate = Keygate::new(store);
    let app = Router::new()
        .route("/protected", get(hello))
        .route_layer(keygate.layer())
        .route("/open", get(hello));
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("listen");
    axum::serve(listener, app).await.expect("serve");
}
