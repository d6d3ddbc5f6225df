//! Turns a backend Service and its EndpointSlices into HAProxy servers: the route's `servicePort` is
//! resolved through the Service (a name, or a number meaning the Service port), then matched to the
//! EndpointSlice port of the same name, which carries the pod-side port. Ready endpoints only, every
//! slice of the Service, sorted, with server names that are always valid and unique. Pure.

use crate::api::kanary::H2C_APP_PROTOCOLS;
use crate::dataplane::Server;
use crate::runtime::caches::CachedSlice;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::borrow::Borrow;

#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Servers(Vec<Server>),
    ServiceNotFound,
    PortNotFound { available: Vec<String> },
}

fn describe_port(p: &ServicePort) -> String {
    match &p.name {
        Some(n) if !n.is_empty() => format!("{n} ({})", p.port),
        _ => p.port.to_string(),
    }
}

/// A valid, readable HAProxy server name: letters, digits, '-', '_', '.', nothing else.
fn server_name(raw: &str) -> String {
    let cleaned: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect();
    if cleaned.is_empty() { "server".into() } else { cleaned }
}

/// Whether `port` of `service` is served over HTTP/2 without TLS: its `appProtocol` says so
/// ([`H2C_APP_PROTOCOLS`]).
pub fn speaks_h2c(port: &IntOrString, service: Option<&Service>) -> bool {
    let found = service.and_then(|s| service_port(port, s));
    found.and_then(|p| p.app_protocol.as_deref()).is_some_and(|a| H2C_APP_PROTOCOLS.contains(&a))
}

fn ports_of(service: &Service) -> &[ServicePort] {
    service.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default()
}

/// The port of `service` a route's `servicePort` names: a port name, or a number meaning the Service port.
fn service_port<'a>(port: &IntOrString, service: &'a Service) -> Option<&'a ServicePort> {
    ports_of(service).iter().find(|p| match port {
        IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
        IntOrString::Int(n) => p.port == *n,
    })
}

/// The servers of a route: `port` of `service`, on the ready endpoints of its (cached) EndpointSlices.
pub fn resolve<S: Borrow<CachedSlice>>(port: &IntOrString, service: Option<&Service>, slices: &[S]) -> Resolution {
    let Some(service) = service else { return Resolution::ServiceNotFound };
    let Some(service_port) = service_port(port, service) else {
        return Resolution::PortNotFound { available: ports_of(service).iter().map(describe_port).collect() };
    };
    let port_name = service_port.name.as_deref().unwrap_or_default();
    let numeric_target = match &service_port.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        None => Some(service_port.port),
        Some(IntOrString::String(_)) => None,
    };
    let mut servers: Vec<Server> = vec![];
    let mut sorted: Vec<&CachedSlice> = slices.iter().map(Borrow::borrow).collect();
    sorted.sort_by_key(|s| s.metadata.name.as_deref());
    for slice in sorted {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_port = slice
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .or(numeric_target);
        let Some(port) = slice_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) else { continue };
        for ep in &slice.endpoints {
            // "ready: unset" is to be read as ready (discovery.k8s.io/v1)
            if ep.ready == Some(false) {
                continue;
            }
            let Some(address) = ep.address else { continue };
            let label = ep.pod.as_deref().map(str::to_string).unwrap_or_else(|| address.to_string());
            servers.push(Server { name: server_name(&label), address, port });
        }
    }
    servers.sort_by(|a, b| (a.address, a.port, &a.name).cmp(&(b.address, b.port, &b.name)));
    servers.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    make_names_unique(&mut servers);
    Resolution::Servers(servers)
}

