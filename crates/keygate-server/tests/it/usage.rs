//! Usage you can see: requests counted per key and hour by outcome, written by the usage flush
//! (no write per request), read by hour and by day for a key and for an owner, purged after
//! the retention period; `keygate keys usage`; the chart on the admin key page.

use keygate::core::usage::{day_of, hour_of};
use serde_json::{Value, json};

use crate::support::*;

/// A key of `owner` (with `extra` fields); its plaintext and id.
fn key_of(app: &App, owner: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": "counted", "owner": owner, "scopes": ["orders:read"]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let made = app.create(body);
    (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    )
}

fn flush(app: &App) {
    app.block_on(app.keygate().flush_usage()).unwrap();
}

/// `GET path` with the admin key; asserts 200.
fn usage(app: &App, path: &str) -> Value {
    app.get(path, &app.admin).expect(200)
}

fn column(report: &Value, pick: impl Fn(&Value) -> u64) -> Vec<u64> {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(pick)
        .collect()
}

#[test]
fn requests_are_counted_by_hour_and_day_refusals_by_code_and_owners_add_up() {
    let app = App::new(&["--usage-flush", "1h"]);
    let start = hour_of(app.now());
    let (a, a_id) = key_of(&app, "acme", json!({}));
    let (b, b_id) = key_of(&app, "acme", json!({}));
    let (c, _) = key_of(&app, "globex", json!({}));
    let (d, d_id) = key_of(
        &app,
        "acme",
        json!({"rate_limits": [{"name": "slow", "limit": 1, "window": "1h"}]}),
    );
    // Hour 0: A verified 3 times and refused a scope once; C verified once; D once, then
    // rate-limited twice.
    for _ in 0..3 {
        assert_eq!(app.verify(&app.admin, &a, &["orders:read"])["valid"], true);
    }
    assert_eq!(
        app.verify(&app.admin, &a, &["orders:write"])["code"],
        "INSUFFICIENT_SCOPE"
    );
    app.verify(&app.admin, &c, &[]);
    for code in ["VALID", "RATE_LIMITED", "RATE_LIMITED"] {
        assert_eq!(app.verify(&app.admin, &d, &[])["code"], code);
    }
    // Requests that name no key are not counted anywhere.
    let unknown = keygate::core::generate(&keygate::core::Prefix::default());
    assert_eq!(
        app.verify(&app.admin, unknown.expose(), &[])["code"],
        "NOT_FOUND"
    );
    assert_eq!(
        app.verify(&app.admin, "kg_nonsense", &[])["code"],
        "MALFORMED"
    );
    // Nothing is written before the flush.
    let since = start.to_rfc3339();
    let before = usage(&app, &format!("/v1/keys/{a_id}/usage?since={since}"));
    assert!(
        column(&before, |i| i["verified"].as_u64().unwrap())
            .iter()
            .all(|n| *n == 0)
    );
    flush(&app);

    // Hour 1: A verified twice, B once, then B revoked and refused.
    app.advance("1h");
    app.verify(&app.admin, &a, &[]);
    app.verify(&app.admin, &a, &[]);
    app.verify(&app.admin, &b, &[]);
    app.json(
        "POST",
        &format!("/v1/keys/{b_id}/revoke"),
        &app.admin,
        &json!({}),
    )
    .expect(200);
    assert_eq!(app.verify(&app.admin, &b, &[])["code"], "REVOKED");
    let metrics = app.get("/metrics", &app.admin).text();
    assert!(
        metrics.contains("\nkeygate_usage_rows_waiting "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("\nkeygate_usage_rows_waiting 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nkeygate_usage_dropped_total 0\n"),
        "{metrics}"
    );
    flush(&app);
    flush(&app); // a second flush adds nothing
    let metrics = app.get("/metrics", &app.admin).text();
    // Only the /metrics request itself (the admin key) may wait now.
    assert!(
        metrics.contains("\nkeygate_usage_rows_waiting 0\n")
            || metrics.contains("\nkeygate_usage_rows_waiting 1\n"),
        "{metrics}"
    );

    let hours = usage(
        &app,
        &format!("/v1/keys/{a_id}/usage?since={since}&bucket=hour"),
    );
    assert_eq!(hours["bucket"], "hour");
    assert_eq!(hours["since"], since);
    let items = hours["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{hours}");
    assert_eq!(items[0]["start"], since);
    assert_eq!(column(&hours, |i| i["verified"].as_u64().unwrap()), [3, 2]);
    assert_eq!(
        column(&hours, |i| i["refused"]["INSUFFICIENT_SCOPE"]
            .as_u64()
            .unwrap()),
        [1, 0]
    );
    assert_eq!(
        items[0]["refused"],
        json!({"REVOKED": 0, "EXPIRED": 0, "DISABLED": 0, "INSUFFICIENT_SCOPE": 1,
               "USAGE_EXCEEDED": 0, "IP_NOT_ALLOWED": 0})
    );
    let limited = usage(&app, &format!("/v1/keys/{d_id}/usage?since={since}"));
    assert_eq!(
        column(&limited, |i| i["verified"].as_u64().unwrap()),
        [1, 0]
    );
    assert_eq!(
        column(&limited, |i| i["rate_limited"].as_u64().unwrap()),
        [2, 0]
    );

    // By day: the day holding hour 0 (and hour 1, or the next day when hour 0 was 23:00).
    let days = usage(
        &app,
        &format!("/v1/keys/{a_id}/usage?since={since}&bucket=day"),
    );
    assert_eq!(days["bucket"], "day");
    let verified: u64 = column(&days, |i| i["verified"].as_u64().unwrap())
        .iter()
        .sum();
    assert_eq!(verified, 5);
    let next_hour = keygate::core::Timestamp::from_unix_ms(start.unix_ms() + 3_600_000).unwrap();
    let first_day = if day_of(start) == day_of(next_hour) {
        5
    } else {
        3
    };
    assert_eq!(days["items"][0]["verified"], first_day);
    assert_eq!(days["items"][0]["start"], day_of(start).to_rfc3339());

    // The owner: A + B + D, not C.
    let acme = usage(&app, &format!("/v1/owners/acme/usage?since={since}"));
    assert_eq!(
        column(&acme, |i| i["verified"].as_u64().unwrap()),
        [3 + 1, 2 + 1]
    );
    assert_eq!(
        column(&acme, |i| i["refused"]["REVOKED"].as_u64().unwrap()),
        [0, 1]
    );
    assert_eq!(
        column(&acme, |i| i["rate_limited"].as_u64().unwrap()),
        [2, 0]
    );
    let globex = usage(
        &app,
        &format!("/v1/owners/globex/usage?since={since}&bucket=day"),
    );
    let verified: u64 = column(&globex, |i| i["verified"].as_u64().unwrap())
        .iter()
        .sum();
    assert_eq!(verified, 1);
    let nobody = usage(&app, "/v1/owners/nobody%20at%20all/usage");
    assert_eq!(nobody["items"].as_array().unwrap().len(), 7 * 24);

    // Defaults: the last 7 days of hours, ending with the current hour.
    let default = usage(&app, &format!("/v1/keys/{a_id}/usage"));
    let items = default["items"].as_array().unwrap();
    assert_eq!(items.len(), 168);
    assert_eq!(items[167]["verified"], 2);
    assert_eq!(items[166]["verified"], 3);
}

#[test]
fn bad_usage_queries_are_clear_errors() {
    let app = App::new(&[]);
    let (_, id) = key_of(&app, "acme", json!({}));
    let unknown = keygate::core::KeyId::generate(app.now());
    app.get(&format!("/v1/keys/{unknown}/usage"), &app.admin)
        .problem(404, "NOT_FOUND");
    app.get("/v1/keys/not-an-id/usage", &app.admin)
        .problem(404, "NOT_FOUND");
    for (query, needle) in [
        ("bucket=week", "bucket"),
        ("since=yesterday", "since"),
        ("until=2027-13-01T00:00:00Z", "until"),
        ("limit=3", "limit"),
    ] {
        let problem = app
            .get(&format!("/v1/keys/{id}/usage?{query}"), &app.admin)
            .problem(400, "BAD_REQUEST");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{query}: {detail}");
    }
    // Exactly the bounds; past them the range keeps its last buckets, and says so.
    let most = usage(
        &app,
        &format!("/v1/keys/{id}/usage?since=2027-01-01T00:00:00Z&until=2027-02-01T00:00:00Z"),
    );
    assert_eq!(most["items"].as_array().unwrap().len(), 744);
    assert_eq!(most["since"], "2027-01-01T00:00:00.000Z");
    let cut = usage(
        &app,
        &format!("/v1/keys/{id}/usage?since=2000-01-01T00:00:00Z&until=2027-02-01T00:00:01Z"),
    );
    assert_eq!(cut["items"].as_array().unwrap().len(), 744);
    assert_eq!(cut["since"], "2027-01-01T01:00:00.000Z");
    assert_eq!(cut["until"], "2027-02-01T01:00:00.000Z");
    let days = usage(
        &app,
        &format!("/v1/keys/{id}/usage?since=2000-01-01T00:00:00Z&bucket=day"),
    );
    assert_eq!(days["items"].as_array().unwrap().len(), 400);
    let backwards = usage(
        &app,
        &format!("/v1/keys/{id}/usage?since=2027-01-02T00:00:00Z&until=2027-01-01T00:00:00Z"),
    );
    assert_eq!(backwards["items"], json!([]));
    let owner = app
        .get("/v1/owners/%20%20/usage", &app.admin)
        .problem(400, "BAD_REQUEST");
    assert!(
        owner["detail"].as_str().unwrap().contains("owner"),
        "{owner}"
    );
    let long = "x".repeat(201);
    app.get(&format!("/v1/owners/{long}/usage"), &app.admin)
        .problem(400, "BAD_REQUEST");
    // keygate:read is needed.
    let (plain, _) = key_of(&app, "acme", json!({}));
    app.get(&format!("/v1/keys/{id}/usage"), &plain)
        .problem(403, "INSUFFICIENT_SCOPE");
}

#[test]
fn usage_past_its_retention_is_purged_by_the_scheduler() {
    let app = App::new(&["--usage-retention", "2d"]);
    let start = hour_of(app.now());
    let (a, a_id) = key_of(&app, "acme", json!({}));
    app.verify(&app.admin, &a, &[]);
    flush(&app);
    app.advance("1d");
    app.verify(&app.admin, &a, &[]);
    flush(&app);
    let since = start.to_rfc3339();
    let path = format!("/v1/keys/{a_id}/usage?since={since}&bucket=day");
    let total = |app: &App| -> u64 {
        column(&usage(app, &path), |i| i["verified"].as_u64().unwrap())
            .iter()
            .sum()
    };
    assert_eq!(total(&app), 2);
    let retention = app.service.settings().usage_retention;
    let retention = std::time::Duration::from_millis(retention.as_ms() as u64);
    // Within the retention nothing goes.
    let purged = app
        .block_on(keygate_server::jobs::scheduler::purge_usage_once(
            app.keygate(),
            retention,
        ))
        .unwrap();
    assert_eq!(purged, 0);
    // Two days and an hour after the first request, its hour is past the retention; the
    // second is not.
    app.advance("1d");
    app.advance("1h");
    let purged = app
        .block_on(keygate_server::jobs::scheduler::purge_usage_once(
            app.keygate(),
            retention,
        ))
        .unwrap();
    assert!(purged >= 1, "{purged}");
    assert_eq!(total(&app), 1);
    app.advance("2d");
    app.block_on(keygate_server::jobs::scheduler::purge_usage_once(
        app.keygate(),
        retention,
    ))
    .unwrap();
    assert_eq!(total(&app), 0);
}

#[test]
fn keys_usage_prints_the_counted_buckets_and_their_totals() {
    let app = App::new(&["--usage-flush", "1h"]);
    let start = hour_of(app.now());
    let (a, a_id) = key_of(&app, "acme", json!({}));
    app.verify(&app.admin, &a, &[]);
    app.verify(&app.admin, &a, &["orders:write"]);
    app.advance("2h");
    app.verify(&app.admin, &a, &[]);
    app.verify(&app.admin, &a, &[]);
    flush(&app);
    let since = start.to_rfc3339();
    let (code, text) = app.cli(&["keys", "usage", &a_id, "--since", &since]);
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("Requests of {a_id} by hour, {since} to ")),
        "{text}"
    );
    assert!(lines[1].starts_with("START"), "{text}");
    // Two hours counted (the empty one between is left out), and the total.
    assert_eq!(lines.len(), 5, "{text}");
    let cells = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cells(lines[2]),
        [since.as_str(), "1", "1", "0", "INSUFFICIENT_SCOPE", "1"]
    );
    assert_eq!(cells(lines[3])[1..], ["2", "0", "0", "-"]);
    assert_eq!(
        cells(lines[4]),
        ["total", "3", "1", "0", "INSUFFICIENT_SCOPE", "1"]
    );

    let (code, json_text) = app.cli(&["keys", "usage", &a_id, "--bucket", "day", "--json"]);
    assert_eq!(code, 0, "{json_text}");
    let report: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(report["bucket"], "day");
    assert_eq!(report["items"].as_array().unwrap().len(), 30);
    let verified: u64 = column(&report, |i| i["verified"].as_u64().unwrap())
        .iter()
        .sum();
    assert_eq!(verified, 3);

    let (code, text) = app.cli(&[
        "keys",
        "usage",
        &a_id,
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        "2000-01-02T00:00:00Z",
    ]);
    assert_eq!(
        (code, text.lines().last()),
        (0, Some("No requests counted in this range."))
    );
    let unknown = keygate::core::KeyId::generate(app.now()).to_string();
    let (code, text) = app.cli(&["keys", "usage", &unknown]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no key"), "{text}");
}

