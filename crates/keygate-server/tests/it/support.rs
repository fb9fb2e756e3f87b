//! Two ways to reach the service, with one request API ([`Http`]):
//!
//! - [`App`]: the application in this process ([`keygate_server::serve::Service`] over a real
//!   SQLite file), requests sent with `tower::ServiceExt::oneshot`, time on a fixed clock,
//!   log lines captured. Most tests use it: no process to start, no time to wait for.
//! - [`Server`]: `keygate serve` as a child process, spoken to over TCP, for what needs a
//!   process: start-up output, signals, restarts, two nodes, the browser.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::body::Body;
use keygate::Keygate;
use keygate::core::{FixedClock, Lifetime, Timestamp};
use keygate_server::serve::Service;
use serde_json::Value;
use tower::ServiceExt;

pub use keygate_testkit::Reply;

/// Requests, whichever way the service is reached.
pub trait Http {
    /// Any request, with exactly these headers.
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, Vec<u8>)],
        body: Option<&[u8]>,
    ) -> Reply;

    /// One request; `key` goes in `Authorization: Api-Key`.
    fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Reply {
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(key) = key {
            headers.push((
                "Authorization".into(),
                format!("Api-Key {key}").into_bytes(),
            ));
        }
        if let Some((content_type, _)) = body {
            headers.push(("Content-Type".into(), content_type.as_bytes().to_vec()));
        }
        self.raw(method, path, &headers, body.map(|(_, b)| b))
    }

    /// GET with a key.
    fn get(&self, path: &str, key: &str) -> Reply {
        self.send("GET", path, Some(key), None)
    }

    /// A JSON request with a key.
    fn json(&self, method: &str, path: &str, key: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap();
        self.send(method, path, Some(key), Some(("application/json", &bytes)))
    }

    /// `POST /v1/verify` of `key` for `scopes`, authenticated by `admin`; asserts 200 and
    /// returns the answer.
    fn verify(&self, admin: &str, key: &str, scopes: &[&str]) -> Value {
        self.json(
            "POST",
            "/v1/verify",
            admin,
            &serde_json::json!({"key": key, "scopes": scopes}),
        )
        .expect(200)
    }
}

/// The address an in-process request comes from (the admin UI's throttle reads it).
pub const PEER: &str = "192.0.2.10:50000";

/// The service in this process, over a SQLite file, on a fixed clock.
pub struct App {
    router: keygate_server::api::Application,
    /// Send requests to the router alone, past the application's `/v1/verify` shortcut.
    pub router_alone: std::sync::atomic::AtomicBool,
    /// The service (its keygate, its state).
    pub service: Service,
    /// The clock; move it with [`App::advance`].
    pub clock: Arc<FixedClock>,
    /// The bootstrap admin key.
    pub admin: String,
    /// The database file.
    pub db: PathBuf,
    logs: Arc<Mutex<Vec<u8>>>,
    _log_guard: tracing::subscriber::DefaultGuard,
    _dir: Option<tempfile::TempDir>,
    /// Last, so that it outlives everything that runs on it.
    rt: tokio::runtime::Runtime,
}

impl Drop for App {
    fn drop(&mut self) {
        // Close the store while its runtime runs (the pool's connections close on it).
        self.rt.block_on(self.service.keygate.close());
    }
}

