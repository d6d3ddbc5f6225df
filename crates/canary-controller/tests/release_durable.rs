//! A decision is durable before it acts, end to end on the workload simulator: while the controller's writes
//! of Canaries fail (as those of a replica that lost its leadership, or of a status the API server refuses),
//! a release that may raise its canary's weight raises nothing: its Kanary keeps the weight the recorded
//! status says. Once the writes go through again, the weight moves. Its own test binary (it runs the
//! simulator).

use e2e_support as support;

use canary_controller::api::canary::{Canary, Phase};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;
use support::Cluster;
use support::release::*;
use support::simulator::can_simulate;

/// The canary route's weight in the release's Kanary.
async fn canary_weight(cluster: &Cluster) -> Option<i64> {
    let kanary = cluster.kanaries("kanary.k8s.io", "v1").get(CANARY).await.ok()?;
    kanary.data["spec"]["routes"][1]["weight"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_weight_is_recorded_before_the_kanary_takes_it() {
    if !can_simulate() {
        return;
    }
    let cluster = Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(234, 16);
    // the controller's requests go through a proxy that can fail them
    let Some((faults, kubeconfig)) = cluster.fault_proxy("controller").await else {
        e2e_support::tools::skip("failing one replica's writes needs the tests' own control plane");
        return;
    };
    let mut controller = cluster.spawn_replica_with("controller", 15, &kubeconfig);
    controller.wait_for_log("became the leader").await;
    create_app(&cluster, 1).await;
    cluster.wait_rolled_out("app", "app", 120).await;
    // held by spec.paused, at weight 0
    create_canary(&cluster, json!({"paused": true, "steps": [{"setWeight": 30}, {"pause": {}}]})).await;
    let held = wait_phase(&cluster, &controller, Phase::Paused, 120).await;
    assert_eq!(held.weight, 0, "{held:#?}");
    support::eventually(60, "the Kanary at weight 0", || async { canary_weight(&cluster).await == Some(0) }).await;

    // the controller's writes of Canaries fail (its watch, open already, goes on): unpaused, the release
    // decides weight 30, cannot record it, and so must not act on it
    faults.fail_for(Duration::from_secs(15), 500, None, Some("canaries"));
    let canaries: Api<Canary> = cluster.api();
    canaries.patch(CANARY, &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": false}}))).await.unwrap();
    let mut log_seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let weight = canary_weight(&cluster).await;
        assert_eq!(
            weight,
            Some(0),
            "the Kanary took a weight its Canary's status does not hold:\n{}",
            controller.log()
        );
        log_seen |= controller.log().contains("writing the status");
    }
    assert!(log_seen, "the release was not decided while the writes failed:\n{}", controller.log());

    // the writes go through again: recorded, then acted on
    let moved = wait_release(&cluster, &controller, "at weight 30", 60, |r| r.weight == 30).await;
    assert!(matches!(moved.phase, Phase::Progressing | Phase::Paused), "{moved:#?}");
    support::eventually(30, "the Kanary at weight 30", || async { canary_weight(&cluster).await == Some(30) }).await;
    sim.stop().await;
    cluster.cleanup().await;
}
