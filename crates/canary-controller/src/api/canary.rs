//! `canary.k8s.wantedly.com/v1beta1` Canary: run a copy of an existing Deployment with new images.
//!
//! The spec is the original wantedly/canary-controller spec (`targetDeploymentName`, `targetContainers`),
//! plus an optional `replicas`. Validation that the schema can express lives here, so the API server
//! rejects bad objects before the controller sees them.
//!
//! Progressive delivery is opt-in: with `traffic` set, the Canary puts a weighted proxy (a Kanary it owns) in
//! front of the stable and the canary pods, walks `steps` (or the short form in `analysis`), judges the
//! canary by the proxy's own counters, and promotes or rolls back. Without `traffic` nothing of that runs
//! and the Canary is the original one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
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
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.release.phase", "priority": 1}"#,
    printcolumn = r#"{"name": "Weight", "type": "integer", "jsonPath": ".status.release.weight", "priority": 1}"#,
    printcolumn = r#"{"name": "Step", "type": "string", "jsonPath": ".status.release.stepDescription", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.traffic) || !has(self.traffic.baseline) || !self.traffic.baseline || ((!has(self.steps) || self.steps.all(s, !has(s.setWeight) || s.setWeight <= 50)) && (!has(self.analysis) || !has(self.analysis.maxWeight) || self.analysis.maxWeight <= 50))",
    "message": "spec.traffic.baseline: the baseline takes the canary's weight too, so setWeight and analysis.maxWeight must be at most 50"
}]))]
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
    /// Progressive delivery: the Service whose traffic the release shifts. Without it, no release runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    /// The release's steps, in order. Default: the short form of `analysis` (`stepWeight`, `maxWeight`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub steps: Vec<ReleaseStep>,
    /// How each analysis step judges the canary, and the short form of the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// What happens after the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// Holds the release where it is (its weight stays); `false` or unset lets it go on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// The traffic a release shifts: clients use `frontService`, which the Canary creates in front of a proxy
/// splitting connections between the stable pods (those of `service`, not the canary's) and the canary pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(!has(self.header) && !(has(self.sticky) && self.sticky)) || (has(self.protocol) && self.protocol == 'http')",
    "message": "header and sticky route HTTP requests: set protocol to http"
}]))]
pub struct Traffic {
    /// The user's Service selecting the target's pods. Read, never changed.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub service: String,
    /// The port of `service` (name or number) whose traffic is split. Default: its only port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    /// The Service the Canary creates in front of its proxy: the one clients connect to.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub front_service: String,
    /// Also run a baseline while a release runs: `<target>-baseline`, the target's pod template (its current
    /// images) at the canary's size, taking the same share of connections as the canary, so that PromQL checks
    /// can compare the canary with pods as young as its own under the same traffic (`{{ baseline }}`). The
    /// canary's weight is then at most 50 (stable gets 100 - 2 x weight). Scaled to 0 with the canary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub baseline: bool,
    /// What the weight splits: `tcp`, new connections (the default), or `http`, HTTP requests (HTTP/1.1 with
    /// keep-alive and HTTP/2, gRPC included: each request drawn on its own, so a client holding one
    /// connection still sees the weight). HTTP/2 to the pods when the Service port's `appProtocol` is
    /// `kubernetes.io/h2c`, `h2c`, `http2` or `grpc`.
    #[serde(default, skip_serializing_if = "crate::api::kanary::Protocol::is_tcp")]
    pub protocol: crate::api::kanary::Protocol,
    /// With `protocol: http`: a request with this header set to `always` goes to the canary, `never` to
    /// stable, whatever the weight (testers, synthetic checks); never to a canary whose weight is 0 (after a
    /// rollback or an abort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::api::kanary::HEADER_NAME_PATTERN))]
    pub header: Option<String>,
    /// With `protocol: http`: keep each client on the version it first got (a cookie the proxy sets), so
    /// users do not flip between versions while the weight moves. A rollback or an abort ends it at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky: bool,
}

/// One step of a release: exactly one of `setWeight`, `pause`, `analysis`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.setWeight), has(self.pause), has(self.analysis), has(self.webhook)].filter(x, x).size() == 1",
    "message": "a step has exactly one of setWeight, pause, analysis, webhook"
}]))]
pub struct ReleaseStep {
    /// The canary's share of new connections, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub set_weight: Option<i32>,
    /// Waits `duration`, or until the release is resumed or promoted when no duration is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// Measures one `analysis.interval` at the current weight and judges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStep>,
    /// Calls an HTTP endpoint (a pre-rollout check, a load generator, a promotion gate) and goes on when it
    /// answers 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStep>,
}

