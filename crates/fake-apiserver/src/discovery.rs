//! Discovery documents (`/version`, `/api`, `/apis`, `/apis/{group}`, resource lists per group/version) in
//! the legacy (unaggregated) format, which kubectl and kube-rs fall back to when aggregated discovery is
//! not offered.

use crate::registry::Registry;
use serde_json::{Value, json};

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a (fake-apiserver, a test double)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({
        "name": name,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": gv(&versions[0]),
    })
}

pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> =
        registry.groups().iter().filter(|(g, _)| !g.is_empty()).map(|(g, versions)| group_doc(g, versions)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let groups = registry.groups();
    let versions = groups.get(name)?;
    let mut doc = group_doc(name, versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = vec![];
    for t in registry.all().filter(|t| t.group == group && t.version == version) {
        resources.push(json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": VERBS,
            "shortNames": t.short_names,
            "categories": t.categories,
        }));
        if t.has_status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// `/openapi/v3`: the index of group-version documents.
pub fn openapi_v3_index(registry: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in registry.groups() {
        for v in versions {
            let gv = if group.is_empty() { format!("api/{v}") } else { format!("apis/{group}/{v}") };
            paths.insert(
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", registry_hash(registry))}),
            );
        }
    }
    json!({"paths": paths})
}

fn registry_hash(registry: &Registry) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in registry.all() {
        (&t.group, &t.version, &t.plural).hash(&mut h);
    }
    format!("{:016X}", h.finish())
}

/// `/openapi/v3/apis/{group}/{version}`: the paths of a group-version with their operations, enough for
/// kubectl to see that `fieldValidation` is supported (it then validates on the server). Schemas of custom
/// resources are included; built-in kinds have none here (kubectl falls back to its compiled-in types).
pub fn openapi_v3_group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types: Vec<_> = registry.all().filter(|t| t.group == group && t.version == version).collect();
    if types.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let op = |verb: &str, t: &crate::registry::ResourceType| {
        json!({
            "operationId": format!("{verb}{}", t.kind),
            "parameters": [param("fieldValidation"), param("dryRun"), param("fieldManager")],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
        })
    };
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for t in types {
        let base = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{prefix}/{}", t.plural)
        };
        paths.insert(
            base.clone(),
            json!({"get": op("list", t), "post": op("create", t), "delete": op("deletecollection", t)}),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": op("read", t), "put": op("replace", t), "patch": op("patch", t), "delete": op("delete", t)}),
        );
        if let Some(s) = &t.schema {
            let mut schema = s.openapi.clone();
            schema["x-kubernetes-group-version-kind"] =
                json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
            let reversed: Vec<&str> = t.group.split('.').rev().collect();
            schemas.insert(format!("{}.{}.{}", reversed.join("."), t.version, t.kind), schema);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "fake-apiserver", "version": "v1.33.0-fake"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