#[test]
fn keys_usage_refuses_bad_arguments_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    for args in [&["--bucket", "week"][..], &["--since", "yesterday"]] {
        let mut argv = vec![
            "--database",
            db.as_str(),
            "keys",
            "usage",
            "key_01M8PJQSDG906PXPZ0856G70HA",
        ];
        argv.extend_from_slice(args);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(&argv)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
}

#[test]
fn the_key_page_charts_the_week_beside_credits_and_headroom() {
    let app = App::new(&["--usage-flush", "1h"]);
    let (a, a_id) = key_of(
        &app,
        "acme",
        json!({"rate_limits": [{"name": "hourly", "limit": 3, "window": "1h"}],
               "quota": {"remaining": 100}}),
    );
    app.verify(&app.admin, &a, &[]);
    app.verify(&app.admin, &a, &[]);
    app.verify(&app.admin, &a, &["orders:write"]);
    flush(&app);
    let hour = hour_of(app.now()).to_rfc3339();
    let hour = format!("{} {} UTC", &hour[..10], &hour[11..16]);

    let mut ui = crate::admin::Ui::new(&app);
    ui.sign_in_key(&app.admin);
    let page = ui.get(&format!("/admin/keys/{a_id}"));
    assert_eq!(page.status, 200, "{}", page.text());
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("style-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = page.text();
    let section = &html[html
        .find("<section class=\"card\" id=\"key-usage\"")
        .expect("usage section")..];
    let section = &section[..section.find("</section>").unwrap()];
    assert!(section.contains("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"usage-chart\""));
    assert!(
        section.contains(&format!(
            "<title>{hour}: 2 verified, 1 refused (INSUFFICIENT_SCOPE 1), 0 rate limited</title>"
        )),
        "{section}"
    );
    // 3 an hour: drawn, since the bars reach 3.
    assert!(section.contains("stroke-dasharray"), "{section}");
    assert!(section.contains("hourly: 3 per 1h"));
    assert!(
        section.contains("2 verified · 1 refused · 0 rate limited"),
        "{section}"
    );
    assert!(section.contains("98 left"), "{section}");
    assert!(section.contains("1 of 3 left per 1h"), "{section}");
    assert!(section.contains("By day (UTC)"));
    assert!(
        !section.contains("style=") && !section.contains("<script"),
        "{section}"
    );
    // Looking spends nothing.
    let again = ui.get(&format!("/admin/keys/{a_id}")).text();
    assert!(again.contains("1 of 3 left per 1h"));
    assert_eq!(app.verify(&app.admin, &a, &[])["code"], "VALID");
    assert_eq!(app.verify(&app.admin, &a, &[])["code"], "RATE_LIMITED");
    flush(&app);
    let page = ui.get(&format!("/admin/keys/{a_id}")).text();
    assert!(page.contains("0 of 3 left per 1h"), "{page}");
    assert!(page.contains("3 verified · 1 refused · 1 rate limited"));

    // A key without limits or traffic: an empty chart that says so.
    let (_, quiet) = key_of(&app, "acme", json!({}));
    let page = ui.get(&format!("/admin/keys/{quiet}")).text();
    assert!(page.contains("No requests in this period"));
    assert!(page.contains("unlimited"));
    assert!(!page.contains("stroke-dasharray"));
}

/// The `<section>` of `html` with id `id`.
fn section_of<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<section class=\"card\" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}: {html}"));
    let rest = &html[start..];
    &rest[..rest.find("</section>").unwrap()]
}

