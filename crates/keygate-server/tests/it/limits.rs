//! Usage controls through the service: rate limits (429, `Retry-After`, `RateLimit` headers,
//! costs, windows moved by the fixed clock), credits (exhaustion, refill by the CLI and the
//! scheduler's job, audited), IP allowlists (IPv4, IPv6, trusted proxy hops, a forged
//! `X-Forwarded-For`), their metrics, and two nodes sharing limits through the real Redis.

use serde_json::{Value, json};

use crate::support::*;

/// `POST /v1/verify` of `key` with `extra` fields (cost, ip); asserts 200.
fn verify_with(app: &App, key: &str, extra: Value) -> Value {
    let mut body = json!({"key": key, "scopes": []});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.json("POST", "/v1/verify", &app.admin, &body)
        .expect(200)
}

/// A key with `limits` (rate_limits, quota, allowed_ips) and `keygate:read`; its plaintext.
fn key_with(app: &App, limits: Value) -> (String, String) {
    let mut body = json!({"name": "limited", "scopes": ["keygate:read"]});
    body.as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    let made = app.create(body);
    (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn a_rate_limit_refuses_at_exactly_n_with_its_headers_and_its_window_rolls_over() {
    let app = App::new(&[]);
    let (key, _) = key_with(
        &app,
        json!({"rate_limits": [{"name": "burst", "limit": 3, "window": "1m"}]}),
    );
    for left in [2, 1, 0] {
        let reply = app.get("/v1/keys?limit=1", &key);
        reply.expect(200);
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"burst\";q=3;w=60"),
            "{reply:?}"
        );
        let state = reply.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!("\"burst\";r={left};t=")),
            "{state}"
        );
    }
    // The fourth in the window: 429 RATE_LIMITED, Retry-After, the headers, the problem.
    let refused = app.get("/v1/keys?limit=1", &key);
    let problem = refused.problem(429, "RATE_LIMITED");
    // A sliding window: the previous window still weighs until its share drops enough, so
    // the wait can exceed what is left of this window (never two windows).
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
    assert!(
        refused.header("ratelimit").unwrap().contains(";r=0;"),
        "{refused:?}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("burst"),
        "{problem}"
    );
    assert_eq!(app.get("/v1/keys?limit=1", &key).status, 429);

    // Waiting out the Retry-After (on the clock, not by sleeping) lets one through again...
    app.advance(&format!("{retry}s"));
    app.get("/v1/keys?limit=1", &key).expect(200);
    // ...and two windows later the whole limit is back.
    app.advance("2m");
    for _ in 0..3 {
        app.get("/v1/keys?limit=1", &key).expect(200);
    }
    assert_eq!(app.get("/v1/keys?limit=1", &key).status, 429);

    // Refusals are counted by limit, and keys without limits get no headers.
    let metrics = app.send("GET", "/metrics", None, None).text();
    assert!(
        metrics.contains("keygate_rate_limited_total{scope=\"key\",limit=\"burst\"} 3"),
        "{metrics}"
    );
    let plain = app.get("/v1/keys?limit=1", &app.admin);
    assert_eq!(plain.header("ratelimit"), None);
}

