//! Rate limits (`100/1m`), their sliding-window state, and the check of all of a request's
//! limits together. The algorithm and why are in the [module docs](super).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::{Lifetime, Timestamp};

/// Most rate limits one subject (a key or an owner) may have.
pub const MAX_LIMITS: usize = 8;
/// Largest `limit` of a rate limit.
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// Largest cost of one request (a cost above a limit is refused by that limit every time).
pub const MAX_COST: u64 = MAX_LIMIT;
/// The previous window's weight is counted in steps of `1 / WEIGHT_SCALE`.
pub const WEIGHT_SCALE: u64 = 1 << 16;
/// Counters saturate here (2³⁶), so that `count · WEIGHT_SCALE` stays below 2⁵³.
pub const MAX_COUNT: u64 = 1 << 36;
/// Shortest window: one second (the headers count in whole seconds).
const MIN_WINDOW_SECS: u32 = 1;
/// Longest window, in seconds (31 days).
pub const MAX_WINDOW_SECS: u32 = 31 * 86_400;
/// Longest limit name.
const MAX_NAME_LEN: usize = 32;

/// Why a rate limit (or a list of them) was not accepted. Messages never echo the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// Not `[NAME=]LIMIT/WINDOW`.
    Syntax,
    /// The name is not 1–32 of `a-z`, `0-9`, `_`, `-`.
    Name,
    /// The limit is not a whole number from 1 to 10⁹.
    Limit,
    /// The window is not a whole number of `s`, `m`, `h`, `d` or `w` from 1 s to 31 days.
    Window,
    /// More than [`MAX_LIMITS`] limits for one subject.
    TooMany,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax => f.write_str("expected a rate limit such as 100/1m or burst=20/1s"),
            Self::Name => f.write_str("a limit name is 1-32 characters of a-z, 0-9, _ and -"),
            Self::Limit => f.write_str("a limit is a whole number from 1 to 1000000000"),
            Self::Window => f.write_str(
                "a window is a whole number and a unit (s, m, h, d, w), from 1s to 31d, such as 1m",
            ),
            Self::TooMany => write!(f, "at most {MAX_LIMITS} rate limits per key or owner"),
        }
    }
}

impl std::error::Error for LimitError {}

/// A limit's name: 1–32 of `a-z`, `0-9`, `_`, `-`. Stored inline (no allocation, `Copy`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LimitName {
    bytes: [u8; MAX_NAME_LEN],
    len: u8,
}

impl LimitName {
    /// Checks and takes `text`.
    pub fn new(text: &str) -> Result<Self, LimitError> {
        let ok = (1..=MAX_NAME_LEN).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(LimitError::Name);
        }
        let mut bytes = [0; MAX_NAME_LEN];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ok(Self {
            bytes,
            len: text.len() as u8,
        })
    }

    /// The default name of a limit over `window`: `per_1m`, `per_1h`, `per_30s`.
    pub fn for_window(window: Window) -> Self {
        Self::new(&format!("per_{window}")).expect("per_ and a window's text is a valid name")
    }

    /// `<name>_<n>`, the name cut to fit.
    fn with_suffix(self, n: usize) -> Self {
        let suffix = format!("_{n}");
        let keep = usize::from(self.len).min(MAX_NAME_LEN - suffix.len());
        Self::new(&format!("{}{suffix}", &self.as_str()[..keep])).expect("a valid name")
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("checked ASCII")
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The length of a rate limit's window: whole seconds from 1 s to 31 days, written like a
/// [`Lifetime`] (`30s`, `1m`, `1h`, `1d`, `1w`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window(u32);

impl Window {
    /// From seconds (1 s to 31 days).
    pub fn from_secs(secs: u32) -> Result<Self, LimitError> {
        if (MIN_WINDOW_SECS..=MAX_WINDOW_SECS).contains(&secs) {
            Ok(Self(secs))
        } else {
            Err(LimitError::Window)
        }
    }

    /// Parses `<n><unit>` with unit `s`, `m`, `h`, `d` or `w` (no spaces around it, no
    /// leading zeros).
    pub fn parse(text: &str) -> Result<Self, LimitError> {
        if text.trim() != text || text.starts_with('0') {
            return Err(LimitError::Window);
        }
        let ms = Lifetime::parse(text)
            .map_err(|_| LimitError::Window)?
            .as_ms();
        u32::try_from(ms / 1000)
            .map_err(|_| LimitError::Window)
            .and_then(Self::from_secs)
    }

    /// Seconds.
    pub fn as_secs(self) -> u32 {
        self.0
    }

    /// Milliseconds.
    pub fn as_ms(self) -> u64 {
        u64::from(self.0) * 1000
    }

    /// The index of the fixed window that holds `now` (windows are aligned to the epoch).
    pub fn index(self, now: Timestamp) -> i64 {
        now.unix_ms().div_euclid(self.as_ms() as i64)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lifetime = Lifetime::from_ms(i64::from(self.0) * 1000).expect("at most 31 days");
        fmt::Display::fmt(&lifetime, f)
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One rate limit: at most `limit` units (requests of cost 1) per `window`, under a `name`
/// that the response headers use. Written `100/1m`, or `burst=20/1s` with a name; without one
/// the name comes from the window (`per_1m`). In JSON: `{"name":"per_1m","limit":100,
/// "window":"1m"}` (`name` optional on input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Name, unique among one subject's limits.
    pub name: LimitName,
    /// Units allowed per window, 1 to 10⁹.
    pub limit: u64,
    /// The window.
    pub window: Window,
}

impl RateLimit {
    /// A limit named after its window.
    pub fn new(limit: u64, window: Window) -> Result<Self, LimitError> {
        Self::named(LimitName::for_window(window), limit, window)
    }

    /// A limit with a name.
    pub fn named(name: LimitName, limit: u64, window: Window) -> Result<Self, LimitError> {
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(LimitError::Limit);
        }
        Ok(Self {
            name,
            limit,
            window,
        })
    }

    /// Parses `[NAME=]LIMIT/WINDOW`, e.g. `100/1m`, `5000/1h`, `burst=20/1s`.
    pub fn parse(text: &str) -> Result<Self, LimitError> {
        let text = text.trim();
        let (name, rest) = match text.split_once('=') {
            Some((name, rest)) => (Some(LimitName::new(name)?), rest),
            None => (None, text),
        };
        let (limit, window) = rest.split_once('/').ok_or(LimitError::Syntax)?;
        if limit.is_empty() || limit.len() > 10 || !limit.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LimitError::Limit);
        }
        let limit: u64 = limit.parse().map_err(|_| LimitError::Limit)?;
        let window = Window::parse(window)?;
        Self::named(
            name.unwrap_or_else(|| LimitName::for_window(window)),
            limit,
            window,
        )
    }
}

