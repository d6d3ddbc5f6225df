//! The Kanary controller's reconcile, for either API group, and its wiring. One pass, the same shape as the
//! Canary controller's: `observe` (the shared caches: no API reads) -> `validate` (pure: a [`Valid`] Kanary
//! or a [`Problem`]) -> `build` (pure: the ConfigMap, the agent's ServiceAccount, Role and RoleBinding, the
//! Deployment and the Service, the events) -> apply (here:
//! create the absent children, server-side apply the owned ones the cache does not show as desired, delete
//! former destinations; never an object owned by someone else) -> status (here: written when it changed).
//! While a problem holds, the proxy keeps its last good configuration.

use super::build::{self, Desired, Observation, ProxyOptions};
use super::observe::{Observed, observe};
use super::validate::{Problem, Valid, validate_kanary};
use crate::api::kanary::{KIND, Kanary, KanaryStatus};
use crate::runtime::caches::{CachedForm, Caches};
use crate::runtime::children::{self, ChildError, owned_by, write_child, write_metadata_cached};
use crate::runtime::index::References;
use crate::runtime::reconciler::{Context, Reconciler, Step};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// The Kanary controller of one API group.
pub struct KanaryReconciler {
    pub resource: ApiResource,
    pub proxy: ProxyOptions,
    /// The Kanaries of the group by the Services they refer to.
    pub references: Arc<References<Kanary>>,
}

/// Why a reconcile failed; the variant (and the child) names the step, which is the metric label and the
/// log field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kanary has no namespace or uid")]
    Incomplete,
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("writing the status: {0}")]
    ApplyStatus(#[from] crate::report::StatusWriteError),
    #[error("removing the reports of proxy pods that are gone from the status: {0}")]
    PruneReports(#[source] kube::Error),
}

impl Step for Error {
    fn step(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Error::Child(e) => e.step().into(),
            Error::Incomplete => "Incomplete".into(),
            Error::ApplyStatus(_) => "ApplyStatus".into(),
            Error::PruneReports(_) => "PruneReports".into(),
        }
    }

    fn waits_for_cache(&self) -> bool {
        matches!(self, Error::Child(e) if e.waits_for_cache())
    }
}

impl Reconciler for KanaryReconciler {
    type Object = Kanary;
    type Error = Error;
    const NAME: &'static str = "kanary";

    async fn reconcile(&self, kanary: Arc<Kanary>, ctx: &Context<Self>) -> Result<Action, Error> {
        let ns = kanary.namespace().ok_or(Error::Incomplete)?;
        let name = kanary.name_any();
        let owner = kanary.controller_owner_ref(&self.resource).ok_or(Error::Incomplete)?;
        let uid = owner.uid.clone();
        let observed = observe(&kanary, &ctx.caches);
        let valid = validate_kanary(&kanary, owner, &observed);

        let owned_proxy = observed.proxy.as_deref().filter(|d| owned_by(*d, &uid)).map(|d| d.to_deployment());
        let available = owned_proxy.as_ref().and_then(|d| d.status.as_ref()?.available_replicas).unwrap_or(0);
        let mut wanted = owned_proxy.as_ref().and_then(|d| d.spec.as_ref()?.replicas).unwrap_or(1);
        let mut notes = vec![];
        let mut revision = None;
        if let Ok(valid) = &valid {
            let desired = build::desired(&name, &ns, valid, &self.proxy);
            revision = Some(desired.revision.clone());
            apply_children(&ctx.client, &ctx.caches, &ns, &desired, &observed, owned_proxy.as_ref()).await?;
            remove_former_destinations(&ctx.client, &ns, &uid, &observed).await?;
            let current = observed.config_map.as_deref().and_then(CachedForm::desired_hash);
            notes.extend(build::config_note(&name, valid, &desired, current));
            wanted = self.proxy.replicas;
        }

        let previous = kanary.status.as_ref();
        let problem = valid.as_ref().err();
        let spec = match &valid {
            Ok(v) => Some(v.spec),
            Err(Problem::InvalidSpec(_)) => None,
            Err(_) => kanary.spec.as_ref().ok(),
        };
        let (routes, degraded) = valid.as_ref().map(|v: &Valid| (&v.routes[..], &v.degraded[..])).unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut proxy_pods: Vec<String> = observed
            .destination_slices
            .iter()
            .flat_map(|s| s.endpoints.iter().filter_map(|e| e.pod.as_deref().map(String::from)))
            .collect();
        proxy_pods.sort();
        proxy_pods.dedup();
        let observation = Observation {
            name: &name,
            generation: kanary.metadata.generation,
            spec,
            routes,
            problem,
            degraded,
            proxy_replicas: (available, wanted),
            revision: revision.as_deref(),
            proxy_pods: &proxy_pods,
            previous,
        };
        let status = build::build_status(&observation, &now);
        let before = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
        notes.extend(build::warnings(before, &status, problem, degraded));
        ctx.publish(&ctx.about(&kanary), notes).await;
        let api: Api<Kanary> = Api::namespaced_with(ctx.client.clone(), &ns, &self.resource);
        // the agents' reports are theirs: compared without them, and only the gone pods' removed
        let ours = previous.map(|p| KanaryStatus { proxies: Default::default(), ..p.clone() });
        if ours.as_ref() != Some(&status) {
            let manager = crate::names::FIELD_MANAGER;
            crate::report::write_status(manager, &api, &name, &self.resource.api_version, KIND, &status, None).await?;
        }
        let stale = build::stale_reports(previous, &proxy_pods, &now);
        if !stale.is_empty() {
            let gone: serde_json::Map<String, serde_json::Value> =
                stale.into_iter().map(|pod| (pod, serde_json::Value::Null)).collect();
            let patch = Patch::Merge(serde_json::json!({"status": {"proxies": gone}}));
            api.patch_status(&name, &PatchParams::default(), &patch).await.map_err(Error::PruneReports)?;
        }
        Ok(Action::requeue(Duration::from_secs(600)))
    }
}