/// An HTTP call of a release step: `POST url` with a JSON body naming the release (`canary`, `namespace`,
/// `revision`, `step`, `weight`, `phase`); a 2xx answer within `timeout` passes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.timeout) || duration(self.timeout) <= duration('60s')",
    "message": "webhook.timeout: at most 60s: a gate that needs longer can answer non-2xx with onFailure: Retry"
}]))]
pub struct WebhookStep {
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^/\s]+(/.*)?$"))]
    pub url: String,
    /// How long the call may take (`10s`), at most 60s. Default: 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub timeout: Option<String>,
    /// What another answer (or none) does: `Pause` (default: the release pauses; `resume` calls again),
    /// `Retry` (call again every 5 s until it passes: a gate), or `Fail` (roll back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnWebhookFailure>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OnWebhookFailure {
    Pause,
    Retry,
    Fail,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// How long (`30s`, `5m`, `1h`); unset: until resumed or promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub duration: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStep {}

/// How the canary is judged. Every analysis window measures `interval` of traffic through the proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.interval) || duration(self.interval) <= duration('1h')",
    "message": "analysis.interval: at most 1h (a window's samples are bounded): use a shorter interval and more analysis steps"
}]))]
pub struct Analysis {
    /// The length of an analysis window (`30s`, `1m`). Default: 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: Option<String>,
    /// Short form of the steps (when `steps` is empty): raise the weight by this much after each passed
    /// window, up to `maxWeight`. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub step_weight: Option<i32>,
    /// Short form: the last weight before promotion. Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_weight: Option<i32>,
    /// Fewer canary connections than this in a window make it inconclusive: the release pauses, it never
    /// promotes on too little traffic. Default: 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<i64>,
    /// Failed windows tolerated (each is measured again) before the release rolls back. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failure_limit: Option<i32>,
    /// The checks of a window. Default: `errorRate` at most 0.05.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub metrics: Vec<MetricCheck>,
}

/// A check of one metric over a window: one the proxy measures for the canary route (`metric`), or the value
/// of a PromQL query (`prometheus`); against an absolute bound (`max`, `min`) or, for the proxy's metrics,
/// against the stable route over the same window (`maxOverStable`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.max) || has(self.min) || has(self.maxOverStable) || has(self.maxBelowStable) || has(self.compareToStable) || (has(self.prometheus) && has(self.prometheus.compare))",
    "message": "a metric check needs a bound: max, min, maxOverStable or maxBelowStable (or prometheus.compare, or compareToStable for requestDuration)"
}, {
    "rule": "has(self.metric) != has(self.prometheus)",
    "message": "set exactly one of metric (measured by the proxy) and prometheus (a PromQL query)"
}, {
    "rule": "!has(self.prometheus) || (!has(self.maxOverStable) && !has(self.maxBelowStable))",
    "message": "maxOverStable and maxBelowStable compare the proxy's routes: bound a prometheus query with max or min (write the comparison in PromQL)"
}, {
    "rule": "!has(self.percentile) || (has(self.metric) && self.metric == 'requestDuration')",
    "message": "percentile is the percentile of metric requestDuration: set it only there"
}, {
    "rule": "!has(self.compareToStable) || (has(self.metric) && self.metric == 'requestDuration')",
    "message": "compareToStable compares request latencies: set it only with metric requestDuration"
}]))]
pub struct MetricCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// What a query without a value (no sample, NaN) or a failed query means: `Inconclusive` (default: the
    /// release pauses) or `Fail`. Never a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<OnNoData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The most the canary's value may exceed the stable route's over the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_over_stable: Option<f64>,
    /// The most the canary's value may fall below the stable route's over the same window (for metrics where
    /// lower is worse: `requestSuccessRate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_below_stable: Option<f64>,
    /// For `requestDuration`: the percentile judged (50, 90, 99, 99.9...). Default: 99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub percentile: Option<f64>,
    /// For `requestDuration`: judge the canary's request latencies against stable's over the same window with
    /// a Mann-Whitney U test and the Hodges-Lehmann shift (at most 2,000 latencies a side, evenly spread):
    /// significantly slower by more than `tolerance` (relative to stable's median) fails, within it is
    /// marginal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_to_stable: Option<StableComparison>,
}

/// How a `requestDuration` check compares the canary's latencies with stable's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StableComparison {
    /// The slowdown tolerated, relative to stable's median (0.1: 10 % slower). Default: 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub tolerance: Option<f64>,
    /// The significance level of the test. Default: 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub alpha: Option<f64>,
    /// What a marginal result does: Pause (default), Extend, Fail or Pass (as `prometheus.compare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_marginal: Option<OnMarginal>,
}

