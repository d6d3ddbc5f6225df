//! `cargo bench -p canary-controller --bench release`: how fast a release takes traffic away from a bad
//! canary, measured in one run on Kubernetes' control plane with workload-sim as its node (as root, like the
//! end-to-end tests).
//! Prints figures; asserts nothing.
//!
//! A Canary with `traffic` (2 proxy pods) releases `echo:bad` (the simulator's server resets 20 % of its
//! connections) with steps `setWeight 20`, `analysis` (interval `INTERVAL`, `failureLimit` 0) under steady
//! client load through the front Service; it is rolled back, retried, rolled back again, `RELEASE_ROLLBACKS`
//! times (default 20). For each rollback:
//! - **verdict to weight 0 on the data plane**: from the Kanary's weight-0 write (the controller writes it
//!   right at the failed verdict, before anything else; the time the bench's watch sees it) to the start of
//!   the last connection that reached the canary (0 when that one started before the watch saw the write).
//!   Its resolution is the time between two connections to the canary, printed;
//! - **connections sent to the bad canary** from the moment its weight was written until it had none,
//!   beside Flagger's model for the same settings: `interval x threshold x rate x weight` (threshold =
//!   failed checks before rollback = `failureLimit + 1`), and for Flagger's tutorial settings (interval 1m,
//!   threshold 5) at the same rate and weight.

use canary_controller::api::canary::{Canary, Phase};
use canary_controller::names::REQUEST_ANNOTATION;
use e2e_support::Cluster;
use e2e_support::release::{BAD_IMAGE, create_app, from_canary};
use e2e_support::simulator::can_simulate;
use e2e_support::traffic::{Exchange, endless_clients, p50_p99};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INTERVAL_SECONDS: u64 = 2;
const WEIGHT: i64 = 20;
const CLIENTS: usize = 4;
/// Each client opens a connection this often (400 a second in all, when the machine keeps up).
const PERIOD: Duration = Duration::from_millis(10);

/// Where a client's connection went.
#[derive(Clone, Copy, PartialEq)]
enum Reached {
    Stable,
    /// Answered by the canary, or reset (only the bad canary resets connections here).
    Canary,
}

type Connections = Arc<Mutex<Vec<(Instant, Reached)>>>;
/// Each change of the canary's weight in the Kanary's spec, when the bench saw it.
type Weights = Arc<Mutex<Vec<(Instant, i64)>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    assert!(can_simulate(), "the benchmark runs workload-sim: root, haproxy and kubectl (make setup)");
    let rollbacks: usize = std::env::var("RELEASE_ROLLBACKS").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let cluster = Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(226, 40);
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    create_app(&cluster, 2).await;
    cluster.wait_rolled_out("app", "app", 60).await;
    let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
        "metadata": {"name": "web"},
        "spec": {"targetDeploymentName": "app", "targetContainers": [{"name": "echo", "image": BAD_IMAGE}],
            "replicas": 1, "traffic": {"service": "app", "frontService": "app-front"},
            "steps": [{"setWeight": WEIGHT}, {"analysis": {}}],
            "analysis": {"interval": format!("{INTERVAL_SECONDS}s"), "minSamples": 10,
                "metrics": [{"metric": "errorRate", "max": 0.05}]}}});
    let canaries: Api<Canary> = cluster.api();
    canaries.create(&PostParams::default(), &serde_json::from_value(canary).unwrap()).await.unwrap();
    let front = cluster.service_address("app-front", 80).await;
    cluster.wait_rolled_out("web-haproxy", "app-front", 120).await;

    let weights = watch_weights(&cluster);
    let connections: Connections = Arc::default();
    let load_started = Instant::now();
    let load = start_clients(front, connections.clone());
    let (mut to_zero, mut sent, mut exposed) = (vec![], vec![], vec![]);
    // the first release is rolled back before the clients start; each measured one is a retry
    wait_phase(&canaries, Phase::RolledBack).await;
    for i in 0..rollbacks {
        let cycle = Instant::now();
        retry(&canaries, i).await;
        wait_phase(&canaries, Phase::RolledBack).await;
        // the last connections of the canary have started by now
        tokio::time::sleep(Duration::from_millis(500)).await;
        let changes: Vec<(Instant, i64)> =
            weights.lock().unwrap().iter().copied().filter(|(t, _)| *t >= cycle).collect();
        let on = changes.iter().find(|(_, w)| *w == WEIGHT).map(|(t, _)| *t);
        let off = changes.iter().find(|(t, w)| *w == 0 && on.is_some_and(|on| *t > on)).map(|(t, _)| *t);
        let (Some(on), Some(off)) = (on, off) else {
            eprintln!("rollback {i}: the Kanary's weight changes were not seen ({} changes); skipped", changes.len());
            continue;
        };
        let reached: Vec<Instant> = connections
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, r)| *r == Reached::Canary && *t >= on)
            .map(|(t, _)| *t)
            .collect();
        let last = reached.iter().max().copied().unwrap_or(off);
        to_zero.push(last.saturating_duration_since(off));
        sent.push(reached.len());
        exposed.push(off - on);
        if std::env::var_os("RELEASE_TRACE").is_some() {
            eprintln!(
                "rollback {i}: weight 0 served {:?} after its write; {} connections to the canary",
                last.saturating_duration_since(off),
                reached.len()
            );
        }
    }
    load.iter().for_each(|client| client.abort());
    let total = connections.lock().unwrap().len();
    let rate = total as f64 / load_started.elapsed().as_secs_f64();

    println!(
        "\n{} rollbacks of a canary resetting 20 % of its connections; weight {WEIGHT} %, analysis interval {INTERVAL_SECONDS} s, failureLimit 0;",
        to_zero.len()
    );
    println!("clients: {CLIENTS} each opening a connection every {PERIOD:?}: {rate:.0} connections/s measured\n");
    let resolution = Duration::from_secs_f64(100.0 / (rate * WEIGHT as f64));
    println!("{:<58} {:>10} {:>10} {:>8}", "", "p50", "p99", "samples");
    percentiles("verdict (Kanary weight 0 written) -> no connection to it", &mut to_zero);
    percentiles("canary weight written -> weight 0 written (exposure)", &mut exposed);
    println!("(resolution: a connection to the canary every {resolution:.1?} on average)");
    sent.sort();
    let mean = sent.iter().sum::<usize>() as f64 / sent.len().max(1) as f64;
    let flagger = |interval: f64, threshold: f64| interval * threshold * rate * WEIGHT as f64 / 100.0;
    println!("\nconnections sent to the bad canary before rollback (at {rate:.0}/s, weight {WEIGHT} %):");
    println!(
        "{:<58} {:>10.0} (p50 {}, max {})",
        "measured, mean per rollback",
        mean,
        sent.get(sent.len() / 2).copied().unwrap_or(0),
        sent.last().copied().unwrap_or(0)
    );
    println!(
        "{:<58} {:>10.0}",
        format!("Flagger's model, same settings ({INTERVAL_SECONDS} s x 1 check)"),
        flagger(INTERVAL_SECONDS as f64, 1.0)
    );
    println!("{:<58} {:>10.0}", "Flagger's model, its tutorial settings (1 m x 5 checks)", flagger(60.0, 5.0));
    sim.stop().await;
    cluster.cleanup().await;
}

