//! The `canary-controller` binary: `crd`, `version`, and `run`'s start-up checks and clean shutdown.

use e2e_support as support;

use support::Cluster;

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = canary_controller::api::crds_yaml(&[]).unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/crd/crds.yaml")).unwrap();
    assert!(
        generated == committed,
        "config/crd/crds.yaml is out of date: run `cargo run -p canary-controller -- crd > config/crd/crds.yaml`"
    );
}

#[test]
fn version_prints_the_package_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canary-controller")).arg("version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("canary-controller {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn crd_output_is_accepted_by_the_api_server() {
    let cluster = Cluster::start().await;
    let out = cluster.controller(&["crd"]).await;
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("name: canaries.canary.k8s.wantedly.com"));
    let Some(applied) = cluster.kubectl(&["apply", "--server-side", "-f", "-"], Some(&yaml)).await else { return };
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let Some(got) = cluster.kubectl(&["get", "canaries", "-n", &cluster.namespace], None).await else { return };
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    cluster.cleanup().await;
}

#[tokio::test]
async fn run_fails_clearly_when_no_api_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kubeconfig = dir.path().join("kubeconfig");
    let url = format!("http://127.0.0.1:{port}");
    std::fs::write(
        &kubeconfig,
        support::control_plane::kubeconfig_text(&url, "none", std::path::Path::new("/dev/null")),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_canary-controller"))
        .arg("run")
        .env("KUBECONFIG", &kubeconfig)
        .env("METRICS_ADDRESS", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot reach the Kubernetes API server at http://127.0.0.1:{port}")), "{stderr}");
}

#[tokio::test]
async fn run_fails_clearly_when_the_crds_are_not_installed() {
    // a control plane of its own, where no CRD is installed
    let Some(cluster) = Cluster::start_own().await else { return };
    let out = cluster.controller(&["run"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for crd in ["canaries.canary.k8s.wantedly.com", "kanaries.kanary.k8s.io", "kanaries.kanary.pyxida.io"] {
        assert!(stderr.contains(crd), "{stderr}");
    }
    assert!(stderr.contains("are not installed"), "{stderr}");
    assert!(stderr.contains("canary-controller crd | kubectl apply --server-side -f -"), "{stderr}");
}

#[tokio::test]
async fn run_starts_with_crds_installed_and_stops_on_sigterm() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    let status = controller.terminate().await;
    assert!(status.success(), "exit status {status}:\n{}", controller.log());
    assert!(controller.log().contains("shutting down"), "{}", controller.log());
    cluster.cleanup().await;
}

async fn http_get(address: &str, path: &str) -> String {
    support::http_get(address, path).await.expect("the metrics server answers")
}

#[tokio::test]
async fn run_serves_health_readiness_and_reconcile_metrics() {
    let cluster = Cluster::start().await;
    cluster.install_crds().await;
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    let address = controller.metrics_address();
    let ok = |response: String| response.lines().next().is_some_and(|status| status.ends_with(" 200 OK"));
    assert!(ok(http_get(&address, "/healthz").await), "{address}");
    assert!(ok(http_get(&address, "/readyz").await), "{address}");

    let ar = kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&());
    let canaries: kube::Api<kube::core::DynamicObject> =
        kube::Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar);
    let canary = serde_json::json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": "c"},
        "spec": {"targetDeploymentName": "missing", "targetContainers": [{"name": "a", "image": "b"}]}});
    canaries.create(&Default::default(), &serde_json::from_value(canary).unwrap()).await.unwrap();
    support::eventually(10, "a counted reconcile", || async {
        let metrics = http_get(&address, "/metrics").await;
        metrics
            .lines()
            .any(|l| l.starts_with("canary_controller_reconciles_total{controller=\"canary\"}") && !l.ends_with(" 0"))
    })
    .await;
    let metrics = http_get(&address, "/metrics").await;
    assert!(metrics.contains("canary_controller_reconcile_duration_seconds_bucket{"), "{metrics}");
    cluster.cleanup().await;
}