/// `100/1m` when the name is the window's default, `burst=20/1s` otherwise; parses back.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name != LimitName::for_window(self.window) {
            write!(f, "{}=", self.name)?;
        }
        write!(f, "{}/{}", self.limit, self.window)
    }
}

impl std::str::FromStr for RateLimit {
    type Err = LimitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("RateLimit", 3)?;
        out.serialize_field("name", self.name.as_str())?;
        out.serialize_field("limit", &self.limit)?;
        out.serialize_field("window", &self.window)?;
        out.end()
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire<'a> {
            #[serde(borrow)]
            name: Option<std::borrow::Cow<'a, str>>,
            #[serde(deserialize_with = "super::whole::u64")]
            limit: u64,
            window: Window,
        }
        let wire = Wire::deserialize(d)?;
        let name = match wire.name {
            Some(name) => LimitName::new(&name).map_err(serde::de::Error::custom)?,
            None => LimitName::for_window(wire.window),
        };
        Self::named(name, wire.limit, wire.window).map_err(serde::de::Error::custom)
    }
}

/// The rate limits of one subject: at most [`MAX_LIMITS`], names unique. JSON: an array of
/// [`RateLimit`]s; text: a comma-separated list (`100/1m, 5000/1h`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RateLimits(Vec<RateLimit>);

impl RateLimits {
    /// No rate limits.
    pub const NONE: Self = Self(Vec::new());

    /// Checks the count and makes names unique: a limit whose name an earlier one already
    /// has is named `<name>_2` (`_3`, ...), so that each limit has its own counters and
    /// headers (two limits over one window need no names). The JSON Schema of the API cannot
    /// state "names unique", so the API does not refuse a repeated name: it renames it, and
    /// shows the names it kept.
    pub fn new(mut limits: Vec<RateLimit>) -> Result<Self, LimitError> {
        if limits.len() > MAX_LIMITS {
            return Err(LimitError::TooMany);
        }
        for i in 0..limits.len() {
            let (earlier, rest) = limits.split_at_mut(i);
            let a = &mut rest[0];
            if !earlier.iter().any(|b| b.name == a.name) {
                continue;
            }
            let base = a.name;
            a.name = (2..=MAX_LIMITS + 1)
                .map(|n| base.with_suffix(n))
                .find(|name| !earlier.iter().any(|b| b.name == *name))
                .expect("at most MAX_LIMITS limits leave a free suffix");
        }
        Ok(Self(limits))
    }

    /// Parses a comma-separated list; empty text is no limits.
    pub fn parse(text: &str) -> Result<Self, LimitError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        if text.split(',').count() > MAX_LIMITS {
            return Err(LimitError::TooMany);
        }
        Self::new(
            text.split(',')
                .map(RateLimit::parse)
                .collect::<Result<_, _>>()?,
        )
    }

    /// The limits.
    pub fn as_slice(&self) -> &[RateLimit] {
        &self.0
    }
}

