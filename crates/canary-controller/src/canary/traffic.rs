//! Builds, as plain values, what puts a Canary's release in front of its clients, without touching the
//! user's Deployment or Service:
//! - `<canary>-stable`: a Service without selector whose EndpointSlice (written here, managed by this
//!   controller) holds the endpoints of the user's Service minus the canary's pods (they carry the target's
//!   labels, so the user's Service selects them too);
//! - `<canary>-canary`: a Service selecting only the canary's pods (the user's selector and `canary=true`);
//! - with `traffic.baseline`, `<canary>-baseline`: a Service selecting only the baseline's pods (the user's
//!   selector and `canary-baseline=true`), also left out of the stable route;
//! - a Kanary named after the Canary whose routes are those Services, weighted by the release (the baseline
//!   takes the canary's weight), in front of `traffic.frontService` (port 80, the one clients use).
//!
//! Pure: no client in scope.

use crate::api::canary::{Canary, Traffic};
use crate::api::kanary::{Backend, HttpRouting, KanarySpec, Route};
use crate::names::SERVICE_NAME_LABEL;
use crate::names::kanary::conditions::DATA_PLANE_SYNCED;
use crate::names::{BASELINE_LABEL, CANARY_LABEL, baseline_deployment_name, canary_deployment_name};
use crate::names::{
    MANAGED_BY, MANAGED_BY_LABEL, baseline_service_name, canary_service_name, stable_service_name, stable_slice_name,
};
use crate::runtime::caches::{CachedKanary, CachedService, CachedSlice};
use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// The name of the port of the route Services.
pub const ROUTE_PORT: &str = "traffic";

/// The user's Service port the release splits: `traffic.port`, or the Service's only port.
pub fn service_port<'a>(traffic: &Traffic, service: &'a CachedService) -> Result<&'a ServicePort, String> {
    let ports = service.ports.as_deref().unwrap_or_default();
    let describe = || ports.iter().map(|p| p.name.clone().unwrap_or_else(|| p.port.to_string())).collect::<Vec<_>>();
    match &traffic.port {
        None if ports.len() == 1 => Ok(&ports[0]),
        None => Err(format!(
            "spec.traffic.port: Service {:?} has {} ports ({}): name the one to split",
            traffic.service,
            ports.len(),
            describe().join(", ")
        )),
        Some(wanted) => ports
            .iter()
            .find(|p| match wanted {
                IntOrString::Int(n) => p.port == *n,
                IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
            })
            .ok_or_else(|| {
                let wanted = match wanted {
                    IntOrString::Int(n) => n.to_string(),
                    IntOrString::String(s) => format!("{s:?}"),
                };
                format!(
                    "spec.traffic.port: Service {:?} has no port {wanted} (its ports: {}): fix the port",
                    traffic.service,
                    describe().join(", ")
                )
            }),
    }
}

fn owner(canary: &Canary) -> OwnerReference {
    canary.controller_owner_ref(&()).expect("a Canary read from the API has a uid")
}

/// `<canary>-canary`: the user's selector and `canary=true`, the user's port.
pub fn build_canary_service(canary: &Canary, user: &CachedService, port: &ServicePort) -> Service {
    build_marked_service(canary_service_name(&canary.name_any()), CANARY_LABEL, canary, user, port)
}

/// `<canary>-baseline`: the user's selector and `canary-baseline=true`, the user's port.
pub fn build_baseline_service(canary: &Canary, user: &CachedService, port: &ServicePort) -> Service {
    build_marked_service(baseline_service_name(&canary.name_any()), BASELINE_LABEL, canary, user, port)
}

/// The Service `name` selecting the pods the user's Service selects that carry `mark=true`.
fn build_marked_service(
    name: String,
    mark: &str,
    canary: &Canary,
    user: &CachedService,
    port: &ServicePort,
) -> Service {
    let mut selector = user.selector.to_map().unwrap_or_default();
    selector.insert(mark.into(), "true".into());
    let target_port = port.target_port.clone().unwrap_or(IntOrString::Int(port.port));
    route_service(canary, name, Some(selector), Some(target_port), port)
}

