//! The manifests we ship and generate are valid Kubernetes 1.33 objects (`kubernetes-validate --strict`,
//! installed into .venv by scripts/setup.sh), and `make deploy` / `make undeploy` work with kubectl.

use e2e_support as support;

use canary_controller::api::canary::Canary;
use canary_controller::canary::build::build_deployment;
use k8s_openapi::api::apps::v1::Deployment;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::Cluster;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn kubernetes_validate() -> Option<PathBuf> {
    e2e_support::tools::available("kubernetes-validate").then(|| e2e_support::tools::command("kubernetes-validate"))
}

fn validate_strict(tool: &Path, file: &Path) {
    let out = Command::new(tool).args(["--strict", "-k", "1.33.0"]).arg(file).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "kubernetes-validate rejected {}:\n{text}",
        file.display()
    );
    assert!(text.contains("passed"), "{text}");
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &str) -> T {
    serde_saphyr::from_str(&std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap()).unwrap()
}

#[test]
fn crds_and_generated_deployment_pass_kubernetes_validate_strict() {
    let Some(tool) = kubernetes_validate() else { return };
    let dir = tempfile::tempdir().unwrap();
    let crds = dir.path().join("crds.yaml");
    std::fs::write(&crds, canary_controller::api::crds_yaml(&[]).unwrap()).unwrap();
    validate_strict(&tool, &crds);

    let mut canary: Canary = read_yaml("config/samples/canary_v1beta1_canary.yaml");
    canary.metadata.namespace = Some("default".into());
    canary.metadata.uid = Some("0b6a2a6c-0000-4000-8000-000000000000".into());
    let target: Deployment = read_yaml("config/samples/target_deployment.yaml");
    let generated = dir.path().join("canary-deployment.yaml");
    std::fs::write(&generated, serde_saphyr::to_string(&build_deployment(&canary, &target)).unwrap()).unwrap();
    validate_strict(&tool, &generated);
    validate_strict(&tool, &Path::new(ROOT).join("config/samples/target_deployment.yaml"));

    // the objects a Kanary owns
    use canary_controller::kanary::build;
    let owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "name": "simple-kanary-rule",
            "uid": "0b6a2a6c-0000-4000-8000-000000000001", "controller": true
        }))
        .unwrap();
    let options = build::ProxyOptions {
        image: "haproxy:2.8".into(),
        agent_image: "canary-controller:latest".into(),
        replicas: 2,
        defaults: Default::default(),
    };
    let files =
        build::ProxyFiles { config: "global\n".into(), weights: "t0 100\nw0 100\n".into(), dataplane: "{}".into() };
    let (name, ns) = ("simple-kanary-rule", "default");
    let objects = [
        serde_saphyr::to_string(&build::build_config_map(name, ns, &owner, &files)).unwrap(),
        serde_saphyr::to_string(&build::build_deployment(name, ns, &owner, &options, None)).unwrap(),
        serde_saphyr::to_string(&build::build_service(name, ns, &owner, "myapp")).unwrap(),
        serde_saphyr::to_string(&build::build_service_account(name, ns, &owner)).unwrap(),
        serde_saphyr::to_string(&build::build_role(name, ns, &owner)).unwrap(),
        serde_saphyr::to_string(&build::build_role_binding(name, ns, &owner)).unwrap(),
    ];
    let kanary_objects = dir.path().join("kanary-objects.yaml");
    std::fs::write(&kanary_objects, objects.join("---\n")).unwrap();
    validate_strict(&tool, &kanary_objects);
    validate_strict(&tool, &Path::new(ROOT).join("examples/simple-stack.yml"));
    validate_strict(&tool, &Path::new(ROOT).join("examples/controller-networkpolicy.yml"));
}

#[tokio::test]
async fn kustomize_output_passes_and_make_deploy_undeploy_work() {
    let Some(tool) = kubernetes_validate() else { return };
    // make deploy and undeploy install and remove the CRDs: a control plane of its own
    let Some(cluster) = Cluster::start_own().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(built) = cluster.kubectl(&["kustomize", &format!("{ROOT}/config/default")], None).await else { return };
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let file = dir.path().join("default.yaml");
    std::fs::write(&file, &built.stdout).unwrap();
    validate_strict(&tool, &file);

    let make = |target: &str| {
        tokio::process::Command::new("make")
            .arg("-C")
            .arg(ROOT)
            .arg(target)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()
    };
    let out = make("deploy").await.unwrap();
    assert!(
        out.status.success(),
        "make deploy:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(get) = cluster.kubectl(&["get", "deploy,sa", "-n", "canary-controller-system", "-o", "name"], None).await
    else {
        return;
    };
    let names = String::from_utf8_lossy(&get.stdout).to_string();
    assert!(names.contains("deployment.apps/canary-controller-controller-manager"), "{names}");
    assert!(names.contains("serviceaccount/canary-controller-controller-manager"), "{names}");
    let crd = cluster.kubectl(&["get", "crd", "canaries.canary.k8s.wantedly.com"], None).await.unwrap();
    assert!(crd.status.success());

    let out = make("undeploy").await.unwrap();
    assert!(
        out.status.success(),
        "make undeploy:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let crd = cluster.kubectl(&["get", "crd", "canaries.canary.k8s.wantedly.com"], None).await.unwrap();
    assert!(!crd.status.success(), "the CRD is still there after make undeploy");
}

/// There is no container runtime here to build the image; this checks that the Dockerfile and the manager
/// Deployment agree: the runtime stage runs the binary as the non-root ids the pod's securityContext asks for,
/// the image name is the one `make image` builds, and the toolchain is new enough for the workspace.
#[test]
fn the_dockerfile_and_the_manager_deployment_agree() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let runtime_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(runtime_stage.starts_with("gcr.io/distroless/"), "the runtime stage is not distroless: {runtime_stage}");
    let user = runtime_stage.lines().find_map(|l| l.strip_prefix("USER ")).expect("the runtime stage sets USER");
    assert!(runtime_stage.contains("ENTRYPOINT [\"/canary-controller\"]"));

    let manager = std::fs::read_to_string(Path::new(ROOT).join("config/manager/manager.yaml")).unwrap();
    let deployment: serde_json::Value =
        serde_saphyr::from_str(manager.split("\n---\n").find(|d| d.contains("kind: Deployment")).unwrap()).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let ids = format!("{}:{}", pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]);
    assert_eq!(user, ids, "Dockerfile USER and the pod's runAsUser:runAsGroup differ");
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0], "run");
    let makefile = std::fs::read_to_string(Path::new(ROOT).join("Makefile")).unwrap();
    let image = container["image"].as_str().unwrap();
    assert!(makefile.contains(&format!("docker build -t {image} .")), "make image does not build {image}");

    let toolchain = dockerfile.lines().find_map(|l| l.strip_prefix("FROM rust:")).unwrap();
    let version: Vec<u32> = toolchain.split('-').next().unwrap().split('.').map(|n| n.parse().unwrap()).collect();
    let required: Vec<u32> = env!("CARGO_PKG_RUST_VERSION").split('.').map(|n| n.parse().unwrap()).collect();
    assert!(version >= required, "the image's Rust {version:?} is older than rust-version {required:?}");
}
