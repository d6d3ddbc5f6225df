//! The build step of the Kanary controller: the objects a valid Kanary owns, with the original's names, the
//! events its changes call for, and its status, as plain values: ConfigMap `<name>-config` (keys
//! `haproxy.cfg` and `weights.map`, the files HAProxy runs, and `dataplane.json`, the same data plane for
//! the proxy agent), Deployment `<name>-haproxy` (hardened HAProxy pods rolled by a checksum of those files
//! with zero-downtime settings) and Service `<destination>` (port 80). Pure.

use super::dataplane::{DATAPLANE_KEY, DataPlane, Layout};
use super::endpoints::Server;
use super::haproxy::{HEALTH_PATH, PROXY_PORT, ProxySettings, RouteBackend, STATS_PORT, WEIGHTS_FILE};
use super::validate::{Problem, Valid};
use crate::api::kanary::{DestinationStatus, EndpointStatus, KanarySpec, KanaryStatus};
use crate::children::with_desired_hash;
use crate::conditions::{Observed, condition, warn_on_transition};
use crate::report::Note;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use serde_json::json;
use sha2::Digest;

pub const CONFIG_KEY: &str = "haproxy.cfg";
pub const PROXY_LABEL: &str = "proxy";
pub const CONFIG_HASH_ANNOTATION: &str = "kanary.k8s.io/config-hash";
/// The official image's config directory.
pub const CONFIG_DIR: &str = "/usr/local/etc/haproxy";
/// The official image's haproxy user.
pub const HAPROXY_UID: i64 = 99;

pub mod conditions {
    pub const READY: &str = "Ready";
    pub const BACKENDS_READY: &str = "BackendsReady";
    pub const CONFLICT: &str = "Conflict";
}

pub mod reasons {
    pub const BACKENDS_READY: &str = "BackendsReady";
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    pub const NO_READY_ENDPOINTS: &str = "NoReadyEndpoints";
}

/// The objects a valid Kanary owns, as they should be (each carrying its desired hash), and the HAProxy
/// files they carry.
pub struct Desired {
    /// The config and the weights map.
    pub files: ProxyFiles,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
}

/// The objects Kanary `name` of namespace `ns` owns.
pub fn desired(name: &str, ns: &str, valid: &Valid, options: &ProxyOptions) -> Desired {
    // the pods read the files from the ConfigMap's volume
    let settings = ProxySettings { files_dir: CONFIG_DIR.into(), ..ProxySettings::default() };
    let plane = DataPlane { owner: format!("{ns}/{name}"), settings, routes: valid.routes.clone() };
    let files = ProxyFiles::of(&plane);
    Desired {
        config_map: with_desired_hash(build_config_map(name, ns, &valid.owner, &files)),
        deployment: with_desired_hash(build_deployment(name, ns, &valid.owner, &files, options)),
        service: with_desired_hash(build_service(name, ns, &valid.owner, &valid.spec.destination)),
        files,
    }
}

/// What the proxy's ConfigMap carries: HAProxy's config and weights map for the data plane, and the data
/// plane itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyFiles {
    pub config: String,
    pub weights: String,
    pub dataplane: String,
}

impl ProxyFiles {
    pub fn of(plane: &DataPlane) -> ProxyFiles {
        let layout = Layout::fresh(plane);
        ProxyFiles { config: layout.config(), weights: layout.weights_map(), dataplane: plane.to_json() }
    }

    /// A checksum of the files HAProxy reads.
    pub fn hash(&self) -> String {
        config_hash(&format!("{}\n{}", self.config, self.weights))
    }
}

/// The Normal event a configuration change calls for: the proxy created, or its configuration changed
/// (`running_hash` is the configuration hash of the proxy's pods now).
pub fn config_note(name: &str, valid: &Valid, desired: &Desired, running_hash: Option<&str>) -> Option<Note> {
    match running_hash {
        None => Some(Note::normal(
            "ProxyCreated",
            format!("created the proxy {:?} for Service {:?}", proxy_name(name), valid.spec.destination),
        )),
        Some(running) if running != desired.files.hash() => {
            let split: Vec<String> = valid
                .routes
                .iter()
                .map(|r| format!("{}={}% ({} servers)", r.service, r.weight, r.servers.len()))
                .collect();
            Some(Note::normal("ConfigUpdated", format!("proxy configuration updated: {}", split.join(", "))))
        }
        Some(_) => None,
    }
}

