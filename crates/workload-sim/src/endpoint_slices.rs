//! The EndpointSlice controller, as the simulator plays it: each Service with a selector gets one
//! EndpointSlice (`<service>-sim`, managed by `workload-sim`) listing the Pods it selects that have an
//! address, with `ready`, `serving` and `terminating` as the real controller sets them, `targetRef`, and the
//! Service's ports resolved against each Pod's named container ports.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::sync::Arc;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "workload-sim";

/// The slice's name for Service `service`.
pub fn slice_name(service: &str) -> String {
    format!("{service}-sim")
}

/// Whether `pod` is selected by `selector`.
pub fn selects(selector: &std::collections::BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.labels();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The EndpointSlice of `service` for `pods` (those it selects; the caller filters), or None for a Service
/// without a selector.
pub fn build(service: &Service, pods: &[&Pod]) -> Option<Value> {
    let spec = service.spec.as_ref()?;
    spec.selector.as_ref().filter(|s| !s.is_empty())?;
    // a named target port is resolved per pod; the slice carries the first resolution
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let number = match &p.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                None => Some(p.port),
                Some(IntOrString::String(name)) => pods.iter().find_map(|pod| container_port(pod, name)),
            };
            json!({"name": p.name.clone().unwrap_or_default(), "port": number, "protocol": p.protocol.clone().unwrap_or("TCP".into())})
        })
        .collect();
    let mut endpoints: Vec<Value> = pods
        .iter()
        .filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.clone()?;
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let serving = crate::workloads::pod_ready(pod);
            Some(json!({
                "addresses": [ip],
                "conditions": {"ready": serving && !terminating, "serving": serving, "terminating": terminating},
                "nodeName": pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                "targetRef": {"kind": "Pod", "name": pod.name_any(), "namespace": pod.namespace(), "uid": pod.uid()},
            }))
        })
        .collect();
    endpoints.sort_by(|a, b| a["targetRef"]["name"].as_str().cmp(&b["targetRef"]["name"].as_str()));
    let name = service.name_any();
    Some(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name(&name), "namespace": service.namespace(),
            "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [service.controller_owner_ref(&())]},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    }))
}

fn container_port(pod: &Pod, name: &str) -> Option<i32> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// Writes the EndpointSlice of one Service from the Pods of its namespace.
pub async fn reconcile(service: Arc<Service>, client: kube::Client) -> Result<Action, kube::Error> {
    if service.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = service.namespace().unwrap_or_default();
    let selector = service.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    if selector.is_empty() {
        return Ok(Action::await_change());
    }
    let pods = Api::<Pod>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items;
    let selected: Vec<&Pod> = pods.iter().filter(|p| selects(&selector, p)).collect();
    let Some(slice) = build(&service, &selected) else { return Ok(Action::await_change()) };
    let api: Api<EndpointSlice> = Api::namespaced(client, &ns);
    let params = PatchParams::apply(crate::workloads::FIELD_MANAGER).force();
    api.patch(&slice_name(&service.name_any()), &params, &Patch::Apply(&slice)).await?;
    Ok(Action::await_change())
}