/// Writes captured log lines into a shared buffer.
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl App {
    /// A fresh database, and the service on it with `args` (as `keygate serve` takes them).
    pub fn new(args: &[&str]) -> App {
        let dir = tempfile::tempdir().unwrap();
        let mut app = Self::on(&dir.path().join("keys.db"), args);
        app._dir = Some(dir);
        app
    }

    /// The service on the SQLite file `db`, with `args`; logs captured at trace level.
    pub fn on(db: &Path, args: &[&str]) -> App {
        let url = format!("sqlite://{}", db.display());
        Self::on_url(&url, args, db.to_path_buf())
    }

    /// The service on the database at `url`.
    pub fn on_url(url: &str, args: &[&str], db: PathBuf) -> App {
        let mut argv = vec!["keygate", "serve", "--database", url];
        argv.extend_from_slice(args);
        let cli = <keygate_server::Cli as clap::Parser>::try_parse_from(&argv).unwrap();
        let keygate_server::Command::Serve(serve) = &cli.command else {
            unreachable!()
        };
        let settings = keygate_server::Settings::resolve(&cli, Some(serve)).unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer({
                let capture = Capture(logs.clone());
                move || capture.clone()
            })
            .with_ansi(false)
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = Arc::new(FixedClock::new(wall_clock()));
        let (service, admin) = rt.block_on(async {
            let service = Service::open(settings, clock.clone()).await.unwrap();
            let issued = keygate_server::serve::bootstrap(&service.keygate)
                .await
                .unwrap();
            let admin = match issued {
                Some((_, key)) => key.expose().to_owned(),
                None => String::new(),
            };
            (service, admin)
        });
        App {
            router: service.router(),
            router_alone: std::sync::atomic::AtomicBool::new(false),
            rt,
            service,
            clock,
            admin,
            db,
            logs,
            _log_guard: log_guard,
            _dir: None,
        }
    }

    /// The keygate behind the service.
    pub fn keygate(&self) -> &Keygate {
        &self.service.keygate
    }

    /// Runs `future` on the app's runtime (background tasks run meanwhile).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// Moves the clock forward by `by` (`2s`, `1h`, ...).
    pub fn advance(&self, by: &str) {
        self.clock.advance(Lifetime::parse(by).unwrap());
    }

    /// Moves the clock forward by a millisecond (so that keys made one after another get ids
    /// in that order: ids begin with their time).
    pub fn tick(&self) {
        self.clock.advance(Lifetime::from_ms(1).unwrap());
    }

    /// The clock's time.
    pub fn now(&self) -> Timestamp {
        use keygate::core::Clock;
        self.clock.now()
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// Lets background tasks run until `done` says so (at most 5 s of real time).
    pub fn settle(&self, what: &str, mut done: impl FnMut(&App) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            self.rt
                .block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
        }
    }

    /// Runs a one-shot command (`keys rotate ...`) in this process, on the app's keygate and
    /// clock; returns the exit status (2 for a failure) and what it printed (or the error).
    pub fn cli(&self, args: &[&str]) -> (u8, String) {
        let mut argv = vec!["keygate"];
        argv.extend_from_slice(args);
        let cli = <keygate_server::Cli as clap::Parser>::try_parse_from(&argv).unwrap();
        let mut out = Vec::new();
        let ran = self.rt.block_on(keygate_server::cli::run(
            self.keygate(),
            cli.command,
            &mut out,
        ));
        match ran {
            Ok(code) => (code, String::from_utf8(out).unwrap()),
            Err(e) => (2, e.to_string()),
        }
    }

    /// `POST /v1/keys` with the admin key; asserts 201.
    pub fn create(&self, body: Value) -> Value {
        self.json("POST", "/v1/keys", &self.admin, &body)
            .expect(201)
    }
}

impl Http for App {
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, Vec<u8>)],
        body: Option<&[u8]>,
    ) -> Reply {
        let mut request = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_slice());
        }
        if let Some(body) = body {
            request = request.header("content-length", body.len());
        }
        let mut request = request
            .body(Body::from(body.map(<[u8]>::to_vec).unwrap_or_default()))
            .unwrap();
        request.extensions_mut().insert(axum::extract::ConnectInfo(
            PEER.parse::<SocketAddr>().unwrap(),
        ));
        self.rt.block_on(async {
            let response = if self.router_alone.load(std::sync::atomic::Ordering::SeqCst) {
                self.router.router_alone().clone().oneshot(request).await
            } else {
                self.router.clone().oneshot(request).await
            }
            .unwrap();
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            Reply::from_parts(status, headers, body.to_vec())
        })
    }
}

/// Now by the system clock, whole milliseconds.
pub fn wall_clock() -> Timestamp {
    use keygate::core::Clock;
    keygate::SystemClock.now()
}

