//! Paced load for `bench/limits_nodes.sh`: `POST /v1/verify` for one rate-limited key at a
//! fixed rate, alternating between nodes, then the admitted and refused requests per window
//! of the key's limit, and how far the admitted ones went above the limit.
//!
//! ```text
//! KEYGATE_BENCH_VERIFIER=kg_… KEYGATE_BENCH_KEY=kg_… \
//!     pace_verify NODES RATE COUNT LIMIT WINDOW_SECS [GUARD_MS]
//! ```
//!
//! `NODES` is a comma-separated list of `host:port` (loopback); the keys come from the
//! environment (never the command line, where `ps` would show them). Slot `i` is sent at
//! `start + i / RATE` seconds to node `i mod nodes`, whatever happened to earlier requests (an
//! open-loop pacer: a slow answer does not slow the offered rate; each request takes a free
//! keep-alive connection or opens one). `start` is the next boundary of the key's fixed
//! windows (the server's: multiples of `WINDOW_SECS` since the epoch), so the first window is
//! whole. Slots in the last `GUARD_MS` (default 20) before a boundary are not sent, so that a
//! request is counted in the window it was sent in; a request whose answer came after the
//! boundary anyway is reported as straddling. `COUNT` slots, then it waits for the answers
//! (at most 30 s).
//!
//! Per window it prints the requests sent, admitted (`VALID`, per node) and refused
//! (`RATE_LIMITED`), anything else, the admitted count over the limit, and the sliding-window
//! check: for each admitted request, `previous window's admitted × weight + admitted so far
//! in this window` (the weight is the part of the previous window still inside the sliding
//! one), whose maximum an exact limiter keeps at or under the limit. The server decided each
//! request at a moment between its sending and its answer, so the check is given as a range:
//! at the answers' times (a lower bound) and at the sending times (an upper bound). The last
//! line, `overshoot_pct=… sliding_pct=LOW..HIGH admitted=… refused=… other=… straddling=…`,
//! is for the script.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Code {
    Valid,
    RateLimited,
    Other(String),
}

#[derive(Debug, Clone)]
struct Sample {
    node: usize,
    sent_ms: i64,
    done_ms: i64,
    code: Code,
}

type Conn = BufReader<TcpStream>;

/// Free keep-alive connections to one node.
#[derive(Default)]
struct Pool(Mutex<Vec<Conn>>);

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64
}

/// Sends one request on `conn` and reads the answer: (status, body).
async fn exchange(conn: &mut Conn, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    conn.get_mut().write_all(request).await?;
    let mut status = 0u16;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let text = line.trim_end();
        if text.is_empty() {
            break;
        }
        if status == 0 {
            status = text
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or(std::io::ErrorKind::InvalidData)?;
        } else if let Some((name, value)) = text.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value
                .trim()
                .parse()
                .map_err(|_| std::io::ErrorKind::InvalidData)?;
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await?;
    Ok((status, body))
}

/// A new connection to `addr`.
async fn connect(addr: &str) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

/// Requests sent again on a new connection because the pooled one had been closed by the
/// server while idle (its keep-alive timeout) before any answer was read.
static RETRIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One paced request: a pooled connection (or a new one), the exchange, the outcome.
async fn one(node: usize, addr: String, pool: Arc<Pool>, request: Arc<Vec<u8>>) -> Sample {
    let taken = pool.0.lock().unwrap().pop();
    let sent_ms = wall_ms();
    let failed = |why: String| Sample {
        node,
        sent_ms,
        done_ms: wall_ms(),
        code: Code::Other(why),
    };
    let (mut conn, reused) = match taken {
        Some(conn) => (conn, true),
        None => match connect(&addr).await {
            Ok(conn) => (conn, false),
            Err(e) => return failed(format!("connect: {}", e.kind())),
        },
    };
    let mut answer = exchange(&mut conn, &request).await;
    if reused
        && answer
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof)
    {
        // The server closed it while it sat in the pool: the request was never read.
        RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conn = match connect(&addr).await {
            Ok(conn) => conn,
            Err(e) => return failed(format!("connect: {}", e.kind())),
        };
        answer = exchange(&mut conn, &request).await;
    }
    let done_ms = wall_ms();
    let code = match answer {
        Ok((200, body)) => {
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unreadable answer".into());
            pool.0.lock().unwrap().push(conn);
            match code.as_str() {
                "VALID" => Code::Valid,
                "RATE_LIMITED" => Code::RateLimited,
                _ => Code::Other(code),
            }
        }
        Ok((status, _)) => {
            pool.0.lock().unwrap().push(conn);
            Code::Other(format!("HTTP {status}"))
        }
        Err(e) => Code::Other(format!("io: {}", e.kind())),
    };
    Sample {
        node,
        sent_ms,
        done_ms,
        code,
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: KEYGATE_BENCH_VERIFIER=… KEYGATE_BENCH_KEY=… pace_verify NODES RATE COUNT LIMIT WINDOW_SECS [GUARD_MS]"
    );
    std::process::exit(2);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

