//! Progressive delivery end to end, on the workload simulator: a Canary with `traffic` puts the controller's
//! proxy (real HAProxy and proxy agents) in front of the user's Service, shifts raw TCP connections step by
//! step to the canary's pods, judges each window by the proxy's own counters, and promotes a good canary
//! (the controller updates the target), rolls back a bad one (20 % of its connections reset), pauses when
//! there is no traffic, and obeys requests made with real kubectl. Its own test binary, so that its load does
//! not share the machine with the other end-to-end tests.

use e2e_support as support;

use support::release::*;

use canary_controller::api::canary::{Canary, Phase, Verdict};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;
use std::time::Duration;
use support::kanary::env_with_simulator;
use support::simulator::can_simulate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_promotes_a_good_canary_rolls_back_a_bad_one_and_pauses_without_traffic() {
    if !can_simulate() {
        return;
    }
    let (e, sim) = env_with_simulator(238, 40).await;
    create_app(&e.cluster, 2).await;
    e.cluster.wait_rolled_out("app", "app", 60).await;
    let canaries: Api<Canary> = e.cluster.api();
    let deployments: Api<Deployment> = e.cluster.api();
    let front = create_canary(
        &e.cluster,
        json!({"steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}}],
            "analysis": {"interval": "5s", "minSamples": 10, "metrics": [
                {"metric": "errorRate", "max": 0.05}, {"metric": "errorRate", "maxOverStable": 0.05}]},
            "promotion": {"updateTarget": true}}),
    )
    .await;

    // a good canary: every step passes, the controller updates the target, then all traffic goes to it
    let (tally, done) = under_load(front, wait_phase(&e.cluster, &e.controller, Phase::Succeeded, 180)).await;
    assert_eq!(tally.failures, 0, "failed connections during a good release: {tally:?}");
    let canary_answers: usize = tally.answers.iter().filter(|(a, _)| from_canary(a)).map(|(_, n)| n).sum();
    assert!(canary_answers > 0, "the canary took no connection: {tally:?}");
    let verdicts: Vec<(i32, Verdict)> = done.evidence.iter().map(|e| (e.weight, e.verdict)).collect();
    assert_eq!(verdicts, [(20, Verdict::Passed), (50, Verdict::Passed)], "{done:#?}");
    assert!(done.evidence.iter().all(|e| e.canary_sessions >= 10), "{done:#?}");
    let target = deployments.get("app").await.unwrap();
    let image = target.spec.unwrap().template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("echo:v2"), "the target was promoted");
    let managers: Vec<String> =
        target.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.iter().any(|m| m == "canary-controller-promotion"), "{managers:?}");
    assert_eq!((done.weight, canary_replicas(&deployments).await), (0, Some(0)));
    e.cluster.wait_rolled_out("app", "app", 60).await;
    assert_the_story_is_told_step_by_step(&e.cluster).await;

    // a bad canary (20 % of its connections reset): rolled back at its first window, stable traffic unharmed
    set_image(&canaries, BAD_IMAGE).await;
    let (tally, rolled_back) = under_load(front, wait_phase(&e.cluster, &e.controller, Phase::RolledBack, 120)).await;
    let Some(judged) = rolled_back.evidence.last() else {
        let log = e.controller.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!("rolled back with no evidence: {rolled_back:#?}\n{tail:#?}");
    };
    assert_eq!((judged.weight, judged.verdict), (20, Verdict::Failed), "{rolled_back:#?}");
    assert_eq!(rolled_back.evidence.iter().filter(|e| e.verdict == Verdict::Failed).count(), 1);
    let error_rate = &judged.metrics[1];
    assert!(error_rate.value > 0.05, "{error_rate:?}");
    assert_eq!(error_rate.stable_value, Some(0.0), "the stable route saw no error: {error_rate:?}");
    let failed_share = tally.failures as f64 / tally.total() as f64;
    assert!(failed_share < 0.2 * 0.2 * 2.0, "only the canary's share failed: {tally:?}");
    // traffic leaves the canary: once every proxy pod serves weight 0 (how fast is a benchmark figure), no
    // connection reaches it and none fails
    support::eventually(30, "every proxy pod serving weight 0 for the canary", || async {
        served_weight(&e.cluster).await == Some(0)
    })
    .await;
    let (after, ()) = under_load(front, tokio::time::sleep(Duration::from_secs(3))).await;
    assert_eq!(after.failures, 0, "{after:?}");
    assert!(after.answers.keys().all(|a| !a.contains(BAD_IMAGE)), "the canary still takes connections: {after:?}");
    assert!(after.total() > 20, "{after:?}");
    assert_eq!(rolled_back.weight, 0);
    support::eventually(30, "the bad canary scaled to 0", || async { canary_replicas(&deployments).await == Some(0) })
        .await;
    let target_image =
        deployments.get("app").await.unwrap().spec.unwrap().template.spec.unwrap().containers[0].image.clone();
    assert_eq!(target_image.as_deref(), Some("echo:v2"), "a rolled back release leaves the target alone");

    // no traffic: the window is inconclusive, the release pauses and is never promoted
    set_image(&canaries, "echo:v3").await;
    let paused = wait_phase(&e.cluster, &e.controller, Phase::Paused, 120).await;
    assert_eq!(paused.evidence.last().map(|e| e.verdict), Some(Verdict::Inconclusive), "{paused:#?}");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let still = release(&canaries).await.unwrap();
    assert_eq!((still.phase, still.step), (Phase::Paused, paused.step), "{still:#?}");

    // requests through kubectl: abort, then retry
    request(&e.cluster, "abort").await;
    let aborted = wait_phase(&e.cluster, &e.controller, Phase::Aborted, 30).await;
    assert_eq!(aborted.weight, 0);
    request(&e.cluster, "retry").await;
    support::eventually(30, "the release retried", || async {
        release(&canaries).await.is_some_and(|r| matches!(r.phase, Phase::Progressing | Phase::Paused) && r.step <= 1)
    })
    .await;
    let text =
        e.cluster.kubectl(&["get", "canary", CANARY, "-o", "wide", "-n", &e.cluster.namespace], None).await.unwrap();
    let table = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(table.contains("PHASE") && table.contains("WEIGHT") && table.contains("STEP"), "{table}");
    sim.stop().await;
    e.cluster.cleanup().await;
}

