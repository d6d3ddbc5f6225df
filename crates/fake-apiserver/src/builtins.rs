//! Admission of built-in kinds: name and label syntax, the defaults clients rely on (Deployment replicas
//! and strategy, Service ClusterIP, ports, targetPort) and the validations that catch real mistakes
//! (Deployment selector must match its template and is immutable, required containers and ports...).
//! This is a subset of the real validation: what is not checked here is listed in the README.

use crate::errors::FieldError;
use crate::selectors::selector_object_matches;
use serde_json::{Value, json};

use regex::Regex;
use std::sync::LazyLock;

// Compiled once: admission runs on every write.
static DNS_LABEL: LazyLock<Regex> = LazyLock::new(|| static_regex(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"));
static DNS_SUBDOMAIN: LazyLock<Regex> =
    LazyLock::new(|| static_regex(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| static_regex(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"));
static LABEL_NAME: LazyLock<Regex> = LazyLock::new(|| static_regex(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"));
static CONFIG_KEY: LazyLock<Regex> = LazyLock::new(|| static_regex(r"^[-._a-zA-Z0-9]+$"));

fn static_regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("static regex")
}

/// Validates `metadata.name` for a kind: DNS-1123 labels for namespaces and services, subdomains otherwise.
pub fn validate_name(kind: &str, name: &str) -> Vec<FieldError> {
    let mut errs = vec![];
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
        return errs;
    }
    if matches!(kind, "Namespace" | "Service") {
        if name.len() > 63 || !DNS_LABEL.is_match(name) {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (at most 63 characters)",
            ));
        }
    } else if name.len() > 253 || !DNS_SUBDOMAIN.is_match(name) {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most 253 characters)",
        ));
    }
    errs
}

/// Validates label keys and values of `metadata.labels` (any kind).
pub fn validate_labels(labels: &Value, field: &str) -> Vec<FieldError> {
    let mut errs = vec![];
    for (k, v) in labels.as_object().into_iter().flatten() {
        let name = k.rsplit_once('/').map(|(_, n)| n).unwrap_or(k);
        let prefix_ok = k.rsplit_once('/').is_none_or(|(p, _)| p.len() <= 253 && DNS_SUBDOMAIN.is_match(p));
        if name.len() > 63 || !LABEL_NAME.is_match(name) || !prefix_ok {
            errs.push(FieldError::invalid(field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)"));
        }
        match v.as_str() {
            Some(s) if s.len() <= 63 && LABEL_VALUE.is_match(s) => {}
            _ => errs.push(FieldError::invalid_detail(
                &format!("{field}.{k}"),
                v.to_string(),
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)",
            )),
        }
    }
    errs
}

/// At most one owner reference may be the controller (as the real server's ValidateOwnerReferences says).
pub fn validate_owner_references(obj: &Value) -> Vec<FieldError> {
    let refs = obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
    let controllers: Vec<String> = refs
        .iter()
        .filter(|r| r["controller"] == json!(true))
        .map(|r| format!("{}/{}", r["kind"].as_str().unwrap_or_default(), r["name"].as_str().unwrap_or_default()))
        .collect();
    if controllers.len() > 1 {
        return vec![FieldError::invalid_detail(
            "metadata.ownerReferences",
            Value::Array(refs).to_string(),
            &format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        )];
    }
    vec![]
}

/// On an update that leaves them unset, a Service keeps its allocated cluster IPs (a real server's Service
/// strategy does the same, so that an apply that does not mention `clusterIP` is not a change of it).
pub fn keep_allocated_values(kind: &str, obj: &mut Value, old: Option<&Value>) {
    let Some(old) = old else { return };
    if kind == "Service" && obj["spec"].is_object() && obj["spec"]["type"] == old["spec"]["type"] {
        for field in ["clusterIP", "clusterIPs"] {
            if obj["spec"].get(field).is_none()
                && let Some(v) = old["spec"].get(field)
            {
                obj["spec"][field] = v.clone();
            }
        }
    }
}