impl std::ops::Deref for RateLimits {
    type Target = [RateLimit];
    fn deref(&self) -> &[RateLimit] {
        &self.0
    }
}

impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, limit) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{limit}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RateLimits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RateLimits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {MAX_LIMITS} rate limits")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RateLimits, A::Error> {
                let mut limits = Vec::new();
                while let Some(limit) = seq.next_element()? {
                    if limits.len() == MAX_LIMITS {
                        return Err(serde::de::Error::custom(LimitError::TooMany));
                    }
                    limits.push(limit);
                }
                RateLimits::new(limits).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// Whose limit this is: the key's own, or its owner's (shared by all the owner's keys). The
/// headers name an owner's limit `owner:<name>` so that it cannot collide with a key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// The key's own limits.
    Key,
    /// The owner's limits, shared by all of its keys.
    Owner,
}

impl LimitScope {
    /// `key` or `owner`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Owner => "owner",
        }
    }
}

/// The counters of one (subject, limit): the index of the current fixed window, its count, and
/// the count of the window before. `Default` is "nothing counted".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct WindowState {
    /// Index of the fixed window `current` counts ([`Window::index`]).
    pub window: i64,
    /// Units counted in that window.
    pub current: u64,
    /// Units counted in the window before it.
    pub previous: u64,
}

impl WindowState {
    /// The state as seen at `now`: after one window the current count becomes the previous
    /// one; after two, nothing is left. A clock that went backwards leaves the state as it is
    /// (and [`elapsed`](Self::elapsed) counts from the window's start: the strictest view).
    pub fn rolled(self, window: Window, now: Timestamp) -> Self {
        let w = window.as_ms() as i64;
        let start = self.window.saturating_mul(w);
        if (start..start.saturating_add(w)).contains(&now.unix_ms()) {
            return self; // still this window (the common case: no division)
        }
        let index = window.index(now);
        match index - self.window {
            d if d <= 0 => self,
            1 => Self {
                window: index,
                current: 0,
                previous: self.current,
            },
            _ => Self {
                window: index,
                current: 0,
                previous: 0,
            },
        }
    }

    /// Whether nothing counted here still matters at `now` (two or more windows old): such a
    /// state can be dropped without changing any decision.
    pub fn is_idle(&self, window: Window, now: Timestamp) -> bool {
        window.index(now) - self.window >= 2 || (self.current == 0 && self.previous == 0)
    }

    /// Milliseconds from the start of this state's window to `now`, within `0..window`.
    pub fn elapsed(&self, window: Window, now: Timestamp) -> u64 {
        let w = window.as_ms() as i64;
        (now.unix_ms() - self.window * w).clamp(0, w - 1) as u64
    }

    /// The weight of the previous window's count at `now`, in `1..=WEIGHT_SCALE` steps of
    /// `1/WEIGHT_SCALE`, rounded up (the stricter way).
    pub fn previous_weight(&self, window: Window, now: Timestamp) -> u64 {
        weight(window, self.elapsed(window, now))
    }

    /// Units used `elapsed` ms into the window, scaled by `WEIGHT_SCALE`.
    fn used(&self, window: Window, elapsed: u64) -> u64 {
        let previous = match self.previous.min(MAX_COUNT) {
            0 => 0, // no weight to compute
            p => p * weight(window, elapsed),
        };
        previous + self.current.min(MAX_COUNT) * WEIGHT_SCALE
    }

    /// Whether `cost` more units fit under `limit` at `now` (the state already rolled to now).
    pub fn fits(&self, limit: &RateLimit, cost: u64, now: Timestamp) -> bool {
        let used = self.used(limit.window, self.elapsed(limit.window, now));
        cost <= MAX_COUNT && used + cost * WEIGHT_SCALE <= limit.limit * WEIGHT_SCALE
    }

    /// Counts `cost` units (saturating at [`MAX_COUNT`]).
    pub fn spend(&mut self, cost: u64) {
        self.current = self.current.saturating_add(cost).min(MAX_COUNT);
    }

    /// The status of `limit` at `now` (the state already rolled to now). `refused_cost` is the
    /// cost this limit refused, if it did: then the status says when it would fit.
    pub fn status(
        &self,
        scope: LimitScope,
        limit: &RateLimit,
        now: Timestamp,
        refused_cost: Option<u64>,
    ) -> LimitStatus {
        let elapsed = self.elapsed(limit.window, now);
        let cap = limit.limit * WEIGHT_SCALE;
        let remaining = cap.saturating_sub(self.used(limit.window, elapsed)) / WEIGHT_SCALE;
        let reset = if remaining >= limit.limit {
            0
        } else {
            self.wait_ms(limit, elapsed, remaining + 1)
                .map_or(0, |ms| ms.div_ceil(1000))
        };
        let retry_after = refused_cost.map(|cost| {
            self.wait_ms(limit, elapsed, cost)
                .unwrap_or(limit.window.as_ms())
                .div_ceil(1000)
                .max(1)
        });
        LimitStatus {
            scope,
            name: limit.name,
            limit: limit.limit,
            window: limit.window,
            remaining,
            reset,
            retry_after,
        }
    }

