//! The process's caches of the built-in kinds the controllers read: one watch per kind for the whole process,
//! shared by the Canary controller and both Kanary controllers. Each cache is a reflector store (what
//! reconciles read instead of GETs and LISTs) and a fan-out of every object the watch touches, deletions
//! included, to each controller that subscribed (kube's shared streams do not pass deletions on, and a
//! deleted child must be repaired). Each cache is indexed by one label, and remembers the versions this
//! process wrote (their watch events are echoes that wake no one). What is cached is only what the
//! controllers read: Deployments and EndpointSlices in compact forms; ConfigMaps, ServiceAccounts, Roles and
//! RoleBindings as metadata only (their content is never read: the desired-hash annotation stands for it).

use super::index::References;
use crate::canary::build::CANARY_LABEL;
use crate::canary::traffic::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::kanary::build::PROXY_LABEL;
use crate::kanary::endpoints::SERVICE_NAME_LABEL;
use futures::channel::mpsc;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

/// The cache of one kind: its store, subscriptions to what changes in it, and the versions this process
/// wrote last (whose watch events are echoes of its own writes).
pub struct Cache<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    /// The objects by the value of the cache's label (see [`Cache::labelled`]).
    labels: Arc<References<K>>,
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>>,
    written: Mutex<HashMap<(String, String), String>>,
}

/// Annotations never read from a cached object (large, and describing the object itself).
const UNREAD_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// Which labels or annotations of an object a cache keeps.
#[derive(Clone, Copy)]
enum Keep {
    /// All (a Canary copies its target's), but the ones never read.
    All,
    /// Only these.
    Only(&'static [&'static str]),
}

impl Keep {
    fn apply(
        self,
        map: Option<std::collections::BTreeMap<String, String>>,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let kept: std::collections::BTreeMap<String, String> = match self {
            Keep::All => map?.into_iter().filter(|(k, _)| !UNREAD_ANNOTATIONS.contains(&k.as_str())).collect(),
            Keep::Only(keys) => map?.into_iter().filter(|(k, _)| keys.contains(&k.as_str())).collect(),
        };
        (!kept.is_empty()).then_some(kept)
    }
}

/// The metadata a cache keeps: identity, version, generation, controller references, and the labels and
/// annotations `labels` and `annotations` say (the rest of an object's metadata is never read).
fn compact_metadata(meta: ObjectMeta, labels: Keep, annotations: Keep) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        owner_references: meta
            .owner_references
            .map(|refs| refs.into_iter().filter(|r| r.controller == Some(true)).collect()),
        labels: labels.apply(meta.labels),
        annotations: annotations.apply(meta.annotations),
        ..ObjectMeta::default()
    }
}

/// What the controllers read of the objects they own, besides ownership: their label and desired hash.
const CHILD_LABELS: Keep = Keep::Only(&[PROXY_LABEL, CANARY_LABEL]);
const CHILD_ANNOTATIONS: Keep = Keep::Only(&[crate::children::DESIRED_HASH_ANNOTATION]);

/// A Deployment as the cache keeps it: its metadata, its spec as compact JSON (a pod template takes ten
/// times more memory as a typed value; it is read a few times per reconcile at most: when a Canary copies its
/// target, and when a child is compared with what is desired), and its status without conditions.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct CachedDeployment {
    pub metadata: ObjectMeta,
    spec: Box<str>,
    pub status: Option<k8s_openapi::api::apps::v1::DeploymentStatus>,
}

impl From<Deployment> for CachedDeployment {
    fn from(deployment: Deployment) -> CachedDeployment {
        let metadata = compact_metadata(deployment.metadata, Keep::All, Keep::All);
        let spec = deployment.spec.and_then(|s| serde_json::to_string(&s).ok()).unwrap_or_default().into();
        let status = deployment.status.map(|s| k8s_openapi::api::apps::v1::DeploymentStatus { conditions: None, ..s });
        CachedDeployment { metadata, spec, status }
    }
}

