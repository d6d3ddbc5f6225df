//! The Canary controller's reconcile and its wiring. One pass, the same shape as the Kanary controller's:
//! `observe` (the shared Deployment cache: no API reads) -> `validate` (pure: a [`Valid`] Canary or a
//! [`Problem`]) -> `build` (pure: the canary Deployment, the events) -> apply (here: create the canary
//! Deployment when absent, server-side apply it when the cache does not show it as desired, delete the one
//! of a former target) -> status (here: written when it changed). A Canary that cannot be read is reported.

use super::build::{
    build_baseline_deployment, build_deployment, build_status, build_unreadable_status, promotion_patch, warnings,
};
use super::observe::{TrafficObserved, observe};
use super::validate::{Problem, Valid, validate};
use super::{egress, gather, http, measure, prometheus, release, traffic};
use crate::api::canary::{Canary, CanaryStatus, Phase, ReleaseStatus, SecretKeyRef, Traffic};
use crate::names::canary::reasons;
use crate::names::{
    PROMOTION_FIELD_MANAGER, UNREADABLE_FIELD_MANAGER, baseline_deployment_name, canary_deployment_name,
};
use crate::report::Note;
use crate::runtime::caches::{CachedDeployment, CachedForm, Caches};
use crate::runtime::children::{self, Written};
use crate::runtime::index::References;
use crate::runtime::reconciler::{self, Context, Reconciler, Step};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Canary controller.
pub struct CanaryReconciler {
    /// Where the Kanaries of releases are created (kanary.k8s.io), when that group is installed.
    kanary: Option<ApiResource>,
    /// Prometheus's base URL for the PromQL checks that name none.
    prometheus: Option<String>,
    /// The release this process last wrote in each Canary's status (by uid), as the API stores it (JSON:
    /// times in seconds), and when.
    written: Mutex<HashMap<String, (serde_json::Value, Instant)>>,
    /// The evidence releases asked for, gathered off the reconciles.
    gatherer: gather::Gatherer,
    /// When `written` and `gatherer` were last pruned of deleted Canaries.
    pruned: Mutex<Option<Instant>>,
}

/// A release as the API server stores it (its times to the second).
fn stored(release: &ReleaseStatus) -> serde_json::Value {
    serde_json::to_value(release).unwrap_or_default()
}

/// How often what is kept per Canary is pruned of deleted ones.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How long a cache that does not show this process's own last release write is waited for before it is
/// believed (someone else wrote the status).
const CACHE_CATCH_UP: Duration = Duration::from_secs(10);

impl CanaryReconciler {
    pub fn new(kanary: Option<ApiResource>, prometheus: Option<String>) -> CanaryReconciler {
        CanaryReconciler {
            kanary,
            prometheus,
            written: Mutex::default(),
            gatherer: Default::default(),
            pruned: Mutex::default(),
        }
    }

    /// Whether the cached Canary is older than this process's last release write: a decision made on it
    /// would repeat or undo a move (a rollback undone, a window judged twice), so the reconcile waits for the
    /// cache. The status write's resourceVersion precondition is the second guard.
    fn cache_behind(&self, canary: &Canary) -> bool {
        let uid = canary.uid().unwrap_or_default();
        let mut written = self.written.lock().expect("not poisoned");
        let Some((release, at)) = written.get(&uid) else { return false };
        let cached = canary.status.as_ref().and_then(|s| s.release.as_ref()).map(stored);
        if cached.as_ref() == Some(release) || at.elapsed() > CACHE_CATCH_UP {
            written.remove(&uid);
            return false;
        }
        true
    }

    /// Forgets what this process keeps of Canaries that no longer exist (`exists` says which uids do), at most
    /// once every [`PRUNE_EVERY`]: without it, every deleted Canary's last release write and evidence task
    /// would stay in memory.
    fn prune(&self, live: impl FnOnce() -> std::collections::HashSet<String>) {
        let mut pruned = self.pruned.lock().expect("not poisoned");
        if pruned.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        *pruned = Some(Instant::now());
        let live = live();
        self.written.lock().expect("not poisoned").retain(|uid, _| live.contains(uid));
        self.gatherer.retain(|uid| live.contains(uid));
    }

    /// Records the release a status write wrote (`None`: the write failed or wrote none: nothing to wait for).
    fn wrote(&self, canary: &Canary, release: Option<&ReleaseStatus>) {
        let uid = canary.uid().unwrap_or_default();
        let mut written = self.written.lock().expect("not poisoned");
        match release {
            Some(release) => written.insert(uid, (stored(release), Instant::now())),
            None => written.remove(&uid),
        };
    }
}

