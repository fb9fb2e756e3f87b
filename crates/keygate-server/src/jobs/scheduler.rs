//! The scheduler: every `sweep_every`, the maximum-age policy, expiry warnings and expiry
//! notices, the watch over rotated keys in their grace period (`key.still_in_use`, retiring
//! on switch-over) (see [`keygate::Sweep`]), credit refills, and the purge of usage counts
//! past their retention. Several nodes may sweep at once: each notice is written
//! once per key however many run (a race between two nodes may at worst write one twice).

use std::time::Duration;

use keygate::core::{Actor, Audit};
use keygate::{Keygate, Sweep, SweepReport};

/// One sweep, as the scheduler does it (actor `scheduler`), logged if it did anything.
pub async fn sweep_once(keygate: &Keygate, sweep: &Sweep) -> Result<SweepReport, keygate::Error> {
    let report = keygate
        .sweep(sweep, false, &Audit::by(Actor::Scheduler))
        .await?;
    let acted = report.expiry_shortened.len()
        + report.rotated.len()
        + report.max_age_notices.len()
        + report.expiring_soon_notices.len()
        + report.expired_notices.len()
        + report.still_in_use_notices.len()
        + report.retired.len();
    if acted > 0 {
        tracing::info!(
            expiry_shortened = report.expiry_shortened.len(),
            rotated = report.rotated.len(),
            max_age_notices = report.max_age_notices.len(),
            expiring_soon = report.expiring_soon_notices.len(),
            expired = report.expired_notices.len(),
            still_in_use = report.still_in_use_notices.len(),
            retired = report.retired.len(),
            "sweep"
        );
    }
    Ok(report)
}

/// Refills the credits of every key whose refill is due (audited, idempotent); returns how
/// many keys were refilled.
pub async fn refill_once(keygate: &Keygate) -> Result<u64, keygate::Error> {
    let refilled = keygate.refill_due(&Audit::by(Actor::Scheduler)).await?;
    if refilled > 0 {
        tracing::info!(refilled, "credits refilled");
    }
    Ok(refilled)
}

/// Removes hourly usage counts older than `retention`; returns how many (key, hour) rows.
pub async fn purge_usage_once(
    keygate: &Keygate,
    retention: Duration,
) -> Result<u64, keygate::Error> {
    let purged = keygate.purge_usage(retention).await?;
    if purged > 0 {
        tracing::info!(purged, "usage counts past their retention purged");
    }
    Ok(purged)
}

/// Sweeps, refills credits and purges usage counts older than `usage_retention` every
/// `every`, until the process ends; a failure is logged and retried next time.
pub async fn run(keygate: Keygate, sweep: Sweep, every: Duration, usage_retention: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep_once(&keygate, &sweep).await {
            tracing::warn!(error = %e, "sweep failed; will retry");
        }
        if let Err(e) = refill_once(&keygate).await {
            tracing::warn!(error = %e, "credit refill failed; will retry");
        }
        if let Err(e) = purge_usage_once(&keygate, usage_retention).await {
            tracing::warn!(error = %e, "usage purge failed; will retry");
        }
    }
}
