//! `Table` responses (what `kubectl get` asks for): CRD `additionalPrinterColumns` evaluated with the
//! JSONPath subset CRDs use (`.a.b`, `[0]`, `[*]`, `[?(@.type=="Ready")]`), a few columns for common
//! built-in kinds, and ages formatted as the real server does ("5s", "3m12s", "2d").

use crate::registry::ResourceType;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Evaluates a CRD printer-column JSONPath; returns every match.
pub fn json_path<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current = vec![v];
    let mut rest = path;
    while !rest.is_empty() {
        let mut next = vec![];
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            rest = &r[end..];
            if field.is_empty() {
                continue;
            }
            next.extend(current.iter().filter_map(|c| c.get(field)));
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { return vec![] };
            let inner = &r[..end];
            rest = &r[end + 1..];
            for c in &current {
                let Some(items) = c.as_array() else { continue };
                if inner == "*" {
                    next.extend(items.iter());
                } else if let Ok(i) = inner.parse::<i64>() {
                    let idx = if i < 0 { items.len() as i64 + i } else { i };
                    next.extend(usize::try_from(idx).ok().and_then(|i| items.get(i)));
                } else if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                    let Some((field, value)) = filter.split_once("==") else { continue };
                    let value = value.trim().trim_matches(['"', '\'']);
                    next.extend(items.iter().filter(|i| {
                        json_path(i, &format!(".{}", field.trim())).first().is_some_and(|f| match f {
                            Value::String(s) => s == value,
                            other => *other == value,
                        })
                    }));
                }
            }
        } else {
            return vec![];
        }
        current = next;
    }
    current
}

/// How `kubectl get` shows an age.
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", secs % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(ts: Option<&Value>, now: DateTime<Utc>) -> Value {
    match ts.and_then(Value::as_str).and_then(|s| DateTime::parse_from_rfc3339(s).ok()) {
        Some(t) => json!(human_duration((now - t.with_timezone(&Utc)).num_seconds())),
        None => json!("<unknown>"),
    }
}

struct Column {
    name: String,
    type_: String,
    format: String,
    description: String,
    priority: i64,
    cell: Box<dyn Fn(&Value) -> Value>,
}

fn col(name: &str, cell: impl Fn(&Value) -> Value + 'static) -> Column {
    Column {
        name: name.into(),
        type_: "string".into(),
        format: String::new(),
        description: String::new(),
        priority: 0,
        cell: Box::new(cell),
    }
}

fn columns(rt: &ResourceType, now: DateTime<Utc>) -> Vec<Column> {
    let mut cols = vec![Column {
        format: "name".into(),
        description: "Name must be unique within a namespace.".into(),
        ..col("Name", |o| o["metadata"]["name"].clone())
    }];
    let age_col = move || col("Age", move |o| age(o.pointer("/metadata/creationTimestamp"), now));
    if !rt.printer_columns.is_empty() {
        for pc in &rt.printer_columns {
            let (path, type_) = (pc.json_path.clone(), pc.type_.clone());
            let is_date = type_ == "date";
            cols.push(Column {
                name: pc.name.clone(),
                type_: pc.type_.clone(),
                format: pc.format.clone(),
                description: pc.description.clone(),
                priority: pc.priority,
                cell: Box::new(move |o| {
                    let found = json_path(o, &path);
                    if is_date {
                        return found.first().map(|v| age(Some(v), now)).unwrap_or(Value::Null);
                    }
                    match found.as_slice() {
                        [] => Value::Null,
                        [one] if type_ != "string" => (*one).clone(),
                        many => json!(
                            many.iter()
                                .map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    }
                }),
            });
        }
        return cols;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => {
            cols.push(col("Ready", |o| {
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(0)
                ))
            }));
            cols.push(col("Up-to-date", |o| json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0))));
            cols.push(col("Available", |o| json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0))));
        }
        ("", "Service") => {
            cols.push(col("Type", |o| o["spec"]["type"].clone()));
            cols.push(col("Cluster-IP", |o| o["spec"]["clusterIP"].clone()));
            cols.push(col("Port(s)", |o| {
                let ports: Vec<String> = o["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                    .collect();
                json!(ports.join(","))
            }));
        }
        ("", "ConfigMap") => cols.push(col("Data", |o| json!(o["data"].as_object().map(|m| m.len()).unwrap_or(0)))),
        ("", "Namespace") => cols.push(col("Status", |o| o["status"]["phase"].clone())),
        _ => {}
    }
    cols.push(age_col());
    cols
}

/// Builds a `meta.k8s.io/v1` Table for these objects.
pub fn table(rt: &ResourceType, objects: &[Value], resource_version: &str, continue_token: Option<&str>) -> Value {
    let cols = columns(rt, Utc::now());
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut metadata = o["metadata"].clone();
            if let Some(m) = metadata.as_object_mut() {
                m.remove("managedFields");
            }
            json!({
                "cells": cols.iter().map(|c| (c.cell)(o)).collect::<Vec<_>>(),
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata},
            })
        })
        .collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": cols.iter().map(|c| json!({
            "name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority,
        })).collect::<Vec<_>>(),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_subset() {
        let v = json!({"spec": {"routes": [{"w": 80, "n": "a"}, {"w": 20, "n": "b"}]},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(json_path(&v, ".spec.routes[*].w"), vec![&json!(80), &json!(20)]);
        assert_eq!(json_path(&v, ".spec.routes[1].n"), vec![&json!("b")]);
        assert_eq!(json_path(&v, ".status.conditions[?(@.type==\"Ready\")].status"), vec![&json!("True")]);
        assert!(json_path(&v, ".spec.missing").is_empty());
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(3600 * 50), "2d2h");
    }
}
