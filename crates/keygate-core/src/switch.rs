//! The switch-over after a rotation: who still uses the old key during its grace period, when
//! that is worth announcing, and when the grace period may end early because the holder has
//! switched to the successor.
//!
//! Uses are gathered in memory ([`Uses`]) and written in batches ([`Usage`]), like last-used
//! times: no write per request. The rules here are plain functions of the records and a time.

use serde::Serialize;

use crate::id::KeyId;
use crate::record::KeyRecord;
use crate::time::{Lifetime, Timestamp};

/// Shortest quiet period `retire_when_switched` accepts: uses are written in batches (every
/// `usage_flush`, 10 s by default), so a shorter one could retire a key whose latest use is
/// still on its way to the database.
pub const MIN_QUIET: Lifetime = Lifetime(60_000);

/// One key's row in a batch of uses: its successful verifications since the last batch — the
/// first and last time, and how many of them came after the key was rotated (during its grace
/// period). Gathered per key as [`Uses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The key.
    pub id: KeyId,
    /// The earliest use in the batch.
    pub first_at: Timestamp,
    /// The latest use in the batch.
    pub last_at: Timestamp,
    /// Uses in the batch made after the key's rotation.
    pub since_rotation: u64,
}

/// A key's successful verifications since the last batch, as gathered in memory beside the
/// key's id (a [`Usage`] without the id, so that a map by id does not hold it twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses {
    /// The earliest use.
    pub first_at: Timestamp,
    /// The latest use.
    pub last_at: Timestamp,
    /// Uses made after the key's rotation.
    pub since_rotation: u64,
}

impl Uses {
    /// One use at `at`; `rotated_at` is the key's rotation time, if it was rotated.
    pub fn one(at: Timestamp, rotated_at: Option<Timestamp>) -> Self {
        Self {
            first_at: at,
            last_at: at,
            since_rotation: u64::from(rotated_at.is_some_and(|r| at >= r)),
        }
    }

    /// Adds one more use at `at`.
    pub fn add(&mut self, at: Timestamp, rotated_at: Option<Timestamp>) {
        self.first_at = self.first_at.min(at);
        self.last_at = self.last_at.max(at);
        if rotated_at.is_some_and(|r| at >= r) {
            self.since_rotation = self.since_rotation.saturating_add(1);
        }
    }

    /// Folds `other` (the same key's uses) into these.
    pub fn merge(&mut self, other: &Uses) {
        self.first_at = self.first_at.min(other.first_at);
        self.last_at = self.last_at.max(other.last_at);
        self.since_rotation = self.since_rotation.saturating_add(other.since_rotation);
    }

    /// Key `id`'s row in a batch.
    pub fn of(self, id: KeyId) -> Usage {
        Usage {
            id,
            first_at: self.first_at,
            last_at: self.last_at,
            since_rotation: self.since_rotation,
        }
    }
}

/// Whether `record` is a rotated key still in its grace period at `now` (not revoked, not yet
/// expired).
pub fn in_grace(record: &KeyRecord, now: Timestamp) -> bool {
    record.rotated_at.is_some()
        && record.revoked_at.is_none()
        && record.expires_at.is_some_and(|end| now < end)
}

/// The middle of a rotated key's grace period.
fn grace_midpoint(record: &KeyRecord) -> Option<Timestamp> {
    let (start, end) = (record.rotated_at?, record.expires_at?);
    Timestamp::from_unix_ms(start.unix_ms() + (end.unix_ms() - start.unix_ms()) / 2)
}

/// Whether a key in its grace period is "still in use" at `now` — worth a `key.still_in_use`
/// notice: its grace is more than half over, and it was used after the rotation and within
/// the last half of the grace period's length (so a holder who switched long ago is not
/// announced for one stray early use).
pub fn still_in_use(record: &KeyRecord, now: Timestamp) -> bool {
    let (Some(rotated_at), Some(mid), Some(last)) = (
        record.rotated_at,
        grace_midpoint(record),
        record.last_used_at,
    ) else {
        return false;
    };
    let half = mid.unix_ms() - rotated_at.unix_ms();
    in_grace(record, now)
        && now >= mid
        && last >= rotated_at
        && last.unix_ms() >= now.unix_ms() - half
        && record.uses_since_rotation > 0
}

/// How the switch from a rotated key to its successor is going, as shown for the old key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchOver {
    /// The successor.
    pub successor_id: KeyId,
    /// When the old key was rotated.
    pub rotated_at: Timestamp,
    /// When its grace period ends (or ended).
    pub grace_ends_at: Option<Timestamp>,
    /// Whether the old key still works.
    pub in_grace: bool,
    /// The successor's first successful use, if it has been used.
    pub successor_first_used_at: Option<Timestamp>,
    /// The old key's last successful use (before or after the rotation).
    pub old_last_used_at: Option<Timestamp>,
    /// The old key's successful uses since the rotation.
    pub old_uses_since_rotation: u64,
    /// The quiet period after which the old key is retired once the successor is in use.
    pub retire_when_switched: Option<Lifetime>,
}

