//! `cargo bench -p canary-controller --bench churn`: what clients of a Kanary see while its backends and weights
//! change. On fake-apiserver with workload-sim (as root, with haproxy and kubectl, like the end-to-end tests):
//! a Kanary splits traffic between Deployments `stable` and `canary` (2 pods each); under steady load, 10 rounds
//! each replace every pod of the canary route (a rollout restart) and change the weights. Prints the failed
//! connections, the long-lived connections cut (those to the stable route, whose pods never change, are cut
//! only by the proxy) and the proxy pods started, against a baseline of the same load for as long with no
//! change. Asserts nothing.

use e2e_support::Cluster;
use e2e_support::simulator::can_simulate;
use e2e_support::traffic::{LongLived, Tally, long_lived, steady_load};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const ROUNDS: usize = 10;
const CLIENTS: usize = 8;
/// Each client makes a request this often: 400 connections per second in all.
const PERIOD: Duration = Duration::from_millis(20);
const PROXY: &str = "churn-haproxy";
/// Long-lived connections, each sending a line every `LONG_PERIOD`.
const LONG: usize = 10;
const LONG_PERIOD: Duration = Duration::from_millis(500);

async fn set_canary_weight(cluster: &Cluster, weight: i64) {
    let route = |svc: &str, w: i64| json!({"backend": {"serviceName": svc, "servicePort": "tcp"}, "weight": w});
    let kanary = json!({"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "metadata": {"name": "churn"},
        "spec": {"destination": "front", "routes": [route("stable", 100 - weight), route("canary", weight)]}});
    let ar = canary_controller::api::kanary::api_resource("kanary.k8s.io", "v1");
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar);
    api.patch("churn", &PatchParams::apply("bench").force(), &Patch::Apply(kanary)).await.unwrap();
}

/// Proxy pods the simulator has started so far (from its log).
fn proxy_pods_started(log: &str) -> usize {
    log.lines().filter(|l| l.contains("pod started") && l.contains(&format!("pod={PROXY}-"))).count()
}

fn row(what: &str, t: &Tally, long: &[LongLived], proxies: Option<usize>) {
    let per_10k = 10_000.0 * t.failures as f64 / t.total().max(1) as f64;
    let stable: Vec<LongLived> = long.iter().filter(|c| c.backend.contains("image=echo:stable")).cloned().collect();
    let cut = |cs: &[LongLived]| cs.iter().filter(|c| c.cut).count();
    let long = format!("{}/{} ({}/{})", cut(long), long.len(), cut(&stable), stable.len());
    let proxies = proxies.map_or("-".to_string(), |p| p.to_string());
    println!(
        "{what:<22} {:>12} {:>8} {:>11.1} {:>9.1} {:>24} {:>20}",
        t.total(),
        t.failures,
        per_10k,
        t.elapsed.as_secs_f64(),
        long,
        proxies
    );
}

/// Runs `CLIENTS` short connections and `LONG` long-lived ones to `target` until `work` ends.
async fn under_load(target: std::net::SocketAddr, work: impl Future<Output = ()>) -> (Tally, Vec<LongLived>) {
    let stop = Arc::new(AtomicBool::new(false));
    let short = tokio::spawn(steady_load(target, CLIENTS, PERIOD, stop.clone()));
    let long = tokio::spawn(long_lived(target, LONG, LONG_PERIOD, stop.clone()));
    work.await;
    stop.store(true, Ordering::Relaxed);
    (short.await.unwrap(), long.await.unwrap())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    assert!(can_simulate(), "the churn benchmark runs workload-sim: root, haproxy and kubectl (make setup)");
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(220, 64);
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    cluster.create_backend("stable", 2, None).await;
    cluster.create_backend("canary", 2, None).await;
    set_canary_weight(&cluster, 20).await;
    let target = cluster.service_address("front", 80).await;
    for (deployment, service) in [("stable", "stable"), ("canary", "canary"), (PROXY, "front")] {
        cluster.wait_rolled_out(deployment, service, 180).await;
    }

    println!(
        "churn benchmark: {CLIENTS} clients each making a short connection every {PERIOD:?} through the Kanary's Service;"
    );
    println!("{ROUNDS} rounds, each replacing both pods of the canary route and changing the weights\n");
    let started_before = proxy_pods_started(&sim.log());
    let deployments: Api<Deployment> = cluster.api();
    let rounds = async {
        for round in 1..=ROUNDS {
            let generation = cluster.generation("canary").await;
            let restart =
                json!({"spec": {"template": {"metadata": {"annotations": {"bench/restarted": round.to_string()}}}}});
            deployments.patch("canary", &PatchParams::default(), &Patch::Merge(restart)).await.unwrap();
            cluster.wait_changed("canary", generation, 10).await;
            cluster.wait_rolled_out("canary", "canary", 180).await;
            let generation = cluster.generation(PROXY).await;
            set_canary_weight(&cluster, 5 + 3 * round as i64).await;
            cluster.wait_changed(PROXY, generation, 30).await;
            cluster.wait_rolled_out(PROXY, "front", 180).await;
        }
    };
    let (churn, churn_long) = under_load(target, rounds).await;
    let proxies = proxy_pods_started(&sim.log()) - started_before;
    // the same load for as long, nothing changing
    let (baseline, baseline_long) = under_load(target, tokio::time::sleep(churn.elapsed)).await;

    println!(
        "{:<22} {:>12} {:>8} {:>11} {:>9} {:>24} {:>20}",
        "", "connections", "failed", "per 10,000", "seconds", "long-lived cut (stable)", "proxy pods started"
    );
    row("baseline (no change)", &baseline, &baseline_long, None);
    row("churn", &churn, &churn_long, Some(proxies));
    let rate = |t: &Tally| t.failures as f64 / t.total().max(1) as f64;
    if baseline.failures == 0 {
        println!("\nfailure rate: churn {:.3} %, baseline 0 (no ratio)", 100.0 * rate(&churn));
    } else {
        println!("\nfailure rate ratio churn/baseline: {:.1}", rate(&churn) / rate(&baseline));
    }
    println!("proxy pods started per round: {:.1}", proxies as f64 / ROUNDS as f64);
    // the simulator's log, for a look at what the pods went through (E2E_SIMULATOR_LOG=debug says more)
    let _ = std::fs::write(concat!(env!("CARGO_TARGET_TMPDIR"), "/churn-workload-sim.log"), sim.log());
    sim.stop().await;
    cluster.cleanup().await;
}
