//! The observe step of the Canary controller: the target Deployment, the canary Deployment of that name,
//! and the canary Deployments of the namespace (one of a previous target may be left), read from the
//! process's shared Deployment cache (no API reads); with `traffic`, the Services and EndpointSlices of the
//! release (and its baseline Deployment) from the shared caches.

use crate::api::canary::Canary;
use crate::names::{
    baseline_deployment_name, baseline_service_name, canary_deployment_name, canary_service_name, stable_service_name,
    stable_slice_name,
};
use crate::runtime::caches::{CachedDeployment, CachedService, CachedSlice, Caches};
use kube::ResourceExt;
use std::sync::Arc;

/// What the cluster holds for one Canary.
pub struct Observed {
    pub target: Option<Arc<CachedDeployment>>,
    /// The Deployment named `<target>-canary`, whoever owns it.
    pub existing: Option<Arc<CachedDeployment>>,
    /// The canary Deployments of the namespace under another name.
    pub other_canaries: Vec<Arc<CachedDeployment>>,
    /// What a release reads, when the Canary has `traffic`.
    pub traffic: Option<TrafficObserved>,
}

/// The Services and EndpointSlices of a release.
pub struct TrafficObserved {
    /// The user's Service and its EndpointSlices.
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
    /// The front Service's EndpointSlices: the proxy's pods.
    pub front_slices: Vec<Arc<CachedSlice>>,
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
        traffic: canary.spec.traffic.as_ref().map(|traffic| {
            let (stable, canary_svc, baseline_svc) = (
                stable_service_name(&canary.name_any()),
                canary_service_name(&canary.name_any()),
                baseline_service_name(&canary.name_any()),
            );
            TrafficObserved {
                service: caches.services.get(&ns, &traffic.service),
                service_slices: caches.endpoint_slices.labelled(&ns, &traffic.service),
                stable_service: caches.services.get(&ns, &stable),
                stable_slice: caches.endpoint_slices.get(&ns, &stable),
                stable_slice_v6: caches.endpoint_slices.get(&ns, &stable_slice_name(&canary.name_any(), "IPv6")),
                canary_service: caches.services.get(&ns, &canary_svc),
                canary_slices: caches.endpoint_slices.labelled(&ns, &canary_svc),
                baseline: caches.deployments.get(&ns, &baseline_deployment_name(target_name)),
                baseline_service: caches.services.get(&ns, &baseline_svc),
                baseline_slices: caches.endpoint_slices.labelled(&ns, &baseline_svc),
                front_slices: caches.endpoint_slices.labelled(&ns, &traffic.front_service),
            }
        }),
    }
}
