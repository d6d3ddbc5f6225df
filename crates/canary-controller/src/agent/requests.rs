//! The proxy's request metrics (HTTP mode): HAProxy sends a line per request from a ring buffer to the
//! agent's port on the pod's loopback ([`REQUEST_LOG_PORT`], TCP, each line preceded by its length); the
//! agent reads each line ([`RequestLine`]) and keeps per route cumulative counts and a latency histogram (HdrHistogram: 1 µs to
//! an hour, 2 significant digits, so a few KB per route whatever the traffic). It serves them as
//! Prometheus metrics on `/metrics` (`kanary_requests_total`, `kanary_request_duration_seconds`) and whole,
//! as a [`RequestsReport`], on `/requests`, where the controller reads them for judging.
//!
//! [`REQUEST_LOG_PORT`]: crate::dataplane::haproxy::REQUEST_LOG_PORT

use crate::dataplane::requests::{
    KEPT_LATENCIES, MAX_LATENCIES, MAX_ROUTES, RecentLatencies, RequestLine, RequestsReport, RouteRequests, spread,
};
use hdrhistogram::Histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The longest latency kept apart (longer ones count as this).
const MAX_MICROS: u64 = 3_600_000_000;
/// The buckets of `kanary_request_duration_seconds`.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    route: String,
    /// `ok` or `error`.
    outcome: &'static str,
}

type DurationFamily = Family<RouteLabels, histogram::Histogram, fn() -> histogram::Histogram>;

struct Route {
    requests: u64,
    errors: u64,
    latency: Histogram<u64>,
    /// The latencies of the latest requests (the last one is request number `requests`).
    recent: VecDeque<u32>,
}

/// The routes' request metrics, shared by the socket reader and the HTTP server.
pub struct RequestMetrics {
    routes: Mutex<BTreeMap<String, Route>>,
    unreadable: Counter,
    requests: Family<OutcomeLabels, Counter>,
    durations: DurationFamily,
}

impl RequestMetrics {
    pub fn new(registry: &mut Registry) -> Arc<RequestMetrics> {
        let metrics = RequestMetrics {
            routes: Mutex::new(BTreeMap::new()),
            unreadable: Counter::default(),
            requests: Family::default(),
            durations: Family::new_with_constructor(|| histogram::Histogram::new(BUCKETS)),
        };
        registry.register(
            "kanary_requests",
            "HTTP requests the proxy answered, by route and outcome (error: 5xx, no answer, or a gRPC status other than 0)",
            metrics.requests.clone(),
        );
        registry.register(
            "kanary_request_duration_seconds",
            "Time from each HTTP request to the end of its answer, by route",
            metrics.durations.clone(),
        );
        registry.register(
            "kanary_request_log_unreadable",
            "Lines of HAProxy's request log the agent could not read",
            metrics.unreadable.clone(),
        );
        Arc::new(metrics)
    }

    /// Counts one line of the request log.
    pub fn record(&self, line: &str) {
        let Some(request) = RequestLine::parse(line) else {
            self.unreadable.inc();
            return;
        };
        // a request no route took (the proxy answered it itself) belongs to no route
        let Some(route) = request.route else { return };
        let micros = request.micros.clamp(1, MAX_MICROS);
        {
            let mut routes = self.routes.lock().expect("the request metrics' lock");
            if !routes.contains_key(&route) && routes.len() >= MAX_ROUTES {
                self.unreadable.inc();
                return;
            }
            let entry = routes.entry(route.clone()).or_insert_with(|| Route {
                requests: 0,
                errors: 0,
                latency: Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds"),
                recent: VecDeque::new(),
            });
            entry.requests += 1;
            entry.errors += u64::from(request.error);
            entry.latency.saturating_record(micros);
            if entry.recent.len() == KEPT_LATENCIES {
                entry.recent.pop_front();
            }
            entry.recent.push_back(micros.min(u64::from(u32::MAX)) as u32);
        }
        let outcome = if request.error { "error" } else { "ok" };
        self.requests.get_or_create(&OutcomeLabels { route: route.clone(), outcome }).inc();
        self.durations.get_or_create(&RouteLabels { route }).observe(micros as f64 / 1e6);
    }

    /// The latencies of `route`'s requests after request number `after` that are still kept, at most `limit`
    /// (and [`MAX_LATENCIES`]) of them, evenly spread. A count past the route's (the agent restarted since):
    /// every one kept.
    pub fn latencies(&self, route: &str, after: u64, limit: usize) -> RecentLatencies {
        let routes = self.routes.lock().expect("the request metrics' lock");
        let Some(r) = routes.get(route) else { return RecentLatencies::default() };
        let newer =
            if after > r.requests { r.recent.len() } else { (r.requests - after).min(r.recent.len() as u64) as usize };
        let window: Vec<u64> = r.recent.iter().skip(r.recent.len() - newer).map(|v| u64::from(*v)).collect();
        RecentLatencies { requests: r.requests, latencies_micros: spread(&window, limit.min(MAX_LATENCIES)) }
    }