impl CachedDeployment {
    pub fn spec(&self) -> Option<k8s_openapi::api::apps::v1::DeploymentSpec> {
        serde_json::from_str(&self.spec).ok()
    }

    /// The Deployment again, with what the cache kept.
    pub fn to_deployment(&self) -> Deployment {
        Deployment { metadata: self.metadata.clone(), spec: self.spec(), status: self.status.clone() }
    }
}

/// A Service as the cache keeps it: metadata, type, selector and ports (all the controllers read; the typed
/// spec is mostly fields they never read).
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct CachedService {
    pub metadata: ObjectMeta,
    pub type_: Option<String>,
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    pub ports: Option<Vec<k8s_openapi::api::core::v1::ServicePort>>,
}

impl From<Service> for CachedService {
    fn from(service: Service) -> CachedService {
        let metadata = compact_metadata(service.metadata, CHILD_LABELS, CHILD_ANNOTATIONS);
        let spec = service.spec.unwrap_or_default();
        CachedService { metadata, type_: spec.type_, selector: spec.selector, ports: spec.ports }
    }
}

impl CachedService {
    /// The Service again, with what the cache kept.
    pub fn to_service(&self) -> Service {
        Service {
            metadata: self.metadata.clone(),
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                type_: self.type_.clone(),
                selector: self.selector.clone(),
                ports: self.ports.clone(),
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// An EndpointSlice as the cache keeps it: per endpoint only its first address, readiness and pod name (the
/// full objects' endpoints made most of the controller's memory: 100,000 endpoints take 5 MiB this way).
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct CachedSlice {
    pub metadata: ObjectMeta,
    pub address_type: String,
    pub ports: Vec<k8s_openapi::api::discovery::v1::EndpointPort>,
    pub endpoints: Vec<CachedEndpoint>,
}

#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct CachedEndpoint {
    pub address: Option<std::net::IpAddr>,
    pub ready: Option<bool>,
    pub pod: Option<Box<str>>,
}

impl From<EndpointSlice> for CachedSlice {
    fn from(slice: EndpointSlice) -> CachedSlice {
        // the slices this controller writes keep their owner and desired hash (ownership, up-to-date checks)
        let ours = slice.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str)
            == Some(MANAGED_BY);
        let mut metadata = compact_metadata(
            slice.metadata,
            Keep::Only(&[SERVICE_NAME_LABEL, MANAGED_BY_LABEL]),
            Keep::Only(&[crate::children::DESIRED_HASH_ANNOTATION]),
        );
        if !ours {
            metadata.owner_references = None;
        }
        let endpoints = slice
            .endpoints
            .into_iter()
            .map(|e| CachedEndpoint {
                address: e.addresses.first().and_then(|a| a.parse().ok()),
                ready: e.conditions.as_ref().and_then(|c| c.ready),
                pod: e.target_ref.and_then(|r| r.name).map(String::into_boxed_str),
            })
            .collect();
        CachedSlice { metadata, address_type: slice.address_type, ports: slice.ports.unwrap_or_default(), endpoints }
    }
}

/// `Resource` for a compact cached form of a built-in kind: the kind's identity, the form's metadata.
macro_rules! cached_form_of {
    ($form:ty, $kind:ty) => {
        impl Resource for $form {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                <$kind as Resource>::kind(&())
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                <$kind as Resource>::group(&())
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                <$kind as Resource>::version(&())
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                <$kind as Resource>::plural(&())
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

cached_form_of!(CachedSlice, EndpointSlice);
cached_form_of!(CachedDeployment, Deployment);
cached_form_of!(CachedService, Service);

/// An object cached as metadata only (a ConfigMap, ServiceAccount, Role or RoleBinding) as the cache keeps
/// it, with who wrote the proxies' (the managers of their managedFields, not the fields: they tell whether
/// someone else wrote to one, `children::metadata_up_to_date`).
fn compact_child<K>(mut object: PartialObjectMeta<K>) -> PartialObjectMeta<K> {
    let proxy_object = object.metadata.labels.as_ref().is_some_and(|l| l.contains_key(PROXY_LABEL));
    let managed_fields = object.metadata.managed_fields.take();
    object.metadata = compact_metadata(object.metadata, CHILD_LABELS, CHILD_ANNOTATIONS);
    if proxy_object {
        let writers = managed_fields.unwrap_or_default().into_iter().map(|e| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: e.manager,
                operation: e.operation,
                subresource: e.subresource,
                ..Default::default()
            }
        });
        object.metadata.managed_fields = Some(writers.collect());
    }
    object
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    /// Caches every object of `api`, each in the form `compact` makes of it, indexed by the value of `label`;
    /// the watch runs in a task of its own.
    fn start<W>(api: Api<W>, compact: fn(W) -> K, label: &'static str) -> Cache<K>
    where
        W: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
    {
        // small pages: a page is held whole, as full objects, while it is decoded (500 EndpointSlices of 20
        // endpoints were most of the peak memory at start)
        let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
        let events = watcher(api, config).map_ok(move |event| event_map(event, compact));
        let labels = Arc::new(References::by_label(label));
        let index = labels.clone();
        let writer = reflector::store::Writer::default();
        let store = writer.as_reader();
        let subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>> = Default::default();
        let fan_out = subscribers.clone();
        let cached = store.clone();
        let watch = events
            .backoff(super::triggers::watch_backoff())
            .inspect(move |event| {
                if let Ok(event) = event {
                    index.apply(event)
                }
            })
            .reflect(writer)
            .touched_objects()
            .for_each(move |touched| {
                match touched {
                    Ok(object) => {
                        // the store's copy when it holds this version (a deleted object is not in the store)
                        let key = reflector::ObjectRef::from_obj(&object);
                        let object = match cached.get(&key) {
                            Some(stored) if stored.resource_version() == object.resource_version() => stored,
                            _ => Arc::new(object),
                        };
                        fan_out.lock().expect("subscribers").retain(|s| s.unbounded_send(object.clone()).is_ok());
                    }
                    Err(e) => tracing::debug!(kind = %K::kind(&()), error = %e, "watch error; retrying"),
                }
                futures::future::ready(())
            });
        tokio::spawn(watch);
        Cache { store, labels, subscribers, written: Mutex::default() }
    }

    /// The object `name` of namespace `ns`.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&reflector::ObjectRef::new(name).within(ns))
    }

    /// The objects of namespace `ns` whose label (the one the cache is indexed by) has `value`.
    pub fn labelled(&self, ns: &str, value: &str) -> Vec<Arc<K>> {
        let names = self.labels.referring_to(ns, value);
        names.iter().filter_map(|name| self.get(ns, name)).collect()
    }

    /// Every object the watch touches from now on (created, changed or deleted).
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (sender, receiver) = mpsc::unbounded();
        self.subscribers.lock().expect("subscribers").push(sender);
        receiver
    }

    async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.store.wait_until_ready().await
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Cache<K> {
    /// Notes that this process wrote `object` (as the API server returned it): the watch event of that
    /// version is an echo of the write, which tells its owner nothing new.
    pub fn note_written(&self, object: &impl Resource) {
        let meta = object.meta();
        let (Some(ns), Some(name), Some(version)) = (&meta.namespace, &meta.name, &meta.resource_version) else {
            return;
        };
        self.written.lock().expect("written lock").insert((ns.clone(), name.clone()), version.clone());
    }

    /// Whether `object` is the version this process wrote last (see [`Cache::note_written`]). A later version
    /// forgets the note.
    pub fn is_echo(&self, object: &K) -> bool {
        let key = (object.namespace().unwrap_or_default(), object.name_any());
        let mut written = self.written.lock().expect("written lock");
        match written.get(&key) {
            Some(version) if Some(version) == object.meta().resource_version.as_ref() => true,
            Some(_) => {
                written.remove(&key);
                false
            }
            None => false,
        }
    }
}

/// Objects per page of the caches' initial lists.
const LIST_PAGE_SIZE: u32 = 100;

/// The caches the controllers read.
pub struct Caches {
    /// Compact (see [`CachedDeployment`]), indexed by the canary label (canary Deployments).
    pub deployments: Cache<CachedDeployment>,
    /// Compact (see [`CachedService`]), indexed by the proxy label (the Services Kanaries created).
    pub services: Cache<CachedService>,
    /// Compact (see [`CachedSlice`]), indexed by Service name.
    pub endpoint_slices: Cache<CachedSlice>,
    /// Metadata only, indexed by the proxy label.
    pub config_maps: Cache<PartialObjectMeta<ConfigMap>>,
    /// The proxy agents' identities: metadata only, indexed by the proxy label.
    pub service_accounts: Cache<PartialObjectMeta<ServiceAccount>>,
    pub roles: Cache<PartialObjectMeta<Role>>,
    pub role_bindings: Cache<PartialObjectMeta<RoleBinding>>,
}

impl Caches {
    /// Starts the watches; [`Caches::ready`] tells when every cache holds its first list.
    pub fn start(client: &Client) -> Caches {
        Caches {
            deployments: Cache::start(Api::<Deployment>::all(client.clone()), CachedDeployment::from, CANARY_LABEL),
            services: Cache::start(Api::<Service>::all(client.clone()), CachedService::from, PROXY_LABEL),
            endpoint_slices: Cache::start(
                Api::<EndpointSlice>::all(client.clone()),
                CachedSlice::from,
                SERVICE_NAME_LABEL,
            ),
            config_maps: Cache::start(Api::all(client.clone()), compact_child, PROXY_LABEL),
            service_accounts: Cache::start(Api::all(client.clone()), compact_child, PROXY_LABEL),
            roles: Cache::start(Api::all(client.clone()), compact_child, PROXY_LABEL),
            role_bindings: Cache::start(Api::all(client.clone()), compact_child, PROXY_LABEL),
        }
    }

    /// Completes once every cache holds its first list: a reconcile before that would take what is not cached
    /// yet for absent.
    pub async fn ready(&self) -> anyhow::Result<()> {
        let (d, s, e, c) = futures::join!(
            self.deployments.ready(),
            self.services.ready(),
            self.endpoint_slices.ready(),
            self.config_maps.ready()
        );
        let (a, r, b) = futures::join!(self.service_accounts.ready(), self.roles.ready(), self.role_bindings.ready());
        d.and(s)
            .and(e)
            .and(c)
            .and(a)
            .and(r)
            .and(b)
            .map_err(|_| anyhow::anyhow!("a cache stopped before its first list"))
    }
}

/// The same watch event about `f(object)`.
fn event_map<A, B>(event: watcher::Event<A>, f: fn(A) -> B) -> watcher::Event<B> {
    use watcher::Event;
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The cache keeps of an EndpointSlice what `kanary::endpoints::resolve` reads: per endpoint its first
    /// address, its conditions and its pod's name.
    #[test]
    fn a_cached_slice_keeps_what_resolving_reads() {
        let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "s-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "s"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["10.0.0.1", "10.0.0.9"], "conditions": {"ready": true}, "nodeName": "n", "zone": "z",
             "targetRef": {"kind": "Pod", "name": "p-1", "uid": "u", "namespace": "ns"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.0.0.3"]}
        ]}))
        .unwrap();
        let cached = CachedSlice::from(slice);
        assert_eq!(cached.metadata.labels.unwrap()["kubernetes.io/service-name"], "s");
        assert_eq!((cached.address_type.as_str(), cached.ports[0].port), ("IPv4", Some(8080)));
        let kept: Vec<_> =
            cached.endpoints.iter().map(|e| (e.address.map(|a| a.to_string()), e.ready, e.pod.as_deref())).collect();
        let ip = |a: &str| Some(a.to_string());
        assert_eq!(
            kept,
            [
                (ip("10.0.0.1"), Some(true), Some("p-1")),
                (ip("10.0.0.2"), Some(false), None),
                (ip("10.0.0.3"), None, None)
            ]
        );
    }
}
