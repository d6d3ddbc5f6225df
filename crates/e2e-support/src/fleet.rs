//! The Canaries and Kanaries the reliability tests drive through faults (`tests/faults.rs` on the control
//! plane, `tests/reliability.rs` with running pods): N of each in the test's namespace, changed all at once
//! round after round (a new image, new weights), beside the user's own objects with names the controller could
//! be tempted by; and what is not yet as it should be at the end of a round. Each test makes the backends
//! (`b-<i>-v1`, `b-<i>-v2`, Services on port 80) its own way.

use crate::Cluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub struct Fleet {
    /// Canaries, and as many Kanaries (alternating API groups).
    pub n: usize,
    pub round: usize,
    /// What the user wrote in their own objects (see [`written_by_user`]), which must never change.
    bystanders: BTreeMap<String, Value>,
}

/// The API group of Kanary `k-<i>`.
pub fn group_of(i: usize) -> (&'static str, &'static str) {
    canary_controller::api::kanary::GROUPS[i % 2]
}

/// The weight of route v2 of every Kanary in `round`.
pub fn canary_weight(round: usize) -> i64 {
    (round as i64 * 7) % 50 + 1
}

/// What a user writes in an object (labels, annotations, owners, spec, data); the cluster's own controllers
/// write the status and the Deployment controller its `deployment.kubernetes.io/` annotations.
pub fn written_by_user(object: &Value) -> Value {
    let m = &object["metadata"];
    let mut annotations = m["annotations"].as_object().cloned().unwrap_or_default();
    annotations.retain(|key, _| !key.starts_with("deployment.kubernetes.io/"));
    json!([m["labels"], annotations, m["ownerReferences"], object["spec"], object["data"]])
}

