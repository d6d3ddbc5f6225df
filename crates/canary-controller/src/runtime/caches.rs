//! The process's caches of the built-in kinds the controllers read: one watch per kind for the whole process,
//! shared by the Canary controller and both Kanary controllers. Each cache is a reflector store (what
//! reconciles read instead of GETs and LISTs) and a fan-out of every object the watch touches, deletions
//! included, to each controller that subscribed (kube's shared streams do not pass deletions on, and a
//! deleted child must be repaired). Each cache is indexed by one label, and remembers the versions this
//! process wrote (their watch events are echoes that wake no one). What is cached is only what the
//! controllers read: Deployments and EndpointSlices in compact forms; ConfigMaps, ServiceAccounts, Roles and
//! RoleBindings as metadata only (their content is never read: the desired-hash annotation stands for it).
//! Labels and annotations (only those read) are kept apart from the metadata as sorted [`Pairs`]
//! ([`CachedForm`] puts them back).

use super::index::References;
use crate::api::kanary::{Kanary, KanarySpec, KanaryStatus};
use crate::names::CANARY_LABEL;
use crate::names::PROXY_LABEL;
use crate::names::SERVICE_NAME_LABEL;
use crate::names::{MANAGED_BY, MANAGED_BY_LABEL};
use futures::channel::mpsc;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::ApiResource;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
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
    fn apply(self, map: Option<BTreeMap<String, String>>) -> Pairs {
        Pairs::from_sorted(map.unwrap_or_default().into_iter().filter(|(k, _)| match self {
            Keep::All => !UNREAD_ANNOTATIONS.contains(&k.as_str()),
            Keep::Only(keys) => keys.contains(&k.as_str()),
        }))
    }
}

/// String pairs a cache keeps (labels, annotations, a selector), sorted by key. A `BTreeMap` allocates a node
/// of some 540 bytes even for one pair, and most cached objects keep one or two: as `BTreeMap`s they were a
/// quarter of the controller's heap in bench/scale.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Box<[(Box<str>, Box<str>)]>);

impl Pairs {
    /// The pairs of a map's iterator (sorted by key).
    fn from_sorted(pairs: impl Iterator<Item = (String, String)>) -> Pairs {
        Pairs(pairs.map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str())).collect())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    /// As an object's field holds them: `None` when there are none.
    pub fn to_map(&self) -> Option<BTreeMap<String, String>> {
        (!self.0.is_empty()).then(|| self.0.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

impl From<Option<BTreeMap<String, String>>> for Pairs {
    fn from(map: Option<BTreeMap<String, String>>) -> Pairs {
        Pairs::from_sorted(map.unwrap_or_default().into_iter())
    }
}

impl serde::Serialize for Pairs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Pairs, D::Error> {
        Option::<BTreeMap<String, String>>::deserialize(deserializer).map(Pairs::from)
    }
}

/// A form a cache keeps objects of a kind in: its metadata without labels and annotations, which it keeps
/// (those it keeps) as [`Pairs`] beside it.
pub trait CachedForm: Resource<DynamicType = ()> {
    /// The labels kept.
    fn kept_labels(&self) -> &Pairs;
    /// The annotations kept.
    fn kept_annotations(&self) -> &Pairs;
    /// The desired hash the object carries (as [`crate::runtime::children::desired_hash`] reads it of full metadata).
    fn desired_hash(&self) -> Option<&str> {
        self.kept_annotations().get(crate::names::DESIRED_HASH_ANNOTATION)
    }
    /// The metadata with the labels and annotations kept, as the object's own metadata holds them.
    fn full_metadata(&self) -> ObjectMeta {
        let (labels, annotations) = (self.kept_labels().to_map(), self.kept_annotations().to_map());
        ObjectMeta { labels, annotations, ..self.meta().clone() }
    }
}

/// The metadata a cache keeps: identity, version, generation and controller references; and apart, the
/// labels and annotations `labels` and `annotations` say (the rest of an object's metadata is never read).
fn compact_metadata(meta: ObjectMeta, labels: Keep, annotations: Keep) -> (ObjectMeta, Pairs, Pairs) {
    let kept = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        owner_references: meta
            .owner_references
            .map(|refs| refs.into_iter().filter(|r| r.controller == Some(true)).collect()),
        ..ObjectMeta::default()
    };
    (kept, labels.apply(meta.labels), annotations.apply(meta.annotations))
}

/// What the controllers read of the objects they own, besides ownership: their label and desired hash.
const CHILD_LABELS: Keep = Keep::Only(&[PROXY_LABEL, CANARY_LABEL]);
const CHILD_ANNOTATIONS: Keep = Keep::Only(&[crate::names::DESIRED_HASH_ANNOTATION]);

/// A Deployment as the cache keeps it: its metadata, its spec as compact JSON (a pod template takes ten
/// times more memory as a typed value; it is read a few times per reconcile at most: when a Canary copies its
/// target, and when a child is compared with what is desired), and its status without conditions.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct CachedDeployment {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub labels: Pairs,
    #[serde(default)]
    pub annotations: Pairs,
    spec: Box<str>,
    pub status: Option<k8s_openapi::api::apps::v1::DeploymentStatus>,
}