/// The configuration hash of a proxy Deployment's pods.
pub fn running_config_hash(proxy: &Deployment) -> Option<&str> {
    proxy
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH_ANNOTATION)
        .map(String::as_str)
}

/// The reason of a BackendsReady condition that is not ready: some route's Service is missing, or some
/// route has no ready endpoint; none when every route with a weight has a live server.
fn degraded_reason(degraded: &[(String, &'static str)]) -> Option<&'static str> {
    match degraded {
        [] => None,
        _ if degraded.iter().any(|(_, why)| *why == SERVICE_NOT_FOUND) => Some(reasons::SERVICE_NOT_FOUND),
        _ => Some(reasons::NO_READY_ENDPOINTS),
    }
}

/// The Warning events of the conditions that turned bad since `before`: a problem, or routes without a live
/// server (`degraded`).
pub fn warnings(
    before: &[Condition],
    after: &KanaryStatus,
    problem: Option<&Problem>,
    degraded: &[(String, &'static str)],
) -> Vec<Note> {
    let ready = warn_on_transition(before, &after.conditions, conditions::READY, problem.map(Problem::reason));
    let backends = warn_on_transition(before, &after.conditions, conditions::BACKENDS_READY, degraded_reason(degraded));
    ready.into_iter().chain(backends).collect()
}

pub fn config_name(kanary: &str) -> String {
    format!("{kanary}-config")
}

pub fn proxy_name(kanary: &str) -> String {
    format!("{kanary}-haproxy")
}

/// The proxy's image and replicas (controller flags).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub image: String,
    pub replicas: i32,
}

fn metadata(name: &str, namespace: &str, owner: &OwnerReference, labels: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]})
}

pub fn build_config_map(name: &str, namespace: &str, owner: &OwnerReference, files: &ProxyFiles) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(&config_name(name), namespace, owner, json!({PROXY_LABEL: proxy_name(name)})),
        "data": {CONFIG_KEY: files.config, WEIGHTS_FILE: files.weights, DATAPLANE_KEY: files.dataplane},
    }))
    .expect("a valid ConfigMap")
}

pub fn config_hash(config: &str) -> String {
    format!("{:x}", sha2::Sha256::digest(config.as_bytes()))
}

pub fn build_deployment(
    name: &str,
    namespace: &str,
    owner: &OwnerReference,
    files: &ProxyFiles,
    options: &ProxyOptions,
) -> Deployment {
    let proxy = proxy_name(name);
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(&proxy, namespace, owner, json!({PROXY_LABEL: proxy})),
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": {PROXY_LABEL: proxy}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "minReadySeconds": 2,
            "template": {
                "metadata": {"labels": {PROXY_LABEL: proxy}, "annotations": {CONFIG_HASH_ANNOTATION: files.hash()}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 45,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": HAPROXY_UID, "runAsGroup": HAPROXY_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "haproxy",
                        "image": options.image,
                        "ports": [
                            {"name": "proxy", "containerPort": PROXY_PORT, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": STATS_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": HEALTH_PATH, "port": "metrics"}, "periodSeconds": 2, "failureThreshold": 2},
                        "livenessProbe": {"httpGet": {"path": HEALTH_PATH, "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3},
                        // leave time for the endpoint removal to reach clients, then stop softly
                        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 5; kill -USR1 1"]}}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                        "volumeMounts": [
                            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
                            {"name": "run", "mountPath": "/var/run"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": config_name(name)}},
                        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }))
    .expect("a valid Deployment")
}

pub fn build_service(name: &str, namespace: &str, owner: &OwnerReference, destination: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(destination, namespace, owner, json!({PROXY_LABEL: proxy_name(name)})),
        "spec": {
            "type": "ClusterIP",
            "selector": {PROXY_LABEL: proxy_name(name)},
            "ports": [{"name": "tcp", "port": 80, "targetPort": "proxy", "protocol": "TCP"}],
        },
    }))
    .expect("a valid Service")
}

