//! Kanary: split L4 traffic by weight between Services through a generated HAProxy.
//!
//! Served in two groups with one schema: `kanary.k8s.io/v1` (what etiennecoutaud/kanary released) and
//! `kanary.pyxida.io/v1alpha1` (what its README shows). The original decoder was case-insensitive, so the
//! spellings real manifests use are all declared (and so not pruned): `serviceName`/`servicename`/
//! `ServiceName`, `servicePort`/`serviceport`/`ServicePort`, `weight`/`Weight`; CEL rules require exactly
//! one of each. The controller reads Kanaries of either group as [`Kanary`] objects (the group is their
//! `ApiResource`), whose spec is parsed once, when it is read, through [`KanarySpec`] and its serde aliases.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The two API groups (and versions) Kanary is served in.
pub const GROUPS: [(&str, &str); 2] = [("kanary.k8s.io", "v1"), ("kanary.pyxida.io", "v1alpha1")];
pub const KIND: &str = "Kanary";
pub const PLURAL: &str = "kanaries";
/// Longest Kanary name whose `<name>-haproxy` still fits a label value (63 characters).
pub const MAX_NAME_LENGTH: usize = 63 - "-haproxy".len();
/// Most routes a Kanary may have (bounds the cost of the CEL rules).
pub const MAX_ROUTES: usize = 16;

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct KanarySpec {
    /// Name of the Service that fronts the generated HAProxy.
    pub destination: String,
    pub routes: Vec<Route>,
    /// How the proxy splits: `tcp` (the original's, per connection) or `http` (per request; an addition of
    /// ours).
    #[serde(default, skip_serializing_if = "Protocol::is_tcp")]
    pub protocol: Protocol,
    /// With `protocol: http`: cohorts and overrides (an addition of ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRouting>,
    /// The proxy's settings where they differ from the controller's defaults (an addition of ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
}

/// What the proxy splits: connections (`tcp`) or HTTP requests (`http`: HTTP/1.1 with keep-alive and
/// HTTP/2, gRPC included; each request drawn on its own).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
}

impl Protocol {
    pub fn is_tcp(&self) -> bool {
        *self == Protocol::Tcp
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

/// How HTTP requests may choose their route besides the weights. A route with weight 0 is never chosen this
/// way: setting a route's weight to 0 (a rollback) ends its cohort and its overrides at once.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouting {
    /// A request with this header goes to the route whose `headerValue` is the header's value (testers,
    /// synthetic checks): `x-canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Keep each client on the route it first got: the proxy sets cookie [`STICKY_COOKIE`] naming the route,
    /// and a request that carries it goes to that route while its weight is above 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky: bool,
}

/// The cookie that keeps a client on its route (`sticky: true`).
pub const STICKY_COOKIE: &str = "kanary-route";
/// A header name the proxy matches (`http.header`): letters, digits and '-'.
pub const HEADER_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9-]{0,63}$";
/// A header value a route answers to (`headerValue`): letters, digits, '.', '_' and '-'.
pub const HEADER_VALUE_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";

/// The `appProtocol` values of a Service port that say its pods speak HTTP/2 without TLS (gRPC among them):
/// the proxy then speaks HTTP/2 to them.
pub const H2C_APP_PROTOCOLS: [&str; 4] = ["kubernetes.io/h2c", "h2c", "grpc", "http2"];

/// The schema of a protocol field.
pub fn protocol_schema(what: &str) -> Value {
    json!({"type": "string", "enum": ["tcp", "http"], "description": what})
}

/// Settings of a Kanary's proxy; each one unset takes the controller's default (its `--proxy-*` flags).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// How long a client may stay silent on an established connection (HAProxy duration: `1h`, `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_client: Option<String>,
    /// How long a backend may stay silent on an established connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_server: Option<String>,
    /// How long a connection to a backend may take to open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_connect: Option<String>,
    /// How long the connections of a configuration replaced by a reload may go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_stop_after: Option<String>,
    /// Most concurrent connections per proxy pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxconn: Option<i64>,
    /// The HAProxy container's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// The longest duration HAProxy takes for a timeout (2^31 - 1 milliseconds, about 24.8 days).
