//! Helpers of the Kanary end-to-end tests: a cluster with the controller running, backend Services and
//! EndpointSlices (the tests that run no pod write them), and waits on the
//! HAProxy config and the conditions.

use crate::{Cluster, Process, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};

pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

pub struct Env {
    pub cluster: Cluster,
    pub controller: Process,
}

/// On the test binary's control plane.
pub async fn env() -> Env {
    env_on(Cluster::start().await).await
}

/// On a cluster whose Pods run ([`Cluster::start_for_pods`]) with workload-sim as its node (started before
/// the controller, which then runs on the node: see [`Cluster::start_simulator`]).
pub async fn env_with_simulator(pod_network: u8, pod_limit: usize) -> (Env, crate::simulator::Simulator) {
    let cluster = Cluster::start_for_pods().await;
    let simulator = cluster.start_simulator(pod_network, pod_limit);
    (env_on(cluster).await, simulator)
}

async fn env_on(cluster: Cluster) -> Env {
    cluster.install_crds().await;
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    Env { cluster, controller }
}

impl Env {
    pub fn kanaries(&self, group: &str, version: &str) -> Api<DynamicObject> {
        self.cluster.kanaries(group, version)
    }

    /// Services myapp-v1 (port `http` 80 -> 8080) and myapp-v2 (9090 -> 8080), as in examples/simple-stack.yml.
    pub async fn backend_services(&self) {
        let svc = |name: &str, port: Value| -> Service {
            serde_json::from_value(
                json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [port]}}),
            )
            .unwrap()
        };
        let services: Api<Service> = self.cluster.api();
        services
            .create(&PostParams::default(), &svc("myapp-v1", json!({"name": "http", "port": 80, "targetPort": 8080})))
            .await
            .unwrap();
        services
            .create(&PostParams::default(), &svc("myapp-v2", json!({"port": 9090, "targetPort": 8080})))
            .await
            .unwrap();
    }

    /// Writes (creates or replaces) the EndpointSlice of a Service: (pod name, ip, ready) endpoints.
    pub async fn endpoints(&self, service: &str, port_name: &str, port: i32, pods: &[(&str, &str, bool)]) {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-abc"), "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": pods.iter().map(|(pod, ip, ready)| json!({
                "addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": pod}
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        let slices: Api<EndpointSlice> = self.cluster.api();
        slices
            .patch(&format!("{service}-abc"), &PatchParams::apply("test").force(), &Patch::Apply(slice))
            .await
            .unwrap();
    }

    /// The weight of a route of a Kanary as the controller's `/metrics` reports it.
    pub async fn route_weight(&self, group: &str, kanary: &str, service: &str) -> Option<f64> {
        let ns = &self.cluster.namespace;
        let labels = format!("group=\"{group}\",namespace=\"{ns}\",kanary=\"{kanary}\",service=\"{service}\"");
        self.controller.metric(&format!("canary_controller_kanary_route_weight{{{labels}}}")).await
    }

    pub async fn config(&self, name: &str) -> Option<String> {
        let cms: Api<ConfigMap> = self.cluster.api();
        cms.get_opt(&format!("{name}-config")).await.unwrap()?.data?.get("haproxy.cfg").cloned()
    }

    /// The proxy's weights map (`t<i>` cumulative threshold, `w<i>` weight of route `i`).
    pub async fn weights(&self, name: &str) -> Option<String> {
        let cms: Api<ConfigMap> = self.cluster.api();
        cms.get_opt(&format!("{name}-config")).await.unwrap()?.data?.get("weights.map").cloned()
    }

    pub async fn wait_weights(&self, name: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        eventually(10, what, || async { self.weights(name).await.is_some_and(|c| check(&c)) }).await;
        self.weights(name).await.unwrap()
    }

    pub async fn wait_config(&self, name: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        eventually(10, what, || async { self.config(name).await.is_some_and(|c| check(&c)) }).await;
        self.config(name).await.unwrap()
    }

    pub async fn condition(
        &self,
        kanaries: &Api<DynamicObject>,
        name: &str,
        type_: &str,
    ) -> Option<(String, String, String)> {
        let k = kanaries.get(name).await.unwrap();
        let c = k.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
        Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into(), c["message"].as_str()?.into()))
    }

    pub async fn wait_condition(
        &self,
        kanaries: &Api<DynamicObject>,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> String {
        let what = format!("{name} condition {type_}={status} ({reason})");
        eventually(10, &what, || async {
            self.condition(kanaries, name, type_).await.is_some_and(|(s, r, _)| s == status && r == reason)
        })
        .await;
        self.condition(kanaries, name, type_).await.unwrap().2
    }

    pub async fn warnings(&self, reason: &str) -> usize {
        let events: Api<Event> = self.cluster.api();
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
            .count()
    }
}

/// `haproxy -c` on a rendered config (skipped outside CI when haproxy is missing).
pub fn haproxy_accepts(config: &str) {
    if !crate::tools::available("haproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    // the weights map the config names, here (its content does not matter to the check)
    let map = dir.path().join("weights.map");
    std::fs::write(&map, "").unwrap();
    std::fs::write(
        &path,
        config.replace(
            &format!("{}/weights.map", canary_controller::dataplane::haproxy::RUNTIME_DIR),
            map.to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().unwrap();
    assert!(out.status.success(), "haproxy -c rejected:\n{config}\n{}", String::from_utf8_lossy(&out.stderr));
}

pub fn kanary_yaml(group_version: &str, routes: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": group_version, "kind": "Kanary", "metadata": {"name": "simple-kanary-rule"},
        "spec": {"destination": "myapp", "routes": routes}}),
    )
    .unwrap()
}

impl Cluster {
    /// The Kanaries of group `group` (version `version`) in the test's namespace.
    pub fn kanaries(&self, group: &str, version: &str) -> Api<DynamicObject> {
        let ar = canary_controller::api::kanary::api_resource(group, version);
        Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
    }

    /// The revision of the data plane Kanary `name`'s ConfigMap asks for.
    pub async fn desired_revision(&self, name: &str) -> Option<String> {
        let cms: Api<ConfigMap> = self.api();
        let json = cms.get_opt(&format!("{name}-config")).await.unwrap()?.data?.get("dataplane.json").cloned()?;
        let plane: canary_controller::dataplane::DataPlane = serde_json::from_str(&json).ok()?;
        Some(plane.revision())
    }

    /// Waits up to `secs` seconds until every proxy pod of Kanary `name` serves what its ConfigMap asks for:
    /// its status says so (DataPlaneSynced, for the ConfigMap's revision). The revision served.
    pub async fn wait_synced(&self, kanaries: &Api<DynamicObject>, name: &str, secs: u64) -> String {
        let what = format!("every proxy pod of {name} serves its ConfigMap's data plane (DataPlaneSynced)");
        eventually(secs, &what, || async {
            let Some(revision) = self.desired_revision(name).await else { return false };
            let status = kanaries.get(name).await.unwrap().data["status"].clone();
            let synced = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "DataPlaneSynced" && c["status"] == "True");
            synced && status["dataPlaneRevision"] == revision.as_str()
        })
        .await;
        self.desired_revision(name).await.unwrap()
    }
}
