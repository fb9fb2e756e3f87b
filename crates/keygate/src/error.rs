//! [`Error`]: what can go wrong when keygate is asked to do something, and its one rendering as
//! an RFC 9457 [`Problem`] — used by the JSON API, the admin UI and anyone serving keygate's
//! answers over HTTP.

use http::StatusCode;
use keygate_core::RecordError;
use keygate_store::StoreError;

use crate::problem::Problem;

/// What can go wrong. Messages never contain a key, a hash or a database password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No key (or endpoint, or user) with that id.
    #[error("no key with that id")]
    NotFound,
    /// A field is not acceptable; the message names it.
    #[error("{field}: {message}")]
    Invalid {
        /// The field as the API spells it (`name`, `scopes`, ...).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The key is revoked already; revocation is final.
    #[error("the key is revoked; revocation is final")]
    AlreadyRevoked,
    /// The key was rotated already: rotate its successor instead.
    #[error("the key was rotated already; rotate its successor instead")]
    AlreadyRotated,
    /// The key has no predecessor in its grace period (nothing to retire).
    #[error("this key has no predecessor in its grace period")]
    NothingToRetire,
    /// A key with that id or hash exists already (a new one is drawn on retry).
    #[error("a key with that id or hash exists already; try again")]
    Duplicate,
    /// The pagination cursor is not one keygate handed out.
    #[error("cursor: not a cursor this API handed out")]
    InvalidCursor,
    /// This deployment is not set up for what was asked (e.g. rotating for the policy without
    /// a sealing key); the message says what is missing.
    #[error("{0}")]
    NotConfigured(String),
    /// The key store could not do `action` (it is unreachable, full, or read-only); `cause` is
    /// for the log, not for callers.
    #[error("could not {action}: the key store is unavailable ({cause})")]
    Unavailable {
        /// What could not be done, e.g. "issue the key".
        action: &'static str,
        /// The database's error.
        cause: String,
    },
    /// Something stored cannot be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl Error {
    /// A store failure while trying to do `action`, as an [`Error`]: `map_err(Error::store("issue the key"))`.
    pub fn store(action: &'static str) -> impl FnOnce(StoreError) -> Error {
        move |e| match e {
            StoreError::NotFound => Error::NotFound,
            StoreError::Duplicate => Error::Duplicate,
            StoreError::Record(r) => r.into(),
            StoreError::InvalidCursor => Error::InvalidCursor,
            StoreError::Config(cause) | StoreError::Backend(cause) => {
                Error::Unavailable { action, cause }
            }
            StoreError::Corrupt(what) => Error::Corrupt(what),
        }
    }

    /// Whether the store could not be asked (as opposed to refusing what was asked).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

impl From<RecordError> for Error {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Field { field, message } => Error::Invalid { field, message },
            RecordError::AlreadyRevoked => Error::AlreadyRevoked,
            RecordError::AlreadyRotated => Error::AlreadyRotated,
        }
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        let conflict = |code, title| Problem::new(StatusCode::CONFLICT, code, title, e.to_string());
        match &e {
            Error::NotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "No such key",
                "no key with that id",
            ),
            Error::Invalid { .. } | Error::InvalidCursor => Problem::bad_request(e.to_string()),
            Error::AlreadyRevoked => conflict("ALREADY_REVOKED", "Key already revoked"),
            Error::AlreadyRotated => conflict("ALREADY_ROTATED", "Key already rotated"),
            Error::NothingToRetire => conflict("NOTHING_TO_RETIRE", "Nothing to retire"),
            Error::Duplicate => conflict("CONFLICT", "Conflict"),
            Error::NotConfigured(_) => {
                tracing::error!(error = %e, "refused: not configured");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "NOT_CONFIGURED",
                    "Not configured",
                    e.to_string(),
                )
            }
            Error::Unavailable { action, .. } => {
                tracing::error!(error = %e, "key store failed");
                Problem::unavailable_to(action)
            }
            Error::Corrupt(_) => {
                tracing::error!(error = %e, "key store returned unreadable data");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "Internal error",
                    "stored data could not be read; see the server log",
                )
            }
        }
    }
}
