//! The build step of the Kanary controller: the objects a valid Kanary owns, with the original's names, the
//! events its changes call for, and its status, as plain values: ConfigMap `<name>-config` (keys
//! `haproxy.cfg` and `weights.map`, the files HAProxy runs, and `dataplane.json`, the same data plane for
//! the proxy agent), Deployment `<name>-haproxy` (hardened pods: the proxy agent as a native sidecar, which
//! writes HAProxy's files and applies every change of the ConfigMap to the running HAProxy, so the pod
//! template does not change with backends or weights), the agent's identity (ServiceAccount, Role and
//! RoleBinding `<name>-haproxy`: get, list and watch of that one ConfigMap, patch of the Kanary's status) and
//! Service `<destination>` (port 80). Pure.

use super::validate::{Degradation, Problem, Valid};
use crate::api::kanary::{DestinationStatus, EndpointStatus, KanarySpec, KanaryStatus, ProxySpec};
use crate::conditions::{Observed, condition, warn_on_transition};
use crate::dataplane::haproxy::{
    CONFIG_FILE, HEALTH_PATH, PROXY_PORT, ProxySettings, RUNTIME_DIR, RouteBackend, STATS_PORT, WEIGHTS_FILE,
};
use crate::dataplane::{DATAPLANE_KEY, DataPlane, Layout, Server};
use crate::names::kanary::{conditions, reasons};
use crate::names::{PROXY_LABEL, config_name, proxy_name};
use crate::report::Note;
use crate::runtime::children::with_desired_hash;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub const CONFIG_KEY: &str = CONFIG_FILE;
/// The official image's haproxy user; the agent runs as the same user, to share HAProxy's files and socket.
pub const HAPROXY_UID: i64 = 99;
/// HAProxy's master CLI socket in the proxy pod, where the agent reaches the running HAProxy.
pub const MASTER_SOCKET: &str = "/var/run/kanary/master.sock";
/// The agent's port for `/metrics`, `/healthz`, `/readyz` and `/startupz`.
pub const AGENT_PORT: u16 = 8405;

/// How long the report of a proxy pod that is no longer among the destination's endpoints is kept (a pod
/// may report before its endpoint is listed).
pub const STALE_REPORT_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// The objects a valid Kanary owns, as they should be (each carrying its desired hash), and the revision of
/// the data plane they carry.
pub struct Desired {
    /// The data plane's revision (what the agents report they serve).
    pub revision: String,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    /// The proxy agent's identity: a ServiceAccount, and the Role and RoleBinding that let it read the
    /// ConfigMap.
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

/// The objects Kanary `name` of namespace `ns` owns.
pub fn desired(name: &str, ns: &str, valid: &Valid, options: &ProxyOptions) -> Desired {
    let proxy = valid.spec.proxy.clone().unwrap_or_default();
    let settings = ProxySettings {
        protocol: valid.spec.protocol,
        http: valid.spec.http.clone(),
        ..proxy_settings(&proxy, &options.defaults)
    };
    let plane = DataPlane { owner: format!("{ns}/{name}"), settings, routes: valid.routes.clone() };
    let files = ProxyFiles::of(&plane);
    let owner = &valid.owner;
    let resources = proxy.resources.clone();
    Desired {
        config_map: with_desired_hash(build_config_map(name, ns, owner, &files)),
        deployment: with_desired_hash(build_deployment(name, ns, owner, options, resources)),
        service: with_desired_hash(build_service(name, ns, owner, &valid.spec.destination)),
        service_account: with_desired_hash(build_service_account(name, ns, owner)),
        role: with_desired_hash(build_role(name, ns, owner)),
        role_binding: with_desired_hash(build_role_binding(name, ns, owner)),
        revision: plane.revision(),
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
}

/// The Normal event a configuration change calls for: the proxy created, or its configuration changed.
/// `current` is the desired hash of the ConfigMap the cluster holds (none: there is none yet).
pub fn config_note(name: &str, valid: &Valid, desired: &Desired, current: Option<&str>) -> Option<Note> {
    match current {
        None => Some(Note::normal(
            reasons::PROXY_CREATED,
            format!("created the proxy {:?} for Service {:?}", proxy_name(name), valid.spec.destination),
        )),
        Some(current) if Some(current) != crate::runtime::children::desired_hash(&desired.config_map.metadata) => {
            let split: Vec<String> = valid
                .routes
                .iter()
                .map(|r| format!("{}={}% ({} servers)", r.service, r.weight, r.servers.len()))
                .collect();
            Some(Note::normal(reasons::CONFIG_UPDATED, format!("proxy configuration updated: {}", split.join(", "))))
        }
        Some(_) => None,
    }
}

/// The reason of a BackendsReady condition that is not ready: some route's Service is missing, or some
/// route has no ready endpoint; none when every route with a weight has a live server.
fn degraded_reason(degraded: &[(String, Degradation)]) -> Option<&'static str> {
    let worst = degraded.iter().map(|(_, why)| *why).min_by_key(|why| *why != Degradation::ServiceNotFound)?;
    Some(worst.reason())
}

/// The Warning events of the conditions that turned bad since `before`: a problem, or routes without a live
/// server (`degraded`).
pub fn warnings(
    before: &[Condition],
    after: &KanaryStatus,
    problem: Option<&Problem>,
    degraded: &[(String, Degradation)],
) -> Vec<Note> {
    let ready = warn_on_transition(before, &after.conditions, conditions::READY, problem.map(Problem::reason));
    let backends = warn_on_transition(before, &after.conditions, conditions::BACKENDS_READY, degraded_reason(degraded));
    let refused =
        warn_on_transition(before, &after.conditions, conditions::DATA_PLANE_SYNCED, Some(reasons::CONFIG_REFUSED));
    ready.into_iter().chain(backends).chain(refused).collect()
}

/// The proxy's images and replicas, and the settings a Kanary does not set (controller flags).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// HAProxy's image (the official one, or one built like it).
    pub image: String,
    /// canary-controller's image, which runs the proxy agent.
    pub agent_image: String,
    pub replicas: i32,
    pub defaults: ProxySettings,
}