/// What reconcile saw, for the status.
pub struct Observation<'a> {
    pub name: &'a str,
    pub generation: Option<i64>,
    pub spec: Option<&'a KanarySpec>,
    /// The routes as configured now (empty while a problem holds: the status then keeps the previous ones).
    pub routes: &'a [RouteBackend],
    pub problem: Option<&'a Problem>,
    /// Routes with weight above 0 and no live server, with why ("Service not found", "no ready endpoint").
    pub degraded: &'a [(String, &'static str)],
    /// The proxy's available replicas and the replicas it should have.
    pub proxy_replicas: (i32, i32),
    pub previous: Option<&'a KanaryStatus>,
}

pub fn build_status(o: &Observation, now: &Time) -> KanaryStatus {
    let previous_conditions = o.previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let (available, wanted) = o.proxy_replicas;
    let ready = match o.problem {
        Some(p) => Observed { type_: conditions::READY, ok: false, reason: p.reason(), message: p.message() },
        None if available > 0 => Observed {
            type_: conditions::READY,
            ok: true,
            reason: "ProxyAvailable",
            message: format!("{available}/{wanted} proxy replicas available"),
        },
        None => Observed {
            type_: conditions::READY,
            ok: false,
            reason: "ProxyProgressing",
            message: format!("{available}/{wanted} proxy replicas available"),
        },
    };
    let backends = match degraded_reason(o.degraded) {
        None => Observed {
            type_: conditions::BACKENDS_READY,
            ok: true,
            reason: reasons::BACKENDS_READY,
            message: "every route with a weight has a ready endpoint".into(),
        },
        Some(reason) => {
            let list: Vec<String> = o.degraded.iter().map(|(s, why)| format!("{s:?}: {why}")).collect();
            Observed {
                type_: conditions::BACKENDS_READY,
                ok: false,
                reason,
                message: format!(
                    "routes without a live server get no traffic, their share goes to the others: {}",
                    list.join(", ")
                ),
            }
        }
    };
    let conflict = match o.problem {
        Some(p @ Problem::ObjectNotOwned { .. }) => {
            Observed { type_: conditions::CONFLICT, ok: true, reason: p.reason(), message: p.message() }
        }
        _ => Observed {
            type_: conditions::CONFLICT,
            ok: false,
            reason: "NoConflict",
            message: "the proxy's objects are managed by this Kanary".into(),
        },
    };
    let conditions =
        [ready, backends, conflict].into_iter().map(|c| condition(c, o.generation, previous_conditions, now)).collect();
    if let (Some(_), Some(prev)) = (o.problem, o.previous) {
        // the proxy still serves the last good configuration: keep reporting it
        return KanaryStatus {
            observed_generation: o.generation,
            destination_status: prev.destination_status.clone(),
            endpoint_statuses: prev.endpoint_statuses.clone(),
            routes: prev.routes.clone(),
            conditions,
        };
    }
    KanaryStatus {
        observed_generation: o.generation,
        destination_status: o.spec.map(|s| DestinationStatus {
            proxy_name: proxy_name(o.name),
            service_name: s.destination.clone(),
            config_name: config_name(o.name),
        }),
        endpoint_statuses: o
            .routes
            .iter()
            .map(|r| EndpointStatus {
                service_name: r.service.clone(),
                weight: r.weight,
                ips: r.servers.iter().map(Server::endpoint).collect(),
            })
            .collect(),
        routes: (!o.routes.is_empty())
            .then(|| o.routes.iter().map(|r| format!("{}={}", r.service, r.weight)).collect::<Vec<_>>().join(",")),
        conditions,
    }
}

pub const SERVICE_NOT_FOUND: &str = "Service not found";
pub const NO_READY_ENDPOINT: &str = "no ready endpoint";