pub const MAX_DURATION_MS: u64 = i32::MAX as u64;
/// Most connections a proxy pod may be set to take.
pub const MAX_MAXCONN: i64 = 1_000_000;

/// A duration as HAProxy reads it (a number and a unit: `us`, `ms`, `s`, `m`, `h` or `d`), in milliseconds;
/// none when it is not one, or longer than HAProxy takes.
pub fn duration_ms(text: &str) -> Option<u64> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let ms = match unit {
        "us" => number / 1000,
        "ms" => number,
        "s" => number.checked_mul(1_000)?,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        "d" => number.checked_mul(86_400_000)?,
        _ => return None,
    };
    (ms <= MAX_DURATION_MS).then_some(ms)
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Route {
    pub backend: Backend,
    #[serde(alias = "Weight")]
    pub weight: i64,
    /// With `http.header`: requests whose header has this value go to this route (while its weight is above
    /// 0). An addition of ours.
    #[serde(default, rename = "headerValue", skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Backend {
    #[serde(rename = "serviceName", alias = "servicename", alias = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "servicePort", alias = "serviceport", alias = "ServicePort")]
    pub service_port: IntOrString,
}

/// The status, with the original's keys (`destinationStatus`, `endpointStatuses` with capitalised keys).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KanaryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_status: Option<DestinationStatus>,
    #[serde(default)]
    pub endpoint_statuses: Vec<EndpointStatus>,
    /// The routes and their weights, for `kubectl get` ("myapp-v1=80,myapp-v2=20").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The revision of the data plane the proxy's ConfigMap asks for (`dataplane.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_revision: Option<String>,
    /// What each proxy pod's agent reports its HAProxy serves, by pod name. Written by the agents (each its
    /// own key, with a field manager of its own), never by the controller, which only removes the reports of
    /// pods that are gone.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub proxies: std::collections::BTreeMap<String, ProxyReport>,
}

/// What a proxy pod's agent reports.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    /// The data plane revision its HAProxy serves.
    pub revision: String,
    /// A revision HAProxy refused (the served one kept serving), until a later one is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_revision: Option<String>,
    /// When it was reported.
    pub reported_at: Time,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationStatus {
    pub proxy_name: String,
    pub service_name: String,
    pub config_name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct EndpointStatus {
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "Weight")]
    pub weight: i64,
    #[serde(rename = "Ips")]
    pub ips: Vec<String>,
}

/// A Kanary of either group, as the controller reads it. A spec that does not parse is kept as the parse
/// error (reported in the status, like any invalid spec), and an unreadable status as none, so that one
/// malformed object never stops the watch of the others.
#[derive(Deserialize, Clone, Debug)]
pub struct Kanary {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default = "missing_spec", deserialize_with = "parse_spec")]
    pub spec: Result<KanarySpec, String>,
    #[serde(default, deserialize_with = "parse_status")]
    pub status: Option<KanaryStatus>,
}

fn missing_spec() -> Result<KanarySpec, String> {
    Err("spec: missing".into())
}

fn parse_spec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Result<KanarySpec, String>, D::Error> {
    let raw = Value::deserialize(d)?;
    Ok(serde_json::from_value(raw).map_err(|e| format!("spec: {e}")))
}

fn parse_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<KanaryStatus>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

impl kube::Resource for Kanary {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    fn kind(ar: &ApiResource) -> std::borrow::Cow<'_, str> {
        ar.kind.as_str().into()
    }
    fn group(ar: &ApiResource) -> std::borrow::Cow<'_, str> {
        ar.group.as_str().into()
    }
    fn version(ar: &ApiResource) -> std::borrow::Cow<'_, str> {
        ar.version.as_str().into()
    }
    fn api_version(ar: &ApiResource) -> std::borrow::Cow<'_, str> {
        ar.api_version.as_str().into()
    }
    fn plural(ar: &ApiResource) -> std::borrow::Cow<'_, str> {
        ar.plural.as_str().into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}

impl Kanary {
    /// The Services the Kanary refers to: its destination and its backends (none while the spec is unreadable).
    pub fn services(&self) -> Vec<String> {
        let Ok(spec) = &self.spec else { return vec![] };
        std::iter::once(spec.destination.clone())
            .chain(spec.routes.iter().map(|r| r.backend.service_name.clone()))
            .collect()
    }
}

