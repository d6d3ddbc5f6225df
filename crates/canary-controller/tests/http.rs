//! HTTP through the Kanary's real HAProxy in HTTP mode (`protocol: http`), on the workload simulator: each
//! request is drawn on its own, so clients holding a few keep-alive (HTTP/1.1) or multiplexed (HTTP/2)
//! connections see the weights; HTTP/2 reaches the pods where their Service port's `appProtocol` says h2c;
//! a weight change cuts no connection, and a rollback moves held connections to stable request by request.
//! Its own test binary (its own control plane and node), so that its load does not share the machine.

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::http::{Client, Requests, Version, proxy_requests};
use support::kanary::env_with_simulator;
use support::simulator::can_simulate;
use support::traffic::by_backend;

const KANARY: &str = "web";
const PROXY: &str = "web-haproxy";

/// The canary's share of `requests` is `weight` within one point (the bound; a binomial draw of
/// 10,000 at 10 % has a standard deviation of 0.3 points), and no request failed.
fn assert_split(what: &str, requests: &Requests, weight: f64) {
    let tally = by_backend(requests.tally.clone());
    eprintln!("{what}: {tally:?}, {} reconnects", requests.reconnects);
    assert_eq!(tally.failures, 0, "{what}: {tally:?}");
    let share = tally.percent("v2");
    assert!((share - weight).abs() <= 1.0, "{what}: the canary got {share:.2} % of requests for {weight} %: {tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_split_one_by_one_on_keep_alive_and_http2_connections() {
    if !can_simulate() {
        return;
    }
    let (e, sim) = env_with_simulator(244, 32).await;
    for (name, replicas) in [("v1", 2), ("v2", 1), ("v3", 1)] {
        e.cluster.create_backend(name, replicas, None).await;
        // a second port, served over HTTP/2 without TLS (the same pods: the built-in server speaks both)
        let port = json!({"spec": {"ports": [{"name": "tcp", "port": 80, "targetPort": 8080},
            {"name": "h2c", "port": 81, "targetPort": 8080, "appProtocol": "kubernetes.io/h2c"}]}});
        let services: Api<Service> = e.cluster.api();
        services.patch(name, &PatchParams::default(), &Patch::Merge(port)).await.unwrap();
    }
    // the canary answers 30 ms later, so that its percentiles differ from stable's
    let slow = json!({"spec": {"template": {"spec": {"containers": [{"name": "echo", "env": [{"name": "SIM_LATENCY_MS", "value": "30"}]}]}}}});
    let deployments: Api<Deployment> = e.cluster.api();
    deployments.patch("v2", &PatchParams::default(), &Patch::Strategic(slow)).await.unwrap();
    // v3 fails 5 % of its answers (gRPC status 14 "unavailable" to gRPC calls)
    let failing = json!({"spec": {"template": {"spec": {"containers": [{"name": "echo", "env": [{"name": "SIM_FAIL_RATIO", "value": "0.05"}]}]}}}});
    deployments.patch("v3", &PatchParams::default(), &Patch::Strategic(failing)).await.unwrap();
    let route =
        |svc: &str, port: &str, w: i64| json!({"backend": {"serviceName": svc, "servicePort": port}, "weight": w});
    let kanaries = e.kanaries("kanary.k8s.io", "v1");
    let kanary = json!({"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "metadata": {"name": KANARY},
        "spec": {"destination": "web", "protocol": "http", "routes": [route("v1", "tcp", 90), route("v2", "tcp", 10)]}});
    kanaries.create(&PostParams::default(), &serde_json::from_value(kanary).unwrap()).await.unwrap();
    for name in ["v1", "v2", "v3"] {
        e.cluster.wait_rolled_out(name, name, 60).await;
    }
    e.cluster.wait_rolled_out(PROXY, "web", 120).await;
    e.cluster.wait_synced(&kanaries, KANARY, 60).await;
    let config = e.config(KANARY).await.unwrap_or_default();
    assert!(config.contains("mode http") && config.contains("http-request set-var(txn.r) rand(100)"), "{config}");
    let front = e.cluster.service_address("web", 80).await;
    let pods: Api<Pod> = e.cluster.api();
    let labels = ListParams::default().labels(&format!("proxy={PROXY}"));
    let pod_ips: Vec<std::net::IpAddr> = (pods.list(&labels).await.unwrap().items.iter())
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
        .collect();
    assert!(!pod_ips.is_empty(), "no proxy pod");
    let proxies: Vec<std::net::IpAddr> =
        pod_ips.iter().map(|ip| e.cluster.host_address(std::net::SocketAddr::new(*ip, 0)).ip()).collect();

    // HTTP/1.1 to the pods: 4 keep-alive connections, and one HTTP/2 connection with 16 streams
    let h1 = Client::connect(front, Version::Http1, 4).await;
    let h2 = Client::connect(front, Version::Http2, 1).await;
    let before = proxy_requests(&proxies).await;
    let first = h1.load(1, 10_000, &[]).await;
    assert_split("HTTP/1.1 keep-alive, 4 connections", &first, 10.0);
    assert_eq!(first.reconnects, 0, "the proxy closed keep-alive connections\n{}", sim.log());
    // the agents' request metrics: every request HAProxy answered, by route, and the window's counts are the
    // client's
    let after = proxy_requests(&proxies).await;
    for route in ["v1", "v2"] {
        let counted = after.agents.get(route).map_or(0, |r| r.requests);
        assert_eq!(Some(&counted), after.haproxy.get(route), "{route}: the agents and HAProxy count apart: {after:?}");
        let window = after.since(&before, route);
        let answered = by_backend(first.tally.clone()).answers.get(route).copied().unwrap_or(0) as u64;
        assert_eq!((window.requests, window.errors), (answered, 0), "{route}'s window");
    }
    // percentiles: one client straight to one proxy pod, from the node (as a pod would: no forwarder of the
    // test's network between the two clocks), one request at a time on a thread of its own with blocking
    // reads (no async scheduling in its clock); the proxy's within 1 ms or 5 % of the client's
    let pod = std::net::SocketAddr::new(pod_ips[0], canary_controller::dataplane::haproxy::PROXY_PORT);
    let before = proxy_requests(&proxies[..1]).await;
    let namespace = e.cluster.node_namespace();
    let direct =
        tokio::task::spawn_blocking(move || support::http::timed_requests(namespace, pod, 2_000)).await.unwrap();
    let after = proxy_requests(&proxies[..1]).await;
    for route in ["v1", "v2"] {
        let window = after.since(&before, route);
        for q in [0.5, 0.9, 0.99] {
            let client = direct.percentile_ms(&format!("echo:{route}"), q).unwrap();
            let proxy = window.percentile_ms(q).unwrap();
            eprintln!("{route} p{}: {proxy:.2} ms at the proxy, {client:.2} ms at the client", q * 100.0);
            assert!(
                (proxy - client).abs() <= f64::max(1.0, client * 0.05),
                "{route} p{}: {proxy:.2} ms at the proxy, {client:.2} ms at the client",
                q * 100.0
            );
        }
    }
    let first = h2.load(16, 10_000, &[]).await;
    assert_split("HTTP/2, 1 connection", &first, 10.0);
    assert_eq!(first.reconnects, 0, "the proxy closed the HTTP/2 connection");
    let (_, headers) = support::http::get(front, Version::Http2, &[]).await.unwrap();
    assert_eq!(headers["sim-protocol"], "HTTP/1.1", "HTTP/1.1 to pods whose port is not h2c");

    // HTTP/2 to the pods (appProtocol kubernetes.io/h2c): a new configuration (a reload)
    let routes = json!([route("v1", "h2c", 90), route("v2", "h2c", 10)]);
    kanaries.patch(KANARY, &PatchParams::default(), &Patch::Merge(json!({"spec": {"routes": routes}}))).await.unwrap();
    e.wait_config(KANARY, "HTTP/2 to the pods", |c| c.contains("proto h2")).await;
    e.cluster.wait_synced(&kanaries, KANARY, 60).await;
    for version in [Version::Http1, Version::Http2] {
        let (_, headers) = support::http::get(front, version, &[]).await.unwrap();
        assert_eq!(headers["sim-protocol"], "HTTP/2.0", "{version:?} clients reach h2c pods over HTTP/2");
    }
    let h2c = Client::connect(front, Version::Http2, 1).await;
    assert_split("HTTP/2 to h2c pods", &h2c.load(16, 10_000, &[]).await, 10.0);

    // a real gRPC client (tonic) on one HTTP/2 connection, to h2c pods; v3 fails 5 % of its calls with gRPC
    // status 14 (an HTTP 200 answer): the agents count them as errors, HAProxy's 5xx counters do not
    let routes = json!([route("v1", "h2c", 90), route("v3", "h2c", 10)]);
    kanaries.patch(KANARY, &PatchParams::default(), &Patch::Merge(json!({"spec": {"routes": routes}}))).await.unwrap();
    e.wait_config(KANARY, "the gRPC routes", |c| c.contains("be_v3")).await;
    e.cluster.wait_synced(&kanaries, KANARY, 60).await;
    let before = proxy_requests(&proxies).await;
    let calls = support::http::grpc_load(front, 5_000, 16).await;
    let after = proxy_requests(&proxies).await;
    let tally = by_backend(calls.tally.clone());
    eprintln!("gRPC: {tally:?}, failures {:?}", calls.failures_by);
    let answered_by_v3 = tally.answers.get("v3").copied().unwrap_or(0) + tally.failures;
    assert!((answered_by_v3 as f64 / 50.0 - 10.0).abs() <= 1.5, "v3's share of 5,000 calls: {tally:?}");
    assert!(
        tally.failures > 0
            && calls.failures_by.keys().all(|why| why.starts_with("Unavailable from") && why.contains("echo:v3")),
        "{:?}",
        calls.failures_by
    );
    let v3 = after.since(&before, "v3");
    assert_eq!(
        (v3.requests, v3.errors),
        (answered_by_v3 as u64, tally.failures as u64),
        "the agents' count of v3's calls and errors"
    );

    // overrides and cohorts: `x-canary: always` / `never`, and a cookie that keeps each client on its route
    let with_values = |w2: i64| {
        let mut routes = json!([route("v1", "h2c", 100 - w2), route("v2", "h2c", w2)]);
        routes[0]["headerValue"] = json!("never");
        routes[1]["headerValue"] = json!("always");
        routes
    };
    let http = json!({"header": "x-canary", "sticky": true});
    let spec = json!({"spec": {"http": http, "routes": with_values(10)}});
    kanaries.patch(KANARY, &PatchParams::default(), &Patch::Merge(spec)).await.unwrap();
    e.wait_config(KANARY, "cohorts and overrides", |c| c.contains("req.cook(kanary-route)")).await;
    e.cluster.wait_synced(&kanaries, KANARY, 60).await;
    let overridden = Client::connect(front, Version::Http1, 2).await;
    for (value, route) in [("always", "v2"), ("never", "v1")] {
        let tally = by_backend(overridden.load(1, 200, &[("x-canary", value)]).await.tally);
        assert_eq!((tally.answers.get(route), tally.failures), (Some(&200), 0), "x-canary: {value}: {tally:?}");
    }
    // 40 clients, each keeping the cookie it got; the weight moves 20 times; no client flips
    let mut cohorts: Vec<(String, String)> = vec![];
    for _ in 0..40 {
        let (answer, headers) = support::http::get(front, Version::Http1, &[]).await.unwrap();
        let cookie = sticky_cookie(&headers).expect("a cohort cookie on the first answer");
        cohorts.push((cookie, answered_by(&answer)));
    }
    assert!(cohorts.iter().all(|(cookie, route)| *cookie == format!("kanary-route={route}")), "{cohorts:?}");
    let in_canary = cohorts.iter().filter(|(_, route)| route == "v2").count();
    for (change, w2) in
        [5, 40, 15, 60, 25, 90, 1, 50, 35, 70, 20, 80, 10, 45, 30, 65, 55, 95, 3, 10].into_iter().enumerate()
    {
        let spec = json!({"spec": {"routes": with_values(w2)}});
        kanaries.patch(KANARY, &PatchParams::default(), &Patch::Merge(spec)).await.unwrap();
        let threshold = format!("t0 {}\n", 100 - w2);
        e.wait_weights(KANARY, "the new weights", |w| w.starts_with(&threshold)).await;
        e.cluster.wait_synced(&kanaries, KANARY, 60).await;
        for (cookie, route) in &cohorts {
            let (answer, headers) = support::http::get(front, Version::Http1, &[("cookie", cookie)]).await.unwrap();
            assert_eq!(answered_by(&answer), *route, "change {change} (canary at {w2} %): a client of {route} flipped");
            assert_eq!(sticky_cookie(&headers), None, "its cookie is not set again");
        }
    }
    eprintln!("40 sticky clients ({in_canary} of the canary) kept their version across 20 weight changes");

    // a rollback (the canary's weight to 0) while connections, cohort cookies and override headers are held:
    // the connections stay open, and every request after it goes to stable
    let held = [Client::connect(front, Version::Http1, 2).await, Client::connect(front, Version::Http2, 1).await];
    for client in &held {
        assert_eq!(client.load(1, 200, &[]).await.tally.failures, 0);
    }
    kanaries
        .patch(KANARY, &PatchParams::default(), &Patch::Merge(json!({"spec": {"routes": with_values(0)}})))
        .await
        .unwrap();
    e.wait_weights(KANARY, "the rollback's weights", |w| w.starts_with("t0 100\n")).await;
    e.cluster.wait_synced(&kanaries, KANARY, 60).await;
    for (client, per_connection) in held.iter().zip([1, 8]) {
        let after = client.load(per_connection, 2_000, &[]).await;
        let tally = by_backend(after.tally.clone());
        assert_eq!((tally.failures, after.reconnects), (0, 0), "a held connection failed or was cut: {tally:?}");
        assert_eq!(tally.answers.get("v2"), None, "a request reached the canary after the rollback: {tally:?}");
    }
    let forced = by_backend(overridden.load(1, 200, &[("x-canary", "always")]).await.tally);
    assert_eq!(forced.answers.get("v1"), Some(&200), "x-canary: always after the rollback: {forced:?}");
    for (cookie, route) in cohorts.iter().filter(|(_, route)| route == "v2") {
        let (answer, headers) = support::http::get(front, Version::Http1, &[("cookie", cookie)]).await.unwrap();
        assert_eq!(answered_by(&answer), "v1", "a client of {route} reached the canary after the rollback");
        assert_eq!(sticky_cookie(&headers).as_deref(), Some("kanary-route=v1"), "its cohort moves to stable");
    }
    assert!(in_canary > 0, "no client drew the canary: the rollback of cohorts was not tested");
}

/// The backend that gave a built-in server's answer (`pod=... image=echo:v2` -> `v2`).
fn answered_by(answer: &str) -> String {
    answer.rsplit_once("image=echo:").map_or(answer, |(_, b)| b).to_string()
}

/// The cohort cookie an answer sets (`kanary-route=v2`), without its attributes.
fn sticky_cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("kanary-route="))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}
