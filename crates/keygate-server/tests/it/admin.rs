//! The admin web UI over plain HTTP (the browser tests drive the same pages in Chromium):
//! sign-in by key and password, throttling and its audit trail, sessions, CSRF, read-only
//! admins, bad input, and the plaintext key shown once and nowhere else.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{App, Http, Reply, assert_not_stored, cli_create, keygate_json};

/// A cookie-keeping client for the HTML pages (redirects are not followed: tests look at
/// them), over the app in-process or a server process alike.
pub struct Ui<'a> {
    server: &'a dyn Http,
    pub cookies: HashMap<String, String>,
    pub extra: Vec<(String, Vec<u8>)>,
}

impl<'a> Ui<'a> {
    pub fn new(server: &'a dyn Http) -> Self {
        Self {
            server,
            cookies: HashMap::new(),
            extra: Vec::new(),
        }
    }

    fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut headers = self.extra.clone();
        if !self.cookies.is_empty() {
            let cookie: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            headers.push(("Cookie".into(), cookie.join("; ").into_bytes()));
        }
        headers
    }

    fn keep_cookies(&mut self, reply: &Reply) {
        for (name, value) in &reply.headers {
            if name != "set-cookie" {
                continue;
            }
            let pair = value.split(';').next().unwrap_or_default();
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() || value.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_owned(), v.to_owned());
                }
            }
        }
    }

    pub fn get(&mut self, path: &str) -> Reply {
        let reply = self.server.raw("GET", path, &self.headers(), None);
        self.keep_cookies(&reply);
        reply
    }

    pub fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = serde_urlencoded::to_string(fields).unwrap();
        let mut headers = self.headers();
        headers.push((
            "Content-Type".into(),
            b"application/x-www-form-urlencoded".to_vec(),
        ));
        let reply = self
            .server
            .raw("POST", path, &headers, Some(body.as_bytes()));
        self.keep_cookies(&reply);
        reply
    }

    /// The CSRF token in a page's forms.
    pub fn csrf(page: &Reply) -> String {
        let text = page.text();
        let at = text
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in {text}"));
        let rest = &text[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    /// Signs in with an admin key; returns the sign-in reply.
    pub fn sign_in_key(&mut self, key: &str) -> Reply {
        let form = self.get("/admin/login");
        assert_eq!(form.status, 200, "{}", form.text());
        let csrf = Self::csrf(&form);
        self.post(
            "/admin/login",
            &[
                ("csrf", &csrf),
                ("method", "key"),
                ("key", key),
                ("next", ""),
            ],
        )
    }

    /// Signs in with a username and password; returns the sign-in reply.
    pub fn sign_in_password(&mut self, username: &str, password: &str) -> Reply {
        let form = self.get("/admin/login");
        let csrf = Self::csrf(&form);
        self.post(
            "/admin/login",
            &[
                ("csrf", &csrf),
                ("method", "password"),
                ("username", username),
                ("password", password),
            ],
        )
    }
}

pub fn location(reply: &Reply) -> &str {
    reply.header("location").unwrap_or_default()
}

/// `keygate admin set-password` with the password on stdin; returns (exit code, stderr).
fn set_password(database: &str, user: &str, password: &str, extra: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "--database",
            database,
            "admin",
            "set-password",
            user,
            "--password-stdin",
        ])
        .args(extra)
        .env_remove("KEYGATE_DATABASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The app in-process on a file in `dir`, its URL, and an admin key named `test`.
fn started(dir: &tempfile::TempDir, args: &[&str]) -> (App, String, String) {
    let db = dir.path().join("keygate.db");
    let url = format!("sqlite://{}", db.display());
    let server = App::on(&db, args);
    let (_, admin) = cli_create(&url, &["--scope", "keygate:admin"]);
    (server, url, admin)
}

pub fn audit_of(url: &str, kind: &str) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--database", url, "audit", "--type", kind, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn key_sign_in_issue_shows_the_key_once_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, admin) = started(&dir, &[]);
    let mut ui = Ui::new(&server);

    let first = ui.get("/admin/keys");
    assert_eq!(first.status, 303);
    assert_eq!(location(&first), "/admin/login?next=%2Fadmin%2Fkeys");

    let signed = ui.sign_in_key(&admin);
    assert_eq!(signed.status, 303, "{}", signed.text());
    assert_eq!(location(&signed), "/admin/keys");
    let cookie = signed
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("keygate_session="))
        .map(|(_, v)| v.clone())
        .expect("session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain http: no Secure");
    assert!(!cookie.contains(&admin[3..]), "the cookie is not the key");

    let list = ui.get("/admin/keys");
    assert_eq!(list.status, 200);
    assert_eq!(list.header("cache-control"), Some("no-store"));
    assert!(
        list.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(list.text().contains("bootstrap admin"));
    assert!(
        list.text().contains("test ("),
        "signed in as the key named test"
    );
    let csrf = Ui::csrf(&list);

    let created = ui.post(
        "/admin/keys",
        &[
            ("csrf", &csrf),
            ("name", "billing <script>alert(1)</script>"),
            ("owner", "acct_42"),
            ("scopes", "orders:read, orders:write"),
            ("expires_in", "90d"),
            ("metadata", "{\"plan\": \"pro\"}"),
        ],
    );
    assert_eq!(created.status, 303, "{}", created.text());
    let detail_path = location(&created).to_owned();
    assert!(detail_path.starts_with("/admin/keys/key_"), "{detail_path}");
    let shown = ui.get(&detail_path);
    assert_eq!(shown.status, 200);
    let text = shown.text();
    assert!(text.contains("you won't see it again"));
    assert!(!text.contains("<script>alert(1)"), "names are escaped");
    let key = text
        .split("id=\"secret-value\" data-secret>")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("plaintext shown")
        .to_owned();
    assert!(keygate::core::parse(&key).is_ok(), "{key}");

    // The key works, with what the form gave it.
    let verified = server.verify(&admin, &key, &["orders:write"]);
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["key"]["owner"], "acct_42");
    assert_eq!(verified["key"]["metadata"]["plan"], "pro");

    // Shown once: not on reload, not in any other page, cookie, the database or the log.
    let again = ui.get(&detail_path);
    assert_eq!(again.status, 200);
    assert!(!again.text().contains(&key));
    assert!(!again.text().contains("you won't see it again"));
    for path in [
        "/admin/keys",
        "/admin/audit",
        "/admin/webhooks",
        "/admin/keys?q=billing",
    ] {
        let page = ui.get(path);
        assert_eq!(page.status, 200, "{path}");
        assert!(
            !String::from_utf8_lossy(&page.raw).contains(&key[3..]),
            "{path}"
        );
    }
    assert!(ui.cookies.values().all(|v| !v.contains(&key[3..])));
    let search = ui.get("/admin/keys?q=acct_42&status=active");
    assert!(search.text().contains("billing &lt;script&gt;"));
    assert_not_stored(dir.path(), &key[3..]);
    assert_not_stored(dir.path(), &admin[3..]);
    let logs = server.logs();
    assert!(!logs.contains(&key[3..]), "new key in the log");
    assert!(!logs.contains(&admin[3..]), "admin key in the log");

    // The sign-in is in the audit trail, under the admin key.
    let signed_in = audit_of(&url, "admin.signed_in");
    assert_eq!(signed_in.len(), 1, "{signed_in:?}");
    assert!(
        signed_in[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin:key_")
    );
    let created = audit_of(&url, "key.created");
    assert!(created.iter().any(|e| e["details"]["owner"] == "acct_42"));

    // Sign out ends the session.
    let page = ui.get("/admin/keys");
    let out = ui.post("/admin/logout", &[("csrf", &Ui::csrf(&page))]);
    assert_eq!(out.status, 303);
    assert_eq!(location(&out), "/admin/login?signed_out=1");
    assert_eq!(ui.get("/admin/keys").status, 303);
}

