//! End-to-end: leader election between replicas of the real binary. One replica reconciles; a standby takes
//! over within the lease duration when the leader dies or shuts down; a leader that loses its Lease stops.

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Cluster, Process, eventually};

const LEASE_SECONDS: u64 = 3;

struct Env {
    cluster: Cluster,
    deployments: Api<Deployment>,
    canaries: Api<kube::core::DynamicObject>,
}

async fn env() -> Env {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(target).unwrap()).await.unwrap();
    let ar = kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&());
    let canaries = Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar);
    Env { cluster, deployments, canaries }
}

impl Env {
    fn replica(&self, identity: &str) -> Process {
        self.cluster.spawn_replica(identity, LEASE_SECONDS)
    }

    /// Sets the canary image of Canary `c` (creating it) and waits until `web-canary` runs it.
    async fn roll_canary_to(&self, image: &str) {
        let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": "c"},
            "spec": {"targetDeploymentName": "web", "targetContainers": [{"name": "web", "image": image}]}});
        self.canaries.patch("c", &PatchParams::apply("e2e").force(), &Patch::Apply(canary)).await.unwrap();
        eventually(10, &format!("web-canary to run {image}"), || async {
            let d = self.deployments.get_opt("web-canary").await.unwrap();
            d.and_then(|d| d.spec?.template.spec?.containers.first()?.image.clone()).as_deref() == Some(image)
        })
        .await;
    }

    async fn holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace);
        leases.get_opt("canary-controller-leader").await.unwrap()?.spec?.holder_identity
    }
}

async fn reconciles(replica: &Process) -> f64 {
    replica.metric("canary_controller_reconciles_total{controller=\"canary\"}").await.unwrap_or(0.0)
}

#[tokio::test]
async fn one_replica_reconciles_and_a_standby_takes_over_when_it_dies() {
    let env = env().await;
    let (mut a, mut b) = env.cluster.leader_and_standby(LEASE_SECONDS).await;
    assert_eq!(env.holder().await.as_deref(), Some("a"));

    env.roll_canary_to("web:2").await;
    assert_eq!(a.metric("canary_controller_leader").await, Some(1.0));
    assert_eq!(b.metric("canary_controller_leader").await, Some(0.0));
    assert!(reconciles(&a).await >= 1.0);
    assert_eq!(reconciles(&b).await, 0.0, "the standby must not reconcile:\n{}", b.log());
    assert_eq!(
        a.metric("canary_controller_managed_objects{resource=\"canaries.canary.k8s.wantedly.com\"}").await,
        Some(1.0)
    );

    // killed without a chance to release the Lease: the standby waits for it to expire
    a.child.start_kill().unwrap();
    b.wait_for_log("became the leader").await;
    assert_eq!(env.holder().await.as_deref(), Some("b"));
    env.roll_canary_to("web:3").await;
    assert_eq!(b.metric("canary_controller_leader").await, Some(1.0));
    env.cluster.cleanup().await;
}

#[tokio::test]
async fn a_leader_that_shuts_down_releases_the_lease() {
    let env = env().await;
    let (mut a, mut b) = env.cluster.leader_and_standby(LEASE_SECONDS).await;
    let status = a.terminate().await;
    assert!(status.success(), "{}", a.log());
    let lease: Api<Lease> = Api::namespaced(env.cluster.client.clone(), &env.cluster.namespace);
    let spec = lease.get("canary-controller-leader").await.unwrap().spec.unwrap_or_default();
    assert!(spec.holder_identity.as_deref().is_none_or(|h| h == "b"), "the Lease was not released: {spec:?}");
    b.wait_for_log("became the leader").await;
    env.roll_canary_to("web:2").await;
    env.cluster.cleanup().await;
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_its_controllers_and_exits() {
    let env = env().await;
    let mut a = env.replica("a");
    a.wait_for_log("became the leader").await;
    env.roll_canary_to("web:2").await;

    // someone else takes the Lease (as a replica with a skewed clock could)
    // a MicroTime (the real API server refuses any other format; fake-apiserver did not check)
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
    let stolen = json!({"spec": {"holderIdentity": "intruder", "renewTime": now, "acquireTime": now, "leaseDurationSeconds": 60}});
    let leases: Api<Lease> = Api::namespaced(env.cluster.client.clone(), &env.cluster.namespace);
    leases.patch("canary-controller-leader", &PatchParams::default(), &Patch::Merge(stolen)).await.unwrap();

    let status = a.exited(LEASE_SECONDS + 5).await.unwrap_or_else(|| panic!("still running:\n{}", a.log()));
    assert!(!status.success());
    assert!(a.log().contains("lost the leader Lease"), "{}", a.log());
    assert_eq!(env.holder().await.as_deref(), Some("intruder"));
    env.cluster.cleanup().await;
}

/// A leader cut off from its Lease (its Lease requests fail; the rest of the API answers) stops reconciling
/// when no renewal succeeded within the renew deadline, before the Lease expires and a standby takes over:
/// never two leaders reconciling at once. It exits, to come back as a standby.
#[tokio::test]
async fn a_leader_cut_off_from_its_lease_stops_before_a_standby_takes_over() {
    let env = env().await;
    let Some((proxy, kubeconfig_a)) = env.cluster.fault_proxy("a").await else {
        e2e_support::tools::skip_unsupported("faults on one replica's requests need the tests' control plane");
        return;
    };
    let mut a = env.cluster.spawn_replica_with("a", LEASE_SECONDS, &kubeconfig_a);
    a.wait_for_log("became the leader").await;
    let mut b = env.replica("b");
    b.wait_for_log("waiting to become the leader").await;
    env.roll_canary_to("web:2").await;

    // replica a's Lease requests fail; the rest of its requests, and all of b's, pass
    proxy.fail_for(std::time::Duration::from_secs(30), 500, None, Some("leases"));
    b.wait_for_log("became the leader").await;
    let status = a.exited(10).await.unwrap_or_else(|| panic!("the cut-off leader still runs:\n{}", a.log()));
    assert!(!status.success());
    let stopped = a.log_time("stopped reconciling").unwrap_or_else(|| panic!("{}", a.log()));
    assert!(a.log().contains("within the renew deadline"), "{}", a.log());
    let took_over = b.log_time("became the leader").unwrap();
    assert!(
        stopped < took_over,
        "a stopped at {stopped}, after b became the leader at {took_over}:\n{}\n---\n{}",
        a.log(),
        b.log()
    );
    env.roll_canary_to("web:3").await;
    // counted when the reconcile ends (after its status write), a moment after the Deployment changed
    eventually(10, "b to count its reconciles", || async { reconciles(&b).await >= 1.0 }).await;
    proxy.fail_for(std::time::Duration::ZERO, 500, None, None);
    env.cluster.cleanup().await;
}
