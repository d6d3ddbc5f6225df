//! The README's "Install on a cluster", step by step, on the real control plane with workload-sim as its node: `make
//! image-oci` (from the debug binary: `IMAGE_PROFILE=dev SKIP_BUILD=1`, saving a release build) and `skopeo
//! copy` to a registry (Debian's docker-registry, on loopback, plain HTTP); the manifests pointed at the pushed
//! name with the README's `sed` (on a copy of config/); `make deploy` of that copy: the simulator runs the
//! operator's pods, image by that name (it runs our binary for it: it pulls nothing; the registry is checked
//! to hold the image), under their ServiceAccount with RBAC enforced; the first Canary from `config/samples`
//! is Ready; the first release from `examples/release.yml` (a Deployment and a Service `app` beside it) moves
//! 20 % of the connections to its canary through proxies the deployed operator made, their agents running
//! the pushed image; `make undeploy` removes the operator, the CRDs and so every Canary and what they made.

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::Cluster;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const SYSTEM: &str = "canary-controller-system";
const MANAGER: &str = "canary-controller-controller-manager";

async fn make(cluster: &Cluster, target: &str, variables: &[&str]) {
    let out = tokio::process::Command::new("make")
        .arg("-C")
        .arg(ROOT)
        .arg(target)
        .args(variables)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("PATH", format!("{ROOT}/.venv/bin:{}", std::env::var("PATH").unwrap_or_default()))
        .output()
        .await
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "make {target}:\n{said}");
}

async fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.kubectl(args, None).await.expect("kubectl is installed (make setup)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubectl {args:?}: {said}");
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_install_deploys_serves_a_canary_and_a_release_and_undeploys() {
    if !support::simulator::can_simulate() {
        return;
    }
    use e2e_support::tools;
    if !tools::available("umoci") || !tools::available("skopeo") || !tools::available("docker-registry") {
        return;
    }
    let cluster = Cluster::start_for_pods().await;
    let ns = cluster.namespace.clone();

    // 1. the image, pushed to a registry
    make(&cluster, "image-oci", &["IMAGE_PROFILE=dev", "SKIP_BUILD=1"]).await;
    let port = support::traffic::free_port("127.0.0.1");
    let storage = cluster.dir.path().join("registry");
    let registry_config = cluster.dir.path().join("registry.yml");
    let text = format!(
        "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
        storage.display()
    );
    std::fs::write(&registry_config, text).unwrap();
    let mut registry = tokio::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&registry_config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("docker-registry runs");
    support::eventually(30, "the registry answers", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    let pushed = format!("127.0.0.1:{port}/canary-controller:v0.1.0");
    let layout = format!("oci:{ROOT}/target/image/canary-controller:latest");
    let copied = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", &layout, &format!("docker://{pushed}")])
        .output()
        .unwrap();
    assert!(copied.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&copied.stderr));
    let inspected = std::process::Command::new("skopeo")
        .args(["inspect", "--config", "--tls-verify=false", &format!("docker://{pushed}")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&inspected.stdout).contains("65532:65532"), "the registry holds the image");

    // 2. the manifests point at it (a copy of config/, edited with the README's command)
    let config = cluster.dir.path().join("config");
    let copy = std::process::Command::new("cp").arg("-r").arg(format!("{ROOT}/config")).arg(&config).status().unwrap();
    assert!(copy.success());
    let manager_yaml = config.join("manager/manager.yaml");
    let edit = format!("s|canary-controller:latest|{pushed}|g");
    assert!(std::process::Command::new("sed").args(["-i", &edit]).arg(&manager_yaml).status().unwrap().success());
    let config_variable = format!("CONFIG={}", config.display());

    // 3. install
    let sim = cluster.start_simulator(228, 24);
    make(&cluster, "deploy", &[&config_variable]).await;
    let managers: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM);
    support::eventually(120, "both manager pods ready", || async {
        let status = managers.get_opt(MANAGER).await.ok().flatten().and_then(|d| d.status).unwrap_or_default();
        status.ready_replicas == Some(2)
    })
    .await;
    let images = |pod: &k8s_openapi::api::core::v1::Pod| -> Vec<String> {
        let spec = pod.spec.clone().unwrap_or_default();
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).filter_map(|c| c.image.clone()).collect()
    };
    let system_pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client.clone(), SYSTEM);
    let running = system_pods.list(&Default::default()).await.unwrap().items;
    assert!(running.iter().all(|p| images(p) == [pushed.clone()]), "the manager runs the pushed image");

    // 4. a first Canary
    let samples = |file: &str| format!("{ROOT}/config/samples/{file}");
    let (target, canary) = (samples("target_deployment.yaml"), samples("canary_v1beta1_canary.yaml"));
    kubectl(&cluster, &["apply", "-n", &ns, "-f", &target, "-f", &canary]).await;
    support::eventually(120, "kubectl get canary: the sample Ready", || async {
        let got = cluster
            .kubectl(
                &[
                    "get",
                    "canary",
                    "canary-sample",
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
                None,
            )
            .await;
        got.is_some_and(|o| o.stdout == b"True")
    })
    .await;

    // 5. a first release: Deployment and Service `app`, then examples/release.yml
    let app = json!({"metadata": {"name": "app"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "app"}},
        "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app",
            "image": "registry.example/app:v1", "ports": [{"containerPort": 8080}]}]}}}});
    let service = json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"},
        "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}});
    let pp = PostParams::default();
    cluster.api::<Deployment>().create(&pp, &serde_json::from_value(app).unwrap()).await.unwrap();
    cluster.api::<Service>().create(&pp, &serde_json::from_value(service).unwrap()).await.unwrap();
    kubectl(&cluster, &["apply", "-n", &ns, "-f", &format!("{ROOT}/examples/release.yml")]).await;
    let canaries: Api<canary_controller::api::canary::Canary> = cluster.api();
    support::eventually(180, "the release serves 20 % to the canary", || async {
        let release = canaries.get("app-release").await.ok().and_then(|c| c.status?.release);
        release.is_some_and(|r| r.weight == 20 && r.step >= 1)
    })
    .await;
    let served = kubectl(
        &cluster,
        &[
            "get",
            "kanary.kanary.k8s.io",
            "app-release",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"DataPlaneSynced\")].status}",
        ],
    )
    .await;
    assert_eq!(served, "True", "every proxy pod serves the release's weights");
    let proxies = cluster.api::<k8s_openapi::api::core::v1::Pod>();
    let proxies = proxies.list(&kube::api::ListParams::default().labels("proxy=app-release-haproxy")).await.unwrap();
    assert!(!proxies.items.is_empty(), "proxy pods");
    for pod in &proxies.items {
        assert!(images(pod).contains(&pushed), "the proxy agent runs the pushed image: {:?}", images(pod));
    }

    // 6. uninstall: the operator, its CRDs, and with them every Canary and what it made
    make(&cluster, "undeploy", &[&config_variable]).await;
    let gone = cluster.kubectl(&["get", "crd", "canaries.canary.k8s.wantedly.com"], None).await.unwrap();
    assert!(!gone.status.success(), "the CRD is still there after make undeploy");
    support::eventually(60, "the manager, the canaries' copies and the proxies gone", || async {
        let deployments =
            cluster.api::<Deployment>().list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        let left: Vec<String> = deployments.iter().filter_map(|d| d.metadata.name.clone()).collect();
        let manager = managers.get_opt(MANAGER).await.ok().flatten();
        manager.is_none() && left.iter().all(|n| n == "foo" || n == "app")
    })
    .await;
    let _ = registry.kill().await;
    sim.stop().await;
    cluster.cleanup().await;
}
