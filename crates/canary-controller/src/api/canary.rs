//! `canary.k8s.wantedly.com/v1beta1` Canary: run a copy of an existing Deployment with new images.
//!
//! The spec is the original wantedly/canary-controller spec (`targetDeploymentName`, `targetContainers`),
//! plus an optional `replicas`. Validation that the schema can express lives here, so the API server
//! rejects bad objects before the controller sees them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The longest target name whose canary Deployment name (`<target>-canary`) is still a valid name.
pub const MAX_TARGET_NAME_LENGTH: u32 = 253 - "-canary".len() as u32;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "canary.k8s.wantedly.com",
    version = "v1beta1",
    kind = "Canary",
    plural = "canaries",
    namespaced,
    status = "CanaryStatus",
    doc = "A canary copy of an existing Deployment, running new images",
    printcolumn = r#"{"name": "Target", "type": "string", "jsonPath": ".spec.targetDeploymentName"}"#,
    printcolumn = r#"{"name": "Canary Deployment", "type": "string", "jsonPath": ".status.canaryDeployment"}"#,
    printcolumn = r#"{"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Name of the Deployment, in the Canary's namespace, that the canary copies.
    #[schemars(length(min = 1, max = MAX_TARGET_NAME_LENGTH), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"))]
    pub target_deployment_name: String,
    /// Containers of the target whose image the canary replaces, by container name.
    #[schemars(length(min = 1, max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub target_containers: Vec<TargetContainer>,
    /// Replicas of the canary Deployment. Default: the target's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TargetContainer {
    /// Name of a container of the target Deployment.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Image the canary runs in that container.
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^\S+$"))]
    pub image: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Name of the canary Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
