//! The email sender: takes due emails from the durable outbox, sends them over SMTP (lettre;
//! TLS by rustls on ring: `smtps://` or `smtp://...?tls=required` for STARTTLS, verified
//! against the Mozilla roots plus `smtp_ca_file`'s certificates), and records each attempt;
//! failures are retried with the webhooks' backoff (1 s, 2 s, … up to an hour, 12 attempts).
//!
//! **How duplicates are bounded.** Delivery is at least once: an email is marked sent only
//! after the SMTP server accepted it, so a crash (or `kill -9`) between the acceptance and the
//! mark sends it again when keygate starts — at most once more per crash, per email (a digest:
//! per recipient). A mark that fails while the process lives (the database briefly
//! unwritable) is retried from memory and the email is not sent again. Every send of an
//! email carries the same `Message-ID` (`<keygate-email-<id>@keygate>`; a digest's is its
//! first notice's), so mail clients and deduplicating relays show one message.

use super::deliver::lease_until;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use keygate::core::Timestamp;
use keygate::core::email::{Email, EmailDelivery, digest};
use keygate::core::webhook::retry_after_ms;
use keygate::{Attempt, Keygate};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How long the SMTP server has, per email.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a claimed email is this node's (twice the send's timeout): other nodes leave it
/// alone meanwhile, and if this node dies between sending and marking it, it is sent again
/// (once, with the same Message-ID) after that.
const LEASE_MS: i64 = 2 * TIMEOUT.as_millis() as i64;

/// The SMTP transport and the sender's address.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry the SMTP password: never printed.
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

/// What a malformed `smtp_url` is told (never the URL: it may hold a password).
const SMTP_URL_FORMS: &str = "smtp_url: expected smtp://host:port, smtp://host:port?tls=required (STARTTLS) or smtps://host:port";

impl Mailer {
    /// A mailer for `smtp_url` (`smtp://host:port`, `smtps://...`, `?tls=required` for
    /// STARTTLS; credentials as `user:password@`) sending as `from`. `ca_file` (PEM) adds
    /// root certificates the SMTP server's certificate may chain to (a private CA); it needs
    /// a TLS URL. Certificates are always verified.
    pub fn new(smtp_url: &str, from: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|_| SMTP_URL_FORMS.to_owned())?;
        if let Some(path) = ca_file {
            builder = builder.tls(tls_with_root(smtp_url, path)?);
        }
        let transport = builder.timeout(Some(TIMEOUT)).build();
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| format!("email_from: {e}"))?;
        Ok(Self { transport, from })
    }

    async fn send(&self, email: &EmailDelivery) -> Result<(), String> {
        let content = Email {
            subject: email.subject.clone(),
            text: email.text.clone(),
            html: email.html.clone(),
        };
        self.send_to(&email.recipient, &content, email.id).await
    }

    /// Sends `content` to `recipient`; `id` (the outbox row, or a digest's first row) makes the
    /// `Message-ID`.
    async fn send_to(&self, recipient: &str, content: &Email, id: i64) -> Result<(), String> {
        let to = recipient
            .parse::<Mailbox>()
            .map_err(|e| format!("recipient: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(content.subject.clone())
            .message_id(Some(format!("<keygate-email-{id}@keygate>")))
            .multipart(MultiPart::alternative_plain_html(
                content.text.clone(),
                content.html.clone(),
            ))
            .map_err(|e| format!("message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|e| error_text(&e))
    }
}

/// The TLS mode `smtp_url` asks for, trusting the certificates in the PEM file `path` as well
/// as the Mozilla roots.
fn tls_with_root(smtp_url: &str, path: &Path) -> Result<Tls, String> {
    let url = reqwest::Url::parse(smtp_url).map_err(|_| SMTP_URL_FORMS.to_owned())?;
    let host = url
        .host_str()
        .ok_or_else(|| SMTP_URL_FORMS.to_owned())?
        .to_owned();
    let mode = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let tls: fn(TlsParameters) -> Tls = match (url.scheme(), mode.as_deref()) {
        ("smtps", _) => Tls::Wrapper,
        ("smtp", Some("required")) => Tls::Required,
        ("smtp", Some("opportunistic")) => Tls::Opportunistic,
        _ => {
            return Err("smtp_ca_file: smtp_url reaches the SMTP server without TLS; use smtps:// or smtp://...?tls=required".to_owned());
        }
    };
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("smtp_ca_file: cannot read {shown}: {e}"))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!("smtp_ca_file: {shown} holds no PEM certificate"));
    }
    let certificate = Certificate::from_pem(&pem)
        .map_err(|_| format!("smtp_ca_file: {shown} is not a PEM certificate file"))?;
    let parameters = TlsParameters::builder(host)
        .add_root_certificate(certificate)
        .build_rustls()
        .map_err(|e| format!("smtp_ca_file: {shown}: {e}"))?;
    Ok(tls(parameters))
}

