//! `keygate gateway` as a real process in front of a real upstream: a small hyper server this
//! test starts on port 0, on its own runtime thread, that records every request it receives.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::support::{Http, Reply, Server, cli_create, keygate_json, postgres_url};

// ---------------------------------------------------------------------------------------------
// The upstream.

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query, as sent.
    target: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Everything received, as text: to look for a key anywhere.
    fn text(&self) -> String {
        let mut text = format!("{} {}\n", self.method, self.target);
        for (k, v) in &self.headers {
            text.push_str(&format!("{k}: {v}\n"));
        }
        text
    }
}

/// A body fed by a channel: lets a handler send frames when the test says so, or fail.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    size: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        self.size
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Opened by the test to let a gated handler go on.
    gate: Arc<Semaphore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [b'z'; CHUNK];

impl Upstream {
    /// Serves (by the last path segment, whatever the prefix):
    /// `.../echo` records and answers `ok`; `.../bytes?n=N` streams N bytes; `.../upload`
    /// counts the body; `.../sse` sends one event, waits for the gate, sends another;
    /// `.../gated?n=N` streams N/2 bytes, waits for the gate, then the rest; `.../slow` waits
    /// for the gate before answering; `.../reset?n=N` promises N bytes, sends 64 KiB, waits
    /// for the gate and fails; `.../ws` is a WebSocket echo.
    fn start() -> Upstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (seen2, gate2) = (seen.clone(), gate.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                tokio::pin!(stop_rx);
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => accepted.unwrap(),
                        _ = &mut stop_rx => break,
                    };
                    let (seen, gate) = (seen2.clone(), gate2.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            handle(request, seen.clone(), gate.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        Upstream {
            addr: addr_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            seen,
            gate,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn open_gate(&self) {
        self.gate.add_permits(1);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Let anything waiting at the gate go, then stop accepting.
        self.gate.add_permits(1000);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The runtime ends with the thread; open connections are dropped with it.
            let _ = thread.join();
        }
    }
}

fn query_n(request: &Request<Incoming>) -> u64 {
    request
        .uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "n"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn full(status: StatusCode, text: impl Into<Bytes>) -> Response<UpBody> {
    let mut response = Response::new(Full::new(text.into()).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response
}

/// Streams `n` bytes into a channel body, stopping at the gate after `gate_after` bytes.
fn streamed(n: u64, gate_after: Option<(u64, Arc<Semaphore>)>, fail_after: Option<u64>) -> UpBody {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut sent = 0u64;
        let mut gate = gate_after;
        while sent < n {
            if let Some((at, g)) = &gate
                && sent >= *at
            {
                g.acquire().await.unwrap().forget();
                gate = None;
            }
            if fail_after.is_some_and(|f| sent >= f) {
                let _ = tx
                    .send(Err(std::io::Error::other("upstream fails on purpose")))
                    .await;
                return;
            }
            let len = (n - sent).min(CHUNK as u64) as usize;
            if tx
                .send(Ok(Bytes::from_static(&ZEROS[..len])))
                .await
                .is_err()
            {
                return;
            }
            sent += len as u64;
        }
    });
    ChannelBody { rx, size: Some(n) }.boxed()
}

async fn handle(
    mut request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Semaphore>,
) -> Result<Response<UpBody>, std::convert::Infallible> {
    seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        target: request
            .uri()
            .path_and_query()
            .map_or_else(String::new, |p| p.to_string()),
        headers: request
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let last = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let n = query_n(&request);
    let response = match last.as_str() {
        "bytes" => Response::new(streamed(n, None, None)),
        "gated" => Response::new(streamed(n, Some((n / 2, gate)), None)),
        "reset" => Response::new(streamed(n, Some((CHUNK as u64, gate)), Some(CHUNK as u64))),
        "upload" => {
            let mut body = request.into_body();
            let mut count = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => count += frame.data_ref().map_or(0, Bytes::len),
                    Err(e) => return Ok(full(StatusCode::BAD_REQUEST, e.to_string())),
                }
            }
            full(StatusCode::OK, count.to_string())
        }
        "sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Bytes::from_static(b"data: one\n\n"))).await;
                gate.acquire().await.unwrap().forget();
                let _ = tx.send(Ok(Bytes::from_static(b"data: two\n\n"))).await;
            });
            let mut response = Response::new(ChannelBody { rx, size: None }.boxed());
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            response
        }
        "slow" => {
            gate.acquire().await.unwrap().forget();
            full(StatusCode::OK, "finally")
        }
        "ws" => {
            let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
                return Ok(full(StatusCode::BAD_REQUEST, "not a websocket handshake"));
            };
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let upgraded = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                let Ok(upgraded) = upgraded.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    hyper_util::rt::TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        break;
                    }
                }
            });
            let mut response = full(StatusCode::SWITCHING_PROTOCOLS, "");
            let h = response.headers_mut();
            h.insert("upgrade", http::HeaderValue::from_static("websocket"));
            h.insert("connection", http::HeaderValue::from_static("Upgrade"));
            h.insert("sec-websocket-accept", accept.parse().unwrap());
            response
        }
        _ => {
            let mut response = full(StatusCode::OK, "ok");
            // Hop-by-hop headers from the upstream must not reach the client either.
            response.headers_mut().insert(
                "connection",
                http::HeaderValue::from_static("x-upstream-hop"),
            );
            response
                .headers_mut()
                .insert("x-upstream-hop", http::HeaderValue::from_static("1"));
            response
        }
    };
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

