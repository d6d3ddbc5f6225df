//! `make demo`: a complete progressive delivery on one machine, in about a minute. It starts Kubernetes' own
//! control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built by `make setup`),
//! workload-sim as its node (it runs the pods the scheduler binds to it as local processes in network
//! namespaces: the proxy is real HAProxy with the real proxy agents, the application a built-in TCP server)
//! and the real controller on that node, under its ServiceAccount and the Roles of config/rbac,
//! then releases twice under steady client traffic through the Canary's front Service:
//! a healthy canary goes 5 -> 25 -> 50 -> 100 %, judged by the proxy's own counters at each step, and is
//! promoted (the controller sets the target's image); then a bad one (it resets 20 % of its connections) is
//! rolled back at its first window. Then the same Canary splits HTTP requests (`traffic.protocol: http`, HTTP/1.1
//! keep-alive clients) and judges them by the proxy's own request metrics, with no Prometheus: a canary that
//! answers 2 % of its requests with 500 is rolled back by its success rate against stable, and one that is
//! only 30 ms slower by its p99 against stable. Each second it prints the release (phase, step, weight) and
//! what the clients saw in that second (answers from stable and canary pods, failures); each verdict as it
//! is made. Needs what the tests need (`make setup`) and root (the pods' network namespaces).

use canary_controller::api::canary::{Canary, Evidence, Phase, ReleaseStatus};
use canary_controller::canary::release::metric_name;
use e2e_support::Cluster;
use e2e_support::release::{BAD_IMAGE, create_app_with, from_canary};
use e2e_support::traffic::{Exchange, Tally, endless_clients};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clients, each opening a connection every `PERIOD`: 100 connections a second.
const CLIENTS: usize = 5;
const PERIOD: Duration = Duration::from_millis(50);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !e2e_support::simulator::can_simulate() {
        eprintln!(
            "demo: needs kubectl and haproxy (`make setup`) and root (workload-sim gives each pod a network namespace)"
        );
        std::process::exit(1);
    }
    let cluster = Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(230, 40);
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    say("Kubernetes' control plane, workload-sim as its node and canary-controller are running");

    // which images misbehave: the TCP release's bad one resets connections, the HTTP ones answer 500s or
    // are slow
    let env = json!([{"name": "SIM_FAILING_IMAGES", "value": format!("{BAD_IMAGE}=0.2,{ERRORS_IMAGE}=0.02")},
        {"name": "SIM_SLOW_IMAGES", "value": format!("{SLOW_IMAGE}=30")}]);
    create_app_with(&cluster, 2, env).await;
    cluster.wait_rolled_out("app", "app", 60).await;
    say("Deployment app (2 pods of echo:v1) and Service app are ready");
    let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
        "metadata": {"name": "web"},
        "spec": {"targetDeploymentName": "app", "targetContainers": [{"name": "echo", "image": "echo:v2"}],
            "replicas": 1,
            "traffic": {"service": "app", "frontService": "app-front"},
            "steps": [{"setWeight": 5}, {"analysis": {}}, {"setWeight": 25}, {"analysis": {}},
                {"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}, {"analysis": {}}],
            "analysis": {"interval": "8s", "minSamples": 10, "metrics": [{"metric": "errorRate", "max": 0.05}]},
            "promotion": {"updateTarget": true}}});
    say(&format!("Canary web: {}", serde_json::to_string(&canary["spec"]).unwrap_or_default()));
    let canaries: Api<Canary> = cluster.api();
    canaries.create(&PostParams::default(), &serde_json::from_value(canary).unwrap()).await.unwrap();
    let front = cluster.service_address("app-front", 80).await;
    cluster.wait_rolled_out("web-haproxy", "app-front", 120).await;
    say(&format!("the Canary's proxy serves Service app-front at {front}; clients send 100 connections/s to it"));

    let seen = Arc::new(Mutex::new(Tally::default()));
    let recorded = seen.clone();
    let load = endless_clients(Exchange::Line, front, CLIENTS, PERIOD, move |_, answer| {
        recorded.lock().unwrap().record_why(answer);
    });
    say("release 1: echo:v2, a healthy canary");
    let done = follow(&canaries, &seen, Phase::Succeeded).await;
    let image = cluster.api::<Deployment>().get("app").await.ok().and_then(target_image);
    say(&format!("{}; Deployment app now runs {}", done.message, image.unwrap_or_default()));
    cluster.wait_rolled_out("app", "app", 60).await;

    say(&format!("release 2: {BAD_IMAGE}, a canary that resets 20 % of its connections"));
    let patch = json!({"spec": {"targetContainers": [{"name": "echo", "image": BAD_IMAGE}]}});
    canaries.patch("web", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let rolled_back = follow(&canaries, &seen, Phase::RolledBack).await;
    say(&rolled_back.message);
    std::mem::take(&mut *seen.lock().unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.iter().for_each(|client| client.abort());
    let after = std::mem::take(&mut *seen.lock().unwrap());
    let canary = after.answers.iter().filter(|(a, _)| from_canary(a)).map(|(_, n)| n).sum::<usize>();
    say(&format!(
        "the 3 s after the rollback: {} connections answered by stable pods, {canary} by the canary, {} failed",
        after.total() - after.failures - canary,
        after.failures
    ));

    // HTTP: the same Canary splits requests and judges them by the proxy's request metrics
    let http = json!({"spec": {"traffic": {"service": "app", "frontService": "app-front", "protocol": "http"},
        "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}}],
        "analysis": {"interval": "8s", "minSamples": 200, "metrics": [
            {"metric": "requestSuccessRate", "maxBelowStable": 0.5},
            {"metric": "requestDuration", "percentile": 99, "maxOverStable": 15}]},
        "targetContainers": [{"name": "echo", "image": ERRORS_IMAGE}]}});
    say(&format!(
        "HTTP: traffic.protocol http, checks {}",
        serde_json::to_string(&http["spec"]["analysis"]).unwrap_or_default()
    ));
    canaries.patch("web", &PatchParams::default(), &Patch::Merge(http)).await.unwrap();
    // the proxies reload into HTTP mode before the clients connect (a connection of the TCP mode stays one,
    // to one backend, until it closes)
    let configs: Api<ConfigMap> = cluster.api();
    e2e_support::eventually(60, "the proxy's configuration in HTTP mode", || async {
        let config =
            configs.get_opt("web-config").await.ok().flatten().and_then(|c| c.data?.get("haproxy.cfg").cloned());
        config.is_some_and(|c| c.contains("defaults\n    mode http"))
    })
    .await;
    cluster.wait_synced(&cluster.kanaries("kanary.k8s.io", "v1"), "web", 60).await;
    let load = http_clients(front, seen.clone());
    say(&format!(
        "release 3: {ERRORS_IMAGE}, a canary that answers 2 % of its requests with 500; 4 HTTP/1.1 keep-alive clients"
    ));
    let rolled_back = follow_revision(&canaries, &seen, ERRORS_IMAGE).await;
    say(&rolled_back.message);
    say(&format!("release 4: {SLOW_IMAGE}, a canary that answers every request well, 30 ms later"));
    let patch = json!({"spec": {"targetContainers": [{"name": "echo", "image": SLOW_IMAGE}]}});
    canaries.patch("web", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let rolled_back = follow_revision(&canaries, &seen, SLOW_IMAGE).await;
    say(&rolled_back.message);
    load.abort();
    println!("\nkubectl get canary web -o wide:");
    if let Some(out) = cluster.kubectl(&["get", "canary", "web", "-o", "wide", "-n", &cluster.namespace], None).await {
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    sim.stop().await;
    cluster.cleanup().await;
}

/// The images of the HTTP releases: one answers 2 % of its requests with 500, one is 30 ms slower.
const ERRORS_IMAGE: &str = "echo:errors";
const SLOW_IMAGE: &str = "echo:slow";

/// HTTP/1.1 keep-alive clients (4 connections, as fast as they are answered) through `front`, recording
/// every answer into `seen`, until aborted.
fn http_clients(front: std::net::SocketAddr, seen: Arc<Mutex<Tally>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = e2e_support::http::Client::connect(front, e2e_support::http::Version::Http1, 4).await;
        loop {
            let part = client.load(1, 40, &[]).await;
            seen.lock().unwrap().add(part.tally);
        }
    })
}

/// [`follow`] until the release of `image` is rolled back.
async fn follow_revision(canaries: &Api<Canary>, seen: &Mutex<Tally>, image: &str) -> ReleaseStatus {
    let started = Instant::now();
    loop {
        let release = follow(canaries, seen, Phase::RolledBack).await;
        if release.revision.contains(image) {
            return release;
        }
        if started.elapsed() > Duration::from_secs(240) {
            eprintln!("demo: the release of {image} was not rolled back in 4 minutes: {release:#?}");
            std::process::exit(1);
        }
    }
}

/// Prints the release every second and each verdict as it comes, until it reaches `phase`.
async fn follow(canaries: &Api<Canary>, seen: &Mutex<Tally>, phase: Phase) -> ReleaseStatus {
    let mut verdicts = 0;
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let release = print_second(canaries, seen, started).await;
        let Some(release) = release else { continue };
        // the evidence of this release only (it keeps the last 20 windows)
        if release.step == 0 && release.evidence.len() < verdicts {
            verdicts = 0;
        }
        for e in release.evidence.iter().skip(verdicts) {
            println!("         verdict at {:>3} %: {}", e.weight, verdict(e));
        }
        verdicts = release.evidence.len();
        if release.phase == phase {
            return release;
        }
        if started.elapsed() > Duration::from_secs(240) {
            eprintln!("demo: the release did not reach {phase:?} in 4 minutes: {release:#?}");
            std::process::exit(1);
        }
    }
}