/// The switch-over of rotated key `old` with its `successor` (if it can still be read).
pub fn switch_over(
    old: &KeyRecord,
    successor: Option<&KeyRecord>,
    now: Timestamp,
) -> Option<SwitchOver> {
    Some(SwitchOver {
        successor_id: old.rotated_to.clone()?,
        rotated_at: old.rotated_at?,
        grace_ends_at: old.expires_at,
        in_grace: in_grace(old, now),
        successor_first_used_at: successor.and_then(|s| s.first_used_at),
        old_last_used_at: old.last_used_at,
        old_uses_since_rotation: old.uses_since_rotation,
        retire_when_switched: old.retire_when_switched,
    })
}

/// Why a rotated key is retired: the successor's first use, the old key's last use, and how
/// long it had been quiet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetireEvidence {
    /// The successor's first successful use.
    pub successor_first_used_at: Timestamp,
    /// The old key's last successful use, if it was ever used.
    pub old_last_used_at: Option<Timestamp>,
    /// Since when the old key has been unused (its last use, or the rotation if it has not
    /// been used since).
    pub quiet_since: Timestamp,
    /// The quiet period asked for.
    pub retire_when_switched: Lifetime,
}

/// Whether rotated key `old` is due to be retired at `now`: it is in its grace period, asked
/// to be retired on switch-over, its successor has been used (`successor_first_used_at`),
/// and the old key has been quiet for the period asked — since its last use or since the
/// rotation, whichever is later. The evidence, if so.
pub fn retire_due(
    old: &KeyRecord,
    successor_first_used_at: Option<Timestamp>,
    now: Timestamp,
) -> Option<RetireEvidence> {
    let quiet = old.retire_when_switched?;
    let first = successor_first_used_at?;
    let rotated_at = old.rotated_at?;
    if !in_grace(old, now) {
        return None;
    }
    let quiet_since = old.last_used_at.map_or(rotated_at, |l| l.max(rotated_at));
    (now >= quiet_since.checked_add(quiet)?).then_some(RetireEvidence {
        successor_first_used_at: first,
        old_last_used_at: old.last_used_at,
        quiet_since,
        retire_when_switched: quiet,
    })
}

/// Checks a `retire_when_switched` quiet period: at least [`MIN_QUIET`].
pub fn check_quiet(quiet: Lifetime) -> Result<Lifetime, crate::record::RecordError> {
    if quiet < MIN_QUIET {
        return Err(crate::record::RecordError::field(
            "retire_when_switched",
            "must be at least 1m (uses are written in batches)",
        ));
    }
    Ok(quiet)
}

