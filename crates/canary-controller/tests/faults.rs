//! Reliability on the real control plane (kube-apiserver, etcd and Kubernetes' controllers), for everything
//! that needs no running pod: while the controller works on Canaries and Kanaries, its API server restarts
//! (SIGKILL), its watches are dropped or expire (410 Gone), it answers only 500, 429 or 409 for two seconds,
//! another writer races it on its children, and the leader is killed mid-work. The faults the real server
//! cannot be asked for come from a fault-injecting proxy between the controller and it
//! (`e2e_support::faults`). After each: every Canary's Deployment has the round's image, every Kanary's
//! ConfigMap the round's weights, no child is duplicated or orphaned, the user's own objects are untouched,
//! and the controller neither exited nor panicked. (tests/reliability.rs does the same with running pods on
//! fake-apiserver and workload-sim, until workload-sim becomes the control plane's nodes.)

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::faults::FaultProxy;
use support::{Cluster, Process};

/// Canaries, and Kanaries (alternating API groups), in the test's namespace.
const N: usize = 8;
const LEASE_SECONDS: u64 = 10;

struct World {
    cluster: Cluster,
    /// Between the controller replicas and the API server.
    proxy: FaultProxy,
    kubeconfig: PathBuf,
    round: usize,
    /// What the user wrote in their own objects, which must never change.
    bystanders: BTreeMap<String, Value>,
}

fn group_of(i: usize) -> (&'static str, &'static str) {
    canary_controller::api::kanary::GROUPS[i % 2]
}

/// The weight of route v2 of every Kanary in `round`.
fn canary_weight(round: usize) -> i64 {
    (round as i64 * 7) % 50 + 1
}

/// What a user writes in an object (labels, annotations, owners, spec, data); the Deployment controller's
/// own annotations (`deployment.kubernetes.io/revision`) are the cluster's.
fn written_by_user(object: &Value) -> Value {
    let m = &object["metadata"];
    let mut annotations = m["annotations"].as_object().cloned().unwrap_or_default();
    annotations.retain(|key, _| !key.starts_with("deployment.kubernetes.io/"));
    json!([m["labels"], annotations, m["ownerReferences"], object["spec"], object["data"]])
}

impl World {
    async fn start(cluster: Option<Cluster>) -> Option<World> {
        let cluster = cluster?;
        let Some((proxy, kubeconfig)) = cluster.fault_proxy("replicas").await else {
            fake_apiserver::tools::skip_unsupported("faults through the proxy need the tests' control plane");
            return None;
        };
        cluster.install_crds().await;
        let mut world = World { cluster, proxy, kubeconfig, round: 0, bystanders: BTreeMap::new() };
        world.create_backends_and_bystanders().await;
        world.change_everything().await;
        Some(world)
    }

    fn replica(&self, name: &str) -> Process {
        self.cluster.spawn_replica_with(name, LEASE_SECONDS, &self.kubeconfig)
    }

