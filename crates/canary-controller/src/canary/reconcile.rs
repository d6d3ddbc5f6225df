//! The Canary controller's reconcile, one pass in the order of its steps:
//! 1. **observe** (`observe`): the target, the canary Deployment and, with `traffic`, the release's Kanary,
//!    Services, EndpointSlices and baseline, all from the shared caches (no API reads);
//! 2. **validate** (`validate`): a [`Valid`] Canary (whose release can go on, or holds with a problem) or
//!    the [`Problem`] that keeps it from being served;
//! 3. **build** (`build`): the release's next move, decided by the pure release machine (`release`) with
//!    the evidence it asks for (`evidence`, gathered off the reconcile), then everything the Canary should
//!    own as one `Desired` value;
//! 4. **apply** (`apply`): a decision that matters recorded in the status first (a decision is durable
//!    before it acts), then the children written in order and those no longer wanted deleted;
//! 5. **status**: written when it changed, and the events recorded.
//!
//! A Canary that cannot be read is reported. The skeleton around it (context, metrics, error policy) is
//! `runtime::reconciler`; what wakes a reconcile is wired in `crate::operator`.

use super::apply::{ApplyError, apply};
use super::build::{build_desired, build_status, build_unreadable_status, canary_replicas, warnings};
use super::evidence::{self, Answer, Evidence, gather};
use super::observe::{Observed, observe};
use super::release::{self, Decision};
use super::traffic;
use super::validate::{Valid, validate};
use crate::api::canary::{Canary, CanaryStatus, Phase, ReleaseStatus};
use crate::names::canary::reasons;
use crate::names::{UNREADABLE_FIELD_MANAGER, canary_service_name, stable_service_name};
use crate::report::Note;
use crate::runtime::children::owned_by;
use crate::runtime::reconciler::{Context, Reconciler, Step};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Canary controller.
pub struct CanaryReconciler {
    /// The release this process last wrote in each Canary's status (by uid), as the API stores it (JSON:
    /// times in seconds), and when.
    written: Mutex<HashMap<String, (serde_json::Value, Instant)>>,
    /// The evidence releases asked for, gathered off the reconciles.
    evidence: Evidence,
    /// When `written` and `evidence` were last pruned of deleted Canaries.
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
    pub fn new(prometheus: Option<String>) -> CanaryReconciler {
        CanaryReconciler { written: Mutex::default(), evidence: Evidence::new(prometheus), pruned: Mutex::default() }
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

    /// The Canaries whose evidence was gathered, to reconcile at once (see [`Evidence::gathered`]).
    pub fn gathered(&self) -> Option<futures::channel::mpsc::UnboundedReceiver<(String, String)>> {
        self.evidence.gathered()
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
        self.evidence.retain(|uid| live.contains(uid));
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
/// Why a reconcile failed; the step it names is the metric label and the log field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Canary has no namespace")]
    NoNamespace,
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("writing the status: {0}")]
    ApplyStatus(#[from] crate::report::StatusWriteError),
}

impl Step for Error {
    fn step(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Error::NoNamespace => "NoNamespace".into(),
            Error::Apply(ApplyError::Child(e)) => e.step().into(),
            Error::Apply(ApplyError::UpdateTarget(..)) => "UpdateTarget".into(),
            Error::ApplyStatus(_) => "ApplyStatus".into(),
        }
    }

    fn waits_for_cache(&self) -> bool {
        matches!(self, Error::Apply(ApplyError::Child(e)) if e.waits_for_cache())
    }
}

/// A Canary as it is read from the API: one that does not deserialize is reported, not fatal to the others.
pub type GuardedCanary = DeserializeGuard<Canary>;

/// The metadata of a Canary as read, whether or not its spec deserialized.
pub fn metadata(guarded: &GuardedCanary) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    match &guarded.0 {
        Ok(canary) => &canary.metadata,
        Err(unreadable) => &unreadable.metadata,
    }
}

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
/// Reconciles one Canary: observe, validate, build, apply, status.
async fn reconcile(canary: &Canary, ctx: &Context<CanaryReconciler>) -> Result<Action, Error> {
    let ns = canary.namespace().ok_or(Error::NoNamespace)?;
    let reconciler = &ctx.reconciler;
    reconciler.prune(|| ctx.objects.state().iter().filter_map(|g| metadata(g).uid.clone()).collect());
    if reconciler.cache_behind(canary) {
        return Ok(Action::requeue(CACHE_WAIT));
    }

    // observe and validate
    let observed = observe(canary, &ctx.caches);
    let valid = validate(canary, &observed);

    // build: the release's move, then what the Canary should own
    let decision = valid.as_ref().ok().and_then(|valid| decide(canary, valid, &observed, ctx));
    let previous = canary.status.as_ref().and_then(|s| s.release.as_ref());
    let release = match (&canary.spec.traffic, &decision) {
        (None, _) => None,
        (Some(_), Some(decision)) => Some(decision.release.clone()),
        // a release that holds (a problem) stays where it was
        (Some(_), None) => previous.cloned(),
    };
    let scaled_down = release.as_ref().is_some_and(|r| r.phase.is_final());
    let desired = build_desired(canary, valid.as_ref(), &observed, decision.as_ref(), scaled_down);

    // apply: a decision that matters first, then the children
    let mut notes = vec![];
    let (mut resource_version, mut current_status) = (canary.resource_version(), canary.status.clone());
    if let Some(decision) = &decision {
        if must_record(decision, previous) {
            match record_decision(canary, &decision.release, ctx).await {
                // not recorded over the version it was decided on: decide again
                Err(Error::ApplyStatus(e)) if e.is_conflict() => return Ok(Action::requeue(CACHE_WAIT)),
                recorded => {
                    let recorded = recorded?;
                    (resource_version, current_status) = (recorded.resource_version, Some(recorded.status));
                }
            }
        }
        for verdict in &decision.judged {
            ctx.metrics.count_verdict(*verdict);
        }
        notes.extend(decision.notes.iter().cloned());
    }
    if canary.spec.traffic.is_none() && previous.is_some() {
        reconciler.evidence.forget(&canary.uid().unwrap_or_default());
    }
    let applied = apply(canary, &desired, &observed, &ctx.client, &ctx.caches).await?;
    notes.extend(applied.notes);

    // status
    let traffic_problem = valid.as_ref().ok().and_then(|v| v.traffic.as_ref()).and_then(|t| t.as_ref().err());
    let problem = applied.rejected.or_else(|| traffic_problem.cloned()).or_else(|| valid.as_ref().err().cloned());
    let deployment = match &valid {
        Ok(_) => applied.deployment,
        Err(_) => observed
            .existing
            .as_deref()
            .filter(|d| owned_by(*d, &canary.uid().unwrap_or_default()))
            .map(|d| d.to_deployment()),
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let target_found = observed.target.is_some();
    let status = build_status(canary, problem.as_ref(), target_found, deployment.as_ref(), release, &now);
    notes.extend(warnings(canary.status.as_ref(), &status, problem.as_ref()));
    ctx.publish(&canary.object_ref(&()), notes).await;
    if current_status.as_ref() != Some(&status) {
        let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &ns);
        // a release is only written over the version it was decided on
        let precondition = status.release.as_ref().and(resource_version);
        let written = write_status(&api, &canary.name_any(), &status, precondition.as_deref()).await;
        reconciler.wrote(canary, written.as_ref().ok().and(status.release.as_ref()));
        match written {
            Err(Error::ApplyStatus(e)) if e.is_conflict() => return Ok(Action::requeue(CACHE_WAIT)),
            written => {
                written?;
            }
        }
    }
    let requeue = decision.map_or(IDLE, |d| d.requeue.min(IDLE));
    Ok(Action::requeue(requeue))
}

