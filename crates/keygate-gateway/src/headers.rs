//! Header hygiene between the client and the upstream.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header it names,
//!   `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, and
//!   the proxy's own `Proxy-Authorization`/`Proxy-Authenticate`) are not passed on, in either
//!   direction; an upgrade (WebSocket) keeps `Connection: upgrade` and `Upgrade`.
//! - Every `X-Keygate-*` header the client sent is dropped, then the verified key's identity
//!   is added: `X-Keygate-Key-Id`, `X-Keygate-Key-Name`, `X-Keygate-Owner` (when the key has
//!   one), `X-Keygate-Scopes` (space-separated) and, per route, `X-Keygate-Metadata` (compact
//!   JSON). Values are percent-encoded UTF-8: every byte that is not visible ASCII, and `%`
//!   itself, is written `%XX`, so decoding (Python's `urllib.parse.unquote`) is always right.
//! - `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP`
//!   from the client are replaced by the gateway's own, naming the client: the socket peer, or
//!   behind `trusted_proxies` the address found in their `X-Forwarded-For` (the one IP
//!   allowlists are checked against; never an entry the client could forge).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use keygate::ApiKey;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// `X-Keygate-Key-Id`.
pub const KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
/// `X-Keygate-Key-Name`.
pub const KEY_NAME: HeaderName = HeaderName::from_static("x-keygate-key-name");
/// `X-Keygate-Owner`.
pub const OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
/// `X-Keygate-Scopes`.
pub const SCOPES: HeaderName = HeaderName::from_static("x-keygate-scopes");
/// `X-Keygate-Metadata`.
pub const METADATA: HeaderName = HeaderName::from_static("x-keygate-metadata");
/// `X-Request-Id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that concern one connection only, never passed on.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Whether these (request) headers ask to switch protocols, e.g. to WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_lists(headers, "upgrade")
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// The comma-separated names in every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the hop-by-hop headers, including those named in `Connection`. With `upgrade`,
/// the `Upgrade` header survives and `Connection: upgrade` is put back.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names present (a request or response carries a handful) instead of a
    // hashed removal per hop-by-hop name, most of which are absent.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // Taken first: `Connection: upgrade` names it.
    let kept_upgrade = if upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            // A client cannot make us drop what the upstream needs to see who is calling.
            if !name.as_str().starts_with("x-keygate-") && name != REQUEST_ID {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = kept_upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Drops every `X-Keygate-*` header (the client's, before the gateway adds its own).
pub fn remove_keygate_headers(headers: &mut HeaderMap) {
    let is_ours = |name: &HeaderName| name.as_str().starts_with("x-keygate-");
    if !headers.keys().any(is_ours) {
        return;
    }
    let spoofed: Vec<HeaderName> = headers.keys().filter(|k| is_ours(k)).cloned().collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// A verified key's identity headers, made once and reused for the requests that carry the
/// same key record (a key reloaded after a change is a new record, so a renamed key or new
/// scopes are never sent stale).
#[derive(Debug, Clone)]
pub struct Identity {
    key: ApiKey,
    metadata: bool,
    values: Vec<(HeaderName, HeaderValue)>,
}

impl Identity {
    /// The identity headers of `key` (with `X-Keygate-Metadata` when `metadata`).
    pub fn of(key: &ApiKey, metadata: bool) -> Self {
        let mut values = Vec::with_capacity(5);
        values.push((KEY_ID, encoded(key.id().as_str())));
        values.push((KEY_NAME, encoded(key.name())));
        if let Some(owner) = key.owner() {
            values.push((OWNER, encoded(owner)));
        }
        // A scope holds no space, so a literal space separates them.
        let mut scopes = String::new();
        for (i, scope) in key.scopes().iter().enumerate() {
            if i > 0 {
                scopes.push(' ');
            }
            push_encoded(&mut scopes, scope);
        }
        values.push((SCOPES, value(scopes)));
        if metadata {
            let json = serde_json::to_string(key.metadata()).unwrap_or_else(|_| "{}".into());
            values.push((METADATA, encoded(&json)));
        }
        Self {
            key: key.clone(),
            metadata,
            values,
        }
    }

    /// Whether these are the headers [`Identity::of`] would make for `key` and `metadata`.
    pub fn is_for(&self, key: &ApiKey, metadata: bool) -> bool {
        self.metadata == metadata && self.key.same_record(key)
    }

    /// Sets the headers (after [`remove_keygate_headers`]: the client's are gone).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.values {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Bytes written `%XX` in identity headers: controls, space, `%` (and, by the encoder, every
/// non-ASCII byte).
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// Whether `byte` stands for itself in an identity header (visible ASCII other than `%`).
fn plain(byte: u8) -> bool {
    byte.is_ascii_graphic() && byte != b'%'
}

/// Appends `text` percent-encoded: only visible ASCII remains.
fn push_encoded(out: &mut String, text: &str) {
    if text.bytes().all(plain) {
        out.push_str(text);
    } else {
        out.extend(utf8_percent_encode(text, ENCODED));
    }
}

fn value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("percent-encoded text is a valid header value")
}

/// A header value holding `text` percent-encoded.
pub fn encoded(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    push_encoded(&mut out, text);
    value(out)
}

/// Forwarding headers a client may send, all replaced by the gateway's.
const FORWARDING: [HeaderName; 5] = [
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REAL_IP,
];

/// Replaces any forwarding headers from the client with the gateway's: `Forwarded`,
/// `X-Forwarded-For` (`client`), `X-Forwarded-Proto` (`http`) and `X-Forwarded-Host` (the
/// client's `Host`, when it has one).
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    Forwarding::new(client, headers.get(header::HOST)).apply(headers);
}

/// The gateway's forwarding headers for one client address and `Host`, made once and reused
/// while a connection's requests come from the same client with the same `Host`.
#[derive(Debug, Clone)]
pub struct Forwarding {
    client: IpAddr,
    /// The request's `Host` as it came (compared, not sent).
    host: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
}

impl Forwarding {
    /// The headers naming `client`, with `host` (the request's `Host`, if it has one).
    pub fn new(client: IpAddr, host: Option<&HeaderValue>) -> Self {
        let ip = client.to_canonical();
        let forwarded_host = host
            .filter(|h| h.as_bytes().iter().all(u8::is_ascii_graphic))
            .cloned();
        let mut address = String::with_capacity(39);
        push_ip(&mut address, ip);
        let mut forwarded = String::with_capacity(64);
        forwarded.push_str("for=");
        if ip.is_ipv6() {
            forwarded.push_str("\"[");
            forwarded.push_str(&address);
            forwarded.push_str("]\"");
        } else {
            forwarded.push_str(&address);
        }
        forwarded.push_str(";proto=http");
        if let Some(host) = &forwarded_host {
            forwarded.push_str(";host=\"");
            for c in host.to_str().unwrap_or_default().chars() {
                if matches!(c, '\\' | '"') {
                    forwarded.push('\\');
                }
                forwarded.push(c);
            }
            forwarded.push('"');
        }
        Self {
            client,
            host: host.cloned(),
            forwarded: HeaderValue::try_from(forwarded).ok(),
            forwarded_for: HeaderValue::try_from(address).ok(),
            forwarded_host,
        }
    }

    /// Whether these are the headers [`Forwarding::new`] would make for `client` and `host`.
    pub fn is_for(&self, client: IpAddr, host: Option<&HeaderValue>) -> bool {
        self.client == client && self.host.as_ref() == host
    }

    /// Replaces the client's forwarding headers with these.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if headers.keys().any(|name| FORWARDING.contains(name)) {
            for name in FORWARDING {
                headers.remove(name);
            }
        }
        if let Some(value) = &self.forwarded {
            headers.insert(FORWARDED, value.clone());
        }
        if let Some(value) = &self.forwarded_for {
            headers.insert(X_FORWARDED_FOR, value.clone());
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if let Some(host) = &self.forwarded_host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }
}

/// Appends `ip` as text: an IPv4 address digit by digit (the common case, without the
/// formatting machinery), an IPv6 address as `Display` writes it.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut number = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(number.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The request's id: the client's `X-Request-Id` if it is 1–64 of `A-Z a-z 0-9 - _ .` and not
/// shaped like an API key (it is passed upstream and logged), else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID)
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && v.to_str().is_ok_and(|t| keygate_core::parse(t).is_err())
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// A fresh id: 32 random bits chosen at start-up, then a counter, as 16 hex digits.
fn new_request_id() -> HeaderValue {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static PROCESS: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let process = *PROCESS.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        u32::from_le_bytes(bytes)
    });
    let id = (u64::from(process) << 32) | u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
}

