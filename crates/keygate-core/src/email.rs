//! Email notices to the people who own keys: which events are mailed, how an address is
//! checked, and each message's text (plain and HTML) — short, actionable, and never a key.

use serde_json::Value;

use crate::audit::{AuditEvent, EventKind};

/// The events mailed to a key owner's contacts.
pub const EMAILED: [EventKind; 6] = [
    EventKind::KeyExpiringSoon,
    EventKind::KeyMaxAgeExceeded,
    EventKind::KeyRotated,
    EventKind::KeyStillInUse,
    EventKind::KeyRevoked,
    EventKind::KeyRetired,
];

/// Most contact addresses an owner may have.
pub const MAX_CONTACTS: usize = 20;

/// Longest address (RFC 5321's path limit).
pub const MAX_ADDRESS_CHARS: usize = 254;

/// Whether `kind` is mailed to owners.
pub fn emailed(kind: EventKind) -> bool {
    EMAILED.contains(&kind)
}

/// Checks an email address: `local@domain`, the domain with a dot, no spaces, control
/// characters, angle brackets or commas (one address, nothing a header could be split on), at
/// most [`MAX_ADDRESS_CHARS`]. Returns it trimmed.
pub fn check_address(text: &str) -> Result<String, &'static str> {
    let text = text.trim();
    if text.chars().count() > MAX_ADDRESS_CHARS {
        return Err("an address is at most 254 characters");
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'))
    {
        return Err("an address has no spaces, quotes, commas or angle brackets");
    }
    match text.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !local.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.') =>
        {
            Ok(text.to_owned())
        }
        _ => Err("expected an address such as ops@example.com"),
    }
}

/// Most addresses one operator entry (an event type, or `*`) may list.
pub const MAX_OPERATORS: usize = 20;

/// The event types operators may be given addresses for, and `*` (every one of them), as the
/// configuration names them.
pub fn operator_events() -> String {
    let mut names: Vec<&str> = EMAILED.iter().map(|k| k.as_str()).collect();
    names.push("*");
    names.join(", ")
}

/// Operator addresses per event type, from the configuration: who hears of emailed events
/// besides the key's owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operators {
    by_kind: Vec<(EventKind, Vec<String>)>,
    all: Vec<String>,
    /// Operators take their notices as one daily digest per address.
    pub digest: bool,
}

impl Operators {
    /// Operators from `(event type or "*", addresses)` entries. An unknown event type, an
    /// event emails are not sent for, a malformed address or more than [`MAX_OPERATORS`]
    /// addresses in an entry is an error naming the entry.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a [String])>,
        digest: bool,
    ) -> Result<Self, String> {
        let mut operators = Self {
            digest,
            ..Self::default()
        };
        for (name, addresses) in entries {
            let name = name.trim();
            if addresses.len() > MAX_OPERATORS {
                return Err(format!("\"{name}\": at most {MAX_OPERATORS} addresses"));
            }
            let mut checked: Vec<String> = Vec::with_capacity(addresses.len());
            for address in addresses {
                let address = check_address(address)
                    .map_err(|why| format!("\"{name}\": \"{address}\": {why}"))?;
                if !checked.iter().any(|a| same_address(a, &address)) {
                    checked.push(address);
                }
            }
            if name == "*" {
                operators.all.extend(checked);
                continue;
            }
            let kind = EventKind::parse(name)
                .filter(|k| emailed(*k))
                .ok_or_else(|| {
                    format!(
                        "\"{name}\": not an event type emails are sent for (expected one of {})",
                        operator_events()
                    )
                })?;
            match operators.by_kind.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, list)) => list.extend(checked),
                None => operators.by_kind.push((kind, checked)),
            }
        }
        Ok(operators)
    }

    /// Operators from one line, as an environment variable holds them:
    /// `key.revoked=security@example.com,ops@example.com;*=audit@example.com` (entries
    /// separated by `;`, addresses by `,`; an address never holds either).
    pub fn parse_list(text: &str, digest: bool) -> Result<Self, String> {
        let mut entries: Vec<(&str, Vec<String>)> = Vec::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, addresses) = entry.split_once('=').ok_or_else(|| {
                format!("\"{entry}\": expected EVENT=ADDRESS[,ADDRESS...], e.g. key.revoked=security@example.com")
            })?;
            let addresses = addresses
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            entries.push((name, addresses));
        }
        Self::from_entries(
            entries.iter().map(|(name, list)| (*name, list.as_slice())),
            digest,
        )
    }

    /// Whether no operator is named.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_kind.iter().all(|(_, list)| list.is_empty())
    }

    /// The operators of `kind`: its own entry's, then `*`'s.
    pub fn of(&self, kind: EventKind) -> impl Iterator<Item = &str> {
        self.by_kind
            .iter()
            .filter(move |(k, _)| *k == kind)
            .flat_map(|(_, list)| list.iter())
            .chain(self.all.iter())
            .map(String::as_str)
    }
}