/// A metric whose value is a PromQL query's, evaluated by Prometheus at the end of each window (an instant
/// query that must give one number: aggregate with `sum(...)`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.timeout) || duration(self.timeout) <= duration('60s')",
    "message": "prometheus.timeout: at most 60s"
}]))]
pub struct PrometheusMetric {
    /// The query. Variables: `{{ namespace }}`, `{{ target }}` (the target Deployment), `{{ canary }}` (the
    /// canary Deployment, whose pods are named `<canary>-...`), `{{ baseline }}` (the baseline Deployment,
    /// with `traffic.baseline`), `{{ interval }}` (the window, as a PromQL duration). Example:
    /// `sum(rate(http_requests_total{code=~"5..",pod=~"{{ canary }}-.*"}[{{ interval }}]))`. At most 4096
    /// characters.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// Prometheus's base URL (`http://prometheus.monitoring:9090`; `https://` is verified against the system's
    /// CA certificates). Default: the controller's `--prometheus-address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^/\s?#]+(/[^?#]*)?$"))]
    pub address: Option<String>,
    /// A bearer token for Prometheus (`Authorization: Bearer ...`): the key `key` of the Secret `name` in the
    /// Canary's namespace, read when a window is judged. The controller is not granted Secrets by default:
    /// grant it `get` on this one Secret (a Role with `resourceNames`, see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// How long each query may take (`10s`), at most 60s; a query that takes longer has no data. Default: 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub timeout: Option<String>,
    /// Judge the canary against a baseline instead of a bound: `query` (the canary) and `baselineQuery` are
    /// read over the whole window (range queries, a sample a second) and compared with a Mann-Whitney U test
    /// and the Hodges-Lehmann shift: significantly worse by more than `tolerance` fails, within it is
    /// marginal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<Compare>,
}

/// A key of a Secret in the Canary's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compare {
    /// The same measure for the baseline: the baseline's pods with `traffic.baseline`
    /// (`pod=~"{{ baseline }}-.*"`), or the stable pods (`pod=~"{{ target }}-[a-z0-9]+-[a-z0-9]+"` matches the
    /// target's pods and not the canary's or the baseline's).
    #[schemars(length(min = 1, max = 4096))]
    pub baseline_query: String,
    /// Which way the metric gets worse. Default: Higher (errors, latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worse: Option<Worse>,
    /// The effect tolerated: the shift relative to the baseline's median (0.1: 10 % worse). Default: 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub tolerance: Option<f64>,
    /// The significance level of the test. Default: 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub alpha: Option<f64>,
    /// What a marginal result does: Pause (default: inconclusive, the release pauses), Extend (measure
    /// another window at the same step, more samples often decide; paused after 3 marginal windows in a
    /// step), Fail, or Pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_marginal: Option<OnMarginal>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Worse {
    Higher,
    Lower,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OnMarginal {
    Pause,
    Extend,
    Fail,
    Pass,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OnNoData {
    Inconclusive,
    Fail,
}

/// The metrics the proxy measures per route (HAProxy's own counters: no Prometheus needed).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Metric {
    /// Failed connections (refused, reset or timed out by the backend) over connections, 0 to 1.
    ErrorRate,
    /// Connect time to the backends in milliseconds (HAProxy's average over its last 1024 connections).
    ConnectTime,
    /// Failed health checks of the route's pods.
    HealthCheckFailures,
    /// Connections the route took.
    Sessions,
    /// With `traffic.protocol: http`: the share of the route's HTTP requests that succeeded, in percent (a
    /// 5xx answer, the proxy's own 502/503/504, no answer, or a gRPC status other than 0 is a failure).
    RequestSuccessRate,
    /// With `traffic.protocol: http`: a percentile (`percentile`, default 99) of the route's request
    /// durations in milliseconds, measured by the proxy for each request of the window.
    RequestDuration,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// After the last step, set the target Deployment's images to the canary's (the only write to a user's
    /// object, under the field manager `canary-controller-promotion`). Unset or false: wait for the user (or
    /// GitOps) to update the target to the canary's images, then finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub update_target: bool,
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
    /// The release of a Canary with `traffic`: where it is, and the evidence of every judged window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseStatus>,
}

