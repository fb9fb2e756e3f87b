//! Test helpers shared by keygate's crates; never shipped.
//!
//! [`raw_request`] writes an HTTP/1.1 request byte for byte as given — odd headers included,
//! which is the point: clients that normalise what they send cannot test what a server does
//! with what attackers send. [`send`] (async) and [`send_blocking`] deliver it over a fresh
//! TCP connection and parse the answer into a [`Reply`].

pub mod postgres {
    //! PostgreSQL for tests: a fresh schema per test on the server `KEYGATE_TEST_POSTGRES`
    //! names. PostgreSQL tests are compiled in only when it was set at build time (otherwise
    //! they are reported as ignored), and fail — never pass — when it is missing at run time.

    /// A database URL whose `search_path` is a fresh, empty schema.
    ///
    /// # Panics
    /// If `KEYGATE_TEST_POSTGRES` is not set or the server cannot be reached.
    pub fn fresh_url() -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(keygate_store::testing::fresh_postgres_url())
    }
}

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// A request as bytes: the request line, `Host`, `Connection: close`, `headers` exactly as
/// given, `Content-Length` when there is a body, then the body.
pub fn raw_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(String, Vec<u8>)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n").into_bytes();
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
    if let Some(body) = body {
        req.extend_from_slice(body);
    }
    req
}

/// Sends `request` to `addr` on a new connection and reads the whole answer (the server
/// closes: `Connection: close`), within 20 s.
pub async fn send(addr: SocketAddr, request: &[u8]) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer (413) and close before reading all of a large body.
        let _ = stream.write_all(request).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("an answer within 20 s");
    Reply::parse(raw)
}

/// [`send`], from a thread that is not running an async runtime.
pub fn send_blocking(addr: SocketAddr, request: &[u8]) -> Reply {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    Reply::parse(raw)
}

/// An HTTP response: status, headers (names lowercased, in order), body, and the raw bytes.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The whole response as received (or, in-process, as assembled).
    pub raw: Vec<u8>,
}

impl Reply {
    /// Parses a whole HTTP/1.1 response (no chunked bodies: keygate answers with lengths).
    ///
    /// # Panics
    /// If it is not one.
    pub fn parse(raw: Vec<u8>) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no full response: {:?}", String::from_utf8_lossy(&raw)));
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = raw[split + 4..].to_vec();
        Self {
            status,
            headers,
            body,
            raw,
        }
    }

    /// A reply assembled from parts (an in-process response), with a `raw` form to search.
    pub fn from_parts(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        let mut raw = format!("HTTP/1.1 {status}\r\n").into_bytes();
        for (name, value) in &headers {
            raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&body);
        Self {
            status,
            headers,
            body,
            raw,
        }
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lowercase).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// If it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.raw)))
    }

    /// The body as text.
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

    /// Asserts an RFC 9457 problem with this status and code (and, for 401, keygate's
    /// `WWW-Authenticate` challenge), and returns it.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.raw)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            String::from_utf8_lossy(&self.raw)
        );
        let p = self.json();
        assert_eq!(p["code"], code, "{p}");
        assert_eq!(p["status"], status);
        assert!(
            p["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:keygate:problem:")),
            "{p}"
        );
        for member in ["title", "detail"] {
            assert!(
                p[member].as_str().is_some_and(|s| !s.is_empty()),
                "{member} in {p}"
            );
        }
        if status == 401 {
            assert!(
                self.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Api-Key realm=")),
                "401 without a challenge: {p}"
            );
        }
        p
    }

    /// Asserts that nothing of `secret` (its last 20 characters) is in the response.
    pub fn assert_no_echo(&self, secret: &str) {
        let tail = &secret[secret.len().saturating_sub(20)..];
        let text = String::from_utf8_lossy(&self.raw);
        assert!(!text.contains(tail), "the response echoes a secret: {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_written_as_given_and_replies_parsed() {
        let req = raw_request(
            "POST",
            "/x",
            "h",
            &[("X-Odd".into(), b"\xff".to_vec())],
            Some(b"{}"),
        );
        assert_eq!(
            req,
            b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Odd: \xff\r\nContent-Length: 2\r\n\r\n{}"
        );
        let reply = Reply::parse(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/problem+json\r\nWWW-Authenticate: Api-Key realm=\"k\"\r\n\r\n{\"type\":\"urn:keygate:problem:missing\",\"title\":\"t\",\"status\":401,\"detail\":\"d\",\"code\":\"MISSING\"}"
                .to_vec(),
        );
        assert_eq!(reply.problem(401, "MISSING")["detail"], "d");
        let same = Reply::from_parts(reply.status, reply.headers.clone(), reply.body.clone());
        assert_eq!(same.json(), reply.json());
    }
}
