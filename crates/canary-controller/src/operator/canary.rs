//! How the Canary controller is wired: its watch of Canaries, and what wakes a Canary (its target and
//! canary Deployments, the Services and EndpointSlices of its release, its Kanary) from the shared caches.

use super::{NameOf, Wakes};
use crate::canary::reconcile::{CanaryReconciler, GuardedCanary, metadata};
use crate::names::{REQUEST_ANNOTATION, SERVICE_NAME_LABEL};
use crate::names::{baseline_deployment_name, baseline_service_name, canary_deployment_name};
use crate::names::{canary_service_name, stable_service_name};
use crate::runtime::caches::{Cache, CachedKanary, Caches};
use crate::runtime::index::References;
use crate::runtime::reconciler::{self, Context};
use crate::runtime::telemetry::Metrics;
use crate::runtime::{Scope, triggers};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use std::sync::Arc;

/// Runs the Canary controller until `shutdown` completes.
pub async fn run(
    client: Client,
    scope: &Scope,
    caches: Arc<Caches>,
    reconciler: CanaryReconciler,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let references = Arc::new(References::new(names_of));
    let gathered = reconciler.gathered();
    let canaries = scope.api::<GuardedCanary>(&client);
    let controller = triggers::controller(canaries, (), references.clone(), spec_or_request);
    metrics.observe_canaries(controller.store());
    let ctx = Arc::new(Context::new(client, caches.clone(), controller.store(), (), metrics, reconciler));
    let by_name = |o: &dyn NameOf| Some(o.name_of());
    let by_service = |o: &dyn NameOf| o.label_of(SERVICE_NAME_LABEL);
    let wake = Wakes { caches: caches.clone(), references, dyntype: (), is_owner: canary_owner };
    let mut controller = controller
        .watches_shared_stream(caches.deployments.subscribe(), wake.of(|c| &c.deployments, by_name))
        .watches_shared_stream(caches.services.subscribe(), wake.of(|c| &c.services, by_name))
        .watches_shared_stream(caches.endpoint_slices.subscribe(), wake.of(|c| &c.endpoint_slices, by_service));
    if let Some(kanaries) = &caches.kanaries {
        // its proxies' reports (the weight they serve) move the release on at once
        controller = controller.watches_shared_stream(kanaries.subscribe(), wake.of(kanary_cache, by_name));
    }
    if let Some(gathered) = gathered {
        // a Canary whose evidence was gathered goes on at once, not at its next poll
        controller = controller.reconcile_on(gathered.map(|(ns, name)| ObjectRef::new(&name).within(&ns)));
    }
    reconciler::run(controller, ctx, shutdown).await;
}

fn kanary_cache(caches: &Caches) -> &Cache<CachedKanary> {
    caches.kanaries.as_ref().expect("watched when the group is installed")
}

/// The names a Canary refers to: its target and its canary Deployment; with traffic, the user's Service, the
/// route Services, the front Service (whose EndpointSlices are the proxy's pods) and the baseline.
fn names_of(guarded: &GuardedCanary) -> Vec<String> {
    let Ok(canary) = &guarded.0 else { return vec![] };
    let target = &canary.spec.target_deployment_name;
    let mut names = vec![target.clone(), canary_deployment_name(target)];
    if let Some(t) = &canary.spec.traffic {
        let name = canary.name_any();
        names.extend([t.service.clone(), t.front_service.clone()]);
        names.extend([stable_service_name(&name), canary_service_name(&name)]);
        names.extend([baseline_service_name(&name), baseline_deployment_name(target)]);
    }
    names
}

/// What a reconcile of a Canary depends on in the object itself: its spec (generation) and the release
/// request annotation (people's requests wake the release at once).
fn spec_or_request(guarded: &GuardedCanary) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let meta = metadata(guarded);
    meta.generation.hash(&mut hasher);
    meta.annotations.as_ref().and_then(|a| a.get(REQUEST_ANNOTATION)).hash(&mut hasher);
    Some(hasher.finish())
}

/// Whether an owner reference names a Canary (of any version).
fn canary_owner(reference: &OwnerReference, _: &()) -> bool {
    reference.kind == "Canary" && reference.api_version.starts_with("canary.k8s.wantedly.com/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::woken;
    use crate::runtime::caches::CachedDeployment;
    use k8s_openapi::api::apps::v1::Deployment;

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
        let references = References::new(names_of);
        references.apply(&kube::runtime::watcher::Event::Apply(canary("a", "app")));
        references.apply(&kube::runtime::watcher::Event::Apply(canary("b", "app-canary")));
        let deployment: Deployment = serde_json::from_value(serde_json::json!({"metadata": {"name": "app-canary",
            "namespace": "ns", "ownerReferences": [{"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
            "name": "a", "uid": "u", "controller": true}]}}))
        .unwrap();
        let deployment = CachedDeployment::from(deployment);
        let names = |refs: Vec<ObjectRef<GuardedCanary>>| refs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(woken(&deployment, Some("app-canary"), false, &references, &(), canary_owner)), ["a", "b"]);
        assert_eq!(
            names(woken(&deployment, Some("app-canary"), true, &references, &(), canary_owner)),
            ["b"],
            "a wrote it; b targets it"
        );
    }
}
