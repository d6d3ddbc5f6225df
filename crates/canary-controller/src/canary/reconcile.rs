//! The Canary controller's reconcile and its wiring. One pass, the same shape as the Kanary controller's:
//! `observe` (the shared Deployment cache: no API reads) -> `validate` (pure: a [`Valid`] Canary or a
//! [`Problem`]) -> `build` (pure: the canary Deployment, the events) -> apply (here: create the canary
//! Deployment when absent, server-side apply it when the cache does not show it as desired, delete the one
//! of a former target) -> status (here: written when it changed). A Canary that cannot be read is reported.

use super::build::{
    build_deployment, build_status, build_unreadable_status, canary_deployment_name, reasons, warnings,
};
use super::observe::observe;
use super::validate::{Problem, Valid, validate};
use crate::api::canary::{Canary, CanaryStatus};
use crate::children::{self, Written};
use crate::report::Note;
use crate::runtime::caches::{CachedDeployment, Caches};
use crate::runtime::index::References;
use crate::runtime::reconciler::{self, Context, Reconciler, Step};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::Api;
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// The Canary controller.
pub struct CanaryReconciler;

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
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), meta.namespace.as_deref().ok_or(Error::NoNamespace)?);
    write_status(&api, &name, &status).await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Reconciles one Canary.
async fn reconcile(canary: &Canary, ctx: &Context<CanaryReconciler>) -> Result<Action, Error> {
    let ns = canary.namespace().ok_or(Error::NoNamespace)?;
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
    if let Ok(valid) = &valid {
        match apply_canary(&deployments, canary, valid, ctx).await {
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
    let status = build_status(canary, problem.as_ref(), observed.target.is_some(), canary_deployment.as_ref(), &now);
    notes.extend(warnings(canary.status.as_ref(), &status, problem.as_ref()));
    ctx.publish(&canary.object_ref(&()), notes).await;
    if canary.status.as_ref() != Some(&status) {
        let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &ns);
        write_status(&api, &canary.name_any(), &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Why the canary Deployment was not written.
enum ApplyFailure {
    /// The API server rejected it (422 or 400): a problem of the Canary, reported in its status.
    Rejected(String),
    Failed(Error),
}
use ApplyFailure::{Failed, Rejected};

/// Writes the canary Deployment unless the cache shows it as desired; returns the event it calls for and the
/// Deployment as it is now.
async fn apply_canary(
    deployments: &Api<Deployment>,
    canary: &Canary,
    valid: &Valid,
    ctx: &Context<CanaryReconciler>,
) -> Result<(Option<Note>, Deployment), ApplyFailure> {
    let desired = children::with_desired_hash(build_deployment(canary, &valid.target));
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

async fn write_status(api: &Api<Canary>, name: &str, status: &CanaryStatus) -> Result<(), Error> {
    Ok(crate::report::write_status(api, name, &Canary::api_version(&()), &Canary::kind(&()), status).await?)
}

/// The names a Canary refers to: its target and its canary Deployment.
fn deployments_of(guarded: &GuardedCanary) -> Vec<String> {
    let Ok(canary) = &guarded.0 else { return vec![] };
    let target = &canary.spec.target_deployment_name;
    vec![target.clone(), canary_deployment_name(target)]
}

/// The Canaries a Deployment matters to: its controller (unless the event is the echo of the controller's
/// own write), those targeting it, and those whose canary name it holds.
fn canaries_for(
    deployment: &CachedDeployment,
    echo: bool,
    references: &References<GuardedCanary>,
) -> Vec<ObjectRef<GuardedCanary>> {
    let ns = deployment.namespace().unwrap_or_default();
    let is_owner = |r: &OwnerReference| r.kind == "Canary" && r.api_version.starts_with("canary.k8s.wantedly.com/");
    let names = references.woken_by(deployment, Some(&deployment.name_any()), is_owner, echo);
    names.iter().map(|n| ObjectRef::new(n).within(&ns)).collect()
}

/// Runs the Canary controller until `shutdown` completes.
pub async fn run(
    client: Client,
    caches: Arc<Caches>,
    metrics: Arc<crate::runtime::telemetry::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let references = Arc::new(References::new(deployments_of));
    let controller = crate::runtime::triggers::controller(
        Api::<GuardedCanary>::all(client.clone()),
        (),
        references.clone(),
        kube::runtime::predicates::generation,
    );
    metrics.observe_canaries(controller.store());
    let ctx = Arc::new(Context::new(client, caches.clone(), controller.store(), (), metrics, CanaryReconciler));
    let cache = caches.clone();
    let controller = controller.watches_shared_stream(caches.deployments.subscribe(), move |d| {
        canaries_for(d.as_ref(), cache.deployments.is_echo(&d), &references)
    });
    reconciler::run(controller, ctx, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(names(canaries_for(&deployment, false, &references)), ["a", "b"]);
        assert_eq!(names(canaries_for(&deployment, true, &references)), ["b"], "a wrote it; b targets it");
    }
}
