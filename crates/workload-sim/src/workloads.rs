//! The Deployment and ReplicaSet controllers, as the simulator plays them: a Deployment gets one ReplicaSet
//! per pod template (named by the template's hash), rolled as its strategy says (`RollingUpdate` honouring
//! `maxSurge` and `maxUnavailable`, or `Recreate`); a ReplicaSet gets its Pods. Statuses are written as the
//! real controllers write them (replicas, updated, ready, available after `minReadySeconds`, conditions).
//! The plans are pure functions; `reconcile_*` only read and write the API.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const FIELD_MANAGER: &str = "workload-sim";
/// How often a settled Deployment or ReplicaSet is looked at again without an event, as the real controllers'
/// informers resync: a status that missed an event (an API server restart in the middle of a write chain)
/// catches up within this.
const RESYNC: Duration = Duration::from_secs(10);

pub type Error = kube::Error;

/// The hash of a pod template, as the ReplicaSet's name suffix and `pod-template-hash` label.
pub fn template_hash(template: &serde_json::Value) -> String {
    let digest = sha2::Sha256::digest(template.to_string().as_bytes());
    digest.iter().take(5).map(|b| format!("{:02x}", b)).collect::<String>()[..10].to_string()
}

/// `value` of a `maxSurge`/`maxUnavailable` field for `replicas` pods: percentages round up for a surge and
/// down for unavailability, as the real controller does.
pub fn scaled(value: Option<&IntOrString>, replicas: i32, round_up: bool, default: &str) -> i32 {
    let value = value.cloned().unwrap_or(IntOrString::String(default.into()));
    match value {
        IntOrString::Int(n) => n,
        IntOrString::String(s) => {
            let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let exact = percent * replicas as f64 / 100.0;
            (if round_up { exact.ceil() } else { exact.floor() }) as i32
        }
    }
}

/// What a Deployment's ReplicaSets are and how they should be scaled next.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSetState {
    pub name: String,
    pub replicas: i32,
    pub available: i32,
    pub current: bool,
}

/// The replicas each ReplicaSet should have after one step of a roll, by name, decided as the real
/// Deployment controller does (`rolloutRolling`); `sets` come oldest first. A rolling step first scales the
/// current set (up within the surge, or down to `desired`) and ends there if it did; otherwise it scales old
/// sets down: their unavailable pods first, but only as far as `desired - maxUnavailable` pods plus the
/// current set's unavailable ones stay (so Ready pods that are not available yet keep serving), then available
/// pods while enough stay available.
pub fn plan_rollout(
    desired: i32,
    strategy_recreate: bool,
    max_surge: i32,
    max_unavailable: i32,
    sets: &[ReplicaSetState],
) -> BTreeMap<String, i32> {
    let mut plan: BTreeMap<String, i32> = sets.iter().map(|s| (s.name.clone(), s.replicas)).collect();
    let Some(new) = sets.iter().find(|s| s.current) else { return plan };
    let old: Vec<&ReplicaSetState> = sets.iter().filter(|s| !s.current).collect();
    if strategy_recreate {
        let old_pods: i32 = old.iter().map(|s| s.replicas.max(s.available)).sum();
        for s in &old {
            plan.insert(s.name.clone(), 0);
        }
        plan.insert(new.name.clone(), if old_pods == 0 { desired } else { 0 });
        return plan;
    }
    let (max_surge, max_unavailable) =
        if max_surge == 0 && max_unavailable == 0 { (0, 1) } else { (max_surge, max_unavailable) };
    let total: i32 = sets.iter().map(|s| s.replicas).sum();
    let new_replicas = if new.replicas >= desired {
        desired
    } else {
        (new.replicas + (desired + max_surge - total).max(0)).min(desired)
    };
    if new_replicas != new.replicas {
        plan.insert(new.name.clone(), new_replicas);
        return plan;
    }
    // a set's status may still count pods its spec has already let go (the status lags a scale-down), so no
    // set counts more available pods than it keeps
    let available = |s: &ReplicaSetState, replicas: i32| s.available.min(replicas).max(0);
    let min_available = desired - max_unavailable;
    let max_scaled_down = total - min_available - (new.replicas - available(new, new.replicas));
    if max_scaled_down <= 0 {
        return plan;
    }
    let mut cleaned = 0;
    for s in &old {
        let unavailable = s.replicas - available(s, s.replicas);
        let take = unavailable.min(max_scaled_down - cleaned);
        if take > 0 {
            plan.insert(s.name.clone(), s.replicas - take);
            cleaned += take;
        }
    }
    let still_available: i32 =
        available(new, new.replicas) + old.iter().map(|s| available(s, plan[&s.name])).sum::<i32>();
    let mut can_remove = (still_available - min_available).max(0);
    for s in &old {
        let replicas = plan[&s.name];
        let take = replicas.min(can_remove);
        plan.insert(s.name.clone(), replicas - take);
        can_remove -= take;
    }
    plan
}