#[test]
fn forms_need_the_csrf_token_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, admin) = started(&dir, &[]);
    let (id, _) = cli_create(&url, &[]);
    let mut ui = Ui::new(&server);
    assert_eq!(ui.sign_in_key(&admin).status, 303);
    let page = ui.get(&format!("/admin/keys/{id}"));
    let csrf = Ui::csrf(&page);

    for token in ["", "wrong", &csrf[..csrf.len() - 1]] {
        let refused = ui.post(
            &format!("/admin/keys/{id}/revoke"),
            &[("csrf", token), ("reason", "x")],
        );
        assert_eq!(refused.status, 403, "{}", refused.text());
        assert!(refused.text().contains("Form refused"));
    }
    let refused = ui.post("/admin/keys", &[("name", "no token")]);
    assert_eq!(refused.status, 403);
    // Not a form at all.
    let mut headers = ui.headers();
    headers.push(("Content-Type".into(), b"application/json".to_vec()));
    let json_body = server.raw(
        "POST",
        &format!("/admin/keys/{id}/revoke"),
        &headers,
        Some(b"{}"),
    );
    assert_eq!(json_body.status, 415);

    // Bad fields: the form again, with the error, and nothing issued.
    for (field, value, error) in [
        ("expires_in", "soon", "Expires in"),
        ("metadata", "[1,2]", "Metadata"),
        ("max_age", "-3d", "Maximum age"),
        ("name", "", "name"),
        ("scopes", "orders:réad", "copes"),
    ] {
        let mut fields = vec![("csrf", csrf.as_str()), ("name", "ok name")];
        fields.retain(|(k, _)| *k != field);
        fields.push((field, value));
        let reply = ui.post("/admin/keys", &fields);
        assert_eq!(reply.status, 400, "{field}: {}", reply.text());
        assert!(reply.text().contains(error), "{field}: {}", reply.text());
    }
    let bad_grace = ui.post(
        &format!("/admin/keys/{id}/rotate"),
        &[("csrf", &csrf), ("grace", "forever")],
    );
    assert_eq!(bad_grace.status, 400);
    assert_eq!(ui.get("/admin/keys/key_nope").status, 404);
    assert_eq!(ui.get("/admin/nowhere").status, 404);
    assert_eq!(ui.get("/admin/keys?status=sideways").status, 400);
    assert_eq!(ui.get("/admin/audit?kind=key.deleted").status, 400);
    assert_eq!(ui.get("/admin/audit?since=yesterday").status, 400);

    let listed = keygate_json(&url, &["keys", "list", "--json"]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        3,
        "nothing issued: {listed}"
    );
    let shown = keygate_json(&url, &["keys", "show", &id, "--json"]);
    assert_eq!(shown["status"], "active", "nothing revoked or rotated");

    // With the token, the same forms work: disable, enable, rotate, revoke.
    let disabled = ui.post(
        &format!("/admin/keys/{id}/enabled"),
        &[("csrf", &csrf), ("enabled", "false")],
    );
    assert_eq!(disabled.status, 303);
    assert_eq!(
        keygate_json(&url, &["keys", "show", &id, "--json"])["status"],
        "disabled"
    );
    ui.post(
        &format!("/admin/keys/{id}/enabled"),
        &[("csrf", &csrf), ("enabled", "true")],
    );
    let rotated = ui.post(
        &format!("/admin/keys/{id}/rotate"),
        &[("csrf", &csrf), ("grace", "1h")],
    );
    assert_eq!(rotated.status, 303);
    let successor = location(&rotated).to_owned();
    let page = ui.get(&successor).text();
    assert!(
        page.contains("Rotation chain") && page.contains(&id),
        "chain shown"
    );
    assert!(page.contains("data-secret"), "successor shown once");
    let revoked = ui.post(
        &format!("/admin/keys/{id}/revoke"),
        &[("csrf", &csrf), ("reason", "left the company")],
    );
    assert_eq!(revoked.status, 303);
    let shown = keygate_json(&url, &["keys", "show", &id, "--json"]);
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["revoked_reason"], "left the company");
    let again = ui.post(&format!("/admin/keys/{id}/revoke"), &[("csrf", &csrf)]);
    assert_eq!(again.status, 409, "{}", again.text());
    let detail = ui.get(&format!("/admin/keys/{id}")).text();
    assert!(detail.contains("left the company") && !detail.contains("id=\"revoke\""));
    let audit = ui
        .get(&format!("/admin/audit?key={id}&kind=key.revoked"))
        .text();
    assert!(audit.contains("key.revoked"));
}

