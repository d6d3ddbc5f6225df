//! The service proxy (kube-proxy, in user space): each port of a Service whose cluster IP is a loopback
//! address (fake-apiserver `--service-cluster-ip-range 127.96.0.0/16`) is listened on, on the host, and
//! each connection goes to a ready endpoint of the Service's EndpointSlices, taken in turn.

use crate::network::Network;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::task::JoinHandle;

/// The ready endpoints of port `port_name` of Service `ns/service`.
pub fn ready_endpoints(slices: &[Arc<EndpointSlice>], ns: &str, service: &str, port_name: &str) -> Vec<SocketAddr> {
    let mut out = vec![];
    for slice in slices {
        if slice.namespace().as_deref() != Some(ns)
            || slice.labels().get(crate::endpoint_slices::SERVICE_NAME_LABEL).map(String::as_str) != Some(service)
        {
            continue;
        }
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            if let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
                out.push(SocketAddr::new(ip, port as u16));
            }
        }
    }
    out.sort();
    out
}

/// Keeps one listener per loopback Service port, every `period`, until the task is aborted.
pub async fn run(network: Arc<Network>, services: Store<Service>, slices: Store<EndpointSlice>) {
    let mut listeners: HashMap<(SocketAddr, String, String, String), JoinHandle<()>> = HashMap::new();
    loop {
        let mut wanted = vec![];
        for service in services.state() {
            let Some(spec) = &service.spec else { continue };
            let Some(ip) =
                spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()).filter(IpAddr::is_loopback)
            else {
                continue;
            };
            for port in spec.ports.iter().flatten() {
                let at = SocketAddr::new(ip, port.port as u16);
                wanted.push((
                    at,
                    service.namespace().unwrap_or_default(),
                    service.name_any(),
                    port.name.clone().unwrap_or_default(),
                ));
            }
        }
        listeners.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for key in wanted {
            if listeners.contains_key(&key) {
                continue;
            }
            let (at, ns, name, port_name) = key.clone();
            let (network, slices) = (network.clone(), slices.clone());
            listeners.insert(
                key,
                tokio::spawn(async move {
                    if let Err(e) = serve(network, slices, at, ns, name, port_name).await {
                        tracing::warn!(address = %at, error = %e, "service proxy cannot listen");
                    }
                }),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn serve(
    network: Arc<Network>,
    slices: Store<EndpointSlice>,
    at: SocketAddr,
    ns: String,
    service: String,
    port_name: String,
) -> std::io::Result<()> {
    let turn = AtomicUsize::new(0);
    // no ready endpoint: refused, as kube-proxy rejects it
    crate::network::forward(network, at, move || {
        let endpoints = ready_endpoints(&slices.state(), &ns, &service, &port_name);
        (!endpoints.is_empty()).then(|| endpoints[turn.fetch_add(1, Ordering::Relaxed) % endpoints.len()])
    })
    .await
}
