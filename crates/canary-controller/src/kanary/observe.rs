//! The observe step of the Kanary controller: everything a Kanary refers to, read from the process's shared
//! caches (no API reads): its backend Services and their EndpointSlices, its destination Service and its
//! EndpointSlices (the proxy's pods), and the
//! proxy's ConfigMap and Deployment, and its agent's ServiceAccount, Role and RoleBinding.

use crate::api::kanary::Kanary;
use crate::names::{config_name, proxy_name};
use crate::runtime::caches::{CachedChild, CachedDeployment, CachedService, CachedSlice, Caches};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use std::sync::Arc;

/// What the cluster holds for one Kanary.
pub struct Observed {
    pub config_map: Option<Arc<CachedChild<ConfigMap>>>,
    pub proxy: Option<Arc<CachedDeployment>>,
    pub service_account: Option<Arc<CachedChild<ServiceAccount>>>,
    pub role: Option<Arc<CachedChild<Role>>>,
    pub role_binding: Option<Arc<CachedChild<RoleBinding>>>,
    /// The destination Service (none while the spec is unreadable).
    pub destination: Option<Arc<CachedService>>,
    /// Its EndpointSlices: the proxy's pods.
    pub destination_slices: Vec<Arc<CachedSlice>>,
    /// Each route's Service and its EndpointSlices, in the order of the routes.
    pub backends: Vec<Backend>,
    /// The Services labelled as this Kanary's proxy's other than the destination: a former destination when
    /// this Kanary owns it.
    pub former_destinations: Vec<Arc<CachedService>>,
}

pub struct Backend {
    pub service: Option<Arc<CachedService>>,
    pub slices: Vec<Arc<CachedSlice>>,
}

/// Reads what `kanary` refers to from the caches.
pub fn observe(kanary: &Kanary, caches: &Caches) -> Observed {
    let ns = kanary.namespace().unwrap_or_default();
    let name = kanary.name_any();
    let spec = kanary.spec.as_ref().ok();
    let backends = spec
        .iter()
        .flat_map(|s| &s.routes)
        .map(|route| {
            let service = caches.services.get(&ns, &route.backend.service_name);
            let slices = match service {
                Some(_) => caches.endpoint_slices.labelled(&ns, &route.backend.service_name),
                None => vec![],
            };
            Backend { service, slices }
        })
        .collect();
    let destination_name = spec.map(|s| s.destination.as_str());
    let former_destinations = caches
        .services
        .labelled(&ns, &proxy_name(&name))
        .into_iter()
        .filter(|s| Some(s.name_any().as_str()) != destination_name)
        .collect();
    Observed {
        config_map: caches.config_maps.get(&ns, &config_name(&name)),
        proxy: caches.deployments.get(&ns, &proxy_name(&name)),
        service_account: caches.service_accounts.get(&ns, &proxy_name(&name)),
        role: caches.roles.get(&ns, &proxy_name(&name)),
        role_binding: caches.role_bindings.get(&ns, &proxy_name(&name)),
        destination: destination_name.and_then(|d| caches.services.get(&ns, d)),
        destination_slices: destination_name.map(|d| caches.endpoint_slices.labelled(&ns, d)).unwrap_or_default(),
        backends,
        former_destinations,
    }
}
