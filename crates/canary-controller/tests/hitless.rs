//! The hitless data plane end to end, on the workload simulator (fake-apiserver only, as root): the
//! controller's proxy pods really run HAProxy and the proxy agent (a native sidecar, under the Kanary's
//! ServiceAccount with RBAC enforced), the backends are Deployments whose pods really run, and steady load
//! and long-lived connections go through the destination Service's address while everything changes. Its own
//! test binary, so that its load does not share the machine with the other end-to-end tests.

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::kanary::{env, kanary_yaml};
use support::simulator::can_simulate;
use support::traffic::{LongLived, Tally, long_lived, steady_load};

const KANARY: &str = "simple-kanary-rule";
const PROXY: &str = "simple-kanary-rule-haproxy";

/// Steady load (4 clients, a connection every 25 ms each) and 4 long-lived connections through `target`
/// while `changes` run.
async fn under_load<F: std::future::Future<Output = ()>>(
    target: std::net::SocketAddr,
    changes: F,
) -> (Tally, Vec<LongLived>) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(target, 4, Duration::from_millis(25), stop.clone()));
    let long = tokio::spawn(long_lived(target, 4, Duration::from_millis(300), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    changes.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    (load.await.unwrap(), long.await.unwrap())
}

/// Kills (SIGKILL) every process whose command line matches `pattern`, as a crash would.
async fn kill_matching(pattern: &str) {
    let status = tokio::process::Command::new("pkill").args(["-KILL", "-f", "--", pattern]).status().await.unwrap();
    assert!(status.success(), "no process matches {pattern:?}");
}

/// The proxy's pods: name -> (address, HAProxy's restart count).
async fn proxy_pods(pods: &Api<Pod>) -> BTreeMap<String, (String, i32)> {
    let list = pods.list(&ListParams::default().labels(&format!("proxy={PROXY}"))).await.unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let status = p.status.unwrap_or_default();
            let haproxy = status.container_statuses.unwrap_or_default().into_iter().find(|c| c.name == "haproxy");
            let name = p.metadata.name.unwrap_or_default();
            (name, (status.pod_ip.unwrap_or_default(), haproxy.map_or(-1, |c| c.restart_count)))
        })
        .collect()
}

/// The sum over the proxy pods' agents of a metric.
async fn agents_metric(addresses: &[String], series: &str) -> f64 {
    let mut total = 0.0;
    for address in addresses {
        let text = support::http_get(&format!("{address}:8405"), "/metrics").await.unwrap_or_default();
        total += text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0);
    }
    total
}

