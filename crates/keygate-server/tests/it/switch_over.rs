//! The switch-over after a rotation, on a fixed clock: the old key's uses during its grace
//! (batched), shown by the API, the CLI and the admin UI; `key.still_in_use` announced once,
//! through the webhook outbox; the old key retired once the successor is in use and the old
//! key has been quiet for the period asked, with the evidence in `key.retired`.

use serde_json::{Value, json};

use crate::support::{App, Http};

fn sweep(app: &App) -> keygate::SweepReport {
    app.block_on(keygate_server::jobs::scheduler::sweep_once(
        app.keygate(),
        &app.service.settings().sweep,
    ))
    .unwrap()
}

/// Verifies `key` as the holder's API would (a use), by the app's clock.
fn use_key(app: &App, key: &str) -> String {
    app.verify(&app.admin, key, &[])["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn flush(app: &App) {
    app.block_on(app.keygate().flush_usage()).unwrap();
}

fn show(app: &App, id: &str) -> Value {
    app.get(&format!("/v1/keys/{id}"), &app.admin).expect(200)
}

fn events(app: &App, kind: &str, id: &str) -> Vec<Value> {
    app.get(&format!("/v1/audit?type={kind}&key_id={id}"), &app.admin)
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn old_key_uses_are_counted_announced_once_and_the_key_retired_on_switch_over() {
    let app = App::new(&["--retire-when-switched", "2h"]);
    // An endpoint that wants the two new events (never reached: its outbox is what we read).
    let hook = app
        .json(
            "POST",
            "/v1/webhooks",
            &app.admin,
            &json!({"url": "https://hooks.example.com/k", "events": ["key.still_in_use", "key.retired"]}),
        )
        .expect(201);
    let created = app.create(json!({"name": "billing"}));
    let old_id = created["id"].as_str().unwrap().to_owned();
    let old_key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(use_key(&app, &old_key), "VALID");
    assert_eq!(use_key(&app, &old_key), "VALID");
    flush(&app);
    let before = app.now();

    // Bad quiet periods are refused; nothing rotates.
    for bad in ["30s", "59s", "1s", "0m", "soon"] {
        let problem = app
            .json(
                "POST",
                &format!("/v1/keys/{old_id}/rotate"),
                &app.admin,
                &json!({"grace_period": "10h", "retire_when_switched": bad}),
            )
            .problem(400, "BAD_REQUEST");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("retire_when_switched"),
            "{problem}"
        );
    }
    app.advance("1s");
    let rotated = app
        .json(
            "POST",
            &format!("/v1/keys/{old_id}/rotate"),
            &app.admin,
            &json!({"grace_period": "10h", "retire_when_switched": "1h"}),
        )
        .expect(201);
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let rotated_at = app.now();
    let view = show(&app, &old_id);
    let switch = &view["switch_over"];
    assert_eq!(switch["successor_id"], new_id);
    assert_eq!(switch["in_grace"], true);
    assert_eq!(
        switch["old_uses_since_rotation"], 0,
        "uses before the rotation do not count"
    );
    assert_eq!(switch["old_last_used_at"], json!(before));
    assert_eq!(switch["successor_first_used_at"], Value::Null);
    assert_eq!(switch["retire_when_switched"], "1h");
    assert!(
        show(&app, &new_id).get("switch_over").is_none(),
        "the successor was not rotated"
    );

    // Three uses of the old key an hour in: counted in one batch, none written before it.
    app.advance("1h");
    for _ in 0..3 {
        assert_eq!(use_key(&app, &old_key), "VALID");
    }
    assert_eq!(
        show(&app, &old_id)["switch_over"]["old_uses_since_rotation"],
        0,
        "not written per request"
    );
    flush(&app);
    let switch = show(&app, &old_id)["switch_over"].clone();
    assert_eq!(switch["old_uses_since_rotation"], 3);
    assert_eq!(switch["old_last_used_at"], json!(app.now()));
    let report = sweep(&app);
    assert!(report.still_in_use_notices.is_empty(), "not half over yet");

    // Five hours in (half the grace), still used: announced, once.
    app.advance("4h");
    assert_eq!(use_key(&app, &old_key), "VALID");
    flush(&app);
    assert_eq!(sweep(&app).still_in_use_notices.len(), 1);
    assert!(
        sweep(&app).still_in_use_notices.is_empty(),
        "announced once"
    );
    let notice = events(&app, "key.still_in_use", &old_id);
    assert_eq!(notice.len(), 1);
    assert_eq!(notice[0]["actor"], "scheduler");
    assert_eq!(notice[0]["details"]["uses_since_rotation"], 4);
    assert_eq!(notice[0]["details"]["successor_id"], new_id);
    let log = app
        .get(
            &format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap()),
            &app.admin,
        )
        .expect(200);
    let payloads: Vec<Value> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_str(d["payload"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(payloads.len(), 1);
    assert_eq!(payloads[0]["type"], "key.still_in_use");
    assert!(!log.to_string().contains(&old_key[3..]));

    // The successor is used at 6 h, the old key once more then: not yet quiet for an hour.
    app.advance("1h");
    assert_eq!(use_key(&app, &new_key), "VALID");
    assert_eq!(use_key(&app, &old_key), "VALID");
    let first_new_use = app.now();
    flush(&app);
    app.advance("59m");
    assert!(sweep(&app).retired.is_empty(), "quiet for 59 minutes only");
    assert_eq!(use_key(&app, &old_key), "VALID", "still in its grace");
    // The sweep reads the stored last use: once this use is written, the quiet hour restarts.
    flush(&app);
    let last_old_use = app.now();
    app.advance("1h");
    let report = sweep(&app);
    assert_eq!(report.retired.len(), 1, "{report:?}");
    assert!(sweep(&app).retired.is_empty(), "retired once");
    assert_eq!(
        use_key(&app, &old_key),
        "EXPIRED",
        "retired: the grace ended"
    );
    assert_eq!(use_key(&app, &new_key), "VALID");
    let retired = events(&app, "key.retired", &old_id);
    assert_eq!(retired.len(), 1);
    let details = &retired[0]["details"];
    assert_eq!(details["successor_first_used_at"], json!(first_new_use));
    assert_eq!(details["old_last_used_at"], json!(last_old_use));
    assert_eq!(details["retire_when_switched"], "1h");
    assert_eq!(details["expires_at"]["to"], json!(app.now()));
    assert_eq!(retired[0]["actor"], "scheduler");
    let view = show(&app, &old_id);
    assert_eq!(view["status"], "expired");
    assert_eq!(view["switch_over"]["in_grace"], false);
    assert_eq!(
        view["switch_over"]["successor_first_used_at"],
        json!(first_new_use)
    );
    assert!(rotated_at < app.now());

    // The CLI and the admin UI show the same.
    let (code, out) = app.cli(&["keys", "show", &old_id]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("old key uses since rotation: 6"), "{out}");
    assert!(out.contains("successor first used:"), "{out}");
    let mut ui = crate::admin::Ui::new(&app);
    assert_eq!(ui.sign_in_key(&app.admin).status, 303);
    let page = ui.get(&format!("/admin/keys/{old_id}")).text();
    assert!(page.contains("id=\"uses-since-rotation\">6<"), "{page}");
    assert!(page.contains("Switch-over to the successor"));

    // Without a quiet period in the request, the policy's (2h) applies; the CLI takes one.
    let other = app.create(json!({"name": "other"}));
    let other_id = other["id"].as_str().unwrap();
    let again = app
        .json(
            "POST",
            &format!("/v1/keys/{other_id}/rotate"),
            &app.admin,
            &json!({}),
        )
        .expect(201);
    assert_eq!(
        show(&app, other_id)["switch_over"]["retire_when_switched"],
        "2h"
    );
    let (code, out) = app.cli(&[
        "keys",
        "rotate",
        again["id"].as_str().unwrap(),
        "--retire-when-switched",
        "30m",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        show(&app, again["id"].as_str().unwrap())["switch_over"]["retire_when_switched"],
        "30m"
    );
}

#[test]
fn a_quiet_old_key_whose_successor_is_never_used_is_not_retired_nor_announced() {
    let app = App::new(&[]);
    let created = app.create(json!({"name": "idle"}));
    let old_id = created["id"].as_str().unwrap();
    let rotated = app
        .json(
            "POST",
            &format!("/v1/keys/{old_id}/rotate"),
            &app.admin,
            &json!({"grace_period": "2h", "retire_when_switched": "1m"}),
        )
        .expect(201);
    app.advance("90m");
    let report = sweep(&app);
    assert!(report.retired.is_empty() && report.still_in_use_notices.is_empty());
    assert_eq!(
        use_key(&app, created["key"].as_str().unwrap()),
        "VALID",
        "the grace runs its course while the successor is unused"
    );
    // Self-rotation takes the quiet period too.
    let own = app.create(json!({"name": "own", "scopes": ["keygate:self-rotate"]}));
    let key = own["key"].as_str().unwrap();
    let next = app
        .json(
            "POST",
            "/v1/self/rotate",
            key,
            &json!({"retire_when_switched": "15m"}),
        )
        .expect(201);
    assert_eq!(
        show(&app, own["id"].as_str().unwrap())["switch_over"]["retire_when_switched"],
        "15m"
    );
    assert!(next["key"].is_string() && rotated["key"].is_string());

    // The admin UI's rotate form takes it too (checked like the API's).
    let ui_key = app.create(json!({"name": "from the ui"}));
    let ui_id = ui_key["id"].as_str().unwrap();
    let mut ui = crate::admin::Ui::new(&app);
    assert_eq!(ui.sign_in_key(&app.admin).status, 303);
    let page = ui.get(&format!("/admin/keys/{ui_id}"));
    let csrf = crate::admin::Ui::csrf(&page);
    let path = format!("/admin/keys/{ui_id}/rotate");
    let bad = ui.post(
        &path,
        &[
            ("csrf", &csrf),
            ("grace", "1d"),
            ("retire_when_switched", "10s"),
        ],
    );
    assert_eq!(bad.status, 400);
    assert!(show(&app, ui_id)["rotated_to"].is_null(), "nothing rotated");
    let done = ui.post(
        &path,
        &[
            ("csrf", &csrf),
            ("grace", "1d"),
            ("retire_when_switched", "45m"),
        ],
    );
    assert_eq!(done.status, 303);
    assert_eq!(
        show(&app, ui_id)["switch_over"]["retire_when_switched"],
        "45m"
    );
}

/// `POST /v1/self/retire`: only a key with keygate:self-rotate, only for a predecessor in its
/// grace period, once; audited with the actor `self:<key id>` and the evidence.
#[test]
fn a_successor_retires_its_predecessor_itself_once() {
    let app = App::new(&[]);
    let own = app.create(json!({"name": "own", "scopes": ["keygate:self-rotate"]}));
    let old_key = own["key"].as_str().unwrap();
    let old_id = own["id"].as_str().unwrap();
    app.json("POST", "/v1/self/retire", old_key, &json!({}))
        .problem(409, "NOTHING_TO_RETIRE");
    app.send("POST", "/v1/self/retire", Some(&app.admin), None)
        .problem(403, "INSUFFICIENT_SCOPE");
    let next = app
        .json(
            "POST",
            "/v1/self/rotate",
            old_key,
            &json!({"grace_period": "7d"}),
        )
        .expect(201);
    let new_key = next["key"].as_str().unwrap();
    let new_id = next["id"].as_str().unwrap();
    assert_eq!(use_key(&app, new_key), "VALID");
    flush(&app);
    app.advance("1m");
    let retired = app
        .send("POST", "/v1/self/retire", Some(new_key), None)
        .expect(200);
    assert_eq!(retired["id"], old_id);
    assert_eq!(retired["status"], "expired");
    assert_eq!(use_key(&app, old_key), "EXPIRED");
    assert_eq!(use_key(&app, new_key), "VALID");
    app.send("POST", "/v1/self/retire", Some(new_key), None)
        .problem(409, "NOTHING_TO_RETIRE");
    let trail = events(&app, "key.retired", old_id);
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0]["actor"], format!("self:{new_id}"));
    assert_eq!(trail[0]["details"]["requested_by"], new_id);
    assert!(trail[0]["details"]["successor_first_used_at"].is_string());
    assert!(trail[0]["request_id"].is_string());
    // A key without the scope cannot retire its predecessor.
    let plain = app.create(json!({"name": "plain"}));
    let rotated = app
        .json(
            "POST",
            &format!("/v1/keys/{}/rotate", plain["id"].as_str().unwrap()),
            &app.admin,
            &json!({}),
        )
        .expect(201);
    app.send(
        "POST",
        "/v1/self/retire",
        Some(rotated["key"].as_str().unwrap()),
        None,
    )
    .problem(403, "INSUFFICIENT_SCOPE");
    assert_eq!(use_key(&app, plain["key"].as_str().unwrap()), "VALID");
}
