//! The observe step of the Canary controller: the target Deployment, the canary Deployment of that name,
//! and the canary Deployments of the namespace (one of a previous target may be left), read from the
//! process's shared Deployment cache (no API reads).

use super::build::canary_deployment_name;
use crate::api::canary::Canary;
use crate::runtime::caches::{CachedDeployment, Caches};
use kube::ResourceExt;
use std::sync::Arc;

/// What the cluster holds for one Canary.
pub struct Observed {
    pub target: Option<Arc<CachedDeployment>>,
    /// The Deployment named `<target>-canary`, whoever owns it.
    pub existing: Option<Arc<CachedDeployment>>,
    /// The canary Deployments of the namespace under another name.
    pub other_canaries: Vec<Arc<CachedDeployment>>,
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
    }
}
