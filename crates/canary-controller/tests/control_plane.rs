//! Kubernetes' own control plane, built from its sources by `make setup`, started as the tests will start it
//! (`e2e_support::control_plane`): it answers as the pinned version, runs the real Deployment and ReplicaSet
//! controllers and scheduler, serves this project's CRDs with their CEL rules, refuses what fake-apiserver (the imitation it replaced)
//! accepted (a loopback EndpointSlice address), and runs the README's Canary session with the real binary.
//! The first step of moving every end-to-end test onto it (issue: Real Kubernetes, part 1).

use e2e_support as support;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::process::Stdio;
use support::control_plane::{ControlPlane, version};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Runs kubectl as the admin; its output (it must succeed).
async fn kubectl(plane: &ControlPlane, args: &[&str]) -> String {
    let cache = plane.dir.path().join("kubectl-cache");
    let out = support::kubectl(&plane.kubeconfig, &cache, args, None).await.expect("kubectl is installed (make setup)");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_control_plane_runs_the_canary_session_and_refuses_what_the_fake_accepted() {
    if !e2e_support::tools::available("kubectl") {
        return;
    }
    let Some(plane) = ControlPlane::start().await else {
        e2e_support::tools::skip("the control plane is not built: run make setup (scripts/build-control-plane.sh)");
        return;
    };
    println!("kube-apiserver {} ready {:?} after etcd started", version(), plane.started_in);
    let shown = kubectl(&plane, &["version", "-o", "json"]).await;
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["serverVersion"]["gitVersion"], json!(version()), "{shown:#}");

    // the real EndpointSlice validation refuses a loopback address, which fake-apiserver stored
    let client = plane.client().await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "loopback"}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"]}], "ports": [{"port": 80}]}))
    .unwrap();
    match slices.create(&PostParams::default(), &slice).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
        other => panic!("a loopback EndpointSlice address was accepted: {other:?}"),
    }

    // the CRDs, served with their schemas and CEL rules
    // ... without a warning (the API server warns of schema formats it does not know; fake-apiserver did not)
    let cache = plane.dir.path().join("kubectl-cache");
    let crds = format!("{ROOT}/config/crd/crds.yaml");
    let apply = ["apply", "--server-side", "-f", crds.as_str()];
    let out = support::kubectl(&plane.kubeconfig, &cache, &apply, None).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "applying the CRDs: {stderr}");
    kubectl(&plane, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]).await;

    // the README's session: the target, the Canary, the controller (as admin here: its RBAC comes with the
    // harness move), the canary Deployment it makes, which the real controllers give a ReplicaSet and pods
    kubectl(&plane, &["apply", "-f", &format!("{ROOT}/config/samples/target_deployment.yaml")]).await;
    kubectl(&plane, &["apply", "-f", &format!("{ROOT}/config/samples/canary_v1beta1_canary.yaml")]).await;
    let mut controller = tokio::process::Command::new(support::controller_binary())
        .args(["run", "--leader-election=false", "--metrics-address", "127.0.0.1:0"])
        .env("KUBECONFIG", &plane.kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(plane.dir.path().join("controller.log")).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let created =
        support::within(60, || async { deployments.get_opt("foo-canary").await.ok().flatten().is_some() }).await;
    let log = || std::fs::read_to_string(plane.dir.path().join("controller.log")).unwrap_or_default();
    assert!(created, "no canary Deployment:\n{}\n{}", log(), plane.logs());
    let canary = deployments.get("foo-canary").await.unwrap();
    let labels = canary.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels.get("canary").map(String::as_str), Some("true"), "{canary:?}");
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let made = support::within(60, || async {
        let sets = replica_sets.list(&ListParams::default().labels("canary=true")).await.map(|l| l.items.len());
        let pods = pods.list(&ListParams::default().labels("canary=true")).await.map(|l| l.items.len());
        sets.is_ok_and(|n| n >= 1) && pods.is_ok_and(|n| n >= 1)
    })
    .await;
    assert!(made, "the real controllers made no ReplicaSet or pod of foo-canary:\n{}", plane.logs());
    let listed = kubectl(&plane, &["get", "canaries"]).await;
    assert!(listed.contains("canary-sample") && listed.contains("foo-canary"), "{listed}");
    // no node runs pods yet (part 2 brings the simulator's nodes): they stay Pending
    let pending =
        kubectl(&plane, &["get", "pods", "-l", "canary=true", "-o", "jsonpath={.items[*].status.phase}"]).await;
    assert!(pending.split_whitespace().all(|p| p == "Pending"), "{pending}");
    controller.kill().await.unwrap();
}