#[test]
fn read_only_admins_see_no_buttons_and_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, _admin) = started(&dir, &[]);
    let (_, reader) = cli_create(&url, &["--scope", "keygate:read"]);
    let (id, _) = cli_create(&url, &[]);
    let (_, verifier) = cli_create(&url, &["--scope", "keygate:verify"]);

    // A key without keygate:read or keygate:admin cannot sign in.
    let mut ui = Ui::new(&server);
    let refused = ui.sign_in_key(&verifier);
    assert_eq!(refused.status, 401);
    assert!(refused.text().contains("cannot sign in"));

    let mut ui = Ui::new(&server);
    assert_eq!(ui.sign_in_key(&reader).status, 303);
    let list = ui.get("/admin/keys").text();
    assert!(list.contains("read-only"));
    assert!(!list.contains("New key"));
    let detail = ui.get(&format!("/admin/keys/{id}"));
    let text = detail.text();
    for button in [
        "id=\"rotate\"",
        "id=\"revoke\"",
        "id=\"disable\"",
        "id=\"edit\"",
        "/enabled",
    ] {
        assert!(
            !text.contains(button),
            "{button} shown to a read-only admin"
        );
    }
    assert!(!ui.get("/admin/webhooks").text().contains("Add an endpoint"));
    assert_eq!(ui.get("/admin/keys/new").status, 403);
    assert_eq!(ui.get(&format!("/admin/keys/{id}/revoke")).status, 403);
    assert_eq!(ui.get(&format!("/admin/keys/{id}/edit")).status, 403);
    // The server refuses the forms even with a valid token.
    let csrf = Ui::csrf(&detail);
    for (path, fields) in [
        ("/admin/keys".to_owned(), vec![("name", "sneaky")]),
        (format!("/admin/keys/{id}/revoke"), vec![]),
        (format!("/admin/keys/{id}/rotate"), vec![]),
        (
            format!("/admin/keys/{id}/enabled"),
            vec![("enabled", "false")],
        ),
        (format!("/admin/keys/{id}/edit"), vec![("name", "renamed")]),
        (
            "/admin/webhooks".to_owned(),
            vec![("url", "https://example.com/h")],
        ),
    ] {
        let mut fields = fields;
        fields.push(("csrf", &csrf));
        let reply = ui.post(&path, &fields);
        assert_eq!(reply.status, 403, "{path}");
        assert!(reply.text().contains("Read-only"), "{path}");
    }
    assert_eq!(
        keygate_json(&url, &["keys", "show", &id, "--json"])["status"],
        "active"
    );
    assert_eq!(
        keygate_json(&url, &["keys", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Read-only admins may still sign out.
    assert_eq!(ui.post("/admin/logout", &[("csrf", &csrf)]).status, 303);

    // A read-only password user likewise.
    assert_eq!(
        set_password(&url, "auditor", "a long enough password", &["--read-only"]).0,
        0
    );
    let mut ui = Ui::new(&server);
    assert_eq!(
        ui.sign_in_password("auditor", "a long enough password")
            .status,
        303
    );
    let page = ui.get("/admin/keys");
    assert!(page.text().contains("auditor") && page.text().contains("read-only"));
    let reply = ui.post(
        "/admin/keys",
        &[("csrf", &Ui::csrf(&page)), ("name", "sneaky")],
    );
    assert_eq!(reply.status, 403);
}

#[test]
fn password_sign_in_is_throttled_audited_and_ends_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, _admin) = started(&dir, &[]);
    let password = "correct horse battery staple";

    // Bad input to the CLI: one line, exit 2, nothing stored.
    let (code, err) = set_password(&url, "ada", "short", &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("at least 12"), "{err}");
    let (code, err) = set_password(&url, "not a name", password, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(audit_of(&url, "admin.password_set").is_empty());
    assert_eq!(set_password(&url, "ada", password, &[]).0, 0);
    assert_eq!(audit_of(&url, "admin.password_set")[0]["actor"], "cli");

    let mut ui = Ui::new(&server);
    for n in 1..=5 {
        let reply = ui.sign_in_password("ada", "wrong password, try again");
        assert_eq!(reply.status, 401, "attempt {n}");
        assert!(reply.text().contains("do not match"));
    }
    // Now locked: even the right password waits.
    let locked = ui.sign_in_password("ada", password);
    assert_eq!(locked.status, 429, "{}", locked.text());
    assert_eq!(locked.header("retry-after"), Some("1"));
    server.advance("1s");
    let unknown = ui.sign_in_password("nobody", password);
    assert_eq!(unknown.status, 401);
    assert_eq!(
        ui.sign_in_password("ada", password).status,
        429,
        "longer wait now"
    );
    server.advance("2s");
    let signed = ui.sign_in_password("ada", password);
    assert_eq!(signed.status, 303, "{}", signed.text());
    assert!(ui.get("/admin/keys").text().contains("ada"));

    let failures = audit_of(&url, "admin.sign_in_failed");
    assert_eq!(failures.len(), 6, "{failures:?}");
    assert_eq!(failures[0]["details"]["reason"], "WRONG_PASSWORD");
    assert_eq!(failures[0]["details"]["username"], "ada");
    assert_eq!(failures[4]["details"]["locked_for_s"], 1);
    assert_eq!(failures[5]["details"]["reason"], "UNKNOWN_USER");
    let signed_in = audit_of(&url, "admin.signed_in");
    assert_eq!(signed_in[0]["actor"], "user:ada");
    assert_not_stored(dir.path(), password);
    assert_not_stored(dir.path(), "wrong password");
    assert!(!server.logs().contains("horse battery"));

    // The success did not reset the address: its failures stand, so the next wrong guess from
    // it (at anyone) locks it out again at once — a valid credential buys no more guesses at
    // another user's password.
    let mut other = Ui::new(&server);
    assert_eq!(
        other.sign_in_password("bob", "a guess at bob's").status,
        401
    );
    assert_eq!(other.sign_in_password("bob", "another guess").status, 429);
    server.advance("4s");

    // Changing the password ends the user's sessions.
    assert_eq!(set_password(&url, "ada", "another long password", &[]).0, 0);
    assert_eq!(ui.get("/admin/keys").status, 303);
    assert_eq!(
        ui.sign_in_password("ada", "another long password").status,
        303
    );

    // Listing never shows a hash; removing a user ends their session and their sign-in.
    let users = keygate_json(&url, &["admin", "users", "--json"]);
    assert_eq!(users[0]["username"], "ada");
    assert_eq!(users[0]["read_only"], false);
    assert!(!users.to_string().contains("argon2"), "{users}");
    let remove = || {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--database", &url, "admin", "remove-user", "ada"])
            .output()
            .unwrap()
    };
    assert!(remove().status.success());
    assert_eq!(ui.get("/admin/keys").status, 303, "session ended");
    assert_eq!(
        ui.sign_in_password("ada", "another long password").status,
        401
    );
    let again = remove();
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).trim(),
        "keygate: error: no admin UI user called ada"
    );
    assert_eq!(audit_of(&url, "admin.user_removed")[0]["actor"], "cli");
    assert_eq!(keygate_json(&url, &["admin", "users", "--json"]), json!([]));
}