/// One line: the release as it is, and what the clients saw since the last line (a failed connection is
/// counted apart: the client cannot tell which route it took).
async fn print_second(canaries: &Api<Canary>, seen: &Mutex<Tally>, started: Instant) -> Option<ReleaseStatus> {
    let release = canaries.get("web").await.ok()?.status?.release;
    let second = std::mem::take(&mut *seen.lock().unwrap());
    let canary: usize = second.answers.iter().filter(|(a, _)| from_canary(a)).map(|(_, n)| n).sum();
    let stable = second.total() - second.failures - canary;
    if let Some(r) = &release {
        println!(
            "  {:>3} s  {:<12} step {:<22} weight {:>3} %  | clients: stable {:>3}  canary {:>3}  failed {:>2}",
            started.elapsed().as_secs(),
            format!("{:?}", r.phase),
            r.step_description,
            r.weight,
            stable,
            canary,
            second.failures
        );
    }
    release
}

fn verdict(e: &Evidence) -> String {
    let metrics: Vec<String> = e
        .metrics
        .iter()
        .map(|m| format!("{} {:.3} (bound {}) {:?}", metric_name(m), m.value, m.bound, m.verdict))
        .collect();
    let requests = e.requests.as_ref().map_or(String::new(), |r| {
        let p99 = |ms: Option<f64>| ms.map_or("-".into(), |ms| format!("{ms:.1} ms"));
        format!(
            " [requests: canary {} ({:.0}/s, p99 {}), stable {} ({:.0}/s, p99 {})]",
            r.canary.requests,
            r.canary.rate,
            p99(r.canary.p99_ms),
            r.stable.requests,
            r.stable.rate,
            p99(r.stable.p99_ms)
        )
    });
    format!("{:?} over {} canary connections: {}{requests}", e.verdict, e.canary_sessions, metrics.join(", "))
}

fn target_image(target: Deployment) -> Option<String> {
    target.spec?.template.spec?.containers.first()?.image.clone()
}

fn say(what: &str) {
    println!("==> {what}");
}
