//! What starts a reconcile of the custom resources themselves: a cached watch (the controller's store) that
//! passes an object on only when it is new or its spec changed (`metadata.generation`). The controller's own
//! status writes therefore do not come back as work; changes of owned and watched objects still trigger
//! through [`metadata_of`]: owned and related objects are watched as metadata only (owner references, names,
//! labels are all a mapper reads), which the API server sends and the controller decodes far more cheaply.

use futures::Stream;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use std::fmt::Debug;
use std::hash::Hash;

/// The store of `api`'s objects and the stream of those whose spec is new or changed.
pub fn spec_changes<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let stream = watcher(api, watcher::Config::default())
        // managedFields are never read; not caching them keeps the store small
        .modify(|object| object.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    (store, stream)
}

/// The objects of kind `K` in every namespace, as metadata only, each time one is created, changed or deleted.
pub fn metadata_of<K>(client: kube::Client) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(Api::<PartialObjectMeta<K>>::all(client), watcher::Config::default()).touched_objects()
}