/// `make run` (scripts/run-local.sh) starts a local cluster as a real one looks: Kubernetes' control plane
/// with workload-sim as a Ready node, and the operator deployed in its pods (config/default), also when port
/// 8080 is taken on this machine; `kubectl get nodes`, `get pods -o wide` and `get endpointslices` show what a
/// real cluster would, and the README's Canary session works there with kubectl.
#[tokio::test]
async fn make_run_runs_the_operator_in_its_pods_on_a_local_cluster() {
    if !support::simulator::can_simulate() {
        return;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let controller = std::path::Path::new(env!("CARGO_BIN_EXE_canary-controller"));
    let control_plane = controller.with_file_name("control-plane");
    assert!(control_plane.exists(), "{} is missing: cargo build --workspace", control_plane.display());
    if support::control_plane::binaries().is_none() {
        e2e_support::tools::skip("Kubernetes' control plane is not built (make setup)");
        return;
    }
    let _taken = std::net::TcpListener::bind("0.0.0.0:8080"); // by this test, or by something else already
    assert!(std::net::TcpListener::bind("0.0.0.0:8080").is_err(), "port 8080 should be taken");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let kubectl_dir = e2e_support::tools::command("kubectl").parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let path = format!("{}:{}", kubectl_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut run = tokio::process::Command::new("bash")
        .arg(format!("{root}/scripts/run-local.sh"))
        .env("SKIP_BUILD", "1")
        .env("LOCAL_DIR", dir.path())
        .env("CONTROL_PLANE_BIN", &control_plane)
        .env("CANARY_CONTROLLER_BIN", controller)
        .env("WORKLOAD_SIM_BIN", support::simulator::simulator_binary())
        .env("PATH", path)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("run.err")).unwrap())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read = || {
        std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("run.err")).unwrap_or_default()
    };
    let started = support::within(240, || async { read().contains("run-local: the operator runs in its pods") }).await;
    let kubeconfig = dir.path().join("kubeconfig");
    let cache = dir.path().join("kubectl-cache");
    let kubectl = |args: &'static [&'static str]| {
        let (kubeconfig, cache) = (kubeconfig.clone(), cache.clone());
        async move {
            let out = support::kubectl(&kubeconfig, &cache, args, None).await.unwrap();
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
        }
    };
    // the README's session: the target and the Canary from config/samples; the canary Deployment follows, its
    // pod runs on the node, and a Service of the target gets its slice from the real EndpointSlice controller
    let (mut nodes, mut pods, mut slices, mut canary_made) = (String::new(), String::new(), String::new(), false);
    if started {
        for sample in ["target_deployment.yaml", "canary_v1beta1_canary.yaml"] {
            let file = format!("{root}/config/samples/{sample}");
            let out = support::kubectl(&kubeconfig, &cache, &["apply", "-f", &file], None).await.unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        kubectl(&["expose", "deployment", "foo", "--port", "80"]).await;
        canary_made = support::within(60, || async {
            let pods = kubectl(&["get", "pods", "-l", "canary=true", "-o", "wide", "--no-headers"]).await;
            pods.contains("Running") && pods.contains("workload-sim")
        })
        .await;
        support::within(30, || async {
            kubectl(&["get", "endpointslices", "-l", "kubernetes.io/service-name=foo"]).await.contains("10.244.")
        })
        .await;
        nodes = kubectl(&["get", "nodes", "-o", "wide"]).await;
        pods = kubectl(&["get", "pods", "-A", "-o", "wide"]).await;
        slices = kubectl(&["get", "endpointslices", "-o", "yaml", "-l", "kubernetes.io/service-name=foo"]).await;
    }
    let pid = run.id().unwrap() as i32;
    assert!(pid > 1);
    // the script's process group (the control plane and the node too); `--` so that `-PID` is a group
    let _ = std::process::Command::new("kill").args(["-s", "TERM", "--", &format!("-{pid}")]).status();
    let _ = run.wait().await;
    let output = read();
    assert!(started, "make run did not start:\n{output}");
    let node = nodes.lines().find(|l| l.starts_with("workload-sim ")).unwrap_or_default();
    assert!(node.contains(" Ready ") && node.contains("10.240.0.1"), "the node:\n{nodes}");
    let managers: Vec<&str> = pods.lines().filter(|l| l.starts_with("canary-controller-system ")).collect();
    assert!(
        managers.len() == 2
            && managers.iter().all(|l| l.contains("Running") && l.contains(" 10.244.") && l.contains("workload-sim")),
        "the operator's pods:\n{pods}"
    );
    assert!(canary_made, "the README's Canary made no running canary pod:\n{pods}\n{output}");
    assert!(
        slices.contains("endpointslice-controller.k8s.io") && slices.contains("- 10.244."),
        "the Service's EndpointSlice, from Kubernetes' controller:\n{slices}"
    );
}
