//! How a controller is started, and what starts a reconcile. The custom resources come from a cached watch
//! (the controller's store) that passes an object on only when it is new or what the controller's
//! `changes` predicate reads of it changed (its spec, `metadata.generation`, and for a Kanary the reports its
//! proxy agents write into the status), so the controller's own status writes do not come back as work. Owned and related
//! objects come from the process's shared caches (`runtime::caches`). Every controller, and every watch,
//! runs with the same bounded concurrency and backoff.

use super::index::References;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

/// A controller of `api`'s objects, reconciling each when it is new or `changes` of it changed (see
/// `kube::runtime::predicates`), with the settings every controller runs with; `references` follows the
/// objects' watch.
pub fn controller<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    references: Arc<References<K>>,
    changes: fn(&K) -> Option<u64>,
) -> Controller<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Unpin,
{
    let writer = Writer::new(dyntype.clone());
    let store = writer.as_reader();
    let spec_changes = watcher(api, watcher::Config::default())
        // managedFields are never read; not caching them keeps the store small
        .modify(|object| object.managed_fields_mut().clear())
        .inspect(move |event| {
            if let Ok(event) = event {
                references.apply(event)
            }
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(changes, Default::default());
    Controller::for_stream_with(spec_changes, store, dyntype)
        .with_config(controller_config())
        .trigger_backoff(watch_backoff())
}

/// Reconciles a controller runs at once. Unbounded, a start with thousands of objects opens as many API
/// connections at once (measured with bench/scale: peak RSS grows with the number of objects).
const CONCURRENT_RECONCILES: u16 = 16;

/// The settings every controller runs with.
fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(CONCURRENT_RECONCILES)
}

/// How long a controller's watches wait before trying again after an error. kube's default (client-go's
/// 0.8 s doubling to 30 s, reset after 2 minutes without error) is shared by all of a controller's watches,
/// so a short outage pushes it to 30 s (measured in tests/reliability.rs: 18 s to recover from two seconds of
/// 500s). This one stops at 5 s and resets after 10 s without error.
pub fn watch_backoff() -> impl kube::runtime::utils::Backoff + 'static {
    let exponential: kube::runtime::watcher::ExponentialBackoff = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into();
    kube::runtime::utils::ResetTimerBackoff::new(exponential, std::time::Duration::from_secs(10))
}
