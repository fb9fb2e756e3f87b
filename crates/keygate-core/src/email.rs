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
    /// To whom.
    pub recipient: String,
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
            recipient: "ops@example.com".into(),
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