/// Writes the children the cache does not show as desired: the destination first (the name most likely to
/// be someone else's, a Service of the app, so that a conflict the cache did not show yet stops the
/// reconcile before the proxy's own objects are created), then the ConfigMap and the agent's
/// ServiceAccount, Role and RoleBinding (cached as metadata only: judged by their desired-hash annotation and
/// their managedFields), then the Deployment. A child created since the cache was written is retried once the
/// cache has it.
async fn apply_children(
    client: &Client,
    caches: &Caches,
    ns: &str,
    desired: &Desired,
    observed: &Observed,
    proxy: Option<&Deployment>,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let destination = observed.destination.as_deref().map(|s| s.to_service());
    let exists = destination.is_some();
    let cached = (destination.as_ref(), &caches.services);
    write_child::<_, PartialObjectMeta<Service>, _>("Service", &services, &desired.service, cached.0, exists, cached.1)
        .await?;
    let (config_map, config_maps) = (observed.config_map.as_deref(), &caches.config_maps);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    write_metadata_cached("ConfigMap", &api, &desired.config_map, config_map, config_maps).await?;
    let (account, accounts) = (observed.service_account.as_deref(), &caches.service_accounts);
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    write_metadata_cached("ServiceAccount", &api, &desired.service_account, account, accounts).await?;
    let api: Api<Role> = Api::namespaced(client.clone(), ns);
    write_metadata_cached("Role", &api, &desired.role, observed.role.as_deref(), &caches.roles).await?;
    let (binding, bindings) = (observed.role_binding.as_deref(), &caches.role_bindings);
    let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    write_metadata_cached("RoleBinding", &api, &desired.role_binding, binding, bindings).await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let (exists, cache) = (proxy.is_some(), &caches.deployments);
    write_child::<_, PartialObjectMeta<Deployment>, _>("Deployment", &api, &desired.deployment, proxy, exists, cache)
        .await?;
    Ok(())
}

/// Deletes the Services this Kanary created for a destination it no longer has.
async fn remove_former_destinations(client: &Client, ns: &str, uid: &str, observed: &Observed) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for old in observed.former_destinations.iter().filter(|s| owned_by(s.as_ref(), uid)) {
        let old_name = old.name_any();
        children::delete_child("Service", &services, &old_name, &old.uid().unwrap_or_default()).await?;
    }
    Ok(())
}
