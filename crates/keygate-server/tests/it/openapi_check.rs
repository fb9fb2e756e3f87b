//! Checks the served OpenAPI document against itself (references resolve, operations are
//! complete) and real responses against it (status documented, body matches the schema,
//! no undocumented fields).

use std::collections::BTreeSet;

use serde_json::Value;

pub struct Contract {
    doc: Value,
}

impl Contract {
    pub fn new(doc: Value) -> Self {
        Contract { doc }
    }

    /// Every (path, method) the document lists.
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    ops.push((path.clone(), method.clone()));
                }
            }
        }
        ops
    }

    /// The document's own consistency.
    pub fn check_document(&self) {
        assert!(self.doc["info"]["title"].is_string() && self.doc["info"]["version"].is_string());
        let schemes = self.doc["components"]["securitySchemes"]
            .as_object()
            .expect("security schemes");
        let mut ids = BTreeSet::new();
        let ops = self.operations();
        assert!(ops.len() >= 9, "{ops:?}");
        for (path, method) in &ops {
            let op = &self.doc["paths"][path][method];
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            assert!(!op["responses"].as_object().expect("responses").is_empty());
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "unknown security scheme {name}");
                }
            }
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" {
                    let name = param["name"].as_str().unwrap();
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{path} lacks {{{name}}}"
                    );
                    assert_eq!(param["required"], true);
                }
            }
        }
        self.check_refs(&self.doc);
    }

    fn check_refs(&self, value: &Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    self.resolve(r);
                }
                map.values().for_each(|v| self.check_refs(v));
            }
            Value::Array(items) => items.iter().for_each(|v| self.check_refs(v)),
            _ => {}
        }
    }

    fn resolve(&self, reference: &str) -> &Value {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {reference}"));
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling ref {reference}"))
    }

    /// A real response against the document.
    pub fn check_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let response = op["responses"]
            .get(status.to_string())
            .or_else(|| op["responses"].get("default"))
            .unwrap_or_else(|| panic!("{method} {path}: status {status} is not documented"));
        let response = match response.get("$ref").and_then(Value::as_str) {
            Some(r) => self.resolve(r),
            None => response,
        };
        let content_type = content_type.unwrap_or_default();
        let mime = content_type.split(';').next().unwrap().trim();
        let content = &response["content"];
        let media = content.get(mime).unwrap_or_else(|| {
            panic!("{method} {path} {status}: {mime} not documented in {content}")
        });
        if mime.ends_with("json") {
            let value: Value = serde_json::from_slice(body).expect("a JSON body");
            if let Err(e) = self.validate(&media["schema"], &value, "$") {
                panic!("{method} {path} {status}: {e}\nbody: {value}");
            }
        }
    }

    /// Whether a JSON body would pass as the documented `status` answer of an operation.
    pub fn accepts(
        &self,
        method: &str,
        path: &str,
        status: u16,
        value: &Value,
    ) -> Result<(), String> {
        let response = &self.doc["paths"][path][method]["responses"][status.to_string()];
        let schema = &response["content"]["application/json"]["schema"];
        self.validate(schema, value, "$")
    }

    /// Whether `value` matches `schema` (the subset of JSON Schema utoipa emits).
    fn validate(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            return self.validate(self.resolve(r), value, at);
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for part in all {
                self.validate_loose(part, value, at)?;
            }
            return self.no_extra_fields(schema, value, at);
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                return if options.iter().any(|o| self.validate(o, value, at).is_ok()) {
                    Ok(())
                } else {
                    Err(format!("{at}: matches none of {key}"))
                };
            }
        }
        self.validate_loose(schema, value, at)?;
        self.no_extra_fields(schema, value, at)
    }

    /// `validate` without the check for undocumented fields (for parts of an allOf).
    fn validate_loose(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            return self.validate_loose(self.resolve(r), value, at);
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for part in all {
                self.validate_loose(part, value, at)?;
            }
            return Ok(());
        }
        if schema.get("oneOf").is_some() || schema.get("anyOf").is_some() {
            return self.validate(schema, value, at);
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let actual = match value {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            let ok = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
            if !ok {
                return Err(format!("{at}: is {actual}, documented as {types:?}"));
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time")
            && let Some(text) = value.as_str()
            && !(text.len() >= 20 && text.as_bytes()[10] == b'T' && text.ends_with('Z'))
        {
            return Err(format!("{at}: {text} is not an RFC 3339 UTC date-time"));
        }
        if let Value::Object(map) = value {
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = required.as_str().unwrap();
                if !map.contains_key(name) {
                    return Err(format!("{at}: required field {name} is missing"));
                }
            }
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    if let Some(v) = map.get(name) {
                        self.validate(sub, v, &format!("{at}.{name}"))?;
                    }
                }
            }
        }
        if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.validate(item_schema, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// Fields in `value` that the schema does not document are an error, unless the schema
    /// is a free-form object.
    fn no_extra_fields(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let Value::Object(map) = value else {
            return Ok(());
        };
        let mut known = BTreeSet::new();
        if !self.collect_properties(schema, &mut known) {
            return Ok(());
        }
        for name in map.keys() {
            if !known.contains(name) {
                return Err(format!("{at}: field {name} is not documented"));
            }
        }
        Ok(())
    }

    /// Gathers documented property names; `false` when the schema is free-form.
    fn collect_properties(&self, schema: &Value, into: &mut BTreeSet<String>) -> bool {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            return self.collect_properties(self.resolve(r), into);
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            return all.iter().all(|p| self.collect_properties(p, into));
        }
        match schema.get("properties").and_then(Value::as_object) {
            Some(props) => {
                into.extend(props.keys().cloned());
                true
            }
            None => false,
        }
    }
}
