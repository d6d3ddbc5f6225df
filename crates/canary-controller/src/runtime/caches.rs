//! The process's caches of the built-in kinds the controllers read: one watch per kind for the whole process,
//! shared by the Canary controller and both Kanary controllers. Each cache is a reflector store (what
//! reconciles read instead of GETs and LISTs) and a fan-out of every object the watch touches, deletions
//! included, to each controller that subscribed (kube's shared streams do not pass deletions on, and a
//! deleted child must be repaired). ConfigMaps are cached as metadata only (their data is never read: the
//! desired-hash annotation stands for it), which is all an ownership check needs.

use futures::channel::mpsc;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

/// The cache of one kind: its store, and subscriptions to what changes in it.
pub struct Cache<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>>,
}

/// What a cache keeps of an object: only what the controllers read, so that the caches stay small.
pub trait Trim {
    fn trim(&mut self);
}

/// Annotations never read from a cached object (large, and describing the object itself).
const UNREAD_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

fn trim_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| !UNREAD_ANNOTATIONS.contains(&k.as_str()));
    }
}

impl Trim for Deployment {
    /// Kept: metadata, spec (a canary copies its target's), the replica counts of the status.
    fn trim(&mut self) {
        trim_metadata(&mut self.metadata);
        if let Some(status) = self.status.as_mut() {
            status.conditions = None;
        }
    }
}

impl Trim for Service {
    /// Kept: metadata, selector and ports.
    fn trim(&mut self) {
        trim_metadata(&mut self.metadata);
        self.status = None;
        if let Some(spec) = self.spec.as_mut() {
            *spec = k8s_openapi::api::core::v1::ServiceSpec {
                ports: spec.ports.take(),
                selector: spec.selector.take(),
                type_: spec.type_.take(),
                ..Default::default()
            };
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
    pub address: Option<Box<str>>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub pod: Option<Box<str>>,
}

impl From<EndpointSlice> for CachedSlice {
    fn from(slice: EndpointSlice) -> CachedSlice {
        let mut metadata = slice.metadata;
        trim_metadata(&mut metadata);
        metadata.annotations = None;
        let endpoints = slice
            .endpoints
            .into_iter()
            .map(|e| CachedEndpoint {
                address: e.addresses.into_iter().next().map(String::into_boxed_str),
                ready: e.conditions.as_ref().and_then(|c| c.ready),
                serving: e.conditions.as_ref().and_then(|c| c.serving),
                terminating: e.conditions.as_ref().and_then(|c| c.terminating),
                pod: e.target_ref.and_then(|r| r.name).map(String::into_boxed_str),
            })
            .collect();
        CachedSlice { metadata, address_type: slice.address_type, ports: slice.ports.unwrap_or_default(), endpoints }
    }
}

impl CachedSlice {
    /// The EndpointSlice again, with what the cache kept (what `kanary::endpoints` reads).
    pub fn to_endpoint_slice(&self) -> EndpointSlice {
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
        EndpointSlice {
            metadata: self.metadata.clone(),
            address_type: self.address_type.clone(),
            ports: Some(self.ports.clone()),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    addresses: e.address.iter().map(|a| a.to_string()).collect(),
                    conditions: Some(EndpointConditions {
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                    }),
                    target_ref: e.pod.as_ref().map(|p| k8s_openapi::api::core::v1::ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(p.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

impl Resource for CachedSlice {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        <EndpointSlice as Resource>::kind(&())
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        <EndpointSlice as Resource>::group(&())
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        <EndpointSlice as Resource>::version(&())
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        <EndpointSlice as Resource>::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Trim for CachedSlice {
    fn trim(&mut self) {}
}

impl Trim for PartialObjectMeta<ConfigMap> {
    /// Kept: the metadata, with the managedFields of the proxies' ConfigMaps only (they tell whether
    /// someone else wrote to one: `children::metadata_up_to_date`).
    fn trim(&mut self) {
        let proxy_config =
            self.metadata.labels.as_ref().is_some_and(|l| l.contains_key(crate::kanary::build::PROXY_LABEL));
        let managed_fields = self.metadata.managed_fields.take();
        trim_metadata(&mut self.metadata);
        if proxy_config {
            self.metadata.managed_fields = managed_fields;
        }
    }
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Trim + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Caches the objects of a watch, which runs in a task of its own.
    fn start(events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static) -> Cache<K> {
        let writer = reflector::store::Writer::default();
        let store = writer.as_reader();
        let subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>> = Default::default();
        let fan_out = subscribers.clone();
        let watch = events
            .backoff(super::triggers::watch_backoff())
            .modify(Trim::trim)
            .reflect(writer)
            .touched_objects()
            .for_each(move |touched| {
                match touched {
                    Ok(object) => {
                        let object = Arc::new(object);
                        fan_out.lock().expect("subscribers").retain(|s| s.unbounded_send(object.clone()).is_ok());
                    }
                    Err(e) => tracing::debug!(kind = %K::kind(&()), error = %e, "watch error; retrying"),
                }
                futures::future::ready(())
            });
        tokio::spawn(watch);
        Cache { store, subscribers }
    }

    /// The cached objects.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The object `name` of namespace `ns`.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&reflector::ObjectRef::new(name).within(ns))
    }

    /// The objects of namespace `ns` whose label `key` has `value`.
    pub fn labelled(&self, ns: &str, key: &str, value: &str) -> Vec<Arc<K>> {
        let matches =
            |o: &Arc<K>| o.namespace().as_deref() == Some(ns) && o.labels().get(key).map(String::as_str) == Some(value);
        self.store.state().into_iter().filter(matches).collect()
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

/// The caches the controllers read.
pub struct Caches {
    pub deployments: Cache<Deployment>,
    pub services: Cache<Service>,
    /// Compact: see [`CachedSlice`].
    pub endpoint_slices: Cache<CachedSlice>,
    /// Metadata only.
    pub config_maps: Cache<PartialObjectMeta<ConfigMap>>,
}

impl Caches {
    /// Starts the watches; [`Caches::ready`] tells when every cache holds its first list.
    pub fn start(client: &Client) -> Caches {
        let all = watcher::Config::default;
        Caches {
            deployments: Cache::start(watcher(Api::all(client.clone()), all())),
            services: Cache::start(watcher(Api::all(client.clone()), all())),
            endpoint_slices: Cache::start(
                watcher(Api::<EndpointSlice>::all(client.clone()), all())
                    .map_ok(|event| event_map(event, CachedSlice::from)),
            ),
            config_maps: Cache::start(watcher(Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()), all())),
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
        d.and(s).and(e).and(c).map_err(|_| anyhow::anyhow!("a cache stopped before its first list"))
    }
}

/// The same watch event about `f(object)`.
fn event_map<A, B>(event: watcher::Event<A>, f: impl Fn(A) -> B) -> watcher::Event<B> {
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
    use crate::kanary::endpoints::resolve;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::json;

    /// What the cache keeps of an EndpointSlice resolves to the same servers as the whole object.
    #[test]
    fn a_cached_slice_resolves_like_the_endpoint_slice() {
        let service: Service = serde_json::from_value(
            json!({"metadata": {"name": "s"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
        )
        .unwrap();
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
        let cached = CachedSlice::from(slice.clone()).to_endpoint_slice();
        let port = IntOrString::String("http".into());
        assert_eq!(resolve(&port, Some(&service), &[cached]), resolve(&port, Some(&service), &[slice]));
    }
}