    /// Milliseconds from `elapsed` (into the current window) until `units` are free, with no
    /// further spending; `None` if they never are (`units > limit`).
    fn wait_ms(&self, limit: &RateLimit, elapsed: u64, units: u64) -> Option<u64> {
        if units > limit.limit {
            return None;
        }
        let w = limit.window.as_ms();
        let budget = (limit.limit - units) * WEIGHT_SCALE;
        let (previous, current) = (self.previous.min(MAX_COUNT), self.current.min(MAX_COUNT));
        // Still in this window: previous · weight(e) ≤ budget − current·S, and
        // weight(e) ≤ m  ⇔  e ≥ w − ⌊m·w / S⌋.
        if let Some(room) = budget.checked_sub(current * WEIGHT_SCALE) {
            let max_weight = room.checked_div(previous).unwrap_or(WEIGHT_SCALE);
            if max_weight >= WEIGHT_SCALE {
                return Some(0);
            }
            let at = w - max_weight * w / WEIGHT_SCALE;
            if at < w {
                return Some(at.saturating_sub(elapsed));
            }
        }
        // In the next window, the current count becomes the previous one and fades.
        let max_weight = budget.checked_div(current).unwrap_or(WEIGHT_SCALE);
        let at = if max_weight >= WEIGHT_SCALE {
            0
        } else {
            w - max_weight * w / WEIGHT_SCALE
        };
        Some(w - elapsed + at)
    }
}

/// The previous window's weight `elapsed` ms into the current one, in steps of
/// `1/WEIGHT_SCALE`, rounded up.
fn weight(window: Window, elapsed: u64) -> u64 {
    let w = window.as_ms();
    (w - elapsed.min(w))
        .saturating_mul(WEIGHT_SCALE)
        .div_ceil(w)
}

/// One limit's part of a [`Decision`]: the numbers for the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// Whose limit.
    pub scope: LimitScope,
    /// The limit's name.
    pub name: LimitName,
    /// Units per window.
    pub limit: u64,
    /// The window.
    pub window: Window,
    /// Unit-cost requests that would be allowed right now (after this request, if allowed).
    pub remaining: u64,
    /// Seconds until more units become available (`0` when none are used).
    pub reset: u64,
    /// When this limit refused the request: seconds (≥ 1) until the request's cost would fit,
    /// with no other traffic. For a cost above the limit, which never fits: the window.
    pub retry_after: Option<u64>,
}

/// The answer to "may this request go through", over all its limits.
#[derive(Debug, Clone)]
pub struct Decision {
    allowed: bool,
    limits: Statuses,
}

/// Statuses kept inline up to this many (a key's limit and its owner's, or a key's two), so that a
/// check allocates nothing; more go to the heap.
const INLINE: usize = 2;

/// A status in an unused inline slot; never shown.
const UNUSED: LimitStatus = LimitStatus {
    scope: LimitScope::Key,
    name: LimitName {
        bytes: [0; MAX_NAME_LEN],
        len: 0,
    },
    limit: 0,
    window: Window(1),
    remaining: 0,
    reset: 0,
    retry_after: None,
};

#[derive(Debug, Clone)]
enum Statuses {
    Inline(usize, [LimitStatus; INLINE]),
    Heap(Vec<LimitStatus>),
}

impl Statuses {
    fn with_capacity(n: usize) -> Self {
        if n <= INLINE {
            Self::Inline(0, [UNUSED; INLINE])
        } else {
            Self::Heap(Vec::with_capacity(n))
        }
    }

    fn push(&mut self, status: LimitStatus) {
        match self {
            Self::Inline(len, items) if *len < INLINE => {
                items[*len] = status;
                *len += 1;
            }
            Self::Inline(_, items) => {
                let mut spilled = items.to_vec();
                spilled.push(status);
                *self = Self::Heap(spilled);
            }
            Self::Heap(v) => v.push(status),
        }
    }

    fn as_slice(&self) -> &[LimitStatus] {
        match self {
            Self::Inline(len, items) => &items[..*len],
            Self::Heap(v) => v,
        }
    }
}

impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.allowed == other.allowed && self.limits() == other.limits()
    }
}

impl Eq for Decision {}

impl Decision {
    /// A decision from its parts: allowed only if no limit refused.
    pub fn new(limits: Vec<LimitStatus>) -> Self {
        Self {
            allowed: limits.iter().all(|l| l.retry_after.is_none()),
            limits: Statuses::Heap(limits),
        }
    }