/// A running `keygate serve`.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    out_reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts `keygate serve --listen 127.0.0.1:0 --database <db> <args>` and waits until it
    /// listens.
    pub fn start(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_url(&format!("sqlite://{}", db.display()), args, env)
    }

    /// Starts `keygate serve` on any database URL.
    pub fn start_url(database: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::launch(
            Command::new(env!("CARGO_BIN_EXE_keygate")),
            database,
            args,
            env,
        )
    }

    /// Starts `keygate serve` on the SQLite file `db` with at most `open_files` file
    /// descriptors (soft and hard limit, set by `prlimit`).
    pub fn start_with_open_files(db: &Path, open_files: u32, args: &[&str]) -> Server {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={open_files}:{open_files}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_keygate"));
        Self::launch(cmd, &format!("sqlite://{}", db.display()), args, &[])
    }

    fn launch(mut cmd: Command, database: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--database", database])
            .args(args)
            .env_remove("KEYGATE_DATABASE")
            .env_remove("KEYGATE_LISTEN")
            .env_remove("KEYGATE_PREFIX")
            .env_remove("KEYGATE_CONFIG")
            .env_remove("KEYGATE_LOG_FORMAT")
            .env_remove("KEYGATE_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start keygate serve");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let out_buf = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            out_buf.lock().unwrap().push_str(&text);
        });
        let err = child.stderr.take().unwrap();
        let err_buf = stderr.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                let mut buf = err_buf.lock().unwrap();
                buf.push_str(&line);
                buf.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("keygate serve did not start: {}", stderr.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            stdout,
            stderr,
            out_reader: Some(out_reader),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 10 s) until the log contains `needle`, then returns the whole log.
    pub fn wait_for_log(&self, needle: &str) -> String {
        poll("the log line", Duration::from_secs(10), || {
            let logs = self.logs();
            logs.contains(needle).then_some(logs)
        })
    }

    /// Everything logged so far (stderr).
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM, waits for the exit, and returns the status and all of stdout.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        // Signalling an already-exited process is harmless: wait() still reports its status.
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.out_reader.take() {
            reader.join().unwrap();
        }
        let out = self.stdout.lock().unwrap().clone();
        (status, out)
    }
}

impl Http for Server {
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, Vec<u8>)],
        body: Option<&[u8]>,
    ) -> Reply {
        let request =
            keygate_testkit::raw_request(method, path, &self.addr.to_string(), headers, body);
        keygate_testkit::send_blocking(self.addr, &request)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    // Text: `... listening addr=127.0.0.1:1234 ...`; JSON: `"addr":"127.0.0.1:1234"`.
    let rest = line
        .split_once("addr=")
        .map(|(_, r)| r)
        .or_else(|| line.split_once("\"addr\":\"").map(|(_, r)| r))?;
    let end = rest.find([' ', '"']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Polls `check` every 20 ms until it gives a value, for at most `within`; panics naming
/// `what` otherwise. For conditions another process brings about, never to wait for time.
pub fn poll<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `keygate --database <database> <args>` (a `--json` command), asserts it succeeded,
/// and returns what it printed.
pub fn keygate_json(database: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--database", database])
        .args(args)
        .env_remove("KEYGATE_DATABASE")
        .env_remove("KEYGATE_PREFIX")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Issues a key with the CLI on `database`, with `extra` arguments; returns (id, key).
pub fn cli_create(database: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["keys", "create", "--name", "test", "--json"];
    args.extend_from_slice(extra);
    let v = keygate_json(database, &args);
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

/// The bootstrap admin key printed on stdout, if any.
pub fn printed_key(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| keygate::core::parse(l).is_ok())
        .map(str::to_owned)
}

pub use keygate_testkit::postgres::fresh_url as postgres_url;

/// Asserts that no file in `dir` (database, WAL, shared memory) holds `secret`.
pub fn assert_not_stored(dir: &Path, secret: &str) {
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = read_from_another_process(&path);
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no files in {}", dir.display());
}

/// The bytes of `path`, read by another process (`cat`). Reading a SQLite file in this
/// process would open and close a descriptor on it, and closing any descriptor of a file drops
/// every POSIX lock this process holds on it — the in-process server's SQLite locks included.
/// Another process then believes it is alone, checkpoints and resets the WAL under the server,
/// and the server reads a stale database from then on (the flaky admin test of stops 16–18).
pub fn read_from_another_process(path: &Path) -> Vec<u8> {
    let out = std::process::Command::new("cat")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "cat {}", path.display());
    out.stdout
}