    /// Every route's requests so far.
    pub fn report(&self) -> RequestsReport {
        let routes = self.routes.lock().expect("the request metrics' lock");
        let routes = routes
            .iter()
            .map(|(name, route)| {
                let latency_micros = route
                    .latency
                    .iter_recorded()
                    .map(|v| (route.latency.median_equivalent(v.value_iterated_to()), v.count_at_value()))
                    .collect();
                (name.clone(), RouteRequests { requests: route.requests, errors: route.errors, latency_micros })
            })
            .collect();
        RequestsReport { routes, unreadable: self.unreadable.get() }
    }
}

/// The longest line read (HAProxy's `maxlen` is 1024).
const MAX_LINE: usize = 4096;

/// Takes HAProxy's request log on `listener` (each connection a stream of lines, each preceded by its length
/// in digits and a space: syslog's octet counting) and counts every line, until the process stops.
pub fn serve(listener: tokio::net::TcpListener, metrics: Arc<RequestMetrics>) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = read_lines(stream, &metrics).await {
                    tracing::warn!("reading the request log: {e}");
                }
            });
        }
    });
}

async fn read_lines(stream: tokio::net::TcpStream, metrics: &RequestMetrics) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reader = tokio::io::BufReader::new(stream);
    let mut length = Vec::with_capacity(8);
    let mut line = vec![0u8; MAX_LINE];
    loop {
        length.clear();
        // the length, up to the space (a few digits: anything longer is not this protocol)
        let read = (&mut reader).take(8).read_until(b' ', &mut length).await?;
        if read == 0 {
            return Ok(());
        }
        let digits = std::str::from_utf8(length.strip_suffix(b" ").unwrap_or(&length)).unwrap_or_default();
        let Some(n) = digits.parse::<usize>().ok().filter(|n| *n <= MAX_LINE) else {
            return Err(std::io::Error::other(format!("not a line length: {:?}", String::from_utf8_lossy(&length))));
        };
        reader.read_exact(&mut line[..n]).await?;
        metrics.record(&String::from_utf8_lossy(&line[..n]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_sent_to_the_port_are_counted_per_route_with_their_latencies() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut registry = Registry::default();
        let metrics = RequestMetrics::new(&mut registry);
        serve(listener, metrics.clone());
        let mut sender = tokio::net::TcpStream::connect(address).await.unwrap();
        let lines = ["be_v1 200 1000 ---- -", "be_v1 200 2000 ---- -", "be_v2 500 30000 ---- -", "kanary 503 5 SC-- -"];
        for line in lines.iter().chain(&["garbage"]) {
            sender.write_all(format!("{} {line}", line.len()).as_bytes()).await.unwrap();
        }
        let mut report = metrics.report();
        for _ in 0..100 {
            if report.unreadable == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            report = metrics.report();
        }
        assert_eq!(report.unreadable, 1, "{report:?}");
        let v1 = &report.routes["v1"];
        assert_eq!((v1.requests, v1.errors), (2, 0));
        // within the histogram's 1 % buckets
        let near = |got: Option<f64>, ms: f64| got.is_some_and(|got| (got - ms).abs() <= ms / 100.0);
        assert!(near(v1.percentile_ms(0.5), 1.0), "{v1:?}");
        assert!(near(v1.percentile_ms(1.0), 2.0), "{v1:?}");
        assert_eq!((report.routes["v2"].requests, report.routes["v2"].errors), (1, 1));
        assert_eq!(report.routes.len(), 2, "a request no route took is no route's");
        // the latest latencies, numbered by the route's count
        assert_eq!(metrics.latencies("v1", 1, 100), RecentLatencies { requests: 2, latencies_micros: vec![2000] });
        assert_eq!(metrics.latencies("v1", 0, 100).latencies_micros, vec![1000, 2000]);
        assert_eq!(metrics.latencies("v1", 5, 100).latencies_micros, vec![1000, 2000], "restarted: every one");
        assert_eq!(metrics.latencies("v1", 0, 1).latencies_micros, vec![1000], "at most the limit");
        assert_eq!(metrics.latencies("nothing", 0, 100), RecentLatencies::default());
        // a stream that is not this protocol is dropped; the counts stay
        let mut bad = tokio::net::TcpStream::connect(address).await.unwrap();
        bad.write_all(b"123456789 x").await.unwrap();
        let mut rest = vec![];
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut bad, &mut rest).await;
        assert_eq!(metrics.report().routes["v1"].requests, 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("kanary_requests_total{route=\"v2\",outcome=\"error\"} 1"), "{text}");
        assert!(text.contains("kanary_request_duration_seconds_count{route=\"v1\"} 2"), "{text}");
    }
}
