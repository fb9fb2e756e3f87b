//! The properties the fuzz targets check, each over arbitrary bytes; a failing property panics.
//! Shared (by `#[path]`) with keygate-server's test `fuzz_regressions`, which replays every
//! input saved under `fuzz/regressions/<target>/` on stable Rust, so that what fuzzing once
//! found stays fixed.

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate::CredentialSource;

/// Key parsing never panics; whatever parses has a valid prefix, and its hash is the hash of
/// the text.
pub fn key_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = keygate::core::parse(text) {
        assert!(
            keygate::core::Prefix::new(parsed.prefix()).is_ok(),
            "prefix of a parsed key"
        );
        assert_eq!(parsed.hash(), keygate::core::KeyHash::of(text));
        assert!(text.starts_with(parsed.prefix()));
    }
}

/// Reading the key from headers and the query never panics; what it reads is a substring of
/// what was sent (or of the decoded query), never longer than a key can be, and has no
/// whitespace or control characters around it.
pub fn credentials(data: &[u8]) {
    // Lines: "name: value" headers, then one line of query string.
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    let mut lines = text.split('\n');
    let query = lines
        .next_back()
        .filter(|q| !q.is_empty())
        .map(str::to_owned);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_bytes(value.trim_start().as_bytes()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let sources = [
        CredentialSource::ApiKeyScheme,
        CredentialSource::BearerScheme,
        CredentialSource::x_api_key(),
        CredentialSource::Query("api_key".into()),
    ];
    if let Ok(key) = keygate::credentials::extract(&headers, query.as_deref(), &sources) {
        assert!(!key.is_empty());
        assert!(key.len() <= 512, "an extracted key is short");
        assert_eq!(key.trim(), &*key, "no surrounding whitespace");
        assert!(!key.chars().any(char::is_control));
    }
}

/// `next` after sign-in: what is accepted stays in the admin UI and can be written into a
/// `Location` header (the 500 the attack found).
pub fn next_param(data: &[u8]) {
    let Ok(next) = std::str::from_utf8(data) else {
        return;
    };
    if keygate_server::admin::safe_next(next) {
        assert!(next.starts_with("/admin/") && !next.starts_with("//"));
        assert!(!next.contains("//") && !next.contains('\\'));
        assert!(
            HeaderValue::from_str(next).is_ok(),
            "a Location header can carry it"
        );
    }
}

/// Webhook URLs: never a panic; what is accepted without `allow_private` is http(s), names a
/// host, carries no credentials and points at no literal internal address.
pub fn webhook_url(data: &[u8]) {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let strict = keygate::core::webhook::check_url(url, false);
    let lenient = keygate::core::webhook::check_url(url, true);
    if let Ok(canonical) = &strict {
        assert_eq!(
            lenient.as_ref(),
            Ok(canonical),
            "allowed strictly, allowed leniently"
        );
        assert!(
            canonical.starts_with("http://") || canonical.starts_with("https://"),
            "{canonical}"
        );
        assert!(!canonical.contains(char::is_whitespace));
        assert!(canonical.len() <= keygate::core::webhook::MAX_CANONICAL_URL_BYTES);
        // The canonical form is a fixed point: the re-check at each delivery gives it back.
        assert_eq!(
            keygate::core::webhook::recheck_url(canonical, false).as_ref(),
            Ok(canonical)
        );
        let shown = keygate::core::webhook::redacted_url(canonical);
        assert!(shown.ends_with("/…"), "{shown}");
    }
}

/// Configuration files: never a panic; an error is one line.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = keygate_server::Settings::from_toml(text, "fuzz.toml") {
        let line = e.to_string();
        assert!(!line.contains('\n'), "one line: {line:?}");
    }
    if let Err(e) = keygate_gateway::GatewayConfig::from_toml(text, "fuzz.toml") {
        let _ = e.to_string();
    }
}

/// The JSON bodies of keygate's API: which request an input makes. The first byte picks the
/// endpoint, the rest is the body.
pub fn json_body_request(data: &[u8]) -> Option<(&'static str, &'static str, &[u8])> {
    let (&pick, body) = data.split_first()?;
    let (method, path) = match pick % 7 {
        0 => ("POST", "/v1/keys"),
        1 => ("PATCH", "/v1/keys/{id}"),
        2 => ("POST", "/v1/keys/{id}/revoke"),
        3 => ("POST", "/v1/keys/{id}/rotate"),
        4 => ("POST", "/v1/verify"),
        5 => ("POST", "/v1/webhooks"),
        _ => ("POST", "/v1/self/rotate"),
    };
    Some((method, path, body))
}

/// What keygate's API may answer to any body: never a 5xx, and a refusal is problem+json.
pub fn json_body_answer(status: u16, content_type: Option<&str>) {
    assert!(status < 500, "status {status}");
    if status >= 400 {
        assert_eq!(
            content_type,
            Some("application/problem+json"),
            "status {status}"
        );
    }
}
