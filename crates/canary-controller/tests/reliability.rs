//! Reliability of the real binary with running pods, on the tests' own control plane with workload-sim as
//! its node (so skipped against another cluster): while the controller works on many Canaries and Kanaries,
//! whose workloads really run (Kubernetes' own controllers make their ReplicaSets, Pods and EndpointSlices),
//! the API server restarts (for everyone: the simulator and Kubernetes' controllers too), the controller's
//! watches are dropped or expire (410, relist), it is answered only 500, 429 or 409 for two seconds (the
//! faults come from `e2e_support::faults` between the controller and the API server), another writer races it
//! on its children, and the leader is killed. After each: every
//! object converges (the canaries run the new image, every proxy runs the new weights on the backends' real
//! pods), with no duplicate or orphaned child, the user's own objects untouched, and no panic. Then hostile
//! input. The tests take turns: each runs some 70 pods on this machine.

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use support::faults::FaultProxy;
use support::fleet::{self, Fleet, list, name, owned};
use support::simulator::Simulator;
use support::{Cluster, Process};

/// Canaries, and Kanaries (alternating API groups), in the test's namespace.
const N: usize = 12;
/// One test at a time (see the module's doc).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough for the leader to ride out the 2-second outages below: it steps down when no renewal succeeded
/// for 5/6 of its lease (tests/leader.rs shows that with a 3-second lease).
const LEASE_SECONDS: u64 = 10;

struct World {
    cluster: Cluster,
    simulator: Simulator,
    /// Between the controller replicas and the API server.
    proxy: FaultProxy,
    kubeconfig: PathBuf,
    fleet: Fleet,
}

/// Whether a stored Deployment runs its latest spec on every replica (as `kubectl rollout status` decides).
fn rolled_out(d: &Value) -> bool {
    let (spec, status) = (&d["spec"], &d["status"]);
    let wanted = spec["replicas"].as_i64().unwrap_or(1);
    status["observedGeneration"] == d["metadata"]["generation"]
        && status["updatedReplicas"].as_i64() == Some(wanted)
        && status["availableReplicas"].as_i64() == Some(wanted)
        && status["replicas"].as_i64() == Some(wanted)
}

/// A Deployment's rollout as numbers: generation, observed generation, and spec/status/updated/ready/
/// available replicas (what a failure message needs, short enough to survive a truncated CI log).
fn rollout_summary(d: Option<&Value>) -> String {
    let Some(d) = d else { return "absent".into() };
    let status = &d["status"];
    format!(
        "generation {} observed {} replicas {}/{} updated {} ready {} available {}",
        d["metadata"]["generation"],
        status["observedGeneration"],
        status["replicas"],
        d["spec"]["replicas"],
        status["updatedReplicas"],
        status["readyReplicas"],
        status["availableReplicas"]
    )
}

impl World {
    /// A cluster with the simulator as its node, its host mirror 127.`pod_network` (one per test).
    async fn start(pod_network: u8) -> Option<World> {
        if !support::simulator::can_simulate() {
            return None;
        }
        let cluster = Cluster::start_for_pods().await;
        cluster.install_crds().await;
        let simulator = cluster.start_simulator(pod_network, 120);
        let Some((proxy, kubeconfig)) = cluster.fault_proxy("replicas").await else {
            e2e_support::tools::skip_unsupported("faults through the proxy need the tests' control plane");
            return None;
        };
        for i in 0..N {
            for v in ["v1", "v2"] {
                cluster.create_backend(&format!("b-{i}-{v}"), 1, None).await;
            }
        }
        let fleet = Fleet::create(&cluster, N).await;
        let mut world = World { cluster, simulator, proxy, kubeconfig, fleet };
        world.change_everything().await;
        Some(world)
    }

    async fn stop(self) {
        self.simulator.stop().await;
        self.cluster.cleanup().await;
    }

    fn replica(&self, name: &str) -> Process {
        self.cluster.spawn_replica_with(name, LEASE_SECONDS, &self.kubeconfig)
    }

    async fn change_everything(&mut self) {
        self.fleet.change_everything(&self.cluster).await;
    }