/// Whether two checked addresses name one mailbox (compared without regard to ASCII case:
/// domains are case-insensitive, and no mail system in use tells `Ops@` from `ops@`).
pub fn same_address(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// One recipient of an event's notice, and whether it waits for the daily digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address.
    pub address: String,
    /// Held for the recipient's daily digest.
    pub digest: bool,
}

/// Who gets the notice of a `kind` event: the key owner's contacts, then the operators of
/// that event type, each address once. An address that is both a contact and an operator
/// gets one email, held for the digest only if both of its roles ask for the digest (the
/// sooner promise wins).
pub fn recipients(kind: EventKind, owner: &Contacts, operators: &Operators) -> Vec<Recipient> {
    if !emailed(kind) {
        return Vec::new();
    }
    let mut out: Vec<Recipient> = Vec::new();
    let roles = owner
        .emails
        .iter()
        .map(|a| (a.as_str(), owner.digest))
        .chain(operators.of(kind).map(|a| (a, operators.digest)));
    for (address, digest) in roles {
        match out.iter_mut().find(|r| same_address(&r.address, address)) {
            Some(seen) => seen.digest &= digest,
            None => out.push(Recipient {
                address: address.to_owned(),
                digest,
            }),
        }
    }
    out
}

/// Longest public URL.
pub const MAX_PUBLIC_URL_CHARS: usize = 200;

/// Checks the admin UI's public address (`public_url`), which emails link to: an absolute
/// `http://` or `https://` URL with a host, no credentials, query or fragment, at most
/// [`MAX_PUBLIC_URL_CHARS`]. Returns it without a trailing `/`.
pub fn check_public_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.chars().count() > MAX_PUBLIC_URL_CHARS {
        return Err(format!("at most {MAX_PUBLIC_URL_CHARS} characters"));
    }
    let expected = "expected an absolute http:// or https:// URL such as https://keys.example.com";
    let url = url::Url::parse(text).map_err(|_| expected.to_owned())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(expected.to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold a user name or password".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query (?) or fragment (#)".to_owned());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Where emails link to and who, besides key owners, gets them: what the store needs to
/// queue an event's emails in its transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmailRouting {
    /// Operator addresses per event type.
    pub operators: Operators,
    /// The admin UI's public address (checked by [`check_public_url`]); emails link to the
    /// key's page under it. `None`: no link.
    pub public_url: Option<String>,
}

/// An email's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Subject line.
    pub subject: String,
    /// Plain text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

fn shown(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// The new value of a changed field in an event's details (`{"from", "to"}`), or the value.
fn detail<'e>(event: &'e AuditEvent, field: &str) -> Option<&'e Value> {
    let value = event.details.get(field)?;
    Some(value.get("to").unwrap_or(value))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The email for `event` about key `key_name`, with a link to the key's admin page when the
