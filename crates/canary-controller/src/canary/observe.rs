//! The observe step of the Canary controller: the target Deployment, the canary Deployment of that name,
//! and the canary Deployments of the namespace (one of a previous target may be left), read from the
//! process's shared Deployment cache (no API reads); with `traffic`, the Services and EndpointSlices of the
//! release (its Kanary, its baseline Deployment) from the shared caches.

use crate::api::canary::Canary;
use crate::names::{
    baseline_deployment_name, baseline_service_name, canary_deployment_name, canary_service_name, stable_service_name,
    stable_slice_name,
};
use crate::runtime::caches::{CachedDeployment, CachedKanary, CachedService, CachedSlice, Caches};
use kube::ResourceExt;
use std::sync::Arc;

/// What the cluster holds for one Canary.
pub struct Observed {
    pub target: Option<Arc<CachedDeployment>>,
    /// The Deployment named `<target>-canary`, whoever owns it.
    pub existing: Option<Arc<CachedDeployment>>,
    /// The canary Deployments of the namespace under another name.
    pub other_canaries: Vec<Arc<CachedDeployment>>,
    /// The objects of a release, and with `traffic` what it reads (observed without `traffic` too: a release
    /// whose `traffic` was removed leaves objects to delete).
    pub release: ReleaseObserved,
}

/// The Services, EndpointSlices, baseline and Kanary of a release.
pub struct ReleaseObserved {
    /// The user's Service and its EndpointSlices (with `traffic`).
    pub service: Option<Arc<CachedService>>,
    pub service_slices: Vec<Arc<CachedSlice>>,
    /// `<canary>-stable`, its EndpointSlice, `<canary>-canary` and its EndpointSlices (the canary's pods).
    pub stable_service: Option<Arc<CachedService>>,
    pub stable_slice: Option<Arc<CachedSlice>>,
    /// The stable route's IPv6 slice (IPv6-only and dual-stack Services).
    pub stable_slice_v6: Option<Arc<CachedSlice>>,
    pub canary_service: Option<Arc<CachedService>>,
    pub canary_slices: Vec<Arc<CachedSlice>>,
    /// `<target>-baseline`, `<canary>-baseline` and its EndpointSlices (whether or not `traffic.baseline` is
    /// set: a baseline left from before is removed).
    pub baseline: Option<Arc<CachedDeployment>>,
    pub baseline_service: Option<Arc<CachedService>>,
    pub baseline_slices: Vec<Arc<CachedSlice>>,
    /// The front Service's EndpointSlices: the proxy's pods (with `traffic`).
    pub front_slices: Vec<Arc<CachedSlice>>,
    /// The release's Kanary (named after the Canary, in kanary.k8s.io), when that group is installed.
    pub kanary: Option<Option<Arc<CachedKanary>>>,
}

/// Reads what `canary` refers to from the caches.
pub fn observe(canary: &Canary, caches: &Caches) -> Observed {
    let ns = canary.namespace().unwrap_or_default();
    let target_name = &canary.spec.target_deployment_name;
    let name = canary_deployment_name(target_name);
    Observed {
        target: caches.deployments.get(&ns, target_name),
        existing: caches.deployments.get(&ns, &name),
        other_canaries: caches.deployments.labelled(&ns, "true").into_iter().filter(|d| d.name_any() != name).collect(),
        release: observe_release(canary, caches),
    }
}

/// The objects of `canary`'s release, from the caches.
fn observe_release(canary: &Canary, caches: &Caches) -> ReleaseObserved {
    let ns = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let (stable, canary_svc, baseline_svc) =
        (stable_service_name(&name), canary_service_name(&name), baseline_service_name(&name));
    let traffic = canary.spec.traffic.as_ref();
    let labelled = |service: Option<&String>| match service {
        Some(service) => caches.endpoint_slices.labelled(&ns, service),
        None => vec![],
    };
    ReleaseObserved {
        service: traffic.and_then(|t| caches.services.get(&ns, &t.service)),
        service_slices: labelled(traffic.map(|t| &t.service)),
        stable_service: caches.services.get(&ns, &stable),
        stable_slice: caches.endpoint_slices.get(&ns, &stable),
        stable_slice_v6: caches.endpoint_slices.get(&ns, &stable_slice_name(&name, "IPv6")),
        canary_service: caches.services.get(&ns, &canary_svc),
        canary_slices: caches.endpoint_slices.labelled(&ns, &canary_svc),
        baseline: caches.deployments.get(&ns, &baseline_deployment_name(&canary.spec.target_deployment_name)),
        baseline_service: caches.services.get(&ns, &baseline_svc),
        baseline_slices: caches.endpoint_slices.labelled(&ns, &baseline_svc),
        front_slices: labelled(traffic.map(|t| &t.front_service)),
        kanary: caches.kanaries.as_ref().map(|k| k.get(&ns, &name)),
    }
}