/// Where a release stands. Everything a controller needs to resume it (after a restart or a leader change)
/// at the same step with the same timers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStatus {
    /// The images this release rolls out (`container=image`, comma separated).
    pub revision: String,
    pub phase: Phase,
    /// Why the release is in its phase, for people.
    #[serde(default)]
    pub message: String,
    /// The index of the current step (the number of steps once they are all done).
    pub step: i32,
    /// The current step, for people and `kubectl get` (`2/6 setWeight 25`).
    #[serde(default)]
    pub step_description: String,
    /// When the current step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// The canary's share of new connections, in percent.
    pub weight: i32,
    /// The analysis window being measured: its start and the proxy's counters then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Failed windows so far in this release.
    #[serde(default)]
    pub failed_windows: i32,
    /// Marginal windows measured again in the current step (`onMarginal: Extend`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub extended_windows: i32,
    /// The last request (annotation `canary.k8s.wantedly.com/request`) acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_request: Option<String>,
    /// When the current step's webhook was last called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_call_at: Option<Time>,
    /// The judged windows, most recent last (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Evidence>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Walking the steps.
    #[default]
    Progressing,
    /// Held: by `spec.paused`, a pause step without duration, or an inconclusive window.
    Paused,
    /// Every step passed: the target is being updated to the canary's images.
    Promoting,
    /// The target runs the canary's images; all traffic goes to it; the canary is scaled to 0.
    Succeeded,
    /// The canary failed its analysis: no traffic to it, scaled to 0.
    RolledBack,
    /// Stopped by a request: no traffic to the canary, scaled to 0.
    Aborted,
}

impl Phase {
    /// Whether the release is over (until `targetContainers` change or a retry).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Aborted)
    }
}

/// An analysis window being measured.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub started_at: Time,
    /// The proxy pods' counters at the start, by pod.
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, RouteCounters>,
    /// With HTTP traffic: each route's requests so far in this window, as of `measuredAt` (read from the
    /// proxy agents about every 10 s while the window is measured; what `kubectl canary get` shows as the
    /// current window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<WindowRequests>,
    /// When `requests` was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<Time>,
}

/// The counters of both routes in one proxy pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCounters {
    pub stable: Counters,
    pub canary: Counters,
}

/// HAProxy's counters of one backend (cumulative since the proxy started), and its average connect time.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub sessions: u64,
    /// Connection errors and connections the backend reset or closed abnormally.
    pub errors: u64,
    pub check_failures: u64,
    #[serde(default)]
    pub connect_time_ms: u64,
    /// HTTP requests (the proxy agent's count, with `traffic.protocol: http`).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub requests: u64,
    /// HTTP requests that failed.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub request_errors: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The largest count a status holds: the API server keeps integers as int64 (a larger one is refused, and
/// with it the whole status write). Counts read from a proxy pod, and their sums, stop here.
pub const MAX_COUNT: u64 = i64::MAX as u64;

impl Counters {
    /// These counters with every count at most [`MAX_COUNT`] (a proxy pod's answer is from outside).
    pub fn bounded(self) -> Counters {
        let at_most = |n: u64| n.min(MAX_COUNT);
        Counters {
            sessions: at_most(self.sessions),
            errors: at_most(self.errors),
            check_failures: at_most(self.check_failures),
            connect_time_ms: at_most(self.connect_time_ms),
            requests: at_most(self.requests),
            request_errors: at_most(self.request_errors),
        }
    }
}

/// The judgement of one analysis window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub step: i32,
    pub weight: i32,
    pub started_at: Time,
    pub finished_at: Time,
    pub canary_sessions: u64,
    pub stable_sessions: u64,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricResult>,
    /// With HTTP traffic: each route's requests over the window, as the proxy measured them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<WindowRequests>,
}

/// Both routes' HTTP requests over a window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct WindowRequests {
    pub canary: RouteRequestSummary,
    pub stable: RouteRequestSummary,
}

/// One route's HTTP requests over a window: how many, how fast, how many succeeded, how long they took.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRequestSummary {
    pub requests: u64,
    /// Requests a second.
    pub rate: f64,
    /// Percent of the requests that succeeded (none without a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Latency percentiles in milliseconds (none without a measured request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    Passed,
    Failed,
    /// Too little traffic to judge, or no data.
    Inconclusive,
    /// A comparison neither passed nor failed and asks for another window (`onMarginal: Extend`).
    Marginal,
}

/// A canary-versus-baseline test over a window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComparisonResult {
    pub baseline_query: String,
    pub canary_samples: u32,
    pub baseline_samples: u32,
    /// Mann-Whitney's U of the canary's samples.
    pub u: f64,
    pub p_value: f64,
    /// The Hodges-Lehmann shift relative to the baseline's median.
    pub effect: f64,
    /// Pass, Marginal or Fail.
    pub judgement: String,
    /// When a side had more samples than are judged: how many it had (`canary 3601, baseline 3601`), thinned
    /// evenly to `canarySamples` and `baselineSamples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downsampled_from: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    /// The proxy's metric, or none for a query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// The query as run (variables replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The value (0 when there was none: see `noData`).
    pub value: f64,
    /// Why a query gave no value (no sample, NaN, Prometheus unreachable...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data: Option<String>,
    /// The canary-versus-baseline test, for a `prometheus.compare` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<ComparisonResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<f64>,
    /// The bound, as written (`max 0.05`, `maxOverStable 0.01`).
    pub bound: String,
    pub verdict: Verdict,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}
