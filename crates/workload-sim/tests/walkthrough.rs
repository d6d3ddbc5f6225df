//! The README's walkthrough on the real control plane with workload-sim as its node: the example stack's Deployments become
//! ready pods, the Kanary's proxy pods really run (HAProxy and its agent), and connections to the destination Service's address
//! (through the simulator's service proxy) are split 80/20 between myapp-v1 and myapp-v2.

use e2e_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use support::traffic::{ask, drive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_stack_runs_and_its_connections_are_split_80_20() {
    if !support::simulator::can_simulate() {
        return;
    }
    let cluster = support::Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(245, 64);
    let controller = cluster.spawn_controller();
    let ns = cluster.namespace.clone();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/simple-stack.yml");
    let out = cluster.kubectl(&["apply", "-n", &ns, "-f", example], None).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let deployments: Api<Deployment> = cluster.api();
    for (name, replicas) in [("myapp-v1", 3), ("myapp-v2", 1), ("simple-kanary-rule-haproxy", 2)] {
        let ready = support::within(120, || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get_opt(name).await.ok().flatten();
                let status = d.and_then(|d| d.status).unwrap_or_default();
                status.ready_replicas == Some(replicas) && status.updated_replicas == Some(replicas)
            }
        })
        .await;
        if !ready {
            let pods = cluster.kubectl(&["get", "pods", "-o", "wide", "-n", &ns], None).await.unwrap();
            let log = sim.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{name} has not {replicas} ready replicas:\n{}\n--- workload-sim (newest first):\n{}\n--- the controller:\n{}",
                String::from_utf8_lossy(&pods.stdout),
                tail.join("\n"),
                controller.log()
            );
        }
    }
    let address = cluster.service_address("myapp", 80).await;
    // every proxy pod runs the config with every ready pod once the roll is over (a slot not in use holds
    // the parked address 127.0.0.1:1): count then
    let configs: Api<ConfigMap> = cluster.api();
    support::eventually(30, "the config has the 4 pods", || async {
        let config = configs.get_opt("simple-kanary-rule-config").await.ok().flatten().and_then(|c| c.data);
        config.and_then(|d| d.get("haproxy.cfg").cloned()).is_some_and(|c| {
            c.lines().filter(|l| l.trim_start().starts_with("server ") && !l.contains("127.0.0.1:1 ")).count() == 4
        })
    })
    .await;
    cluster.wait_rolled_out("simple-kanary-rule-haproxy", "myapp", 120).await;
    // and each proxy pod's agent has brought its HAProxy to it
    cluster.wait_synced(&cluster.kanaries("kanary.k8s.io", "v1"), "simple-kanary-rule", 60).await;
    let tally = drive(address, 400, 4).await.regroup(|answer| {
        let pod = answer.strip_prefix("pod=").unwrap_or(answer);
        ["myapp-v1", "myapp-v2"].into_iter().find(|d| pod.starts_with(&format!("{d}-"))).unwrap_or(answer).to_string()
    });
    let share = tally.percent("myapp-v2");
    assert!(tally.failures == 0 && (14.0..=26.0).contains(&share), "{tally:?}\n{}", sim.log());

    // stopping the simulator stops every pod and removes its namespaces
    sim.stop().await;
    assert!(ask(address).await.is_none(), "the destination still answers after the simulator stopped");
    cluster.cleanup().await;
}
