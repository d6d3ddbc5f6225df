//! `cargo bench -p canary-controller --bench scale`: the real `canary-controller run` (release build, leader
//! election on) against Kubernetes' own control plane (kube-apiserver, etcd, kube-controller-manager and
//! kube-scheduler built by `make setup`; no nodes) holding SCALE Canaries and SCALE Kanaries (default 1,000
//! each; each Kanary has 5 routes whose Services have 20 ready endpoints). Prints:
//! - time to converge from start (every child and status written), and as a ratio to the time the bench
//!   itself takes to write the same number of child objects straight to the API (the baseline);
//! - p50/p99 latency from a spec change to the updated child (one change at a time);
//! - reconciles per object and API requests per reconcile while converging, reads and writes per object
//!   (events apart), and requests in a quiet window when nothing changes;
//! - writes and reconciles of a controller restarted on the converged cluster (0 writes: it finds every
//!   child as desired);
//! - the controller's peak RSS (VmHWM) and CPU time until converged, per object; kube-apiserver's and etcd's
//!   CPU over the same window and their peak RSS;
//! - the same-run anchor: kube-controller-manager's CPU and peak RSS for the Deployment and ReplicaSet work of
//!   the same objects (the 2 x SCALE Deployments the controller creates get their ReplicaSets and Pods), per
//!   Deployment, beside the controller's per object.
//!
//! The request figures are the controller's own count (`canary_controller_api_requests_total`, leader election
//! apart); convergence is polled through the API once a second.
//!
//! Each figure is printed as soon as it is measured. Asserts nothing; the figures are quoted in the README.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PER_NAMESPACE: usize = 20;
const ROUTES: usize = 5;
const ENDPOINTS: usize = 20;
const SAMPLES: usize = 100;
const QUIET: Duration = Duration::from_secs(10);

fn ns_of(i: usize) -> String {
    format!("scale-{}", i / PER_NAMESPACE)
}

fn target(i: usize, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": format!("app-{i}"), "namespace": ns_of(i)},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": format!("app-{i}")}},
            "template": {"metadata": {"labels": {"app": format!("app-{i}")}},
                "spec": {"containers": [{"name": "app", "image": image}]}}}})
}

fn canary(i: usize, image: &str) -> Value {
    json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
        "metadata": {"name": format!("c-{i}"), "namespace": ns_of(i)},
        "spec": {"targetDeploymentName": format!("app-{i}"), "targetContainers": [{"name": "app", "image": image}]}})
}

/// Kanary `k-{i}`: each route after the first gets `rest` percent, the first the remainder.
fn kanary(i: usize, rest: i64) -> Value {
    let routes: Vec<Value> = (0..ROUTES)
        .map(|r| {
            let weight = if r == 0 { 100 - rest * (ROUTES as i64 - 1) } else { rest };
            json!({"backend": {"serviceName": format!("k-{i}-v{r}"), "servicePort": 80}, "weight": weight})
        })
        .collect();
    json!({"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "metadata": {"name": format!("k-{i}"), "namespace": ns_of(i)},
        "spec": {"destination": format!("k-{i}"), "routes": routes}})
}

fn backend(i: usize, r: usize) -> (Value, Value) {
    let name = format!("k-{i}-v{r}");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns_of(i)},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}});
    let endpoints: Vec<Value> = (0..ENDPOINTS)
        .map(|e| {
            json!({"addresses": [format!("10.{}.{}.{}", i / 250, (i % 250), r * ENDPOINTS + e)],
            "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": format!("{name}-{e}")}})
        })
        .collect();
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-abc"), "namespace": ns_of(i), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints});
    (svc, slice)
}

fn api_for(client: &kube::Client, object: &Value) -> (Api<DynamicObject>, String) {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), object["apiVersion"].as_str().unwrap().to_string()),
    };
    let ar = match object["kind"].as_str().unwrap() {
        // the operator's own definition: guessing the plural from the kind would give "kanarys"
        "Kanary" => canary_controller::api::kanary::api_resource(&group, &version),
        kind => kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(&group, &version, kind)),
    };
    let ns = object["metadata"]["namespace"].as_str().unwrap();
    (Api::namespaced_with(client.clone(), ns, &ar), object["metadata"]["name"].as_str().unwrap().to_string())
}

