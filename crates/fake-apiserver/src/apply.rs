//! Server-side apply and field ownership (`metadata.managedFields`, FieldsV1).
//!
//! What it models, after structured-merge-diff:
//! - each manager owns a set of field paths (`f:name`, `k:{"name":"x"}` for keyed list items, `v:"x"` for
//!   set items); atomic lists and scalars are leaves;
//! - an apply merges the applied configuration into the live object, removes the fields the manager applied
//!   last time but no longer applies (unless another manager owns them), and records the new set;
//! - an apply that changes a leaf owned by another manager to a different value is a 409 Conflict unless
//!   `force=true`, which moves ownership to the applier;
//! - create, update and patch give the writing manager (operation `Update`) the fields they changed.
//!
//! It does not model: version conversion of field sets, `x-kubernetes-map-type: atomic`, or reordering list
//! items to the applier's order.

use crate::shape::{ListKind, Shape, find_item, item_key};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// Which part of an object a write addresses: the main resource ignores `status` when the kind has a
/// status subresource, and the status subresource only touches `status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part {
    Whole,
    Main,
    Status,
}

impl Part {
    fn includes(self, root_field: &str) -> bool {
        match self {
            Part::Whole => true,
            Part::Main => root_field != "status",
            Part::Status => root_field == "status",
        }
    }
    fn subresource(self) -> Option<&'static str> {
        (self == Part::Status).then_some("status")
    }
}

/// The fields an object sets, as structured-merge-diff counts them.
pub fn fields_of(obj: &Value, shape: Shape, part: Part) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else { return out };
    for (k, v) in m {
        if k == "apiVersion" || k == "kind" || !part.includes(k) {
            continue;
        }
        if k == "metadata" {
            for mk in ["labels", "annotations", "ownerReferences", "finalizers"] {
                if let Some(mv) = v.get(mk) {
                    let mut path = vec!["f:metadata".to_string(), format!("f:{mk}")];
                    collect_field(mv, shape.field("metadata").field(mk), mk, &mut path, &mut out);
                }
            }
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        collect_field(v, shape.field(k), k, &mut path, &mut out);
    }
    out
}

