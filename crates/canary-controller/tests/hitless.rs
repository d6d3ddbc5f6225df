//! The hitless data plane end to end, on the workload simulator (as root; the tests' own control plane): the
//! controller's proxy pods really run HAProxy and the proxy agent (a native sidecar, under the Kanary's
//! ServiceAccount with RBAC enforced), the backends are Deployments whose pods really run, and steady load
//! and long-lived connections go through the destination Service's address while everything changes. Its own
//! test binary, so that its load does not share the machine with the other end-to-end tests.

use e2e_support as support;

use canary_controller::dataplane::{DATAPLANE_KEY, DataPlane};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::kanary::{env_with_simulator, kanary_yaml};
use support::simulator::can_simulate;
use support::traffic::{LongLived, Tally, long_lived, steady_load};

const KANARY: &str = "simple-kanary-rule";
const PROXY: &str = "simple-kanary-rule-haproxy";

/// Steady load (4 clients, a connection every 25 ms each) through `target` while `work` runs.
async fn phase<F: std::future::Future<Output = ()>>(target: std::net::SocketAddr, work: F) -> Tally {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(target, 4, Duration::from_millis(25), stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    work.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap()
}

/// 4 long-lived connections through `target` while `work` runs; what `work` gave.
async fn with_long_lived<T, F: std::future::Future<Output = T>>(
    target: std::net::SocketAddr,
    work: F,
) -> (T, Vec<LongLived>) {
    let stop = Arc::new(AtomicBool::new(false));
    let long = tokio::spawn(long_lived(target, 4, Duration::from_millis(300), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = work.await;
    stop.store(true, Ordering::Relaxed);
    (out, long.await.unwrap())
}

/// Kills (SIGKILL) the children of the process whose command line matches `pattern`.
async fn kill_children_of(pattern: &str) {
    let found = tokio::process::Command::new("pgrep").args(["-f", "--", pattern]).output().await.unwrap();
    let parents = String::from_utf8_lossy(&found.stdout).to_string();
    assert!(!parents.trim().is_empty(), "no process matches {pattern:?}");
    for parent in parents.split_whitespace() {
        let status = tokio::process::Command::new("pkill").args(["-KILL", "-P", parent]).status().await.unwrap();
        assert!(status.success(), "process {parent} ({pattern:?}) has no child");
    }
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

/// The sum over the proxy pods' agents (their metrics addresses) of a metric.
async fn agents_metric(addresses: &[String], series: &str) -> f64 {
    let mut total = 0.0;
    for address in addresses {
        let text = support::http_get(address, "/metrics").await.unwrap_or_default();
        total += text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0);
    }
    total
}

/// Under steady load through the agent-managed proxy: 20 weight changes, 20 scale-ups and -downs of a route,
/// an agent killed and restarted, and the replacement of every pod of a route: no failed connection, no
/// HAProxy restart or new proxy pod, no reload (every change applied at run time), long-lived connections
/// cut only when their own backend pod went. Then a backend pod that dies abruptly costs at most 3
/// connections; a configuration HAProxy refuses is reported and the previous one keeps serving. The agents'
/// identity is used for exactly what its Role grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_running_proxy_with_no_failed_connection_and_no_restart() {
    if !can_simulate() {
        return;
    }
    let (mut e, sim) = env_with_simulator(236, 40).await;
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
    // each agent's metrics port, where the host reaches it
    let agents: Vec<String> = proxies
        .values()
        .map(|(ip, _)| e.cluster.host_address(SocketAddr::new(ip.parse().unwrap(), 8405)).to_string())
        .collect();
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
        let weights = phase(listen, async {
            for i in 0..20 {
                set_weights(80 - i).await;
                e.cluster.wait_synced(&kanaries, KANARY, 30).await;
            }
        });
        let weights = weights.await;
        let scaling = phase(listen, async {
            for i in 0..20 {
                scale("b", if i % 2 == 0 { 3 } else { 2 }).await;
                e.cluster.wait_rolled_out("b", "b", 60).await;
                e.cluster.wait_synced(&kanaries, KANARY, 30).await;
            }
        });
        let scaling = scaling.await;
        // an agent crashes (SIGKILL); its HAProxy goes on serving, the restarted agent takes over without a
        // reload (its pod is not ready meanwhile, as with any container that is not running: the other proxy
        // pod takes the new connections)
        let crash = phase(listen, async {
            let first_proxy = pods.get(proxies.keys().next().unwrap()).await.unwrap();
            let pod_id: String = first_proxy.metadata.uid.unwrap().replace('-', "").chars().take(12).collect();
            // the simulator's launcher of the pod's first container has the agent as its child
            kill_children_of(&format!("pods/{pod_id}/containers/0 ")).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            set_weights(50).await;
            e.cluster.wait_synced(&kanaries, KANARY, 60).await;
        });
        let crash = crash.await;
        // every pod of route a replaced (a rolling update)
        let rollout = phase(listen, async {
            let restart = json!({"spec": {"template": {"metadata": {"annotations": {"restartedAt": "now"}}}}});
            deployments.patch("a", &PatchParams::default(), &Patch::Merge(restart)).await.unwrap();
            e.cluster.wait_rolled_out("a", "a", 90).await;
            e.cluster.wait_synced(&kanaries, KANARY, 30).await;
        });
        let rollout = rollout.await;
        [
            ("20 weight changes", weights),
            ("20 scale-ups and -downs", scaling),
            ("an agent crash", crash),
            ("a rollout", rollout),
        ]
    };
    let (phases, long) = with_long_lived(listen, changes).await;
    let log = || format!("controller:\n{}\nsimulator:\n{}", e.controller.log(), sim.log());
    let mut tally = Tally::default();
    for (what, phase) in phases {
        let by_backend = phase.clone().regroup(|a| a.rsplit_once("image=echo:").map_or(a, |(_, b)| b).to_string());
        eprintln!("{what}: {by_backend:?}");
        assert_eq!(phase.failures, 0, "failed connections during {what} ({phase:?}):\n{}", log());
        tally.add(phase);
    }
    assert!(tally.total() > 1_000, "too little load to mean anything: {tally:?}");
    assert_eq!(agents_metric(&agents, reloads).await, reloads_before, "a reload for weights or servers:\n{}", log());
    assert!(agents_metric(&agents, "kanary_agent_changes_applied_total{how=\"runtime\"}").await >= 2.0);
    assert_eq!(e.cluster.generation(PROXY).await, generation, "the proxy's pod template changed");
    assert_eq!(proxy_pods(&pods).await, proxies, "HAProxy restarted, or proxy pods were replaced");
    let agent_restarts = |pod: Pod| {
        let statuses = pod.status.unwrap_or_default().init_container_statuses.unwrap_or_default();
        statuses.iter().find(|c| c.name == "agent").map_or(0, |c| c.restart_count)
    };
    let crashed = pods.get(proxies.keys().next().unwrap()).await.unwrap();
    assert_eq!(agent_restarts(crashed), 1, "the agent was not killed and restarted");
    // a long-lived connection is cut only when its own backend pod went
    assert_eq!(long.len(), 4, "every long-lived connection opened: {long:?}");
    let running: BTreeSet<String> =
        pods.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|p| p.metadata.name).collect();
    for connection in &long {
        let pod = connection.backend.strip_prefix("pod=").and_then(|a| a.split(' ').next()).unwrap_or_default();
        assert!(!connection.cut || !running.contains(pod), "a long-lived connection to {pod} was cut: {long:?}");
    }

    // a backend pod that dies abruptly (its process killed): a handful of failed connections at most
    // one that runs: not one still terminating from the replacement above (its process may be gone)
    let b_pods = pods.list(&ListParams::default()).await.unwrap().items;
    let b_pod = b_pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .find(|p| p.starts_with("b-"))
        .expect("a running pod of b");
    let tally = phase(listen, async {
        kill_matching(&format!("--pod {b_pod} ")).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
    })
    .await;
    eprintln!("a pod of b killed: {tally:?}");
    assert!(tally.failures <= 3, "{} connections failed when a pod died: {tally:?}", tally.failures);

    // a configuration HAProxy refuses, written by hand while the controller is stopped (the controller never
    // writes one): each agent reports it and its HAProxy keeps serving the previous one; the controller, back,
    // puts its own configuration back and the agents serve it
    e.controller.terminate().await;
    let config_maps: Api<ConfigMap> = e.cluster.api();
    let config_map = config_maps.get(&format!("{KANARY}-config")).await.unwrap();
    let mut plane: DataPlane = serde_json::from_str(&config_map.data.unwrap()[DATAPLANE_KEY]).unwrap();
    plane.settings.timeout_client = "1fortnight".into();
    let refused = plane.revision();
    let tally = phase(listen, async {
        let patch = Patch::Merge(json!({"data": {DATAPLANE_KEY: plane.to_json()}}));
        config_maps.patch(&format!("{KANARY}-config"), &PatchParams::default(), &patch).await.unwrap();
        let reported = || async {
            let reports = kanaries.get(KANARY).await.unwrap().data["status"]["proxies"].clone();
            proxies.keys().all(|pod| reports[pod]["refusedRevision"] == refused.as_str())
        };
        if !support::within(60, reported).await {
            let status = kanaries.get(KANARY).await.unwrap().data["status"]["proxies"].clone();
            let agents: Vec<String> =
                sim.log().lines().filter(|l| l.contains("canary_controller::agent")).map(String::from).collect();
            panic!(
                "the agents did not report the refused configuration {refused}: {status}\n{}",
                agents[agents.len().saturating_sub(30)..].join("\n")
            );
        }
    })
    .await;
    assert_eq!(tally.failures, 0, "failed connections around a refused configuration: {tally:?}");
    let mut controller = e.cluster.spawn_controller_with("controller-2", &[]);
    controller.wait_for_log("controllers running").await;
    e.cluster.wait_synced(&kanaries, KANARY, 60).await;

    // the agents' identity did what its Role grants and nothing else
    let user = format!("system:serviceaccount:{}:{PROXY}", e.cluster.namespace);
    let used = e.cluster.requests_of(&user).expect("the API server's record of requests");
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