/// How soon a Canary with nothing to wait for is looked at again.
const IDLE: Duration = Duration::from_secs(600);

/// The release's next move, when it can go on: the pure release machine ([`release::advance`]) on what the
/// caches show, and again with the evidence it asks for once [`evidence`] gathered it (off the reconcile;
/// until then the release waits and looks again). `None`: no release, or one that holds (a problem).
fn decide(canary: &Canary, valid: &Valid, observed: &Observed, ctx: &Context<CanaryReconciler>) -> Option<Decision> {
    let Some(Ok(traffic)) = &valid.traffic else { return None };
    let seen = &observed.release;
    let (spec, name, ns) = (&canary.spec, canary.name_any(), canary.namespace().unwrap_or_default());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let replicas = canary_replicas(canary, &valid.target);
    let pods_ready = |d: Option<&Deployment>| d.is_some_and(|d| rolled_out(d, Some(replicas)));
    let baseline = seen.baseline.as_deref().map(|b| b.to_deployment());
    let baseline_ready = !traffic.traffic.baseline || pods_ready(baseline.as_ref());
    let kanary = seen.kanary.as_ref().and_then(|k| k.as_deref());
    let inputs = release::Inputs {
        name: &name,
        namespace: &ns,
        revision: release::revision(spec),
        target_runs_revision: runs_images(&valid.target, spec),
        target_rolled_out: rolled_out(&valid.target, None),
        canary_ready: pods_ready(valid.owned.as_ref()) && baseline_ready,
        served_weight: kanary.and_then(traffic::served_weight),
        stats: None,
        queried: None,
        called: None,
        latencies: None,
        request: canary.annotations().get(crate::names::REQUEST_ANNOTATION).map(String::as_str),
        paused: spec.paused,
        now: &now,
    };
    let previous = canary.status.as_ref().and_then(|s| s.release.as_ref());
    let mut decision = release::advance(spec, previous, &inputs);
    let Some(need) = &decision.need else { return Some(decision) };
    let sources = evidence::Sources {
        proxy_pods: traffic::proxy_pods(&seen.front_slices),
        stable_route: stable_service_name(&name),
        canary_route: canary_service_name(&name),
        http: traffic.traffic.protocol == crate::api::kanary::Protocol::Http,
    };
    match ctx.reconciler.evidence.answer(need, canary, previous, sources, &ctx.client) {
        Answer::Gathered(gathered) => {
            let inputs = release::Inputs {
                stats: gathered.stats.as_ref().and_then(|s| s.as_ref().ok()),
                queried: gathered.queried.as_deref(),
                called: gathered.called.as_ref(),
                latencies: gathered.latencies.as_ref(),
                now: &gathered.at,
                ..inputs
            };
            let again = release::advance(spec, previous, &inputs);
            // a progress read that finished after its window ended judges nothing: the end is read for that
            if *need == release::Need::Progress && !again.judged.is_empty() {
                decision.requeue = gather::POLL;
            } else {
                decision = again;
            }
        }
        Answer::Pending => decision.requeue = decision.requeue.min(gather::POLL),
        // progress is for people: a proxy that cannot be read now is read again at the next tick
        Answer::Unavailable(why) if *need == release::Need::Progress => {
            tracing::debug!(error = %why, "cannot read the analysis window's progress; trying again");
        }
        Answer::Unavailable(why) => {
            decision.release.message = why;
            decision.requeue = decision.requeue.min(gather::POLL);
        }
    }
    Some(decision)
}

