//! The JSON API in-process (the application over a real SQLite file, requests through
//! `oneshot`, time on a fixed clock): every endpoint and error, admin scopes, secrets, the
//! audit trail, rotation, the scheduler, and the OpenAPI contract.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::openapi_check::Contract;
use crate::support::{App, Http, Reply};

struct Service {
    server: App,
    admin: String,
    db: PathBuf,
}

/// A fresh database and the service on it; `admin` is its bootstrap admin key.
fn service(args: &[&str]) -> Service {
    let server = App::new(args);
    Service {
        admin: server.admin.clone(),
        db: server.db.clone(),
        server,
    }
}

impl Service {
    fn create(&self, body: Value) -> Value {
        self.server.create(body)
    }

    fn verify(&self, key: &str, scopes: &[&str]) -> Value {
        self.server.verify(&self.admin, key, scopes)
    }

    /// The `admin.auth_failed` audit events so far.
    fn auth_failures(&self) -> Vec<Value> {
        self.server
            .get("/v1/audit?type=admin.auth_failed&limit=1000", &self.admin)
            .expect(200)["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// A key with `scopes`, issued over the API; its plaintext.
    fn key_with(&self, scopes: &[&str]) -> String {
        self.create(json!({"name": "test", "scopes": scopes}))["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[test]
fn keys_endpoints_round_trip() {
    let s = service(&[]);
    let created = s.create(json!({
        "name": "billing",
        "owner": "acct_1",
        "scopes": ["orders:read", "orders:read", "users:*"],
        "metadata": {"plan": "pro", "seats": 3},
        "expires_in": "90d"
    }));
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kg_") && id.starts_with("key_"));
    assert_eq!(created["start"], &key[..7]);
    assert_eq!(created["scopes"], json!(["orders:read", "users:*"]));
    assert_eq!(created["metadata"], json!({"plan": "pro", "seats": 3}));
    assert_eq!(
        (created["enabled"].as_bool(), created["status"].as_str()),
        (Some(true), Some("active"))
    );
    assert!(created["expires_at"].as_str().unwrap() > created["created_at"].as_str().unwrap());
    assert!(created["revoked_at"].is_null());
    assert!(created.get("hash").is_none());
    let r = s
        .server
        .json("POST", "/v1/keys", &s.admin, &json!({"name": "x"}));
    assert_eq!(
        r.header("location").map(|l| l.starts_with("/v1/keys/key_")),
        Some(true)
    );

    let shown = s
        .server
        .get(&format!("/v1/keys/{id}"), &s.admin)
        .expect(200);
    assert_eq!(shown["name"], "billing");
    assert!(
        shown.get("key").is_none(),
        "the key is shown only at creation"
    );
    assert!(
        !String::from_utf8_lossy(&s.server.get(&format!("/v1/keys/{id}"), &s.admin).raw)
            .contains(&key[3..])
    );

    // Filters and pagination.
    for i in 0..4 {
        s.create(json!({"name": format!("page {i}"), "owner": "acct_2"}));
    }
    let page = s
        .server
        .get("/v1/keys?owner=acct_2&limit=3", &s.admin)
        .expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = s
        .server
        .get(
            &format!("/v1/keys?owner=acct_2&limit=3&cursor={cursor}"),
            &s.admin,
        )
        .expect(200);
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    let found = s.server.get("/v1/keys?q=BILL", &s.admin).expect(200);
    assert_eq!(found["items"][0]["id"], id.as_str());

    // A key's own maximum age: set, shown, cleared.
    let own = s.create(json!({"name": "own max age", "max_age": "30d"}));
    assert_eq!(own["max_age"], "30d");
    let own_path = format!("/v1/keys/{}", own["id"].as_str().unwrap());
    let cleared = s
        .server
        .json("PATCH", &own_path, &s.admin, &json!({"max_age": null}))
        .expect(200);
    assert!(cleared["max_age"].is_null());
    s.server
        .json("PATCH", &own_path, &s.admin, &json!({"max_age": "soon"}))
        .problem(400, "BAD_REQUEST");

    // Patch: rename, clear owner, disable.
    let patched = s
        .server
        .json(
            "PATCH",
            &format!("/v1/keys/{id}"),
            &s.admin,
            &json!({"name": "billing v2", "owner": null, "enabled": false}),
        )
        .expect(200);
    assert_eq!(
        (
            patched["name"].as_str(),
            patched["owner"].is_null(),
            patched["status"].as_str()
        ),
        (Some("billing v2"), true, Some("disabled"))
    );
    assert_eq!(
        patched["scopes"], created["scopes"],
        "untouched fields stay"
    );
    assert_eq!(s.verify(&key, &[])["code"], "DISABLED");
    let disabled = s
        .server
        .get("/v1/keys?status=disabled", &s.admin)
        .expect(200);
    assert_eq!(disabled["items"].as_array().unwrap().len(), 1);
    s.server
        .json(
            "PATCH",
            &format!("/v1/keys/{id}"),
            &s.admin,
            &json!({"enabled": true, "expires_at": null}),
        )
        .expect(200);

    // Verify: every outcome, `key` only when found.
    let v = s.verify(&key, &["orders:read"]);
    assert_eq!(
        (v["valid"].as_bool(), v["code"].as_str()),
        (Some(true), Some("VALID"))
    );
    assert_eq!(v["key"]["id"], id.as_str());
    assert_eq!(v["key"]["metadata"]["plan"], "pro");
    assert!(v["key"]["expires_at"].is_null());
    assert!(v["key"].get("hash").is_none() && v["key"].get("start").is_none());
    assert_eq!(
        s.verify(&key, &["billing:write"])["code"],
        "INSUFFICIENT_SCOPE"
    );
    let unknown = keygate::core::generate(&keygate::Prefix::default())
        .expose()
        .to_owned();
    let v = s.verify(&unknown, &[]);
    assert_eq!(
        (v["code"].as_str(), v.get("key")),
        (Some("NOT_FOUND"), None)
    );
    assert_eq!(s.verify("kg_nope", &[])["code"], "MALFORMED");
    assert_eq!(s.verify("", &[])["code"], "MISSING");
    let expired = s.create(json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"}));
    assert_eq!(expired["status"], "expired");
    let v = s.verify(expired["key"].as_str().unwrap(), &[]);
    assert_eq!(
        (v["code"].as_str(), v["valid"].as_bool()),
        (Some("EXPIRED"), Some(false))
    );
    assert_eq!(v["key"]["id"], expired["id"]);

    // Revoke: final.
    let revoked = s
        .server
        .json(
            "POST",
            &format!("/v1/keys/{id}/revoke"),
            &s.admin,
            &json!({"reason": "leaked"}),
        )
        .expect(200);
    assert_eq!(
        (
            revoked["status"].as_str(),
            revoked["revoked_reason"].as_str()
        ),
        (Some("revoked"), Some("leaked"))
    );
    assert_eq!(s.verify(&key, &[])["code"], "REVOKED");
    s.server
        .send(
            "POST",
            &format!("/v1/keys/{id}/revoke"),
            Some(&s.admin),
            None,
        )
        .problem(409, "ALREADY_REVOKED");
    s.server
        .json(
            "PATCH",
            &format!("/v1/keys/{id}"),
            &s.admin,
            &json!({"enabled": true}),
        )
        .problem(409, "ALREADY_REVOKED");
    let other = s.create(json!({"name": "no reason"}));
    let r = s.server.send(
        "POST",
        &format!("/v1/keys/{}/revoke", other["id"].as_str().unwrap()),
        Some(&s.admin),
        None,
    );
    assert_eq!(r.expect(200)["revoked_reason"], Value::Null);

    // Operations endpoints.
    assert_eq!(
        s.server.send("GET", "/healthz", None, None).expect(200),
        json!({"status": "ok"})
    );
    assert_eq!(
        s.server.send("GET", "/readyz", None, None).expect(200),
        json!({"status": "ready"})
    );
    let metrics = s.server.send("GET", "/metrics", None, None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    for line in [
        "keygate_verifications_total{code=\"REVOKED\"} 1",
        "keygate_verifications_total{code=\"EXPIRED\"} 1",
        "keygate_verifications_total{code=\"NOT_FOUND\"} 1",
        "keygate_keys{status=\"revoked\"} 2",
        "keygate_keys{status=\"expired\"} 1",
        "keygate_http_requests_total{status=\"409\"} 2",
        "# TYPE keygate_http_request_duration_seconds histogram",
        "keygate_http_request_duration_seconds_bucket{le=\"+Inf\"}",
        "keygate_http_request_duration_seconds_count",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(!text.contains(&key[3..]));
}

#[test]
fn bad_input_gets_the_right_problem_never_a_500() {
    let s = service(&[]);
    let k = s.create(json!({"name": "k"}));
    let id = k["id"].as_str().unwrap();
    let send = |method: &str, path: &str, body: &str| {
        s.server.send(
            method,
            path,
            Some(&s.admin),
            Some(("application/json", body.as_bytes())),
        )
    };
    let key_path = format!("/v1/keys/{id}");
    let revoke_path = format!("/v1/keys/{id}/revoke");
    let long_name = format!("{{\"name\": \"{}\"}}", "n".repeat(201));
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("POST", "/v1/keys", "{", "invalid JSON"),
        ("POST", "/v1/keys", "{\"name\" \"a\"}", "line 1 column"),
        (
            "POST",
            "/v1/keys",
            "{\"name\": \"a\"} trailing",
            "after the JSON",
        ),
        ("POST", "/v1/keys", "[]", "JSON object"),
        ("POST", "/v1/keys", "{}", "name"),
        ("POST", "/v1/keys", "{\"name\": \"a\", \"nmae\": 1}", "nmae"),
        ("POST", "/v1/keys", "{\"name\": 5}", "name"),
        ("POST", "/v1/keys", "{\"name\": \"\"}", "name"),
        ("POST", "/v1/keys", &long_name, "name"),
        (
            "POST",
            "/v1/keys",
            "{\"name\": \"a\", \"scopes\": \"orders:read\"}",
            "scopes",
        ),
        (
            "POST",
            "/v1/keys",
            "{\"name\": \"a\", \"scopes\": [\"Bad Scope\"]}",
            "scopes",
        ),
        (
            "POST",
            "/v1/keys",
            "{\"name\": \"a\", \"metadata\": [1]}",
            "metadata",
        ),
        (
            "POST",
            "/v1/keys",
            "{\"name\": \"a\", \"expires_in\": \"9y\"}",
            "expires_in",
        ),
        (
            "POST",
            "/v1/keys",
            "{\"name\": \"a\", \"expires_in\": \"0d\"}",
            "expires_in",
        ),
        (
            "POST",
            "/v1/keys",
            "{\"name\": \"a\", \"expires_at\": \"tomorrow\"}",
            "expires_at",
        ),
        (
            "POST",
            "/v1/keys",
            "{\"name\": \"a\", \"expires_at\": \"2030-01-01T00:00:00Z\", \"expires_in\": \"1d\"}",
            "expires_in",
        ),
        ("PATCH", &key_path, "{\"enabled\": \"yes\"}", "enabled"),
        ("PATCH", &key_path, "{\"hash\": \"x\"}", "hash"),
        ("PATCH", &key_path, "{\"owner\": \"\"}", "owner"),
        ("POST", &revoke_path, "{\"reason\": 1}", "reason"),
        ("POST", "/v1/verify", "{}", "key"),
        (
            "POST",
            "/v1/verify",
            "{\"key\": \"kg_x\", \"scopes\": [\"NO\"]}",
            "scopes[0]",
        ),
        ("POST", "/v1/verify", "{\"key\": [\"kg_x\"]}", "key"),
        // Serde would read a struct from an array, by position: only objects are bodies.
        ("POST", "/v1/verify", "[\"kg_x\", []]", "JSON object"),
        ("PATCH", &key_path, "[null, null]", "JSON object"),
        ("POST", "/v1/keys", "\"billing\"", "JSON object"),
    ];
    for (method, path, body, field) in cases {
        let p = send(method, path, body).problem(400, "BAD_REQUEST");
        assert!(
            p["detail"].as_str().unwrap().contains(field),
            "{method} {path} {body}: {p}"
        );
    }
    // Where a body is optional, `null` is no body.
    let other = s.create(json!({"name": "revoked with a null body"}));
    let revoked = send(
        "POST",
        &format!("/v1/keys/{}/revoke", other["id"].as_str().unwrap()),
        "null",
    )
    .expect(200);
    assert!(revoked["revoked_reason"].is_null());
    for query in [
        "status=zombie",
        "owner=%01",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=nope",
        "colour=red",
    ] {
        let p = s
            .server
            .get(&format!("/v1/keys?{query}"), &s.admin)
            .problem(400, "BAD_REQUEST");
        let name = query.split('=').next().unwrap();
        assert!(p["detail"].as_str().unwrap().contains(name), "{query}: {p}");
    }
    for path in [
        "/v1/keys/key_01AAAAAAAAAAAAAAAAAAAAAAAA",
        "/v1/keys/not-an-id",
        "/v1/keys/kg_secretish",
    ] {
        s.server.get(path, &s.admin).problem(404, "NOT_FOUND");
        send("PATCH", path, "{}").problem(404, "NOT_FOUND");
        send("POST", &format!("{path}/revoke"), "{}").problem(404, "NOT_FOUND");
    }
    // 413 and 415.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(70 * 1024));
    send("POST", "/v1/keys", &big).problem(413, "PAYLOAD_TOO_LARGE");
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let r = s.server.send(
            "POST",
            "/v1/keys",
            Some(&s.admin),
            Some((content_type, b"{\"name\":\"a\"}")),
        );
        r.problem(415, "UNSUPPORTED_MEDIA_TYPE");
    }
    let r = s.server.send("POST", "/v1/verify", Some(&s.admin), None);
    r.problem(415, "UNSUPPORTED_MEDIA_TYPE");
    // 405, 404.
    s.server
        .send("DELETE", &format!("/v1/keys/{id}"), Some(&s.admin), None)
        .problem(405, "METHOD_NOT_ALLOWED");
    s.server
        .send("PUT", "/v1/keys", Some(&s.admin), None)
        .problem(405, "METHOD_NOT_ALLOWED");
    s.server
        .send("GET", "/v2/keys", None, None)
        .problem(404, "NOT_FOUND");
    // Nothing was created by any of it.
    let listed = s.server.get("/v1/keys", &s.admin).expect(200);
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        3,
        "bootstrap, k, and the one revoked with a null body"
    );

    // Garbage of every shape: never a 500.
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"\xff\xfe".to_vec(),
        b"{\"name\": \"\xff\"}".to_vec(),
        b"1e999".to_vec(),
        format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
        format!(
            "{{\"name\":\"a\",\"metadata\":{}1{}}}",
            "{\"a\":".repeat(100),
            "}".repeat(100)
        )
        .into_bytes(),
        b"{\"name\": \"\\ud800\"}".to_vec(),
    ];
    for (method, path) in [
        ("POST", "/v1/keys"),
        ("PATCH", &format!("/v1/keys/{id}")),
        ("POST", "/v1/verify"),
        ("POST", &format!("/v1/keys/{id}/revoke")),
    ] {
        for body in &bodies {
            let r = s.server.send(
                method,
                path,
                Some(&s.admin),
                Some(("application/json", body)),
            );
            assert!(
                r.status < 500,
                "{method} {path} {:?}: {}",
                String::from_utf8_lossy(body),
                r.status
            );
            assert_eq!(
                r.header("content-type").map(|c| c.contains("json")),
                Some(true)
            );
        }
    }
}

#[test]
fn admin_scopes_are_enforced_by_keygates_own_layer() {
    let s = service(&[]);
    let client = s.key_with(&["orders:read"]);
    let star = s.key_with(&["*"]);
    let reader = s.key_with(&["keygate:read"]);
    let verifier = s.key_with(&["keygate:verify"]);
    let create = json!({"name": "x"});
    let check = json!({"key": client, "scopes": []});

    let r = s.server.send("GET", "/v1/keys", None, None);
    r.problem(401, "MISSING");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Api-Key realm=\"keygate\", Bearer realm=\"keygate\"")
    );
    s.server
        .get("/v1/keys", "kg_garbage")
        .problem(401, "MALFORMED");
    s.server
        .send("POST", "/v1/verify", Some("kg_garbage"), None)
        .problem(401, "MALFORMED");

    for key in [&client, &star] {
        s.server
            .get("/v1/keys", key)
            .problem(403, "INSUFFICIENT_SCOPE");
        s.server
            .json("POST", "/v1/keys", key, &create)
            .problem(403, "INSUFFICIENT_SCOPE");
        s.server
            .json("POST", "/v1/verify", key, &check)
            .problem(403, "INSUFFICIENT_SCOPE");
    }
    s.server.get("/v1/keys", &reader).expect(200);
    s.server
        .json("POST", "/v1/keys", &reader, &create)
        .problem(403, "INSUFFICIENT_SCOPE");
    s.server
        .json("POST", "/v1/verify", &reader, &check)
        .problem(403, "INSUFFICIENT_SCOPE");
    s.server
        .json("POST", "/v1/verify", &verifier, &check)
        .expect(200);
    s.server
        .get("/v1/keys", &verifier)
        .problem(403, "INSUFFICIENT_SCOPE");
    // The scope check comes before the body is read.
    s.server
        .send(
            "POST",
            "/v1/keys",
            Some(&reader),
            Some(("text/plain", b"junk")),
        )
        .problem(403, "INSUFFICIENT_SCOPE");
    // Bearer works too.
    let headers = vec![(
        "Authorization".to_owned(),
        format!("Bearer {}", s.admin).into_bytes(),
    )];
    assert_eq!(s.server.raw("GET", "/v1/keys", &headers, None).status, 200);
    // A revoked admin key stops working at once.
    let victim = s
        .server
        .json(
            "POST",
            "/v1/keys",
            &s.admin,
            &json!({"name": "tmp admin", "scopes": ["keygate:admin"]}),
        )
        .expect(201);
    let victim_key = victim["key"].as_str().unwrap();
    s.server.get("/v1/keys", victim_key).expect(200);
    s.server
        .send(
            "POST",
            &format!("/v1/keys/{}/revoke", victim["id"].as_str().unwrap()),
            Some(&s.admin),
            None,
        )
        .expect(200);
    s.server.get("/v1/keys", victim_key).problem(401, "REVOKED");
}

#[test]
fn no_key_in_logs_responses_or_database() {
    let s = service(&["--log-level", "trace"]);
    let created = s.create(json!({"name": "secret keeper", "scopes": ["a:b"]}));
    let key = created["key"].as_str().unwrap().to_owned();
    s.verify(&key, &["a:b"]);
    let mut typo = key.clone();
    typo.pop();
    typo.push('!');
    s.verify(&typo, &[]);
    // Values that a client sends by mistake are not repeated in errors.
    let echo_tries = [
        json!({"key": key, "scopes": key}),
        json!({"key": key, "scopes": [key]}),
        json!({"key": {"nested": key}}),
    ];
    for body in echo_tries {
        let r = s.server.json("POST", "/v1/verify", &s.admin, &body);
        assert_eq!(r.status, 400);
        assert!(
            !String::from_utf8_lossy(&r.raw).contains(&key[3..]),
            "{}",
            r.text()
        );
    }
    let r = s.server.json(
        "POST",
        "/v1/keys",
        &s.admin,
        &json!({"name": "x", key.clone(): 1}),
    );
    assert!(
        !String::from_utf8_lossy(&r.raw).contains(&key[3..]),
        "{}",
        r.text()
    );
    s.server
        .get(&format!("/v1/keys/{key}"), &s.admin)
        .problem(404, "NOT_FOUND");
    s.server
        .send("GET", &format!("/nowhere?api_key={key}"), None, None)
        .problem(404, "NOT_FOUND");
    // The 404 is the last request: once its line is there, every earlier line is too.
    let logs = s.server.logs();
    assert!(logs.contains(created["id"].as_str().unwrap()));
    for secret in [&key, &s.admin] {
        assert!(!logs.contains(&secret[3..]), "a key in the logs");
    }
    assert!(!logs.contains(&typo[3..typo.len() - 1]));
    let db: Vec<u8> = std::fs::read_dir(s.db.parent().unwrap())
        .unwrap()
        .flat_map(|e| crate::support::read_from_another_process(&e.unwrap().path()))
        .collect();
    assert!(!db.windows(key.len() - 3).any(|w| w == &key.as_bytes()[3..]));
}

#[test]
fn openapi_document_matches_the_server() {
    let s = service(&[]);
    let r = s.server.send("GET", "/openapi.json", None, None);
    let doc = r.expect(200);
    assert_eq!(doc["openapi"], "3.1.0");
    let contract = Contract::new(doc);
    contract.check_document();

    // Every documented operation exists (no 404/405 with an admin key).
    let k = s.create(json!({"name": "doc"}));
    let id = k["id"].as_str().unwrap();
    for (path, method) in contract.operations() {
        // A webhook path names an endpoint (a fresh one: this may delete it).
        let concrete = if path.starts_with("/v1/webhooks/") {
            let hook = s
                .server
                .json(
                    "POST",
                    "/v1/webhooks",
                    &s.admin,
                    &json!({"url": "https://hooks.example.com/x"}),
                )
                .expect(201);
            path.replace("{id}", hook["id"].as_str().unwrap())
        } else {
            path.replace("{id}", id)
        };
        let r = s.server.send(
            &method.to_uppercase(),
            &concrete,
            Some(&s.admin),
            Some(("application/json", b"{}")),
        );
        assert!(
            r.status != 404 && r.status != 405,
            "{method} {path}: {}",
            r.status
        );
    }

    // Responses match the documented status codes and schemas.
    let mut exchanges = vec![
        (
            "post",
            "/v1/keys",
            s.server.json(
                "POST",
                "/v1/keys",
                &s.admin,
                &json!({"name": "a", "owner": "o", "expires_in": "1d"}),
            ),
        ),
        (
            "post",
            "/v1/keys",
            s.server
                .json("POST", "/v1/keys", &s.admin, &json!({"name": ""})),
        ),
        (
            "post",
            "/v1/keys",
            s.server.send(
                "POST",
                "/v1/keys",
                Some(&s.admin),
                Some(("text/plain", b"x")),
            ),
        ),
        (
            "post",
            "/v1/keys",
            s.server.send("POST", "/v1/keys", None, None),
        ),
        (
            "get",
            "/v1/keys",
            s.server.get("/v1/keys?limit=1", &s.admin),
        ),
        (
            "get",
            "/v1/keys",
            s.server.get("/v1/keys?limit=0", &s.admin),
        ),
        (
            "get",
            "/v1/keys/{id}",
            s.server.get(&format!("/v1/keys/{id}"), &s.admin),
        ),
        (
            "get",
            "/v1/keys/{id}",
            s.server
                .get("/v1/keys/key_01AAAAAAAAAAAAAAAAAAAAAAAA", &s.admin),
        ),
        (
            "patch",
            "/v1/keys/{id}",
            s.server.json(
                "PATCH",
                &format!("/v1/keys/{id}"),
                &s.admin,
                &json!({"enabled": false}),
            ),
        ),
        (
            "post",
            "/v1/keys/{id}/revoke",
            s.server.json(
                "POST",
                &format!("/v1/keys/{id}/revoke"),
                &s.admin,
                &json!({"reason": "r"}),
            ),
        ),
        (
            "post",
            "/v1/keys/{id}/revoke",
            s.server.json(
                "POST",
                &format!("/v1/keys/{id}/revoke"),
                &s.admin,
                &json!({}),
            ),
        ),
        (
            "post",
            "/v1/verify",
            s.server.json(
                "POST",
                "/v1/verify",
                &s.admin,
                &json!({"key": s.admin, "scopes": ["keygate:admin"]}),
            ),
        ),
        (
            "post",
            "/v1/verify",
            s.server
                .json("POST", "/v1/verify", &s.admin, &json!({"key": "kg_x"})),
        ),
        (
            "get",
            "/healthz",
            s.server.send("GET", "/healthz", None, None),
        ),
        (
            "get",
            "/readyz",
            s.server.send("GET", "/readyz", None, None),
        ),
        (
            "get",
            "/metrics",
            s.server.send("GET", "/metrics", None, None),
        ),
    ];
    let client = s.key_with(&[]);
    exchanges.push(("get", "/v1/keys", s.server.get("/v1/keys", &client)));
    let hook = s
        .server
        .json(
            "POST",
            "/v1/webhooks",
            &s.admin,
            &json!({"url": "https://hooks.example.com/y"}),
        )
        .expect(201);
    let hook_path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());
    for body in [
        json!({"enabled": false, "events": ["key.rotated"]}),
        json!({}),
        json!({"url": "ftp://x"}),
    ] {
        exchanges.push((
            "patch",
            "/v1/webhooks/{id}",
            s.server.json("PATCH", &hook_path, &s.admin, &body),
        ));
    }
    for _ in 0..2 {
        exchanges.push((
            "delete",
            "/v1/webhooks/{id}",
            s.server.send("DELETE", &hook_path, Some(&s.admin), None),
        ));
    }
    for (method, path, reply) in &exchanges {
        contract.check_response(
            method,
            path,
            reply.status,
            reply.header("content-type"),
            &reply.body,
        );
    }

    // The checker itself rejects what the document does not promise.
    let good = s
        .server
        .get(&format!("/v1/keys/{id}"), &s.admin)
        .expect(200);
    assert!(contract.accepts("get", "/v1/keys/{id}", 200, &good).is_ok());
    let mut extra = good.clone();
    extra["hash"] = json!("00");
    assert!(
        contract
            .accepts("get", "/v1/keys/{id}", 200, &extra)
            .unwrap_err()
            .contains("hash")
    );
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("name");
    let why = contract
        .accepts("get", "/v1/keys/{id}", 200, &missing)
        .unwrap_err();
    assert!(why.contains("name"), "{why}");
    let mut wrong = good;
    wrong["enabled"] = json!("yes");
    let why = contract
        .accepts("get", "/v1/keys/{id}", 200, &wrong)
        .unwrap_err();
    assert!(why.contains("enabled"), "{why}");
}

#[test]
fn the_audit_trail_records_who_did_what_in_which_request() {
    let s = service(&[]);
    let headers = |id: &str| {
        vec![
            (
                "Authorization".to_owned(),
                format!("Api-Key {}", s.admin).into_bytes(),
            ),
            ("Content-Type".to_owned(), b"application/json".to_vec()),
            ("X-Request-Id".to_owned(), id.as_bytes().to_vec()),
        ]
    };
    let created = s
        .server
        .raw(
            "POST",
            "/v1/keys",
            &headers("req-create"),
            Some(br#"{"name": "audited", "scopes": ["a:b"]}"#),
        )
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let key = created["key"].as_str().unwrap();
    s.server
        .raw(
            "PATCH",
            &format!("/v1/keys/{id}"),
            &headers("req-patch"),
            Some(br#"{"enabled": false}"#),
        )
        .expect(200);
    s.server
        .raw(
            "POST",
            &format!("/v1/keys/{id}/revoke"),
            &headers("req-revoke"),
            Some(br#"{"reason": "rotated by hand"}"#),
        )
        .expect(200);

    let events = s
        .server
        .get(&format!("/v1/audit?key_id={id}"), &s.admin)
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["key.created", "key.updated", "key.revoked"]);
    let admin_id = s
        .server
        .json("POST", "/v1/verify", &s.admin, &json!({"key": s.admin}))
        .expect(200)["key"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (event, request) in events.iter().zip(["req-create", "req-patch", "req-revoke"]) {
        assert_eq!(event["actor"], format!("admin:{admin_id}"));
        assert_eq!(event["request_id"], request);
        assert_eq!(event["key_id"], id);
    }
    assert_eq!(
        events[1]["details"],
        json!({"enabled": {"from": true, "to": false}})
    );
    assert_eq!(
        events[2]["details"]["revoked_reason"]["to"],
        "rotated by hand"
    );
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&key[3..]), "no secret in the trail");

    let revoked = s
        .server
        .get("/v1/audit?type=key.revoked", &s.admin)
        .expect(200);
    assert_eq!(revoked["items"].as_array().unwrap().len(), 1);
    let limited = s.server.get("/v1/audit?limit=1", &s.admin).expect(200);
    assert!(limited["next_cursor"].is_string());
    for bad in [
        "type=key.deleted",
        "since=yesterday",
        "limit=0",
        "key_id=nope",
        "cursor=x",
        "colour=red",
    ] {
        s.server
            .get(&format!("/v1/audit?{bad}"), &s.admin)
            .problem(400, "BAD_REQUEST");
    }
    let reader = s.key_with(&["keygate:read"]);
    s.server.get("/v1/audit", &reader).expect(200);
    let client = s.key_with(&["*"]);
    s.server
        .get("/v1/audit", &client)
        .problem(403, "INSUFFICIENT_SCOPE");

    // The CLI sees the same trail, and its own changes as `cli`.
    let (code, _) = s.server.cli(&["keys", "create", "--name", "by hand"]);
    assert_eq!(code, 0);
    let (code, out) = s.server.cli(&["audit", "--json", "--type", "key.created"]);
    assert_eq!(code, 0);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|e| e["actor"] == "cli"),
        "keys made with the CLI"
    );
    assert!(
        lines.iter().any(|e| e["actor"] == "server"),
        "the bootstrap key"
    );
    assert!(lines.iter().all(|e| e["type"] == "key.created"));
}

