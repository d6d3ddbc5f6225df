//! Metrics of the controllers (prometheus-client) and the HTTP endpoints that serve them with the health
//! checks: `/metrics`, `/healthz` (the process answers), `/readyz` (connected, CRDs installed, controllers
//! running), and the gauges read from the controllers' caches at each scrape: objects managed, Kanary weights,
//! leadership.

use crate::api::canary::Canary;
use crate::api::kanary::Kanary;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: String,
    /// A stable error category (see each controller's `Error::category`).
    pub error: String,
}

/// An API request: its verb (`get`, `list`, `watch`, `create`, `patch`, `update`, `delete`) and resource
/// (`deployments`, `kanaries/status`...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

impl RequestLabels {
    /// The verb and resource of a request to the Kubernetes API.
    pub fn of(method: &http::Method, uri: &http::Uri) -> RequestLabels {
        let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let rest = match segments.as_slice() {
            ["api", _version, rest @ ..] => rest,
            ["apis", _group, _version, rest @ ..] => rest,
            other => other,
        };
        let rest = match rest {
            ["namespaces", _ns, plural, rest @ ..] => [&[*plural][..], rest].concat(),
            other => other.to_vec(),
        };
        let resource = match rest.as_slice() {
            [plural, _name, subresource, ..] => format!("{plural}/{subresource}"),
            [plural, ..] => plural.to_string(),
            [] => String::new(),
        };
        let named = rest.len() > 1;
        let watch = uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let verb = match *method {
            http::Method::GET if watch => "watch",
            http::Method::GET if named => "get",
            http::Method::GET => "list",
            http::Method::POST => "create",
            http::Method::PATCH => "patch",
            http::Method::PUT => "update",
            http::Method::DELETE => "delete",
            _ => "other",
        };
        RequestLabels { verb: verb.into(), resource }
    }
}

/// A client layer that counts the API requests sent through it.
#[derive(Clone)]
pub struct CountRequests(Family<RequestLabels, Counter>);

impl<S> tower::Layer<S> for CountRequests {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> CountedService<S> {
        CountedService { inner, requests: self.0.clone() }
    }
}

pub struct CountedService<S> {
    inner: S,
    requests: Family<RequestLabels, Counter>,
}

impl<S> tower::Service<http::Request<kube::client::Body>> for CountedService<S>
where
    S: tower::Service<http::Request<kube::client::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        self.requests.get_or_create(&RequestLabels::of(request.method(), request.uri())).inc();
        self.inner.call(request)
    }
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    reconciles: Family<ControllerLabels, Counter>,
    api_requests: Family<RequestLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: HistogramFamily,
    verdicts: Family<VerdictLabels, Counter>,
    registry: Registry,
    ready: AtomicBool,
    caches: Arc<Caches>,
}

/// The controllers' caches of the custom resources they reconcile (empty on a standby), read at each scrape.
#[derive(Default)]
struct Caches {
    leader: AtomicBool,
    canaries: Mutex<Option<Store<DeserializeGuard<Canary>>>>,
    /// By API group.
    kanaries: Mutex<Vec<(String, Store<Kanary>)>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    namespace: String,
    canary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    canary: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    group: String,
    namespace: String,
    kanary: String,
    service: String,
}

impl Collector for Caches {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let leader = ConstGauge::new(i64::from(self.leader.load(Ordering::Relaxed)));
        leader.encode(encoder.encode_descriptor(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            None,
            MetricType::Gauge,
        )?)?;

        let canaries = self.canaries.lock().expect("metrics lock").clone();
        let kanaries = self.kanaries.lock().expect("metrics lock").clone();
        let mut managed = encoder.encode_descriptor(
            "managed_objects",
            "Custom resources the controllers reconcile, by resource",
            None,
            MetricType::Gauge,
        )?;
        if let Some(store) = &canaries {
            let labels = ResourceLabels { resource: "canaries.canary.k8s.wantedly.com".into() };
            ConstGauge::new(store.len() as i64).encode(managed.encode_family(&labels)?)?;
        }
        for (group, store) in &kanaries {
            let labels = ResourceLabels { resource: format!("kanaries.{group}") };
            ConstGauge::new(store.len() as i64).encode(managed.encode_family(&labels)?)?;
        }

