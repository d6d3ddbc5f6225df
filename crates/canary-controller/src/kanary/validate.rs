//! The validate step of the Kanary controller: checks the spec (any spelling, either group) as the CRD's CEL
//! rules do, so that a Kanary admitted by an API server without them (or an older CRD) is still judged;
//! checks that the objects the proxy needs are free or this Kanary's; resolves every route to its live
//! servers. Returns a [`Valid`] Kanary, all the builders need, or the [`Problem`]. Pure.

use super::endpoints::{Resolution, resolve, speaks_h2c};
use super::observe::Observed;
use crate::api::kanary::{Kanary, KanarySpec, MAX_MAXCONN, MAX_NAME_LENGTH, MAX_ROUTES, ProxySpec, duration_ms};
use crate::dataplane::haproxy::RouteBackend;
use crate::names::kanary::reasons;
use crate::names::{config_name, proxy_name};
use crate::runtime::children::owned_by;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::Value;

/// A Kanary that can be served, with everything the builders need.
#[derive(Debug)]
pub struct Valid<'a> {
    pub spec: &'a KanarySpec,
    /// The owner reference of every object the Kanary owns.
    pub owner: OwnerReference,
    /// Every route with its live servers.
    pub routes: Vec<RouteBackend>,
    /// Routes with a weight and no live server, with why (they get no traffic).
    pub degraded: Degraded,
}

/// Checks `kanary` against what the cluster holds (`observed`).
pub fn validate_kanary<'a>(
    kanary: &'a Kanary,
    owner: OwnerReference,
    observed: &Observed,
) -> Result<Valid<'a>, Problem> {
    let name = kanary.name_any();
    let spec = kanary.spec.as_ref().map_err(|e| Problem::InvalidSpec(e.clone()))?;
    validate(&name, spec)?;
    let uid = owner.uid.as_str();
    if observed.config_map.as_deref().is_some_and(|c| !owned_by(c, uid)) {
        return Err(Problem::ObjectNotOwned { kind: "ConfigMap", name: config_name(&name) });
    }
    if observed.proxy.as_deref().is_some_and(|d| !owned_by(d, uid)) {
        return Err(Problem::ObjectNotOwned { kind: "Deployment", name: proxy_name(&name) });
    }
    let proxy = proxy_name(&name);
    if observed.service_account.as_deref().is_some_and(|a| !owned_by(a, uid)) {
        return Err(Problem::ObjectNotOwned { kind: "ServiceAccount", name: proxy });
    }
    if observed.role.as_deref().is_some_and(|r| !owned_by(r, uid)) {
        return Err(Problem::ObjectNotOwned { kind: "Role", name: proxy });
    }
    if observed.role_binding.as_deref().is_some_and(|b| !owned_by(b, uid)) {
        return Err(Problem::ObjectNotOwned { kind: "RoleBinding", name: proxy });
    }
    if observed.destination.as_deref().is_some_and(|s| !owned_by(s, uid)) {
        return Err(Problem::ObjectNotOwned { kind: "Service", name: spec.destination.clone() });
    }
    let (routes, degraded) = resolve_routes(spec, observed)?;
    Ok(Valid { spec, owner, routes, degraded })
}

/// Why a route with a weight has no live server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degradation {
    ServiceNotFound,
    NoReadyEndpoint,
}

impl Degradation {
    /// The BackendsReady condition's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Degradation::ServiceNotFound => reasons::SERVICE_NOT_FOUND,
            Degradation::NoReadyEndpoint => reasons::NO_READY_ENDPOINTS,
        }
    }
}

impl std::fmt::Display for Degradation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Degradation::ServiceNotFound => "Service not found",
            Degradation::NoReadyEndpoint => "no ready endpoint",
        })
    }
}

/// Routes with a weight and no live server, with why.
pub type Degraded = Vec<(String, Degradation)>;

