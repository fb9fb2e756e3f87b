//! Webhook endpoints, managed through [`Keygate`]: events reach them through the store's
//! durable outbox, and `keygate serve` delivers them (signed, retried).

use keygate_core::webhook::{Delivery, Endpoint, check_url, generate_secret};
use keygate_core::{Audit, EventKind, KeyId, RecordError};
use keygate_store::StoreError;

use crate::Keygate;

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
    ) -> Result<Endpoint, StoreError> {
        let field = |field: &'static str, message: &str| {
            StoreError::Record(RecordError::Field {
                field,
                message: message.to_owned(),
            })
        };
        check_url(url).map_err(|why| field("url", why))?;
        let events = if events.is_empty() {
            vec!["*".to_owned()]
        } else {
            events
        };
        if let Some(unknown) = events
            .iter()
            .find(|e| *e != "*" && EventKind::parse(e).is_none())
        {
            let _ = unknown;
            return Err(field(
                "events",
                "each must be `*` or an event type such as key.rotated",
            ));
        }
        let now = self.now();
        let endpoint = Endpoint {
            id: format!("whk_{}", &KeyId::generate(now).as_str()[4..]),
            url: url.to_owned(),
            events,
            secret: generate_secret(),
            slack,
            enabled: true,
            created_at: now,
            receives_secrets,
        };
        self.store().create_endpoint(&endpoint, audit).await?;
        tracing::info!(webhook_id = %endpoint.id, "added webhook endpoint");
        Ok(endpoint)
    }

    /// Every webhook endpoint (their secrets stay in the records: do not print them).
    pub async fn webhooks(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.store().list_endpoints().await
    }

    /// An endpoint's delivery log, newest first.
    pub async fn webhook_deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.store().list_deliveries(endpoint_id, limit).await
    }
}
