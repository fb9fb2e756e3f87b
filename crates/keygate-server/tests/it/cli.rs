//! The `keygate` binary, run as a user would, on SQLite files in temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

struct Db {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Db {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        Db { dir, path }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--database".to_owned(), self.url()];
        all.extend(args.iter().map(|a| a.to_string()));
        keygate(&all, None)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Every byte of the database and its WAL/SHM files.
    fn files(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            all.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        all
    }

    fn key_count(&self) -> usize {
        self.json(&["keys", "list", "--json"])
            .as_array()
            .unwrap()
            .len()
    }
}

fn keygate(args: &[String], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.args(args)
        .env_remove("KEYGATE_DATABASE")
        .env_remove("KEYGATE_PREFIX")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// How many keys a `keys list --json` printed.
fn listed(out: &Output) -> usize {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().len()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Asserts exit status 2 with exactly one line on stderr, and returns it.
fn bad_input(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("keygate: error: "), "{err}");
    assert!(out.stdout.is_empty());
    err
}

#[test]
fn create_verify_revoke_round_trip_on_a_fresh_database() {
    let db = Db::new();
    assert!(!db.path.exists());
    let created = db.json(&[
        "keys",
        "create",
        "--name",
        "billing",
        "--scope",
        "orders:read",
        "--owner",
        "acct_1",
        "--metadata",
        r#"{"plan":"pro"}"#,
        "--json",
    ]);
    assert!(db.path.exists(), "created on first use");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kg_") && id.starts_with("key_"));
    assert_eq!(created["name"], "billing");
    assert_eq!(created["owner"], "acct_1");
    assert_eq!(created["scopes"], serde_json::json!(["orders:read"]));
    assert_eq!(created["metadata"]["plan"], "pro");
    assert!(created["created_at"].is_string());
    assert!(created["expires_at"].is_null());
    assert!(created.get("hash").is_none());

    assert_eq!(db.ok(&["keys", "verify", &key]), "VALID\n");
    assert_eq!(
        db.ok(&["keys", "verify", &key, "--scope", "orders:read"]),
        "VALID\n"
    );
    let out = db.run(&["keys", "verify", &key, "--scope", "orders:write"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(1), "INSUFFICIENT_SCOPE\n")
    );

    assert!(
        db.ok(&["keys", "revoke", &id, "--reason", "rotated"])
            .contains(&id)
    );
    let out = db.run(&["keys", "verify", &key]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(1), "REVOKED\n")
    );
    let shown = db.json(&["keys", "show", &id, "--json"]);
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["revoked_reason"], "rotated");
    assert!(
        shown["last_used_at"].is_string(),
        "the valid verifications were recorded"
    );

    // The plaintext is nowhere in the database or its WAL; the display start is.
    let files = db.files();
    assert!(!contains(&files, &key));
    assert!(!contains(&files, &key[3..]));
    assert!(!contains(&files, &key[10..30]));
    assert!(contains(&files, created["start"].as_str().unwrap()));
}

#[test]
fn expiry_past_and_future() {
    let db = Db::new();
    let past = db.json(&[
        "keys",
        "create",
        "--name",
        "old",
        "--expires-at",
        "2020-01-01T00:00:00Z",
        "--json",
    ]);
    let out = db.run(&["keys", "verify", past["key"].as_str().unwrap()]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(1), "EXPIRED\n")
    );
    assert_eq!(
        db.json(&["keys", "show", past["id"].as_str().unwrap(), "--json"])["status"],
        "expired"
    );
    let future = db.json(&[
        "keys",
        "create",
        "--name",
        "new",
        "--expires-in",
        "90d",
        "--json",
    ]);
    assert!(future["expires_at"].as_str().unwrap() > past["expires_at"].as_str().unwrap());
    assert_eq!(
        db.ok(&["keys", "verify", future["key"].as_str().unwrap()]),
        "VALID\n"
    );
    let expired = db.json(&["keys", "list", "--status", "expired", "--json"]);
    assert_eq!(expired.as_array().unwrap().len(), 1);
    assert_eq!(expired[0]["id"], past["id"]);
    let out = db.run(&[
        "keys",
        "create",
        "--name",
        "x",
        "--expires-in",
        "1d",
        "--expires-at",
        "2030-01-01T00:00:00Z",
    ]);
    bad_input(&out);
}