/// The release's events, as `kubectl describe canary` shows them: one per step, each with its own message, in
/// the order of the steps (events of one reason merged into one would keep only the first step's message).
async fn assert_the_story_is_told_step_by_step(cluster: &support::Cluster) {
    use k8s_openapi::api::core::v1::Event;
    let events: Api<Event> = cluster.api();
    let selector = format!("involvedObject.kind=Canary,involvedObject.name={CANARY}");
    let story = |events: Vec<Event>| {
        let mut told: Vec<(String, String, i32)> = events
            .into_iter()
            .filter(|e| e.reason.as_deref().is_some_and(|r| ["WeightSet", "AnalysisPassed", "Promoting"].contains(&r)))
            .map(|e| {
                let at = e.event_time.map(|t| t.0).or(e.first_timestamp.map(|t| t.0)).unwrap_or_default();
                (at, e.reason.unwrap_or_default(), e.message.unwrap_or_default(), e.count.unwrap_or(1))
            })
            .map(|(at, reason, message, count)| (at.to_string(), format!("{reason}: {message}"), count))
            .collect();
        told.sort();
        told.into_iter().map(|(_, said, count)| (said, count)).collect::<Vec<_>>()
    };
    // events are recorded best effort and listed as the API server has them: wait for the last one
    let mut told = vec![];
    for _ in 0..30 {
        let listed = events.list(&kube::api::ListParams::default().fields(&selector)).await.unwrap();
        told = story(listed.items);
        if told.iter().any(|(said, _)| said.starts_with("Promoting")) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let said: Vec<&str> = told.iter().map(|(said, _)| said.as_str()).collect();
    assert_eq!(said.len(), 5, "{told:#?}");
    assert_eq!(said[0], "WeightSet: canary weight 20%", "{told:#?}");
    assert!(said[1].starts_with("AnalysisPassed: step 2 passed"), "{told:#?}");
    assert_eq!(said[2], "WeightSet: canary weight 50%", "{told:#?}");
    assert!(said[3].starts_with("AnalysisPassed: step 4 passed"), "{told:#?}");
    assert_eq!(said[4], "Promoting: every step passed: promoting", "{told:#?}");
    assert!(told.iter().all(|(_, count)| *count == 1), "each step's event once: {told:#?}");
}
