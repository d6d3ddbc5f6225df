//! `cargo bench -p canary-controller --bench dataplane`: what the hitless data plane (the proxy agent applying
//! each change to the running HAProxy) gives clients, measured in one run. Prints figures; asserts nothing.
//!
//! 1. Throughput through our proxy files (slots, weights map, checks) as a ratio to a minimal hand-written
//!    config (`mode tcp`, one backend, the same servers), real HAProxy on loopback, runs alternated.
//! 2. On Kubernetes' control plane with workload-sim as its node (as root, like the end-to-end tests), a Kanary `bench` (2 proxy
//!    pods) in front of Deployments `stable` and `canary`:
//!    - change-to-traffic latency: from the ConfigMap written (and from the Kanary changed) to the first
//!      connection that follows new weights (20 changes), or that reaches a new pod (10 scale-ups);
//!    - churn: under steady load (8 clients, a short connection every 20 ms each, and 10 long-lived
//!      connections), 10 rounds each replacing every pod of the canary route and changing the weights, through
//!      the agent's proxy and then through the pod-roll design this project had before (HAProxy pods reading
//!      the same ConfigMap, rolled by a checksum of it on every change, as the controller did), against a
//!      baseline of the same load with no change.

use canary_controller::dataplane::Server;
use canary_controller::dataplane::haproxy::RouteBackend;
use canary_controller::dataplane::{DATAPLANE_KEY, DataPlane};
use e2e_support::Cluster;
use e2e_support::simulator::can_simulate;
use e2e_support::traffic::{
    LongLived, Tally, ask, config_only, drive_through, free_port, long_lived, our_proxy_files, p50_p99, start_backends,
    steady_load,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KANARY: &str = "bench";
const PROXY: &str = "bench-haproxy";
/// The pod-roll design's proxy (a Deployment the benchmark rolls itself).
const ROLL: &str = "roll-haproxy";
const ROUNDS: usize = 10;
const CLIENTS: usize = 8;
/// Each client makes a request this often: 400 connections per second in all.
const PERIOD: Duration = Duration::from_millis(20);
const LONG: usize = 10;
const LONG_PERIOD: Duration = Duration::from_millis(500);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    throughput().await;
    assert!(can_simulate(), "the rest of the benchmark runs workload-sim: root, haproxy and kubectl (make setup)");
    let cluster = Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(220, 64);
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    cluster.create_backend("stable", 2, None).await;
    cluster.create_backend("canary", 1, None).await;
    set_canary_weight(&cluster, 20).await;
    let front = cluster.service_address("front", 80).await;
    for (deployment, service) in [("stable", "stable"), ("canary", "canary"), (PROXY, "front")] {
        cluster.wait_rolled_out(deployment, service, 180).await;
    }
    let kanaries = cluster.kanaries("kanary.k8s.io", "v1");
    cluster.wait_synced(&kanaries, KANARY, 60).await;
    let planes = watch_data_planes(&cluster);

    latency(&cluster, front, &planes).await;
    let deployments: Api<Deployment> = cluster.api();
    scale(&deployments, "canary", 2).await;
    cluster.wait_rolled_out("canary", "canary", 120).await;

    println!(
        "\nchurn: {CLIENTS} clients each making a short connection every {PERIOD:?}, {LONG} long-lived connections;"
    );
    println!("{ROUNDS} rounds, each replacing both pods of the canary route and changing the weights\n");
    let started = proxy_pods_started(&sim.log(), PROXY);
    let (agent, agent_long) = under_load(front, churn(&cluster, Design::Agent)).await;
    let agent_pods = proxy_pods_started(&sim.log(), PROXY) - started;

    let roll_front = start_pod_roll_design(&cluster).await;
    let stop_rolling = Arc::new(AtomicBool::new(false));
    let roller = tokio::spawn(roll_on_every_change(cluster.api(), planes.clone(), stop_rolling.clone()));
    let started = proxy_pods_started(&sim.log(), ROLL);
    let (roll, roll_long) = under_load(roll_front, churn(&cluster, Design::PodRoll)).await;
    let roll_pods = proxy_pods_started(&sim.log(), ROLL) - started;
    stop_rolling.store(true, Ordering::Relaxed);
    let _ = roller.await;

    let (baseline, baseline_long) = under_load(front, tokio::time::sleep(agent.elapsed)).await;
    println!(
        "{:<22} {:>12} {:>8} {:>11} {:>9} {:>24} {:>20}",
        "", "connections", "failed", "per 10,000", "seconds", "long-lived cut (stable)", "proxy pods started"
    );
    row("baseline (no change)", &baseline, &baseline_long, None);
    row("proxy agent", &agent, &agent_long, Some(agent_pods));
    row("pod roll (before)", &roll, &roll_long, Some(roll_pods));
    let _ = std::fs::write(concat!(env!("CARGO_TARGET_TMPDIR"), "/dataplane-workload-sim.log"), sim.log());
    sim.stop().await;
    cluster.cleanup().await;
}