#[test]
fn verify_outcomes_for_odd_keys_and_stdin() {
    let db = Db::new();
    let created = db.json(&["keys", "create", "--name", "k", "--json"]);
    let key = created["key"].as_str().unwrap();
    let mut typo = key.to_owned();
    let c = typo.pop().unwrap();
    typo.push(if c == 'Z' { 'Y' } else { 'Z' });
    let unknown = format!("kg_{}", "A".repeat(32));
    for (presented, code) in [
        ("", "MISSING"),
        ("nonsense", "MALFORMED"),
        (typo.as_str(), "MALFORMED"),
        (unknown.as_str(), "MALFORMED"),
    ] {
        let out = db.run(&["keys", "verify", presented]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{code}\n"));
    }
    let other_db = Db::new();
    let stranger = other_db.json(&["keys", "create", "--name", "elsewhere", "--json"]);
    let out = db.run(&["keys", "verify", stranger["key"].as_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "NOT_FOUND\n");

    let args = vec![
        "--database".to_owned(),
        db.url(),
        "keys".into(),
        "verify".into(),
        "-".into(),
        "--json".into(),
    ];
    let out = keygate(&args, Some(&format!("{key}\n")));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["code"].as_str()),
        (Some(true), Some("VALID"))
    );
    assert_eq!(v["key"]["id"], created["id"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&key[3..]));
}

#[test]
fn database_option_is_global_and_read_from_the_environment() {
    let db = Db::new();
    let url = db.url();
    let out = keygate(
        &[
            "keys".into(),
            "create".into(),
            "--name".into(),
            "a".into(),
            "--database".into(),
            url.clone(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = keygate(
        &[
            "--database".into(),
            url.clone(),
            "keys".into(),
            "list".into(),
            "--json".into(),
        ],
        None,
    );
    assert_eq!(listed(&out), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "list", "--json"])
        .env("KEYGATE_DATABASE", db.path.to_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(listed(&out), 1);
    // The default is keygate.db in the working directory.
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "create", "--name", "cwd"])
        .env_remove("KEYGATE_DATABASE")
        .current_dir(db.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(db.dir.path().join("keygate.db").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "create", "--name", "p", "--json"])
        .env("KEYGATE_DATABASE", db.path.to_str().unwrap())
        .env("KEYGATE_PREFIX", "acme_live")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["key"].as_str().unwrap().starts_with("acme_live_"));
    assert_eq!(
        db.ok(&["keys", "verify", v["key"].as_str().unwrap()]),
        "VALID\n"
    );
}