#[test]
fn rotation_with_a_grace_period_over_the_api_and_the_cli() {
    let s = service(&[]);
    let created = s.create(json!({"name": "rotating", "owner": "acct_7", "scopes": ["orders:read"], "metadata": {"plan": "pro"}}));
    let (old_id, old_key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let r = s.server.json(
        "POST",
        &format!("/v1/keys/{old_id}/rotate"),
        &s.admin,
        &json!({"grace_period": "2s"}),
    );
    let new = r.expect(201);
    assert_eq!(
        r.header("location").unwrap(),
        format!("/v1/keys/{}", new["id"].as_str().unwrap())
    );
    let (new_id, new_key) = (new["id"].as_str().unwrap(), new["key"].as_str().unwrap());
    assert_eq!(new["rotated_from"], old_id);
    for field in ["name", "owner", "scopes", "metadata"] {
        assert_eq!(new[field], created[field], "{field} copied");
    }
    let old = s
        .server
        .get(&format!("/v1/keys/{old_id}"), &s.admin)
        .expect(200);
    assert_eq!(old["rotated_to"], new_id);
    assert!(old["rotated_at"].is_string());

    // Both valid during the grace period; the old one expires after it. /v1/verify tells the
    // caller which key replaces it.
    let during = s.verify(old_key, &["orders:read"]);
    assert_eq!(during["code"], "VALID");
    assert_eq!(during["key"]["rotated_to"], new_id);
    assert!(s.verify(new_key, &[])["key"]["rotated_to"].is_null());
    assert_eq!(s.verify(new_key, &["orders:read"])["code"], "VALID");
    s.server.advance("1s");
    assert_eq!(s.verify(old_key, &[])["code"], "VALID", "one second left");
    s.server.advance("1s");
    assert_eq!(s.verify(old_key, &[])["code"], "EXPIRED");
    assert_eq!(s.verify(new_key, &[])["code"], "VALID");

    // The audit trail links the two.
    let trail = s
        .server
        .get(
            &format!("/v1/audit?type=key.rotated&key_id={old_id}"),
            &s.admin,
        )
        .expect(200);
    let event = &trail["items"][0];
    assert_eq!(event["details"]["rotated_to"]["to"], new_id);
    let created_event = s
        .server
        .get(&format!("/v1/audit?key_id={new_id}"), &s.admin)
        .expect(200);
    assert_eq!(created_event["items"][0]["details"]["rotated_from"], old_id);

    // Refusals: rotated already, revoked, unknown, bad grace.
    s.server
        .json(
            "POST",
            &format!("/v1/keys/{old_id}/rotate"),
            &s.admin,
            &json!({}),
        )
        .problem(409, "ALREADY_ROTATED");
    let doomed = s.create(json!({"name": "doomed"}));
    let doomed_id = doomed["id"].as_str().unwrap();
    s.server
        .send(
            "POST",
            &format!("/v1/keys/{doomed_id}/revoke"),
            Some(&s.admin),
            None,
        )
        .expect(200);
    s.server
        .send(
            "POST",
            &format!("/v1/keys/{doomed_id}/rotate"),
            Some(&s.admin),
            None,
        )
        .problem(409, "ALREADY_REVOKED");
    s.server
        .send(
            "POST",
            "/v1/keys/key_01AAAAAAAAAAAAAAAAAAAAAAAA/rotate",
            Some(&s.admin),
            None,
        )
        .problem(404, "NOT_FOUND");
    let p = s
        .server
        .json(
            "POST",
            &format!("/v1/keys/{new_id}/rotate"),
            &s.admin,
            &json!({"grace_period": "soon"}),
        )
        .problem(400, "BAD_REQUEST");
    assert!(p["detail"].as_str().unwrap().contains("grace_period"));

    // The CLI rotates too, with no grace: the old key is over at once.
    let (code, out) = s
        .server
        .cli(&["keys", "rotate", new_id, "--grace", "0", "--json"]);
    assert_eq!(code, 0, "{out}");
    let third: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(third["rotated_from"], new_id);
    assert_eq!(s.verify(new_key, &[])["code"], "EXPIRED");
    assert_eq!(
        s.verify(third["key"].as_str().unwrap(), &[])["code"],
        "VALID"
    );
}

#[test]
fn a_key_with_keygate_self_rotate_rotates_itself() {
    let s = service(&[]);
    let plain = s.create(json!({"name": "plain", "scopes": ["orders:read"]}));
    s.server
        .send("POST", "/v1/self/rotate", plain["key"].as_str(), None)
        .problem(403, "INSUFFICIENT_SCOPE");
    let star = s.create(json!({"name": "star", "scopes": ["*"]}));
    s.server
        .send("POST", "/v1/self/rotate", star["key"].as_str(), None)
        .problem(403, "INSUFFICIENT_SCOPE");

    let cron =
        s.create(json!({"name": "cron job", "scopes": ["orders:read", "keygate:self-rotate"]}));
    let old_key = cron["key"].as_str().unwrap();
    let r = s.server.send(
        "POST",
        "/v1/self/rotate",
        Some(old_key),
        Some(("application/json", br#"{"grace_period": "1h"}"#)),
    );
    let new = r.expect(201);
    assert_eq!(new["rotated_from"], cron["id"]);
    assert_eq!(new["scopes"], json!(["orders:read", "keygate:self-rotate"]));
    let new_key = new["key"].as_str().unwrap();
    assert_eq!(
        s.verify(old_key, &["orders:read"])["code"],
        "VALID",
        "in grace"
    );
    assert_eq!(s.verify(new_key, &["orders:read"])["code"], "VALID");
    // The old key cannot rotate again; the new one can.
    s.server
        .send("POST", "/v1/self/rotate", Some(old_key), None)
        .problem(409, "ALREADY_ROTATED");
    s.server
        .send("POST", "/v1/self/rotate", Some(new_key), None)
        .expect(201);
    let trail = s
        .server
        .get(
            &format!(
                "/v1/audit?type=key.rotated&key_id={}",
                cron["id"].as_str().unwrap()
            ),
            &s.admin,
        )
        .expect(200);
    assert_eq!(
        trail["items"][0]["actor"],
        format!("self:{}", cron["id"].as_str().unwrap())
    );
    // The admin API stays closed to it.
    s.server
        .get("/v1/keys", new_key)
        .problem(403, "INSUFFICIENT_SCOPE");
}

#[test]
fn the_scheduler_announces_expiring_expired_and_old_keys() {
    let s = service(&["--expiry-warning", "1h", "--max-age", "1h"]);
    let soon = s.create(json!({"name": "soon", "expires_in": "30m"}));
    let gone = s.create(json!({"name": "gone", "expires_in": "1s"}));
    let ancient = s.create(json!({"name": "ancient", "expires_at": "2020-01-01T00:00:00Z"}));
    let later = s.create(json!({"name": "later", "expires_in": "90d"}));
    let sweep = || {
        let app = &s.server;
        app.block_on(keygate_server::jobs::scheduler::sweep_once(
            app.keygate(),
            &app.service.settings().sweep,
        ))
        .unwrap()
    };
    let events = |kind: &str, key: &Value| {
        let id = key["id"].as_str().unwrap();
        let page = s
            .server
            .get(&format!("/v1/audit?type={kind}&key_id={id}"), &s.admin)
            .expect(200);
        let items = page["items"].as_array().unwrap().clone();
        assert!(items.iter().all(|e| e["actor"] == "scheduler"), "{page}");
        items.len()
    };
    s.server.advance("2s");
    let report = sweep();
    assert_eq!(report.expiring_soon_notices.len(), 1);
    assert_eq!(events("key.expiring_soon", &soon), 1);
    assert_eq!(events("key.expired", &gone), 1);
    // Later sweeps do not repeat a notice, and a key far from expiry gets none.
    s.server.advance("1m");
    let again = sweep();
    assert!(again.expiring_soon_notices.is_empty() && again.expired_notices.is_empty());
    assert_eq!(events("key.expiring_soon", &soon), 1);
    assert_eq!(events("key.expiring_soon", &later), 0);
    assert_eq!(
        events("key.expired", &ancient),
        0,
        "expiries older than the lookback were announced before"
    );
    let old = s
        .server
        .get("/v1/audit?type=key.max_age_exceeded", &s.admin)
        .expect(200);
    assert_eq!(old["items"], json!([]), "nothing is an hour old yet");
    // An hour on, every unrevoked key is past the maximum age: announced once each.
    s.server.advance("1h");
    let aged = sweep();
    assert_eq!(
        aged.max_age_notices.len(),
        2,
        "the bootstrap key and later; soon, gone and ancient have expired"
    );
    assert!(sweep().max_age_notices.is_empty(), "once per key");
}

#[test]
fn refused_admin_requests_are_audited_without_flooding_the_trail() {
    let s = service(&[]);
    let client = s.key_with(&["orders:read"]);
    s.server
        .send("GET", "/v1/keys", None, None)
        .problem(401, "MISSING");
    s.server
        .get("/v1/keys", "kg_garbage")
        .problem(401, "MALFORMED");
    s.server
        .get("/v1/keys", &client)
        .problem(403, "INSUFFICIENT_SCOPE");
    // Written off the request path: let those tasks run.
    s.server
        .settle("3 failures recorded", |_| s.auth_failures().len() >= 3);
    let events = s.auth_failures();
    // Written off the request path, so in any order.
    let mut codes: Vec<&str> = events
        .iter()
        .map(|e| e["details"]["code"].as_str().unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, ["INSUFFICIENT_SCOPE", "MALFORMED", "MISSING"]);
    for event in &events {
        assert_eq!(event["actor"], "anonymous");
        assert_eq!(event["details"]["route"], "/v1/keys");
        assert!(event["request_id"].is_string());
        assert!(event["key_id"].is_null());
    }
    assert!(
        !serde_json::to_string(&events)
            .unwrap()
            .contains(&client[3..]),
        "no key in the trail"
    );

    // A flood: at most 20 a minute are written.
    for _ in 0..40 {
        s.server.get("/v1/keys", "kg_garbage");
    }
    s.server
        .settle("20 failures recorded", |_| s.auth_failures().len() >= 20);
    // The rest were counted, not written: no task was even started for them.
    s.server.settle("nothing left to write", |_| true);
    assert_eq!(
        s.auth_failures().len(),
        20,
        "the rest were counted, not written"
    );
    // A minute on, the next refusal is written, saying how many were left out.
    s.server.advance("61s");
    s.server.get("/v1/keys", "kg_garbage");
    s.server.settle("the next window's first event", |_| {
        s.auth_failures().len() > 20
    });
    let last = s.auth_failures().pop().unwrap();
    // 3 + 17 written in the first minute; 23 of the flood counted instead.
    assert_eq!(last["details"]["suppressed_before"], 23);
}

#[test]
fn request_ids_are_kept_if_sane_and_made_otherwise() {
    let s = service(&[]);
    let r = s.server.raw(
        "GET",
        "/healthz",
        &[("X-Request-Id".into(), b"trace-me-123".to_vec())],
        None,
    );
    assert_eq!(r.header("x-request-id"), Some("trace-me-123"));
    let r = s.server.raw(
        "GET",
        "/healthz",
        &[("X-Request-Id".into(), b"bad id with spaces".to_vec())],
        None,
    );
    let generated = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(generated.len(), 16);
    let r = s.server.raw("GET", "/healthz", &[], None);
    assert_ne!(r.header("x-request-id").unwrap(), generated, "ids differ");
    let logs = s.server.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("request finished") && l.contains("request_id=trace-me-123")),
        "{logs}"
    );
    // A key-shaped id is not taken: a client that sends its key there must not get it logged.
    let key = s.key_with(&[]);
    let r = s.server.raw(
        "GET",
        "/healthz",
        &[("X-Request-Id".into(), key.as_bytes().to_vec())],
        None,
    );
    assert_ne!(r.header("x-request-id"), Some(key.as_str()));
    assert!(!s.server.logs().contains(&key[3..]));
}

#[test]
fn under_v1_a_request_without_a_valid_key_learns_nothing_about_routes() {
    let s = service(&[]);
    let reader = s.key_with(&["keygate:read"]);
    // Unknown paths and known paths with the wrong method: 401 to a stranger, the truth (404,
    // 405) only to a caller with a valid key.
    for (method, path) in [
        ("DELETE", "/v1/keys"),
        ("PUT", "/v1/verify"),
        ("GET", "/v1/verify"),
        ("PATCH", "/v1/audit"),
        ("GET", "/v1/no-such-thing"),
        ("POST", "/v1"),
    ] {
        let stranger = s.server.send(method, path, None, None);
        stranger.problem(401, "MISSING");
        let bad = s.server.send(method, path, Some("kg_notakey"), None);
        assert_eq!(bad.status, 401, "{method} {path}: {}", bad.text());
        let known = s.server.send(method, path, Some(&reader), None);
        let expected = if path.ends_with("no-such-thing") || path == "/v1" {
            404
        } else {
            405
        };
        assert_eq!(known.status, expected, "{method} {path}: {}", known.text());
    }
    // Outside /v1 nothing changes: the operations endpoints stay open, unknown paths are 404.
    s.server.send("GET", "/healthz", None, None).expect(200);
    assert_eq!(s.server.send("GET", "/nope", None, None).status, 404);
}

#[test]
fn metrics_can_require_a_key_and_readiness_needs_a_writable_database() {
    let open = service(&[]);
    assert_eq!(open.server.send("GET", "/metrics", None, None).status, 200);
    open.server.send("GET", "/readyz", None, None).expect(200);

    let guarded = service(&["--metrics-require-key"]);
    guarded
        .server
        .send("GET", "/metrics", None, None)
        .problem(401, "MISSING");
    let verifier = guarded.key_with(&["keygate:verify"]);
    guarded
        .server
        .send("GET", "/metrics", Some(&verifier), None)
        .problem(403, "INSUFFICIENT_SCOPE");
    let reader = guarded.key_with(&["keygate:read"]);
    let metrics = guarded.server.send("GET", "/metrics", Some(&reader), None);
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("keygate_connections_open"));

    // The database file deleted under the service: writes would be lost, so it is not ready.
    std::fs::remove_file(&open.db).unwrap();
    let detail = open
        .server
        .send("GET", "/readyz", None, None)
        .problem(503, "UNAVAILABLE")["detail"]
        .to_string();
    assert!(detail.contains("could not"), "{detail}");
}

