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
    // When to come back: the daily refill, at the next 00:00 UTC.
    const DAY_MS: i64 = 86_400_000;
    let until_midnight = (DAY_MS - app.now().unix_ms().rem_euclid(DAY_MS) + 999) / 1000;
    assert_eq!(out["credits_refill_in"], until_midnight, "{out}");
    // Through the layer: 429 USAGE_EXCEEDED, with the same wait as Retry-After.
    let refused = app.get("/v1/keys?limit=1", &key);
    refused.problem(429, "USAGE_EXCEEDED");
    assert_eq!(
        refused.header("retry-after"),
        Some(until_midnight.to_string().as_str())
    );
    // A second later, a second less to wait (the clock starts at the wall clock's time: not
    // when that is the day's last second).
    let mut exhausted = 2;
    if until_midnight > 1 {
        exhausted += 1;
        app.advance("1s");
        let later = verify_with(&app, &key, json!({}));
        assert_eq!(later["credits_refill_in"], until_midnight - 1, "{later}");
    }
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
        metrics.contains(&format!("keygate_quota_exhausted_total {exhausted}")),
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
    // A generous Redis timeout: on a loaded machine a reply can take more than the default
    // 100 ms, and a node that stops waiting counts on its own (limits per node), which this
    // test is not about (see crates/keygate/tests/limits for that).
    let shared = ["--redis", redis.as_str(), "--redis-timeout", "5s"];
    let a = App::on_url(&database, &shared, dir.path().join("a"));
    let b = App::on_url(&database, &shared, dir.path().join("b"));
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

#[test]
fn an_owners_limits_are_shared_by_its_keys_and_apply_at_once() {
    let app = App::new(&[]);
    let make = |owner: &str| {
        let made = app.create(json!({"name": "k", "owner": owner, "scopes": ["keygate:read"]}));
        made["key"].as_str().unwrap().to_owned()
    };
    let (a, b, other) = (make("acct_9"), make("acct_9"), make("acct_10"));
    // Used (and cached) before the owner has limits.
    for key in [&a, &b] {
        assert_eq!(verify_with(&app, key, json!({}))["code"], "VALID");
    }
    let shown = app.get("/v1/owners/acct_9", &app.admin).expect(200);
    assert_eq!(shown["rate_limits"], json!([]));
    assert_eq!(shown["updated_at"], Value::Null);
    let set = app
        .json(
            "PUT",
            "/v1/owners/acct_9",
            &app.admin,
            &json!({"rate_limits": [{"name": "team", "limit": 4, "window": "1h"}]}),
        )
        .expect(200);
    assert_eq!(set["rate_limits"][0]["name"], "team");
    // Four requests between both keys, whichever key makes them; then both are refused.
    let mut allowed = 0;
    for i in 0..8 {
        let key = if i % 2 == 0 { &a } else { &b };
        let answer = verify_with(&app, key, json!({}));
        match answer["code"].as_str().unwrap() {
            "VALID" => allowed += 1,
            "RATE_LIMITED" => {
                let owner_limit = answer["limits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|l| l["scope"] == "owner")
                    .unwrap()
                    .clone();
                assert_eq!(owner_limit["name"], "team", "{answer}");
                assert_eq!(owner_limit["remaining"], 0, "{answer}");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(allowed, 4);
    // Through the layer: 429, and the owner's limit in the headers.
    let refused = app.get("/v1/keys?limit=1", &a);
    refused.problem(429, "RATE_LIMITED");
    assert!(
        refused
            .header("ratelimit-policy")
            .unwrap()
            .contains("\"owner:team\";q=4;w=3600"),
        "{refused:?}"
    );
    // Another owner's key is not touched.
    assert_eq!(verify_with(&app, &other, json!({}))["code"], "VALID");
    // The key shows its owner's limits.
    let keys = app.get("/v1/keys?owner=acct_9", &app.admin).expect(200);
    assert_eq!(
        keys["items"][0]["owner_rate_limits"][0]["limit"], 4,
        "{keys}"
    );

    // From the CLI: shown, removed (audited each time), and the keys are free again at once.
    let (code, printed) = app.cli(&["owners", "show", "acct_9", "--json"]);
    assert_eq!(code, 0, "{printed}");
    assert_eq!(
        serde_json::from_str::<Value>(&printed).unwrap()["rate_limits"][0]["limit"],
        4
    );
    let (code, printed) = app.cli(&["owners", "set", "acct_9", "--no-rate"]);
    assert_eq!(code, 0, "{printed}");
    assert_eq!(verify_with(&app, &a, json!({}))["code"], "VALID");
    let events = app
        .get("/v1/audit?type=owner.updated", &app.admin)
        .expect(200);
    assert_eq!(events["items"].as_array().unwrap().len(), 2, "{events}");
    // Bad input: a clear 400, nothing stored.
    app.json(
        "PUT",
        "/v1/owners/acct_9",
        &app.admin,
        &json!({"rate_limits": [{"limit": 0, "window": "1h"}]}),
    )
    .problem(400, "BAD_REQUEST");
    let (code, printed) = app.cli(&["owners", "set", " ", "--rate", "5/1m"]);
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("owner"), "{printed}");

    // The admin UI's owner page: shown, and a key admin sets the limits there.
    let mut ui = crate::admin::Ui::new(&app);
    assert_eq!(ui.sign_in_key(&app.admin).status, 303);
    let page = ui.get("/admin/owners/acct_9");
    assert_eq!(page.status, 200);
    let csrf = crate::admin::Ui::csrf(&page);
    let saved = ui.post(
        "/admin/owners/acct_9",
        &[("csrf", &csrf), ("rate_limits", "7/1m, 100/1d")],
    );
    assert_eq!(saved.status, 303, "{}", saved.text());
    let page = ui.get("/admin/owners/acct_9").text();
    assert!(page.contains("7/1m, 100/1d"), "{page}");
    let key_page = ui.get(&format!(
        "/admin/keys/{}",
        keys["items"][0]["id"].as_str().unwrap()
    ));
    assert!(
        key_page.text().contains("shared with the owner"),
        "{}",
        key_page.text()
    );
    let bad = ui.post(
        "/admin/owners/acct_9",
        &[("csrf", &csrf), ("rate_limits", "lots")],
    );
    assert_eq!(bad.status, 400);
    assert_eq!(
        app.get("/v1/owners/acct_9", &app.admin).expect(200)["rate_limits"][0]["limit"],
        7
    );
}