fn collect_field(v: &Value, shape: Shape, name: &str, path: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                collect_field(child, shape.field(k), k, path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match shape.list_kind(name, items) {
            ListKind::Map(keys) => {
                for item in items {
                    path.push(format!("k:{}", item_key(item, &keys)));
                    out.insert(path.clone());
                    if let Some(m) = item.as_object() {
                        for (k, child) in m {
                            path.push(format!("f:{k}"));
                            collect_field(child, shape.items().field(k), k, path, out);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            ListKind::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Atomic => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at a field path, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for tok in path {
        cur = step(cur, tok)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, tok: &str) -> Option<&'a Value> {
    if let Some(f) = tok.strip_prefix("f:") {
        cur.get(f)
    } else if let Some(k) = tok.strip_prefix("k:") {
        let key: Value = serde_json::from_str(k).ok()?;
        let keys: Vec<String> = key.as_object()?.keys().cloned().collect();
        let list = cur.as_array()?;
        find_item(list, &keys, &key).map(|i| &list[i])
    } else if let Some(v) = tok.strip_prefix("v:") {
        let val: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|i| **i == val)
    } else {
        None
    }
}

/// Removes the field at a path (a map key, a keyed list item or a set value). Missing paths are ignored.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else { return };
    let mut cur = obj;
    for tok in parent_path {
        let next = if let Some(f) = tok.strip_prefix("f:") {
            cur.get_mut(f)
        } else if tok.starts_with("k:") || tok.starts_with("v:") {
            let idx = {
                let found = step(cur, tok);
                let list = cur.as_array();
                match (found, list) {
                    (Some(f), Some(l)) => l.iter().position(|i| std::ptr::eq(i, f)),
                    _ => None,
                }
            };
            idx.and_then(move |i| cur.get_mut(i))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else {
        let found = step(cur, last).map(|f| f as *const Value);
        if let (Some(f), Some(list)) = (found, cur.as_array_mut()) {
            list.retain(|i| !std::ptr::eq(i, f));
        }
    }
}

/// Merges an applied configuration into the live object: maps recursively, keyed lists item by item, sets by
/// union, atomic lists and scalars replaced.
fn merge_applied(live: &mut Value, applied: &Value, shape: Shape, name: &str) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    l.remove(k);
                    continue;
                }
                match l.get_mut(k) {
                    Some(lv) => merge_applied(lv, av, shape.field(k), k),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => {
            let mut all = l.clone();
            all.extend(a.iter().cloned());
            match shape.list_kind(name, &all) {
                ListKind::Map(keys) => {
                    for item in a {
                        let key = item_key(item, &keys);
                        match find_item(l, &keys, &key) {
                            Some(i) => merge_applied(&mut l[i], item, shape.items(), name),
                            None => l.push(item.clone()),
                        }
                    }
                }
                ListKind::Set => {
                    for item in a {
                        if !l.contains(item) {
                            l.push(item.clone());
                        }
                    }
                }
                ListKind::Atomic => *l = a.clone(),
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    time: String,
    fields: FieldSet,
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or_default().into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                    subresource: e["subresource"].as_str().map(String::from),
                    time: e["time"].as_str().unwrap_or_default().into(),
                    fields: fields_from_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_to_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if list.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(list);
    }
}

/// FieldsV1 JSON (`{"f:spec":{"f:replicas":{}}}`) to a set of paths.
pub fn fields_from_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        if let Some(m) = v.as_object() {
            for (k, child) in m {
                if k == "." {
                    out.insert(path.clone());
                    continue;
                }
                path.push(k.clone());
                if child.as_object().is_some_and(|c| c.is_empty()) {
                    out.insert(path.clone());
                } else {
                    walk(child, path, out);
                }
                path.pop();
            }
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut vec![], &mut out);
    out
}

/// A set of paths to FieldsV1 JSON; a path that also has children gets a `"."` member.
pub fn fields_to_v1(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: BTreeMap<String, Node>,
    }
    fn to_json(n: &Node) -> Value {
        let mut m = Map::new();
        if n.member && !n.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &n.children {
            m.insert(k.clone(), to_json(c));
        }
        Value::Object(m)
    }
    let mut root = Node::default();
    for path in set {
        let mut n = &mut root;
        for tok in path {
            n = n.children.entry(tok.clone()).or_default();
        }
        n.member = true;
    }
    to_json(&root)
}

/// A field that another manager owns and the apply would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub path: String,
}

/// Leaves of a set: paths that are not a prefix of another path in it.
fn leaves(set: &FieldSet) -> impl Iterator<Item = &Path> {
    set.iter().filter(move |p| {
        set.range::<Path, _>((std::ops::Bound::Excluded(*p), std::ops::Bound::Unbounded))
            .next()
            .is_none_or(|next| !next.starts_with(p))
    })
}

fn display_path(p: &Path) -> String {
    p.iter().map(|t| t.trim_start_matches("f:")).collect::<Vec<_>>().join(".")
}

/// Server-side apply of `applied` by `manager` onto `live` (an empty object when creating).
/// Returns the new object, or the conflicts when not forced.
pub fn apply(
    live: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    shape: Shape,
    part: Part,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let api_version = applied["apiVersion"].as_str().unwrap_or_default().to_string();
    let applied_fields = fields_of(applied, shape, part);
    let mut entries = read_entries(live);
    let me =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource.as_deref() == part.subresource();
    let previous: FieldSet = entries.iter().find(|e| me(e)).map(|e| e.fields.clone()).unwrap_or_default();

    // conflicts: leaves another manager owns whose value the apply changes
    let mut conflicts = vec![];
    let mut taken = FieldSet::new();
    for p in leaves(&applied_fields) {
        if value_at(live, p) == value_at(applied, p) {
            continue;
        }
        for e in entries.iter().filter(|e| !me(e) && e.fields.contains(p)) {
            conflicts.push(Conflict { manager: e.manager.clone(), path: display_path(p) });
            taken.insert(p.clone());
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }

    let mut result = live.clone();
    // fields this manager stops applying go, unless someone else still owns them (or something below them)
    let others: FieldSet = entries.iter().filter(|e| !me(e)).flat_map(|e| e.fields.iter().cloned()).collect();
    for p in previous.difference(&applied_fields) {
        let owned_by_others = others.iter().any(|o| o.starts_with(p));
        if !owned_by_others {
            remove_at(&mut result, p);
        }
    }
    // as a real API server, which owns the maps themselves (`.`), removes a map the manager stopped applying
    // as a whole: the maps its removed fields leave empty go too, unless applied or owned by someone else
    for p in previous.difference(&applied_fields) {
        for len in (1..p.len()).rev() {
            let ancestor = &p[..len];
            let kept = applied_fields.iter().chain(others.iter()).any(|f| f.starts_with(ancestor));
            let empty = value_at(&result, ancestor).and_then(Value::as_object).is_some_and(|m| m.is_empty());
            if kept || !empty {
                break;
            }
            remove_at(&mut result, ancestor);
        }
    }
    let mut body = applied.clone();
    if let Some(m) = body.as_object_mut() {
        m.retain(|k, _| k == "metadata" || (k != "apiVersion" && k != "kind" && part.includes(k)));
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| matches!(k.as_str(), "labels" | "annotations" | "ownerReferences" | "finalizers"));
        }
    }
    merge_applied(&mut result, &body, shape, "");

    for e in entries.iter_mut().filter(|e| !me(e)) {
        let before = e.fields.len();
        e.fields.retain(|p| !taken.contains(p));
        if e.fields.len() != before {
            e.time = now.to_string();
        }
    }
    match entries.iter_mut().find(|e| me(e)) {
        Some(e) => {
            if e.fields != applied_fields || e.api_version != api_version {
                e.fields = applied_fields;
                e.api_version = api_version;
                e.time = now.to_string();
            }
        }
        None => entries.push(Entry {
            manager: manager.into(),
            operation: "Apply".into(),
            api_version,
            subresource: part.subresource().map(String::from),
            time: now.into(),
            fields: applied_fields,
        }),
    }
    write_entries(&mut result, &entries);
    Ok(result)
}

/// Records the fields a non-apply write (create, update, patch) changed as owned by `manager`, and takes
/// them away from every other manager. `new` is modified in place.
pub fn track_update(old: Option<&Value>, new: &mut Value, manager: &str, shape: Shape, part: Part, now: &str) {
    let null = Value::Null;
    let old_obj = old.unwrap_or(&null);
    let new_fields = fields_of(new, shape, part);
    let old_fields = fields_of(old_obj, shape, part);
    let new_leaves: FieldSet = leaves(&new_fields).cloned().collect();
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| match value_at(old_obj, p) {
            None => true,
            Some(v) => new_leaves.contains(*p) && Some(v) != value_at(new, p),
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_fields.difference(&new_fields).cloned().collect();
    // managedFields a request sets replace the stored ones, as on a real server (how clients hand fields
    // from an Update entry to an Apply entry); otherwise `new` carries the stored ones
    let mut entries =
        read_entries(if new.pointer("/metadata/managedFields").is_some() { new } else { old.unwrap_or(new) });
    if changed.is_empty() && removed.is_empty() {
        write_entries(new, &entries);
        return;
    }
    let subresource = part.subresource().map(String::from);
    for e in entries.iter_mut() {
        let before = e.fields.len();
        e.fields.retain(|p| !changed.contains(p) && !removed.iter().any(|r| p.starts_with(r)));
        if e.fields.len() != before {
            e.time = now.to_string();
        }
    }
    let mine = |e: &Entry| e.manager == manager && e.operation == "Update" && e.subresource == subresource;
    match entries.iter_mut().find(|e| mine(e)) {
        Some(e) => {
            e.fields.extend(changed);
            e.time = now.to_string();
        }
        None if !changed.is_empty() => entries.push(Entry {
            manager: manager.into(),
            operation: "Update".into(),
            api_version: new["apiVersion"].as_str().unwrap_or_default().into(),
            subresource,
            time: now.into(),
            fields: changed,
        }),
        None => {}
    }
    write_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "d"}, "data": data})
    }

    #[test]
    fn a_field_the_manager_stops_applying_is_removed() {
        let live = cm(json!({}));
        let first =
            apply(&live, &cm(json!({"a": "1", "b": "2"})), "m", false, Shape::Builtin, Part::Whole, NOW).unwrap();
        let second = apply(&first, &cm(json!({"a": "1"})), "m", false, Shape::Builtin, Part::Whole, NOW).unwrap();
        assert_eq!(second["data"], json!({"a": "1"}));
    }

    #[test]
    fn a_map_the_manager_stops_applying_goes_as_a_whole() {
        let obj = |status: Value| json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "status": status});
        let live = apply(
            &obj(json!({})),
            &obj(json!({"phase": "A", "window": {"counters": {"p": {"n": 1}}, "at": "t"}})),
            "m",
            false,
            Shape::Builtin,
            Part::Whole,
            NOW,
        )
        .unwrap();
        let after = apply(&live, &obj(json!({"phase": "B"})), "m", false, Shape::Builtin, Part::Whole, NOW).unwrap();
        assert_eq!(after["status"], json!({"phase": "B"}));
    }

    #[test]
    fn changing_another_managers_field_conflicts_unless_forced() {
        let live =
            apply(&cm(json!({})), &cm(json!({"a": "1"})), "one", false, Shape::Builtin, Part::Whole, NOW).unwrap();
        let err = apply(&live, &cm(json!({"a": "2"})), "two", false, Shape::Builtin, Part::Whole, NOW).unwrap_err();
        assert_eq!(err, vec![Conflict { manager: "one".into(), path: "data.a".into() }]);
        // same value: shared ownership, no conflict
        assert!(apply(&live, &cm(json!({"a": "1"})), "two", false, Shape::Builtin, Part::Whole, NOW).is_ok());
        let forced = apply(&live, &cm(json!({"a": "2"})), "two", true, Shape::Builtin, Part::Whole, NOW).unwrap();
        assert_eq!(forced["data"]["a"], "2");
        let owners: Vec<String> = read_entries(&forced).into_iter().map(|e| e.manager).collect();
        assert_eq!(owners, ["two"]);
    }

    #[test]
    fn keyed_list_items_are_owned_per_item() {
        let dep = |containers: Value| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": containers}}}});
        let live = apply(
            &dep(json!([])),
            &dep(json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}])),
            "m",
            false,
            Shape::Builtin,
            Part::Whole,
            NOW,
        )
        .unwrap();
        let fields = fields_from_v1(&live["metadata"]["managedFields"][0]["fieldsV1"]);
        assert!(fields.contains(&vec![
            "f:spec".to_string(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"a\"}".into(),
            "f:image".into()
        ]));
        let after =
            apply(&live, &dep(json!([{"name": "b", "image": "b:2"}])), "m", false, Shape::Builtin, Part::Whole, NOW)
                .unwrap();
        assert_eq!(after["spec"]["template"]["spec"]["containers"], json!([{"name": "b", "image": "b:2"}]));
    }

    #[test]
    fn fields_v1_round_trips() {
        let v = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:x": {}}});
        assert_eq!(fields_to_v1(&fields_from_v1(&v)), v);
    }

    #[test]
    fn an_update_takes_ownership_of_what_it_changed() {
        let live =
            apply(&cm(json!({})), &cm(json!({"a": "1", "b": "1"})), "applier", false, Shape::Builtin, Part::Whole, NOW)
                .unwrap();
        let mut edited = live.clone();
        edited["data"]["a"] = json!("2");
        track_update(Some(&live), &mut edited, "editor", Shape::Builtin, Part::Whole, NOW);
        // the applier now conflicts on a, not on b
        let err = apply(&edited, &cm(json!({"a": "3", "b": "3"})), "applier", false, Shape::Builtin, Part::Whole, NOW)
            .unwrap_err();
        assert_eq!(err, vec![Conflict { manager: "editor".into(), path: "data.a".into() }]);
    }
}