    /// A decision to [`push`](Self::push) `n` statuses into: allowed until one of them
    /// refused. Up to two statuses need no allocation.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            allowed: true,
            limits: Statuses::with_capacity(n),
        }
    }

    /// Adds a limit's status.
    pub fn push(&mut self, status: LimitStatus) {
        self.allowed &= status.retry_after.is_none();
        self.limits.push(status);
    }

    /// Allowed, with no limits to report (a subject without rate limits).
    pub fn unlimited() -> Self {
        Self {
            allowed: true,
            limits: Statuses::Inline(0, [UNUSED; INLINE]),
        }
    }

    /// Whether the request may go through (and has been counted).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Each limit's status, in the order the limits were given.
    pub fn limits(&self) -> &[LimitStatus] {
        self.limits.as_slice()
    }

    /// When refused: seconds until every refusing limit would let the request through.
    pub fn retry_after(&self) -> Option<u64> {
        self.limits().iter().filter_map(|l| l.retry_after).max()
    }
}

/// One subject's limits and their states (aligned: `states[i]` counts `limits[i]`), for
/// [`check_groups`].
#[derive(Debug)]
pub struct Group<'a> {
    /// Whose limits.
    pub scope: LimitScope,
    /// The limits.
    pub limits: &'a [RateLimit],
    /// Their states, as many as limits.
    pub states: &'a mut [WindowState],
}

/// Checks one subject's `limits` (their `states` aligned with them) for a request of `cost` at
/// `now`; see [`check_groups`].
pub fn check(
    states: &mut [WindowState],
    limits: &[RateLimit],
    cost: u64,
    now: Timestamp,
) -> Decision {
    check_groups(
        &mut [Group {
            scope: LimitScope::Key,
            limits,
            states,
        }],
        cost,
        now,
    )
}