#[test]
fn sessions_end_when_idle_or_when_the_key_is_revoked_and_cookies_follow_https() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, admin) = started(&dir, &["--admin-idle-timeout", "1s"]);
    let mut ui = Ui::new(&server);
    assert_eq!(ui.sign_in_key(&admin).status, 303);
    assert_eq!(ui.get("/admin/keys").status, 200);
    server.advance("1s");
    assert_eq!(ui.get("/admin/keys").status, 303, "idle session ended");

    let (second_id, second) = cli_create(&url, &["--scope", "keygate:admin"]);
    let mut ui = Ui::new(&server);
    assert_eq!(ui.sign_in_key(&second).status, 303);
    assert_eq!(ui.get("/admin/audit").status, 200);
    server
        .json(
            "POST",
            &format!("/v1/keys/{second_id}/revoke"),
            &admin,
            &json!({}),
        )
        .expect(200);
    assert_eq!(
        ui.get("/admin/audit").status,
        303,
        "revoked key's session ended"
    );
    assert!(ui.sign_in_key(&second).status == 401);

    // Behind a TLS-terminating proxy, cookies are Secure.
    let mut ui = Ui::new(&server);
    ui.extra
        .push(("X-Forwarded-Proto".into(), b"https".to_vec()));
    let signed = ui.sign_in_key(&admin);
    let cookie = signed.header("set-cookie").unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");

    // A sign-in form posted without its cookie-bound token is refused.
    let mut stranger = Ui::new(&server);
    let reply = stranger.post(
        "/admin/login",
        &[("method", "key"), ("key", &admin), ("csrf", "x")],
    );
    assert_eq!(reply.status, 403);
    // next= never leads away from the admin UI.
    let mut ui = Ui::new(&server);
    let form = ui.get("/admin/login?next=https://evil.example/");
    let csrf = Ui::csrf(&form);
    let reply = ui.post(
        "/admin/login",
        &[
            ("csrf", &csrf),
            ("method", "key"),
            ("key", &admin),
            ("next", "//evil.example/"),
        ],
    );
    assert_eq!(location(&reply), "/admin/keys");
    // Nor to a header it cannot be written in: a control character is dropped, not a 500.
    for next in ["/admin/keys\n", "/admin/keys\r\nSet-Cookie: a=b"] {
        let mut ui = Ui::new(&server);
        let form = ui.get("/admin/login");
        let csrf = Ui::csrf(&form);
        let reply = ui.post(
            "/admin/login",
            &[
                ("csrf", &csrf),
                ("method", "key"),
                ("key", &admin),
                ("next", next),
            ],
        );
        assert_eq!(reply.status, 303, "{}", reply.text());
        assert_eq!(location(&reply), "/admin/keys");
    }
}

