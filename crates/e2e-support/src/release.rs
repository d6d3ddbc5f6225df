//! The workload of the progressive delivery tests, the demo and the release benchmark: the user's Deployment
//! and Service `app` on the simulator, whose pod template says which image fails (the canary copies the
//! template, so only the image makes a canary bad).

use crate::Cluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use serde_json::json;

/// The image of a release that fails: the simulator's built-in server resets 20 % of its connections.
pub const BAD_IMAGE: &str = "echo:bad";

/// Deployment and Service `app` (port `tcp` 80 -> 8080), `replicas` pods of the built-in server echo:v1.
pub async fn create_app(cluster: &Cluster, replicas: i32) {
    let deployment = json!({"metadata": {"name": "app"}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"app": "app"}},
        "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{
            "name": "echo", "image": "echo:v1", "ports": [{"containerPort": 8080}],
            "env": [{"name": "SIM_FAILING_IMAGES", "value": format!("{BAD_IMAGE}=0.2")}]}]}}}});
    let service = json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"},
        "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}});
    let pp = PostParams::default();
    cluster.api::<Deployment>().create(&pp, &serde_json::from_value(deployment).unwrap()).await.unwrap();
    cluster.api::<Service>().create(&pp, &serde_json::from_value(service).unwrap()).await.unwrap();
}

/// Whether a client's answer came from a canary pod of `app`.
pub fn from_canary(answer: &str) -> bool {
    answer.contains("pod=app-canary-")
}