struct Gateway {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Gateway {
    /// Starts `keygate gateway` on `database` with this config file text (listeners on port 0).
    fn start(dir: &Path, database: &str, config: &str, args: &[&str]) -> Gateway {
        let file = dir.join(format!("gateway-{}.toml", rand_suffix()));
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--database", database])
            .arg("--config")
            .arg(&file)
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .env_remove("KEYGATE_DATABASE")
            .env_remove("KEYGATE_CONFIG")
            .env_remove("KEYGATE_LOG_FORMAT")
            .env_remove("KEYGATE_LOG_LEVEL")
            .env_remove("KEYGATE_GATEWAY_LISTEN")
            .env_remove("KEYGATE_GATEWAY_ADMIN_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keygate gateway");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let buf = stderr.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if line.contains("gateway listening") {
                    let field = |name: &str| -> SocketAddr {
                        let rest = line.split_once(&format!(" {name}=")).unwrap().1;
                        rest.split(' ').next().unwrap().parse().unwrap()
                    };
                    let _ = tx.send((field("addr"), field("admin")));
                }
                let mut buf = buf.lock().unwrap();
                buf.push_str(&line);
                buf.push('\n');
            }
        });
        let Ok((addr, admin)) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("keygate gateway did not start: {}", stderr.lock().unwrap());
        };
        Gateway {
            child,
            addr,
            admin,
            stderr,
        }
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until the log contains `needle`.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(Instant::now() < deadline, "never logged {needle:?}: {logs}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A GET with `Authorization: Api-Key <key>` (when given) and extra headers.
    fn get(&self, path: &str, key: Option<&str>, headers: &[(&str, &str)]) -> Reply {
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if let Some(key) = key {
            all.push(("Authorization".into(), format!("Api-Key {key}")));
        }
        request(self.addr, "GET", path, &all, None)
    }

    fn metrics(&self) -> String {
        request(self.admin, "GET", "/metrics", &[], None).text()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (up to `limit`) for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); reads the whole reply.
fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(&head(method, target, addr, headers, body.map(<[u8]>::len)))
        .unwrap();
    if let Some(body) = body {
        stream.write_all(body).unwrap();
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse(raw)
}

fn head(
    method: &str,
    target: &str,
    addr: SocketAddr,
    headers: &[(String, String)],
    length: Option<usize>,
) -> Vec<u8> {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = length {
        text.push_str(&format!("Content-Length: {n}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn parse(raw: Vec<u8>) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no full response: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = raw[split + 4..].to_vec();
    Reply {
        status,
        headers,
        body,
        raw,
    }
}

/// Reads a response head from `stream`; returns (status, headers) and leaves the body unread.
fn read_head(stream: &mut TcpStream) -> (u16, HashMap<String, String>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap();
        assert_eq!(
            n,
            1,
            "connection closed inside the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// Reads and counts body bytes until `want` or end of stream.
fn count_body(stream: &mut TcpStream, want: u64) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < want {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    got
}

/// The gateway process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.parse().unwrap())
}

fn problem(reply: &Reply, status: u16, code: &str) {
    reply.problem(status, code);
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty()),
        "every problem carries a request id: {}",
        String::from_utf8_lossy(&reply.raw)
    );
}

struct Setup {
    dir: tempfile::TempDir,
    url: String,
    upstream: Upstream,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    Setup {
        dir,
        url,
        upstream: Upstream::start(),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn keys_scopes_methods_public_and_unmatched_paths() {
    let s = setup();
    let up = s.upstream.url();
    let (_, reader) = cli_create(&s.url, &["--scope", "orders:read"]);
    let (_, writer) = cli_create(&s.url, &["--scope", "orders:*"]);
    let (revoked_id, revoked) = cli_create(&s.url, &["--scope", "orders:read"]);
    keygate_json(&s.url, &["keys", "revoke", &revoked_id, "--json"]);
    let (old_id, old) = cli_create(&s.url, &["--scope", "orders:read"]);
    keygate_json(
        &s.url,
        &["keys", "rotate", &old_id, "--grace", "1h", "--json"],
    );
    let unknown = cli_create(
        &format!("sqlite://{}", s.dir.path().join("other.db").display()),
        &[],
    )
    .1;
    let config = format!(
        "[[gateway.route]]\nprefix = \"/orders\"\nmethods = [\"GET\"]\nupstream = \"{up}\"\nscopes = [\"orders:read\"]\n\n\
         [[gateway.route]]\nprefix = \"/orders\"\nmethods = [\"POST\"]\nupstream = \"{up}\"\nscopes = [\"orders:write\"]\n\n\
         [[gateway.route]]\nprefix = \"/docs\"\nupstream = \"{up}\"\npublic = true\n"
    );
    let gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);

    let missing = gw.get("/orders/echo", None, &[]);
    problem(&missing, 401, "MISSING");
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Api-Key realm=\"keygate\"")
    );
    problem(
        &gw.get("/orders/echo", Some("kg_nonsense"), &[]),
        401,
        "MALFORMED",
    );
    problem(
        &gw.get("/orders/echo", Some(&unknown), &[]),
        401,
        "NOT_FOUND",
    );
    problem(&gw.get("/orders/echo", Some(&revoked), &[]), 401, "REVOKED");
    assert!(
        s.upstream.seen().is_empty(),
        "no refused request reached the upstream"
    );

    let ok = gw.get("/orders/echo", Some(&reader), &[]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), "ok");
    assert!(ok.header("sunset").is_none());
    let post = |key: &str| {
        request(
            gw.addr,
            "POST",
            "/orders/echo",
            &[("Authorization".into(), format!("Api-Key {key}"))],
            Some(b"{}"),
        )
    };
    let refused = post(&reader);
    problem(&refused, 403, "INSUFFICIENT_SCOPE");
    assert!(refused.header("www-authenticate").is_none());
    assert_eq!(post(&writer).status, 200);
    let wrong_method = request(gw.addr, "DELETE", "/orders/1", &[], None);
    problem(&wrong_method, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(wrong_method.header("allow"), Some("GET, POST, HEAD"));

    // A key in its rotation's grace period works, and the response says it is ending.
    let graced = gw.get("/orders/echo", Some(&old), &[]);
    assert_eq!(graced.status, 200);
    assert!(
        graced.header("sunset").is_some_and(|s| s.ends_with(" GMT")),
        "{graced:?}"
    );
    assert!(
        graced
            .header("deprecation")
            .is_some_and(|d| d.starts_with('@'))
    );

    assert_eq!(gw.get("/docs/echo", None, &[]).status, 200, "public");
    assert_eq!(gw.get("/docs", None, &[]).status, 200);
    problem(&gw.get("/docsx", None, &[]), 404, "NO_ROUTE");
    problem(&gw.get("/", Some(&writer), &[]), 404, "NO_ROUTE");
    problem(&gw.get("/admin/echo", Some(&writer), &[]), 404, "NO_ROUTE");
    for sneaky in [
        "/docs/../orders/echo",
        "/docs/%2e%2e/orders/echo",
        "/docs%2f..%2forders",
        "/docs//x",
    ] {
        problem(&gw.get(sneaky, None, &[]), 400, "BAD_PATH");
    }
    assert_eq!(
        s.upstream.seen().len(),
        5,
        "reader, writer, graced, two public"
    );

    let metrics = gw.metrics();
    for (series, want) in [
        ("keygate_gateway_requests_total{route=\"GET /orders\"}", 6),
        (
            "keygate_gateway_refusals_total{route=\"GET /orders\",code=\"MISSING\"}",
            1,
        ),
        (
            "keygate_gateway_refusals_total{route=\"GET /orders\",code=\"MALFORMED\"}",
            1,
        ),
        (
            "keygate_gateway_refusals_total{route=\"GET /orders\",code=\"NOT_FOUND\"}",
            1,
        ),
        (
            "keygate_gateway_refusals_total{route=\"GET /orders\",code=\"REVOKED\"}",
            1,
        ),
        (
            "keygate_gateway_refusals_total{route=\"POST /orders\",code=\"INSUFFICIENT_SCOPE\"}",
            1,
        ),
        (
            "keygate_gateway_upstream_responses_total{route=\"GET /orders\",status=\"200\"}",
            2,
        ),
        (
            "keygate_gateway_upstream_responses_total{route=\"/docs\",status=\"200\"}",
            2,
        ),
        (
            "keygate_gateway_upstream_duration_seconds_count{route=\"POST /orders\"}",
            1,
        ),
        ("keygate_gateway_unrouted_total{reason=\"no_route\"}", 3),
        (
            "keygate_gateway_unrouted_total{reason=\"method_not_allowed\"}",
            1,
        ),
        ("keygate_gateway_unrouted_total{reason=\"bad_path\"}", 4),
    ] {
        assert_eq!(metric(&metrics, series), want, "{series} in\n{metrics}");
    }
    let health = request(gw.admin, "GET", "/healthz", &[], None);
    assert_eq!(
        (health.status, health.text()),
        (200, "{\"status\":\"ok\"}".into())
    );
    let ready = request(gw.admin, "GET", "/readyz", &[], None);
    assert_eq!(
        (ready.status, ready.text()),
        (200, "{\"status\":\"ready\"}".into())
    );
    request(gw.admin, "GET", "/nope", &[], None).problem(404, "NOT_FOUND");
}

#[test]
fn the_upstream_gets_the_identity_never_the_key_nor_a_spoofed_identity() {
    let s = setup();
    let up = s.upstream.url();
    let (id, key) = cli_create(
        &s.url,
        &[
            "--scope",
            "orders:read",
            "--scope",
            "reports:*",
            "--owner",
            "Zoë Ünal",
            "--metadata",
            r#"{"plan":"pro","city":"Zürich"}"#,
        ],
    );
    let config = format!(
        "[gateway]\ncredentials = [\"api-key\", \"bearer\", \"header:X-Api-Key\", \"query:api_key\"]\n\n\
         [[gateway.route]]\nprefix = \"/api\"\nupstream = \"{up}/base\"\nscopes = [\"orders:read\"]\nforward_metadata = true\n\n\
         [[gateway.route]]\nprefix = \"/kept-host\"\nupstream = \"{up}\"\npreserve_host = true\n\n\
         [[gateway.route]]\nprefix = \"/public\"\nupstream = \"{up}\"\npublic = true\n"
    );
    let gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);
    let spoof: &[(&str, &str)] = &[
        ("X-Keygate-Owner", "evil"),
        ("X-Keygate-Key-Id", "key_00000000000000000000000000"),
        ("x-keygate-scopes", "*"),
        ("X-Keygate-Anything", "1"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Connection", "x-keygate-owner, x-hop"),
        ("X-Hop", "1"),
    ];
    // The key in each place the gateway accepts it.
    let auth = format!("Api-Key {key}");
    let bearer = format!("Bearer {key}");
    let places: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            "/api/echo?x=1&secretquery=abc".into(),
            vec![("Authorization", auth.as_str())],
        ),
        ("/api/echo".into(), vec![("Authorization", bearer.as_str())]),
        ("/api/echo".into(), vec![("X-Api-Key", key.as_str())]),
        (format!("/api/echo?api_key={key}&x=1"), vec![]),
        (format!("/api/echo?api_key={key}"), vec![]),
    ];
    for (target, mut headers) in places {
        headers.extend_from_slice(spoof);
        let r = gw.get(&target, None, &headers);
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert!(
            r.header("x-upstream-hop").is_none(),
            "hop-by-hop from the upstream dropped"
        );
        assert!(r.header("x-request-id").is_some());
    }
    // Public routes check no key but still strip it, and still drop a spoofed identity.
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("X-Request-Id", "trace-42"),
    ];
    headers.extend_from_slice(spoof);
    let public = gw.get(&format!("/public/echo?api_key={key}"), None, &headers);
    assert_eq!(public.status, 200);
    assert_eq!(
        public.header("x-request-id"),
        Some("trace-42"),
        "the client's id comes back"
    );
    let kept = gw.get("/kept-host/echo", None, &[("Host", "api.example.com")]);
    problem(&kept, 401, "MISSING");
    let kept = gw.get("/kept-host/echo", Some(&key), &[]);
    assert_eq!(kept.status, 200);

    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 7);
    for request in &seen {
        let text = request.text();
        assert!(
            !text.contains(&key),
            "the key reached the upstream:\n{text}"
        );
        assert!(request.header("authorization").is_none() && request.header("x-api-key").is_none());
        assert!(request.header("x-hop").is_none() && request.header("connection").is_none());
        assert_eq!(
            request.all("x-forwarded-for"),
            ["127.0.0.1"],
            "the socket peer, not the client's claim"
        );
        assert_eq!(request.header("x-forwarded-proto"), Some("http"));
        assert!(
            request
                .header("forwarded")
                .is_some_and(|f| f.starts_with("for=127.0.0.1;proto=http"))
        );
        assert!(request.header("x-request-id").is_some());
        assert!(request.header("x-keygate-anything").is_none());
    }
    let api: Vec<&Seen> = seen
        .iter()
        .filter(|r| r.target.starts_with("/base/api/"))
        .collect();
    assert_eq!(api.len(), 5);
    assert_eq!(api[0].target, "/base/api/echo?x=1&secretquery=abc");
    assert_eq!(
        api[3].target, "/base/api/echo?x=1",
        "the key parameter removed, the rest kept"
    );
    assert_eq!(api[4].target, "/base/api/echo");
    for request in &api {
        assert_eq!(request.all("x-keygate-key-id"), [id.as_str()]);
        assert_eq!(request.all("x-keygate-key-name"), ["test"]);
        assert_eq!(request.all("x-keygate-owner"), ["Zo%C3%AB%20%C3%9Cnal"]);
        assert_eq!(request.all("x-keygate-scopes"), ["orders:read reports:*"]);
        let metadata = request.header("x-keygate-metadata").unwrap();
        let decoded = percent_encoding::percent_decode_str(metadata)
            .decode_utf8()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&decoded).unwrap(),
            json!({"plan": "pro", "city": "Zürich"})
        );
        assert_eq!(
            request.header("host"),
            Some(s.upstream.addr.to_string().as_str()),
            "rewritten"
        );
        assert_eq!(
            request.header("x-forwarded-host"),
            Some(gw.addr.to_string().as_str())
        );
    }
    let public = seen
        .iter()
        .find(|r| r.target.starts_with("/public/"))
        .unwrap();
    assert_eq!(public.target, "/public/echo");
    assert!(
        public
            .headers
            .iter()
            .all(|(k, _)| !k.starts_with("x-keygate-")),
        "{public:?}"
    );
    assert_eq!(public.header("x-request-id"), Some("trace-42"));
    let kept = seen
        .iter()
        .find(|r| r.target.starts_with("/kept-host/"))
        .unwrap();
    assert_eq!(
        kept.header("host"),
        Some(gw.addr.to_string().as_str()),
        "preserve_host"
    );
    assert_eq!(kept.all("x-keygate-key-id"), [id.as_str()]);
    assert!(
        kept.header("x-keygate-metadata").is_none(),
        "metadata is opt-in per route"
    );

    // One access-log line per request: the route and key id, never the key or the query.
    let logs = gw.wait_for_log(&format!("route=\"/kept-host\" key_id=\"{id}\""));
    assert!(!logs.contains(&key), "the key is in the log:\n{logs}");
    assert!(
        !logs.contains("secretquery"),
        "the query string is in the log"
    );
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("keygate_gateway::access"))
        .collect();
    assert_eq!(lines.len(), 8, "{logs}");
    assert!(lines[0].contains(&format!("key_id=\"{id}\"")) && lines[0].contains("status=200"));
    assert!(
        lines
            .iter()
            .all(|l| l.contains("route=") && l.contains("duration_ms="))
    );
}

