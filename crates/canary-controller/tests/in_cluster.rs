//! The operator installed as `make deploy` installs it (the CRDs, then `kubectl apply -k config/default`), running
//! in its own pods on workload-sim, the node of a real control plane: our real binary in the container of canary-controller's image, with its
//! ServiceAccount's token where a kubelet mounts it and the API server at `KUBERNETES_SERVICE_HOST`, RBAC
//! enforced. Both replicas get ready, one leads, and a Canary gets its copy; every request the pods made was
//! made as the ServiceAccount (none as the admin), and a pod of a ServiceAccount without roles is refused.

use e2e_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const SYSTEM: &str = "canary-controller-system";
const MANAGER: &str = "canary-controller-controller-manager";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_operator_runs_in_its_pods_with_its_service_account() {
    if !support::simulator::can_simulate() {
        return;
    }
    let cluster = support::Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(249, 16);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/default");
    let out = cluster.kubectl(&["apply", "-k", config], None).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let managers: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM);
    support::eventually(120, "both manager pods ready", || async {
        let status = managers.get_opt(MANAGER).await.ok().flatten().and_then(|d| d.status).unwrap_or_default();
        status.ready_replicas == Some(2)
    })
    .await;

    // the main job, done by the pods
    let deployments: Api<Deployment> = cluster.api();
    let target = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(target).unwrap()).await.unwrap();
    let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": "c"},
        "spec": {"targetDeploymentName": "web", "targetContainers": [{"name": "web", "image": "web:2"}]}});
    let canaries = Api::<kube::core::DynamicObject>::namespaced_with(
        cluster.client.clone(),
        &cluster.namespace,
        &kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&()),
    );
    canaries.patch("c", &PatchParams::apply("e2e"), &Patch::Apply(canary)).await.unwrap();
    support::eventually(60, "web-canary runs web:2", || async {
        let d = deployments.get_opt("web-canary").await.ok().flatten();
        d.and_then(|d| d.spec?.template.spec?.containers.first()?.image.clone()).as_deref() == Some("web:2")
    })
    .await;

    // as the ServiceAccount: it used its grants (a Lease, Canaries, Deployments...)
    let user = format!("system:serviceaccount:{SYSTEM}:{MANAGER}");
    let requests = cluster.requests_of(&user).expect("the API server's record of requests");
    let used: Vec<String> = requests.iter().map(|(verb, _, resource)| format!("{verb} {resource}")).collect();
    for expected in ["patch leases", "watch canaries", "create deployments"] {
        assert!(used.iter().any(|u| u == expected), "{user} did not {expected}: {used:?}");
    }

    // a ServiceAccount without roles: the operator's pod runs but every request is refused
    let out = cluster.kubectl(&["create", "serviceaccount", "nobody", "-n", SYSTEM], None).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lonely = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "lonely"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "lonely"}},
            "template": {"metadata": {"labels": {"app": "lonely"}}, "spec": {"serviceAccountName": "nobody",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "manager", "image": "canary-controller:latest", "args": ["run", "--leader-election=false"],
                    // the namespace enforces the restricted Pod Security Standard (config/manager labels it)
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}}});
    managers.create(&PostParams::default(), &serde_json::from_value(lonely).unwrap()).await.unwrap();
    let refused = format!("system:serviceaccount:{SYSTEM}:nobody");
    let recorded = support::within(60, || async { cluster.requests_of(&refused).is_some_and(|r| !r.is_empty()) }).await;
    let pods = cluster.kubectl(&["get", "pods,rs,events", "-n", SYSTEM, "-o", "wide"], None).await.unwrap();
    let log = format!("{}\n{}", sim.log(), String::from_utf8_lossy(&pods.stdout));
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert!(
        recorded,
        "the refused pod's requests are not recorded:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let refusal = format!("User \\\"{refused}\\\" cannot");
    support::eventually(30, "the refused pod says why", || async { sim.log().contains(&refusal) }).await;

    sim.stop().await;
    cluster.cleanup().await;
}