        let releases: Vec<_> = canaries
            .iter()
            .flat_map(|store| store.state())
            .filter_map(|guarded| {
                let canary = guarded.0.as_ref().ok()?;
                let release = canary.status.as_ref()?.release.clone()?;
                Some((canary.namespace().unwrap_or_default(), canary.name_any(), release))
            })
            .collect();
        let mut release_weights = encoder.encode_descriptor(
            "release_weight",
            "The canary's share of new connections (percent) in each Canary's release",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, canary, release) in &releases {
            let labels = ReleaseLabels { namespace: namespace.clone(), canary: canary.clone() };
            ConstGauge::new(i64::from(release.weight)).encode(release_weights.encode_family(&labels)?)?;
        }
        let mut phases = encoder.encode_descriptor(
            "release_phase",
            "1 for the phase each Canary's release is in",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, canary, release) in &releases {
            let labels = PhaseLabels {
                namespace: namespace.clone(),
                canary: canary.clone(),
                phase: format!("{:?}", release.phase),
            };
            ConstGauge::new(1).encode(phases.encode_family(&labels)?)?;
        }

        let mut weights = encoder.encode_descriptor(
            "kanary_route_weight",
            "Weight (percent) of each route of a Kanary in the configuration its proxy serves",
            None,
            MetricType::Gauge,
        )?;
        for (group, store) in &kanaries {
            for kanary in store.state() {
                let Some(status) = &kanary.status else { continue };
                for route in &status.endpoint_statuses {
                    let labels = RouteLabels {
                        group: group.clone(),
                        namespace: kanary.namespace().unwrap_or_default(),
                        kanary: kanary.name_any(),
                        service: route.service_name.clone(),
                    };
                    ConstGauge::new(route.weight).encode(weights.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let mut registry = Registry::with_prefix("canary_controller");
        registry.register("reconciles", "Reconciles run, by controller", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by controller and error category",
            failures.clone(),
        );
        registry.register("reconcile_duration_seconds", "Time a reconcile took, by controller", duration.clone());
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API by the controllers, by verb and resource (leader election apart)",
            api_requests.clone(),
        );
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register("release_verdicts", "Analysis windows judged, by verdict", verdicts.clone());
        let caches = Arc::new(Caches::default());
        registry.register_collector(Box::new(caches.clone()));
        Arc::new(Metrics {
            reconciles,
            api_requests,
            failures,
            duration,
            verdicts,
            registry,
            ready: AtomicBool::new(false),
            caches,
        })
    }

    /// A client layer counting requests in `canary_controller_api_requests_total`.
    pub fn count_requests(&self) -> CountRequests {
        CountRequests(self.api_requests.clone())
    }

    /// Records one reconcile of `controller` that started at `start`; `error` is its category when it failed.
    pub fn record(&self, controller: &str, start: Instant, error: Option<&str>) {
        let labels = ControllerLabels { controller: controller.into() };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
        if let Some(error) = error {
            self.failures.get_or_create(&FailureLabels { controller: controller.into(), error: error.into() }).inc();
        }
    }

    /// Runs a reconcile and records it: count, duration, and failure category.
    pub async fn measure<T, E>(
        &self,
        controller: &str,
        reconcile: impl Future<Output = Result<T, E>>,
        category: fn(&E) -> std::borrow::Cow<'static, str>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = reconcile.await;
        self.record(controller, start, result.as_ref().err().map(category).as_deref());
        result
    }

    /// Counts a judged analysis window.
    pub fn count_verdict(&self, verdict: crate::api::canary::Verdict) {
        self.verdicts.get_or_create(&VerdictLabels { verdict: format!("{verdict:?}") }).inc();
    }

    /// Reports the Canaries the Canary controller reconciles (its cache).
    pub fn observe_canaries(&self, store: Store<DeserializeGuard<Canary>>) {
        *self.caches.canaries.lock().expect("metrics lock") = Some(store);
    }

    /// Reports the Kanaries of an API group that its controller reconciles (its cache).
    pub fn observe_kanaries(&self, group: &str, store: Store<Kanary>) {
        self.caches.kanaries.lock().expect("metrics lock").push((group.into(), store));
    }

    pub fn set_leader(&self, leader: bool) {
        self.caches.leader.store(leader, Ordering::Relaxed);
        if !leader {
            *self.caches.canaries.lock().expect("metrics lock") = None;
            self.caches.kanaries.lock().expect("metrics lock").clear();
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let m = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = metrics.ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ok").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "the metrics and health server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_failures_and_durations_are_counted_by_controller_and_category() {
        let m = Metrics::new();
        m.record("canary", Instant::now(), None);
        m.record("canary", Instant::now(), Some("KubeApi"));
        m.record("kanary", Instant::now(), None);
        let text = m.encode();
        assert!(text.contains("canary_controller_reconciles_total{controller=\"canary\"} 2"), "{text}");
        assert!(text.contains("canary_controller_reconciles_total{controller=\"kanary\"} 1"), "{text}");
        assert!(
            text.contains("canary_controller_reconcile_failures_total{controller=\"canary\",error=\"KubeApi\"} 1"),
            "{text}"
        );
        assert!(text.contains("canary_controller_reconcile_duration_seconds_count{controller=\"canary\"} 2"), "{text}");
    }
}