#[test]
fn bodies_stream_both_ways_in_bounded_memory() {
    let s = setup();
    let up = s.upstream.url();
    let (_, key) = cli_create(&s.url, &[]);
    let config = format!("[[gateway.route]]\nprefix = \"/\"\nupstream = \"{up}\"\n");
    let gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);
    const SIZE: u64 = 256 * 1024 * 1024;
    let auth = ("Authorization".to_owned(), format!("Api-Key {key}"));

    // Upload: the upstream counts what arrives.
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(&head(
            "POST",
            "/upload",
            gw.addr,
            std::slice::from_ref(&auth),
            Some(SIZE as usize),
        ))
        .unwrap();
    let chunk = vec![b'u'; 1024 * 1024];
    for _ in 0..SIZE / chunk.len() as u64 {
        stream.write_all(&chunk).unwrap();
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let reply = parse(raw);
    assert_eq!((reply.status, reply.text()), (200, SIZE.to_string()));

    // Download: 256 MiB through, counted here.
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(&head(
            "GET",
            &format!("/bytes?n={SIZE}"),
            gw.addr,
            &[auth],
            None,
        ))
        .unwrap();
    let (status, headers) = read_head(&mut stream);
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some(SIZE.to_string().as_str())
    );
    assert_eq!(count_body(&mut stream, SIZE), SIZE);

    let peak = peak_rss_kib(gw.pid());
    eprintln!(
        "gateway peak RSS after 256 MiB up and 256 MiB down: {} MiB",
        peak / 1024
    );
    assert!(
        peak < 64 * 1024,
        "the gateway's peak RSS was {peak} KiB (bound: 64 MiB)"
    );
}