/// An SMTP error and its causes (lettre's text holds them all), a part repeated by nested
/// errors said once: "Connection error: invalid peer certificate: UnknownIssuer".
fn error_text(error: &lettre::transport::smtp::Error) -> String {
    let text = error.to_string();
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// Most digest notices read per round (a recipient's beyond these go in the next round's
/// email).
const DIGEST_BATCH: u32 = 5_000;

/// The sender's state between rounds: the mailer, and the attempts whose emails the SMTP
/// server took but whose mark could not be written yet (written first next round; their
/// emails are not sent again meanwhile).
#[derive(Debug)]
pub struct Sender {
    mailer: Mailer,
    unmarked: HashMap<i64, Attempt>,
}

impl Sender {
    /// A sender through `mailer`.
    pub fn new(mailer: Mailer) -> Self {
        Self {
            mailer,
            unmarked: HashMap::new(),
        }
    }

    /// Sends every email due now (at most `batch` single ones, and each recipient's due
    /// digest notices as one email), recording each attempt; returns how many emails were
    /// attempted.
    pub async fn send_due(
        &mut self,
        keygate: &Keygate,
        batch: u32,
    ) -> Result<usize, keygate::Error> {
        self.write_unmarked(keygate).await?;
        let notices = keygate
            .due_digest_notices(keygate.now(), DIGEST_BATCH)
            .await?;
        let mut digests = 0;
        for due in notices.chunk_by(|a, b| a.recipient == b.recipient) {
            if due.iter().any(|n| self.unmarked.contains_key(&n.id)) {
                continue;
            }
            // Only the notices this node claims go into its digest (another node may hold some).
            let mut group: Vec<&EmailDelivery> = Vec::with_capacity(due.len());
            for notice in due {
                if claim(keygate, notice.id).await? {
                    group.push(notice);
                }
            }
            let Some(first) = group.first() else {
                continue;
            };
            let result = self
                .mailer
                .send_to(&first.recipient, &digest(&group), first.id)
                .await;
            match &result {
                Ok(()) => tracing::info!(notices = group.len(), "digest email sent"),
                Err(error) => {
                    tracing::warn!(notices = group.len(), %error, "digest email not sent");
                }
            }
            let at = keygate.now();
            let mut failed = None;
            for notice in group {
                if let Err(e) = self
                    .mark(keygate, notice.id, attempt(notice, at, &result))
                    .await
                {
                    failed.get_or_insert(e);
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            digests += 1;
        }
        let due = keygate.due_emails(keygate.now(), batch).await?;
        let mut attempted = 0;
        for email in &due {
            if self.unmarked.contains_key(&email.id) {
                continue;
            }
            // Claimed right before it is sent: with several nodes, each email goes out once.
            if !claim(keygate, email.id).await? {
                continue;
            }
            let result = self.mailer.send(email).await;
            match &result {
                Ok(()) => tracing::info!(
                    email_id = email.id,
                    event_seq = email.event_seq,
                    "email sent"
                ),
                Err(error) => {
                    tracing::warn!(email_id = email.id, attempt = email.attempts + 1, %error, "email not sent");
                }
            }
            self.mark(keygate, email.id, attempt(email, keygate.now(), &result))
                .await?;
            attempted += 1;
        }
        Ok(attempted + digests)
    }

    /// Records `attempt` at email `id`; a sent email whose mark fails is remembered, so that
    /// it is marked later rather than sent again.
    async fn mark(
        &mut self,
        keygate: &Keygate,
        id: i64,
        attempt: Attempt,
    ) -> Result<(), keygate::Error> {
        match keygate.finish_email(id, &attempt).await {
            Ok(()) => Ok(()),
            Err(e) if attempt.delivered => {
                self.unmarked.insert(id, attempt);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the marks that failed before.
    async fn write_unmarked(&mut self, keygate: &Keygate) -> Result<(), keygate::Error> {
        let mut ids: Vec<i64> = self.unmarked.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(attempt) = self.unmarked.get(&id) {
                keygate.finish_email(id, attempt).await?;
                self.unmarked.remove(&id);
            }
        }
        Ok(())
    }
}

/// Claims email (or notice) `id` for this node for [`LEASE_MS`] from now.
async fn claim(keygate: &Keygate, id: i64) -> Result<bool, keygate::Error> {
    let now = keygate.now();
    keygate
        .claim_email(id, now, lease_until(now, LEASE_MS))
        .await
}

/// The record of an attempt at `email` made at `at` with `result`.
fn attempt(email: &EmailDelivery, at: Timestamp, result: &Result<(), String>) -> Attempt {
    match result {
        Ok(()) => Attempt {
            at,
            delivered: true,
            status: None,
            error: None,
            next_attempt_at: None,
        },
        Err(error) => Attempt {
            at,
            delivered: false,
            status: None,
            error: Some(error.clone()),
            next_attempt_at: retry_after_ms(email.attempts + 1)
                .and_then(|ms| Timestamp::from_unix_ms(at.unix_ms() + ms)),
        },
    }
}

/// One round of a fresh [`Sender`] through `mailer` (tests and one-shot callers).
pub async fn send_due(
    keygate: &Keygate,
    mailer: &Mailer,
    batch: u32,
) -> Result<usize, keygate::Error> {
    Sender::new(mailer.clone()).send_due(keygate, batch).await
}

/// Sends emails as they fall due, until the process ends.
pub async fn run(keygate: Keygate, mailer: Mailer) {
    let mut sender = Sender::new(mailer);
    loop {
        match sender.send_due(&keygate, 50).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(500)).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or write the email outbox; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