/// Why a reconcile failed; the variant names the step, and is the metric label and the log field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Canary has no namespace")]
    NoNamespace,
    #[error("creating Deployment {0:?}: {1}")]
    CreateDeployment(String, #[source] kube::Error),
    #[error("applying Deployment {0:?}: {1}")]
    ApplyDeployment(String, #[source] kube::Error),
    #[error("Deployment {0:?} exists but is not in the cache yet: retrying")]
    NotCachedYet(String),
    #[error("deleting Deployment {0:?} of a former target: {1}")]
    DeletePreviousCanary(String, #[source] kube::Error),
    #[error("writing the status: {0}")]
    ApplyStatus(#[from] crate::report::StatusWriteError),
    #[error("reading Kanary {0:?}: {1}")]
    ReadKanary(String, #[source] kube::Error),
    #[error("writing {0} {1:?} of the release: {2}")]
    ApplyRelease(&'static str, String, #[source] kube::Error),
    #[error("setting the images of Deployment {0:?} (promotion): {1}")]
    UpdateTarget(String, #[source] kube::Error),
    #[error("deleting {0} {1:?} of a release whose traffic was removed: {2}")]
    RemoveRelease(&'static str, String, #[source] kube::Error),
}

impl Step for Error {
    fn step(&self) -> &'static str {
        match self {
            Error::NoNamespace => "NoNamespace",
            Error::CreateDeployment(..) => "CreateDeployment",
            Error::ApplyDeployment(..) => "ApplyDeployment",
            Error::NotCachedYet(_) => "NotCachedYet",
            Error::DeletePreviousCanary(..) => "DeletePreviousCanary",
            Error::ApplyStatus(_) => "ApplyStatus",
            Error::ReadKanary(..) => "ReadKanary",
            Error::ApplyRelease(..) => "ApplyRelease",
            Error::UpdateTarget(..) => "UpdateTarget",
            Error::RemoveRelease(..) => "RemoveRelease",
        }
    }

    fn waits_for_cache(&self) -> bool {
        matches!(self, Error::NotCachedYet(_))
    }
}

/// A Canary as it is read from the API: one that does not deserialize is reported, not fatal to the others.
pub type GuardedCanary = DeserializeGuard<Canary>;

impl Reconciler for CanaryReconciler {
    type Object = GuardedCanary;
    type Error = Error;
    const NAME: &'static str = "canary";

    async fn reconcile(&self, guarded: Arc<GuardedCanary>, ctx: &Context<Self>) -> Result<Action, Error> {
        match &guarded.0 {
            Ok(canary) => reconcile(canary, ctx).await,
            Err(unreadable) => report_unreadable(unreadable, ctx).await,
        }
    }
}

/// Reports a Canary that cannot be deserialized in its status and with a Warning event; changes nothing else.
async fn report_unreadable(unreadable: &InvalidObject, ctx: &Context<CanaryReconciler>) -> Result<Action, Error> {
    let meta = &unreadable.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let ns = meta.namespace.as_deref().ok_or(Error::NoNamespace)?;
    let status = build_unreadable_status(&name, meta.generation, &unreadable.error, &now);
    let object_ref = ObjectReference {
        api_version: Some(Canary::api_version(&()).into()),
        kind: Some(Canary::kind(&()).into()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    };
    let message = status.conditions[0].message.clone();
    ctx.publish(&object_ref, [Note::warning(reasons::INVALID_SPEC, message)]).await;
    ctx.reconciler.written.lock().expect("not poisoned").remove(meta.uid.as_deref().unwrap_or_default());
    // applied by a field manager of its own: it replaces the conditions and leaves the rest of the status
    // (a release in progress among it) as it was, so that fixing the spec resumes the release
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), ns);
    let (api_version, kind) = (Canary::api_version(&()), Canary::kind(&()));
    crate::report::write_status(UNREADABLE_FIELD_MANAGER, &api, &name, &api_version, &kind, &status, None).await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Reconciles one Canary.
async fn reconcile(canary: &Canary, ctx: &Context<CanaryReconciler>) -> Result<Action, Error> {
    let ns = canary.namespace().ok_or(Error::NoNamespace)?;
    ctx.reconciler.prune(|| ctx.objects.state().iter().filter_map(|g| metadata(g).uid.clone()).collect());
    if ctx.reconciler.cache_behind(canary) {
        return Ok(Action::requeue(CACHE_WAIT));
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let observed = observe(canary, &ctx.caches);
    let valid = validate(canary, &observed);

    let mut notes = vec![];
    let (mut problem, mut canary_deployment) = match &valid {
        Ok(valid) => (None, valid.owned.clone()),
        Err(p) => {
            let uid = canary.uid().unwrap_or_default();
            let owned = observed.existing.as_deref().filter(|d| children::owned_by(*d, &uid));
            (Some(p.clone()), owned.map(|d| d.to_deployment()))
        }
    };
    // the release, when the Canary has traffic: decided first, so that its weights reach the proxy before
    // the canary is scaled down
    let (mut release, mut scaled_down, mut requeue) = (None, false, Duration::from_secs(600));
    // the status a release is written over: the one read, or the one a recorded decision wrote
    let mut resource_version = canary.resource_version();
    let mut current_status = canary.status.clone();
    let had_release = canary.status.as_ref().is_some_and(|s| s.release.is_some());
    if canary.spec.traffic.is_none() && had_release {
        ctx.reconciler.gatherer.forget(&canary.uid().unwrap_or_default());
        notes.extend(remove_release(canary, ctx).await?);
    }
    if let Some(traffic) = &canary.spec.traffic {
        // a problem keeps the release where it was
        release = canary.status.as_ref().and_then(|s| s.release.clone());
        scaled_down = release.as_ref().is_some_and(|r| r.phase.is_final());
        if let (Some(seen), Ok(valid)) = (&observed.traffic, &valid) {
            let ran = match run_release(canary, traffic, valid, seen, ctx, &mut notes).await {
                // the decision could not be recorded over the version it was decided on: decide again
                Err(Error::ApplyStatus(e)) if e.is_conflict() => return Ok(Action::requeue(CACHE_WAIT)),
                ran => ran?,
            };
            match ran {
                Ok((decision, recorded)) => {
                    if let Some(recorded) = recorded {
                        resource_version = recorded.resource_version;
                        current_status = Some(recorded.status);
                    }
                    scaled_down = decision.canary_scaled_down();
                    requeue = requeue.min(decision.requeue);
                    release = Some(decision.release);
                }
                Err(p) => problem = Some(p),
            }
        }
    }
    if let Ok(valid) = &valid {
        match apply_canary(&deployments, canary, valid, scaled_down, ctx).await {
            Ok((note, written)) => {
                notes.extend(note);
                canary_deployment = Some(written);
            }
            Err(Rejected(message)) => {
                let name = canary_deployment_name(&canary.spec.target_deployment_name);
                problem = Some(Problem::ApplyRejected { name, message });
            }
            Err(Failed(e)) => return Err(e),
        }
    }
    remove_previous_canaries(canary, &deployments, &observed.other_canaries, ctx).await?;

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let target_found = observed.target.is_some();
    let status = build_status(canary, problem.as_ref(), target_found, canary_deployment.as_ref(), release, &now);
    notes.extend(warnings(canary.status.as_ref(), &status, problem.as_ref()));
    ctx.publish(&canary.object_ref(&()), notes).await;
    if current_status.as_ref() != Some(&status) {
        let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &ns);
        // a release is only written over the version it was decided on
        let precondition = status.release.as_ref().and(resource_version);
        let written = write_status(&api, &canary.name_any(), &status, precondition.as_deref()).await;
        ctx.reconciler.wrote(canary, written.as_ref().ok().and(status.release.as_ref()));
        match written {
            Err(Error::ApplyStatus(e)) if e.is_conflict() => return Ok(Action::requeue(CACHE_WAIT)),
            written => {
                written?;
            }
        }
    }
    Ok(Action::requeue(requeue))
}

/// How soon a reconcile that found its Canary stale (in the cache or at the status write) runs again.
const CACHE_WAIT: Duration = Duration::from_millis(200);

/// One move of a Canary's release: reads its Kanary, decides ([`release::advance`]) with the evidence it asks
/// for once gathered off the reconcile ([`gather`]: the proxy's counters when a window starts or ends, the
/// PromQL answers, a webhook's answer), records a decision that matters in the status ([`record_decision`]),
/// then writes the Kanary with the decided weight, the route Services, the stable EndpointSlices, and
/// updates the target on promotion. A problem leaves everything as
/// it is (the proxy keeps its last weights). Returns the decision, and what [`record_decision`] wrote when it
/// recorded it.
async fn run_release(
    canary: &Canary,
    traffic: &Traffic,
    valid: &Valid,
    seen: &TrafficObserved,
    ctx: &Context<CanaryReconciler>,
    notes: &mut Vec<Note>,
) -> Result<Result<(release::Decision, Option<Recorded>), Problem>, Error> {
    let ns = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let uid = canary.uid().unwrap_or_default();
    let Some(resource) = &ctx.reconciler.kanary else {
        return Ok(Err(Problem::Traffic(
            "spec.traffic: a release needs the Kanary CRD of group kanary.k8s.io: install it (`canary-controller crd`)"
                .into(),
        )));
    };
    let Some(user) = seen.service.as_deref() else {
        return Ok(Err(Problem::Traffic(format!(
            "spec.traffic.service: Service {:?} not found in namespace {ns:?}: create it or fix the name",
            traffic.service
        ))));
    };
    let port = match traffic::service_port(traffic, user) {
        Ok(port) => port.clone(),
        Err(message) => return Ok(Err(Problem::Traffic(message))),
    };
    let taken = not_owned("Service", seen.stable_service.as_deref(), &uid)
        .or_else(|| not_owned("Service", seen.canary_service.as_deref(), &uid))
        .or_else(|| not_owned("EndpointSlice", seen.stable_slice.as_deref(), &uid))
        .or_else(|| not_owned("EndpointSlice", seen.stable_slice_v6.as_deref(), &uid))
        .or_else(|| not_owned("Service", seen.baseline_service.as_deref(), &uid))
        .or_else(|| not_owned("Deployment", seen.baseline.as_deref(), &uid));
    let kanaries: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, resource);
    let kanary = kanaries.get_opt(&name).await.map_err(|e| Error::ReadKanary(name.clone(), e))?;
    if let Some(problem) = taken.or_else(|| not_owned("Kanary", kanary.as_ref(), &uid)) {
        return Ok(Err(problem));
    }

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let spec = &canary.spec;
    let replicas = canary_replicas(canary, &valid.target);
    let pods_ready = |d: Option<&Deployment>| d.is_some_and(|d| rolled_out(d, Some(replicas)));
    let baseline = seen.baseline.as_deref().map(|b| b.to_deployment());
    let baseline_ready = !traffic.baseline || pods_ready(baseline.as_ref());
    let inputs = release::Inputs {
        name: &name,
        namespace: &ns,
        revision: release::revision(spec),
        target_runs_revision: runs_images(&valid.target, spec),
        target_rolled_out: rolled_out(&valid.target, None),
        canary_ready: pods_ready(valid.owned.as_ref()) && baseline_ready,
        served_weight: kanary.as_ref().and_then(traffic::served_weight),
        stats: None,
        queried: None,
        called: None,
        request: canary.annotations().get(crate::names::REQUEST_ANNOTATION).map(String::as_str),
        paused: spec.paused,
        now: &now,
    };
    let previous = canary.status.as_ref().and_then(|s| s.release.as_ref());
    let mut decision = release::advance(spec, previous, &inputs);
    let (stable_name, canary_name) =
        (crate::names::stable_service_name(&name), crate::names::canary_service_name(&name));
    // the evidence it asks for is gathered off the reconcile (see `gather`): taken once gathered
    let gatherer = &ctx.reconciler.gatherer;
    if decision.wants_stats {
        let pods = traffic::proxy_pods(&seen.front_slices);
        let queries = decision.wants_queries;
        let key = gather::key(if queries { "stats+queries" } else { "stats" }, previous);
        let no_pods = pods.is_empty();
        let gathered = match no_pods {
            true => None,
            false => gatherer.poll(&uid, &key, || {
                let (canary, client) = (canary.clone(), ctx.client.clone());
                let (stable_name, canary_name) = (stable_name.clone(), canary_name.clone());
                let prometheus = ctx.reconciler.prometheus.clone();
                async move {
                    let stats = measure::read_counters(&pods, &stable_name, &canary_name).await;
                    let at = Time(k8s_openapi::jiff::Timestamp::now());
                    let queried = match (queries, &stats) {
                        (true, Ok(_)) => Some(run_queries(&canary, prometheus.as_deref(), &client).await),
                        _ => None,
                    };
                    let stats = Some(stats.map_err(|e| e.to_string()));
                    gather::Gathered { at, stats, queried, called: None }
                }
            }),
        };
        match gathered.as_ref().and_then(|g| g.stats.as_ref().map(|s| (g, s))) {
            Some((gathered, Ok(stats))) => {
                let inputs = release::Inputs {
                    stats: Some(stats),
                    queried: gathered.queried.as_deref(),
                    now: &gathered.at,
                    ..inputs
                };
                decision = release::advance(spec, previous, &inputs);
            }
            Some((_, Err(e))) => {
                tracing::warn!(error = %e, "cannot read the proxy's statistics; trying again");
                decision.release.message = e.clone();
                decision.requeue = decision.requeue.min(gather::POLL);
            }
            None if no_pods => {
                decision.release.message = "waiting for a ready proxy pod to read the statistics from".into()
            }
            None => decision.requeue = decision.requeue.min(gather::POLL),
        }
    } else if let Some(call) = decision.wants_call.clone() {
        let key = gather::call_key(&call, previous);
        let gathered = gatherer.poll(&uid, &key, || async move {
            let answer = call_webhook(&call).await;
            gather::Gathered {
                called: Some(release::Called { step: call.step, url: call.url, answer }),
                ..gather::Gathered::now()
            }
        });
        match gathered {
            Some(gathered) => {
                let inputs = release::Inputs { called: gathered.called.as_ref(), now: &gathered.at, ..inputs };
                decision = release::advance(spec, previous, &inputs);
            }
            None => decision.requeue = decision.requeue.min(gather::POLL),
        }
    }
    // a decision that matters is durable before it acts: a rollback or an abort, a raised weight, a
    // promotion are written into the status first (over the version they were decided on), so that no later
    // reconcile works from a status that does not know them (and raises the canary's weight or replicas
    // again after a rollback), and a replica that is no longer the leader, whose write fails, acts on none
    let mut recorded = None;
    let newly_final =
        previous.is_none_or(|p| p.phase != decision.release.phase || p.revision != decision.release.revision);
    let rolled_back = matches!(decision.release.phase, Phase::RolledBack | Phase::Aborted) && newly_final;
    let raised = decision.release.weight > previous.map_or(0, |p| p.weight);
    let promoting = decision.update_target && previous.is_none_or(|p| p.phase != Phase::Promoting);
    if rolled_back || raised || promoting {
        recorded = Some(record_decision(canary, &decision.release, ctx).await?);
    }
    for verdict in &decision.judged {
        ctx.metrics.count_verdict(*verdict);
    }
    notes.append(&mut decision.notes);

    // the routes: the Kanary first, so that a rollback takes traffic from the canary before anything else
    let mut desired_kanary = traffic::build_kanary(canary, resource, traffic, decision.release.weight);
    // applied only to the Kanary read (and checked as ours) above
    desired_kanary.metadata.uid = kanary.as_ref().and_then(|k| k.metadata.uid.clone());
    let kanary_current = kanary.as_ref().map(|k| (&k.data["spec"]["destination"], &k.data["spec"]["routes"]));
    let kanary_desired = (&desired_kanary.data["spec"]["destination"], &desired_kanary.data["spec"]["routes"]);
    if kanary_current != Some(kanary_desired) {
        let written = match &kanary {
            Some(_) => {
                children::apply::<_, PartialObjectMeta<DynamicObject>>(&kanaries, &desired_kanary).await.map(|_| ())
            }
            None => {
                children::create::<_, PartialObjectMeta<DynamicObject>>(&kanaries, &desired_kanary).await.map(|_| ())
            }
        };
        written.map_err(|e| Error::ApplyRelease("Kanary", name.clone(), e))?;
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let mut route_services = vec![
        (traffic::build_stable_service(canary, &port), seen.stable_service.as_deref()),
        (traffic::build_canary_service(canary, user, &port), seen.canary_service.as_deref()),
    ];
    if traffic.baseline {
        route_services.push((traffic::build_baseline_service(canary, user, &port), seen.baseline_service.as_deref()));
    }
    for (desired, cached) in route_services {
        let desired = children::with_desired_hash(desired);
        let cached = cached.map(|c| c.to_service());
        let service_name = desired.name_any();
        children::write::<_, PartialObjectMeta<Service>, _>(
            &services,
            &desired,
            cached.as_ref(),
            cached.is_some(),
            &ctx.caches.services,
        )
        .await
        .map_err(|e| Error::ApplyRelease("Service", service_name, e))?;
    }
    let marked_slices = [seen.canary_slices.as_slice(), seen.baseline_slices.as_slice()].concat();
    // the stable route's slices: IPv4 always (the name it always had), IPv6 when the user's Service has
    // IPv6 endpoints (or had: kept current)
    let stable_slices = [("IPv4", seen.stable_slice.as_deref()), ("IPv6", seen.stable_slice_v6.as_deref())];
    for (family, slice_cached) in stable_slices {
        if family == "IPv6" && slice_cached.is_none() && !traffic::has_family(&seen.service_slices, family) {
            continue;
        }
        let built = traffic::build_stable_slice(canary, &port, family, &seen.service_slices, &marked_slices);
        let mut slice = children::with_desired_hash(built);
        // applied only to the slice checked as ours
        slice.metadata.uid = slice_cached.and_then(|c| c.metadata.uid.clone());
        let slice_current = slice_cached.is_some_and(|c| {
            c.desired_hash() == children::desired_hash(&slice.metadata) && c.endpoints.len() == slice.endpoints.len()
        });
        if slice_current {
            continue;
        }
        // the cache keeps a compact slice, compared above: written as a child with no cached copy
        let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
        let slice_name = slice.name_any();
        children::write::<_, PartialObjectMeta<EndpointSlice>, _>(
            &slices,
            &slice,
            None,
            slice_cached.is_some(),
            &ctx.caches.endpoint_slices,
        )
        .await
        .map_err(|e| Error::ApplyRelease("EndpointSlice", slice_name, e))?;
    }
    if traffic.baseline {
        let replicas = if decision.canary_scaled_down() { 0 } else { replicas };
        notes.extend(apply_baseline(canary, &valid.target, replicas, baseline.as_ref(), ctx).await?);
    } else {
        notes.extend(remove_baseline(canary, seen, ctx).await?);
    }
    if decision.update_target {
        update_target(canary, &valid.target, ctx).await?;
        notes.push(Note::normal(
            crate::names::canary::reasons::PROMOTING,
            format!("set the images of Deployment {:?} to {}", spec.target_deployment_name, decision.release.revision),
        ));
    }
    Ok(Ok((decision, recorded)))
}

/// Writes a decided release into the Canary's status over the version it was decided on, before anything
/// acts on it: the whole release, or, should the API server refuse that, the release without its evidence
/// (the decision itself must be kept); the status written and the Canary's new resourceVersion.
async fn record_decision(
    canary: &Canary,
    release: &ReleaseStatus,
    ctx: &Context<CanaryReconciler>,
) -> Result<Recorded, Error> {
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &canary.namespace().unwrap_or_default());
    let mut status = canary.status.clone().unwrap_or_default();
    status.release = Some(release.clone());
    let rv = canary.resource_version();
    let written = match write_status(&api, &canary.name_any(), &status, rv.as_deref()).await {
        Err(Error::ApplyStatus(e)) if e.is_refused() => {
            tracing::warn!(error = %e, "the release's status was refused; recording it without its evidence");
            let mut bare = release.clone();
            bare.evidence.clear();
            bare.message = crate::report::bounded(&bare.message, 256);
            status.release = Some(bare);
            write_status(&api, &canary.name_any(), &status, rv.as_deref()).await
        }
        written => written,
    };
    ctx.reconciler.wrote(canary, written.as_ref().ok().and(status.release.as_ref()));
    Ok(Recorded { resource_version: written?, status })
}

/// A release written by [`record_decision`].
struct Recorded {
    resource_version: Option<String>,
    status: CanaryStatus,
}

/// Writes the baseline Deployment (`replicas` of the target's pod template) unless the cache shows it as
/// desired; the event of its creation.
async fn apply_baseline(
    canary: &Canary,
    target: &Deployment,
    replicas: i32,
    cached: Option<&Deployment>,
    ctx: &Context<CanaryReconciler>,
) -> Result<Option<Note>, Error> {
    let ns = canary.namespace().unwrap_or_default();
    let desired = children::with_desired_hash(build_baseline_deployment(canary, target, replicas));
    let name = desired.name_any();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let written = children::write::<_, PartialObjectMeta<Deployment>, _>(
        &deployments,
        &desired,
        cached,
        cached.is_some(),
        &ctx.caches.deployments,
    )
    .await
    .map_err(|e| Error::ApplyRelease("Deployment", name.clone(), e))?;
    Ok(matches!(written, Written::Created(_)).then(|| {
        let message = format!("created Deployment {name:?}: the target's pods, for canary-versus-baseline checks");
        Note::normal(crate::names::canary::reasons::BASELINE_CREATED, message)
    }))
}

/// Deletes the baseline Deployment and Service this Canary owns, once `traffic.baseline` is unset.
async fn remove_baseline(
    canary: &Canary,
    seen: &TrafficObserved,
    ctx: &Context<CanaryReconciler>,
) -> Result<Option<Note>, Error> {
    let ns = canary.namespace().unwrap_or_default();
    let uid = canary.uid().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let mut removed = vec![];
    removed.extend(delete_owned(&deployments, "Deployment", seen.baseline.as_deref(), &uid).await?);
    removed.extend(delete_owned(&services, "Service", seen.baseline_service.as_deref(), &uid).await?);
    Ok((!removed.is_empty()).then(|| {
        let message = format!("spec.traffic.baseline unset: deleted {}", removed.join(", "));
        Note::normal(crate::names::canary::reasons::BASELINE_REMOVED, message)
    }))
}

/// Deletes what a release made (its Kanary, whose proxy goes with it, the route Services, the stable
/// EndpointSlice and the baseline) once `spec.traffic` is removed: the Canary is then the original one again (its status
/// drops `release`). Only what this Canary owns; the event lists what went.
async fn remove_release(canary: &Canary, ctx: &Context<CanaryReconciler>) -> Result<Option<Note>, Error> {
    let ns = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let uid = canary.uid().unwrap_or_default();
    let mut removed = vec![];
    if let Some(resource) = &ctx.reconciler.kanary {
        let kanaries: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, resource);
        let kanary = kanaries.get_opt(&name).await.map_err(|e| Error::ReadKanary(name.clone(), e))?;
        removed.extend(delete_owned(&kanaries, "Kanary", kanary.as_ref(), &uid).await?);
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let route_services = [
        crate::names::stable_service_name(&name),
        crate::names::canary_service_name(&name),
        crate::names::baseline_service_name(&name),
    ];
    for service in route_services {
        let cached = ctx.caches.services.get(&ns, &service);
        removed.extend(delete_owned(&services, "Service", cached.as_deref(), &uid).await?);
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let baseline = ctx.caches.deployments.get(&ns, &baseline_deployment_name(&canary.spec.target_deployment_name));
    removed.extend(delete_owned(&deployments, "Deployment", baseline.as_deref(), &uid).await?);
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    for family in crate::names::FAMILIES {
        let cached = ctx.caches.endpoint_slices.get(&ns, &crate::names::stable_slice_name(&name, family));
        removed.extend(delete_owned(&slices, "EndpointSlice", cached.as_deref(), &uid).await?);
    }
    Ok((!removed.is_empty()).then(|| {
        Note::normal(
            crate::names::canary::reasons::RELEASE_REMOVED,
            format!("spec.traffic removed: deleted {}; the canary runs without a release", removed.join(", ")),
        )
    }))
}

/// Deletes `object` (a `kind` of the release) when the Canary `uid` owns it; what went (`Service "web-stable"`).
async fn delete_owned<K>(
    api: &Api<K>,
    kind: &'static str,
    object: Option<&impl Resource>,
    uid: &str,
) -> Result<Option<String>, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(object) = object.filter(|o| children::owned_by(*o, uid)) else { return Ok(None) };
    let name = object.meta().name.clone().unwrap_or_default();
    let deleted = children::delete(api, &name, object.meta().uid.as_deref().unwrap_or_default()).await;
    let deleted = deleted.map_err(|e| Error::RemoveRelease(kind, name.clone(), e))?;
    Ok(deleted.then(|| format!("{kind} {name:?}")))
}

/// The most bytes of a webhook's answer read (only its status and an excerpt of its body are used).
const WEBHOOK_ANSWER_BYTES: usize = 64 * 1024;

/// Calls a webhook step: `Ok("HTTP 200")` for a 2xx answer, else why it did not pass.
async fn call_webhook(call: &release::Call) -> Result<String, String> {
    let body = serde_json::to_vec(&call.body).unwrap_or_default();
    match http::post(&call.url, "application/json", body, None, call.timeout, WEBHOOK_ANSWER_BYTES).await {
        Ok((status, _)) if status.is_success() => Ok(format!("HTTP {}", status.as_u16())),
        Ok((status, body)) => {
            let text = egress::excerpt(String::from_utf8_lossy(&body).trim(), 200);
            Err(format!("HTTP {}: {text}", status.as_u16()))
        }
        Err(e) => Err(egress::excerpt(&e.to_string(), 400)),
    }
}

/// How long a PromQL query may take, unless its check says (`prometheus.timeout`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Both queries of a `compare` check over the last `window`, a sample a second (fewer over a window longer
/// than [`statistics::MAX_SAMPLES`] seconds: at most that many).
async fn read_samples(
    asked: &prometheus::Query<'_>,
    baseline: &str,
    window: Duration,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let step = Duration::from_secs(1).max(window / super::statistics::MAX_SAMPLES as u32);
    let range = |promql| async move {
        let asked = prometheus::Query { promql, ..*asked };
        prometheus::run_range(&asked, window, step).await.map_err(|e| e.to_string())
    };
    Ok((range(asked.promql).await?, range(baseline).await?))
}

/// The bearer token a check names (`prometheus.tokenSecretRef`), read from its Secret in `ns`; why not, with
/// the fix.
async fn read_token(client: &Client, ns: &str, secret: &SecretKeyRef) -> Result<String, String> {
    let field = "prometheus.tokenSecretRef";
    let (name, key) = (&secret.name, &secret.key);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    match secrets.get_opt(name).await {
        Ok(Some(found)) => match found.data.as_ref().and_then(|d| d.get(key)) {
            Some(token) => Ok(String::from_utf8_lossy(&token.0).into_owned()),
            None => Err(format!("{field}: Secret {name:?} has no key {key:?}: fix the key")),
        },
        Ok(None) => Err(format!("{field}: Secret {name:?} not found in namespace {ns:?}: create it or fix the name")),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
            "{field}: the controller may not read Secret {name:?}: grant it `get` on that Secret (a Role with \
             resourceNames: [{name}] bound to its ServiceAccount)"
        )),
        Err(e) => Err(format!("{field}: reading Secret {name:?}: {e}")),
    }
}

/// Runs the PromQL queries of the Canary's checks (by index; `None` for the proxy's metrics), at the end of
/// a window; `default_address`: the controller's `--prometheus-address`.
async fn run_queries(canary: &Canary, default_address: Option<&str>, client: &Client) -> Vec<Option<release::Queried>> {
    let settings = release::Settings::of(&canary.spec);
    let ns = canary.namespace().unwrap_or_default();
    let target = &canary.spec.target_deployment_name;
    let canary_deployment = canary_deployment_name(target);
    let baseline = baseline_deployment_name(target);
    let interval = format!("{}s", settings.interval.as_secs().max(1));
    let mut variables = vec![
        ("namespace", ns.as_str()),
        ("target", target.as_str()),
        ("canary", canary_deployment.as_str()),
        ("interval", interval.as_str()),
    ];
    let with_baseline = canary.spec.traffic.as_ref().is_some_and(|t| t.baseline);
    if with_baseline {
        variables.push(("baseline", baseline.as_str()));
    }
    let render = |template: &str| {
        prometheus::render(template, &variables).map_err(|e| match with_baseline || !e.contains("\"baseline\"") {
            true => e,
            false => format!("{e} ({{{{ baseline }}}} needs spec.traffic.baseline: true)"),
        })
    };
    let mut answers = vec![];
    for check in &settings.checks {
        let Some(metric) = &check.prometheus else {
            answers.push(None);
            continue;
        };
        let no_data = |query: String, why: String| release::Queried { query, value: Err(why), samples: None };
        let query = match render(&metric.query) {
            Ok(query) => query,
            Err(e) => {
                answers.push(Some(no_data(metric.query.clone(), format!("prometheus.query: {e}"))));
                continue;
            }
        };
        let Some(address) = metric.address.as_deref().or(default_address) else {
            let why = "no Prometheus address: set prometheus.address, or the controller's --prometheus-address";
            answers.push(Some(no_data(query, why.into())));
            continue;
        };
        let token = match &metric.token_secret_ref {
            None => None,
            Some(secret) => match read_token(client, &ns, secret).await {
                Ok(token) => Some(token),
                Err(why) => {
                    answers.push(Some(no_data(query, why)));
                    continue;
                }
            },
        };
        let timeout = metric.timeout.as_deref().and_then(release::duration).unwrap_or(QUERY_TIMEOUT);
        let asked = prometheus::Query { address, promql: &query, token: token.as_deref(), timeout };
        let answer = match &metric.compare {
            None => {
                let value = match prometheus::run(&asked).await {
                    Ok(prometheus::Outcome::Value(v)) => Ok(v),
                    Ok(prometheus::Outcome::NoData(why)) => Err(why),
                    Err(e) => Err(e.to_string()),
                };
                release::Queried { query: query.clone(), value, samples: None }
            }
            Some(compare) => {
                let baseline = render(&compare.baseline_query);
                let samples = match &baseline {
                    Ok(baseline) => read_samples(&asked, baseline, settings.interval).await,
                    Err(e) => Err(format!("prometheus.compare.baselineQuery: {e}")),
                };
                let baseline = baseline.unwrap_or_else(|_| compare.baseline_query.clone());
                let samples = release::Samples { baseline_query: baseline, values: samples };
                release::Queried { query: query.clone(), value: Ok(0.0), samples: Some(samples) }
            }
        };
        answers.push(Some(answer));
    }
    answers
}

/// The problem an object of the release poses when it exists and this Canary (`uid`) does not own it.
fn not_owned<K: Resource>(kind: &'static str, object: Option<&K>, uid: &str) -> Option<Problem> {
    let object = object.filter(|o| !children::owned_by(*o, uid))?;
    Some(Problem::ReleaseObjectNotOwned { kind, name: object.meta().name.clone().unwrap_or_default() })
}

/// Sets the target's containers' images to the canary's, with a field manager of its own (server-side apply,
/// forced: the promotion takes those fields over; see [`promotion_patch`]).
async fn update_target(canary: &Canary, target: &Deployment, ctx: &Context<CanaryReconciler>) -> Result<(), Error> {
    let ns = canary.namespace().unwrap_or_default();
    let name = &canary.spec.target_deployment_name;
    let patch = promotion_patch(target, canary);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PatchParams::apply(PROMOTION_FIELD_MANAGER).force();
    deployments.patch(name, &params, &Patch::Apply(&patch)).await.map_err(|e| Error::UpdateTarget(name.clone(), e))?;
    Ok(())
}

/// The canary's replicas: the Canary's `replicas`, else the target's.
fn canary_replicas(canary: &Canary, target: &Deployment) -> i32 {
    canary.spec.replicas.or_else(|| target.spec.as_ref().and_then(|s| s.replicas)).unwrap_or(1)
}

/// Whether the target's pod template runs every image the Canary names.
fn runs_images(target: &Deployment, spec: &crate::api::canary::CanarySpec) -> bool {
    let containers = target.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|p| p.containers.as_slice());
    spec.target_containers.iter().all(|wanted| {
        containers
            .unwrap_or_default()
            .iter()
            .any(|c| c.name == wanted.name && c.image.as_deref() == Some(wanted.image.as_str()))
    })
}

/// Whether a Deployment's rollout is complete: its controller saw the current spec, and `replicas` (default:
/// its own) replicas run it, ready, with no old one left.
fn rolled_out(deployment: &Deployment, replicas: Option<i32>) -> bool {
    let wanted = replicas.or_else(|| deployment.spec.as_ref().and_then(|s| s.replicas)).unwrap_or(1);
    let Some(status) = &deployment.status else { return false };
    status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.ready_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) <= status.updated_replicas.unwrap_or(0)
}

/// Why the canary Deployment was not written.
enum ApplyFailure {
    /// The API server rejected it (422 or 400): a problem of the Canary, reported in its status.
    Rejected(String),
    Failed(Error),
}
use ApplyFailure::{Failed, Rejected};

/// Writes the canary Deployment (scaled to 0 once its release is over) unless the cache shows it as desired;
/// returns the event it calls for and the Deployment as it is now.
async fn apply_canary(
    deployments: &Api<Deployment>,
    canary: &Canary,
    valid: &Valid,
    scaled_down: bool,
    ctx: &Context<CanaryReconciler>,
) -> Result<(Option<Note>, Deployment), ApplyFailure> {
    let mut desired = build_deployment(canary, &valid.target);
    if scaled_down && let Some(spec) = desired.spec.as_mut() {
        spec.replicas = Some(0);
    }
    let desired = children::with_desired_hash(desired);
    let name = desired.name_any();
    let (cached, exists) = (valid.owned.as_ref(), valid.owned.is_some());
    match children::write(deployments, &desired, cached, exists, &ctx.caches.deployments).await {
        Ok(Written::Unchanged) => Ok((None, valid.owned.clone().expect("unchanged: cached"))),
        Ok(Written::Created(d)) => Ok((Some(Note::normal("CanaryCreated", format!("created Deployment {name:?}"))), d)),
        Ok(Written::Applied(d)) => {
            let changed = valid.owned.as_ref().and_then(|o| o.metadata.generation) != d.metadata.generation;
            Ok((changed.then(|| Note::normal("CanaryUpdated", format!("updated Deployment {name:?}"))), d))
        }
        // someone created it since the cache was written (we did, or someone else): once the cache has it,
        // the next reconcile applies it or reports whose it is
        Ok(Written::AlreadyExists) => Err(Failed(Error::NotCachedYet(name))),
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => Err(Rejected(e.message)),
        Err(e) if valid.owned.is_some() => Err(Failed(Error::ApplyDeployment(name, e))),
        Err(e) => Err(Failed(Error::CreateDeployment(name, e))),
    }
}

/// Deletes the canary Deployments this Canary owns under another name than its current one (made for a
/// previous `targetDeploymentName`): they would otherwise keep running and take a share of the old target's
/// traffic.
async fn remove_previous_canaries(
    canary: &Canary,
    deployments: &Api<Deployment>,
    others: &[Arc<CachedDeployment>],
    ctx: &Context<CanaryReconciler>,
) -> Result<(), Error> {
    let uid = canary.uid().unwrap_or_default();
    for old in others.iter().filter(|d| children::owned_by(d.as_ref(), &uid)) {
        let old_name = old.name_any();
        let old_uid = old.uid().unwrap_or_default();
        let deleted = children::delete(deployments, &old_name, &old_uid).await;
        if deleted.map_err(|e| Error::DeletePreviousCanary(old_name.clone(), e))? {
            let note = format!(
                "deleted Deployment {old_name:?}: this Canary now targets {:?}",
                canary.spec.target_deployment_name
            );
            ctx.publish(&canary.object_ref(&()), [Note::normal("PreviousCanaryDeleted", note)]).await;
        }
    }
    Ok(())
}

async fn write_status(
    api: &Api<Canary>,
    name: &str,
    status: &CanaryStatus,
    rv: Option<&str>,
) -> Result<Option<String>, Error> {
    let manager = crate::names::FIELD_MANAGER;
    Ok(crate::report::write_status(manager, api, name, &Canary::api_version(&()), &Canary::kind(&()), status, rv)
        .await?)
}

/// The names a Canary refers to: its target and its canary Deployment; with traffic, the user's Service, the
/// route Services, the front Service (whose EndpointSlices are the proxy's pods) and the baseline.
fn deployments_of(guarded: &GuardedCanary) -> Vec<String> {
    let Ok(canary) = &guarded.0 else { return vec![] };
    let target = &canary.spec.target_deployment_name;
    let mut names = vec![target.clone(), canary_deployment_name(target)];
    if let Some(t) = &canary.spec.traffic {
        let name = canary.name_any();
        names.extend([t.service.clone(), t.front_service.clone()]);
        names.extend([crate::names::stable_service_name(&name), crate::names::canary_service_name(&name)]);
        names.extend([crate::names::baseline_service_name(&name), baseline_deployment_name(target)]);
    }
    names
}

/// The metadata of a Canary as read, whether or not its spec deserialized.
fn metadata(guarded: &GuardedCanary) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    match &guarded.0 {
        Ok(canary) => &canary.metadata,
        Err(unreadable) => &unreadable.metadata,
    }
}

