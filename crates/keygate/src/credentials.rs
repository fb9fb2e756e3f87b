//! Where a request carries its key, and how it is read out of untrusted headers and queries.
//!
//! Default: `Authorization: Api-Key <key>` (scheme case-insensitive). Also available:
//! `Authorization: Bearer <key>`, any header such as `X-Api-Key: <key>`, and a query parameter
//! (off unless configured: URLs end up in logs). Anything odd — a non-ASCII value, an empty
//! value, a value longer than any key, the same header twice, or different keys in two places —
//! is refused as `MALFORMED`; no key at all is `MISSING`.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, header};
use keygate_core::Outcome;
use keygate_core::format::MAX_KEY_LEN;

/// One place a request may carry its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Api-Key <key>` (the default).
    ApiKeyScheme,
    /// `Authorization: Bearer <key>`.
    BearerScheme,
    /// A header whose whole value is the key, e.g. `X-Api-Key`.
    Header(HeaderName),
    /// A query parameter, e.g. `?api_key=<key>`. Keys in URLs leak into logs: use sparingly.
    Query(String),
}

impl CredentialSource {
    /// `X-Api-Key: <key>`.
    pub fn x_api_key() -> Self {
        Self::Header(HeaderName::from_static("x-api-key"))
    }
}

/// Why no key could be read: the outcome (`MISSING` or `MALFORMED`) and a safe sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialError {
    /// `Outcome::Missing` or `Outcome::Malformed`.
    pub outcome: Outcome,
    /// What was wrong, without repeating anything the client sent.
    pub detail: &'static str,
}

fn malformed(detail: &'static str) -> CredentialError {
    CredentialError {
        outcome: Outcome::Malformed,
        detail,
    }
}

/// Longest value considered at all: a scheme, a space and the longest possible key.
const MAX_VALUE_LEN: usize = MAX_KEY_LEN + 32;

/// Reads the presented key from `headers` and `query` using `sources`. Borrows from the
/// request where it can (headers); a percent-decoded query value is owned.
pub fn extract<'r>(
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    sources: &[CredentialSource],
) -> Result<Cow<'r, str>, CredentialError> {
    let mut found: Option<Cow<'r, str>> = None;
    let mut wrong_scheme = false;
    let mut authorization_done = false;
    for source in sources {
        let value = match source {
            CredentialSource::ApiKeyScheme | CredentialSource::BearerScheme => {
                if authorization_done {
                    continue;
                }
                authorization_done = true;
                match from_authorization(headers, sources)? {
                    Authorization::Absent => None,
                    Authorization::OtherScheme => {
                        wrong_scheme = true;
                        None
                    }
                    Authorization::Key(k) => Some(Cow::Borrowed(k)),
                }
            }
            CredentialSource::Header(name) => single_header(headers, name)?
                .map(|v| check_token(v).map(Cow::Borrowed))
                .transpose()?,
            CredentialSource::Query(name) => from_query(query, name)?,
        };
        if let Some(value) = value {
            match &found {
                Some(previous) if previous != &value => {
                    return Err(malformed(
                        "different API keys were presented in more than one place",
                    ));
                }
                _ => found = Some(value),
            }
        }
    }
    found.ok_or(CredentialError {
        outcome: Outcome::Missing,
        detail: if wrong_scheme {
            "the Authorization header uses a scheme this API does not accept"
        } else {
            "no API key was presented"
        },
    })
}

enum Authorization<'h> {
    Absent,
    OtherScheme,
    Key(&'h str),
}

fn from_authorization<'h>(
    headers: &'h HeaderMap,
    sources: &[CredentialSource],
) -> Result<Authorization<'h>, CredentialError> {
    let Some(value) = single_header(headers, &header::AUTHORIZATION)? else {
        return Ok(Authorization::Absent);
    };
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.is_empty() {
        return Err(malformed("the Authorization header is empty"));
    }
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    let accepted = sources.iter().any(|s| match s {
        CredentialSource::ApiKeyScheme => scheme.eq_ignore_ascii_case("Api-Key"),
        CredentialSource::BearerScheme => scheme.eq_ignore_ascii_case("Bearer"),
        _ => false,
    });
    if !accepted {
        return Ok(Authorization::OtherScheme);
    }
    let token = rest.trim_matches(|c| c == ' ' || c == '\t');
    if token.is_empty() {
        return Err(malformed(
            "the Authorization header has no key after the scheme",
        ));
    }
    check_token(token).map(Authorization::Key)
}