/// `2026-11-30 18:40:00` (UTC) for a wall-clock time in ms.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        usage();
    }
    let nodes: Vec<String> = args[1].split(',').map(str::to_owned).collect();
    let rate: f64 = arg(&args, 2);
    let count: u64 = arg(&args, 3);
    let limit: u64 = arg(&args, 4);
    let window_secs: i64 = arg(&args, 5);
    let guard_ms: i64 = if args.len() > 6 { arg(&args, 6) } else { 20 };
    if nodes.is_empty() || rate <= 0.0 || window_secs <= 0 || count == 0 {
        usage();
    }
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| usage());
    let (verifier, key) = (env("KEYGATE_BENCH_VERIFIER"), env("KEYGATE_BENCH_KEY"));
    let body = format!("{{\"key\":\"{key}\"}}");
    let requests: Vec<Arc<Vec<u8>>> = nodes
        .iter()
        .map(|addr| {
            Arc::new(
                format!(
                    "POST /v1/verify HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Api-Key {verifier}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        })
        .collect();
    let pools: Vec<Arc<Pool>> = nodes.iter().map(|_| Arc::new(Pool::default())).collect();

    let window_ms = window_secs * 1000;
    let start_ms = (wall_ms() / window_ms + 1) * window_ms;
    let period_us = 1e6 / rate;
    eprintln!(
        "pacing {count} slots at {rate}/s over {} nodes from {} UTC (the next window boundary)",
        nodes.len(),
        utc(start_ms)
    );
    let start_us = start_ms * 1000;
    let mut tasks = Vec::with_capacity(count as usize);
    let mut skipped = 0u64;
    let mut late_us_max = 0i64;
    for i in 0..count {
        let due_us = start_us + (i as f64 * period_us) as i64;
        let into_window = (due_us / 1000).rem_euclid(window_ms);
        if into_window >= window_ms - guard_ms {
            skipped += 1;
            continue;
        }
        let wait = due_us - wall_us();
        if wait > 0 {
            tokio::time::sleep_until(Instant::now() + Duration::from_micros(wait as u64)).await;
        } else {
            late_us_max = late_us_max.max(-wait);
        }
        let node = (i % nodes.len() as u64) as usize;
        tasks.push(tokio::spawn(one(
            node,
            nodes[node].clone(),
            pools[node].clone(),
            requests[node].clone(),
        )));
    }
    let paced_ms = wall_ms() - start_ms;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(sample)) => samples.push(sample),
            _ => samples.push(Sample {
                node: 0,
                sent_ms: 0,
                done_ms: 0,
                code: Code::Other("no answer in time".into()),
            }),
        }
    }

    // Per window: sent, admitted per node, refused, other; the sliding check.
    #[derive(Default)]
    struct Window {
        sent: u64,
        admitted: Vec<u64>,
        refused: u64,
        other: u64,
        admitted_at: Vec<i64>,
        answered_at: Vec<i64>,
    }
    let mut windows: BTreeMap<i64, Window> = BTreeMap::new();
    let mut others: BTreeMap<String, u64> = BTreeMap::new();
    let mut straddling = 0u64;
    let mut latencies: Vec<i64> = Vec::with_capacity(samples.len());
    for s in &samples {
        if let Code::Other(why) = &s.code {
            *others.entry(why.clone()).or_default() += 1;
            if s.sent_ms == 0 {
                continue;
            }
        }
        let index = s.sent_ms.div_euclid(window_ms);
        if s.done_ms.div_euclid(window_ms) != index {
            straddling += 1;
        }
        latencies.push(s.done_ms - s.sent_ms);
        let w = windows.entry(index).or_insert_with(|| Window {
            admitted: vec![0; nodes.len()],
            ..Window::default()
        });
        w.sent += 1;
        match s.code {
            Code::Valid => {
                w.admitted[s.node] += 1;
                w.admitted_at.push(s.sent_ms);
                w.answered_at.push(s.done_ms);
            }
            Code::RateLimited => w.refused += 1,
            Code::Other(_) => w.other += 1,
        }
    }
    println!(
        "{:<20} {:>6} {:>9} {:>15} {:>8} {:>6} {:>11} {:>18}",
        "window (UTC)",
        "sent",
        "admitted",
        "(per node)",
        "refused",
        "other",
        "over limit",
        "sliding max"
    );
    let (mut worst_over, mut worst_sliding, mut worst_low) = (0i64, f64::MIN, f64::MIN);
    let (mut admitted_total, mut refused_total, mut other_total) = (0u64, 0u64, 0u64);
    let mut previous: Option<(i64, u64)> = None;
    for (index, w) in &mut windows {
        let admitted: u64 = w.admitted.iter().sum();
        let prev = match previous {
            Some((i, n)) if i == *index - 1 => n,
            _ => 0,
        };
        let begin = index * window_ms;
        // The server decided each request between its sending and its answer: the weight at
        // the sending is the largest it can have been (an upper bound of the sliding count),
        // at the answer the smallest (a lower bound).
        let sliding = |times: &mut Vec<i64>| {
            times.sort_unstable();
            times
                .iter()
                .enumerate()
                .map(|(k, at)| {
                    let weight =
                        (window_ms - (at - begin).min(window_ms)) as f64 / window_ms as f64;
                    prev as f64 * weight + (k + 1) as f64
                })
                .fold(0.0f64, f64::max)
        };
        let (low, sliding) = (sliding(&mut w.answered_at), sliding(&mut w.admitted_at));
        let over = admitted as i64 - limit as i64;
        worst_over = worst_over.max(over);
        worst_sliding = worst_sliding.max(sliding);
        worst_low = worst_low.max(low);
        admitted_total += admitted;
        refused_total += w.refused;
        other_total += w.other;
        let per_node: Vec<String> = w.admitted.iter().map(u64::to_string).collect();
        println!(
            "{:<20} {:>6} {:>9} {:>15} {:>8} {:>6} {:>11} {:>18}",
            utc(begin),
            w.sent,
            admitted,
            format!("({})", per_node.join(" + ")),
            w.refused,
            w.other,
            over,
            format!("{low:.1}–{sliding:.1}")
        );
        previous = Some((*index, admitted));
    }
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "sent {} of {count} slots ({skipped} in the {guard_ms} ms guard before each boundary) in {:.1} s: {:.0}/s offered; latest slot {:.1} ms late; latency p50 {} ms, p99 {} ms, max {} ms",
        samples.len(),
        paced_ms as f64 / 1000.0,
        samples.len() as f64 * 1000.0 / paced_ms.max(1) as f64,
        late_us_max as f64 / 1000.0,
        pick(0.5),
        pick(0.99),
        latencies.last().copied().unwrap_or(0)
    );
    let retried = RETRIED.load(std::sync::atomic::Ordering::Relaxed);
    if retried > 0 {
        println!(
            "{retried} requests met a pooled connection the server had closed while idle and were sent again on a new one"
        );
    }
    for (why, n) in &others {
        println!("other answers: {n} × {why}");
    }
    let overshoot_pct = worst_over.max(0) as f64 * 100.0 / limit as f64;
    let sliding_pct = (worst_sliding - limit as f64).max(0.0) * 100.0 / limit as f64;
    let sliding_low_pct = (worst_low - limit as f64).max(0.0) * 100.0 / limit as f64;
    println!(
        "overshoot_pct={overshoot_pct:.2} sliding_pct={sliding_low_pct:.2}..{sliding_pct:.2} admitted={admitted_total} refused={refused_total} other={other_total} straddling={straddling}"
    );
}
