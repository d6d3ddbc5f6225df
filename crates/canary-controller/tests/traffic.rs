//! Real traffic through real HAProxy, running the config the controller produced: on the workload simulator
//! (as root; the tests' own control plane), the proxy (HAProxy and its agent) and the backends are Deployments whose
//! pods really run. Its own
//! test binary, so that its load does not share the machine with the other end-to-end tests.

use e2e_support as support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::kanary::{env_with_simulator, kanary_yaml};
use support::simulator::can_simulate;
use support::traffic::{assert_share, by_backend, drive};

/// The Kanary's proxy Deployment.
const PROXY: &str = "simple-kanary-rule-haproxy";

/// The Kanary of examples/simple-stack.yml on the workload simulator: backends are Deployments whose pods
/// really run (1 pod for v1, 3 for v2), the proxy is the controller's Deployment running real HAProxy on the
/// config the controller wrote, and 10,000 short connections go to the destination Service's address. Each
/// route lands within 1.5 points of its weight with unequal pod counts, a weight-0 route and a route whose
/// only pod is not ready get nothing, and no connection fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_real_haproxy_follows_the_weights() {
    if !can_simulate() {
        return;
    }
    let (e, sim) = env_with_simulator(240, 32).await;
    for (name, replicas) in [("v1", 1), ("v2", 3), ("v0", 1)] {
        e.cluster.create_backend(name, replicas, None).await;
    }
    // a backend that is never ready: its probe checks a port nothing listens on
    e.cluster.create_backend("vdead", 1, Some(json!({"tcpSocket": {"port": 9999}, "periodSeconds": 1}))).await;
    let route = |svc: &str, w: i64| json!({"backend": {"serviceName": svc, "servicePort": "tcp"}, "weight": w});
    let kanaries = e.kanaries("kanary.k8s.io", "v1");
    let ky = kanary_yaml("kanary.k8s.io/v1", json!([route("v1", 50), route("v2", 50), route("v0", 0)]));
    kanaries.create(&PostParams::default(), &ky).await.unwrap();
    let listen = e.cluster.service_address("myapp", 80).await;
    for name in ["v1", "v2", "v0"] {
        e.cluster.wait_rolled_out(name, name, 60).await;
    }
    e.cluster.wait_rolled_out(PROXY, "myapp", 120).await;
    e.cluster.wait_synced(&kanaries, "simple-kanary-rule", 60).await;
    let pods: Api<Pod> = e.cluster.api();
    let address_of = |pods: &[Pod], app: &str| -> Vec<String> {
        let of_app =
            pods.iter().filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get("app")).is_some_and(|a| a == app));
        of_app.filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect()
    };
    let running = pods.list(&ListParams::default()).await.unwrap().items;
    let (v2_pods, v0_pod) = (address_of(&running, "v2"), address_of(&running, "v0"));
    assert_eq!((v2_pods.len(), v0_pod.len()), (3, 1), "pod addresses");
    for (w1, w2) in [(80, 20), (95, 5), (99, 1)] {
        let routes = json!([route("v1", w1), route("v2", w2), route("v0", 0)]);
        let generation = e.cluster.generation(PROXY).await;
        kanaries
            .patch("simple-kanary-rule", &PatchParams::default(), &Patch::Merge(json!({"spec": {"routes": routes}})))
            .await
            .unwrap();
        let threshold = format!("t0 {w1}\n");
        e.wait_weights("simple-kanary-rule", "the weights", |w| w.starts_with(&threshold)).await;
        e.wait_config("simple-kanary-rule", "the config", |c| {
            v2_pods.iter().chain(&v0_pod).all(|ip| c.contains(ip.as_str()))
        })
        .await;
        // the proxy agents apply it to the running HAProxy: no new pods
        e.cluster.wait_synced(&kanaries, "simple-kanary-rule", 60).await;
        assert_eq!(e.cluster.generation(PROXY).await, generation, "the proxy's pod template changed");
        let tally = by_backend(drive(listen, 10_000, 32).await);
        eprintln!("{w1}/{w2} with 1 and 3 pods, and a weight-0 route: {tally:?}");
        assert_eq!(tally.failures, 0, "{tally:?}\n{}", sim.log());
        assert_share(&tally, "v1", w1 as f64, 10_000);
        assert_share(&tally, "v2", w2 as f64, 10_000);
        assert_eq!(tally.answers.get("v0"), None, "a weight-0 route got connections: {tally:?}");
    }

    // a route whose only pod is not ready: it gets nothing, its share goes to the first live route
    kanaries
        .patch(
            "simple-kanary-rule",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"routes": [route("v1", 70), route("v2", 20), route("vdead", 10)]}})),
        )
        .await
        .unwrap();
    let config =
        e.wait_config("simple-kanary-rule", "the config with a dead route", |c| c.contains("backend be_vdead")).await;
    let running = pods.list(&ListParams::default()).await.unwrap().items;
    let dead = address_of(&running, "vdead");
    assert!(dead.len() == 1 && !config.contains(dead[0].as_str()), "a pod that is not ready is not a server: {dead:?}");
    // a route added: the agents reload HAProxy seamlessly (still no new pods)
    e.cluster.wait_synced(&kanaries, "simple-kanary-rule", 60).await;
    let tally = by_backend(drive(listen, 4_000, 32).await);
    eprintln!("70/20/10 with the 10% route dead: {tally:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert_share(&tally, "v1", 80.0, 4_000);
    assert_share(&tally, "v2", 20.0, 4_000);
    sim.stop().await;
    e.cluster.cleanup().await;
}

