//! IPv6 end to end, on the tests' own control plane with workload-sim as its node (as root): a backend of
//! the IPv6 family reached through the controller's proxy. Its own test binary, so that it does not start a
//! control plane while the traffic test loads the machine.

use e2e_support as support;

use kube::api::{ListParams, PostParams};
use serde_json::json;
use support::kanary::{env_with_simulator, kanary_yaml};
use support::simulator::can_simulate;
use support::traffic::{assert_share, by_backend, drive};

/// The Kanary's proxy Deployment.
const PROXY: &str = "simple-kanary-rule-haproxy";

/// IPv6 end to end on the node: a backend Service of the IPv6 family only gets an IPv6 EndpointSlice from
/// Kubernetes' EndpointSlice controller (its pods' fd00:10:244::/64 addresses), the controller makes them the
/// proxy's servers, and HAProxy in the proxy pods reaches them over IPv6; connections to the destination
/// (an IPv4 Service) are split between the IPv4 and the IPv6 backend, none failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_of_the_ipv6_family_is_served_over_ipv6() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    if !can_simulate() {
        return;
    }
    let (e, sim) = env_with_simulator(222, 16).await;
    e.cluster.create_backend("v4", 1, None).await;
    let labels = json!({"app": "v6"});
    let deployment = json!({"metadata": {"name": "v6"}, "spec": {"replicas": 1, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [
            {"name": "echo", "image": "echo:v6", "ports": [{"containerPort": 8080}]}]}}}});
    let service = json!({"metadata": {"name": "v6"}, "spec": {"selector": labels, "ipFamilies": ["IPv6"],
        "ipFamilyPolicy": "SingleStack", "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}});
    let pp = PostParams::default();
    e.cluster.api::<Deployment>().create(&pp, &serde_json::from_value(deployment).unwrap()).await.unwrap();
    e.cluster.api::<Service>().create(&pp, &serde_json::from_value(service).unwrap()).await.unwrap();
    let route = |svc: &str, w: i64| json!({"backend": {"serviceName": svc, "servicePort": "tcp"}, "weight": w});
    let kanaries = e.kanaries("kanary.k8s.io", "v1");
    let ky = kanary_yaml("kanary.k8s.io/v1", json!([route("v4", 50), route("v6", 50)]));
    kanaries.create(&pp, &ky).await.unwrap();
    for name in ["v4", "v6"] {
        e.cluster.wait_rolled_out(name, name, 60).await;
    }
    let slices = e.cluster.api::<EndpointSlice>();
    let listed = slices.list(&ListParams::default().labels("kubernetes.io/service-name=v6")).await.unwrap().items;
    let families: Vec<&str> = listed.iter().map(|s| s.address_type.as_str()).collect();
    assert_eq!(families, ["IPv6"], "{listed:?}");
    let address = listed[0].endpoints[0].addresses[0].clone();
    assert!(address.starts_with("fd00:10:244::"), "{address}");
    e.wait_config("simple-kanary-rule", "the IPv6 pod a server", |c| c.contains(address.as_str())).await;
    e.cluster.wait_rolled_out(PROXY, "myapp", 120).await;
    e.cluster.wait_synced(&kanaries, "simple-kanary-rule", 60).await;
    let listen = e.cluster.service_address("myapp", 80).await;
    let tally = by_backend(drive(listen, 400, 8).await);
    eprintln!("50/50 over IPv4 and IPv6 backends: {tally:?}");
    assert_eq!(tally.failures, 0, "{tally:?}\n{}", sim.log());
    assert_share(&tally, "v6", 50.0, 400);
    sim.stop().await;
    e.cluster.cleanup().await;
}