#[test]
fn the_keys_list_pages_searches_and_filters_and_the_audit_log_is_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _url, admin) = started(&dir, &[]);
    for n in 0..30 {
        let owner = if n % 3 == 0 {
            "acct_three"
        } else {
            "acct_other"
        };
        server
            .json(
                "POST",
                "/v1/keys",
                &admin,
                &json!({"name": format!("svc-{n:02}"), "owner": owner}),
            )
            .expect(201);
        server.tick();
    }
    let mut ui = Ui::new(&server);
    assert_eq!(ui.sign_in_key(&admin).status, 303);
    let rows = |text: &str| text.matches("data-key-id=").count();
    let first = ui.get("/admin/keys").text();
    assert_eq!(rows(&first), 25);
    assert!(
        first.contains("svc-29") && !first.contains("svc-04"),
        "newest first"
    );
    let next = first
        .split("rel=\"next\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a next page")
        .replace("&amp;", "&");
    let second = ui.get(&next).text();
    assert_eq!(rows(&second), 7, "30 + 2 admin keys");
    assert!(second.contains("svc-00") && second.contains("First page"));
    assert!(!second.contains("rel=\"next\""));

    let owned = ui.get("/admin/keys?q=ACCT_THREE").text();
    assert_eq!(rows(&owned), 10, "search matches the owner, any case");
    let by_start = ui.get("/admin/keys?q=svc-1").text();
    assert_eq!(rows(&by_start), 10);
    let start = first
        .split("<code>")
        .nth(1)
        .and_then(|r| r.split('…').next())
        .unwrap()
        .to_owned();
    assert_eq!(
        rows(&ui.get(&format!("/admin/keys?q={start}")).text()),
        1,
        "by start {start}"
    );
    assert_eq!(rows(&ui.get("/admin/keys?status=revoked").text()), 0);
    assert!(
        ui.get("/admin/keys?status=active")
            .text()
            .contains("Active (32)")
    );
    assert_eq!(
        ui.get("/admin/keys?q=a&q=b").status,
        400,
        "an unreadable query is a 400 page"
    );

    let audit = ui.get("/admin/audit?kind=key.created").text();
    let newest = audit.find("svc-29").expect("newest event shown");
    let older = audit.find("svc-28").expect("older event shown");
    assert!(newest < older, "newest first");
}

