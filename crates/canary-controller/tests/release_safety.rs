//! A release is safe from what answers it from outside, end to end on the workload simulator: twenty Canaries
//! whose webhook gates never pass (ten servers that accept and never answer, ten that stream a body without
//! end) hold neither the controller's reconciles nor its memory. Meanwhile another Canary's bad canary (20 % of
//! its connections reset) still gets its Kanary served, is judged at its first window and rolled back, that
//! window no longer than its interval plus a few seconds; the controller's peak memory stays under 100 MiB.
//! Its own test binary, so that its load does not share the machine with the other end-to-end tests.

use e2e_support as support;

use canary_controller::api::canary::{Canary, Phase, Verdict};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use support::Cluster;
use support::release::*;
use support::simulator::can_simulate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many hostile gates.
const HOLDING: usize = 20;

/// A webhook server on loopback (where the controller reaches it) that reads each request and then, as `endless` says, streams a body that
/// never ends or says nothing at all; counts the requests it took.
async fn hostile_server(cluster: &Cluster, endless: bool) -> (String, Arc<AtomicU64>) {
    let listener = cluster.listener_for_controller();
    let url = format!("http://{}/gate", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 8192];
                let _ = stream.read(&mut buffer).await;
                counter.fetch_add(1, Ordering::Relaxed);
                if !endless {
                    // hold the connection, say nothing
                    let _ = stream.read(&mut buffer).await;
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 65536, "\u{1b}".repeat(65536));
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    (url, calls)
}

/// Deployment `name` of 0 replicas (ready at once), its Service, and a Canary of it whose first step is a
/// webhook gate at `url` (called again every 5 s while it does not pass).
async fn holding_canary(cluster: &Cluster, name: &str, url: &str) {
    let labels = json!({"app": name});
    let deployment = json!({"metadata": {"name": name}, "spec": {"replicas": 0, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "echo", "image": "echo:v1"}]}}}});
    let service = json!({"metadata": {"name": name}, "spec": {"selector": labels,
        "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}});
    let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": name},
        "spec": {"targetDeploymentName": name, "targetContainers": [{"name": "echo", "image": "echo:v2"}],
            "replicas": 0, "traffic": {"service": name, "frontService": format!("{name}-front")},
            "steps": [{"webhook": {"url": url, "timeout": "60s", "onFailure": "Retry"}}, {"setWeight": 10}]}});
    let pp = PostParams::default();
    cluster.api::<Deployment>().create(&pp, &serde_json::from_value(deployment).unwrap()).await.unwrap();
    cluster.api::<Service>().create(&pp, &serde_json::from_value(service).unwrap()).await.unwrap();
    cluster.api::<Canary>().create(&pp, &serde_json::from_value(canary).unwrap()).await.unwrap();
}

/// The peak resident memory of process `pid`, in bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_endless_webhooks_hold_neither_the_reconciles_nor_the_memory_of_the_controller() {
    if !can_simulate() {
        return;
    }
    let cluster = Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(232, 60);
    // one proxy pod per Kanary: 21 Kanaries on two cores
    let mut controller = cluster.spawn_controller_with("controller", &["--haproxy-replicas", "1"]);
    controller.wait_for_log("controllers running").await;
    let (silent, silent_calls) = hostile_server(&cluster, false).await;
    let (endless, endless_calls) = hostile_server(&cluster, true).await;
    for i in 0..HOLDING {
        let url = if i % 2 == 0 { &silent } else { &endless };
        holding_canary(&cluster, &format!("hold-{i}"), url).await;
    }
    support::eventually(120, "every gate called", || async {
        silent_calls.load(Ordering::Relaxed) >= HOLDING as u64 / 2
            && endless_calls.load(Ordering::Relaxed) >= HOLDING as u64 / 2
    })
    .await;

    // meanwhile, a bad canary is judged at its first window and rolled back
    create_app(&cluster, 2).await;
    cluster.wait_rolled_out("app", "app", 120).await;
    // on two cores shared with 21 proxy pods, the clients open fewer connections than in tests/release.rs: a
    // longer window at a higher weight gives the canary enough of them
    let interval_seconds = 10;
    let front = create_canary(
        &cluster,
        json!({"targetContainers": [{"name": "echo", "image": BAD_IMAGE}],
            "steps": [{"setWeight": 50}, {"analysis": {}}, {"setWeight": 100}],
            "analysis": {"interval": format!("{interval_seconds}s"), "minSamples": 10}}),
    )
    .await;
    let (_, rolled_back) = under_load(front, wait_phase(&cluster, &controller, Phase::RolledBack, 180)).await;
    let judged = rolled_back.evidence.last().expect("the failed window's evidence");
    assert_eq!((judged.weight, judged.verdict), (50, Verdict::Failed), "{rolled_back:#?}");
    let window = judged.finished_at.0.duration_since(judged.started_at.0).as_secs();
    assert!(
        window <= interval_seconds + 10,
        "a window of {interval_seconds}s took {window}s while the gates held: the gates held the reconciles"
    );
    assert_eq!(rolled_back.weight, 0);

    // the gates never passed: still at their first step, saying why
    let canaries: Api<Canary> = cluster.api();
    support::eventually(90, "an endless answer reported as too large", || async {
        let hold = canaries.get("hold-1").await.ok().and_then(|c| c.status?.release);
        hold.is_some_and(|r| r.step == 0 && r.message.contains("more than 65536 bytes"))
    })
    .await;
    for i in 0..HOLDING {
        let hold = canaries.get(&format!("hold-{i}")).await.unwrap().status.and_then(|s| s.release);
        assert!(hold.as_ref().is_some_and(|r| r.step == 0 && r.weight == 0), "hold-{i} went past its gate: {hold:#?}");
    }
    let pid = controller.child.id().expect("the controller runs");
    let peak = peak_rss(pid);
    assert!(
        peak < 100 * 1024 * 1024,
        "the controller's peak RSS was {} MiB while {} endless answers streamed",
        peak >> 20,
        endless_calls.load(Ordering::Relaxed)
    );
    sim.stop().await;
    cluster.cleanup().await;
}