/// Where releases create their Kanaries: kanary.k8s.io, the group etiennecoutaud/kanary released.
pub fn release_resource() -> ApiResource {
    let (group, version) = GROUPS[0];
    api_resource(group, version)
}

/// The ApiResource of Kanary in one group.
pub fn api_resource(group: &str, version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, KIND), PLURAL)
}

/// A CEL expression for the service name of route `r`, whatever its spelling.
fn service_name_of(r: &str) -> String {
    format!(
        "(has({r}.backend.serviceName) ? {r}.backend.serviceName : has({r}.backend.servicename) ? {r}.backend.servicename : {r}.backend.ServiceName)"
    )
}

fn exactly_one(fields: &[&str]) -> String {
    let list: Vec<String> = fields.iter().map(|f| format!("has(self.{f})")).collect();
    format!("[{}].filter(x, x).size() == 1", list.join(", "))
}

fn spec_schema() -> Value {
    let name = json!({"type": "string", "maxLength": 63, "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"});
    // a number in the port range, or a name of DNS-label length (its format is checked by the controller:
    // a regex on a string of unknown length would exceed the API server's CEL cost budget)
    let port = json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-validations": [{
        "rule": "type(self) == int ? self >= 1 && self <= 65535 : self.size() >= 1 && self.size() <= 63",
        "message": "servicePort: a port number of the Service (1 to 65535) or the name of one of its ports (at most 63 characters)",
    }]});
    let weight = json!({"type": "integer", "minimum": 0, "maximum": 100});
    let mut destination = name.clone();
    destination["description"] =
        json!("Name of the Service that fronts the generated HAProxy (created by the controller).");
    json!({
        "type": "object",
        "required": ["destination", "routes"],
        "x-kubernetes-validations": [
            {"rule": "self.routes.map(r, has(r.weight) ? r.weight : has(r.Weight) ? r.Weight : 0).sum() == 100",
             "message": "spec.routes: the weights must add up to 100", "fieldPath": ".routes"},
            {"rule": format!("self.routes.all(a, self.routes.exists_one(b, {} == {}))", service_name_of("b"), service_name_of("a")),
             "message": "spec.routes: each backend serviceName may appear only once", "fieldPath": ".routes"},
            {"rule": format!("!self.routes.exists(r, {} == self.destination)", service_name_of("r")),
             "message": "spec.destination: must not be one of the backend services (it is the Service in front of the proxy)", "fieldPath": ".destination"},
        ],
        "properties": {
            "destination": destination,
            "http": {"type": "object", "description": "With protocol http: cohorts and overrides. A route with weight 0 is never chosen by them (a rollback ends them at once)",
                "properties": {
                    "header": {"type": "string", "pattern": HEADER_NAME_PATTERN, "description": "A request with this header goes to the route whose headerValue is its value (x-canary)"},
                    "sticky": {"type": "boolean", "description": "Keep each client on the route it first got (a cookie the proxy sets, kanary-route)"},
                }},
            "protocol": protocol_schema("How the proxy splits traffic: tcp (each connection drawn by weight; the default) or http (each HTTP request drawn by weight: HTTP/1.1 keep-alive and HTTP/2, gRPC included; HTTP/2 to backends whose Service port's appProtocol is kubernetes.io/h2c, h2c, http2 or grpc)"),
            "proxy": proxy_schema(),
            "routes": {
                "type": "array", "minItems": 1, "maxItems": MAX_ROUTES,
                "items": {
                    "type": "object",
                    "required": ["backend"],
                    "x-kubernetes-validations": [
                        {"rule": exactly_one(&["weight", "Weight"]), "message": "set weight (0 to 100) exactly once, as weight or Weight"},
                    ],
                    "properties": {
                        "backend": {
                            "type": "object",
                            "x-kubernetes-validations": [
                                {"rule": exactly_one(&["serviceName", "servicename", "ServiceName"]), "message": "set serviceName exactly once (serviceName, servicename or ServiceName)"},
                                {"rule": exactly_one(&["servicePort", "serviceport", "ServicePort"]), "message": "set servicePort exactly once (servicePort, serviceport or ServicePort): a port name or number of the Service"},
                            ],
                            "properties": {
                                "serviceName": name, "servicename": name, "ServiceName": name,
                                "servicePort": port, "serviceport": port, "ServicePort": port,
                            }
                        },
                        "weight": weight, "Weight": weight,
                        "headerValue": {"type": "string", "pattern": HEADER_VALUE_PATTERN, "description": "With http.header: requests whose header has this value go to this route"},
                    }
                }
            }
        }
    })
}

