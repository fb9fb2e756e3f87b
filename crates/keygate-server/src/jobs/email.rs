//! The email sender: takes due emails from the durable outbox, sends them over SMTP (lettre;
//! TLS by rustls on ring: `smtps://` or `smtp://...?tls=required` for STARTTLS), and records
//! each attempt; failures are retried with the webhooks' backoff (1 s, 2 s, … up to an hour,
//! 12 attempts). Delivery is at least once: a crash between the SMTP server's acceptance and
//! the mark sends that one email again on restart (at most once more per crash, per email);
//! its `Message-ID` (`<keygate-email-<id>@keygate>`) stays the same, so mail clients and
//! deduplicating relays see one message.

use std::time::Duration;

use keygate::core::Timestamp;
use keygate::core::email::{Email, EmailDelivery, digest};
use keygate::core::webhook::retry_after_ms;
use keygate::{Attempt, Keygate};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How long the SMTP server has, per email.
const TIMEOUT: Duration = Duration::from_secs(30);

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

impl Mailer {
    /// A mailer for `smtp_url` (`smtp://host:port`, `smtps://...`, `?tls=required` for
    /// STARTTLS; credentials as `user:password@`) sending as `from`.
    pub fn new(smtp_url: &str, from: &str) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|_| "smtp_url: expected smtp://host:port or smtps://host:port".to_owned())?
            .timeout(Some(TIMEOUT))
            .build();
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
            .map_err(|e| e.to_string())
    }
}

/// Most digest notices read per round (a recipient's beyond these go in the next round's
/// email).
const DIGEST_BATCH: u32 = 5_000;

/// Sends every email due now (at most `batch` single ones, and each recipient's due digest
/// notices as one email), recording each attempt; returns how many emails were attempted.
pub async fn send_due(
    keygate: &Keygate,
    mailer: &Mailer,
    batch: u32,
) -> Result<usize, keygate::Error> {
    let notices = keygate
        .due_digest_notices(keygate.now(), DIGEST_BATCH)
        .await?;
    let mut digests = 0;
    for group in notices.chunk_by(|a, b| a.recipient == b.recipient) {
        let refs: Vec<&EmailDelivery> = group.iter().collect();
        let result = mailer
            .send_to(&group[0].recipient, &digest(&refs), group[0].id)
            .await;
        match &result {
            Ok(()) => tracing::info!(notices = group.len(), "digest email sent"),
            Err(error) => tracing::warn!(notices = group.len(), %error, "digest email not sent"),
        }
        let at = keygate.now();
        for notice in group {
            let attempt = match &result {
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
                    next_attempt_at: retry_after_ms(notice.attempts + 1)
                        .and_then(|ms| Timestamp::from_unix_ms(at.unix_ms() + ms)),
                },
            };
            keygate.finish_email(notice.id, &attempt).await?;
        }
        digests += 1;
    }
    let due = keygate.due_emails(keygate.now(), batch).await?;
    for email in &due {
        let result = mailer.send(email).await;
        let at = keygate.now();
        let attempt = match result {
            Ok(()) => Attempt {
                at,
                delivered: true,
                status: None,
                error: None,
                next_attempt_at: None,
            },
            Err(error) => {
                tracing::warn!(email_id = email.id, attempt = email.attempts + 1, %error, "email not sent");
                Attempt {
                    at,
                    delivered: false,
                    status: None,
                    error: Some(error),
                    next_attempt_at: retry_after_ms(email.attempts + 1)
                        .and_then(|ms| Timestamp::from_unix_ms(at.unix_ms() + ms)),
                }
            }
        };
        if attempt.delivered {
            tracing::info!(
                email_id = email.id,
                event_seq = email.event_seq,
                "email sent"
            );
        }
        keygate.finish_email(email.id, &attempt).await?;
    }
    Ok(due.len() + digests)
}

/// Sends emails as they fall due, until the process ends.
pub async fn run(keygate: Keygate, mailer: Mailer) {
    loop {
        match send_due(&keygate, &mailer, 50).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(500)).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the email outbox; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
