//! `keygate serve` as a process, for what only a process shows: the bootstrap key printed
//! once on stdout, configuration from files and the environment, JSON logs on stderr, and
//! shutdown on SIGTERM. (The API itself is tested in-process: `api.rs`.)

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::{Http, Server, cli_create, printed_key};

/// Issues a key with the CLI on the SQLite file `db`; returns the plaintext.
fn cli_key(db: &std::path::Path, extra: &[&str]) -> String {
    cli_create(&format!("sqlite://{}", db.display()), extra).1
}

struct Service {
    server: Server,
    admin: String,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

/// A fresh database, a running server and its bootstrap admin key.
fn service(args: &[&str]) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let server = Server::start(&db, args, &[]);
    // The bootstrap key reaches stdout only in full once the server exits; for a running
    // server, issue a second admin key with the CLI on the same (live) database.
    let admin = cli_key(&db, &["--scope", "keygate:admin"]);
    Service {
        server,
        admin,
        db,
        _dir: dir,
    }
}

impl Service {
    fn create(&self, body: Value) -> Value {
        self.server
            .json("POST", "/v1/keys", &self.admin, &body)
            .expect(201)
    }

    fn verify(&self, key: &str, scopes: &[&str]) -> Value {
        self.server.verify(&self.admin, key, scopes)
    }
}

#[test]
fn bootstrap_admin_key_is_printed_once_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let first = Server::start(&db, &[], &[]);
    let addr = first.addr;
    let (status, stdout) = first.stop();
    assert!(status.success(), "exit status {status:?}");
    let admin = printed_key(&stdout).expect("the bootstrap key on stdout");
    assert!(stdout.contains("keygate:admin") && stdout.contains("only this once"));
    assert_ne!(addr.port(), 0);

    let second = Server::start(&db, &[], &[]);
    let listed = second.get("/v1/keys", &admin).expect(200);
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["scopes"], json!(["keygate:admin"]));
    assert_eq!(items[0]["name"], "bootstrap admin");
    let logs = second.logs();
    let (status, stdout) = second.stop();
    assert!(status.success());
    assert_eq!(printed_key(&stdout), None, "printed again: {stdout}");
    assert!(!logs.contains(&admin[3..]), "the key reached the log");
    let files: Vec<u8> = std::fs::read_dir(dir.path())
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!files.windows(admin.len()).any(|w| w == admin.as_bytes()));
}

#[test]
fn config_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, "prefix = \"acme_test\"\nlog_format = \"json\"\n").unwrap();
    let config_arg = config.display().to_string();
    // The file's prefix is used...
    let s = Server::start(&db, &["--config", &config_arg], &[]);
    assert!(
        s.logs().lines().all(|l| l.starts_with('{')),
        "json logs from the file"
    );
    let (_, stdout) = s.stop();
    let admin = printed_key(&stdout).unwrap();
    assert!(admin.starts_with("acme_test_"), "{admin}");
    // ...unless the environment says otherwise.
    let s = Server::start(
        &db,
        &["--config", &config_arg],
        &[
            ("KEYGATE_PREFIX", "acme_live"),
            ("KEYGATE_LOG_FORMAT", "text"),
        ],
    );
    assert!(!s.logs().starts_with('{'));
    let made = s
        .json("POST", "/v1/keys", &admin, &json!({"name": "env"}))
        .expect(201);
    assert!(made["key"].as_str().unwrap().starts_with("acme_live_"));
    drop(s);

    // A bad config file: one line, exit 2, nothing served.
    for (text, expect) in [
        ("prefix = \"Bad Prefix\"\n", "prefix"),
        ("lissen = \"127.0.0.1:1\"\n", "lissen"),
        ("listen = [\n", "line"),
        ("log_format = \"xml\"\n", "log_format"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args([
                "serve",
                "--config",
                &config_arg,
                "--database",
                db.to_str().unwrap(),
            ])
            .env_remove("KEYGATE_LISTEN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{text}: {err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "serve",
            "--listen",
            "not-an-address",
            "--database",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

#[test]
fn sigterm_finishes_cleanly_and_writes_usage() {
    let s = service(&[]);
    let created = s.create(json!({"name": "used"}));
    let v = s.verify(created["key"].as_str().unwrap(), &[]);
    assert_eq!(v["code"], "VALID");
    let shown = s
        .server
        .get(
            &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
            &s.admin,
        )
        .expect(200);
    assert!(
        shown["last_used_at"].is_null(),
        "usage is batched, not written per request"
    );
    let Service {
        server, db, _dir, ..
    } = s;
    let (status, _) = server.stop();
    assert_eq!(status.code(), Some(0));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "--database",
            db.to_str().unwrap(),
            "keys",
            "show",
            created["id"].as_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["last_used_at"].is_string(),
        "usage written at shutdown: {v}"
    );
}

#[test]
fn an_in_flight_request_finishes_after_sigterm() {
    use std::io::{Read, Write};
    let s = service(&[]);
    let body = br#"{"name": "created during shutdown"}"#;
    // `Expect: 100-continue`: the server says `100 Continue` when the handler starts reading
    // the body, which tells the test the request is in flight (no guessing with a sleep).
    let head = format!(
        "POST /v1/keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Api-Key {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        s.admin,
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(s.server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{interim:?}");
    stream.write_all(&body[..10]).unwrap();
    // The request is in flight: signal, then send the rest of its body.
    let Service {
        server, db, _dir, ..
    } = s;
    let pid = server.pid().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    server.wait_for_log("shutdown signal received");
    stream.write_all(&body[10..]).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    let (status, _) = server.stop();
    assert_eq!(status.code(), Some(0));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "--database",
            db.to_str().unwrap(),
            "keys",
            "list",
            "--search",
            "during shutdown",
            "--json",
        ])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "the key was written whole"
    );
}

#[test]
fn json_logs_carry_request_ids() {
    let s = service(&["--log-format", "json"]);
    s.server.raw(
        "GET",
        "/healthz",
        &[("X-Request-Id".into(), b"trace-me-123".to_vec())],
        None,
    );
    s.server.get("/v1/keys", &s.admin).expect(200);
    let logs = s.server.wait_for_log("\"route\":\"/v1/keys\"");
    let mut seen = false;
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["message"] == "request finished" && v["request_id"] == "trace-me-123" {
            assert_eq!(v["route"], "/healthz");
            assert_eq!(v["status"], 200);
            seen = true;
        }
    }
    assert!(seen, "{logs}");
}

#[test]
fn metrics_can_move_to_their_own_listener() {
    let s = service(&["--metrics-listen", "127.0.0.1:0"]);
    let logs = s.server.wait_for_log("serving /metrics");
    let line = logs
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .unwrap();
    let addr: std::net::SocketAddr = line
        .split_once("addr=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"));
    // Not on the API's listener, even with an admin key...
    s.server
        .send("GET", "/metrics", Some(&s.admin), None)
        .problem(404, "NOT_FOUND");
    // ...but on its own, and only /metrics there.
    let request = keygate_testkit::raw_request("GET", "/metrics", &addr.to_string(), &[], None);
    let metrics = keygate_testkit::send_blocking(addr, &request);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("keygate_keys{status=\"active\"}"),
        "{}",
        metrics.text()
    );
    let request = keygate_testkit::raw_request("GET", "/v1/keys", &addr.to_string(), &[], None);
    assert_eq!(keygate_testkit::send_blocking(addr, &request).status, 404);
}