#[test]
fn websocket_and_server_sent_events_pass_through() {
    let s = setup();
    let up = s.upstream.url();
    let (_, key) = cli_create(&s.url, &[]);
    let config = format!("[[gateway.route]]\nprefix = \"/\"\nupstream = \"{up}\"\n");
    let gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);

    // SSE: the first event arrives while the upstream still holds the second.
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let auth = ("Authorization".to_owned(), format!("Api-Key {key}"));
    stream
        .write_all(&head("GET", "/events/sse", gw.addr, &[auth], None))
        .unwrap();
    let (status, headers) = read_head(&mut stream);
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/event-stream")
    );
    assert_eq!(
        headers.get("transfer-encoding").map(String::as_str),
        Some("chunked")
    );
    let mut reader = BufReader::new(stream);
    let mut text = String::new();
    while !text.contains("data: one\n\n") {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early: {text:?}"
        );
        text.push_str(&line.replace('\r', ""));
    }
    assert!(!text.contains("two"));
    s.upstream.open_gate();
    while !text.contains("data: two\n\n") {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early: {text:?}"
        );
        text.push_str(&line.replace('\r', ""));
    }

    // WebSocket: a text and a binary message echoed through the gateway.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
        let mut request = format!("ws://{}/chat/ws", gw.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Api-Key {key}").parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut ws, response) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(request, tcp),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status(), 101);
        for message in [
            Message::text("hello, upstream"),
            Message::binary(vec![0u8, 1, 2, 255]),
        ] {
            ws.send(message.clone()).await.unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(echoed, message);
        }
        ws.close(None).await.unwrap();

        // Without a key, no upgrade.
        let request = format!("ws://{}/chat/ws", gw.addr)
            .into_client_request()
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        match tokio_tungstenite::client_async(request, tcp).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401);
            }
            other => panic!("expected a 401, got {other:?}"),
        }
    });
    let ws_seen: Vec<Seen> = s
        .upstream
        .seen()
        .into_iter()
        .filter(|r| r.target == "/chat/ws")
        .collect();
    assert_eq!(ws_seen.len(), 1);
    assert_eq!(ws_seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(ws_seen[0].header("connection"), Some("upgrade"));
}

