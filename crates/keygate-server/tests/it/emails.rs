//! Email notices against a real SMTP server (Debian's python3-aiosmtpd, run as a process,
//! writing what it receives to a maildir): an owner's contacts get the rotated and
//! expiring-soon emails, with the right recipients and no key; the SMTP server down, then up:
//! the email is retried and arrives once.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::{App, Http, poll};

/// aiosmtpd listening on 127.0.0.1:`port`, storing messages in a maildir.
struct Smtp {
    child: Child,
    maildir: PathBuf,
}

impl Smtp {
    fn start(port: u16, maildir: &Path) -> Smtp {
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
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
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let log = app.block_on(app.keygate().emails(10)).unwrap();
    assert_eq!(log[0].status.as_str(), "pending");
    assert_eq!(log[0].attempts, 1);
    assert!(log[0].last_error.is_some());
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
    let (_, listed) = app.cli(&["owners", "emails"]);
    assert!(listed.contains("delivered  ops@example.com"), "{listed}");
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
    let log = app.block_on(app.keygate().emails(100)).unwrap();
    assert_eq!(log.len(), 50);
    assert!(log.iter().all(|e| e.status.as_str() == "delivered"));
}
