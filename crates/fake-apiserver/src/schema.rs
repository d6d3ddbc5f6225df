//! Custom resource admission as a real API server does it, in its order: prune unknown fields, apply schema
//! defaults, validate the structural schema (types, required, enums, bounds, patterns, list-map keys), then
//! evaluate `x-kubernetes-validations` CEL rules (with `oldSelf` on updates) through kube-cel.

use crate::errors::FieldError;
use crate::registry::CrdSchema;
use serde_json::Value;

/// Prunes, defaults and validates a custom resource. Returns the object as it will be stored and the
/// paths of the unknown fields that were pruned (an error under `fieldValidation=Strict`).
pub fn admit(schema: &CrdSchema, object: Value, old: Option<&Value>) -> Result<(Value, Vec<String>), Vec<FieldError>> {
    let mut object = object;
    let mut unknown = vec![];
    prune_root(&schema.openapi, &mut object, &mut unknown);
    let object = default_root(&schema.openapi, object);
    let mut errors = vec![];
    for (k, v) in object.as_object().into_iter().flatten() {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = schema.openapi.get("properties").and_then(|p| p.get(k)) {
            validate(s, v, k, &mut errors);
        }
    }
    if let Some(required) = schema.openapi.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if object.get(r).is_none() {
                errors.push(FieldError::required(r));
            }
        }
    }
    if errors.is_empty() {
        let validator = kube_cel::Validator::new();
        let cel_view = without_metadata_noise(&object);
        let old_view = old.map(without_metadata_noise);
        if let Err(cel_errors) = validator.validate_compiled(&schema.compiled, &cel_view, old_view.as_ref()) {
            for e in cel_errors {
                let field = if e.field_path.is_empty() { "<root>".to_string() } else { e.field_path.clone() };
                errors.push(FieldError::invalid_detail(
                    &field,
                    value_kind(value_at_dotted(&object, &field)),
                    &e.message,
                ));
            }
        }
    }
    if errors.is_empty() { Ok((object, unknown)) } else { Err(errors) }
}

/// CEL rules see metadata as name/generateName only, as on a real server.
fn without_metadata_noise(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.retain(|k, _| k == "name" || k == "generateName");
    }
    v
}

fn value_at_dotted<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        cur = cur.get(name)?;
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn default_root(schema: &Value, object: Value) -> Value {
    let metadata = object.get("metadata").cloned();
    let mut out = kube_cel::apply_defaults(schema, &object);
    if let Some(m) = metadata {
        out["metadata"] = m;
    }
    out
}

fn prune_root(schema: &Value, object: &mut Value, unknown: &mut Vec<String>) {
    let Some(m) = object.as_object_mut() else { return };
    let props = schema.get("properties");
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    m.retain(|k, _| {
        let keep = matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
            || preserve
            || props.is_some_and(|p| p.get(k).is_some());
        if !keep {
            unknown.push(k.clone());
        }
        keep
    });
    for (k, v) in m.iter_mut() {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(k)) {
            prune(s, v, k, unknown);
        }
    }
}

