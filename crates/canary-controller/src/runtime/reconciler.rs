//! What every controller shares around its own reconcile, written once: the [`Context`] (client, shared
//! caches, metrics, event recorder, per-object backoff, the controller's own store), a tracing span per
//! reconcile carrying the object, the metrics wrapper (count, duration, failures by the step that failed),
//! the error policy, and how the events a reconcile decided on are recorded.
//!
//! A controller implements [`Reconciler`]: its reconcile runs the same pipeline in both controllers,
//! `observe` (the shared caches, no API reads) -> `validate` (pure: a validated value or a problem) ->
//! `build` (pure: desired objects, events) -> `apply` (only what differs from the cache) -> `status`.

use super::backoff::ErrorBackoff;
use super::caches::Caches;
use super::telemetry::Metrics;
use crate::report::Note;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use tracing::Instrument;

/// The step of a reconcile that failed: the metric label and the log field.
pub trait Step: std::error::Error + Send + Sync + 'static {
    /// The step that failed: the metric label and the log field.
    fn step(&self) -> std::borrow::Cow<'static, str>;
    /// A write raced the cache (the object exists but is not cached yet): retried without a warning.
    fn waits_for_cache(&self) -> bool;
}

/// One controller's reconcile of its custom resource.
pub trait Reconciler: Send + Sync + Sized + 'static {
    type Object: Resource<DynamicType: Clone + Eq + Hash + Debug + Unpin + Send + Sync>
        + Clone
        + serde::de::DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static;
    type Error: Step;
    /// The controller's name in metrics and logs.
    const NAME: &'static str;

    fn reconcile(
        &self,
        object: Arc<Self::Object>,
        ctx: &Context<Self>,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;
}

/// What a reconcile can use.
pub struct Context<R: Reconciler> {
    pub client: kube::Client,
    /// The process's shared caches of Deployments, Services, EndpointSlices and ConfigMaps.
    pub caches: Arc<Caches>,
    /// The controller's own custom resources.
    pub objects: Store<R::Object>,
    pub dyntype: <R::Object as Resource>::DynamicType,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoff: ErrorBackoff,
    /// The controller's own settings and indexes.
    pub reconciler: R,
}

impl<R: Reconciler> Context<R> {
    pub fn new(
        client: kube::Client,
        caches: Arc<Caches>,
        objects: Store<R::Object>,
        dyntype: <R::Object as Resource>::DynamicType,
        metrics: Arc<Metrics>,
        reconciler: R,
    ) -> Self {
        Context {
            recorder: crate::report::recorder(client.clone()),
            client,
            caches,
            objects,
            dyntype,
            metrics,
            backoff: ErrorBackoff::default(),
            reconciler,
        }
    }

    /// The reference events about `object` carry.
    pub fn about(&self, object: &R::Object) -> ObjectReference {
        object.object_ref(&self.dyntype)
    }

    /// Records the events a reconcile decided on (best effort, in order).
    pub async fn publish(&self, about: &ObjectReference, notes: impl IntoIterator<Item = Note>) {
        for note in notes {
            crate::report::publish(&self.recorder, about, note.type_, note.reason, note.message).await;
        }
    }

    fn key(&self, object: &R::Object) -> String {
        ObjectRef::from_obj_with(object, self.dyntype.clone()).to_string()
    }
}

async fn reconcile<R: Reconciler>(object: Arc<R::Object>, ctx: Arc<Context<R>>) -> Result<Action, R::Error> {
    let key = ctx.key(&object);
    let span = tracing::info_span!("reconcile", controller = R::NAME, object = %key);
    let result =
        ctx.metrics.measure(R::NAME, ctx.reconciler.reconcile(object, &ctx), Step::step).instrument(span).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    result
}

fn error_policy<R: Reconciler>(object: Arc<R::Object>, error: &R::Error, ctx: Arc<Context<R>>) -> Action {
    let live = ctx.objects.state().iter().map(|o| ctx.key(o)).collect();
    let _span = tracing::info_span!("reconcile", controller = R::NAME, step = %error.step()).entered();
    ctx.backoff.retry(&ctx.key(&object), &live, error, error.waits_for_cache())
}

/// Runs `controller` with the shared reconcile wrapper and error policy until `shutdown` completes.
pub async fn run<R: Reconciler>(
    controller: Controller<R::Object>,
    ctx: Arc<Context<R>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(controller = R::NAME, object = %object.name, "reconciled"),
                Err(e) => tracing::debug!(controller = R::NAME, error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error("failed")]
    struct Failed;

    impl Step for Failed {
        fn step(&self) -> std::borrow::Cow<'static, str> {
            "Failed".into()
        }
        fn waits_for_cache(&self) -> bool {
            false
        }
    }

    struct Failing;

    impl Reconciler for Failing {
        type Object = k8s_openapi::api::core::v1::ConfigMap;
        type Error = Failed;
        const NAME: &'static str = "test";

        async fn reconcile(&self, _: Arc<Self::Object>, _: &Context<Self>) -> Result<Action, Failed> {
            Err(Failed)
        }
    }

    #[tokio::test]
    async fn failed_reconciles_are_retried_later_and_later_per_object_and_deleted_objects_are_forgotten() {
        // a client that is never used: error_policy only schedules
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let object = |name: &str| {
            let mut o = k8s_openapi::api::core::v1::ConfigMap::default();
            o.metadata.name = Some(name.into());
            o.metadata.namespace = Some("ns".into());
            o
        };
        let mut objects = kube::runtime::reflector::store::Writer::default();
        for name in ["a", "b"] {
            objects.apply_watcher_event(&kube::runtime::watcher::Event::Apply(object(name)));
        }
        let caches = Arc::new(Caches::start(&client, &crate::runtime::Scope::default(), None));
        let ctx = Arc::new(Context::new(client, caches, objects.as_reader(), (), Metrics::new(), Failing));
        let retry = |name: &str| error_policy(Arc::new(object(name)), &Failed, ctx.clone());
        assert_eq!(retry("a"), Action::requeue(Duration::from_millis(500)));
        assert_eq!(retry("a"), Action::requeue(Duration::from_secs(1)));
        assert_eq!(retry("b"), Action::requeue(Duration::from_millis(500)), "objects back off independently");
        objects.apply_watcher_event(&kube::runtime::watcher::Event::Delete(object("a")));
        retry("b");
        assert_eq!(ctx.backoff.tracked(), 1, "a, deleted, is forgotten");
    }
}
