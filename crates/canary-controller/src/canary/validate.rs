//! The validate step of the Canary controller: a Canary can be served when its target exists, every
//! container it names is a container of the target, and `<target>-canary` belongs to no one else. Its
//! release (`spec.traffic`) can go on when the Kanary group is installed, the user's Service and port exist
//! and every object of the release is this Canary's; otherwise the release holds where it is and the canary
//! is still served. Returns a [`Valid`] Canary, all the builders need, or the [`Problem`]. Pure: no client in
//! scope.

use super::observe::{Observed, ReleaseObserved};
use super::traffic;
use crate::api::canary::{Canary, Traffic};
use crate::names::canary::reasons;
use crate::names::canary_deployment_name;
use crate::runtime::caches::CachedService;
use crate::runtime::children::owned_by;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServicePort;
use kube::ResourceExt;
use std::sync::Arc;

/// A Canary that can be served, with what the builders need.
#[derive(Debug)]
pub struct Valid {
    pub target: Deployment,
    /// The canary Deployment, when it exists (it is this Canary's).
    pub owned: Option<Deployment>,
    /// The release, when the Canary has `traffic`: what it needs, or why it holds where it is.
    pub traffic: Option<Result<ValidTraffic, Problem>>,
}

/// A release that can go on: its settings, the user's Service and the port it splits.
#[derive(Debug)]
pub struct ValidTraffic {
    pub traffic: Traffic,
    pub service: Arc<CachedService>,
    pub port: ServicePort,
}

/// What keeps a Canary from being served. Each variant's [`reason`](Problem::reason) is the stable
/// reason of the Ready condition and of the Warning event.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    TargetNotFound {
        target: String,
        namespace: String,
    },
    UnknownContainer {
        target: String,
        unknown: Vec<String>,
        available: Vec<String>,
    },
    DeploymentNotOwned {
        name: String,
        owner: Option<String>,
    },
    /// The API server rejected the canary Deployment (for example a changed selector, which is immutable).
    ApplyRejected {
        name: String,
        message: String,
    },
    /// `spec.traffic` cannot be served (its Service or port is missing); the release holds where it is.
    Traffic(String),
    /// An object a release needs (its Kanary, route Services, EndpointSlice) exists and is someone else's.
    ReleaseObjectNotOwned {
        kind: &'static str,
        name: String,
    },
}

impl Problem {
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::TargetNotFound { .. } => reasons::TARGET_NOT_FOUND,
            Problem::UnknownContainer { .. } => reasons::UNKNOWN_CONTAINER,
            Problem::DeploymentNotOwned { .. } => reasons::DEPLOYMENT_NOT_OWNED,
            Problem::ApplyRejected { .. } => reasons::APPLY_REJECTED,
            Problem::Traffic(_) => reasons::TRAFFIC_NOT_SERVED,
            Problem::ReleaseObjectNotOwned { .. } => reasons::RELEASE_OBJECT_NOT_OWNED,
        }
    }

    /// A message for people: what is wrong and how to fix it.
    pub fn message(&self) -> String {
        match self {
            Problem::TargetNotFound { target, namespace } => format!(
                "spec.targetDeploymentName: Deployment {target:?} not found in namespace {namespace:?}: create it or fix the name \
                 (an existing canary Deployment is left running)"
            ),
            Problem::UnknownContainer { target, unknown, available } => format!(
                "spec.targetContainers: Deployment {target:?} has no container named {} (its containers: {}): fix the name",
                unknown.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
                available.join(", ")
            ),
            Problem::DeploymentNotOwned { name, owner } => format!(
                "Deployment {name:?} already exists and is not managed by this Canary ({}): it is left untouched; \
                 delete or rename it, or delete this Canary",
                owner.as_deref().unwrap_or("it has no controller")
            ),
            Problem::ApplyRejected { name, message } => {
                format!("the API server rejected Deployment {name:?}: {message}")
            }
            Problem::Traffic(message) => format!("{message} (the release holds where it is)"),
            Problem::ReleaseObjectNotOwned { kind, name } => format!(
                "{kind} {name:?} already exists and is not managed by this Canary: it is left untouched; delete or \
                 rename it, or rename this Canary (the release holds where it is)"
            ),
        }
    }
}

fn controller_description(deployment: &impl kube::Resource) -> Option<String> {
    deployment
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| format!("its controller is {} {:?}", r.kind, r.name))
}

/// Checks `canary` against what the cluster holds (`observed`): its target and an existing `<target>-canary`.
pub fn validate(canary: &Canary, observed: &Observed) -> Result<Valid, Problem> {
    let target_name = &canary.spec.target_deployment_name;
    let existing = observed.existing.as_deref();
    let uid = canary.uid().unwrap_or_default();
    if let Some(existing) = existing.filter(|d| !owned_by(*d, &uid)) {
        return Err(Problem::DeploymentNotOwned {
            name: canary_deployment_name(target_name),
            owner: controller_description(existing),
        });
    }
    let Some(target) = observed.target.as_deref().map(|t| t.to_deployment()) else {
        return Err(Problem::TargetNotFound {
            target: target_name.clone(),
            namespace: canary.namespace().unwrap_or_default(),
        });
    };
    let available: Vec<String> = target
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let unknown: Vec<String> =
        canary.spec.target_containers.iter().filter(|c| !available.contains(&c.name)).map(|c| c.name.clone()).collect();
    if !unknown.is_empty() {
        return Err(Problem::UnknownContainer { target: target_name.clone(), unknown, available });
    }
    let traffic = canary.spec.traffic.as_ref().map(|traffic| validate_traffic(canary, traffic, &observed.release));
    Ok(Valid { target, owned: existing.map(|d| d.to_deployment()), traffic })
}