fn owner(object: &impl Resource<DynamicType = ()>) -> OwnerReference {
    object.controller_owner_ref(&()).expect("an object with a name and uid")
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

/// The objects of `api` that `selector` selects and the object with `uid` controls.
async fn owned<K>(api: &Api<K>, selector: &BTreeMap<String, String>, uid: &str) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = api.list(&ListParams::default().labels(&selector_of(selector))).await?;
    Ok(listed.items.into_iter().filter(|o| owned_by(o.meta(), uid)).collect())
}

fn selector_of(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// One step of a Deployment: its current ReplicaSet exists, the sets are scaled as `plan_rollout` says,
/// and the status sums up the sets.
pub async fn reconcile_deployment(deployment: Arc<Deployment>, client: kube::Client) -> Result<Action, Error> {
    if deployment.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = deployment.namespace().unwrap_or_default();
    let sets_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let spec = deployment.spec.clone().unwrap_or_default();
    let uid = deployment.uid().unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let mut sets = owned(&sets_api, &selector, &uid).await?;
    let revision = |rs: &ReplicaSet| rs.annotations().get(REVISION_ANNOTATION).and_then(|r| r.parse::<i64>().ok());
    let template = serde_json::to_value(&spec.template).unwrap_or_default();
    let hash = template_hash(&template);
    let name = format!("{}-{hash}", deployment.name_any());
    if !sets.iter().any(|rs| rs.name_any() == name) {
        let next_revision = sets.iter().filter_map(revision).max().unwrap_or(0) + 1;
        let mut template = template.clone();
        template["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!(hash);
        let mut match_labels = serde_json::to_value(&selector).unwrap_or_default();
        match_labels[TEMPLATE_HASH_LABEL] = json!(hash);
        let mut labels =
            serde_json::to_value(spec.template.metadata.as_ref().and_then(|m| m.labels.clone())).unwrap_or_default();
        labels[TEMPLATE_HASH_LABEL] = json!(hash);
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner(deployment.as_ref())],
                "annotations": {REVISION_ANNOTATION: next_revision.to_string()}},
            "spec": {"replicas": 0, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
                "selector": {"matchLabels": match_labels}, "template": template}
        }))
        .expect("a valid ReplicaSet");
        match sets_api
            .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &rs)
            .await
        {
            Ok(created) => sets.push(created),
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => return Err(e),
        }
    }
    let desired = spec.replicas.unwrap_or(1);
    let rolling = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let surge = scaled(rolling.and_then(|r| r.max_surge.as_ref()), desired, true, "25%");
    let unavailable = scaled(rolling.and_then(|r| r.max_unavailable.as_ref()), desired, false, "25%");
    // oldest first, as the real controller scales old sets down
    sets.sort_by_key(|rs| revision(rs).unwrap_or(0));
    let states: Vec<ReplicaSetState> = sets
        .iter()
        .map(|rs| ReplicaSetState {
            name: rs.name_any(),
            replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
            available: rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0),
            current: rs.name_any() == name,
        })
        .collect();
    let plan = plan_rollout(desired, recreate, surge, unavailable, &states);
    tracing::debug!(deployment = %deployment.name_any(), ?states, ?plan, "roll step");
    for state in &states {
        let want = plan[&state.name];
        if want != state.replicas {
            let patch = json!({"spec": {"replicas": want}});
            sets_api.patch(&state.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
    }
    // old sets at 0 beyond the history limit go
    let limit = spec.revision_history_limit.unwrap_or(10) as usize;
    let mut idle: Vec<&ReplicaSet> = sets
        .iter()
        .filter(|rs| {
            rs.name_any() != name && plan[&rs.name_any()] == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
        })
        .collect();
    idle.sort_by_key(|rs| rs.metadata.creation_timestamp.clone().map(|t| t.0));
    while idle.len() > limit {
        let rs = idle.remove(0);
        let _ = sets_api.delete(&rs.name_any(), &DeleteParams::default()).await;
    }
    write_deployment_status(&client, &deployment, &sets, &name, desired, desired - unavailable).await?;
    let done = states.iter().all(|s| plan[&s.name] == s.replicas)
        && states.iter().filter(|s| !s.current).all(|s| s.replicas == 0);
    Ok(if done { Action::requeue(RESYNC) } else { Action::requeue(Duration::from_secs(1)) })
}

async fn write_deployment_status(
    client: &kube::Client,
    deployment: &Deployment,
    sets: &[ReplicaSet],
    current: &str,
    desired: i32,
    min_available: i32,
) -> Result<(), kube::Error> {
    let sum = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>| -> i32 {
        sets.iter().filter_map(|rs| rs.status.as_ref().and_then(f)).sum()
    };
    let replicas: i32 = sets.iter().filter_map(|rs| rs.status.as_ref().map(|s| s.replicas)).sum();
    let updated: i32 =
        sets.iter().filter(|rs| rs.name_any() == current).filter_map(|rs| rs.status.as_ref().map(|s| s.replicas)).sum();
    let ready = sum(|s| s.ready_replicas);
    let available = sum(|s| s.available_replicas);
    let previous = deployment.status.clone().unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .map(|t| t.0)
            .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
        json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "lastUpdateTime": since})
    };
    let complete = updated == desired && replicas == desired && available == desired;
    let status = json!({"status": {
        "observedGeneration": deployment.metadata.generation,
        "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
        "conditions": [
            condition("Available", available >= min_available,
                if available >= min_available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                format!("Deployment has {available} available of {desired} desired replicas.")),
            condition("Progressing", true,
                if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                format!("ReplicaSet \"{current}\" {}.", if complete { "has successfully progressed" } else { "is progressing" })),
        ],
    }});
    let api: Api<Deployment> = Api::namespaced(client.clone(), &deployment.namespace().unwrap_or_default());
    api.patch_status(&deployment.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

/// A ReplicaSet's Pods (bound to `node`): as many as it wants (new ones named `<set>-<5 letters>`; surplus ones go, those not
/// ready first), and its status.
pub async fn reconcile_replica_set(rs: Arc<ReplicaSet>, client: kube::Client, node: &str) -> Result<Action, Error> {
    if rs.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let spec = rs.spec.clone().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let pods = owned(&pods_api, &selector, &uid).await?;
    let live: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let want = spec.replicas.unwrap_or(1);
    let have = live.len() as i32;
    if have < want {
        let template = serde_json::to_value(&spec.template).unwrap_or_default();
        for _ in have..want {
            let mut pod = template.clone();
            pod["metadata"]["generateName"] = json!(format!("{}-", rs.name_any()));
            pod["metadata"]["namespace"] = json!(ns);
            pod["metadata"]["ownerReferences"] = json!([owner(rs.as_ref())]);
            // no scheduler: Pods are created bound to the simulator's one node
            pod["spec"]["nodeName"] = json!(node);
            let pod: Pod = serde_json::from_value(pod).expect("a valid Pod");
            pods_api
                .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &pod)
                .await?;
        }
    } else if have > want {
        let mut surplus = live.clone();
        // not ready first, then the newest
        surplus.sort_by_key(|p| (pod_ready(p), std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0))));
        for pod in surplus.iter().take((have - want) as usize) {
            tracing::debug!(set = %rs.name_any(), pod = %pod.name_any(), have, want, "deleting a surplus pod");
            pods_api.delete(&pod.name_any(), &DeleteParams::default()).await?;
        }
    }
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let ready = live.iter().filter(|p| pod_ready(p)).count() as i32;
    let (available, waiting) = availability(&live, min_ready, k8s_openapi::jiff::Timestamp::now());
    let status = json!({"status": {
        "observedGeneration": rs.metadata.generation,
        "replicas": live.len(), "fullyLabeledReplicas": live.len(),
        "readyReplicas": ready, "availableReplicas": available,
    }});
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    api.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
    // a pod ready but not yet for minReadySeconds becomes available later
    Ok(match waiting {
        Some(wait) => Action::requeue(wait + Duration::from_millis(100)),
        None => Action::requeue(RESYNC),
    })
}