#[test]
fn an_upstream_that_is_down_slow_or_resets_is_a_clear_error_not_a_hang() {
    let s = setup();
    let up = s.upstream.url();
    let (_, key) = cli_create(&s.url, &[]);
    // A port with nothing listening.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = format!(
        "[[gateway.route]]\nprefix = \"/down\"\nupstream = \"http://{down}\"\n\n\
         [[gateway.route]]\nprefix = \"/slow\"\nupstream = \"{up}\"\nresponse_timeout = \"300ms\"\n\n\
         [[gateway.route]]\nprefix = \"/\"\nupstream = \"{up}\"\n"
    );
    let gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);

    let started = Instant::now();
    problem(
        &gw.get("/down/echo", Some(&key), &[]),
        502,
        "UPSTREAM_UNAVAILABLE",
    );
    problem(
        &gw.get("/slow/slow", Some(&key), &[]),
        504,
        "UPSTREAM_TIMEOUT",
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Reset mid-body: the headers came, then the upstream failed; the client's connection is
    // closed short of the promised length rather than left hanging.
    const PROMISED: u64 = 1024 * 1024;
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let auth = ("Authorization".to_owned(), format!("Api-Key {key}"));
    stream
        .write_all(&head(
            "GET",
            &format!("/reset?n={PROMISED}"),
            gw.addr,
            &[auth],
            None,
        ))
        .unwrap();
    let (status, headers) = read_head(&mut stream);
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some("1048576")
    );
    let mut got = count_body(&mut stream, CHUNK as u64);
    s.upstream.open_gate();
    got += count_body(&mut stream, PROMISED);
    assert!(
        got < PROMISED,
        "got all {got} bytes of a body the upstream broke off"
    );
    gw.wait_for_log("broke off");

    let metrics = gw.metrics();
    for (series, want) in [
        (
            "keygate_gateway_upstream_failures_total{route=\"/down\",reason=\"unavailable\"}",
            1,
        ),
        (
            "keygate_gateway_upstream_failures_total{route=\"/slow\",reason=\"timeout\"}",
            1,
        ),
        (
            "keygate_gateway_upstream_failures_total{route=\"/\",reason=\"body\"}",
            1,
        ),
    ] {
        assert_eq!(metric(&metrics, series), want, "{series} in\n{metrics}");
    }
}