/// JSON nested `levels` deep: `{"a":{"a":...true...}}`.
fn nested_json(levels: usize) -> String {
    format!("{}true{}", "{\"a\":".repeat(levels), "}".repeat(levels))
}

#[test]
fn deep_metadata_is_refused_and_an_undecodable_event_never_breaks_the_trail() {
    let s = service(&[]);
    let k = s.create(json!({"name": "k"}));
    let id = k["id"].as_str().unwrap();
    // What the attacker sent: 125 levels. Refused on create and on change, naming the field.
    let deep = format!("{{\"name\": \"d\", \"metadata\": {}}}", nested_json(125));
    let create = s.server.send(
        "POST",
        "/v1/keys",
        Some(&s.admin),
        Some(("application/json", deep.as_bytes())),
    );
    let detail = create.problem(400, "BAD_REQUEST")["detail"].to_string();
    assert!(
        detail.contains("metadata") && detail.contains("16 levels"),
        "{detail}"
    );
    let change = format!("{{\"metadata\": {}}}", nested_json(17));
    let patch = s.server.send(
        "PATCH",
        &format!("/v1/keys/{id}"),
        Some(&s.admin),
        Some(("application/json", change.as_bytes())),
    );
    patch.problem(400, "BAD_REQUEST");
    let ok = format!("{{\"metadata\": {}}}", nested_json(16));
    let patch = s.server.send(
        "PATCH",
        &format!("/v1/keys/{id}"),
        Some(&s.admin),
        Some(("application/json", ok.as_bytes())),
    );
    assert_eq!(patch.status, 200, "{}", patch.text());

    // An event no reader can decode (as an older version's data could be, or a damaged row):
    // every reader still shows the whole trail, that event raw.
    let unreadable: serde_json::Map<String, Value> =
        serde_json::from_str(&format!("{{\"x\": {}}}", nested_json(100))).unwrap();
    let mut details = unreadable.clone();
    // Nest it past what serde_json reads back (128 levels).
    for _ in 0..30 {
        details = [("x".to_string(), Value::Object(details))]
            .into_iter()
            .collect();
    }
    let event = keygate::core::AuditEvent {
        seq: 0,
        at: s.server.now(),
        kind: keygate::core::EventKind::KeyUpdated,
        actor: "cli".into(),
        key_id: None,
        request_id: Some("<script>alert(1)</script>".into()),
        details,
    };
    s.server
        .block_on(s.server.keygate().record_event(&event))
        .unwrap();
    let trail = s
        .server
        .send("GET", "/v1/audit?limit=100", Some(&s.admin), None)
        .expect(200);
    let items = trail["items"].as_array().unwrap();
    let raw = items
        .iter()
        .find(|e| e["type"] == "undecodable")
        .unwrap_or_else(|| panic!("{trail}"));
    assert!(
        raw["details"]["raw"]["details"]
            .as_str()
            .unwrap()
            .starts_with("{\"x\":")
    );
    assert_eq!(raw["details"]["raw"]["type"], "key.updated");
    assert!(
        items.iter().any(|e| e["type"] == "key.created"),
        "the rest is there"
    );
    let (code, out) = s.server.cli(&["audit"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("undecodable"), "{out}");
    let (code, out) = s.server.cli(&["audit", "--json"]);
    assert_eq!(code, 0, "{out}");

    let mut ui = crate::admin::Ui::new(&s.server);
    assert_eq!(ui.sign_in_key(&s.admin).status, 303);
    let page = ui.get("/admin/audit");
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("undecodable"));
    assert!(!page.text().contains("<script>alert(1)"), "escaped");
    let key_page = ui.get(&format!("/admin/keys/{id}"));
    assert_eq!(key_page.status, 200);
}

