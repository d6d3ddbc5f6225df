//! A release behind a webhook gate and judged by PromQL, end to end: its first step calls an HTTP gate
//! (`onFailure: Retry`) that says no (the release waits, no traffic moves), then yes; a real Prometheus
//! scrapes the application's own metrics (`sim_requests_total{outcome}` of the simulator's built-in server,
//! in every pod of `app`, canary included, and the proxy pods' HAProxy exporter: the test writes their
//! addresses to a file_sd file, as Prometheus's Kubernetes discovery would find them), and the Canary's checks
//! are queries of the canary route's connections (HAProxy's) and of the canary pods' error ratio, asked of the controller's `--prometheus-address`, bounded (`max`) and compared over the
//! same window (`compare`: Mann-Whitney U on a sample a second) with the stable pods' for the bad canary and
//! with a baseline's (`traffic.baseline`: the target's pods at the canary's size and weight) for the good
//! one. A bad canary is rolled back on both checks; a good one passes both and is promoted, its baseline
//! taking its share of connections and then scaled to 0. On the workload simulator, under raw TCP load
//! through the Canary's front Service. In between, a Prometheus that does not answer within the check's
//! timeout pauses a release (inconclusive), and an unreachable one with `onNoData: Fail` rolls it back.

use e2e_support as support;

use support::release::*;

use axum::http::StatusCode;
use canary_controller::api::canary::{Canary, Phase, Verdict};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::prometheus::Prometheus;
use support::simulator::can_simulate;

/// The canary pods' error ratio over the window, from the application's own counters.
const ERROR_RATIO: &str = r#"sum(rate(sim_requests_total{outcome="error",pod=~"{{ canary }}-.*"}[{{ interval }}])) / sum(rate(sim_requests_total{pod=~"{{ canary }}-.*"}[{{ interval }}]))"#;

/// [`ERROR_RATIO`] for a canary that may have no error at all: the simulator's server exports an `error`
/// series only from its first error, so without `or vector(0)` a good canary's ratio is no sample.
const ERROR_RATIO_OR_0: &str = r#"(sum(rate(sim_requests_total{outcome="error",pod=~"{{ canary }}-.*"}[{{ interval }}])) or vector(0)) / sum(rate(sim_requests_total{pod=~"{{ canary }}-.*"}[{{ interval }}]))"#;

/// For a comparison, sampled every second over the window: the canary's error ratio over the last 3 s at
/// each sample (a range as long as the window would look back twice as far, into a former canary's pods).
const CANARY_ERRORS_3S: &str = r#"(sum(rate(sim_requests_total{outcome="error",pod=~"{{ canary }}-.*"}[3s])) or vector(0)) / sum(rate(sim_requests_total{pod=~"{{ canary }}-.*"}[3s]))"#;
/// The same for the stable pods (`app-<hash>-<hash>`: the canary's are `app-canary-<hash>-<hash>`), which
/// never failed: their `error` series does not exist, hence `or vector(0)`.
const STABLE_ERRORS_3S: &str = r#"(sum(rate(sim_requests_total{outcome="error",pod=~"{{ target }}-[a-z0-9]+-[a-z0-9]+"}[3s])) or vector(0)) / sum(rate(sim_requests_total{pod=~"{{ target }}-[a-z0-9]+-[a-z0-9]+"}[3s]))"#;

/// The same for the baseline's pods (`app-baseline-<hash>-<hash>`).
const BASELINE_ERRORS_3S: &str = r#"(sum(rate(sim_requests_total{outcome="error",pod=~"{{ baseline }}-.*"}[3s])) or vector(0)) / sum(rate(sim_requests_total{pod=~"{{ baseline }}-.*"}[3s]))"#;

/// The canary route's connections over the window, from the proxy's own HAProxy exporter.
const HAPROXY_CANARY_SESSIONS: &str =
    r#"sum(increase(haproxy_backend_sessions_total{proxy="be_web-canary"}[{{ interval }}]))"#;

