//! Usage controls as plain arithmetic: rate limits, quotas (credits) and IP allowlists, and the
//! `RateLimit-Policy` / `RateLimit` response headers. No I/O: the counters live in the library
//! (in process or shared through Redis) and quotas in the store; the rules live here.
//!
//! ```
//! use keygate_core::limits::{check, RateLimit, WindowState};
//! use keygate_core::Timestamp;
//!
//! let limits = [RateLimit::parse("3/1m").unwrap()];
//! let mut states = [WindowState::default()];
//! let now = Timestamp::from_unix_ms(1_800_000_000_000).unwrap();
//! for _ in 0..3 {
//!     assert!(check(&mut states, &limits, 1, now).allowed());
//! }
//! let refused = check(&mut states, &limits, 1, now);
//! assert!(!refused.allowed());
//! // The window started at `now`; 60 s on, the 3 still weigh fully, and they weigh at most 2
//! // (room for one more) 20.001 s into the next window.
//! assert_eq!(refused.retry_after(), Some(81));
//! ```
//!
//! # The rate-limit algorithm: a sliding window of two fixed windows, weighted
//!
//! Each limit `limit/window` keeps, per subject, the count of the current fixed window
//! (aligned to multiples of `window` since the epoch) and the count of the one before. A
//! request of cost `c` at `elapsed` ms into the current window is allowed when
//!
//! ```text
//! previous · weight(elapsed) + current + c  ≤  limit,
//! weight(elapsed) = ⌈(window − elapsed) · 2¹⁶ / window⌉ / 2¹⁶
//! ```
//!
//! i.e. the previous window's count is assumed spread evenly and fades out linearly as the
//! current window advances (Cloudflare's "sliding window counter"). Why this and not GCRA:
//!
//! - **Exact at N**: with `limit` N and cost 1, requests 1..=N are allowed and N+1 refused for
//!   the rest of the window — the count never leaks back early. (GCRA with burst N also allows
//!   N at once, then one more every `window/N`: up to ~2N in one window.)
//! - **`remaining` means what a client expects**: how many more unit requests would be allowed
//!   right now; `reset` is when more become available (see [`LimitStatus`]).
//! - **It syncs across nodes**: the state is two *counters*, and counters add. Nodes can
//!   reserve units in a shared counter (Redis `HINCRBY`) and spend them locally; a GCRA state
//!   (one "theoretical arrival time") does not merge that way. The weight is computed here in
//!   steps of 2⁻¹⁶ so that every product stays below 2⁵³: Redis' Lua (which counts in doubles)
//!   decides exactly as this module does given the same weight.
//! - Memory: two counters and a window index per (subject, limit); an entry whose window is two
//!   windows old counts for nothing and can be dropped without changing any decision.
//!
//! Worst case, like every two-counter scheme, a client that spends N at the very end of one
//! window and N at the very end of the next gets close to 2N through inside one sliding
//! window; evenly spread traffic sees the limit as stated.
//!
//! All limits of a request are checked together ([`check`], [`check_groups`]): the request is
//! allowed only if every limit allows it, and a refused request spends nothing anywhere.

mod headers;
mod ip;
mod quota;
mod rate;
pub mod whole;

pub use headers::{ratelimit_header, ratelimit_policy_header, retry_after_header};
pub use ip::{IpAllowlist, IpError, MAX_IP_ENTRIES, MAX_PROXY_HOPS, client_address};
pub use quota::{
    MAX_CREDITS, Quota, QuotaError, Refill, RefillPeriod, can_spend, parse_quota, quota_short_form,
    retry_after_refill,
};
pub use rate::{
    Decision, Group, LimitError, LimitName, LimitScope, LimitStatus, MAX_COST, MAX_COUNT,
    MAX_LIMIT, MAX_LIMITS, MAX_WINDOW_SECS, RateLimit, RateLimits, WEIGHT_SCALE, Window,
    WindowState, check, check_groups,
};

/// An owner's own record: the rate limits all of its keys share (a request with any of them
/// spends the owner's limits as well as the key's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerLimits {
    /// The owner, as keys name it (`owner` on a key).
    pub owner: String,
    /// The shared limits; empty: none.
    pub rate_limits: RateLimits,
    /// When they were last set.
    pub updated_at: crate::Timestamp,
}
