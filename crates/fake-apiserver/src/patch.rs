//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch (lists of
//! containers, env, ports, volumes... merged by key, with the `$patch`, `$retainKeys`,
//! `$deleteFromPrimitiveList` and `$setElementOrder` directives kubectl sends).

use crate::shape::{ListKind, Shape, find_item, item_key};
use serde_json::{Map, Value};

pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| e.to_string())?;
    json_patch::patch(target, &ops).map_err(|e| e.to_string())
}

/// Applies a strategic merge patch to `target`, a whole object.
pub fn strategic_merge(target: &mut Value, patch: &Value, shape: Shape) {
    merge_value(target, patch, shape);
}

fn merge_value(target: &mut Value, patch: &Value, shape: Shape) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => merge_map(t, p, shape),
        _ => *target = strip_directives(patch),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>, shape: Shape) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(&Value::Object(patch.clone())).as_object().cloned().unwrap_or_default();
        return;
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (target.get_mut(field).and_then(Value::as_array_mut), v.as_array()) {
                list.retain(|i| !del.contains(i));
            }
            continue;
        }
        if k.starts_with('$') {
            continue; // $setElementOrder/..., $patch, $retainKeys: handled above or order-only
        }
        let field_shape = shape.field(k);
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(po) if po.get("$patch").and_then(Value::as_str) == Some("delete") => {
                target.remove(k);
            }
            Value::Object(_) => {
                let t = target.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !t.is_object() {
                    *t = Value::Object(Map::new());
                }
                merge_value(t, v, field_shape);
            }
            Value::Array(items) => {
                let existing = target.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                let merged = merge_list(existing, items, k, field_shape);
                target.insert(k.clone(), Value::Array(merged));
            }
            scalar => {
                target.insert(k.clone(), scalar.clone());
            }
        }
    }
}

fn merge_list(mut target: Vec<Value>, patch: &[Value], field_name: &str, shape: Shape) -> Vec<Value> {
    if patch.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return patch.iter().filter(|i| i.get("$patch").is_none()).map(strip_directives).collect();
    }
    let mut all = target.clone();
    all.extend(patch.iter().cloned());
    match shape.list_kind(field_name, &all) {
        ListKind::Map(keys) => {
            for item in patch {
                let key = item_key(item, &keys);
                let pos = find_item(&target, &keys, &key);
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        target.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_value(&mut target[i], item, shape.items()),
                    (None, false) => target.push(strip_directives(item)),
                }
            }
            target
        }
        ListKind::Set => {
            for item in patch {
                if !target.contains(item) {
                    target.push(item.clone());
                }
            }
            target
        }
        ListKind::Atomic => patch.iter().map(strip_directives).collect(),
    }
}

/// Removes `$...` directive keys everywhere in a value.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}}}});
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "env": [{"name": "Y", "value": "2"}]},
            {"name": "b", "image": "b:2"}
        ]}}}});
        strategic_merge(&mut d, &p, Shape::Builtin);
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "a:1");
        assert_eq!(c[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(c[1]["image"], "b:2");
    }

    #[test]
    fn directives_delete_and_replace() {
        let mut d = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "args": ["x"]}});
        strategic_merge(
            &mut d,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}], "args": ["y"]}}),
            Shape::Builtin,
        );
        assert_eq!(d, json!({"spec": {"containers": [{"name": "b"}], "args": ["y"]}}));
        strategic_merge(&mut d, &json!({"spec": {"$patch": "replace", "x": 1}}), Shape::Builtin);
        assert_eq!(d, json!({"spec": {"x": 1}}));
    }
}