#[test]
fn editing_a_key_changes_what_differs_and_audits_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, admin) = started(&dir, &[]);
    let (id, key) = cli_create(&url, &["--scope", "orders:read", "--owner", "acct_1"]);
    let mut ui = Ui::new(&server);
    assert_eq!(ui.sign_in_key(&admin).status, 303);
    let form = ui.get(&format!("/admin/keys/{id}/edit"));
    assert_eq!(form.status, 200);
    let text = form.text();
    assert!(
        text.contains("value=\"acct_1\"") && text.contains("value=\"orders:read\""),
        "filled in"
    );
    let csrf = Ui::csrf(&form);
    let edit = |ui: &mut Ui, fields: &[(&str, &str)]| {
        let mut all = vec![
            ("csrf", csrf.as_str()),
            ("name", "test"),
            ("owner", "acct_1"),
            ("scopes", "orders:read"),
        ];
        for (k, v) in fields {
            all.retain(|(name, _)| name != k);
            all.push((k, v));
        }
        ui.post(&format!("/admin/keys/{id}/edit"), &all)
    };
    // Nothing changed: no update, no event.
    assert_eq!(edit(&mut ui, &[]).status, 303);
    assert!(
        ui.get(&format!("/admin/keys/{id}"))
            .text()
            .contains("Nothing changed.")
    );
    assert!(audit_of(&url, "key.updated").is_empty());
    // Bad input: the form again with the error; nothing stored.
    for (field, value) in [
        ("expires_at", "next tuesday"),
        ("metadata", "[]"),
        ("name", ""),
    ] {
        let reply = edit(&mut ui, &[(field, value)]);
        assert_eq!(reply.status, 400, "{field}: {}", reply.text());
        assert!(reply.text().contains("Save changes"), "the form again");
    }
    assert!(audit_of(&url, "key.updated").is_empty());
    let saved = edit(
        &mut ui,
        &[
            ("name", "billing"),
            ("scopes", "orders:read orders:write"),
            ("owner", ""),
            ("expires_at", "2099-01-01T00:00:00Z"),
            ("metadata", "{\"plan\": \"pro\"}"),
        ],
    );
    assert_eq!(saved.status, 303, "{}", saved.text());
    let shown = keygate_json(&url, &["keys", "show", &id, "--json"]);
    assert_eq!(shown["name"], "billing");
    assert_eq!(shown["owner"], Value::Null);
    assert_eq!(shown["scopes"], json!(["orders:read", "orders:write"]));
    assert_eq!(shown["expires_at"], "2099-01-01T00:00:00.000Z");
    assert_eq!(shown["metadata"]["plan"], "pro");
    let events = audit_of(&url, "key.updated");
    assert_eq!(events.len(), 1);
    let changed: Vec<&String> = events[0]["details"].as_object().unwrap().keys().collect();
    assert_eq!(
        changed,
        ["expires_at", "metadata", "name", "owner", "scopes"]
    );
    assert!(events[0]["actor"].as_str().unwrap().starts_with("admin:"));
    // The key itself still works, with its new scope.
    let verified = server.verify(&admin, &key, &["orders:write"]);
    assert_eq!(verified["valid"], true);
}

