//! The thin IO layer of the Canary controller: read the target and `<target>-canary` from the shared
//! Deployment cache (no API reads), validate, create the canary Deployment or server-side apply it, delete
//! the one of a former target, write the status when it changed, and record events on transitions. Also the
//! controller wiring: a watch of Canaries, and the shared Deployment cache's changes (mapped to the Canaries
//! that own them, target them, or want their name).

use super::build::{
    CANARY_LABEL, build_deployment, build_status, build_unreadable_status, canary_deployment_name, conditions, reasons,
};
use super::validate::{Problem, is_owned_by, validate};
use crate::api::canary::{Canary, CanaryStatus};
use crate::children::{self, Created};
use crate::report::publish;
use crate::runtime::caches::Caches;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

pub struct Context {
    pub client: Client,
    /// The Canaries, from the controller's own cache.
    pub canaries: Store<GuardedCanary>,
    /// The process's shared caches (the Canary controller reads Deployments: targets and canaries).
    pub caches: Arc<Caches>,
    pub metrics: Arc<crate::runtime::telemetry::Metrics>,
    pub recorder: Recorder,
    pub backoff: crate::runtime::backoff::ErrorBackoff,
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
}

impl Error {
    /// The step that failed: a stable label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::NoNamespace => "NoNamespace",
            Error::CreateDeployment(..) => "CreateDeployment",
            Error::ApplyDeployment(..) => "ApplyDeployment",
            Error::NotCachedYet(_) => "NotCachedYet",
            Error::DeletePreviousCanary(..) => "DeletePreviousCanary",
            Error::ApplyStatus(_) => "ApplyStatus",
        }
    }
}

/// A Canary as it is read from the API: one that does not deserialize is reported, not fatal to the others.
type GuardedCanary = DeserializeGuard<Canary>;

async fn measured_reconcile(guarded: Arc<GuardedCanary>, ctx: Arc<Context>) -> Result<Action, Error> {
    let reconcile = async {
        match &guarded.0 {
            Ok(canary) => reconcile(canary, &ctx).await,
            Err(unreadable) => report_unreadable(unreadable, &ctx).await,
        }
    };
    let result = ctx.metrics.measure("canary", reconcile, Error::category).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&ObjectRef::from_obj(guarded.as_ref()).to_string());
    }
    result
}

/// Reports a Canary that cannot be deserialized in its status and with a Warning event; changes nothing else.
async fn report_unreadable(unreadable: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
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
    publish(&ctx.recorder, &object_ref, EventType::Warning, reasons::INVALID_SPEC, message).await;
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), meta.namespace.as_deref().ok_or(Error::NoNamespace)?);
    patch_status(&api, &name, &status).await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Reconciles one Canary.