    async fn create_backends_and_bystanders(&mut self) {
        let pp = PostParams::default();
        for i in 0..N {
            let target = json!({"metadata": {"name": format!("app-{i}")}, "spec": {"selector": {"matchLabels": {"app": format!("app-{i}")}},
                "template": {"metadata": {"labels": {"app": format!("app-{i}")}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}});
            self.cluster.api::<Deployment>().create(&pp, &serde_json::from_value(target).unwrap()).await.unwrap();
            for v in ["v1", "v2"] {
                let service = json!({"metadata": {"name": format!("b-{i}-{v}")}, "spec": {"selector": {"app": format!("b-{i}-{v}")},
                    "ports": [{"port": 80, "targetPort": 8080}]}});
                self.cluster.api::<Service>().create(&pp, &serde_json::from_value(service).unwrap()).await.unwrap();
            }
        }
        // the user's own objects, with names the controller could be tempted by
        let cm = json!({"metadata": {"name": "app-0-canary-config"}, "data": {"keep": "me"}});
        let cm = self.cluster.api::<ConfigMap>().create(&pp, &serde_json::from_value(cm).unwrap()).await.unwrap();
        let user = json!({"metadata": {"name": "user-app", "labels": {"canary": "true"}}, "spec": {"selector": {"matchLabels": {"app": "user"}},
            "template": {"metadata": {"labels": {"app": "user"}}, "spec": {"containers": [{"name": "app", "image": "user:1"}]}}}});
        let user = self.cluster.api::<Deployment>().create(&pp, &serde_json::from_value(user).unwrap()).await.unwrap();
        self.bystanders
            .insert("configmaps/app-0-canary-config".into(), written_by_user(&serde_json::to_value(cm).unwrap()));
        self.bystanders.insert("deployments/user-app".into(), written_by_user(&serde_json::to_value(user).unwrap()));
    }

    /// Starts a new round: every Canary gets a new image and every Kanary new weights.
    async fn change_everything(&mut self) {
        self.round += 1;
        let pp = PatchParams::apply("e2e").force();
        for i in 0..N {
            let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": format!("c-{i}")},
                "spec": {"targetDeploymentName": format!("app-{i}"), "targetContainers": [{"name": "app", "image": format!("app:2-{}", self.round)}]}});
            let ar = kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&());
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.cluster.client.clone(), &self.cluster.namespace, &ar);
            api.patch(&format!("c-{i}"), &pp, &Patch::Apply(canary)).await.unwrap();
            let (group, version) = group_of(i);
            let w = canary_weight(self.round);
            let kanary = json!({"apiVersion": format!("{group}/{version}"), "kind": "Kanary", "metadata": {"name": format!("k-{i}")},
                "spec": {"destination": format!("front-{i}"), "routes": [
                    {"backend": {"serviceName": format!("b-{i}-v1"), "servicePort": 80}, "weight": 100 - w},
                    {"backend": {"serviceName": format!("b-{i}-v2"), "servicePort": 80}, "weight": w}]}});
            let ar = canary_controller::api::kanary::api_resource(group, version);
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.cluster.client.clone(), &self.cluster.namespace, &ar);
            api.patch(&format!("k-{i}"), &pp, &Patch::Apply(kanary)).await.unwrap();
        }
    }

    /// Objects of a kind in the test's namespace, as JSON (read as the admin, directly: not through the proxy).
    async fn list<K>(&self) -> Vec<Value>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let list = self.cluster.api::<K>().list(&ListParams::default()).await.unwrap();
        list.items.iter().map(|o| serde_json::to_value(o).unwrap()).collect()
    }

    /// What is not yet as it should be at the end of this round (empty when everything is).
    async fn differences(&self) -> Vec<String> {
        let mut wrong = vec![];
        let name = |o: &Value| o["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let deployments = self.list::<Deployment>().await;
        let config_maps = self.list::<ConfigMap>().await;
        let services = self.list::<Service>().await;
        let owned = |o: &Value| {
            let owners = o["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            owners.iter().filter(|r| r["controller"] == true && r["kind"] != "ReplicaSet").count()
        };
        let w = canary_weight(self.round);
        for i in 0..N {
            let image = format!("app:2-{}", self.round);
            let canary = deployments.iter().find(|d| name(d) == format!("app-{i}-canary"));
            if canary.is_none_or(|d| d["spec"]["template"]["spec"]["containers"][0]["image"] != image.as_str()) {
                wrong.push(format!("app-{i}-canary does not run {image}"));
            }
            let config = config_maps.iter().find(|c| name(c) == format!("k-{i}-config"));
            let weights = config.and_then(|c| c["data"]["weights.map"].as_str()).unwrap_or_default();
            if !weights.starts_with(&format!("t0 {}\n", 100 - w)) {
                wrong.push(format!("k-{i}-config has not got weights {}/{w}: {weights:?}", 100 - w));
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
        let canaries = count(&deployments, &|d| name(d).ends_with("-canary"));
        let proxies = count(&deployments, &|d| name(d).ends_with("-haproxy"));
        let configs = count(&config_maps, &|_| true);
        if (canaries, proxies, configs) != (N, N, N) {
            wrong.push(format!(
                "children: {canaries} canary Deployments, {proxies} proxies, {configs} ConfigMaps (want {N} each)"
            ));
        }
        for (key, written) in &self.bystanders {
            let (plural, object) = key.split_once('/').unwrap();
            let objects = if plural == "configmaps" { &config_maps } else { &deployments };
            let now = objects.iter().find(|o| name(o) == object);
            if now.map(written_by_user).as_ref() != Some(written) {
                wrong.push(format!("the user's {key} was touched"));
            }
            let managers = now.and_then(|o| o["metadata"]["managedFields"].as_array().cloned()).unwrap_or_default();
            if managers.iter().any(|m| m["manager"] == canary_controller::report::FIELD_MANAGER) {
                wrong.push(format!("the controller wrote to the user's {key}"));
            }
        }
        wrong
    }

    async fn converges(&self, after: &str, controllers: &mut [&mut Process]) {
        let start = Instant::now();
        loop {
            let wrong = self.differences().await;
            if wrong.is_empty() {
                eprintln!("{after}: converged in {:?}", start.elapsed());
                break;
            }
            for c in controllers.iter_mut() {
                if let Ok(Some(status)) = c.child.try_wait() {
                    panic!("after {after}: the controller exited ({status}):\n{}", c.log());
                }
            }
            if start.elapsed() > Duration::from_secs(90) {
                let logs: Vec<String> = controllers.iter().map(|c| c.log()).collect();
                panic!(
                    "after {after}, not converged: {wrong:?}\nlogs:\n{}\n--- not converged: {wrong:?}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for c in controllers.iter() {
            assert!(!c.log().contains("panicked"), "after {after}, a panic:\n{}", c.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_through_restarts_lost_watches_error_bursts_and_racing_writers() {
    // the API server is restarted: a control plane of the test's own
    let Some(mut world) = World::start(Cluster::start_own().await).await else { return };
    let mut controller = world.replica("a");
    world.converges("start", &mut [&mut controller]).await;

    // changes made while the API server is down are impossible; made after it is back, they reach the
    // controller only if it watches again
    world.cluster.restart_api_server().await;
    world.change_everything().await;
    world.converges("an API server restart", &mut [&mut controller]).await;

    world.change_everything().await;
    world.proxy.drop_watches();
    world.converges("dropped watches", &mut [&mut controller]).await;

    world.change_everything().await;
    world.proxy.expire_watches();
    world.converges("expired watches (410, relist)", &mut [&mut controller]).await;

    // every request of the controller fails for two seconds
    for (code, retry_after) in [(500, None), (429, Some(1)), (409, None)] {
        world.change_everything().await;
        world.proxy.fail_for(Duration::from_secs(2), code, retry_after, None);
        world.converges(&format!("two seconds of {code}s"), &mut [&mut controller]).await;
    }

    // another writer edits the children while the controller applies them
    world.change_everything().await;
    for i in 0..N {
        let deployments: Api<Deployment> = world.cluster.api();
        let edit =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "someone-else:1"}]}}}});
        let _ = deployments.patch(&format!("app-{i}-canary"), &PatchParams::default(), &Patch::Strategic(edit)).await;
        let cms: Api<ConfigMap> = world.cluster.api();
        let edit = json!({"data": {"weights.map": "t0 1\n"}});
        let _ = cms.patch(&format!("k-{i}-config"), &PatchParams::default(), &Patch::Merge(edit)).await;
    }
    world.converges("a racing writer", &mut [&mut controller]).await;
    world.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_finishes_the_work_when_the_leader_is_killed_mid_work() {
    let Some(mut world) = World::start(Some(Cluster::start().await)).await else { return };
    let mut a = world.replica("a");
    a.wait_for_log("became the leader").await;
    let mut b = world.replica("b");
    b.wait_for_log("waiting to become the leader").await;
    world.converges("start", &mut [&mut a, &mut b]).await;

    // slow API responses keep the leader busy, so that it is killed in the middle of the work
    world.proxy.set_latency(Duration::from_millis(200));
    world.change_everything().await;
    a.child.start_kill().unwrap();
    let _ = a.child.wait().await;
    world.proxy.set_latency(Duration::ZERO);
    world.converges("the leader killed mid-work", &mut [&mut b]).await;
    assert!(b.log().contains("became the leader"));
    world.cluster.cleanup().await;
}