    /// What is not yet as it should be at the end of this round (empty when everything is): what
    /// [`Fleet::differences`] checks, no orphan, and every canary and proxy rolled out on running pods, every
    /// proxy's config holding its backends' ready pods.
    async fn differences(&self) -> Vec<String> {
        let c = &self.cluster;
        let (deployments, config_maps) = (list::<Deployment>(c).await, list::<ConfigMap>(c).await);
        let (services, pods) = (list::<Service>(c).await, list::<Pod>(c).await);
        let mut wrong = self.fleet.differences(&deployments, &config_maps, &services);
        let mut uids: Vec<String> = vec![];
        let canaries = kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&());
        let kanaries =
            canary_controller::api::kanary::GROUPS.map(|(g, v)| canary_controller::api::kanary::api_resource(g, v));
        for resource in std::iter::once(canaries).chain(kanaries) {
            let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.namespace, &resource);
            uids.extend(api.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|o| o.metadata.uid));
        }
        for o in deployments.iter().chain(&config_maps).chain(&services) {
            let alive = o["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|r| uids.iter().any(|u| r["uid"] == *u));
            if owned(o) > 0 && !alive {
                wrong.push(format!("orphan {}", name(o)));
            }
        }
        for i in 0..N {
            let canary = deployments.iter().find(|d| name(d) == format!("app-{i}-canary"));
            if canary.is_none_or(|d| !rolled_out(d)) {
                wrong.push(format!("app-{i}-canary is not rolled out: {}", rollout_summary(canary)));
            }
            let config = config_maps.iter().find(|c| name(c) == format!("k-{i}-config"));
            let config = config.and_then(|c| c["data"]["haproxy.cfg"].as_str()).unwrap_or_default();
            for v in ["v1", "v2"] {
                let backend = format!("b-{i}-{v}");
                let ready: Vec<&str> = pods
                    .iter()
                    .filter(|p| {
                        p["metadata"]["labels"]["app"] == backend.as_str()
                            && p["metadata"]["deletionTimestamp"].is_null()
                    })
                    .filter(|p| {
                        p["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                    .filter_map(|p| p["status"]["podIP"].as_str())
                    .collect();
                if ready.len() != 1 || !config.contains(&format!("{}:8080", ready[0])) {
                    wrong.push(format!("k-{i}-config has not got the ready pod of {backend} ({ready:?})"));
                }
            }
            let proxy = deployments.iter().find(|d| name(d) == format!("k-{i}-haproxy"));
            if proxy.is_none_or(|d| !rolled_out(d)) {
                wrong.push(format!("k-{i}-haproxy is not rolled out: {}", rollout_summary(proxy)));
            }
        }
        wrong
    }

    async fn converges(&self, after: &str, controllers: &mut [&mut Process]) {
        // some 70 pods start (each proxy pod with HAProxy and its agent): tens of seconds on 2 cores
        let context = || {
            let sim = self.simulator.log();
            let sim: Vec<&str> = sim.lines().rev().take(80).collect();
            format!("--- workload-sim (last lines, newest first):\n{}", sim.join("\n"))
        };
        fleet::converges(after, controllers, Duration::from_secs(90), || self.differences(), context).await;
    }
}

#[tokio::test]
async fn converges_through_restarts_lost_watches_error_bursts_and_racing_writers() {
    let _turn = TURN.lock().await;
    let Some(mut world) = World::start(230).await else { return };
    let mut controller = world.replica("a");
    world.converges("start", &mut [&mut controller]).await;

    world.change_everything().await;
    world.cluster.restart_api_server().await;
    world.converges("an API server restart", &mut [&mut controller]).await;

    world.change_everything().await;
    world.proxy.drop_watches();
    world.converges("dropped watches", &mut [&mut controller]).await;

    world.change_everything().await;
    world.proxy.expire_watches();
    world.converges("expired watches (410, relist)", &mut [&mut controller]).await;

    // every request fails for two seconds
    for (code, retry_after) in [(500, None), (429, Some(1)), (409, None)] {
        world.change_everything().await;
        world.proxy.fail_for(Duration::from_secs(2), code, retry_after, None);
        world.converges(&format!("two seconds of {code}s"), &mut [&mut controller]).await;
    }

    // another writer edits the children while the controller applies them
    world.change_everything().await;
    world.fleet.race_writer(&world.cluster).await;
    world.converges("a racing writer", &mut [&mut controller]).await;
    world.stop().await;
}

#[tokio::test]
async fn a_standby_finishes_the_work_when_the_leader_is_killed_mid_work() {
    let _turn = TURN.lock().await;
    let Some(mut world) = World::start(232).await else { return };
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
    world.stop().await;
}

#[tokio::test]
async fn hostile_input_is_rejected_with_the_field_named_and_changes_nothing_else() {
    let _turn = TURN.lock().await;
    let Some(world) = World::start(234).await else { return };
    let mut controller = world.replica("a");
    world.converges("start", &mut [&mut controller]).await;
    let client = world.cluster.client.clone();
    let ns = world.cluster.namespace.clone();
    let canaries: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&()),
    );
    let kanaries: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &canary_controller::api::kanary::api_resource("kanary.k8s.io", "v1"));
    let rejected = |result: Result<DynamicObject, kube::Error>| match result {
        Err(kube::Error::Api(e)) => (e.code, e.message),
        other => panic!("accepted: {other:?}"),
    };
    let canary = |name: &str, target: String, containers: Value| -> DynamicObject {
        serde_json::from_value(
            json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": name},
            "spec": {"targetDeploymentName": target, "targetContainers": containers}}),
        )
        .unwrap()
    };
    let kanary = |name: &str, routes: Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "metadata": {"name": name},
            "spec": {"destination": "hostile-front", "routes": routes}}))
        .unwrap()
    };
    let pp = PostParams::default();
    let app = json!([{"name": "app", "image": "app:9"}]);
    let cases: Vec<(&str, Result<DynamicObject, kube::Error>, &str)> = vec![
        (
            "a target name one past the limit",
            canaries.create(&pp, &canary("h1", "a".repeat(247), app.clone())).await,
            "spec.targetDeploymentName: Too long: may not be more than 246",
        ),
        (
            "a huge container list",
            canaries
                .create(&pp, &canary("h2", "app-0".into(), json!((0..65).map(|i| json!({"name": format!("c{i}"), "image": "x"})).collect::<Vec<_>>())))
                .await,
            "spec.targetContainers: Too many: 65: must have at most 64 items",
        ),
        (
            "an image with a line break",
            canaries.create(&pp, &canary("h3", "app-0".into(), json!([{"name": "app", "image": "x\n  command: [sh]"}]))).await,
            "spec.targetContainers[0].image",
        ),
        (
            "a directive in a service name",
            kanaries
                .create(&pp, &kanary("h4", json!([{"backend": {"serviceName": "b-0-v1\n    bind :1", "servicePort": 80}, "weight": 100}])))
                .await,
            "spec.routes[0].backend.serviceName",
        ),
        (
            "a weight of the wrong type",
            kanaries
                .create(&pp, &kanary("h5", json!([{"backend": {"serviceName": "b-0-v1", "servicePort": 80}, "weight": "all"}])))
                .await,
            "spec.routes[0].weight in body must be of type integer",
        ),
        (
            "a huge route list",
            kanaries
                .create(&pp, &kanary("h6", json!((0..17).map(|i| json!({"backend": {"serviceName": format!("s{i}"), "servicePort": 80}, "weight": 0})).collect::<Vec<_>>())))
                .await,
            "spec.routes: Too many: 17: must have at most 16 items",
        ),
    ];
    for (what, result, field) in cases {
        let (code, message) = rejected(result);
        assert_eq!(code, 422, "{what}: {message}");
        assert!(message.contains(field), "{what}: the message does not name {field:?}: {message}");
    }

    // a Kanary name at the limit works; one past it is rejected, naming the field and the reason
    let max = canary_controller::api::kanary::MAX_NAME_LENGTH;
    let routes = json!([{"backend": {"serviceName": "b-0-v1", "servicePort": 80}, "weight": 100}]);
    let mut at_limit = kanary(&"k".repeat(max), routes.clone());
    at_limit.data["spec"]["destination"] = json!("front-at-limit");
    kanaries.create(&pp, &at_limit).await.unwrap();
    let (code, message) = rejected(kanaries.create(&pp, &kanary(&"l".repeat(max + 1), routes)).await);
    assert_eq!(code, 422);
    assert!(message.contains("metadata.name: at most 55 characters (the proxy is named <name>-haproxy)"), "{message}");
    let configs: Api<ConfigMap> = world.cluster.api();
    support::eventually(10, "the proxy of the Kanary named at the limit", || async {
        configs.get_opt(&format!("{}-config", "k".repeat(max))).await.unwrap().is_some()
    })
    .await;
    kanaries.delete(&"k".repeat(max), &Default::default()).await.unwrap();
    support::eventually(10, "the proxy of the deleted Kanary collected", || async {
        configs.get_opt(&format!("{}-config", "k".repeat(max))).await.unwrap().is_none()
    })
    .await;
    // everything else is as it was
    world.converges("hostile input", &mut [&mut controller]).await;
    world.stop().await;
}