/// Resolves every route to its live servers; routes with a weight and no live server are listed as degraded.
fn resolve_routes(spec: &KanarySpec, observed: &Observed) -> Result<(Vec<RouteBackend>, Degraded), Problem> {
    let mut routes = vec![];
    let mut degraded = vec![];
    for (route, backend) in spec.routes.iter().zip(&observed.backends) {
        let svc_name = &route.backend.service_name;
        let service = backend.service.as_deref().map(|s| s.to_service());
        let servers = match resolve(&route.backend.service_port, service.as_ref(), &backend.slices) {
            Resolution::Servers(s) => s,
            Resolution::ServiceNotFound => {
                if route.weight > 0 {
                    degraded.push((svc_name.clone(), Degradation::ServiceNotFound));
                }
                vec![]
            }
            Resolution::PortNotFound { available } => {
                let port = match &route.backend.service_port {
                    IntOrString::Int(n) => n.to_string(),
                    IntOrString::String(s) => format!("{s:?}"),
                };
                return Err(Problem::PortNotFound { service: svc_name.clone(), port, available });
            }
        };
        if servers.is_empty() && route.weight > 0 && !degraded.iter().any(|(s, _)| s == svc_name) {
            degraded.push((svc_name.clone(), Degradation::NoReadyEndpoint));
        }
        let h2c = speaks_h2c(&route.backend.service_port, service.as_ref());
        let header_value = route.header_value.clone();
        routes.push(RouteBackend { service: svc_name.clone(), weight: route.weight, servers, h2c, header_value });
    }
    Ok((routes, degraded))
}

/// What keeps a Kanary from being (re)configured; the reason names the condition and the Warning event.
/// While one holds, the proxy keeps its last good configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    InvalidSpec(String),
    PortNotFound { service: String, port: String, available: Vec<String> },
    ObjectNotOwned { kind: &'static str, name: String },
}

impl Problem {
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::InvalidSpec(_) => reasons::INVALID_SPEC,
            Problem::PortNotFound { .. } => reasons::PORT_NOT_FOUND,
            Problem::ObjectNotOwned { .. } => reasons::OBJECT_NOT_OWNED,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Problem::InvalidSpec(m) => format!("{m}; the proxy keeps its last good configuration"),
            Problem::PortNotFound { service, port, available } => format!(
                "spec.routes: Service {service:?} has no port {port} (its ports: {}): fix servicePort; the proxy keeps its last good configuration",
                if available.is_empty() { "none".to_string() } else { available.join(", ") }
            ),
            Problem::ObjectNotOwned { kind, name } => format!(
                "{kind} {name:?} already exists and is not managed by this Kanary: it is left untouched; delete or rename it, or choose another name"
            ),
        }
    }
}

/// A Service name (DNS-1035 label).
fn is_dns_label(s: &str) -> bool {
    static SERVICE_NAME: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^[a-z]([-a-z0-9]*[a-z0-9])?$").expect("static regex"));
    s.len() <= 63 && SERVICE_NAME.is_match(s)
}

/// A Service port name (DNS-1123 label).
fn is_port_name(s: &str) -> bool {
    static PORT_NAME: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("static regex"));
    s.len() <= 63 && PORT_NAME.is_match(s)
}

/// Reads the spec of a Kanary object (either group) and validates it.
pub fn parse_and_validate(name: &str, data: &Value) -> Result<KanarySpec, Problem> {
    let raw = data.get("spec").cloned().unwrap_or(Value::Null);
    let spec: KanarySpec = serde_json::from_value(raw).map_err(|e| Problem::InvalidSpec(format!("spec: {e}")))?;
    validate(name, &spec)?;
    Ok(spec)
}

