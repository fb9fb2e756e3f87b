//! Measures the usage flush's write: one `record_counts` batch of N keys' counts (one row per
//! key for the current hour), first as new rows, then added to the same rows.
//!
//! ```sh
//! cargo run --release -p keygate-store --example usage_flush -- sqlite:///tmp/usage.db 10000 5
//! ```
//!
//! Arguments: database URL, keys per batch, rounds. Prints each round's time and the median of
//! the updating rounds; checks that the counts add up.

use std::time::Instant;

use keygate_core::usage::{Bucket, UsageCounts, UsageRange, hour_of};
use keygate_core::{KeyId, Outcome, Timestamp};
use keygate_store::UsageDelta;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, n, rounds] = args.as_slice() else {
        eprintln!("usage: usage_flush DATABASE_URL KEYS ROUNDS");
        std::process::exit(2);
    };
    let (Ok(n), Ok(rounds)) = (n.parse::<usize>(), rounds.parse::<usize>()) else {
        eprintln!("usage_flush: KEYS and ROUNDS must be whole numbers");
        std::process::exit(2);
    };
    let store = keygate_store::open(url).await.unwrap_or_else(|e| {
        eprintln!("usage_flush: {e}");
        std::process::exit(1);
    });
    let now = Timestamp::from_unix_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
    .expect("a time in range");
    let hour = hour_of(now);
    let ids: Vec<KeyId> = (0..n).map(|_| KeyId::generate(now)).collect();
    let mut counts = UsageCounts::default();
    counts.add(Outcome::Valid, 7);
    counts.add(Outcome::RateLimited, 1);
    let batch: Vec<UsageDelta> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| UsageDelta {
            key: id.clone(),
            owner: Some(format!("owner-{}", i % 100)),
            hour,
            counts,
        })
        .collect();
    let mut updates = Vec::new();
    for round in 0..rounds.max(1) {
        let started = Instant::now();
        store.record_counts(&batch).await.unwrap_or_else(|e| {
            eprintln!("usage_flush: {e}");
            std::process::exit(1);
        });
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "round {round}: {n} rows {} in {ms:.1} ms",
            if round == 0 { "inserted" } else { "added to" }
        );
        if round > 0 {
            updates.push(ms);
        }
    }
    updates.sort_by(f64::total_cmp);
    if let Some(median) = updates.get(updates.len() / 2) {
        println!("median of the adding rounds: {median:.1} ms for {n} keys");
    }
    let range = UsageRange::new(Some(hour), None, Bucket::Hour, now);
    let got = store
        .usage_for_key(&ids[n / 2], &range)
        .await
        .expect("read");
    let verified: u64 = got.iter().map(|b| b.counts.verified()).sum();
    assert_eq!(verified, 7 * rounds.max(1) as u64, "the counts add up");
    let started = Instant::now();
    let owner = store
        .usage_for_owner("owner-7", &range)
        .await
        .expect("read");
    let owner_sum: u64 = owner.iter().map(|b| b.counts.verified()).sum();
    println!(
        "owner read ({} keys): {:.1} ms, {owner_sum} verified",
        n / 100,
        started.elapsed().as_secs_f64() * 1000.0
    );
}