/// Clients that never stop, recording when each connection started and where it went.
fn start_clients(target: SocketAddr, connections: Connections) -> Vec<tokio::task::JoinHandle<()>> {
    endless_clients(Exchange::Line, target, CLIENTS, PERIOD, move |started, answer| {
        let reached = match answer {
            Ok(answer) if !from_canary(&answer) => Reached::Stable,
            _ => Reached::Canary,
        };
        connections.lock().unwrap().push((started, reached));
    })
}

/// Watches Kanary `web` and records each change of its canary route's weight.
fn watch_weights(cluster: &Cluster) -> Weights {
    let weights: Weights = Arc::default();
    let kanaries = cluster.kanaries("kanary.k8s.io", "v1");
    let seen = weights.clone();
    tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=web");
        let mut events = watcher(kanaries, config).applied_objects().boxed();
        while let Some(Ok(kanary)) = events.next().await {
            let Some(weight) = kanary.data["spec"]["routes"][1]["weight"].as_i64() else { continue };
            let mut seen = seen.lock().unwrap();
            if seen.last().map(|(_, w)| *w) != Some(weight) {
                seen.push((Instant::now(), weight));
            }
        }
    });
    weights
}

async fn wait_phase(canaries: &Api<Canary>, phase: Phase) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let release = canaries.get("web").await.ok().and_then(|c| c.status?.release);
        if release.as_ref().is_some_and(|r| r.phase == phase) {
            return;
        }
        assert!(Instant::now() < deadline, "the release did not reach {phase:?} in 120 s: {release:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks for the `i`-th retry (a new value each time: a request is acted on once per value).
async fn retry(canaries: &Api<Canary>, i: usize) {
    let patch = json!({"metadata": {"annotations": {REQUEST_ANNOTATION: format!("retry:{i}")}}});
    canaries.patch("web", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    wait_phase(canaries, Phase::Progressing).await;
}

fn percentiles(what: &str, samples: &mut [Duration]) {
    match p50_p99(samples) {
        Some((p50, p99)) => println!("{what:<58} {p50:>10.1?} {p99:>10.1?} {:>8}", samples.len()),
        None => println!("{what:<58} no sample"),
    }
}