/// A key record as verification gives it, for tests.
#[cfg(test)]
pub(crate) fn test_key(name: &str, owner: Option<&str>, scopes: &[&str]) -> ApiKey {
    let scopes = scopes.iter().map(|s| s.to_string()).collect();
    ApiKey::from(std::sync::Arc::new(keygate_core::KeyGrant::from(
        test_record(name, owner, scopes),
    )))
}

/// A newly issued key's record, for tests.
#[cfg(test)]
fn test_record(name: &str, owner: Option<&str>, scopes: Vec<String>) -> keygate_core::KeyRecord {
    let spec = keygate_core::KeySpec {
        name: name.into(),
        owner: owner.map(Into::into),
        scopes,
        ..keygate_core::KeySpec::default()
    };
    let now = keygate_core::Timestamp::from_unix_ms(0).unwrap();
    keygate_core::issue(spec, &keygate_core::Prefix::default(), now)
        .unwrap()
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Trace-Hop"),
            ("connection", "close ,x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eDp5"),
            ("proxy-authenticate", "Basic"),
            ("x-trace-hop", "1"),
            ("x-other", "2"),
            ("content-type", "text/plain"),
            ("content-length", "3"),
            ("x-end-to-end", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(
            names(&h),
            ["content-length", "content-type", "x-end-to-end"]
        );
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection_upgrade_only() {
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&map(&[("connection", "upgrade")])));
    }

    #[test]
    fn connection_cannot_remove_the_identity_or_request_id() {
        let mut h = map(&[
            ("connection", "x-keygate-owner, x-request-id"),
            ("x-keygate-owner", "acct_1"),
            ("x-request-id", "r1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["x-keygate-owner", "x-request-id"]);
    }

    #[test]
    fn headers_without_hop_by_hop_or_spoofed_ones_are_left_as_they_are() {
        let pairs = [("host", "a"), ("accept", "*/*"), ("x-keygatex", "1")];
        let mut h = map(&pairs);
        remove_hop_by_hop(&mut h, false);
        remove_keygate_headers(&mut h);
        assert_eq!(h, map(&pairs));
    }

    #[test]
    fn client_keygate_headers_are_dropped() {
        let mut h = map(&[
            ("X-Keygate-Owner", "evil"),
            ("x-keygate-key-id", "key_x"),
            ("x-keygate-anything", "1"),
            ("x-keygatex", "kept: not ours"),
        ]);
        remove_keygate_headers(&mut h);
        assert_eq!(names(&h), ["x-keygatex"]);
    }

    #[test]
    fn values_are_percent_encoded_utf8_when_not_visible_ascii() {
        assert_eq!(encoded("acct_42"), "acct_42");
        assert_eq!(encoded("Zoë Ünal"), "Zo%C3%AB%20%C3%9Cnal");
        assert_eq!(encoded("東京"), "%E6%9D%B1%E4%BA%AC");
        assert_eq!(encoded("100% sure"), "100%25%20sure");
        assert_eq!(encoded("a\r\nX-Evil: 1"), "a%0D%0AX-Evil:%201");
        assert_eq!(encoded("{\"plan\":\"pro\"}"), "{\"plan\":\"pro\"}");
        // Decoding gives the text back, whatever it was.
        for text in ["Zoë", "100%25", "a b", "\u{7f}"] {
            let value = encoded(text);
            let back = percent_encoding::percent_decode(value.as_bytes())
                .decode_utf8()
                .unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn forwarding_headers_are_the_gateways() {
        let mut h = map(&[
            ("host", "api.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, "10.1.2.3".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(
            h["forwarded"],
            "for=10.1.2.3;proto=http;host=\"api.example.com\""
        );
        assert!(h.get("x-real-ip").is_none());
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);

        let mut h = HeaderMap::new();
        set_forwarded(&mut h, "::1".parse().unwrap());
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert_eq!(h["x-forwarded-for"], "::1");
        assert!(h.get("x-forwarded-host").is_none());

        // An IPv4 client seen through an IPv6 socket is named as IPv4; a host's quote and
        // backslash are escaped inside the quoted string.
        let mut h = map(&[("host", "a\"b\\c:80")]);
        set_forwarded(&mut h, "::ffff:192.0.2.255".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "192.0.2.255");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.255;proto=http;host=\"a\\\"b\\\\c:80\""
        );
        assert_eq!(h["x-forwarded-host"], "a\"b\\c:80");
    }

    #[test]
    fn identity_headers_are_reused_only_for_the_same_key_record() {
        let zoe = test_key("Zoë", Some("acct_42"), &["orders:read", "orders:write"]);
        let identity = Identity::of(&zoe, false);
        let mut h = HeaderMap::new();
        identity.apply(&mut h);
        assert_eq!(h["x-keygate-key-id"], zoe.id().as_str());
        assert_eq!(h["x-keygate-key-name"], "Zo%C3%AB");
        assert_eq!(h["x-keygate-owner"], "acct_42");
        assert_eq!(h["x-keygate-scopes"], "orders:read orders:write");
        assert!(h.get("x-keygate-metadata").is_none());

        assert!(identity.is_for(&zoe.clone(), false), "the same record");
        assert!(!identity.is_for(&zoe, true), "metadata asked for");
        // The same key reloaded (a new record, as after a rename): made anew.
        let reloaded = ApiKey::from(std::sync::Arc::new(zoe_grant(&zoe)));
        assert_eq!(reloaded.id(), zoe.id());
        assert!(!identity.is_for(&reloaded, false));
        assert!(!identity.is_for(&test_key("other", None, &[]), false));
    }

    /// The grant behind `key`, as the cache would load it again.
    fn zoe_grant(key: &ApiKey) -> keygate_core::KeyGrant {
        let mut record = test_record(key.name(), key.owner(), key.scopes().to_vec());
        record.id = key.id().clone();
        keygate_core::KeyGrant::from(record)
    }

    #[test]
    fn forwarding_headers_are_reused_only_for_the_same_client_and_host() {
        let host = HeaderValue::from_static("api.example.com");
        let client: IpAddr = "10.1.2.3".parse().unwrap();
        let forwarding = Forwarding::new(client, Some(&host));
        assert!(forwarding.is_for(client, Some(&host)));
        assert!(!forwarding.is_for("10.1.2.4".parse().unwrap(), Some(&host)));
        assert!(!forwarding.is_for(client, None));
        assert!(!forwarding.is_for(client, Some(&HeaderValue::from_static("other"))));
        // Applied, they replace the client's own, as `set_forwarded` does.
        let mut reused = map(&[("host", "api.example.com"), ("x-forwarded-for", "6.6.6.6")]);
        forwarding.apply(&mut reused);
        let mut made = map(&[("host", "api.example.com"), ("x-forwarded-for", "6.6.6.6")]);
        set_forwarded(&mut made, client);
        assert_eq!(reused, made);
    }

    #[test]
    fn request_ids_are_the_clients_only_when_safe() {
        let given = |v: &str| request_id(&map(&[("x-request-id", v)]));
        assert_eq!(given("abc-123_x.y"), "abc-123_x.y");
        let key = keygate_core::generate(&keygate_core::Prefix::default());
        let long = "x".repeat(65);
        for bad in [key.expose(), "has space", "a/b", long.as_str(), ""] {
            let id = given(bad);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 16, "a fresh id");
        }
        let (first, second) = (request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
        assert_ne!(first, second);
        for id in [&first, &second] {
            assert!(
                id.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        // The same process part, then consecutive counters.
        let counter =
            |id: &HeaderValue| u32::from_str_radix(&id.to_str().unwrap()[8..], 16).unwrap();
        assert_eq!(first.as_bytes()[..8], second.as_bytes()[..8]);
        assert!(counter(&second) > counter(&first));
    }
}
