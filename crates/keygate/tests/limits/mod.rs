//! Rate limits shared through a real Redis: two limiters in this process stand for two nodes
//! (each with its own connection and node id). The Redis named by `KEYGATE_TEST_REDIS` serves
//! the sharing tests (each under its own key prefix); the outage test starts its own
//! `redis-server` on a free port, kills it and starts it again. Time is a fixed clock.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::core::limits::{RateLimit, WindowState};
use keygate::core::{Clock, FixedClock, KeyId, Timestamp};
use keygate::limits::{RedisHealth, RedisLimiter, Subject};

fn redis_url() -> String {
    std::env::var("KEYGATE_TEST_REDIS").expect("KEYGATE_TEST_REDIS names the test Redis")
}

/// A multiple of every window used here.
fn t0() -> Timestamp {
    Timestamp::from_unix_ms(1_800_000_000_000).unwrap()
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(t0().unix_ms() + ms).unwrap()
}

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}",
        KeyId::generate(t0()).as_str().to_ascii_lowercase()
    )
}

fn limit(text: &str) -> RateLimit {
    RateLimit::parse(text).unwrap()
}

async fn node(url: &str, prefix: &str, id: &str, clock: &Arc<FixedClock>) -> RedisLimiter {
    RedisLimiter::builder(url)
        .prefix(prefix)
        .node_id(id)
        // Generous: this machine is shared, and a slow answer would count as an outage.
        .timeout(Duration::from_millis(500))
        .probe_interval(Duration::from_millis(100))
        .clock(clock.clone())
        .connect()
        .await
        .expect("a well-formed URL")
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis answers")
}