/// A route Service of the release: port [`ROUTE_PORT`] (TCP, the user's port number and `appProtocol`) to
/// `target_port` of the pods `selector` selects (no selector: its EndpointSlices are written by the
/// controller).
fn route_service(
    canary: &Canary,
    name: String,
    selector: Option<BTreeMap<String, String>>,
    target_port: Option<IntOrString>,
    user_port: &ServicePort,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: canary.namespace(),
            owner_references: Some(vec![owner(canary)]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector,
            ports: Some(vec![ServicePort {
                name: Some(ROUTE_PORT.into()),
                port: user_port.port,
                target_port,
                protocol: Some("TCP".into()),
                app_protocol: user_port.app_protocol.clone(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// `<canary>-stable`: no selector (its EndpointSlice is [`build_stable_slice`]).
pub fn build_stable_service(canary: &Canary, port: &ServicePort) -> Service {
    route_service(canary, stable_service_name(&canary.name_any()), None, None, port)
}

/// Whether the user's Service has endpoints of `family`.
pub fn has_family(user_slices: &[impl std::borrow::Borrow<CachedSlice>], family: &str) -> bool {
    user_slices.iter().any(|s| s.borrow().address_type == family)
}

/// The endpoints of the user's Service (its `port`) that are not the canary's or the baseline's pods: neither
/// in the slices of their Services (`marked_slices`, by pod or address) nor named as their Deployments' pods
/// (`<target>-canary-`, `<target>-baseline-`).
pub fn build_stable_slice(
    canary: &Canary,
    port: &ServicePort,
    family: &str,
    user_slices: &[impl std::borrow::Borrow<CachedSlice>],
    marked_slices: &[impl std::borrow::Borrow<CachedSlice>],
) -> EndpointSlice {
    let target = &canary.spec.target_deployment_name;
    let prefixes = [format!("{}-", canary_deployment_name(target)), format!("{}-", baseline_deployment_name(target))];
    let canary_endpoints = marked_slices.iter().flat_map(|s| s.borrow().endpoints.iter());
    let (mut canary_pods, mut canary_addresses) = (BTreeSet::new(), BTreeSet::new());
    for e in canary_endpoints {
        canary_pods.extend(e.pod.clone());
        canary_addresses.extend(e.address);
    }
    let port_name = port.name.clone().unwrap_or_default();
    let mut pod_port = None;
    let mut endpoints = vec![];
    let mut slices: Vec<&CachedSlice> =
        user_slices.iter().map(|s| s.borrow()).filter(|s| s.address_type == family).collect();
    slices.sort_by_key(|s| s.metadata.name.clone());
    for slice in slices {
        let Some(found) = slice.ports.iter().find(|p| p.name.clone().unwrap_or_default() == port_name) else {
            continue;
        };
        pod_port = pod_port.or(found.port);
        for e in &slice.endpoints {
            let (Some(address), pod) = (e.address, e.pod.as_deref()) else { continue };
            let is_canary = canary_addresses.contains(&address)
                || pod.is_some_and(|p| canary_pods.contains(p) || prefixes.iter().any(|prefix| p.starts_with(prefix)));
            if is_canary || found.port != pod_port {
                continue;
            }
            endpoints.push(Endpoint {
                addresses: vec![address.to_string()],
                conditions: Some(EndpointConditions { ready: Some(e.ready.unwrap_or(true)), ..Default::default() }),
                target_ref: pod.map(|pod| ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(pod.into()),
                    namespace: canary.namespace(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    let numeric_target = match &port.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        None => Some(port.port),
        Some(IntOrString::String(_)) => None,
    };
    let service = stable_service_name(&canary.name_any());
    let name = stable_slice_name(&canary.name_any(), family);
    let labels = [(SERVICE_NAME_LABEL.to_string(), service), (MANAGED_BY_LABEL.into(), MANAGED_BY.into())];
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: canary.namespace(),
            owner_references: Some(vec![owner(canary)]),
            labels: Some(labels.into()),
            ..Default::default()
        },
        address_type: family.into(),
        ports: Some(vec![EndpointPort {
            name: Some(ROUTE_PORT.into()),
            port: pod_port.or(numeric_target),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints,
    }
}

/// The Kanary spec of a release: the stable and canary routes, the canary taking `weight` percent of new
/// connections; with `traffic.baseline`, a third route taking as much for the baseline.
pub fn kanary_spec(canary: &Canary, traffic: &Traffic, weight: i32) -> KanarySpec {
    let name = canary.name_any();
    // with `traffic.header`, the value of it that selects the route (none for the baseline)
    let route = |service_name: String, weight: i32, value: Option<&str>| Route {
        backend: Backend { service_name, service_port: IntOrString::String(ROUTE_PORT.into()) },
        weight: weight.into(),
        header_value: value.filter(|_| traffic.header.is_some()).map(str::to_string),
    };
    let mut routes = vec![route(canary_service_name(&name), weight, Some(HEADER_ALWAYS))];
    if traffic.baseline {
        routes.push(route(baseline_service_name(&name), weight, None));
    }
    let stable = 100 - routes.len() as i32 * weight;
    routes.insert(0, route(stable_service_name(&name), stable, Some(HEADER_NEVER)));
    let http = (traffic.header.is_some() || traffic.sticky)
        .then(|| HttpRouting { header: traffic.header.clone(), sticky: traffic.sticky });
    KanarySpec { destination: traffic.front_service.clone(), routes, proxy: None, protocol: traffic.protocol, http }
}

/// The value of `traffic.header` that sends a request to the canary (while its weight is above 0).
pub const HEADER_ALWAYS: &str = "always";
/// The value of `traffic.header` that sends a request to stable.
pub const HEADER_NEVER: &str = "never";

/// The Kanary of a release with `spec`, in `resource`'s group (kanary.k8s.io).
pub fn build_kanary(canary: &Canary, resource: &ApiResource, spec: &KanarySpec) -> DynamicObject {
    let mut kanary = DynamicObject::new(&canary.name_any(), resource).within(&canary.namespace().unwrap_or_default());
    kanary.metadata.owner_references = Some(vec![owner(canary)]);
    kanary.data = json!({ "spec": spec });
    kanary
}

/// The canary weight a Kanary's spec asks for, when every proxy pod serves it (its status says
/// DataPlaneSynced for the current spec).
pub fn served_weight(kanary: &CachedKanary) -> Option<i32> {
    let generation = kanary.metadata.generation?;
    let status = kanary.status.as_ref()?;
    let synced = status
        .conditions
        .iter()
        .any(|c| c.type_ == DATA_PLANE_SYNCED && c.status == "True" && c.observed_generation == Some(generation));
    if !synced || status.observed_generation != Some(generation) {
        return None;
    }
    kanary.spec.as_ref()?.routes.get(1).map(|r| r.weight as i32)
}

/// The proxy pods' addresses: the ready endpoints of the front Service's EndpointSlices, by pod name.
pub fn proxy_pods(front_slices: &[impl std::borrow::Borrow<CachedSlice>]) -> Vec<(String, std::net::IpAddr)> {
    let mut pods: Vec<(String, std::net::IpAddr)> = front_slices
        .iter()
        .flat_map(|s| s.borrow().endpoints.iter())
        .filter(|e| e.ready != Some(false))
        .filter_map(|e| Some((e.pod.as_deref().map(str::to_string).unwrap_or_default(), e.address?)))
        .collect();
    pods.sort();
    pods.dedup();
    pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::caches::CachedEndpoint;

    fn canary() -> Canary {
        serde_json::from_value(json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"targetDeploymentName": "app", "targetContainers": [{"name": "app", "image": "app:v2"}],
                "traffic": {"service": "app", "frontService": "app-front"}}}))
        .unwrap()
    }

    fn slice(name: &str, endpoints: &[(&str, &str, bool)]) -> CachedSlice {
        CachedSlice {
            metadata: serde_json::from_value(json!({"name": name, "namespace": "ns"})).unwrap(),
            labels: Default::default(),
            annotations: Default::default(),
            address_type: "IPv4".into(),
            ports: vec![serde_json::from_value(json!({"name": "http", "port": 8080})).unwrap()],
            endpoints: endpoints
                .iter()
                .map(|(pod, ip, ready)| CachedEndpoint {
                    address: ip.parse().ok(),
                    ready: Some(*ready),
                    pod: Some((*pod).into()),
                })
                .collect(),
        }
    }

    fn port() -> ServicePort {
        serde_json::from_value(json!({"name": "http", "port": 80, "targetPort": "http"})).unwrap()
    }

    #[test]
    fn the_stable_route_is_the_users_endpoints_without_the_canary_pods() {
        let user = [slice(
            "app-1",
            &[("app-7d9-a", "10.0.0.1", true), ("app-canary-5f4-b", "10.0.0.2", true), ("other", "10.0.0.3", false)],
        )];
        let canary_slices = [slice("web-canary-1", &[("renamed", "10.0.0.3", true)])];
        let built = build_stable_slice(&canary(), &port(), "IPv4", &user, &canary_slices);
        let addresses: Vec<_> = built.endpoints.iter().map(|e| e.addresses[0].clone()).collect();
        assert_eq!(addresses, ["10.0.0.1"], "the canary Deployment's pods and the canary Service's are left out");
        assert_eq!(built.ports.unwrap()[0].port, Some(8080));
        assert_eq!(built.metadata.labels.unwrap()[SERVICE_NAME_LABEL], "web-stable");
    }

    #[test]
    fn ipv6_only_and_dual_stack_services_get_a_stable_slice_of_each_family() {
        // issue: only IPv4 slices were read and an IPv4 slice written, so on an IPv6-only Service the stable
        // route was empty and every connection went to the canary
        let mut v6 = slice("app-v6", &[("app-7d9-a", "fd00::1", true), ("app-canary-5f4-b", "fd00::2", true)]);
        v6.address_type = "IPv6".into();
        let v4 = slice("app-v4", &[("app-7d9-a", "10.0.0.1", true), ("app-canary-5f4-b", "10.0.0.2", true)]);
        let none: [CachedSlice; 0] = [];
        let ipv6_only = [v6.clone()];
        assert!(has_family(&ipv6_only, "IPv6") && !has_family(&ipv6_only, "IPv4"));
        let built = build_stable_slice(&canary(), &port(), "IPv6", &ipv6_only, &none);
        assert_eq!(built.address_type, "IPv6");
        assert_eq!(built.metadata.name.as_deref(), Some("web-stable-ipv6"));
        assert_eq!(built.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL], "web-stable");
        let addresses: Vec<_> = built.endpoints.iter().map(|e| e.addresses[0].clone()).collect();
        assert_eq!(addresses, ["fd00::1"], "the stable pod's IPv6 address, not the canary's");
        let dual = [v4, v6];
        let v4_built = build_stable_slice(&canary(), &port(), "IPv4", &dual, &none);
        let v6_built = build_stable_slice(&canary(), &port(), "IPv6", &dual, &none);
        assert_eq!((v4_built.endpoints.len(), v6_built.endpoints.len()), (1, 1));
        assert_eq!(v4_built.endpoints[0].addresses[0], "10.0.0.1");
        assert_eq!(v6_built.endpoints[0].addresses[0], "fd00::1");
    }

    #[test]
    fn the_canary_service_selects_the_users_selector_and_the_canary_label() {
        let user = CachedService {
            metadata: Default::default(),
            labels: Default::default(),
            annotations: Default::default(),
            type_: None,
            selector: Some([("app".to_string(), "app".to_string())].into()).into(),
            ports: Some(vec![port()]),
        };
        let svc = build_canary_service(&canary(), &user, &port());
        let selector = svc.spec.unwrap().selector.unwrap();
        assert_eq!(selector.get("canary").map(String::as_str), Some("true"));
        assert_eq!(selector.get("app").map(String::as_str), Some("app"));
    }

    #[test]
    fn a_port_is_named_when_the_service_has_several() {
        let mut traffic = canary().spec.traffic.unwrap();
        let two: ServicePort = serde_json::from_value(json!({"name": "admin", "port": 9000})).unwrap();
        let user = CachedService { ports: Some(vec![port(), two]), ..Default::default() };
        let err = service_port(&traffic, &user).unwrap_err();
        assert!(err.starts_with("spec.traffic.port:") && err.contains("http, admin"), "{err}");
        traffic.port = Some(IntOrString::String("admin".into()));
        assert_eq!(service_port(&traffic, &user).unwrap().port, 9000);
        traffic.port = Some(IntOrString::Int(1));
        assert!(service_port(&traffic, &user).unwrap_err().contains("no port 1"));
    }

    #[test]
    fn the_weight_counts_as_served_only_when_every_proxy_serves_the_current_spec() {
        let resource = crate::api::kanary::api_resource("kanary.k8s.io", "v1");
        let traffic = canary().spec.traffic.unwrap();
        let built = build_kanary(&canary(), &resource, &kanary_spec(&canary(), &traffic, 25));
        assert_eq!(built.data["spec"]["routes"][0]["weight"], 75);
        assert_eq!(built.data["spec"]["routes"][0]["backend"]["servicePort"], "traffic");
        let mut kanary: CachedKanary = serde_json::from_value(json!({"metadata": {"name": "web", "generation": 3},
            "spec": built.data["spec"]}))
        .unwrap();
        assert_eq!(served_weight(&kanary), None);
        kanary.status =
            serde_json::from_value(json!({"observedGeneration": 3, "conditions": [{"type": "DataPlaneSynced",
            "status": "True", "observedGeneration": 3, "reason": "Synced", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
            .unwrap();
        assert_eq!(served_weight(&kanary), Some(25));
        kanary.metadata.generation = Some(4);
        assert_eq!(served_weight(&kanary), None);
    }

    #[test]
    fn the_override_header_selects_stable_with_never_and_the_canary_with_always_and_never_the_baseline() {
        let mut traffic = canary().spec.traffic.unwrap();
        traffic.baseline = true;
        let values = |spec: KanarySpec| spec.routes.into_iter().map(|r| r.header_value).collect::<Vec<_>>();
        assert_eq!(values(kanary_spec(&canary(), &traffic, 25)), [None, None, None], "no header: no values");
        (traffic.protocol, traffic.header) = (crate::api::kanary::Protocol::Http, Some("x-canary".into()));
        let spec = kanary_spec(&canary(), &traffic, 25);
        assert_eq!(spec.http, Some(HttpRouting { header: Some("x-canary".into()), sticky: false }));
        assert_eq!(values(spec), [Some(HEADER_NEVER.into()), Some(HEADER_ALWAYS.into()), None]);
    }

    #[test]
    fn with_a_baseline_it_takes_the_canarys_weight_and_its_pods_leave_the_stable_route() {
        let resource = crate::api::kanary::api_resource("kanary.k8s.io", "v1");
        let mut traffic = canary().spec.traffic.unwrap();
        traffic.baseline = true;
        let kanary = build_kanary(&canary(), &resource, &kanary_spec(&canary(), &traffic, 25));
        let routes: Vec<(&str, i64)> = kanary.data["spec"]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["backend"]["serviceName"].as_str().unwrap(), r["weight"].as_i64().unwrap()))
            .collect();
        assert_eq!(routes, [("web-stable", 50), ("web-canary", 25), ("web-baseline", 25)]);
        let user = [slice("app-1", &[("app-7d9-a", "10.0.0.1", true), ("app-baseline-5f4-b", "10.0.0.2", true)])];
        let marked = [slice("web-baseline-1", &[("renamed", "10.0.0.1", true)])];
        let none: [CachedSlice; 0] = [];
        let built = build_stable_slice(&canary(), &port(), "IPv4", &user, &none);
        let addresses: Vec<_> = built.endpoints.iter().map(|e| e.addresses[0].clone()).collect();
        assert_eq!(addresses, ["10.0.0.1"], "the baseline Deployment's pods are left out by name");
        assert!(build_stable_slice(&canary(), &port(), "IPv4", &user, &marked).endpoints.is_empty(), "and by address");
        let user_service = CachedService {
            metadata: Default::default(),
            labels: Default::default(),
            annotations: Default::default(),
            type_: None,
            selector: Some([("app".to_string(), "app".to_string())].into()).into(),
            ports: Some(vec![port()]),
        };
        let selector = build_baseline_service(&canary(), &user_service, &port()).spec.unwrap().selector.unwrap();
        assert_eq!(selector, [("app".into(), "app".into()), ("canary-baseline".into(), "true".into())].into());
    }
}
