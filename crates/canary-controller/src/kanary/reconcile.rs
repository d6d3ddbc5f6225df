//! The thin IO layer of the Kanary controller, for either API group: read the backend Services, their
//! EndpointSlices and the objects the Kanary owns from the process's shared caches (no API reads); validate;
//! create the absent ConfigMap, Deployment and Service and server-side apply the owned ones (never touching
//! an object owned by someone else); write the status when it changed; record events on transitions. While
//! the spec is invalid, the proxy keeps its last good configuration.

use super::build::{self, ProxyOptions, config_name, proxy_name};
use super::endpoints::{Resolution, SERVICE_NAME_LABEL, resolve};
use super::haproxy::{ProxySettings, RouteBackend, render};
use super::validate::{Problem, parse_and_validate};
use crate::api::kanary::{KIND, KanarySpec, KanaryStatus};
use crate::children::{self, Created, owned_by};
use crate::conditions::reason_of;
use crate::report::publish;
use crate::runtime::caches::Caches;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

pub struct Context {
    pub client: Client,
    /// The Kanaries of this group, from the controller's own cache.
    pub kanaries: Store<DynamicObject>,
    /// The process's shared caches of Deployments, Services, EndpointSlices and ConfigMaps.
    pub caches: Arc<Caches>,
    pub metrics: Arc<crate::runtime::telemetry::Metrics>,
    pub recorder: Recorder,
    pub resource: ApiResource,
    pub proxy: ProxyOptions,
    pub backoff: crate::runtime::backoff::ErrorBackoff,
}

/// A write to one of the proxy's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    ConfigMap,
    Deployment,
    Service,
}

/// Why a reconcile failed; the variant (and the child) names the step, which is the metric label and the
/// log field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kanary has no namespace or uid")]
    Incomplete,
    #[error("creating the {0:?} {1:?}: {2}")]
    Create(Child, String, #[source] kube::Error),
    #[error("applying the {0:?} {1:?}: {2}")]
    Apply(Child, String, #[source] kube::Error),
    #[error("{0:?} {1:?} exists but is not in the cache yet: retrying")]
    NotCachedYet(Child, String),
    #[error("deleting Service {0:?} of a former destination: {1}")]
    DeleteOldDestination(String, #[source] kube::Error),
    #[error("writing the status: {0}")]
    ApplyStatus(#[from] crate::report::StatusWriteError),
}

impl Error {
    /// The step that failed: a stable label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Incomplete => "Incomplete",
            Error::Create(Child::ConfigMap, ..) => "CreateConfigMap",
            Error::Create(Child::Deployment, ..) => "CreateDeployment",
            Error::Create(Child::Service, ..) => "CreateService",
            Error::Apply(Child::ConfigMap, ..) => "ApplyConfigMap",
            Error::Apply(Child::Deployment, ..) => "ApplyDeployment",
            Error::Apply(Child::Service, ..) => "ApplyService",
            Error::NotCachedYet(..) => "NotCachedYet",
            Error::DeleteOldDestination(..) => "DeleteOldDestination",
            Error::ApplyStatus(_) => "ApplyStatus",
        }
    }
}

async fn measured_reconcile(kanary: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let object = ObjectRef::from_obj_with(kanary.as_ref(), ctx.resource.clone()).to_string();
    let result = ctx.metrics.measure("kanary", reconcile(kanary, ctx.clone()), Error::category).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&object);
    }
    result
}

