//! What the OpenAPI document promises beyond types: every limit the server enforces on a
//! request — lengths, patterns, ranges, enumerations, combinations — written into the document
//! from the same constants and rules the server checks with (`keygate::core`), so that a client
//! generated from it never sends what the server refuses. Each entry must find its place in the
//! generated document (a typo is a start-up panic, caught by the tests).

use keygate::core::audit::EventKind;
use keygate::core::record::{MAX_NAME_CHARS, MAX_OWNER_CHARS, MAX_REASON_CHARS};
use keygate::core::scope::{MAX_SCOPE_LEN, MAX_SCOPES};
use keygate::core::{Status, patterns};
use serde_json::{Value, json};

use super::error::MAX_BODY_BYTES;

/// Most scopes a `/v1/verify` request may ask for.
pub const MAX_VERIFY_SCOPES: usize = MAX_SCOPES;

/// Longest webhook URL.
pub const MAX_URL_LEN: usize = keygate::core::webhook::MAX_URL_CHARS;

/// Adds the constraints to the document `doc` (the generated OpenAPI, as JSON).
pub fn constrain(doc: &mut Value) {
    let text = |max: usize| json!({"minLength": 1, "maxLength": max, "pattern": patterns::TEXT});
    let scopes = |most: usize| {
        json!({"maxItems": most, "items": {
            "minLength": 1, "maxLength": MAX_SCOPE_LEN, "pattern": patterns::SCOPE}})
    };
    let lifetime = json!({"pattern": patterns::lifetime()});
    let key_id = json!({"pattern": patterns::KEY_ID});
    let page_size = json!({"minimum": 1, "maximum": keygate::MAX_PAGE_SIZE});

    for component in ["CreateKey", "UpdateKey"] {
        property(doc, component, "name", text(MAX_NAME_CHARS));
        property(doc, component, "owner", text(MAX_OWNER_CHARS));
        property(doc, component, "scopes", scopes(MAX_SCOPES));
        property(doc, component, "max_age", lifetime.clone());
        property(
            doc,
            component,
            "metadata",
            json!({"description": format!(
                "A JSON object of at most {} bytes (compact JSON), nested at most {} levels deep.",
                keygate::core::record::MAX_METADATA_BYTES,
                keygate::core::record::MAX_METADATA_DEPTH
            )}),
        );
    }
    // Usage controls (keygate::core::limits states each rule once; these say the same).
    use keygate::core::limits::{MAX_CREDITS, MAX_IP_ENTRIES, MAX_LIMIT, MAX_LIMITS};
    let address = json!({"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]});
    for component in ["CreateKey", "UpdateKey"] {
        property(
            doc,
            component,
            "rate_limits",
            json!({"maxItems": MAX_LIMITS,
                   "description": "At most 8 limits. A limit without a name is named `per_<window>` ; a name another limit already has gets `_2` (`_3`, ...): the response shows the names kept."}),
        );
        property(
            doc,
            component,
            "allowed_ips",
            json!({"minItems": 1, "maxItems": MAX_IP_ENTRIES, "items": {
                // JSON Schema has no format for a network, nor a way to say "no host bits
                // set": the schema admits addresses, the text adds networks.
                "description": "An IPv4 or IPv6 address, or a network in CIDR form with no host bits set (`203.0.113.0/24`, `2001:db8::/32`; not `203.0.113.7/24`).",
                "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}}),
        );
    }
    merge(
        component(doc, "RateLimitDoc"),
        json!({"additionalProperties": false}),
    );
    property(
        doc,
        "RateLimitDoc",
        "name",
        json!({"pattern": patterns::LIMIT_NAME}),
    );
    property(
        doc,
        "RateLimitDoc",
        "limit",
        json!({"minimum": 1, "maximum": MAX_LIMIT}),
    );
    property(
        doc,
        "RateLimitDoc",
        "window",
        json!({"pattern": patterns::window()}),
    );
    property(
        doc,
        "QuotaInput",
        "remaining",
        json!({"maximum": MAX_CREDITS}),
    );
    merge(
        component(doc, "RefillDoc"),
        json!({"additionalProperties": false,
               // on_day only for monthly refills
               "not": {"required": ["every", "on_day"],
                       "properties": {"every": {"const": "day"}, "on_day": {"type": "integer"}}}}),
    );
    property(
        doc,
        "RefillDoc",
        "amount",
        json!({"minimum": 1, "maximum": MAX_CREDITS}),
    );
    property(doc, "RefillDoc", "every", json!({"enum": ["day", "month"]}));
    property(
        doc,
        "RefillDoc",
        "on_day",
        json!({"minimum": 1, "maximum": 31}),
    );
    property(
        doc,
        "SetOwner",
        "rate_limits",
        json!({"maxItems": MAX_LIMITS}),
    );
    for method in ["get", "put"] {
        parameter(
            doc,
            "/v1/owners/{owner}",
            method,
            "owner",
            text(MAX_OWNER_CHARS),
        );
    }
    property(doc, "VerifyRequest", "ip", address);
    property(
        doc,
        "VerifyRequest",
        "cost",
        json!({"maximum": keygate::MAX_COST}),
    );
    property(doc, "CreateKey", "expires_in", lifetime.clone());
    // One or the other, not both.
    component(doc, "CreateKey")["not"] = json!({"required": ["expires_at", "expires_in"]});
    property(doc, "RevokeKey", "reason", text(MAX_REASON_CHARS));
    property(
        doc,
        "RotateKey",
        "grace_period",
        json!({"pattern": patterns::grace()}),
    );
    property(
        doc,
        "RotateKey",
        "retire_when_switched",
        json!({"pattern": patterns::quiet()}),
    );
    property(doc, "VerifyRequest", "scopes", scopes(MAX_VERIFY_SCOPES));
    let events: Vec<&str> = std::iter::once("*")
        .chain(EventKind::ALL.iter().map(|k| k.as_str()))
        .collect();
    let url = json!({"format": "uri", "maxLength": MAX_URL_LEN,
                     "pattern": r"^https?://[^\s/?#@]+([/?#][^\s]*)?$"});
    property(
        doc,
        "CreateWebhook",
        "events",
        json!({"items": {"enum": events}}),
    );
    property(doc, "CreateWebhook", "url", url.clone());
    property(
        doc,
        "UpdateWebhook",
        "events",
        json!({"minItems": 1, "items": {"enum": events}}),
    );
    property(doc, "UpdateWebhook", "url", url);
    // Something to change.
    component(doc, "UpdateWebhook")["minProperties"] = json!(1);

    let statuses: Vec<&str> = [
        Status::Active,
        Status::Disabled,
        Status::Expired,
        Status::Revoked,
    ]
    .iter()
    .map(|s| s.as_str())
    .chain(["all"])
    .collect();
    parameter(doc, "/v1/keys", "get", "owner", text(MAX_OWNER_CHARS));
    parameter(doc, "/v1/keys", "get", "status", json!({"enum": statuses}));
    parameter(doc, "/v1/keys", "get", "limit", page_size.clone());
    parameter(doc, "/v1/keys", "get", "cursor", key_id.clone());
    parameter(doc, "/v1/audit", "get", "key_id", key_id.clone());
    let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    parameter(doc, "/v1/audit", "get", "type", json!({"enum": kinds}));
    parameter(
        doc,
        "/v1/audit",
        "get",
        "since",
        json!({"format": "date-time"}),
    );
    parameter(doc, "/v1/audit", "get", "limit", page_size.clone());
    parameter(
        doc,
        "/v1/audit",
        "get",
        "cursor",
        json!({"pattern": "^[0-9]{1,18}$"}),
    );
    // The email log.
    parameter(
        doc,
        "/v1/emails",
        "get",
        "status",
        json!({"enum": ["pending", "delivered", "failed"]}),
    );
    parameter(
        doc,
        "/v1/emails",
        "get",
        "recipient",
        text(keygate::core::email::MAX_ADDRESS_CHARS),
    );
    parameter(doc, "/v1/emails", "get", "owner", text(MAX_OWNER_CHARS));
    parameter(doc, "/v1/emails", "get", "limit", page_size.clone());
    parameter(
        doc,
        "/v1/emails",
        "get",
        "cursor",
        json!({"pattern": "^[0-9]{1,18}$"}),
    );
    for (path, methods) in [
        ("/v1/keys/{id}", &["get", "patch"][..]),
        ("/v1/keys/{id}/revoke", &["post"]),
        ("/v1/keys/{id}/rotate", &["post"]),
    ] {
        for method in methods {
            parameter(doc, path, method, "id", key_id.clone());
        }
    }
    // Usage (keygate::core::usage states the bounds once).
    parameter(doc, "/v1/keys/{id}/usage", "get", "id", key_id.clone());
    parameter(
        doc,
        "/v1/owners/{owner}/usage",
        "get",
        "owner",
        text(MAX_OWNER_CHARS),
    );
    property(
        doc,
        "UsageReport",
        "bucket",
        json!({"enum": ["hour", "day"]}),
    );
    for path in ["/v1/keys/{id}/usage", "/v1/owners/{owner}/usage"] {
        parameter(doc, path, "get", "bucket", json!({"enum": ["hour", "day"]}));
        for name in ["since", "until"] {
            parameter(doc, path, "get", name, json!({"format": "date-time"}));
        }
    }
    // Every body is capped: say so where a client generator will read it.
    let limit = format!(" Request bodies are at most {MAX_BODY_BYTES} bytes.");
    if let Some(description) = doc["info"]["description"].as_str() {
        doc["info"]["description"] = Value::String(format!("{description}{limit}"));
    }
}

/// Component `name`'s schema; panics if the document has none.
fn component<'d>(doc: &'d mut Value, name: &str) -> &'d mut Value {
    let found = &mut doc["components"]["schemas"][name];
    assert!(found.is_object(), "no component {name} in the document");
    found
}

/// Merges `extra` into property `name` of component `schema` (into its `items` for the
/// `items` key of an array).
fn property(doc: &mut Value, schema: &str, name: &str, extra: Value) {
    let target = &mut component(doc, schema)["properties"][name];
    assert!(target.is_object(), "no property {schema}.{name}");
    merge(target, extra);
}

/// Merges `extra` into the schema of parameter `name` of `method path`.
fn parameter(doc: &mut Value, path: &str, method: &str, name: &str, extra: Value) {
    let parameters = doc["paths"][path][method]["parameters"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("no parameters for {method} {path}"));
    let found = parameters
        .iter_mut()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no parameter {name} of {method} {path}"));
    merge(&mut found["schema"], extra);
}

fn merge(target: &mut Value, extra: Value) {
    let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) else {
        panic!("a constraint must go into a schema object");
    };
    for (key, value) in extra {
        match (target.get_mut(&key), value) {
            (Some(existing @ Value::Object(_)), value @ Value::Object(_)) => merge(existing, value),
            (_, value) => {
                target.insert(key, value);
            }
        }
    }
}