async fn fields(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> HashMap<String, u64> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits (with a deadline) until `node`'s field in `key` is `expected()`: what the node has
/// spent plus its lease, once any background reservation under way has landed.
async fn settled(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    node: &str,
    expected: impl Fn() -> u64,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = fields(conn, key).await.get(node).copied();
        if held == Some(expected()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} holds {held:?} in {key}, expected {}",
            expected()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "set KEYGATE_TEST_REDIS=redis://127.0.0.1:6379 to run"
)]
async fn two_nodes_share_one_limit_through_redis() {
    let url = redis_url();
    let prefix = format!("{}:", unique("kgtest"));
    let clock = Arc::new(FixedClock::new(t0()));
    let a = node(&url, &prefix, "a", &clock).await;
    let b = node(&url, &prefix, "b", &clock).await;
    assert_eq!((a.health(), b.health()), (RedisHealth::Ok, RedisHealth::Ok));
    let subject = Subject::key(&KeyId::generate(t0()));
    let limit = limit("1000/1m");
    const TASKS: usize = 8;
    const PER_TASK: u64 = 200;
    let mut tasks = Vec::new();
    for limiter in [&a, &b] {
        for _ in 0..TASKS {
            let (limiter, subject, clock) = (limiter.clone(), subject.clone(), clock.clone());
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..PER_TASK {
                    let limits = [limit];
                    if limiter
                        .check(&[(&subject, &limits)], 1, clock.now())
                        .await
                        .allowed()
                    {
                        admitted += 1;
                    }
                }
                admitted
            }));
        }
    }
    let mut admitted = [0u64; 2];
    for (i, task) in tasks.into_iter().enumerate() {
        admitted[i / TASKS] += task.await.unwrap();
    }
    let key = a.redis_key(&subject, &limit, clock.now());
    assert!(key.starts_with(&prefix), "{key}");
    let mut conn = raw(&url).await;
    settled(&mut conn, &key, "a", || {
        admitted[0] + a.lease(&subject, &limit)
    })
    .await;
    settled(&mut conn, &key, "b", || {
        admitted[1] + b.lease(&subject, &limit)
    })
    .await;
    let leases = [a.lease(&subject, &limit), b.lease(&subject, &limit)];
    let reserved = fields(&mut conn, &key).await;
    let total = admitted[0] + admitted[1];
    let (sa, sb) = (a.stats(), b.stats());
    eprintln!(
        "two nodes, limit 1000/1m, {} requests offered by {} tasks: admitted {} + {} = {total} \
         (overshoot {}), unspent leases {} + {}, reserved in Redis {:?}; round trips {} + {}, \
         local admits {} + {}, local refusals {} + {}, prefetches {} + {}",
        2 * TASKS as u64 * PER_TASK,
        2 * TASKS,
        admitted[0],
        admitted[1],
        total as i64 - 1000,
        leases[0],
        leases[1],
        reserved,
        sa.round_trips,
        sb.round_trips,
        sa.local_admits,
        sb.local_admits,
        sa.local_refusals,
        sb.local_refusals,
        sa.prefetches,
        sb.prefetches,
    );
    // No overshoot: everything admitted was reserved first, and all of the limit was reserved.
    assert!(total <= 1000);
    assert_eq!(reserved.values().sum::<u64>(), 1000);
    assert_eq!(reserved["a"], admitted[0] + leases[0]);
    assert_eq!(reserved["b"], admitted[1] + leases[1]);
    assert!(admitted[0] > 0 && admitted[1] > 0);
    // Most requests were decided without waiting for Redis.
    let offered = 2 * TASKS as u64 * PER_TASK;
    assert_eq!(
        sa.local_admits
            + sa.local_refusals
            + sa.round_trips
            + sb.local_admits
            + sb.local_refusals
            + sb.round_trips,
        offered
    );
    assert!(
        sa.round_trips + sb.round_trips < offered / 2,
        "{sa:?} {sb:?}"
    );
    // The key is namespaced and expires at the end of the next window (plus a minute).
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((60_000..=180_000).contains(&ttl), "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "set KEYGATE_TEST_REDIS=redis://127.0.0.1:6379 to run"
)]
async fn the_script_decides_as_the_core_does() {
    let url = redis_url();
    let prefix = format!("{}:", unique("kgtest"));
    let clock = Arc::new(FixedClock::new(t0()));
    let limiter = node(&url, &prefix, "judge", &clock).await;
    let mut conn = raw(&url).await;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let mut cases: Vec<(u64, u32, u64, u64, i64, u64)> = Vec::new();
    for _ in 0..400 {
        let n = 1 + random(60);
        let secs = [1, 10, 60][random(3) as usize];
        let (previous, current) = (random(2 * n + 2), random(n + 2));
        let elapsed = random(u64::from(secs) * 1000) as i64;
        cases.push((n, secs, previous, current, elapsed, 1 + random(n + 1)));
    }
    // Exact boundaries: half-way through the window the previous count weighs exactly half.
    for (previous, current, cost, n) in [
        (10, 4, 1, 10),
        (10, 4, 2, 10),
        (0, 9, 1, 10),
        (0, 10, 1, 10),
        (20, 0, 10, 20),
        (20, 0, 11, 20),
    ] {
        cases.push((n, 60, previous, current, 30_000, cost));
    }
    let mut allowed_cases = 0;
    for (i, &(n, secs, previous, current, elapsed, cost)) in cases.iter().enumerate() {
        let limit =
            RateLimit::new(n, keygate::core::limits::Window::from_secs(secs).unwrap()).unwrap();
        // Each case its own window far from the others, so that no two cases share a key.
        let now = at(i as i64 * 31 * 86_400_000 + elapsed);
        let subject = Subject::key(&KeyId::generate(t0()));
        let window_ms = i64::from(secs) * 1000;
        let current_key = limiter.redis_key(&subject, &limit, now);
        let previous_key = limiter.redis_key(
            &subject,
            &limit,
            Timestamp::from_unix_ms(now.unix_ms() - window_ms).unwrap(),
        );
        for (key, units) in [(&current_key, current), (&previous_key, previous)] {
            if units > 0 {
                let _: () = redis::pipe()
                    .cmd("HSET")
                    .arg(key)
                    .arg("other")
                    .arg(units)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(key)
                    .arg(60_000)
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        let state = WindowState {
            window: limit.window.index(now),
            current,
            previous,
        };
        let expected = state.fits(&limit, cost, now);
        let d = limiter.check(&[(&subject, &[limit])], cost, now).await;
        assert_eq!(
            d.allowed(),
            expected,
            "case {i}: limit {n}/{secs}s, previous {previous}, current {current}, {elapsed} ms in, cost {cost}"
        );
        let mine = fields(&mut conn, &current_key)
            .await
            .get("judge")
            .copied()
            .unwrap_or(0);
        if expected {
            allowed_cases += 1;
            let free = (n * 65_536
                - state.previous * state.previous_weight(limit.window, now)
                - current * 65_536)
                / 65_536;
            assert!(
                cost <= mine && mine <= free,
                "case {i}: reserved {mine}, free {free}"
            );
        } else {
            assert_eq!(mine, 0, "case {i}: a refusal reserves nothing");
        }
    }
    assert_eq!(limiter.health(), RedisHealth::Ok);
    assert!(
        allowed_cases > 50 && allowed_cases < cases.len() - 50,
        "{allowed_cases}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "set KEYGATE_TEST_REDIS=redis://127.0.0.1:6379 to run"
)]
async fn an_owner_limit_is_shared_by_its_keys_on_both_nodes() {
    let url = redis_url();
    let prefix = format!("{}:", unique("kgtest"));
    let clock = Arc::new(FixedClock::new(t0()));
    let a = node(&url, &prefix, "a", &clock).await;
    let b = node(&url, &prefix, "b", &clock).await;
    let owner = Subject::owner(&unique("acme"));
    let (one, two) = (
        Subject::key(&KeyId::generate(t0())),
        Subject::key(&KeyId::generate(t0())),
    );
    let (key_limits, owner_limits) = ([limit("10/1m")], [limit("15/1m")]);
    let mut admitted = [0u64; 2];
    let mut last = None;
    for _ in 0..12 {
        for (i, (limiter, key)) in [(&a, &one), (&b, &two)].into_iter().enumerate() {
            let d = limiter
                .check(
                    &[(key, &key_limits), (&owner, &owner_limits)],
                    1,
                    clock.now(),
                )
                .await;
            admitted[i] += u64::from(d.allowed());
            last = Some(d);
        }
    }
    assert_eq!(admitted[0] + admitted[1], 15, "{admitted:?}");
    assert!(admitted[0] <= 10 && admitted[1] <= 10);
    let last = last.unwrap();
    assert!(!last.allowed());
    let owner_status = &last.limits()[1];
    assert_eq!(
        (owner_status.remaining, owner_status.retry_after.is_some()),
        (0, true)
    );
    assert_eq!(
        last.limits()[0].retry_after,
        None,
        "the key itself had room"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "set KEYGATE_TEST_REDIS=redis://127.0.0.1:6379 to run"
)]
async fn windows_roll_over_and_unused_leases_go_back() {
    let url = redis_url();
    let prefix = format!("{}:", unique("kgtest"));
    let clock = Arc::new(FixedClock::new(t0()));
    let a = node(&url, &prefix, "a", &clock).await;
    let subject = Subject::key(&KeyId::generate(t0()));
    let limit = limit("100/1m");
    let limits = [limit];
    for _ in 0..20 {
        assert!(
            a.check(&[(&subject, &limits)], 1, clock.now())
                .await
                .allowed()
        );
    }
    let first_key = a.redis_key(&subject, &limit, clock.now());
    let mut conn = raw(&url).await;
    settled(&mut conn, &first_key, "a", || {
        20 + a.lease(&subject, &limit)
    })
    .await;
    assert!(
        a.lease(&subject, &limit) > 0,
        "a steady stream holds a lease"
    );
    // Half-way through the next window: the unused lease goes back to the first window's
    // count, and its 20 weigh 10.
    clock.set(at(90_000));
    let d = a.check(&[(&subject, &limits)], 1, clock.now()).await;
    assert!(d.allowed());
    assert_eq!(d.limits()[0].remaining, 100 - 10 - 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fields(&mut conn, &first_key).await["a"] != 20 {
        assert!(
            Instant::now() < deadline,
            "the unused lease was not given back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second_key = a.redis_key(&subject, &limit, clock.now());
    assert_ne!(first_key, second_key);
    assert_eq!(
        fields(&mut conn, &second_key).await["a"],
        1 + a.lease(&subject, &limit)
    );
}

/// A `redis-server` of this test's own, on a free port, without persistence.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_lines(node: &str, text: &str) -> usize {
    let logs = super::captured_logs().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(node) && l.contains(text))
        .count()
}

async fn until_healthy(limiters: &[&RedisLimiter]) -> Duration {
    let start = Instant::now();
    while limiters.iter().any(|l| l.health() != RedisHealth::Ok) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "Redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "set KEYGATE_TEST_REDIS=redis://127.0.0.1:6379 to run"
)]
async fn redis_killed_and_restarted_mid_run() {
    super::captured_logs();
    let mut server = OwnRedis::start();
    server.wait_until_ready().await;
    let url = server.url();
    let prefix = format!("{}:", unique("kgtest"));
    let clock = Arc::new(FixedClock::new(t0()));
    let (na, nb) = (unique("node-a"), unique("node-b"));
    let a = node(&url, &prefix, &na, &clock).await;
    let b = node(&url, &prefix, &nb, &clock).await;
    assert_eq!((a.health(), b.health()), (RedisHealth::Ok, RedisHealth::Ok));
    let subject = Subject::key(&KeyId::generate(t0()));
    let limit = limit("100/1m");
    let limits = [limit];
    let request = [(&subject, &limits[..])];
    for _ in 0..30 {
        assert!(a.check(&request, 1, clock.now()).await.allowed());
        assert!(b.check(&request, 1, clock.now()).await.allowed());
    }

    server.kill();
    // `a` keeps answering; it finds Redis gone on its next round trip (or probe) and counts
    // on its own from then on. Every call returns a decision: there is no error to return.
    let mut admitted_a = 30;
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let started = Instant::now();
        let d = a.check(&request, 1, clock.now()).await;
        slowest = slowest.max(started.elapsed());
        admitted_a += u64::from(d.allowed());
    }
    let RedisHealth::Degraded { since, error } = a.health() else {
        panic!("a did not notice that Redis is gone");
    };
    assert_eq!(since, clock.now());
    eprintln!("degraded: {error}");
    assert!(
        admitted_a > 30 && admitted_a <= 100,
        "local counting stops at the limit: {admitted_a}"
    );
    assert!(!a.check(&request, 1, clock.now()).await.allowed());
    let stats = a.stats();
    assert_eq!(
        stats.degraded, 1,
        "one transition however many failures: {stats:?}"
    );
    assert!(stats.degraded_decisions > 0);
    assert_eq!(log_lines(&na, "Redis is unreachable"), 1);
    // A node that starts while Redis is down serves too, counting on its own.
    let c = node(&url, &prefix, &unique("node-c"), &clock).await;
    assert!(matches!(c.health(), RedisHealth::Degraded { .. }));
    let other = Subject::key(&KeyId::generate(t0()));
    let mut admitted_c = 0;
    for _ in 0..150 {
        admitted_c += u64::from(
            c.check(&[(&other, &limits)], 1, clock.now())
                .await
                .allowed(),
        );
    }
    assert_eq!(admitted_c, 100);

    let restarted = Instant::now();
    server.restart();
    until_healthy(&[&a, &b]).await;
    let recovery = restarted.elapsed();
    eprintln!(
        "Redis restarted: both nodes shared again after {recovery:?} (a: {admitted_a} admitted, \
         slowest check while Redis was going away {slowest:?})"
    );
    assert_eq!(log_lines(&na, "Redis is reachable again"), 1);
    assert_eq!(a.stats().recovered, 1);

    // The restarted (empty) Redis holds both nodes' counts again: written back.
    let mut conn = raw(&url).await;
    let key = a.redis_key(&subject, &limit, clock.now());
    settled(&mut conn, &key, &na, || {
        admitted_a + a.lease(&subject, &limit)
    })
    .await;
    settled(&mut conn, &key, &nb, || 30 + b.lease(&subject, &limit)).await;
    let reserved = fields(&mut conn, &key).await;
    let lease_b = b.lease(&subject, &limit);
    // And they are used: b spends its lease and what the limit has left, no more.
    let sum: u64 = reserved.values().sum();
    let expected_b = (lease_b + 100u64.saturating_sub(sum)).min(50);
    let mut admitted_b = 0;
    for _ in 0..50 {
        admitted_b += u64::from(b.check(&request, 1, clock.now()).await.allowed());
    }
    assert_eq!(admitted_b, expected_b, "sum {sum}, lease {lease_b}");
    assert_eq!(b.health(), RedisHealth::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "set KEYGATE_TEST_REDIS=redis://127.0.0.1:6379 to run"
)]
async fn counts_lost_by_redis_are_noticed_and_written_back() {
    super::captured_logs();
    let url = redis_url();
    let prefix = format!("{}:", unique("kgtest"));
    let clock = Arc::new(FixedClock::new(t0()));
    let na = unique("node-a");
    let a = node(&url, &prefix, &na, &clock).await;
    let subject = Subject::key(&KeyId::generate(t0()));
    let limit = limit("1000/1m");
    let limits = [limit];
    for _ in 0..20 {
        assert!(
            a.check(&[(&subject, &limits)], 1, clock.now())
                .await
                .allowed()
        );
    }
    let key = a.redis_key(&subject, &limit, clock.now());
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The next script call (a request's or a prefetch) finds this node's field missing:
    // Redis lost it, as a restart without persistence would.
    let mut admitted = 20;
    while a.health() == RedisHealth::Ok {
        assert!(
            a.check(&[(&subject, &limits)], 1, clock.now())
                .await
                .allowed()
        );
        admitted += 1;
        assert!(admitted < 1000, "the loss went unnoticed");
    }
    let RedisHealth::Degraded { error, .. } = a.health() else {
        unreachable!()
    };
    assert_eq!(
        error,
        "Redis lost this node's counts (restarted without persistence?)"
    );
    until_healthy(&[&a]).await;
    settled(&mut conn, &key, &na, || {
        admitted + a.lease(&subject, &limit)
    })
    .await;
    assert_eq!(log_lines(&na, "Redis is reachable again"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "set KEYGATE_TEST_REDIS=redis://127.0.0.1:6379 to run"
)]
async fn a_restart_between_requests_is_noticed_by_the_probe() {
    super::captured_logs();
    let mut server = OwnRedis::start();
    server.wait_until_ready().await;
    let url = server.url();
    let prefix = format!("{}:", unique("kgtest"));
    let clock = Arc::new(FixedClock::new(t0()));
    let na = unique("node-a");
    let a = node(&url, &prefix, &na, &clock).await;
    let subject = Subject::key(&KeyId::generate(t0()));
    let limit = limit("1000/1m");
    for _ in 0..20 {
        assert!(
            a.check(&[(&subject, &[limit])], 1, clock.now())
                .await
                .allowed()
        );
    }
    // Restarted with no request in between: only the probe can notice (the connection broke,
    // or Redis' run_id changed).
    server.kill();
    server.restart();
    server.wait_until_ready().await;
    // Back, and the counts are in the new Redis again.
    let key = a.redis_key(&subject, &limit, clock.now());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = raw(&url).await;
    settled(&mut conn, &key, &na, || 20 + a.lease(&subject, &limit)).await;
    while a.health() != RedisHealth::Ok {
        assert!(Instant::now() < deadline, "not back: {:?}", a.health());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = a.stats();
    assert!(stats.degraded >= 1 && stats.recovered >= 1, "{stats:?}");
    assert!(log_lines(&na, "Redis is unreachable") >= 1);
}

/// Credits are exact on the database: 16 clients spending one key's 200 credits through two
/// nodes (two `Keygate`s on the real PostgreSQL, each with its own pool and cache) let exactly
/// 200 requests through, and the balance ends at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_are_exact_across_two_nodes_under_16_clients() {
    use keygate::core::limits::Quota;
    use keygate::core::{Audit, KeySpec, Outcome};
    let url = keygate_store::testing::fresh_postgres_url().await;
    let clock = Arc::new(FixedClock::new(t0()));
    let node = || async {
        keygate::Keygate::builder(keygate::open(&url).await.unwrap())
            .clock(clock.clone())
            .build()
    };
    let (a, b) = (node().await, node().await);
    let spec = KeySpec {
        name: "metered".into(),
        quota: Some(Quota::new(200, None, t0()).unwrap()),
        ..KeySpec::default()
    };
    let (record, key) = a.issue(spec, &Audit::library()).await.unwrap();
    let key = Arc::new(key.expose().to_owned());
    let mut clients = Vec::new();
    for client in 0..16 {
        let node = if client % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        let key = key.clone();
        clients.push(tokio::spawn(async move {
            let (mut allowed, mut refused) = (0u32, 0u32);
            for _ in 0..30 {
                let v = node.verify(&key, &[] as &[&str]).await.unwrap();
                match v.outcome {
                    Outcome::Valid => allowed += 1,
                    Outcome::UsageExceeded => refused += 1,
                    other => panic!("{other:?}"),
                }
            }
            (allowed, refused)
        }));
    }
    let (mut allowed, mut refused) = (0, 0);
    for client in clients {
        let (a, r) = client.await.unwrap();
        allowed += a;
        refused += r;
    }
    assert_eq!(allowed, 200, "exactly the balance, across both nodes");
    assert_eq!(refused, 16 * 30 - 200);
    let left = b.get(&record.id).await.unwrap().unwrap();
    assert_eq!(left.limits.quota.unwrap().remaining, 0);
}