/// Throughput through our proxy files against a minimal config, the same two servers, runs alternated.
async fn throughput() {
    const CONNECTIONS: usize = 5_000;
    const CONCURRENCY: usize = 32;
    const RUNS: usize = 3;
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let (listen, stats) = (addr(free_port("::")), addr(free_port("::")));
    let ips = ["127.0.0.51", "127.0.0.52"];
    let port = start_backends(&ips, "a").await;
    let servers: Vec<Server> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| Server { name: format!("a-{i}"), address: ip.parse().unwrap(), port })
        .collect();
    let routes =
        [RouteBackend { service: "a".into(), weight: 100, servers: servers.clone(), h2c: false, header_value: None }];
    let minimal = {
        let mut c = format!(
            "global\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n\
             frontend stats\n    mode http\n    bind {stats}\n    stats enable\n    stats uri /stats\n\
             frontend in\n    bind {listen}\n    default_backend a\nbackend a\n    balance roundrobin\n"
        );
        for s in &servers {
            c.push_str(&format!("    server {} {}\n", s.name, s.endpoint()));
        }
        c
    };
    let rate = |t: &Tally| t.total() as f64 / t.elapsed.as_secs_f64();
    let (mut ours, mut plain) = (vec![], vec![]);
    for _ in 0..RUNS {
        let t = drive_through(
            our_proxy_files("bench/dataplane", &routes, listen, stats),
            listen,
            stats,
            2,
            CONNECTIONS,
            CONCURRENCY,
        )
        .await;
        ours.push(rate(&t));
        let t = drive_through(config_only(minimal.clone()), listen, stats, 0, CONNECTIONS, CONCURRENCY).await;
        plain.push(rate(&t));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ours, plain) = (median(&mut ours), median(&mut plain));
    println!("dataplane benchmark\n");
    println!(
        "throughput ({RUNS} alternated runs of {CONNECTIONS} connections, {CONCURRENCY} at a time, medians): our proxy {ours:.0}/s, \
         minimal config {plain:.0}/s, ratio {:.2}",
        ours / plain
    );
}

/// Each version of the Kanary's ConfigMap as the benchmark saw it: when, and its data plane.
type Planes = Arc<Mutex<Vec<(Instant, DataPlane)>>>;

fn watch_data_planes(cluster: &Cluster) -> Planes {
    let planes: Planes = Arc::default();
    let seen = planes.clone();
    let api: Api<ConfigMap> = cluster.api();
    let selector = format!("metadata.name={KANARY}-config");
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default().fields(&selector)).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) = event {
                let plane =
                    cm.data.as_ref().and_then(|d| d.get(DATAPLANE_KEY)).and_then(|j| serde_json::from_str(j).ok());
                if let Some(plane) = plane {
                    seen.lock().unwrap().push((Instant::now(), plane));
                }
            }
        }
    });
    planes
}