/// Five wrong keys from the client `ui` (headers included), then `ui`'s next attempt.
fn lock_out(ui: &mut Ui) -> u16 {
    for _ in 0..5 {
        assert_eq!(ui.sign_in_key("kg_notarealkey").status, 401);
    }
    ui.sign_in_key("kg_notarealkey").status
}

#[test]
fn the_throttle_ignores_x_forwarded_for_unless_told_to_trust_the_proxy() {
    // By default the peer address counts: a made-up X-Forwarded-For does not get round it.
    let dir = tempfile::tempdir().unwrap();
    let (server, _url, admin) = started(&dir, &[]);
    let mut ui = Ui::new(&server);
    ui.extra
        .push(("X-Forwarded-For".into(), b"198.51.100.1".to_vec()));
    assert_eq!(lock_out(&mut ui), 429);
    let mut spoofer = Ui::new(&server);
    spoofer
        .extra
        .push(("X-Forwarded-For".into(), b"198.51.100.2".to_vec()));
    assert_eq!(spoofer.sign_in_key(&admin).status, 429);

    // Behind a trusted proxy, each forwarded client has its own count.
    let dir = tempfile::tempdir().unwrap();
    let (server, url, admin) = started(&dir, &["--trust-forwarded-for"]);
    let mut attacker = Ui::new(&server);
    attacker.extra.push((
        "X-Forwarded-For".into(),
        b"203.0.113.9, 198.51.100.1".to_vec(),
    ));
    assert_eq!(lock_out(&mut attacker), 429);
    let mut colleague = Ui::new(&server);
    colleague.extra.push((
        "X-Forwarded-For".into(),
        b"203.0.113.9, 198.51.100.7".to_vec(),
    ));
    assert_eq!(colleague.sign_in_key(&admin).status, 303, "not locked out");
    let failures = audit_of(&url, "admin.sign_in_failed");
    assert_eq!(failures[0]["details"]["address"], "198.51.100.1");
}
