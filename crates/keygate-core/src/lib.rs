//! keygate-core: every rule about an API key, as plain functions over plain data. No I/O, no
//! async; the only thing it asks the OS for is randomness when generating keys and ids.
//!
//! ```
//! use keygate_core::{decide, issue, parse, KeyGrant, KeySpec, Outcome, Prefix, Timestamp};
//!
//! let now = Timestamp::from_unix_ms(1_800_000_000_000).unwrap();
//! let spec = KeySpec { name: "billing".into(), scopes: vec!["orders:*".into()], ..KeySpec::default() };
//! let (record, key) = issue(spec, &Prefix::default(), now).unwrap();
//!
//! // The holder presents the key; the verifier parses it and looks the record up by hash.
//! let parsed = parse(key.expose()).unwrap();
//! assert_eq!(parsed.hash(), record.hash);
//! let grant = KeyGrant::from(record);
//! assert_eq!(decide(&grant, now, &["orders:read"]), Outcome::Valid);
//! assert_eq!(decide(&grant, now, &["users:read"]), Outcome::InsufficientScope);
//! ```

pub mod audit;
pub mod email;
pub mod format;
pub mod grant;
pub mod id;
pub mod legacy;
pub mod limits;
pub mod outcome;
pub mod patterns;
pub mod policy;
pub mod record;
pub mod scope;
pub mod switch;
pub mod time;
pub mod usage;
pub mod webhook;

pub use audit::{Actor, Audit, AuditEvent, EventKind};
pub use format::{
    KeyHash, ParseError, ParsedKey, PlainKey, Prefix, generate, parse, parse_with_prefix,
};
pub use grant::KeyGrant;
pub use id::KeyId;
pub use outcome::{Outcome, decide, lacks_scope};
pub use record::{
    DEFAULT_GRACE, Expiry, KeyLimits, KeyPatch, KeyRecord, KeySpec, RecordError, Status, issue,
    plan_rotation,
};
pub use time::{Clock, FixedClock, Lifetime, TimeError, Timestamp, parse_grace};