/// Removes fields the schema does not declare (unless it preserves unknown fields there), recording
/// their paths in `unknown`.
pub fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    let embedded = schema.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true);
    match v {
        Value::Object(m) => {
            let props = schema.get("properties");
            let additional = schema.get("additionalProperties");
            let keep_all = preserve || additional.is_some_and(|a| a.is_object() || a.as_bool() == Some(true));
            m.retain(|k, _| {
                let keep = keep_all
                    || props.is_some_and(|p| p.get(k).is_some())
                    || (embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
                if !keep {
                    unknown.push(format!("{path}.{k}"));
                }
                keep
            });
            for (k, child) in m.iter_mut() {
                let child_path = format!("{path}.{k}");
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    prune(s, child, &child_path, unknown);
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    prune(a, child, &child_path, unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(s, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn value_kind(v: Option<&Value>) -> String {
    match v {
        Some(Value::Object(_)) => "\"object\"".into(),
        Some(Value::Array(_)) => "\"array\"".into(),
        Some(other) => other.to_string(),
        None => "null".into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Structural validation of one value against one schema node.
pub fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if v.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            errors.push(FieldError::invalid_detail(
                path,
                "null".into(),
                &format!(
                    "{path} in body must be of type {}: \"null\"",
                    schema.get("type").and_then(Value::as_str).unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    let actual = type_name(v);
    if int_or_string {
        if actual != "integer" && actual != "string" {
            errors.push(FieldError::invalid_detail(
                path,
                value_kind(Some(v)),
                &format!("{path} in body must be of type integer or string: \"{actual}\""),
            ));
            return;
        }
    } else if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            errors.push(FieldError::invalid_detail(
                path,
                value_kind(Some(v)),
                &format!("{path} in body must be of type {expected}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        errors.push(FieldError::unsupported(path, &v.to_string(), &list.join(", ")));
    }
    match v {
        Value::String(s) => validate_string(schema, s, path, errors),
        Value::Number(n) => validate_number(schema, n.as_f64().unwrap_or(0.0), v, path, errors),
        Value::Array(items) => validate_array(schema, items, path, errors),
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, child_schema) in props {
                    if let Some(child) = m.get(k) {
                        validate(child_schema, child, &format!("{path}.{k}"), errors);
                    }
                }
            }
            if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in m {
                    validate(add, child, &format!("{path}.{k}"), errors);
                }
            }
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        errors.push(FieldError::required(&format!("{path}.{r}")));
                    }
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && m.len() as u64 > max
            {
                errors.push(FieldError::too_many(path, m.len(), max));
            }
        }
        _ => {}
    }
}

fn validate_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        errors.push(FieldError::too_long(path, max));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        errors.push(FieldError::invalid_detail(
            path,
            format!("{s:?}"),
            &format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => errors.push(FieldError::invalid_detail(
                path,
                format!("{s:?}"),
                &format!("{path} in body should match '{pattern}'"),
            )),
            Ok(_) => {}
            Err(e) => errors.push(FieldError::invalid_detail(
                path,
                format!("{s:?}"),
                &format!("invalid pattern {pattern:?}: {e}"),
            )),
        }
    }
}

fn validate_number(schema: &Value, n: f64, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
    let exclusive = |k: &str| schema.get(k).and_then(Value::as_bool) == Some(true);
    if let Some(min) = bound("minimum")
        && (n < min || (exclusive("exclusiveMinimum") && n == min))
    {
        errors.push(FieldError::invalid_detail(
            path,
            v.to_string(),
            &format!("{path} in body should be greater than or equal to {min}"),
        ));
    }
    if let Some(max) = bound("maximum")
        && (n > max || (exclusive("exclusiveMaximum") && n == max))
    {
        errors.push(FieldError::invalid_detail(
            path,
            v.to_string(),
            &format!("{path} in body should be less than or equal to {max}"),
        ));
    }
    if let Some(m) = bound("multipleOf")
        && m != 0.0
        && (n / m).fract() != 0.0
    {
        errors.push(FieldError::invalid_detail(
            path,
            v.to_string(),
            &format!("{path} in body should be a multiple of {m}"),
        ));
    }
}

fn validate_array(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && items.len() as u64 > max
    {
        errors.push(FieldError::too_many(path, items.len(), max));
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && (items.len() as u64) < min
    {
        errors.push(FieldError::invalid_detail(
            path,
            items.len().to_string(),
            &format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate(item_schema, item, &format!("{path}[{i}]"), errors);
        }
    }
    let unique = schema.get("uniqueItems").and_then(Value::as_bool) == Some(true);
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => {
            let keys: Vec<String> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let mut seen = vec![];
            for (i, item) in items.iter().enumerate() {
                let key = crate::shape::item_key(item, &keys);
                if seen.contains(&key) {
                    errors.push(FieldError::duplicate(&format!("{path}[{i}]"), &key.to_string()));
                }
                seen.push(key);
            }
        }
        Some("set") => duplicates(items, path, errors),
        _ if unique => duplicates(items, path, errors),
        _ => {}
    }
}

fn duplicates(items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    for (i, item) in items.iter().enumerate() {
        if items[..i].contains(item) {
            errors.push(FieldError::duplicate(&format!("{path}[{i}]"), &item.to_string()));
        }
    }
}

/// kube-cel (on cel 0.13) has no `type()`. Rules compare `type(x)` with `string` or `int` (the idiom of
/// Kubernetes' docs for int-or-string fields); they are rewritten for evaluation only (the stored CRD is
/// unchanged) into expressions of the same value for scalars: `string(x) == x` holds for strings only, and
/// an integer is what is not a string and prints as digits.
pub fn emulate_type_function(schema: &mut Value) {
    static TYPE_TEST: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"type\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\)\s*(==|!=)\s*(string|int)\b").expect("static regex")
    });
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                for rule in rules.iter_mut().filter_map(|r| r.get_mut("rule")) {
                    if let Some(text) = rule.as_str() {
                        let rewritten = TYPE_TEST.replace_all(text, |c: &regex::Captures| {
                            let (x, negated) = (&c[1], &c[2] == "!=");
                            let test = match &c[3] {
                                "string" => format!("(string({x}) == {x})"),
                                _ => format!("(string({x}) != {x} && string({x}).matches('^-?[0-9]+$'))"),
                            };
                            if negated { format!("!{test}") } else { test }
                        });
                        *rule = Value::String(rewritten.into_owned());
                    }
                }
            }
            map.values_mut().for_each(emulate_type_function);
        }
        Value::Array(items) => items.iter_mut().for_each(emulate_type_function),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd_schema(openapi: Value) -> CrdSchema {
        CrdSchema::compile(openapi)
    }

    fn schema() -> CrdSchema {
        crd_schema(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["target"],
                    "x-kubernetes-validations": [{"rule": "self.weight <= 100", "message": "weight must be at most 100"}],
                    "properties": {
                        "target": {"type": "string", "minLength": 1},
                        "weight": {"type": "integer", "default": 100},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                                  "items": {"type": "object", "properties": {"name": {"type": "string"}}}}
                    }
                }
            }
        }))
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"}, "spec": spec})
    }

    #[test]
    fn prunes_unknown_fields_and_applies_defaults() {
        let (out, unknown) = admit(&schema(), obj(json!({"target": "t", "extra": 1})), None).unwrap();
        assert_eq!(out["spec"], json!({"target": "t", "weight": 100}));
        assert_eq!(unknown, ["spec.extra"]);
        assert_eq!(out["metadata"]["name"], "n");
    }

    #[test]
    fn reports_each_structural_error_with_its_field_path() {
        let errs =
            admit(&schema(), obj(json!({"weight": "x", "mode": "c", "items": [{"name": "a"}, {"name": "a"}]})), None)
                .unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|t| t == "spec.target: Required value"), "{text:?}");
        assert!(
            text.iter().any(|t| t.starts_with("spec.weight: Invalid value") && t.contains("must be of type integer")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.starts_with("spec.mode: Unsupported value: \"c\"")), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with("spec.items[1]: Duplicate value")), "{text:?}");
    }

    #[test]
    fn cel_rules_report_their_message() {
        let errs = admit(&schema(), obj(json!({"target": "t", "weight": 150})), None).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("weight must be at most 100"), "{}", errs[0]);
    }

    /// `type(x) == int` / `== string` (emulated) on an int-or-string field, as Kubernetes' docs write it.
    #[test]
    fn cel_type_tests_on_int_or_string_fields() {
        let port = crd_schema(json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-validations": [{"rule": "type(self) == int ? self >= 1 && self <= 65535 : type(self) != int && self.size() <= 3",
                    "message": "a port number or a short name"}]}}}}}));
        for ok in [json!(80), json!(65535), json!("web")] {
            assert!(admit(&port, obj(json!({"port": ok})), None).is_ok(), "{ok} is valid");
        }
        for bad in [json!(0), json!(70000), json!("toolong"), json!("80000")] {
            let errs = admit(&port, obj(json!({"port": bad})), None).unwrap_err();
            assert!(errs[0].to_string().contains("a port number or a short name"), "{bad}: {}", errs[0]);
        }
    }
}
