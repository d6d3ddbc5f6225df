//! How lists merge: which lists are maps keyed by fields (containers by name, env by name...), which are
//! sets, which are atomic. Strategic merge patch and server-side apply both ask this module.
//!
//! Custom resources answer from their schema (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`; the
//! default is atomic, as on a real server). Built-in kinds answer from a table of the Kubernetes field names
//! whose Go types carry `patchMergeKey`/`listType=map`; every other built-in list is atomic.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    /// Items are identified by the values of these fields.
    Map(Vec<String>),
    /// Items are scalar values, each present once.
    Set,
    /// The list is replaced as a whole.
    Atomic,
}

/// Where we are in an object, as far as merge semantics go.
#[derive(Debug, Clone, Copy)]
pub enum Shape<'a> {
    /// A built-in kind: list semantics come from the field-name table.
    Builtin,
    /// A custom resource: the schema node at this place (None where the schema says nothing).
    Schema(Option<&'a Value>),
}

impl<'a> Shape<'a> {
    pub fn for_schema(schema: Option<&'a Value>) -> Self {
        match schema {
            Some(s) => Shape::Schema(Some(s)),
            None => Shape::Builtin,
        }
    }

    /// The shape of a field of an object.
    pub fn field(self, name: &str) -> Shape<'a> {
        match self {
            Shape::Builtin => Shape::Builtin,
            Shape::Schema(None) => Shape::Schema(None),
            Shape::Schema(Some(s)) => Shape::Schema(
                s.get("properties")
                    .and_then(|p| p.get(name))
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object())),
            ),
        }
    }

    /// The shape of the items of a list.
    pub fn items(self) -> Shape<'a> {
        match self {
            Shape::Schema(Some(s)) => Shape::Schema(s.get("items")),
            other => other,
        }
    }

    /// How the list stored under `field_name` (whose shape is `self`) merges.
    pub fn list_kind(self, field_name: &str, items: &[Value]) -> ListKind {
        match self {
            Shape::Schema(Some(s)) => match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => ListKind::Map(
                    s.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                        .unwrap_or_default(),
                ),
                Some("set") => ListKind::Set,
                _ if field_name == "finalizers" => ListKind::Set,
                _ if field_name == "ownerReferences" => ListKind::Map(vec!["uid".into()]),
                _ => ListKind::Atomic,
            },
            Shape::Schema(None) => match field_name {
                // metadata of a custom resource still follows ObjectMeta's rules
                "finalizers" => ListKind::Set,
                "ownerReferences" => ListKind::Map(vec!["uid".into()]),
                _ => ListKind::Atomic,
            },
            Shape::Builtin => builtin_list_kind(field_name, items),
        }
    }
}

fn builtin_list_kind(field_name: &str, items: &[Value]) -> ListKind {
    let key = |k: &str| ListKind::Map(vec![k.to_string()]);
    match field_name {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" => key("name"),
        "volumeMounts" => key("mountPath"),
        "ownerReferences" => key("uid"),
        "conditions" => key("type"),
        "finalizers" => ListKind::Set,
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => key("containerPort"),
        "ports" if items.iter().any(|i| i.get("port").is_some() && i.get("targetPort").is_some()) => key("port"),
        _ => ListKind::Atomic,
    }
}

/// The identifying values of a map-list item, as a JSON object (`{"name":"nginx"}`).
pub fn item_key(item: &Value, keys: &[String]) -> Value {
    let mut m = serde_json::Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

/// Finds the index of the item with this key in a map-list.
pub fn find_item(list: &[Value], keys: &[String], key: &Value) -> Option<usize> {
    list.iter().position(|i| item_key(i, keys) == *key)
}