pub fn pod_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// How many of `pods` are available at `now` (ready for at least `min_ready`), and how long until the next
/// ready one is. One instant for both, so that a pod not available yet is always waited for.
pub fn availability(
    pods: &[&Pod],
    min_ready: Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> (usize, Option<Duration>) {
    let ready_for: Vec<Duration> = pods.iter().filter_map(|p| ready_for(p, now)).collect();
    let available = ready_for.iter().filter(|d| **d >= min_ready).count();
    let waiting = ready_for.iter().filter(|d| **d < min_ready).map(|d| min_ready - *d).min();
    (available, waiting)
}

/// How long `pod` has been ready at `now`, if it is.
fn ready_for(pod: &Pod, now: k8s_openapi::jiff::Timestamp) -> Option<Duration> {
    let condition = ready_condition(pod).filter(|c| c.status == "True")?;
    let since = condition.last_transition_time.as_ref()?.0;
    Some(Duration::try_from(now.duration_since(since)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_becomes_available_after_min_ready_seconds_and_is_waited_for_until_then() {
        let now: k8s_openapi::jiff::Timestamp = "2026-11-25T10:00:10Z".parse().unwrap();
        let pod = |ready: &str, since: &str| -> Pod {
            serde_json::from_value(
                json!({"status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]}}),
            )
            .unwrap()
        };
        let (old, young, not_ready) = (
            pod("True", "2026-11-25T10:00:07Z"),
            pod("True", "2026-11-25T10:00:09.5Z"),
            pod("False", "2026-11-25T10:00:00Z"),
        );
        let two = Duration::from_secs(2);
        assert_eq!(availability(&[&old, &young, &not_ready], two, now), (1, Some(Duration::from_millis(1500))));
        assert_eq!(availability(&[&old, &young], Duration::ZERO, now), (2, None));
        assert_eq!(availability(&[&not_ready], two, now), (0, None));
    }

    fn set(name: &str, replicas: i32, available: i32, current: bool) -> ReplicaSetState {
        ReplicaSetState { name: name.into(), replicas, available, current }
    }

    #[test]
    fn a_status_that_lags_a_scale_down_does_not_let_the_last_available_pods_go() {
        // the old set was scaled 2 -> 1; its status still says 2 available
        let sets = [set("old", 1, 2, false), set("new", 1, 1, true)];
        let plan = plan_rollout(2, false, 1, 0, &sets);
        assert_eq!((plan["old"], plan["new"]), (1, 2));
    }

    #[test]
    fn a_roll_with_max_surge_1_and_max_unavailable_0_adds_one_then_removes_one_once_available() {
        // the proxies' strategy: 2 replicas, surge 1, unavailable 0
        let plan = plan_rollout(2, false, 1, 0, &[set("old", 2, 2, false), set("new", 0, 0, true)]);
        assert_eq!((plan["old"], plan["new"]), (2, 1));
        // the new pod is not available yet: nothing old goes
        let plan = plan_rollout(2, false, 1, 0, &[set("old", 2, 2, false), set("new", 1, 0, true)]);
        assert_eq!((plan["old"], plan["new"]), (2, 1));
        // once it is, one old pod goes and the next new one comes
        let plan = plan_rollout(2, false, 1, 0, &[set("old", 2, 2, false), set("new", 1, 1, true)]);
        assert_eq!((plan["old"], plan["new"]), (1, 1));
        let plan = plan_rollout(2, false, 1, 0, &[set("old", 1, 1, false), set("new", 1, 1, true)]);
        assert_eq!((plan["old"], plan["new"]), (1, 2));
        let plan = plan_rollout(2, false, 1, 0, &[set("old", 1, 1, false), set("new", 2, 2, true)]);
        assert_eq!((plan["old"], plan["new"]), (0, 2));
    }

    #[test]
    fn pods_that_are_not_available_yet_go_only_as_far_as_the_real_controller_lets_them() {
        // the template changed again before the last roll's pods had been ready for minReadySeconds: they
        // still serve, so they stay while the new set's pod is not available either
        let plan = plan_rollout(2, false, 1, 0, &[set("last", 2, 0, false), set("new", 0, 0, true)]);
        assert_eq!((plan["last"], plan["new"]), (2, 1));
        let plan = plan_rollout(2, false, 1, 0, &[set("last", 2, 0, false), set("new", 1, 0, true)]);
        assert_eq!((plan["last"], plan["new"]), (2, 1));
        // with an available set behind them, the unavailable surge pod of a middle set goes first, oldest
        // set first, and the available pods stay
        let sets = [set("stable", 2, 2, false), set("middle", 1, 0, false), set("new", 0, 0, true)];
        let plan = plan_rollout(2, false, 1, 0, &sets);
        assert_eq!((plan["stable"], plan["middle"], plan["new"]), (2, 0, 0));
        let sets = [set("stable", 2, 2, false), set("middle", 0, 0, false), set("new", 0, 0, true)];
        let plan = plan_rollout(2, false, 1, 0, &sets);
        assert_eq!((plan["stable"], plan["middle"], plan["new"]), (2, 0, 1));
    }

    #[test]
    fn recreate_scales_the_old_set_to_zero_before_the_new_one_starts() {
        let plan = plan_rollout(3, true, 0, 0, &[set("old", 3, 3, false), set("new", 0, 0, true)]);
        assert_eq!((plan["old"], plan["new"]), (0, 0));
        let plan = plan_rollout(3, true, 0, 0, &[set("old", 0, 0, false), set("new", 0, 0, true)]);
        assert_eq!((plan["old"], plan["new"]), (0, 3));
    }

    #[test]
    fn percentages_round_up_for_surge_and_down_for_unavailability() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled(Some(&pct), 3, true, "25%"), 1);
        assert_eq!(scaled(Some(&pct), 3, false, "25%"), 0);
        assert_eq!(scaled(None, 8, false, "25%"), 2);
        assert_eq!(scaled(Some(&IntOrString::Int(1)), 8, false, "25%"), 1);
    }

    #[test]
    fn scaling_a_settled_deployment_changes_only_its_current_set() {
        let plan = plan_rollout(5, false, 1, 1, &[set("new", 3, 3, true)]);
        assert_eq!(plan["new"], 5);
        let plan = plan_rollout(1, false, 1, 1, &[set("new", 3, 3, true)]);
        assert_eq!(plan["new"], 1);
    }
}