/// admin UI's public address `admin_url` is known. Built from the event's ids, times and
/// counts only: never a key, a hash or a signing secret.
pub fn message(event: &AuditEvent, key_name: &str, admin_url: Option<&str>) -> Email {
    let id = event.key_id.as_ref().map_or("-", |k| k.as_str());
    let what = format!("\"{key_name}\" ({id})");
    let (headline, action) = match event.kind {
        EventKind::KeyRotated => (
            format!(
                "Key {what} was rotated. Its successor is {}; the old key works until {}.",
                shown(detail(event, "rotated_to")),
                shown(detail(event, "expires_at"))
            ),
            "Make sure every service uses the new key before then.",
        ),
        EventKind::KeyExpiringSoon => (
            format!(
                "Key {what} expires at {}.",
                shown(event.details.get("expires_at"))
            ),
            "Rotate it, or ask for a new one, before it stops working.",
        ),
        EventKind::KeyMaxAgeExceeded => (
            format!(
                "Key {what}, created at {}, is older than its policy allows.",
                shown(event.details.get("created_at"))
            ),
            "Rotate it.",
        ),
        EventKind::KeyStillInUse => (
            format!(
                "Key {what} was rotated but is still in use: last used at {}, {} uses since the rotation. It stops working at {}.",
                shown(event.details.get("last_used_at")),
                shown(event.details.get("uses_since_rotation")),
                shown(event.details.get("grace_ends_at"))
            ),
            "Find what still sends the old key and switch it to the successor.",
        ),
        EventKind::KeyRevoked => (
            format!(
                "Key {what} was revoked (reason: {}).",
                shown(detail(event, "revoked_reason"))
            ),
            "Requests with it are refused from now on.",
        ),
        EventKind::KeyRetired => (
            format!(
                "Key {what} was retired: its successor has been in use since {} and the old key was last used at {}.",
                shown(event.details.get("successor_first_used_at")),
                shown(event.details.get("old_last_used_at"))
            ),
            "Nothing to do: the switch-over is complete.",
        ),
        _ => (format!("{} for key {what}.", event.kind), ""),
    };
    let link = admin_url.map(|base| format!("{}/admin/keys/{id}", base.trim_end_matches('/')));
    let mut text = format!("{headline}\n{action}\n");
    if let Some(link) = &link {
        text.push_str(&format!("\n{link}\n"));
    }
    text.push_str(&format!("\n-- keygate ({} at {})\n", event.kind, event.at));
    let link_html = link.as_ref().map_or(String::new(), |l| {
        format!("<p><a href=\"{0}\">{0}</a></p>", escape(l))
    });
    let html = format!(
        "<!doctype html><html><body><p>{}</p><p>{}</p>{link_html}<p style=\"color:#666\">keygate - {} at {}</p></body></html>",
        escape(&headline),
        escape(action),
        event.kind,
        event.at
    );
    Email {
        subject: format!("[keygate] {}: {key_name}", event.kind),
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Audit};
    use crate::format::Prefix;
    use crate::record::{KeySpec, issue, plan_rotation};
    use crate::{KeyId, Timestamp, generate};

    #[test]
    fn addresses_are_single_and_plain() {
        assert_eq!(
            check_address(" ops@example.com "),
            Ok("ops@example.com".into())
        );
        for bad in [
            "",
            "ops",
            "@example.com",
            "ops@",
            "ops@localhost",
            "a b@example.com",
            "ops@example.com, evil@example.com",
            "Ops <ops@example.com>",
            "ops@example.com\r\nBcc: x@y.z",
            "a@b@example.com",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rotation_email_names_the_successor_and_never_the_key() {
        let t = Timestamp::from_unix_ms(1_767_225_600_000).unwrap();
        let spec = KeySpec {
            name: "billing <prod>".into(),
            ..KeySpec::default()
        };
        let (old, old_key) = issue(spec, &Prefix::default(), t).unwrap();
        let new_key = generate(&Prefix::default());
        let new_id = KeyId::generate(t);
        let (after, new) = plan_rotation(&old, &new_key, new_id, t, 3_600_000).unwrap();
        let event = AuditEvent::changed(
            EventKind::KeyRotated,
            &old,
            &after,
            &Audit::by(Actor::Cli),
            t,
        );
        assert!(emailed(event.kind));
        let email = message(&event, &old.name, Some("https://keys.example.com/"));
        assert!(email.subject.contains("key.rotated"));
        assert!(email.text.contains(new.id.as_str()), "{}", email.text);
        assert!(
            email
                .text
                .contains("https://keys.example.com/admin/keys/key_")
        );
        assert!(
            email.html.contains("billing &lt;prod&gt;"),
            "{}",
            email.html
        );
        for body in [&email.text, &email.html, &email.subject] {
            assert!(!body.contains(&old_key.expose()[3..]));
            assert!(!body.contains(&new_key.expose()[3..]));
        }
        assert!(!emailed(EventKind::KeyCreated));
    }
}

/// One email on its way to one recipient (the outbox row), with its log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EmailDelivery {
    /// Outbox position.
    pub id: i64,
    /// The audit event it tells of.
    pub event_seq: i64,
    /// That event's type.
    pub event: EventKind,
    /// The key the event is about.
    pub key_id: Option<String>,
    /// The key's owner when the event happened.
    pub owner: Option<String>,
    /// To whom.
    pub recipient: String,
    /// Held for the recipient's daily digest.
    pub digest: bool,
    /// Subject line.
    pub subject: String,
    /// Plain text body.
    #[serde(skip)]
    pub text: String,
    /// HTML body.
    #[serde(skip)]
    pub html: String,
    /// Where it stands.
    pub status: crate::webhook::DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: crate::Timestamp,
    /// The last error (connection refused, a 4xx/5xx SMTP reply, ...).
    pub last_error: Option<String>,
    /// When the SMTP server accepted it.
    pub sent_at: Option<crate::Timestamp>,
}

/// An owner's contacts: where its email goes, and whether as one daily digest per address.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Contacts {
    /// The addresses.
    pub emails: Vec<String>,
    /// Collect the notices into one email a day (sent after 00:00 UTC) instead of one each.
    pub digest: bool,
}

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// When a digest holding a notice from `at` is sent: the next 00:00 UTC after it.
pub fn digest_due(at: crate::Timestamp) -> crate::Timestamp {
    let next = (at.unix_ms().div_euclid(DAY_MS) + 1) * DAY_MS;
    crate::Timestamp::from_unix_ms(next).unwrap_or(at)
}

