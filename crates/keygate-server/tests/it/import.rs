//! `keygate import drf-api-key` and `keygate import jsonl`: a Django database of drf-api-key's
//! shape built here (SQLite, hashes computed here: drf-api-key 3.x's SHA-512 and Django's
//! PBKDF2), imported into the in-process app; the keys verify unchanged, through /v1/verify and
//! the layer, and a key is rehashed once, on its first successful check.

use std::path::{Path, PathBuf};

use base64::Engine;
use keygate::AuditQuery;
use keygate::core::{EventKind, Timestamp};
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};
use sqlx::Connection;

use crate::support::{App, Http};

const TABLE: &str = "rest_framework_api_key_apikey";
const CUSTOM: &str = "billing_organizationapikey";

/// One key of the Django database.
struct DrfKey {
    key: String,
    table: &'static str,
    hashed: String,
    name: &'static str,
    revoked: bool,
    /// Days from now (the app's clock); negative: expired.
    expiry_days: Option<i64>,
}

fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).unwrap();
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// drf-api-key 3.x's `Sha512ApiKeyHasher`: `sha512$$<hex>` of the whole key.
fn sha512_hash(key: &str) -> String {
    format!("sha512$${}", hex(&Sha512::digest(key.as_bytes())))
}

/// Django's `PBKDF2PasswordHasher.encode(key, salt, iterations)`.
fn pbkdf2_hash(key: &str, iterations: u32) -> String {
    let salt = random_alnum(22);
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        salt.as_bytes(),
        key.as_bytes(),
        &mut out,
    );
    format!(
        "pbkdf2_sha256${iterations}${salt}${}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

fn drf_key(
    table: &'static str,
    name: &'static str,
    pbkdf2: Option<u32>,
    revoked: bool,
    expiry_days: Option<i64>,
) -> DrfKey {
    let key = format!("{}.{}", random_alnum(8), random_alnum(32));
    let hashed = match pbkdf2 {
        Some(iterations) => pbkdf2_hash(&key, iterations),
        None => sha512_hash(&key),
    };
    DrfKey {
        key,
        table,
        hashed,
        name,
        revoked,
        expiry_days,
    }
}

/// A time as Django writes it into SQLite (UTC, no offset).
fn django_time(t: Timestamp) -> String {
    let text = t.to_rfc3339();
    // 2026-11-30T15:00:00.123Z -> 2026-11-30 15:00:00.123000
    let text = text.trim_end_matches('Z').replacen('T', " ", 1);
    match text.split_once('.') {
        Some((whole, ms)) => format!("{whole}.{ms:0<6}"),
        None => format!("{text}.000000"),
    }
}

/// The tables drf-api-key's migrations make (and a custom model's, with an organization and a
/// plan), filled with `keys`.
fn django_database(path: &Path, keys: &[DrfKey], now: Timestamp) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for table in [TABLE, CUSTOM] {
            let extra = if table == CUSTOM {
                ", \"organization_id\" bigint NOT NULL, \"plan\" varchar(20) NOT NULL"
            } else {
                ""
            };
            let create = format!(
                "CREATE TABLE \"{table}\" (\"id\" varchar(150) NOT NULL PRIMARY KEY, \
                 \"created\" datetime NOT NULL, \"name\" varchar(50) NOT NULL, \
                 \"revoked\" bool NOT NULL, \"expiry_date\" datetime NULL, \
                 \"hashed_key\" varchar(150) NOT NULL, \"prefix\" varchar(8) NOT NULL UNIQUE{extra})"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        for k in keys {
            let prefix = &k.key[..8];
            let expiry = k.expiry_days.map(|days| {
                django_time(Timestamp::from_unix_ms(now.unix_ms() + days * 86_400_000).unwrap())
            });
            let (columns, values) = if k.table == CUSTOM {
                (", organization_id, plan", ", 7, 'pro'")
            } else {
                ("", "")
            };
            let insert = format!(
                "INSERT INTO \"{}\" (id, created, name, revoked, expiry_date, hashed_key, prefix{columns}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7{values})",
                k.table
            );
            sqlx::query(sqlx::AssertSqlSafe(insert))
                .bind(format!("{prefix}.{}", k.hashed))
                .bind(django_time(now))
                .bind(k.name)
                .bind(k.revoked)
                .bind(expiry)
                .bind(k.hashed.clone())
                .bind(prefix.to_owned())
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
    });
}

fn code(app: &App, admin: &str, key: &str) -> String {
    app.verify(admin, key, &[])["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn events(app: &App, kind: EventKind) -> Vec<keygate::core::AuditEvent> {
    app.block_on(app.keygate().audit_trail(&AuditQuery {
        kind: Some(kind),
        ..AuditQuery::default()
    }))
    .unwrap()
    .items
}

fn import(app: &App, args: &[&str]) -> Value {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    all.push("--json");
    let (status, out) = app.cli(&all);
    assert_eq!(status, 0, "{all:?}: {out}");
    serde_json::from_str(&out).unwrap()
}

fn files_of(dir: &Path, stem: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(stem)
        {
            all.extend(crate::support::read_from_another_process(&path));
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

struct Fixture {
    app: App,
    dir: tempfile::TempDir,
    source: PathBuf,
    keys: Vec<DrfKey>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let app = App::on(&dir.path().join("keygate.db"), &[]);
    let keys = vec![
        drf_key(TABLE, "sha512 active", None, false, None),
        drf_key(TABLE, "pbkdf2 active", Some(20_000), false, Some(30)),
        drf_key(TABLE, "sha512 revoked", None, true, None),
        drf_key(TABLE, "pbkdf2 expired", Some(1_000), false, Some(-1)),
        drf_key(CUSTOM, "acme", Some(1_000), false, None),
    ];
    let source = dir.path().join("django.db");
    django_database(&source, &keys, app.now());
    Fixture {
        app,
        dir,
        source,
        keys,
    }
}

#[test]
fn drf_keys_verify_unchanged_and_are_rehashed_once() {
    let Fixture {
        app,
        dir,
        source,
        keys,
    } = fixture();
    let admin = app.admin.clone();
    let from = source.to_str().unwrap();
    let source_before = std::fs::read(&source).unwrap();

    // Before any import a key in drf's shape is no key of keygate's: malformed, no lookup.
    assert_eq!(code(&app, &admin, &keys[0].key), "MALFORMED");

    let dry = import(&app, &["drf-api-key", "--from", from, "--dry-run"]);
    assert_eq!(
        (dry["imported"].as_u64(), dry["dry_run"].as_bool()),
        (Some(4), Some(true))
    );
    assert!(
        events(&app, EventKind::KeyImported).is_empty(),
        "a dry run writes nothing"
    );

    let done = import(&app, &["drf-api-key", "--from", from]);
    assert_eq!(done["imported"], 4);
    let custom = import(
        &app,
        &[
            "drf-api-key",
            "--from",
            &format!("sqlite://{from}"),
            "--table",
            CUSTOM,
            "--owner-column",
            "organization_id",
        ],
    );
    assert_eq!(custom["imported"], 1);
    // again: nothing twice
    assert_eq!(
        import(&app, &["drf-api-key", "--from", from])["imported"],
        0
    );
    assert_eq!(
        import(&app, &["drf-api-key", "--from", from, "--dry-run"])["imported"],
        0
    );
    let imported = events(&app, EventKind::KeyImported);
    assert_eq!(imported.len(), 5);
    let trail = serde_json::to_string(&imported).unwrap();
    for k in &keys {
        assert!(!trail.contains(&k.key), "no key in the trail");
        assert!(
            !trail.contains(k.hashed.rsplit('$').next().unwrap()),
            "no hash in the trail"
        );
    }
    assert_eq!(imported[0].details["origin"]["table"], TABLE);

    // The change feed tells the verifier imported keys exist now.
    app.settle("the import is seen", |a| {
        code(a, &admin, &keys[0].key) == "VALID"
    });
    let answer = app.verify(&admin, &keys[1].key, &[]);
    assert_eq!(answer["code"], "VALID", "{answer}");
    assert_eq!(answer["key"]["name"], "pbkdf2 active");
    assert!(answer["key"]["expires_at"].is_string());
    assert_eq!(code(&app, &admin, &keys[2].key), "REVOKED");
    assert_eq!(code(&app, &admin, &keys[3].key), "EXPIRED");
    let acme = app.verify(&admin, &keys[4].key, &[]);
    assert_eq!(acme["code"], "VALID");
    assert_eq!(acme["key"]["owner"], "7");
    assert_eq!(acme["key"]["metadata"], json!({"plan": "pro"}));

    // A wrong secret under a real prefix, and an unknown prefix: no such key.
    let wrong = format!("{}.{}", &keys[1].key[..8], random_alnum(32));
    assert_eq!(code(&app, &admin, &wrong), "NOT_FOUND");
    assert_eq!(
        code(
            &app,
            &admin,
            &format!("{}.{}", random_alnum(8), random_alnum(32))
        ),
        "NOT_FOUND"
    );

    // Each key whose hash matched was rehashed once: checking it again writes nothing.
    let rehashed = events(&app, EventKind::KeyRehashed);
    assert_eq!(rehashed.len(), 5, "{rehashed:?}");
    let id = answer["key"]["id"].as_str().unwrap();
    assert_eq!(
        rehashed
            .iter()
            .filter(|e| e.key_id.as_ref().map(|k| k.as_str()) == Some(id))
            .map(|e| e.details["from"].clone())
            .collect::<Vec<_>>(),
        vec![json!("pbkdf2_sha256")]
    );
    for k in &keys {
        code(&app, &admin, &k.key);
    }
    assert_eq!(events(&app, EventKind::KeyRehashed).len(), 5);
    assert_eq!(code(&app, &admin, &keys[1].key), "VALID");
    assert_eq!(code(&app, &admin, &wrong), "NOT_FOUND");

    // The layer takes the imported key too: valid, but no admin scope (403, not 401).
    let reply = app.get("/v1/keys", &keys[0].key);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(app.get("/v1/keys", &wrong).status, 401);

    // After a restart (every cache gone) the key is found by its SHA-256.
    let db = app.db.clone();
    drop(app);
    let app = App::on(&db, &[]);
    assert_eq!(app.verify(&admin, &keys[1].key, &[])["code"], "VALID");

    // The Django database was only read; keygate's holds no plaintext key.
    assert_eq!(std::fs::read(&source).unwrap(), source_before);
    let stored = files_of(dir.path(), "keygate.db");
    assert!(!stored.is_empty());
    for k in &keys {
        assert!(!contains(&stored, &k.key), "plaintext key in the database");
        assert!(!contains(&stored, &k.key[9..]), "secret in the database");
    }
}

/// The `keygate` binary: one line on stderr and exit 2 for each bad input, nothing written.
fn binary(db: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--database")
        .arg(format!("sqlite://{}", db.display()))
        .args(args)
        .env_remove("KEYGATE_DATABASE")
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn bad_imports_are_one_line_and_exit_2_with_nothing_written() {
    let Fixture {
        app, dir, source, ..
    } = fixture();
    let from = source.to_str().unwrap().to_owned();
    // a drf table with a hash no supported hasher made, and one with an absurd PBKDF2 count
    let odd = dir.path().join("odd.db");
    let mut argon = drf_key(TABLE, "argon2", None, false, None);
    argon.hashed = "argon2$argon2id$v=19$m=102400,t=2,p=8$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into();
    let mut absurd = drf_key(TABLE, "absurd", None, false, None);
    absurd.hashed =
        "pbkdf2_sha256$999999999$salt$iXA+/rW0MJhJGcM2ZYtMGPxQYoSHzXB278352lZaqvo=".into();
    let fine = drf_key(TABLE, "fine", None, false, None);
    django_database(&odd, &[fine, argon], app.now());
    let absurd_db = dir.path().join("absurd.db");
    django_database(&absurd_db, &[absurd], app.now());
    let db = app.db.clone();
    let before = app
        .block_on(app.keygate().count_by_status())
        .unwrap()
        .total();
    drop(app);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--from".into(),
                dir.path().join("nowhere.db").display().to_string(),
            ],
            "no SQLite database file",
        ),
        (
            vec![
                "--from".into(),
                from.clone(),
                "--table".into(),
                "auth_user".into(),
            ],
            "no table `auth_user`",
        ),
        (
            vec![
                "--from".into(),
                from.clone(),
                "--table".into(),
                "x; DROP TABLE y".into(),
            ],
            "table or column name",
        ),
        (
            vec![
                "--from".into(),
                from.clone(),
                "--owner-column".into(),
                "organization_id".into(),
            ],
            "no column `organization_id`",
        ),
        (
            vec![
                "--from".into(),
                from.clone(),
                "--owner-column".into(),
                "name".into(),
            ],
            "drf-api-key's own columns",
        ),
        (
            vec!["--from".into(), "mysql://db/app".into()],
            "--from must be",
        ),
        (
            vec!["--from".into(), "postgres://nobody@127.0.0.1:1/none".into()],
            "cannot reach the PostgreSQL database",
        ),
        (
            vec!["--from".into(), odd.display().to_string()],
            "unsupported hash scheme `argon2`",
        ),
        (
            vec!["--from".into(), absurd_db.display().to_string()],
            "999999999 iterations",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["import", "drf-api-key"];
        all.extend(args.iter().map(String::as_str));
        let out = binary(&db, &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{all:?}: {stderr}");
        assert!(stderr.contains(expected), "{all:?}: {stderr}");
        assert!(!stderr.contains("$aGFzaGhhc2hoYXNo"), "{stderr}");
    }
    // The table of a model that is not drf-api-key's: named, refused.
    let other = dir.path().join("other.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=rwc", other.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (id integer, prefix text, name text)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
    let out = binary(
        &db,
        &[
            "import",
            "drf-api-key",
            "--from",
            other.to_str().unwrap(),
            "--table",
            "t",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not a drf-api-key table: it has no column `hashed_key`")
    );

    let app = App::on(&db, &[]);
    assert_eq!(
        app.block_on(app.keygate().count_by_status())
            .unwrap()
            .total(),
        before,
        "nothing written"
    );
    assert!(events(&app, EventKind::KeyImported).is_empty());
}

#[test]
fn jsonl_keys_verify_by_their_sha256_and_import_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::on(&dir.path().join("keygate.db"), &[]);
    let admin = app.admin.clone();
    let unkey = format!("sk_live_{}", random_alnum(24));
    let other = format!("acme-{}", random_alnum(30));
    let sha = |k: &str| hex(&Sha256::digest(k.as_bytes()));
    let file = dir.path().join("keys.jsonl");
    let lines = [
        json!({"id": "key_1", "name": "from unkey", "sha256": sha(&unkey), "start": "sk_live",
               "owner": "acct_9", "scopes": ["orders:read"], "metadata": {"plan": "pro"},
               "created_at": "2025-01-02T03:04:05Z"}),
        json!({"id": "key_2", "name": "revoked there", "sha256": sha(&other),
               "revoked_at": "2025-06-01T00:00:00Z"}),
    ];
    let text = format!("{}\n\n{}\n", lines[0], lines[1]);
    std::fs::write(&file, text).unwrap();
    let path = file.to_str().unwrap();

    // No key of a foreign format is looked up before keys of that kind exist.
    assert_eq!(code(&app, &admin, &unkey), "MALFORMED");
    assert_eq!(import(&app, &["jsonl", path, "--dry-run"])["imported"], 2);
    assert!(events(&app, EventKind::KeyImported).is_empty());
    assert_eq!(import(&app, &["jsonl", path])["imported"], 2);
    assert_eq!(import(&app, &["jsonl", path])["imported"], 0);

    app.settle("the import is seen", |a| code(a, &admin, &unkey) == "VALID");
    let answer = app.verify(&admin, &unkey, &["orders:read"]);
    assert_eq!(answer["code"], "VALID");
    assert_eq!(answer["key"]["owner"], "acct_9");
    assert_eq!(answer["key"]["metadata"], json!({"plan": "pro"}));
    let id = answer["key"]["id"].as_str().unwrap();
    let (status, shown) = app.cli(&["keys", "show", id, "--json"]);
    assert_eq!(status, 0, "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["created_at"], "2025-01-02T03:04:05.000Z");
    assert_eq!(shown["start"], "sk_live");
    assert_eq!(code(&app, &admin, &other), "REVOKED");
    assert_eq!(
        code(&app, &admin, &format!("sk_live_{}", random_alnum(24))),
        "NOT_FOUND"
    );
    // while keys imported by SHA-256 exist, any credential of 8 to 71 visible characters may
    // be one (a lookup, cached); anything else is still malformed without a lookup
    assert_eq!(code(&app, &admin, "kg_short"), "NOT_FOUND");
    assert_eq!(code(&app, &admin, "short"), "MALFORMED");
    assert_eq!(code(&app, &admin, &"x".repeat(72)), "MALFORMED");
    let imported = events(&app, EventKind::KeyImported);
    assert_eq!(imported.len(), 2);
    assert_eq!(
        imported[0].details["origin"],
        json!({"source": "jsonl", "id": "key_1"})
    );
    assert!(
        events(&app, EventKind::KeyCreated).len() == 1,
        "only the admin key was created"
    );

    // Bad records: the line is named, nothing is written.
    let bad_cases = [
        (
            "{\"id\": \"k\", \"name\": \"n\"}",
            "line 1: missing field `sha256`",
        ),
        (
            "{\"id\": \"k\", \"name\": \"n\", \"sha256\": \"abc\"}",
            "line 1: `sha256` is not 64 hex digits",
        ),
        ("not json", "line 1:"),
        (
            "{\"id\": \"k\", \"name\": \"n\", \"sha256\": \"SHA\", \"secret\": 1}",
            "unknown field `secret`",
        ),
    ];
    let total = app
        .block_on(app.keygate().count_by_status())
        .unwrap()
        .total();
    for (line, expected) in bad_cases {
        let line = line.replace("SHA", &sha("x"));
        std::fs::write(&file, format!("{line}\n")).unwrap();
        let (status, message) = app.cli(&["import", "jsonl", path]);
        assert_eq!(status, 2, "{line}");
        assert!(message.contains(expected), "{line}: {message}");
    }
    let dup = format!(
        "{}\n{}\n",
        json!({"id": "a", "name": "n", "sha256": sha("y")}),
        json!({"id": "b", "name": "n", "sha256": sha("y")})
    );
    std::fs::write(&file, dup).unwrap();
    let (status, message) = app.cli(&["import", "jsonl", path]);
    assert_eq!(
        (status, message.contains("line 2: `sha256` repeats")),
        (2, true),
        "{message}"
    );
    assert_eq!(
        app.block_on(app.keygate().count_by_status())
            .unwrap()
            .total(),
        total
    );
}