pub fn validate(name: &str, spec: &KanarySpec) -> Result<(), Problem> {
    let invalid = |m: String| Err(Problem::InvalidSpec(m));
    if name.len() > MAX_NAME_LENGTH {
        return invalid(format!(
            "metadata.name: at most {MAX_NAME_LENGTH} characters (the proxy is named <name>-haproxy)"
        ));
    }
    if !is_dns_label(&spec.destination) {
        return invalid(format!(
            "spec.destination: {:?} is not a valid Service name (lower case letters, digits and '-', starting with a letter, at most 63 characters)",
            spec.destination
        ));
    }
    if spec.routes.is_empty() || spec.routes.len() > MAX_ROUTES {
        return invalid(format!("spec.routes: between 1 and {MAX_ROUTES} routes, found {}", spec.routes.len()));
    }
    for (i, r) in spec.routes.iter().enumerate() {
        let svc = &r.backend.service_name;
        if !is_dns_label(svc) {
            return invalid(format!("spec.routes[{i}].backend.serviceName: {svc:?} is not a valid Service name"));
        }
        if !(0..=100).contains(&r.weight) {
            return invalid(format!("spec.routes[{i}].weight: {} is not between 0 and 100", r.weight));
        }
        match &r.backend.service_port {
            IntOrString::Int(p) if !(1..=65535).contains(p) => {
                return invalid(format!("spec.routes[{i}].backend.servicePort: {p} is not a port number (1 to 65535)"));
            }
            // a Service port name is a DNS label (up to 63 characters; 15 is the limit of container ports)
            IntOrString::String(s) if !is_port_name(s) => {
                return invalid(format!(
                    "spec.routes[{i}].backend.servicePort: {s:?} is not a Service port name (a DNS label: lower case letters, digits and '-', at most 63 characters) nor a number"
                ));
            }
            _ => {}
        }
        if spec.routes[..i].iter().any(|o| o.backend.service_name == *svc) {
            return invalid(format!("spec.routes[{i}].backend.serviceName: {svc:?} appears more than once"));
        }
        if *svc == spec.destination {
            return invalid(format!(
                "spec.destination: {svc:?} is also a backend; the destination is the Service in front of the proxy"
            ));
        }
    }
    let sum: i64 = spec.routes.iter().map(|r| r.weight).sum();
    if sum != 100 {
        return invalid(format!("spec.routes: the weights add up to {sum}, they must add up to 100"));
    }
    if let Some(proxy) = &spec.proxy {
        validate_proxy(proxy).map_err(Problem::InvalidSpec)?;
    }
    validate_http(spec).map_err(Problem::InvalidSpec)
}

/// Checks the HTTP routing of a Kanary (header and values are written into HAProxy's config), as the
/// CRD's schema does.
fn validate_http(spec: &KanarySpec) -> Result<(), String> {
    use crate::api::kanary::{HEADER_NAME_PATTERN, HEADER_VALUE_PATTERN, Protocol};
    let matches = |pattern: &str, text: &str| regex::Regex::new(pattern).expect("a valid pattern").is_match(text);
    let header = spec.http.as_ref().and_then(|h| h.header.as_deref());
    if spec.http.is_some() && spec.protocol != Protocol::Http {
        return Err("spec.http: cohorts and overrides route HTTP requests: set spec.protocol to http".into());
    }
    if let Some(header) = header.filter(|h| !matches(HEADER_NAME_PATTERN, h)) {
        return Err(format!("spec.http.header: {header:?} is not a header name (letters, digits and '-')"));
    }
    for (i, route) in spec.routes.iter().enumerate() {
        let Some(value) = &route.header_value else { continue };
        if header.is_none() {
            return Err(format!("spec.routes[{i}].headerValue: set spec.http.header, the header it is the value of"));
        }
        if !matches(HEADER_VALUE_PATTERN, value) {
            return Err(format!(
                "spec.routes[{i}].headerValue: {value:?} is not a header value the proxy matches (letters, digits, '.', '_' and '-', at most 64)"
            ));
        }
    }
    Ok(())
}

/// Checks the proxy settings of a Kanary, as the CRD's schema does.
pub fn validate_proxy(proxy: &ProxySpec) -> Result<(), String> {
    let durations = [
        ("timeoutClient", &proxy.timeout_client),
        ("timeoutServer", &proxy.timeout_server),
        ("timeoutConnect", &proxy.timeout_connect),
        ("hardStopAfter", &proxy.hard_stop_after),
    ];
    for (field, value) in durations {
        if let Some(value) = value {
            check_duration(&format!("spec.proxy.{field}"), value)?;
        }
    }
    if let Some(maxconn) = proxy.maxconn
        && !(1..=MAX_MAXCONN).contains(&maxconn)
    {
        return Err(format!("spec.proxy.maxconn: {maxconn} is not between 1 and {MAX_MAXCONN}"));
    }
    Ok(())
}

