//! Reliability on the real control plane (kube-apiserver, etcd and Kubernetes' controllers), for everything
//! that needs no running pod: while the controller works on Canaries and Kanaries, its API server restarts
//! (SIGKILL), its watches are dropped or expire (410 Gone), it answers only 500, 429 or 409 for two seconds,
//! another writer races it on its children, and the leader is killed mid-work. The faults the real server
//! cannot be asked for come from a fault-injecting proxy between the controller and it
//! (`e2e_support::faults`). After each: every Canary's Deployment has the round's image, every Kanary's
//! ConfigMap the round's weights, no child is duplicated or orphaned, the user's own objects are untouched,
//! and the controller neither exited nor panicked. (tests/reliability.rs does the same with running pods, on
//! workload-sim as the node.)

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::PostParams;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use support::faults::FaultProxy;
use support::fleet::{self, Fleet, list};
use support::{Cluster, Process};

/// Canaries, and Kanaries (alternating API groups), in the test's namespace.
const N: usize = 8;
const LEASE_SECONDS: u64 = 10;

struct World {
    cluster: Cluster,
    /// Between the controller replicas and the API server.
    proxy: FaultProxy,
    kubeconfig: PathBuf,
    fleet: Fleet,
}

impl World {
    async fn start(cluster: Option<Cluster>) -> Option<World> {
        let cluster = cluster?;
        let Some((proxy, kubeconfig)) = cluster.fault_proxy("replicas").await else {
            e2e_support::tools::skip_unsupported("faults through the proxy need the tests' control plane");
            return None;
        };
        cluster.install_crds().await;
        // the backends: Services alone (no pod runs here)
        for i in 0..N {
            for v in ["v1", "v2"] {
                let service = json!({"metadata": {"name": format!("b-{i}-{v}")}, "spec": {"selector": {"app": format!("b-{i}-{v}")},
                    "ports": [{"port": 80, "targetPort": 8080}]}});
                let pp = PostParams::default();
                cluster.api::<Service>().create(&pp, &serde_json::from_value(service).unwrap()).await.unwrap();
            }
        }
        let fleet = Fleet::create(&cluster, N).await;
        let mut world = World { cluster, proxy, kubeconfig, fleet };
        world.change_everything().await;
        Some(world)
    }

    fn replica(&self, name: &str) -> Process {
        self.cluster.spawn_replica_with(name, LEASE_SECONDS, &self.kubeconfig)
    }

    async fn change_everything(&mut self) {
        self.fleet.change_everything(&self.cluster).await;
    }

    async fn differences(&self) -> Vec<String> {
        let c = &self.cluster;
        let (deployments, config_maps) = (list::<Deployment>(c).await, list::<ConfigMap>(c).await);
        self.fleet.differences(&deployments, &config_maps, &list::<Service>(c).await)
    }

    async fn converges(&self, after: &str, controllers: &mut [&mut Process]) {
        fleet::converges(after, controllers, Duration::from_secs(90), || self.differences(), String::new).await;
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
    world.fleet.race_writer(&world.cluster).await;
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
