//! Progressive delivery under people's control and through controller failures, end to end on the workload
//! simulator with two replicas of the real binary electing a leader: a release whose promotion is left to the
//! user (GitOps: the controller never writes the target), held at a pause step until resumed, held by
//! `spec.paused`, promoted by request; its leader killed in the middle of a timed pause and the standby
//! resuming at the same step with the same timer; the next leader killed while the release waits for the
//! user's promotion and a freshly started replica finishing it. Clients see no failure through all of it.

use e2e_support as support;

use support::release::*;

use canary_controller::api::canary::{Canary, Phase, Verdict};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;
use std::time::Duration;
use support::Cluster;
use support::simulator::can_simulate;

const LEASE_SECONDS: u64 = 3;
const TIMED_PAUSE: i64 = 30;

async fn reconciles(replica: &support::Process) -> f64 {
    replica.metric("canary_controller_reconciles_total{controller=\"canary\"}").await.unwrap_or(0.0)
}

fn target_image(target: &Deployment) -> Option<String> {
    target.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_obeys_people_and_resumes_where_it_was_after_its_controllers_die() {
    if !can_simulate() {
        return;
    }
    let cluster = Cluster::start_for_pods().await;
    cluster.install_crds().await;
    let sim = cluster.start_simulator(242, 40);
    let (mut a, mut b) = cluster.leader_and_standby(LEASE_SECONDS).await;
    create_app(&cluster, 2).await;
    cluster.wait_rolled_out("app", "app", 60).await;
    let canaries: Api<Canary> = cluster.api();
    let deployments: Api<Deployment> = cluster.api();
    // no `promotion`: the user (or GitOps) updates the target
    let front = create_canary(
        &cluster,
        json!({"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 30}, {"pause": {"duration": "30s"}},
                {"setWeight": 60}, {"analysis": {}}, {"pause": {}}],
            "analysis": {"interval": "4s", "minSamples": 5, "metrics": [{"metric": "errorRate", "max": 0.05}]}}),
    )
    .await;

    let (tally, ()) = under_load(front, async {
        // a pause without duration holds until resumed
        let held = wait_release(&cluster, &a, "held at step 2", 120, |r| r.phase == Phase::Paused && r.step == 1).await;
        assert_eq!(held.weight, 10, "{held:#?}");
        // spec.paused (declarative, GitOps) holds the release where it is, even past a resume request
        kubectl_ok(&cluster, &["patch", "canary", CANARY, "--type", "merge", "-p", r#"{"spec":{"paused":true}}"#])
            .await;
        request(&cluster, "resume").await;
        let spec_held = wait_release(&cluster, &a, "held by spec.paused at step 3", 30, |r| {
            r.phase == Phase::Paused && r.step == 2 && r.message.starts_with("held by spec.paused")
        })
        .await;
        assert_eq!(spec_held.weight, 10, "held before its weight moved: {spec_held:#?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let still = release(&canaries).await.unwrap();
        assert_eq!((still.phase, still.step, still.weight), (Phase::Paused, 2, 10), "{still:#?}");
        kubectl_ok(&cluster, &["patch", "canary", CANARY, "--type", "merge", "-p", r#"{"spec":{"paused":false}}"#])
            .await;

        // the leader killed in the middle of a timed pause: the standby resumes it with the same timer
        let timed =
            wait_release(&cluster, &a, "in its timed pause", 60, |r| r.phase == Phase::Progressing && r.step == 3)
                .await;
        assert_eq!(timed.weight, 30);
        let started = timed.step_started_at.clone().expect("a step start").0;
        a.child.start_kill().unwrap();
        b.wait_for_log("became the leader").await;
        support::eventually(30, "the new leader reconciling", || async { reconciles(&b).await >= 1.0 }).await;
        let resumed = release(&canaries).await.unwrap();
        if resumed.step == 3 {
            assert_eq!(
                resumed.step_started_at.as_ref().map(|t| t.0),
                Some(started),
                "the timer restarted: {resumed:#?}"
            );
        }
        let after_pause = wait_release(&cluster, &b, "past the timed pause", 120, |r| r.step > 3).await;
        let seen_at = k8s_openapi::jiff::Timestamp::now();
        // second-granular timestamps: the pause may look up to a second short, never more
        let waited = seen_at.as_second() - started.as_second();
        assert!(waited >= TIMED_PAUSE - 1, "the pause ended {waited} s after it started: {after_pause:#?}");

        // the analysis at 60 % passes, then the last pause holds until promoted
        let last =
            wait_release(&cluster, &b, "held at the last step", 90, |r| r.phase == Phase::Paused && r.step == 6).await;
        let verdicts: Vec<(i32, Verdict)> = last.evidence.iter().map(|e| (e.weight, e.verdict)).collect();
        assert_eq!(verdicts, [(60, Verdict::Passed)], "{last:#?}");
        request(&cluster, "promote").await;
        let promoting = wait_phase(&cluster, &b, Phase::Promoting, 30).await;
        assert!(promoting.message.contains("update it"), "waits for the user: {promoting:#?}");

        // the next leader killed while the release waits for the user; a new replica takes over
        b.child.start_kill().unwrap();
        let mut c = cluster.spawn_replica("c", LEASE_SECONDS);
        c.wait_for_log("became the leader").await;
        support::eventually(30, "the new replica reconciling", || async { reconciles(&c).await >= 1.0 }).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let waiting = release(&canaries).await.unwrap();
        assert_eq!(waiting.phase, Phase::Promoting, "{waiting:#?}");
        let target = deployments.get("app").await.unwrap();
        assert_eq!(target_image(&target).as_deref(), Some("echo:v1"), "the controller left the target alone");

        // the user promotes (as GitOps would: the target's image), and the release finishes
        kubectl_ok(&cluster, &["set", "image", "deployment/app", "echo=echo:v2"]).await;
        let done = wait_phase(&cluster, &c, Phase::Succeeded, 120).await;
        assert_eq!(done.weight, 0, "{done:#?}");
        support::eventually(30, "the canary scaled to 0", || async { canary_replicas(&deployments).await == Some(0) })
            .await;
        let target = deployments.get("app").await.unwrap();
        let managers: Vec<String> =
            target.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
        assert!(!managers.iter().any(|m| m == canary_controller::names::PROMOTION_FIELD_MANAGER));
        cluster.wait_rolled_out("app", "app", 60).await;
    })
    .await;
    assert_eq!(tally.failures, 0, "failed connections through the release and two controller deaths: {tally:?}");
    assert!(tally.answers.keys().any(|a| from_canary(a)), "the canary took connections: {tally:?}");
    sim.stop().await;
    cluster.cleanup().await;
}
