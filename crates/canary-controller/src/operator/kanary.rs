//! How a Kanary controller (one per installed group) is wired: its watch of Kanaries, and what wakes a
//! Kanary (its backend and destination Services and their EndpointSlices, the proxy's objects it owns) from
//! the shared caches.

use super::{NameOf, Wakes};
use crate::api::kanary::{KIND, Kanary};
use crate::kanary::build::ProxyOptions;
use crate::kanary::reconcile::KanaryReconciler;
use crate::names::SERVICE_NAME_LABEL;
use crate::runtime::caches::Caches;
use crate::runtime::index::References;
use crate::runtime::reconciler::{self, Context};
use crate::runtime::telemetry::Metrics;
use crate::runtime::{Scope, triggers};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::core::ApiResource;
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
    let wake = Wakes { caches: caches.clone(), references, dyntype: resource, is_owner: kanary_owner };
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

/// Whether an owner reference names a Kanary of `resource`'s group.
fn kanary_owner(reference: &OwnerReference, resource: &ApiResource) -> bool {
    reference.kind == KIND && reference.api_version == resource.api_version
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
    use crate::operator::woken;
    use k8s_openapi::api::core::v1::Service;
    use kube::runtime::reflector::ObjectRef;

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
        assert_eq!(names(woken(&front, Some("front"), false, &references, &resource, kanary_owner)), ["a", "b"]);
        assert_eq!(
            names(woken(&front, Some("front"), true, &references, &resource, kanary_owner)),
            ["b"],
            "a wrote it"
        );
        front.metadata.owner_references = None;
        assert_eq!(
            names(woken(&front, Some("app"), false, &references, &resource, kanary_owner)),
            ["a"],
            "a backend of a"
        );
    }
}
