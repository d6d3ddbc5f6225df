//! The validate step of the Canary controller: a Canary can be served when its target exists, every
//! container it names is a container of the target, and `<target>-canary` belongs to no one else. Returns a
//! [`Valid`] Canary, all the builders need, or the [`Problem`]. Pure: no client in scope.

use super::observe::Observed;
use crate::api::canary::Canary;
use crate::names::canary_deployment_name;
use crate::runtime::children::owned_by;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

/// A Canary that can be served, with what the builders need.
#[derive(Debug)]
pub struct Valid {
    pub target: Deployment,
    /// The canary Deployment, when it exists (it is this Canary's).
    pub owned: Option<Deployment>,
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
            Problem::TargetNotFound { .. } => "TargetNotFound",
            Problem::UnknownContainer { .. } => "UnknownContainer",
            Problem::DeploymentNotOwned { .. } => "DeploymentNotOwned",
            Problem::ApplyRejected { .. } => "ApplyRejected",
            Problem::Traffic(_) => "TrafficNotServed",
            Problem::ReleaseObjectNotOwned { .. } => "ReleaseObjectNotOwned",
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
    Ok(Valid { target, owned: existing.map(|d| d.to_deployment()) })
}
