//! The webhook sender: takes due deliveries from the durable outbox, POSTs them signed
//! (Standard Webhooks headers), and records each attempt; failures are retried with
//! exponential backoff (1 s, 2 s, 4 s, … up to an hour, 12 attempts). Delivery is at least
//! once: receivers should deduplicate on `webhook-id`.

use std::sync::Arc;
use std::time::Duration;

use keygate::core::Timestamp;
use keygate::core::webhook::{Delivery, is_public, recheck_url, retry_after_ms, sign};
use keygate::{Attempt, Keygate};

/// How long a receiver has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a claimed delivery is this node's (three times the attempt's timeout): other
/// nodes leave it alone meanwhile, and if this node dies it is tried again after that.
const LEASE_MS: i64 = 3 * TIMEOUT.as_millis() as i64;

/// When a claim made at `now` ends.
pub(crate) fn lease_until(now: Timestamp, lease_ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(now.unix_ms().saturating_add(lease_ms)).unwrap_or(now)
}

/// The HTTP client deliveries go through: a timeout per attempt, no redirects followed, and
/// unless `allow_private`, host names resolved to public addresses only (a name that points
/// inside the network keygate runs in is refused at connection time, whatever it pointed at
/// when the endpoint was added).
pub fn client(allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest's TLS runs on rustls with the ring provider (no aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if allow_private {
        builder.build()
    } else {
        builder.dns_resolver(Arc::new(PublicOnly)).build()
    }
}

/// Resolves host names with the system resolver and keeps only public addresses.
#[derive(Debug)]
pub struct PublicOnly;

/// What a refused resolution says (and the delivery log shows).
const ONLY_INTERNAL: &str = "the host name resolves only to loopback or private addresses";

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(ONLY_INTERNAL.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// Attempts every delivery due now (at most `batch`), recording each attempt; returns how
/// many were attempted.
pub async fn deliver_due(
    keygate: &Keygate,
    client: &reqwest::Client,
    batch: u32,
) -> Result<usize, keygate::Error> {
    let due = keygate.due_deliveries(keygate.now(), batch).await?;
    let mut attempted = 0;
    for delivery in due {
        // Claimed right before the attempt, so that with several nodes each delivery goes
        // out once (the others see it claimed and skip it).
        let now = keygate.now();
        if !keygate
            .claim_delivery(delivery.id, now, lease_until(now, LEASE_MS))
            .await?
        {
            continue;
        }
        deliver(keygate, client, delivery).await;
        attempted += 1;
    }
    Ok(attempted)
}

/// Delivers until the process ends: a batch whenever some are due, else a look every 250 ms.
pub async fn run(keygate: Keygate) {
    let client = match client(keygate.allows_private_webhooks()) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are off");
            return;
        }
    };
    loop {
        match deliver_due(&keygate, &client, 50).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(250)).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook outbox; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn deliver(keygate: &Keygate, client: &reqwest::Client, delivery: Delivery) {
    let message_id = format!("msg_{}", delivery.id);
    // A new key from the rotation policy waits sealed; it is opened only to be sent.
    let body = if delivery
        .payload
        .starts_with(keygate::sealing::SEALED_PREFIX)
    {
        match keygate.unseal(&delivery.payload) {
            Some(body) => body,
            None => {
                let why =
                    "cannot unseal: KEYGATE_SECRET_KEY is missing or not the one that sealed it";
                record(keygate, &delivery, None, Some(why.into()), false, false).await;
                return;
            }
        }
    } else {
        delivery.payload.clone()
    };
    // Checked again at each attempt: the rules may have tightened since the endpoint was added.
    if let Err(why) = recheck_url(&delivery.url, keygate.allows_private_webhooks()) {
        record(keygate, &delivery, None, Some(why.into()), false, false).await;
        return;
    }
    if delivery.secret.starts_with(keygate::sealing::SEALED_PREFIX) {
        let why = "cannot unseal the signing secret: KEYGATE_SECRET_KEY is missing or not the one that sealed it";
        record(keygate, &delivery, None, Some(why.into()), false, false).await;
        return;
    }
    let timestamp = keygate.now().unix_ms().div_euclid(1000);
    let Some(signature) = sign(&delivery.secret, &message_id, timestamp, body.as_bytes()) else {
        tracing::error!(
            delivery = delivery.id,
            "the endpoint's secret is malformed; giving up"
        );
        record(
            keygate,
            &delivery,
            None,
            Some("malformed signing secret".into()),
            false,
            true,
        )
        .await;
        return;
    };
    let response = client
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("webhook-id", &message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => {
            record(
                keygate,
                &delivery,
                Some(r.status().as_u16()),
                None,
                true,
                false,
            )
            .await;
        }
        Ok(r) => {
            let status = r.status().as_u16();
            record(
                keygate,
                &delivery,
                Some(status),
                Some(format!("HTTP {status}")),
                false,
                false,
            )
            .await;
        }
        Err(e) => {
            // The error names the URL at most: no secret, no payload.
            let why = if e.is_timeout() {
                "timed out".to_owned()
            } else if caused_by(&e, ONLY_INTERNAL) {
                ONLY_INTERNAL.to_owned()
            } else if e.is_connect() {
                "could not connect".to_owned()
            } else {
                "request failed".to_owned()
            };
            record(keygate, &delivery, None, Some(why), false, false).await;
        }
    }
}

async fn record(
    keygate: &Keygate,
    delivery: &Delivery,
    status: Option<u16>,
    error: Option<String>,
    delivered: bool,
    give_up: bool,
) {
    let now = keygate.now();
    let next_attempt_at = if delivered || give_up {
        None
    } else {
        retry_after_ms(delivery.attempts + 1)
            .and_then(|ms| Timestamp::from_unix_ms(now.unix_ms() + ms))
    };
    let attempt = Attempt {
        at: now,
        delivered,
        status,
        error,
        next_attempt_at,
    };
    if let Err(e) = keygate.finish_attempt(delivery.id, &attempt).await {
        tracing::warn!(error = %e, delivery = delivery.id, "cannot record a webhook attempt");
    } else if !delivered {
        tracing::info!(
            delivery = delivery.id,
            attempts = delivery.attempts + 1,
            retry = next_attempt_at.is_some(),
            "webhook delivery failed"
        );
    }
}

/// Whether `message` is among the causes of `error`.
fn caused_by(error: &reqwest::Error, message: &str) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.to_string() == message {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused_unless_allowed() {
        // Port 9 on loopback: nothing listens, so an attempt that gets that far is refused by
        // the kernel instead.
        let url = "http://localhost:9/hook";
        let strict = client(false).unwrap().post(url).send().await.unwrap_err();
        assert!(caused_by(&strict, ONLY_INTERNAL), "{strict:?}");
        let lenient = client(true).unwrap().post(url).send().await.unwrap_err();
        assert!(!caused_by(&lenient, ONLY_INTERNAL), "{lenient:?}");
        assert!(lenient.is_connect(), "{lenient:?}");
    }
}