/// Revokes through `keygate serve` and polls the gateway until it refuses; returns how long
/// that took.
fn revocation_reaches_the_gateway(url: &str, dir: &Path) -> Vec<Duration> {
    let upstream = Upstream::start();
    let server = Server::start_url(url, &[], &[]);
    let (_, admin) = cli_create(url, &["--scope", "keygate:admin"]);
    let config = format!(
        "[[gateway.route]]\nprefix = \"/\"\nupstream = \"{}\"\n",
        upstream.url()
    );
    let gw = Gateway::start(dir, url, &config, &[]);
    let mut took = Vec::new();
    for _ in 0..3 {
        let (id, key) = cli_create(url, &[]);
        // Twice: the second answer comes from the gateway's cache.
        assert_eq!(gw.get("/echo", Some(&key), &[]).status, 200);
        assert_eq!(gw.get("/echo", Some(&key), &[]).status, 200);
        server
            .json(
                "POST",
                &format!("/v1/keys/{id}/revoke"),
                &admin,
                &json!({"reason": "test"}),
            )
            .expect(200);
        let revoked = Instant::now();
        loop {
            let r = gw.get("/echo", Some(&key), &[]);
            if r.status == 401 {
                problem(&r, 401, "REVOKED");
                took.push(revoked.elapsed());
                break;
            }
            assert_eq!(r.status, 200);
            assert!(revoked.elapsed() < Duration::from_secs(5), "never refused");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    took
}

#[test]
fn a_revocation_through_serve_refuses_the_next_gateway_request_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let took = revocation_reaches_the_gateway(&url, dir.path());
    eprintln!("sqlite: serve revoke -> gateway refusal: {took:?}");
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");
}

#[test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "set KEYGATE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB to run"
)]
fn on_postgres_a_revocation_through_serve_reaches_the_gateway_within_a_second() {
    let url = postgres_url();
    let dir = tempfile::tempdir().unwrap();
    let took = revocation_reaches_the_gateway(&url, dir.path());
    eprintln!("postgres: serve revoke -> gateway refusal: {took:?}");
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");
}

#[test]
fn sigterm_lets_a_long_download_finish_then_exits_0() {
    let s = setup();
    let up = s.upstream.url();
    let (_, key) = cli_create(&s.url, &[]);
    let config = format!("[[gateway.route]]\nprefix = \"/\"\nupstream = \"{up}\"\n");
    let mut gw = Gateway::start(s.dir.path(), &s.url, &config, &["--shutdown-grace", "30s"]);
    const SIZE: u64 = 8 * 1024 * 1024;
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = ("Authorization".to_owned(), format!("Api-Key {key}"));
    stream
        .write_all(&head(
            "GET",
            &format!("/gated?n={SIZE}"),
            gw.addr,
            &[auth],
            None,
        ))
        .unwrap();
    assert_eq!(read_head(&mut stream).0, 200);
    // The first half is through; the upstream holds the rest.
    assert_eq!(count_body(&mut stream, SIZE / 2), SIZE / 2);
    gw.terminate();
    gw.wait_for_log("stopped accepting");
    // New connections are no longer accepted...
    assert!(
        TcpStream::connect_timeout(&gw.addr, Duration::from_secs(2)).is_err(),
        "the listener should be closed"
    );
    // ...but the download in flight goes on to its end.
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "exited with a download in flight"
    );
    s.upstream.open_gate();
    assert_eq!(count_body(&mut stream, SIZE / 2), SIZE / 2);
    let status = gw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(!gw.logs().contains("grace period over"));
}

#[test]
fn sigterm_cuts_a_stream_that_outlives_the_grace_period_and_exits_0() {
    let s = setup();
    let up = s.upstream.url();
    let (_, key) = cli_create(&s.url, &[]);
    let config = format!(
        "[gateway]\nshutdown_grace = \"500ms\"\n\n[[gateway.route]]\nprefix = \"/\"\nupstream = \"{up}\"\n"
    );
    let mut gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = ("Authorization".to_owned(), format!("Api-Key {key}"));
    stream
        .write_all(&head("GET", "/gated?n=1048576", gw.addr, &[auth], None))
        .unwrap();
    assert_eq!(read_head(&mut stream).0, 200);
    assert_eq!(count_body(&mut stream, 524_288), 524_288);
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(gw.logs().contains("grace period over"));
    assert!(
        count_body(&mut stream, 524_288) < 524_288,
        "the stream was cut"
    );
}

