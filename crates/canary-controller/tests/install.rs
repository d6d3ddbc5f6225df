//! The README's "Install on a cluster", its steps 3 to 6 as written, on fake-apiserver and the workload
//! simulator (which runs the operator's pods from its image: our binary under its ServiceAccount, RBAC
//! enforced): `make deploy`; the first Canary from `config/samples` gets its copy and is Ready; the first
//! release from `examples/release.yml` (a Deployment `app` and a Service `app` beside it) moves 20 % of the
//! connections to its canary through proxies the deployed operator made; `make undeploy` removes the
//! operator, the CRDs and so every Canary and what they made. (Steps 1 and 2, the image, are tests/image.rs.)

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::Cluster;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const SYSTEM: &str = "canary-controller-system";
const MANAGER: &str = "canary-controller-controller-manager";

async fn make(cluster: &Cluster, target: &str) {
    let out = tokio::process::Command::new("make")
        .arg("-C")
        .arg(ROOT)
        .arg(target)
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
    let cluster = Cluster::start().await;
    let sim = cluster.start_simulator(228, 24);
    let ns = cluster.namespace.clone();

    // 3. install
    make(&cluster, "deploy").await;
    let managers: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM);
    support::eventually(120, "both manager pods ready", || async {
        let status = managers.get_opt(MANAGER).await.ok().flatten().and_then(|d| d.status).unwrap_or_default();
        status.ready_replicas == Some(2)
    })
    .await;

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

    // 6. uninstall: the operator, its CRDs, and with them every Canary and what it made
    make(&cluster, "undeploy").await;
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
    sim.stop().await;
    cluster.cleanup().await;
}