fn proxy_schema() -> Value {
    let duration = |what: &str| {
        json!({"type": "string", "maxLength": 16, "pattern": "^[0-9]{1,10}(us|ms|s|m|h|d)$",
            "description": format!("{what} (a number and a unit: us, ms, s, m, h or d; at most 24 days)")})
    };
    let quantity = json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$"});
    let quantities = json!({"type": "object", "maxProperties": 8, "additionalProperties": quantity});
    json!({
        "type": "object",
        "description": "The proxy's settings where they differ from the controller's defaults",
        "properties": {
            "timeoutClient": duration("How long a client may stay silent on an established connection"),
            "timeoutServer": duration("How long a backend may stay silent on an established connection"),
            "timeoutConnect": duration("How long a connection to a backend may take to open"),
            "hardStopAfter": duration("How long the connections of a configuration replaced by a reload may go on"),
            "maxconn": {"type": "integer", "minimum": 1, "maximum": MAX_MAXCONN, "description": "Most concurrent connections per proxy pod"},
            "resources": {"type": "object", "description": "The HAProxy container's resources",
                "properties": {"requests": quantities, "limits": quantities}},
        },
    })
}

fn status_schema() -> Value {
    let s = json!({"type": "string"});
    json!({
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "destinationStatus": {"type": "object", "properties": {"proxyName": s, "serviceName": s, "configName": s}},
            "endpointStatuses": {"type": "array", "items": {"type": "object", "properties": {
                "ServiceName": s, "Weight": {"type": "integer"}, "Ips": {"type": "array", "items": s}}}},
            "routes": s,
            "dataPlaneRevision": s,
            "proxies": {"type": "object", "additionalProperties": {"type": "object", "required": ["revision", "reportedAt"],
                "properties": {"revision": s, "refusedRevision": s, "reportedAt": {"type": "string", "format": "date-time"}}}},
            "conditions": {
                "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "required": ["type", "status", "lastTransitionTime", "reason", "message"], "properties": {
                    "type": s, "status": s, "reason": s, "message": s,
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "observedGeneration": {"type": "integer", "format": "int64"}}}
            }
        }
    })
}

/// The CRD of Kanary in one group.
pub fn crd(group: &str, version: &str) -> CustomResourceDefinition {
    let mut annotations = serde_json::Map::new();
    if group.ends_with(".k8s.io") {
        // a real API server only accepts CRDs in *.k8s.io groups with this annotation
        annotations.insert(
            "api-approved.kubernetes.io".into(),
            json!("unapproved, kept for compatibility with manifests written for etiennecoutaud/kanary"),
        );
    }
    let value = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{PLURAL}.{group}"), "annotations": annotations},
        "spec": {
            "group": group,
            "names": {"kind": KIND, "plural": PLURAL, "singular": "kanary", "shortNames": ["ky"], "listKind": "KanaryList"},
            "scope": "Namespaced",
            "versions": [{
                "name": version, "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Destination", "type": "string", "jsonPath": ".spec.destination"},
                    {"name": "Routes", "type": "string", "jsonPath": ".status.routes"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "Splits L4 traffic by weight between Services through a generated HAProxy",
                    "x-kubernetes-validations": [{
                        "rule": format!("self.metadata.name.size() <= {MAX_NAME_LENGTH}"),
                        "message": format!("metadata.name: at most {MAX_NAME_LENGTH} characters (the proxy is named <name>-haproxy)"),
                    }],
                    "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                    "required": ["spec"],
                }},
            }],
        },
    });
    serde_json::from_value(value).expect("a valid CRD")
}