#[test]
fn bad_gateway_config_is_one_line_naming_the_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let run = |config: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.args(["--database", &url]);
        if let Some(text) = config {
            let file = dir.path().join(format!("bad-{}.toml", rand_suffix()));
            std::fs::write(&file, text).unwrap();
            cmd.arg("--config").arg(file);
        }
        let out = cmd
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env_remove("KEYGATE_CONFIG")
            .env_remove("KEYGATE_DATABASE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    let err = run(Some(
        "database = \"x\"\n\n[gateway]\n\n[[gateway.route]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\nscopes = [\"not a scope\"]\n",
    ));
    assert!(err.contains("line 8 (gateway.route.scopes)"), "{err}");
    let err = run(Some(
        "[[gateway.route]]\nprefix = \"/api\"\nupstreem = \"x\"\n",
    ));
    assert!(
        err.contains("line 3 (upstreem)") && err.contains("unknown field"),
        "{err}"
    );
    let err = run(None);
    assert!(err.contains("needs --config"), "{err}");
    // keygate serve reads the same file and ignores the gateway's table.
    let file = dir.path().join("both.toml");
    std::fs::write(
        &file,
        "prefix = \"acme\"\n[gateway]\n[[gateway.route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--database", &url])
        .arg("--config")
        .arg(&file)
        .args(["keys", "create", "--name", "x", "--json"])
        .env_remove("KEYGATE_PREFIX")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"key\":\"acme_"));
}

