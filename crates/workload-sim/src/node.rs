//! The Node this simulator is, as a kubelet registers and keeps it: the Node object (capacity, addresses, its
//! pod CIDR), its status with the `Ready` condition, and its heartbeat, a Lease in `kube-node-lease` renewed
//! every [`LEASE_RENEW`] (kube-controller-manager's node lifecycle controller marks a node whose Lease stops
//! being renewed NotReady, and evicts its Pods). The status is posted again every [`STATUS_EVERY`].

use crate::network::{NODE_ADDRESS, NODE_ADDRESS_V6, POD_NETWORK, POD_NETWORK_V6};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

/// How long the node's Lease lasts, and how often it is renewed (a kubelet's defaults).
pub const LEASE_SECONDS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often the Node's status is posted although nothing changed.
pub const STATUS_EVERY: Duration = Duration::from_secs(60);

const MANAGER: &str = "workload-sim";

/// Registers Node `name` (or takes it back after a restart) and keeps its status and Lease fresh until the
/// task is aborted; failed writes are retried at the next beat.
pub async fn run(client: kube::Client, name: String, pod_limit: usize) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let apply = PatchParams::apply(MANAGER).force();
    let registered = std::time::Instant::now();
    let mut last_status: Option<std::time::Instant> = None;
    loop {
        let node = match nodes.patch(&name, &apply, &Patch::Apply(node(&name))).await {
            Ok(node) => Some(node),
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "cannot register the node; retrying");
                None
            }
        };
        if let Some(node) = node {
            if last_status.is_none_or(|at| at.elapsed() >= STATUS_EVERY) {
                let status = status(&name, pod_limit, registered_at(registered));
                // a merge patch, as a kubelet writes it: server-side apply cannot take two addresses of one
                // type (the list's key), and a dual-stack node has two InternalIPs
                match nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await {
                    Ok(_) => last_status = Some(std::time::Instant::now()),
                    Err(e) => tracing::warn!(node = %name, error = %e, "cannot post the node's status; retrying"),
                }
            }
            let lease = lease(&name, node.metadata.uid.as_deref().unwrap_or_default());
            if let Err(e) = leases.patch(&name, &apply, &Patch::Apply(lease)).await {
                tracing::warn!(node = %name, error = %e, "cannot renew the node's lease; retrying");
            }
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

fn registered_at(since: std::time::Instant) -> Timestamp {
    Timestamp::now() - since.elapsed()
}

/// The Node object as the simulator registers it.
fn node(name: &str) -> serde_json::Value {
    let [a, b] = POD_NETWORK;
    let cidr = format!("{a}.{b}.0.0/16");
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch(),
            "node.kubernetes.io/instance-type": "workload-sim"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr, POD_NETWORK_V6]}})
}

/// The Node's status: ready, its capacity (`pods`: the simulator's pod limit) and addresses.
fn status(name: &str, pod_limit: usize, since: Timestamp) -> serde_json::Value {
    let now = Timestamp::now();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    let resources = json!({"cpu": "16", "memory": "64Gi", "ephemeral-storage": "100Gi", "pods": pod_limit.to_string()});
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "workload-sim does not limit memory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "workload-sim does not limit disk"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "workload-sim does not limit processes"),
            condition("Ready", "True", "KubeletReady", "workload-sim is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": NODE_ADDRESS.to_string()},
            {"type": "InternalIP", "address": NODE_ADDRESS_V6.to_string()}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "workload-sim",
            "containerRuntimeVersion": concat!("workload-sim://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": concat!("v", env!("CARGO_PKG_VERSION"), "-workload-sim"), "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": arch()},
    }})
}

/// The node's heartbeat: its Lease, owned by the Node (so it goes with it).
fn lease(name: &str, node_uid: &str) -> serde_json::Value {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(Timestamp::now());
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}})
}

/// This machine's architecture as Kubernetes names it (`kubernetes.io/arch`).
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