/// Parses a `retire_when_switched` quiet period: a lifetime in minutes or longer units
/// (`30m`, `1h`, `2d`), at least [`MIN_QUIET`]; the form [`crate::patterns::quiet`] describes.
pub fn parse_quiet(text: &str) -> Result<Lifetime, crate::record::RecordError> {
    let bad = || {
        crate::record::RecordError::field(
            "retire_when_switched",
            "expected a duration of at least 1m in minutes, hours, days or weeks, such as 1h",
        )
    };
    let text = text.trim();
    if text.ends_with('s') {
        return Err(bad());
    }
    Lifetime::parse(text)
        .map_err(|_| bad())
        .and_then(check_quiet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Prefix;
    use crate::record::{KeySpec, issue, plan_rotation};
    use crate::{Clock, FixedClock, generate};

    const HOUR: i64 = 3_600_000;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(1_767_225_600_000 + ms).unwrap()
    }

    /// A key rotated at t(0) with a 10-hour grace, and its successor.
    fn rotated(quiet: Option<&str>) -> (KeyRecord, KeyRecord) {
        let spec = KeySpec {
            name: "rotating".into(),
            ..KeySpec::default()
        };
        let (old, _) = issue(spec, &Prefix::default(), t(-HOUR)).unwrap();
        let key = generate(&Prefix::default());
        let (mut old, new) =
            plan_rotation(&old, &key, KeyId::generate(t(0)), t(0), 10 * HOUR).expect("rotation");
        old.retire_when_switched = quiet.map(|q| Lifetime::parse(q).unwrap());
        (old, new)
    }

    #[test]
    fn uses_are_counted_after_the_rotation_only() {
        let mut uses = Uses::one(t(5), Some(t(10)));
        assert_eq!(uses.since_rotation, 0);
        uses.add(t(12), Some(t(10)));
        uses.add(t(1), Some(t(10)));
        uses.add(t(10), Some(t(10)));
        assert_eq!((uses.first_at, uses.last_at), (t(1), t(12)));
        assert_eq!(uses.since_rotation, 2);
        uses.merge(&Uses::one(t(20), Some(t(10))));
        assert_eq!((uses.last_at, uses.since_rotation), (t(20), 3));
        uses.merge(&Uses::one(t(0), None));
        assert_eq!((uses.first_at, uses.since_rotation), (t(0), 3));
        let never = Uses::one(t(5), None);
        assert_eq!(never.since_rotation, 0);
        let id = KeyId::generate(t(0));
        let row = uses.of(id.clone());
        assert_eq!(
            (row.id, row.first_at, row.last_at, row.since_rotation),
            (id, t(0), t(20), 3)
        );
    }

    #[test]
    fn still_in_use_once_the_grace_is_half_over_and_the_key_was_used_lately() {
        let (mut old, _) = rotated(None);
        let clock = FixedClock::new(t(HOUR));
        assert!(in_grace(&old, clock.now()));
        assert!(!still_in_use(&old, clock.now()), "never used");
        old.last_used_at = Some(t(2 * HOUR));
        old.uses_since_rotation = 3;
        assert!(!still_in_use(&old, t(4 * HOUR)), "not half over");
        assert!(still_in_use(&old, t(5 * HOUR)), "half over, used 3 h ago");
        assert!(
            still_in_use(&old, t(7 * HOUR)),
            "used 5 h ago: within half the grace"
        );
        assert!(
            !still_in_use(&old, t(7 * HOUR + 1)),
            "quiet for over half the grace"
        );
        assert!(!still_in_use(&old, t(10 * HOUR)), "grace over");
        old.last_used_at = Some(t(-1));
        old.uses_since_rotation = 0;
        assert!(
            !still_in_use(&old, t(5 * HOUR)),
            "used before the rotation only"
        );
        old.last_used_at = Some(t(6 * HOUR));
        old.uses_since_rotation = 1;
        old.revoked_at = Some(t(6 * HOUR));
        assert!(!still_in_use(&old, t(6 * HOUR)), "revoked");
    }

    #[test]
    fn retired_once_the_successor_is_used_and_the_old_key_quiet_long_enough() {
        let (mut old, new) = rotated(Some("1h"));
        let now = t(3 * HOUR);
        assert_eq!(retire_due(&old, None, now), None, "successor never used");
        let evidence = retire_due(&old, Some(t(HOUR)), now).expect("quiet since rotation");
        assert_eq!(evidence.quiet_since, t(0));
        assert_eq!(evidence.old_last_used_at, None);
        old.last_used_at = Some(t(2 * HOUR + 30 * 60_000));
        assert_eq!(
            retire_due(&old, Some(t(HOUR)), now),
            None,
            "the old key was used half an hour ago"
        );
        let due = retire_due(&old, Some(t(HOUR)), t(3 * HOUR + 30 * 60_000)).expect("due");
        assert_eq!(due.quiet_since, t(2 * HOUR + 30 * 60_000));
        assert_eq!(due.successor_first_used_at, t(HOUR));
        // An early last use (before the rotation) counts from the rotation.
        old.last_used_at = Some(t(-5));
        assert_eq!(
            retire_due(&old, Some(t(1)), t(HOUR)).unwrap().quiet_since,
            t(0)
        );
        // Not asked for, or past the grace period: nothing to do.
        let (plain, _) = rotated(None);
        assert_eq!(retire_due(&plain, Some(t(1)), t(5 * HOUR)), None);
        assert_eq!(retire_due(&old, Some(t(1)), t(10 * HOUR)), None);
        assert!(check_quiet(Lifetime::parse("30s").unwrap()).is_err());
        let pattern = regex::Regex::new(&crate::patterns::quiet()).unwrap();
        for text in [
            "1m", "90m", "1h", "7d", "2w", "60s", "1s", "0m", "1", "h", "", "m",
        ] {
            assert_eq!(
                pattern.is_match(text),
                parse_quiet(text).is_ok(),
                "{text}: the pattern and the rule agree"
            );
        }
        assert!(check_quiet(Lifetime::parse("1m").unwrap()).is_ok());
        let view = switch_over(&old, Some(&new), t(HOUR)).unwrap();
        assert_eq!(view.successor_id, new.id);
        assert!(view.in_grace);
        assert_eq!(switch_over(&new, None, t(HOUR)), None, "not rotated");
    }
}
