//! The admin UI in a real browser: headless Chromium driven over WebDriver by chromedriver
//! (Debian packages `chromium` and `chromium-driver`; `.ci/run` installs them). Sign in,
//! issue a key and read it once, reload and find it gone, use it against the API, revoke it
//! in the UI, see a form without its CSRF token refused, see an owner's usage chart drawn, and
//! save screenshots of the keys list (desktop and phone) to `target/ui-artifacts/`.
//!
//! Without chromedriver the test fails, saying how to install it; set
//! `KEYGATE_SKIP_BROWSER_TESTS=1` to skip it knowingly.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::support::{Http, Server, cli_create, keygate_json};

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn program(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    path.exists().then_some(path)
}

/// Starts chromedriver on a free port, or says why it cannot (`None`: skipped on purpose).
fn driver() -> Option<Driver> {
    let skip = std::env::var("KEYGATE_SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1");
    let Some(path) = program("CHROMEDRIVER", "/usr/bin/chromedriver") else {
        if skip {
            eprintln!("browser test skipped (KEYGATE_SKIP_BROWSER_TESTS=1)");
            return None;
        }
        panic!(
            "chromedriver not found: `apt-get install chromium chromium-driver` (or set \
             CHROMEDRIVER), or set KEYGATE_SKIP_BROWSER_TESTS=1 to skip the browser test"
        );
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Driver {
        child: Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
        port,
    };
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(driver);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chromedriver did not listen on port {port}");
}

async fn browser(driver: &Driver) -> Client {
    let chromium = program("CHROMIUM", "/usr/bin/chromium").expect("chromium is installed");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in Chromium")
}

/// Where screenshots go: `$KEYGATE_UI_ARTIFACTS`, else `target/ui-artifacts`.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("KEYGATE_UI_ARTIFACTS").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../ui-artifacts"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of the first element matching `css` once it contains `want`, waiting (up to
/// 10 s) through page loads: right after a click the old page may still be there.
async fn wait_text(c: &Client, css: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(element) = c.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(want) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never showed {want:?}; last seen {last:?}");
}

/// The text of an element that only the next page has.
async fn text_of(c: &Client, css: &str) -> String {
    wait_text(c, css, "").await
}

/// Form controls on the page without a label (every one needs one, for screen readers).
async fn assert_labelled(c: &Client) {
    let unlabelled = c
        .execute(
            "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))\
               .filter(function (e) { return !(e.labels && e.labels.length) && !e.getAttribute('aria-label'); })\
               .map(function (e) { return e.name || e.id; });",
            vec![],
        )
        .await
        .unwrap();
    let page = c.current_url().await.unwrap();
    assert_eq!(unlabelled, json!([]), "unlabelled controls on {page}");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn fill(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ui_in_chromium() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    let url = format!("sqlite://{}", db.display());
    // Usage counts written every second, for the owner page's chart.
    let server = Server::start(
        &db,
        &["--usage-flush", "1s"],
        &[("KEYGATE_LOG_LEVEL", "debug")],
    );
    let (_, admin) = cli_create(&url, &["--scope", "keygate:admin"]);
    for name in ["orders service", "reporting job", "partner: acme"] {
        keygate_json(
            &url,
            &[
                "keys",
                "create",
                "--name",
                name,
                "--owner",
                "team_ops",
                "--scope",
                "orders:read",
                "--json",
            ],
        );
    }
    let base = format!("http://{}", server.addr);
    let c = browser(&driver).await;

    // Signing in: the UI sends us to the sign-in page, then back.
    c.goto(&format!("{base}/admin")).await.unwrap();
    wait_text(&c, "h1", "Sign in").await;
    assert_labelled(&c).await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/admin/login")
    );
    let shots = artifacts();
    std::fs::write(shots.join("sign-in.png"), c.screenshot().await.unwrap()).unwrap();
    fill(&c, "#key", &admin).await;
    click(&c, "form[aria-labelledby=with-key] button[type=submit]").await;
    wait_text(&c, "h1", "Keys").await;
    wait_text(&c, "#keys", "orders service").await;
    assert_labelled(&c).await;

    // Issue a key in the form; it is shown once, with a working copy button.
    click(&c, "a[href='/admin/keys/new']").await;
    wait_text(&c, "h1", "New key").await;
    assert_labelled(&c).await;
    fill(&c, "#name", "browser-made key").await;
    fill(&c, "#owner", "acct_browser").await;
    fill(&c, "#scopes", "orders:read orders:write").await;
    fill(&c, "#expires_in", "30d").await;
    click(&c, "button.primary[type=submit]").await;
    let key = text_of(&c, "#secret-value").await;
    assert!(keygate::core::parse(&key).is_ok(), "{key}");
    assert!(
        text_of(&c, "section.secret")
            .await
            .contains("you won't see it again")
    );
    let copy = c.find(Locator::Css("button[data-copy]")).await.unwrap();
    assert!(
        copy.is_displayed().await.unwrap(),
        "the script shows the copy button"
    );
    copy.click().await.unwrap();
    let key_page = c.current_url().await.unwrap();

    // Reload: gone.
    c.refresh().await.unwrap();
    wait_text(&c, "h1", "browser-made key").await;
    assert_labelled(&c).await;
    assert!(
        c.find_all(Locator::Css("#secret-value"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!c.source().await.unwrap().contains(&key));
    std::fs::write(shots.join("key-detail.png"), c.screenshot().await.unwrap()).unwrap();

    // The key works against the API.
    let verified = server.verify(&admin, &key, &["orders:write"]);
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["key"]["owner"], "acct_browser");

    // Edit it: a new owner.
    click(&c, "#edit").await;
    wait_text(&c, "h1", "Edit browser-made key").await;
    assert_labelled(&c).await;
    let owner = c.find(Locator::Css("#owner")).await.unwrap();
    owner.clear().await.unwrap();
    owner.send_keys("acct_renamed").await.unwrap();
    click(&c, "button.primary[type=submit]").await;
    wait_text(&c, ".notice", "Saved changes").await;
    assert!(c.source().await.unwrap().contains("acct_renamed"));

    // Revoke it in the UI, with a confirmation and a reason.
    click(&c, "#revoke").await;
    wait_text(&c, "h1", "Revoke key").await;
    assert_labelled(&c).await;
    fill(&c, "#reason", "revoked from the browser test").await;
    click(&c, "#confirm-revoke").await;
    wait_text(&c, ".notice", "revoked").await;
    wait_text(&c, "#key-status", "revoked").await;
    assert!(
        c.source()
            .await
            .unwrap()
            .contains("revoked from the browser test")
    );
    assert_eq!(c.current_url().await.unwrap(), key_page);
    let refused = server.verify(&admin, &key, &[]);
    assert_eq!(
        (refused["valid"].as_bool(), refused["code"].as_str()),
        (Some(false), Some("REVOKED")),
        "{refused}"
    );

    // A form posted without its CSRF token is refused, and changes nothing.
    let victim = keygate_json(&url, &["keys", "create", "--name", "csrf target", "--json"]);
    let victim_id = victim["id"].as_str().unwrap();
    c.goto(&format!("{base}/admin/keys/{victim_id}"))
        .await
        .unwrap();
    c.execute(
        "document.querySelectorAll('input[name=csrf]').forEach(function (e) { e.remove(); });",
        vec![],
    )
    .await
    .unwrap();
    click(&c, "#disable").await;
    wait_text(&c, "h1", "Form refused").await;
    assert_eq!(
        keygate_json(&url, &["keys", "show", victim_id, "--json"])["status"],
        "active"
    );

    // An owner's page: the usage chart of its keys, drawn from the server's SVG (the CSP
    // lets the inline SVG's presentation attributes and the stylesheet through: the grid is
    // laid out, the chart has a size), once the usage flush has written the requests.
    let (_, ops_key) = cli_create(&url, &["--owner", "team_ops", "--quota", "50"]);
    for _ in 0..3 {
        assert_eq!(server.verify(&admin, &ops_key, &[])["valid"], true);
    }
    let mut counted = String::new();
    for _ in 0..100 {
        c.goto(&format!("{base}/admin/owners/team_ops"))
            .await
            .unwrap();
        counted = text_of(&c, "#usage-total").await;
        if counted.starts_with("3 verified") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted.starts_with("3 verified"), "{counted}");
    assert_labelled(&c).await;
    assert!(
        text_of(&c, "#usage-credits")
            .await
            .contains("47 left across 1 key")
    );
    let chart = c
        .find(Locator::Css("#owner-usage svg.usage-chart"))
        .await
        .unwrap();
    assert!(chart.is_displayed().await.unwrap());
    let drawn = c
        .execute(
            "var chart = document.querySelector('#owner-usage svg.usage-chart');\
             var box = chart.getBoundingClientRect();\
             return [box.width > 300 && box.height > 80,\
                     getComputedStyle(document.querySelector('#owner-usage .usage-grid')).display,\
                     chart.querySelectorAll('g > rect').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(drawn, json!([true, "grid", 1]), "the owner's chart");
    std::fs::write(shots.join("owner.png"), c.screenshot().await.unwrap()).unwrap();

    for page in ["audit", "webhooks"] {
        c.goto(&format!("{base}/admin/{page}")).await.unwrap();
        assert_labelled(&c).await;
        let shot = shots.join(format!("{page}.png"));
        std::fs::write(shot, c.screenshot().await.unwrap()).unwrap();
    }

    // The session cookie: HttpOnly, SameSite=Strict, not the key.
    let cookies = c.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|k| k.name() == "keygate_session")
        .expect("session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(
        session.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict")
    );
    for cookie in &cookies {
        assert!(!cookie.value().contains(&key[3..]) && !cookie.value().contains(&admin[3..]));
    }

    // Screenshots of the keys list: desktop, and a phone (no sideways scrolling).
    c.goto(&format!("{base}/admin/keys")).await.unwrap();
    text_of(&c, "#keys").await;
    std::fs::write(shots.join("keys-list.png"), c.screenshot().await.unwrap()).unwrap();
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/admin/keys")).await.unwrap();
    text_of(&c, "#keys").await;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        fits,
        json!(true),
        "the keys list scrolls sideways on a phone"
    );
    std::fs::write(
        shots.join("keys-list-phone.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    eprintln!("screenshots in {}", shots.display());

    // Sign out.
    c.set_window_size(1280, 900).await.unwrap();
    click(&c, "header form[action='/admin/logout'] button").await;
    wait_text(&c, ".notice", "signed out").await;
    c.close().await.unwrap();

    let logs = server.logs();
    assert!(!logs.contains(&key[3..]), "the new key reached the log");
    assert!(!logs.contains(&admin[3..]), "the admin key reached the log");
}
