//! Webhook endpoints, managed through [`Keygate`]: events reach them through the store's
//! durable outbox, and `keygate serve` delivers them (signed, retried).

use keygate_core::webhook::{Delivery, Endpoint, check_url, generate_secret};
use keygate_core::{Audit, EventKind, KeyId, Timestamp};
use keygate_store::Attempt;

use crate::Keygate;
use crate::error::Error;

impl Keygate {
    /// Adds an endpoint receiving `events` (event type names, or `*`), as the event object or,
    /// with `slack`, as `{"text": ...}`; with `receives_secrets`, also the new keys the rotation
    /// policy issues (use only for a vault or secrets manager you trust). The returned endpoint carries its signing secret:
    /// show it once.
    pub async fn add_webhook(
        &self,
        url: &str,
        events: Vec<String>,
        slack: bool,
        receives_secrets: bool,
        audit: &Audit,
    ) -> Result<Endpoint, Error> {
        let field = |field: &'static str, message: &str| Error::Invalid {
            field,
            message: message.to_owned(),
        };
        let url =
            check_url(url, self.allows_private_webhooks()).map_err(|why| field("url", why))?;
        let events = if events.is_empty() {
            vec!["*".to_owned()]
        } else {
            events
        };
        if events
            .iter()
            .any(|e| e != "*" && EventKind::parse(e).is_none())
        {
            return Err(field(
                "events",
                "each must be `*` or an event type such as key.rotated",
            ));
        }
        let now = self.now();
        let endpoint = Endpoint {
            id: format!("whk_{}", &KeyId::generate(now).as_str()[4..]),
            url,
            events,
            secret: generate_secret(),
            slack,
            enabled: true,
            created_at: now,
            receives_secrets,
        };
        // The signing secret rests sealed when there is a sealing key; the caller gets it in
        // the clear, this once.
        let stored = Endpoint {
            secret: self.seal_at_rest(&endpoint.secret),
            ..endpoint.clone()
        };
        self.store()
            .create_endpoint(&stored, audit)
            .await
            .map_err(Error::store("add the webhook"))?;
        tracing::info!(webhook_id = %endpoint.id, "added webhook endpoint");
        Ok(endpoint)
    }

    /// Every webhook endpoint (their secrets stay in the records: do not print them).
    pub async fn webhooks(&self) -> Result<Vec<Endpoint>, Error> {
        self.store()
            .list_endpoints()
            .await
            .map_err(Error::store("list webhooks"))
    }

    /// An endpoint's delivery log, newest first.
    pub async fn webhook_deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>, Error> {
        self.store()
            .list_deliveries(endpoint_id, limit)
            .await
            .map_err(Error::store("read the delivery log"))
    }

    /// Pending deliveries due at `now`, oldest first, at most `limit`: the sender's next batch.
    /// Signing secrets sealed at rest are opened; one that cannot be (no sealing key, or not
    /// the one that sealed it) is left sealed, so that signing with it fails.
    pub async fn due_deliveries(&self, now: Timestamp, limit: u32) -> Result<Vec<Delivery>, Error> {
        let mut due = self
            .store()
            .due_deliveries(now, limit)
            .await
            .map_err(Error::store("read the webhook outbox"))?;
        for delivery in &mut due {
            if delivery.secret.starts_with(crate::sealing::SEALED_PREFIX)
                && let Some(secret) = self.unseal(&delivery.secret)
            {
                delivery.secret = secret;
            }
        }
        Ok(due)
    }

    /// Records the outcome of an attempt at delivery `id`.
    pub async fn finish_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), Error> {
        self.store()
            .finish_attempt(id, attempt)
            .await
            .map_err(Error::store("record the delivery attempt"))
    }
}