pub fn name(o: &Value) -> String {
    o["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

/// How many controller owners an object has.
pub fn owned(o: &Value) -> usize {
    let owners = o["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
    owners.iter().filter(|r| r["controller"] == true).count()
}

impl Fleet {
    /// Creates the targets (`app-<i>`) and the user's own objects.
    pub async fn create(cluster: &Cluster, n: usize) -> Fleet {
        let pp = PostParams::default();
        for i in 0..n {
            let target = json!({"metadata": {"name": format!("app-{i}")}, "spec": {"selector": {"matchLabels": {"app": format!("app-{i}")}},
                "template": {"metadata": {"labels": {"app": format!("app-{i}")}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}});
            cluster.api::<Deployment>().create(&pp, &serde_json::from_value(target).unwrap()).await.unwrap();
        }
        let cm = json!({"metadata": {"name": "app-0-canary-config"}, "data": {"keep": "me"}});
        let cm = cluster.api::<ConfigMap>().create(&pp, &serde_json::from_value(cm).unwrap()).await.unwrap();
        let user = json!({"metadata": {"name": "user-app", "labels": {"canary": "true"}}, "spec": {"selector": {"matchLabels": {"app": "user"}},
            "template": {"metadata": {"labels": {"app": "user"}}, "spec": {"containers": [{"name": "app", "image": "user:1"}]}}}});
        let user = cluster.api::<Deployment>().create(&pp, &serde_json::from_value(user).unwrap()).await.unwrap();
        let mut bystanders = BTreeMap::new();
        bystanders.insert("configmaps/app-0-canary-config".into(), written_by_user(&serde_json::to_value(cm).unwrap()));
        bystanders.insert("deployments/user-app".into(), written_by_user(&serde_json::to_value(user).unwrap()));
        Fleet { n, round: 0, bystanders }
    }

    /// Starts a new round: every Canary gets a new image and every Kanary new weights.
    pub async fn change_everything(&mut self, cluster: &Cluster) {
        self.round += 1;
        let pp = PatchParams::apply("e2e").force();
        for i in 0..self.n {
            let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": format!("c-{i}")},
                "spec": {"targetDeploymentName": format!("app-{i}"), "targetContainers": [{"name": "app", "image": format!("app:2-{}", self.round)}]}});
            let ar = kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&());
            let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar);
            api.patch(&format!("c-{i}"), &pp, &Patch::Apply(canary)).await.unwrap();
            let (group, version) = group_of(i);
            let w = canary_weight(self.round);
            let kanary = json!({"apiVersion": format!("{group}/{version}"), "kind": "Kanary", "metadata": {"name": format!("k-{i}")},
                "spec": {"destination": format!("front-{i}"), "routes": [
                    {"backend": {"serviceName": format!("b-{i}-v1"), "servicePort": 80}, "weight": 100 - w},
                    {"backend": {"serviceName": format!("b-{i}-v2"), "servicePort": 80}, "weight": w}]}});
            let ar = canary_controller::api::kanary::api_resource(group, version);
            let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar);
            api.patch(&format!("k-{i}"), &pp, &Patch::Apply(kanary)).await.unwrap();
        }
    }

    /// Another writer edits every child the controller applies (a canary Deployment's image, a proxy
    /// ConfigMap's weights and config), as the controller may be applying them.
    pub async fn race_writer(&self, cluster: &Cluster) {
        let (deployments, cms) = (cluster.api::<Deployment>(), cluster.api::<ConfigMap>());
        for i in 0..self.n {
            let edit =
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "someone-else:1"}]}}}});
            let pp = PatchParams::default();
            let _ = deployments.patch(&format!("app-{i}-canary"), &pp, &Patch::Strategic(edit)).await;
            let edit = json!({"data": {"weights.map": "t0 1\n", "haproxy.cfg": "global\n"}});
            let _ = cms.patch(&format!("k-{i}-config"), &pp, &Patch::Merge(edit)).await;
        }
    }

    /// What is not yet as it should be at the end of this round, of what every test checks: each canary
    /// Deployment's image, each proxy's weights, destination Service and Deployment, one child of each kind per
    /// object (no duplicate), and the user's objects untouched.
    pub fn differences(&self, deployments: &[Value], config_maps: &[Value], services: &[Value]) -> Vec<String> {
        let (n, mut wrong) = (self.n, vec![]);
        let w = canary_weight(self.round);
        for i in 0..n {
            let image = format!("app:2-{}", self.round);
            let canary = deployments.iter().find(|d| name(d) == format!("app-{i}-canary"));
            if canary.is_none_or(|d| d["spec"]["template"]["spec"]["containers"][0]["image"] != image.as_str()) {
                wrong.push(format!("app-{i}-canary does not run {image}"));
            }
            let config = config_maps.iter().find(|c| name(c) == format!("k-{i}-config"));
            let weights = config.and_then(|c| c["data"]["weights.map"].as_str()).unwrap_or_default();
            if !weights.starts_with(&format!("t0 {}\n", 100 - w)) {
                wrong.push(format!("k-{i}-config has not got weights {}/{w}", 100 - w));
            }
            if !deployments.iter().any(|d| name(d) == format!("k-{i}-haproxy") && owned(d) == 1) {
                wrong.push(format!("Deployment k-{i}-haproxy missing"));
            }
            if !services.iter().any(|s| name(s) == format!("front-{i}") && owned(s) == 1) {
                wrong.push(format!("Service front-{i} missing"));
            }
        }
        let count = |objects: &[Value], pred: &dyn Fn(&Value) -> bool| {
            objects.iter().filter(|o| owned(o) > 0 && pred(o)).count()
        };
        let canaries = count(deployments, &|d| name(d).ends_with("-canary"));
        let proxies = count(deployments, &|d| name(d).ends_with("-haproxy"));
        let configs = count(config_maps, &|_| true);
        if (canaries, proxies, configs) != (n, n, n) {
            wrong.push(format!(
                "children: {canaries} canary Deployments, {proxies} proxies, {configs} ConfigMaps (want {n} each)"
            ));
        }
        for (key, written) in &self.bystanders {
            let (plural, object) = key.split_once('/').unwrap();
            let objects = if plural == "configmaps" { config_maps } else { deployments };
            let now = objects.iter().find(|o| name(o) == object);
            if now.map(written_by_user).as_ref() != Some(written) {
                wrong.push(format!("the user's {key} was touched"));
            }
            let managers = now.and_then(|o| o["metadata"]["managedFields"].as_array().cloned()).unwrap_or_default();
            if managers.iter().any(|m| m["manager"] == canary_controller::names::FIELD_MANAGER) {
                wrong.push(format!("the controller wrote to the user's {key}"));
            }
        }
        wrong
    }
}

/// Objects of a kind in the test's namespace, as JSON, read as the admin (not through a fault proxy).
pub async fn list<K>(cluster: &Cluster) -> Vec<Value>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let list = cluster.api::<K>().list(&Default::default()).await.unwrap();
    list.items.iter().map(|o| serde_json::to_value(o).unwrap()).collect()
}

/// Waits up to `limit` until `differences` finds nothing wrong after `after`; fails when a controller exited
/// or panicked, or on time, with the controllers' logs and `context()` (what else ran).
pub async fn converges<F, Fut>(
    after: &str,
    controllers: &mut [&mut crate::Process],
    limit: std::time::Duration,
    differences: F,
    context: impl Fn() -> String,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let start = std::time::Instant::now();
    loop {
        let wrong = differences().await;
        if wrong.is_empty() {
            eprintln!("{after}: converged in {:?}", start.elapsed());
            break;
        }
        for c in controllers.iter_mut() {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("after {after}: the controller exited ({status}):\n{}", c.log());
            }
        }
        if start.elapsed() > limit {
            let logs: Vec<String> = controllers.iter().map(|c| c.log()).collect();
            // what is wrong comes last too: CI shows the end of a long output
            panic!(
                "after {after}, not converged: {wrong:?}\nlogs:\n{}\n{}\n--- after {after}, not converged in {:?}: {wrong:?}",
                logs.join("\n---\n"),
                context(),
                start.elapsed()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    for c in controllers.iter() {
        assert!(!c.log().contains("panicked"), "after {after}, a panic:\n{}", c.log());
    }
}
