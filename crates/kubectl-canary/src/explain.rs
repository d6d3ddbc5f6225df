//! `kubectl canary explain`: why a release is where it is, in plain sentences, from the Canary's status and
//! its recent Warning events, with the command that moves it on. Pure: no client in scope.

use canary_controller::api::canary::{Canary, Phase, RouteRequestSummary, Verdict, WindowRequests};
use canary_controller::canary::release::metric_name;
use kube::ResourceExt;

/// An event of the Canary, as much of it as the explanation uses.
pub struct Happened {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

pub fn explain(canary: &Canary, events: &[Happened]) -> Vec<String> {
    let name = canary.name_any();
    let target = &canary.spec.target_deployment_name;
    let status = canary.status.clone().unwrap_or_default();
    let mut said = vec![];
    for c in status.conditions.iter().filter(|c| c.type_ == "Ready" && c.status != "True") {
        if c.reason != "CanaryProgressing" {
            said.push(format!("Canary {name} cannot be served as it is: {}", c.message));
        }
    }
    let Some(release) = &status.release else {
        said.push(format!(
            "Canary {name} runs a copy of Deployment {target} with new images and has no spec.traffic, so no \
             release runs: the canary takes the share of the Service's connections its replicas get."
        ));
        return said;
    };
    let at = format!("step {}", release.step_description);
    let message = release.message.trim_end_matches('.');
    said.push(match release.phase {
        Phase::Progressing => format!("The release of {} is progressing at {at}: {message}.", release.revision),
        Phase::Paused if canary.spec.paused => format!(
            "The release of {} is held at {at} by spec.paused: `kubectl canary resume {name}` lets it go on.",
            release.revision
        ),
        Phase::Paused => format!(
            "The release of {} is paused at {at}: {message}. `kubectl canary resume {name}` goes on (measuring \
             again after an inconclusive window); `kubectl canary promote {name}` skips the remaining steps.",
            release.revision
        ),
        Phase::Promoting => format!("Every step of the release of {} passed: {message}.", release.revision),
        Phase::Succeeded => format!(
            "The release of {} succeeded: Deployment {target} runs the canary's images and takes all the \
             traffic; the canary is scaled to 0.",
            release.revision
        ),
        Phase::RolledBack => format!(
            "The release of {} was rolled back: {message}. No traffic goes to the canary and it is scaled to 0. \
             New images (`kubectl canary set image {name} ...`) start a new release; `kubectl canary retry {name}` \
             runs this one again.",
            release.revision
        ),
        Phase::Aborted => format!(
            "The release of {} was aborted on request: no traffic goes to the canary and it is scaled to 0. \
             `kubectl canary retry {name}` runs it again.",
            release.revision
        ),
    });
    if release.weight > 0 {
        said.push(format!("The canary takes {}% of new connections.", release.weight));
    }
    if let Some(open) = &release.window
        && let (Some(requests), Some(at)) = (&open.requests, &open.measured_at)
    {
        let so_far = at.0.duration_since(open.started_at.0).as_secs().max(0);
        let interval = canary_controller::canary::release::Settings::of(&canary.spec).interval.as_secs();
        said.push(format!(
            "The current window (step {}, at {}%) is {so_far}s into its {interval}s: so far {}.",
            release.step + 1,
            release.weight,
            requests_said(requests)
        ));
    }
    if let Some(last) = release.evidence.last() {
        let mut sentence = format!(
            "The last judged window (step {}, at {}%) {}: the canary took {} connections, the stable pods {}.",
            last.step + 1,
            last.weight,
            match last.verdict {
                Verdict::Passed => "passed",
                Verdict::Failed => "failed",
                Verdict::Inconclusive => "was inconclusive",
                Verdict::Marginal => "was marginal",
            },
            last.canary_sessions,
            last.stable_sessions
        );
        if let Some(requests) = &last.requests {
            sentence.push_str(&format!(" HTTP: {}.", requests_said(requests)));
        }
        for m in last.metrics.iter().filter(|m| m.verdict != Verdict::Passed) {
            let what = match &m.no_data {
                Some(why) => format!("had no data ({why})"),
                None => format!("was {} against {}", m.value, m.bound),
            };
            sentence.push_str(&format!(" Check {} {what}: {:?}.", metric_name(m), m.verdict));
        }
        said.push(sentence);
    }
    let warnings: Vec<&Happened> = events.iter().filter(|e| e.warning).collect();
    for e in warnings.iter().rev().take(3).rev() {
        said.push(format!("Warning {}: {}", e.reason, e.message));
    }
    said
}

/// Each route's requests over a window, in words.
fn requests_said(requests: &WindowRequests) -> String {
    let route = |r: &RouteRequestSummary| {
        let success = r.success_rate.map_or("none".to_string(), |v| format!("{v}%"));
        let p99 = r.p99_ms.map_or("unmeasured".to_string(), |v| format!("{v} ms"));
        format!("{} requests ({}/s), {success} succeeded, p99 {p99}", r.requests, r.rate)
    };
    format!("the canary {}; stable {}", route(&requests.canary), route(&requests.stable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canary(paused: bool, status: serde_json::Value) -> Canary {
        serde_json::from_value(json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"targetDeploymentName": "app", "targetContainers": [{"name": "app", "image": "app:v2"}],
                "traffic": {"service": "app", "frontService": "app-front"}, "paused": paused},
            "status": status}))
        .unwrap()
    }

    #[test]
    fn a_rolled_back_release_names_the_failed_check_and_the_way_on() {
        let c = canary(
            false,
            json!({"release": {"revision": "app=app:v2", "phase": "RolledBack", "step": 1,
            "stepDescription": "2/4 analysis", "weight": 0, "message": "step 2 failed: errorRate 0.2 > max 0.05",
            "evidence": [{"step": 1, "weight": 20, "startedAt": "2026-12-02T10:00:00Z", "finishedAt": "2026-12-02T10:00:30Z",
                "canarySessions": 50, "stableSessions": 200, "verdict": "Failed",
                "metrics": [{"metric": "errorRate", "value": 0.2, "bound": "max 0.05", "verdict": "Failed"}]}]}}),
        );
        let events = [Happened { warning: true, reason: "RolledBack".into(), message: "rolled back".into() }];
        let text = explain(&c, &events).join("\n");
        for wanted in [
            "was rolled back: step 2 failed",
            "kubectl canary retry web",
            "failed: the canary took 50 connections",
            "Check ErrorRate was 0.2 against max 0.05: Failed.",
            "Warning RolledBack: rolled back",
        ] {
            assert!(text.contains(wanted), "{wanted:?} missing from:\n{text}");
        }
    }

    #[test]
    fn a_held_release_says_what_holds_it() {
        let status = json!({"release": {"revision": "r", "phase": "Paused", "step": 1, "stepDescription": "2/4 pause",
            "weight": 20, "message": "pause step 2: resume or promote to go on"}});
        let by_spec = explain(&canary(true, status.clone()), &[]).join("\n");
        assert!(by_spec.contains("held at step 2/4 pause by spec.paused"), "{by_spec}");
        let by_step = explain(&canary(false, status), &[]).join("\n");
        assert!(by_step.contains("kubectl canary promote web") && by_step.contains("takes 20%"), "{by_step}");
    }
}