#[test]
fn costs_are_spent_together_and_a_refused_request_spends_nothing() {
    let app = App::new(&[]);
    let (key, _) = key_with(
        &app,
        json!({"rate_limits": [
            {"name": "minute", "limit": 10, "window": "1m"},
            {"name": "hour", "limit": 12, "window": "1h"},
        ]}),
    );
    let answer = verify_with(&app, &key, json!({"cost": 4}));
    assert_eq!(answer["code"], "VALID", "{answer}");
    let remaining = |answer: &Value, name: &str| {
        answer["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()["remaining"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(remaining(&answer, "minute"), 6);
    assert_eq!(remaining(&answer, "hour"), 8);
    // 7 is over the minute's 6: refused, and neither limit spends it.
    let over = verify_with(&app, &key, json!({"cost": 7}));
    assert_eq!(over["code"], "RATE_LIMITED", "{over}");
    assert_eq!(over["valid"], false);
    assert!(
        over["detail"].as_str().unwrap().contains("minute"),
        "{over}"
    );
    let exact = verify_with(&app, &key, json!({"cost": 6}));
    assert_eq!(exact["code"], "VALID", "{exact}");
    assert_eq!(remaining(&exact, "minute"), 0);
    assert_eq!(remaining(&exact, "hour"), 2);
    // Cost 0 checks without spending; the minute is full but 0 fits.
    assert_eq!(verify_with(&app, &key, json!({"cost": 0}))["code"], "VALID");
    // A new minute: the hour's 2 left is now the binding limit.
    app.advance("2m");
    assert_eq!(
        verify_with(&app, &key, json!({"cost": 3}))["code"],
        "RATE_LIMITED"
    );
    assert_eq!(verify_with(&app, &key, json!({"cost": 2}))["code"], "VALID");
    // Bad costs are 400s, not refusals.
    app.json(
        "POST",
        "/v1/verify",
        &app.admin,
        &json!({"key": key, "cost": 1_000_000_001u64}),
    )
    .problem(400, "BAD_REQUEST");
}

#[test]
fn credits_run_out_then_are_refilled_once_audited() {
    let app = App::new(&[]);
    let (key, id) = key_with(
        &app,
        json!({"quota": {"remaining": 3, "refill": {"amount": 5, "every": "day"}}}),
    );
    for left in [2, 1, 0] {
        let answer = verify_with(&app, &key, json!({}));
        assert_eq!(answer["code"], "VALID", "{answer}");
        assert_eq!(answer["credits_remaining"], left, "{answer}");
    }
    let out = verify_with(&app, &key, json!({}));
    assert_eq!(out["code"], "USAGE_EXCEEDED", "{out}");
    assert_eq!(out["credits_remaining"], 0);
    // Through the layer: 429 USAGE_EXCEEDED.
    app.get("/v1/keys?limit=1", &key)
        .problem(429, "USAGE_EXCEEDED");
    let shown = app.get(&format!("/v1/keys/{id}"), &app.admin).expect(200);
    assert_eq!(shown["quota"]["remaining"], 0, "{shown}");

    // Not due yet: nothing refilled.
    let (code, printed) = app.cli(&["refill", "--json"]);
    assert_eq!(code, 0, "{printed}");
    assert_eq!(
        serde_json::from_str::<Value>(&printed).unwrap()["refilled"],
        0
    );
    // The next day (00:00 UTC has passed): refilled once, however often asked.
    app.advance("1d");
    let (code, printed) = app.cli(&["refill", "--json"]);
    assert_eq!(code, 0, "{printed}");
    assert_eq!(
        serde_json::from_str::<Value>(&printed).unwrap()["refilled"],
        1
    );
    let again = app.block_on(keygate_server::jobs::scheduler::refill_once(app.keygate()));
    assert_eq!(again.unwrap(), 0);
    let answer = verify_with(&app, &key, json!({"cost": 2}));
    assert_eq!(answer["code"], "VALID", "{answer}");
    assert_eq!(answer["credits_remaining"], 3);
    let events = app
        .get(
            &format!("/v1/audit?type=key.quota_refilled&key_id={id}"),
            &app.admin,
        )
        .expect(200);
    assert_eq!(events["items"].as_array().unwrap().len(), 1, "{events}");

    // The scheduler's job refills too, a day later.
    app.advance("1d");
    let refilled = app.block_on(keygate_server::jobs::scheduler::refill_once(app.keygate()));
    assert_eq!(refilled.unwrap(), 1);
    assert_eq!(verify_with(&app, &key, json!({}))["credits_remaining"], 4);
    let metrics = app.send("GET", "/metrics", None, None).text();
    assert!(
        metrics.contains("keygate_quota_exhausted_total 2"),
        "{metrics}"
    );
}

#[test]
fn ip_allowlists_for_ipv4_and_ipv6() {
    let app = App::new(&[]);
    let (key, _) = key_with(
        &app,
        json!({"allowed_ips": ["203.0.113.0/24", "2001:db8::/32"]}),
    );
    for (ip, code) in [
        ("203.0.113.7", "VALID"),
        ("203.0.114.7", "IP_NOT_ALLOWED"),
        ("2001:db8:ffff::1", "VALID"),
        ("2001:db9::1", "IP_NOT_ALLOWED"),
        ("::ffff:203.0.113.7", "VALID"),
    ] {
        let answer = verify_with(&app, &key, json!({"ip": ip}));
        assert_eq!(answer["code"], code, "{ip}: {answer}");
    }
    // No address given: a key with an allowlist cannot be used.
    assert_eq!(verify_with(&app, &key, json!({}))["code"], "IP_NOT_ALLOWED");
    app.json(
        "POST",
        "/v1/verify",
        &app.admin,
        &json!({"key": key, "ip": "not-an-address"}),
    )
    .problem(400, "BAD_REQUEST");
    // Through the layer the socket peer (192.0.2.10) is the client: refused, 403, and a
    // forwarded address is not believed without trusted proxies.
    app.get("/v1/keys?limit=1", &key)
        .problem(403, "IP_NOT_ALLOWED");
    let forged = app.raw(
        "GET",
        "/v1/keys?limit=1",
        &[
            (
                "authorization".into(),
                format!("Api-Key {key}").into_bytes(),
            ),
            ("x-forwarded-for".into(), b"203.0.113.7".to_vec()),
        ],
        None,
    );
    forged.problem(403, "IP_NOT_ALLOWED");
}

#[test]
fn behind_trusted_proxies_the_client_is_the_first_untrusted_hop_from_the_right() {
    // The in-process peer 192.0.2.10 is the trusted proxy, and so is 10.0.0.0/8 inside.
    let app = App::new(&["--trusted-proxies", "192.0.2.10,10.0.0.0/8"]);
    let (key, _) = key_with(&app, json!({"allowed_ips": ["203.0.113.0/24"]}));
    let with_xff = |xff: &[&str]| {
        let mut headers = vec![(
            "authorization".to_owned(),
            format!("Api-Key {key}").into_bytes(),
        )];
        for value in xff {
            headers.push(("x-forwarded-for".into(), value.as_bytes().to_vec()));
        }
        app.raw("GET", "/v1/keys?limit=1", &headers, None).status
    };
    // The proxy appended the client's address: allowed.
    assert_eq!(with_xff(&["203.0.113.7"]), 200);
    // Two trusted hops (10.1.2.3 then the peer): still the client's address.
    assert_eq!(with_xff(&["203.0.113.7, 10.1.2.3"]), 200);
    // Split over two header lines, as proxies may send it.
    assert_eq!(with_xff(&["203.0.113.7", "10.1.2.3"]), 200);
    // The client forged an allowed address; the proxy appended the real one: refused.
    assert_eq!(with_xff(&["203.0.113.7, 198.51.100.9"]), 403);
    // No header: the peer (the proxy itself) is the client, and it is not allowed.
    assert_eq!(with_xff(&[]), 403);
    // Garbage in the header is not an address: the hop before it is not believed either.
    assert_eq!(with_xff(&["203.0.113.7, garbage"]), 403);
}

/// Two nodes (two services in this process) on the real PostgreSQL, sharing rate limits
/// through the real Redis: one limit for both, not one each; credits exact on the database.
#[test]
fn two_nodes_share_one_rate_limit_through_redis_and_credits_stay_exact() {
    let database = keygate_testkit::postgres::fresh_url();
    let redis = std::env::var("KEYGATE_TEST_REDIS").expect("KEYGATE_TEST_REDIS");
    let dir = tempfile::tempdir().unwrap();
    let a = App::on_url(&database, &["--redis", &redis], dir.path().join("a"));
    let b = App::on_url(&database, &["--redis", &redis], dir.path().join("b"));
    for node in [&a, &b] {
        let ready = node.send("GET", "/readyz", None, None).expect(200);
        assert_eq!(ready["rate_limits"], "shared", "{ready}");
    }
    let (key, _) = key_with(
        &a,
        json!({"rate_limits": [{"limit": 100, "window": "1h"}], "quota": {"remaining": 1000}}),
    );
    let verify_on = |node: &App| {
        let answer = node
            .json(
                "POST",
                "/v1/verify",
                &a.admin,
                &json!({"key": key, "scopes": []}),
            )
            .expect(200);
        answer["code"].as_str().unwrap().to_owned()
    };
    let mut allowed = 0;
    for i in 0..300 {
        let node = if i % 2 == 0 { &a } else { &b };
        match verify_on(node).as_str() {
            "VALID" => allowed += 1,
            "RATE_LIMITED" => {}
            other => panic!("{other}"),
        }
    }
    // Never more than the one limit; an unused lease held by the other node may refuse a
    // little early.
    assert!(
        allowed <= 100,
        "{allowed} allowed of a 100/h limit on two nodes"
    );
    assert!(allowed >= 90, "only {allowed} allowed of a 100/h limit");
    // Credits were spent only by the admitted requests, exactly, on the database.
    let shown = b
        .json(
            "POST",
            "/v1/verify",
            &a.admin,
            &json!({"key": key, "cost": 0}),
        )
        .expect(200);
    assert_eq!(shown["credits_remaining"], 1000 - allowed, "{shown}");
    let metrics = a.send("GET", "/metrics", None, None).text();
    assert!(
        metrics.contains("keygate_ratelimit_redis_up 1"),
        "{metrics}"
    );
}