impl From<Deployment> for CachedDeployment {
    fn from(deployment: Deployment) -> CachedDeployment {
        let (metadata, labels, annotations) = compact_metadata(deployment.metadata, Keep::All, Keep::All);
        let spec = deployment.spec.and_then(|s| serde_json::to_string(&s).ok()).unwrap_or_default().into();
        let status = deployment.status.map(|s| k8s_openapi::api::apps::v1::DeploymentStatus { conditions: None, ..s });
        CachedDeployment { metadata, labels, annotations, spec, status }
    }
}

impl CachedDeployment {
    pub fn spec(&self) -> Option<k8s_openapi::api::apps::v1::DeploymentSpec> {
        serde_json::from_str(&self.spec).ok()
    }

    /// The Deployment again, with what the cache kept.
    pub fn to_deployment(&self) -> Deployment {
        Deployment { metadata: self.full_metadata(), spec: self.spec(), status: self.status.clone() }
    }
}

/// A Service as the cache keeps it: metadata, type, selector and ports (all the controllers read; the typed
/// spec is mostly fields they never read).
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct CachedService {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub labels: Pairs,
    #[serde(default)]
    pub annotations: Pairs,
    pub type_: Option<String>,
    #[serde(default)]
    pub selector: Pairs,
    pub ports: Option<Vec<k8s_openapi::api::core::v1::ServicePort>>,
}

impl From<Service> for CachedService {
    fn from(service: Service) -> CachedService {
        let (metadata, labels, annotations) = compact_metadata(service.metadata, CHILD_LABELS, CHILD_ANNOTATIONS);
        let spec = service.spec.unwrap_or_default();
        let selector = Pairs::from(spec.selector);
        CachedService { metadata, labels, annotations, type_: spec.type_, selector, ports: spec.ports }
    }
}

impl CachedService {
    /// The Service again, with what the cache kept.
    pub fn to_service(&self) -> Service {
        Service {
            metadata: self.full_metadata(),
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                type_: self.type_.clone(),
                selector: self.selector.to_map(),
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
    #[serde(default)]
    pub labels: Pairs,
    #[serde(default)]
    pub annotations: Pairs,
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
        let (mut metadata, labels, annotations) = compact_metadata(
            slice.metadata,
            Keep::Only(&[SERVICE_NAME_LABEL, MANAGED_BY_LABEL]),
            Keep::Only(&[crate::names::DESIRED_HASH_ANNOTATION]),
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
        let (address_type, ports) = (slice.address_type, slice.ports.unwrap_or_default());
        CachedSlice { metadata, labels, annotations, address_type, ports, endpoints }
    }
}

/// `Resource` and [`CachedForm`] for a compact cached form of a built-in kind: the kind's identity, the
/// form's metadata.
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

        impl CachedForm for $form {
            fn kept_labels(&self) -> &Pairs {
                &self.labels
            }
            fn kept_annotations(&self) -> &Pairs {
                &self.annotations
            }
        }
    };
}

cached_form_of!(CachedSlice, EndpointSlice);
cached_form_of!(CachedDeployment, Deployment);
cached_form_of!(CachedService, Service);
cached_form_of!(CachedChild<ConfigMap>, ConfigMap);
cached_form_of!(CachedChild<ServiceAccount>, ServiceAccount);
cached_form_of!(CachedChild<Role>, Role);
cached_form_of!(CachedChild<RoleBinding>, RoleBinding);

/// A Kanary of the group releases create theirs in (kanary.k8s.io), as the Canary controller reads its
/// release's: metadata, spec, and the status without the proxies' reports (the conditions say what they
/// serve). A spec that does not parse is kept as none.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct CachedKanary {
    pub metadata: ObjectMeta,
    pub spec: Option<KanarySpec>,
    pub status: Option<KanaryStatus>,
    #[serde(default)]
    pub labels: Pairs,
    #[serde(default)]
    pub annotations: Pairs,
}

impl From<Kanary> for CachedKanary {
    fn from(kanary: Kanary) -> CachedKanary {
        let (metadata, labels, annotations) = compact_metadata(kanary.metadata, Keep::Only(&[]), Keep::Only(&[]));
        let status = kanary.status.map(|s| KanaryStatus { proxies: Default::default(), ..s });
        CachedKanary { metadata, spec: kanary.spec.ok(), status, labels, annotations }
    }
}