/// The one value of header `name`, as visible ASCII; `None` if absent.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h str>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed("the credential header appears more than once"));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(malformed(
            "the credential header is longer than any API key",
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| malformed("the credential header is not visible ASCII"))?;
    Ok(Some(text))
}

fn check_token(token: &str) -> Result<&str, CredentialError> {
    if token.is_empty() {
        return Err(malformed("the credential is empty"));
    }
    if token.len() > MAX_KEY_LEN {
        return Err(malformed("the credential is longer than any API key"));
    }
    if token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(malformed(
            "the credential contains spaces or other characters no API key has",
        ));
    }
    Ok(token)
}

fn from_query<'q>(
    query: Option<&'q str>,
    name: &str,
) -> Result<Option<Cow<'q, str>>, CredentialError> {
    let Some(query) = query else { return Ok(None) };
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != name {
            continue;
        }
        if found.is_some() {
            return Err(malformed(
                "the credential query parameter appears more than once",
            ));
        }
        found = Some(Cow::Owned(check_token(&v)?.to_owned()));
    }
    Ok(found)
}

/// Removes from a request that is passed on every place `sources` may carry a key, so that
/// the receiver never sees it: the whole `Authorization` header when an `Authorization` scheme
/// is a source (whatever scheme it holds), each source header, and each source query
/// parameter. Returns the query to send: `query` unchanged when it holds no credential
/// parameter, else rebuilt from the remaining pairs (`None` when none remain).
pub fn strip(
    headers: &mut HeaderMap,
    query: Option<&str>,
    sources: &[CredentialSource],
) -> Option<String> {
    let mut names: Vec<&str> = Vec::new();
    for source in sources {
        match source {
            CredentialSource::ApiKeyScheme | CredentialSource::BearerScheme => {
                headers.remove(header::AUTHORIZATION);
            }
            CredentialSource::Header(name) => {
                headers.remove(name);
            }
            CredentialSource::Query(name) => names.push(name),
        }
    }
    let query = query?;
    let holds = |query: &str| {
        form_urlencoded::parse(query.as_bytes()).any(|(k, _)| names.contains(&k.as_ref()))
    };
    if names.is_empty() || !holds(query) {
        return Some(query.to_owned());
    }
    let mut rebuilt = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !names.contains(&k.as_ref()) {
            rebuilt.append_pair(&k, &v);
        }
    }
    let rebuilt = rebuilt.finish();
    (!rebuilt.is_empty()).then_some(rebuilt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    const KEY: &str = "kg_abc";
    const DEFAULT: &[CredentialSource] = &[CredentialSource::ApiKeyScheme];

    fn all() -> Vec<CredentialSource> {
        vec![
            CredentialSource::ApiKeyScheme,
            CredentialSource::BearerScheme,
            CredentialSource::x_api_key(),
            CredentialSource::Query("api_key".into()),
        ]
    }

    fn outcome(r: Result<Cow<'_, str>, CredentialError>) -> Result<String, Outcome> {
        r.map(Cow::into_owned).map_err(|e| e.outcome)
    }

    #[test]
    fn api_key_scheme_is_case_insensitive_and_trimmed() {
        for v in [
            "Api-Key kg_abc",
            "api-key kg_abc",
            "API-KEY   kg_abc  ",
            "Api-Key\tkg_abc",
        ] {
            let h = headers(&[("authorization", v.as_bytes())]);
            assert_eq!(outcome(extract(&h, None, DEFAULT)), Ok(KEY.into()), "{v}");
        }
    }

    #[test]
    fn defaults_ignore_other_places() {
        let h = headers(&[
            ("authorization", b"Bearer kg_abc"),
            ("x-api-key", b"kg_abc"),
        ]);
        let e = extract(&h, Some("api_key=kg_abc"), DEFAULT).unwrap_err();
        assert_eq!(e.outcome, Outcome::Missing);
        assert!(e.detail.contains("scheme"));
        assert_eq!(
            outcome(extract(&HeaderMap::new(), None, DEFAULT)),
            Err(Outcome::Missing)
        );
    }

    #[test]
    fn every_configured_source_works() {
        let all = all();
        let cases: Vec<(HeaderMap, Option<&str>)> = vec![
            (headers(&[("authorization", b"Bearer kg_abc")]), None),
            (headers(&[("x-api-key", b"kg_abc")]), None),
            (HeaderMap::new(), Some("a=1&api_key=kg_abc")),
            (
                headers(&[
                    ("authorization", b"Api-Key kg_abc"),
                    ("x-api-key", b"kg_abc"),
                ]),
                Some("api_key=kg_abc"),
            ),
        ];
        for (h, q) in cases {
            assert_eq!(outcome(extract(&h, q, &all)), Ok(KEY.into()));
        }
    }

    #[test]
    fn odd_input_is_malformed() {
        let all = all();
        let long = vec![b'a'; 16 * 1024];
        let cases: Vec<(HeaderMap, Option<&str>)> = vec![
            (headers(&[("authorization", b"")]), None),
            (headers(&[("authorization", b"   ")]), None),
            (headers(&[("authorization", b"Api-Key")]), None),
            (headers(&[("authorization", b"Api-Key ")]), None),
            (headers(&[("authorization", b"Api-Key a b")]), None),
            (headers(&[("authorization", &long)]), None),
            (headers(&[("authorization", b"Api-Key kg_\xff\xfe")]), None),
            (
                headers(&[
                    ("authorization", b"Api-Key kg_abc"),
                    ("authorization", b"Api-Key kg_abc"),
                ]),
                None,
            ),
            (
                headers(&[("x-api-key", b"kg_abc"), ("x-api-key", b"kg_abc")]),
                None,
            ),
            (headers(&[("x-api-key", b"")]), None),
            (
                headers(&[
                    ("authorization", b"Api-Key kg_abc"),
                    ("x-api-key", b"kg_xyz"),
                ]),
                None,
            ),
            (HeaderMap::new(), Some("api_key=kg_abc&api_key=kg_abc")),
            (HeaderMap::new(), Some("api_key=")),
            (HeaderMap::new(), Some("api_key=kg%20abc")),
        ];
        for (i, (h, q)) in cases.into_iter().enumerate() {
            assert_eq!(
                outcome(extract(&h, q, &all)),
                Err(Outcome::Malformed),
                "case {i}"
            );
        }
    }

    #[test]
    fn strip_removes_every_configured_place_and_keeps_the_rest() {
        let mut h = headers(&[
            ("authorization", b"Basic dXNlcjpwYXNz"),
            ("x-api-key", b"kg_abc"),
            ("accept", b"*/*"),
        ]);
        let query = strip(
            &mut h,
            Some("a=1&api_key=kg_abc&b=x+y&api_key=kg_def"),
            &all(),
        );
        assert_eq!(query.as_deref(), Some("a=1&b=x+y"));
        assert!(h.get("authorization").is_none());
        assert!(h.get("x-api-key").is_none());
        assert_eq!(h.get("accept").unwrap(), "*/*");

        // Only the credential left: no query at all.
        assert_eq!(
            strip(&mut HeaderMap::new(), Some("api_key=kg_abc"), &all()),
            None
        );
        // No credential parameter: the query is passed on byte for byte, odd encodings and all.
        assert_eq!(
            strip(&mut HeaderMap::new(), Some("q=%7e&flag"), &all()).as_deref(),
            Some("q=%7e&flag")
        );
        assert_eq!(strip(&mut HeaderMap::new(), None, &all()), None);
        // Sources not configured are left alone.
        let mut h = headers(&[
            ("authorization", b"Api-Key kg_abc"),
            ("x-api-key", b"kg_abc"),
        ]);
        let query = strip(
            &mut h,
            Some("api_key=kg_abc"),
            &[CredentialSource::x_api_key()],
        );
        assert_eq!(query.as_deref(), Some("api_key=kg_abc"));
        assert!(h.get("authorization").is_some());
        assert!(h.get("x-api-key").is_none());
    }
}
