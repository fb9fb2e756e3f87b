//! Rate-limit checks: the pure rule, the in-process limiter on a warm entry, and the Redis
//! limiter's two paths (a lease hit, no I/O; a round trip). Then, outside criterion, two
//! Redis-synchronised "nodes" in real time: the overshoot of a 1,000/min limit at 1,000
//! requests/s offered, and side-by-side throughput of a rate-limited, a generously limited and
//! an unlimited key.
//!
//! `cargo bench -p keygate --bench limits`. The in-process cases run twice: `limits/*` in wall
//! time, `limits_cpu/*` in the measuring thread's CPU time (on a shared machine, wall time
//! also counts waits for a core). The Redis parts run when `KEYGATE_TEST_REDIS` names a
//! server (keys under a fresh `kgbench:` prefix that expire by themselves).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, criterion_group};
use keygate::core::limits::{RateLimit, WindowState, check};
use keygate::core::{Clock, KeyId, Timestamp};
use keygate::limits::{LocalLimiter, RedisHealth, RedisLimiter, Subject};

fn t0() -> Timestamp {
    Timestamp::from_unix_ms(1_800_000_000_000).unwrap()
}

fn limit(text: &str) -> RateLimit {
    RateLimit::parse(text).unwrap()
}

fn key() -> Subject {
    Subject::key(&KeyId::generate(t0()))
}

/// CPU time of the measuring thread: the machine is shared, and wall time also counts the
/// time this thread waited for a core.
struct ThreadCpu;

static WALL: WallTime = WallTime;

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, started: Duration) -> Duration {
        thread_cpu() - started
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

fn local_wall(c: &mut Criterion) {
    local(c, "limits");
}

fn local_cpu(c: &mut Criterion<ThreadCpu>) {
    local(c, "limits_cpu");
}

fn local<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let mut g = c.benchmark_group(group);
    // Limits that a bench run never reaches, so that every check is an admitted one.
    let big = [limit("1000000000/1d")];
    let two = [limit("1000000000/1d"), limit("burst=1000000000/1h")];
    let now = t0();

    let mut states = [WindowState::default()];
    g.bench_function("core_check_one_limit", |b| {
        b.iter(|| check(black_box(&mut states), &big, 1, now).allowed())
    });

    let limiter = LocalLimiter::default();
    let (k, owner) = (key(), Subject::owner("acme"));
    limiter.check(&[(&k, &big)], 1, now);
    g.bench_function("local_one_limit", |b| {
        b.iter(|| {
            limiter
                .check(black_box(&[(&k, &big[..])]), 1, now)
                .allowed()
        })
    });
    limiter.check(&[(&k, &two)], 1, now);
    g.bench_function("local_two_limits", |b| {
        b.iter(|| {
            limiter
                .check(black_box(&[(&k, &two[..])]), 1, now)
                .allowed()
        })
    });
    let request = [(&k, &big[..]), (&owner, &big[..])];
    limiter.check(&request, 1, now);
    g.bench_function("local_key_and_owner", |b| {
        b.iter(|| limiter.check(black_box(&request), 1, now).allowed())
    });
    let (spent, small) = (key(), [limit("10/1m")]);
    for _ in 0..10 {
        limiter.check(&[(&spent, &small)], 1, now);
    }
    g.bench_function("local_refused", |b| {
        b.iter(|| {
            limiter
                .check(black_box(&[(&spent, &small[..])]), 1, now)
                .retry_after()
        })
    });
    g.finish();
}