/// Checks every limit of every group (e.g. the key's and its owner's) for a request of `cost`
/// at `now`. Allowed only if every limit allows it; then every state counts `cost`. Refused,
/// no state counts anything (they are only rolled forward to `now`, which changes no
/// decision). A cost of 0 is always allowed and counts nothing.
///
/// # Panics
/// If a group has fewer states than limits.
pub fn check_groups(groups: &mut [Group<'_>], cost: u64, now: Timestamp) -> Decision {
    let mut allowed = true;
    for group in groups.iter_mut() {
        assert!(
            group.states.len() >= group.limits.len(),
            "a state per limit"
        );
        for (state, limit) in group.states.iter_mut().zip(group.limits) {
            *state = state.rolled(limit.window, now);
            allowed &= state.fits(limit, cost, now);
        }
    }
    let mut statuses = Statuses::with_capacity(groups.iter().map(|g| g.limits.len()).sum());
    for group in groups.iter_mut() {
        for (state, limit) in group.states.iter_mut().zip(group.limits) {
            let refused = (!allowed && !state.fits(limit, cost, now)).then_some(cost);
            if allowed {
                state.spend(cost);
            }
            statuses.push(state.status(group.scope, limit, now, refused));
        }
    }
    Decision {
        allowed,
        limits: statuses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_800_000_000_000; // a multiple of every window used below

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(T0 + ms).unwrap()
    }

    fn limit(text: &str) -> RateLimit {
        RateLimit::parse(text).unwrap()
    }

    #[test]
    fn parses_and_prints_limits() {
        let l = limit("100/1m");
        assert_eq!(
            (l.name.as_str(), l.limit, l.window.as_secs()),
            ("per_1m", 100, 60)
        );
        assert_eq!(l.to_string(), "100/1m");
        let l = limit(" burst=20/1s ");
        assert_eq!(
            (l.name.as_str(), l.limit, l.window.as_secs()),
            ("burst", 20, 1)
        );
        assert_eq!(l.to_string(), "burst=20/1s");
        assert_eq!(limit("5000/1h").name.as_str(), "per_1h");
        assert_eq!(limit("7/60s").to_string(), "7/1m");
        assert_eq!(limit("7/60s").name.as_str(), "per_1m");
        assert_eq!(limit("1/31d").window.as_secs(), 31 * 86_400);
        assert_eq!(limit("1000000000/1w").limit, MAX_LIMIT);
        for text in [
            "100/1m",
            "burst=20/1s",
            "5000/1h",
            "hourly=1/2w",
            "a-b_9=3/45s",
        ] {
            assert_eq!(limit(text).to_string(), text);
            assert_eq!(limit(&limit(text).to_string()), limit(text));
        }
    }

    #[test]
    fn rejects_bad_limits_and_says_which_part() {
        for (text, error) in [
            ("", LimitError::Syntax),
            ("100", LimitError::Syntax),
            ("100 per minute", LimitError::Syntax),
            ("0/1m", LimitError::Limit),
            ("-1/1m", LimitError::Limit),
            ("1000000001/1m", LimitError::Limit),
            ("99999999999/1m", LimitError::Limit),
            ("1e3/1m", LimitError::Limit),
            ("/1m", LimitError::Limit),
            ("100/", LimitError::Window),
            ("100/0s", LimitError::Window),
            ("100/1ms", LimitError::Window),
            ("100/32d", LimitError::Window),
            ("100/5w", LimitError::Window),
            ("100/1y", LimitError::Window),
            ("100/1.5m", LimitError::Window),
            ("Burst=1/1s", LimitError::Name),
            ("=1/1s", LimitError::Name),
            ("a b=1/1s", LimitError::Name),
            ("abcdefghijklmnopqrstuvwxyz0123456=1/1s", LimitError::Name),
            ("é=1/1s", LimitError::Name),
        ] {
            assert_eq!(RateLimit::parse(text), Err(error), "{text:?}");
        }
        assert!(LimitName::new("abcdefghijklmnopqrstuvwxyz012345").is_ok());
    }

    #[test]
    fn limits_in_json() {
        let l = limit("burst=20/1s");
        let json = serde_json::to_value(l).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "burst", "limit": 20, "window": "1s"})
        );
        assert_eq!(serde_json::from_value::<RateLimit>(json).unwrap(), l);
        let unnamed: RateLimit = serde_json::from_str(r#"{"limit": 100, "window": "1m"}"#).unwrap();
        assert_eq!(unnamed, limit("100/1m"));
        for bad in [
            r#"{"limit": 0, "window": "1m"}"#,
            r#"{"limit": 1, "window": "1ms"}"#,
            r#"{"limit": 1, "window": 60}"#,
            r#"{"limit": 1, "window": "1m", "name": "A"}"#,
            r#"{"limit": 1, "window": "1m", "burst": 2}"#,
            r#"{"limit": -1, "window": "1m"}"#,
        ] {
            assert!(serde_json::from_str::<RateLimit>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limit_lists() {
        let limits = RateLimits::parse("100/1m, 5000/1h,burst=5/1s").unwrap();
        assert_eq!(limits.len(), 3);
        assert_eq!(limits.to_string(), "100/1m, 5000/1h, burst=5/1s");
        assert_eq!(RateLimits::parse("").unwrap(), RateLimits::default());
        // Two limits over one window need no names...
        let same_window = RateLimits::parse("100/1m, 200/60s, 300/1m").unwrap();
        let names: Vec<&str> = same_window.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["per_1m", "per_1m_2", "per_1m_3"]);
        assert_eq!(
            RateLimits::parse(&same_window.to_string()).unwrap(),
            same_window
        );
        // ...and a name given twice is kept apart the same way.
        let named = RateLimits::parse("a=1/1m, a=2/1h, a_2=3/1d").unwrap();
        let names: Vec<&str> = named.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "a_2", "a_2_2"]);
        let long = "x".repeat(32);
        let cut = RateLimits::parse(&format!("{long}=1/1m, {long}=2/1h")).unwrap();
        assert_eq!(cut[1].name.as_str(), format!("{}_2", "x".repeat(30)));
        assert!(RateLimits::parse("a=1/1m, b=2/1m").is_ok());
        let nine = (1..=9)
            .map(|i| format!("{i}/{i}s"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(RateLimits::parse(&nine), Err(LimitError::TooMany));
        let json = serde_json::to_string(&limits).unwrap();
        assert_eq!(serde_json::from_str::<RateLimits>(&json).unwrap(), limits);
        let nine_json = serde_json::to_string(
            &(1..=9)
                .map(|i| limit(&format!("{i}/{i}s")))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(serde_json::from_str::<RateLimits>(&nine_json).is_err());
        let same = r#"[{"limit":1,"window":"1m"},{"limit":2,"window":"60s"}]"#;
        let same = serde_json::from_str::<RateLimits>(same).unwrap();
        assert_eq!(same[1].name.as_str(), "per_1m_2");
        let dup = r#"[{"name":"a","limit":1,"window":"1m"},{"name":"a","limit":2,"window":"1h"}]"#;
        assert_eq!(
            serde_json::from_str::<RateLimits>(dup).unwrap()[1]
                .name
                .as_str(),
            "a_2"
        );
    }

    #[test]
    fn exact_at_n_then_refused_for_the_rest_of_the_window() {
        let limits = [limit("100/1m")];
        let mut states = [WindowState::default()];
        for i in 1..=100u64 {
            let d = check(&mut states, &limits, 1, at(i as i64 * 10));
            assert!(d.allowed(), "request {i}");
            assert_eq!(d.limits()[0].remaining, 100 - i);
        }
        for ms in [1_000, 30_000, 59_999] {
            let d = check(&mut states, &limits, 1, at(ms));
            assert!(!d.allowed(), "at {ms} ms");
            assert_eq!(d.limits()[0].remaining, 0);
        }
        assert_eq!(states[0].current, 100, "refusals count nothing");
    }

    #[test]
    fn the_window_rolls_over_by_the_clock() {
        let limits = [limit("10/1m")];
        let mut states = [WindowState::default()];
        for _ in 0..10 {
            assert!(check(&mut states, &limits, 1, at(0)).allowed());
        }
        let refused = check(&mut states, &limits, 1, at(0));
        // Free again once the 10 weigh at most 9: weight ≤ 0.9, 6 s into the next window (and
        // 1 ms, as the weight is rounded up to 2⁻¹⁶); 67 s in whole seconds.
        assert_eq!(refused.retry_after(), Some(67));
        assert!(!check(&mut states, &limits, 1, at(66_000)).allowed());
        let d = check(&mut states, &limits, 1, at(66_001));
        assert!(d.allowed());
        assert_eq!(d.limits()[0].remaining, 0);
        // Half-way through the next window, half of the previous count has faded.
        let mut states = [WindowState::default()];
        for _ in 0..10 {
            assert!(check(&mut states, &limits, 1, at(0)).allowed());
        }
        let d = check(&mut states, &limits, 0, at(90_000));
        assert_eq!(d.limits()[0].remaining, 5);
        // Two windows later nothing is left.
        let d = check(&mut states, &limits, 1, at(120_000));
        assert!(d.allowed());
        assert_eq!(d.limits()[0].remaining, 9);
        assert!(states[0].is_idle(limits[0].window, at(240_000)));
        assert!(!states[0].is_idle(limits[0].window, at(239_999)));
    }

    #[test]
    fn costs_count_and_a_refusal_spends_nothing() {
        let limits = [limit("10/1m")];
        let mut states = [WindowState::default()];
        assert!(check(&mut states, &limits, 4, at(0)).allowed());
        assert!(check(&mut states, &limits, 6, at(0)).allowed());
        let d = check(&mut states, &limits, 1, at(0));
        assert!(!d.allowed());
        let mut states = [WindowState::default()];
        assert!(check(&mut states, &limits, 7, at(0)).allowed());
        let d = check(&mut states, &limits, 4, at(0));
        assert!(!d.allowed());
        assert_eq!(d.limits()[0].remaining, 3);
        assert!(check(&mut states, &limits, 3, at(0)).allowed());
        // Cost 0 asks without spending; a cost above the limit never fits.
        let d = check(&mut states, &limits, 0, at(0));
        assert!(d.allowed());
        assert_eq!(states[0].current, 10);
        let mut fresh = [WindowState::default()];
        let d = check(&mut fresh, &limits, 11, at(0));
        assert!(!d.allowed());
        assert_eq!(d.retry_after(), Some(60));
        assert_eq!(fresh[0].current, 0);
    }

    #[test]
    fn all_limits_together_and_the_stricter_one_decides() {
        let limits = [limit("burst=3/1s"), limit("5/1m")];
        let mut states = [WindowState::default(); 2];
        for _ in 0..3 {
            assert!(check(&mut states, &limits, 1, at(0)).allowed());
        }
        let d = check(&mut states, &limits, 1, at(500));
        assert!(!d.allowed());
        assert_eq!(d.limits()[0].retry_after, Some(1));
        assert_eq!(d.limits()[1].retry_after, None);
        assert_eq!(d.limits()[1].remaining, 2);
        assert_eq!(
            states[1].current, 3,
            "the minute limit counted nothing for the refusal"
        );
        // Burst limit free again 1.x s later; the minute limit then refuses after 5.
        assert!(check(&mut states, &limits, 1, at(1_999)).allowed());
        assert!(check(&mut states, &limits, 1, at(3_000)).allowed());
        let d = check(&mut states, &limits, 1, at(5_000));
        assert!(!d.allowed());
        assert_eq!(d.limits()[0].retry_after, None);
        assert_eq!(d.retry_after(), d.limits()[1].retry_after);
        // 55 s to the window's end, then 12.001 s until the 5 weigh at most 4.
        assert_eq!(d.retry_after(), Some(68));
    }

    #[test]
    fn groups_share_an_owner_limit() {
        let key_limits = [limit("10/1m")];
        let owner_limits = [limit("15/1m")];
        let mut a = [WindowState::default()];
        let mut b = [WindowState::default()];
        let mut owner = [WindowState::default()];
        let request = |key: &mut [WindowState], owner: &mut [WindowState]| {
            check_groups(
                &mut [
                    Group {
                        scope: LimitScope::Key,
                        limits: &key_limits,
                        states: key,
                    },
                    Group {
                        scope: LimitScope::Owner,
                        limits: &owner_limits,
                        states: owner,
                    },
                ],
                1,
                at(0),
            )
        };
        for _ in 0..10 {
            assert!(request(&mut a, &mut owner).allowed());
        }
        let d = request(&mut a, &mut owner);
        assert!(!d.allowed());
        assert_eq!(d.limits()[1].scope, LimitScope::Owner);
        assert_eq!(d.limits()[1].remaining, 5);
        for _ in 0..5 {
            assert!(request(&mut b, &mut owner).allowed());
        }
        let d = request(&mut b, &mut owner);
        assert!(!d.allowed());
        assert_eq!(
            d.limits()[0].remaining,
            5,
            "key b has room, the owner has none"
        );
        assert_eq!(d.limits()[0].retry_after, None);
        assert!(d.limits()[1].retry_after.is_some());
        assert_eq!((a[0].current, b[0].current, owner[0].current), (10, 5, 15));
    }

    #[test]
    fn reset_is_when_more_becomes_available() {
        let limits = [limit("10/1m")];
        let mut states = [WindowState::default()];
        let d = check(&mut states, &limits, 0, at(0));
        assert_eq!((d.limits()[0].remaining, d.limits()[0].reset), (10, 0));
        let d = check(&mut states, &limits, 3, at(15_000));
        // Nothing fades within this window, and at its end the 3 still weigh fully: one more
        // unit comes once they weigh at most 2, 20.001 s into the next window.
        assert_eq!((d.limits()[0].remaining, d.limits()[0].reset), (7, 66));
        let d = check(&mut states, &limits, 0, at(60_000 + 20_000));
        // 3 · weight(20 s) = 2.0001 → 7 left, 8 once the 3 weigh ≤ 2 (at 20 s + a bit).
        assert_eq!(d.limits()[0].remaining, 7);
        assert_eq!(d.limits()[0].reset, 1);
    }

    #[test]
    fn a_clock_going_backwards_is_the_strictest_view() {
        let limits = [limit("10/1m")];
        let mut states = [WindowState::default()];
        for _ in 0..10 {
            assert!(check(&mut states, &limits, 1, at(60_000)).allowed());
        }
        assert!(!check(&mut states, &limits, 1, at(0)).allowed());
        assert_eq!(
            states[0].window,
            Window::from_secs(60).unwrap().index(at(60_000))
        );
    }

    /// Brute force: the smallest whole second from which a request of `cost` fits.
    fn first_fit(state: WindowState, limit: &RateLimit, cost: u64, now: i64) -> u64 {
        (0..=3 * u64::from(limit.window.as_secs()))
            .find(|s| {
                let t = at(now + *s as i64 * 1000);
                state.rolled(limit.window, t).fits(limit, cost, t)
            })
            .unwrap()
    }

    proptest! {
        #[test]
        fn never_more_than_the_limit_in_one_fixed_window(
            n in 1u64..50,
            gaps in proptest::collection::vec(0i64..3_000, 1..300),
            costs in proptest::collection::vec(0u64..4, 300),
        ) {
            let limits = [RateLimit::new(n, Window::from_secs(10).unwrap()).unwrap()];
            let mut states = [WindowState::default()];
            let mut now = 0;
            let mut per_window = std::collections::HashMap::<i64, u64>::new();
            for (gap, cost) in gaps.iter().zip(&costs) {
                now += gap;
                let before = states[0];
                let d = check(&mut states, &limits, *cost, at(now));
                if d.allowed() {
                    *per_window.entry(limits[0].window.index(at(now))).or_default() += cost;
                } else {
                    prop_assert_eq!(states[0], before.rolled(limits[0].window, at(now)));
                    let wait = d.retry_after().unwrap();
                    prop_assert!(wait >= 1);
                }
            }
            for count in per_window.values() {
                prop_assert!(*count <= n);
            }
        }

        #[test]
        fn retry_after_is_the_first_second_that_fits(
            n in 1u64..40,
            previous in 0u64..60,
            current in 0u64..60,
            elapsed in 0i64..10_000,
            cost in 1u64..45,
        ) {
            let limit = RateLimit::new(n, Window::from_secs(10).unwrap()).unwrap();
            let w = limit.window;
            let state = WindowState { window: w.index(at(0)), current, previous };
            let now = at(elapsed);
            let status = state.status(LimitScope::Key, &limit, now, Some(cost));
            if !state.fits(&limit, cost, now) && cost <= n {
                let exact = status.retry_after.unwrap();
                // The wait is computed in ms and rounded up to whole seconds: the request
                // fits at `exact` seconds and did not fit a second earlier.
                let t = at(elapsed + exact as i64 * 1000);
                prop_assert!(state.rolled(w, t).fits(&limit, cost, t), "fits after {exact}s");
                prop_assert_eq!(first_fit(state, &limit, cost, elapsed), exact);
            }
            if status.remaining < n {
                // Reset: after that many seconds, more than `remaining` fit.
                let t = at(elapsed + status.reset as i64 * 1000);
                let later = state.rolled(w, t).status(LimitScope::Key, &limit, t, None);
                prop_assert!(later.remaining > status.remaining);
            }
        }
    }
}