/// HAProxy refuses two servers of one name in a backend. A pod appears twice in dual-stack Services (one
/// IPv4 and one IPv6 slice) and names can collide after sanitising: every name used by one server only
/// keeps it, the first server of a shared name keeps it, the others get `<name>-N` with the smallest N
/// that no server uses (pods `x`, `x`, `x-2` give `x`, `x-3`, `x-2`).
fn make_names_unique(servers: &mut [Server]) {
    use std::collections::HashSet;
    let mut taken: HashSet<String> = servers.iter().map(|s| s.name.clone()).collect();
    let mut kept: HashSet<String> = HashSet::new();
    for s in servers.iter_mut() {
        if kept.insert(s.name.clone()) {
            continue;
        }
        let unused = (2..).map(|n| format!("{}-{n}", s.name)).find(|n| !taken.contains(n)).expect("an unused name");
        taken.insert(unused.clone());
        s.name = unused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "v1"}, "spec": {"ports": ports}})).unwrap()
    }

    fn slice(name: &str, port_name: &str, port: i32, endpoints: serde_json::Value) -> CachedSlice {
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(json!({"metadata": {"name": name}, "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}], "endpoints": endpoints}))
            .unwrap();
        slice.into()
    }

    #[test]
    fn named_and_numbered_ports_resolve_to_the_pod_port_of_ready_endpoints_of_every_slice() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "web"}]));
        let slices = [
            slice(
                "b",
                "http",
                8080,
                json!([{"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "app-2"}}]),
            ),
            slice(
                "a",
                "http",
                8080,
                json!([
                    {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "app-1"}},
                    {"addresses": ["10.0.0.3"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "app-3"}}
                ]),
            ),
        ];
        let expected = Resolution::Servers(vec![
            Server { name: "app-1".into(), address: "10.0.0.1".parse().unwrap(), port: 8080 },
            Server { name: "app-2".into(), address: "10.0.0.2".parse().unwrap(), port: 8080 },
        ]);
        assert_eq!(resolve(&IntOrString::String("http".into()), Some(&svc), &slices), expected);
        assert_eq!(resolve(&IntOrString::Int(80), Some(&svc), &slices), expected);
    }

    #[test]
    fn missing_service_and_port_are_reported() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        assert_eq!(resolve::<CachedSlice>(&IntOrString::Int(80), None, &[]), Resolution::ServiceNotFound);
        assert_eq!(
            resolve::<CachedSlice>(&IntOrString::Int(9090), Some(&svc), &[]),
            Resolution::PortNotFound { available: vec!["http (80)".into()] }
        );
    }

    #[test]
    fn server_names_are_valid_and_unique() {
        let svc = service(json!([{"port": 80}]));
        let slices = [slice(
            "a",
            "",
            80,
            json!([
                {"addresses": ["10.0.0.1"], "targetRef": {"name": "x y#z"}},
                {"addresses": ["10.0.0.2"], "targetRef": {"name": "x y#z"}},
                {"addresses": ["10.0.0.2"], "targetRef": {"name": "dup"}}
            ]),
        )];
        let Resolution::Servers(s) = resolve(&IntOrString::Int(80), Some(&svc), &slices) else { panic!() };
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x-y-z", "dup"]);
    }

    /// Renaming never lands on a name already taken: pods `x`, `x`, `x-2` (and a dual-stack pod listed in
    /// an IPv4 and an IPv6 slice) give distinct names.
    #[test]
    fn renamed_servers_do_not_take_names_in_use() {
        let svc = service(json!([{"port": 80}]));
        let v4 = slice(
            "a",
            "",
            80,
            json!([
                {"addresses": ["10.0.0.1"], "targetRef": {"name": "x"}},
                {"addresses": ["10.0.0.2"], "targetRef": {"name": "x"}},
                {"addresses": ["10.0.0.3"], "targetRef": {"name": "x-2"}},
                {"addresses": ["10.0.0.4"], "targetRef": {"name": "dual"}}
            ]),
        );
        let mut v6 = slice("b", "", 80, json!([{"addresses": ["fd00::4"], "targetRef": {"name": "dual"}}]));
        v6.address_type = "IPv6".into();
        let Resolution::Servers(s) = resolve(&IntOrString::Int(80), Some(&svc), &[v4, v6]) else { panic!() };
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x", "x-3", "x-2", "dual", "dual-2"]);
    }
}
