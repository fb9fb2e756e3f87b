//! Webhook endpoints, managed through [`Keygate`]: events reach them through the store's
//! durable outbox, and `keygate serve` delivers them (signed, retried).

use keygate_core::webhook::{
    Delivery, Endpoint, EndpointPatch, check_events, check_url, generate_secret,
};
use keygate_core::{Audit, KeyId, Timestamp};
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
        let events = check_events(events).map_err(|why| field("events", why))?;
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

    /// Changes endpoint `id`: a new URL (checked as on creation), event types (at least one:
    /// `*` or event type names), enabled or not (a disabled endpoint gets no new deliveries,
    /// and its pending ones wait until it is enabled again). Audited as `webhook.updated`, or
    /// `webhook.disabled` / `webhook.enabled` when only that changed. [`Error::NotFound`] if
    /// there is no such endpoint.
    pub async fn update_webhook(
        &self,
        id: &str,
        url: Option<&str>,
        events: Option<Vec<String>>,
        enabled: Option<bool>,
        audit: &Audit,
    ) -> Result<Endpoint, Error> {
        let field = |field: &'static str, message: &str| Error::Invalid {
            field,
            message: message.to_owned(),
        };
        let url = url
            .map(|url| check_url(url, self.allows_private_webhooks()))
            .transpose()
            .map_err(|why| field("url", why))?;
        let events = match events {
            Some(events) if events.is_empty() => {
                return Err(field("events", "give at least one event type, or `*`"));
            }
            Some(events) => Some(check_events(events).map_err(|why| field("events", why))?),
            None => None,
        };
        let patch = EndpointPatch {
            url,
            events,
            enabled,
        };
        if patch.is_empty() {
            return Err(field(
                "body",
                "nothing to change: give url, events or enabled",
            ));
        }
        let endpoint = self
            .store()
            .update_endpoint(id, &patch, self.now(), audit)
            .await
            .map_err(Error::store("change the webhook"))?;
        tracing::info!(webhook_id = %endpoint.id, enabled = endpoint.enabled, "changed webhook endpoint");
        Ok(endpoint)
    }

    /// Deletes endpoint `id` with its delivery log; deliveries still pending are dropped (how
    /// many is recorded in its `webhook.deleted` event and returned).
    pub async fn delete_webhook(&self, id: &str, audit: &Audit) -> Result<(Endpoint, u64), Error> {
        let (endpoint, dropped) = self
            .store()
            .delete_endpoint(id, self.now(), audit)
            .await
            .map_err(Error::store("delete the webhook"))?;
        tracing::info!(webhook_id = %endpoint.id, dropped_pending = dropped, "deleted webhook endpoint");
        Ok((endpoint, dropped))
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

    /// Claims delivery `id` for this sender until `until`, right before it is attempted:
    /// `false` if another node claimed it first or it is no longer due (as
    /// [`Keygate::claim_email`]).
    pub async fn claim_delivery(
        &self,
        id: i64,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, Error> {
        self.store()
            .claim_delivery(id, now, until)
            .await
            .map_err(Error::store("claim the delivery"))
    }

    /// Records the outcome of an attempt at delivery `id`.
    pub async fn finish_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), Error> {
        self.store()
            .finish_attempt(id, attempt)
            .await
            .map_err(Error::store("record the delivery attempt"))
    }
}
