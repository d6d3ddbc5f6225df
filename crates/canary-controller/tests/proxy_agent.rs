//! The proxy agent (`canary-controller proxy-agent`, the real binary) against the real API server (its RBAC
//! authorizer deciding, the agent holding its ServiceAccount's token) and a real HAProxy in master-worker mode, as they run side by side in a proxy pod: the agent
//! reads its Kanary's ConfigMap under a Role that names that ConfigMap alone, writes HAProxy's files before
//! HAProxy starts, and applies every later change to the running HAProxy. Traffic is real, on loopback.

use canary_controller::agent::master_cli::MasterCli;
use canary_controller::dataplane::Server;
use canary_controller::dataplane::haproxy::{ProxySettings, RouteBackend};
use canary_controller::dataplane::{DATAPLANE_KEY, DataPlane};
use canary_controller::kanary::build;
use e2e_support::traffic::{LongLived, Tally, drive, free_port, long_lived, start_backends, steady_load};
use e2e_support::{Cluster, controller_binary, eventually, http_get, within};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::process::{Child, Command};

const KANARY: &str = "k";
const CONFIG_MAP: &str = "k-config";
/// The pod the agent reports for.
const POD: &str = "k-haproxy-7d4b9c-x2x9q";

/// A route's servers: `ips` on `port`.
fn servers(ips: &[&str], port: u16) -> Vec<Server> {
    ips.iter().map(|ip| Server { name: format!("pod-{ip}"), address: ip.parse().unwrap(), port }).collect()
}

struct Rig {
    cluster: Cluster,
    dir: tempfile::TempDir,
    settings: ProxySettings,
    agent: Child,
    agent_metrics: String,
    haproxy: Child,
    cli: MasterCli,
    kubeconfig: PathBuf,
}