/// Keeps `file` listing the running pods of `app` (their metrics port) and of the Canary's proxy (HAProxy's
/// Prometheus exporter, port 8404), labelled with the pod's name, until `stop`.
async fn discover_pods(pods: Api<Pod>, file: std::path::PathBuf, stop: Arc<AtomicBool>) {
    let mut written = String::new();
    while !stop.load(Ordering::Relaxed) {
        let (apps, proxies) =
            (ListParams::default().labels("app=app"), ListParams::default().labels("proxy=web-haproxy"));
        if let (Ok(apps), Ok(proxies)) = (pods.list(&apps).await, pods.list(&proxies).await) {
            let listed = apps.items.iter().map(|p| (p, 8080)).chain(proxies.items.iter().map(|p| (p, 8404)));
            let targets: Vec<serde_json::Value> = listed
                .filter_map(|(p, port)| {
                    let ip = p.status.as_ref()?.pod_ip.clone()?;
                    Some(json!({"targets": [format!("{ip}:{port}")], "labels": {"pod": p.metadata.name.clone()?}}))
                })
                .collect();
            let text = serde_json::to_string(&targets).unwrap();
            if text != written {
                let temporary = file.with_extension("tmp");
                std::fs::write(&temporary, &text).unwrap();
                std::fs::rename(&temporary, &file).unwrap();
                written = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prometheus behind a bearer token, as a managed Prometheus is: queries carrying `Authorization: Bearer
/// <token>` are passed to `upstream`, others answered 401; `seen` counts (passed, refused).
async fn behind_token(
    listener: tokio::net::TcpListener,
    upstream: String,
    token: &'static str,
    seen: Arc<Mutex<(usize, usize)>>,
) -> String {
    allow_loopback();
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/api/v1/{api}",
        axum::routing::post(
            move |axum::extract::Path(api): axum::extract::Path<String>,
                  headers: HeaderMap,
                  body: axum::body::Bytes| {
                let (upstream, seen) = (upstream.clone(), seen.clone());
                async move {
                    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
                        == Some(format!("Bearer {token}").as_str());
                    if !authorized {
                        seen.lock().unwrap().1 += 1;
                        return (StatusCode::UNAUTHORIZED, axum::body::Bytes::from_static(b"unauthorized"));
                    }
                    seen.lock().unwrap().0 += 1;
                    let url = format!("{upstream}/api/v1/{api}");
                    let form = "application/x-www-form-urlencoded";
                    let forwarded = canary_controller::canary::evidence::http::post(
                        &url,
                        form,
                        body.to_vec(),
                        None,
                        Duration::from_secs(10),
                        1 << 22,
                    )
                    .await;
                    match forwarded {
                        Ok((status, body)) => (StatusCode::from_u16(status.as_u16()).unwrap(), body),
                        Err(e) => (StatusCode::BAD_GATEWAY, axum::body::Bytes::from(e.to_string())),
                    }
                }
            },
        ),
    );
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// An HTTP gate on loopback: `POST /gate` answers 200 when `open`, else 503, and keeps the bodies it got.
async fn gate(
    listener: tokio::net::TcpListener,
    open: Arc<AtomicBool>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
) -> String {
    let app = axum::Router::new().route(
        "/gate",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| async move {
            bodies.lock().unwrap().push(body);
            if open.load(Ordering::Relaxed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
        }),
    );
    let url = format!("http://{}/gate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_behind_a_webhook_gate_judged_by_promql_rolls_back_a_bad_canary_and_promotes_a_good_one() {
    if !can_simulate() {
        return;
    }
    let cluster = support::Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(251, 40);
    let node = cluster.node_namespace();
    let targets = cluster.dir.path().join("pods.json");
    std::fs::write(&targets, "[]").unwrap();
    let scrape =
        format!("[{{job_name: app, file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]}}]", targets.display());
    let Some(prometheus) = Prometheus::start(cluster.dir.path(), &scrape, node.as_deref()).await else { return };
    let mut controller = cluster.spawn_controller_with(
        "controller",
        // the Prometheus that wants a token is a plain-http proxy on loopback
        &["--prometheus-address", &prometheus.address, "--allow-insecure-token"],
    );
    controller.wait_for_log("controllers running").await;
    let stop = Arc::new(AtomicBool::new(false));
    let discovery = tokio::spawn(discover_pods(cluster.api(), targets, stop.clone()));
    create_app(&cluster, 2).await;
    cluster.wait_rolled_out("app", "app", 60).await;
    let canaries: Api<Canary> = cluster.api();
    let (open, bodies) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(vec![])));
    let gate_url = gate(cluster.listener_for_controller(), open.clone(), bodies.clone()).await;
    let front = create_canary(
        &cluster,
        json!({"targetContainers": [{"name": "echo", "image": BAD_IMAGE}],
            "steps": [{"webhook": {"url": gate_url, "onFailure": "Retry"}}, {"setWeight": 40}, {"analysis": {}}],
            "analysis": {"interval": "8s", "minSamples": 10, "metrics": [
                {"prometheus": {"query": ERROR_RATIO}, "max": 0.05},
                {"prometheus": {"query": CANARY_ERRORS_3S,
                    "compare": {"baselineQuery": STABLE_ERRORS_3S, "tolerance": 0.05}}},
                {"prometheus": {"query": HAPROXY_CANARY_SESSIONS}, "min": 1}]},
            "promotion": {"updateTarget": true}}),
    )
    .await;

    // the gate says no: the release waits at its first step, no traffic moves; then it says yes
    let held =
        wait_release(&cluster, &controller, "held by the gate", 60, |r| r.message.contains("did not pass")).await;
    assert_eq!((held.step, held.weight, held.phase), (0, 0, Phase::Progressing), "{held:#?}");
    assert!(held.message.contains("HTTP 503"), "{}", held.message);
    let asked = bodies.lock().unwrap().first().cloned().expect("the gate was called");
    assert_eq!((&asked["canary"], &asked["step"], &asked["weight"]), (&json!(CANARY), &json!(1), &json!(0)));
    open.store(true, Ordering::Relaxed);

    // the bad canary: its own metrics say 20 % of its answers fail
    let (_, rolled_back) = under_load(front, wait_phase(&cluster, &controller, Phase::RolledBack, 120)).await;
    let judged = rolled_back.evidence.last().unwrap_or_else(|| panic!("no evidence: {rolled_back:#?}"));
    let check = &judged.metrics[0];
    assert_eq!((judged.verdict, check.verdict), (Verdict::Failed, Verdict::Failed), "{rolled_back:#?}");
    assert!(check.value > 0.05 && check.no_data.is_none(), "{check:?}");
    let query = check.query.clone().unwrap_or_default();
    assert!(query.contains(r#"pod=~"app-canary-.*""#) && query.contains("[8s]"), "variables replaced: {query}");
    // canary versus baseline (the stable pods) over the same window: significantly worse, beyond tolerance
    let compared = judged.metrics[1].comparison.clone().unwrap_or_else(|| panic!("{:#?}", judged.metrics[1]));
    assert_eq!((judged.metrics[1].verdict, compared.judgement.as_str()), (Verdict::Failed, "Fail"), "{compared:?}");
    assert!(compared.canary_samples >= 3 && compared.baseline_samples >= 3 && compared.p_value < 0.05, "{compared:?}");
    assert!(compared.baseline_query.contains(r#"pod=~"app-[a-z0-9]+-[a-z0-9]+""#), "{compared:?}");
    // the proxy's own exporter, scraped too: the canary route took connections in the window
    let proxied = &judged.metrics[2];
    assert!(proxied.verdict == Verdict::Passed && proxied.value >= 1.0, "HAProxy's exporter: {proxied:?}");

    // a Prometheus that does not answer within the check's timeout: no data, the window is inconclusive and the
    // release pauses (never promotes); with `onNoData: Fail`, an unreachable one rolls it back
    let silent = cluster.listener_for_controller();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut accepted = vec![];
        while let Ok((connection, _)) = silent.accept().await {
            accepted.push(connection);
        }
    });
    let patch = json!({"spec": {"targetContainers": [{"name": "echo", "image": "echo:v3"}],
        "analysis": {"interval": "8s", "minSamples": 10, "metrics": [
            {"prometheus": {"query": ERROR_RATIO, "address": silent_url, "timeout": "1s"}, "max": 0.05}]}}});
    canaries.patch(CANARY, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let (_, paused) = under_load(front, wait_phase(&cluster, &controller, Phase::Paused, 120)).await;
    let judged = paused.evidence.last().unwrap_or_else(|| panic!("no evidence: {paused:#?}"));
    let why = judged.metrics[0].no_data.clone().unwrap_or_default();
    assert_eq!((judged.verdict, judged.metrics[0].verdict), (Verdict::Inconclusive, Verdict::Inconclusive));
    assert!(why.contains("did not answer within 1s") && why.contains(&silent_url), "{judged:#?}");
    held.abort();
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let patch = json!({"spec": {"analysis": {"interval": "8s", "minSamples": 10, "metrics": [
        {"prometheus": {"query": ERROR_RATIO, "address": unreachable}, "max": 0.05, "onNoData": "Fail"}]}}});
    canaries.patch(CANARY, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    request(&cluster, "resume").await;
    let failed = |r: &canary_controller::api::canary::ReleaseStatus| {
        r.phase == Phase::RolledBack && r.revision.contains("echo:v3")
    };
    let (_, rolled_back) =
        under_load(front, wait_release(&cluster, &controller, "rolled back for no data", 120, failed)).await;
    let judged = rolled_back.evidence.last().unwrap_or_else(|| panic!("no evidence: {rolled_back:#?}"));
    let why = judged.metrics[0].no_data.clone().unwrap_or_default();
    assert_eq!((judged.verdict, judged.metrics[0].verdict), (Verdict::Failed, Verdict::Failed), "{judged:#?}");
    assert!(why.contains("cannot be reached") && why.contains(&unreachable), "{judged:#?}");

    // a good canary, compared with a baseline, its checks asking a Prometheus that wants a bearer token (from
    // a Secret): the query gives 0, the release passes and is promoted
    let seen = Arc::new(Mutex::new((0, 0)));
    let guarded =
        behind_token(cluster.listener_for_controller(), prometheus.from_host.clone(), "s3cret", seen.clone()).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = cluster.api();
    let secret = json!({"metadata": {"name": "prometheus-token"}, "stringData": {"token": "s3cret\n"}});
    secrets.create(&Default::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    // the controller is granted no Secrets: it gets this one as the README says
    let role = "canary-controller-prometheus-token";
    kubectl_ok(
        &cluster,
        &["create", "role", role, "--verb=get", "--resource=secrets", "--resource-name=prometheus-token"],
    )
    .await;
    let account = format!("--serviceaccount={}:controller-manager", cluster.namespace);
    kubectl_ok(&cluster, &["create", "rolebinding", role, &format!("--role={role}"), &account]).await;
    let token = json!({"name": "prometheus-token", "key": "token"});
    let patch = json!({"spec": {"targetContainers": [{"name": "echo", "image": "echo:v2"}],
        "traffic": {"baseline": true},
        "analysis": {"interval": "8s", "minSamples": 10, "metrics": [
            {"prometheus": {"query": ERROR_RATIO_OR_0, "address": guarded, "tokenSecretRef": token, "timeout": "5s"},
                "max": 0.05},
            {"prometheus": {"query": CANARY_ERRORS_3S, "address": guarded, "tokenSecretRef": token,
                "compare": {"baselineQuery": BASELINE_ERRORS_3S, "tolerance": 0.05}}}]}}});
    canaries.patch(CANARY, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let baseline_runs = async {
        let judged = wait_release(&cluster, &controller, "judging with a baseline", 120, |r| r.weight == 40).await;
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = cluster.api();
        let baseline = deployments.get("app-baseline").await.expect("the baseline Deployment");
        let spec = baseline.spec.clone().unwrap();
        let image = spec.template.spec.as_ref().unwrap().containers[0].image.clone();
        assert_eq!(
            (spec.replicas, image.as_deref()),
            (Some(1), Some("echo:v1")),
            "the target's pods, the canary's size"
        );
        // the weight is recorded in the status before the Kanary takes it (a decision is durable before it
        // acts): the Kanary follows
        let kanaries = cluster.kanaries("kanary.k8s.io", "v1");
        let weights = || async {
            let routes = kanaries.get(CANARY).await.unwrap().data["spec"]["routes"].clone();
            routes.as_array().unwrap().iter().map(|r| r["weight"].clone()).collect::<Vec<_>>()
        };
        let taken = support::within(30, || async { weights().await == [json!(20), json!(40), json!(40)] }).await;
        assert!(taken, "stable, canary, baseline: {:?}", weights().await);
        // connections split so once every proxy pod serves it (how soon after is a benchmark figure)
        let served = support::within(30, || async { served_weight(&cluster).await == Some(40) }).await;
        assert!(served, "every proxy pod serving 40 % for the canary and the baseline");
        tokio::time::sleep(Duration::from_secs(2)).await;
        judged
    };
    let (tally, _) = under_load(front, baseline_runs).await;
    let from_baseline: usize =
        tally.answers.iter().filter(|(a, _)| a.contains("pod=app-baseline-")).map(|(_, n)| n).sum();
    assert!(from_baseline > 0, "the baseline takes connections: {tally:?}");
    let (tally, done) = under_load(front, wait_phase(&cluster, &controller, Phase::Succeeded, 180)).await;
    let passed = done.evidence.last().unwrap_or_else(|| panic!("no evidence: {done:#?}"));
    assert_eq!((passed.verdict, passed.metrics[0].value), (Verdict::Passed, 0.0), "{done:#?}");
    let compared = passed.metrics[1].comparison.clone().unwrap_or_else(|| panic!("{:#?}", passed.metrics[1]));
    assert_eq!(compared.judgement, "Pass", "{compared:?}");
    assert!(compared.baseline_query.contains(r#"pod=~"app-baseline-.*""#), "{compared:?}");
    let (passed_on, refused) = *seen.lock().unwrap();
    assert!(
        passed_on >= 3 && refused == 0,
        "every query carried the Secret's token: {passed_on} passed, {refused} refused"
    );
    assert_eq!(tally.failures, 0, "{tally:?}");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = cluster.api();
    support::eventually(60, "the baseline scaled to 0", || async {
        deployments.get("app-baseline").await.ok().and_then(|d| d.spec?.replicas) == Some(0)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    discovery.await.unwrap();
    sim.stop().await;
    cluster.cleanup().await;
}

/// This process calls Prometheus on loopback (the proxy above), which the egress policy refuses by default.
fn allow_loopback() {
    canary_controller::canary::evidence::egress::set(canary_controller::canary::evidence::egress::Policy {
        allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
        ..Default::default()
    });
}