/// The `<title>`s of the chart's bars (one per hour with requests).
fn bar_titles(section: &str) -> Vec<&str> {
    section
        .split("<g><title>")
        .skip(1)
        .filter_map(|t| t.split_once("</title>").map(|(t, _)| t))
        .filter(|t| !t.starts_with("Rate limit"))
        .collect()
}

#[test]
fn the_owner_page_charts_all_its_keys_beside_its_headroom_and_credits() {
    let app = App::new(&["--usage-flush", "1h"]);
    let (a, _) = key_of(&app, "acme", json!({"quota": {"remaining": 100}}));
    let (b, _) = key_of(&app, "acme", json!({"quota": {"remaining": 40}}));
    let (c, _) = key_of(&app, "acme", json!({}));
    let (other, _) = key_of(&app, "globex", json!({"quota": {"remaining": 7}}));
    app.json(
        "PUT",
        "/v1/owners/acme",
        &app.admin,
        &json!({"rate_limits": [{"name": "team", "limit": 3, "window": "1h"},
                                {"name": "daily", "limit": 1000, "window": "1d"}]}),
    )
    .expect(200);
    let label = |at: keygate::core::Timestamp| {
        let text = hour_of(at).to_rfc3339();
        format!("{} {} UTC", &text[..10], &text[11..16])
    };
    // Hour 0: three verified between A and B, C refused a scope; another owner's key twice.
    let first = label(app.now());
    for key in [&a, &b, &a] {
        assert_eq!(app.verify(&app.admin, key, &[])["code"], "VALID");
    }
    assert_eq!(
        app.verify(&app.admin, &c, &["orders:write"])["code"],
        "INSUFFICIENT_SCOPE"
    );
    app.verify(&app.admin, &other, &[]);
    app.verify(&app.admin, &other, &[]);
    flush(&app);
    // Two hours on: three verified, then the owner's hourly limit refuses B.
    app.advance("2h");
    let last = label(app.now());
    for key in [&b, &c, &a] {
        assert_eq!(app.verify(&app.admin, key, &[])["code"], "VALID");
    }
    assert_eq!(app.verify(&app.admin, &b, &[])["code"], "RATE_LIMITED");
    flush(&app);

    let mut ui = crate::admin::Ui::new(&app);
    ui.sign_in_key(&app.admin);
    let page = ui.get("/admin/owners/acme");
    assert_eq!(page.status, 200, "{}", page.text());
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text();
    let section = section_of(&html, "owner-usage");
    assert!(section.contains("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"usage-chart\""));
    // One bar per hour with requests, summed over acme's keys (not globex's).
    assert_eq!(
        bar_titles(section),
        [
            format!("{first}: 3 verified, 1 refused (INSUFFICIENT_SCOPE 1), 0 rate limited"),
            format!("{last}: 3 verified, 0 refused, 1 rate limited"),
        ],
        "{section}"
    );
    // Verified and refused in the first hour, verified and rate limited in the last.
    assert_eq!(section.matches("<rect x=").count(), 4, "{section}");
    // The tightest limit, 3 an hour, is drawn.
    assert!(section.contains("stroke-dasharray"), "{section}");
    assert!(section.contains("Rate limit team: 3 per 1h"), "{section}");
    assert!(
        section.contains("6 verified · 1 refused · 1 rate limited"),
        "{section}"
    );
    // Headroom of the shared limits on this node, and the keys' credits added up: A spent 3
    // of 100, B 2 of 40 (the refused request spends nothing); C has none.
    assert!(section.contains("0 of 3 left per 1h"), "{section}");
    assert!(section.contains("left per 1d"), "{section}");
    assert!(
        section.contains("135 left across 2 keys · 1 key unlimited"),
        "{section}"
    );
    assert!(section.contains("By day (UTC)"));
    assert!(
        !section.contains("style=") && !section.contains("<script"),
        "{section}"
    );
    // Looking spends nothing: B is still refused, and A too (the owner's limit).
    let again = section_of(&ui.get("/admin/owners/acme").text(), "owner-usage").to_owned();
    assert!(again.contains("0 of 3 left per 1h"), "{again}");

    // An owner nobody set limits for, with no traffic: an empty chart, no line, and no credits.
    key_of(&app, "initech", json!({}));
    let html = ui.get("/admin/owners/initech").text();
    let quiet = section_of(&html, "owner-usage");
    assert!(quiet.contains("No requests in this period"), "{quiet}");
    assert!(!quiet.contains("stroke-dasharray"));
    assert!(quiet.contains("no key holds credits"), "{quiet}");
    assert!(bar_titles(quiet).is_empty());
    // globex: one key's credits.
    let html = ui.get("/admin/owners/globex").text();
    let globex = section_of(&html, "owner-usage");
    assert!(globex.contains("5 left across 1 key<"), "{globex}");
    assert_eq!(bar_titles(globex).len(), 1, "{globex}");
}