impl Rig {
    /// The API server holding the ConfigMap for `routes`, the agent under a Role that grants get, list and
    /// watch of that ConfigMap alone, and HAProxy started on the files the agent wrote.
    async fn start(routes: Vec<RouteBackend>) -> Option<Rig> {
        if !e2e_support::tools::available("haproxy") {
            return None;
        }
        let cluster = Cluster::start().await;
        cluster.install_crds().await;
        let admin = cluster.client.clone();
        let ns = cluster.namespace.clone();
        let ns = ns.as_str();
        // the Kanary the agent reports to, and the agent's identity as the controller makes it
        let kanary = json!({"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "metadata": {"name": KANARY, "namespace": ns},
            "spec": {"destination": "front", "routes": [{"backend": {"serviceName": "a", "servicePort": 80}, "weight": 100}]}});
        let kanaries = kanaries(&admin, ns);
        let created = kanaries.create(&PostParams::default(), &serde_json::from_value(kanary).unwrap()).await.unwrap();
        let owner: OwnerReference = serde_json::from_value(json!({"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary",
            "name": KANARY, "uid": created.metadata.uid, "controller": true}))
        .unwrap();
        let pp = PostParams::default();
        Api::namespaced(admin.clone(), ns)
            .create(&pp, &build::build_service_account(KANARY, ns, &owner))
            .await
            .unwrap();
        Api::namespaced(admin.clone(), ns).create(&pp, &build::build_role(KANARY, ns, &owner)).await.unwrap();
        Api::namespaced(admin.clone(), ns).create(&pp, &build::build_role_binding(KANARY, ns, &owner)).await.unwrap();
        let kubeconfig = cluster.service_account_kubeconfig(&format!("{KANARY}-haproxy")).await;

        let dir = tempfile::tempdir().unwrap();
        let settings = ProxySettings { port: free_port("::"), stats_port: free_port("::"), ..ProxySettings::default() };
        let mut rig_settings = settings.clone();
        rig_settings.files_dir = dir.path().join("run").to_str().unwrap().into();
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": CONFIG_MAP, "namespace": ns},
            "data": {DATAPLANE_KEY: plane(&settings, routes).to_json()}}))
        .unwrap();
        Api::<ConfigMap>::namespaced(admin, ns).create(&PostParams::default(), &cm).await.unwrap();
        let run_dir = dir.path().join("run");
        let agent_metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let agent = spawn_agent(&kubeconfig, ns, &run_dir, &agent_metrics, dir.path().join("agent.log"));
        eventually(30, "the agent writes HAProxy's config", || async { run_dir.join("haproxy.cfg").exists() }).await;
        let haproxy = Command::new("haproxy")
            .args(["-W", "-db", "-S"])
            .arg(run_dir.join("master.sock"))
            .arg("-f")
            .arg(run_dir.join("haproxy.cfg"))
            .stdout(std::fs::File::create(dir.path().join("haproxy.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("haproxy.err")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let cli = MasterCli::new(&run_dir.join("master.sock"));
        let rig = Rig { cluster, dir, settings: rig_settings, agent, agent_metrics, haproxy, cli, kubeconfig };
        rig.wait_ready().await;
        Some(rig)
    }

    fn target(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.settings.port).parse().unwrap()
    }

    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "agent:\n{}{}\nhaproxy:\n{}{}",
            read("agent.log"),
            read("agent2.log"),
            read("haproxy.log"),
            read("haproxy.err")
        )
    }

    async fn wait_ready(&self) {
        let address = self.agent_metrics.clone();
        let ready = within(30, || {
            let address = address.clone();
            async move { http_get(&address, "/readyz").await.is_some_and(|r| r.contains(" 200 ")) }
        })
        .await;
        assert!(ready, "the agent is not ready (HAProxy does not serve the data plane) after 30 s:\n{}", self.log());
    }

    /// Writes the ConfigMap's data plane (as the controller does).
    async fn set(&self, routes: Vec<RouteBackend>) {
        let mut settings = self.settings.clone();
        settings.files_dir = ProxySettings::default().files_dir;
        self.set_plane(plane(&settings, routes)).await;
    }

    async fn set_plane(&self, plane: DataPlane) {
        let patch = json!({"data": {DATAPLANE_KEY: plane.to_json()}});
        let api: Api<ConfigMap> = self.cluster.api();
        api.patch(CONFIG_MAP, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = http_get(&self.agent_metrics, "/metrics").await.unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
    }

    /// Waits until the agent has applied `n` changes in all (at run time or by a reload) and is in sync.
    async fn wait_applied(&self, n: f64) {
        for _ in 0..300 {
            let applied = self.metric("kanary_agent_changes_applied_total{how=\"runtime\"}").await
                + self.metric("kanary_agent_changes_applied_total{how=\"reload\"}").await;
            if applied >= n && self.metric("kanary_agent_in_sync").await == 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the agent did not apply {n} changes:\n{}", self.log());
    }

    /// What the agent reports in the Kanary's status (`status.proxies.<pod>`), once it reported.
    async fn report(&self) -> serde_json::Value {
        let kanaries = kanaries(&self.cluster.client, &self.cluster.namespace);
        eventually(10, "the agent's report in the Kanary's status", || async {
            kanaries.get(KANARY).await.unwrap().data["status"]["proxies"][POD].is_object()
        })
        .await;
        kanaries.get(KANARY).await.unwrap().data["status"]["proxies"][POD].clone()
    }

    async fn reloads(&self) -> u64 {
        self.cli.reloads().await.unwrap().count
    }
}

fn spawn_agent(
    kubeconfig: &std::path::Path,
    ns: &str,
    run_dir: &std::path::Path,
    metrics: &str,
    log: PathBuf,
) -> Child {
    Command::new(controller_binary())
        .args(["proxy-agent", "--namespace", ns, "--config-map", CONFIG_MAP, "--dir"])
        .arg(run_dir)
        .arg("--master-socket")
        .arg(run_dir.join("master.sock"))
        .args(["--metrics-address", metrics])
        .args(["--kanary", KANARY, "--kanary-api-version", "kanary.k8s.io/v1", "--pod-name", POD])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn kanaries(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &canary_controller::api::kanary::api_resource("kanary.k8s.io", "v1"))
}

fn plane(settings: &ProxySettings, routes: Vec<RouteBackend>) -> DataPlane {
    DataPlane { owner: "default/k".into(), settings: settings.clone(), routes }
}

fn route(service: &str, weight: i64, servers: Vec<Server>) -> RouteBackend {
    RouteBackend { service: service.into(), weight, servers, h2c: false, header_value: None }
}

async fn under_load<F: std::future::Future<Output = ()>>(target: SocketAddr, changes: F) -> (Tally, Vec<LongLived>) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(target, 4, Duration::from_millis(20), stop.clone()));
    let long = tokio::spawn(long_lived(target, 4, Duration::from_millis(300), stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    changes.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (load.await.unwrap(), long.await.unwrap())
}

/// Under steady load: 20 weight changes, 20 scale-ups and -downs of a route and the replacement of all its
/// servers reach the running HAProxy with no reload and no failed connection; long-lived connections to
/// servers that stay are never cut; then the split follows the last weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_servers_change_at_run_time_with_no_reload_and_no_failed_connection() {
    let a_ips = ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"];
    let a_port = start_backends(&a_ips, "a").await;
    let b_port = start_backends(&["127.0.0.31"], "b").await;
    let new_a = start_backends(&["127.0.0.25", "127.0.0.26"], "a-new").await;
    let start = vec![route("a", 100, servers(&a_ips[..1], a_port)), route("b", 0, servers(&["127.0.0.31"], b_port))];
    let Some(rig) = Rig::start(start).await else { return };
    let b = |weight| route("b", weight, servers(&["127.0.0.31"], b_port));
    let reloads_before = rig.reloads().await;

    let changes = async {
        let mut applied = 0.0;
        for i in 0..20 {
            rig.set(vec![route("a", 50 + i, servers(&a_ips[..1], a_port)), b(50 - i)]).await;
            applied += 1.0;
            rig.wait_applied(applied).await;
        }
        for i in 0..20 {
            let n = 1 + (i % 4) as usize;
            rig.set(vec![route("a", 70, servers(&a_ips[..n], a_port)), b(30)]).await;
            applied += 1.0;
            rig.wait_applied(applied).await;
        }
        // every server of route a replaced: the new ones first, then the old ones go
        let mut both = servers(&a_ips[..1], a_port);
        both.extend(servers(&["127.0.0.25", "127.0.0.26"], new_a));
        rig.set(vec![route("a", 70, both), b(30)]).await;
        rig.wait_applied(applied + 1.0).await;
        rig.set(vec![route("a", 70, servers(&["127.0.0.25", "127.0.0.26"], new_a)), b(30)]).await;
        rig.wait_applied(applied + 2.0).await;
    };
    let (tally, long) = under_load(rig.target(), changes).await;
    let log = rig.log();
    assert_eq!(tally.failures, 0, "failed connections during the changes ({tally:?}):\n{log}");
    assert!(tally.total() > 200, "too little load to mean anything: {tally:?}");
    assert_eq!(rig.reloads().await, reloads_before, "a reload for weights or servers:\n{log}");
    assert!(rig.metric("kanary_agent_changes_applied_total{how=\"runtime\"}").await >= 42.0);
    // connections to b (whose server never changed) were never cut; to a's first server, cut only once
    // it was removed (the old server kept them until then: maintenance keeps connections)
    let to_b: Vec<&LongLived> = long.iter().filter(|l| l.backend == "b").collect();
    assert!(to_b.iter().all(|l| !l.cut), "a long-lived connection to b was cut: {long:?}");
    assert_eq!(long.len(), 4, "every long-lived connection opened: {long:?}");

    rig.set(vec![route("a", 100, servers(&["127.0.0.25", "127.0.0.26"], new_a)), b(0)]).await;
    rig.wait_applied(43.0).await;
    let after = drive(rig.target(), 200, 4).await;
    assert_eq!(after.answers.get("a-new"), Some(&200), "every connection to the new servers of a: {after:?}");
}