/// The settings of a Kanary's proxy: its own (`spec.proxy`, validated) over the controller's `defaults`.
pub fn proxy_settings(proxy: &ProxySpec, defaults: &ProxySettings) -> ProxySettings {
    let pick = |own: &Option<String>, default: &String| own.clone().unwrap_or_else(|| default.clone());
    ProxySettings {
        timeout_client: pick(&proxy.timeout_client, &defaults.timeout_client),
        timeout_server: pick(&proxy.timeout_server, &defaults.timeout_server),
        timeout_connect: pick(&proxy.timeout_connect, &defaults.timeout_connect),
        hard_stop_after: pick(&proxy.hard_stop_after, &defaults.hard_stop_after),
        maxconn: proxy.maxconn.and_then(|m| u32::try_from(m).ok()).unwrap_or(defaults.maxconn),
        ..defaults.clone()
    }
}

/// The HAProxy container's resources unless a Kanary sets its own.
fn default_resources() -> ResourceRequirements {
    resources(&[("cpu", "50m"), ("memory", "32Mi")], &[("memory", "256Mi")])
}

/// Resource requirements from (resource, quantity) pairs.
fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let quantities =
        |pairs: &[(&str, &str)]| pairs.iter().map(|(r, q)| (r.to_string(), Quantity(q.to_string()))).collect();
    ResourceRequirements {
        requests: Some(quantities(requests)),
        limits: Some(quantities(limits)),
        ..Default::default()
    }
}