#[test]
fn connections_are_capped_and_idle_ones_closed() {
    let s = setup();
    let up = s.upstream.url();
    let config = format!(
        "[gateway]\nmax_connections = 2\nheader_read_timeout = \"1s\"\n\n\
         [[gateway.route]]\nprefix = \"/\"\nupstream = \"{up}\"\npublic = true\n"
    );
    let gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);
    // One connection that has had a request and now idles on keep-alive, one that never
    // sends anything: both hold the two slots.
    let mut kept = TcpStream::connect(gw.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    kept.write_all(format!("GET /echo HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr).as_bytes())
        .unwrap();
    let (status, headers) = read_head(&mut kept);
    assert_eq!(status, 200);
    let length: u64 = headers["content-length"].parse().unwrap();
    assert_eq!(count_body(&mut kept, length), length);
    let mut silent = TcpStream::connect(gw.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    // A third waits to be accepted; the cap is logged and counted.
    let third = std::thread::spawn({
        let addr = gw.addr;
        move || request(addr, "GET", "/echo", &[], None)
    });
    gw.wait_for_log("connection limit reached");
    assert!(
        metric(
            &gw.metrics(),
            "keygate_gateway_connection_limit_reached_total"
        ) >= 1,
        "{}",
        gw.metrics()
    );
    // The header timeout closes both idle connections, and the third is served.
    let started = Instant::now();
    assert_eq!(
        count_body(&mut kept, 1),
        0,
        "the idle keep-alive connection was closed"
    );
    assert_eq!(
        count_body(&mut silent, 1),
        0,
        "the silent connection was closed"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let reply = third.join().unwrap();
    assert_eq!((reply.status, reply.text()), (200, "ok".to_owned()));
    assert_eq!(
        metric(&gw.metrics(), "keygate_gateway_connections_accepted_total"),
        3
    );
}

#[test]
fn accept_errors_are_logged_and_survived() {
    let s = setup();
    let up = s.upstream.url();
    let config = format!("[[gateway.route]]\nprefix = \"/\"\nupstream = \"{up}\"\npublic = true\n");
    let gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);
    assert_eq!(gw.get("/echo", None, &[]).status, 200);
    // Leave the process two spare file descriptors (soft limit), then connect more clients.
    let open = std::fs::read_dir(format!("/proc/{}/fd", gw.pid()))
        .unwrap()
        .count();
    let prlimit = |limit: usize| {
        let status = Command::new("prlimit")
            .args([
                "--pid",
                &gw.pid().to_string(),
                &format!("--nofile={limit}:"),
            ])
            .status()
            .expect("prlimit (util-linux)");
        assert!(status.success());
    };
    prlimit(open + 2);
    let clients: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    let logs = gw.wait_for_log("accept failed");
    assert!(logs.contains("Too many open files"), "{logs}");
    // Still running; with descriptors back it serves again and has counted the failures.
    drop(clients);
    prlimit(1024);
    // The listener is retried with a back-off of at most a second: this waits that long.
    let reply = gw.get("/echo", None, &[]);
    assert_eq!(reply.status, 200);
    assert!(metric(&gw.metrics(), "keygate_gateway_accept_errors_total") >= 1);
}

/// The requests the upstream received from key `id`.
fn seen_from(upstream: &Upstream, id: &str) -> Vec<Seen> {
    upstream
        .seen()
        .into_iter()
        .filter(|s| s.header("x-keygate-key-id") == Some(id))
        .collect()
}

#[test]
fn rate_limits_credits_and_allowlists_refuse_in_the_gateway_before_the_upstream() {
    let s = setup();
    let up = s.upstream.url();
    let (limited_id, limited) = cli_create(&s.url, &["--rate", "3/1h"]);
    let (credited_id, credited) = cli_create(&s.url, &["--quota", "2/day"]);
    let (office_id, office) = cli_create(&s.url, &["--allow-ip", "203.0.113.0/24"]);
    let (local_id, local) = cli_create(
        &s.url,
        &["--allow-ip", "127.0.0.1", "--allow-ip", "2001:db8::/32"],
    );
    let config =
        format!("[[gateway.route]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"{up}\"\n");
    let gw = Gateway::start(s.dir.path(), &s.url, &config, &[]);

    // A rate limit of 3: three answers from the upstream, each with the IETF headers counting
    // down; the 4th is refused with Retry-After, and never forwarded.
    for left in [2, 1, 0] {
        let ok = gw.get("/api/echo", Some(&limited), &[]);
        assert_eq!((ok.status, ok.text().as_str()), (200, "ok"), "{ok:?}");
        assert_eq!(ok.header("ratelimit-policy"), Some("\"per_1h\";q=3;w=3600"));
        let state = ok.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!("\"per_1h\";r={left};t=")),
            "{state}"
        );
    }
    let refused = gw.get("/api/echo", Some(&limited), &[]);
    problem(&refused, 429, "RATE_LIMITED");
    // A sliding window: the next unit is free once the three spent weigh 2, a third of the
    // way into the next window — at most an hour and 20 minutes away.
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=4800).contains(&retry), "{retry}");
    assert!(
        refused
            .header("ratelimit")
            .unwrap()
            .starts_with("\"per_1h\";r=0;t=")
    );
    problem(
        &gw.get("/api/echo", Some(&limited), &[]),
        429,
        "RATE_LIMITED",
    );
    assert_eq!(seen_from(&s.upstream, &limited_id).len(), 3);

    // Two credits a day: two answers, then 429 USAGE_EXCEEDED, not forwarded either, with
    // Retry-After: the seconds until the refill at the next 00:00 UTC.
    for _ in 0..2 {
        assert_eq!(gw.get("/api/echo", Some(&credited), &[]).status, 200);
    }
    let exhausted = gw.get("/api/echo", Some(&credited), &[]);
    problem(&exhausted, 429, "USAGE_EXCEEDED");
    let retry: u64 = exhausted.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert_eq!(seen_from(&s.upstream, &credited_id).len(), 2);
    assert_eq!(
        keygate_json(&s.url, &["keys", "show", &credited_id, "--json"])["quota"]["remaining"],
        0
    );

    // An allowlist without 127.0.0.1 refuses the gateway's clients here, whatever they claim
    // in X-Forwarded-For (no proxy is trusted); one with it lets them through.
    problem(
        &gw.get("/api/echo", Some(&office), &[]),
        403,
        "IP_NOT_ALLOWED",
    );
    problem(
        &gw.get(
            "/api/echo",
            Some(&office),
            &[("X-Forwarded-For", "203.0.113.9")],
        ),
        403,
        "IP_NOT_ALLOWED",
    );
    let ok = gw.get(
        "/api/echo",
        Some(&local),
        &[("X-Forwarded-For", "203.0.113.9")],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(seen_from(&s.upstream, &office_id).is_empty());
    let seen = seen_from(&s.upstream, &local_id);
    assert_eq!(seen.len(), 1);
    // The upstream is told the client the gateway judged, not what the client wrote.
    assert_eq!(seen[0].all("x-forwarded-for"), ["127.0.0.1"]);
    let metrics = gw.metrics();
    for (code, n) in [
        ("RATE_LIMITED", 2),
        ("USAGE_EXCEEDED", 1),
        ("IP_NOT_ALLOWED", 2),
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!("keygate_gateway_refusals_total{{route=\"api\",code=\"{code}\"}}")
            ),
            n,
            "{code}: {metrics}"
        );
    }
    drop(gw);

    // Behind trusted proxies (127.0.0.1, the load balancer here, and 10.0.0.0/8 inside), the
    // client is the first address from the right of X-Forwarded-For that is not one of them.
    let gw = Gateway::start(
        s.dir.path(),
        &s.url,
        &config,
        &["--trusted-proxies", "127.0.0.1,10.0.0.0/8"],
    );
    let office_get = |xff: Option<&str>| {
        let headers: Vec<(&str, &str)> = xff.map(|v| ("X-Forwarded-For", v)).into_iter().collect();
        gw.get("/api/echo", Some(&office), &headers)
    };
    for (xff, status) in [
        // The client in the office, through one or two trusted hops.
        (Some("203.0.113.9"), 200),
        (Some("203.0.113.9, 10.1.2.3"), 200),
        // A forged leftmost entry is never read: the client is who the proxy saw.
        (Some("198.51.100.7, 203.0.113.9"), 200),
        (Some("203.0.113.9, 198.51.100.7"), 403),
        (Some("203.0.113.9, 198.51.100.7, 10.1.2.3"), 403),
        // No entry, or one that is not an address: the last trusted hop, not the office.
        (None, 403),
        (Some("unknown, 203.0.113.9"), 200),
        (Some("203.0.113.9, unknown"), 403),
    ] {
        let reply = office_get(xff);
        assert_eq!(reply.status, status, "X-Forwarded-For: {xff:?}: {reply:?}");
        if status == 403 {
            problem(&reply, 403, "IP_NOT_ALLOWED");
        }
    }
    let seen = seen_from(&s.upstream, &office_id);
    assert_eq!(seen.len(), 4, "refused requests never reach the upstream");
    // The upstream gets the client's address alone: no proxy's, no forged one.
    for s in &seen {
        assert_eq!(s.all("x-forwarded-for"), ["203.0.113.9"], "{s:?}");
        assert_eq!(
            s.header("forwarded").unwrap().split(';').next(),
            Some("for=203.0.113.9")
        );
    }
    // An IPv6 client behind the proxy, in the allowlist.
    let ok = gw.get(
        "/api/echo",
        Some(&local),
        &[("X-Forwarded-For", "[2001:db8::7]:4711")],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let last = seen_from(&s.upstream, &local_id).pop().unwrap();
    assert_eq!(last.all("x-forwarded-for"), ["2001:db8::7"]);
}
