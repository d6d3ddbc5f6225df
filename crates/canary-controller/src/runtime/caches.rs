//! The process's caches of the built-in kinds the controllers read: one watch per kind for the whole process,
//! shared by the Canary controller and both Kanary controllers. Each cache is a reflector store (what
//! reconciles read instead of GETs and LISTs) and a fan-out of every object the watch touches, deletions
//! included, to each controller that subscribed (kube's shared streams do not pass deletions on, and a
//! deleted child must be repaired). ConfigMaps are cached as metadata only (their data is never read: the
//! proxy Deployment carries the hash of the config it runs), which is all an ownership check needs.

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
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

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Caches the objects of a watch, which runs in a task of its own.
    fn start(events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static) -> Cache<K> {
        let writer = reflector::store::Writer::default();
        let store = writer.as_reader();
        let subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>> = Default::default();
        let fan_out = subscribers.clone();
        let watch = events
            .backoff(super::triggers::watch_backoff())
            // managedFields are never read; not caching them keeps the stores small
            .modify(|object| object.managed_fields_mut().clear())
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
        get(&self.store, ns, name)
    }

    /// The objects of namespace `ns` whose label `key` has `value`.
    pub fn labelled(&self, ns: &str, key: &str, value: &str) -> Vec<Arc<K>> {
        labelled(&self.store, ns, key, value)
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
    pub endpoint_slices: Cache<EndpointSlice>,
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
            endpoint_slices: Cache::start(watcher(Api::all(client.clone()), all())),
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

/// The objects of `store` in namespace `ns` whose label `key` has `value`.
pub fn labelled<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    ns: &str,
    key: &str,
    value: &str,
) -> Vec<Arc<K>> {
    store
        .state()
        .into_iter()
        .filter(|o| o.namespace().as_deref() == Some(ns) && o.labels().get(key).map(String::as_str) == Some(value))
        .collect()
}

/// The object `name` of namespace `ns` in `store`.
pub fn get<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>> {
    store.get(&reflector::ObjectRef::new(name).within(ns))
}