/// A configuration HAProxy refuses leaves the previous one serving (and its files in place for a restart),
/// and is reported; a restarted agent takes over the running HAProxy without a reload; the agent's
/// identity reads its own ConfigMap and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_keeps_the_last_good_one_and_a_restarted_agent_resyncs_without_a_reload() {
    let a_port = start_backends(&["127.0.0.41"], "a").await;
    let b_port = start_backends(&["127.0.0.42"], "b").await;
    let routes = |weight: i64| {
        vec![
            route("a", weight, servers(&["127.0.0.41"], a_port)),
            route("b", 100 - weight, servers(&["127.0.0.42"], b_port)),
        ]
    };
    let Some(mut rig) = Rig::start(routes(100)).await else { return };

    // a route added: a structural change, one reload
    let c_port = start_backends(&["127.0.0.43"], "c").await;
    let mut three = routes(50);
    three.push(route("c", 0, servers(&["127.0.0.43"], c_port)));
    let reloads = rig.reloads().await;
    rig.set(three.clone()).await;
    rig.wait_applied(1.0).await;
    assert_eq!(rig.reloads().await, reloads + 1);

    // settings alone: one reload too (the servers and weights stay as they were)
    let mut longer =
        plane(&ProxySettings { files_dir: ProxySettings::default().files_dir, ..rig.settings.clone() }, three.clone());
    longer.settings.timeout_client = "2h".into();
    let reloads = rig.reloads().await;
    rig.set_plane(longer).await;
    rig.wait_applied(2.0).await;
    assert_eq!(rig.reloads().await, reloads + 1, "no reload for new settings:\n{}", rig.log());
    let config = std::fs::read_to_string(rig.dir.path().join("run/haproxy.cfg")).unwrap();
    assert!(config.contains("timeout client 2h"), "{config}");
    rig.set(three.clone()).await;
    rig.wait_applied(3.0).await;

    // settings HAProxy refuses (a duration it cannot read): reported, and the previous config serves
    let good_config = std::fs::read_to_string(rig.dir.path().join("run/haproxy.cfg")).unwrap();
    let mut bad =
        plane(&ProxySettings { files_dir: ProxySettings::default().files_dir, ..rig.settings.clone() }, routes(0));
    bad.settings.timeout_client = "1fortnight".into();
    let bad_revision = bad.revision();
    rig.set_plane(bad).await;
    eventually(30, "the refused reload is reported", || async {
        rig.metric("kanary_agent_reload_failures_total").await == 1.0
    })
    .await;
    let tally = drive(rig.target(), 200, 4).await;
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert!(tally.answers.contains_key("a") && tally.answers.contains_key("b"), "still 50/50: {tally:?}");
    let on_disk = std::fs::read_to_string(rig.dir.path().join("run/haproxy.cfg")).unwrap();
    assert_eq!(on_disk, good_config, "the files hold the configuration HAProxy runs");
    // and in the Kanary's status: the pod serves the good revision and refused the bad one
    let good_revision =
        plane(&ProxySettings { files_dir: ProxySettings::default().files_dir, ..rig.settings.clone() }, three.clone())
            .revision();
    let report = rig.report().await;
    assert_eq!(report["revision"], good_revision.as_str(), "{report}");
    assert_eq!(report["refusedRevision"], bad_revision.as_str(), "{report}");

    // the agent restarted under load: HAProxy keeps serving; the new agent applies a change at run time
    let (tally, _) = under_load(rig.target(), async {
        rig.agent.kill().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let run_dir = rig.dir.path().join("run");
        rig.agent = spawn_agent(
            &rig.kubeconfig,
            &rig.cluster.namespace,
            &run_dir,
            &rig.agent_metrics,
            rig.dir.path().join("agent2.log"),
        );
        rig.wait_ready().await;
        let reloads = rig.reloads().await;
        let mut reweighted = three.clone();
        reweighted[0].weight = 100;
        reweighted[1].weight = 0;
        rig.set(reweighted).await;
        rig.wait_applied(1.0).await;
        assert_eq!(rig.reloads().await, reloads, "the restarted agent reloaded for a weight change");
    })
    .await;
    assert_eq!(tally.failures, 0, "{tally:?}");
    let after = drive(rig.target(), 100, 4).await;
    assert_eq!(after.answers.get("a"), Some(&100), "{after:?}");

    // the agent's identity: its ConfigMap, and nothing else
    let kc = kube::config::Kubeconfig::read_from(&rig.kubeconfig).unwrap();
    let as_agent =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap();
    let ns = rig.cluster.namespace.clone();
    let cms: Api<ConfigMap> = Api::namespaced(as_agent.clone(), &ns);
    cms.get(CONFIG_MAP).await.unwrap();
    let other: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap();
    rig.cluster.api::<ConfigMap>().create(&PostParams::default(), &other).await.unwrap();
    let forbidden = |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(e)) if e.code == 403);
    assert!(forbidden(cms.get("other").await.map(|_| ())));
    assert!(forbidden(cms.list(&ListParams::default()).await.map(|_| ())));
    assert!(forbidden(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_agent.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    // its own Kanary's status, not another's
    let other = json!({"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "metadata": {"name": "other", "namespace": ns},
        "spec": {"destination": "front2", "routes": [{"backend": {"serviceName": "a", "servicePort": 80}, "weight": 100}]}});
    kanaries(&rig.cluster.client, &ns)
        .create(&PostParams::default(), &serde_json::from_value(other).unwrap())
        .await
        .unwrap();
    let status =
        Patch::Merge(json!({"status": {"proxies": {"x": {"revision": "r", "reportedAt": "2026-01-01T00:00:00Z"}}}}));
    let as_agent_kanaries = kanaries(&as_agent, &ns);
    assert!(forbidden(as_agent_kanaries.patch_status("other", &PatchParams::default(), &status).await.map(|_| ())));
    assert!(forbidden(as_agent_kanaries.patch("k", &PatchParams::default(), &status).await.map(|_| ())));

    // stopped (SIGTERM, as the kubelet stops it), the agent takes its report back
    let revision = rig.report().await["revision"].clone();
    assert!(revision.is_string());
    let pid = rig.agent.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let _ = tokio::time::timeout(Duration::from_secs(10), rig.agent.wait()).await;
    let status = kanaries(&rig.cluster.client, &ns).get(KANARY).await.unwrap().data["status"].clone();
    let managed = kanaries(&rig.cluster.client, &ns).get(KANARY).await.unwrap().metadata.managed_fields;
    assert!(status["proxies"].get(POD).is_none(), "the report outlived the agent: {status} {managed:?}\n{}", rig.log());
    let _ = rig.haproxy.kill().await;
}