#[test]
fn bad_input_is_one_line_exit_2_and_writes_nothing() {
    let db = Db::new();
    let created = db.json(&["keys", "create", "--name", "k", "--json"]);
    let before = db.files();
    let unknown_id = "key_01AAAAAAAAAAAAAAAAAAAAAAAA";
    let long_name = "n".repeat(201);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["keys", "show", unknown_id], "no key with that id"),
        (vec!["keys", "revoke", unknown_id], "no key with that id"),
        (vec!["keys", "show", "not-an-id"], "not a key id"),
        (
            vec![
                "keys",
                "create",
                "--name",
                "x",
                "--expires-in",
                "ninety days",
            ],
            "--expires-in",
        ),
        (
            vec!["keys", "create", "--name", "x", "--expires-in", "0d"],
            "--expires-in",
        ),
        (
            vec!["keys", "create", "--name", "x", "--expires-at", "tomorrow"],
            "RFC 3339",
        ),
        (
            vec!["keys", "create", "--name", "x", "--metadata", "{not json"],
            "not valid JSON",
        ),
        (
            vec!["keys", "create", "--name", "x", "--metadata", "[1,2]"],
            "JSON object",
        ),
        (
            vec!["keys", "create", "--name", "x", "--scope", "Not A Scope"],
            "scope",
        ),
        (vec!["keys", "create", "--name", ""], "name"),
        (vec!["keys", "create", "--name", &long_name], "name"),
        (vec!["keys", "create"], "--name"),
        (vec!["keys", "list", "--status", "zombie"], "zombie"),
        (vec!["keys", "list", "--limit", "0"], "--limit"),
        (vec!["keys", "frobnicate"], "frobnicate"),
        (vec!["--prefix", "Bad-Prefix", "keys", "list"], "prefix"),
        (vec!["audit", "--type", "key.deleted"], "key.created"),
        (vec!["audit", "--since", "yesterday"], "RFC 3339"),
    ];
    for (args, expect) in cases {
        let err = bad_input(&db.run(&args));
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let id = created["id"].as_str().unwrap();
    db.ok(&["keys", "revoke", id]);
    let err = bad_input(&db.run(&["keys", "revoke", id]));
    assert!(err.contains("revoked"), "{err}");
    let err = bad_input(&db.run(&["keys", "enable", id]));
    assert!(err.contains("revoked"), "{err}");
    assert_eq!(db.key_count(), 1);
    assert!(!before.is_empty());

    // An unreadable database: a file that is not SQLite, and a directory that does not exist.
    let garbage = db.dir.path().join("garbage.db");
    std::fs::write(&garbage, b"this is not a database, just text").unwrap();
    let out = keygate(
        &[
            "--database".into(),
            garbage.display().to_string(),
            "keys".into(),
            "list".into(),
        ],
        None,
    );
    assert!(bad_input(&out).contains("not a database"));
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        b"this is not a database, just text"
    );
    let out = keygate(
        &[
            "--database".into(),
            "sqlite:///no/such/dir/k.db".into(),
            "keys".into(),
            "list".into(),
        ],
        None,
    );
    bad_input(&out);
    assert!(!Path::new("/no/such/dir").exists());
    let out = keygate(
        &[
            "--database".into(),
            "mysql://localhost/x".into(),
            "keys".into(),
            "list".into(),
        ],
        None,
    );
    assert!(bad_input(&out).contains("mysql"));
}