#[test]
fn verify_answered_in_front_of_the_router_is_answered_as_the_router_would() {
    let s = service(&[]);
    let client = s.key_with(&["orders:read"]);
    let reader = s.key_with(&["keygate:read"]);
    let verifier = s.key_with(&["keygate:verify"]);
    let json = |body: &str| Some(("application/json", body.as_bytes().to_vec()));
    let valid = format!(r#"{{"key": "{client}", "scopes": ["orders:read"]}}"#);
    type Headers = Vec<(String, Vec<u8>)>;
    type Body<'a> = Option<(&'a str, Vec<u8>)>;
    let cases: Vec<(&str, Headers, Body)> = vec![
        ("valid", vec![auth("Api-Key", &verifier)], json(&valid)),
        ("bearer", vec![auth("Bearer", &s.admin)], json(&valid)),
        ("no key", vec![], json(&valid)),
        (
            "garbage key",
            vec![auth("Api-Key", "kg_garbage")],
            json(&valid),
        ),
        ("no scope", vec![auth("Api-Key", &reader)], json(&valid)),
        (
            "not JSON",
            vec![auth("Api-Key", &verifier)],
            Some(("text/plain", valid.clone().into_bytes())),
        ),
        (
            "bad JSON",
            vec![auth("Api-Key", &verifier)],
            json("{\"key\": "),
        ),
        (
            "unknown field",
            vec![auth("Api-Key", &verifier)],
            json(r#"{"key": "x", "nope": 1}"#),
        ),
        (
            "bad scope",
            vec![auth("Api-Key", &verifier)],
            json(r#"{"key": "x", "scopes": ["A B"]}"#),
        ),
        (
            "too large",
            vec![auth("Api-Key", &verifier)],
            json(&format!(r#"{{"key": "{}"}}"#, "x".repeat(70_000))),
        ),
        (
            "refused key",
            vec![auth("Api-Key", &verifier)],
            json(r#"{"key": "kg_garbage"}"#),
        ),
    ];
    let mut statuses = Vec::new();
    for (what, headers, body) in &cases {
        let mut headers = headers.clone();
        if let Some((content_type, _)) = body {
            headers.push(("Content-Type".into(), content_type.as_bytes().to_vec()));
        }
        let send = |router_alone: bool| {
            s.server
                .router_alone
                .store(router_alone, std::sync::atomic::Ordering::SeqCst);
            let reply = s.server.raw(
                "POST",
                "/v1/verify",
                &headers,
                body.as_ref().map(|(_, b)| b.as_slice()),
            );
            s.server
                .router_alone
                .store(false, std::sync::atomic::Ordering::SeqCst);
            reply
        };
        let (routed, direct) = (send(true), send(false));
        assert_eq!(direct.status, routed.status, "{what}");
        assert_eq!(direct.body, routed.body, "{what}");
        let names = |reply: &Reply| {
            let mut h: Vec<(String, String)> = reply
                .headers
                .iter()
                .filter(|(k, _)| k != "x-request-id" && k != "date")
                .cloned()
                .collect();
            h.sort();
            h
        };
        assert_eq!(names(&direct), names(&routed), "{what}");
        assert!(direct.header("x-request-id").is_some(), "{what}");
        statuses.push(direct.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 401, 401, 403, 415, 400, 400, 400, 413, 200]
    );
    // The refused callers were audited alike: three refusals, each answered both ways.
    s.server
        .settle("6 failures recorded", |_| s.auth_failures().len() >= 6);
    let events = s.auth_failures();
    assert_eq!(events.len(), 6);
    assert!(events.iter().all(|e| e["details"]["route"] == "/v1/verify"));
    let logged = s.server.logs();
    let lines = logged
        .lines()
        .filter(|l| l.contains("request finished") && l.contains("/v1/verify"))
        .count();
    assert_eq!(
        lines,
        2 * cases.len(),
        "one access line per request, either way"
    );
}

fn auth(scheme: &str, key: &str) -> (String, Vec<u8>) {
    (
        "Authorization".into(),
        format!("{scheme} {key}").into_bytes(),
    )
}
