//! How a Kanary controller (one per installed group) is wired: its watch of Kanaries, and what wakes a
//! Kanary (its backend and destination Services and their EndpointSlices, the proxy's objects it owns) from
//! the shared caches.

use super::NameOf;
use crate::api::kanary::{KIND, Kanary};
use crate::kanary::build::ProxyOptions;
use crate::kanary::reconcile::KanaryReconciler;
use crate::names::SERVICE_NAME_LABEL;
use crate::runtime::caches::{Cache, CachedForm, Caches};
use crate::runtime::index::References;
use crate::runtime::reconciler::{self, Context};
use crate::runtime::telemetry::Metrics;
use crate::runtime::{Scope, triggers};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::ApiResource;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use std::fmt::Debug;
use std::sync::Arc;

/// Runs the Kanary controller of one API group until `shutdown` completes.
pub async fn run(
    client: Client,
    scope: &Scope,
    caches: Arc<Caches>,
    resource: ApiResource,
    proxy: ProxyOptions,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let references = Arc::new(References::new(Kanary::services));
    let kanaries = scope.api_with::<Kanary>(&client, &resource);
    let controller = triggers::controller(kanaries, resource.clone(), references.clone(), spec_or_reports);
    metrics.observe_kanaries(&resource.group, controller.store());
    let reconciler = KanaryReconciler { resource: resource.clone(), proxy, references: references.clone() };
    let ctx = Arc::new(Context::new(client, caches.clone(), controller.store(), resource.clone(), metrics, reconciler));
    // the proxy's own objects wake only their owner; Services and EndpointSlices also the Kanaries using them
    let owned = |_: &dyn NameOf| None;
    let by_name = |o: &dyn NameOf| Some(o.name_of());
    let by_service = |o: &dyn NameOf| o.label_of(SERVICE_NAME_LABEL);
    let wake = Wakes { caches: caches.clone(), references, resource };
    let controller = controller
        .watches_shared_stream(caches.config_maps.subscribe(), wake.of(|c| &c.config_maps, owned))
        .watches_shared_stream(caches.service_accounts.subscribe(), wake.of(|c| &c.service_accounts, owned))
        .watches_shared_stream(caches.roles.subscribe(), wake.of(|c| &c.roles, owned))
        .watches_shared_stream(caches.role_bindings.subscribe(), wake.of(|c| &c.role_bindings, owned))
        .watches_shared_stream(caches.deployments.subscribe(), wake.of(|c| &c.deployments, owned))
        .watches_shared_stream(caches.services.subscribe(), wake.of(|c| &c.services, by_name))
        .watches_shared_stream(caches.endpoint_slices.subscribe(), wake.of(|c| &c.endpoint_slices, by_service));
    reconciler::run(controller, ctx, shutdown).await;
}

/// What wakes the Kanaries of one group.
struct Wakes {
    caches: Arc<Caches>,
    references: Arc<References<Kanary>>,
    resource: ApiResource,
}

impl Wakes {
    /// The Kanaries a change of a cached object (in `cache` of the caches) wakes: see [`kanaries_for`];
    /// `name` says what the object is known by (none: only its owner cares).
    fn of<K>(
        &self,
        cache: fn(&Caches) -> &Cache<K>,
        name: fn(&dyn NameOf) -> Option<String>,
    ) -> impl Fn(Arc<K>) -> Vec<ObjectRef<Kanary>> + Send + Sync + 'static
    where
        K: CachedForm + Clone + Debug + Send + Sync + 'static,
    {
        let (caches, references, resource) = (self.caches.clone(), self.references.clone(), self.resource.clone());
        move |object| {
            let name = name(object.as_ref());
            kanaries_for(object.as_ref(), name.as_deref(), cache(&caches).is_echo(&object), &references, &resource)
        }
    }
}

/// The Kanaries an object matters to: its controller (unless the event is the echo of the controller's own
/// write) and the Kanaries that refer to `name` (for a Service, its name; for an EndpointSlice, its Service's).
fn kanaries_for<K: Resource>(
    object: &K,
    name: Option<&str>,
    echo: bool,
    references: &References<Kanary>,
    resource: &ApiResource,
) -> Vec<ObjectRef<Kanary>> {
    let ns = object.namespace().unwrap_or_default();
    let is_owner = |r: &OwnerReference| r.kind == KIND && r.api_version == resource.api_version;
    let names = references.woken_by(object, name, is_owner, echo);
    names.iter().map(|n| ObjectRef::new_with(n, resource.clone()).within(&ns)).collect()
}

/// What wakes a Kanary's reconcile when it changes: its spec (`metadata.generation`) and what its proxy agents
/// report in its status (not the rest of the status, which the controller writes).
fn spec_or_reports(kanary: &Kanary) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    kanary.metadata.generation.hash(&mut hasher);
    if let Some(status) = &kanary.status {
        for (pod, report) in &status.proxies {
            (pod, &report.revision, &report.refused_revision).hash(&mut hasher);
        }
    }
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    #[test]
    fn an_echo_of_its_own_write_does_not_wake_the_owner_but_wakes_the_kanaries_using_the_object() {
        let resource = crate::api::kanary::api_resource("kanary.k8s.io", "v1");
        let references = References::new(Kanary::services);
        let kanary = |name: &str, destination: &str, backend: &str| -> Kanary {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "ns"},
                "spec": {"destination": destination, "routes": [{"backend": {"serviceName": backend, "servicePort": 80}, "weight": 100}]}}))
            .unwrap()
        };
        references.apply(&kube::runtime::watcher::Event::Apply(kanary("a", "front", "app")));
        references.apply(&kube::runtime::watcher::Event::Apply(kanary("b", "front-b", "front")));
        let mut front: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": "front", "namespace": "ns",
            "ownerReferences": [{"apiVersion": "kanary.k8s.io/v1", "kind": "Kanary", "name": "a", "uid": "u", "controller": true}]}}))
        .unwrap();
        let names = |refs: Vec<ObjectRef<Kanary>>| refs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(kanaries_for(&front, Some("front"), false, &references, &resource)), ["a", "b"]);
        assert_eq!(names(kanaries_for(&front, Some("front"), true, &references, &resource)), ["b"], "a wrote it");
        front.metadata.owner_references = None;
        assert_eq!(names(kanaries_for(&front, Some("app"), false, &references, &resource)), ["a"], "a backend of a");
    }
}