pub async fn reconcile(canary: &Canary, ctx: &Context) -> Result<Action, Error> {
    let ns = canary.namespace().ok_or(Error::NoNamespace)?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let target_name = &canary.spec.target_deployment_name;
    let name = canary_deployment_name(target_name);
    let target = ctx.caches.deployments.get(&ns, target_name);
    let existing = ctx.caches.deployments.get(&ns, &name);

    let mut owned = existing.as_deref().filter(|d| is_owned_by(d, canary)).cloned();
    let mut problem = validate(canary, target.as_deref(), existing.as_deref()).err();
    if let (None, Some(target)) = (&problem, &target) {
        let desired = children::with_desired_hash(build_deployment(canary, target));
        let written = match &owned {
            // absent: create, so that a Deployment someone else creates meanwhile is never taken over
            None => children::create(&deployments, &desired).await.map(|created| match created {
                Created::Created(d) => Some((Some(("CanaryCreated", format!("created Deployment {name:?}"))), d)),
                Created::AlreadyExists => None,
            }),
            // as desired already (the cache says so): nothing to write
            Some(before) if children::up_to_date(&desired, before) => Ok(Some((None, before.clone()))),
            Some(before) => children::apply(&deployments, &desired).await.map(|applied| {
                let changed = before.metadata.generation != applied.metadata.generation;
                Some((changed.then(|| ("CanaryUpdated", format!("updated Deployment {name:?}"))), applied))
            }),
        };
        match written {
            Ok(Some((event, deployment))) => {
                if let Some((reason, note)) = event {
                    publish(&ctx.recorder, &canary.object_ref(&()), EventType::Normal, reason, note).await;
                }
                owned = Some(deployment);
            }
            // someone created it since the cache was written (we did, or someone else): once the cache has
            // it, the next reconcile applies it or reports whose it is
            Ok(None) => return Err(Error::NotCachedYet(name)),
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                problem = Some(Problem::ApplyRejected { name: name.clone(), message: e.message });
            }
            Err(e) if owned.is_some() => return Err(Error::ApplyDeployment(name, e)),
            Err(e) => return Err(Error::CreateDeployment(name, e)),
        }
    }
    if spec_changed(canary) {
        remove_previous_canaries(canary, &deployments, &name, ctx).await?;
    }

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = build_status(canary, problem.as_ref(), target.is_some(), owned.as_ref(), &now);
    // a Warning event when a problem appears or changes, not on every reconcile
    if let Some(p) = &problem
        && ready_reason(canary.status.as_ref()) != Some(p.reason())
    {
        publish(&ctx.recorder, &canary.object_ref(&()), EventType::Warning, p.reason(), p.message()).await;
    }
    if canary.status.as_ref() != Some(&status) {
        write_status(&ctx.client, canary, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Whether the status describes an older spec (or another canary Deployment): then the target may have
/// changed, and canary Deployments of a previous target may be left over.
fn spec_changed(canary: &Canary) -> bool {
    let status = canary.status.as_ref();
    status.and_then(|s| s.observed_generation) != canary.metadata.generation
        || status.and_then(|s| s.canary_deployment.as_deref())
            != Some(canary_deployment_name(&canary.spec.target_deployment_name).as_str())
}

/// Deletes the canary Deployments this Canary owns under another name than `current` (made for a previous
/// `targetDeploymentName`): they would otherwise keep running and take a share of the old target's traffic.
async fn remove_previous_canaries(
    canary: &Canary,
    deployments: &Api<Deployment>,
    current: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let uid = canary.uid().unwrap_or_default();
    let ns = canary.namespace().unwrap_or_default();
    let marked = ctx.caches.deployments.labelled(&ns, CANARY_LABEL, "true");
    for old in marked.iter().filter(|d| d.name_any() != current && children::owned_by(d.as_ref(), &uid)) {
        let old_name = old.name_any();
        let old_uid = old.uid().unwrap_or_default();
        let deleted = children::delete(deployments, &old_name, &old_uid).await;
        if deleted.map_err(|e| Error::DeletePreviousCanary(old_name.clone(), e))? {
            let note = format!(
                "deleted Deployment {old_name:?}: this Canary now targets {:?}",
                canary.spec.target_deployment_name
            );
            publish(&ctx.recorder, &canary.object_ref(&()), EventType::Normal, "PreviousCanaryDeleted", note).await;
        }
    }
    Ok(())
}

fn ready_reason(status: Option<&CanaryStatus>) -> Option<&str> {
    crate::conditions::reason_of(&status?.conditions, conditions::READY)
}

async fn write_status(client: &Client, canary: &Canary, status: &CanaryStatus) -> Result<(), Error> {
    let api: Api<Canary> = Api::namespaced(client.clone(), &canary.namespace().unwrap_or_default());
    patch_status(&api, &canary.name_any(), status).await
}

async fn patch_status(api: &Api<Canary>, name: &str, status: &CanaryStatus) -> Result<(), Error> {
    Ok(crate::report::write_status(api, name, &Canary::api_version(&()), &Canary::kind(&()), status).await?)
}

fn error_policy(canary: Arc<GuardedCanary>, error: &Error, ctx: Arc<Context>) -> Action {
    let live = ctx.canaries.state().iter().map(|c| ObjectRef::from_obj(c.as_ref()).to_string()).collect();
    let object = ObjectRef::from_obj(canary.as_ref()).to_string();
    ctx.backoff.retry(&object, &live, error, matches!(error, Error::NotCachedYet(_)))
}

/// The Canaries a Deployment matters to: its controller, those targeting it, and those whose canary name it holds.
fn canaries_for(store: &Store<GuardedCanary>, deployment: &impl Resource) -> Vec<ObjectRef<GuardedCanary>> {
    let ns = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let mut refs: Vec<ObjectRef<GuardedCanary>> = deployment
        .owner_references()
        .iter()
        .filter(|r| {
            r.controller == Some(true) && r.kind == "Canary" && r.api_version.starts_with("canary.k8s.wantedly.com/")
        })
        .map(|r| ObjectRef::new(&r.name).within(&ns))
        .collect();
    for guarded in store.state() {
        let Ok(c) = &guarded.0 else { continue };
        let target = &c.spec.target_deployment_name;
        if c.namespace().as_deref() == Some(ns.as_str()) && (*target == name || canary_deployment_name(target) == name)
        {
            refs.push(ObjectRef::from_obj(guarded.as_ref()));
        }
    }
    refs
}

/// Runs the Canary controller until `shutdown` completes.
pub async fn run(
    client: Client,
    caches: Arc<Caches>,
    metrics: Arc<crate::runtime::telemetry::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = crate::runtime::triggers::controller(Api::<GuardedCanary>::all(client.clone()), ());
    let store = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        canaries: store.clone(),
        caches: caches.clone(),
        metrics,
        recorder: crate::report::recorder(client.clone()),
        backoff: Default::default(),
    });
    ctx.metrics.observe_canaries(store.clone());
    controller
        .watches_shared_stream(caches.deployments.subscribe(), move |d| canaries_for(&store, d.as_ref()))
        .graceful_shutdown_on(shutdown)
        .run(measured_reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(canary = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(name: &str) -> Arc<GuardedCanary> {
        let canary = serde_json::json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"targetDeploymentName": "t", "targetContainers": []}});
        Arc::new(serde_json::from_value(canary).unwrap())
    }

    #[tokio::test]
    async fn failed_reconciles_are_retried_later_and_later_per_object() {
        // a client that is never used: error_policy only schedules
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        // the Canaries exist (the backoff forgets those that do not)
        let mut canaries = kube::runtime::reflector::store::Writer::default();
        for name in ["a", "b"] {
            canaries.apply_watcher_event(&kube::runtime::watcher::Event::Apply((*guarded(name)).clone()));
        }
        let ctx = Arc::new(Context {
            client: client.clone(),
            canaries: canaries.as_reader(),
            caches: Arc::new(Caches::start(&client)),
            metrics: crate::runtime::telemetry::Metrics::new(),
            recorder: crate::report::recorder(client),
            backoff: Default::default(),
        });
        let error = Error::NoNamespace;
        assert_eq!(error_policy(guarded("a"), &error, ctx.clone()), Action::requeue(Duration::from_millis(500)));
        assert_eq!(error_policy(guarded("a"), &error, ctx.clone()), Action::requeue(Duration::from_secs(1)));
        assert_eq!(error_policy(guarded("b"), &error, ctx.clone()), Action::requeue(Duration::from_millis(500)));
    }
}