impl Resource for CachedKanary {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        crate::api::kanary::KIND.into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        crate::api::kanary::GROUPS[0].0.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        crate::api::kanary::GROUPS[0].1.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        crate::api::kanary::PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedForm for CachedKanary {
    fn kept_labels(&self) -> &Pairs {
        &self.labels
    }
    fn kept_annotations(&self) -> &Pairs {
        &self.annotations
    }
}

/// An object cached as metadata only (a ConfigMap, ServiceAccount, Role or RoleBinding: their content is
/// never read, the desired-hash annotation stands for it), with who wrote the proxies' (the managers of their
/// managedFields, not the fields: they tell whether someone else wrote to one,
/// `children::metadata_up_to_date`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(bound = "")]
pub struct CachedChild<K> {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub labels: Pairs,
    #[serde(default)]
    pub annotations: Pairs,
    #[serde(skip)]
    kind: std::marker::PhantomData<fn() -> K>,
}

fn compact_child<K>(object: PartialObjectMeta<K>) -> CachedChild<K> {
    let mut meta = object.metadata;
    let proxy_object = meta.labels.as_ref().is_some_and(|l| l.contains_key(PROXY_LABEL));
    let managed_fields = meta.managed_fields.take();
    let (mut metadata, labels, annotations) = compact_metadata(meta, CHILD_LABELS, CHILD_ANNOTATIONS);
    if proxy_object {
        let writers = managed_fields.unwrap_or_default().into_iter().map(|e| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: e.manager,
                operation: e.operation,
                subresource: e.subresource,
                ..Default::default()
            }
        });
        metadata.managed_fields = Some(writers.collect());
    }
    CachedChild { metadata, labels, annotations, kind: std::marker::PhantomData }
}

impl<K> Cache<K>
where
    K: CachedForm + Clone + Debug + Send + Sync + 'static,
{
    /// Caches every object of `api`, each in the form `compact` makes of it, indexed by the value of `label`;
    /// the watch runs in a task of its own.
    fn start<W>(api: Api<W>, compact: fn(W) -> K, label: &'static str) -> Cache<K>
    where
        W: Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
    {
        // small pages: a page is held whole, as full objects, while it is decoded (500 EndpointSlices of 20
        // endpoints were most of the peak memory at start)
        let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
        let events = watcher(api, config).map_ok(move |event| event_map(event, compact));
        let labels =
            Arc::new(References::new(move |o: &K| o.kept_labels().get(label).map(String::from).into_iter().collect()));
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
    pub config_maps: Cache<CachedChild<ConfigMap>>,
    /// The proxy agents' identities: metadata only, indexed by the proxy label.
    pub service_accounts: Cache<CachedChild<ServiceAccount>>,
    pub roles: Cache<CachedChild<Role>>,
    pub role_bindings: Cache<CachedChild<RoleBinding>>,
    /// The Kanaries of the group releases create theirs in (kanary.k8s.io), when it is installed.
    pub kanaries: Option<Cache<CachedKanary>>,
}

impl Caches {
    /// Starts the watches; [`Caches::ready`] tells when every cache holds its first list.
    pub fn start(client: &Client, scope: &super::Scope, kanaries: Option<&ApiResource>) -> Caches {
        Caches {
            deployments: Cache::start(scope.api::<Deployment>(client), CachedDeployment::from, CANARY_LABEL),
            services: Cache::start(scope.api::<Service>(client), CachedService::from, PROXY_LABEL),
            endpoint_slices: Cache::start(scope.api::<EndpointSlice>(client), CachedSlice::from, SERVICE_NAME_LABEL),
            config_maps: Cache::start(scope.api(client), compact_child, PROXY_LABEL),
            service_accounts: Cache::start(scope.api(client), compact_child, PROXY_LABEL),
            roles: Cache::start(scope.api(client), compact_child, PROXY_LABEL),
            role_bindings: Cache::start(scope.api(client), compact_child, PROXY_LABEL),
            kanaries: kanaries
                .map(|r| Cache::start(scope.api_with::<Kanary>(client, r), CachedKanary::from, PROXY_LABEL)),
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
        let k = match &self.kanaries {
            Some(kanaries) => kanaries.ready().await,
            None => Ok(()),
        };
        d.and(s)
            .and(k)
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

    /// A cache keeps labels and annotations apart from the metadata, as sorted pairs (but those never read),
    /// and puts them back as the object had them.
    #[test]
    fn kept_labels_and_annotations_come_back_as_the_object_had_them() {
        let deployment: Deployment = serde_json::from_value(json!({"metadata": {
            "name": "d", "namespace": "ns", "labels": {"b": "2", "a": "1"},
            "annotations": {"team": "web", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}]}}))
        .unwrap();
        let cached = CachedDeployment::from(deployment);
        assert_eq!((cached.metadata.labels.as_ref(), cached.metadata.managed_fields.as_ref()), (None, None));
        assert_eq!((cached.kept_labels().get("a"), cached.kept_labels().get("b")), (Some("1"), Some("2")));
        assert_eq!(cached.kept_labels().get("c"), None);
        let back = cached.to_deployment().metadata;
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(back.labels, Some(map(&[("a", "1"), ("b", "2")])));
        assert_eq!(back.annotations, Some(map(&[("team", "web")])));
        assert_eq!((back.name.as_deref(), back.namespace.as_deref()), (Some("d"), Some("ns")));

        let json = serde_json::to_value(&cached.labels).unwrap();
        assert_eq!(json, json!({"a": "1", "b": "2"}));
        assert_eq!(serde_json::from_value::<Pairs>(json).unwrap(), cached.labels);
        assert_eq!(Pairs::default().to_map(), None);
    }

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
        assert_eq!(cached.labels.get("kubernetes.io/service-name"), Some("s"));
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
