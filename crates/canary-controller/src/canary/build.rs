//! The build step of the Canary controller: everything a Canary should own as one [`Desired`] value (the
//! canary Deployment, a copy of the target with the Canary's images and the canary marks; with a release,
//! its Kanary, route Services, stable EndpointSlices, baseline and the target's images on promotion, see
//! `traffic`), the objects it owns and no longer wants, and the Canary's status. Pure: no client in scope.

use super::observe;
use super::release::Decision;
use super::traffic;
use super::validate::{Problem, Valid};
use crate::api::canary::{Canary, CanaryStatus, Phase, ReleaseStatus};
use crate::api::kanary::KanarySpec;
use crate::conditions::{Observed, condition, warn_on_transition};
use crate::names::FAMILIES;
use crate::names::canary::{conditions, reasons};
use crate::names::{BASELINE_LABEL, CANARY_LABEL, baseline_deployment_name, canary_deployment_name};
use crate::report::Note;
use crate::runtime::children::{owned_by, with_desired_hash};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// The environment variable set in every container of a canary.
pub const CANARY_ENV: &str = "CANARY_ENABLED";
/// The pod hostname of canary pods.
pub const CANARY_HOSTNAME: &str = "canary";

/// Annotations of the target that describe the target itself and are not copied.
const NOT_COPIED_ANNOTATIONS: &[&str] =
    &["kubectl.kubernetes.io/last-applied-configuration", "deployment.kubernetes.io/revision"];