/// Creates the objects, 16 requests in flight.
async fn create_all(client: &kube::Client, objects: Vec<Value>) {
    futures::stream::iter(objects)
        .map(|o| async move {
            let (api, _) = api_for(client, &o);
            api.create(&PostParams::default(), &serde_json::from_value(o).unwrap()).await.unwrap();
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

/// CPU seconds (user + system) a process used, from /proc/<pid>/stat.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or_default().split(' ').collect();
    let ticks: f64 = fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    ticks / 100.0
}

fn total(counters: &BTreeMap<String, u64>, skip: impl Fn(&str) -> bool) -> u64 {
    counters.iter().filter(|(k, _)| !skip(k)).map(|(_, v)| v).sum()
}

async fn reconciles(metrics_address: &str) -> f64 {
    let body = e2e_support::tools::http_get(metrics_address, "/metrics").await.unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("canary_controller_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts `canary-controller run` (under CONTROLLER_WRAPPER, e.g. "heaptrack -o /tmp/controller") with its
/// log in `log_path`, in a process group of its own (stopping it stops a wrapper's children too; CPU and RSS
/// figures are then the wrapper's, unless it `exec`s the controller).
fn spawn_controller(kubeconfig: &std::path::Path, log_path: &std::path::Path) -> tokio::process::Child {
    let wrapper: Vec<String> =
        std::env::var("CONTROLLER_WRAPPER").unwrap_or_default().split_whitespace().map(String::from).collect();
    let binary = env!("CARGO_BIN_EXE_canary-controller").to_string();
    let command: Vec<String> = wrapper.into_iter().chain([binary]).collect();
    tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .args(["run", "--leader-election-namespace", "default"])
        .env("KUBECONFIG", kubeconfig)
        .env("METRICS_ADDRESS", "127.0.0.1:0")
        .env("RUST_LOG", std::env::var("CONTROLLER_LOG").unwrap_or("warn,canary_controller=info".into()))
        .stderr(std::fs::File::create(log_path).unwrap())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Sends `signal` to the process group `spawn_controller` started.
fn signal_group(pid: u32, signal: &str) {
    std::process::Command::new("kill").args(["-s", signal, "--", &format!("-{pid}")]).status().unwrap();
}

/// The address the controller serves /metrics on, from its log.
async fn wait_metrics_address(log_path: &std::path::Path) -> String {
    for _ in 0..600 {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("serving /metrics")) {
            return line.rsplit(' ').next().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the controller did not start:\n{}", std::fs::read_to_string(log_path).unwrap_or_default());
}

/// Waits until the controller's reconcile count reaches `at_least` and then does not change for a second;
/// returns the count and when it last changed.
async fn reconciles_settle(address: &str, at_least: f64) -> (f64, Instant) {
    let started = Instant::now();
    let (mut last, mut last_change) = (reconciles(address).await, Instant::now());
    while last < at_least || last_change.elapsed() < Duration::from_secs(1) {
        assert!(started.elapsed() < Duration::from_secs(300), "reconciles stuck at {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = reconciles(address).await;
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    (last, last_change)
}

/// The controller's count of its API requests ("VERB resource" -> n), from its `/metrics`.
async fn controller_requests(metrics_address: &str) -> BTreeMap<String, u64> {
    let body = e2e_support::tools::http_get(metrics_address, "/metrics").await.unwrap_or_default();
    let mut counters = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("canary_controller_api_requests_total{")) {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(line[start..].split('"').next()?.to_string())
        };
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        if let (Some(verb), Some(resource)) = (label("verb"), label("resource")) {
            *counters.entry(format!("{verb} {resource}")).or_default() += value;
        }
    }
    counters
}

/// `now - before`, counter by counter.
fn minus(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).collect()
}

/// CPU seconds of each control-plane component.
fn plane_cpu(pids: &[(&'static str, u32)]) -> BTreeMap<&'static str, f64> {
    pids.iter().map(|(name, pid)| (*name, cpu_seconds(&pid.to_string()))).collect()
}

/// Requests of `verbs` among request counters ("VERB resource"), Lease and events apart.
fn requests(counters: &BTreeMap<String, u64>, verbs: &[&str]) -> u64 {
    let counted =
        |k: &str| !k.contains("leases") && !k.contains("events") && verbs.contains(&k.split(' ').next().unwrap());
    total(counters, |k| !counted(k))
}

const WRITES: &[&str] = &["create", "patch", "update", "delete"];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale: usize = std::env::var("SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let plane = e2e_support::control_plane::ControlPlane::start()
        .await
        .expect("Kubernetes' control plane is not built: run make setup (scripts/build-control-plane.sh)");
    let client = plane.client().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = plane.kubeconfig.clone();
    let pids = plane.pids();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in canary_controller::api::crds() {
        let name = kube::ResourceExt::name_any(&crd);
        crds.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(crd)).await.unwrap();
        let established = kube::runtime::conditions::is_crd_established();
        let wait = kube::runtime::wait::await_condition(crds.clone(), &name, established);
        tokio::time::timeout(Duration::from_secs(30), wait).await.unwrap().unwrap();
    }
    for n in 0..scale.div_ceil(PER_NAMESPACE) {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": format!("scale-{n}")}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    }

    eprintln!("creating {scale} Canaries and {scale} Kanaries ({ROUTES} routes x {ENDPOINTS} endpoints each)...");
    let mut objects = vec![];
    for i in 0..scale {
        objects.push(target(i, "app:1"));
        objects.push(canary(i, "app:2"));
        for r in 0..ROUTES {
            let (svc, slice) = backend(i, r);
            objects.push(svc);
            objects.push(slice);
        }
        objects.push(kanary(i, 5));
    }
    create_all(&client, objects).await;

    // baseline: the bench writes as many child objects (a Deployment like each canary's) straight to the API
    let started = Instant::now();
    let baseline_objects = (0..scale)
        .map(|i| {
            let mut d = target(i, "app:2");
            d["metadata"]["name"] = json!(format!("baseline-{i}"));
            d
        })
        .collect();
    create_all(&client, baseline_objects).await;
    let baseline = started.elapsed();

    println!(
        "scale: {scale} Canaries, {scale} Kanaries ({ROUTES} routes x {ENDPOINTS} endpoints), Kubernetes {} (kube-apiserver, etcd, kube-controller-manager, kube-scheduler; no nodes)",
        e2e_support::control_plane::version()
    );
    let plane_before = plane_cpu(&pids);
    let log_path = dir.path().join("controller.log");
    let mut controller = spawn_controller(&kubeconfig, &log_path);
    let pid = controller.id().unwrap();
    let started = Instant::now();

    // converged: every canary Deployment and HAProxy ConfigMap exists and every status is written (polled
    // through the API once a second)
    let counted = |plural: &'static str, done: fn(&Value) -> bool| {
        let client = client.clone();
        async move {
            let (group, version) = match plural {
                "canaries" => ("canary.k8s.wantedly.com", "v1beta1"),
                "kanaries" => ("kanary.k8s.io", "v1"),
                "deployments" => ("apps", "v1"),
                _ => ("", "v1"),
            };
            let gvk = kube::core::GroupVersionKind::gvk(group, version, "");
            let ar = kube::core::ApiResource::from_gvk_with_plural(&gvk, plural);
            let api: Api<DynamicObject> = Api::all_with(client, &ar);
            let list = api.list(&Default::default()).await.unwrap();
            list.items.iter().map(|o| serde_json::to_value(o).unwrap()).filter(&done).count()
        }
    };
    let has_conditions: fn(&Value) -> bool = |o| o["status"]["conditions"].as_array().is_some_and(|c| !c.is_empty());
    loop {
        let done = counted("deployments", |d| d["metadata"]["labels"]["canary"] == "true").await == scale
            && counted("configmaps", |c| c["metadata"]["name"].as_str().unwrap().ends_with("-config")).await == scale
            && counted("canaries", has_conditions).await == scale
            && counted("kanaries", has_conditions).await == scale;
        if done {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            panic!("not converged after 600 s; log:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let metrics_address = wait_metrics_address(&log_path).await;
    // ... and the work queue drained: converged when the last reconcile ended (none for a second after it)
    let (_, last_change) = reconciles_settle(&metrics_address, 0.0).await;
    let converge = last_change.duration_since(started);
    let controller_cpu = cpu_seconds(&pid.to_string());
    let plane_converge = plane_cpu(&pids);
    let plane_used = |name: &str| plane_converge[name] - plane_before[name];
    let is_lease = |k: &str| k.contains("leases");
    let converge_counters = controller_requests(&metrics_address).await;
    let converge_requests = total(&converge_counters, |k| is_lease(k) || k.starts_with("watch "));
    let verb = |verbs: &[&str]| requests(&converge_counters, verbs);
    let (gets, lists) = (verb(&["get"]), verb(&["list"]));
    let (creates, patches, deletes) = (verb(&["create"]), verb(&["patch", "update"]), verb(&["delete"]));
    let events = total(&converge_counters, |k| !k.contains("events") || k.starts_with("watch "));
    let converge_reconciles = reconciles(&metrics_address).await;
    let objects = (2 * scale) as f64;
    println!(
        "converge from start:        {:.1} s  (baseline, the bench writing {scale} Deployments itself: {:.1} s; ratio {:.1})",
        converge.as_secs_f64(),
        baseline.as_secs_f64(),
        converge.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "reconciles per object:      {:.2} ({converge_reconciles} reconciles while converging)",
        converge_reconciles / objects
    );
    println!(
        "API requests per reconcile: {:.1} ({converge_requests} requests; watches and Lease excluded)",
        converge_requests as f64 / converge_reconciles.max(1.0)
    );
    println!(
        "API reads per object:       {:.2} ({gets} gets; {lists} lists, the caches' own initial lists)",
        gets as f64 / objects
    );
    println!(
        "API writes per object:      {:.2} ({creates} creates, {patches} patches and updates, {deletes} deletes; and {events} event writes)",
        (creates + patches + deletes) as f64 / objects
    );
    println!(
        "CPU until converged:        controller {controller_cpu:.1} s ({:.2} ms per object); kube-apiserver {:.1} s, etcd {:.1} s, kube-controller-manager {:.1} s, kube-scheduler {:.1} s",
        controller_cpu * 1e3 / objects,
        plane_used("kube-apiserver"),
        plane_used("etcd"),
        plane_used("kube-controller-manager"),
        plane_used("kube-scheduler"),
    );

    // the anchor: kube-controller-manager finishing the Deployment and ReplicaSet work for the Deployments the
    // controller created (a ReplicaSet and its Pods each)
    let rolled: fn(&Value) -> bool = |d| {
        d["metadata"]["labels"]["canary"] == "true" || d["metadata"]["name"].as_str().unwrap().ends_with("-haproxy")
    };
    let settled_at = Instant::now();
    loop {
        let done = counted("deployments", |d| {
            let made = d["status"]["replicas"].as_i64() == d["spec"]["replicas"].as_i64();
            let ours = d["metadata"]["labels"]["canary"] == "true"
                || d["metadata"]["name"].as_str().unwrap().ends_with("-haproxy");
            ours && made && d["status"]["observedGeneration"] == d["metadata"]["generation"]
        })
        .await;
        if done == 2 * scale || settled_at.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let handled = counted("deployments", rolled).await;
    let manager_cpu = plane_cpu(&pids)["kube-controller-manager"] - plane_before["kube-controller-manager"];
    let rss_of = |name: &str| peak_rss_mib(pids.iter().find(|(n, _)| *n == name).unwrap().1);
    println!(
        "anchor, kube-controller-manager: {manager_cpu:.1} s CPU for the {handled} Deployments the controller created \
         (their ReplicaSets and Pods): {:.2} ms per Deployment, against the controller's {:.2} ms per object; peak RSS \
         {:.1} MiB",
        manager_cpu * 1e3 / handled.max(1) as f64,
        controller_cpu * 1e3 / objects,
        rss_of("kube-controller-manager")
    );

    // quiet window: nothing changes
    let before = controller_requests(&metrics_address).await;
    let reconciles_before = reconciles(&metrics_address).await;
    tokio::time::sleep(QUIET).await;
    let quiet = minus(&controller_requests(&metrics_address).await, &before);
    let quiet_requests = total(&quiet, is_lease);
    let quiet_reconciles = reconciles(&metrics_address).await - reconciles_before;
    if quiet_requests > 0 {
        eprintln!("requests in the quiet window: {quiet:?}");
    }
    println!(
        "quiet {}s, nothing changing:  {quiet_requests} requests, {quiet_reconciles} reconciles (Lease renewals apart)",
        QUIET.as_secs()
    );
    let first_rss = peak_rss_mib(pid);

    // restart on the converged cluster: every object is reconciled once and nothing is written
    signal_group(pid, "TERM");
    controller.wait().await.unwrap();
    let restarted_log = dir.path().join("controller-restarted.log");
    let restarted_at = Instant::now();
    controller = spawn_controller(&kubeconfig, &restarted_log);
    let pid = controller.id().unwrap();
    let metrics_address = wait_metrics_address(&restarted_log).await;
    let (restart_reconciles, settled) = reconciles_settle(&metrics_address, (2 * scale) as f64).await;
    let restart_time = settled.duration_since(restarted_at);
    let restart_counters = controller_requests(&metrics_address).await;
    let restart_writes = requests(&restart_counters, WRITES);
    if restart_writes > 0 {
        let written: BTreeMap<&String, &u64> = restart_counters
            .iter()
            .filter(|(k, v)| **v > 0 && WRITES.contains(&k.split(' ').next().unwrap()))
            .collect();
        eprintln!("writes after the restart: {written:?}");
    }
    let log_path = restarted_log;
    println!(
        "restart, converged cluster: {restart_writes} writes, {restart_reconciles} reconciles, settled in {:.1} s",
        restart_time.as_secs_f64()
    );

    // change -> child latency, one change at a time
    let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Default::default();
    let record = seen.clone();
    let (listed, mut listed_rx) = tokio::sync::watch::channel(false);
    let watch_deployments = tokio::spawn(async move {
        let config = watcher::Config::default().labels("canary=true");
        watcher(Api::<Deployment>::all(server_client(&kubeconfig).await), config)
            .try_for_each(|event| {
                let d = match event {
                    watcher::Event::Apply(d) | watcher::Event::InitApply(d) => d,
                    watcher::Event::InitDone => {
                        listed.send_replace(true);
                        return futures::future::ready(Ok(()));
                    }
                    _ => return futures::future::ready(Ok(())),
                };
                let image = d.spec.and_then(|s| s.template.spec).and_then(|s| s.containers.first()?.image.clone());
                if let Some(image) = image.filter(|i| i.starts_with("app:3-")) {
                    record.lock().unwrap().entry(image).or_insert_with(Instant::now);
                }
                futures::future::ready(Ok(()))
            })
            .await
    });
    // the watch's initial list first, or the first changes would be timed from the list
    tokio::time::timeout(Duration::from_secs(300), listed_rx.wait_for(|l| *l)).await.unwrap().unwrap();
    let mut canary_latency = vec![];
    for s in 0..SAMPLES {
        let i = s * scale / SAMPLES;
        let image = format!("app:3-{s}");
        let (api, name) = api_for(&client, &canary(i, &image));
        let changed = Instant::now();
        api.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(canary(i, &image))).await.unwrap();
        loop {
            if let Some(at) = seen.lock().unwrap().get(&image) {
                canary_latency.push(at.duration_since(changed));
                break;
            }
            if changed.elapsed() > Duration::from_secs(10) {
                panic!("canary {i} was not updated");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    watch_deployments.abort();
    let mut kanary_latency = vec![];
    for s in 0..SAMPLES {
        let i = s * scale / SAMPLES;
        let weight = 6 + (s as i64 % 10); // never 5, the weight it was created with
        let (api, name) = api_for(&client, &kanary(i, weight));
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns_of(i));
        let before = cms.get(&format!("{name}-config")).await.unwrap().data;
        let changed = Instant::now();
        api.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(kanary(i, weight))).await.unwrap();
        // polled every millisecond: a watch started per change would time its own start, and a watch of every
        // ConfigMap would cost the bench more than it measures
        loop {
            if cms.get(&format!("{name}-config")).await.unwrap().data != before {
                kanary_latency.push(changed.elapsed());
                break;
            }
            if changed.elapsed() > Duration::from_secs(10) {
                panic!("kanary {i} was not updated");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let rss = peak_rss_mib(pid).max(first_rss);
    let warnings =
        std::fs::read_to_string(&log_path).unwrap_or_default().lines().filter(|l| l.contains("WARN")).count();
    if warnings > 0 || std::env::var("CONTROLLER_LOG").is_ok() {
        eprintln!("{warnings} warnings in the controller's log ({})", log_path.display());
        std::fs::copy(&log_path, "/tmp/scale-controller.log").ok();
    }
    if let Some(pid) = controller.id() {
        signal_group(pid, "KILL");
    }
    let _ = controller.start_kill();

    canary_latency.sort();
    kanary_latency.sort();
    println!(
        "change -> child, Canary:    p50 {:.1} ms, p99 {:.1} ms ({SAMPLES} changes)",
        percentile(&canary_latency, 0.5).as_secs_f64() * 1e3,
        percentile(&canary_latency, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "change -> child, Kanary:    p50 {:.1} ms, p99 {:.1} ms ({SAMPLES} changes)",
        percentile(&kanary_latency, 0.5).as_secs_f64() * 1e3,
        percentile(&kanary_latency, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "peak RSS:                   controller {rss:.1} MiB; kube-apiserver {:.1} MiB, etcd {:.1} MiB",
        rss_of("kube-apiserver"),
        rss_of("etcd")
    );
}

async fn server_client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}