/// Whether a decision must be recorded before it acts: a rollback or an abort, a raised weight, a promotion.
/// Written into the status first (over the version it was decided on), no later reconcile works from a
/// status that does not know it (and raises the canary's weight or replicas again after a rollback), and a
/// replica that is no longer the leader, whose write fails, acts on none of them.
fn must_record(decision: &Decision, previous: Option<&ReleaseStatus>) -> bool {
    let now = &decision.release;
    let newly_final = previous.is_none_or(|p| p.phase != now.phase || p.revision != now.revision);
    let rolled_back = matches!(now.phase, Phase::RolledBack | Phase::Aborted) && newly_final;
    let raised = now.weight > previous.map_or(0, |p| p.weight);
    let promoting = decision.update_target && previous.is_none_or(|p| p.phase != Phase::Promoting);
    rolled_back || raised || promoting
}

/// How soon a reconcile that found its Canary stale (in the cache or at the status write) runs again.
const CACHE_WAIT: Duration = Duration::from_millis(200);
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
        let reconciler = CanaryReconciler::new(None);
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
        let reconciler = CanaryReconciler::new(None);
        let canary = |uid: &str| -> Canary {
            serde_json::from_value(serde_json::json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1",
                "kind": "Canary", "metadata": {"name": uid, "namespace": "ns", "uid": uid},
                "spec": {"targetDeploymentName": "app", "targetContainers": []}}))
            .unwrap()
        };
        let release = ReleaseStatus { revision: "r".into(), ..Default::default() };
        for uid in ["gone", "kept"] {
            reconciler.wrote(&canary(uid), Some(&release));
            reconciler.evidence.start_for_test(uid);
        }
        reconciler.prune(|| ["kept".to_string()].into());
        assert_eq!(reconciler.written.lock().unwrap().keys().collect::<Vec<_>>(), ["kept"]);
        assert_eq!(reconciler.evidence.len(), 1);
    }
}