/// One email for many notices to one recipient: a count in the subject, each notice's subject
/// and text in the body, in order.
pub fn digest(notices: &[&EmailDelivery]) -> Email {
    let mut text = format!("{} keygate notices:\n", notices.len());
    let mut html = format!(
        "<!doctype html><html><body><p>{} keygate notices:</p><ol>",
        notices.len()
    );
    for notice in notices {
        text.push_str(&format!("\n* {}\n{}", notice.subject, notice.text));
        html.push_str(&format!(
            "<li><p><strong>{}</strong></p><pre>{}</pre></li>",
            escape(&notice.subject),
            escape(&notice.text)
        ));
    }
    html.push_str("</ol></body></html>");
    Email {
        subject: format!("[keygate] daily digest: {} notices", notices.len()),
        text,
        html,
    }
}

#[cfg(test)]
mod digest_tests {
    use super::*;
    use crate::Timestamp;

    #[test]
    fn digests_go_at_the_next_midnight_and_hold_every_notice() {
        let t = |ms| Timestamp::from_unix_ms(ms).unwrap();
        let day = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(digest_due(t(day)), t(day + DAY_MS));
        assert_eq!(digest_due(t(day + 5)), t(day + DAY_MS));
        assert_eq!(digest_due(t(day + DAY_MS - 1)), t(day + DAY_MS));
        let notice = |n: i64| EmailDelivery {
            id: n,
            event_seq: n,
            event: EventKind::KeyExpiringSoon,
            key_id: None,
            owner: None,
            recipient: "ops@example.com".into(),
            digest: true,
            subject: format!("[keygate] key.expiring_soon: key {n}"),
            text: format!("Key {n} expires <soon>."),
            html: String::new(),
            status: crate::webhook::DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: t(day),
            last_error: None,
            sent_at: None,
        };
        let notices: Vec<EmailDelivery> = (1..=3).map(notice).collect();
        let refs: Vec<&EmailDelivery> = notices.iter().collect();
        let email = digest(&refs);
        assert!(email.subject.contains("3 notices"));
        for n in 1..=3 {
            assert!(email.text.contains(&format!("Key {n} expires")));
        }
        assert!(email.html.contains("&lt;soon&gt;"));
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn operators_are_checked_and_named_by_entry() {
        let revoked = list(&["security@example.com", "Security@Example.com"]);
        let all = list(&["audit@example.com"]);
        let ops = Operators::from_entries([("key.revoked", &revoked[..]), ("*", &all[..])], false)
            .unwrap();
        assert_eq!(
            ops.of(EventKind::KeyRevoked).collect::<Vec<_>>(),
            ["security@example.com", "audit@example.com"],
            "the same address twice in an entry is kept once"
        );
        assert_eq!(
            ops.of(EventKind::KeyRotated).collect::<Vec<_>>(),
            ["audit@example.com"]
        );
        assert!(!ops.is_empty());
        let bad = list(&["ops@example.com"]);
        let err = Operators::from_entries([("key.revokd", &bad[..])], false).unwrap_err();
        assert!(
            err.starts_with("\"key.revokd\": not an event type"),
            "{err}"
        );
        assert!(
            err.contains("key.still_in_use") && err.contains('*'),
            "{err}"
        );
        let err = Operators::from_entries([("key.created", &bad[..])], false).unwrap_err();
        assert!(
            err.contains("not an event type emails are sent for"),
            "{err}"
        );
        let malformed = list(&["ops@example.com, evil@example.com"]);
        let err = Operators::from_entries([("*", &malformed[..])], false).unwrap_err();
        assert!(
            err.starts_with("\"*\": \"ops@example.com, evil@example.com\""),
            "{err}"
        );
        let many: Vec<String> = (0..=MAX_OPERATORS)
            .map(|n| format!("ops{n}@example.com"))
            .collect();
        assert!(Operators::from_entries([("*", &many[..])], false).is_err());
    }

    #[test]
    fn the_environment_form_says_the_same() {
        let ops = Operators::parse_list(
            " key.revoked = security@example.com , ops@example.com ; *=audit@example.com;",
            true,
        )
        .unwrap();
        assert!(ops.digest);
        assert_eq!(
            ops.of(EventKind::KeyRevoked).collect::<Vec<_>>(),
            [
                "security@example.com",
                "ops@example.com",
                "audit@example.com"
            ]
        );
        assert!(Operators::parse_list("", false).unwrap().is_empty());
        let err = Operators::parse_list("security@example.com", false).unwrap_err();
        assert!(err.contains("expected EVENT=ADDRESS"), "{err}");
        assert!(Operators::parse_list("key.revoked=not-an-address", false).is_err());
    }

    #[test]
    fn an_address_in_two_roles_gets_one_email_and_the_sooner_promise() {
        let owner = Contacts {
            emails: list(&["dev@example.com", "ops@example.com"]),
            digest: true,
        };
        let ops = list(&["OPS@example.com", "security@example.com"]);
        let all = list(&["dev@example.com"]);
        let operators =
            Operators::from_entries([("key.revoked", &ops[..]), ("*", &all[..])], false).unwrap();
        let got = recipients(EventKind::KeyRevoked, &owner, &operators);
        let shown: Vec<(&str, bool)> = got.iter().map(|r| (r.address.as_str(), r.digest)).collect();
        assert_eq!(
            shown,
            [
                ("dev@example.com", false),
                ("ops@example.com", false),
                ("security@example.com", false)
            ]
        );
        // Operators on the digest too: the contacts' digest stands.
        let operators = Operators {
            digest: true,
            ..operators
        };
        assert!(
            recipients(EventKind::KeyRevoked, &owner, &operators)
                .iter()
                .all(|r| r.digest)
        );
        // Only operators, for a key without an owner's contacts.
        let got = recipients(EventKind::KeyRotated, &Contacts::default(), &operators);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].address, "dev@example.com");
        assert!(recipients(EventKind::KeyCreated, &owner, &operators).is_empty());
    }

    #[test]
    fn the_public_url_is_an_absolute_web_address() {
        assert_eq!(
            check_public_url("https://keys.example.com/").as_deref(),
            Ok("https://keys.example.com")
        );
        assert_eq!(
            check_public_url("http://10.0.0.5:8080/keygate").as_deref(),
            Ok("http://10.0.0.5:8080/keygate")
        );
        for bad in [
            "",
            "keys.example.com",
            "/admin",
            "ftp://keys.example.com",
            "https://user:pw@keys.example.com",
            "https://keys.example.com/?a=b",
            "https://keys.example.com/#x",
            "mailto:ops@example.com",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
        assert!(check_public_url(&format!("https://{}.com", "a".repeat(200))).is_err());
    }
}
