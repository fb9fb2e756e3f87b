//! `keygate client rotate` as a process, against a real `keygate serve` and a small real HTTP
//! API (axum on port 0) that checks keys with keygate: the env file rewritten atomically with
//! its mode kept, `--exec` fed the key on stdin, a failing `--check` leaving the old key
//! working (and the env file as it was), `--retire` ending the old key — and the keys never in
//! the client's argv (read from /proc while it waits on the check), its output, or the server's
//! log.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use crate::support::{Http, Server, cli_create, printed_key};

/// The key holder's own API: `GET /ok` answers 200 to a key keygate says is VALID (asked over
/// `/v1/verify`), 401 otherwise; `GET /broken` always 503. Each request records the argv of
/// the process named in `watched` (the client, waiting on the answer).
struct HolderApi {
    port: u16,
    watched: Arc<Mutex<Option<u32>>>,
    argv_seen: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct ApiState {
    keygate: String,
    verifier: String,
    watched: Arc<Mutex<Option<u32>>>,
    argv_seen: Arc<Mutex<Vec<String>>>,
}

async fn record_argv(state: &ApiState) {
    if let Some(pid) = *state.watched.lock().unwrap() {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        state
            .argv_seen
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&argv).replace('\0', " "));
    }
}

async fn ok(
    axum::extract::State(state): axum::extract::State<ApiState>,
    headers: http::HeaderMap,
) -> http::StatusCode {
    record_argv(&state).await;
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Api-Key "))
        .unwrap_or("")
        .to_owned();
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/verify", state.keygate))
        .header("authorization", format!("Api-Key {}", state.verifier))
        .header("content-type", "application/json")
        .body(serde_json::json!({"key": presented}).to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    if answer["code"] == "VALID" {
        http::StatusCode::OK
    } else {
        http::StatusCode::UNAUTHORIZED
    }
}

async fn broken(axum::extract::State(state): axum::extract::State<ApiState>) -> http::StatusCode {
    record_argv(&state).await;
    http::StatusCode::SERVICE_UNAVAILABLE
}

impl HolderApi {
    fn start(keygate: &Server, verifier: &str) -> HolderApi {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = ApiState {
            keygate: format!("http://{}", keygate.addr),
            verifier: verifier.to_owned(),
            watched: Arc::default(),
            argv_seen: Arc::default(),
        };
        let api = HolderApi {
            port,
            watched: state.watched.clone(),
            argv_seen: state.argv_seen.clone(),
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new()
                    .route("/ok", axum::routing::get(ok))
                    .route("/broken", axum::routing::get(broken))
                    .with_state(state);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        api
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Runs `keygate client rotate <args>` with `APP_KEY=<key>`, recording its pid for the API.
fn client_rotate(api: &HolderApi, key: &str, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["client", "rotate", "--key-env", "APP_KEY"])
        .args(args)
        .env("APP_KEY", key)
        .env_remove("KEYGATE_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    *api.watched.lock().unwrap() = Some(child.id());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn status_of(server: &Server, verifier: &str, key: &str) -> String {
    server.verify(verifier, key, &[])["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn only_file_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn client_rotate_hands_over_checks_and_retires_without_showing_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let first = Server::start(&db, &[], &[]);
    let (_, stdout) = first.stop();
    assert!(printed_key(&stdout).is_some());
    let server = Server::start(&db, &[], &[]);
    let database = format!("sqlite://{}", db.display());
    let (_, verifier) = cli_create(&database, &["--scope", "keygate:verify"]);
    let api = HolderApi::start(&server, &verifier);
    let keygate_url = format!("http://{}", server.addr);
    let holder_dir = tempfile::tempdir().unwrap();

    // 1. --write-env, --check, --retire: all goes well.
    let (old_id, old) = cli_create(&database, &["--scope", "keygate:self-rotate"]);
    let env_file = holder_dir.path().join("app.env");
    std::fs::write(
        &env_file,
        format!("# the app\nOTHER=1\nAPP_KEY={old}\nexport TAIL=x"),
    )
    .unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = client_rotate(
        &api,
        &old,
        &[
            "--server",
            &keygate_url,
            "--write-env",
            env_file.to_str().unwrap(),
            "--check",
            &api.url("/ok"),
            "--retire",
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("rotated {old_id} -> key_")),
        "{stdout}"
    );
    assert!(stdout.contains("check passed; old key retired"), "{stdout}");
    let written = std::fs::read_to_string(&env_file).unwrap();
    let new = written
        .lines()
        .find_map(|l| l.strip_prefix("APP_KEY="))
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert_eq!(
        written,
        format!("# the app\nOTHER=1\nAPP_KEY={new}\nexport TAIL=x")
    );
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o7777,
        0o640,
        "mode kept"
    );
    assert_eq!(
        only_file_in(holder_dir.path()),
        ["app.env"],
        "no temporary file left"
    );
    assert_eq!(status_of(&server, &verifier, &new), "VALID");
    assert_eq!(status_of(&server, &verifier, &old), "EXPIRED", "retired");
    let retired = crate::admin::audit_of(&database, "key.retired");
    assert_eq!(retired.len(), 1);
    assert!(
        retired[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("self:key_")
    );
    assert_eq!(retired[0]["key_id"], old_id.as_str());
    let seen = api.argv_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the check ran once: {seen:?}");
    assert!(
        seen[0].contains("client rotate --key-env APP_KEY"),
        "{seen:?}"
    );
    for secret in [&old, &new] {
        let body = &secret[3..];
        assert!(!seen[0].contains(body), "a key in the client's argv");
        assert!(
            !stdout.contains(body) && !stderr.contains(body),
            "a key in the output"
        );
    }

    // 2. --exec gets the key on stdin; a failing check leaves the old key working.
    let (_, old2) = cli_create(&database, &["--scope", "keygate:self-rotate"]);
    let sink = holder_dir.path().join("from-stdin");
    let exec = format!(
        "cat > '{}'; test -z \"$APP_KEY\" || echo inherited >> '{}'",
        sink.display(),
        sink.display()
    );
    let out = client_rotate(
        &api,
        &old2,
        &[
            "--server",
            &keygate_url,
            "--exec",
            &exec,
            "--check",
            &api.url("/broken"),
            "--retire",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("failed the check"), "{stderr}");
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    assert!(stderr.contains("old key keeps working"), "{stderr}");
    let handed = std::fs::read_to_string(&sink).unwrap();
    let new2 = handed.trim_end().to_owned();
    assert_eq!(
        handed,
        format!("{new2}\n"),
        "the key and a newline; the old key's variable not passed on"
    );
    assert_eq!(status_of(&server, &verifier, &new2), "VALID");
    assert_eq!(status_of(&server, &verifier, &old2), "VALID", "not retired");
    for secret in [&old2, &new2] {
        assert!(!stderr.contains(&secret[3..]) && !text(&out.stdout).contains(&secret[3..]));
    }
    let seen = api.argv_seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|argv| !argv.contains(&new2[3..]) && !argv.contains(&old2[3..]))
    );

    // 3. A failing check puts the env file back as it was.
    let (_, old3) = cli_create(&database, &["--scope", "keygate:self-rotate"]);
    let original = format!("APP_KEY={old3}\n");
    std::fs::write(&env_file, &original).unwrap();
    let out = client_rotate(
        &api,
        &old3,
        &[
            "--server",
            &keygate_url,
            "--write-env",
            env_file.to_str().unwrap(),
            "--check",
            &api.url("/broken"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("restored"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), original);
    assert_eq!(status_of(&server, &verifier, &old3), "VALID");

    // 4. Refusals before anything changes: no self-rotate scope, no key, --retire unchecked.
    let (_, plain) = cli_create(&database, &[]);
    std::fs::write(&env_file, "APP_KEY=unchanged\n").unwrap();
    let out = client_rotate(
        &api,
        &plain,
        &[
            "--server",
            &keygate_url,
            "--write-env",
            env_file.to_str().unwrap(),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("refused the rotation (HTTP 403"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert!(!stderr.contains(&plain[3..]));
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "APP_KEY=unchanged\n"
    );
    let out = client_rotate(
        &api,
        "",
        &["--server", &keygate_url, "--exec", "cat >/dev/null"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("APP_KEY is not set"));
    let out = client_rotate(
        &api,
        &plain,
        &["--server", &keygate_url, "--exec", "cat", "--retire"],
    );
    assert_eq!(out.status.code(), Some(2), "--retire needs --check");
    let out = client_rotate(
        &api,
        &plain,
        &[
            "--server",
            &keygate_url,
            "--exec",
            "cat",
            "--write-env",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "one destination");

    // The server's log never held a key.
    let logs = server.logs();
    for secret in [&old, &new, &old2, &new2, &old3, &plain] {
        assert!(!logs.contains(&secret[3..]), "a key in the server log");
    }
    assert!(logs.contains("old key retired by its successor"), "{logs}");
}
