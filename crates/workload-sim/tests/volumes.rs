//! ConfigMap volumes as a kubelet keeps them: a Pod whose ConfigMap does not exist yet waits for it (and
//! starts once it is created), and a running Pod's files follow its ConfigMap, so that an HAProxy that exits
//! on a bad config comes back on the fixed one in the same Pod, as in a real cluster. An HAProxy container
//! runs its manifest's command with its volumes at their mount paths. A deleted Pod's files are removed.

use e2e_support as support;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const GOOD: &str = "global\n    log stderr local0\ndefaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\nfrontend f\n    bind :::8080\n    tcp-request content reject\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waits_for_its_config_map_and_its_files_follow_the_config_map() {
    if !support::simulator::can_simulate() {
        return;
    }
    let cluster = support::Cluster::start_for_pods().await;
    let sim = cluster.start_simulator(247, 8);
    let deployment = json!({"metadata": {"name": "lb"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "lb"}},
        "template": {"metadata": {"labels": {"app": "lb"}}, "spec": {
            "containers": [{"name": "haproxy", "image": "haproxy:2.6", "ports": [{"containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                "volumeMounts": [{"name": "config", "mountPath": "/usr/local/etc/haproxy"}]}],
            "volumes": [{"name": "config", "configMap": {"name": "lb-config"}}]}}}});
    let deployments: Api<Deployment> = cluster.api();
    deployments.create(&PostParams::default(), &serde_json::from_value(deployment).unwrap()).await.unwrap();
    let pods: Api<Pod> = cluster.api();
    let only_pod = || async {
        let listed = pods.list(&ListParams::default().labels("app=lb")).await.unwrap().items;
        (listed.len() == 1).then(|| listed[0].clone())
    };
    let condition = |pod: &Pod, type_: &str| -> Option<(String, Option<String>)> {
        let conditions = pod.status.as_ref()?.conditions.as_ref()?;
        conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.message.clone()))
    };

    // no ConfigMap: the Pod stays Pending and says why
    support::eventually(60, "the pod says its ConfigMap is missing", || async {
        let pod = only_pod().await;
        pod.and_then(|p| condition(&p, "Ready")).is_some_and(|(status, message)| {
            status == "False" && message.is_some_and(|m| m.contains("ConfigMap lb-config"))
        })
    })
    .await;

    // created with a config HAProxy refuses: the Pod starts, its container exits and never gets ready
    let configs: Api<ConfigMap> = cluster.api();
    let bad = json!({"metadata": {"name": "lb-config"}, "data": {"haproxy.cfg": "global\n    no-such-directive\n"}});
    configs.create(&PostParams::default(), &serde_json::from_value(bad).unwrap()).await.unwrap();
    support::eventually(60, "the pod started and its container restarts", || async {
        let pod = only_pod().await;
        let statuses = pod.and_then(|p| p.status?.container_statuses).unwrap_or_default();
        statuses.first().is_some_and(|c| c.restart_count >= 1 && !c.ready)
    })
    .await;
    let started = only_pod().await.expect("one pod").name_any();

    // fixed in the ConfigMap: the same Pod gets the file and becomes ready
    let fix = json!({"data": {"haproxy.cfg": GOOD}});
    configs.patch("lb-config", &PatchParams::default(), &Patch::Merge(&fix)).await.unwrap();
    support::eventually(60, "the same pod is ready on the fixed config", || async {
        let pod = only_pod().await;
        pod.is_some_and(|p| {
            p.name_any() == started && condition(&p, "Ready").is_some_and(|(status, _)| status == "True")
        })
    })
    .await;
    assert!(sim.log().contains("ConfigMap volume updated"), "{}", sim.log());

    // the manifest's command, on a file at a path of its own: only that file makes HAProxy listen on 8081;
    // a volume hides the directory the simulator runs in (at its parent, as a /tmp volume hides a checkout
    // under /tmp):
    // HAProxy starts in `/`, not there (it returns to its first directory after reading its config)
    let custom = json!({"metadata": {"name": "lb-custom"}, "data": {"custom.cfg": GOOD.replace(":::8080", ":::8081")}});
    configs.create(&PostParams::default(), &serde_json::from_value(custom).unwrap()).await.unwrap();
    let deployment = json!({"metadata": {"name": "custom"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "custom"}},
        "template": {"metadata": {"labels": {"app": "custom"}}, "spec": {
            "containers": [{"name": "haproxy", "image": "haproxy:2.6", "ports": [{"containerPort": 8081}],
                "command": ["/usr/local/sbin/haproxy", "-db", "-f", "/etc/custom-lb/custom.cfg"],
                "readinessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/custom-lb", "readOnly": true},
                    {"name": "scratch", "mountPath": std::env::current_dir().unwrap().parent().unwrap()}]}],
            "volumes": [{"name": "config", "configMap": {"name": "lb-custom"}}, {"name": "scratch", "emptyDir": {}}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(deployment).unwrap()).await.unwrap();
    support::eventually(60, "the pod of the custom command is ready", || async {
        let listed = pods.list(&ListParams::default().labels("app=custom")).await.unwrap().items;
        listed.iter().any(|p| condition(p, "Ready").is_some_and(|(status, _)| status == "True"))
    })
    .await;
    assert!(!std::path::Path::new("/etc/custom-lb").exists(), "the mount point was made on the host");

    // a deleted Pod's files go with it: one directory per running Pod
    let custom_pod = pods.list(&ListParams::default().labels("app=custom")).await.unwrap().items[0].name_any();
    let now = kube::api::DeleteParams { grace_period_seconds: Some(1), ..Default::default() };
    pods.delete(&custom_pod, &now).await.unwrap();
    let pod_dirs = cluster.dir.path().join("workload-sim").join("pods");
    support::eventually(60, "one pod directory per running pod (2)", || async {
        let running = pods.list(&ListParams::default()).await.unwrap().items;
        let replaced = running.iter().all(|p| p.name_any() != custom_pod) && running.len() == 2;
        replaced && std::fs::read_dir(&pod_dirs).unwrap().count() == 2
    })
    .await;
    sim.stop().await;
    cluster.cleanup().await;
}