/// The metadata of a proxy object: its name, namespace, owner and the proxy label.
fn metadata(name: &str, namespace: &str, owner: &OwnerReference, proxy: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(proxy_labels(proxy)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// `proxy: <name>-haproxy`, the label of the proxy's objects and its pods' selector.
fn proxy_labels(proxy: &str) -> BTreeMap<String, String> {
    [(PROXY_LABEL.to_string(), proxy.to_string())].into()
}

pub fn build_config_map(name: &str, namespace: &str, owner: &OwnerReference, files: &ProxyFiles) -> ConfigMap {
    let data = [(CONFIG_KEY, &files.config), (WEIGHTS_FILE, &files.weights), (DATAPLANE_KEY, &files.dataplane)];
    ConfigMap {
        metadata: metadata(&config_name(name), namespace, owner, &proxy_name(name)),
        data: Some(data.into_iter().map(|(key, text)| (key.to_string(), text.clone())).collect()),
        ..Default::default()
    }
}

/// The proxy agent's ServiceAccount (`<name>-haproxy`); its token is mounted only where a pod asks for it
/// (the proxy's pods do).
pub fn build_service_account(name: &str, namespace: &str, owner: &OwnerReference) -> ServiceAccount {
    let proxy = proxy_name(name);
    ServiceAccount {
        metadata: metadata(&proxy, namespace, owner, &proxy),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// What the proxy agent may do: get, list and watch its Kanary's ConfigMap (a list or watch selects it by
/// name, `metadata.name=<name>-config`, which `resourceNames` grants), and patch its Kanary's status (to
/// report what it serves); nothing else.
pub fn build_role(name: &str, namespace: &str, owner: &OwnerReference) -> Role {
    let proxy = proxy_name(name);
    let group = owner.api_version.split('/').next().unwrap_or_default();
    let rule = |group: &str, resource: &str, name: String, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        resource_names: Some(vec![name]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    Role {
        metadata: metadata(&proxy, namespace, owner, &proxy),
        rules: Some(vec![
            rule("", "configmaps", config_name(name), &["get", "list", "watch"]),
            rule(group, "kanaries/status", name.into(), &["patch"]),
        ]),
    }
}

/// Binds the proxy agent's Role to its ServiceAccount.
pub fn build_role_binding(name: &str, namespace: &str, owner: &OwnerReference) -> RoleBinding {
    let proxy = proxy_name(name);
    RoleBinding {
        metadata: metadata(&proxy, namespace, owner, &proxy),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: proxy.clone() },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: proxy,
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    }
}

/// A container's hardening: no privilege escalation, a read-only root file system, no capabilities.
fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

/// An HTTP probe of `path` on the named `port`.
fn probe(path: &str, port: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

/// A named TCP port of a container.
fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount { name: volume.into(), mount_path: path.into(), ..Default::default() }
}

/// The proxy's pods: HAProxy in master-worker mode on the files the agent writes to the shared `run`
/// volume, and the agent as a native sidecar (an init container that keeps running: it starts first and
/// writes the first files, HAProxy starts once its startup probe passes, and it stops after HAProxy).
pub fn build_deployment(
    name: &str,
    namespace: &str,
    owner: &OwnerReference,
    options: &ProxyOptions,
    haproxy_resources: Option<ResourceRequirements>,
) -> Deployment {
    let proxy = proxy_name(name);
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let agent_args = [
        "proxy-agent".to_string(),
        "--config-map".into(),
        config_name(name),
        "--dir".into(),
        RUNTIME_DIR.into(),
        "--master-socket".into(),
        MASTER_SOCKET.into(),
        "--metrics-address".into(),
        format!("0.0.0.0:{AGENT_PORT}"),
        "--kanary".into(),
        name.into(),
        "--kanary-api-version".into(),
        owner.api_version.clone(),
        "--log-format".into(),
        "json".into(),
    ];
    let agent = Container {
        name: "agent".into(),
        image: Some(options.agent_image.clone()),
        restart_policy: Some("Always".into()),
        args: Some(agent_args.into()),
        env: Some(vec![field("POD_NAMESPACE", "metadata.namespace"), field("POD_NAME", "metadata.name")]),
        ports: Some(vec![port("agent", AGENT_PORT)]),
        // HAProxy starts once the agent wrote its files
        startup_probe: Some(probe("/startupz", "agent", 1, 120)),
        // ready once HAProxy serves the desired data plane
        readiness_probe: Some(probe("/readyz", "agent", 2, 2)),
        liveness_probe: Some(probe("/healthz", "agent", 10, 3)),
        security_context: Some(hardened()),
        resources: Some(resources(&[("cpu", "10m"), ("memory", "16Mi")], &[("memory", "64Mi")])),
        volume_mounts: Some(vec![mount("run", RUNTIME_DIR)]),
        ..Default::default()
    };
    let haproxy = Container {
        name: "haproxy".into(),
        image: Some(options.image.clone()),
        // as the official image's entrypoint runs them: `haproxy -W -db` (master-worker, in the foreground)
        // with the master CLI the agent uses, on the agent's files
        args: Some(vec!["-S".into(), MASTER_SOCKET.into(), "-f".into(), format!("{RUNTIME_DIR}/{CONFIG_FILE}")]),
        ports: Some(vec![port("proxy", PROXY_PORT), port("metrics", STATS_PORT)]),
        readiness_probe: Some(probe(HEALTH_PATH, "metrics", 2, 2)),
        liveness_probe: Some(probe(HEALTH_PATH, "metrics", 10, 3)),
        // leave time for the endpoint removal to reach clients, then stop softly
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["/bin/sh".into(), "-c".into(), "sleep 5; kill -USR1 1".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(hardened()),
        resources: Some(haproxy_resources.unwrap_or_else(default_resources)),
        volume_mounts: Some(vec![mount("run", RUNTIME_DIR), mount("tmp", "/tmp")]),
        ..Default::default()
    };
    let empty_dir = |medium: Option<&str>, size: &str| EmptyDirVolumeSource {
        medium: medium.map(String::from),
        size_limit: Some(Quantity(size.into())),
    };
    let pod = PodSpec {
        // the agent reads the ConfigMap with it (HAProxy gets the token too, which grants no more than the
        // config it serves)
        service_account_name: Some(proxy.clone()),
        automount_service_account_token: Some(true),
        termination_grace_period_seconds: Some(45),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(HAPROXY_UID),
            run_as_group: Some(HAPROXY_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        init_containers: Some(vec![agent]),
        containers: vec![haproxy],
        volumes: Some(vec![
            Volume { name: "run".into(), empty_dir: Some(empty_dir(Some("Memory"), "16Mi")), ..Default::default() },
            Volume { name: "tmp".into(), empty_dir: Some(empty_dir(None, "64Mi")), ..Default::default() },
        ]),
        ..Default::default()
    };
    Deployment {
        metadata: metadata(&proxy, namespace, owner, &proxy),
        spec: Some(DeploymentSpec {
            replicas: Some(options.replicas),
            selector: LabelSelector { match_labels: Some(proxy_labels(&proxy)), ..Default::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            min_ready_seconds: Some(2),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(proxy_labels(&proxy)), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

pub fn build_service(name: &str, namespace: &str, owner: &OwnerReference, destination: &str) -> Service {
    let proxy = proxy_name(name);
    Service {
        metadata: metadata(destination, namespace, owner, &proxy),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(proxy_labels(&proxy)),
            ports: Some(vec![ServicePort {
                name: Some("tcp".into()),
                port: 80,
                target_port: Some(IntOrString::String("proxy".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
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
    pub degraded: &'a [(String, Degradation)],
    /// The proxy's available replicas and the replicas it should have.
    pub proxy_replicas: (i32, i32),
    /// The revision of the data plane the ConfigMap asks for (none while a problem holds: the status then
    /// keeps the previous one).
    pub revision: Option<&'a str>,
    /// The proxy's pods (the destination's endpoints).
    pub proxy_pods: &'a [String],
    pub previous: Option<&'a KanaryStatus>,
}

/// The DataPlaneSynced condition: whether every proxy pod's agent reports serving `revision`.
fn data_plane_synced(revision: Option<&str>, pods: &[String], previous: Option<&KanaryStatus>) -> Observed<'static> {
    let observed = |ok, reason, message| Observed { type_: conditions::DATA_PLANE_SYNCED, ok, reason, message };
    let Some(revision) = revision else {
        return observed(false, reasons::SYNCING, "no data plane is configured yet".into());
    };
    if pods.is_empty() {
        return observed(false, reasons::NO_PROXY_PODS, "no proxy pod runs yet".into());
    }
    let reports = previous.map(|p| &p.proxies);
    let report = |pod: &String| reports.and_then(|r| r.get(pod));
    let serving = pods.iter().filter(|p| report(p).is_some_and(|r| r.revision == revision)).count();
    let synced = format!("{serving}/{} proxy pods serve revision {revision}", pods.len());
    let refused: Vec<String> = pods
        .iter()
        .filter_map(|p| report(p).filter(|r| r.refused_revision.as_deref() == Some(revision)).map(|r| (p, r)))
        .map(|(p, r)| format!("{p} (serves {})", r.revision))
        .collect();
    if !refused.is_empty() {
        let message = format!(
            "{synced}: HAProxy refused this configuration in {}; the previous one keeps serving",
            refused.join(", ")
        );
        return observed(false, reasons::CONFIG_REFUSED, message);
    }
    if serving == pods.len() {
        return observed(true, reasons::SYNCED, synced);
    }
    let behind: Vec<String> = pods
        .iter()
        .filter_map(|p| match report(p) {
            None => Some(format!("{p} has not reported")),
            Some(r) if r.revision != revision => Some(format!("{p} serves {}", r.revision)),
            Some(_) => None,
        })
        .collect();
    observed(false, reasons::SYNCING, format!("{synced}; {}", behind.join(", ")))
}

/// The reports of proxy pods that are gone: not among `pods` and older than [`STALE_REPORT_AFTER`].
pub fn stale_reports(status: Option<&KanaryStatus>, pods: &[String], now: &Time) -> Vec<String> {
    let reports = status.map(|s| &s.proxies).into_iter().flatten();
    reports
        .filter(|(pod, report)| {
            let age = now.0.duration_since(report.reported_at.0).unsigned_abs();
            !pods.contains(pod) && age > STALE_REPORT_AFTER
        })
        .map(|(pod, _)| pod.clone())
        .collect()
}

pub fn build_status(o: &Observation, now: &Time) -> KanaryStatus {
    let previous_conditions = o.previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let (available, wanted) = o.proxy_replicas;
    let ready = match o.problem {
        Some(p) => Observed { type_: conditions::READY, ok: false, reason: p.reason(), message: p.message() },
        None if available > 0 => Observed {
            type_: conditions::READY,
            ok: true,
            reason: reasons::PROXY_AVAILABLE,
            message: format!("{available}/{wanted} proxy replicas available"),
        },
        None => Observed {
            type_: conditions::READY,
            ok: false,
            reason: reasons::PROXY_PROGRESSING,
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
            reason: reasons::NO_CONFLICT,
            message: "the proxy's objects are managed by this Kanary".into(),
        },
    };
    let revision = o.revision.or(o.previous.and_then(|p| p.data_plane_revision.as_deref()));
    let synced = data_plane_synced(revision, o.proxy_pods, o.previous);
    let conditions = [ready, backends, conflict, synced]
        .into_iter()
        .map(|c| condition(c, o.generation, previous_conditions, now))
        .collect();
    if let (Some(_), Some(prev)) = (o.problem, o.previous) {
        // the proxy still serves the last good configuration: keep reporting it
        return KanaryStatus {
            observed_generation: o.generation,
            destination_status: prev.destination_status.clone(),
            endpoint_statuses: prev.endpoint_statuses.clone(),
            routes: prev.routes.clone(),
            conditions,
            data_plane_revision: prev.data_plane_revision.clone(),
            proxies: Default::default(),
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
        data_plane_revision: revision.map(String::from),
        // the agents' reports are theirs: never written by the controller
        proxies: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kanary::ProxyReport;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
    }

    fn status(reports: &[(&str, &str, Option<&str>, i64)]) -> KanaryStatus {
        let proxies = reports
            .iter()
            .map(|(pod, revision, refused, second)| {
                let report = ProxyReport {
                    revision: revision.to_string(),
                    refused_revision: refused.map(String::from),
                    reported_at: at(*second),
                };
                (pod.to_string(), report)
            })
            .collect();
        KanaryStatus { proxies, ..KanaryStatus::default() }
    }

    fn pods(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn data_plane_synced_when_every_proxy_pod_reports_the_desired_revision() {
        let both = status(&[("p1", "r2", None, 0), ("p2", "r2", None, 0)]);
        let synced = data_plane_synced(Some("r2"), &pods(&["p1", "p2"]), Some(&both));
        assert_eq!((synced.ok, synced.reason), (true, reasons::SYNCED));
        assert_eq!(synced.message, "2/2 proxy pods serve revision r2");

        let behind = status(&[("p1", "r2", None, 0), ("p2", "r1", None, 0)]);
        let syncing = data_plane_synced(Some("r2"), &pods(&["p1", "p2", "p3"]), Some(&behind));
        assert_eq!((syncing.ok, syncing.reason), (false, reasons::SYNCING));
        assert_eq!(syncing.message, "1/3 proxy pods serve revision r2; p2 serves r1, p3 has not reported");

        let refused = status(&[("p1", "r1", Some("r2"), 0), ("p2", "r1", None, 0)]);
        let refusal = data_plane_synced(Some("r2"), &pods(&["p1", "p2"]), Some(&refused));
        assert_eq!((refusal.ok, refusal.reason), (false, reasons::CONFIG_REFUSED));
        assert!(refusal.message.contains("refused this configuration in p1 (serves r1)"), "{}", refusal.message);

        // a report of a pod that is gone counts for nothing
        let none = data_plane_synced(Some("r2"), &[], Some(&both));
        assert_eq!((none.ok, none.reason), (false, reasons::NO_PROXY_PODS));
    }

    #[test]
    fn only_old_reports_of_pods_that_are_gone_are_stale() {
        let reports = status(&[("gone-old", "r", None, 0), ("gone-new", "r", None, 100), ("here", "r", None, 0)]);
        assert_eq!(stale_reports(Some(&reports), &pods(&["here"]), &at(200)), ["gone-old"]);
        assert!(stale_reports(None, &[], &at(200)).is_empty());
    }
}
