//! The plugin as people use it: real kubectl finds `kubectl-canary` on PATH (`kubectl canary ...`) and drives
//! a release of the real controller on the workload simulator: `list` and `get` show it, `get --watch` under a
//! pseudo-terminal (`script`) redraws it in place while `resume` lets it go on, `get --wait-for` exits 0 when
//! it succeeds, 3 when it ends otherwise and 4 on timeout; `set image` starts a new release, `pause` holds it
//! (spec.paused), `abort` and `retry` act on it, `explain` says why it is where it is; `completion` writes a
//! shell script. Needs `cargo build --workspace` (make test does it) for the controller and simulator.

use e2e_support as support;

use canary_controller::api::canary::{Canary, Phase};
use kube::api::Api;
use serde_json::json;
use std::process::Output;
use support::Cluster;
use support::release::*;
use support::simulator::can_simulate;

/// `kubectl canary <args> -n <namespace>`.
async fn canary(cluster: &Cluster, args: &[&str]) -> Output {
    let args: Vec<&str> = ["canary"].iter().chain(args).copied().chain(["-n", &cluster.namespace]).collect();
    cluster.kubectl(&args, None).await.expect("kubectl is installed (make setup)")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn succeeds(cluster: &Cluster, args: &[&str]) -> String {
    let out = canary(cluster, args).await;
    assert!(out.status.success(), "kubectl canary {args:?}: {}", text(&out));
    text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_canary_shows_watches_and_drives_a_release() {
    if !can_simulate() {
        return;
    }
    // kubectl finds plugins on PATH (this test is alone in its binary: nothing else reads the environment)
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-canary"));
    let path = format!("{}:{}", plugin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    unsafe { std::env::set_var("PATH", &path) };
    let cluster = Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(253, 30);
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    create_app(&cluster, 2).await;
    cluster.wait_rolled_out("app", "app", 60).await;
    let plugins = cluster.kubectl(&["plugin", "list"], None).await.unwrap();
    assert!(text(&plugins).contains("kubectl-canary"), "kubectl discovers the plugin: {}", text(&plugins));
    create_canary(
        &cluster,
        json!({"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1s"}}],
            "promotion": {"updateTarget": true}}),
    )
    .await;
    wait_release(&cluster, &controller, "paused at its pause step", 120, |r| r.phase == Phase::Paused && r.step == 1)
        .await;

    let listed = succeeds(&cluster, &["list"]).await;
    assert!(listed.contains("NAME") && listed.contains(CANARY) && listed.contains("Paused"), "{listed}");
    let shown = succeeds(&cluster, &["get", CANARY]).await;
    for wanted in ["Phase:    Paused", "[x]  1. setWeight 20", "[>]  2. pause until resumed", "web-canary", "20%"] {
        assert!(shown.contains(wanted), "{wanted:?} missing from:\n{shown}");
    }
    let explained = succeeds(&cluster, &["explain", CANARY]).await;
    assert!(
        explained.contains("is paused at step 2/4") && explained.contains("kubectl canary resume web"),
        "{explained}"
    );

    // a live view on a terminal while the release is resumed and promoted by the controller
    let typescript = cluster.dir.path().join("watch.typescript");
    let command = format!("kubectl canary get {CANARY} --watch -n {}", cluster.namespace);
    let mut watch = tokio::process::Command::new("script")
        .args(["-q", "-f", "-e", "-c", &command])
        .arg(&typescript)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("script (util-linux) runs");
    let drawn = |needle: &'static str| {
        let typescript = typescript.clone();
        move || {
            let text = std::fs::read_to_string(&typescript).unwrap_or_default();
            std::future::ready(text.contains(needle))
        }
    };
    support::eventually(30, "the watch draws the paused release", drawn("Phase:    Paused")).await;
    succeeds(&cluster, &["resume", CANARY]).await;
    let waited = succeeds(&cluster, &["get", CANARY, "--wait-for", "succeeded", "--timeout", "180s"]).await;
    assert!(waited.contains("Succeeded"), "{waited}");
    support::eventually(30, "the watch redraws the succeeded release", drawn("Phase:    Succeeded")).await;
    let _ = watch.kill().await;
    let screen = std::fs::read_to_string(&typescript).unwrap_or_default();
    assert!(screen.matches("\x1b[H\x1b[2J").count() >= 2, "redrawn in place on a terminal:\n{screen}");
    let images = |d: k8s_openapi::api::apps::v1::Deployment| d.spec?.template.spec?.containers[0].image.clone();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = cluster.api();
    assert_eq!(deployments.get("app").await.ok().and_then(images).as_deref(), Some("echo:v2"), "promoted");

    // a new release, held by spec.paused, then aborted: --wait-for succeeded ends with 3, a short one with 4
    succeeds(&cluster, &["set", "image", CANARY, "echo=echo:v3"]).await;
    succeeds(&cluster, &["pause", CANARY]).await;
    let canaries: Api<Canary> = cluster.api();
    assert!(canaries.get(CANARY).await.unwrap().spec.paused, "pause sets spec.paused");
    let out = canary(&cluster, &["get", CANARY, "--wait-for", "succeeded", "--timeout", "2s"]).await;
    assert_eq!(out.status.code(), Some(4), "timed out: {}", text(&out));
    succeeds(&cluster, &["abort", CANARY]).await;
    let out = canary(&cluster, &["get", CANARY, "--wait-for", "succeeded", "--timeout", "60s"]).await;
    assert_eq!(out.status.code(), Some(3), "aborted, not succeeded: {}", text(&out));
    let explained = succeeds(&cluster, &["explain", CANARY]).await;
    assert!(explained.contains("was aborted on request"), "{explained}");
    assert!(explained.contains("Warning ReleaseAborted: aborted by request"), "the events too: {explained}");
    let out = canary(&cluster, &["get", CANARY, "--wait-for", "rolledback", "--timeout", "10s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // retry runs it again; resume unsets spec.paused; then it walks its steps
    succeeds(&cluster, &["retry", CANARY]).await;
    succeeds(&cluster, &["resume", CANARY]).await;
    assert!(!canaries.get(CANARY).await.unwrap().spec.paused, "resume unsets spec.paused");
    wait_release(&cluster, &controller, "retried and progressing", 120, |r| {
        r.revision.contains("echo:v3") && !r.phase.is_final() && r.weight > 0
    })
    .await;

    let out = canary(&cluster, &["get", "missing"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let completion = succeeds(&cluster, &["completion", "bash"]).await;
    assert!(completion.contains("kubectl-canary") && completion.contains("complete"), "{completion}");
    let zsh = succeeds(&cluster, &["completion", "zsh"]).await;
    assert!(zsh.contains("#compdef kubectl-canary"), "{zsh}");
    sim.stop().await;
    cluster.cleanup().await;
}
