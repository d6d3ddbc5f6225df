//! Metrics of the controllers (prometheus-client) and the HTTP endpoints that serve them with the health
//! checks: `/metrics`, `/healthz` (the process answers), `/readyz` (connected, CRDs installed, controllers
//! running).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: HistogramFamily,
    registry: Registry,
    ready: AtomicBool,
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
        Arc::new(Metrics { reconciles, failures, duration, registry, ready: AtomicBool::new(false) })
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
        category: fn(&E) -> &'static str,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = reconcile.await;
        self.record(controller, start, result.as_ref().err().map(category));
        result
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