/// The rendered config binds both address families: real HAProxy answers on 127.0.0.1 and on [::1], on the
/// traffic port and on the health port (the readiness probe's). Rendered with free ports so that it can run
/// beside anything; the bind lines are the ones the pod gets, only the numbers differ.
#[tokio::test]
async fn the_proxy_answers_on_ipv4_and_ipv6() {
    use canary_controller::dataplane::Server;
    use canary_controller::dataplane::haproxy::{ProxySettings, RouteBackend, render, weights_map, weights_path};
    use support::traffic::{Haproxy, free_port, start_backends};
    if !e2e_support::tools::available("haproxy") {
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        e2e_support::tools::skip_unsupported("this machine has no IPv6 loopback ([::1] cannot be bound)");
        return;
    }
    let backend = start_backends(&["127.0.0.91"], "v4v6").await;
    let routes = [RouteBackend {
        service: "app".into(),
        weight: 100,
        servers: vec![Server { name: "app-0".into(), address: "127.0.0.91".parse().unwrap(), port: backend }],
        h2c: false,
        header_value: None,
    }];
    let dir = tempfile::tempdir().unwrap();
    let settings = ProxySettings {
        port: free_port("::"),
        stats_port: free_port("::"),
        files_dir: dir.path().to_str().unwrap().into(),
        ..ProxySettings::default()
    };
    let config = render("ns/dual", &routes, &settings);
    assert!(config.contains(&format!("\n    bind :::{} v4v6\n", settings.port)), "{config}");
    std::fs::write(dir.path().join("haproxy.cfg"), &config).unwrap();
    std::fs::write(weights_path(&settings), weights_map(routes.iter().map(|r| &r.weight))).unwrap();
    let stats: std::net::SocketAddr = format!("127.0.0.1:{}", settings.stats_port).parse().unwrap();
    let mut proxy = Haproxy::start_in(dir, stats).await.unwrap();
    proxy.wait_servers_up(1).await;
    for host in ["127.0.0.1", "[::1]"] {
        let health = support::http_get(&format!("{host}:{}", settings.stats_port), "/healthz").await;
        assert!(health.as_deref().is_some_and(|r| r.contains(" 200 ")), "no health answer on {host}: {health:?}");
        let target = tokio::net::lookup_host(format!("{host}:{}", settings.port)).await.unwrap().next().unwrap();
        let answer = support::traffic::ask(target).await;
        assert_eq!(answer.as_deref(), Some("v4v6"), "through {host}");
    }
    proxy.stop().await;
}
