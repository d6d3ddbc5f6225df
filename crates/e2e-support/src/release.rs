//! What the progressive delivery tests, the demo and the release benchmark share: the user's Deployment and
//! Service `app` on the simulator, whose pod template says which image fails (the canary copies the
//! template, so only the image makes a canary bad); Canary `web` in front of it; steady raw TCP load; and
//! waiting on a release's phase (with what the release, its Kanary and the controller show when it does not
//! come).

use crate::traffic::{Exchange, Tally, steady_load_of};
use crate::{Cluster, Process};
use canary_controller::api::canary::{Canary, Phase, ReleaseStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The image of a release that fails: the simulator's built-in server resets 20 % of its connections.
pub const BAD_IMAGE: &str = "echo:bad";

/// Deployment and Service `app` (port `tcp` 80 -> 8080), `replicas` pods of the built-in server echo:v1.
pub async fn create_app(cluster: &Cluster, replicas: i32) {
    create_app_with(cluster, replicas, json!([{"name": "SIM_FAILING_IMAGES", "value": format!("{BAD_IMAGE}=0.2")}]))
        .await
}

/// [`create_app`] with the container's environment `env` (which images fail or are slow).
pub async fn create_app_with(cluster: &Cluster, replicas: i32, env: serde_json::Value) {
    let deployment = json!({"metadata": {"name": "app"}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"app": "app"}},
        "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{
            "name": "echo", "image": "echo:v1", "ports": [{"containerPort": 8080}], "env": env}]}}}});
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

pub const CANARY: &str = "web";

/// Steady raw TCP load (4 clients, a connection every 40 ms each) through `target` while `work` runs.
pub async fn under_load<T, F: std::future::Future<Output = T>>(target: std::net::SocketAddr, work: F) -> (Tally, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load_of(Exchange::Line, target, 4, Duration::from_millis(40), stop.clone()));
    let out = work.await;
    stop.store(true, Ordering::Relaxed);
    (load.await.unwrap(), out)
}

/// Creates Canary `web` of the target `app` (canary image echo:v2, 1 replica) with traffic from Service
/// `app` through `app-front`, plus the fields of `spec`; returns the front Service's address once its proxy
/// runs.
pub async fn create_canary(cluster: &Cluster, spec: serde_json::Value) -> std::net::SocketAddr {
    let mut canary = json!({
        "apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": CANARY},
        "spec": {"targetDeploymentName": "app", "targetContainers": [{"name": "echo", "image": "echo:v2"}],
            "replicas": 1, "traffic": {"service": "app", "frontService": "app-front"}}});
    for (field, value) in spec.as_object().expect("spec fields") {
        canary["spec"][field] = value.clone();
    }
    let canaries: Api<Canary> = cluster.api();
    canaries.create(&PostParams::default(), &serde_json::from_value(canary).unwrap()).await.unwrap();
    let front = cluster.service_address("app-front", 80).await;
    cluster.wait_rolled_out("web-haproxy", "app-front", 120).await;
    front
}

/// Starts a release of `image` (container `echo` of the Canary).
pub async fn set_image(canaries: &Api<Canary>, image: &str) {
    let patch = json!({"spec": {"targetContainers": [{"name": "echo", "image": image}]}});
    let params = kube::api::PatchParams::default();
    canaries.patch(CANARY, &params, &kube::api::Patch::Merge(patch)).await.unwrap();
}

pub async fn release(canaries: &Api<Canary>) -> Option<ReleaseStatus> {
    canaries.get(CANARY).await.ok()?.status?.release
}

/// Waits up to `secs` for the release to reach `phase` (see [`wait_release`]).
pub async fn wait_phase(cluster: &Cluster, controller: &Process, phase: Phase, secs: u64) -> ReleaseStatus {
    wait_release(cluster, controller, &format!("{phase:?}"), secs, |r| r.phase == phase).await
}

/// Waits up to `secs` for the release to be `what` (`matches`) and returns it as it was then (a later read
/// could show a later state); panics with the release, its Kanary and the tail of `controller`'s log.
pub async fn wait_release(
    cluster: &Cluster,
    controller: &Process,
    what: &str,
    secs: u64,
    matches: impl Fn(&ReleaseStatus) -> bool,
) -> ReleaseStatus {
    let canaries: Api<Canary> = cluster.api();
    let reached = std::sync::Mutex::new(None);
    crate::within(secs, || async {
        let found = release(&canaries).await.filter(|r| matches(r));
        let found_it = found.is_some();
        *reached.lock().unwrap() = found;
        found_it
    })
    .await;
    if let Some(release) = reached.into_inner().unwrap() {
        return release;
    }
    let now = release(&canaries).await;
    let kanary = cluster.kanaries("kanary.k8s.io", "v1").get(CANARY).await.map(|k| k.data);
    let log = controller.log();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    panic!("the release was not {what} within {secs} s: {now:#?}\nits Kanary: {kanary:#?}\ncontroller: {tail:#?}");
}

/// Asks the release for `value` (resume, promote, abort, retry) the way people do: `kubectl annotate`.
pub async fn request(cluster: &Cluster, value: &str) {
    let annotation = format!("{}={value}", canary_controller::names::REQUEST_ANNOTATION);
    kubectl_ok(cluster, &["annotate", "canary", CANARY, &annotation, "--overwrite"]).await;
}

/// Runs real kubectl in the test's namespace and asserts it succeeded.
pub async fn kubectl_ok(cluster: &Cluster, args: &[&str]) {
    let args: Vec<&str> = args.iter().copied().chain(["-n", &cluster.namespace]).collect();
    let out = cluster.kubectl(&args, None).await.expect("kubectl is installed (make setup)");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub async fn canary_replicas(deployments: &Api<Deployment>) -> Option<i32> {
    deployments.get("app-canary").await.ok()?.spec?.replicas
}

/// The canary weight every proxy pod of the release's Kanary (`CANARY`, kanary.k8s.io) serves, as the
/// controller reads it (its status says DataPlaneSynced for its current spec); none while they are not in
/// sync or it cannot be read.
pub async fn served_weight(cluster: &Cluster) -> Option<i32> {
    let kanary = cluster.kanaries("kanary.k8s.io", "v1").get(CANARY).await.ok()?;
    let kanary: canary_controller::api::kanary::Kanary = serde_json::from_value(json!(kanary)).ok()?;
    canary_controller::canary::traffic::served_weight(&canary_controller::runtime::caches::CachedKanary::from(kanary))
}