fn redis_url() -> Option<String> {
    std::env::var("KEYGATE_TEST_REDIS").ok()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn node(url: &str, prefix: &str, id: &str, clock: Arc<dyn Clock>) -> RedisLimiter {
    let limiter = RedisLimiter::builder(url)
        .prefix(prefix)
        .node_id(id)
        .clock(clock)
        .connect()
        .await
        .unwrap();
    assert_eq!(limiter.health(), RedisHealth::Ok, "Redis at {url}");
    limiter
}

fn prefix() -> String {
    format!(
        "kgbench:{}:",
        KeyId::generate(t0()).as_str().to_ascii_lowercase()
    )
}

/// A limiter on the test Redis with a subject whose lease covers a whole run.
fn warm_redis(url: &str, rt: &tokio::runtime::Runtime) -> (RedisLimiter, Subject, [RateLimit; 1]) {
    let clock: Arc<dyn Clock> = Arc::new(keygate::SystemClock);
    let limiter = rt.block_on(node(url, &prefix(), "bench", clock));
    let big = [limit("1000000000/1d")];
    let k = key();
    let now = keygate::SystemClock.now();
    rt.block_on(async {
        for _ in 0..100_000 {
            limiter.check(&[(&k, &big)], 1, now).await;
        }
    });
    (limiter, k, big)
}

fn redis_lease_hit<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let Some(url) = redis_url() else {
        println!("skipped {group}/redis_*: KEYGATE_TEST_REDIS is not set");
        return;
    };
    let rt = runtime();
    let (limiter, k, big) = warm_redis(&url, &rt);
    let now = keygate::SystemClock.now();
    c.benchmark_group(group)
        .bench_function("redis_lease_hit", |b| {
            b.to_async(&rt).iter(|| async {
                limiter
                    .check(black_box(&[(&k, &big[..])]), 1, now)
                    .await
                    .allowed()
            })
        });
}

fn redis_wall(c: &mut Criterion) {
    redis_lease_hit(c, "limits");
    let Some(url) = redis_url() else {
        return;
    };
    let rt = runtime();
    let (limiter, _, big) = warm_redis(&url, &rt);
    let now = keygate::SystemClock.now();
    c.benchmark_group("limits")
        .bench_function("redis_round_trip", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let limiter = limiter.clone();
                let subjects: Vec<Subject> = (0..iters).map(|_| key()).collect();
                async move {
                    let start = Instant::now();
                    for s in &subjects {
                        // A new subject holds no lease: its first check reserves in Redis.
                        black_box(limiter.check(&[(s, &big[..])], 1, now).await.allowed());
                    }
                    start.elapsed()
                }
            })
        });
}

fn redis_cpu(c: &mut Criterion<ThreadCpu>) {
    redis_lease_hit(c, "limits_cpu");
}

/// The system clock moved so that a window starts when the run does.
#[derive(Debug)]
struct Shifted {
    offset_ms: i64,
}

impl Clock for Shifted {
    fn now(&self) -> Timestamp {
        let now = keygate::SystemClock.now().unix_ms();
        Timestamp::from_unix_ms(now + self.offset_ms).unwrap()
    }
}

