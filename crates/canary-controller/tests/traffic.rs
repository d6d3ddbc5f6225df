//! Real traffic through real HAProxy, running the config the controller produced. Its own test binary, so
//! that its load does not share the machine with the timed assertions of the other end-to-end tests.

use e2e_support as support;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::kanary::{env, kanary_yaml};

/// Real HAProxy on 127.0.0.x running the config the controller produced, backends that say who they are,
/// and 10,000 short connections: each route lands within 1.5 points of its weight with unequal pod counts,
/// a weight-0 route and a route without a live pod get nothing, and no connection fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_real_haproxy_follows_the_weights() {
    use support::traffic::{Haproxy, drive, require_free_port, start_backends};
    if !fake_apiserver::tools::available("haproxy") {
        return;
    }
    let e = env().await;
    let p1 = start_backends(&["127.0.0.11"], "v1").await;
    let p2 = start_backends(&["127.0.0.21", "127.0.0.22", "127.0.0.23"], "v2").await;
    let p0 = start_backends(&["127.0.0.31"], "v0").await;
    let services: Api<Service> = e.cluster.api();
    for name in ["v1", "v2", "v0", "vdead"] {
        let svc: Service = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "tcp", "port": 80}]}}),
        )
        .unwrap();
        services.create(&PostParams::default(), &svc).await.unwrap();
    }
    e.endpoints("v1", "tcp", p1 as i32, &[("v1-a", "127.0.0.11", true)]).await;
    e.endpoints(
        "v2",
        "tcp",
        p2 as i32,
        &[("v2-a", "127.0.0.21", true), ("v2-b", "127.0.0.22", true), ("v2-c", "127.0.0.23", true)],
    )
    .await;
    e.endpoints("v0", "tcp", p0 as i32, &[("v0-a", "127.0.0.31", true)]).await;
    e.endpoints("vdead", "tcp", p0 as i32, &[("dead-a", "127.0.0.41", false)]).await;
    let route = |svc: &str, w: i64| json!({"backend": {"serviceName": svc, "servicePort": "tcp"}, "weight": w});
    let kanaries = e.kanaries("kanary.k8s.io", "v1");
    let ky = kanary_yaml("kanary.k8s.io/v1", json!([route("v1", 80), route("v2", 20), route("v0", 0)]));
    kanaries.create(&PostParams::default(), &ky).await.unwrap();
    // the config runs as the controller wrote it: it binds 8080 and 8404 on every address, as in the pod
    require_free_port(8080);
    require_free_port(8404);
    let (listen, stats) = ("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:8404".parse().unwrap());
    for (w1, w2) in [(80, 20), (95, 5), (99, 1)] {
        let routes = json!([route("v1", w1), route("v2", w2), route("v0", 0)]);
        kanaries
            .patch("simple-kanary-rule", &PatchParams::default(), &Patch::Merge(json!({"spec": {"routes": routes}})))
            .await
            .unwrap();
        let rule = format!("lt {w1} }} {{ nbsrv(be_v1) gt 0 }}");
        let config = e
            .wait_config("simple-kanary-rule", "the config", |c| {
                c.contains("127.0.0.23") && c.contains("127.0.0.31") && c.contains(&rule)
            })
            .await;
        assert!(config.contains("\n    bind :::8080 v4v6\n"), "{config}");
        let mut proxy = Haproxy::start(&config, stats).await.unwrap();
        proxy.wait_servers_up(5).await;
        let tally = drive(listen, 10_000, 32).await;
        eprintln!("{w1}/{w2} with 1 and 3 pods, and a weight-0 route: {tally:?}");
        assert_eq!(tally.failures, 0, "{tally:?}");
        assert!((tally.percent("v1") - w1 as f64).abs() <= 1.5, "{tally:?}");
        assert!((tally.percent("v2") - w2 as f64).abs() <= 1.5, "{tally:?}");
        assert_eq!(tally.answers.get("v0"), None, "a weight-0 route got connections: {tally:?}");
        proxy.stop().await;
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
    assert!(!config.contains("127.0.0.41"), "a pod that is not ready is not a server");
    let mut proxy = Haproxy::start(&config, stats).await.unwrap();
    proxy.wait_servers_up(4).await;
    let tally = drive(listen, 4_000, 32).await;
    eprintln!("70/20/10 with the 10% route dead: {tally:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert!((tally.percent("v1") - 80.0).abs() <= 2.0, "{tally:?}");
    assert!((tally.percent("v2") - 20.0).abs() <= 2.0, "{tally:?}");
    e.cluster.cleanup().await;
}

/// The rendered config binds both address families: real HAProxy answers on 127.0.0.1 and on [::1], on the
/// traffic port and on the health port (the readiness probe's). Rendered with free ports so that it can run
/// beside anything; the bind lines are the ones the pod gets, only the numbers differ.
#[tokio::test]
async fn the_proxy_answers_on_ipv4_and_ipv6() {
    use canary_controller::kanary::endpoints::Server;
    use canary_controller::kanary::haproxy::{ProxySettings, RouteBackend, render};
    use support::traffic::{Haproxy, free_port, start_backends};
    use tokio::io::AsyncReadExt;
    if !fake_apiserver::tools::available("haproxy") {
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        fake_apiserver::tools::skip_unsupported("this machine has no IPv6 loopback ([::1] cannot be bound)");
        return;
    }
    let backend = start_backends(&["127.0.0.91"], "v4v6").await;
    let routes = [RouteBackend {
        service: "app".into(),
        weight: 100,
        servers: vec![Server { name: "app-0".into(), address: "127.0.0.91".parse().unwrap(), port: backend }],
    }];
    let settings = ProxySettings { port: free_port("::"), stats_port: free_port("::"), ..ProxySettings::default() };
    let config = render("ns/dual", &routes, &settings);
    assert!(config.contains(&format!("\n    bind :::{} v4v6\n", settings.port)), "{config}");
    let stats: std::net::SocketAddr = format!("127.0.0.1:{}", settings.stats_port).parse().unwrap();
    let mut proxy = Haproxy::start(&config, stats).await.unwrap();
    proxy.wait_servers_up(1).await;
    for host in ["127.0.0.1", "[::1]"] {
        let health = support::http_get(&format!("{host}:{}", settings.stats_port), "/healthz").await;
        assert!(health.as_deref().is_some_and(|r| r.contains(" 200 ")), "no health answer on {host}: {health:?}");
        let mut s = tokio::net::TcpStream::connect(format!("{host}:{}", settings.port))
            .await
            .unwrap_or_else(|e| panic!("the proxy does not accept on {host}: {e}"));
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer.trim(), "v4v6", "through {host}");
    }
    proxy.stop().await;
}