/// When the first ConfigMap version after `since` that satisfies `check` was seen (waits up to 30 s).
async fn plane_seen(planes: &Planes, since: Instant, check: impl Fn(&DataPlane) -> bool) -> Instant {
    for _ in 0..3000 {
        let found = planes.lock().unwrap().iter().find(|(at, p)| *at >= since && check(p)).map(|(at, _)| *at);
        if let Some(at) = found {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no ConfigMap version as expected within 30 s");
}

/// When the first connection to `target` answered by a backend `check` accepts came (connections one after
/// the other, as fast as they go; up to 30 s).
async fn first_answer(target: SocketAddr, check: impl Fn(&str) -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ask(target).await.is_some_and(|a| check(&a)) {
            return Instant::now();
        }
    }
    panic!("no connection answered as expected within 30 s");
}

/// Change-to-traffic latency, for weights and for new pods.
async fn latency(cluster: &Cluster, front: SocketAddr, planes: &Planes) {
    let kanaries = cluster.kanaries("kanary.k8s.io", "v1");
    let (mut from_config, mut from_kanary) = (vec![], vec![]);
    for i in 0..20 {
        let canary = if i % 2 == 0 { 100 } else { 0 };
        let changed = Instant::now();
        set_canary_weight(cluster, canary).await;
        let route = if canary == 100 { "image=echo:canary" } else { "image=echo:stable" };
        let answered = first_answer(front, |a| a.contains(route)).await;
        let written = plane_seen(planes, changed, |p| p.routes[1].weight == canary).await;
        from_config.push(answered.saturating_duration_since(written));
        from_kanary.push(answered - changed);
        trace("weights", answered.saturating_duration_since(written));
        cluster.wait_synced(&kanaries, KANARY, 30).await;
    }
    println!("\nchange-to-traffic latency (first connection that follows the change):");
    println!("{:<32} {:>10} {:>10} {:>10}", "", "p50", "p99", "samples");
    percentiles("weights, from the ConfigMap", &mut from_config);
    percentiles("weights, from the Kanary", &mut from_kanary);

    // new pods: the canary route takes all traffic; each time one pod more
    set_canary_weight(cluster, 100).await;
    cluster.wait_synced(&kanaries, KANARY, 30).await;
    let deployments: Api<Deployment> = cluster.api();
    let mut to_new_pod = vec![];
    for _ in 0..10 {
        let before: Vec<String> = servers_of(&planes.lock().unwrap().last().unwrap().1, "canary");
        let changed = Instant::now();
        scale(&deployments, "canary", 2).await;
        let written = plane_seen(planes, changed, |p| servers_of(p, "canary").len() == 2).await;
        let new_pod = servers_of(&planes.lock().unwrap().last().unwrap().1, "canary")
            .into_iter()
            .find(|s| !before.contains(s))
            .expect("a new server");
        let answered = first_answer(front, |a| a.contains(&format!("pod={new_pod} "))).await;
        to_new_pod.push(answered.saturating_duration_since(written));
        trace("new pod", answered.saturating_duration_since(written));
        scale(&deployments, "canary", 1).await;
        cluster.wait_rolled_out("canary", "canary", 60).await;
        cluster.wait_synced(&kanaries, KANARY, 30).await;
    }
    percentiles("a new pod, from the ConfigMap", &mut to_new_pod);
    set_canary_weight(cluster, 20).await;
    cluster.wait_synced(&kanaries, KANARY, 30).await;
}

/// With `DATAPLANE_TRACE` set, each sample with the time it ended (to read beside the agents' logs).
fn trace(what: &str, latency: Duration) {
    if std::env::var_os("DATAPLANE_TRACE").is_some() {
        eprintln!("{what}: {latency:?}, ended at {}", k8s_openapi::jiff::Timestamp::now());
    }
}

fn servers_of(plane: &DataPlane, service: &str) -> Vec<String> {
    let route = plane.routes.iter().find(|r| r.service == service);
    route.map(|r| r.servers.iter().map(|s| s.name.clone()).collect()).unwrap_or_default()
}

fn percentiles(what: &str, samples: &mut [Duration]) {
    let (p50, p99) = p50_p99(samples).expect("samples");
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("{what:<32} {:>10} {:>10} {:>10}", ms(p50), ms(p99), samples.len());
}

#[derive(Clone, Copy, PartialEq)]
enum Design {
    Agent,
    PodRoll,
}

/// `ROUNDS` rounds: every pod of the canary route replaced, then new weights, each time waiting until the
/// proxy serves them (the agents report it; the pod-roll design has rolled).
async fn churn(cluster: &Cluster, design: Design) {
    let deployments: Api<Deployment> = cluster.api();
    let kanaries = cluster.kanaries("kanary.k8s.io", "v1");
    for round in 1..=ROUNDS {
        let generation = cluster.generation("canary").await;
        let restart =
            json!({"spec": {"template": {"metadata": {"annotations": {"bench/restarted": format!("{round}")}}}}});
        let restart = if design == Design::PodRoll { restart_again(restart) } else { restart };
        deployments.patch("canary", &PatchParams::default(), &Patch::Merge(restart)).await.unwrap();
        cluster.wait_changed("canary", generation, 10).await;
        cluster.wait_rolled_out("canary", "canary", 180).await;
        let generation = cluster.generation(ROLL).await;
        set_canary_weight(cluster, 5 + 3 * round as i64).await;
        match design {
            Design::Agent => {
                cluster.wait_synced(&kanaries, KANARY, 60).await;
            }
            Design::PodRoll => {
                cluster.wait_changed(ROLL, generation, 30).await;
                cluster.wait_rolled_out(ROLL, "front-roll", 180).await;
            }
        }
    }
}

/// The same restart annotation under another value (the pod-roll pass follows the agent's).
fn restart_again(mut patch: serde_json::Value) -> serde_json::Value {
    let value = &mut patch["spec"]["template"]["metadata"]["annotations"]["bench/restarted"];
    *value = json!(format!("roll-{}", value.as_str().unwrap_or_default()));
    patch
}

/// The design this project had before the agent: HAProxy pods that read the Kanary's ConfigMap from a
/// volume, behind Service `front-roll`; the address of that Service.
async fn start_pod_roll_design(cluster: &Cluster) -> SocketAddr {
    let deployment = json!({"metadata": {"name": ROLL}, "spec": {
        "replicas": 2, "minReadySeconds": 2, "selector": {"matchLabels": {"app": ROLL}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {"metadata": {"labels": {"app": ROLL}}, "spec": {
            "terminationGracePeriodSeconds": 45,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 99, "runAsGroup": 99},
            "containers": [{"name": "haproxy", "image": "haproxy:2.8",
                "args": ["-f", "/var/run/kanary/haproxy.cfg"],
                "ports": [{"name": "proxy", "containerPort": 8080}, {"name": "metrics", "containerPort": 8404}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 2, "failureThreshold": 2},
                "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 5; kill -USR1 1"]}}},
                "volumeMounts": [{"name": "config", "mountPath": "/var/run/kanary", "readOnly": true}, {"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "config", "configMap": {"name": format!("{KANARY}-config")}}, {"name": "tmp", "emptyDir": {}}]}}}});
    let service = json!({"metadata": {"name": "front-roll"}, "spec": {"selector": {"app": ROLL},
        "ports": [{"name": "tcp", "port": 80, "targetPort": "proxy"}]}});
    let pp = PostParams::default();
    cluster.api::<Deployment>().create(&pp, &serde_json::from_value(deployment).unwrap()).await.unwrap();
    cluster.api::<Service>().create(&pp, &serde_json::from_value(service).unwrap()).await.unwrap();
    let address = cluster.service_address("front-roll", 80).await;
    cluster.wait_rolled_out(ROLL, "front-roll", 180).await;
    address
}

/// As the controller did before the agent: a new checksum of the proxy's files in the pod template on every
/// change of the ConfigMap, which rolls the pods.
async fn roll_on_every_change(deployments: Api<Deployment>, planes: Planes, stop: Arc<AtomicBool>) {
    let mut rolled = planes.lock().unwrap().len();
    while !stop.load(Ordering::Relaxed) {
        let latest = {
            let planes = planes.lock().unwrap();
            (planes.len() > rolled).then(|| (planes.len(), planes.last().unwrap().1.revision()))
        };
        if let Some((count, revision)) = latest {
            let patch =
                json!({"spec": {"template": {"metadata": {"annotations": {"kanary.k8s.io/config-hash": revision}}}}});
            if deployments.patch(ROLL, &PatchParams::default(), &Patch::Merge(patch)).await.is_ok() {
                rolled = count;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set_canary_weight(cluster: &Cluster, weight: i64) {
    let route = |svc: &str, w: i64| json!({"backend": {"serviceName": svc, "servicePort": "tcp"}, "weight": w});
    let kanary = json!({"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "metadata": {"name": KANARY},
        "spec": {"destination": "front", "routes": [route("stable", 100 - weight), route("canary", weight)]}});
    let api = cluster.kanaries("kanary.k8s.io", "v1");
    api.patch(KANARY, &PatchParams::apply("bench").force(), &Patch::Apply(kanary)).await.unwrap();
}

async fn scale(deployments: &Api<Deployment>, name: &str, replicas: i32) {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    deployments.patch(name, &PatchParams::default(), &patch).await.unwrap();
}

/// Pods of Deployment `deployment` the simulator has started so far (from its log).
fn proxy_pods_started(log: &str, deployment: &str) -> usize {
    log.lines().filter(|l| l.contains("pod started") && l.contains(&format!("pod={deployment}-"))).count()
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
async fn under_load(target: SocketAddr, work: impl Future<Output = ()>) -> (Tally, Vec<LongLived>) {
    let stop = Arc::new(AtomicBool::new(false));
    let short = tokio::spawn(steady_load(target, CLIENTS, PERIOD, stop.clone()));
    let long = tokio::spawn(long_lived(target, LONG, LONG_PERIOD, stop.clone()));
    work.await;
    stop.store(true, Ordering::Relaxed);
    (short.await.unwrap(), long.await.unwrap())
}