/// Reconciles one Kanary.
pub async fn reconcile(kanary: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = kanary.namespace().ok_or(Error::Incomplete)?;
    let uid = kanary.uid().ok_or(Error::Incomplete)?;
    let name = kanary.name_any();
    let owner = kanary.controller_owner_ref(&ctx.resource).ok_or(Error::Incomplete)?;
    let previous: Option<KanaryStatus> = kanary.data.get("status").and_then(|s| serde_json::from_value(s.clone()).ok());
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);

    let existing_cm = ctx.caches.config_maps.get(&ns, &config_name(&name));
    let existing_proxy = ctx.caches.deployments.get(&ns, &proxy_name(&name));
    let mut problem = None;
    let mut routes = vec![];
    let mut degraded = vec![];
    let mut destination_changed = false;
    let mut existing_svc = None;
    let spec = match parse_and_validate(&name, &kanary.data) {
        Ok(spec) => Some(spec),
        Err(p) => {
            problem = Some(p);
            None
        }
    };
    if let Some(spec) = &spec {
        existing_svc = ctx.caches.services.get(&ns, &spec.destination);
        destination_changed = existing_svc.is_none()
            || previous
                .as_ref()
                .and_then(|p| p.destination_status.as_ref())
                .is_some_and(|d| d.service_name != spec.destination);
        problem = not_owned(
            &uid,
            existing_cm.as_deref(),
            existing_proxy.as_deref(),
            existing_svc.as_deref(),
            &name,
            &spec.destination,
        );
        if problem.is_none() {
            match resolve_routes(spec, &ctx.caches, &ns) {
                Ok((r, d)) => (routes, degraded) = (r, d),
                Err(p) => problem = Some(p),
            }
        }
    }

    let running_hash = existing_proxy.as_ref().and_then(|d| {
        d.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(build::CONFIG_HASH_ANNOTATION).cloned()
    });
    let mut proxy = existing_proxy.as_deref().filter(|d| owned_by(*d, &uid)).cloned();
    if let (None, Some(spec)) = (&problem, &spec) {
        let config = render(&format!("{ns}/{name}"), &routes, &ProxySettings::default());
        let cm = children::with_desired_hash(build::build_config_map(&name, &ns, &owner, &config));
        let dep = children::with_desired_hash(build::build_deployment(&name, &ns, &owner, &config, &ctx.proxy));
        let svc = children::with_desired_hash(build::build_service(&name, &ns, &owner, &spec.destination));
        let cached = (existing_cm.as_ref().map(|c| &c.metadata), existing_proxy.as_deref(), existing_svc.as_deref());
        proxy = Some(write_children(&config_maps, &deployments, &services, (&cm, &dep, &svc), cached).await?);
        if destination_changed {
            remove_old_destinations(&services, &ctx.caches, &uid, &ns, &name, &spec.destination).await?;
        }
        match running_hash {
            None => {
                publish(
                    &ctx.recorder,
                    &kanary.object_ref(&ctx.resource),
                    EventType::Normal,
                    "ProxyCreated",
                    format!("created the proxy {:?} for Service {:?}", proxy_name(&name), spec.destination),
                )
                .await
            }
            Some(running) if running != build::config_hash(&config) => {
                let split: Vec<String> = routes
                    .iter()
                    .map(|r| format!("{}={}% ({} servers)", r.service, r.weight, r.servers.len()))
                    .collect();
                publish(
                    &ctx.recorder,
                    &kanary.object_ref(&ctx.resource),
                    EventType::Normal,
                    "ConfigUpdated",
                    format!("proxy configuration updated: {}", split.join(", ")),
                )
                .await;
            }
            Some(_) => {}
        }
    }

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let observation = build::Observation {
        name: &name,
        generation: kanary.metadata.generation,
        spec: spec.as_ref(),
        routes: &routes,
        problem: problem.as_ref(),
        degraded: &degraded,
        proxy: proxy.as_ref(),
        previous: previous.as_ref(),
    };
    let status = build::build_status(&observation, &now);
    let before = previous.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if let Some(p) = &problem
        && reason_of(before, build::conditions::READY) != Some(p.reason())
    {
        publish(&ctx.recorder, &kanary.object_ref(&ctx.resource), EventType::Warning, p.reason(), p.message()).await;
    }
    let backends_reason =
        reason_of(&status.conditions, build::conditions::BACKENDS_READY).unwrap_or_default().to_string();
    if backends_reason != "BackendsReady"
        && reason_of(before, build::conditions::BACKENDS_READY) != Some(backends_reason.as_str())
    {
        let message = status
            .conditions
            .iter()
            .find(|c| c.type_ == build::conditions::BACKENDS_READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        publish(&ctx.recorder, &kanary.object_ref(&ctx.resource), EventType::Warning, &backends_reason, message).await;
    }
    if previous.as_ref() != Some(&status) {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.resource);
        crate::report::write_status(&api, &name, &ctx.resource.api_version, KIND, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

fn not_owned(
    uid: &str,
    cm: Option<&PartialObjectMeta<ConfigMap>>,
    proxy: Option<&Deployment>,
    svc: Option<&Service>,
    name: &str,
    destination: &str,
) -> Option<Problem> {
    if cm.is_some_and(|c| !owned_by(c, uid)) {
        return Some(Problem::ObjectNotOwned { kind: "ConfigMap", name: config_name(name) });
    }
    if proxy.is_some_and(|d| !owned_by(d, uid)) {
        return Some(Problem::ObjectNotOwned { kind: "Deployment", name: proxy_name(name) });
    }
    if svc.is_some_and(|s| !owned_by(s, uid)) {
        return Some(Problem::ObjectNotOwned { kind: "Service", name: destination.into() });
    }
    None
}

/// Creates the children that are absent and server-side applies those that exist (and are owned: checked
/// before) unless the cache shows them as desired already (the ConfigMap, cached as metadata only, by its
/// desired-hash annotation and its managedFields). A child created since the cache was written is retried
/// once the cache has it. Returns the proxy Deployment.
async fn write_children(
    config_maps: &Api<ConfigMap>,
    deployments: &Api<Deployment>,
    services: &Api<Service>,
    (cm, dep, svc): (&ConfigMap, &Deployment, &Service),
    (cm_cached, dep_cached, svc_cached): (Option<&ObjectMeta>, Option<&Deployment>, Option<&Service>),
) -> Result<Deployment, Error> {
    async fn write<K>(api: &Api<K>, desired: &K, cached: Option<&K>, exists: bool, child: Child) -> Result<K, Error>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    {
        let name = desired.name_any();
        if let Some(cached) = cached.filter(|c| children::up_to_date(desired, *c)) {
            return Ok(cached.clone());
        }
        if exists {
            return children::apply(api, desired).await.map_err(|e| Error::Apply(child, name, e));
        }
        match children::create(api, desired).await.map_err(|e| Error::Create(child, name.clone(), e))? {
            Created::Created(k) => Ok(k),
            Created::AlreadyExists => Err(Error::NotCachedYet(child, name)),
        }
    }
    // the destination first: the name most likely to be someone else's (a Service of the app), so that a
    // conflict the cache did not show yet stops the reconcile before the proxy's own objects are created
    write(services, svc, svc_cached, svc_cached.is_some(), Child::Service).await?;
    if !cm_cached.is_some_and(|cached| children::metadata_up_to_date(&cm.metadata, cached)) {
        write(config_maps, cm, None, cm_cached.is_some(), Child::ConfigMap).await?;
    }
    write(deployments, dep, dep_cached, dep_cached.is_some(), Child::Deployment).await
}

/// Deletes the Services this Kanary created for a destination it no longer has.
async fn remove_old_destinations(
    services: &Api<Service>,
    caches: &Caches,
    uid: &str,
    ns: &str,
    name: &str,
    destination: &str,
) -> Result<(), Error> {
    let ours = caches.services.labelled(ns, build::PROXY_LABEL, &proxy_name(name));
    for old in ours.iter().filter(|s| owned_by(s.as_ref(), uid) && s.name_any() != destination) {
        let old_name = old.name_any();
        let deleted = children::delete(services, &old_name, &old.uid().unwrap_or_default()).await;
        deleted.map_err(|e| Error::DeleteOldDestination(old_name, e))?;
    }
    Ok(())
}

type Routes = (Vec<RouteBackend>, Vec<(String, &'static str)>);

/// Resolves every route to its live servers; routes with a weight and no live server are listed as degraded.
fn resolve_routes(spec: &KanarySpec, caches: &Caches, ns: &str) -> Result<Routes, Problem> {
    let mut routes = vec![];
    let mut degraded = vec![];
    for route in &spec.routes {
        let svc_name = &route.backend.service_name;
        let service = caches.services.get(ns, svc_name);
        let list: Vec<EndpointSlice> = match service {
            Some(_) => caches
                .endpoint_slices
                .labelled(ns, SERVICE_NAME_LABEL, svc_name)
                .iter()
                .map(|s| s.to_endpoint_slice())
                .collect(),
            None => vec![],
        };
        let servers = match resolve(&route.backend.service_port, service.as_deref(), &list) {
            Resolution::Servers(s) => s,
            Resolution::ServiceNotFound => {
                if route.weight > 0 {
                    degraded.push((svc_name.clone(), build::SERVICE_NOT_FOUND));
                }
                vec![]
            }
            Resolution::PortNotFound { available } => {
                let port = match &route.backend.service_port {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => format!("{s:?}"),
                };
                return Err(Problem::PortNotFound { service: svc_name.clone(), port, available });
            }
        };
        if servers.is_empty() && route.weight > 0 && !degraded.iter().any(|(s, _)| s == svc_name) {
            degraded.push((svc_name.clone(), build::NO_READY_ENDPOINT));
        }
        routes.push(RouteBackend { service: svc_name.clone(), weight: route.weight, servers });
    }
    Ok((routes, degraded))
}

fn error_policy(kanary: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = |k: &DynamicObject| ObjectRef::from_obj_with(k, ctx.resource.clone()).to_string();
    let live = ctx.kanaries.state().iter().map(|k| key(k)).collect();
    ctx.backoff.retry(&key(kanary.as_ref()), &live, error, matches!(error, Error::NotCachedYet(..)))
}

/// The Kanaries (of this group) that use a backend Service, in its namespace.
fn kanaries_using(
    store: &Store<DynamicObject>,
    ar: &ApiResource,
    ns: &str,
    service: &str,
) -> Vec<ObjectRef<DynamicObject>> {
    store
        .state()
        .into_iter()
        .filter(|k| k.namespace().as_deref() == Some(ns))
        .filter(|k| {
            serde_json::from_value::<KanarySpec>(k.data.get("spec").cloned().unwrap_or_default())
                .is_ok_and(|s| s.destination == service || s.routes.iter().any(|r| r.backend.service_name == service))
        })
        .map(|k| ObjectRef::new_with(&k.name_any(), ar.clone()).within(ns))
        .collect()
}

/// Runs the Kanary controller of one API group until `shutdown` completes.
pub async fn run(
    client: Client,
    caches: Arc<Caches>,
    resource: ApiResource,
    proxy: ProxyOptions,
    metrics: Arc<crate::runtime::telemetry::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = crate::runtime::triggers::controller(
        Api::<DynamicObject>::all_with(client.clone(), &resource),
        resource.clone(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        kanaries: controller.store(),
        caches: caches.clone(),
        metrics,
        recorder: crate::report::recorder(client.clone()),
        resource: resource.clone(),
        proxy,
        backoff: Default::default(),
    });
    ctx.metrics.observe_kanaries(&resource.group, controller.store());
    let (store, ar) = (controller.store(), resource.clone());
    let (store2, ar2) = (controller.store(), resource.clone());
    controller
        .owns_shared_stream(caches.config_maps.subscribe())
        .owns_shared_stream(caches.deployments.subscribe())
        .watches_shared_stream(caches.services.subscribe(), move |svc| {
            let ns = svc.namespace().unwrap_or_default();
            let mut refs = kanaries_using(&store, &ar, &ns, &svc.name_any());
            for r in svc
                .owner_references()
                .iter()
                .filter(|r| r.controller == Some(true) && r.kind == KIND && r.api_version == ar.api_version)
            {
                refs.push(ObjectRef::new_with(&r.name, ar.clone()).within(&ns));
            }
            refs
        })
        .watches_shared_stream(caches.endpoint_slices.subscribe(), move |slice| {
            let ns = slice.namespace().unwrap_or_default();
            match slice.labels().get(SERVICE_NAME_LABEL) {
                Some(service) => kanaries_using(&store2, &ar2, &ns, service),
                None => vec![],
            }
        })
        .graceful_shutdown_on(shutdown)
        .run(measured_reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failed_reconciles_are_retried_later_and_later_per_object() {
        // a client that is never used: error_policy only schedules
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let resource = crate::api::kanary::api_resource("kanary.k8s.io", "v1");
        let kanary = |name: &str| Arc::new(DynamicObject::new(name, &resource).within("ns"));
        // the Kanaries exist (the backoff forgets those that do not)
        let mut kanaries = kube::runtime::reflector::store::Writer::new(resource.clone());
        for name in ["a", "b"] {
            kanaries.apply_watcher_event(&kube::runtime::watcher::Event::Apply((*kanary(name)).clone()));
        }
        let ctx = Arc::new(Context {
            client: client.clone(),
            kanaries: kanaries.as_reader(),
            caches: Arc::new(Caches::start(&client)),
            metrics: crate::runtime::telemetry::Metrics::new(),
            recorder: crate::report::recorder(client),
            resource: resource.clone(),
            proxy: ProxyOptions { image: "haproxy".into(), replicas: 1 },
            backoff: Default::default(),
        });
        let error = Error::Incomplete;
        assert_eq!(error_policy(kanary("a"), &error, ctx.clone()), Action::requeue(Duration::from_millis(500)));
        assert_eq!(error_policy(kanary("a"), &error, ctx.clone()), Action::requeue(Duration::from_secs(1)));
        assert_eq!(error_policy(kanary("b"), &error, ctx.clone()), Action::requeue(Duration::from_millis(500)));
    }
}