#[test]
fn list_and_show_never_print_secrets_or_hashes() {
    let db = Db::new();
    let mut keys = Vec::new();
    for (name, owner, scope) in [
        ("alpha", "acct_1", "orders:read"),
        ("beta", "acct_2", "users:*"),
        ("gamma", "acct_1", "*"),
    ] {
        let v = db.json(&[
            "keys", "create", "--name", name, "--owner", owner, "--scope", scope, "--json",
        ]);
        keys.push(v);
    }
    db.ok(&["keys", "disable", keys[1]["id"].as_str().unwrap()]);
    let mut outputs = vec![
        db.ok(&["keys", "list"]),
        db.ok(&["keys", "list", "--json"]),
        db.ok(&["keys", "list", "--owner", "acct_1"]),
    ];
    for k in &keys {
        outputs.push(db.ok(&["keys", "show", k["id"].as_str().unwrap()]));
        outputs.push(db.ok(&["keys", "show", k["id"].as_str().unwrap(), "--json"]));
    }
    for out in &outputs {
        for k in &keys {
            let key = k["key"].as_str().unwrap();
            assert!(!out.contains(&key[3..]), "secret printed: {out}");
            assert!(!out.contains("hash"), "hash printed: {out}");
        }
    }
    let table = &outputs[0];
    assert!(table.starts_with("ID"));
    assert_eq!(table.lines().count(), 4);
    assert!(table.contains("disabled"));
    let acct1 = db.json(&["keys", "list", "--owner", "acct_1", "--json"]);
    let names: Vec<&str> = acct1
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gamma", "alpha"]);
    let active = db.json(&["keys", "list", "--status", "active", "--json"]);
    assert_eq!(active.as_array().unwrap().len(), 2);
    let limited = db.json(&["keys", "list", "--limit", "1", "--json"]);
    assert_eq!(limited.as_array().unwrap().len(), 1);
    let searched = db.json(&["keys", "list", "--search", "ETA", "--json"]);
    assert_eq!(searched[0]["name"], "beta");
    let id = keys[1]["id"].as_str().unwrap();
    let out = db.run(&["keys", "verify", keys[1]["key"].as_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "DISABLED\n");
    db.ok(&["keys", "enable", id]);
    assert_eq!(
        db.ok(&["keys", "verify", keys[1]["key"].as_str().unwrap()]),
        "VALID\n"
    );
}

#[test]
fn help_and_version_exit_0() {
    for args in [vec!["--help"], vec!["keys", "--help"], vec!["--version"]] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let out = keygate(&args, None);
        assert_eq!(out.status.code(), Some(0));
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn incident_revoke_by_owner_and_scope_with_a_dry_run_first() {
    let db = Db::new();
    let mut ids = std::collections::HashMap::new();
    for (name, owner, scope) in [
        ("a1", "acct_a", "orders:read"),
        ("a2", "acct_a", "orders:*"),
        ("b1", "acct_b", "orders:write"),
        ("b2", "acct_b", "users:read"),
    ] {
        let v = db.json(&[
            "keys", "create", "--name", name, "--owner", owner, "--scope", scope, "--json",
        ]);
        ids.insert(name, v["id"].as_str().unwrap().to_owned());
    }
    let events_before = db.ok(&["audit", "--json"]).lines().count();

    // Dry run: lists, changes nothing.
    let dry = db.json(&[
        "incident",
        "revoke",
        "--scope",
        "orders:write",
        "--dry-run",
        "--json",
    ]);
    let mut matched: Vec<&str> = dry["matched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    matched.sort();
    let mut want = vec![ids["a2"].as_str(), ids["b1"].as_str()];
    want.sort();
    assert_eq!(
        matched, want,
        "orders:* and orders:write grant orders:write"
    );
    assert_eq!(dry["revoked"], serde_json::json!([]));
    assert_eq!(db.ok(&["audit", "--json"]).lines().count(), events_before);
    assert_eq!(
        db.json(&["keys", "list", "--status", "revoked", "--json"]),
        serde_json::json!([])
    );

    // For real, narrowed to one owner.
    let done = db.json(&[
        "incident",
        "revoke",
        "--scope",
        "orders:write",
        "--owner",
        "acct_b",
        "--reason",
        "CI leak",
        "--json",
    ]);
    assert_eq!(done["revoked"], serde_json::json!([ids["b1"]]));
    let shown = db.json(&["keys", "show", &ids["b1"], "--json"]);
    assert_eq!(
        (shown["status"].as_str(), shown["revoked_reason"].as_str()),
        (Some("revoked"), Some("CI leak"))
    );
    for untouched in ["a1", "a2", "b2"] {
        assert_eq!(
            db.json(&["keys", "show", &ids[untouched], "--json"])["status"],
            "active"
        );
    }
    // Running it again finds nothing more to do.
    let again = db.json(&[
        "incident",
        "revoke",
        "--scope",
        "orders:write",
        "--owner",
        "acct_b",
        "--json",
    ]);
    assert_eq!(again["matched"], serde_json::json!([]));
    // With no filter it refuses: revoking everything takes a deliberate filter.
    let err = bad_input(&db.run(&["incident", "revoke"]));
    assert!(err.contains("at least one"), "{err}");
}

#[test]
fn a_bad_max_age_is_refused_before_anything_is_written() {
    let db = Db::new();
    let out = db.run(&["keys", "create", "--name", "x", "--max-age", "forever"]);
    assert!(bad_input(&out).contains("--max-age"));
}

/// The policy commands run in this process, on the app's fixed clock: keys age without
/// waiting. (Exit codes and output streams are the process tests' business above.)
mod on_a_fixed_clock {
    use serde_json::{Value, json};

    use crate::support::App;

    fn ok(app: &App, args: &[&str]) -> Value {
        let (code, out) = app.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn verify(app: &App, key: &Value) -> String {
        let (_, out) = app.cli(&["keys", "verify", key["key"].as_str().unwrap()]);
        out.trim().to_owned()
    }

    fn events(app: &App, kind: &str) -> usize {
        let (code, out) = app.cli(&["audit", "--type", kind, "--json"]);
        assert_eq!(code, 0);
        out.lines().count()
    }

    #[test]
    fn rotate_due_applies_the_max_age_policy_once() {
        let app = App::new(&[]);
        let old1 = ok(&app, &["keys", "create", "--name", "old1", "--json"]);
        let old2 = ok(&app, &["keys", "create", "--name", "old2", "--json"]);
        app.advance("2s");
        let young = ok(&app, &["keys", "create", "--name", "young", "--json"]);
        let all_events = || app.cli(&["audit", "--json"]).1.lines().count();
        let before = all_events();
        let expire = [
            "rotate-due",
            "--max-age",
            "1s",
            "--action",
            "expire",
            "--grace",
            "0",
            "--json",
        ];

        let dry = ok(&app, &[&expire[..], &["--dry-run"]].concat());
        let mut due: Vec<&str> = dry["past_max_age"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        due.sort();
        let admin = ok(&app, &["keys", "verify", &app.admin, "--json"]);
        let mut want = vec![
            admin["key"]["id"].as_str().unwrap(),
            old1["id"].as_str().unwrap(),
            old2["id"].as_str().unwrap(),
        ];
        want.sort();
        assert_eq!(
            due, want,
            "the bootstrap key, old1 and old2 are 2 s old; young is not"
        );
        assert_eq!(dry["expiry_shortened"].as_array().unwrap().len(), 3);
        assert_eq!(all_events(), before, "a dry run writes nothing");
        assert_eq!(verify(&app, &old1), "VALID");

        let notified = ok(&app, &["rotate-due", "--max-age", "1s", "--json"]);
        assert_eq!(notified["max_age_notices"].as_array().unwrap().len(), 3);
        let again = ok(&app, &["rotate-due", "--max-age", "1s", "--json"]);
        assert_eq!(again["max_age_notices"], json!([]), "notified once");
        assert_eq!(verify(&app, &old1), "VALID", "notify changes no key");

        let expired = ok(&app, &expire);
        assert_eq!(expired["expiry_shortened"].as_array().unwrap().len(), 3);
        assert_eq!(verify(&app, &old2), "EXPIRED");
        assert_eq!(verify(&app, &young), "VALID");
        let twice = ok(&app, &expire);
        assert_eq!(
            twice["expiry_shortened"],
            json!([]),
            "twice in a row acts once"
        );
        assert_eq!(events(&app, "key.max_age_exceeded"), 3);
    }

    #[test]
    fn a_keys_own_max_age_overrides_the_policy() {
        let app = App::new(&[]);
        let strict = ok(
            &app,
            &[
                "keys",
                "create",
                "--name",
                "strict",
                "--max-age",
                "1s",
                "--json",
            ],
        );
        assert_eq!(strict["max_age"], "1s");
        let lax = ok(&app, &["keys", "create", "--name", "lax", "--json"]);
        assert!(lax["max_age"].is_null());
        app.advance("2s");
        let report = ok(
            &app,
            &["rotate-due", "--max-age", "90d", "--dry-run", "--json"],
        );
        assert_eq!(report["past_max_age"], json!([strict["id"]]));
        let (_, shown) = app.cli(&["keys", "show", strict["id"].as_str().unwrap()]);
        assert!(shown.contains("max_age:     1s"), "{shown}");
    }
}