/// The baseline Deployment of a release (`traffic.baseline`): the target's pod template as it is (its
/// images), `replicas` of it, its pods marked with [`BASELINE_LABEL`].
pub fn build_baseline_deployment(canary: &Canary, target: &Deployment, replicas: i32) -> Deployment {
    let mark = |mut labels: BTreeMap<String, String>| {
        labels.insert(BASELINE_LABEL.into(), "true".into());
        labels
    };
    let mut spec = target.spec.clone().unwrap_or_default();
    spec.replicas = Some(replicas);
    spec.selector.match_labels = Some(mark(spec.selector.match_labels.take().unwrap_or_default()));
    let pod_meta = spec.template.metadata.get_or_insert_with(ObjectMeta::default);
    pod_meta.labels = Some(mark(pod_meta.labels.take().unwrap_or_default()));
    Deployment {
        metadata: ObjectMeta {
            name: Some(baseline_deployment_name(&canary.spec.target_deployment_name)),
            namespace: canary.namespace(),
            labels: Some(mark(target.labels().clone())),
            owner_references: canary.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn canary_labels(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.insert(CANARY_LABEL.into(), "true".into());
    labels
}

/// The canary Deployment for a (validated) Canary and its target.
pub fn build_deployment(canary: &Canary, target: &Deployment) -> Deployment {
    let mut spec = target.spec.clone().unwrap_or_default();
    if let Some(replicas) = canary.spec.replicas {
        spec.replicas = Some(replicas);
    }
    spec.selector.match_labels = Some(canary_labels(spec.selector.match_labels.take().unwrap_or_default()));
    let pod_meta = spec.template.metadata.get_or_insert_with(ObjectMeta::default);
    pod_meta.labels = Some(canary_labels(pod_meta.labels.take().unwrap_or_default()));
    let pod = spec.template.spec.get_or_insert_with(Default::default);
    pod.hostname = Some(CANARY_HOSTNAME.into());
    for container in &mut pod.containers {
        if let Some(wanted) = canary.spec.target_containers.iter().find(|t| t.name == container.name) {
            container.image = Some(wanted.image.clone());
        }
        let env = container.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != CANARY_ENV);
        env.push(EnvVar { name: CANARY_ENV.into(), value: Some("1".into()), value_from: None });
    }
    let annotations: BTreeMap<String, String> = target
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Deployment {
        metadata: ObjectMeta {
            name: Some(canary_deployment_name(&canary.spec.target_deployment_name)),
            namespace: canary.namespace(),
            labels: Some(canary_labels(target.labels().clone())),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: canary.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Everything a Canary should own, as it should be (each child carrying its desired hash), in the order it
/// is written, and what it owns and no longer wants.
pub struct Desired {
    /// The release's children: written first, the Kanary before anything else, so that a rollback takes
    /// traffic from the canary before the canary changes.
    pub release: Option<ReleaseChildren>,
    /// The canary Deployment (none while the Canary is not valid: nothing is written).
    pub deployment: Option<Deployment>,
    /// Objects this Canary owns and no longer wants: deleted last.
    pub orphans: Vec<Orphan>,
}

/// The children of a release that goes on.
pub struct ReleaseChildren {
    /// The Kanary, with the spec it should have (compared with the cached one's).
    pub kanary: DynamicObject,
    pub kanary_spec: KanarySpec,
    /// `<canary>-stable`, `<canary>-canary` and, with a baseline, `<canary>-baseline`.
    pub services: Vec<Service>,
    /// The stable route's EndpointSlices (IPv4; IPv6 when the user's Service has IPv6 endpoints or had).
    pub slices: Vec<EndpointSlice>,
    /// The baseline Deployment, with `traffic.baseline`.
    pub baseline: Option<Deployment>,
    /// The target's images, when the release promotes (see [`promotion_patch`]).
    pub target_images: Option<serde_json::Value>,
}

/// The kinds of object a Canary owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    Service,
    EndpointSlice,
    Kanary,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Kanary => "Kanary",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object this Canary owns and no longer wants.
pub struct Orphan {
    pub kind: Kind,
    pub name: String,
    pub uid: String,
    pub why: Why,
}

/// Why an owned object is no longer wanted (each reason is an event of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The canary Deployment of a former `targetDeploymentName`.
    PreviousTarget,
    /// `spec.traffic` removed: the release's objects go.
    TrafficRemoved,
    /// `spec.traffic.baseline` unset: the baseline Deployment and Service go.
    BaselineUnset,
}

/// What the Canary should own, from what was observed, whether it is valid, and the release's decision (a
/// release that goes on has one; one that holds has none and keeps its children as they are).
pub fn build_desired(
    canary: &Canary,
    valid: Result<&Valid, &Problem>,
    observed: &observe::Observed,
    decision: Option<&Decision>,
    scaled_down: bool,
) -> Desired {
    let uid = canary.uid().unwrap_or_default();
    let deployment = valid.ok().map(|valid| {
        let mut deployment = build_deployment(canary, &valid.target);
        if scaled_down && let Some(spec) = deployment.spec.as_mut() {
            spec.replicas = Some(0);
        }
        with_desired_hash(deployment)
    });
    // a release that goes on: its traffic is valid (and so the Kanary group installed) and it decided
    let release = match (valid, decision) {
        (Ok(valid), Some(decision)) => match &valid.traffic {
            Some(Ok(traffic)) => Some(release_children(canary, valid, traffic, observed, decision)),
            _ => None,
        },
        _ => None,
    };
    let mut orphans: Vec<Orphan> = vec![];
    for old in &observed.other_canaries {
        orphans.extend(orphan(Kind::Deployment, Some(old.as_ref()), &uid, Why::PreviousTarget));
    }
    let seen = &observed.release;
    if canary.spec.traffic.is_none() {
        let why = Why::TrafficRemoved;
        let kanary = seen.kanary.as_ref().and_then(|k| k.as_deref());
        orphans.extend(orphan(Kind::Kanary, kanary, &uid, why));
        for service in [&seen.stable_service, &seen.canary_service, &seen.baseline_service] {
            orphans.extend(orphan(Kind::Service, service.as_deref(), &uid, why));
        }
        orphans.extend(orphan(Kind::Deployment, seen.baseline.as_deref(), &uid, why));
        for slice in [&seen.stable_slice, &seen.stable_slice_v6] {
            orphans.extend(orphan(Kind::EndpointSlice, slice.as_deref(), &uid, why));
        }
    } else if release.as_ref().is_some_and(|r| r.baseline.is_none()) {
        orphans.extend(orphan(Kind::Deployment, seen.baseline.as_deref(), &uid, Why::BaselineUnset));
        orphans.extend(orphan(Kind::Service, seen.baseline_service.as_deref(), &uid, Why::BaselineUnset));
    }
    Desired { release, deployment, orphans }
}

/// `object` as an orphan of the Canary `uid`, when it exists and the Canary owns it.
fn orphan<K: kube::Resource>(kind: Kind, object: Option<&K>, uid: &str, why: Why) -> Option<Orphan> {
    let object = object.filter(|o| owned_by(*o, uid))?;
    Some(Orphan { kind, name: object.name_any(), uid: object.uid().unwrap_or_default(), why })
}

/// The children of a release that goes on, at the weight `decision` set.
fn release_children(
    canary: &Canary,
    valid: &Valid,
    traffic: &super::validate::ValidTraffic,
    observed: &observe::Observed,
    decision: &Decision,
) -> ReleaseChildren {
    let seen = &observed.release;
    let (user, port, settings) = (traffic.service.as_ref(), &traffic.port, &traffic.traffic);
    let kanary_spec = traffic::kanary_spec(canary, settings, decision.release.weight);
    let mut kanary = traffic::build_kanary(canary, &crate::api::kanary::release_resource(), &kanary_spec);
    // applied only to the Kanary checked as ours
    kanary.metadata.uid = seen.kanary.as_ref().and_then(|k| k.as_ref()).and_then(|k| k.metadata.uid.clone());
    let mut services =
        vec![traffic::build_stable_service(canary, port), traffic::build_canary_service(canary, user, port)];
    if settings.baseline {
        services.push(traffic::build_baseline_service(canary, user, port));
    }
    let marked_slices = [seen.canary_slices.as_slice(), seen.baseline_slices.as_slice()].concat();
    let cached_slices = [seen.stable_slice.as_deref(), seen.stable_slice_v6.as_deref()];
    let slices = FAMILIES
        .into_iter()
        .zip(cached_slices)
        .filter(|(family, cached)| {
            *family == "IPv4" || cached.is_some() || traffic::has_family(&seen.service_slices, family)
        })
        .map(|(family, cached)| {
            let built = traffic::build_stable_slice(canary, port, family, &seen.service_slices, &marked_slices);
            let mut slice = with_desired_hash(built);
            // applied only to the slice checked as ours
            slice.metadata.uid = cached.and_then(|c| c.metadata.uid.clone());
            slice
        })
        .collect();
    let replicas = canary_replicas(canary, &valid.target);
    let baseline = settings.baseline.then(|| {
        let replicas = if decision.canary_scaled_down() { 0 } else { replicas };
        with_desired_hash(build_baseline_deployment(canary, &valid.target, replicas))
    });
    let target_images = decision.update_target.then(|| promotion_patch(&valid.target, canary));
    let services = services.into_iter().map(with_desired_hash).collect();
    ReleaseChildren { kanary, kanary_spec, services, slices, baseline, target_images }
}

/// The canary's replicas: the Canary's `replicas`, else the target's.
pub fn canary_replicas(canary: &Canary, target: &Deployment) -> i32 {
    canary.spec.replicas.or_else(|| target.spec.as_ref().and_then(|s| s.replicas)).unwrap_or(1)
}

/// The Canary's status from what reconcile saw: the problem (if any), whether the target exists, and the
/// canary Deployment this Canary owns (if any). Conditions keep their transition time while unchanged.
/// The Warning event of a problem that appeared or changed since `before`.
pub fn warnings(before: Option<&CanaryStatus>, after: &CanaryStatus, problem: Option<&Problem>) -> Vec<Note> {
    let before = before.map(|s| s.conditions.as_slice()).unwrap_or_default();
    warn_on_transition(before, &after.conditions, conditions::READY, problem.map(Problem::reason)).into_iter().collect()
}

pub fn build_status(
    canary: &Canary,
    problem: Option<&Problem>,
    target_found: bool,
    owned: Option<&Deployment>,
    release: Option<ReleaseStatus>,
    now: &Time,
) -> CanaryStatus {
    let generation = canary.metadata.generation;
    let previous = canary.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let target = &canary.spec.target_deployment_name;
    let desired = owned.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(1);
    let dstatus = owned.and_then(|d| d.status.as_ref());
    let ready = dstatus.and_then(|s| s.ready_replicas).unwrap_or(0);
    let (ready_ok, ready_reason, ready_message) = match (problem, owned) {
        (Some(p), _) => (false, p.reason(), p.message()),
        (None, Some(_)) if ready >= desired => {
            (true, reasons::CANARY_READY, format!("{ready}/{desired} canary replicas ready"))
        }
        (None, _) => (false, reasons::CANARY_PROGRESSING, format!("{ready}/{desired} canary replicas ready")),
    };
    let target_condition = if target_found {
        Observed {
            type_: conditions::TARGET_FOUND,
            ok: true,
            reason: reasons::TARGET_FOUND,
            message: format!("Deployment {target:?} found"),
        }
    } else {
        Observed {
            type_: conditions::TARGET_FOUND,
            ok: false,
            reason: reasons::TARGET_NOT_FOUND,
            message: format!("Deployment {target:?} not found"),
        }
    };
    let conflict_condition = match problem {
        Some(p @ Problem::DeploymentNotOwned { .. }) => {
            Observed { type_: conditions::CONFLICT, ok: true, reason: p.reason(), message: p.message() }
        }
        _ => Observed {
            type_: conditions::CONFLICT,
            ok: false,
            reason: reasons::NO_CONFLICT,
            message: format!("Deployment {:?} is free or managed by this Canary", canary_deployment_name(target)),
        },
    };
    let ready_condition =
        Observed { type_: conditions::READY, ok: ready_ok, reason: ready_reason, message: ready_message };
    let mut observed = vec![target_condition, conflict_condition, ready_condition];
    if let Some(release) = &release {
        observed.extend(release_conditions(release));
    }
    let conditions = observed.into_iter().map(|o| condition(o, generation, previous, now)).collect();
    CanaryStatus {
        observed_generation: generation,
        canary_deployment: owned.and_then(|d| d.metadata.name.clone()),
        replicas: dstatus.and_then(|s| s.replicas),
        // 0 rather than absent once the canary Deployment has a status (the Deployment controller leaves out
        // its zeros): `kubectl get canary` shows READY 0, not an empty column
        ready_replicas: dstatus.map(|s| s.ready_replicas.unwrap_or(0)),
        available_replicas: dstatus.map(|s| s.available_replicas.unwrap_or(0)),
        conditions,
        release,
    }
}

/// The conditions of a release: `Released` (True once it succeeded) and `RolledBack` (True once rolled back
/// or aborted); their reason is the phase.
fn release_conditions(release: &ReleaseStatus) -> [Observed<'static>; 2] {
    let reason = match release.phase {
        Phase::Progressing => "Progressing",
        Phase::Paused => "Paused",
        Phase::Promoting => "Promoting",
        Phase::Succeeded => "Succeeded",
        Phase::RolledBack => "RolledBack",
        Phase::Aborted => "Aborted",
    };
    let message = format!("{}: {}", release.revision, release.message);
    let rolled_back = matches!(release.phase, Phase::RolledBack | Phase::Aborted);
    [
        Observed {
            type_: conditions::RELEASED,
            ok: release.phase == Phase::Succeeded,
            reason,
            message: message.clone(),
        },
        Observed { type_: conditions::ROLLED_BACK, ok: rolled_back, reason, message },
    ]
}

/// The status of a Canary that cannot be read as one (its stored form does not match the schema the
/// operator knows, for example after a CRD was edited by hand): Ready is False with the reason.
pub fn build_unreadable_status(name: &str, generation: Option<i64>, error: &str, now: &Time) -> CanaryStatus {
    let message = format!(
        "the Canary cannot be read: {error}: fix its spec (`kubectl edit canary {name}`), and reinstall the CRD if it \
         was changed (`canary-controller crd | kubectl apply --server-side -f -`); nothing else is changed"
    );
    let ready = Observed { type_: conditions::READY, ok: false, reason: reasons::INVALID_SPEC, message };
    CanaryStatus {
        observed_generation: generation,
        conditions: vec![condition(ready, generation, &[], now)],
        ..Default::default()
    }
}

/// The server-side apply of a promotion to the target Deployment: every container the target runs, with
/// the Canary's image where it names the container and the target's own image otherwise. All of them: an
/// apply that left out a container an earlier promotion set would take that container's image away
/// (server-side apply removes what its field manager stops setting), and a container without an image is
/// refused, so the promotion would never complete.
pub fn promotion_patch(target: &Deployment, canary: &Canary) -> serde_json::Value {
    let current = target.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|p| p.containers.as_slice());
    let named = |name: &str| canary.spec.target_containers.iter().find(|c| c.name == name).map(|c| c.image.clone());
    let containers: Vec<serde_json::Value> = current
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            let image = named(&c.name).or_else(|| c.image.clone())?;
            Some(serde_json::json!({"name": c.name, "image": image}))
        })
        .collect();
    serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": target.name_any(), "namespace": target.namespace()},
        "spec": {"template": {"spec": {"containers": containers}}}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_promotion_keeps_setting_every_container_so_no_image_is_taken_away() {
        // suspicion: promotion applied only the current targetContainers, so a container an earlier release
        // promoted (its image owned by the promotion's field manager) and a later one dropped lost its image
        let target: Deployment = serde_json::from_value(json!({"metadata": {"name": "app", "namespace": "ns"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "web", "image": "web:v1"}, {"name": "sidecar", "image": "sidecar:v2"}]}}}}))
        .unwrap();
        let later =
            canary(json!({"targetDeploymentName": "app", "targetContainers": [{"name": "web", "image": "web:v2"}]}));
        let patch = promotion_patch(&target, &later);
        assert_eq!(
            patch["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "web:v2"}, {"name": "sidecar", "image": "sidecar:v2"}])
        );
        assert_eq!((patch["metadata"]["name"].as_str(), patch["kind"].as_str()), (Some("app"), Some("Deployment")));
    }

    fn canary(spec: Value) -> Canary {
        serde_json::from_value(json!({
            "apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
            "metadata": {"name": "canary-sample", "namespace": "default", "uid": "uid-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn sample_canary() -> Canary {
        canary(json!({"targetDeploymentName": "foo", "targetContainers": [
            {"name": "nginx", "image": "nginx:latest"}, {"name": "redis", "image": "redis:5.0.5"}]}))
    }

    fn target(selector: Value, template_labels: Value) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "foo", "namespace": "default", "labels": {"app": "nginx", "canary": "false"},
                         "annotations": {"team": "web", "deployment.kubernetes.io/revision": "3",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": 2, "selector": selector, "template": {"metadata": {"labels": template_labels}, "spec": {
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "nginx", "image": "nginx:1.15.4", "env": [{"name": "CANARY_ENABLED", "value": "0"}, {"name": "A", "value": "1"}]},
                    {"name": "redis", "image": "redis"}]}}}
        }))
        .unwrap()
    }

    /// Golden object for the original project's samples (config/samples).
    #[test]
    fn sample_canary_deployment() {
        let built = build_deployment(
            &sample_canary(),
            &target(json!({"matchLabels": {"app": "nginx"}}), json!({"app": "nginx"})),
        );
        let expected = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "foo-canary", "namespace": "default",
                "labels": {"app": "nginx", "canary": "true"},
                "annotations": {"team": "web"},
                "ownerReferences": [{"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "name": "canary-sample",
                                     "uid": "uid-1", "controller": true}]
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "nginx", "canary": "true"}},
                "template": {
                    "metadata": {"labels": {"app": "nginx", "canary": "true"}},
                    "spec": {
                        "hostname": "canary",
                        "initContainers": [{"name": "init", "image": "busybox"}],
                        "containers": [
                            {"name": "nginx", "image": "nginx:latest", "env": [{"name": "A", "value": "1"}, {"name": "CANARY_ENABLED", "value": "1"}]},
                            {"name": "redis", "image": "redis:5.0.5", "env": [{"name": "CANARY_ENABLED", "value": "1"}]}
                        ]
                    }
                }
            }
        });
        assert_eq!(serde_json::to_value(&built).unwrap(), expected);
    }

    #[test]
    fn building_twice_sets_env_once() {
        let c = sample_canary();
        let once = build_deployment(&c, &target(json!({"matchLabels": {"app": "nginx"}}), json!({"app": "nginx"})));
        let twice = build_deployment(&c, &once);
        assert_eq!(
            once.spec.unwrap().template.spec.unwrap().containers,
            twice.spec.unwrap().template.spec.unwrap().containers
        );
    }

    #[test]
    fn selector_with_only_match_expressions_and_no_template_labels() {
        let built = build_deployment(
            &sample_canary(),
            &target(json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["nginx"]}]}), Value::Null),
        );
        let spec = built.spec.unwrap();
        assert_eq!(spec.selector.match_labels.unwrap(), BTreeMap::from([("canary".to_string(), "true".to_string())]));
        assert_eq!(spec.selector.match_expressions.unwrap().len(), 1);
        assert_eq!(spec.template.metadata.unwrap().labels.unwrap()["canary"], "true");
    }

    #[test]
    fn replicas_override() {
        let mut c = sample_canary();
        c.spec.replicas = Some(0);
        let built = build_deployment(&c, &target(json!({"matchLabels": {"app": "nginx"}}), json!({"app": "nginx"})));
        assert_eq!(built.spec.unwrap().replicas, Some(0));
    }

    #[test]
    fn status_reports_the_problem_and_keeps_transition_times() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let mut c = sample_canary();
        let problem = Problem::TargetNotFound { target: "foo".into(), namespace: "default".into() };
        let s = build_status(&c, Some(&problem), false, None, None, &now);
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "TargetNotFound"));
        assert!(ready.message.contains("spec.targetDeploymentName"));
        c.status = Some(s);
        let again = build_status(&c, Some(&problem), false, None, None, &later);
        assert!(again.conditions.iter().all(|c| c.last_transition_time == now));
    }

    #[test]
    fn the_baseline_runs_the_targets_images_at_the_canarys_size_and_is_not_selected_as_the_canary() {
        let target = target(json!({"matchLabels": {"app": "nginx"}}), json!({"app": "nginx"}));
        let built = serde_json::to_value(build_baseline_deployment(&sample_canary(), &target, 1)).unwrap();
        assert_eq!(built["metadata"]["name"], "foo-baseline");
        assert_eq!(built["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(built["spec"]["replicas"], 1);
        assert_eq!(built["spec"]["selector"]["matchLabels"], json!({"app": "nginx", "canary-baseline": "true"}));
        let pod = &built["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"], json!({"app": "nginx", "canary-baseline": "true"}));
        assert_eq!(pod["spec"], serde_json::to_value(&target.spec.as_ref().unwrap().template.spec).unwrap());
    }
}
