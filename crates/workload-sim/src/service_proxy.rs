//! The service proxy (kube-proxy, in user space): each port of each cluster IP of a Service (IPv4, IPv6 or
//! both) is listened on at that address in the node's namespace (where Pods reach it) and, for an IPv4 one,
//! at its mirror on the host's loopback (see `network::Mirror`); each connection goes to a ready endpoint of
//! the Service's EndpointSlices of the same address family, taken in turn. `default/kubernetes` is the API server's endpoint for Pods instead (`api_endpoint`).

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

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The ready endpoints of port `port_name` of Service `ns/service`, of the IPv6 slices (`v6`) or the IPv4
/// ones.
pub fn ready_endpoints(
    slices: &[Arc<EndpointSlice>],
    ns: &str,
    service: &str,
    port_name: &str,
    v6: bool,
) -> Vec<SocketAddr> {
    let mut out = vec![];
    for slice in slices {
        if slice.namespace().as_deref() != Some(ns)
            || slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str) != Some(service)
            || (slice.address_type == "IPv6") != v6
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

/// Where a Service port is listened on: its cluster IP and port, and the host's mirror of it.
type Key = (SocketAddr, String, String, String);

/// Keeps the listeners of every Service port, looking every 300 ms, until the task is aborted.
pub async fn run(network: Arc<Network>, services: Store<Service>, slices: Store<EndpointSlice>) {
    let mut listeners: HashMap<Key, JoinHandle<()>> = HashMap::new();
    loop {
        let mut wanted = vec![];
        for service in services.state() {
            let Some(spec) = &service.spec else { continue };
            let (namespace, name) = (service.namespace().unwrap_or_default(), service.name_any());
            if (namespace.as_str(), name.as_str()) == ("default", "kubernetes") {
                continue;
            }
            let ips = spec.cluster_ips.iter().flatten().chain(&spec.cluster_ip);
            let ips: std::collections::BTreeSet<IpAddr> =
                ips.filter_map(|ip| ip.parse().ok()).filter(|ip| crate::network::is_cluster_ip(*ip)).collect();
            for (ip, port) in ips.iter().flat_map(|ip| spec.ports.iter().flatten().map(move |p| (ip, p))) {
                let at = SocketAddr::new(*ip, port.port as u16);
                wanted.push((at, namespace.clone(), name.clone(), port.name.clone().unwrap_or_default()));
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
            let (network, slices, what) = (network.clone(), slices.clone(), key.clone());
            listeners.insert(
                key,
                tokio::spawn(async move {
                    let at = what.0;
                    if let Err(e) = serve(network, slices, what).await {
                        tracing::warn!(address = %at, error = %e, "service proxy cannot listen");
                    }
                }),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn serve(network: Arc<Network>, slices: Store<EndpointSlice>, key: Key) -> std::io::Result<()> {
    let (at, ns, service, port_name) = key;
    let in_node = network.listen_in_node(at).await?;
    let on_host = match network.mirror.of(at.ip()) {
        Some(mirror) => Some(crate::network::listen(SocketAddr::new(mirror.into(), at.port()))?),
        None => None,
    };
    let turn = Arc::new(AtomicUsize::new(0));
    let v6 = at.is_ipv6();
    // no ready endpoint: refused, as kube-proxy rejects it
    let target = move || {
        let endpoints = ready_endpoints(&slices.state(), &ns, &service, &port_name, v6);
        (!endpoints.is_empty()).then(|| endpoints[turn.fetch_add(1, Ordering::Relaxed) % endpoints.len()])
    };
    let target = Arc::new(target);
    let (for_host, for_node) = (target.clone(), target);
    let host_network = network.clone();
    let host = async move {
        match on_host {
            Some(listener) => crate::network::forward(host_network, listener, move || for_host()).await,
            None => std::future::pending().await,
        }
    };
    tokio::try_join!(host, crate::network::forward(network, in_node, move || for_node()))?;
    Ok(())
}
