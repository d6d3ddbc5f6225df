//! A release behind a webhook gate and judged by PromQL, end to end: its first step calls an HTTP gate
//! (`onFailure: Retry`) that says no (the release waits, no traffic moves), then yes; a real Prometheus
//! scrapes the application's own metrics (`sim_requests_total{outcome}` of the simulator's built-in server,
//! in every pod of `app`, canary included: the test writes their addresses to a file_sd file, as
//! Prometheus's Kubernetes discovery would find them), and the Canary's checks are queries of the canary
//! pods' error ratio, asked of the controller's `--prometheus-address`, bounded (`max`) and compared with
//! the stable pods' over the same window (`compare`: Mann-Whitney U on a sample a second). A bad canary is
//! rolled back on both; a good one passes both and is promoted. On the workload simulator, under raw TCP
//! load through the Canary's front Service.

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

/// For a comparison, sampled every second over the window: the canary's error ratio over the last 3 s at
/// each sample (a range as long as the window would look back twice as far, into a former canary's pods).
const CANARY_ERRORS_3S: &str = r#"(sum(rate(sim_requests_total{outcome="error",pod=~"{{ canary }}-.*"}[3s])) or vector(0)) / sum(rate(sim_requests_total{pod=~"{{ canary }}-.*"}[3s]))"#;
/// The same for the stable pods (`app-<hash>-<hash>`: the canary's are `app-canary-<hash>-<hash>`), which
/// never failed: their `error` series does not exist, hence `or vector(0)`.
const STABLE_ERRORS_3S: &str = r#"(sum(rate(sim_requests_total{outcome="error",pod=~"{{ target }}-[a-z0-9]+-[a-z0-9]+"}[3s])) or vector(0)) / sum(rate(sim_requests_total{pod=~"{{ target }}-[a-z0-9]+-[a-z0-9]+"}[3s]))"#;

/// Keeps `file` listing the running pods of `app` (their metrics port, labelled with the pod's name) until
/// `stop`.
async fn discover_pods(pods: Api<Pod>, file: std::path::PathBuf, stop: Arc<AtomicBool>) {
    let mut written = String::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(list) = pods.list(&ListParams::default().labels("app=app")).await {
            let targets: Vec<serde_json::Value> = list
                .items
                .iter()
                .filter_map(|p| {
                    let ip = p.status.as_ref()?.pod_ip.clone()?;
                    Some(json!({"targets": [format!("{ip}:8080")], "labels": {"pod": p.metadata.name.clone()?}}))
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

/// An HTTP gate on loopback: `POST /gate` answers 200 when `open`, else 503, and keeps the bodies it got.
async fn gate(open: Arc<AtomicBool>, bodies: Arc<Mutex<Vec<serde_json::Value>>>) -> String {
    let app = axum::Router::new().route(
        "/gate",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| async move {
            bodies.lock().unwrap().push(body);
            if open.load(Ordering::Relaxed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_behind_a_webhook_gate_judged_by_promql_rolls_back_a_bad_canary_and_promotes_a_good_one() {
    if !can_simulate() {
        return;
    }
    let cluster = support::Cluster::start().await;
    cluster.install_crds().await;
    let targets = cluster.dir.path().join("pods.json");
    std::fs::write(&targets, "[]").unwrap();
    let scrape =
        format!("[{{job_name: app, file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]}}]", targets.display());
    let Some(prometheus) = Prometheus::start(cluster.dir.path(), &scrape).await else { return };
    let mut controller = cluster.spawn_controller_with("controller", &["--prometheus-address", &prometheus.address]);
    controller.wait_for_log("controllers running").await;
    let sim = cluster.start_simulator(251, 40);
    let stop = Arc::new(AtomicBool::new(false));
    let discovery = tokio::spawn(discover_pods(cluster.api(), targets, stop.clone()));
    create_app(&cluster, 2).await;
    cluster.wait_rolled_out("app", "app", 60).await;
    let canaries: Api<Canary> = cluster.api();
    let (open, bodies) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(vec![])));
    let gate_url = gate(open.clone(), bodies.clone()).await;
    let front = create_canary(
        &cluster,
        json!({"targetContainers": [{"name": "echo", "image": BAD_IMAGE}],
            "steps": [{"webhook": {"url": gate_url, "onFailure": "Retry"}}, {"setWeight": 50}, {"analysis": {}}],
            "analysis": {"interval": "8s", "minSamples": 10, "metrics": [
                {"prometheus": {"query": ERROR_RATIO}, "max": 0.05},
                {"prometheus": {"query": CANARY_ERRORS_3S,
                    "compare": {"baselineQuery": STABLE_ERRORS_3S, "tolerance": 0.05}}}]},
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

    // a good canary: the query gives 0, the release passes and is promoted
    let patch = json!({"spec": {"targetContainers": [{"name": "echo", "image": "echo:v2"}]}});
    canaries.patch(CANARY, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let (tally, done) = under_load(front, wait_phase(&cluster, &controller, Phase::Succeeded, 180)).await;
    let passed = done.evidence.last().unwrap_or_else(|| panic!("no evidence: {done:#?}"));
    assert_eq!((passed.verdict, passed.metrics[0].value), (Verdict::Passed, 0.0), "{done:#?}");
    let compared = passed.metrics[1].comparison.clone().unwrap_or_else(|| panic!("{:#?}", passed.metrics[1]));
    assert_eq!(compared.judgement, "Pass", "{compared:?}");
    assert_eq!(tally.failures, 0, "{tally:?}");
    stop.store(true, Ordering::Relaxed);
    discovery.await.unwrap();
    sim.stop().await;
    cluster.cleanup().await;
}
