//! The README's walkthrough on fake-apiserver with workload-sim: the example stack's Deployments become
//! ready pods, the Kanary's HAProxy pods really run, and connections to the destination Service's address
//! (through the simulator's service proxy) are split 80/20 between myapp-v1 and myapp-v2.

use e2e_support as support;
use fake_apiserver::tools;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use std::process::Stdio;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_stack_runs_and_its_connections_are_split_80_20() {
    if std::env::var_os("E2E_KUBECONFIG").is_some() {
        return tools::skip_unsupported("the simulator's own walkthrough runs on fake-apiserver only");
    }
    if !tools::available("kubectl") || !tools::available("haproxy") {
        return;
    }
    if !std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
        return tools::skip("workload-sim needs root for the pods' network namespaces (CI runs as root)");
    }
    let cluster = support::Cluster::start().await;
    // Services on loopback, where the simulator's service proxy listens; a range of this test's own
    cluster.fake.as_ref().unwrap().state().inner.lock().unwrap().service_network = [127, 97];
    cluster.install_crds().await;
    let log = cluster.dir.path().join("workload-sim.log");
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_workload-sim"))
        .args(["run", "--pod-network", "127.245.0.0/16", "--state-dir"])
        .arg(cluster.dir.path().join("sim"))
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _controller = cluster.spawn_controller();
    let ns = cluster.namespace.clone();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/simple-stack.yml");
    let out = cluster.kubectl(&["apply", "-n", &ns, "-f", example], None).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let deployments: Api<Deployment> = cluster.api();
    for (name, replicas) in [("myapp-v1", 3), ("myapp-v2", 1), ("simple-kanary-rule-haproxy", 2)] {
        support::eventually(120, &format!("{name} has {replicas} ready replicas"), || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get_opt(name).await.ok().flatten();
                let status = d.and_then(|d| d.status).unwrap_or_default();
                status.ready_replicas == Some(replicas) && status.updated_replicas == Some(replicas)
            }
        })
        .await;
    }
    let destination: Service = cluster.api::<Service>().get("myapp").await.unwrap();
    let address = format!("{}:80", destination.spec.unwrap().cluster_ip.unwrap());
    // every proxy pod runs the current config once the roll is over: count then
    support::eventually(60, "the destination answers", || {
        let address = address.clone();
        async move { answer(&address).await.is_some() }
    })
    .await;
    let (mut v1, mut v2, mut failed) = (0, 0, 0);
    for _ in 0..400 {
        match answer(&address).await {
            Some(a) if a.starts_with("pod=myapp-v1-") => v1 += 1,
            Some(a) if a.starts_with("pod=myapp-v2-") => v2 += 1,
            _ => failed += 1,
        }
    }
    let share = v2 as f64 / 400.0;
    assert!(
        failed == 0 && (0.14..=0.26).contains(&share),
        "v1 {v1}, v2 {v2}, failed {failed}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // stopping the simulator stops every pod and removes its namespaces
    let pid = sim.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-s", "TERM", &pid]).status().unwrap();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), sim.wait()).await;
    assert!(stopped.is_ok(), "workload-sim did not stop on SIGTERM");
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .filter(|l| l.starts_with("wsim245-"))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(answer(&address).await.is_none(), "the destination still answers after the simulator stopped");
    cluster.cleanup().await;
}

/// One connection to `address`: the answer's first line, or None when it fails.
async fn answer(address: &str) -> Option<String> {
    let connect = tokio::net::TcpStream::connect(address);
    let mut stream = tokio::time::timeout(std::time::Duration::from_secs(5), connect).await.ok()?.ok()?;
    let mut text = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_string(&mut text)).await.ok()?.ok()?;
    text.lines().next().map(String::from).filter(|l| l.starts_with("pod="))
}
