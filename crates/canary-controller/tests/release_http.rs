//! HTTP releases end to end, on the workload simulator: a Canary with `traffic.protocol: http` splits
//! requests (HTTP/1.1 keep-alive clients) and judges each window by the proxy agents' request metrics, with
//! no Prometheus, showing an open window's requests so far in its status: a healthy canary is promoted, one
//! answering 2 % 500s is rolled back by its success rate against stable, and one 30 ms slower is rolled back
//! by its p99 against stable. Its own test binary, so that its load does not share the machine with the
//! other end-to-end tests.

use e2e_support as support;

use canary_controller::api::canary::{Canary, Metric, Phase, ReleaseStatus, Verdict};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::http::under_http_load;
use support::kanary::env_with_simulator;
use support::release::*;
use support::simulator::can_simulate;

/// Waits for the release of `image` to be rolled back.
async fn rolled_back_release(e: &support::kanary::Env, image: &str) -> canary_controller::api::canary::ReleaseStatus {
    let what = format!("the release of {image} rolled back");
    wait_release(&e.cluster, &e.controller, &what, 180, |r| r.phase == Phase::RolledBack && r.revision.contains(image))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_releases_are_judged_by_request_success_rate_and_latency_against_stable() {
    if !can_simulate() {
        return;
    }
    let (e, _sim) = env_with_simulator(246, 40).await;
    let env = json!([{"name": "SIM_FAILING_IMAGES", "value": "echo:errors=0.02"},
        {"name": "SIM_SLOW_IMAGES", "value": "echo:slow=30"}]);
    create_app_with(&e.cluster, 2, env).await;
    e.cluster.wait_rolled_out("app", "app", 60).await;
    let canaries: Api<Canary> = e.cluster.api();
    let front = create_canary(
        &e.cluster,
        json!({"traffic": {"service": "app", "frontService": "app-front", "protocol": "http"},
            "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}}],
            "analysis": {"interval": "25s", "minSamples": 200, "metrics": [
                {"metric": "requestSuccessRate", "maxBelowStable": 0.5},
                {"metric": "requestDuration", "percentile": 99, "maxOverStable": 20},
                {"metric": "requestDuration", "compareToStable": {"tolerance": 0.5, "onMarginal": "Pass"}}]},
            "promotion": {"updateTarget": true}}),
    )
    .await;

    // a healthy canary: while a window is measured its requests so far are in the status (what `kubectl
    // canary get` shows as the current window); promoted, with the requests' success rate and p99 in the
    // evidence
    let watched = async {
        let so_far = |r: &ReleaseStatus| r.window.as_ref().and_then(|w| w.requests.clone());
        let what = "the open window's requests so far in the status";
        let open = wait_release(&e.cluster, &e.controller, what, 120, |r| {
            so_far(r).is_some_and(|q| q.canary.requests > 0 && q.stable.requests > 0)
        })
        .await;
        let done = wait_phase(&e.cluster, &e.controller, Phase::Succeeded, 240).await;
        (open, done)
    };
    let (load, (open, done)) = under_http_load(front, 4, watched).await;
    let window = open.window.as_ref().expect("an open window");
    let measured = window.measured_at.as_ref().expect("when it was read");
    assert!(measured.0 > window.started_at.0 && open.evidence.len() < 2, "{open:#?}");
    let so_far = window.requests.as_ref().unwrap();
    for route in [&so_far.canary, &so_far.stable] {
        assert!(route.rate > 0.0 && route.success_rate == Some(100.0), "{so_far:?}");
        assert!(route.p99_ms.is_some_and(|p99| p99 > 0.0), "{so_far:?}");
    }
    assert_eq!(load.tally.failures, 0, "failed requests during a good release: {:?}", load.tally);
    let verdicts: Vec<(i32, Verdict)> = done.evidence.iter().map(|e| (e.weight, e.verdict)).collect();
    assert_eq!(verdicts, [(20, Verdict::Passed), (50, Verdict::Passed)], "{done:#?}");
    for evidence in &done.evidence {
        let (success, p99) = (&evidence.metrics[0], &evidence.metrics[1]);
        assert_eq!(
            (success.metric, success.value, success.stable_value),
            (Some(Metric::RequestSuccessRate), 100.0, Some(100.0))
        );
        assert!(p99.value > 0.0 && p99.stable_value.is_some_and(|v| v > 0.0), "{p99:?}");
        // what `kubectl canary get` shows of the window: each route's rate, success rate and percentiles
        let requests = evidence.requests.as_ref().expect("the window's requests");
        assert!(requests.canary.requests >= 200 && requests.canary.rate > 0.0, "{requests:?}");
        assert_eq!((requests.canary.success_rate, requests.stable.success_rate), (Some(100.0), Some(100.0)));
        assert_eq!(requests.canary.p99_ms, Some(p99.value), "{requests:?}");
    }
    e.cluster.wait_rolled_out("app", "app", 60).await;
    // shorter windows for the bad canaries (each is judged by its first)
    let shorter = json!({"spec": {"analysis": {"interval": "5s"}}});
    canaries.patch(CANARY, &PatchParams::default(), &Patch::Merge(shorter)).await.unwrap();

    // 2 % of the canary's requests answer 500: its success rate falls below stable's, rolled back at once
    set_image(&canaries, "echo:errors").await;
    let (load, rolled_back) = under_http_load(front, 4, rolled_back_release(&e, "echo:errors")).await;
    let judged = rolled_back.evidence.last().unwrap_or_else(|| panic!("no evidence: {rolled_back:#?}"));
    assert_eq!((judged.weight, judged.verdict), (20, Verdict::Failed), "{rolled_back:#?}");
    let success = &judged.metrics[0];
    assert_eq!(success.verdict, Verdict::Failed, "{judged:#?}");
    assert!(success.value < 99.5 && success.stable_value == Some(100.0), "{success:?}");
    let failed_share = load.tally.failures as f64 / load.tally.total() as f64;
    assert!(failed_share < 0.02, "only the canary's share failed: {:?}", load.tally);
    // once every proxy pod serves weight 0, no request reaches the canary
    support::eventually(30, "every proxy pod serving weight 0", || async {
        served_weight(&e.cluster).await == Some(0)
    })
    .await;
    let client = support::http::Client::connect(front, support::http::Version::Http1, 2).await;
    let after = client.load(1, 1_000, &[]).await;
    assert_eq!(after.tally.failures, 0, "{:?}", after.tally);
    assert!(
        after.tally.answers.keys().all(|a| !from_canary(a)),
        "the canary answered after the rollback: {:?}",
        after.tally
    );

    // 30 ms slower: its p99 is over stable's by more than 20 ms, rolled back
    set_image(&canaries, "echo:slow").await;
    let (_, rolled_back) = under_http_load(front, 4, rolled_back_release(&e, "echo:slow")).await;
    let judged = rolled_back.evidence.last().unwrap_or_else(|| panic!("no evidence: {rolled_back:#?}"));
    assert_eq!((judged.weight, judged.verdict), (20, Verdict::Failed), "{rolled_back:#?}");
    let p99 = &judged.metrics[1];
    assert_eq!((p99.metric, p99.verdict), (Some(Metric::RequestDuration), Verdict::Failed), "{judged:#?}");
    assert!(p99.value >= 30.0 && p99.stable_value.is_some_and(|v| p99.value - v > 20.0), "{p99:?}");
    // and by Mann-Whitney on the window's request latencies against stable's
    let compared = &judged.metrics[2];
    assert_eq!(compared.verdict, Verdict::Failed, "{judged:#?}");
    let test = compared.comparison.as_ref().expect("the comparison");
    assert!(test.p_value < 0.05 && test.effect > 0.5 && test.canary_samples >= 200, "{test:?}");
    assert_eq!(judged.metrics[0].verdict, Verdict::Passed, "it answers every request well: {judged:#?}");
}

/// A Canary whose `traffic.protocol` changes while its release holds (a pause step) brings its proxy to the
/// new protocol at once (a reload): the Kanary is rewritten when anything of its spec differs, not only the
/// routes (found when the demo switched a Canary to HTTP and its clients' requests all stayed on stable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_protocol_during_a_release_reaches_the_proxy() {
    if !can_simulate() {
        return;
    }
    let (e, _sim) = env_with_simulator(248, 40).await;
    create_app(&e.cluster, 2).await;
    e.cluster.wait_rolled_out("app", "app", 60).await;
    let canaries: Api<Canary> = e.cluster.api();
    let front = create_canary(&e.cluster, json!({"steps": [{"setWeight": 20}, {"pause": {}}]})).await;
    wait_release(&e.cluster, &e.controller, "paused at weight 20", 120, |r| r.phase == Phase::Paused && r.weight == 20)
        .await;
    let http = json!({"spec": {"traffic": {"service": "app", "frontService": "app-front", "protocol": "http"}}});
    canaries.patch(CANARY, &PatchParams::default(), &Patch::Merge(http)).await.unwrap();
    e.wait_config(CANARY, "the proxy in HTTP mode", |c| c.contains("defaults\n    mode http")).await;
    e.cluster.wait_synced(&e.kanaries("kanary.k8s.io", "v1"), CANARY, 60).await;
    // two keep-alive connections: each request drawn on its own, so both versions answer on them
    let client = support::http::Client::connect(front, support::http::Version::Http1, 2).await;
    let load = client.load(1, 1_000, &[]).await;
    let canary = load.tally.answers.iter().filter(|(a, _)| from_canary(a)).map(|(_, n)| n).sum::<usize>();
    assert_eq!((load.tally.failures, load.reconnects), (0, 0), "{:?}", load.tally);
    assert!((100..=300).contains(&canary), "the canary's share of 1,000 requests at weight 20: {:?}", load.tally);
}