/// Fills the defaults a real API server sets and that clients read back.
pub fn apply_defaults(kind: &str, obj: &mut Value, next_cluster_ip: &mut dyn FnMut() -> String) {
    match kind {
        "Deployment" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                default(spec, "replicas", json!(1));
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
                default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                );
            }
        }
        "ReplicaSet" if obj["spec"].is_object() => {
            default(&mut obj["spec"], "replicas", json!(1));
        }
        "Service" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                default(spec, "type", json!("ClusterIP"));
                default(spec, "sessionAffinity", json!("None"));
                if spec["type"] != "ExternalName" && spec.get("clusterIP").is_none() {
                    let ip = next_cluster_ip();
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                }
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        default(p, "protocol", json!("TCP"));
                        if p.get("targetPort").is_none() {
                            p["targetPort"] = p["port"].clone();
                        }
                    }
                }
            }
        }
        // stringData is write-only: merged into data (base64), as the real API server does
        "Secret" => {
            use base64::Engine;
            default(obj, "type", json!("Opaque"));
            if let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
                for (key, value) in strings {
                    let text = value.as_str().unwrap_or_default();
                    obj["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
        }
        "Pod" => {
            if let Some(cs) = obj.pointer_mut("/spec/containers").and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                        for p in ports {
                            default(p, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn default(obj: &mut Value, key: &str, value: Value) {
    if obj.get(key).is_none() {
        obj[key] = value;
    }
}

fn containers(pod_spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(cs) = pod_spec.get("containers").and_then(Value::as_array).filter(|c| !c.is_empty()) else {
        errs.push(FieldError::required(&format!("{path}.containers")));
        return;
    };
    let mut names = vec![];
    for (i, c) in cs.iter().enumerate() {
        let p = format!("{path}.containers[{i}]");
        match c.get("name").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required(&format!("{p}.name"))),
            Some(n) if names.contains(&n) => errs.push(FieldError::duplicate(&format!("{p}.name"), &format!("{n:?}"))),
            Some(n) => names.push(n),
        }
        if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
            errs.push(FieldError::required(&format!("{p}.image")));
        }
        if let Some(env) = c.get("env").and_then(Value::as_array) {
            for (j, e) in env.iter().enumerate() {
                if e.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    errs.push(FieldError::required(&format!("{p}.env[{j}].name")));
                }
            }
        }
    }
}

/// Validates a built-in object (and, on update, what may not change).
pub fn validate(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = vec![];
    if let Some(labels) = obj.pointer("/metadata/labels") {
        errs.extend(validate_labels(labels, "metadata.labels"));
    }
    match kind {
        "Deployment" | "ReplicaSet" => {
            let spec = &obj["spec"];
            let selector = &spec["selector"];
            let empty = selector.as_object().is_none_or(|s| {
                s.get("matchLabels").and_then(Value::as_object).is_none_or(|m| m.is_empty())
                    && s.get("matchExpressions").and_then(Value::as_array).is_none_or(|m| m.is_empty())
            });
            if empty {
                errs.push(FieldError::required("spec.selector"));
            }
            let labels = obj.pointer("/spec/template/metadata/labels").cloned().unwrap_or(json!({}));
            if !empty && !selector_object_matches(selector, &labels) {
                errs.push(FieldError::invalid_detail(
                    "spec.template.metadata.labels",
                    format!("{labels}"),
                    "`selector` does not match template `labels`",
                ));
            }
            errs.extend(validate_labels(&labels, "spec.template.metadata.labels"));
            if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
                errs.push(FieldError::invalid_detail(
                    "spec.replicas",
                    spec["replicas"].to_string(),
                    "must be greater than or equal to 0",
                ));
            }
            containers(&spec["template"]["spec"], "spec.template.spec", &mut errs);
            if let Some(old) = old
                && kind == "Deployment"
                && old["spec"]["selector"] != obj["spec"]["selector"]
            {
                errs.push(FieldError::invalid_detail(
                    "spec.selector",
                    format!("{}", obj["spec"]["selector"]),
                    "field is immutable",
                ));
            }
        }
        "Pod" => containers(&obj["spec"], "spec", &mut errs),
        "Service" => {
            let spec = &obj["spec"];
            let headless_or_external = spec["type"] == "ExternalName" || spec["clusterIP"] == "None";
            match spec.get("ports").and_then(Value::as_array) {
                Some(ports) if !ports.is_empty() => {
                    for (i, p) in ports.iter().enumerate() {
                        if !p["port"].as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
                            errs.push(FieldError::invalid_detail(
                                &format!("spec.ports[{i}].port"),
                                p["port"].to_string(),
                                "must be between 1 and 65535, inclusive",
                            ));
                        }
                        if ports.len() > 1 && p.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                            errs.push(FieldError::required(&format!("spec.ports[{i}].name")));
                        }
                    }
                }
                _ if headless_or_external => {}
                _ => errs.push(FieldError::required("spec.ports")),
            }
            if let Some(old) = old {
                let (a, b) = (&old["spec"]["clusterIP"], &spec["clusterIP"]);
                if a.is_string() && a != b {
                    errs.push(FieldError::invalid_detail("spec.clusterIP", b.to_string(), "field is immutable"));
                }
            }
        }
        "ConfigMap" | "Secret" => {
            for field in ["data", "binaryData", "stringData"] {
                for k in obj.get(field).and_then(Value::as_object).into_iter().flat_map(|m| m.keys()) {
                    if k.len() > 253 || !CONFIG_KEY.is_match(k) {
                        errs.push(FieldError::invalid(
                            &format!("{field}[{k}]"),
                            k,
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                }
            }
        }
        "EndpointSlice" => {
            match obj["addressType"].as_str() {
                Some("IPv4" | "IPv6" | "FQDN") => {}
                Some(other) => errs.push(FieldError::unsupported(
                    "addressType",
                    &format!("{other:?}"),
                    "\"FQDN\", \"IPv4\", \"IPv6\"",
                )),
                None => errs.push(FieldError::required("addressType")),
            }
            for (i, e) in obj.get("endpoints").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if e.get("addresses").and_then(Value::as_array).is_none_or(|a| a.is_empty()) {
                    errs.push(FieldError::required(&format!("endpoints[{i}].addresses")));
                }
            }
        }
        _ => {}
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_string_data_is_stored_in_data_as_base64() {
        let mut secret = json!({"metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"token": "s3cret"}});
        apply_defaults("Secret", &mut secret, &mut || unreachable!());
        assert_eq!(secret["data"], json!({"a": "eA==", "token": "czNjcmV0"}));
        assert_eq!((secret.get("stringData"), &secret["type"]), (None, &json!("Opaque")));
    }

    #[test]
    fn deployment_selector_must_match_template_and_is_immutable() {
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let errs = validate("Deployment", &d, None);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
        let mut ok = d.clone();
        ok["spec"]["template"]["metadata"]["labels"]["app"] = json!("a");
        assert!(validate("Deployment", &ok, None).is_empty());
        let mut changed = ok.clone();
        changed["spec"]["selector"]["matchLabels"]["x"] = json!("y");
        changed["spec"]["template"]["metadata"]["labels"]["x"] = json!("y");
        assert_eq!(
            validate("Deployment", &changed, Some(&ok))[0].message,
            "Invalid value: {\"matchLabels\":{\"app\":\"a\",\"x\":\"y\"}}: field is immutable"
        );
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(validate_name("ConfigMap", "a.b-c").is_empty());
        assert!(!validate_name("Service", "a.b").is_empty());
        assert!(!validate_name("ConfigMap", "Upper").is_empty());
        assert!(!validate_name("Service", &"a".repeat(64)).is_empty());
    }
}