/// Two nodes, a 1,000/min limit, 1,000 requests/s offered (500/s to each) for `secs`.
async fn paced(url: &str, secs: u64) {
    let start = keygate::SystemClock.now().unix_ms();
    let clock: Arc<dyn Clock> = Arc::new(Shifted {
        offset_ms: (start / 60_000 + 1) * 60_000 - start,
    });
    let prefix = prefix();
    let nodes = [
        node(url, &prefix, "a", clock.clone()).await,
        node(url, &prefix, "b", clock.clone()).await,
    ];
    let subject = key();
    let limits = [limit("1000/1m")];
    let first_window = limits[0].window.index(clock.now());
    let admitted = Arc::new(AtomicU64::new(0));
    let mut latencies = Vec::new();
    let mut tasks = Vec::new();
    for limiter in &nodes {
        let (limiter, subject, clock, admitted) = (
            limiter.clone(),
            subject.clone(),
            clock.clone(),
            admitted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut took = Vec::with_capacity(secs as usize * 500);
            let mut reached = None;
            for i in 0..secs * 500 {
                tick.tick().await;
                let now = clock.now();
                assert_eq!(
                    limits[0].window.index(now),
                    first_window,
                    "the run left its window"
                );
                let started = Instant::now();
                let d = limiter.check(&[(&subject, &limits)], 1, now).await;
                took.push(started.elapsed());
                if d.allowed() && admitted.fetch_add(1, Ordering::Relaxed) + 1 == 1000 {
                    reached = Some(i);
                }
            }
            (took, reached)
        }));
    }
    let mut reached_at = None;
    for task in tasks {
        let (took, reached) = task.await.unwrap();
        latencies.extend(took);
        reached_at = reached_at.or(reached);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let total = admitted.load(Ordering::Relaxed);
    let stats: Vec<_> = nodes.iter().map(|n| n.stats()).collect();
    println!(
        "paced: 2 nodes, limit 1000/1m, 1000 req/s offered for {secs} s ({} requests): admitted {total} \
         (overshoot {} = {:.2} % of the limit), limit reached after ~{:.2} s; check latency p50 {:?} \
         p99 {:?} max {:?}; round trips {} + {}, local admits {} + {}, local refusals {} + {}",
        latencies.len(),
        total as i64 - 1000,
        (total as f64 - 1000.0) / 10.0,
        reached_at.map_or(f64::NAN, |i| i as f64 * 0.002),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap(),
        stats[0].round_trips,
        stats[1].round_trips,
        stats[0].local_admits,
        stats[1].local_admits,
        stats[0].local_refusals,
        stats[1].local_refusals,
    );
}

/// Closed loop, side by side: two nodes, two tasks each, checking as fast as they can for
/// `secs` per case; three rounds; checks per second and the ratio to the unlimited key.
async fn throughput(url: &str, secs: f64) {
    let clock: Arc<dyn Clock> = Arc::new(keygate::SystemClock);
    let prefix = prefix();
    let nodes = [
        node(url, &prefix, "a", clock.clone()).await,
        node(url, &prefix, "b", clock.clone()).await,
    ];
    let cases: [(&str, Vec<RateLimit>); 3] = [
        ("unlimited", vec![]),
        (
            "limited 1000/1m (refusing after the first 1000)",
            vec![limit("1000/1m")],
        ),
        (
            "limited 10^9/1m (admitting from leases)",
            vec![limit("1000000000/1m")],
        ),
    ];
    let mut rates = vec![Vec::new(); cases.len()];
    for _round in 0..3 {
        for (c, (_, limits)) in cases.iter().enumerate() {
            let subject = key();
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut tasks = Vec::new();
            for limiter in &nodes {
                for _ in 0..2 {
                    let (limiter, subject, clock, limits) = (
                        limiter.clone(),
                        subject.clone(),
                        clock.clone(),
                        limits.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            for _ in 0..64 {
                                black_box(
                                    limiter.check(&[(&subject, &limits)], 1, clock.now()).await,
                                );
                            }
                            n += 64;
                        }
                        n
                    }));
                }
            }
            let mut n = 0;
            for t in tasks {
                n += t.await.unwrap();
            }
            rates[c].push(n as f64 / secs);
        }
    }
    for (c, (name, _)) in cases.iter().enumerate() {
        let ratios: Vec<f64> = (0..3).map(|r| rates[c][r] / rates[0][r]).collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "throughput {name}: {:.0} checks/s (rounds {:?}); relative to the no-limit loop {:.3} (median of {:?})",
            rates[c].iter().sum::<f64>() / 3.0,
            rates[c].iter().map(|r| *r as u64).collect::<Vec<_>>(),
            sorted[1],
            ratios
                .iter()
                .map(|r| (r * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
        );
    }
}

criterion_group!(wall, local_wall, redis_wall);
criterion_group!(
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = local_cpu, redis_cpu
);

fn main() {
    wall();
    cpu();
    if let Some(url) = redis_url() {
        let rt = runtime();
        rt.block_on(paced(&url, 3));
        rt.block_on(throughput(&url, 1.0));
    }
    Criterion::default().configure_from_args().final_summary();
}