/// Checks that `value` of `field` is a duration HAProxy reads.
pub fn check_duration(field: &str, value: &str) -> Result<(), String> {
    match duration_ms(value) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{field}: {value:?} is not a duration HAProxy reads: a number and a unit (us, ms, s, m, h or d), at most 24 days, such as 30s or 1h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(spec: Value) -> Result<KanarySpec, Problem> {
        parse_and_validate("ky", &json!({"spec": spec}))
    }

    #[test]
    fn every_original_spelling_is_read() {
        let spec = check(json!({"destination": "myapp", "routes": [
            {"backend": {"serviceName": "myapp-v1", "servicePort": "http"}, "weight": 80},
            {"backend": {"servicename": "myapp-v2", "serviceport": 9090}, "Weight": 15},
            {"backend": {"ServiceName": "myapp-v3", "ServicePort": "web"}, "weight": 5},
        ]}))
        .unwrap();
        assert_eq!(spec.routes[1].backend.service_name, "myapp-v2");
        assert_eq!(spec.routes[1].backend.service_port, IntOrString::Int(9090));
        assert_eq!(spec.routes[1].weight, 15);
        assert_eq!(spec.routes[2].backend.service_name, "myapp-v3");
    }

    /// Service port names are DNS labels of up to 63 characters (15 is the limit of container port names).
    #[test]
    fn long_service_port_names_are_valid() {
        for name in ["metrics-and-health-checks", &"p".repeat(63)] {
            let spec = json!({"destination": "d", "routes": [{"backend": {"serviceName": "a", "servicePort": name}, "weight": 100}]});
            assert!(check(spec).is_ok(), "servicePort {name:?} is a valid Service port name");
        }
    }

    #[test]
    fn each_rule_names_the_field() {
        let route = |svc: &str, w: i64| json!({"backend": {"serviceName": svc, "servicePort": 80}, "weight": w});
        let msg = |spec: Value| match check(spec) {
            Err(Problem::InvalidSpec(m)) => m,
            other => panic!("expected InvalidSpec, got {other:?}"),
        };
        assert!(msg(json!({"destination": "d", "routes": [route("a", 80), route("b", 30)]})).contains("add up to 110"));
        assert!(
            msg(json!({"destination": "d", "routes": [route("a", 50), route("a", 50)]})).contains("more than once")
        );
        assert!(msg(json!({"destination": "a", "routes": [route("a", 100)]})).starts_with("spec.destination"));
        assert!(msg(json!({"destination": "D_", "routes": [route("a", 100)]})).starts_with("spec.destination"));
        assert!(msg(json!({"destination": "d", "routes": []})).starts_with("spec.routes"));
        assert!(msg(json!({"destination": "d", "routes": [route("a", 101), route("b", -1)]})).contains("weight"));
        assert!(
            msg(json!({"destination": "d", "routes": [{"backend": {"serviceName": "a"}, "weight": 100}]}))
                .contains("servicePort")
        );
        let port = |p: Value| json!({"destination": "d", "routes": [{"backend": {"serviceName": "a", "servicePort": p}, "weight": 100}]});
        assert!(msg(port(json!("Http"))).contains("servicePort"));
        assert!(msg(port(json!("a".repeat(64)))).contains("servicePort"));
        assert!(msg(port(json!(0))).contains("servicePort"));
        assert!(
            parse_and_validate(&"k".repeat(56), &json!({"spec": {"destination": "d", "routes": [route("a", 100)]}}))
                .is_err()
        );
        // HTTP routing: written into HAProxy's config, so only what the patterns allow
        let http = |http: Value, value: Value| {
            let mut r = route("a", 100);
            r["headerValue"] = value;
            json!({"destination": "d", "protocol": "http", "http": http, "routes": [r]})
        };
        assert!(check(http(json!({"header": "x-canary", "sticky": true}), json!("always"))).is_ok());
        let injected = msg(http(json!({"header": "x-canary }"}), json!("always")));
        assert!(injected.starts_with("spec.http.header"), "{injected}");
        let injected = msg(http(json!({"header": "x-canary"}), json!("a }\n    use_backend x")));
        assert!(injected.starts_with("spec.routes[0].headerValue"), "{injected}");
        assert!(msg(http(json!({"sticky": true}), json!("always"))).contains("set spec.http.header"));
        let mut tcp = http(json!({"sticky": true}), Value::Null);
        tcp["protocol"] = json!("tcp");
        assert!(msg(tcp).starts_with("spec.http: "));
    }
}
