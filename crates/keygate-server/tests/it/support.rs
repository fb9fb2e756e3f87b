//! Running `keygate serve` as a child process and talking HTTP/1.1 to it over plain TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
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

    /// Sends one request; `key` goes in `Authorization: Api-Key`.
    pub fn send(
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

    /// GET with an admin key.
    pub fn get(&self, path: &str, key: &str) -> Reply {
        self.send("GET", path, Some(key), None)
    }

    /// A JSON request with a key.
    pub fn json(&self, method: &str, path: &str, key: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap();
        self.send(method, path, Some(key), Some(("application/json", &bytes)))
    }

    /// `POST /v1/verify` of `key` for `scopes`, authenticated by `admin`; asserts 200 and
    /// returns the answer.
    pub fn verify(&self, admin: &str, key: &str, scopes: &[&str]) -> Value {
        self.json(
            "POST",
            "/v1/verify",
            admin,
            &serde_json::json!({"key": key, "scopes": scopes}),
        )
        .expect(200)
    }

    /// Any request, with exactly these headers.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, Vec<u8>)],
        body: Option<&[u8]>,
    ) -> Reply {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        )
        .into_bytes();
        for (name, value) in headers {
            req.extend_from_slice(name.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(value);
            req.extend_from_slice(b"\r\n");
        }
        if let Some(body) = body {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(&req).unwrap();
        if let Some(body) = body {
            // The server may answer (413) and close before reading all of a large body.
            let _ = stream.write_all(body);
        }
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        Reply::parse(raw)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 10 s) until the log contains `needle`, then returns the whole log.
    pub fn wait_for_log(&self, needle: &str) -> String {
        for _ in 0..200 {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("never logged {needle:?}: {}", self.logs());
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
        .find(|l| keygate_core::parse(l).is_ok())
        .map(str::to_owned)
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw: Vec<u8>,
}

impl Reply {
    fn parse(raw: Vec<u8>) -> Self {
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
        let headers = lines
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

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.raw)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts this status with a JSON body, and returns the body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.raw)
        );
        self.json()
    }

    /// Asserts an RFC 9457 problem with this status and code, and returns it.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.raw)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["code"], code, "{p}");
        assert_eq!(p["status"], status);
        for member in ["type", "title", "detail"] {
            assert!(
                p[member].as_str().is_some_and(|s| !s.is_empty()),
                "{member} in {p}"
            );
        }
        p
    }
}