/// What a reconcile of a Canary depends on in the object itself: its spec (generation) and the release
/// request annotation (people's requests wake the release at once).
fn spec_or_request(guarded: &GuardedCanary) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let meta = metadata(guarded);
    meta.generation.hash(&mut hasher);
    meta.annotations.as_ref().and_then(|a| a.get(crate::names::REQUEST_ANNOTATION)).hash(&mut hasher);
    Some(hasher.finish())
}

/// The Canaries an object named `name` (a Deployment, a Service, or an EndpointSlice by its Service's name)
/// matters to: its controller (unless the event is the echo of the controller's own write) and those that
/// refer to the name (targets, canary Deployments, the Services of releases).
fn canaries_for(
    object: &impl Resource,
    name: &str,
    echo: bool,
    references: &References<GuardedCanary>,
) -> Vec<ObjectRef<GuardedCanary>> {
    let ns = object.namespace().unwrap_or_default();
    let is_owner = |r: &OwnerReference| r.kind == "Canary" && r.api_version.starts_with("canary.k8s.wantedly.com/");
    let names = references.woken_by(object, Some(name), is_owner, echo);
    names.iter().map(|n| ObjectRef::new(n).within(&ns)).collect()
}

/// Runs the Canary controller until `shutdown` completes.
pub async fn run(
    client: Client,
    scope: &crate::runtime::Scope,
    caches: Arc<Caches>,
    reconciler: CanaryReconciler,
    metrics: Arc<crate::runtime::telemetry::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let references = Arc::new(References::new(deployments_of));
    let controller = crate::runtime::triggers::controller(
        scope.api::<GuardedCanary>(&client),
        (),
        references.clone(),
        spec_or_request,
    );
    metrics.observe_canaries(controller.store());
    let ctx = Arc::new(Context::new(client, caches.clone(), controller.store(), (), metrics, reconciler));
    let (c1, c2, c3) = (caches.clone(), caches.clone(), caches.clone());
    let (r1, r2, r3) = (references.clone(), references.clone(), references);
    let controller = controller
        .watches_shared_stream(caches.deployments.subscribe(), move |d| {
            canaries_for(d.as_ref(), &d.name_any(), c1.deployments.is_echo(&d), &r1)
        })
        .watches_shared_stream(caches.services.subscribe(), move |svc| {
            canaries_for(svc.as_ref(), &svc.name_any(), c2.services.is_echo(&svc), &r2)
        })
        .watches_shared_stream(caches.endpoint_slices.subscribe(), move |slice| {
            match slice.labels.get(crate::names::SERVICE_NAME_LABEL) {
                Some(service) => canaries_for(slice.as_ref(), service, c3.endpoint_slices.is_echo(&slice), &r3),
                None => vec![],
            }
        });
    reconciler::run(controller, ctx, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_that_does_not_show_the_last_release_written_is_waited_for() {
        let canary = |phase: &str| -> Canary {
            serde_json::from_value(serde_json::json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1",
                "kind": "Canary", "metadata": {"name": "a", "namespace": "ns", "uid": "u"},
                "spec": {"targetDeploymentName": "app", "targetContainers": []},
                "status": {"release": {"revision": "r", "phase": phase, "step": 0, "weight": 0}}}))
            .unwrap()
        };
        let reconciler = CanaryReconciler::new(None, None);
        assert!(!reconciler.cache_behind(&canary("Progressing")), "nothing written yet: the cache is believed");
        let rolled_back = canary("RolledBack");
        // written with a time finer than the API keeps
        let mut written = rolled_back.status.as_ref().and_then(|s| s.release.clone()).unwrap();
        let at = k8s_openapi::jiff::Timestamp::from_nanosecond(1_800_000_000_123_456_789).unwrap();
        written.step_started_at = Some(Time(at));
        reconciler.wrote(&rolled_back, Some(&written));
        let mut rolled_back = rolled_back;
        let second = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        rolled_back.status.as_mut().unwrap().release.as_mut().unwrap().step_started_at = Some(Time(second));
        assert!(reconciler.cache_behind(&canary("Progressing")), "the cache does not show the rollback yet");
        assert!(!reconciler.cache_behind(&rolled_back), "caught up");
        assert!(!reconciler.cache_behind(&canary("Progressing")), "caught up once: then believed");
        reconciler.wrote(&rolled_back, None);
        assert!(!reconciler.cache_behind(&canary("Progressing")), "a failed write waits for nothing");
    }

    #[tokio::test]
    async fn what_is_kept_of_deleted_canaries_is_pruned() {
        // suspicion: the map of last release writes kept the entries of deleted Canaries (a slow leak)
        let reconciler = CanaryReconciler::new(None, None);
        let canary = |uid: &str| -> Canary {
            serde_json::from_value(serde_json::json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1",
                "kind": "Canary", "metadata": {"name": uid, "namespace": "ns", "uid": uid},
                "spec": {"targetDeploymentName": "app", "targetContainers": []}}))
            .unwrap()
        };
        let release = ReleaseStatus { revision: "r".into(), ..Default::default() };
        for uid in ["gone", "kept"] {
            reconciler.wrote(&canary(uid), Some(&release));
            reconciler.gatherer.poll(uid, "k", std::future::pending);
        }
        reconciler.prune(|| ["kept".to_string()].into());
        assert_eq!(reconciler.written.lock().unwrap().keys().collect::<Vec<_>>(), ["kept"]);
        assert_eq!(reconciler.gatherer.len(), 1);
    }

    #[test]
    fn an_echo_of_its_own_write_does_not_wake_the_owner_but_wakes_the_canaries_targeting_it() {
        let canary = |name: &str, target: &str| -> GuardedCanary {
            serde_json::from_value(
                serde_json::json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"targetDeploymentName": target, "targetContainers": []}}),
            )
            .unwrap()
        };
        let references = References::new(deployments_of);
        references.apply(&kube::runtime::watcher::Event::Apply(canary("a", "app")));
        references.apply(&kube::runtime::watcher::Event::Apply(canary("b", "app-canary")));
        let deployment: Deployment = serde_json::from_value(serde_json::json!({"metadata": {"name": "app-canary",
            "namespace": "ns", "ownerReferences": [{"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
            "name": "a", "uid": "u", "controller": true}]}}))
        .unwrap();
        let deployment = CachedDeployment::from(deployment);
        let names = |refs: Vec<ObjectRef<GuardedCanary>>| refs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(canaries_for(&deployment, "app-canary", false, &references)), ["a", "b"]);
        assert_eq!(
            names(canaries_for(&deployment, "app-canary", true, &references)),
            ["b"],
            "a wrote it; b targets it"
        );
    }
}
