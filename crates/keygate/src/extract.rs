//! axum extractors for the key a [`KeygateLayer`](crate::KeygateLayer) verified.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::StatusCode;
use http::request::Parts;

use crate::key::ApiKey;
use crate::problem::Problem;

/// `ApiKey` as an extractor: the verified key. Using it on a route without a
/// [`KeygateLayer`](crate::KeygateLayer) is a bug, answered with 500.
impl<S: Send + Sync> FromRequestParts<S> for ApiKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<ApiKey>().cloned().ok_or_else(|| {
            tracing::error!("ApiKey extractor used on a route without a KeygateLayer");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "Server misconfigured",
                "this route reads an API key but none was verified",
            )
        })
    }
}

/// `Option<ApiKey>`: the verified key if a layer verified one, else `None`.
impl<S: Send + Sync> OptionalFromRequestParts<S> for ApiKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<ApiKey>().cloned())
    }
}