/// Checks a release: the Kanary group installed, the user's Service and its port, and every object of the
/// release (Kanary, route Services, EndpointSlices, baseline) absent or this Canary's.
fn validate_traffic(canary: &Canary, traffic: &Traffic, seen: &ReleaseObserved) -> Result<ValidTraffic, Problem> {
    let ns = canary.namespace().unwrap_or_default();
    let uid = canary.uid().unwrap_or_default();
    let Some(kanary) = &seen.kanary else {
        return Err(Problem::Traffic(
            "spec.traffic: a release needs the Kanary CRD of group kanary.k8s.io: install it (`canary-controller crd`)"
                .into(),
        ));
    };
    let Some(service) = seen.service.clone() else {
        return Err(Problem::Traffic(format!(
            "spec.traffic.service: Service {:?} not found in namespace {ns:?}: create it or fix the name",
            traffic.service
        )));
    };
    let port = traffic::service_port(traffic, &service).map_err(Problem::Traffic)?.clone();
    needs_http(canary, traffic).map_err(Problem::Traffic)?;
    let taken = not_owned("Service", seen.stable_service.as_deref(), &uid)
        .or_else(|| not_owned("Service", seen.canary_service.as_deref(), &uid))
        .or_else(|| not_owned("EndpointSlice", seen.stable_slice.as_deref(), &uid))
        .or_else(|| not_owned("EndpointSlice", seen.stable_slice_v6.as_deref(), &uid))
        .or_else(|| not_owned("Service", seen.baseline_service.as_deref(), &uid))
        .or_else(|| not_owned("Deployment", seen.baseline.as_deref(), &uid))
        .or_else(|| not_owned("Kanary", kanary.as_deref(), &uid));
    match taken {
        Some(problem) => Err(problem),
        None => Ok(ValidTraffic { traffic: traffic.clone(), service, port }),
    }
}

/// The checks measured on HTTP requests (`requestSuccessRate`, `requestDuration`), cohorts and override
/// headers need HTTP traffic (as the CRD's schema says; a Canary the schema did not check gets the same).
fn needs_http(canary: &Canary, traffic: &Traffic) -> Result<(), String> {
    use crate::api::canary::Metric;
    let http = traffic.protocol == crate::api::kanary::Protocol::Http;
    let routing = [("header", traffic.header.is_some()), ("sticky", traffic.sticky)];
    if let Some((field, _)) = routing.iter().find(|(_, set)| *set && !http) {
        return Err(format!(
            "spec.traffic.{field}: cohorts and overrides route HTTP requests: set spec.traffic.protocol to http"
        ));
    }
    let checks = canary.spec.analysis.as_ref().map(|a| a.metrics.as_slice()).unwrap_or_default();
    let on_requests =
        checks.iter().position(|c| matches!(c.metric, Some(Metric::RequestSuccessRate | Metric::RequestDuration)));
    match on_requests {
        Some(i) if !http => Err(format!(
            "spec.analysis.metrics[{i}]: {:?} is measured on HTTP requests: set spec.traffic.protocol to http, or \
             judge connections (errorRate)",
            checks[i].metric.expect("a metric")
        )),
        _ => Ok(()),
    }
}

/// The problem an object of the release poses when it exists and this Canary (`uid`) does not own it.
fn not_owned<K: kube::Resource>(kind: &'static str, object: Option<&K>, uid: &str) -> Option<Problem> {
    let object = object.filter(|o| !owned_by(*o, uid))?;
    Some(Problem::ReleaseObjectNotOwned { kind, name: object.meta().name.clone().unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohorts_overrides_and_request_checks_need_http_traffic() {
        let check = |traffic: serde_json::Value, metrics: serde_json::Value| {
            let canary: Canary = serde_json::from_value(serde_json::json!({
                "apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"targetDeploymentName": "app", "targetContainers": [], "traffic": traffic,
                    "analysis": {"metrics": metrics}}}))
            .unwrap();
            needs_http(&canary, canary.spec.traffic.as_ref().unwrap())
        };
        let tcp = |extra: serde_json::Value| {
            let mut traffic = serde_json::json!({"service": "app", "frontService": "app-front"});
            traffic.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            traffic
        };
        let sticky = check(tcp(serde_json::json!({"sticky": true})), serde_json::json!([])).unwrap_err();
        assert!(sticky.starts_with("spec.traffic.sticky: ") && sticky.contains("protocol to http"), "{sticky}");
        let header = check(tcp(serde_json::json!({"header": "x-canary"})), serde_json::json!([])).unwrap_err();
        assert!(header.starts_with("spec.traffic.header: "), "{header}");
        let p99 = serde_json::json!([{"metric": "requestDuration", "max": 50}]);
        let on_tcp = check(tcp(serde_json::json!({})), p99.clone()).unwrap_err();
        assert!(on_tcp.starts_with("spec.analysis.metrics[0]: RequestDuration"), "{on_tcp}");
        let http = tcp(serde_json::json!({"protocol": "http", "header": "x-canary", "sticky": true}));
        assert_eq!(check(http, p99), Ok(()));
    }
}