/// Under steady load through the agent-managed proxy: 20 weight changes, 20 scale-ups and -downs of a route,
/// both agents killed and restarted, and the replacement of every pod of a route: no failed connection, no
/// HAProxy restart or new proxy pod, no reload (every change applied at run time), long-lived connections
/// cut only when their own backend pod went. Then a backend pod that dies abruptly costs at most 3
/// connections. The agents' identity is used for exactly what its Role grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_running_proxy_with_no_failed_connection_and_no_restart() {
    if !can_simulate() {
        return;
    }
    let e = env().await;
    let sim = e.cluster.start_simulator(236, 40);
    for (name, replicas) in [("a", 2), ("b", 2)] {
        e.cluster.create_backend(name, replicas, None).await;
    }
    let route = |svc: &str, w: i64| json!({"backend": {"serviceName": svc, "servicePort": "tcp"}, "weight": w});
    let kanaries = e.kanaries("kanary.k8s.io", "v1");
    let ky = kanary_yaml("kanary.k8s.io/v1", json!([route("a", 80), route("b", 20)]));
    kanaries.create(&PostParams::default(), &ky).await.unwrap();
    let listen = e.cluster.service_address("myapp", 80).await;
    for name in ["a", "b"] {
        e.cluster.wait_rolled_out(name, name, 60).await;
    }
    e.cluster.wait_rolled_out(PROXY, "myapp", 120).await;
    e.cluster.wait_synced(&kanaries, KANARY, 60).await;

    let pods: Api<Pod> = e.cluster.api();
    let deployments: Api<Deployment> = e.cluster.api();
    let proxies = proxy_pods(&pods).await;
    assert_eq!(proxies.len(), 2, "{proxies:?}");
    let agents: Vec<String> = proxies.values().map(|(ip, _)| ip.clone()).collect();
    let reloads = "kanary_agent_changes_applied_total{how=\"reload\"}";
    let reloads_before = agents_metric(&agents, reloads).await;
    let generation = e.cluster.generation(PROXY).await;
    let set_weights = |a: i64| {
        let routes = json!([route("a", a), route("b", 100 - a)]);
        let kanaries = kanaries.clone();
        async move {
            let patch = Patch::Merge(json!({"spec": {"routes": routes}}));
            kanaries.patch(KANARY, &PatchParams::default(), &patch).await.unwrap();
        }
    };
    let scale = |name: &'static str, replicas: i32| {
        let deployments = deployments.clone();
        async move {
            let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
            deployments.patch(name, &PatchParams::default(), &patch).await.unwrap();
        }
    };

    let changes = async {
        for i in 0..20 {
            set_weights(80 - i).await;
            e.cluster.wait_synced(&kanaries, KANARY, 30).await;
        }
        for i in 0..20 {
            scale("b", if i % 2 == 0 { 3 } else { 2 }).await;
            e.cluster.wait_rolled_out("b", "b", 60).await;
            e.cluster.wait_synced(&kanaries, KANARY, 30).await;
        }
        // both agents crash; HAProxy goes on serving, the restarted agents take over without a reload
        kill_matching(&format!("proxy-agent --config-map {KANARY}-config")).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        set_weights(50).await;
        e.cluster.wait_synced(&kanaries, KANARY, 60).await;
        // every pod of route a replaced (a rolling update)
        let restart = json!({"spec": {"template": {"metadata": {"annotations": {"restartedAt": "now"}}}}});
        deployments.patch("a", &PatchParams::default(), &Patch::Merge(restart)).await.unwrap();
        e.cluster.wait_rolled_out("a", "a", 90).await;
        e.cluster.wait_synced(&kanaries, KANARY, 30).await;
    };
    let (tally, long) = under_load(listen, changes).await;
    let log = || format!("controller:\n{}\nsimulator:\n{}", e.controller.log(), sim.log());
    let by_backend = tally.clone().regroup(|a| a.rsplit_once("image=echo:").map_or(a, |(_, b)| b).to_string());
    eprintln!("under 41 weight, scale and rollout changes and 2 agent crashes: {by_backend:?}");
    assert_eq!(tally.failures, 0, "failed connections during the changes ({tally:?}):\n{}", log());
    assert!(tally.total() > 1_000, "too little load to mean anything: {tally:?}");
    assert_eq!(agents_metric(&agents, reloads).await, reloads_before, "a reload for weights or servers:\n{}", log());
    assert!(agents_metric(&agents, "kanary_agent_changes_applied_total{how=\"runtime\"}").await >= 2.0);
    assert_eq!(e.cluster.generation(PROXY).await, generation, "the proxy's pod template changed");
    assert_eq!(proxy_pods(&pods).await, proxies, "HAProxy restarted, or proxy pods were replaced");
    // a long-lived connection is cut only when its own backend pod went
    assert_eq!(long.len(), 4, "every long-lived connection opened: {long:?}");
    let running: BTreeSet<String> =
        pods.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|p| p.metadata.name).collect();
    for connection in &long {
        let pod = connection.backend.strip_prefix("pod=").and_then(|a| a.split(' ').next()).unwrap_or_default();
        assert!(!connection.cut || !running.contains(pod), "a long-lived connection to {pod} was cut: {long:?}");
    }

    // a backend pod that dies abruptly (its process killed): a handful of failed connections at most
    let b_pod = running.iter().find(|p| p.starts_with("b-")).expect("a pod of b").clone();
    let (tally, _) = under_load(listen, async {
        kill_matching(&format!("--pod {b_pod} ")).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
    })
    .await;
    eprintln!("a pod of b killed: {tally:?}");
    assert!(tally.failures <= 3, "{} connections failed when a pod died: {tally:?}", tally.failures);

    // the agents' identity did what its Role grants and nothing else
    let user = format!("system:serviceaccount:{}:{PROXY}", e.cluster.namespace);
    let used: BTreeSet<(String, String, String)> = e
        .cluster
        .fake
        .as_ref()
        .unwrap()
        .state()
        .rbac
        .usage(&user)
        .into_iter()
        .map(|u| (u.verb, u.group, u.resource))
        .collect();
    let expected: BTreeSet<(String, String, String)> =
        [("list", "", "configmaps"), ("watch", "", "configmaps"), ("patch", "kanary.k8s.io", "kanaries/status")]
            .into_iter()
            .map(|(v, g, r)| (v.into(), g.into(), r.into()))
            .collect();
    assert_eq!(used, expected, "the agents' requests");
    assert!(!sim.log().contains("forbidden"), "a request of an agent was denied:\n{}", sim.log());
    sim.stop().await;
    e.cluster.cleanup().await;
}
