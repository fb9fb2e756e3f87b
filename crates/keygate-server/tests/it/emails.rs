//! Email notices against a real SMTP server (Debian's python3-aiosmtpd, run as a process by
//! tests/smtp_server.py, writing what it receives to a maildir): an owner's contacts and the
//! operators of each event type get the rotated, expiring-soon and revoked emails, each once,
//! with the right recipients, a link to the key's admin page when a public URL is set, and no
//! key; the SMTP server down, then up: the email is retried and arrives once; STARTTLS and
//! implicit TLS to a server whose certificate chains to `smtp_ca_file`, and never to one
//! whose certificate does not; `kill -9` between the send and the mark sends that email once
//! more, with the same `Message-ID`, and loses nothing. The email log in the API, CLI and UI.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::admin::Ui;
use crate::support::{App, Http, Server, cli_create, keygate_json, poll};

/// The SMTP server script (aiosmtpd with optional TLS and a held final reply).
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py");

/// An SMTP server on 127.0.0.1:`port`, storing messages in a maildir.
struct Smtp {
    child: Child,
    maildir: PathBuf,
}

impl Smtp {
    /// A plain SMTP server.
    fn start(port: u16, maildir: &Path) -> Smtp {
        Self::launch(port, maildir, &[])
    }

    /// The server with `options` (`--tls starttls|smtps --cert .. --key ..`, `--hold FILE`).
    fn launch(port: u16, maildir: &Path, options: &[&str]) -> Smtp {
        let child = Command::new("/usr/bin/python3")
            .arg(SCRIPT)
            .args(["--port", &port.to_string()])
            .arg("--maildir")
            .arg(maildir)
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd (Debian package) must be installed");
        poll("the SMTP server", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Smtp {
            child,
            maildir: maildir.to_owned(),
        }
    }

    /// The messages received so far, raw.
    fn messages(&self) -> Vec<String> {
        messages_in(&self.maildir)
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages in `maildir`, raw.
fn messages_in(maildir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    entries
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config file in `dir` holding `text`.
fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("keygate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn send(app: &App) -> usize {
    let mailer = app
        .service
        .settings()
        .mailer
        .clone()
        .expect("email configured");
    app.block_on(keygate_server::jobs::email::send_due(
        app.keygate(),
        &mailer,
        50,
    ))
    .unwrap()
}

fn header<'m>(message: &'m str, name: &str) -> Option<&'m str> {
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

/// A message with quoted-printable soft line breaks and `=3D` undone (enough to find links).
fn decoded(message: &str) -> String {
    message
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

/// The email log through the API, with the admin key.
fn log(app: &App, query: &str) -> Value {
    app.get(&format!("/v1/emails{query}"), &app.admin)
        .expect(200)
}

#[test]
fn owners_get_rotated_and_expiring_emails_without_a_key_and_a_down_server_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!("smtp_url = \"smtp://127.0.0.1:{port}\"\nemail_from = \"keygate <keygate@example.com>\"\n"),
    )
    .unwrap();
    let maildir = dir.path().join("mail");
    let smtp = Smtp::start(port, &maildir);
    let app = App::new(&["--config", config.to_str().unwrap()]);

    let (code, out) = app.cli(&[
        "owners",
        "set",
        "acct_42",
        "--email",
        "ops@example.com",
        "--email",
        "dev@example.com",
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = app.cli(&["owners", "set", "acct_42", "--email", "not an address"]);
    assert_eq!(code, 2, "{out}");
    let (_, shown) = app.cli(&["owners", "show", "acct_42"]);
    assert_eq!(shown.trim(), "acct_42: ops@example.com, dev@example.com");

    let key = app.create(json!({"name": "billing", "owner": "acct_42"}));
    let other = app.create(json!({"name": "someone else's", "owner": "acct_7"}));
    assert_eq!(send(&app), 0, "key.created is not mailed");
    let old_id = key["id"].as_str().unwrap();
    let rotated = app
        .json(
            "POST",
            &format!("/v1/keys/{old_id}/rotate"),
            &app.admin,
            &json!({"grace_period": "1d"}),
        )
        .expect(201);
    app.json(
        "POST",
        &format!("/v1/keys/{}/rotate", other["id"].as_str().unwrap()),
        &app.admin,
        &json!({}),
    )
    .expect(201);
    assert_eq!(send(&app), 2, "one per contact of acct_42, none for acct_7");
    let got = smtp.messages();
    assert_eq!(got.len(), 2);
    let mut to: Vec<&str> = got.iter().map(|m| header(m, "To").unwrap()).collect();
    to.sort_unstable();
    assert_eq!(to, ["dev@example.com", "ops@example.com"]);
    for message in &got {
        assert!(
            header(message, "Subject").unwrap().contains("key.rotated"),
            "{message}"
        );
        assert!(
            header(message, "From")
                .unwrap()
                .contains("keygate@example.com")
        );
        assert!(
            message.contains(rotated["id"].as_str().unwrap()),
            "names the successor"
        );
        assert!(message.contains("text/html"));
        assert!(
            !message.contains("/admin/keys/"),
            "no public_url, no link: {message}"
        );
        for secret in [
            key["key"].as_str().unwrap(),
            rotated["key"].as_str().unwrap(),
        ] {
            assert!(!message.contains(&secret[3..]), "a key in an email");
        }
    }

    // The expiring-soon notice, from the scheduler's sweep.
    app.create(json!({"name": "short-lived", "owner": "acct_42", "expires_in": "1h"}));
    app.block_on(keygate_server::jobs::scheduler::sweep_once(
        app.keygate(),
        &app.service.settings().sweep,
    ))
    .unwrap();
    // Two keys of acct_42 expire within the warning (7 days): the new one, and the rotated one
    // whose grace ends in a day.
    assert_eq!(send(&app), 4);
    let expiring: Vec<String> = smtp
        .messages()
        .into_iter()
        .filter(|m| header(m, "Subject").unwrap().contains("key.expiring_soon"))
        .collect();
    assert_eq!(expiring.len(), 4);
    assert_eq!(
        expiring
            .iter()
            .filter(|m| m.contains("short-lived"))
            .count(),
        2
    );

    // The SMTP server goes away: the attempt fails and waits; back up, the email goes, once.
    smtp.stop();
    app.cli(&["owners", "set", "acct_42", "--email", "ops@example.com"]);
    let revoked = app.create(json!({"name": "revoked", "owner": "acct_42"}));
    app.json(
        "POST",
        &format!("/v1/keys/{}/revoke", revoked["id"].as_str().unwrap()),
        &app.admin,
        &json!({"reason": "rotating out"}),
    )
    .expect(200);
    assert_eq!(send(&app), 1);
    let pending = log(&app, "?limit=1");
    assert_eq!(pending["items"][0]["status"], "pending");
    assert_eq!(pending["items"][0]["attempts"], 1);
    assert!(pending["items"][0]["last_error"].is_string());
    assert_eq!(send(&app), 0, "the retry waits for its time");
    let smtp = Smtp::start(port, &maildir);
    app.advance("1s");
    assert_eq!(send(&app), 1);
    assert_eq!(send(&app), 0, "sent once");
    let revocations: Vec<String> = smtp
        .messages()
        .into_iter()
        .filter(|m| header(m, "Subject").unwrap().contains("key.revoked"))
        .collect();
    assert_eq!(revocations.len(), 1, "nothing lost, nothing twice");
    assert!(revocations[0].contains("rotating out"));
    let (_, listed) = app.cli(&["emails", "list", "--recipient", "ops@example.com"]);
    let revoked_line = listed
        .lines()
        .find(|l| l.contains("key.revoked"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        revoked_line.contains("ops@example.com") && revoked_line.contains("delivered"),
        "{listed}"
    );
    assert!(revoked_line.contains(revoked["id"].as_str().unwrap()));
    let trail = app
        .get("/v1/audit?type=owner.updated", &app.admin)
        .expect(200);
    assert_eq!(trail["items"].as_array().unwrap().len(), 2);
}

/// An owner on the daily digest: 50 expiring-soon notices wait for the next 00:00 UTC and
/// arrive as one email holding all 50.
#[test]
fn a_digest_of_50_notices_is_one_email() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!("smtp_url = \"smtp://127.0.0.1:{port}\"\nemail_from = \"keygate@example.com\"\n"),
    )
    .unwrap();
    let smtp = Smtp::start(port, &dir.path().join("mail"));
    let app = App::new(&["--config", config.to_str().unwrap()]);
    let (code, out) = app.cli(&[
        "owners",
        "set",
        "acct_9",
        "--email",
        "team@example.com",
        "--digest",
    ]);
    assert_eq!(
        (code, out.trim()),
        (0, "acct_9: team@example.com (daily digest)")
    );
    let mut keys = Vec::new();
    for n in 0..50 {
        let key = app
            .create(json!({"name": format!("batch {n}"), "owner": "acct_9", "expires_in": "3d"}));
        keys.push(key["key"].as_str().unwrap().to_owned());
    }
    let report = app
        .block_on(keygate_server::jobs::scheduler::sweep_once(
            app.keygate(),
            &app.service.settings().sweep,
        ))
        .unwrap();
    assert_eq!(report.expiring_soon_notices.len(), 50);
    assert_eq!(send(&app), 0, "a digest waits for midnight");
    app.advance("1d");
    assert_eq!(send(&app), 1, "one email for the 50 notices");
    assert_eq!(send(&app), 0);
    let got = smtp.messages();
    assert_eq!(got.len(), 1);
    let message = &got[0];
    assert_eq!(header(message, "To"), Some("team@example.com"));
    assert!(
        header(message, "Subject").unwrap().contains("50 notices"),
        "{message}"
    );
    for n in 0..50 {
        assert!(
            message.contains(&format!("\"batch {n}\"")),
            "notice {n} missing"
        );
    }
    for key in &keys {
        assert!(!message.contains(&key[3..]), "a key in the digest");
    }
    let listed = log(&app, "?owner=acct_9&limit=100");
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 50);
    assert!(
        items
            .iter()
            .all(|e| e["status"] == "delivered" && e["digest"] == true)
    );
}

/// Operators per event type: the owner's contacts and the event's operators each get one
/// email (an address in both roles, one), `*` operators get every emailed event, a key
/// without an owner reaches operators only; each email links to the key's admin page under
/// `public_url`. The log answers in the API (filters, pages, bad input), the CLI and the UI,
/// to read-only admins too.
#[test]
fn operators_get_each_notice_once_with_a_link_and_the_log_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(
        dir.path(),
        &format!(
            r#"smtp_url = "smtp://127.0.0.1:{port}"
email_from = "keygate@example.com"
public_url = "https://keys.example.com/"

[email_operators]
"key.revoked" = ["security@example.com", "OPS@example.com"]
"*" = ["audit@example.com"]
"#
        ),
    );
    let smtp = Smtp::start(port, &dir.path().join("mail"));
    let app = App::new(&["--config", config.to_str().unwrap()]);
    let (code, out) = app.cli(&[
        "owners",
        "set",
        "acct_42",
        "--email",
        "ops@example.com",
        "--email",
        "dev@example.com",
    ]);
    assert_eq!(code, 0, "{out}");
    let mine = app.create(json!({"name": "billing", "owner": "acct_42"}));
    let nobodys = app.create(json!({"name": "ci"}));
    assert_eq!(send(&app), 0, "key.created is not mailed");
    let mine_id = mine["id"].as_str().unwrap();
    app.json(
        "POST",
        &format!("/v1/keys/{mine_id}/revoke"),
        &app.admin,
        &json!({"reason": "leaked"}),
    )
    .expect(200);
    let nobodys_id = nobodys["id"].as_str().unwrap();
    app.json(
        "POST",
        &format!("/v1/keys/{nobodys_id}/rotate"),
        &app.admin,
        &json!({"grace_period": "1h"}),
    )
    .expect(201);
    assert_eq!(send(&app), 5);
    let got = smtp.messages();
    let mut to: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            (
                header(m, "To").unwrap().to_ascii_lowercase(),
                header(m, "Subject").unwrap().to_owned(),
            )
        })
        .collect();
    to.sort();
    let expected = [
        ("audit@example.com", "[keygate] key.revoked: billing"),
        ("audit@example.com", "[keygate] key.rotated: ci"),
        ("dev@example.com", "[keygate] key.revoked: billing"),
        ("ops@example.com", "[keygate] key.revoked: billing"),
        ("security@example.com", "[keygate] key.revoked: billing"),
    ];
    let to: Vec<(&str, &str)> = to.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(to, expected, "ops@ is a contact and an operator: one email");
    for message in &got {
        let message = decoded(message);
        let key = if message.contains("key.rotated") {
            nobodys_id
        } else {
            mine_id
        };
        let link = format!("https://keys.example.com/admin/keys/{key}");
        // In the plain text and in the HTML part's href.
        assert!(message.contains(&format!("\n{link}")), "{message}");
        assert!(
            message.contains(&format!("<a href=\"{link}\">")),
            "{message}"
        );
        for secret in [&mine["key"], &nobodys["key"]] {
            assert!(!message.contains(&secret.as_str().unwrap()[3..]));
        }
    }

    // The log: newest first, filtered, paged; never a body or a key.
    let all = log(&app, "");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(all["next_cursor"].is_null());
    assert!(items.iter().all(|e| e["status"] == "delivered"
        && e["sent_at"].is_string()
        && e.get("text").is_none()
        && e.get("html").is_none()));
    assert_eq!(items[0]["event"], "key.rotated", "newest first");
    assert_eq!(items[0]["key_id"], nobodys_id);
    let owned = log(&app, "?owner=acct_42");
    assert_eq!(owned["items"].as_array().unwrap().len(), 4);
    assert!(
        owned["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["owner"] == "acct_42" && e["event"] == "key.revoked")
    );
    let audit = log(&app, "?recipient=AUDIT@example.com");
    assert_eq!(audit["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        log(&app, "?status=pending")["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let first = log(&app, "?limit=2");
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = log(&app, &format!("?limit=2&cursor={cursor}"));
    assert_eq!(second["items"][0]["id"], items[2]["id"]);
    for bad in [
        "?status=sent",
        "?limit=0",
        "?limit=1001",
        "?cursor=x",
        "?owner=%20",
        "?recipient=",
        "?to=ops@example.com",
    ] {
        let reply = app.get(&format!("/v1/emails{bad}"), &app.admin);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }
    // Every answer as the OpenAPI document says.
    let contract = crate::openapi_check::Contract::new(
        app.send("GET", "/openapi.json", None, None).expect(200),
    );
    for query in ["", "?owner=acct_42&limit=1", "?status=sent", "?cursor=x"] {
        let reply = app.get(&format!("/v1/emails{query}"), &app.admin);
        contract.check_response(
            "get",
            "/v1/emails",
            reply.status,
            reply.header("content-type"),
            &reply.body,
        );
    }
    assert_eq!(app.send("GET", "/v1/emails", None, None).status, 401);
    let reader = app.create(json!({"name": "reader", "scopes": ["keygate:read"]}));
    let reader = reader["key"].as_str().unwrap();
    assert_eq!(app.get("/v1/emails", reader).status, 200);
    let verifier = app.create(json!({"name": "verifier", "scopes": ["keygate:verify"]}));
    assert_eq!(
        app.get("/v1/emails", verifier["key"].as_str().unwrap())
            .status,
        403
    );

    // The CLI.
    let (code, out) = app.cli(&["emails", "list", "--owner", "acct_42", "--json"]);
    assert_eq!(code, 0, "{out}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 4);
    let (code, out) = app.cli(&["emails", "list", "--limit", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ID  "), "{out}");
    assert!(out.contains("audit@example.com") && out.contains("key.rotated"));
    assert!(out.contains("(more: --before "), "{out}");

    // The UI: a read-only admin sees the page, linked from the navigation and the owner's
    // page; no body, no key.
    let mut ui = Ui::new(&app);
    assert_eq!(ui.sign_in_key(reader).status, 303);
    let keys_page = ui.get("/admin/keys").text();
    assert!(
        keys_page.contains("href=\"/admin/emails\""),
        "in the navigation"
    );
    let owner_page = ui.get("/admin/owners/acct_42").text();
    assert!(owner_page.contains("ops@example.com, dev@example.com"));
    assert!(owner_page.contains("href=\"/admin/emails?owner=acct%5F42\""));
    let page = ui.get("/admin/emails?owner=acct%5F42&status=delivered");
    assert_eq!(page.status, 200);
    let page = page.text();
    for expected in [
        "security@example.com",
        "dev@example.com",
        "key.revoked",
        mine_id,
        "delivered",
    ] {
        assert!(page.contains(expected), "{expected} missing");
    }
    assert!(!page.contains("key.rotated"), "filtered by owner");
    assert!(!page.contains("leaked"), "no body");
    let bad = ui.get("/admin/emails?status=sent");
    assert_eq!(bad.status, 400);
}

/// Bad operator, public URL and CA settings stop start-up with one line naming the setting:
/// in the file, and in the environment (a CLI process queues operators' emails too).
#[test]
fn bad_email_settings_are_start_up_errors_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let from_toml = |text: &str| {
        keygate_server::Settings::from_toml(text, "keygate.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("accepted: {text}"))
    };
    let err = from_toml("[email_operators]\n\"key.revokd\" = [\"ops@example.com\"]\n");
    assert!(
        err.contains("email_operators")
            && err.contains("key.revokd")
            && err.contains("key.revoked"),
        "{err}"
    );
    let err = from_toml("[email_operators]\n\"key.created\" = [\"ops@example.com\"]\n");
    assert!(
        err.contains("not an event type emails are sent for"),
        "{err}"
    );
    let err = from_toml("[email_operators]\n\"*\" = [\"ops@example.com, evil@example.com\"]\n");
    assert!(
        err.contains("email_operators") && err.contains("\"*\""),
        "{err}"
    );
    let err = from_toml("[email_operators]\n\"*\" = \"ops@example.com\"\n");
    assert!(err.contains("line 2"), "{err}");
    let err = from_toml("public_url = \"keys.example.com\"\n");
    assert!(err.contains("public_url"), "{err}");
    let err = from_toml("public_url = \"ftp://keys.example.com\"\n");
    assert!(err.contains("public_url"), "{err}");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let smtp =
        "smtp_url = \"smtp://127.0.0.1:2525?tls=required\"\nemail_from = \"k@example.com\"\n";
    let err = from_toml(&format!("{smtp}smtp_ca_file = \"{}\"\n", ca.display()));
    assert!(
        err.contains("smtp_ca_file") && err.contains("no PEM certificate"),
        "{err}"
    );
    let err = from_toml(&format!(
        "{smtp}smtp_ca_file = \"{}\"\n",
        dir.path().join("missing.pem").display()
    ));
    assert!(err.contains("smtp_ca_file: cannot read"), "{err}");
    let err = from_toml(&format!(
        "smtp_url = \"smtp://127.0.0.1:2525\"\nemail_from = \"k@example.com\"\nsmtp_ca_file = \"{}\"\n",
        ca.display()
    ));
    assert!(err.contains("without TLS"), "{err}");
    let err = from_toml(&format!("smtp_ca_file = \"{}\"\n", ca.display()));
    assert!(
        err.contains("smtp_ca_file is set but email is not"),
        "{err}"
    );

    // The environment's one-line form, read by every command.
    let url = format!("sqlite://{}", dir.path().join("k.db").display());
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.args(["--database", &url])
            .args(args)
            .env_remove("KEYGATE_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    for (name, value, says) in [
        (
            "KEYGATE_EMAIL_OPERATORS",
            "key.nope=ops@example.com",
            "KEYGATE_EMAIL_OPERATORS: \"key.nope\"",
        ),
        (
            "KEYGATE_EMAIL_OPERATORS",
            "ops@example.com",
            "KEYGATE_EMAIL_OPERATORS",
        ),
        (
            "KEYGATE_EMAIL_OPERATORS",
            "*=not-an-address",
            "KEYGATE_EMAIL_OPERATORS: \"*\"",
        ),
        (
            "KEYGATE_EMAIL_OPERATOR_DIGEST",
            "maybe",
            "KEYGATE_EMAIL_OPERATOR_DIGEST",
        ),
        (
            "KEYGATE_PUBLIC_URL",
            "ftp://keys.example.com",
            "KEYGATE_PUBLIC_URL",
        ),
    ] {
        let out = run(&[(name, value)], &["keys", "list"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(says), "{name}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let out = run(
        &[],
        &["serve", "--public-url", "https://user:pw@keys.example.com"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "public_url (--public-url / KEYGATE_PUBLIC_URL): must not hold a user name or password"
        ),
        "{stderr}"
    );
    let env = [
        (
            "KEYGATE_EMAIL_OPERATORS",
            "key.revoked=security@example.com;*=audit@example.com",
        ),
        ("KEYGATE_PUBLIC_URL", "https://keys.example.com"),
    ];
    let out = run(&env, &["keys", "create", "--name", "ci", "--json"]);
    assert!(out.status.success());
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(run(&env, &["keys", "revoke", id]).status.success());
    let listed = keygate_json(&url, &["emails", "list", "--json"]);
    let mut to: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["recipient"].as_str().unwrap())
        .collect();
    to.sort_unstable();
    assert_eq!(to, ["audit@example.com", "security@example.com"]);
}

/// A CA and a certificate for `localhost` it signed, made by openssl in `dir`; and a second
/// CA that signed nothing here.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs(dir: &Path) -> Certs {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package) must be installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "keygate test CA"), ("other-ca", "someone else's CA")] {
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (key, pem, subject) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        args.extend([
            "-keyout", &key, "-out", &pem, "-subj", &subject, "-days", "2",
        ]);
        openssl(&args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "localhost.key",
        "-out",
        "localhost.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "localhost.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "localhost.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Certs {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        cert: dir.join("localhost.pem"),
        key: dir.join("localhost.key"),
    }
}

/// An app mailing through `smtp_url`, trusting `ca`, with `ops@example.com` the contact of
/// acct_42 and one of its keys revoked (one email due).
fn app_with_one_email(dir: &Path, smtp_url: &str, ca: &Path) -> App {
    let config = config(
        dir,
        &format!(
            "smtp_url = \"{smtp_url}\"\nemail_from = \"keygate@example.com\"\nsmtp_ca_file = \"{}\"\n",
            ca.display()
        ),
    );
    let app = App::new(&["--config", config.to_str().unwrap()]);
    let (code, out) = app.cli(&["owners", "set", "acct_42", "--email", "ops@example.com"]);
    assert_eq!(code, 0, "{out}");
    let key = app.create(json!({"name": "tls", "owner": "acct_42"}));
    app.json(
        "POST",
        &format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
        &app.admin,
        &json!({}),
    )
    .expect(200);
    app
}

/// STARTTLS (`smtp://localhost:PORT?tls=required`) to a server that refuses mail before it,
/// and implicit TLS (`smtps://`), both with a certificate signed by a CA given as
/// `smtp_ca_file`: delivered. The same server with another CA trusted: not delivered (no
/// plaintext fallback), retried, the certificate error in the log.
#[test]
fn starttls_and_smtps_deliver_to_a_trusted_certificate_and_never_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let tls = |mode: &'static str| {
        vec![
            "--tls".to_owned(),
            mode.to_owned(),
            "--cert".to_owned(),
            certs.cert.display().to_string(),
            "--key".to_owned(),
            certs.key.display().to_string(),
        ]
    };
    let starttls_port = free_port();
    let starttls_mail = dir.path().join("starttls-mail");
    let options = tls("starttls");
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let starttls = Smtp::launch(starttls_port, &starttls_mail, &options);
    let url = format!("smtp://localhost:{starttls_port}?tls=required");

    let trusted_dir = tempfile::tempdir().unwrap();
    let app = app_with_one_email(trusted_dir.path(), &url, &certs.ca);
    assert_eq!(send(&app), 1);
    assert_eq!(log(&app, "")["items"][0]["status"], "delivered");
    let got = starttls.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(header(&got[0], "To"), Some("ops@example.com"));
    drop(app);

    let untrusted_dir = tempfile::tempdir().unwrap();
    let app = app_with_one_email(untrusted_dir.path(), &url, &certs.other_ca);
    assert_eq!(send(&app), 1);
    let entry = &log(&app, "")["items"][0];
    assert_eq!(entry["status"], "pending", "retried later: {entry}");
    assert_eq!(entry["attempts"], 1);
    let error = entry["last_error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_eq!(starttls.messages().len(), 1, "nothing sent in the clear");
    app.advance("1s");
    assert_eq!(send(&app), 1);
    assert_eq!(log(&app, "")["items"][0]["attempts"], 2);
    assert_eq!(starttls.messages().len(), 1);
    drop(app);

    let smtps_port = free_port();
    let options = tls("smtps");
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let smtps = Smtp::launch(smtps_port, &dir.path().join("smtps-mail"), &options);
    let smtps_dir = tempfile::tempdir().unwrap();
    let app = app_with_one_email(
        smtps_dir.path(),
        &format!("smtps://localhost:{smtps_port}"),
        &certs.ca,
    );
    assert_eq!(send(&app), 1);
    assert_eq!(log(&app, "")["items"][0]["status"], "delivered");
    assert_eq!(smtps.messages().len(), 1);
}

/// `keygate serve` is killed (SIGKILL) while the SMTP server holds the message it has stored
/// without having answered: after a restart that email is sent again — the same
/// `Message-ID` — and the other waiting email once; nothing lost, nothing a third time.
#[test]
fn kill_9_between_send_and_mark_sends_once_more_with_the_same_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let maildir = dir.path().join("mail");
    let hold = dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let _smtp = Smtp::launch(port, &maildir, &["--hold", hold.to_str().unwrap()]);
    let config = config(
        dir.path(),
        &format!("smtp_url = \"smtp://127.0.0.1:{port}\"\nemail_from = \"keygate@example.com\"\n"),
    );
    let db = dir.path().join("keys.db");
    let url = format!("sqlite://{}", db.display());
    keygate_json(
        &url,
        &[
            "owners",
            "set",
            "acct_42",
            "--email",
            "ops@example.com",
            "--email",
            "dev@example.com",
            "--json",
        ],
    );
    let (id, _) = cli_create(&url, &["--owner", "acct_42"]);
    keygate_json(&url, &["keys", "revoke", &id, "--json"]);
    let queued = keygate_json(&url, &["emails", "list", "--json"]);
    let ids: Vec<i64> = queued["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);

    let args = ["--config", config.to_str().unwrap()];
    let server = Server::start(&db, &args, &[]);
    // The server has the first email and holds its answer: kill -9 keygate now.
    poll(
        "the first email at the SMTP server",
        Duration::from_secs(20),
        || (messages_in(&maildir).len() == 1).then_some(()),
    );
    drop(server); // SIGKILL
    let pending = keygate_json(&url, &["emails", "list", "--status", "pending", "--json"]);
    assert_eq!(
        pending["items"].as_array().unwrap().len(),
        2,
        "neither marked"
    );
    std::fs::remove_file(&hold).unwrap();

    let restarted = Server::start(&db, &args, &[]);
    // The killed node's claim on the held email lasts its lease (60 s): only then is it
    // sent again. The other email goes at once.
    poll("both emails marked sent", Duration::from_secs(90), || {
        let sent = keygate_json(&url, &["emails", "list", "--status", "delivered", "--json"]);
        (sent["items"].as_array().unwrap().len() == 2).then_some(())
    });
    let (status, _) = restarted.stop();
    assert!(status.success());
    let got = messages_in(&maildir);
    let mut by_id: std::collections::BTreeMap<String, usize> = Default::default();
    for message in &got {
        *by_id
            .entry(header(message, "Message-ID").unwrap().to_owned())
            .or_default() += 1;
    }
    let expected: std::collections::BTreeMap<String, usize> = ids
        .iter()
        .map(|id| {
            let copies = if *id == ids.iter().copied().min().unwrap() {
                2
            } else {
                1
            };
            (format!("<keygate-email-{id}@keygate>"), copies)
        })
        .collect();
    assert_eq!(
        by_id, expected,
        "the held email twice with one Message-ID, the other once: {got:?}"
    );
}

/// A sent email whose mark cannot be written (another process holds the database's write
/// lock past the 5 s busy timeout) is kept by the sender and marked next round, not sent
/// again. The email was claimed before it was sent; while the lock is held, nothing new is
/// claimed, so nothing is sent either.
#[test]
fn a_mark_that_cannot_be_written_is_kept_not_sent_again() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(
        dir.path(),
        &format!("smtp_url = \"smtp://127.0.0.1:{port}\"\nemail_from = \"keygate@example.com\"\n"),
    );
    let maildir = dir.path().join("mail");
    let hold = dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let _smtp = Smtp::launch(port, &maildir, &["--hold", hold.to_str().unwrap()]);
    let app = App::new(&["--config", config.to_str().unwrap()]);
    app.cli(&["owners", "set", "acct_42", "--email", "ops@example.com"]);
    let key = app.create(json!({"name": "k", "owner": "acct_42"}));
    app.json(
        "POST",
        &format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
        &app.admin,
        &json!({}),
    )
    .expect(200);
    let mailer = app.service.settings().mailer.clone().unwrap();
    let mut sender = keygate_server::jobs::email::Sender::new(mailer);

    // Another process takes the write lock (and keeps it until its stdin closes) while the
    // SMTP server holds its answer to the claimed email; then the answer comes.
    let locker = || {
        let mut locker = Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 sys.stdin.read()\n",
            ])
            .arg(&app.db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(locker.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        locker
    };
    let mut held = None;
    let round = std::thread::scope(|scope| {
        let round = scope.spawn(|| app.block_on(sender.send_due(app.keygate(), 50)));
        poll(
            "the email at the SMTP server",
            Duration::from_secs(20),
            || (messages_in(&maildir).len() == 1).then_some(()),
        );
        held = Some(locker());
        std::fs::remove_file(&hold).unwrap();
        round.join().unwrap()
    });
    assert!(round.is_err(), "the mark could not be written");
    assert_eq!(messages_in(&maildir).len(), 1, "sent");
    // Still locked: the kept mark cannot be written yet, and nothing more is sent.
    assert!(app.block_on(sender.send_due(app.keygate(), 50)).is_err());
    let mut held = held.unwrap();
    drop(held.stdin.take());
    held.wait().unwrap();

    assert_eq!(app.block_on(sender.send_due(app.keygate(), 50)).unwrap(), 0);
    assert_eq!(log(&app, "")["items"][0]["status"], "delivered");
    assert_eq!(messages_in(&maildir).len(), 1, "not sent again");
}

/// Two senders (as two nodes run them) on one PostgreSQL, racing over the same outbox: every
/// email arrives once — each is claimed by one sender right before it is sent.
#[test]
fn two_senders_on_one_postgres_send_each_email_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config(
        dir.path(),
        &format!("smtp_url = \"smtp://127.0.0.1:{port}\"\nemail_from = \"keygate@example.com\"\n"),
    );
    let maildir = dir.path().join("mail");
    let _smtp = Smtp::start(port, &maildir);
    let database = keygate_testkit::postgres::fresh_url();
    let app = App::on_url(
        &database,
        &["--config", config.to_str().unwrap()],
        dir.path().join("unused.db"),
    );
    app.cli(&[
        "owners",
        "set",
        "acct_42",
        "--email",
        "ops@example.com",
        "--email",
        "dev@example.com",
    ]);
    for i in 0..10 {
        let key = app.create(json!({"name": format!("k{i}"), "owner": "acct_42"}));
        app.json(
            "POST",
            &format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
            &app.admin,
            &json!({}),
        )
        .expect(200);
    }
    let mailer = app.service.settings().mailer.clone().unwrap();
    let mut a = keygate_server::jobs::email::Sender::new(mailer.clone());
    let mut b = keygate_server::jobs::email::Sender::new(mailer);
    let keygate = app.keygate();
    let (sent_a, sent_b) =
        app.block_on(async { tokio::join!(a.send_due(keygate, 50), b.send_due(keygate, 50)) });
    let (sent_a, sent_b) = (sent_a.unwrap(), sent_b.unwrap());
    assert_eq!(sent_a + sent_b, 20, "a sent {sent_a}, b sent {sent_b}");
    assert_eq!(app.block_on(a.send_due(keygate, 50)).unwrap(), 0);
    let got = messages_in(&maildir);
    let ids: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|m| header(m, "Message-ID").unwrap())
        .collect();
    assert_eq!((got.len(), ids.len()), (20, 20), "each email once");
}
