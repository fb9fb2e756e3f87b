//! Fills a database with real keys, fast, for scale runs:
//!
//! ```sh
//! cargo run --release -p keygate-store --features bench --example fill -- \
//!     sqlite:///tmp/scale.db 1000000 100000 /tmp/hot-keys.txt
//! ```
//!
//! Arguments: database URL, how many keys, how many plaintexts to keep, the file to write them
//! to (one per line: a benchmark's "hot" set). Prints how long the fill took.

use std::io::Write;
use std::time::Instant;

use keygate_store::bulk::{fill_postgres, fill_sqlite};
use keygate_store::{PostgresStore, SqliteStore};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, n, keep, out] = args.as_slice() else {
        eprintln!("usage: fill DATABASE_URL KEYS KEEP HOT_KEYS_FILE");
        std::process::exit(2);
    };
    let (Ok(n), Ok(keep)) = (n.parse::<usize>(), keep.parse::<usize>()) else {
        eprintln!("fill: KEYS and KEEP must be whole numbers");
        std::process::exit(2);
    };
    let started = Instant::now();
    let kept = if url.starts_with("postgres") {
        let store = PostgresStore::connect(url)
            .await
            .unwrap_or_else(|e| fail(&e));
        fill_postgres(&store, n, keep)
            .await
            .unwrap_or_else(|e| fail(&e))
    } else {
        let store = SqliteStore::connect(url).await.unwrap_or_else(|e| fail(&e));
        fill_sqlite(&store, n, keep)
            .await
            .unwrap_or_else(|e| fail(&e))
    };
    let took = started.elapsed();
    let mut file = std::fs::File::create(out).unwrap_or_else(|e| fail(&e));
    for key in &kept {
        writeln!(file, "{}", key.expose()).unwrap_or_else(|e| fail(&e));
    }
    println!(
        "filled {n} keys in {:.1} s ({:.0} keys/s); wrote {} plaintexts to {out}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        kept.len()
    );
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("fill: {e}");
    std::process::exit(1);
}
